//! Outbound webhooks: endpoints, fan-out of events into deliveries, signed delivery with
//! retries, health, test sends and recovery. See `docs/webhooks.md`.

mod deliver;
mod fanout;
mod health;
mod model;
mod redact;
mod resume;
mod sender;
mod service;
mod ssrf;
mod success_log;

pub mod signing;

pub use deliver::{DELIVER_JOB, DeliverHandler, Deliverer, DeliveryPolicy};
pub use fanout::WebhookFanout;
pub use health::health_counts;
pub use resume::{RESUME_JOB, ResumeHandler, SWEEP_INTERVAL, oldest_parked, sweep, sweep_forever};
pub use sender::{Sender, USER_AGENT};
pub(crate) use sender::{error_chain, retry_after_delay};
pub use service::WebhooksGrpc;
pub use ssrf::{GuardedResolver, UrlPolicy, is_forbidden, same_origin};
