//! The `TwentyService` gRPC implementation.

use std::sync::Arc;

use switchbord_api::v1::twenty_service_server::TwentyService;
use switchbord_api::v1::*;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::backfill::{self, MAX_PAGE_SIZE};
use super::client::{TwentyClient, TwentyError};
use super::inbound::{self, InboundSettings, WebhookSecret};
use super::mapping::{
    ContactField, Direction, Mapping, MappingEntry, TwentyField, default_entries,
};
use super::records::{self, SyncStatus};
use super::sync::{queue_pending_syncs, requeue_failed_syncs, sync_job};
use super::{connection, mapping_store};
use crate::audit::{self, AuditRecord};
use crate::config_watch::ConfigWatch;
use crate::db::{self, DbPool};
use crate::error::{FieldViolation, ServiceError};
use crate::outbox::{self, Announcer, Clock};
use crate::pagination::{decode_cursor, finish_page, page_size};
use crate::request::RequestContext;

pub struct TwentyGrpc {
    pool: DbPool,
    client: TwentyClient,
    clock: Arc<dyn Clock>,
    inbound: InboundSettings,
    webhook_secret: WebhookSecret,
    /// Wakes the workers for the syncs, backfill pages and contact events a request queued.
    announcer: Announcer,
    /// Told when the connection is set or deleted (see [`crate::config_watch`]).
    config: ConfigWatch,
}

impl TwentyGrpc {
    pub fn new(
        pool: DbPool,
        client: TwentyClient,
        clock: Arc<dyn Clock>,
        inbound: InboundSettings,
        announcer: Announcer,
        config: ConfigWatch,
    ) -> Self {
        Self {
            pool,
            client,
            clock,
            announcer,
            webhook_secret: WebhookSecret::new(config.clone()),
            config,
            inbound,
        }
    }

    async fn db(&self) -> Result<db::DbConnection, ServiceError> {
        Ok(db::connection(&self.pool).await?)
    }
}

fn mapping_response(mapping: &Mapping) -> Vec<FieldMappingEntry> {
    mapping
        .entries()
        .iter()
        .map(|entry| FieldMappingEntry {
            contact_field: entry.contact.as_string(),
            twenty_field: entry.twenty.as_str().to_owned(),
            direction: match entry.direction {
                Direction::ToTwenty => MappingDirection::ToTwenty,
                Direction::FromTwenty => MappingDirection::FromTwenty,
                Direction::Both => MappingDirection::Both,
                Direction::None => MappingDirection::None,
            }
            .into(),
        })
        .collect()
}

fn parse_entry(
    index: usize,
    entry: &FieldMappingEntry,
) -> Result<MappingEntry, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let field = |name: &str| format!("entries[{index}].{name}");
    let contact = ContactField::parse(entry.contact_field.trim());
    if contact.is_none() {
        violations.push(FieldViolation::new(
            field("contact_field"),
            "must be name, email, phone_number, external_reference_id, locale, tags or properties.<key>",
        ));
    }
    let twenty = TwentyField::parse(entry.twenty_field.trim());
    if twenty.is_none() {
        violations.push(FieldViolation::new(
            field("twenty_field"),
            "must be name, emails.primaryEmail, phones.primaryPhoneNumber or a field's camelCase API name",
        ));
    }
    let direction = match MappingDirection::try_from(entry.direction) {
        Ok(MappingDirection::ToTwenty) => Some(Direction::ToTwenty),
        Ok(MappingDirection::FromTwenty) => Some(Direction::FromTwenty),
        Ok(MappingDirection::Both) => Some(Direction::Both),
        Ok(MappingDirection::None) => Some(Direction::None),
        _ => {
            violations.push(FieldViolation::new(
                field("direction"),
                "must be to_twenty, from_twenty, both or none",
            ));
            None
        }
    };
    match (contact, twenty, direction) {
        (Some(contact), Some(twenty), Some(direction)) => Ok(MappingEntry {
            contact,
            twenty,
            direction,
        }),
        _ => Err(violations),
    }
}

fn parse_contact_id(text: &str) -> Result<Uuid, ServiceError> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        ServiceError::InvalidArgument(vec![FieldViolation::new("contact_id", "must be a UUID")])
    })
}

#[tonic::async_trait]
impl TwentyService for TwentyGrpc {
    async fn set_twenty_connection(
        &self,
        request: Request<SetTwentyConnectionRequest>,
    ) -> Result<Response<SetTwentyConnectionResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let request = request.into_inner();
        let now = self.clock.now();
        let policy = self.client.policy();
        let mut connection = self.db().await?;
        let mut changed = vec!["base_url"];
        if request.api_key.is_some() {
            changed.push("api_key");
        }
        if request.webhook_secret.is_some() {
            changed.push("webhook_secret");
        }
        let entry =
            AuditRecord::new(&context, "twenty.connection.set", "twenty").changing(&changed);
        let (stored, requeued) = audit::audited(&mut connection, entry, |connection| {
            Box::pin(async move {
                let current = connection::load(connection).await?;
                let connecting = current.is_none();
                let row = connection::apply(current, &request, policy, now)
                    .map_err(ServiceError::InvalidArgument)?;
                connection::save(connection, &row).await?;
                // Another origin than the links were made with (now, or before a delete) is
                // taken for another Twenty: the people linked are the old one's, whose ids
                // would only answer 404 there (and unlink every contact that changed) or keep
                // its webhooks and backfill from linking. Contacts are then linked again by
                // phone number as they change, or by a backfill, in the same Twenty under a new
                // address as in a new one.
                if records::links_now_with(connection, &row.base_url).await? {
                    let forgotten = records::forget_links(connection).await?;
                    tracing::info!(
                        forgotten,
                        "Twenty moved to another origin; its links are forgotten"
                    );
                } else if connecting {
                    // Syncs whose job ran while there was no connection ended there and left
                    // their contacts pending, with no job to come, and linked contacts changed
                    // meanwhile queued none: a new connection takes them all up.
                    records::mark_changed_since_synced(connection, now).await?;
                }
                let requeued = connecting && queue_pending_syncs(connection).await? > 0;
                Ok::<_, ServiceError>((row, requeued))
            })
        })
        .await?;
        if requeued {
            self.announcer.jobs_queued();
        }
        self.config.changed();
        Ok(Response::new(SetTwentyConnectionResponse {
            connection: Some((&stored).into()),
        }))
    }

    async fn get_twenty_connection(
        &self,
        _request: Request<GetTwentyConnectionRequest>,
    ) -> Result<Response<GetTwentyConnectionResponse>, Status> {
        let mut connection = self.db().await?;
        let stored = connection::load(&mut connection)
            .await
            .map_err(ServiceError::from)?
            .ok_or(ServiceError::NotFound("Twenty connection"))?;
        Ok(Response::new(GetTwentyConnectionResponse {
            connection: Some((&stored).into()),
        }))
    }

    async fn test_twenty_connection(
        &self,
        _request: Request<TestTwentyConnectionRequest>,
    ) -> Result<Response<TestTwentyConnectionResponse>, Status> {
        let mut connection = self.db().await?;
        let stored = connection::load(&mut connection)
            .await
            .map_err(ServiceError::from)?
            .ok_or(ServiceError::NotFound("Twenty connection"))?;
        drop(connection);
        let (reachable, authenticated, status_code, message) = match self
            .client
            .probe(&stored)
            .await
        {
            Ok(()) => (true, true, 200, "ok".to_owned()),
            Err(error @ TwentyError::Unauthorized { status, .. }) => {
                (true, false, i32::from(status), error.to_string())
            }
            Err(error @ (TwentyError::Unreachable(_) | TwentyError::Blocked(_))) => {
                (false, false, 0, error.to_string())
            }
            Err(error @ TwentyError::RateLimited { .. }) => (true, true, 429, error.to_string()),
            Err(
                error @ (TwentyError::Server { status, .. } | TwentyError::Rejected { status, .. }),
            ) => (true, false, i32::from(status), error.to_string()),
            Err(error @ (TwentyError::NotFound | TwentyError::Malformed(_))) => (
                true,
                false,
                0,
                format!("{error}; is the base URL a Twenty server?"),
            ),
        };
        Ok(Response::new(TestTwentyConnectionResponse {
            reachable,
            authenticated,
            status_code,
            message,
        }))
    }

    async fn delete_twenty_connection(
        &self,
        request: Request<DeleteTwentyConnectionRequest>,
    ) -> Result<Response<DeleteTwentyConnectionResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let mut connection = self.db().await?;
        let entry = AuditRecord::new(&context, "twenty.connection.delete", "twenty");
        audit::audited(&mut connection, entry, |connection| {
            Box::pin(async move {
                if !connection::delete(connection).await? {
                    return Err(ServiceError::NotFound("Twenty connection"));
                }
                Ok(())
            })
        })
        .await?;
        self.config.changed();
        Ok(Response::new(DeleteTwentyConnectionResponse {}))
    }

    async fn get_field_mapping(
        &self,
        _request: Request<GetFieldMappingRequest>,
    ) -> Result<Response<GetFieldMappingResponse>, Status> {
        let mut connection = self.db().await?;
        let mapping = mapping_store::load(&mut connection)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(GetFieldMappingResponse {
            entries: mapping_response(&mapping),
        }))
    }

    async fn update_field_mapping(
        &self,
        request: Request<UpdateFieldMappingRequest>,
    ) -> Result<Response<UpdateFieldMappingResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        let mut changes = Vec::new();
        for (index, entry) in request.entries.iter().enumerate() {
            match parse_entry(index, entry) {
                Ok(entry) => changes.push(entry),
                Err(mut problems) => violations.append(&mut problems),
            }
        }
        let mut removals = Vec::new();
        for (index, field) in request.remove_contact_fields.iter().enumerate() {
            match ContactField::parse(field.trim()) {
                Some(field) => removals.push(field),
                None => violations.push(FieldViolation::new(
                    format!("remove_contact_fields[{index}]"),
                    "is not a contact field",
                )),
            }
        }
        if !violations.is_empty() {
            return Err(ServiceError::InvalidArgument(violations).into());
        }
        let mut connection = self.db().await?;
        let entry =
            AuditRecord::new(&context, "twenty.mapping.update", "twenty").changing(&["mapping"]);
        let mapping = audit::audited(&mut connection, entry, |connection| {
            Box::pin(async move {
                let mut entries = if request.reset_to_default {
                    default_entries()
                } else {
                    mapping_store::load(connection).await?.entries().to_vec()
                };
                entries.retain(|entry| {
                    !removals.contains(&entry.contact)
                        && !changes.iter().any(|change| change.contact == entry.contact)
                });
                entries.extend(changes.iter().cloned());
                let mapping = Mapping::new(entries).map_err(ServiceError::InvalidArgument)?;
                mapping_store::replace(connection, &mapping).await?;
                Ok::<_, ServiceError>(mapping)
            })
        })
        .await?;
        Ok(Response::new(UpdateFieldMappingResponse {
            entries: mapping_response(&mapping),
        }))
    }

    async fn receive_twenty_webhook(
        &self,
        request: Request<ReceiveTwentyWebhookRequest>,
    ) -> Result<Response<ReceiveTwentyWebhookResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let request = request.into_inner();
        let results = inbound::receive(
            &self.pool,
            &context,
            &self.inbound,
            &self.webhook_secret,
            self.clock.now(),
            &request,
        )
        .await?;
        // The changed contacts' events and their syncs.
        self.announcer.jobs_queued();
        Ok(Response::new(ReceiveTwentyWebhookResponse { results }))
    }

    async fn get_sync_health(
        &self,
        _request: Request<GetSyncHealthRequest>,
    ) -> Result<Response<GetSyncHealthResponse>, Status> {
        let mut connection = self.db().await?;
        let counts = records::counts(&mut connection)
            .await
            .map_err(ServiceError::from)?;
        let count = |status: SyncStatus| {
            counts
                .iter()
                .find(|(name, _)| name == status.as_str())
                .map_or(0, |(_, count)| *count)
        };
        let run = backfill::load(&mut connection)
            .await
            .map_err(ServiceError::from)?;
        let connected = connection::load(&mut connection)
            .await
            .map_err(ServiceError::from)?
            .is_some();
        Ok(Response::new(GetSyncHealthResponse {
            pending: count(SyncStatus::Pending),
            synced: count(SyncStatus::Synced),
            failed: count(SyncStatus::Failed),
            unlinked: count(SyncStatus::Unlinked),
            backfill: Some(backfill::to_api(run)),
            connected,
        }))
    }

    async fn get_contact_sync(
        &self,
        request: Request<GetContactSyncRequest>,
    ) -> Result<Response<GetContactSyncResponse>, Status> {
        let contact_id = parse_contact_id(&request.get_ref().contact_id)?;
        let mut connection = self.db().await?;
        let sync = records::find(&mut connection, contact_id)
            .await
            .map_err(ServiceError::from)?
            .ok_or(ServiceError::NotFound("sync status of the contact"))?;
        Ok(Response::new(GetContactSyncResponse {
            sync: Some(sync.into()),
        }))
    }

    async fn list_failed_syncs(
        &self,
        request: Request<ListFailedSyncsRequest>,
    ) -> Result<Response<ListFailedSyncsResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)
            .map_err(|violation| ServiceError::InvalidArgument(vec![violation]))?;
        let after = match request.page_token.trim() {
            "" => None,
            token => Some(
                decode_cursor(token)
                    .map_err(|violation| ServiceError::InvalidArgument(vec![violation]))?,
            ),
        };
        let mut connection = self.db().await?;
        let rows = records::failed_page(&mut connection, after, size + 1)
            .await
            .map_err(ServiceError::from)?;
        let (syncs, next_page_token) = finish_page(
            rows,
            size,
            |row| (row.updated_at, row.contact_id),
            Into::into,
        );
        Ok(Response::new(ListFailedSyncsResponse {
            syncs,
            next_page_token,
        }))
    }

    async fn retry_failed_syncs(
        &self,
        request: Request<RetryFailedSyncsRequest>,
    ) -> Result<Response<RetryFailedSyncsResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        // Only an absent id means every failed sync; one of spaces is a wrong id.
        let contact_id = match request.get_ref().contact_id.as_str() {
            "" => None,
            id => Some(parse_contact_id(id.trim())?),
        };
        let now = self.clock.now();
        let mut connection = self.db().await?;
        let entry = AuditRecord::new(&context, "twenty.sync.retry", "twenty");
        let entry = match contact_id {
            Some(id) => entry.target(id),
            None => entry,
        };
        let retried = audit::audited(&mut connection, entry, |connection| {
            Box::pin(async move {
                let Some(contact_id) = contact_id else {
                    return Ok(requeue_failed_syncs(connection, now).await?);
                };
                if !records::requeue(connection, contact_id, now).await? {
                    return Err(ServiceError::FailedPrecondition(
                        "the contact's sync has not failed".to_owned(),
                    ));
                }
                outbox::enqueue(connection, &sync_job(contact_id)).await?;
                Ok::<_, ServiceError>(1)
            })
        })
        .await?;
        if retried > 0 {
            self.announcer.jobs_queued();
        }
        Ok(Response::new(RetryFailedSyncsResponse {
            retried: i64::try_from(retried).unwrap_or(i64::MAX),
        }))
    }

    async fn start_backfill(
        &self,
        request: Request<StartBackfillRequest>,
    ) -> Result<Response<StartBackfillResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let request = request.into_inner();
        let size = match request.page_size {
            0 => None,
            size if (1..=MAX_PAGE_SIZE).contains(&size) => Some(size),
            _ => {
                return Err(ServiceError::InvalidArgument(vec![FieldViolation::new(
                    "page_size",
                    format!("must be between 1 and {MAX_PAGE_SIZE}"),
                )])
                .into());
            }
        };
        let now = self.clock.now();
        let mut connection = self.db().await?;
        let entry = AuditRecord::new(&context, "twenty.backfill.start", "twenty");
        let run = audit::audited(&mut connection, entry, |connection| {
            Box::pin(async move { backfill::start(connection, size, request.restart, now).await })
        })
        .await?;
        self.announcer.jobs_queued();
        Ok(Response::new(StartBackfillResponse {
            backfill: Some(backfill::to_api(run)),
        }))
    }
}
