//! The paths of the node-to-node routes. The routers ([`super::rpc_router`], [`crate::node`]'s routes,
//! [`super::agent_router`]) and the client ([`super::client::RpcClient`]) both name them from here, so the two
//! sides cannot drift apart.

/// Raft (openraft's RPCs), answered by servers.
pub const RAFT_APPEND: &str = "/raft/append";
pub const RAFT_VOTE: &str = "/raft/vote";
pub const RAFT_PRE_VOTE: &str = "/raft/pre-vote";
pub const RAFT_SNAPSHOT: &str = "/raft/snapshot";
pub const RAFT_TRANSFER_LEADER: &str = "/raft/transfer-leader";

/// A write forwarded by a follower to the leader.
pub const SUBMIT: &str = "/cluster/submit";
/// An agent's report (finishes, lease renewals) to any server.
pub const REPORT: &str = "/cluster/report";
/// A follower asks the leader for the index a linearizable read must see.
pub const READ_INDEX: &str = "/cluster/read-index";
/// A node asks the leader (through any server) for the permit to launch runs (`crate::permit`).
pub const PERMIT: &str = "/cluster/permit";
/// The Raft configuration, for `kairos raft list-peers`.
pub const PEERS: &str = "/cluster/peers";
/// Remove a server from the Raft configuration (`kairos raft remove-peer`, or a follower forwarding it).
pub const REMOVE_PEER: &str = "/cluster/remove-peer";

/// Orders from the leader, fenced by term; answered by every node.
pub const RUN: &str = "/agent/run";
/// Cancel a run (running, or waiting for its instant).
pub const CANCEL: &str = "/agent/cancel";
/// A new leader's sync: what the node runs or holds; it also raises the node's term.
pub const SYNC: &str = "/agent/sync";
/// The full output of a run kept on the node that ran it; `?follow=true` streams it.
pub const OUTPUT: &str = "/agent/output/{job}/{id}";
/// `kairos leave`.
pub const LEAVE: &str = "/agent/leave";

/// [`OUTPUT`] for one run. Job names are URL-safe (`kairos_model::validate_name`) and execution ids are built by
/// the state machine from them; both go in unescaped, as they always have.
pub fn output(job: &str, id: &str) -> String {
    OUTPUT.replace("{job}", job).replace("{id}", id)
}

/// Prometheus metrics of an agent-only node (`--enable-prometheus`).
pub const METRICS: &str = "/metrics";

/// A server's time and its offset from the leader, for nodes measuring their clock (`crate::clock`).
pub const CLOCK: &str = "/cluster/clock";
