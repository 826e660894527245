//! Command-line flags; every one can also be set as a `RUNSTORE_*`
//! environment variable.

use std::{net::SocketAddr, num::NonZeroU64, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    api::{DEFAULT_MAX_SUMMARY_BYTES, ServiceSettings, WriteMode},
    server::admission::DEFAULT_MAX_IN_FLIGHT,
    server::{
        ServerSettings, TlsSettings,
        auth::{BearerTokens, TokensError},
        sweep::SweepSettings,
    },
    storage::{
        StorageSetting,
        postgres::{DatabaseUrl, PostgresSettings},
        sqlite::{LockWait, SqliteSettings},
    },
};

#[derive(Debug, Parser)]
#[command(
    name = "runstore",
    version,
    about = "Durable persistence of completed workflow runs, over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    Serve(Box<ServeArgs>),
    /// Copy the SQLite database to a new file, consistently, while it serves.
    Backup(BackupArgs),
}

/// Where the SQLite database is and how long to wait for its locks: shared
/// by `serve` and `backup`, so both find the same file.
#[derive(Debug, Args)]
pub struct SqliteArgs {
    /// Data directory holding the SQLite database (runstore.db); `serve`
    /// creates it if missing.
    #[arg(long, env = "RUNSTORE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// How long a write waits for another process's lock on the database
    /// before it fails with ABORTED (retryable).
    #[arg(long, env = "RUNSTORE_LOCK_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lock_timeout: Duration,
}

impl SqliteArgs {
    pub fn lock_wait(&self) -> LockWait {
        LockWait {
            timeout: self.lock_timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The file to write the copy to; it must not exist yet.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,

    #[command(flatten)]
    pub sqlite: SqliteArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "RUNSTORE_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Address of the Prometheus/OpenMetrics endpoint (HTTP, path /metrics).
    #[arg(
        long,
        env = "RUNSTORE_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_listen: SocketAddr,

    /// Storage backend: unset for SQLite in --data-dir, or a
    /// postgres://user@host:port/db URL (its password is never shown).
    #[arg(long, env = "RUNSTORE_STORAGE", hide_env_values = true)]
    pub storage: Option<StorageArg>,

    #[command(flatten)]
    pub sqlite: SqliteArgs,

    /// Largest accepted summary_json, in bytes.
    #[arg(long, env = "RUNSTORE_MAX_SUMMARY_BYTES", default_value_t = DEFAULT_MAX_SUMMARY_BYTES)]
    pub max_summary_bytes: usize,

    /// How long admitted calls may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "RUNSTORE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// After SIGTERM/SIGINT, how long to keep answering (NOT_SERVING health,
    /// UNAVAILABLE calls) before closing connections; counts against the grace.
    #[arg(long, env = "RUNSTORE_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// How often storage is probed (a durable write) for the health status.
    #[arg(long, env = "RUNSTORE_HEALTH_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub health_interval: Duration,

    /// Longest a unary call may take, from its first byte to its answer
    /// (a caller trickling a large message holds its buffer no longer; the
    /// writes it started still finish). Longer deadlines are cut to this.
    #[arg(long, env = "RUNSTORE_REQUEST_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub request_timeout: Duration,

    /// How often the background sweep expires runs and prunes old events.
    #[arg(long, env = "RUNSTORE_SWEEP_INTERVAL", default_value = "30s", value_parser = positive_duration)]
    pub sweep_interval: Duration,

    /// Expire runs whose timestamp is older than this (e.g. 30d); unset keeps them.
    #[arg(long, env = "RUNSTORE_RETAIN_FOR", value_parser = positive_duration)]
    pub retain_for: Option<Duration>,

    /// Keep only the newest N runs of each task (by timestamp); unset keeps them all.
    #[arg(long, env = "RUNSTORE_RETAIN_RUNS")]
    pub retain_runs: Option<NonZeroU64>,

    /// How long WatchRuns events are kept; a cursor older than that gets OUT_OF_RANGE.
    #[arg(long, env = "RUNSTORE_EVENT_RETENTION", default_value = "7d", value_parser = positive_duration)]
    pub event_retention: Duration,

    /// Log line format; filter with RUST_LOG (default: info).
    #[arg(long, env = "RUNSTORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Persistence calls served at once; beyond it calls get RESOURCE_EXHAUSTED.
    #[arg(long, env = "RUNSTORE_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// PEM certificate chain; serve TLS (requires --tls-key).
    #[arg(long, env = "RUNSTORE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "RUNSTORE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s); clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "RUNSTORE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// File of accepted bearer tokens, one per line ('#' comments); persistence
    /// calls then need `authorization: Bearer <token>`. Health and reflection stay open.
    #[arg(long, env = "RUNSTORE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// PostgreSQL connections per replica (keep replicas × this under max_connections).
    #[arg(long, env = "RUNSTORE_POSTGRES_POOL_SIZE", default_value_t = 16)]
    pub postgres_pool_size: usize,

    /// Bound on connecting to PostgreSQL and on waiting for a pooled connection.
    #[arg(long, env = "RUNSTORE_POSTGRES_CONNECT_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub postgres_connect_timeout: Duration,

    /// PEM CA certificate(s) trusted for PostgreSQL's TLS certificate, besides the Mozilla roots.
    #[arg(long, env = "RUNSTORE_POSTGRES_CA_FILE")]
    pub postgres_ca_file: Option<PathBuf>,

    /// How CompleteRun schedules its two writes; `sequential` is the benchmark baseline.
    #[arg(long, env = "RUNSTORE_WRITE_MODE", value_enum, default_value_t = WriteMode::Concurrent)]
    pub write_mode: WriteMode,
}

/// A file named by a flag could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tokens(#[from] TokensError),
    // The value is not repeated: it may hold a password.
    #[error(
        "--storage must be a postgres:// or postgresql:// URL (or unset for SQLite in --data-dir)"
    )]
    Storage,
}

/// The `--storage` value as given. `Debug` never shows it, since a URL
/// holds a password.
#[derive(Clone)]
pub struct StorageArg(String);

impl std::str::FromStr for StorageArg {
    type Err = std::convert::Infallible;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl std::fmt::Debug for StorageArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match DatabaseUrl::parse(&self.0) {
            Some(url) => write!(f, "{url:?}"),
            None => f.write_str("StorageArg(***)"),
        }
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl ServeArgs {
    /// The storage backend and its settings.
    pub fn storage_setting(&self) -> Result<StorageSetting, ConfigError> {
        let Some(StorageArg(value)) = &self.storage else {
            return Ok(StorageSetting::Sqlite(SqliteSettings {
                data_dir: self.sqlite.data_dir.clone(),
                max_summary_bytes: self.max_summary_bytes,
                lock_wait: self.sqlite.lock_wait(),
            }));
        };
        let url = DatabaseUrl::parse(value).ok_or(ConfigError::Storage)?;
        Ok(StorageSetting::Postgres(PostgresSettings {
            url,
            pool_size: self.postgres_pool_size.max(1),
            connect_timeout: self.postgres_connect_timeout,
            ca_file: self.postgres_ca_file.clone(),
        }))
    }

    /// Builds the server settings, reading the TLS and token files named.
    pub fn server_settings(&self) -> Result<ServerSettings, ConfigError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
                client_ca_pem: self.tls_client_ca.as_deref().map(read).transpose()?,
            }),
            _ => None,
        };
        let auth = self
            .auth_tokens_file
            .as_deref()
            .map(BearerTokens::from_file)
            .transpose()?;
        Ok(ServerSettings {
            service: ServiceSettings {
                max_summary_bytes: self.max_summary_bytes,
                write_mode: self.write_mode,
            },
            shutdown_grace: self.shutdown_grace,
            health_interval: self.health_interval,
            shutdown_delay: self.shutdown_delay,
            request_timeout: self.request_timeout,
            max_in_flight: self.max_in_flight,
            tls,
            auth,
            sweep: SweepSettings {
                interval: self.sweep_interval,
                event_retention: self.event_retention,
                retain_for: self.retain_for,
                retain_runs: self.retain_runs,
            },
            metrics: std::sync::Arc::default(),
        })
    }
}

/// A duration that must be more than zero: an interval of 0 would spin, a
/// retention or timeout of 0 would act at once.
fn positive_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(duration) if duration.is_zero() => Err("must be more than 0".into()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_intervals_and_retentions_are_refused_by_name() {
        for flag in [
            "--health-interval",
            "--sweep-interval",
            "--retain-for",
            "--event-retention",
            "--postgres-connect-timeout",
        ] {
            let err = Cli::try_parse_from(["runstore", "serve", flag, "0s"])
                .expect_err(&format!("{flag} 0s"));
            let message = err.to_string();
            assert!(message.contains(flag), "{message}");
            assert!(message.contains("must be more than 0"), "{message}");
            Cli::try_parse_from(["runstore", "serve", flag, "90s"])
                .unwrap_or_else(|err| panic!("{flag} 90s: {err}"));
        }
    }
}
