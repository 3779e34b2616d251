//! Command-line interface: flags, environment variables and subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use switchbord_core::CoreConfig;
use switchbord_gateway::GatewayConfig;

use switchbord_core::config::Secret;

use crate::keys::KeysArgs;
use crate::{database, keys, serve};

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
    #[arg(long, env = "DATABASE_URL")]
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

    /// URL of a remote core (for example http://core.internal:50051). When set, only the HTTP
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
    }
}
