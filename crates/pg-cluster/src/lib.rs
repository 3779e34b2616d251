//! A private PostgreSQL cluster, started with the *installed* `initdb`, `pg_ctl` and `postgres`.
//!
//! Two uses: [`PgCluster::start`] keeps a persistent cluster in a data directory across restarts
//! (so the service runs with zero configuration wherever PostgreSQL is installed but not
//! running), and [`PgCluster::start_ephemeral`] creates a throw-away cluster in a temporary
//! directory for tests, which cannot outlive the test process.
//!
//! Servers listen on 127.0.0.1 only, trust every local connection (user `postgres`, no
//! password), and keep their Unix socket in the data directory, so nothing is written to the
//! system's socket directory and a system cluster on the same machine is never disturbed.
//!
//! PostgreSQL refuses to run as root, so when this process is root the tools run as the
//! `postgres` user (or `nobody`), and the data directory is handed to that user.

mod datadir;
mod ephemeral;
mod exit;
mod install;
mod owner;
mod process;

use std::ffi::OsStr;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

pub use install::find_bin_dir;
use process::{RunAs, Tool, log_tail};

/// How often a start is retried with another port when the one we picked was taken between
/// probing it and the server binding it.
const START_ATTEMPTS: usize = 3;
/// Seconds `pg_ctl` waits for a start or stop; crash recovery of a large cluster takes a while.
const PG_CTL_TIMEOUT: &str = "60";
/// Longest Unix socket path the kernel accepts (`sun_path` is 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where and how to run a persistent cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster's data directory (PGDATA itself). Created and initialised when it holds no
    /// cluster yet, reused as it is otherwise.
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1; `None` picks a free one at each start, so a fixed port is only
    /// needed when something outside this process must find the server.
    pub port: Option<u16>,
    /// Whether PostgreSQL flushes to disk. Turning it off (with `synchronous_commit` and
    /// `full_page_writes`) makes tests much faster and a crash lose data, so keep it on for
    /// anything that matters.
    pub fsync: bool,
}

/// Why a cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PgClusterError {
    /// No `initdb`/`pg_ctl`/`postgres` anywhere we looked.
    #[error(
        "no PostgreSQL installation found: install PostgreSQL (for example `apt-get install postgresql`) or set DATABASE_URL to an existing database"
    )]
    NotInstalled,
    /// `PG_BIN_DIR` is set but does not hold the server programs; never silently ignored.
    #[error(
        "PG_BIN_DIR is {0}, which does not contain initdb, pg_ctl and postgres; point it at PostgreSQL's bin directory or unset it"
    )]
    InvalidBinDir(PathBuf),
    /// We are root and there is neither a `postgres` nor a `nobody` user to run the server as.
    #[error(
        "PostgreSQL refuses to run as root and there is no `postgres` or `nobody` user to run it as; create a `postgres` user or set DATABASE_URL"
    )]
    NoUnprivilegedUser,
    /// We are root, and the user the server runs as cannot enter a directory above the data
    /// directory (typically `/root`).
    #[error(
        "PostgreSQL runs as user `{user}` (it refuses to run as root), which cannot enter {blocked} to reach the data directory {data_dir}; use a data directory it can reach (for example SWITCHBORD_DATA_DIR=/var/lib/switchbord) or set DATABASE_URL"
    )]
    Unreachable {
        data_dir: PathBuf,
        blocked: PathBuf,
        user: String,
    },
    /// Another live process (a running service) owns the cluster in this data directory.
    #[error(
        "the PostgreSQL cluster in {data_dir} is in use by another process (a running `switchbord serve`?); stop that one first, or give this one its own SWITCHBORD_DATA_DIR or a DATABASE_URL"
    )]
    InUse { data_dir: PathBuf },
    /// A file-system step (create, chown, run a program, ...) failed.
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PostgreSQL program failed; `output` is the end of what it (and, for a start, the
    /// server) wrote, where PostgreSQL puts its FATAL and HINT lines.
    #[error("{command} failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    /// The server kept running but never accepted connections.
    #[error(
        "PostgreSQL did not become ready on port {port} within {seconds} s; server log:\n{log}"
    )]
    NotReady {
        port: u16,
        seconds: u64,
        log: String,
    },
    /// Not even an ephemeral port could be bound on the loopback interface.
    #[error("no free TCP port on 127.0.0.1")]
    NoFreePort(#[source] std::io::Error),
}

/// A running cluster. Dropping it stops the server (errors are logged); a cluster kept in a
/// `static` is stopped at process exit instead (automatically for ephemeral clusters, through
/// [`PgCluster::stop_at_exit`] for persistent ones).
pub struct PgCluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    kind: Kind,
    running: bool,
    /// A persistent cluster's owner lock, held until it is stopped (see [`owner`]).
    owner: Option<owner::OwnerLock>,
}

enum Kind {
    /// Started by `pg_ctl`, detached from us; stopped by `pg_ctl stop`.
    Persistent,
    /// Started by someone else; left running.
    Attached,
    /// A child `postgres` process; its directory is removed when it stops.
    Ephemeral(ephemeral::Handle),
}

impl PgCluster {
    /// Where the server programs are; see [`find_bin_dir`]. Exposed so callers can run client
    /// tools (`psql`, `pg_isready`, `pg_dump`) of the same installation.
    pub fn find_bin_dir() -> Result<PathBuf, PgClusterError> {
        find_bin_dir()
    }

    /// Starts the persistent cluster in `options.data_dir`, running `initdb` first when the
    /// directory holds no cluster yet (no `PG_VERSION`).
    ///
    /// A server still running on the directory (left by a run that was killed, or started by
    /// hand), that no live process owns, is stopped and started again rather than reused: its port, durability settings and
    /// owner may not be the ones asked for, and this cluster's [`PgCluster::stop`] must be able
    /// to stop what it started. A stale `postmaster.pid` from a crash needs nothing from us: the
    /// server sees that its pid is gone and replaces it.
    ///
    /// The server runs detached (through `pg_ctl`), so it survives this process if it is killed;
    /// the next start takes it over. Its log is `server.log` in the data directory.
    pub fn start(options: ClusterOptions) -> Result<Self, PgClusterError> {
        let data_dir = absolute(&options.data_dir)?;
        let bin_dir = find_bin_dir()?;
        let run_as = RunAs::for_current_user()?;
        datadir::prepare(&data_dir, run_as.as_ref())?;
        let owner_lock = owner::take(&data_dir)?;
        if !data_dir.join("PG_VERSION").exists() {
            initdb(&bin_dir, &data_dir, run_as.as_ref(), options.fsync)?;
        }
        let pg_ctl = Tool::new(&bin_dir, "pg_ctl", run_as.as_ref());
        if is_running(&pg_ctl, &data_dir) {
            tracing::warn!(data_dir = %data_dir.display(), "a PostgreSQL server was still running on the data directory; restarting it");
            pg_ctl_stop(&pg_ctl, &data_dir)?;
        }

        let log = data_dir.join("server.log");
        if let (Some(user), true) = (&run_as, log.exists()) {
            // pg_ctl opens the log as the server's user; a file left by an earlier run as
            // another user would make the start fail.
            user.take_ownership(&log)
                .map_err(|source| PgClusterError::Io {
                    action: "chown",
                    path: log.clone(),
                    source,
                })?;
        }
        let mut attempt = 1;
        loop {
            let port = match options.port {
                Some(port) => port,
                None => free_port()?,
            };
            let settings = server_settings(&data_dir, !options.fsync, 200, None);
            let server_options = shell_words(port, &settings);
            let log_start = std::fs::metadata(&log).map(|meta| meta.len()).unwrap_or(0);
            let result = pg_ctl.run(&[
                OsStr::new("start"),
                OsStr::new("-D"),
                data_dir.as_os_str(),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new(PG_CTL_TIMEOUT),
                OsStr::new("-l"),
                log.as_os_str(),
                OsStr::new("-o"),
                OsStr::new(&server_options),
            ]);
            let error = match result {
                Ok(_) => {
                    return Ok(Self {
                        bin_dir,
                        data_dir,
                        port,
                        run_as,
                        kind: Kind::Persistent,
                        owner: Some(owner_lock),
                        running: true,
                    });
                }
                Err(PgClusterError::Command {
                    command,
                    status,
                    output,
                }) => {
                    let server_log = log_tail(&log, log_start);
                    let port_taken = is_port_conflict(&server_log);
                    let error = PgClusterError::Command {
                        command,
                        status,
                        output: format!("{output}\nserver log ({}):\n{server_log}", log.display()),
                    };
                    if !port_taken || options.port.is_some() || attempt >= START_ATTEMPTS {
                        // A start that timed out may leave a server coming up; don't leave it
                        // behind unowned.
                        if is_running(&pg_ctl, &data_dir) {
                            let _ = pg_ctl_stop(&pg_ctl, &data_dir);
                        }
                        return Err(error);
                    }
                    error
                }
                Err(other) => return Err(other),
            };
            tracing::debug!(port, %error, "port taken while starting PostgreSQL; retrying with another");
            attempt += 1;
        }
    }

    /// Uses the server already running on `options.data_dir` without taking over its lifetime
    /// ([`PgCluster::stop`] and drop leave it running), or starts one as [`PgCluster::start`]
    /// does. For one-off commands that must not disturb a running service.
    pub fn attach_or_start(options: ClusterOptions) -> Result<Self, PgClusterError> {
        let data_dir = absolute(&options.data_dir)?;
        let bin_dir = find_bin_dir()?;
        let run_as = RunAs::for_current_user()?;
        let running = data_dir.join("PG_VERSION").exists()
            && is_running(&Tool::new(&bin_dir, "pg_ctl", run_as.as_ref()), &data_dir);
        match running.then(|| running_port(&data_dir)).flatten() {
            Some(port) => Ok(Self {
                bin_dir,
                data_dir,
                port,
                run_as,
                kind: Kind::Attached,
                running: true,
                owner: None,
            }),
            None => Self::start(options),
        }
    }

    /// Starts a throw-away cluster in a new directory under [`std::env::temp_dir`], tuned for
    /// speed (no fsync, `max_connections` = 300 for parallel tests).
    ///
    /// Tests keep such a cluster in a `static` that is never dropped, so its lifetime is tied to
    /// the process instead: the server is a child that the kernel stops if this process dies,
    /// and it is stopped with its directory removed when the process exits normally. Directories
    /// left by processes that were killed are removed by the next call.
    pub fn start_ephemeral() -> Result<Self, PgClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as = RunAs::for_current_user()?;
        let temp = absolute(&std::env::temp_dir())?;
        ephemeral::sweep_stale(&temp);
        let root = ephemeral::new_root(&temp);
        let data_dir = root.join("data");
        // Creates `root` too, owned by the server's user when we are root.
        datadir::prepare(&data_dir, run_as.as_ref())?;
        let remove_root = |error| {
            let _ = std::fs::remove_dir_all(&root);
            error
        };
        let mut owner_lock = ephemeral::lock_root(&root).map_err(remove_root)?;
        initdb(&bin_dir, &data_dir, run_as.as_ref(), false).map_err(remove_root)?;

        let settings = server_settings(&data_dir, true, 300, Some("128MB"));
        let mut attempt = 1;
        loop {
            let port = free_port().map_err(remove_root)?;
            match ephemeral::spawn(
                &bin_dir,
                &root,
                &data_dir,
                port,
                &settings,
                run_as.as_ref(),
                owner_lock,
            ) {
                Ok(handle) => {
                    return Ok(Self {
                        bin_dir,
                        data_dir,
                        port,
                        run_as,
                        kind: Kind::Ephemeral(handle),
                        running: true,
                        owner: None,
                    });
                }
                Err((error, lock)) => {
                    let port_taken = matches!(
                        &error,
                        PgClusterError::Command { output, .. } if is_port_conflict(output)
                    );
                    if !port_taken || attempt >= START_ATTEMPTS {
                        return Err(remove_root(error));
                    }
                    tracing::debug!(port, %error, "port taken while starting PostgreSQL; retrying with another");
                    owner_lock = lock;
                    attempt += 1;
                }
            }
        }
    }

    /// The port, on 127.0.0.1 and in the socket's name: usually picked at start, so never assume
    /// 5432.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (PGDATA), made absolute; the server's log is `server.log` in it for
    /// persistent clusters and next to it for ephemeral ones.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the server programs of this cluster are, for running client tools against it.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The URL of `database` for user `postgres` (no password: the cluster trusts local
    /// connections): through the cluster's Unix socket in its data directory
    /// (`postgres://postgres@%2F…%2Fdata:{port}/{database}`, the path percent-encoded), or
    /// `postgres://postgres@127.0.0.1:{port}/{database}` when it has none (its path too long for
    /// the kernel, or not UTF-8). The socket spares both ends the TCP stack on every round trip
    /// (measured in docs/performance.md).
    pub fn url(&self, database: &str) -> String {
        let host = socket_host(&self.data_dir, self.port).unwrap_or_else(|| "127.0.0.1".to_owned());
        format!("postgres://postgres@{host}:{}/{database}", self.port)
    }

    /// Fast shutdown (`pg_ctl stop -m fast -w`): open sessions are ended, committed work is
    /// kept. Idempotent, and a server that is already gone counts as stopped. An ephemeral
    /// cluster's directory is removed; an attached cluster is left running.
    pub fn stop(&mut self) -> Result<(), PgClusterError> {
        if !self.running {
            return Ok(());
        }
        match &self.kind {
            Kind::Persistent => {
                let pg_ctl = Tool::new(&self.bin_dir, "pg_ctl", self.run_as.as_ref());
                if is_running(&pg_ctl, &self.data_dir) {
                    pg_ctl_stop(&pg_ctl, &self.data_dir)?;
                }
            }
            Kind::Ephemeral(handle) => handle.stop(),
            Kind::Attached => {}
        }
        self.running = false;
        // Stopped: another process may start it now.
        self.owner = None;
        Ok(())
    }

    /// Hands the cluster over to be stopped when the process exits normally (including
    /// `std::process::exit`), for a cluster that lives in a `static` and is never dropped.
    /// Ephemeral clusters do this by themselves; this is for persistent ones.
    pub fn stop_at_exit(self) {
        exit::keep_until_exit(self);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(error = %error_chain(&error), "could not stop the private PostgreSQL cluster");
        }
    }
}

/// `error: cause: cause`, since a log line has no other way to show the sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The tools run in `/`, so a relative data directory must be resolved here, against our own
/// working directory.
fn absolute(path: &Path) -> Result<PathBuf, PgClusterError> {
    std::path::absolute(path).map_err(|source| PgClusterError::Io {
        action: "resolve",
        path: path.to_path_buf(),
        source,
    })
}

fn initdb(
    bin_dir: &Path,
    data_dir: &Path,
    run_as: Option<&RunAs>,
    fsync: bool,
) -> Result<(), PgClusterError> {
    let mut args = vec![
        OsStr::new("-D"),
        data_dir.as_os_str(),
        OsStr::new("-U"),
        OsStr::new("postgres"),
        OsStr::new("--auth=trust"),
        OsStr::new("--encoding=UTF8"),
        // The C locale: identical behaviour everywhere, whatever locales the machine has.
        OsStr::new("--no-locale"),
    ];
    if !fsync {
        args.push(OsStr::new("--no-sync"));
    }
    Tool::new(bin_dir, "initdb", run_as).run(&args).map(drop)
}

/// `pg_ctl status` exits 0 only while a server runs on the directory (3: not running, 4: no
/// accessible directory).
fn is_running(pg_ctl: &Tool<'_>, data_dir: &Path) -> bool {
    pg_ctl.succeeds(&[OsStr::new("status"), OsStr::new("-D"), data_dir.as_os_str()])
}

fn pg_ctl_stop(pg_ctl: &Tool<'_>, data_dir: &Path) -> Result<(), PgClusterError> {
    pg_ctl
        .run(&[
            OsStr::new("stop"),
            OsStr::new("-D"),
            data_dir.as_os_str(),
            OsStr::new("-m"),
            OsStr::new("fast"),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new(PG_CTL_TIMEOUT),
        ])
        .map(drop)
}

/// Server settings (`name`, `value`), given on the command line so they win over
/// `postgresql.conf` and leave it untouched.
fn server_settings(
    data_dir: &Path,
    throw_away: bool,
    max_connections: u32,
    shared_buffers: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("listen_addresses", "127.0.0.1".to_owned()),
        ("unix_socket_directories", socket_directories(data_dir)),
        ("max_connections", max_connections.to_string()),
    ];
    if throw_away {
        for name in ["fsync", "synchronous_commit", "full_page_writes"] {
            settings.push((name, "off".to_owned()));
        }
    }
    if let Some(size) = shared_buffers {
        settings.push(("shared_buffers", size.to_owned()));
    }
    settings
}

/// The data directory (double-quoted: PostgreSQL splits this list at commas), or no Unix socket
/// at all when the socket path would be too long for the kernel or the path cannot be quoted:
/// [`PgCluster::url`] then names TCP, and a missing socket is better than a server that refuses
/// to start.
fn socket_directories(data_dir: &Path) -> String {
    let dir = data_dir.to_string_lossy();
    let socket_path_len = dir.len() + "/.s.PGSQL.65535".len();
    if socket_path_len > MAX_SOCKET_PATH || dir.contains('"') || dir.contains('\'') {
        tracing::debug!(data_dir = %dir, "data directory path unsuitable for a Unix socket; TCP only");
        return String::new();
    }
    format!("\"{dir}\"")
}

/// The socket directory as a URL host (percent-encoded, which `libpq` and `tokio-postgres` both
/// decode), when the server's socket for `port` is in `data_dir`: a cluster started with a path
/// unsuitable for a socket (see [`socket_directories`]) has none, and an attached one may have
/// been started by a version that kept it elsewhere.
fn socket_host(data_dir: &Path, port: u16) -> Option<String> {
    let dir = data_dir.to_str()?;
    data_dir.join(format!(".s.PGSQL.{port}")).exists().then(|| {
        percent_encoding::utf8_percent_encode(dir, percent_encoding::NON_ALPHANUMERIC).to_string()
    })
}

/// The `-o` argument of `pg_ctl start`, which pastes it into a `/bin/sh` command line: every
/// word single-quoted.
fn shell_words(port: u16, settings: &[(&'static str, String)]) -> String {
    let quote = |word: &str| format!("'{}'", word.replace('\'', r"'\''"));
    let mut words = vec![quote("-p"), quote(&port.to_string())];
    for (name, value) in settings {
        words.push(quote("-c"));
        words.push(quote(&format!("{name}={value}")));
    }
    words.join(" ")
}

/// Whether a server log says the port was taken (someone bound it after we probed it).
fn is_port_conflict(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not bind")
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

/// A port that was free a moment ago; callers retry if someone takes it in between.
fn free_port() -> Result<u16, PgClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(PgClusterError::NoFreePort)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_goes_through_the_socket_when_the_data_directory_holds_it() {
        let dir = tempfile::Builder::new()
            .prefix("a dir%")
            .tempdir()
            .expect("temp dir");
        assert_eq!(socket_host(dir.path(), 5433), None, "no socket yet");
        std::fs::write(dir.path().join(".s.PGSQL.5433"), "").expect("stand-in socket");
        let host = socket_host(dir.path(), 5433).expect("a socket host");
        assert!(host.starts_with("%2F"), "{host}");
        assert!(!host.contains(['/', ' ']), "{host}");
        let decoded = percent_encoding::percent_decode_str(&host)
            .decode_utf8()
            .expect("UTF-8");
        assert_eq!(decoded, dir.path().to_str().expect("UTF-8 path"));
        assert_eq!(socket_host(dir.path(), 5434), None, "another port's socket");
    }

    #[test]
    fn server_options_survive_the_shell() {
        let settings = vec![("unix_socket_directories", "\"/tmp/a b\"".to_owned())];
        assert_eq!(
            shell_words(5432, &settings),
            r#"'-p' '5432' '-c' 'unix_socket_directories="/tmp/a b"'"#
        );
        let quoted = vec![("x", "it's".to_owned())];
        assert_eq!(shell_words(1, &quoted), r"'-p' '1' '-c' 'x=it'\''s'");
    }

    #[test]
    fn long_data_dirs_get_no_unix_socket() {
        assert_eq!(socket_directories(Path::new("/tmp/x")), "\"/tmp/x\"");
        let long = PathBuf::from(format!("/tmp/{}", "d".repeat(100)));
        assert_eq!(socket_directories(&long), "");
    }

    #[test]
    fn durability_is_only_dropped_for_throw_away_clusters() {
        let durable = server_settings(Path::new("/d"), false, 200, None);
        assert!(!durable.iter().any(|(name, _)| *name == "fsync"));
        let fast = server_settings(Path::new("/d"), true, 300, Some("128MB"));
        for name in ["fsync", "synchronous_commit", "full_page_writes"] {
            assert!(fast.contains(&(name, "off".to_owned())));
        }
        assert!(fast.contains(&("shared_buffers", "128MB".to_owned())));
    }

    #[test]
    fn missing_installation_is_one_clear_line() {
        let message = PgClusterError::NotInstalled.to_string();
        assert!(message.contains("apt-get install postgresql"));
        assert!(message.contains("DATABASE_URL"));
        assert!(!message.contains('\n'));
    }
}
