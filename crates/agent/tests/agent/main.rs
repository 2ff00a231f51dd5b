//! End-to-end tests of the agent: real processes, real HTTP on 127.0.0.1, a real output directory.
//!
//! One test binary with a module per executor, so the crate links its tests once.

mod http;
mod shell;
mod store;
mod support;
