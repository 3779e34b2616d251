//! Jobs are announced once the transaction that queued them has committed, not by a `NOTIFY`
//! inside it (which serialises every such commit). With the outbox's poll an hour away, every
//! path that queues a job, from a request or from another job, must still have it run at once.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use switchbord_api::json::value_from_json;
use switchbord_api::v1::flow_service_client::FlowServiceClient;
use switchbord_api::v1::outbox_service_client::OutboxServiceClient;
use switchbord_api::v1::property_assignment::Source;
use switchbord_api::v1::webhook_service_client::WebhookServiceClient;
use switchbord_api::v1::*;

use crate::helpers::{Answer, Receiver, TestApp, WithKey, count, eventually};

const PHONE: &str = "+4915112345678";

/// Waits until `receiver` got an event of `event_type`.
async fn delivered(receiver: &Receiver, event_type: &str) {
    eventually(&format!("a {event_type} delivery"), async || {
        receiver
            .received()
            .iter()
            .any(|received| received.json()["type"] == event_type)
    })
    .await;
}

/// Sends Emarsys an `order_placed` event for the contact, numbered `order` (so each is new).
async fn emarsys_event(app: &TestApp, order: u32) {
    let reply = app
        .send_anonymous(
            Method::POST,
            "/api/v0/webhooks/incoming/emarsys/custom_external_event",
            &[("content-type", "application/json")],
            json!({"event_name": "order_placed", "phone_number": PHONE, "payload": {"order": order}})
                .to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_path_that_queues_a_job_has_it_run_without_waiting_for_the_poll() {
    let app = TestApp::builder()
        .outbox_poll_interval(Duration::from_secs(3600))
        .spawn()
        .await;
    let receiver = Receiver::start().await;
    let mut webhooks = WebhookServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.admin)),
    );
    webhooks
        .create_endpoint(CreateEndpointRequest {
            url: receiver.url(),
            ..Default::default()
        })
        .await
        .expect("create endpoint");

    // A contact upsert: its event's dispatch job, announced by the request.
    app.upsert_contact(&json!({"phone_number": PHONE})).await;
    delivered(&receiver, "contact.created").await;

    // A journey trigger: its job, started by the request (announced when the worker has no
    // room); the job's event, by the job.
    let reply = app
        .send(
            Method::POST,
            "/compat/journey-trigger/welcome",
            &[("content-type", "application/json")],
            json!({"phone_number": PHONE}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    delivered(&receiver, "journey.triggered").await;

    // An Emarsys event with a rule: the event's job and its own event, announced by the
    // request; the rule's contact change, by the job.
    let mut flows = FlowServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.manager)),
    );
    flows
        .put_event_rule(PutEventRuleRequest {
            rule: Some(EventRule {
                event_name: "order_placed".to_owned(),
                set_properties: vec![PropertyAssignment {
                    property: "segment".to_owned(),
                    source: Some(Source::Value(value_from_json(json!("buyer")))),
                }],
                ..Default::default()
            }),
        })
        .await
        .expect("put rule");
    emarsys_event(&app, 1).await;
    delivered(&receiver, "integration.emarsys.event_received").await;
    delivered(&receiver, "contact.updated").await;

    // And with a listening flow: the flow's trigger, announced by the job.
    flows
        .put_flow(PutFlowRequest {
            flow: Some(Flow {
                id: "reorder".to_owned(),
                org: "acme".to_owned(),
                name: "reorder flow".to_owned(),
                enabled: true,
                event_names: vec!["order_placed".to_owned()],
                ..Default::default()
            }),
        })
        .await
        .expect("put flow");
    emarsys_event(&app, 2).await;
    eventually("the listening flow ran", async || {
        count(
            &app.database,
            "SELECT count(*) AS count FROM journey_runs WHERE flow = 'reorder'",
        )
        .await
            == 1
    })
    .await;

    // A failed delivery retried by an operator: its job, announced by the request.
    let failing = Receiver::start().await;
    failing.answer(Answer {
        status: 500,
        ..Answer::default()
    });
    let endpoint = webhooks
        .create_endpoint(CreateEndpointRequest {
            url: failing.url(),
            event_types: vec!["webhook.test".to_owned()],
            ..Default::default()
        })
        .await
        .expect("create endpoint")
        .into_inner()
        .endpoint
        .expect("endpoint");
    let sent = webhooks
        .send_test_event(SendTestEventRequest {
            id: endpoint.id.clone(),
        })
        .await
        .expect("test send")
        .into_inner();
    assert!(!sent.attempt.expect("attempt").succeeded);
    let delivery = webhooks
        .list_deliveries(ListDeliveriesRequest {
            endpoint_id: endpoint.id,
            ..Default::default()
        })
        .await
        .expect("deliveries")
        .into_inner()
        .deliveries
        .remove(0);
    failing.answer(Answer::default());
    webhooks
        .retry_delivery(RetryDeliveryRequest {
            delivery_id: delivery.id,
        })
        .await
        .expect("retry delivery");
    failing.wait_for(2).await;

    // A dead job retried by an operator.
    let mut connection = app.database.connect().await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "UPDATE outbox_jobs SET status = 'dead' WHERE id = (SELECT id FROM outbox_jobs \
             WHERE kind = 'journey.trigger' ORDER BY created_at LIMIT 1)",
        ),
        &mut connection,
    )
    .await
    .expect("kill the trigger's job");
    let dead = count(
        &app.database,
        "SELECT count(*) AS count FROM outbox_jobs WHERE status = 'dead'",
    )
    .await;
    assert_eq!(dead, 1);
    let mut outbox = OutboxServiceClient::with_interceptor(
        app.channel().await,
        WithKey::new(Some(&app.keys.admin)),
    );
    let job = outbox
        .list_outbox_jobs(ListOutboxJobsRequest {
            status: "dead".to_owned(),
            ..Default::default()
        })
        .await
        .expect("dead jobs")
        .into_inner()
        .jobs
        .remove(0);
    outbox
        .retry_outbox_job(RetryOutboxJobRequest { id: job.id })
        .await
        .expect("retry job");
    eventually("the retried job ran", async || {
        count(
            &app.database,
            "SELECT count(*) AS count FROM outbox_jobs WHERE status = 'dead' OR \
             (kind = 'journey.trigger' AND status <> 'succeeded')",
        )
        .await
            == 0
    })
    .await;
}
