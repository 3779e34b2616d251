//! The real `switchbord` executable, as a new user runs it: no configuration, a private
//! PostgreSQL under the data directory, SIGTERM to stop.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

const BINARY: &str = env!("CARGO_BIN_EXE_switchbord");

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A data directory that the unprivileged PostgreSQL user can reach when tests run as root.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

struct Running {
    child: Child,
    http_port: u16,
    grpc_port: u16,
}

impl Running {
    fn start(data_dir: &Path, extra_env: &[(&str, String)]) -> Self {
        let http_port = free_port();
        let grpc_port = free_port();
        let mut command = Command::new(BINARY);
        command
            .env_remove("DATABASE_URL")
            .env("SWITCHBORD_DATA_DIR", data_dir)
            .env("SWITCHBORD_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("SWITCHBORD_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (name, value) in extra_env {
            command.env(name, value);
        }
        let child = command.spawn().expect("start switchbord");
        Self {
            child,
            http_port,
            grpc_port,
        }
    }

    async fn wait_until_serving(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("switchbord exited during start-up: {status}");
            }
            let health = client
                .get(format!("http://127.0.0.1:{}/healthz", self.http_port))
                .send()
                .await;
            if health.is_ok_and(|reply| reply.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "switchbord did not start in time"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn upsert(&self, body: &Json) -> (u16, Json) {
        let reply = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/compat/contact",
                self.http_port
            ))
            .json(body)
            .send()
            .await
            .expect("request reaches the gateway");
        let status = reply.status().as_u16();
        (status, reply.json().await.unwrap_or(Json::Null))
    }

    /// SIGTERM, then the exit status (within a minute).
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for switchbord") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("switchbord did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_with_no_configuration_stops_cleanly_and_keeps_data_across_restarts() {
    let data = data_dir();

    let mut first = Running::start(data.path(), &[]);
    first.wait_until_serving().await;
    let (status, created) = first
        .upsert(&json!({"phone_number": "+4915112345678", "external_reference_id": "crm-4711"}))
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["operation"], "created");
    let exit = first.terminate();
    assert!(exit.success(), "{exit}");
    assert!(data.path().join("pgdata/PG_VERSION").exists());
    assert!(
        !data.path().join("pgdata/postmaster.pid").exists(),
        "the private PostgreSQL is stopped on shutdown"
    );

    let mut second = Running::start(data.path(), &[]);
    second.wait_until_serving().await;
    let (status, updated) = second
        .upsert(&json!({"phone_number": "+4915112345678"}))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["operation"], "updated", "data survived the restart");
    assert_eq!(updated["contact"]["id"], created["contact"]["id"]);

    // The gateway alone, in front of the running core.
    let mut gateway = Running::start(
        data.path(),
        &[(
            "SWITCHBORD_CORE_URL",
            format!("http://127.0.0.1:{}", second.grpc_port),
        )],
    );
    gateway.wait_until_serving().await;
    let (status, through_gateway) = gateway
        .upsert(&json!({"phone_number": "+4915112345678"}))
        .await;
    assert_eq!(status, 200, "{through_gateway}");
    assert_eq!(through_gateway["contact"]["id"], created["contact"]["id"]);
    assert!(gateway.terminate().success());
    assert!(second.terminate().success());
}

#[test]
fn without_postgresql_it_says_so_in_one_line() {
    let data = data_dir();
    let output: Output = Command::new(BINARY)
        .env_remove("DATABASE_URL")
        .env("SWITCHBORD_DATA_DIR", data.path())
        .env("PG_BIN_DIR", data.path().join("no-postgres-here"))
        .env("SWITCHBORD_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("SWITCHBORD_GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .output()
        .expect("run switchbord");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|line| line.starts_with("switchbord: "))
        .unwrap_or_else(|| panic!("no error line in: {stderr}"));
    assert!(line.contains("no PostgreSQL installation found"), "{line}");
    assert!(line.contains("DATABASE_URL"), "{line}");
}

#[test]
fn help_explains_flags_and_their_environment_variables() {
    let output = Command::new(BINARY)
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "DATABASE_URL",
        "SWITCHBORD_DATA_DIR",
        "SWITCHBORD_GRPC_ADDR",
        "SWITCHBORD_HTTP_ADDR",
        "SWITCHBORD_CORE_URL",
        "SWITCHBORD_DEFAULT_REGION",
        "SWITCHBORD_RATE_LIMIT_PER_MINUTE",
        "SWITCHBORD_TRUSTED_PROXIES",
        "SWITCHBORD_LOG_FORMAT",
    ] {
        assert!(
            help.contains(variable),
            "--help does not mention {variable}:\n{help}"
        );
    }
}
