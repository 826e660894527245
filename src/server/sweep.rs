//! The background sweep: every `--sweep-interval` it expires runs
//! (`--retain-for`, `--retain-runs`) and prunes events older than
//! `--event-retention`, then hands free space back to the file system. All of it in bounded steps, each a short commit of
//! its own, so writers never wait long behind it and a crash in mid-sweep
//! leaves every run whole or removed with its EXPIRED event.

use std::{
    num::NonZeroU64,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::storage::{ExpireRule, RunInstant, Storage, StorageError};

/// Most retention steps in one tick (each removes at most
/// `storage::retention::EXPIRE_BATCH` runs); what is left waits for the
/// next tick, where `--retain-runs` resumes its walk where it stopped.
const MAX_STEPS_PER_TICK: usize = 200;

/// How often the sweep runs and what it removes.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    pub interval: Duration,
    /// Events older than this are pruned; a cursor before them gets
    /// OUT_OF_RANGE.
    pub event_retention: Duration,
    /// Runs whose timestamp is older than this expire.
    pub retain_for: Option<Duration>,
    /// Each task keeps its newest this many runs; older ones expire.
    pub retain_runs: Option<NonZeroU64>,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            event_retention: Duration::from_secs(7 * 24 * 3600),
            retain_for: None,
            retain_runs: None,
        }
    }
}

/// Sweeps until `stop` is cancelled.
pub async fn run(
    storage: Arc<dyn Storage>,
    settings: SweepSettings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut sweep = Sweep {
        storage,
        settings,
        metrics,
        walk_from: String::new(),
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
        // A step in flight when `stop` fires is one transaction: it commits
        // or rolls back whole, so the tick may simply be dropped.
        tokio::select! {
            () = stop.cancelled() => return,
            () = sweep.tick() => {}
        }
    }
}

struct Sweep {
    storage: Arc<dyn Storage>,
    settings: SweepSettings,
    metrics: Arc<Metrics>,
    /// Where the `--retain-runs` walk over the tasks resumes.
    walk_from: String,
}

impl Sweep {
    async fn tick(&mut self) {
        let tick_started = Instant::now();
        let mut expired = 0;
        let outcome = self.expire(&mut expired).await;
        if expired > 0 {
            tracing::info!(
                expired,
                millis = tick_started.elapsed().as_millis() as u64,
                "expired runs"
            );
        }
        if let Err(err) = outcome {
            tracing::warn!(error = %err, "expiring runs failed; next sweep retries");
        }
        let started = Instant::now();
        let before = SystemTime::now()
            .checked_sub(self.settings.event_retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match self.storage.prune_events(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(
                pruned,
                millis = started.elapsed().as_millis() as u64,
                "pruned old events"
            ),
            Err(err) => tracing::warn!(error = %err, "pruning events failed; next sweep retries"),
        }
        match self.storage.reclaim_space().await {
            Ok(0) => {}
            Ok(bytes) => tracing::debug!(bytes, "handed free space back to the file system"),
            Err(err) => {
                tracing::warn!(error = %err, "reclaiming free space failed; next sweep retries")
            }
        }
        self.metrics.swept(expired, tick_started.elapsed());
    }

    /// Runs retention's steps, at most [`MAX_STEPS_PER_TICK`] of them,
    /// adding the runs each committed step expired to `expired`.
    async fn expire(&mut self, expired: &mut u64) -> Result<(), StorageError> {
        let mut steps = 0;
        if let Some(age) = self.settings.retain_for {
            let mut rule = Some(ExpireRule::Before(horizon(age)));
            while let Some(current) = rule.take() {
                if steps == MAX_STEPS_PER_TICK {
                    return Ok(());
                }
                steps += 1;
                let step = self.storage.expire(&current).await?;
                *expired += step.expired;
                rule = step.next;
            }
        }
        if let Some(keep) = self.settings.retain_runs {
            let mut rule = Some(ExpireRule::KeepNewest {
                keep: keep.get(),
                from: std::mem::take(&mut self.walk_from),
            });
            while let Some(current) = rule.take() {
                if steps == MAX_STEPS_PER_TICK {
                    if let ExpireRule::KeepNewest { from, .. } = current {
                        self.walk_from = from;
                    }
                    return Ok(());
                }
                steps += 1;
                let step = match self.storage.expire(&current).await {
                    Ok(step) => step,
                    Err(err) => {
                        // Resume the walk where it failed.
                        if let ExpireRule::KeepNewest { from, .. } = current {
                            self.walk_from = from;
                        }
                        return Err(err);
                    }
                };
                *expired += step.expired;
                rule = step.next;
            }
        }
        Ok(())
    }
}

/// The instant `age` ago: runs whose timestamp names an earlier one expire.
/// An age beyond chrono's range expires nothing.
fn horizon(age: Duration) -> RunInstant {
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
        .map_or(
            RunInstant {
                secs: i64::MIN,
                nanos: 0,
            },
            |at| RunInstant {
                secs: at.timestamp(),
                nanos: at.timestamp_subsec_nanos(),
            },
        )
}
