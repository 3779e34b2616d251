//! Fan-out: every stored event becomes one delivery per endpoint subscribed to its type, each
//! with its own `webhook.deliver` job. Endpoints that are disabled get a `skipped` delivery, so
//! the event can be recovered once they are enabled again.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::deliver::deliver_job;
use super::model::{DeliveryRow, EndpointRow};
use crate::db;
use crate::events::{EventConsumer, StoredEvent};
use crate::outbox::{self, BoxFuture, JobContext, JobError, NewJob};
use crate::schema::{webhook_deliveries, webhook_endpoints};

pub struct WebhookFanout;

impl EventConsumer for WebhookFanout {
    fn consume<'a>(
        &'a self,
        event: &'a StoredEvent,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            // Test events go to one endpoint only, directly; never fan them out.
            if event.event_type == "webhook.test" {
                return Ok(());
            }
            let retry = |error: diesel::result::Error| JobError::retry(error.to_string());
            let mut connection = db::connection(&context.pool)
                .await
                .map_err(|error| JobError::retry(error.to_string()))?;
            connection
                .transaction(async |connection| {
                    let endpoints: Vec<EndpointRow> = webhook_endpoints::table
                        .select(EndpointRow::as_select())
                        .load(connection)
                        .await?;
                    let now = Utc::now();
                    let deliveries: Vec<DeliveryRow> = endpoints
                        .iter()
                        .filter(|endpoint| endpoint.subscribes_to(&event.event_type))
                        .map(|endpoint| DeliveryRow {
                            id: Uuid::now_v7(),
                            endpoint_id: endpoint.id,
                            event_id: event.id.clone(),
                            event_type: event.event_type.clone(),
                            status: if endpoint.enabled {
                                "pending"
                            } else {
                                "skipped"
                            }
                            .to_owned(),
                            attempts: 0,
                            last_status_code: None,
                            last_error: (!endpoint.enabled).then(|| "endpoint disabled".to_owned()),
                            created_at: now,
                            updated_at: now,
                        })
                        .collect();
                    if deliveries.is_empty() {
                        return Ok(());
                    }
                    // The unique (endpoint, event) pair makes a repeated dispatch harmless:
                    // only the deliveries inserted now get a job.
                    let inserted: Vec<(Uuid, Uuid, String)> =
                        diesel::insert_into(webhook_deliveries::table)
                            .values(&deliveries)
                            .on_conflict_do_nothing()
                            .returning((
                                webhook_deliveries::id,
                                webhook_deliveries::endpoint_id,
                                webhook_deliveries::status,
                            ))
                            .get_results(connection)
                            .await?;
                    let jobs: Vec<NewJob> = inserted
                        .into_iter()
                        .filter(|(_, _, status)| status == "pending")
                        .map(|(id, endpoint_id, _)| deliver_job(id, endpoint_id))
                        .collect();
                    outbox::enqueue_many(connection, &jobs).await?;
                    Ok(())
                })
                .await
                .map_err(retry)
        })
    }
}
