//! Turning iopub messages into nbformat outputs (pure): consecutive stream
//! text of one name is merged, `clear_output` and `update_display_data` are
//! applied, and every mime type of a rich output is kept.

use std::collections::HashMap;

use serde_json::{json, Value};

/// What one iopub message did to the outputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new output, or stream text appended (`output` holds only the new text).
    Output(Value),
    /// Outputs with this display id were replaced.
    Update {
        display_id: String,
        output: Value,
    },
    Cleared,
    /// The message was not an output.
    None,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outputs {
    list: Vec<Value>,
    displays: HashMap<String, Vec<usize>>,
    clear_on_next: bool,
    /// Most output bytes kept (`None`: no limit).
    limit: Option<u64>,
    /// The end of output was never confirmed (no idle status, no witness).
    unconfirmed: bool,
    /// Bytes kept and bytes left out past the limit, and the messages cut.
    kept: u64,
    dropped_bytes: u64,
    dropped_messages: u64,
}

/// The size an output counts for against the limit: stream text, or the
/// rich values (strings by length, other JSON by its encoding).
fn rich_size(content: &Value) -> u64 {
    content
        .get("data")
        .and_then(Value::as_object)
        .map(|d| {
            d.values()
                .map(|v| match v {
                    Value::String(s) => s.len() as u64,
                    other => other.to_string().len() as u64,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The longest prefix of `text` of at most `max` bytes, on a char boundary.
fn prefix(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn rich(output_type: &str, content: &Value) -> Value {
    let mut o = json!({
        "output_type": output_type,
        "data": content.get("data").cloned().unwrap_or_else(|| json!({})),
        "metadata": content.get("metadata").cloned().unwrap_or_else(|| json!({})),
    });
    if output_type == "execute_result" {
        o["execution_count"] = content.get("execution_count").cloned().unwrap_or(Value::Null);
    }
    o
}

impl Outputs {
    /// Outputs that keep at most `limit` bytes; past it they count what
    /// they leave out, and `truncation` says so.
    pub fn with_limit(limit: u64) -> Outputs {
        Outputs {
            limit: Some(limit),
            ..Outputs::default()
        }
    }

    pub fn into_vec(self) -> Vec<Value> {
        self.list
    }

    /// What the limit left out, if anything was; or that the end of the
    /// output was never confirmed.
    pub fn truncation(&self) -> Option<crate::store::Truncation> {
        let reason = if self.dropped_messages > 0 {
            "max_output_bytes"
        } else if self.unconfirmed {
            "end_of_output_unconfirmed"
        } else {
            return None;
        };
        Some(crate::store::Truncation {
            kept_bytes: self.kept,
            dropped_bytes: self.dropped_bytes,
            dropped_messages: self.dropped_messages,
            limit_bytes: self.limit.unwrap_or(0),
            reason: reason.into(),
        })
    }

    /// The kernel's idle status never came and neither did the witness:
    /// output sent after what we have may be missing.
    pub fn mark_unconfirmed(&mut self) {
        self.unconfirmed = true;
    }

    /// Appends an output as it is, outside the limit (the sidecar's own
    /// notes, such as the truncation marker).
    pub fn push_note(&mut self, o: Value) {
        self.list.push(o);
    }

    /// How many of `size` bytes still fit under the limit; counts the rest.
    fn admit(&mut self, size: u64) -> u64 {
        let room = self.limit.map_or(u64::MAX, |l| l.saturating_sub(self.kept));
        let take = size.min(room);
        self.kept += take;
        if take < size {
            self.dropped_bytes += size - take;
            self.dropped_messages += 1;
        }
        take
    }

    pub fn as_slice(&self) -> &[Value] {
        &self.list
    }

    fn push(&mut self, o: Value, display_id: Option<&str>) {
        if self.clear_on_next {
            self.clear();
        }
        if let Some(id) = display_id {
            self.displays
                .entry(id.to_string())
                .or_default()
                .push(self.list.len());
        }
        self.list.push(o);
    }

    fn clear(&mut self) {
        self.list.clear();
        self.displays.clear();
        self.clear_on_next = false;
    }

    pub fn apply(&mut self, msg_type: &str, content: &Value) -> Change {
        let display_id = content
            .pointer("/transient/display_id")
            .and_then(Value::as_str)
            .map(String::from);
        match msg_type {
            "stream" => {
                let name = content
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("stdout")
                    .to_string();
                let full = content.get("text").and_then(Value::as_str).unwrap_or("");
                let take = self.admit(full.len() as u64) as usize;
                let text = prefix(full, take);
                if text.is_empty() && !full.is_empty() {
                    return Change::None;
                }
                if self.clear_on_next {
                    self.clear();
                }
                // Appended in place: a flood of small chunks stays linear.
                let merged = match self.list.last_mut() {
                    Some(last) if last["output_type"] == "stream" && last["name"] == name.as_str() => {
                        match last.get_mut("text") {
                            Some(Value::String(t)) => {
                                t.push_str(text);
                                true
                            }
                            _ => false,
                        }
                    }
                    _ => false,
                };
                if !merged {
                    self.list
                        .push(json!({"output_type": "stream", "name": name, "text": text}));
                }
                Change::Output(json!({"output_type": "stream", "name": name, "text": text}))
            }
            "display_data" | "execute_result" => {
                let size = rich_size(content);
                if self.admit(size) < size {
                    return Change::None;
                }
                let o = rich(msg_type, content);
                self.push(o.clone(), display_id.as_deref());
                Change::Output(o)
            }
            "error" => {
                let o = json!({
                    "output_type": "error",
                    "ename": content.get("ename").cloned().unwrap_or(json!("")),
                    "evalue": content.get("evalue").cloned().unwrap_or(json!("")),
                    "traceback": content.get("traceback").cloned().unwrap_or(json!([])),
                });
                self.push(o.clone(), None);
                Change::Output(o)
            }
            "update_display_data" => {
                let Some(id) = display_id else { return Change::None };
                let size = rich_size(content);
                if self.admit(size) < size {
                    return Change::None;
                }
                let o = rich("display_data", content);
                for &i in self.displays.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
                    if let Some(slot) = self.list.get_mut(i) {
                        slot["data"] = o["data"].clone();
                        slot["metadata"] = o["metadata"].clone();
                    }
                }
                Change::Update {
                    display_id: id,
                    output: o,
                }
            }
            "clear_output" => {
                if content.get("wait").and_then(Value::as_bool).unwrap_or(false) {
                    self.clear_on_next = true;
                } else {
                    self.clear();
                }
                Change::Cleared
            }
            _ => Change::None,
        }
    }
}

/// The note that ends the outputs of a truncated execution (stderr, so a
/// notebook shows it where a person looks for trouble).
pub fn truncation_note(t: &crate::store::Truncation) -> Value {
    let text = if t.reason == "max_output_bytes" {
        format!(
            "\n[notebook-operator: output truncated: kept {} bytes, left out {} bytes in {} messages \
             (limit max_output_bytes = {})]\n",
            t.kept_bytes, t.dropped_bytes, t.dropped_messages, t.limit_bytes
        )
    } else {
        format!(
            "\n[notebook-operator: the kernel never confirmed the end of this output; \
             {} bytes were recorded and later output may be missing]\n",
            t.kept_bytes
        )
    };
    json!({"output_type": "stream", "name": "stderr", "text": text})
}

/// Stream text longer than `max` bytes as its head and tail, with a line
/// saying how much was left out and which execution holds all of it. The
/// execution record keeps the whole text; notebooks and MCP results get this.
pub fn head_tail(text: &str, max: usize, execution_id: &str) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let half = max / 2;
    let mut head_end = half;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - half;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let left_out = &text[head_end..tail_start];
    format!(
        "{}\n[… {} bytes, {} lines left out; the whole output is in execution {execution_id} \
         (GET /v1/executions/{execution_id})]\n{}",
        &text[..head_end],
        left_out.len(),
        left_out.matches('\n').count(),
        &text[tail_start..]
    )
}

/// Outputs for a notebook: stream text capped by [`head_tail`].
pub fn for_notebook(outputs: &[Value], max_stream: usize, execution_id: &str) -> Vec<Value> {
    outputs
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if o["output_type"] == "stream" {
                if let Some(t) = o["text"].as_str() {
                    if t.len() > max_stream {
                        o["text"] = Value::String(head_tail(t, max_stream, execution_id));
                    }
                }
            }
            o
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_streams_keep_head_and_tail_and_say_what_was_left_out() {
        let text: String = (0..10_000).map(|i| format!("{i}\n")).collect();
        let cut = head_tail(&text, 1000, "e1");
        assert!(cut.len() < 1200);
        assert!(cut.starts_with("0\n1\n"));
        assert!(cut.ends_with("9999\n"));
        assert!(cut.contains("left out; the whole output is in execution e1"));
        assert_eq!(head_tail("short", 1000, "e1"), "short");
        let o = vec![json!({"output_type": "stream", "name": "stdout", "text": text})];
        assert!(for_notebook(&o, 1000, "e1")[0]["text"].as_str().unwrap().len() < 1200);
    }

    use super::*;

    #[test]
    fn merges_consecutive_stream_text_of_one_name() {
        let mut o = Outputs::default();
        o.apply("stream", &json!({"name": "stdout", "text": "a\n"}));
        o.apply("stream", &json!({"name": "stdout", "text": "b\n"}));
        o.apply("stream", &json!({"name": "stderr", "text": "c\n"}));
        o.apply("stream", &json!({"name": "stdout", "text": "d\n"}));
        let v = o.into_vec();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0]["text"], "a\nb\n");
        assert_eq!(v[2]["text"], "d\n");
    }

    #[test]
    fn keeps_every_mime_type_and_the_count() {
        let mut o = Outputs::default();
        let c = json!({"data": {"text/plain": "2", "text/html": "<b>2</b>"}, "metadata": {}, "execution_count": 3});
        o.apply("execute_result", &c);
        let v = o.into_vec();
        assert_eq!(v[0]["output_type"], "execute_result");
        assert_eq!(v[0]["data"]["text/html"], "<b>2</b>");
        assert_eq!(v[0]["execution_count"], 3);
    }

    #[test]
    fn updates_displays_by_id_and_clears() {
        let mut o = Outputs::default();
        o.apply(
            "display_data",
            &json!({"data": {"text/plain": "1"}, "transient": {"display_id": "d"}}),
        );
        o.apply(
            "update_display_data",
            &json!({"data": {"text/plain": "2"}, "transient": {"display_id": "d"}}),
        );
        assert_eq!(o.as_slice()[0]["data"]["text/plain"], "2");
        o.apply("clear_output", &json!({"wait": true}));
        assert_eq!(o.as_slice().len(), 1, "wait=true clears on the next output");
        o.apply("stream", &json!({"name": "stdout", "text": "x"}));
        assert_eq!(o.as_slice().len(), 1);
        assert_eq!(o.as_slice()[0]["text"], "x");
        o.apply("clear_output", &json!({"wait": false}));
        assert!(o.as_slice().is_empty());
    }

    #[test]
    fn a_limit_keeps_a_prefix_and_counts_the_rest() {
        let mut o = Outputs::with_limit(10);
        o.apply("stream", &json!({"name": "stdout", "text": "0123456"}));
        o.apply("stream", &json!({"name": "stdout", "text": "789abc"}));
        assert_eq!(
            o.apply("stream", &json!({"name": "stdout", "text": "def"})),
            Change::None
        );
        assert_eq!(
            o.apply("display_data", &json!({"data": {"text/plain": "big"}})),
            Change::None
        );
        let t = o.truncation().unwrap();
        assert_eq!(
            (t.kept_bytes, t.dropped_bytes, t.dropped_messages),
            (10, 3 + 3 + 3, 3)
        );
        assert_eq!(o.as_slice()[0]["text"], "0123456789");
        let mut unlimited = Outputs::default();
        unlimited.apply("stream", &json!({"name": "stdout", "text": "x".repeat(1000)}));
        assert!(unlimited.truncation().is_none());
    }

    #[test]
    fn many_small_chunks_merge_in_linear_time() {
        let mut o = Outputs::default();
        let chunk = "x".repeat(1000);
        let t0 = std::time::Instant::now();
        for _ in 0..20_000 {
            o.apply("stream", &json!({"name": "stdout", "text": chunk}));
        }
        assert_eq!(o.as_slice()[0]["text"].as_str().unwrap().len(), 20_000_000);
        // Copying the whole text per chunk took minutes here; in place, well under a second.
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn ignores_other_messages() {
        let mut o = Outputs::default();
        assert_eq!(
            o.apply("status", &json!({"execution_state": "idle"})),
            Change::None
        );
    }
}
