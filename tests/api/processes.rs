//! The real binary: several processes sharing one store, and SIGTERM.

use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    helpers::{
        Backend, SERVICE_NAME, Table, TestStore, all_runs, wait_for_service, write_all_at_once,
    },
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

/// Several processes opening a fresh data dir at once all come up, and
/// each migration is applied exactly once: they queue on SQLite's write lock
/// (PostgreSQL's replicas have their own test in `postgres.rs`).
async fn processes_opening_a_fresh_data_dir_together_migrate_once(backend: Backend) {
    let store = TestStore::fresh(backend);
    let servers = futures::future::join_all((0..4).map(|_| start_server(&store, &[]))).await;
    for server in &servers {
        let channel = server.channel().await;
        wait_for_service(&channel, SERVICE_NAME, ServingStatus::Serving).await;
    }
    let db = rusqlite::Connection::open(store.data_dir().join("runstore.db")).expect("open db");
    let versions: Vec<(i64, i64)> = db
        .prepare(
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version",
        )
        .expect("query")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("read");
    let expected: Vec<(i64, i64)> = runstore::storage::migrations::SQLITE
        .iter()
        .map(|m| (m.version, 1))
        .collect();
    assert_eq!(versions, expected, "each migration applied once");
    for server in servers {
        assert_eq!(server.terminate().await.code(), Some(0));
    }
}
contract_test!(
    processes_opening_a_fresh_data_dir_together_migrate_once,
    sqlite_only
);
