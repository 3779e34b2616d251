//! The database the service runs on: `DATABASE_URL`, or a private cluster it manages itself.

use anyhow::Context;
use pg_cluster::{ClusterOptions, PgCluster};

use crate::cli::DatabaseArgs;

/// The database in use, and the private cluster behind it when there is one.
pub struct Database {
    url: String,
    cluster: Option<PgCluster>,
}

impl Database {
    /// For `serve`: the private cluster is started (and restarted if a crashed run left it
    /// running) and stopped again by [`Database::close`].
    pub async fn open(args: &DatabaseArgs) -> anyhow::Result<Self> {
        Self::connect(args, PgCluster::start).await
    }

    /// For one-off commands: a private cluster that a running `serve` owns is used as it is.
    pub async fn attach_or_open(args: &DatabaseArgs) -> anyhow::Result<Self> {
        Self::connect(args, PgCluster::attach_or_start).await
    }

    async fn connect(
        args: &DatabaseArgs,
        start: fn(ClusterOptions) -> Result<PgCluster, pg_cluster::PgClusterError>,
    ) -> anyhow::Result<Self> {
        if let Some(url) = &args.database_url {
            return Ok(Self {
                url: url.expose().to_owned(),
                cluster: None,
            });
        }
        let data_dir = std::path::absolute(args.data_dir.join("pgdata"))
            .context("cannot resolve the data directory")?;
        tracing::info!(data_dir = %data_dir.display(), "DATABASE_URL is not set; starting a private PostgreSQL cluster");
        let cluster = tokio::task::spawn_blocking(move || {
            start(ClusterOptions {
                data_dir,
                port: None,
                fsync: true,
            })
        })
        .await
        .context("the PostgreSQL start-up task failed")??;
        Ok(Self {
            url: cluster.url("postgres"),
            cluster: Some(cluster),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the private cluster, if any.
    pub async fn close(self) -> anyhow::Result<()> {
        if let Some(mut cluster) = self.cluster {
            tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .context("the PostgreSQL shutdown task failed")??;
        }
        Ok(())
    }
}

/// One connection, as the core opens them.
pub async fn connect(url: &str) -> anyhow::Result<diesel_async::AsyncPgConnection> {
    use diesel_async::AsyncConnection;
    diesel_async::AsyncPgConnection::establish(url)
        .await
        .context("cannot connect to the database")
}
