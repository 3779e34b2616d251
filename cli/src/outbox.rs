//! `switchbord outbox`: the background job queue, through `switchbord.v1.OutboxService` on a
//! running core.

use clap::Subcommand;
use serde_json::Value as Json;
use switchbord_api::v1::{
    GetOutboxJobRequest, GetOutboxStatsRequest, ListOutboxJobsRequest, RetryOutboxJobRequest,
};
use uuid::Uuid;

use crate::core_connection::{Core, CoreArgs, refused};
use crate::render::{self, cell, clipped, field, fields, table, with_next_page};

#[derive(Debug, clap::Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    pub command: OutboxCommand,

    #[command(flatten)]
    pub core: CoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List jobs, newest first.
    List {
        /// Only jobs in this status: pending, running, succeeded or dead.
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this kind, for example webhook.deliver.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many jobs (the core's default is 50, its maximum 500).
        #[arg(long)]
        limit: Option<i32>,
        /// Continue after the page that printed this token.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one job with every failed attempt.
    Get {
        /// The job's id.
        id: Uuid,
    },
    /// Put a dead job back in the queue with a fresh set of attempts.
    Retry {
        /// The job's id.
        id: Uuid,
    },
    /// Count pending, running and dead jobs per kind (succeeded ones are history), and tell how
    /// long the oldest due job has waited.
    Stats,
}

pub async fn run(args: OutboxArgs) -> anyhow::Result<()> {
    let core = Core::connect(&args.core.core_url, args.core.api_key.as_ref()).await?;
    let mut client = core.outbox();
    let as_json = args.core.json;
    match args.command {
        OutboxCommand::List {
            status,
            kind,
            limit,
            page_token,
        } => {
            let response = client
                .list_outbox_jobs(ListOutboxJobsRequest {
                    status: status.unwrap_or_default(),
                    kind: kind.unwrap_or_default(),
                    page_size: limit.unwrap_or_default(),
                    page_token: page_token.unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            render::print(&response, as_json, |value| {
                let rows = value["jobs"].as_array().cloned().unwrap_or_default();
                let text = table(
                    &rows,
                    &[
                        ("id", &field("id")),
                        ("kind", &field("kind")),
                        ("status", &field("status")),
                        ("attempts", &|row: &Json| {
                            format!("{}/{}", cell(&row["attempts"]), cell(&row["max_attempts"]))
                        }),
                        ("run after", &field("run_after")),
                        ("last error", &clipped("last_error")),
                    ],
                );
                with_next_page(text, "jobs", &response.next_page_token)
            })
        }
        OutboxCommand::Get { id } => {
            let response = client
                .get_outbox_job(GetOutboxJobRequest { id: id.to_string() })
                .await
                .map_err(refused)?
                .into_inner();
            render::print(&response, as_json, |value| {
                let errors = value["errors"].as_array().cloned().unwrap_or_default();
                let history = if errors.is_empty() {
                    "No failed attempts.".to_owned()
                } else {
                    table(
                        &errors,
                        &[
                            ("attempt", &field("attempt")),
                            ("occurred at", &field("occurred_at")),
                            ("error", &field("error")),
                        ],
                    )
                };
                format!("{}\n\n{history}", fields(&value["job"]))
            })
        }
        OutboxCommand::Retry { id } => {
            let response = client
                .retry_outbox_job(RetryOutboxJobRequest { id: id.to_string() })
                .await
                .map_err(refused)?
                .into_inner();
            render::print(&response, as_json, |value| {
                format!("Requeued job {id}.\n{}", fields(&value["job"]))
            })
        }
        OutboxCommand::Stats => {
            let response = client
                .get_outbox_stats(GetOutboxStatsRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            render::print(&response, as_json, |value| {
                let counts = value["counts"].as_array().cloned().unwrap_or_default();
                format!(
                    "{}\n\nOldest due job has waited {:.1} s.",
                    table(
                        &counts,
                        &[
                            ("status", &field("status")),
                            ("kind", &field("kind")),
                            ("count", &field("count")),
                        ],
                    ),
                    response.oldest_due_age_seconds
                )
            })
        }
    }
}
