//! `notebook-operator local`: the sidecar plus a kernel process it starts
//! itself (or reattaches to), all state under the data dir. No cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{bootstrap, serve, SidecarOpts};
use crate::jupyter::client::Heartbeat;
use crate::jupyter::ConnectionInfo;
use crate::kernel::process::{KernelProcess, Launcher};
use crate::sidecar::{Config, KernelSource};

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8888")]
    pub listen: SocketAddr,
    /// Where the queue, connection file, kernel pid and logs live.
    #[arg(long, default_value = ".notebook/data")]
    pub data_dir: PathBuf,
    /// The kernel's working directory, where notebooks and assets live.
    #[arg(long, default_value = ".")]
    pub workspace: PathBuf,
    /// Bearer token for clients; generated and printed when absent.
    #[arg(long, env = "NOTEBOOK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Host names MCP clients may use (repeatable), besides the loopback names.
    #[arg(long = "allowed-host", env = "NOTEBOOK_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    #[command(flatten)]
    pub opts: SidecarOpts,
    /// The kernel command; `{connection_file}` is replaced by the connection
    /// file's path (appended as `-f <path>` when absent). Must come last.
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    pub kernel_cmd: Option<Vec<String>>,
}

pub async fn run(args: LocalArgs) -> anyhow_like::Result {
    let data_dir = absolute(&args.data_dir)?;
    let workspace = absolute(&args.workspace)?;
    std::fs::create_dir_all(&data_dir)?;
    std::fs::create_dir_all(&workspace)?;
    let token = match super::read_secret(args.token.clone(), args.token_file.as_ref())? {
        Some(t) => t,
        None => crate::util::random_hex(24),
    };
    // Bound first: a port already taken fails here, before any kernel starts.
    let listener = serve::bind(args.listen).await?;
    let connection_file = data_dir.join("kernel.json");
    let argv = match &args.kernel_cmd {
        Some(cmd) if !cmd.is_empty() => {
            let mut argv = cmd.clone();
            if !argv.iter().any(|a| a.contains("{connection_file}")) {
                argv.extend(["-f".to_string(), "{connection_file}".to_string()]);
            }
            argv
        }
        _ => {
            let python = bootstrap::python_with_ipykernel().await?;
            vec![
                python.display().to_string(),
                "-m".into(),
                "ipykernel_launcher".into(),
                "-f".into(),
                "{connection_file}".into(),
            ]
        }
    };
    let launcher = Launcher {
        argv,
        connection_file: connection_file.clone(),
        data_dir: data_dir.clone(),
        workspace: workspace.clone(),
    };
    let (info, process) = reattach_or_spawn(&launcher).await?;

    let mut cfg = Config::new(
        data_dir,
        workspace,
        connection_file,
        KernelSource::Spawn(launcher),
    );
    args.opts.apply(&mut cfg);
    serve::run(cfg, listener, serve::Credentials { token: token.clone(), warm: false, warmup: None }, info, Some(process), crate::mcp::McpOptions::new(args.allowed_hosts), |addr| {
        println!("notebook-operator local: serving http://{addr}");
        println!("token: {token}");
        println!("try: curl -H 'Authorization: Bearer {token}' -d '{{\"code\": \"1+1\"}}' http://{addr}/v1/executions");
    })
    .await?;
    Ok(())
}

/// Reattaches to the kernel recorded in the data dir when its process is
/// alive, is the kernel of this connection file, and answers its heartbeat;
/// otherwise starts a new one on fresh ports and a fresh key.
async fn reattach_or_spawn(launcher: &Launcher) -> std::io::Result<(ConnectionInfo, KernelProcess)> {
    if let (Ok(info), Some(p)) = (
        ConnectionInfo::read(&launcher.connection_file),
        launcher.recorded(),
    ) {
        let ours = std::fs::read(format!("/proc/{}/cmdline", p.pid))
            .map(|c| String::from_utf8_lossy(&c).contains(&launcher.connection_file.display().to_string()))
            .unwrap_or(false);
        if ours {
            let mut hb = Heartbeat::new(&info);
            if hb.ping(Duration::from_secs(2)).await {
                tracing::info!(pid = p.pid, "reattached to the running kernel");
                return Ok((info, p));
            }
            let mut p = p;
            p.kill().await;
        }
    }
    let info = ConnectionInfo::with_free_ports("127.0.0.1", crate::util::random_hex(32))?;
    info.write(&launcher.connection_file)?;
    let p = launcher.spawn()?;
    Ok((info, p))
}

fn absolute(p: &std::path::Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(p)?;
    std::fs::canonicalize(p)
}

/// A boxed error for the command layer, where every error is reported and ends the process.
pub mod anyhow_like {
    pub type Error = Box<dyn std::error::Error + Send + Sync>;
    pub type Result<T = ()> = std::result::Result<T, Error>;
}
