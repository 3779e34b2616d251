//! Journey triggers: accepted with deduplication, handed to the journey engine by a
//! `journey.trigger` outbox job that records the journey run and emits `journey.triggered`.

mod error;
mod input;
mod prune;
mod record;
mod run;
mod service;
mod trigger;

pub use error::JourneyError;
pub use input::{Enrolee, Route, TriggerInput, validate_trigger};
pub use prune::{DedupKeys, LEAST_KEY_RETENTION, delete_keys_before, key_retention};
pub use run::{JourneyTriggerHandler, TRIGGER_JOB};
pub use service::JourneysGrpc;
pub use trigger::{TriggerOutcome, accept_trigger};
