//! The release `switchbord` binary, started on its own database, and its resource use.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdefghijklmnop";
pub const EMARSYS_SECRET: &str = "bench-emarsys-secret";

pub struct Server {
    child: Child,
    pub http: String,
    pub grpc: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// `target/release/switchbord`, built first when missing (also when the bench itself is a
/// debug build: the figures are the release binary's).
fn release_binary() -> anyhow::Result<PathBuf> {
    let executable = std::env::current_exe()?;
    let target = executable
        .parent()
        .and_then(std::path::Path::parent)
        .context("the bench executable is in a profile directory")?;
    let path = target.join("release").join("switchbord");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "switchbord"])
            .status()?;
        if !status.success() {
            bail!("cargo build --release -p switchbord failed");
        }
    }
    Ok(path)
}

impl Server {
    /// Starts `binary` (unset: the release build) and waits until it serves.
    pub async fn start(
        binary: Option<&std::path::Path>,
        database_url: &str,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let binary = match binary {
            Some(path) => path.to_path_buf(),
            None => release_binary()?,
        };
        let (http_port, grpc_port) = (free_port()?, free_port()?);
        let child = Command::new(&binary)
            .env("DATABASE_URL", database_url)
            .env("SWITCHBORD_DATA_DIR", data_dir)
            .env("SWITCHBORD_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("SWITCHBORD_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("SWITCHBORD_RATE_LIMIT_PER_MINUTE", "0")
            .env("SWITCHBORD_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            .env(
                "SWITCHBORD_KEY_PEPPER",
                "bench-pepper-0123456789abcdefghijklmnopqrstuv",
            )
            .env("SWITCHBORD_WEBHOOK_ALLOW_PRIVATE", "true")
            .env("SWITCHBORD_WEBHOOK_ALLOW_HTTP", "true")
            .env("SWITCHBORD_WEBHOOK_TIMEOUT", "2s")
            .env("EMARSYS_WEBHOOK_SECRET", EMARSYS_SECRET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start the server {}", binary.display()))?;
        let server = Self {
            child,
            http: format!("http://127.0.0.1:{http_port}"),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client
            .get(format!("{}/healthz", server.http))
            .send()
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("the server did not start");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(server)
    }

    /// The server's `/metrics` page, read once for every counter taken from it.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let page = reqwest::get(format!("{}/metrics", self.http))
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Metrics(page))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resets the peak-RSS mark, so that the next reading covers one scenario.
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// Peak resident memory since the last reset, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with("VmHWM:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// User plus system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|stat| {
                let after_name = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = after_name.split_whitespace().collect();
                let user: f64 = fields.get(11)?.parse().ok()?;
                let system: f64 = fields.get(12)?.parse().ok()?;
                Some((user + system) / ticks)
            })
            .unwrap_or(0.0)
    }
}

/// One reading of a Prometheus text page.
pub struct Metrics(String);

impl Metrics {
    /// The sum of the series of counter `name` that carry every one of `labels` (`key="value"`).
    pub fn counter(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{'))
            })
            .filter(|line| labels.iter().all(|label| line.contains(label)))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}
