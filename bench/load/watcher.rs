//! WatchRuns followers for the fan-out scenarios: N watchers, each on its
//! own HTTP/2 connection (as N separate consumers would be), following the
//! feed from now while a CompleteRun load runs. Each keeps one bit per run
//! number the load may write, so that afterwards it can be checked to have
//! received a COMPLETED event for every acknowledged run, and the delivery
//! latency of every event: its `recorded_at` (set by the server inside the
//! write transaction, so slightly before the commit) to the moment the
//! watcher decoded it, on the same machine's clock.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use runstore::proto::{
    RunEventKind, WatchRunsRequest, WatchRunsResponse,
    persistence_service_client::PersistenceServiceClient,
};
use tokio::{sync::watch, task::JoinSet};
use tonic::{Streaming, transport::Channel};

use crate::client::{connect, run_number};

/// Re-opened streams one watcher may need (after a WATCHER_BEHIND or any
/// other final status) before it gives up.
const MAX_RESUMES: u64 = 100;

/// What one watcher, or all of them together, received.
#[derive(Debug, Default)]
pub struct Watched {
    pub watchers: usize,
    /// Events received, in all.
    pub events: u64,
    /// Acknowledged runs a watcher got no COMPLETED event for, summed over
    /// the watchers.
    pub missing: u64,
    /// A run's COMPLETED event received twice by one watcher.
    pub duplicates: u64,
    /// Events that are not COMPLETED events of a run the load wrote.
    pub unexpected: u64,
    /// Streams re-opened from the last cursor after a final status.
    pub resumes: u64,
    /// Events received before their recorded_at (clock steps): counted as
    /// zero latency.
    pub early: u64,
    /// Why a watcher stopped short (the first such reason).
    pub failure: Option<String>,
    /// recorded_at to receipt of every event, microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// How long after the load ended the slowest watcher had every event.
    pub caught_up: Duration,
}

impl Watched {
    /// Adds another's figures (`sort` the latencies after the last merge).
    pub fn merge(&mut self, other: Watched) {
        self.watchers = self.watchers.max(other.watchers);
        self.events += other.events;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.unexpected += other.unexpected;
        self.resumes += other.resumes;
        self.early += other.early;
        self.failure = self.failure.take().or(other.failure);
        self.latencies_us.extend(other.latencies_us);
        self.caught_up = self.caught_up.max(other.caught_up);
    }

    pub fn sort(&mut self) {
        self.latencies_us.sort_unstable();
    }

    /// What is wrong with what they received, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(failure) = &self.failure {
            problems.push(format!("a watcher failed: {failure}"));
        }
        if self.missing > 0 {
            problems.push(format!(
                "watchers missed {} COMPLETED events of acknowledged runs",
                self.missing
            ));
        }
        if self.duplicates > 0 {
            problems.push(format!("watchers got {} duplicate events", self.duplicates));
        }
        if self.unexpected > 0 {
            problems.push(format!(
                "watchers got {} events of runs the load did not write",
                self.unexpected
            ));
        }
        problems
    }
}

/// One watcher's own record.
struct Follower {
    /// A bit per run number below the load's call cap.
    seen: Vec<u64>,
    watched: Watched,
    last_cursor: Option<String>,
}

impl Follower {
    fn new(max_runs: u64) -> Self {
        Self {
            seen: vec![0; max_runs.div_ceil(64) as usize],
            watched: Watched {
                watchers: 1,
                ..Watched::default()
            },
            last_cursor: None,
        }
    }

    /// Records one event; returns whether it was a run's first COMPLETED.
    fn record(&mut self, message: WatchRunsResponse) -> bool {
        let received = micros_since_epoch(SystemTime::now());
        let w = &mut self.watched;
        w.events += 1;
        let Some(event) = message.event else {
            w.unexpected += 1;
            return false;
        };
        self.last_cursor = Some(event.cursor.clone());
        match chrono::DateTime::parse_from_rfc3339(&event.recorded_at) {
            Ok(at) => {
                let latency = received - at.timestamp_micros();
                if latency < 0 {
                    w.early += 1;
                }
                w.latencies_us
                    .push(u32::try_from(latency.max(0)).unwrap_or(u32::MAX));
            }
            Err(_) => {
                w.failure.get_or_insert_with(|| {
                    format!("unparsable recorded_at {:?}", event.recorded_at)
                });
            }
        }
        let run = run_number(&event.run_id).filter(|&n| (n / 64) < self.seen.len() as u64);
        match run {
            Some(n) if event.kind() == RunEventKind::Completed => {
                let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
                if self.seen[word] & bit != 0 {
                    w.duplicates += 1;
                    false
                } else {
                    self.seen[word] |= bit;
                    true
                }
            }
            _ => {
                w.unexpected += 1;
                false
            }
        }
    }

    /// Counts the runs in `0..runs` it has no event for.
    fn missing_below(&self, runs: u64) -> u64 {
        (0..runs)
            .filter(|&n| self.seen[(n / 64) as usize] & (1 << (n % 64)) == 0)
            .count() as u64
    }
}

fn micros_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Opens a WatchRuns stream; it returns once the server answered with its
/// headers, by which time the watch is positioned (its start cursor taken
/// in the handler), so every event committed after this returns reaches it.
async fn open(
    client: &mut PersistenceServiceClient<Channel>,
    after: String,
) -> anyhow::Result<Streaming<WatchRunsResponse>> {
    Ok(client
        .watch_runs(WatchRunsRequest {
            task_prefix: String::new(),
            after,
        })
        .await
        .context("WatchRuns")?
        .into_inner())
}

/// N watchers following the feed.
pub struct Watchers {
    tasks: JoinSet<Follower>,
    /// Distinct runs each has a COMPLETED event for so far.
    progress: Vec<Arc<AtomicU64>>,
    stop: watch::Sender<bool>,
}

impl Watchers {
    /// Opens `n` watchers from now, each on its own connection; returns
    /// when every one is positioned. Each records run numbers below
    /// `max_runs` (the load's call cap) and stops at the latest at
    /// `deadline`, or after `max_runs` + 1000 events.
    pub async fn start(
        addr: SocketAddr,
        n: usize,
        max_runs: u64,
        deadline: Instant,
    ) -> anyhow::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut progress = Vec::with_capacity(n);
        for _ in 0..n {
            let mut client = PersistenceServiceClient::new(connect(addr).await?);
            let mut stream = open(&mut client, String::new()).await?;
            let distinct = Arc::new(AtomicU64::new(0));
            progress.push(Arc::clone(&distinct));
            let mut stopped = stopped.clone();
            tasks.spawn(async move {
                let mut me = Follower::new(max_runs);
                let max_events = max_runs + 1000;
                let deadline = tokio::time::Instant::from_std(deadline);
                loop {
                    let message = tokio::select! {
                        biased;
                        _ = stopped.changed() => break,
                        () = tokio::time::sleep_until(deadline) => {
                            me.watched.failure.get_or_insert_with(|| "ran past its deadline".into());
                            break;
                        }
                        message = stream.message() => message,
                    };
                    let ended = match message {
                        Ok(Some(message)) => {
                            if me.record(message) {
                                distinct.fetch_add(1, Ordering::Relaxed);
                            }
                            if me.watched.events >= max_events {
                                me.watched.failure.get_or_insert_with(|| {
                                    format!("more than {max_events} events")
                                });
                                break;
                            }
                            continue;
                        }
                        Ok(None) => "the stream ended without a status".to_owned(),
                        Err(status) => format!("{:?}: {}", status.code(), status.message()),
                    };
                    // A final status (WATCHER_BEHIND carries the cursor of
                    // the last event delivered, the one we hold): resume
                    // exactly after the last event received, as a client
                    // should.
                    me.watched.resumes += 1;
                    let Some(after) = me.last_cursor.clone() else {
                        me.watched.failure.get_or_insert(format!(
                            "{ended}, before any event (no cursor to resume from)"
                        ));
                        break;
                    };
                    if me.watched.resumes > MAX_RESUMES {
                        me.watched
                            .failure
                            .get_or_insert(format!("{ended}, {MAX_RESUMES} times"));
                        break;
                    }
                    match open(&mut client, after).await {
                        Ok(resumed) => stream = resumed,
                        Err(err) => {
                            me.watched
                                .failure
                                .get_or_insert(format!("{ended}; resuming: {err:#}"));
                            break;
                        }
                    }
                }
                me
            });
        }
        Ok(Self {
            tasks,
            progress,
            stop,
        })
    }

    /// Waits (at most `timeout`) until every watcher has an event for each
    /// of the `acked` acknowledged runs, stops them and checks what they got
    /// against runs `0..written` (the run numbers the load used, `acked`
    /// of them acknowledged: all of them when no call failed).
    pub async fn finish(
        mut self,
        acked: u64,
        written: u64,
        timeout: Duration,
    ) -> anyhow::Result<Watched> {
        let load_ended = Instant::now();
        while load_ended.elapsed() < timeout
            && self
                .progress
                .iter()
                .any(|p| p.load(Ordering::Relaxed) < acked)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let caught_up = load_ended.elapsed();
        let _ = self.stop.send(true);
        let mut total = Watched {
            caught_up,
            ..Watched::default()
        };
        let n = self.progress.len();
        while let Some(follower) = self.tasks.join_next().await {
            let follower = follower.context("watcher panicked")?;
            let missing = follower
                .missing_below(written)
                .saturating_sub(written - acked);
            let mut w = follower.watched;
            w.missing = missing;
            w.caught_up = Duration::ZERO;
            total.merge(w);
        }
        total.watchers = n;
        total.sort();
        Ok(total)
    }
}
