//! SPEC §2 common rules: paths, content types, body limits, request ids, legacy shapes.

use diesel::sql_types::{Array, Text, Uuid as SqlUuid};
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::TestApp;

const CONTACT: &str = r#"{"phone_number": "+4915112345678", "external_reference_id": "crm-4711", "person_properties": {"name": "Jane Doe", "plan": "gold"}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn legacy_put_has_the_charles_shape_with_and_without_trailing_slash() {
    let app = TestApp::spawn().await;
    let body: serde_json::Value = serde_json::from_str(CONTACT).expect("json");

    let created = app.put_json("/api/v1beta/contact/", &body).await;
    let updated = app.put_json("/api/v1beta/contact", &body).await;

    assert_eq!(created.status, 200, "{}", created.text);
    assert_eq!(created.body["status"], "ok");
    assert_eq!(created.body["message"], "contact created");
    assert_eq!(created.body["success"], true);
    assert_eq!(created.body["mode"], "compatibility");
    assert_eq!(created.body["operation"], "created");
    assert_eq!(created.body["contact"]["name"], "Jane Doe");
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(updated.body["message"], "contact updated");
    assert_eq!(updated.body["operation"], "updated");
    let mut keys: Vec<_> = created
        .body
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "contact",
            "message",
            "mode",
            "operation",
            "request_id",
            "status",
            "success"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_errors_carry_status_error_and_a_message() {
    let app = TestApp::spawn().await;

    let reply = app
        .put_json("/api/v1beta/contact/", &json!({"phone_number": "x"}))
        .await;

    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["status"], "error");
    assert_eq!(reply.body["field"], "phone_number");
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("phone_number")
    );
    assert_eq!(reply.body["errors"][0]["field"], "phone_number");
}

#[tokio::test(flavor = "multi_thread")]
async fn compat_path_accepts_a_trailing_slash() {
    let app = TestApp::spawn().await;

    let reply = app
        .send(
            Method::POST,
            "/compat/contact/",
            &[("content-type", "application/json")],
            CONTACT,
        )
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn text_plain_and_missing_content_types_are_read_as_json() {
    let app = TestApp::spawn().await;

    let plain = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("content-type", "text/plain")],
            CONTACT,
        )
        .await;
    let missing = app
        .send(Method::PUT, "/api/v1beta/contact/", &[], CONTACT)
        .await;

    assert_eq!(plain.status, 200, "{}", plain.text);
    assert_eq!(missing.status, 200, "{}", missing.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_one_mebibyte_are_413() {
    let app = TestApp::spawn().await;
    let padding = "x".repeat(1024 * 1024);
    let body = format!(
        r#"{{"phone_number": "+4915112345678", "person_properties": {{"pad": "{padding}"}}}}"#
    );

    let reply = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("content-type", "application/json")],
            body,
        )
        .await;

    assert_eq!(reply.status, 413, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_that_is_not_an_object_is_400() {
    let app = TestApp::spawn().await;
    for body in [
        "[1,2]",
        "\"+4915112345678\"",
        "42",
        "null",
        "true",
        "",
        "{",
        "{\"phone_number\": }",
    ] {
        let reply = app
            .send(
                Method::POST,
                "/compat/contact",
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(reply.status, 400, "{body:?}: {}", reply.text);
        assert_eq!(reply.body["error"]["field"], "body", "{body:?}");
    }
}

#[derive(QueryableByName)]
struct AuditRow {
    #[diesel(sql_type = SqlUuid)]
    request_id: Uuid,
    #[diesel(sql_type = Text)]
    action: String,
    #[diesel(sql_type = Array<Text>)]
    changed_fields: Vec<String>,
}

async fn audit_rows(app: &TestApp) -> Vec<AuditRow> {
    let mut connection = app.database.connect().await;
    sql_query("SELECT request_id, action, changed_fields FROM audit_entries WHERE target_type = 'contact' ORDER BY occurred_at")
        .load(&mut connection)
        .await
        .expect("read audit entries")
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_header_equals_the_body_and_the_audit_entry() {
    let app = TestApp::spawn().await;

    let reply = app
        .send(Method::POST, "/compat/contact", &[], CONTACT)
        .await;

    let header = reply.header("x-request-id").expect("X-Request-Id header");
    assert_eq!(reply.body["request_id"], header);
    let audit = audit_rows(&app).await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].request_id.to_string(), header);
    assert_eq!(audit[0].action, "contact.create");
    assert!(audit[0].changed_fields.contains(&"phone_number".to_owned()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_incoming_request_id_is_kept_and_an_invalid_one_replaced() {
    let app = TestApp::spawn().await;
    let sent = Uuid::new_v4().to_string();

    let kept = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("X-Request-Id", &sent)],
            CONTACT,
        )
        .await;
    let replaced = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("X-Request-Id", "not-a-uuid")],
            CONTACT,
        )
        .await;
    let error = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("X-Request-Id", &sent)],
            "[]",
        )
        .await;

    assert_eq!(kept.header("x-request-id"), Some(sent.as_str()));
    assert_eq!(kept.body["request_id"], sent.as_str());
    let new_id = replaced.header("x-request-id").expect("header");
    assert_ne!(new_id, "not-a-uuid");
    assert!(Uuid::parse_str(new_id).is_ok());
    assert_eq!(replaced.body["request_id"], new_id);
    assert_eq!(error.header("x-request-id"), Some(sent.as_str()));
    assert_eq!(error.body["request_id"], sent.as_str());
    let audit = audit_rows(&app).await;
    assert_eq!(audit[0].request_id.to_string(), sent);
    assert_eq!(audit[1].request_id.to_string(), new_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn unrouted_paths_and_methods_answer_in_their_familys_shape() {
    let app = TestApp::spawn().await;

    let legacy = app
        .send(Method::POST, "/api/v1beta/contact/", &[], "")
        .await;
    assert_eq!(legacy.status, 405);
    assert_eq!(legacy.header("allow"), Some("PUT"));
    assert_eq!(legacy.body["status"], "error", "{}", legacy.text);
    assert!(legacy.body["message"].is_string());

    // Emarsys calls a Charles path too.
    let emarsys = app
        .send(
            Method::GET,
            "/api/v0/webhooks/incoming/emarsys/custom_external_event",
            &[],
            "",
        )
        .await;
    assert_eq!(emarsys.status, 405);
    assert_eq!(emarsys.body["status"], "error", "{}", emarsys.text);

    let compat = app
        .send(Method::GET, "/compat/journey-trigger/", &[], "")
        .await;
    assert_eq!(compat.status, 404);
    assert_eq!(compat.body["success"], false, "{}", compat.text);
    assert_eq!(compat.body["mode"], "compatibility");
    assert_eq!(compat.body["error"]["code"], "not_found");

    let admin = app.send(Method::GET, "/api/v1/nothing-here", &[], "").await;
    assert_eq!(admin.status, 404);
    assert_eq!(admin.body["code"], 5, "{}", admin.text);
    let request_id = admin.header("x-request-id").expect("request id").to_owned();
    assert_eq!(admin.body["request_id"], request_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_still_carry_a_request_id() {
    let app = TestApp::spawn().await;

    let reply = app.send(Method::GET, "/nope", &[], "").await;

    assert_eq!(reply.status, 404);
    assert!(reply.header("x-request-id").is_some());
}
