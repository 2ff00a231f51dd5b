//! Invalid schedules, zones and durations: each is refused with a message that names what is wrong and where.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

use kairos_schedule::{Schedule, parse_duration, parse_timezone};

/// (schedule, time zone, text the message must contain).
const CASES: &[(&str, Option<&str>, &str)] = &[
    ("", None, "schedule: the schedule is empty"),
    ("   ", None, "schedule: the schedule is empty"),
    ("* * * *", None, "'* * * *' has 4 field(s); expected 6"),
    ("* * * * * * * *", None, "has 8 field(s)"),
    ("0 0 25 * * *", None, "schedule: field 3 (hours) value '25' is out of range 0-23"),
    ("0 60 * * * *", None, "field 2 (minutes) value '60' is out of range 0-59"),
    ("60 * * * * *", None, "field 1 (seconds) value '60' is out of range 0-59"),
    ("30 25 * * *", None, "field 2 (hours) value '25' is out of range 0-23"),
    ("0 0 0 32 * *", None, "field 4 (day-of-month) value '32' is out of range 1-31"),
    ("0 0 0 0 * *", None, "field 4 (day-of-month) value '0' is out of range 1-31"),
    ("0 0 0 * 13 *", None, "field 5 (month) value '13' is out of range 1-12 or JAN-DEC"),
    ("0 0 0 * FOO *", None, "field 5 (month) value 'FOO' is not valid here"),
    ("0 0 0 * * 8", None, "field 6 (day-of-week) value '8' is out of range 0-7 or SUN-SAT"),
    ("0 0 0 * * MONDAY", None, "field 6 (day-of-week) value 'MONDAY'"),
    ("0 0 9 * * 1,2,x", None, "field 6 (day-of-week) value 'x'"),
    ("*/0 * * * * *", None, "field 1 (seconds) value '*/0' has a step of 0"),
    ("0 */x * * * *", None, "field 2 (minutes) value '*/x' has a step that is not a whole number"),
    ("0 0 5-2 * * *", None, "field 3 (hours) value '5-2' has its start after its end"),
    ("0 0 1,,2 * * *", None, "field 3 (hours) value '1,,2' has an empty list item"),
    ("0 0 ? * * *", None, "field 3 (hours) value '?' is only allowed in day-of-month and day-of-week"),
    ("0 0 0 ? * L", None, "field 6 (day-of-week) value 'L' alone is ambiguous"),
    ("0 0 12 ? * MON#6", None, "field 6 (day-of-week) value 'MON#6' has an occurrence after '#' that is not 1-5"),
    ("0 0 0 32W * ?", None, "field 4 (day-of-month) value '32W' is out of range 1-31"),
    ("0 0 0 L,LW * ?", None, "field 4 (day-of-month) value 'L,LW' combines 'L' and 'LW'"),
    ("0 0 0 * * * 1969", None, "field 7 (year) value '1969' is out of range 1970-2099"),
    ("0 0 0 * * * ~", None, "field 7 (year) value '~' uses '~'"),
    ("0 ~-5 * * * *", None, "field 2 (minutes) value '~-5' (read as '"),
    ("0 0 0 30 2 *", None, "field 4 (day-of-month) value '30' never occurs in the months of field 5 ('2')"),
    ("0 0 31 4,6 *", None, "field 3 (day-of-month) value '31' never occurs in the months of field 4 ('4,6')"),
    ("@foo", None, "schedule: unknown descriptor '@foo'"),
    ("@daily now", None, "descriptor '@daily' takes no argument, but 'now' follows it"),
    ("@manually please", None, "descriptor '@manually' takes no argument"),
    ("@every", None, "descriptor '@every' needs a duration"),
    ("@every 0s", None, "schedule: @every duration '0s' must be at least 100ms"),
    ("@every 99ms", None, "@every duration '99ms' must be at least 100ms"),
    ("@every abc", None, "@every duration 'abc' is not a duration"),
    ("@every -5s", None, "@every duration '-5s' is negative"),
    ("@at", None, "descriptor '@at' needs an RFC 3339 time"),
    ("@at 2026-13-01T00:00:00Z", None, "@at timestamp '2026-13-01T00:00:00Z' is not an RFC 3339 time"),
    ("@at 2026-01-01T00:00:00", None, "@at timestamp '2026-01-01T00:00:00' is not an RFC 3339 time"),
    ("@at 2026-01-01Z", None, "@at timestamp '2026-01-01Z' is not an RFC 3339 time"),
    (
        "@at 9999-12-31T23:59:59Z",
        None,
        "@at timestamp '9999-12-31T23:59:59Z' is after the latest supported instant, 9999-12-30T22:00:00Z",
    ),
    ("0 0 * * * *", Some("Mars/Base"), "timezone: unknown time zone 'Mars/Base'"),
    ("0 0 * * * *", Some("Local"), "timezone: 'Local'"),
    ("CRON_TZ=Mars/Base 0 0 * * *", None, "unknown time zone 'Mars/Base' in the schedule's CRON_TZ=/TZ= prefix"),
    ("TZ= 0 0 * * *", None, "unknown time zone '' in the schedule's CRON_TZ=/TZ= prefix"),
    ("CRON_TZ=Europe/Berlin", None, "'CRON_TZ=Europe/Berlin' must be followed by a cron expression"),
    ("TZ=Europe/Berlin   ", None, "'TZ=Europe/Berlin' must be followed by"),
    ("CRON_TZ=Europe/Berlin 0 0 25 * * *", None, "field 3 (hours) value '25'"),
];

#[test]
fn invalid_schedules_say_what_and_where() {
    let mut failures = Vec::new();
    for &(expr, zone, wanted) in CASES {
        match Schedule::parse(expr, zone, "job") {
            Ok(_) => failures.push(format!("{expr:?} in {zone:?} parsed, but should fail with {wanted:?}")),
            Err(error) if !error.to_string().contains(wanted) => {
                failures.push(format!("{expr:?} in {zone:?}:\n  wanted {wanted:?}\n     got {:?}", error.to_string()))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_time_zones_and_durations_name_the_input() {
    assert_eq!(
        parse_timezone("Mars/Base").unwrap_err().to_string(),
        "timezone: unknown time zone 'Mars/Base'; use an IANA name such as 'Europe/Berlin', 'America/New_York' or 'UTC'"
    );
    for bad in ["abc", "5 parsecs", "-1s", "1.2.3s"] {
        let message = parse_duration(bad).unwrap_err().to_string();
        assert!(message.starts_with(&format!("duration: '{bad}'")), "{message}");
    }
}

#[test]
fn each_message_names_its_field_exactly_once() {
    for &(expr, zone, _) in CASES {
        let error = Schedule::parse(expr, zone, "job").unwrap_err();
        let (field, problem) = (error.field(), error.problem());
        assert_eq!(error.to_string(), format!("{field}: {problem}"), "{expr:?}");
        for name in ["schedule:", "timezone:", "duration:"] {
            assert!(!problem.starts_with(name), "{expr:?}: the problem repeats a field name: {problem:?}");
        }
    }
    let duration = parse_duration("soon").unwrap_err();
    assert_eq!((duration.field(), duration.problem().starts_with("'soon' is not a duration")), ("duration", true));
}

#[test]
fn a_zone_is_blamed_on_the_field_that_named_it() {
    let from_field = Schedule::parse("0 0 * * * *", Some("Mars/Base"), "job").unwrap_err();
    assert_eq!(from_field.field(), "timezone");
    let from_prefix = Schedule::parse("CRON_TZ=Mars/Base 0 0 * * * *", None, "job").unwrap_err();
    assert_eq!(
        from_prefix.to_string(),
        "schedule: unknown time zone 'Mars/Base' in the schedule's CRON_TZ=/TZ= prefix; use an IANA name such as \
         'Europe/Berlin', 'America/New_York' or 'UTC'"
    );
    let local_prefix = Schedule::parse("TZ=Local 0 0 * * * *", None, "job").unwrap_err();
    assert!(local_prefix.to_string().starts_with("schedule: 'Local' in the schedule's"), "{local_prefix}");
}
