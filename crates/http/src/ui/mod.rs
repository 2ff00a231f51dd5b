//! The web UI, served at `/ui/` by every server (`--ui=false` turns it off).
//!
//! Pages are HTML rendered here with `maud` from the same [`StateReader`](kairos_store::StateReader) snapshot the
//! API reads, so a page costs no internal HTTP round trip. Everything the browser loads is in the binary: one
//! stylesheet, one script and an icon of our own ([`assets`]); charts are SVG drawn on the server ([`chart`]).
//! A strict Content-Security-Policy (`'self'` only) makes that a promise the browser enforces.
//!
//! What changes state goes through the JSON API: the script calls `POST/PUT/PATCH/DELETE /v1/...`, so the UI's
//! behaviour and error messages are the API's. Live views (dashboard, job, execution output, busy) are
//! server-sent events from [`live`]: fragments re-rendered on the server and swapped in by the script.
//!
//! The pages, one file each: [`dashboard`] (`/ui/`), [`jobs`] (`/ui/jobs`), [`job`] (`/ui/jobs/{name}`),
//! [`execution`] (`/ui/jobs/{name}/executions/{id}`), [`editor`] (`/ui/new`, `/ui/jobs/{name}/edit`), [`busy`]
//! (`/ui/busy`) and [`nodes`] (`/ui/nodes`); [`layout`] and [`format`] hold what they share.

mod assets;
mod audit;
mod busy;
mod chart;
mod dashboard;
mod editor;
mod execution;
mod format;
mod job;
mod jobs;
mod layout;
mod live;
mod nodes;
pub mod signin;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::api::{ApiError, AppState};

/// Only this server may be asked for anything: scripts, styles, images, fetches and event streams.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The UI's routes, merged into the API router when the UI is on.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(dashboard::page))
        .route("/ui/jobs", get(jobs::page))
        .route("/ui/jobs/{job}", get(job::page))
        .route("/ui/jobs/{job}/edit", get(editor::edit))
        .route("/ui/jobs/{job}/executions/{execution}", get(execution::page))
        .route("/ui/new", get(editor::create))
        .route("/ui/busy", get(busy::page))
        .route("/ui/nodes", get(nodes::page))
        .route("/ui/audit", get(audit::page))
        .route("/ui/live/dashboard", get(live::dashboard))
        .route("/ui/live/busy", get(live::busy))
        .route("/ui/live/jobs/{job}", get(live::job))
        .route("/ui/live/jobs/{job}/executions/{execution}", get(live::execution))
        .route("/ui/assets/{file}", get(assets::serve))
        .route("/ui/signin", get(signin::page_form).post(signin::sign_in))
        .route("/ui/signout", axum::routing::post(signin::sign_out))
        .route("/ui/{*rest}", get(|| async { UiError::new(StatusCode::NOT_FOUND, "There is no such page.") }))
        .layer(map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A page that could not be rendered: an HTML page with the status and the message.
#[derive(Debug)]
pub struct UiError {
    status: StatusCode,
    message: String,
}

impl UiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError { status, message: message.into() }
    }
}

impl From<ApiError> for UiError {
    fn from(err: ApiError) -> UiError {
        UiError::new(err.status, err.message)
    }
}

impl From<redb::Error> for UiError {
    fn from(err: redb::Error) -> UiError {
        ApiError::from(err).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = maud::html! {
            h1 { (title) }
            p.notice.error role="alert" { (self.message) }
            p { a href="/ui/" { "Dashboard" } " · " a href="/ui/jobs" { "Jobs" } }
        };
        (self.status, layout::page(None, title, layout::Nav::None, body)).into_response()
    }
}

pub type UiResult = Result<Response, UiError>;
