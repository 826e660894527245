//! A real PostgreSQL server for the tests, started by the harness itself:
//! `initdb` on a fresh temp dir and `pg_ctl start` on a free loopback port
//! (durable settings: `fsync` and `synchronous_commit` on). One shared
//! cluster per test binary, and a fresh database (`test_<n>`) per test;
//! a test that must stop the server ([`PrivateCluster`]) gets a cluster of
//! its own.
//!
//! initdb and pg_ctl refuse to run as root, so as root they run as the
//! `postgres` user (`runuser`), which owns the cluster's dir. A static's
//! destructor never runs, so every cluster has a watchdog: a small shell
//! loop in its own process group that, once the test binary is gone (or the
//! cluster's dir is), kills the runstore servers the tests left on it,
//! shuts the postmaster down at once (SIGQUIT, an immediate shutdown) and
//! removes the dir.
//!
//! [`PgDb`] is the contract suite's look into a PostgreSQL store (row
//! counts, rows, trigger faults), synchronous like SQLite's, run on a
//! runtime of the harness's own.

use std::{
    ffi::OsString,
    future::Future,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use runstore::storage::postgres::{DatabaseUrl, PostgresSettings};
use tokio::{process::Command, sync::OnceCell};
use tokio_postgres::{Client, NoTls};

use crate::helpers::{On, RowCounts, StoredRow, Table, WAIT_LIMIT, within};

/// How to get PostgreSQL when it is missing (the README's test command
/// runs this).
const INSTALL_HINT: &str = "apt-get install -y postgresql";
/// Settings every cluster starts with, after the address and socket dir.
const DURABLE: &[(&str, &str)] = &[
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("max_connections", "300"),
];
/// How many free ports to try when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// A running PostgreSQL cluster on 127.0.0.1.
#[derive(Debug)]
pub struct Cluster {
    bin_dir: PathBuf,
    /// The temp dir: the socket dir and server log live in it, and the data
    /// dir unless the cluster was started on one of a test's own.
    root: PathBuf,
    data_dir: PathBuf,
    port: u16,
    /// Set when the tests run as root: initdb and pg_ctl run as this user.
    run_as: Option<&'static str>,
    /// `-c name=value` settings the server was started with.
    settings: Vec<(String, String)>,
}

static SHARED: OnceCell<Cluster> = OnceCell::const_new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(1);

/// The cluster the tests of this binary share, started on first use.
pub async fn shared() -> &'static Cluster {
    SHARED.get_or_init(|| Cluster::start(&[])).await
}

/// A fresh, empty database on the shared cluster.
pub async fn fresh_database() -> TestDatabase {
    shared().await.create_database().await
}

impl Cluster {
    /// initdb on a new temp dir, then starts the server on a free port with
    /// the durable settings and `extra` ones (which win over them).
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_at(extra, None).await
    }

    /// [`Cluster::start`] with the data dir at `data_dir` (an empty dir,
    /// e.g. on a test's own file system, handed to the cluster's owner);
    /// initdb then fsyncs what it wrote, so the cluster starts durable.
    async fn start_at(extra: &[(&str, &str)], data_dir: Option<PathBuf>) -> Self {
        let bin_dir = bin_dir();
        let run_as = running_as_root().then_some("postgres");
        let root = tempfile::Builder::new()
            .prefix("runstore-pg-")
            .tempdir_in(std::env::temp_dir())
            .expect("temp dir for PostgreSQL")
            .keep();
        let sync = data_dir.is_some();
        let data_dir = data_dir.unwrap_or_else(|| root.join("data"));
        if let Some(user) = run_as {
            let (uid, gid) = user_ids(user);
            for dir in [&root, &data_dir].into_iter().filter(|dir| dir.exists()) {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                    .unwrap_or_else(|err| panic!("chown {} to {user}: {err}", dir.display()));
            }
        }
        // One entry per name; a later one (from `extra`) wins.
        let mut settings: Vec<(String, String)> = Vec::new();
        for (name, value) in DURABLE.iter().chain(extra) {
            match settings.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = (*value).to_owned(),
                None => settings.push(((*name).to_owned(), (*value).to_owned())),
            }
        }
        let mut cluster = Self {
            bin_dir,
            root,
            data_dir,
            port: 0,
            run_as,
            settings,
        };
        cluster.watchdog();
        cluster.initdb(sync).await;
        for attempt in 1..=PORT_ATTEMPTS {
            cluster.port = free_port();
            match cluster.pg_ctl_start().await {
                Ok(()) => return cluster,
                Err(log) if attempt < PORT_ATTEMPTS && log.contains("could not bind") => {
                    println!("port {} was taken; trying another", cluster.port);
                }
                Err(log) => panic!("pg_ctl start failed:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics");
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// The postmaster's pid, from its lock file.
    pub fn postmaster_pid(&self) -> u32 {
        let lock = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .expect("read postmaster.pid");
        lock.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .expect("a pid on the first line of postmaster.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The server's log so far (for failure messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// A command running one of PostgreSQL's programs, as the cluster's
    /// owner.
    fn program(&self, name: &str) -> Command {
        let path = self.bin_dir.join(name);
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        };
        command
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, what: &str, mut command: Command) -> Result<String, String> {
        let output = within(what, command.output())
            .await
            .unwrap_or_else(|err| panic!("{what}: cannot run: {err}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!("{what} failed ({}):\n{text}", output.status))
        }
    }

    async fn initdb(&self, sync: bool) {
        let mut command = self.program("initdb");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale"])
            .arg("--no-instructions");
        if !sync {
            // initdb's own fsyncs only slow the tests down where no power
            // is cut; the server itself runs with fsync on.
            command.arg("--no-sync");
        }
        if let Err(err) = self.run("initdb", command).await {
            panic!("{err}");
        }
    }

    /// `pg_ctl start`, waiting until the server accepts connections; the
    /// server's log when it fails.
    async fn pg_ctl_start(&self) -> Result<(), String> {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -k {}",
            self.port,
            self.root.display()
        );
        for (name, value) in &self.settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let mut command = self.program("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "50", "-o", &options, "start"]);
        self.run("pg_ctl start", command)
            .await
            .map(drop)
            .map_err(|err| format!("{err}\nserver log:\n{}", self.server_log()))
    }

    /// Starts the (stopped) server again on the same port.
    pub async fn start_again(&self) {
        if let Err(err) = self.pg_ctl_start().await {
            panic!("pg_ctl start again: {err}");
        }
    }

    /// `pg_ctl stop -m <mode>` (smart, fast or immediate), waiting until
    /// the server is down.
    pub async fn stop(&self, mode: &str) {
        let mut command = self.program("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "50", "-m", mode, "stop"]);
        if let Err(err) = self.run("pg_ctl stop", command).await {
            panic!("{err}");
        }
    }

    /// Starts the watchdog that, once this test binary exits (however it
    /// exits) or the dir is gone, kills the runstore servers left on the
    /// cluster ([`TestDatabase::adopt`]), shuts the cluster down and
    /// removes its dir.
    fn watchdog(&self) {
        const SCRIPT: &str = r#"
            while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 0.5; done
            # The data dir's lock file, else (a data dir on a test's own
            # file system that went with the tests) the socket's, which
            # holds the same lines.
            lock="$3/postmaster.pid"
            [ -r "$lock" ] || lock=$(ls "$2"/.s.PGSQL.*.lock 2>/dev/null | head -n 1)
            pid=$(head -n 1 "$lock" 2>/dev/null)
            port=$(sed -n 4p "$lock" 2>/dev/null)
            # runstore servers left behind on this cluster (only those whose
            # command line still names its port, in case an id was reused)
            if [ -n "$port" ] && [ -f "$2/runstore.pids" ]; then
                while read -r child; do
                    if grep -qa "127.0.0.1:$port/" "/proc/$child/cmdline" 2>/dev/null; then
                        kill -KILL "$child" 2>/dev/null
                    fi
                done < "$2/runstore.pids"
            fi
            if [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null; then
                n=0
                while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n+1)); done
            fi
            rm -rf "$2"
        "#;
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", SCRIPT, "runstore-pg-watchdog"])
            .arg(std::process::id().to_string())
            .arg(&self.root)
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C to the tests does not stop
            // the watchdog before it has cleaned up.
            .process_group(0);
        // Never waited for: it outlives this process by design.
        drop(command.spawn().expect("start the PostgreSQL watchdog"));
    }

    /// A connection to `database` as the superuser.
    pub async fn connect(&self, database: &str) -> Client {
        let config = format!(
            "host=127.0.0.1 port={} user=postgres dbname={database} connect_timeout=10",
            self.port
        );
        let (client, connection) = within(
            "a connection to PostgreSQL",
            tokio_postgres::connect(&config, NoTls),
        )
        .await
        .unwrap_or_else(|err| panic!("connecting to {database} on port {}: {err}", self.port));
        tokio::spawn(async move {
            // Ends when the client is dropped or the server goes away.
            let _ = connection.await;
        });
        client
    }

    /// A new, empty database of its own for one test.
    pub async fn create_database(&self) -> TestDatabase {
        let name = format!("test_{}", NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
        let admin = self.connect("postgres").await;
        within(
            "CREATE DATABASE",
            admin.batch_execute(&format!("CREATE DATABASE {name}")),
        )
        .await
        .unwrap_or_else(|err| panic!("CREATE DATABASE {name}: {err}"));
        TestDatabase {
            port: self.port,
            name,
            cluster_root: self.root.clone(),
        }
    }
}

/// One test's database.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    port: u16,
    pub name: String,
    cluster_root: PathBuf,
}

impl TestDatabase {
    /// Puts a runstore server on this database in the watchdog's care: if
    /// the test binary dies without stopping it (SIGKILL, a broken pipe),
    /// the watchdog kills it with the cluster.
    pub fn adopt(&self, pid: u32) {
        use std::io::Write;
        let path = self.cluster_root.join("runstore.pids");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("opening {}: {err}", path.display()));
        writeln!(file, "{pid}").unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
    }

    /// The URL runstore is given (`--storage`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// The URL with a password in it (trust authentication ignores it),
    /// for checks that it is never shown.
    pub fn url_with_password(&self, password: &str) -> String {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/{}",
            self.port, self.name
        )
    }

    /// Settings for opening the store in-process through the factory.
    pub fn settings(&self) -> PostgresSettings {
        PostgresSettings {
            url: DatabaseUrl::parse(&self.url()).expect("postgres URL"),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }

    /// The flags that point `runstore serve` at this database.
    pub fn server_args(&self) -> Vec<OsString> {
        storage_flag(&self.url())
    }

    /// The test's own connection to the database, for synchronous code
    /// (see [`PgDb`]).
    pub fn db(&self) -> PgDb {
        let database = self.clone();
        let client = block_on("a connection to the test database", async move {
            database.client().await
        });
        PgDb {
            client: Arc::new(client),
        }
    }

    /// The test's own connection to the database, as the superuser.
    pub async fn client(&self) -> Client {
        let config = format!(
            "host=127.0.0.1 port={} user=postgres dbname={} connect_timeout=10",
            self.port, self.name
        );
        let (client, connection) = within(
            "a connection to the test database",
            tokio_postgres::connect(&config, NoTls),
        )
        .await
        .unwrap_or_else(|err| panic!("connecting to {}: {err}", self.name));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

/// `--storage <url>`.
pub fn storage_flag(url: &str) -> Vec<OsString> {
    vec!["--storage".into(), url.into()]
}

/// A cluster of one test's own, which it may stop and start; shut down
/// (immediately) and removed when dropped.
pub struct PrivateCluster(Cluster);

impl PrivateCluster {
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        Self(Cluster::start(extra).await)
    }

    /// A private cluster whose data dir is `data_dir` (see
    /// [`Cluster::start_at`]).
    pub async fn start_on(extra: &[(&str, &str)], data_dir: PathBuf) -> Self {
        Self(Cluster::start_at(extra, Some(data_dir)).await)
    }
}

impl std::ops::Deref for PrivateCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Synchronous on purpose: a destructor cannot await. Bounded by
        // pg_ctl's own -t; the watchdog removes anything left behind.
        let path = self.bin_dir.join("pg_ctl");
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => std::process::Command::new(path),
        };
        let _ = command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "20", "-m", "immediate", "stop"])
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Where PostgreSQL's server programs are: `RUNSTORE_TEST_PG_BIN`, else the
/// newest /usr/lib/postgresql/<version>/bin (Debian's `postgresql`
/// package).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNSTORE_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").is_file(),
            "RUNSTORE_TEST_PG_BIN={} has no initdb (unset it to use Debian's `{INSTALL_HINT}`)",
            dir.display()
        );
        return dir;
    }
    let base = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no {}/<version>/bin/initdb): the PostgreSQL tests \
             start a real server; install it with `{INSTALL_HINT}` (or point \
             RUNSTORE_TEST_PG_BIN at a dir with initdb and pg_ctl)",
            base.display()
        ),
    }
}

/// Whether this process runs as root (the owner of /proc/self is the
/// effective user).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of `user`, from /etc/passwd.
fn user_ids(user: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == user)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .unwrap_or_else(|| {
            panic!(
                "the tests run as root, so PostgreSQL must run as the `{user}` user, and there \
                 is none: install PostgreSQL with `{INSTALL_HINT}` (it creates the user)"
            )
        })
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------
// Synchronous access, for the contract suite's `Db`
// ---------------------------------------------------------------------------

/// A runtime of the harness's own, so synchronous test code (the contract
/// suite's `TestStore` and `Db`, which SQLite serves with blocking calls)
/// can use PostgreSQL from inside any test's runtime.
fn bridge() -> &'static tokio::runtime::Runtime {
    static BRIDGE: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    BRIDGE.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres-harness")
            .enable_all()
            .build()
            .expect("the PostgreSQL harness runtime")
    })
}

/// Runs `work` on the harness's runtime and blocks until it is done
/// (bounded by [`WAIT_LIMIT`]). Like a blocking SQLite call, it holds the
/// calling thread meanwhile.
pub fn block_on<T: Send + 'static>(
    what: &str,
    work: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    bridge().spawn(async move {
        let _ = tx.send(work.await);
    });
    match rx.recv_timeout(WAIT_LIMIT) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("timed out after {WAIT_LIMIT:?} waiting for {what}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{what} failed (see the panic above)")
        }
    }
}

/// A fresh database on the shared cluster, from synchronous code.
pub fn fresh_database_blocking() -> TestDatabase {
    block_on("a fresh PostgreSQL database", fresh_database())
}

/// The test's own connection to its database, with the contract suite's
/// look into the store (row counts, rows, injected faults), synchronous.
#[derive(Clone)]
pub struct PgDb {
    client: Arc<Client>,
}

impl PgDb {
    fn query(&self, what: &str, sql: String, params: Vec<String>) -> Vec<tokio_postgres::Row> {
        let client = Arc::clone(&self.client);
        let what_owned = what.to_owned();
        block_on(what, async move {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            client
                .query(&sql, &params)
                .await
                .unwrap_or_else(|err| panic!("{what_owned}: {err}"))
        })
    }

    fn execute(&self, what: &str, sql: String) {
        let client = Arc::clone(&self.client);
        let what_owned = what.to_owned();
        block_on(what, async move {
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|err| panic!("{what_owned}: {err}"))
        })
    }

    /// Row counts of every table, without the readiness probe's row.
    pub fn row_counts(&self) -> RowCounts {
        let row = self
            .query(
                "counting rows",
                "SELECT (SELECT COUNT(*) FROM tasks WHERE task_id <> ''),
                        (SELECT COUNT(*) FROM snapshot_entries WHERE task_id <> ''),
                        (SELECT COUNT(*) FROM manifests WHERE task_id <> '')"
                    .into(),
                Vec::new(),
            )
            .remove(0);
        RowCounts {
            tasks: row.get(0),
            snapshot_entries: row.get(1),
            manifests: row.get(2),
        }
    }

    /// Rows of three text columns.
    pub fn rows3(&self, sql: &str) -> Vec<(String, String, String)> {
        self.query("reading rows", sql.to_owned(), Vec::new())
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect()
    }

    /// (task id, run id) of every event of `kind`, in cursor order.
    pub fn events(&self, kind: &str) -> Vec<(String, String)> {
        self.query(
            "reading run_events",
            "SELECT task_id, run_id FROM run_events WHERE kind = $1 ORDER BY tx, id".into(),
            vec![kind.to_owned()],
        )
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
    }

    /// Rows of `table` that belong to `task_id`.
    pub fn count(&self, table: Table, task_id: &str) -> i64 {
        self.query(
            &format!("counting {}", table.name()),
            format!("SELECT COUNT(*) FROM {} WHERE task_id = $1", table.name()),
            vec![task_id.to_owned()],
        )[0]
        .get(0)
    }

    /// The distinct task ids of `table`, sorted (by their bytes).
    pub fn task_ids(&self, table: Table) -> Vec<String> {
        self.query(
            &format!("task ids of {}", table.name()),
            format!(
                "SELECT DISTINCT task_id FROM {} WHERE task_id <> '' ORDER BY task_id",
                table.name()
            ),
            Vec::new(),
        )
        .iter()
        .map(|row| row.get(0))
        .collect()
    }

    fn stored_rows(
        &self,
        table: Table,
        filter: &str,
        params: Vec<String>,
    ) -> Vec<(String, String, StoredRow)> {
        let sha256 = match table {
            Table::Manifests => "sha256",
            _ => "''",
        };
        self.query(
            &format!("reading {}", table.name()),
            format!(
                "SELECT task_id, run_id, timestamp, convert_to(summary_json, 'UTF8'), {sha256}
                 FROM {} WHERE {filter}",
                table.name()
            ),
            params,
        )
        .iter()
        .map(|row| {
            (
                row.get(0),
                row.get(1),
                StoredRow {
                    timestamp: row.get(2),
                    summary: row.get(3),
                    sha256: row.get(4),
                },
            )
        })
        .collect()
    }

    /// One run's row in `table` (`snapshot_entries` or `manifests`).
    pub fn row(&self, table: Table, task_id: &str, run_id: &str) -> Option<StoredRow> {
        self.stored_rows(
            table,
            "task_id = $1 AND run_id = $2",
            vec![task_id.to_owned(), run_id.to_owned()],
        )
        .pop()
        .map(|(_, _, row)| row)
    }

    /// Every row of `table` (`snapshot_entries` or `manifests`) as
    /// (task id, run id, row).
    pub fn all_rows(&self, table: Table) -> Vec<(String, String, StoredRow)> {
        self.stored_rows(table, "task_id <> ''", Vec::new())
    }

    /// Deletes one run's row behind the server's back.
    pub fn delete_row(&self, table: Table, task_id: &str, run_id: &str) {
        let deleted = self.query(
            &format!("deleting from {}", table.name()),
            format!(
                "DELETE FROM {} WHERE task_id = $1 AND run_id = $2 RETURNING 1",
                table.name()
            ),
            vec![task_id.to_owned(), run_id.to_owned()],
        );
        assert_eq!(deleted.len(), 1, "{task_id}/{run_id} in {}", table.name());
    }

    /// The store's own consistency check, "ok" when consistent: amcheck's
    /// B-tree checks of every index of the service's tables, each index
    /// against its table (`heapallindexed`).
    pub fn integrity_check(&self) -> String {
        self.execute(
            "CREATE EXTENSION amcheck",
            "CREATE EXTENSION IF NOT EXISTS amcheck".into(),
        );
        let client = Arc::clone(&self.client);
        block_on("amcheck", async move {
            let indexes = client
                .query(
                    "SELECT i.indexrelid::regclass::text FROM pg_index i
                     JOIN pg_class t ON t.oid = i.indrelid
                     WHERE t.relname IN ('tasks', 'snapshot_entries', 'manifests')
                       AND t.relnamespace = current_schema()::regnamespace",
                    &[],
                )
                .await
                .unwrap_or_else(|err| panic!("listing indexes: {err}"));
            let mut problems = Vec::new();
            for index in &indexes {
                let name: String = index.get(0);
                if let Err(err) = client
                    .execute("SELECT bt_index_check($1::text::regclass, true)", &[&name])
                    .await
                {
                    problems.push(format!("{name}: {err}"));
                }
            }
            if indexes.is_empty() {
                "no indexes to check".to_owned()
            } else if problems.is_empty() {
                "ok".to_owned()
            } else {
                problems.join("\n")
            }
        })
    }

    /// Makes the store refuse `on` statements on `table` for `task_id`, as
    /// a constraint would: a PL/pgSQL trigger (one per statement kind) that
    /// raises "injected" (SQLSTATE P0001). Returns the names of the
    /// functions, each dropped with its trigger by [`PgDb::remove_fault`].
    ///
    /// runstore writes with `INSERT ... ON CONFLICT DO UPDATE`, which fires
    /// BEFORE INSERT triggers for every row it proposes: an `Insert` fault
    /// refuses rewrites too, an `Update` fault only rewrites.
    pub fn inject_fault(&self, table: Table, task_id: &str, on: &[On]) -> Vec<String> {
        let mut names = Vec::new();
        for op in on {
            let event = op.sql();
            let name = format!(
                "injected_fault_{}_{}_{}",
                table.name(),
                event.to_lowercase(),
                names.len()
            );
            self.execute(
                &format!("creating trigger {name}"),
                format!(
                    "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN RAISE EXCEPTION 'injected'; END $$;
                     CREATE TRIGGER {name} BEFORE {event} ON {} FOR EACH ROW
                     WHEN ({}.task_id = '{}') EXECUTE FUNCTION {name}();",
                    table.name(),
                    op.row(),
                    task_id.replace('\'', "''")
                ),
            );
            names.push(name);
        }
        names
    }

    /// Removes an injected fault: its functions, and with them (CASCADE)
    /// their triggers.
    pub fn remove_fault(&self, names: Vec<String>) {
        for name in names {
            self.execute(
                &format!("dropping trigger {name}"),
                format!("DROP FUNCTION {name}() CASCADE"),
            );
        }
    }
}
