//! The [`Runner`]: takes a [`RunSpec`], picks its executor, and returns the [`Outcome`].
//!
//! It owns what runs share: the output store, the kill grace period, the HTTP clients, the regex cache and
//! the connections to brokers and databases kept across runs. It is a cheap handle, so the dispatcher clones it
//! into each run's task.

use std::sync::{Arc, Once};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::config::{
    GrpcConfig, HttpConfig, KafkaConfig, NatsConfig, RabbitConfig, RedisConfig, ShellConfig, SqlConfig,
    unknown_executor,
};
use crate::connections::{Idle, Shared};
use crate::grpc::GrpcClients;
use crate::http_clients::{HttpClients, RegexCache};
use crate::kafka::KafkaSessions;
use crate::nats::NatsClients;
use crate::output::OutputStore;
use crate::plugin::{self, Plugins};
use crate::processors::Processing;
use crate::rabbitmq::RabbitConnections;
use crate::redis_exec::RedisConnections;
use crate::spec::{Outcome, RunSpec, RunStatus};
use crate::sql::SqlConnections;
use crate::{grpc, http, kafka, nats, rabbitmq, redis_exec, shell, sql};

/// Installs rustls' ring crypto provider for the process. Idempotent; a provider that is already
/// installed (by us or by the embedding binary) is kept.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Runs executions. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    outputs: OutputStore,
    /// Time between SIGTERM and SIGKILL when a shell run is stopped.
    kill_grace: Duration,
    http_clients: HttpClients,
    regexes: RegexCache,
    nats: NatsClients,
    rabbitmq: RabbitConnections,
    redis: RedisConnections,
    kafka: KafkaSessions,
    sql: SqlConnections,
    grpc: GrpcClients,
    plugins: Plugins,
}

impl Runner {
    pub fn new(outputs: OutputStore, kill_grace: Duration) -> Runner {
        Runner::with_plugins(outputs, kill_grace, Plugins::default())
    }

    /// A runner that also runs the executor plugins of `plugins` (see [`crate::plugin`]).
    pub fn with_plugins(outputs: OutputStore, kill_grace: Duration, plugins: Plugins) -> Runner {
        install_crypto_provider();
        Runner {
            inner: Arc::new(Inner {
                outputs,
                kill_grace,
                http_clients: HttpClients::new(),
                regexes: RegexCache::new(),
                nats: Shared::new(),
                rabbitmq: Shared::new(),
                redis: Shared::new(),
                kafka: Shared::new(),
                sql: Idle::new(),
                grpc: GrpcClients::new(),
                plugins,
            }),
        }
    }

    /// The store this runner writes outputs to.
    pub fn outputs(&self) -> &OutputStore {
        &self.inner.outputs
    }

    /// Runs `spec` to completion. Cancelling `cancel` stops it (shell: the process group is terminated;
    /// http and the brokers: the operation is abandoned; sql: the statement is cancelled on the server) and the
    /// outcome is `Cancelled`.
    ///
    /// Then the job's output processors are applied to what it wrote (see `processors`).
    pub async fn run(&self, spec: RunSpec, cancel: CancellationToken) -> Outcome {
        let processing = Processing::of(&spec);
        let outcome = self.execute(spec, cancel).await;
        match processing {
            Some(processing) => processing.apply(&self.inner.outputs, outcome).await,
            None => outcome,
        }
    }

    async fn execute(&self, mut spec: RunSpec, cancel: CancellationToken) -> Outcome {
        let inner = &*self.inner;
        let capture = Capture::open(&inner.outputs, &spec);
        if cancel.is_cancelled() {
            let error = Some("cancelled before it started".to_owned());
            return capture.into_outcome(RunStatus::Cancelled, None, error);
        }
        // Secret references are put in place here, on the node that runs the job, and nowhere else.
        match kairos_model::secret::resolve_secrets(&spec.config, &spec.secrets) {
            Ok(config) => spec.config = config,
            Err(e) => return capture.not_started(format!("cannot start: {e}")),
        }
        // Parsed again here although the server validated it: the job may predate this version.
        match spec.executor.as_str() {
            "shell" => match ShellConfig::parse(&spec.config) {
                Ok(config) => shell::run(&spec, config, capture, &cancel, inner.kill_grace).await,
                Err(e) => capture.not_started(e.to_string()),
            },
            "http" => match HttpConfig::parse(&spec.config, |p| inner.regexes.get(p)) {
                Ok(config) => http::run(&inner.http_clients, &spec, config, capture, &cancel).await,
                Err(e) => capture.not_started(e.to_string()),
            },
            "nats" => match NatsConfig::parse(&spec.config) {
                Ok(config) => nats::run(&inner.nats, config, capture, &cancel).await,
                Err(e) => capture.not_started(e.to_string()),
            },
            "rabbitmq" => match RabbitConfig::parse(&spec.config) {
                Ok(config) => rabbitmq::run(&inner.rabbitmq, config, capture, &cancel).await,
                Err(e) => capture.not_started(e.to_string()),
            },
            "redis" => match RedisConfig::parse(&spec.config) {
                Ok(config) => redis_exec::run(&inner.redis, config, capture, &cancel).await,
                Err(e) => capture.not_started(e.to_string()),
            },
            "kafka" => match KafkaConfig::parse(&spec.config) {
                Ok(config) => kafka::run(&inner.kafka, config, capture, &cancel).await,
                Err(e) => capture.not_started(e.to_string()),
            },
            "sql" => match SqlConfig::parse(&spec.config) {
                Ok(config) => sql::run(&inner.sql, config, capture, &cancel).await,
                Err(e) => capture.not_started(e.to_string()),
            },
            "grpc" => match GrpcConfig::parse(&spec.config) {
                Ok(config) => grpc::run(&inner.grpc, config, capture, &cancel).await,
                Err(e) => capture.not_started(e.to_string()),
            },
            other => match inner.plugins.get(other) {
                Some(program) => {
                    match plugin::shell_config(program, other, &spec.job_name, &spec.execution_id, &spec.config) {
                        Ok(config) => shell::run(&spec, config, capture, &cancel, inner.kill_grace).await,
                        Err(e) => capture.not_started(e.to_string()),
                    }
                }
                None => capture.not_started(unknown_executor(other).to_string()),
            },
        }
    }
}
