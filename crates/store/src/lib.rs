//! The replicated store: Raft consensus (openraft) over two redb files, one for the Raft log and one for the
//! state machine, plus the deterministic state transitions of Kairos.
//!
//! - [`command`]: what can change the state ([`Command`]) and what applying it answers ([`Response`]);
//! - [`state`]: the tables and the [`Applier`](state::Applier) that turns commands into table writes;
//! - [`acl`]: applying and reading access-control tokens and policies;
//! - [`log`]: the Raft log on redb ([`LogStore`]);
//! - [`machine`]: the Raft state machine wrapper ([`StateMachine`]) with snapshots;
//! - [`TypeConfig`]: openraft's type configuration for Kairos.
//!
//! The store owns consensus and persistence and nothing else: no network, no clock, no scheduling.

pub mod acl;
pub mod audit;
pub mod command;
pub mod log;
pub mod machine;
pub mod outbox;
pub mod secrets;
pub mod state;

pub use command::{BATCH_ITEMS_MAX, Command, ExecRef, Expansion, Finish, Fire, Refusal, Response, Start};
pub use log::LogStore;
pub use machine::StateMachine;
pub use state::{Event, JobRecord, StateReader};

use std::fmt;

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::PutJob { job, .. } => write!(f, "put job {}", job.name),
            Command::RestoreJobs { jobs, .. } => write!(f, "restore {} jobs", jobs.len()),
            Command::DeleteJob { name } => write!(f, "delete job {name}"),
            Command::SetPaused { paused } => write!(f, "set paused {paused}"),
            Command::Fire { fires } => write!(f, "fire {} slots", fires.len()),
            Command::Advance { job, cursor } => write!(f, "advance {job} to {cursor}"),
            Command::Expand { expansions } => write!(f, "expand {} executions", expansions.len()),
            Command::Start { starts } => write!(f, "start {} executions", starts.len()),
            Command::Renew { renewals, .. } => write!(f, "renew {} leases", renewals.len()),
            Command::Finish { results } => write!(f, "finish {} executions", results.len()),
            Command::DeleteExecutions { job } => write!(f, "delete executions of {job}"),
            Command::AclBootstrap { token } => write!(f, "acl bootstrap {}", token.accessor_id),
            Command::AclPutToken { token } => write!(f, "acl put token {}", token.accessor_id),
            Command::AclDeleteToken { accessor_id } => write!(f, "acl delete token {accessor_id}"),
            Command::AclPutPolicy { policy } => write!(f, "acl put policy {}", policy.name),
            Command::AclDeletePolicy { name } => write!(f, "acl delete policy {name}"),
            Command::SecretPut { name, .. } => write!(f, "put secret {name}"),
            Command::SecretDelete { name } => write!(f, "delete secret {name}"),
            Command::Audit { records, .. } => write!(f, "audit {} requests", records.len()),
            Command::Notified { upto, records, alerts } => {
                write!(f, "notified up to {upto}: {} deliveries, {} alerts", records.len(), alerts.len())
            }
        }
    }
}

openraft::declare_raft_types!(
    /// openraft's types for Kairos: our commands and responses, u64 node ids, nodes addressed by their RPC address.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Map any error to the `io::Error` openraft's storage traits expect.
pub(crate) fn io_err<E: std::error::Error + Send + Sync + 'static>(err: E) -> std::io::Error {
    std::io::Error::other(err)
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::io::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
