//! Field validation of contact upserts: every error names its field.

use serde_json::json;

use crate::helpers::TestApp;

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
async fn numeric_external_reference_is_accepted_as_text() {
    let app = TestApp::spawn().await;

    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112345678", "external_reference_id": 4711}))
        .await;

    assert_eq!(created["contact"]["external_reference_id"], "4711");
}
