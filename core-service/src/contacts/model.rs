//! The stored contact and its conversion to the API type.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::Value as Json;
use switchbord_api::json::struct_from_json;
use switchbord_api::v1;
use uuid::Uuid;

use super::input::SubscriberStatus;
use crate::schema::contacts;

/// One row of `contacts`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = contacts, check_for_backend(diesel::pg::Pg))]
// `None` is bound as NULL rather than written as DEFAULT (the same for these columns): an
// insert with DEFAULT in it cannot be a prepared statement, and is parsed and planned anew,
// a round trip more, on every call.
#[diesel(treat_none_as_default_value = false)]
pub struct ContactRow {
    pub id: Uuid,
    pub phone_number: String,
    pub external_reference_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub locale: Option<String>,
    pub subscriber_status: String,
    pub properties: Json,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ContactRow> for v1::Contact {
    fn from(row: ContactRow) -> Self {
        let status = match SubscriberStatus::from_db(&row.subscriber_status) {
            SubscriberStatus::Subscribed => v1::SubscriberStatus::Subscribed,
            SubscriberStatus::Blocked => v1::SubscriberStatus::Blocked,
        };
        let properties = match row.properties {
            Json::Object(object) => object,
            _ => Default::default(),
        };
        Self {
            id: row.id.to_string(),
            phone_number: row.phone_number,
            external_reference_id: row.external_reference_id,
            name: row.name,
            email: row.email,
            locale: row.locale,
            subscriber_status: status.into(),
            properties: Some(struct_from_json(properties)),
            tags: row.tags,
            created_at: Some(timestamp(row.created_at)),
            updated_at: Some(timestamp(row.updated_at)),
        }
    }
}

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or_default(),
    }
}

/// The contact as event payloads carry it (the same shape as the REST responses).
pub fn contact_json(row: &ContactRow) -> serde_json::Value {
    let time = |at: DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    serde_json::json!({
        "id": row.id,
        "phone_number": row.phone_number,
        "external_reference_id": row.external_reference_id,
        "name": row.name,
        "email": row.email,
        "locale": row.locale,
        "subscriber_status": row.subscriber_status,
        "properties": row.properties,
        "tags": row.tags,
        "created_at": time(row.created_at),
        "updated_at": time(row.updated_at),
    })
}
