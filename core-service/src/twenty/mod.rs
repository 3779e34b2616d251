//! Twenty CRM sync, both ways: the connection and field mapping, outbound sync jobs fed by
//! contact events, inbound person webhooks, per-contact sync health and the initial import.
//! See `docs/twenty.md`.

mod backfill;
mod client;
mod connection;
mod inbound;
mod mapping;
mod mapping_store;
mod records;
mod service;
mod sync;

pub mod signature;

pub use backfill::{BACKFILL_JOB, BackfillHandler};
pub use client::TwentyClient;
pub use inbound::InboundSettings;
pub use records::{SyncStatus, counts as sync_status_counts};
pub use service::TwentyGrpc;
pub use sync::{SYNC_JOB, SyncHandler, TwentySyncConsumer};
