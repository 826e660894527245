//! Logging through `tracing`, filtered by RUST_LOG (default `info`); and
//! [`traces`] over OTLP/gRPC when the standard `OTEL_*` variables name an
//! endpoint.

pub mod traces;

use tracing_subscriber::{
    EnvFilter, Layer, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::LogFormat;

/// What has to be finished when the server stops: the trace exporter.
#[must_use = "call shutdown so that the last spans are exported"]
pub struct Telemetry {
    traces: Option<traces::Exporter>,
}

impl Telemetry {
    /// Exports the spans still queued (bounded in time).
    pub async fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown().await;
        }
    }
}

/// Installs the global subscriber, writing to `sink` (stdout in the binary;
/// tests pass a sink of their choice), with the trace exporter when the
/// environment asks for one. Call it inside the Tokio runtime: the exporter's
/// channel lives there.
pub fn init<W>(format: LogFormat, sink: W) -> Telemetry
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A log sink that goes away (a supervisor closing the pipe) must not
    // take the server down: tracing reports failed writes with eprintln!,
    // which panics when stderr is that closed pipe too.
    let logs = tracing_subscriber::fmt::layer()
        .log_internal_errors(false)
        .with_writer(sink);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    // RUST_LOG filters the logs alone: spans the logs leave out can still
    // be traced, and with traces off they are not even created.
    let logs = logs.with_filter(filter);
    let (exporter, failure) = match traces::Exporter::from_env() {
        Ok(exporter) => (exporter, None),
        Err(err) => (None, Some(err)),
    };
    // A second init (e.g. several tests in one process) keeps the first.
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(exporter.as_ref().map(traces::Exporter::layer))
        .try_init()
        .is_ok();
    if let Some(err) = failure {
        tracing::error!(error = %err, "traces are not exported: the OTLP exporter could not be built");
    }
    let traces = exporter.filter(|_| installed);
    if let Some(traces) = &traces {
        traces.enable();
        tracing::info!(endpoint = %traces.endpoint, "exporting traces over OTLP/gRPC");
    }
    Telemetry { traces }
}
