//! Shared state of the core's services: built once at start and handed out behind an `Arc`.

use phonenumber::country;

use crate::config_watch::ConfigWatch;
use crate::db::DbPool;
use crate::events::Audience;
use crate::outbox::Announcer;

/// What every RPC needs: the connection pool and the validated configuration.
pub struct AppState {
    pub pool: DbPool,
    pub default_region: Option<country::Id>,
    /// How long a journey trigger's deduplication key holds.
    pub trigger_dedup_window: std::time::Duration,
    /// Wakes the outbox workers for the jobs a request queued, once it has committed.
    pub announcer: Announcer,
    /// Whether the configuration cached for hot paths is current.
    pub config: ConfigWatch,
    /// Who acts on stored events: an event nobody listens to is stored without a dispatch job.
    pub audience: Audience,
}
