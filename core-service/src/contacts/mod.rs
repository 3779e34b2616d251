//! Contacts: validation, identity rules and storage of the people Switchbord messages.

mod ensure;
mod error;
mod get;
mod input;
mod model;
mod notify;
mod service;
mod store;
mod upsert;

pub mod phone;

pub use ensure::{ContactPlan, PHONE_NUMBER_KEY, find_or_plan, save_new as save_new_contact};
pub use error::ContactError;
pub use input::{
    ContactUpsert, FieldUpdate, SubscriberStatus, TagUpdate, Violations, validate_tags,
    validate_upsert,
};
pub use model::{ContactRow, contact_json, timestamp};
pub use service::ContactsService;
pub use store::{find_by_id, find_by_phone, find_by_reference, lock_by_id};
pub use upsert::{
    MAX_ATTEMPTS, MAX_PROPERTIES_BYTES, Operation, PlannedUpsert, UpsertOutcome, lost_race,
    plan_for, plan_upsert, save_planned, update_by_id_on, upsert_contact, upsert_on,
};
