//! The `EmarsysService` gRPC implementation.

use std::sync::Arc;

use switchbord_api::v1::emarsys_service_server::EmarsysService;
use switchbord_api::v1::{IngestEmarsysEventRequest, IngestEmarsysEventResponse};
use tonic::{Request, Response, Status};

use super::ingest::{IngestSettings, ingest};
use super::input::normalize;
use crate::error::ServiceError;
use crate::request::RequestContext;
use crate::state::AppState;

pub struct EmarsysGrpc {
    state: Arc<AppState>,
}

impl EmarsysGrpc {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
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
        let outcome = ingest(
            &self.state.pool,
            &context,
            &self.state.audience,
            &request,
            &event,
            IngestSettings {
                default_region: self.state.default_region,
                window: self.state.trigger_dedup_window,
            },
        )
        .await?;
        if !outcome.duplicate {
            // Its job and event (see `crate::outbox::Announcer`).
            self.state.announcer.jobs_queued();
        }
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
}
