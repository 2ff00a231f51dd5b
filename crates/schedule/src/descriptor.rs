//! `@` descriptors: the named cron shortcuts (`@daily`, …) and Dkron's own `@every`, `@at` and `@manually`.
//!
//! The shortcuts are plain cron expressions and so run in the job's time zone like any other (`@daily` is
//! local midnight). Descriptor words are matched without regard to case.

use std::time::Duration;

use jiff::Timestamp;

use crate::ScheduleError;
use crate::cron::CronExpr;
use crate::duration::parse_duration;

/// Shortest `@every` interval. Shorter ones would make the scheduler busy with one job.
pub(crate) const EVERY_MIN: Duration = Duration::from_millis(100);

/// What a schedule does, once read.
#[derive(Clone, Debug)]
pub(crate) enum Plan {
    /// A cron expression (shortcuts included), evaluated in the job's zone. Boxed: it is far larger than
    /// the other variants.
    Cron(Box<CronExpr>),
    /// `@every d`: fires `d` after the previous reference instant (see `Schedule::next_after`).
    Every(Duration),
    /// `@at t`: fires once, at `t`.
    At(Timestamp),
    /// `@manually`: never fires by itself.
    Manual,
}

/// Reads a descriptor; `text` starts with `@`. `hash` is the job's name hash, for expressions with `~`.
pub(crate) fn parse_descriptor(text: &str, hash: u64) -> Result<Plan, ScheduleError> {
    let (word, argument) = match text.split_once(char::is_whitespace) {
        Some((word, argument)) => (word, argument.trim()),
        None => (text, ""),
    };
    let lowercase = word.to_ascii_lowercase();
    let no_argument = |plan: Plan| {
        if argument.is_empty() {
            Ok(plan)
        } else {
            Err(ScheduleError::DescriptorArgument {
                descriptor: word.to_string(),
                problem: format!("takes no argument, but '{argument}' follows it"),
            })
        }
    };
    match lowercase.as_str() {
        "@manually" => no_argument(Plan::Manual),
        "@every" => parse_every(word, argument),
        "@at" => parse_at(word, argument),
        shortcut => match shortcut_expression(shortcut) {
            Some(expr) => no_argument(Plan::Cron(Box::new(CronExpr::parse(expr, hash)?))),
            None => Err(ScheduleError::UnknownDescriptor(word.to_string())),
        },
    }
}

/// The 6-field expression a shortcut stands for.
fn shortcut_expression(word: &str) -> Option<&'static str> {
    Some(match word {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * 0",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        "@minutely" => "0 * * * * *",
        _ => return None,
    })
}

fn needs_argument(word: &str, what: &str) -> ScheduleError {
    ScheduleError::DescriptorArgument { descriptor: word.to_string(), problem: format!("needs {what}") }
}

fn parse_every(word: &str, argument: &str) -> Result<Plan, ScheduleError> {
    if argument.is_empty() {
        return Err(needs_argument(word, "a duration, e.g. '@every 1m30s'"));
    }
    let every_error = |problem: String| ScheduleError::Every { value: argument.to_string(), problem };
    let interval = parse_duration(argument).map_err(|error| match error {
        ScheduleError::Duration { problem, .. } => every_error(problem),
        other => other,
    })?;
    if interval < EVERY_MIN {
        return Err(every_error("must be at least 100ms".to_string()));
    }
    Ok(Plan::Every(interval))
}

fn parse_at(word: &str, argument: &str) -> Result<Plan, ScheduleError> {
    if argument.is_empty() {
        return Err(needs_argument(word, "an RFC 3339 time, e.g. '@at 2026-12-31T23:59:00Z'"));
    }
    argument.parse::<Timestamp>().map(Plan::At).map_err(|error| at_error(argument, &error))
}

/// Why `argument` is no `@at` instant. A time that is well formed, time and offset included, and still no
/// instant lies outside the range jiff represents; saying "not an RFC 3339 time" about `9999-12-31T23:59:59Z`
/// would send the user looking for a typo that is not there.
fn at_error(argument: &str, error: &jiff::Error) -> ScheduleError {
    match jiff::fmt::temporal::Pieces::parse(argument) {
        Ok(pieces) if pieces.time().is_some() && pieces.offset().is_some() => {
            ScheduleError::AtOutOfRange { value: argument.to_string(), too_late: pieces.date().year() > 0 }
        }
        _ => ScheduleError::At { value: argument.to_string(), reason: error.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_case_insensitive() {
        assert!(matches!(parse_descriptor("@DAILY", 0), Ok(Plan::Cron(_))));
        assert!(matches!(parse_descriptor("@Every 5s", 0), Ok(Plan::Every(d)) if d == Duration::from_secs(5)));
    }

    #[test]
    fn arguments_are_checked() {
        assert!(matches!(parse_descriptor("@daily 5", 0), Err(ScheduleError::DescriptorArgument { .. })));
        assert!(matches!(parse_descriptor("@every", 0), Err(ScheduleError::DescriptorArgument { .. })));
        assert!(matches!(parse_descriptor("@every 99ms", 0), Err(ScheduleError::Every { .. })));
        assert!(matches!(parse_descriptor("@at tomorrow", 0), Err(ScheduleError::At { .. })));
        assert!(matches!(parse_descriptor("@at 2026-01-01T00:00:00", 0), Err(ScheduleError::At { .. })));
        assert!(matches!(parse_descriptor("@reboot", 0), Err(ScheduleError::UnknownDescriptor(_))));
    }

    #[test]
    fn an_at_time_past_the_representable_range_says_so() {
        let last = "9999-12-30T22:00:00Z";
        assert!(matches!(parse_descriptor(&format!("@at {last}"), 0), Ok(Plan::At(t)) if t.to_string() == last));
        for beyond in ["9999-12-30T22:00:01Z", "9999-12-31T23:59:59Z", "9999-12-31T00:00:00-23:59"] {
            let message = parse_descriptor(&format!("@at {beyond}"), 0).unwrap_err().to_string();
            assert_eq!(
                message,
                format!("schedule: @at timestamp '{beyond}' is after the latest supported instant, {last}")
            );
        }
        let message = parse_descriptor("@at -009999-01-01T00:00:00Z", 0).unwrap_err().to_string();
        assert!(message.contains("is before the earliest supported instant, -009999-01-02T01:59:59Z"), "{message}");
    }
}
