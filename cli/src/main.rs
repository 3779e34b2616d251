//! `switchbord`: runs the core and the gateway together (the default), the gateway alone
//! against a remote core, or operator commands.

mod allocator;
mod check_config;
mod cli;
mod core_connection;
mod database;
mod endpoints;
mod keys;
mod local_state;
mod logging;
mod outbox;
mod render;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return cli::report_parse_error(&error),
    };
    let span_export = match logging::init(cli.log_format) {
        Ok(span_export) => span_export,
        Err(error) => {
            eprintln!("switchbord: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchbord: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "switchbord stopped with an error"
            );
            eprintln!("switchbord: {error:#}");
            ExitCode::FAILURE
        }
    };
    span_export.shutdown();
    code
}
