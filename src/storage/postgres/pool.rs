//! The connection pool, TLS (rustls) as the URL's `sslmode` asks, and a
//! reconnect gate: once the database is unreachable, callers fail fast with
//! UNAVAILABLE instead of each waiting out a connect timeout, and the next
//! connection attempt waits an exponentially growing, jittered delay.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    PostgresSettings,
    errors::{classify_pool, is_unreachable},
};
use crate::storage::{PoolStats, StorageError, backoff};

#[derive(Debug, thiserror::Error)]
pub enum PoolBuildError {
    #[error("the database URL is not valid: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("reading the CA file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("building the pool: {0}")]
    Build(String),
}

pub struct Connections {
    pool: Pool,
    gate: Mutex<Gate>,
}

#[derive(Default)]
struct Gate {
    failures: u32,
    retry_at: Option<Instant>,
}

/// How every connection of this replica connects: the URL's settings and
/// TLS as its `sslmode` asks.
pub fn connect_config(
    settings: &PostgresSettings,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), PoolBuildError> {
    let mut config: tokio_postgres::Config =
        settings.url.expose().parse().map_err(PoolBuildError::Url)?;
    config
        .connect_timeout(settings.connect_timeout)
        .application_name("runstore");
    Ok((config, MakeRustlsConnect::new(tls_config(settings)?)))
}

impl Connections {
    pub fn build(settings: &PostgresSettings) -> Result<Arc<Self>, PoolBuildError> {
        let (config, tls) = connect_config(settings)?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .wait_timeout(Some(settings.connect_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| PoolBuildError::Build(e.to_string()))?;
        Ok(Arc::new(Self {
            pool,
            gate: Mutex::default(),
        }))
    }

    pub fn stats(&self) -> PoolStats {
        let status = self.pool.status();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        PoolStats {
            max: count(status.max_size),
            open: count(status.size),
            in_use: count(status.size.saturating_sub(status.available)),
            waiting: count(status.waiting),
        }
    }

    /// A pooled connection, or UNAVAILABLE at once while the gate is shut.
    pub async fn get(&self) -> Result<Object, StorageError> {
        if let Some(wait) = self.gate_wait() {
            return Err(StorageError::Unavailable(format!(
                "database unreachable; reconnecting in {} ms",
                wait.as_millis()
            )));
        }
        match self.pool.get().await {
            Ok(conn) => Ok(conn),
            Err(err) => {
                let err = classify_pool(&err);
                self.failed(&err);
                Err(err)
            }
        }
    }

    /// Feeds a statement's outcome to the gate: an unreachable database
    /// shuts it, a success opens it.
    pub fn observe<T>(&self, result: &Result<T, StorageError>) {
        match result {
            Ok(_) => {
                if let Ok(mut gate) = self.gate.lock() {
                    *gate = Gate::default();
                }
            }
            Err(err) => self.failed(err),
        }
    }

    fn failed(&self, err: &StorageError) {
        if !is_unreachable(err) {
            return;
        }
        if let Ok(mut gate) = self.gate.lock() {
            // Calls that were in flight together fail together: count one
            // failed attempt per window, so the backoff grows per attempt to
            // reconnect, not per caller.
            if gate.retry_at.is_some_and(|at| at > Instant::now()) {
                return;
            }
            gate.failures = gate.failures.saturating_add(1);
            gate.retry_at = Some(Instant::now() + backoff::delay_after(gate.failures));
        }
    }

    fn gate_wait(&self) -> Option<Duration> {
        let gate = self.gate.lock().ok()?;
        let wait = gate.retry_at?.checked_duration_since(Instant::now())?;
        (!wait.is_zero()).then_some(wait)
    }
}
/// Server certificates are checked against the Mozilla roots, plus the PEM
/// CA file given, when the URL's `sslmode` makes the connection use TLS
/// (`prefer`, the default, uses it when the server offers it; `require`
/// insists; `disable` never).
fn tls_config(settings: &PostgresSettings) -> Result<rustls::ClientConfig, PoolBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|source| PoolBuildError::CaFile {
            path: path.display().to_string(),
            source,
        })?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| PoolBuildError::Tls(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| PoolBuildError::Tls(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PoolBuildError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
