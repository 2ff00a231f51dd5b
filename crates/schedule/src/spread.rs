//! Dkron's `~` load spread: a `~` in a cron field stands for one value derived from the job's name, so many
//! jobs written `0 ~ * * * *` fire at different minutes instead of all at once.
//!
//! We reproduce Dkron's rule exactly (`dkron/job.go`, `scheduleHash`), so a job moved from Dkron keeps its
//! fire times and the value never changes across processes, versions or platforms:
//!
//! * the job's hash is the sum of the Unicode code points of its name (`"test_job"` → 858);
//! * each field takes that sum modulo its size, offset by its minimum: seconds and minutes `% 60`, hours
//!   `% 24`, day of month `% 28 + 1` (never 29-31, so every month has it), month `% 12 + 1`, day of week
//!   `% 7`;
//! * every `~` in the field is replaced by that number as text, and the field is then read as usual. So
//!   `~/15` becomes `18/15`, which means `18-59/15` (18, 33, 48): three fires an hour, not four, exactly as in
//!   Dkron.
//!
//! A sum of code points is a weak hash (anagrams collide), but matching Dkron matters more here than spread
//! quality. Dkron has no year field; `~` in our optional year field is refused.

use crate::field::FieldKind;

/// Dkron's name hash: the sum of the name's Unicode code points.
pub(crate) fn name_hash(name: &str) -> u64 {
    name.chars().fold(0u64, |sum, c| sum.wrapping_add(u64::from(c)))
}

/// The value `~` stands for in a field of `kind`, or `None` for the year field, which Dkron does not have.
pub(crate) fn spread_value(kind: FieldKind, hash: u64) -> Option<u64> {
    Some(match kind {
        FieldKind::Second | FieldKind::Minute => hash % 60,
        FieldKind::Hour => hash % 24,
        FieldKind::DayOfMonth => hash % 28 + 1,
        FieldKind::Month => hash % 12 + 1,
        FieldKind::DayOfWeek => hash % 7,
        FieldKind::Year => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values in Dkron's own test (`Test_scheduleHash`): "test_job" gives hour 18 and month 7.
    #[test]
    fn matches_dkron_for_its_own_example() {
        let hash = name_hash("test_job");
        assert_eq!(hash, 858);
        assert_eq!(spread_value(FieldKind::Hour, hash), Some(18));
        assert_eq!(spread_value(FieldKind::Month, hash), Some(7));
    }

    #[test]
    fn every_value_is_inside_its_field() {
        for name in ["", "a", "nightly-backup", "ÿ", "日本語のジョブ"] {
            let hash = name_hash(name);
            for kind in FieldKind::ALL {
                if let Some(value) = spread_value(kind, hash) {
                    let (min, max) = kind.bounds();
                    assert!((u64::from(min)..=u64::from(max)).contains(&value), "{kind:?} {value}");
                }
            }
        }
    }
}
