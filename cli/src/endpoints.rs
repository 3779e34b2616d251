//! `switchbord endpoints`: webhook endpoints, through `switchbord.v1.WebhookService` on a
//! running core.

use clap::Subcommand;
use serde_json::Value as Json;
use switchbord_api::v1::{
    CreateEndpointRequest, DeleteEndpointRequest, DisableEndpointRequest, EnableEndpointRequest,
    GetEndpointRequest, ListEndpointsRequest, SendTestEventRequest,
};
use uuid::Uuid;

use crate::core_connection::{Core, CoreArgs, refused};
use crate::render::{self, cell, enum_cell, field, fields, table, with_next_page};

#[derive(Debug, clap::Args)]
pub struct EndpointsArgs {
    #[command(subcommand)]
    pub command: EndpointsCommand,

    #[command(flatten)]
    pub core: CoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum EndpointsCommand {
    /// List endpoints with their health, oldest first.
    List {
        /// At most this many endpoints (the core's default and maximum: 500).
        #[arg(long)]
        limit: Option<i32>,
        /// Continue after the page that printed this token.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one endpoint with its health.
    Get {
        /// The endpoint's id.
        id: Uuid,
    },
    /// Create an endpoint and print it with its signing secret.
    Create {
        /// Receiver URL (https, unless the core allows http).
        #[arg(long)]
        url: String,
        /// Event type to deliver, for example contact.created; repeat for more. None: every type.
        #[arg(long = "event-type", value_name = "EVENT_TYPE")]
        event_types: Vec<String>,
        /// Free text shown to operators.
        #[arg(long)]
        description: Option<String>,
    },
    /// Deliver a `webhook.test` event to an endpoint now and print the attempt; exits non-zero
    /// when the receiver did not answer 2xx.
    Test {
        /// The endpoint's id.
        id: Uuid,
    },
    /// Turn deliveries on again.
    Enable {
        /// The endpoint's id.
        id: Uuid,
    },
    /// Stop deliveries (events arriving meanwhile are kept as skipped deliveries).
    Disable {
        /// The endpoint's id.
        id: Uuid,
        /// Why, shown to operators.
        #[arg(long, default_value = "disabled by an operator")]
        reason: String,
    },
    /// Delete an endpoint and its delivery history.
    Delete {
        /// The endpoint's id.
        id: Uuid,
    },
}

pub async fn run(args: EndpointsArgs) -> anyhow::Result<()> {
    let core = Core::connect(&args.core.core_url, args.core.api_key.as_ref()).await?;
    let mut client = core.webhooks();
    let as_json = args.core.json;
    match args.command {
        EndpointsCommand::List { limit, page_token } => {
            let response = client
                .list_endpoints(ListEndpointsRequest {
                    page_size: limit.unwrap_or_default(),
                    page_token: page_token.unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            render::print(&response, as_json, |value| {
                let rows = value["endpoints"].as_array().cloned().unwrap_or_default();
                let text = table(
                    &rows,
                    &[
                        ("id", &field("id")),
                        ("health", &|row: &Json| {
                            enum_cell(&row["health"], "ENDPOINT_HEALTH_")
                        }),
                        ("enabled", &field("enabled")),
                        ("url", &field("url")),
                        ("event types", &field("event_types")),
                    ],
                );
                with_next_page(text, "endpoints", &response.next_page_token)
            })
        }
        EndpointsCommand::Get { id } => {
            let response = client
                .get_endpoint(GetEndpointRequest { id: id.to_string() })
                .await
                .map_err(refused)?
                .into_inner();
            render::print(&response, as_json, |value| fields(&value["endpoint"]))
        }
        EndpointsCommand::Create {
            url,
            event_types,
            description,
        } => {
            let response = client
                .create_endpoint(CreateEndpointRequest {
                    url,
                    description: description.unwrap_or_default(),
                    event_types,
                    ..CreateEndpointRequest::default()
                })
                .await
                .map_err(refused)?
                .into_inner();
            render::print(&response, as_json, |value| {
                format!(
                    "{}\n\nSigning secret: {}",
                    fields(&value["endpoint"]),
                    cell(&value["secret"])
                )
            })
        }
        EndpointsCommand::Test { id } => {
            let response = client
                .send_test_event(SendTestEventRequest { id: id.to_string() })
                .await
                .map_err(refused)?
                .into_inner();
            let succeeded = response
                .attempt
                .as_ref()
                .is_some_and(|attempt| attempt.succeeded);
            render::print(&response, as_json, |value| {
                let attempt = &value["attempt"];
                let outcome = if succeeded {
                    format!(
                        "succeeded: HTTP {} in {} ms",
                        attempt["status_code"], attempt["duration_ms"]
                    )
                } else {
                    format!(
                        "failed: HTTP {} in {} ms, {}",
                        attempt["status_code"],
                        attempt["duration_ms"],
                        cell(&attempt["error"])
                    )
                };
                format!(
                    "Test event {} to endpoint {id} {outcome}",
                    cell(&value["event_id"])
                )
            })?;
            anyhow::ensure!(succeeded, "the test delivery to endpoint {id} failed");
            Ok(())
        }
        EndpointsCommand::Enable { id } => {
            let response = client
                .enable_endpoint(EnableEndpointRequest { id: id.to_string() })
                .await
                .map_err(refused)?
                .into_inner();
            render::print(&response, as_json, |value| fields(&value["endpoint"]))
        }
        EndpointsCommand::Disable { id, reason } => {
            let response = client
                .disable_endpoint(DisableEndpointRequest {
                    id: id.to_string(),
                    reason,
                })
                .await
                .map_err(refused)?
                .into_inner();
            render::print(&response, as_json, |value| fields(&value["endpoint"]))
        }
        EndpointsCommand::Delete { id } => {
            let response = client
                .delete_endpoint(DeleteEndpointRequest { id: id.to_string() })
                .await
                .map_err(refused)?
                .into_inner();
            render::print(&response, as_json, |_| format!("Deleted endpoint {id}."))
        }
    }
}
