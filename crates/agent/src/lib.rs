//! The agent side of Kairos: it runs executions and keeps their full output on local disk.
//!
//! A server's dispatcher hands a [`RunSpec`] to a [`Runner`]; the runner picks the executor named in the
//! spec, streams what the run produces into the [`OutputStore`], and returns an [`Outcome`] small enough
//! to be replicated through Raft (status, exit code, the last few KiB of output).
//!
//! The major parts, one file each:
//! - `spec`: what to run ([`RunSpec`]) and how it ended ([`Outcome`]);
//! - `config` (a submodule per broker and database executor): Dkron-compatible executor configs parsed into
//!   typed values, and [`validate`];
//! - `runner`: the [`Runner`], which dispatches a run to its executor;
//! - `shell`, `process_group` and `oom`: the shell executor, how it stops whole process groups, and how its runs
//!   meet the kernel's out-of-memory killer (first in line; a run it killed says so);
//! - `http` and `http_clients`: the http executor and the clients and regexes it shares;
//! - `nats`, `rabbitmq`, `redis_exec`, `kafka`, `sql`, `grpc`: the broker, PostgreSQL and gRPC executors, built on
//!   `remote` (racing the remote operation against timeout and cancel), `connections` (connections kept across runs, bounded)
//!   and `redact` (no password in outputs, errors or logs);
//! - `output`, `capture` and `mask`: the [`OutputStore`], the capture that feeds it as output arrives, and the
//!   masking of secret values in it (`***`);
//! - `processors` and `syslog`: the job's output processors (`files`, `log`, `syslog`), applied to the output
//!   once a run ends, and the syslog protocol they speak;
//! - `plugin`: executor plugins (`kairos-executor-NAME` in `--plugin-dir`) and their protocol;
//! - `words`: splitting command lines the way Dkron does for `shell = false`.
//!
//! Durations (`timeout`) are read by `kairos_schedule::parse_duration`, the one duration syntax of Kairos.

mod capture;
mod config;
mod connections;
mod grpc;
mod http;
mod http_clients;
mod kafka;
mod mask;
mod nats;
mod oom;
mod output;
pub mod plugin;
mod process_group;
mod processors;
mod rabbitmq;
mod redact;
mod redis_exec;
mod remote;
mod runner;
mod shell;
mod spec;
mod sql;
mod syslog;
mod words;

pub use config::{ConfigError, EXECUTORS, validate};
pub use oom::RUN_OOM_SCORE_ADJ;
pub use output::{DISK_FREE_BYTES_MIN_DEFAULT, Limits as OutputLimits, OutputStore, STORE_BYTES_MAX_DEFAULT};
pub use processors::{LOG_NOTE, PROCESSOR_TIMEOUT, SYSLOG_NOTE};
pub use runner::{Runner, install_crypto_provider};
pub use spec::{OUTPUT_LIMIT_BYTES_DEFAULT, Outcome, RunSpec, RunStatus, TAIL_BYTES};
