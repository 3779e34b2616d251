//! The gateway's gRPC connection to the core.

use std::time::Duration;

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

/// How long connecting to the core may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest outbox answer read from the core, where tonic's default is 4 MiB: a job carries
/// its payload, which a gRPC caller may have sent up to 8 MiB of, and a page holds one job
/// whatever its size (the core ends other pages at 3 MiB).
const MAX_OUTBOX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The core's services over one shared HTTP/2 channel. Cheap to clone, which axum does for
/// every request; each handler then makes the one client it calls (a channel handle and a few
/// words of settings), where holding all nine clients would clone nine handles per request.
#[derive(Clone)]
pub struct CoreClient {
    channel: Channel,
}

impl CoreClient {
    /// Connects lazily, so the gateway can start before the core and reconnects on its own.
    pub fn connect_lazy(core_url: &str) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(core_url.to_owned())?
            .tcp_nodelay(true)
            // A core host that drops packets would otherwise hold requests for the operating
            // system's TCP timeout (minutes); refused, the caller gets 503.
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        Ok(Self { channel })
    }

    pub fn contacts(&self) -> ContactServiceClient<Channel> {
        ContactServiceClient::new(self.channel.clone())
    }

    pub fn emarsys(&self) -> EmarsysServiceClient<Channel> {
        EmarsysServiceClient::new(self.channel.clone())
    }

    pub fn flows(&self) -> FlowServiceClient<Channel> {
        FlowServiceClient::new(self.channel.clone())
    }

    pub fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel.clone())
    }

    pub fn webhooks(&self) -> WebhookServiceClient<Channel> {
        WebhookServiceClient::new(self.channel.clone())
    }

    pub fn journeys(&self) -> JourneyServiceClient<Channel> {
        JourneyServiceClient::new(self.channel.clone())
    }

    pub fn outbox(&self) -> OutboxServiceClient<Channel> {
        OutboxServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_OUTBOX_ANSWER_BYTES)
    }

    pub fn twenty(&self) -> TwentyServiceClient<Channel> {
        TwentyServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }
}
