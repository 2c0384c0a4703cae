//! Notebook bytes (anyone who can write to the workspace) into the reader
//! that guards asset deletes: `assets::index::decode` and
//! `references_in_bytes`. Invariants: every name it returns is a valid asset
//! name that occurs in the text; and an asset path written into an output is
//! found whatever encoding the notebook was saved in (UTF-8 with or without
//! BOM, UTF-16 and UTF-32 in both byte orders, with or without BOM), with
//! the fuzz input as the text around it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use notebook_operator::assets::index::{decode, references_in, references_in_bytes};
use notebook_operator::assets::name::is_valid;
use serde_json::json;

const NAME: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.png";

fn utf16(s: &str, big: bool, bom: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for u in bom.then_some(0xFEFF).into_iter().chain(s.encode_utf16()) {
        out.extend(if big { u.to_be_bytes() } else { u.to_le_bytes() });
    }
    out
}

fn utf32(s: &str, big: bool, bom: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for c in bom.then_some('\u{FEFF}').into_iter().chain(s.chars()) {
        let u = c as u32;
        out.extend(if big { u.to_be_bytes() } else { u.to_le_bytes() });
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // Any bytes: names found are valid and legible in the decoded text.
    let text = decode(data);
    let (refs, json) = references_in_bytes(data);
    // Where the reader looked: the parsed JSON as written out again, or the
    // text with JSON's escaped slashes undone.
    let legible = match json {
        true => serde_json::from_str::<serde_json::Value>(&text)
            .expect("read as JSON")
            .to_string(),
        false => text.replace("\\/", "/"),
    };
    for r in &refs {
        assert!(is_valid(r), "{r:?} is not an asset name");
        assert!(
            legible.contains(&format!("assets/{r}")),
            "{r:?} is not in the text"
        );
    }
    assert_eq!(references_in(&text).0, refs);

    // The input as the text around a real reference, in every encoding.
    // (At most 256 bytes of it, in one of the encodings, picked by the
    // input's length: all ten of a long input made this target a hundred
    // times slower than the others for no more coverage.)
    let around = String::from_utf8_lossy(&data[..data.len().min(256)]);
    let nb = json!({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "source": around,
            "execution_count": 1, "outputs": [{"output_type": "display_data", "metadata": {},
            "data": {"text/plain": format!("{around} assets/{NAME} {around}")}}]}],
    });
    let s = serde_json::to_string_pretty(&nb).unwrap();
    let (enc, bytes) = match data.len() % 10 {
        0 => ("utf-8", s.as_bytes().to_vec()),
        1 => {
            let mut b = vec![0xEF, 0xBB, 0xBF];
            b.extend(s.as_bytes());
            ("utf-8 bom", b)
        }
        2 => ("utf-16le", utf16(&s, false, false)),
        3 => ("utf-16be", utf16(&s, true, false)),
        4 => ("utf-16le bom", utf16(&s, false, true)),
        5 => ("utf-16be bom", utf16(&s, true, true)),
        6 => ("utf-32le", utf32(&s, false, false)),
        7 => ("utf-32be", utf32(&s, true, false)),
        8 => ("utf-32le bom", utf32(&s, false, true)),
        _ => ("utf-32be bom", utf32(&s, true, true)),
    };
    assert_eq!(decode(&bytes), s.as_str(), "{enc} decodes to another text");
    let (refs, json) = references_in_bytes(&bytes);
    assert!(json, "{enc}: not read as JSON");
    assert!(refs.contains(NAME), "{enc}: the reference is missed");
});
