//! Which calls are admitted: at most a configured number at once (beyond
//! it, RESOURCE_EXHAUSTED at once rather than a growing queue), and none
//! once shutdown begins (UNAVAILABLE, while admitted calls run to
//! completion; the server closes its connections only after that, so every
//! refusal is a clean gRPC status rather than a reset stream).

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
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
    /// Calls refused because every slot was taken.
    shed: Arc<AtomicU64>,
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
            shed: Arc::default(),
        }
    }

    pub fn admit(&self) -> Result<AdmittedCall, ApiError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            self.shed.fetch_add(1, Ordering::Relaxed);
            ApiError::Overloaded {
                limit: self.max_in_flight,
            }
        })?;
        Ok(AdmittedCall {
            _tracked: self.calls.token(),
            _slot: slot,
        })
    }

    /// Calls admitted and not yet finished (with their writes).
    pub fn in_flight(&self) -> u64 {
        let free = self.slots.available_permits();
        u64::try_from(self.max_in_flight.saturating_sub(free)).unwrap_or(u64::MAX)
    }

    /// Calls refused so far because the limit was reached.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
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
