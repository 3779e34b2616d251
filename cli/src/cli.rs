//! Command-line interface: flags, environment variables and subcommands.

use std::path::PathBuf;

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use switchbord_core::CoreConfig;
use switchbord_gateway::GatewayConfig;

use switchbord_core::config::Secret;

use crate::check_config::CheckConfigArgs;
use crate::endpoints::EndpointsArgs;
use crate::keys::KeysArgs;
use crate::outbox::OutboxArgs;
use crate::{check_config, database, endpoints, keys, outbox, serve};

/// Switchbord integration layer: Charles-compatible REST gateway and gRPC core.
///
/// With no subcommand, `serve` runs. Every flag can also be set by the environment variable
/// shown in its help.
#[derive(Debug, Parser)]
#[command(name = "switchbord", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,

    /// Log output format.
    #[arg(
        long,
        env = "SWITCHBORD_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the core and the gateway (the default), or the gateway alone with --core-url.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create, list and revoke API keys, on a running core or directly on the database.
    Keys(KeysArgs),
    /// Check the configuration `serve` would start with, print it with secrets hidden, and exit
    /// non-zero naming each setting it would refuse.
    CheckConfig(Box<CheckConfigArgs>),
    /// List, create, test, enable, disable and delete webhook endpoints on a running core.
    Endpoints(EndpointsArgs),
    /// Inspect the background job queue of a running core and retry dead jobs.
    Outbox(OutboxArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the database is.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL. Unset: a private PostgreSQL cluster is started under the data directory
    /// with the installed initdb/pg_ctl, and stopped on shutdown.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// Directory for the private PostgreSQL cluster and other local state.
    #[arg(long, env = "SWITCHBORD_DATA_DIR", default_value = ".switchbord")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub core: CoreConfig,

    #[command(flatten)]
    pub gateway: GatewayConfig,

    /// URL of a remote core (for example `http://core.internal:50051`). When set, only the HTTP
    /// gateway runs here, and no database is used.
    #[arg(long, env = "SWITCHBORD_CORE_URL")]
    pub core_url: Option<String>,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve::serve(cli.serve).await,
        Some(Command::Serve(args)) => serve::serve(*args).await,
        Some(Command::Migrate(args)) => {
            let database = database::Database::attach_or_open(&args).await?;
            switchbord_core::db::run_migrations(database.url()).await?;
            database.close().await
        }
        Some(Command::Keys(args)) => keys::run(args).await,
        Some(Command::CheckConfig(args)) => check_config::run(*args).await,
        Some(Command::Endpoints(args)) => endpoints::run(args).await,
        Some(Command::Outbox(args)) => outbox::run(args).await,
    }
}

/// Prints a refused command line. clap names the flag of a bad value; when the value came from
/// the environment, the variable is named too, since that is where the operator must look.
pub fn report_parse_error(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    if let Some(variable) = variable_of_invalid_value(error) {
        eprintln!("The refused value comes from the environment variable {variable}.");
    }
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
}

fn variable_of_invalid_value(error: &clap::Error) -> Option<String> {
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let (Some(ContextValue::String(flag)), Some(ContextValue::String(value))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    let variable = environment_variable_of(&Cli::command(), flag)?;
    let set = std::env::var_os(&variable)?;
    // A value given on the command line wins over the environment; name the variable only
    // when it holds the refused value.
    (set.to_string_lossy() == value.as_str()).then_some(variable)
}

/// The variable of the flag that clap shows as `shown` (for example `--http-addr <HTTP_ADDR>`).
fn environment_variable_of(command: &clap::Command, shown: &str) -> Option<String> {
    let long = shown.strip_prefix("--")?.split([' ', '=']).next()?;
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(clap::Arg::get_env)
        .map(|variable| variable.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|subcommand| environment_variable_of(subcommand, shown))
        })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--help` is the operator's manual: every argument of every command explains itself.
    #[test]
    fn every_argument_has_help() {
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "`{path}` argument `{}` has no doc comment",
                    arg.get_id()
                );
            }
            for subcommand in command.get_subcommands() {
                assert!(
                    subcommand.get_about().is_some(),
                    "`{path} {}` has no doc comment",
                    subcommand.get_name()
                );
                check(subcommand, &format!("{path} {}", subcommand.get_name()));
            }
        }
        let mut command = Cli::command();
        command.build();
        check(&command, "switchbord");
    }
}
