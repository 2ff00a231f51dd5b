//! Small SVG charts drawn on the server: bars for counts per minute, a line for a per-minute measure with gaps
//! where there is no value. Colours come from the stylesheet (classes), so both themes apply.

use maud::{Markup, html};

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 592.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 140.0;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bars,
    Line,
}

/// One chart: a value (or none) per point, each with a label for its tooltip.
pub struct Chart<'a> {
    pub id: &'a str,
    pub title: &'a str,
    /// Unit after a value: "runs", "ms".
    pub unit: &'a str,
    pub kind: Kind,
    pub class: &'a str,
    pub points: Vec<(String, Option<u64>)>,
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `max` (and at least 1).
pub fn nice_ceiling(max: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for factor in [1, 2, 5] {
            if let Some(candidate) = step.checked_mul(factor)
                && candidate >= max
            {
                return candidate;
            }
        }
        match step.checked_mul(10) {
            Some(next) => step = next,
            None => return u64::MAX,
        }
    }
}

impl Chart<'_> {
    fn summary(&self) -> String {
        let values: Vec<u64> = self.points.iter().filter_map(|(_, v)| *v).collect();
        let latest = self.points.last().and_then(|(_, v)| *v);
        let latest = latest.map_or("none".to_string(), |v| format!("{v} {}", self.unit));
        match self.kind {
            Kind::Bars => format!(
                "{} in the last hour: {} in total, at most {} in one minute; this minute: {}.",
                self.title,
                values.iter().sum::<u64>(),
                values.iter().max().copied().unwrap_or(0),
                latest
            ),
            Kind::Line => format!(
                "{} in the last hour: highest {}; this minute: {}.",
                self.title,
                values.iter().max().map_or("none".to_string(), |v| format!("{v} {}", self.unit)),
                latest
            ),
        }
    }

    pub fn render(&self) -> Markup {
        let n = self.points.len().max(1) as f64;
        let max = nice_ceiling(self.points.iter().filter_map(|(_, v)| *v).max().unwrap_or(0));
        let step = (RIGHT - LEFT) / n;
        let y = |v: u64| BOTTOM - (v as f64 / max as f64) * (BOTTOM - TOP);
        let x_mid = |i: usize| LEFT + step * (i as f64 + 0.5);
        let title_id = format!("{}-title", self.id);
        let desc_id = format!("{}-desc", self.id);
        html! {
            figure.chart {
                figcaption { (self.title) }
                svg class={ "chart " (self.class) } viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
                    aria-labelledby={ (title_id) " " (desc_id) } {
                    title id=(title_id) { (self.title) }
                    desc id=(desc_id) { (self.summary()) }
                    line.axis x1=(LEFT) y1=(BOTTOM) x2=(RIGHT) y2=(BOTTOM) {}
                    line.grid x1=(LEFT) y1=(TOP) x2=(RIGHT) y2=(TOP) {}
                    line.grid x1=(LEFT) y1=((TOP + BOTTOM) / 2.0) x2=(RIGHT) y2=((TOP + BOTTOM) / 2.0) {}
                    text.label x=(LEFT - 6.0) y=(TOP + 4.0) text-anchor="end" { (max) }
                    text.label x=(LEFT - 6.0) y=((TOP + BOTTOM) / 2.0 + 4.0) text-anchor="end" { (max / 2) }
                    text.label x=(LEFT - 6.0) y=(BOTTOM + 4.0) text-anchor="end" { "0" }
                    text.label x=(LEFT) y=(HEIGHT - 8.0) text-anchor="start" { "60 min ago" }
                    text.label x=((LEFT + RIGHT) / 2.0) y=(HEIGHT - 8.0) text-anchor="middle" { "30 min ago" }
                    text.label x=(RIGHT) y=(HEIGHT - 8.0) text-anchor="end" { "now" }
                    @match self.kind {
                        Kind::Bars => {
                            @for (i, (label, value)) in self.points.iter().enumerate() {
                                @if let Some(v) = value.filter(|v| *v > 0) {
                                    rect.bar x=(format!("{:.1}", LEFT + step * i as f64 + 0.5))
                                        y=(format!("{:.1}", y(v))) width=(format!("{:.1}", (step - 1.0).max(0.5)))
                                        height=(format!("{:.1}", BOTTOM - y(v))) {
                                        title { (label) ": " (v) " " (self.unit) }
                                    }
                                }
                            }
                        }
                        Kind::Line => {
                            @for run in line_runs(&self.points) {
                                @if run.len() > 1 {
                                    polyline.line points=(run.iter().map(|(i, v)| format!("{:.1},{:.1}", x_mid(*i), y(*v))).collect::<Vec<_>>().join(" ")) {}
                                }
                            }
                            @for (i, (label, value)) in self.points.iter().enumerate() {
                                @if let Some(v) = value {
                                    circle.dot cx=(format!("{:.1}", x_mid(i))) cy=(format!("{:.1}", y(*v))) r="2.5" {
                                        title { (label) ": " (v) " " (self.unit) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Consecutive points with a value, as (index, value) runs; a missing value breaks the line.
fn line_runs(points: &[(String, Option<u64>)]) -> Vec<Vec<(usize, u64)>> {
    let mut runs = vec![Vec::new()];
    for (i, (_, value)) in points.iter().enumerate() {
        match value {
            Some(v) => runs.last_mut().expect("never empty").push((i, *v)),
            None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
            None => {}
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_round_numbers() {
        let cases = [(0, 1), (1, 1), (3, 5), (7, 10), (11, 20), (180, 200), (501, 1000)];
        for (max, ceiling) in cases {
            assert_eq!(nice_ceiling(max), ceiling, "{max}");
        }
    }

    #[test]
    fn gaps_break_the_line() {
        let p = |v: Option<u64>| (String::new(), v);
        let runs = line_runs(&[p(Some(1)), p(Some(2)), p(None), p(None), p(Some(3))]);
        assert_eq!(runs, vec![vec![(0, 1), (1, 2)], vec![(4, 3)]]);
    }

    #[test]
    fn bars_are_drawn_with_tooltips_and_a_text_summary() {
        let chart = Chart {
            id: "runs",
            title: "Runs per minute",
            unit: "runs",
            kind: Kind::Bars,
            class: "runs",
            points: vec![("10:00 UTC".into(), Some(4)), ("10:01 UTC".into(), Some(0)), ("10:02 UTC".into(), Some(2))],
        };
        let svg = chart.render().into_string();
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert!(svg.contains("10:00 UTC: 4 runs"), "{svg}");
        assert!(svg.contains("6 in total, at most 4 in one minute; this minute: 2 runs"), "{svg}");
    }
}
