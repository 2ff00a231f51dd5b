//! `/ui/jobs`: search, filter, sort and page the jobs on the server, with bulk actions.
//!
//! Cost with many jobs: the unfiltered, name-ordered list decodes only the records it shows (the store keeps jobs
//! in name order and skips by key). Any filter or another order reads every job record
//! once, keeping just a sort key and the name per match; only the shown page is then read in full, with its
//! executions for the result strip. The `next` order also computes every matching job's next fire time.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use kairos_model::{Execution, Timestamp};
use kairos_store::{JobRecord, StateReader};
use maud::{Markup, html};

use super::layout::{Nav, node_page};
use super::{UiResult, format};
use crate::api::jobs::JobFilter;
use crate::api::{ApiError, AppState};
use kairos_server::scheduler::next_fire;

pub const PAGE_SIZES: [usize; 4] = [25, 50, 100, 200];
const PAGE_SIZE_DEFAULT: usize = 50;
/// Results shown in each row's strip.
const STRIP_LEN: usize = 10;

/// Orders a person can pick: (value, label).
const SORTS: [(&str, &str); 8] = [
    ("name", "Name"),
    ("displayname", "Display name"),
    ("next", "Next run"),
    ("status", "Status"),
    ("last_success", "Last success"),
    ("last_error", "Last error"),
    ("error_count", "Errors"),
    ("created_at", "Created"),
];

const STATUSES: [(&str, &str); 5] = [
    ("", "Any status"),
    ("success", "Succeeded"),
    ("failed", "Failed"),
    ("running", "Running"),
    ("untriggered", "Never run"),
];

/// The list's query string, as the filter form sends it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub q: String,
    pub status: String,
    pub disabled: String,
    pub executor: String,
    /// `key=value` pairs separated by commas.
    pub tags: String,
    pub metadata: String,
    pub sort: String,
    pub order: String,
    pub page: usize,
    pub per: usize,
}

impl ListQuery {
    pub fn from_params(params: &HashMap<String, String>) -> ListQuery {
        let text = |key: &str| params.get(key).map(|v| v.trim().to_string()).unwrap_or_default();
        let sort = Some(text("sort")).filter(|s| SORTS.iter().any(|(v, _)| v == s)).unwrap_or_else(|| "name".into());
        let order = if text("order") == "desc" { "desc" } else { "asc" }.to_string();
        let per = text("per").parse().ok().filter(|p| PAGE_SIZES.contains(p)).unwrap_or(PAGE_SIZE_DEFAULT);
        ListQuery {
            q: text("q").to_lowercase(),
            status: text("status"),
            disabled: text("disabled"),
            executor: text("executor"),
            tags: text("tags"),
            metadata: text("metadata"),
            sort,
            order,
            page: text("page").parse().ok().filter(|p| *p >= 1).unwrap_or(1),
            per,
        }
    }

    fn is_unfiltered(&self) -> bool {
        self.q.is_empty()
            && self.status.is_empty()
            && self.disabled.is_empty()
            && self.executor.is_empty()
            && self.tags.is_empty()
            && self.metadata.is_empty()
    }

    /// This query as a URL with some keys replaced; defaults are left out to keep addresses short.
    pub fn href(&self, changes: &[(&str, String)]) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("q", self.q.clone()),
            ("status", self.status.clone()),
            ("disabled", self.disabled.clone()),
            ("executor", self.executor.clone()),
            ("tags", self.tags.clone()),
            ("metadata", self.metadata.clone()),
            ("sort", self.sort.clone()),
            ("order", self.order.clone()),
            ("page", self.page.to_string()),
            ("per", self.per.to_string()),
        ];
        for (key, value) in changes {
            if let Some(pair) = pairs.iter_mut().find(|(k, _)| k == key) {
                pair.1 = value.clone();
            }
        }
        let defaults = [("sort", "name"), ("order", "asc"), ("page", "1"), ("per", "50")];
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in pairs {
            if value.is_empty() || defaults.contains(&(key, value.as_str())) {
                continue;
            }
            query.append_pair(key, &value);
        }
        let query = query.finish();
        if query.is_empty() { "/ui/jobs".to_string() } else { format!("/ui/jobs?{query}") }
    }
}

/// `k=v, k2=v2` into pairs; the error names the filter.
fn pairs(field: &str, text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(format!("{field}: '{p}' is not key=value")),
        })
        .collect()
}

/// The filters of a query, checked, with the same meaning as `GET /v1/jobs`'s.
fn filter(q: &ListQuery) -> Result<JobFilter, String> {
    let disabled = match q.disabled.as_str() {
        "" => None,
        "true" => Some(true),
        "false" => Some(false),
        other => return Err(format!("disabled: '{other}' is not true or false")),
    };
    if !STATUSES.iter().any(|(v, _)| *v == q.status) {
        return Err(format!("status: '{}' is not one of success, failed, running, untriggered", q.status));
    }
    let nonempty = |text: &str| (!text.is_empty()).then(|| text.to_string());
    Ok(JobFilter {
        query: nonempty(&q.q.to_lowercase()),
        status: nonempty(&q.status),
        disabled,
        executor: nonempty(&q.executor),
        tags: pairs("tags", &q.tags)?,
        metadata: pairs("metadata", &q.metadata)?,
    })
}

/// A sort key of one job; jobs with equal keys are ordered by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Text(String),
    Time(Option<Timestamp>),
    Count(u64),
}

fn key(record: &JobRecord, sort: &str, now: Timestamp) -> Key {
    let job = &record.job;
    match sort {
        "displayname" => Key::Text(job.displayname.to_lowercase()),
        "status" => Key::Text(job.status.clone()),
        // Jobs that never fire by themselves sort last, after every instant.
        "next" => Key::Time(Some(next_fire(record, now).unwrap_or(Timestamp::MAX))),
        "last_success" => Key::Time(job.last_success),
        "last_error" => Key::Time(job.last_error),
        "error_count" => Key::Count(job.error_count),
        "created_at" => Key::Time(job.created_at),
        _ => Key::Text(String::new()),
    }
}

/// One page of the list.
pub struct Listing {
    /// Jobs matching the filters.
    pub total: usize,
    pub rows: Vec<JobRecord>,
}

/// Filter, sort and page the jobs.
pub fn list(state: &StateReader, query: &ListQuery, now: Timestamp) -> Result<Result<Listing, String>, ApiError> {
    let filter = match filter(query) {
        Ok(filter) => filter,
        Err(message) => return Ok(Err(message)),
    };
    let start = (query.page - 1).saturating_mul(query.per);
    let desc = query.order == "desc";
    if query.is_unfiltered() && query.sort == "name" {
        // The store's own order: only the page is decoded.
        let (rows, total) = state.job_page(start, start.saturating_add(query.per), desc)?;
        return Ok(Ok(Listing { total: total as usize, rows }));
    }
    let mut keys: Vec<(Key, String)> = Vec::new();
    state.for_each_job(|record| {
        if filter.matches(&record.job) {
            keys.push((key(&record, &query.sort, now), record.job.name));
        }
        true
    })?;
    keys.sort_unstable();
    if desc {
        keys.reverse();
    }
    let total = keys.len();
    let mut rows = Vec::with_capacity(query.per);
    for (_, name) in keys.iter().skip(start).take(query.per) {
        rows.extend(state.job(name)?);
    }
    Ok(Ok(Listing { total, rows }))
}

/// The last results of a job, oldest first.
fn last_results(state: &StateReader, job: &str) -> Result<Vec<Execution>, ApiError> {
    let mut executions = state.executions(job)?;
    let keep = executions.len().saturating_sub(STRIP_LEN);
    executions.drain(..keep);
    Ok(executions)
}

pub async fn page(State(node): State<AppState>, Query(params): Query<HashMap<String, String>>) -> UiResult {
    let query = ListQuery::from_params(&params);
    let now = Timestamp::now();
    let started = std::time::Instant::now();
    let (listing, strips) = tokio::task::block_in_place(|| -> Result<_, ApiError> {
        let listing = list(&node.state, &query, now)?;
        let mut strips = HashMap::new();
        if let Ok(listing) = &listing {
            for record in &listing.rows {
                strips.insert(record.job.name.clone(), last_results(&node.state, &record.job.name)?);
            }
        }
        Ok((listing, strips))
    })?;
    let server_ms = started.elapsed().as_secs_f64() * 1000.0;
    let body = html! {
        div.title-row {
            h1 { "Jobs" }
            a.button.primary href="/ui/new" { "New job" }
        }
        (filters(&query))
        @match &listing {
            Err(message) => p.notice.error role="alert" { (message) },
            Ok(listing) => (table(&query, listing, &strips, now, server_ms)),
        }
    };
    let mut response = node_page(&node, "Jobs", Nav::Jobs, body).into_response();
    if let Ok(value) = format!("list;dur={server_ms:.1}").parse() {
        response.headers_mut().insert("Server-Timing", value);
    }
    Ok(response)
}

fn filters(query: &ListQuery) -> Markup {
    html! {
        form.filters method="get" action="/ui/jobs" role="search" aria-label="Filter jobs" {
            div.field.grow {
                label for="f-q" { "Search" }
                input #f-q type="search" name="q" value=(query.q) placeholder="name or display name" autocomplete="off";
            }
            div.field {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    @for (value, label) in STATUSES { option value=(value) selected[query.status == value] { (label) } }
                }
            }
            div.field {
                label for="f-disabled" { "Enabled" }
                select #f-disabled name="disabled" {
                    option value="" selected[query.disabled.is_empty()] { "All" }
                    option value="false" selected[query.disabled == "false"] { "Enabled" }
                    option value="true" selected[query.disabled == "true"] { "Disabled" }
                }
            }
            div.field {
                label for="f-executor" { "Executor" }
                select #f-executor name="executor" {
                    option value="" { "Any" }
                    @for executor in kairos_agent::EXECUTORS {
                        option value=(executor) selected[query.executor == executor] { (executor) }
                    }
                }
            }
            div.field {
                label for="f-tags" { "Tags" }
                input #f-tags name="tags" value=(query.tags) placeholder="key=value, …" autocomplete="off";
            }
            div.field {
                label for="f-metadata" { "Metadata" }
                input #f-metadata name="metadata" value=(query.metadata) placeholder="key=value, …" autocomplete="off";
            }
            div.field {
                label for="f-sort" { "Sort by" }
                select #f-sort name="sort" {
                    @for (value, label) in SORTS { option value=(value) selected[query.sort == value] { (label) } }
                }
            }
            div.field {
                label for="f-order" { "Order" }
                select #f-order name="order" {
                    option value="asc" selected[query.order == "asc"] { "Ascending" }
                    option value="desc" selected[query.order == "desc"] { "Descending" }
                }
            }
            div.field {
                label for="f-per" { "Per page" }
                select #f-per name="per" {
                    @for size in PAGE_SIZES { option value=(size) selected[query.per == size] { (size) } }
                }
            }
            div.field.actions {
                button type="submit" { "Apply" }
                a.button.link href="/ui/jobs" { "Reset" }
            }
        }
    }
}

/// A column header that sorts by `sort` (toggling the order when it already does).
fn sort_header(query: &ListQuery, sort: &str, label: &str) -> Markup {
    let active = query.sort == sort;
    let next_order = if active && query.order == "asc" { "desc" } else { "asc" };
    let aria = match (active, query.order.as_str()) {
        (false, _) => None,
        (true, "desc") => Some("descending"),
        (true, _) => Some("ascending"),
    };
    let href = query.href(&[("sort", sort.to_string()), ("order", next_order.to_string()), ("page", "1".into())]);
    html! {
        th scope="col" aria-sort=[aria] {
            a href=(href) { (label) @if active { @if query.order == "desc" { " ▼" } @else { " ▲" } } }
        }
    }
}

fn table(
    query: &ListQuery,
    listing: &Listing,
    strips: &HashMap<String, Vec<Execution>>,
    now: Timestamp,
    server_ms: f64,
) -> Markup {
    let pages = listing.total.div_ceil(query.per).max(1);
    let first = (query.page - 1) * query.per + 1;
    let last = (first + listing.rows.len()).saturating_sub(1);
    html! {
        div.bulk role="group" aria-label="Bulk actions on the selected jobs" {
            span #bulk-count { "0 selected" }
            button type="button" data-bulk="run" disabled { "Run" }
            button type="button" data-bulk="enable" disabled { "Enable" }
            button type="button" data-bulk="disable" disabled { "Disable" }
            button.danger type="button" data-bulk="delete" disabled { "Delete" }
        }
        div.table-wrap {
            table.jobs {
                caption.muted {
                    @if listing.total == 0 { "No jobs match." }
                    @else { "Jobs " (first) "–" (last) " of " (listing.total) }
                    " · " (format!("{server_ms:.0}")) " ms on the server"
                }
                thead {
                    tr {
                        th scope="col" {
                            input #select-all type="checkbox" aria-label="Select every job on this page";
                        }
                        (sort_header(query, "name", "Job"))
                        th scope="col" { "Schedule" }
                        (sort_header(query, "next", "Next run"))
                        (sort_header(query, "status", "Status"))
                        th scope="col" { "Last 10" }
                        th scope="col" { "Actions" }
                    }
                }
                tbody {
                    @for record in &listing.rows { (row(record, strips.get(&record.job.name), now)) }
                }
            }
        }
        (pager(query, pages))
    }
}

fn row(record: &JobRecord, strip: Option<&Vec<Execution>>, now: Timestamp) -> Markup {
    let job = &record.job;
    let zone = format::job_zone(job);
    let next = next_fire(record, now);
    let href = format!("/ui/jobs/{}", job.name);
    html! {
        tr data-job=(job.name) data-disabled=(job.disabled) {
            td { input type="checkbox" name="select" value=(job.name) aria-label={ "Select " (job.name) }; }
            td.job-name {
                a href=(href) { (job.name) }
                @if !job.displayname.is_empty() { br; span.muted { (job.displayname) } }
            }
            td data-label="Schedule" {
                code { (if job.schedule.is_empty() { "(child)" } else { job.schedule.as_str() }) }
                @if !job.timezone.is_empty() { br; span.muted { (job.timezone) } }
            }
            td data-label="Next run" {
                (format::instant(next, &zone))
                @if let Some(next) = next { br; span.muted { (format::relative(next, now)) } }
            }
            td data-label="Status" { (format::job_status(job)) }
            td data-label="Last 10" { (format::strip(strip.map_or(&[][..], |s| s.as_slice()), &zone)) }
            td.actions {
                button type="button" data-action="run" data-job=(job.name) { "Run" }
                button type="button" data-action="toggle" data-job=(job.name) {
                    (if job.disabled { "Enable" } else { "Disable" })
                }
                a.button href={ (href) "/edit" } { "Edit" }
            }
        }
    }
}

fn pager(query: &ListQuery, pages: usize) -> Markup {
    let page = query.page;
    html! {
        nav.pager aria-label="Pages" {
            @if page > 1 {
                a href=(query.href(&[("page", "1".into())])) { "« First" }
                a href=(query.href(&[("page", (page - 1).to_string())])) rel="prev" { "‹ Previous" }
            }
            span aria-current="page" { "Page " (page) " of " (pages) }
            @if page < pages {
                a href=(query.href(&[("page", (page + 1).to_string())])) rel="next" { "Next ›" }
                a href=(query.href(&[("page", pages.to_string())])) { "Last »" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bad_paging_and_sorting_fall_back_to_defaults() {
        let q = ListQuery::from_params(&params(&[("page", "0"), ("per", "7"), ("sort", "nope"), ("order", "x")]));
        assert_eq!((q.page, q.per, q.sort.as_str(), q.order.as_str()), (1, 50, "name", "asc"));
    }

    #[test]
    fn links_keep_filters_and_drop_defaults() {
        let q = ListQuery::from_params(&params(&[("q", "Backup"), ("tags", "team=ops"), ("page", "3")]));
        assert_eq!(q.href(&[("page", "1".into())]), "/ui/jobs?q=backup&tags=team%3Dops");
        assert_eq!(q.href(&[]), "/ui/jobs?q=backup&tags=team%3Dops&page=3");
    }

    #[test]
    fn filters_match_like_the_api() {
        let mut job = kairos_model::Job::empty("nightly-backup");
        job.displayname = "Nightly Backup".into();
        job.executor = "shell".into();
        job.tags.insert("team".into(), "ops".into());
        let checked = |pairs: &[(&str, &str)]| filter(&ListQuery::from_params(&params(pairs))).unwrap();
        assert!(checked(&[("q", "BACKUP")]).matches(&job));
        assert!(checked(&[("status", "untriggered"), ("executor", "shell")]).matches(&job));
        assert!(checked(&[("tags", "team=ops")]).matches(&job));
        assert!(!checked(&[("tags", "team=dev")]).matches(&job));
        assert!(!checked(&[("disabled", "true")]).matches(&job));
        let err = filter(&ListQuery::from_params(&params(&[("metadata", "oops")]))).err().unwrap();
        assert_eq!(err, "metadata: 'oops' is not key=value");
    }
}
