//! `notebook-operator sidecar`: the in-pod form. Writes the connection file
//! (fixed ports, key from the session Secret) before the kernel container
//! starts, then waits for the kernel.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::local::anyhow_like;
use super::{serve, SidecarOpts};
use crate::jupyter::ConnectionInfo;
use crate::sidecar::{Config, KernelSource};

#[derive(Debug, Args)]
pub struct SidecarArgs {
    #[arg(long, default_value = "0.0.0.0:8888")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "/var/lib/notebook")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "/home/jovyan/work")]
    pub workspace: PathBuf,
    /// Where to write the kernel's connection file.
    #[arg(long, default_value = "/run/notebook/kernel.json")]
    pub connection_file: PathBuf,
    #[arg(long, env = "NOTEBOOK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// HMAC key the kernel signs messages with.
    #[arg(long, env = "NOTEBOOK_KERNEL_KEY", hide_env_values = true)]
    pub kernel_key: Option<String>,
    #[arg(long)]
    pub kernel_key_file: Option<PathBuf>,
    /// Address the kernel listens on (the pod's loopback).
    #[arg(long, default_value = "127.0.0.1")]
    pub kernel_ip: String,
    /// First of five consecutive kernel ports: shell, iopub, stdin, control, hb.
    #[arg(long, default_value_t = 5555)]
    pub kernel_base_port: u16,
    /// Host names MCP clients may use (the Service's names, the pod IP).
    #[arg(long = "allowed-host", env = "NOTEBOOK_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// The pod's IP (the downward API's `status.podIP`): MCP clients in the
    /// cluster may address the sidecar by it, with or without the port.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<String>,
    /// A warm pool pod: serve only `/v1/status` and `POST /v1/claim` (with
    /// the pool's token) until a NotebookSession claims it with its own token.
    #[arg(long)]
    pub warm: bool,
    /// Code the warm pod's kernel runs before the pod is ready (the pool's
    /// `spec.template.warmup`), outside the session's history. If it
    /// raises, the sidecar writes why to `--termination-log`, exits once,
    /// and after its restart stays not ready, saying why in `/readyz` and
    /// `/v1/status`.
    #[arg(long, env = "NOTEBOOK_WARMUP", requires = "warm")]
    pub warmup: Option<String>,
    /// Where a failed warmup is written for the kubelet (the container's
    /// `terminationMessagePath`).
    #[arg(
        long,
        env = "NOTEBOOK_TERMINATION_LOG",
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,
    #[command(flatten)]
    pub opts: SidecarOpts,
}

pub async fn run(args: SidecarArgs) -> anyhow_like::Result {
    let token = super::read_secret(args.token.clone(), args.token_file.as_ref())?
        .ok_or("a client token is required: --token, --token-file or NOTEBOOK_TOKEN")?;
    let key = super::read_secret(args.kernel_key.clone(), args.kernel_key_file.as_ref())?
        .ok_or("a kernel key is required: --kernel-key, --kernel-key-file or NOTEBOOK_KERNEL_KEY")?;
    let listener = serve::bind(args.listen).await?;
    let info = ConnectionInfo::with_base_port(&args.kernel_ip, args.kernel_base_port, key);
    info.write(&args.connection_file)?;
    let mut cfg = Config::new(
        args.data_dir,
        args.workspace,
        args.connection_file,
        KernelSource::External,
    );
    args.opts.apply(&mut cfg);
    let mcp = mcp_options(args.allowed_hosts, args.pod_ip.as_deref(), args.listen.port());
    serve::run(
        cfg,
        listener,
        serve::Credentials {
            token,
            warm: args.warm,
            warmup: args.warmup.map(|code| serve::WarmupCode {
                code,
                termination_log: args.termination_log,
            }),
        },
        info,
        None,
        mcp,
        |addr| {
            tracing::info!(%addr, "sidecar serving");
        },
    )
    .await?;
    Ok(())
}

/// The host names MCP clients may use: the configured ones and the pod IP.
/// A pod IP that is not an address is left out, said in the log.
fn mcp_options(hosts: Vec<String>, pod_ip: Option<&str>, port: u16) -> crate::mcp::McpOptions {
    let opts = crate::mcp::McpOptions::new(hosts);
    match pod_ip.map(str::trim).filter(|ip| !ip.is_empty()) {
        None => opts,
        Some(ip) => match ip.parse::<std::net::IpAddr>() {
            Ok(addr) => opts.with_pod_ip(addr, port),
            Err(e) => {
                tracing::warn!(pod_ip = %ip, error = %e, "POD_IP is not an IP address; MCP clients cannot use it");
                opts
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_ip_joins_the_allowed_hosts_when_it_is_an_address() {
        let hosts = |ip| mcp_options(vec!["nb.ns.svc".into()], ip, 8888).allowed_hosts;
        assert_eq!(
            hosts(Some(" 10.0.0.9 ")),
            vec![
                "localhost",
                "127.0.0.1",
                "::1",
                "nb.ns.svc",
                "10.0.0.9",
                "10.0.0.9:8888"
            ]
        );
        for absent in [None, Some(""), Some("not-an-ip")] {
            assert_eq!(hosts(absent), vec!["localhost", "127.0.0.1", "::1", "nb.ns.svc"]);
        }
    }
}
