//! `GET /v1/stats`: what the dashboard shows, as JSON: the leader and node count, jobs by status, and per-minute
//! runs, failures and fire lag over the last hour.
//!
//! The numbers are derived from the replicated state on every request; nothing extra is recorded. Only jobs that
//! can have had an execution in the window are scanned: a job whose executions all ended before the window has
//! `last_success` and `last_error` before it and no active execution, so it is skipped after reading its record.
//! Definitions, per minute (UTC, the last bucket is the current, partial minute):
//! - `runs`: executions that started in the minute;
//! - `failures`: executions that ended `failed` or `lost` in the minute;
//! - `lag_ms_p99`: the 99th percentile (nearest rank) of `started_at - scheduled_at` over executions started in the
//!   minute by the schedule itself (manual runs, retries, children and catch-ups are left out: their
//!   `scheduled_at` is not a slot the scheduler was late for), `null` when there were none.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use kairos_model::{Execution, ExecutionStatus, Timestamp, Trigger};
use kairos_store::JobRecord;
use serde::Serialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, AppState, Params, reply};
use kairos_server::node::Node;

/// Length of the window, in one-minute buckets.
pub const WINDOW_MINUTES: usize = 60;
const MINUTE: Duration = Duration::from_secs(60);
/// Stats this fresh are served again instead of recomputed: every open dashboard asks every few seconds, and with
/// many jobs one computation reads every job record.
const REUSE_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub generated_at: Timestamp,
    /// The node that answered.
    pub node: String,
    /// The leader's name, `null` while there is none.
    pub leader: Option<String>,
    pub nodes: usize,
    pub jobs: JobCounts,
    /// Pending plus running executions, across jobs.
    pub executions_active: u64,
    pub window_minutes: usize,
    /// Oldest first; the last one is the current minute.
    pub minutes: Vec<Minute>,
}

/// Jobs by what they are doing; every job is counted in exactly one of the five buckets, in this order of
/// precedence: disabled, running, then its last result.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobCounts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub running: u64,
    pub disabled: u64,
    pub never_run: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Minute {
    /// Start of the minute (UTC).
    pub start: Timestamp,
    pub runs: u64,
    pub failures: u64,
    pub lag_ms_p99: Option<u64>,
}

pub async fn serve(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    let stats = tokio::task::block_in_place(|| recent(&node))?;
    Ok(reply(StatusCode::OK, &stats, &params))
}

/// The stats, computed now or at most [`REUSE_MAX`] ago (`generated_at` says when).
pub fn recent(node: &Node) -> Result<Stats, ApiError> {
    static LAST: Mutex<Option<(u64, Instant, Stats)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((id, at, stats)) = last.as_ref()
        && *id == node.id
        && at.elapsed() < REUSE_MAX
    {
        return Ok(stats.clone());
    }
    let stats = collect(node, Timestamp::now())?;
    *last = Some((node.id, Instant::now(), stats.clone()));
    Ok(stats)
}

/// Compute the stats at `now` from the node's state.
pub fn collect(node: &Node, now: Timestamp) -> Result<Stats, ApiError> {
    let window_start = window_start(now);
    let mut jobs = JobCounts::default();
    let mut recent = Vec::new();
    node.state.for_each_job(|record| {
        jobs.count(&record);
        if may_have_run_since(&record, window_start) {
            recent.push(record.job.name);
        }
        true
    })?;
    let mut executions = Vec::new();
    for name in recent {
        executions.extend(node.state.executions(&name)?.into_iter().filter(|e| touches_window(e, window_start)));
    }
    let executions_active = node.state.active()?.len() as u64;
    Ok(Stats {
        generated_at: now,
        node: node.config.node_name.clone(),
        leader: node.leader_name(),
        nodes: 1,
        jobs,
        executions_active,
        window_minutes: WINDOW_MINUTES,
        minutes: per_minute(&executions, now),
    })
}

impl JobCounts {
    fn count(&mut self, record: &JobRecord) {
        let job = &record.job;
        self.total += 1;
        let bucket = if job.disabled {
            &mut self.disabled
        } else if record.active > 0 || job.status == "running" {
            &mut self.running
        } else {
            match job.status.as_str() {
                "success" => &mut self.succeeded,
                "failed" => &mut self.failed,
                _ => &mut self.never_run,
            }
        };
        *bucket += 1;
    }
}

/// The start of the oldest bucket: the current minute, floored, minus the other 59.
fn window_start(now: Timestamp) -> Timestamp {
    let floor = Timestamp::from_second(now.as_second().div_euclid(60) * 60).unwrap_or(now);
    floor.checked_sub(MINUTE * (WINDOW_MINUTES as u32 - 1)).unwrap_or(floor)
}

fn may_have_run_since(record: &JobRecord, since: Timestamp) -> bool {
    let job = &record.job;
    record.active > 0 || job.last_success.is_some_and(|t| t >= since) || job.last_error.is_some_and(|t| t >= since)
}

fn touches_window(exec: &Execution, since: Timestamp) -> bool {
    exec.started_at.is_some_and(|t| t >= since) || exec.finished_at.is_some_and(|t| t >= since)
}

/// Bucket executions into the window's minutes. Pure, so it is tested on its own.
pub fn per_minute(executions: &[Execution], now: Timestamp) -> Vec<Minute> {
    let start = window_start(now);
    let index = |t: Timestamp| -> Option<usize> {
        let offset = t.as_second() - start.as_second();
        (offset >= 0).then_some((offset / 60) as usize).filter(|i| *i < WINDOW_MINUTES)
    };
    let mut runs = [0u64; WINDOW_MINUTES];
    let mut failures = [0u64; WINDOW_MINUTES];
    let mut lags: Vec<Vec<u64>> = vec![Vec::new(); WINDOW_MINUTES];
    for exec in executions {
        if let Some(i) = exec.started_at.and_then(index) {
            runs[i] += 1;
            if exec.trigger == Trigger::Schedule
                && let Some(started) = exec.started_at
            {
                let lag_ms = started.as_millisecond().saturating_sub(exec.scheduled_at.as_millisecond()).max(0);
                lags[i].push(lag_ms as u64);
            }
        }
        let failed = matches!(exec.status, ExecutionStatus::Failed | ExecutionStatus::Lost);
        if failed && let Some(i) = exec.finished_at.and_then(index) {
            failures[i] += 1;
        }
    }
    (0..WINDOW_MINUTES)
        .map(|i| Minute {
            start: start.checked_add(MINUTE * i as u32).unwrap_or(start),
            runs: runs[i],
            failures: failures[i],
            lag_ms_p99: p99(&mut lags[i]),
        })
        .collect()
}

/// Nearest-rank 99th percentile.
fn p99(values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (values.len() * 99).div_ceil(100);
    Some(values[rank.max(1) - 1])
}

/// The OpenAPI description of `GET /v1/stats`, kept next to the handler.
pub fn openapi_path() -> Value {
    json!({"get": {
        "summary": "Dashboard numbers: leader, node count, jobs by status, and per-minute runs, failures and fire lag p99 over the last hour",
        "parameters": [{"name": "pretty", "in": "query", "required": false, "description": "Indent the JSON answer", "schema": {"type": "string"}}],
        "responses": {"200": {"description": "Stats", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Stats"}}}}},
    }})
}

pub fn openapi_schema() -> Value {
    let int = json!({"type": "integer"});
    json!({"type": "object", "properties": {
        "generated_at": {"type": "string", "format": "date-time"},
        "node": {"type": "string", "description": "The node that answered"},
        "leader": {"type": "string", "nullable": true},
        "nodes": int,
        "jobs": {"type": "object", "description": "Every job in exactly one bucket: disabled, else running, else by its last result", "properties": {
            "total": int, "succeeded": int, "failed": int, "running": int, "disabled": int, "never_run": int,
        }},
        "executions_active": int,
        "window_minutes": int,
        "minutes": {"type": "array", "description": "One entry per UTC minute, oldest first; the last is the current minute", "items": {"type": "object", "properties": {
            "start": {"type": "string", "format": "date-time"},
            "runs": {"type": "integer", "description": "Executions started in the minute"},
            "failures": {"type": "integer", "description": "Executions that ended failed or lost in the minute"},
            "lag_ms_p99": {"type": "integer", "nullable": true, "description": "p99 of started_at - scheduled_at over scheduled (not manual, retry, child or catch-up) executions started in the minute"},
        }}},
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn exec(scheduled: &str, started: Option<&str>, finished: Option<&str>, status: ExecutionStatus) -> Execution {
        let mut e = Execution::decided("job", at(scheduled), Trigger::Schedule);
        e.started_at = started.map(at);
        e.finished_at = finished.map(at);
        e.status = status;
        e
    }

    #[test]
    fn buckets_cover_the_last_hour_ending_with_the_current_minute() {
        let minutes = per_minute(&[], at("2026-03-01T10:30:15Z"));
        assert_eq!(minutes.len(), WINDOW_MINUTES);
        assert_eq!(minutes[0].start, at("2026-03-01T09:31:00Z"));
        assert_eq!(minutes[59].start, at("2026-03-01T10:30:00Z"));
        assert!(minutes.iter().all(|m| m.runs == 0 && m.failures == 0 && m.lag_ms_p99.is_none()));
    }

    #[test]
    fn runs_failures_and_lag_land_in_their_minutes() {
        let now = at("2026-03-01T10:30:15Z");
        let executions = [
            exec(
                "2026-03-01T10:29:00Z",
                Some("2026-03-01T10:29:00.250Z"),
                Some("2026-03-01T10:29:01Z"),
                ExecutionStatus::Succeeded,
            ),
            exec(
                "2026-03-01T10:29:30Z",
                Some("2026-03-01T10:29:30.010Z"),
                Some("2026-03-01T10:30:01Z"),
                ExecutionStatus::Failed,
            ),
            exec("2026-03-01T10:30:00Z", Some("2026-03-01T10:30:00.005Z"), None, ExecutionStatus::Running),
            // Before the window: not counted.
            exec(
                "2026-03-01T09:00:00Z",
                Some("2026-03-01T09:00:00Z"),
                Some("2026-03-01T09:00:01Z"),
                ExecutionStatus::Lost,
            ),
            // Skipped: never started.
            exec("2026-03-01T10:29:40Z", None, Some("2026-03-01T10:29:40Z"), ExecutionStatus::Skipped),
        ];
        let minutes = per_minute(&executions, now);
        let m29 = &minutes[58];
        let m30 = &minutes[59];
        assert_eq!((m29.runs, m29.failures, m29.lag_ms_p99), (2, 0, Some(250)));
        assert_eq!((m30.runs, m30.failures, m30.lag_ms_p99), (1, 1, Some(5)));
        assert_eq!(minutes.iter().map(|m| m.runs).sum::<u64>(), 3);
    }

    #[test]
    fn manual_runs_do_not_count_as_lag() {
        let now = at("2026-03-01T10:30:15Z");
        let mut manual = exec("2026-03-01T10:00:00Z", Some("2026-03-01T10:30:00Z"), None, ExecutionStatus::Running);
        manual.trigger = Trigger::Manual;
        let minutes = per_minute(&[manual], now);
        assert_eq!((minutes[59].runs, minutes[59].lag_ms_p99), (1, None));
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let mut values: Vec<u64> = (1..=200).collect();
        assert_eq!(p99(&mut values), Some(198));
        assert_eq!(p99(&mut [7]), Some(7));
        assert_eq!(p99(&mut []), None);
    }
}
