//! Access control at the edge: with `--acl-enabled`, every request to the API and the UI must carry a token
//! (`X-Dkron-Token: <secret>`, Dkron's header, or `Authorization: Bearer <secret>`) whose policies grant what the
//! request does to its path. This is the one place it is checked; routes only see the [`Caller`] it resolved
//! (the jobs list uses it to show only what the caller may read).
//!
//! - No token, an unknown one or an expired one: 401. A token whose policies do not allow it: 403 naming the
//!   capability and the path. A malformed header (not a secret we could have issued): 400 naming the header.
//! - Open without a token: `GET /health`, `POST /v1/acl/bootstrap` (which works only until it happened once), and
//!   the UI's sign-in page and static assets. A UI page opened without a valid token redirects to the sign-in
//!   page, whose cookie (`HttpOnly`, `SameSite=Strict`) is accepted like the header.
//! - `/v1/acl/…` (tokens and policies) needs a management token; a management token may do everything.
//! - The capability a request needs follows from its method and path ([`requirement`]): GET on a collection is
//!   `list`, on anything else `read`; POST is `create`; PUT and PATCH are `update`; DELETE is `delete`. Writing a
//!   job through `POST`/`PATCH /v1/jobs` is checked against the job's own path, `/v1/jobs/<name>` from the body:
//!   `create` when no such job exists yet, `update` when it does (both are upserts; so is `PUT /v1/jobs/<name>`,
//!   checked the same way).
//!
//! Tokens are read from this server's copy of the replicated state, so every server decides the same way (a
//! token created a moment ago on another server works here once this server applied it, milliseconds later).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use kairos_model::Timestamp;
use kairos_model::acl::{Access, Capability, is_uuid, secret_hash};

use super::{ApiError, AppState};

/// The cookie the UI's sign-in sets (`HttpOnly`, `SameSite=Strict`), holding a token's secret; accepted here like
/// the header.
pub const SIGNIN_COOKIE: &str = "kairos_token";

/// Who made a request, as the audit log records it: the edge puts it in the answer's extensions.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's name, or `anonymous` (ACL off), or `unauthenticated` (no valid token).
    pub token: String,
    pub accessor_id: Option<String>,
}

impl Identity {
    fn named(token: &str) -> Identity {
        Identity { token: token.to_owned(), accessor_id: None }
    }
}

/// The identity a request was let through with.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None` when ACL is disabled: anyone may do anything.
    access: Option<Arc<Access>>,
}

impl Caller {
    pub fn anyone() -> Caller {
        Caller { access: None }
    }

    /// Whether the caller may do `capability` to `path`.
    pub fn may(&self, capability: Capability, path: &str) -> bool {
        self.access.as_ref().is_none_or(|access| access.allows(capability, path))
    }

    /// Whether the caller may do everything (ACL off, or a management token): lists need no filtering then.
    pub fn unrestricted(&self) -> bool {
        self.access.as_ref().is_none_or(|access| access.management)
    }
}

fn is_page(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// Collections: a GET on these lists (`list`); a GET on anything else reads (`read`).
fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["v1", "jobs"]
            | ["v1", "jobs", _, "executions"]
            | ["v1", "members"]
            | ["v1", "busy"]
            | ["v1", "acl", "tokens"]
            | ["v1", "acl", "policies"]
            | ["v1", "secrets"]
    )
}

/// The middleware: resolve the token, check the request against its policies, hand the [`Caller`] on; the answer
/// carries the [`Identity`] the request was made with, for the audit log.
pub async fn authorize(State(node): State<AppState>, request: Request, next: Next) -> Response {
    let (mut response, identity) = check(&node, request, next).await;
    response.extensions_mut().insert(identity);
    response
}

async fn check(node: &AppState, mut request: Request, next: Next) -> (Response, Identity) {
    if !node.config.acl_enabled {
        request.extensions_mut().insert(Caller::anyone());
        return (next.run(request).await, Identity::named(kairos_model::audit::ANONYMOUS));
    }
    let unauthenticated = Identity::named(kairos_model::audit::UNAUTHENTICATED);
    let path = match canonical_path(request.uri().path()) {
        Ok(path) => path,
        Err(err) => return (err.into_response(), unauthenticated),
    };
    let open = (path == "/health" && request.method() == Method::GET)
        || path == "/v1/acl/bootstrap"
        || path == "/ui/signin"
        || path == "/ui/signout"
        || path.starts_with("/ui/assets/")
        || request.method() == Method::OPTIONS;
    if open {
        request.extensions_mut().insert(Caller::anyone());
        return (next.run(request).await, unauthenticated);
    }
    let (access, identity) = match resolve(node, request.headers()) {
        Ok(resolved) => resolved,
        // A person opening a page without a valid token is sent to the sign-in page.
        Err(err) if err.status == StatusCode::UNAUTHORIZED && is_page(&path) && request.method() == Method::GET => {
            return (Redirect::to("/ui/signin").into_response(), unauthenticated);
        }
        Err(err) => return (challenge(err), unauthenticated),
    };
    if path.starts_with("/v1/acl/") && !access.management {
        return (forbidden(format!("'{path}' (ACL tokens and policies) needs a management token")), identity);
    }
    let (needed, request_path, mut request) = match requirement(node, request, &path).await {
        Ok(needed) => needed,
        Err(err) => return (err.into_response(), identity),
    };
    let allowed = match needed {
        // A job-glob token may list /v1/jobs: the list shows only the jobs it may read. (Other lists are not
        // filtered, so they need `list` on their own path.)
        Capability::List if request_path == "/v1/jobs" => access.allows_within(Capability::List, &request_path),
        other => access.allows(other, &request_path),
    };
    if !allowed {
        return (forbidden(format!("the token's policies do not grant '{needed}' on '{request_path}'")), identity);
    }
    request.extensions_mut().insert(Caller { access: Some(Arc::new(access)) });
    (next.run(request).await, identity)
}

/// A refused token's answer; a 401 says how to authenticate (RFC 6750).
fn challenge(err: ApiError) -> Response {
    let unauthorized = err.status == StatusCode::UNAUTHORIZED;
    let mut response = err.into_response();
    if unauthorized {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"kairos\""));
    }
    response
}

fn forbidden(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, format!("permission denied: {message}")).into_response()
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// The secret a request carries: `X-Dkron-Token`, `Authorization: Bearer`, or the UI's sign-in cookie
/// ([`SIGNIN_COOKIE`]). `Ok(None)` when it carries none.
fn secret_of(headers: &HeaderMap) -> Result<Option<(&'static str, String)>, ApiError> {
    let text = |name: &'static str| -> Result<Option<String>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(|v| Some(v.trim().to_string()))
                .map_err(|_| ApiError::bad_request(format!("{name}: not readable text"))),
        }
    };
    if let Some(secret) = text("x-dkron-token")? {
        return Ok(Some(("X-Dkron-Token", secret)));
    }
    let Some(authorization) = text(header::AUTHORIZATION.as_str())? else {
        return Ok(signin_cookie(headers).map(|secret| ("Cookie", secret)));
    };
    let (scheme, secret) = authorization.split_once(' ').unwrap_or((&authorization, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::bad_request("Authorization: only 'Bearer <secret>' is accepted"));
    }
    Ok(Some(("Authorization", secret.trim().to_string())))
}

fn signin_cookie(headers: &HeaderMap) -> Option<String> {
    let prefix = format!("{SIGNIN_COOKIE}=");
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(&prefix).map(str::to_string))
        .filter(|secret| !secret.is_empty())
}

/// The token of a request: what it may do, and who it is.
fn resolve(node: &AppState, headers: &HeaderMap) -> Result<(Access, Identity), ApiError> {
    let Some((header_name, secret)) = secret_of(headers)? else {
        return Err(unauthorized(
            "token: none given; ACL is enabled: send a token's secret in X-Dkron-Token or Authorization: Bearer",
        ));
    };
    if !is_uuid(&secret) {
        return Err(ApiError::bad_request(format!("{header_name}: malformed token; a secret is a UUID")));
    }
    let token = node.state.acl_token_by_secret(&secret_hash(&secret))?;
    let Some(token) = token else {
        return Err(unauthorized("token: unknown (never issued, or deleted)"));
    };
    if token.expired(Timestamp::now()) {
        let at = token.expiration_time.map(|t| t.to_string()).unwrap_or_default();
        return Err(unauthorized(format!("token: expired at {at}")));
    }
    let state = node.state.clone();
    let identity = Identity { token: token.name.clone(), accessor_id: Some(token.accessor_id.clone()) };
    Ok((Access::of(&token, |name| state.acl_policy(name).ok().flatten()), identity))
}

/// The capability a request needs and the path it is checked on. `POST`/`PATCH /v1/jobs` name the job in the
/// body, so the body is read here (within the same limits as the routes) and handed on unchanged.
async fn requirement(node: &AppState, request: Request, path: &str) -> Result<(Capability, String, Request), ApiError> {
    let method = request.method().clone();
    let capability = match method {
        Method::GET | Method::HEAD if is_collection(path) => Capability::List,
        Method::GET | Method::HEAD => Capability::Read,
        Method::POST => Capability::Create,
        Method::PUT | Method::PATCH => Capability::Update,
        Method::DELETE => Capability::Delete,
        _ => Capability::Read,
    };
    if method == Method::PUT
        && let Some(name) = path.strip_prefix("/v1/jobs/").filter(|name| !name.contains('/'))
    {
        // `PUT /v1/jobs/{job}` creates or replaces, as `POST /v1/jobs` does.
        return Ok((upsert(node, name)?, path.to_string(), request));
    }
    if method == Method::PUT
        && let Some(name) = path.strip_prefix("/v1/secrets/").filter(|name| !name.contains('/'))
    {
        // `PUT /v1/secrets/{name}` creates or replaces.
        let exists = node.state.secrets()?.iter().any(|s| s.name == name);
        let capability = if exists { Capability::Update } else { Capability::Create };
        return Ok((capability, path.to_string(), request));
    }
    let names_job_in_body = path == "/v1/jobs" && matches!(method, Method::POST | Method::PATCH);
    if !names_job_in_body || !super::guard::is_json(request.headers()) {
        return Ok((capability, path.to_string(), request));
    }
    let (parts, body) = request.into_parts();
    let bytes = super::guard::read_body(Request::from_parts(parts.clone(), body), &()).await?;
    let name = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|job| job.get("name").and_then(|n| n.as_str()).map(str::to_string));
    let request = Request::from_parts(parts, Body::from(bytes));
    let Some(name) = name else {
        // The route refuses a body without a name; only a token that may create anything under /v1/jobs gets
        // to hear why.
        return Ok((capability, path.to_string(), request));
    };
    Ok((upsert(node, &name)?, format!("/v1/jobs/{name}"), request))
}

/// A write that creates the job if it is missing and replaces (or patches) it otherwise: `create` for a new
/// name, `update` for an existing one.
fn upsert(node: &AppState, name: &str) -> Result<Capability, ApiError> {
    Ok(if node.state.job(name)?.is_some() { Capability::Update } else { Capability::Create })
}

/// The path policies are matched against: percent-decoded, without a trailing slash (routes answer with and
/// without one). Dot segments and encoded slashes are refused, so a path can never match one glob and reach
/// another route.
fn canonical_path(raw: &str) -> Result<String, ApiError> {
    let refuse = || ApiError::bad_request("path: dot segments and encoded '/' are not accepted");
    if raw.to_ascii_lowercase().contains("%2f") {
        return Err(refuse());
    }
    let decoded = percent_decode(raw).ok_or_else(|| ApiError::bad_request("path: invalid percent-encoding"))?;
    if decoded.split('/').any(|segment| segment == "." || segment == "..") {
        return Err(refuse());
    }
    let trimmed = decoded.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(&decoded);
    Ok(trimmed.to_string())
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_are_listed_and_items_read() {
        assert!(is_collection("/v1/jobs"));
        assert!(is_collection("/v1/jobs/a/executions"));
        assert!(is_collection("/v1/acl/tokens"));
        assert!(!is_collection("/v1/jobs/a"));
        assert!(!is_collection("/v1/jobs/a/executions/1"));
        assert!(!is_collection("/v1/leader"));
    }

    #[test]
    fn paths_are_decoded_and_dot_segments_refused() {
        assert_eq!(canonical_path("/v1/jobs/").unwrap(), "/v1/jobs");
        assert_eq!(canonical_path("/").unwrap(), "/");
        assert_eq!(canonical_path("/v1/jobs/team%2Da-x").unwrap(), "/v1/jobs/team-a-x");
        assert!(canonical_path("/v1/jobs/team-a-x/../other").is_err());
        assert!(canonical_path("/v1/jobs/%2e%2e/x").is_err());
        assert!(canonical_path("/v1/jobs/team-a-%2Fx").is_err());
        assert!(canonical_path("/v1/jobs/%zz").is_err());
    }

    #[test]
    fn the_secret_comes_from_either_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(secret_of(&headers).unwrap(), None);
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(secret_of(&headers).unwrap(), Some(("Authorization", "abc".to_string())));
        headers.insert("x-dkron-token", "def".parse().unwrap());
        assert_eq!(secret_of(&headers).unwrap(), Some(("X-Dkron-Token", "def".to_string())));
        let mut cookie = HeaderMap::new();
        cookie.insert("cookie", "theme=dark; kairos_token=ghi".parse().unwrap());
        assert_eq!(secret_of(&cookie).unwrap(), Some(("Cookie", "ghi".to_string())));
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic Zm9v".parse().unwrap());
        assert_eq!(secret_of(&basic).unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
