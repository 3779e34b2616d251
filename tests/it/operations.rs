//! What operators run the service with: `/healthz`, `/readyz` that follows the database,
//! Prometheus metrics that move with traffic, and the request id carried into outbox jobs.
//!
//! Every test core in this process records into one metrics recorder, so the checks compare a
//! series before and after this test's own requests instead of expecting exact values.

use reqwest::Method;
use serde_json::json;
use switchbord_api::v1::UpsertContactRequest;

use crate::helpers::{Receiver, TestApp, eventually};

/// The sum of every sample of `name` whose labels include all of `labels` (`key="value"`).
fn sample(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in page.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or_default();
        if metric != name || !labels.iter().all(|label| series.contains(label)) {
            continue;
        }
        let value: f64 = value.parse().expect("a numeric sample");
        *found.get_or_insert(0.0) += value;
    }
    found
}

async fn scrape(app: &TestApp) -> String {
    let reply = app.send_anonymous(Method::GET, "/metrics", &[], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|value| value.starts_with("text/plain")),
        "{:?}",
        reply.header("content-type")
    );
    reply.text
}

fn contact(phone: &str) -> serde_json::Value {
    json!({"phone_number": phone, "person_properties": {"plan": "gold"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_without_a_key() {
    let app = TestApp::spawn().await;
    let reply = app.send_anonymous(Method::GET, "/healthz", &[], "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text, "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_the_database_is_unreachable_and_recovers() {
    let app = TestApp::spawn().await;
    let ready = app.send_anonymous(Method::GET, "/readyz", &[], "").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["status"], "ready");

    app.database.set_reachable(false).await;
    let down = app.send_anonymous(Method::GET, "/readyz", &[], "").await;
    assert_eq!(down.status, 503, "{}", down.text);
    assert_eq!(down.body["status"], "not_ready");
    assert!(
        down.body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{}",
        down.text
    );
    // Liveness is not readiness: the process is still up.
    let live = app.send_anonymous(Method::GET, "/healthz", &[], "").await;
    assert_eq!(live.status, 200);

    app.database.set_reachable(true).await;
    eventually("readyz recovers", async || {
        app.send_anonymous(Method::GET, "/readyz", &[], "")
            .await
            .status
            == 200
    })
    .await;
}

/// gRPC clients' own health checking watches the overall status rather than asking for it.
#[tokio::test(flavor = "multi_thread")]
async fn the_watched_overall_health_follows_the_database() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let app = TestApp::spawn().await;
    let mut statuses = HealthClient::new(app.channel().await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut next_status = async || {
        let reply = tokio::time::timeout(std::time::Duration::from_secs(20), statuses.message())
            .await
            .expect("a status within 20 s")
            .expect("the stream goes on")
            .expect("a status");
        ServingStatus::try_from(reply.status).expect("a known status")
    };
    // Statuses come as they change; one from a check that began before the database changed
    // may come first.
    let mut until_status = async |expected: ServingStatus| {
        for _ in 0..4 {
            if next_status().await == expected {
                return;
            }
        }
        panic!("no {expected:?} in four statuses");
    };
    until_status(ServingStatus::Serving).await;
    app.database.set_reachable(false).await;
    until_status(ServingStatus::NotServing).await;
    app.database.set_reachable(true).await;
    until_status(ServingStatus::Serving).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connections_the_database_ended_are_replaced_not_used() {
    let app = TestApp::spawn().await;
    // Several at once, so that the pool holds several connections.
    let bodies: Vec<_> = (0..6)
        .map(|index| json!({"phone_number": format!("+49151123460{index:02}")}))
        .collect();
    let first: Vec<_> = bodies
        .iter()
        .map(|body| app.post_json("/compat/contact", body))
        .collect();
    for reply in futures::future::join_all(first).await {
        assert_eq!(reply.status, 200, "{}", reply.text);
    }

    app.database.end_connections().await;
    // The pool hands out connections without a test query; it must still notice the closed
    // sockets (given a moment to read them) and open new ones instead of failing requests.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for index in 0..8 {
        app.upsert_contact(&json!({"phone_number": format!("+49151123461{index:02}")}))
            .await;
    }
    let ready = app.send_anonymous(Method::GET, "/readyz", &[], "").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_when_a_migration_is_missing() {
    let app = TestApp::spawn().await;
    let mut connection = app.database.connect().await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "DELETE FROM __diesel_schema_migrations
             WHERE version = (SELECT max(version) FROM __diesel_schema_migrations)",
        ),
        &mut connection,
    )
    .await
    .expect("forget the newest migration");
    let reply = app.send_anonymous(Method::GET, "/readyz", &[], "").await;
    assert_eq!(reply.status, 503, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_grpc_requests_are_counted_and_timed_per_route() {
    let app = TestApp::spawn().await;
    let http_series = [
        "method=\"POST\"",
        "route=\"/compat/contact\"",
        "status=\"200\"",
    ];
    let grpc_series = [
        "service=\"switchbord.v1.ContactService\"",
        "method=\"UpsertContact\"",
        "code=\"OK\"",
    ];
    let before = scrape(&app).await;
    app.upsert_contact(&contact("+4915112340001")).await;
    app.contacts_client()
        .await
        .upsert_contact(UpsertContactRequest {
            phone_number: "+4915112340002".to_owned(),
            ..Default::default()
        })
        .await
        .expect("gRPC upsert");
    let after = scrape(&app).await;

    let count = |page: &str, name: &str, labels: &[&str]| sample(page, name, labels).unwrap_or(0.0);
    assert!(
        count(&after, "switchbord_http_requests_total", &http_series)
            > count(&before, "switchbord_http_requests_total", &http_series),
        "{after}"
    );
    assert!(
        count(
            &after,
            "switchbord_http_request_duration_seconds_count",
            &http_series
        ) > count(
            &before,
            "switchbord_http_request_duration_seconds_count",
            &http_series
        )
    );
    // The gateway's own call and the direct one.
    assert!(
        count(&after, "switchbord_grpc_requests_total", &grpc_series)
            >= count(&before, "switchbord_grpc_requests_total", &grpc_series) + 2.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "switchbord_grpc_request_duration_seconds_bucket",
            &grpc_series
        )
        .is_some()
    );
    assert!(after.contains("# HELP switchbord_http_requests_total"));
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_are_labelled_by_status_code_and_only_known_services() {
    let app = TestApp::spawn().await;
    let mut client = app.contacts_client().await;
    let _ = client
        .upsert_contact(UpsertContactRequest::default())
        .await
        .expect_err("no phone number");
    let page = scrape(&app).await;
    assert!(
        sample(
            &page,
            "switchbord_grpc_requests_total",
            &["method=\"UpsertContact\"", "code=\"INVALID_ARGUMENT\""]
        )
        .is_some(),
        "{page}"
    );
    for line in page
        .lines()
        .filter(|line| line.starts_with("switchbord_grpc_requests_total"))
    {
        assert!(
            line.contains("service=\"switchbord.v1.")
                || line.contains("service=\"grpc.")
                || line.contains("service=\"unknown\""),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_rejections_are_counted() {
    let app = TestApp::builder().rate_limit_per_minute(1).spawn().await;
    let before = sample(
        &scrape(&app).await,
        "switchbord_http_rate_limited_total",
        &["family=\"compat\""],
    )
    .unwrap_or(0.0);
    let mut limited = false;
    for attempt in 0..3 {
        let reply = app
            .post_json(
                "/compat/contact",
                &contact(&format!("+491511234000{attempt}")),
            )
            .await;
        limited |= reply.status == 429;
    }
    assert!(limited, "the second request in a minute is refused");
    let after = sample(
        &scrape(&app).await,
        "switchbord_http_rate_limited_total",
        &["family=\"compat\""],
    )
    .unwrap_or(0.0);
    assert!(after > before, "{before} -> {after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_webhook_and_sync_metrics_follow_the_work() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let admin = [
        ("x-api-key", app.keys.admin.as_str()),
        ("content-type", "application/json"),
    ];
    let created = app
        .send(
            Method::POST,
            "/api/v1/webhooks/endpoints",
            &admin,
            json!({"url": receiver.url(), "event_types": ["contact.created"]}).to_string(),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text);

    let delivered = ["outcome=\"delivered\""];
    let job_runs = ["kind=\"webhook.deliver\"", "outcome=\"succeeded\""];
    let before = scrape(&app).await;
    app.upsert_contact(&contact("+4915112340100")).await;
    receiver.wait_for(1).await;

    eventually("delivery and job metrics move", async || {
        let page = scrape(&app).await;
        let moved = |name: &str, labels: &[&str]| {
            sample(&page, name, labels).unwrap_or(0.0)
                > sample(&before, name, labels).unwrap_or(0.0)
        };
        moved("switchbord_webhook_deliveries_total", &delivered)
            && moved("switchbord_outbox_job_runs_total", &job_runs)
            && moved(
                "switchbord_webhook_attempt_duration_seconds_count",
                &["result=\"success\""],
            )
            && moved("switchbord_outbox_job_duration_seconds_count", &job_runs)
    })
    .await;

    // The sampled gauges: present for every state, whatever other tests' cores last wrote.
    eventually("sampled gauges appear", async || {
        let page = scrape(&app).await;
        ["setup", "ready", "live", "attention"].iter().all(|state| {
            sample(
                &page,
                "switchbord_webhook_endpoints",
                &[&format!("health=\"{state}\"")],
            )
            .is_some()
        }) && ["pending", "synced", "failed", "unlinked"]
            .iter()
            .all(|status| {
                sample(
                    &page,
                    "switchbord_twenty_contact_syncs",
                    &[&format!("status=\"{status}\"")],
                )
                .is_some()
            })
            && ["pending", "running", "dead"].iter().all(|status| {
                sample(
                    &page,
                    "switchbord_outbox_jobs",
                    &[&format!("status=\"{status}\""), "kind=\"webhook.deliver\""],
                )
                .is_some()
            })
            && sample(&page, "switchbord_outbox_oldest_pending_seconds", &[]).is_some()
            && sample(&page, "switchbord_webhook_parked_oldest_seconds", &[]).is_some()
            && sample(&page, "switchbord_metrics_sample_up", &[]).is_some()
    })
    .await;
    // Succeeded jobs are history, not depth: counting them would read every row kept. A few
    // samples (100 ms apart here) after the jobs above succeeded:
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let page = scrape(&app).await;
    assert_eq!(
        sample(&page, "switchbord_outbox_jobs", &["status=\"succeeded\""]),
        None,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_id_follows_a_request_into_its_outbox_jobs() {
    let app = TestApp::spawn().await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let reply = app
        .send(
            Method::POST,
            "/compat/contact",
            &[
                ("content-type", "application/json"),
                ("x-request-id", &request_id),
            ],
            contact("+4915112340200").to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-request-id"), Some(request_id.as_str()));

    let jobs = app
        .send(
            Method::GET,
            "/api/v1/admin/outbox/jobs?kind=event.dispatch",
            &[("x-api-key", app.keys.admin.as_str())],
            "",
        )
        .await;
    assert_eq!(jobs.status, 200, "{}", jobs.text);
    let carried = jobs.body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|job| job["request_id"] == request_id.as_str())
        .count();
    assert!(carried >= 1, "{}", jobs.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn succeeded_outbox_jobs_are_deleted_after_the_retention() {
    let clock = std::sync::Arc::new(switchbord_core::outbox::ManualClock::default());
    let app = TestApp::builder()
        .outbox_retention(std::time::Duration::from_secs(60))
        .clock(clock.clone())
        .spawn()
        .await;
    app.upsert_contact(&contact("+4915112340101")).await;
    let succeeded = "SELECT count(*) FROM outbox_jobs WHERE status = 'succeeded'";
    eventually("the contact's dispatch job succeeds", async || {
        crate::helpers::count(&app.database, succeeded).await >= 1
    })
    .await;

    // Still there within the retention; gone once it has passed (the pruner looks every second
    // at this retention).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(crate::helpers::count(&app.database, succeeded).await >= 1);
    clock.advance(std::time::Duration::from_secs(120));
    eventually("the old success is pruned", async || {
        crate::helpers::count(&app.database, succeeded).await == 0
    })
    .await;
    assert_eq!(
        crate::helpers::count(&app.database, "SELECT count(*) FROM contacts").await,
        1,
        "only bookkeeping goes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_keys_are_deleted_once_no_window_can_hold_them() {
    use diesel_async::RunQueryDsl;
    let clock = std::sync::Arc::new(switchbord_core::outbox::ManualClock::default());
    let app = TestApp::builder()
        .outbox_retention(std::time::Duration::from_secs(60))
        .clock(clock.clone())
        .spawn()
        .await;
    let trigger = app
        .post_json(
            "/compat/journey-trigger/welcome",
            &json!({"phone_number": "+4915112340102"}),
        )
        .await;
    assert_eq!(trigger.status, 200, "{}", trigger.text);
    // A key taken 29 days after the first one: still within 30 days once the clock has moved.
    let mut connection = app.database.connect().await;
    diesel::sql_query(
        "INSERT INTO journey_trigger_keys (dedup_key, trigger_id, outbox_job_id, accepted_at)
         VALUES ('later', gen_random_uuid(), gen_random_uuid(), now() + interval '29 days')",
    )
    .execute(&mut connection)
    .await
    .expect("a later key");
    // Emarsys events' redelivery keys, with the same retention.
    diesel::sql_query(
        "INSERT INTO webhook_event_keys (dedup_key, webhook_event_id, outbox_job_id, accepted_at)
         VALUES ('emarsys-first', gen_random_uuid(), gen_random_uuid(), now()),
                ('emarsys-later', gen_random_uuid(), gen_random_uuid(), now() + interval '29 days')",
    )
    .execute(&mut connection)
    .await
    .expect("Emarsys keys");
    let keys = "SELECT count(*) FROM journey_trigger_keys";
    let emarsys_keys = "SELECT count(*) FROM webhook_event_keys";

    // Kept past the 60 s window for 30 days, as an Emarsys event's flows need (the pruner looks
    // every second at this retention).
    clock.advance(std::time::Duration::from_secs(29 * 24 * 3600));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(crate::helpers::count(&app.database, keys).await, 2);
    assert_eq!(crate::helpers::count(&app.database, emarsys_keys).await, 2);
    clock.advance(std::time::Duration::from_secs(2 * 24 * 3600));
    eventually("the first keys are pruned", async || {
        crate::helpers::count(&app.database, keys).await == 1
            && crate::helpers::count(&app.database, emarsys_keys).await == 1
    })
    .await;
    assert_eq!(
        crate::helpers::count(
            &app.database,
            "SELECT count(*) FROM webhook_event_keys WHERE dedup_key = 'emarsys-later'"
        )
        .await,
        1
    );
    assert_eq!(
        crate::helpers::count(
            &app.database,
            "SELECT count(*) FROM journey_trigger_keys WHERE dedup_key = 'later'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadlocked_transaction_is_a_retryable_failure_not_an_internal_error() {
    use diesel::sql_query;
    use diesel_async::RunQueryDsl;
    use switchbord_core::db::DbError;

    let database = crate::helpers::TestDatabase::create().await;
    let mut setup = database.connect().await;
    for statement in [
        "CREATE TABLE pair (id int PRIMARY KEY)",
        "INSERT INTO pair VALUES (1), (2)",
    ] {
        sql_query(statement)
            .execute(&mut setup)
            .await
            .expect("two rows");
    }
    let (mut first, mut second) = (database.connect().await, database.connect().await);
    for connection in [&mut first, &mut second] {
        sql_query("BEGIN").execute(connection).await.expect("begin");
    }
    let lock = |id: i32| format!("SELECT id FROM pair WHERE id = {id} FOR UPDATE");
    sql_query(lock(1))
        .execute(&mut first)
        .await
        .expect("first holds 1");
    sql_query(lock(2))
        .execute(&mut second)
        .await
        .expect("second holds 2");
    // Each now waits for the other's row; PostgreSQL ends one of them.
    let (a, b) = tokio::join!(
        sql_query(lock(2)).execute(&mut first),
        sql_query(lock(1)).execute(&mut second)
    );
    let failed = a.err().or(b.err()).expect("one of them was ended");

    assert!(
        matches!(DbError::from(failed), DbError::Unavailable(_)),
        "a deadlock is a conflict to retry"
    );
}
