//! Real PostgreSQL binaries, real servers: these tests need PostgreSQL installed (not running).
//! Without an installation they fail with the library's "install PostgreSQL" error.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pg_cluster::{ClusterOptions, PgCluster, PgClusterError};

/// Set in the environment of this test binary when it is re-run as a child process.
const CHILD_MODE: &str = "PG_CLUSTER_TEST_CHILD";
const CHILD_DATA_DIR: &str = "PG_CLUSTER_TEST_DATA_DIR";

fn bin_dir() -> PathBuf {
    PgCluster::find_bin_dir().unwrap_or_else(|error| panic!("{error}"))
}

fn is_ready(port: u16) -> bool {
    Command::new(bin_dir().join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres"])
        .status()
        .is_ok_and(|status| status.success())
}

fn is_ready_on_socket(socket_dir: &Path, port: u16) -> bool {
    Command::new(bin_dir().join("pg_isready"))
        .arg("-q")
        .arg("-h")
        .arg(socket_dir)
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .status()
        .is_ok_and(|status| status.success())
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `pid` is gone (or a zombie, which its new parent may never reap).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn postmaster_pid(data_dir: &Path) -> i32 {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("a pid on line 1 of postmaster.pid")
}

/// A temporary directory an unprivileged PostgreSQL user can enter, whatever the umask.
fn reachable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

#[test]
fn ephemeral_cluster_accepts_connections_and_leaves_nothing_behind() {
    // Started from a thread that ends at once: the server must not die with that thread
    // (PR_SET_PDEATHSIG follows the forking thread, not the process).
    let mut cluster = std::thread::spawn(PgCluster::start_ephemeral)
        .join()
        .expect("starting thread")
        .unwrap_or_else(|error| panic!("start an ephemeral cluster: {error}"));
    std::thread::sleep(Duration::from_millis(200));
    let port = cluster.port();
    let data_dir = cluster.data_dir().to_path_buf();
    assert!(data_dir.starts_with(std::env::temp_dir()));
    assert!(data_dir.join("PG_VERSION").exists());
    if is_root() {
        assert_ne!(
            std::fs::metadata(&data_dir).expect("stat").uid(),
            0,
            "the data directory belongs to the unprivileged server user"
        );
    }

    TcpStream::connect(("127.0.0.1", port)).expect("the server listens on 127.0.0.1");
    assert!(is_ready(port));
    let url = cluster.url("app");
    // The kernel takes socket paths of up to 107 bytes; a longer temporary directory gets TCP.
    let socket = data_dir.join(format!(".s.PGSQL.{port}"));
    if socket.as_os_str().len() <= 107 {
        assert!(
            url.starts_with("postgres://postgres@%2F") && url.ends_with(&format!(":{port}/app")),
            "{url} goes through the socket in the data directory"
        );
        assert!(is_ready_on_socket(&data_dir, port));
    } else {
        assert_eq!(url, format!("postgres://postgres@127.0.0.1:{port}/app"));
    }

    cluster.stop().expect("stop");
    assert!(!data_dir.exists(), "{} is removed", data_dir.display());
    assert!(!is_ready(port));
    cluster.stop().expect("stopping twice is fine");
}

#[test]
fn persistent_cluster_is_reused_across_restarts() {
    let parent = reachable_tempdir();
    let data_dir = parent.path().join("state").join("pgdata");
    let options = ClusterOptions {
        data_dir: data_dir.clone(),
        port: None,
        fsync: false,
    };

    let mut first =
        PgCluster::start(options.clone()).unwrap_or_else(|error| panic!("first start: {error}"));
    assert_eq!(first.data_dir(), data_dir);
    assert!(is_ready(first.port()));
    // pg_control starts with the system identifier that initdb draws at random.
    let identity =
        std::fs::read(data_dir.join("global/pg_control")).expect("pg_control")[..8].to_vec();
    first.stop().expect("stop");
    assert!(!is_ready(first.port()));
    assert!(!data_dir.join("postmaster.pid").exists());
    first.stop().expect("stopping twice is fine");

    let mut second =
        PgCluster::start(options.clone()).unwrap_or_else(|error| panic!("second start: {error}"));
    assert!(is_ready(second.port()));
    assert!(data_dir.join("PG_VERSION").exists());
    assert_eq!(
        std::fs::read(data_dir.join("global/pg_control")).expect("pg_control")[..8],
        identity[..],
        "the cluster was reused, not initialised again"
    );

    let mut attached = PgCluster::attach_or_start(options).expect("attach");
    assert_eq!(attached.port(), second.port());
    attached.stop().expect("detach");
    assert!(
        is_ready(second.port()),
        "detaching leaves the server running"
    );

    second.stop().expect("stop again");
    assert!(!is_ready(second.port()));
}

#[test]
fn a_server_left_running_by_a_killed_process_is_taken_over() {
    let parent = reachable_tempdir();
    let data_dir = parent.path().join("pgdata");
    let mut child = spawn_child("persistent-kill", Some(&data_dir));
    let report = child_report(&mut child);
    let old_port: u16 = field(&report, "PERSISTENT")[0].parse().expect("port");
    // A crashed service: killed, its server keeps running and nobody stops it.
    child.kill().expect("kill the child");
    child.wait().expect("child exit");
    assert!(is_ready(old_port));

    let mut second = PgCluster::start(ClusterOptions {
        data_dir,
        port: None,
        fsync: false,
    })
    .unwrap_or_else(|error| panic!("{error}"));
    assert!(is_ready(second.port()));
    if second.port() != old_port {
        assert!(!is_ready(old_port), "the old server was stopped");
    }
    second.stop().expect("stop");
}

#[test]
fn a_cluster_a_live_process_owns_is_not_taken_over() {
    let parent = reachable_tempdir();
    let options = ClusterOptions {
        data_dir: parent.path().join("pgdata"),
        port: None,
        fsync: false,
    };
    let mut first = PgCluster::start(options.clone()).unwrap_or_else(|error| panic!("{error}"));
    let Err(error) = PgCluster::start(options.clone()) else {
        panic!("started a cluster the first one owns");
    };
    assert!(
        matches!(error, PgClusterError::InUse { .. }),
        "expected InUse, got {error:?}"
    );
    assert!(error.to_string().contains("SWITCHBORD_DATA_DIR"), "{error}");
    assert!(is_ready(first.port()), "the owner's server is untouched");

    // A one-off command uses it as it is, and leaves it running.
    let attached =
        PgCluster::attach_or_start(options.clone()).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(attached.port(), first.port());
    drop(attached);
    assert!(is_ready(first.port()));

    first.stop().expect("stop");
    drop(first);
    let mut again = PgCluster::start(options).unwrap_or_else(|error| panic!("free again: {error}"));
    again.stop().expect("stop");
}

#[test]
fn root_reports_a_data_dir_the_server_user_cannot_reach() {
    if !is_root() {
        return;
    }
    let private = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let error = PgCluster::start(ClusterOptions {
        data_dir: private.path().join("pgdata"),
        port: None,
        fsync: false,
    })
    .err()
    .expect("an unreachable data directory is refused");
    match &error {
        PgClusterError::Unreachable { blocked, .. } => assert_eq!(blocked, private.path()),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&private.path().display().to_string()));
    assert!(message.contains("SWITCHBORD_DATA_DIR") && message.contains("DATABASE_URL"));
    assert!(!private.path().join("pgdata").exists());
}

/// Runs the `child_process` test of this binary in a new process, in `mode`.
fn spawn_child(mode: &str, data_dir: Option<&Path>) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["child_process", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = data_dir {
        command.env(CHILD_DATA_DIR, dir);
    }
    command.spawn().expect("spawn the child test process")
}

/// Lines `KEY value...` the child printed, until `END`.
fn child_report(child: &mut std::process::Child) -> Vec<Vec<String>> {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut report = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if line == "END" {
            break;
        }
        if let Some(rest) = line.strip_prefix("REPORT ") {
            report.push(rest.split(' ').map(str::to_owned).collect());
        }
    }
    report
}

fn field<'a>(report: &'a [Vec<String>], key: &str) -> &'a [String] {
    report
        .iter()
        .find(|line| line[0] == key)
        .map(|line| &line[1..])
        .unwrap_or_else(|| panic!("the child reported no {key}: {report:?}"))
}

/// What the child half of the tests below does; a no-op in a normal test run.
#[test]
#[ignore = "run by the other tests in a child process"]
fn child_process() {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    let cluster = CLUSTER.get_or_init(|| {
        PgCluster::start_ephemeral().unwrap_or_else(|error| panic!("child start: {error}"))
    });
    let data_dir = cluster.data_dir();
    println!(
        "REPORT EPHEMERAL {} {} {}",
        cluster.port(),
        data_dir.display(),
        postmaster_pid(data_dir)
    );
    match mode.as_str() {
        "exit" => {
            let dir = std::env::var_os(CHILD_DATA_DIR).expect("data dir for the persistent one");
            let persistent = PgCluster::start(ClusterOptions {
                data_dir: PathBuf::from(dir),
                port: None,
                fsync: false,
            })
            .unwrap_or_else(|error| panic!("child persistent start: {error}"));
            println!(
                "REPORT PERSISTENT {} {}",
                persistent.port(),
                postmaster_pid(persistent.data_dir())
            );
            persistent.stop_at_exit();
            println!("END");
            // Statics are not dropped and no destructors run: only the exit hook can stop them.
            std::process::exit(0);
        }
        "persistent-kill" => {
            let dir = std::env::var_os(CHILD_DATA_DIR).expect("data dir for the persistent one");
            let persistent = PgCluster::start(ClusterOptions {
                data_dir: PathBuf::from(dir),
                port: None,
                fsync: false,
            })
            .unwrap_or_else(|error| panic!("child persistent start: {error}"));
            println!("REPORT PERSISTENT {}", persistent.port());
            println!("END");
            std::mem::forget(persistent);
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "kill" => {
            println!("END");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

#[test]
fn clusters_are_stopped_when_the_process_exits() {
    let parent = reachable_tempdir();
    let persistent_dir = parent.path().join("pgdata");
    let mut child = spawn_child("exit", Some(&persistent_dir));
    let report = child_report(&mut child);
    assert!(child.wait().expect("child exit").success());

    let ephemeral = field(&report, "EPHEMERAL");
    let (port, data_dir, pid) = (&ephemeral[0], Path::new(&ephemeral[1]), &ephemeral[2]);
    assert!(process_gone(pid.parse().expect("pid")));
    assert!(!is_ready(port.parse().expect("port")));
    assert!(!data_dir.exists(), "{} is removed", data_dir.display());
    assert!(
        !data_dir.parent().expect("cluster root").exists(),
        "the whole ephemeral directory is removed"
    );

    let persistent = field(&report, "PERSISTENT");
    assert!(process_gone(persistent[1].parse().expect("pid")));
    assert!(!is_ready(persistent[0].parse().expect("port")));
    assert!(persistent_dir.join("PG_VERSION").exists(), "kept");
    assert!(
        !persistent_dir.join("postmaster.pid").exists(),
        "cleanly stopped"
    );
}

#[test]
fn ephemeral_server_dies_with_a_killed_process() {
    let mut child = spawn_child("kill", None);
    let report = child_report(&mut child);
    let ephemeral = field(&report, "EPHEMERAL");
    let port: u16 = ephemeral[0].parse().expect("port");
    let root = Path::new(&ephemeral[1])
        .parent()
        .expect("cluster root")
        .to_path_buf();
    let pid: i32 = ephemeral[2].parse().expect("pid");
    assert!(is_ready(port));

    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    wait_until("the orphaned server stops", Duration::from_secs(15), || {
        process_gone(pid)
    });
    assert!(!is_ready(port));

    // The killed process could not clean up; the next ephemeral start does.
    assert!(root.exists());
    let mut next = PgCluster::start_ephemeral().unwrap_or_else(|error| panic!("{error}"));
    assert!(!root.exists(), "{} is swept", root.display());
    next.stop().expect("stop");
}
