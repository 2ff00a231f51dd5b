//! Leader duties, turned on and off in one place (as Nomad's `establishLeadership`/`revokeLeadership`).
//!
//! [`run`] watches Raft on every server. When this node becomes leader in term T it *establishes*:
//! 1. it waits until a quorum acknowledged it (openraft accepts writes only then) and applies everything committed
//!    so far (a read barrier), so that a run the previous leader finished is not seen as pending;
//! 2. it starts the scheduler ([`crate::scheduler::duty`]), and in parallel the dispatcher's takeover (sync every
//!    live node, which raises their term and so fences the previous leader), then the dispatcher's sweep
//!    ([`crate::dispatch::duty`]). Until the takeover is done the dispatcher has no term and dispatches nothing;
//!    what the scheduler fires meanwhile waits for the first sweep.
//!
//! When the node stops leading, **or leads again in another term** (a flap can be faster than one look at Raft's
//! metrics, and orders of the old term would be refused by every node), it *revokes*: the duties are dropped
//! wherever they are, the dispatcher forgets its claims and its term, and the loop waits to lead again. A duty
//! never ends by itself while its term lasts: one that fails retries inside, and every write a duty makes is
//! bounded in time ([`crate::node::Node::submit_as_leader`]), so no await can hold a duty for good.
//!
//! Where fencing happens (so a deposed leader never starts a run twice):
//! - orders carry the leader's term, and a node refuses orders older than the newest term it has seen
//!   ([`crate::worker`]); the takeover's sync raises every node's term before the new leader dispatches;
//! - a server launches an order of its own term only while its leader lease holds and once the run's start is
//!   committed, and every other node launches a run only with the leader's permit for it, which the leader grants
//!   only under that lease and for runs it has placed on that node (`server_fence` in `node::permits`,
//!   [`crate::permit`]);
//! - runs of the previous leader that were due before the takeover wait while a node it may have sent them to is
//!   silent; when that node is the previous leader itself, only runs due before it led wait
//!   ([`crate::dispatch`]'s takeover, [`crate::node::leaders`]); an order expires unstarted `START_DEADLINE` after
//!   its instant.
//!
//! The duties' state (follower, establishing, leading, with the term and since when, and the last sweep) is in
//! `/health`, which turns unhealthy when this node leads but its duties have not run for [`crate::duties::STALLED_AFTER`].

use std::sync::Arc;
use std::time::Duration;

use kairos_model::Timestamp;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{Instrument, error, info, info_span, warn};

use crate::duties::Phase;
use crate::node::Node;

/// The leader fires slots on its own clock: a server whose clock is certainly further than this from the clocks of
/// a majority of the voters does not lead, it hands leadership to one of them.
pub const LEADER_CLOCK_MAX: Duration = Duration::from_millis(500);
/// How long a leader with a clock off the majority's tries to hand leadership over before it leads anyway (a
/// cluster must not stay without duties because no other server takes over).
const HAND_OVER_WITHIN: Duration = Duration::from_secs(5);
/// How long a new leader waits for a voter's clock; one that has not answered by then counts as silent (a voter
/// cut off from this one took the RPC's whole 2 s timeout before, and held up every duty with it).
const CLOCK_ASK_WITHIN: Duration = Duration::from_millis(300);

/// Turn leader duties on and off for as long as the node runs.
pub async fn run(node: Arc<Node>, mut changes: UnboundedReceiver<String>) {
    while let Some(term) = wait_to_lead(&node).await {
        // Every line of the duties of this term carries it (see crate::logging).
        lead(&node, term, &mut changes).instrument(info_span!("leader", term)).await;
        node.dispatch.dispatcher.revoke();
        node.duties.set(Phase::Follower, 0);
        if node.is_stopping() {
            return;
        }
        info!("leader duties of term {term} stopped");
    }
}

/// Wait until this node leads; answers the term. `None` if the node stops first.
async fn wait_to_lead(node: &Node) -> Option<u64> {
    let mut metrics = node.raft.metrics();
    loop {
        {
            let now = metrics.borrow_watched();
            if now.state == ServerState::Leader {
                return Some(now.current_term);
            }
        }
        tokio::select! {
            _ = node.stopping() => return None,
            changed = metrics.changed() => if changed.is_err() { return None },
        }
    }
}

/// Completes when this node no longer leads in `term`.
async fn lost(node: &Node, term: u64) {
    let mut metrics = node.raft.metrics();
    loop {
        {
            let now = metrics.borrow_watched();
            if now.state != ServerState::Leader || now.current_term != term {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Establish and run the duties of `term` until this node no longer leads in it (or stops).
async fn lead(node: &Node, term: u64, changes: &mut UnboundedReceiver<String>) {
    node.duties.set(Phase::Establishing, term);
    crate::metrics::metrics().leadership_acquired.inc();
    info!("leading in term {term}: establishing leader duties");
    let duties = async {
        establish(node, term).await;
        hand_over_if_clock_off(node, term).await;
        let dispatcher = async {
            let previous = previous_leader(node, term).await;
            let synced = crate::dispatch::take_over(&node.dispatch, term, previous).await;
            node.duties.set(Phase::Leading, term);
            info!("leader duties of term {term} running: scheduler and dispatcher");
            crate::dispatch::duty(&node.dispatch, term, synced).await;
        };
        let ports = crate::scheduler::Ports { state: &node.state, writes: node, duties: &node.duties };
        let notifier = crate::notify::duty(&node.notifier, node, term);
        tokio::join!(crate::scheduler::duty(&ports, term, changes), dispatcher, notifier);
    };
    tokio::select! {
        _ = lost(node, term) => {}
        _ = node.stopping() => {}
        _ = duties => error!("leader duties of term {term} ended by themselves; establishing them again"),
    }
}

/// The leader before this one in this server's log, with when this server first saw it lead (see
/// [`crate::node::leaders`]); `None` when either is unknown.
async fn previous_leader(node: &Node, term: u64) -> Option<crate::dispatch::PreviousLeader> {
    let Some((previous_term, id)) = crate::node::leaders::previous_in_log(&node.raft, (term, node.id)).await else {
        info!("leading in term {term}: no entry of an earlier leader in this server's log");
        return None;
    };
    let Some(since) = node.leaders.since((previous_term, id)) else {
        info!("leading in term {term}: this server did not see server {id} lead term {previous_term}");
        return None;
    };
    let Some(member) = node.membership.all().await.into_iter().find(|m| m.raft_id == Some(id)) else {
        info!("leading in term {term}: the previous leader, server {id}, is not a member");
        return None;
    };
    Some(crate::dispatch::PreviousLeader { name: member.name, since })
}

/// Wait until writes are accepted and everything committed is applied here.
async fn establish(node: &Node, term: u64) {
    node.wait_writable().await;
    loop {
        match node.leader_read_index().await {
            Ok(_) => return,
            Err(err) => {
                warn!("leading in term {term}: {}; trying again", err.message);
                node.duties.failed(err.message);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// If this server's clock is certainly more than [`LEADER_CLOCK_MAX`] off the clocks of a majority of the voters
/// (so it would fire slots early or late), hand leadership to the voter whose clock is the majority's median, and
/// keep trying for [`HAND_OVER_WITHIN`]; then lead anyway, saying so. Answers at once when the clocks agree.
async fn hand_over_if_clock_off(node: &Node, term: u64) {
    let deadline = tokio::time::Instant::now() + HAND_OVER_WITHIN;
    while let Some((target, offset_ms)) = clock_outvoted(node).await {
        if tokio::time::Instant::now() >= deadline {
            error!(
                "leading in term {term} with a clock {offset_ms} ms off most servers': no other server took \
                 leadership, so slots fire on this clock; fix its time synchronisation (NTP)"
            );
            return;
        }
        error!(
            "this server's clock is {offset_ms} ms off the clocks of most voters (more than {LEADER_CLOCK_MAX:?}): \
             handing leadership of term {term} to server {target} rather than firing slots at the wrong time; fix \
             its time synchronisation (NTP)"
        );
        if let Err(err) = node.raft.trigger().transfer_leader(target).await {
            warn!("cannot hand leadership to {target}: {err}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The voter to hand leadership to, and by how much (ms, others − this clock) this clock is off, when it is
/// certainly more than [`LEADER_CLOCK_MAX`] off the clocks of a majority of the voters (this one counted), as
/// measured now, plus, for a voter that does not answer, as measured against the previous leader before this term.
async fn clock_outvoted(node: &Node) -> Option<(u64, i64)> {
    let metrics = node.metrics();
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    let majority = voters.len() / 2 + 1;
    let members = node.membership.all().await;
    let others: Vec<(u64, String)> = voters
        .iter()
        .filter(|id| **id != node.id)
        .filter_map(|id| members.iter().find(|m| m.raft_id == Some(*id)).map(|m| (*id, m.rpc_addr.clone())))
        .collect();
    let asked = futures::future::join_all(others.iter().map(|(id, addr)| async move {
        let t0 = Timestamp::now();
        // A voter cut off from this one must not hold up the new leader's duties for the RPC's own timeout.
        let reading = tokio::time::timeout(CLOCK_ASK_WITHIN, node.rpc.clock(addr)).await.ok()?.ok()?;
        // Their raw clock against ours: their own offset from the previous leader does not count here.
        let raw = crate::clock::ClockReading { offset_ms: 0, error_ms: 0, ..reading };
        Some((*id, crate::clock::Offset::from_round_trip(t0, raw, Timestamp::now())))
    }))
    .await;
    let answered: Vec<(u64, crate::clock::Offset)> = asked.into_iter().flatten().collect();
    let mut off: Vec<(i64, u64)> = answered
        .iter()
        .filter(|(_, offset)| offset.beyond(LEADER_CLOCK_MAX))
        .map(|(id, offset)| (offset.offset_ms, *id))
        .collect();
    // A voter that does not answer now (the previous leader, paused or gone?) still counts with what this node
    // measured against the previous leader while following it.
    let silent_voter = answered.len() + 1 < voters.len();
    let remembered = node.worker.clock.measured().is_some_and(|o| o.beyond(LEADER_CLOCK_MAX));
    let votes = off.len() + usize::from(silent_voter && remembered);
    if off.is_empty() || votes < majority {
        return None;
    }
    off.sort_unstable();
    off.get(off.len() / 2).map(|(offset_ms, id)| (*id, *offset_ms))
}
