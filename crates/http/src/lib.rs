//! The HTTP face of a Kairos server: the `/v1` API (Dkron's routes and JSON, plus ours) and the web UI at `/ui/`,
//! both rendered from the node's state and writing through [`kairos_server::Node`].
//!
//! - [`api`]: the routes, the edge every request passes (`api/guard.rs`: cross-site refusal, CORS, JSON errors,
//!   body limits), the OpenAPI document, and [`api::ApiError`], which maps the core's
//!   [`kairos_server::WriteError`] to status codes;
//! - [`ui`]: server-rendered pages (maud), live updates and the job editor.
//!
//! [`router`] is what `kairos_server::Node::start` serves on `--http-addr`.

pub mod api;
pub mod ui;

pub use api::router;
