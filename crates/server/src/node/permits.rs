//! A server's side of launch permits (see [`crate::permit`]): as leader it grants them, as follower it forwards
//! them to the leader, and its own worker's fence asks through the same path (or, for the orders this node gave
//! as leader, checks its leader lease and commits the runs' start before they launch).

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use kairos_model::ExecutionStatus;
use kairos_store::{Command, ExecRef, Raft, Start};
use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, ReadPolicy, ServerState};
use tracing::debug;

use super::Node;
use crate::permit::{PermitAnswer, PermitRequest, forward};
use crate::worker::{Fence, Verdict};

/// How fresh a quorum's acknowledgement must be for a leader to act on its lease without asking Raft again: less
/// than the shortest election timeout, so no other leader can have been elected since.
pub fn lease_fresh(multiplier: u64) -> Duration {
    Duration::from_millis(100 * multiplier)
}

/// Whether this leader's lease holds now: a single voter cannot be deposed by anyone; a quorum ack fresher than
/// `fresh` proves no other leader can exist yet; otherwise Raft is asked to confirm the lease.
async fn lease_verdict(raft: &Raft, fresh: Duration) -> Verdict {
    let metrics = raft.metrics().borrow_watched().clone();
    if metrics.membership_config.membership().voter_ids().nth(1).is_none() {
        return Verdict::Launch;
    }
    if metrics.last_quorum_acked.as_ref().is_some_and(|acked| acked.elapsed() < fresh) {
        return Verdict::Launch;
    }
    match raft.ensure_linearizable(ReadPolicy::LeaseRead).await {
        Ok(_) => Verdict::Launch,
        Err(_) => Verdict::Wait,
    }
}

impl Node {
    /// Answer a permit request: granted per run by the leader of its term while its lease holds, for the runs it
    /// has placed on the asking node; forwarded to the leader by a follower.
    pub async fn permit(&self, request: PermitRequest) -> PermitAnswer {
        let metrics = self.metrics();
        if metrics.current_term > request.term {
            return PermitAnswer::Stale(metrics.current_term);
        }
        if metrics.state == ServerState::Leader && metrics.current_term == request.term {
            if self.dispatch.dispatcher.term() != request.term {
                return PermitAnswer::Unknown(format!("the leader of term {} is still taking over", request.term));
            }
            let fresh = lease_fresh(u64::from(self.config.raft_multiplier));
            return match lease_verdict(&self.raft, fresh).await {
                Verdict::Launch => PermitAnswer::Granted(self.grant_pending(&request)),
                _ => PermitAnswer::Unknown(format!("the leader of term {} cannot confirm its lease", request.term)),
            };
        }
        if request.forwarded {
            return PermitAnswer::Unknown(format!("{} does not lead term {}", self.config.node_name, request.term));
        }
        match self.leader_addr(&metrics) {
            Some(addr) => forward(&self.rpc, &addr, &request).await,
            None => PermitAnswer::Unknown("no leader is known".into()),
        }
    }
}

impl Node {
    /// Grant the runs of `request` still pending in the state and placed on the asking node. A run that already
    /// ran keeps its claim until the next sweep; an order for it that reached its node again (sent twice, the
    /// first answer lost) must not run it a second time once the node has reported it (seen in a partition test:
    /// the same run twice on one node, 200 ms apart).
    fn grant_pending(&self, request: &PermitRequest) -> Vec<bool> {
        let pending: Vec<bool> = request
            .execs
            .iter()
            .map(|exec| {
                let stored = self.state.execution(&exec.job, &exec.id).ok().flatten();
                stored.is_some_and(|e| e.status == kairos_model::ExecutionStatus::Pending)
            })
            .collect();
        let asked: Vec<_> =
            request.execs.iter().zip(&pending).filter(|(_, pending)| **pending).map(|(exec, _)| exec.clone()).collect();
        let mut granted = self.dispatch.dispatcher.grant(&request.node, &asked).into_iter();
        pending.into_iter().map(|pending| pending && granted.next().unwrap_or(false)).collect()
    }
}

/// The fence a server's worker asks before launching: orders of an older term than this server's Raft knows are
/// dropped; an order this node gave as leader launches only while its leader lease holds and once its start is
/// committed (see [`Node::start_own`]); any other order needs the leader's permit.
pub fn server_fence(node: Weak<Node>, raft: Raft, fresh: Duration) -> Fence {
    Arc::new(move |term, execs| {
        let (node, raft) = (node.clone(), raft.clone());
        Box::pin(async move {
            let metrics = raft.metrics().borrow_watched().clone();
            if metrics.current_term > term {
                return Verdict::Drop;
            }
            let Some(node) = node.upgrade() else { return Verdict::Drop };
            if metrics.state == ServerState::Leader && metrics.current_term == term {
                return match lease_verdict(&raft, fresh).await {
                    Verdict::Launch => node.start_own(term, execs).await,
                    other => other,
                };
            }
            let request = PermitRequest { term, node: node.config.node_name.clone(), execs, forwarded: false };
            node.permit(request.clone()).await.verdict(&request.execs)
        })
    })
}

/// How long a leader waits for the start of its own runs to commit before it asks again (the fence asks until the
/// orders' start deadline).
const OWN_START_TIMEOUT: Duration = Duration::from_secs(1);

impl Node {
    /// A leader launches its own runs only once their start is committed (as running on this node). So whatever
    /// happens to this leader next (cut off, paused, killed), the next leader reads every run it may have launched
    /// as running here, and waits for this node or the run's lease; the runs it finds pending were launched nowhere
    /// and go to another node at once (see `dispatch::takeover`). Before, a leader cut off from the others might
    /// have launched any of its pending runs under its lease, and the next leader held them all until it answered.
    ///
    /// Answers the runs whose start committed (the others were cancelled or started elsewhere meanwhile); `Wait`
    /// when the write failed or did not commit in time (it is asked again, and a start that committed meanwhile is
    /// accepted again as the same start), `Drop` once this node no longer leads in `term`.
    pub async fn start_own(&self, term: u64, execs: Vec<ExecRef>) -> Verdict {
        let at = self.worker.clock.leader_now();
        let lease_until = at + self.worker.lease;
        let me = &self.config.node_name;
        let mut started = HashSet::new();
        for chunk in execs.chunks(kairos_store::BATCH_ITEMS_MAX) {
            let starts = chunk
                .iter()
                .map(|exec| Start { exec: exec.clone(), node: me.clone(), started_at: at, lease_until })
                .collect();
            let written =
                tokio::time::timeout(OWN_START_TIMEOUT, self.submit_as_leader(term, Command::Start { starts }));
            match written.await {
                Ok(Ok(response)) => started.extend(
                    response
                        .executions
                        .into_iter()
                        .filter(|e| e.status == ExecutionStatus::Running && e.node_name == *me)
                        .map(|e| ExecRef { job: e.job_name, id: e.id }),
                ),
                Ok(Err(err)) => {
                    debug!("the start of {} run(s) of this leader did not commit: {}", chunk.len(), err.message);
                    let still_leads = self.is_leader() && self.metrics().current_term == term;
                    return if still_leads { Verdict::Wait } else { Verdict::Drop };
                }
                Err(_) => {
                    debug!(
                        "the start of {} run(s) of this leader did not commit within {OWN_START_TIMEOUT:?}",
                        chunk.len()
                    );
                    return Verdict::Wait;
                }
            }
        }
        Verdict::Started { at, execs: started }
    }
}
