//! Real `kairos agent` processes: found next to this binary, started on free loopback ports (or inside a host of a
//! test network of namespaces) with their output in a log file, watched until they listen (and, alone, until they lead), stopped with SIGTERM (SIGKILL if they do
//! not exit in time) or killed outright.
//!
//! A [`Server`] (HTTP API) and an [`Agent`] (agent-only node, no API) each own a test-kit [`Process`]; dropping a
//! process that is still running kills it (SIGKILL) and reaps it, so an error or a panic in a scenario never
//! leaves a process behind.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kairos_testkit::{Listener, Log, Network, Process, clean_kairos_env, kairos_command, poll_until};

use crate::client::Api;
use crate::secure::{ClientTls, Secure};

/// How long a fresh process may take to print its listening address (opening a large store counts here).
const LISTEN_WAIT_MAX: Duration = Duration::from_secs(600);
/// How long SIGTERM may take before SIGKILL (the server's own grace for running executions is 30 s).
const STOP_WAIT_MAX: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a secure server may take to accept the ACL bootstrap (it needs a leader).
const BOOTSTRAP_WAIT_MAX: Duration = Duration::from_secs(60);

/// The `kairos` binary: `--kairos PATH`, else the one built next to this executable.
pub fn locate_kairos(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--kairos: '{}' is not a file", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let me = std::env::current_exe().context("cannot tell where this executable is")?;
    let sibling = me.with_file_name("kairos");
    if !sibling.is_file() {
        bail!(
            "no kairos binary at '{}': build it with `cargo build --release -p kairos` or pass --kairos PATH",
            sibling.display()
        );
    }
    refuse_stale(&sibling)?;
    Ok(sibling)
}

/// `cargo run -p kairos-bench` does not rebuild the `kairos` binary: refuse one older than the sources it is
/// built from, so a run never measures (or fails on) yesterday's code.
fn refuse_stale(binary: &Path) -> anyhow::Result<()> {
    let built = std::fs::metadata(binary)?.modified()?;
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut stack = vec![sources];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "tests" && n != "benches") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs" || e == "toml")
                && entry.metadata().and_then(|m| m.modified()).is_ok_and(|changed| changed > built)
            {
                bail!(
                    "'{}' is older than {}: run `cargo build --release -p kairos` first (or pass --kairos PATH)",
                    binary.display(),
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// How every server of a run is started: which binary, where logs go, at which detail.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub binary: PathBuf,
    /// Keep server logs here (named after the scenario) instead of in the scenario's temporary directory.
    pub log_dir: Option<PathBuf>,
    /// A tracing filter for the server (`KAIROS_LOG`), e.g. `info,kairos=debug`; default: `--log-level warn`.
    pub log_filter: Option<String>,
}

impl Launcher {
    /// A single server (`--bootstrap-expect 1`) with its data under `scratch` and its log named `name`.
    pub fn spec(&self, scratch: &Path, name: &str) -> ServerSpec {
        let flags = [
            ["--server", "--bootstrap-expect", "1", "--http-addr", "127.0.0.1:0"].as_slice(),
            &["--bind-addr", "127.0.0.1:0", "--rpc-port", "0", "--log-level", "warn"],
        ];
        self.node_spec(scratch, name, flags.concat().into_iter().map(String::from).collect())
    }

    /// A node started as `kairos agent --data-dir <scratch>/data <flags>`, with its log named `name`.
    pub fn node_spec(&self, scratch: &Path, name: &str, flags: Vec<String>) -> ServerSpec {
        let log_dir = self.log_dir.as_deref().unwrap_or(scratch);
        ServerSpec {
            binary: self.binary.clone(),
            data_dir: scratch.join("data"),
            log_path: log_dir.join(format!("{name}.log")),
            log_filter: self.log_filter.clone(),
            flags,
            client_tls: None,
        }
    }
}

/// What to start: the binary, its data directory, where its stderr goes, and the other flags of `kairos agent`.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub log_filter: Option<String>,
    /// Every flag of `kairos agent` but `--data-dir`.
    pub flags: Vec<String>,
    /// Set by [`ServerSpec::secure`]: the server serves HTTPS with ACL on, and the harness's client is built
    /// with this and bootstraps the ACL once the API listens.
    pub client_tls: Option<ClientTls>,
}

impl ServerSpec {
    /// The same server with ACL, gossip encryption and mutual TLS on (`--secure`).
    pub fn secure(mut self, secure: &Secure) -> ServerSpec {
        self.flags.extend(secure.flags());
        self.client_tls = Some(secure.client.clone());
        self
    }
}

/// Where a node runs: on the machine's loopback, or inside one host of a test network (whose packets to the other
/// hosts can be cut, see [`Network::cut`]).
#[derive(Clone, Copy)]
pub enum Place<'a> {
    Loopback,
    Host(&'a Network, usize),
}

impl Place<'_> {
    /// The address the node binds and announces.
    pub fn address(&self) -> String {
        match self {
            Place::Loopback => "127.0.0.1".to_string(),
            Place::Host(network, i) => network.ip(*i),
        }
    }

    /// `binary` as a command that runs here, with none of the machine's `KAIROS_*` environment.
    fn command(&self, binary: &Path) -> Command {
        match self {
            Place::Loopback => kairos_command(binary),
            Place::Host(network, i) => {
                let mut command = network.command(*i, binary);
                clean_kairos_env(&mut command);
                command
            }
        }
    }
}

/// Spawn `kairos agent --data-dir … <flags>` at `place` with its output in the spec's log file; does not wait for
/// anything.
pub fn spawn(spec: &ServerSpec, place: Place) -> anyhow::Result<Process> {
    std::fs::create_dir_all(&spec.data_dir).with_context(|| format!("creating {}", spec.data_dir.display()))?;
    let log = Log::file(&spec.log_path).with_context(|| format!("creating {}", spec.log_path.display()))?;
    let mut command = place.command(&spec.binary);
    command
        .args(["agent", "--data-dir"])
        .arg(&spec.data_dir)
        .args(&spec.flags)
        // Run where no ./config/kairos.yml can be picked up.
        .current_dir(spec.data_dir.parent().unwrap_or(&spec.data_dir));
    if let Some(filter) = &spec.log_filter {
        command.env("KAIROS_LOG", filter);
    }
    Process::spawn(&mut command, &log).with_context(|| format!("starting {}", spec.binary.display()))
}

/// Wait (bounded) until the process announces `listener` on `address`; answers the address with its port.
async fn wait_listening(process: &mut Process, listener: Listener, address: &str) -> anyhow::Result<String> {
    let listening = match process.wait_listening(&[listener], LISTEN_WAIT_MAX).await {
        Ok(listening) => listening,
        Err(error) => bail!("{error}:\n{}", process.log().tail(20)),
    };
    let addr = match listener {
        Listener::Http => listening.http,
        Listener::Rpc => listening.rpc,
    };
    let addr = addr.context("the awaited address is announced")?;
    if addr.rsplit_once(':').map(|(host, _)| host) != Some(address) {
        bail!("kairos listens on '{addr}', not on {address}");
    }
    Ok(addr)
}

/// SIGTERM, wait (bounded), SIGKILL if still alive.
pub async fn stop(process: &mut Process) -> Stopped {
    let start = Instant::now();
    let (status, killed) = process.stop(STOP_WAIT_MAX).await;
    Stopped { took: start.elapsed(), status, killed }
}

/// A spawned process that has not yet printed its listening line (see [`Launching::server`], [`Launching::agent`]).
/// A cluster spawns all its nodes before waiting for any: a server may announce itself only once the servers it
/// expects are there.
pub struct Launching {
    process: Process,
    /// The address it binds (loopback, or its host's on a test network).
    address: String,
    client_tls: Option<ClientTls>,
}

impl Launching {
    pub fn spawn(spec: &ServerSpec) -> anyhow::Result<Launching> {
        Launching::spawn_at(spec, Place::Loopback)
    }

    pub fn spawn_at(spec: &ServerSpec, place: Place) -> anyhow::Result<Launching> {
        Ok(Launching { process: spawn(spec, place)?, address: place.address(), client_tls: spec.client_tls.clone() })
    }

    /// Wait until the server's HTTP API listens (for a secure server, also until its ACL is bootstrapped).
    pub async fn server(mut self) -> anyhow::Result<Server> {
        let addr = wait_listening(&mut self.process, Listener::Http, &self.address).await?;
        let api = match &self.client_tls {
            None => Api::new(&format!("http://{addr}"))?,
            Some(tls) => {
                match Api::secure(&format!("https://{addr}"), tls, None)?.bootstrap(BOOTSTRAP_WAIT_MAX).await {
                    Ok(api) => api,
                    Err(err) => bail!("{err:#}:\n{}", self.process.log().tail(20)),
                }
            }
        };
        let (pid, spawned_at) = (pid(&self.process), self.process.spawned_at());
        Ok(Server { process: self.process, pid, api, spawned_at, listening_at: Instant::now() })
    }

    /// Wait until the agent-only node's RPC listener is up.
    pub async fn agent(mut self) -> anyhow::Result<Agent> {
        wait_listening(&mut self.process, Listener::Rpc, &self.address).await?;
        Ok(Agent { pid: pid(&self.process), process: self.process })
    }
}

/// An agent-only node: it runs what servers order, and has no HTTP API.
pub struct Agent {
    pub process: Process,
    pub pid: u32,
}

pub struct Server {
    pub process: Process,
    pub pid: u32,
    pub api: Api,
    /// When the process was spawned, for restart timings.
    pub spawned_at: Instant,
    /// When it printed its listening address.
    pub listening_at: Instant,
}

/// How a stop went.
#[derive(Debug)]
pub struct Stopped {
    pub took: Duration,
    pub status: ExitStatus,
    /// SIGTERM was not enough within [`STOP_WAIT_MAX`].
    pub killed: bool,
}

impl Server {
    /// Spawn the server and wait (bounded) until it prints the address its HTTP API listens on.
    pub async fn spawn(spec: &ServerSpec) -> anyhow::Result<Server> {
        Launching::spawn(spec)?.server().await
    }

    /// Wait (bounded) until `GET /v1/isleader` answers 200.
    pub async fn wait_leader(&self, budget: Duration) -> anyhow::Result<()> {
        let leads = async || (self.api.status("/v1/isleader").await.ok() == Some(200)).then_some(());
        if poll_until(budget, POLL_INTERVAL, leads).await.is_err() {
            bail!("kairos did not become leader within {budget:?}:\n{}", self.log_tail(20))
        }
        Ok(())
    }

    /// SIGTERM, wait (bounded), SIGKILL if still alive.
    pub async fn stop(mut self) -> anyhow::Result<Stopped> {
        Ok(stop(&mut self.process).await)
    }

    /// The last `lines` lines the server wrote.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log().tail(lines)
    }
}

/// The pid as /proc and the meters name it.
fn pid(process: &Process) -> u32 {
    u32::try_from(process.pid()).expect("a child's pid is positive")
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Warnings and errors a server wrote to its log: how many, and the first few (without ANSI colours).
pub fn log_problems(path: &Path, keep: usize) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let problems: Vec<&str> = text.lines().filter(|l| is_problem(l)).collect();
    let first = problems.iter().take(keep).map(|l| l.chars().take(300).collect()).collect();
    (problems.len(), first)
}

fn is_problem(line: &str) -> bool {
    line.contains(" WARN ") || line.contains(" ERROR ") || line.contains("panicked")
}

/// Warnings and errors of several logs grouped by kind (see [`problem_kind`]): (kind, count), most frequent first.
pub fn problem_kinds<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<(String, usize)> {
    let mut kinds: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines().filter(|l| is_problem(l)) {
            *kinds.entry(problem_kind(line)).or_default() += 1;
        }
    }
    let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
    sort_kinds(&mut kinds);
    kinds
}

/// Kairos's own warnings first (the libraries' are mostly the expected noise of a node going away), then the most
/// frequent.
pub fn sort_kinds(kinds: &mut [(String, usize)]) {
    let foreign = |kind: &str| !kind.contains(" kairos::") && !kind.contains(" kairos_");
    kinds.sort_by(|a, b| (foreign(&a.0), b.1, &a.0).cmp(&(foreign(&b.0), a.1, &b.0)));
}

/// `N warnings/errors, by kind: 12× WARN …; 3× WARN …` with at most `keep` kinds; `None` when there were none.
pub fn describe_kinds(kinds: &[(String, usize)], keep: usize) -> Option<String> {
    let total: usize = kinds.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let shown: Vec<String> = kinds.iter().take(keep).map(|(kind, n)| format!("{n}× {kind}")).collect();
    let more = if kinds.len() > keep { format!("; and {} more kinds", kinds.len() - keep) } else { String::new() };
    Some(format!("{total} warnings/errors, by kind: {}{more}", shown.join("; ")))
}

/// What a log line says without its timestamp, numbers (ports, ids, instants become `#`) and error chain: lines
/// of the same kind differ only in those.
pub fn problem_kind(line: &str) -> String {
    let line = line.trim();
    let line = match line.split_once(char::is_whitespace) {
        Some((first, rest)) if first.starts_with(|c: char| c.is_ascii_digit()) => rest.trim_start(),
        _ => line,
    };
    let line = line.split("; source:").next().unwrap_or(line);
    let mut kind = String::new();
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !kind.ends_with('#') {
                kind.push('#');
            }
        } else {
            kind.push(c);
        }
    }
    kind.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_kinds_ignore_timestamps_numbers_and_error_chains() {
        let a = "2026-11-22T02:12:44.005272Z  WARN openraft::replication: Unreachable node: error sending request for \
                 url (http://127.0.0.1:37547/raft/append); source: client error (Connect)";
        let b = "2026-11-22T02:12:45.410130Z  WARN openraft::replication: Unreachable node: error sending request for \
                 url (http://127.0.0.1:37547/raft/append); source: tcp connect error";
        assert_eq!(problem_kind(a), problem_kind(b));
        assert_eq!(
            problem_kind(a),
            "WARN openraft::replication: Unreachable node: error sending request for url (http://#.#.#.#:#/raft/append)"
        );
        assert_eq!(problem_kind("thread 'main' panicked at x.rs:3:5"), "thread 'main' panicked at x.rs:#:#");
    }

    #[test]
    fn kairos_warnings_come_first_then_the_most_frequent() {
        let mut kinds = vec![
            ("WARN openraft::a: x".to_string(), 40),
            ("WARN kairos::scheduler: y".to_string(), 2),
            ("WARN openraft::b: z".to_string(), 90),
            ("ERROR kairos::dispatch: w".to_string(), 5),
        ];
        sort_kinds(&mut kinds);
        let order: Vec<usize> = kinds.iter().map(|(_, n)| *n).collect();
        assert_eq!(order, vec![5, 2, 90, 40]);
        let text = describe_kinds(&kinds, 3).unwrap();
        assert!(text.starts_with("137 warnings/errors, by kind: 5× ERROR kairos::dispatch: w; 2× WARN"), "{text}");
        assert!(text.ends_with("; and 1 more kinds"), "{text}");
        assert_eq!(describe_kinds(&[], 3), None);
    }
}
