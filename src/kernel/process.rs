//! The kernel as a local process (local mode only; in a pod the kernel is its
//! own container). Spawned with its output in a log file, so that it outlives
//! a crashed sidecar and can be reattached to.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How to start a kernel: the argv, where `{connection_file}` is replaced by
/// the connection file's path.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub argv: Vec<String>,
    pub connection_file: PathBuf,
    pub data_dir: PathBuf,
    pub workspace: PathBuf,
}

/// A kernel process this sidecar started, or one it found still running.
#[derive(Debug, Clone)]
pub struct KernelProcess {
    pub pid: i32,
    /// Becomes true when the process has exited (only known for our own
    /// children; a reattached kernel is watched by heartbeat alone).
    pub exited: watch::Receiver<bool>,
}

pub fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("kernel.pid")
}

impl Launcher {
    pub fn argv(&self) -> Vec<String> {
        let conn = self.connection_file.display().to_string();
        self.argv
            .iter()
            .map(|a| a.replace("{connection_file}", &conn))
            .collect()
    }

    pub fn spawn(&self) -> std::io::Result<KernelProcess> {
        let argv = self.argv();
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty kernel command"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("kernel.log"))?;
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args)
            .current_dir(&self.workspace)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the sidecar's terminal
            // does not interrupt the kernel, and the kernel survives the sidecar.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("kernel exited at once"))? as i32;
        std::fs::write(pid_file(&self.data_dir), pid.to_string())?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::warn!(pid, ?status, "kernel process exited");
            let _ = tx.send(true);
        });
        tracing::info!(pid, argv = ?argv, "started kernel");
        Ok(KernelProcess { pid, exited: rx })
    }

    /// The kernel recorded by a previous run, if its process still exists.
    pub fn recorded(&self) -> Option<KernelProcess> {
        let pid: i32 = std::fs::read_to_string(pid_file(&self.data_dir))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if pid <= 1 || !alive(pid) {
            return None;
        }
        // Not our child: no exit notification; the heartbeat watches it.
        let (_tx, rx) = watch::channel(false);
        std::mem::forget(_tx);
        Some(KernelProcess { pid, exited: rx })
    }
}

pub fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

impl KernelProcess {
    pub fn signal(&self, sig: Signal) -> bool {
        kill(Pid::from_raw(self.pid), sig).is_ok()
    }

    /// SIGKILL, then wait (bounded) until it is gone.
    pub async fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let mut exited = self.exited.clone();
        let wait = async {
            // Our child: wait for the reaper. Reattached: it is reaped by init.
            let _ = exited.wait_for(|e| *e).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), wait).await;
        for _ in 0..50 {
            if !alive(self.pid) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
