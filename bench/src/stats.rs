//! Pure arithmetic over samples: percentiles and the few summaries the report prints.

/// p50, p99 and max of a sample, in the sample's unit (milliseconds throughout the harness).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Summarize a sample; `None` when it is empty. NaN values are a bug in the caller.
pub fn summarize(mut values: Vec<f64>) -> Option<Summary> {
    assert!(values.iter().all(|v| !v.is_nan()), "NaN in a sample");
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(Summary {
        count: values.len(),
        p50: percentile(&values, 50.0),
        p99: percentile(&values, 99.0),
        max: values[values.len() - 1],
    })
}

/// Nearest-rank percentile of an ascending, non-empty sample: the smallest value with at least `p` % of the
/// sample at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of an empty sample");
    assert!((0.0..=100.0).contains(&p), "percentile {p} out of range");
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p50 {} · p99 {} · max {} ms", ms(self.p50), ms(self.p99), ms(self.max))
    }
}

/// Milliseconds with a precision that suits their size.
pub fn ms(value: f64) -> String {
    if value.abs() < 10.0 {
        format!("{value:.2}")
    } else if value.abs() < 1000.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// A rate or count with thousands separators (`12,345`).
pub fn thousands(value: f64) -> String {
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0 { format!("-{out}") } else { out }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_pick_sample_values() {
        let sample: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sample, 50.0), 50.0);
        assert_eq!(percentile(&sample, 99.0), 99.0);
        assert_eq!(percentile(&sample, 100.0), 100.0);
        assert_eq!(percentile(&sample, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn summary_sorts_and_reports_max() {
        let s = summarize(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.count, s.p50, s.p99, s.max), (3, 2.0, 3.0, 3.0));
        assert_eq!(summarize(Vec::new()), None);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(ms(1.23456), "1.23");
        assert_eq!(ms(12.3456), "12.3");
        assert_eq!(mib(3 * 1024 * 1024), "3.0 MiB");
    }
}
