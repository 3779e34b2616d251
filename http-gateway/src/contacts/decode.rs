//! JSON body → `UpsertContactRequest`.

use serde_json::{Map, Value as Json};
use switchbord_api::v1::{TagList, UpsertContactRequest};

use crate::decode::Decoder;
use crate::error::ApiError;

/// Decodes a contact upsert body (SPEC §2.1, with its Charles-era aliases).
pub fn upsert_request(mut body: Map<String, Json>) -> Result<UpsertContactRequest, ApiError> {
    let mut decoder = Decoder::default();
    let request = UpsertContactRequest {
        phone_number: decoder
            .string(&mut body, "phone_number")
            .unwrap_or_default(),
        phone: decoder.string(&mut body, "phone"),
        external_reference_id: decoder.identifier(&mut body, "external_reference_id"),
        source_type: decoder.string(&mut body, "source_type"),
        person_properties: decoder.object(&mut body, "person_properties"),
        custom_properties: decoder.object(&mut body, "custom_properties"),
        first_name: decoder.string(&mut body, "first_name"),
        last_name: decoder.string(&mut body, "last_name"),
        tags: decoder
            .string_list(&mut body, "tags")
            .map(|values| TagList { values }),
    };
    decoder.finish(request)
}
