//! Finding a Python kernel for local mode, or making one: when no Python on
//! the PATH can import ipykernel, a venv with a pinned ipykernel is created
//! in the cache dir (once) rather than failing.

use std::path::{Path, PathBuf};

/// The ipykernel a fresh local-mode venv gets.
pub const PINNED_IPYKERNEL: &str = "ipykernel==7.4.0";

async fn can_import_ipykernel(python: &Path) -> bool {
    tokio::process::Command::new(python)
        .args(["-c", "import ipykernel_launcher"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NBO_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("notebook-operator")
}

/// A Python that can run `ipykernel_launcher`.
pub async fn python_with_ipykernel() -> std::io::Result<PathBuf> {
    for candidate in ["python3", "python"] {
        let p = PathBuf::from(candidate);
        if can_import_ipykernel(&p).await {
            return Ok(p);
        }
    }
    let venv = cache_dir().join(format!("kernel-venv-{}", PINNED_IPYKERNEL.replace("==", "-")));
    let python = venv.join("bin/python");
    if can_import_ipykernel(&python).await {
        return Ok(python);
    }
    eprintln!(
        "no Python with ipykernel found; creating {} with {PINNED_IPYKERNEL} (once)",
        venv.display()
    );
    std::fs::create_dir_all(cache_dir())?;
    let ok = tokio::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .await?
        .success()
        && tokio::process::Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                PINNED_IPYKERNEL,
            ])
            .status()
            .await?
            .success();
    if ok && can_import_ipykernel(&python).await {
        Ok(python)
    } else {
        Err(std::io::Error::other(format!(
            "could not create a kernel venv at {}; install ipykernel or pass --kernel-cmd",
            venv.display()
        )))
    }
}
