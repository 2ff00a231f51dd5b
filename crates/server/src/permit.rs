//! Launch permits: a node other than the leader launches a run only with a permit the leader grants for that run,
//! asked for right before the launch (the worker's fence).
//!
//! The leader grants a permit for a run only while it leads in the order's term, its leader lease holds, and it
//! still has the run placed on the asking node (its claim, see `dispatch::claims`); it notes the grant on the
//! claim. That gives the leader two proofs it had no other way to get:
//! - a claim never granted cannot have started: when its node is silent (cut off, paused), the run is placed on
//!   another node at once, and the order, if it still reaches the node, gets its permit refused;
//! - a deposed leader grants nothing once a new leader is elected (its lease ran out first), so a new leader knows
//!   that no run of the previous term due after its election was launched anywhere, even on a node it cannot reach
//!   (see `dispatch::takeover`).
//!
//! An agent asks the server gossip says leads (any other after a failure; followers forward to the leader); a
//! follower server asks the leader. A request that
//! gets no answer is asked again until the order's start deadline, then the order is dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kairos_store::ExecRef;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::cluster::RpcClient;
use crate::gossip::{Membership, ServerChoice};
use crate::worker::{Fence, Verdict};

/// How long a node waits for the answer to a permit request (the server it asks may forward it once).
pub const PERMIT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a follower waits for the leader when it forwards a permit request.
pub const PERMIT_FORWARD_TIMEOUT: Duration = Duration::from_secs(1);

/// A node asks to launch runs ordered in `term` (`POST /cluster/permit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PermitRequest {
    pub term: u64,
    /// The asking node's name: permits are granted only for runs placed on it.
    pub node: String,
    pub execs: Vec<ExecRef>,
    /// Forwarded by a follower already: the receiver answers itself and does not forward again.
    #[serde(default)]
    pub forwarded: bool,
}

/// The answer to a [`PermitRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermitAnswer {
    /// One answer per execution asked about: granted, or refused (the leader no longer has it placed there).
    Granted(Vec<bool>),
    /// The term is over: a newer one is known. Nothing of the old term may launch.
    Stale(u64),
    /// Nobody could decide now (no leader known, or the leader's lease is not confirmed yet): ask again.
    Unknown(String),
}

impl PermitAnswer {
    /// What the worker's fence makes of the answer about `execs`.
    pub fn verdict(self, execs: &[ExecRef]) -> Verdict {
        match self {
            PermitAnswer::Granted(granted) => {
                let launch: HashSet<ExecRef> =
                    execs.iter().zip(granted).filter(|(_, ok)| *ok).map(|(exec, _)| exec.clone()).collect();
                if launch.len() == execs.len() { Verdict::Launch } else { Verdict::Only(launch) }
            }
            PermitAnswer::Stale(_) => Verdict::Drop,
            PermitAnswer::Unknown(why) => {
                debug!("launch permit not decided yet: {why}");
                Verdict::Wait
            }
        }
    }
}

/// An agent's fence: ask the leader for the permit (gossip hints which server leads), the next server after one
/// that failed (see [`ServerChoice`]).
pub fn agent_fence(membership: Arc<Membership>, rpc: RpcClient, node_name: String) -> Fence {
    let choice = Arc::new(ServerChoice::default());
    Arc::new(move |term, execs| {
        let (membership, rpc, node, choice) = (membership.clone(), rpc.clone(), node_name.clone(), choice.clone());
        Box::pin(async move {
            let Some(addr) = choice.order(&membership).into_iter().next() else { return Verdict::Wait };
            let request = PermitRequest { term, node, execs, forwarded: false };
            match rpc.permit(&addr, &request, PERMIT_TIMEOUT).await {
                Ok(answer) => answer.verdict(&request.execs),
                Err(err) => {
                    debug!("launch permit: {addr}: {err}");
                    choice.failed();
                    Verdict::Wait
                }
            }
        })
    })
}

/// Ask `addr` (the leader) on behalf of a request that came to this follower, or of this follower's own worker.
pub async fn forward(rpc: &RpcClient, addr: &str, request: &PermitRequest) -> PermitAnswer {
    let forwarded = PermitRequest { forwarded: true, ..request.clone() };
    rpc.permit(addr, &forwarded, PERMIT_FORWARD_TIMEOUT)
        .await
        .unwrap_or_else(|err| PermitAnswer::Unknown(format!("the leader at {addr}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str) -> ExecRef {
        ExecRef { job: "j".into(), id: id.into() }
    }

    #[test]
    fn answers_become_verdicts_for_the_batch() {
        let batch = [r("1"), r("2")];
        assert_eq!(PermitAnswer::Granted(vec![true, true]).verdict(&batch), Verdict::Launch);
        assert_eq!(
            PermitAnswer::Granted(vec![false, true]).verdict(&batch),
            Verdict::Only(HashSet::from([r("2")])),
            "a refused run is dropped, the granted one launches"
        );
        assert_eq!(PermitAnswer::Granted(vec![false, false]).verdict(&batch), Verdict::Only(HashSet::new()));
        assert_eq!(PermitAnswer::Granted(vec![true]).verdict(&batch), Verdict::Only(HashSet::from([r("1")])), "short");
        assert_eq!(PermitAnswer::Stale(7).verdict(&batch), Verdict::Drop);
        assert_eq!(PermitAnswer::Unknown("no leader".into()).verdict(&batch), Verdict::Wait);
    }
}
