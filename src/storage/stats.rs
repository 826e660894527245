//! What only a backend knows, for the metrics: the storage layer's one
//! stats interface. Each write's latency and outcome are measured around
//! any `Storage` (by the server's metrics); this is what cannot be seen
//! from outside a backend. Read at each scrape.

use prometheus_client::metrics::histogram::Histogram;

#[derive(Debug, Clone, Default)]
pub struct StorageStats {
    /// SQLite's group commit.
    pub group_commit: Option<GroupCommitStats>,
    /// SQLite: bytes in the write-ahead log, until a checkpoint truncates it.
    pub wal_bytes: Option<u64>,
    /// PostgreSQL's connection pool.
    pub pool: Option<PoolStats>,
}

/// Kept by the committer, one observation per commit; clones share them.
#[derive(Debug, Clone)]
pub struct GroupCommitStats {
    /// Writes covered by one commit (and its one WAL fsync).
    pub batch_writes: Histogram,
    /// A batch's transaction, from its first statement to the end of its
    /// commit.
    pub commit_seconds: Histogram,
}

impl Default for GroupCommitStats {
    fn default() -> Self {
        Self {
            // 1, 2, 4 … 1024: MAX_BATCH is 512.
            batch_writes: Histogram::new((0..11).map(|i| f64::from(1u32 << i))),
            // 50 µs … ~1.6 s.
            commit_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 16),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// The configured most connections (`--postgres-pool-size`).
    pub max: u64,
    /// Connections open now.
    pub open: u64,
    /// Of those, the ones lent out to a statement.
    pub in_use: u64,
    /// Callers waiting for a connection.
    pub waiting: u64,
}
