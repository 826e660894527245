//! Readers of a long history: eight clients paging through a 10,000-run
//! task at once, at the largest page size, keep the real binary's peak
//! resident memory (VmHWM) under 100 MiB. Pages are built from a keyset
//! seek, never by loading the history.

use std::time::Instant;

use futures::StreamExt;
use runstore::proto::{Outcome, persistence_service_client::PersistenceServiceClient};

use crate::{
    helpers::{Backend, Table, TestStore, all_runs, complete_request, ts, within},
    server_process::start_server,
};

const RUNS: u32 = 10_000;
const READERS: usize = 8;
const WRITERS: usize = 128;
const LIMIT_MIB: u64 = 100;

async fn eight_readers_of_a_10000_run_task_stay_under_100_mib(backend: Backend) {
    let store = TestStore::fresh(backend);
    let server = start_server(&store, &[]).await;
    let baseline = server.peak_rss_kib();

    // Many concurrent calls over a few connections.
    let started = Instant::now();
    let clients: Vec<_> = futures::future::join_all((0..4).map(|_| server.client())).await;
    let written = futures::stream::iter(0..RUNS)
        .map(|i| {
            let mut client = clients[i as usize % clients.len()].clone();
            async move {
                let reply = client
                    .complete_run(complete_request("long", &format!("run-{i:05}"), &ts(i)))
                    .await
                    .expect("CompleteRun")
                    .into_inner();
                assert_eq!(
                    reply.outcome(),
                    Outcome::AllWritten,
                    "{:?}",
                    reply.primary_error
                );
            }
        })
        .buffer_unordered(WRITERS)
        .count();
    assert_eq!(within("10,000 writes", written).await, RUNS as usize);
    let write_time = started.elapsed();
    assert_eq!(
        store.db().count(Table::SnapshotEntries, "long"),
        RUNS as i64
    );
    let after_writes = server.peak_rss_kib();

    // Eight readers at once, each on its own connection with the default
    // 4 MiB receive limit, at the largest page size.
    let started = Instant::now();
    let readers = (0..READERS).map(|_| {
        let server = &server;
        async move {
            let channel = server.channel().await;
            let mut client = PersistenceServiceClient::new(channel);
            all_runs(&mut client, "long", 1000).await
        }
    });
    let results = within("eight full reads", futures::future::join_all(readers)).await;
    let read_time = started.elapsed();
    let expected: Vec<String> = (0..RUNS).map(|i| format!("run-{i:05}")).collect();
    for runs in results {
        let runs = runs.expect("a full read");
        let ids: Vec<_> = runs.into_iter().map(|r| r.run_id).collect();
        assert_eq!(ids, expected, "every run once, in order");
    }
    let peak = server.peak_rss_kib();
    println!(
        "reader memory: runs={RUNS} written_in={write_time:?} readers={READERS} page_size=1000 \
         read_in={read_time:?} baseline_rss_mib={} after_writes_peak_rss_mib={} \
         peak_rss_mib={} (limit {LIMIT_MIB})",
        baseline / 1024,
        after_writes / 1024,
        peak / 1024
    );
    assert!(peak / 1024 < LIMIT_MIB, "peak RSS {} MiB", peak / 1024);
    assert_eq!(server.terminate().await.code(), Some(0));
}
contract_test!(eight_readers_of_a_10000_run_task_stay_under_100_mib);
