//! Time zone names to `jiff` time zones.
//!
//! Lookups go to the tz database compiled into the binary first (jiff's bundled copy), so every node of a
//! cluster, whatever tzdata its host has installed, computes the same fire times for the same job. Only a
//! name the bundled copy lacks (a zone newer than this build) is looked up in the host's database.

use std::sync::OnceLock;

use jiff::tz::{TimeZone, TimeZoneDatabase};

use crate::ScheduleError;

/// Where a time zone name came from, for error messages. Empty: the job's `timezone` field.
pub(crate) const FROM_TIMEZONE_FIELD: &str = "";
pub(crate) const FROM_PREFIX: &str = " in the schedule's CRON_TZ=/TZ= prefix";

/// Parses an IANA time zone name (case-insensitive, e.g. `Europe/Berlin`). An empty name means UTC.
pub fn parse_timezone(name: &str) -> Result<TimeZone, ScheduleError> {
    lookup(name, FROM_TIMEZONE_FIELD)
}

/// [`parse_timezone`] with the origin of `name` for the error message.
pub(crate) fn lookup(name: &str, place: &'static str) -> Result<TimeZone, ScheduleError> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(TimeZone::UTC);
    }
    if name.eq_ignore_ascii_case("local") {
        return Err(ScheduleError::LocalTimeZone { place });
    }
    bundled()
        .get(name)
        .or_else(|_| jiff::tz::db().get(name))
        .map_err(|_| ScheduleError::UnknownTimeZone { name: name.to_string(), place })
}

/// The IANA name of `zone`, `"UTC"` for zones without one (only UTC itself reaches this crate unnamed).
pub(crate) fn name_of(zone: &TimeZone) -> String {
    zone.iana_name().unwrap_or("UTC").to_string()
}

fn bundled() -> &'static TimeZoneDatabase {
    static BUNDLED: OnceLock<TimeZoneDatabase> = OnceLock::new();
    BUNDLED.get_or_init(TimeZoneDatabase::bundled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_with_dst_rules_are_found() {
        for name in ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC", "Etc/GMT+2"] {
            let zone = parse_timezone(name).unwrap();
            assert_eq!(name_of(&zone), name);
        }
        assert_eq!(name_of(&parse_timezone("europe/berlin").unwrap()), "Europe/Berlin");
        assert_eq!(parse_timezone("").unwrap(), TimeZone::UTC);
    }

    #[test]
    fn the_bundled_database_is_present() {
        assert!(bundled().get("Australia/Lord_Howe").is_ok());
    }

    #[test]
    fn unknown_and_local_zones_are_refused_with_a_hint() {
        let message = parse_timezone("Mars/Base").unwrap_err().to_string();
        assert!(message.starts_with("timezone: unknown time zone 'Mars/Base'"), "{message}");
        let message = parse_timezone("Local").unwrap_err().to_string();
        assert!(message.contains("'Local'"), "{message}");
    }
}
