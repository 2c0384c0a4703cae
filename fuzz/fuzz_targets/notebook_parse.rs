//! A notebook file (anyone who can write to the workspace) into
//! `notebook::model::parse`, then the edits the sidecar makes on it.
//! Invariants: what `parse` accepts writes back to bytes that parse to the
//! same notebook; `ensure_ids` gives every cell a valid, unique id and is
//! idempotent; an edit of a notebook that passes `check` still passes it, and
//! does what it says; outputs taken from the file are cleaned to the four
//! nbformat shapes.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use notebook_operator::notebook::model::{self, CellType, Position};
use serde_json::{json, Value};

fn ids(nb: &Value) -> Vec<String> {
    nb["cells"]
        .as_array()
        .map(|c| c.iter().filter_map(model::cell_id).map(String::from).collect())
        .unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut nb) = model::parse(data) else {
        return;
    };
    let bytes = model::to_bytes(&nb);
    assert_eq!(model::parse(&bytes).expect("what we write parses"), nb);

    let n = nb["cells"].as_array().map_or(0, Vec::len);
    model::ensure_ids(&mut nb);
    assert!(!model::ensure_ids(&mut nb), "ensure_ids is not idempotent");
    let got = ids(&nb);
    assert_eq!(got.len(), n, "a cell without an id after ensure_ids");
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), n, "repeated ids");

    // The sidecar's edits, in the order a client might make them.
    let valid_before = model::check(&nb).is_ok();
    let outputs: Vec<Value> = nb["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("outputs").and_then(Value::as_array))
        .flatten()
        .cloned()
        .collect();
    let cleaned = model::clean_outputs(&outputs);
    for o in &cleaned {
        let t = o["output_type"].as_str().unwrap_or("");
        assert!(
            matches!(t, "stream" | "display_data" | "execute_result" | "error"),
            "{o}"
        );
    }
    let src = String::from_utf8_lossy(&data[..data.len().min(64)]).into_owned();
    let at = match data.len() % 3 {
        0 => Position::End,
        1 => Position::Index(data.len() % (n + 1)),
        _ => Position::After(got.first().cloned().unwrap_or_default()),
    };
    let (id, index) = match model::insert(&mut nb, at, CellType::Code, &src) {
        Ok(r) => r,
        Err(_) => {
            assert!(n == 0, "insert after an existing cell failed");
            return;
        }
    };
    assert_eq!(model::index_of(&nb, &id), Some(index));
    assert_eq!(model::source(model::cell(&nb, &id).expect("the new cell")), src);
    model::set_outputs(&mut nb, &id, &outputs, Some(1)).expect("outputs into a code cell");
    assert_eq!(model::cell(&nb, &id).unwrap()["outputs"], json!(cleaned));
    model::edit(&mut nb, &id, "edited").expect("edit the new cell");
    if let Some(first) = got.first() {
        model::edit(&mut nb, first, &src).expect("edit an existing cell");
    }
    if valid_before {
        model::check(&nb).expect("an edit broke a valid notebook");
    }
    let removed = model::delete(&mut nb, &id).expect("delete the new cell");
    assert_eq!(model::cell_id(&removed), Some(id.as_str()));
    assert_eq!(ids(&nb), got);
    if valid_before {
        model::check(&nb).expect("a delete broke a valid notebook");
        let back = model::parse(&model::to_bytes(&nb)).expect("an edited notebook parses");
        model::check(&back).expect("and passes the check");
    }
});
