//! Building and running the core's gRPC server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchbord_api::v1::access_service_server::AccessServiceServer;
use switchbord_api::v1::contact_service_server::ContactServiceServer;
use switchbord_api::v1::emarsys_service_server::EmarsysServiceServer;
use switchbord_api::v1::event_service_server::EventServiceServer;
use switchbord_api::v1::flow_service_server::FlowServiceServer;
use switchbord_api::v1::journey_service_server::JourneyServiceServer;
use switchbord_api::v1::outbox_service_server::OutboxServiceServer;
use switchbord_api::v1::twenty_service_server::TwentyServiceServer;
use switchbord_api::v1::webhook_service_server::WebhookServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;

use crate::access::{
    AccessGrpc, AuthLayer, Authenticator, Bootstrap, BootstrapError, KeyHasher, bootstrap_admin_key,
};
use crate::call_observer::CallObserverLayer;
pub use crate::config::MIN_PEPPER_LEN;
use crate::config::{ConfigError, CoreConfig, OnOff};
use crate::config_watch::ConfigWatch;
use crate::contacts::ContactsService;
use crate::db::{self, MigrationError};
use crate::emarsys::{CustomEventHandler, EmarsysAuth, EmarsysGrpc};
use crate::events::{Audience, DispatchHandler, EventsGrpc};
use crate::flows::FlowsGrpc;
use crate::gauges::GaugeSampler;
use crate::journeys::{JourneyTriggerHandler, JourneysGrpc};
use crate::outbox::admin::OutboxGrpc;
use crate::outbox::{Announcer, Clock, Pruner, Registry, SystemClock, Worker, WorkerConfig};
use crate::readiness::{self, ReadinessHealth};
use crate::state::AppState;
use crate::twenty::{
    BackfillHandler, InboundSettings, SyncHandler, TwentyClient, TwentyGrpc, TwentySyncConsumer,
};
use crate::webhooks::{
    DeliverHandler, Deliverer, DeliveryPolicy, ResumeHandler, Sender, UrlPolicy, WebhookFanout,
    WebhooksGrpc,
};

/// How often gathered API key last-used times are written.
const LAST_USED_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// How large a request with free-form JSON (properties, data, payloads) may be once decoded.
/// The gateway accepts bodies of 1 MiB, and JSON such as long arrays of numbers grows up to
/// about 5.5 times as protobuf: above tonic's default 4 MiB, such a body was refused with no
/// field named, where the validation behind would name it.
const MAX_FREE_FORM_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// Why the core could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Migrations(#[from] MigrationError),
    #[error("cannot build the database pool")]
    Pool(#[from] diesel_async::pooled_connection::deadpool::BuildError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the gRPC reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot build the outbound HTTP client")]
    HttpClient(#[source] reqwest::Error),
}

/// A core that has migrated its database and bound its port, ready to serve.
pub struct CoreServer {
    clock: Arc<dyn Clock>,
    sender: Sender,
    delivery_policy: DeliveryPolicy,
    deliverer: Arc<Deliverer>,
    twenty: TwentyClient,
    twenty_webhook_tolerance: Duration,
    state: Arc<AppState>,
    authenticator: Arc<Authenticator>,
    bootstrap: Bootstrap,
    listener: TcpListener,
    database_url: String,
    worker_config: WorkerConfig,
    metrics_sample_interval: Duration,
    outbox_retention: Duration,
    /// The outbox workers' own pool (asynchronous commit; see [`db::build_job_pool`]).
    job_pool: db::DbPool,
}

/// The job kinds this build runs, each registered by the feature that owns it; stored events
/// go to `audience`.
pub fn job_registry(
    deliverer: Arc<Deliverer>,
    audience: &Audience,
    twenty: TwentyClient,
    default_region: Option<phonenumber::country::Id>,
    config: ConfigWatch,
) -> Registry {
    let mut registry = Registry::default();
    registry
        .register(DispatchHandler::new(audience.clone()))
        .register(JourneyTriggerHandler::new(audience.clone()))
        .register(CustomEventHandler::new(audience.clone(), config))
        .register(DeliverHandler::new(deliverer.clone()))
        .register(ResumeHandler::new(deliverer))
        .register(SyncHandler::new(twenty.clone()))
        .register(BackfillHandler::new(
            twenty,
            default_region,
            audience.clone(),
        ));
    registry
}

impl CoreServer {
    /// Runs pending migrations, builds the pool, creates the first admin key when there is
    /// none, and binds `config.grpc_addr` (port 0 picks a free port; see
    /// [`CoreServer::local_addr`]).
    pub async fn build(config: &CoreConfig, database_url: &str) -> Result<Self, StartupError> {
        config.validate()?;
        let pepper = config.pepper()?;
        // Installs the metrics recorder before anything is recorded.
        switchbord_telemetry::prometheus();
        db::run_migrations(database_url).await?;
        let pool = db::build_pool(database_url, config.db_pool_size, config.db_pool_wait)?;
        let job_pool = db::build_job_pool(database_url, config.db_pool_size)?;
        let hasher = KeyHasher::new(pepper.expose().as_bytes().to_vec());
        let bootstrap = bootstrap_admin_key(
            &pool,
            &hasher,
            config.bootstrap_admin_key.as_ref().map(|key| key.expose()),
        )
        .await?;
        let legacy_paths_open = config.auth_legacy_paths == OnOff::Off;
        if legacy_paths_open {
            tracing::warn!(
                "SWITCHBORD_AUTH_LEGACY_PATHS=off: contact upserts and journey triggers are accepted without an API key"
            );
        }
        if config.emarsys_webhook_secret.is_none() {
            tracing::warn!(
                "EMARSYS_WEBHOOK_SECRET is not set: the Emarsys path accepts events (which can create and change contacts) from anyone who can reach it"
            );
        }
        crate::contacts::phone::load_metadata();
        let authenticator = Arc::new(Authenticator::new(
            pool.clone(),
            hasher,
            legacy_paths_open,
            config.trusted_gateways.clone(),
            EmarsysAuth::new(config.emarsys_webhook_secret.clone()),
        ));
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        let url_policy = UrlPolicy {
            allow_private: config.webhook_allow_private,
            allow_http: config.webhook_allow_http,
        };
        let sender =
            Sender::new(url_policy, config.webhook_timeout).map_err(StartupError::HttpClient)?;
        let twenty = TwentyClient::new(url_policy, config.webhook_timeout)
            .map_err(StartupError::HttpClient)?;
        let delivery_policy = DeliveryPolicy {
            schedule: config.webhook_retry_schedule.0.clone(),
            disable_after: config.webhook_disable_after,
            slow_attempt: config.webhook_slow_after,
            success_backlog: config.webhook_success_backlog,
            ..DeliveryPolicy::default()
        };
        let watch = ConfigWatch::default();
        let deliverer = Arc::new(Deliverer::new(
            sender.clone(),
            delivery_policy.clone(),
            watch.clone(),
        ));
        let state = Arc::new(AppState {
            pool,
            default_region: config.default_region,
            trigger_dedup_window: config.trigger_dedup_window,
            announcer: Announcer::default(),
            audience: Audience::new(vec![
                Arc::new(WebhookFanout::new(deliverer.clone(), watch.clone())),
                Arc::new(TwentySyncConsumer::new(watch.clone())),
            ]),
            config: watch,
        });
        let worker_config = WorkerConfig {
            concurrency: config.outbox_workers,
            poll_interval: config.outbox_poll_interval,
            start_wait: config.outbox_start_wait,
            shutdown_grace: config.shutdown_grace,
            ..WorkerConfig::default()
        };
        Ok(Self {
            clock: Arc::new(SystemClock),
            sender,
            delivery_policy,
            deliverer,
            twenty,
            twenty_webhook_tolerance: config.twenty_webhook_tolerance,
            state,
            authenticator,
            bootstrap,
            listener,
            database_url: database_url.to_owned(),
            worker_config,
            metrics_sample_interval: config.metrics_sample_interval,
            outbox_retention: config.outbox_retention,
            job_pool,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Replaces the clock the outbox and webhooks read (tests move time forward with it).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// What the first-start bootstrap did; a generated admin key is for the operator's eyes
    /// only, once.
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    /// Serves and runs the outbox workers until `shutdown` completes; then in-flight calls
    /// finish, running jobs get the grace period, and unfinished claims are released.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartupError> {
        let (stop, stopped) = watch::channel(false);
        let stopped_signal = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|&stop| stop).await;
            }
        };
        let registry = job_registry(
            self.deliverer.clone(),
            &self.state.audience,
            self.twenty.clone(),
            self.state.default_region,
            self.state.config.clone(),
        );
        let config_listener =
            tokio::spawn(self.state.config.clone().listen(self.database_url.clone()));
        let sampler = GaugeSampler::new(
            self.state.pool.clone(),
            self.clock.clone(),
            self.metrics_sample_interval,
            registry.kind_names(),
        );
        let worker = Worker::new(
            self.job_pool.clone(),
            &self.database_url,
            registry,
            self.clock.clone(),
            self.worker_config.clone(),
            self.state.announcer.clone(),
        );
        let dispatcher = worker.starter();
        let worker = tokio::spawn(worker.run(stopped_signal()));
        let shutdown = async move {
            shutdown.await;
            let _ = stop.send(true);
        };

        let health_reporter = tonic_health::server::HealthReporter::new();
        health_reporter
            .set_serving::<ContactServiceServer<ContactsService>>()
            .await;
        health_reporter
            .set_serving::<AccessServiceServer<AccessGrpc>>()
            .await;
        health_reporter
            .set_serving::<JourneyServiceServer<JourneysGrpc>>()
            .await;
        health_reporter
            .set_serving::<EventServiceServer<EventsGrpc>>()
            .await;
        health_reporter
            .set_serving::<OutboxServiceServer<OutboxGrpc>>()
            .await;
        health_reporter
            .set_serving::<EmarsysServiceServer<EmarsysGrpc>>()
            .await;
        health_reporter
            .set_serving::<FlowServiceServer<FlowsGrpc>>()
            .await;
        health_reporter
            .set_serving::<WebhookServiceServer<WebhooksGrpc>>()
            .await;
        health_reporter
            .set_serving::<TwentyServiceServer<TwentyGrpc>>()
            .await;
        let health = Arc::new(ReadinessHealth::new(
            HealthService::from_health_reporter(health_reporter.clone()),
            self.state.pool.clone(),
        ));
        let overall_reporter = tokio::spawn({
            let health = health.clone();
            async move {
                health
                    .report_overall(health_reporter, readiness::WATCH_INTERVAL)
                    .await;
            }
        });
        let health_service = HealthServer::from_arc(health);
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(switchbord_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(switchbord_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let flusher = tokio::spawn({
            let authenticator = self.authenticator.clone();
            async move {
                let mut ticks = tokio::time::interval(LAST_USED_FLUSH_INTERVAL);
                loop {
                    ticks.tick().await;
                    authenticator.flush_last_used().await;
                }
            }
        });

        let sampler = tokio::spawn(sampler.run());

        let pruner = tokio::spawn(
            Pruner::new(
                self.job_pool.clone(),
                self.clock.clone(),
                self.outbox_retention,
                crate::journeys::key_retention(self.state.trigger_dedup_window),
            )
            .run(),
        );

        let parked_sweep = tokio::spawn(crate::webhooks::sweep_forever(
            self.job_pool.clone(),
            self.state.announcer.clone(),
        ));

        tracing::info!(addr = %self.local_addr(), "gRPC core listening");
        let served = Server::builder()
            .layer(CallObserverLayer)
            .layer(AuthLayer::new(self.authenticator.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                ContactServiceServer::new(ContactsService::new(
                    self.state.clone(),
                    dispatcher.clone(),
                ))
                .max_decoding_message_size(MAX_FREE_FORM_REQUEST_BYTES),
            )
            .add_service(AccessServiceServer::new(AccessGrpc::new(
                self.state.pool.clone(),
                self.authenticator.clone(),
            )))
            .add_service(
                JourneyServiceServer::new(JourneysGrpc::new(
                    self.state.clone(),
                    dispatcher.clone(),
                ))
                .max_decoding_message_size(MAX_FREE_FORM_REQUEST_BYTES),
            )
            .add_service(
                EventServiceServer::new(EventsGrpc::new(
                    self.state.pool.clone(),
                    dispatcher.clone(),
                    self.state.announcer.clone(),
                    self.state.audience.clone(),
                ))
                .max_decoding_message_size(MAX_FREE_FORM_REQUEST_BYTES),
            )
            .add_service(OutboxServiceServer::new(OutboxGrpc::new(
                self.state.pool.clone(),
                self.state.announcer.clone(),
            )))
            .add_service(
                EmarsysServiceServer::new(EmarsysGrpc::new(self.state.clone(), dispatcher))
                    .max_decoding_message_size(MAX_FREE_FORM_REQUEST_BYTES),
            )
            .add_service(
                FlowServiceServer::new(FlowsGrpc::new(
                    self.state.pool.clone(),
                    self.state.config.clone(),
                ))
                .max_decoding_message_size(MAX_FREE_FORM_REQUEST_BYTES),
            )
            .add_service(
                WebhookServiceServer::new(WebhooksGrpc::new(
                    self.state.pool.clone(),
                    self.sender.clone(),
                    self.delivery_policy.clone(),
                    self.clock.clone(),
                    self.state.announcer.clone(),
                    self.state.config.clone(),
                ))
                .max_decoding_message_size(MAX_FREE_FORM_REQUEST_BYTES),
            )
            .add_service(TwentyServiceServer::new(TwentyGrpc::new(
                self.state.pool.clone(),
                self.twenty.clone(),
                self.clock.clone(),
                InboundSettings {
                    tolerance: self.twenty_webhook_tolerance,
                    default_region: self.state.default_region,
                    audience: self.state.audience.clone(),
                },
                self.state.announcer.clone(),
                self.state.config.clone(),
            )))
            .serve_with_incoming_shutdown(incoming(self.listener), shutdown)
            .await;
        flusher.abort();
        overall_reporter.abort();
        config_listener.abort();
        sampler.abort();
        pruner.abort();
        parked_sweep.abort();
        self.authenticator.flush_last_used().await;
        if worker.await.is_err() {
            tracing::warn!("the outbox worker stopped abnormally");
        }
        Ok(served?)
    }
}

/// The core's connections, with `TCP_NODELAY`. Calls are small messages, and with Nagle's
/// algorithm a response frame written while the one before is not yet acknowledged waits for
/// that ACK, which the peer may delay. `Server::tcp_nodelay` applies only to `Server::serve`,
/// not to a listener the server is handed.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_connections_send_small_frames_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let mut incoming = incoming(listener);
        let _client = TcpStream::connect(addr).await.expect("connect");
        let accepted = incoming
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(accepted.nodelay().expect("TCP_NODELAY readable"));
    }
}
