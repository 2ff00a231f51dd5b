//! The routes only servers answer on the RPC listener: writes forwarded by followers, reports of agents, launch
//! permits, read
//! indexes, Raft peers and the clock (paths in [`crate::cluster::paths`]; the client is [`crate::cluster::RpcClient`]).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use kairos_store::{Command, Response};

use super::Node;
use crate::cluster::{Forwarded, Peer, paths};

/// Routes only servers answer.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(paths::SUBMIT, post(submit))
        .route(paths::REPORT, post(report))
        .route(paths::PERMIT, post(permit))
        .route(paths::READ_INDEX, post(read_index))
        .route(paths::PEERS, get(peers))
        .route(paths::REMOVE_PEER, post(remove_peer))
        .with_state(node)
}

/// The clock, answered where it is read least late (the Raft runtime): a node measuring its offset counts the
/// answer's delay as error.
pub fn clock_router(node: Arc<Node>) -> Router {
    Router::new().route(paths::CLOCK, get(clock)).with_state(node)
}

async fn clock(State(node): State<Arc<Node>>) -> Json<crate::clock::ClockReading> {
    Json(node.worker.clock.reading())
}

async fn submit(State(node): State<Arc<Node>>, Json(command): Json<Command>) -> Json<Forwarded> {
    let result = node.submit_local(command).await.map_err(|e| e.wire());
    Json(Forwarded { result })
}

/// A report from an agent's worker: decided (retry instants) here, then written like any command.
async fn report(State(node): State<Arc<Node>>, Json(command): Json<Command>) -> Json<Result<Response, String>> {
    Json(node.submit_report(command).await.map_err(|e| e.message))
}

/// A node asks for the permit to launch runs (see [`crate::permit`]).
async fn permit(
    State(node): State<Arc<Node>>,
    Json(request): Json<crate::permit::PermitRequest>,
) -> Json<crate::permit::PermitAnswer> {
    Json(node.permit(request).await)
}

async fn read_index(State(node): State<Arc<Node>>) -> Json<Result<u64, (u16, String)>> {
    Json(node.leader_read_index().await.map_err(|e| e.wire()))
}

async fn peers(State(node): State<Arc<Node>>) -> Json<Vec<Peer>> {
    Json(node.peers())
}

async fn remove_peer(State(node): State<Arc<Node>>, Json(peer): Json<u64>) -> Json<Result<(), (u16, String)>> {
    Json(node.remove_peer(peer).await.map_err(|e| e.wire()))
}
