//! Asset names: `<sha256 hex>.<ext>`, nothing else, so that no name can
//! leave the assets folder.

/// True for `<64 lowercase hex>.<1-10 lowercase alphanumerics>`.
pub fn is_valid(name: &str) -> bool {
    let Some((hash, ext)) = name.split_once('.') else {
        return false;
    };
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (1..=10).contains(&ext.len())
        && ext.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

pub fn ext_for_mime(mime: &str) -> &'static str {
    match mime {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/svg+xml" => "svg",
        "application/pdf" => "pdf",
        "text/html" => "html",
        "text/markdown" => "md",
        "text/latex" => "tex",
        "application/json" => "json",
        "application/javascript" | "text/javascript" => "js",
        "text/plain" => "txt",
        _ if mime.ends_with("+json") => "json",
        _ => "bin",
    }
}

pub fn mime_for_ext(ext: &str) -> &'static str {
    match ext {
        "png" => "image/png",
        "jpg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "html" => "text/html; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "tex" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "js" => "text/javascript",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Whether a mime bundle value of this type is base64 (Jupyter sends binary
/// types base64-encoded, text types as text).
pub fn is_base64(mime: &str) -> bool {
    mime.starts_with("image/") && mime != "image/svg+xml" || mime == "application/pdf"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hash_dot_ext_is_valid() {
        let h = "a".repeat(64);
        assert!(is_valid(&format!("{h}.png")));
        for bad in [
            "../x".to_string(),
            "%2e%2e/".to_string(),
            h.clone(),
            format!("{h}.PNG"),
            format!("{h}.png/x"),
            format!("{}.png", "a".repeat(63)),
            format!("{}.png", "g".repeat(64)),
            format!("../{h}.png"),
            format!("{h}.p.ng"),
        ] {
            assert!(!is_valid(&bad), "{bad}");
        }
    }

    #[test]
    fn mime_and_ext_agree() {
        for m in [
            "image/png",
            "image/jpeg",
            "text/html",
            "application/json",
            "image/svg+xml",
        ] {
            assert!(mime_for_ext(ext_for_mime(m)).starts_with(m));
        }
    }
}
