//! `switchbord-bench`: starts the release server on a fresh database and measures it against
//! the database's own ceiling. See `docs/performance.md`.

mod load;
mod receiver;
mod scenarios;
mod server;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use diesel::sql_query;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use crate::load::Figures;
use crate::scenarios::Outbound;
use crate::server::Server;

/// Benchmarks the release switchbord server: upserts over gRPC and REST, journey triggers and
/// Emarsys events against the same-run database ceiling, and outbound webhook delivery.
#[derive(Debug, Parser)]
struct Args {
    /// Client concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    concurrency: Vec<usize>,
    /// How long each measured step runs.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Events published per outbound run.
    #[arg(long, default_value_t = 5000)]
    events: u64,
    /// A few seconds in all: tiny steps, for CI (checks the harness, not the numbers).
    #[arg(long)]
    quick: bool,
    /// Write every figure as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Use this PostgreSQL server (a fresh database is created on it); unset: a private cluster.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// The server binary to measure; unset: `target/release/switchbord`, built when missing.
    #[arg(long, env = "SWITCHBORD_BENCH_SERVER")]
    server: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    concurrency: usize,
    #[serde(flatten)]
    figures: Figures,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    ratio_to_ceiling: Option<f64>,
}

#[derive(Debug, Serialize)]
struct OutboundRow {
    #[serde(flatten)]
    outbound: Outbound,
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    cores: usize,
    outbox_drain_seconds: f64,
    step_seconds: f64,
    rows: Vec<Row>,
    outbound: Vec<OutboundRow>,
    hanging_endpoint: Vec<HangingEffect>,
}

/// The runs with several endpoints, without and with one more that hangs: four of each, in
/// mirrored order (ABBA BAAB), so that a drift over the runs (the machine's speed, the tables
/// growing) weighs on both sides alike rather than always on the later one. Each side is then
/// read by its median: about one run in three or four, with or without the hanging endpoint, stalls for
/// a few hundred milliseconds (p99 near 200 ms, a third of its rate gone; the server's sampled
/// gauges off or on, alike), and the mean of two runs, as this compared before, moved by 20 %
/// either way with it: more than the effect measured.
const HANGING_ORDER: [bool; 8] = [false, true, true, false, true, false, false, true];

/// What a hanging endpoint does to the others' delivery rate at one load.
#[derive(Debug, Serialize, PartialEq)]
struct HangingEffect {
    endpoints: usize,
    publishers: usize,
    /// The healthy endpoints' deliveries/s, the median of the runs without it and with it.
    without_per_second: f64,
    with_per_second: f64,
    /// `with / without - 1`, in percent: below zero, the hanging endpoint's cost.
    change_percent: f64,
}

/// The effect of a hanging endpoint, for each load that was run both without and with one.
fn hanging_effects(outbound: &[OutboundRow]) -> Vec<HangingEffect> {
    let mut loads: Vec<(usize, usize)> = Vec::new();
    for row in outbound.iter().filter(|row| row.outbound.hanging_endpoint) {
        let load = (row.outbound.endpoints, row.outbound.publishers);
        if !loads.contains(&load) {
            loads.push(load);
        }
    }
    loads
        .into_iter()
        .filter_map(|(endpoints, publishers)| {
            let median = |hanging: bool| {
                let mut rates: Vec<f64> = outbound
                    .iter()
                    .map(|row| &row.outbound)
                    .filter(|run| {
                        run.endpoints == endpoints
                            && run.publishers == publishers
                            && run.hanging_endpoint == hanging
                    })
                    .map(|run| run.deliveries_per_second)
                    .collect();
                rates.sort_by(f64::total_cmp);
                let middle = rates.len() / 2;
                match rates.len() {
                    0 => None,
                    odd if odd % 2 == 1 => Some(rates[middle]),
                    _ => Some((rates[middle - 1] + rates[middle]) / 2.0),
                }
            };
            let (without, with) = (median(false)?, median(true)?);
            Some(HangingEffect {
                endpoints,
                publishers,
                without_per_second: without,
                with_per_second: with,
                change_percent: (with / without.max(1e-9) - 1.0) * 100.0,
            })
        })
        .collect()
}

/// The run's own database: in a private cluster, which goes with it, or created in the
/// server `DATABASE_URL` names, where [`BenchDatabase::remove`] drops it again.
struct BenchDatabase {
    url: String,
    admin_url: String,
    name: String,
    /// Dropped last, after the server that used it.
    cluster: Option<pg_cluster::PgCluster>,
}

impl BenchDatabase {
    async fn create(base: Option<String>) -> anyhow::Result<Self> {
        let (admin_url, cluster) = match base {
            Some(url) => (url, None),
            None => {
                let cluster =
                    tokio::task::spawn_blocking(pg_cluster::PgCluster::start_ephemeral).await??;
                (cluster.url("postgres"), Some(cluster))
            }
        };
        let name = format!("switchbord_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = AsyncPgConnection::establish(&admin_url)
            .await
            .context("connect to PostgreSQL")?;
        sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base)
            .to_owned();
        Ok(Self {
            url: format!("{base}/{name}"),
            admin_url,
            name,
            cluster,
        })
    }

    /// Drops the database from a caller's server, which would otherwise keep one for every
    /// run; `FORCE` ends the connections a server stopped a moment ago may still hold. A
    /// private cluster is removed whole when dropped.
    async fn remove(self) {
        if self.cluster.is_some() {
            return;
        }
        let dropping = async {
            let mut admin = AsyncPgConnection::establish(&self.admin_url).await?;
            sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await?;
            anyhow::Ok(())
        };
        // A stopped run must end even when the caller's server does not answer.
        let dropped = tokio::time::timeout(Duration::from_secs(30), dropping)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 30 s")));
        if let Err(error) = dropped {
            eprintln!(
                "the bench database {} was left behind: {error:#}",
                self.name
            );
        }
    }
}

fn print_row(row: &Row) {
    let ratio = row
        .ratio_to_ceiling
        .map_or("".to_owned(), |ratio| format!("{:.0} %", ratio * 100.0));
    println!(
        "{:<22} {:>5} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>6} {:>8.1} {:>7.2} {:>8}",
        row.scenario,
        row.concurrency,
        row.figures.per_second,
        row.figures.p50_ms,
        row.figures.p95_ms,
        row.figures.p99_ms,
        row.figures.max_ms,
        row.figures.errors,
        row.peak_rss_mib,
        row.cpu_seconds,
        ratio
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.concurrency = vec![1, 4];
        args.duration = Duration::from_millis(700);
        args.events = 200;
    }
    // Watched from the start, the cluster's start included.
    let stop = stop_signal();
    tokio::pin!(stop);
    let database = tokio::select! {
        database = BenchDatabase::create(args.database_url.clone()) => database?,
        signal = &mut stop => anyhow::bail!("stopped by {signal}"),
    };
    // The server child and the data directory are owned by `run` and cleaned up when it is
    // dropped, and the database after it, so a run stopped by a signal leaves none of them
    // behind.
    let result = tokio::select! {
        result = run(args, &database.url) => result,
        signal = &mut stop => Err(anyhow::anyhow!("stopped by {signal}")),
    };
    database.remove().await;
    result
}

/// The first SIGINT or SIGTERM (never, when they cannot be watched).
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

async fn run(args: Args, database_url: &str) -> anyhow::Result<()> {
    let data_dir = tempfile::Builder::new()
        .prefix("switchbord-bench-")
        .tempdir()?;
    switchbord_core::db::run_migrations(database_url).await?;
    scenarios::seed(database_url).await?;
    let server = Server::start(args.server.as_deref(), database_url, data_dir.path()).await?;
    // The seed's own dispatch jobs would otherwise run during the first measured steps.
    scenarios::drain_outbox(&server).await?;

    println!(
        "{:<22} {:>5} {:>10} {:>8} {:>8} {:>8} {:>9} {:>6} {:>8} {:>7} {:>8}",
        "scenario",
        "conc",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "errors",
        "RSS MiB",
        "CPU s",
        "ceiling"
    );
    let mut rows = Vec::new();
    for &concurrency in &args.concurrency {
        let mut ceiling = None;
        for scenario in [
            "ceiling (SQL only)",
            "grpc upsert",
            "rest upsert",
            "rest trigger (unique)",
            "rest trigger (dup)",
            "rest emarsys",
        ] {
            server.reset_peak();
            let cpu_before = server.cpu_seconds();
            let figures = match scenario {
                "ceiling (SQL only)" => {
                    scenarios::ceiling(database_url, concurrency, args.duration).await?
                }
                "grpc upsert" => {
                    scenarios::grpc_upsert(&server, concurrency, args.duration).await?
                }
                "rest upsert" => {
                    scenarios::rest_upsert(&server, concurrency, args.duration).await?
                }
                "rest trigger (unique)" => {
                    scenarios::triggers(&server, concurrency, args.duration, false).await?
                }
                "rest trigger (dup)" => {
                    scenarios::triggers(&server, concurrency, args.duration, true).await?
                }
                _ => scenarios::emarsys(&server, concurrency, args.duration).await?,
            };
            let is_ceiling = ceiling.is_none();
            if is_ceiling {
                ceiling = Some(figures.per_second);
            }
            let row = Row {
                scenario,
                concurrency,
                ratio_to_ceiling: (!is_ceiling)
                    .then(|| figures.per_second / ceiling.unwrap_or(1.0).max(1e-9)),
                figures,
                peak_rss_mib: server.peak_rss_mib(),
                cpu_seconds: server.cpu_seconds() - cpu_before,
            };
            print_row(&row);
            rows.push(row);
        }
    }

    let drained = scenarios::drain_outbox(&server).await?;
    println!(
        "\noutbox drained in {:.1} s (the jobs the scenarios above left queued)",
        drained.as_secs_f64()
    );
    println!();
    println!(
        "{:<34} {:>12} {:>14} {:>10} {:>10} {:>8} {:>7} {:>9} {:>8}",
        "outbound",
        "accepted/s",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "CPU s",
        "deferred",
        "retried"
    );
    let mut outbound = Vec::new();
    let publishers: Vec<usize> = if args.quick { vec![4] } else { vec![8, 32] };
    for &endpoints in &[1_usize, 4] {
        for &clients in &publishers {
            let order: &[bool] = match (endpoints, args.quick) {
                (1, _) => &[false],
                // One of each: enough to check the harness.
                (_, true) => &HANGING_ORDER[..2],
                (_, false) => &HANGING_ORDER,
            };
            for &hanging in order {
                server.reset_peak();
                let cpu_before = server.cpu_seconds();
                scenarios::drain_outbox(&server).await?;
                scenarios::settle(database_url).await?;
                let figures =
                    scenarios::outbound(&server, endpoints, clients, args.events, hanging).await?;
                let row = OutboundRow {
                    outbound: figures,
                    peak_rss_mib: server.peak_rss_mib(),
                    cpu_seconds: server.cpu_seconds() - cpu_before,
                };
                println!(
                    "{:<34} {:>12.0} {:>14.0} {:>10.1} {:>10.1} {:>8.1} {:>7.2} {:>9} {:>8}",
                    format!(
                        "{} endpoint(s), {} clients{}",
                        endpoints,
                        clients,
                        if hanging { " + hanging" } else { "" }
                    ),
                    row.outbound.accepted_per_second,
                    row.outbound.deliveries_per_second,
                    row.outbound.latency_p50_ms,
                    row.outbound.latency_p99_ms,
                    row.peak_rss_mib,
                    row.cpu_seconds,
                    row.outbound.deliver_runs_deferred,
                    row.outbound.attempts_retried
                );
                outbound.push(row);
            }
        }
    }

    let hanging_endpoint = hanging_effects(&outbound);
    println!(
        "\na hanging endpoint's effect on the others' deliveries/s (the medians of each side's runs):"
    );
    for effect in &hanging_endpoint {
        println!(
            "  {} endpoints, {} clients: {:.0} without, {:.0} with: {:+.1} %",
            effect.endpoints,
            effect.publishers,
            effect.without_per_second,
            effect.with_per_second,
            effect.change_percent
        );
    }

    let errors: u64 = rows.iter().map(|row| row.figures.errors).sum::<u64>()
        + outbound
            .iter()
            .map(|row| row.outbound.publish_errors)
            .sum::<u64>();
    let report = Report {
        outbox_drain_seconds: drained.as_secs_f64(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        step_seconds: args.duration.as_secs_f64(),
        rows,
        outbound,
        hanging_endpoint,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("\nfigures written to {}", path.display());
    }
    if errors > 0 {
        anyhow::bail!("{errors} requests failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(endpoints: usize, publishers: usize, hanging: bool, rate: f64) -> OutboundRow {
        OutboundRow {
            outbound: scenarios::Outbound {
                endpoints,
                publishers,
                events: 5000,
                hanging_endpoint: hanging,
                accepted_per_second: 0.0,
                deliveries_per_second: rate,
                latency_p50_ms: 0.0,
                latency_p99_ms: 0.0,
                publish_errors: 0,
                deliver_runs_deferred: 0,
                attempts_retried: 0,
            },
            peak_rss_mib: 0.0,
            cpu_seconds: 0.0,
        }
    }

    #[test]
    fn a_hanging_endpoints_effect_compares_the_medians_of_its_runs_at_each_load() {
        let runs = [
            run(1, 8, false, 1000.0),
            run(4, 8, false, 6000.0),
            run(4, 8, true, 5000.0),
            run(4, 8, true, 5400.0),
            run(4, 8, false, 4400.0),
            // A stalled run on each side moves neither median.
            run(4, 8, true, 1000.0),
            run(4, 8, false, 100.0),
            run(4, 8, false, 7000.0),
            run(4, 8, true, 9000.0),
            run(4, 32, false, 8000.0),
            run(4, 32, true, 8800.0),
            run(4, 32, true, 9999.0),
            run(4, 32, true, 1.0),
        ];
        let effects = hanging_effects(&runs);
        assert_eq!(effects.len(), 2, "{effects:?}");
        assert_eq!(
            (effects[0].endpoints, effects[0].publishers),
            (4, 8),
            "{effects:?}"
        );
        assert_eq!(effects[0].without_per_second, 5200.0);
        assert_eq!(effects[0].with_per_second, 5200.0);
        assert!(effects[0].change_percent.abs() < 1e-9, "{effects:?}");
        // An odd count: the middle run.
        assert_eq!(effects[1].publishers, 32);
        assert!(
            (effects[1].change_percent - 10.0).abs() < 1e-9,
            "{effects:?}"
        );
    }

    #[test]
    fn a_load_run_only_with_or_only_without_a_hanging_endpoint_has_no_effect_reported() {
        assert!(hanging_effects(&[run(4, 8, true, 5000.0)]).is_empty());
        assert!(hanging_effects(&[run(4, 8, false, 5000.0)]).is_empty());
    }
}
