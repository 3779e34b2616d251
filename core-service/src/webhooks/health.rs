//! Endpoint health, computed from the delivery history.
//!
//! Setup: no delivery history and disabled. Ready: no history, enabled (an empty subscription
//! means every type). Live: the last attempt succeeded, no retry is pending and no delivery
//! failed in the last 24 hours. Attention: the last attempt failed, a retry is pending, a
//! delivery failed in the last 24 hours (its event waits to be recovered, however well the
//! endpoint does since), or the endpoint was disabled after deliveries.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use switchbord_api::v1::EndpointHealth;
use uuid::Uuid;

use super::model::EndpointRow;
use crate::db::prepared;

/// What an endpoint's health state is decided by; each read without counting its history
/// (see [`signals_of_every_endpoint`]).
#[derive(Debug, Clone, QueryableByName)]
pub struct HealthSignals {
    /// Any attempt ever.
    #[diesel(sql_type = Bool)]
    pub attempted: bool,
    #[diesel(sql_type = Nullable<Bool>)]
    pub last_succeeded: Option<bool>,
    /// A delivery that failed waits in the queue to be tried again.
    #[diesel(sql_type = Bool)]
    pub retry_waiting: bool,
    /// A delivery failed for good in the last 24 hours.
    #[diesel(sql_type = Bool)]
    pub failed_recently: bool,
}

/// The signals and the figures the API shows beside them.
#[derive(Debug, Clone, QueryableByName)]
pub struct HealthStats {
    #[diesel(embed)]
    pub signals: HealthSignals,
    #[diesel(sql_type = BigInt)]
    pub recent: i64,
    #[diesel(sql_type = BigInt)]
    pub recent_successes: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_success_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_failure_at: Option<DateTime<Utc>>,
}

impl HealthSignals {
    pub fn health(&self, enabled: bool) -> EndpointHealth {
        match (self.attempted, enabled) {
            (false, false) => EndpointHealth::Setup,
            (false, true) if !self.retry_waiting => EndpointHealth::Ready,
            _ if !enabled
                || self.retry_waiting
                || self.failed_recently
                || self.last_succeeded == Some(false) =>
            {
                EndpointHealth::Attention
            }
            _ => EndpointHealth::Live,
        }
    }
}

impl HealthStats {
    pub fn health(&self, endpoint: &EndpointRow) -> EndpointHealth {
        self.signals.health(endpoint.enabled)
    }

    pub fn success_rate(&self) -> f64 {
        if self.recent == 0 {
            return 0.0;
        }
        self.recent_successes as f64 / self.recent as f64
    }
}

/// The columns of [`HealthSignals`] for the endpoint `e` at `$1`, as subqueries. Each reads a
/// bounded number of rows, not the endpoint's history (which is kept, and grows with its
/// traffic, while the gauges sample it every 15 s): one attempt for `attempted` and
/// `last_succeeded`; the endpoint's queued retries, the jobs a failed attempt left its error
/// on (on their own index by endpoint, not through its whole waiting backlog), for
/// `retry_waiting`; the day's failures (on the failed attempts' index) for
/// `failed_recently`.
///
/// The job gets its error just after the attempt's own transaction, so for that moment the
/// attempt log shows a failure whose retry the health does not yet. An index of the waiting
/// deliveries themselves would close it, but its condition (status, attempts) names columns
/// every success changes, which would stop those updates being HOT on the hottest path of
/// delivery (as 000005 of 2026-12-06 found for another such index).
macro_rules! signals_sql {
    () => {
        "EXISTS (SELECT 1 FROM webhook_attempts WHERE endpoint_id = e.id) AS attempted,
         (SELECT succeeded FROM webhook_attempts WHERE endpoint_id = e.id
           ORDER BY attempted_at DESC, id DESC LIMIT 1) AS last_succeeded,
         EXISTS (SELECT 1 FROM outbox_jobs j JOIN webhook_deliveries d
                   ON d.id = (j.payload ->> 'delivery_id')::uuid
                  WHERE j.status = 'pending' AND j.kind = 'webhook.deliver'
                    AND j.last_error IS NOT NULL
                    AND j.payload ->> 'endpoint_id' = e.id::text
                    AND d.status = 'pending' AND d.attempts > 0) AS retry_waiting,
         EXISTS (SELECT 1 FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
                  WHERE a.endpoint_id = e.id AND NOT a.succeeded
                    AND a.attempted_at > $1 - interval '24 hours' AND d.status = 'failed')
           AS failed_recently"
    };
}

/// The endpoint's figures. The day's counts behind its success rate read the day's attempts;
/// the API shows them for one endpoint, or a page, when asked, where the gauges need only the
/// signals.
pub async fn stats(
    connection: &mut AsyncPgConnection,
    endpoint: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<HealthStats> {
    prepared(
        diesel::sql_query(concat!(
            "SELECT ",
            signals_sql!(),
            ",
             (SELECT count(*) FROM webhook_attempts
               WHERE endpoint_id = e.id AND attempted_at > $1 - interval '24 hours') AS recent,
             (SELECT count(*) FROM webhook_attempts
               WHERE endpoint_id = e.id AND succeeded
                 AND attempted_at > $1 - interval '24 hours') AS recent_successes,
             (SELECT max(attempted_at) FROM webhook_attempts
               WHERE endpoint_id = e.id AND succeeded) AS last_success_at,
             (SELECT max(attempted_at) FROM webhook_attempts
               WHERE endpoint_id = e.id AND NOT succeeded) AS last_failure_at
             FROM (SELECT $2::uuid AS id) AS e"
        ))
        .bind::<Timestamptz, _>(now)
        .bind::<diesel::sql_types::Uuid, _>(endpoint),
    )
    .get_result(connection)
    .await
}

/// Every endpoint's `enabled` and signals, in one statement.
async fn signals_of_every_endpoint(
    connection: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> QueryResult<Vec<EndpointSignals>> {
    prepared(
        diesel::sql_query(concat!(
            "SELECT e.enabled, ",
            signals_sql!(),
            " FROM webhook_endpoints AS e"
        ))
        .bind::<Timestamptz, _>(now),
    )
    .load(connection)
    .await
}

#[derive(QueryableByName)]
struct EndpointSignals {
    #[diesel(sql_type = Bool)]
    enabled: bool,
    #[diesel(embed)]
    signals: HealthSignals,
}

/// Endpoints per health state (every state present, zero when none), for the metrics gauges.
/// Decided by [`HealthSignals::health`], the same rule the API reports.
pub async fn health_counts(
    connection: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> QueryResult<Vec<(&'static str, i64)>> {
    let mut counts = vec![("setup", 0), ("ready", 0), ("live", 0), ("attention", 0)];
    for endpoint in signals_of_every_endpoint(connection, now).await? {
        let state = match endpoint.signals.health(endpoint.enabled) {
            EndpointHealth::Setup => "setup",
            EndpointHealth::Ready => "ready",
            EndpointHealth::Live => "live",
            EndpointHealth::Attention | EndpointHealth::Unspecified => "attention",
        };
        if let Some((_, count)) = counts.iter_mut().find(|(name, _)| *name == state) {
            *count += 1;
        }
    }
    Ok(counts)
}
