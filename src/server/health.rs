//! Serving state for `grpc.health.v1`, split as Kubernetes probes need it:
//!
//! - `""` is liveness: SERVING from the moment the port is bound until
//!   shutdown begins, whatever storage does, so a full disk or a database
//!   outage makes the pod unready instead of restarting it;
//! - the persistence service's name is readiness: SERVING only while
//!   storage passed its latest probe (a real durable write) and shutdown has
//!   not begun.

use std::{sync::Arc, time::Duration};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::{ServingStatus, server::HealthReporter};

use super::metrics::Metrics;
use crate::{
    api::PersistenceApi, proto::persistence_service_server::PersistenceServiceServer,
    storage::Storage,
};

/// Liveness: the process.
const LIVENESS: &str = "";
/// Readiness: the persistence service and its storage.
const READINESS: &str = <PersistenceServiceServer<PersistenceApi> as NamedService>::NAME;

#[derive(Debug, Default)]
struct Inputs {
    storage_ok: bool,
    shutting_down: bool,
}

/// The health reporter plus what it reports on.
#[derive(Clone)]
pub struct HealthState {
    reporter: HealthReporter,
    // A mutex so a probe finishing just as shutdown begins cannot report
    // SERVING after shutdown reported NOT_SERVING.
    inputs: Arc<Mutex<Inputs>>,
}

impl HealthState {
    /// Starts live and not ready: nothing is served before storage proves
    /// writable.
    pub async fn new(reporter: HealthReporter) -> Self {
        let state = Self {
            reporter,
            inputs: Arc::default(),
        };
        state.publish(&Inputs::default()).await;
        state
    }

    pub async fn storage_checked(&self, ok: bool) {
        let mut inputs = self.inputs.lock().await;
        if inputs.storage_ok != ok {
            inputs.storage_ok = ok;
            self.publish(&inputs).await;
        }
    }

    /// Reports NOT_SERVING from now on.
    pub async fn begin_shutdown(&self) {
        let mut inputs = self.inputs.lock().await;
        inputs.shutting_down = true;
        self.publish(&inputs).await;
    }

    /// Ends every open Watch stream. The server closes connections by
    /// waiting for their open streams, and a watcher would otherwise hold
    /// shutdown for the whole grace period.
    pub async fn end_watches(&self) {
        let mut reporter = self.reporter.clone();
        for name in [LIVENESS, READINESS] {
            reporter.clear_service_status(name).await;
        }
    }

    async fn publish(&self, inputs: &Inputs) {
        let status = |up: bool| {
            if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let live = !inputs.shutting_down;
        self.reporter
            .set_service_status(LIVENESS, status(live))
            .await;
        self.reporter
            .set_service_status(READINESS, status(live && inputs.storage_ok))
            .await;
    }
}

/// Probes storage with a durable write every `interval` until `stop`.
pub async fn monitor_storage(
    storage: Arc<dyn Storage>,
    health: HealthState,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut was_ok = None;
    loop {
        let ok = match storage.check_health().await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "storage health probe failed");
                false
            }
        };
        if was_ok != Some(ok) {
            tracing::info!(storage_ok = ok, "storage health changed");
            was_ok = Some(ok);
        }
        health.storage_checked(ok).await;
        metrics.storage_ready(ok);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
