//! Prometheus/OpenMetrics metrics, served on their own HTTP port
//! ([`endpoint`]). No label carries a task or run id: their number has no
//! bound.
//!
//! - per RPC, by method and code: requests and latency (the handlers);
//! - per write, by target and code: latency and failures ([`instrumented`],
//!   a decorator around any `Storage`);
//! - both latencies carry the trace and span ids of a sampled measurement
//!   as exemplars, when traces are exported ([`crate::telemetry::traces`]);
//! - the sweep: runs expired, tick duration;
//! - read at each scrape ([`ScrapeTime`]): calls in flight and shed,
//!   storage readiness, and what only the backend knows
//!   (`Storage::stats`: group commit, WAL size, pool use).

pub mod endpoint;
mod instrumented;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::trace::SpanContext;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        exemplar::HistogramWithExemplars,
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

pub use instrumented::InstrumentedStorage;

use crate::{server::admission::Admission, storage::Storage, telemetry::traces};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    target: &'static str,
    code: &'static str,
}

/// The exemplar of a latency: the span it was measured in. Its ids, like
/// any id, never become a label of a series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceExemplar {
    trace_id: String,
    span_id: String,
}

impl TraceExemplar {
    fn of(ids: SpanContext) -> Self {
        Self {
            trace_id: ids.trace_id().to_string(),
            span_id: ids.span_id().to_string(),
        }
    }
}

type LatencyHistogram = HistogramWithExemplars<TraceExemplar>;

/// Latency buckets: 100 µs to ~6.5 s, doubling.
fn latency_histogram() -> LatencyHistogram {
    HistogramWithExemplars::new(exponential_buckets(100e-6, 2.0, 17))
}

fn observe(histogram: &LatencyHistogram, took: Duration, sampled: Option<SpanContext>) {
    let exemplar = sampled.map(TraceExemplar::of);
    let at = exemplar.as_ref().map(|_| std::time::SystemTime::now());
    histogram.observe(took.as_secs_f64(), exemplar, at);
}

/// Every metric of one server. Cheap to record into; shared by the
/// handlers, the storage decorator, the sweep and the endpoint.
pub struct Metrics {
    registry: Mutex<Registry>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_seconds: Family<RpcLabels, LatencyHistogram, fn() -> LatencyHistogram>,
    write_seconds: Family<WriteLabels, LatencyHistogram, fn() -> LatencyHistogram>,
    write_failures: Family<WriteLabels, Counter>,
    runs_expired: Counter,
    sweep_seconds: Histogram,
    /// Storage passed its latest probe (readiness, before shutdown).
    storage_ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("runstore");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "PersistenceService calls answered, by method and gRPC code",
            rpc_requests.clone(),
        );
        let rpc_seconds: Family<RpcLabels, LatencyHistogram, fn() -> LatencyHistogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "rpc_duration",
            "PersistenceService call latency, by method and gRPC code (WatchRuns: until its stream is set up)",
            Unit::Seconds,
            rpc_seconds.clone(),
        );
        let write_seconds: Family<WriteLabels, LatencyHistogram, fn() -> LatencyHistogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "write_duration",
            "Latency of each durable write (snapshot, manifest) until storage answered, by the code its WriteStatus carries",
            Unit::Seconds,
            write_seconds.clone(),
        );
        let write_failures = Family::<WriteLabels, Counter>::default();
        registry.register(
            "write_failures",
            "Durable writes that failed, by target and code",
            write_failures.clone(),
        );
        let runs_expired = Counter::default();
        registry.register(
            "runs_expired",
            "Runs removed by retention (--retain-for, --retain-runs)",
            runs_expired.clone(),
        );
        let sweep_seconds = Histogram::new(exponential_buckets(1e-3, 2.0, 16));
        registry.register_with_unit(
            "sweep_duration",
            "One background sweep: retention, event pruning, space reclaimed",
            Unit::Seconds,
            sweep_seconds.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            rpc_requests,
            rpc_seconds,
            write_seconds,
            write_failures,
            runs_expired,
            sweep_seconds,
            storage_ready: Arc::default(),
        }
    }

    /// Registers what is read at each scrape: the server's admission and
    /// storage.
    pub fn observe_server(&self, admission: Admission, storage: Arc<dyn Storage>) {
        self.lock_registry()
            .register_collector(Box::new(ScrapeTime {
                admission,
                storage,
                storage_ready: Arc::clone(&self.storage_ready),
            }));
    }

    /// A call answered, timed in its RPC span `span`.
    pub fn rpc_answered(
        &self,
        method: &'static str,
        code: tonic::Code,
        took: Duration,
        span: &tracing::Span,
    ) {
        let labels = RpcLabels {
            method,
            code: crate::api::error::code_name(code),
        };
        self.rpc_requests.get_or_create(&labels).inc();
        let sampled = traces::sampled(span);
        observe(&self.rpc_seconds.get_or_create(&labels), took, sampled);
    }

    /// A write answered, timed in the current span (the write's).
    fn write_answered(&self, target: &'static str, code: tonic::Code, took: Duration) {
        let labels = WriteLabels {
            target,
            code: crate::api::error::code_name(code),
        };
        let sampled = traces::sampled_current();
        observe(&self.write_seconds.get_or_create(&labels), took, sampled);
        if code != tonic::Code::Ok {
            self.write_failures.get_or_create(&labels).inc();
        }
    }

    pub fn swept(&self, expired: u64, took: Duration) {
        self.runs_expired.inc_by(expired);
        self.sweep_seconds.observe(took.as_secs_f64());
    }

    pub fn storage_ready(&self, ready: bool) {
        self.storage_ready.store(ready, Ordering::Relaxed);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.lock_registry());
        text
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Values read when scraped rather than recorded as they change.
struct ScrapeTime {
    admission: Admission,
    storage: Arc<dyn Storage>,
    storage_ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for ScrapeTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeTime").finish_non_exhaustive()
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let value = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    let metric = encoder.encode_descriptor(name, help, unit, value.metric_type())?;
    value.encode(metric)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: &Histogram,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, unit, value.metric_type())?;
    value.encode(metric)
}

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        gauge(
            e,
            "calls_in_flight",
            "Persistence calls admitted and not finished, their writes included",
            None,
            self.admission.in_flight(),
        )?;
        let shed = ConstCounter::new(self.admission.shed());
        let metric = e.encode_descriptor(
            "calls_shed",
            "Calls refused with RESOURCE_EXHAUSTED because --max-in-flight calls were in flight",
            None,
            shed.metric_type(),
        )?;
        shed.encode(metric)?;
        gauge(
            e,
            "storage_ready",
            "1 while storage passed its latest durable probe write (the readiness health status, before shutdown)",
            None,
            u64::from(self.storage_ready.load(Ordering::Relaxed)),
        )?;
        let stats = self.storage.stats();
        if let Some(commit) = &stats.group_commit {
            histogram(
                e,
                "group_commit_writes",
                "Writes covered by one SQLite commit (one WAL fsync)",
                None,
                &commit.batch_writes,
            )?;
            histogram(
                e,
                "group_commit_duration",
                "One SQLite group commit's transaction, its fsync included",
                Some(&Unit::Seconds),
                &commit.commit_seconds,
            )?;
        }
        if let Some(bytes) = stats.wal_bytes {
            gauge(
                e,
                "sqlite_wal_size",
                "Size of the SQLite write-ahead log",
                Some(&Unit::Bytes),
                bytes,
            )?;
        }
        if let Some(pool) = stats.pool {
            for (name, help, value) in [
                (
                    "postgres_pool_max",
                    "Most pooled PostgreSQL connections (--postgres-pool-size)",
                    pool.max,
                ),
                (
                    "postgres_pool_open",
                    "PostgreSQL connections open in the pool",
                    pool.open,
                ),
                (
                    "postgres_pool_in_use",
                    "Pooled PostgreSQL connections lent out to a statement",
                    pool.in_use,
                ),
                (
                    "postgres_pool_waiting",
                    "Callers waiting for a pooled PostgreSQL connection",
                    pool.waiting,
                ),
            ] {
                gauge(e, name, help, None, value)?;
            }
        }
        Ok(())
    }
}
