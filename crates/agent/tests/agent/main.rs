//! End-to-end tests of the agent: real processes, real HTTP on 127.0.0.1, a real output directory.
//!
//! One test binary with a module per executor, so the crate links its tests once.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod http;
mod kafka;
mod nats;
mod rabbitmq;
mod redis;
mod shell;
mod sql;
mod store;
mod support;
