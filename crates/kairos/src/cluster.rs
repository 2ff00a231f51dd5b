//! Node-to-node Raft traffic over HTTP/JSON: the client side ([`Network`], openraft's `RaftNetworkV2`) and the
//! server side ([`rpc_router`], mounted on the RPC listener, apart from the public API).
//!
//! Every openraft request and response type is serde-able, so each RPC is one POST of JSON. A connection error
//! is reported as `Unreachable` (openraft backs off), anything else as a network error (retried sooner).

use std::future::Future;
use std::io::Cursor;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use kairos_store::{Raft, TypeConfig};
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::Serialize;
use serde::de::DeserializeOwned;

type C = TypeConfig;

/// Makes one [`Connection`] per peer; all share one HTTP client (connection pooling).
#[derive(Clone)]
pub struct Network {
    pub http: reqwest::Client,
}

pub struct Connection {
    http: reqwest::Client,
    addr: String,
}

impl RaftNetworkFactory<C> for Network {
    type Network = Connection;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> Connection {
        Connection { http: self.http.clone(), addr: node.addr.clone() }
    }
}

impl Connection {
    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<C>> {
        let url = format!("http://{}/raft/{path}", self.addr);
        let response = self.http.post(&url).json(request).timeout(option.soft_ttl()).send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        if !response.status().is_success() {
            return Err(RPCError::Network(NetworkError::from_string(format!("HTTP {}", response.status()))));
        }
        let result: Result<Resp, RaftError<C>> =
            response.json().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

impl RaftNetworkV2<C> for Connection {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.post("append", &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.post("vote", &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Cursor<Vec<u8>>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let request = (vote, snapshot.meta, snapshot.snapshot.into_inner());
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = self.post::<_, SnapshotResponse<C>>("snapshot", &request, &option) => Ok(result?),
        }
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.post("transfer-leader", &request, &option).await
    }
}

/// The receiving side of the Raft RPCs.
pub fn rpc_router(raft: Raft) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/transfer-leader", post(transfer_leader))
        .with_state(raft)
}

async fn append(
    State(raft): State<Raft>,
    Json(request): Json<AppendEntriesRequest<C>>,
) -> Json<Result<AppendEntriesResponse<C>, RaftError<C>>> {
    Json(raft.append_entries(request).await)
}

async fn vote(
    State(raft): State<Raft>,
    Json(request): Json<VoteRequest<C>>,
) -> Json<Result<VoteResponse<C>, RaftError<C>>> {
    Json(raft.vote(request).await)
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
