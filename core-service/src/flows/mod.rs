//! Journey flows and Emarsys event rules: configuration that the `integration.emarsys.custom_event`
//! job reads to mutate contacts and trigger flows.

mod model;
mod routing;
mod service;
mod store;

pub use model::{EventRuleRow, FlowRow, PropertySource, RuleProperty, property_value_problem};
pub use routing::EventRouting;
pub use service::FlowsGrpc;
