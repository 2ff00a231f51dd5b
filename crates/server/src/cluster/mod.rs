//! Node-to-node traffic over HTTP/JSON on the RPC listener, apart from the public API:
//! - Raft: the client side ([`Network`], openraft's `RaftNetworkV2`) and the server side ([`rpc_router`]);
//! - servers (their router is `node::routes`, which needs the node): writes forwarded by followers and reports
//!   of agents (`/cluster/submit`,
//!   `/cluster/report`), and the Raft configuration for `kairos raft …`;
//! - every node ([`agent_router`]): orders from the leader (`/agent/run`, fenced by term), cancel, the new
//!   leader's sync, the local output of a run, and `kairos leave`.
//!
//! The routes' paths are in [`paths`]; the calling side of every route is [`client::RpcClient`]. Every openraft
//! request and response type is serde-able, so each RPC is one POST of JSON. A connection error is reported to
//! openraft as `Unreachable` (openraft backs off), anything else as a network error (retried sooner).

pub mod client;
pub mod clock_sync;
pub mod paths;

use std::future::Future;
use std::io::Cursor;
use std::time::Duration;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use kairos_agent::OutputStore;
use kairos_store::ExecRef;
use kairos_store::{Raft, TypeConfig};
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};

pub use client::{RpcClient, RpcError};

/// One row of `kairos raft list-peers` (`GET /cluster/peers`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub node: String,
    pub id: u64,
    pub address: String,
    pub state: String,
    pub voter: bool,
}

/// A write forwarded from a follower, as the leader answers it (`POST /cluster/submit`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Forwarded {
    pub result: Result<(Response, u64), (u16, String)>,
}

use crate::worker::{Cancelled, Holding, Order, Worker};
use kairos_store::Response;

type C = TypeConfig;

/// Makes one [`Connection`] per peer; all share one RPC client (connection pooling).
#[derive(Clone)]
pub struct Network {
    pub rpc: RpcClient,
}

pub struct Connection {
    rpc: RpcClient,
    addr: String,
}

impl RaftNetworkFactory<C> for Network {
    type Network = Connection;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> Connection {
        Connection { rpc: self.rpc.clone(), addr: node.addr.clone() }
    }
}

/// A failed call as openraft wants it: no connection is `Unreachable` (openraft backs off), anything else a
/// network error (retried sooner).
fn raft_error(err: RpcError) -> RPCError<C> {
    match err {
        RpcError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&err)),
        RpcError::Status { status, .. } => RPCError::Network(NetworkError::from_string(format!("HTTP {status}"))),
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

/// The remote Raft's own error: openraft backs off as from an unreachable node.
fn remote_raft<T>(answer: Result<client::RaftAnswer<T>, RpcError>) -> Result<T, RPCError<C>> {
    answer.map_err(raft_error)?.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
}

impl RaftNetworkV2<C> for Connection {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        // A follower that lags is sent a prefix of at most APPEND_BYTES_MAX; openraft goes on from its end.
        let (sent, bytes) = append_prefix(&rpc.entries, APPEND_BYTES_MAX);
        let timeout = transfer_deadline(option.soft_ttl(), bytes);
        if sent == rpc.entries.len() {
            return remote_raft(self.rpc.raft_append(&self.addr, &rpc, timeout).await);
        }
        rpc.entries.truncate(sent);
        let last = rpc.entries.last().map(|entry| entry.log_id);
        match remote_raft(self.rpc.raft_append(&self.addr, &rpc, timeout).await)? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => Ok(other),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        remote_raft(self.rpc.raft_vote(&self.addr, &rpc, option.soft_ttl()).await)
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        remote_raft(self.rpc.raft_pre_vote(&self.addr, &rpc, option.soft_ttl()).await)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Cursor<Vec<u8>>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let data = snapshot.snapshot.into_inner();
        let timeout = transfer_deadline(option.soft_ttl(), data.len());
        let sent = self.rpc.raft_snapshot(&self.addr, &vote, &snapshot.meta, &data, timeout);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            answer = sent => Ok(remote_raft(answer)?),
        }
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        remote_raft(self.rpc.raft_transfer_leader(&self.addr, &request, option.soft_ttl()).await)
    }
}

/// How many bytes of log entries one append carries at most (one entry more if the first alone is larger): a
/// follower far behind catches up in steps of this size instead of one request of everything it misses. At 8 MiB
/// a follower starved of CPU took longer to read and decode one step than its deadline; each retry was another
/// 8 MiB to decode, and it never caught up (issue 19). A step of 1 MiB is decoded within its deadline even then.
pub const APPEND_BYTES_MAX: usize = 1024 * 1024;

/// How many of `entries`, from the first, fit in `budget` bytes of JSON (at least one), and their bytes.
fn append_prefix<T: serde::Serialize>(entries: &[T], budget: usize) -> (usize, usize) {
    let mut bytes = 0;
    for (i, entry) in entries.iter().enumerate() {
        let size = serde_json::to_vec(entry).map_or(0, |json| json.len());
        if i > 0 && bytes + size > budget {
            return (i, bytes);
        }
        bytes += size;
    }
    (entries.len(), bytes)
}

/// The least time an append that carries entries, or a snapshot, is given.
pub const TRANSFER_DEADLINE_MIN: Duration = Duration::from_secs(2);
/// And on top of it, per MiB it carries: a busy follower must be able to read, decode and fsync it.
pub const TRANSFER_DEADLINE_PER_MIB: Duration = Duration::from_secs(1);

/// How long a Raft transfer of `bytes` may take. openraft gives every append its heartbeat interval (50 ms; a
/// full snapshot 200 ms) whatever it carries. On a machine short of CPU a follower that fell behind was sent
/// appends of megabytes it could not read, decode and fsync within that: each timed out, the leader sent the same
/// again, nothing ever committed, and the cluster stayed wedged after the load was gone (issue 19, the second
/// cause after the 2 MiB body limit). Heartbeats (no entries) keep openraft's deadline, so a dead follower is
/// still noticed as fast; a transfer that carries data gets time for its size. Replication to one follower is
/// one stream, so a long deadline delays only that follower's retries, never the others or the heartbeats.
fn transfer_deadline(openraft_ttl: Duration, bytes: usize) -> Duration {
    if bytes == 0 {
        return openraft_ttl;
    }
    let mib = bytes as f64 / (1024.0 * 1024.0);
    openraft_ttl.max(TRANSFER_DEADLINE_MIN + TRANSFER_DEADLINE_PER_MIB.mul_f64(mib))
}

/// The receiving side of the Raft RPCs.
pub fn rpc_router(raft: Raft) -> Router {
    Router::new()
        .route(paths::RAFT_APPEND, post(append))
        .route(paths::RAFT_VOTE, post(vote))
        .route(paths::RAFT_PRE_VOTE, post(pre_vote))
        .route(paths::RAFT_SNAPSHOT, post(snapshot))
        .route(paths::RAFT_TRANSFER_LEADER, post(transfer_leader))
        .with_state(raft)
}

async fn append(
    State(raft): State<Raft>,
    PlainJson(request): PlainJson<AppendEntriesRequest<C>>,
) -> Json<Result<AppendEntriesResponse<C>, RaftError<C>>> {
    Json(raft.append_entries(request).await)
}

/// A JSON body decoded straight from its bytes. axum's `Json` decodes through `serde_path_to_error` (to name the
/// field of an error), which made a lagging follower spend most of its time on the appends it had to catch up
/// with (issue 19). Bad JSON is still answered 422, as `Json` answers it.
pub struct PlainJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for PlainJson<T> {
    type Rejection = HttpResponse;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state).await.map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&bytes)
            .map(PlainJson)
            .map_err(|err| (StatusCode::UNPROCESSABLE_ENTITY, format!("bad JSON body: {err}")).into_response())
    }
}

async fn vote(
    State(raft): State<Raft>,
    Json(request): Json<VoteRequest<C>>,
) -> Json<Result<VoteResponse<C>, RaftError<C>>> {
    Json(raft.vote(request).await)
}

/// Pre-Vote: would this server vote for the candidate? Nothing is persisted and no term changes, so a server
/// that cannot reach a quorum (cut off, then healed) learns it would lose without disturbing the leader.
async fn pre_vote(
    State(raft): State<Raft>,
    Json(request): Json<VoteRequest<C>>,
) -> Json<Result<VoteResponse<C>, RaftError<C>>> {
    Json(raft.pre_vote(request).await)
}

async fn snapshot(
    State(raft): State<Raft>,
    Json((vote, meta, data)): Json<(VoteOf<C>, SnapshotMetaOf<C>, Vec<u8>)>,
) -> Json<Result<SnapshotResponse<C>, RaftError<C>>> {
    let snapshot = SnapshotOf::<C, _> { meta, snapshot: Cursor::new(data) };
    Json(raft.install_full_snapshot(vote, snapshot).await.map_err(RaftError::Fatal))
}

async fn transfer_leader(
    State(raft): State<Raft>,
    Json(request): Json<TransferLeaderRequest<C>>,
) -> Json<Result<TransferLeaderResponse<C>, RaftError<C>>> {
    Json(raft.handle_transfer_leader(request).await.map_err(RaftError::Fatal))
}

/// What the agent routes need from the node they run on.
#[derive(Clone)]
pub struct AgentSide {
    pub worker: Worker,
    pub outputs: OutputStore,
    /// Leave the cluster gracefully (then the process exits).
    pub leave: Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
}

/// The largest body a node-to-node request may carry. axum's default for a `Json` body is 2 MiB, far below what
/// one Raft append holds when a follower lags under load (up to openraft's `max_payload_entries`, 300, entries,
/// each a command of up to `BATCH_ITEMS_MAX` items): the follower answered 413 to every such append without a log
/// line, the leader sent the same entries again, and replication to it stopped for good (issue 19). Reports and
/// forwarded writes (a batch of finishes with their output tails) and orders grow the same way, so every route of
/// the RPC listener takes this bound. Appends are now cut at [`APPEND_BYTES_MAX`], but one entry may be a command
/// of `BATCH_ITEMS_MAX` finishes with 4 KiB output tails (about 128 MiB as JSON at worst); the bound only keeps a
/// runaway request from exhausting memory.
pub const RPC_BODY_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The RPC listener's router with the body bound every node-to-node request needs ([`RPC_BODY_BYTES_MAX`]).
pub fn with_body_limit(router: Router) -> Router {
    router.layer(axum::extract::DefaultBodyLimit::max(RPC_BODY_BYTES_MAX))
}

/// The key whose node credential the RPC listener requires: the cluster key, unless mutual TLS already
/// authenticates every client by its certificate.
pub fn node_credential(config: &crate::config::Config) -> Option<crate::gossip_key::GossipKey> {
    let mutual_tls = config.tls.as_ref().is_some_and(|t| t.client_cert_auth);
    if mutual_tls { None } else { config.encrypt.clone() }
}

/// With a cluster key, every node-to-node route requires the node credential it derives (401 otherwise), except
/// `GET /metrics`, which is read-only and scraped by tools that do not have it.
pub fn require_node_credential(router: Router, key: Option<crate::gossip_key::GossipKey>) -> Router {
    let Some(key) = key else { return router };
    router.layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
        let key = key.clone();
        async move {
            let open = request.method() == axum::http::Method::GET && request.uri().path() == paths::METRICS;
            let presented = request
                .headers()
                .get(crate::gossip_key::NODE_AUTH_HEADER)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|token| key.verify_node_token(token));
            if open || presented {
                next.run(request).await
            } else {
                use axum::response::IntoResponse;
                (axum::http::StatusCode::UNAUTHORIZED, "node-to-node route: no valid node credential (--encrypt key)")
                    .into_response()
            }
        }
    }))
}

/// `GET /metrics` on an agent-only node's RPC listener (`--enable-prometheus`; servers serve it on the HTTP API).
pub fn metrics_router() -> Router {
    Router::new().route(paths::METRICS, get(|| async { crate::metrics::metrics().render() }))
}

/// Routes every node answers (servers run jobs too).
pub fn agent_router(side: AgentSide) -> Router {
    Router::new()
        .route(paths::RUN, post(run))
        .route(paths::CANCEL, post(cancel))
        .route(paths::SYNC, post(sync))
        .route(paths::OUTPUT, get(output))
        .route(paths::LEAVE, post(leave))
        .with_state(side)
}

/// Orders from the leader: one answer per order (false: refused, its term is older than one seen).
async fn run(State(side): State<AgentSide>, Json(orders): Json<Vec<Order>>) -> Json<Vec<bool>> {
    let now = jiff::Timestamp::now();
    let accepted = orders
        .into_iter()
        .map(|order| {
            let (order, shift) = order.on_local_clock(now);
            crate::worker::note_clock_shift(shift);
            side.worker.accept(order)
        })
        .collect();
    Json(accepted)
}

async fn cancel(State(side): State<AgentSide>, Json((exec, reason)): Json<(ExecRef, String)>) -> Json<Cancelled> {
    Json(side.worker.cancel(&exec, &reason))
}

async fn sync(State(side): State<AgentSide>, Json(term): Json<u64>) -> Json<Holding> {
    Json(side.worker.sync(term))
}

/// The full output of a run on this node (running or finished); `?follow=true` streams it until it finishes.
async fn output(
    State(side): State<AgentSide>,
    Path((job, id)): Path<(String, String)>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> HttpResponse {
    let follow = params.get("follow").is_some_and(|v| v == "true" || v == "1");
    if follow {
        let body = Body::from_stream(follow_output(side.worker, side.outputs, job, id));
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    }
    match side.outputs.read(&job, &id) {
        Ok(Some(text)) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// The output of a run as it grows: what exists now, then every new part, until the run is no longer running.
pub fn follow_output(
    worker: Worker,
    outputs: OutputStore,
    job: String,
    id: String,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> + Send {
    let exec = ExecRef { job, id };
    futures::stream::unfold((worker, outputs, exec, 0usize, false), |(worker, outputs, exec, sent, done)| async move {
        if done {
            return None;
        }
        loop {
            let running = worker.is_running(&exec);
            // A run that just ended may have had its in-memory output dropped already: its tail is remembered.
            let text = outputs
                .read(&exec.job, &exec.id)
                .ok()
                .flatten()
                .or_else(|| worker.recent_output(&exec))
                .unwrap_or_default();
            if text.len() > sent {
                let start = (sent..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
                let chunk = text[start..].to_string();
                return Some((Ok(chunk), (worker, outputs, exec, text.len(), !running)));
            }
            if !running {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

async fn leave(State(side): State<AgentSide>) -> StatusCode {
    let leave = side.leave.clone();
    tokio::spawn(async move { leave().await });
    StatusCode::ACCEPTED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_carries_a_prefix_of_entries_within_its_byte_budget_and_at_least_one() {
        let entry = |kb: usize| "x".repeat(kb * 1024);
        let entries: Vec<String> = (0..10).map(|_| entry(100)).collect();
        let json = |kb: usize| kb * 1024 + 2; // the quotes
        assert_eq!(append_prefix(&entries, 350 * 1024), (3, 3 * json(100)), "three 100 KiB entries fit in 350 KiB");
        assert_eq!(append_prefix(&entries, 10 * 1024 * 1024), (10, 10 * json(100)), "all fit");
        assert_eq!(append_prefix(&[entry(500), entry(1)], 100 * 1024), (1, json(500)), "one too large goes alone");
        assert_eq!(append_prefix::<String>(&[], 1), (0, 0));
    }

    #[test]
    fn a_transfer_that_carries_data_gets_time_for_its_size_and_a_heartbeat_keeps_openrafts_deadline() {
        let heartbeat = Duration::from_millis(37);
        assert_eq!(transfer_deadline(heartbeat, 0), heartbeat, "a heartbeat: openraft's deadline");
        let one_byte = transfer_deadline(heartbeat, 1);
        assert!(one_byte >= TRANSFER_DEADLINE_MIN && one_byte < TRANSFER_DEADLINE_MIN + heartbeat, "{one_byte:?}");
        let eight_mib = transfer_deadline(heartbeat, 8 * 1024 * 1024);
        assert_eq!(eight_mib, TRANSFER_DEADLINE_MIN + 8 * TRANSFER_DEADLINE_PER_MIB, "{eight_mib:?}");
        let long = Duration::from_secs(60);
        assert_eq!(transfer_deadline(long, 1024), long, "never shorter than openraft's own");
    }
}
