//! From registry samples to StatsD lines and packets: pure, so every rule is tested without a socket.
//!
//! - Counters go out as the increase since the previous flush (`|c`), only when there was one.
//! - Gauges go out every flush (`|g`). A negative value is sent as `0|g` then the value: StatsD reads a signed
//!   gauge as a change, not a value.
//! - Histograms go out as the increase of their observation count and of their sum (`name.count|c`,
//!   `name.sum|c`), so any backend gets the rate and the mean (`sum / count`) over any window; their buckets are
//!   not sent (percentiles come from Prometheus: StatsD timers need every observation, a histogram keeps none).
//! - Names: `kairos.` and the Prometheus family without its `kairos_` prefix (`kairos.runs_finished`).
//!   DogStatsD gets labels as tags (`|#executor:shell,status:succeeded`), then `node:<name>`, then
//!   `--dog-statsd-tags`. Plain StatsD has no tags: labels are folded into the name as `.key.value`
//!   (`kairos.runs_finished.executor.shell.status.succeeded`), every character but letters, digits, `_` and `-`
//!   turned into `_`; gauges get the node's name after `kairos.` (`kairos.node-1.raft_term`), as go-metrics does
//!   with the host name, since each node's value means something only per node, while counters keep one name
//!   cluster-wide so that they add up.

use std::collections::HashMap;

use super::exposition::{Kind, Sample};

/// The largest packet sent: fits one Ethernet frame's payload (1500) less IP and UDP headers with room to spare,
/// so nothing is fragmented on the way (what DogStatsD's clients use for UDP, 1432).
pub const PACKET_BYTES_MAX: usize = 1432;

/// How lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    /// Etsy StatsD: no tags.
    Plain,
    /// DogStatsD, with these tags (`--dog-statsd-tags`) on every line.
    Dog { tags: Vec<String> },
}

/// What a point is sent as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// An increase since the previous flush (`|c`).
    Count(f64),
    /// A value now (`|g`).
    Gauge(f64),
}

/// One line to send, before it is written for a flavor.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The family without `kairos_` (`runs_finished`).
    pub metric: String,
    pub labels: Vec<(String, String)>,
    /// `count` or `sum` for histograms.
    pub suffix: Option<&'static str>,
    pub value: Value,
}

/// The cumulative values of the previous flush, per series: counters and histograms are sent as differences.
#[derive(Debug, Default)]
pub struct Deltas {
    last: HashMap<String, f64>,
}

impl Deltas {
    /// The points of this flush; remembers the cumulative values for the next one.
    pub fn points(&mut self, samples: &[Sample]) -> Vec<Point> {
        let mut points = Vec::new();
        for sample in samples.iter().filter(|s| s.value.is_finite()) {
            let metric = sample.family.strip_prefix("kairos_").unwrap_or(&sample.family).to_string();
            let tail = &sample.name[sample.family.len()..];
            let (suffix, cumulative) = match (sample.kind, tail) {
                (Kind::Gauge, "") => (None, false),
                (Kind::Counter, "_total") => (None, true),
                (Kind::Histogram, "_count") => (Some("count"), true),
                (Kind::Histogram, "_sum") => (Some("sum"), true),
                _ => continue,
            };
            let value = if cumulative {
                let previous = self.last.insert(sample.series.clone(), sample.value).unwrap_or(0.0);
                // A counter never goes down within a process; if one did, what it holds now is all new.
                let delta = if sample.value < previous { sample.value } else { sample.value - previous };
                if delta == 0.0 {
                    continue;
                }
                Value::Count(delta)
            } else {
                Value::Gauge(sample.value)
            };
            points.push(Point { metric, labels: sample.labels.clone(), suffix, value });
        }
        points
    }
}

/// The lines of one point (two for a negative gauge).
pub fn lines(point: &Point, flavor: &Flavor, node: &str) -> Vec<String> {
    let name = match flavor {
        Flavor::Plain => plain_name(point, node),
        Flavor::Dog { .. } => {
            let suffix = point.suffix.map(|s| format!(".{s}")).unwrap_or_default();
            format!("kairos.{}{suffix}", point.metric)
        }
    };
    let tags = match flavor {
        Flavor::Plain => String::new(),
        Flavor::Dog { tags } => {
            let labels = point.labels.iter().map(|(k, v)| format!("{}:{}", tag_text(k), tag_text(v)));
            let all: Vec<String> =
                labels.chain([format!("node:{}", tag_text(node))]).chain(tags.iter().cloned()).collect();
            format!("|#{}", all.join(","))
        }
    };
    match point.value {
        Value::Count(delta) => vec![format!("{name}:{delta}|c{tags}")],
        Value::Gauge(value) if value < 0.0 => vec![format!("{name}:0|g{tags}"), format!("{name}:{value}|g{tags}")],
        Value::Gauge(value) => vec![format!("{name}:{value}|g{tags}")],
    }
}

fn plain_name(point: &Point, node: &str) -> String {
    let mut name = String::from("kairos");
    if matches!(point.value, Value::Gauge(_)) {
        name.push('.');
        name.push_str(&name_part(node));
    }
    name.push('.');
    name.push_str(&point.metric);
    for (key, value) in &point.labels {
        name.push_str(&format!(".{}.{}", name_part(key), name_part(value)));
    }
    if let Some(suffix) = point.suffix {
        name.push('.');
        name.push_str(suffix);
    }
    name
}

/// A label or node name as one segment of a dotted name: `/v1/jobs/{job}` → `v1_jobs__job`.
fn name_part(text: &str) -> String {
    let part: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    let part = part.trim_matches('_');
    if part.is_empty() { "none".into() } else { part.to_string() }
}

/// A tag's key or value without the characters DogStatsD's line format reserves (`,` `|` `#` and whitespace).
fn tag_text(text: &str) -> String {
    text.chars().map(|c| if matches!(c, ',' | '|' | '#') || c.is_whitespace() { '_' } else { c }).collect()
}

/// Lines joined by newlines into packets of at most `bytes_max` bytes. A line longer than that on its own is
/// dropped (counted in the answer): a truncated line would be misread.
pub fn packets(lines: &[String], bytes_max: usize) -> (Vec<String>, usize) {
    let mut packets = Vec::new();
    let mut current = String::new();
    let mut dropped = 0;
    for line in lines {
        if line.len() > bytes_max {
            dropped += 1;
            continue;
        }
        if !current.is_empty() && current.len() + 1 + line.len() > bytes_max {
            packets.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        packets.push(current);
    }
    (packets, dropped)
}

#[cfg(test)]
mod tests {
    use super::super::exposition::parse;
    use super::*;

    const FIRST: &str = "# TYPE kairos_runs_finished counter\n\
        kairos_runs_finished_total{executor=\"shell\",status=\"succeeded\"} 3\n\
        # TYPE kairos_run_start_lag_seconds histogram\n\
        kairos_run_start_lag_seconds_sum{executor=\"shell\"} 0.5\n\
        kairos_run_start_lag_seconds_count{executor=\"shell\"} 2\n\
        kairos_run_start_lag_seconds_bucket{le=\"0.256\",executor=\"shell\"} 2\n\
        # TYPE kairos_raft_term gauge\nkairos_raft_term 4\n# EOF\n";

    fn all_lines(points: &[Point], flavor: &Flavor) -> Vec<String> {
        points.iter().flat_map(|p| lines(p, flavor, "node-1")).collect()
    }

    #[test]
    fn counters_and_histograms_are_sent_as_increases_and_gauges_every_time() {
        let mut deltas = Deltas::default();
        let first = all_lines(&deltas.points(&parse(FIRST)), &Flavor::Plain);
        assert_eq!(
            first,
            [
                "kairos.runs_finished.executor.shell.status.succeeded:3|c",
                "kairos.run_start_lag_seconds.executor.shell.sum:0.5|c",
                "kairos.run_start_lag_seconds.executor.shell.count:2|c",
                "kairos.node-1.raft_term:4|g",
            ]
        );
        let unchanged = all_lines(&deltas.points(&parse(FIRST)), &Flavor::Plain);
        assert_eq!(unchanged, ["kairos.node-1.raft_term:4|g"], "no increase, nothing but the gauge");
        let later = FIRST
            .replace("} 3", "} 5")
            .replace("} 0.5", "} 0.75")
            .replace("_count{executor=\"shell\"} 2", "_count{executor=\"shell\"} 3");
        let second = all_lines(&deltas.points(&parse(&later)), &Flavor::Plain);
        assert_eq!(
            second,
            [
                "kairos.runs_finished.executor.shell.status.succeeded:2|c",
                "kairos.run_start_lag_seconds.executor.shell.sum:0.25|c",
                "kairos.run_start_lag_seconds.executor.shell.count:1|c",
                "kairos.node-1.raft_term:4|g",
            ]
        );
    }

    #[test]
    fn dogstatsd_lines_carry_labels_the_node_and_the_global_tags() {
        let flavor = Flavor::Dog { tags: vec!["env:test".into(), "team:ops".into()] };
        let got = all_lines(&Deltas::default().points(&parse(FIRST)), &flavor);
        assert_eq!(
            got,
            [
                "kairos.runs_finished:3|c|#executor:shell,status:succeeded,node:node-1,env:test,team:ops",
                "kairos.run_start_lag_seconds.sum:0.5|c|#executor:shell,node:node-1,env:test,team:ops",
                "kairos.run_start_lag_seconds.count:2|c|#executor:shell,node:node-1,env:test,team:ops",
                "kairos.raft_term:4|g|#node:node-1,env:test,team:ops",
            ]
        );
    }

    #[test]
    fn names_and_tags_lose_the_characters_the_format_reserves() {
        let point = Point {
            metric: "http_requests".into(),
            labels: vec![("route".into(), "/v1/jobs/{job}".into()), ("method".into(), "a,b|c#d e".into())],
            suffix: None,
            value: Value::Count(1.0),
        };
        assert_eq!(
            lines(&point, &Flavor::Plain, "n"),
            ["kairos.http_requests.route.v1_jobs__job.method.a_b_c_d_e:1|c"]
        );
        assert_eq!(
            lines(&point, &Flavor::Dog { tags: vec![] }, "web 1.example"),
            ["kairos.http_requests:1|c|#route:/v1/jobs/{job},method:a_b_c_d_e,node:web_1.example"]
        );
        let gauge = Point { metric: "jobs".into(), labels: vec![], suffix: None, value: Value::Gauge(2.0) };
        assert_eq!(lines(&gauge, &Flavor::Plain, "web-1.example.com"), ["kairos.web-1_example_com.jobs:2|g"]);
    }

    #[test]
    fn a_negative_gauge_is_set_to_zero_first() {
        let point = Point { metric: "x".into(), labels: vec![], suffix: None, value: Value::Gauge(-2.5) };
        assert_eq!(lines(&point, &Flavor::Plain, "n"), ["kairos.n.x:0|g", "kairos.n.x:-2.5|g"]);
    }

    #[test]
    fn packets_hold_many_lines_and_never_exceed_the_limit() {
        let lines: Vec<String> = (0..200).map(|i| format!("kairos.metric_{i}:{i}|c")).collect();
        let (packets, dropped) = packets(&lines, PACKET_BYTES_MAX);
        assert_eq!(dropped, 0);
        assert!(packets.len() > 1 && packets.len() < 10, "{}", packets.len());
        assert!(packets.iter().all(|p| p.len() <= PACKET_BYTES_MAX));
        let back: Vec<&str> = packets.iter().flat_map(|p| p.split('\n')).collect();
        assert_eq!(back, lines.iter().map(String::as_str).collect::<Vec<_>>(), "every line once, in order");
        let (packets, dropped) = super::packets(&["x".repeat(20), "ok:1|c".into()], 10);
        assert_eq!((packets, dropped), (vec!["ok:1|c".to_string()], 1));
        let exact = "y".repeat(10);
        assert_eq!(super::packets(&[exact.clone(), exact.clone()], 10).0, [exact.clone(), exact]);
    }
}
