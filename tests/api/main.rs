//! Black-box contract tests: the real server on 127.0.0.1:0 (in-process via
//! `server::run`, or the real binary), a real channel, a fresh store per
//! test. One suite for every storage backend: each test is written once as
//! `async fn name(backend: Backend)` and `contract_test!(name)` instantiates
//! it per backend as `name::<backend>` (e.g. `round_trip::replace::sqlite`),
//! each under the test time limit.

/// `contract_test!(name)` after `async fn name(backend: Backend)` makes one
/// `#[tokio::test]` per backend in a module `name`, running the body under
/// `within_test_limit`. Extra tokens after the name go to `#[tokio::test]`
/// (the default is a multi-threaded runtime: the test's own blocking SQL
/// never stalls an in-process server). `contract_test!(name, sqlite_only)`
/// makes the SQLite test alone.
macro_rules! contract_test {
    ($name:ident) => {
        contract_test!($name, flavor = "multi_thread", worker_threads = 4);
    };
    // A case of SQLite's own (one data dir's files, its write lock).
    ($name:ident, sqlite_only) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                crate::helpers::within_test_limit(
                    concat!(module_path!(), "::sqlite"),
                    super::$name(crate::helpers::Backend::Sqlite),
                )
                .await
            }
        }
    };
    ($name:ident, $($runtime:tt)+) => {
        mod $name {
            #[tokio::test($($runtime)+)]
            async fn sqlite() {
                crate::helpers::within_test_limit(
                    concat!(module_path!(), "::sqlite"),
                    super::$name(crate::helpers::Backend::Sqlite),
                )
                .await
            }
            #[tokio::test($($runtime)+)]
            async fn postgres() {
                crate::helpers::within_test_limit(
                    concat!(module_path!(), "::postgres"),
                    super::$name(crate::helpers::Backend::Postgres),
                )
                .await
            }
        }
    };
}

mod backup;
mod compression;
mod concurrency;
mod crash;
mod dashboard_reads;
mod deadlines;
mod delete_run;
mod disk_full;
mod failures;
mod held_storage;
mod helpers;
mod lifecycle;
mod list_tasks;
mod locking;
mod metrics;
mod monitoring;
mod overload;
mod postgres;
mod postgres_server;
mod power_fs;
mod power_loss;
mod processes;
mod reader_memory;
mod reads;
mod retention;
mod round_trip;
mod security;
mod server_process;
mod shutdown_load;
mod space;
mod traces;
mod validation;
mod watch_runs;
