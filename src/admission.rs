//! Which calls are admitted. Once shutdown begins, new calls are refused
//! with UNAVAILABLE while admitted ones run to completion; the server closes
//! its connections only after that, so every refusal is a clean gRPC status
//! rather than a reset stream.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::error::ApiError;

#[derive(Debug, Clone, Default)]
pub struct Admission {
    closed: Arc<AtomicBool>,
    calls: TaskTracker,
}

impl Admission {
    /// Admits a call; it counts as in flight until the token is dropped.
    pub fn admit(&self) -> Result<TaskTrackerToken, ApiError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(ApiError::ShuttingDown)
        } else {
            Ok(self.calls.token())
        }
    }

    /// Refuses every call from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.calls.close();
    }

    /// Resolves once closed and every admitted call has finished.
    pub async fn drained(&self) {
        self.calls.wait().await;
    }
}
