//! OpenTelemetry traces over OTLP/gRPC, on only when
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set; the other standard `OTEL_*` variables (headers, timeout, sampler,
//! batch delay, resource) are read by the OpenTelemetry SDK itself.
//!
//! The `tracing` spans become the trace: each RPC's span (continuing the
//! caller's W3C `traceparent`) and its writes' spans. Off, nothing of
//! OpenTelemetry is installed and every function here returns at once.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    global,
    propagation::Extractor,
    trace::{SpanContext, Status, TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::ExporterBuildError;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    resource::{EnvResourceDetector, TelemetryResourceDetector},
    trace::SdkTracerProvider,
};
use tonic::metadata::{KeyRef, MetadataMap};
use tracing::{Level, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, filter::Targets, registry::LookupSpan};

use crate::proto::persistence_service_server::SERVICE_NAME;

/// Set once the exporter's layer is installed: until then (and forever when
/// traces are off) the helpers below cost one relaxed load.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Most time spent at shutdown exporting the spans still queued.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// The trace pipeline: spans are batched and exported by the SDK's own
/// thread, never on the request path.
pub struct Exporter {
    provider: SdkTracerProvider,
    /// Where spans go, for the log.
    pub endpoint: String,
}

impl Exporter {
    /// The exporter the environment asks for, if any.
    pub fn from_env() -> Result<Option<Self>, ExporterBuildError> {
        let Some(endpoint) = endpoint_from_env() else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        // The sampler (OTEL_TRACES_SAMPLER) and the batch settings
        // (OTEL_BSP_*) come from the environment through the SDK's defaults.
        let provider = SdkTracerProvider::builder()
            .with_resource(resource())
            .with_batch_exporter(exporter)
            .build();
        Ok(Some(Self { provider, endpoint }))
    }

    /// The layer turning runstore's spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        // Only runstore's own spans: those of tonic and h2 would trace the
        // exporter's own calls, which would export more spans, and so on.
        let ours = Targets::new().with_target("runstore", Level::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("runstore"))
            // The module path would take the `target` attribute, which the
            // write spans use for what they write.
            .with_target(false)
            .with_filter(ours)
    }

    /// Called once the layer is installed.
    pub(super) fn enable(&self) {
        global::set_text_map_propagator(TraceContextPropagator::new());
        ENABLED.store(true, Ordering::Relaxed);
    }

    /// Exports what is queued, within [`SHUTDOWN_LIMIT`].
    pub async fn shutdown(self) {
        let provider = self.provider;
        // Blocking: the SDK's thread exports through the runtime's reactor,
        // so an async worker must not wait for it.
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_LIMIT))
                .await;
        match done {
            Ok(Ok(())) => tracing::debug!("traces flushed"),
            Ok(Err(err)) => tracing::warn!(error = %err, "traces not all exported at shutdown"),
            Err(err) => tracing::warn!(error = %err, "traces not all exported at shutdown"),
        }
    }
}

/// The endpoint, unless traces are switched off by the standard variables.
fn endpoint_from_env() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let is = |name: &str, value: &str| var(name).is_some_and(|v| v.eq_ignore_ascii_case(value));
    if is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none") {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// `service.name` is `runstore` unless OTEL_SERVICE_NAME, or a
/// `service.name` in OTEL_RESOURCE_ATTRIBUTES, says otherwise (the SDK's
/// own default would be `unknown_service`).
fn resource() -> Resource {
    let resource = Resource::builder_empty()
        .with_service_name("runstore")
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    match std::env::var("OTEL_SERVICE_NAME") {
        Ok(name) if !name.is_empty() => resource.with_service_name(name),
        _ => resource,
    }
    .build()
}

/// Request metadata as the propagator reads it.
struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Makes `span`, an RPC's span not yet entered, continue the caller's
/// trace (a W3C `traceparent` in `metadata`; none starts a new trace), with
/// the gRPC semantic-convention attributes.
pub fn continue_trace(span: &Span, method: &'static str, metadata: &MetadataMap) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let parent = global::get_text_map_propagator(|p| p.extract(&Metadata(metadata)));
    // It fails only for a span filtered out, which is then not traced.
    let _ = span.set_parent(parent);
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", SERVICE_NAME);
    span.set_attribute("rpc.method", method);
}

/// Records the gRPC code an RPC was answered with on its span. As the
/// semantic conventions say for servers, only codes that mean the server
/// failed make the span an error.
pub fn answered(span: &Span, code: tonic::Code) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    span.set_attribute("rpc.grpc.status_code", code as i64);
    use tonic::Code::*;
    if matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    ) {
        span.set_status(Status::error(code.description()));
    }
}

/// The ids of `span` when it is sampled: the exemplar of a measurement
/// taken in it.
pub fn sampled(span: &Span) -> Option<SpanContext> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let context = span.context();
    let ids = context.span().span_context().clone();
    ids.is_sampled().then_some(ids)
}

/// [`sampled`] for the current span.
pub fn sampled_current() -> Option<SpanContext> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    sampled(&Span::current())
}
