//! The next fire instants of every supported syntax, as a table: expression, zone, job name, start instant,
//! and the instants that must follow, in order. A trailing `END` means the schedule must then stop.
//!
//! Expected instants are written with the zone's offset so that the DST rows read as wall clock times.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

use kairos_schedule::Schedule;
use kairos_schedule::jiff::Timestamp;

struct Row {
    expr: &'static str,
    zone: Option<&'static str>,
    job: &'static str,
    from: &'static str,
    expected: &'static [&'static str],
}

const END: &str = "END";

const fn row(
    expr: &'static str,
    zone: Option<&'static str>,
    from: &'static str,
    expected: &'static [&'static str],
) -> Row {
    Row { expr, zone, job: "job", from, expected }
}

const UTC: Option<&str> = None;
const BERLIN: Option<&str> = Some("Europe/Berlin");
const NEW_YORK: Option<&str> = Some("America/New_York");
const LORD_HOWE: Option<&str> = Some("Australia/Lord_Howe");

const JAN_1: &str = "2026-01-01T00:00:00Z";

fn rows() -> Vec<Row> {
    vec![
        // Field counts.
        row("0 30 9 * * *", UTC, JAN_1, &["2026-01-01T09:30:00Z", "2026-01-02T09:30:00Z", "2026-01-03T09:30:00Z"]),
        row("30 9 * * *", UTC, JAN_1, &["2026-01-01T09:30:00Z", "2026-01-02T09:30:00Z", "2026-01-03T09:30:00Z"]),
        row("15 30 9 * * * *", UTC, JAN_1, &["2026-01-01T09:30:15Z", "2026-01-02T09:30:15Z"]),
        // Years: a list that runs out, a range that runs out.
        row(
            "0 0 12 1 1 * 2027,2029",
            UTC,
            "2026-06-01T00:00:00Z",
            &["2027-01-01T12:00:00Z", "2029-01-01T12:00:00Z", END],
        ),
        row("0 0 0 1 1 ? 2026-2027", UTC, "2026-06-01T00:00:00Z", &["2027-01-01T00:00:00Z", END]),
        row("0 0 0 1 1 * 2020-2025", UTC, JAN_1, &[END]),
        // Ranges, lists, steps, N/step.
        row(
            "0 0-10/5,30 8-9 * * *",
            UTC,
            JAN_1,
            &[
                "2026-01-01T08:00:00Z",
                "2026-01-01T08:05:00Z",
                "2026-01-01T08:10:00Z",
                "2026-01-01T08:30:00Z",
                "2026-01-01T09:00:00Z",
            ],
        ),
        row(
            "0 5/20 * * * *",
            UTC,
            JAN_1,
            &["2026-01-01T00:05:00Z", "2026-01-01T00:25:00Z", "2026-01-01T00:45:00Z", "2026-01-01T01:05:00Z"],
        ),
        row("*/20 * * * * *", UTC, JAN_1, &["2026-01-01T00:00:20Z", "2026-01-01T00:00:40Z", "2026-01-01T00:01:00Z"]),
        row(
            "0 0 0 1 JAN-MAR/2 *",
            UTC,
            "2025-12-31T00:00:00Z",
            &["2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z", "2027-01-01T00:00:00Z"],
        ),
        // `?`, names, Sunday as 0 and 7.
        row("0 0 12 ? * MON", UTC, JAN_1, &["2026-01-05T12:00:00Z", "2026-01-12T12:00:00Z", "2026-01-19T12:00:00Z"]),
        row(
            "0 0 6 * JAN,jul sun",
            UTC,
            JAN_1,
            &[
                "2026-01-04T06:00:00Z",
                "2026-01-11T06:00:00Z",
                "2026-01-18T06:00:00Z",
                "2026-01-25T06:00:00Z",
                "2026-07-05T06:00:00Z",
            ],
        ),
        row("0 0 0 * * 7", UTC, JAN_1, &["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"]),
        row(
            "0 0 0 * * FRI-SUN",
            UTC,
            JAN_1,
            &["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z", "2026-01-09T00:00:00Z"],
        ),
        // Day of month OR day of week when both are restricted.
        row(
            "0 0 0 13 * FRI",
            UTC,
            "2026-02-01T00:00:00Z",
            &[
                "2026-02-06T00:00:00Z",
                "2026-02-13T00:00:00Z",
                "2026-02-20T00:00:00Z",
                "2026-02-27T00:00:00Z",
                "2026-03-06T00:00:00Z",
            ],
        ),
        // L, 5L, W, LW, #.
        row(
            "0 0 0 L * *",
            UTC,
            JAN_1,
            &["2026-01-31T00:00:00Z", "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z", "2026-04-30T00:00:00Z"],
        ),
        row(
            "0 0 0 ? * 5L",
            UTC,
            JAN_1,
            &["2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z", "2026-03-27T00:00:00Z", "2026-04-24T00:00:00Z"],
        ),
        row("0 0 0 ? * FRIL", UTC, JAN_1, &["2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z"]),
        // 15th: Thursday; Feb and Mar 15th are Sundays (→ Monday 16th); Aug 15th is a Saturday (→ Friday 14th).
        row(
            "0 0 0 15W * ?",
            UTC,
            JAN_1,
            &["2026-01-15T00:00:00Z", "2026-02-16T00:00:00Z", "2026-03-16T00:00:00Z", "2026-04-15T00:00:00Z"],
        ),
        row("0 0 0 15W * ?", UTC, "2026-08-01T00:00:00Z", &["2026-08-14T00:00:00Z", "2026-09-15T00:00:00Z"]),
        // Jan 31st and Feb 28th are Saturdays.
        row(
            "0 0 0 LW * ?",
            UTC,
            JAN_1,
            &["2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z", "2026-03-31T00:00:00Z", "2026-04-30T00:00:00Z"],
        ),
        row(
            "0 0 0 ? * FRI#3",
            UTC,
            JAN_1,
            &["2026-01-16T00:00:00Z", "2026-02-20T00:00:00Z", "2026-03-20T00:00:00Z", "2026-04-17T00:00:00Z"],
        ),
        row("0 0 0 ? * 5#3", UTC, JAN_1, &["2026-01-16T00:00:00Z", "2026-02-20T00:00:00Z"]),
        // Month ends and leap days.
        row(
            "0 0 0 31 * *",
            UTC,
            JAN_1,
            &["2026-01-31T00:00:00Z", "2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z", "2026-07-31T00:00:00Z"],
        ),
        row("0 0 0 29 2 *", UTC, JAN_1, &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z", "2036-02-29T00:00:00Z"]),
        row("0 0 0 29 FEB ? 2028-2030", UTC, JAN_1, &["2028-02-29T00:00:00Z", END]),
        // A nearest weekday that February can never reach: the schedule never fires.
        row("0 0 0 30W 2 ?", UTC, JAN_1, &[END]),
        // Descriptors, in the job's zone.
        row("@yearly", BERLIN, JAN_1, &["2027-01-01T00:00:00+01:00", "2028-01-01T00:00:00+01:00"]),
        row("@annually", UTC, JAN_1, &["2027-01-01T00:00:00Z"]),
        row(
            "@monthly",
            BERLIN,
            JAN_1,
            &["2026-02-01T00:00:00+01:00", "2026-03-01T00:00:00+01:00", "2026-04-01T00:00:00+02:00"],
        ),
        row("@weekly", UTC, JAN_1, &["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"]),
        row("@daily", NEW_YORK, JAN_1, &["2026-01-01T00:00:00-05:00", "2026-01-02T00:00:00-05:00"]),
        row("@midnight", UTC, JAN_1, &["2026-01-02T00:00:00Z"]),
        row("@hourly", UTC, JAN_1, &["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"]),
        row("@minutely", UTC, JAN_1, &["2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"]),
        // @every: whole seconds align to whole seconds, sub-second intervals count from the instant.
        row(
            "@every 1m30s",
            UTC,
            "2026-01-01T00:00:00.75Z",
            &["2026-01-01T00:01:30Z", "2026-01-01T00:03:00Z", "2026-01-01T00:04:30Z"],
        ),
        row("@every 30", UTC, JAN_1, &["2026-01-01T00:00:30Z", "2026-01-01T00:01:00Z"]),
        row(
            "@every 250ms",
            UTC,
            "2026-01-01T00:00:00.1Z",
            &["2026-01-01T00:00:00.35Z", "2026-01-01T00:00:00.6Z", "2026-01-01T00:00:00.85Z"],
        ),
        row("@every 1.5s", UTC, JAN_1, &["2026-01-01T00:00:01.5Z", "2026-01-01T00:00:03Z"]),
        // @at and @manually.
        row("@at 2026-12-31T23:59:00+01:00", BERLIN, JAN_1, &["2026-12-31T22:59:00Z", END]),
        row("@at 2025-12-31T23:59:00Z", UTC, JAN_1, &[END]),
        row("@at 2026-01-01T00:00:00Z", UTC, JAN_1, &[END]),
        row("@manually", UTC, JAN_1, &[END]),
        // A CRON_TZ= or TZ= prefix beats the job's zone.
        row(
            "CRON_TZ=America/New_York 0 0 9 * * *",
            BERLIN,
            JAN_1,
            &["2026-01-01T09:00:00-05:00", "2026-01-02T09:00:00-05:00"],
        ),
        row("TZ=Asia/Tokyo 0 0 9 * * *", UTC, JAN_1, &["2026-01-02T00:00:00Z"]),
        row("TZ=Asia/Tokyo @daily", UTC, JAN_1, &["2026-01-01T15:00:00Z"]),
        // Berlin: 2026-03-29 02:00 CET jumps to 03:00 CEST; 2026-10-25 03:00 CEST falls back to 02:00 CET.
        row(
            "30 2 * * *",
            BERLIN,
            "2026-03-27T12:00:00Z",
            &["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
        row("30 2 * * *", BERLIN, "2026-10-24T12:00:00Z", &["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
        row(
            "0 */20 2 * * *",
            BERLIN,
            "2026-03-29T00:00:00Z",
            &["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"],
        ),
        // Every minute through the fold: 02:58, 02:59 CEST, then the repeated hour is skipped.
        row(
            "0 * * * * *",
            BERLIN,
            "2026-10-25T02:57:00+02:00",
            &[
                "2026-10-25T02:58:00+02:00",
                "2026-10-25T02:59:00+02:00",
                "2026-10-25T03:00:00+01:00",
                "2026-10-25T03:01:00+01:00",
            ],
        ),
        // Starting inside the repeated hour's second pass: the rest of it already fired in the first pass.
        row("0 * * * * *", BERLIN, "2026-10-25T02:30:00+01:00", &["2026-10-25T03:00:00+01:00"]),
        // New York: 2026-03-08 02:00 EST jumps to 03:00 EDT; 2026-11-01 02:00 EDT falls back to 01:00 EST.
        row(
            "30 2 * * *",
            NEW_YORK,
            "2026-03-07T12:00:00Z",
            &["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"],
        ),
        row(
            "30 1 * * *",
            NEW_YORK,
            "2026-10-31T12:00:00Z",
            &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        ),
        row(
            "30 2 * * *",
            NEW_YORK,
            "2026-10-31T12:00:00Z",
            &["2026-11-01T02:30:00-05:00", "2026-11-02T02:30:00-05:00"],
        ),
        row(
            "0 * * * * *",
            NEW_YORK,
            "2026-03-08T01:58:00-05:00",
            &["2026-03-08T01:59:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:01:00-04:00"],
        ),
        // Every second through the fold: 01:59:59 EDT is followed by 02:00:00 EST, an hour later.
        row(
            "* * * * * *",
            NEW_YORK,
            "2026-11-01T01:59:58-04:00",
            &["2026-11-01T01:59:59-04:00", "2026-11-01T02:00:00-05:00", "2026-11-01T02:00:01-05:00"],
        ),
        // Lord Howe moves its clocks by 30 minutes: 2026-10-04 02:00 → 02:30, 2026-04-05 02:00 → 01:30.
        row(
            "0 15 2 * * *",
            LORD_HOWE,
            "2026-10-03T12:00:00+10:30",
            &["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"],
        ),
        row(
            "0 45 1 * * *",
            LORD_HOWE,
            "2026-04-04T12:00:00+11:00",
            &["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"],
        ),
    ]
}

fn instant(text: &str) -> Timestamp {
    text.parse().unwrap_or_else(|e| panic!("bad instant in table: {text}: {e}"))
}

#[test]
fn every_syntax_fires_at_the_expected_instants() {
    let mut failures = Vec::new();
    for row in rows() {
        let schedule = Schedule::parse(row.expr, row.zone, row.job)
            .unwrap_or_else(|e| panic!("{:?} in {:?} does not parse: {e}", row.expr, row.zone));
        let wanted: Vec<Option<Timestamp>> =
            row.expected.iter().map(|&t| if t == END { None } else { Some(instant(t)) }).collect();
        let mut got = Vec::new();
        let mut cursor = Some(instant(row.from));
        for _ in &wanted {
            cursor = cursor.and_then(|after| schedule.next_after(after));
            got.push(cursor);
        }
        if got != wanted {
            failures.push(format!(
                "{:?} in {:?} from {}:\n  wanted {wanted:?}\n     got {got:?}",
                row.expr, row.zone, row.from
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn tilde_spread_is_dkrons_and_depends_only_on_the_name() {
    // "test_job" sums to 858: minute 858 % 60 = 18, hour 858 % 24 = 18 (Dkron's own test case).
    let schedule = Schedule::parse("0 ~ ~ * * *", None, "test_job").unwrap();
    let fires: Vec<_> = schedule.upcoming(instant(JAN_1)).take(2).collect();
    assert_eq!(fires, [instant("2026-01-01T18:18:00Z"), instant("2026-01-02T18:18:00Z")]);

    // `~/15` is read as `18/15`, i.e. 18-59/15, exactly as in Dkron.
    let schedule = Schedule::parse("0 ~/15 * * * *", None, "test_job").unwrap();
    let fires: Vec<_> = schedule.upcoming(instant(JAN_1)).take(4).collect();
    let wanted = ["2026-01-01T00:18:00Z", "2026-01-01T00:33:00Z", "2026-01-01T00:48:00Z", "2026-01-01T01:18:00Z"];
    assert_eq!(fires, wanted.map(instant));

    // The same name gives the same instants every time; another name spreads elsewhere.
    let first = |name: &str| Schedule::parse("~ ~ ~ ~ ~ ~", None, name).unwrap().next_after(instant(JAN_1));
    assert_eq!(first("nightly-backup"), first("nightly-backup"));
    assert_ne!(first("nightly-backup"), first("hourly-report"));

    // 5-field expressions spread by meaning: the first field is minutes.
    let schedule = Schedule::parse("~ * * * *", None, "test_job").unwrap();
    assert_eq!(schedule.next_after(instant(JAN_1)), Some(instant("2026-01-01T00:18:00Z")));
}

#[test]
fn zone_in_effect_is_reported() {
    let schedule = Schedule::parse("0 0 * * * *", None, "job").unwrap();
    assert_eq!(schedule.time_zone_name(), "UTC");
    let schedule = Schedule::parse("0 0 * * * *", Some(""), "job").unwrap();
    assert_eq!(schedule.time_zone_name(), "UTC");
    let schedule = Schedule::parse("0 0 * * * *", Some("europe/berlin"), "job").unwrap();
    assert_eq!(schedule.time_zone_name(), "Europe/Berlin");
    let schedule = Schedule::parse("CRON_TZ=America/New_York 0 0 * * * *", Some("Europe/Berlin"), "job").unwrap();
    assert_eq!(schedule.time_zone_name(), "America/New_York");
    assert_eq!(schedule.time_zone().iana_name(), Some("America/New_York"));
}

#[test]
fn kinds_are_reported() {
    let kind = |expr: &str| {
        let schedule = Schedule::parse(expr, None, "job").unwrap();
        (schedule.is_manual(), schedule.is_one_shot())
    };
    assert_eq!(kind("@manually"), (true, false));
    assert_eq!(kind("@at 2030-01-01T00:00:00Z"), (false, true));
    assert_eq!(kind("@every 5m"), (false, false));
    assert_eq!(kind("0 0 * * * *"), (false, false));
}
