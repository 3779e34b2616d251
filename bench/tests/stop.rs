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

/// What a run stopped by SIGTERM while it waits for its server left.
struct Stopped {
    succeeded: bool,
    server_running: bool,
    /// The bench's temporary directory's entries.
    left: Vec<std::ffi::OsString>,
}

/// Starts the bench (on `database_url`, or its own cluster) with a server that never becomes
/// ready, calls `while_running` once the server runs, stops the bench with SIGTERM, and
/// reports what is left.
fn stop_a_run(database_url: Option<&str>, while_running: impl FnOnce()) -> Stopped {
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

    let mut command = Command::new(env!("CARGO_BIN_EXE_switchbord-bench"));
    command
        .arg("--quick")
        .env("SWITCHBORD_BENCH_SERVER", &server)
        .env("FAKE_SERVER_PID_FILE", &pid_file)
        .env("TMPDIR", &temp)
        .stdout(Stdio::null());
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    let mut bench = command.spawn().expect("start the bench");
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

    while_running();
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

    Stopped {
        succeeded: status.expect("exited").success(),
        server_running: Path::new(&format!("/proc/{server_pid}")).exists(),
        left: std::fs::read_dir(&temp)
            .expect("read the temporary directory")
            .map(|entry| entry.expect("entry").file_name())
            .collect(),
    }
}

#[test]
fn a_run_stopped_by_sigterm_stops_its_server_and_removes_its_files() {
    let stopped = stop_a_run(None, || {});

    assert!(!stopped.succeeded, "a stopped run is a failed run");
    assert!(!stopped.server_running, "the server was stopped and reaped");
    assert!(
        stopped.left.is_empty(),
        "the private cluster and the data directory are removed: {:?}",
        stopped.left
    );
}

#[test]
fn a_run_on_a_callers_database_server_drops_the_database_it_made() {
    use diesel::QueryableByName;
    use diesel::sql_types::Text;
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

    #[derive(QueryableByName)]
    struct Database {
        #[diesel(sql_type = Text)]
        datname: String,
    }

    let cluster = pg_cluster::PgCluster::start_ephemeral().expect("a cluster of the caller's");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bench_databases = || -> Vec<String> {
        runtime.block_on(async {
            let mut connection = AsyncPgConnection::establish(&cluster.url("postgres"))
                .await
                .expect("connect");
            diesel::sql_query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'switchbord_bench%'",
            )
            .load::<Database>(&mut connection)
            .await
            .expect("list databases")
            .into_iter()
            .map(|database| database.datname)
            .collect()
        })
    };
    let mut made = Vec::new();
    let stopped = stop_a_run(Some(&cluster.url("postgres")), || made = bench_databases());

    assert_eq!(made.len(), 1, "the run made its database there: {made:?}");
    assert!(!stopped.succeeded, "a stopped run is a failed run");
    assert!(!stopped.server_running, "the server was stopped and reaped");
    assert!(
        stopped.left.is_empty(),
        "the data directory is removed: {:?}",
        stopped.left
    );
    let left = bench_databases();
    assert!(left.is_empty(), "the bench's database is dropped: {left:?}");
}
