//! Real `kairos agent` processes: found next to this binary, started on free loopback ports with their stderr in a
//! log file, watched until they listen (and, alone, until they lead), stopped with SIGTERM (SIGKILL if they do not
//! exit in time) or killed outright.
//!
//! A [`Server`] (HTTP API) and an [`Agent`] (agent-only node, no API) each own a [`Process`]; dropping a process
//! that is still running kills it (SIGKILL) and reaps it, so an error or a panic in a scenario never leaves a
//! process behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::client::Api;

/// How long a fresh process may take to print its listening address (opening a large store counts here).
const LISTEN_WAIT_MAX: Duration = Duration::from_secs(600);
/// How long SIGTERM may take before SIGKILL (the server's own grace for running executions is 30 s).
const STOP_WAIT_MAX: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const LISTENING: &str = "HTTP API listening on http://";
/// What an agent-only node prints once its node-to-node listener is up (it has no HTTP API).
const RPC_LISTENING: &str = "RPC listening on ";

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
}

/// One spawned `kairos` process. Dropping it while it runs kills it (SIGKILL) and reaps it.
pub struct Process {
    child: Child,
    pub pid: u32,
    log_path: PathBuf,
    /// When the process was spawned.
    pub spawned_at: Instant,
}

impl Process {
    /// Spawn `kairos agent --data-dir … <flags>` with stderr in the spec's log file; does not wait for anything.
    pub fn spawn(spec: &ServerSpec) -> anyhow::Result<Process> {
        std::fs::create_dir_all(&spec.data_dir).with_context(|| format!("creating {}", spec.data_dir.display()))?;
        let log =
            std::fs::File::create(&spec.log_path).with_context(|| format!("creating {}", spec.log_path.display()))?;
        let mut command = Command::new(&spec.binary);
        command
            .args(["agent", "--data-dir"])
            .arg(&spec.data_dir)
            .args(&spec.flags)
            // Run where no ./config/kairos.yml can be picked up, with none of our KAIROS_* settings.
            .current_dir(spec.data_dir.parent().unwrap_or(&spec.data_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KAIROS_") {
                command.env_remove(key);
            }
        }
        if let Some(filter) = &spec.log_filter {
            command.env("KAIROS_LOG", filter);
        }
        let spawned_at = Instant::now();
        let child = command.spawn().with_context(|| format!("starting {}", spec.binary.display()))?;
        Ok(Process { pid: child.id(), child, log_path: spec.log_path.clone(), spawned_at })
    }

    /// Wait (bounded) until the process prints a line containing `marker`; answers what follows it on the line
    /// (a loopback address).
    async fn wait_line(&mut self, marker: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + LISTEN_WAIT_MAX;
        while Instant::now() < deadline {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            if let Some(addr) = log.lines().find_map(|l| l.split_once(marker)) {
                let addr = addr.1.trim().to_string();
                if !addr.starts_with("127.0.0.1:") {
                    bail!("kairos listens on '{addr}', not on loopback");
                }
                return Ok(addr);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("kairos exited ({status}) before listening:\n{}", self.log_tail(20));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        bail!("kairos did not print '{marker}' within {LISTEN_WAIT_MAX:?}:\n{}", self.log_tail(20))
    }

    /// `kill -9` and reap: the process is gone when this returns.
    pub fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        signal(self.pid, libc::SIGKILL);
        Ok(self.child.wait()?)
    }

    /// SIGTERM, wait (bounded), SIGKILL if still alive.
    pub async fn stop(&mut self) -> anyhow::Result<Stopped> {
        let start = Instant::now();
        if let Some(status) = self.child.try_wait()? {
            return Ok(Stopped { took: Duration::ZERO, status, killed: false });
        }
        signal(self.pid, libc::SIGTERM);
        let mut killed = false;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Stopped { took: start.elapsed(), status, killed });
            }
            if !killed && start.elapsed() > STOP_WAIT_MAX {
                signal(self.pid, libc::SIGKILL);
                killed = true;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The last `lines` lines the process wrote to stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A spawned process that has not yet printed its listening line (see [`Launching::server`], [`Launching::agent`]).
/// A cluster spawns all its nodes before waiting for any: a server may announce itself only once the servers it
/// expects are there.
pub struct Launching {
    process: Process,
}

impl Launching {
    pub fn spawn(spec: &ServerSpec) -> anyhow::Result<Launching> {
        Ok(Launching { process: Process::spawn(spec)? })
    }

    /// Wait until the server's HTTP API listens.
    pub async fn server(mut self) -> anyhow::Result<Server> {
        let addr = self.process.wait_line(LISTENING).await?;
        let api = Api::new(&format!("http://{addr}"))?;
        let (pid, spawned_at) = (self.process.pid, self.process.spawned_at);
        Ok(Server { process: self.process, pid, api, spawned_at, listening_at: Instant::now() })
    }

    /// Wait until the agent-only node's RPC listener is up.
    pub async fn agent(mut self) -> anyhow::Result<Agent> {
        self.process.wait_line(RPC_LISTENING).await?;
        Ok(Agent { pid: self.process.pid, process: self.process })
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
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            if self.api.status("/v1/isleader").await.ok() == Some(200) {
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        bail!("kairos did not become leader within {budget:?}:\n{}", self.log_tail(20))
    }

    /// SIGTERM, wait (bounded), SIGKILL if still alive.
    pub async fn stop(mut self) -> anyhow::Result<Stopped> {
        self.process.stop().await
    }

    /// The last `lines` lines the server wrote to stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) on a child we spawned and have not yet reaped, so the pid cannot have been reused.
    unsafe {
        libc::kill(pid, signal);
    }
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

    /// A stand-in for `kairos`: ignores its arguments and sleeps.
    fn sleeper(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("kairos");
        std::fs::write(&path, "#!/bin/sh\nexec sleep 60\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_panic_kills_and_reaps_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = Launcher { binary: sleeper(dir.path()), log_dir: None, log_filter: None };
        let spec = launcher.node_spec(dir.path(), "node", Vec::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let panicked = std::thread::spawn(move || {
            let process = Process::spawn(&spec).unwrap();
            tx.send(process.pid).unwrap();
            panic!("a scenario fails");
        })
        .join();
        assert!(panicked.is_err());
        let pid = rx.recv().unwrap();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} outlived the panic");
    }

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
