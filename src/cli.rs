//! Command line: one binary, one subcommand per role.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

pub fn run(cli: Cli) -> ExitCode {
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
    }
}
