//! The routes only servers answer on the RPC listener: writes forwarded by followers, reports of agents, launch
//! permits, read
//! indexes, Raft peers and the clock (paths in [`crate::cluster::paths`]; the client is [`crate::cluster::RpcClient`]).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use kairos_store::{Command, Response};

use super::Node;
use crate::cluster::client::{READ_INDEX_TIMEOUT, REPORT_TIMEOUT};
use crate::cluster::{Forwarded, Peer, paths};
use crate::permit::{PERMIT_TIMEOUT, PermitAnswer};

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

// Routes that wait for Raft answer within their client's own timeout: a request its client gave up on must
// not go on holding a connection of the RPC listener. Under load, reports and permits waiting for writes Raft
// could not commit held all 1,024 of them, and every new connection waited to be accepted (issue 19).

/// A report from an agent's worker: decided (retry instants) here, then written like any command.
async fn report(State(node): State<Arc<Node>>, Json(command): Json<Command>) -> Json<Result<Response, String>> {
    match tokio::time::timeout(REPORT_TIMEOUT, node.submit_report(command)).await {
        Ok(written) => Json(written.map_err(|e| e.message)),
        Err(_) => Json(Err(format!("not committed within {REPORT_TIMEOUT:?}; retry"))),
    }
}

/// A node asks for the permit to launch runs (see [`crate::permit`]).
async fn permit(
    State(node): State<Arc<Node>>,
    Json(request): Json<crate::permit::PermitRequest>,
) -> Json<crate::permit::PermitAnswer> {
    match tokio::time::timeout(PERMIT_TIMEOUT, node.permit(request)).await {
        Ok(answer) => Json(answer),
        Err(_) => Json(PermitAnswer::Unknown(format!("not decided within {PERMIT_TIMEOUT:?}"))),
    }
}

async fn read_index(State(node): State<Arc<Node>>) -> Json<Result<u64, (u16, String)>> {
    match tokio::time::timeout(READ_INDEX_TIMEOUT, node.leader_read_index()).await {
        Ok(index) => Json(index.map_err(|e| e.wire())),
        Err(_) => Json(Err(crate::error::WriteError::unavailable("the leader's read index timed out; retry").wire())),
    }
}

async fn peers(State(node): State<Arc<Node>>) -> Json<Vec<Peer>> {
    Json(node.peers())
}

async fn remove_peer(State(node): State<Arc<Node>>, Json(peer): Json<u64>) -> Json<Result<(), (u16, String)>> {
    Json(node.remove_peer(peer).await.map_err(|e| e.wire()))
}
