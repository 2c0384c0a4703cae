//! The kernel connection file: where the kernel listens and the key it signs with.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Contents of a Jupyter connection file (`kernel.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub ip: String,
    pub transport: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    pub key: String,
    pub signature_scheme: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel_name: String,
}

impl ConnectionInfo {
    /// Five consecutive ports from `base` on `ip`, signed with `key`.
    pub fn with_base_port(ip: &str, base: u16, key: String) -> Self {
        ConnectionInfo {
            ip: ip.to_string(),
            transport: "tcp".into(),
            shell_port: base,
            iopub_port: base.saturating_add(1),
            stdin_port: base.saturating_add(2),
            control_port: base.saturating_add(3),
            hb_port: base.saturating_add(4),
            key,
            signature_scheme: "hmac-sha256".into(),
            kernel_name: String::new(),
        }
    }

    /// Five free ports on `ip`, found by binding and releasing them.
    pub fn with_free_ports(ip: &str, key: String) -> std::io::Result<Self> {
        let mut ports = Vec::with_capacity(5);
        let mut listeners = Vec::with_capacity(5);
        for _ in 0..5 {
            let l = std::net::TcpListener::bind((ip, 0))?;
            ports.push(l.local_addr()?.port());
            listeners.push(l);
        }
        drop(listeners);
        Ok(ConnectionInfo {
            ip: ip.to_string(),
            transport: "tcp".into(),
            shell_port: ports[0],
            iopub_port: ports[1],
            stdin_port: ports[2],
            control_port: ports[3],
            hb_port: ports[4],
            key,
            signature_scheme: "hmac-sha256".into(),
            kernel_name: String::new(),
        })
    }

    pub fn endpoint(&self, port: u16) -> String {
        format!("{}://{}:{}", self.transport, self.ip, port)
    }

    pub fn read(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes the file atomically (temp file, fsync, rename), readable by owner only.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o640);
            }
            let mut f = opts.open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("nbo-conn-{}", std::process::id()));
        let path = dir.join("kernel.json");
        let info = ConnectionInfo::with_base_port("127.0.0.1", 5555, "k".into());
        info.write(&path).unwrap();
        assert_eq!(ConnectionInfo::read(&path).unwrap(), info);
        assert_eq!(info.hb_port, 5559);
        assert_eq!(info.endpoint(info.iopub_port), "tcp://127.0.0.1:5556");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
