//! The client side of every node-to-node call: one [`RpcClient`] (one pooled HTTP client per process), one
//! method per route of [`super::paths`], and one error type, [`RpcError`].
//!
//! The URL of a node is built in exactly one place ([`RpcClient::url`]): node credentials and TLS plug in here.
//! Each call has a deadline named next to its method with the reason for its value; where two callers of the same
//! route need different deadlines, the method takes it and both constants sit next to it.
//!
//! The wire format is the one every version spoke so far (mixed-version clusters keep working): JSON bodies, and
//! an error that the remote node decided travels in the answer's body, each route in its own encoding
//! (`(u16, String)`, `String`, openraft's `RaftError`). The methods decode all of them into [`RpcError::Rejected`],
//! except the Raft calls, whose answer openraft needs as its own type.

use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::StatusCode;
use futures::Stream;
use kairos_store::{Command, ExecRef, Response, TypeConfig};
use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::errors::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::paths;
use super::{Forwarded, Peer};
use crate::worker::{Cancelled, Holding, Order};

type C = TypeConfig;

/// The answer of a remote Raft: its result, or the error its Raft returned (openraft decides what that means).
pub type RaftAnswer<T> = Result<T, RaftError<C>>;

/// A follower forwards a write and waits for the leader's commit: long enough for an election in between.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// An agent's report is a commit on the leader (maybe forwarded by the server it reached). Short, unlike a
/// submit: an agent tries the next server after it, so a server that is cut off or stuck does not hold its reports
/// (the leader waits for a start it was not told of before it places a run again). Reports are idempotent, so a
/// report that did commit and is sent again changes nothing.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// A read barrier asks the leader for an index; a read should not hang longer than a user waits for a page.
pub const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);
/// A follower forwarding `remove-peer` to the leader: a membership change commits like a write.
pub const REMOVE_PEER_FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// An operator at a terminal (`kairos leave`, `kairos raft …`): outlasts any forward the server it asked makes on
/// its behalf ([`REMOVE_PEER_FORWARD_TIMEOUT`]), so the answer it prints is the server's, not its own timeout.
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an order may take to reach a node (its claim waits meanwhile).
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(3);
/// Connecting (TCP, and TLS when on) may take this long; past it the call fails as [`RpcError::Unreachable`],
/// which proves nothing was delivered (a node cut off drops the handshake: this used to look like a timeout of
/// the whole call, after which the request might have been acted on).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new leader waits for each node's answer to its sync (a silent node holds up its takeover).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(1);
/// A clock reading: a slow answer would only be discarded (its error bound is the round trip).
pub const CLOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// A cancel asked within an API request, which waits for every node's answer.
pub const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);
/// A cancel the leader sends on its own (a run that lost its slot); nobody waits for it, so it gets as long as an
/// order.
pub const CANCEL_STOP_TIMEOUT: Duration = ORDER_TIMEOUT;
/// The full output shown in an execution's record: the record carries the output's tail to fall back on.
pub const OUTPUT_FOR_RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// The full output as the answer of `/output`: it is the whole answer, so it gets longer.
pub const OUTPUT_TIMEOUT: Duration = Duration::from_secs(10);
/// The message of an error status is the remote's answer body, kept to this many bytes (it goes into logs and
/// API errors).
const STATUS_MESSAGE_BYTES_MAX: usize = 1024;

/// Why a node-to-node call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No connection could be made. `refused`: the connection was refused, so no process listens at the address
    /// any more (its node is gone); otherwise (no route, a name that does not resolve) nothing is known.
    #[error("{source}")]
    Unreachable { refused: bool, source: reqwest::Error },
    /// No complete answer before the deadline: the remote may be paused, cut off or slow, and may have acted on
    /// the request.
    #[error("{source}")]
    Timeout { source: reqwest::Error },
    /// The connection failed after the request went out (reset, closed): the remote may have acted on it.
    #[error("{source}")]
    Broken { source: reqwest::Error },
    /// The remote answered with an HTTP error status (an agent asked a server's route, a body it could not read);
    /// `message` is its answer's body.
    #[error("HTTP {status}: {message}")]
    Status { status: StatusCode, message: String },
    /// The remote node handled the call and refused it with this error (`status` where the route's answer
    /// carries one).
    #[error("{message}")]
    Rejected { status: Option<StatusCode>, message: String },
    /// The answer could not be read or decoded.
    #[error("{source}")]
    BadAnswer { source: reqwest::Error },
}

impl RpcError {
    /// Sort out a failed send or read.
    fn from_reqwest(source: reqwest::Error) -> RpcError {
        // Connect first: a refused connection is never a timeout, and a connect-phase failure is not "broken".
        if source.is_connect() {
            RpcError::Unreachable { refused: refused(&source), source }
        } else if source.is_timeout() {
            RpcError::Timeout { source }
        } else if source.is_decode() || source.is_body() {
            RpcError::BadAnswer { source }
        } else {
            RpcError::Broken { source }
        }
    }
}

/// Whether a request failed because the connection was refused: nothing listens there, so the node's process is
/// gone (a paused or partitioned node times out instead, and may still hold what it was sent).
fn refused(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = current.source();
    }
    false
}

/// The node-to-node client: no proxy, connections kept alive (orders and reports reuse them). Cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    http: reqwest::Client,
    /// `http`, or `https` when the cluster runs TLS.
    scheme: &'static str,
}

impl RpcClient {
    /// A client of a cluster without TLS.
    pub fn new() -> anyhow::Result<RpcClient> {
        RpcClient::with_tls(None)
    }

    /// A client of a cluster with TLS (see [`crate::tls`]): `https://`, the cluster's CA as the only root, and this
    /// node's certificate presented to listeners that ask for one (mutual TLS).
    pub fn with_tls(tls: Option<&crate::tls::Tls>) -> anyhow::Result<RpcClient> {
        RpcClient::with_credentials(tls, None)
    }

    /// A client that also presents the cluster key's node credential on every request (see
    /// [`crate::gossip_key::GossipKey::node_token`]).
    pub fn with_credentials(
        tls: Option<&crate::tls::Tls>,
        key: Option<&crate::gossip_key::GossipKey>,
    ) -> anyhow::Result<RpcClient> {
        kairos_agent::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(crate::listener::RPC_POOL_IDLE)
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(key) = key {
            let mut headers = reqwest::header::HeaderMap::new();
            let value = reqwest::header::HeaderValue::from_str(&key.node_token()).context("node credential")?;
            headers.insert(crate::gossip_key::NODE_AUTH_HEADER, value);
            builder = builder.default_headers(headers);
        }
        if let Some(tls) = tls {
            builder = builder.tls_backend_preconfigured(tls.client.clone());
        }
        let http = builder.build().context("building the RPC client")?;
        Ok(RpcClient { http, scheme: if tls.is_some() { "https" } else { "http" } })
    }

    /// The one place a node's URL is built.
    fn url(&self, addr: &str, path: &str) -> String {
        debug_assert!(path.starts_with('/'), "route paths are absolute: {path}");
        format!("{}://{addr}{path}", self.scheme)
    }

    /// Send, and turn a failure to send or an error status into an [`RpcError`].
    async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, RpcError> {
        let response = request.send().await.map_err(RpcError::from_reqwest)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let mut message = response.text().await.unwrap_or_default();
        if message.len() > STATUS_MESSAGE_BYTES_MAX {
            let end = (0..=STATUS_MESSAGE_BYTES_MAX).rev().find(|i| message.is_char_boundary(*i)).unwrap_or(0);
            message.truncate(end);
        }
        Err(RpcError::Status { status, message })
    }

    async fn post<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let response = Self::send(self.http.post(self.url(addr, path)).json(body).timeout(timeout)).await?;
        response.json().await.map_err(RpcError::from_reqwest)
    }

    async fn get<Resp: DeserializeOwned>(&self, addr: &str, path: &str, timeout: Duration) -> Result<Resp, RpcError> {
        let response = Self::send(self.http.get(self.url(addr, path)).timeout(timeout)).await?;
        response.json().await.map_err(RpcError::from_reqwest)
    }

    // --- Raft (the deadline is openraft's, per call) ---

    pub async fn raft_append(
        &self,
        addr: &str,
        request: &AppendEntriesRequest<C>,
        timeout: Duration,
    ) -> Result<RaftAnswer<AppendEntriesResponse<C>>, RpcError> {
        self.post(addr, paths::RAFT_APPEND, request, timeout).await
    }

    pub async fn raft_vote(
        &self,
        addr: &str,
        request: &VoteRequest<C>,
        timeout: Duration,
    ) -> Result<RaftAnswer<VoteResponse<C>>, RpcError> {
        self.post(addr, paths::RAFT_VOTE, request, timeout).await
    }

    pub async fn raft_pre_vote(
        &self,
        addr: &str,
        request: &VoteRequest<C>,
        timeout: Duration,
    ) -> Result<RaftAnswer<VoteResponse<C>>, RpcError> {
        self.post(addr, paths::RAFT_PRE_VOTE, request, timeout).await
    }

    /// A whole snapshot in one request: `(vote, meta, data)`.
    pub async fn raft_snapshot(
        &self,
        addr: &str,
        vote: &VoteOf<C>,
        meta: &SnapshotMetaOf<C>,
        data: &[u8],
        timeout: Duration,
    ) -> Result<RaftAnswer<SnapshotResponse<C>>, RpcError> {
        self.post(addr, paths::RAFT_SNAPSHOT, &(vote, meta, data), timeout).await
    }

    pub async fn raft_transfer_leader(
        &self,
        addr: &str,
        request: &TransferLeaderRequest<C>,
        timeout: Duration,
    ) -> Result<RaftAnswer<TransferLeaderResponse<C>>, RpcError> {
        self.post(addr, paths::RAFT_TRANSFER_LEADER, request, timeout).await
    }

    // --- Servers ---

    /// Forward a write to the leader: its response and the log index it was written at.
    pub async fn submit(&self, addr: &str, command: &Command) -> Result<(Response, u64), RpcError> {
        let forwarded: Forwarded = self.post(addr, paths::SUBMIT, command, SUBMIT_TIMEOUT).await?;
        forwarded.result.map_err(rejected_with_status)
    }

    /// Report finishes or renew leases through any server. The route's error carries no status.
    pub async fn report(&self, addr: &str, command: &Command) -> Result<Response, RpcError> {
        let result: Result<Response, String> = self.post(addr, paths::REPORT, command, REPORT_TIMEOUT).await?;
        result.map_err(|message| RpcError::Rejected { status: None, message })
    }

    /// A server's time and its own offset from the leader.
    pub async fn clock(&self, addr: &str) -> Result<crate::clock::ClockReading, RpcError> {
        self.get(addr, paths::CLOCK, CLOCK_TIMEOUT).await
    }

    /// The index every linearizable read must see, from the leader.
    pub async fn read_index(&self, addr: &str) -> Result<u64, RpcError> {
        let response =
            Self::send(self.http.post(self.url(addr, paths::READ_INDEX)).timeout(READ_INDEX_TIMEOUT)).await?;
        let result: Result<u64, (u16, String)> = response.json().await.map_err(RpcError::from_reqwest)?;
        result.map_err(rejected_with_status)
    }

    /// The Raft configuration as the server at `addr` sees it.
    pub async fn peers(&self, addr: &str) -> Result<Vec<Peer>, RpcError> {
        self.get(addr, paths::PEERS, OPERATOR_TIMEOUT).await
    }

    /// Remove a server from the Raft configuration; `timeout`: [`REMOVE_PEER_FORWARD_TIMEOUT`] or
    /// [`OPERATOR_TIMEOUT`].
    pub async fn remove_peer(&self, addr: &str, peer: u64, timeout: Duration) -> Result<(), RpcError> {
        let result: Result<(), (u16, String)> = self.post(addr, paths::REMOVE_PEER, &peer, timeout).await?;
        result.map_err(rejected_with_status)
    }

    /// Ask the server at `addr` for the permit to launch runs (see [`crate::permit`]).
    pub async fn permit(
        &self,
        addr: &str,
        request: &crate::permit::PermitRequest,
        timeout: Duration,
    ) -> Result<crate::permit::PermitAnswer, RpcError> {
        self.post(addr, paths::PERMIT, request, timeout).await
    }

    // --- Every node ---

    /// Orders for one node: one answer per order (false: refused, its term is older than one the node saw).
    pub async fn run(&self, addr: &str, orders: &[Order]) -> Result<Vec<bool>, RpcError> {
        /// An order stamped with this node's clock as it leaves ([`Order::sent_at`]).
        #[derive(Serialize)]
        struct Stamped<'a> {
            #[serde(flatten)]
            order: &'a Order,
            sent_at: jiff::Timestamp,
        }
        let sent_at = jiff::Timestamp::now();
        let stamped: Vec<Stamped> = orders.iter().map(|order| Stamped { order, sent_at }).collect();
        self.post(addr, paths::RUN, &stamped, ORDER_TIMEOUT).await
    }

    /// Cancel a run on the node at `addr`; `timeout`: [`CANCEL_TIMEOUT`] or [`CANCEL_STOP_TIMEOUT`].
    pub async fn cancel(
        &self,
        addr: &str,
        exec: &ExecRef,
        reason: &str,
        timeout: Duration,
    ) -> Result<Cancelled, RpcError> {
        self.post(addr, paths::CANCEL, &(exec, reason), timeout).await
    }

    /// A new leader's sync at `term`: what the node runs, holds or has not reported yet.
    pub async fn sync(&self, addr: &str, term: u64) -> Result<Holding, RpcError> {
        self.post(addr, paths::SYNC, &term, SYNC_TIMEOUT).await
    }

    /// Whether a node still answers at `addr` (any answer counts), asked with a sync at term 0, which raises no
    /// term. `kairos leave` waits with it until the node is gone.
    pub async fn answers(&self, addr: &str) -> bool {
        let request = self.http.post(self.url(addr, paths::SYNC)).json(&0u64).timeout(OPERATOR_TIMEOUT);
        request.send().await.is_ok()
    }

    /// The full output of a run kept on the node at `addr`; `timeout`: [`OUTPUT_FOR_RECORD_TIMEOUT`] or
    /// [`OUTPUT_TIMEOUT`]. A node that does not have it answers 404 ([`RpcError::Status`]).
    pub async fn output(&self, addr: &str, exec: &ExecRef, timeout: Duration) -> Result<String, RpcError> {
        let request = self.http.get(self.url(addr, &paths::output(&exec.job, &exec.id))).query(&[("follow", false)]);
        let response = Self::send(request.timeout(timeout)).await?;
        response.text().await.map_err(RpcError::from_reqwest)
    }

    /// The output of a run as it grows, until the run ends. No deadline: a run lasts as long as it lasts, and the
    /// stream ends with it (or when the caller drops it).
    pub async fn follow_output(
        &self,
        addr: &str,
        exec: &ExecRef,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static, RpcError> {
        let request = self.http.get(self.url(addr, &paths::output(&exec.job, &exec.id))).query(&[("follow", true)]);
        Ok(Self::send(request).await?.bytes_stream())
    }

    /// Ask the node at `addr` to leave the cluster (it answers at once and leaves in the background).
    pub async fn leave(&self, addr: &str) -> Result<(), RpcError> {
        Self::send(self.http.post(self.url(addr, paths::LEAVE)).timeout(OPERATOR_TIMEOUT)).await.map(drop)
    }
}

/// A refusal as the routes that carry a status encode it (the remote sends `StatusCode::as_u16`, so the code is
/// always valid; a mangled one reads as 503, as callers have always treated it).
fn rejected_with_status((status, message): (u16, String)) -> RpcError {
    RpcError::Rejected {
        status: Some(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Path, Query};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use futures::StreamExt;
    use std::collections::HashMap;

    /// Serve `router` on a fresh local port as the RPC listener does; its address.
    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(crate::listener::serve(listener, router, crate::listener::RPC_LIMITS, None));
        addr
    }

    fn a_command() -> Command {
        Command::SetPaused { paused: true }
    }

    #[tokio::test]
    async fn a_refusal_by_the_remote_node_carries_its_status_and_message() {
        let router = Router::new()
            .route(paths::SUBMIT, post(|| async { Json(Forwarded { result: Err((409, "job 'x' changed".into())) }) }))
            .route(paths::REPORT, post(|| async { Json(Err::<Response, String>("no leader; retry".into())) }));
        let addr = serve(router).await;
        let rpc = RpcClient::new().unwrap();

        let err = rpc.submit(&addr, &a_command()).await.unwrap_err();
        assert!(
            matches!(&err, RpcError::Rejected { status: Some(StatusCode::CONFLICT), message } if message == "job 'x' changed"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "job 'x' changed", "the message reads as the remote wrote it");

        let err = rpc.report(&addr, &a_command()).await.unwrap_err();
        assert!(
            matches!(&err, RpcError::Rejected { status: None, message } if message == "no leader; retry"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_error_status_carries_the_status_and_the_answer_body() {
        let router =
            Router::new().route(paths::LEAVE, post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "draining") }));
        let addr = serve(router).await;
        let rpc = RpcClient::new().unwrap();

        let err = rpc.leave(&addr).await.unwrap_err();
        assert!(
            matches!(&err, RpcError::Status { status: StatusCode::SERVICE_UNAVAILABLE, message } if message == "draining"),
            "{err:?}"
        );
        // A route the node does not serve (an agent asked a server's route).
        let err = rpc.peers(&addr).await.unwrap_err();
        assert!(matches!(err, RpcError::Status { status: StatusCode::NOT_FOUND, .. }), "{err:?}");
    }

    #[tokio::test]
    async fn an_undecodable_answer_is_a_bad_answer() {
        let router = Router::new().route(paths::READ_INDEX, post(|| async { "not json" }));
        let addr = serve(router).await;
        let err = RpcClient::new().unwrap().read_index(&addr).await.unwrap_err();
        assert!(matches!(err, RpcError::BadAnswer { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable_and_refused() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let err = RpcClient::new().unwrap().sync(&closed, 7).await.unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { refused: true, .. }), "{err:?}");
        assert!(!RpcClient::new().unwrap().answers(&closed).await);
    }

    #[tokio::test]
    async fn a_node_that_never_answers_times_out_and_is_not_refused() {
        // The kernel completes the handshake, but nobody reads the request (like a paused process).
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let started = std::time::Instant::now();
        let err = RpcClient::new().unwrap().sync(&addr, 7).await.unwrap_err();
        assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() >= SYNC_TIMEOUT, "gave up after {:?}", started.elapsed());
        drop(silent);
    }

    #[tokio::test]
    async fn typed_calls_reach_the_route_of_the_shared_path() {
        let output = |Path((job, id)): Path<(String, String)>, Query(q): Query<HashMap<String, String>>| async move {
            format!("{job}/{id} follow={}", q.get("follow").map_or("none", String::as_str))
        };
        let router = Router::new()
            .route(paths::OUTPUT, get(output))
            .route(
                paths::SYNC,
                post(|Json(term): Json<u64>| async move {
                    Json(Holding {
                        running: vec![ExecRef { job: "t".into(), id: term.to_string() }],
                        ..Default::default()
                    })
                }),
            )
            .route(paths::RUN, post(|Json(orders): Json<Vec<Order>>| async move { Json(vec![true; orders.len()]) }))
            .route(
                paths::CANCEL,
                post(|Json((_, reason)): Json<(ExecRef, String)>| async move {
                    Json(if reason == "stop" { Cancelled::Running } else { Cancelled::NotHere })
                }),
            );
        let addr = serve(router).await;
        let rpc = RpcClient::new().unwrap();
        let exec = ExecRef { job: "backup".into(), id: "1700000000000-1".into() };

        let text = rpc.output(&addr, &exec, OUTPUT_TIMEOUT).await.unwrap();
        assert_eq!(text, "backup/1700000000000-1 follow=false");
        let streamed: Vec<_> = rpc.follow_output(&addr, &exec).await.unwrap().collect().await;
        let streamed: Vec<u8> = streamed.into_iter().flat_map(|chunk| chunk.unwrap().to_vec()).collect();
        assert_eq!(String::from_utf8(streamed).unwrap(), "backup/1700000000000-1 follow=true");
        assert_eq!(rpc.sync(&addr, 9).await.unwrap().running, vec![ExecRef { job: "t".into(), id: "9".into() }]);
        assert_eq!(rpc.run(&addr, &[]).await.unwrap(), Vec::<bool>::new());
        assert_eq!(rpc.cancel(&addr, &exec, "stop", CANCEL_TIMEOUT).await.unwrap(), Cancelled::Running);
        assert!(rpc.answers(&addr).await);
    }
}
