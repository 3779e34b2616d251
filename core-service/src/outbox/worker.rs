//! The worker pool of one instance: claims due jobs, runs them with bounded concurrency, and
//! records each outcome.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures::FutureExt;
use switchbord_telemetry as telemetry;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::announcer::{Announcer, CHANNEL};
use super::backoff::{BackoffPolicy, retry_delay};
use super::clock::Clock;
use super::handler::{JobContext, JobError, Registry};
use super::starter::Starter;
use super::store::{self, ClaimedJob, Outcome};
use crate::db::{self, DbPool};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once by this instance.
    pub concurrency: usize,
    /// Longest wait between looks for due jobs when no notification arrives.
    pub poll_interval: Duration,
    /// How long a claim holds; a job still running after it may be claimed by another worker,
    /// so handlers are cut off a little before.
    pub lease: Duration,
    /// On shutdown, how long running jobs may take to finish before they are released.
    pub shutdown_grace: Duration,
    pub backoff: BackoffPolicy,
    /// How long a request waits for a free slot to start its job in before it queues the job
    /// instead (see [`super::Starter::reserve_within_wait`]); zero: it never waits.
    pub start_wait: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            backoff: BackoffPolicy::default(),
            start_wait: Duration::from_millis(100),
        }
    }
}

pub(super) struct Inner {
    registry: Registry,
    pub(super) context: JobContext,
    pub(super) config: WorkerConfig,
    /// Set once shutdown begins: no more jobs are started.
    pub(super) stopping: AtomicBool,
    /// Set while the last claim found as many due jobs as it had room for: queued jobs are
    /// waiting, and requests queue theirs behind them rather than start them first.
    pub(super) backlog: AtomicBool,
    /// Told after each claim and when shutdown begins: requests that let queued jobs go first
    /// look again (see [`Starter::reserve_within_wait`]).
    pub(super) claimed: Notify,
    /// Told when shutdown begins: requests waiting in line for a slot give up (see
    /// [`Starter::reserve_within_wait`]).
    pub(super) stopped: Notify,
}

impl Inner {
    /// Whether a request may start a job of its own now (see [`Starter`]): not once shutdown
    /// has begun, and, while queued jobs wait, only while at least half of the slots are free.
    /// Queued jobs go first while they keep the worker busy; a backlog of jobs that end at
    /// once (those of a parked endpoint, deferred again) should not send every request's job
    /// through a claim, which costs the database several times a start.
    pub(super) fn admits_started_jobs(&self) -> bool {
        if self.stopping.load(Ordering::Relaxed) {
            return false;
        }
        !self.backlog.load(Ordering::Relaxed)
            || self.context.lease.permits.available_permits() * 2 >= self.config.concurrency
    }
}

/// What the jobs of one worker are claimed under, and where their common outcomes are queued to
/// be written in batches. Handlers reach it through [`JobContext`] for jobs they start
/// themselves.
pub(super) struct Lease {
    pub(super) owner: String,
    duration: Duration,
    backoff: BackoffPolicy,
    batched: mpsc::UnboundedSender<Batched>,
    /// Started jobs that handlers run in the background; shutdown waits for them as for
    /// claimed jobs.
    background: std::sync::Mutex<JoinSet<()>>,
    /// Wakes the claim loop: jobs queued here or by another instance, or a job of this
    /// worker's due soon.
    pub(super) announcer: Announcer,
    /// When the jobs this worker set aside come due (see [`Lease::wake_after`]).
    next_due: std::sync::Mutex<DueTimes>,
    /// One slot per job running at once, whether claimed or started (see [`Starter`]); a
    /// running job may lend its slot back while it waits (see [`LentSlot`]).
    pub(super) permits: Arc<Semaphore>,
}

/// An outcome written in a batch with others: the common ones, which need no error history.
/// Each names its job and the expiry of the claim it ran on (see [`ClaimedJob`]).
enum Batched {
    Succeeded(Uuid, DateTime<Utc>),
    /// Due again at the second time.
    Deferred(Uuid, DateTime<Utc>, DateTime<Utc>),
}

impl Lease {
    /// When a lease taken at `now` expires, to the microsecond that the database keeps: the
    /// expiry names the claim when its outcome is recorded (see [`ClaimedJob`]).
    pub(super) fn until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        (now + chrono::Duration::from_std(self.duration).unwrap_or_default()).trunc_subsecs(6)
    }

    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut background = self
            .background
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Finished tasks keep their slot in the set until joined.
        while background.try_join_next().is_some() {}
        background.spawn(task);
    }

    /// Has the claim loop look for due jobs again after `delay`, sooner than its poll: for a
    /// job this worker put back with a short wait (a deferral, a busy endpoint), which no
    /// notification will announce when it comes due.
    pub(super) fn wake_after(&self, delay: Duration) {
        // A little late rather than early: the due time was taken from the clock before.
        let at = tokio::time::Instant::now() + delay + Duration::from_millis(5);
        let earliest = self
            .next_due
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .add(at);
        if earliest {
            self.announcer.wake_local();
        }
    }

    /// When the claim loop should look again at the latest: after `poll`, or when the earliest
    /// set-aside job still ahead comes due.
    fn next_look(&self, poll: Duration) -> tokio::time::Instant {
        self.next_due
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next_look(tokio::time::Instant::now(), poll)
    }

    /// Hands one of the worker's slots back for as long as the returned [`LentSlot`] lives.
    pub(super) fn lend_slot(&self) -> LentSlot {
        self.permits.add_permits(1);
        LentSlot {
            permits: Some(self.permits.clone()),
        }
    }

    fn take_background(&self) -> JoinSet<()> {
        std::mem::take(
            &mut *self
                .background
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// The times at which jobs a worker set aside come due: each is looked for when it comes, not
/// only the earliest (a job deferred 5 s behind one deferred 1 s would otherwise wait for the
/// poll). Times are kept to the end of their [`DUE_STEP`], so that thousands of deferrals a
/// second are a hundred times and a hundred looks at most.
#[derive(Debug)]
struct DueTimes {
    origin: tokio::time::Instant,
    times: BTreeSet<tokio::time::Instant>,
}

/// How finely due times are told apart: a look a little late rather than early.
const DUE_STEP: Duration = Duration::from_millis(10);

impl Default for DueTimes {
    fn default() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            times: BTreeSet::new(),
        }
    }
}

impl DueTimes {
    /// Adds `at` (rounded up to its step), and answers whether it is now the earliest (the
    /// claim loop must be told).
    fn add(&mut self, at: tokio::time::Instant) -> bool {
        let step = DUE_STEP.as_nanos();
        let steps = at
            .saturating_duration_since(self.origin)
            .as_nanos()
            .div_ceil(step);
        let nanos = u64::try_from(steps * step).unwrap_or(u64::MAX);
        let at = self.origin + Duration::from_nanos(nanos);
        let earliest = self.times.first().is_none_or(|first| at < *first);
        self.times.insert(at);
        earliest
    }

    /// When to look next at `now`: at the earliest due time still ahead, or after `poll`. The
    /// times passed are forgotten: the look about to be made covers them.
    fn next_look(&mut self, now: tokio::time::Instant, poll: Duration) -> tokio::time::Instant {
        while self.times.first().is_some_and(|due| *due <= now) {
            self.times.pop_first();
        }
        self.times
            .first()
            .map_or(now + poll, |due| (*due).min(now + poll))
    }
}

/// A slot that a running job lent back to its worker (see [`super::JobContext::without_worker_slot`]).
/// The job's own permit is released when it ends, so the job takes a slot back: otherwise the
/// worker would end up with one slot more than its concurrency. It takes one at once when one is
/// free, and otherwise (also when it is dropped, its handler cut off) the next one that frees up,
/// in the background.
pub(super) struct LentSlot {
    permits: Option<Arc<Semaphore>>,
}

impl LentSlot {
    /// Takes the slot back without waiting for one: a job waiting in line for a slot after its
    /// work was done (a delivery's attempt sent and recorded) could reach its cut-off there, and
    /// the cut-off's outcome would replace the one its work had come to. Until a slot frees up,
    /// the worker runs one job more than its concurrency: this one, recording its outcome.
    pub(super) fn take_back(mut self) {
        let taken = self
            .permits
            .as_ref()
            .and_then(|permits| permits.try_acquire().ok())
            .map(tokio::sync::SemaphorePermit::forget)
            .is_some();
        if taken {
            self.permits = None;
        }
    }
}

impl Drop for LentSlot {
    fn drop(&mut self) {
        if let Some(permits) = self.permits.take() {
            tokio::spawn(async move {
                if let Ok(permit) = permits.acquire_owned().await {
                    permit.forget();
                }
            });
        }
    }
}

pub struct Worker {
    pub(super) inner: Arc<Inner>,
    database_url: String,
    batched: mpsc::UnboundedReceiver<Batched>,
}

impl Worker {
    pub fn new(
        pool: DbPool,
        database_url: &str,
        registry: Registry,
        clock: Arc<dyn Clock>,
        config: WorkerConfig,
        announcer: Announcer,
    ) -> Self {
        let (sender, batched) = mpsc::unbounded_channel();
        let lease = Arc::new(Lease {
            owner: format!("worker-{}", Uuid::new_v4()),
            duration: config.lease,
            backoff: config.backoff,
            batched: sender,
            background: std::sync::Mutex::default(),
            announcer,
            next_due: std::sync::Mutex::default(),
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
        });
        Self {
            inner: Arc::new_cyclic(|worker| Inner {
                registry,
                context: JobContext {
                    pool,
                    clock,
                    lease,
                    worker: worker.clone(),
                },
                stopping: AtomicBool::new(false),
                backlog: AtomicBool::new(false),
                claimed: Notify::new(),
                stopped: Notify::new(),
                config,
            }),
            database_url: database_url.to_owned(),
            batched,
        }
    }

    /// The name this worker's leases carry.
    pub fn owner(&self) -> &str {
        &self.inner.context.lease.owner
    }

    /// A handle for requests that run the jobs they cause at once (see [`Starter`]).
    pub fn starter(&self) -> Starter {
        Starter::new(self.inner.clone())
    }

    /// Runs until `shutdown` completes; then stops claiming, gives running jobs the grace
    /// period, and releases what is still held.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let inner = self.inner;
        let announcer = inner.context.lease.announcer.clone();
        // Other instances' announcements wake the claim loop.
        let listener = tokio::spawn(db::listen(
            self.database_url,
            CHANNEL,
            "polling for outbox jobs only",
            announcer.clone(),
        ));
        let broadcaster = tokio::spawn(announcer.clone().broadcast(inner.context.pool.clone()));
        let permits = inner.context.lease.permits.clone();
        let (stop_finisher, finisher_stopped) = oneshot::channel();
        let finisher = tokio::spawn(record_batches(
            inner.clone(),
            self.batched,
            finisher_stopped,
        ));
        let mut running = JoinSet::new();
        // Expired leases (a worker died) are rare; they are looked for once per poll interval
        // rather than in every claim.
        let mut expired_looked_for: Option<Instant> = None;
        // A slot this loop waited in line for, kept for the first job it claims: given back, it
        // would go straight to the next request waiting for room (see `Starter`), and queued jobs
        // would wait for as long as requests keep coming.
        let mut held: Option<OwnedSemaphorePermit> = None;
        tokio::pin!(shutdown);
        loop {
            while running.try_join_next().is_some() {}
            if held.is_none() && permits.available_permits() == 0 {
                // Every slot is taken, by claimed jobs or by requests running jobs of their own
                // (see `Starter`): look for due jobs as soon as one frees up, rather than wait
                // for a notification that may have come already, or for the next poll.
                tokio::select! {
                    () = &mut shutdown => break,
                    permit = permits.clone().acquire_owned() => {
                        held = permit.ok();
                        continue;
                    }
                }
            }
            let free = permits.available_permits() + usize::from(held.is_some());
            let look_for_expired =
                expired_looked_for.is_none_or(|last| last.elapsed() >= inner.config.poll_interval);
            if look_for_expired {
                expired_looked_for = Some(Instant::now());
            }
            let backlog = match claim(&inner, free, look_for_expired).await {
                Ok(jobs) => {
                    let backlog = jobs.len() == free;
                    inner.backlog.store(backlog, Ordering::Relaxed);
                    inner.claimed.notify_waiters();
                    let mut stop = false;
                    for job in jobs {
                        // Requests may have taken room meanwhile (see `Starter`); they hold
                        // it for a short transaction and job, and a job claimed must run, unless
                        // the worker stops first: then the release below hands it back without
                        // counting the attempt.
                        let permit = match held.take() {
                            Some(permit) => permit,
                            None => tokio::select! {
                                () = &mut shutdown => {
                                    stop = true;
                                    break;
                                }
                                permit = permits.clone().acquire_owned() => match permit {
                                    Ok(permit) => permit,
                                    Err(_) => break,
                                },
                            },
                        };
                        running.spawn(execute(inner.clone(), job, permit));
                    }
                    held = None;
                    if stop {
                        break;
                    }
                    if backlog && permits.available_permits() > 0 {
                        continue;
                    }
                    backlog
                }
                Err(error) => {
                    held = None;
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "cannot claim outbox jobs"
                    );
                    false
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = announcer.woken() => {}
                () = tokio::time::sleep_until(inner.context.lease.next_look(inner.config.poll_interval)) => {}
                // A slot freed by a claimed job or by a request's own: claim the next ones.
                permit = permits.clone().acquire_owned(), if backlog => held = permit.ok(),
            }
        }

        inner.stopping.store(true, Ordering::Relaxed);
        inner.claimed.notify_waiters();
        inner.stopped.notify_waiters();
        listener.abort();
        broadcaster.abort();
        drop(held);
        let slots = u32::try_from(inner.config.concurrency.max(1)).unwrap_or(u32::MAX);
        // Claimed jobs first: they may still start background ones, which may start more (a
        // dispatch's webhook attempts): each set is waited for until one comes back empty.
        let mut background = JoinSet::new();
        let drained = tokio::time::timeout(inner.config.shutdown_grace, async {
            while running.join_next().await.is_some() {}
            loop {
                // A request that took room before the stop may still commit its job and run
                // it after the sets above came back empty (released below, it would wait out
                // its lease elsewhere): every slot back means no such job is left to come.
                drop(permits.acquire_many(slots).await);
                background = inner.context.lease.take_background();
                if background.is_empty() {
                    break;
                }
                while background.join_next().await.is_some() {}
            }
        })
        .await;
        if drained.is_err() {
            running.abort_all();
            while running.join_next().await.is_some() {}
            // Tasks still running may spawn more until they are aborted: until none is left.
            loop {
                background.abort_all();
                while background.join_next().await.is_some() {}
                background = inner.context.lease.take_background();
                if background.is_empty() {
                    break;
                }
            }
        }
        // Successes still waiting to be written go in before the release, which would
        // otherwise hand those jobs back to run again.
        let _ = stop_finisher.send(());
        let _ = finisher.await;
        let now = inner.context.clock.now();
        let owner = &inner.context.lease.owner;
        match db::connection(&inner.context.pool).await {
            Ok(mut connection) => match store::release(&mut connection, owner, now).await {
                Ok(0) => {}
                Ok(released) => {
                    tracing::info!(released, "released unfinished outbox jobs");
                    // Due now, and the broadcaster is gone: other instances would find them
                    // only at their next poll.
                    drop(connection);
                    if let Err(error) = announcer.notify(&inner.context.pool).await {
                        tracing::warn!(%error, "cannot announce the released outbox jobs; other instances find them at their next poll");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot release outbox jobs; their leases will expire")
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot release outbox jobs; their leases will expire")
            }
        }
    }
}

/// Claims up to `limit` jobs: first, when `look_for_expired`, jobs whose lease expired, then
/// due pending ones.
async fn claim(
    inner: &Inner,
    limit: usize,
    look_for_expired: bool,
) -> Result<Vec<ClaimedJob>, db::DbError> {
    let lease = &inner.context.lease;
    let now = inner.context.clock.now();
    // The lease runs from `now`, before the wait for a connection and the claim itself.
    let claimed_at = Instant::now();
    let until = lease.until(now);
    let mut connection = db::connection(&inner.context.pool).await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut jobs = Vec::new();
    if look_for_expired {
        jobs = store::claim_expired(&mut connection, &lease.owner, now, until, limit).await?;
    }
    let left = limit - i64::try_from(jobs.len()).unwrap_or(limit);
    if left > 0 {
        match store::claim(&mut connection, &lease.owner, now, until, left).await {
            Ok(pending) => jobs.extend(pending),
            // The expired jobs are ours already (committed, an attempt counted): dropped here,
            // they would wait out a second lease and be charged another attempt.
            Err(error) if !jobs.is_empty() => {
                tracing::warn!(error = %error, "claiming pending outbox jobs failed; running the expired ones claimed");
            }
            Err(error) => return Err(error.into()),
        }
    }
    for job in &mut jobs {
        job.claimed_at = claimed_at;
    }
    Ok(jobs)
}

#[tracing::instrument(skip_all, fields(job_id = %job.id, kind = %job.kind, attempt = job.attempts, request_id = ?job.request_id))]
pub(super) async fn execute(inner: Arc<Inner>, job: ClaimedJob, _permit: OwnedSemaphorePermit) {
    let started = Instant::now();
    let result = match inner.registry.get(&job.kind) {
        // Not the job's fault: during a rolling deploy, an instance of the previous version
        // meets the kinds the next one added. Counting attempts here would dead-letter the job
        // before an instance that knows it claims it.
        None => {
            tracing::warn!(
                after_seconds = UNKNOWN_KIND_DELAY.as_secs(),
                "no handler for this job kind on this instance; handed back"
            );
            Err(JobError::Defer {
                after: UNKNOWN_KIND_DELAY,
            })
        }
        // Claimed again after the lease of its last attempt expired, and of the one run it is
        // given after that (in case only its outcome was lost): those runs stopped the process
        // or outran the lease (an out-of-memory kill, a hang). Run again, it would do so each
        // lease period for ever, never dead-lettered.
        Some(_) if job.attempts > job.max_attempts.saturating_add(1) => {
            Err(JobError::Permanent(format!(
                "the lease of its last attempt ({} of {}) expired twice before it ended",
                job.max_attempts, job.max_attempts
            )))
        }
        Some(handler) => match time_left(inner.config.lease, job.claimed_at.elapsed()) {
            None => {
                tracing::info!(
                    "outbox job waited for a slot until its lease ran short; handed back"
                );
                Err(JobError::Defer {
                    after: Duration::ZERO,
                })
            }
            Some(limit) => {
                // A panic is a failed attempt, retried and in the end dead-lettered like any
                // other; unwinding the job's task would leave it running until its lease expired.
                let run = AssertUnwindSafe(handler.run(&job, &inner.context)).catch_unwind();
                match tokio::time::timeout(limit, run).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(panic)) => Err(JobError::retry(format!(
                        "the handler panicked: {}",
                        panic_message(panic.as_ref())
                    ))),
                    Err(_) => Err(JobError::retry(format!(
                        "timed out after {:.1} s",
                        started.elapsed().as_secs_f64()
                    ))),
                }
            }
        },
    };
    conclude(&inner.context, &job, result, started).await;
}

/// How long a job of a kind this instance has no handler for is set aside, its attempt not
/// counted: long enough that instances without it do not claim it over and over, short enough
/// that one that has it soon runs it.
const UNKNOWN_KIND_DELAY: Duration = Duration::from_secs(30);

/// How long a job claimed `since_claim` ago may still run: until 90 % of its lease, so that no
/// other worker claims it again meanwhile (the lease counts from the claim, and a claimed job
/// may have waited for a slot before it started). `None` when less than a tenth of the lease
/// is left before that cut-off: too little to be worth an attempt that would likely be cut off
/// and counted, so the job is handed back instead, its attempt not counted.
fn time_left(lease: Duration, since_claim: Duration) -> Option<Duration> {
    let left = lease.mul_f64(0.9).saturating_sub(since_claim);
    (left >= lease / 10).then_some(left)
}

/// What a panic said, when it said it as text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The longest a job is put off in one step. Delays come from bounded schedules and from
/// `Retry-After` (capped where it is read); this keeps any other from overflowing a timestamp.
const MAX_JOB_DELAY: Duration = Duration::from_secs(30 * 24 * 60 * 60);

fn later(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(delay.min(MAX_JOB_DELAY)).unwrap_or_default()
}

/// Turns a handler's result into the job's outcome (retry with backoff, dead-letter after the
/// kind's last attempt), counts it, and records it under the worker's lease.
pub(super) async fn conclude(
    context: &JobContext,
    job: &ClaimedJob,
    result: Result<(), JobError>,
    started: Instant,
) {
    let lease = &context.lease;
    let now = context.clock.now();
    let outcome = match result {
        Ok(()) => Outcome::Succeeded,
        Err(JobError::Permanent(error)) => Outcome::Dead { error },
        Err(JobError::Defer { after }) => {
            lease.wake_after(after);
            Outcome::Deferred {
                at: later(now, after),
            }
        }
        Err(JobError::Retry { message, .. }) if job.attempts >= job.max_attempts => {
            Outcome::Dead { error: message }
        }
        Err(JobError::Retry { message, after }) => {
            let delay = retry_delay(lease.backoff, job.attempts, after);
            Outcome::RetryAt {
                at: later(now, delay),
                error: message,
            }
        }
    };
    let labels = [
        ("kind", job.kind.clone()),
        ("outcome", outcome.label().to_owned()),
    ];
    metrics::histogram!(telemetry::JOB_DURATION, &labels).record(started.elapsed());
    metrics::counter!(telemetry::JOB_RUNS, &labels).increment(1);
    match &outcome {
        Outcome::Succeeded => tracing::debug!("outbox job succeeded"),
        Outcome::Deferred { at } => tracing::debug!(%at, "outbox job deferred"),
        Outcome::RetryAt { at, error } => tracing::info!(%at, error, "outbox job failed; retrying"),
        Outcome::Dead { error } => tracing::warn!(error, "outbox job dead-lettered"),
    }
    let batched = match &outcome {
        Outcome::Succeeded => Some(Batched::Succeeded(job.id, job.lease_until)),
        Outcome::Deferred { at } => Some(Batched::Deferred(job.id, job.lease_until, *at)),
        Outcome::RetryAt { .. } | Outcome::Dead { .. } => None,
    };
    if let Some(batched) = batched
        && lease.batched.send(batched).is_ok()
    {
        return;
    }
    // Boxed: this rarer path's state is most of the future's size, and the first attempts the
    // fan-out makes hold that size while they wait for their success to be written.
    let queued = Box::pin(async {
        let mut connection = db::connection(&context.pool).await?;
        match &outcome {
            Outcome::Dead { error } => {
                record_dead(context, &mut connection, job, now, &outcome, error).await
            }
            _ => store::finish(&mut connection, job, &lease.owner, now, &outcome)
                .await
                .map(|_| false),
        }
        .map_err(db::DbError::from)
    })
    .await;
    match queued {
        Ok(true) => context.jobs_queued(),
        Ok(false) => {}
        Err(error) => tracing::warn!(
            error = &error as &dyn std::error::Error,
            "cannot record the job outcome; its lease will expire and it will run again"
        ),
    }
}

/// Records a job dead and, in the same transaction, lets its handler end what the job was
/// doing (see [`super::JobHandler::dead_lettered`]): committed apart, a process that stopped
/// between the two would leave that work shown as under way for good, with no job left to end
/// it. The handler runs in a savepoint, so that its failing leaves the job dead all the same.
/// Answers whether the handler queued jobs.
async fn record_dead(
    context: &JobContext,
    connection: &mut AsyncPgConnection,
    job: &ClaimedJob,
    now: DateTime<Utc>,
    outcome: &Outcome,
    error: &str,
) -> QueryResult<bool> {
    let handler = context
        .worker
        .upgrade()
        .and_then(|inner| inner.registry.get(&job.kind));
    let owner = &context.lease.owner;
    connection
        .transaction(async |connection| {
            let recorded = store::finish(connection, job, owner, now, outcome).await?;
            let Some(handler) = handler.filter(|_| recorded) else {
                return Ok(false);
            };
            let ended = connection
                .transaction(async |connection| {
                    handler
                        .dead_lettered(job, error, connection, context.clock.now())
                        .await
                })
                .await;
            Ok(ended.unwrap_or_else(|error: diesel::result::Error| {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "cannot end the work of a dead-lettered job; its records show it under way"
                );
                false
            }))
        })
        .await
}

/// Writes successes and deferrals in batches: whatever finished while the previous batch was
/// being written goes in the next one, so a busy worker spends one statement on many jobs and
/// an idle one adds no delay. After `stop`, writes what is queued and ends.
async fn record_batches(
    inner: Arc<Inner>,
    mut finished: mpsc::UnboundedReceiver<Batched>,
    stop: oneshot::Receiver<()>,
) {
    const MOST_PER_BATCH: usize = 512;
    let mut batch = Vec::with_capacity(MOST_PER_BATCH);
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            received = finished.recv_many(&mut batch, MOST_PER_BATCH) => {
                if received == 0 {
                    break;
                }
            }
            _ = &mut stop, if !stopping => {
                // The worker's context holds a sender too; closing lets the queue run dry.
                finished.close();
                stopping = true;
                continue;
            }
        }
        let now = inner.context.clock.now();
        let owner = &inner.context.lease.owner;
        let mut succeeded = Vec::new();
        let mut deferred = Vec::new();
        for outcome in batch.drain(..) {
            match outcome {
                Batched::Succeeded(id, claimed_until) => succeeded.push((id, claimed_until)),
                Batched::Deferred(id, claimed_until, at) => deferred.push((id, claimed_until, at)),
            }
        }
        let recorded = async {
            let mut connection = db::connection(&inner.context.pool).await?;
            if !succeeded.is_empty() {
                store::finish_succeeded(&mut connection, &succeeded, owner, now).await?;
            }
            if !deferred.is_empty() {
                store::finish_deferred(&mut connection, &deferred, owner, now).await?;
            }
            Ok::<_, db::DbError>(())
        }
        .await;
        if let Err(error) = recorded {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                jobs = succeeded.len() + deferred.len(),
                "cannot record finished jobs; their leases will expire and they will run again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{DueTimes, time_left};

    #[test]
    fn every_set_aside_job_is_looked_for_when_it_comes_due() {
        let mut due = DueTimes::default();
        let now = due.origin;
        let (second, poll) = (Duration::from_secs(1), Duration::from_secs(3600));
        assert!(due.add(now + second));
        assert!(!due.add(now + 3 * second), "not the earliest");
        assert_eq!(due.next_look(now, poll), now + second);
        let later = now + Duration::from_millis(1100);
        assert_eq!(
            due.next_look(later, poll),
            now + 3 * second,
            "the later one is not forgotten once the first has come"
        );
        let last = now + Duration::from_millis(3100);
        assert_eq!(due.next_look(last, poll), last + poll);
    }

    #[test]
    fn due_times_within_a_step_are_one_look_never_early() {
        let mut due = DueTimes::default();
        let now = due.origin;
        for millis in 1001..=1009 {
            due.add(now + Duration::from_millis(millis));
        }
        assert_eq!(due.times.len(), 1);
        let poll = Duration::from_secs(3600);
        assert_eq!(
            due.next_look(now, poll),
            now + Duration::from_millis(1010),
            "at the end of the step, after every time in it"
        );
    }

    #[test]
    fn a_job_runs_until_nine_tenths_of_its_lease_from_its_claim_and_not_on_the_last_tenth() {
        let lease = Duration::from_secs(60);
        assert_eq!(
            time_left(lease, Duration::ZERO),
            Some(Duration::from_secs(54))
        );
        assert_eq!(
            time_left(lease, Duration::from_secs(20)),
            Some(Duration::from_secs(34)),
            "the wait for a slot counts"
        );
        assert_eq!(
            time_left(lease, Duration::from_secs(48)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(time_left(lease, Duration::from_millis(48_001)), None);
        assert_eq!(time_left(lease, Duration::from_secs(90)), None);
    }
}
