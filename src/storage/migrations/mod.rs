//! The versioned schema migrations of both backends, embedded in the
//! binary. One mechanism for both: numbered plain-SQL files, applied in
//! order at start-up inside one transaction that holds a lock every other
//! starting process waits for (SQLite's write lock; a PostgreSQL advisory
//! lock), recorded in `schema_migrations`.
//!
//! Append only: a released migration is never edited. Migrations are
//! additive (expand now, contract a release later), so a replica on the
//! previous release keeps serving beside one on the next during a rolling
//! upgrade.

/// One numbered migration.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "task_counters",
        sql: include_str!("sqlite/0002_task_counters.sql"),
    },
    Migration {
        version: 3,
        name: "run_events",
        sql: include_str!("sqlite/0003_run_events.sql"),
    },
    Migration {
        version: 4,
        name: "retention",
        sql: include_str!("sqlite/0004_retention.sql"),
    },
];

pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "task_counters",
        sql: include_str!("postgres/0002_task_counters.sql"),
    },
    Migration {
        version: 3,
        name: "run_events",
        sql: include_str!("postgres/0003_run_events.sql"),
    },
    Migration {
        version: 4,
        name: "retention",
        sql: include_str!("postgres/0004_retention.sql"),
    },
];

/// The newest version in `migrations`.
pub fn latest(migrations: &[Migration]) -> i64 {
    migrations.last().map_or(0, |m| m.version)
}
