//! The pgbench anchor: a PostgreSQL 15 of our own (Debian's packages) on a
//! temp data dir, 127.0.0.1 on a free port, initdb defaults plus exactly
//! `shared_buffers=256MB`, `max_connections=300`, `fsync=on`,
//! `synchronous_commit=on` (and its Unix socket in the temp dir, so it never
//! touches a system cluster's). pgbench runs a script of two upserts, each
//! its own autocommit transaction, of the fixture summary, in the database
//! `postgres`; runstore's PostgreSQL scenarios use the same server, in a
//! database of their own ([`RUNSTORE_DB`]) re-created empty per round.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::server::{MachineTicks, ProcStat, proc_stat};

/// The database of runstore's PostgreSQL scenarios (runstore migrates it).
pub const RUNSTORE_DB: &str = "runstore_bench";

/// The tables, shaped like runstore's: keys first, then the payload.
const SCHEMA: &str = "
CREATE TABLE snapshot_entries (
    task_id   text        NOT NULL,
    run_id    text        NOT NULL,
    timestamp text        NOT NULL,
    instant   timestamptz NOT NULL,
    seq       bigint      NOT NULL,
    summary   text        NOT NULL,
    PRIMARY KEY (task_id, run_id)
);
CREATE TABLE manifests (
    task_id    text        NOT NULL,
    run_id     text        NOT NULL,
    summary    text        NOT NULL,
    sha256     text        NOT NULL,
    written_at timestamptz NOT NULL,
    PRIMARY KEY (task_id, run_id)
);
";

/// One run = one pgbench "transaction" = both statements, each its own
/// autocommit transaction (no BEGIN/END). 100 tasks; run ids are the client
/// id and a random number, so rows are new.
const SCRIPT: &str = "\\set task random(1, 100)
\\set run random(1, 1000000000000)
INSERT INTO snapshot_entries (task_id, run_id, timestamp, instant, seq, summary)
    VALUES ('bench-task-' || :task, 'bench-run-' || :client_id || '-' || :run, :ts, now(), :run, :summary)
    ON CONFLICT (task_id, run_id) DO UPDATE SET
        timestamp = excluded.timestamp, instant = excluded.instant,
        seq = excluded.seq, summary = excluded.summary;
INSERT INTO manifests (task_id, run_id, summary, sha256, written_at)
    VALUES ('bench-task-' || :task, 'bench-run-' || :client_id || '-' || :run, :summary, :sha, now())
    ON CONFLICT (task_id, run_id) DO UPDATE SET
        summary = excluded.summary, sha256 = excluded.sha256, written_at = excluded.written_at;
";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Run initdb, pg_ctl and psql as `postgres` (they refuse root).
    as_postgres: bool,
    postmaster: u32,
    running: bool,
    pub version: String,
}

/// One pgbench run.
pub struct PgbenchRun {
    pub transactions: u64,
    pub failed: u64,
    pub tps: f64,
    /// Per-transaction latency from pgbench's log, microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Server CPU (postmaster, its live children and reaped backends).
    pub server_ticks: u64,
    /// pgbench's own CPU.
    pub client_ticks: u64,
    /// The whole machine's CPU time over the run.
    pub machine: MachineTicks,
    pub rows: (u64, u64),
}

impl PgbenchRun {
    /// Adds another round of the same run.
    pub fn merge(&mut self, other: PgbenchRun) {
        // TPS over the rounds: all transactions over the time they took.
        let secs = self.transactions as f64 / self.tps.max(1e-9)
            + other.transactions as f64 / other.tps.max(1e-9);
        self.transactions += other.transactions;
        self.tps = self.transactions as f64 / secs.max(1e-9);
        self.failed += other.failed;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        self.server_ticks += other.server_ticks;
        self.client_ticks += other.client_ticks;
        self.machine.add(other.machine);
        self.rows = (self.rows.0 + other.rows.0, self.rows.1 + other.rows.1);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn checked(what: &str, output: Output) -> anyhow::Result<String> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Postgres {
    pub fn start(tmp_root: &Path, bin: &Path) -> anyhow::Result<Self> {
        for tool in ["initdb", "pg_ctl", "psql", "pgbench"] {
            if !bin.join(tool).is_file() {
                bail!(
                    "{} not found: install PostgreSQL 15 (`apt-get install -y postgresql`; bench/sqlite does) or set BENCH_PG_BIN",
                    bin.join(tool).display()
                );
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("runstore-bench-pg.")
            .tempdir_in(tmp_root)?;
        let as_postgres = is_root();
        if as_postgres {
            let out = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .output()?;
            checked("chown postgres", out)?;
        }
        let mut pg = Self {
            dir,
            bin: bin.to_path_buf(),
            port: free_port()?,
            as_postgres,
            postmaster: 0,
            running: false,
            version: String::new(),
        };
        let data = pg.data();
        let out = pg.tool("initdb").arg("-D").arg(&data).output()?;
        checked("initdb", out)?;
        let conf = format!(
            "\n# runstore bench\nshared_buffers = 256MB\nmax_connections = 300\n\
             listen_addresses = '127.0.0.1'\nport = {}\nfsync = on\nsynchronous_commit = on\n\
             unix_socket_directories = '{}'\n",
            pg.port,
            pg.dir.path().display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text)?;
        let out = pg
            .tool("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .output()?;
        pg.running = true;
        if let Err(err) = checked("pg_ctl start", out) {
            let log = std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default();
            bail!("{err}\nserver log:\n{log}");
        }
        let pid_file = std::fs::read_to_string(data.join("postmaster.pid"))?;
        pg.postmaster = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid")?;
        pg.version = pg.psql("SHOW server_version")?.trim().to_owned();
        let settings = pg.psql(
            "SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name) FROM pg_settings \
             WHERE name IN ('shared_buffers','max_connections','fsync','synchronous_commit','listen_addresses','wal_sync_method','commit_delay')",
        )?;
        eprintln!(
            "postgres {} on 127.0.0.1:{} ({})",
            pg.version,
            pg.port,
            settings.trim()
        );
        pg.psql(SCHEMA)?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A PostgreSQL tool, run as `postgres` when we are root.
    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        };
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    /// Runs `sql` in the database `postgres`.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql_in("postgres", sql)
    }

    fn psql_in(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = self
            .tool("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .output()?;
        checked("psql", out)
    }

    /// The URL runstore connects to `db` with: TCP on 127.0.0.1, like
    /// pgbench (trust authentication, initdb's default; no TLS offered).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Drops `db` and creates it again, empty, then checkpoints (as each
    /// pgbench round starts), so each round starts alike.
    pub fn recreate_database(&self, db: &str) -> anyhow::Result<()> {
        // One statement per psql call: neither may run in a transaction.
        self.psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))?;
        self.psql(&format!("CREATE DATABASE {db}"))?;
        self.psql("CHECKPOINT")?;
        Ok(())
    }

    /// Rows of `snapshot_entries` and of `manifests` in `db`.
    pub fn stored_rows(&self, db: &str) -> anyhow::Result<(u64, u64)> {
        let count = |table: &str| -> anyhow::Result<u64> {
            let n = self.psql_in(db, &format!("SELECT count(*) FROM {table}"))?;
            n.trim()
                .parse()
                .with_context(|| format!("count of {table}: {n:?}"))
        };
        Ok((count("snapshot_entries")?, count("manifests")?))
    }

    /// CPU ticks of the whole server: the postmaster, the backends it
    /// reaped, and its live children (backends, checkpointer, WAL writer,
    /// ...). Around a load whose backends stay connected (runstore's pool)
    /// the live ones are counted at both ends; ones that exit in between
    /// move into the postmaster's reaped children.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let mut ticks = proc_stat(self.postmaster)?.with_children();
        for entry in std::fs::read_dir("/proc")? {
            let Some(pid) = entry?
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(ProcStat { ppid, .. }) = proc_stat(pid)
                && ppid == self.postmaster
                && let Ok(stat) = proc_stat(pid)
            {
                ticks += stat.own();
            }
        }
        Ok(ticks)
    }

    fn backends(&self) -> usize {
        self.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// One bounded pgbench run on empty tables, `-M prepared -c C -j J -T S`.
    pub fn pgbench(
        &self,
        clients: usize,
        seconds: u64,
        summary: &str,
        label: &str,
    ) -> anyhow::Result<PgbenchRun> {
        self.psql("TRUNCATE snapshot_entries, manifests; CHECKPOINT")?;
        let script = self.dir.path().join("complete-run.sql");
        std::fs::write(&script, SCRIPT)?;
        let log_prefix = self.dir.path().join(format!("pgbench-{label}"));
        // pgbench names its logs <prefix>.<pid>[.<thread>]: clear an earlier
        // round's, so only this run's transactions are read.
        for entry in std::fs::read_dir(self.dir.path())? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("pgbench-{label}."))
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        let sha = format!("{:x}", Sha256::digest(summary.as_bytes()));
        let threads = clients.min(2);
        let mut cmd = Command::new(self.bin.join("pgbench"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-n", "-M", "prepared"])
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &seconds.to_string()])
        .arg("-f")
        .arg(&script)
        .arg("-l")
        .arg(format!("--log-prefix={}", log_prefix.display()))
        .arg(format!("-Dsummary={summary}"))
        .arg(format!("-Dsha={sha}"))
        .arg("-Dts=2026-01-05T19:26:37.274Z")
        .arg("postgres")
        .current_dir(self.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let before = self.cpu_ticks()?;
        let client_before = proc_stat(std::process::id())?;
        let machine_before = MachineTicks::now()?;
        let started = Instant::now();
        let mut child = cmd.spawn().context("starting pgbench")?;
        // pgbench takes -t or -T, not both: -T bounds the time, and this
        // watchdog bounds the whole run should pgbench hang.
        let limit = Duration::from_secs(seconds + 60);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("pgbench ran past {limit:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        let out = checked("pgbench", child.wait_with_output()?)?;
        let machine = MachineTicks::now()?.since(machine_before);
        let client_after = proc_stat(std::process::id())?;
        let client_ticks = (client_after.cutime + client_after.cstime)
            .saturating_sub(client_before.cutime + client_before.cstime);
        // Backends exit after pgbench disconnects; their CPU shows in the
        // postmaster's once it has reaped them.
        let settle = Instant::now();
        while self.backends() > 1 && settle.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(100));
        let server_ticks = self.cpu_ticks()?.saturating_sub(before);

        let number = |key: &str| -> anyhow::Result<f64> {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("pgbench output has no {key:?}:\n{out}"))
        };
        let transactions = number("number of transactions actually processed:")? as u64;
        let failed = number("number of failed transactions:").unwrap_or(0.0) as u64;
        let tps = number("tps =")?;
        let mut latencies_us = Vec::with_capacity(transactions as usize);
        let name = log_prefix
            .file_name()
            .and_then(|n| n.to_str())
            .context("log prefix")?
            .to_owned();
        for entry in std::fs::read_dir(self.dir.path())? {
            let entry = entry?;
            if !entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}."))
            {
                continue;
            }
            // client_id transaction_no time script_no time_epoch time_us
            for line in std::fs::read_to_string(entry.path())?.lines() {
                if let Some(us) = line.split_whitespace().nth(2).and_then(|t| t.parse().ok()) {
                    latencies_us.push(us);
                }
            }
        }
        latencies_us.sort_unstable();
        let rows = self.stored_rows("postgres")?;
        Ok(PgbenchRun {
            transactions,
            failed,
            tps,
            latencies_us,
            server_ticks,
            client_ticks,
            machine,
            rows,
        })
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        self.running = false;
        let out = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output()?;
        checked("pg_ctl stop", out).map(|_| ())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .tool("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output();
        }
    }
}
