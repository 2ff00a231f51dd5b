//! Properties that hold for every schedule, checked on generated expressions, zones and start instants:
//! fires strictly increase, none repeats, each fire is the first one after any instant just before it, and no
//! input string, however odd, makes parsing or evaluation panic.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

use std::time::Duration;

use kairos_schedule::jiff::{SignedDuration, Timestamp};
use kairos_schedule::{Schedule, ScheduleError, format_duration, parse_duration};
use proptest::prelude::*;

const ZONES: &[&str] = &["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"];

/// Fires followed per case. Enough to cross several DST changes with sparse expressions.
const FIRES_PER_CASE: usize = 12;

/// One item of a numeric field in `min..=max`: a value, range, step, or `~`.
fn numeric_item(min: u32, max: u32) -> impl Strategy<Value = String> {
    let value = min..=max;
    prop_oneof![
        value.clone().prop_map(|v| v.to_string()),
        (value.clone(), value.clone()).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        (1..=(max - min + 1)).prop_map(|s| format!("*/{s}")),
        (value.clone(), 1..=(max - min + 1)).prop_map(|(a, s)| format!("{a}/{s}")),
        (value.clone(), value, 1u32..=10).prop_map(|(a, b, s)| format!("{}-{}/{s}", a.min(b), a.max(b))),
        Just("~".to_string()),
    ]
}

fn numeric_field(min: u32, max: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("*".to_string()),
        3 => prop::collection::vec(numeric_item(min, max), 1..=3).prop_map(|items| items.join(",")),
    ]
}

fn day_of_month() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => numeric_field(1, 31),
        1 => Just("?".to_string()),
        1 => Just("L".to_string()),
        1 => Just("LW".to_string()),
        1 => (1u32..=31).prop_map(|d| format!("{d}W")),
    ]
}

fn month() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => numeric_field(1, 12),
        1 => prop::sample::select(vec!["JAN", "feb", "Mar-Jun", "JUL,DEC", "SEP-NOV/2"]).prop_map(String::from),
    ]
}

fn day_of_week() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => numeric_field(0, 7),
        1 => Just("?".to_string()),
        1 => (0u32..=7).prop_map(|d| format!("{d}L")),
        1 => (0u32..=7, 1u32..=5).prop_map(|(d, k)| format!("{d}#{k}")),
        1 => prop::sample::select(vec!["MON-FRI", "sat,SUN", "FRI#3", "FRIL", "TUE/2"]).prop_map(String::from),
    ]
}

fn year() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        (2020u32..=2040).prop_map(|y| y.to_string()),
        (2020u32..=2040, 0u32..=15).prop_map(|(y, n)| format!("{y}-{}", y + n)),
        (2020u32..=2040, 2020u32..=2040).prop_map(|(a, b)| format!("{a},{b}")),
    ]
}

fn cron_expression() -> impl Strategy<Value = String> {
    let six =
        (numeric_field(0, 59), numeric_field(0, 59), numeric_field(0, 23), day_of_month(), month(), day_of_week());
    (six, year(), 5usize..=7).prop_map(|((s, m, h, dom, mon, dow), year, count)| match count {
        5 => format!("{m} {h} {dom} {mon} {dow}"),
        6 => format!("{s} {m} {h} {dom} {mon} {dow}"),
        _ => format!("{s} {m} {h} {dom} {mon} {dow} {year}"),
    })
}

fn schedule_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => cron_expression(),
        1 => prop::sample::select(vec!["@yearly", "@monthly", "@weekly", "@daily", "@hourly", "@minutely", "@manually"])
            .prop_map(String::from),
        1 => (100u64..=10_000_000).prop_map(|ms| format!("@every {}", format_duration(Duration::from_millis(ms)))),
        1 => (1_577_836_800i64..=2_082_758_400).prop_map(|s| format!("@at {}", Timestamp::from_second(s).unwrap())),
        1 => (prop::sample::select(ZONES), cron_expression()).prop_map(|(zone, expr)| format!("CRON_TZ={zone} {expr}")),
    ]
}

/// Instants between 2020 and 2036, with nanoseconds.
fn instant() -> impl Strategy<Value = Timestamp> {
    (1_577_836_800i64..=2_082_758_400, 0i32..1_000_000_000).prop_map(|(s, ns)| Timestamp::new(s, ns).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn fires_strictly_increase_and_each_is_the_next_one_after_just_before_it(
        text in schedule_text(),
        zone in prop::sample::select(ZONES),
        job in "[a-z_-]{0,12}",
        from in instant(),
    ) {
        let schedule = match Schedule::parse(&text, Some(zone), &job) {
            Ok(schedule) => schedule,
            // The generator can pick a day no selected month has (`31 FEB`); that, and only that, is refused.
            Err(ScheduleError::ImpossibleDate { .. }) => return Ok(()),
            Err(other) => return Err(TestCaseError::fail(format!("{text:?} in {zone}: {other}"))),
        };
        let is_every = text.starts_with("@every");
        let mut previous = from;
        for fire in schedule.upcoming(from).take(FIRES_PER_CASE) {
            prop_assert!(fire > previous, "{text:?} in {zone}: {fire} does not follow {previous}");
            if !is_every {
                // `@every` counts from the instant asked about, so only the other kinds have fixed fire instants.
                let just_before = fire.checked_sub(SignedDuration::from_nanos(1)).unwrap();
                prop_assert_eq!(schedule.next_after(just_before), Some(fire), "{:?} in {}", text, zone);
            }
            previous = fire;
        }
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,60}", job in ".{0,8}") {
        if let Ok(schedule) = Schedule::parse(&text, None, &job) {
            exercise(&schedule);
        }
    }

    #[test]
    fn parsing_cron_like_text_never_panics(
        text in "(CRON_TZ=Europe/Berlin )?[0-9*/,?LW#~ a-zA-Z@.-]{0,40}",
        zone in prop::sample::select(ZONES),
    ) {
        if let Ok(schedule) = Schedule::parse(&text, Some(zone), "job") {
            exercise(&schedule);
        }
    }

    #[test]
    fn parsing_damaged_valid_schedules_never_panics(
        text in schedule_text(),
        at in any::<prop::sample::Index>(),
        junk in "[0-9*/,?LW#~ a-zA-Z@.:+-]{1,3}",
        replace in any::<bool>(),
        zone in prop::sample::select(ZONES),
    ) {
        // Near-valid input reaches deeper into the parser than random text, which fails at the first field.
        let chars: Vec<char> = text.chars().collect();
        let split = at.index(chars.len() + 1);
        let resume = if replace { (split + 1).min(chars.len()) } else { split };
        let damaged: String = chars[..split].iter().copied().chain(junk.chars()).chain(chars[resume..].iter().copied()).collect();
        if let Ok(schedule) = Schedule::parse(&damaged, Some(zone), "job") {
            exercise(&schedule);
        }
    }

    #[test]
    fn durations_format_and_parse_back(nanos in 0u64..=u64::MAX) {
        let duration = Duration::from_nanos(nanos);
        prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
    }

    #[test]
    fn parsing_arbitrary_durations_never_panics(text in ".{0,30}") {
        let _ = parse_duration(&text);
    }
}

/// Evaluates a schedule at ordinary and extreme instants; only a panic would fail.
fn exercise(schedule: &Schedule) {
    for after in [Timestamp::MIN, Timestamp::UNIX_EPOCH, Timestamp::from_second(1_800_000_000).unwrap(), Timestamp::MAX]
    {
        let _ = schedule.upcoming(after).take(3).count();
    }
}
