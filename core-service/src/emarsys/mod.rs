//! Emarsys custom external events: authenticated by the shared secret, normalised from either
//! payload style, stored with their contact sync and job in one transaction, then acted on by
//! the `integration.emarsys.custom_event` job (event rules and listening flows).

mod auth;
mod ingest;
mod input;
mod job;
mod service;

pub use auth::{EmarsysAuth, SECRET_METADATA};
pub use ingest::{IngestOutcome, ingest};
pub use input::{EmarsysEvent, normalize};
pub use job::{CUSTOM_EVENT_JOB, CustomEventHandler};
pub use service::EmarsysGrpc;
