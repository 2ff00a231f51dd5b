//! The HTTP API: Dkron's `/v1` routes with the same paths, fields and success codes, plus our additions
//! (execution cancel, schedule preview, the OpenAPI document).
//!
//! The API never touches disk: reads go through the store's [`StateReader`](kairos_store::StateReader) snapshot,
//! writes become [`Command`](kairos_store::Command)s proposed through Raft by the [`Node`]. Every error is a JSON
//! body `{"error": "..."}` naming the field and the problem, with 400 for invalid input, 404 for unknown names and
//! 409 for conflicts. The router is built from one route table ([`routes`]) that the OpenAPI document is checked
//! against, so the two cannot drift apart.

pub mod acl;
pub mod audit;
pub mod auth;
pub mod executions;
pub mod guard;
pub mod jobs;
pub mod openapi;
pub mod secrets;
pub mod stats;
mod system;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use kairos_model::FieldError;
use kairos_store::Refusal;
use serde::Serialize;

use kairos_server::node::Node;
use kairos_server::{Failure, WriteError};

pub type AppState = Arc<Node>;

/// Largest request body accepted (a job, or a restore file of many jobs).
pub const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// One documented route: its path (OpenAPI syntax), the methods it answers, and the handlers.
pub struct Route {
    pub path: &'static str,
    pub methods: &'static [&'static str],
    pub handler: MethodRouter<AppState>,
}

/// Every route the API serves. The router is built from this table and a test checks it against the document.
pub fn routes() -> Vec<Route> {
    fn route(path: &'static str, methods: &'static [&'static str], handler: MethodRouter<AppState>) -> Route {
        Route { path, methods, handler }
    }
    vec![
        route("/health", &["get"], get(system::health)),
        route("/v1", &["get"], get(system::index)),
        route("/v1/members", &["get"], get(system::members)),
        route("/v1/leader", &["get"], get(system::leader)),
        route("/v1/isleader", &["get"], get(system::is_leader)),
        route("/v1/busy", &["get"], get(system::busy)),
        route("/v1/pause", &["get", "post"], get(system::pause_status).post(system::pause)),
        route("/v1/unpause", &["post"], post(system::unpause)),
        route("/v1/leave", &["post"], post(system::leave)),
        route("/v1/restore", &["post"], post(jobs::restore)),
        route("/v1/schedule/preview", &["get"], get(system::preview)),
        route("/v1/stats", &["get"], get(stats::serve)),
        route("/v1/openapi.json", &["get"], get(openapi::serve)),
        route("/v1/jobs", &["get", "post", "patch"], get(jobs::list).post(jobs::create_or_update).patch(jobs::patch)),
        route(
            "/v1/jobs/{job}",
            &["get", "put", "post", "delete"],
            get(jobs::show).put(jobs::put).post(jobs::run).delete(jobs::delete),
        ),
        route("/v1/jobs/{job}/run", &["post"], post(jobs::run)),
        route("/v1/jobs/{job}/toggle", &["post"], post(jobs::toggle)),
        route("/v1/jobs/{job}/executions", &["get", "delete"], get(executions::list).delete(executions::delete_all)),
        route("/v1/jobs/{job}/executions/{execution}", &["get"], get(executions::show)),
        route("/v1/jobs/{job}/executions/{execution}/cancel", &["post"], post(executions::cancel)),
        route("/v1/jobs/{job}/executions/{execution}/output", &["get"], get(executions::output)),
        route("/v1/acl/bootstrap", &["post"], post(acl::bootstrap)),
        route("/v1/acl/tokens", &["get", "post"], get(acl::list_tokens).post(acl::create_token)),
        route(
            "/v1/acl/tokens/{accessor}",
            &["get", "post", "delete"],
            get(acl::show_token).post(acl::update_token).delete(acl::delete_token),
        ),
        route("/v1/acl/policies", &["get", "post"], get(acl::list_policies).post(acl::put_policy)),
        route(
            "/v1/acl/policies/{name}",
            &["get", "post", "delete"],
            get(acl::show_policy).post(acl::put_named_policy).delete(acl::delete_policy),
        ),
        route("/v1/secrets", &["get"], get(secrets::list)),
        route("/v1/audit", &["get"], get(audit::list)),
        route(
            "/v1/secrets/{name}",
            &["get", "put", "delete"],
            get(secrets::show).put(secrets::put).delete(secrets::delete),
        ),
    ]
}

/// The API (and the UI's `pages`, when given) with its edge layers: errors as JSON, CORS for allowed origins, refusal
/// of forged cross-site writes, access control (`--acl-enabled`, [`auth`]), `?consistent` reads, and the body size
/// limit. Every route also answers with a
/// trailing slash (`/v1/`, `/v1/jobs/`), as Dkron does.
pub fn router(node: AppState, pages: Option<Router<AppState>>) -> Router {
    let mut router = Router::new();
    for route in routes() {
        let allowed = route.methods.join(", ").to_uppercase();
        let handler = route.handler.fallback(move || async move {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("method not allowed here; allowed: {allowed}"))
        });
        router = router.route(&format!("{}/", route.path), handler.clone()).route(route.path, handler);
    }
    if let Some(pages) = pages {
        router = router.merge(pages);
    }
    if node.config.enable_prometheus {
        router = router.route("/metrics", axum::routing::get(metrics));
    }
    // Counted per route template (bounded), only for requests that matched a route.
    let router = router.route_layer(axum::middleware::from_fn(record_request));
    let allowed = Arc::new(guard::AllowedOrigins(node.config.cors_allowed_origins.clone()));
    let cors = guard::cors(&allowed);
    let router = router
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(node.clone(), linearizable_reads))
        .layer(axum::middleware::from_fn_with_state(node.clone(), auth::authorize))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(allowed, guard::cross_site));
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .layer(axum::middleware::from_fn(guard::errors))
        .layer(axum::middleware::from_fn_with_state(node.clone(), audit::record))
        .with_state(node)
}

/// `GET /metrics` (`--enable-prometheus`): this server's metrics in the Prometheus text format.
async fn metrics(axum::extract::State(node): axum::extract::State<AppState>) -> Response {
    let text = node.metrics_text().await;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Count a request and time it, by its route template (`/v1/jobs/{job}`, never the path itself).
async fn record_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use kairos_server::metrics::{RequestLabels, RouteLabel, metrics};
    let route = request.extensions().get::<axum::extract::MatchedPath>().map_or("other", |p| p.as_str()).to_string();
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other", // a client's invented method must not add series
    }
    .to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let m = metrics();
    m.http_duration.get_or_create(&RouteLabel { route: route.clone() }).observe(started.elapsed().as_secs_f64());
    let code = response.status().as_u16().to_string();
    m.http_requests.get_or_create(&RequestLabels { route, method, code }).inc();
    response
}

/// `?consistent` on any read: answer only after this server's state caught up with everything the leader had
/// committed when the request arrived (a linearizable read; served by any server). Without it, reads are served
/// from the local state, which on a follower may lag the leader by a few milliseconds.
async fn linearizable_reads(
    axum::extract::State(node): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let wants =
        request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "consistent" || p.starts_with("consistent=")));
    if wants
        && request.method() == axum::http::Method::GET
        && let Err(err) = node.read_barrier().await
    {
        return ApiError::from(err).into_response();
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// An error answer: a status and a message, rendered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> ApiError {
        ApiError::bad_request(err.to_string())
    }
}

impl From<redb::Error> for ApiError {
    fn from(err: redb::Error) -> ApiError {
        ApiError::internal(format!("store: {err}"))
    }
}

impl From<WriteError> for ApiError {
    fn from(err: WriteError) -> ApiError {
        let status = match err.failure {
            Failure::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Failure::StorageFailed => StatusCode::INSUFFICIENT_STORAGE,
            Failure::NotFound => StatusCode::NOT_FOUND,
            Failure::Conflict => StatusCode::CONFLICT,
            Failure::Invalid => StatusCode::BAD_REQUEST,
            Failure::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.message)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::NotFound(message) => ApiError::not_found(message),
            Refusal::Conflict(message) => ApiError::new(StatusCode::CONFLICT, message),
            Refusal::Invalid { field, message } => ApiError::bad_request(format!("{field}: {message}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        response.extensions_mut().insert(guard::Cause(self.message));
        response
    }
}

pub type ApiResult = Result<Response, ApiError>;

/// Query parameters as a map; repeated keys keep the last value (Dkron's behaviour).
pub type Params = HashMap<String, String>;

/// A JSON answer, indented when the request asked for `?pretty`.
pub fn reply<T: Serialize>(status: StatusCode, value: &T, params: &Params) -> Response {
    let body = if params.contains_key("pretty") { serde_json::to_vec_pretty(value) } else { serde_json::to_vec(value) };
    match body {
        Ok(body) => {
            let mut response = (status, body).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(err) => ApiError::internal(err).into_response(),
    }
}

/// A JSON list answer with Dkron's `X-Total-Count` header.
pub fn reply_list<T: Serialize>(items: &[T], total: usize, params: &Params) -> Response {
    let mut response = reply(StatusCode::OK, &items, params);
    response.headers_mut().insert("X-Total-Count", HeaderValue::from(total));
    response
}

/// Dkron's paging: `_start` (inclusive) and `_end` (exclusive) indices into the sorted, filtered list.
pub fn page_bounds(params: &Params, total: usize) -> Result<(usize, usize), ApiError> {
    let index = |key: &str, default: usize| -> Result<usize, ApiError> {
        match params.get(key) {
            None => Ok(default),
            Some(text) if text.is_empty() => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("{key}: '{text}' is not a non-negative integer"))),
        }
    };
    let start = index("_start", 0)?.min(total);
    let end = index("_end", total)?.clamp(start, total);
    Ok((start, end))
}

/// `_order`: ASC or DESC (any case); `default_desc` when absent or empty.
pub fn descending(params: &Params, default_desc: bool) -> Result<bool, ApiError> {
    // An empty value means the default, as in Dkron (its handlers read `DefaultQuery`).
    match params.get("_order").map(String::as_str).filter(|o| !o.is_empty()) {
        None => Ok(default_desc),
        Some(o) if o.eq_ignore_ascii_case("ASC") => Ok(false),
        Some(o) if o.eq_ignore_ascii_case("DESC") => Ok(true),
        Some(o) => Err(ApiError::bad_request(format!("_order: '{o}' is not ASC or DESC"))),
    }
}

/// Go's zero `time.Time`, `0001-01-01T00:00:00Z`: what Dkron's API shows in a `time.Time` field that holds no
/// instant.
pub const GO_ZERO_TIME: kairos_model::Timestamp = kairos_model::Timestamp::constant(-62_135_596_800, 0);

/// Dkron's `time.Time` fields are never `null`: a job's `next`, an execution's `started_at` and `finished_at`
/// carry [`GO_ZERO_TIME`] for "none", and clients test for it (Dkron's UI tells a running execution by
/// `finished_at == "0001-01-01T00:00:00Z"`; a script may parse every `started_at`). Only at this edge: the stored
/// records keep `None`. (`last_success`, `last_error`, `starts_at` and `expires_at` are Dkron `NullableTime`s,
/// which Dkron itself shows as `null`; they stay `null` here too.)
pub fn dkron_time(instant: Option<kairos_model::Timestamp>) -> Option<kairos_model::Timestamp> {
    Some(instant.unwrap_or(GO_ZERO_TIME))
}

/// An execution as Dkron's API shows it (see [`dkron_time`]).
pub fn dkron_execution(mut execution: kairos_model::Execution) -> kairos_model::Execution {
    execution.started_at = dkron_time(execution.started_at);
    execution.finished_at = dkron_time(execution.finished_at);
    execution
}

/// A job as Dkron's API shows it (see [`dkron_time`]).
pub fn dkron_job(mut job: kairos_model::Job) -> kairos_model::Job {
    job.next = dkron_time(job.next);
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_dkron_times_are_gos_zero_time() {
        assert_eq!(GO_ZERO_TIME.to_string(), "0001-01-01T00:00:00Z");
        let mut job = kairos_model::Job::empty("j");
        job.next = None;
        let json = serde_json::to_value(dkron_job(job)).unwrap();
        assert_eq!(json["next"], "0001-01-01T00:00:00Z");
        assert_eq!(json["last_success"], serde_json::Value::Null, "a NullableTime in Dkron: null there too");
        let at: kairos_model::Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
        let mut execution = kairos_model::Execution::decided("j", at, kairos_model::Trigger::Manual);
        execution.started_at = Some(at);
        let json = serde_json::to_value(dkron_execution(execution)).unwrap();
        assert_eq!(
            (json["started_at"].as_str(), json["finished_at"].as_str()),
            (Some("2026-03-01T10:00:00Z"), Some("0001-01-01T00:00:00Z"))
        );
        assert_eq!(json["not_before"], serde_json::Value::Null, "ours: null when unset");
    }
}
