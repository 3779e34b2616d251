//! The transactional outbox: the spine that makes every accepted write's effects durable.
//!
//! A feature inserts its job with [`enqueue`] inside the same transaction as its domain rows, so
//! a job exists exactly when its cause was committed. Workers ([`Worker`]) claim due jobs with
//! `FOR UPDATE SKIP LOCKED` under a lease, run the handler registered for the job's kind, and
//! finish, reschedule with exponential backoff and jitter, or dead-letter the job after its
//! kind's last attempt. A job whose lease expired (its worker died) is claimed again, so
//! delivery is at least once and handlers must be idempotent. Whoever commits due jobs
//! announces them ([`Announcer`]): this instance's workers wake at once, other instances'
//! through `LISTEN/NOTIFY`, and all of them poll as a fallback; any number of instances can
//! share one database. See `docs/outbox.md`.

mod announcer;
mod backoff;
mod clock;
mod handler;
mod pruner;
mod starter;
mod store;
mod worker;

pub mod admin;

pub use announcer::Announcer;
pub use backoff::{BackoffPolicy, RetryDelay, retry_delay};
pub use clock::{Clock, ManualClock, SystemClock};
pub use handler::{BoxFuture, JobContext, JobError, JobHandler, JobKind, Registry};
pub use pruner::{Pruner, prune_succeeded, prune_trigger_keys};
pub use starter::{Committed, Reservation, Starter, after_commit};
pub use store::{
    ClaimedJob, Depth, JobRow, NewJob, OUTSTANDING_STATUSES, claim, claim_expired, depth,
    discard_pending, enqueue, enqueue_many, enqueue_started, finish_succeeded, postpone,
};
pub use worker::{Worker, WorkerConfig};
