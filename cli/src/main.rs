//! `switchbord`: runs the core and the gateway together (the default), the gateway alone
//! against a remote core, or operator commands.

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
    logging::init(cli.log_format);
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
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "switchbord stopped with an error"
            );
            eprintln!("switchbord: {error:#}");
            ExitCode::FAILURE
        }
    }
}
