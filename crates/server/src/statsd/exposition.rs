//! Reading the registry's text exposition back into samples, so StatsD gets exactly what `/metrics` shows (one
//! source of truth: [`crate::metrics::Metrics::render`]). Only what that encoder writes is read: `# TYPE` lines,
//! and sample lines `name{label="value",…} value`, label values with `\\`, `\"` and `\n` escapes (route templates
//! hold braces, so labels are read character by character, not split).

/// The type a `# TYPE` line gives a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// Anything else (info, summary, unknown): not pushed.
    Other,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The family (`kairos_runs_finished`), from the `# TYPE` line before it.
    pub family: String,
    pub kind: Kind,
    /// The sample's own name (`kairos_runs_finished_total`, `kairos_run_start_lag_seconds_count`).
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// `name{labels}` as written: the series' identity, for deltas between flushes.
    pub series: String,
}

/// Every sample of the text, with its family's type. Lines that do not parse are skipped (the encoder is ours,
/// so there are none; a test holds it to that).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut family = (String::new(), Kind::Other);
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = match kind.trim() {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                _ => Kind::Other,
            };
            family = (name.to_string(), kind);
        } else if !line.starts_with('#')
            && !line.is_empty()
            && let Some(sample) = sample(line, &family)
        {
            samples.push(sample);
        }
    }
    samples
}

fn sample(line: &str, (family, kind): &(String, Kind)) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !name.starts_with(family.as_str()) || family.is_empty() {
        return None;
    }
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(after) => labels(after)?,
        None => (Vec::new(), &line[name_end..]),
    };
    let series = &line[..line.len() - rest.len()];
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        family: family.clone(),
        kind: *kind,
        name: name.to_string(),
        labels,
        value,
        series: series.to_string(),
    })
}

/// The labels after `{`, up to and including the closing `}`; answers them and the rest of the line.
fn labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_carry_their_family_type_and_labels_even_with_braces_and_escapes() {
        let text = "# HELP kairos_runs_finished Runs.\n# TYPE kairos_runs_finished counter\n\
                    kairos_runs_finished_total{executor=\"shell\",status=\"succeeded\"} 3\n\
                    # TYPE kairos_http_request_duration_seconds histogram\n\
                    kairos_http_request_duration_seconds_sum{route=\"/v1/jobs/{job}\"} 0.5\n\
                    kairos_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/jobs/{job}\"} 2\n\
                    # TYPE kairos_jobs gauge\nkairos_jobs 7\n\
                    # TYPE kairos_odd gauge\nkairos_odd{a=\"x\\\"y\\\\z\\n\"} -1.5\n# EOF\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 5, "{samples:#?}");
        assert_eq!(samples[0].family, "kairos_runs_finished");
        assert_eq!(samples[0].kind, Kind::Counter);
        assert_eq!(samples[0].name, "kairos_runs_finished_total");
        assert_eq!(samples[0].labels, [("executor".into(), "shell".into()), ("status".into(), "succeeded".into())]);
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[0].series, "kairos_runs_finished_total{executor=\"shell\",status=\"succeeded\"}");
        assert_eq!(samples[1].labels, [("route".into(), "/v1/jobs/{job}".into())]);
        assert_eq!(samples[2].value, 2.0);
        assert_eq!(samples[2].labels[0], ("le".into(), "+Inf".into()));
        assert_eq!((samples[3].name.as_str(), samples[3].kind, samples[3].value), ("kairos_jobs", Kind::Gauge, 7.0));
        assert_eq!(samples[4].labels, [("a".into(), "x\"y\\z\n".into())]);
        assert_eq!(samples[4].value, -1.5);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "# TYPE kairos_jobs gauge\nkairos_jobs\nkairos_jobs{a=\"unterminated} 1\nkairos_jobs x\n\
                    other_metric 1\nkairos_jobs 2\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 1, "{samples:#?}");
        assert_eq!(samples[0].value, 2.0);
    }

    #[test]
    fn the_registrys_own_output_parses_in_full() {
        let m = crate::metrics::metrics();
        m.http_duration.get_or_create(&crate::metrics::RouteLabel { route: "/v1/jobs/{job}".into() }).observe(0.2);
        let text = m.render();
        let lines = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
        let samples = parse(&text);
        assert_eq!(samples.len(), lines, "every sample line parses:\n{text}");
        assert!(samples.iter().all(|s| s.kind != Kind::Other), "{samples:#?}");
    }
}
