//! The gRPC API as internal services and generated clients use it.

use switchbord_api::json::struct_from_json;
use switchbord_api::v1::get_contact_request::Lookup;
use switchbord_api::v1::{
    GetContactRequest, SubscriberStatus, TagList, UpsertContactRequest, UpsertOperation,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::TestApp;

fn upsert(phone: &str) -> UpsertContactRequest {
    UpsertContactRequest {
        phone_number: phone.to_owned(),
        external_reference_id: Some("crm-4711".to_owned()),
        person_properties: Some(struct_from_json(
            serde_json::json!({"name": "Jane Doe", "plan": "gold"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )),
        tags: Some(TagList {
            values: vec!["vip".to_owned()],
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_then_get_by_id_phone_and_reference() {
    let app = TestApp::spawn().await;
    let mut client = app.contacts_client().await;

    let created = client
        .upsert_contact(upsert("+49 151 12345678"))
        .await
        .expect("upsert")
        .into_inner();

    assert_eq!(created.operation(), UpsertOperation::Created);
    assert!(uuid::Uuid::parse_str(&created.request_id).is_ok());
    let contact = created.contact.expect("contact");
    assert_eq!(contact.phone_number, "+4915112345678");
    assert_eq!(contact.subscriber_status(), SubscriberStatus::Subscribed);
    assert_eq!(contact.tags, ["vip"]);
    for lookup in [
        Lookup::Id(contact.id.clone()),
        Lookup::PhoneNumber("004915112345678".to_owned()),
        Lookup::ExternalReferenceId("crm-4711".to_owned()),
    ] {
        let found = client
            .get_contact(GetContactRequest {
                lookup: Some(lookup.clone()),
            })
            .await
            .unwrap_or_else(|status| panic!("{lookup:?}: {status}"))
            .into_inner()
            .contact
            .expect("contact");
        assert_eq!(found, contact, "{lookup:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_metadata_is_used_for_the_write() {
    let app = TestApp::spawn().await;
    let mut client = app.contacts_client().await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut request = tonic::Request::new(upsert("+4915112345678"));
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("metadata value"));

    let response = client
        .upsert_contact(request)
        .await
        .expect("upsert")
        .into_inner();

    assert_eq!(response.request_id, id);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_input_is_invalid_argument_with_field_violations() {
    let app = TestApp::spawn().await;
    let mut client = app.contacts_client().await;

    let status = client
        .upsert_contact(UpsertContactRequest {
            phone_number: "nope".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("invalid phone number");

    assert_eq!(status.code(), Code::InvalidArgument);
    let bad_request = status.get_details_bad_request().expect("BadRequest detail");
    assert_eq!(bad_request.field_violations[0].field, "phone_number");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_contact_is_not_found_and_a_bad_id_is_invalid() {
    let app = TestApp::spawn().await;
    let mut client = app.contacts_client().await;

    let missing = client
        .get_contact(GetContactRequest {
            lookup: Some(Lookup::Id(uuid::Uuid::new_v4().to_string())),
        })
        .await
        .expect_err("no such contact");
    let malformed = client
        .get_contact(GetContactRequest {
            lookup: Some(Lookup::Id("42".to_owned())),
        })
        .await
        .expect_err("not a uuid");
    let empty = client
        .get_contact(GetContactRequest { lookup: None })
        .await
        .expect_err("no lookup");

    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(empty.code(), Code::InvalidArgument);

    // A reference no contact could hold is named, not a database error.
    for reference in ["crm\0".to_owned(), "r".repeat(256)] {
        let refused = client
            .get_contact(GetContactRequest {
                lookup: Some(Lookup::ExternalReferenceId(reference)),
            })
            .await
            .expect_err("an impossible reference");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        let bad_request = refused
            .get_details_bad_request()
            .expect("BadRequest detail");
        assert_eq!(
            bad_request.field_violations[0].field,
            "external_reference_id"
        );
    }
    let unknown = client
        .get_contact(GetContactRequest {
            lookup: Some(Lookup::ExternalReferenceId("crm-none".to_owned())),
        })
        .await
        .expect_err("no such reference");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_contact_service_and_health_says_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = TestApp::spawn().await;
    let channel = app.channel().await;

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner();
    let reply = stream
        .message()
        .await
        .expect("reflection reply")
        .expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<_> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.contains(&"switchbord.v1.ContactService".to_owned()),
        "{names:?}"
    );

    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "switchbord.v1.ContactService".to_owned(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
}

/// Numbers are stored in `jsonb` and read back with serde_json. Without its exact float parsing
/// (`float_roundtrip`), 2.215117259789243e72 read back as another number, so every repeat of
/// the upsert was a change (and a `contact.updated` event), and the largest f64, which
/// PostgreSQL prints as 309 digits, read back as out of range: the contact could no longer be
/// read at all (500s).
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_upsert_of_float_properties_changes_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.contacts_client().await;
    let numbers = [
        2.215117259789243e72,
        0.1,
        1.0 / 3.0,
        6.02214076e23,
        -4.9e-324,
        1.7976931348623157e308,
        123_456.789_012_345_67,
    ];
    let request = UpsertContactRequest {
        phone_number: "+4915112345601".to_owned(),
        person_properties: Some(struct_from_json(
            serde_json::json!({"numbers": numbers})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )),
        ..Default::default()
    };
    client
        .upsert_contact(request.clone())
        .await
        .expect("first upsert");

    let repeated = client
        .upsert_contact(request)
        .await
        .expect("repeated upsert")
        .into_inner();
    assert_eq!(repeated.changed_fields, Vec::<String>::new());
    let stored = repeated.contact.expect("contact").properties;
    let stored = switchbord_api::json::json_from_struct(stored.expect("properties"));
    assert_eq!(stored["numbers"], serde_json::json!(numbers));
}

/// gRPC callers can send NaN and infinities, which JSON cannot hold: converted to `null`, they
/// removed the property (or cleared a field) instead of being refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_number_json_cannot_hold_is_refused_not_stored_as_a_removal() {
    use prost_types::value::Kind;
    let app = TestApp::spawn().await;
    let mut client = app.contacts_client().await;
    let properties = |plan: Kind| prost_types::Struct {
        fields: [("plan".to_owned(), prost_types::Value { kind: Some(plan) })].into(),
    };
    let upsert = |plan: Kind| UpsertContactRequest {
        phone_number: "+4915112345602".to_owned(),
        person_properties: Some(properties(plan)),
        ..Default::default()
    };
    client
        .upsert_contact(upsert(Kind::StringValue("gold".to_owned())))
        .await
        .expect("seeded");
    for number in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let refused = client
            .upsert_contact(upsert(Kind::NumberValue(number)))
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().starts_with("person_properties.plan:"),
            "{refused:?}"
        );
    }
    let kept = client
        .get_contact(GetContactRequest {
            lookup: Some(Lookup::PhoneNumber("+4915112345602".to_owned())),
        })
        .await
        .expect("contact")
        .into_inner()
        .contact
        .expect("contact")
        .properties
        .expect("properties");
    assert_eq!(switchbord_api::json::json_from_struct(kept)["plan"], "gold");
}
