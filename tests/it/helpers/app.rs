//! The real core and gateway, started in-process on ephemeral loopback ports.

use std::net::SocketAddr;
use std::sync::{Arc, Once};

use switchbord_core::outbox::Clock;

use ipnet::IpNet;
use reqwest::header::HeaderMap;
use serde_json::Value as Json;
use switchbord_api::v1::access_service_client::AccessServiceClient;
use switchbord_api::v1::contact_service_client::ContactServiceClient;
use switchbord_api::v1::{CreateApiKeyRequest, Role};
use switchbord_core::config::{OnOff, Secret};
use switchbord_core::{CoreConfig, CoreServer};
use switchbord_gateway::{GatewayConfig, GatewayServer};
use tokio::sync::watch;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::database::TestDatabase;

/// A running core + gateway on a database of its own. Dropping it stops both.
pub struct TestApp {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub http: reqwest::Client,
    pub database: TestDatabase,
    pub keys: Keys,
    stop: watch::Sender<bool>,
}

/// One working key per role; `admin` is the bootstrap key.
pub struct Keys {
    pub admin: String,
    pub manager: String,
    pub user: String,
}

impl Keys {
    pub fn for_role(&self, role: Role) -> &str {
        match role {
            Role::Admin => &self.admin,
            Role::Manager => &self.manager,
            _ => &self.user,
        }
    }
}

/// Adds `x-api-key` to every gRPC call (or nothing, for anonymous calls).
#[derive(Clone)]
pub struct WithKey(Option<AsciiMetadataValue>);

impl WithKey {
    pub fn new(key: Option<&str>) -> Self {
        Self(key.map(|key| key.parse().expect("a key is valid metadata")))
    }
}

impl Interceptor for WithKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(key) = &self.0 {
            request.metadata_mut().insert("x-api-key", key.clone());
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, WithKey>;

/// A response, read completely.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Json,
    pub text: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// Settings that differ between tests.
pub struct TestAppBuilder {
    core: CoreConfig,
    gateway: GatewayConfig,
    clock: Option<Arc<dyn Clock>>,
}

/// The pepper every test core uses (tests never share a database, so one value is enough).
pub const TEST_PEPPER: &str = "test-pepper-0123456789abcdef0123456789";

impl TestApp {
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn builder() -> TestAppBuilder {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
        let admin_key = format!("test-admin-{}", uuid::Uuid::new_v4().simple());
        TestAppBuilder {
            core: CoreConfig {
                key_pepper: Some(Secret::new(TEST_PEPPER)),
                bootstrap_admin_key: Some(Secret::new(admin_key)),
                // Receivers in tests listen on plain-http loopback ports.
                webhook_allow_private: true,
                webhook_allow_http: true,
                outbox_poll_interval: std::time::Duration::from_millis(50),
                metrics_sample_interval: std::time::Duration::from_millis(100),
                ..CoreConfig::with_addr(loopback)
            },
            clock: None,
            gateway: GatewayConfig {
                // Most tests send more than the production limit; rate_limit.rs turns it on.
                rate_limit_per_minute: 0,
                ..GatewayConfig::with_addr(loopback)
            },
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// Sends `body` with the given method and headers, authenticated with the user key unless
    /// `headers` carry a credential of their own.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> HttpReply {
        let has_credential = headers.iter().any(|(name, _)| {
            name.eq_ignore_ascii_case("x-api-key") || name.eq_ignore_ascii_case("authorization")
        });
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !has_credential {
            all.push(("x-api-key", &self.keys.user));
        }
        self.send_anonymous(method, path, &all, body).await
    }

    /// Sends exactly the given headers (no credential is added).
    pub async fn send_anonymous(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> HttpReply {
        let mut request = self.http.request(method, self.url(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .expect("HTTP request reaches the gateway");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("read the response body");
        let body = serde_json::from_str(&text).unwrap_or(Json::Null);
        HttpReply {
            status,
            headers,
            body,
            text,
        }
    }

    /// Every page of the list route `path` with `page_size`, as an admin: the `name` of each
    /// of its `items`, page by page, following `next_page_token` to the last.
    pub async fn all_pages(
        &self,
        path: &str,
        items: &str,
        name: &str,
        page_size: usize,
    ) -> Vec<Vec<String>> {
        let admin = [("x-api-key", self.keys.admin.as_str())];
        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let page = format!("{path}?page_size={page_size}&page_token={token}");
            let reply = self.send(reqwest::Method::GET, &page, &admin, "").await;
            assert_eq!(reply.status, 200, "{page}: {}", reply.text);
            let names = reply.body[items]
                .as_array()
                .unwrap_or_else(|| panic!("{items} listed: {}", reply.text))
                .iter()
                .map(|item| item[name].as_str().expect("named").to_owned())
                .collect();
            pages.push(names);
            token = reply.body["next_page_token"]
                .as_str()
                .expect("a token")
                .to_owned();
            if token.is_empty() {
                return pages;
            }
            assert!(pages.len() < 1000, "{path}: pages end");
        }
    }

    pub async fn post_json(&self, path: &str, body: &Json) -> HttpReply {
        self.send(
            reqwest::Method::POST,
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    pub async fn put_json(&self, path: &str, body: &Json) -> HttpReply {
        self.send(
            reqwest::Method::PUT,
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    /// `POST /compat/contact`, asserting a 200.
    pub async fn upsert_contact(&self, body: &Json) -> Json {
        let reply = self.post_json("/compat/contact", body).await;
        assert_eq!(reply.status, 200, "upsert failed: {}", reply.text);
        reply.body
    }

    /// A contacts client authenticated with the user key.
    pub async fn contacts_client(&self) -> ContactServiceClient<Authed> {
        self.contacts_client_with(Some(&self.keys.user)).await
    }

    pub async fn contacts_client_with(&self, key: Option<&str>) -> ContactServiceClient<Authed> {
        ContactServiceClient::with_interceptor(self.channel().await, WithKey::new(key))
    }

    pub async fn access_client_with(&self, key: Option<&str>) -> AccessServiceClient<Authed> {
        AccessServiceClient::with_interceptor(self.channel().await, WithKey::new(key))
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .expect("core URL")
            .connect()
            .await
            .expect("connect to the gRPC core")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl TestAppBuilder {
    /// The gateway's limit on a request's time.
    pub fn request_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.gateway.request_timeout = timeout;
        self
    }

    pub fn rate_limit_per_minute(mut self, limit: u32) -> Self {
        self.gateway.rate_limit_per_minute = limit;
        self
    }

    pub fn trusted_proxies(mut self, proxies: &[&str]) -> Self {
        self.gateway.trusted_proxies = proxies
            .iter()
            .map(|proxy| proxy.parse::<IpNet>().expect("CIDR range"))
            .collect();
        self
    }

    /// The core believes the client address forwarded by these peers only.
    pub fn trusted_gateways(mut self, gateways: &[&str]) -> Self {
        self.core.trusted_gateways = gateways
            .iter()
            .map(|gateway| gateway.parse::<IpNet>().expect("CIDR range"))
            .collect();
        self
    }

    pub fn emarsys_secret(mut self, secret: &str) -> Self {
        self.core.emarsys_webhook_secret = Some(Secret::new(secret));
        self
    }

    /// The production SSRF guard: https only, public addresses only.
    pub fn webhook_guard_on(mut self) -> Self {
        self.core.webhook_allow_private = false;
        self.core.webhook_allow_http = false;
        self
    }

    pub fn webhook_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.core.webhook_timeout = timeout;
        self
    }

    /// Keeps succeeded outbox jobs for `retention` (the trigger deduplication window, which it
    /// may not be shorter than, shrinks with it).
    pub fn outbox_retention(mut self, retention: std::time::Duration) -> Self {
        self.core.outbox_retention = retention;
        self.core.trigger_dedup_window = retention;
        self
    }

    pub fn webhook_slow_after(mut self, after: std::time::Duration) -> Self {
        self.core.webhook_slow_after = after;
        self
    }

    pub fn webhook_success_backlog(mut self, backlog: usize) -> Self {
        self.core.webhook_success_backlog = backlog;
        self
    }

    /// The API calls' pool: `size` connections, each call waiting at most `wait` for one.
    pub fn db_pool(mut self, size: usize, wait: std::time::Duration) -> Self {
        self.core.db_pool_size = size;
        self.core.db_pool_wait = wait;
        self
    }

    pub fn outbox_workers(mut self, workers: usize) -> Self {
        self.core.outbox_workers = workers;
        self
    }

    pub fn outbox_start_wait(mut self, wait: std::time::Duration) -> Self {
        self.core.outbox_start_wait = wait;
        self
    }

    pub fn outbox_poll_interval(mut self, interval: std::time::Duration) -> Self {
        self.core.outbox_poll_interval = interval;
        self
    }

    pub fn webhook_schedule(mut self, schedule: &str) -> Self {
        self.core.webhook_retry_schedule =
            switchbord_core::config::parse_schedule(schedule).expect("schedule");
        self
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    pub fn legacy_paths_without_keys(mut self) -> Self {
        self.core.auth_legacy_paths = OnOff::Off;
        self
    }

    pub fn default_region(mut self, region: &str) -> Self {
        self.core.default_region =
            Some(switchbord_core::config::parse_region(region).expect("region code"));
        self
    }

    pub async fn spawn(self) -> TestApp {
        init_logging();
        let database = TestDatabase::create().await;
        let mut core = CoreServer::build(&self.core, database.url())
            .await
            .expect("core starts");
        if let Some(clock) = self.clock.clone() {
            core = core.with_clock(clock);
        }
        let grpc_addr = core.local_addr();
        let gateway = GatewayServer::build(&self.gateway, &format!("http://{grpc_addr}"))
            .await
            .expect("gateway starts");
        let http_addr = gateway.local_addr();

        let (stop, stopped) = watch::channel(false);
        let shutdown = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|&stop| stop).await;
            }
        };
        tokio::spawn(core.run_until_stopped(shutdown()));
        tokio::spawn(gateway.run_until_stopped(shutdown()));

        let admin = self
            .core
            .bootstrap_admin_key
            .as_ref()
            .expect("tests configure a bootstrap key")
            .expose()
            .to_owned();
        let mut access = AccessServiceClient::with_interceptor(
            Channel::from_shared(format!("http://{grpc_addr}"))
                .expect("core URL")
                .connect()
                .await
                .expect("connect to the gRPC core"),
            WithKey::new(Some(&admin)),
        );
        let mut create = async |role: Role| {
            access
                .create_api_key(CreateApiKeyRequest {
                    name: format!("test-{}", role.as_str_name()),
                    role: role.into(),
                    expires_at: None,
                })
                .await
                .expect("create a test key")
                .into_inner()
                .secret
        };
        let manager = create(Role::Manager).await;
        let user = create(Role::User).await;

        TestApp {
            http_addr,
            grpc_addr,
            http: reqwest::Client::new(),
            database,
            keys: Keys {
                admin,
                manager,
                user,
            },
            stop,
        }
    }
}

fn init_logging() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_test_writer()
                .try_init();
        }
    });
}
