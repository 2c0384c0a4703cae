//! The workspace's notebooks on disk. Reads and writes go through one lock,
//! so two agents editing one notebook never lose each other's change; every
//! write is a temp file in the same directory, fsynced, renamed over the
//! old file, and the directory fsynced: a crash leaves the old or the new
//! notebook, never half of one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use super::{model, path, NotebookError};

/// Most notebooks `list` returns.
pub const LIST_LIMIT: usize = 1000;
/// Most directories `list` enters: a workspace with a huge tree (a
/// checked-out dataset, node_modules) answers quickly, marked truncated.
pub const LIST_DIRS: usize = 10_000;
/// Largest notebook read, in bytes.
pub const MAX_NOTEBOOK_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub path: String,
    pub bytes: u64,
    pub modified: Option<String>,
}

pub struct Workspace {
    root: PathBuf,
    lock: Mutex<()>,
}

impl Workspace {
    /// `root` is created when missing and canonicalised.
    pub fn new(root: &Path) -> std::io::Result<Workspace> {
        fs::create_dir_all(root)?;
        Ok(Workspace {
            root: fs::canonicalize(root)?,
            lock: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
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

    fn inside(&self, p: &Path) -> bool {
        p.starts_with(&self.root)
    }

    /// An existing notebook: the file it resolves to (symlinks followed) must
    /// be inside the workspace.
    fn existing(&self, input: &str) -> Result<PathBuf, NotebookError> {
        let rel = path::notebook(input)?;
        let full = self.root.join(&rel);
        let real = match fs::canonicalize(&full) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NotebookError::NotFound(input.to_string()))
            }
            Err(e) => return Err(NotebookError::io(input, e)),
        };
        if !self.inside(&real) {
            return Err(NotebookError::Escapes(input.to_string()));
        }
        if !real.is_file() {
            return Err(NotebookError::NotFound(input.to_string()));
        }
        Ok(real)
    }

    /// Where a new notebook goes: its directory (made when missing) must
    /// resolve inside the workspace, and nothing may exist at the name yet.
    fn fresh(&self, input: &str) -> Result<PathBuf, NotebookError> {
        let rel = path::notebook(input)?;
        let full = self.root.join(&rel);
        let (Some(parent), Some(name)) = (full.parent(), full.file_name()) else {
            return Err(NotebookError::InvalidPath {
                path: input.to_string(),
                reason: "names no file".into(),
            });
        };
        // The deepest directory that exists must already be inside.
        let mut probe = parent.to_path_buf();
        while fs::symlink_metadata(&probe).is_err() {
            if !probe.pop() {
                break;
            }
        }
        let real = fs::canonicalize(&probe).map_err(|e| NotebookError::io(input, e))?;
        if !self.inside(&real) {
            return Err(NotebookError::Escapes(input.to_string()));
        }
        fs::create_dir_all(parent).map_err(|e| NotebookError::io(input, e))?;
        let real_parent = fs::canonicalize(parent).map_err(|e| NotebookError::io(input, e))?;
        if !self.inside(&real_parent) {
            return Err(NotebookError::Escapes(input.to_string()));
        }
        let target = real_parent.join(name);
        if fs::symlink_metadata(&target).is_ok() {
            return Err(NotebookError::Exists(input.to_string()));
        }
        Ok(target)
    }

    fn load(&self, input: &str, real: &Path) -> Result<Value, NotebookError> {
        let meta = fs::metadata(real).map_err(|e| NotebookError::io(input, e))?;
        if meta.len() > MAX_NOTEBOOK_BYTES {
            return Err(NotebookError::NotANotebook {
                path: input.to_string(),
                reason: format!("{} bytes, over the limit of {MAX_NOTEBOOK_BYTES}", meta.len()),
            });
        }
        let bytes = fs::read(real).map_err(|e| NotebookError::io(input, e))?;
        model::parse(&bytes).map_err(|reason| NotebookError::NotANotebook {
            path: input.to_string(),
            reason,
        })
    }

    /// The notebook as it is on disk (cells without ids get ids in the
    /// returned copy only; the file changes on the next write).
    pub fn read(&self, input: &str) -> Result<Value, NotebookError> {
        let real = self.existing(input)?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut nb = self.load(input, &real)?;
        model::ensure_ids(&mut nb);
        Ok(nb)
    }

    pub fn create(&self, input: &str, nb: &Value) -> Result<String, NotebookError> {
        model::check(nb).map_err(NotebookError::BadRequest)?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let target = self.fresh(input)?;
        let bytes = model::to_bytes(nb);
        self.assets_exist(&bytes)?;
        write_atomic(&target, &bytes, true).map_err(|e| NotebookError::io(input, e))?;
        Ok(path::display(&path::notebook(input)?))
    }

    /// Refuses a write whose outputs reference an asset that is gone. Every
    /// write runs under the sidecar's workspace lock, which asset deletes take
    /// too, so no notebook is ever saved pointing at a deleted asset.
    fn assets_exist(&self, bytes: &[u8]) -> Result<(), NotebookError> {
        let text = String::from_utf8_lossy(bytes);
        let (refs, _) = crate::assets::index::references_in(&text);
        for name in refs {
            if !self.root.join(crate::assets::ASSETS_DIR).join(&name).exists() {
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
        let real = self.existing(input)?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut nb = self.load(input, &real)?;
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
        write_atomic(&real, &bytes, false).map_err(|e| NotebookError::io(input, e))?;
        Ok(out)
    }

    /// Notebooks under the workspace, sorted by path; hidden directories and
    /// symlinked directories are not entered.
    pub fn list(&self) -> Result<(Vec<Entry>, bool), NotebookError> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        let mut truncated = false;
        let mut entered = 0usize;
        while let Some(dir) = stack.pop() {
            entered += 1;
            if truncated || entered > LIST_DIRS {
                truncated = true;
                break;
            }
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for ent in rd.flatten() {
                let name = ent.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') {
                    continue;
                }
                let Ok(ft) = ent.file_type() else { continue };
                let p = ent.path();
                if ft.is_dir() {
                    stack.push(p);
                } else if name.ends_with(".ipynb") && (ft.is_file() || ft.is_symlink()) {
                    let Ok(real) = fs::canonicalize(&p) else {
                        continue;
                    };
                    if !self.inside(&real) || !real.is_file() {
                        continue;
                    }
                    if out.len() >= LIST_LIMIT {
                        truncated = true;
                        break;
                    }
                    let meta = fs::metadata(&real).ok();
                    let rel = p.strip_prefix(&self.root).map(path::display).unwrap_or_default();
                    out.push(Entry {
                        path: rel,
                        bytes: meta.as_ref().map(|m| m.len()).unwrap_or(0),
                        modified: meta
                            .and_then(|m| m.modified().ok())
                            .map(|t| crate::util::format_rfc3339(time::OffsetDateTime::from(t))),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((out, truncated))
    }
}

/// Temp file beside the target, fsync, rename over it, fsync the directory.
/// `new`: the target must not exist (checked again by the rename's caller
/// holding the lock; the temp file itself is created exclusively).
fn write_atomic(target: &Path, bytes: &[u8], new: bool) -> std::io::Result<()> {
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::util::random_hex(6)));
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        if !new {
            if let Ok(m) = fs::metadata(target) {
                f.set_permissions(m.permissions())?;
            }
        }
        f.sync_all()?;
        drop(f);
        if new && fs::symlink_metadata(target).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the file appeared meanwhile",
            ));
        }
        fs::rename(&tmp, target)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notebook::model::{CellType, Position};
    use serde_json::json;

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
