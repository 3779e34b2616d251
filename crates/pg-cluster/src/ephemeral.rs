//! Throw-away clusters for tests: a `postgres` child process that cannot outlive us.
//!
//! Two guards: the server gets `PR_SET_PDEATHSIG`, so the kernel stops it if this process dies
//! (a crashed or killed test run), and an `atexit` hook stops it and removes its directory when
//! the process exits normally (a test harness never drops its `static`s). `PR_SET_PDEATHSIG`
//! fires when the *thread* that forked the child ends, so children are forked by one spawner
//! thread that lives as long as the process.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use crate::process::{RunAs, Tool, tail};
use crate::{PgClusterError, server_settings};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running throw-away server.
pub struct Handle {
    pid: i32,
    data_dir: PathBuf,
}

impl Handle {
    /// Stops the server and removes its directory.
    pub fn stop(&self) {
        forget(self.pid);
        stop_and_remove(self.pid, &self.data_dir);
    }
}

/// Servers still running, stopped by the exit hook.
static RUNNING: Mutex<Vec<(i32, PathBuf)>> = Mutex::new(Vec::new());

type SpawnRequest = (Command, Sender<std::io::Result<u32>>);

pub fn spawn(
    bin_dir: &Path,
    data_dir: &Path,
    port: u16,
    run_as: Option<&RunAs>,
) -> Result<Handle, PgClusterError> {
    let log_path = data_dir.join("server.log");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PgClusterError::Io { path, source }
    };
    let log = File::create(&log_path).map_err(io(&log_path))?;
    let log_err = log.try_clone().map_err(io(&log_path))?;

    let mut command = Tool::new(bin_dir, "postgres", run_as).command();
    command
        .arg("-D")
        .arg(data_dir)
        .args(split_settings(&server_settings(data_dir, port, false, 300)))
        .args(["-c", "shared_buffers=128MB"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let pid = spawn_from_long_lived_thread(command).map_err(io(&bin_dir.join("postgres")))?;
    let pid = i32::try_from(pid).unwrap_or(i32::MAX);
    register(pid, data_dir);

    let pg_isready = Tool::new(bin_dir, "pg_isready", None);
    let port_text = port.to_string();
    let started = Instant::now();
    loop {
        if exited(pid) {
            forget(pid);
            return Err(PgClusterError::Command {
                tool: "postgres",
                status: "exited during start-up".to_owned(),
                output: read_tail(&log_path),
            });
        }
        if pg_isready.succeeds(&[
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port_text,
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]) {
            return Ok(Handle {
                pid,
                data_dir: data_dir.to_path_buf(),
            });
        }
        if started.elapsed() > READY_TIMEOUT {
            forget(pid);
            stop_and_remove_process(pid);
            return Err(PgClusterError::NotReady {
                port,
                seconds: READY_TIMEOUT.as_secs(),
                log: read_tail(&log_path),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `-p 5 -c a=b -c dir='x y'` → separate arguments (no shell involved, so no quotes).
fn split_settings(settings: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in settings.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    args.push(std::mem::take(&mut current));
                }
            }
            other => current.push(other),
        }
    }
    if !current.is_empty() {
        args.push(current);
    }
    args
}

fn spawn_from_long_lived_thread(command: Command) -> std::io::Result<u32> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("pg-cluster-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn().map(|child| child.id()));
                }
                // The sender lives in a static, so this point is never reached and the thread
                // (the parent of every server, as far as PR_SET_PDEATHSIG is concerned) never
                // ends before the process does.
            })
            .expect("spawn the pg-cluster spawner thread");
        Mutex::new(requests)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| std::io::Error::other("spawner lock poisoned"))?
        .send((command, reply))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

fn register(pid: i32, data_dir: &Path) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registering a plain extern "C" function with atexit.
        unsafe {
            libc::atexit(stop_all_at_exit);
        }
    });
    if let Ok(mut running) = RUNNING.lock() {
        running.push((pid, data_dir.to_path_buf()));
    }
}

fn forget(pid: i32) {
    if let Ok(mut running) = RUNNING.lock() {
        running.retain(|(running_pid, _)| *running_pid != pid);
    }
}

extern "C" fn stop_all_at_exit() {
    let servers = RUNNING
        .lock()
        .map(|mut running| std::mem::take(&mut *running))
        .unwrap_or_default();
    for (pid, data_dir) in servers {
        stop_and_remove(pid, &data_dir);
    }
}

fn stop_and_remove(pid: i32, data_dir: &Path) {
    stop_and_remove_process(pid);
    let _ = std::fs::remove_dir_all(data_dir);
}

/// Asks for a fast shutdown (SIGINT), waits for the exit, and kills after a grace period.
fn stop_and_remove_process(pid: i32) {
    // SAFETY: signalling and reaping our own child by pid.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while !exited(pid) {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether our child `pid` has exited (reaping it if so).
fn exited(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: non-blocking wait on our own child.
    let result = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    result == pid || result == -1
}

fn read_tail(log: &Path) -> String {
    std::fs::read_to_string(log)
        .map(|text| tail(&text, 2000))
        .unwrap_or_default()
}
