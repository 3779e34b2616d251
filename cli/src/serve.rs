//! `switchbord serve`: the core and the gateway in one process, or the gateway alone.

use anyhow::Context;
use std::path::Path;

use switchbord_core::CoreServer;
use switchbord_core::access::Bootstrap;
use switchbord_gateway::GatewayServer;
use tokio::sync::watch;

use crate::check_config::startup_problems;
use crate::cli::ServeArgs;
use crate::database::Database;
use crate::local_state::{ADMIN_KEY_FILE, load_or_create_pepper, write_private};

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut core_config = args.core.clone();
    if args.core_url.is_none() && core_config.key_pepper.is_none() {
        core_config.key_pepper = Some(load_or_create_pepper(&args.database.data_dir)?);
    }
    // The checks `switchbord check-config` reports, before anything starts.
    if let Some(problem) = startup_problems(&args, &core_config).into_iter().next() {
        anyhow::bail!(problem.message);
    }

    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing in-flight work");
        let _ = stop.send(true);
    });
    let shutdown = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        }
    };

    if let Some(core_url) = &args.core_url {
        let gateway = GatewayServer::build(&args.gateway, core_url).await?;
        return Ok(gateway.run_until_stopped(shutdown()).await?);
    }

    let database = Database::open(&args.database).await?;
    let result = async {
        let core = CoreServer::build(&core_config, database.url()).await?;
        announce_bootstrap_key(core.bootstrap(), &args.database.data_dir)?;
        let core_url = format!("http://{}", core.local_addr());
        let gateway = GatewayServer::build(&args.gateway, &core_url).await?;
        let (core_result, gateway_result) = tokio::join!(
            core.run_until_stopped(shutdown()),
            gateway.run_until_stopped(shutdown()),
        );
        core_result.context("the gRPC core failed")?;
        gateway_result.context("the HTTP gateway failed")?;
        anyhow::Ok(())
    }
    .await;
    let closed = database.close().await;
    result.and(closed)
}

/// Completes on SIGINT or SIGTERM.
async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the service");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Shows a generated first admin key once, on stderr, and keeps it in the data directory
/// (mode 0600) for scripts. The key is shown first: it is already stored, and a start that
/// failed to save it would otherwise lose it for good (later starts find keys and show none).
fn announce_bootstrap_key(bootstrap: &Bootstrap, data_dir: &Path) -> anyhow::Result<()> {
    match bootstrap {
        Bootstrap::Generated(key) => {
            eprintln!("switchbord: created the first admin API key (shown only this once):\n{key}");
            match write_private(&data_dir.join(ADMIN_KEY_FILE), key) {
                Ok(path) => eprintln!("switchbord: the key is also saved to {}", path.display()),
                Err(error) => eprintln!("switchbord: the key could not be saved: {error:#}"),
            }
        }
        Bootstrap::Configured => {
            tracing::info!("installed the admin API key from SWITCHBORD_BOOTSTRAP_ADMIN_KEY");
        }
        Bootstrap::KeysExist => {}
    }
    Ok(())
}
