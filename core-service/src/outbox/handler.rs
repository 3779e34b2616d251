//! Job kinds and their handlers, registered by the features that own them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;

use super::backoff::RetryDelay;
use super::clock::Clock;
use super::starter::{self, Committed, Reservation, Starter};
use super::store::{self, ClaimedJob, NewJob};
use super::worker::{self, Inner, Lease};
use crate::db::DbPool;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler may use.
#[derive(Clone)]
pub struct JobContext {
    pub pool: DbPool,
    pub clock: Arc<dyn Clock>,
    /// The lease of the worker running the handler, for jobs the handler starts itself.
    pub(super) lease: Arc<Lease>,
    /// The worker itself, for jobs that a handler's transaction causes and that run at once
    /// (see [`JobContext::reserve`]); weak, as the worker holds this context.
    pub(super) worker: Weak<Inner>,
}

impl JobContext {
    /// Room in this worker for a job that the handler's transaction causes, to run as soon as
    /// that commits, as a request's job does (see [`Starter::reserve`]); `None` when the worker
    /// has none to give, and the job is then queued.
    pub fn reserve(&self) -> Option<Reservation> {
        Starter::new(self.worker.upgrade()?).reserve()
    }

    /// Inserts `jobs` as already claimed by this worker, for a handler that runs them itself at
    /// once: they skip the queue's claim, and still run again elsewhere if this process dies
    /// before [`JobContext::finish_started`] (their lease expires like any other). Call it in the
    /// transaction of the rows that cause them, and run them only after that commits.
    ///
    /// Run them in the handler's own job, which the worker's concurrency covers, or with
    /// [`JobContext::spawn`], which only its shutdown covers: the handler must bound them.
    pub async fn enqueue_started(
        &self,
        connection: &mut AsyncPgConnection,
        jobs: &[NewJob],
    ) -> QueryResult<Vec<ClaimedJob>> {
        let now = self.clock.now();
        store::enqueue_started(
            connection,
            jobs,
            &self.lease.owner,
            now,
            self.lease.until(now),
        )
        .await
    }

    /// The lease owner and expiry for jobs a handler inserts already claimed in a statement of
    /// its own (status `running`, `attempts` 1; see [`ClaimedJob::started`]), where
    /// [`JobContext::enqueue_started`] cannot be used.
    pub fn started_lease(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> (&str, chrono::DateTime<chrono::Utc>) {
        (&self.lease.owner, self.lease.until(now))
    }

    /// Runs `task` (started jobs, see [`JobContext::enqueue_started`]) apart from the
    /// handler's own job, which can then end at once. The worker waits for it on shutdown, as
    /// for the jobs it claimed.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.lease.spawn(task);
    }

    /// Wakes the workers for jobs due now that the handler queued: call it once their
    /// transaction has committed (see [`super::Announcer`]).
    pub fn jobs_queued(&self) {
        self.lease.announcer.jobs_queued();
    }

    /// Announces the jobs the handler's committed transaction queued and runs the one it
    /// started under `reservation` (see [`starter::after_commit`]).
    pub fn after_commit(&self, reservation: Option<Reservation>, committed: &mut impl Committed) {
        starter::after_commit(&self.lease.announcer, reservation, committed);
    }

    /// Has this worker look for due jobs after `delay`: for jobs the handler inserted due a
    /// moment from now, which no notification announces when they come due.
    pub fn wake_after(&self, delay: Duration) {
        self.lease.wake_after(delay);
    }

    /// Runs `work` with the job's worker slot lent back to the worker, then takes a slot back
    /// without waiting for one (the job runs over the worker's concurrency until one frees up):
    /// for a handler that waits on something bounded elsewhere (a webhook request, which its
    /// endpoint's slots bound), so that slow receivers cannot fill the worker and hold up every
    /// other kind of job. What the handler does after `work` should be little: it is not bounded
    /// by the worker's slots.
    ///
    /// Only in [`JobHandler::run`], whose job holds a slot; never in work started with
    /// [`JobContext::spawn`], which holds none.
    pub async fn without_worker_slot<T>(&self, work: impl Future<Output = T>) -> T {
        let lent = self.lease.lend_slot();
        let output = work.await;
        lent.take_back();
        output
    }

    /// Records how a job from [`JobContext::enqueue_started`] ended, exactly as the worker
    /// records the jobs it claims: retries with backoff, dead-lettering, metrics.
    pub async fn finish_started(
        &self,
        job: &ClaimedJob,
        result: Result<(), JobError>,
        started: std::time::Instant,
    ) {
        worker::conclude(self, job, result, started).await;
    }
}

/// Why a job did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again later (when, `after` says), until the kind's attempts run out.
    #[error("{message}")]
    Retry { message: String, after: RetryDelay },
    /// Retrying cannot help: dead-letter the job now.
    #[error("{0}")]
    Permanent(String),
    /// Not now, and not the job's fault (a per-receiver limit): run it again after `after`
    /// without counting this attempt.
    #[error("deferred")]
    Defer { after: Duration },
}

impl JobError {
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry {
            message: message.into(),
            after: RetryDelay::Backoff,
        }
    }
}

/// A job kind: its name and how many attempts it gets before it is dead-lettered. Declared
/// as a constant by the feature that owns it, used both to enqueue and to handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobKind {
    pub name: &'static str,
    pub max_attempts: i32,
}

/// Runs the jobs of one kind. Delivery is at least once: `run` must be idempotent.
pub trait JobHandler: Send + Sync + 'static {
    fn kind(&self) -> JobKind;

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>>;

    /// Called when this worker dead-lettered a job of this kind (its last attempt failed, or
    /// it failed for good), with `error`: for a handler whose own records would otherwise show
    /// the job's work as still under way, to end them on `connection`, which is in the
    /// transaction recording the job dead (in a savepoint of it). It may find that work ended
    /// already; it answers whether it queued jobs (to be announced). An error here is logged,
    /// undoes only what the hook wrote, and leaves the job dead all the same; so pass database
    /// errors on rather than handle them. It holds the job's row locked meanwhile: no slow
    /// work, and no `build_transaction` (a savepoint cannot take settings of its own).
    fn dead_lettered<'a>(
        &'a self,
        _job: &'a ClaimedJob,
        _error: &'a str,
        _connection: &'a mut AsyncPgConnection,
        _now: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, QueryResult<bool>> {
        Box::pin(async { Ok(false) })
    }
}

/// The handlers of every job kind this process runs.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
}

impl Registry {
    pub fn register(&mut self, handler: impl JobHandler) -> &mut Self {
        self.handlers.insert(handler.kind().name, Arc::new(handler));
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn JobHandler>> {
        self.handlers.get(kind).cloned()
    }

    /// The names of the registered kinds, in no particular order.
    pub fn kind_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.keys().copied()
    }
}
