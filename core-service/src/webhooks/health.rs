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

#[derive(Debug, Clone, QueryableByName)]
pub struct HealthStats {
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    #[diesel(sql_type = BigInt)]
    pub recent: i64,
    #[diesel(sql_type = BigInt)]
    pub recent_successes: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_success_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_failure_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Bool>)]
    pub last_succeeded: Option<bool>,
    #[diesel(sql_type = BigInt)]
    pub pending_retries: i64,
    #[diesel(sql_type = BigInt)]
    pub recent_failed_deliveries: i64,
}

impl HealthStats {
    pub fn health(&self, endpoint: &EndpointRow) -> EndpointHealth {
        match (self.total, endpoint.enabled) {
            (0, false) => EndpointHealth::Setup,
            (0, true) if self.pending_retries == 0 => EndpointHealth::Ready,
            _ if !endpoint.enabled
                || self.pending_retries > 0
                || self.recent_failed_deliveries > 0
                || self.last_succeeded == Some(false) =>
            {
                EndpointHealth::Attention
            }
            _ => EndpointHealth::Live,
        }
    }

    pub fn success_rate(&self) -> f64 {
        if self.recent == 0 {
            return 0.0;
        }
        self.recent_successes as f64 / self.recent as f64
    }
}

/// The endpoint's figures. A delivery failed in the last 24 hours is found through its failed
/// attempts of that day (its last attempt is its failure), on the attempts' index by endpoint
/// that the day's counts read anyway: an index on the deliveries' status would stop their
/// success updates from being HOT.
pub async fn stats(
    connection: &mut AsyncPgConnection,
    endpoint: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<HealthStats> {
    prepared(diesel::sql_query(
        "SELECT
             (SELECT count(*) FROM webhook_attempts WHERE endpoint_id = $1) AS total,
             (SELECT count(*) FROM webhook_attempts WHERE endpoint_id = $1 AND attempted_at > $2 - interval '24 hours') AS recent,
             (SELECT count(*) FROM webhook_attempts WHERE endpoint_id = $1 AND succeeded AND attempted_at > $2 - interval '24 hours') AS recent_successes,
             (SELECT max(attempted_at) FROM webhook_attempts WHERE endpoint_id = $1 AND succeeded) AS last_success_at,
             (SELECT max(attempted_at) FROM webhook_attempts WHERE endpoint_id = $1 AND NOT succeeded) AS last_failure_at,
             (SELECT succeeded FROM webhook_attempts WHERE endpoint_id = $1 ORDER BY attempted_at DESC, id DESC LIMIT 1) AS last_succeeded,
             (SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'pending' AND attempts > 0) AS pending_retries,
             (SELECT count(DISTINCT a.delivery_id) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
               WHERE a.endpoint_id = $1 AND a.attempted_at > $2 - interval '24 hours' AND NOT a.succeeded AND d.status = 'failed') AS recent_failed_deliveries",
    )
    .bind::<diesel::sql_types::Uuid, _>(endpoint)
    .bind::<Timestamptz, _>(now))
    .get_result(connection)
    .await
}

/// Endpoints per health state (every state present, zero when none), for the metrics gauges.
/// Computed with `HealthStats::health`, the same rule the API reports.
pub async fn health_counts(
    connection: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> QueryResult<Vec<(&'static str, i64)>> {
    use crate::schema::webhook_endpoints;
    let endpoints: Vec<EndpointRow> = webhook_endpoints::table
        .select(EndpointRow::as_select())
        .load(connection)
        .await?;
    let mut counts = vec![("setup", 0), ("ready", 0), ("live", 0), ("attention", 0)];
    for endpoint in &endpoints {
        let state = match stats(connection, endpoint.id, now).await?.health(endpoint) {
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
