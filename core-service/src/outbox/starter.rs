//! Jobs a request runs at once: inserted already claimed in the request's transaction and run
//! by this instance's worker as soon as it commits, without waiting for a notification and a
//! claim. They count against the worker's concurrency; when it has no room, the request
//! enqueues the job as usual and the queue runs it.
//!
//! A started job is as durable as a queued one: if this process dies before recording its
//! outcome, its lease expires and any worker claims it again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use super::announcer::Announcer;
use super::store::{self, ClaimedJob, NewJob};
use super::worker::{Inner, execute};
use crate::db;

/// Reserves room in the worker for jobs that requests start. Cheap to clone.
#[derive(Clone)]
pub struct Starter {
    inner: Arc<Inner>,
}

/// Room for one job in the worker, taken before the request's transaction. Dropping it unused
/// (the transaction failed) gives the room back.
pub struct Reservation {
    inner: Arc<Inner>,
    /// Taken by [`Reservation::run`], for the job's run.
    permit: Option<OwnedSemaphorePermit>,
    /// The job [`Reservation::enqueue`] inserted claimed, with its claim's expiry, until
    /// [`Reservation::run`] takes it. Dropped with the reservation, it may have committed all
    /// the same: the request was cancelled (its caller's deadline) while its COMMIT was on the
    /// way. It would then wait out its lease, an attempt charged; it is handed back instead
    /// (see [`hand_back`]).
    enqueued: Mutex<Option<(Uuid, DateTime<Utc>)>>,
}

/// How long a hand-back waits for a COMMIT already sent to land: before, the job's row is not
/// visible to it, and nothing would be handed back.
const COMMIT_LANDING: Duration = Duration::from_millis(500);

impl Starter {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Room for one job now, unless every worker slot is busy, queued jobs are waiting and
    /// fill half the slots or more (they go first), or the worker is stopping; then the caller
    /// enqueues its job for the queue instead.
    pub fn reserve(&self) -> Option<Reservation> {
        if !self.inner.admits_started_jobs() {
            return None;
        }
        let permit = self
            .inner
            .context
            .lease
            .permits
            .clone()
            .try_acquire_owned()
            .ok()?;
        Some(Reservation::new(self.inner.clone(), permit))
    }

    /// Room for one job, as [`Starter::reserve`] gives, or else as soon as the worker has some,
    /// within its `start_wait`: while every slot is busy, the request waits in line for the
    /// next one with the worker's own claims; while queued jobs go first, it waits for the
    /// worker's next claim and looks again. `None` when no room comes in time or the worker is
    /// stopping, and the caller then queues its job.
    ///
    /// Why requests wait: a request that queues its job when the worker is full is answered at
    /// once, so a caller that sends its next request on each answer is accepted faster than the
    /// worker runs their jobs, and the queue, with every job's wait in it, grows for as long as
    /// it keeps sending. Waiting paces such callers to the worker, and the bound keeps a worker
    /// held up by slow jobs (a slow CRM's syncs hold slots; a slow receiver's deliveries do not)
    /// from holding up requests for longer than that.
    ///
    /// Call it before checking out a database connection, so that no connection waits too.
    pub async fn reserve_within_wait(&self) -> Option<Reservation> {
        let wait = self.inner.config.start_wait;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so that a claim or a stop in between is not missed.
            let claimed = self.inner.claimed.notified();
            let stopped = self.inner.stopped.notified();
            tokio::pin!(claimed, stopped);
            claimed.as_mut().enable();
            stopped.as_mut().enable();
            if let Some(reservation) = self.reserve() {
                return Some(reservation);
            }
            if wait.is_zero() || self.inner.stopping.load(Ordering::Relaxed) {
                return None;
            }
            if !self.inner.admits_started_jobs() {
                // Queued jobs go first (see `reserve`): wait until the worker has claimed them,
                // and look a last time when the wait is over.
                if tokio::time::timeout_at(deadline, claimed).await.is_err() {
                    return self.reserve();
                }
                continue;
            }
            let permits = self.inner.context.lease.permits.clone();
            // A stop ends the wait: the worker starts nothing more, and a slot freed by its
            // last jobs would only be given back.
            let permit = tokio::select! {
                acquired = tokio::time::timeout_at(deadline, permits.acquire_owned()) => {
                    acquired.ok()?.ok()?
                }
                () = stopped => return None,
            };
            if self.inner.stopping.load(Ordering::Relaxed) {
                return None;
            }
            return Some(Reservation::new(self.inner.clone(), permit));
        }
    }
}

impl Reservation {
    fn new(inner: Arc<Inner>, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            permit: Some(permit),
            enqueued: Mutex::new(None),
        }
    }

    /// Inserts `job` claimed by this worker. Call it in the transaction of the rows that cause
    /// the job, and pass what it returns to [`Reservation::run`] once that has committed.
    ///
    /// Takes the connection by shared reference so that the insert can be pipelined with the
    /// transaction's other statements.
    pub async fn enqueue(
        &self,
        connection: &AsyncPgConnection,
        job: &NewJob,
    ) -> QueryResult<ClaimedJob> {
        let context = &self.inner.context;
        let now = context.clock.now();
        let claimed_at = Instant::now();
        let until = context.lease.until(now);
        // Before the insert is sent, not after its reply: a pipelined transaction sends COMMIT
        // behind it, and a request cancelled in that round trip has committed the job all the
        // same. A hand-back of a job whose transaction rolled back matches nothing.
        *self.enqueued.lock().unwrap_or_else(PoisonError::into_inner) = Some((job.id, until));
        store::enqueue_started(
            connection,
            std::slice::from_ref(job),
            &context.lease.owner,
            now,
            until,
        )
        .await?;
        Ok(ClaimedJob::started(job, until, claimed_at))
    }

    /// Runs `job` (from [`Reservation::enqueue`], committed) through its handler in the
    /// background, and records its outcome as the worker records the jobs it claims.
    pub fn run(mut self, job: ClaimedJob) {
        self.enqueued
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(permit) = self.permit.take() {
            let task = execute(self.inner.clone(), job, permit);
            self.inner.context.lease.spawn(task);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let enqueued = self
            .enqueued
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((id, claimed_until)) = enqueued {
            hand_back(self.inner.clone(), id, claimed_until);
        }
    }
}

/// Hands back to the queue, due now and its attempt not counted, a job inserted claimed under
/// a reservation that was dropped without running it, once a COMMIT on the way has had time to
/// land. Nothing matches when its transaction rolled back (the common case: the request
/// failed). Shutdown waits for it as for the worker's other background tasks.
fn hand_back(inner: Arc<Inner>, id: Uuid, claimed_until: DateTime<Utc>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let context = inner.context.clone();
    inner.context.lease.spawn(async move {
        tokio::time::sleep(COMMIT_LANDING).await;
        let now = context.clock.now();
        let handed_back = match db::connection(&context.pool).await {
            Ok(mut connection) => {
                store::finish_deferred(
                    &mut connection,
                    &[(id, claimed_until, now)],
                    &context.lease.owner,
                    now,
                )
                .await
                .map_err(db::DbError::from)
            }
            Err(error) => Err(error),
        };
        match handed_back {
            Ok(0) => {}
            Ok(_) => {
                tracing::info!(job_id = %id, "a started job its request left behind was handed back to the queue");
                context.lease.announcer.jobs_queued();
            }
            Err(error) => {
                tracing::warn!(job_id = %id, %error, "cannot hand back a started job its request left behind; its lease will expire");
            }
        }
    });
}

/// What a committed transaction leaves to the outbox: jobs due now that it queued for a claim,
/// and the job it inserted already claimed under the caller's [`Reservation`].
pub trait Committed {
    /// Whether it queued jobs due now, which its committer announces (see [`Announcer`]).
    /// Announcing jobs that were not queued would have every worker look for them in vain.
    fn queued_jobs(&self) -> bool;

    /// The job it inserted under the caller's reservation (see [`Reservation::enqueue`]).
    fn take_started(&mut self) -> Option<ClaimedJob>;
}

/// Announces the jobs `committed` queued and runs the one it started under `reservation`. Call
/// it once the transaction has committed, never before: a worker could look for the jobs and
/// not see them yet.
pub fn after_commit(
    announcer: &Announcer,
    reservation: Option<Reservation>,
    committed: &mut impl Committed,
) {
    if committed.queued_jobs() {
        announcer.jobs_queued();
    }
    if let (Some(reservation), Some(job)) = (reservation, committed.take_started()) {
        reservation.run(job);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use crate::outbox::{Announcer, Registry, SystemClock, Worker, WorkerConfig};

    /// A worker that is never run: a pool is built without connecting.
    fn idle_worker() -> Worker {
        let url = "postgres://nobody@127.0.0.1:1/none";
        let pool = crate::db::build_pool(url, 1, std::time::Duration::from_secs(5)).expect("pool");
        Worker::new(
            pool,
            url,
            Registry::default(),
            Arc::new(SystemClock),
            WorkerConfig::default(),
            Announcer::default(),
        )
    }

    #[tokio::test]
    async fn a_lent_slot_is_taken_back_at_once_or_when_one_frees_even_when_its_job_is_cut_off() {
        let worker = idle_worker();
        let permits = worker.inner.context.lease.permits.clone();
        let concurrency = permits.available_permits();
        let held = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the job's own slot");

        let lent = worker.inner.context.lease.lend_slot();
        assert_eq!(
            permits.available_permits(),
            concurrency,
            "lent while it waits"
        );
        lent.take_back();
        assert_eq!(permits.available_permits(), concurrency - 1);

        // Every slot busy when it takes its own back: it goes on without waiting, and the next
        // slot to free up is taken in its place.
        let lent = worker.inner.context.lease.lend_slot();
        let busy = permits
            .clone()
            .try_acquire_many_owned(u32::try_from(concurrency).expect("few"))
            .expect("every slot");
        lent.take_back();
        drop(busy);
        settle(&permits, concurrency - 1).await;
        assert_eq!(permits.available_permits(), concurrency - 1);

        // Dropped without being taken back, as when the handler's future is dropped.
        drop(worker.inner.context.lease.lend_slot());
        settle(&permits, concurrency - 1).await;
        assert_eq!(permits.available_permits(), concurrency - 1);
        drop(held);
        assert_eq!(
            permits.available_permits(),
            concurrency,
            "no slot gained or lost"
        );
    }

    /// Lets background tasks run until `permits` has `available` free, or a while has passed.
    async fn settle(permits: &tokio::sync::Semaphore, available: usize) {
        for _ in 0..100 {
            if permits.available_permits() == available {
                break;
            }
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn requests_start_nothing_while_queued_jobs_fill_the_worker_or_it_stops() {
        let worker = idle_worker();
        let starter = worker.starter();
        let concurrency = WorkerConfig::default().concurrency;
        assert!(starter.reserve().is_some(), "room, and nothing queued");

        // Queued jobs wait, but hold fewer than half of the slots: a request still starts.
        worker.inner.backlog.store(true, Ordering::Relaxed);
        let permits = worker.inner.context.lease.permits.clone();
        let claimed = permits
            .clone()
            .try_acquire_many_owned(u32::try_from(concurrency / 2 - 1).expect("few"))
            .expect("room");
        assert!(starter.reserve().is_some(), "most slots are free");
        // Fewer than half free: queued jobs go first.
        let more = permits.clone().try_acquire_many_owned(2).expect("room");
        assert!(starter.reserve().is_none(), "queued jobs go first");
        worker.inner.backlog.store(false, Ordering::Relaxed);
        assert!(starter.reserve().is_some());
        drop((claimed, more));

        worker.inner.stopping.store(true, Ordering::Relaxed);
        assert!(
            starter.reserve().is_none(),
            "a stopping worker starts nothing"
        );
    }

    #[tokio::test]
    async fn a_waiting_request_lets_queued_jobs_go_first_until_the_worker_claims_them() {
        let worker = idle_worker();
        let starter = worker.starter();
        let concurrency = WorkerConfig::default().concurrency;
        let permits = worker.inner.context.lease.permits.clone();
        // Queued jobs wait and fewer than half of the slots are free; one is.
        worker.inner.backlog.store(true, Ordering::Relaxed);
        let claimed = permits
            .clone()
            .try_acquire_many_owned(u32::try_from(concurrency - 1).expect("few"))
            .expect("room");

        // It does not take the free slot ahead of them, and gives up after its wait.
        assert!(starter.reserve_within_wait().await.is_none());
        assert_eq!(permits.available_permits(), 1, "the slot is left free");

        // The worker's next claim finds no more: the request looks again and starts.
        let waiting = tokio::spawn({
            let starter = starter.clone();
            async move { starter.reserve_within_wait().await.is_some() }
        });
        tokio::task::yield_now().await;
        worker.inner.backlog.store(false, Ordering::Relaxed);
        worker.inner.claimed.notify_waiters();
        assert!(waiting.await.expect("the request ends"));
        drop(claimed);
    }
}
