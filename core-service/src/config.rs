//! Configuration of the core, from flags and environment variables.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use phonenumber::country;

use crate::access::validate_custom_key;

/// Shortest accepted `SWITCHBORD_KEY_PEPPER`.
pub const MIN_PEPPER_LEN: usize = 32;

/// The longest `SWITCHBORD_OUTBOX_START_WAIT` accepted.
const MOST_START_WAIT: Duration = Duration::from_secs(10);
/// The longest window, retention or tolerance: a hundred years (as humantime counts them).
const LONGEST_SPAN: Duration = Duration::from_secs(36_525 * 24 * 3600);

/// Settings of the gRPC core. Each field is a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct CoreConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "SWITCHBORD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Region (ISO 3166-1 alpha-2, for example DE) in which national phone numbers that start
    /// with 0 are read. Unset: such numbers are refused, since their country is unknown.
    #[arg(long, env = "SWITCHBORD_DEFAULT_REGION", value_parser = parse_region)]
    pub default_region: Option<country::Id>,

    /// Largest number of pooled PostgreSQL connections.
    #[arg(long, env = "SWITCHBORD_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// How long an API call waits for a free pooled connection when all are busy before it is
    /// refused as unavailable (503, `UNAVAILABLE`), for example 5s; 0 refuses at once.
    #[arg(long, env = "SWITCHBORD_DB_POOL_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_pool_wait: Duration,

    /// Server secret mixed into API key hashes (at least 32 characters). Every instance that
    /// shares a database needs the same value. Unset: read from (or created in)
    /// `$SWITCHBORD_DATA_DIR/key-pepper`.
    #[arg(long, env = "SWITCHBORD_KEY_PEPPER", hide_env_values = true)]
    pub key_pepper: Option<Secret>,

    /// The first admin key, installed when the database has no keys (at least 32 printable
    /// ASCII characters, no spaces). Unset: one is generated, printed once and written to
    /// `$SWITCHBORD_DATA_DIR/admin-key`.
    #[arg(long, env = "SWITCHBORD_BOOTSTRAP_ADMIN_KEY", hide_env_values = true)]
    pub bootstrap_admin_key: Option<Secret>,

    /// Shared secret of the Emarsys webhook: callers send it as the `secret` query parameter
    /// (or sign an HS256 JWT with it). Unset: the Emarsys path accepts every call.
    #[arg(long, env = "EMARSYS_WEBHOOK_SECRET", hide_env_values = true)]
    pub emarsys_webhook_secret: Option<Secret>,

    /// Comma-separated CIDR ranges (`10.0.0.5/32` for one address) of HTTP gateways whose
    /// client-address metadata (`x-switchbord-client-ip`) is recorded in the audit trail; from
    /// any other peer it is ignored and the peer's own address recorded. The default trusts
    /// this host, where the built-in gateway runs; list a gateway that runs elsewhere
    /// (`--core-url`).
    #[arg(
        long,
        env = "SWITCHBORD_TRUSTED_GATEWAYS",
        value_delimiter = ',',
        default_value = THIS_HOST
    )]
    pub trusted_gateways: Vec<IpNet>,

    /// How long a journey trigger's deduplication key holds (for example 24h, 90m).
    #[arg(long, env = "SWITCHBORD_TRIGGER_DEDUP_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub trigger_dedup_window: Duration,

    /// Outbox jobs this instance runs at once.
    #[arg(long, env = "SWITCHBORD_OUTBOX_WORKERS", default_value_t = 32)]
    pub outbox_workers: usize,

    /// Longest wait between looks for due outbox jobs (new jobs wake the workers at once
    /// through LISTEN/NOTIFY; this is the fallback).
    #[arg(long, env = "SWITCHBORD_OUTBOX_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub outbox_poll_interval: Duration,

    /// How long a request waits for a free outbox slot to start its job in while the workers
    /// are all busy, before it queues the job instead; 0 never waits. Callers that send their
    /// next request on each answer are then paced to the workers instead of building a queue.
    #[arg(long, env = "SWITCHBORD_OUTBOX_START_WAIT", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub outbox_start_wait: Duration,

    /// How long succeeded outbox jobs are kept before they are deleted (pending, running and
    /// dead jobs are never deleted). At least the trigger deduplication window, so that a
    /// repeated trigger's job can still be looked up.
    #[arg(long, env = "SWITCHBORD_OUTBOX_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub outbox_retention: Duration,

    /// On shutdown, how long running outbox jobs may take before they are released.
    #[arg(long, env = "SWITCHBORD_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How often the gauges on `/metrics` (outbox depth, endpoint health, Twenty sync status)
    /// are sampled from the database.
    #[arg(long, env = "SWITCHBORD_METRICS_SAMPLE_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub metrics_sample_interval: Duration,

    /// Allow webhook endpoints on loopback, private, link-local and other non-public addresses
    /// (development and tests only).
    #[arg(long, env = "SWITCHBORD_WEBHOOK_ALLOW_PRIVATE", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub webhook_allow_private: bool,

    /// Allow plain-http webhook endpoints (development and tests only).
    #[arg(long, env = "SWITCHBORD_WEBHOOK_ALLOW_HTTP", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub webhook_allow_http: bool,

    /// How long a webhook receiver has to answer; at most 45 s (inside a job's 60 s lease).
    #[arg(long, env = "SWITCHBORD_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// How far a Twenty webhook's signed timestamp may be from now; a call whose signed
    /// timestamp and body were already received within twice that is refused as a replay.
    #[arg(long, env = "SWITCHBORD_TWENTY_WEBHOOK_TOLERANCE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub twenty_webhook_tolerance: Duration,

    /// A webhook receiver that keeps an attempt waiting this long is slow: it gets 2 requests in
    /// flight instead of 16, and its waiting deliveries are set aside together, until it answers
    /// quickly again.
    #[arg(long, env = "SWITCHBORD_WEBHOOK_SLOW_AFTER", default_value = "1s", value_parser = humantime::parse_duration)]
    pub webhook_slow_after: Duration,

    /// Delivered webhooks whose success may wait in memory to be written. When the database falls
    /// this far behind, new events wait in the outbox queue instead, so memory stays bounded.
    #[arg(
        long,
        env = "SWITCHBORD_WEBHOOK_SUCCESS_BACKLOG",
        default_value_t = 1024
    )]
    pub webhook_success_backlog: usize,

    /// Delay before each delivery attempt, comma-separated; its length is the number of attempts.
    #[arg(long, env = "SWITCHBORD_WEBHOOK_RETRY_SCHEDULE", default_value = "0s,5s,5m,30m,2h,5h,10h,10h", value_parser = parse_schedule)]
    pub webhook_retry_schedule: Schedule,

    /// An endpoint whose deliveries all fail for this long is disabled automatically.
    #[arg(long, env = "SWITCHBORD_WEBHOOK_DISABLE_AFTER", default_value = "5days", value_parser = humantime::parse_duration)]
    pub webhook_disable_after: Duration,

    /// `off` accepts calls without a key on the Charles legacy and compat ingestion paths
    /// (contact upsert, journey triggers) during a migration. Keys are still checked when sent.
    #[arg(long, env = "SWITCHBORD_AUTH_LEGACY_PATHS", default_value = "on")]
    pub auth_legacy_paths: OnOff,
}

impl CoreConfig {
    /// A configuration for running on `grpc_addr` with every other setting at its default.
    pub fn with_addr(grpc_addr: SocketAddr) -> Self {
        Self {
            grpc_addr,
            default_region: None,
            db_pool_size: 16,
            db_pool_wait: Duration::from_secs(5),
            key_pepper: None,
            bootstrap_admin_key: None,
            auth_legacy_paths: OnOff::On,
            emarsys_webhook_secret: None,
            trusted_gateways: this_host(),
            webhook_allow_private: false,
            webhook_allow_http: false,
            webhook_timeout: Duration::from_secs(15),
            webhook_slow_after: Duration::from_secs(1),
            webhook_success_backlog: 1024,
            twenty_webhook_tolerance: Duration::from_secs(300),
            webhook_retry_schedule: parse_schedule("0s,5s,5m,30m,2h,5h,10h,10h")
                .unwrap_or_default(),
            webhook_disable_after: Duration::from_secs(5 * 24 * 3600),
            trigger_dedup_window: Duration::from_secs(24 * 3600),
            outbox_workers: 32,
            outbox_poll_interval: Duration::from_secs(1),
            outbox_start_wait: Duration::from_millis(100),
            outbox_retention: Duration::from_secs(7 * 24 * 3600),
            shutdown_grace: Duration::from_secs(10),
            metrics_sample_interval: Duration::from_secs(15),
        }
    }
}

/// A setting the core refuses at start, named by its environment variable and flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable} (--{flag}) {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub flag: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, flag: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            flag,
            problem: problem.into(),
        }
    }
}

impl CoreConfig {
    /// The rules that parsing cannot check. `CoreServer::build` refuses to start on the first
    /// problem; `switchbord check-config` reports them all.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems: Vec<ConfigError> = self.pepper().err().into_iter().collect();
        if let Some(key) = &self.bootstrap_admin_key
            && let Err(problem) = validate_custom_key(key.expose())
        {
            problems.push(ConfigError::new(
                "SWITCHBORD_BOOTSTRAP_ADMIN_KEY",
                "bootstrap-admin-key",
                problem,
            ));
        }
        if self.outbox_workers == 0 {
            problems.push(ConfigError::new(
                "SWITCHBORD_OUTBOX_WORKERS",
                "outbox-workers",
                "must be at least 1 (with 0 no job would ever run)",
            ));
        }
        if self.webhook_success_backlog == 0 {
            problems.push(ConfigError::new(
                "SWITCHBORD_WEBHOOK_SUCCESS_BACKLOG",
                "webhook-success-backlog",
                "must be at least 1 (with 0 no webhook would ever be delivered)",
            ));
        }
        if self.outbox_start_wait > MOST_START_WAIT {
            problems.push(ConfigError::new(
                "SWITCHBORD_OUTBOX_START_WAIT",
                "outbox-start-wait",
                format!(
                    "must be at most {}: every request that may start a job waits this long \
                     while the workers are stuck, and callers' own timeouts come soon after",
                    humantime::format_duration(MOST_START_WAIT)
                ),
            ));
        }
        if self.outbox_retention < self.trigger_dedup_window {
            problems.push(ConfigError::new(
                "SWITCHBORD_OUTBOX_RETENTION",
                "outbox-retention",
                format!(
                    "must be at least SWITCHBORD_TRIGGER_DEDUP_WINDOW ({}), so that a repeated \
                     trigger's job can still be looked up",
                    humantime::format_duration(self.trigger_dedup_window)
                ),
            ));
        }
        let lease = crate::outbox::WorkerConfig::default().lease;
        let most_timeout = lease.mul_f64(0.75);
        if self.webhook_timeout > most_timeout {
            problems.push(ConfigError::new(
                "SWITCHBORD_WEBHOOK_TIMEOUT",
                "webhook-timeout",
                format!(
                    "must be at most {}: an attempt must end well inside its job's {} lease, \
                     or another worker takes the job over and sends it again meanwhile",
                    humantime::format_duration(most_timeout),
                    humantime::format_duration(lease)
                ),
            ));
        }
        for (variable, flag, duration) in [
            (
                "SWITCHBORD_OUTBOX_POLL_INTERVAL",
                "outbox-poll-interval",
                self.outbox_poll_interval,
            ),
            (
                "SWITCHBORD_WEBHOOK_TIMEOUT",
                "webhook-timeout",
                self.webhook_timeout,
            ),
            (
                "SWITCHBORD_WEBHOOK_SLOW_AFTER",
                "webhook-slow-after",
                self.webhook_slow_after,
            ),
            (
                "SWITCHBORD_TWENTY_WEBHOOK_TOLERANCE",
                "twenty-webhook-tolerance",
                self.twenty_webhook_tolerance,
            ),
        ] {
            if duration.is_zero() {
                problems.push(ConfigError::new(variable, flag, "must be longer than 0s"));
            }
        }
        // Spans taken back from the current time: past chrono's range, that subtraction panics.
        for (variable, flag, duration) in [
            (
                "SWITCHBORD_TRIGGER_DEDUP_WINDOW",
                "trigger-dedup-window",
                self.trigger_dedup_window,
            ),
            (
                "SWITCHBORD_OUTBOX_RETENTION",
                "outbox-retention",
                self.outbox_retention,
            ),
            (
                "SWITCHBORD_TWENTY_WEBHOOK_TOLERANCE",
                "twenty-webhook-tolerance",
                self.twenty_webhook_tolerance,
            ),
        ] {
            if duration > LONGEST_SPAN {
                problems.push(ConfigError::new(
                    variable,
                    flag,
                    format!(
                        "must be at most {}",
                        humantime::format_duration(LONGEST_SPAN)
                    ),
                ));
            }
        }
        problems
    }

    /// The first of [`CoreConfig::problems`], if any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// The key pepper, when it is set and long enough.
    pub fn pepper(&self) -> Result<&Secret, ConfigError> {
        self.key_pepper
            .as_ref()
            .filter(|pepper| pepper.expose().len() >= MIN_PEPPER_LEN)
            .ok_or_else(|| {
                ConfigError::new(
                    "SWITCHBORD_KEY_PEPPER",
                    "key-pepper",
                    format!(
                        "must be set to at least {MIN_PEPPER_LEN} characters (the switchbord binary creates one in the data directory)"
                    ),
                )
            })
    }
}

/// A switch written `on`/`off` (also `true`/`false`, `1`/`0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

impl FromStr for OnOff {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => Ok(Self::On),
            "off" | "false" | "0" | "no" => Ok(Self::Off),
            other => Err(format!("`{other}` is neither on nor off")),
        }
    }
}

/// A configuration value that must never be printed (keys, peppers, URLs with passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

/// Delays before successive delivery attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

/// Parses `0s,5s,5m` into a schedule of at least one attempt.
pub fn parse_schedule(raw: &str) -> Result<Schedule, String> {
    let delays = raw
        .split(',')
        .map(|part| {
            humantime::parse_duration(part.trim()).map_err(|error| format!("`{part}`: {error}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if delays.is_empty() {
        return Err("needs at least one attempt".to_owned());
    }
    // The fan-out makes each delivery's first attempt as soon as its event is dispatched; a
    // first delay would be ignored, so it is refused rather than believed.
    if !delays[0].is_zero() {
        return Err("must start with 0s: the first attempt is made at once".to_owned());
    }
    Ok(Schedule(delays))
}

/// Parses a region code such as `DE`, case-insensitively.
pub fn parse_region(raw: &str) -> Result<country::Id, String> {
    raw.trim()
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("`{raw}` is not an ISO 3166-1 alpha-2 region code such as DE"))
}

/// The loopback ranges: the default trusted gateway is the one in this process.
const THIS_HOST: &str = "127.0.0.0/8,::1/128";

fn this_host() -> Vec<IpNet> {
    THIS_HOST
        .split(',')
        .filter_map(|net| net.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook_timeout_problems(timeout: Duration) -> usize {
        let config = CoreConfig {
            webhook_timeout: timeout,
            ..CoreConfig::with_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
        };
        config
            .problems()
            .iter()
            .filter(|problem| problem.variable == "SWITCHBORD_WEBHOOK_TIMEOUT")
            .count()
    }

    #[test]
    fn a_retry_schedule_starts_with_the_first_attempt_at_once() {
        assert!(parse_schedule("0s,5s,5m").is_ok());
        assert!(parse_schedule("0s").is_ok());
        let refused = parse_schedule("10s,5m").unwrap_err();
        assert!(refused.contains("must start with 0s"), "{refused}");
    }

    #[test]
    fn a_start_wait_longer_than_ten_seconds_is_refused() {
        let refused = |wait| {
            CoreConfig {
                outbox_start_wait: wait,
                ..CoreConfig::with_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
            }
            .problems()
            .iter()
            .any(|problem| problem.variable == "SWITCHBORD_OUTBOX_START_WAIT")
        };
        assert!(!refused(Duration::ZERO), "0s turns the wait off");
        assert!(!refused(Duration::from_secs(10)));
        assert!(refused(Duration::from_millis(10_001)));
    }

    #[test]
    fn a_success_backlog_of_zero_is_refused() {
        let with_backlog = |backlog| CoreConfig {
            webhook_success_backlog: backlog,
            ..CoreConfig::with_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
        };
        let refused = |backlog| {
            with_backlog(backlog)
                .problems()
                .iter()
                .any(|problem| problem.variable == "SWITCHBORD_WEBHOOK_SUCCESS_BACKLOG")
        };
        assert!(!refused(1));
        assert!(refused(0));
    }

    #[test]
    fn a_webhook_timeout_ends_inside_a_jobs_lease() {
        assert_eq!(webhook_timeout_problems(Duration::from_secs(45)), 0);
        assert_eq!(webhook_timeout_problems(Duration::from_secs(46)), 1);
        assert_eq!(webhook_timeout_problems(Duration::ZERO), 1);
    }

    #[test]
    fn spans_taken_back_from_now_are_bounded() {
        let mut config = CoreConfig::with_addr("127.0.0.1:0".parse().expect("addr"));
        config.key_pepper = Some(Secret::new("p".repeat(MIN_PEPPER_LEN)));
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        config.trigger_dedup_window = humantime::parse_duration("300000years").expect("duration");
        config.outbox_retention = config.trigger_dedup_window;
        let named: Vec<&str> = config
            .problems()
            .iter()
            .map(|problem| problem.variable)
            .collect();
        assert_eq!(
            named,
            [
                "SWITCHBORD_TRIGGER_DEDUP_WINDOW",
                "SWITCHBORD_OUTBOX_RETENTION"
            ]
        );
    }
}
