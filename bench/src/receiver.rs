//! The receiver the outbound scenario delivers to: answers 200 at once (or hangs), counts, and
//! measures publish → receive latency from the `sent_at_micros` the publisher put in the event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use hdrhistogram::Histogram;

struct Shared {
    count: AtomicU64,
    latencies: Mutex<Histogram<u64>>,
    last: Mutex<Option<Instant>>,
    hang: bool,
}

/// Stops serving when dropped, closing its idle connections as a receiver that goes away does.
/// Left serving, every run's receiver kept the server's idle connections to it open (32 per
/// receiver, the server's idle limit per host) for the run's remaining minutes, and the
/// server's peak RSS grew by about a MiB with each run.
pub struct Receiver {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn receive(State(shared): State<Arc<Shared>>, body: Bytes) -> &'static str {
    if shared.hang {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return "late";
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(sent) = event["data"]["sent_at_micros"].as_u64()
        && let Ok(mut latencies) = shared.latencies.lock()
    {
        let _ = latencies.record(now.saturating_sub(sent).max(1));
    }
    shared.count.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut last) = shared.last.lock() {
        *last = Some(Instant::now());
    }
    "ok"
}

impl Receiver {
    pub async fn start(hang: bool) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            count: AtomicU64::new(0),
            latencies: Mutex::new(crate::load::histogram()),
            last: Mutex::new(None),
            hang,
        });
        let app = Router::new().fallback(receive).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            shared,
            _stop: stop,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    pub fn last_arrival(&self) -> Option<Instant> {
        self.shared.last.lock().ok().and_then(|last| *last)
    }

    pub fn latencies(&self) -> Histogram<u64> {
        self.shared
            .latencies
            .lock()
            .map(|latencies| latencies.clone())
            .unwrap_or_else(|_| crate::load::histogram())
    }
}
