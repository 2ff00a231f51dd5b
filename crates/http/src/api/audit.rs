//! The audit log at the edge: every write request (any method but GET, HEAD and OPTIONS) to the API or the UI is
//! recorded as its answer goes out, refusals included: when, who (the token's name and accessor, `anonymous` with
//! ACL off, `unauthenticated` without a valid token), from which address, method, path, the job it names, and the
//! status. The server's [`kairos_server::audit::AuditLog`] commits the records through Raft. `GET /v1/audit` reads
//! them back, newest first.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use kairos_model::Timestamp;
use kairos_model::audit::{AuditFilter, AuditRecord, UNAUTHENTICATED, job_of_path};

use super::auth::Identity;
use super::{ApiError, ApiResult, AppState, Params, page_bounds, reply_list};

/// The middleware: outside every other layer, so it sees the final status and the identity access control found.
pub async fn record(State(node): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let audited = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && (path.starts_with("/v1/") || path.starts_with("/ui/"));
    if !audited {
        return next.run(request).await;
    }
    let method = request.method().as_str().to_owned();
    let client = request.extensions().get::<ConnectInfo<SocketAddr>>().map_or_else(String::new, |c| c.0.to_string());
    let response = next.run(request).await;
    let identity = response.extensions().get::<Identity>().cloned();
    // A job created through `POST`/`PATCH /v1/jobs` is named by the answer's `Location`.
    let location = response.headers().get(axum::http::header::LOCATION).and_then(|l| l.to_str().ok());
    let job = job_of_path(&path).or_else(|| location.and_then(job_of_path));
    let (token, accessor_id) = match identity {
        Some(identity) => (identity.token, identity.accessor_id),
        None => (UNAUTHENTICATED.to_owned(), None),
    };
    node.audit.record(AuditRecord {
        seq: 0,
        at: Timestamp::now(),
        token,
        accessor_id,
        client,
        node: node.config.node_name.clone(),
        method,
        job,
        path,
        status: response.status().as_u16(),
    });
    response
}

/// `GET /v1/audit`: records newest first, filtered by `token` (name or accessor id), `job`, `since` and `until`
/// (RFC 3339; `until` exclusive), paged by `_start`/`_end`, with the filtered count in `X-Total-Count`.
pub async fn list(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    let text = |key: &str| params.get(key).filter(|v| !v.is_empty()).cloned();
    let instant = |key: &str| -> Result<Option<Timestamp>, ApiError> {
        text(key)
            .map(|v| {
                v.parse::<Timestamp>()
                    .map_err(|e| ApiError::bad_request(format!("{key}: '{v}' is not an RFC 3339 instant: {e}")))
            })
            .transpose()
    };
    let filter =
        AuditFilter { token: text("token"), job: text("job"), since: instant("since")?, until: instant("until")? };
    // Bounds are checked against the largest possible total first, then the page is cut from the real one.
    let (start, end) = page_bounds(&params, usize::MAX)?;
    let reader = node.state.clone();
    let (records, total) = tokio::task::block_in_place(|| reader.audit(&filter, start, end))?;
    Ok(reply_list(&records, total, &params))
}
