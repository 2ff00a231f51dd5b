//! `/v1/jobs/{job}/executions`: list, show (with the full output from the local output store), delete, cancel.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kairos_model::{Execution, ExecutionStatus};
use kairos_store::Command;
use serde::Serialize;

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
    ApiExecution { execution, output_truncated: truncated }
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

/// `GET /v1/jobs/{job}/executions/{id}`: the record with its full stored output.
pub async fn show(
    State(node): State<AppState>,
    Path((job, id)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> ApiResult {
    require_job(&node, &job)?;
    let mut execution = node
        .state
        .execution(&job, &id)?
        .ok_or_else(|| ApiError::not_found(format!("execution '{id}' of job '{job}' not found")))?;
    if let Some(full) = node.outputs.read(&job, &id).map_err(ApiError::internal)? {
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
    Ok(reply(StatusCode::OK, &response.job, &params))
}

/// `POST /v1/jobs/{job}/executions/{id}/cancel`: stop a pending or running execution. Answers 202; the
/// execution turns `cancelled` once its process group is gone.
pub async fn cancel(
    State(node): State<AppState>,
    Path((job, id)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> ApiResult {
    require_job(&node, &job)?;
    let execution = node
        .state
        .execution(&job, &id)?
        .ok_or_else(|| ApiError::not_found(format!("execution '{id}' of job '{job}' not found")))?;
    if !execution.status.is_active() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("execution '{id}' is already {}", execution.status.as_str()),
        ));
    }
    node.cancel(&execution).await?;
    let execution = node.state.execution(&job, &id)?.unwrap_or(execution);
    Ok(reply(StatusCode::ACCEPTED, &execution, &params))
}
