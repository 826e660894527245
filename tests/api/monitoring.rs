//! The dashboard and the alert rules in `deploy/monitoring/` name only
//! metrics the server really exports: every `runstore_*` name in them is
//! checked against scrapes of the real binary on both backends (a metric
//! only one backend has, like the WAL size or the pool, counts once either
//! has it). A misspelled name is caught (negative control).

use std::collections::BTreeSet;

use crate::{
    helpers::{Backend, On, Table, TestStore, complete_request, ts},
    metrics::scrape_text,
    server_process::start_server,
};

const DASHBOARD: &str = include_str!("../../deploy/monitoring/dashboard.json");
const ALERTS: &str = include_str!("../../deploy/monitoring/alerts.yaml");

/// The sample names a scrape can hold, from its `# TYPE` lines, so a
/// family with no sample yet counts too.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_count", "_sum"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Every `runstore_…` metric name in a file.
fn named_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("runstore_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

fn missing(file: &str, exported: &BTreeSet<String>) -> Vec<String> {
    named_metrics(file)
        .into_iter()
        .filter(|name| !exported.contains(name))
        .collect()
}

/// A scrape after one good call and one failed write: a labelled family
/// shows in a scrape only once it has a series.
async fn scrape(backend: Backend) -> String {
    let store = TestStore::fresh(backend);
    let server = start_server(&store, &[]).await;
    let mut client = server.client().await;
    client
        .complete_run(complete_request("monitoring", "r1", &ts(1)))
        .await
        .expect("CompleteRun");
    let db = store.db();
    let fault = db.inject_fault(Table::Manifests, "monitoring-doomed", &[On::Insert]);
    client
        .complete_run(complete_request("monitoring-doomed", "r1", &ts(1)))
        .await
        .expect("CompleteRun");
    db.remove_fault(fault);
    scrape_text(&server.metrics_addr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_name_only_exported_metrics() {
    let mut exported = exported_names(&scrape(Backend::Sqlite).await);
    exported.extend(exported_names(&scrape(Backend::Postgres).await));
    assert!(exported.contains("runstore_sqlite_wal_size_bytes"));
    assert!(exported.contains("runstore_postgres_pool_in_use"));

    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "a panel per concern");
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}: no query", panel["title"]);
    }
    for (file, text) in [("dashboard.json", DASHBOARD), ("alerts.yaml", ALERTS)] {
        assert!(
            named_metrics(text).len() >= 4,
            "{file} names metrics: {:?}",
            named_metrics(text)
        );
        assert_eq!(
            missing(text, &exported),
            Vec::<String>::new(),
            "{file} names metrics the server does not export"
        );
    }
    for alert in [
        "RunstoreNotReady",
        "RunstoreWriteFailures",
        "RunstoreCompleteRunSlow",
        "RunstoreShedding",
    ] {
        assert!(ALERTS.contains(&format!("alert: {alert}")), "{alert}");
    }

    // Negative control: one letter off is reported.
    let broken = ALERTS.replace(
        "runstore_write_failures_total",
        "runstore_write_failure_total",
    );
    assert_eq!(
        missing(&broken, &exported),
        ["runstore_write_failure_total"]
    );
}
