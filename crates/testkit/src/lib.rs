//! The test kit: what the end-to-end tests (`crates/kairos/tests`) and the benchmark (`bench`) share to drive
//! real `kairos` processes.
//!
//! - [`process`]: start the `kairos` binary (whose path the caller gives: Cargo tells integration tests, the
//!   benchmark finds its own), capture its output in a [`Log`], read the addresses it announces, signal it, wait
//!   for it to exit; a [`Process`] is killed and reaped when dropped.
//! - [`client`]: the one HTTP client of the API, answering a [`Reply`] with the assertions tests make on it.
//! - [`wait`]: the one polling helper, [`wait_until`], which fails naming what it waited for (and
//!   [`poll_until`], which answers an error instead, for callers that must not panic).
//! - [`log`]: a process's output across restarts, in memory or in a file.
//! - [`disk`]: a small tmpfs of the test's own, to run a node out of disk space.
//! - [`memory`]: a memory cgroup of the test's own with a limit, to run a node and its runs out of memory.
//! - [`netns`]: a network of the test's own (namespaces on a bridge), to cut nodes off for real.
//! - [`services`]: real `nats-server`, `redis-server`, `rabbitmq-server`, PostgreSQL and Tansu (Kafka) instances on
//!   free loopback ports in temporary directories, for the executors' tests; killed and removed when dropped.
//! - [`kafka`]: reading a topic back, and a proxy in front of the Kafka broker (counting connections, TLS).

pub mod client;
pub mod disk;
pub mod grpc;
pub mod kafka;
pub mod log;
pub mod memory;
pub mod netns;
pub mod process;
pub mod services;
pub mod wait;

pub use client::{Client, Reply, install_crypto_provider};
pub use disk::{SmallDisk, dir_bytes};
pub use log::Log;
pub use memory::MemoryCgroup;
pub use netns::{Cut, Network};
pub use process::{LaunchError, Listener, Listening, Process, Signal, clean_kairos_env, kairos_command};
pub use services::{Service, free_port, free_port_where};
pub use wait::{Probe, TimedOut, poll_until, wait_until};
