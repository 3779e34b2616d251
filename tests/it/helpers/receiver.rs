//! A webhook receiver: a real HTTP server on loopback that records what it gets and answers as
//! told (status, delay, Retry-After, redirect, hang, held until the test lets it answer).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::{Notify, Semaphore};

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub delay: Duration,
    pub retry_after: Option<u64>,
    pub location: Option<String>,
    pub body: String,
    /// Answers the request's headers as a JSON object instead of `body`, as httpbin does.
    pub echo_headers: bool,
    /// Each request waits for a permit of this before it is answered.
    pub held: Option<Arc<Semaphore>>,
}

impl Default for Answer {
    fn default() -> Self {
        Self {
            status: 200,
            delay: Duration::ZERO,
            retry_after: None,
            location: None,
            body: "ok".to_owned(),
            echo_headers: false,
            held: None,
        }
    }
}

struct Shared {
    received: Mutex<Vec<Received>>,
    answer: Mutex<Answer>,
    arrived: Notify,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut answer = shared.answer.lock().expect("answer lock").clone();
    if answer.echo_headers {
        let echoed: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.to_string(), value.into())
            })
            .collect();
        answer.body = serde_json::json!({ "headers": echoed }).to_string();
    }
    shared
        .received
        .lock()
        .expect("received lock")
        .push(Received { headers, body });
    shared.arrived.notify_waiters();
    if let Some(held) = &answer.held {
        let _ = held.acquire().await.map(|permit| permit.forget());
    }
    tokio::time::sleep(answer.delay).await;
    let mut response = (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK),
        answer.body,
    )
        .into_response();
    if let Some(seconds) = answer.retry_after {
        response.headers_mut().insert("retry-after", seconds.into());
    }
    if let Some(location) = answer.location
        && let Ok(value) = location.parse()
    {
        response.headers_mut().insert("location", value);
    }
    response
}

impl Receiver {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            answer: Mutex::new(Answer::default()),
            arrived: Notify::new(),
        });
        let app = Router::new().fallback(receive).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn answer(&self, answer: Answer) {
        *self.shared.answer.lock().expect("answer lock") = answer;
    }

    pub fn status(&self, status: u16) {
        self.answer(Answer {
            status,
            ..Answer::default()
        });
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("received lock").clone()
    }

    /// Waits (up to 20 s) until `count` requests have arrived.
    pub async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let arrived = self.shared.arrived.notified();
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {count} requests, got {}",
                received.len()
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), arrived).await;
        }
    }
}
