//! The `EventService` gRPC implementation.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;
use serde_json::{Map, Value as Json};
use switchbord_api::json::{json_from_struct, struct_from_json};
use switchbord_api::v1::event_service_server::EventService;
use switchbord_api::v1::{
    Event, EventType, ListEventTypesRequest, ListEventTypesResponse, PublishEventRequest,
    PublishEventResponse,
};
use tonic::{Request, Response, Status};

use super::dispatch::Audience;
use super::store::{EventDraft, new_event_id, record_dispatching};
use super::types::EMITTED_BY_SWITCHBORD;
use crate::audit::{self, AuditRecord};
use crate::contacts::timestamp;
use crate::db::{self, DbError, DbPool};
use crate::error::{FieldViolation, ServiceError};
use crate::outbox::{self, Announcer, Starter};
use crate::pagination::{self, NamePage};
use crate::request::RequestContext;
use crate::schema::event_types;
use crate::validation::{free_form_problem, short_text_problem};

const MAX_SOURCE_LEN: usize = 100;
/// As long as a registered type may be (`RegisterEventType`); built-in ones are shorter.
const MAX_TYPE_LEN: usize = 100;

pub struct EventsGrpc {
    pool: DbPool,
    /// Published events are dispatched at once by this instance's worker when it has room.
    dispatcher: Starter,
    /// Otherwise the dispatch job is queued, and announced once committed.
    announcer: Announcer,
    /// A published event nobody listens to gets no dispatch job.
    audience: Audience,
}

impl EventsGrpc {
    pub fn new(
        pool: DbPool,
        dispatcher: Starter,
        announcer: Announcer,
        audience: Audience,
    ) -> Self {
        Self {
            pool,
            dispatcher,
            announcer,
            audience,
        }
    }
}

fn invalid(field: &str, description: impl Into<String>) -> Status {
    ServiceError::InvalidArgument(vec![FieldViolation::new(field, description)]).into()
}

fn db_status(error: impl Into<DbError>) -> Status {
    ServiceError::from(error.into()).into()
}

fn object(value: Option<prost_types::Struct>) -> Map<String, Json> {
    value.map(json_from_struct).unwrap_or_default()
}

#[tonic::async_trait]
impl EventService for EventsGrpc {
    async fn publish_event(
        &self,
        request: Request<PublishEventRequest>,
    ) -> Result<Response<PublishEventResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let body = request.into_inner();
        let event_type = body.r#type.trim().to_owned();
        if event_type.is_empty() {
            return Err(invalid("type", "is required"));
        }
        // Checked before the catalog's foreign key can be: PostgreSQL refuses a NUL, and an
        // index entry past its size limit, with errors that name no field.
        if let Some(problem) = short_text_problem(&event_type, MAX_TYPE_LEN) {
            return Err(invalid("type", problem));
        }
        if EMITTED_BY_SWITCHBORD.contains(&event_type.as_str()) {
            return Err(invalid(
                "type",
                "is emitted by Switchbord itself; publish message.* or registered types",
            ));
        }
        let source = match body.source.trim() {
            "" => "api".to_owned(),
            source => match short_text_problem(source, MAX_SOURCE_LEN) {
                Some(problem) => return Err(invalid("source", problem)),
                None => source.to_owned(),
            },
        };
        let data = object(body.data);
        if let Some(problem) = free_form_problem(&data) {
            return Err(invalid("data", problem));
        }
        let data = Json::Object(data);
        let id = new_event_id();
        // Room for its dispatch job, which only a listened-to event gets; waited for before a
        // connection is checked out, so that no connection waits with it.
        let reservation = if self.audience.listens_to(&event_type) {
            self.dispatcher.reserve_within_wait().await
        } else {
            None
        };
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        let mut recorded = db::pipelined::write_only(&mut connection, async |connection| {
            // The event, its dispatch job and the audit entry go in one round trip with
            // COMMIT: the entry names the event by the id made above, not by a reply.
            let (stored, ()) = futures::try_join!(
                record_dispatching(
                    connection,
                    &self.audience,
                    id.clone(),
                    EventDraft {
                        event_type: &event_type,
                        data: data.clone(),
                        source: &source,
                        request_id: Some(context.request_id.0),
                    },
                    reservation.as_ref(),
                ),
                audit::record(
                    connection,
                    AuditRecord::new(&context, "event.publish", "event").target(&id),
                ),
            )?;
            Ok(stored)
        })
        .await
        .map_err(|error| match error {
            // The events table's foreign key checks the catalog, in the same round trip.
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, ref info)
                if info.constraint_name() == Some("events_type_fkey") =>
            {
                invalid("type", "is not in the event catalog (see ListEventTypes)")
            }
            other => db_status(other),
        })?;
        drop(connection);
        outbox::after_commit(&self.announcer, reservation, &mut recorded.dispatch);
        let Json::Object(data) = data else {
            unreachable!("built as an object above")
        };
        Ok(Response::new(PublishEventResponse {
            event: Some(Event {
                id: recorded.id,
                r#type: event_type,
                timestamp: Some(timestamp(recorded.occurred_at)),
                data: Some(struct_from_json(data)),
                source,
            }),
        }))
    }

    async fn list_event_types(
        &self,
        request: Request<ListEventTypesRequest>,
    ) -> Result<Response<ListEventTypesResponse>, Status> {
        let page = NamePage::of(request.get_ref().page_size, &request.get_ref().page_token)
            .map_err(|violation| Status::from(ServiceError::InvalidArgument(vec![violation])))?;
        let mut query = event_types::table
            .select((
                event_types::name,
                event_types::description,
                event_types::schema,
                event_types::example,
                event_types::builtin,
            ))
            .order(event_types::name)
            .limit(page.size + 1)
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(event_types::name.gt(after));
        }
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        let rows: Vec<(String, String, Json, Json, bool)> =
            query.load(&mut connection).await.map_err(db_status)?;
        let as_struct = |value: Json| match value {
            Json::Object(object) => Some(struct_from_json(object)),
            _ => None,
        };
        let (event_types, next_page_token) = pagination::finish_page(
            rows,
            page.size,
            |(name, ..)| name.clone(),
            |(name, description, schema, example, builtin)| EventType {
                name,
                description,
                schema: as_struct(schema),
                example: as_struct(example),
                builtin,
            },
        );
        Ok(Response::new(ListEventTypesResponse {
            event_types,
            next_page_token,
        }))
    }
}
