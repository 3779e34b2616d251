//! Domain events: stored in the transaction of the change they describe, then handed to their
//! consumers by an `event.dispatch` outbox job, so an event is never lost between commit and
//! delivery. Consumers (outbound webhooks, CRM sync) plug in as [`EventConsumer`]s.

mod dispatch;
mod service;
mod store;

pub mod types;

pub use dispatch::{Audience, DISPATCH_JOB, DispatchHandler, EventConsumer, StoredEvent};
pub use service::EventsGrpc;
pub use store::{
    Dispatch, EventDraft, Recorded, new_event_id, record, record_dispatching, record_for,
};
