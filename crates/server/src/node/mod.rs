//! A running Kairos server: the Raft instance and its stores, gossip membership, the local worker, and the
//! listeners. The leader's duties live in [`crate::dispatch`] (claiming, placing and fencing runs, leases) and
//! [`crate::scheduler`] (deciding slots).
//!
//! [`Node::start`] opens the data directory and starts openraft. With `--bootstrap-expect 1` (or 0 and no one to
//! join) a fresh node bootstraps a single-voter cluster at once; with N > 1 the servers find each other by
//! gossip and the one with the lowest Raft id bootstraps all N as voters. A server that appears later (or
//! comes back with an empty data directory) is added by the leader, first as a learner, then as a voter.
//! Writes reaching a follower are forwarded to the leader over RPC ([`Node::submit`]).

pub mod applied;
pub mod leaders;
pub mod leadership;
mod permits;
mod present;
mod raft_members;
pub(crate) mod raft_runtime;
mod routes;
pub mod storage;
mod writes;

pub use crate::cluster::Peer;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use kairos_agent::OutputStore;
use kairos_store::{Command, Event, LogStore, Raft, Response, StateMachine, StateReader};
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ServerState};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::RpcClient;
use crate::config::Config;
use crate::duties::Duties;
use crate::gossip::Membership;
use crate::worker::{Reporter, Worker, WorkerChannels};

/// How often the membership duties run (publishing, bootstrapping, adding servers).
const MEMBERSHIP_INTERVAL: Duration = Duration::from_millis(300);
/// How long a write waits for a leader to be known.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Raft timings (milliseconds), each multiplied by `--raft-multiplier`.
const HEARTBEAT_MS: u64 = 50;
const ELECTION_TIMEOUT_MIN_MS: u64 = 250;
const ELECTION_TIMEOUT_MAX_MS: u64 = 350;
/// Longest wait for a leader duty's write to commit (then the duty retries).
pub const LEADER_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Node {
    pub config: Config,
    pub id: u64,
    pub raft: Raft,
    /// The threads Raft, its listener and gossip run on (see [`raft_runtime`]).
    raft_runtime: raft_runtime::RaftRuntime,
    pub state: StateReader,
    pub outputs: OutputStore,
    pub worker: Worker,
    pub rpc_addr: SocketAddr,
    pub membership: Arc<Membership>,
    /// Node-to-node RPC client (connections are pooled and kept alive).
    pub rpc: RpcClient,
    /// The leader's dispatcher with what it sees of this node (idle with term 0 unless this node leads).
    pub dispatch: Arc<crate::dispatch::Host>,
    /// What the leader duties are doing (see [`leadership`]).
    pub duties: Arc<Duties>,
    /// The audit log's writer: the API edge records every write request here (see [`crate::audit`]).
    pub audit: crate::audit::AuditLog,
    /// Webhooks, sent while this node leads (see [`crate::notify`]).
    pub notifier: crate::notify::Notifier,
    /// Servers this leader removed from Raft, with the gossip generation they had: not added back unless they
    /// restart (a leaving server may still look alive for a moment).
    removed: Mutex<HashMap<u64, u64>>,
    /// The leaders this server has seen, and since when (see [`leaders`]).
    pub leaders: leaders::LeaderLog,
    stopping: CancellationToken,
    /// Cancelled when the process should exit by itself (after `kairos leave`, or when storage failed).
    pub exit: CancellationToken,
    /// Why this node's storage failed, once it has (see [`storage`]); the process then exits non-zero.
    pub fatal: std::sync::OnceLock<String>,
}

/// Everything `main` needs to run and stop a node.
pub struct Running {
    pub node: Arc<Node>,
    pub http_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Start a server; `api` builds the router of its HTTP listener (the API and UI of `kairos-http`).
    pub async fn start(config: Config, api: impl FnOnce(Arc<Node>) -> axum::Router) -> anyhow::Result<Running> {
        kairos_agent::install_crypto_provider();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("--data-dir: cannot create '{}'", config.data_dir.display()))?;
        let id = node_id(&config.data_dir)?;
        let (log, machine, events_rx) = open_stores(&config)?;
        let state = machine.reader();

        let rpc_listener = tokio::net::TcpListener::bind(config.rpc_bind_addr()?)
            .await
            .with_context(|| format!("--rpc-port: cannot listen on port {}", config.rpc_port))?;
        let rpc_addr = config.advertised(rpc_listener.local_addr()?);
        let raft_listener = bind_raft_listener(&config).await?;
        let raft_addr = config.advertised(raft_listener.local_addr()?);
        let http_listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("--http-addr: cannot listen on {}", config.http_addr))?;
        let http_addr = http_listener.local_addr()?;
        warn_if_open(&config, http_addr);
        let multiplier = u64::from(config.raft_multiplier);
        let raft_config = raft_config(multiplier)?;
        let tls = config.tls.as_ref().map(crate::tls::Tls::load).transpose()?;
        let rpc = RpcClient::with_credentials(tls.as_ref(), config.encrypt.as_ref())?;
        let raft_runtime = raft_runtime::RaftRuntime::start().context("starting the Raft runtime")?;
        // Raft's own client: its pooled connections are driven by the Raft runtime, not the main one.
        let raft_rpc = RpcClient::with_credentials(tls.as_ref(), config.encrypt.as_ref())?;
        let raft = start_raft(&config, (id, raft_addr), raft_config, raft_rpc, (log, machine), &raft_runtime).await?;
        let public_http = crate::config::public_http_addr(http_addr, config.advertise_ip());
        // Gossip runs on the Raft runtime too: on a leader whose main runtime was busy dispatching, the failure
        // detector went without the other nodes' heartbeats for seconds and took every agent for dead at once.
        let gossip_config = config.clone();
        let gossip = async move {
            Membership::start(&gossip_config, Some(id), (rpc_addr, Some(raft_addr)), Some(public_http)).await
        };
        let membership = Arc::new(raft_runtime.run(gossip).await??);

        let outputs = OutputStore::open_with(config.data_dir.join("outputs"), config.output_limits)?;
        let (worker, channels) = Worker::new(&config, outputs.clone());
        let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
        let ui_base = format!("{}://{public_http}", if config.tls.is_some() { "https" } else { "http" });
        let notifier = start_notifier(&config, &state, ui_base)?;
        let duties = Arc::new(Duties::default());
        let (audit, audit_records) = crate::audit::AuditLog::new();
        let node = Arc::new_cyclic(|weak: &std::sync::Weak<Node>| Node {
            dispatch: crate::dispatch::Host::new(crate::dispatch::HostParts {
                config: config.clone(),
                id,
                rpc_addr,
                state: state.clone(),
                worker: worker.clone(),
                membership: membership.clone(),
                rpc: rpc.clone(),
                duties: duties.clone(),
                writes: Arc::new(writes::WeakWrites(weak.clone())),
            }),
            config: config.clone(),
            id,
            raft: raft.clone(),
            raft_runtime,
            state,
            outputs,
            worker: worker.clone(),
            rpc_addr,
            membership,
            rpc,
            duties,
            audit,
            notifier,
            removed: Mutex::new(HashMap::new()),
            leaders: leaders::LeaderLog::default(),
            stopping: CancellationToken::new(),
            exit: CancellationToken::new(),
            fatal: std::sync::OnceLock::new(),
        });
        worker.set_fence(permits::server_fence(Arc::downgrade(&node), raft.clone(), permits::lease_fresh(multiplier)));

        let api = api(node.clone());
        let mut tasks = serve_listeners(&node, (rpc_listener, raft_listener, http_listener), api, tls.as_ref())?;
        tasks.extend(spawn_loops(&node, channels, events_rx, (changes_tx, changes_rx)));
        let audit_writer: Arc<dyn Reporter> = Arc::new(LocalReporter(node.clone()));
        let audit =
            crate::audit::commit_loop(audit_records, audit_writer, config.audit_retained, node.stopping.clone());
        tasks.push(tokio::spawn(audit));
        match &config.config_file {
            Some(file) => info!("configuration read from {}", file.display()),
            None => info!("no configuration file found; using flags, environment and defaults"),
        }
        crate::agent_node::await_join(&config, &node.membership).await?;
        info!(
            node = %config.node_name, id, rpc = %rpc_addr, raft = %raft_addr, gossip = %node.membership.gossip_addr(),
            "server started"
        );
        crate::logging::announce(config.log_format, &config.node_name, &format!("RPC listening on {rpc_addr}"));
        Ok(Running { node, http_addr, tasks })
    }

    pub fn metrics(&self) -> openraft::RaftMetrics<kairos_store::TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The RPC address of the leader `metrics` name, when that is another server: where a follower forwards.
    /// Gossip tells it; Raft's configuration holds the leader's Raft listener, which answers only Raft, so it
    /// serves only for a leader gossip does not list yet (an earlier version's, whose Raft address is its RPC
    /// address).
    pub fn leader_addr(&self, metrics: &openraft::RaftMetrics<kairos_store::TypeConfig>) -> Option<String> {
        let leader = metrics.current_leader.filter(|l| *l != self.id)?;
        let gossip = self.membership.alive().into_iter().find(|m| m.raft_id == Some(leader)).map(|m| m.rpc_addr);
        gossip.or_else(|| metrics.membership_config.membership().get_node(&leader).map(|n| n.addr.clone()))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    pub async fn stopping(&self) {
        self.stopping.cancelled().await
    }

    /// Stop in order: no new fires, let running executions finish (bounded), report them, stop Raft.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        info!("shutting down: waiting up to {:?} for running executions", self.config.shutdown_grace);
        self.worker.drain(&self.config).await;
        if let Err(err) = self.raft.shutdown().await {
            warn!("raft shutdown: {err}");
        }
    }
}

/// Raft over the stores, on the RPC client, its tasks on `runtime`; a single server (`--bootstrap-expect 1`, or no
/// one to join) that has never been initialized forms its own cluster.
async fn start_raft(
    config: &Config,
    (id, raft_addr): (u64, SocketAddr),
    raft_config: openraft::Config,
    rpc: RpcClient,
    (log, machine): (LogStore, StateMachine),
    runtime: &raft_runtime::RaftRuntime,
) -> anyhow::Result<Raft> {
    let network = crate::cluster::Network { rpc };
    // openraft spawns its core and replication tasks on the runtime it is created on.
    let raft = runtime.run(Raft::new(id, Arc::new(raft_config), network, log, machine)).await??;
    let joining = !config.join.is_empty() || !config.retry_join.is_empty();
    if !raft.is_initialized().await? && config.bootstrap_expect <= 1 && (config.bootstrap_expect == 1 || !joining) {
        let members = BTreeMap::from([(id, BasicNode::new(raft_addr.to_string()))]);
        raft.initialize(members).await.context("bootstrapping the single-server cluster")?;
    }
    Ok(raft)
}

/// The sender of webhooks, mail and Cronitor pings (its duty runs while the node leads).
fn start_notifier(config: &Config, state: &StateReader, ui_base: String) -> anyhow::Result<crate::notify::Notifier> {
    let http = reqwest::Client::builder().user_agent(concat!("kairos/", env!("CARGO_PKG_VERSION"))).build()?;
    let (webhooks, mail, cronitor) = (config.webhooks.clone(), config.mail.clone(), config.cronitor_endpoint.clone());
    let node = crate::notify::Sender { name: config.node_name.clone(), ui_base };
    crate::notify::Notifier::new(webhooks, mail, cronitor, state.clone(), node, http)
}

/// The Raft log and the state machine in the data directory, and the machine's applied events.
fn open_stores(config: &Config) -> anyhow::Result<(LogStore, StateMachine, UnboundedReceiver<Vec<Event>>)> {
    let raft_dir = config.data_dir.join("raft");
    std::fs::create_dir_all(&raft_dir)?;
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let log = LogStore::open(&raft_dir.join("log.redb")).context("opening the Raft log")?;
    let machine = StateMachine::open(&raft_dir.join("state.redb"), config.executions_retained, Some(events_tx))
        .context("opening the state")?;
    Ok((log, machine, events_rx))
}

/// The Raft listener, on `--raft-port` or its default; the port it got is kept in the data directory, so a free
/// port picked once (`--rpc-port 0`) stays this server's Raft address across restarts.
async fn bind_raft_listener(config: &Config) -> anyhow::Result<std::net::TcpListener> {
    let kept = config.data_dir.join("raft-port");
    let used = std::fs::read_to_string(&kept).ok().and_then(|text| text.trim().parse().ok());
    let addr = config.raft_bind_addr(used)?;
    let fresh = config.raft_bind_addr(None)?;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        // A port kept from an earlier start of a server whose Raft port is chosen freely (`--raft-port 0`, or the
        // RPC port 0) that another process took meanwhile: take another free one. The leader follows a server to
        // its new Raft address by itself (see `raft_members`); a lone server is its own leader.
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && used.is_some() && fresh.port() == 0 => {
            warn!("the Raft port kept from the last start ({addr}) is taken by another process: taking a free one");
            tokio::net::TcpListener::bind(fresh)
                .await
                .with_context(|| format!("--raft-port: cannot listen on {fresh} (Raft between servers)"))?
        }
        Err(err) => {
            return Err(err).with_context(|| format!("--raft-port: cannot listen on {addr} (Raft between servers)"));
        }
    };
    let port = listener.local_addr()?.port();
    if used != Some(port) {
        std::fs::write(&kept, port.to_string()).with_context(|| format!("writing '{}'", kept.display()))?;
    }
    // A listener is driven by the runtime it was registered with: it is registered again on the Raft runtime.
    Ok(listener.into_std()?)
}

/// Serve the RPC listener (node-to-node routes), the Raft listener (on the Raft runtime) and the HTTP listener
/// (`api`), TLS on all three when configured.
fn serve_listeners(
    node: &Arc<Node>,
    (rpc_listener, raft_listener, http_listener): (
        tokio::net::TcpListener,
        std::net::TcpListener,
        tokio::net::TcpListener,
    ),
    api: axum::Router,
    tls: Option<&crate::tls::Tls>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let (rpc_tls, api_tls) = (tls.map(|t| t.server.clone()), tls.map(|t| t.server.clone()));
    let raft_tls = tls.map(|t| t.server.clone());
    let rpc_router = rpc_routes(node);
    let rpc = tokio::spawn(async move {
        if let Err(err) = crate::listener::serve(rpc_listener, rpc_router, crate::listener::RPC_LIMITS, rpc_tls).await {
            warn!("rpc listener stopped: {err}");
        }
    });
    let raft_router = raft_routes(node);
    let raft = node.raft_runtime.handle().spawn(async move {
        let served = match tokio::net::TcpListener::from_std(raft_listener) {
            Ok(listener) => crate::listener::serve(listener, raft_router, crate::listener::RAFT_LIMITS, raft_tls).await,
            Err(err) => Err(err),
        };
        if let Err(err) = served {
            warn!("raft listener stopped: {err}");
        }
    });
    let http = tokio::spawn(async move {
        if let Err(err) = crate::listener::serve(http_listener, api, crate::listener::API_LIMITS, api_tls).await {
            warn!("http listener stopped: {err}");
        }
    });
    Ok(vec![rpc, raft, http])
}

/// The node's background loops: applied events, leader duties, dropped orders, the worker's launches, reports and
/// renewals, Raft membership, the storage watch, the clock measurement and the StatsD push.
fn spawn_loops(
    node: &Arc<Node>,
    channels: WorkerChannels,
    events: UnboundedReceiver<Vec<Event>>,
    (changes_tx, changes_rx): (UnboundedSender<String>, UnboundedReceiver<String>),
) -> Vec<tokio::task::JoinHandle<()>> {
    let worker = &node.worker;
    let reporter: Arc<dyn Reporter> = Arc::new(LocalReporter(node.clone()));
    let clock_source = clock_source(node.raft.clone(), node.id);
    vec![
        tokio::spawn(applied::events_loop(node.clone(), events, changes_tx)),
        tokio::spawn(leadership::run(node.clone(), changes_rx)),
        tokio::spawn(leaders::watch(node.clone())),
        tokio::spawn(crate::dispatch::dropped_loop(node.dispatch.clone(), channels.dropped)),
        tokio::spawn(crate::worker::launch_loop(worker.clone(), channels.timer, node.stopping.clone())),
        tokio::spawn(crate::worker::report_loop(worker.clone(), reporter.clone(), channels.reports)),
        tokio::spawn(crate::worker::renew_loop(worker.clone(), reporter, node.stopping.clone())),
        tokio::spawn(crate::memory::trim_loop(worker.clone(), node.stopping.clone())),
        tokio::spawn(raft_members::membership_loop(node.clone())),
        tokio::spawn(storage::watch(node.clone())),
        tokio::spawn(crate::cluster::clock_sync::measure_loop(
            worker.clock.clone(),
            node.membership.clone(),
            node.rpc.clone(),
            clock_source,
            node.stopping.clone(),
        )),
        tokio::spawn(crate::statsd::push_loop(
            node.config.statsd.clone(),
            node.config.node_name.clone(),
            statsd_scrape(node.clone()),
            node.stopping.clone(),
        )),
    ]
}

/// What StatsD pushes: the registry with the gauges read from this server, as a scrape of `/metrics` would.
fn statsd_scrape(node: Arc<Node>) -> crate::statsd::Scrape {
    Box::new(move || {
        let node = node.clone();
        Box::pin(async move { node.metrics_text().await })
    })
}

/// Reports of this server's own worker go straight into Raft (forwarded to the leader when following).
struct LocalReporter(Arc<Node>);

impl Reporter for LocalReporter {
    fn submit(&self, command: Command) -> BoxFuture<'_, Result<Response, String>> {
        Box::pin(async move { self.0.submit_report(command).await.map_err(|e| e.message) })
    }
}

/// openraft's settings: the timings times `--raft-multiplier`, Pre-Vote and CheckQuorum's quiet phase.
fn raft_config(multiplier: u64) -> anyhow::Result<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "kairos".into(),
        // A follower may vote for a new leader once the old leader's lease (election_timeout_max since its
        // last heartbeat) ran out, and starts an election after its own timeout (min..max): with these values a
        // dead leader is replaced within about 0.5-0.7 s (measured by the failover benchmark).
        heartbeat_interval: HEARTBEAT_MS * multiplier,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS * multiplier,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS * multiplier,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
        max_in_snapshot_log_to_keep: 1_000,
        purge_batch_size: 256,
        // A server that was cut off asks first whether it could win before it raises its term, so coming back
        // it does not unseat a leader that kept a quorum (issue 15).
        enable_pre_vote: Some(true),
        // CheckQuorum's quiet phase: a leader that has not heard from a quorum for its lease stops sending
        // heartbeats for a while, so followers that still hear it (a leader that can send but not receive)
        // time out and elect a leader that can lead (openraft issue #2080). The shortest value openraft allows.
        quorum_loss_probe_interval: Some((ELECTION_TIMEOUT_MAX_MS + ELECTION_TIMEOUT_MAX_MS) * multiplier),
        ..Default::default()
    }
    .validate()?;
    Ok(config)
}

/// What a server answers on its Raft listener: Raft and the clock (which followers ask at the leader's Raft
/// address), behind the node credential when the cluster has a key.
fn raft_routes(node: &Arc<Node>) -> axum::Router {
    let router = crate::cluster::rpc_router(node.raft.clone()).merge(routes::clock_router(node.clone()));
    let router = crate::cluster::with_body_limit(router);
    crate::cluster::require_node_credential(router, crate::cluster::node_credential(&node.config))
}

/// Everything a server answers on its RPC listener: the servers' routes, the agent's routes, and Raft's too (for
/// servers of an earlier version, which know this one by its RPC address), behind the node credential when the
/// cluster has a key.
fn rpc_routes(node: &Arc<Node>) -> axum::Router {
    let raft_side = crate::cluster::rpc_router(node.raft.clone()).merge(routes::clock_router(node.clone()));
    let main_side = routes::router(node.clone()).merge(crate::cluster::agent_router(crate::cluster::AgentSide {
        worker: node.worker.clone(),
        outputs: node.outputs.clone(),
        leave: {
            let node = node.clone();
            Arc::new(move || {
                let node = node.clone();
                Box::pin(async move { node.leave().await })
            })
        },
    }));
    let router = crate::cluster::with_body_limit(raft_side.merge(main_side));
    crate::cluster::require_node_credential(router, crate::cluster::node_credential(&node.config))
}

/// Whom a server asks for the time: nobody while it leads (it is the reference), else the leader.
fn clock_source(raft: Raft, id: u64) -> impl Fn() -> crate::clock::Source + Send {
    move || {
        let metrics = raft.metrics().borrow_watched().clone();
        match metrics.current_leader {
            Some(leader) if leader == id && metrics.state == ServerState::Leader => crate::clock::Source::Leading,
            Some(leader) => metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .map_or(crate::clock::Source::Nobody, |n| crate::clock::Source::Ask(n.addr.clone())),
            None => crate::clock::Source::Nobody,
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

impl Running {
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Without ACL, whoever reaches the API may run any command on every node: say so loudly when the API listens
/// beyond this host.
fn warn_if_open(config: &Config, http_addr: SocketAddr) {
    if !config.acl_enabled && !http_addr.ip().is_loopback() {
        warn!(
            "ACL IS DISABLED and the HTTP API listens on {http_addr}, beyond this host: anyone who can reach it may \
             create and run jobs (any shell command) on every node. Enable access control with --acl-enabled (config \
             file: `acl: {{enabled: true}}`) and `kairos acl bootstrap`, or listen on loopback (--http-addr \
             127.0.0.1:8080)"
        );
    }
}
