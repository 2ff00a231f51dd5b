//! The commands that change the replicated state, and what applying one answers.
//!
//! Every change to jobs and executions is one of these, proposed through Raft and applied in log order on every
//! server. Applying must be deterministic: anything random or clock-dependent (the current time, a retry's jittered
//! instant) is decided by the proposer and carried inside the command. Commands that report on runs carry many
//! items, so a busy scheduler commits hundreds of fires or completions in one log entry (group commit).

use kairos_model::acl::{Policy, Token};
use kairos_model::{Execution, ExecutionStatus, Job, Timestamp, Trigger};
use serde::{Deserialize, Serialize};

/// Upper bound on items in one batched command, so one log entry stays small enough to replicate quickly.
pub const BATCH_ITEMS_MAX: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a job (already validated by the proposer). `now` starts the schedule cursor of a new job,
    /// and restarts it when the schedule or time zone changes, so old slots of a new schedule never fire.
    PutJob {
        job: Box<Job>,
        now: Timestamp,
        /// Apply only if the stored job still has this [`JobRecord::version`](crate::JobRecord::version) (0: only
        /// if no such job exists); otherwise refuse with a conflict. A read-modify-write (toggle, patch) sends the
        /// version it read, so a change or delete that landed in between is never silently overwritten.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect_version: Option<u64>,
    },
    /// Create or replace many jobs at once (`POST /v1/restore`).
    RestoreJobs {
        jobs: Vec<Job>,
        now: Timestamp,
    },
    DeleteJob {
        name: String,
    },
    SetPaused {
        paused: bool,
    },
    /// Decide slots: each accepted fire creates a pending (or skipped) execution.
    Fire {
        fires: Vec<Fire>,
    },
    /// Move a job's cursor past missed slots without running them (`catch_up: skip`).
    Advance {
        job: String,
        cursor: Timestamp,
    },
    /// Replace pending executions of jobs that run on several nodes by one pinned copy per target node.
    Expand {
        expansions: Vec<Expansion>,
    },
    Start {
        starts: Vec<Start>,
    },
    /// Extend the leases of running executions.
    Renew {
        renewals: Vec<ExecRef>,
        lease_until: Timestamp,
    },
    Finish {
        results: Vec<Finish>,
    },
    DeleteExecutions {
        job: String,
    },
    /// Store the first management token; refused once any bootstrap was applied (once per cluster). The proposer
    /// drew the token's ids and secret; the state only ever sees the secret's hash.
    AclBootstrap {
        token: Token,
    },
    /// Create or replace a token (by accessor id). Refused if it names a policy that does not exist.
    AclPutToken {
        token: Token,
    },
    AclDeleteToken {
        accessor_id: String,
    },
    /// Create or replace a policy; built-in policies cannot be replaced.
    AclPutPolicy {
        policy: Policy,
    },
    AclDeletePolicy {
        name: String,
    },
    /// Create or replace a secret's value (the proposer read the instant).
    SecretPut {
        name: String,
        value: kairos_model::secret::SecretValue,
        at: Timestamp,
    },
    SecretDelete {
        name: String,
    },
    /// Append write requests to the audit log, which keeps the newest `keep` records.
    Audit {
        records: Vec<kairos_model::audit::AuditRecord>,
        keep: u64,
    },
    /// The leader's notifier handled the outbox up to `upto`: record the deliveries on their executions, and raise
    /// or end jobs' `missed` alerts.
    Notified {
        upto: u64,
        records: Vec<crate::outbox::DeliveryRecord>,
        alerts: Vec<crate::outbox::MissedAlert>,
    },
}

/// A reference to one execution.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExecRef {
    pub job: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fire {
    pub job: String,
    pub scheduled_at: Timestamp,
    pub trigger: Trigger,
}

/// The target nodes chosen for a pending execution of a job that runs on several nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expansion {
    pub exec: ExecRef,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub exec: ExecRef,
    pub node: String,
    pub started_at: Timestamp,
    pub lease_until: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finish {
    pub exec: ExecRef,
    /// A final status: succeeded, failed, lost or cancelled.
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub output_tail: String,
    pub output_bytes: u64,
    pub node: String,
    /// When the run started, for a finish whose start was never reported separately (short runs).
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    /// When the proposer wants the next attempt to start if this one failed and retries remain.
    pub retry_at: Option<Timestamp>,
    /// For `lost`: only applies if the lease is still expired at this instant (a late renewal wins).
    pub only_if_lease_expired: bool,
}

/// Why a command was refused. Refusals change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    NotFound(String),
    Conflict(String),
    Invalid { field: String, message: String },
}

/// What applying a command answers to its proposer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub refusal: Option<Refusal>,
    /// The job as stored after the command (put, delete, restore's last).
    pub job: Option<Job>,
    /// Executions the command created or changed.
    pub executions: Vec<Execution>,
    /// Running executions that must be cancelled (`concurrency: replace`).
    pub to_cancel: Vec<ExecRef>,
    pub paused: Option<bool>,
    /// The job's schedule cursor after a put, so the proposer can answer `next` from its own write.
    #[serde(default)]
    pub cursor: Option<Timestamp>,
    /// The token an ACL command stored or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_token: Option<Token>,
    /// The policy an ACL command stored or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_policy: Option<Policy>,
    /// The secret a secret command stored or deleted (name and times, never the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<kairos_model::secret::SecretInfo>,
}

impl Response {
    pub fn refused(refusal: Refusal) -> Response {
        Response { refusal: Some(refusal), ..Response::default() }
    }
}
