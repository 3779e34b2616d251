//! Logs through `tracing`: human-readable by default, JSON lines for log shippers; and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, every span
//! exported to an OpenTelemetry collector over OTLP/HTTP with protobuf.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Why span export cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TracingSetupError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL=`{0}` is not supported; use http/protobuf (the default)")]
    Protocol(String),
    #[error("cannot build the OTLP span exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Exports spans until dropped with [`SpanExport::shutdown`], which flushes what is buffered.
pub struct SpanExport {
    provider: Option<SdkTracerProvider>,
}

impl SpanExport {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("switchbord: cannot flush the last spans to the OTLP collector: {error}");
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`) both the log lines and
/// the exported spans.
pub fn init(format: LogFormat) -> Result<SpanExport, TracingSetupError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = otlp_provider()?;
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("switchbord")));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
    Ok(SpanExport { provider })
}

/// The span pipeline, when an OTLP endpoint is configured. The exporter reads the standard
/// `OTEL_EXPORTER_OTLP_*` variables itself (endpoint, headers, timeout); `OTEL_SERVICE_NAME`
/// names the service (default `switchbord`).
fn otlp_provider() -> Result<Option<SdkTracerProvider>, TracingSetupError> {
    let configured = ENDPOINT_VARIABLES
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()));
    if !configured {
        return Ok(None);
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default();
    if !protocol.is_empty() && protocol != "http/protobuf" {
        return Err(TracingSetupError::Protocol(protocol));
    }
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("switchbord");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}
