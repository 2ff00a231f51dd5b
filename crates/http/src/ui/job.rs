//! `/ui/jobs/{name}`: one job. Every field, the next 10 fire times, the buttons that act on it (through the API),
//! and its executions with paging and a status filter; the state and the executions update live.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kairos_model::acl::Capability;
use kairos_model::{Execution, ExecutionStatus, Job, Timestamp};
use kairos_store::JobRecord;
use maud::{Markup, html};

use super::layout::{Nav, node_page};
use super::{UiError, UiResult, format};
use crate::api::auth::Caller;
use crate::api::{ApiError, AppState};
use kairos_server::node::Node;
use kairos_server::scheduler::next_fire;

const EXECUTIONS_PER_PAGE: usize = 20;
const PREVIEW_COUNT: usize = 10;

/// Which executions the page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecQuery {
    pub status: Option<ExecutionStatus>,
    pub page: usize,
}

impl ExecQuery {
    pub fn from_params(params: &HashMap<String, String>) -> ExecQuery {
        ExecQuery {
            status: params.get("status").and_then(|s| ExecutionStatus::parse(s)),
            page: params.get("page").and_then(|p| p.parse().ok()).filter(|p| *p >= 1).unwrap_or(1),
        }
    }

    fn query_string(&self, page: usize) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(status) = self.status {
            query.append_pair("status", status.as_str());
        }
        if page > 1 {
            query.append_pair("page", &page.to_string());
        }
        // "?" alone still leaves the current page's query behind when used as a link.
        format!("?{}", query.finish())
    }
}

pub fn not_found(name: &str) -> UiError {
    UiError::new(StatusCode::NOT_FOUND, format!("job '{name}' not found"))
}

pub async fn page(
    State(node): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> UiResult {
    let caller = caller.map_or_else(Caller::anyone, |Extension(caller)| caller);
    let query = ExecQuery::from_params(&params);
    let now = Timestamp::now();
    let record = node.state.job(&name)?.ok_or_else(|| not_found(&name))?;
    let live = tokio::task::block_in_place(|| live_part(&node, &name, &query, now))?.ok_or_else(|| not_found(&name))?;
    let job = &record.job;
    let title = if job.displayname.is_empty() { job.name.clone() } else { job.displayname.clone() };
    let live_url = format!("/ui/live/jobs/{}{}", job.name, query.query_string(query.page));
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/ui/jobs" { "Jobs" } " › " span { (job.name) } }
        div.title-row {
            h1 { (title) @if title != job.name { " " code.muted { (job.name) } } }
            (buttons(job, &caller))
        }
        div #job-live data-live=(live_url) { (live) }
        div.columns {
            section aria-labelledby="h-next" {
                h2 #h-next { "Next " (PREVIEW_COUNT) " fire times" }
                (next_fires(&record, now))
            }
            section aria-labelledby="h-fields" {
                h2 #h-fields { "Definition" }
                (fields(job))
            }
        }
    };
    Ok(node_page(&node, &title, Nav::Jobs, body).into_response())
}

/// The job's actions; with ACL, only those the signed-in token may do (the API would refuse the others).
fn buttons(job: &Job, caller: &Caller) -> Markup {
    let base = format!("/ui/jobs/{}", job.name);
    let api = format!("/v1/jobs/{}", job.name);
    let may_run = caller.may(Capability::Create, &format!("{api}/run"));
    let may_toggle = caller.may(Capability::Create, &format!("{api}/toggle"));
    let may_edit = caller.may(Capability::Update, &api);
    let may_delete = caller.may(Capability::Delete, &api);
    html! {
        div.buttons role="group" aria-label="Job actions" {
            @if may_run { button.primary type="button" data-action="run" data-job=(job.name) { "Run now" } }
            @if may_toggle {
                button type="button" data-action="toggle" data-job=(job.name) data-reload="" {
                    (if job.disabled { "Enable" } else { "Disable" })
                }
            }
            @if may_edit { a.button href={ (base) "/edit" } { "Edit" } }
            a.button href={ "/ui/new?clone=" (job.name) } { "Clone" }
            @if may_delete {
                button.danger type="button" data-action="delete" data-job=(job.name) data-redirect="/ui/jobs" { "Delete" }
            }
        }
        @if !job.dependent_jobs.is_empty() {
            p.notice {
                "Deleting this job needs its dependent jobs deleted or re-parented first: "
                @for (i, child) in job.dependent_jobs.iter().enumerate() {
                    @if i > 0 { ", " }
                    a href={ "/ui/jobs/" (child) } { (child) }
                }
            }
        }
    }
}

/// The live part: the job's state and the executions table. `None` once the job is gone.
pub fn live_part(node: &Node, name: &str, query: &ExecQuery, now: Timestamp) -> Result<Option<Markup>, ApiError> {
    let Some(record) = node.state.job(name)? else {
        return Ok(None);
    };
    let mut executions = node.state.executions(name)?;
    executions.retain(|e| query.status.is_none_or(|s| e.status == s));
    executions.reverse();
    let total = executions.len();
    let pages = total.div_ceil(EXECUTIONS_PER_PAGE).max(1);
    let page = query.page.min(pages);
    let shown: Vec<Execution> =
        executions.into_iter().skip((page - 1) * EXECUTIONS_PER_PAGE).take(EXECUTIONS_PER_PAGE).collect();
    Ok(Some(html! {
        (state(&record, now))
        section aria-labelledby="h-executions" {
            div.title-row {
                h2 #h-executions { "Executions" }
                form.inline method="get" aria-label="Filter executions" {
                    label for="f-exec-status" { "Status" }
                    select #f-exec-status name="status" data-autosubmit="" {
                        option value="" { "Any" }
                        @for status in ["pending", "running", "succeeded", "failed", "lost", "cancelled", "skipped"] {
                            option value=(status) selected[query.status.map(|s| s.as_str()) == Some(status)] { (status) }
                        }
                    }
                    button type="submit" { "Filter" }
                }
            }
            (executions_table(&record.job, &shown, now, total))
            @if pages > 1 {
                nav.pager aria-label="Execution pages" {
                    @if page > 1 { a href=(query.query_string(page - 1)) rel="prev" { "‹ Newer" } }
                    span aria-current="page" { "Page " (page) " of " (pages) }
                    @if page < pages {
                        a href=(query.query_string(page + 1)) rel="next" { "Older ›" }
                    }
                }
            }
        }
    }))
}

fn state(record: &JobRecord, now: Timestamp) -> Markup {
    let job = &record.job;
    let zone = format::job_zone(job);
    let next = next_fire(record, now);
    html! {
        dl.summary #job-state {
            div { dt { "Status" } dd #job-status { (format::job_status(job)) } }
            div { dt { "Next run" } dd {
                (format::instant(next, &zone))
                @if let Some(next) = next { " " span.muted { "(" (format::relative(next, now)) ")" } }
            } }
            div { dt { "Succeeded" } dd { (job.success_count) } }
            div { dt { "Failed" } dd { (job.error_count) } }
            div { dt { "Last success" } dd { (format::instant(job.last_success, &zone)) } }
            div { dt { "Last error" } dd { (format::instant(job.last_error, &zone)) } }
            div { dt { "Active" } dd { (record.active) } }
        }
    }
}

pub fn executions_table(job: &Job, executions: &[Execution], now: Timestamp, total: usize) -> Markup {
    let zone = format::job_zone(job);
    html! {
        div.table-wrap {
            table.executions {
                caption.muted { (total) " stored" }
                thead { tr {
                    th scope="col" { "Execution" } th scope="col" { "Status" } th scope="col" { "Trigger" }
                    th scope="col" { "Scheduled" } th scope="col" { "Started" } th scope="col" { "Duration" }
                    th scope="col" { "Node" } th scope="col" { "Exit" } th scope="col" { "Actions" }
                } }
                tbody {
                    @if executions.is_empty() { tr { td colspan="9" .muted { "No executions yet." } } }
                    @for exec in executions {
                        tr data-execution=(exec.id) data-status=(exec.status.as_str()) {
                            td { a href={ "/ui/jobs/" (job.name) "/executions/" (exec.id) } { code { (exec.id) } } }
                            td { (format::exec_status(exec.status)) }
                            td { (format!("{:?}", exec.trigger).to_lowercase()) @if exec.attempt > 1 { " #" (exec.attempt) } }
                            td { (format::instant(Some(exec.scheduled_at), &zone)) }
                            td { (format::instant(exec.started_at, &zone)) }
                            td { (format::elapsed(exec, now).map(format::duration).unwrap_or_default()) }
                            td { (exec.node_name) }
                            td { (exec.exit_code.map(|c| c.to_string()).unwrap_or_default()) }
                            td.actions {
                                @if exec.status.is_active() {
                                    button.danger type="button" data-action="cancel" data-job=(job.name) data-execution=(exec.id) { "Cancel" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The next fire times: the scheduler's own next instant, then the schedule's following ones (the preview
/// endpoint's logic), stopping at `expires_at`.
fn next_fires(record: &JobRecord, now: Timestamp) -> Markup {
    let job = &record.job;
    let zone = format::job_zone(job);
    let fires: Vec<Timestamp> = match (next_fire(record, now), job.parsed_schedule()) {
        (Some(first), Ok(Some(schedule))) => std::iter::once(first)
            .chain(schedule.upcoming(first))
            .take_while(|t| job.expires_at.is_none_or(|e| *t <= e))
            .take(PREVIEW_COUNT)
            .collect(),
        _ => Vec::new(),
    };
    html! {
        @if fires.is_empty() {
            p.muted {
                @if job.disabled { "None: the job is disabled." }
                @else if job.schedule.is_empty() { "None: the job runs only after its parent succeeds." }
                @else { "None: the schedule does not fire again by itself." }
            }
        } @else {
            ol.fires {
                @for t in fires {
                    li {
                        (format::instant(Some(t), &zone))
                        @if zone != jiff::tz::TimeZone::UTC { " " span.muted.utc { (format::utc(t)) } }
                    }
                }
            }
        }
    }
}

fn map_table(map: &std::collections::BTreeMap<String, String>) -> Markup {
    html! {
        @if map.is_empty() { span.muted { "none" } }
        @else {
            ul.pairs { @for (k, v) in map { li { code { (k) } " = " code { (v) } } } }
        }
    }
}

fn fields(job: &Job) -> Markup {
    let zone = format::job_zone(job);
    let text = |s: &str| -> Markup {
        if s.is_empty() {
            html! { span.muted { "—" } }
        } else {
            html! { (s) }
        }
    };
    let retained = job.executions_retained.map_or("server default".to_string(), |n| n.to_string());
    let concurrency = format!("{:?}", job.concurrency).to_lowercase();
    let on_overload = format!("{:?}", job.on_overload).to_lowercase();
    let catch_up = format!("{:?}", job.catch_up).to_lowercase();
    html! {
        dl.fields {
            div { dt { "name" } dd { code { (job.name) } } }
            div { dt { "displayname" } dd { (text(&job.displayname)) } }
            div { dt { "schedule" } dd { code { (text(&job.schedule)) } } }
            div { dt { "timezone" } dd { (text(&job.timezone)) } }
            div { dt { "owner" } dd { (text(&job.owner)) } }
            div { dt { "owner_email" } dd { (text(&job.owner_email)) } }
            div { dt { "disabled" } dd { (job.disabled) } }
            div { dt { "executor" } dd { (job.executor) } }
            div { dt { "executor_config" } dd { (map_table(&job.executor_config)) } }
            div { dt { "tags" } dd { (map_table(&job.tags)) } }
            div { dt { "metadata" } dd { (map_table(&job.metadata)) } }
            div { dt { "retries" } dd { (job.retries) } }
            div { dt { "retry_backoff" } dd { (job.retry_backoff) " (max " (job.retry_backoff_max) ")" } }
            div { dt { "concurrency" } dd { (concurrency) } }
            div { dt { "on_overload" } dd { (on_overload) } }
            div { dt { "catch_up" } dd { (catch_up) " within " (job.catch_up_window) } }
            div { dt { "parent_job" } dd {
                @if job.parent_job.is_empty() { span.muted { "—" } }
                @else { a href={ "/ui/jobs/" (job.parent_job) } { (job.parent_job) } }
            } }
            div { dt { "dependent_jobs" } dd {
                @if job.dependent_jobs.is_empty() { span.muted { "none" } }
                @for (i, child) in job.dependent_jobs.iter().enumerate() {
                    @if i > 0 { ", " }
                    a href={ "/ui/jobs/" (child) } { (child) }
                }
            } }
            div { dt { "ephemeral" } dd { (job.ephemeral) } }
            div { dt { "starts_at" } dd { (format::instant(job.starts_at, &zone)) } }
            div { dt { "expires_at" } dd { (format::instant(job.expires_at, &zone)) } }
            div { dt { "executions_retained" } dd { (retained) } }
            div { dt { "processors" } dd {
                @if job.processors.is_empty() { span.muted { "none" } }
                @else { code { (serde_json::to_string(&job.processors).unwrap_or_default()) } }
            } }
            div { dt { "created_at" } dd { (format::instant(job.created_at, &zone)) } }
            div { dt { "updated_at" } dd { (format::instant(job.updated_at, &zone)) } }
        }
        p { a href={ "/v1/jobs/" (job.name) "?pretty" } { "This job as JSON" } }
    }
}
