//! One field of a cron expression: read it, check it, and rewrite it in the plain numeric form croner reads.
//!
//! We read every field ourselves rather than hand the user's text to croner, for three reasons: errors can
//! name the field and the exact item that is wrong; month and weekday names are replaced per field (croner
//! replaces them across the whole pattern); and Dkron's forms that croner lacks or reads differently are
//! translated: `~` (see [`crate::spread`]), `N/step` meaning `N-max/step` (robfig/cron's rule), `*` inside a
//! list, and steps longer than their range.
//!
//! Grammar of a field (names are case-insensitive):
//!
//! ```text
//! field := '*' | '?' | item (',' item)*          '?' only in day-of-month and day-of-week
//! item  := base ['/' step]                       base := '*' | value | value '-' value
//!        | 'L' | 'LW' | number 'W'               day-of-month only
//!        | value 'L' | value '#' (1-5 | 'L')      day-of-week only: last / nth weekday of the month
//! value := number | JAN-DEC | SUN-SAT             '~' may stand for a number anywhere (not in year)
//! ```

use crate::ScheduleError;
use crate::spread::spread_value;

/// The fields of a cron expression, in the order of a 7-field expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldKind {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

const MONTH_NAMES: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Years a 7-field expression may name. The same window as Quartz; croner itself stops at 5000.
pub(crate) const YEAR_MIN: u32 = 1970;
pub(crate) const YEAR_MAX: u32 = 2099;

impl FieldKind {
    #[cfg(test)]
    pub(crate) const ALL: [FieldKind; 7] = [
        FieldKind::Second,
        FieldKind::Minute,
        FieldKind::Hour,
        FieldKind::DayOfMonth,
        FieldKind::Month,
        FieldKind::DayOfWeek,
        FieldKind::Year,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            FieldKind::Second => "seconds",
            FieldKind::Minute => "minutes",
            FieldKind::Hour => "hours",
            FieldKind::DayOfMonth => "day-of-month",
            FieldKind::Month => "month",
            FieldKind::DayOfWeek => "day-of-week",
            FieldKind::Year => "year",
        }
    }

    /// Smallest and largest value a number in this field may have. Day of week allows 7 for Sunday.
    pub(crate) fn bounds(self) -> (u32, u32) {
        match self {
            FieldKind::Second | FieldKind::Minute => (0, 59),
            FieldKind::Hour => (0, 23),
            FieldKind::DayOfMonth => (1, 31),
            FieldKind::Month => (1, 12),
            FieldKind::DayOfWeek => (0, 7),
            FieldKind::Year => (YEAR_MIN, YEAR_MAX),
        }
    }

    /// The range `*` covers: as [`Self::bounds`], except that Sunday is counted once, as 0.
    fn star_bounds(self) -> (u32, u32) {
        match self {
            FieldKind::DayOfWeek => (0, 6),
            other => other.bounds(),
        }
    }

    fn range_text(self) -> String {
        let (min, max) = self.bounds();
        match self {
            FieldKind::Month => format!("{min}-{max} or JAN-DEC"),
            FieldKind::DayOfWeek => format!("{min}-{max} or SUN-SAT (0 and 7 are Sunday)"),
            _ => format!("{min}-{max}"),
        }
    }

    fn syntax_hint(self) -> String {
        let common = format!("a number {}, a range 'a-b', a step '*/n' or 'a-b/n', or a list 'a,b'", self.range_text());
        match self {
            FieldKind::DayOfMonth => {
                format!("{common}; also '?', 'L' (last day), 'LW' (last weekday), 'nW' (weekday nearest day n)")
            }
            FieldKind::DayOfWeek => {
                format!("{common}; also '?', 'nL' (last weekday n of the month), 'n#k' (k-th weekday n, k 1-5)")
            }
            _ => common,
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            FieldKind::Month => &MONTH_NAMES,
            FieldKind::DayOfWeek => &WEEKDAY_NAMES,
            _ => &[],
        }
    }

    /// The number a name stands for: JAN = 1, SUN = 0.
    fn name_value(self, name: &str) -> Option<u32> {
        let index = self.names().iter().position(|n| n.eq_ignore_ascii_case(name))? as u32;
        Some(if self == FieldKind::Month { index + 1 } else { index })
    }
}

/// A field that has been read and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParsedField {
    /// The field in the plain numeric syntax croner reads in strict mode.
    pub(crate) croner_text: String,
    /// The field was `*` or `?`; this decides how day-of-month and day-of-week combine.
    pub(crate) unrestricted: bool,
    /// Values matched outright, without `L`, `W` or `#`, ascending. Used to spot impossible dates.
    pub(crate) values: Vec<u32>,
    /// The field uses `L`, `W` or `#`, whose days depend on the month.
    pub(crate) has_modifiers: bool,
}

/// Where a field sits, for error messages, and the job's hash for `~`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FieldContext {
    pub(crate) kind: FieldKind,
    /// 1-based position of the field in the expression as the user wrote it.
    pub(crate) position: usize,
    pub(crate) hash: u64,
}

impl FieldContext {
    fn error(&self, value: &str, problem: impl Into<String>) -> ScheduleError {
        ScheduleError::Field {
            position: self.position,
            field: self.kind.name(),
            value: value.to_string(),
            problem: problem.into(),
        }
    }
}

/// Reads one field of a cron expression.
pub(crate) fn parse_field(context: FieldContext, text: &str) -> Result<ParsedField, ScheduleError> {
    let kind = context.kind;
    if text == "*" || text == "?" {
        if text == "?" && !matches!(kind, FieldKind::DayOfMonth | FieldKind::DayOfWeek) {
            return Err(context.error(text, "is only allowed in day-of-month and day-of-week; use '*'"));
        }
        let (min, max) = kind.star_bounds();
        return Ok(ParsedField {
            croner_text: "*".to_string(),
            unrestricted: true,
            values: (min..=max).collect(),
            has_modifiers: false,
        });
    }
    let mut tokens = Vec::new();
    let mut values = Vec::new();
    let mut has_modifiers = false;
    for raw in text.split(',') {
        if raw.is_empty() {
            return Err(context.error(text, "has an empty list item (two commas in a row, or a comma at an end)"));
        }
        let item = Item::parse(context, raw)?;
        has_modifiers |= item.is_modifier();
        values.extend(item.plain_values());
        tokens.push(item.croner_text());
    }
    check_last_and_last_weekday(context, text, &tokens)?;
    values.sort_unstable();
    values.dedup();
    Ok(ParsedField { croner_text: tokens.join(","), unrestricted: false, values, has_modifiers })
}

/// croner reads `L` next to `LW` in one field as `LW` only, dropping the last day; refuse the pair rather
/// than silently lose a fire.
fn check_last_and_last_weekday(context: FieldContext, text: &str, tokens: &[String]) -> Result<(), ScheduleError> {
    let has = |wanted: &str| tokens.iter().any(|t| t == wanted);
    if has("L") && has("LW") {
        return Err(context.error(text, "combines 'L' and 'LW', which cannot share one field; use two jobs"));
    }
    Ok(())
}

/// One comma-separated item of a field, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    /// `start-end/step`; a single value is `n-n/1`.
    Range { start: u32, end: u32, step: u32 },
    /// `L` in day-of-month.
    LastDay,
    /// `LW` in day-of-month.
    LastWeekday,
    /// `nW` in day-of-month.
    NearestWeekday(u32),
    /// `nL` or `n#L` in day-of-week.
    LastOfMonth(u32),
    /// `n#k` in day-of-week.
    Nth(u32, u32),
}

impl Item {
    fn parse(context: FieldContext, raw: &str) -> Result<Item, ScheduleError> {
        let kind = context.kind;
        let text = substitute_spread(context, raw)?.to_ascii_uppercase();
        let reader = ItemReader { context, raw: &text, original: raw };
        match kind {
            FieldKind::DayOfMonth => {
                if text == "L" {
                    return Ok(Item::LastDay);
                }
                if text == "LW" {
                    return Ok(Item::LastWeekday);
                }
                if let Some(day) = text.strip_suffix('W') {
                    return Ok(Item::NearestWeekday(reader.value(day)?));
                }
            }
            FieldKind::DayOfWeek => {
                if text == "L" {
                    return Err(reader.error(
                        "alone is ambiguous in day-of-week; write 'nL' for the last weekday n of the month \
                         (e.g. '5L' or 'FRIL' for the last Friday)",
                    ));
                }
                if let Some((day, nth)) = text.split_once('#') {
                    let day = reader.value(day)?;
                    return match nth {
                        "L" => Ok(Item::LastOfMonth(day)),
                        _ => match nth.parse::<u32>() {
                            Ok(k @ 1..=5) => Ok(Item::Nth(day, k)),
                            _ => Err(reader.error("has an occurrence after '#' that is not 1-5 or L")),
                        },
                    };
                }
                if let Some(day) = text.strip_suffix('L') {
                    return Ok(Item::LastOfMonth(reader.value(day)?));
                }
            }
            _ => {}
        }
        reader.range()
    }

    fn is_modifier(self) -> bool {
        !matches!(self, Item::Range { .. })
    }

    fn plain_values(self) -> impl Iterator<Item = u32> {
        let (start, end, step) = match self {
            Item::Range { start, end, step } => (start, end, step),
            _ => (1, 0, 1), // Empty: modifiers match no fixed value.
        };
        (start..=end).step_by(step as usize)
    }

    fn croner_text(self) -> String {
        match self {
            Item::Range { start, end, .. } if start == end => start.to_string(),
            // A step at least as long as the range reaches only the start; croner wants steps it can add.
            Item::Range { start, end, step } if step > end - start => start.to_string(),
            Item::Range { start, end, step: 1 } => format!("{start}-{end}"),
            Item::Range { start, end, step } => format!("{start}-{end}/{step}"),
            Item::LastDay => "L".to_string(),
            Item::LastWeekday => "LW".to_string(),
            Item::NearestWeekday(day) => format!("{day}W"),
            Item::LastOfMonth(day) => format!("{day}#L"),
            Item::Nth(day, k) => format!("{day}#{k}"),
        }
    }
}

/// Replaces every `~` in an item by the job's spread value for this field (see [`crate::spread`]).
fn substitute_spread(context: FieldContext, raw: &str) -> Result<String, ScheduleError> {
    if !raw.contains('~') {
        return Ok(raw.to_string());
    }
    match spread_value(context.kind, context.hash) {
        Some(value) => Ok(raw.replace('~', &value.to_string())),
        None => Err(context.error(raw, "uses '~', which is not supported in the year field")),
    }
}

/// Reads the parts of one item; `raw` is the item after `~` substitution, `original` as the user wrote it.
struct ItemReader<'a> {
    context: FieldContext,
    raw: &'a str,
    original: &'a str,
}

impl ItemReader<'_> {
    fn error(&self, problem: &str) -> ScheduleError {
        let problem = if self.raw.eq_ignore_ascii_case(self.original) {
            problem.to_string()
        } else {
            format!("(read as '{}' after '~' was replaced) {problem}", self.raw)
        };
        self.context.error(self.original, problem)
    }

    /// `base ['/' step]` with `base := '*' | value | value '-' value`.
    fn range(&self) -> Result<Item, ScheduleError> {
        let kind = self.context.kind;
        let (base, step) = match self.raw.split_once('/') {
            Some((base, step)) => (base, Some(self.step(step)?)),
            None => (self.raw, None),
        };
        let (start, end) = if base == "*" {
            kind.star_bounds()
        } else if let Some((start, end)) = base.split_once('-') {
            let (start, end) = (self.value(start)?, self.range_end(end)?);
            if start > end {
                return Err(
                    self.error("has its start after its end; ranges do not wrap around (write e.g. '22-23,0-2')")
                );
            }
            (start, end)
        } else {
            let start = self.value(base)?;
            // robfig/cron (and so Dkron) reads `N/step` as `N-max/step`.
            (start, if step.is_some() { kind.star_bounds().1.max(start) } else { start })
        };
        Ok(Item::Range { start, end, step: step.unwrap_or(1) })
    }

    fn step(&self, text: &str) -> Result<u32, ScheduleError> {
        match parse_number(text) {
            Some(0) => Err(self.error("has a step of 0; a step must be 1 or more")),
            Some(step) => Ok(step),
            None => Err(self.error("has a step that is not a whole number (e.g. '*/15')")),
        }
    }

    /// The end of a range: as [`Self::value`], except that `SUN` ends a weekday range as 7 (`FRI-SUN`).
    fn range_end(&self, text: &str) -> Result<u32, ScheduleError> {
        if self.context.kind == FieldKind::DayOfWeek && text.eq_ignore_ascii_case("SUN") {
            return Ok(7);
        }
        self.value(text)
    }

    /// A number within the field's bounds, or a month or weekday name.
    fn value(&self, text: &str) -> Result<u32, ScheduleError> {
        let kind = self.context.kind;
        let (min, max) = kind.bounds();
        if let Some(value) = kind.name_value(text) {
            return Ok(value);
        }
        match parse_number(text) {
            Some(value) if (min..=max).contains(&value) => Ok(value),
            Some(_) => Err(self.error(&format!("is out of range {}", kind.range_text()))),
            None => Err(self.error(&format!("is not valid here; use {}", kind.syntax_hint()))),
        }
    }
}

/// A plain decimal number of at most 9 digits, so it always fits a `u32`.
fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(kind: FieldKind, text: &str) -> Result<ParsedField, ScheduleError> {
        parse_field(FieldContext { kind, position: 1, hash: 858 }, text)
    }

    fn croner(kind: FieldKind, text: &str) -> String {
        read(kind, text).unwrap().croner_text
    }

    #[test]
    fn fields_are_rewritten_in_croner_strict_syntax() {
        assert_eq!(croner(FieldKind::Minute, "5/15"), "5-59/15");
        assert_eq!(croner(FieldKind::Minute, "*/15"), "0-59/15");
        assert_eq!(croner(FieldKind::Minute, "*,5"), "0-59,5");
        assert_eq!(croner(FieldKind::Minute, "10-20/100"), "10");
        assert_eq!(croner(FieldKind::Month, "jan-Mar,DEC"), "1-3,12");
        assert_eq!(croner(FieldKind::DayOfWeek, "FRI-SUN"), "5-7");
        assert_eq!(croner(FieldKind::DayOfWeek, "*/2"), "0-6/2");
        assert_eq!(croner(FieldKind::DayOfWeek, "5L,FRI#3,mon#l"), "5#L,5#3,1#L");
        assert_eq!(croner(FieldKind::DayOfMonth, "L,15W,1-3"), "L,15W,1-3");
        assert_eq!(croner(FieldKind::DayOfMonth, "lw"), "LW");
        assert_eq!(croner(FieldKind::Year, "2027,2030-2032"), "2027,2030-2032");
    }

    #[test]
    fn tilde_takes_dkrons_value_for_the_field() {
        assert_eq!(croner(FieldKind::Hour, "~"), "18");
        assert_eq!(croner(FieldKind::Minute, "~/15"), "18-59/15");
        assert_eq!(croner(FieldKind::Month, "~"), "7");
        assert!(read(FieldKind::Year, "~").is_err());
    }

    #[test]
    fn unrestricted_fields_are_only_star_and_question_mark() {
        assert!(read(FieldKind::DayOfMonth, "?").unwrap().unrestricted);
        assert!(read(FieldKind::DayOfWeek, "*").unwrap().unrestricted);
        assert!(!read(FieldKind::DayOfWeek, "*/1").unwrap().unrestricted);
        assert!(read(FieldKind::Hour, "?").is_err());
    }

    #[test]
    fn errors_name_the_item() {
        let message = read(FieldKind::Hour, "1,25").unwrap_err().to_string();
        assert_eq!(message, "schedule: field 1 (hours) value '25' is out of range 0-23");
        let message = read(FieldKind::Minute, "~-5").unwrap_err().to_string();
        assert!(message.contains("'~-5' (read as '18-5'"), "{message}");
        for bad in ["", "1,,2", "*/0", "*/x", "5-", "-5", "1-2-3", "L", "15W", "1#6", "MONDAY", "1/2/3"] {
            assert!(read(FieldKind::Minute, bad).is_err(), "{bad}");
        }
        for bad in ["L", "L-3", "W", "8L", "1#0", "1#L2"] {
            assert!(read(FieldKind::DayOfWeek, bad).is_err(), "{bad}");
        }
        assert!(read(FieldKind::DayOfMonth, "L,LW").is_err());
        assert!(read(FieldKind::DayOfMonth, "32W").is_err());
    }
}
