//! End-to-end tests: the real core and gateway on loopback ports, a real PostgreSQL (a fresh
//! database per test, cloned from a template migrated once), real HTTP and real gRPC.
//!
//! Set `TEST_LOG=1` to see the services' logs. Set `DATABASE_URL` to use an existing server
//! (databases are created on it and dropped afterwards); otherwise a private cluster is started.

mod helpers;

mod access;
mod contact_aliases;
mod contact_identity;
mod contact_phone_numbers;
mod contact_validation;
mod emarsys;
mod events_api;
mod grpc_api;
mod http_rules;
mod journeys;
mod malformed_input;
mod openapi;
mod operations;
mod outbox;
mod rate_limit;
mod transactions;
mod twenty;
mod wakeups;
mod webhooks;
