//! Contacts: validation, identity rules and storage of the people Switchbord messages.

mod error;
mod get;
mod input;
mod model;
mod service;
mod store;
mod upsert;

pub mod phone;

pub use error::ContactError;
pub use input::{ContactUpsert, FieldUpdate, SubscriberStatus, validate_upsert};
pub use model::timestamp;
pub use service::ContactsService;
pub use upsert::{Operation, UpsertOutcome, upsert_contact};
