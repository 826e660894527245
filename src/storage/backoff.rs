//! Exponentially growing, jittered delays between attempts to reach a
//! store that is not there: reconnects to PostgreSQL, and opening a store
//! at start-up during an outage or on a full disk.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(5);

/// How long to wait after the `failures`-th failed attempt in a row (from
/// 1): doubling from 100 ms, capped at 5 s, jittered.
pub fn delay_after(failures: u32) -> Duration {
    let backoff = FIRST
        .saturating_mul(1 << failures.clamp(1, 16).saturating_sub(1))
        .min(MAX);
    jittered(backoff)
}

/// Between half and all of `backoff`, so replicas that lost the database
/// together do not retry in step.
fn jittered(backoff: Duration) -> Duration {
    let noise = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos(),
    );
    let half = backoff / 2;
    half + Duration::from_nanos(noise % (half.as_nanos().max(1) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_up_to_5s_within_the_jitter() {
        for (failures, full) in [(1, 100), (2, 200), (3, 400), (7, 5000), (40, 5000)] {
            let full = Duration::from_millis(full);
            let delay = delay_after(failures);
            assert!(
                delay >= full / 2 && delay <= full,
                "{failures} failures: {delay:?} outside [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
