//! Building and running the core's gRPC server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use switchbord_api::v1::contact_service_server::ContactServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::config::CoreConfig;
use crate::contacts::ContactsService;
use crate::db::{self, MigrationError};
use crate::state::AppState;

/// Why the core could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Migrations(#[from] MigrationError),
    #[error("cannot build the database pool")]
    Pool(#[from] diesel_async::pooled_connection::deadpool::BuildError),
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
}

/// A core that has migrated its database and bound its port, ready to serve.
pub struct CoreServer {
    state: Arc<AppState>,
    listener: TcpListener,
}

impl CoreServer {
    /// Runs pending migrations, builds the pool and binds `config.grpc_addr` (port 0 picks a
    /// free port; see [`CoreServer::local_addr`]).
    pub async fn build(config: &CoreConfig, database_url: &str) -> Result<Self, StartupError> {
        db::run_migrations(database_url).await?;
        let pool = db::build_pool(database_url, config.db_pool_size)?;
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        let state = Arc::new(AppState {
            pool,
            default_region: config.default_region,
        });
        Ok(Self { state, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` completes, then lets in-flight calls finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartupError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<ContactServiceServer<ContactsService>>()
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(switchbord_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(switchbord_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        tracing::info!(addr = %self.local_addr(), "gRPC core listening");
        Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ContactServiceServer::new(ContactsService::new(
                self.state.clone(),
            )))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await?;
        Ok(())
    }
}
