//! An agent-only node (`kairos agent` without `--server`): it joins gossip with its tags, runs what the leader
//! orders, keeps the full output of its runs, and reports to the servers over RPC. It stores no cluster state.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use kairos_agent::OutputStore;
use kairos_store::{Command, Response};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::{RpcClient, RpcError};
use crate::config::Config;
use crate::gossip::{Membership, ServerChoice};
use crate::worker::{Reporter, Worker};

pub struct AgentNode {
    pub config: Config,
    pub worker: Worker,
    pub membership: Arc<Membership>,
    /// The threads gossip runs on.
    _gossip_runtime: crate::node::raft_runtime::RaftRuntime,
    stopping: CancellationToken,
    /// Cancelled when the process should exit by itself (after `kairos leave`).
    pub exit: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AgentNode {
    pub async fn start(config: Config) -> anyhow::Result<AgentNode> {
        kairos_agent::install_crypto_provider();
        if config.join.is_empty() && config.retry_join.is_empty() {
            anyhow::bail!(
                "an agent (no --server) needs servers to join: give --join or --retry-join with a server's gossip \
                 address (or start with --server)"
            );
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("--data-dir: cannot create '{}'", config.data_dir.display()))?;
        let rpc_listener = tokio::net::TcpListener::bind(config.rpc_bind_addr()?)
            .await
            .with_context(|| format!("--rpc-port: cannot listen on port {}", config.rpc_port))?;
        let rpc_addr = config.advertised(rpc_listener.local_addr()?);
        // Gossip on threads of its own (see crate::node::raft_runtime): an agent whose runs keep its cores busy
        // still sends its heartbeats, and is not taken for dead.
        let gossip_runtime =
            crate::node::raft_runtime::RaftRuntime::for_gossip().context("starting gossip's runtime")?;
        let gossip_config = config.clone();
        let gossip = async move { Membership::start(&gossip_config, None, (rpc_addr, None), None).await };
        let membership = Arc::new(gossip_runtime.run(gossip).await??);
        let outputs = OutputStore::open_with(config.data_dir.join("outputs"), config.output_limits)?;
        let (worker, channels) = Worker::new(&config, outputs.clone());
        let stopping = CancellationToken::new();
        let exit = CancellationToken::new();
        let tls = config.tls.as_ref().map(crate::tls::Tls::load).transpose()?;
        let rpc = RpcClient::with_credentials(tls.as_ref(), config.encrypt.as_ref())?;
        let clock_rpc = rpc.clone();
        worker.set_fence(crate::permit::agent_fence(membership.clone(), rpc.clone(), config.node_name.clone()));
        let reporter: Arc<dyn Reporter> =
            Arc::new(RemoteReporter { membership: membership.clone(), rpc, choice: ServerChoice::default() });
        let side = crate::cluster::AgentSide {
            worker: worker.clone(),
            outputs,
            leave: {
                let (membership, exit) = (membership.clone(), exit.clone());
                Arc::new(move || {
                    let (membership, exit) = (membership.clone(), exit.clone());
                    Box::pin(async move {
                        info!("leaving the cluster");
                        membership.leave().await;
                        exit.cancel();
                    })
                })
            },
        };
        let mut router = crate::cluster::agent_router(side);
        if config.enable_prometheus {
            router = router.merge(crate::cluster::metrics_router());
        }
        let router = crate::cluster::with_body_limit(router);
        let router = crate::cluster::require_node_credential(router, crate::cluster::node_credential(&config));
        let mut tasks = Vec::new();
        let rpc_tls = tls.map(|tls| tls.server);
        tasks.push(tokio::spawn(async move {
            if let Err(err) = crate::listener::serve(rpc_listener, router, crate::listener::RPC_LIMITS, rpc_tls).await {
                warn!("rpc listener stopped: {err}");
            }
        }));
        tasks.push(tokio::spawn(crate::worker::launch_loop(worker.clone(), channels.timer, stopping.clone())));
        tasks.push(tokio::spawn(crate::worker::report_loop(worker.clone(), reporter.clone(), channels.reports)));
        tasks.push(tokio::spawn(crate::worker::renew_loop(worker.clone(), reporter, stopping.clone())));
        tasks.push(tokio::spawn(crate::memory::trim_loop(worker.clone(), stopping.clone())));
        // An agent does not know the leader: it asks any server, which adds its own offset from the leader.
        let clock_source = {
            let membership = membership.clone();
            move || match membership.alive().into_iter().find(|m| m.server) {
                Some(server) => crate::clock::Source::Ask(server.rpc_addr),
                None => crate::clock::Source::Nobody,
            }
        };
        tasks.push(tokio::spawn(crate::cluster::clock_sync::measure_loop(
            worker.clock.clone(),
            membership.clone(),
            clock_rpc,
            clock_source,
            stopping.clone(),
        )));
        // An agent has no Raft, state or gossip gauges to read first: the registry is what it pushes.
        let scrape: crate::statsd::Scrape = Box::new(|| Box::pin(async { crate::metrics::metrics().render() }));
        let statsd =
            crate::statsd::push_loop(config.statsd.clone(), config.node_name.clone(), scrape, stopping.clone());
        tasks.push(tokio::spawn(statsd));
        // Orders the fence dropped need no action here: the leader learns it when it asks what this node holds.
        let mut dropped = channels.dropped;
        tasks.push(tokio::spawn(async move { while dropped.recv().await.is_some() {} }));
        await_join(&config, &membership).await?;
        info!(node = %config.node_name, rpc = %rpc_addr, gossip = %membership.gossip_addr(), "agent started");
        crate::logging::announce(config.log_format, &config.node_name, &format!("RPC listening on {rpc_addr}"));
        Ok(AgentNode { config, worker, membership, _gossip_runtime: gossip_runtime, stopping, exit, tasks })
    }

    /// Let running executions finish (bounded), report them, leave gossip.
    pub async fn shutdown(self) {
        self.stopping.cancel();
        self.worker.drain(&self.config).await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// `--join` must reach someone at start; `--retry-join` with `--retry-max N` gives up after N intervals.
pub async fn await_join(config: &Config, membership: &Membership) -> anyhow::Result<()> {
    let others = || membership.alive().iter().any(|m| m.name != membership.self_name());
    let deadline = if !config.join.is_empty() {
        Some(Duration::from_secs(10))
    } else if !config.retry_join.is_empty() && config.retry_max > 0 {
        Some(config.retry_interval * config.retry_max)
    } else {
        None
    };
    let Some(deadline) = deadline else { return Ok(()) };
    let until = tokio::time::Instant::now() + deadline;
    while !others() {
        if tokio::time::Instant::now() >= until {
            let seeds: Vec<&String> = config.join.iter().chain(&config.retry_join).collect();
            anyhow::bail!("--join/--retry-join: no node answered at {seeds:?} within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// An agent reports to a live server over RPC (any server: followers forward to the leader); on failure it tries
/// the next one.
struct RemoteReporter {
    membership: Arc<Membership>,
    rpc: RpcClient,
    choice: ServerChoice,
}

impl Reporter for RemoteReporter {
    fn submit(&self, command: Command) -> BoxFuture<'_, Result<Response, String>> {
        Box::pin(async move {
            let servers = self.choice.order(&self.membership);
            if servers.is_empty() {
                return Err("no live server is known".into());
            }
            let mut last_error = String::new();
            for addr in &servers {
                match self.rpc.report(addr, &command).await {
                    Ok(response) => return Ok(response),
                    // The server handled it and refused: another server would refuse it too.
                    Err(RpcError::Rejected { message, .. }) => return Err(message),
                    Err(err) => last_error = format!("{addr}: {err}"),
                }
                self.choice.failed();
            }
            Err(last_error)
        })
    }
}
