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
    /// For a job that runs on several nodes: the node this copy of the slot must run on (see [`Execution::copies`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The notifications sent about it (webhooks, mail), with how each delivery ended; recorded by the leader once
    /// a delivery is over, at most [`NOTIFICATIONS_RECORDED_MAX`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<Delivery>,
}

/// Delivery records an execution keeps at most (the first ones).
pub const NOTIFICATIONS_RECORDED_MAX: usize = 16;

/// How one notification about an execution ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// `pre_webhook`, `webhook`, `mail`, `job_webhook` (a job's own `notify.webhooks`) or `cronitor`.
    pub kind: String,
    /// The event it told of: `start`, `success`, `failure`, `recovery`, `lost`, `cancelled`, `skipped`.
    pub event: String,
    /// Where it went: the URL, or the mail recipients.
    pub target: String,
    pub outcome: DeliveryOutcome,
    /// Tries made (0 for a delivery that was not attempted).
    pub attempts: u32,
    /// Why the last try failed, or why it was not attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it ended.
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The receiver accepted it (HTTP 2xx, SMTP accepted).
    Sent,
    /// Every try failed.
    Failed,
    /// Not sent: the job's `notify.repeat_after` keeps repeated failures quiet.
    Suppressed,
    /// Not sent: its payload template failed to render.
    TemplateFailed,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Sent => "sent",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::Suppressed => "suppressed",
            DeliveryOutcome::TemplateFailed => "template_failed",
        }
    }
}

/// The deterministic id of an attempt at a scheduled slot: `<scheduled ms>-<attempt>`, zero-padded so ids sort by
/// slot. Runs started by hand or by a parent carry a suffix (`-manual`, `-parent`), so they can never take the id of
/// a scheduled slot at the same instant.
pub fn execution_id(scheduled_at: Timestamp, attempt: u32) -> String {
    format!("{:013}-{attempt}", scheduled_at.as_millisecond())
}

/// The character that separates a copy's target node from the rest of its id; node names cannot contain it.
pub const TARGET_SEPARATOR: char = '@';

/// The attempt number inside an execution id (`<ms>-<attempt>[-origin][@target]`); 1 if the id has none.
pub fn attempt_of(id: &str) -> u32 {
    let (_, rest) = id.split_once('-').unwrap_or(("", ""));
    let digits = rest.find(|c: char| !c.is_ascii_digit()).map_or(rest, |end| &rest[..end]);
    digits.parse().unwrap_or(1)
}

/// The target node named in an execution id, for a copy of a slot that runs on several nodes.
pub fn target_of(id: &str) -> Option<&str> {
    id.split_once(TARGET_SEPARATOR).map(|(_, target)| target)
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
            target: None,
            notifications: Vec::new(),
        }
    }

    /// Whether this execution is one of several copies of its slot, each with its own target node (possibly
    /// no longer pinned to it, for a retry of a job that runs on a count of nodes).
    pub fn is_copy(&self) -> bool {
        self.id.contains(TARGET_SEPARATOR)
    }

    /// The copies of a pending execution for the given target nodes: `<id>@<node>` each, pinned to its node,
    /// otherwise the same decision (slot, trigger, start instant).
    pub fn copies(&self, targets: &[String]) -> Vec<Execution> {
        targets
            .iter()
            .map(|target| Execution {
                id: format!("{}{TARGET_SEPARATOR}{target}", self.id),
                target: Some(target.clone()),
                ..self.clone()
            })
            .collect()
    }

    /// The next attempt at the same slot, keeping the origin suffix and the target of the id, pending until
    /// `not_before`. A copy's retry stays pinned to its target node; the caller unpins it where it may move.
    pub fn retry(&self, not_before: Timestamp) -> Execution {
        let attempt = self.attempt + 1;
        let (base, target) = match self.id.split_once(TARGET_SEPARATOR) {
            Some((base, target)) => (base, Some(target)),
            None => (self.id.as_str(), None),
        };
        let suffix = base.split_once('-').map_or("", |(_, rest)| rest.split_once('-').map_or("", |(_, s)| s));
        let mut id = execution_id(self.scheduled_at, attempt);
        if !suffix.is_empty() {
            id = format!("{id}-{suffix}");
        }
        if let Some(target) = target {
            id = format!("{id}{TARGET_SEPARATOR}{target}");
        }
        Execution {
            id,
            attempt,
            trigger: Trigger::Retry,
            not_before: Some(not_before),
            previous_node: Some(self.node_name.clone()).filter(|n| !n.is_empty()),
            target: self.target.clone(),
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
    fn copies_name_their_target_and_keep_it_through_retries() {
        let a: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let mut manual = Execution::decided("j", a, Trigger::Manual);
        manual.not_before = Some(a);
        let copies = manual.copies(&["web-1".to_string(), "web-2".to_string()]);
        assert_eq!(copies.len(), 2);
        assert_eq!(copies[0].id, format!("{}-manual@web-1", execution_id(a, 1)));
        assert_eq!((copies[1].target.as_deref(), copies[1].not_before), (Some("web-2"), Some(a)));
        assert!(copies.iter().all(Execution::is_copy) && !manual.is_copy());
        let mut failed = copies[0].clone();
        failed.node_name = "web-1".into();
        let retry = failed.retry(a);
        assert_eq!(retry.id, format!("{}-manual@web-1", execution_id(a, 2)));
        assert_eq!((retry.target.as_deref(), retry.previous_node.as_deref()), (Some("web-1"), Some("web-1")));
        assert_eq!(attempt_of(&retry.id), 2);
        assert_eq!(target_of(&retry.id), Some("web-1"));
        assert_eq!(attempt_of(&retry.retry(a).id), 3);
        let scheduled = Execution::decided("j", a, Trigger::Schedule).copies(&["n".to_string()]).remove(0);
        assert_eq!(scheduled.retry(a).id, format!("{}@n", execution_id(a, 2)));
        assert_eq!((attempt_of(&execution_id(a, 7)), target_of(&execution_id(a, 7))), (7, None));
    }

    #[test]
    fn status_round_trips_through_text() {
        for s in ["pending", "running", "succeeded", "failed", "lost", "cancelled", "skipped"] {
            assert_eq!(ExecutionStatus::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(ExecutionStatus::parse("done"), None);
    }
}
