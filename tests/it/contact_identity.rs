//! Identity rules, status, properties and first-class fields of contact upserts (SPEC §2.1).

use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn first_upsert_creates_and_second_updates_the_same_contact() {
    let app = TestApp::spawn().await;
    let body = json!({"phone_number": "+4915112345678", "external_reference_id": "crm-4711"});

    let created = app.upsert_contact(&body).await;
    let updated = app.upsert_contact(&body).await;

    assert_eq!(created["success"], true);
    assert_eq!(created["mode"], "compatibility");
    assert_eq!(created["operation"], "created");
    assert_eq!(updated["operation"], "updated");
    assert_eq!(created["contact"]["id"], updated["contact"]["id"]);
    assert_eq!(updated["contact"]["phone_number"], "+4915112345678");
    assert_eq!(updated["contact"]["external_reference_id"], "crm-4711");
}

#[tokio::test(flavor = "multi_thread")]
async fn contact_found_by_external_reference_gets_the_new_phone_number() {
    let app = TestApp::spawn().await;
    let created = app
        .upsert_contact(
            &json!({"phone_number": "+4915112345678", "external_reference_id": "crm-1"}),
        )
        .await;

    let moved = app
        .upsert_contact(
            &json!({"phone_number": "+4915199999999", "external_reference_id": "crm-1"}),
        )
        .await;

    assert_eq!(moved["operation"], "updated");
    assert_eq!(moved["contact"]["id"], created["contact"]["id"]);
    assert_eq!(moved["contact"]["phone_number"], "+4915199999999");
    let again = app
        .upsert_contact(&json!({"phone_number": "+4915199999999"}))
        .await;
    assert_eq!(again["contact"]["id"], created["contact"]["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn phone_and_reference_of_two_different_contacts_conflict_and_change_nothing() {
    let app = TestApp::spawn().await;
    let first = app
        .upsert_contact(&json!({"phone_number": "+4915111111111", "external_reference_id": "a", "person_properties": {"name": "A"}}))
        .await;
    let second = app
        .upsert_contact(&json!({"phone_number": "+4915122222222", "external_reference_id": "b", "person_properties": {"name": "B"}}))
        .await;

    let reply = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": "+4915111111111", "external_reference_id": "b", "person_properties": {"name": "X"}}),
        )
        .await;

    assert_eq!(reply.status, 409, "{}", reply.text);
    assert_eq!(reply.body["success"], false);
    assert_eq!(reply.body["error"]["code"], "already_exists");
    let first_after = app
        .upsert_contact(&json!({"phone_number": "+4915111111111"}))
        .await;
    let second_after = app
        .upsert_contact(&json!({"phone_number": "+4915122222222"}))
        .await;
    for (before, after) in [(&first, &first_after), (&second, &second_after)] {
        assert_eq!(before["contact"]["name"], after["contact"]["name"]);
        assert_eq!(
            before["contact"]["external_reference_id"],
            after["contact"]["external_reference_id"]
        );
        assert_eq!(
            before["contact"]["updated_at"],
            after["contact"]["updated_at"]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn opt_out_blocks_and_any_other_source_subscribes_again() {
    let app = TestApp::spawn().await;
    let phone = "+4915112345678";

    let fresh = app.upsert_contact(&json!({"phone_number": phone})).await;
    let blocked = app
        .upsert_contact(&json!({"phone_number": phone, "source_type": "opt_out"}))
        .await;
    let resubscribed = app
        .upsert_contact(&json!({"phone_number": phone, "source_type": "crm"}))
        .await;

    assert_eq!(fresh["contact"]["subscriber_status"], "subscribed");
    assert_eq!(blocked["contact"]["subscriber_status"], "blocked");
    assert_eq!(resubscribed["contact"]["subscriber_status"], "subscribed");
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_merge_and_null_removes_a_key() {
    let app = TestApp::spawn().await;
    let phone = "+4915112345678";
    app.upsert_contact(&json!({"phone_number": phone, "person_properties": {"plan": "gold", "city": "Berlin", "score": 3}}))
        .await;

    let merged = app
        .upsert_contact(&json!({"phone_number": phone, "person_properties": {"plan": "platinum", "city": null, "vip": true}}))
        .await;

    assert_eq!(
        merged["contact"]["properties"],
        json!({"plan": "platinum", "score": 3, "vip": true})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn name_email_and_locale_become_first_class_fields() {
    let app = TestApp::spawn().await;

    let created = app
        .upsert_contact(&json!({
            "phone_number": "+4915112345678",
            "external_reference_id": "crm-4711",
            "source_type": "internal",
            "person_properties": {"name": "Jane Doe", "email": "jane@example.com", "locale": "de-DE", "plan": "gold"}
        }))
        .await;

    let contact = &created["contact"];
    assert_eq!(contact["name"], "Jane Doe");
    assert_eq!(contact["email"], "jane@example.com");
    assert_eq!(contact["locale"], "de-DE");
    assert_eq!(contact["properties"], json!({"plan": "gold"}));
    assert_eq!(contact["tags"], json!([]));
    assert!(uuid::Uuid::parse_str(contact["id"].as_str().expect("id")).is_ok());
    for field in ["created_at", "updated_at"] {
        let text = contact[field].as_str().expect("timestamp");
        assert!(
            chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            "{field}: {text}"
        );
    }

    let cleared = app
        .upsert_contact(
            &json!({"phone_number": "+4915112345678", "person_properties": {"email": null}}),
        )
        .await;
    assert_eq!(cleared["contact"]["email"], serde_json::Value::Null);
    assert_eq!(cleared["contact"]["name"], "Jane Doe");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_upserts_of_one_number_create_one_contact() {
    let app = TestApp::spawn().await;
    let body = json!({"phone_number": "+4915112345678"});

    let replies =
        futures::future::join_all((0..20).map(|_| app.post_json("/compat/contact", &body))).await;

    let mut ids: Vec<_> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, 200, "{}", reply.text);
            reply.body["contact"]["id"].clone()
        })
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 1);
    let created = replies
        .iter()
        .filter(|reply| reply.body["operation"] == "created")
        .count();
    assert_eq!(created, 1);
}
