//! The factory: builds the backend the storage setting names. Tests build
//! their stores through it too.

use std::sync::Arc;

use super::{
    Storage,
    sqlite::{SqliteOpenError, SqliteSettings, SqliteStorage},
};

/// Which backend to run, with its settings.
#[derive(Debug, Clone)]
pub enum StorageSetting {
    /// SQLite in a local data dir: the embedded default.
    Sqlite(SqliteSettings),
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("SQLite storage: {0}")]
    Sqlite(#[from] SqliteOpenError),
}

/// Opens the backend `setting` names, ready to serve.
pub fn open(setting: &StorageSetting) -> Result<Arc<dyn Storage>, OpenError> {
    match setting {
        StorageSetting::Sqlite(settings) => Ok(Arc::new(SqliteStorage::open(settings)?)),
    }
}
