//! `edgefn`: parse the command line, run the command, print errors as one clear message.
//! `edgefn control-plane …` and `edgefn runner …` run the servers themselves, so that one
//! binary is enough on a node or a laptop.

use std::process::ExitCode;

use clap::Parser as _;
use edgefn_cli::{Cli, Command};

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    let rest = raw.iter().skip(2).cloned();
    match raw.get(1).map(String::as_str) {
        // Runners compile untrusted code by re-running this binary as their compile worker.
        Some("compile-worker") => edgefn_runtime::compile_worker_main(&raw[2..]),
        Some("control-plane") => {
            let argv = std::iter::once("edgefn control-plane".to_string()).chain(rest);
            let mut args =
                match edgefn_control_plane::config::ControlPlaneArgs::parse_from_with_config(argv) {
                    Ok(args) => args,
                    Err(error) => match error.downcast::<clap::Error>() {
                        Ok(clap_error) => clap_error.exit(),
                        Err(error) => return fail(&error),
                    },
                };
            // This binary is a compile worker too: compile for the fleet with it.
            if args.compile_worker.is_none() {
                args.compile_worker = std::env::current_exe().ok();
            }
            json_logs();
            block_on(edgefn_control_plane::run(
                args,
                edgefn_runner::shutdown_signal(),
            ))
        }
        Some("runner") => {
            let argv = std::iter::once("edgefn runner".to_string()).chain(rest);
            let args = edgefn_runner::config::RunnerArgs::parse_from(argv);
            json_logs();
            block_on(edgefn_runner::run(args, edgefn_runner::shutdown_signal()))
        }
        _ => {
            let cli = Cli::parse();
            if matches!(cli.command, Command::Dev(_)) {
                // The components' own logs: warnings and errors unless RUST_LOG says otherwise.
                tracing_subscriber::fmt()
                    .with_env_filter(
                        tracing_subscriber::EnvFilter::try_from_default_env()
                            .unwrap_or_else(|_| "warn".into()),
                    )
                    .with_writer(std::io::stderr)
                    .init();
            }
            block_on(edgefn_cli::run(cli))
        }
    }
}

/// The servers' log format: one JSON object per line on stdout.
fn json_logs() {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stdout)
        .init();
}

fn block_on(task: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&anyhow::anyhow!("cannot start the async runtime: {error}")),
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("edgefn: {error:#}");
    ExitCode::FAILURE
}
