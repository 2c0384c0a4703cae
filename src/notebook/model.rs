//! Pure edits of nbformat v4 notebook JSON. Unknown fields are kept as they
//! are; cells get ids (nbformat 4.5) when they have none, and an id once
//! given never changes. Every write goes through `check` first, so a file
//! this module produced always has the v4.5 shape.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{json, Map, Value};

/// What kind of cell to insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellType {
    Code,
    Markdown,
    Raw,
}

impl CellType {
    pub fn parse(s: &str) -> Option<CellType> {
        match s {
            "code" => Some(CellType::Code),
            "markdown" => Some(CellType::Markdown),
            "raw" => Some(CellType::Raw),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CellType::Code => "code",
            CellType::Markdown => "markdown",
            CellType::Raw => "raw",
        }
    }
}

/// Where a new cell goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Before the cell now at this index; the length appends.
    Index(usize),
    /// Right after the cell with this id.
    After(String),
    End,
}

/// Why an edit could not be made (the caller adds the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    UnknownCell(String),
    Invalid(String),
}

/// A fresh, valid cell id: 8 hex digits, unique in `taken`.
fn fresh_id(taken: &HashSet<String>) -> String {
    loop {
        let id = crate::util::random_hex(4);
        if !taken.contains(&id) {
            return id;
        }
    }
}

pub fn is_valid_cell_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks the parts of the v4 shape this module relies on, so that a file
/// that is not a notebook is refused rather than rewritten.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let nb: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(obj) = nb.as_object() else {
        return Err("the top level is not a JSON object".into());
    };
    match obj.get("nbformat").and_then(Value::as_i64) {
        Some(4) => {}
        Some(v) => return Err(format!("nbformat {v}; only version 4 is supported")),
        None => return Err("no nbformat version".into()),
    }
    let Some(cells) = obj.get("cells").and_then(Value::as_array) else {
        return Err("no cells list".into());
    };
    for (i, c) in cells.iter().enumerate() {
        let t = c.get("cell_type").and_then(Value::as_str);
        if !matches!(t, Some("code" | "markdown" | "raw")) {
            return Err(format!("cell {i} has no known cell_type"));
        }
    }
    Ok(nb)
}

/// Brings a v4 notebook to v4.5: every cell gets a valid, unique id; ids
/// already valid and unique are kept. Returns whether anything changed.
pub fn ensure_ids(nb: &mut Value) -> bool {
    let mut changed = false;
    if nb.get("nbformat_minor").and_then(Value::as_i64).unwrap_or(0) < 5 {
        nb["nbformat_minor"] = json!(5);
        changed = true;
    }
    let Some(cells) = nb.get_mut("cells").and_then(Value::as_array_mut) else {
        return changed;
    };
    let mut taken: HashSet<String> = HashSet::new();
    let mut need: Vec<usize> = Vec::new();
    for (i, c) in cells.iter().enumerate() {
        match c.get("id").and_then(Value::as_str) {
            Some(id) if is_valid_cell_id(id) && !taken.contains(id) => {
                taken.insert(id.to_string());
            }
            _ => need.push(i),
        }
    }
    for i in need {
        let id = fresh_id(&taken);
        taken.insert(id.clone());
        if let Some(c) = cells.get_mut(i).and_then(Value::as_object_mut) {
            c.insert("id".into(), json!(id));
            changed = true;
        }
    }
    changed
}

/// A new empty notebook for a kernel whose `kernel_info_reply` is `info`.
pub fn new_notebook(info: &Value) -> Value {
    let mut language_info = info
        .get("language_info")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    if language_info.get("name").and_then(Value::as_str).is_none() {
        language_info["name"] = json!("python");
    }
    let lang = language_info["name"].as_str().unwrap_or("python").to_string();
    let kernelspec = if lang == "python" {
        json!({"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"})
    } else {
        json!({"name": lang, "display_name": lang, "language": lang})
    };
    json!({
        "cells": [],
        "metadata": {"kernelspec": kernelspec, "language_info": language_info},
        "nbformat": 4,
        "nbformat_minor": 5,
    })
}

fn cells(nb: &Value) -> &[Value] {
    nb.get("cells")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn cells_mut(nb: &mut Value) -> Result<&mut Vec<Value>, EditError> {
    nb.get_mut("cells")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| EditError::Invalid("the notebook has no cells list".into()))
}

pub fn cell_id(cell: &Value) -> Option<&str> {
    cell.get("id").and_then(Value::as_str)
}

pub fn index_of(nb: &Value, id: &str) -> Option<usize> {
    cells(nb).iter().position(|c| cell_id(c) == Some(id))
}

pub fn cell<'a>(nb: &'a Value, id: &str) -> Option<&'a Value> {
    cells(nb).iter().find(|c| cell_id(c) == Some(id))
}

pub fn cell_type(cell: &Value) -> &str {
    cell.get("cell_type").and_then(Value::as_str).unwrap_or("")
}

/// A cell's source as one string (nbformat allows a string or a list of lines).
pub fn source(cell: &Value) -> String {
    multiline(cell.get("source"))
}

/// nbformat's "multiline string": a string, or a list of strings to join.
pub fn multiline(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// Inserts a new cell; returns its id and index.
pub fn insert(nb: &mut Value, at: Position, kind: CellType, src: &str) -> Result<(String, usize), EditError> {
    ensure_ids(nb);
    let taken: HashSet<String> = cells(nb).iter().filter_map(cell_id).map(String::from).collect();
    let id = fresh_id(&taken);
    let len = cells(nb).len();
    let index = match at {
        Position::Index(i) if i <= len => i,
        Position::Index(i) => {
            return Err(EditError::Invalid(format!(
                "index {i} is past the end: the notebook has {len} cells"
            )))
        }
        Position::After(after) => index_of(nb, &after).ok_or(EditError::UnknownCell(after))? + 1,
        Position::End => len,
    };
    let mut cell = Map::new();
    cell.insert("cell_type".into(), json!(kind.as_str()));
    cell.insert("id".into(), json!(id));
    cell.insert("metadata".into(), json!({}));
    cell.insert("source".into(), json!(src));
    if kind == CellType::Code {
        cell.insert("execution_count".into(), Value::Null);
        cell.insert("outputs".into(), json!([]));
    }
    cells_mut(nb)?.insert(index, Value::Object(cell));
    Ok((id, index))
}

/// Replaces a cell's source; a code cell's outputs stay until it runs again.
pub fn edit(nb: &mut Value, id: &str, src: &str) -> Result<(), EditError> {
    let i = index_of(nb, id).ok_or_else(|| EditError::UnknownCell(id.to_string()))?;
    cells_mut(nb)?[i]["source"] = json!(src);
    Ok(())
}

pub fn delete(nb: &mut Value, id: &str) -> Result<Value, EditError> {
    let i = index_of(nb, id).ok_or_else(|| EditError::UnknownCell(id.to_string()))?;
    Ok(cells_mut(nb)?.remove(i))
}

/// Keeps only outputs in one of the four nbformat output shapes, with the
/// fields the schema allows.
pub fn clean_outputs(outputs: &[Value]) -> Vec<Value> {
    let keep = |o: &Value, fields: &[&str]| {
        let mut m = Map::new();
        for f in fields {
            if let Some(v) = o.get(*f) {
                m.insert((*f).to_string(), v.clone());
            }
        }
        Value::Object(m)
    };
    outputs
        .iter()
        .filter_map(|o| match o.get("output_type").and_then(Value::as_str) {
            Some("stream") => Some(json!({
                "output_type": "stream",
                "name": o.get("name").and_then(Value::as_str).unwrap_or("stdout"),
                "text": multiline(o.get("text")),
            })),
            Some("display_data") => {
                let mut v = keep(o, &["output_type", "data", "metadata"]);
                v.as_object_mut().map(|m| m.entry("metadata").or_insert_with(|| json!({})));
                Some(v)
            }
            Some("execute_result") => {
                let mut v = keep(o, &["output_type", "data", "metadata", "execution_count"]);
                if let Some(m) = v.as_object_mut() {
                    m.entry("metadata").or_insert_with(|| json!({}));
                    m.entry("execution_count").or_insert(Value::Null);
                }
                Some(v)
            }
            Some("error") => Some(json!({
                "output_type": "error",
                "ename": o.get("ename").and_then(Value::as_str).unwrap_or(""),
                "evalue": o.get("evalue").and_then(Value::as_str).unwrap_or(""),
                "traceback": o.get("traceback").filter(|t| t.is_array()).cloned().unwrap_or_else(|| json!([])),
            })),
            _ => None,
        })
        .collect()
}

/// Writes an execution's outputs and count into a code cell.
pub fn set_outputs(nb: &mut Value, id: &str, outputs: &[Value], count: Option<i64>) -> Result<(), EditError> {
    let i = index_of(nb, id).ok_or_else(|| EditError::UnknownCell(id.to_string()))?;
    let cell = &mut cells_mut(nb)?[i];
    if cell_type(cell) != "code" {
        return Err(EditError::Invalid(format!(
            "cell {id} is a {} cell, not code",
            cell_type(cell)
        )));
    }
    cell["outputs"] = Value::Array(clean_outputs(outputs));
    cell["execution_count"] = count.map(|c| json!(c)).unwrap_or(Value::Null);
    Ok(())
}

/// The structural rules of nbformat 4.5 that a write must keep: checked
/// before every write so a bad edit fails instead of corrupting the file.
pub fn check(nb: &Value) -> Result<(), String> {
    let obj = nb.as_object().ok_or("the notebook is not an object")?;
    if obj.get("nbformat").and_then(Value::as_i64) != Some(4) {
        return Err("nbformat must be 4".into());
    }
    if obj
        .get("nbformat_minor")
        .and_then(Value::as_i64)
        .is_none_or(|m| m < 5)
    {
        return Err("nbformat_minor must be at least 5 (cell ids)".into());
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        return Err("metadata must be an object".into());
    }
    let mut seen = HashSet::new();
    for (i, c) in cells(nb).iter().enumerate() {
        let id = cell_id(c).ok_or(format!("cell {i} has no id"))?;
        if !is_valid_cell_id(id) || !seen.insert(id.to_string()) {
            return Err(format!("cell {i} has an invalid or repeated id {id:?}"));
        }
        if !c.get("metadata").is_some_and(Value::is_object) {
            return Err(format!("cell {id} has no metadata object"));
        }
        if !matches!(c.get("source"), Some(Value::String(_) | Value::Array(_))) {
            return Err(format!("cell {id} has no source"));
        }
        match cell_type(c) {
            "code" => {
                if !c.get("outputs").is_some_and(Value::is_array) {
                    return Err(format!("code cell {id} has no outputs list"));
                }
                if !matches!(c.get("execution_count"), Some(Value::Null | Value::Number(_))) {
                    return Err(format!("code cell {id} has no execution_count"));
                }
            }
            "markdown" | "raw" => {
                if c.get("outputs").is_some() || c.get("execution_count").is_some() {
                    return Err(format!("{} cell {id} must not have outputs", cell_type(c)));
                }
            }
            other => return Err(format!("cell {id} has unknown cell_type {other:?}")),
        }
    }
    Ok(())
}

/// The bytes Jupyter itself would write: one-space indent, sorted keys
/// (serde_json's map is ordered), a final newline.
pub fn to_bytes(nb: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    if nb.serialize(&mut ser).is_err() {
        // Serialising a Value into memory cannot fail; keep a compact copy if it ever does.
        out = nb.to_string().into_bytes();
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nb() -> Value {
        new_notebook(&json!({"language_info": {"name": "python", "version": "3.11"}}))
    }

    #[test]
    fn a_new_notebook_passes_the_check() {
        let n = nb();
        check(&n).unwrap();
        assert_eq!(n["metadata"]["kernelspec"]["name"], "python3");
    }

    #[test]
    fn inserts_at_index_after_an_id_and_at_the_end() {
        let mut n = nb();
        let (a, _) = insert(&mut n, Position::End, CellType::Code, "a = 1").unwrap();
        let (c, _) = insert(&mut n, Position::End, CellType::Markdown, "# c").unwrap();
        let (b, i) = insert(&mut n, Position::After(a.clone()), CellType::Code, "b").unwrap();
        assert_eq!(i, 1);
        let (z, i) = insert(&mut n, Position::Index(0), CellType::Raw, "z").unwrap();
        assert_eq!(i, 0);
        let ids: Vec<_> = cells(&n).iter().filter_map(cell_id).collect();
        assert_eq!(ids, vec![z.as_str(), a.as_str(), b.as_str(), c.as_str()]);
        check(&n).unwrap();
        assert!(cell(&n, &c).unwrap().get("outputs").is_none());
        assert_eq!(
            insert(&mut n, Position::Index(9), CellType::Code, "").unwrap_err(),
            EditError::Invalid("index 9 is past the end: the notebook has 4 cells".into())
        );
        assert_eq!(
            insert(&mut n, Position::After("nope".into()), CellType::Code, "").unwrap_err(),
            EditError::UnknownCell("nope".into())
        );
    }

    #[test]
    fn edits_and_deletes_keep_the_other_ids() {
        let mut n = nb();
        let (a, _) = insert(&mut n, Position::End, CellType::Code, "1").unwrap();
        let (b, _) = insert(&mut n, Position::End, CellType::Code, "2").unwrap();
        edit(&mut n, &b, "3").unwrap();
        assert_eq!(source(cell(&n, &b).unwrap()), "3");
        delete(&mut n, &a).unwrap();
        assert_eq!(cells(&n).len(), 1);
        assert_eq!(cell_id(&cells(&n)[0]), Some(b.as_str()));
        assert!(edit(&mut n, &a, "x").is_err());
    }

    #[test]
    fn old_notebooks_get_ids_and_keep_valid_ones() {
        let mut n = json!({"nbformat": 4, "nbformat_minor": 2, "metadata": {}, "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["# a\n", "b"]},
            {"cell_type": "code", "id": "keep-me", "metadata": {}, "source": "", "outputs": [], "execution_count": null},
            {"cell_type": "code", "id": "keep-me", "metadata": {}, "source": "", "outputs": [], "execution_count": null},
        ]});
        assert!(ensure_ids(&mut n));
        check(&n).unwrap();
        assert_eq!(cell_id(&cells(&n)[1]), Some("keep-me"));
        assert_ne!(cell_id(&cells(&n)[2]), Some("keep-me"));
        assert_eq!(source(&cells(&n)[0]), "# a\nb");
        assert!(!ensure_ids(&mut n), "a second pass changes nothing");
    }

    #[test]
    fn outputs_are_written_in_nbformat_shape() {
        let mut n = nb();
        let (a, _) = insert(&mut n, Position::End, CellType::Code, "1+1").unwrap();
        let outs = vec![
            json!({"output_type": "stream", "name": "stdout", "text": "hi\n"}),
            json!({"output_type": "execute_result", "data": {"text/plain": "2"}, "metadata": {}, "execution_count": 1, "transient": {}}),
            json!({"output_type": "bogus"}),
        ];
        set_outputs(&mut n, &a, &outs, Some(1)).unwrap();
        let c = cell(&n, &a).unwrap();
        assert_eq!(c["execution_count"], 1);
        assert_eq!(c["outputs"].as_array().unwrap().len(), 2);
        assert!(c["outputs"][1].get("transient").is_none());
        check(&n).unwrap();
        let (m, _) = insert(&mut n, Position::End, CellType::Markdown, "x").unwrap();
        assert!(set_outputs(&mut n, &m, &outs, None).is_err());
    }

    #[test]
    fn refuses_what_is_not_a_v4_notebook() {
        assert!(parse(b"{").is_err());
        assert!(parse(b"[]").is_err());
        assert!(parse(br#"{"nbformat": 3, "cells": []}"#).is_err());
        assert!(parse(br#"{"nbformat": 4}"#).is_err());
        assert!(parse(br#"{"nbformat": 4, "cells": [{"cell_type": "x"}]}"#).is_err());
        assert!(parse(&to_bytes(&nb())).is_ok());
    }

    #[test]
    fn writes_jupyter_style_json() {
        let s = String::from_utf8(to_bytes(&nb())).unwrap();
        assert!(s.starts_with("{\n \"cells\": [],\n \"metadata\""));
        assert!(s.ends_with("}\n"));
    }
}
