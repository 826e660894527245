//! Which calls are admitted: at most a configured number at once (beyond
//! it, RESOURCE_EXHAUSTED at once rather than a growing queue), and none
//! once shutdown begins (UNAVAILABLE, while admitted calls run to
//! completion; the server closes its connections only after that, so every
//! refusal is a clean gRPC status rather than a reset stream).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::api::error::ApiError;

/// Default number of persistence calls served at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;

#[derive(Debug, Clone)]
pub struct Admission {
    closed: Arc<AtomicBool>,
    calls: TaskTracker,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
}

/// An admitted call: it counts as in flight until dropped.
#[derive(Debug)]
pub struct AdmittedCall {
    _tracked: TaskTrackerToken,
    _slot: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Self {
            closed: Arc::default(),
            calls: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    pub fn admit(&self) -> Result<AdmittedCall, ApiError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        let slot =
            Arc::clone(&self.slots)
                .try_acquire_owned()
                .map_err(|_| ApiError::Overloaded {
                    limit: self.max_in_flight,
                })?;
        Ok(AdmittedCall {
            _tracked: self.calls.token(),
            _slot: slot,
        })
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
