//! The Raft configuration: servers found by gossip are bootstrapped or added (learner, then voter) by the
//! leader, `kairos raft list-peers`/`remove-peer` read and change it, and `kairos leave` takes a node out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Peer;
use openraft::{BasicNode, ChangeMembers, ServerState};
use tracing::{info, warn};

use super::{MEMBERSHIP_INTERVAL, Node};
use crate::cluster::RpcError;
use crate::error::{Failure, WriteError};
use crate::gossip::{Member, Status};

impl Node {
    /// The Raft configuration: one row per server (`kairos raft list-peers`).
    pub fn peers(&self) -> Vec<Peer> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let alive = self.membership.alive();
        membership
            .nodes()
            .map(|(id, node)| Peer {
                node: alive.iter().find(|m| m.raft_id == Some(*id)).map(|m| m.name.clone()).unwrap_or_default(),
                id: *id,
                address: node.addr.clone(),
                state: if metrics.current_leader == Some(*id) { "leader" } else { "follower" }.into(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// Remove a server from the Raft configuration (on the leader; forwarded otherwise).
    pub async fn remove_peer(&self, peer: u64) -> Result<(), WriteError> {
        let metrics = self.metrics();
        if !metrics.membership_config.membership().nodes().any(|(id, _)| *id == peer) {
            return Err(WriteError::new(
                Failure::NotFound,
                format!("peer-id: {peer} is not a member of the Raft configuration"),
            ));
        }
        if metrics.state != ServerState::Leader {
            let addr =
                self.leader_addr(&metrics).ok_or_else(|| WriteError::unavailable("no leader is elected yet; retry"))?;
            let forwarded =
                self.rpc.remove_peer(&addr, peer, crate::cluster::client::REMOVE_PEER_FORWARD_TIMEOUT).await;
            return forwarded.map_err(|err| match err {
                RpcError::Rejected { status, message } => {
                    WriteError::from_wire(Some(status.map_or(409, |s| s.as_u16())), message)
                }
                err @ (RpcError::Status { .. } | RpcError::BadAnswer { .. }) => {
                    WriteError::unavailable(format!("bad answer: {err}"))
                }
                err => WriteError::unavailable(format!("leader unreachable: {err}")),
            });
        }
        if peer == self.id {
            return Err(WriteError::new(
                Failure::Conflict,
                "peer-id: this is the leader; run `kairos leave` on it (it hands leadership over first)",
            ));
        }
        if let Some(member) = self.membership.all().await.into_iter().find(|m| m.raft_id == Some(peer)) {
            self.removed.lock().expect("removed lock").insert(peer, member.generation);
        }
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([peer])), false)
            .await
            .map_err(|e| WriteError::new(Failure::Conflict, format!("raft: {e}")))?;
        Ok(())
    }

    /// Leave the cluster gracefully: hand leadership over, leave the Raft configuration, leave gossip, then let
    /// the process exit (running executions get the shutdown grace).
    pub async fn leave(self: Arc<Self>) {
        info!("leaving the cluster");
        self.membership.announce_leave().await;
        let voters: Vec<u64> = self.raft.voter_ids().filter(|v| *v != self.id).collect();
        if self.is_leader()
            && let Some(next) = voters.first()
        {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while self.is_leader() && tokio::time::Instant::now() < deadline {
                let _ = self.raft.trigger().transfer_leader(*next).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if !voters.is_empty() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                match self.remove_peer(self.id).await {
                    Ok(()) => break,
                    Err(err) if tokio::time::Instant::now() < deadline => {
                        warn!("leave: not removed from the Raft configuration yet ({}); retrying", err.message);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(err) => {
                        warn!("leave: could not leave the Raft configuration: {}", err.message);
                        break;
                    }
                }
            }
        }
        self.membership.leave().await;
        self.exit.cancel();
    }
}

/// Membership duties, every few hundred milliseconds on every server: publish that this node's Raft is
/// initialized; bootstrap when `--bootstrap-expect` servers are visible and none is initialized (the lowest
/// Raft id does it, with all of them as voters); on the leader, add servers that appeared (learner, then voter).
pub(super) async fn membership_loop(node: Arc<Node>) {
    let mut published = false;
    loop {
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(MEMBERSHIP_INTERVAL) => {}
        }
        let metrics = node.metrics();
        let leading = if metrics.state == ServerState::Leader { metrics.current_term } else { 0 };
        node.membership.set_leading(leading).await;
        let initialized = metrics.membership_config.membership().voter_ids().next().is_some();
        if initialized && !published {
            node.membership.set_initialized().await;
            published = true;
        }
        if !initialized {
            try_bootstrap(&node).await;
            continue;
        }
        if metrics.state == ServerState::Leader {
            add_new_servers(&node, &metrics).await;
        }
    }
}

async fn try_bootstrap(node: &Node) {
    let expect = node.config.bootstrap_expect as usize;
    if expect <= 1 {
        return;
    }
    let servers: Vec<Member> =
        node.membership.alive().into_iter().filter(|m| m.server && m.raft_id.is_some()).collect();
    if servers.iter().any(|m| m.raft_initialized) {
        return; // a cluster exists: its leader adds this node
    }
    if servers.len() < expect {
        return;
    }
    let lowest = servers.iter().filter_map(|m| m.raft_id).min();
    if lowest != Some(node.id) {
        return;
    }
    let members: BTreeMap<u64, BasicNode> =
        servers.iter().filter_map(|m| Some((m.raft_id?, BasicNode::new(m.raft_addr())))).collect();
    info!("bootstrapping a cluster of {} servers: {:?}", members.len(), members.keys().collect::<Vec<_>>());
    if let Err(err) = node.raft.initialize(members).await {
        warn!("bootstrap: {err}");
    }
}

async fn add_new_servers(node: &Node, metrics: &openraft::RaftMetrics<kairos_store::TypeConfig>) {
    let membership = metrics.membership_config.membership();
    let known: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    for member in node.membership.alive() {
        let Some(id) = member.raft_id else { continue };
        // A server that came back on another Raft address (or now has a Raft listener of its own): tell Raft
        // where it is now.
        if let Some(known_node) = membership.get_node(&id)
            && member.server
            && known_node.addr != member.raft_addr()
        {
            info!("server {} ({id}) moved to {}; updating its Raft address", member.name, member.raft_addr());
            let nodes = BTreeMap::from([(id, BasicNode::new(member.raft_addr()))]);
            if let Err(err) = node.raft.change_membership(ChangeMembers::SetNodes(nodes), true).await {
                warn!("cannot update the address of {}: {err}", member.name);
            }
        }
        if !member.server || member.status != Status::Alive || voters.contains(&id) {
            continue;
        }
        if node.removed.lock().expect("removed lock").get(&id).is_some_and(|g| *g >= member.generation) {
            continue;
        }
        if !known.contains(&id) {
            info!("adding server {} ({id}) as a learner", member.name);
            if let Err(err) = node.raft.add_learner(id, BasicNode::new(member.raft_addr()), true).await {
                warn!("cannot add {} as a learner: {err}", member.name);
                continue;
            }
        }
        info!("promoting server {} ({id}) to voter", member.name);
        if let Err(err) = node.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await {
            warn!("cannot promote {} to voter: {err}", member.name);
        }
    }
}
