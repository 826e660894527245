//! Logging through `tracing`, filtered by RUST_LOG (default `info`).

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use crate::config::LogFormat;

/// Installs the global subscriber, writing to `sink` (stdout in the binary;
/// tests pass a sink of their choice).
pub fn init<W>(format: LogFormat, sink: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A log sink that goes away (a supervisor closing the pipe) must not
    // take the server down: tracing reports failed writes with eprintln!,
    // which panics when stderr is that closed pipe too.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(sink);
    // A second init (e.g. several tests in one process) keeps the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
