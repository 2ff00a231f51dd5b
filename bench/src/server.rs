//! One real `kairos agent --server` process: found next to this binary, started on free loopback ports with its
//! stderr in a log file, watched until it leads, stopped with SIGTERM (SIGKILL if it does not exit in time).
//!
//! Dropping a [`Server`] that is still running kills it, so an error in a scenario never leaves a process behind.

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
    Ok(sibling)
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
    /// A server with its data under `scratch` and its log named `name`.
    pub fn spec(&self, scratch: &Path, name: &str) -> ServerSpec {
        let log_dir = self.log_dir.as_deref().unwrap_or(scratch);
        ServerSpec {
            binary: self.binary.clone(),
            data_dir: scratch.join("data"),
            log_path: log_dir.join(format!("{name}.log")),
            log_filter: self.log_filter.clone(),
        }
    }
}

/// What to start: the binary, its data directory, where its stderr goes.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub log_filter: Option<String>,
}

pub struct Server {
    child: Child,
    pub pid: u32,
    pub api: Api,
    log_path: PathBuf,
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
        std::fs::create_dir_all(&spec.data_dir).with_context(|| format!("creating {}", spec.data_dir.display()))?;
        let log =
            std::fs::File::create(&spec.log_path).with_context(|| format!("creating {}", spec.log_path.display()))?;
        let mut command = Command::new(&spec.binary);
        command
            .args(["agent", "--server", "--bootstrap-expect", "1", "--data-dir"])
            .arg(&spec.data_dir)
            .args(["--http-addr", "127.0.0.1:0", "--bind-addr", "127.0.0.1:0"])
            .args(["--rpc-port", "0", "--log-level", "warn"])
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
        let pid = child.id();
        let mut server = Server {
            child,
            pid,
            api: Api::new("http://127.0.0.1:0")?,
            log_path: spec.log_path.clone(),
            spawned_at,
            listening_at: spawned_at,
        };
        let addr = server.wait_listening().await?;
        server.api = Api::new(&format!("http://{addr}"))?;
        server.listening_at = Instant::now();
        Ok(server)
    }

    async fn wait_listening(&mut self) -> anyhow::Result<String> {
        let deadline = Instant::now() + LISTEN_WAIT_MAX;
        while Instant::now() < deadline {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            if let Some(addr) = log.lines().find_map(|l| l.split_once(LISTENING)) {
                let addr = addr.1.trim().to_string();
                if !addr.starts_with("127.0.0.1:") {
                    bail!("the server listens on '{addr}', not on loopback");
                }
                return Ok(addr);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("kairos exited ({status}) before listening:\n{}", self.log_tail(20));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        bail!("kairos did not print its address within {LISTEN_WAIT_MAX:?}:\n{}", self.log_tail(20))
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
        let start = Instant::now();
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

    /// The last `lines` lines the server wrote to stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid, libc::SIGKILL);
            let _ = self.child.wait();
        }
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
    let problems: Vec<&str> =
        text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked")).collect();
    let first = problems.iter().take(keep).map(|l| l.chars().take(300).collect()).collect();
    (problems.len(), first)
}
