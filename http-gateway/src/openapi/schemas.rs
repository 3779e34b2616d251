//! Schemas of the JSON bodies, for the OpenAPI document only.
//!
//! The handlers read bodies field by field (so a wrong type is named as a field error) and build
//! answers with `json!`; these types describe those bodies and are never constructed. Keep each
//! one next to its twin in spirit: a field added to a `json!` answer belongs here too.

#![allow(
    dead_code,
    reason = "describes bodies built with json!; never constructed"
)]

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value as Json;
use utoipa::ToSchema;

/// Any JSON object.
type Object = HashMap<String, Json>;

// ---------------------------------------------------------------------------------------------
// Errors (rendered by `ApiError::render`, one shape per route family).

/// One wrong field.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"field": "phone_number", "description": "is required"}))]
pub struct FieldViolation {
    /// The field, as a path into the body (`set_properties[0].property`), or `body`/`query`.
    pub field: String,
    pub description: String,
}

/// The error inside a compat error body.
#[derive(Serialize, ToSchema)]
pub struct CompatErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_argument`, `unauthenticated`, `rate_limited`.
    pub code: String,
    pub message: String,
    /// The first wrong field, when the error is about a field.
    pub field: Option<String>,
    /// Every wrong field.
    pub details: Vec<FieldViolation>,
}

/// Error body of the `/compat/*` paths.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "success": false,
    "mode": "compatibility",
    "error": {
        "code": "invalid_argument",
        "message": "phone_number: is required",
        "field": "phone_number",
        "details": [{"field": "phone_number", "description": "is required"}]
    },
    "request_id": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1c"
}))]
pub struct CompatError {
    /// Always `false`.
    pub success: bool,
    /// Always `compatibility`.
    pub mode: String,
    pub error: CompatErrorDetail,
    /// The request's id, also in the `X-Request-Id` header.
    #[schema(format = "uuid")]
    pub request_id: String,
}

/// Error body of Charles' own paths (contact upsert, REST triggers) and the Emarsys webhook.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "success": false,
    "status": "error",
    "message": "phone_number: is required",
    "code": "invalid_argument",
    "field": "phone_number",
    "errors": [{"field": "phone_number", "description": "is required"}],
    "request_id": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1c"
}))]
pub struct LegacyError {
    /// Always `false`.
    pub success: bool,
    /// Always `error`.
    pub status: String,
    pub message: String,
    /// Stable machine-readable code, e.g. `invalid_argument`, `unauthenticated`, `rate_limited`.
    pub code: String,
    /// The first wrong field, when the error is about a field.
    pub field: Option<String>,
    /// Every wrong field.
    pub errors: Vec<FieldViolation>,
    #[schema(format = "uuid")]
    pub request_id: String,
}

/// Error body of the admin, webhook and Twenty routes (grpc-gateway's shape).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "code": 5,
    "message": "no endpoint with id 0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1c",
    "details": [],
    "request_id": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1c"
}))]
pub struct AdminError {
    /// The gRPC status code (3 invalid argument, 5 not found, 7 permission denied, …).
    pub code: i32,
    pub message: String,
    /// Every wrong field.
    pub details: Vec<FieldViolation>,
    #[schema(format = "uuid")]
    pub request_id: String,
}

// ---------------------------------------------------------------------------------------------
// Contacts (SPEC §2.1).

/// A contact upsert. Charles-era aliases are accepted: `phone` for `phone_number`,
/// `custom_properties` for `person_properties`, `first_name`/`last_name` for the name.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "phone_number": "+4915112345678",
    "external_reference_id": "crm-4711",
    "source_type": "internal",
    "person_properties": {"name": "Jane Doe", "email": "jane@example.com", "locale": "de-DE", "plan": "gold"}
}))]
pub struct ContactUpsert {
    /// Required (or `phone`): E.164 after normalisation (spaces, dashes, dots and parentheses
    /// are stripped; a leading `00` becomes `+`).
    pub phone_number: Option<String>,
    /// Alias of `phone_number`.
    pub phone: Option<String>,
    /// The caller's id of the contact; a string or a whole number.
    pub external_reference_id: Option<String>,
    /// `internal` (default), `opt_out` (blocks the contact) or any other source.
    pub source_type: Option<String>,
    /// `name`, `email` and `locale` become contact fields; other keys are merged into the
    /// contact's properties (a `null` value removes the key).
    pub person_properties: Option<Object>,
    /// Alias of `person_properties`.
    pub custom_properties: Option<Object>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Replaces the contact's tags.
    pub tags: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriberStatus {
    Subscribed,
    Blocked,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpsertOperation {
    Created,
    Updated,
}

#[derive(Serialize, ToSchema)]
pub struct Contact {
    #[schema(format = "uuid")]
    pub id: String,
    #[schema(example = "+4915112345678")]
    pub phone_number: String,
    /// `null` when the contact has none (likewise `name`, `email` and `locale`); always sent.
    #[schema(required = true)]
    pub external_reference_id: Option<String>,
    #[schema(required = true)]
    pub name: Option<String>,
    #[schema(required = true)]
    pub email: Option<String>,
    #[schema(required = true)]
    pub locale: Option<String>,
    pub subscriber_status: SubscriberStatus,
    pub properties: Object,
    pub tags: Vec<String>,
    #[schema(format = DateTime, required = true)]
    pub created_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub updated_at: Option<String>,
}

/// Answer of `POST /compat/contact`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "success": true,
    "mode": "compatibility",
    "operation": "created",
    "contact": {
        "id": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1c", "phone_number": "+4915112345678",
        "external_reference_id": "crm-4711", "name": "Jane Doe", "email": "jane@example.com",
        "locale": "de-DE", "subscriber_status": "subscribed", "properties": {"plan": "gold"},
        "tags": [], "created_at": "2026-01-31T12:00:00Z", "updated_at": "2026-01-31T12:00:00Z"
    },
    "request_id": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1d"
}))]
pub struct CompatContactUpserted {
    /// Always `true`.
    pub success: bool,
    /// Always `compatibility`.
    pub mode: String,
    pub operation: UpsertOperation,
    pub contact: Contact,
    #[schema(format = "uuid")]
    pub request_id: String,
}

/// Answer of `PUT /api/v1beta/contact/`: the compat answer plus Charles' `status` and `message`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "success": true,
    "status": "ok",
    "message": "contact created",
    "mode": "compatibility",
    "operation": "created",
    "contact": {
        "id": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1c", "phone_number": "+4915112345678",
        "external_reference_id": "crm-4711", "name": "Jane Doe", "email": "jane@example.com",
        "locale": "de-DE", "subscriber_status": "subscribed", "properties": {"plan": "gold"},
        "tags": [], "created_at": "2026-01-31T12:00:00Z", "updated_at": "2026-01-31T12:00:00Z"
    },
    "request_id": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1d"
}))]
pub struct LegacyContactUpserted {
    pub success: bool,
    /// Always `ok`.
    pub status: String,
    /// `contact created` or `contact updated`.
    pub message: String,
    pub mode: String,
    pub operation: UpsertOperation,
    pub contact: Contact,
    #[schema(format = "uuid")]
    pub request_id: String,
}

// ---------------------------------------------------------------------------------------------
// Journey triggers (SPEC §2.2).

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "phone_number": "+4915112345678", "flow_id": "welcome", "trigger_id": "t-1", "data": {"coupon": "X1"}
}))]
pub struct JourneyTrigger {
    /// Required: E.164 after normalisation. The contact is created if missing.
    pub phone_number: String,
    /// Part of the deduplication key when there is no `trigger_id`; a string or a whole number.
    pub flow_id: Option<String>,
    /// Part of the deduplication key (the path's trigger id takes precedence); a string or a
    /// whole number.
    pub trigger_id: Option<String>,
    /// Forwarded into the job payload.
    pub data: Option<Object>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerStatus {
    Queued,
    Duplicate,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "status": "queued",
    "message": "journey trigger queued",
    "triggerEventId": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1c",
    "outboxJobId": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1d",
    "request_id": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1e"
}))]
pub struct JourneyTriggered {
    /// `duplicate` when an identical trigger was accepted within the deduplication window; the
    /// ids are then the first trigger's.
    pub status: TriggerStatus,
    pub message: String,
    #[serde(rename = "triggerEventId")]
    #[schema(format = "uuid")]
    pub trigger_event_id: String,
    #[serde(rename = "outboxJobId")]
    #[schema(format = "uuid")]
    pub outbox_job_id: String,
    #[schema(format = "uuid")]
    pub request_id: String,
}

// ---------------------------------------------------------------------------------------------
// Inbound integrations (SPEC §2.3, §5).

/// Contact fields of an Emarsys event, flat or nested.
#[derive(Serialize, ToSchema)]
pub struct EmarsysContact {
    pub phone_number: Option<String>,
    /// Alias of `phone_number` (Emarsys presets send it).
    pub phone: Option<String>,
    pub external_reference_id: Option<String>,
    pub email: Option<String>,
}

/// An Emarsys custom external event: contact fields flat, or nested in `contact` or
/// `contact_data`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "event_name": "voucher_won",
    "phone": "+4915112345678",
    "external_reference_id": "crm-4711",
    "email": "jane@example.com",
    "payload": {"voucher": "X1"},
    "voucher_pool": "spring"
}))]
pub struct EmarsysEvent {
    /// Required, without whitespace. Selects the event rule and the flows it triggers.
    pub event_name: String,
    pub phone_number: Option<String>,
    pub phone: Option<String>,
    pub external_reference_id: Option<String>,
    pub email: Option<String>,
    pub contact: Option<EmarsysContact>,
    pub contact_data: Option<EmarsysContact>,
    /// Forwarded into the job.
    pub payload: Option<Object>,
    pub voucher_pool: Option<String>,
    /// Emarsys' delivery id, for deduplication (`request_id` is read when absent).
    pub event_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "status": "accepted",
    "message": "event accepted",
    "webhookEventId": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1c",
    "outboxJobId": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1d",
    "request_id": "0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1e"
}))]
pub struct EmarsysEventAccepted {
    /// Always `accepted` (also for a repeated delivery, which returns the first one's ids).
    pub status: String,
    pub message: String,
    #[serde(rename = "webhookEventId")]
    #[schema(format = "uuid")]
    pub webhook_event_id: String,
    #[serde(rename = "outboxJobId")]
    #[schema(format = "uuid")]
    pub outbox_job_id: String,
    #[schema(format = "uuid")]
    pub request_id: String,
}

/// Twenty's webhook body, passed on byte for byte (its signature covers the raw bytes).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "eventName": "person.updated",
    "objectMetadata": {"nameSingular": "person"},
    "record": {"id": "5b3c…", "phones": {"primaryPhoneNumber": "15112345678", "primaryPhoneCountryCode": "+49"}}
}))]
pub struct TwentyWebhook {
    /// `person.created`, `person.updated` or `person.deleted`; others are skipped.
    #[serde(rename = "eventName")]
    pub event_name: String,
    pub record: Object,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TwentyWebhookOutcome {
    Applied,
    Unlinked,
    Stale,
    Skipped,
}

#[derive(Serialize, ToSchema)]
pub struct TwentyWebhookResult {
    pub person_id: String,
    pub contact_id: Option<String>,
    pub outcome: TwentyWebhookOutcome,
    /// Why, for stale and skipped records.
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TwentyWebhookReceived {
    pub results: Vec<TwentyWebhookResult>,
}

// ---------------------------------------------------------------------------------------------
// Outbox (admin).

#[derive(Serialize, ToSchema)]
pub struct OutboxJob {
    #[schema(format = "uuid")]
    pub id: String,
    #[schema(example = "journey.trigger")]
    pub kind: String,
    pub payload: Object,
    /// `pending`, `running`, `succeeded` or `dead`.
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    #[schema(format = DateTime)]
    pub run_after: Option<String>,
    pub lease_owner: String,
    #[schema(format = DateTime)]
    pub lease_expires_at: Option<String>,
    pub last_error: String,
    pub request_id: String,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OutboxJobPage {
    pub jobs: Vec<OutboxJob>,
    /// Pass as `page_token` for the next page; empty on the last page.
    pub next_page_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct OutboxJobError {
    pub attempt: i32,
    pub error: String,
    #[schema(format = DateTime)]
    pub occurred_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OutboxJobDetail {
    pub job: OutboxJob,
    /// The error of each failed attempt.
    pub errors: Vec<OutboxJobError>,
}

#[derive(Serialize, ToSchema)]
pub struct OutboxJobRetried {
    pub job: OutboxJob,
}

#[derive(Serialize, ToSchema)]
pub struct OutboxCount {
    pub status: String,
    pub kind: String,
    pub count: i64,
}

#[derive(Serialize, ToSchema)]
pub struct OutboxStats {
    pub counts: Vec<OutboxCount>,
    /// Age of the oldest due pending job; 0 when none is.
    pub oldest_due_age_seconds: f64,
}

// ---------------------------------------------------------------------------------------------
// Flows and event rules (admin).

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"org": "acme", "name": "Welcome", "enabled": true, "event_names": ["voucher_won"]}))]
pub struct FlowInput {
    pub org: Option<String>,
    pub name: Option<String>,
    /// Defaults to `true`.
    pub enabled: Option<bool>,
    /// Event names (Emarsys events) that trigger the flow.
    pub event_names: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct Flow {
    pub id: String,
    pub org: String,
    pub name: String,
    pub enabled: bool,
    pub event_names: Vec<String>,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FlowList {
    pub flows: Vec<Flow>,
    /// Token for the next page; empty on the last.
    pub next_page_token: String,
}

/// Sets one contact property: exactly one of `value` and `from_payload`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"property": "voucher", "from_payload": "/voucher"}))]
pub struct PropertyAssignment {
    pub property: String,
    /// A constant value.
    pub value: Option<Json>,
    /// A JSON pointer into the event's payload.
    pub from_payload: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "add_tags": ["voucher"], "remove_tags": [], "set_properties": [{"property": "voucher", "from_payload": "/voucher"}]
}))]
pub struct EventRuleInput {
    pub add_tags: Option<Vec<String>>,
    pub remove_tags: Option<Vec<String>>,
    pub set_properties: Option<Vec<PropertyAssignment>>,
}

#[derive(Serialize, ToSchema)]
pub struct EventRule {
    pub event_name: String,
    pub add_tags: Vec<String>,
    pub remove_tags: Vec<String>,
    pub set_properties: Vec<PropertyAssignment>,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventRuleList {
    pub rules: Vec<EventRule>,
    /// Token for the next page; empty on the last.
    pub next_page_token: String,
}

/// An empty object, the answer of deletes and registrations.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({}))]
pub struct Empty {}

// ---------------------------------------------------------------------------------------------
// Outbound webhooks (SPEC §4).

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndpointHealth {
    Setup,
    Ready,
    Live,
    Attention,
}

#[derive(Serialize, ToSchema)]
pub struct Endpoint {
    #[schema(format = "uuid")]
    pub id: String,
    #[schema(example = "https://hooks.example.com/switchbord")]
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: String,
    pub headers: HashMap<String, String>,
    pub rate_limit_per_second: i32,
    pub health: EndpointHealth,
    /// Share of successful attempts in the last 24 hours (0 to 1).
    pub success_rate: f64,
    #[schema(format = DateTime)]
    pub last_success_at: Option<String>,
    #[schema(format = DateTime)]
    pub last_failure_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "url": "https://hooks.example.com/switchbord",
    "description": "CRM",
    "event_types": ["contact.created", "contact.opted_out"],
    "headers": {"X-Api-Key": "their-key"}
}))]
pub struct EndpointCreate {
    /// HTTPS; may not resolve to a private, loopback or metadata address.
    pub url: String,
    pub description: Option<String>,
    /// Event types to deliver; empty means all.
    pub event_types: Option<Vec<String>>,
    /// Sent with every delivery.
    pub headers: Option<HashMap<String, String>>,
    pub rate_limit_per_second: Option<i32>,
    /// A `whsec_…` secret; generated when absent.
    pub secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointCreated {
    pub endpoint: Endpoint,
    /// The signing secret, shown here and by `GET …/secret`.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

/// Changes the given fields only; `event_types` and `headers` replace the lists when present.
#[derive(Serialize, ToSchema)]
pub struct EndpointUpdate {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub headers: Option<HashMap<String, String>>,
    pub rate_limit_per_second: Option<i32>,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<Endpoint>,
    /// Token for the next page; empty on the last.
    pub next_page_token: String,
}

/// Optional body.
#[derive(Serialize, ToSchema)]
pub struct EndpointDisable {
    pub reason: Option<String>,
}

/// Optional body.
#[derive(Serialize, ToSchema)]
pub struct SecretRotation {
    /// The new secret; generated when absent. The old one keeps signing for 24 h.
    pub secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointSecret {
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryAttempt {
    pub attempt: i32,
    #[schema(format = DateTime)]
    pub attempted_at: Option<String>,
    pub status_code: i32,
    pub duration_ms: i64,
    /// The start of the receiver's answer.
    pub response_excerpt: String,
    pub error: String,
    pub succeeded: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TestEventSent {
    pub event_id: String,
    pub attempt: Option<DeliveryAttempt>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"since": "2026-01-31T12:00:00Z"}))]
pub struct Recovery {
    /// Failed and skipped deliveries since this time are sent again.
    #[schema(format = DateTime)]
    pub since: String,
}

#[derive(Serialize, ToSchema)]
pub struct Recovered {
    pub recovered: i64,
}

#[derive(Serialize, ToSchema)]
pub struct EventType {
    #[schema(example = "contact.opted_out")]
    pub name: String,
    pub description: String,
    /// JSON schema of the event's `data`.
    pub schema: Option<Object>,
    /// Example `data`.
    pub example: Option<Object>,
    pub builtin: bool,
}

#[derive(Serialize, ToSchema)]
pub struct EventTypeList {
    pub event_types: Vec<EventType>,
    /// Token for the next page; empty on the last.
    pub next_page_token: String,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "name": "order.shipped",
    "description": "An order left the warehouse.",
    "schema": {"type": "object", "properties": {"order_id": {"type": "string"}}},
    "example": {"order_id": "A-1"}
}))]
pub struct EventTypeRegistration {
    pub name: String,
    pub description: Option<String>,
    pub schema: Option<Object>,
    pub example: Option<Object>,
}

#[derive(Serialize, ToSchema)]
pub struct Delivery {
    #[schema(format = "uuid")]
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub last_status_code: i32,
    pub last_error: String,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    pub next_page_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptList {
    /// Oldest first.
    pub attempts: Vec<DeliveryAttempt>,
    /// Token for the next page; empty on the last.
    pub next_page_token: String,
}

// ---------------------------------------------------------------------------------------------
// Twenty CRM (SPEC §5).

/// The Twenty connection (reading it when none is set is a 404).
#[derive(Serialize, ToSchema)]
pub struct TwentyConnection {
    #[schema(example = "https://crm.example.com")]
    pub base_url: String,
    /// The last characters of the API key.
    pub api_key_hint: String,
    pub webhook_secret_set: bool,
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"base_url": "https://crm.example.com", "api_key": "twenty-key", "webhook_secret": "shared-secret"}))]
pub struct TwentyConnectionInput {
    pub base_url: String,
    /// Kept when absent.
    pub api_key: Option<String>,
    /// Kept when absent.
    pub webhook_secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TwentyConnectionTest {
    pub reachable: bool,
    pub authenticated: bool,
    pub status_code: i32,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MappingDirection {
    ToTwenty,
    FromTwenty,
    Both,
    None,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"contact_field": "email", "twenty_field": "emails.primaryEmail", "direction": "both"}))]
pub struct FieldMappingEntry {
    pub contact_field: String,
    pub twenty_field: String,
    pub direction: MappingDirection,
}

#[derive(Serialize, ToSchema)]
pub struct FieldMapping {
    pub entries: Vec<FieldMappingEntry>,
}

#[derive(Serialize, ToSchema)]
pub struct FieldMappingUpdate {
    /// Entries to add or replace (by contact field).
    pub entries: Option<Vec<FieldMappingEntry>>,
    pub remove_contact_fields: Option<Vec<String>>,
    /// Start again from the default mapping.
    pub reset_to_default: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct SyncCounts {
    pub pending: i64,
    pub synced: i64,
    pub failed: i64,
    pub unlinked: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackfillStatus {
    NotStarted,
    Running,
    Completed,
    Failed,
}

#[derive(Serialize, ToSchema)]
pub struct Backfill {
    pub status: BackfillStatus,
    pub pages: i64,
    pub people_seen: i64,
    pub linked: i64,
    pub created: i64,
    pub skipped: i64,
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SyncHealth {
    pub connected: bool,
    pub counts: SyncCounts,
    pub backfill: Backfill,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    Pending,
    Synced,
    Failed,
    Unlinked,
}

#[derive(Serialize, ToSchema)]
pub struct ContactSync {
    pub contact_id: String,
    pub person_id: Option<String>,
    pub status: SyncStatus,
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub attempts: i32,
    #[schema(format = DateTime)]
    pub last_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    pub synced_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ContactSyncPage {
    pub syncs: Vec<ContactSync>,
    pub next_page_token: String,
}

/// Optional body.
#[derive(Serialize, ToSchema)]
pub struct SyncRetry {
    /// Retry this contact only; all failed syncs when absent.
    pub contact_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SyncsRetried {
    pub retried: i64,
}

/// Optional body.
#[derive(Serialize, ToSchema)]
pub struct BackfillStart {
    pub page_size: Option<i32>,
    /// Start from the first page even if a backfill ran before.
    pub restart: Option<bool>,
}
