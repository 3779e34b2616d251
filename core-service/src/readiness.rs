//! gRPC health checking with a real answer: the overall status (service `""`) is checked
//! against the database, so load balancers and the gateway's `/readyz` see a core that cannot
//! reach PostgreSQL, or runs on an unmigrated schema, as not serving. `Check` checks at once;
//! `Watch`, which gRPC clients' own health checking uses, streams the status that
//! [`ReadinessHealth::report_overall`] keeps current by checking every [`WATCH_INTERVAL`].
//! Per-service statuses stay those the server reports at start.
//!
//! Anyone may ask (health is open, `/readyz` takes no key), so one check runs at a time, and a
//! call answers with the first check that started after it arrived: calls arriving during a
//! check share the next one. A flood of checks holds one pooled connection, not the pool that
//! keyed callers need, and no answer predates its call.

use std::time::{Duration, Instant};

use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::RunQueryDsl;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::db::{self, DbPool};

/// Longest a readiness check waits for the database.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the overall status that `Watch` streams is checked again.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

pub struct ReadinessHealth {
    services: HealthService,
    pool: DbPool,
    migrations: Vec<String>,
    /// The last check's answer and when it started; held while a check runs, so that the calls
    /// arriving meanwhile wait for it instead of checking too.
    last: tokio::sync::Mutex<Option<(Instant, Option<String>)>>,
}

impl ReadinessHealth {
    pub fn new(services: HealthService, pool: DbPool) -> Self {
        Self {
            services,
            pool,
            migrations: db::embedded_versions(),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Keeps the overall status in `reporter` (the one `Watch` streams) current: checked now
    /// and every `interval`, until the task is aborted. A check shares a call's, as calls share
    /// one another's.
    pub async fn report_overall(&self, reporter: HealthReporter, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = None;
        loop {
            ticks.tick().await;
            let status = match self.not_ready_reason_in_time().await {
                None => tonic_health::ServingStatus::Serving,
                Some(_) => tonic_health::ServingStatus::NotServing,
            };
            // Watchers are sent changes only (every set is sent, the same status too).
            if reported != Some(status) {
                reporter.set_service_status("", status).await;
                reported = Some(status);
            }
        }
    }

    /// Why the core cannot serve, or `None` when it can, within [`CHECK_TIMEOUT`] of the call's
    /// arrival, waiting for another call's check included (the gateway waits 3 s in all).
    async fn not_ready_reason_in_time(&self) -> Option<String> {
        tokio::time::timeout(CHECK_TIMEOUT, self.fresh_not_ready_reason())
            .await
            .unwrap_or_else(|_| Some(did_not_answer()))
    }

    /// Why the core cannot serve, or `None` when it can, as found by a check that started
    /// after this call arrived: the last one, if another call started it meanwhile.
    async fn fresh_not_ready_reason(&self) -> Option<String> {
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((started, reason)) = last.as_ref()
            && *started >= arrived
        {
            return reason.clone();
        }
        let started = Instant::now();
        let reason = self.not_ready_reason().await;
        if let Some(reason) = &reason {
            tracing::warn!(reason, "readiness check failed");
        }
        *last = Some((started, reason.clone()));
        reason
    }

    /// Why the core cannot serve, or `None` when it can.
    async fn not_ready_reason(&self) -> Option<String> {
        let checked = tokio::time::timeout(CHECK_TIMEOUT, async {
            let mut connection = db::connection(&self.pool)
                .await
                .map_err(|error| format!("database unreachable: {error}"))?;
            let applied: AppliedCount = diesel::sql_query(
                "SELECT count(*) AS applied FROM __diesel_schema_migrations WHERE version = ANY($1)",
            )
            .bind::<Array<Text>, _>(&self.migrations)
            .get_result(&mut connection)
            .await
            .map_err(|error| format!("cannot read the applied migrations: {error}"))?;
            let expected = i64::try_from(self.migrations.len()).unwrap_or(i64::MAX);
            if applied.applied < expected {
                return Err(format!(
                    "{} of {expected} migrations applied",
                    applied.applied
                ));
            }
            Ok(())
        })
        .await;
        match checked {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(reason),
            Err(_) => Some(did_not_answer()),
        }
    }
}

fn did_not_answer() -> String {
    format!(
        "the database did not answer within {} s",
        CHECK_TIMEOUT.as_secs()
    )
}

#[derive(diesel::QueryableByName)]
struct AppliedCount {
    #[diesel(sql_type = BigInt)]
    applied: i64,
}

#[tonic::async_trait]
impl Health for ReadinessHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !request.get_ref().service.is_empty() {
            return self.services.check(request).await;
        }
        let status = match self.not_ready_reason_in_time().await {
            None => ServingStatus::Serving,
            Some(_) => ServingStatus::NotServing,
        };
        Ok(Response::new(HealthCheckResponse {
            status: status.into(),
        }))
    }

    type WatchStream = <HealthService as Health>::WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.services.watch(request).await
    }
}
