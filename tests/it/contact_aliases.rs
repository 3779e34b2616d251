//! Charles-era field aliases (SPEC §2.1): `custom_properties`, `first_name`/`last_name`,
//! `tags`, `phone`.

use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn phone_stands_in_for_phone_number() {
    let app = TestApp::spawn().await;

    let created = app
        .upsert_contact(&json!({"phone": "+4915112345678"}))
        .await;

    assert_eq!(created["contact"]["phone_number"], "+4915112345678");
    let reply = app
        .post_json("/compat/contact", &json!({"phone": "nope"}))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["field"], "phone");
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_properties_are_person_properties_and_lose_to_them() {
    let app = TestApp::spawn().await;

    let created = app
        .upsert_contact(&json!({
            "phone_number": "+4915112345678",
            "custom_properties": {"plan": "silver", "city": "Hamburg", "email": "old@example.com"},
            "person_properties": {"plan": "gold"}
        }))
        .await;

    assert_eq!(
        created["contact"]["properties"],
        json!({"plan": "gold", "city": "Hamburg"})
    );
    assert_eq!(created["contact"]["email"], "old@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn first_and_last_name_compose_the_name_unless_a_name_is_sent() {
    let app = TestApp::spawn().await;

    let composed = app
        .upsert_contact(
            &json!({"phone_number": "+4915112345678", "first_name": "Jane", "last_name": "Doe"}),
        )
        .await;
    let first_only = app
        .upsert_contact(&json!({"phone_number": "+4915122222222", "first_name": "Max"}))
        .await;
    let explicit = app
        .upsert_contact(&json!({"phone_number": "+4915133333333", "first_name": "Jane", "last_name": "Doe", "person_properties": {"name": "J. Doe"}}))
        .await;

    assert_eq!(composed["contact"]["name"], "Jane Doe");
    assert_eq!(first_only["contact"]["name"], "Max");
    assert_eq!(explicit["contact"]["name"], "J. Doe");
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_replace_the_tag_set_and_absent_tags_keep_it() {
    let app = TestApp::spawn().await;
    let phone = "+4915112345678";

    let tagged = app
        .upsert_contact(&json!({"phone_number": phone, "tags": ["vip", " newsletter ", "vip"]}))
        .await;
    let untouched = app.upsert_contact(&json!({"phone_number": phone})).await;
    let cleared = app
        .upsert_contact(&json!({"phone_number": phone, "tags": []}))
        .await;

    assert_eq!(tagged["contact"]["tags"], json!(["newsletter", "vip"]));
    assert_eq!(untouched["contact"]["tags"], json!(["newsletter", "vip"]));
    assert_eq!(cleared["contact"]["tags"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_must_be_strings() {
    let app = TestApp::spawn().await;

    let reply = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": "+4915112345678", "tags": ["ok", 7]}),
        )
        .await;

    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["field"], "tags[1]");
}
