//! The `JourneyService` gRPC implementation.

use std::sync::Arc;

use switchbord_api::v1::journey_service_server::JourneyService;
use switchbord_api::v1::{TriggerJourneyRequest, TriggerJourneyResponse, TriggerStatus};
use tonic::{Request, Response, Status};

use super::error::JourneyError;
use super::input::validate_trigger;
use super::trigger::accept_trigger;
use crate::error::ServiceError;
use crate::outbox::{self, Starter};
use crate::request::RequestContext;
use crate::state::AppState;

pub struct JourneysGrpc {
    state: Arc<AppState>,
    /// A trigger's job is run at once by this instance's worker when it has room.
    starter: Starter,
}

impl JourneysGrpc {
    pub fn new(state: Arc<AppState>, starter: Starter) -> Self {
        Self { state, starter }
    }
}

fn status(error: JourneyError) -> Status {
    ServiceError::from(error).into()
}

#[tonic::async_trait]
impl JourneyService for JourneysGrpc {
    async fn trigger_journey(
        &self,
        request: Request<TriggerJourneyRequest>,
    ) -> Result<Response<TriggerJourneyResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let input = validate_trigger(request.into_inner(), self.state.default_region)
            .map_err(|violations| status(JourneyError::Invalid(violations)))?;
        let reservation = self.starter.reserve_within_wait().await;
        let mut outcome = accept_trigger(
            &self.state.pool,
            &context,
            &self.state.audience,
            &input,
            self.state.trigger_dedup_window,
            reservation.as_ref(),
        )
        .await
        .map_err(status)?;
        outbox::after_commit(&self.state.announcer, reservation, &mut outcome);
        let trigger_status = if outcome.duplicate {
            TriggerStatus::Duplicate
        } else {
            TriggerStatus::Queued
        };
        Ok(Response::new(TriggerJourneyResponse {
            status: trigger_status.into(),
            trigger_event_id: outcome.trigger_event_id.to_string(),
            outbox_job_id: outcome.outbox_job_id.to_string(),
            contact_id: outcome.contact_id.to_string(),
            request_id: context.request_id.0.to_string(),
        }))
    }
}
