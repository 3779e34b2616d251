//! The `integration.emarsys.custom_event` job: applies the event's rule to its contact and
//! triggers every enabled flow that listens for the event name.
//!
//! Each flow is triggered with the webhook event id as idempotency key, and the rule is applied
//! once per event (the event is marked in the rule's transaction), so a retried job neither
//! triggers a flow twice nor sets the rule's values again over a later event's.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use crate::access::Caller;
use crate::config_watch::{Cached, ConfigWatch};
use crate::contacts::phone::{self, PhoneNumber};
use crate::contacts::{
    ContactError, ContactRow, ContactUpsert, FieldUpdate, PlannedUpsert, TagUpdate, UpsertOutcome,
    lock_by_id, plan_for, save_planned,
};
use crate::db::{self, DbError, prepared};
use crate::events::Audience;
use crate::flows::{EventRouting, EventRuleRow, FlowRow, PropertySource, property_value_problem};
use crate::journeys::{
    Enrolee, JourneyError, LEAST_KEY_RETENTION, Route, TriggerInput, accept_trigger,
};
use crate::outbox::{BoxFuture, ClaimedJob, JobContext, JobError, JobHandler, JobKind};
use crate::request::{RequestContext, RequestId};
use crate::schema::webhook_events;

pub const CUSTOM_EVENT_JOB: JobKind = JobKind {
    name: "integration.emarsys.custom_event",
    max_attempts: 10,
};

/// Flow triggers from events deduplicate on the (unique) webhook event id, so any window that
/// outlasts the job's retries (an operator's among them) will do; keys are kept this long.
const FLOW_TRIGGER_WINDOW: Duration = LEAST_KEY_RETENTION;

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

/// Why applying an event's rule stopped.
enum RuleError {
    Contact(ContactError),
    Job(JobError),
}

impl From<diesel::result::Error> for RuleError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Contact(error.into())
    }
}

/// The contact's stored phone number, by which the rule's upsert finds it.
fn stored_number(contact: &ContactRow) -> Result<PhoneNumber, JobError> {
    phone::normalize(&contact.phone_number, None)
        .map_err(|error| JobError::Permanent(format!("stored phone number is invalid: {error}")))
}

/// The contact change `rule` makes for an event with `payload`.
fn rule_upsert(rule: &EventRuleRow, payload: &Json, number: PhoneNumber) -> ContactUpsert {
    let mut properties = Map::new();
    for assignment in rule.properties() {
        let value = match assignment.source {
            PropertySource::Value(value) => Some(value),
            // A pointer that finds nothing, or `null`, sets nothing: `null` in a contact's
            // properties would remove the property. A value the properties cannot hold is left
            // out too (the payload was checked as a whole, not one level down).
            PropertySource::FromPayload(pointer) => payload
                .pointer(&pointer)
                .filter(|value| !value.is_null() && property_value_problem(value).is_none())
                .cloned(),
        };
        if let Some(value) = value {
            properties.insert(assignment.property, value);
        }
    }
    ContactUpsert {
        phone_number: number,
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
    }
}

/// What the read half of a rule's transaction found.
enum RuleRead {
    /// The contact is gone.
    Gone,
    /// Applied by an earlier run of this job, or not a valid change: nothing to write.
    NothingToWrite,
    Planned(Box<PlannedUpsert>),
}

/// What became of an event's rule.
enum RuleApplied {
    /// The contact is gone: nobody to change or enrol.
    ContactGone,
    /// Applied now (with the upsert's outcome) or by an earlier run, or skipped as invalid.
    Done(Option<Box<UpsertOutcome>>),
}

/// Marks the event's rule applied, unless an earlier run of its job did: whether this is the
/// first run to apply it.
async fn first_to_apply(mut connection: &AsyncPgConnection, event_id: Uuid) -> QueryResult<bool> {
    prepared(
        diesel::update(
            webhook_events::table
                .find(event_id)
                .filter(webhook_events::rule_applied_at.is_null()),
        )
        .set(webhook_events::rule_applied_at.eq(diesel::dsl::now)),
    )
    .execute(&mut connection)
    .await
    .map(|marked| marked == 1)
}

impl CustomEventHandler {
    /// Applies `rule` to the contact, once per event, in two round trips: `BEGIN` with the
    /// contact's lock and the event's mark, then the contact's writes with `COMMIT`.
    async fn apply_rule(
        &self,
        connection: &mut AsyncPgConnection,
        request: &RequestContext,
        rule: &EventRuleRow,
        payload: &Json,
        event_id: Uuid,
        contact_id: Uuid,
    ) -> Result<RuleApplied, JobError> {
        let applied = db::pipelined::read_then_write(
            connection,
            async |connection| {
                // Locked by id: an upsert finds its contact by phone number, which a concurrent
                // upsert could change in between (the rule then creating a contact of the old
                // number). Marked in the same transaction: a retried job (its flows' triggers
                // failed after this commit) must not set the rule's values again over a later
                // event's.
                let (contact, first) = futures::try_join!(
                    lock_by_id(connection, contact_id),
                    first_to_apply(connection, event_id)
                )?;
                let Some(contact) = contact else {
                    return Ok(RuleRead::Gone);
                };
                let number = stored_number(&contact).map_err(RuleError::Job)?;
                if !first {
                    return Ok(RuleRead::NothingToWrite);
                }
                match plan_for(contact, &rule_upsert(rule, payload, number)) {
                    Ok(planned) => Ok(RuleRead::Planned(Box::new(planned))),
                    // No retry can make the rule's result valid (its properties over the size
                    // limit, say): the rule is skipped, and the flows are still triggered.
                    Err(ContactError::Invalid(violations)) => {
                        tracing::warn!(
                            %event_id,
                            ?violations,
                            "the event rule's change is not a valid contact change; rule skipped"
                        );
                        Ok(RuleRead::NothingToWrite)
                    }
                    Err(error) => Err(RuleError::Contact(error)),
                }
            },
            async |connection, read| match read {
                RuleRead::Gone => Ok(RuleApplied::ContactGone),
                RuleRead::NothingToWrite => Ok(RuleApplied::Done(None)),
                RuleRead::Planned(planned) => {
                    save_planned(connection, request, &self.audience, *planned, None)
                        .await
                        .map(|outcome| RuleApplied::Done(Some(Box::new(outcome))))
                }
            },
        )
        .await;
        match applied {
            Ok(applied) => Ok(applied),
            Err(RuleError::Contact(error)) => Err(retry(error)),
            Err(RuleError::Job(error)) => Err(error),
        }
    }
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
            let event_id = Uuid::parse_str(webhook_event_id).map_err(|_| {
                JobError::Permanent("payload's webhook_event_id is not a UUID".to_owned())
            })?;
            let contact_id = job.payload_id("contact_id");
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
            let listening: Vec<&FlowRow> = routing.flows_listening_for(event_name).collect();
            // Without a rule the contact is not read here: each flow's trigger reads its number.
            if let Some(rule) = routing.rule_for(event_name) {
                let applied = self
                    .apply_rule(
                        &mut connection,
                        &request,
                        rule,
                        &payload,
                        event_id,
                        contact_id,
                    )
                    .await?;
                match applied {
                    RuleApplied::ContactGone => return Ok(()),
                    RuleApplied::Done(Some(mut outcome)) => {
                        context.after_commit(None, &mut *outcome);
                    }
                    RuleApplied::Done(None) => {}
                }
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
                    enrolee: Enrolee::Known(contact_id),
                    flow_id: Some(flow.id.clone()),
                    trigger_id: None,
                    data: data.as_object().cloned().unwrap_or_default(),
                    idempotency_key: Some(format!("emarsys:{webhook_event_id}")),
                };
                // The trigger's job starts at once when the worker has room, as a request's does.
                let reservation = context.reserve();
                let accepted = accept_trigger(
                    &context.pool,
                    &request,
                    &self.audience,
                    &input,
                    FLOW_TRIGGER_WINDOW,
                    reservation.as_ref(),
                )
                .await;
                let mut outcome = match accepted {
                    Ok(outcome) => outcome,
                    // Deleted meanwhile: nobody to enrol.
                    Err(JourneyError::Db(DbError::NotFound)) => return Ok(()),
                    Err(error) => return Err(retry(error)),
                };
                context.after_commit(reservation, &mut outcome);
            }
            Ok(())
        })
    }
}
