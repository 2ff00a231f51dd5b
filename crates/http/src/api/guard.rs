//! The API's edge, which every request passes before a route sees it and every answer passes on its way out:
//! - requests a browser page of another site could forge are refused ([`cross_site`]), and pages of the origins in
//!   `--cors-allowed-origins` get CORS answers ([`cors`]);
//! - JSON bodies must say they are JSON ([`JsonBody`]), because the `Content-Type`s a page may send without a
//!   preflight (`text/plain`, forms) are exactly the ones a forged request uses;
//! - every error answer of the API is a JSON `{"error": …}`, including the framework's own (a body over the limit,
//!   an undecodable path), and every 5xx is logged with its cause ([`errors`]).
//!
//! Why Origin and Sec-Fetch-Site: a "simple" cross-site request reaches the server without the browser asking
//! first, so the server itself must tell forged from genuine. Browsers name the page's origin in `Origin` on every
//! POST, PUT, PATCH and DELETE, and modern ones say `Sec-Fetch-Site: cross-site` or `same-site` for another site or
//! another port of this host. Clients that are not browsers (curl, Dkron's Go client) send neither and pass. The
//! built-in UI is served by this same listener, so its requests are same-origin.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::error;

use super::ApiError;

/// Longest error body of the framework's own that is turned into JSON (they are one line; this is a guard).
const PLAIN_ERROR_BYTES_MAX: usize = 4096;

/// Origins allowed to call the API from a browser page (exact `scheme://host[:port]`, lowercase).
#[derive(Debug, Default)]
pub struct AllowedOrigins(pub Vec<String>);

impl AllowedOrigins {
    fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }
}

/// Refuse a state-changing request (anything but GET, HEAD and OPTIONS) that a browser sent from a page of another
/// origin, unless that origin is allowed.
pub async fn cross_site(State(allowed): State<Arc<AllowedOrigins>>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    match foreign_origin(request.headers(), &allowed) {
        None => next.run(request).await,
        Some(origin) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "origin: requests from web pages of {origin} may not change anything here; add it to \
                 --cors-allowed-origins to allow it"
            ),
        )
        .into_response(),
    }
}

/// The request's foreign origin, if a browser says it came from a page that is neither this server's nor allowed.
fn foreign_origin(headers: &HeaderMap, allowed: &AllowedOrigins) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let origin = text(header::ORIGIN.as_str());
    let fetch_site = text("sec-fetch-site");
    if let Some(origin) = origin
        && allowed.allows(origin)
    {
        return None;
    }
    // The browser's own verdict, when it gives one: another port of this host is "same-site", not "same-origin".
    if let Some(site) = fetch_site
        && matches!(site, "cross-site" | "same-site")
    {
        return Some(origin.unwrap_or("another site").to_string());
    }
    let origin = origin?;
    let host = text(header::HOST.as_str()).unwrap_or("");
    let same_origin = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| !host.is_empty() && authority.eq_ignore_ascii_case(host));
    if same_origin { None } else { Some(origin.to_string()) }
}

/// CORS answers (preflights and response headers) for the allowed origins; `None` when there are none, so no CORS
/// header is ever sent by default.
pub fn cors(allowed: &AllowedOrigins) -> Option<CorsLayer> {
    if allowed.0.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = allowed.0.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::ACCEPT,
                header::HeaderName::from_static("x-dkron-token"),
            ])
            .expose_headers([header::LOCATION, header::HeaderName::from_static("x-total-count")]),
    )
}

/// Whether a `Content-Type` names JSON: `application/json` or any `application/…+json`, parameters ignored.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The refusal of a body that does not say it is JSON.
pub fn not_json(headers: &HeaderMap, also: &str) -> ApiError {
    let sent = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("none");
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "Content-Type: '{sent}' is not JSON; send the body as application/json{also} (curl: -H 'Content-Type: application/json')"
        ),
    )
}

/// A request body that must be JSON: the `Content-Type` is checked before anything is read, and a body that
/// cannot be read (over the size limit, cut off) is a JSON error with the right status.
pub struct JsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody, ApiError> {
        if !is_json(request.headers()) {
            return Err(not_json(request.headers(), ""));
        }
        Ok(JsonBody(read_body(request, state).await?))
    }
}

/// How long a client may take to send a whole request body. Without it, a client announcing a large body and
/// then sending nothing would hold its connection (and a handler) forever: the header deadline ends when the body
/// begins.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The whole body, within the size limit ([`super::BODY_BYTES_MAX`]) and [`BODY_READ_TIMEOUT`]. A body announced
/// larger than the limit is refused before any of it is read.
pub async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    refuse_announced_too_large(request.headers())?;
    let read = Bytes::from_request(request, state);
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large()),
        Ok(Err(rejection)) => Err(ApiError::new(rejection.status(), format!("body: {}", rejection.body_text()))),
        Err(_) => Err(body_too_slow()),
    }
}

/// Refuse a body whose `Content-Length` is over the limit without reading any of it.
pub fn refuse_announced_too_large(headers: &HeaderMap) -> Result<(), ApiError> {
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|bytes| bytes > super::BODY_BYTES_MAX as u64) {
        return Err(too_large());
    }
    Ok(())
}

pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body: larger than the {} MiB limit", super::BODY_BYTES_MAX / (1024 * 1024)),
    )
}

pub fn body_too_slow() -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("body: not received within {} s", BODY_READ_TIMEOUT.as_secs()))
}

/// What an error answer was caused by, kept on the response so [`errors`] can log it.
#[derive(Clone)]
pub struct Cause(pub String);

/// Every API error answer is JSON, and every 5xx is logged with the request and its cause.
pub async fn errors(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = next.run(request).await;
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let is_json = is_json(response.headers());
    let is_page = path == "/" || path.starts_with("/ui");
    let (response, cause) = match response.extensions().get::<Cause>().cloned() {
        Some(Cause(cause)) => (response, cause),
        None if is_json || is_page => (response, format!("status {status}")),
        None => {
            // One of the framework's own plain-text rejections: keep its status and words, as JSON.
            let (parts, body) = response.into_parts();
            let text = match axum::body::to_bytes(body, PLAIN_ERROR_BYTES_MAX).await {
                Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
                Err(_) => String::new(),
            };
            let text = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
            let message = plain_error_message(status, &text);
            let mut json = ApiError::new(status, message.clone()).into_response();
            // Who made the request stays known (the audit log reads it from here).
            if let Some(identity) = parts.extensions.get::<super::auth::Identity>() {
                json.extensions_mut().insert(identity.clone());
            }
            for (name, value) in parts.headers.iter() {
                if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                    json.headers_mut().insert(name.clone(), value.clone());
                }
            }
            (json, message)
        }
    };
    if status.is_server_error() {
        error!(%method, path, status = status.as_u16(), "request failed: {cause}");
    }
    response
}

/// Name the part of the request a framework rejection is about, as the API's own errors do.
fn plain_error_message(status: StatusCode, text: &str) -> String {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large().message;
    }
    let lower = text.to_ascii_lowercase();
    let part = if lower.contains("path") {
        "path"
    } else if lower.contains("query") {
        "query"
    } else if lower.contains("body") || lower.contains("json") {
        "body"
    } else {
        return text.to_string();
    };
    format!("{part}: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn requests_without_browser_headers_are_not_foreign() {
        let none = AllowedOrigins::default();
        assert_eq!(foreign_origin(&headers(&[("host", "127.0.0.1:8080")]), &none), None);
    }

    #[test]
    fn a_page_of_this_server_is_not_foreign() {
        let none = AllowedOrigins::default();
        let same = headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]);
        assert_eq!(foreign_origin(&same, &none), None);
        let same = headers(&[
            ("host", "k.example:8080"),
            ("origin", "https://K.example:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(foreign_origin(&same, &none), None);
    }

    #[test]
    fn another_origin_or_another_port_of_this_host_is_foreign() {
        let none = AllowedOrigins::default();
        let other = headers(&[("host", "127.0.0.1:8080"), ("origin", "https://evil.example")]);
        assert_eq!(foreign_origin(&other, &none).as_deref(), Some("https://evil.example"));
        let port = headers(&[("host", "localhost:8080"), ("origin", "http://localhost:3000")]);
        assert_eq!(foreign_origin(&port, &none).as_deref(), Some("http://localhost:3000"));
        let opaque = headers(&[("host", "localhost:8080"), ("origin", "null")]);
        assert_eq!(foreign_origin(&opaque, &none).as_deref(), Some("null"));
        // The browser's word wins even where Origin is missing.
        let site = headers(&[("host", "localhost:8080"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(foreign_origin(&site, &none).as_deref(), Some("another site"));
    }

    #[test]
    fn an_allowed_origin_is_not_foreign() {
        let allowed = AllowedOrigins(vec!["http://localhost:3000".into()]);
        let page = headers(&[
            ("host", "localhost:8080"),
            ("origin", "http://localhost:3000"),
            ("sec-fetch-site", "same-site"),
        ]);
        assert_eq!(foreign_origin(&page, &allowed), None);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(&headers(&[("content-type", "application/json")])));
        assert!(is_json(&headers(&[("content-type", "Application/JSON; charset=utf-8")])));
        assert!(is_json(&headers(&[("content-type", "application/merge-patch+json")])));
        assert!(!is_json(&headers(&[("content-type", "text/plain")])));
        assert!(!is_json(&headers(&[("content-type", "application/x-www-form-urlencoded")])));
        assert!(!is_json(&headers(&[("content-type", "multipart/form-data; boundary=x")])));
        assert!(!is_json(&HeaderMap::new()));
    }
}
