//! Durations as flags and configuration spell them.
//!
//! In: text such as `500ms`, `2s`, `5m`, `1h`. Out: a [`Duration`] of more
//! than zero and at most [`MAX_DURATION`], or a message saying what is wrong.
//! A leaf module: the CLI, the metrics and the HTTP limits all parse with it,
//! so none of them imports the daemon's wiring for it.

use std::time::Duration;

/// Longest duration a flag takes: 30 days (timers and `poll_interval * 10`
/// stay far from overflowing).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// Parses `500ms`, `2s`, `5m`, `1h`: more than zero, at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let too_long = || format!("{text} is longer than the 30 days a duration may be");
    let number: u64 = match number.parse() {
        Ok(number) => number,
        Err(error) if matches!(error.kind(), std::num::IntErrorKind::PosOverflow) => return Err(too_long()),
        Err(_) => return Err(format!("{text:?} is not a duration like 500ms, 2s, 5m or 1h")),
    };
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{text:?} has no unit: use ms, s, m or h")),
    };
    let duration = number.checked_mul(millis_per_unit).map(Duration::from_millis).ok_or_else(too_long)?;
    if duration.is_zero() {
        return Err("a duration must be more than zero".to_owned());
    }
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn huge_durations_are_refused_not_wrapped() {
        for text in ["99999999999999999999s", "307445734561825861m", "5124095576030432h", "31d", "721h", "2592001s"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(parse_duration("720h"), Ok(MAX_DURATION));
        assert!(parse_duration("99999999999999999999s").is_err_and(|error| error.contains("30 days")));
    }
}
