//! The per-client-IP limit on the compatibility and legacy paths (tower-governor).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use governor::middleware::NoOpMiddleware;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};

use crate::client_ip::ClientIpKey;
use crate::config::GatewayConfig;

/// Marks a response as a rate-limit rejection, for [`crate::family::render_rejections`].
#[derive(Debug, Clone, Copy)]
pub struct RateLimited {
    pub retry_after: u64,
}

pub type RateLimitLayer = GovernorLayer<ClientIpKey, NoOpMiddleware, Body>;

/// The limiter, or `None` when the limit is 0 (off). Every clone of the layer shares one
/// bucket per client, so the limit spans all the routes it is applied to.
pub fn layer(config: &GatewayConfig) -> Option<RateLimitLayer> {
    let per_minute = config.rate_limit_per_minute;
    if per_minute == 0 {
        return None;
    }
    // A bucket of `per_minute` requests that refills evenly over a minute.
    let refill = Duration::from_millis((60_000 / u64::from(per_minute)).max(1));
    let governor: GovernorConfig<ClientIpKey, NoOpMiddleware> = GovernorConfigBuilder::default()
        .key_extractor(ClientIpKey)
        .period(refill)
        .burst_size(per_minute)
        .finish()?;
    let governor = Arc::new(governor);
    forget_idle_clients(Arc::downgrade(&governor));
    Some(GovernorLayer::new(governor).error_handler(reject))
}

/// How often the buckets of clients that have not been seen for a while are dropped.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// Drops, every [`FORGET_EVERY`] while the limiter lives, the buckets of clients whose bucket
/// has filled up again (they would be limited exactly as a client never seen): without it
/// every address that ever called stays in memory, and a client with many addresses (an IPv6
/// range) could grow the gateway at will. Needs a running Tokio runtime; without one (a
/// router built only to be inspected) nothing is forgotten.
fn forget_idle_clients(governor: std::sync::Weak<GovernorConfig<ClientIpKey, NoOpMiddleware>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut every = tokio::time::interval(FORGET_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(governor) = governor.upgrade() else {
                return;
            };
            forget_idle(&governor);
        }
    });
}

fn forget_idle(governor: &GovernorConfig<ClientIpKey, NoOpMiddleware>) {
    governor.limiter().retain_recent();
    governor.limiter().shrink_to_fit();
}

fn reject(error: GovernorError) -> Response<Body> {
    let retry_after = match error {
        // governor rounds down; "retry in 0 s" would invite an immediate retry.
        GovernorError::TooManyRequests { wait_time, .. } => wait_time.max(1),
        _ => 1,
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response
        .extensions_mut()
        .insert(RateLimited { retry_after });
    response
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn the_buckets_of_clients_that_went_quiet_are_dropped() {
        // 60,000 a minute: a bucket fills again a millisecond after its request.
        let governor: GovernorConfig<ClientIpKey, NoOpMiddleware> =
            GovernorConfigBuilder::default()
                .key_extractor(ClientIpKey)
                .period(Duration::from_millis(1))
                .burst_size(1)
                .finish()
                .expect("config");
        let client: IpAddr = "2001:db8::1".parse().expect("ip");
        assert!(governor.limiter().check_key(&client).is_ok());
        assert_eq!(governor.limiter().len(), 1);
        std::thread::sleep(Duration::from_millis(20));
        forget_idle(&governor);
        assert_eq!(governor.limiter().len(), 0);
    }
}
