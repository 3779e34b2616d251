//! Real PostgreSQL binaries, real servers: these tests need PostgreSQL installed (not running).

use std::net::TcpStream;
use std::process::Command;

use pg_cluster::{ClusterOptions, PgCluster, find_bin_dir};

fn is_ready(port: u16) -> bool {
    let bin_dir = find_bin_dir().expect("PostgreSQL is installed");
    Command::new(bin_dir.join("pg_isready"))
        .args([
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
        ])
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn ephemeral_cluster_accepts_connections_and_leaves_nothing_behind() {
    let mut cluster = PgCluster::start_ephemeral().expect("start an ephemeral cluster");
    let port = cluster.port();
    let data_dir = cluster.data_dir().to_path_buf();

    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(is_ready(port));
    assert_eq!(
        cluster.url("app"),
        format!("postgres://postgres@127.0.0.1:{port}/app")
    );

    cluster.stop().expect("stop");
    assert!(
        !data_dir.exists(),
        "{} should be removed",
        data_dir.display()
    );
    assert!(!is_ready(port));
    cluster.stop().expect("stopping twice is fine");
}

#[test]
fn persistent_cluster_is_reused_across_restarts() {
    let parent = tempfile::tempdir().expect("temp dir");
    // An unprivileged PostgreSQL user must be able to reach the data directory.
    std::fs::set_permissions(
        parent.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let data_dir = parent.path().join("pgdata");
    let options = ClusterOptions {
        data_dir: data_dir.clone(),
        port: None,
        fsync: false,
    };

    let mut first = PgCluster::start(options.clone()).expect("first start");
    assert!(is_ready(first.port()));
    std::fs::write(data_dir.join("marker"), "kept").expect("write a marker");
    first.stop().expect("stop");
    assert!(!is_ready(first.port()));

    let mut second = PgCluster::start(options.clone()).expect("second start");
    assert!(is_ready(second.port()));
    let mut attached = PgCluster::attach_or_start(options).expect("attach");
    assert_eq!(attached.port(), second.port());
    attached.stop().expect("detach");
    assert!(
        is_ready(second.port()),
        "detaching leaves the server running"
    );
    assert_eq!(
        std::fs::read_to_string(data_dir.join("marker"))
            .ok()
            .as_deref(),
        Some("kept")
    );
    assert!(data_dir.join("PG_VERSION").exists());
    second.stop().expect("stop again");
}

#[test]
fn missing_installation_is_one_clear_line() {
    let message = pg_cluster::PgClusterError::NotInstalled.to_string();
    assert!(message.contains("apt-get install postgresql"));
    assert!(message.contains("DATABASE_URL"));
    assert!(!message.contains('\n'));
}
