//! A cluster of real `kairos` processes on 127.0.0.1: N servers (`s0`, `s1`, …; Raft voters with an HTTP API)
//! and M agent-only nodes (`a0`, `a1`, …; no API), each with its own data directory, gossip port and log, all
//! joining the servers' gossip addresses.
//!
//! Or, with [`Cluster::start_on_network`], each node inside a host of a test network of its own (the test kit's
//! [`Network`]: one namespace per node on a bridge, which the harness reaches as the observer), so that one node
//! can be cut off from the others for real ([`Cluster::cut`], [`Cluster::heal`]). Needs root, `ip` and `nft`.
//!
//! Every node is spawned before any is waited for (a server may announce its API only once the servers it expects
//! are there). The cluster is ready when every live server names the same leader and that leader lists every node
//! as alive. Every process is a [`Process`](crate::server::Process): dropping the cluster (an error, a panic) kills
//! whatever still runs.

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use kairos_testkit::{Cut, Network, poll_until};

use crate::client::{Api, Member};
use crate::server::{Agent, Launcher, Launching, Place, Server, Stopped, problem_kinds};

/// Per-request timeout of the probes (a node that hangs must not hold a poll loop up).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The gossip port of every node on a test network (each node has an address of its own there).
const NETWORK_GOSSIP_PORT: u16 = 7946;

/// What to start.
#[derive(Debug, Clone)]
pub struct Layout {
    pub servers: usize,
    pub agents: usize,
    /// `key=value` tags of every agent-only node.
    pub agent_tags: Vec<String>,
    /// Prefix of the log files' names (`<prefix>-s0.log`, …).
    pub log_prefix: String,
}

pub struct Cluster {
    /// Servers by index; `None` once killed.
    servers: Vec<Option<Server>>,
    pub server_names: Vec<String>,
    pub agents: Vec<Agent>,
    pub agent_names: Vec<String>,
    /// Every node's log, by name, killed ones included.
    logs: Vec<(String, std::path::PathBuf)>,
    /// The test network the nodes run in, if any; the last field, so that it is deleted after the nodes were
    /// killed.
    network: Option<Arc<Network>>,
}

impl Cluster {
    /// Spawn every node under `scratch` (one directory each) on loopback, then wait until each listens.
    pub async fn start(launcher: &Launcher, scratch: &Path, layout: &Layout) -> anyhow::Result<Cluster> {
        Cluster::start_at(launcher, scratch, layout, None).await
    }

    /// [`Cluster::start`], node i inside host i of a test network of its own (servers first, then agents).
    pub async fn start_on_network(launcher: &Launcher, scratch: &Path, layout: &Layout) -> anyhow::Result<Cluster> {
        let hosts = layout.servers + layout.agents;
        let network = off_thread("creating a test network", move || Network::create(hosts)).await?;
        Cluster::start_at(launcher, scratch, layout, Some(Arc::new(network))).await
    }

    async fn start_at(
        launcher: &Launcher,
        scratch: &Path,
        layout: &Layout,
        network: Option<Arc<Network>>,
    ) -> anyhow::Result<Cluster> {
        let count = layout.servers + layout.agents;
        let places: Vec<Place> = match &network {
            Some(network) => (0..count).map(|i| Place::Host(network, i)).collect(),
            None => vec![Place::Loopback; count],
        };
        let gossip: Vec<String> = match &network {
            Some(_) => places.iter().map(|p| format!("{}:{NETWORK_GOSSIP_PORT}", p.address())).collect(),
            None => free_gossip_ports(count)?.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        };
        let seeds: Vec<String> =
            gossip[..layout.servers].iter().flat_map(|g| ["--retry-join".to_string(), g.clone()]).collect();
        let server_names: Vec<String> = (0..layout.servers).map(|i| format!("s{i}")).collect();
        let agent_names: Vec<String> = (0..layout.agents).map(|i| format!("a{i}")).collect();
        let mut launching = Vec::new();
        let mut logs = Vec::new();
        let names = server_names.iter().chain(&agent_names);
        for (i, ((name, gossip), place)) in names.zip(&gossip).zip(&places).enumerate() {
            let server = i < layout.servers;
            let mut flags: Vec<String> = Vec::new();
            if server {
                let (expect, http) = (layout.servers.to_string(), format!("{}:0", place.address()));
                flags.extend(["--server", "--bootstrap-expect", &expect, "--http-addr", &http].map(String::from));
            }
            flags.extend(["--bind-addr", gossip, "--rpc-port", "0", "--node-name", name].map(String::from));
            flags.extend(seeds.iter().cloned());
            if !server {
                for tag in &layout.agent_tags {
                    flags.extend(["--tag".to_string(), tag.clone()]);
                }
            }
            flags.extend(["--log-level", "warn", "--shutdown-grace", "2s"].map(String::from));
            let spec = launcher.node_spec(&scratch.join(name), &format!("{}-{name}", layout.log_prefix), flags);
            logs.push((name.clone(), spec.log_path.clone()));
            launching.push(Launching::spawn_at(&spec, *place)?);
        }
        let agents_launching = launching.split_off(layout.servers);
        let mut servers = Vec::with_capacity(layout.servers);
        for (name, node) in server_names.iter().zip(launching) {
            servers.push(Some(node.server().await.with_context(|| format!("server {name}"))?));
        }
        let mut agents = Vec::with_capacity(layout.agents);
        for (name, node) in agent_names.iter().zip(agents_launching) {
            agents.push(node.agent().await.with_context(|| format!("agent {name}"))?);
        }
        Ok(Cluster { servers, server_names, agents, agent_names, logs, network })
    }

    /// Wait (bounded) until every live server names the same leader and that leader lists every node alive;
    /// answers the leader's name.
    pub async fn wait_ready(&self, budget: Duration) -> anyhow::Result<String> {
        let expected = self.servers.iter().flatten().count() + self.agents.len();
        let ready = async || self.readiness(expected).await.map_err(|err| format!("{err:#}"));
        poll_until(budget, POLL_INTERVAL, ready).await.map_err(|timed_out| {
            let seen = timed_out.seen.unwrap_or_else(|| "nothing yet".to_string());
            anyhow!("the cluster was not ready within {budget:?}; last seen: {seen}\n{}", self.log_tails(10))
        })
    }

    async fn readiness(&self, expected: usize) -> anyhow::Result<String> {
        let mut leader: Option<String> = None;
        for (_, server) in self.live_servers() {
            let named: Member = server.api.get_json("/v1/leader", PROBE_TIMEOUT).await?;
            match &leader {
                Some(l) if *l != named.name => bail!("servers disagree on the leader: {l} and {}", named.name),
                _ => leader = Some(named.name),
            }
        }
        let leader = leader.context("no live server")?;
        let index = self.server_index(&leader).with_context(|| format!("leader '{leader}' is not a server of ours"))?;
        let api = &self.server(index).context("the leader is not running")?.api;
        let members: Vec<Member> = api.get_json("/v1/members", PROBE_TIMEOUT).await?;
        let alive = members.iter().filter(|m| m.status == "alive").count();
        if alive != expected {
            let listed: Vec<String> = members.iter().map(|m| format!("{} {}", m.name, m.status)).collect();
            bail!("{alive} of {expected} nodes alive: {}", listed.join(", "));
        }
        Ok(leader)
    }

    /// The live servers with their index.
    pub fn live_servers(&self) -> impl Iterator<Item = (usize, &Server)> {
        self.servers.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    pub fn server(&self, index: usize) -> Option<&Server> {
        self.servers.get(index).and_then(Option::as_ref)
    }

    pub fn server_index(&self, name: &str) -> Option<usize> {
        self.server_names.iter().position(|n| n == name)
    }

    /// The leader as the first live server that knows one names it: (index, name).
    pub async fn leader(&self) -> anyhow::Result<(usize, String)> {
        let mut errors = Vec::new();
        for (i, server) in self.live_servers() {
            match server.api.get_json::<Member>("/v1/leader", PROBE_TIMEOUT).await {
                Ok(m) => match self.server_index(&m.name) {
                    Some(index) => return Ok((index, m.name)),
                    None => errors.push(format!("{} names '{}'", self.server_names[i], m.name)),
                },
                Err(err) => errors.push(format!("{}: {err:#}", self.server_names[i])),
            }
        }
        bail!("no live server names a leader: {}", errors.join("; "))
    }

    /// The leader's API, waiting (bounded) until the servers name one that runs.
    pub async fn leader_api(&self, budget: Duration) -> anyhow::Result<Api> {
        let running_leader = async || match self.leader().await {
            Ok((index, name)) => match self.server(index) {
                Some(server) => Ok(server.api.clone()),
                None => Err(format!("the servers name '{name}' as the leader, which does not run")),
            },
            Err(err) => Err(format!("{err:#}")),
        };
        poll_until(budget, POLL_INTERVAL, running_leader).await.map_err(|timed_out| anyhow!("{timed_out}"))
    }

    /// `kill -9` a server and reap it.
    pub fn kill9_server(&mut self, index: usize) -> anyhow::Result<()> {
        let mut server = self.servers.get_mut(index).and_then(Option::take).context("no such live server")?;
        server.process.kill9();
        Ok(())
    }

    /// Cut node `index` off from the other nodes (not from the harness), as `cut` says; replaces an earlier cut.
    pub async fn cut(&self, index: usize, cut: Cut) -> anyhow::Result<()> {
        let network = self.network.clone().context("a cut needs a cluster started on a test network")?;
        off_thread("cutting a node off", move || network.cut(index, cut)).await
    }

    /// Undo [`Cluster::cut`].
    pub async fn heal(&self, index: usize) -> anyhow::Result<()> {
        let network = self.network.clone().context("a heal needs a cluster started on a test network")?;
        off_thread("healing a cut", move || network.heal(index)).await
    }

    /// Every running process: (name, pid), servers first.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let servers = self.live_servers().map(|(i, s)| (self.server_names[i].clone(), s.pid));
        let agents = self.agent_names.iter().cloned().zip(self.agents.iter().map(|a| a.pid));
        servers.chain(agents).collect()
    }

    /// SIGTERM every node (agents first), each waited for in turn.
    pub async fn stop(mut self) -> Vec<(String, anyhow::Result<Stopped>)> {
        let mut stopped = Vec::new();
        for (name, agent) in self.agent_names.iter().zip(&mut self.agents) {
            stopped.push((name.clone(), Ok(crate::server::stop(&mut agent.process).await)));
        }
        for (name, server) in self.server_names.iter().zip(&mut self.servers) {
            if let Some(server) = server.take() {
                stopped.push((name.clone(), server.stop().await));
            }
        }
        stopped
    }

    /// Every node's log file, by name (killed nodes included).
    pub fn log_paths(&self) -> Vec<(String, std::path::PathBuf)> {
        self.logs.clone()
    }

    /// Warnings and errors every node logged (killed ones included), by kind, most frequent first.
    pub fn log_problems(&self) -> Vec<(String, usize)> {
        problem_kinds(self.logs.iter().map(|(_, path)| path.as_path()))
    }

    fn log_tails(&self, lines: usize) -> String {
        let tails: Vec<String> = self
            .logs
            .iter()
            .map(|(name, path)| format!("--- {name}:\n{}", crate::server::log_tail(path, lines)))
            .collect();
        tails.join("\n")
    }
}

/// Run a call of the test kit's network off the async threads (it runs `ip` and `nft` and waits for them); its
/// panic (the kit panics naming the command that failed, as a test wants) becomes an error.
async fn off_thread<T: Send + 'static>(what: &str, call: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(call).await.map_err(|err| {
        let reason = match err.try_into_panic() {
            Ok(panic) => match (panic.downcast_ref::<String>(), panic.downcast_ref::<&str>()) {
                (Some(text), _) => text.clone(),
                (None, Some(text)) => (*text).to_string(),
                (None, None) => "a panic".to_string(),
            },
            Err(err) => err.to_string(),
        };
        anyhow!("{what}: {reason} (the test network needs root, `ip` and `nft`)")
    })
}

/// `count` distinct loopback ports free for UDP (gossip) and TCP alike: all are held until all are found, then
/// released for the nodes to bind.
fn free_gossip_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let mut held = Vec::new();
    for _ in 0..count * 20 {
        if held.len() == count {
            break;
        }
        let udp = UdpSocket::bind("127.0.0.1:0").context("binding a UDP port")?;
        let port = udp.local_addr()?.port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
            held.push((port, udp, tcp));
        }
    }
    if held.len() < count {
        bail!("found only {} of {count} free gossip ports", held.len());
    }
    Ok(held.into_iter().map(|(port, _, _)| port).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_ports_are_distinct() {
        let ports = free_gossip_ports(5).unwrap();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 5);
    }
}
