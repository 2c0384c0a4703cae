//! Command line: one binary, one subcommand per role.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cmd::{local::LocalArgs, sidecar::SidecarArgs};

#[derive(Debug, Parser)]
#[command(
    name = "notebook-operator",
    version,
    about = "Jupyter kernels on Kubernetes, for agents and people"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator (controllers for NotebookSession and AssetLease).
    Run(Box<crate::operator::RunArgs>),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Run the sidecar and a kernel it starts itself, with no cluster.
    Local(Box<LocalArgs>),
    /// Run the sidecar in a session pod, beside the kernel container.
    Sidecar(Box<SidecarArgs>),
    /// Serve agents: MCP and the session routes behind Kubernetes authentication and RBAC.
    Gateway(Box<crate::gateway::GatewayArgs>),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zeromq=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn block_on<F: std::future::Future<Output = crate::cmd::local::anyhow_like::Result>>(f: F) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> ExitCode {
    init_tracing();
    match cli.command {
        Command::Run(args) => crate::operator::run_blocking(*args),
        Command::Crd => match crate::operator::crd::all_crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("cannot render the CRDs: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Local(args) => block_on(crate::cmd::local::run(*args)),
        Command::Sidecar(args) => block_on(crate::cmd::sidecar::run(*args)),
        Command::Gateway(args) => block_on(crate::gateway::run(*args)),
    }
}
