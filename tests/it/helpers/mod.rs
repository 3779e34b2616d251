//! Shared test scaffolding.

mod app;
mod database;
pub mod fake_twenty;
mod receiver;
mod wait;

pub use app::{Authed, HttpReply, TEST_PEPPER, TestApp, WithKey};
pub use database::TestDatabase;
pub use receiver::{Answer, Receiver};
pub use wait::{
    audit_trail, config_listener, count, eventually, eventually_within, lock_table,
    until_config_listened, until_dispatched, until_job_succeeded, until_statements_wait_for_a_lock,
    until_waiting_for_locks,
};
