//! The Switchbord core: the gRPC services that own every behaviour and all data.
//!
//! # Error layers
//! - Storage code returns `diesel::result::Error` or pool errors; [`db::DbError`] classifies
//!   them once, by SQLSTATE (unique violation, not found, unavailable, other), never by text.
//! - Each feature has one `thiserror` enum in its own terms (for example
//!   [`contacts::ContactError`]) that keeps the storage error as its source.
//! - Every feature error becomes an [`error::ServiceError`], and `ServiceError` becomes a
//!   `tonic::Status` in exactly one place. Invalid input travels as a `google.rpc.BadRequest`
//!   detail with one field violation per wrong field; internal causes are logged with their
//!   chain and never sent to the client.
//! - The gateway maps `Status` to HTTP once.

pub mod config;
pub mod config_watch;
pub mod contacts;
pub mod db;
pub mod emarsys;
pub mod error;
pub mod events;
pub mod flows;
mod gauges;
pub mod journeys;
pub mod server;
pub mod twenty;
pub mod webhooks;

pub mod access;
mod audit;
mod call_observer;
pub mod outbox;
mod pagination;
mod readiness;
pub mod request;
mod schema;
mod state;
mod validation;

pub use config::CoreConfig;
pub use server::{CoreServer, StartupError};
