//! Prometheus metrics for the whole process: one recorder, installed on first use, that the
//! core and the gateway record into and the gateway's `/metrics` renders.
//!
//! Every metric's name lives here, next to its description, so that `/metrics` documents
//! itself (`# HELP`) and docs/operations.md has one list to follow.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// HTTP requests served by the gateway; labels `method`, `route` (the route template), `status`.
pub const HTTP_REQUESTS: &str = "switchbord_http_requests_total";
/// Seconds from request to response head in the gateway; labels as [`HTTP_REQUESTS`].
pub const HTTP_DURATION: &str = "switchbord_http_request_duration_seconds";
/// Requests the per-client rate limit turned away; label `family` (compat, legacy).
pub const RATE_LIMITED: &str = "switchbord_http_rate_limited_total";
/// gRPC calls served by the core; labels `service`, `method`, `code` (gRPC status name).
pub const GRPC_REQUESTS: &str = "switchbord_grpc_requests_total";
/// Seconds from call to response head in the core; labels as [`GRPC_REQUESTS`].
pub const GRPC_DURATION: &str = "switchbord_grpc_request_duration_seconds";
/// Outbox jobs by `status` and `kind`, sampled from the database.
pub const OUTBOX_JOBS: &str = "switchbord_outbox_jobs";
/// Age in seconds of the oldest due pending job (0 when none is due), sampled.
pub const OUTBOX_OLDEST_PENDING: &str = "switchbord_outbox_oldest_pending_seconds";
/// Job runs finished by this instance; labels `kind`, `outcome` (succeeded, retry, deferred, dead).
pub const JOB_RUNS: &str = "switchbord_outbox_job_runs_total";
/// Seconds one job run took; labels as [`JOB_RUNS`].
pub const JOB_DURATION: &str = "switchbord_outbox_job_duration_seconds";
/// Webhook delivery attempts; label `outcome` (delivered, retrying, failed, skipped).
pub const WEBHOOK_DELIVERIES: &str = "switchbord_webhook_deliveries_total";
/// Seconds one delivery attempt took, until the receiver's answer or the error; label
/// `result` (success, failure).
pub const WEBHOOK_ATTEMPT_DURATION: &str = "switchbord_webhook_attempt_duration_seconds";
/// Webhook endpoints per `health` state (setup, ready, live, attention), sampled.
pub const WEBHOOK_ENDPOINTS: &str = "switchbord_webhook_endpoints";
/// Age of the oldest webhook delivery parked behind a slow endpoint (with no outbox job until
/// the endpoint's resume job runs), 0 when none is; sampled.
pub const WEBHOOK_PARKED_OLDEST: &str = "switchbord_webhook_parked_oldest_seconds";
/// Contacts per Twenty sync `status` (pending, synced, failed, unlinked), sampled.
pub const TWENTY_SYNCS: &str = "switchbord_twenty_contact_syncs";
/// 1 when the last database sample succeeded, 0 when it failed.
pub const SAMPLE_UP: &str = "switchbord_metrics_sample_up";

const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Latency buckets in seconds: 1 ms to 30 s, dense where an API call should land.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process's Prometheus handle. The first call installs the global recorder; when another
/// recorder was installed first (an embedding program's), metrics go there and this handle
/// renders only an empty page.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => {
                describe_all();
                spawn_upkeep(handle.clone());
            }
            Err(_) => tracing::warn!(
                "another metrics recorder is installed; /metrics will not show switchbord's metrics"
            ),
        }
        handle
    })
}

/// Histogram samples wait in buffers until drained; without scrapes they would grow without
/// bound. A plain thread, so that it outlives any one async runtime (tests start many).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread");
    }
}

fn describe_all() {
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests served by the gateway."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time from HTTP request to response head."
    );
    describe_counter!(
        RATE_LIMITED,
        Unit::Count,
        "Requests turned away by the per-client rate limit."
    );
    describe_counter!(GRPC_REQUESTS, Unit::Count, "gRPC calls served by the core.");
    describe_histogram!(
        GRPC_DURATION,
        Unit::Seconds,
        "Time from gRPC call to response head."
    );
    describe_gauge!(OUTBOX_JOBS, Unit::Count, "Outbox jobs by status and kind.");
    describe_gauge!(
        OUTBOX_OLDEST_PENDING,
        Unit::Seconds,
        "Age of the oldest due pending outbox job."
    );
    describe_counter!(JOB_RUNS, Unit::Count, "Outbox job runs by outcome.");
    describe_histogram!(JOB_DURATION, Unit::Seconds, "Time one outbox job run took.");
    describe_counter!(
        WEBHOOK_DELIVERIES,
        Unit::Count,
        "Webhook delivery attempts by outcome."
    );
    describe_histogram!(
        WEBHOOK_ATTEMPT_DURATION,
        Unit::Seconds,
        "Time one webhook delivery attempt took."
    );
    describe_gauge!(
        WEBHOOK_ENDPOINTS,
        Unit::Count,
        "Webhook endpoints per health state."
    );
    describe_gauge!(
        WEBHOOK_PARKED_OLDEST,
        Unit::Seconds,
        "Age of the oldest webhook delivery parked behind a slow endpoint."
    );
    describe_gauge!(
        TWENTY_SYNCS,
        Unit::Count,
        "Contacts per Twenty sync status."
    );
    describe_gauge!(
        SAMPLE_UP,
        "1 when the last database sample for the gauges succeeded."
    );
}
