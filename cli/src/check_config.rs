//! `switchbord check-config`: reads flags and environment exactly as `serve` does, applies the
//! start-up checks `serve` applies (the same function, [`startup_problems`]), and prints the
//! effective settings with secrets hidden.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};
use pg_cluster::PgCluster;
use serde_json::{Map, Value as Json, json};
use switchbord_core::CoreConfig;
use switchbord_core::config::{ConfigError, Secret};
use switchbord_gateway::GatewayConfig;
use tonic::transport::Endpoint;

use crate::cli::{Cli, DatabaseArgs, ServeArgs};
use crate::database::{self, Database};
use crate::local_state::{new_pepper, pepper_path, read_pepper};

/// The subcommand's name, for finding its arguments again.
const COMMAND: &str = "check-config";

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Also connect to the database: DATABASE_URL, or the private cluster in the data
    /// directory (started for the check and stopped again when no server runs on it).
    #[arg(long)]
    pub connect: bool,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A setting that `serve` would refuse, and the environment variable that holds it.
#[derive(Debug, Clone)]
pub struct Problem {
    pub variable: &'static str,
    pub message: String,
}

impl Problem {
    fn new(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for Problem {
    fn from(error: ConfigError) -> Self {
        Self::new(error.variable, error.to_string())
    }
}

/// What `serve` refuses before it starts anything. `core` is the core configuration as `serve`
/// will use it (with the pepper from the data directory filled in). `serve` stops on the first
/// problem; `check-config` reports them all.
pub fn startup_problems(args: &ServeArgs, core: &CoreConfig) -> Vec<Problem> {
    if let Some(url) = &args.core_url {
        return Endpoint::from_shared(url.clone())
            .err()
            .map(|error| {
                Problem::new(
                    "SWITCHBORD_CORE_URL",
                    format!("SWITCHBORD_CORE_URL (--core-url) is not a valid URL: {error}"),
                )
            })
            .into_iter()
            .chain(gateway_problems(&args.gateway))
            .collect();
    }
    let mut problems: Vec<Problem> = core.problems().into_iter().map(Problem::from).collect();
    problems.extend(gateway_problems(&args.gateway));
    if core.grpc_addr == args.gateway.http_addr && core.grpc_addr.port() != 0 {
        problems.push(Problem::new(
            "SWITCHBORD_HTTP_ADDR",
            format!(
                "SWITCHBORD_HTTP_ADDR (--http-addr) is {}, the address SWITCHBORD_GRPC_ADDR already uses",
                args.gateway.http_addr
            ),
        ));
    }
    problems.extend(database_problem(&args.database));
    problems
}

fn gateway_problems(gateway: &GatewayConfig) -> Option<Problem> {
    gateway.request_timeout.is_zero().then(|| {
        Problem::new(
            "SWITCHBORD_REQUEST_TIMEOUT",
            "SWITCHBORD_REQUEST_TIMEOUT (--request-timeout) must be longer than 0s (every request would time out)",
        )
    })
}

fn database_problem(database: &DatabaseArgs) -> Option<Problem> {
    if let Some(url) = &database.database_url {
        // The parser the database driver itself uses.
        return tokio_postgres::Config::from_str(url.expose())
            .err()
            .map(|error| {
                Problem::new(
                    "DATABASE_URL",
                    format!(
                        "DATABASE_URL (--database-url) is not a PostgreSQL connection URL: {error}"
                    ),
                )
            });
    }
    if let Err(problem) = check_writable(&database.data_dir) {
        return Some(Problem::new(
            "SWITCHBORD_DATA_DIR",
            format!("SWITCHBORD_DATA_DIR (--data-dir) {problem}"),
        ));
    }
    PgCluster::find_bin_dir().err().map(|error| {
        Problem::new(
            "DATABASE_URL",
            format!("DATABASE_URL is unset and the private PostgreSQL cannot start: {error}"),
        )
    })
}

/// Whether files can be created in `dir`, or `dir` itself can be created: the nearest
/// existing ancestor is probed with a file that is removed again.
fn check_writable(dir: &Path) -> Result<(), String> {
    let absolute = std::path::absolute(dir)
        .map_err(|error| format!("{} cannot be resolved: {error}", dir.display()))?;
    let Some(existing) = absolute.ancestors().find(|path| path.exists()) else {
        return Err(format!("{} has no existing parent", absolute.display()));
    };
    if !existing.is_dir() {
        return Err(format!("{} is not a directory", existing.display()));
    }
    let probe = existing.join(format!(".switchbord-check-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|error| format!("{} is not writable: {error}", existing.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Prints the effective settings and every problem; any problem makes it an error that names
/// them all.
pub async fn run(args: CheckConfigArgs) -> anyhow::Result<()> {
    let serve = &args.serve;
    let data_dir = &serve.database.data_dir;
    let mut core = serve.core.clone();
    let pepper_file = pepper_path(data_dir);
    let pepper_text = if core.key_pepper.is_some() {
        "set by SWITCHBORD_KEY_PEPPER (hidden)".to_owned()
    } else if let Some(pepper) = read_pepper(data_dir) {
        core.key_pepper = Some(pepper);
        format!("read from {} (hidden)", pepper_file.display())
    } else {
        // What `serve` does, minus the writing: a check changes nothing.
        core.key_pepper = Some(new_pepper());
        format!("created in {} on first start", pepper_file.display())
    };
    let mut problems = startup_problems(serve, &core);
    let gateway_only = serve.core_url.is_some();
    let reachable = if args.connect && !gateway_only && problems.is_empty() {
        let connected = try_database(&serve.database).await;
        if let Err(problem) = &connected {
            problems.push(problem.clone());
        }
        Some(connected.is_ok())
    } else {
        None
    };

    let settings = settings()?;
    let database_text = match &serve.database.database_url {
        Some(url) => format!("DATABASE_URL, {}", describe_url(url)),
        None => format!(
            "private PostgreSQL cluster in {}",
            data_dir.join("pgdata").display()
        ),
    };
    let mode = if gateway_only {
        "gateway_only"
    } else {
        "core_and_gateway"
    };

    let text = if args.json {
        json!({
            "valid": problems.is_empty(),
            "problems": problems
                .iter()
                .map(|problem| json!({"variable": problem.variable, "message": problem.message}))
                .collect::<Vec<_>>(),
            "mode": mode,
            "database": database_text,
            "database_reachable": reachable,
            "key_pepper": pepper_text,
            "settings": Json::Object(settings.iter().map(|setting| {
                (setting.variable.clone(), json!({
                    "flag": setting.flag,
                    "value": setting.value,
                    "source": setting.source,
                }))
            }).collect::<Map<_, _>>()),
        })
        .to_string()
    } else {
        human_summary(
            &problems,
            serve.core_url.as_deref(),
            &database_text,
            reachable,
            &pepper_text,
            &settings,
        )
    };
    writeln!(std::io::stdout().lock(), "{text}").context("cannot write to standard output")?;

    if problems.is_empty() {
        return Ok(());
    }
    let messages: Vec<&str> = problems
        .iter()
        .map(|problem| problem.message.as_str())
        .collect();
    anyhow::bail!("the configuration is not valid: {}", messages.join("; "))
}

fn human_summary(
    problems: &[Problem],
    gateway_for: Option<&str>,
    database: &str,
    reachable: Option<bool>,
    pepper: &str,
    settings: &[Setting],
) -> String {
    let mut lines = Vec::new();
    if problems.is_empty() {
        lines.push("The configuration is valid.".to_owned());
    } else {
        lines.push(format!(
            "The configuration has {} problem(s):",
            problems.len()
        ));
        lines.extend(
            problems
                .iter()
                .map(|problem| format!("  - {}", problem.message)),
        );
    }
    lines.push(String::new());
    match gateway_for {
        Some(core_url) => lines.push(format!(
            "Runs:       the HTTP gateway only, in front of the core at {core_url}"
        )),
        None => {
            lines.push("Runs:       the gRPC core and the HTTP gateway".to_owned());
            let reached = match reachable {
                Some(true) => " (connected)",
                Some(false) => " (cannot connect)",
                None => "",
            };
            lines.push(format!("Database:   {database}{reached}"));
            lines.push(format!("Key pepper: {pepper}"));
        }
    }
    lines.push(String::new());
    let header = Setting {
        variable: "SETTING".to_owned(),
        flag: "FLAG".to_owned(),
        value: Some("VALUE".to_owned()),
        source: "SOURCE",
    };
    let settings: Vec<&Setting> = std::iter::once(&header).chain(settings).collect();
    let width = |pick: fn(&Setting) -> usize| {
        settings
            .iter()
            .map(|setting| pick(setting))
            .max()
            .unwrap_or(0)
    };
    let variable_width = width(|setting| setting.variable.len());
    let flag_width = width(|setting| setting.flag.len());
    let value_width = width(|setting| setting.value.as_deref().map_or(1, str::len));
    for setting in settings {
        lines.push(format!(
            "{:<variable_width$}  {:<flag_width$}  {:<value_width$}  {}",
            setting.variable,
            setting.flag,
            setting.value.as_deref().unwrap_or("-"),
            setting.source,
        ));
    }
    lines.join("\n")
}

/// One flag of `serve` as it was resolved.
struct Setting {
    variable: String,
    flag: String,
    value: Option<String>,
    source: &'static str,
}

/// Every setting of the command line that was just parsed, from clap's own record of the
/// arguments: a new flag shows up here without being listed. Values of flags whose
/// environment values `--help` hides are hidden here too.
fn settings() -> anyhow::Result<Vec<Setting>> {
    let command = Cli::command();
    let matches = command
        .clone()
        .try_get_matches()
        .context("cannot read the command line again")?;
    let matches: &ArgMatches = matches
        .subcommand_matches(COMMAND)
        .context("check-config was not on the command line")?;
    let arguments = command
        .find_subcommand(COMMAND)
        .context("check-config is not a subcommand")?
        .get_arguments()
        .filter_map(|arg| {
            let variable = arg.get_env()?.to_string_lossy().into_owned();
            let id = arg.get_id().as_str();
            let raw: Option<Vec<String>> = matches.get_raw(id).map(|values| {
                values
                    .map(|value| value.to_string_lossy().into_owned())
                    .collect()
            });
            let value = raw.map(|values| {
                if variable == "DATABASE_URL" {
                    describe_url(&Secret::new(values.join(",")))
                } else if arg.is_hide_env_values_set() {
                    "(hidden)".to_owned()
                } else {
                    values.join(",")
                }
            });
            let source = match matches.value_source(id) {
                Some(ValueSource::DefaultValue) => "default",
                Some(ValueSource::EnvVariable) => "environment",
                Some(ValueSource::CommandLine) => "command line",
                Some(_) => "other",
                None => "unset",
            };
            Some(Setting {
                flag: format!("--{}", arg.get_long().unwrap_or(id)),
                variable,
                value,
                source,
            })
        })
        .collect();
    Ok(arguments)
}

/// A database URL without its password: `user@host:port/database`.
fn describe_url(url: &Secret) -> String {
    let Ok(config) = tokio_postgres::Config::from_str(url.expose()) else {
        return "(hidden: not a valid URL)".to_owned();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "{}@{}/{}{}",
        config.get_user().unwrap_or("(default user)"),
        hosts.join(","),
        config.get_dbname().unwrap_or("(default database)"),
        if config.get_password().is_some() {
            " (password hidden)"
        } else {
            ""
        }
    )
}

/// Connects to the database as `serve` would.
async fn try_database(args: &DatabaseArgs) -> Result<(), Problem> {
    let unreachable = |error: anyhow::Error| {
        Problem::new(
            "DATABASE_URL",
            format!("cannot reach the database: {error:#}"),
        )
    };
    let opened = Database::attach_or_open(args).await.map_err(unreachable)?;
    let connected = database::connect(opened.url()).await.map(drop);
    let closed = opened.close().await;
    connected.and(closed).map_err(unreachable)
}
