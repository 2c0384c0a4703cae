//! The workspace's notebooks on disk. Reads and writes go through one lock,
//! so two agents editing one notebook never lose each other's change; every
//! write is a temp file in the same directory, fsynced, renamed over the
//! old file, and the directory fsynced: a crash leaves the old or the new
//! notebook, never half of one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use super::{model, path, NotebookError};
use crate::confined::{ConfinedError, Kind, Root};

/// Most notebooks `list` returns.
pub const LIST_LIMIT: usize = 1000;
/// Most directories `list` enters: a workspace with a huge tree (a
/// checked-out dataset, node_modules) answers quickly, marked truncated.
pub const LIST_DIRS: usize = 10_000;
/// Largest notebook read, in bytes.
pub const MAX_NOTEBOOK_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Entry {
    pub path: String,
    pub bytes: u64,
    pub modified: Option<String>,
}

pub struct Workspace {
    root: Arc<Root>,
    lock: Mutex<()>,
}

fn confined(input: &str, e: ConfinedError) -> NotebookError {
    match e {
        ConfinedError::NotFound(_) => NotebookError::NotFound(input.to_string()),
        ConfinedError::Symlink(_) => NotebookError::Escapes(input.to_string()),
        ConfinedError::NotRegular { .. } => NotebookError::NotFound(input.to_string()),
        ConfinedError::Invalid { reason, .. } => NotebookError::InvalidPath {
            path: input.to_string(),
            reason: reason.to_string(),
        },
        ConfinedError::TooLarge { size, limit, .. } => NotebookError::NotANotebook {
            path: input.to_string(),
            reason: format!("{size} bytes, over the limit of {limit}"),
        },
        ConfinedError::Io { message, .. } => NotebookError::Io(format!("{input}: {message}")),
    }
}

impl Workspace {
    /// `root` is created when missing and opened.
    pub fn new(root: &Path) -> std::io::Result<Workspace> {
        Ok(Workspace::with_root(Arc::new(Root::open(root)?)))
    }

    /// The workspace over an already opened root (the sidecar's own).
    pub fn with_root(root: Arc<Root>) -> Workspace {
        Workspace {
            root,
            lock: Mutex::new(()),
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Runs blocking file work off the async runtime.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Workspace) -> Result<T, NotebookError> + Send + 'static,
    ) -> Result<T, NotebookError> {
        let ws = self.clone();
        tokio::task::spawn_blocking(move || f(&ws))
            .await
            .unwrap_or_else(|e| Err(NotebookError::Io(format!("the file task failed: {e}"))))
    }

    /// An existing notebook: a regular file reached without a link at any level.
    fn existing(&self, input: &str) -> Result<PathBuf, NotebookError> {
        let rel = path::notebook(input)?;
        match self.root.info(&rel) {
            Ok(i) if i.kind == Kind::File => Ok(rel),
            Ok(i) if i.kind == Kind::Symlink => Err(NotebookError::Escapes(input.to_string())),
            Ok(_) => Err(NotebookError::NotFound(input.to_string())),
            Err(e) => Err(confined(input, e)),
        }
    }

    /// Where a new notebook goes: its directory is made (no link on the
    /// way), and nothing may exist at the name yet.
    fn fresh(&self, input: &str) -> Result<PathBuf, NotebookError> {
        let rel = path::notebook(input)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        self.root.make_dirs(parent).map_err(|e| confined(input, e))?;
        match self.root.info(&rel) {
            Err(ConfinedError::NotFound(_)) => Ok(rel),
            Ok(_) => Err(NotebookError::Exists(input.to_string())),
            Err(e) => Err(confined(input, e)),
        }
    }

    fn load(&self, input: &str, rel: &Path) -> Result<Value, NotebookError> {
        let (bytes, _) = self
            .root
            .read(rel, MAX_NOTEBOOK_BYTES)
            .map_err(|e| confined(input, e))?;
        model::parse(&bytes).map_err(|reason| NotebookError::NotANotebook {
            path: input.to_string(),
            reason,
        })
    }

    /// The notebook as it is on disk (cells without ids get ids in the
    /// returned copy only; the file changes on the next write).
    pub fn read(&self, input: &str) -> Result<Value, NotebookError> {
        let rel = self.existing(input)?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut nb = self.load(input, &rel)?;
        model::ensure_ids(&mut nb);
        Ok(nb)
    }

    pub fn create(&self, input: &str, nb: &Value) -> Result<String, NotebookError> {
        model::check(nb).map_err(NotebookError::BadRequest)?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let target = self.fresh(input)?;
        let bytes = model::to_bytes(nb);
        self.assets_exist(&bytes)?;
        self.root
            .write_atomic(&target, &bytes, false)
            .map_err(|e| confined(input, e))?;
        Ok(path::display(&target))
    }

    /// Refuses a write whose outputs reference an asset that is gone. Every
    /// write runs under the sidecar's workspace lock, which asset deletes take
    /// too, so no notebook is ever saved pointing at a deleted asset.
    fn assets_exist(&self, bytes: &[u8]) -> Result<(), NotebookError> {
        let (refs, _) = crate::assets::index::references_in_bytes(bytes);
        for name in refs {
            let rel = Path::new(crate::assets::ASSETS_DIR).join(&name);
            if !self.root.info(&rel).is_ok_and(|i| i.kind == Kind::File) {
                return Err(NotebookError::AssetGone(name));
            }
        }
        Ok(())
    }

    /// Read, change, check, write: all under the lock. `f`'s error leaves
    /// the file untouched.
    pub fn update<T>(
        &self,
        input: &str,
        f: impl FnOnce(&mut Value) -> Result<T, model::EditError>,
    ) -> Result<T, NotebookError> {
        let rel = self.existing(input)?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut nb = self.load(input, &rel)?;
        model::ensure_ids(&mut nb);
        let out = f(&mut nb).map_err(|e| match e {
            model::EditError::UnknownCell(id) => NotebookError::UnknownCell {
                path: input.to_string(),
                id,
            },
            model::EditError::Invalid(m) => NotebookError::BadRequest(m),
        })?;
        model::check(&nb).map_err(|reason| NotebookError::NotANotebook {
            path: input.to_string(),
            reason: format!("the edit would leave it invalid: {reason}"),
        })?;
        let bytes = model::to_bytes(&nb);
        self.assets_exist(&bytes)?;
        self.root
            .write_atomic(&rel, &bytes, false)
            .map_err(|e| confined(input, e))?;
        Ok(out)
    }

    /// Notebooks under the workspace, sorted by path; hidden directories and
    /// links are not entered or listed.
    pub fn list(&self) -> Result<(Vec<Entry>, bool), NotebookError> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        let mut truncated = false;
        let mut entered = 0usize;
        'dirs: while let Some(dir) = stack.pop() {
            entered += 1;
            if entered > LIST_DIRS {
                truncated = true;
                break;
            }
            let Ok(entries) = self.root.list(&dir) else {
                continue;
            };
            for (name, kind) in entries {
                if name.starts_with('.') {
                    continue;
                }
                let rel = dir.join(&name);
                match kind {
                    Kind::Dir => stack.push(rel),
                    Kind::File if name.ends_with(".ipynb") => {
                        if out.len() >= LIST_LIMIT {
                            truncated = true;
                            break 'dirs;
                        }
                        let info = self.root.info(&rel).ok();
                        out.push(Entry {
                            path: path::display(&rel),
                            bytes: info.map(|i| i.size).unwrap_or(0),
                            modified: info
                                .map(|i| crate::util::format_rfc3339(time::OffsetDateTime::from(i.modified))),
                        });
                    }
                    _ => {}
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((out, truncated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notebook::model::{CellType, Position};
    use serde_json::json;
    use std::fs;

    fn ws() -> (Workspace, PathBuf) {
        let dir = std::env::temp_dir().join(format!("nbo-ws-{}", crate::util::random_hex(6)));
        fs::create_dir_all(&dir).unwrap();
        (Workspace::new(&dir).unwrap(), dir)
    }

    #[test]
    fn creates_edits_and_reads_back() {
        let (w, dir) = ws();
        let nb = model::new_notebook(&json!({}));
        assert_eq!(w.create("sub/dir/a.ipynb", &nb).unwrap(), "sub/dir/a.ipynb");
        assert_eq!(
            w.create("sub/dir/a.ipynb", &nb).unwrap_err(),
            NotebookError::Exists("sub/dir/a.ipynb".into())
        );
        let id = w
            .update("sub/dir/a.ipynb", |nb| {
                model::insert(nb, Position::End, CellType::Code, "1+1")
            })
            .unwrap()
            .0;
        let back = w.read("./sub/dir/a.ipynb").unwrap();
        assert_eq!(model::source(model::cell(&back, &id).unwrap()), "1+1");
        let leftovers: Vec<_> = fs::read_dir(dir.join("sub/dir"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
        let (list, truncated) = w.list().unwrap();
        assert_eq!(
            list.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            vec!["sub/dir/a.ipynb"]
        );
        assert!(!truncated);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_edit_leaves_the_file_as_it_was() {
        let (w, dir) = ws();
        w.create("a.ipynb", &model::new_notebook(&json!({}))).unwrap();
        let before = fs::read(dir.join("a.ipynb")).unwrap();
        let e = w
            .update("a.ipynb", |nb| model::edit(nb, "nope", "x"))
            .unwrap_err();
        assert_eq!(
            e,
            NotebookError::UnknownCell {
                path: "a.ipynb".into(),
                id: "nope".into()
            }
        );
        assert_eq!(fs::read(dir.join("a.ipynb")).unwrap(), before);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn symlinks_out_of_the_workspace_are_refused() {
        let (w, dir) = ws();
        let outside = std::env::temp_dir().join(format!("nbo-out-{}", crate::util::random_hex(6)));
        fs::create_dir_all(&outside).unwrap();
        fs::write(
            outside.join("x.ipynb"),
            model::to_bytes(&model::new_notebook(&json!({}))),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.join("x.ipynb"), dir.join("link.ipynb")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("out")).unwrap();
        assert_eq!(
            w.read("link.ipynb").unwrap_err(),
            NotebookError::Escapes("link.ipynb".into())
        );
        assert_eq!(
            w.read("out/x.ipynb").unwrap_err(),
            NotebookError::Escapes("out/x.ipynb".into())
        );
        let nb = model::new_notebook(&json!({}));
        assert_eq!(
            w.create("out/new.ipynb", &nb).unwrap_err(),
            NotebookError::Escapes("out/new.ipynb".into())
        );
        assert_eq!(
            w.create("out/deeper/new.ipynb", &nb).unwrap_err(),
            NotebookError::Escapes("out/deeper/new.ipynb".into())
        );
        assert!(!outside.join("deeper").exists());
        assert!(w.list().unwrap().0.is_empty(), "links out are not listed");
        fs::remove_dir_all(dir).unwrap();
        fs::remove_dir_all(outside).unwrap();
    }

    #[test]
    fn files_that_are_not_notebooks_are_not_rewritten() {
        let (w, dir) = ws();
        fs::write(dir.join("bad.ipynb"), b"not json").unwrap();
        assert!(matches!(
            w.read("bad.ipynb"),
            Err(NotebookError::NotANotebook { .. })
        ));
        assert!(w.update("bad.ipynb", |_| Ok(())).is_err());
        assert_eq!(fs::read(dir.join("bad.ipynb")).unwrap(), b"not json");
        assert_eq!(
            w.read("missing.ipynb").unwrap_err(),
            NotebookError::NotFound("missing.ipynb".into())
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
