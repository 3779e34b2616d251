//! Configuration that hot paths read for every event (the webhook endpoints, whether Twenty is
//! connected, the flows and rules of Emarsys events), kept in memory and dropped whenever it
//! changes, on whichever instance.
//!
//! A row trigger on each watched table notifies `config_changed` (migrations
//! `2026-12-03-000002_config_changed_notifications` and
//! `2026-12-04-000002_flows_and_rules_config_notifications`), whoever makes the change: an API call
//! on any instance, a delivery marking its endpoint failing or disabled, an operator's SQL.
//! Each instance listens; a notification moves its generation on, which leaves every cached
//! value stale. While the listener is not connected (at start, after a lost connection) nothing
//! is cached, since a change could go unheard: every read goes to the database until it is
//! listening again. Another instance's change is seen once its notification arrives, normally
//! within a millisecond of the commit; a change made through this instance's API is seen by its
//! very next request, as the service calls [`ConfigWatch::changed`] after committing.
//!
//! Whatever happens to the listener, no value is kept longer than [`MAX_AGE`]: a connection
//! that died without a word (a NAT or a failover that dropped it silently) stops the
//! notifications while the process still believes it listens, and the webhook secret of
//! Twenty, among others, must not stay stale for the life of the process then.
//!
//! Two reads fewer for every event dispatched (`docs/performance.md`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::db;

/// The channel the triggers notify.
const CHANNEL: &str = "config_changed";

/// How long a cached value is used at most, even with no change heard of: one read a minute.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// Whether the cached configuration is current. Cheap to clone.
#[derive(Clone, Default)]
pub struct ConfigWatch {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Moves on at every change heard of; a value cached at an older generation is stale.
    generation: AtomicU64,
    /// Whether changes are being heard of at all.
    listening: AtomicBool,
}

impl ConfigWatch {
    /// Marks everything cached as stale: for changes this instance committed itself, so that
    /// its next read sees them without waiting for their notification.
    pub fn changed(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The generation a value read now belongs to; `None` while changes are not heard of and
    /// nothing may be cached.
    fn current(&self) -> Option<u64> {
        self.shared
            .listening
            .load(Ordering::SeqCst)
            .then(|| self.shared.generation.load(Ordering::SeqCst))
    }

    fn set_listening(&self, listening: bool) {
        if listening {
            // Whatever changed while nobody listened is unknown: start afresh.
            self.changed();
        }
        self.shared.listening.store(listening, Ordering::SeqCst);
    }

    /// Listens for changes until aborted, reconnecting after failures.
    pub async fn listen(self, database_url: String) {
        db::listen(database_url, CHANNEL, "caching no configuration", self).await;
    }
}

impl db::Listener for ConfigWatch {
    fn listening(&self) {
        self.set_listening(true);
    }

    fn notified(&self, _table: &str) {
        self.changed();
    }

    fn stopped(&self) {
        self.set_listening(false);
    }
}

/// One piece of configuration, read from the database only when it may have changed.
pub struct Cached<T> {
    watch: ConfigWatch,
    /// The value, the generation it was read at, and when it was read.
    slot: Mutex<Option<(u64, Instant, Arc<T>)>>,
}

impl<T> Cached<T> {
    pub fn new(watch: ConfigWatch) -> Self {
        Self {
            watch,
            slot: Mutex::new(None),
        }
    }

    /// The cached value if it is current, else what `load` reads (kept for next time unless a
    /// change was heard of while it read).
    pub async fn get<E, Load>(&self, load: impl FnOnce() -> Load) -> Result<Arc<T>, E>
    where
        Load: Future<Output = Result<T, E>>,
    {
        let generation = self.watch.current();
        if let Some(generation) = generation
            && let Some(value) = self.cached_at(generation)
        {
            return Ok(value);
        }
        let read_at = Instant::now();
        let value = Arc::new(load().await?);
        if let Some(generation) = generation {
            let mut slot = self
                .slot
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            // Checked under the lock: a change heard of from here on moves the generation
            // past the one stored, and a change heard of during the read was not stored.
            if self.watch.current() == Some(generation) {
                *slot = Some((generation, read_at, value.clone()));
            }
        }
        Ok(value)
    }

    /// The cached value if it is current, without reading anything: for decisions that must
    /// not wait on the database and can fall back to the cautious choice when nothing is known.
    pub fn peek(&self) -> Option<Arc<T>> {
        self.cached_at(self.watch.current()?)
    }

    fn cached_at(&self, generation: u64) -> Option<Arc<T>> {
        let slot = self
            .slot
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match &*slot {
            Some((cached, read_at, value))
                if *cached == generation && read_at.elapsed() < MAX_AGE =>
            {
                Some(value.clone())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A cache whose loads count themselves and return the count.
    struct Counting {
        cached: Cached<usize>,
        loads: AtomicUsize,
    }

    impl Counting {
        fn new(watch: &ConfigWatch) -> Self {
            Self {
                cached: Cached::new(watch.clone()),
                loads: AtomicUsize::new(0),
            }
        }

        async fn get(&self) -> usize {
            let value = self
                .cached
                .get(|| async { Ok::<_, Infallible>(self.loads.fetch_add(1, Ordering::SeqCst)) })
                .await;
            *value.expect("infallible")
        }
    }

    fn listening() -> ConfigWatch {
        let watch = ConfigWatch::default();
        watch.set_listening(true);
        watch
    }

    #[tokio::test]
    async fn nothing_is_cached_while_changes_are_not_heard_of() {
        let watch = ConfigWatch::default();
        let counting = Counting::new(&watch);
        assert_eq!(counting.get().await, 0);
        assert_eq!(counting.get().await, 1, "read again: no listener");

        watch.set_listening(true);
        assert_eq!(counting.get().await, 2);
        assert_eq!(counting.get().await, 2, "cached while listening");

        watch.set_listening(false);
        assert_eq!(counting.get().await, 3, "the connection was lost");
    }

    #[tokio::test]
    async fn a_change_makes_the_next_read_go_to_the_database() {
        let watch = listening();
        let counting = Counting::new(&watch);
        assert_eq!(counting.get().await, 0);
        assert_eq!(counting.get().await, 0);
        watch.changed();
        assert_eq!(counting.get().await, 1);
        assert_eq!(counting.get().await, 1);
    }

    #[tokio::test]
    async fn listening_again_drops_what_was_cached_before() {
        let watch = listening();
        let counting = Counting::new(&watch);
        assert_eq!(counting.get().await, 0);
        watch.set_listening(false);
        watch.set_listening(true);
        assert_eq!(
            counting.get().await,
            1,
            "changes may have gone unheard meanwhile"
        );
    }

    #[tokio::test]
    async fn a_value_read_while_a_change_was_heard_of_is_not_kept() {
        let watch = listening();
        let cached = Cached::new(watch.clone());
        let read = cached
            .get(|| async {
                // The change commits after the read's snapshot: what it read is already old.
                watch.changed();
                Ok::<_, Infallible>("old")
            })
            .await
            .expect("infallible");
        assert_eq!(*read, "old", "the caller still gets what it read");
        let next = cached
            .get(|| async { Ok::<_, Infallible>("new") })
            .await
            .expect("infallible");
        assert_eq!(*next, "new");
    }

    #[tokio::test]
    async fn peeking_sees_only_a_current_value_and_never_reads() {
        let watch = ConfigWatch::default();
        let counting = Counting::new(&watch);
        assert_eq!(counting.get().await, 0);
        assert_eq!(
            counting.cached.peek(),
            None,
            "nothing is cached without a listener"
        );

        watch.set_listening(true);
        assert_eq!(counting.cached.peek(), None, "nothing read since listening");
        assert_eq!(counting.get().await, 1);
        assert_eq!(counting.cached.peek().as_deref(), Some(&1));
        watch.changed();
        assert_eq!(counting.cached.peek(), None, "stale after a change");
        assert_eq!(
            counting.loads.load(Ordering::SeqCst),
            2,
            "peeking read nothing"
        );
    }

    #[tokio::test]
    async fn a_failed_read_caches_nothing() {
        let watch = listening();
        let cached: Cached<&str> = Cached::new(watch);
        let failed = cached.get(|| async { Err("database down") }).await;
        assert!(failed.is_err());
        let next = cached
            .get(|| async { Ok::<_, &str>("read") })
            .await
            .expect("read");
        assert_eq!(*next, "read");
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_is_read_again_after_its_maximum_age_even_with_no_change_heard_of() {
        let watch = listening();
        let counting = Counting::new(&watch);
        assert_eq!(counting.get().await, 0);
        tokio::time::advance(MAX_AGE - Duration::from_secs(1)).await;
        assert_eq!(counting.get().await, 0, "still young enough");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(counting.cached.peek(), None, "too old to be used");
        assert_eq!(counting.get().await, 1, "read again");
    }
}
