//! Retry timing: exponential backoff with full jitter, and `Retry-After`.

use std::time::{Duration, SystemTime};

/// The retry delay after `attempt` failed attempts (1 for the first failure): a uniform draw
/// in `[0, min(cap, base × 2^(attempt-1))]` ("full jitter"), taken from `random`.
pub fn full_jitter(attempt: u32, base: Duration, cap: Duration, random: u64) -> Duration {
    let ceiling = exponential_ceiling(attempt, base, cap);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(random % ceiling_ms.saturating_add(1))
}

/// `min(cap, base × 2^(attempt-1))`.
pub fn exponential_ceiling(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let shift = attempt.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << shift).min(cap)
}

/// A random `u64` from the OS, or a fixed midpoint when the OS has none to give.
pub fn random_u64() -> u64 {
    getrandom::u64().unwrap_or(u64::MAX / 2)
}

/// The delay a `Retry-After` value asks for: delay-seconds, or an HTTP date (a date in the
/// past means now). `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let (base, cap) = (100 * MS, 1000 * MS);
        let ceilings: Vec<u128> = (1..=6)
            .map(|a| exponential_ceiling(a, base, cap).as_millis())
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(exponential_ceiling(u32::MAX, base, cap), cap);
    }

    #[test]
    fn jitter_stays_within_the_ceiling() {
        let (base, cap) = (100 * MS, 1000 * MS);
        assert_eq!(full_jitter(3, base, cap, 0), Duration::ZERO);
        assert_eq!(full_jitter(3, base, cap, 400), 400 * MS);
        assert_eq!(full_jitter(3, base, cap, 401), Duration::ZERO);
        for _ in 0..1000 {
            assert!(full_jitter(4, base, cap, random_u64()) <= 800 * MS);
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
