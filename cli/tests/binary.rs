//! The real `switchbord` executable, as a new user runs it: no configuration, a private
//! PostgreSQL under the data directory, SIGTERM to stop.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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
    log: PathBuf,
    api_key: Option<String>,
}

impl Running {
    fn start(data_dir: &Path, extra_env: &[(&str, String)]) -> Self {
        let http_port = free_port();
        let grpc_port = free_port();
        let log = data_dir.join(format!("server-{http_port}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(BINARY);
        command
            .env_remove("DATABASE_URL")
            .env_remove("SWITCHBORD_BOOTSTRAP_ADMIN_KEY")
            .env_remove("SWITCHBORD_KEY_PEPPER")
            .env("RUST_LOG", "debug")
            .env("SWITCHBORD_DATA_DIR", data_dir)
            .env("SWITCHBORD_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("SWITCHBORD_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (name, value) in extra_env {
            command.env(name, value);
        }
        let child = command.spawn().expect("start switchbord");
        Self {
            child,
            http_port,
            grpc_port,
            log,
            api_key: None,
        }
    }

    /// A serving server with `admin_key` as its first admin key (and `api_key`), that accepts
    /// webhook endpoints on loopback over plain http, where the tests' receivers listen.
    async fn serving_loopback_webhooks(data_dir: &Path, admin_key: &str) -> Self {
        let mut running = Self::start(
            data_dir,
            &[
                ("SWITCHBORD_BOOTSTRAP_ADMIN_KEY", admin_key.to_owned()),
                ("SWITCHBORD_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
                ("SWITCHBORD_WEBHOOK_ALLOW_HTTP", "true".to_owned()),
            ],
        );
        running.wait_until_serving().await;
        running.api_key = Some(admin_key.to_owned());
        running
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    async fn wait_until_serving(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "switchbord exited during start-up: {status}\n{}",
                    self.logs()
                );
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
        let mut request = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/compat/contact",
                self.http_port
            ))
            .json(body);
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key);
        }
        let reply = request.send().await.expect("request reaches the gateway");
        let status = reply.status().as_u16();
        (status, reply.json().await.unwrap_or(Json::Null))
    }

    /// The exit status of a server that stops on its own (within two minutes).
    fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for switchbord") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("switchbord did not stop: {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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

impl Drop for Running {
    /// A test that ends (or fails) without stopping its server would leave it running after the
    /// test binary exits, holding its ports: it is asked to stop as SIGTERM asks (so that it
    /// stops its private PostgreSQL too), then killed.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `switchbord keys …` and returns its JSON output.
fn keys_command(data_dir: &Path, args: &[&str]) -> Json {
    let output = Command::new(BINARY)
        .env_remove("DATABASE_URL")
        .env_remove("SWITCHBORD_KEY_PEPPER")
        .env("SWITCHBORD_DATA_DIR", data_dir)
        .arg("keys")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run switchbord keys");
    assert!(
        output.status.success(),
        "switchbord keys {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// The bootstrap key printed on stderr: the line after the announcement.
fn printed_admin_key(logs: &str) -> Option<String> {
    let mut lines = logs.lines();
    lines.find(|line| line.contains("created the first admin API key"))?;
    lines.next().map(|line| line.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_admin_key_that_cannot_be_saved_is_still_shown() {
    let data = data_dir();
    // Where the key file would go, a directory: the save fails.
    std::fs::create_dir_all(data.path().join("admin-key")).expect("directory");

    let mut running = Running::start(data.path(), &[]);
    running.wait_until_serving().await;
    let logs = running.logs();
    assert!(printed_admin_key(&logs).is_some(), "{logs}");
    assert!(logs.contains("the key could not be saved"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_with_no_configuration_stops_cleanly_and_keeps_data_across_restarts() {
    let data = data_dir();

    let mut first = Running::start(data.path(), &[]);
    first.wait_until_serving().await;
    let admin_key = printed_admin_key(&first.logs()).expect("the first start prints an admin key");
    let key_file = data.path().join("admin-key");
    assert_eq!(
        std::fs::read_to_string(&key_file)
            .expect("admin-key file")
            .trim(),
        admin_key
    );
    let mode = std::fs::metadata(&key_file)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let (status, _) = first
        .upsert(&json!({"phone_number": "+4915112345678"}))
        .await;
    assert_eq!(status, 401, "keys are required by default");
    first.api_key = Some(admin_key.clone());
    let (status, created) = first
        .upsert(&json!({"phone_number": "+4915112345678", "external_reference_id": "crm-4711"}))
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["operation"], "created");

    // A user key made through the running core, then used, listed (directly on the database
    // the server is running) and revoked.
    let grpc_url = first.grpc_url();
    let made = keys_command(
        data.path(),
        &[
            "create",
            "--role",
            "user",
            "--name",
            "crm-sync",
            "--core-url",
            &grpc_url,
            "--api-key",
            &admin_key,
        ],
    );
    let user_key = made["secret"].as_str().expect("secret").to_owned();
    first.api_key = Some(user_key.clone());
    let (status, _) = first
        .upsert(&json!({"phone_number": "+4915112345678"}))
        .await;
    assert_eq!(status, 200);
    let listed = keys_command(data.path(), &["list"]);
    // On the database, without a core to name the field in a status, the error still does.
    let refused = Command::new(BINARY)
        .env_remove("DATABASE_URL")
        .env_remove("SWITCHBORD_KEY_PEPPER")
        .env("SWITCHBORD_DATA_DIR", data.path())
        .args(["keys", "create", "--name", " ", "--role", "user"])
        .stdin(Stdio::null())
        .output()
        .expect("run switchbord keys");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("name: must be 1 to"), "{stderr}");
    let names: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|key| key["name"].as_str())
        .collect();
    assert!(
        names.contains(&"crm-sync") && names.contains(&"bootstrap-admin"),
        "{names:?}"
    );
    assert!(
        !listed.to_string().contains(&user_key),
        "listings never show secrets"
    );
    let id = made["api_key"]["id"].as_str().expect("id");
    keys_command(
        data.path(),
        &[
            "revoke",
            id,
            "--core-url",
            &grpc_url,
            "--api-key",
            &admin_key,
        ],
    );
    let (status, _) = first
        .upsert(&json!({"phone_number": "+4915112345678"}))
        .await;
    assert_eq!(status, 401, "revoked");

    let logs = first.logs();
    let exit = first.terminate();
    assert!(exit.success(), "{exit}");
    assert!(data.path().join("pgdata/PG_VERSION").exists());
    assert!(
        !data.path().join("pgdata/postmaster.pid").exists(),
        "the private PostgreSQL is stopped on shutdown"
    );
    assert_eq!(
        logs.matches(&admin_key).count(),
        1,
        "the admin key is printed once and never logged"
    );
    assert!(!logs.contains(&user_key), "API keys never appear in logs");
    let pepper = std::fs::read_to_string(data.path().join("key-pepper")).expect("pepper file");
    assert!(
        !logs.contains(pepper.trim()),
        "the pepper never appears in logs"
    );

    let mut second = Running::start(data.path(), &[]);
    second.wait_until_serving().await;
    assert!(
        printed_admin_key(&second.logs()).is_none(),
        "no second bootstrap key"
    );
    second.api_key = Some(admin_key.clone());
    let (status, updated) = second
        .upsert(&json!({"phone_number": "+4915112345678"}))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["operation"], "updated", "data survived the restart");
    assert_eq!(updated["contact"]["id"], created["contact"]["id"]);

    // The gateway alone, in front of the running core.
    let mut gateway = Running::start(data.path(), &[("SWITCHBORD_CORE_URL", second.grpc_url())]);
    gateway.wait_until_serving().await;
    gateway.api_key = Some(admin_key.clone());
    let (status, through_gateway) = gateway
        .upsert(&json!({"phone_number": "+4915112345678"}))
        .await;
    assert_eq!(status, 200, "{through_gateway}");
    assert_eq!(through_gateway["contact"]["id"], created["contact"]["id"]);
    assert!(gateway.terminate().success());
    assert!(second.terminate().success());

    // Another pepper than the one the keys were made with (a different working directory, a
    // second instance configured apart): refused, naming the setting, rather than every key
    // refused later.
    let another_pepper = "another-pepper-0123456789abcdef0123456789";
    let key_with_another_pepper = Command::new(BINARY)
        .env_remove("DATABASE_URL")
        .env("SWITCHBORD_KEY_PEPPER", another_pepper)
        .env("SWITCHBORD_DATA_DIR", data.path())
        .args(["keys", "create", "--role", "user", "--name", "never-usable"])
        .stdin(Stdio::null())
        .output()
        .expect("run switchbord keys");
    let refusal = String::from_utf8_lossy(&key_with_another_pepper.stderr);
    assert!(!key_with_another_pepper.status.success(), "{refusal}");
    assert!(refusal.contains("SWITCHBORD_KEY_PEPPER"), "{refusal}");
    let mut refused = Running::start(
        data.path(),
        &[("SWITCHBORD_KEY_PEPPER", another_pepper.to_owned())],
    );
    let exit = refused.wait_for_exit();
    assert!(!exit.success(), "{exit}");
    assert!(
        refused.logs().contains("SWITCHBORD_KEY_PEPPER"),
        "{}",
        refused.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_bootstrap_key_is_installed_and_not_printed() {
    let data = data_dir();
    let configured = "automation-admin-key-0123456789-abcdefghij".to_owned();

    let mut running = Running::start(
        data.path(),
        &[("SWITCHBORD_BOOTSTRAP_ADMIN_KEY", configured.clone())],
    );
    running.wait_until_serving().await;
    running.api_key = Some(configured.clone());
    let (status, body) = running
        .upsert(&json!({"phone_number": "+4915112345678"}))
        .await;
    let listed = keys_command(
        data.path(),
        &[
            "list",
            "--core-url",
            &running.grpc_url(),
            "--api-key",
            &configured,
        ],
    );
    let logs = running.logs();
    assert!(running.terminate().success());

    assert_eq!(status, 200, "{body}");
    assert_eq!(listed[0]["name"], "bootstrap-admin");
    assert!(
        !logs.contains(&configured),
        "the configured key is never printed"
    );
    assert!(!data.path().join("admin-key").exists());
}

#[test]
fn without_usable_postgresql_it_says_so_in_one_line() {
    let data = data_dir();
    let output: Output = Command::new(BINARY)
        .env_remove("DATABASE_URL")
        .env("SWITCHBORD_DATA_DIR", data.path())
        .env("PG_BIN_DIR", data.path().join("no-postgres-here"))
        .env("SWITCHBORD_LOG_FORMAT", "json")
        .env(
            "SWITCHBORD_KEY_PEPPER",
            "a-pepper-long-enough-for-the-check-0123456789",
        )
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
    // A PG_BIN_DIR without the server tools stands in for a machine without PostgreSQL (this
    // one has it installed); the "not installed" wording itself is tested in pg-cluster.
    assert!(
        line.contains("initdb") && line.contains("PG_BIN_DIR"),
        "{line}"
    );
    let logged = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Json>(line).ok())
        .find(|entry| entry["level"] == "ERROR")
        .unwrap_or_else(|| panic!("SWITCHBORD_LOG_FORMAT=json logs JSON lines: {stderr}"));
    assert!(
        logged["error"]
            .as_str()
            .unwrap_or_default()
            .contains("initdb"),
        "{logged}"
    );
}

/// The allocator is jemalloc with the settings of `src/allocator.rs`, which jemalloc reports
/// when asked to confirm its configuration.
#[test]
fn it_allocates_with_jemalloc_configured_to_hand_memory_back() {
    let output = Command::new(BINARY)
        .arg("--help")
        .env("_RJEM_MALLOC_CONF", "confirm_conf:true")
        .output()
        .expect("run switchbord --help");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for setting in [
        "narenas:2",
        "background_thread:true",
        "dirty_decay_ms:1000",
        "muzzy_decay_ms:0",
    ] {
        assert!(
            stderr.contains(&format!("Set conf value: {setting}\n")),
            "{setting} not set: {stderr}"
        );
    }
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
        "SWITCHBORD_KEY_PEPPER",
        "SWITCHBORD_BOOTSTRAP_ADMIN_KEY",
        "SWITCHBORD_AUTH_LEGACY_PATHS",
    ] {
        assert!(
            help.contains(variable),
            "--help does not mention {variable}:\n{help}"
        );
    }
    for (command, variables) in [
        (
            "check-config",
            &[
                "DATABASE_URL",
                "SWITCHBORD_KEY_PEPPER",
                "SWITCHBORD_HTTP_ADDR",
            ][..],
        ),
        (
            "endpoints",
            &["SWITCHBORD_CORE_URL", "SWITCHBORD_API_KEY"][..],
        ),
        ("outbox", &["SWITCHBORD_CORE_URL", "SWITCHBORD_API_KEY"][..]),
    ] {
        let output = Command::new(BINARY)
            .args([command, "--help"])
            .output()
            .expect("run --help");
        let help = String::from_utf8_lossy(&output.stdout);
        for variable in variables {
            assert!(
                help.contains(variable),
                "{command} --help does not mention {variable}:\n{help}"
            );
        }
    }
}

/// A minimal HTTP receiver on a thread: answers 200 to every request.
fn start_receiver() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind receiver");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Read, Write};
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        let mut body = vec![0; length];
                        let _ = reader.read_exact(&mut body);
                        let _ = reader
                            .get_mut()
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        length = 0;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_secrets_and_custom_headers_never_reach_the_logs() {
    let data = data_dir();
    let admin_key = "log-test-admin-key-0123456789abcdefghij".to_owned();
    let running = Running::serving_loopback_webhooks(data.path(), &admin_key).await;
    let receiver = start_receiver();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", running.http_port);
    let created: Json = http
        .post(format!("{base}/api/v1/webhooks/endpoints"))
        .header("x-api-key", &admin_key)
        .json(&json!({"url": format!("http://127.0.0.1:{receiver}/hook"), "headers": {"Authorization": "Bearer receiver-token-do-not-log"}}))
        .send()
        .await
        .expect("create endpoint")
        .json()
        .await
        .expect("JSON");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let id = created["endpoint"]["id"].as_str().expect("id").to_owned();
    let tested: Json = http
        .post(format!("{base}/api/v1/webhooks/endpoints/{id}/test"))
        .header("x-api-key", &admin_key)
        .send()
        .await
        .expect("test send")
        .json()
        .await
        .expect("JSON");
    let rotated: Json = http
        .post(format!(
            "{base}/api/v1/webhooks/endpoints/{id}/rotate-secret"
        ))
        .header("x-api-key", &admin_key)
        .send()
        .await
        .expect("rotate")
        .json()
        .await
        .expect("JSON");
    let logs = running.logs();
    assert!(running.terminate().success());

    assert_eq!(tested["attempt"]["succeeded"], true, "{tested}");
    assert!(
        logs.contains("DEBUG") || logs.contains("INFO"),
        "logs were captured"
    );
    for needle in [
        secret.as_str(),
        rotated["secret"].as_str().expect("rotated secret"),
        "receiver-token-do-not-log",
        admin_key.as_str(),
    ] {
        assert!(!logs.contains(needle), "{needle} appeared in the logs");
    }
}

/// One request to the collector: path, content type, body.
type Export = (String, String, Vec<u8>);

/// A fake OpenTelemetry collector: records every OTLP/HTTP export it receives.
#[derive(Clone, Default)]
struct Collector {
    exports: std::sync::Arc<std::sync::Mutex<Vec<Export>>>,
}

impl Collector {
    async fn start(&self) -> String {
        let exports = self.exports.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let exports = exports.clone();
                async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    exports.lock().expect("exports").push((
                        uri.path().to_owned(),
                        content_type,
                        body.to_vec(),
                    ));
                    axum::http::StatusCode::OK
                }
            },
        );
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// Whether an export to `/v1/traces` in protobuf contains every one of `needles`.
    fn saw_trace_with(&self, needles: &[&[u8]]) -> bool {
        self.exports
            .lock()
            .expect("exports")
            .iter()
            .any(|(path, content_type, body)| {
                path == "/v1/traces"
                    && content_type == "application/x-protobuf"
                    && needles
                        .iter()
                        .all(|needle| body.windows(needle.len()).any(|window| window == *needle))
            })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_go_to_the_otlp_collector_when_an_endpoint_is_set() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let data = data_dir();
    let mut running = Running::start(
        data.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            // Export every 200 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ],
    );
    running.wait_until_serving().await;
    let request_id = "7b0c1f4e-8a43-4c2e-9d55-0f6a3c2b1e90";
    let client = reqwest::Client::new();
    let readyz = async || {
        let reply = client
            .get(format!("http://127.0.0.1:{}/readyz", running.http_port))
            .header("x-request-id", request_id)
            .send()
            .await
            .expect("readyz");
        assert_eq!(reply.status(), 200);
    };
    readyz().await;

    // The gateway's span and the core's span of the health call, both with the request id,
    // from a service named switchbord. Export is best effort (the SDK drops a batch whose
    // export fails, which happened about once in six runs here), so the call is repeated
    // every second until one of its exports arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next_call = Instant::now() + Duration::from_secs(1);
    while !collector.saw_trace_with(&[
        b"switchbord",
        b"grpc.health.v1.Health",
        request_id.as_bytes(),
    ]) {
        assert!(
            Instant::now() < deadline,
            "no trace export with the request id reached the collector; logs:\n{}",
            running.logs()
        );
        if Instant::now() >= next_call {
            readyz().await;
            next_call = Instant::now() + Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running.terminate().success());
}

#[test]
fn an_unsupported_otlp_protocol_is_refused_at_start() {
    let data = data_dir();
    let output = Command::new(BINARY)
        .env("SWITCHBORD_DATA_DIR", data.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .arg("migrate")
        .stdin(Stdio::null())
        .output()
        .expect("run switchbord");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{stderr}");
}

/// `switchbord check-config` with a clean environment plus `env`, in its own data directory.
fn check_config(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(BINARY);
    command
        .env_remove("DATABASE_URL")
        .env_remove("SWITCHBORD_KEY_PEPPER")
        .env_remove("SWITCHBORD_BOOTSTRAP_ADMIN_KEY")
        .env_remove("SWITCHBORD_CORE_URL")
        .env_remove("SWITCHBORD_HTTP_ADDR")
        .env("SWITCHBORD_DATA_DIR", data_dir)
        .arg("check-config")
        .args(args)
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run switchbord check-config")
}

#[test]
fn check_config_accepts_the_defaults_hides_secrets_and_names_bad_settings() {
    let data = data_dir();

    let defaults = check_config(data.path(), &[], &["--json"]);
    assert!(
        defaults.status.success(),
        "{}",
        String::from_utf8_lossy(&defaults.stderr)
    );
    let report: Json = serde_json::from_slice(&defaults.stdout).expect("JSON report");
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(
        report["settings"]["SWITCHBORD_GRPC_ADDR"]["value"],
        "127.0.0.1:50051"
    );
    assert_eq!(
        report["settings"]["SWITCHBORD_GRPC_ADDR"]["source"],
        "default"
    );
    assert!(
        !data.path().join("key-pepper").exists(),
        "a check writes nothing"
    );

    let admin_key = "check-config-admin-key-0123456789abcdef";
    let with_secrets = check_config(
        data.path(),
        &[
            ("SWITCHBORD_BOOTSTRAP_ADMIN_KEY", admin_key),
            (
                "DATABASE_URL",
                "postgres://app:db-password-never-shown@db.internal:5433/switchbord",
            ),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&with_secrets.stdout);
    assert!(with_secrets.status.success(), "{text}");
    assert!(text.contains("The configuration is valid."), "{text}");
    assert!(text.contains("app@db.internal:5433/switchbord"), "{text}");
    assert!(
        !text.contains(admin_key) && !text.contains("db-password-never-shown"),
        "secrets are hidden: {text}"
    );

    let short_pepper = check_config(
        data.path(),
        &[("SWITCHBORD_KEY_PEPPER", "pepper-too-short")],
        &[],
    );
    let stderr = String::from_utf8_lossy(&short_pepper.stderr);
    assert!(!short_pepper.status.success());
    assert!(
        stderr.contains("SWITCHBORD_KEY_PEPPER") && stderr.contains("at least 32"),
        "{stderr}"
    );
    assert!(!stderr.contains("pepper-too-short"), "{stderr}");

    let bad_address = check_config(
        data.path(),
        &[("SWITCHBORD_HTTP_ADDR", "not-an-address")],
        &[],
    );
    let stderr = String::from_utf8_lossy(&bad_address.stderr);
    assert!(!bad_address.status.success());
    assert!(
        stderr.contains("--http-addr") && stderr.contains("SWITCHBORD_HTTP_ADDR"),
        "{stderr}"
    );

    let bad_url = check_config(
        data.path(),
        &[("DATABASE_URL", "postgres://h:notaport/db")],
        &[],
    );
    let stderr = String::from_utf8_lossy(&bad_url.stderr);
    assert!(!bad_url.status.success());
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");

    // Every problem is reported, not only the first.
    let several = check_config(
        data.path(),
        &[
            ("SWITCHBORD_KEY_PEPPER", "pepper-too-short"),
            ("SWITCHBORD_OUTBOX_WORKERS", "0"),
            // Shorter than the trigger deduplication window (24 h).
            ("SWITCHBORD_OUTBOX_RETENTION", "1h"),
            ("SWITCHBORD_WEBHOOK_TIMEOUT", "0s"),
            ("SWITCHBORD_REQUEST_TIMEOUT", "0s"),
        ],
        &["--json"],
    );
    assert!(!several.status.success());
    let report: Json = serde_json::from_slice(&several.stdout).expect("JSON report");
    let variables: Vec<&str> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|problem| problem["variable"].as_str())
        .collect();
    assert_eq!(
        variables,
        [
            "SWITCHBORD_KEY_PEPPER",
            "SWITCHBORD_OUTBOX_WORKERS",
            "SWITCHBORD_OUTBOX_RETENTION",
            "SWITCHBORD_WEBHOOK_TIMEOUT",
            "SWITCHBORD_REQUEST_TIMEOUT"
        ]
    );

    let unreachable = check_config(
        data.path(),
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/switchbord")],
        &["--connect", "--json"],
    );
    assert!(!unreachable.status.success());
    let report: Json = serde_json::from_slice(&unreachable.stdout).expect("JSON report");
    assert_eq!(report["database_reachable"], false, "{report}");
    assert_eq!(
        report["problems"][0]["variable"], "DATABASE_URL",
        "{report}"
    );
}

/// Runs an operator command against `running`'s core with its admin key.
fn operator(running: &Running, args: &[&str]) -> Output {
    Command::new(BINARY)
        .env_remove("SWITCHBORD_CORE_URL")
        .env(
            "SWITCHBORD_API_KEY",
            running.api_key.as_deref().expect("an admin key"),
        )
        .args(args)
        .arg("--core-url")
        .arg(running.grpc_url())
        .stdin(Stdio::null())
        .output()
        .expect("run switchbord")
}

/// [`operator`] with `--json`, which must succeed.
fn operator_json(running: &Running, args: &[&str]) -> Json {
    let output = operator(running, &[args, &["--json"]].concat());
    assert!(
        output.status.success(),
        "switchbord {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// [`operator`], which must fail; its stderr.
fn operator_refused(running: &Running, args: &[&str]) -> String {
    let output = operator(running, args);
    assert!(!output.status.success(), "switchbord {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The private cluster's port, from the `postmaster.pid` of a running server.
fn cluster_port(data_dir: &Path) -> u16 {
    let pid_file =
        std::fs::read_to_string(data_dir.join("pgdata/postmaster.pid")).expect("postmaster.pid");
    pid_file
        .lines()
        .nth(3)
        .and_then(|line| line.trim().parse().ok())
        .expect("the port line of postmaster.pid")
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_commands_manage_endpoints_and_the_outbox_of_a_running_core() {
    let data = data_dir();
    let admin_key = "operator-test-admin-key-0123456789abcdef".to_owned();
    let mut running = Running::serving_loopback_webhooks(data.path(), &admin_key).await;

    // The settings of the running server check out, and its database is reachable.
    let checked = check_config(data.path(), &[], &["--connect", "--json"]);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let report: Json = serde_json::from_slice(&checked.stdout).expect("JSON report");
    assert_eq!(report["database_reachable"], true, "{report}");
    assert!(
        report["key_pepper"]
            .as_str()
            .is_some_and(|source| source.starts_with("read from")),
        "{report}"
    );

    let receiver = start_receiver();
    let hook = format!("http://127.0.0.1:{receiver}/hook");

    let created = operator_json(
        &running,
        &[
            "endpoints",
            "create",
            "--url",
            &hook,
            "--event-type",
            "contact.created",
            "--event-type",
            "contact.updated",
            "--description",
            "CRM mirror",
        ],
    );
    let id = created["endpoint"]["id"].as_str().expect("id").to_owned();
    assert!(
        created["secret"]
            .as_str()
            .is_some_and(|secret| secret.starts_with("whsec_")),
        "{created}"
    );
    assert_eq!(
        created["endpoint"]["event_types"],
        json!(["contact.created", "contact.updated"])
    );

    let listed = operator_json(&running, &["endpoints", "list"]);
    let endpoint = listed["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|endpoint| endpoint["id"] == id.as_str())
        .unwrap_or_else(|| panic!("the new endpoint is listed: {listed}"));
    assert_eq!(endpoint["url"], hook.as_str());
    assert_eq!(endpoint["description"], "CRM mirror");
    assert_eq!(endpoint["enabled"], true);
    let table = operator(&running, &["endpoints", "list"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("ID") && table.contains(&id), "{table}");

    // Oldest first, a page at a time: the second endpoint on the page after the first.
    let second = operator_json(&running, &["endpoints", "create", "--url", &hook]);
    let second = second["endpoint"]["id"].as_str().expect("id").to_owned();
    let first_page = operator(&running, &["endpoints", "list", "--limit", "1"]);
    let first_page = String::from_utf8_lossy(&first_page.stdout);
    let token = first_page
        .split_once("More endpoints: --page-token ")
        .map(|(_, token)| token.trim().to_owned())
        .unwrap_or_else(|| panic!("a next page is offered: {first_page}"));
    assert!(first_page.contains(&id), "{first_page}");
    let next_page = operator_json(&running, &["endpoints", "list", "--page-token", &token]);
    assert_eq!(
        next_page["endpoints"][0]["id"],
        second.as_str(),
        "{next_page}"
    );
    let deleted = operator(&running, &["endpoints", "delete", &second]);
    assert!(deleted.status.success(), "{deleted:?}");

    let tested = operator(&running, &["endpoints", "test", &id]);
    let text = String::from_utf8_lossy(&tested.stdout);
    assert!(tested.status.success(), "{text}");
    assert!(text.contains("succeeded: HTTP 200"), "{text}");

    let disabled = operator_json(
        &running,
        &["endpoints", "disable", &id, "--reason", "maintenance"],
    );
    assert_eq!(disabled["endpoint"]["enabled"], false);
    assert_eq!(disabled["endpoint"]["disabled_reason"], "maintenance");
    let enabled = operator_json(&running, &["endpoints", "enable", &id]);
    assert_eq!(enabled["endpoint"]["enabled"], true);

    // A contact makes background jobs: the event's dispatch and its delivery.
    let (status, body) = running
        .upsert(&json!({"phone_number": "+4915112345678"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let jobs = operator_json(&running, &["outbox", "list"]);
    // The dispatch job: a delivery's job is retried through its delivery, not the outbox.
    let job = jobs["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|job| job["kind"] == "event.dispatch"))
        .unwrap_or_else(|| panic!("a dispatch job after an upsert: {jobs}"))
        .clone();
    let job_id = job["id"].as_str().expect("job id").to_owned();
    let shown = operator_json(&running, &["outbox", "get", &job_id]);
    assert_eq!(shown["job"]["id"], job_id.as_str());

    // Only dead jobs are retried; no public call kills a job, so the test marks one dead.
    let refused = operator_refused(&running, &["outbox", "retry", &job_id]);
    assert!(refused.contains("FAILED_PRECONDITION"), "{refused}");
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            cluster_port(data.path())
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the private cluster");
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE outbox_jobs SET status = 'dead', last_error = 'gave up' WHERE id::text = $1",
            &[&job_id],
        )
        .await
        .expect("mark the job dead");
    let dead = operator_json(&running, &["outbox", "list", "--status", "dead"]);
    assert_eq!(dead["jobs"][0]["id"], job_id.as_str(), "{dead}");
    // The stats count jobs still to run or dead (succeeded ones are history).
    let stats = operator_json(&running, &["outbox", "stats"]);
    assert!(
        stats["counts"].as_array().is_some_and(|counts| counts
            .iter()
            .any(|count| count["status"] == "dead" && count["count"] == 1)),
        "{stats}"
    );
    let stats_text = operator(&running, &["outbox", "stats"]);
    let stats_text = String::from_utf8_lossy(&stats_text.stdout);
    assert!(
        stats_text.contains("COUNT")
            && stats_text.contains("dead")
            && stats_text.contains("Oldest due job"),
        "{stats_text}"
    );
    let retried = operator_json(&running, &["outbox", "retry", &job_id]);
    assert_eq!(retried["job"]["status"], "pending", "{retried}");
    assert_eq!(retried["job"]["attempts"], 0);

    let refused = operator_refused(&running, &["outbox", "list", "--status", "bogus"]);
    assert!(
        refused.contains("INVALID_ARGUMENT") && refused.contains("status: must be"),
        "field violations are shown: {refused}"
    );

    let deleted = operator(&running, &["endpoints", "delete", &id]);
    assert!(deleted.status.success());
    let refused = operator_refused(&running, &["endpoints", "get", &id]);
    assert!(refused.contains("NOT_FOUND"), "{refused}");

    running.api_key = Some("not-a-key-of-this-server-0123456789abcdef".to_owned());
    let refused = operator_refused(&running, &["endpoints", "list"]);
    let line = refused
        .lines()
        .find(|line| line.starts_with("switchbord: "))
        .unwrap_or_else(|| panic!("no error line: {refused}"));
    assert!(line.contains("UNAUTHENTICATED"), "{line}");

    assert!(running.terminate().success());
}
