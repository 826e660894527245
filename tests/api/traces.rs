//! Traces of the real binary, exported over OTLP/gRPC to a receiver each
//! test runs: a CompleteRun is one RPC span continuing the caller's
//! `traceparent`, with its two writes as child spans that overlap in time,
//! and an exemplar on the latency histogram names the trace; spans still
//! queued at SIGTERM are exported before the process exits; with no
//! endpoint set, nothing is.

use std::time::Duration;

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::Span,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

use crate::{
    helpers::{Backend, complete_request, ts},
    metrics::scrape_text,
    server_process::{ServerProcess, start_server_with_env},
};

/// The caller's trace, as a W3C `traceparent` (sampled).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// Longest wait for spans to arrive; the batch delay is 100 ms.
const SPANS_WAIT: Duration = Duration::from_secs(20);

/// One span as received, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/gRPC trace receiver: every exported span goes to the channel.
struct Receiver(mpsc::UnboundedSender<Received>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for resource_spans in request.into_inner().resource_spans {
            let attributes = resource_spans.resource.map(|r| r.attributes);
            let service = attributes
                .as_deref()
                .and_then(|a| string(a, "service.name"))
                .unwrap_or_default()
                .to_owned();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                let _ = self.0.send(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts a receiver on 127.0.0.1:0: its endpoint URL and what it receives.
async fn start_receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let (sender, received) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(sender)))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (endpoint, received)
}

/// The binary exporting to `endpoint`, batching for 100 ms (or `delay_ms`).
async fn traced_server(
    store: &crate::helpers::TestStore,
    endpoint: &str,
    delay_ms: &str,
) -> ServerProcess {
    start_server_with_env(
        store,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", delay_ms),
        ],
    )
    .await
}

/// Spans received so far and from now on, until `done` holds for them
/// (at most [`SPANS_WAIT`]).
async fn spans_until(
    received: &mut mpsc::UnboundedReceiver<Received>,
    spans: &mut Vec<Received>,
    done: impl Fn(&[Received]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + SPANS_WAIT;
    while !done(spans) {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some(span)) => spans.push(span),
            Ok(None) => panic!("the receiver stopped"),
            Err(_) => panic!("spans still missing after {SPANS_WAIT:?}: {spans:#?}"),
        }
    }
}

fn string<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(value) => Some(value.as_str()),
            _ => None,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CompleteRun span of trace `trace_id`, if received.
fn rpc_span<'a>(spans: &'a [Received], trace_id: &str) -> Option<&'a Received> {
    spans
        .iter()
        .find(|r| r.span.name == "CompleteRun" && hex(&r.span.trace_id) == trace_id)
}

/// The write spans whose parent is `parent`.
fn writes_of<'a>(spans: &'a [Received], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .map(|r| &r.span)
        .filter(|s| s.name == "write" && s.parent_span_id == parent.span_id)
        .collect()
}

fn print_tree(rpc: &Span, writes: &[&Span]) {
    let ms = |ns: u64| (ns.saturating_sub(rpc.start_time_unix_nano)) as f64 / 1e6;
    println!(
        "{} trace {} span {} parent {} [0.000 ms, {:.3} ms]",
        rpc.name,
        hex(&rpc.trace_id),
        hex(&rpc.span_id),
        hex(&rpc.parent_span_id),
        ms(rpc.end_time_unix_nano)
    );
    for write in writes {
        println!(
            "  {} {} span {} parent {} [{:.3} ms, {:.3} ms]",
            write.name,
            string(&write.attributes, "target").unwrap_or("?"),
            hex(&write.span_id),
            hex(&write.parent_span_id),
            ms(write.start_time_unix_nano),
            ms(write.end_time_unix_nano)
        );
    }
}

async fn a_complete_run_is_one_trace_with_overlapping_writes(backend: Backend) {
    let (endpoint, mut received) = start_receiver().await;
    let store = crate::helpers::TestStore::fresh(backend);
    let server = traced_server(&store, &endpoint, "100").await;
    let mut client = server.client().await;

    let mut call = Request::new(complete_request("trace-task", "r1", &ts(1)));
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    call.metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ASCII"));
    client.complete_run(call).await.expect("CompleteRun");

    let mut spans = Vec::new();
    spans_until(&mut received, &mut spans, |spans| {
        rpc_span(spans, TRACE_ID).is_some_and(|rpc| writes_of(spans, &rpc.span).len() == 2)
    })
    .await;
    let rpc = rpc_span(&spans, TRACE_ID).expect("the RPC span");
    assert_eq!(rpc.service, "runstore", "the default service.name");
    let rpc = &rpc.span;
    assert_eq!(
        hex(&rpc.parent_span_id),
        PARENT_SPAN_ID,
        "the caller's span"
    );
    assert_eq!(string(&rpc.attributes, "rpc.system"), Some("grpc"));
    assert_eq!(string(&rpc.attributes, "rpc.method"), Some("CompleteRun"));
    let writes = writes_of(&spans, rpc);
    print_tree(rpc, &writes);
    let mut targets: Vec<_> = writes
        .iter()
        .map(|w| string(&w.attributes, "target").expect("a target"))
        .collect();
    targets.sort_unstable();
    assert_eq!(targets, ["manifest", "snapshot"]);
    let (a, b) = (writes[0], writes[1]);
    assert_eq!(a.trace_id, rpc.trace_id);
    assert!(
        a.start_time_unix_nano < b.end_time_unix_nano
            && b.start_time_unix_nano < a.end_time_unix_nano,
        "the two writes overlap in time: {a:#?} {b:#?}"
    );
    for write in [a, b] {
        assert!(
            rpc.start_time_unix_nano <= write.start_time_unix_nano
                && write.end_time_unix_nano <= rpc.end_time_unix_nano,
            "a write lies within its RPC"
        );
    }

    // The latency histograms link to the trace: the RPC's to its span, the
    // writes' to theirs.
    let text = scrape_text(&server.metrics_addr).await;
    // A bucket's line: `name_bucket{le="…",labels} count # {exemplar} …`.
    let exemplar = |name: &str, labels: &str, span: &Span| {
        let wanted = format!(
            "# {{trace_id=\"{TRACE_ID}\",span_id=\"{}\"}}",
            hex(&span.span_id)
        );
        text.lines().any(|line| {
            line.starts_with(&format!("{name}_bucket{{"))
                && line.contains(&format!(",{labels}}}"))
                && line.contains(&wanted)
        })
    };
    let rpc_labels = "method=\"CompleteRun\",code=\"OK\"";
    let rpc_seconds = "runstore_rpc_duration_seconds";
    assert!(exemplar(rpc_seconds, rpc_labels, rpc), "{text}");
    for write in [a, b] {
        let target = string(&write.attributes, "target").expect("a target");
        let labels = format!("target=\"{target}\",code=\"OK\"");
        let write_seconds = "runstore_write_duration_seconds";
        assert!(exemplar(write_seconds, &labels, write), "{target}: {text}");
    }

    // Without a traceparent, a call starts a trace of its own.
    client
        .complete_run(complete_request("trace-task", "r2", &ts(2)))
        .await
        .expect("CompleteRun");
    let fresh = |spans: &[Received]| {
        spans
            .iter()
            .find(|r| r.span.name == "CompleteRun" && hex(&r.span.trace_id) != TRACE_ID)
            .map(|r| r.span.clone())
    };
    spans_until(&mut received, &mut spans, |spans| fresh(spans).is_some()).await;
    let second = fresh(&spans).expect("the second RPC span");
    assert!(second.parent_span_id.is_empty(), "a root span");
    assert_ne!(hex(&second.trace_id), "0".repeat(32));
    server.terminate().await;
}
contract_test!(a_complete_run_is_one_trace_with_overlapping_writes);

async fn spans_queued_at_shutdown_are_exported(backend: Backend) {
    let (endpoint, mut received) = start_receiver().await;
    let store = crate::helpers::TestStore::fresh(backend);
    // A batch delay no test waits out: only the shutdown flush exports.
    let server = traced_server(&store, &endpoint, "600000").await;
    let mut client = server.client().await;
    client
        .complete_run(complete_request("trace-task", "r1", &ts(1)))
        .await
        .expect("CompleteRun");
    assert!(server.terminate().await.success(), "exit 0");
    let mut spans = Vec::new();
    while let Ok(span) = received.try_recv() {
        spans.push(span);
    }
    let rpc = spans
        .iter()
        .find(|r| r.span.name == "CompleteRun")
        .unwrap_or_else(|| {
            panic!("the RPC span, exported by the time runstore exited: {spans:#?}")
        });
    assert_eq!(writes_of(&spans, &rpc.span).len(), 2, "{spans:#?}");
}
contract_test!(spans_queued_at_shutdown_are_exported, sqlite_only);

async fn without_an_endpoint_nothing_is_exported(backend: Backend) {
    let (endpoint, mut received) = start_receiver().await;
    // No endpoint; and the receiver's, but with the SDK switched off.
    let no_endpoint: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let disabled = &[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SDK_DISABLED", "true"),
    ];
    for env in [no_endpoint, disabled] {
        let store = crate::helpers::TestStore::fresh(backend);
        let server = start_server_with_env(&store, &[], env).await;
        let mut client = server.client().await;
        let mut call = Request::new(complete_request("trace-task", "r1", &ts(1)));
        let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
        call.metadata_mut()
            .insert("traceparent", traceparent.parse().expect("ASCII"));
        client.complete_run(call).await.expect("CompleteRun");
        let text = scrape_text(&server.metrics_addr).await;
        assert!(!text.contains("trace_id"), "no exemplars: {text}");
        // Once the process is gone, whatever it would have exported has been.
        assert!(server.terminate().await.success(), "exit 0");
        assert!(
            received.try_recv().is_err(),
            "nothing exported with {env:?}"
        );
    }
}
contract_test!(without_an_endpoint_nothing_is_exported, sqlite_only);
