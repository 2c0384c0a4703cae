//! Replacing large mime values of rich outputs by stubs (pure), and writing
//! the asset files (atomically, content-addressed).

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::name::{ext_for_mime, is_base64};
use super::ASSETS_DIR;

/// Metadata key on an output that lists the assets it was offloaded to.
pub const META_KEY: &str = "notebook.dev/assets";

#[derive(Debug, Clone, PartialEq)]
pub struct NewAsset {
    pub name: String,
    pub mime: String,
    pub bytes: Vec<u8>,
}

impl NewAsset {
    pub fn path(&self) -> String {
        format!("{ASSETS_DIR}/{}", self.name)
    }
}

/// For a `display_data`/`execute_result` output, moves every mime value whose
/// encoded size exceeds `threshold` into an asset, leaving in its place a
/// `text/markdown` stub (an image or a link to `assets/<sha256>.<ext>`) and
/// metadata naming the assets. Other outputs are returned unchanged.
pub fn offload(output: &Value, threshold: usize) -> (Value, Vec<NewAsset>) {
    let kind = output.get("output_type").and_then(Value::as_str);
    if !matches!(kind, Some("display_data" | "execute_result")) {
        return (output.clone(), Vec::new());
    }
    let Some(data) = output.get("data").and_then(Value::as_object) else {
        return (output.clone(), Vec::new());
    };
    let mut out = output.clone();
    let mut assets = Vec::new();
    let mut links = Vec::new();
    for (mime, value) in data {
        let encoded = match value {
            Value::String(s) => s.len(),
            other => other.to_string().len(),
        };
        if encoded <= threshold {
            continue;
        }
        let bytes = match value {
            Value::String(s) if is_base64(mime) => {
                let cleaned: String = s.chars().filter(|c| !c.is_whitespace()).collect();
                match base64::engine::general_purpose::STANDARD.decode(cleaned) {
                    Ok(b) => b,
                    Err(_) => continue, // not base64 after all: leave it inline
                }
            }
            Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let name = format!("{}.{}", hex::encode(Sha256::digest(&bytes)), ext_for_mime(mime));
        let path = format!("{ASSETS_DIR}/{name}");
        links.push(if mime.starts_with("image/") {
            format!("![{mime}]({path})")
        } else {
            format!("[{mime}, {} bytes]({path})", bytes.len())
        });
        out["data"].as_object_mut().map(|d| d.remove(mime));
        let meta = json!({
            "path": path, "mime": mime, "size": bytes.len(),
            "sha256": name.split('.').next().unwrap_or_default(),
        });
        if !out.get("metadata").is_some_and(Value::is_object) {
            out["metadata"] = json!({});
        }
        match out["metadata"].get_mut(META_KEY).and_then(Value::as_array_mut) {
            Some(list) => list.push(meta),
            None => out["metadata"][META_KEY] = json!([meta]),
        }
        assets.push(NewAsset {
            name,
            mime: mime.clone(),
            bytes,
        });
    }
    if !links.is_empty() {
        let stub = links.join("\n\n");
        let md = match out["data"].get("text/markdown").and_then(Value::as_str) {
            Some(existing) => format!("{existing}\n\n{stub}"),
            None => stub,
        };
        out["data"]["text/markdown"] = Value::String(md);
    }
    (out, assets)
}

/// Writes an asset under `assets/` of the confined workspace by temp file
/// and rename, unless the same content is already there (then only its time
/// becomes now, so a lease restarts from this use, not from the first one).
/// A link or special file in the way is refused, never written through.
pub fn store(root: &crate::confined::Root, asset: &NewAsset) -> Result<(), crate::confined::ConfinedError> {
    let dir = std::path::Path::new(ASSETS_DIR);
    root.make_dirs(dir)?;
    root.write_atomic(&dir.join(&asset.name), &asset.bytes, true)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_outputs_stay_inline() {
        let o = json!({"output_type": "display_data", "data": {"image/png": "aGk=", "text/plain": "x"}, "metadata": {}});
        let (out, assets) = offload(&o, 1000);
        assert_eq!(out, o);
        assert!(assets.is_empty());
    }

    #[test]
    fn a_large_png_becomes_an_asset_and_a_stub() {
        let png = vec![7u8; 3000];
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let o = json!({"output_type": "display_data", "data": {"image/png": b64, "text/plain": "<Figure>"}, "metadata": {}});
        let (out, assets) = offload(&o, 1000);
        assert_eq!(assets.len(), 1);
        assert_eq!(assets[0].bytes, png);
        assert!(assets[0].name.ends_with(".png"));
        assert!(out["data"].get("image/png").is_none());
        assert_eq!(out["data"]["text/plain"], "<Figure>");
        let md = out["data"]["text/markdown"].as_str().unwrap();
        assert!(md.contains(&format!("assets/{}", assets[0].name)));
        assert_eq!(out["metadata"][META_KEY][0]["size"], 3000);
        assert!(out.to_string().len() < 1000, "the stub is small");
    }

    #[test]
    fn streams_and_errors_are_never_offloaded() {
        let o = json!({"output_type": "stream", "name": "stdout", "text": "x".repeat(10_000)});
        assert!(offload(&o, 10).1.is_empty());
    }

    #[test]
    fn json_values_are_offloaded_as_json() {
        let o = json!({"output_type": "execute_result", "data": {"application/json": {"k": "v".repeat(100)}}, "metadata": {}, "execution_count": 1});
        let (_, assets) = offload(&o, 50);
        assert!(assets[0].name.ends_with(".json"));
        assert!(serde_json::from_slice::<Value>(&assets[0].bytes).is_ok());
    }
}
