//! The gauges on `/metrics` that describe stored state rather than events: outbox depth,
//! the oldest due job, endpoints per health state, the oldest parked delivery and contacts per
//! Twenty sync status.
//! They are sampled from the database on an interval, so a scrape never costs a query.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use switchbord_telemetry as telemetry;

use crate::db::{self, DbError, DbPool};
use crate::outbox::{self, Clock, Depth};
use crate::twenty::{self, SyncStatus};
use crate::webhooks;

pub struct GaugeSampler {
    pool: DbPool,
    clock: Arc<dyn Clock>,
    interval: Duration,
    /// Outbox `(status, kind)` pairs to report: every outstanding status of every job kind this
    /// process runs, so that an empty queue reads 0 rather than no series, and any pair reported
    /// before, so that one that has since disappeared is set to zero rather than left at its last
    /// value.
    outbox_series: HashSet<(String, String)>,
}

impl GaugeSampler {
    pub fn new<'a>(
        pool: DbPool,
        clock: Arc<dyn Clock>,
        interval: Duration,
        job_kinds: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let outbox_series = job_kinds
            .into_iter()
            .flat_map(|kind| {
                outbox::OUTSTANDING_STATUSES.map(|status| (status.to_owned(), kind.to_owned()))
            })
            .collect();
        Self {
            pool,
            clock,
            interval,
            outbox_series,
        }
    }

    /// Samples now and then every interval, forever (the server aborts the task on shutdown).
    pub async fn run(mut self) {
        let mut ticks = tokio::time::interval(self.interval.max(Duration::from_millis(100)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let up = match self.sample().await {
                Ok(()) => 1.0,
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "cannot sample the metrics gauges"
                    );
                    0.0
                }
            };
            metrics::gauge!(telemetry::SAMPLE_UP).set(up);
        }
    }

    async fn sample(&mut self) -> Result<(), DbError> {
        let now = self.clock.now();
        let mut connection = db::connection(&self.pool).await?;

        let Depth { counts, oldest_due } = outbox::depth(&mut connection, now).await?;
        let mut current = HashSet::with_capacity(counts.len());
        for (status, kind, count) in counts {
            metrics::gauge!(telemetry::OUTBOX_JOBS, "status" => status.clone(), "kind" => kind.clone())
                .set(count as f64);
            current.insert((status, kind));
        }
        for (status, kind) in self.outbox_series.difference(&current) {
            metrics::gauge!(telemetry::OUTBOX_JOBS, "status" => status.clone(), "kind" => kind.clone())
                .set(0.0);
        }
        self.outbox_series.extend(current);
        let oldest_age = oldest_due.map_or(0.0, |oldest| {
            (now - oldest).num_milliseconds().max(0) as f64 / 1000.0
        });
        metrics::gauge!(telemetry::OUTBOX_OLDEST_PENDING).set(oldest_age);

        for (health, count) in webhooks::health_counts(&mut connection, now).await? {
            metrics::gauge!(telemetry::WEBHOOK_ENDPOINTS, "health" => health).set(count as f64);
        }
        let oldest_parked = webhooks::oldest_parked(&mut connection).await?;
        let parked_age = oldest_parked.map_or(0.0, |oldest| {
            (now - oldest).num_milliseconds().max(0) as f64 / 1000.0
        });
        metrics::gauge!(telemetry::WEBHOOK_PARKED_OLDEST).set(parked_age);

        let syncs = twenty::sync_status_counts(&mut connection).await?;
        for status in SyncStatus::ALL {
            let count = syncs
                .iter()
                .find(|(name, _)| name == status.as_str())
                .map_or(0, |(_, count)| *count);
            metrics::gauge!(telemetry::TWENTY_SYNCS, "status" => status.as_str()).set(count as f64);
        }
        Ok(())
    }
}
