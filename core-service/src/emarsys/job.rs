//! The `integration.emarsys.custom_event` job: applies the event's rule to its contact and
//! triggers every enabled flow that listens for the event name.
//!
//! Re-running it is harmless: tags and properties converge to the same values, and each flow is
//! triggered with the webhook event id as idempotency key, so a retried job never triggers a
//! flow twice.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use crate::access::Caller;
use crate::config_watch::{Cached, ConfigWatch};
use crate::contacts::{ContactRow, ContactUpsert, FieldUpdate, TagUpdate, phone, upsert_on};
use crate::db;
use crate::events::Audience;
use crate::flows::{EventRouting, FlowRow, PropertySource};
use crate::journeys::{Route, TriggerInput, accept_trigger};
use crate::outbox::{BoxFuture, ClaimedJob, JobContext, JobError, JobHandler, JobKind};
use crate::request::{RequestContext, RequestId};
use crate::schema::contacts;

pub const CUSTOM_EVENT_JOB: JobKind = JobKind {
    name: "integration.emarsys.custom_event",
    max_attempts: 10,
};

/// Flow triggers from events deduplicate on the (unique) webhook event id, so any window that
/// outlasts the job's retries will do.
const FLOW_TRIGGER_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

pub struct CustomEventHandler {
    audience: Audience,
    routing: Cached<EventRouting>,
}

impl CustomEventHandler {
    pub fn new(audience: Audience, config: ConfigWatch) -> Self {
        Self {
            audience,
            routing: Cached::new(config),
        }
    }
}

fn retry(error: impl std::fmt::Display) -> JobError {
    JobError::retry(error.to_string())
}

impl JobHandler for CustomEventHandler {
    fn kind(&self) -> JobKind {
        CUSTOM_EVENT_JOB
    }

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let event_name = job
                .payload
                .get("event_name")
                .and_then(Json::as_str)
                .ok_or_else(|| JobError::Permanent("payload has no event_name".to_owned()))?;
            let webhook_event_id = job
                .payload
                .get("webhook_event_id")
                .and_then(Json::as_str)
                .ok_or_else(|| JobError::Permanent("payload has no webhook_event_id".to_owned()))?;
            let contact_id = job
                .payload
                .get("contact_id")
                .and_then(Json::as_str)
                .and_then(|id| Uuid::parse_str(id).ok());
            let payload = job.payload.get("payload").cloned().unwrap_or(json!({}));
            let request = RequestContext {
                request_id: RequestId(job.request_id.unwrap_or_else(Uuid::new_v4)),
                caller: Caller::system(CUSTOM_EVENT_JOB.name),
            };

            let Some(contact_id) = contact_id else {
                // Without a contact there is nobody to change or enrol.
                return Ok(());
            };
            let mut connection = db::connection(&context.pool).await.map_err(retry)?;
            let routing = self
                .routing
                .get(|| EventRouting::load(&mut connection))
                .await
                .map_err(retry)?;
            let rule = routing.rule_for(event_name);
            let listening: Vec<&FlowRow> = routing.flows_listening_for(event_name).collect();
            if rule.is_none() && listening.is_empty() {
                // Nothing to change and nobody to enrol: the contact need not be read.
                return Ok(());
            }
            let contact: ContactRow = contacts::table
                .find(contact_id)
                .select(ContactRow::as_select())
                .first(&mut connection)
                .await
                .map_err(retry)?;
            let number = phone::normalize(&contact.phone_number, None).map_err(|error| {
                JobError::Permanent(format!("stored phone number is invalid: {error}"))
            })?;

            if let Some(rule) = rule {
                let mut properties = Map::new();
                for assignment in rule.properties() {
                    let value = match assignment.source {
                        PropertySource::Value(value) => Some(value),
                        PropertySource::FromPayload(pointer) => payload.pointer(&pointer).cloned(),
                    };
                    if let Some(value) = value {
                        properties.insert(assignment.property, value);
                    }
                }
                let upsert = ContactUpsert {
                    phone_number: number.clone(),
                    external_reference_id: None,
                    subscriber_status: None,
                    name: FieldUpdate::Keep,
                    email: FieldUpdate::Keep,
                    locale: FieldUpdate::Keep,
                    properties,
                    tags: TagUpdate::Modify {
                        add: rule.add_tags.clone(),
                        remove: rule.remove_tags.clone(),
                    },
                };
                let mut outcome = upsert_on(&mut connection, &request, &self.audience, &upsert)
                    .await
                    .map_err(retry)?;
                context.after_commit(None, &mut outcome);
            }

            drop(connection);
            let data = json!({
                "event_name": event_name,
                "webhook_event_id": webhook_event_id,
                "payload": payload,
                "voucher_pool": job.payload.get("voucher_pool"),
            });
            for flow in listening {
                let input = TriggerInput {
                    route: Route::Rest {
                        organization: flow.org.clone(),
                        flow: flow.id.clone(),
                    },
                    phone_number: number.clone(),
                    flow_id: Some(flow.id.clone()),
                    trigger_id: None,
                    data: data.as_object().cloned().unwrap_or_default(),
                    idempotency_key: Some(format!("emarsys:{webhook_event_id}")),
                };
                // The trigger's job starts at once when the worker has room, as a request's does.
                let reservation = context.reserve();
                let mut outcome = accept_trigger(
                    &context.pool,
                    &request,
                    &self.audience,
                    &input,
                    FLOW_TRIGGER_WINDOW,
                    reservation.as_ref(),
                )
                .await
                .map_err(retry)?;
                context.after_commit(reservation, &mut outcome);
            }
            Ok(())
        })
    }
}
