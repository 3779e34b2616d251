//! The built-in event types that only Switchbord's own writes emit. The catalog's other
//! built-ins (`message.*`) and registered types are published by callers.

pub const CONTACT_CREATED: &str = "contact.created";
pub const CONTACT_UPDATED: &str = "contact.updated";
pub const CONTACT_OPTED_OUT: &str = "contact.opted_out";
/// Every event a contact's upsert may emit.
pub const CONTACT_EVENTS: [&str; 3] = [CONTACT_CREATED, CONTACT_UPDATED, CONTACT_OPTED_OUT];
pub const JOURNEY_TRIGGERED: &str = "journey.triggered";
pub const EMARSYS_EVENT_RECEIVED: &str = "integration.emarsys.event_received";
pub const TWENTY_SYNC_FAILED: &str = "crm.twenty.sync_failed";
/// Sent to one endpoint only, directly; never fanned out.
pub const WEBHOOK_TEST: &str = "webhook.test";
pub const WEBHOOK_ENDPOINT_DISABLED: &str = "webhook.endpoint_disabled";

/// Every type above. Receivers trust them as Switchbord's own (an opt-out, a Twenty sync
/// failure, an endpoint disabled), so no caller may publish them (SPEC §4). A test checks that
/// every built-in type of the catalog but `message.*` is here.
pub const EMITTED_BY_SWITCHBORD: [&str; 8] = [
    CONTACT_CREATED,
    CONTACT_UPDATED,
    CONTACT_OPTED_OUT,
    JOURNEY_TRIGGERED,
    EMARSYS_EVENT_RECEIVED,
    TWENTY_SYNC_FAILED,
    WEBHOOK_TEST,
    WEBHOOK_ENDPOINT_DISABLED,
];
