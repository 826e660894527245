//! The real binary: several processes sharing one store, and SIGTERM.

use crate::{
    helpers::{Backend, Table, TestStore, all_runs, write_all_at_once},
    server_process::start_server,
};

async fn two_processes_sharing_a_store_never_lose_a_run(backend: Backend) {
    let store = TestStore::fresh(backend);
    let servers = [
        start_server(&store, &[]).await,
        start_server(&store, &[]).await,
    ];
    let clients = [servers[0].client().await, servers[1].client().await];

    // 200 writes at once, every other one to each process.
    write_all_at_once(&clients, "shared", 200, |i| i).await;

    let expected: Vec<_> = (0..200).map(|i| format!("run-{i:03}")).collect();
    for client in &clients {
        let runs = all_runs(&mut client.clone(), "shared", 1000)
            .await
            .expect("snapshot");
        let ids: Vec<_> = runs.iter().map(|r| r.run_id.clone()).collect();
        assert_eq!(ids, expected, "both processes see every run, in order");
    }
    let db = store.db();
    assert_eq!(db.count(Table::SnapshotEntries, "shared"), 200);
    assert_eq!(db.count(Table::Manifests, "shared"), 200);

    for server in servers {
        let status = server.terminate().await;
        assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    }
}
contract_test!(two_processes_sharing_a_store_never_lose_a_run);
