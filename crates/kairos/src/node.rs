//! A running Kairos node: the Raft instance and its stores, the local worker, and the leader's duties.
//!
//! [`Node::start`] opens the data directory, starts openraft (bootstrapping a single-voter cluster on first
//! start), the RPC and HTTP listeners, the scheduler, the dispatcher and the worker's reporter. The leader's
//! duties besides scheduling live here too:
//! - *dispatch*: every pending execution a command created is handed to a worker once its fire is committed;
//! - *leases*: a running execution whose lease expired turns `lost` (and is retried if retries remain); on a
//!   restart, executions this node was running when it died are lost at once, since their processes are gone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::StatusCode;
use kairos_agent::OutputStore;
use kairos_model::{Execution, ExecutionStatus, Timestamp};
use kairos_store::{Command, Event, ExecRef, Finish, LogStore, Raft, Response, StateMachine, StateReader};
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ServerState};
use serde_json::json;
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::ApiError;
use crate::config::Config;
use crate::scheduler::time_until;
use crate::worker::{Prepared, Worker};

/// The scheduler decides slots this far ahead at most (see [`crate::scheduler::DECIDE_AHEAD`]); runs decided
/// further ahead than this are left to the sweep.
const DECIDE_AHEAD_MAX: Duration = Duration::from_secs(2);

/// How often the leader re-checks pending executions and leases even without events.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

pub struct Node {
    pub config: Config,
    pub id: u64,
    pub raft: Raft,
    pub state: StateReader,
    pub outputs: OutputStore,
    pub worker: Worker,
    pub rpc_addr: SocketAddr,
    /// Executions this leader has handed to a worker, with when. An entry is dropped only once a state snapshot
    /// taken after the dispatch shows the execution final, so a stale read can never dispatch it twice.
    dispatched: Mutex<HashMap<ExecRef, Instant>>,
    dispatch_wake: Notify,
    /// Claimed runs that were cancelled (or whose job went away) before they were launched: never launch them.
    withdrawn: Mutex<HashSet<ExecRef>>,
    /// Runs decided ahead of their slot, to launch at the instant (see [`launch_loop`]).
    launch_at: UnboundedSender<(Timestamp, Vec<Prepared>)>,
    stopping: CancellationToken,
}

/// Everything `main` needs to run and stop a node.
pub struct Running {
    pub node: Arc<Node>,
    pub http_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    pub async fn start(config: Config) -> anyhow::Result<Running> {
        if !config.server {
            anyhow::bail!("running without --server (an agent-only node) needs a cluster; start with --server");
        }
        if config.bootstrap_expect > 1 {
            anyhow::bail!(
                "--bootstrap-expect {}: multi-server clusters are not available yet; use --bootstrap-expect 1",
                config.bootstrap_expect
            );
        }
        kairos_agent::install_crypto_provider();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("--data-dir: cannot create '{}'", config.data_dir.display()))?;
        let id = node_id(&config.data_dir)?;
        let raft_dir = config.data_dir.join("raft");
        std::fs::create_dir_all(&raft_dir)?;
        let (events_tx, events_rx) = unbounded_channel();
        let log = LogStore::open(&raft_dir.join("log.redb")).context("opening the Raft log")?;
        let machine = StateMachine::open(&raft_dir.join("state.redb"), config.executions_retained, Some(events_tx))
            .context("opening the state")?;
        let state = machine.reader();

        let rpc_listener = tokio::net::TcpListener::bind(rpc_bind_addr(&config)?)
            .await
            .with_context(|| format!("--rpc-port: cannot listen on port {}", config.rpc_port))?;
        let rpc_addr = advertised(rpc_listener.local_addr()?, &config);
        let raft_config = openraft::Config {
            cluster_name: "kairos".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 1_000,
            purge_batch_size: 256,
            ..Default::default()
        }
        .validate()?;
        let network = crate::cluster::Network { http: reqwest::Client::new() };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, machine).await?;
        if !raft.is_initialized().await? {
            let members = BTreeMap::from([(id, BasicNode::new(rpc_addr.to_string()))]);
            raft.initialize(members).await.context("bootstrapping the single-server cluster")?;
        }

        let outputs = OutputStore::open(config.data_dir.join("outputs"))?;
        let (reports_tx, reports_rx) = unbounded_channel();
        let worker = Worker::new(&config, outputs.clone(), reports_tx);
        let (changes_tx, changes_rx) = unbounded_channel();
        let (launch_tx, launch_rx) = unbounded_channel();
        let node = Arc::new(Node {
            config: config.clone(),
            id,
            raft: raft.clone(),
            state,
            outputs,
            worker,
            rpc_addr,
            dispatched: Mutex::new(HashMap::new()),
            dispatch_wake: Notify::new(),
            withdrawn: Mutex::new(HashSet::new()),
            launch_at: launch_tx,
            stopping: CancellationToken::new(),
        });

        let http_listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("--http-addr: cannot listen on {}", config.http_addr))?;
        let http_addr = http_listener.local_addr()?;
        let mut tasks = Vec::new();
        let rpc = crate::cluster::rpc_router(raft.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(err) = axum::serve(rpc_listener, rpc).await {
                warn!("rpc listener stopped: {err}");
            }
        }));
        let api = crate::api::router(node.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(err) = axum::serve(http_listener, api).await {
                warn!("http listener stopped: {err}");
            }
        }));
        tasks.push(tokio::spawn(events_loop(node.clone(), events_rx, changes_tx)));
        tasks.push(tokio::spawn(crate::scheduler::run(node.clone(), changes_rx)));
        tasks.push(tokio::spawn(dispatch_loop(node.clone())));
        tasks.push(tokio::spawn(launch_loop(node.clone(), launch_rx)));
        tasks.push(tokio::spawn(crate::worker::report_loop(node.clone(), reports_rx)));
        tasks.push(tokio::spawn(crate::worker::renew_loop(node.clone())));
        match &config.config_file {
            Some(file) => info!("configuration read from {}", file.display()),
            None => info!("no configuration file found; using flags, environment and defaults"),
        }
        info!(node = %config.node_name, id, rpc = %rpc_addr, "node started");
        Ok(Running { node, http_addr, tasks })
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    pub fn leader_name(&self) -> Option<String> {
        self.is_leader().then(|| self.config.node_name.clone())
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    pub async fn stopping(&self) {
        self.stopping.cancelled().await
    }

    /// Wait until this node leads; false if the node stops first.
    pub async fn wait_for_leadership(&self) -> bool {
        let mut metrics = self.raft.metrics();
        loop {
            if self.is_stopping() {
                return false;
            }
            if metrics.borrow_watched().state == ServerState::Leader {
                return true;
            }
            tokio::select! {
                _ = self.stopping.cancelled() => return false,
                changed = metrics.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// A future that completes when this node stops leading.
    pub fn leadership_lost(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let mut metrics = self.raft.metrics();
        Box::pin(async move {
            loop {
                if metrics.borrow_watched().state != ServerState::Leader {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// Propose a command through Raft and wait for it to be applied. Refusals become API errors; executions the
    /// command created are dispatched.
    pub async fn submit(&self, command: Command) -> Result<Response, ApiError> {
        let started = Instant::now();
        let what = tracing::enabled!(tracing::Level::TRACE).then(|| command.to_string());
        let response = match self.raft.client_write(command).await {
            Ok(written) => written.data,
            Err(err) => {
                if let Some(forward) = err.forward_to_leader() {
                    let leader = forward.leader_node.as_ref().map(|n| n.addr.clone()).unwrap_or_default();
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("this node is not the leader (leader: {leader}); retry"),
                    ));
                }
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("raft: {err}")));
            }
        };
        if let Some(refusal) = response.refusal.clone() {
            return Err(refusal.into());
        }
        let committed = started.elapsed();
        self.after_commit(&response);
        if let Some(what) = what {
            tracing::trace!("{what}: committed in {committed:?}, dispatched after {:?}", started.elapsed());
        }
        Ok(response)
    }

    fn after_commit(&self, response: &Response) {
        for exec_ref in &response.to_cancel {
            self.worker.cancel(exec_ref, "cancelled: replaced by a newer execution (concurrency: replace)");
        }
        let now = Timestamp::now();
        let mut timed: BTreeMap<Timestamp, Vec<Prepared>> = BTreeMap::new();
        let mut later = false;
        for exec in response.executions.iter().filter(|e| e.status == ExecutionStatus::Pending) {
            match exec.not_before {
                // Decided ahead of its slot: get it ready now, launch it at the instant.
                Some(at) if at > now && at.duration_since(now).unsigned_abs() <= DECIDE_AHEAD_MAX => {
                    timed.entry(at).or_default().extend(self.prepare(exec));
                }
                Some(at) if at > now => later = true,
                _ => self.dispatch(exec),
            }
        }
        for (at, runs) in timed {
            // The receiver lives as long as the node; if it is gone the node is stopping.
            let _ = self.launch_at.send((at, runs));
        }
        if later {
            self.dispatch_wake.notify_one();
        }
    }

    /// Claim a committed, pending execution for this leader (once) and get it ready to run.
    fn prepare(&self, exec: &Execution) -> Option<Prepared> {
        if self.is_stopping() {
            return None;
        }
        let exec_ref = ExecRef { job: exec.job_name.clone(), id: exec.id.clone() };
        {
            let mut dispatched = self.dispatched.lock().expect("dispatch set lock");
            if dispatched.contains_key(&exec_ref) {
                return None;
            }
            dispatched.insert(exec_ref, Instant::now());
        }
        match self.state.definition(&exec.job_name) {
            Ok(Some(job)) => Some(self.worker.prepare(exec, &job)),
            Ok(None) => None,
            Err(err) => {
                warn!("dispatch: cannot read job {}: {err}", exec.job_name);
                None
            }
        }
    }

    /// Hand a committed, pending execution to a worker now, once.
    fn dispatch(&self, exec: &Execution) {
        if let Some(prepared) = self.prepare(exec) {
            self.worker.launch(prepared);
        }
    }

    /// Stop a run of this node: cancel it if it runs, or withdraw it if it is claimed but not launched yet.
    /// True if it was running (its finish will be reported by the worker).
    fn stop_run(&self, exec_ref: &ExecRef, reason: &str) -> bool {
        if self.worker.cancel(exec_ref, reason) {
            return true;
        }
        if self.dispatched.lock().expect("dispatch set lock").contains_key(exec_ref) {
            self.withdrawn.lock().expect("withdrawn lock").insert(exec_ref.clone());
        }
        false
    }

    /// Cancel a pending or running execution wherever it is.
    pub async fn cancel(&self, exec: &Execution) -> Result<(), ApiError> {
        let exec_ref = ExecRef { job: exec.job_name.clone(), id: exec.id.clone() };
        if self.stop_run(&exec_ref, "cancelled by request") {
            return Ok(());
        }
        // Not running here: nothing to stop, so record the cancellation directly.
        let finish = Finish {
            exec: exec_ref,
            status: ExecutionStatus::Cancelled,
            exit_code: None,
            error: Some("cancelled by request before it ran".into()),
            output_tail: String::new(),
            output_bytes: 0,
            node: self.config.node_name.clone(),
            started_at: None,
            finished_at: Timestamp::now(),
            retry_at: None,
            only_if_lease_expired: false,
        };
        self.submit(Command::Finish { results: vec![finish] }).await.map(|_| ())
    }

    pub fn member_tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.config.tags.clone();
        tags.insert("role".into(), "kairos".into());
        tags.insert("server".into(), self.config.server.to_string());
        tags.insert("dc".into(), self.config.datacenter.clone());
        tags.insert("region".into(), self.config.region.clone());
        tags.insert("rpc_addr".into(), self.rpc_addr.to_string());
        tags.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        tags
    }

    /// This node as Dkron's API shows a member (serf's field names).
    pub fn member_self(&self) -> serde_json::Value {
        json!({
            "id": self.id.to_string(),
            "Name": self.config.node_name,
            "Addr": self.rpc_addr.ip().to_string(),
            "Port": self.rpc_addr.port(),
            "Tags": self.member_tags(),
            "Status": 1,
            "statusText": "alive",
            "leader": self.is_leader(),
        })
    }

    pub fn raft_summary(&self) -> serde_json::Value {
        let metrics = self.raft.metrics().borrow_watched().clone();
        json!({
            "id": metrics.id,
            "state": format!("{:?}", metrics.state),
            "term": metrics.current_term,
            "last_log_index": metrics.last_log_index,
            "last_applied": metrics.last_applied.map(|l| l.index),
            "leader": metrics.current_leader,
        })
    }

    /// Stop in order: no new fires, let running executions finish (bounded), report them, stop Raft.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        info!("shutting down: waiting up to {:?} for running executions", self.config.shutdown_grace);
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        while self.worker.running_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.worker.running_count() > 0 {
            warn!("shutting down: cancelling {} executions still running", self.worker.running_count());
            self.worker.cancel_all("cancelled: the server shut down");
            let deadline = tokio::time::Instant::now() + self.config.kill_grace + Duration::from_secs(2);
            while self.worker.running_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.worker.flush_reports().await;
        if let Err(err) = self.raft.shutdown().await {
            warn!("raft shutdown: {err}");
        }
    }
}

impl Running {
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The node's Raft id: random on first start, then kept in the data directory.
fn node_id(data_dir: &Path) -> anyhow::Result<u64> {
    let path = data_dir.join("node-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return text.trim().parse().with_context(|| format!("corrupt node id in '{}'", path.display()));
    }
    let id = rand::random::<u64>() >> 1;
    std::fs::write(&path, id.to_string())?;
    Ok(id)
}

fn rpc_bind_addr(config: &Config) -> anyhow::Result<SocketAddr> {
    let host = config.bind_addr.rsplit_once(':').map_or(config.bind_addr.as_str(), |(h, _)| h);
    format!("{host}:{}", config.rpc_port)
        .parse()
        .with_context(|| format!("--bind-addr: '{}' is not host:port", config.bind_addr))
}

/// The address peers use: the advertise address's host if given, else the bound one (0.0.0.0 → 127.0.0.1).
fn advertised(bound: SocketAddr, config: &Config) -> SocketAddr {
    let host = config
        .advertise_addr
        .as_deref()
        .and_then(|a| a.rsplit_once(':').map_or(Some(a), |(h, _)| Some(h)))
        .and_then(|h| h.parse().ok());
    let ip = host.unwrap_or(if bound.ip().is_unspecified() { [127, 0, 0, 1].into() } else { bound.ip() });
    SocketAddr::new(ip, bound.port())
}

/// React to what the state machine applied: wake the scheduler and dispatcher, drop pruned outputs, cancel.
async fn events_loop(node: Arc<Node>, mut events: UnboundedReceiver<Vec<Event>>, changes: UnboundedSender<String>) {
    while let Some(batch) = events.recv().await {
        for event in batch {
            match event {
                Event::JobChanged(name) => {
                    let _ = changes.send(name);
                }
                Event::JobDeleted(name) => {
                    if let Err(err) = node.outputs.delete_job(&name) {
                        warn!("cannot delete outputs of job {name}: {err}");
                    }
                    let _ = changes.send(name);
                }
                // Pending executions reach the leader's dispatcher through the responses of the commands that
                // created them; the periodic sweep catches the rest. Sweeping on every applied batch would decode
                // every active execution hundreds of times a second under load.
                Event::Pending => {}
                Event::Pruned(refs) => {
                    for r in refs {
                        if let Err(err) = node.outputs.delete(&r.job, &r.id) {
                            warn!("cannot delete output {}/{}: {err}", r.job, r.id);
                        }
                    }
                }
                Event::Cancel(refs) => {
                    for r in refs {
                        node.stop_run(&r, "cancelled: the job was deleted or replaced");
                    }
                }
            }
        }
    }
}

/// The leader's safety net: dispatch pending executions whose time has come (retries after their backoff, and
/// anything decided by a previous leader), and turn expired leases into `lost`.
async fn dispatch_loop(node: Arc<Node>) {
    loop {
        if !node.wait_for_leadership().await {
            return;
        }
        node.dispatched.lock().expect("dispatch set lock").clear();
        let mut first_sweep = true;
        loop {
            if node.is_stopping() || !node.is_leader() {
                break;
            }
            let mut wait = SWEEP_INTERVAL;
            match sweep(&node, first_sweep).await {
                Ok(Some(retry_at)) => {
                    wait = wait.min(time_until(retry_at));
                }
                Ok(None) => {}
                Err(err) => warn!("dispatcher: {}", err.message),
            }
            first_sweep = false;
            tokio::select! {
                _ = node.stopping.cancelled() => return,
                _ = node.dispatch_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// One pass over the active executions; answers the earliest future retry instant, to wake for it.
async fn sweep(node: &Node, first: bool) -> Result<Option<Timestamp>, ApiError> {
    let now = Timestamp::now();
    let taken = Instant::now();
    let active = node.state.active()?;
    let active_refs: HashSet<ExecRef> =
        active.iter().map(|e| ExecRef { job: e.job_name.clone(), id: e.id.clone() }).collect();
    node.dispatched.lock().expect("dispatch set lock").retain(|r, at| active_refs.contains(r) || *at > taken);
    let next_retry = active
        .iter()
        .filter(|e| e.status == ExecutionStatus::Pending)
        .filter_map(|e| e.not_before)
        .filter(|t| *t > now)
        .min();
    let mut lost = Vec::new();
    for exec in active {
        match exec.status {
            ExecutionStatus::Pending if exec.not_before.is_none_or(|t| t <= now) => node.dispatch(&exec),
            ExecutionStatus::Running => {
                let exec_ref = ExecRef { job: exec.job_name.clone(), id: exec.id.clone() };
                let ours_but_gone = first
                    && exec.node_name == node.config.node_name
                    && !node.worker.is_running(&exec_ref)
                    && !node.dispatched.lock().expect("dispatch set lock").contains_key(&exec_ref);
                let expired = exec.lease_until.is_some_and(|l| l < now);
                if ours_but_gone || expired {
                    let reason = if ours_but_gone {
                        "lost: the node running it restarted"
                    } else {
                        "lost: its lease expired without a renewal"
                    };
                    lost.push((exec, reason));
                }
            }
            _ => {}
        }
    }
    if lost.is_empty() {
        return Ok(next_retry);
    }
    let mut results = Vec::with_capacity(lost.len());
    for (exec, reason) in lost {
        warn!("execution {}/{} {reason}", exec.job_name, exec.id);
        let retry_at = crate::worker::retry_instant(node, &exec.job_name, exec.attempt, now);
        results.push(Finish {
            exec: ExecRef { job: exec.job_name.clone(), id: exec.id.clone() },
            status: ExecutionStatus::Lost,
            exit_code: None,
            error: Some(reason.to_string()),
            output_tail: exec.output.clone(),
            output_bytes: exec.output_bytes,
            node: exec.node_name.clone(),
            started_at: exec.started_at,
            finished_at: now,
            retry_at,
            only_if_lease_expired: !first,
        });
    }
    node.submit(Command::Finish { results }).await?;
    Ok(next_retry)
}

/// Launch runs that were decided ahead of their slot at the slot's instant. The heap orders batches by instant;
/// a batch is dropped if this node stopped leading meanwhile (the next leader's sweep runs what is pending).
async fn launch_loop(node: Arc<Node>, mut batches: UnboundedReceiver<(Timestamp, Vec<Prepared>)>) {
    let mut heap: BinaryHeap<Reverse<(Timestamp, u64)>> = BinaryHeap::new();
    let mut waiting: HashMap<u64, Vec<Prepared>> = HashMap::new();
    let mut sequence = 0u64;
    loop {
        let next = heap.peek().map(|Reverse((at, _))| *at);
        let sleep_for = next.map_or(Duration::from_secs(3600), time_until);
        tokio::select! {
            _ = node.stopping.cancelled() => return,
            batch = batches.recv() => match batch {
                Some((at, runs)) => {
                    sequence += 1;
                    heap.push(Reverse((at, sequence)));
                    waiting.insert(sequence, runs);
                }
                None => return,
            },
            _ = tokio::time::sleep(sleep_for), if next.is_some() => {
                let now = Timestamp::now();
                while let Some(Reverse((at, seq))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    let runs = waiting.remove(&seq).unwrap_or_default();
                    if node.is_leader() {
                        let mut withdrawn = node.withdrawn.lock().expect("withdrawn lock");
                        for prepared in runs {
                            if !withdrawn.remove(prepared.exec_ref()) {
                                node.worker.launch(prepared);
                            }
                        }
                    }
                }
            }
        }
    }
}
