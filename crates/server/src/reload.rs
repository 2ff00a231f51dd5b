//! `SIGHUP`: read the configuration again and apply what can change while the node runs, as Dkron does.
//!
//! The flags and environment are the ones the process started with and the config file is read anew, so the
//! precedence stays flag > environment > file > default. What changes at once: the node's tags (`tags`, and
//! `datacenter` and `region`, which are published as the `dc` and `region` tags), republished in gossip, so the
//! leader places runs by them within a few gossip rounds; `log-level`; `output-max-bytes` (the cap the runs this
//! server orders as leader carry). Every other key is bound to something already running (listeners, the Raft
//! and store setup, the worker's timings): a change is logged as waiting for a restart and the running value
//! stays. A file that cannot be read or holds an invalid value changes nothing.

use std::fmt::Debug;
use std::sync::Arc;

use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{AgentArgs, Config};
use crate::gossip::Membership;
use crate::worker::Worker;

/// The handle that swaps the log filter of the running subscriber.
pub type LogFilter = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The environment variable whose filter directives, when set, override `--log-level`.
pub const LOG_ENV: &str = "KAIROS_LOG";

/// The log filter for `--log-level`: that level for our code, quieter for chatty dependencies.
pub fn log_filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},openraft=warn,hyper=warn,reqwest=warn")))
}

/// What a reload found: the keys applied now and the keys that wait for a restart, each as `key: old → new`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub applied: Vec<String>,
    pub restart: Vec<String>,
}

/// Compare the running configuration with the one just read. Pure, so every key's class is tested.
pub fn compare(running: &Config, read: &Config) -> Changes {
    let mut changes = Changes::default();
    let mut note = |now: bool, key: &str, old: &dyn Debug, new: &dyn Debug| {
        let (old, new) = (format!("{old:?}"), format!("{new:?}"));
        if old != new {
            let line = format!("{key}: {old} → {new}");
            if now { changes.applied.push(line) } else { changes.restart.push(line) }
        }
    };
    // Destructured in full, so a new configuration key cannot be forgotten here.
    let Config {
        server,
        bootstrap_expect,
        node_name,
        data_dir,
        http_addr,
        bind_addr,
        advertise_addr,
        rpc_port,
        raft_port,
        tags,
        join,
        retry_join,
        retry_max,
        retry_interval,
        raft_multiplier,
        log_level,
        log_format,
        datacenter,
        region,
        shutdown_grace,
        output_max_bytes,
        output_limits,
        run_limits,
        executions_retained,
        audit_retained,
        execution_lease,
        kill_grace,
        ui,
        cors_allowed_origins,
        tls,
        encrypt,
        enable_prometheus,
        statsd,
        executors,
        plugins,
        clock_offset_max,
        webhooks,
        mail,
        cronitor_endpoint,
        acl_enabled,
        config_file: _,
    } = read;
    let r = running;
    note(true, "tags", &r.tags, tags);
    note(true, "datacenter", &r.datacenter, datacenter);
    note(true, "region", &r.region, region);
    note(true, "log-level", &r.log_level, log_level);
    note(true, "output-max-bytes", &r.output_max_bytes, output_max_bytes);
    note(false, "server", &r.server, server);
    note(false, "bootstrap-expect", &r.bootstrap_expect, bootstrap_expect);
    note(false, "node-name", &r.node_name, node_name);
    note(false, "data-dir", &r.data_dir, data_dir);
    note(false, "http-addr", &r.http_addr, http_addr);
    note(false, "bind-addr", &r.bind_addr, bind_addr);
    note(false, "advertise-addr", &r.advertise_addr, advertise_addr);
    note(false, "rpc-port", &r.rpc_port, rpc_port);
    note(false, "raft-port", &r.raft_port, raft_port);
    note(false, "join", &r.join, join);
    note(false, "retry-join", &r.retry_join, retry_join);
    note(false, "retry-max", &r.retry_max, retry_max);
    note(false, "retry-interval", &r.retry_interval, retry_interval);
    note(false, "raft-multiplier", &r.raft_multiplier, raft_multiplier);
    note(false, "shutdown-grace", &r.shutdown_grace, shutdown_grace);
    note(false, "output-store-max-bytes / disk-free-min-bytes", &r.output_limits, output_limits);
    note(false, "max-running / max-queued", &r.run_limits, run_limits);
    note(false, "executions-retained", &r.executions_retained, executions_retained);
    note(false, "audit-retained", &r.audit_retained, audit_retained);
    note(false, "execution-lease", &r.execution_lease, execution_lease);
    note(false, "kill-grace", &r.kill_grace, kill_grace);
    note(false, "ui", &r.ui, ui);
    note(false, "cors-allowed-origins", &r.cors_allowed_origins, cors_allowed_origins);
    note(false, "cert-file / key-file / trusted-ca-file / client-cert-auth", &r.tls, tls);
    note(false, "encrypt", &r.encrypt, encrypt);
    note(false, "enable-prometheus", &r.enable_prometheus, enable_prometheus);
    note(false, "statsd-addr / dog-statsd-* / statsd-flush-interval", &r.statsd, statsd);
    note(false, "log-format", &r.log_format, log_format);
    note(false, "executors", &r.executors, executors);
    note(false, "plugin-dir", &r.plugins, plugins);
    note(false, "clock-offset-max", &r.clock_offset_max, clock_offset_max);
    note(false, "webhook-* / pre-webhook-*", &r.webhooks, webhooks);
    note(false, "mail-*", &r.mail, mail);
    note(false, "cronitor-endpoint", &r.cronitor_endpoint, cronitor_endpoint);
    note(false, "acl.enabled", &r.acl_enabled, acl_enabled);
    changes
}

/// `running` with the keys a reload applies taken from `read`; the others keep their running values.
pub fn merge(running: &Config, read: &Config) -> Config {
    Config {
        tags: read.tags.clone(),
        datacenter: read.datacenter.clone(),
        region: read.region.clone(),
        log_level: read.log_level.clone(),
        output_max_bytes: read.output_max_bytes,
        ..running.clone()
    }
}

/// Everything a reload touches on a running node.
pub struct Reloader {
    args: AgentArgs,
    running: Config,
    log: LogFilter,
    membership: Arc<Membership>,
    worker: Worker,
}

impl Reloader {
    /// `args` are the flags and environment the node started with, `running` the configuration it runs with.
    pub fn new(args: AgentArgs, running: Config, log: LogFilter, membership: Arc<Membership>, worker: Worker) -> Self {
        Reloader { args, running, log, membership, worker }
    }

    /// Read the configuration again and apply what can change now; log what changed and what waits.
    pub async fn reload(&mut self) {
        let read = match self.args.clone().resolve() {
            Ok(read) => read,
            Err(err) => {
                error!("SIGHUP: configuration not reloaded, nothing changed: {err:#}");
                return;
            }
        };
        let from = read
            .config_file
            .as_ref()
            .map_or("flags and environment (no config file)".to_string(), |f| f.display().to_string());
        let changes = compare(&self.running, &read);
        let next = merge(&self.running, &read);
        if next.tags != self.running.tags
            || next.datacenter != self.running.datacenter
            || next.region != self.running.region
        {
            let tags = self.membership.publish_tags(&next).await;
            info!("SIGHUP: node tags now {tags:?}");
        }
        if next.log_level != self.running.log_level {
            if std::env::var_os(LOG_ENV).is_some() {
                warn!("SIGHUP: log-level {} has no effect while {LOG_ENV} is set", next.log_level);
            } else if let Err(err) = self.log.reload(log_filter(&next.log_level)) {
                warn!("SIGHUP: cannot change the log level: {err}");
            }
        }
        if next.output_max_bytes != self.running.output_max_bytes {
            self.worker.set_output_max_bytes(next.output_max_bytes);
        }
        self.running = next;
        if changes.applied.is_empty() && changes.restart.is_empty() {
            info!("SIGHUP: configuration reloaded from {from}: nothing changed");
        }
        if !changes.applied.is_empty() {
            info!("SIGHUP: configuration reloaded from {from}: {}", changes.applied.join("; "));
        }
        if !changes.restart.is_empty() {
            warn!("SIGHUP: not applied, these take effect after a restart: {}", changes.restart.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: AgentArgs) -> Config {
        AgentArgs { node_name: Some("n1".into()), ..args }.resolve().unwrap()
    }

    #[test]
    fn tags_log_level_and_output_cap_apply_now_and_the_rest_waits_for_a_restart() {
        let running = config(AgentArgs { tags: vec!["pool=a".into()], ..Default::default() });
        let read = config(AgentArgs {
            tags: vec!["pool=b".into()],
            datacenter: Some("dc2".into()),
            log_level: Some("debug".into()),
            output_max_bytes: Some(2048),
            http_addr: Some("127.0.0.1:9000".into()),
            execution_lease: Some("1m".into()),
            ..Default::default()
        });
        let changes = compare(&running, &read);
        assert_eq!(
            changes.applied,
            [
                r#"tags: {"pool": "a"} → {"pool": "b"}"#,
                r#"datacenter: "dc1" → "dc2""#,
                r#"log-level: "info" → "debug""#,
                "output-max-bytes: 1048576 → 2048",
            ]
        );
        assert_eq!(changes.restart, ["http-addr: 0.0.0.0:8080 → 127.0.0.1:9000", "execution-lease: 30s → 60s"]);
        let merged = merge(&running, &read);
        assert_eq!((merged.tags.get("pool").map(String::as_str), merged.datacenter.as_str()), (Some("b"), "dc2"));
        assert_eq!((merged.log_level.as_str(), merged.output_max_bytes), ("debug", 2048));
        assert_eq!(merged.http_addr, running.http_addr, "a listener's address waits for a restart");
        assert_eq!(merged.execution_lease, running.execution_lease);
        assert_eq!(compare(&merged, &read).applied, Vec::<String>::new(), "a second reload applies nothing new");
        assert_eq!(compare(&merged, &read).restart, changes.restart, "and still reports what waits");
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let running = config(AgentArgs { tags: vec!["pool=a".into()], ..Default::default() });
        assert_eq!(compare(&running, &running.clone()), Changes::default());
    }
}
