//! Field validation of contact upserts: every error names its field.

use serde_json::{Value as Json, json};
use switchbord_api::json::struct_from_json;
use switchbord_api::v1::UpsertContactRequest;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::TestApp;

/// `[[…[1]…]]`, `levels` arrays deep.
pub fn nested_arrays(levels: usize) -> Json {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_values_are_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let phone = "+4915112345678";
    let cases = [
        (
            json!({"phone_number": phone, "person_properties": {"email": "not-an-email"}}),
            "person_properties.email",
        ),
        (
            json!({"phone_number": phone, "person_properties": {"email": 42}}),
            "person_properties.email",
        ),
        (
            json!({"phone_number": phone, "person_properties": {"locale": "not a locale!"}}),
            "person_properties.locale",
        ),
        (
            json!({"phone_number": phone, "person_properties": {"name": ["Jane"]}}),
            "person_properties.name",
        ),
        (
            json!({"phone_number": phone, "person_properties": "gold"}),
            "person_properties",
        ),
        (
            json!({"phone_number": phone, "custom_properties": [1, 2]}),
            "custom_properties",
        ),
        (
            json!({"phone_number": phone, "external_reference_id": {"id": 1}}),
            "external_reference_id",
        ),
        (
            json!({"phone_number": phone, "external_reference_id": "x".repeat(256)}),
            "external_reference_id",
        ),
        (
            json!({"phone_number": phone, "source_type": 1}),
            "source_type",
        ),
        (
            json!({"phone_number": phone, "first_name": false}),
            "first_name",
        ),
        (json!({"phone_number": phone, "tags": "vip"}), "tags"),
        (json!({"phone_number": phone, "tags": [""]}), "tags[0]"),
        (
            json!({"phone_number": phone, "tags": ["a\u{0}"]}),
            "tags[0]",
        ),
        (
            json!({"phone_number": phone, "external_reference_id": "crm\u{0}"}),
            "external_reference_id",
        ),
        (
            json!({"phone_number": phone, "person_properties": {"note": ["ok", {"deep": "a\u{0}b"}]}}),
            "person_properties.note",
        ),
        (
            json!({"phone_number": phone, "person_properties": {"name": "Jane\u{0}"}}),
            "person_properties.name",
        ),
        (
            json!({"phone_number": phone, "first_name": "Ja\u{0}ne"}),
            "first_name",
        ),
        (
            json!({"phone_number": phone, "last_name": "x".repeat(256)}),
            "last_name",
        ),
        (
            json!({"phone_number": phone, "first_name": "x".repeat(200), "last_name": "y".repeat(200)}),
            "last_name",
        ),
        (
            json!({"phone_number": phone, "person_properties": {"plan": nested_arrays(20)}}),
            "person_properties",
        ),
    ];
    for (body, field) in cases {
        let reply = app.post_json("/compat/contact", &body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(
            reply.body["error"]["field"], field,
            "{body}: {}",
            reply.text
        );
        assert_eq!(reply.body["error"]["details"][0]["field"], field);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_wrong_field_is_reported_at_once() {
    let app = TestApp::spawn().await;

    let reply = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": "nope", "person_properties": {"email": "bad", "locale": "??"}}),
        )
        .await;

    assert_eq!(reply.status, 400);
    let fields: Vec<&str> = reply.body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|detail| detail["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "phone_number",
            "person_properties.email",
            "person_properties.locale"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_value_is_named_in_the_object_it_was_sent_in() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({"phone_number": "+4915112345678", "custom_properties": {"email": "bad"}}),
            "custom_properties.email",
        ),
        (
            json!({"phone_number": "+4915112345678",
                   "custom_properties": {" ": 1},
                   "person_properties": {"locale": "de-DE"}}),
            "custom_properties. ",
        ),
        // A key in both: the person_properties value is the one kept, and judged.
        (
            json!({"phone_number": "+4915112345678",
                   "custom_properties": {"email": "jane@example.com"},
                   "person_properties": {"email": "bad"}}),
            "person_properties.email",
        ),
    ];
    for (body, field) in cases {
        let reply = app.post_json("/compat/contact", &body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(
            reply.body["error"]["field"], field,
            "{body}: {}",
            reply.text
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_wrong_values_get_a_400_listing_the_first_few() {
    let app = TestApp::spawn().await;
    // Empty tags, each wrong in the core: thousands of violations from a body of a few KiB,
    // more than an HTTP/2 header block between the gateway and the core may carry.
    let many_wrong_tags = json!({"phone_number": "+4915112345678", "tags": vec![""; 3000]});
    // One wrong property whose key, echoed in the field's name, is 20,000 characters long.
    let long_key = json!({
        "phone_number": "+4915112345678",
        "person_properties": {"k".repeat(20_000): 1},
    });
    // Numbers where tags are strings, each wrong in the gateway: half a million in 1 MiB.
    let numeric_tags = json!({"phone_number": "+4915112345678", "tags": vec![0; 500_000]});
    for body in [many_wrong_tags, long_key, numeric_tags] {
        let reply = app.post_json("/compat/contact", &body).await;
        assert_eq!(
            reply.status,
            400,
            "{}",
            &reply.text[..reply.text.len().min(300)]
        );
        let details = reply.body["error"]["details"].as_array().expect("details");
        assert!(
            (1..=20).contains(&details.len()),
            "{} listed",
            details.len()
        );
        assert!(
            details.iter().all(|detail| detail["field"]
                .as_str()
                .is_some_and(|field| field.len() <= 80)),
            "{details:?}"
        );
        assert!(reply.text.len() < 8 * 1024, "{} bytes", reply.text.len());
    }
    let reply = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": "+4915112345678", "tags": vec![""; 3000]}),
        )
        .await;
    let last = reply.body["error"]["details"][19]["description"]
        .as_str()
        .unwrap_or_default();
    // Each empty tag is one violation; the list's length may be another.
    let unlisted: usize = last
        .rsplit_once("(and ")
        .and_then(|(_, rest)| rest.strip_suffix(" more not listed)"))
        .and_then(|count| count.parse().ok())
        .unwrap_or_default();
    assert!((2980..=2981).contains(&unlisted), "{last}");

    // The gateway's connection to the core carries on.
    let fine = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": "+4915112345678"}),
        )
        .await;
    assert_eq!(fine.status, 200, "{}", fine.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn numeric_external_reference_is_accepted_as_text() {
    let app = TestApp::spawn().await;

    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112345678", "external_reference_id": 4711}))
        .await;

    assert_eq!(created["contact"]["external_reference_id"], "4711");
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_nested_too_deep_are_refused_over_grpc_too() {
    let app = TestApp::spawn().await;
    let mut client = app.contacts_client().await;
    let properties = json!({"plan": nested_arrays(20)});
    let status = client
        .upsert_contact(UpsertContactRequest {
            phone_number: "+4915112345678".to_owned(),
            person_properties: properties.as_object().cloned().map(struct_from_json),
            ..Default::default()
        })
        .await
        .expect_err("21 levels deep");
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad_request = status.get_details_bad_request().expect("BadRequest detail");
    assert_eq!(
        bad_request.field_violations[0].field,
        "person_properties.plan"
    );

    // The deepest allowed is stored and read back.
    let fits = json!({"plan": nested_arrays(19)});
    client
        .upsert_contact(UpsertContactRequest {
            phone_number: "+4915112345678".to_owned(),
            person_properties: fits.as_object().cloned().map(struct_from_json),
            ..Default::default()
        })
        .await
        .expect("20 levels deep");
    let reply = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": "+4915112345678", "person_properties": fits}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_may_not_grow_past_64_kib_across_upserts() {
    let app = TestApp::spawn().await;
    let phone = "+4915112345678";
    let first = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": phone, "person_properties": {"notes": "x".repeat(40_000)}}),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let grown = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": phone, "person_properties": {"more": "y".repeat(40_000)}}),
        )
        .await;
    assert_eq!(grown.status, 400, "{}", grown.text);
    assert_eq!(grown.body["error"]["field"], "person_properties");
    // Replacing what is there instead fits.
    let replaced = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": phone, "person_properties": {"notes": null, "more": "y".repeat(40_000)}}),
        )
        .await;
    assert_eq!(replaced.status, 200, "{}", replaced.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_grows_as_protobuf_is_still_judged_by_its_fields() {
    let app = TestApp::spawn().await;
    // About 900 KB of JSON, over 4 MiB as protobuf (each number becomes an 11-byte value).
    let numbers = vec![1; 450_000];
    let reply = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": "+4915112345678", "person_properties": {"numbers": numbers}}),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(
        reply.body["error"]["field"], "person_properties",
        "{}",
        reply.text
    );
}
