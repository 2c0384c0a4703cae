//! Which notebooks reference which assets. An asset is referenced when its
//! path (`assets/<sha256>.<ext>`) occurs in the outputs of any `.ipynb`
//! under the workspace. The index follows file-change notifications; a
//! delete re-checks from disk under the workspace lock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::name::is_valid;
use super::ASSETS_DIR;

/// How deep the workspace walk goes.
const MAX_DEPTH: usize = 16;

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
            find_refs(notebook, &mut refs);
            (refs, false)
        }
    }
}

/// Every `.ipynb` under `root`, not following symlinks.
pub fn notebooks_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() && depth < MAX_DEPTH {
                stack.push((p, depth + 1));
            } else if ft.is_file() && p.extension().is_some_and(|x| x == "ipynb") {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

/// Notebooks that reference `name`, read from disk now.
pub fn scan_references(workspace: &Path, name: &str) -> Vec<String> {
    let mut by = Vec::new();
    for nb in notebooks_under(workspace) {
        let Ok(text) = std::fs::read_to_string(&nb) else {
            continue;
        };
        if !text.contains(name) {
            continue;
        }
        if references_in(&text).0.contains(name) {
            by.push(relative(workspace, &nb));
        }
    }
    by
}

fn relative(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

pub struct AssetIndex {
    workspace: PathBuf,
    refs: Mutex<HashMap<String, HashSet<String>>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl AssetIndex {
    pub fn new(workspace: &Path) -> Arc<AssetIndex> {
        Arc::new(AssetIndex {
            workspace: workspace.to_path_buf(),
            refs: Mutex::new(HashMap::new()),
            watcher: Mutex::new(None),
        })
    }

    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        self.refs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads one notebook (or forgets it when it is gone).
    pub fn update(&self, notebook: &Path) {
        let key = relative(&self.workspace, notebook);
        match std::fs::read_to_string(notebook) {
            Ok(text) => {
                let (refs, valid) = references_in(&text);
                if !valid {
                    tracing::warn!(notebook = %key, "not valid JSON; asset paths in its text still count");
                }
                self.lock().insert(key, refs);
            }
            Err(_) => {
                self.lock().remove(&key);
            }
        }
    }

    pub fn rescan(&self) {
        let all = notebooks_under(&self.workspace);
        let mut fresh = HashMap::new();
        for nb in &all {
            if let Ok(text) = std::fs::read_to_string(nb) {
                fresh.insert(relative(&self.workspace, nb), references_in(&text).0);
            }
        }
        *self.lock() = fresh;
    }

    pub fn referenced_by(&self, name: &str) -> Vec<String> {
        let by: BTreeSet<String> = self
            .lock()
            .iter()
            .filter(|(_, refs)| refs.contains(name))
            .map(|(nb, _)| nb.clone())
            .collect();
        by.into_iter().collect()
    }

    /// Follows file-change notifications for notebooks under the workspace.
    pub fn watch(self: &Arc<Self>) -> notify::Result<()> {
        use notify::{RecursiveMode, Watcher};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })?;
        watcher.watch(&self.workspace, RecursiveMode::Recursive)?;
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(watcher);
        let index = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let Some(index) = index.upgrade() else { return };
                match ev {
                    // Reads (our own scans among them) are not changes: reacting to
                    // them would make every scan trigger the next.
                    Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
                    Ok(ev) => {
                        let created = matches!(ev.kind, notify::EventKind::Create(_));
                        for p in ev.paths {
                            let index = index.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                if created && p.is_dir() {
                                    // A new folder: notebooks written into it before
                                    // its watch was added sent no event of their own.
                                    for nb in notebooks_under(&p) {
                                        index.update(&nb);
                                    }
                                } else if p.extension().is_some_and(|x| x == "ipynb") {
                                    index.update(&p);
                                }
                            })
                            .await;
                        }
                    }
                    Err(e) => {
                        // Events may have been lost (queue overflow): read everything again.
                        tracing::warn!(error = %e, "file notifications; rescanning notebooks");
                        let index = index.clone();
                        let _ = tokio::task::spawn_blocking(move || index.rescan()).await;
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
        let (refs, valid) = references_in(&format!("{{ not json ... assets/{a} ..."));
        assert!(!valid);
        assert!(refs.contains(&a));
    }

    #[test]
    fn ignores_names_that_are_not_assets() {
        let mut out = HashSet::new();
        find_refs("assets/../etc/passwd assets/abc.png assets/", &mut out);
        assert!(out.is_empty());
    }
}
