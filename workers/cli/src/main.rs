//! `stowage`: run workers, submit jobs, and look after dead letters.
//!
//! `main` only parses arguments, sets up logging and hands over to [`commands`].

mod cli;
mod commands;
mod demo;
mod job_file;
mod output;
mod preflight_cmd;
mod stages;
mod vault_config;

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The demo narrates on stdout; its workers' logs stay quiet unless asked for.
    let quiet = matches!(cli.command, cli::Command::Demo(_));
    // Preflight expects refusals (a passive declare of a missing queue); lapin logs each one
    // as an error, which would drown the report.
    let preflight = matches!(cli.command, cli::Command::Preflight(_));
    init_logging(cli.verbose, quiet, preflight);
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, quiet: bool, silence_lapin: bool) {
    let default = match verbose {
        0 if quiet => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STOWAGE_LOG").unwrap_or_else(|_| {
        let lapin = if silence_lapin { ",lapin=off" } else { "" };
        tracing_subscriber::EnvFilter::new(format!(
            "warn,stowage={default},stowage_runtime={default}{lapin}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
