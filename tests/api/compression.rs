//! Compressed calls: gzip and zstd requests are accepted, and replies are
//! compressed exactly for clients that accept it. Whether a reply was
//! compressed is read from its `grpc-encoding` header, which tonic hands to
//! the client as metadata. That a compressed request was accepted shows in
//! the call succeeding: a server without the encoding answers UNIMPLEMENTED.

use runstore::proto::{
    CompleteRunRequest, GetManifestRequest, Outcome,
    persistence_service_client::PersistenceServiceClient,
};
use sha2::{Digest, Sha256};
use tonic::{Code, codec::CompressionEncoding, metadata::MetadataMap, transport::Channel};

use crate::helpers::{
    Backend, RowCounts, Table, TestStore, complete_request, fixture_summary, spawn_app,
    spawn_app_with, ts, with_summary_limit,
};

/// The reply's `grpc-encoding`, if it has one.
fn encoding_of(metadata: &MetadataMap) -> Option<String> {
    metadata
        .get("grpc-encoding")
        .map(|value| value.to_str().expect("ASCII grpc-encoding").to_owned())
}

fn name(encoding: CompressionEncoding) -> &'static str {
    match encoding {
        CompressionEncoding::Gzip => "gzip",
        CompressionEncoding::Zstd => "zstd",
        other => panic!("unexpected encoding {other:?}"),
    }
}

/// A client that compresses its requests with `encoding` and accepts
/// replies compressed the same way.
fn compressing_client(
    channel: &Channel,
    encoding: CompressionEncoding,
) -> PersistenceServiceClient<Channel> {
    PersistenceServiceClient::new(channel.clone())
        .send_compressed(encoding)
        .accept_compressed(encoding)
        .max_decoding_message_size(64 << 20)
}

/// The fixture as sent, byte for byte, under its own ids.
fn fixture_request() -> CompleteRunRequest {
    let summary = fixture_summary();
    let doc: serde_json::Value = serde_json::from_str(&summary).expect("fixture");
    CompleteRunRequest {
        task_id: doc["taskId"].as_str().expect("taskId").into(),
        run_id: doc["runId"].as_str().expect("runId").into(),
        timestamp: "2026-01-05T19:26:37.274Z".into(),
        summary_json: summary,
    }
}

async fn gzip_and_zstd_clients_round_trip_the_exact_bytes(backend: Backend) {
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let app = spawn_app(backend).await;
        let mut client = compressing_client(&app.channel, encoding);
        let request = fixture_request();
        let summary = request.summary_json.clone();
        let (task_id, run_id) = (request.task_id.clone(), request.run_id.clone());

        let reply = client.complete_run(request).await.expect("CompleteRun");
        assert_eq!(
            encoding_of(reply.metadata()).as_deref(),
            Some(name(encoding)),
            "CompleteRun reply encoding"
        );
        let reply = reply.into_inner();
        assert_eq!(reply.outcome(), Outcome::AllWritten, "{encoding:?}");
        assert_eq!(
            reply.manifest.expect("manifest status").bytes,
            summary.len() as u64
        );

        let read = client
            .get_manifest(GetManifestRequest {
                task_id: task_id.clone(),
                run_id: run_id.clone(),
                ..Default::default()
            })
            .await
            .expect("GetManifest");
        assert_eq!(
            encoding_of(read.metadata()).as_deref(),
            Some(name(encoding)),
            "GetManifest reply encoding"
        );
        let read = read.into_inner();
        assert_eq!(read.summary_json.as_bytes(), summary.as_bytes());
        assert_eq!(
            read.sha256,
            format!("{:x}", Sha256::digest(summary.as_bytes()))
        );

        // Stored uncompressed: the rows hold the summary as sent.
        let db = app.db();
        for table in [Table::Manifests, Table::SnapshotEntries] {
            let row = db.row(table, &task_id, &run_id).expect("row");
            assert_eq!(row.summary, summary.as_bytes(), "{table:?}");
        }
        app.stop().await;
    }
}
contract_test!(gzip_and_zstd_clients_round_trip_the_exact_bytes);

async fn replies_are_compressed_only_for_clients_that_accept_it(backend: Backend) {
    let app = spawn_app(backend).await;

    // Negative control: a plain client gets a plain reply.
    let reply = app
        .client()
        .complete_run(complete_request("plain", "run-1", &ts(1)))
        .await
        .expect("CompleteRun");
    assert_eq!(encoding_of(reply.metadata()), None);
    assert_eq!(reply.into_inner().outcome(), Outcome::AllWritten);

    // Compressing its request does not make the reply compressed.
    let mut send_only = PersistenceServiceClient::new(app.channel.clone())
        .send_compressed(CompressionEncoding::Gzip);
    let reply = send_only
        .complete_run(complete_request("send-only", "run-1", &ts(1)))
        .await
        .expect("CompleteRun");
    assert_eq!(encoding_of(reply.metadata()), None);
    assert_eq!(reply.into_inner().outcome(), Outcome::AllWritten);
    let read = send_only
        .get_manifest(GetManifestRequest {
            task_id: "send-only".into(),
            run_id: "run-1".into(),
            ..Default::default()
        })
        .await
        .expect("GetManifest");
    assert_eq!(encoding_of(read.metadata()), None);

    // The reply follows what the client accepts, not what it sent.
    let mut mixed = PersistenceServiceClient::new(app.channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);
    let reply = mixed
        .complete_run(complete_request("mixed", "run-1", &ts(1)))
        .await
        .expect("CompleteRun");
    assert_eq!(encoding_of(reply.metadata()).as_deref(), Some("zstd"));
    assert_eq!(reply.into_inner().outcome(), Outcome::AllWritten);
    app.stop().await;
}
contract_test!(replies_are_compressed_only_for_clients_that_accept_it);

async fn size_limits_apply_to_the_decompressed_request(backend: Backend) {
    let store = TestStore::fresh(backend);
    let (options, settings) = with_summary_limit(64 * 1024);
    let storage = store.open(&options).await;
    let app = spawn_app_with(store, storage, settings).await;
    let padded = |size: usize| {
        let mut request = complete_request("task", "run-1", &ts(1));
        request.summary_json = format!(
            "{{\"taskId\":\"task\",\"runId\":\"run-1\",\"pad\":\"{}\"}}",
            "x".repeat(size)
        );
        request
    };

    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut client = compressing_client(&app.channel, encoding);
        // Over the summary limit: a few hundred bytes on the wire,
        // still refused by the service.
        let err = client
            .complete_run(padded(100 * 1024))
            .await
            .expect_err("oversized summary");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("summary_json"), "{}", err.message());

        // Far over the decoding limit (a decompression bomb): the
        // codec stops decompressing at the limit.
        let err = client
            .complete_run(padded(16 * 1024 * 1024))
            .await
            .expect_err("oversized message");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("size limit"), "{}", err.message());
    }
    assert_eq!(app.db().row_counts(), RowCounts::default());

    // The server carries on.
    let mut client = compressing_client(&app.channel, CompressionEncoding::Gzip);
    let reply = client
        .complete_run(padded(1024))
        .await
        .expect("CompleteRun")
        .into_inner();
    assert_eq!(reply.outcome(), Outcome::AllWritten);
    app.stop().await;
}
contract_test!(size_limits_apply_to_the_decompressed_request);
