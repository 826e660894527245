//! The run-lifecycle scenarios (issue 12), on SQLite and on PostgreSQL:
//!
//! - `listtasks`, `pglisttasks`: what a ListTasks page (100 tasks) costs in
//!   a store of 100 tasks and in one of 100,000 (`BENCH_LIST_TASKS`;
//!   10,000 with `BENCH_QUICK`): the first page, a prefix-filtered page and
//!   a deep page (the token from the middle of the listing), at c8. Both
//!   stores are filled through the API (CompleteRun c64, a new task per
//!   call, the smallest summary) and served at once, and the pages are
//!   measured alternately, so drift hits both alike.
//! - `fanout`, `pgfanout`: the c64 CompleteRun load (the `c64` scenario's)
//!   with 0, 1, 16 and 64 WatchRuns watchers following the feed from now,
//!   interleaved round by round; the CompleteRun RPS against none, and the
//!   delivery latency from recorded_at to receipt. Each watcher must have
//!   received a COMPLETED event for every acknowledged run.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use runstore::proto::{ListTasksRequest, persistence_service_client::PersistenceServiceClient};

use crate::{
    Backing, Bench, Cpu, Measured, Row, Store, TASKS, Target,
    client::{
        Fixture, Keying, LoadResult, LoadSpec, Op, connect, quantile_ms, read_back, run_load,
        task_id,
    },
    fmt_count, pg,
    server::Server,
    settle,
};

/// How long watchers may take, after the load, to have every event.
pub const WATCH_DRAIN: Duration = Duration::from_secs(30);
/// Watchers of the fan-out rounds (0: the baseline the others are
/// compared with).
const FANOUT: [usize; 4] = [0, 1, 16, 64];
/// The drop of CompleteRun RPS at c64 the feed may cost.
const FANOUT_TARGET: f64 = 0.85;
/// Tasks of the small ListTasks store, and tasks per page.
const FEW_TASKS: u64 = 100;
const LIST_PAGE: usize = 100;
const LIST_CONCURRENCY: usize = 8;
/// The database of the small store on PostgreSQL (the large one is
/// [`pg::RUNSTORE_DB`]).
const FEW_DB: &str = "runstore_bench_few";
/// Bounds the fill of a ListTasks store.
const FILL_LIMIT: Duration = Duration::from_secs(900);

fn backend(store: Store<'_>) -> &'static str {
    match store {
        Store::Sqlite => "",
        Store::Postgres(_) => ", runstore on PostgreSQL",
    }
}

fn watchers(n: usize) -> String {
    if n == 1 {
        "1 watcher".into()
    } else {
        format!("{n} watchers")
    }
}

/// The id prefix shared by tasks `first..first + 100` (`first` a multiple
/// of 100): the id without its last two digits.
fn block_prefix(first: u64) -> String {
    let id = task_id(first);
    id[..id.len() - 2].to_owned()
}

/// One store of the ListTasks scenario: its backing, its server.
struct TaskStore<'a> {
    backing: Backing<'a>,
    server: Server,
    tasks: u64,
}

impl Bench {
    pub(crate) async fn lifecycle(&mut self, pg: Option<&pg::Postgres>) -> anyhow::Result<()> {
        let pg_store = pg.map(Store::Postgres);
        let needs_pg = "runstore on PostgreSQL needs PostgreSQL";
        if self.cfg.runs("listtasks") {
            self.list_tasks(Store::Sqlite, "listtasks").await?;
        }
        if self.cfg.runs("pglisttasks") {
            self.list_tasks(pg_store.context(needs_pg)?, "pglisttasks")
                .await?;
        }
        if self.cfg.runs("fanout") {
            self.fanout(Store::Sqlite, "fanout").await?;
        }
        if self.cfg.runs("pgfanout") {
            self.fanout(pg_store.context(needs_pg)?, "pgfanout").await?;
        }
        Ok(())
    }

    /// A fresh store with `tasks` tasks of one run each, written through
    /// CompleteRun (c64, a new task per call), and its server.
    async fn task_store<'a>(
        &self,
        store: Store<'a>,
        name: &str,
        db: &'static str,
        tasks: u64,
        fixture: &Arc<Fixture>,
    ) -> anyhow::Result<(TaskStore<'a>, LoadResult)> {
        let backing = self.backing_named(store, name, db)?;
        let server = Server::start(&self.cfg.bin, backing.storage(), "concurrent")?;
        let op = Arc::new(Op::CompleteRun {
            fixture: Arc::clone(fixture),
            keying: Keying::PerCall,
            first_run: 0,
        });
        let spec = LoadSpec {
            concurrency: 64,
            connections: self.cfg.connections,
            duration: FILL_LIMIT,
            max_calls: tasks,
        };
        let load = run_load(server.addr, op, spec).await?;
        if load.ok != tasks {
            bail!(
                "fill of {name}: {} of {tasks} tasks written ({:?})",
                load.ok,
                load.first_error
            );
        }
        Ok((
            TaskStore {
                backing,
                server,
                tasks,
            },
            load,
        ))
    }

    async fn list_tasks(&mut self, store: Store<'_>, key: &str) -> anyhow::Result<()> {
        let many = self.cfg.many_tasks;
        let on = backend(store);
        eprintln!(
            "==> {key}: fill {} and {} tasks{on}, then ListTasks pages",
            fmt_count(FEW_TASKS),
            fmt_count(many)
        );
        let fixture = Arc::new(Fixture::minimal()?);
        let (few, few_fill) = self
            .task_store(store, "list-tasks-few", FEW_DB, FEW_TASKS, &fixture)
            .await?;
        let (many_store, many_fill) = self
            .task_store(store, "list-tasks-many", pg::RUNSTORE_DB, many, &fixture)
            .await?;
        // Every task listed back, in order, with its one run; a spread of
        // them read back (the summary byte for byte).
        walk_tasks(few.server.addr, FEW_TASKS, FEW_TASKS / 2).await?;
        let mid = many / 2;
        let mid_token = walk_tasks(many_store.server.addr, many, mid).await?;
        for s in [&few, &many_store] {
            let spread = (0..s.tasks).step_by((s.tasks / 100).max(1) as usize);
            let expected = spread.clone().count() as u64;
            let read = read_back(s.server.addr, &fixture, spread).await?;
            if read != expected {
                bail!("read back {read} runs of {expected} tasks");
            }
        }
        let many_block = mid / 100 * 100;
        let few_prefix = block_prefix(0);
        let many_prefix = block_prefix(many_block);
        let n = fmt_count(many);
        let stores = [few, many_store];
        let (few_at, many_at) = (0, 1);
        // (label, key suffix, which store, the page)
        let cases: Vec<(String, &str, usize, Arc<Op>)> = vec![
            (
                format!("ListTasks first page, {FEW_TASKS} tasks{on}"),
                "few_first",
                few_at,
                Arc::new(Op::list_tasks("", "", 0, LIST_PAGE)),
            ),
            (
                format!("ListTasks first page, {n} tasks{on}"),
                "many_first",
                many_at,
                Arc::new(Op::list_tasks("", "", 0, LIST_PAGE)),
            ),
            (
                format!("ListTasks prefix page ({few_prefix:?}), {FEW_TASKS} tasks{on}"),
                "few_prefix",
                few_at,
                Arc::new(Op::list_tasks(&few_prefix, "", 0, LIST_PAGE)),
            ),
            (
                format!("ListTasks prefix page ({many_prefix:?}), {n} tasks{on}"),
                "many_prefix",
                many_at,
                Arc::new(Op::list_tasks(&many_prefix, "", many_block, LIST_PAGE)),
            ),
            (
                format!(
                    "ListTasks deep page (token after task {}), {n} tasks{on}",
                    fmt_count(mid)
                ),
                "many_deep",
                many_at,
                Arc::new(Op::list_tasks("", &mid_token, mid, LIST_PAGE)),
            ),
        ];
        settle();
        // Two rounds, alternating, so drift hits every page alike.
        let quarter =
            Duration::from_millis(self.cfg.secs * 1000 / 4).max(Duration::from_millis(500));
        let spec = LoadSpec {
            concurrency: LIST_CONCURRENCY,
            connections: self.cfg.connections,
            duration: quarter,
            max_calls: self.cfg.max_calls,
        };
        let mut results: Vec<(LoadResult, Cpu)> =
            cases.iter().map(|_| Default::default()).collect();
        for _round in 0..2 {
            for ((_, _, at, op), result) in cases.iter().zip(&mut results) {
                let s = &stores[*at];
                let pg = s.backing.postgres();
                let before = Cpu::now(&s.server, pg)?;
                let load = run_load(s.server.addr, Arc::clone(op), spec).await?;
                result.1.add(Cpu::now(&s.server, pg)?.since(before));
                result.0.merge(load);
            }
        }
        let mut stored = Vec::new();
        for s in stores {
            s.server.stop()?;
            let rows = s.backing.stored_rows()?;
            if rows != (s.tasks, s.tasks) {
                stored.push(format!(
                    "the store of {} tasks holds {} snapshot entries and {} manifests",
                    s.tasks, rows.0, rows.1
                ));
            }
        }
        for ((label, suffix, _, _), (load, cpu)) in cases.into_iter().zip(&results) {
            let mut problems = stored.clone();
            if load.errors > 0 {
                problems.push(format!(
                    "{} failed calls (first: {})",
                    load.errors,
                    load.first_error.as_deref().unwrap_or("?")
                ));
            }
            let verified = if problems.is_empty() {
                format!(
                    "yes: every page {LIST_PAGE} tasks, first and last as expected; every task \
                     listed back, {} rows ×2",
                    fmt_count(if suffix.starts_with("few") {
                        FEW_TASKS
                    } else {
                        many
                    })
                )
            } else {
                let what = problems.join("; ");
                self.fail(format!("{label}: {what}"));
                format!("**NO**: {what}")
            };
            let row = Row {
                scenario: label,
                concurrency: LIST_CONCURRENCY,
                calls: load.ok + load.errors,
                errors: load.errors,
                ended: if load.count_capped { "count" } else { "time" },
                rps: load.rps(),
                p50: load.quantile_ms(0.5),
                p99: load.quantile_ms(0.99),
                write_p50: None,
                cpu: self.per_call(cpu, load.ok),
                per_commit: None,
                pairs: None,
                verified,
            };
            self.push_row(Some(&format!("{key}_{suffix}")), row);
        }
        let fill_rate = |l: &LoadResult| l.ok as f64 / l.elapsed.as_secs_f64().max(1e-9);
        self.notes.push(format!(
            "ListTasks{on}: the stores were filled through CompleteRun c64, a new task per call, \
             with a {}-byte summary: {} tasks in {:.1} s ({:.0} calls/s) and {} in {:.1} s; every \
             task was then listed back in order with its one run (pages of 1000), and a spread of \
             100 read back with GetTaskSnapshot. Pages of {LIST_PAGE} at c{LIST_CONCURRENCY}, \
             2 alternating rounds of {:.1} s per page; the deep page resumes from the token after \
             the first {} tasks.",
            fixture.summary_len(),
            n,
            many_fill.elapsed.as_secs_f64(),
            fill_rate(&many_fill),
            FEW_TASKS,
            few_fill.elapsed.as_secs_f64(),
            quarter.as_secs_f64(),
            fmt_count(mid),
        ));
        Ok(())
    }

    async fn fanout(&mut self, store: Store<'_>, key: &str) -> anyhow::Result<()> {
        let rounds = if self.cfg.quick { 1 } else { 2 };
        let secs = (self.cfg.secs / rounds).max(1);
        let on = backend(store);
        let mut totals: Vec<Measured> = FANOUT.iter().map(|_| Measured::default()).collect();
        for round in 0..rounds {
            for (&n, total) in FANOUT.iter().zip(&mut totals) {
                let label = format!(
                    "CompleteRun c64, 100 tasks, {}{on} (round {}/{rounds})",
                    watchers(n),
                    round + 1
                );
                let m = self
                    .complete_run(
                        &label,
                        store,
                        "concurrent",
                        Keying::Tasks(TASKS),
                        64,
                        secs,
                        n,
                    )
                    .await?;
                total.merge(m);
            }
        }
        let paired = matches!(store, Store::Sqlite);
        let mut table = String::new();
        let _ = writeln!(
            table,
            "WatchRuns fan-out{on}: CompleteRun c64 over 100 tasks while N watchers follow the feed \
             from now ({rounds} × {secs} s per N, interleaved); delivery is recorded_at (set in the \
             write transaction, just before its commit) to receipt by the watcher, same clock:"
        );
        let _ = writeln!(table);
        let _ = writeln!(
            table,
            "| watchers | CompleteRun RPS | RPS / 0 watchers | p99 ms | runstore CPU µs/call | client CPU µs/call | events received | delivery p50 ms | delivery p99 ms | delivery max ms | resumed streams | slowest watcher caught up | every event received |"
        );
        let _ = writeln!(
            table,
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        let base = totals[0].load.rps();
        for (&n, m) in FANOUT.iter().zip(&totals) {
            let label = if rounds > 1 {
                format!(
                    "CompleteRun c64, 100 tasks, {}{on} ({rounds} × {secs} s, interleaved)",
                    watchers(n)
                )
            } else {
                format!("CompleteRun c64, 100 tasks, {}{on}", watchers(n))
            };
            let ok = self.push_run(Some(&format!("{key}{n}")), &label, 64, m, paired);
            let per_call = self.per_call(&m.cpu, m.load.ok);
            let w = &m.watch;
            let ms = |q| quantile_ms(&w.latencies_us, q);
            let dash = |v: f64| {
                if v.is_nan() {
                    "–".to_owned()
                } else {
                    format!("{v:.2}")
                }
            };
            let _ = writeln!(
                table,
                "| {n} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                m.load.rps(),
                m.load.rps() / base.max(1e-9),
                m.load.quantile_ms(0.99),
                per_call.runstore.map_or("–".into(), |u| format!("{u:.0}")),
                per_call.client,
                fmt_count(w.events),
                dash(ms(0.5)),
                dash(ms(0.99)),
                dash(ms(1.0)),
                w.resumes,
                if n == 0 {
                    "–".to_owned()
                } else {
                    format!("{} ms", w.caught_up.as_millis())
                },
                match (n, ok) {
                    (0, _) => "–".to_owned(),
                    (_, true) => format!("yes ({} runs × {n})", fmt_count(m.load.ok)),
                    (_, false) => "**NO**".to_owned(),
                }
            );
        }
        self.sections.push(table);
        Ok(())
    }

    /// The lifecycle scenarios' targets, for those that ran.
    pub(crate) fn lifecycle_targets(&self) -> Vec<(String, Option<f64>, Target)> {
        let mut targets = Vec::new();
        let r = |a: &str, b: &str| self.ratio(a, b);
        let many = fmt_count(self.cfg.many_tasks);
        for (key, on) in [
            ("listtasks", ""),
            ("pglisttasks", ", runstore on PostgreSQL"),
        ] {
            if !self.values.contains_key(&format!("{key}_few_first")) {
                continue;
            }
            for (what, a, b) in [
                ("first-page RPS", "many_first", "few_first"),
                ("prefix-page RPS", "many_prefix", "few_prefix"),
                ("deep-page RPS", "many_deep", "few_first"),
            ] {
                let name = if a == "many_deep" {
                    format!("ListTasks deep-page RPS {many} tasks / first page of {FEW_TASKS}{on}")
                } else {
                    format!("ListTasks {what} {many} tasks / {FEW_TASKS} tasks{on}")
                };
                targets.push((
                    name,
                    r(&format!("{key}_{a}"), &format!("{key}_{b}")),
                    Target::AtLeast(0.8),
                ));
            }
        }
        for (key, on) in [("fanout", ""), ("pgfanout", ", runstore on PostgreSQL")] {
            if !self.values.contains_key(&format!("{key}0")) {
                continue;
            }
            for n in FANOUT.into_iter().filter(|&n| n > 0) {
                targets.push((
                    format!("RPS c64 with {} / no watchers{on}", watchers(n)),
                    r(&format!("{key}{n}"), &format!("{key}0")),
                    Target::AtLeast(FANOUT_TARGET),
                ));
            }
        }
        targets
    }
}

/// Lists every task (pages of up to 1000), checking that task `i` comes
/// `i`-th with one run; returns the page token that resumes after the first
/// `mid` tasks.
async fn walk_tasks(addr: SocketAddr, tasks: u64, mid: u64) -> anyhow::Result<String> {
    let mut client = PersistenceServiceClient::new(connect(addr).await?)
        .max_decoding_message_size(16 * 1024 * 1024);
    let mut token = String::new();
    let mut listed = 0u64;
    let mut mid_token = None;
    // Bounded: at most one page per 100 tasks, and some.
    for _ in 0..tasks / 100 + 10 {
        if listed == mid {
            mid_token = Some(token.clone());
        }
        let size = if listed < mid {
            (mid - listed).min(1000)
        } else {
            1000
        };
        let page = client
            .list_tasks(ListTasksRequest {
                prefix: String::new(),
                page_size: u32::try_from(size)?,
                page_token: token.clone(),
            })
            .await
            .context("ListTasks")?
            .into_inner();
        for task in &page.tasks {
            if task.task_id != task_id(listed) || task.run_count != 1 {
                bail!(
                    "ListTasks: {:?} with {} runs where {:?} with 1 was due",
                    task.task_id,
                    task.run_count,
                    task_id(listed)
                );
            }
            listed += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if listed != tasks {
        bail!("ListTasks listed {listed} tasks of {tasks}");
    }
    mid_token.context("no page token in the middle of the listing")
}
