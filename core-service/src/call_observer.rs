//! The tower layer around every gRPC call: a span that carries the method and the caller's
//! request id (so every log line of the call, down to the database, can be joined to the
//! gateway's), and the call's count and latency by service, method and status code.
//!
//! Paths that name no method of ours are counted as `unknown`, so that a client probing random
//! paths cannot create a metric series per path.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use switchbord_telemetry as telemetry;
use tonic::Code;
use tower::{Layer, Service};

use crate::access::rules::{Access, access_for};
use crate::request::RequestId;

/// The methods of the public services (health, reflection) that the server implements.
const PUBLIC_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

#[derive(Debug, Clone, Copy, Default)]
pub struct CallObserverLayer;

impl<S> Layer<S> for CallObserverLayer {
    type Service = CallObserver<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallObserver { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CallObserver<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResponseBody> Service<http::Request<B>> for CallObserver<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let (service, method) = labels_for(request.uri().path());
        let request_id = RequestId::from_headers(request.headers());
        request.extensions_mut().insert(request_id);
        let span = tracing::info_span!(
            "grpc",
            service,
            method,
            request_id = %request_id.0
        );
        let started = Instant::now();
        let call = span.in_scope(|| self.inner.call(request));
        let observed = async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => status_code(response),
                Err(_) => Code::Unknown,
            };
            let labels = [
                ("service", service),
                ("method", method),
                ("code", code_name(code)),
            ];
            metrics::histogram!(telemetry::GRPC_DURATION, &labels).record(started.elapsed());
            metrics::counter!(telemetry::GRPC_REQUESTS, &labels).increment(1);
            result
        };
        Box::pin(tracing::Instrument::instrument(observed, span))
    }
}

/// `("switchbord.v1.ContactService", "UpsertContact")` for a known path.
fn labels_for(path: &str) -> (&'static str, &'static str) {
    let known = match access_for(path) {
        Access::Protected(rule) => Some(rule.method),
        Access::Public => PUBLIC_METHODS
            .iter()
            .copied()
            .find(|method| *method == path),
        Access::NoRule | Access::Unknown => None,
    };
    known
        .and_then(|method| method.strip_prefix('/'))
        .and_then(|method| method.split_once('/'))
        .unwrap_or(("unknown", "unknown"))
}

/// The call's status: an error answers with `grpc-status` in the headers (trailers-only); a
/// success carries it in the trailers, which have not arrived yet, so its absence means OK.
fn status_code<ResponseBody>(response: &http::Response<ResponseBody>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

fn code_name(code: Code) -> &'static str {
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The request id the observed service finds in its request for `sent`.
    async fn id_seen_for(sent: Option<&str>) -> Option<RequestId> {
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        let inner = tower::service_fn(move |request: http::Request<()>| {
            *record.lock().expect("lock") = request.extensions().get::<RequestId>().copied();
            async { Ok::<_, std::convert::Infallible>(http::Response::new(())) }
        });
        let mut observed = CallObserverLayer.layer(inner);
        let mut request = http::Request::new(());
        *request.uri_mut() = "/switchbord.v1.WebhookService/CreateEndpoint"
            .parse()
            .expect("path");
        if let Some(sent) = sent {
            request
                .headers_mut()
                .insert("x-request-id", sent.parse().expect("header"));
        }
        observed.call(request).await.expect("answered");
        *seen.lock().expect("lock")
    }

    #[tokio::test]
    async fn the_request_id_is_decided_once_for_the_log_and_the_call() {
        let id = "7b0c1f4e-8a43-4c2e-9d55-0f6a3c2b1e90";
        let padded = id_seen_for(Some(&format!(" {id} "))).await;
        assert_eq!(
            padded.map(|seen| seen.0.to_string()),
            Some(id.to_owned()),
            "the id sent, trimmed, as the audit entry reads it"
        );
        assert!(
            id_seen_for(None).await.is_some(),
            "one made for a call without"
        );
    }
}
