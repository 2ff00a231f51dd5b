//! The multi-process harness: a cluster of real `kairos` processes on 127.0.0.1, servers (Raft voters that serve
//! the HTTP API) and agent-only nodes, each with its own data directory, gossip port and captured log.
//!
//! Nodes are addressed by index: the servers first (`s1`, `s2`, … at 0, 1, …), then the agents in the order
//! given, then the servers added later ([`Cluster::add_server`]: `s4`, … with empty data directories). Every
//! process of a (re)start is spawned before any is waited for, since a server may announce itself only once the
//! cluster has the servers it expects. The harness kills (`SIGKILL`), pauses (`SIGSTOP`), resumes,
//! stops (`SIGTERM`) and restarts nodes, and finds the leader by asking every live server. A restarted node keeps
//! its data directory, its gossip port and the RPC port it bound the first time (as a server with a configured
//! port would); its HTTP port is picked afresh and read from its log again.
//!
//! Nothing sleeps for correctness: every wait polls until a deadline and, when it gives up, names what it waited
//! for and what it saw last. When a test panics, the harness's event log and the tail of every node's log are
//! printed, and the full logs are kept in `$TMPDIR/kairos-cluster-logs-<test>-<pid>/`; dropping the cluster
//! stops every process (SIGCONT, SIGTERM, then SIGKILL).

#![allow(dead_code)]

mod tickers;

#[allow(unused_imports)] // not every test binary uses the tickers
pub use tickers::*;

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kairos_testkit::{
    Client, Cut, LaunchError, Listener, Listening, Log, Network, Process, Signal, clean_kairos_env, free_port_where,
    kairos_command,
};
use serde::Deserialize;
use tempfile::TempDir;

use crate::common::{
    Exec, KAIROS_BIN, Reply, Timestamp, Value, finish_command, kill_leftover, process_alive, wait_until,
};

/// How long the nodes of one (re)start may take, together, to print their listening lines.
pub const NODE_START_DEADLINE: Duration = Duration::from_secs(30);
/// How long dropped nodes may take, together, to stop their runs after SIGTERM before they are killed.
const DROP_GRACE: Duration = Duration::from_secs(10);
/// How long a cluster may take to elect a leader known to every live server and to see every live node alive.
pub const FORM_DEADLINE: Duration = Duration::from_secs(60);
/// How long a stopped (or leaving) node may take to exit.
pub const NODE_EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// How long a write may keep meeting transient answers (an election, a lagging follower) before the test fails.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// Per-request timeout of probes: a node that hangs must not hold a poll loop up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Per-request timeout of writes the harness retries.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request timeout of the plain (non-retried) requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `kairos` CLI command may run.
const CLI_DEADLINE: Duration = Duration::from_secs(30);
/// Lines of each node's log printed when a test fails.
const LOG_LINES_ON_FAILURE: usize = 200;

/// One line per execution, oldest slot first, with its id and the node that ran it, for failure messages.
pub fn runs(execs: &[Exec]) -> String {
    let mut sorted: Vec<&Exec> = execs.iter().collect();
    sorted.sort_by(|a, b| (a.scheduled_at, a.attempt, &a.id).cmp(&(b.scheduled_at, b.attempt, &b.id)));
    let at = |t: Option<Timestamp>| t.map_or("-".to_string(), |t| t.to_string());
    let line = |e: &&Exec| {
        format!(
            "  {} {} #{} {} {} on {} started {} finished {}",
            e.id,
            e.scheduled_at,
            e.attempt,
            e.trigger,
            e.status,
            if e.node_name.is_empty() { "-" } else { &e.node_name },
            at(e.started_at),
            at(e.finished_at)
        )
    };
    sorted.iter().map(line).collect::<Vec<_>>().join("\n")
}

/// A node as `GET /v1/members` shows it (serf's field names).
#[derive(Debug, Clone, Deserialize)]
pub struct Member {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Addr")]
    pub addr: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "Tags", default)]
    pub tags: BTreeMap<String, String>,
    #[serde(rename = "Status")]
    pub status: i64,
    #[serde(rename = "statusText")]
    pub status_text: String,
    #[serde(default)]
    pub leader: bool,
}

/// One row of `kairos raft list-peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub id: String,
    pub address: String,
    pub state: String,
    pub voter: bool,
}

impl Peer {
    pub fn is_leader(&self) -> bool {
        self.state.eq_ignore_ascii_case("leader")
    }
}

/// Read the `Node ID Address State Voter` table. Columns are found by their header: cells lie under their header
/// word (a cell may be empty, e.g. the name of a server gossip no longer knows), or between `|` when the table has
/// them; ruler lines are skipped.
pub fn parse_peers(table: &str) -> Vec<Peer> {
    let lines: Vec<&str> = table.lines().collect();
    let header_at = lines
        .iter()
        .position(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("node") && l.contains("voter")
        })
        .unwrap_or_else(|| panic!("no 'Node … Voter' header in the list-peers output:\n{table}"));
    let header = lines[header_at];
    let piped = header.contains('|');
    // Each line as its cells: between pipes, or under the header words (char offsets where each word starts).
    let header_chars: Vec<char> = header.chars().collect();
    let starts: Vec<usize> = (0..header_chars.len())
        .filter(|&i| !header_chars[i].is_whitespace() && (i == 0 || header_chars[i - 1].is_whitespace()))
        .collect();
    let cells = |line: &str| -> Vec<String> {
        if piped {
            let trimmed = line.trim().trim_matches('|');
            return trimmed.split('|').map(|c| c.trim().to_string()).collect();
        }
        let chars: Vec<char> = line.chars().collect();
        let cell = |from: usize, to: usize| -> String {
            chars.get(from.min(chars.len())..to.min(chars.len())).unwrap_or_default().iter().collect::<String>()
        };
        (0..starts.len())
            .map(|k| cell(starts[k], starts.get(k + 1).copied().unwrap_or(usize::MAX)).trim().to_string())
            .collect()
    };
    let titles = cells(header);
    let column = |name: &str| {
        titles
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .unwrap_or_else(|| panic!("no '{name}' column in the list-peers output:\n{table}"))
    };
    let (node, id, address, state, voter) =
        (column("node"), column("id"), column("address"), column("state"), column("voter"));
    let ruler = |line: &str| line.chars().all(|c| c.is_whitespace() || "-=+|".contains(c));
    lines[header_at + 1..]
        .iter()
        .filter(|line| !ruler(line))
        .map(|line| {
            let row = cells(line);
            assert!(row.len() >= titles.len(), "list-peers row {line:?} does not fill the columns of:\n{table}");
            Peer {
                node: row[node].clone(),
                id: row[id].clone(),
                address: row[address].clone(),
                state: row[state].clone(),
                voter: matches!(row[voter].to_ascii_lowercase().as_str(), "true" | "yes"),
            }
        })
        .collect()
}

/// What a `kairos` CLI command printed, and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run the `kairos` binary with `args` (no `KAIROS_*` environment), failing the test if it takes too long.
pub async fn cli(args: &[&str]) -> CliOutput {
    let mut command = tokio::process::Command::from(kairos_command(Path::new(KAIROS_BIN)));
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let output = tokio::time::timeout(CLI_DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("`kairos {}` did not finish within {CLI_DEADLINE:?}", args.join(" ")))
        .unwrap_or_else(|e| panic!("`kairos {}` could not run: {e}", args.join(" ")));
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Processes a job's command recorded (`echo $$ >> file; exec sleep …`), killed when the guard is dropped, so
/// runs orphaned by a `kill -9` of their node do not outlive the test. Only processes whose command line still
/// starts with `program` are killed (a pid may have been reused).
pub struct Leftovers {
    file: PathBuf,
    program: &'static str,
}

impl Leftovers {
    pub fn new(file: &Path, program: &'static str) -> Leftovers {
        Leftovers { file: file.to_path_buf(), program }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let pids = std::fs::read_to_string(&self.file).unwrap_or_default();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if process_alive(pid) && cmdline.starts_with(self.program.as_bytes()) {
                kill_leftover(pid);
            }
        }
    }
}

/// Free ports for gossip, free for UDP and TCP alike and none of `taken` (ports of nodes that may be down), none
/// repeating, and below the ephemeral range (see [`free_port_where`]).
fn free_gossip_ports(count: usize, taken: &[u16]) -> Vec<u16> {
    (0..count)
        .map(|_| {
            free_port_where(|port| {
                !taken.contains(&port)
                    && UdpSocket::bind(("127.0.0.1", port)).is_ok()
                    && TcpListener::bind(("127.0.0.1", port)).is_ok()
            })
        })
        .collect()
}

/// One `kairos agent` process (server or agent-only), its data directory and its log across restarts.
pub struct Node {
    name: String,
    server: bool,
    bootstrap_expect: usize,
    gossip_port: u16,
    data_dir: PathBuf,
    retry_join: Vec<String>,
    /// The node's `--tag` flags and the cluster's extra arguments, after the standard flags.
    extra: Vec<String>,
    /// Environment variables of this node's process (e.g. a faked clock), set with [`Cluster::set_env`].
    env: Vec<(String, String)>,
    /// The address the node binds and advertises: 127.0.0.1, or its host's on a test network.
    host: String,
    /// The test network and this node's host on it (see [`Cluster::start_on_network`]).
    network: Option<(Arc<Network>, usize)>,
    /// `http`, or `https` for a cluster started with [`Cluster::start_tls`].
    scheme: &'static str,
    /// 0 until the first launch bound a port; restarts reuse it.
    rpc_port: u16,
    process: Option<Process>,
    paused: bool,
    /// What the last launch announced.
    listening: Listening,
    log: Log,
    /// The cluster's connection pool; `api` is bound to the last launch's HTTP address.
    http: reqwest::Client,
    api: Option<Client>,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_server(&self) -> bool {
        self.server
    }

    /// Running and not paused: it answers.
    pub fn is_live(&self) -> bool {
        self.process.is_some() && !self.paused
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    fn process(&mut self) -> &mut Process {
        self.process.as_mut().unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    pub fn pid(&self) -> i32 {
        self.process.as_ref().unwrap_or_else(|| panic!("{} is not running", self.name)).pid()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn gossip_addr(&self) -> String {
        format!("{}:{}", self.host, self.gossip_port)
    }

    /// The node-to-node RPC address it announced (last launch).
    pub fn rpc_addr(&self) -> &str {
        self.listening.rpc.as_deref().unwrap_or_else(|| panic!("{} has not announced its RPC address", self.name))
    }

    /// `http://host:port` of its API (servers only; last launch).
    pub fn http_base(&self) -> String {
        self.api().base().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.http_base(), path)
    }

    /// Everything the node printed so far, across restarts, with the harness's markers.
    pub fn log(&self) -> String {
        self.log.text()
    }

    fn mark(&self, text: &str) {
        self.log.append(&format!("=== {} {text} ===\n", Timestamp::now()));
    }

    /// The API client of the last launch (servers only).
    pub fn api(&self) -> &Client {
        self.api.as_ref().unwrap_or_else(|| panic!("{} has no HTTP API address", self.name))
    }

    fn command(&self) -> Command {
        let mut command = match &self.network {
            Some((network, host)) => {
                let mut command = network.command(*host, Path::new(KAIROS_BIN));
                clean_kairos_env(&mut command);
                command
            }
            None => kairos_command(Path::new(KAIROS_BIN)),
        };
        command.arg("agent");
        if self.server {
            command.args(["--server", "--bootstrap-expect", &self.bootstrap_expect.to_string()]);
            command.args(["--http-addr", &format!("{}:0", self.host)]);
        }
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--bind-addr", &self.gossip_addr()])
            .args(["--rpc-port", &self.rpc_port.to_string()])
            .args(["--node-name", &self.name]);
        for seed in &self.retry_join {
            command.args(["--retry-join", seed]);
        }
        command.args(["--log-level", "info"]);
        finish_command(&mut command, &self.extra, &self.data_dir);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    fn spawn(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.name);
        std::fs::create_dir_all(&self.data_dir).expect("data dir");
        self.mark(&format!(
            "starting {} ({}, gossip {}, rpc port {})",
            self.name,
            if self.server { "server" } else { "agent" },
            self.gossip_addr(),
            self.rpc_port
        ));
        self.process = Some(Process::spawn(&mut self.command(), &self.log).expect("spawn kairos"));
        self.paused = false;
        self.listening = Listening::default();
        self.api = None;
    }

    /// Wait until the node has printed every listening line it owes (RPC, and HTTP for a server); fails the
    /// test if it exits first.
    async fn wait_listening(&mut self, within: Duration) {
        let owed: &[Listener] = if self.server { &[Listener::Rpc, Listener::Http] } else { &[Listener::Rpc] };
        match self.process().wait_listening(owed, within).await {
            Ok(listening) => self.listening = listening,
            Err(LaunchError::Exited(status)) => {
                self.process = None;
                self.mark(&format!("exited: {status}"));
                panic!("{} exited ({status}) before it printed its listening lines", self.name);
            }
            Err(silent) => panic!("{}: {silent}", self.name),
        }
        if let Some(http) = &self.listening.http {
            self.api = Some(Client::with_http(self.http.clone(), &format!("{}://{http}", self.scheme)));
        }
        if self.rpc_port == 0 {
            let addr = self.rpc_addr();
            let port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
            self.rpc_port = port.unwrap_or_else(|| panic!("{}: RPC address {addr:?} has no port", self.name));
        }
    }

    // --- HTTP (servers) ---

    /// One request with its own timeout; `None` when the node does not answer (down, paused, no API).
    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Option<Reply> {
        let api = self.api.as_ref()?;
        api.try_request(method, path, body.map(Value::to_string), Some(timeout)).await.ok()
    }

    /// One request; fails the test when the node does not answer.
    pub async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        match self.try_request(method, path, body, REQUEST_TIMEOUT).await {
            Some(reply) => reply,
            None => panic!("{method} {path}: no answer from {}", self.name),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None).await
    }

    /// `GET path` answered with its body still unread, to read it as it streams (`bytes_stream`); `within`
    /// bounds the whole exchange, body included. Fails the test when the node does not answer.
    pub async fn get_streaming(&self, path: &str, within: Duration) -> reqwest::Response {
        let result = self.http.get(self.url(path)).timeout(within).send().await;
        result.unwrap_or_else(|e| panic!("GET {path}: no answer from {}: {e}", self.name))
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(body)).await
    }

    pub async fn post_empty(&self, path: &str) -> Reply {
        self.request("POST", path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.request("PUT", path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.request("PATCH", path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, None).await
    }

    /// A job's executions as this server has them; `Err` (for polling) when it does not answer 200.
    pub async fn try_executions(&self, job: &str) -> Result<Vec<Exec>, String> {
        let path = format!("/v1/jobs/{job}/executions");
        let reply = self.try_request("GET", &path, None, PROBE_TIMEOUT).await;
        let reply = reply.ok_or_else(|| format!("GET {path}: no answer from {}", self.name))?;
        if reply.status != 200 {
            return Err(format!("GET {path} on {}: {} {}", self.name, reply.status, reply.text));
        }
        Ok(serde_json::from_value(reply.json)
            .unwrap_or_else(|e| panic!("executions of {job} on {}: {e}: {}", self.name, reply.text)))
    }

    /// A job as this server has it; `None` when it answers 404.
    pub async fn job(&self, name: &str) -> Option<Value> {
        let reply = self.get(&format!("/v1/jobs/{name}")).await;
        assert!(reply.status == 200 || reply.status == 404, "GET job {name} on {}: {}", self.name, reply.text);
        (reply.status == 200).then_some(reply.json)
    }

    /// `GET /v1/members`; `None` when the node does not answer 200.
    pub async fn members(&self) -> Option<Vec<Member>> {
        let reply = self.try_request("GET", "/v1/members", None, PROBE_TIMEOUT).await?;
        if reply.status != 200 {
            return None;
        }
        Some(
            serde_json::from_value(reply.json)
                .unwrap_or_else(|e| panic!("/v1/members of {}: {e}: {}", self.name, reply.text)),
        )
    }
}

/// A cluster of `kairos` processes with temporary data directories; everything stops when it is dropped.
pub struct Cluster {
    nodes: Vec<Node>,
    events: Mutex<Vec<String>>,
    root: TempDir,
    /// The nodes' network namespaces, when started with [`Cluster::start_on_network`]; deleted after the nodes
    /// stopped (it is dropped after them).
    network: Option<Arc<Network>>,
}

impl Cluster {
    /// Start `servers` servers (`s1`…, `--bootstrap-expect servers`) and the agent-only nodes `agents` (name and
    /// `key=value` tags), all joining the servers' gossip addresses, with `extra_args` on every node; returns once
    /// every node printed its listening lines (call [`Cluster::wait_formed`] next).
    pub async fn start(servers: usize, agents: &[(&str, &[&str])], extra_args: &[&str]) -> Cluster {
        let mut cluster = Cluster::prepare(servers, agents, extra_args);
        cluster.launch_all().await;
        cluster
    }

    /// The nodes [`Cluster::start`] starts, not started yet: their data directories ([`Node::data_dir`]) can be
    /// prepared first (a small filesystem mounted there, say). Start them with [`Cluster::launch_all`].
    pub fn prepare(servers: usize, agents: &[(&str, &[&str])], extra_args: &[&str]) -> Cluster {
        Cluster::prepare_with(servers, agents, extra_args, None, None)
    }

    /// A cluster whose nodes each run in a network namespace of their own (see [`kairos_testkit::netns`]), so
    /// that [`Cluster::cut`] can cut one off for real; started like [`Cluster::start`]. Needs root.
    pub async fn start_on_network(servers: usize, agents: &[(&str, &[&str])], extra_args: &[&str]) -> Cluster {
        let network = Arc::new(Network::create(servers + agents.len()));
        let mut cluster = Cluster::prepare_with(servers, agents, extra_args, Some(network), None);
        cluster.launch_all().await;
        cluster
    }

    /// A cluster whose nodes serve TLS (the TLS flags are among `extra_args`); the harness talks to their APIs
    /// over HTTPS with `http`, a client that trusts the cluster's CA (and presents a certificate if the nodes ask
    /// for one).
    pub async fn start_tls(
        servers: usize,
        agents: &[(&str, &[&str])],
        extra_args: &[&str],
        http: reqwest::Client,
    ) -> Cluster {
        let mut cluster = Cluster::prepare_with(servers, agents, extra_args, None, Some(http));
        cluster.launch_all().await;
        cluster
    }

    fn prepare_with(
        servers: usize,
        agents: &[(&str, &[&str])],
        extra_args: &[&str],
        network: Option<Arc<Network>>,
        tls_client: Option<reqwest::Client>,
    ) -> Cluster {
        kairos_testkit::install_crypto_provider();
        let root = tempfile::Builder::new().prefix("kairos-cluster-").tempdir().expect("temporary dir");
        let scheme = if tls_client.is_some() { "https" } else { "http" };
        let http = tls_client.unwrap_or_else(|| {
            reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build().expect("http client")
        });
        let count = servers + agents.len();
        // On a test network every node has its own address, so all can use one gossip port.
        let (hosts, ports): (Vec<String>, Vec<u16>) = match &network {
            Some(network) => ((0..count).map(|i| network.ip(i)).collect(), vec![7946; count]),
            None => (vec!["127.0.0.1".to_string(); count], free_gossip_ports(count, &[])),
        };
        let retry_join: Vec<String> = (0..servers).map(|i| format!("{}:{}", hosts[i], ports[i])).collect();
        let extra: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let node = |name: String, server: bool, index: usize, tags: &[&str]| {
            let mut args: Vec<String> = tags.iter().flat_map(|t| ["--tag".to_string(), t.to_string()]).collect();
            args.extend(extra.iter().cloned());
            Node {
                data_dir: root.path().join(&name),
                name,
                server,
                bootstrap_expect: servers,
                gossip_port: ports[index],
                host: hosts[index].clone(),
                network: network.as_ref().map(|n| (n.clone(), index)),
                scheme,
                retry_join: retry_join.clone(),
                extra: args,
                env: Vec::new(),
                rpc_port: 0,
                process: None,
                paused: false,
                listening: Listening::default(),
                log: Log::memory(),
                http: http.clone(),
                api: None,
            }
        };
        let mut nodes: Vec<Node> = (0..servers).map(|i| node(format!("s{}", i + 1), true, i, &[])).collect();
        for (j, (name, tags)) in agents.iter().enumerate() {
            nodes.push(node(name.to_string(), false, servers + j, tags));
        }
        Cluster { nodes, events: Mutex::new(Vec::new()), root, network }
    }

    /// Cut node `i` off from the other nodes (not from the test), as `cut` says; [`Cluster::heal`] undoes it.
    pub fn cut(&self, i: usize, cut: Cut) {
        let network = self.network.as_ref().expect("a cluster started with start_on_network");
        network.cut(i, cut);
        self.note(&format!("cut {} ({cut:?})", self.node_name(i)));
    }

    pub fn heal(&self, i: usize) {
        let network = self.network.as_ref().expect("a cluster started with start_on_network");
        network.heal(i);
        self.note(&format!("healed {}", self.node_name(i)));
    }

    /// Set an environment variable for node `i`'s process from its next launch on.
    pub fn set_env(&mut self, i: usize, key: &str, value: &str) {
        self.nodes[i].env.push((key.to_string(), value.to_string()));
    }

    /// Start every node of a [`Cluster::prepare`]d cluster; returns once each printed its listening lines.
    pub async fn launch_all(&mut self) {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.launch(&all).await;
    }

    /// Start node `i` of a [`Cluster::prepare`]d cluster that was not started yet (a node that appears later).
    pub async fn launch_node(&mut self, i: usize) {
        self.launch(&[i]).await;
    }

    /// Start the nodes at `indices` of a [`Cluster::prepare`]d cluster.
    pub async fn launch_some(&mut self, indices: &[usize]) {
        self.launch(indices).await;
    }

    /// Spawn the nodes at `indices`, then wait until each has printed its listening lines.
    async fn launch(&mut self, indices: &[usize]) {
        for &i in indices {
            self.nodes[i].spawn();
        }
        // Spawned together, waited for in turn: a server may announce itself only once its peers are up.
        let deadline = Instant::now() + NODE_START_DEADLINE;
        for &i in indices {
            self.nodes[i].wait_listening(deadline.saturating_duration_since(Instant::now())).await;
        }
        let started: Vec<String> = indices.iter().map(|&i| self.describe(i)).collect();
        self.note(&format!("listening: {}", started.join("; ")));
    }

    fn describe(&self, i: usize) -> String {
        let node = &self.nodes[i];
        match &node.listening.http {
            Some(http) if node.server => format!("{} rpc {} http {http}", node.name, node.rpc_addr()),
            _ => format!("{} rpc {}", node.name, node.rpc_addr()),
        }
    }

    /// Send `X-Dkron-Token: secret` with every request the harness makes from now on (a cluster with ACL enabled;
    /// a request that sets the header itself sends its own).
    pub fn authorize(&mut self, secret: &str) {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-dkron-token", secret.parse().expect("a secret is a valid header value"));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers)
            .build()
            .expect("http client");
        for node in &mut self.nodes {
            node.http = http.clone();
            if let Some(addr) = &node.listening.http {
                node.api = Some(Client::with_http(http.clone(), &format!("http://{addr}")));
            }
        }
    }

    /// Record a test event (with the time), printed with the logs when the test fails.
    pub fn note(&self, text: &str) {
        self.events.lock().expect("events lock").push(format!("{} {text}", Timestamp::now()));
    }

    /// A scratch directory inside the cluster's temporary directory (for side-effect files).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    // --- Nodes ---

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn server_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.server).count()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// A server, for its HTTP API.
    pub fn server(&self, i: usize) -> &Node {
        let node = &self.nodes[i];
        assert!(node.server, "{} is an agent: it has no HTTP API", node.name);
        node
    }

    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    pub fn rpc_addr(&self, i: usize) -> &str {
        self.nodes[i].rpc_addr()
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no node named {name:?}"))
    }

    /// Indices of the servers that are running and not paused.
    pub fn live_servers(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].server && self.nodes[i].is_live()).collect()
    }

    /// Indices of every node that is running and not paused.
    pub fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_live()).collect()
    }

    /// A live server to talk to (the first one).
    pub fn any_api(&self) -> &Node {
        let i = *self.live_servers().first().expect("no live server left to talk to");
        &self.nodes[i]
    }

    /// Start one more server, with an empty data directory, joining the existing servers' gossip addresses
    /// (`--retry-join`), with the cluster's flags (`--bootstrap-expect` of the first servers included) and then
    /// `extra_args`; named after the last server (`s4` after `s1`…`s3`). Returns its index once it printed its
    /// listening lines: the leader adds it to Raft by itself (wait for that with [`Cluster::raft_peers`]).
    pub async fn add_server(&mut self, extra_args: &[&str]) -> usize {
        assert!(self.network.is_none(), "add_server: not supported on a test network");
        let first = self.nodes.iter().position(|n| n.server).expect("a cluster with a server");
        let template = &self.nodes[first];
        let taken: Vec<u16> = self.nodes.iter().map(|n| n.gossip_port).collect();
        let gossip_port = free_gossip_ports(1, &taken)[0];
        let name = format!("s{}", self.server_count() + 1);
        let mut extra = template.extra.clone();
        extra.extend(extra_args.iter().map(|a| a.to_string()));
        let node = Node {
            data_dir: self.root.path().join(&name),
            name,
            server: true,
            bootstrap_expect: template.bootstrap_expect,
            gossip_port,
            retry_join: self.nodes.iter().filter(|n| n.server).map(Node::gossip_addr).collect(),
            extra,
            env: Vec::new(),
            host: "127.0.0.1".to_string(),
            network: None,
            scheme: template.scheme,
            rpc_port: 0,
            process: None,
            paused: false,
            listening: Listening::default(),
            log: Log::memory(),
            http: template.http.clone(),
            api: None,
        };
        assert!(!node.data_dir.exists(), "{} must start with an empty data directory", node.name);
        self.note(&format!("adding server {} (retry-join {})", node.name, node.retry_join.join(", ")));
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        self.launch(&[i]).await;
        i
    }

    // --- Signals, stops and restarts ---

    /// SIGKILL: the node gets no chance to flush, hand over or clean up; its runs are orphaned.
    pub async fn kill9(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.process().kill9();
        node.process = None;
        node.paused = false;
        node.mark("killed with SIGKILL");
        let name = node.name.clone();
        self.note(&format!("killed {name} with SIGKILL"));
    }

    /// SIGSTOP: the process freezes (its runs, in their own process groups, go on); it answers nothing.
    pub fn sigstop(&mut self, i: usize) {
        self.nodes[i].process().signal(Signal::Stop);
        self.nodes[i].paused = true;
        self.nodes[i].mark("paused with SIGSTOP");
        self.note(&format!("paused {} with SIGSTOP", self.nodes[i].name));
    }

    pub fn sigcont(&mut self, i: usize) {
        self.nodes[i].process().signal(Signal::Cont);
        self.nodes[i].paused = false;
        self.nodes[i].mark("resumed with SIGCONT");
        self.note(&format!("resumed {} with SIGCONT", self.nodes[i].name));
    }

    /// SIGTERM and wait for the process to exit; returns its exit status.
    pub async fn sigterm(&mut self, i: usize) -> ExitStatus {
        self.sigterm_all(&[i]).await.remove(0)
    }

    /// SIGTERM to every node at `indices` at once, then wait for each to exit; returns their exit statuses.
    pub async fn sigterm_all(&mut self, indices: &[usize]) -> Vec<ExitStatus> {
        for &i in indices {
            let node = &mut self.nodes[i];
            if node.paused {
                node.process().signal(Signal::Cont);
                node.paused = false;
            }
            node.process().signal(Signal::Term);
            node.mark("sent SIGTERM");
        }
        let names: Vec<&str> = indices.iter().map(|&i| self.node_name(i)).collect();
        self.note(&format!("sent SIGTERM to {}", names.join(", ")));
        let mut statuses = Vec::new();
        for &i in indices {
            statuses.push(self.wait_exit(i, NODE_EXIT_DEADLINE).await);
        }
        statuses
    }

    /// Wait for a node's process to exit by itself (after a signal or `kairos leave`); returns its exit status.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> ExitStatus {
        let node = &mut self.nodes[i];
        let Ok(status) = node.process().wait_exit(within).await else {
            panic!("{} did not exit within {within:?}", node.name);
        };
        node.process = None;
        node.mark(&format!("exited: {status}"));
        let name = node.name.clone();
        self.note(&format!("{name} exited: {status}"));
        status
    }

    /// Start a stopped node again: same flags, data directory, gossip port and RPC port.
    pub async fn restart(&mut self, i: usize) {
        self.restart_all(&[i]).await;
    }

    /// Start a stopped node again on the same data dir and gossip port but a new, free RPC port (as a host
    /// that came back with another address would).
    pub async fn restart_on_new_rpc_port(&mut self, i: usize) {
        assert!(self.nodes[i].process.is_none(), "restart needs {} stopped first", self.nodes[i].name);
        self.nodes[i].rpc_port = 0;
        self.launch(&[i]).await;
    }

    /// Start the stopped nodes at `indices` again, all at once.
    pub async fn restart_all(&mut self, indices: &[usize]) {
        for &i in indices {
            assert!(self.nodes[i].process.is_none(), "restart needs {} stopped first", self.nodes[i].name);
        }
        self.launch(indices).await;
    }

    // --- Leader and membership ---

    /// The leader: the one live server answering `/v1/isleader` 200, named by every live server's `/v1/leader`.
    /// `Err` says what is missing.
    pub async fn leader(&self) -> Result<usize, String> {
        self.leader_among(&self.live_servers()).await
    }

    /// The one server of `live` that says it leads and that every server of `live` names as leader.
    pub async fn leader_among(&self, live: &[usize]) -> Result<usize, String> {
        let live = live.to_vec();
        let mut claims = Vec::new();
        for &i in &live {
            let reply = self.nodes[i].try_request("GET", "/v1/isleader", None, PROBE_TIMEOUT).await;
            match reply {
                None => return Err(format!("{} does not answer /v1/isleader", self.nodes[i].name)),
                Some(r) if r.status == 200 => claims.push(i),
                Some(_) => {}
            }
        }
        let names: Vec<&str> = claims.iter().map(|&i| self.node_name(i)).collect();
        let [leader] = claims[..] else {
            return Err(format!("live servers claiming to lead: {names:?}"));
        };
        let name = self.node_name(leader);
        for &i in &live {
            let reply = self.nodes[i].try_request("GET", "/v1/leader", None, PROBE_TIMEOUT).await;
            match reply {
                Some(r) if r.status == 200 && r.json["Name"] == name => {}
                Some(r) => {
                    return Err(format!(
                        "{name} leads but {}'s /v1/leader says {} {}",
                        self.node_name(i),
                        r.status,
                        r.text
                    ));
                }
                None => return Err(format!("{} does not answer /v1/leader", self.node_name(i))),
            }
        }
        Ok(leader)
    }

    /// Node `i`'s Raft term (`GET /v1`, `raft.term`); `None` when it does not answer.
    pub async fn raft_term(&self, i: usize) -> Option<u64> {
        let reply = self.nodes[i].try_request("GET", "/v1", None, PROBE_TIMEOUT).await?;
        reply.json["raft"]["term"].as_u64()
    }

    pub async fn leader_index(&self) -> Option<usize> {
        self.leader().await.ok()
    }

    /// Wait until a leader is elected and known to every live server; returns its index.
    pub async fn wait_leader(&self) -> usize {
        wait_until("a leader is elected and known to every live server", FORM_DEADLINE, async || self.leader().await)
            .await
    }

    /// Wait until a leader is known to every live server and some server lists every live node `alive` in
    /// `/v1/members`; returns the leader's index.
    pub async fn wait_formed(&self) -> usize {
        let leader = wait_until("the cluster is formed", FORM_DEADLINE, async || {
            let leader = self.leader().await?;
            let expected: Vec<&str> = self.live_nodes().iter().map(|&i| self.node_name(i)).collect();
            let mut seen = Vec::new();
            for &i in &self.live_servers() {
                let Some(members) = self.nodes[i].members().await else {
                    seen.push(format!("{}: no answer", self.node_name(i)));
                    continue;
                };
                let alive = |name: &str| members.iter().any(|m| m.name == name && m.status_text == "alive");
                if expected.iter().all(|n| alive(n)) {
                    return Ok(leader);
                }
                let view: Vec<String> = members.iter().map(|m| format!("{} {}", m.name, m.status_text)).collect();
                seen.push(format!("{} sees [{}]", self.node_name(i), view.join(", ")));
            }
            Err(format!("expected {expected:?} alive; {}", seen.join("; ")))
        })
        .await;
        self.note(&format!("formed; leader {}", self.node_name(leader)));
        leader
    }

    /// `kairos raft list-peers` against node `i`'s RPC address; the command must succeed.
    pub async fn raft_peers(&self, i: usize) -> Vec<Peer> {
        let out = cli(&["raft", "list-peers", "--rpc-addr", self.rpc_addr(i)]).await;
        assert!(
            out.status.success(),
            "raft list-peers on {}: {}\n{}{}",
            self.node_name(i),
            out.status,
            out.stdout,
            out.stderr
        );
        parse_peers(&out.stdout)
    }

    /// `kairos raft remove-peer --peer-id <peer_id>` against node `i`'s RPC address; how it exited is for the test
    /// to judge.
    pub async fn raft_remove_peer(&self, i: usize, peer_id: &str) -> CliOutput {
        let rpc_addr = self.rpc_addr(i);
        self.note(&format!(
            "kairos raft remove-peer --peer-id {peer_id} --rpc-addr {rpc_addr} ({})",
            self.node_name(i)
        ));
        let out = cli(&["raft", "remove-peer", "--peer-id", peer_id, "--rpc-addr", rpc_addr]).await;
        self.note(&format!("kairos raft remove-peer answered {}", out.status));
        out
    }

    /// `kairos leave` against node `i`'s RPC address (the node's process is left to exit by itself).
    pub async fn leave(&self, i: usize) -> CliOutput {
        self.note(&format!("kairos leave --rpc-addr {} ({})", self.rpc_addr(i), self.node_name(i)));
        let out = cli(&["leave", "--rpc-addr", self.rpc_addr(i)]).await;
        self.note(&format!("kairos leave answered {}", out.status));
        out
    }

    // --- API through whichever server answers ---

    /// Send a write to a live server (`only`: that one; otherwise each live server in turn) until it answers one
    /// of `ok`. No answer, 5xx (an election, a lost forward) and 404 (a follower that has not applied an earlier
    /// write yet) are retried until [`WRITE_DEADLINE`]; any other status fails the test at once.
    pub async fn write_via(
        &self,
        only: Option<usize>,
        method: &str,
        path: &str,
        body: Option<&Value>,
        ok: &[u16],
    ) -> Reply {
        let what = format!("{method} {path} is accepted (expected {ok:?})");
        let mut turn = 0;
        wait_until(&what, WRITE_DEADLINE, async || {
            let targets: Vec<usize> = match only {
                Some(i) => [i].into_iter().filter(|&i| self.nodes[i].is_live()).collect(),
                None => self.live_servers(),
            };
            turn += 1;
            let Some(&target) = targets.get(turn % targets.len().max(1)) else {
                return Err("no live server".to_string());
            };
            let node = &self.nodes[target];
            match node.try_request(method, path, body, WRITE_TIMEOUT).await {
                Some(reply) if ok.contains(&reply.status) => Ok(reply),
                Some(reply) if reply.status >= 500 || reply.status == 404 => {
                    Err(format!("{} answered {} {}", node.name, reply.status, reply.text))
                }
                Some(reply) => panic!("{method} {path} on {}: {} {}", node.name, reply.status, reply.text),
                None => Err(format!("{} did not answer", node.name)),
            }
        })
        .await
    }

    pub async fn write(&self, method: &str, path: &str, body: Option<&Value>, ok: &[u16]) -> Reply {
        self.write_via(None, method, path, body, ok).await
    }

    /// Create (or replace) a job through any live server; returns the stored job.
    pub async fn create_job(&self, job: &Value) -> Value {
        self.write("POST", "/v1/jobs", Some(job), &[201]).await.json
    }

    /// Start a manual run (202).
    pub async fn run(&self, job: &str) {
        self.write("POST", &format!("/v1/jobs/{job}/run"), None, &[202]).await;
    }

    /// Disable every job in `jobs` (PATCH, so nothing else of the job changes).
    pub async fn disable_all(&self, jobs: &[String]) {
        for job in jobs {
            let body = serde_json::json!({"name": job, "disabled": true});
            self.write("PATCH", "/v1/jobs", Some(&body), &[200, 201]).await;
        }
        self.note(&format!("disabled {} jobs", jobs.len()));
    }

    /// A job's executions from a live server; `Err` (for polling) when none answers 200.
    pub async fn try_executions(&self, job: &str) -> Result<Vec<Exec>, String> {
        let mut errors = Vec::new();
        for i in self.live_servers() {
            match self.nodes[i].try_executions(job).await {
                Ok(execs) => return Ok(execs),
                Err(e) => errors.push(e),
            }
        }
        Err(errors.join("; "))
    }

    /// A job's executions from a live server, waiting out transient failures.
    pub async fn executions(&self, job: &str) -> Vec<Exec> {
        wait_until(&format!("a live server lists the executions of {job}"), WRITE_DEADLINE, async || {
            self.try_executions(job).await
        })
        .await
    }

    /// Poll a job's executions (from any live server) until `done` holds for them; returns them.
    pub async fn wait_executions(
        &self,
        job: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&[Exec]) -> bool,
    ) -> Vec<Exec> {
        wait_until(&format!("{job}: {what}"), within, async || {
            let execs = self.try_executions(job).await?;
            if done(&execs) { Ok(execs) } else { Err(format!("executions:\n{}", runs(&execs))) }
        })
        .await
    }

    /// Wait until every job in `jobs` has at least one finished execution.
    pub async fn wait_each_fired(&self, jobs: &[String], within: Duration) {
        wait_until("every job has a finished execution", within, async || {
            for job in jobs {
                let execs = self.try_executions(job).await?;
                if !execs.iter().any(Exec::is_final) {
                    return Err(format!("{job} has no finished execution:\n{}", runs(&execs)));
                }
            }
            Ok(())
        })
        .await;
        self.note("every job has fired");
    }

    /// Wait until the leader shows no active execution of any job in `jobs`; returns every job's executions as
    /// the leader has them then.
    pub async fn wait_quiet(&self, jobs: &[String], within: Duration) -> BTreeMap<String, Vec<Exec>> {
        let history = wait_until("no execution is active on the leader", within, async || {
            let leader = self.leader().await?;
            let mut history = BTreeMap::new();
            for job in jobs {
                let execs = self.nodes[leader].try_executions(job).await?;
                if execs.iter().any(Exec::is_active) {
                    return Err(format!("{job} on {}:\n{}", self.node_name(leader), runs(&execs)));
                }
                history.insert(job.clone(), execs);
            }
            Ok(history)
        })
        .await;
        self.note("no execution is active");
        history
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM first so nodes stop their runs (their process groups) instead of orphaning them; a process still
        // there at the deadline is killed when dropped.
        for node in &mut self.nodes {
            if let Some(process) = &node.process {
                if node.paused {
                    process.signal(Signal::Cont);
                }
                process.signal(Signal::Term);
            }
        }
        let deadline = Instant::now() + DROP_GRACE;
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                process.wait_exit_blocking(deadline);
            }
        }
        if std::thread::panicking() {
            let events = self.events.lock().map(|e| e.join("\n")).unwrap_or_default();
            eprintln!("--- cluster events ---\n{events}");
            // The full logs are kept (the temporary directory is not): tails may be all heartbeat warnings.
            let test = std::thread::current().name().unwrap_or("cluster").replace("::", "-");
            let kept = std::env::temp_dir().join(format!("kairos-cluster-logs-{test}-{}", std::process::id()));
            let kept = std::fs::create_dir_all(&kept).is_ok().then_some(kept);
            if let Some(dir) = &kept {
                let _ = std::fs::write(dir.join("events.log"), &events);
            }
            for node in &self.nodes {
                let log = node.log.text();
                if let Some(dir) = &kept {
                    let _ = std::fs::write(dir.join(format!("{}.log", node.name)), &log);
                }
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_LINES_ON_FAILURE)..];
                eprintln!("--- log of {} ({} lines, last {} shown) ---", node.name, lines.len(), tail.len());
                for line in tail {
                    eprintln!("{line}");
                }
            }
            if let Some(dir) = &kept {
                eprintln!("--- full logs kept in {} ---", dir.display());
            }
        }
    }
}
