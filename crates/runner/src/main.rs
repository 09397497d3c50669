//! `edgefn-runner`: parse flags, start, wait for SIGTERM or Ctrl-C, drain, exit.

use std::process::ExitCode;

use clap::Parser as _;
use edgefn_runner::config::RunnerArgs;

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    // The runtime compiles untrusted code by re-running this binary as its compile worker.
    if raw.get(1).map(String::as_str) == Some("compile-worker") {
        return edgefn_runtime::compile_worker_main(&raw[2..]);
    }
    let args = RunnerArgs::parse();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stdout)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("edgefn-runner: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(edgefn_runner::run(args, edgefn_runner::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edgefn-runner: {error:#}");
            ExitCode::FAILURE
        }
    }
}
