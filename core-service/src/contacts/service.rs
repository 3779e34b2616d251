//! The `ContactService` gRPC implementation: decode, call the operation, encode.

use std::sync::Arc;

use switchbord_api::v1::contact_service_server::ContactService;
use switchbord_api::v1::{
    self, GetContactRequest, GetContactResponse, UpsertContactRequest, UpsertContactResponse,
};
use tonic::{Request, Response, Status};

use super::error::ContactError;
use super::get::get_contact;
use super::input::validate_upsert;
use super::upsert::{Operation, upsert_contact};
use crate::error::ServiceError;
use crate::events::types::CONTACT_EVENTS;
use crate::outbox::{self, Starter};
use crate::request::RequestContext;
use crate::state::AppState;

pub struct ContactsService {
    state: Arc<AppState>,
    /// An upsert's first event is dispatched at once by this instance's worker when it has room.
    dispatcher: Starter,
}

impl ContactsService {
    pub fn new(state: Arc<AppState>, dispatcher: Starter) -> Self {
        Self { state, dispatcher }
    }
}

fn status(error: ContactError) -> Status {
    ServiceError::from(error).into()
}

#[tonic::async_trait]
impl ContactService for ContactsService {
    async fn upsert_contact(
        &self,
        request: Request<UpsertContactRequest>,
    ) -> Result<Response<UpsertContactResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let upsert = validate_upsert(request.into_inner(), self.state.default_region)
            .map_err(|violations| status(ContactError::Invalid(violations)))?;
        // Room for the contact's event's dispatch job, which only a listened-to event gets.
        let reservation = if self.state.audience.listens_to_any(&CONTACT_EVENTS) {
            self.dispatcher.reserve_within_wait().await
        } else {
            None
        };
        let mut outcome = upsert_contact(
            &self.state.pool,
            &context,
            &self.state.audience,
            &upsert,
            reservation.as_ref(),
        )
        .await
        .map_err(status)?;
        outbox::after_commit(&self.state.announcer, reservation, &mut outcome);
        let operation = match outcome.operation {
            Operation::Created => v1::UpsertOperation::Created,
            Operation::Updated => v1::UpsertOperation::Updated,
        };
        Ok(Response::new(UpsertContactResponse {
            operation: operation.into(),
            contact: Some(outcome.contact.into()),
            request_id: context.request_id.0.to_string(),
            changed_fields: outcome
                .changed_fields
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }))
    }

    async fn get_contact(
        &self,
        request: Request<GetContactRequest>,
    ) -> Result<Response<GetContactResponse>, Status> {
        let contact = get_contact(&self.state, request.into_inner().lookup)
            .await
            .map_err(status)?;
        Ok(Response::new(GetContactResponse {
            contact: Some(contact.into()),
        }))
    }
}
