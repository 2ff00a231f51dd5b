//! The one error type of this crate.
//!
//! Every variant is something a user typed wrong, so every message names the input that is wrong and where it
//! sits (which field of the expression, which descriptor, which time zone) and, where it helps, what would be
//! accepted instead. Messages start with the part of the job they are about (`schedule:`, `timezone:`,
//! `duration:`) because callers show them next to other validation errors.

/// Why a schedule, time zone or duration was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// Nothing but whitespace.
    #[error(
        "schedule: the schedule is empty; expected a cron expression such as '0 30 * * * *' \
         or a descriptor such as '@daily' or '@every 1m'"
    )]
    Empty,

    /// A cron expression with a field count other than 5, 6 or 7.
    #[error(
        "schedule: '{expr}' has {found} field(s); expected 6 (sec min hour day-of-month month day-of-week, \
         Dkron's default), 5 (min hour day-of-month month day-of-week) or 7 (6 plus year)"
    )]
    FieldCount { expr: String, found: usize },

    /// One field of a cron expression is wrong. `position` counts from 1 in the expression as written.
    #[error("schedule: field {position} ({field}) value '{value}' {problem}")]
    Field { position: usize, field: &'static str, value: String, problem: String },

    /// A field that never matches together with the others, so the schedule could never fire.
    #[error(
        "schedule: field {position} ({field}) value '{value}' never occurs in the months of field {month_position} ('{months}'), so the job would never fire"
    )]
    ImpossibleDate { position: usize, field: &'static str, value: String, month_position: usize, months: String },

    /// The expression passed our checks but the cron engine still refused it. Not expected; kept so that a
    /// gap between our checks and croner's is an error message, not a panic.
    #[error("schedule: '{expr}' cannot be evaluated: {reason}")]
    Unsupported { expr: String, reason: String },

    /// An `@word` that is not one of the descriptors we know.
    #[error(
        "schedule: unknown descriptor '{0}'; expected one of @yearly, @annually, @monthly, @weekly, @daily, \
         @midnight, @hourly, @minutely, @every <duration>, @at <RFC 3339 time>, @manually"
    )]
    UnknownDescriptor(String),

    /// A descriptor that takes no argument was given one, or one that needs an argument was not.
    #[error("schedule: descriptor '{descriptor}' {problem}")]
    DescriptorArgument { descriptor: String, problem: String },

    /// The duration of `@every` is malformed or too short.
    #[error("schedule: @every duration '{value}' {problem}")]
    Every { value: String, problem: String },

    /// The instant of `@at` is not an RFC 3339 timestamp.
    #[error(
        "schedule: @at timestamp '{value}' is not an RFC 3339 time with an offset, \
         such as '2026-12-31T23:59:00Z' or '2026-12-31T23:59:00+01:00' ({reason})"
    )]
    At { value: String, reason: String },

    /// A `CRON_TZ=` or `TZ=` prefix without anything after it.
    #[error("schedule: '{0}' must be followed by a cron expression or descriptor, e.g. '{0} 0 30 2 * * *'")]
    PrefixWithoutExpression(String),

    /// A time zone name the tz database does not know. `place` says where the name came from.
    #[error(
        "timezone: unknown time zone '{name}'{place}; use an IANA name such as 'Europe/Berlin', \
         'America/New_York' or 'UTC'"
    )]
    UnknownTimeZone { name: String, place: &'static str },

    /// `Local` names each server's own zone, so servers would disagree on fire times.
    #[error(
        "timezone: 'Local'{place} means each server's own zone, so servers could disagree on when a job fires; \
         use an IANA name such as 'Europe/Berlin' or 'UTC'"
    )]
    LocalTimeZone { place: &'static str },

    /// A duration that does not parse, is negative or does not fit.
    #[error("duration: '{value}' {problem}")]
    Duration { value: String, problem: String },
}
