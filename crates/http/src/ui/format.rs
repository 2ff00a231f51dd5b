//! How values read on a page: instants in a job's zone with UTC on hover, durations, status badges.

use std::time::Duration;

use jiff::tz::TimeZone;
use kairos_model::{Execution, ExecutionStatus, Job, Timestamp};
use maud::{Markup, html};

/// The zone a job's times are shown in: its schedule's zone (a `CRON_TZ=` prefix wins), else its `timezone`.
pub fn job_zone(job: &Job) -> TimeZone {
    if let Ok(Some(schedule)) = job.parsed_schedule() {
        return schedule.time_zone().clone();
    }
    kairos_schedule::parse_timezone(&job.timezone).unwrap_or(TimeZone::UTC)
}

pub fn utc(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `2026-03-01 11:00:00 CET`, with the UTC instant in the title and the `datetime` attribute.
pub fn instant(t: Option<Timestamp>, zone: &TimeZone) -> Markup {
    match t {
        None => html! { span.muted { "—" } },
        Some(t) => {
            let local = t.to_zoned(zone.clone());
            html! {
                time datetime=(t.to_string()) title=(utc(t)) { (local.strftime("%Y-%m-%d %H:%M:%S %Z")) }
            }
        }
    }
}

/// A short human duration: `850ms`, `12.3s`, `4m 05s`, `2h 10m`, `3d 4h`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `in 5.0s` or `3m 02s ago`, relative to `now`.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    let span = now.duration_until(t);
    if span.is_negative() {
        format!("{} ago", duration(span.unsigned_abs()))
    } else {
        format!("in {}", duration(span.unsigned_abs()))
    }
}

/// How long an execution ran, or has been running.
pub fn elapsed(exec: &Execution, now: Timestamp) -> Option<Duration> {
    let start = exec.started_at?;
    let end = exec.finished_at.unwrap_or(now);
    Some(start.duration_until(end).unsigned_abs())
}

pub fn exec_status(status: ExecutionStatus) -> Markup {
    html! { span class={ "badge s-" (status.as_str()) } { (status.as_str()) } }
}

/// A job's state in one word: disabled wins, then its derived status (`never run` before the first run).
pub fn job_status(job: &Job) -> Markup {
    let (class, text) = match job.status.as_str() {
        "success" => ("s-succeeded", "succeeded"),
        "failed" => ("s-failed", "failed"),
        "running" => ("s-running", "running"),
        _ => ("s-none", "never run"),
    };
    html! {
        span class={ "badge " (class) } { (text) }
        @if job.disabled { " " span.badge.s-disabled { "disabled" } }
    }
}

/// The last results as a strip of squares, oldest first; the label says what they show.
pub fn strip(executions: &[Execution], zone: &TimeZone) -> Markup {
    let succeeded = executions.iter().filter(|e| e.status == ExecutionStatus::Succeeded).count();
    let label =
        format!("Last {} results: {} succeeded, {} other", executions.len(), succeeded, executions.len() - succeeded);
    html! {
        span.strip role="img" aria-label=(label) title=(label) {
            @for exec in executions {
                @let when = exec.started_at.or(exec.finished_at).unwrap_or(exec.scheduled_at);
                @let local = when.to_zoned(zone.clone()).strftime("%Y-%m-%d %H:%M:%S %Z").to_string();
                span class={ "cell s-" (exec.status.as_str()) } title={ (exec.status.as_str()) " · " (local) } {}
            }
            @for _ in executions.len()..10 { span.cell.empty {} }
        }
    }
}

/// The last `bytes` of a text, cut at a character boundary, starting at a line start when one is near.
pub fn tail(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let mut cut = text.len() - bytes;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    let rest = &text[cut..];
    match rest.find('\n') {
        Some(i) if i + 1 < rest.len() => &rest[i + 1..],
        _ => rest,
    }
}

/// The last `lines` lines of a text.
pub fn last_lines(text: &str, lines: usize) -> &str {
    let trimmed = text.trim_end_matches('\n');
    match trimmed.rmatch_indices('\n').nth(lines.saturating_sub(1)) {
        Some((i, _)) => &trimmed[i + 1..],
        None => trimmed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_short() {
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(duration(Duration::from_secs(245)), "4m 05s");
        assert_eq!(duration(Duration::from_secs(7800)), "2h 10m");
        assert_eq!(duration(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d 4h");
    }

    #[test]
    fn tail_cuts_at_a_line_and_a_char_boundary() {
        assert_eq!(tail("short", 100), "short");
        assert_eq!(tail("line one\nline two\nline three", 14), "line three");
        assert_eq!(tail("ééé", 3), "é");
        assert_eq!(last_lines("a\nb\nc\nd\n", 2), "c\nd");
        assert_eq!(last_lines("a\nb", 5), "a\nb");
    }

    #[test]
    fn instants_show_the_zone_and_utc_on_hover() {
        let t: Timestamp = "2026-01-15T10:00:00Z".parse().unwrap();
        let zone = kairos_schedule::parse_timezone("Europe/Berlin").unwrap();
        let html = instant(Some(t), &zone).into_string();
        assert!(html.contains("2026-01-15 11:00:00 CET"), "{html}");
        assert!(html.contains("title=\"2026-01-15 10:00:00 UTC\""), "{html}");
    }
}
