//! The sidecar: the durable queue, the kernel actor that runs it, and the
//! state shared with the HTTP and MCP layers.

pub mod assets;
pub mod cell;
pub mod channels;
pub mod completion;
pub mod control;
pub mod executor;
pub mod outputs;
pub mod service;
pub mod stages;
pub mod warmup;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub use service::{Service, SubmitError, SubmitRequest, Submitted};

/// Where the kernel comes from.
#[derive(Debug, Clone)]
pub enum KernelSource {
    /// Local mode: this process starts the kernel (or reattaches to the one
    /// recorded in the data dir).
    Spawn(crate::kernel::process::Launcher),
    /// In a pod: the kernel is another container reading the connection file.
    External,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub workspace: PathBuf,
    pub connection_file: PathBuf,
    pub kernel: KernelSource,
    /// Longest code accepted, in bytes.
    pub max_code_bytes: usize,
    /// Default and largest per-execution timeout.
    pub default_timeout: Option<Duration>,
    pub max_timeout: Duration,
    /// Time a running execution gets to finish on SIGTERM.
    pub shutdown_grace: Duration,
    /// After an interrupt, how long the kernel gets to go idle before it is restarted.
    pub interrupt_grace: Duration,
    /// Finished executions older than this are pruned when the queue is idle.
    pub retention: Duration,
    /// `Some(text)`: answer `input()` with this text; `None`: `input()` raises.
    pub input_reply: Option<String>,
    /// How long to wait for the kernel at start (and after a restart).
    pub kernel_start_timeout: Duration,
    pub bus: crate::events::BusConfig,
    /// Stream output of one execution published in one event per this window.
    pub coalesce_window: Duration,
    /// Rich output values larger than this (encoded) become asset files.
    pub asset_threshold: usize,
    /// Most output bytes one execution keeps; the rest is counted.
    pub max_output_bytes: u64,
}

impl Config {
    pub fn new(
        data_dir: PathBuf,
        workspace: PathBuf,
        connection_file: PathBuf,
        kernel: KernelSource,
    ) -> Self {
        Config {
            data_dir,
            workspace,
            connection_file,
            kernel,
            max_code_bytes: 1 << 20,
            default_timeout: None,
            max_timeout: Duration::from_secs(24 * 3600),
            shutdown_grace: Duration::from_secs(25),
            interrupt_grace: Duration::from_secs(5),
            retention: Duration::from_secs(7 * 24 * 3600),
            input_reply: None,
            kernel_start_timeout: Duration::from_secs(120),
            bus: crate::events::BusConfig::default(),
            coalesce_window: Duration::from_millis(5),
            asset_threshold: 256 * 1024,
            max_output_bytes: 32 << 20,
        }
    }
}

/// When a client or the kernel last did something: touched by the service
/// and by the kernel actor, read for the session status.
pub struct Activity(Mutex<String>);

impl Default for Activity {
    fn default() -> Self {
        Activity(Mutex::new(crate::util::now_rfc3339()))
    }
}

impl Activity {
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = crate::util::now_rfc3339();
    }

    /// The last activity, RFC 3339.
    pub fn last(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Executions whose outputs were truncated, and the output bytes left out:
/// counted by the kernel actor, read by `/metrics`.
#[derive(Default)]
pub struct OutputStats {
    pub truncated: AtomicU64,
    pub dropped_bytes: AtomicU64,
}

impl OutputStats {
    pub fn note(&self, t: &crate::store::Truncation) {
        self.truncated.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(t.dropped_bytes, Ordering::Relaxed);
    }
}
