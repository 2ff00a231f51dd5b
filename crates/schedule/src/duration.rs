//! Durations as people write them in job definitions and config files, in Go's style because Dkron's users
//! already write them that way: `500ms`, `30s`, `1m30s`, `1.5h`, `250us`.
//!
//! Beyond Go's `time.ParseDuration` we accept a bare number as seconds (`"30"`, as several Dkron fields are
//! plain integers of seconds) and the unit `d` for 24 hours (retention ages read better as `30d`). Negative
//! durations are refused: nothing in a job runs backwards. The arithmetic is exact integer arithmetic on
//! nanoseconds, so `1.1s` is 1 100 000 000 ns, not whatever a float rounds it to.

use std::time::Duration;

use crate::ScheduleError;

const NANOS_PER_MICRO: u128 = 1_000;
const NANOS_PER_MILLI: u128 = 1_000_000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;
const NANOS_PER_MINUTE: u128 = 60 * NANOS_PER_SECOND;
const NANOS_PER_HOUR: u128 = 60 * NANOS_PER_MINUTE;
const NANOS_PER_DAY: u128 = 24 * NANOS_PER_HOUR;

/// The longest duration we accept: what fits in 64 bits of nanoseconds (about 584 years), which is far
/// beyond any sensible timeout or interval and keeps every value printable and parseable again.
const NANOS_MAX: u128 = u64::MAX as u128;

/// Digits beyond this in a fraction are below a nanosecond for every unit, so they are ignored.
const FRACTION_DIGITS_MAX: usize = 20;

/// Integer parts longer than this cannot be below [`NANOS_MAX`] in any unit.
const INTEGER_DIGITS_MAX: usize = 20;

const HINT: &str = "is not a duration; write a number and a unit (ns, us, ms, s, m, h, d), \
                    e.g. '500ms', '30s', '1m30s', '1.5h', or a bare number of seconds such as '30'";

/// Parses a Go-style duration (`"500ms"`, `"1s"`, `"1m30s"`, `"2h"`, `"1.5s"`, `"250us"`); a bare number
/// means seconds (`"30"`). Errors name the input; negative durations are an error.
pub fn parse_duration(text: &str) -> Result<Duration, ScheduleError> {
    let error = |problem: &str| ScheduleError::Duration { value: text.to_string(), problem: problem.to_string() };
    let trimmed = text.trim();
    let unsigned = trimmed.strip_prefix('+').unwrap_or(trimmed);
    if unsigned.starts_with('-') {
        return Err(error("is negative; durations must be zero or more"));
    }
    if unsigned.is_empty() {
        return Err(error(HINT));
    }
    let nanos = if is_bare_number(unsigned) {
        component_nanos(unsigned, NANOS_PER_SECOND).ok_or_else(|| error(HINT))?
    } else {
        sum_components(unsigned).map_err(error)?
    };
    if nanos > NANOS_MAX {
        return Err(error("is too large; the maximum is about 584 years"));
    }
    // Fits: checked against NANOS_MAX, which is u64::MAX.
    Ok(Duration::from_nanos(nanos as u64))
}

/// Formats a duration in the style [`parse_duration`] reads: `"1h30m"`, `"1m0.5s"`, `"500ms"`, `"0s"`.
///
/// Zero components are left out (`1h`, not Go's `1h0m0s`); below one second the largest unit that is exact
/// is used, so the result always parses back to the same duration.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let nanos = duration.subsec_nanos();
    if seconds == 0 {
        return format_below_second(nanos);
    }
    let mut out = String::new();
    let (hours, minutes, secs) = (seconds / 3600, (seconds % 3600) / 60, seconds % 60);
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if secs > 0 || nanos > 0 {
        out.push_str(&secs.to_string());
        if nanos > 0 {
            let fraction = format!("{nanos:09}");
            out.push('.');
            out.push_str(fraction.trim_end_matches('0'));
        }
        out.push('s');
    }
    out
}

fn format_below_second(nanos: u32) -> String {
    if nanos == 0 {
        "0s".to_string()
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

fn is_bare_number(text: &str) -> bool {
    text.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Adds up `<number><unit>` components such as `1h`, `30m`, `1.5s`.
fn sum_components(mut rest: &str) -> Result<u128, &'static str> {
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(HINT);
        }
        let (number, after_number) = rest.split_at(number_len);
        let unit_len = after_number.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);
        let unit_nanos = unit_nanos(unit).ok_or(if unit.is_empty() {
            "has a number without a unit; add one of ns, us, ms, s, m, h, d (e.g. '1m30s')"
        } else {
            "has an unknown unit; use ns, us, ms, s, m, h or d (e.g. '500ms', '1h30m')"
        })?;
        let nanos = component_nanos(number, unit_nanos).ok_or(HINT)?;
        total = total.saturating_add(nanos);
        rest = after_unit;
    }
    Ok(total)
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => NANOS_PER_MICRO,
        "ms" => NANOS_PER_MILLI,
        "s" => NANOS_PER_SECOND,
        "m" => NANOS_PER_MINUTE,
        "h" => NANOS_PER_HOUR,
        "d" => NANOS_PER_DAY,
        _ => return None,
    })
}

/// `number` (digits with at most one `.`) times `unit_nanos`, truncated to whole nanoseconds. Saturates
/// rather than overflows so the caller's range check reports "too large".
fn component_nanos(number: &str, unit_nanos: u128) -> Option<u128> {
    let (integer, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (integer.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let integer = integer.trim_start_matches('0');
    if integer.len() > INTEGER_DIGITS_MAX {
        return Some(u128::MAX);
    }
    let whole: u128 = if integer.is_empty() { 0 } else { integer.parse().ok()? };
    let fraction = &fraction[..fraction.len().min(FRACTION_DIGITS_MAX)];
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let digits: u128 = fraction.parse().ok()?;
        // Below 10^20 * 8.64e13, far inside u128.
        digits * unit_nanos / 10u128.pow(fraction.len() as u32)
    };
    Some(whole.saturating_mul(unit_nanos).saturating_add(fraction_nanos))
}

/// How long until `at`; zero once it has passed (a late timer must fire at once, not wait as long again).
pub fn time_until(at: jiff::Timestamp) -> std::time::Duration {
    std::time::Duration::try_from(jiff::Timestamp::now().duration_until(at)).unwrap_or(std::time::Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations_parse_exactly() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("1s", Duration::from_secs(1)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            ("1.1s", Duration::from_millis(1100)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            (".5h", Duration::from_secs(1800)),
            ("30", Duration::from_secs(30)),
            ("0", Duration::ZERO),
            ("2.5", Duration::from_millis(2500)),
            ("+3s", Duration::from_secs(3)),
            (" 1d ", Duration::from_secs(86_400)),
            ("1h1h", Duration::from_secs(7200)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_durations_name_the_input() {
        for text in ["", "abc", "5x", "-5s", "1..5s", "s", "5s3", "1e3s", "99999999999999999999999h"] {
            let message = parse_duration(text).unwrap_err().to_string();
            assert!(message.starts_with("duration: '"), "{message}");
            assert!(message.contains(&format!("'{text}'")), "{message}");
        }
        assert!(parse_duration("-1s").unwrap_err().to_string().contains("negative"));
        assert!(parse_duration("1000y").unwrap_err().to_string().contains("unknown unit"));
    }

    #[test]
    fn formatting_is_go_like_without_zero_components() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(250), "250us"),
            (Duration::from_nanos(1500), "1500ns"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_millis(60_250), "1m0.25s"),
            (Duration::from_secs(90_000), "25h"),
        ];
        for (duration, text) in cases {
            assert_eq!(format_duration(duration), text);
            assert_eq!(parse_duration(text), Ok(duration), "{text} parses back");
        }
    }
}
