//! How a node presents the cluster to clients, as Dkron does: the leader (never one that lost its quorum), the
//! members in serf's shape, the Raft summary.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, ServerState};
use serde_json::json;

use super::{ELECTION_TIMEOUT_MAX_MS, Node};
use crate::gossip::Member;

impl Node {
    /// The leader this node presents to clients (`/v1/leader`, `/v1/members`, `/v1/isleader`, `/health`, the UI):
    /// Raft's current leader, except this node itself while it leads without having heard from a quorum for
    /// longer than a leader lease (etcd's CheckQuorum). Such a leader is cut off: the others have likely elected
    /// another, and openraft refuses its writes anyway, so it must not mislead clients and load balancers.
    pub fn presented_leader(&self) -> Option<u64> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        if leader == self.id && metrics.state == ServerState::Leader && self.quorum_silence(&metrics).is_some() {
            return None;
        }
        Some(leader)
    }

    /// On a leader of several voters: how long since a quorum last acknowledged it, when that is longer than its
    /// lease (`None` while the lease holds).
    pub fn quorum_silence(&self, metrics: &openraft::RaftMetrics<kairos_store::TypeConfig>) -> Option<Duration> {
        metrics.membership_config.membership().voter_ids().nth(1)?;
        // openraft's leader lease is election_timeout_max: past it, the followers may elect another leader.
        let lease = Duration::from_millis(ELECTION_TIMEOUT_MAX_MS * u64::from(self.config.raft_multiplier));
        let since = metrics.last_quorum_acked.as_ref().map(|acked| acked.elapsed())?;
        (since > lease).then_some(since)
    }

    /// Whether this node leads and presents itself as leader (see [`Node::presented_leader`]).
    pub fn leads_with_quorum(&self) -> bool {
        self.is_leader() && self.presented_leader() == Some(self.id)
    }

    /// The current leader as gossip knows it.
    pub fn leader_member(&self) -> Option<Member> {
        let leader = self.presented_leader()?;
        self.membership.alive().into_iter().find(|m| m.raft_id == Some(leader))
    }

    pub fn leader_name(&self) -> Option<String> {
        if self.leads_with_quorum() {
            return Some(self.config.node_name.clone());
        }
        self.leader_member().map(|m| m.name)
    }

    /// The tags this node publishes (and placement matches against).
    pub fn member_tags(&self) -> BTreeMap<String, String> {
        self.membership.tags()
    }

    /// Every node gossip knows, as Dkron's API shows members (serf's field names).
    pub async fn members_json(&self) -> Vec<serde_json::Value> {
        let leader = self.presented_leader();
        let mut members = self.membership.all().await;
        members.sort_by(|a, b| (!a.server, &a.name).cmp(&(!b.server, &b.name)));
        members.iter().map(|m| member_json(m, leader)).collect()
    }

    pub fn leader_json(&self) -> Option<serde_json::Value> {
        let leader = self.presented_leader()?;
        let member = self.membership.alive().into_iter().find(|m| m.raft_id == Some(leader))?;
        Some(member_json(&member, Some(leader)))
    }

    pub fn raft_summary(&self) -> serde_json::Value {
        let metrics = self.metrics();
        json!({
            "id": metrics.id,
            "state": format!("{:?}", metrics.state),
            "term": metrics.current_term,
            "last_log_index": metrics.last_log_index,
            "last_applied": metrics.last_applied.map(|l| l.index),
            "leader": metrics.current_leader,
        })
    }
}

/// A member as Dkron shows it: serf's `Member` (`Name`; `Addr` and `Port` of its gossip address; the `Tags` it
/// publishes, which placement matches; `Status` as serf's number; the protocol versions) and Dkron's `id` and
/// `statusText`. Ours beside them: `leader`, `server`, and its RPC, HTTP and gossip addresses.
fn member_json(member: &Member, leader: Option<u64>) -> serde_json::Value {
    use crate::gossip::{GOSSIP_KEYS_VERSION, GOSSIP_PROTOCOL_VERSION};
    json!({
        "id": member.raft_id.map(|id| id.to_string()).unwrap_or_else(|| member.name.clone()),
        "Name": member.name,
        "Addr": member.gossip_addr.ip().to_string(),
        "Port": member.gossip_addr.port(),
        "Tags": member.tags,
        "Status": member.status.serf_code(),
        "ProtocolMin": GOSSIP_PROTOCOL_VERSION,
        "ProtocolMax": GOSSIP_PROTOCOL_VERSION,
        "ProtocolCur": GOSSIP_PROTOCOL_VERSION,
        "DelegateMin": GOSSIP_KEYS_VERSION,
        "DelegateMax": GOSSIP_KEYS_VERSION,
        "DelegateCur": GOSSIP_KEYS_VERSION,
        "statusText": member.status.as_str(),
        "leader": member.raft_id.is_some() && member.raft_id == leader,
        "server": member.server,
        "executors": member.executors,
        "clock_offset_ms": member.clock.map(|c| c.offset_ms),
        "clock_error_ms": member.clock.map(|c| c.error_ms),
        "rpc_addr": member.rpc_addr,
        "http_addr": member.http_addr,
        "gossip_addr": member.gossip_addr.to_string(),
    })
}

impl Node {
    /// The Prometheus exposition (see [`crate::metrics`]), with the gauges read from this server now.
    pub async fn metrics_text(&self) -> String {
        use crate::metrics::{StatusLabel, metrics};
        let m = metrics();
        let raft = self.metrics();
        m.raft_leader.set(i64::from(raft.state == ServerState::Leader));
        m.raft_term.set(i64::try_from(raft.current_term).unwrap_or(i64::MAX));
        m.raft_last_log_index.set(raft.last_log_index.map_or(0, |i| i64::try_from(i).unwrap_or(i64::MAX)));
        m.raft_last_applied_index.set(raft.last_applied.map_or(0, |l| i64::try_from(l.index).unwrap_or(i64::MAX)));
        m.raft_committed_index.set(raft.local_committed.map_or(0, |l| i64::try_from(l.index).unwrap_or(i64::MAX)));
        let mut by_status: BTreeMap<&str, i64> = BTreeMap::from([("alive", 0), ("failed", 0), ("left", 0)]);
        for member in self.membership.all().await {
            *by_status.entry(member.status.as_str()).or_default() += 1;
        }
        for (status, count) in by_status {
            m.gossip_members.get_or_create(&StatusLabel { status: status.to_string() }).set(count);
        }
        if let Ok(active) = self.state.active() {
            let pending = active.iter().filter(|e| e.status == kairos_model::ExecutionStatus::Pending).count();
            let gauge =
                |status: &str| m.executions_active.get_or_create(&StatusLabel { status: status.to_string() }).clone();
            gauge("pending").set(i64::try_from(pending).unwrap_or(i64::MAX));
            gauge("running").set(i64::try_from(active.len() - pending).unwrap_or(i64::MAX));
        }
        if let Ok(jobs) = self.state.job_count() {
            m.jobs.set(i64::try_from(jobs).unwrap_or(i64::MAX));
        }
        if let Ok(entries) = self.state.outbox_len() {
            m.outbox_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        }
        let raft_dir = self.config.data_dir.join("raft");
        for (store, file) in [("raft_log", "log.redb"), ("state", "state.redb")] {
            if let Ok(meta) = std::fs::metadata(raft_dir.join(file)) {
                crate::metrics::set_store_bytes(store, meta.len());
            }
        }
        crate::metrics::set_store_bytes("outputs", self.outputs.used_bytes());
        m.render()
    }
}
