//! Test fixtures: plain YAML files under `tests/fixtures/operator/`, and golden
//! files that the builders' output is compared with.

use std::path::PathBuf;

use serde::Serialize;

use super::crd::NotebookSession;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/operator")
}

/// Reads a fixture file.
pub fn read(name: &str) -> String {
    let path = dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("fixture {}: {err}", path.display()))
}

/// Parses any object from a fixture file.
pub fn object<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_yaml::from_str(&read(name)).unwrap_or_else(|err| panic!("fixture {name}: {err}"))
}

/// A NotebookSession from a fixture file.
pub fn session(name: &str) -> NotebookSession {
    object(name)
}

/// Compares `value`, as YAML, with a golden file; `UPDATE_FIXTURES=1` rewrites it.
pub fn assert_golden<T: Serialize>(name: &str, value: &T) {
    let yaml = serde_yaml::to_string(value).expect("serializes");
    let path = dir().join(name);
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, &yaml).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == yaml,
        "{} differs from what the builder made; review the diff and regenerate with \
         `UPDATE_FIXTURES=1 cargo test --lib operator::`\n--- built:\n{yaml}",
        path.display()
    );
}
