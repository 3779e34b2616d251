//! Closed-loop load: N workers, each sending its next request when the last one answered, for
//! a fixed time; latencies go into an HDR histogram.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Figures {
    pub fn from(histogram: &Histogram<u64>, errors: u64, elapsed: Duration) -> Self {
        let ms = |value: u64| value as f64 / 1000.0;
        Self {
            requests: histogram.len(),
            errors,
            per_second: histogram.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// Runs `operation(worker, iteration)` on `concurrency` workers for `duration`. An operation
/// returns `false` on error.
pub async fn run<F, Fut>(concurrency: usize, duration: Duration, operation: F) -> Figures
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let operation = Arc::new(operation);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let operation = operation.clone();
        let errors = errors.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut iteration = 0;
            while Instant::now() < deadline {
                let sent = Instant::now();
                if !operation(worker, iteration).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let _ = latencies.record(sent.elapsed().as_micros() as u64);
                iteration += 1;
            }
            latencies
        }));
    }
    let mut all = histogram();
    for worker in workers {
        if let Ok(latencies) = worker.await {
            let _ = all.add(latencies);
        }
    }
    Figures::from(&all, errors.load(Ordering::Relaxed), started.elapsed())
}
