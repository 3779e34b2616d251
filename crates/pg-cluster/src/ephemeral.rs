//! Throw-away clusters for tests: a `postgres` child process that cannot outlive us.
//!
//! Three guards, for three ways a test process ends:
//! - normal exit: an `atexit` hook (see [`crate::exit`]) stops the server and removes its
//!   directory, since a harness never drops the `static` holding the cluster;
//! - death by signal or crash: the server is started with `PR_SET_PDEATHSIG` = `SIGQUIT`
//!   (PostgreSQL's immediate shutdown), so the kernel stops it when we die. The signal fires
//!   when the *thread* that forked the child ends, so every server is forked by one spawner
//!   thread that lives as long as the process;
//! - the directory a killed process leaves behind: each cluster directory holds an
//!   `owner.lock` that its process keeps `flock`ed; later runs remove directories whose lock
//!   is free (the kernel drops it when the owner dies, whatever the cause).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::process::{RunAs, Tool, log_tail};
use crate::{PgClusterError, exit};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(15);
const IMMEDIATE_STOP_TIMEOUT: Duration = Duration::from_secs(5);
const DIR_PREFIX: &str = "pg-cluster-";
const OWNER_LOCK: &str = "owner.lock";

/// A running throw-away server and the directory it lives in.
pub struct Handle {
    pid: i32,
    root: PathBuf,
    /// Held (with its `flock`) for as long as the cluster exists; see the module docs.
    _owner_lock: File,
}

impl Handle {
    /// Stops the server and removes its directory.
    pub fn stop(&self) {
        exit::untrack_server(self.pid);
        stop_and_remove(self.pid, &self.root);
    }
}

/// A fresh, locked directory for one cluster: `<temp>/pg-cluster-<pid>-<nanos>`.
pub fn new_root(temp: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    temp.join(format!("{DIR_PREFIX}{}-{nanos}", std::process::id()))
}

/// Takes the owner lock of `root`. The file is locked under a temporary name and then renamed,
/// so a sweeping process never sees an `owner.lock` that is not locked yet.
pub fn lock_root(root: &Path) -> Result<File, PgClusterError> {
    let staging = root.join(format!("{OWNER_LOCK}.new"));
    let lock_path = root.join(OWNER_LOCK);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PgClusterError::Io {
            action: "lock",
            path,
            source,
        }
    };
    let file = File::create(&staging).map_err(io(&staging))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io(&staging)(std::io::Error::last_os_error()));
    }
    std::fs::rename(&staging, &lock_path).map_err(io(&lock_path))?;
    Ok(file)
}

/// Removes cluster directories in `temp` left by processes that died without cleaning up.
pub fn sweep_stale(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let root = entry.path();
        let Ok(lock) = File::open(root.join(OWNER_LOCK)) else {
            continue;
        };
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        let owner_alive =
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0;
        if owner_alive || server_alive(&root.join("data")) {
            continue;
        }
        match std::fs::remove_dir_all(&root) {
            Ok(()) => tracing::debug!(dir = %root.display(), "removed a stale ephemeral cluster"),
            Err(error) => {
                tracing::debug!(dir = %root.display(), %error, "cannot remove a stale ephemeral cluster");
            }
        }
    }
}

/// Whether the postmaster recorded in `data_dir` still runs (it may be shutting down after its
/// owner died).
fn server_alive(data_dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// A dead process that its (new) parent has not reaped yet still "exists" for `kill`.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // `pid (comm) S ...`: the state follows the last `)`, as comm may contain one.
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// Starts `postgres` on `data_dir` and waits until it accepts connections on `port`.
pub fn spawn(
    bin_dir: &Path,
    root: &Path,
    data_dir: &Path,
    port: u16,
    settings: &[(&'static str, String)],
    run_as: Option<&RunAs>,
    owner_lock: File,
) -> Result<Handle, (PgClusterError, File)> {
    match start_server(bin_dir, root, data_dir, port, settings, run_as) {
        Ok(pid) => Ok(Handle {
            pid,
            root: root.to_path_buf(),
            _owner_lock: owner_lock,
        }),
        Err(error) => Err((error, owner_lock)),
    }
}

fn start_server(
    bin_dir: &Path,
    root: &Path,
    data_dir: &Path,
    port: u16,
    settings: &[(&'static str, String)],
    run_as: Option<&RunAs>,
) -> Result<i32, PgClusterError> {
    let postgres = Tool::new(bin_dir, "postgres", run_as);
    let log_path = root.join("server.log");
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| PgClusterError::Io {
            action,
            path,
            source,
        }
    };
    // Opened by us (possibly root) and inherited, so the server needs no access to it.
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io("open", &log_path))?;
    let log_start = log.metadata().map(|meta| meta.len()).unwrap_or(0);
    let log_err = log.try_clone().map_err(io("open", &log_path))?;

    let mut command = postgres.command();
    command
        .arg("-D")
        .arg(data_dir)
        .arg("-p")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    for (name, value) in settings {
        command.arg("-c").arg(format!("{name}={value}"));
    }
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe calls prctl and getppid. std runs it after switching uid/gid (a
    // credential change would clear the death signal again).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // We may have died between fork and prctl, and then no signal is coming.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("parent process exited"));
            }
            Ok(())
        });
    }
    let pid = spawn_from_long_lived_thread(command).map_err(io("run", postgres.path()))?;
    exit::track_server(pid, root.to_path_buf());

    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    loop {
        if let Some(status) = exit_status(pid) {
            exit::untrack_server(pid);
            return Err(PgClusterError::Command {
                command: "postgres".to_owned(),
                status: status.to_string(),
                output: log_tail(&log_path, log_start),
            });
        }
        if pid_file_says_ready(data_dir, pid)
            && TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
        {
            return Ok(pid);
        }
        if started.elapsed() > READY_TIMEOUT {
            exit::untrack_server(pid);
            stop_process(pid);
            return Err(PgClusterError::NotReady {
                port,
                seconds: READY_TIMEOUT.as_secs(),
                log: log_tail(&log_path, log_start),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Line 1 of `postmaster.pid` is the postmaster's pid and line 8 its state, `ready` once it
/// accepts connections (what `pg_ctl start -w` waits for).
fn pid_file_says_ready(data_dir: &Path, pid: i32) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.first() == Some(&pid.to_string().as_str()) && lines.get(7) == Some(&"ready")
}

type SpawnRequest = (Command, Sender<std::io::Result<i32>>);

/// Forks `command` from the spawner thread, which never ends (see the module docs).
fn spawn_from_long_lived_thread(command: Command) -> std::io::Result<i32> {
    static SPAWNER: Mutex<Option<Sender<SpawnRequest>>> = Mutex::new(None);
    let mut spawner = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
    if spawner.is_none() {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("pg-cluster-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let pid = command
                        .spawn()
                        .and_then(|child| i32::try_from(child.id()).map_err(std::io::Error::other));
                    // The `Child` is dropped without waiting; the server is reaped by pid.
                    let _ = reply.send(pid);
                }
                // The sender lives in a static, so the loop above never ends and this thread
                // (the parent of every server, as far as PR_SET_PDEATHSIG is concerned)
                // lasts as long as the process.
            })?;
        *spawner = Some(requests);
    }
    let gone = || std::io::Error::other("the pg-cluster spawner thread is gone");
    let (reply, answer) = mpsc::channel();
    spawner
        .as_ref()
        .ok_or_else(gone)?
        .send((command, reply))
        .map_err(|_| gone())?;
    drop(spawner);
    answer.recv().map_err(|_| gone())?
}

/// Stops the server and removes its directory (also used by the exit hook).
pub fn stop_and_remove(pid: i32, root: &Path) {
    stop_process(pid);
    if let Err(error) = std::fs::remove_dir_all(root)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %root.display(), %error, "cannot remove the ephemeral cluster directory");
    }
}

/// Fast shutdown (SIGINT: sessions are ended, no waiting for clients), then immediate
/// (SIGQUIT), then SIGKILL, each after a grace period.
fn stop_process(pid: i32) {
    for (signal, grace) in [
        (libc::SIGINT, FAST_STOP_TIMEOUT),
        (libc::SIGQUIT, IMMEDIATE_STOP_TIMEOUT),
    ] {
        // SAFETY: signalling our own child by pid; it is not reaped yet, so the pid is ours.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let _ = exit_status(pid);
            return;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if exit_status(pid).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(pid, signal, "PostgreSQL did not stop in time; escalating");
    }
    // SAFETY: as above; the blocking wait reaps it.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Our child's exit status once it has exited (reaping it), `None` while it runs. A child that
/// is no longer ours to wait for (reaped elsewhere) counts as exited.
fn exit_status(pid: i32) -> Option<ExitStatus> {
    let mut status = 0;
    // SAFETY: non-blocking wait on our own child.
    match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
        0 => None,
        result if result == pid => Some(ExitStatus::from_raw(status)),
        _ => Some(ExitStatus::from_raw(0)),
    }
}
