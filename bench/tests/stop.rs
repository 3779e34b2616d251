//! A benchmark run stopped by a signal cleans up after itself: `timeout` or an operator's
//! `kill` must not leave a server (and its database connections) running.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it is true or `limit` has passed.
fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

#[test]
fn a_run_stopped_by_sigterm_stops_its_server_and_removes_its_files() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let temp = scratch.path().join("tmp");
    std::fs::create_dir(&temp).expect("the bench's temporary directory");
    // The private cluster's server may run as another user (under root): it must reach `temp`.
    for directory in [scratch.path(), temp.as_path()] {
        std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let pid_file = scratch.path().join("server.pid");
    // A server that never answers /healthz, so the bench is stopped while it waits for it. Its
    // output goes nowhere, so that one left behind cannot keep the test's pipes open.
    let server = scratch.path().join("switchbord");
    std::fs::write(
        &server,
        "#!/bin/sh\necho $$ > \"$FAKE_SERVER_PID_FILE.tmp\"\nmv \"$FAKE_SERVER_PID_FILE.tmp\" \"$FAKE_SERVER_PID_FILE\"\nexec sleep 600 >/dev/null 2>&1\n",
    )
    .expect("fake server");
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let mut bench = Command::new(env!("CARGO_BIN_EXE_switchbord-bench"))
        .arg("--quick")
        .env("SWITCHBORD_BENCH_SERVER", &server)
        .env("FAKE_SERVER_PID_FILE", &pid_file)
        .env("TMPDIR", &temp)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the bench");
    let started = wait_until(Duration::from_secs(120), || pid_file.exists());
    if !started {
        let _ = bench.kill();
        panic!("the bench never started its server");
    }
    let server_pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");

    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(bench.id() as i32, libc::SIGTERM);
    }
    let mut status = None;
    let exited = wait_until(Duration::from_secs(30), || {
        status = bench.try_wait().expect("wait");
        status.is_some()
    });
    if !exited {
        let _ = bench.kill();
        panic!("the bench did not exit after SIGTERM");
    }

    assert!(
        !status.expect("exited").success(),
        "a stopped run is a failed run"
    );
    assert!(
        !Path::new(&format!("/proc/{server_pid}")).exists(),
        "the server was stopped and reaped"
    );
    let left: Vec<_> = std::fs::read_dir(&temp)
        .expect("read the temporary directory")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "the private cluster and the data directory are removed: {left:?}"
    );
}
