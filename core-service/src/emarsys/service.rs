//! The `EmarsysService` gRPC implementation.

use std::sync::Arc;

use switchbord_api::v1::emarsys_service_server::EmarsysService;
use switchbord_api::v1::{
    CheckEmarsysCredentialsRequest, CheckEmarsysCredentialsResponse, IngestEmarsysEventRequest,
    IngestEmarsysEventResponse,
};
use tonic::{Request, Response, Status};

use super::ingest::{IngestSettings, ingest};
use super::input::normalize;
use crate::error::ServiceError;
use crate::outbox::{self, Starter};
use crate::request::RequestContext;
use crate::state::AppState;

pub struct EmarsysGrpc {
    state: Arc<AppState>,
    starter: Starter,
}

impl EmarsysGrpc {
    pub fn new(state: Arc<AppState>, starter: Starter) -> Self {
        Self { state, starter }
    }
}

#[tonic::async_trait]
impl EmarsysService for EmarsysGrpc {
    async fn ingest_emarsys_event(
        &self,
        request: Request<IngestEmarsysEventRequest>,
    ) -> Result<Response<IngestEmarsysEventResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let request = request.into_inner();
        let event = normalize(&request).map_err(ServiceError::InvalidArgument)?;
        let reservation = self.starter.reserve_within_wait().await;
        let mut outcome = ingest(
            &self.state.pool,
            &context,
            &self.state.audience,
            &request,
            &event,
            IngestSettings {
                default_region: self.state.default_region,
                window: self.state.trigger_dedup_window,
            },
            reservation.as_ref(),
        )
        .await?;
        outbox::after_commit(&self.state.announcer, reservation, &mut outcome);
        Ok(Response::new(IngestEmarsysEventResponse {
            webhook_event_id: outcome.webhook_event_id.to_string(),
            outbox_job_id: outcome.outbox_job_id.to_string(),
            contact_id: outcome
                .contact_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            duplicate: outcome.duplicate,
        }))
    }

    async fn check_emarsys_credentials(
        &self,
        _request: Request<CheckEmarsysCredentialsRequest>,
    ) -> Result<Response<CheckEmarsysCredentialsResponse>, Status> {
        // The access layer has checked them by the time the call gets here.
        Ok(Response::new(CheckEmarsysCredentialsResponse {}))
    }
}
