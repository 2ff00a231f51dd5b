//! `/v1/jobs/{job}/executions`: list, show (with the full output from the local output store), delete, cancel.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kairos_model::{Execution, ExecutionStatus};
use kairos_store::{Command, ExecRef};
use serde::Serialize;

use kairos_server::cluster::{RpcError, client};

use super::jobs::require_job;
use super::{ApiError, ApiResult, AppState, Params, descending, page_bounds, reply, reply_list};

/// Dkron's API execution: the record plus whether `output` was cut by `output_size_limit`.
#[derive(Serialize)]
struct ApiExecution {
    #[serde(flatten)]
    execution: Execution,
    output_truncated: bool,
}

fn limit_output(mut execution: Execution, limit: Option<usize>) -> ApiExecution {
    let mut truncated = false;
    if let Some(limit) = limit
        && execution.output.len() > limit
    {
        let mut cut = execution.output.len() - limit;
        while !execution.output.is_char_boundary(cut) {
            cut += 1;
        }
        execution.output = execution.output[cut..].to_string();
        truncated = true;
    }
    ApiExecution { execution: super::dkron_execution(execution), output_truncated: truncated }
}

fn output_limit(params: &Params) -> Result<Option<usize>, ApiError> {
    match params.get("output_size_limit") {
        None => Ok(None),
        Some(text) => text
            .parse::<usize>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("output_size_limit: '{text}' is not a non-negative integer"))),
    }
}

type ExecOrder = fn(&Execution, &Execution) -> std::cmp::Ordering;

fn sort_key(field: &str) -> Result<ExecOrder, ApiError> {
    Ok(match field {
        "" | "id" | "scheduled_at" => |a, b| a.id.cmp(&b.id),
        "started_at" => |a, b| a.started_at.cmp(&b.started_at),
        "finished_at" => |a, b| a.finished_at.cmp(&b.finished_at),
        "status" => |a, b| a.status.as_str().cmp(b.status.as_str()),
        "attempt" => |a, b| a.attempt.cmp(&b.attempt),
        "node_name" => |a, b| a.node_name.cmp(&b.node_name),
        "success" => |a, b| a.success.cmp(&b.success),
        other => {
            return Err(ApiError::bad_request(format!(
                "_sort: cannot sort executions by '{other}' (id, scheduled_at, started_at, finished_at, status, \
                 attempt, node_name, success)"
            )));
        }
    })
}

/// `GET /v1/jobs/{job}/executions`: newest first by default, filter `status`, paging like jobs.
pub async fn list(State(node): State<AppState>, Path(job): Path<String>, Query(params): Query<Params>) -> ApiResult {
    require_job(&node, &job)?;
    let limit = output_limit(&params)?;
    let key = sort_key(params.get("_sort").map(String::as_str).unwrap_or(""))?;
    let desc = descending(&params, true)?;
    let status = match params.get("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(ExecutionStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status: '{s}' is not one of pending, running, succeeded, failed, lost, cancelled, skipped"
            ))
        })?),
    };
    let mut executions = node.state.executions(&job)?;
    executions.retain(|e| status.is_none_or(|s| e.status == s));
    executions.sort_by(|a, b| {
        let ord = key(a, b).then_with(|| a.id.cmp(&b.id));
        if desc { ord.reverse() } else { ord }
    });
    let (start, end) = page_bounds(&params, executions.len())?;
    let total = executions.len();
    let page: Vec<ApiExecution> =
        executions.drain(start..end).map(|execution| limit_output(execution, limit)).collect();
    Ok(reply_list(&page, total, &params))
}

/// An execution by id. A run of a job that runs on several nodes is replaced by its copies (`<id>@<node>`) soon
/// after it is decided; asking for the replaced id answers 404 naming the copies.
fn find(node: &AppState, job: &str, id: &str) -> Result<Execution, ApiError> {
    if let Some(execution) = node.state.execution(job, id)? {
        return Ok(execution);
    }
    let copies: Vec<String> = node
        .state
        .executions(job)?
        .into_iter()
        .filter(|e| e.id.strip_prefix(id).is_some_and(|rest| rest.starts_with(kairos_model::TARGET_SEPARATOR)))
        .map(|e| e.id)
        .collect();
    if copies.is_empty() {
        return Err(ApiError::not_found(format!("execution '{id}' of job '{job}' not found")));
    }
    Err(ApiError::not_found(format!(
        "execution '{id}' of job '{job}' was split into one copy per node: {}",
        copies.join(", ")
    )))
}

/// `GET /v1/jobs/{job}/executions/{id}`: the record with its full stored output.
pub async fn show(
    State(node): State<AppState>,
    Path((job, id)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> ApiResult {
    require_job(&node, &job)?;
    let mut execution = find(&node, &job, &id)?;
    if let Some(full) = full_output(&node, &execution).await? {
        execution.output = full;
    }
    let limit = output_limit(&params)?;
    Ok(reply(StatusCode::OK, &limit_output(execution, limit), &params))
}

/// `DELETE /v1/jobs/{job}/executions`: forget every finished execution of the job (active ones stay).
pub async fn delete_all(
    State(node): State<AppState>,
    Path(job): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    let response = node.submit(Command::DeleteExecutions { job: job.clone() }).await?;
    Ok(reply(StatusCode::OK, &response.job.map(super::dkron_job), &params))
}

/// `POST /v1/jobs/{job}/executions/{id}/cancel`: stop a pending or running execution. Answers 202; the
/// execution turns `cancelled` once its process group is gone.
pub async fn cancel(
    State(node): State<AppState>,
    Path((job, id)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> ApiResult {
    require_job(&node, &job)?;
    let execution = find(&node, &job, &id)?;
    if !execution.status.is_active() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("execution '{id}' is already {}", execution.status.as_str()),
        ));
    }
    node.cancel(&execution).await?;
    let execution = node.state.execution(&job, &id)?.unwrap_or(execution);
    Ok(reply(StatusCode::ACCEPTED, &super::dkron_execution(execution), &params))
}

/// The full stored output of an execution: from this node's output store if it ran here, else fetched from the
/// node that ran it (`None` if there is none beyond the record's tail, or that node cannot be reached).
async fn full_output(node: &AppState, execution: &Execution) -> Result<Option<String>, ApiError> {
    if execution.node_name.is_empty() || execution.node_name == node.config.node_name {
        return node.outputs.read(&execution.job_name, &execution.id).map_err(ApiError::internal);
    }
    let Some(member) = node.membership.alive().into_iter().find(|m| m.name == execution.node_name) else {
        return Ok(None);
    };
    let exec = ExecRef { job: execution.job_name.clone(), id: execution.id.clone() };
    Ok(node.rpc.output(&member.rpc_addr, &exec, client::OUTPUT_FOR_RECORD_TIMEOUT).await.ok())
}

/// `GET /v1/jobs/{job}/executions/{id}/output[?follow=true]`: the full output as text, from whichever node ran
/// it. With `follow=true` the answer is streamed (chunked) as the run writes, and ends when the run ends.
pub async fn output(
    State(node): State<AppState>,
    Path((job, id)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    require_job(&node, &job)?;
    let follow = match params.get("follow").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => return Err(ApiError::bad_request(format!("follow: '{other}' is not true or false"))),
    };
    let find = || find(&node, &job, &id);
    let mut execution = find()?;
    // A pending run has no node yet: when following, wait (bounded) until it starts somewhere.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while follow && execution.status == ExecutionStatus::Pending && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        execution = find()?;
    }
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let local = execution.node_name.is_empty() || execution.node_name == node.config.node_name;
    if local {
        if follow {
            let stream = kairos_server::cluster::follow_output(node.worker.clone(), node.outputs.clone(), job, id);
            return Ok((text_plain, Body::from_stream(stream)).into_response());
        }
        let text = node.outputs.read(&job, &id).map_err(ApiError::internal)?.unwrap_or(execution.output);
        return Ok((text_plain, text).into_response());
    }
    let member = node.membership.alive().into_iter().find(|m| m.name == execution.node_name);
    let Some(member) = member else {
        if follow {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("node '{}' that runs it is not reachable", execution.node_name),
            ));
        }
        return Ok((text_plain, execution.output).into_response());
    };
    let exec = ExecRef { job, id };
    if !follow {
        return match node.rpc.output(&member.rpc_addr, &exec, client::OUTPUT_TIMEOUT).await {
            Ok(text) => Ok((text_plain, text).into_response()),
            Err(RpcError::Status { .. }) => Ok((text_plain, execution.output).into_response()),
            Err(err) => Err(ApiError::new(StatusCode::BAD_GATEWAY, format!("node '{}': {err}", member.name))),
        };
    }
    match node.rpc.follow_output(&member.rpc_addr, &exec).await {
        Ok(stream) => Ok((text_plain, Body::from_stream(stream)).into_response()),
        Err(RpcError::Status { status, .. }) => {
            Err(ApiError::new(StatusCode::BAD_GATEWAY, format!("node '{}' answered {status}", member.name)))
        }
        Err(err) => Err(ApiError::new(StatusCode::BAD_GATEWAY, format!("node '{}': {err}", member.name))),
    }
}
