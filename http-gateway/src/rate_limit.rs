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
    Some(GovernorLayer::new(Arc::new(governor)).error_handler(reject))
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
