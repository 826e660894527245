//! The real release server as a child process on 127.0.0.1:0, on SQLite (a
//! data dir) or PostgreSQL (a URL); its JSON log, its CPU time from /proc,
//! the machine's, and what its SQLite database holds after it stopped.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

/// How long the server may take to log "listening".
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// Where the server keeps its data.
#[derive(Debug, Clone, Copy)]
pub enum Storage<'a> {
    /// SQLite in this data dir (`--data-dir`).
    Sqlite(&'a Path),
    /// PostgreSQL at this URL (`RUNSTORE_STORAGE`), with this many pooled
    /// connections (`--postgres-pool-size`).
    Postgres { url: &'a str, pool_size: usize },
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// SQLite's data dir; `None` on PostgreSQL.
    data_dir: Option<PathBuf>,
    log: Arc<Mutex<Vec<Value>>>,
    reader: Option<thread::JoinHandle<()>>,
}

/// What the server said about group commit when it stopped.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitReport {
    pub commits: u64,
    pub writes: u64,
    pub pairs_together_share: f64,
    /// `run not fully written` warnings: writes that failed inside a call
    /// that still answered OK at the gRPC level.
    pub partial_runs: u64,
    /// WAL checkpoints the server logged (a checkpointer thread's, where
    /// it has one): how many, how many copied every frame of the WAL, the
    /// largest WAL one saw (frames) and the longest one.
    pub checkpoints: u64,
    pub checkpoints_complete: u64,
    pub checkpoint_max_frames: u64,
    pub checkpoint_max_micros: u64,
}

impl Server {
    pub fn start(bin: &Path, storage: Storage<'_>, write_mode: &str) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--write-mode", write_mode]);
        let data_dir = match storage {
            Storage::Sqlite(dir) => {
                // An inherited RUNSTORE_STORAGE would send it to PostgreSQL.
                cmd.env_remove("RUNSTORE_STORAGE")
                    .arg("--data-dir")
                    .arg(dir);
                Some(dir.to_path_buf())
            }
            Storage::Postgres { url, pool_size } => {
                cmd.env("RUNSTORE_STORAGE", url)
                    .args(["--postgres-pool-size", &pool_size.to_string()]);
                None
            }
        };
        let mut child = cmd
            // The checkpointer thread (where there is one) logs each WAL
            // checkpoint at debug: four lines a second at most.
            .env(
                "RUST_LOG",
                "info,runstore::storage::sqlite::checkpointer=debug",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (listening, addr) = mpsc::channel();
        let reader = {
            let log = Arc::clone(&log);
            thread::spawn(move || read_log(stdout, &log, &listening))
        };
        let addr = match addr.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not log \"listening\" within {START_TIMEOUT:?}");
            }
        };
        Ok(Self {
            child,
            addr,
            data_dir,
            log,
            reader: Some(reader),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time of the server process so far, in ticks.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        Ok(proc_stat(self.pid())?.own())
    }

    /// SQLite's WAL file; `None` on PostgreSQL.
    pub fn wal_path(&self) -> Option<PathBuf> {
        Some(self.data_dir.as_ref()?.join("runstore.db-wal"))
    }

    /// SIGTERM, then waits (bounded) for a clean exit and reads its log:
    /// the partial runs, and on SQLite the group commit line (required)
    /// and the checkpoints.
    pub fn stop(mut self) -> anyhow::Result<CommitReport> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        let asked = Instant::now();
        let exit = loop {
            if let Some(exit) = self.child.try_wait()? {
                break exit;
            }
            if asked.elapsed() > STOP_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the server did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if !exit.success() {
            bail!("the server exited with {exit} after SIGTERM");
        }
        let log = self.log.lock().map_err(|_| anyhow::anyhow!("log lock"))?;
        let mut report = CommitReport::default();
        let mut found = false;
        for line in log.iter() {
            match line["message"].as_str() {
                Some("sqlite group commit stopped") => {
                    found = true;
                    report.commits = line["commits"].as_u64().unwrap_or_default();
                    report.writes = line["writes"].as_u64().unwrap_or_default();
                    report.pairs_together_share =
                        line["pairs_together_share"].as_f64().unwrap_or(f64::NAN);
                }
                Some("run not fully written") => report.partial_runs += 1,
                Some("WAL checkpoint") => {
                    let frames = line["frames"].as_u64().unwrap_or_default();
                    report.checkpoints += 1;
                    if frames > 0 && line["done"].as_u64() == Some(frames) {
                        report.checkpoints_complete += 1;
                    }
                    report.checkpoint_max_frames = report.checkpoint_max_frames.max(frames);
                    report.checkpoint_max_micros = report
                        .checkpoint_max_micros
                        .max(line["micros"].as_u64().unwrap_or_default());
                }
                _ => {}
            }
        }
        if !found && self.data_dir.is_some() {
            bail!("the server logged no \"sqlite group commit stopped\" line");
        }
        Ok(report)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only reached without `stop` (an error path): do not leave it behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_log(stdout: impl Read, log: &Mutex<Vec<Value>>, listening: &mpsc::Sender<SocketAddr>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if value["message"] == "listening"
            && let Some(addr) = value["addr"].as_str().and_then(|a| a.parse().ok())
        {
            let _ = listening.send(addr);
        }
        if let Ok(mut log) = log.lock() {
            log.push(value);
        }
    }
}

/// CPU fields of /proc/<pid>/stat, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    /// Of children that exited and were waited for.
    pub cutime: u64,
    pub cstime: u64,
}

impl ProcStat {
    pub fn own(&self) -> u64 {
        self.utime + self.stime
    }

    pub fn with_children(&self) -> u64 {
        self.own() + self.cutime + self.cstime
    }
}

pub fn proc_stat(pid: u32) -> anyhow::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: fields resume after ')'.
    let (_, rest) = text.rsplit_once(')').context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime..cstime 14..17.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .context("short stat")?
            .parse()
            .context("stat field")
    };
    Ok(ProcStat {
        ppid: u32::try_from(field(4)?)?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// The machine's CPU time (the `cpu` line of /proc/stat), in ticks: busy
/// (everything but idle and iowait) and in all, over every CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineTicks {
    pub busy: u64,
    pub total: u64,
}

impl MachineTicks {
    pub fn now() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no cpu line")?;
        // user nice system idle iowait irq softirq steal (guest time is
        // already inside user and nice).
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("/proc/stat cpu line")?;
        let total: u64 = fields.iter().sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Ok(Self {
            busy: total - idle,
            total,
        })
    }

    /// The time from `earlier` to `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            busy: self.busy.saturating_sub(earlier.busy),
            total: self.total.saturating_sub(earlier.total),
        }
    }

    pub fn add(&mut self, other: Self) {
        self.busy += other.busy;
        self.total += other.total;
    }

    /// The share of the machine's CPU time that was busy.
    pub fn busy_share(self) -> f64 {
        self.busy as f64 / self.total.max(1) as f64
    }
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 where it cannot be asked).
pub fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Rows of the two tables, read from the database once the server is gone.
pub fn stored_rows(data_dir: &Path) -> anyhow::Result<(u64, u64)> {
    let path = data_dir.join("runstore.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
    let count = |table: &str| -> anyhow::Result<u64> {
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get(0)
        })?;
        Ok(u64::try_from(n)?)
    };
    Ok((count("snapshot_entries")?, count("manifests")?))
}

/// The checkpoint sequence number in a WAL file's header: how many times
/// the WAL was restarted from its start after a complete checkpoint.
pub fn wal_checkpoint_seq(wal: &Path) -> Option<u32> {
    let mut header = [0u8; 16];
    let mut file = std::fs::File::open(wal).ok()?;
    file.read_exact(&mut header).ok()?;
    Some(u32::from_be_bytes(header[12..16].try_into().ok()?))
}
