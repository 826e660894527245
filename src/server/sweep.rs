//! The background sweep: every `--sweep-interval`, events older than
//! `--event-retention` are pruned in bounded steps (each a short commit of
//! its own, so writers never wait long behind it).

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio_util::sync::CancellationToken;

use crate::storage::Storage;

/// How often the sweep runs and what it removes.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    pub interval: Duration,
    /// Events older than this are pruned; a cursor before them gets
    /// OUT_OF_RANGE.
    pub event_retention: Duration,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            event_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Sweeps until `stop` is cancelled.
pub async fn run(storage: Arc<dyn Storage>, settings: SweepSettings, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
        let started = Instant::now();
        let before = SystemTime::now()
            .checked_sub(settings.event_retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match storage.prune_events(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(
                pruned,
                millis = started.elapsed().as_millis() as u64,
                "pruned old events"
            ),
            Err(err) => tracing::warn!(error = %err, "pruning events failed; next sweep retries"),
        }
    }
}
