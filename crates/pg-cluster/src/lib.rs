//! A private PostgreSQL cluster, started with the *installed* `initdb`, `pg_ctl` and `postgres`.
//!
//! Two uses: [`PgCluster::start`] keeps a persistent cluster in a data directory across restarts
//! (the zero-configuration run of the service), and [`PgCluster::start_ephemeral`] creates a
//! throw-away cluster in a temporary directory for tests, which dies with the process.
//!
//! PostgreSQL refuses to run as root, so when this process is root the commands run as the
//! `postgres` user (or `nobody`), and the data directory is handed to that user.

mod ephemeral;
mod install;
mod process;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

pub use install::find_bin_dir;
use process::{RunAs, Tool};

/// Where and how to run a persistent cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster's data directory (PGDATA). Created and initialised when empty.
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1; `None` picks a free one at each start.
    pub port: Option<u16>,
    /// Whether PostgreSQL flushes to disk. Off only for throw-away clusters.
    pub fsync: bool,
}

/// Why a cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PgClusterError {
    #[error(
        "no PostgreSQL installation found (looked for initdb/pg_ctl in PG_BIN_DIR, PATH and /usr/lib/postgresql/*/bin); install it (for example `apt-get install postgresql`) or set DATABASE_URL"
    )]
    NotInstalled,
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {output}")]
    Command {
        tool: &'static str,
        status: String,
        output: String,
    },
    #[error("PostgreSQL did not become ready on port {port} within {seconds} s: {log}")]
    NotReady {
        port: u16,
        seconds: u64,
        log: String,
    },
    #[error("no free TCP port on 127.0.0.1")]
    NoFreePort(#[source] std::io::Error),
}

/// A running cluster. Dropping it stops the server (errors are logged).
pub struct PgCluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    kind: Kind,
    running: bool,
}

enum Kind {
    /// Started by `pg_ctl`; stopped by `pg_ctl stop`.
    Persistent,
    /// Started by someone else; left running.
    Attached,
    /// A child `postgres` process; its directory is removed when it stops.
    Ephemeral(ephemeral::Handle),
}

impl PgCluster {
    /// Starts the cluster in `options.data_dir`, running `initdb` first when the directory holds
    /// no cluster yet. A server left running on the directory (a previous run that was killed)
    /// is stopped first, since its port may no longer be the one we choose.
    pub fn start(options: ClusterOptions) -> Result<Self, PgClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as = RunAs::for_current_user();
        prepare_dir(&options.data_dir, run_as.as_ref())?;
        if !options.data_dir.join("PG_VERSION").exists() {
            initdb(&bin_dir, &options.data_dir, run_as.as_ref(), options.fsync)?;
        }
        let pg_ctl = Tool::new(&bin_dir, "pg_ctl", run_as.as_ref());
        let data = options.data_dir.to_string_lossy().into_owned();
        if pg_ctl.succeeds(&["status", "-D", &data]) {
            tracing::warn!(data_dir = %data, "a PostgreSQL server was still running on the data directory; restarting it");
            pg_ctl.run(&["stop", "-D", &data, "-m", "fast", "-w"])?;
        }

        let mut last_error = None;
        for _ in 0..3 {
            let port = match options.port {
                Some(port) => port,
                None => free_port()?,
            };
            let settings = server_settings(&options.data_dir, port, options.fsync, 200);
            let log = options
                .data_dir
                .join("server.log")
                .to_string_lossy()
                .into_owned();
            match pg_ctl.run(&[
                "start", "-D", &data, "-w", "-t", "60", "-l", &log, "-o", &settings,
            ]) {
                Ok(_) => {
                    return Ok(Self {
                        bin_dir,
                        data_dir: options.data_dir,
                        port,
                        run_as,
                        kind: Kind::Persistent,
                        running: true,
                    });
                }
                Err(error) => last_error = Some(error),
            }
            if options.port.is_some() {
                break;
            }
        }
        Err(
            last_error.unwrap_or(PgClusterError::NoFreePort(std::io::Error::other(
                "no attempt",
            ))),
        )
    }

    /// Uses the server already running on `options.data_dir` (without taking over its
    /// lifetime), or starts one as [`PgCluster::start`] does. For one-off commands that must not
    /// disturb a running service.
    pub fn attach_or_start(options: ClusterOptions) -> Result<Self, PgClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as = RunAs::for_current_user();
        let data = options.data_dir.to_string_lossy().into_owned();
        let running = options.data_dir.join("PG_VERSION").exists()
            && Tool::new(&bin_dir, "pg_ctl", run_as.as_ref()).succeeds(&["status", "-D", &data]);
        match running.then(|| running_port(&options.data_dir)).flatten() {
            Some(port) => Ok(Self {
                bin_dir,
                data_dir: options.data_dir,
                port,
                run_as,
                kind: Kind::Attached,
                running: true,
            }),
            None => Self::start(options),
        }
    }

    /// Starts a throw-away cluster in a new temporary directory, tuned for speed (no fsync).
    /// The server is killed if this process dies, and stopped with its directory removed when
    /// the process exits normally, so a cluster kept in a `static` does not outlive its tests.
    pub fn start_ephemeral() -> Result<Self, PgClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as = RunAs::for_current_user();
        let data_dir = std::env::temp_dir().join(format!(
            "pg-cluster-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos())
                .unwrap_or_default()
        ));
        prepare_dir(&data_dir, run_as.as_ref())?;
        initdb(&bin_dir, &data_dir, run_as.as_ref(), false)?;
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            match ephemeral::spawn(&bin_dir, &data_dir, port, run_as.as_ref()) {
                Ok(handle) => {
                    return Ok(Self {
                        bin_dir,
                        data_dir,
                        port,
                        run_as,
                        kind: Kind::Ephemeral(handle),
                        running: true,
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        let _ = std::fs::remove_dir_all(&data_dir);
        Err(
            last_error.unwrap_or(PgClusterError::NoFreePort(std::io::Error::other(
                "no attempt",
            ))),
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `postgres://postgres@127.0.0.1:{port}/{database}`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Fast shutdown: open sessions are ended, committed work is kept. Idempotent.
    pub fn stop(&mut self) -> Result<(), PgClusterError> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        match &self.kind {
            Kind::Persistent => {
                let data = self.data_dir.to_string_lossy().into_owned();
                Tool::new(&self.bin_dir, "pg_ctl", self.run_as.as_ref())
                    .run(&["stop", "-D", &data, "-m", "fast", "-w"])
                    .map(drop)
            }
            Kind::Ephemeral(handle) => {
                handle.stop();
                Ok(())
            }
            Kind::Attached => Ok(()),
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(%error, "could not stop the private PostgreSQL cluster");
        }
    }
}

fn prepare_dir(dir: &Path, run_as: Option<&RunAs>) -> Result<(), PgClusterError> {
    let io = |source| PgClusterError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    if let Some(user) = run_as {
        user.take_ownership(dir).map_err(io)?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

fn initdb(
    bin_dir: &Path,
    data_dir: &Path,
    run_as: Option<&RunAs>,
    fsync: bool,
) -> Result<(), PgClusterError> {
    let data = data_dir.to_string_lossy().into_owned();
    let mut args = vec![
        "-D",
        &data,
        "-U",
        "postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
    ];
    if !fsync {
        args.push("--no-sync");
    }
    Tool::new(bin_dir, "initdb", run_as).run(&args).map(drop)
}

/// Server settings passed on the command line: loopback only, and the Unix socket inside the
/// data directory so that nothing is written to the system's socket directory.
fn server_settings(data_dir: &Path, port: u16, fsync: bool, max_connections: u32) -> String {
    let durability = if fsync {
        String::new()
    } else {
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off".to_owned()
    };
    format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c max_connections={max_connections}{durability}",
        data_dir.display()
    )
}

/// The port of the server running on `data_dir`: line 4 of `postmaster.pid`.
fn running_port(data_dir: &Path) -> Option<u16> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .nth(3)?
        .trim()
        .parse()
        .ok()
}

/// A port that was free a moment ago; the caller retries if someone takes it in between.
fn free_port() -> Result<u16, PgClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(PgClusterError::NoFreePort)
}
