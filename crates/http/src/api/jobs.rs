//! `/v1/jobs`: create, update, list, show, run, toggle, delete and restore jobs.

use std::cmp::Ordering;

use axum::Extension;
use axum::extract::{FromRequest, Multipart, Path, Query, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use kairos_model::acl::Capability;
use kairos_model::{Job, JobInput, Timestamp, Trigger};
use kairos_store::{Command, Fire, JobRecord};

use super::auth::Caller;
use super::guard::{JsonBody, is_json, not_json, read_body};
use super::{ApiError, ApiResult, AppState, Params, descending, page_bounds, reply, reply_list};
use kairos_server::node::Node;
use kairos_server::scheduler::next_fire;

/// The job as the API shows it: the stored job with `next` derived from its schedule and cursor.
pub fn view(record: JobRecord, now: Timestamp) -> Job {
    let next = next_fire(&record, now);
    let mut job = record.job;
    job.next = next;
    super::dkron_job(job)
}

fn refuse_if_paused(node: &Node) -> Result<(), ApiError> {
    if node.state.paused()? {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "new job submissions are paused (POST /v1/unpause to resume)",
        ));
    }
    Ok(())
}

/// Validate a job completely (model rules and the executor's own config) before anything is proposed. An
/// executor that is not built in must be a plugin of this node or of a live node (`--plugin-dir`); plugins check
/// their own config when they run.
fn check(node: &Node, job: &Job) -> Result<(), ApiError> {
    job.validate()?;
    if kairos_agent::EXECUTORS.contains(&job.executor.as_str()) {
        return kairos_agent::validate(&job.executor, &job.executor_config)
            .map_err(|e| ApiError::bad_request(e.to_string()));
    }
    let mut plugins: std::collections::BTreeSet<String> = node.config.plugins.names().map(str::to_string).collect();
    for member in node.membership.alive() {
        let listed = member.executors.unwrap_or_default();
        plugins.extend(listed.into_iter().filter(|e| !kairos_agent::EXECUTORS.contains(&e.as_str())));
    }
    if plugins.contains(&job.executor) {
        return Ok(());
    }
    let known = kairos_agent::EXECUTORS.iter().map(|e| e.to_string()).chain(plugins).collect::<Vec<_>>().join(", ");
    Err(ApiError::bad_request(format!(
        "executor: unknown executor '{}'; known: {known} (plugins count when a live node has them)",
        job.executor
    )))
}

/// How often a read-modify-write (toggle, patch) re-reads and retries when another write changed the job between
/// its read and its apply. Each conflict means some other write succeeded, so a few attempts are plenty.
const CONFLICT_ATTEMPTS_MAX: u32 = 5;

/// Store a validated job and answer it from what its own Raft entry applied, never from a later read (a delete
/// that lands right after must not turn an acknowledged write into an error). `expect_version`: see
/// [`Command::PutJob`].
async fn store(node: &Node, job: Job, expect_version: Option<u64>) -> Result<Job, ApiError> {
    check(node, &job)?;
    let now = Timestamp::now();
    let response = node.submit(Command::PutJob { job: Box::new(job), now, expect_version }).await?;
    let job = response.job.ok_or_else(|| ApiError::internal("a put applied without answering the job"))?;
    let record = JobRecord { job, cursor: response.cursor, active: 0, stored: 0, version: 0, missed_at: None };
    Ok(view(record, now))
}

async fn save(node: &Node, job: Job, params: &Params, location: String) -> ApiResult {
    let job = store(node, job, None).await?;
    created(node, job, params, &location).await
}

/// The answer to a stored job: 201 with the job and its `Location`, after deciding a run if `?runoncreate`.
async fn created(node: &Node, job: Job, params: &Params, location: &str) -> ApiResult {
    if params.contains_key("runoncreate") {
        node.submit(Command::Fire { fires: vec![manual_fire(&job.name)] }).await?;
    }
    let mut response = reply(StatusCode::CREATED, &job, params);
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Read a job, change it, and store it over the version read; on a conflict, read again and retry.
async fn read_modify_write(
    node: &Node,
    name: &str,
    change: impl Fn(Option<Job>) -> Result<Job, ApiError>,
) -> Result<Job, ApiError> {
    let mut attempt = 1;
    loop {
        let record = node.state.job(name)?;
        let version = record.as_ref().map_or(0, |r| r.version);
        let job = change(record.map(|r| r.job))?;
        match store(node, job, Some(version)).await {
            Err(err) if err.status == StatusCode::CONFLICT && attempt < CONFLICT_ATTEMPTS_MAX => attempt += 1,
            other => return other,
        }
    }
}

fn manual_fire(job: &str) -> Fire {
    Fire { job: job.to_string(), scheduled_at: Timestamp::now(), trigger: Trigger::Manual }
}

/// `POST /v1/jobs`: create, or replace an existing job with the body (absent fields take their defaults).
pub async fn create_or_update(
    State(node): State<AppState>,
    Query(params): Query<Params>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    refuse_if_paused(&node)?;
    let job = Job::from_input(JobInput::from_json(&body)?)?;
    let location = format!("/v1/jobs/{}", job.name);
    save(&node, job, &params, location).await
}

/// `PUT /v1/jobs/{job}`: the same with the name taken from the path (a name in the body must agree).
pub async fn put(
    State(node): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    refuse_if_paused(&node)?;
    let mut input = JobInput::from_json(&body)?;
    match &input.name {
        Some(n) if n != &name => {
            return Err(ApiError::bad_request(format!("name: '{n}' in the body differs from '{name}' in the path")));
        }
        _ => input.name = Some(name.clone()),
    }
    let job = Job::from_input(input)?;
    save(&node, job, &params, format!("/v1/jobs/{name}")).await
}

/// `PATCH /v1/jobs`: change only the fields present in the body; creates the job when it does not exist.
pub async fn patch(State(node): State<AppState>, Query(params): Query<Params>, JsonBody(body): JsonBody) -> ApiResult {
    refuse_if_paused(&node)?;
    let input = JobInput::from_json(&body)?;
    let name = input.name.clone().unwrap_or_default();
    kairos_model::job::validate_name(&name)?;
    let job = read_modify_write(&node, &name, |stored| match stored {
        Some(mut job) => {
            job.apply(input.clone())?;
            Ok(job)
        }
        None => Ok(Job::from_input(input.clone())?),
    })
    .await?;
    created(&node, job, &params, &format!("/v1/jobs/{name}")).await
}

pub async fn show(State(node): State<AppState>, Path(name): Path<String>, Query(params): Query<Params>) -> ApiResult {
    let record = node.state.job(&name)?.ok_or_else(|| job_not_found(&name))?;
    Ok(reply(StatusCode::OK, &view(record, Timestamp::now()), &params))
}

pub fn job_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("job '{name}' not found"))
}

pub async fn delete(State(node): State<AppState>, Path(name): Path<String>, Query(params): Query<Params>) -> ApiResult {
    let response = node.submit(Command::DeleteJob { name: name.clone() }).await?;
    let job = response.job.ok_or_else(|| job_not_found(&name))?;
    Ok(reply(StatusCode::OK, &super::dkron_job(job), &params))
}

/// `POST /v1/jobs/{job}` and `/run`: decide a manual run now and answer 202 without waiting for it.
pub async fn run(State(node): State<AppState>, Path(name): Path<String>, Query(params): Query<Params>) -> ApiResult {
    let record = node.state.job(&name)?.ok_or_else(|| job_not_found(&name))?;
    node.submit(Command::Fire { fires: vec![manual_fire(&name)] }).await?;
    Ok(reply(StatusCode::ACCEPTED, &view(record, Timestamp::now()), &params))
}

pub async fn toggle(State(node): State<AppState>, Path(name): Path<String>, Query(params): Query<Params>) -> ApiResult {
    let job = read_modify_write(&node, &name, |stored| {
        let mut job = stored.ok_or_else(|| job_not_found(&name))?;
        job.disabled = !job.disabled;
        Ok(job)
    })
    .await?;
    Ok(reply(StatusCode::OK, &job, &params))
}

/// `POST /v1/restore`: a JSON array of jobs, as a multipart `file` field (Dkron) or as a JSON body.
/// Every job is validated (parents may come from the same file) before any is stored. The answer is Dkron's: a
/// JSON string holding a JSON array of `"success create <name>"` lines (all of them, since nothing is stored
/// unless every job is valid).
pub async fn restore(State(node): State<AppState>, Query(params): Query<Params>, request: Request) -> ApiResult {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let body = if is_multipart {
        super::guard::refuse_announced_too_large(request.headers())?;
        let too_slow = super::guard::BODY_READ_TIMEOUT;
        tokio::time::timeout(too_slow, multipart_file(request)).await.map_err(|_| super::guard::body_too_slow())??
    } else if is_json(request.headers()) {
        read_body(request, &()).await?
    } else {
        return Err(not_json(request.headers(), ", or as the 'file' part of a multipart/form-data form"));
    };
    let inputs: Vec<serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body: not a JSON array of jobs: {e}")))?;
    let mut jobs = Vec::with_capacity(inputs.len());
    for (i, value) in inputs.into_iter().enumerate() {
        let input = JobInput::from_value(value).map_err(|e| ApiError::bad_request(format!("[{i}].{e}")))?;
        let job = Job::from_input(input).map_err(|e| ApiError::bad_request(format!("[{i}].{e}")))?;
        check(&node, &job).map_err(|e| ApiError::bad_request(format!("[{i}].{}", e.message)))?;
        jobs.push(job);
    }
    let jobs = parents_first(jobs, &node)?;
    let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    node.submit(Command::RestoreJobs { jobs, now: Timestamp::now() }).await?;
    let lines: Vec<String> = names.iter().map(|name| format!("success create {name}")).collect();
    let encoded = serde_json::to_string(&lines).map_err(ApiError::internal)?;
    Ok(reply(StatusCode::OK, &encoded, &params))
}

/// The `file` part of Dkron's multipart restore form; 404 when there is none, as in Dkron.
async fn multipart_file(request: Request) -> Result<axum::body::Bytes, ApiError> {
    let mut form = Multipart::from_request(request, &()).await.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut file = None;
    while let Some(field) = form.next_field().await.map_err(|e| ApiError::new(e.status(), e.body_text()))? {
        if field.name() == Some("file") {
            file =
                Some(field.bytes().await.map_err(|e| ApiError::new(e.status(), format!("file: {}", e.body_text())))?);
        }
    }
    file.ok_or_else(|| ApiError::not_found("file: the multipart form has no 'file' part"))
}

/// Order jobs so every parent comes before its children; a parent must be in the file or already stored.
fn parents_first(mut pending: Vec<Job>, node: &Node) -> Result<Vec<Job>, ApiError> {
    let mut ordered: Vec<Job> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for job in pending {
            let ready = job.parent_job.is_empty()
                || ordered.iter().any(|j| j.name == job.parent_job)
                || node.state.job(&job.parent_job)?.is_some();
            if ready { ordered.push(job) } else { rest.push(job) }
        }
        if rest.len() == before {
            let names: Vec<&str> = rest.iter().map(|j| j.name.as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "parent_job: jobs {} name parents that are neither stored nor in the file (or form a cycle)",
                names.join(", ")
            )));
        }
        pending = rest;
    }
    Ok(ordered)
}

/// `GET /v1/jobs`: Dkron's filters (`q`, `metadata[k]=v`, `status`, `disabled`) plus `executor` and `tags[k]=v`,
/// sorted by `_sort`/`_order` and paged by `_start`/`_end`, with the filtered count in `X-Total-Count`.
///
/// Without filters in name order only the page is read from the store. Otherwise every job is visited once, only
/// the matching records are kept, and `next` (which needs the schedule parsed) is derived for the page alone
/// unless the list is sorted by it. With ACL, only the jobs the caller may read (`read` on `/v1/jobs/<name>`) are
/// listed, and `X-Total-Count` counts only those.
pub async fn list(
    State(node): State<AppState>,
    caller: Option<Extension<Caller>>,
    Query(params): Query<Params>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let caller = caller.map_or_else(Caller::anyone, |Extension(caller)| caller);
    let filter = JobFilter::parse(&params, raw.as_deref().unwrap_or(""))?;
    let sort = params.get("_sort").map(String::as_str).filter(|s| !s.is_empty()).unwrap_or("name");
    let key = sort_key(sort)?;
    let desc = descending(&params, false)?;
    let now = Timestamp::now();
    let reader = node.state.clone();
    if filter.is_empty() && matches!(sort, "name" | "id") && caller.unrestricted() {
        let total = reader.job_count()? as usize;
        let (start, end) = page_bounds(&params, total)?;
        let (page, _) = tokio::task::block_in_place(|| reader.job_page(start, end, desc))?;
        let jobs: Vec<Job> = page.into_iter().map(|record| view(record, now)).collect();
        return Ok(reply_list(&jobs, total, &params));
    }
    let mut records = Vec::new();
    tokio::task::block_in_place(|| {
        reader.for_each_job(|record| {
            if filter.matches(&record.job) && caller.may(Capability::Read, &format!("/v1/jobs/{}", record.job.name)) {
                records.push(record);
            }
            true
        })
    })?;
    if sort == "next" {
        for record in &mut records {
            record.job.next = next_fire(record, now);
        }
    }
    records.sort_by(|a, b| {
        let ord = key(&a.job, &b.job).then_with(|| a.job.name.cmp(&b.job.name));
        if desc { ord.reverse() } else { ord }
    });
    let total = records.len();
    let (start, end) = page_bounds(&params, total)?;
    let page: Vec<Job> = records.drain(start..end).map(|record| view(record, now)).collect();
    Ok(reply_list(&page, total, &params))
}

type JobOrder = fn(&Job, &Job) -> Ordering;

fn sort_key(field: &str) -> Result<JobOrder, ApiError> {
    Ok(match field {
        "id" | "name" => |a, b| a.name.cmp(&b.name),
        "displayname" => |a, b| a.displayname.cmp(&b.displayname),
        "schedule" => |a, b| a.schedule.cmp(&b.schedule),
        "status" => |a, b| a.status.cmp(&b.status),
        "next" => |a, b| a.next.cmp(&b.next),
        "success_count" => |a, b| a.success_count.cmp(&b.success_count),
        "error_count" => |a, b| a.error_count.cmp(&b.error_count),
        "last_success" => |a, b| a.last_success.cmp(&b.last_success),
        "last_error" => |a, b| a.last_error.cmp(&b.last_error),
        "owner" => |a, b| a.owner.cmp(&b.owner),
        "executor" => |a, b| a.executor.cmp(&b.executor),
        "disabled" => |a, b| a.disabled.cmp(&b.disabled),
        "created_at" => |a, b| a.created_at.cmp(&b.created_at),
        other => {
            return Err(ApiError::bad_request(format!(
                "_sort: cannot sort jobs by '{other}' (name, displayname, schedule, status, next, success_count, \
                 error_count, last_success, last_error, owner, executor, disabled, created_at)"
            )));
        }
    })
}

/// Which jobs a list shows; the API and the UI build it from their own query syntax and share its meaning.
#[derive(Default)]
pub struct JobFilter {
    /// Lowercase substring of the name or display name.
    pub query: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    /// `success`, `failed`, `running` or `untriggered`.
    pub status: Option<String>,
    pub disabled: Option<bool>,
    pub executor: Option<String>,
}

impl JobFilter {
    pub fn is_empty(&self) -> bool {
        self.query.is_none()
            && self.metadata.is_empty()
            && self.tags.is_empty()
            && self.status.is_none()
            && self.disabled.is_none()
            && self.executor.is_none()
    }

    fn parse(params: &Params, raw: &str) -> Result<JobFilter, ApiError> {
        let disabled = match params.get("disabled").map(String::as_str) {
            None | Some("") => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(ApiError::bad_request(format!("disabled: '{other}' is not true or false")));
            }
        };
        let status = params.get("status").filter(|s| !s.is_empty()).cloned();
        if let Some(s) = &status
            && !["success", "failed", "running", "untriggered"].contains(&s.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "status: '{s}' is not one of success, failed, running, untriggered"
            )));
        }
        Ok(JobFilter {
            query: params.get("q").filter(|q| !q.is_empty()).map(|q| q.to_lowercase()),
            metadata: bracketed(raw, "metadata"),
            tags: bracketed(raw, "tags"),
            status,
            disabled,
            executor: params.get("executor").filter(|e| !e.is_empty()).cloned(),
        })
    }

    pub fn matches(&self, job: &Job) -> bool {
        if let Some(q) = &self.query
            && !job.name.contains(q.as_str())
            && !job.displayname.to_lowercase().contains(q.as_str())
        {
            return false;
        }
        if let Some(status) = &self.status {
            let actual = if job.status.is_empty() { "untriggered" } else { job.status.as_str() };
            if actual != status {
                return false;
            }
        }
        self.disabled.is_none_or(|d| d == job.disabled)
            && self.executor.as_ref().is_none_or(|e| e == &job.executor)
            && self.metadata.iter().all(|(k, v)| job.metadata.get(k) == Some(v))
            && self.tags.iter().all(|(k, v)| job.tags.get(k) == Some(v))
    }
}

/// Pairs from `name[key]=value` query parameters (Dkron's `metadata[k]=v`).
fn bracketed(raw: &str, name: &str) -> Vec<(String, String)> {
    let prefix = format!("{name}[");
    form_pairs(raw)
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(&prefix)?.strip_suffix(']')?.to_string();
            Some((key, v))
        })
        .collect()
}

fn form_pairs(raw: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(raw.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// Shared by the executions routes: the job must exist.
pub fn require_job(node: &Node, name: &str) -> Result<JobRecord, ApiError> {
    node.state.job(name)?.ok_or_else(|| job_not_found(name))
}
