//! `UpsertContactResponse` → the Charles-shaped JSON bodies of SPEC §2.1.

use serde_json::{Value as Json, json};
use switchbord_api::json::json_from_struct;
use switchbord_api::v1::{Contact, SubscriberStatus, UpsertContactResponse, UpsertOperation};

use crate::family::Family;
use crate::request_id::RequestId;
use crate::time::rfc3339;

/// The success body of a contact upsert for `family`.
pub fn upsert_body(response: UpsertContactResponse, family: Family, request_id: RequestId) -> Json {
    let operation = match response.operation() {
        UpsertOperation::Created => "created",
        _ => "updated",
    };
    let mut body = json!({
        "success": true,
        "mode": "compatibility",
        "operation": operation,
        "contact": response.contact.map(contact_json).unwrap_or(Json::Null),
        "request_id": request_id.to_string(),
    });
    if family == Family::Legacy {
        body["status"] = json!("ok");
        body["message"] = json!(format!("contact {operation}"));
    }
    body
}

pub fn contact_json(contact: Contact) -> Json {
    let status = match contact.subscriber_status() {
        SubscriberStatus::Blocked => "blocked",
        _ => "subscribed",
    };
    json!({
        "id": contact.id,
        "phone_number": contact.phone_number,
        "external_reference_id": contact.external_reference_id,
        "name": contact.name,
        "email": contact.email,
        "locale": contact.locale,
        "subscriber_status": status,
        "properties": contact.properties.map(json_from_struct).unwrap_or_default(),
        "tags": contact.tags,
        "created_at": contact.created_at.map(rfc3339),
        "updated_at": contact.updated_at.map(rfc3339),
    })
}
