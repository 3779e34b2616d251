//! Building and running the gateway's HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::serve::{ListenerExt, TapIo};
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tower_http::trace::TraceLayer;

use crate::client_ip::assign_client_ip;
use crate::config::GatewayConfig;
use crate::core_client::CoreClient;
use crate::family::{Family, answer_within, render_rejections, render_unrouted};
use crate::rate_limit;
use crate::request_id::assign_request_id;
use crate::routes::{RouteTable, ServedRoute, get, post, put};
use crate::{admin, contacts, emarsys, flows, journeys, openapi, operations, twenty, webhooks};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayStartupError {
    #[error("invalid core URL `{url}`")]
    CoreUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// A gateway bound to its port, ready to serve.
pub struct GatewayServer {
    router: Router,
    listener: TcpListener,
}

impl GatewayServer {
    /// Binds `config.http_addr` (port 0 picks a free port) and prepares a lazy gRPC connection
    /// to the core at `core_url`.
    pub async fn build(
        config: &GatewayConfig,
        core_url: &str,
    ) -> Result<Self, GatewayStartupError> {
        // Installs the metrics recorder before anything is recorded.
        switchbord_telemetry::prometheus();
        let core =
            CoreClient::connect_lazy(core_url).map_err(|source| GatewayStartupError::CoreUrl {
                url: core_url.to_owned(),
                source,
            })?;
        let listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| GatewayStartupError::Bind {
                addr: config.http_addr,
                source,
            })?;
        Ok(Self {
            router: router(config, core),
            listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayStartupError> {
        tracing::info!(addr = %self.local_addr(), "HTTP gateway listening");
        axum::serve(
            with_nodelay(self.listener),
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(GatewayStartupError::Serve)
    }
}

/// The gateway's connections, with `TCP_NODELAY`: a response written in more than one piece
/// must not wait for the client's (possibly delayed) ACK of the first.
fn with_nodelay(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(|connection| {
        if let Err(error) = connection.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
    })
}

/// Every (method, path) the gateway serves, for checking the OpenAPI document against.
pub fn served_routes() -> Vec<ServedRoute> {
    let config = GatewayConfig::with_addr(SocketAddr::from(([127, 0, 0, 1], 0)));
    routes(&config).served()
}

fn router(config: &GatewayConfig, core: CoreClient) -> Router {
    routes(config)
        .into_router()
        // Inside the request metrics, so that a timed-out request is counted with its 504.
        .route_layer(from_fn_with_state(config.request_timeout, answer_within))
        .route_layer(from_fn(operations::track_requests))
        .with_state(core)
        .layer(from_fn_with_state(
            Arc::<[IpNet]>::from(config.trusted_proxies.as_slice()),
            assign_client_ip,
        ))
        .layer(from_fn(render_unrouted))
        .layer(from_fn(assign_request_id))
        .layer(TraceLayer::new_for_http().make_span_with(span_without_query))
}

/// The request's span names its path, never its query: a query may carry a secret (Emarsys'
/// `?secret=`), and spans reach logs and trace collectors.
fn span_without_query<B>(request: &axum::http::Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        version = ?request.version(),
    )
}

/// Every route of the gateway. Legacy paths are served with and without their trailing slash,
/// because a redirect would turn an upstream's POST into a GET. Each route needs an entry in the
/// OpenAPI document (docs/openapi.md), which a test checks.
fn routes(config: &GatewayConfig) -> RouteTable {
    let limiter = rate_limit::layer(config);
    let family_routes = |family: Family, routes: RouteTable| {
        routes.map_router(|routes| {
            let routes = match &limiter {
                Some(limiter) => routes.layer(limiter.clone()),
                None => routes,
            };
            routes.layer(from_fn_with_state(family, render_rejections))
        })
    };

    const REST_TRIGGER: &str = "/webhooks/v0/rest-trigger/organization/{org}/flow/{flow}/trigger";
    let compat = RouteTable::new()
        .route("/compat/contact", post(contacts::upsert_contact_compat))
        .route("/compat/contact/", post(contacts::upsert_contact_compat))
        .route(
            "/compat/journey-trigger/{*legacy_path}",
            post(journeys::trigger_compat),
        );
    let legacy = RouteTable::new()
        .route("/api/v1beta/contact/", put(contacts::upsert_contact_legacy))
        .route("/api/v1beta/contact", put(contacts::upsert_contact_legacy))
        .route(REST_TRIGGER, post(journeys::trigger_rest))
        .route(&format!("{REST_TRIGGER}/"), post(journeys::trigger_rest))
        .route(
            &format!("{REST_TRIGGER}/{{trigger_id}}"),
            post(journeys::trigger_rest_with_id),
        )
        .route(
            &format!("{REST_TRIGGER}/{{trigger_id}}/"),
            post(journeys::trigger_rest_with_id),
        );

    let admin = RouteTable::new()
        .route("/api/v1/admin/outbox/jobs", get(admin::list_jobs))
        .route("/api/v1/admin/outbox/jobs/{id}", get(admin::get_job))
        .route(
            "/api/v1/admin/outbox/jobs/{id}/retry",
            post(admin::retry_job),
        )
        .route("/api/v1/admin/outbox/stats", get(admin::stats))
        .route("/api/v1/admin/flows", get(flows::list_flows))
        .route(
            "/api/v1/admin/flows/{id}",
            get(flows::get_flow)
                .put(flows::put_flow)
                .delete(flows::delete_flow),
        )
        .route("/api/v1/admin/event-rules", get(flows::list_rules))
        .route(
            "/api/v1/admin/event-rules/{event_name}",
            get(flows::get_rule)
                .put(flows::put_rule)
                .delete(flows::delete_rule),
        );

    let webhook_routes = RouteTable::new()
        .route(
            "/api/v1/webhooks/endpoints",
            get(webhooks::list_endpoints).post(webhooks::create_endpoint),
        )
        .route(
            "/api/v1/webhooks/endpoints/{id}",
            get(webhooks::get_endpoint)
                .patch(webhooks::update_endpoint)
                .delete(webhooks::delete_endpoint),
        )
        .route(
            "/api/v1/webhooks/endpoints/{id}/enable",
            post(webhooks::enable_endpoint),
        )
        .route(
            "/api/v1/webhooks/endpoints/{id}/disable",
            post(webhooks::disable_endpoint),
        )
        .route(
            "/api/v1/webhooks/endpoints/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route(
            "/api/v1/webhooks/endpoints/{id}/secret",
            get(webhooks::get_secret),
        )
        .route(
            "/api/v1/webhooks/endpoints/{id}/test",
            post(webhooks::send_test),
        )
        .route(
            "/api/v1/webhooks/endpoints/{id}/recover",
            post(webhooks::recover),
        )
        .route(
            "/api/v1/webhooks/event-types",
            get(webhooks::list_event_types).post(webhooks::register_event_type),
        )
        .route(
            "/api/v1/webhooks/deliveries",
            get(webhooks::list_deliveries),
        )
        .route(
            "/api/v1/webhooks/deliveries/{id}/attempts",
            get(webhooks::list_attempts),
        )
        .route(
            "/api/v1/webhooks/deliveries/{id}/retry",
            post(webhooks::retry_delivery),
        );

    const TWENTY: &str = "/api/v1/integrations/twenty";
    let twenty_routes = RouteTable::new()
        .route(
            &format!("{TWENTY}/connection"),
            get(twenty::get_connection)
                .put(twenty::set_connection)
                .delete(twenty::delete_connection),
        )
        .route(
            &format!("{TWENTY}/connection/test"),
            post(twenty::test_connection),
        )
        .route(
            &format!("{TWENTY}/mapping"),
            get(twenty::get_mapping).patch(twenty::update_mapping),
        )
        .route(&format!("{TWENTY}/sync/health"), get(twenty::sync_health))
        .route(&format!("{TWENTY}/sync/failed"), get(twenty::failed_syncs))
        .route(
            &format!("{TWENTY}/sync/contacts/{{contact_id}}"),
            get(twenty::contact_sync),
        )
        .route(&format!("{TWENTY}/sync/retry"), post(twenty::retry_syncs))
        .route(&format!("{TWENTY}/backfill"), post(twenty::start_backfill));

    const EMARSYS: &str = "/api/v0/webhooks/incoming/emarsys/custom_external_event";
    const TWENTY_WEBHOOK: &str = "/api/v0/webhooks/incoming/twenty";
    let integrations = RouteTable::new()
        .route(EMARSYS, post(emarsys::ingest))
        .route(&format!("{EMARSYS}/"), post(emarsys::ingest))
        .route(TWENTY_WEBHOOK, post(twenty::incoming))
        .route(&format!("{TWENTY_WEBHOOK}/"), post(twenty::incoming));

    RouteTable::new()
        .merge(admin)
        .merge(webhook_routes)
        .merge(twenty_routes)
        .merge(integrations)
        .merge(family_routes(Family::Compat, compat))
        .merge(family_routes(Family::Legacy, legacy))
        .merge(operational_routes())
}

/// Routes for operators and tooling rather than API clients: no family, no rate limit, and no
/// API key.
fn operational_routes() -> RouteTable {
    RouteTable::new()
        .route("/healthz", get(operations::healthz))
        .route("/readyz", get(operations::readyz))
        .route("/metrics", get(operations::metrics))
        .route("/openapi.json", get(openapi::get_openapi))
        .route("/docs", get(openapi::docs_redirect))
        .route("/docs/", get(openapi::docs_index))
        .route("/docs/{*asset}", get(openapi::docs_asset))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::serve::Listener;
    use tokio::net::{TcpListener, TcpStream};

    use super::{span_without_query, with_nodelay};

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let mut listener = with_nodelay(listener);
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().expect("TCP_NODELAY readable"));
    }

    /// Everything the subscriber writes, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("capture lock")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_request_span_logs_the_path_but_not_the_query() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        let request = axum::http::Request::post(
            "/api/v0/webhooks/incoming/emarsys/custom_external_event?secret=hunter2",
        )
        .body(())
        .expect("request");
        tracing::subscriber::with_default(subscriber, || {
            let span = span_without_query(&request);
            span.in_scope(|| tracing::debug!("inside"));
        });
        let logged =
            String::from_utf8(captured.0.lock().expect("capture lock").clone()).expect("UTF-8 log");
        assert!(logged.contains("custom_external_event"), "{logged}");
        assert!(!logged.contains("hunter2"), "{logged}");
    }
}
