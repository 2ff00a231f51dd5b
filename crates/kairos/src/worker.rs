//! The local worker: runs executions on this node with the agent's executors and reports on them.
//!
//! A run is started as soon as its committed fire is dispatched; its `Start`, its lease renewals and its `Finish`
//! are reported asynchronously through one channel and proposed in batches ([`report_loop`]), so a thousand runs
//! a second cost a handful of Raft entries, not thousands. A failed attempt's retry instant (exponential backoff
//! with jitter) is decided here, by the proposer, so applying stays deterministic.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_agent::{OutputStore, RunSpec, RunStatus, Runner};
use kairos_model::{Execution, ExecutionStatus, Job, Timestamp};
use kairos_store::{BATCH_ITEMS_MAX, Command, ExecRef, Finish, Start};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Config;
use crate::node::Node;

/// How long the reporter waits after the first report of a batch for more to join it.
const REPORT_LINGER: Duration = Duration::from_millis(5);

/// What the worker tells the leader.
#[derive(Debug)]
pub enum Report {
    Start(Start),
    Finish(Finish),
}

/// A run ready to launch (see [`Worker::prepare`]).
pub struct Prepared {
    exec_ref: ExecRef,
    spec: RunSpec,
}

impl Prepared {
    pub fn exec_ref(&self) -> &ExecRef {
        &self.exec_ref
    }
}

struct RunningExec {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

#[derive(Clone)]
pub struct Worker {
    runner: Runner,
    node_name: String,
    output_max_bytes: u64,
    lease: Duration,
    running: Arc<Mutex<HashMap<ExecRef, RunningExec>>>,
    reports: UnboundedSender<Report>,
    /// Reports sent but not yet committed; shutdown waits for zero.
    in_flight: Arc<AtomicUsize>,
}

impl Worker {
    pub fn new(config: &Config, outputs: OutputStore, reports: UnboundedSender<Report>) -> Worker {
        Worker {
            runner: Runner::new(outputs, config.kill_grace),
            node_name: config.node_name.clone(),
            output_max_bytes: config.output_max_bytes,
            lease: config.execution_lease,
            running: Arc::new(Mutex::new(HashMap::new())),
            reports,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn report(&self, report: Report) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.reports.send(report).is_err() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().expect("running lock").len()
    }

    pub fn is_running(&self, exec_ref: &ExecRef) -> bool {
        self.running.lock().expect("running lock").contains_key(exec_ref)
    }

    pub fn running_refs(&self) -> Vec<ExecRef> {
        self.running.lock().expect("running lock").keys().cloned().collect()
    }

    /// Stop a run of this node; false if it does not run here.
    pub fn cancel(&self, exec_ref: &ExecRef, reason: &str) -> bool {
        let running = self.running.lock().expect("running lock");
        match running.get(exec_ref) {
            Some(run) => {
                run.reason.lock().expect("reason lock").get_or_insert_with(|| reason.to_string());
                run.token.cancel();
                true
            }
            None => false,
        }
    }

    pub fn cancel_all(&self, reason: &str) {
        for exec_ref in self.running_refs() {
            self.cancel(&exec_ref, reason);
        }
    }

    /// Get a run ready to launch: everything that can be done before its instant is done here.
    pub fn prepare(&self, exec: &Execution, job: &Job) -> Prepared {
        let mut spec = RunSpec::new(&exec.job_name, &exec.id, &job.executor, job.executor_config.clone());
        spec.output_limit_bytes = self.output_max_bytes;
        spec.extra_env = vec![
            ("KAIROS_EXECUTION_ID".into(), exec.id.clone()),
            ("KAIROS_SCHEDULED_AT".into(), exec.scheduled_at.to_string()),
            ("KAIROS_ATTEMPT".into(), exec.attempt.to_string()),
        ];
        Prepared { exec_ref: ExecRef { job: exec.job_name.clone(), id: exec.id.clone() }, spec }
    }

    /// Start a prepared run now. Only the task is spawned here; the rest happens on the task, so a batch of
    /// thousands is spread over every core and each run's `started_at` is when it really began.
    pub fn launch(&self, prepared: Prepared) {
        let worker = self.clone();
        tokio::spawn(async move { worker.run(prepared).await });
    }

    async fn run(&self, prepared: Prepared) {
        let Prepared { exec_ref, spec } = prepared;
        let token = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        self.running
            .lock()
            .expect("running lock")
            .insert(exec_ref.clone(), RunningExec { token: token.clone(), reason: reason.clone() });
        let started_at = Timestamp::now();
        self.report(Report::Start(Start {
            exec: exec_ref.clone(),
            node: self.node_name.clone(),
            started_at,
            lease_until: started_at + self.lease,
        }));
        let outcome = self.runner.run(spec, token).await;
        let status = match outcome.status {
            RunStatus::Succeeded => ExecutionStatus::Succeeded,
            RunStatus::Failed | RunStatus::TimedOut => ExecutionStatus::Failed,
            RunStatus::Cancelled => ExecutionStatus::Cancelled,
        };
        let cancel_reason = reason.lock().expect("reason lock").clone();
        let error = match status {
            ExecutionStatus::Cancelled => cancel_reason.or(outcome.error),
            _ => outcome.error,
        };
        self.report(Report::Finish(Finish {
            exec: exec_ref.clone(),
            status,
            exit_code: outcome.exit_code,
            error,
            output_tail: outcome.output_tail,
            output_bytes: outcome.output_bytes,
            node: self.node_name.clone(),
            started_at: Some(started_at),
            finished_at: Timestamp::now(),
            retry_at: None,
            only_if_lease_expired: false,
        }));
        self.running.lock().expect("running lock").remove(&exec_ref);
    }

    /// Wait (bounded) until every report sent so far has been proposed.
    pub async fn flush_reports(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// When the next attempt after a failed `attempt` should start, if the job allows one: the job's backoff,
/// doubled per attempt and capped, with ±20 % jitter so retries of many jobs do not stampede.
pub fn retry_instant(node: &Node, job: &str, attempt: u32, now: Timestamp) -> Option<Timestamp> {
    let record = node.state.job(job).ok().flatten()?;
    if attempt > record.job.retries {
        return None;
    }
    let backoff = record.job.backoff_before_retry(attempt);
    let jitter = rand::random_range(0.8..1.2);
    Some(now + backoff.mul_f64(jitter))
}

/// Propose the worker's reports in batches: every start first, then every finish of the batch.
pub async fn report_loop(node: Arc<Node>, mut reports: UnboundedReceiver<Report>) {
    while let Some(first) = reports.recv().await {
        // Linger briefly so a burst of runs (and short runs' start and finish) share one proposal.
        tokio::time::sleep(REPORT_LINGER).await;
        let mut batch = vec![first];
        while batch.len() < BATCH_ITEMS_MAX {
            match reports.try_recv() {
                Ok(report) => batch.push(report),
                Err(_) => break,
            }
        }
        let count = batch.len();
        let now = Timestamp::now();
        let mut starts = Vec::new();
        let mut finishes = Vec::new();
        // A run that started and finished within one batch needs no separate start: its finish carries it.
        let finished: HashSet<ExecRef> = batch
            .iter()
            .filter_map(|r| match r {
                Report::Finish(f) => Some(f.exec.clone()),
                Report::Start(_) => None,
            })
            .collect();
        for report in batch {
            match report {
                Report::Start(start) if finished.contains(&start.exec) => {}
                Report::Start(start) => starts.push(start),
                Report::Finish(mut finish) => {
                    if matches!(finish.status, ExecutionStatus::Failed) {
                        finish.retry_at = retry_instant(&node, &finish.exec.job, attempt_of(&finish.exec), now);
                    }
                    finishes.push(finish);
                }
            }
        }
        if !starts.is_empty()
            && let Some(response) = propose_with_retry(&node, Command::Start { starts: starts.clone() }).await
        {
            // A start the state refused (cancelled while pending) must not keep running.
            let accepted: HashSet<&str> = response.executions.iter().map(|e| e.id.as_str()).collect();
            for start in &starts {
                if !accepted.contains(start.exec.id.as_str()) {
                    node.worker.cancel(&start.exec, "cancelled before it started");
                }
            }
        }
        if !finishes.is_empty() {
            propose_with_retry(&node, Command::Finish { results: finishes }).await;
        }
        node.worker.in_flight.fetch_sub(count, Ordering::SeqCst);
    }
}

/// The attempt number inside an execution id (`<ms>-<attempt>[-origin]`).
fn attempt_of(exec: &ExecRef) -> u32 {
    exec.id.split('-').nth(1).and_then(|a| a.parse().ok()).unwrap_or(1)
}

/// Reports must not be lost to a transient error (e.g. a leader change); retry for a bounded time.
async fn propose_with_retry(node: &Node, command: Command) -> Option<kairos_store::Response> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match node.submit(command.clone()).await {
            Ok(response) => return Some(response),
            Err(err) if tokio::time::Instant::now() < deadline => {
                warn!("report not committed yet ({}); retrying", err.message);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => {
                warn!("report dropped after retries: {}", err.message);
                return None;
            }
        }
    }
}

/// Renew the leases of this node's running executions well before they expire.
pub async fn renew_loop(node: Arc<Node>) {
    let period = node.worker.lease / 3;
    loop {
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let renewals = node.worker.running_refs();
        if renewals.is_empty() {
            continue;
        }
        let lease_until = Timestamp::now() + node.worker.lease;
        for chunk in renewals.chunks(BATCH_ITEMS_MAX) {
            let command = Command::Renew { renewals: chunk.to_vec(), lease_until };
            if let Err(err) = node.submit(command).await {
                warn!("lease renewal failed: {}", err.message);
            }
        }
    }
}
