//! Node and cluster routes: health, agent info, members, leader, busy, pause, and the schedule preview.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use kairos_model::Timestamp;
use kairos_schedule::Schedule;
use kairos_store::Command;
use serde_json::json;

use super::{ApiError, ApiResult, AppState, Params, reply, reply_list};

/// Upper bound on preview length, so one request cannot ask for unbounded work.
const PREVIEW_COUNT_MAX: usize = 1000;

/// `GET /health`: 200 while the node works; 503 with the reason once its storage failed (it is then exiting), or
/// while it leads but its leader duties do not run (see `kairos_server::leadership`).
pub async fn health(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    if let Some(reason) = node.fatal.get() {
        let body = json!({ "status": "unhealthy", "node": node.config.node_name, "error": reason });
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, &body, &params));
    }
    let leader = node.leader_name();
    let duties = node.duties.json();
    if let Some(reason) = node.duties.stalled(node.is_leader()) {
        let body = json!({ "status": "unhealthy", "node": node.config.node_name, "leader": leader, "error": reason,
                           "leader_duties": duties });
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, &body, &params));
    }
    let body = json!({ "status": "ok", "node": node.config.node_name, "leader": leader, "leader_duties": duties });
    Ok(reply(StatusCode::OK, &body, &params))
}

/// `GET /v1`: Dkron's agent summary (`agent`, `serf` and `tags`, every value a string), and ours: `raft`.
pub async fn index(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    let body = json!({
        "agent": { "name": node.config.node_name, "version": env!("CARGO_PKG_VERSION") },
        "serf": node.membership.serf_stats().await,
        "tags": node.member_tags(),
        "raft": node.raft_summary(),
    });
    Ok(reply(StatusCode::OK, &body, &params))
}

pub async fn members(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    let members = node.members_json().await;
    Ok(reply_list(&members, members.len(), &params))
}

pub async fn leader(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    match node.leader_json() {
        Some(leader) => Ok(reply(StatusCode::OK, &leader, &params)),
        None if node.is_leader() => {
            let silence = node.quorum_silence(&node.metrics()).unwrap_or_default();
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this server has not heard from a quorum of servers for {} ms: it may be cut off, and another \
                     server may lead; ask another server",
                    silence.as_millis()
                ),
            ))
        }
        None => Err(ApiError::not_found("no leader is known yet")),
    }
}

pub async fn is_leader(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    if node.leads_with_quorum() {
        Ok(reply(StatusCode::OK, &"I am a leader", &params))
    } else {
        Ok(reply(StatusCode::NOT_FOUND, &"I am a follower", &params))
    }
}

/// `GET /v1/busy`: running (and pending) executions, oldest first.
pub async fn busy(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    let mut active = node.state.active()?;
    active.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.scheduled_at.cmp(&b.scheduled_at)));
    let active: Vec<_> = active.into_iter().map(super::dkron_execution).collect();
    Ok(reply_list(&active, active.len(), &params))
}

/// `POST /v1/leave`: this node leaves the cluster as `kairos leave` makes it (a leader hands leadership over
/// first) and then exits. Answers the members as they were, as Dkron does, before leaving begins.
pub async fn leave(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    let members = node.members_json().await;
    let leaving = node.clone();
    tokio::spawn(async move { leaving.leave().await });
    Ok(reply_list(&members, members.len(), &params))
}

pub async fn pause_status(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    Ok(reply(StatusCode::OK, &json!({ "paused": node.state.paused()? }), &params))
}

/// `POST /v1/pause`: refuse new job submissions (Dkron's meaning), replicated and kept across restarts.
pub async fn pause(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    node.submit(Command::SetPaused { paused: true }).await?;
    Ok(reply(StatusCode::OK, &json!({ "paused": true }), &params))
}

pub async fn unpause(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    node.submit(Command::SetPaused { paused: false }).await?;
    Ok(reply(StatusCode::OK, &json!({ "paused": false }), &params))
}

/// `GET /v1/schedule/preview?schedule=…&timezone=…&count=N&from=RFC3339[&name=job]`: the next N fire instants
/// after `from`, each in UTC and in the schedule's zone.
pub async fn preview(Query(params): Query<Params>) -> ApiResult {
    let expr = params
        .get("schedule")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("schedule: required (e.g. ?schedule=*/5 * * * * *)"))?;
    let timezone = params.get("timezone").map(String::as_str).filter(|t| !t.is_empty());
    let count = match params.get("count") {
        None => 10,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=PREVIEW_COUNT_MAX).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "count: '{text}' is not an integer between 1 and {PREVIEW_COUNT_MAX}"
                )));
            }
        },
    };
    let from = match params.get("from").filter(|f| !f.is_empty()) {
        None => Timestamp::now(),
        Some(text) => text
            .parse::<Timestamp>()
            .map_err(|e| ApiError::bad_request(format!("from: '{text}' is not an RFC 3339 timestamp: {e}")))?,
    };
    let name = params.get("name").map(String::as_str).unwrap_or("");
    let schedule = Schedule::parse(expr, timezone, name).map_err(|e| {
        let text = e.to_string();
        if text.starts_with("timezone") || text.starts_with("schedule") {
            ApiError::bad_request(text)
        } else {
            ApiError::bad_request(format!("schedule: {text}"))
        }
    })?;
    let zone = schedule.time_zone().clone();
    let mut fires = Vec::with_capacity(count);
    let mut cursor = from;
    while fires.len() < count {
        let Some(next) = schedule.next_after(cursor) else {
            break;
        };
        let local = next.to_zoned(zone.clone());
        fires.push(json!({
            "utc": next.to_string(),
            "local": local.strftime("%Y-%m-%dT%H:%M:%S%.f%:z").to_string(),
            "zone_abbreviation": local.strftime("%Z").to_string(),
        }));
        cursor = next;
    }
    let body = json!({
        "schedule": expr,
        "timezone": schedule.time_zone_name(),
        "from": from.to_string(),
        "fires": fires,
    });
    Ok(reply(StatusCode::OK, &body, &params))
}
