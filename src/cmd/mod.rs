//! The subcommands that run a sidecar: `local` (spawns its own kernel) and
//! `sidecar` (in a pod, beside the kernel container).

pub mod bootstrap;
pub mod local;
pub mod serve;
pub mod sidecar;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Options shared by `local` and `sidecar`.
#[derive(Debug, Clone, Args)]
pub struct SidecarOpts {
    /// Largest `code` accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20, env = "NOTEBOOK_MAX_CODE_BYTES")]
    pub max_code_bytes: usize,
    /// Largest per-execution `timeout_s`, in seconds.
    #[arg(long, default_value_t = 86400.0)]
    pub max_timeout_s: f64,
    /// Seconds a running execution gets to finish on SIGTERM.
    #[arg(long, default_value_t = 25.0, env = "NOTEBOOK_SHUTDOWN_GRACE_S")]
    pub shutdown_grace_s: f64,
    /// Seconds after an interrupt before a kernel that is still busy is restarted.
    #[arg(long, default_value_t = 5.0)]
    pub interrupt_grace_s: f64,
    /// Finished executions older than this many hours are pruned.
    #[arg(long, default_value_t = 168.0)]
    pub retention_hours: f64,
    /// Answer `input()` in user code with this text. Without it, `input()`
    /// raises StdinNotImplementedError at once, so the queue never hangs.
    #[arg(long)]
    pub input_reply: Option<String>,
    /// Events kept in the replay ring.
    #[arg(long, default_value_t = 1000)]
    pub ring_events: usize,
    /// Bytes kept in the replay ring.
    #[arg(long, default_value_t = 16 << 20)]
    pub ring_bytes: usize,
    /// Events queued per stream client before it is cut off.
    #[arg(long, default_value_t = 1024)]
    pub client_queue: usize,
    /// Bytes of events queued per stream client before it is cut off.
    #[arg(long, default_value_t = 16 << 20)]
    pub client_queue_bytes: usize,
    /// Rich output values larger than this many bytes (encoded) are written
    /// to `assets/<sha256>.<ext>` in the workspace and replaced by a stub.
    #[arg(long, default_value_t = 256 * 1024)]
    pub asset_threshold_bytes: usize,
    /// Seconds to wait for the kernel at start and after a restart.
    #[arg(long, default_value_t = 120.0)]
    pub kernel_start_timeout_s: f64,
    /// Most output bytes (stream text and rich values) one execution keeps.
    /// Past it the rest is counted, not kept: the execution says how much in
    /// `truncated` and ends its outputs with a note saying so.
    #[arg(long, default_value_t = 32 << 20, env = "NOTEBOOK_MAX_OUTPUT_BYTES")]
    pub max_output_bytes: u64,
}

impl SidecarOpts {
    pub fn apply(&self, cfg: &mut crate::sidecar::Config) {
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
        cfg.max_code_bytes = self.max_code_bytes;
        cfg.max_timeout = secs(self.max_timeout_s);
        cfg.shutdown_grace = secs(self.shutdown_grace_s);
        cfg.interrupt_grace = secs(self.interrupt_grace_s);
        cfg.retention = secs(self.retention_hours * 3600.0);
        cfg.input_reply = self.input_reply.clone();
        cfg.bus.ring_events = self.ring_events.max(1);
        cfg.bus.ring_bytes = self.ring_bytes.max(1024);
        cfg.bus.client_queue = self.client_queue.max(1);
        cfg.bus.client_queue_bytes = self.client_queue_bytes.max(1024);
        cfg.kernel_start_timeout = secs(self.kernel_start_timeout_s);
        cfg.asset_threshold = self.asset_threshold_bytes.max(1);
        cfg.max_output_bytes = self.max_output_bytes.max(1024);
    }
}

/// A secret from a flag, a file, or nothing.
pub fn read_secret(value: Option<String>, file: Option<&PathBuf>) -> std::io::Result<Option<String>> {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        return Ok(Some(v));
    }
    match file {
        Some(f) => Ok(Some(std::fs::read_to_string(f)?.trim().to_string()).filter(|s| !s.is_empty())),
        None => Ok(None),
    }
}
