//! Whether new calls are admitted. Closed once shutdown begins, so new calls
//! are refused with UNAVAILABLE while admitted ones finish.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crate::error::ApiError;

#[derive(Debug, Clone, Default)]
pub struct Admission {
    closed: Arc<AtomicBool>,
}

impl Admission {
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn check(&self) -> Result<(), ApiError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(ApiError::ShuttingDown)
        } else {
            Ok(())
        }
    }
}
