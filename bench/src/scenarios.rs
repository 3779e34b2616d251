//! The measured workloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use diesel::sql_query;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rand::Rng;
use serde_json::json;
use switchbord_api::json::struct_from_json;
use switchbord_api::v1::contact_service_client::ContactServiceClient;
use switchbord_api::v1::event_service_client::EventServiceClient;
use switchbord_api::v1::{PublishEventRequest, UpsertContactRequest};
use switchbord_core::access::Caller;
use switchbord_core::contacts::{upsert_on, validate_upsert};
use switchbord_core::events::Audience;
use switchbord_core::request::{RequestContext, RequestId};
use tokio::sync::Mutex;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::load::{self, Figures};
use crate::receiver::Receiver;
use crate::server::{ADMIN_KEY, EMARSYS_SECRET, Server};

/// Contacts that exist before the measured upserts; 70 % of upserts update one of them.
pub const POPULATION: u64 = 2_000;
/// New contacts get numbers from here on, so that they never collide with existing ones.
static NEXT_NEW: AtomicU64 = AtomicU64::new(POPULATION);

fn phone(index: u64) -> String {
    format!("+49151{:08}", index)
}

/// 70 % an existing contact, 30 % a new one.
fn mixed_phone() -> String {
    let mut rng = rand::rng();
    if rng.random_bool(0.7) {
        phone(rng.random_range(0..POPULATION))
    } else {
        phone(NEXT_NEW.fetch_add(1, Ordering::Relaxed))
    }
}

fn upsert_request(phone: String, iteration: u64) -> UpsertContactRequest {
    let properties = json!({"plan": format!("p{}", iteration % 7), "visits": iteration});
    UpsertContactRequest {
        phone_number: phone,
        person_properties: properties.as_object().cloned().map(struct_from_json),
        ..Default::default()
    }
}

/// Connections the ceiling may use: the server's default pool size. On 2 cores PostgreSQL does
/// less with 32 or 128 busy connections than with 16, so a ceiling with one connection per client
/// would measure the database's contention, not its best.
const CEILING_CONNECTIONS: usize = 16;

/// The core's own upsert (same statements, same transaction: contact, events, audit entry, and
/// no dispatch job, since nobody listens to contact events during these scenarios, as on the
/// server) straight on PostgreSQL by `concurrency` workers sharing at most
/// [`CEILING_CONNECTIONS`] connections, as the server's requests share its pool: the ceiling.
pub async fn ceiling(
    database_url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let connection_count = concurrency.clamp(1, CEILING_CONNECTIONS);
    let mut connections = Vec::with_capacity(connection_count);
    for _ in 0..connection_count {
        connections.push(Arc::new(Mutex::new(
            AsyncPgConnection::establish(database_url).await?,
        )));
    }
    let connections = Arc::new(connections);
    Ok(load::run(concurrency, duration, move |worker, iteration| {
        let connection = connections[worker % connection_count].clone();
        async move {
            let Ok(upsert) = validate_upsert(upsert_request(mixed_phone(), iteration), None) else {
                return false;
            };
            let context = RequestContext {
                request_id: RequestId(uuid::Uuid::new_v4()),
                caller: Caller::system("bench"),
            };
            let mut connection = connection.lock().await;
            upsert_on(&mut connection, &context, &Audience::default(), &upsert)
                .await
                .is_ok()
        }
    })
    .await)
}

/// Creates the population through the ceiling path.
pub async fn seed(database_url: &str) -> anyhow::Result<()> {
    let mut connection = AsyncPgConnection::establish(database_url).await?;
    let context = RequestContext {
        request_id: RequestId(uuid::Uuid::new_v4()),
        caller: Caller::system("bench seed"),
    };
    for index in 0..POPULATION {
        let upsert = validate_upsert(upsert_request(phone(index), 0), None)
            .map_err(|_| anyhow::anyhow!("seed"))?;
        upsert_on(&mut connection, &context, &Audience::default(), &upsert).await?;
    }
    Ok(())
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", MetadataValue::from_static(ADMIN_KEY));
    request
}

pub async fn grpc_upsert(
    server: &Server,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let channel = Channel::from_shared(server.grpc.clone())?.connect().await?;
        clients.push(ContactServiceClient::new(channel));
    }
    let clients = Arc::new(clients);
    Ok(load::run(concurrency, duration, move |worker, iteration| {
        let mut client = clients[worker].clone();
        async move {
            client
                .upsert_contact(authorized(upsert_request(mixed_phone(), iteration)))
                .await
                .is_ok()
        }
    })
    .await)
}

fn http_clients(concurrency: usize) -> anyhow::Result<Arc<Vec<reqwest::Client>>> {
    let clients = (0..concurrency)
        .map(|_| {
            reqwest::Client::builder()
                .http1_only()
                .pool_max_idle_per_host(1)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(clients))
}

async fn post(client: &reqwest::Client, url: String, body: serde_json::Value) -> bool {
    client
        .post(url)
        .header("x-api-key", ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
}

pub async fn rest_upsert(
    server: &Server,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let clients = http_clients(concurrency)?;
    let url = format!("{}/compat/contact", server.http);
    Ok(load::run(concurrency, duration, move |worker, iteration| {
        let client = clients[worker].clone();
        let url = url.clone();
        async move {
            let body = json!({"phone_number": mixed_phone(), "person_properties": {"plan": format!("p{}", iteration % 7), "visits": iteration}});
            post(&client, url, body).await
        }
    })
    .await)
}

/// Unique triggers (`duplicates` false) or the same trigger again and again (true).
pub async fn triggers(
    server: &Server,
    concurrency: usize,
    duration: Duration,
    duplicates: bool,
) -> anyhow::Result<Figures> {
    let clients = http_clients(concurrency)?;
    let url = format!("{}/compat/journey-trigger/bench/welcome", server.http);
    let unique = Arc::new(AtomicU64::new(0));
    Ok(load::run(concurrency, duration, move |worker, _| {
        let client = clients[worker].clone();
        let url = url.clone();
        let trigger = if duplicates { 0 } else { unique.fetch_add(1, Ordering::Relaxed) + 1 };
        async move {
            let body = json!({"phone_number": mixed_phone_for_trigger(duplicates), "trigger_id": format!("t-{trigger}"), "data": {"coupon": "X1"}});
            post(&client, url, body).await
        }
    })
    .await)
}

fn mixed_phone_for_trigger(duplicates: bool) -> String {
    if duplicates { phone(0) } else { mixed_phone() }
}

/// Configures a listening flow and a rule, then sends Emarsys events.
pub async fn emarsys(
    server: &Server,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let admin = reqwest::Client::new();
    for (path, body) in [
        (
            "/api/v1/admin/flows/bench-flow",
            json!({"org": "bench", "name": "Bench flow", "event_names": ["order_placed"]}),
        ),
        (
            "/api/v1/admin/event-rules/order_placed",
            json!({"add_tags": ["customer"], "set_properties": [{"property": "last_total", "from_payload": "/total"}]}),
        ),
    ] {
        let response = admin
            .put(format!("{}{path}", server.http))
            .header("x-api-key", ADMIN_KEY)
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("configuring {path} failed: {}", response.status());
        }
    }
    let clients = http_clients(concurrency)?;
    let url = format!(
        "{}/api/v0/webhooks/incoming/emarsys/custom_external_event?secret={EMARSYS_SECRET}",
        server.http
    );
    Ok(load::run(concurrency, duration, move |worker, iteration| {
        let client = clients[worker].clone();
        let url = url.clone();
        async move {
            let body = json!({"event_name": "order_placed", "event_id": uuid::Uuid::new_v4(), "phone": mixed_phone(), "payload": {"total": iteration}});
            client.post(url).json(&body).send().await.is_ok_and(|response| response.status().is_success())
        }
    })
    .await)
}

/// Outbound delivery figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outbound {
    pub endpoints: usize,
    pub publishers: usize,
    pub events: u64,
    pub hanging_endpoint: bool,
    pub accepted_per_second: f64,
    pub deliveries_per_second: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub publish_errors: u64,
    /// `webhook.deliver` job runs that ended deferred (busy or parked endpoints, rate limits):
    /// many in a run without a hanging endpoint mean a healthy one was parked.
    pub deliver_runs_deferred: u64,
    /// Attempts that failed and were scheduled again (the hanging endpoint's timeouts).
    pub attempts_retried: u64,
}

/// The server's delivery counters behind [`Outbound::deliver_runs_deferred`] and
/// [`Outbound::attempts_retried`], at one moment.
struct DeliveryCounters {
    deferred: f64,
    retried: f64,
}

impl DeliveryCounters {
    async fn read(server: &Server) -> anyhow::Result<Self> {
        let metrics = server.metrics().await?;
        Ok(Self {
            deferred: metrics.counter(
                "switchbord_outbox_job_runs_total",
                &["kind=\"webhook.deliver\"", "outcome=\"deferred\""],
            ),
            retried: metrics.counter(
                "switchbord_webhook_deliveries_total",
                &["outcome=\"retrying\""],
            ),
        })
    }
}

/// Waits until no outbox job is pending or running (the API scenarios leave one dispatch job
/// per contact event behind), so that the outbound figures measure only their own events.
/// Returns how long draining took.
pub async fn drain_outbox(server: &Server) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let client = reqwest::Client::new();
    loop {
        let stats = admin_get(&client, server, "/api/v1/admin/outbox/stats").await?;
        let busy: i64 = stats["counts"]
            .as_array()
            .map(|counts| {
                counts
                    .iter()
                    .filter(|count| count["status"] == "pending" || count["status"] == "running")
                    .filter_map(|count| count["count"].as_i64())
                    .sum()
            })
            .unwrap_or(0);
        if busy == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the outbox did not drain in 10 minutes ({busy} jobs left)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Puts the database in the same state before each outbound run: the dead rows the last run's
/// deleted hanging endpoint left (its deliveries and attempts go with it) are vacuumed, the
/// statistics follow the delivery log's growth, and the pages it dirtied are written out. Left
/// to autovacuum and the checkpointer, that work landed in whichever run came next, and moved
/// its delivery rate by as much as the hanging endpoint the runs compare. A caller's
/// `DATABASE_URL` without the right to checkpoint only vacuums.
pub async fn settle(database_url: &str) -> anyhow::Result<()> {
    // In scope here only: its `load` would shadow the atomics' below.
    use diesel_async::RunQueryDsl;
    let mut connection = AsyncPgConnection::establish(database_url).await?;
    sql_query("VACUUM (ANALYZE)")
        .execute(&mut connection)
        .await?;
    if let Err(error) = sql_query("CHECKPOINT").execute(&mut connection).await {
        eprintln!("no checkpoint before the outbound run: {error}");
    }
    Ok(())
}

async fn create_endpoint(server: &Server, url: &str) -> anyhow::Result<String> {
    let response: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/v1/webhooks/endpoints", server.http))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({"url": url, "event_types": ["message.delivered"]}))
        .send()
        .await?
        .json()
        .await?;
    response["endpoint"]["id"]
        .as_str()
        .map(str::to_owned)
        .context("endpoint id")
}

async fn delete_endpoint(server: &Server, id: &str) {
    let _ = reqwest::Client::new()
        .delete(format!("{}/api/v1/webhooks/endpoints/{id}", server.http))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await;
}

/// The event type a finished run's endpoints are moved to: registered here, never published.
const RETIRED: &str = "bench.retired";

/// Registers [`RETIRED`]; after the first run the server refuses it as known, harmlessly.
async fn register_retired(client: &reqwest::Client, server: &Server) -> anyhow::Result<()> {
    client
        .post(format!("{}/api/v1/webhooks/event-types", server.http))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({"name": RETIRED, "description": "Endpoints of finished benchmark runs."}))
        .send()
        .await?;
    Ok(())
}

/// The JSON the admin API answers a GET of `path` with.
async fn admin_get(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    Ok(client
        .get(format!("{}{path}", server.http))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await?
        .json()
        .await?)
}

/// Unsubscribes a finished run's healthy endpoint from the events later runs publish, keeping
/// its deliveries and attempts as a server keeps its delivery log. Deleted, they took the log
/// with them, and every run began on nearly empty delivery tables: statements planned then
/// (the attempts' foreign key check on their delivery, planned once per connection) read
/// the whole table for each row once the run had filled it, and the success writer, alone,
/// held every delivery up for a few hundred milliseconds at a time.
///
/// An endpoint that does not end the run live (a failed attempt waiting for its retry, to a
/// receiver now gone) is deleted instead, which discards its waiting jobs: kept, they would
/// hold the next run's drain for the retry schedule's minutes.
async fn retire_endpoint(
    client: &reqwest::Client,
    server: &Server,
    id: &str,
) -> anyhow::Result<()> {
    let response = client
        .patch(format!("{}/api/v1/webhooks/endpoints/{id}", server.http))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({"event_types": [RETIRED]}))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("retiring endpoint {id}: {}", response.text().await?);
    }
    let endpoint = admin_get(client, server, &format!("/api/v1/webhooks/endpoints/{id}")).await?;
    if endpoint["health"] != "live" {
        delete_endpoint(server, id).await;
    }
    Ok(())
}

/// Publishes `events` `message.delivered` events from `publishers` clients to `endpoints`
/// endpoints on a receiver that answers 200 at once (plus, optionally, one that hangs), and
/// measures acceptance, delivery rate and publish → receive latency.
pub async fn outbound(
    server: &Server,
    endpoints: usize,
    publishers: usize,
    events: u64,
    hanging: bool,
) -> anyhow::Result<Outbound> {
    let receiver = Receiver::start(false).await?;
    let hanger = Receiver::start(true).await?;
    let mut ids = Vec::new();
    for _ in 0..endpoints {
        ids.push(create_endpoint(server, &receiver.url()).await?);
    }
    let hanging_id = if hanging {
        Some(create_endpoint(server, &hanger.url()).await?)
    } else {
        None
    };
    let mut clients = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        clients.push(EventServiceClient::new(
            Channel::from_shared(server.grpc.clone())?.connect().await?,
        ));
    }
    let before = DeliveryCounters::read(server).await?;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut client in clients {
        let next = next.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < events {
                let sent = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_micros() as u64;
                let data = json!({"sent_at_micros": sent, "message_id": uuid::Uuid::new_v4()});
                let request = PublishEventRequest {
                    r#type: "message.delivered".to_owned(),
                    data: data.as_object().cloned().map(struct_from_json),
                    source: "bench".to_owned(),
                };
                if client.publish_event(authorized(request)).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let published_in = started.elapsed();
    let expected = events * endpoints as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while receiver.count() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_in = receiver
        .last_arrival()
        .map_or(started.elapsed(), |last| last.duration_since(started));
    let latency = receiver.latencies();
    let after = DeliveryCounters::read(server).await?;
    let admin = reqwest::Client::new();
    register_retired(&admin, server).await?;
    for id in &ids {
        retire_endpoint(&admin, server, id).await?;
    }
    // Its deliveries are still waiting for their retries, which would land in later runs.
    if let Some(id) = hanging_id {
        delete_endpoint(server, &id).await;
    }
    Ok(Outbound {
        endpoints,
        publishers,
        events,
        hanging_endpoint: hanging,
        accepted_per_second: events as f64 / published_in.as_secs_f64().max(1e-9),
        deliveries_per_second: receiver.count() as f64 / delivered_in.as_secs_f64().max(1e-9),
        latency_p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency_p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        publish_errors: errors.load(Ordering::Relaxed),
        deliver_runs_deferred: (after.deferred - before.deferred).max(0.0) as u64,
        attempts_retried: (after.retried - before.retried).max(0.0) as u64,
    })
}
