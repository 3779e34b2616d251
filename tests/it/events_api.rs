//! PublishEvent and the event catalog, and the operator view of the outbox.

use std::time::Duration;

use diesel::sql_query;
use diesel_async::RunQueryDsl;
use switchbord_api::json::struct_from_json;
use switchbord_api::v1::event_service_client::EventServiceClient;
use switchbord_api::v1::outbox_service_client::OutboxServiceClient;
use switchbord_api::v1::webhook_service_client::WebhookServiceClient;
use switchbord_api::v1::{
    CreateEndpointRequest, GetOutboxJobRequest, GetOutboxStatsRequest, ListEventTypesRequest,
    ListOutboxJobsRequest, PublishEventRequest, RetryOutboxJobRequest, SendTestEventRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{Receiver, TestApp, WithKey, eventually};

#[tokio::test(flavor = "multi_thread")]
async fn internal_services_publish_catalogued_events_only() {
    let app = TestApp::spawn().await;
    let mut events = EventServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.user)),
    );
    let data = serde_json::json!({"message_id": "wamid.1", "phone_number": "+4915112345678"});

    let published = events
        .publish_event(PublishEventRequest {
            r#type: "message.delivered".to_owned(),
            data: Some(struct_from_json(
                data.as_object().cloned().unwrap_or_default(),
            )),
            source: "sender".to_owned(),
        })
        .await
        .expect("publish")
        .into_inner()
        .event
        .expect("event");
    let unknown = events
        .publish_event(PublishEventRequest {
            r#type: "message.exploded".to_owned(),
            data: None,
            source: String::new(),
        })
        .await
        .expect_err("not in the catalog");
    // Every built-in but the messages is Switchbord's own, those added later included.
    let emitted = builtins_not_messages(&app).await;
    assert!(emitted.len() >= 8, "{emitted:?}");
    for emitted in emitted {
        let refused = events
            .publish_event(PublishEventRequest {
                r#type: emitted.to_owned(),
                data: None,
                source: String::new(),
            })
            .await
            .expect_err("only Switchbord emits it");
        assert_eq!(refused.code(), Code::InvalidArgument, "{emitted}");
        let bad_request = refused
            .get_details_bad_request()
            .expect("BadRequest detail");
        assert_eq!(bad_request.field_violations[0].field, "type");
    }
    let nul_source = events
        .publish_event(PublishEventRequest {
            r#type: "message.delivered".to_owned(),
            data: None,
            source: "sms\0".to_owned(),
        })
        .await
        .expect_err("a NUL in the source");
    let details = nul_source.get_details_bad_request().expect("details");
    let violation = &details.field_violations[0];
    assert_eq!(
        (violation.field.as_str(), violation.description.as_str()),
        ("source", "must not contain the NUL character (U+0000)")
    );
    // A type PostgreSQL could neither store nor index is the caller's error, named.
    for (event_type, problem) in [
        (
            "message.\0x".to_owned(),
            "must not contain the NUL character (U+0000)",
        ),
        (
            format!("message.{}", "x".repeat(3000)),
            "must be 1 to 100 characters",
        ),
    ] {
        let refused = events
            .publish_event(PublishEventRequest {
                r#type: event_type,
                data: None,
                source: String::new(),
            })
            .await
            .expect_err("an impossible type");
        let details = refused.get_details_bad_request().expect("details");
        let violation = &details.field_violations[0];
        assert_eq!(
            (violation.field.as_str(), violation.description.as_str()),
            ("type", problem)
        );
    }
    let catalog = events
        .list_event_types(ListEventTypesRequest::default())
        .await
        .expect("catalog")
        .into_inner();

    assert!(published.id.starts_with("evt_"));
    assert_eq!(published.r#type, "message.delivered");
    assert_eq!(published.source, "sender");
    // The time answered is the time stored, to the microsecond the database keeps.
    let answered = published.timestamp.expect("timestamp");
    let stored = crate::helpers::count(
        &app.database,
        &format!(
            "SELECT (extract(epoch FROM occurred_at) * 1000000)::bigint AS count FROM events \
             WHERE id = '{}'",
            published.id
        ),
    )
    .await;
    assert_eq!(
        answered.seconds * 1_000_000 + i64::from(answered.nanos) / 1000,
        stored
    );
    assert_eq!(answered.nanos % 1000, 0, "no finer than the stored time");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    let bad_request = unknown
        .get_details_bad_request()
        .expect("BadRequest detail");
    assert_eq!(bad_request.field_violations[0].field, "type");
    // Nothing of the refused event was kept: no event, no dispatch job, no audit entry.
    for (table, expected) in [
        ("events", 1),
        ("outbox_jobs WHERE kind = 'event.dispatch'", 1),
        ("audit_entries WHERE action = 'event.publish'", 1),
    ] {
        let stored =
            crate::helpers::count(&app.database, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(stored, expected, "{table}");
    }
    let names: Vec<&str> = catalog
        .event_types
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    for builtin in [
        "contact.created",
        "contact.updated",
        "contact.opted_out",
        "message.received",
        "message.delivered",
        "message.failed",
        "journey.triggered",
        "integration.emarsys.event_received",
        "crm.twenty.sync_failed",
        "webhook.test",
        "webhook.endpoint_disabled",
    ] {
        assert!(names.contains(&builtin), "{builtin} missing from {names:?}");
    }
}

/// The catalog's built-in types that are not `message.*`.
async fn builtins_not_messages(app: &TestApp) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let mut connection = app.database.connect().await;
    let names: Vec<Name> = sql_query(
        "SELECT name FROM event_types WHERE builtin AND name NOT LIKE 'message.%' ORDER BY name",
    )
    .load(&mut connection)
    .await
    .expect("built-in types");
    names.into_iter().map(|type_| type_.name).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_list_inspect_count_and_retry_dead_jobs() {
    let app = TestApp::spawn().await;
    let reply = app
        .post_json(
            "/compat/journey-trigger/welcome",
            &serde_json::json!({"phone_number": "+4915112345678"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let job_id = reply.body["outboxJobId"]
        .as_str()
        .expect("job id")
        .to_owned();
    let mut outbox = OutboxServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.admin)),
    );

    // Make the job dead, as if every attempt had failed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let job = outbox
            .get_outbox_job(GetOutboxJobRequest { id: job_id.clone() })
            .await
            .expect("get job")
            .into_inner()
            .job
            .expect("job");
        if job.status == "succeeded" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trigger job did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut connection = app.database.connect().await;
    sql_query(format!(
        "UPDATE outbox_jobs SET status = 'dead', attempts = 10, last_error = 'boom' WHERE id = '{job_id}'"
    ))
    .execute(&mut connection)
    .await
    .expect("kill the job");

    let dead = outbox
        .list_outbox_jobs(ListOutboxJobsRequest {
            status: "dead".to_owned(),
            kind: "journey.trigger".to_owned(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let stats = outbox
        .get_outbox_stats(GetOutboxStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let retried = outbox
        .retry_outbox_job(RetryOutboxJobRequest { id: job_id.clone() })
        .await
        .expect("retry")
        .into_inner()
        .job
        .expect("job");
    let again = outbox
        .retry_outbox_job(RetryOutboxJobRequest { id: job_id.clone() })
        .await
        .expect_err("only dead jobs");
    let missing = outbox
        .get_outbox_job(GetOutboxJobRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("no such job");
    let manager_retry = OutboxServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.manager)),
    )
    .retry_outbox_job(RetryOutboxJobRequest { id: job_id.clone() })
    .await
    .expect_err("managers only look");

    assert_eq!(dead.jobs.len(), 1);
    assert_eq!(dead.jobs[0].id, job_id);
    assert_eq!(dead.jobs[0].last_error, "boom");
    assert!(stats.counts.iter().any(|count| count.status == "dead"
        && count.kind == "journey.trigger"
        && count.count == 1));
    assert_eq!(retried.status, "pending");
    assert_eq!(retried.attempts, 0);
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(manager_retry.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_admin_rest_routes_map_the_rpcs_and_their_errors() {
    use reqwest::Method;
    let app = TestApp::spawn().await;
    let reply = app
        .post_json(
            "/compat/journey-trigger/welcome",
            &serde_json::json!({"phone_number": "+4915112345678"}),
        )
        .await;
    let job_id = reply.body["outboxJobId"]
        .as_str()
        .expect("job id")
        .to_owned();
    let admin = [("x-api-key", app.keys.admin.as_str())];
    let manager = [("x-api-key", app.keys.manager.as_str())];
    let user = [("x-api-key", app.keys.user.as_str())];

    let stats = app
        .send(Method::GET, "/api/v1/admin/outbox/stats", &manager, "")
        .await;
    let list = app
        .send(
            Method::GET,
            "/api/v1/admin/outbox/jobs?kind=journey.trigger&page_size=10",
            &admin,
            "",
        )
        .await;
    let one = app
        .send(
            Method::GET,
            &format!("/api/v1/admin/outbox/jobs/{job_id}"),
            &admin,
            "",
        )
        .await;
    let bad_filter = app
        .send(
            Method::GET,
            "/api/v1/admin/outbox/jobs?status=bogus",
            &admin,
            "",
        )
        .await;
    let not_dead = app
        .send(
            Method::POST,
            &format!("/api/v1/admin/outbox/jobs/{job_id}/retry"),
            &admin,
            "",
        )
        .await;
    let as_user = app
        .send(Method::GET, "/api/v1/admin/outbox/stats", &user, "")
        .await;
    let anonymous = app
        .send_anonymous(Method::GET, "/api/v1/admin/outbox/stats", &[], "")
        .await;
    let missing = app
        .send(
            Method::GET,
            &format!("/api/v1/admin/outbox/jobs/{}", uuid::Uuid::new_v4()),
            &admin,
            "",
        )
        .await;

    assert_eq!(stats.status, 200, "{}", stats.text);
    assert!(stats.body["counts"].is_array());
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body["jobs"][0]["id"], job_id.as_str());
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["job"]["kind"], "journey.trigger");
    assert_eq!(bad_filter.status, 400);
    assert_eq!(bad_filter.body["code"], 3, "INVALID_ARGUMENT");
    assert_eq!(bad_filter.body["details"][0]["field"], "status");
    assert_eq!(
        not_dead.status, 400,
        "FAILED_PRECONDITION maps to 400: {}",
        not_dead.text
    );
    assert_eq!(not_dead.body["code"], 9);
    assert_eq!(as_user.status, 403);
    assert_eq!(as_user.body["code"], 7, "PERMISSION_DENIED");
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").is_some());
    assert_eq!(missing.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn built_in_types_describe_their_data_and_emitted_events_carry_it() {
    let app = TestApp::spawn().await;
    let database = &app.database;
    let described = "SELECT count(*) FROM event_types
         WHERE builtin AND name NOT LIKE 'message.%'
           AND jsonb_array_length(COALESCE(schema -> 'required', '[]')) > 0";
    let builtins = "SELECT count(*) FROM event_types WHERE builtin AND name NOT LIKE 'message.%'";
    assert_eq!(
        crate::helpers::count(database, described).await,
        crate::helpers::count(database, builtins).await,
        "every type Switchbord emits names its required fields"
    );
    let examples_lacking = "SELECT count(*) FROM event_types,
             jsonb_array_elements_text(COALESCE(schema -> 'required', '[]')) AS required (key)
         WHERE NOT example ? key";
    assert_eq!(crate::helpers::count(database, examples_lacking).await, 0);

    // Events of five built-in types, emitted for real.
    let phone = "+4915112345678";
    app.upsert_contact(&serde_json::json!({"phone_number": phone}))
        .await;
    app.upsert_contact(&serde_json::json!({"phone_number": phone, "tags": ["vip"]}))
        .await;
    let trigger = serde_json::json!({"phone_number": phone, "trigger_id": "t-1"});
    let triggered = app
        .post_json("/compat/journey-trigger/welcome", &trigger)
        .await;
    assert_eq!(triggered.status, 200, "{}", triggered.text);
    let emarsys = serde_json::json!({"event_name": "order_placed", "phone": phone});
    let received = app
        .post_json(
            "/api/v0/webhooks/incoming/emarsys/custom_external_event",
            &emarsys,
        )
        .await;
    assert_eq!(received.status, 200, "{}", received.text);
    let receiver = Receiver::start().await;
    let mut webhooks = WebhookServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.admin)),
    );
    let endpoint = webhooks
        .create_endpoint(CreateEndpointRequest {
            url: receiver.url(),
            event_types: vec!["webhook.test".to_owned()],
            ..Default::default()
        })
        .await
        .expect("create endpoint")
        .into_inner()
        .endpoint
        .expect("endpoint");
    webhooks
        .send_test_event(SendTestEventRequest { id: endpoint.id })
        .await
        .expect("test send");
    let emitted_types = "SELECT count(DISTINCT type) FROM events";
    eventually("the trigger's run is recorded", async || {
        crate::helpers::count(database, emitted_types).await == 5
    })
    .await;

    let missing = "SELECT count(*) FROM events JOIN event_types ON event_types.name = events.type,
             jsonb_array_elements_text(schema -> 'required') AS required (key)
         WHERE NOT events.data ? key";
    assert_eq!(crate::helpers::count(database, missing).await, 0);
    let contact_missing = "SELECT count(*) FROM events JOIN event_types ON event_types.name = events.type,
             jsonb_array_elements_text(schema -> 'properties' -> 'contact' -> 'required') AS required (key)
         WHERE NOT events.data -> 'contact' ? key";
    assert_eq!(crate::helpers::count(database, contact_missing).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_large_jobs_is_cut_short_rather_than_answered_past_what_clients_accept() {
    let app = TestApp::spawn().await;
    let mut connection = app.database.connect().await;
    // Eight succeeded jobs of about 1 MiB each: a page of all eight would be refused by any
    // client with the default 4 MiB limit (this test's client among them).
    sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after,
             created_at, updated_at)
         SELECT gen_random_uuid(), 'test.large', jsonb_build_object('data', repeat('x', 1048576)),
                'succeeded', 1, 1, now(), now() - make_interval(secs => n), now()
         FROM generate_series(1, 8) AS n",
    )
    .execute(&mut connection)
    .await
    .expect("large jobs");
    let mut outbox = OutboxServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.admin)),
    );

    let mut ids = Vec::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let page = outbox
            .list_outbox_jobs(ListOutboxJobsRequest {
                kind: "test.large".to_owned(),
                page_size: 8,
                page_token,
                ..Default::default()
            })
            .await
            .expect("a page the client accepts")
            .into_inner();
        assert!(!page.jobs.is_empty(), "every page holds a job");
        assert!(page.jobs.len() <= 3, "{} jobs of 1 MiB", page.jobs.len());
        ids.extend(page.jobs.into_iter().map(|job| job.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert!(pages >= 3, "{pages} pages");
    let listed = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((listed, ids.len()), (8, 8), "each job listed once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_larger_than_a_default_grpc_answer_is_still_read_over_rest() {
    let app = TestApp::spawn().await;
    // A payload a gRPC caller can send (up to 8 MiB) but a default client cannot read back.
    let id = insert_job(
        &app,
        "test.large",
        "jsonb_build_object('data', repeat('x', 5 * 1048576))",
        "succeeded",
    )
    .await;

    for path in [
        format!("/api/v1/admin/outbox/jobs/{id}"),
        "/api/v1/admin/outbox/jobs?kind=test.large".to_owned(),
    ] {
        let reply = app
            .send(
                reqwest::Method::GET,
                &path,
                &[("x-api-key", app.keys.admin.as_str())],
                Vec::new(),
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "{path}: {}",
            &reply.text[..reply.text.len().min(300)]
        );
        assert!(reply.text.len() > 5 * 1048576, "{path}: the whole payload");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_delivery_job_is_retried_through_its_delivery_not_the_outbox() {
    let app = TestApp::spawn().await;
    let id = insert_job(&app, "webhook.deliver", "'{}'", "dead").await;
    let mut outbox = OutboxServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.admin)),
    );

    let refused = outbox
        .retry_outbox_job(RetryOutboxJobRequest { id: id.to_string() })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("RetryDelivery"), "{refused:?}");
    let dead = crate::helpers::count(
        &app.database,
        &format!("SELECT count(*) FROM outbox_jobs WHERE id = '{id}' AND status = 'dead'"),
    )
    .await;
    assert_eq!(dead, 1, "left dead");
}

/// Inserts a job of `kind` whose payload is the SQL expression `payload`, in `status`, its
/// attempts spent, and returns its id.
async fn insert_job(app: &TestApp, kind: &str, payload: &str, status: &str) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    let mut connection = app.database.connect().await;
    sql_query(format!(
        "INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after,
             created_at, updated_at)
         VALUES ('{id}', '{kind}', {payload}, '{status}', 8, 8, now(), now(), now())"
    ))
    .execute(&mut connection)
    .await
    .expect("insert a job");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_of_small_jobs_hold_what_they_are_asked_for_each_job_once() {
    let app = TestApp::spawn().await;
    let mut connection = app.database.connect().await;
    // Sixty jobs, two created at the same instant (the id then orders them).
    sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after,
             created_at, updated_at)
         SELECT gen_random_uuid(), 'test.small', jsonb_build_object('n', n), 'succeeded', 1, 1,
                now(), now() - make_interval(secs => n / 2), now()
         FROM generate_series(1, 60) AS n",
    )
    .execute(&mut connection)
    .await
    .expect("small jobs");
    let mut outbox = OutboxServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.admin)),
    );
    // 25: past the first chunk of four; 4: a page that the first chunk fills exactly.
    for (page_size, expected) in [(25, vec![25, 25, 10]), (4, vec![4; 15])] {
        let mut sizes = Vec::new();
        let mut ids = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = outbox
                .list_outbox_jobs(ListOutboxJobsRequest {
                    kind: "test.small".to_owned(),
                    page_size,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("a page")
                .into_inner();
            sizes.push(page.jobs.len());
            ids.extend(page.jobs.into_iter().map(|job| job.id));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(sizes, expected, "pages of {page_size}");
        let listed = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!((listed, ids.len()), (60, 60), "each job once");
    }
}
