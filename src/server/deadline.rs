//! The caller's deadline (the `grpc-timeout` header), answered with
//! DEADLINE_EXCEEDED by the service itself.
//!
//! tonic's transport enforces the same header and answers CANCELLED when it
//! fires; the service stops waiting a little earlier so the caller gets the
//! code the gRPC spec prescribes. The writes themselves are never cut short:
//! they run in their own tasks and may still complete after the reply.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// How much earlier than the transport the service gives up waiting.
fn margin(timeout: Duration) -> Duration {
    // Wide enough that a busy scheduler cannot let the transport win the race.
    (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(50))
}

/// How long the handler may wait for the writes, if the caller set a deadline.
pub fn budget(metadata: &MetadataMap) -> Option<Duration> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    Some(timeout.saturating_sub(margin(timeout)))
}

/// Parses `grpc-timeout`: at most 8 digits and a unit (H M S m u n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_malformed_values() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S", "ü"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
