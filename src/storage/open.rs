//! The factory: builds the backend the storage setting names. Tests build
//! their stores through it too.

use std::sync::Arc;

use super::{
    Storage,
    postgres::{PostgresOpenError, PostgresSettings, PostgresStorage},
    sqlite::{SqliteOpenError, SqliteSettings, SqliteStorage},
};

/// Which backend to run, with its settings.
#[derive(Debug, Clone)]
pub enum StorageSetting {
    /// SQLite in a local data dir: the embedded default.
    Sqlite(SqliteSettings),
    /// One PostgreSQL database shared by any number of replicas.
    Postgres(PostgresSettings),
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("SQLite storage: {0}")]
    Sqlite(#[from] SqliteOpenError),
    #[error("PostgreSQL storage: {0}")]
    Postgres(#[from] PostgresOpenError),
}

impl OpenError {
    /// Whether a later attempt may succeed with the same settings (an
    /// outage, a full disk), so the server should wait unready, not exit.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Sqlite(err) => err.is_transient(),
            Self::Postgres(err) => err.is_transient(),
        }
    }
}

/// Opens the backend `setting` names, ready to serve.
pub async fn open(setting: &StorageSetting) -> Result<Arc<dyn Storage>, OpenError> {
    match setting {
        StorageSetting::Sqlite(settings) => {
            let settings = settings.clone();
            // Opening runs migrations and fsyncs: blocking work.
            let storage = tokio::task::spawn_blocking(move || SqliteStorage::open(&settings))
                .await
                .map_err(|e| SqliteOpenError::Thread(std::io::Error::other(e.to_string())))??;
            Ok(Arc::new(storage))
        }
        StorageSetting::Postgres(settings) => Ok(Arc::new(PostgresStorage::open(settings).await?)),
    }
}
