//! A running Kairos server: the Raft instance and its stores, gossip membership, the local worker, and the
//! listeners. The leader's duties live in [`crate::dispatch`] (claiming, placing and fencing runs, leases) and
//! [`crate::scheduler`] (deciding slots).
//!
//! [`Node::start`] opens the data directory and starts openraft. With `--bootstrap-expect 1` (or 0 and no one to
//! join) a fresh node bootstraps a single-voter cluster at once; with N > 1 the servers find each other by
//! gossip and the one with the lowest Raft id bootstraps all N as voters. A server that appears later (or
//! comes back with an empty data directory) is added by the leader, first as a learner, then as a voter.
//! Writes reaching a follower are forwarded to the leader over RPC ([`Node::submit`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::StatusCode;
use futures::future::BoxFuture;
use kairos_agent::OutputStore;
use kairos_model::{Execution, ExecutionStatus, Timestamp};
use kairos_store::{Command, ExecRef, Finish, LogStore, Raft, Response, StateMachine, StateReader};
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers, Instant as _, ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::ApiError;
use crate::cluster::{RpcClient, RpcError};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::gossip::{Member, Membership, Status};
use crate::leadership::Duties;
use crate::worker::{Cancelled, Reporter, Verdict, Worker};

/// How often the membership duties run (publishing, bootstrapping, adding servers).
const MEMBERSHIP_INTERVAL: Duration = Duration::from_millis(300);
/// How long a write waits for a leader to be known.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Raft timings (milliseconds), each multiplied by `--raft-multiplier`.
const HEARTBEAT_MS: u64 = 50;
const ELECTION_TIMEOUT_MIN_MS: u64 = 250;
const ELECTION_TIMEOUT_MAX_MS: u64 = 350;
/// Longest wait for a leader duty's write to commit (then the duty retries).
pub const LEADER_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Node {
    pub config: Config,
    pub id: u64,
    pub raft: Raft,
    pub state: StateReader,
    pub outputs: OutputStore,
    pub worker: Worker,
    pub rpc_addr: SocketAddr,
    pub membership: Arc<Membership>,
    /// Node-to-node RPC client (connections are pooled and kept alive).
    pub rpc: RpcClient,
    /// The leader's dispatcher (idle with term 0 unless this node leads).
    pub dispatcher: Dispatcher,
    /// What the leader duties are doing (see [`crate::leadership`]).
    pub duties: Duties,
    /// Servers this leader removed from Raft, with the gossip generation they had: not added back unless they
    /// restart (a leaving server may still look alive for a moment).
    removed: Mutex<HashMap<u64, u64>>,
    stopping: CancellationToken,
    /// Cancelled when the process should exit by itself (after `kairos leave`, or when storage failed).
    pub exit: CancellationToken,
    /// Why this node's storage failed, once it has (see [`crate::storage`]); the process then exits non-zero.
    pub fatal: std::sync::OnceLock<String>,
    weak: std::sync::Weak<Node>,
}

/// Everything `main` needs to run and stop a node.
pub struct Running {
    pub node: Arc<Node>,
    pub http_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A write forwarded from a follower, as the leader answers it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forwarded {
    pub result: Result<(Response, u64), (u16, String)>,
}

impl Node {
    pub async fn start(config: Config) -> anyhow::Result<Running> {
        kairos_agent::install_crypto_provider();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("--data-dir: cannot create '{}'", config.data_dir.display()))?;
        let id = node_id(&config.data_dir)?;
        let raft_dir = config.data_dir.join("raft");
        std::fs::create_dir_all(&raft_dir)?;
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let log = LogStore::open(&raft_dir.join("log.redb")).context("opening the Raft log")?;
        let machine = StateMachine::open(&raft_dir.join("state.redb"), config.executions_retained, Some(events_tx))
            .context("opening the state")?;
        let state = machine.reader();

        let rpc_listener = tokio::net::TcpListener::bind(rpc_bind_addr(&config)?)
            .await
            .with_context(|| format!("--rpc-port: cannot listen on port {}", config.rpc_port))?;
        let rpc_addr = advertised(rpc_listener.local_addr()?, &config);
        let http_listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("--http-addr: cannot listen on {}", config.http_addr))?;
        let http_addr = http_listener.local_addr()?;
        let multiplier = u64::from(config.raft_multiplier);
        let raft_config = openraft::Config {
            cluster_name: "kairos".into(),
            // A follower may vote for a new leader once the old leader's lease (election_timeout_max since its
            // last heartbeat) ran out, and starts an election after its own timeout (min..max): with these values a
            // dead leader is replaced within about 0.5-0.7 s (measured by the failover benchmark).
            heartbeat_interval: HEARTBEAT_MS * multiplier,
            election_timeout_min: ELECTION_TIMEOUT_MIN_MS * multiplier,
            election_timeout_max: ELECTION_TIMEOUT_MAX_MS * multiplier,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 1_000,
            purge_batch_size: 256,
            // A server that was cut off asks first whether it could win before it raises its term, so coming back
            // it does not unseat a leader that kept a quorum (issue 15).
            enable_pre_vote: Some(true),
            // CheckQuorum's quiet phase: a leader that has not heard from a quorum for its lease stops sending
            // heartbeats for a while, so followers that still hear it (a leader that can send but not receive)
            // time out and elect a leader that can lead (openraft issue #2080). The shortest value openraft allows.
            quorum_loss_probe_interval: Some((ELECTION_TIMEOUT_MAX_MS + ELECTION_TIMEOUT_MAX_MS) * multiplier),
            ..Default::default()
        }
        .validate()?;
        let rpc = RpcClient::new()?;
        let network = crate::cluster::Network { rpc: rpc.clone() };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, machine).await?;
        let joining = !config.join.is_empty() || !config.retry_join.is_empty();
        if !raft.is_initialized().await? && config.bootstrap_expect <= 1 && (config.bootstrap_expect == 1 || !joining) {
            let members = BTreeMap::from([(id, BasicNode::new(rpc_addr.to_string()))]);
            raft.initialize(members).await.context("bootstrapping the single-server cluster")?;
        }
        let public_http = crate::config::public_http_addr(http_addr, config.advertise_ip());
        let membership = Arc::new(Membership::start(&config, Some(id), rpc_addr, Some(public_http)).await?);

        let outputs = OutputStore::open_with(config.data_dir.join("outputs"), config.output_limits)?;
        let (worker, channels) = Worker::new(&config, outputs.clone());
        let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
        let node = Arc::new_cyclic(|weak| Node {
            weak: weak.clone(),
            config: config.clone(),
            id,
            raft: raft.clone(),
            state,
            outputs,
            worker: worker.clone(),
            rpc_addr,
            membership,
            rpc,
            dispatcher: Dispatcher::default(),
            duties: Duties::default(),
            removed: Mutex::new(HashMap::new()),
            stopping: CancellationToken::new(),
            exit: CancellationToken::new(),
            fatal: std::sync::OnceLock::new(),
        });
        worker.set_fence(local_fence(raft.clone(), Duration::from_millis(100 * multiplier)));

        let mut tasks = Vec::new();
        let rpc_router = crate::cluster::rpc_router(raft.clone())
            .merge(crate::cluster::server_router(node.clone()))
            .merge(crate::cluster::agent_router(crate::cluster::AgentSide {
                worker: worker.clone(),
                outputs: node.outputs.clone(),
                leave: {
                    let node = node.clone();
                    Arc::new(move || {
                        let node = node.clone();
                        Box::pin(async move { node.leave().await })
                    })
                },
            }));
        tasks.push(tokio::spawn(async move {
            if let Err(err) = crate::listener::serve(rpc_listener, rpc_router, crate::listener::RPC_LIMITS).await {
                warn!("rpc listener stopped: {err}");
            }
        }));
        let api = crate::api::router(node.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(err) = crate::listener::serve(http_listener, api, crate::listener::API_LIMITS).await {
                warn!("http listener stopped: {err}");
            }
        }));
        let reporter: Arc<dyn Reporter> = Arc::new(LocalReporter(node.clone()));
        tasks.push(tokio::spawn(crate::applied::events_loop(node.clone(), events_rx, changes_tx)));
        tasks.push(tokio::spawn(crate::leadership::run(node.clone(), changes_rx)));
        tasks.push(tokio::spawn(crate::dispatch::dropped_loop(node.clone(), channels.dropped)));
        tasks.push(tokio::spawn(crate::worker::launch_loop(worker.clone(), channels.timer, node.stopping.clone())));
        tasks.push(tokio::spawn(crate::worker::report_loop(worker.clone(), reporter.clone(), channels.reports)));
        tasks.push(tokio::spawn(crate::worker::renew_loop(worker.clone(), reporter, node.stopping.clone())));
        tasks.push(tokio::spawn(membership_loop(node.clone())));
        tasks.push(tokio::spawn(crate::storage::watch(node.clone())));
        match &config.config_file {
            Some(file) => info!("configuration read from {}", file.display()),
            None => info!("no configuration file found; using flags, environment and defaults"),
        }
        crate::agent_node::await_join(&config, &node.membership).await?;
        info!(node = %config.node_name, id, rpc = %rpc_addr, gossip = %node.membership.gossip_addr(), "server started");
        eprintln!("kairos: RPC listening on {rpc_addr}");
        Ok(Running { node, http_addr, tasks })
    }

    pub(crate) fn self_weak(&self) -> std::sync::Weak<Node> {
        self.weak.clone()
    }

    pub fn metrics(&self) -> openraft::RaftMetrics<kairos_store::TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

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

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    pub async fn stopping(&self) {
        self.stopping.cancelled().await
    }

    /// On a multi-server leader: wait (bounded) until a quorum acknowledged this leader, which openraft requires
    /// before it accepts writes (right after an election it would refuse them).
    pub async fn wait_writable(&self) {
        if self.is_leader() && self.raft.voter_ids().nth(1).is_some() {
            let _ = self.raft.wait(Some(Duration::from_secs(2))).leader_with_quorum_acked(None, "leader lease").await;
        }
    }

    /// Propose a command through Raft and wait for it to be applied here. On a follower the command is forwarded
    /// to the leader. Refusals become API errors; executions the command created are dispatched by the leader.
    pub async fn submit(&self, command: Command) -> Result<Response, ApiError> {
        if self.is_leader() {
            self.wait_writable().await;
            return self.submit_local(command).await.map(|(response, _)| response);
        }
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let metrics = self.metrics();
            if metrics.state == ServerState::Leader {
                return self.submit_local(command).await.map(|(response, _)| response);
            }
            let leader_addr = metrics
                .current_leader
                .filter(|l| *l != self.id)
                .and_then(|l| metrics.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
            if let Some(addr) = leader_addr {
                match self.forward(&addr, &command).await {
                    Ok(response) => return Ok(response),
                    Err(err) if err.status == StatusCode::SERVICE_UNAVAILABLE => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(err);
                        }
                    }
                    Err(err) => return Err(err),
                }
            } else if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no leader is elected yet; retry"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A leader duty's write: refused unless this node still leads in `term` (a duty of an earlier term must
    /// not write in a later one, nor forward to another leader), and bounded by [`LEADER_WRITE_TIMEOUT`] so no
    /// duty waits for good on a write Raft cannot commit.
    pub async fn submit_as_leader(&self, term: u64, command: Command) -> Result<Response, ApiError> {
        let metrics = self.metrics();
        if metrics.state != ServerState::Leader || metrics.current_term != term {
            let message = format!("this node no longer leads in term {term}");
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message));
        }
        match tokio::time::timeout(LEADER_WRITE_TIMEOUT, self.submit_local(command)).await {
            Ok(written) => written.map(|(response, _)| response),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the write was not committed within {LEADER_WRITE_TIMEOUT:?}"),
            )),
        }
    }

    /// Write through this node's Raft (it must lead); answers the response and its log index.
    pub async fn submit_local(&self, command: Command) -> Result<(Response, u64), ApiError> {
        let started = Instant::now();
        let what = tracing::enabled!(tracing::Level::TRACE).then(|| command.to_string());
        let written = match self.raft.client_write(command).await {
            Ok(written) => written,
            Err(err) => {
                if err.forward_to_leader().is_some() {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("this node did not accept the write as leader ({err}); retry"),
                    ));
                }
                if let openraft::error::RaftError::Fatal(fatal) = &err {
                    return Err(ApiError::new(StatusCode::INSUFFICIENT_STORAGE, format!("storage failed: {fatal}")));
                }
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("raft: {err}")));
            }
        };
        let index = written.log_id.index;
        let response = written.data;
        if let Some(refusal) = response.refusal.clone() {
            return Err(refusal.into());
        }
        let committed = started.elapsed();
        crate::dispatch::after_commit(self, &response);
        if let Some(what) = what {
            tracing::trace!("{what}: committed in {committed:?}, dispatched after {:?}", started.elapsed());
        }
        Ok((response, index))
    }

    /// Send a write to the leader at `addr`, then wait until this node has applied it (read-your-writes).
    async fn forward(&self, addr: &str, command: &Command) -> Result<Response, ApiError> {
        let unavailable = |what: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, what);
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
                Err(ApiError::new(status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE), message))
            }
            Err(err @ (RpcError::Status { .. } | RpcError::BadAnswer { .. })) => {
                Err(unavailable(format!("bad answer from the leader at {addr}: {err}")))
            }
            Err(err) => Err(unavailable(format!("cannot reach the leader at {addr}: {err}"))),
        }
    }

    /// Wait until this server applied everything the leader has committed now (a linearizable read barrier).
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let unavailable = |what: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, what);
        let index = if self.is_leader() {
            self.leader_read_index().await?
        } else {
            let metrics = self.metrics();
            let addr = metrics
                .current_leader
                .and_then(|l| metrics.membership_config.membership().get_node(&l).map(|n| n.addr.clone()))
                .ok_or_else(|| unavailable("no leader is elected yet; retry".into()))?;
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
    pub async fn leader_read_index(&self) -> Result<u64, ApiError> {
        self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("leadership could not be confirmed: {e}"))
        })?;
        Ok(self.metrics().last_applied.map_or(0, |l| l.index))
    }

    /// A worker's report: failed attempts get their retry instant here (the proposer decides, so applying stays
    /// deterministic), then it goes through Raft like any write.
    pub async fn submit_report(&self, mut command: Command) -> Result<Response, ApiError> {
        if let Command::Finish { results } = &mut command {
            let now = Timestamp::now();
            for finish in results.iter_mut() {
                if finish.status == ExecutionStatus::Failed && finish.retry_at.is_none() {
                    finish.retry_at =
                        retry_instant(self, &finish.exec.job, kairos_model::attempt_of(&finish.exec.id), now);
                }
            }
        }
        self.submit(command).await
    }

    /// Cancel a pending or running execution wherever it is.
    pub async fn cancel(&self, exec: &Execution) -> Result<(), ApiError> {
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
    pub async fn remove_peer(&self, peer: u64) -> Result<(), ApiError> {
        let metrics = self.metrics();
        if !metrics.membership_config.membership().nodes().any(|(id, _)| *id == peer) {
            return Err(ApiError::not_found(format!("peer-id: {peer} is not a member of the Raft configuration")));
        }
        if metrics.state != ServerState::Leader {
            let addr = metrics
                .current_leader
                .and_then(|l| metrics.membership_config.membership().get_node(&l).map(|n| n.addr.clone()))
                .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no leader is elected yet; retry"))?;
            let forwarded =
                self.rpc.remove_peer(&addr, peer, crate::cluster::client::REMOVE_PEER_FORWARD_TIMEOUT).await;
            return forwarded.map_err(|err| match err {
                RpcError::Rejected { status, message } => {
                    ApiError::new(status.unwrap_or(StatusCode::CONFLICT), message)
                }
                err @ (RpcError::Status { .. } | RpcError::BadAnswer { .. }) => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("bad answer: {err}"))
                }
                err => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("leader unreachable: {err}")),
            });
        }
        if peer == self.id {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "peer-id: this is the leader; run `kairos leave` on it (it hands leadership over first)",
            ));
        }
        if let Some(member) = self.membership.all().await.into_iter().find(|m| m.raft_id == Some(peer)) {
            self.removed.lock().expect("removed lock").insert(peer, member.generation);
        }
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([peer])), false)
            .await
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("raft: {e}")))?;
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

    /// Stop in order: no new fires, let running executions finish (bounded), report them, stop Raft.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        info!("shutting down: waiting up to {:?} for running executions", self.config.shutdown_grace);
        drain_worker(&self.worker, &self.config).await;
        if let Err(err) = self.raft.shutdown().await {
            warn!("raft shutdown: {err}");
        }
    }
}

/// Let running executions finish (bounded by the shutdown grace), cancel the rest, and flush their reports.
pub async fn drain_worker(worker: &Worker, config: &Config) {
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    while worker.running_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.cancel_all("cancelled: the node shut down");
    if worker.running_count() > 0 {
        warn!("shutting down: cancelling {} executions still running", worker.running_count());
        let deadline = tokio::time::Instant::now() + config.kill_grace + Duration::from_secs(2);
        while worker.running_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    worker.flush_reports().await;
}

/// One row of `kairos raft list-peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    pub node: String,
    pub id: u64,
    pub address: String,
    pub state: String,
    pub voter: bool,
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
        "rpc_addr": member.rpc_addr,
        "http_addr": member.http_addr,
        "gossip_addr": member.gossip_addr.to_string(),
    })
}

/// Reports of this server's own worker go straight into Raft (forwarded to the leader when following).
struct LocalReporter(Arc<Node>);

impl Reporter for LocalReporter {
    fn submit(&self, command: Command) -> BoxFuture<'_, Result<Response, String>> {
        Box::pin(async move { self.0.submit_report(command).await.map_err(|e| e.message) })
    }
}

/// The fence a server's worker asks before launching: orders of an older term than this server's Raft knows
/// are dropped, and an order this node gave as leader launches only while its leader lease holds (a leader
/// that was paused or cut off learns it was deposed before it runs anything).
fn local_fence(raft: Raft, fresh: Duration) -> crate::worker::Fence {
    Arc::new(move |term| {
        let raft = raft.clone();
        Box::pin(async move {
            let metrics = raft.metrics().borrow_watched().clone();
            if metrics.current_term > term {
                return Verdict::Drop;
            }
            let leads = metrics.state == ServerState::Leader && metrics.current_term == term;
            if !leads {
                // An order of the current term from another leader: the worker's own term check covers it.
                return Verdict::Launch;
            }
            // A single voter cannot be deposed by anyone; a quorum ack fresher than the shortest election
            // timeout proves no other leader can exist yet. Otherwise ask Raft to confirm the lease.
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
        })
    })
}

/// When the next attempt after a failed `attempt` should start, if the job allows one: the job's backoff,
/// doubled per attempt and capped, with ±20 % jitter so retries of many jobs do not stampede.
pub fn retry_instant(node: &Node, job: &str, attempt: u32, now: Timestamp) -> Option<Timestamp> {
    let record = node.state.job(job).ok().flatten()?;
    if attempt > record.job.retries {
        return None;
    }
    let backoff = record.job.backoff_before_retry(attempt);
    let jitter = rand::random_range(0.8..1.2);
    Some(now + backoff.mul_f64(jitter))
}

/// Membership duties, every few hundred milliseconds on every server: publish that this node's Raft is
/// initialized; bootstrap when `--bootstrap-expect` servers are visible and none is initialized (the lowest
/// Raft id does it, with all of them as voters); on the leader, add servers that appeared (learner, then voter).
async fn membership_loop(node: Arc<Node>) {
    let mut published = false;
    loop {
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(MEMBERSHIP_INTERVAL) => {}
        }
        let metrics = node.metrics();
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
        servers.iter().filter_map(|m| Some((m.raft_id?, BasicNode::new(m.rpc_addr.clone())))).collect();
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
        // A server that came back on another RPC address: tell Raft where it is now.
        if let Some(known_node) = membership.get_node(&id)
            && member.server
            && known_node.addr != member.rpc_addr
        {
            info!("server {} ({id}) moved to {}; updating its Raft address", member.name, member.rpc_addr);
            let nodes = BTreeMap::from([(id, BasicNode::new(member.rpc_addr.clone()))]);
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
            if let Err(err) = node.raft.add_learner(id, BasicNode::new(member.rpc_addr.clone()), true).await {
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

/// The node's Raft id: random on first start, then kept in the data directory.
fn node_id(data_dir: &Path) -> anyhow::Result<u64> {
    let path = data_dir.join("node-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return text.trim().parse().with_context(|| format!("corrupt node id in '{}'", path.display()));
    }
    let id = rand::random::<u64>() >> 1;
    std::fs::write(&path, id.to_string())?;
    Ok(id)
}

pub fn rpc_bind_addr(config: &Config) -> anyhow::Result<SocketAddr> {
    let host = config.bind_addr.rsplit_once(':').map_or(config.bind_addr.as_str(), |(h, _)| h);
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    format!("{host}:{}", config.rpc_port)
        .parse()
        .with_context(|| format!("--bind-addr: '{}' is not host:port", config.bind_addr))
}

/// The address peers use for a listener on the `--bind-addr` host (RPC): the node's advertise IP
/// ([`Config::advertise_ip`]) with the bound port.
pub fn advertised(bound: SocketAddr, config: &Config) -> SocketAddr {
    SocketAddr::new(config.advertise_ip(), bound.port())
}

impl Running {
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        for task in self.tasks {
            task.abort();
        }
    }
}
