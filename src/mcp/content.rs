//! Turning executions and their nbformat outputs into MCP tool content
//! (pure): text for streams, `text/plain` and errors (traceback without
//! terminal colours), image content for PNG and JPEG up to a size cap, and
//! for anything larger or not shown, a note that says where to fetch it.

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{json, Value};

use super::output::ExecutionHeader;
use crate::notebook::model::multiline;
use crate::store::{Execution, State};

/// Limits on what one tool result carries.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Text of one output, in bytes; the rest is cut with a note.
    pub text_bytes: usize,
    /// One image, in bytes of base64.
    pub image_bytes: usize,
    /// All content of one result, in bytes.
    pub total_bytes: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            text_bytes: 64 << 10,
            image_bytes: 1 << 20,
            total_bytes: 4 << 20,
        }
    }
}

/// Removes ANSI escape sequences (IPython colours its tracebacks).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // CSI: parameters and intermediates, then one final byte @..~
                for n in chars.by_ref() {
                    if ('@'..='~').contains(&n) {
                        break;
                    }
                }
            }
            Some(']') => {
                chars.next();
                // OSC: up to BEL or ESC \
                while let Some(n) = chars.next() {
                    if n == '\u{7}' {
                        break;
                    }
                    if n == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    out
}

/// `s` cut to at most `max` bytes on a character boundary, with a note.
pub fn cap_text(s: &str, max: usize, what: &str) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n… [{what}: {} more bytes not shown]",
        &s[..end],
        s.len() - end
    )
}

fn human(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// The text of an error output: `ename: evalue` and the traceback.
pub fn error_text(o: &Value) -> String {
    let ename = o.get("ename").and_then(Value::as_str).unwrap_or("Error");
    let evalue = o.get("evalue").and_then(Value::as_str).unwrap_or("");
    let tb: Vec<String> = o
        .get("traceback")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).map(strip_ansi).collect())
        .unwrap_or_default();
    if tb.is_empty() {
        format!("{ename}: {evalue}")
    } else {
        format!("{ename}: {evalue}\n{}", tb.join("\n"))
    }
}

/// (path, mime, size) of each value of a rich output moved to an asset file.
fn offloaded(o: &Value) -> Vec<(String, String, usize)> {
    o.get("metadata")
        .and_then(|m| m.get(crate::assets::offload::META_KEY))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|a| {
                    let path = a.get("path")?.as_str()?.to_string();
                    let mime = a.get("mime").and_then(Value::as_str).unwrap_or("").to_string();
                    let size = a.get("size").and_then(Value::as_u64).unwrap_or(0) as usize;
                    Some((path, mime, size))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Where the whole of output `index` of execution `id` can be fetched.
fn reference(id: &str, index: usize, mime: &str) -> String {
    format!("GET /v1/executions/{id} → outputs[{index}].data[\"{mime}\"], or the get_execution tool's structured content")
}

/// Content blocks for one nbformat output.
pub fn output_blocks(id: &str, index: usize, o: &Value, caps: &Caps) -> Vec<ContentBlock> {
    match o.get("output_type").and_then(Value::as_str) {
        Some("stream") => {
            let name = o.get("name").and_then(Value::as_str).unwrap_or("stdout");
            let text = crate::sidecar::outputs::head_tail(&multiline(o.get("text")), caps.text_bytes, id);
            let text = if name == "stdout" {
                text
            } else {
                format!("[{name}]\n{text}")
            };
            vec![ContentBlock::text(text)]
        }
        Some("error") => vec![ContentBlock::text(cap_text(
            &error_text(o),
            caps.text_bytes,
            "traceback",
        ))],
        Some("display_data" | "execute_result") => {
            // Values past the sidecar's asset threshold were moved to files
            // under assets/; each becomes a reference to its file.
            let assets = offloaded(o);
            let mut blocks: Vec<ContentBlock> = assets
                .iter()
                .map(|(path, mime, size)| {
                    let name = path.rsplit('/').next().unwrap_or(path);
                    ContentBlock::text(format!(
                        "[{mime} output of {} not inlined, saved as {path}: GET /v1/assets/{name}]",
                        human(*size)
                    ))
                })
                .collect();
            let data = o.get("data").and_then(Value::as_object);
            let Some(data) = data else { return blocks };
            if assets.iter().any(|(_, mime, _)| mime.starts_with("image/")) {
                // The rest is the placeholder text of the image and the stub.
                return blocks;
            }
            if !blocks.is_empty() {
                if let Some(v) = data.get("text/plain") {
                    blocks.push(ContentBlock::text(cap_text(
                        &multiline(Some(v)),
                        caps.text_bytes,
                        "text/plain",
                    )));
                }
                return blocks;
            }
            for mime in ["image/png", "image/jpeg"] {
                if let Some(b64) = data.get(mime).and_then(Value::as_str) {
                    let b64: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                    if b64.len() <= caps.image_bytes {
                        return vec![ContentBlock::image(b64, mime)];
                    }
                    let decoded = b64.len() / 4 * 3;
                    return vec![ContentBlock::text(format!(
                        "[{mime} output of {} not inlined (limit {}): {}]",
                        human(decoded),
                        human(caps.image_bytes / 4 * 3),
                        reference(id, index, mime)
                    ))];
                }
            }
            for mime in ["text/plain", "text/markdown", "text/latex", "text/html"] {
                if let Some(v) = data.get(mime) {
                    return vec![ContentBlock::text(cap_text(
                        &multiline(Some(v)),
                        caps.text_bytes,
                        mime,
                    ))];
                }
            }
            if let Some(v) = data.get("application/json") {
                return vec![ContentBlock::text(cap_text(
                    &v.to_string(),
                    caps.text_bytes,
                    "application/json",
                ))];
            }
            let mimes: Vec<&str> = data.keys().map(String::as_str).collect();
            vec![ContentBlock::text(format!(
                "[output in {} not shown as text: {}]",
                mimes.join(", "),
                reference(id, index, mimes.first().copied().unwrap_or(""))
            ))]
        }
        _ => vec![],
    }
}

/// The machine-readable summary of an execution that every result starts with.
pub fn header(e: &Execution) -> ExecutionHeader {
    let (notebook, cell_id) = match (&e.notebook, &e.cell_id) {
        (Some(nb), Some(cell)) => (Some(nb.clone()), Some(cell.clone())),
        _ => (None, None),
    };
    ExecutionHeader {
        id: e.id.clone(),
        state: e.state,
        execution_count: e.execution_count,
        reason: e.reason,
        notebook,
        cell_id,
        waited_s: None,
    }
}

/// The result of a tool that waited for an execution: its outputs when it
/// is final, else its id and state and how to come back for it. Its first
/// block is the [`ExecutionHeader`] as text, which is also its structured content.
pub fn execution_result(e: &Execution, waited_s: f64, caps: &Caps) -> CallToolResult {
    let mut header = header(e);
    if !e.state.is_final() {
        header.waited_s = Some(waited_s);
    }
    let head = serde_json::to_value(&header).unwrap_or_default();
    if !e.state.is_final() {
        let text = format!(
            "Execution {} is {} after {waited_s} s and continues in the kernel. Call get_execution with id \"{}\" (and wait_s) for its result, or cancel_execution to stop it.",
            e.id, e.state, e.id
        );
        let mut r = CallToolResult::success(vec![
            ContentBlock::text(head.to_string()),
            ContentBlock::text(text),
        ]);
        r.structured_content = Some(head);
        return r;
    }
    let mut blocks = vec![ContentBlock::text(head.to_string())];
    let mut used = 0usize;
    let mut has_error_output = false;
    for (i, o) in e.outputs.iter().enumerate() {
        if o.get("output_type").and_then(Value::as_str) == Some("error") {
            has_error_output = true;
        }
        for b in output_blocks(&e.id, i, o, caps) {
            let size = block_size(&b);
            if used + size > caps.total_bytes {
                blocks.push(ContentBlock::text(format!(
                    "[outputs from #{i} on not shown: the result is over {}; {}]",
                    human(caps.total_bytes),
                    reference(&e.id, i, "…")
                )));
                return finish(blocks, head, e.state);
            }
            used += size;
            blocks.push(b);
        }
    }
    if !has_error_output {
        if let Some(err) = &e.error {
            blocks.push(ContentBlock::text(cap_text(
                &error_text(err),
                caps.text_bytes,
                "traceback",
            )));
        }
    }
    finish(blocks, head, e.state)
}

fn finish(blocks: Vec<ContentBlock>, head: Value, state: State) -> CallToolResult {
    let mut r = if state == State::Failed {
        CallToolResult::error(blocks)
    } else {
        CallToolResult::success(blocks)
    };
    r.structured_content = Some(head);
    r
}

fn block_size(b: &ContentBlock) -> usize {
    if let Some(t) = b.as_text() {
        t.text.len()
    } else if let Some(i) = b.as_image() {
        i.data.len()
    } else {
        0
    }
}

/// A short, capped summary of one output for `read_notebook`.
pub fn summarise_output(o: &Value, text_bytes: usize) -> Value {
    match o.get("output_type").and_then(Value::as_str) {
        Some("stream") => json!({
            "output_type": "stream",
            "name": o.get("name").cloned().unwrap_or(json!("stdout")),
            "text": cap_text(&multiline(o.get("text")), text_bytes, "stream"),
        }),
        Some("error") => json!({
            "output_type": "error",
            "ename": o.get("ename").cloned().unwrap_or(json!("")),
            "evalue": o.get("evalue").cloned().unwrap_or(json!("")),
        }),
        Some(t @ ("display_data" | "execute_result")) => {
            let data = o.get("data").and_then(Value::as_object);
            let mimes: Vec<Value> = data
                .map(|d| {
                    d.iter()
                        .map(|(k, v)| {
                            let n = match v {
                                Value::String(s) => s.len(),
                                other => other.to_string().len(),
                            };
                            json!(format!("{k} ({})", human(n)))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut s = json!({"output_type": t, "data": mimes});
            if let Some(text) = data.and_then(|d| d.get("text/plain")) {
                s["text"] = json!(cap_text(&multiline(Some(text)), text_bytes, "text/plain"));
            }
            s
        }
        _ => json!({"output_type": o.get("output_type").cloned().unwrap_or(Value::Null)}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(state: State, outputs: Vec<Value>) -> Execution {
        Execution {
            id: "e1".into(),
            key: None,
            state,
            reason: None,
            code: "x".into(),
            notebook: None,
            cell_id: None,
            outputs,
            execution_count: Some(3),
            error: None,
            timeout_s: None,
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            truncated: None,
            client_request: None,
        }
    }

    fn texts(r: &CallToolResult) -> Vec<String> {
        r.content
            .iter()
            .filter_map(|b| b.as_text().map(|t| t.text.clone()))
            .collect()
    }

    #[test]
    fn strips_terminal_colours() {
        assert_eq!(strip_ansi("\u{1b}[0;31mNameError\u{1b}[0m: x"), "NameError: x");
        assert_eq!(strip_ansi("a\u{1b}]8;;http://x\u{7}b"), "ab");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn streams_results_and_errors_become_text() {
        let e = exec(
            State::Completed,
            vec![
                json!({"output_type": "stream", "name": "stdout", "text": "hi\n"}),
                json!({"output_type": "execute_result", "data": {"text/plain": "2"}, "metadata": {}, "execution_count": 3}),
            ],
        );
        let r = execution_result(&e, 0.0, &Caps::default());
        assert_eq!(r.is_error, Some(false));
        let t = texts(&r);
        assert_eq!(&t[1..], &["hi\n".to_string(), "2".to_string()]);
        assert_eq!(r.structured_content.as_ref().unwrap()["state"], "completed");

        let e = exec(
            State::Failed,
            vec![
                json!({"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero",
                "traceback": ["\u{1b}[31mTraceback\u{1b}[0m", "ZeroDivisionError: division by zero"]}),
            ],
        );
        let r = execution_result(&e, 0.0, &Caps::default());
        assert_eq!(r.is_error, Some(true));
        assert!(texts(&r)[1].starts_with("ZeroDivisionError: division by zero\nTraceback\n"));
    }

    #[test]
    fn small_images_inline_and_large_ones_are_referenced() {
        let png = json!({"output_type": "display_data", "data": {"image/png": "iVBORw0K\nGgo=", "text/plain": "<Image>"}, "metadata": {}});
        let r = execution_result(&exec(State::Completed, vec![png.clone()]), 0.0, &Caps::default());
        let img = r.content[1].as_image().expect("an image block");
        assert_eq!(
            (img.data.as_str(), img.mime_type.as_str()),
            ("iVBORw0KGgo=", "image/png")
        );
        let caps = Caps {
            image_bytes: 4,
            ..Caps::default()
        };
        let r = execution_result(&exec(State::Completed, vec![png]), 0.0, &caps);
        assert!(texts(&r)[1].contains("GET /v1/executions/e1 → outputs[0]"));
    }

    #[test]
    fn outputs_moved_to_assets_are_referenced_by_file() {
        let stub = json!({"output_type": "display_data", "metadata": {"notebook.dev/assets": [
            {"path": "assets/ab12.png", "mime": "image/png", "size": 2_000_000, "sha256": "ab12"}]},
            "data": {"text/plain": "<Image>", "text/markdown": "![image/png](assets/ab12.png)"}});
        let r = execution_result(&exec(State::Completed, vec![stub]), 0.0, &Caps::default());
        assert_eq!(
            &texts(&r)[1..],
            &["[image/png output of 1.9 MiB not inlined, saved as assets/ab12.png: GET /v1/assets/ab12.png]"]
        );
    }

    #[test]
    fn unfinished_executions_return_their_id_not_an_error() {
        let r = execution_result(&exec(State::Running, vec![]), 1.0, &Caps::default());
        assert_eq!(r.is_error, Some(false));
        assert_eq!(r.structured_content.as_ref().unwrap()["id"], "e1");
        assert!(texts(&r)[1].contains("get_execution"));
    }

    #[test]
    fn text_and_totals_are_capped() {
        assert_eq!(cap_text("héllo", 2, "x"), "h\n… [x: 5 more bytes not shown]");
        let big = json!({"output_type": "stream", "name": "stdout", "text": "x".repeat(100)});
        let caps = Caps {
            text_bytes: 1000,
            image_bytes: 10,
            total_bytes: 150,
        };
        let r = execution_result(&exec(State::Completed, vec![big.clone(), big]), 0.0, &caps);
        assert!(texts(&r).last().unwrap().contains("outputs from #1 on not shown"));
    }
}
