//! `mesh`: the agentmesh command line.
//!
//! A thin client of the node's local API (see `mesh_node::api`), plus `mesh up` which runs
//! the node itself. Exit codes: 0 success, 1 error, 2 usage error, 3 no daemon running.

mod cli;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let default_level = if matches!(cli.command, cli::Command::Up(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // A log that cannot be written (its disk full or read-only, as the daemon's own
    // daemon.log can be) is skipped: reporting that on stderr too would panic the thread
    // that logged.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cmd::run(cli));
    // Do not wait for blocking reads still parked on stdin (an MCP session that ended
    // because its client died): exit now.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = cmd::exit_code(&e);
            if e.downcast_ref::<cmd::ExitWith>().is_none() {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}
