//! Outbound webhooks (SPEC §4) against real receivers on loopback: fan-out, Standard Webhooks
//! signatures checked by a verifier written here from the specification, retries on a
//! controlled clock, 410, redirects, timeouts, auto-disable, health, test sends, recovery,
//! custom headers and the SSRF guard.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use diesel::sql_query;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use switchbord_api::v1::webhook_service_client::WebhookServiceClient;
use switchbord_api::v1::*;
use switchbord_core::outbox::ManualClock;
use tonic::Code;

use crate::helpers::{
    Answer, Authed, Receiver, TestApp, WithKey, config_listener, eventually, until_config_listened,
    until_job_succeeded, until_waiting_for_locks,
};

/// Standard Webhooks verification, from the specification's text: the key is the base64
/// part of `whsec_…`; the signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the header
/// holds space-separated `v1,<base64 HMAC-SHA256>` entries.
fn verifies(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header.split(' ').any(|signature| signature == expected)
}

/// As a GitHub-style receiver checks it: keyed with the secret's text, as it was shown.
fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn client(app: &TestApp) -> WebhookServiceClient<Authed> {
    WebhookServiceClient::with_interceptor(app.channel().await, WithKey::new(Some(&app.keys.admin)))
}

async fn create(app: &TestApp, url: &str, event_types: &[&str]) -> (Endpoint, String) {
    let created = client(app)
        .await
        .create_endpoint(CreateEndpointRequest {
            url: url.to_owned(),
            event_types: event_types.iter().map(|name| (*name).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .expect("create endpoint")
        .into_inner();
    (created.endpoint.expect("endpoint"), created.secret)
}

/// The endpoint as `GetEndpoint` describes it now.
async fn described(app: &TestApp, id: &str) -> Endpoint {
    client(app)
        .await
        .get_endpoint(GetEndpointRequest { id: id.to_owned() })
        .await
        .expect("get endpoint")
        .into_inner()
        .endpoint
        .expect("endpoint")
}

/// Backdates `endpoint`'s failing streak to have begun `days` ago, as the failure window reads it.
async fn failing_since_days_ago(app: &TestApp, endpoint: &str, days: u32) {
    let mut connection = app.database.connect().await;
    sql_query(format!(
        "UPDATE webhook_endpoints SET failing_since = now() - interval '{days} days' \
         WHERE id = '{endpoint}'"
    ))
    .execute(&mut connection)
    .await
    .expect("backdate the failing streak");
}

async fn new_contact(app: &TestApp, phone: &str) {
    app.upsert_contact(&json!({"phone_number": phone})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_fan_out_to_each_subscribed_endpoint_signed_per_spec() {
    let app = TestApp::spawn().await;
    let (first, second, unsubscribed) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let (_, first_secret) = create(&app, &first.url(), &["contact.created"]).await;
    let (_, second_secret) = create(&app, &second.url(), &[]).await;
    create(&app, &unsubscribed.url(), &["message.failed"]).await;

    new_contact(&app, "+4915112345678").await;

    let at_first = first.wait_for(1).await;
    let at_second = second.wait_for(1).await;
    for (received, secret) in [
        (&at_first[0], &first_secret),
        (&at_second[0], &second_secret),
    ] {
        let body = received.json();
        assert_eq!(body["type"], "contact.created");
        assert!(body["id"].as_str().unwrap_or_default().starts_with("evt_"));
        assert!(
            chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap_or_default())
                .is_ok()
        );
        assert_eq!(body["data"]["contact"]["phone_number"], "+4915112345678");
        assert_eq!(received.header("content-type"), "application/json");
        assert!(
            received
                .header("user-agent")
                .starts_with("Switchbord-Webhooks/")
        );
        assert_eq!(
            received.header("webhook-id"),
            body["id"].as_str().unwrap_or_default()
        );
        assert!(verifies(
            secret,
            received.header("webhook-id"),
            received.header("webhook-timestamp"),
            &received.body,
            received.header("webhook-signature")
        ));
        assert!(!verifies(
            secret,
            received.header("webhook-id"),
            "1",
            &received.body,
            received.header("webhook-signature")
        ));
        assert_eq!(
            received.header("x-signature-256"),
            github_signature(secret, &received.body)
        );
    }
    // The second endpoint (all types) also gets nothing else; the unsubscribed one nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(unsubscribed.received().is_empty());
    assert_eq!(second.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_endpoint_gets_nothing_and_its_deliveries_are_recoverable() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = create(&app, &receiver.url(), &["contact.created"]).await;
    let mut webhooks = client(&app).await;
    webhooks
        .disable_endpoint(DisableEndpointRequest {
            id: endpoint.id.clone(),
            reason: "maintenance".to_owned(),
        })
        .await
        .expect("disable");

    new_contact(&app, "+4915112345678").await;
    eventually("a skipped delivery is stored", async || {
        count(
            &app,
            "SELECT count(*) AS count FROM webhook_deliveries WHERE status = 'skipped'",
        )
        .await
            == 1
    })
    .await;
    assert!(receiver.received().is_empty());

    webhooks
        .enable_endpoint(EnableEndpointRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("enable");
    let recovered = webhooks
        .recover_deliveries(RecoverDeliveriesRequest {
            endpoint_id: endpoint.id.clone(),
            since: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - 3600,
                nanos: 0,
            }),
        })
        .await
        .expect("recover")
        .into_inner();
    assert_eq!(recovered.recovered, 1);
    receiver.wait_for(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_follow_the_retry_schedule_and_honour_retry_after() {
    let clock = Arc::new(ManualClock::default());
    let app = TestApp::builder().clock(clock.clone()).spawn().await;
    let receiver = Receiver::start().await;
    receiver.status(500);
    let (endpoint, _) = create(&app, &receiver.url(), &["contact.created"]).await;

    new_contact(&app, "+4915112345678").await;
    receiver.wait_for(1).await;
    rescheduled(&app, 1).await;
    // Not before the 5 s step of the schedule...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
    clock.advance(Duration::from_secs(6));
    receiver.wait_for(2).await;
    rescheduled(&app, 2).await;
    // ...then 5 minutes, this time asked to wait 2 hours by Retry-After.
    receiver.answer(Answer {
        status: 429,
        retry_after: Some(7200),
        ..Answer::default()
    });
    clock.advance(Duration::from_secs(6 * 60));
    receiver.wait_for(3).await;
    rescheduled(&app, 3).await;
    clock.advance(Duration::from_secs(31 * 60));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        receiver.received().len(),
        3,
        "Retry-After asked for longer than the schedule's 30 min"
    );
    receiver.status(200);
    clock.advance(Duration::from_secs(2 * 3600));
    receiver.wait_for(4).await;

    let deliveries = deliveries_of(&app, &endpoint.id).await;
    let attempts = eventually_attempts(&app, &deliveries[0].id, 4).await;
    let codes: Vec<i32> = attempts.iter().map(|attempt| attempt.status_code).collect();
    assert_eq!(codes, [500, 500, 429, 200]);
    assert!(
        attempts[..3]
            .iter()
            .all(|attempt| !attempt.succeeded && !attempt.error.is_empty())
    );
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] == pair[1]),
        "the same webhook-id on every retry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_echoes_the_request_cannot_put_custom_header_values_in_the_log() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.answer(Answer {
        echo_headers: true,
        ..Answer::default()
    });
    let endpoint = client(&app)
        .await
        .create_endpoint(CreateEndpointRequest {
            url: receiver.url(),
            event_types: vec!["contact.created".to_owned()],
            headers: [
                ("X-Api-Key".to_owned(), "key-for-the-receiver".to_owned()),
                ("X-Env".to_owned(), "1".to_owned()),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .endpoint
        .expect("endpoint");
    new_contact(&app, "+4915112345678").await;
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].header("x-api-key"), "key-for-the-receiver");

    let deliveries = deliveries_of(&app, &endpoint.id).await;
    let attempts = eventually_attempts(&app, &deliveries[0].id, 1).await;
    let echoed: serde_json::Value =
        serde_json::from_str(&attempts[0].response_excerpt).expect("the echo, as JSON");
    assert_eq!(echoed["headers"]["x-api-key"], "***", "{echoed}");
    assert_eq!(echoed["headers"]["x-env"], "1", "short values are kept");
    assert_eq!(
        echoed["headers"]["user-agent"],
        received[0].header("user-agent"),
        "the rest of the echo is kept"
    );
}

/// Waits until the delivery job recorded its `attempts`-th failure and went back to pending,
/// so that moving the clock cannot race the reschedule.
#[tokio::test(flavor = "multi_thread")]
async fn a_receivers_nul_bytes_are_stored_and_its_endless_retry_after_is_capped() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.answer(Answer {
        body: "ok\0done".to_owned(),
        ..Answer::default()
    });
    let (endpoint, _) = create(&app, &receiver.url(), &["contact.created"]).await;
    new_contact(&app, "+4915112345678").await;
    receiver.wait_for(1).await;
    let deliveries = deliveries_of(&app, &endpoint.id).await;
    let attempts = eventually_attempts(&app, &deliveries[0].id, 1).await;
    assert!(attempts[0].succeeded, "{:?}", attempts[0]);
    assert_eq!(attempts[0].response_excerpt, "ok\u{FFFD}done");

    // Longer than a timestamp can count: the delivery waits the longest allowed, a day.
    receiver.answer(Answer {
        status: 429,
        retry_after: Some(10_000_000_000_000),
        ..Answer::default()
    });
    new_contact(&app, "+4915112345679").await;
    receiver.wait_for(2).await;
    rescheduled(&app, 1).await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS count FROM outbox_jobs WHERE kind = 'webhook.deliver' \
             AND status = 'pending' AND run_after BETWEEN now() + interval '23 hours' \
             AND now() + interval '25 hours'",
        )
        .await,
        1
    );
}

async fn rescheduled(app: &TestApp, attempts: i64) {
    eventually("the delivery was rescheduled", async || {
        count(
            app,
            &format!("SELECT count(*) AS count FROM webhook_deliveries WHERE status = 'pending' AND attempts = {attempts}"),
        )
        .await
            == 1
            && count(app, "SELECT count(*) AS count FROM outbox_jobs WHERE kind = 'webhook.deliver' AND status = 'pending'").await == 1
    })
    .await;
}

async fn deliveries_of(app: &TestApp, endpoint_id: &str) -> Vec<Delivery> {
    client(app)
        .await
        .list_deliveries(ListDeliveriesRequest {
            endpoint_id: endpoint_id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("deliveries")
        .into_inner()
        .deliveries
}

async fn eventually_attempts(app: &TestApp, delivery: &str, count: usize) -> Vec<DeliveryAttempt> {
    let mut webhooks = client(app).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let attempts = webhooks
            .list_delivery_attempts(ListDeliveryAttemptsRequest {
                delivery_id: delivery.to_owned(),
                ..Default::default()
            })
            .await
            .expect("attempts")
            .into_inner()
            .attempts;
        if attempts.len() >= count {
            return attempts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} attempts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_whose_job_runs_out_of_runs_fails_and_can_be_retried() {
    let app = TestApp::builder()
        .webhook_schedule("0s,1h,1h")
        .outbox_poll_interval(Duration::from_millis(100))
        .spawn()
        .await;
    let receiver = Receiver::start().await;
    receiver.status(500);
    let (endpoint, _) = create(&app, &receiver.url(), &["message.delivered"]).await;
    publish_messages(&app, 1).await;
    rescheduled(&app, 1).await;

    // The job's backstop all but spent (as by many runs that the database failed), its next
    // run is its last; the delivery still has an attempt to come after it.
    let mut connection = app.database.connect().await;
    sql_query(
        "UPDATE outbox_jobs SET attempts = max_attempts - 1, run_after = now() \
         WHERE kind = 'webhook.deliver'",
    )
    .execute(&mut connection)
    .await
    .expect("spend the backstop");
    receiver.wait_for(2).await;
    eventually("the delivery failed with its job", async || {
        deliveries_of(&app, &endpoint.id).await[0].status == "failed"
    })
    .await;
    let delivery = deliveries_of(&app, &endpoint.id).await.remove(0);
    assert!(
        delivery.last_error.contains("its job gave up"),
        "{}",
        delivery.last_error
    );
    let dead = count(
        &app,
        "SELECT count(*) FROM outbox_jobs WHERE kind = 'webhook.deliver' AND status = 'dead'",
    )
    .await;
    assert_eq!(dead, 1);

    // A failed delivery is what the delivery log retries.
    receiver.status(200);
    client(&app)
        .await
        .retry_delivery(RetryDeliveryRequest {
            delivery_id: delivery.id,
        })
        .await
        .expect("retry");
    receiver.wait_for(3).await;
    eventually("the retried delivery succeeded", async || {
        deliveries_of(&app, &endpoint.id).await[0].status == "succeeded"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_410_disables_the_endpoint_with_its_reason() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.status(410);
    let url_with_token = format!("{}?token=t0ps3cret", receiver.url());
    let (endpoint, _) = create(&app, &url_with_token, &["contact.created"]).await;

    new_contact(&app, "+4915112345678").await;
    receiver.wait_for(1).await;
    eventually("the endpoint is disabled", async || {
        !described(&app, &endpoint.id).await.enabled
    })
    .await;
    let disabled = described(&app, &endpoint.id).await;

    assert!(
        disabled.disabled_reason.contains("410"),
        "{}",
        disabled.disabled_reason
    );
    assert_eq!(disabled.health(), EndpointHealth::Attention);
    // The event names the endpoint by id and origin: other receivers get it, and the URL's
    // token is not theirs to see.
    let announced = format!(
        "SELECT count(*) AS count FROM events WHERE type = 'webhook.endpoint_disabled'
            AND data ->> 'endpoint_id' = '{}' AND data ->> 'origin' = 'http://{}'
            AND data ->> 'reason' LIKE '%410%' AND data::text NOT LIKE '%t0ps3cret%'",
        endpoint.id, receiver.addr
    );
    assert_eq!(count(&app, &announced).await, 1);
    // A configuration change, audited as the service's own.
    let audited = format!(
        "SELECT count(*) FROM audit_entries WHERE action = 'webhook_endpoint.disable'
            AND target_id = '{}' AND actor_key_id IS NULL AND rpc = 'webhook.deliver'
            AND changed_fields = ARRAY['enabled', 'disabled_reason']",
        endpoint.id
    );
    assert_eq!(count(&app, &audited).await, 1);
}

#[tokio::test]
async fn writes_to_an_unknown_endpoint_are_not_found_and_leave_no_audit_entry() {
    let app = TestApp::spawn().await;
    let mut webhooks = client(&app).await;
    let id = uuid::Uuid::new_v4().to_string();
    let refusals = [
        webhooks
            .enable_endpoint(EnableEndpointRequest { id: id.clone() })
            .await
            .map(drop),
        webhooks
            .disable_endpoint(DisableEndpointRequest {
                id: id.clone(),
                reason: String::new(),
            })
            .await
            .map(drop),
        webhooks
            .delete_endpoint(DeleteEndpointRequest { id: id.clone() })
            .await
            .map(drop),
        webhooks
            .recover_deliveries(RecoverDeliveriesRequest {
                endpoint_id: id.clone(),
                since: Some(prost_types::Timestamp::default()),
            })
            .await
            .map(drop),
    ];
    for (index, refusal) in refusals.into_iter().enumerate() {
        let status = refusal.expect_err("no such endpoint");
        assert_eq!(status.code(), Code::NotFound, "{index}: {status:?}");
    }
    assert_eq!(
        crate::helpers::audit_trail(&app.database, "'webhook_endpoint'").await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_not_followed_and_slow_receivers_time_out() {
    let app = TestApp::builder()
        .webhook_timeout(Duration::from_millis(500))
        .webhook_schedule("0s")
        .spawn()
        .await;
    let (redirecting, target, slow) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    redirecting.answer(Answer {
        status: 302,
        location: Some(target.url()),
        ..Answer::default()
    });
    slow.answer(Answer {
        delay: Duration::from_secs(3),
        ..Answer::default()
    });
    let (redirect_endpoint, _) = create(&app, &redirecting.url(), &["webhook.test"]).await;
    let (slow_endpoint, _) = create(&app, &slow.url(), &["webhook.test"]).await;
    let mut webhooks = client(&app).await;

    let redirected = webhooks
        .send_test_event(SendTestEventRequest {
            id: redirect_endpoint.id,
        })
        .await
        .expect("test send")
        .into_inner()
        .attempt
        .expect("attempt");
    let timed_out = webhooks
        .send_test_event(SendTestEventRequest {
            id: slow_endpoint.id,
        })
        .await
        .expect("test send")
        .into_inner()
        .attempt
        .expect("attempt");

    assert_eq!(redirected.status_code, 302);
    assert!(!redirected.succeeded);
    assert!(
        redirected.error.contains("redirect"),
        "{}",
        redirected.error
    );
    assert!(
        target.received().is_empty(),
        "the redirect was not followed"
    );
    assert!(!timed_out.succeeded);
    assert!(timed_out.error.contains("timed out"), "{}", timed_out.error);
}

/// A receiver that answers `200` with a `Content-Length` it never sends in full: the status
/// arrives at once, the body stalls.
async fn stalling_body_receiver() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0_u8; 64 * 1024];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nreceived")
                    .await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
        }
    });
    format!("http://{addr}/hook")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_2xx_whose_body_stalls_is_a_success() {
    let app = TestApp::builder()
        .webhook_timeout(Duration::from_millis(500))
        .spawn()
        .await;
    let url = stalling_body_receiver().await;
    let (endpoint, _) = create(&app, &url, &["webhook.test"]).await;

    let attempt = client(&app)
        .await
        .send_test_event(SendTestEventRequest { id: endpoint.id })
        .await
        .expect("test send")
        .into_inner()
        .attempt
        .expect("attempt");

    assert_eq!(attempt.status_code, 200);
    assert!(attempt.succeeded, "{}", attempt.error);
    assert!(attempt.error.is_empty(), "{}", attempt.error);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_failing_for_the_whole_window_is_disabled() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.status(503);
    let (endpoint, _) = create(&app, &receiver.url(), &["contact.created"]).await;
    // A failure a moment ago, in a streak that began 6 days ago.
    new_contact(&app, "+4915112345670").await;
    eventually("the first failure is recorded", async || {
        count(
            &app,
            "SELECT count(*) FROM webhook_attempts WHERE NOT succeeded",
        )
        .await
            >= 1
    })
    .await;
    failing_since_days_ago(&app, &endpoint.id, 6).await;

    new_contact(&app, "+4915112345678").await;
    eventually("the endpoint is disabled", async || {
        !described(&app, &endpoint.id).await.enabled
    })
    .await;
    let disabled = described(&app, &endpoint.id).await;
    assert!(
        disabled
            .disabled_reason
            .contains("every delivery failed since"),
        "{}",
        disabled.disabled_reason
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_failure_after_days_of_quiet_starts_a_new_streak_rather_than_disable() {
    let app = TestApp::builder().webhook_schedule("0s").spawn().await;
    let receiver = Receiver::start().await;
    receiver.status(503);
    let (endpoint, _) = create(&app, &receiver.url(), &["contact.created"]).await;
    // It failed 6 days ago, and nothing was sent to it since.
    failing_since_days_ago(&app, &endpoint.id, 6).await;

    new_contact(&app, "+4915112345679").await;
    eventually("the failure is recorded", async || {
        count(
            &app,
            "SELECT count(*) FROM webhook_attempts WHERE NOT succeeded",
        )
        .await
            >= 1
    })
    .await;
    until_deliveries_end_or_fail(&app).await;
    let described = described(&app, &endpoint.id).await;
    assert!(described.enabled, "{described:?}");
    let restarted = count(
        &app,
        &format!(
            "SELECT count(*) FROM webhook_endpoints
              WHERE id = '{}' AND failing_since > now() - interval '1 minute'",
            endpoint.id
        ),
    )
    .await;
    assert_eq!(restarted, 1, "the streak starts again with this failure");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_moves_from_setup_and_ready_to_live_and_attention() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let mut webhooks = client(&app).await;
    let (endpoint, _) = create(&app, &receiver.url(), &["webhook.test"]).await;
    let health = async || described(&app, &endpoint.id).await;

    assert_eq!(health().await.health(), EndpointHealth::Ready);
    webhooks
        .disable_endpoint(DisableEndpointRequest {
            id: endpoint.id.clone(),
            reason: String::new(),
        })
        .await
        .expect("disable");
    assert_eq!(health().await.health(), EndpointHealth::Setup);
    webhooks
        .enable_endpoint(EnableEndpointRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("enable");
    let ok = webhooks
        .send_test_event(SendTestEventRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("test")
        .into_inner()
        .attempt
        .expect("attempt");
    let live = health().await;
    receiver.answer(Answer {
        status: 500,
        body: "broken".to_owned(),
        ..Answer::default()
    });
    let failed = webhooks
        .send_test_event(SendTestEventRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("test")
        .into_inner()
        .attempt
        .expect("attempt");
    let attention = health().await;
    // A success afterwards leaves the failed delivery to recover: still Attention, until it is
    // sent again.
    receiver.answer(Answer::default());
    webhooks
        .send_test_event(SendTestEventRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("test");
    let to_recover = health().await;
    let failed_delivery = webhooks
        .list_deliveries(ListDeliveriesRequest {
            endpoint_id: endpoint.id.clone(),
            status: "failed".to_owned(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .deliveries
        .remove(0);
    webhooks
        .retry_delivery(RetryDeliveryRequest {
            delivery_id: failed_delivery.id,
        })
        .await
        .expect("retry");
    eventually("the retried delivery succeeds", async || {
        health().await.health() == EndpointHealth::Live
    })
    .await;

    assert!(ok.succeeded);
    assert_eq!(ok.status_code, 200);
    assert_eq!(live.health(), EndpointHealth::Live);
    assert_eq!(live.success_rate, 1.0);
    assert!(live.last_success_at.is_some());
    assert!(!failed.succeeded);
    assert_eq!(failed.status_code, 500);
    assert_eq!(failed.response_excerpt, "broken");
    assert_eq!(attention.health(), EndpointHealth::Attention);
    assert_eq!(attention.success_rate, 0.5);
    assert!(attention.last_failure_at.is_some());
    assert_eq!(to_recover.health(), EndpointHealth::Attention);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_delivery_waiting_for_its_retry_needs_attention_in_the_api_and_the_gauges() {
    let app = TestApp::builder().webhook_schedule("0s,60s").spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = create(&app, &receiver.url(), &["message.delivered"]).await;
    // Beside it, one never sent to (ready) and one disabled before any delivery (setup).
    create(&app, &receiver.url(), &["contact.created"]).await;
    let (idle, _) = create(&app, &receiver.url(), &["contact.updated"]).await;
    client(&app)
        .await
        .disable_endpoint(DisableEndpointRequest {
            id: idle.id,
            reason: String::new(),
        })
        .await
        .expect("disable");
    receiver.status(500);
    publish_messages(&app, 1).await;
    receiver.wait_for(1).await;
    receiver.status(200);
    publish_messages(&app, 1).await;
    receiver.wait_for(2).await;

    // The last attempt succeeded and nothing failed for good, but the first delivery waits a
    // minute for its retry.
    // The retry is known once the failed attempt's job is rescheduled, just after the attempt
    // is recorded: waited for, as a reader a moment later sees it.
    eventually("the success is recorded and the retry waits", async || {
        let described = described(&app, &endpoint.id).await;
        described.last_success_at.is_some() && described.health() == EndpointHealth::Attention
    })
    .await;
    let described = described(&app, &endpoint.id).await;
    assert_eq!(described.success_rate, 0.5);
    let mut connection = app.database.connect().await;
    let gauges = switchbord_core::webhooks::health_counts(&mut connection, chrono::Utc::now())
        .await
        .expect("sample the gauges");
    assert_eq!(
        gauges,
        [("setup", 1), ("ready", 1), ("live", 0), ("attention", 1)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recover_resends_only_failed_deliveries_since_the_time() {
    let app = TestApp::builder().webhook_schedule("0s").spawn().await;
    let receiver = Receiver::start().await;
    receiver.status(500);
    let (endpoint, _) = create(&app, &receiver.url(), &["contact.created"]).await;
    new_contact(&app, "+4915111111111").await;
    receiver.wait_for(1).await;
    eventually("the first delivery failed", async || {
        count(
            &app,
            "SELECT count(*) AS count FROM webhook_deliveries WHERE status = 'failed'",
        )
        .await
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = chrono::Utc::now();
    new_contact(&app, "+4915122222222").await;
    receiver.wait_for(2).await;
    eventually("the second delivery failed", async || {
        count(
            &app,
            "SELECT count(*) AS count FROM webhook_deliveries WHERE status = 'failed'",
        )
        .await
            == 2
    })
    .await;
    receiver.status(200);

    let recovered = client(&app)
        .await
        .recover_deliveries(RecoverDeliveriesRequest {
            endpoint_id: endpoint.id,
            since: Some(prost_types::Timestamp {
                seconds: since.timestamp(),
                nanos: 0,
            }),
        })
        .await
        .expect("recover")
        .into_inner();

    assert_eq!(recovered.recovered, 1);
    let received = receiver.wait_for(3).await;
    assert_eq!(
        received[2].json()["data"]["contact"]["phone_number"],
        "+4915122222222"
    );
    eventually("one delivery succeeded", async || {
        count(
            &app,
            "SELECT count(*) AS count FROM webhook_deliveries WHERE status = 'succeeded'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS count FROM webhook_deliveries WHERE status = 'failed'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_headers_are_sent_and_masked_and_rotation_signs_with_both_secrets() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let mut webhooks = client(&app).await;
    let created = webhooks
        .create_endpoint(CreateEndpointRequest {
            url: receiver.url(),
            event_types: vec!["webhook.test".to_owned()],
            headers: [
                (
                    "Authorization".to_owned(),
                    "Bearer receiver-token-123".to_owned(),
                ),
                ("X-Api-Key".to_owned(), "k-456".to_owned()),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let endpoint = created.endpoint.expect("endpoint");
    let listed = webhooks
        .list_endpoints(ListEndpointsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let reserved = webhooks
        .create_endpoint(CreateEndpointRequest {
            url: receiver.url(),
            headers: [("webhook-signature".to_owned(), "forged".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect_err("reserved header");
    let rotated = webhooks
        .rotate_endpoint_secret(RotateEndpointSecretRequest {
            id: endpoint.id.clone(),
            secret: String::new(),
        })
        .await
        .expect("rotate")
        .into_inner()
        .secret;
    webhooks
        .send_test_event(SendTestEventRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("test send");
    let shown = webhooks
        .get_endpoint_secret(GetEndpointSecretRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("secret")
        .into_inner()
        .secret;

    assert_eq!(
        listed.endpoints[0]
            .headers
            .get("authorization")
            .map(String::as_str),
        Some("***")
    );
    assert!(!format!("{listed:?}").contains("receiver-token-123"));
    assert!(
        !format!("{listed:?}").contains(&created.secret),
        "listings never show the secret"
    );
    assert_eq!(reserved.code(), Code::InvalidArgument);
    assert_eq!(shown, rotated);
    let received = receiver.wait_for(1).await;
    let request = &received[0];
    assert_eq!(request.header("authorization"), "Bearer receiver-token-123");
    assert_eq!(request.header("x-api-key"), "k-456");
    let header = request.header("webhook-signature");
    assert_eq!(header.split(' ').count(), 2, "{header}");
    for secret in [&created.secret, &rotated] {
        assert!(verifies(
            secret,
            request.header("webhook-id"),
            request.header("webhook-timestamp"),
            &request.body,
            header
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_out_secret_stops_signing_after_its_24_hours() {
    let clock = Arc::new(ManualClock::default());
    let app = TestApp::builder().clock(clock.clone()).spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, old_secret) = create(&app, &receiver.url(), &["webhook.test"]).await;
    let mut webhooks = client(&app).await;
    let new_secret = webhooks
        .rotate_endpoint_secret(RotateEndpointSecretRequest {
            id: endpoint.id.clone(),
            secret: String::new(),
        })
        .await
        .expect("rotate")
        .into_inner()
        .secret;
    let signatures = async |expected: usize| {
        webhooks
            .clone()
            .send_test_event(SendTestEventRequest {
                id: endpoint.id.clone(),
            })
            .await
            .expect("test send");
        let received = receiver.wait_for(expected).await;
        let request = &received[expected - 1];
        let header = request.header("webhook-signature").to_owned();
        let verifies_with = |secret: &str| {
            verifies(
                secret,
                request.header("webhook-id"),
                request.header("webhook-timestamp"),
                &request.body,
                &header,
            )
        };
        (verifies_with(&old_secret), verifies_with(&new_secret))
    };

    clock.advance(Duration::from_secs(23 * 3600));
    assert_eq!(signatures(1).await, (true, true), "within the overlap");
    clock.advance(Duration::from_secs(3600 + 1));
    assert_eq!(signatures(2).await, (false, true), "after it");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ssrf_guard_refuses_private_addresses_at_save_and_at_connect() {
    let app = TestApp::builder().webhook_guard_on().spawn().await;
    let mut webhooks = client(&app).await;
    for url in [
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://10.0.0.8/hook",
        "https://172.16.1.1/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.1.1/hook",
        "https://224.0.0.1/hook",
        "https://0.0.0.0/hook",
        "https://[::1]/hook",
        "https://[fd00::1]/hook",
        "https://[fe80::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost/hook",
    ] {
        let refused = webhooks
            .create_endpoint(CreateEndpointRequest {
                url: url.to_owned(),
                ..Default::default()
            })
            .await
            .expect_err(url);
        assert_eq!(refused.code(), Code::InvalidArgument, "{url}: {refused:?}");
        // The addresses a name resolves to are not told: they would map internal DNS.
        if url == "https://localhost/hook" {
            assert_eq!(
                refused.message(),
                "url: host localhost resolves to a non-public address",
                "{refused:?}"
            );
        }
    }

    // A name that resolves to loopback when the delivery connects (as after DNS rebinding).
    let receiver = Receiver::start().await;
    let mut connection = app.database.connect().await;
    sql_query(format!(
        "INSERT INTO webhook_endpoints (id, url, secret, created_at, updated_at)
         VALUES (gen_random_uuid(), 'https://localhost:{}/hook', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', now(), now())",
        receiver.addr.port()
    ))
    .execute(&mut connection)
    .await
    .expect("insert an endpoint past the save-time check");
    let id: Vec<IdRow> = sql_query("SELECT id::text AS id FROM webhook_endpoints")
        .load(&mut connection)
        .await
        .expect("id");
    let attempt = webhooks
        .send_test_event(SendTestEventRequest {
            id: id[0].id.clone(),
        })
        .await
        .expect("test send")
        .into_inner()
        .attempt
        .expect("attempt");
    assert!(!attempt.succeeded);
    assert!(
        attempt.error.contains("blocked") || attempt.error.contains("non-public"),
        "{}",
        attempt.error
    );
    assert!(receiver.received().is_empty());
}

#[derive(diesel::QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    id: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn only_admins_configure_webhooks_and_event_types_can_be_registered() {
    let app = TestApp::spawn().await;
    let as_manager = WebhookServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.manager)),
    )
    .list_endpoints(ListEndpointsRequest::default())
    .await
    .expect_err("managers have no access to webhook settings");
    let mut webhooks = client(&app).await;
    webhooks
        .register_event_type(RegisterEventTypeRequest {
            name: "order.shipped".to_owned(),
            description: "An order left the warehouse.".to_owned(),
            ..Default::default()
        })
        .await
        .expect("register");
    let twice = webhooks
        .register_event_type(RegisterEventTypeRequest {
            name: "order.shipped".to_owned(),
            description: "again".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("exists");
    let bad = webhooks
        .register_event_type(RegisterEventTypeRequest {
            name: "Order Shipped".to_owned(),
            description: "x".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("bad name");
    let receiver = Receiver::start().await;
    let subscribed = create(&app, &receiver.url(), &["order.shipped"]).await;
    let unknown = webhooks
        .create_endpoint(CreateEndpointRequest {
            url: receiver.url(),
            event_types: vec!["nope.nope".to_owned()],
            ..Default::default()
        })
        .await
        .expect_err("unknown type");

    assert_eq!(as_manager.code(), Code::PermissionDenied);
    assert_eq!(twice.code(), Code::AlreadyExists);
    assert_eq!(
        crate::helpers::audit_trail(&app.database, "'event_type'").await,
        ["event_type.register description,schema,example order.shipped"],
        "the refused second registration is not audited"
    );
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(subscribed.0.event_types, ["order.shipped"]);
    assert_eq!(unknown.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_type_whose_schema_or_example_holds_a_nul_is_400_naming_the_field() {
    use reqwest::Method;
    let app = TestApp::spawn().await;
    let admin = [
        ("x-api-key", app.keys.admin.as_str()),
        ("content-type", "application/json"),
    ];
    for (field, body) in [
        (
            "schema",
            json!({"name": "order.shipped", "description": "x", "schema": {"type": "object", "title": "a\u{0}b"}}),
        ),
        (
            "example",
            json!({"name": "order.shipped", "description": "x", "example": {"a\u{0}": 1}}),
        ),
    ] {
        let reply = app
            .send(
                Method::POST,
                "/api/v1/webhooks/event-types",
                &admin,
                body.to_string(),
            )
            .await;
        assert_eq!(reply.status, 400, "{field}: {}", reply.text);
        assert_eq!(reply.body["details"][0]["field"], field, "{}", reply.text);
    }
    let registered = app
        .send(
            Method::POST,
            "/api/v1/webhooks/event-types",
            &admin,
            json!({"name": "order.shipped", "description": "x", "example": {"a": 1}}).to_string(),
        )
        .await;
    assert_eq!(registered.status, 200, "{}", registered.text);
}

#[derive(diesel::QueryableByName)]
struct StoredSecrets {
    #[diesel(sql_type = Text)]
    secret: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    previous_secret: Option<String>,
}

/// Holds the endpoint's row locked, in a transaction of its own, until `COMMIT` is sent on the
/// returned connection: requests that read it go on, and their writes wait.
async fn hold_endpoint(app: &TestApp, id: &str) -> diesel_async::AsyncPgConnection {
    use diesel_async::SimpleAsyncConnection;
    let mut holder = app.database.connect().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM webhook_endpoints WHERE id = '{id}' FOR UPDATE"
        ))
        .await
        .expect("lock the endpoint");
    holder
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_rotations_at_once_the_later_keeps_the_earlier_ones_secret_as_previous() {
    use diesel_async::SimpleAsyncConnection;
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, original) = create(&app, &receiver.url(), &[]).await;
    let mut holder = hold_endpoint(&app, &endpoint.id).await;
    let mut rotations = Vec::new();
    for _ in 0..2 {
        let mut webhooks = client(&app).await;
        let id = endpoint.id.clone();
        rotations.push(tokio::spawn(async move {
            webhooks
                .rotate_endpoint_secret(RotateEndpointSecretRequest {
                    id,
                    ..Default::default()
                })
                .await
                .expect("rotate")
                .into_inner()
                .secret
        }));
    }
    until_waiting_for_locks(&app.database, 2).await;
    holder.batch_execute("COMMIT").await.expect("release");
    let mut returned = Vec::new();
    for rotation in rotations {
        returned.push(rotation.await.expect("rotation"));
    }

    let mut connection = app.database.connect().await;
    let stored: StoredSecrets = sql_query(format!(
        "SELECT secret, previous_secret FROM webhook_endpoints WHERE id = '{}'",
        endpoint.id
    ))
    .get_result(&mut connection)
    .await
    .expect("secrets");
    let later = returned
        .iter()
        .position(|secret| *secret == stored.secret)
        .expect("the stored secret is one returned");
    let earlier = &returned[1 - later];
    assert_eq!(
        stored.previous_secret.as_deref(),
        Some(earlier.as_str()),
        "the earlier rotation's secret, still valid during the overlap (not the original {original})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_updates_of_different_fields_at_once_both_keep_their_change() {
    use diesel_async::SimpleAsyncConnection;
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let moved_to = Receiver::start().await;
    let (endpoint, _) = create(&app, &receiver.url(), &[]).await;
    let mut holder = hold_endpoint(&app, &endpoint.id).await;
    let mut updates = Vec::new();
    for update in [
        UpdateEndpointRequest {
            id: endpoint.id.clone(),
            url: Some(moved_to.url()),
            ..Default::default()
        },
        UpdateEndpointRequest {
            id: endpoint.id.clone(),
            event_types: vec!["webhook.test".to_owned()],
            replace_event_types: true,
            ..Default::default()
        },
    ] {
        let mut webhooks = client(&app).await;
        updates.push(tokio::spawn(async move {
            webhooks.update_endpoint(update).await.expect("update")
        }));
    }
    until_waiting_for_locks(&app.database, 2).await;
    holder.batch_execute("COMMIT").await.expect("release");
    for update in updates {
        update.await.expect("update");
    }

    let stored = described(&app, &endpoint.id).await;
    assert_eq!(stored.url, moved_to.url());
    assert_eq!(stored.event_types, ["webhook.test"]);
}

#[derive(diesel::QueryableByName)]
struct StoredTarget {
    #[diesel(sql_type = Text)]
    url: String,
    #[diesel(sql_type = Text)]
    token: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_updates_of_the_url_and_headers_at_once_the_second_is_refused_not_lost() {
    use diesel_async::SimpleAsyncConnection;
    let app = TestApp::spawn().await;
    let (old_origin, new_origin) = (Receiver::start().await, Receiver::start().await);
    let endpoint = client(&app)
        .await
        .create_endpoint(CreateEndpointRequest {
            url: old_origin.url(),
            headers: [("X-Token".to_owned(), "for-the-old-origin".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .endpoint
        .expect("endpoint");
    let mut holder = hold_endpoint(&app, &endpoint.id).await;
    // First in line: a move with the new origin's token. Second: new credentials for the
    // old origin, sent by someone who read the endpoint before the move. Written as it was
    // checked, the second would move the endpoint back (the first's move lost); written over
    // the move, it would put the old origin's credentials on the new one.
    let mut updates = Vec::new();
    for (waiting, update) in [
        UpdateEndpointRequest {
            id: endpoint.id.clone(),
            url: Some(new_origin.url()),
            headers: [("X-Token".to_owned(), "for-the-new-origin".to_owned())].into(),
            replace_headers: true,
            ..Default::default()
        },
        UpdateEndpointRequest {
            id: endpoint.id.clone(),
            headers: [(
                "X-Token".to_owned(),
                "rotated-for-the-old-origin".to_owned(),
            )]
            .into(),
            replace_headers: true,
            ..Default::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut webhooks = client(&app).await;
        updates.push(tokio::spawn(async move {
            webhooks.update_endpoint(update).await
        }));
        until_waiting_for_locks(&app.database, i64::try_from(waiting).unwrap() + 1).await;
    }
    holder.batch_execute("COMMIT").await.expect("release");
    let mut applied = Vec::new();
    for update in updates {
        match update.await.expect("update") {
            Ok(reply) => applied.push(reply.into_inner().endpoint.expect("endpoint")),
            Err(refused) => assert_eq!(refused.code(), Code::Aborted, "{refused:?}"),
        }
    }
    let [applied] = applied.as_slice() else {
        panic!("one update applied, the other refused: {applied:?}");
    };

    let mut connection = app.database.connect().await;
    let stored: StoredTarget = sql_query(format!(
        "SELECT url, headers ->> 'x-token' AS token FROM webhook_endpoints WHERE id = '{}'",
        endpoint.id
    ))
    .get_result(&mut connection)
    .await
    .expect("endpoint");
    assert_eq!(stored.url, applied.url);
    let consistent = (stored.url == new_origin.url() && stored.token == "for-the-new-origin")
        || (stored.url == old_origin.url() && stored.token == "rotated-for-the-old-origin");
    assert!(consistent, "{} with {}", stored.url, stored.token);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_mapping_covers_configuration_and_the_delivery_log() {
    use reqwest::Method;
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let admin = [
        ("x-api-key", app.keys.admin.as_str()),
        ("content-type", "application/json"),
    ];
    let manager = [("x-api-key", app.keys.manager.as_str())];

    let created = app
        .send(Method::POST, "/api/v1/webhooks/endpoints", &admin, json!({"url": receiver.url(), "event_types": ["webhook.test"], "headers": {"X-Token": "t-1"}}).to_string())
        .await;
    assert_eq!(created.status, 200, "{}", created.text);
    let id = created.body["endpoint"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(
        created.body["secret"]
            .as_str()
            .unwrap_or_default()
            .starts_with("whsec_")
    );
    assert_eq!(created.body["endpoint"]["health"], "ready");
    assert_eq!(created.body["endpoint"]["headers"]["x-token"], "***");
    // The endpoint as read, sent back: the mask is not stored over the credential.
    let masked_back = app
        .send(
            Method::PATCH,
            &format!("/api/v1/webhooks/endpoints/{id}"),
            &admin,
            json!({"description": "CRM", "headers": created.body["endpoint"]["headers"]})
                .to_string(),
        )
        .await;
    assert_eq!(masked_back.status, 400, "{}", masked_back.text);
    assert_eq!(
        masked_back.body["details"][0]["field"], "headers.x-token",
        "{}",
        masked_back.text
    );

    let patched = app
        .send(
            Method::PATCH,
            &format!("/api/v1/webhooks/endpoints/{id}"),
            &admin,
            json!({"description": "CRM", "rate_limit_per_second": 5}).to_string(),
        )
        .await;
    let tested = app
        .send(
            Method::POST,
            &format!("/api/v1/webhooks/endpoints/{id}/test"),
            &admin,
            "",
        )
        .await;
    let deliveries = app
        .send(
            Method::GET,
            &format!("/api/v1/webhooks/deliveries?endpoint_id={id}&status=succeeded"),
            &admin,
            "",
        )
        .await;
    let delivery = deliveries.body["deliveries"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let attempts = app
        .send(
            Method::GET,
            &format!("/api/v1/webhooks/deliveries/{delivery}/attempts"),
            &admin,
            "",
        )
        .await;
    let not_failed = app
        .send(
            Method::POST,
            &format!("/api/v1/webhooks/deliveries/{delivery}/retry"),
            &admin,
            "",
        )
        .await;
    let disabled = app
        .send(
            Method::POST,
            &format!("/api/v1/webhooks/endpoints/{id}/disable"),
            &admin,
            json!({"reason": "paused"}).to_string(),
        )
        .await;
    let catalog = app
        .send(Method::GET, "/api/v1/webhooks/event-types", &admin, "")
        .await;
    let bad_url = app
        .send(
            Method::POST,
            "/api/v1/webhooks/endpoints",
            &admin,
            json!({"url": "not a url"}).to_string(),
        )
        .await;
    let as_manager = app
        .send(Method::GET, "/api/v1/webhooks/endpoints", &manager, "")
        .await;
    let bad_since = app
        .send(
            Method::POST,
            &format!("/api/v1/webhooks/endpoints/{id}/recover"),
            &admin,
            json!({"since": "yesterday"}).to_string(),
        )
        .await;
    let deleted = app
        .send(
            Method::DELETE,
            &format!("/api/v1/webhooks/endpoints/{id}"),
            &admin,
            "",
        )
        .await;

    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["description"], "CRM");
    assert_eq!(patched.body["rate_limit_per_second"], 5);
    assert_eq!(tested.status, 200, "{}", tested.text);
    assert_eq!(tested.body["attempt"]["succeeded"], true);
    assert_eq!(
        deliveries.body["deliveries"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(attempts.body["attempts"][0]["status_code"], 200);
    assert_eq!(not_failed.status, 400, "{}", not_failed.text);
    assert_eq!(disabled.body["enabled"], false);
    assert_eq!(disabled.body["disabled_reason"], "paused");
    assert!(
        catalog.body["event_types"]
            .as_array()
            .is_some_and(|types| types.len() >= 10)
    );
    assert_eq!(bad_url.status, 400);
    assert_eq!(bad_url.body["details"][0]["field"], "url");
    assert_eq!(as_manager.status, 403);
    assert_eq!(bad_since.status, 400);
    assert_eq!(deleted.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_endpoint_does_not_hold_up_a_healthy_one() {
    // The timeout leaves room for 40 publishes on a loaded machine.
    let app = TestApp::builder()
        .webhook_timeout(Duration::from_secs(15))
        .spawn()
        .await;
    let healthy = Receiver::start().await;
    let hanging = hanging_receiver(Duration::from_secs(60)).await;
    create(&app, &hanging.url(), &["message.delivered"]).await;
    create(&app, &healthy.url(), &["message.delivered"]).await;

    let started = std::time::Instant::now();
    publish_messages(&app, 40).await;
    healthy.wait_for(40).await;

    // Every healthy delivery arrived before the hanging receiver's first attempt even timed out.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_to_a_busy_endpoint_wait_for_its_slot_in_the_fan_out_not_in_the_queue() {
    // No request reaches the slow mark while the test runs, however loaded the machine.
    let app = TestApp::builder()
        .webhook_slow_after(Duration::from_secs(30))
        .spawn()
        .await;
    let receiver = Receiver::start().await;
    let answer = Arc::new(tokio::sync::Semaphore::new(0));
    receiver.answer(Answer {
        held: Some(answer.clone()),
        ..Answer::default()
    });
    create(&app, &receiver.url(), &["message.delivered"]).await;
    // Attempted by the fan-out, its job is inserted running; queued, pending.
    app.database.watch_job_inserts().await;

    // The receiver holds every request: the first 16 take the endpoint's slots, and the 4 after
    // them find it busy. Those 4 come together, all within the first one's wait for a slot
    // (after which, with none freed, the endpoint counts as slow and new deliveries queue).
    publish_messages(&app, 16).await;
    receiver.wait_for(16).await;
    publish_messages_together(&app, 4).await;
    let inserted = async |status: &str| app.database.jobs_inserted("webhook.deliver", status).await;
    crate::helpers::eventually("every event fanned out", async || {
        inserted("running").await + inserted("pending").await == 20
    })
    .await;
    assert_eq!(inserted("pending").await, 0, "a busy endpoint's job queued");

    answer.add_permits(20);
    receiver.wait_for(20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_new_deliveries_are_sent_while_their_successes_cannot_be_written() {
    let app = TestApp::builder().webhook_success_backlog(4).spawn().await;
    let receiver = Receiver::start().await;
    create(&app, &receiver.url(), &["message.delivered"]).await;
    // Successes are written to `webhook_attempts`, which this transaction keeps them from.
    let mut holder = app.database.connect().await;
    sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sql_query("LOCK TABLE webhook_attempts IN EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .expect("lock");

    // Four are delivered; the first is being written, three wait in memory behind it.
    publish_messages(&app, 4).await;
    receiver.wait_for(4).await;
    until_waiting_for_locks(&app.database, 1).await;
    // The three are handed to the log once their answers are read, in memory (nothing to wait
    // on but time; a second is ample on a loaded machine).
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The backlog is full: events are still accepted, but not delivered.
    publish_messages(&app, 16).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 4, "delivered while behind");

    sql_query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("commit");
    receiver.wait_for(20).await;
    until_deliveries_end_or_fail(&app).await;
    let succeeded = count(
        &app,
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'",
    )
    .await;
    assert_eq!(succeeded, 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_waiting_deliveries_of_a_hanging_endpoint_are_parked_not_polled() {
    let app = TestApp::builder()
        .webhook_timeout(Duration::from_millis(1500))
        .spawn()
        .await;
    let hanging = hanging_receiver(Duration::from_secs(30)).await;
    create(&app, &hanging.url(), &["message.delivered"]).await;
    publish_messages(&app, 30).await;

    // Once the first attempts time out and mark the endpoint slow, its other deliveries wait
    // out a park period together instead of being claimed and deferred every few milliseconds.
    crate::helpers::eventually("the waiting deliveries are parked", async || {
        parked_deliveries(&app).await >= 20
    })
    .await;
    // Until the first timeout shows the endpoint is slow it has a healthy endpoint's 16 slots;
    // after that, only its 2 slow slots try (on a loaded machine, a second pair of them may
    // have timed out before the park is seen). Polled, all 30 would have been sent.
    let attempts = count(&app, "SELECT count(*) FROM webhook_attempts").await;
    assert!(attempts <= 20, "{attempts} attempts");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_receivers_do_not_hold_the_workers_other_jobs_need() {
    // Two workers, which the queued retries of two hanging deliveries would hold for a whole
    // timeout each if a delivery kept its worker during the request.
    let app = TestApp::builder()
        .outbox_workers(2)
        .webhook_timeout(Duration::from_secs(10))
        .webhook_schedule("0s,0s,0s")
        .spawn()
        .await;
    let hanging = hanging_receiver(Duration::from_secs(60)).await;
    create(&app, &hanging.url(), &["message.delivered"]).await;
    let healthy = Receiver::start().await;
    create(&app, &healthy.url(), &["contact.created"]).await;
    publish_messages(&app, 2).await;
    // The first attempts run beside the fan-out; their retries are queued jobs, whose requests
    // now hang for 10 s.
    hanging.wait_for(4).await;
    let retries_began = std::time::Instant::now();

    // The contact's dispatch job is queued (contact writes do not start theirs) and needs a
    // worker.
    new_contact(&app, "+4915112349999").await;
    healthy.wait_for(1).await;

    assert!(
        retries_began.elapsed() < Duration::from_secs(5),
        "the dispatch waited {:?} for a worker",
        retries_began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_answers_none_of_its_requests_is_parked_before_any_is_slow() {
    // No attempt reaches the slow mark in this test: only the wait for a slot can tell.
    let app = TestApp::builder()
        .webhook_timeout(Duration::from_secs(45))
        .webhook_slow_after(Duration::from_secs(30))
        .spawn()
        .await;
    let hanging = hanging_receiver(Duration::from_secs(120)).await;
    create(&app, &hanging.url(), &["message.delivered"]).await;
    publish_messages(&app, 20).await;
    hanging.wait_for(16).await;
    let started = std::time::Instant::now();

    // The 4 beyond the 16 in flight wait a moment for a slot, none frees, and they are set
    // aside together instead of each coming back every 200 ms for the next 30 s.
    while parked_deliveries(&app).await < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the waiting deliveries were not parked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_to_a_parked_endpoint_get_no_job_until_it_answers_again() {
    // The attempts that hang time out and are retried within the test's wait.
    let app = TestApp::builder()
        .webhook_timeout(Duration::from_secs(2))
        .webhook_slow_after(Duration::from_millis(200))
        .webhook_schedule("0s,1s,1s,1s,1s,1s")
        .spawn()
        .await;
    let receiver = hanging_receiver(Duration::from_secs(60)).await;
    create(&app, &receiver.url(), &["message.delivered"]).await;
    let mut published = publish_until_one_is_parked(&app).await;
    publish_messages(&app, 10).await;
    published += 10;

    // Stored, with no job each: the endpoint's resume job stands for all of them (each resume
    // job, every park period, lets two of them probe the endpoint, and those get jobs).
    let parked = parked_flagged(&app).await;
    assert!(parked >= 2, "{parked} deliveries parked");
    let parked_with_jobs = count(
        &app,
        "SELECT count(*) FROM webhook_deliveries d WHERE d.parked AND EXISTS (
             SELECT 1 FROM outbox_jobs j
             WHERE j.kind = 'webhook.deliver' AND j.payload ->> 'delivery_id' = d.id::text)",
    )
    .await;
    assert_eq!(parked_with_jobs, 0);
    let resume_jobs = count(
        &app,
        "SELECT count(*) FROM outbox_jobs
         WHERE kind = 'webhook.resume' AND status IN ('pending', 'running')",
    )
    .await;
    assert!(resume_jobs >= 1, "no resume job");

    // It answers again: a probe's fast answer clears the mark, and the next resume job gives
    // every parked delivery its job. That takes up to two parks, each as long as the endpoint
    // has been slow: seconds, more on a loaded machine.
    receiver.answer(Answer::default());
    crate::helpers::eventually_within(
        Duration::from_secs(60),
        "every delivery succeeded",
        async || {
            count(
                &app,
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'",
            )
            .await
                == published
        },
    )
    .await;
    assert_eq!(parked_flagged(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_parked_deliveries_of_an_endpoint_disabled_while_slow_are_skipped_at_once() {
    let app = TestApp::builder()
        .webhook_timeout(Duration::from_secs(30))
        .webhook_slow_after(Duration::from_millis(200))
        .spawn()
        .await;
    let receiver = hanging_receiver(Duration::from_secs(60)).await;
    let (endpoint, _) = create(&app, &receiver.url(), &["message.delivered"]).await;
    publish_until_one_is_parked(&app).await;
    publish_messages(&app, 20).await;

    client(&app)
        .await
        .disable_endpoint(DisableEndpointRequest {
            id: endpoint.id,
            reason: "maintenance".to_owned(),
        })
        .await
        .expect("disable");

    // Sent nothing, it stays slow; its parked deliveries still get their jobs at the next
    // resume, not two per park period, and those skip them. Of the 20 published parked, only
    // those a resume job let probe it before it was disabled may be in flight.
    eventually("the parked deliveries are skipped", async || {
        parked_flagged(&app).await == 0
            && count(
                &app,
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'skipped'",
            )
            .await
                >= 16
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_gives_parked_deliveries_that_no_resume_job_covers_one() {
    let app = TestApp::spawn().await;
    // Its resume job lost, as when a fan-out counted on one that had just started.
    let (second, endpoint) = one_parked_delivery(&app).await;
    let mut connection = app.database.connect().await;
    let pool = switchbord_core::db::build_pool(app.database.url(), 2, Duration::from_secs(5))
        .expect("pool");

    let sweep = async || {
        switchbord_core::webhooks::sweep(&pool)
            .await
            .expect("sweep")
    };
    // A resume job due within the minute covers them; one due later does not (as a resume job
    // on a long backoff would not).
    resume_job_due_in(&app, &endpoint.id, "30 seconds").await;
    assert_eq!(sweep().await, 0);
    sql_query("UPDATE outbox_jobs SET run_after = now() + interval '1 hour' WHERE kind = 'webhook.resume'")
        .execute(&mut connection)
        .await
        .expect("postpone");

    assert_eq!(sweep().await, 1);
    second.wait_for(1).await;
    eventually("the delivery succeeded", async || {
        count(
            &app,
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'",
        )
        .await
            == 2
    })
    .await;
    assert_eq!(sweep().await, 0, "none is parked any more");
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_the_parked_deliveries_back_gives_each_its_delivery_job() {
    use diesel_async::SimpleAsyncConnection;

    let app = TestApp::spawn().await;
    let (second, _) = one_parked_delivery(&app).await;
    let mut connection = app.database.connect().await;

    connection
        .batch_execute(include_str!(
            "../../migrations/2026-12-07-000009_parked_deliveries/down.sql"
        ))
        .await
        .expect("roll back");

    // Its job is one this server runs as any other.
    second.wait_for(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_endpoint_drops_the_resume_job_of_its_parked_deliveries() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = create(&app, &receiver.url(), &["message.delivered"]).await;
    resume_job_due_in(&app, &endpoint.id, "1 hour").await;

    client(&app)
        .await
        .delete_endpoint(DeleteEndpointRequest { id: endpoint.id })
        .await
        .expect("delete");

    // Left, it would wait out its park for nothing, and hold up whoever waits for the queue to
    // drain.
    let resume_jobs = count(
        &app,
        "SELECT count(*) FROM outbox_jobs WHERE kind = 'webhook.resume'",
    )
    .await;
    assert_eq!(resume_jobs, 0);
}

/// One event delivered to a first endpoint, and its delivery to a second endpoint stored
/// parked, with no resume job: the second's receiver and endpoint.
async fn one_parked_delivery(app: &TestApp) -> (Receiver, Endpoint) {
    let first = Receiver::start().await;
    create(app, &first.url(), &["message.delivered"]).await;
    publish_messages(app, 1).await;
    first.wait_for(1).await;
    let second = Receiver::start().await;
    let (endpoint, _) = create(app, &second.url(), &["message.delivered"]).await;
    let mut connection = app.database.connect().await;
    sql_query(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status, attempts,
             created_at, updated_at, parked)
         SELECT gen_random_uuid(), $1::uuid, id, type, 'pending', 0, now(), now(), true
         FROM events WHERE type = 'message.delivered'",
    )
    .bind::<Text, _>(&endpoint.id)
    .execute(&mut connection)
    .await
    .expect("parked delivery");
    (second, endpoint)
}

/// Stores a pending resume job for `endpoint`, due after `delay` (an SQL interval).
async fn resume_job_due_in(app: &TestApp, endpoint: &str, delay: &str) {
    let mut connection = app.database.connect().await;
    sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after,
             created_at, updated_at)
         VALUES (gen_random_uuid(), 'webhook.resume', jsonb_build_object('endpoint_id', $1),
             'pending', 0, 25, now() + $2::interval, now(), now())",
    )
    .bind::<Text, _>(endpoint)
    .bind::<Text, _>(delay)
    .execute(&mut connection)
    .await
    .expect("resume job");
}

/// Publishes one event at a time until the first hanging request has marked the endpoint slow
/// and a new delivery is parked (with its 16 slots taken, the wait for one would mark it too).
/// Returns how many it published.
async fn publish_until_one_is_parked(app: &TestApp) -> i64 {
    let mut published = 0;
    while parked_flagged(app).await == 0 {
        assert!(published < 40, "no delivery was parked");
        publish_messages(app, 1).await;
        published += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    published
}

/// Deliveries stored parked, with no job of their own (see `webhooks/resume.rs`).
async fn parked_flagged(app: &TestApp) -> i64 {
    count(app, "SELECT count(*) FROM webhook_deliveries WHERE parked").await
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_over_an_endpoints_rate_limit_wait_for_turns_of_their_own() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    client(&app)
        .await
        .create_endpoint(CreateEndpointRequest {
            url: receiver.url(),
            event_types: vec!["message.delivered".to_owned()],
            rate_limit_per_second: 2,
            ..Default::default()
        })
        .await
        .expect("create endpoint");
    let started = std::time::Instant::now();
    // Together: the turns of deliveries fanned out over more than the spread looked for would
    // have passed (and run) before the last were given theirs.
    publish_messages_together(&app, 12).await;

    // The 2 the quota's burst allows go at once; each of the other 10 is given its own turn,
    // 500 ms after the one before, instead of all coming back together after 500 ms to find
    // room for one and be put back again.
    eventually("the waiting deliveries are given turns", async || {
        let spread_ms = count(
            &app,
            "SELECT COALESCE(EXTRACT(EPOCH FROM max(run_after) - min(run_after)) * 1000, 0)::int8
                    AS count
               FROM outbox_jobs WHERE kind = 'webhook.deliver' AND status = 'pending'",
        )
        .await;
        spread_ms >= 3000
    })
    .await;
    receiver.wait_for(12).await;
    // And the limit holds: 10 beyond the burst at 2 per second.
    assert!(
        started.elapsed() >= Duration::from_millis(4500),
        "{:?}",
        started.elapsed()
    );
}

/// Deliveries set aside for a park period: their jobs not due for more than 500 ms, where a
/// delivery that only waits for a busy endpoint's slot comes back after 200 ms, or stored
/// parked with no job.
async fn parked_deliveries(app: &TestApp) -> i64 {
    count(
        app,
        "SELECT (SELECT count(*) FROM outbox_jobs
                  WHERE kind = 'webhook.deliver' AND status = 'pending'
                    AND run_after > now() + interval '500 milliseconds')
              + (SELECT count(*) FROM webhook_deliveries WHERE parked) AS count",
    )
    .await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    crate::helpers::count(&app.database, sql).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_endpoint_gets_only_its_slow_slots_at_once() {
    let app = TestApp::builder()
        .webhook_timeout(Duration::from_secs(1))
        .spawn()
        .await;
    let hanging = hanging_receiver(Duration::from_secs(30)).await;
    create(&app, &hanging.url(), &["message.delivered"]).await;
    publish_messages(&app, 30).await;
    // A healthy endpoint's 16 slots, before the first timeout marks it slow.
    hanging.wait_for(16).await;

    // Then 2 slow slots: in 3.5 s of 1 s timeouts, at most 8 more attempts begin, where the 14
    // deliveries still waiting would all begin at once without the limit. The first ones'
    // retries are not due before 5 s.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let arrived = hanging.received().len();
    assert!((17..=24).contains(&arrived), "{arrived} requests arrived");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_does_not_answer_is_slow_before_its_timeout() {
    let app = TestApp::builder()
        .webhook_timeout(Duration::from_secs(30))
        .spawn()
        .await;
    let hanging = hanging_receiver(Duration::from_secs(60)).await;
    create(&app, &hanging.url(), &["message.delivered"]).await;
    let started = std::time::Instant::now();
    publish_messages(&app, 24).await;

    // The 8 deliveries beyond the first 16 in flight are parked once the receiver has kept
    // them waiting for a second (the slow-attempt threshold), long before the 30 s timeout.
    crate::helpers::eventually("the waiting deliveries are parked", async || {
        parked_deliveries(&app).await >= 8
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_attempts").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_dispatch_of_an_event_delivers_it_once() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    create(&app, &receiver.url(), &["contact.created"]).await;
    new_contact(&app, "+4915112345678").await;
    receiver.wait_for(1).await;

    // As if the dispatch job ran again (its worker died before recording its success).
    let mut connection = app.database.connect().await;
    diesel::sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, max_attempts, run_after, created_at,
                                  updated_at)
         SELECT gen_random_uuid(), 'event.dispatch', jsonb_build_object('event_id', id), 10,
                now(), now(), now()
         FROM events WHERE type = 'contact.created'",
    )
    .execute(&mut connection)
    .await
    .expect("enqueue the dispatch again");
    crate::helpers::eventually("the repeated dispatch ran", async || {
        count(
            &app,
            "SELECT count(*) FROM outbox_jobs
             WHERE kind = 'event.dispatch' AND status <> 'succeeded'",
        )
        .await
            == 0
    })
    .await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_deliveries").await,
        1
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM outbox_jobs WHERE kind = 'webhook.deliver'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_changes_are_audited_with_the_fields_they_change() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = create(&app, &receiver.url(), &["message.delivered"]).await;
    client(&app)
        .await
        .disable_endpoint(DisableEndpointRequest {
            id: endpoint.id.clone(),
            reason: String::new(),
        })
        .await
        .expect("disable");
    client(&app)
        .await
        .enable_endpoint(EnableEndpointRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("enable");

    let audited = |action: &str| {
        format!(
            "SELECT count(*) FROM audit_entries WHERE action = '{action}'
             AND target_type = 'webhook_endpoint' AND target_id = '{}'
             AND actor_role = 'admin'",
            endpoint.id
        )
    };
    assert_eq!(count(&app, &audited("webhook_endpoint.create")).await, 1);
    assert_eq!(
        count(
            &app,
            &format!(
                "{} AND changed_fields = ARRAY['enabled', 'disabled_reason']",
                audited("webhook_endpoint.disable")
            )
        )
        .await,
        1
    );
    // Enabling clears why and since when the endpoint was off.
    assert_eq!(
        count(
            &app,
            &format!(
                "{} AND changed_fields = ARRAY['enabled', 'disabled_reason', 'failing_since']",
                audited("webhook_endpoint.enable")
            )
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_endpoint_drops_the_deliveries_waiting_for_it() {
    // A clock that stands still: no retry comes due while the test looks.
    let app = TestApp::builder()
        .clock(Arc::new(ManualClock::default()))
        .spawn()
        .await;
    let failing = Receiver::start().await;
    failing.status(500);
    let (kept, _) = create(&app, &failing.url(), &["message.delivered"]).await;
    let (deleted, _) = create(&app, &failing.url(), &["message.delivered"]).await;
    publish_messages(&app, 1).await;
    // Both first attempts failed; each delivery waits for its retry.
    crate::helpers::eventually("both deliveries wait for a retry", async || {
        count(
            &app,
            "SELECT count(*) FROM outbox_jobs WHERE kind = 'webhook.deliver' AND status = 'pending'",
        )
        .await
            == 2
    })
    .await;

    client(&app)
        .await
        .delete_endpoint(DeleteEndpointRequest {
            id: deleted.id.clone(),
        })
        .await
        .expect("delete");

    let waiting = |endpoint: &str| {
        format!(
            "SELECT count(*) FROM outbox_jobs WHERE kind = 'webhook.deliver'
             AND status = 'pending' AND payload ->> 'endpoint_id' = '{endpoint}'"
        )
    };
    assert_eq!(count(&app, &waiting(&deleted.id)).await, 0);
    assert_eq!(count(&app, &waiting(&kept.id)).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_endpoint_skips_jobs_another_transaction_holds_instead_of_waiting() {
    let app = TestApp::builder()
        .clock(Arc::new(ManualClock::default()))
        .spawn()
        .await;
    let failing = Receiver::start().await;
    failing.status(500);
    let (endpoint, _) = create(&app, &failing.url(), &["message.delivered"]).await;
    publish_messages(&app, 2).await;
    let waiting =
        "SELECT count(*) FROM outbox_jobs WHERE kind = 'webhook.deliver' AND status = 'pending'";
    crate::helpers::eventually("both deliveries wait for a retry", async || {
        count(&app, waiting).await == 2
    })
    .await;

    // A claim or a batch of outcomes holds one of the jobs, as it would mid-transaction.
    let mut holder = app.database.connect().await;
    diesel::sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    diesel::sql_query(
        "SELECT id FROM outbox_jobs WHERE kind = 'webhook.deliver' AND status = 'pending'
         LIMIT 1 FOR UPDATE",
    )
    .execute(&mut holder)
    .await
    .expect("hold one job");

    let deleted = tokio::time::timeout(
        Duration::from_secs(5),
        client(&app).await.delete_endpoint(DeleteEndpointRequest {
            id: endpoint.id.clone(),
        }),
    )
    .await
    .expect("the delete does not wait for the held job");
    diesel::sql_query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("commit");

    deleted.expect("delete");
    // The held one stays, and finds its delivery gone when it runs.
    assert_eq!(count(&app, waiting).await, 1);
}

/// An endpoint whose receiver has a request in hand and answers `status` only when the
/// returned semaphore gets a permit.
async fn held_delivery(
    app: &TestApp,
    status: u16,
) -> (Endpoint, Receiver, Arc<tokio::sync::Semaphore>) {
    let receiver = Receiver::start().await;
    let answer = Arc::new(tokio::sync::Semaphore::new(0));
    receiver.answer(Answer {
        status,
        held: Some(answer.clone()),
        ..Answer::default()
    });
    let (endpoint, _) = create(app, &receiver.url(), &["message.delivered"]).await;
    publish_messages(app, 1).await;
    receiver.wait_for(1).await;
    (endpoint, receiver, answer)
}

/// Waits until the delivery jobs have all ended or one of them has failed.
async fn until_deliveries_end_or_fail(app: &TestApp) {
    eventually("the delivery ended or failed", async || {
        count(
            app,
            "SELECT count(*) FROM outbox_jobs WHERE kind = 'webhook.deliver' AND status <> 'succeeded'",
        )
        .await
            == 0
            || count(app, "SELECT count(*) FROM outbox_job_errors").await > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_success_for_an_endpoint_deleted_meanwhile_ends_its_job_quietly() {
    let app = TestApp::spawn().await;
    let (endpoint, _receiver, answer) = held_delivery(&app, 200).await;

    client(&app)
        .await
        .delete_endpoint(DeleteEndpointRequest { id: endpoint.id })
        .await
        .expect("delete");
    answer.add_permits(1);

    until_deliveries_end_or_fail(&app).await;
    let errors = count(&app, "SELECT count(*) FROM outbox_job_errors").await;
    assert_eq!(errors, 0, "recording the success failed");
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_attempts").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_failure_does_not_set_back_a_delivery_that_moved_on() {
    let app = TestApp::spawn().await;
    let (_endpoint, _receiver, answer) = held_delivery(&app, 500).await;
    // Another run took the delivery over and delivered it, as after a lease that ran out.
    let mut connection = app.database.connect().await;
    sql_query("UPDATE webhook_deliveries SET status = 'succeeded', attempts = 1")
        .execute(&mut connection)
        .await
        .expect("the delivery moves on");
    answer.add_permits(1);

    until_deliveries_end_or_fail(&app).await;
    let errors = count(&app, "SELECT count(*) FROM outbox_job_errors").await;
    assert_eq!(errors, 0, "the late failure was retried");
    let delivered =
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded' AND attempts = 1";
    assert_eq!(count(&app, delivered).await, 1);
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_attempts").await,
        0,
        "the late attempt is not logged as the delivery's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_410_after_an_operators_disable_keeps_the_operators_reason() {
    let app = TestApp::spawn().await;
    let (endpoint, _receiver, answer) = held_delivery(&app, 410).await;
    let mut webhooks = client(&app).await;
    webhooks
        .disable_endpoint(DisableEndpointRequest {
            id: endpoint.id.clone(),
            reason: "maintenance".to_owned(),
        })
        .await
        .expect("disable");
    answer.add_permits(1);

    until_deliveries_end_or_fail(&app).await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_attempts").await,
        1
    );
    let stored = described(&app, &endpoint.id).await;
    assert_eq!(stored.disabled_reason, "maintenance");
    let announced = "SELECT count(*) FROM events WHERE type = 'webhook.endpoint_disabled'";
    assert_eq!(
        count(&app, announced).await,
        0,
        "no automatic disable to announce"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_send_whose_caller_gives_up_still_ends_its_delivery() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let answer = Arc::new(tokio::sync::Semaphore::new(0));
    receiver.answer(Answer {
        held: Some(answer.clone()),
        ..Answer::default()
    });
    let (endpoint, _) = create(&app, &receiver.url(), &["webhook.test"]).await;
    let mut request = tonic::Request::new(SendTestEventRequest { id: endpoint.id });
    request.set_timeout(Duration::from_millis(500));
    let gave_up = client(&app).await.send_test_event(request).await;
    assert!(
        gave_up.is_err(),
        "the receiver had not answered: {gave_up:?}"
    );
    answer.add_permits(1);

    eventually("the test delivery ends", async || {
        count(
            &app,
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_attempts").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_endpoint_while_its_success_is_recorded_does_not_deadlock() {
    delete_while_the_outcome_is_recorded(200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_endpoint_while_its_failure_is_recorded_does_not_deadlock() {
    delete_while_the_outcome_is_recorded(500).await;
}

/// Deletes an endpoint while the outcome of its delivery (the receiver's `status`) is being
/// recorded: each must find the other done or not begun, never wait for it in a cycle.
async fn delete_while_the_outcome_is_recorded(status: u16) {
    let app = TestApp::builder()
        .clock(Arc::new(ManualClock::default()))
        .spawn()
        .await;
    let (endpoint, _receiver, answer) = held_delivery(&app, status).await;

    // Another transaction holds the endpoint. The delete waits for it first, then the
    // outcome's record: when it lets go, both go on from there at once.
    let mut holder = app.database.connect().await;
    sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sql_query("SELECT id FROM webhook_endpoints WHERE id = $1::uuid FOR UPDATE")
        .bind::<Text, _>(&endpoint.id)
        .execute(&mut holder)
        .await
        .expect("hold the endpoint");
    let mut deleter = client(&app).await;
    let deleted = tokio::spawn(async move {
        deleter
            .delete_endpoint(DeleteEndpointRequest { id: endpoint.id })
            .await
    });
    until_waiting_for_locks(&app.database, 1).await;
    answer.add_permits(1);
    until_waiting_for_locks(&app.database, 2).await;
    sql_query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("commit");

    deleted
        .await
        .expect("the delete ran")
        .expect("the delete was not a deadlock's victim");
    until_deliveries_end_or_fail(&app).await;
    let errors = count(&app, "SELECT count(*) FROM outbox_job_errors").await;
    assert_eq!(errors, 0, "the outcome's record was a deadlock's victim");
}

#[tokio::test(flavor = "multi_thread")]
async fn published_and_upserted_events_are_dispatched_at_once_without_waking_the_queue() {
    use futures::StreamExt;

    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    create(
        &app,
        &receiver.url(),
        &["message.delivered", "contact.created"],
    )
    .await;
    let mut listener = app.database.listen("outbox_jobs").await;
    let mut notifications = std::pin::pin!(listener.notifications_stream());

    // Its dispatch job and its delivery's job are inserted already claimed and run at once:
    // nothing is queued, so no worker is woken.
    publish_messages(&app, 1).await;
    receiver.wait_for(1).await;
    let woken = tokio::time::timeout(Duration::from_millis(300), notifications.next()).await;
    assert!(woken.is_err(), "a notification arrived: {woken:?}");
    eventually("the dispatch job is recorded", async || {
        count(
            &app,
            "SELECT count(*) FROM outbox_jobs WHERE kind = 'event.dispatch' AND status = 'succeeded'",
        )
        .await
            == 1
    })
    .await;

    // So is a contact's event, which its upsert starts the same way.
    new_contact(&app, "+4915112345678").await;
    receiver.wait_for(2).await;
    let woken = tokio::time::timeout(Duration::from_millis(300), notifications.next()).await;
    assert!(woken.is_err(), "a notification arrived: {woken:?}");
    eventually("both dispatch jobs are recorded", async || {
        count(
            &app,
            "SELECT count(*) FROM outbox_jobs WHERE kind = 'event.dispatch' AND status = 'succeeded'",
        )
        .await
            == 2
    })
    .await;

    // So is a journey trigger's job, which the trigger's request starts.
    let reply = app
        .send(
            reqwest::Method::POST,
            "/compat/journey-trigger/welcome",
            &[("content-type", "application/json")],
            json!({"phone_number": "+4915112345678"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let trigger_job = reply.body["outboxJobId"]
        .as_str()
        .expect("a job id")
        .to_owned();
    until_job_succeeded(&app.database, &trigger_job).await;
    let woken = tokio::time::timeout(Duration::from_millis(300), notifications.next()).await;
    assert!(woken.is_err(), "a notification arrived: {woken:?}");

    // So is an Emarsys event's job, which the event's request starts.
    let emarsys_event = async |phone: &str| {
        let reply = app
            .send_anonymous(
                reqwest::Method::POST,
                "/api/v0/webhooks/incoming/emarsys/custom_external_event",
                &[("content-type", "application/json")],
                json!({"event_name": "order_placed", "phone_number": phone}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.body["outboxJobId"]
            .as_str()
            .expect("a job id")
            .to_owned()
    };
    let event_job = emarsys_event("+4915112345678").await;
    until_job_succeeded(&app.database, &event_job).await;
    let woken = tokio::time::timeout(Duration::from_millis(300), notifications.next()).await;
    assert!(woken.is_err(), "a notification arrived: {woken:?}");

    // The listener does hear a job that is queued, once committed: the dispatch of the contact
    // an Emarsys event creates.
    emarsys_event("+4915112345679").await;
    let woken = tokio::time::timeout(Duration::from_secs(5), notifications.next()).await;
    assert!(
        matches!(woken, Ok(Some(Ok(_)))),
        "no notification: {woken:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_nobody_listens_to_get_no_dispatch_job_until_an_endpoint_subscribes() {
    let app = TestApp::spawn().await;
    until_config_listened(&app.database).await;
    let dispatch_jobs = async || {
        count(
            &app,
            "SELECT count(*) FROM outbox_jobs WHERE kind = 'event.dispatch'",
        )
        .await
    };
    let stored_events = async || count(&app, "SELECT count(*) FROM events").await;
    // The first events are dispatched: nothing is known yet. Their dispatch finds that nobody
    // listens, and that is remembered.
    let mut index = 0;
    eventually("an event stored without a dispatch job", async || {
        index += 1;
        let before = dispatch_jobs().await;
        new_contact(&app, &format!("+49151123450{index:02}")).await;
        dispatch_jobs().await == before
    })
    .await;

    let events_before = stored_events().await;
    let jobs_before = dispatch_jobs().await;
    app.upsert_contact(&json!({"phone_number": "+4915112345001", "first_name": "Changed"}))
        .await;
    publish_messages(&app, 1).await;
    let reply = app
        .send(
            reqwest::Method::POST,
            "/compat/journey-trigger/welcome",
            &[("content-type", "application/json")],
            json!({"phone_number": "+4915112345099"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // contact.updated, message.delivered, the trigger's contact.created and, from its job,
    // journey.triggered: all stored, none dispatched.
    eventually("the trigger's run stored its event", async || {
        stored_events().await == events_before + 4
    })
    .await;
    assert_eq!(dispatch_jobs().await, jobs_before, "nobody listens");

    // An endpoint created through this instance is known to its very next event.
    let receiver = Receiver::start().await;
    create(&app, &receiver.url(), &["contact.updated"]).await;
    app.upsert_contact(&json!({"phone_number": "+4915112345001", "first_name": "Again"}))
        .await;
    receiver.wait_for(1).await;
    // And to every later one, now that its dispatch has read the endpoints again.
    app.upsert_contact(&json!({"phone_number": "+4915112345001", "first_name": "Third"}))
        .await;
    receiver.wait_for(2).await;
    assert!(
        receiver
            .received()
            .iter()
            .all(|received| received.json()["type"] == "contact.updated")
    );
    // Types it does not subscribe to are still not dispatched.
    publish_messages(&app, 1).await;
    new_contact(&app, "+4915112345098").await;
    assert_eq!(dispatch_jobs().await, jobs_before + 2);
}

/// A receiver that answers only after `delay`.
async fn hanging_receiver(delay: Duration) -> Receiver {
    let receiver = Receiver::start().await;
    receiver.answer(Answer {
        delay,
        ..Answer::default()
    });
    receiver
}

/// Publishes `count` `message.delivered` events, one after another.
async fn publish_messages(app: &TestApp, count: usize) {
    let mut events = event_client(app).await;
    for index in 0..count {
        events
            .publish_event(message_delivered(index))
            .await
            .expect("publish");
    }
}

/// Publishes `count` `message.delivered` events at once, on one channel.
async fn publish_messages_together(app: &TestApp, count: usize) {
    let events = event_client(app).await;
    futures::future::join_all((0..count).map(|index| {
        let mut events = events.clone();
        async move {
            events
                .publish_event(message_delivered(index))
                .await
                .expect("publish")
        }
    }))
    .await;
}

async fn event_client(
    app: &TestApp,
) -> switchbord_api::v1::event_service_client::EventServiceClient<Authed> {
    switchbord_api::v1::event_service_client::EventServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.user)),
    )
}

fn message_delivered(index: usize) -> PublishEventRequest {
    PublishEventRequest {
        r#type: "message.delivered".to_owned(),
        data: json!({"n": index})
            .as_object()
            .cloned()
            .map(switchbord_api::json::struct_from_json),
        source: "test".to_owned(),
    }
}

/// Subscribes `endpoint` to `event_type` only, in SQL: as another instance, or an operator,
/// would change it, without this instance's API telling its fan-out.
async fn subscribe_elsewhere(app: &TestApp, endpoint: &Endpoint, event_type: &str) {
    let mut connection = app.database.connect().await;
    sql_query("UPDATE webhook_endpoints SET event_types = ARRAY[$1] WHERE id = $2::uuid")
        .bind::<Text, _>(event_type)
        .bind::<Text, _>(&endpoint.id)
        .execute(&mut connection)
        .await
        .expect("change the subscription");
}

/// Changes `phone`'s contact until the receiver gets a `contact.updated`.
async fn until_updates_arrive(app: &TestApp, receiver: &Receiver, phone: &str) {
    let mut change = 0;
    eventually("a contact.updated delivery", async || {
        change += 1;
        app.upsert_contact(&json!({"phone_number": phone, "first_name": format!("Name {change}")}))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        receiver
            .received()
            .iter()
            .any(|received| received.json()["type"] == "contact.updated")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_changed_by_another_instance_gets_the_events_it_now_subscribes_to() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = create(&app, &receiver.url(), &["contact.created"]).await;
    until_config_listened(&app.database).await;
    // The fan-out reads the endpoints, and keeps them.
    new_contact(&app, "+4915112345601").await;
    receiver.wait_for(1).await;

    subscribe_elsewhere(&app, &endpoint, "contact.updated").await;

    until_updates_arrive(&app, &receiver, "+4915112345601").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_made_while_the_listener_was_reconnecting_is_not_missed() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = create(&app, &receiver.url(), &["contact.created"]).await;
    let mut listener = 0;
    eventually("the core listens for configuration changes", async || {
        listener = config_listener(&app.database).await;
        listener != 0
    })
    .await;
    new_contact(&app, "+4915112345602").await;
    receiver.wait_for(1).await;

    // The listening connection ends; the change made meanwhile notifies nobody.
    let mut connection = app.database.connect().await;
    sql_query(format!("SELECT pg_terminate_backend({listener})"))
        .execute(&mut connection)
        .await
        .expect("end the listener's connection");
    eventually("the listener is gone", async || {
        config_listener(&app.database).await != listener
    })
    .await;
    subscribe_elsewhere(&app, &endpoint, "contact.updated").await;
    until_config_listened(&app.database).await;

    until_updates_arrive(&app, &receiver, "+4915112345602").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_success_ends_the_failure_window() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = create(&app, &receiver.url(), &["contact.created"]).await;
    let failing = format!(
        "SELECT count(*) AS count FROM webhook_endpoints \
         WHERE id = '{}' AND failing_since IS NOT NULL",
        endpoint.id
    );
    let mut connection = app.database.connect().await;
    sql_query(format!(
        "UPDATE webhook_endpoints SET failing_since = now() - interval '1 day' WHERE id = '{}'",
        endpoint.id
    ))
    .execute(&mut connection)
    .await
    .expect("failing for a day");
    assert_eq!(count(&app, &failing).await, 1);

    new_contact(&app, "+4915112345603").await;
    receiver.wait_for(1).await;

    eventually("the endpoint is no longer failing", async || {
        count(&app, &failing).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_retries_of_a_failed_delivery_send_it_once() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.status(500);
    let (endpoint, _) = create(&app, &receiver.url(), &["webhook.test"]).await;
    let mut webhooks = client(&app).await;
    webhooks
        .send_test_event(SendTestEventRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("test send");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS count FROM audit_entries WHERE action = 'webhook_endpoint.test'",
        )
        .await,
        1,
        "the test send is audited"
    );
    let delivery = deliveries_of(&app, &endpoint.id).await.remove(0);
    assert_eq!(delivery.status, "failed");
    receiver.status(200);

    let retries = (0..8).map(|_| {
        let mut webhooks = webhooks.clone();
        let delivery_id = delivery.id.clone();
        async move {
            webhooks
                .retry_delivery(RetryDeliveryRequest { delivery_id })
                .await
        }
    });
    let answers = futures::future::join_all(retries).await;
    assert!(answers.iter().any(Result::is_ok), "{answers:?}");
    receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 2, "the test send and one retry");
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_headers_follow_a_new_url_to_another_origin_only_when_sent_again() {
    let app = TestApp::spawn().await;
    let (old_host, new_host) = (Receiver::start().await, Receiver::start().await);
    let mut webhooks = client(&app).await;
    let endpoint = webhooks
        .create_endpoint(CreateEndpointRequest {
            url: old_host.url(),
            headers: [(
                "Authorization".to_owned(),
                "Bearer for-the-old-host".to_owned(),
            )]
            .into(),
            ..Default::default()
        })
        .await
        .expect("create endpoint")
        .into_inner()
        .endpoint
        .expect("endpoint");
    let update = |url: String, headers: Option<&str>| UpdateEndpointRequest {
        id: endpoint.id.clone(),
        url: Some(url),
        replace_headers: headers.is_some(),
        headers: headers
            .map(|value| [("Authorization".to_owned(), value.to_owned())].into())
            .unwrap_or_default(),
        ..Default::default()
    };

    let refused = webhooks
        .update_endpoint(update(new_host.url(), None))
        .await
        .expect_err("the stored headers would go to another host");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let details = tonic_types::StatusExt::get_details_bad_request(&refused).expect("details");
    assert_eq!(details.field_violations[0].field, "headers");
    let kept = described(&app, &endpoint.id).await;
    assert_eq!(kept.url, old_host.url(), "nothing changed");

    // Another path on the same origin keeps them; another origin takes them sent again.
    let same_origin = format!("{}/elsewhere", old_host.url());
    webhooks
        .update_endpoint(update(same_origin, None))
        .await
        .expect("same origin");
    webhooks
        .update_endpoint(update(new_host.url(), Some("Bearer for-the-new-host")))
        .await
        .expect("headers sent again");
    webhooks
        .send_test_event(SendTestEventRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("test send");
    let received = new_host.wait_for(1).await;
    assert_eq!(
        received[0].header("authorization"),
        "Bearer for-the-new-host"
    );
    assert!(old_host.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_descriptions_names_and_filters_are_invalid_naming_the_field() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = create(&app, &receiver.url(), &[]).await;
    let mut webhooks = client(&app).await;
    let field_of = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        tonic_types::StatusExt::get_details_bad_request(&status)
            .expect("BadRequest detail")
            .field_violations[0]
            .field
            .clone()
    };

    let refused_updates = [
        (
            UpdateEndpointRequest {
                description: Some("a\0b".to_owned()),
                ..Default::default()
            },
            "description",
        ),
        (
            UpdateEndpointRequest {
                description: Some("d".repeat(1001)),
                ..Default::default()
            },
            "description",
        ),
        // Named by its index as sent, not as sorted.
        (
            UpdateEndpointRequest {
                replace_event_types: true,
                event_types: vec!["zzz.unknown".to_owned(), "contact.created".to_owned()],
                ..Default::default()
            },
            "event_types[0]",
        ),
        (
            UpdateEndpointRequest {
                replace_event_types: true,
                event_types: vec!["contact.created".to_owned(), "a\0".to_owned()],
                ..Default::default()
            },
            "event_types[1]",
        ),
    ];
    for (mut update, field) in refused_updates {
        update.id = endpoint.id.clone();
        let refused = webhooks.update_endpoint(update).await.expect_err(field);
        assert_eq!(field_of(refused), field);
    }

    // A NUL in a disable's reason is named as such, not as a length.
    let long_reason = "r".repeat(501);
    for (reason, problem) in [
        ("a\0b", "must not contain the NUL character (U+0000)"),
        (long_reason.as_str(), "must be 1 to 500 characters"),
    ] {
        let refused = webhooks
            .disable_endpoint(DisableEndpointRequest {
                id: endpoint.id.clone(),
                reason: reason.to_owned(),
            })
            .await
            .expect_err(problem);
        let details = tonic_types::StatusExt::get_details_bad_request(&refused).expect("details");
        let violation = &details.field_violations[0];
        assert_eq!(
            (violation.field.as_str(), violation.description.as_str()),
            ("reason", problem)
        );
    }

    let filtered = webhooks
        .list_deliveries(ListDeliveriesRequest {
            event_type: "\0".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("NUL in the filter");
    assert_eq!(field_of(filtered), "event_type");
    let mut access = app.access_client_with(Some(&app.keys.admin)).await;
    let audited = access
        .list_audit_entries(ListAuditEntriesRequest {
            action: "\0".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("NUL in the audit filter");
    assert_eq!(field_of(audited), "action");
}

/// PostgreSQL stores no time before 4713 BC, where chrono reaches 262,000 BC: such a time, in a
/// filter or in a forged page token, failed the query as an internal error.
#[tokio::test(flavor = "multi_thread")]
async fn times_and_page_tokens_outside_the_storable_years_are_named() {
    let app = TestApp::spawn().await;
    let mut webhooks = client(&app).await;
    let far_past = prost_types::Timestamp {
        seconds: -300_000_000_000,
        nanos: 0,
    };
    let field_of = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        tonic_types::StatusExt::get_details_bad_request(&status)
            .expect("details")
            .field_violations[0]
            .field
            .clone()
    };
    let since = webhooks
        .list_deliveries(ListDeliveriesRequest {
            since: Some(far_past),
            ..Default::default()
        })
        .await
        .expect_err("a time PostgreSQL cannot hold");
    assert_eq!(field_of(since), "since");
    let until = webhooks
        .list_deliveries(ListDeliveriesRequest {
            until: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..Default::default()
        })
        .await
        .expect_err("negative nanoseconds");
    assert_eq!(field_of(until), "until");
    let forged = URL_SAFE_NO_PAD.encode(format!("-300000000000000000:{}", uuid::Uuid::new_v4()));
    let token = webhooks
        .list_deliveries(ListDeliveriesRequest {
            page_token: forged,
            ..Default::default()
        })
        .await
        .expect_err("a forged page token");
    assert_eq!(field_of(token), "page_token");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoints_url_and_header_names_are_bounded() {
    let app = TestApp::spawn().await;
    let mut webhooks = client(&app).await;
    let long_url = format!("https://example.com/{}", "a".repeat(2100));
    let refused = webhooks
        .create_endpoint(CreateEndpointRequest {
            url: long_url,
            ..Default::default()
        })
        .await
        .expect_err("a URL longer than 2048 characters");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(refused.message(), "url: must be at most 2048 characters");

    let long_name = "x".repeat(300);
    let refused = webhooks
        .create_endpoint(CreateEndpointRequest {
            url: "https://example.com/hook".to_owned(),
            headers: [(long_name.clone(), "v".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect_err("a header name longer than 256 characters");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        !refused.message().contains(&long_name),
        "the name is not quoted back: {}",
        refused.message()
    );
    assert_eq!(
        refused.message(),
        "headers: a header name must be at most 256 characters"
    );
}

/// An endpoint moved to a new URL is judged by the new URL: a 410 from the old one, answered
/// after the move, neither disables it nor ends the delivery, which is retried at the new URL;
/// and the old URL's failing streak does not carry over.
#[tokio::test(flavor = "multi_thread")]
async fn the_old_urls_failures_do_not_disable_an_endpoint_moved_to_a_new_one() {
    let app = TestApp::builder().webhook_schedule("0s,0s").spawn().await;
    let old = Receiver::start().await;
    let held = Arc::new(tokio::sync::Semaphore::new(0));
    old.answer(Answer {
        status: 410,
        held: Some(held.clone()),
        ..Answer::default()
    });
    let new = Receiver::start().await;
    let (endpoint, _) = create(&app, &old.url(), &["contact.created"]).await;
    failing_since_days_ago(&app, &endpoint.id, 4).await;

    new_contact(&app, "+4915112345678").await;
    old.wait_for(1).await;
    client(&app)
        .await
        .update_endpoint(UpdateEndpointRequest {
            id: endpoint.id.clone(),
            url: Some(new.url()),
            ..Default::default()
        })
        .await
        .expect("move the endpoint");
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) AS count FROM webhook_endpoints \
                 WHERE id = '{}' AND failing_since IS NULL",
                endpoint.id
            )
        )
        .await,
        1,
        "the old URL's streak is not the new one's"
    );

    // The old receiver's 410, for the attempt sent before the move, is recorded...
    held.add_permits(1);
    // (The retry at the new URL follows at once, on the "0s" step: it may be recorded too.)
    eventually("the old attempt is recorded", async || {
        count(
            &app,
            "SELECT count(*) AS count FROM webhook_attempts WHERE status_code = 410",
        )
        .await
            == 1
    })
    .await;
    // ...the delivery is retried at the new URL...
    let received = new.wait_for(1).await;
    assert_eq!(received[0].json()["type"], "contact.created");
    // ...and the moved endpoint stays enabled, with no failing streak.
    let after = described(&app, &endpoint.id).await;
    assert!(after.enabled, "{:?}", after.disabled_reason);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS count FROM webhook_endpoints WHERE failing_since IS NOT NULL"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_and_event_types_are_listed_in_pages_a_client_can_read() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let mut webhooks = client(&app).await;
    // The longest URL, description and header names (values are listed as `***`): about 11 KiB
    // an endpoint, 400 of them more than one gRPC answer may be.
    let url = format!("{}?{}", receiver.url(), "q".repeat(2048));
    let url = &url[..2048];
    let headers: std::collections::HashMap<String, String> = (0..20)
        .map(|i| (format!("x-{i:02}-{}", "a".repeat(251)), "secret".to_owned()))
        .collect();
    let mut ids = Vec::new();
    for _ in 0..400 {
        let created = webhooks
            .create_endpoint(CreateEndpointRequest {
                url: url.to_owned(),
                description: "𝄞".repeat(1000),
                headers: headers.clone(),
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        ids.push(created.endpoint.expect("endpoint").id);
    }
    let path = "/api/v1/webhooks/endpoints";
    let pages = app.all_pages(path, "endpoints", "id", 500).await;
    assert!(pages.len() >= 2, "cut by size, not count: {}", pages.len());
    assert_eq!(pages.concat(), ids, "each once, oldest first");
    let pages = app.all_pages(path, "endpoints", "id", 150).await;
    assert_eq!(pages.len(), 3, "cut by count");
    assert_eq!(pages.concat(), ids);
    // A caller that does not page gets as many as fit, as before these lists were paged.
    let admin = [("x-api-key", app.keys.admin.as_str())];
    let unpaged = app.send(reqwest::Method::GET, path, &admin, "").await;
    let listed = unpaged.body["endpoints"].as_array().map_or(0, Vec::len);
    assert!(listed > 200, "{listed} endpoints in one answer");

    let example = json!({"v": "x".repeat(63 * 1024)});
    let mut registered = Vec::new();
    for i in 0..70 {
        let name = format!("bulk.type_{i:02}");
        webhooks
            .register_event_type(RegisterEventTypeRequest {
                name: name.clone(),
                description: "One of many".to_owned(),
                example: switchbord_api::json::struct_from_json(
                    example.as_object().expect("object").clone(),
                )
                .into(),
                ..Default::default()
            })
            .await
            .expect("register");
        registered.push(name);
    }
    let path = "/api/v1/webhooks/event-types";
    let pages = app.all_pages(path, "event_types", "name", 500).await;
    assert!(pages.len() >= 2, "cut by size, not count: {}", pages.len());
    let listed = pages.concat();
    let mut in_order = listed.clone();
    in_order.sort();
    in_order.dedup();
    assert_eq!(listed, in_order, "each once, by name");
    assert!(registered.iter().all(|name| listed.contains(name)));

    for (path, field) in [
        ("/api/v1/webhooks/endpoints?page_token=AA", "page_token"),
        ("/api/v1/webhooks/event-types?page_token=AA", "page_token"),
        ("/api/v1/webhooks/endpoints?page_size=501", "page_size"),
        // Parameters that cannot be read as their type are named too, not "query".
        ("/api/v1/webhooks/endpoints?page_size=ten", "page_size"),
        (
            "/api/v1/webhooks/deliveries?status=failed&page_size=99999999999",
            "page_size",
        ),
        ("/api/v1/admin/outbox/jobs?page_size=1.5", "page_size"),
    ] {
        let admin = [("x-api-key", app.keys.admin.as_str())];
        let reply = app.send(reqwest::Method::GET, path, &admin, "").await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert_eq!(
            reply.body["details"][0]["field"], field,
            "{path}: {}",
            reply.text
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_another_run_recorded_first_leaves_the_delivery_its_job() {
    let app = TestApp::spawn().await;
    let (_endpoint, _receiver, answer) = held_delivery(&app, 500).await;
    // Another run of the job recorded a failed attempt first: its lease had run out, so the
    // retry it asked for was not kept.
    let mut connection = app.database.connect().await;
    sql_query("UPDATE webhook_deliveries SET attempts = 1")
        .execute(&mut connection)
        .await
        .expect("another run's attempt");
    answer.add_permits(1);

    let running = "SELECT count(*) FROM outbox_jobs WHERE kind = 'webhook.deliver' \
                   AND status = 'running'";
    eventually("the run ends", async || count(&app, running).await == 0).await;
    let waiting = "SELECT count(*) FROM outbox_jobs WHERE kind = 'webhook.deliver' \
                   AND status = 'pending' AND run_after > now()";
    assert_eq!(
        count(&app, waiting).await,
        1,
        "the pending delivery keeps a job to retry it"
    );
    let pending =
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending' AND attempts = 1";
    assert_eq!(count(&app, pending).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_is_retried_on_its_schedule_not_on_its_jobs_backoff() {
    let clock = Arc::new(ManualClock::default());
    let app = TestApp::builder()
        .clock(clock.clone())
        .webhook_schedule("0s,1s,1s,1s,1s,1s")
        .spawn()
        .await;
    let receiver = Receiver::start().await;
    receiver.status(500);
    create(&app, &receiver.url(), &["contact.created"]).await;
    new_contact(&app, "+4915112345678").await;
    receiver.wait_for(1).await;
    rescheduled(&app, 1).await;
    for attempt in 2..=4 {
        clock.advance(Duration::from_secs(10));
        receiver.wait_for(attempt).await;
        rescheduled(&app, i64::try_from(attempt).expect("few")).await;
    }
    // The core's clock is 30 s ahead of the database's. The worker's backoff after the job's
    // fourth run would be 8 s (at least 6.4 with its jitter).
    let due = "SELECT count(*) FROM outbox_jobs WHERE kind = 'webhook.deliver' \
               AND status = 'pending' \
               AND run_after <= now() + interval '30 seconds' + interval '1200 milliseconds'";
    assert_eq!(
        count(&app, due).await,
        1,
        "due a second after the fourth failure, as the schedule says"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_410_sent_before_an_operators_enable_does_not_disable_the_endpoint_again() {
    let app = TestApp::spawn().await;
    let (endpoint, _receiver, answer) = held_delivery(&app, 410).await;
    let mut webhooks = client(&app).await;
    // Disabled (as by an earlier 410) and enabled again while this attempt was under way.
    webhooks
        .disable_endpoint(DisableEndpointRequest {
            id: endpoint.id.clone(),
            reason: "the receiver answered 410 Gone".to_owned(),
        })
        .await
        .expect("disable");
    webhooks
        .enable_endpoint(EnableEndpointRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("enable");
    answer.add_permits(1);

    until_deliveries_end_or_fail(&app).await;
    let stored = described(&app, &endpoint.id).await;
    assert!(stored.enabled, "{stored:?}");
    let announced = "SELECT count(*) FROM events WHERE type = 'webhook.endpoint_disabled'";
    assert_eq!(count(&app, announced).await, 0);
    let retried =
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending' AND attempts = 1";
    assert_eq!(
        count(&app, retried).await,
        1,
        "retried on the schedule, as after any failure of an enabled endpoint"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_with_more_attempts_than_one_answer_can_carry_is_listed_in_pages() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = create(&app, &receiver.url(), &["contact.created"]).await;
    new_contact(&app, "+4915112345678").await;
    receiver.wait_for(1).await;
    let delivery = deliveries_of(&app, &endpoint.id).await.remove(0);
    eventually_attempts(&app, &delivery.id, 1).await;
    // A delivery recovered again and again: 999 more attempts, each with a 4 KiB excerpt, past
    // the 4 MiB a gRPC answer may carry.
    let mut connection = app.database.connect().await;
    sql_query(
        "INSERT INTO webhook_attempts (id, delivery_id, endpoint_id, attempt, attempted_at,
             status_code, duration_ms, response_excerpt, error, succeeded)
         SELECT gen_random_uuid(), d.id, d.endpoint_id, g % 9 + 1,
             now() + g * interval '1 second', 500, 3, repeat('x', 4096), 'HTTP 500', false
         FROM webhook_deliveries d, generate_series(1, 999) AS g",
    )
    .execute(&mut connection)
    .await
    .expect("attempts");

    let path = format!("/api/v1/webhooks/deliveries/{}/attempts", delivery.id);
    let admin = [("x-api-key", app.keys.admin.as_str())];
    let unpaged = app.send(reqwest::Method::GET, &path, &admin, "").await;
    assert_eq!(unpaged.status, 200, "{}", unpaged.text);
    let first_page = unpaged.body["attempts"].as_array().expect("attempts").len();
    assert!((1..1000).contains(&first_page), "{first_page}");
    assert!(
        !unpaged.body["next_page_token"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );
    let listed = app
        .all_pages(&path, "attempts", "attempted_at", 500)
        .await
        .concat();
    let times: Vec<_> = listed
        .iter()
        .map(|time| chrono::DateTime::parse_from_rfc3339(time).expect("a time"))
        .collect();
    assert_eq!(times.len(), 1000);
    assert!(
        times.windows(2).all(|pair| pair[0] < pair[1]),
        "each once, oldest first"
    );

    let page = client(&app)
        .await
        .list_delivery_attempts(ListDeliveryAttemptsRequest {
            delivery_id: delivery.id.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("a page")
        .into_inner();
    assert_eq!(page.attempts.len(), 2);
    assert!(page.attempts[0].succeeded, "the real attempt first");
    assert!(!page.next_page_token.is_empty());
}
