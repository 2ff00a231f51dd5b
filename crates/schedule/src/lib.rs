//! Job schedules: parse a job's `schedule` string (Dkron's syntax) and compute when it fires next.
//!
//! Pure logic, no I/O: the scheduler asks [`Schedule::next_after`] for the next fire instant and the API uses
//! it to preview upcoming fires. The pieces:
//!
//! * `field` reads and checks one cron field, `cron` a whole expression (searched with croner);
//! * `dst` turns matching wall clock times into instants with the DST rules below;
//! * `descriptor` reads `@daily`, `@every 5m`, `@at …`, `@manually`;
//! * `spread` is Dkron's `~` (a value derived from the job's name);
//! * `timezone` and `duration` read zone names and Go-style durations, also used by the job model.
//!
//! # Syntax
//!
//! * Cron with 6 fields, seconds first (`sec min hour dom month dow`, Dkron's default), 5 fields (classic,
//!   seconds = 0) or 7 fields (year last, 1970-2099). Operators `* , - / ?`; `N/step` means `N-max/step`;
//!   names `JAN`-`DEC` and `SUN`-`SAT` in any case; day of week 0-7 (0 and 7 are Sunday). Day of month also
//!   takes `L` (last day), `LW` (last weekday), `15W` (weekday nearest the 15th, never leaving the month);
//!   day of week takes `5L` / `FRIL` (last Friday) and `FRI#3` / `5#3` (third Friday).
//! * Day of month and day of week: when both are restricted a day matches if either does (Vixie cron's rule,
//!   croner's default and robfig/cron's); when one is `*` or `?`, only the other decides.
//! * `~` in a field: Dkron's load spread, see `spread` (sum of the name's code points, modulo the field).
//! * `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`, `@minutely`, evaluated in
//!   the job's time zone.
//! * `@every <duration>` (at least 100ms). A whole-second interval fires on whole seconds:
//!   `next_after(t) = floor_to_second(t) + d`; a sub-second one fires at `t + d`. The interval counts from
//!   the instant asked about, so the caller passes the previous fire to keep a steady rhythm.
//! * `@at <RFC 3339 time>` fires once; `@manually` never fires by itself.
//! * A `CRON_TZ=Area/City ` or `TZ=Area/City ` prefix sets the time zone, overriding the job's `timezone`.
//!
//! # Time zones and DST
//!
//! Zones are IANA names looked up in the tz database bundled into the binary (see `timezone`); no zone
//! means UTC. Around DST changes (see `dst`):
//!
//! * a wall clock time that does not exist (spring-forward gap) fires once, at the first instant after the
//!   gap; several such times in one gap make one fire;
//! * a wall clock time that occurs twice (fall-back fold) fires once, at its first occurrence. For
//!   every-second or every-minute expressions this means a silent repeated hour.
//!
//! Leap seconds are ignored, as everywhere in `jiff`.

mod cron;
mod descriptor;
mod dst;
mod duration;
mod error;
mod field;
mod spread;
mod timezone;

use jiff::Timestamp;
use jiff::tz::TimeZone;

pub use duration::{format_duration, parse_duration, time_until};
pub use error::ScheduleError;
pub use jiff;
pub use timezone::parse_timezone;

use descriptor::Plan;
use timezone::{FROM_PREFIX, FROM_TIMEZONE_FIELD};

/// A parsed schedule, ready to say when it fires.
#[derive(Clone, Debug)]
pub struct Schedule {
    plan: Plan,
    zone: TimeZone,
    zone_name: String,
}

impl Schedule {
    /// Parses `expr` evaluated in `timezone` (IANA name; `None` or `""` = UTC). `hash_key` is the job name,
    /// used by Dkron's `~` spread. A `CRON_TZ=`/`TZ=` prefix in `expr` wins over `timezone`.
    pub fn parse(expr: &str, timezone: Option<&str>, hash_key: &str) -> Result<Schedule, ScheduleError> {
        let text = expr.trim();
        if text.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let (zone, body) = match split_zone_prefix(text)? {
            Some((name, body)) => (timezone::lookup(name, FROM_PREFIX)?, body),
            None => (timezone::lookup(timezone.unwrap_or(""), FROM_TIMEZONE_FIELD)?, text),
        };
        let hash = spread::name_hash(hash_key);
        let plan = if body.starts_with('@') {
            descriptor::parse_descriptor(body, hash)?
        } else {
            Plan::Cron(Box::new(cron::CronExpr::parse(body, hash)?))
        };
        let zone_name = timezone::name_of(&zone);
        Ok(Schedule { plan, zone, zone_name })
    }

    /// The first fire instant strictly after `after`, or `None` if the schedule never fires again
    /// (`@manually`, a past `@at`, a year list that has run out).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.plan {
            Plan::Cron(expr) => dst::next_fire(expr, &self.zone, after),
            Plan::Every(interval) if interval.subsec_nanos() == 0 => {
                floor_to_second(after)?.checked_add(*interval).ok()
            }
            Plan::Every(interval) => after.checked_add(*interval).ok(),
            Plan::At(at) => (*at > after).then_some(*at),
            Plan::Manual => None,
        }
    }

    /// The fire instants after `after`, in order: `next_after` applied repeatedly. For previews.
    pub fn upcoming(&self, after: Timestamp) -> impl Iterator<Item = Timestamp> + '_ {
        std::iter::successors(self.next_after(after), move |&fire| self.next_after(fire))
    }

    /// `@manually`: the job only runs when asked to.
    pub fn is_manual(&self) -> bool {
        matches!(self.plan, Plan::Manual)
    }

    /// `@at`: the job fires at most once.
    pub fn is_one_shot(&self) -> bool {
        matches!(self.plan, Plan::At(_))
    }

    /// The zone the schedule is evaluated in (a `CRON_TZ=`/`TZ=` prefix wins over the job's `timezone`).
    pub fn time_zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The IANA name of [`Self::time_zone`], `"UTC"` by default.
    pub fn time_zone_name(&self) -> String {
        self.zone_name.clone()
    }
}

/// Splits `CRON_TZ=Area/City rest` (or `TZ=…`) into the zone name and the rest.
fn split_zone_prefix(text: &str) -> Result<Option<(&str, &str)>, ScheduleError> {
    let Some(after_prefix) = text.strip_prefix("CRON_TZ=").or_else(|| text.strip_prefix("TZ=")) else {
        return Ok(None);
    };
    let (name, body) = after_prefix.split_once(char::is_whitespace).unwrap_or((after_prefix, ""));
    if name.is_empty() {
        return Err(ScheduleError::UnknownTimeZone { name: String::new(), place: FROM_PREFIX });
    }
    let body = body.trim();
    if body.is_empty() {
        let prefix_len = text.len() - after_prefix.len();
        return Err(ScheduleError::PrefixWithoutExpression(format!("{}{name}", &text[..prefix_len])));
    }
    Ok(Some((name, body)))
}

/// `t` with its fraction of a second dropped, rounding towards the past (also before 1970).
fn floor_to_second(t: Timestamp) -> Option<Timestamp> {
    let second = t.as_second() - i64::from(t.subsec_nanosecond() < 0);
    Timestamp::from_second(second).ok()
}
