//! Access: API keys, roles, and the authentication layer in front of every RPC.
//!
//! The core alone decides who may do what: the gateway forwards the caller's credential as
//! metadata and holds no key store. Every RPC has a rule in [`rules::RULES`]; a Switchbord RPC
//! without one is refused, so a new RPC cannot ship unprotected.

mod audit_log;
mod authenticate;
mod bootstrap;
mod caller;
mod error;
mod key;
mod layer;
mod role;
pub mod rules;
mod service;
mod store;

pub use authenticate::Authenticator;
pub use bootstrap::{Bootstrap, BootstrapError, bootstrap_admin_key, check_pepper};
pub use caller::Caller;
pub use error::AccessError;
pub use key::{KeyHasher, validate_custom_key};
pub use layer::AuthLayer;
pub use role::Role;
pub use service::{AccessGrpc, api_key_proto};
pub use store::{NewKey, create_key, list_keys, revoke_key};
