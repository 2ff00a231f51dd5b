//! Writes: every change goes through Raft on the leader ([`Node::submit`] forwards it there from a follower and
//! waits until it is applied here too), reads that must be linearizable wait on a read barrier, and workers'
//! reports get their retry instants decided before they are written.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kairos_model::{Execution, ExecutionStatus, Timestamp};
use kairos_store::{Command, ExecRef, Finish, Response};
use openraft::{ReadPolicy, ServerState};
use tracing::warn;

use super::{LEADER_WAIT, LEADER_WRITE_TIMEOUT, Node};
use crate::cluster::RpcError;
use crate::dispatch::retry_instant;
use crate::duties::LeaderWrites;
use crate::error::{Failure, WriteError};
use crate::gossip::Member;
use crate::worker::Cancelled;

/// How a write that this node's Raft refused before appending it, because it no longer leads, begins: nothing was
/// written.
const NOT_ACCEPTED: &str = "this node did not accept the write as leader";

/// How a write begins that the leader appended and then lost to a leader change: it may still commit, so it is
/// never retried automatically (a retry could apply it twice).
const MAYBE_APPLIED: &str = "the leader changed while the write was in flight";

impl Node {
    /// On a multi-server leader: wait (bounded) until a quorum acknowledged this leader, which openraft requires
    /// before it accepts writes (right after an election it would refuse them).
    pub async fn wait_writable(&self) {
        if self.is_leader() && self.raft.voter_ids().nth(1).is_some() {
            let _ = self.raft.wait(Some(Duration::from_secs(2))).leader_with_quorum_acked(None, "leader lease").await;
        }
    }

    /// Propose a command through Raft and wait for it to be applied here. On a follower the command is forwarded
    /// to the leader. Refusals become API errors; executions the command created are dispatched by the leader.
    /// A leader that is stepping down refuses the write without writing anything: it is tried again (within
    /// [`LEADER_WAIT`]) with whoever leads next, rather than answered 503.
    pub async fn submit(&self, command: Command) -> Result<Response, WriteError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let metrics = self.metrics();
            if metrics.state == ServerState::Leader {
                self.wait_writable().await;
                match self.submit_local(command.clone()).await {
                    Ok((response, _)) => return Ok(response),
                    Err(err) if err.message.starts_with(NOT_ACCEPTED) && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(err) => return Err(err),
                }
            }
            if let Some(addr) = self.leader_addr(&metrics) {
                match self.forward(&addr, &command).await {
                    Ok(response) => return Ok(response),
                    Err(err) if err.is_unavailable() && !err.message.starts_with(MAYBE_APPLIED) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(err);
                        }
                    }
                    Err(err) => return Err(err),
                }
            } else if tokio::time::Instant::now() >= deadline {
                return Err(WriteError::unavailable("no leader is elected yet; retry"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A leader duty's write: refused unless this node still leads in `term` (a duty of an earlier term must
    /// not write in a later one, nor forward to another leader), and bounded by [`LEADER_WRITE_TIMEOUT`] so no
    /// duty waits for good on a write Raft cannot commit.
    pub async fn submit_as_leader(&self, term: u64, command: Command) -> Result<Response, WriteError> {
        let metrics = self.metrics();
        if metrics.state != ServerState::Leader || metrics.current_term != term {
            let message = format!("this node no longer leads in term {term}");
            return Err(WriteError::unavailable(message));
        }
        match tokio::time::timeout(LEADER_WRITE_TIMEOUT, self.submit_local(command)).await {
            Ok(written) => written.map(|(response, _)| response),
            Err(_) => {
                Err(WriteError::unavailable(format!("the write was not committed within {LEADER_WRITE_TIMEOUT:?}")))
            }
        }
    }

    /// Write through this node's Raft (it must lead); answers the response and its log index.
    pub async fn submit_local(&self, command: Command) -> Result<(Response, u64), WriteError> {
        let started = Instant::now();
        let what = tracing::enabled!(tracing::Level::TRACE).then(|| command.to_string());
        let written = match self.raft.client_write(command).await {
            Ok(written) => written,
            Err(err) => {
                // Refused before its entry was appended: nothing was written, so `submit` may try again.
                if let openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(_)) =
                    &err
                {
                    return Err(WriteError::unavailable(format!("{NOT_ACCEPTED} ({err}); retry")));
                }
                // Appended, then discarded by a leader change: it may still commit, so it is not tried again here.
                if err.forward_to_leader().is_some() {
                    return Err(WriteError::unavailable(format!(
                        "{MAYBE_APPLIED}; it may or may not have been applied ({err}): check, then retry"
                    )));
                }
                if let openraft::error::RaftError::Fatal(fatal) = &err {
                    return Err(WriteError::new(Failure::StorageFailed, format!("storage failed: {fatal}")));
                }
                return Err(WriteError::unavailable(format!("raft: {err}")));
            }
        };
        let index = written.log_id.index;
        let response = written.data;
        if let Some(refusal) = response.refusal.clone() {
            return Err(refusal.into());
        }
        let committed = started.elapsed();
        crate::dispatch::after_commit(&self.dispatch, &response);
        self.notifier.after_commit(&response);
        if let Some(what) = what {
            tracing::trace!("{what}: committed in {committed:?}, dispatched after {:?}", started.elapsed());
        }
        Ok((response, index))
    }

    /// Send a write to the leader at `addr`, then wait until this node has applied it (read-your-writes).
    async fn forward(&self, addr: &str, command: &Command) -> Result<Response, WriteError> {
        let unavailable = |what: String| WriteError::unavailable(what);
        match self.rpc.submit(addr, command).await {
            Ok((response, index)) => {
                let applied = self
                    .raft
                    .wait(Some(Duration::from_secs(10)))
                    .applied_index_at_least(Some(index), "forwarded write applied locally")
                    .await;
                if let Err(err) = applied {
                    warn!("forwarded write {index} not applied here yet: {err}");
                }
                Ok(response)
            }
            Err(RpcError::Rejected { status, message }) => {
                Err(WriteError::from_wire(status.map(|s| s.as_u16()), message))
            }
            Err(err @ (RpcError::Status { .. } | RpcError::BadAnswer { .. })) => {
                Err(unavailable(format!("bad answer from the leader at {addr}: {err}")))
            }
            Err(err) => Err(unavailable(format!("cannot reach the leader at {addr}: {err}"))),
        }
    }

    /// Wait until this server applied everything the leader has committed now (a linearizable read barrier).
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        let unavailable = |what: String| WriteError::unavailable(what);
        let index = if self.is_leader() {
            self.leader_read_index().await?
        } else {
            let metrics = self.metrics();
            let addr =
                self.leader_addr(&metrics).ok_or_else(|| unavailable("no leader is elected yet; retry".into()))?;
            match self.rpc.read_index(&addr).await {
                Ok(index) => index,
                Err(RpcError::Rejected { message, .. }) => return Err(unavailable(message)),
                Err(err @ (RpcError::Status { .. } | RpcError::BadAnswer { .. })) => {
                    return Err(unavailable(format!("bad answer from the leader: {err}")));
                }
                Err(err) => return Err(unavailable(format!("cannot reach the leader at {addr}: {err}"))),
            }
        };
        self.raft
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|e| unavailable(format!("this server did not catch up with the leader: {e}")))?;
        Ok(())
    }

    /// On the leader: confirm leadership with a quorum and answer the index every read must see.
    pub async fn leader_read_index(&self) -> Result<u64, WriteError> {
        self.raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| WriteError::unavailable(format!("leadership could not be confirmed: {e}")))?;
        Ok(self.metrics().last_applied.map_or(0, |l| l.index))
    }

    /// A worker's report: failed attempts get their retry instant here (the proposer decides, so applying stays
    /// deterministic), then it goes through Raft like any write.
    pub async fn submit_report(&self, mut command: Command) -> Result<Response, WriteError> {
        if let Command::Finish { results } = &mut command {
            let now = Timestamp::now();
            for finish in results.iter_mut() {
                // A `skipped` finish is a node too busy to run it: retried after the backoff if the job's
                // `on_overload` says so (the state decides; an instant it does not use changes nothing).
                let may_retry = matches!(finish.status, ExecutionStatus::Failed | ExecutionStatus::Skipped);
                if may_retry && finish.retry_at.is_none() {
                    finish.retry_at =
                        retry_instant(&self.state, &finish.exec.job, kairos_model::attempt_of(&finish.exec.id), now);
                }
            }
        }
        self.submit(command).await
    }

    /// Cancel a pending or running execution wherever it is.
    pub async fn cancel(&self, exec: &Execution) -> Result<(), WriteError> {
        let exec_ref = ExecRef { job: exec.job_name.clone(), id: exec.id.clone() };
        let reason = "cancelled by request";
        let mut withdrawn = false;
        match self.worker.cancel(&exec_ref, reason) {
            Cancelled::Running => return Ok(()),
            Cancelled::Withdrawn => withdrawn = true,
            Cancelled::NotHere => {}
        }
        // Ask the node that runs it, or (pending) every node that may hold it waiting for its instant.
        let targets: Vec<Member> = self
            .membership
            .alive()
            .into_iter()
            .filter(|m| m.name != self.config.node_name)
            .filter(|m| exec.status == ExecutionStatus::Pending || m.name == exec.node_name)
            .collect();
        let answers =
            futures::future::join_all(targets.iter().map(|m| self.remote_cancel(&m.rpc_addr, &exec_ref, reason))).await;
        if answers.contains(&Some(Cancelled::Running)) {
            return Ok(());
        }
        withdrawn |= answers.contains(&Some(Cancelled::Withdrawn));
        let error = if withdrawn { "cancelled by request before it started" } else { "cancelled by request" };
        let finish = Finish {
            exec: exec_ref,
            status: ExecutionStatus::Cancelled,
            exit_code: None,
            error: Some(error.into()),
            output_tail: exec.output.clone(),
            output_bytes: exec.output_bytes,
            node: if exec.node_name.is_empty() { self.config.node_name.clone() } else { exec.node_name.clone() },
            started_at: exec.started_at,
            finished_at: Timestamp::now(),
            retry_at: None,
            only_if_lease_expired: false,
        };
        self.submit(Command::Finish { results: vec![finish] }).await.map(|_| ())
    }

    pub async fn remote_cancel(&self, rpc_addr: &str, exec: &ExecRef, reason: &str) -> Option<Cancelled> {
        self.rpc.cancel(rpc_addr, exec, reason, crate::cluster::client::CANCEL_TIMEOUT).await.ok()
    }
}

/// How the leader duties write: through this node.
impl LeaderWrites for Node {
    fn submit_as_leader(&self, term: u64, command: Command) -> BoxFuture<'_, Result<Response, WriteError>> {
        Box::pin(Node::submit_as_leader(self, term, command))
    }

    fn is_leader(&self) -> bool {
        Node::is_leader(self)
    }

    fn is_stopping(&self) -> bool {
        Node::is_stopping(self)
    }
}

/// The node's writes as the dispatcher holds them: weakly, since the node owns the dispatcher (a node that is gone
/// leads nothing and writes nothing).
pub(super) struct WeakWrites(pub(super) std::sync::Weak<Node>);

impl LeaderWrites for WeakWrites {
    fn submit_as_leader(&self, term: u64, command: Command) -> BoxFuture<'_, Result<Response, WriteError>> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(node) => node.submit_as_leader(term, command).await,
                None => Err(WriteError::unavailable("the node is shutting down".to_owned())),
            }
        })
    }

    fn is_leader(&self) -> bool {
        self.0.upgrade().is_some_and(|node| node.is_leader())
    }

    fn is_stopping(&self) -> bool {
        self.0.upgrade().is_none_or(|node| node.is_stopping())
    }
}
