//! Which notebooks reference which assets. An asset is referenced when its
//! path (`assets/<sha256>.<ext>`) occurs in the outputs of any `.ipynb`
//! under the workspace, at any depth, whatever the notebook's encoding.
//!
//! Two readers of that rule:
//! - [`check_references`], the guard of a delete (guarantee 6): it reads
//!   every notebook from disk, and when it cannot read one for sure (a link,
//!   a file too large, an I/O error, a walk cut short) it says so: "not sure"
//!   is never "unreferenced".
//! - [`AssetIndex`], the advisory index behind `referenced_by` in listings:
//!   it follows file-change notifications in batches, re-reading only the
//!   notebooks that changed (size or time), and reports the notebooks it
//!   could not read instead of skipping them silently.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::name::is_valid;
use super::ASSETS_DIR;
use crate::confined::{display, ConfinedError, Kind, Root, WalkLimits};

/// Largest notebook the delete guard reads; a larger one makes it unsure.
pub const MAX_CHECK_BYTES: u64 = 256 << 20;
/// Largest notebook the advisory index reads; larger ones are reported.
pub const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Time from the first file event of a batch to the index reading the batch.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

fn is_notebook(name: &str) -> bool {
    name.ends_with(".ipynb")
}

/// Asset names whose paths occur in `text`.
pub fn find_refs(text: &str, out: &mut HashSet<String>) {
    let needle = format!("{ASSETS_DIR}/");
    let mut rest = text;
    while let Some(i) = rest.find(&needle) {
        let after = &rest[i + needle.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .unwrap_or(after.len());
        let candidate = after[..end].trim_end_matches('.');
        if is_valid(candidate) {
            out.insert(candidate.to_string());
        }
        rest = &after[end.min(after.len())..];
    }
}

/// The assets a notebook's outputs reference. A notebook that is not valid
/// JSON is read as text, so any asset path still legible in it counts.
pub fn references_in(notebook: &str) -> (HashSet<String>, bool) {
    let mut refs = HashSet::new();
    match serde_json::from_str::<Value>(notebook) {
        Ok(nb) => {
            for cell in nb.get("cells").and_then(Value::as_array).into_iter().flatten() {
                for output in cell
                    .get("outputs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    find_refs(&output.to_string(), &mut refs);
                }
            }
            (refs, true)
        }
        Err(_) => {
            // JSON may escape the slash; legible either way.
            find_refs(&notebook.replace("\\/", "/"), &mut refs);
            (refs, false)
        }
    }
}

/// A notebook's text whatever its encoding: UTF-8 (with or without a BOM),
/// UTF-16 and UTF-32 (by BOM, or by the NUL bytes around the opening `{`
/// that JSON in those encodings has), and any other bytes as UTF-8 with
/// replacement characters, which keeps every ASCII asset path legible.
pub fn decode(bytes: &[u8]) -> Cow<'_, str> {
    fn utf16(b: &[u8], big: bool) -> Cow<'static, str> {
        let units = b.chunks(2).map(|c| {
            let pair = [c[0], *c.get(1).unwrap_or(&0)];
            if big {
                u16::from_be_bytes(pair)
            } else {
                u16::from_le_bytes(pair)
            }
        });
        Cow::Owned(
            char::decode_utf16(units)
                .map(|r| r.unwrap_or('\u{FFFD}'))
                .collect(),
        )
    }
    fn utf32(b: &[u8], big: bool) -> Cow<'static, str> {
        Cow::Owned(
            b.chunks(4)
                .map(|c| {
                    let mut q = [0u8; 4];
                    q[..c.len()].copy_from_slice(c);
                    let v = if big {
                        u32::from_be_bytes(q)
                    } else {
                        u32::from_le_bytes(q)
                    };
                    char::from_u32(v).unwrap_or('\u{FFFD}')
                })
                .collect(),
        )
    }
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8_lossy(rest),
        [0xFF, 0xFE, 0, 0, rest @ ..] => utf32(rest, false),
        [0, 0, 0xFE, 0xFF, rest @ ..] => utf32(rest, true),
        [0xFF, 0xFE, rest @ ..] => utf16(rest, false),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, true),
        [a, 0, 0, 0, ..] if *a != 0 => utf32(bytes, false),
        [0, 0, 0, a, ..] if *a != 0 => utf32(bytes, true),
        [a, 0, ..] if *a != 0 => utf16(bytes, false),
        [0, a, ..] if *a != 0 => utf16(bytes, true),
        _ => String::from_utf8_lossy(bytes),
    }
}

/// The assets the notebook bytes reference.
pub fn references_in_bytes(bytes: &[u8]) -> (HashSet<String>, bool) {
    references_in(&decode(bytes))
}

/// What the delete guard found for one asset.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RefCheck {
    /// Notebooks whose outputs reference the asset.
    pub referenced_by: Vec<String>,
    /// Notebooks (or folders) that could not be read for sure, and why.
    pub unsure: Vec<String>,
}

impl RefCheck {
    /// True only when every notebook was read and none references it.
    pub fn unreferenced(&self) -> bool {
        self.referenced_by.is_empty() && self.unsure.is_empty()
    }
}

/// Notebooks that reference `name`, read from disk now: every `.ipynb` at
/// any depth (hidden folders too; links are not followed, and a link named
/// like a notebook counts as unsure).
pub fn check_references(root: &Root, name: &str, limits: WalkLimits) -> RefCheck {
    let walk = root.walk(Path::new(""), is_notebook, limits);
    let mut check = RefCheck {
        unsure: walk
            .unreadable
            .iter()
            .map(|(p, why)| format!("{p}: {why}"))
            .collect(),
        ..RefCheck::default()
    };
    for (rel, kind) in walk.found {
        match kind {
            Kind::File => {}
            Kind::Dir => continue,
            Kind::Symlink => {
                check.unsure.push(format!(
                    "{}: a symbolic link, which the sidecar does not follow",
                    display(&rel)
                ));
                continue;
            }
            // A FIFO, socket or device holds no notebook.
            _ => continue,
        }
        match root.read(&rel, MAX_CHECK_BYTES) {
            Ok((bytes, _)) => {
                if references_in_bytes(&bytes).0.contains(name) {
                    check.referenced_by.push(display(&rel));
                }
            }
            // Gone between the walk and the read: it references nothing.
            Err(ConfinedError::NotFound(_)) => {}
            Err(e) => check.unsure.push(e.to_string()),
        }
    }
    check
}

/// One notebook as the index last read it.
#[derive(Debug, Clone)]
struct Indexed {
    size: u64,
    modified: SystemTime,
    refs: HashSet<String>,
}

#[derive(Default)]
struct State {
    notebooks: HashMap<String, Indexed>,
    /// Notebooks the index could not read, and why.
    problems: BTreeMap<String, String>,
}

pub struct AssetIndex {
    root: Arc<Root>,
    state: Mutex<State>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl AssetIndex {
    pub fn new(root: Arc<Root>) -> Arc<AssetIndex> {
        Arc::new(AssetIndex {
            root,
            state: Mutex::new(State::default()),
            watcher: Mutex::new(None),
        })
    }

    pub fn root(&self) -> &Arc<Root> {
        &self.root
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads one notebook (relative path) when its size or time changed,
    /// or forgets it when it is gone.
    pub fn update(&self, rel: &Path) {
        let key = display(rel);
        let info = match self.root.info(rel) {
            Ok(i) => i,
            Err(ConfinedError::NotFound(_)) => {
                let mut st = self.lock();
                st.notebooks.remove(&key);
                st.problems.remove(&key);
                return;
            }
            Err(e) => {
                self.lock().problems.insert(key, e.to_string());
                return;
            }
        };
        match info.kind {
            Kind::File => {}
            Kind::Symlink => {
                let mut st = self.lock();
                st.notebooks.remove(&key);
                st.problems
                    .insert(key, "a symbolic link, which the sidecar does not follow".into());
                return;
            }
            // Special files hold no notebook: ignored.
            _ => {
                let mut st = self.lock();
                st.notebooks.remove(&key);
                st.problems.remove(&key);
                return;
            }
        }
        if let Some(known) = self.lock().notebooks.get(&key) {
            if known.size == info.size && known.modified == info.modified {
                return;
            }
        }
        match self.root.read(rel, MAX_INDEX_BYTES) {
            Ok((bytes, info)) => {
                let (refs, valid) = references_in_bytes(&bytes);
                if !valid {
                    tracing::warn!(notebook = %key, "not valid JSON; asset paths in its text still count");
                }
                let mut st = self.lock();
                st.problems.remove(&key);
                st.notebooks.insert(
                    key,
                    Indexed {
                        size: info.size,
                        modified: info.modified,
                        refs,
                    },
                );
            }
            Err(ConfinedError::NotFound(_)) => {
                let mut st = self.lock();
                st.notebooks.remove(&key);
                st.problems.remove(&key);
            }
            Err(e) => {
                tracing::warn!(notebook = %key, error = %e, "the asset index cannot read a notebook");
                let mut st = self.lock();
                st.notebooks.remove(&key);
                st.problems.insert(key, e.to_string());
            }
        }
    }

    /// Reads every notebook again (changed ones only), and forgets those gone.
    pub fn rescan(&self) {
        let walk = self.root.walk(Path::new(""), is_notebook, WalkLimits::default());
        let present: HashSet<String> = walk.found.iter().map(|(p, _)| display(p)).collect();
        {
            let mut st = self.lock();
            st.notebooks.retain(|k, _| present.contains(k));
            st.problems.retain(|k, _| present.contains(k));
            for (dir, why) in &walk.unreadable {
                st.problems.insert(dir.clone(), why.clone());
            }
        }
        for (rel, kind) in &walk.found {
            if *kind != Kind::Dir {
                self.update(rel);
            }
        }
    }

    pub fn referenced_by(&self, name: &str) -> Vec<String> {
        let by: BTreeSet<String> = self
            .lock()
            .notebooks
            .iter()
            .filter(|(_, nb)| nb.refs.contains(name))
            .map(|(k, _)| k.clone())
            .collect();
        by.into_iter().collect()
    }

    /// Notebooks the index could not read, with the reason.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.lock()
            .problems
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The workspace-relative form of a path a file watcher reported.
    fn relative_of(&self, p: &Path) -> Option<PathBuf> {
        p.strip_prefix(self.root.path()).ok().map(Path::to_path_buf)
    }

    /// Applies a batch of changed paths: notebooks are re-read, a new or
    /// changed folder is walked (notebooks written into it before its watch
    /// existed sent no event of their own).
    fn apply(&self, changed: HashSet<PathBuf>) {
        for p in changed {
            let Some(rel) = self.relative_of(&p) else { continue };
            let name = rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if is_notebook(&name) {
                self.update(&rel);
                continue;
            }
            if let Ok(info) = self.root.info(&rel) {
                if info.kind == Kind::Dir {
                    let walk = self.root.walk(&rel, is_notebook, WalkLimits::default());
                    for (nb, kind) in walk.found {
                        if kind != Kind::Dir {
                            self.update(&nb);
                        }
                    }
                }
            } else if rel.as_os_str().is_empty() || !name.contains('.') {
                // A folder removed or renamed away: forget what was under it.
                let prefix = format!("{}/", display(&rel));
                let mut st = self.lock();
                st.notebooks.retain(|k, _| !k.starts_with(&prefix));
                st.problems.retain(|k, _| !k.starts_with(&prefix));
            }
        }
    }

    /// Follows file-change notifications for notebooks under the workspace:
    /// events are gathered for [`DEBOUNCE`] after the first of a batch, then
    /// the changed paths are read once each, off the async runtime.
    pub fn watch(self: &Arc<Self>) -> notify::Result<()> {
        use notify::{RecursiveMode, Watcher};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })?;
        watcher.watch(self.root.path(), RecursiveMode::Recursive)?;
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(watcher);
        let index = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut changed: HashSet<PathBuf> = HashSet::new();
            let mut rescan = false;
            // Set by the first change of a batch, never moved: a steady trickle
            // of events (our own directory reads among them) cannot postpone it.
            let mut due: Option<tokio::time::Instant> = None;
            loop {
                if due.is_none() && (!changed.is_empty() || rescan) {
                    due = Some(tokio::time::Instant::now() + DEBOUNCE);
                }
                let ev = match due {
                    None => rx.recv().await,
                    Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                        Ok(ev) => ev,
                        Err(_) => {
                            let Some(index) = index.upgrade() else { return };
                            let batch = std::mem::take(&mut changed);
                            let full = std::mem::take(&mut rescan);
                            due = None;
                            let _ = tokio::task::spawn_blocking(move || {
                                if full {
                                    index.rescan();
                                } else {
                                    index.apply(batch);
                                }
                            })
                            .await;
                            continue;
                        }
                    },
                };
                match ev {
                    None => return,
                    // Reads (our own among them) are not changes: reacting to
                    // them would make every scan trigger the next.
                    Some(Ok(ev)) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
                    Some(Ok(ev)) => changed.extend(ev.paths),
                    Some(Err(e)) => {
                        // Events may have been lost (queue overflow): read everything again.
                        tracing::warn!(error = %e, "file notifications; rescanning notebooks");
                        rescan = true;
                    }
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(c: char) -> String {
        format!("{}.png", c.to_string().repeat(64))
    }

    fn nb_referencing(a: &str) -> String {
        serde_json::json!({"cells": [{"cell_type": "code", "source": "", "outputs": [
            {"output_type": "display_data", "data": {"text/markdown": format!("![x](assets/{a})")}}]}]})
        .to_string()
    }

    #[test]
    fn finds_paths_in_outputs_only() {
        let a = name('a');
        let b = name('b');
        let nb = serde_json::json!({"cells": [
            {"cell_type": "code", "source": format!("open('assets/{b}')"),
             "outputs": [{"output_type": "display_data", "data": {"text/markdown": format!("![x](assets/{a})")}}]}
        ]});
        let (refs, valid) = references_in(&nb.to_string());
        assert!(valid);
        assert_eq!(refs, HashSet::from([a]));
    }

    #[test]
    fn invalid_json_still_counts_legible_paths() {
        let a = name('c');
        let (refs, valid) = references_in(&format!("{{ not json ... assets\\/{a} ..."));
        assert!(!valid);
        assert!(refs.contains(&a));
    }

    #[test]
    fn ignores_names_that_are_not_assets() {
        let mut out = HashSet::new();
        find_refs("assets/../etc/passwd assets/abc.png assets/", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn every_encoding_is_read() {
        let a = name('d');
        let text = nb_referencing(&a);
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let bom16: Vec<u8> = [0xFF, 0xFE].into_iter().chain(le.iter().copied()).collect();
        let le32: Vec<u8> = text.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
        let bom8: Vec<u8> = [0xEF, 0xBB, 0xBF].into_iter().chain(text.bytes()).collect();
        // Latin-1 bytes in a cell's source: not UTF-8, still a notebook.
        let latin1_bytes: Vec<u8> = text
            .replacen("\"source\":\"\"", "\"source\":\"caf#\"", 1)
            .bytes()
            .map(|b| if b == b'#' { 0xE9 } else { b })
            .collect();
        assert!(std::str::from_utf8(&latin1_bytes).is_err());
        for (label, bytes) in [
            ("utf-16le", le),
            ("utf-16be", be),
            ("utf-16 bom", bom16),
            ("utf-32le", le32),
            ("utf-8 bom", bom8),
            ("latin-1", latin1_bytes),
        ] {
            assert!(references_in_bytes(&bytes).0.contains(&a), "{label}");
        }
    }

    #[test]
    fn the_guard_is_unsure_of_what_it_cannot_read() {
        let d = std::env::temp_dir().join(format!("nbo-refs-{}", crate::util::random_hex(6)));
        std::fs::create_dir_all(d.join("deep/er")).unwrap();
        let a = name('e');
        let root = Root::open(&d).unwrap();
        assert!(check_references(&root, &a, WalkLimits::default()).unreferenced());
        std::fs::write(d.join("deep/er/x.ipynb"), nb_referencing(&a)).unwrap();
        let c = check_references(&root, &a, WalkLimits::default());
        assert_eq!(c.referenced_by, vec!["deep/er/x.ipynb".to_string()]);
        std::fs::remove_file(d.join("deep/er/x.ipynb")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/y.ipynb", d.join("link.ipynb")).unwrap();
        let c = check_references(&root, &a, WalkLimits::default());
        assert!(!c.unreferenced() && c.referenced_by.is_empty(), "{c:?}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
