//! `stowage`: run workers, submit jobs, and look after dead letters.
//!
//! `main` only parses arguments, sets up logging and hands over to [`commands`].

mod catalog_cmd;
mod cli;
mod commands;
mod demo;
mod drill_cmd;
mod job_file;
mod jobs_cmd;
mod kube_config;
mod output;
mod preflight_cmd;
mod restore_cmd;
mod rp_cmd;
mod scheduler_cmd;
mod serve;
mod stages;
mod vault_config;

use std::process::ExitCode;

use clap::Parser as _;
use stowage_runtime::telemetry;

fn main() -> ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates an arena of its own and keeps freed buffers in it, so
/// a worker whose pipeline threads pass buffers around grows past its 128 MiB budget (measured:
/// 135 MiB on a third transfer in one process, 89 MiB with two arenas; ARCHITECTURE.md, "Known
/// gaps"). The manifests set `MALLOC_ARENA_MAX=2`; a `stowage` started any other way (`stowage
/// serve`, a worker on a VM) gets the same by running itself again once with it set. glibc reads
/// the variable only at start, and this crate forbids the `unsafe` a `mallopt` call needs.
/// Someone who sets the variable, to any value, keeps it.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none()
        && let Ok(exe) = std::env::current_exe()
    {
        use std::os::unix::process::CommandExt as _;
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        // `exec` returns only if it failed (the binary was replaced or removed since it
        // started, say): then this process runs on with glibc's default arenas.
        let _failed = command.args(args).env("MALLOC_ARENA_MAX", "2").exec();
    }
}

async fn run() -> ExitCode {
    let cli = cli::Cli::parse();
    // The demo narrates on stdout; its workers' logs stay quiet unless asked for.
    let quiet = matches!(cli.command, cli::Command::Demo(_));
    let telemetry = match init_telemetry(&cli, quiet) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            match err.downcast_ref::<output::Exit>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    };
    drop(telemetry);
    code
}

fn init_telemetry(
    cli: &cli::Cli,
    quiet: bool,
) -> Result<telemetry::Telemetry, telemetry::TelemetryError> {
    let default = match cli.verbose {
        0 if quiet => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // lapin logs every channel the broker closes as an error, including the throwaway channels
    // of passive declares that find no queue: an expected answer (a worker checks whether its
    // cluster's queues exist before declaring them; preflight probes the topology). Stowage
    // reports a real channel failure itself, from the error lapin returns to the call.
    let lapin = if matches!(cli.command, cli::Command::Preflight(_)) {
        ",lapin=off"
    } else {
        ",lapin::channel=off"
    };
    let log_filter = std::env::var("STOWAGE_LOG")
        .unwrap_or_else(|_| format!("warn,stowage={default},stowage_runtime={default}{lapin}"));
    let otlp_endpoint = cli.otlp_endpoint.clone().or_else(|| {
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|v| !v.is_empty())
    });
    let service_name = match &cli.command {
        cli::Command::Worker(args) => match args.stage.as_slice() {
            [cli::StageChoice::One(stage)] => format!("stowage-{stage}"),
            _ => "stowage-worker".to_owned(),
        },
        _ => "stowage".to_owned(),
    };
    telemetry::init(&telemetry::TelemetryConfig {
        service_name,
        log_format: cli.log_format,
        log_filter,
        otlp_endpoint,
    })
}
