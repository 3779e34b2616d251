//! Journey triggers (SPEC §2.2) on all three paths: queueing, deduplication, validation, and
//! the `journey.trigger` job's run and event.

use std::time::Duration;

use diesel::sql_query;
use diesel::sql_types::{BigInt, Jsonb, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use reqwest::Method;
use serde_json::{Value as Json, json};

use crate::helpers::{
    HttpReply, Receiver, TestApp, count, eventually, until_dispatched, until_waiting_for_locks,
};

const PHONE: &str = "+4915112345678";

async fn trigger(app: &TestApp, path: &str, body: &Json, headers: &[(&str, &str)]) -> HttpReply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    app.send(Method::POST, path, &all, body.to_string()).await
}

fn queued(reply: &HttpReply) -> (String, String) {
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["status"], "queued", "{}", reply.text);
    ids(reply)
}

fn ids(reply: &HttpReply) -> (String, String) {
    let id = |field: &str| reply.body[field].as_str().expect(field).to_owned();
    (id("triggerEventId"), id("outboxJobId"))
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

async fn trigger_jobs(app: &TestApp) -> i64 {
    let mut connection = app.database.connect().await;
    sql_query("SELECT count(*) AS count FROM outbox_jobs WHERE kind = 'journey.trigger'")
        .get_result::<Count>(&mut connection)
        .await
        .expect("count")
        .count
}

#[tokio::test(flavor = "multi_thread")]
async fn all_three_paths_queue_with_and_without_trailing_slash() {
    let app = TestApp::spawn().await;
    let body = json!({"phone_number": PHONE});
    let paths = [
        "/compat/journey-trigger/welcome/spring",
        "/compat/journey-trigger/welcome/summer/",
        "/webhooks/v0/rest-trigger/organization/acme/flow/welcome/trigger/",
        "/webhooks/v0/rest-trigger/organization/acme/flow/onboarding/trigger",
        "/webhooks/v0/rest-trigger/organization/acme/flow/welcome/trigger/t-1/",
        "/webhooks/v0/rest-trigger/organization/acme/flow/welcome/trigger/t-2",
    ];

    for path in paths {
        let reply = trigger(&app, path, &body, &[]).await;
        let (trigger_id, job_id) = queued(&reply);
        assert!(uuid::Uuid::parse_str(&trigger_id).is_ok());
        assert!(uuid::Uuid::parse_str(&job_id).is_ok());
        assert!(reply.body["message"].is_string());
    }
    assert_eq!(trigger_jobs(&app).await, paths.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_trigger_is_a_duplicate_with_the_first_ids() {
    let app = TestApp::spawn().await;
    let path = "/compat/journey-trigger/welcome";
    let body = json!({"phone_number": PHONE, "flow_id": "f-1", "data": {"coupon": "X1"}});

    let first = trigger(&app, path, &body, &[]).await;
    let again = trigger(
        &app,
        path,
        &json!({"phone_number": "+49 151 12345678", "flow_id": "f-1"}),
        &[],
    )
    .await;
    // The same phone with its trunk prefix written after the country code.
    let with_trunk_prefix = trigger(
        &app,
        path,
        &json!({"phone_number": "+49 (0)151 12345678", "flow_id": "f-1"}),
        &[],
    )
    .await;
    let other_phone = trigger(
        &app,
        path,
        &json!({"phone_number": "+4915199999999", "flow_id": "f-1"}),
        &[],
    )
    .await;
    let other_flow = trigger(
        &app,
        path,
        &json!({"phone_number": PHONE, "flow_id": "f-2"}),
        &[],
    )
    .await;
    let other_route = trigger(&app, "/compat/journey-trigger/goodbye", &body, &[]).await;

    let first_ids = queued(&first);
    assert_eq!(again.status, 200);
    assert_eq!(again.body["status"], "duplicate", "{}", again.text);
    assert_eq!(ids(&again), first_ids, "the first trigger's ids");
    assert_eq!(
        with_trunk_prefix.body["status"], "duplicate",
        "{}",
        with_trunk_prefix.text
    );
    assert_eq!(ids(&with_trunk_prefix), first_ids);
    queued(&other_phone);
    queued(&other_flow);
    queued(&other_route);
    assert_eq!(trigger_jobs(&app).await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_id_beats_flow_id_and_the_path_trigger_id_beats_the_body() {
    let app = TestApp::spawn().await;
    let path = "/compat/journey-trigger/welcome";

    let first = trigger(
        &app,
        path,
        &json!({"phone_number": PHONE, "trigger_id": "t-1", "flow_id": "a"}),
        &[],
    )
    .await;
    let same_trigger = trigger(
        &app,
        path,
        &json!({"phone_number": PHONE, "trigger_id": "t-1", "flow_id": "b"}),
        &[],
    )
    .await;
    let same_flow = trigger(
        &app,
        path,
        &json!({"phone_number": PHONE, "trigger_id": "t-2", "flow_id": "a"}),
        &[],
    )
    .await;
    let rest = "/webhooks/v0/rest-trigger/organization/acme/flow/welcome/trigger/t-9/";
    let by_path = trigger(
        &app,
        rest,
        &json!({"phone_number": PHONE, "trigger_id": "x"}),
        &[],
    )
    .await;
    let by_path_again = trigger(
        &app,
        rest,
        &json!({"phone_number": PHONE, "trigger_id": "y"}),
        &[],
    )
    .await;

    queued(&first);
    assert_eq!(
        same_trigger.body["status"], "duplicate",
        "{}",
        same_trigger.text
    );
    queued(&same_flow);
    queued(&by_path);
    assert_eq!(
        by_path_again.body["status"], "duplicate",
        "{}",
        by_path_again.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_replaces_the_computed_key() {
    let app = TestApp::spawn().await;
    let path = "/webhooks/v0/rest-trigger/organization/acme/flow/welcome/trigger/";

    let first = trigger(
        &app,
        path,
        &json!({"phone_number": PHONE}),
        &[("Idempotency-Key", "k-1")],
    )
    .await;
    let retried = trigger(
        &app,
        path,
        &json!({"phone_number": "+4915199999999"}),
        &[("Idempotency-Key", "k-1")],
    )
    .await;
    let new_key = trigger(
        &app,
        path,
        &json!({"phone_number": PHONE}),
        &[("Idempotency-Key", "k-2")],
    )
    .await;

    let first_ids = queued(&first);
    assert_eq!(retried.body["status"], "duplicate", "{}", retried.text);
    assert_eq!(ids(&retried), first_ids);
    queued(&new_key);

    // A key that is not ASCII is refused, not ignored (which would deduplicate by the body).
    let unreadable = trigger(
        &app,
        path,
        &json!({"phone_number": PHONE}),
        &[("Idempotency-Key", "clé-1")],
    )
    .await;
    assert_eq!(unreadable.status, 400, "{}", unreadable.text);
    assert_eq!(
        unreadable.body["field"], "Idempotency-Key",
        "{}",
        unreadable.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_identical_triggers_queue_exactly_one_job() {
    let app = TestApp::spawn().await;
    let body = json!({"phone_number": PHONE, "trigger_id": "race"});

    let replies = futures::future::join_all(
        (0..50).map(|_| trigger(&app, "/compat/journey-trigger/race", &body, &[])),
    )
    .await;

    let mut queued_count = 0;
    let mut all_ids = Vec::new();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text);
        if reply.body["status"] == "queued" {
            queued_count += 1;
        }
        all_ids.push(ids(reply));
    }
    all_ids.dedup();
    assert_eq!(queued_count, 1);
    assert_eq!(
        all_ids.len(),
        1,
        "every duplicate answers with the same ids"
    );
    assert_eq!(trigger_jobs(&app).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_triggers_for_one_new_number_create_one_contact_and_all_queue() {
    let app = TestApp::spawn().await;

    let bodies: Vec<Json> = (0..20)
        .map(|n| json!({"phone_number": PHONE, "trigger_id": format!("t-{n}")}))
        .collect();
    let replies = futures::future::join_all(
        bodies
            .iter()
            .map(|body| trigger(&app, "/compat/journey-trigger/race", body, &[])),
    )
    .await;

    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.body["status"], "queued", "{}", reply.text);
    }
    assert_eq!(trigger_jobs(&app).await, 20);
    for (rows, sql) in [
        ("contacts", "SELECT count(*) AS count FROM contacts"),
        (
            "contact.created events",
            "SELECT count(*) AS count FROM events WHERE type = 'contact.created'",
        ),
        (
            "contact.create audit entries",
            "SELECT count(*) AS count FROM audit_entries WHERE action = 'contact.create'",
        ),
    ] {
        assert_eq!(count(&app.database, sql).await, 1, "{rows}");
    }
}

/// A trigger that finds no contact and then loses the race to create it (another transaction
/// inserted the number and commits while the trigger's insert waits for it) runs again and
/// enrols the contact that won.
#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_that_loses_the_race_to_create_its_contact_enrols_the_winner() {
    let app = TestApp::spawn().await;
    let winner = "0190a000-0000-7000-8000-0000000000c1";
    let mut creator = app.database.connect().await;
    creator
        .batch_execute(&format!(
            "BEGIN; INSERT INTO contacts (id, phone_number) VALUES ('{winner}', '{PHONE}')"
        ))
        .await
        .expect("create the contact");
    let commit_once_waited_for = async {
        until_waiting_for_locks(&app.database, 1).await;
        creator.batch_execute("COMMIT").await.expect("commit");
    };
    let body = json!({"phone_number": PHONE});
    let (reply, ()) = tokio::join!(
        trigger(&app, "/compat/journey-trigger/race", &body, &[]),
        commit_once_waited_for
    );

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["status"], "queued", "{}", reply.text);
    #[derive(diesel::QueryableByName)]
    struct Enrolled {
        #[diesel(sql_type = Text)]
        contact_id: String,
    }
    let mut connection = app.database.connect().await;
    let enrolled: Vec<Enrolled> = sql_query(
        "SELECT payload->>'contact_id' AS contact_id FROM outbox_jobs WHERE kind = 'journey.trigger'",
    )
    .load(&mut connection)
    .await
    .expect("trigger jobs");
    let enrolled: Vec<&str> = enrolled.iter().map(|job| job.contact_id.as_str()).collect();
    assert_eq!(enrolled, [winner]);
    let created = count(
        &app.database,
        "SELECT count(*) AS count FROM audit_entries WHERE action = 'contact.create'",
    )
    .await;
    assert_eq!(created, 0, "the losing attempt's rows were rolled back");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_triggers_are_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        ("/compat/journey-trigger/welcome", json!({}), "phone_number"),
        (
            "/compat/journey-trigger/welcome",
            json!({"phone_number": "call me"}),
            "phone_number",
        ),
        (
            "/compat/journey-trigger/welcome",
            json!({"phone_number": 4915112345678_u64}),
            "phone_number",
        ),
        (
            "/compat/journey-trigger/welcome",
            json!({"phone_number": PHONE, "data": [1]}),
            "data",
        ),
        (
            "/compat/journey-trigger/welcome",
            json!({"phone_number": PHONE, "data": "x"}),
            "data",
        ),
        (
            "/compat/journey-trigger/welcome",
            json!({"phone_number": PHONE, "flow_id": {"a": 1}}),
            "flow_id",
        ),
        (
            "/webhooks/v0/rest-trigger/organization/acme/flow/welcome/trigger/",
            json!({"phone_number": ""}),
            "phone_number",
        ),
    ];
    for (path, body, field) in cases {
        let reply = trigger(&app, path, &body, &[]).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        let named = if path.starts_with("/compat") {
            &reply.body["error"]["field"]
        } else {
            &reply.body["field"]
        };
        assert_eq!(named, field, "{body}: {}", reply.text);
    }
    // The key is sent as a header, and named as one.
    let long_key = "k".repeat(256);
    let reply = trigger(
        &app,
        "/compat/journey-trigger/welcome",
        &json!({"phone_number": PHONE}),
        &[("idempotency-key", &long_key)],
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(
        reply.body["error"]["field"], "Idempotency-Key",
        "{}",
        reply.text
    );
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.starts_with("Idempotency-Key: ")),
        "{}",
        reply.text
    );
    assert_eq!(trigger_jobs(&app).await, 0);
}

#[derive(diesel::QueryableByName, Debug)]
struct EventRow {
    #[diesel(sql_type = Text)]
    r#type: String,
    #[diesel(sql_type = Jsonb)]
    data: Json,
}

async fn events(app: &TestApp) -> Vec<EventRow> {
    let mut connection = app.database.connect().await;
    sql_query("SELECT type, data FROM events ORDER BY id")
        .load(&mut connection)
        .await
        .expect("events")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_job_records_a_run_and_emits_journey_triggered_with_the_data() {
    let app = TestApp::spawn().await;
    let reply = trigger(
        &app,
        "/webhooks/v0/rest-trigger/organization/acme/flow/welcome/trigger/t-7",
        &json!({"phone_number": PHONE, "flow_id": "f-1", "data": {"coupon": "X1"}}),
        &[],
    )
    .await;
    let (trigger_id, _) = queued(&reply);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let triggered = loop {
        let found = events(&app)
            .await
            .into_iter()
            .find(|event| event.r#type == "journey.triggered");
        if let Some(event) = found {
            break event;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "journey.triggered was not emitted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all = events(&app).await;

    let data = &triggered.data;
    assert_eq!(data["trigger_event_id"], trigger_id.as_str());
    assert_eq!(data["phone_number"], PHONE);
    assert_eq!(data["organization"], "acme");
    assert_eq!(data["flow"], "welcome");
    assert_eq!(data["trigger_id"], "t-7");
    assert_eq!(data["flow_id"], "f-1");
    assert_eq!(data["data"], json!({"coupon": "X1"}));
    assert!(data["journey_run_id"].is_string());
    let created = all
        .iter()
        .find(|event| event.r#type == "contact.created")
        .expect("contact.created");
    assert_eq!(created.data["contact"]["phone_number"], PHONE);
    assert_eq!(
        all.iter()
            .filter(|event| event.r#type == "journey.triggered")
            .count(),
        1
    );
    let mut connection = app.database.connect().await;
    let runs = sql_query("SELECT count(*) AS count FROM journey_runs")
        .get_result::<Count>(&mut connection)
        .await
        .expect("runs");
    assert_eq!(runs.count, 1);
}

#[derive(diesel::QueryableByName, Debug)]
struct AuditAction {
    #[diesel(sql_type = Text)]
    action: String,
    #[diesel(sql_type = Text)]
    target_type: String,
    #[diesel(sql_type = diesel::sql_types::Array<Text>)]
    changed_fields: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_for_a_new_number_audits_the_contact_it_creates_with_its_event() {
    let app = TestApp::spawn().await;
    let reply = trigger(
        &app,
        "/compat/journey-trigger/welcome",
        &json!({"phone_number": PHONE}),
        &[],
    )
    .await;
    queued(&reply);

    let mut connection = app.database.connect().await;
    let audit: Vec<AuditAction> = sql_query(
        "SELECT action, target_type, changed_fields FROM audit_entries
          WHERE action <> 'api_key.create' ORDER BY occurred_at, action",
    )
    .load(&mut connection)
    .await
    .expect("audit entries");
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|entry| (entry.action.as_str(), entry.target_type.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("contact.create", "contact"),
            ("journey.trigger", "journey_trigger")
        ],
        "{audit:?}"
    );
    assert_eq!(
        audit[0].changed_fields,
        ["phone_number", "subscriber_status"]
    );
    let created: Vec<EventRow> = events(&app)
        .await
        .into_iter()
        .filter(|event| event.r#type == "contact.created")
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0].data["contact"]["phone_number"], PHONE);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_job_run_again_records_no_second_run_or_event() {
    let app = TestApp::spawn().await;
    let reply = trigger(
        &app,
        "/compat/journey-trigger/welcome",
        &json!({"phone_number": PHONE}),
        &[],
    )
    .await;
    let (_, job_id) = queued(&reply);
    let succeeded = format!(
        "SELECT count(*) AS count FROM outbox_jobs WHERE id = '{job_id}' AND status = 'succeeded' AND attempts = "
    );
    eventually("the trigger's job succeeds", async || {
        count(&app.database, &format!("{succeeded}1")).await == 1
    })
    .await;

    // As if its worker had died after the commit and before recording the success: the job
    // is claimed and run again.
    let mut connection = app.database.connect().await;
    sql_query(format!(
        "UPDATE outbox_jobs SET status = 'pending', run_after = now() WHERE id = '{job_id}'"
    ))
    .execute(&mut connection)
    .await
    .expect("hand the job back");
    eventually("the job succeeds again", async || {
        count(&app.database, &format!("{succeeded}2")).await == 1
    })
    .await;

    let runs = "SELECT count(*) AS count FROM journey_runs";
    assert_eq!(count(&app.database, runs).await, 1);
    let triggered = "SELECT count(*) AS count FROM events WHERE type = 'journey.triggered'";
    assert_eq!(count(&app.database, triggered).await, 1);
}

/// Inserts sixteen `journey.trigger` jobs due now, labelled `label`; those whose number
/// `is_bad` names a contact that does not exist (a corrupt or hand-made job), whose run
/// breaks the foreign key, and the statement with it.
async fn insert_trigger_jobs(app: &TestApp, contact_id: &str, label: &str, is_bad: &str) {
    insert_many_trigger_jobs(app, contact_id, label, is_bad, 16).await;
}

/// As [`insert_trigger_jobs`], `jobs` of them.
async fn insert_many_trigger_jobs(
    app: &TestApp,
    contact_id: &str,
    label: &str,
    is_bad: &str,
    jobs: usize,
) {
    let mut connection = app.database.connect().await;
    sql_query(format!(
        "INSERT INTO outbox_jobs (id, kind, payload, max_attempts, run_after, created_at, updated_at)
         SELECT gen_random_uuid(), 'journey.trigger',
                jsonb_build_object('trigger_event_id', gen_random_uuid(),
                                   'contact_id', CASE WHEN {is_bad} THEN gen_random_uuid()
                                                      ELSE '{contact_id}'::uuid END,
                                   'phone_number', '{PHONE}', 'legacy_path', '{label}',
                                   'good', NOT ({is_bad})),
                10, now(), now(), now()
         FROM generate_series(1, {jobs}) AS i"
    ))
    .execute(&mut connection)
    .await
    .expect("insert jobs");
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_jobs_running_together_are_recorded_together_and_a_bad_one_fails_alone() {
    let app = TestApp::spawn().await;
    let contact = app.upsert_contact(&json!({"phone_number": PHONE})).await;
    let contact_id = contact["contact"]["id"].as_str().expect("contact id");
    let jobs = |label: &str| {
        format!(
            "SELECT count(*) AS count FROM outbox_jobs
              WHERE kind = 'journey.trigger' AND payload->>'legacy_path' = '{label}'"
        )
    };
    let succeeded_at_once = |label: &str| {
        format!(
            "{} AND (payload->>'good')::boolean AND status = 'succeeded' AND attempts = 1",
            jobs(label)
        )
    };

    insert_trigger_jobs(&app, contact_id, "together", "false").await;
    eventually("every job succeeds at its first attempt", async || {
        count(&app.database, &succeeded_at_once("together")).await == 16
    })
    .await;
    // Runs written by one statement share its time.
    let statements = "SELECT count(DISTINCT created_at) AS count FROM journey_runs
                       WHERE legacy_path = 'together'";
    assert!(
        count(&app.database, statements).await < 16,
        "the runs were written one statement each"
    );

    insert_trigger_jobs(&app, contact_id, "mixed", "i % 4 = 0").await;
    eventually("every good job succeeds at its first attempt", async || {
        count(&app.database, &succeeded_at_once("mixed")).await == 12
    })
    .await;
    let retried = format!(
        "{} AND NOT (payload->>'good')::boolean AND status = 'pending'
           AND last_error LIKE '%foreign key%'",
        jobs("mixed")
    );
    eventually("every bad job is retried with its own error", async || {
        count(&app.database, &retried).await == 4
    })
    .await;

    let runs = "SELECT count(*) AS count FROM journey_runs";
    assert_eq!(count(&app.database, runs).await, 28);
    let triggered = "SELECT count(*) AS count FROM events WHERE type = 'journey.triggered'";
    assert_eq!(count(&app.database, triggered).await, 28);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_job_waiting_for_its_run_to_be_written_leaves_room_to_start_the_next() {
    let app = TestApp::builder()
        .outbox_workers(1)
        .outbox_poll_interval(Duration::from_secs(3600))
        .spawn()
        .await;
    // The first trigger's run cannot be written while this lock is held.
    let mut blocker = app.database.connect().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE journey_runs IN EXCLUSIVE MODE")
        .await
        .expect("lock journey_runs");
    let trigger_once = async |trigger_id: &str| {
        let body = json!({"phone_number": PHONE, "trigger_id": trigger_id});
        let (_, job) = queued(&trigger(&app, "/compat/journey-trigger/waiting", &body, &[]).await);
        job
    };
    let first_job = trigger_once("first").await;
    until_waiting_for_locks(&app.database, 1).await;

    let second_job = trigger_once("second").await;
    let started = format!(
        "SELECT count(*) AS count FROM outbox_jobs
          WHERE id IN ('{first_job}', '{second_job}') AND status = 'running' AND attempts = 1"
    );
    assert_eq!(
        count(&app.database, &started).await,
        2,
        "the second trigger's job was queued, not started"
    );

    blocker.batch_execute("COMMIT").await.expect("unlock");
    eventually("both runs are written", async || {
        count(&app.database, "SELECT count(*) AS count FROM journey_runs").await == 2
    })
    .await;
}

/// While runs cannot be written, a backlog of trigger jobs is not claimed into memory: the
/// recorder's line is bounded, and jobs beyond it run later. Other kinds of jobs keep running.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_trigger_jobs_is_claimed_only_as_far_as_the_recorder_can_take_it() {
    let app = TestApp::spawn().await;
    let contact = app.upsert_contact(&json!({"phone_number": PHONE})).await;
    let contact_id = contact["contact"]["id"].as_str().expect("contact id");
    let receiver = Receiver::start().await;
    let endpoint = app
        .send(
            Method::POST,
            "/api/v1/webhooks/endpoints",
            &[("x-api-key", app.keys.admin.as_str())],
            json!({"url": receiver.url(), "event_types": ["contact.created"]}).to_string(),
        )
        .await;
    assert_eq!(endpoint.status, 200, "{}", endpoint.text);
    let mut blocker = app.database.connect().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE journey_runs IN EXCLUSIVE MODE")
        .await
        .expect("lock journey_runs");
    insert_many_trigger_jobs(&app, contact_id, "backlog", "false", 1000).await;

    let running = "SELECT count(*) AS count FROM outbox_jobs
                    WHERE kind = 'journey.trigger' AND status = 'running'";
    eventually("the workers fill the recorder's line", async || {
        count(&app.database, running).await >= 256
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The line (256), and the worker's 32 slots held by jobs waiting for a place in it.
    let claimed = count(&app.database, running).await;
    assert!(claimed <= 256 + 32, "{claimed} jobs claimed");
    // Meanwhile a new contact's event is dispatched and delivered.
    app.upsert_contact(&json!({"phone_number": "+4915112345679"}))
        .await;
    receiver.wait_for(1).await;

    blocker.batch_execute("COMMIT").await.expect("unlock");
    eventually("every run is written", async || {
        count(&app.database, "SELECT count(*) AS count FROM journey_runs").await == 1000
    })
    .await;
}

/// A request waits for a busy worker only for a job it may have (`docs/outbox.md`): here a
/// trigger holds the only slot while the table of its key is locked, and an upsert whose
/// events nobody listens to (no endpoint, no Twenty) is answered without waiting for it.
#[tokio::test(flavor = "multi_thread")]
async fn an_upsert_nobody_listens_to_does_not_wait_for_a_busy_worker() {
    let app = TestApp::builder()
        .outbox_workers(1)
        .outbox_start_wait(Duration::from_secs(10))
        .spawn()
        .await;
    // Until a dispatch has read that nothing listens, the service assumes something may.
    app.upsert_contact(&json!({"phone_number": "+4915112340001"}))
        .await;
    until_dispatched(&app.database, 1).await;

    let mut blocker = app.database.connect().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE journey_trigger_keys IN EXCLUSIVE MODE")
        .await
        .expect("lock journey_trigger_keys");
    let body = json!({"phone_number": PHONE, "trigger_id": "holds-the-slot"});
    let holding = trigger(&app, "/compat/journey-trigger/holding", &body, &[]);
    let upsert_while_held = async {
        until_waiting_for_locks(&app.database, 1).await;
        let asked = std::time::Instant::now();
        app.upsert_contact(&json!({"phone_number": "+4915112340002"}))
            .await;
        let took = asked.elapsed();
        blocker.batch_execute("COMMIT").await.expect("unlock");
        took
    };
    let (held, took) = tokio::join!(holding, upsert_while_held);
    assert_eq!(held.status, 200, "{}", held.text);
    // Waiting for the slot would take the whole 10 s wait.
    assert!(
        took < Duration::from_secs(3),
        "the upsert waited for the worker: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn contact_writes_emit_created_updated_and_opted_out_once_each() {
    let app = TestApp::spawn().await;

    app.upsert_contact(&json!({"phone_number": PHONE, "person_properties": {"plan": "gold"}}))
        .await;
    app.upsert_contact(&json!({"phone_number": PHONE, "person_properties": {"plan": "gold"}}))
        .await;
    app.upsert_contact(&json!({"phone_number": PHONE, "person_properties": {"plan": "platinum"}}))
        .await;
    app.upsert_contact(&json!({"phone_number": PHONE, "source_type": "opt_out"}))
        .await;
    app.upsert_contact(&json!({"phone_number": PHONE, "source_type": "opt_out"}))
        .await;

    let all = events(&app).await;
    let types: Vec<&str> = all.iter().map(|event| event.r#type.as_str()).collect();
    assert_eq!(
        types,
        [
            "contact.created",
            "contact.updated",
            "contact.updated",
            "contact.opted_out"
        ],
        "a no-op upsert emits nothing"
    );
    assert_eq!(all[1].data["changed_fields"], json!(["properties"]));
    assert_eq!(
        all[1].data["contact"]["properties"],
        json!({"plan": "platinum"})
    );
    assert_eq!(all[3].data["contact"]["subscriber_status"], "blocked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_after_the_deduplication_window_is_queued_again() {
    let window = Duration::from_secs(1);
    let app = TestApp::builder().outbox_retention(window).spawn().await;
    let path = "/compat/journey-trigger/welcome";
    let body = json!({"phone_number": PHONE, "flow_id": "f-1"});

    let first = queued(&trigger(&app, path, &body, &[]).await);
    let within = trigger(&app, path, &body, &[]).await;
    assert_eq!(within.body["status"], "duplicate", "{}", within.text);
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    let after = queued(&trigger(&app, path, &body, &[]).await);
    assert_ne!(after, first, "a new trigger with new ids");
}

/// A trigger that finds its expired key locked waits; when the holder commits a fresh take, the
/// waiting trigger is a duplicate of that one, not of the expired trigger it could still see.
#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_waiting_for_a_key_taken_meanwhile_answers_with_the_new_holder() {
    let window = Duration::from_secs(1);
    let app = TestApp::builder().outbox_retention(window).spawn().await;
    let path = "/compat/journey-trigger/welcome";
    let body = json!({"phone_number": PHONE, "flow_id": "f-1"});
    let expired = queued(&trigger(&app, path, &body, &[]).await);
    tokio::time::sleep(window + Duration::from_millis(200)).await;

    let new_holder = (
        "0190a000-0000-7000-8000-000000000001".to_owned(),
        "0190a000-0000-7000-8000-000000000002".to_owned(),
    );
    let mut holder = app.database.connect().await;
    holder
        .batch_execute(&format!(
            "BEGIN; UPDATE journey_trigger_keys \
             SET trigger_id = '{}', outbox_job_id = '{}', accepted_at = now()",
            new_holder.0, new_holder.1
        ))
        .await
        .expect("take the key");
    let commit_once_waited_for = async {
        until_waiting_for_locks(&app.database, 1).await;
        holder.batch_execute("COMMIT").await.expect("commit");
    };
    let (reply, ()) = tokio::join!(trigger(&app, path, &body, &[]), commit_once_waited_for);

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["status"], "duplicate", "{}", reply.text);
    assert_ne!(ids(&reply), expired);
    assert_eq!(ids(&reply), new_holder);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_path_of_wide_characters_still_deduplicates() {
    let app = TestApp::spawn().await;
    // 1,000 characters of 3 bytes each, varied so that they do not compress: within the path
    // limit, over what an index entry holds.
    let wide: String = (0..1000u32)
        .filter_map(|index| char::from_u32(0x4E00 + (index * 7919) % 20_000))
        .collect();
    let encoded: String = wide.bytes().map(|byte| format!("%{byte:02X}")).collect();
    let path = format!("/compat/journey-trigger/{encoded}");
    let body = json!({"phone_number": PHONE});
    let first = queued(&trigger(&app, &path, &body, &[]).await);
    let again = trigger(&app, &path, &body, &[]).await;
    assert_eq!(again.body["status"], "duplicate", "{}", again.text);
    assert_eq!(ids(&again), first);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_that_creates_a_contact_nobody_listens_to_wakes_no_worker() {
    use futures::StreamExt;

    let app = TestApp::spawn().await;
    let mut listener = app.database.listen("outbox_jobs").await;
    let mut notifications = std::pin::pin!(listener.notifications_stream());

    let new_contact = async |phone: &str, runs: i64| {
        let reply = trigger(
            &app,
            "/compat/journey-trigger/welcome",
            &json!({"phone_number": phone, "trigger_id": phone}),
            &[],
        )
        .await;
        queued(&reply);
        eventually("the run is recorded", async || {
            count(&app.database, "SELECT count(*) FROM journey_runs").await == runs
        })
        .await;
        let sql = format!("SELECT count(*) FROM contacts WHERE phone_number = '{phone}'");
        assert_eq!(
            count(&app.database, &sql).await,
            1,
            "the trigger created its contact"
        );
    };
    // Until the first dispatch has read the webhook endpoints and the Twenty connection, an
    // event may have listeners: the first new contact's event is dispatched, and announced.
    crate::helpers::until_config_listened(&app.database).await;
    new_contact("+4915112345001", 1).await;
    eventually("the first contact's event is dispatched", async || {
        count(
            &app.database,
            "SELECT count(*) FROM outbox_jobs WHERE status <> 'succeeded'",
        )
        .await
            == 0
    })
    .await;
    while tokio::time::timeout(Duration::from_millis(300), notifications.next())
        .await
        .is_ok()
    {}

    let dispatch_jobs = "SELECT count(*) FROM outbox_jobs WHERE kind = 'event.dispatch'";
    let dispatched_before = count(&app.database, dispatch_jobs).await;

    // The next trigger's job starts at once, and its new contact's `contact.created` has no
    // listener, so no dispatch job: nothing was queued, so nothing is announced.
    new_contact("+4915112345002", 2).await;
    let woken = tokio::time::timeout(Duration::from_millis(300), notifications.next()).await;
    assert!(woken.is_err(), "a notification arrived: {woken:?}");
    assert_eq!(
        count(&app.database, dispatch_jobs).await,
        dispatched_before,
        "the second contact's event was dispatched"
    );
}
