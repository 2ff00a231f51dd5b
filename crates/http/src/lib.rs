//! The HTTP face of a Kairos server: the `/v1` API (Dkron's routes and JSON, plus ours) and the web UI at `/ui/`,
//! both rendered from the node's state and writing through [`kairos_server::Node`].
//!
//! - [`api`]: the routes, the edge every request passes (`api/guard.rs`: cross-site refusal, CORS, JSON errors,
//!   body limits), the OpenAPI document, and [`api::ApiError`], which maps the core's
//!   [`kairos_server::WriteError`] to status codes;
//! - [`ui`]: server-rendered pages (maud), live updates and the job editor; built on `api` (its errors, state
//!   and the edge), which never imports it back: [`router`] puts the two together.
//!
//! [`router`] is what `kairos_server::Node::start` serves on `--http-addr`.
// The OpenAPI document is one `json!` literal, deeper than the macro's default recursion limit allows.
#![recursion_limit = "256"]

pub mod api;
pub mod ui;

/// The API with the UI's pages (unless `--ui=false`), behind the same edge: what `--http-addr` serves.
pub fn router(node: api::AppState) -> axum::Router {
    let pages = node.config.ui.then(ui::router);
    api::router(node, pages)
}
