//! Deleting deduplication keys once no window can still hold them: journey triggers' and, with
//! the same retention, Emarsys events' redelivery keys (taken over once older than the
//! window, so deleting them changes no answer).

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::prepared;

/// How long a key is kept at least: the longest window any trigger is checked against, which
/// for an Emarsys event's flows is 30 days (a dead job retried by an operator weeks later must
/// still find its flows triggered). Requests' triggers use the configured window, when longer.
pub const LEAST_KEY_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long keys are kept with requests' triggers deduplicated over `trigger_window`.
pub fn key_retention(trigger_window: Duration) -> Duration {
    trigger_window.max(LEAST_KEY_RETENTION)
}

/// A table of deduplication keys.
#[derive(Debug, Clone, Copy)]
pub enum DedupKeys {
    JourneyTriggers,
    EmarsysEvents,
}

impl DedupKeys {
    /// Deletes at most `$2` of the oldest keys last taken before `$1`, found through the
    /// table's index on `accepted_at`.
    fn delete_statement(self) -> &'static str {
        match self {
            Self::JourneyTriggers => {
                "DELETE FROM journey_trigger_keys WHERE dedup_key IN (
                 SELECT dedup_key FROM journey_trigger_keys WHERE accepted_at < $1
                 ORDER BY accepted_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                 AND accepted_at < $1"
            }
            Self::EmarsysEvents => {
                "DELETE FROM webhook_event_keys WHERE dedup_key IN (
                 SELECT dedup_key FROM webhook_event_keys WHERE accepted_at < $1
                 ORDER BY accepted_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                 AND accepted_at < $1"
            }
        }
    }
}

/// Deletes at most `limit` of the oldest `keys` last taken before `cutoff` (found through the
/// index on `accepted_at`, so a batch never rereads what the last one deleted), and returns how
/// many. A key taken again meanwhile is left: the delete reads its new time before it deletes.
pub async fn delete_keys_before(
    connection: &mut AsyncPgConnection,
    keys: DedupKeys,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> diesel::QueryResult<usize> {
    prepared(
        diesel::sql_query(keys.delete_statement())
            .bind::<Timestamptz, _>(cutoff)
            .bind::<BigInt, _>(limit),
    )
    .execute(connection)
    .await
}
