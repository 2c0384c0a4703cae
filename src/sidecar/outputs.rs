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

#[derive(Debug, Default, Clone)]
pub struct Outputs {
    list: Vec<Value>,
    displays: HashMap<String, Vec<usize>>,
    clear_on_next: bool,
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
    pub fn into_vec(self) -> Vec<Value> {
        self.list
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
                let text = content
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if self.clear_on_next {
                    self.clear();
                }
                let merged = self.list.last_mut().is_some_and(|last| {
                    if last["output_type"] == "stream" && last["name"] == name.as_str() {
                        let mut t = last["text"].as_str().unwrap_or("").to_string();
                        t.push_str(&text);
                        last["text"] = Value::String(t);
                        true
                    } else {
                        false
                    }
                });
                if !merged {
                    self.list
                        .push(json!({"output_type": "stream", "name": name, "text": text}));
                }
                Change::Output(json!({"output_type": "stream", "name": name, "text": text}))
            }
            "display_data" | "execute_result" => {
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
    fn ignores_other_messages() {
        let mut o = Outputs::default();
        assert_eq!(
            o.apply("status", &json!({"execution_state": "idle"})),
            Change::None
        );
    }
}
