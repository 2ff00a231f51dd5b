//! Executions: one attempt to run one slot of one job.
//!
//! The JSON keeps Dkron's fields (`id`, `job_name`, `started_at`, `finished_at`, `success`, `output`,
//! `node_name`, `group`, `attempt`) and adds `scheduled_at`, `status`, `exit_code` and a few of our own. The id is
//! derived from the slot (scheduled instant in milliseconds) and the attempt, so the same slot can never produce
//! two executions: a second decision about it finds the id taken.

use kairos_schedule::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Where an execution is in its life. `Pending` and `Running` are *active*; the rest are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionStatus {
    /// Decided (committed) and waiting to start, possibly until `not_before` for a retry.
    Pending,
    /// Started on a node; its lease must be renewed or it turns `Lost`.
    Running,
    Succeeded,
    Failed,
    /// Its node died or stopped renewing the lease.
    Lost,
    Cancelled,
    /// Not run because of the job's policy (`concurrency: forbid`).
    Skipped,
}

impl ExecutionStatus {
    pub fn is_active(self) -> bool {
        matches!(self, ExecutionStatus::Pending | ExecutionStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Pending => "pending",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Lost => "lost",
            ExecutionStatus::Cancelled => "cancelled",
            ExecutionStatus::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<ExecutionStatus> {
        [
            ExecutionStatus::Pending,
            ExecutionStatus::Running,
            ExecutionStatus::Succeeded,
            ExecutionStatus::Failed,
            ExecutionStatus::Lost,
            ExecutionStatus::Cancelled,
            ExecutionStatus::Skipped,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Why an execution exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A slot of the job's schedule, fired on time.
    Schedule,
    /// A slot missed while no scheduler ran, fired under the job's `catch_up` policy.
    CatchUp,
    /// `POST /v1/jobs/{job}/run` (or `?runoncreate`).
    Manual,
    /// A retry of a failed or lost attempt.
    Retry,
    /// The parent job succeeded.
    Parent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub id: String,
    pub job_name: String,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub success: bool,
    /// In the replicated record: the last few KiB. The API replaces it with the full stored output.
    pub output: String,
    pub node_name: String,
    /// Dkron's run group: the scheduled instant in Unix nanoseconds, shared by every attempt of the slot.
    pub group: i64,
    pub attempt: u32,
    pub scheduled_at: Timestamp,
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    pub trigger: Trigger,
    /// Why it failed, when more than an exit code says (timeout, spawn error, lease expired, ...).
    pub error: Option<String>,
    /// A retry does not start before this instant (the backoff).
    pub not_before: Option<Timestamp>,
    /// While running: the instant after which, without a renewal, the execution is `lost`.
    pub lease_until: Option<Timestamp>,
    /// Total output bytes produced, including any beyond the stored cap.
    pub output_bytes: u64,
    /// For a retry: the node the previous attempt ran on, which the dispatcher avoids where it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_node: Option<String>,
}

/// The deterministic id of an attempt at a scheduled slot: `<scheduled ms>-<attempt>`, zero-padded so ids sort by
/// slot. Runs started by hand or by a parent carry a suffix (`-manual`, `-parent`), so they can never take the id of
/// a scheduled slot at the same instant.
pub fn execution_id(scheduled_at: Timestamp, attempt: u32) -> String {
    format!("{:013}-{attempt}", scheduled_at.as_millisecond())
}

/// The id prefix every attempt at the slot `scheduled_at` shares, whatever started it.
pub fn slot_prefix(scheduled_at: Timestamp) -> String {
    format!("{:013}-", scheduled_at.as_millisecond())
}

fn origin_suffix(trigger: Trigger) -> &'static str {
    match trigger {
        Trigger::Manual => "-manual",
        Trigger::Parent => "-parent",
        Trigger::Schedule | Trigger::CatchUp | Trigger::Retry => "",
    }
}

impl Execution {
    /// A freshly decided first attempt at a slot, pending.
    pub fn decided(job_name: &str, scheduled_at: Timestamp, trigger: Trigger) -> Execution {
        Execution {
            id: format!("{}{}", execution_id(scheduled_at, 1), origin_suffix(trigger)),
            job_name: job_name.to_string(),
            started_at: None,
            finished_at: None,
            success: false,
            output: String::new(),
            node_name: String::new(),
            group: scheduled_at.as_nanosecond() as i64,
            attempt: 1,
            scheduled_at,
            status: ExecutionStatus::Pending,
            exit_code: None,
            trigger,
            error: None,
            not_before: None,
            lease_until: None,
            output_bytes: 0,
            previous_node: None,
        }
    }

    /// The next attempt at the same slot, keeping the origin suffix of the id, pending until `not_before`.
    pub fn retry(&self, not_before: Timestamp) -> Execution {
        let attempt = self.attempt + 1;
        let suffix = self.id.split_once('-').map_or("", |(_, rest)| rest.split_once('-').map_or("", |(_, s)| s));
        let id = if suffix.is_empty() {
            execution_id(self.scheduled_at, attempt)
        } else {
            format!("{}-{suffix}", execution_id(self.scheduled_at, attempt))
        };
        Execution {
            id,
            attempt,
            trigger: Trigger::Retry,
            not_before: Some(not_before),
            previous_node: Some(self.node_name.clone()).filter(|n| !n.is_empty()),
            ..Execution::decided(&self.job_name, self.scheduled_at, Trigger::Retry)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_sort_by_slot() {
        let a: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let b: Timestamp = "2026-11-21T10:00:01Z".parse().unwrap();
        assert_eq!(execution_id(a, 1), execution_id(a, 1));
        assert_ne!(execution_id(a, 1), execution_id(a, 2));
        assert!(execution_id(a, 1) < execution_id(b, 1));
    }

    #[test]
    fn manual_runs_never_share_an_id_with_a_scheduled_slot_and_retries_keep_the_origin() {
        let a: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let scheduled = Execution::decided("j", a, Trigger::Schedule);
        let manual = Execution::decided("j", a, Trigger::Manual);
        assert_ne!(scheduled.id, manual.id);
        assert_eq!(scheduled.retry(a).id, execution_id(a, 2));
        assert_eq!(manual.retry(a).id, format!("{}-manual", execution_id(a, 2)));
        assert_eq!(manual.retry(a).retry(a).attempt, 3);
        assert!(manual.id.starts_with(&slot_prefix(a)));
    }

    #[test]
    fn status_round_trips_through_text() {
        for s in ["pending", "running", "succeeded", "failed", "lost", "cancelled", "skipped"] {
            assert_eq!(ExecutionStatus::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(ExecutionStatus::parse("done"), None);
    }
}
