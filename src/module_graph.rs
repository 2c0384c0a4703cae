//! A test of the crate's layering: no module of `src/` uses a module that
//! uses it back, directly or around a longer loop. A parent and its own
//! children may refer to each other (a `mod.rs` re-exports, a child uses the
//! parent's shared types): that is one module's inside, not a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// The module a file under `src/` defines: `sidecar/mod.rs` is `sidecar`,
/// `sidecar/executor.rs` is `sidecar::executor`, `lib.rs` the crate root.
fn module_of(rel: &Path) -> Module {
    let mut parts: Module = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The text of a file without comments and without its `#[cfg(test)]` tail.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths like `crate::a::b`, `super::c` or `self::d` in `code`, each as
/// its segments; a `use` group `crate::a::{b, c}` gives `crate::a::b` and
/// `crate::a::c`.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| code_at(&bytes, i, p) && (i == 0 || !is_ident(bytes[i - 1])));
        let Some(prefix) = starts else {
            i += 1;
            continue;
        };
        let mut segs = vec![prefix.trim_end_matches("::").to_string()];
        i += prefix.len();
        loop {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            if i > start {
                segs.push(bytes[start..i].iter().collect());
            }
            if code_at(&bytes, i, "::{") {
                // A group: each first name inside it continues this path.
                i += 3;
                let close = group_end(&bytes, i);
                let inner: String = bytes[i..close].iter().collect();
                for item in split_top(&inner) {
                    let first: String = item.trim().chars().take_while(|c| is_ident(*c)).collect();
                    if !first.is_empty() && first != "self" {
                        let mut p = segs.clone();
                        p.push(first);
                        out.push(p);
                    }
                }
                i = close;
                break;
            }
            if code_at(&bytes, i, "::") {
                i += 2;
                continue;
            }
            break;
        }
        out.push(segs);
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn code_at(text: &[char], at: usize, pat: &str) -> bool {
    pat.chars().enumerate().all(|(k, c)| text.get(at + k) == Some(&c))
}

fn group_end(text: &[char], from: usize) -> usize {
    let mut depth = 1;
    let mut i = from;
    while i < text.len() {
        match text[i] {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    text.len()
}

fn split_top(inner: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

/// The module a path names (its longest prefix that is a module), seen
/// from `from` (for a `mod.rs`, the directory's module: `super` is its parent).
fn resolve(path: &[String], from: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    let (mut base, rest) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (from.clone(), &path[1..]),
        Some("super") => {
            let mut base = from.clone();
            base.pop();
            let mut rest = &path[1..];
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        _ => return None,
    };
    let mut best = None;
    for seg in rest {
        base.push(seg.clone());
        if modules.contains(&base) {
            best = Some(base.clone());
        } else {
            break;
        }
    }
    best
}

fn is_within(a: &Module, b: &Module) -> bool {
    a.len() <= b.len() && b[..a.len()] == a[..] || b.len() <= a.len() && a[..b.len()] == b[..]
}

/// Module -> the modules it uses (parents and children left out).
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let modules: BTreeSet<Module> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(src).expect("under src")))
        .collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(src).expect("under src");
        let from = module_of(rel);
        let text = std::fs::read_to_string(file).expect("read source");
        let used: BTreeSet<Module> = paths_in(&code_of(&text))
            .iter()
            .filter_map(|p| resolve(p, &from, &modules))
            .filter(|m| !is_within(m, &from))
            .collect();
        edges.entry(from).or_insert_with(BTreeSet::new).extend(used);
    }
    edges
}

/// One cycle, if the graph has any: the modules around it.
fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        path: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        state.insert(m.clone(), 1);
        path.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let at = path.iter().position(|p| p == next).unwrap_or(0);
                    let mut cycle = path[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(m.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if state.get(m).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(m, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_module_uses_a_module_that_uses_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    assert!(edges.len() > 40, "the scan found the modules: {}", edges.len());
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        panic!("modules use each other around a loop: {}", names.join(" -> "));
    }
}

#[test]
fn the_scan_sees_groups_super_and_loops() {
    let paths = paths_in("use crate::a::{b::C, d}; let x = super::e::f(); // crate::g\n");
    assert!(paths.contains(&vec!["crate".into(), "a".into(), "b".into()]));
    assert!(paths.contains(&vec!["crate".into(), "a".into(), "d".into()]));
    assert!(paths.contains(&vec!["super".into(), "e".into(), "f".into()]));
    assert!(!code_of("x // crate::g").contains("crate"));
    let m = |s: &str| s.split("::").map(String::from).collect::<Module>();
    let mut edges = BTreeMap::new();
    edges.insert(m("a::x"), BTreeSet::from([m("a::y")]));
    edges.insert(m("a::y"), BTreeSet::from([m("b")]));
    edges.insert(m("b"), BTreeSet::from([m("a::x")]));
    assert_eq!(find_cycle(&edges).map(|c| c.len()), Some(4));
    edges.insert(m("b"), BTreeSet::new());
    assert_eq!(find_cycle(&edges), None);
}
