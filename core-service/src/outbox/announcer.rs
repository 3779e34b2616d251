//! Tells workers about jobs a transaction queued, once it has committed.
//!
//! Jobs used to announce themselves with a `NOTIFY` from an insert trigger, inside the queuing
//! transaction. PostgreSQL serialises the commits of all transactions that notify (a lock on the
//! whole database, held from just before the commit until after its WAL flush), so each contact
//! upsert waited for the one before it to reach the disk, and the same statements ran at little
//! more than half their rate (`docs/performance.md`). Now the transaction only inserts, and
//! whoever committed it calls [`Announcer::jobs_queued`]: this instance's claim loop wakes in
//! process, and a background task sends one `NOTIFY` of its own, outside any write, for the
//! other instances. A job nobody announces (a row inserted by hand) runs at the next poll.

use std::sync::Arc;
use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::db::{self, DbError, DbPool, prepared};

/// The channel workers listen on for other instances' jobs.
pub(super) const CHANNEL: &str = "outbox_jobs";

/// The shortest time between two notifications from one instance: announcements made
/// meanwhile share the next, so a busy instance sends at most one per interval whatever its
/// write rate.
const BROADCAST_INTERVAL: Duration = Duration::from_millis(10);

/// Wakes the workers of this and other instances for jobs that are due. Cheap to clone.
#[derive(Clone)]
pub struct Announcer {
    shared: Arc<Shared>,
}

struct Shared {
    /// Wakes this instance's claim loop.
    local: Notify,
    /// Asks for a notification to the other instances.
    remote: Notify,
    /// The payload of this instance's notifications, by which its own listener skips them.
    origin: String,
}

impl Default for Announcer {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                local: Notify::new(),
                remote: Notify::new(),
                origin: Uuid::new_v4().simple().to_string(),
            }),
        }
    }
}

impl Announcer {
    /// Call after the commit of a transaction that queued jobs due now (not before: a worker
    /// could look for them and not see them yet).
    pub fn jobs_queued(&self) {
        self.shared.local.notify_one();
        self.shared.remote.notify_one();
    }

    /// Wakes this instance's claim loop only: for jobs of its own coming due, and for other
    /// instances' notifications.
    pub(super) fn wake_local(&self) {
        self.shared.local.notify_one();
    }

    /// Until the claim loop is woken (at once if it was woken while it was busy).
    pub(super) async fn woken(&self) {
        self.shared.local.notified().await;
    }

    /// Whether a notification's payload is this instance's own.
    pub(super) fn is_own(&self, payload: &str) -> bool {
        payload == self.shared.origin
    }

    /// Sends the notifications that announcements ask for, until aborted.
    pub(super) async fn broadcast(self, pool: DbPool) {
        loop {
            self.shared.remote.notified().await;
            if let Err(error) = self.notify(&pool).await {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "cannot notify other instances of queued jobs; they find them at their next poll"
                );
            }
            tokio::time::sleep(BROADCAST_INTERVAL).await;
        }
    }

    /// Wakes the other instances now, not through [`Announcer::broadcast`]: for the jobs a
    /// stopping worker hands back.
    pub(super) async fn notify(&self, pool: &DbPool) -> Result<(), DbError> {
        let mut connection = db::connection(pool).await?;
        prepared(
            diesel::sql_query("SELECT pg_notify($1, $2)")
                .bind::<Text, _>(CHANNEL)
                .bind::<Text, _>(&self.shared.origin),
        )
        .execute(&mut connection)
        .await?;
        Ok(())
    }
}

impl db::Listener for Announcer {
    fn listening(&self) {
        // Anything announced while (re)connecting is picked up now.
        self.wake_local();
    }

    fn notified(&self, payload: &str) {
        if !self.is_own(payload) {
            self.wake_local();
        }
    }
}
