//! Cron expressions: which wall clock times match.
//!
//! An expression has 6 fields (`sec min hour dom month dow`, Dkron's form), 5 (classic, seconds = 0) or 7
//! (6 plus year). Each field is read by [`crate::field`]; the checked, numeric result is handed to croner,
//! which searches the calendar. We only ever ask croner about civil (zone-less) date-times: turning a wall
//! clock time into an instant, with the DST rules, is [`crate::dst`]'s job, because croner's own DST handling
//! differs from ours (it runs interval jobs twice in a repeated hour and skips them in a missing one).
//!
//! Day of month and day of week combine as croner does by default, which is the Vixie cron rule: when both
//! fields are restricted a day matches if EITHER matches (`0 0 0 13 * FRI` fires on every 13th and every
//! Friday); when one of them is `*` or `?` only the other decides. A field counts as unrestricted only when
//! it is exactly `*` or `?` (robfig/cron, Dkron's engine, also treats `*/1` as unrestricted; we do not).

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::civil::DateTime;

use crate::ScheduleError;
use crate::field::{FieldContext, FieldKind, ParsedField, parse_field};

use FieldKind::{DayOfMonth, DayOfWeek, Hour, Minute, Month, Second, Year as YearField};

/// A checked cron expression.
#[derive(Clone, Debug)]
pub(crate) struct CronExpr {
    cron: Cron,
}

impl CronExpr {
    /// Reads a 5-, 6- or 7-field expression. `hash` is the job's name hash, for `~`.
    pub(crate) fn parse(expr: &str, hash: u64) -> Result<CronExpr, ScheduleError> {
        let texts: Vec<&str> = expr.split_whitespace().collect();
        let kinds: &[FieldKind] = match texts.len() {
            5 => &[Minute, Hour, DayOfMonth, Month, DayOfWeek],
            6 => &[Second, Minute, Hour, DayOfMonth, Month, DayOfWeek],
            7 => &[Second, Minute, Hour, DayOfMonth, Month, DayOfWeek, YearField],
            found => {
                return Err(ScheduleError::FieldCount { expr: expr.to_string(), found });
            }
        };
        let mut fields = Fields::default();
        for (index, (&kind, &text)) in kinds.iter().zip(&texts).enumerate() {
            let context = FieldContext { kind, position: index + 1, hash };
            fields.set(kind, Written { position: index + 1, text, parsed: parse_field(context, text)? });
        }
        fields.check_day_can_occur()?;
        let pattern = fields.croner_pattern();
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Required)
            .build()
            .parse(&pattern)
            .map_err(|error| ScheduleError::Unsupported { expr: expr.to_string(), reason: error.to_string() })?;
        Ok(CronExpr { cron })
    }

    /// The first matching wall clock time strictly after `wall` (whole seconds), or `None` when there is none
    /// before croner's search horizon (year 5000) or the expression's last year has passed.
    pub(crate) fn next_wall_time_after(&self, wall: DateTime) -> Option<DateTime> {
        self.cron.find_next_occurrence(&wall, false).ok()
    }
}

/// A field as written, with its position and reading.
#[derive(Debug)]
struct Written<'a> {
    position: usize,
    text: &'a str,
    parsed: ParsedField,
}

/// The fields of one expression, by kind; absent seconds and year take their defaults.
#[derive(Debug, Default)]
struct Fields<'a> {
    by_kind: [Option<Written<'a>>; 7],
}

impl<'a> Fields<'a> {
    fn set(&mut self, kind: FieldKind, field: Written<'a>) {
        self.by_kind[kind as usize] = Some(field);
    }

    fn get(&self, kind: FieldKind) -> Option<&Written<'a>> {
        self.by_kind[kind as usize].as_ref()
    }

    /// The 7-field numeric pattern croner reads: missing seconds are 0, a missing year is any year.
    fn croner_pattern(&self) -> String {
        let text = |kind: FieldKind, default: &'static str| {
            self.get(kind).map_or(default.to_string(), |f| f.parsed.croner_text.clone())
        };
        [
            text(Second, "0"),
            text(Minute, "*"),
            text(Hour, "*"),
            text(DayOfMonth, "*"),
            text(Month, "*"),
            text(DayOfWeek, "*"),
            text(YearField, "*"),
        ]
        .join(" ")
    }

    /// Refuses a day of month that no selected month has (`30 2`, `31 4,6`) when the day of week does not
    /// offer other days: such a job would never fire, which is always a mistake.
    fn check_day_can_occur(&self) -> Result<(), ScheduleError> {
        let (Some(day), Some(month), Some(weekday)) = (self.get(DayOfMonth), self.get(Month), self.get(DayOfWeek))
        else {
            return Ok(());
        };
        if !weekday.parsed.unrestricted || day.parsed.has_modifiers {
            return Ok(());
        }
        let longest_month = month.parsed.values.iter().map(|&m| longest_month_days(m)).max().unwrap_or(31);
        if day.parsed.values.iter().all(|&d| d > longest_month) {
            return Err(ScheduleError::ImpossibleDate {
                position: day.position,
                field: DayOfMonth.name(),
                value: day.text.to_string(),
                month_position: month.position,
                months: month.text.to_string(),
            });
        }
        Ok(())
    }
}

/// Days in `month` in its longest year (February: 29).
fn longest_month_days(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wall(text: &str) -> DateTime {
        text.parse().unwrap()
    }

    fn next(expr: &str, after: &str) -> Option<DateTime> {
        CronExpr::parse(expr, 0).unwrap().next_wall_time_after(wall(after))
    }

    #[test]
    fn five_fields_mean_seconds_zero() {
        assert_eq!(next("30 2 * * *", "2026-01-01T00:00:00"), Some(wall("2026-01-01T02:30:00")));
    }

    #[test]
    fn search_is_strictly_after_and_ignores_subseconds() {
        assert_eq!(next("* * * * * *", "2026-01-01T00:00:00"), Some(wall("2026-01-01T00:00:01")));
        assert_eq!(next("* * * * * *", "2026-01-01T00:00:00.5"), Some(wall("2026-01-01T00:00:01")));
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        // 2026-02-06 is a Friday, 2026-02-13 a Friday the 13th, 2026-03-13 a Friday as well.
        assert_eq!(next("0 0 0 13 * FRI", "2026-02-01T00:00:00"), Some(wall("2026-02-06T00:00:00")));
        assert_eq!(next("0 0 0 13 * ?", "2026-02-01T00:00:00"), Some(wall("2026-02-13T00:00:00")));
        assert_eq!(next("0 0 0 ? * FRI", "2026-02-07T00:00:00"), Some(wall("2026-02-13T00:00:00")));
    }

    #[test]
    fn a_day_no_selected_month_has_is_refused() {
        assert!(matches!(CronExpr::parse("0 0 0 30 2 *", 0), Err(ScheduleError::ImpossibleDate { .. })));
        assert!(matches!(CronExpr::parse("0 0 0 31 4,FEB ?", 0), Err(ScheduleError::ImpossibleDate { .. })));
        assert!(CronExpr::parse("0 0 0 29 2 *", 0).is_ok());
        assert!(CronExpr::parse("0 0 0 30 2 MON", 0).is_ok());
        assert!(CronExpr::parse("0 0 0 L 2 *", 0).is_ok());
    }

    #[test]
    fn field_count_is_reported() {
        let message = CronExpr::parse("* * * *", 0).unwrap_err().to_string();
        assert!(message.contains("has 4 field(s)"), "{message}");
    }
}
