//! Path confinement: a client names a notebook by a path relative to the
//! workspace; anything that could reach outside it is refused before the
//! file system is touched, and symlinks are resolved and checked after.

use std::path::{Path, PathBuf};

use super::NotebookError;

/// The normalised relative form of a client's path (the one rule, in
/// `confined::relative`): no `..`, not absolute, no empty or NUL-bearing
/// names; `.` components dropped.
pub fn relative(input: &str) -> Result<PathBuf, NotebookError> {
    crate::confined::relative(input).map_err(|e| match e {
        crate::confined::ConfinedError::Invalid { reason, .. } => NotebookError::InvalidPath {
            path: input.to_string(),
            reason: reason.to_string(),
        },
        other => NotebookError::Io(other.to_string()),
    })
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
    crate::confined::display(rel)
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
