//! `/ui/jobs/{name}/executions/{id}`: one execution with its full output. While it is active, the output is
//! followed live (see [`super::live::execution`]) and a cancel button calls the API.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kairos_model::{Execution, Job, Timestamp};
use maud::{Markup, html};

use super::layout::{Nav, node_page};
use super::{UiError, UiResult, format};
use crate::api::AppState;
use kairos_server::node::Node;

/// The output as the page shows it: the full stored output when this node has it, else the replicated tail.
pub fn output(node: &Node, exec: &Execution) -> (String, bool) {
    match node.outputs.read(&exec.job_name, &exec.id) {
        Ok(Some(full)) => (full, true),
        _ => (exec.output.clone(), false),
    }
}

pub async fn page(State(node): State<AppState>, Path((name, id)): Path<(String, String)>) -> UiResult {
    let record = node.state.job(&name)?.ok_or_else(|| super::job::not_found(&name))?;
    let exec = node
        .state
        .execution(&name, &id)?
        .ok_or_else(|| UiError::new(StatusCode::NOT_FOUND, format!("execution '{id}' of job '{name}' not found")))?;
    let (text, full) = tokio::task::block_in_place(|| output(&node, &exec));
    let now = Timestamp::now();
    let follow = exec.status.is_active().then(|| format!("/ui/live/jobs/{name}/executions/{id}?from={}", text.len()));
    let title = format!("{name} · {id}");
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href="/ui/jobs" { "Jobs" } " › " a href={ "/ui/jobs/" (name) } { (name) } " › " span { (id) }
        }
        div.title-row {
            h1 { "Execution " code { (id) } }
            div.buttons {
                a.button href={ "/ui/jobs/" (name) } { "Back to the job" }
                a.button href={ "/v1/jobs/" (name) "/executions/" (id) "?pretty" } { "JSON" }
            }
        }
        div #exec-meta { (meta(&record.job, &exec, now)) }
        section aria-labelledby="h-output" {
            div.title-row {
                h2 #h-output { "Output" }
                @if follow.is_some() { span #follow-state.badge.s-running { "following live" } }
            }
            @if !full && !text.is_empty() {
                p.notice { "This node has no full output for this execution; shown is the last part kept with the record." }
            }
            pre #output.output tabindex="0" aria-label="Output" data-follow=[follow] { (text) }
            @if text.is_empty() && !exec.status.is_active() { p.muted #no-output { "No output." } }
        }
    };
    Ok(node_page(&node, &title, Nav::Jobs, body).into_response())
}

/// The execution's record and, while it is active, its cancel button.
pub fn meta(job: &Job, exec: &Execution, now: Timestamp) -> Markup {
    let zone = format::job_zone(job);
    html! {
        dl.summary {
            div { dt { "Status" } dd #exec-status { (format::exec_status(exec.status)) } }
            div { dt { "Trigger" } dd { (format!("{:?}", exec.trigger).to_lowercase()) } }
            div { dt { "Attempt" } dd { (exec.attempt) } }
            div { dt { "Node" } dd { (if exec.node_name.is_empty() { "—" } else { exec.node_name.as_str() }) } }
            div { dt { "Scheduled" } dd { (format::instant(Some(exec.scheduled_at), &zone)) } }
            div { dt { "Started" } dd { (format::instant(exec.started_at, &zone)) } }
            div { dt { "Finished" } dd { (format::instant(exec.finished_at, &zone)) } }
            div { dt { "Duration" } dd { (format::elapsed(exec, now).map(format::duration).unwrap_or_else(|| "—".into())) } }
            div { dt { "Exit code" } dd { (exec.exit_code.map_or("—".to_string(), |c| c.to_string())) } }
            @if !exec.status.is_active() { div { dt { "Output bytes" } dd { (exec.output_bytes) } } }
            @if let Some(not_before) = exec.not_before { div { dt { "Not before" } dd { (format::instant(Some(not_before), &zone)) } } }
            @if let Some(lease) = exec.lease_until { div { dt { "Lease until" } dd { (format::instant(Some(lease), &zone)) } } }
        }
        @if let Some(error) = &exec.error { p.notice.error { (error) } }
        @if !exec.notifications.is_empty() {
            section aria-labelledby="h-notifications" {
                h2 #h-notifications { "Notifications" }
                table #notifications {
                    thead { tr { th { "Kind" } th { "Event" } th { "To" } th { "Outcome" } th { "Tries" } th { "At" } th { "Error" } } }
                    tbody {
                        @for d in &exec.notifications {
                            tr {
                                td { (d.kind) }
                                td { (d.event) }
                                td { (d.target) }
                                td { (d.outcome.as_str()) }
                                td { (d.attempts) }
                                td { (format::instant(Some(d.at), &zone)) }
                                td { (d.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
        @if exec.status.is_active() {
            p {
                button.danger type="button" #cancel-execution data-action="cancel" data-job=(exec.job_name) data-execution=(exec.id) {
                    "Cancel this execution"
                }
            }
        }
    }
}
