//! A client's `POST /v1/executions` body into `http::executions::parse_submit`,
//! and the notebook path it names into `notebook::path`. Invariants: a body
//! is accepted exactly when it is a JSON object with a string `code` and
//! well-typed optional fields, and what is accepted is what the body says;
//! an accepted notebook path never leaves the workspace.
#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use notebook_operator::http::executions::parse_submit;
use notebook_operator::notebook::path;
use serde_json::Value;

fn field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<String>, ()> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse_submit(data);
    let obj = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(obj)) => obj,
        _ => {
            let e = parsed.err().expect("accepted a body that is not a JSON object");
            assert_eq!(e.field, Some("body"));
            return;
        }
    };
    let code = obj.get("code").and_then(Value::as_str);
    let key = field(&obj, "key");
    let notebook = field(&obj, "notebook");
    let cell_id = field(&obj, "cell_id");
    let timeout_ok = matches!(obj.get("timeout_s"), None | Some(Value::Null | Value::Number(_)));
    let valid = code.is_some() && key.is_ok() && notebook.is_ok() && cell_id.is_ok() && timeout_ok;
    match parsed {
        Ok(req) => {
            assert!(valid, "accepted an invalid body");
            assert_eq!(Some(req.code.as_str()), code);
            assert_eq!(Ok(req.key), key);
            assert_eq!(Ok(req.notebook.clone()), notebook);
            assert_eq!(Ok(req.cell_id), cell_id);
            assert_eq!(req.timeout_s, obj.get("timeout_s").and_then(Value::as_f64));
            if let Some(nb) = req.notebook {
                if let Ok(rel) = path::notebook(&nb) {
                    assert!(rel.extension().is_some_and(|e| e == "ipynb"));
                    for c in rel.components() {
                        assert!(
                            matches!(c, Component::Normal(n) if !n.is_empty()),
                            "{nb:?} accepted as {rel:?}, which has {c:?}"
                        );
                    }
                    // The displayed form is a path that reads back the same.
                    let shown = path::display(&rel);
                    assert_eq!(path::notebook(&shown).ok().as_ref(), Some(&rel), "{shown:?}");
                }
            }
        }
        Err(e) => {
            assert!(!valid, "refused a valid body: {}", e.message);
            assert!(e.field.is_some(), "an error that names no field: {}", e.message);
        }
    }
});
