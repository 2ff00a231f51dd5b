//! Prometheus metrics (`--enable-prometheus`, Dkron's flag): served at `GET /metrics` in the text format, by the
//! HTTP API on servers and by the RPC listener on agent-only nodes (they have no HTTP API).
//!
//! Every node reports what happened on it, so counters add up across the cluster without double counting: the
//! start lag and outcome of the runs it executed, what its leader duties decided while it led, its HTTP requests.
//! Gauges (Raft, gossip, running and pending executions, jobs) are read from the node when scraped.
//!
//! Labels stay bounded whatever the number of jobs: no metric has a job label (100,000 jobs would make 100,000
//! series per metric); per-job figures come from the API (`/v1/jobs/{job}/executions`, the stats endpoints).
//! `executor` has a handful of values, `status` the execution statuses, `route` the API's route templates (not
//! the paths), `method` the HTTP methods and `code` the status codes.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecutorLabel {
    pub executor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub executor: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabel {
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    pub store: String,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Seconds from a run's slot to its start, first attempts only (retries wait for their backoff on purpose).
    pub start_lag: Family<ExecutorLabel, Histogram>,
    pub runs_finished: Family<RunLabels, Counter>,
    /// Runs started, by why they exist (schedule, catch_up, manual, retry, parent).
    pub runs_started: Family<TriggerLabel, Counter>,
    pub runs_running: Gauge,
    /// Runs due and waiting for a place (`--max-running`).
    pub runs_queued: Gauge,
    pub runs_skipped_overloaded: Counter,
    /// On the leader: due runs its last sweep left waiting for a node with room (every matching node past its
    /// capacity).
    pub runs_waiting_for_room: Gauge,
    pub slots_missed: Counter,
    pub notifications: Family<NotificationLabels, Counter>,
    pub missed_alerts: Counter,
    pub outbox_entries: Gauge,
    pub executions_lost: Counter,
    pub placement_failures: Counter,
    pub leadership_acquired: Counter,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Family<RouteLabel, Histogram>,
    pub raft_leader: Gauge,
    pub raft_term: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_last_applied_index: Gauge,
    pub raft_committed_index: Gauge,
    pub gossip_members: Family<StatusLabel, Gauge>,
    pub executions_active: Family<StatusLabel, Gauge>,
    pub jobs: Gauge,
    /// Bytes on disk: `raft_log` and `state` (servers, read when scraped), `outputs` (every node, after each run).
    pub store_bytes: Family<StoreLabel, Gauge>,
    /// StatsD packets (and lines too long for one) this node could not send ([`crate::statsd`]).
    pub statsd_send_errors: Counter,
}

/// The process's metrics (created on first use).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let lag_buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let mut registry = Registry::with_prefix("kairos");
        let m = Metrics {
            registry: Registry::default(),
            start_lag: Family::new_with_constructor(lag_buckets),
            runs_finished: Family::default(),
            runs_started: Family::default(),
            runs_running: Gauge::default(),
            runs_queued: Gauge::default(),
            runs_skipped_overloaded: Counter::default(),
            runs_waiting_for_room: Gauge::default(),
            slots_missed: Counter::default(),
            notifications: Family::default(),
            missed_alerts: Counter::default(),
            outbox_entries: Gauge::default(),
            executions_lost: Counter::default(),
            placement_failures: Counter::default(),
            leadership_acquired: Counter::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(lag_buckets),
            raft_leader: Gauge::default(),
            raft_term: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_last_applied_index: Gauge::default(),
            raft_committed_index: Gauge::default(),
            gossip_members: Family::default(),
            executions_active: Family::default(),
            jobs: Gauge::default(),
            store_bytes: Family::default(),
            statsd_send_errors: Counter::default(),
        };
        registry.register(
            "run_start_lag_seconds",
            "Seconds from a run's scheduled instant to its start on this node (first attempts)",
            m.start_lag.clone(),
        );
        registry.register("runs_finished", "Runs this node executed, by executor and outcome", m.runs_finished.clone());
        registry.register(
            "runs_started",
            "Runs this node started, by trigger (schedule, catch_up, manual, retry, parent)",
            m.runs_started.clone(),
        );
        registry.register("runs_running", "Runs executing on this node now", m.runs_running.clone());
        registry.register(
            "runs_queued",
            "Runs due on this node and waiting for a place (--max-running)",
            m.runs_queued.clone(),
        );
        registry.register(
            "runs_skipped_overloaded",
            "Runs this node recorded skipped because its places and its queue were full (--max-running, --max-queued), \
             or, as leader, because no node started them within a minute of their instants",
            m.runs_skipped_overloaded.clone(),
        );
        registry.register(
            "runs_waiting_for_room",
            "On the leader: due runs its last sweep left pending because every node that can run them has as many due \
             runs it has not started as it takes (past its capacity)",
            m.runs_waiting_for_room.clone(),
        );
        registry.register(
            "slots_missed",
            "Slots that fell due while no scheduler ran and that the jobs' catch_up policy (skip, latest) drops",
            m.slots_missed.clone(),
        );
        registry.register(
            "notifications",
            "Notifications this node, leading, sent or gave up on, by kind (webhook, pre_webhook, mail, job_webhook, \
             cronitor) and outcome (sent, failed, suppressed, template_failed)",
            m.notifications.clone(),
        );
        registry.register(
            "missed_alerts",
            "Missed alerts this node, leading, raised (jobs without a success within alert_if_not_succeeded_within)",
            m.missed_alerts.clone(),
        );
        registry.register(
            "outbox_entries",
            "Notification outbox entries waiting for the leader's notifier",
            m.outbox_entries.clone(),
        );

        registry.register(
            "executions_lost",
            "Executions this node, leading, recorded lost (lease expired, node gone)",
            m.executions_lost.clone(),
        );
        registry.register(
            "placement_failures",
            "Runs this node, leading, failed because no live node could take them",
            m.placement_failures.clone(),
        );
        registry.register("leadership_acquired", "Times this node became the leader", m.leadership_acquired.clone());
        registry.register(
            "http_requests",
            "API requests served, by route template, method and code",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer API requests, by route template",
            m.http_duration.clone(),
        );
        registry.register("raft_leader", "1 while this server leads, else 0", m.raft_leader.clone());
        registry.register("raft_term", "The Raft term this server is in", m.raft_term.clone());
        registry.register(
            "raft_last_log_index",
            "The last index of this server's Raft log",
            m.raft_last_log_index.clone(),
        );
        registry.register(
            "raft_last_applied_index",
            "The last Raft index this server applied",
            m.raft_last_applied_index.clone(),
        );
        registry.register(
            "raft_committed_index",
            "The last Raft index this server knows to be committed",
            m.raft_committed_index.clone(),
        );
        registry.register("gossip_members", "Nodes this node knows, by status", m.gossip_members.clone());
        registry.register(
            "executions_active",
            "Executions pending or running in the replicated state",
            m.executions_active.clone(),
        );
        registry.register("jobs", "Jobs in the replicated state", m.jobs.clone());
        registry.register(
            "store_bytes",
            "Bytes this node's stores take on disk: raft_log and state (servers), outputs (runs' full output)",
            m.store_bytes.clone(),
        );
        registry.register(
            "statsd_send_errors",
            "StatsD packets this node could not send (--statsd-addr, --dog-statsd-addr)",
            m.statsd_send_errors.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

/// Set the `store_bytes` gauge of one store.
pub fn set_store_bytes(store: &str, bytes: u64) {
    let gauge = metrics().store_bytes.get_or_create(&StoreLabel { store: store.to_string() }).clone();
    gauge.set(i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// Record the start of a run from its environment (`KAIROS_SCHEDULED_AT`, `KAIROS_ATTEMPT`): its lag, for first
/// attempts.
pub fn observe_start(executor: &str, env: &[(String, String)], started: kairos_model::Timestamp) {
    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if let Some(trigger) = get("KAIROS_TRIGGER") {
        metrics().runs_started.get_or_create(&TriggerLabel { trigger: trigger.to_string() }).inc();
    }
    if get("KAIROS_ATTEMPT") != Some("1") {
        return;
    }
    let Some(scheduled) = get("KAIROS_SCHEDULED_AT").and_then(|t| t.parse::<kairos_model::Timestamp>().ok()) else {
        return;
    };
    let lag = started.duration_since(scheduled).as_secs_f64().max(0.0);
    metrics().start_lag.get_or_create(&ExecutorLabel { executor: executor.to_string() }).observe(lag);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_units_and_totals() {
        let m = metrics();
        m.runs_finished.get_or_create(&RunLabels { executor: "shell".into(), status: "succeeded".into() }).inc();
        let env = [
            ("KAIROS_ATTEMPT".to_string(), "1".to_string()),
            ("KAIROS_SCHEDULED_AT".to_string(), "2026-01-01T00:00:00Z".to_string()),
        ];
        observe_start("shell", &env, "2026-01-01T00:00:00.25Z".parse().unwrap());
        m.http_duration.get_or_create(&RouteLabel { route: "/v1/jobs".into() }).observe(0.01);
        let text = m.render();
        for name in [
            "kairos_run_start_lag_seconds",
            "kairos_runs_finished_total",
            "kairos_runs_running",
            "kairos_executions_lost_total",
            "kairos_http_request_duration_seconds",
            "kairos_raft_term",
            "kairos_jobs",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name}")) || text.contains(&format!("{name}{{")) || text.contains(name),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains(r#"kairos_runs_finished_total{executor="shell",status="succeeded"} "#), "{text}");
        assert!(text.contains(r#"kairos_run_start_lag_seconds_bucket{le="0.256",executor="shell"} 1"#), "{text}");
    }
}
