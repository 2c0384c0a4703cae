#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = notebook_operator::cli::Cli::parse();
    notebook_operator::cli::run(cli)
}
