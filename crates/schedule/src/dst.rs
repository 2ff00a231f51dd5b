//! From matching wall clock times to fire instants: the daylight saving time rules.
//!
//! A cron expression names wall clock times in the job's zone. Most name exactly one instant; around a DST
//! change some name none or two:
//!
//! * **Gap** (spring forward, e.g. Berlin 2026-03-29 02:00 → 03:00): a matching wall clock time that does not
//!   exist fires at the first instant after the gap (03:00 CEST). Several matching times in one gap (`*/15`
//!   at 02:00, 02:15, …) become that one fire.
//! * **Fold** (fall back, e.g. Berlin 2026-10-25 03:00 → 02:00): a matching wall clock time that occurs twice
//!   fires once, at its first occurrence. This holds for every expression, so an every-minute job fires
//!   02:00…02:59 CEST, is silent through the repeated hour, and resumes at 03:00 CET.
//!
//! Both rules make the map from wall clock time to instant non-decreasing, so the first matching wall clock
//! time (in wall clock order) after the wall clock reading of `after` that maps past `after` is the answer.
//! The only times that map back to or before `after` are fold times whose first occurrence is already past;
//! when we meet one we jump to the end of the fold instead of walking through it.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};

use crate::cron::CronExpr;

/// Candidates tried per search. One fold jump is the most a search needs; the bound only guards the loop.
const CANDIDATES_MAX: usize = 8;

/// The first fire instant of `expr`, evaluated in `zone`, strictly after `after`.
pub(crate) fn next_fire(expr: &CronExpr, zone: &TimeZone, after: Timestamp) -> Option<Timestamp> {
    let mut wall = zone.to_datetime(after);
    for _ in 0..CANDIDATES_MAX {
        let candidate = expr.next_wall_time_after(wall)?;
        let fire = match zone.to_ambiguous_timestamp(candidate).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(candidate).ok()?,
            AmbiguousOffset::Gap { after: offset_after, .. } => gap_end(zone, candidate, offset_after)?,
            AmbiguousOffset::Fold { before, .. } => {
                let first = before.to_timestamp(candidate).ok()?;
                if first <= after {
                    // `after` is in the repeated hour's second pass: every time left in the fold fired in the
                    // first pass. Resume at the first wall clock time past the fold.
                    wall = fold_end(zone, first, before)?.checked_sub(jiff::SignedDuration::from_nanos(1)).ok()?;
                    continue;
                }
                first
            }
        };
        if fire > after {
            return Some(fire);
        }
        wall = candidate;
    }
    None
}

/// The instant a gap ends: the transition that makes `wall` (a time inside the gap) not exist. Read with the
/// offset after the transition, `wall` lies before it, so the transition is the next one from there.
fn gap_end(zone: &TimeZone, wall: DateTime, offset_after: Offset) -> Option<Timestamp> {
    let before_transition = offset_after.to_timestamp(wall).ok()?;
    zone.following(before_transition).next().map(|transition| transition.timestamp())
}

/// The first wall clock time after a fold: the transition that ends the first pass, read with the offset in
/// force before it. `first` is the first-pass instant of a time inside the fold.
fn fold_end(zone: &TimeZone, first: Timestamp, offset_before: Offset) -> Option<DateTime> {
    let transition = zone.following(first).next()?.timestamp();
    Some(offset_before.to_datetime(transition))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> TimeZone {
        crate::timezone::parse_timezone("Europe/Berlin").unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn fires(expr: &str, zone: &TimeZone, from: &str, count: usize) -> Vec<Timestamp> {
        let expr = CronExpr::parse(expr, 0).unwrap();
        std::iter::successors(next_fire(&expr, zone, at(from)), |&t| next_fire(&expr, zone, t)).take(count).collect()
    }

    #[test]
    fn a_missing_time_fires_when_the_gap_ends() {
        // 02:30 CET on the 28th, then the missing 02:30 of the 29th at 03:00 CEST, then 02:30 CEST on the 30th.
        let got = fires("0 30 2 * * *", &berlin(), "2026-03-28T00:00:00Z", 3);
        assert_eq!(got, [at("2026-03-28T01:30:00Z"), at("2026-03-29T01:00:00Z"), at("2026-03-30T00:30:00Z")]);
    }

    #[test]
    fn several_missing_times_collapse_into_one_fire() {
        let got = fires("0 */20 2-3 * * *", &berlin(), "2026-03-29T00:50:00Z", 3);
        // 02:00, 02:20, 02:40 do not exist: one fire at 03:00 CEST, then 03:20 and 03:40.
        assert_eq!(got, [at("2026-03-29T01:00:00Z"), at("2026-03-29T01:20:00Z"), at("2026-03-29T01:40:00Z")]);
    }

    #[test]
    fn a_repeated_time_fires_once_in_the_first_pass() {
        let got = fires("0 30 2 * * *", &berlin(), "2026-10-24T12:00:00Z", 2);
        assert_eq!(got, [at("2026-10-25T00:30:00Z"), at("2026-10-26T01:30:00Z")]);
        // Starting inside the second pass skips the rest of the fold.
        let got = fires("0 * * * * *", &berlin(), "2026-10-25T01:10:00Z", 1);
        assert_eq!(got, [at("2026-10-25T02:00:00Z")]);
    }
}
