//! Shared test scaffolding.

mod app;
mod database;

pub use app::{HttpReply, TestApp, WithKey};
pub use database::TestDatabase;
