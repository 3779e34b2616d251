//! Emarsys custom external events (SPEC §2.3): authentication, validation, both payload
//! styles, contact sync, event rules, listening flows and redeliveries.

use std::time::Duration;

use diesel::sql_query;
use diesel::sql_types::{Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use reqwest::Method;
use serde_json::{Value as Json, json};
use switchbord_api::json::value_from_json;
use switchbord_api::v1::emarsys_service_client::EmarsysServiceClient;
use switchbord_api::v1::flow_service_client::FlowServiceClient;
use switchbord_api::v1::property_assignment::Source;
use switchbord_api::v1::{
    DeleteFlowRequest, EmarsysContact, EventRule, Flow, IngestEmarsysEventRequest,
    PropertyAssignment, PutEventRuleRequest, PutFlowRequest,
};

use crate::helpers::{
    HttpReply, TestApp, WithKey, eventually, until_statements_wait_for_a_lock,
    until_waiting_for_locks,
};

const PATH: &str = "/api/v0/webhooks/incoming/emarsys/custom_external_event";
const SECRET: &str = "emarsys-shared-secret-123";
const PHONE: &str = "+4915112345678";

async fn post(app: &TestApp, query: &str, body: &str, headers: &[(&str, &str)]) -> HttpReply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    app.send_anonymous(
        Method::POST,
        &format!("{PATH}{query}"),
        &all,
        body.to_owned(),
    )
    .await
}

fn jwt(secret: &str, claims: Json) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a JWT")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_configured_secret_the_path_is_open() {
    let app = TestApp::spawn().await;

    let reply = post(
        &app,
        "",
        r#"{"event_name": "order_placed", "phone_number": "+4915112345678"}"#,
        &[],
    )
    .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["status"], "accepted");
    assert!(reply.body["message"].is_string());
    assert!(
        uuid::Uuid::parse_str(reply.body["webhookEventId"].as_str().unwrap_or_default()).is_ok()
    );
    assert!(uuid::Uuid::parse_str(reply.body["outboxJobId"].as_str().unwrap_or_default()).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_cannot_be_read_is_reported_only_to_a_caller_with_the_secret() {
    let app = TestApp::builder().emarsys_secret(SECRET).spawn().await;
    let good = jwt(SECRET, json!({"iat": now(), "exp": now() + 300}));
    let bearer = format!("Bearer {good}");
    for (body, field) in [
        ("{not json", "body"),
        (r#"{"event_name": 7}"#, "event_name"),
        (
            r#"{"event_name": "x", "payload": "not an object"}"#,
            "payload",
        ),
    ] {
        for (who, reply) in [
            ("no secret", post(&app, "", body, &[]).await),
            (
                "a wrong secret",
                post(&app, "?secret=nope", body, &[]).await,
            ),
        ] {
            assert_eq!(reply.status, 401, "{body} with {who}: {}", reply.text);
            assert_eq!(reply.body["status"], "error", "{}", reply.text);
            assert!(
                !reply.text.contains(field) || field == "body",
                "{}",
                reply.text
            );
        }
        for (who, reply) in [
            (
                "the secret",
                post(&app, &format!("?secret={SECRET}"), body, &[]).await,
            ),
            (
                "a JWT",
                post(&app, "", body, &[("authorization", &bearer)]).await,
            ),
        ] {
            assert_eq!(reply.status, 400, "{body} with {who}: {}", reply.text);
            assert!(
                reply.text.contains(field),
                "{body} with {who}: {}",
                reply.text
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secret_or_a_jwt_signed_with_it_is_required_once_configured() {
    let app = TestApp::builder().emarsys_secret(SECRET).spawn().await;
    let body = r#"{"event_name": "order_placed"}"#;
    let good = jwt(SECRET, json!({"iat": now(), "exp": now() + 300}));
    let forged = jwt("another-secret", json!({"iat": now()}));
    let expired = jwt(SECRET, json!({"exp": now() - 3600}));
    let future = jwt(SECRET, json!({"iat": now() + 3600}));
    let not_yet_valid = jwt(SECRET, json!({"iat": now(), "nbf": now() + 3600}));

    let missing = post(&app, "", body, &[]).await;
    let wrong = post(&app, "?secret=nope", body, &[]).await;
    let forged_reply = post(
        &app,
        "",
        body,
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    let expired_reply = post(
        &app,
        "",
        body,
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    let future_reply = post(
        &app,
        "",
        body,
        &[("authorization", &format!("Bearer {future}"))],
    )
    .await;
    let not_yet_valid_reply = post(
        &app,
        "",
        body,
        &[("authorization", &format!("Bearer {not_yet_valid}"))],
    )
    .await;
    let garbage = post(&app, "", body, &[("authorization", "Bearer not.a.jwt")]).await;
    // Too long to forward with the call, alone or beside a key: refused as any wrong secret.
    let huge = format!("?secret={}", "a".repeat(17_000));
    let huge_secret = post(&app, &huge, body, &[]).await;
    let beside_a_key = format!("?secret={}", "a".repeat(9 * 1024));
    let bearer = format!("Bearer {}", "b".repeat(8 * 1024 - 10));
    let beside_a_key = post(&app, &beside_a_key, body, &[("authorization", &bearer)]).await;
    assert_eq!(
        count(&app, "SELECT count(*) AS count FROM webhook_events").await,
        0,
        "rejected calls store nothing"
    );
    for reply in [&huge_secret, &beside_a_key] {
        assert_eq!(reply.status, 401, "{}", reply.text);
    }

    let right = post(&app, &format!("?secret={SECRET}"), body, &[]).await;
    // Named twice (a URL template that appends it again): read by the first.
    let twice = post(
        &app,
        &format!("?secret={SECRET}&secret={SECRET}"),
        r#"{"event_name": "order_cancelled"}"#,
        &[],
    )
    .await;
    let with_jwt = post(
        &app,
        "",
        r#"{"event_name": "order_shipped"}"#,
        &[("authorization", &format!("Bearer {good}"))],
    )
    .await;
    // Claims beyond the times are not checked: a token naming an audience is as good.
    let with_audience = jwt(
        SECRET,
        json!({"iat": now(), "aud": "switchbord", "iss": "emarsys"}),
    );
    let with_audience_reply = post(
        &app,
        "",
        r#"{"event_name": "order_returned"}"#,
        &[("authorization", &format!("Bearer {with_audience}"))],
    )
    .await;
    // A large header of another scheme (a proxy's) is no credential and takes no budget.
    let negotiate = format!("Negotiate {}", "N".repeat(8 * 1024 - 20));
    let beside_negotiate = post(
        &app,
        &format!("?secret={SECRET}"),
        r#"{"event_name": "order_exchanged"}"#,
        &[("authorization", &negotiate)],
    )
    .await;

    for (name, reply) in [
        ("missing", &missing),
        ("wrong", &wrong),
        ("forged", &forged_reply),
        ("expired", &expired_reply),
        ("future iat", &future_reply),
        ("nbf ahead", &not_yet_valid_reply),
        ("garbage", &garbage),
    ] {
        assert_eq!(reply.status, 401, "{name}: {}", reply.text);
        assert_eq!(reply.body["status"], "error", "{name}");
    }
    assert_eq!(right.status, 200, "{}", right.text);
    assert_eq!(twice.status, 200, "{}", twice.text);
    assert_eq!(with_jwt.status, 200, "{}", with_jwt.text);
    assert_eq!(
        with_audience_reply.status, 200,
        "{}",
        with_audience_reply.text
    );
    assert_eq!(beside_negotiate.status, 200, "{}", beside_negotiate.text);
    assert_eq!(
        count(&app, "SELECT count(*) AS count FROM webhook_events").await,
        5
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn event_name_is_required_and_has_no_whitespace() {
    let app = TestApp::spawn().await;
    let bodies = [
        json!({}),
        json!({"event_name": ""}),
        json!({"event_name": "order placed"}),
        json!({"event_name": "order\tplaced"}),
        json!({"event_name": "order\nplaced"}),
        json!({"event_name": 42}),
        json!({"event_name": null}),
    ];
    for body in bodies {
        let reply = post(&app, "", &body.to_string(), &[]).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(reply.body["field"], "event_name", "{body}");
    }
    let bad_payload = post(&app, "", r#"{"event_name": "x", "payload": [1]}"#, &[]).await;
    assert_eq!(bad_payload.status, 400);
    assert_eq!(bad_payload.body["field"], "payload");
    for malformed in [
        "",
        "[]",
        "{",
        "\"x\"",
        r#"{"event_name": "x", "contact": 5}"#,
        r#"{"event_name": "x", "contact_data": "y"}"#,
    ] {
        let reply = post(&app, "", malformed, &[]).await;
        assert_eq!(reply.status, 400, "{malformed:?}: {}", reply.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_events_own_fields_and_one_nested_style_is_taken() {
    let app = TestApp::spawn().await;
    for (body, field) in [
        (
            json!({"event_name": "x", "phone": PHONE, "email": "not-an-address"}),
            "email",
        ),
        (
            json!({"event_name": "x", "contact": {"phone": PHONE, "email": "not-an-address"}}),
            "email",
        ),
        (json!({"event_name": "x", "phone": "12"}), "phone_number"),
        (
            json!({"event_name": "x", "contact_data": {"email": [5]}}),
            "contact_data.email",
        ),
        (
            json!({"event_name": "x", "contact": {"email": [5]}}),
            "contact.email",
        ),
        (
            json!({"event_name": "x", "contact": {"phone": PHONE}, "contact_data": {"phone": PHONE}}),
            "contact_data",
        ),
    ] {
        let reply = post(&app, "", &body.to_string(), &[]).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(reply.body["field"], field, "{body}: {}", reply.text);
    }
    assert_eq!(
        count(&app, "SELECT count(*) AS count FROM webhook_events").await,
        0,
        "refused events store nothing"
    );

    // A null `contact` is absent: the `contact_data` beside it is the contact.
    let body = json!({"event_name": "x", "contact": null, "contact_data": {"phone": PHONE}});
    let reply = post(&app, "", &body.to_string(), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let event = stored(&app, reply.body["webhookEventId"].as_str().expect("id")).await;
    assert_eq!(event.normalized["contact"]["phone_number"], PHONE);
    assert!(event.contact_id.is_some(), "{event:?}");
}

#[derive(diesel::QueryableByName, Debug)]
struct Stored {
    #[diesel(sql_type = Jsonb)]
    normalized: Json,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    contact_id: Option<uuid::Uuid>,
    #[diesel(sql_type = Text)]
    raw_body: String,
}

async fn stored(app: &TestApp, id: &str) -> Stored {
    let mut connection = app.database.connect().await;
    sql_query(format!(
        "SELECT normalized, contact_id, raw_body FROM webhook_events WHERE id = '{id}'"
    ))
    .get_result(&mut connection)
    .await
    .expect("stored event")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_idempotency_key_is_named_by_its_header() {
    let app = TestApp::spawn().await;
    let body = json!({"event_name": "order_placed", "phone": PHONE}).to_string();
    let reply = post(&app, "", &body, &[("Idempotency-Key", &"k".repeat(300))]).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(
        reply.text.contains("\"Idempotency-Key\"") && !reply.text.contains("idempotency_key"),
        "{}",
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flat_nested_and_contact_data_styles_store_the_same_shape() {
    let app = TestApp::spawn().await;
    let payload = json!({"order": {"id": 7, "total": 19.5}, "items": ["a", "b"]});
    let bodies = [
        json!({"event_name": "order_placed", "phone": PHONE, "external_reference_id": "crm-1", "email": "jane@example.com", "payload": payload, "voucher_pool": "spring"}),
        json!({"event_name": "order_placed", "contact": {"phone_number": PHONE, "external_reference_id": "crm-1", "email": "jane@example.com"}, "payload": payload, "voucher_pool": "spring"}),
        json!({"event_name": "order_placed", "contact_data": {"phone": PHONE, "external_reference_id": "crm-1", "email": "jane@example.com"}, "payload": payload, "voucher_pool": "spring"}),
    ];
    let mut shapes = Vec::new();
    for (index, body) in bodies.iter().enumerate() {
        let key = format!("style-{index}");
        let reply = post(&app, "", &body.to_string(), &[("Idempotency-Key", &key)]).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let event = stored(&app, reply.body["webhookEventId"].as_str().expect("id")).await;
        assert_eq!(
            event.raw_body,
            body.to_string(),
            "the raw body is kept as sent"
        );
        assert!(event.contact_id.is_some());
        shapes.push(event.normalized);
    }
    assert_eq!(shapes[0], shapes[1]);
    assert_eq!(shapes[1], shapes[2]);
    assert_eq!(shapes[0]["contact"]["phone_number"], PHONE);
    assert_eq!(shapes[0]["payload"], payload);
    assert_eq!(shapes[0]["voucher_pool"], "spring");
    let mut connection = app.database.connect().await;
    #[derive(diesel::QueryableByName)]
    struct JobPayload {
        #[diesel(sql_type = Jsonb)]
        payload: Json,
    }
    let jobs: Vec<JobPayload> = sql_query(
        "SELECT payload FROM outbox_jobs WHERE kind = 'integration.emarsys.custom_event'",
    )
    .load(&mut connection)
    .await
    .expect("jobs");
    assert_eq!(jobs.len(), 3);
    assert_eq!(
        jobs[0].payload["payload"], payload,
        "the payload reaches the job untouched"
    );
    assert_eq!(jobs[0].payload["voucher_pool"], "spring");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS count FROM events WHERE type = 'integration.emarsys.event_received'"
        )
        .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_fields_win_over_flat_ones() {
    let app = TestApp::spawn().await;
    let reply = post(
        &app,
        "",
        &json!({"event_name": "x", "phone": "+4915199999999", "email": "flat@example.com", "contact": {"phone_number": PHONE}}).to_string(),
        &[],
    )
    .await;
    let event = stored(&app, reply.body["webhookEventId"].as_str().expect("id")).await;
    assert_eq!(event.normalized["contact"]["phone_number"], PHONE);
    assert_eq!(event.normalized["contact"]["email"], "flat@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blank_phone_number_or_event_id_does_not_hide_the_other_spelling() {
    let app = TestApp::spawn().await;
    let body = json!({
        "event_name": "order_placed",
        "phone_number": "",
        "phone": PHONE,
        "event_id": " ",
        "request_id": "delivery-7",
    })
    .to_string();
    let first = post(&app, "", &body, &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let event = stored(&app, first.body["webhookEventId"].as_str().expect("id")).await;
    assert_eq!(event.normalized["contact"]["phone_number"], PHONE);
    assert!(event.contact_id.is_some(), "the contact is synced");

    // The same request_id, another body: a redelivery of the first.
    let again = json!({"event_name": "order_placed", "event_id": "", "request_id": "delivery-7"});
    let again = post(&app, "", &again.to_string(), &[]).await;
    assert_eq!(
        again.body["webhookEventId"], first.body["webhookEventId"],
        "{}",
        again.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_contact_is_synced_only_with_a_phone_number_or_a_known_reference() {
    let app = TestApp::spawn().await;

    let email_only = post(
        &app,
        "",
        r#"{"event_name": "x", "email": "jane@example.com"}"#,
        &[],
    )
    .await;
    let unknown_reference = post(
        &app,
        "",
        r#"{"event_name": "x", "external_reference_id": "crm-9"}"#,
        &[],
    )
    .await;
    let with_phone = post(&app, "", r#"{"event_name": "x", "phone_number": "+4915112345678", "external_reference_id": "crm-9", "email": "jane@example.com"}"#, &[]).await;
    let by_reference = post(
        &app,
        "",
        r#"{"event_name": "y", "external_reference_id": "crm-9", "email": "new@example.com"}"#,
        &[],
    )
    .await;
    let bad_phone = post(
        &app,
        "",
        r#"{"event_name": "x", "phone_number": "nope"}"#,
        &[],
    )
    .await;

    assert!(
        stored(
            &app,
            email_only.body["webhookEventId"].as_str().expect("id")
        )
        .await
        .contact_id
        .is_none()
    );
    assert!(
        stored(
            &app,
            unknown_reference.body["webhookEventId"]
                .as_str()
                .expect("id")
        )
        .await
        .contact_id
        .is_none()
    );
    let synced = stored(
        &app,
        with_phone.body["webhookEventId"].as_str().expect("id"),
    )
    .await
    .contact_id;
    assert!(synced.is_some());
    assert_eq!(
        stored(
            &app,
            by_reference.body["webhookEventId"].as_str().expect("id")
        )
        .await
        .contact_id,
        synced
    );
    assert_eq!(
        count(&app, "SELECT count(*) AS count FROM contacts").await,
        1
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS count FROM contacts WHERE email = 'new@example.com'"
        )
        .await,
        1
    );
    assert_eq!(bad_phone.status, 400);
    assert_eq!(bad_phone.body["field"], "phone_number");
}

/// Sends an `order_placed` event for `PHONE` and waits until its job has run.
async fn order_placed(app: &TestApp) {
    let body = json!({"event_name": "order_placed", "event_id": uuid::Uuid::new_v4(), "phone_number": PHONE});
    let reply = post(app, "", &body.to_string(), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let job = reply.body["outboxJobId"].as_str().expect("job").to_owned();
    crate::helpers::until_job_succeeded(&app.database, &job).await;
}

/// A flow of the organisation `acme` named after its id, listening for `events`.
fn acme_flow(id: &str, enabled: bool, events: &[&str]) -> Flow {
    Flow {
        id: id.to_owned(),
        org: "acme".to_owned(),
        name: id.to_owned(),
        enabled,
        event_names: events.iter().map(|&event| event.to_owned()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flows_and_rules_beyond_their_bounds_are_refused_and_existing_ones_still_change() {
    let app = TestApp::spawn().await;
    // Up to the bounds (500 flows, 200 rules), written directly: every instance holds them all.
    let mut connection = app.database.connect().await;
    diesel::sql_query(
        "INSERT INTO flows (id, org, name, enabled, event_names, created_at, updated_at)
         SELECT 'flow-' || n, 'acme', 'flow ' || n, false, '{}', now(), now()
           FROM generate_series(1, 500) AS n",
    )
    .execute(&mut connection)
    .await
    .expect("flows");
    diesel::sql_query(
        "INSERT INTO event_rules (event_name, add_tags, remove_tags, set_properties, created_at,
                                  updated_at)
         SELECT 'event_' || n, '{}', '{}', '{}', now(), now() FROM generate_series(1, 200) AS n",
    )
    .execute(&mut connection)
    .await
    .expect("rules");
    let mut flows = FlowServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.manager)),
    );
    let rule = |event_name: &str| EventRule {
        event_name: event_name.to_owned(),
        add_tags: vec!["vip".to_owned()],
        ..Default::default()
    };

    let refused = flows
        .put_flow(PutFlowRequest {
            flow: Some(acme_flow("one-more", true, &["order_placed"])),
        })
        .await
        .expect_err("a 501st flow");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("at most 500 flows"),
        "{refused:?}"
    );
    let refused = flows
        .put_event_rule(PutEventRuleRequest {
            rule: Some(rule("one_more")),
        })
        .await
        .expect_err("a 201st rule");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("at most 200 event rules"),
        "{refused:?}"
    );

    flows
        .put_flow(PutFlowRequest {
            flow: Some(acme_flow("flow-7", true, &["order_placed"])),
        })
        .await
        .expect("an existing flow changes");
    flows
        .put_event_rule(PutEventRuleRequest {
            rule: Some(rule("event_7")),
        })
        .await
        .expect("an existing rule changes");
    // Over REST, the refusal is a 400 naming the precondition.
    let reply = app
        .send(
            Method::PUT,
            "/api/v1/admin/flows/one-more",
            &[
                ("x-api-key", app.keys.manager.as_str()),
                ("content-type", "application/json"),
            ],
            json!({"org": "acme", "name": "One more", "enabled": true, "event_names": ["order_placed"]})
                .to_string(),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    // The admin API's error shape: the gRPC code (9, FAILED_PRECONDITION) and its message.
    assert_eq!(reply.body["code"], 9, "{}", reply.text);
    assert!(
        reply.body["message"]
            .as_str()
            .is_some_and(|message| message.contains("at most 500 flows")),
        "{}",
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_and_flows_changed_through_the_api_or_elsewhere_apply_to_the_next_events() {
    let app = TestApp::spawn().await;
    crate::helpers::until_config_listened(&app.database).await;
    let mut flows = FlowServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.manager)),
    );
    let mut put = async |flow: &str, tag: &str| {
        flows
            .put_flow(PutFlowRequest {
                flow: Some(acme_flow(flow, true, &["order_placed"])),
            })
            .await
            .expect("put flow");
        flows
            .put_event_rule(PutEventRuleRequest {
                rule: Some(EventRule {
                    event_name: "order_placed".to_owned(),
                    add_tags: vec![tag.to_owned()],
                    ..Default::default()
                }),
            })
            .await
            .expect("put rule");
    };
    let tags = async || {
        app.upsert_contact(&json!({"phone_number": PHONE})).await["contact"]["tags"].clone()
    };
    let runs_of =
        |flow: &str| format!("SELECT count(*) AS count FROM journey_runs WHERE flow = '{flow}'");
    put("welcome", "first").await;
    let audited = "SELECT count(*) AS count FROM audit_entries
         WHERE (action, target_type, target_id) IN
             (('flow.put', 'flow', 'welcome'), ('event_rule.put', 'event_rule', 'order_placed'))
         AND actor_role = 'manager'";
    assert_eq!(count(&app, audited).await, 2, "both changes are audited");
    app.upsert_contact(&json!({"phone_number": PHONE})).await;
    // The job reads the flows and rules, and keeps them.
    order_placed(&app).await;
    assert_eq!(tags().await, json!(["first"]));

    // Changed through this instance's API: the next event sees the change, without waiting
    // for a notification (none is sent meanwhile).
    let mut connection = app.database.connect().await;
    let notifications = |toggle: &str| {
        format!(
            "ALTER TABLE flows {toggle} TRIGGER config_changed_notify;
             ALTER TABLE event_rules {toggle} TRIGGER config_changed_notify"
        )
    };
    connection
        .batch_execute(&notifications("DISABLE"))
        .await
        .expect("turn the notifications off");
    put("upsell", "second").await;
    order_placed(&app).await;
    assert_eq!(tags().await, json!(["first", "second"]));
    eventually("the new flow ran", async || {
        count(&app, &runs_of("upsell")).await == 1
    })
    .await;

    // Changed elsewhere (another instance, an operator's SQL): seen once its notification
    // arrives.
    connection
        .batch_execute(&notifications("ENABLE"))
        .await
        .expect("turn the notifications on");
    connection
        .batch_execute(
            "UPDATE event_rules SET add_tags = '{third}';
             UPDATE flows SET enabled = false WHERE id = 'upsell'",
        )
        .await
        .expect("change the rule and the flow");
    eventually("the rule changed elsewhere applies", async || {
        order_placed(&app).await;
        tags().await == json!(["first", "second", "third"])
    })
    .await;
    // Events sent before the flow's change arrived may have started triggers whose runs are
    // written by their own jobs: counted once every event's jobs have run.
    eventually("the triggers already started have run", async || {
        count(
            &app,
            "SELECT count(*) FROM outbox_jobs
             WHERE kind IN ('integration.emarsys.custom_event', 'journey.trigger')
               AND status <> 'succeeded'",
        )
        .await
            == 0
    })
    .await;
    let upsell_runs = count(&app, &runs_of("upsell")).await;
    order_placed(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&app, &runs_of("upsell")).await,
        upsell_runs,
        "the flow disabled elsewhere is not triggered"
    );
}

#[tokio::test]
async fn a_flow_or_rule_put_audits_the_fields_it_changed() {
    let app = TestApp::spawn().await;
    let mut flows = FlowServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.manager)),
    );
    let flow = acme_flow("welcome", true, &["order_placed"]);
    let renamed_and_off = Flow {
        name: "Welcome series".to_owned(),
        enabled: false,
        ..flow.clone()
    };
    for flow in [flow.clone(), flow, renamed_and_off] {
        flows
            .put_flow(PutFlowRequest { flow: Some(flow) })
            .await
            .expect("put flow");
    }
    let rule = EventRule {
        event_name: "order_placed".to_owned(),
        add_tags: vec!["buyer".to_owned()],
        ..Default::default()
    };
    let retagged = EventRule {
        remove_tags: vec!["prospect".to_owned()],
        ..rule.clone()
    };
    for rule in [rule, retagged] {
        flows
            .put_event_rule(PutEventRuleRequest { rule: Some(rule) })
            .await
            .expect("put rule");
    }
    flows
        .delete_flow(DeleteFlowRequest {
            id: "welcome".to_owned(),
        })
        .await
        .expect("delete flow");

    assert_eq!(
        crate::helpers::audit_trail(&app.database, "'flow', 'event_rule'").await,
        [
            "flow.put org,name,enabled,event_names welcome",
            "flow.put welcome",
            "flow.put name,enabled welcome",
            "event_rule.put add_tags,remove_tags,set_properties order_placed",
            "event_rule.put remove_tags order_placed",
            "flow.delete welcome",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_mutate_the_contact_and_listening_flows_are_triggered_once() {
    let app = TestApp::spawn().await;
    let mut flows = FlowServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.manager)),
    );
    for (id, enabled, events) in [
        ("welcome", true, vec!["order_placed"]),
        ("upsell", true, vec!["order_placed", "x"]),
        ("paused", false, vec!["order_placed"]),
        ("other", true, vec!["newsletter"]),
    ] {
        flows
            .put_flow(PutFlowRequest {
                flow: Some(acme_flow(id, enabled, &events)),
            })
            .await
            .expect("put flow");
    }
    flows
        .put_event_rule(PutEventRuleRequest {
            rule: Some(EventRule {
                event_name: "order_placed".to_owned(),
                add_tags: vec!["customer".to_owned()],
                remove_tags: vec!["prospect".to_owned()],
                set_properties: vec![
                    PropertyAssignment {
                        property: "last_order_total".to_owned(),
                        source: Some(Source::FromPayload("/order/total".to_owned())),
                    },
                    PropertyAssignment {
                        property: "segment".to_owned(),
                        source: Some(Source::Value(value_from_json(json!("buyer")))),
                    },
                ],
                ..Default::default()
            }),
        })
        .await
        .expect("put rule");
    app.upsert_contact(&json!({"phone_number": PHONE, "tags": ["prospect", "vip"]}))
        .await;
    app.database.watch_job_inserts().await;

    let reply = post(&app, "", &json!({"event_name": "order_placed", "phone_number": PHONE, "payload": {"order": {"total": 42.5}}}).to_string(), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let job_id = reply.body["outboxJobId"].as_str().expect("job").to_owned();

    eventually("both listening flows ran", async || {
        count(&app, "SELECT count(*) AS count FROM journey_runs").await == 2
    })
    .await;
    assert_eq!(
        app.database
            .jobs_inserted("journey.trigger", "running")
            .await,
        2,
        "the flows' trigger jobs start at once, as a request's do"
    );
    let contact = app.upsert_contact(&json!({"phone_number": PHONE})).await;
    assert_eq!(contact["contact"]["tags"], json!(["customer", "vip"]));
    assert_eq!(contact["contact"]["properties"]["last_order_total"], 42.5);
    assert_eq!(contact["contact"]["properties"]["segment"], "buyer");
    assert_eq!(count(&app, "SELECT count(*) AS count FROM journey_runs WHERE flow IN ('welcome', 'upsell') AND org = 'acme'").await, 2);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS count FROM events WHERE type = 'contact.updated'"
        )
        .await,
        1,
        "the rule's change emits contact.updated"
    );

    // A later change takes the rule's tag away; then the job runs again (as after a crash
    // before it recorded success): no second trigger, and the rule is not applied again over
    // the later change.
    app.upsert_contact(&json!({"phone_number": PHONE, "tags": ["vip"]}))
        .await;
    let mut connection = app.database.connect().await;
    sql_query(format!("UPDATE outbox_jobs SET status = 'pending', run_after = now(), attempts = 1 WHERE id = '{job_id}'"))
        .execute(&mut connection)
        .await
        .expect("requeue");
    eventually("the job ran again", async || {
        count(&app, &format!("SELECT count(*) AS count FROM outbox_jobs WHERE id = '{job_id}' AND status = 'succeeded' AND attempts = 2")).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&app, "SELECT count(*) AS count FROM journey_runs").await,
        2
    );
    let contact = app.upsert_contact(&json!({"phone_number": PHONE})).await;
    assert_eq!(contact["contact"]["tags"], json!(["vip"]));
}

/// The flows enrol the contact the event was stored for, by id: looked up again by its number
/// for each flow, a contact whose number changed while the job ran would not be found, and a
/// second contact made under the old number. Here the first flow's trigger waits for a lock
/// while the contact's number changes; the second flow's comes after.
#[tokio::test(flavor = "multi_thread")]
async fn listening_flows_enrol_the_events_contact_even_if_its_number_changes_meanwhile() {
    use diesel_async::SimpleAsyncConnection;
    let app = TestApp::spawn().await;
    let mut flows = FlowServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.manager)),
    );
    for flow in ["welcome", "upsell"] {
        flows
            .put_flow(PutFlowRequest {
                flow: Some(acme_flow(flow, true, &["order_placed"])),
            })
            .await
            .expect("put flow");
    }
    let created = app
        .upsert_contact(&json!({"phone_number": PHONE, "external_reference_id": "crm-7"}))
        .await;
    let contact_id = created["contact"]["id"].as_str().expect("id").to_owned();

    let mut blocker = app.database.connect().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE journey_trigger_keys IN EXCLUSIVE MODE")
        .await
        .expect("lock journey_trigger_keys");
    let body = json!({"event_name": "order_placed", "phone_number": PHONE});
    let reply = post(&app, "", &body.to_string(), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // The first flow's trigger waits for the lock.
    until_statements_wait_for_a_lock(&app.database, "%journey_trigger_keys%", 1).await;
    // The change waits for the first trigger, which has read the contact's number.
    let new_number = json!({"phone_number": "+4915199999999", "external_reference_id": "crm-7"});
    let (moved, ()) = tokio::join!(app.upsert_contact(&new_number), async {
        // The number's change waits for the trigger too.
        until_statements_wait_for_a_lock(&app.database, "%", 2).await;
        blocker.batch_execute("COMMIT").await.expect("unlock");
    });
    assert_eq!(moved["contact"]["id"], contact_id.as_str());

    eventually("both flows ran", async || {
        count(&app, "SELECT count(*) AS count FROM journey_runs").await == 2
    })
    .await;
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) AS count FROM journey_runs WHERE contact_id = '{contact_id}'"
            )
        )
        .await,
        2,
        "both runs are the event's contact's"
    );
    assert_eq!(
        count(&app, "SELECT count(*) AS count FROM contacts").await,
        1,
        "no contact made under the old number"
    );
    // Each trigger carries a number the contact had when it was accepted: the old one for the
    // first, and for the second whichever of the two it read (it may take the contact's row
    // before the change, which waits for the first, does).
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) AS count FROM outbox_jobs WHERE kind = 'journey.trigger' \
                 AND payload->>'phone_number' IN ('{PHONE}', '+4915199999999') \
                 AND payload->>'contact_id' = '{contact_id}'"
            )
        )
        .await,
        2
    );
}

/// Nested one level too deep, a rule's value is refused by the core; nested past protobuf's own
/// decoding limit (100), it would not reach the core's check: the gateway names it either way.
#[tokio::test(flavor = "multi_thread")]
async fn a_rules_value_nested_too_deep_is_a_400_naming_it_however_deep() {
    let app = TestApp::spawn().await;
    let manager = [
        ("x-api-key", app.keys.manager.as_str()),
        ("content-type", "application/json"),
    ];
    for levels in [20, 50, 120] {
        let body = json!({"set_properties": [
            {"property": "p", "value": crate::contact_validation::nested_arrays(levels)}
        ]});
        let reply = app
            .send(
                Method::PUT,
                "/api/v1/admin/event-rules/order_placed",
                &manager,
                body.to_string(),
            )
            .await;
        assert_eq!(reply.status, 400, "{levels} levels: {}", reply.text);
        assert_eq!(
            reply.body["details"][0]["field"], "set_properties[0].value",
            "{levels} levels: {}",
            reply.text
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_names_and_pointers_that_cannot_be_stored_are_400_naming_them() {
    let app = TestApp::spawn().await;
    let admin = [
        ("x-api-key", app.keys.admin.as_str()),
        ("content-type", "application/json"),
    ];
    let pointer = json!({"set_properties": [{"property": "p", "from_payload": "/a\u{0}"}]});
    let cases = [
        (Method::GET, "/api/v1/admin/flows/%00", None, "id"),
        (Method::DELETE, "/api/v1/admin/flows/%00", None, "id"),
        (
            Method::GET,
            "/api/v1/admin/event-rules/%00",
            None,
            "event_name",
        ),
        (
            Method::DELETE,
            "/api/v1/admin/event-rules/%00",
            None,
            "event_name",
        ),
        (
            Method::GET,
            "/api/v1/admin/outbox/jobs?kind=%00",
            None,
            "kind",
        ),
        (
            Method::PUT,
            "/api/v1/admin/event-rules/order_placed",
            Some(pointer),
            "rule.set_properties[0].from_payload",
        ),
        (
            Method::PUT,
            "/api/v1/admin/event-rules/order_placed",
            Some(json!({"add_tags": ["vip"], "remove_tags": [""]})),
            "rule.remove_tags[0]",
        ),
        // One property, two assignments (its spelling trimmed): which would win is a guess.
        (
            Method::PUT,
            "/api/v1/admin/event-rules/order_placed",
            Some(json!({"set_properties": [
                {"property": "tier", "value": "gold"},
                {"property": " tier ", "from_payload": "/tier"},
            ]})),
            "rule.set_properties[1].property",
        ),
    ];
    for (method, path, body, field) in cases {
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let reply = app.send(method.clone(), path, &admin, body).await;
        assert_eq!(reply.status, 400, "{method} {path}: {}", reply.text);
        assert_eq!(
            reply.body["details"][0]["field"], field,
            "{method} {path}: {}",
            reply.text
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_sets_no_null_it_cannot_keep_and_its_invalid_change_does_not_stop_the_flows() {
    let app = TestApp::spawn().await;
    let mut flows = FlowServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.manager)),
    );
    let from = |property: &str, pointer: &str| PropertyAssignment {
        property: property.to_owned(),
        source: Some(Source::FromPayload(pointer.to_owned())),
    };
    let fixed = |value: Json| EventRule {
        event_name: "order_placed".to_owned(),
        set_properties: vec![PropertyAssignment {
            property: "p".to_owned(),
            source: Some(Source::Value(value_from_json(value))),
        }],
        ..Default::default()
    };
    // A fixed value the contact's properties could not store is refused when the rule is put.
    for value in [
        json!("a\u{0}b"),
        crate::contact_validation::nested_arrays(20),
    ] {
        let refused = flows
            .put_event_rule(PutEventRuleRequest {
                rule: Some(fixed(value)),
            })
            .await
            .expect_err("an unstorable value");
        let details = tonic_types::StatusExt::get_details_bad_request(&refused).expect("details");
        assert_eq!(
            details.field_violations[0].field,
            "rule.set_properties[0].value"
        );
    }
    flows
        .put_flow(PutFlowRequest {
            flow: Some(acme_flow("welcome", true, &["order_placed"])),
        })
        .await
        .expect("put flow");
    flows
        .put_event_rule(PutEventRuleRequest {
            rule: Some(EventRule {
                event_name: "order_placed".to_owned(),
                set_properties: vec![
                    from("last_order_total", "/order/total"),
                    from("note", "/note"),
                ],
                ..Default::default()
            }),
        })
        .await
        .expect("put rule");
    app.upsert_contact(
        &json!({"phone_number": PHONE, "person_properties": {"last_order_total": 10}}),
    )
    .await;

    // `null` at the pointer sets nothing: the property is kept, not removed.
    let body = json!({"event_name": "order_placed", "phone_number": PHONE, "payload": {"order": {"total": null}}});
    let reply = post(&app, "", &body.to_string(), &[]).await;
    let job = reply.body["outboxJobId"].as_str().expect("job").to_owned();
    crate::helpers::until_job_succeeded(&app.database, &job).await;
    let contact = app.upsert_contact(&json!({"phone_number": PHONE})).await;
    assert_eq!(contact["contact"]["properties"]["last_order_total"], 10);

    // A value that would take the properties over their 64 KiB: the rule is skipped, the
    // flow still runs, and the job is not retried.
    let body = json!({"event_name": "order_placed", "phone_number": PHONE, "payload": {"note": "n".repeat(70_000)}});
    let reply = post(&app, "", &body.to_string(), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let job = reply.body["outboxJobId"].as_str().expect("job").to_owned();
    crate::helpers::until_job_succeeded(&app.database, &job).await;
    // The flow's trigger records its run in a job of its own, after the event's.
    eventually("the flow ran for both events", async || {
        count(&app, "SELECT count(*) AS count FROM journey_runs").await == 2
    })
    .await;
    let contact = app.upsert_contact(&json!({"phone_number": PHONE})).await;
    assert!(contact["contact"]["properties"]["note"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_that_would_pass_the_tag_limit_is_skipped() {
    let app = TestApp::spawn().await;
    FlowServiceClient::with_interceptor(app.channel().await, WithKey::new(Some(&app.keys.manager)))
        .put_event_rule(PutEventRuleRequest {
            rule: Some(EventRule {
                event_name: "order_placed".to_owned(),
                add_tags: vec!["customer".to_owned()],
                ..Default::default()
            }),
        })
        .await
        .expect("put rule");
    let tags: Vec<String> = (0..100).map(|index| format!("t{index:03}")).collect();
    app.upsert_contact(&json!({"phone_number": PHONE, "tags": tags}))
        .await;

    let body = json!({"event_name": "order_placed", "phone_number": PHONE});
    let reply = post(&app, "", &body.to_string(), &[]).await;
    let job = reply.body["outboxJobId"].as_str().expect("job").to_owned();
    crate::helpers::until_job_succeeded(&app.database, &job).await;
    let contact = app.upsert_contact(&json!({"phone_number": PHONE})).await;
    assert_eq!(
        contact["contact"]["tags"],
        json!(tags),
        "101 tags could not be sent back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_request_is_not_stored_twice() {
    let app = TestApp::spawn().await;
    let body = json!({"event_name": "order_placed", "phone_number": PHONE, "payload": {"n": 1}})
        .to_string();

    let first = post(&app, "", &body, &[]).await;
    let again = post(&app, "", &body, &[]).await;
    let with_id = post(&app, "", r#"{"event_name": "a", "event_id": "em-1"}"#, &[]).await;
    let same_id = post(
        &app,
        "",
        r#"{"event_name": "a", "event_id": "em-1", "payload": {"changed": true}}"#,
        &[],
    )
    .await;
    let keyed = post(
        &app,
        "",
        r#"{"event_name": "b"}"#,
        &[("Idempotency-Key", "k")],
    )
    .await;
    let same_key = post(
        &app,
        "",
        r#"{"event_name": "c"}"#,
        &[("Idempotency-Key", "k")],
    )
    .await;

    assert_eq!(again.status, 200);
    assert_eq!(again.body["webhookEventId"], first.body["webhookEventId"]);
    assert_eq!(again.body["outboxJobId"], first.body["outboxJobId"]);
    assert_eq!(
        same_id.body["webhookEventId"],
        with_id.body["webhookEventId"]
    );
    assert_eq!(
        same_key.body["webhookEventId"],
        keyed.body["webhookEventId"]
    );
    assert_eq!(
        count(&app, "SELECT count(*) AS count FROM webhook_events").await,
        3
    );
    assert_eq!(count(&app, "SELECT count(*) AS count FROM outbox_jobs WHERE kind = 'integration.emarsys.custom_event'").await, 3);
}

/// Over gRPC a redelivery also names the first delivery's contact, and the delivery key, the
/// event record and the answer all name the one job.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_answers_with_the_first_deliverys_contact_and_job() {
    let app = TestApp::spawn().await;
    let mut emarsys = EmarsysServiceClient::new(app.channel().await);
    let request = IngestEmarsysEventRequest {
        event_name: "order_placed".to_owned(),
        flat: Some(EmarsysContact {
            phone_number: PHONE.to_owned(),
            ..Default::default()
        }),
        raw_body: "{}".to_owned(),
        delivery_id: "em-7".to_owned(),
        ..Default::default()
    };

    let first = emarsys
        .ingest_emarsys_event(request.clone())
        .await
        .expect("first delivery")
        .into_inner();
    let again = emarsys
        .ingest_emarsys_event(request)
        .await
        .expect("redelivery")
        .into_inner();

    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert!(!first.contact_id.is_empty());
    assert_eq!(again.contact_id, first.contact_id);
    assert_eq!(again.outbox_job_id, first.outbox_job_id);
    let job = &first.outbox_job_id;
    let naming_the_job = format!(
        "SELECT count(*) AS count FROM webhook_event_keys k \
         JOIN webhook_events e ON e.id = k.webhook_event_id AND e.outbox_job_id = k.outbox_job_id \
         JOIN outbox_jobs j ON j.id = k.outbox_job_id \
         WHERE k.outbox_job_id = '{job}'"
    );
    assert_eq!(count(&app, &naming_the_job).await, 1);
}

/// A gRPC caller sends no body: its events are told apart by what they say, not all taken for
/// redeliveries of the first.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_events_without_a_body_or_id_are_redeliveries_only_when_they_are_the_same_event() {
    let app = TestApp::spawn().await;
    let mut emarsys = EmarsysServiceClient::new(app.channel().await);
    let event = |name: &str, phone: &str| IngestEmarsysEventRequest {
        event_name: name.to_owned(),
        flat: Some(EmarsysContact {
            phone_number: phone.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };

    let first = emarsys
        .ingest_emarsys_event(event("order_placed", PHONE))
        .await
        .expect("first")
        .into_inner();
    let other = emarsys
        .ingest_emarsys_event(event("signup", "+4915199999999"))
        .await
        .expect("another event")
        .into_inner();
    let same = emarsys
        .ingest_emarsys_event(event("order_placed", PHONE))
        .await
        .expect("the first again")
        .into_inner();

    assert!(!first.duplicate);
    assert!(!other.duplicate, "a different event is not a redelivery");
    assert_ne!(other.webhook_event_id, first.webhook_event_id);
    assert!(same.duplicate, "the same event again is");
    assert_eq!(same.webhook_event_id, first.webhook_event_id);
    assert_eq!(
        count(&app, "SELECT count(*) AS count FROM webhook_events").await,
        2
    );
}

/// A redelivery that finds its expired key locked waits; when the holder commits a fresh take,
/// the redelivery answers with that holder, not with the expired one it could still see.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_waiting_for_a_key_taken_meanwhile_answers_with_the_new_holder() {
    let window = Duration::from_secs(1);
    let app = TestApp::builder().outbox_retention(window).spawn().await;
    let body = r#"{"event_name": "a", "event_id": "em-1"}"#;
    let expired = post(&app, "", body, &[]).await;
    assert_eq!(expired.status, 200, "{}", expired.text);
    tokio::time::sleep(window + Duration::from_millis(200)).await;

    let (event, job) = (
        "0190a000-0000-7000-8000-000000000001",
        "0190a000-0000-7000-8000-000000000002",
    );
    let mut holder = app.database.connect().await;
    holder
        .batch_execute(&format!(
            "BEGIN; UPDATE webhook_event_keys \
             SET webhook_event_id = '{event}', outbox_job_id = '{job}', accepted_at = now()"
        ))
        .await
        .expect("take the key");
    let commit_once_waited_for = async {
        until_waiting_for_locks(&app.database, 1).await;
        holder.batch_execute("COMMIT").await.expect("commit");
    };
    let (reply, ()) = tokio::join!(post(&app, "", body, &[]), commit_once_waited_for);

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["webhookEventId"], event, "{}", reply.text);
    assert_eq!(reply.body["outboxJobId"], job, "{}", reply.text);
}

/// A redelivery answers as the first delivery did even when its contact fields would now be
/// refused: here its phone number and its reference have come to name two different contacts.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_is_answered_even_when_its_contact_would_now_conflict() {
    let app = TestApp::spawn().await;
    let body = json!({"event_name": "a", "event_id": "em-1", "phone_number": PHONE, "external_reference_id": "crm-1"}).to_string();
    let first = post(&app, "", &body, &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    app.upsert_contact(&json!({"phone_number": PHONE, "external_reference_id": "crm-2"}))
        .await;
    app.upsert_contact(
        &json!({"phone_number": "+4915122222222", "external_reference_id": "crm-1"}),
    )
    .await;
    let new_event = post(&app, "", &body.replace("em-1", "em-2"), &[]).await;
    assert_eq!(
        new_event.status, 409,
        "a new event is refused: {}",
        new_event.text
    );

    let again = post(&app, "", &body, &[]).await;

    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["webhookEventId"], first.body["webhookEventId"]);
}

/// Events that create the same new contact at once race on its phone number; the losers run
/// their transaction again and find the winner's contact.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_events_for_one_new_contact_all_land_on_it() {
    let app = TestApp::spawn().await;
    let bodies: Vec<String> = (0..20)
        .map(|n| json!({"event_name": "order_placed", "phone_number": PHONE, "event_id": format!("em-{n}")}).to_string())
        .collect();

    let replies =
        futures::future::join_all(bodies.iter().map(|body| post(&app, "", body, &[]))).await;

    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    assert_eq!(
        count(&app, "SELECT count(*) AS count FROM contacts").await,
        1
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS count FROM webhook_events e JOIN contacts c ON c.id = e.contact_id"
        )
        .await,
        20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_configure_flows_and_rules_over_rest() {
    let app = TestApp::spawn().await;
    let manager = [
        ("x-api-key", app.keys.manager.as_str()),
        ("content-type", "application/json"),
    ];
    let user = [("x-api-key", app.keys.user.as_str())];

    let flow = app
        .send(
            Method::PUT,
            "/api/v1/admin/flows/welcome",
            &manager,
            r#"{"org": "acme", "name": "Welcome", "event_names": ["order_placed"]}"#,
        )
        .await;
    let rule = app
        .send(
            Method::PUT,
            "/api/v1/admin/event-rules/order_placed",
            &manager,
            r#"{"add_tags": ["customer"], "set_properties": [{"property": "total", "from_payload": "/order/total"}, {"property": "segment", "value": "buyer"}]}"#,
        )
        .await;
    let flows = app
        .send(Method::GET, "/api/v1/admin/flows", &manager, "")
        .await;
    let fetched_rule = app
        .send(
            Method::GET,
            "/api/v1/admin/event-rules/order_placed",
            &manager,
            "",
        )
        .await;
    let bad_rule = app
        .send(
            Method::PUT,
            "/api/v1/admin/event-rules/x",
            &manager,
            r#"{"set_properties": [{"property": "name", "value": "x"}]}"#,
        )
        .await;
    let bad_flow = app
        .send(
            Method::PUT,
            "/api/v1/admin/flows/bad%20id",
            &manager,
            r#"{"org": "acme", "name": "x"}"#,
        )
        .await;
    let as_user = app
        .send(Method::GET, "/api/v1/admin/flows", &user, "")
        .await;
    let deleted = app
        .send(Method::DELETE, "/api/v1/admin/flows/welcome", &manager, "")
        .await;
    let gone = app
        .send(Method::GET, "/api/v1/admin/flows/welcome", &manager, "")
        .await;
    let deleted_again = app
        .send(Method::DELETE, "/api/v1/admin/flows/welcome", &manager, "")
        .await;
    let no_rule = app
        .send(
            Method::DELETE,
            "/api/v1/admin/event-rules/never-configured",
            &manager,
            "",
        )
        .await;

    assert_eq!(flow.status, 200, "{}", flow.text);
    assert_eq!(flow.body["enabled"], true);
    assert_eq!(rule.status, 200, "{}", rule.text);
    assert_eq!(flows.body["flows"][0]["id"], "welcome");
    assert_eq!(
        fetched_rule.body["set_properties"][0]["from_payload"],
        "/order/total"
    );
    assert_eq!(fetched_rule.body["set_properties"][1]["value"], "buyer");
    assert_eq!(bad_rule.status, 400, "{}", bad_rule.text);
    assert_eq!(
        bad_rule.body["details"][0]["field"],
        "rule.set_properties[0].property"
    );
    assert_eq!(bad_flow.status, 400, "{}", bad_flow.text);
    assert_eq!(as_user.status, 403);
    assert_eq!(deleted.status, 200);
    assert_eq!(gone.status, 404);
    assert_eq!(deleted_again.status, 404, "{}", deleted_again.text);
    assert!(
        deleted_again.text.contains("flow not found"),
        "{}",
        deleted_again.text
    );
    assert_eq!(no_rule.status, 404, "{}", no_rule.text);
    assert!(
        no_rule.text.contains("event rule not found"),
        "{}",
        no_rule.text
    );
    assert_eq!(
        count(&app, "SELECT count(*) AS count FROM audit_entries WHERE action IN ('flow.delete', 'event_rule.delete')").await,
        1,
        "only the deletion that happened is audited"
    );
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    crate::helpers::count(&app.database, sql).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_after_the_window_is_stored_again() {
    let window = Duration::from_secs(1);
    let app = TestApp::builder().outbox_retention(window).spawn().await;
    let body = r#"{"event_name": "a", "event_id": "em-1"}"#;

    let first = post(&app, "", body, &[]).await;
    let within = post(&app, "", body, &[]).await;
    assert_eq!(within.body["webhookEventId"], first.body["webhookEventId"]);
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    let after = post(&app, "", body, &[]).await;
    assert_eq!(after.status, 200, "{}", after.text);
    assert_ne!(after.body["webhookEventId"], first.body["webhookEventId"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_past_its_bounds_is_400_naming_the_list() {
    let app = TestApp::spawn().await;
    let admin = [
        ("x-api-key", app.keys.admin.as_str()),
        ("content-type", "application/json"),
    ];
    let event_names: Vec<String> = (0..101).map(|i| format!("event_{i}")).collect();
    let tags: Vec<String> = (0..101).map(|i| format!("tag-{i}")).collect();
    let assignments: Vec<Json> = (0..101)
        .map(|i| json!({"property": format!("p{i}"), "from_payload": "/x"}))
        .collect();
    // Each well under a contact's 64 KiB of properties, together over it.
    let half = "x".repeat(40 * 1024);
    let large_fixed = json!({"set_properties": [
        {"property": "a", "value": half},
        {"property": "b", "value": half},
    ]});
    // Under the gateway's 1 MiB as JSON, over 4 MiB as protobuf (the core's default bound).
    let numbers = vec![1; 450_000];
    let cases = [
        (
            "/api/v1/admin/flows/welcome",
            json!({"org": "acme", "name": "Welcome", "event_names": event_names}),
            "flow.event_names",
        ),
        (
            "/api/v1/admin/event-rules/order_placed",
            json!({"add_tags": tags}),
            "rule.add_tags",
        ),
        (
            "/api/v1/admin/event-rules/order_placed",
            json!({"set_properties": assignments}),
            "rule.set_properties",
        ),
        (
            "/api/v1/admin/event-rules/order_placed",
            large_fixed,
            "rule.set_properties",
        ),
        (
            "/api/v1/admin/event-rules/order_placed",
            json!({"set_properties": [{"property": "n", "value": numbers}]}),
            "rule.set_properties",
        ),
    ];
    for (path, body, field) in cases {
        let reply = app.send(Method::PUT, path, &admin, body.to_string()).await;
        assert_eq!(reply.status, 400, "{path} {field}: {}", reply.text);
        assert_eq!(
            reply.body["details"][0]["field"], field,
            "{path}: {}",
            reply.text
        );
    }

    let big_example = json!({
        "name": "order.shipped",
        "description": "An order left the warehouse",
        "example": {"numbers": numbers},
    });
    let reply = app
        .send(
            Method::POST,
            "/api/v1/webhooks/event-types",
            &admin,
            big_example.to_string(),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(
        reply.body["details"][0]["field"], "example",
        "{}",
        reply.text
    );

    let long_description = json!({
        "name": "order.shipped",
        "description": "ü".repeat(600),
    });
    let reply = app
        .send(
            Method::POST,
            "/api/v1/webhooks/event-types",
            &admin,
            long_description.to_string(),
        )
        .await;
    assert_eq!(
        reply.status, 200,
        "600 characters are within 1,000 characters, whatever their bytes: {}",
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flows_and_rules_are_listed_in_pages_a_client_can_read() {
    let app = TestApp::spawn().await;
    let manager = [
        ("x-api-key", app.keys.manager.as_str()),
        ("content-type", "application/json"),
    ];
    for id in ["c", "a", "b"] {
        let reply = app
            .send(
                Method::PUT,
                &format!("/api/v1/admin/flows/{id}"),
                &manager,
                json!({"org": "acme", "name": id, "event_names": ["order_placed"]}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    assert_eq!(
        app.all_pages("/api/v1/admin/flows", "flows", "id", 2).await,
        [vec!["a", "b"], vec!["c"]]
    );

    // 70 rules of 63 KiB each: about 4.4 MiB in all, more than one gRPC answer may be.
    let value = "v".repeat(63 * 1024);
    let mut names: Vec<String> = (0..70).map(|i| format!("event_{i:02}")).collect();
    for name in &names {
        let reply = app
            .send(
                Method::PUT,
                &format!("/api/v1/admin/event-rules/{name}"),
                &manager,
                json!({"set_properties": [{"property": "p", "value": value}]}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let pages = app
        .all_pages("/api/v1/admin/event-rules", "rules", "event_name", 500)
        .await;
    assert!(pages.len() >= 2, "cut by size, not count: {}", pages.len());
    names.sort();
    assert_eq!(pages.concat(), names, "each rule once, in order");

    let cases = [
        ("/api/v1/admin/flows?page_size=501", "page_size"),
        ("/api/v1/admin/event-rules?page_size=-1", "page_size"),
        // A NUL, base64-encoded: no position PostgreSQL can compare.
        ("/api/v1/admin/flows?page_token=AA", "page_token"),
        ("/api/v1/admin/event-rules?page_token=%25%25", "page_token"),
        ("/api/v1/admin/flows?page_size=many", "page_size"),
    ];
    for (path, field) in cases {
        let reply = app.send(Method::GET, path, &manager, "").await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert_eq!(
            reply.body["details"][0]["field"], field,
            "{path}: {}",
            reply.text
        );
    }
}
