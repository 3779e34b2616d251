//! The gateway's gRPC connection to the core.

use switchbord_api::v1::contact_service_client::ContactServiceClient;
use switchbord_api::v1::emarsys_service_client::EmarsysServiceClient;
use switchbord_api::v1::event_service_client::EventServiceClient;
use switchbord_api::v1::flow_service_client::FlowServiceClient;
use switchbord_api::v1::journey_service_client::JourneyServiceClient;
use switchbord_api::v1::outbox_service_client::OutboxServiceClient;
use switchbord_api::v1::twenty_service_client::TwentyServiceClient;
use switchbord_api::v1::webhook_service_client::WebhookServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

/// Clients of the core's services over one shared HTTP/2 channel (cheap to clone).
#[derive(Clone)]
pub struct CoreClient {
    pub contacts: ContactServiceClient<Channel>,
    pub emarsys: EmarsysServiceClient<Channel>,
    pub flows: FlowServiceClient<Channel>,
    pub events: EventServiceClient<Channel>,
    pub webhooks: WebhookServiceClient<Channel>,
    pub journeys: JourneyServiceClient<Channel>,
    pub outbox: OutboxServiceClient<Channel>,
    pub twenty: TwentyServiceClient<Channel>,
    pub health: HealthClient<Channel>,
}

impl CoreClient {
    /// Connects lazily, so the gateway can start before the core and reconnects on its own.
    pub fn connect_lazy(core_url: &str) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(core_url.to_owned())?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            contacts: ContactServiceClient::new(channel.clone()),
            emarsys: EmarsysServiceClient::new(channel.clone()),
            flows: FlowServiceClient::new(channel.clone()),
            events: EventServiceClient::new(channel.clone()),
            webhooks: WebhookServiceClient::new(channel.clone()),
            journeys: JourneyServiceClient::new(channel.clone()),
            outbox: OutboxServiceClient::new(channel.clone()),
            twenty: TwentyServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
        })
    }
}
