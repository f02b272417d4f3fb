//! Points in time on the command line: a duration before now, an RFC 3339 timestamp, or ns since
//! the Unix epoch.

use std::str::FromStr;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A `--since`/`--until` value, resolved against the clock when the command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// This long before now.
    Ago(Duration),
    /// ns since the Unix epoch.
    At(u64),
}

impl When {
    /// The point in time as ns since the Unix epoch, `now_ns` being now.
    pub fn resolve(self, now_ns: u64) -> u64 {
        match self {
            When::Ago(duration) => {
                now_ns.saturating_sub(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
            }
            When::At(ns) => ns,
        }
    }
}

impl FromStr for When {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(When::At)
                .map_err(|e| format!("`{text}` is not a time in ns since the Unix epoch: {e}"));
        }
        // Durations never contain a date's `-` or a time's `:`.
        if text.contains('-') || text.contains(':') {
            return parse_rfc3339(text);
        }
        parse_duration(text).map(When::Ago).map_err(|reason| {
            format!(
                "`{text}` is neither a duration (90m, 12h, 7d, 2w, 1d12h), an RFC 3339 timestamp \
                 (2026-11-16T00:00:00Z) nor ns since the Unix epoch: {reason}"
            )
        })
    }
}

fn parse_rfc3339(text: &str) -> Result<When, String> {
    let time = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("`{text}` is not an RFC 3339 timestamp: {e}"))?;
    u64::try_from(time.unix_timestamp_nanos())
        .map(When::At)
        .map_err(|_| format!("`{text}` is before 1970 or too far ahead"))
}

/// `1d12h`, `90m`, `30s`, `2w`: numbers each followed by a unit (s, m, h, d, w).
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("it is empty".into());
    }
    let mut total_s: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit_s = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(format!("`{c}` is not a unit (s, m, h, d, w)")),
        };
        let count: u64 = digits
            .parse()
            .map_err(|_| format!("unit `{c}` has no number before it"))?;
        digits.clear();
        total_s = count
            .checked_mul(unit_s)
            .and_then(|s| total_s.checked_add(s))
            .ok_or("it is too long")?;
    }
    if !digits.is_empty() {
        return Err(format!("`{digits}` has no unit (s, m, h, d, w)"));
    }
    Ok(Duration::from_secs(total_s))
}

/// An RFC 3339 rendering of ns since the Unix epoch (the raw number if out of range).
pub fn format_ns(ns: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ns} ns"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS_PER_S: u64 = 1_000_000_000;

    #[test]
    fn durations_timestamps_and_raw_ns_are_understood() {
        assert_eq!("7d".parse(), Ok(When::Ago(Duration::from_secs(7 * 86_400))));
        assert_eq!(
            "1d12h30m5s".parse(),
            Ok(When::Ago(Duration::from_secs(86_400 + 12 * 3600 + 1805)))
        );
        assert_eq!(
            "2026-01-01T00:00:10Z".parse(),
            Ok(When::At(1_767_225_610_000_000_000))
        );
        assert_eq!(
            "2026-01-01T02:00:00+02:00".parse(),
            Ok(When::At(1_767_225_600_000_000_000))
        );
        assert_eq!(
            "1767225600000000000".parse(),
            Ok(When::At(1_767_225_600_000_000_000))
        );
        assert_eq!(
            When::Ago(Duration::from_secs(2)).resolve(5 * NS_PER_S),
            3 * NS_PER_S
        );
        assert_eq!(When::Ago(Duration::from_secs(9)).resolve(5), 0);
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        for (text, reason) in [
            ("", "empty"),
            ("7x", "`x` is not a unit"),
            ("yesterday", "is neither a duration"),
            ("d", "no number"),
            ("12h30", "`30` has no unit"),
            ("99999999999999999w", "too long"),
            ("2026-13-01T00:00:00Z", "RFC 3339"),
            ("1969-12-31T23:59:59Z", "before 1970"),
        ] {
            let error = text.parse::<When>().map(|_| ()).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn times_render_as_rfc3339() {
        assert_eq!(format_ns(1_767_225_600_000_000_000), "2026-01-01T00:00:00Z");
    }
}
