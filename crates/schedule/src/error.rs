//! The one error type of this crate.
//!
//! Every variant is something a user typed wrong, so every message names the input that is wrong and where it
//! sits (which field of the expression, which descriptor, which time zone) and, where it helps, what would be
//! accepted instead. A message reads `field: problem`, where the field is the part of the job it is about
//! ([`ScheduleError::field`]: `schedule`, `timezone` or `duration`), because callers show it next to other
//! validation errors. A caller that names the field itself (the job model says `catch_up_window`, not
//! `duration`) takes [`ScheduleError::problem`] alone, so no message names its field twice.

use jiff::Timestamp;

use crate::timezone::FROM_TIMEZONE_FIELD;

/// Why a schedule, time zone or duration was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{}: {}", self.field(), self.problem())]
pub enum ScheduleError {
    /// Nothing but whitespace.
    Empty,

    /// A cron expression with a field count other than 5, 6 or 7.
    FieldCount { expr: String, found: usize },

    /// One field of a cron expression is wrong. `position` counts from 1 in the expression as written.
    Field { position: usize, field: &'static str, value: String, problem: String },

    /// A field that never matches together with the others, so the schedule could never fire.
    ImpossibleDate { position: usize, field: &'static str, value: String, month_position: usize, months: String },

    /// The expression passed our checks but the cron engine still refused it. Not expected; kept so that a
    /// gap between our checks and croner's is an error message, not a panic.
    Unsupported { expr: String, reason: String },

    /// An `@word` that is not one of the descriptors we know.
    UnknownDescriptor(String),

    /// A descriptor that takes no argument was given one, or one that needs an argument was not.
    DescriptorArgument { descriptor: String, problem: String },

    /// The duration of `@every` is malformed or too short.
    Every { value: String, problem: String },

    /// The instant of `@at` is not an RFC 3339 timestamp.
    At { value: String, reason: String },

    /// The instant of `@at` is a well-formed RFC 3339 time outside the range of instants we can represent
    /// (jiff's, which ends on 9999-12-30 at 22:00 UTC, so `9999-12-31T23:59:59Z` is just past the end).
    /// `too_late`: past the end rather than before the start.
    AtOutOfRange { value: String, too_late: bool },

    /// A `CRON_TZ=` or `TZ=` prefix without anything after it.
    PrefixWithoutExpression(String),

    /// A time zone name the tz database does not know. `place` says where the name came from.
    UnknownTimeZone { name: String, place: &'static str },

    /// `Local` names each server's own zone, so servers would disagree on fire times.
    LocalTimeZone { place: &'static str },

    /// A duration that does not parse, is negative or does not fit.
    Duration { value: String, problem: String },
}

impl ScheduleError {
    /// The part of the job the error is about: `schedule`, `timezone` (the job's `timezone` field; a zone in
    /// the schedule's `CRON_TZ=` prefix is the schedule's) or `duration` (the caller knows which field held it).
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::UnknownTimeZone { place, .. } | ScheduleError::LocalTimeZone { place }
                if *place == FROM_TIMEZONE_FIELD =>
            {
                "timezone"
            }
            ScheduleError::Duration { .. } => "duration",
            _ => "schedule",
        }
    }

    /// What is wrong, without the leading `field: `.
    pub fn problem(&self) -> String {
        match self {
            ScheduleError::Empty => "the schedule is empty; expected a cron expression such as '0 30 * * * *' \
                                     or a descriptor such as '@daily' or '@every 1m'"
                .to_string(),
            ScheduleError::FieldCount { expr, found } => format!(
                "'{expr}' has {found} field(s); expected 6 (sec min hour day-of-month month day-of-week, \
                 Dkron's default), 5 (min hour day-of-month month day-of-week) or 7 (6 plus year)"
            ),
            ScheduleError::Field { position, field, value, problem } => {
                format!("field {position} ({field}) value '{value}' {problem}")
            }
            ScheduleError::ImpossibleDate { position, field, value, month_position, months } => format!(
                "field {position} ({field}) value '{value}' never occurs in the months of field {month_position} \
                 ('{months}'), so the job would never fire"
            ),
            ScheduleError::Unsupported { expr, reason } => format!("'{expr}' cannot be evaluated: {reason}"),
            ScheduleError::UnknownDescriptor(word) => format!(
                "unknown descriptor '{word}'; expected one of @yearly, @annually, @monthly, @weekly, @daily, \
                 @midnight, @hourly, @minutely, @every <duration>, @at <RFC 3339 time>, @manually"
            ),
            ScheduleError::DescriptorArgument { descriptor, problem } => format!("descriptor '{descriptor}' {problem}"),
            ScheduleError::Every { value, problem } => format!("@every duration '{value}' {problem}"),
            ScheduleError::At { value, reason } => format!(
                "@at timestamp '{value}' is not an RFC 3339 time with an offset, \
                 such as '2026-12-31T23:59:00Z' or '2026-12-31T23:59:00+01:00' ({reason})"
            ),
            ScheduleError::AtOutOfRange { value, too_late: true } => format!(
                "@at timestamp '{value}' is after the latest supported instant, {}",
                whole_seconds(Timestamp::MAX)
            ),
            ScheduleError::AtOutOfRange { value, too_late: false } => format!(
                "@at timestamp '{value}' is before the earliest supported instant, {}",
                whole_seconds(Timestamp::MIN)
            ),
            ScheduleError::PrefixWithoutExpression(prefix) => {
                format!("'{prefix}' must be followed by a cron expression or descriptor, e.g. '{prefix} 0 30 2 * * *'")
            }
            ScheduleError::UnknownTimeZone { name, place } => format!(
                "unknown time zone '{name}'{place}; use an IANA name such as 'Europe/Berlin', \
                 'America/New_York' or 'UTC'"
            ),
            ScheduleError::LocalTimeZone { place } => format!(
                "'Local'{place} means each server's own zone, so servers could disagree on when a job fires; \
                 use an IANA name such as 'Europe/Berlin' or 'UTC'"
            ),
            ScheduleError::Duration { value, problem } => format!("'{value}' {problem}"),
        }
    }
}

/// `t` without its fraction of a second, as people write limits (`9999-12-30T22:00:00Z`).
fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}
