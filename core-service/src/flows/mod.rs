//! Journey flows and Emarsys event rules: configuration that the `integration.emarsys.custom_event`
//! job reads to mutate contacts and trigger flows.

mod model;
mod service;
mod store;

pub use model::{EventRuleRow, FlowRow, PropertySource, RuleProperty};
pub use service::FlowsGrpc;
pub use store::{flows_listening_for, rule_for};
