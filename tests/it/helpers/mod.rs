//! Shared test scaffolding.

mod app;
mod database;
mod receiver;

pub use app::{Authed, HttpReply, TestApp, WithKey};
pub use database::TestDatabase;
pub use receiver::{Answer, Receiver};
