//! The `webhook.deliver` job: one attempt of one delivery, its record, and what comes next.
//!
//! Policy: success is a 2xx within the timeout. A failure is retried on the configured schedule
//! (by default immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), with up to 10 %
//! jitter and never sooner than a `Retry-After` the receiver sent with 429 or 503; after the
//! last attempt the delivery is failed. A 410 Gone disables the endpoint at once; so does a
//! failure when every delivery has failed for the whole failure window (5 days by default),
//! a streak that a day and some of quiet ends (see [`DeliveryPolicy::streak_gap`]).
//! Both emit `webhook.endpoint_disabled`. A delivery whose endpoint is disabled is skipped and
//! can be recovered later.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchbord_telemetry as telemetry;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::model::{AttemptRow, DeliveryRow, EndpointRow};
use super::resume::Resumes;
use super::sender::{AttemptResult, MAX_RETRY_AFTER, Sender};
use super::success_log::SuccessLog;
use crate::access::Caller;
use crate::audit::{self, AuditRecord};
use crate::config_watch::ConfigWatch;
use crate::db::{self, prepared};
use crate::events::types::WEBHOOK_ENDPOINT_DISABLED;
use crate::events::{EventDraft, StoredEvent, record};
use crate::outbox::{
    self, BoxFuture, ClaimedJob, JobContext, JobError, JobHandler, JobKind, NewJob, RetryDelay,
};
use crate::request::RequestId;
use crate::schema::{events, webhook_attempts, webhook_deliveries, webhook_endpoints};

pub const DELIVER_JOB: JobKind = JobKind {
    name: "webhook.deliver",
    // The handler follows the delivery schedule and ends the job itself; this is a backstop.
    max_attempts: 100,
};

/// The job that makes one attempt of `delivery`. The endpoint travels along so that the jobs
/// of a saturated slow endpoint can be parked together (see [`DeliverHandler`]).
pub fn deliver_job(delivery: Uuid, endpoint: Uuid) -> NewJob {
    NewJob::new(
        DELIVER_JOB,
        json!({"delivery_id": delivery, "endpoint_id": endpoint}),
        None,
    )
}

/// Delivery policy, from configuration.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Delay before each attempt; the first is normally zero. Its length is the attempt count.
    pub schedule: Vec<Duration>,
    /// An endpoint whose deliveries all fail for this long is disabled.
    pub disable_after: Duration,
    /// Deliveries in flight to one endpoint that answers quickly.
    pub per_endpoint_concurrency: usize,
    /// Deliveries in flight to one endpoint whose last attempt was slow or timed out, so that a
    /// hanging receiver holds only this many workers.
    pub slow_endpoint_concurrency: usize,
    /// An attempt that takes longer than this marks its endpoint slow.
    pub slow_attempt: Duration,
    /// How long the waiting deliveries of a slow endpoint that has no free slot are set aside,
    /// at first. The longer the endpoint stays slow, the longer they wait, up to
    /// `slow_park_max`: a hanging receiver takes a few deliveries per timeout at most, and
    /// claiming its backlog every few seconds would cost the healthy endpoints.
    pub slow_park: Duration,
    pub slow_park_max: Duration,
    /// Delivered attempts whose success may wait in memory to be written (see [`SuccessLog`]);
    /// beyond it, new deliveries wait for the database rather than pile up.
    pub success_backlog: usize,
}

impl DeliveryPolicy {
    /// How long after its last failure an endpoint's failing streak ends: longer than any wait
    /// between two attempts of one delivery (the schedule's longest step, or the longest
    /// `Retry-After` honoured, with jitter), so that a delivery still being retried keeps the
    /// streak going, while a first failure after days of quiet starts a new one.
    pub fn streak_gap(&self) -> Duration {
        let longest = self
            .schedule
            .iter()
            .copied()
            .max()
            .unwrap_or_default()
            .max(MAX_RETRY_AFTER);
        longest.mul_f64(1.1) + Duration::from_secs(3600)
    }
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            schedule: vec![
                Duration::ZERO,
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
            ],
            disable_after: Duration::from_secs(5 * 24 * 3600),
            per_endpoint_concurrency: 16,
            slow_endpoint_concurrency: 2,
            slow_attempt: Duration::from_secs(1),
            slow_park: Duration::from_secs(2),
            slow_park_max: Duration::from_secs(30),
            success_backlog: 1024,
        }
    }
}

/// How long a delivery waits when every slot of its endpoint is taken.
const BUSY_WAIT: Duration = Duration::from_millis(200);

/// How long a job waits for the success log to catch up before it is put back, and for how
/// long (see [`Deliverer::successes_caught_up`]).
const BACKLOG_WAIT: Duration = Duration::from_secs(5);
const BACKLOG_RETRY: Duration = Duration::from_millis(500);

/// What happens after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Done,
    /// Done, and the endpoint was disabled: its `webhook.endpoint_disabled` event's dispatch
    /// job is to be announced once committed (see [`crate::outbox::Announcer`]).
    Disabled,
    RetryAfter(Duration),
}

/// Sends deliveries and records their attempts, within each endpoint's slots and rate limit.
/// Shared by the `webhook.deliver` job and the fan-out, which makes first attempts at once.
pub struct Deliverer {
    sender: Sender,
    policy: DeliveryPolicy,
    in_flight: Mutex<HashMap<Uuid, Slots>>,
    /// Endpoints whose last attempt was slow, and since when.
    slow: Mutex<HashMap<Uuid, Instant>>,
    rate_limits: Mutex<HashMap<Uuid, RateLimit>>,
    /// When each slow endpoint's waiting jobs were last parked.
    parked: Mutex<HashMap<Uuid, Instant>>,
    /// The resume jobs of parked endpoints' new deliveries (see [`super::resume`]).
    resumes: Resumes,
    successes: SuccessLog,
    /// Told when an attempt disabled its endpoint.
    config: ConfigWatch,
}

impl Deliverer {
    pub fn new(sender: Sender, policy: DeliveryPolicy, config: ConfigWatch) -> Self {
        Self {
            sender,
            successes: SuccessLog::new(policy.success_backlog),
            policy,
            config,
            in_flight: Mutex::default(),
            slow: Mutex::default(),
            rate_limits: Mutex::default(),
            parked: Mutex::default(),
            resumes: Resumes::default(),
        }
    }

    pub(super) fn resumes(&self) -> &Resumes {
        &self.resumes
    }

    /// How many deliveries probe a slow endpoint at once: as many as its slow slots.
    pub(super) fn probes(&self) -> i64 {
        i64::try_from(self.policy.slow_endpoint_concurrency.max(1)).unwrap_or(1)
    }

    /// Returns once the successes waiting to be written are fewer than the policy's backlog.
    /// Callers wait here before they start new deliveries: while the database writes
    /// successes more slowly than receivers answer, every delivery sent meanwhile would wait in
    /// memory for its record, and under a sustained load those would grow without bound.
    /// Waiting keeps the caller's worker slot, so later jobs wait in the queue, on disk. After
    /// [`BACKLOG_WAIT`] the caller's job is put back instead (`Err(Defer)`, not an attempt):
    /// a writer stuck for longer must not use up jobs' attempts, nor hold their slots.
    pub(super) async fn successes_caught_up(&self) -> Result<(), JobError> {
        match self.successes.caught_up(BACKLOG_WAIT).await {
            true => Ok(()),
            false => Err(JobError::Defer {
                after: BACKLOG_RETRY,
            }),
        }
    }

    /// A slot for one attempt to `endpoint`, if it has one free. A slow endpoint also needs
    /// one of its few slow slots, taken in the same step, so that concurrent jobs cannot all
    /// see room and all start.
    fn try_slot(&self, endpoint: Uuid) -> Result<Slot, Full> {
        let slots = self.slots(endpoint);
        let slow = self.is_slow(endpoint);
        let full = Full { slow };
        let any = slots.any.try_acquire_owned().map_err(|_| full)?;
        let slow = match slow {
            true => Some(slots.slow.try_acquire_owned().map_err(|_| full)?),
            false => None,
        };
        Ok(Slot {
            _any: any,
            _slow: slow,
        })
    }

    /// A slot for one attempt to `endpoint`, waiting up to `wait` for one to free up. Slots go
    /// to those waiting first, in order: a delivery that waited is not overtaken by newer ones
    /// the fan-out would start at once (their [`Deliverer::admit_now`] finds no room meanwhile).
    async fn wait_for_slot(&self, endpoint: Uuid, wait: Duration) -> Option<Slot> {
        let slots = self.slots(endpoint);
        let any = tokio::time::timeout(wait, slots.any.acquire_owned())
            .await
            .ok()?
            .ok()?;
        // It may have turned slow meanwhile; then it needs one of its slow slots too.
        let slow = match self.is_slow(endpoint) {
            true => Some(slots.slow.try_acquire_owned().ok()?),
            false => None,
        };
        Some(Slot {
            _any: any,
            _slow: slow,
        })
    }

    fn slots(&self, endpoint: Uuid) -> Slots {
        let mut slots = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots
            .entry(endpoint)
            .or_insert_with(|| Slots {
                any: Arc::new(Semaphore::new(self.policy.per_endpoint_concurrency.max(1))),
                slow: Arc::new(Semaphore::new(self.policy.slow_endpoint_concurrency.max(1))),
            })
            .clone()
    }

    fn is_slow(&self, endpoint: Uuid) -> bool {
        self.slow
            .lock()
            .map(|slow| slow.contains_key(&endpoint))
            .unwrap_or(false)
    }

    /// How long `endpoint`'s waiting deliveries are set aside now: as long as it has been slow,
    /// within the policy's bounds. `None` when it is not slow.
    pub(super) fn park_length(&self, endpoint: Uuid) -> Option<Duration> {
        let since = *self.slow.lock().ok()?.get(&endpoint)?;
        Some(
            since
                .elapsed()
                .clamp(self.policy.slow_park, self.policy.slow_park_max),
        )
    }

    fn mark_slow(&self, endpoint: Uuid) {
        if let Ok(mut marked) = self.slow.lock() {
            marked.entry(endpoint).or_insert_with(Instant::now);
        }
    }

    /// Remembers whether `endpoint` answered slowly; a fast answer clears the mark.
    fn note_speed(&self, endpoint: Uuid, result: &AttemptResult) {
        let slow = result.duration >= self.policy.slow_attempt
            || result
                .error
                .as_deref()
                .is_some_and(|error| error.contains("timed out"));
        if slow {
            self.mark_slow(endpoint);
        } else if let Ok(mut marked) = self.slow.lock() {
            marked.remove(&endpoint);
        }
    }

    /// Whether this call should park `endpoint`'s waiting jobs: at most once per half park
    /// period, however many of its jobs are deferred meanwhile. `Some(mark)` when it should,
    /// the mark it left (see [`Deliverer::forget_park`]).
    fn should_park(&self, endpoint: Uuid) -> Option<Instant> {
        let now = Instant::now();
        let mut parked = self
            .parked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match parked.get(&endpoint) {
            Some(last) if now.duration_since(*last) < self.policy.slow_park / 2 => None,
            _ => {
                parked.insert(endpoint, now);
                Some(now)
            }
        }
    }

    /// Takes back the `mark` of a park that failed, unless another has parked since.
    fn forget_park(&self, endpoint: Uuid, mark: Instant) {
        let mut parked = self
            .parked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if parked.get(&endpoint) == Some(&mark) {
            parked.remove(&endpoint);
        }
    }

    /// `Some(wait)` when the endpoint's rate limit says not yet: the delivery's turn comes
    /// after `wait` (see [`RateLimit`]).
    fn rate_limited(&self, endpoint: &EndpointRow, arrival: Arrival) -> Option<Duration> {
        let per_second = endpoint
            .rate_limit_per_second
            .and_then(|rate| u32::try_from(rate).ok())
            .and_then(NonZeroU32::new)?;
        let mut limits = self
            .rate_limits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let limit = limits
            .entry(endpoint.id)
            .or_insert_with(|| RateLimit::new(per_second));
        if limit.per_second != per_second {
            *limit = RateLimit::new(per_second);
        }
        limit.admit(Instant::now(), arrival)
    }

    /// How the first attempt of a new delivery to `endpoint` can be made: at once, in a free
    /// slot, when it is not marked slow and its rate limit allows one more; after a moment's
    /// wait, when every slot is busy (its slots free as soon as its receiver answers);
    /// parked with the slow endpoint's other deliveries until its park period ends (see
    /// [`super::resume`]); otherwise after the rate limit's wait, in the queue, so that it is
    /// not claimed only to be deferred.
    pub(super) fn admit_now(&self, endpoint: &EndpointRow) -> Admission {
        if !endpoint.enabled {
            return Admission::After(Duration::ZERO);
        }
        if let Some(park) = self.park_length(endpoint.id) {
            return Admission::Parked(park);
        }
        let Ok(slot) = self.try_slot(endpoint.id) else {
            return Admission::WhenFree;
        };
        match self.rate_limited(endpoint, Arrival::New) {
            None => Admission::Now(slot),
            Some(wait) => Admission::After(wait),
        }
    }

    /// A slot of `endpoint`, whose slots were all busy, once one frees within [`BUSY_WAIT`],
    /// unless its rate limit then says not yet (`Err(Defer)`). When none frees, none of its
    /// requests in flight was answered meanwhile: it is slow, though none may have waited the
    /// full `slow_attempt` yet (a receiver that stopped answering). It is marked so, and until
    /// an answer clears the mark its waiting deliveries are parked, this one with them
    /// (`Err(Defer)`), rather than each holding a worker for the wait.
    pub(super) async fn admit_when_free(
        &self,
        endpoint: &EndpointRow,
        arrival: Arrival,
        context: &JobContext,
    ) -> Result<Slot, JobError> {
        let Some(slot) = self.wait_for_slot(endpoint.id, BUSY_WAIT).await else {
            self.mark_slow(endpoint.id);
            // Boxed, as the rare paths of `attempt` are.
            let parked = Box::pin(park(self, None, endpoint.id, context)).await?;
            return Err(JobError::Defer { after: parked });
        };
        self.unless_rate_limited(slot, endpoint, arrival)
    }

    /// `slot`, unless `endpoint`'s rate limit says not yet: then the job waits in the queue.
    fn unless_rate_limited(
        &self,
        slot: Slot,
        endpoint: &EndpointRow,
        arrival: Arrival,
    ) -> Result<Slot, JobError> {
        match self.rate_limited(endpoint, arrival) {
            None => Ok(slot),
            Some(wait) => Err(JobError::Defer { after: wait }),
        }
    }

    /// Sends one attempt of `delivery` in one of its endpoint's slots, then records it.
    /// `Err(Retry)` carries the schedule's delay before the next attempt.
    pub(super) async fn attempt(
        &self,
        slot: Slot,
        delivery: &DeliveryRow,
        endpoint: &EndpointRow,
        event: &StoredEvent,
        context: &JobContext,
    ) -> Result<(), JobError> {
        let now = context.clock.now();
        // The send and the failure's record are boxed: under load thousands of deliveries wait
        // for their success to be written (see `SuccessLog`), and each would otherwise hold
        // the size of the largest of these states, several times that of its own.
        let result = Box::pin(self.send(endpoint, event, now)).await;
        // The slot bounds requests in flight to the receiver, not our own bookkeeping.
        drop(slot);
        self.record(delivery, endpoint, result, now, context).await
    }

    /// Sends one attempt and notes how fast the endpoint answered.
    async fn send(
        &self,
        endpoint: &EndpointRow,
        event: &StoredEvent,
        now: DateTime<Utc>,
    ) -> AttemptResult {
        let sending = self.sender.send(endpoint, event, now);
        tokio::pin!(sending);
        // A receiver that has not answered within `slow_attempt` is slow already: waiting for
        // the timeout to say so would let its waiting deliveries be claimed and deferred over
        // and over meanwhile.
        let result = tokio::select! {
            result = &mut sending => result,
            () = tokio::time::sleep(self.policy.slow_attempt) => {
                self.mark_slow(endpoint.id);
                sending.await
            }
        };
        self.note_speed(endpoint.id, &result);
        result
    }

    /// Records the attempt made at `now` and what follows it.
    async fn record(
        &self,
        delivery: &DeliveryRow,
        endpoint: &EndpointRow,
        result: AttemptResult,
        now: DateTime<Utc>,
        context: &JobContext,
    ) -> Result<(), JobError> {
        if result.succeeded() {
            let row = attempt_row(delivery, &result, now);
            self.successes
                .record(&context.pool, row)
                .await
                .map_err(JobError::retry)?;
            record_metrics(&result, &Next::Done);
            return Ok(());
        }
        let next = Box::pin(async {
            let mut connection = db::connection(&context.pool).await.map_err(retry)?;
            record_attempt(
                &mut connection,
                &self.policy,
                delivery,
                endpoint,
                &result,
                now,
                true,
            )
            .await
            .map_err(retry)
        })
        .await?;
        record_metrics(&result, &next);
        match next {
            Next::Done => Ok(()),
            Next::Disabled => {
                // The fan-out on this instance stops sending to it from its next event on.
                self.config.changed();
                context.jobs_queued();
                Ok(())
            }
            Next::RetryAfter(after) => Err(JobError::Retry {
                message: result.error.unwrap_or_else(|| "delivery failed".to_owned()),
                after: RetryDelay::Exactly(after),
            }),
        }
    }
}

/// Runs `webhook.deliver` jobs: the first attempts the fan-out could not make at once, and
/// every retry.
pub struct DeliverHandler {
    deliverer: Arc<Deliverer>,
}

impl DeliverHandler {
    pub fn new(deliverer: Arc<Deliverer>) -> Self {
        Self { deliverer }
    }
}

pub(super) fn retry(error: impl std::fmt::Display) -> JobError {
    JobError::retry(error.to_string())
}

impl JobHandler for DeliverHandler {
    fn kind(&self) -> JobKind {
        DELIVER_JOB
    }

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let delivery_id = job
                .payload_id("delivery_id")
                .ok_or_else(|| JobError::Permanent("payload has no delivery_id".to_owned()))?;
            self.deliverer.successes_caught_up().await?;
            let mut connection = db::connection(&context.pool).await.map_err(retry)?;
            let found: Option<(DeliveryRow, EndpointRow, StoredEvent)> = webhook_deliveries::table
                .inner_join(webhook_endpoints::table)
                .inner_join(events::table.on(events::id.eq(webhook_deliveries::event_id)))
                .filter(webhook_deliveries::id.eq(delivery_id))
                .select((
                    DeliveryRow::as_select(),
                    EndpointRow::as_select(),
                    StoredEvent::as_select(),
                ))
                .first(&mut connection)
                .await
                .optional()
                .map_err(retry)?;
            // Deleted endpoint, or already finished (a manual retry raced this job).
            let Some((delivery, endpoint, event)) = found else {
                return Ok(());
            };
            if delivery.status != "pending" {
                return Ok(());
            }
            if !endpoint.enabled {
                mark_skipped(&mut connection, delivery.id)
                    .await
                    .map_err(retry)?;
                metrics::counter!(telemetry::WEBHOOK_DELIVERIES, "outcome" => "skipped")
                    .increment(1);
                return Ok(());
            }
            let deliverer = &*self.deliverer;
            // A slow endpoint may use only a few of its slots: the other workers stay free for
            // endpoints that answer. No connection is held across a wait or the network call.
            let slot = match deliverer.try_slot(endpoint.id) {
                Ok(slot) => {
                    drop(connection);
                    deliverer.unless_rate_limited(slot, &endpoint, Arrival::Queued)?
                }
                Err(Full { slow: false }) => {
                    // Busy, not slow: wait in line for a moment.
                    drop(connection);
                    deliverer
                        .admit_when_free(&endpoint, Arrival::Queued, context)
                        .await?
                }
                Err(Full { slow: true }) => {
                    // A slow endpoint can take only a few deliveries at a time. Deferring each
                    // of its waiting jobs by a fraction of a second would have every worker
                    // claim and defer them over and over (thousands per second behind a
                    // hanging receiver), starving healthy endpoints; instead they all wait out
                    // one park period.
                    let parked =
                        park(deliverer, Some(&mut connection), endpoint.id, context).await?;
                    return Err(JobError::Defer { after: parked });
                }
            };
            // The job's worker slot is lent back during the attempt: the endpoint's slot bounds
            // the request, and a slow receiver would otherwise hold a worker for its whole
            // timeout (2 per slow endpoint: 16 slow endpoints would stall every job of the
            // default 32 workers).
            context
                .without_worker_slot(deliverer.attempt(slot, &delivery, &endpoint, &event, context))
                .await
        })
    }

    /// A job that ran out of runs (its backstop, not the delivery's schedule: repeated
    /// database errors) would leave its delivery pending with no job and not parked (see
    /// [`super::resume`]), where neither a retry nor a recovery can reach it. It fails, and can
    /// be retried from the delivery log.
    fn dead_lettered<'a>(
        &'a self,
        job: &'a ClaimedJob,
        error: &'a str,
        connection: &'a mut AsyncPgConnection,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, QueryResult<bool>> {
        Box::pin(async move {
            if let Some(delivery) = job.payload_id("delivery_id") {
                mark_given_up(connection, delivery, error, now).await?;
            }
            Ok(false)
        })
    }
}

/// Sets aside every waiting delivery of `endpoint` for one park period (at most once per half
/// period, however many of its jobs come by meanwhile), and returns the period. On the caller's
/// connection when it holds one; otherwise on one taken from the pool only when parking: the
/// hundreds of deliveries that wait for a hanging endpoint's slot as it turns slow each come
/// by, and taking a connection each would have them queue with the healthy work for the pool.
async fn park(
    deliverer: &Deliverer,
    held: Option<&mut AsyncPgConnection>,
    endpoint: Uuid,
    context: &JobContext,
) -> Result<Duration, JobError> {
    let length = deliverer
        .park_length(endpoint)
        .unwrap_or(deliverer.policy.slow_park);
    let Some(mark) = deliverer.should_park(endpoint) else {
        return Ok(length);
    };
    let until = context.clock.now() + chrono::Duration::from_std(length).unwrap_or_default();
    let parked = async {
        let mut pooled;
        let connection = match held {
            Some(connection) => connection,
            None => {
                pooled = db::connection(&context.pool).await.map_err(retry)?;
                &mut *pooled
            }
        };
        outbox::postpone(
            connection,
            DELIVER_JOB,
            "endpoint_id",
            &endpoint.to_string(),
            until,
        )
        .await
        .map_err(retry)
    }
    .await;
    if parked.is_err() {
        // Not parked after all: the next of its jobs to come by tries again.
        deliverer.forget_park(endpoint, mark);
    }
    parked.map(|_| length)
}

/// An endpoint's rate limit on this instance, and the line of the deliveries it has turned away.
/// Each of those is given a turn of its own, one interval after the one before, and waits for
/// it in the queue: told only "not yet", they would all come back together after one interval,
/// find room for one, and the rest would be claimed and put back again, over and over, for as
/// long as the backlog lasts (a thousand waiting at 10 per second: the k-th is claimed about k
/// times, some 500,000 claims in all).
struct RateLimit {
    per_second: NonZeroU32,
    limiter: DefaultDirectRateLimiter,
    /// The first turn not yet given out; in the past while nobody waits.
    next_turn: Instant,
}

/// Where a delivery comes from when it asks its endpoint's rate limit (see [`RateLimit::admit`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Arrival {
    /// A new delivery, from the fan-out.
    New,
    /// A queued job: one whose turn has come, or a retry.
    Queued,
}

impl RateLimit {
    fn new(per_second: NonZeroU32) -> Self {
        Self {
            per_second,
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
            next_turn: Instant::now(),
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.per_second.get()
    }

    /// `None` when the delivery may go now; otherwise how long until its turn. A new delivery
    /// joins the line while there is one, so that it does not take the room a waiting one's
    /// turn counts on; a queued one (its turn come) takes the room there is.
    fn admit(&mut self, now: Instant, arrival: Arrival) -> Option<Duration> {
        let line_waiting = self.next_turn > now;
        if !(arrival == Arrival::New && line_waiting) && self.limiter.check().is_ok() {
            return None;
        }
        let interval = self.interval();
        let turn = self.next_turn.max(now + interval);
        self.next_turn = turn + interval;
        Some(turn - now)
    }
}

/// An endpoint's slots: any attempt takes one of `any`; an attempt to a slow endpoint also one
/// of `slow`.
#[derive(Clone)]
struct Slots {
    any: Arc<Semaphore>,
    slow: Arc<Semaphore>,
}

/// What an attempt holds while it runs.
pub(super) struct Slot {
    _any: OwnedSemaphorePermit,
    _slow: Option<OwnedSemaphorePermit>,
}

/// How a new delivery's first attempt can be made (see [`Deliverer::admit_now`]).
pub(super) enum Admission {
    /// At once, in this slot.
    Now(Slot),
    /// As soon as a slot of the busy endpoint frees ([`Deliverer::admit_when_free`]).
    WhenFree,
    /// By the queue, after this long.
    After(Duration),
    /// Parked, with no job of its own, for this long at least: its endpoint is slow.
    Parked(Duration),
}

/// No slot was free; `slow` when the endpoint is marked slow.
#[derive(Debug, Clone, Copy)]
struct Full {
    slow: bool,
}

/// Counts the attempt by what it led to, and times it.
pub(super) fn record_metrics(result: &AttemptResult, next: &Next) {
    let outcome = match (result.succeeded(), next) {
        (true, _) => "delivered",
        (false, Next::RetryAfter(_)) => "retrying",
        (false, Next::Done | Next::Disabled) => "failed",
    };
    metrics::counter!(telemetry::WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
    let label = if result.succeeded() {
        "success"
    } else {
        "failure"
    };
    metrics::histogram!(telemetry::WEBHOOK_ATTEMPT_DURATION, "result" => label)
        .record(result.duration);
}

async fn mark_skipped(connection: &mut AsyncPgConnection, delivery: Uuid) -> QueryResult<()> {
    // Only a delivery still waiting: one another run has ended keeps its outcome.
    diesel::update(
        webhook_deliveries::table
            .find(delivery)
            .filter(webhook_deliveries::status.eq("pending")),
    )
    .set((
        webhook_deliveries::status.eq("skipped"),
        webhook_deliveries::last_error.eq("endpoint disabled"),
        webhook_deliveries::updated_at.eq(Utc::now()),
    ))
    .execute(connection)
    .await
    .map(drop)
}

/// Fails `delivery` if it still waits: its job was dead-lettered with `error`.
async fn mark_given_up(
    connection: &mut AsyncPgConnection,
    delivery: Uuid,
    error: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(
        webhook_deliveries::table
            .find(delivery)
            .filter(webhook_deliveries::status.eq("pending")),
    )
    .set((
        webhook_deliveries::status.eq("failed"),
        webhook_deliveries::last_error.eq(format!("its job gave up: {error}")),
        webhook_deliveries::updated_at.eq(now),
    ))
    .execute(connection)
    .await
    .map(drop)
}

/// Stores the attempt and its consequences in one transaction. With `retries` off (a test
/// send), a failure ends the delivery at once.
pub async fn record_attempt(
    connection: &mut AsyncPgConnection,
    policy: &DeliveryPolicy,
    delivery: &DeliveryRow,
    endpoint: &EndpointRow,
    result: &AttemptResult,
    now: DateTime<Utc>,
    retries: bool,
) -> QueryResult<Next> {
    let attempt = delivery.attempts + 1;
    let row = attempt_row(delivery, result, now);
    if result.succeeded() {
        return record_successes(connection, std::slice::from_ref(&row))
            .await
            .map(|()| Next::Done);
    }
    let recorded = connection
        .transaction(async |connection| {
            // The endpoint is locked before the delivery, as in `record_successes`.
            let streak_ended = chrono::Duration::from_std(policy.streak_gap())
                .ok()
                .and_then(|gap| now.checked_sub_signed(gap))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let Some(failing) = mark_failing(connection, endpoint, now, streak_ended).await? else {
                // Deleted meanwhile, with its deliveries.
                return Ok(Next::Done);
            };
            let (status, disable_reason, next) = {
                let window = chrono::Duration::from_std(policy.disable_after)
                    .unwrap_or(chrono::Duration::MAX);
                // Changed since the attempt was sent (moved, enabled again): its answer says
                // nothing of the endpoint now, and the delivery is retried as after any failure.
                let disable_reason = match failing {
                    Failing::Changed => None,
                    Failing::Since(_) if result.status_code == Some(410) => {
                        Some("the receiver answered 410 Gone".to_owned())
                    }
                    Failing::Since(since) if now - since >= window => Some(format!(
                        "every delivery failed since {}",
                        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )),
                    Failing::Since(_) => None,
                };
                match disable_reason {
                    Some(reason) => ("failed", Some(reason), Next::Disabled),
                    None if !retries => ("failed", None, Next::Done),
                    None => match policy
                        .schedule
                        .get(usize::try_from(attempt).unwrap_or(usize::MAX))
                    {
                        None => ("failed", None, Next::Done),
                        Some(delay) => {
                            let jittered = delay.mul_f64(rand::rng().random_range(1.0..1.1));
                            let after = result
                                .retry_after
                                .map_or(jittered, |asked| asked.max(jittered));
                            ("pending", None, Next::RetryAfter(after))
                        }
                    },
                }
            };
            // Only the attempt the delivery is waiting for is recorded: a run whose lease ran
            // out (another took over and may have succeeded) must not set it back to pending.
            let updated = diesel::update(
                webhook_deliveries::table
                    .find(delivery.id)
                    .filter(webhook_deliveries::status.eq("pending"))
                    .filter(webhook_deliveries::attempts.eq(delivery.attempts)),
            )
            .set((
                webhook_deliveries::status.eq(status),
                webhook_deliveries::attempts.eq(attempt),
                webhook_deliveries::last_status_code.eq(result.status_code.map(i32::from)),
                webhook_deliveries::last_error.eq(&result.error),
                webhook_deliveries::updated_at.eq(now),
            ))
            .execute(connection)
            .await?;
            if updated == 0 {
                return Err(diesel::result::Error::RollbackTransaction);
            }
            diesel::insert_into(webhook_attempts::table)
                .values(&row)
                .execute(connection)
                .await?;
            if let Some(reason) = disable_reason {
                disable(connection, endpoint, &reason, now).await?;
            }
            Ok(next)
        })
        .await;
    match recorded {
        Err(diesel::result::Error::RollbackTransaction) => {
            tracing::info!(
                delivery_id = %delivery.id,
                attempt,
                "attempt not recorded: the delivery moved on meanwhile"
            );
            if retries {
                still_waiting(connection, policy, delivery).await
            } else {
                Ok(Next::Done)
            }
        }
        other => other,
    }
}

/// What the job of a delivery whose attempt another run recorded first does next. That run's
/// lease had run out (its job's outcome is not kept): a delivery it left pending, with more
/// attempts than this run found, is retried by this job on the schedule of those attempts, or
/// it would wait with no job forever. One with fewer was retried by an operator, whose retry
/// has a job of its own.
async fn still_waiting(
    connection: &mut AsyncPgConnection,
    policy: &DeliveryPolicy,
    delivery: &DeliveryRow,
) -> QueryResult<Next> {
    let pending_attempts: Option<i32> = webhook_deliveries::table
        .find(delivery.id)
        .filter(webhook_deliveries::status.eq("pending"))
        .filter(webhook_deliveries::attempts.gt(delivery.attempts))
        .select(webhook_deliveries::attempts)
        .first(connection)
        .await
        .optional()?;
    let delay = pending_attempts
        .and_then(|attempts| usize::try_from(attempts).ok())
        .and_then(|attempts| policy.schedule.get(attempts));
    Ok(delay.map_or(Next::Done, |delay| {
        Next::RetryAfter(delay.mul_f64(rand::rng().random_range(1.0..1.1)))
    }))
}

/// The record of an attempt of `delivery` made at `now`.
pub(super) fn attempt_row(
    delivery: &DeliveryRow,
    result: &AttemptResult,
    now: DateTime<Utc>,
) -> AttemptRow {
    AttemptRow {
        id: Uuid::now_v7(),
        delivery_id: delivery.id,
        endpoint_id: delivery.endpoint_id,
        attempt: delivery.attempts + 1,
        attempted_at: now,
        status_code: result.status_code.map(i32::from),
        duration_ms: i64::try_from(result.duration.as_millis()).unwrap_or(i64::MAX),
        response_excerpt: result.excerpt.clone(),
        error: result.error.clone(),
        succeeded: result.succeeded(),
    }
}

/// What a failed attempt finds of its endpoint ([`mark_failing`]).
enum Failing {
    /// Failing since then (from now on, unless it was failing already).
    Since(DateTime<Utc>),
    /// Changed since the attempt was sent (moved to another URL, enabled again by an operator
    /// after a disable, edited): the failure says nothing of the endpoint as it is now.
    Changed,
}

/// Since when `endpoint` has been failing: from now on, unless it was failing already, with a
/// failure after `streak_ended` (see [`DeliveryPolicy::streak_gap`]). Read
/// from its row, not from the caller's copy, which may be older than another attempt's failure
/// or success (the fan-out's endpoints are cached; see [`crate::config_watch`]). The row is
/// written only when it starts failing, and only while it is as the attempt found it (its URL
/// and its last change, `updated_at`, compared for equality: instances' clocks differ); it is
/// locked against deletion until the transaction ends. `None` when the endpoint is gone.
async fn mark_failing(
    connection: &mut AsyncPgConnection,
    endpoint: &EndpointRow,
    now: DateTime<Utc>,
    streak_ended: DateTime<Utc>,
) -> QueryResult<Option<Failing>> {
    use diesel::sql_types::{Nullable, Text, Timestamptz, Uuid as SqlUuid};

    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        failing_since: Option<DateTime<Utc>>,
        #[diesel(sql_type = Text)]
        url: String,
        #[diesel(sql_type = Timestamptz)]
        updated_at: DateTime<Utc>,
    }

    // Another failure may have started the window since it was read: COALESCE keeps the
    // earlier start. A window with no failure since `streak_ended` (no traffic, the last
    // delivery's schedule ran out) starts again: the endpoint may have been mended meanwhile,
    // and its first failure after days of quiet is not days of failing.
    let found = prepared(
        diesel::sql_query(
            "WITH locked AS (
             SELECT id, failing_since, url, updated_at FROM webhook_endpoints WHERE id = $1 FOR KEY SHARE
         ), started AS (
             UPDATE webhook_endpoints AS e
                SET failing_since = CASE WHEN locked.failing_since IS NULL
                                         THEN COALESCE(e.failing_since, $2) ELSE $2 END
             FROM locked
             WHERE e.id = locked.id AND locked.url = $3 AND locked.updated_at = $4
               AND (locked.failing_since IS NULL
                    OR NOT EXISTS (SELECT 1 FROM webhook_attempts AS a
                                    WHERE a.endpoint_id = locked.id AND NOT a.succeeded
                                      AND a.attempted_at > $5))
             RETURNING e.failing_since
         )
         SELECT COALESCE((SELECT failing_since FROM started), locked.failing_since) AS failing_since,
                locked.url, locked.updated_at
           FROM locked",
        )
        .bind::<SqlUuid, _>(endpoint.id)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(&endpoint.url)
        .bind::<Timestamptz, _>(endpoint.updated_at)
        .bind::<Timestamptz, _>(streak_ended),
    )
    .get_result::<Found>(connection)
    .await
    .optional()?;
    Ok(found.map(|found| match found.failing_since {
        Some(since) if found.url == endpoint.url && found.updated_at == endpoint.updated_at => {
            Failing::Since(since)
        }
        _ => Failing::Changed,
    }))
}

/// Stores successful attempts and marks their deliveries succeeded, and their endpoints no
/// longer failing, in one statement: one round trip with no BEGIN/COMMIT, however many
/// deliveries there are. An endpoint that was not failing is only locked, not written.
///
/// Locks follow the order every writer of these tables keeps, the endpoint before its
/// deliveries (deleting an endpoint locks it, then its deliveries through the cascade). Locking
/// a delivery first and then its endpoint, as the foreign key check of the attempt did,
/// deadlocked with a delete. A delivery deleted meanwhile (with its endpoint) gets no attempt.
pub(super) async fn record_successes(
    connection: &mut AsyncPgConnection,
    rows: &[AttemptRow],
) -> QueryResult<()> {
    use diesel::sql_types::{Array, Int4, Int8, Nullable, Text, Timestamptz, Uuid as SqlUuid};
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let deliveries: Vec<Uuid> = rows.iter().map(|row| row.delivery_id).collect();
    let endpoints: Vec<Uuid> = rows.iter().map(|row| row.endpoint_id).collect();
    let attempts: Vec<i32> = rows.iter().map(|row| row.attempt).collect();
    let attempted_at: Vec<DateTime<Utc>> = rows.iter().map(|row| row.attempted_at).collect();
    let status_codes: Vec<Option<i32>> = rows.iter().map(|row| row.status_code).collect();
    let durations: Vec<i64> = rows.iter().map(|row| row.duration_ms).collect();
    let excerpts: Vec<&str> = rows
        .iter()
        .map(|row| row.response_excerpt.as_str())
        .collect();
    prepared(
        diesel::sql_query(
            "WITH locked AS (
             -- The endpoints first, in one order: see the function's comment.
             SELECT id, failing_since IS NOT NULL AS failing FROM webhook_endpoints
             WHERE id = ANY($3)
             ORDER BY id
             FOR KEY SHARE
         ), recovered AS (
             UPDATE webhook_endpoints SET failing_since = NULL
             WHERE id IN (SELECT id FROM locked WHERE failing)
         ), succeeded AS (
             -- The condition on `locked` is a one-time filter, evaluated before the first
             -- delivery is locked.
             UPDATE webhook_deliveries AS d
             SET status = 'succeeded', attempts = a.attempt, last_status_code = a.status_code,
                 last_error = NULL, updated_at = a.attempted_at
             FROM unnest($2, $4, $6, $5) AS a (delivery_id, attempt, status_code, attempted_at)
             WHERE d.id = a.delivery_id AND (SELECT count(*) FROM locked) >= 0
             RETURNING d.id
         )
         INSERT INTO webhook_attempts (id, delivery_id, endpoint_id, attempt, attempted_at,
             status_code, duration_ms, response_excerpt, error, succeeded)
         SELECT id, delivery_id, endpoint_id, attempt, attempted_at, status_code,
             duration_ms, response_excerpt, NULL, true
         FROM unnest($1, $2, $3, $4, $5, $6, $7, $8)
             AS a (id, delivery_id, endpoint_id, attempt, attempted_at, status_code,
                   duration_ms, response_excerpt)
         WHERE delivery_id IN (SELECT id FROM succeeded)",
        )
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<SqlUuid>, _>(deliveries)
        .bind::<Array<SqlUuid>, _>(endpoints)
        .bind::<Array<Int4>, _>(attempts)
        .bind::<Array<Timestamptz>, _>(attempted_at)
        .bind::<Array<Nullable<Int4>>, _>(status_codes)
        .bind::<Array<Int8>, _>(durations)
        .bind::<Array<Text>, _>(excerpts),
    )
    .execute(connection)
    .await
    .map(drop)
}

/// Disables `endpoint` with `reason` and emits `webhook.endpoint_disabled`, unless it is
/// disabled already (many attempts in flight can fail at once, 16 answers of 410, and an
/// operator's disable keeps its own reason), or its URL changed since the attempt was sent:
/// the old URL's 410 says nothing of the new one.
async fn disable(
    connection: &mut AsyncPgConnection,
    endpoint: &EndpointRow,
    reason: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    // Only the endpoint as the attempt found it (as `mark_failing` checked it, again here in
    // case it changed since): an operator's enable since then answers the failures before it.
    let disabled = diesel::update(
        webhook_endpoints::table
            .find(endpoint.id)
            .filter(webhook_endpoints::enabled)
            .filter(webhook_endpoints::url.eq(&endpoint.url))
            .filter(webhook_endpoints::updated_at.eq(endpoint.updated_at)),
    )
    .set((
        webhook_endpoints::enabled.eq(false),
        webhook_endpoints::disabled_reason.eq(reason),
        webhook_endpoints::updated_at.eq(now),
    ))
    .execute(connection)
    .await?;
    if disabled == 0 {
        return Ok(());
    }
    // A configuration change like an operator's disable, made by the service itself.
    let actor = Caller::system(DELIVER_JOB.name);
    let entry = AuditRecord::by(
        RequestId(Uuid::new_v4()),
        &actor,
        "webhook_endpoint.disable",
        "webhook_endpoint",
    )
    .target(endpoint.id)
    .changing(&["enabled", "disabled_reason"]);
    audit::record(connection, entry).await?;
    tracing::warn!(endpoint_id = %endpoint.id, reason, "webhook endpoint disabled");
    // The origin, not the URL: the event goes to other receivers, and a URL's path or query
    // may carry the endpoint's token (as Slack's do).
    let origin = reqwest::Url::parse(&endpoint.url)
        .map(|url| url.origin().ascii_serialization())
        .unwrap_or_default();
    record(
        connection,
        EventDraft {
            event_type: WEBHOOK_ENDPOINT_DISABLED,
            data: json!({"endpoint_id": endpoint.id, "origin": origin, "reason": reason}),
            source: "webhooks",
            request_id: None,
        },
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32) -> RateLimit {
        RateLimit::new(NonZeroU32::new(per_second).expect("a rate"))
    }

    #[test]
    fn a_streak_outlasts_the_longest_wait_between_two_attempts() {
        let hours = |h: f64| Duration::from_secs_f64(h * 3600.0);
        // The longest `Retry-After` honoured (24 h) beats the default schedule's 10 h.
        assert_eq!(
            DeliveryPolicy::default().streak_gap(),
            hours(24.0 * 1.1 + 1.0)
        );
        let slow = DeliveryPolicy {
            schedule: vec![Duration::ZERO, hours(48.0)],
            ..DeliveryPolicy::default()
        };
        assert_eq!(slow.streak_gap(), hours(48.0 * 1.1 + 1.0));
    }

    #[test]
    fn deliveries_over_the_rate_are_given_turns_one_interval_apart() {
        let mut limit = limit(2);
        let now = Instant::now();
        // The burst the quota allows, then one turn each, 500 ms apart.
        assert_eq!(limit.admit(now, Arrival::New), None);
        assert_eq!(limit.admit(now, Arrival::New), None);
        let turns: Vec<_> = (0..3).map(|_| limit.admit(now, Arrival::Queued)).collect();
        assert_eq!(
            turns,
            [500, 1000, 1500].map(|ms| Some(Duration::from_millis(ms)))
        );
    }

    #[test]
    fn a_new_delivery_joins_the_line_rather_than_take_a_waiting_ones_room() {
        let mut limit = limit(1000);
        let now = Instant::now();
        // Turned away once: a line forms, though room for the next frees within a millisecond.
        limit.next_turn = now + Duration::from_secs(1);
        assert_eq!(limit.admit(now, Arrival::New), Some(Duration::from_secs(1)));
        // A queued delivery whose turn has come takes the room there is.
        assert_eq!(limit.admit(now, Arrival::Queued), None);
        // Once the line has gone, new deliveries take room again.
        let later = now + Duration::from_secs(2);
        assert_eq!(limit.admit(later, Arrival::New), None);
    }
}
