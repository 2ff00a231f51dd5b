//! What the agent is asked to run and what it reports back.
//!
//! [`RunSpec`] comes from the dispatcher; [`Outcome`] goes back into a `Finished` report and from there
//! into the replicated execution record, which is why it carries only a bounded tail of the output.

use std::collections::BTreeMap;

/// Default cap of the stored full output of one execution.
pub const OUTPUT_LIMIT_BYTES_DEFAULT: u64 = 1024 * 1024;

/// How much of the end of the output travels in an [`Outcome`] (and so through Raft).
pub const TAIL_BYTES: usize = 4096;

/// One execution to run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunSpec {
    pub job_name: String,
    pub execution_id: String,
    /// One of [`EXECUTORS`](crate::EXECUTORS): `"shell"`, `"http"`, `"nats"`, …
    pub executor: String,
    /// Dkron's `executor_config`: a flat string map whose keys depend on the executor.
    pub config: BTreeMap<String, String>,
    /// Cap of the stored full output; bytes beyond it are counted, not stored.
    pub output_limit_bytes: u64,
    /// Extra environment for shell runs, e.g. `KAIROS_EXECUTION_ID`, `KAIROS_SCHEDULED_AT`.
    pub extra_env: Vec<(String, String)>,
    /// The values of the secrets `config` references (`{{secret "name"}}`), sent by the leader with the order:
    /// put in place just before the executor starts and masked in the output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, kairos_model::secret::SecretValue>,
    /// The job's output processors (Dkron's `processors`), applied on this node once the run ends.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub processors: BTreeMap<String, serde_json::Value>,
}

impl RunSpec {
    /// A spec with the default output cap and no extra environment.
    pub fn new(
        job_name: impl Into<String>,
        execution_id: impl Into<String>,
        executor: impl Into<String>,
        config: BTreeMap<String, String>,
    ) -> RunSpec {
        RunSpec {
            job_name: job_name.into(),
            execution_id: execution_id.into(),
            executor: executor.into(),
            config,
            output_limit_bytes: OUTPUT_LIMIT_BYTES_DEFAULT,
            extra_env: Vec::new(),
            secrets: BTreeMap::new(),
            processors: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

/// How one execution ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: RunStatus,
    /// The process exit code, or for http the HTTP status code. `None` when there was none
    /// (killed by a signal, never started, no response).
    pub exit_code: Option<i32>,
    /// The last [`TAIL_BYTES`] of the output at most, valid UTF-8, starting on a char boundary.
    pub output_tail: String,
    /// Total bytes produced, including those beyond the stored cap.
    pub output_bytes: u64,
    /// Why the run failed when that is not just a non-zero exit code.
    pub error: Option<String>,
}
