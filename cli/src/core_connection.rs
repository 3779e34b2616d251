//! Operator commands that talk to a running core: one gRPC channel whose every call carries
//! the admin key, and one way to turn a refused call into a message. Used by `keys`,
//! `endpoints` and `outbox`.

use anyhow::Context;
use switchbord_api::v1::access_service_client::AccessServiceClient;
use switchbord_api::v1::outbox_service_client::OutboxServiceClient;
use switchbord_api::v1::webhook_service_client::WebhookServiceClient;
use switchbord_core::config::Secret;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

/// Where the core is and the key to call it with, for commands that only work through it.
#[derive(Debug, clap::Args)]
pub struct CoreArgs {
    /// gRPC URL of the running core.
    #[arg(
        long,
        env = "SWITCHBORD_CORE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub core_url: String,

    /// Admin API key sent with every call.
    #[arg(
        long,
        env = "SWITCHBORD_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub api_key: Option<Secret>,

    /// Print the response as JSON (the proto message, snake_case field names) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A connected core. Clients made from it send the admin key as `x-api-key`.
pub struct Core {
    channel: Channel,
    api_key: ApiKeyHeader,
}

/// The channel with the admin key on every request.
pub type Authorized = InterceptedService<Channel, ApiKeyHeader>;

impl Core {
    /// Connects now, so that a wrong URL or a core that is down fails before any request.
    pub async fn connect(url: &str, api_key: Option<&Secret>) -> anyhow::Result<Self> {
        let api_key = api_key
            .context("calls to the core need an admin key: set --api-key or SWITCHBORD_API_KEY")?;
        let value: AsciiMetadataValue = MetadataValue::try_from(api_key.expose())
            .context("the API key is not valid metadata (printable ASCII only)")?;
        let channel = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("`{url}` is not a valid core URL"))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to the core at {url}"))?;
        Ok(Self {
            channel,
            api_key: ApiKeyHeader(value),
        })
    }

    pub fn access(&self) -> AccessServiceClient<Authorized> {
        AccessServiceClient::with_interceptor(self.channel.clone(), self.api_key.clone())
    }

    pub fn webhooks(&self) -> WebhookServiceClient<Authorized> {
        WebhookServiceClient::with_interceptor(self.channel.clone(), self.api_key.clone())
    }

    pub fn outbox(&self) -> OutboxServiceClient<Authorized> {
        OutboxServiceClient::with_interceptor(self.channel.clone(), self.api_key.clone())
    }
}

/// Adds `x-api-key` to each request.
#[derive(Clone)]
pub struct ApiKeyHeader(AsciiMetadataValue);

impl Interceptor for ApiKeyHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("x-api-key", self.0.clone());
        Ok(request)
    }
}

/// One line for a refused call: the gRPC code, the core's message and each field violation,
/// for example `the core refused the call: INVALID_ARGUMENT: invalid request (url: must use
/// https)`.
pub fn refused(status: tonic::Status) -> anyhow::Error {
    let mut line = format!(
        "the core refused the call: {}: {}",
        code_name(status.code()),
        status.message()
    );
    let violations: Vec<String> = status
        .get_details_bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .iter()
                .map(|violation| format!("{}: {}", violation.field, violation.description))
                // The core often says the one violation in its message already.
                .filter(|violation| !status.message().contains(violation.as_str()))
                .collect()
        })
        .unwrap_or_default();
    if !violations.is_empty() {
        line.push_str(&format!(" ({})", violations.join("; ")));
    }
    anyhow::Error::msg(line)
}

/// The canonical upper-case name of a gRPC code, as in the gRPC specification.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
