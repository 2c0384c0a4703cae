//! Path confinement: a client names a notebook by a path relative to the
//! workspace; anything that could reach outside it is refused before the
//! file system is touched, and symlinks are resolved and checked after.

use std::path::{Component, Path, PathBuf};

use super::NotebookError;

const MAX_PATH_BYTES: usize = 4096;

/// The normalised relative form of a client's path: no `..`, not absolute,
/// no empty or NUL-bearing names; `.` components dropped.
pub fn relative(input: &str) -> Result<PathBuf, NotebookError> {
    let bad = |reason: &str| NotebookError::InvalidPath {
        path: input.to_string(),
        reason: reason.to_string(),
    };
    if input.trim().is_empty() {
        return Err(bad("is empty"));
    }
    if input.len() > MAX_PATH_BYTES {
        return Err(bad("is too long"));
    }
    if input.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if input.starts_with('/') || input.starts_with('\\') || Path::new(input).is_absolute() {
        return Err(bad(
            "absolute paths are refused; give a path relative to the workspace",
        ));
    }
    let mut out = PathBuf::new();
    for c in Path::new(input).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(bad("`..` is refused; paths stay inside the workspace")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("absolute paths are refused")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("names no file"));
    }
    Ok(out)
}

/// `relative`, and the name must end in `.ipynb`.
pub fn notebook(input: &str) -> Result<PathBuf, NotebookError> {
    let rel = relative(input)?;
    if rel.extension().and_then(|e| e.to_str()) != Some("ipynb") {
        return Err(NotebookError::InvalidPath {
            path: input.to_string(),
            reason: "a notebook path must end in .ipynb".into(),
        });
    }
    Ok(rel)
}

/// The client-facing spelling of a normalised relative path.
pub fn display(rel: &Path) -> String {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_parent_dirs_absolute_paths_and_empty_names() {
        for p in [
            "",
            " ",
            "/etc/passwd",
            "../x.ipynb",
            "a/../../x.ipynb",
            "a/..",
            "\\x",
            ".",
            "a\0b",
        ] {
            assert!(relative(p).is_err(), "{p:?} should be refused");
        }
    }

    #[test]
    fn normalises_current_dir_components() {
        assert_eq!(relative("./a/./b.ipynb").unwrap(), PathBuf::from("a/b.ipynb"));
        assert_eq!(display(&relative("a//b.ipynb").unwrap()), "a/b.ipynb");
    }

    #[test]
    fn notebooks_end_in_ipynb() {
        assert!(notebook("a.ipynb").is_ok());
        assert!(notebook("a.py").is_err());
        assert!(notebook("a").is_err());
    }
}
