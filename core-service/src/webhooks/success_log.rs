//! Successful attempts (a 2xx within the timeout), recorded in batches: whatever succeeded
//! while the previous batch was being written goes in the next one, in one statement. Under
//! load most deliveries end this way, and one statement per batch instead of one per delivery
//! is most of the database's work saved. An idle log adds no delay.
//!
//! The log counts the successes it holds, so that new deliveries can wait while the database
//! is behind (see [`SuccessLog::caught_up`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use super::deliver::record_successes;
use super::model::AttemptRow;
use crate::db::{self, DbPool};

const MOST_PER_BATCH: usize = 256;

/// A success waiting to be written, and who to tell when it is.
struct Waiting {
    row: AttemptRow,
    written: oneshot::Sender<Result<(), String>>,
}

pub(super) struct SuccessLog {
    queue: OnceLock<mpsc::UnboundedSender<Waiting>>,
    backlog: Arc<Backlog>,
}

/// The successes handed to the log and not yet written (or failed to be).
struct Backlog {
    unwritten: AtomicUsize,
    /// [`SuccessLog::caught_up`] waits while `unwritten` is at least this.
    most: usize,
    /// Told after each batch.
    written: Notify,
}

impl Backlog {
    fn add(&self) {
        self.unwritten.fetch_add(1, Ordering::Relaxed);
    }

    fn remove(&self, count: usize) {
        self.unwritten.fetch_sub(count, Ordering::Relaxed);
        self.written.notify_waiters();
    }
}

impl SuccessLog {
    /// A log that holds up [`SuccessLog::caught_up`] while `backlog` successes or more wait.
    pub(super) fn new(backlog: usize) -> Self {
        Self {
            queue: OnceLock::new(),
            backlog: Arc::new(Backlog {
                unwritten: AtomicUsize::new(0),
                most: backlog.max(1),
                written: Notify::new(),
            }),
        }
    }

    /// Stores `row` and marks its delivery succeeded; returns once that is committed. The
    /// writer starts on first use, with `pool`.
    pub(super) async fn record(&self, pool: &DbPool, row: AttemptRow) -> Result<(), String> {
        let queue = self.queue.get_or_init(|| {
            let (queue, waiting) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(pool.clone(), waiting, self.backlog.clone()));
            queue
        });
        let (written, answer) = oneshot::channel();
        self.backlog.add();
        if queue.send(Waiting { row, written }).is_err() {
            self.backlog.remove(1);
            return Err("the success log has stopped".to_owned());
        }
        answer
            .await
            .map_err(|_| "the success log has stopped".to_owned())?
    }

    /// Whether fewer successes than the backlog's limit wait to be written, waiting up to
    /// `within` for a batch to bring them under it. A log whose writer has stopped holds no one
    /// up: its successes fail at once.
    pub(super) async fn caught_up(&self, within: Duration) -> bool {
        let backlog = &*self.backlog;
        let wait = async {
            loop {
                // Registered before the count is read, so that a batch written in between
                // wakes it.
                let written = backlog.written.notified();
                tokio::pin!(written);
                written.as_mut().enable();
                let stopped = self.queue.get().is_some_and(|queue| queue.is_closed());
                if stopped || backlog.unwritten.load(Ordering::Relaxed) < backlog.most {
                    return;
                }
                written.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }
}

async fn write_batches(
    pool: DbPool,
    mut waiting: mpsc::UnboundedReceiver<Waiting>,
    backlog: Arc<Backlog>,
) {
    let mut batch = Vec::with_capacity(MOST_PER_BATCH);
    while waiting.recv_many(&mut batch, MOST_PER_BATCH).await > 0 {
        let (rows, answers): (Vec<AttemptRow>, Vec<_>) = batch
            .drain(..)
            .map(|waiting| (waiting.row, waiting.written))
            .unzip();
        let written = async {
            let mut connection = db::connection(&pool).await?;
            record_successes(&mut connection, &rows)
                .await
                .map_err(db::DbError::from)
        }
        .await
        .map_err(|error| error.to_string());
        backlog.remove(answers.len());
        for answer in answers {
            let _ = answer.send(written.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `caught_up` says so within a moment (it waits for no timer, only a batch).
    async fn returns_at_once(log: &SuccessLog) -> bool {
        log.caught_up(Duration::from_millis(50)).await
    }

    #[tokio::test]
    async fn new_deliveries_wait_while_the_backlog_is_full_and_go_on_once_a_batch_is_written() {
        let log = SuccessLog::new(3);
        assert!(returns_at_once(&log).await, "nothing waits");
        let backlog = log.backlog.clone();
        backlog.add();
        backlog.add();
        assert!(returns_at_once(&log).await, "two of three");
        backlog.add();
        assert!(!returns_at_once(&log).await, "three of three: full");

        let waiting = tokio::spawn(async move { log.caught_up(Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "still full");
        // What the writer does once a batch of one is written.
        backlog.remove(1);
        let caught_up = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the batch")
            .expect("no panic");
        assert!(caught_up);
    }

    #[tokio::test]
    async fn a_wait_that_outlasts_its_limit_says_so() {
        let log = SuccessLog::new(1);
        log.backlog.add();
        let started = std::time::Instant::now();
        assert!(!log.caught_up(Duration::from_millis(100)).await);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
