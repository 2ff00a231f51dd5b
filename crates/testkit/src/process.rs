//! One `kairos` process: spawned from a command the caller finishes (the binary's path is the caller's: Cargo
//! tells integration tests, the benchmark looks next to itself), its stdout and stderr copied line by line into a
//! [`Log`] (so the pipes never fill up), the addresses it announces read from its listening lines, signalled,
//! waited for, and killed and reaped when dropped, so a failing test or benchmark never leaves it behind.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::log::Log;
use crate::wait::{TimedOut, poll_until};

/// The line that announces the bound HTTP API address (servers only).
pub const HTTP_LISTENING: &str = "HTTP API listening on ";
/// The line that announces the bound node-to-node RPC address (every node).
pub const RPC_LISTENING: &str = "RPC listening on ";
/// Poll interval while waiting for a listening line or an exit: process start-up and shutdown are measured in
/// the benchmark, so this is short.
const POLL: Duration = Duration::from_millis(20);
/// How long, after the process is reaped, the log may take to receive its last lines (a grandchild that kept the
/// pipe open must not hold the caller up longer).
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// `binary` as a command with none of the machine's `KAIROS_*` environment (no configuration may leak in from
/// whoever runs the tests), no colours, and no stdin; the caller adds the arguments and the working directory.
pub fn kairos_command(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    clean_kairos_env(&mut command);
    command
}

/// What [`kairos_command`] does to its command, for a command that runs `kairos` through another program (e.g.
/// `ip netns exec`).
pub fn clean_kairos_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KAIROS_") {
            command.env_remove(&key);
        }
    }
    command.env("NO_COLOR", "1").stdin(Stdio::null());
}

/// The addresses (`host:port`) a process has announced so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listening {
    pub http: Option<String>,
    pub rpc: Option<String>,
}

/// A listening line to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Http,
    Rpc,
}

impl Listening {
    pub fn has(&self, listener: Listener) -> bool {
        match listener {
            Listener::Http => self.http.is_some(),
            Listener::Rpc => self.rpc.is_some(),
        }
    }
}

/// A signal the harnesses send (SIGKILL is [`Process::kill9`], which also reaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Stop gracefully.
    Term,
    /// Reload the configuration.
    Hup,
    /// Freeze: the process answers nothing until [`Signal::Cont`].
    Stop,
    Cont,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Hup => libc::SIGHUP,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

/// Why a process did not come up.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("kairos exited ({0}) before it printed its listening lines")]
    Exited(ExitStatus),
    #[error("kairos did not print its {missing:?} listening lines within {within:?}")]
    Silent { missing: Vec<Listener>, within: Duration },
}

/// A spawned `kairos` process. Dropping it while it runs kills it (SIGKILL) and reaps it.
pub struct Process {
    child: Child,
    pid: i32,
    log: Log,
    /// What the drains have seen, shared with their threads.
    pipes: Arc<Pipes>,
    exit: Option<ExitStatus>,
    spawned_at: Instant,
}

/// The drains' view of the output: the addresses announced so far, and how many pipes are still open.
#[derive(Default)]
struct Pipes {
    state: Mutex<PipesState>,
    closed: Condvar,
}

#[derive(Default)]
struct PipesState {
    listening: Listening,
    open: usize,
}

impl Pipes {
    fn state(&self) -> std::sync::MutexGuard<'_, PipesState> {
        // A drain never panics while holding the lock; if one did, what it recorded is still right.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Process {
    /// Spawn `command` with its stdout and stderr copied into `log`; does not wait for anything.
    pub fn spawn(command: &mut Command, log: &Log) -> std::io::Result<Process> {
        let spawned_at = Instant::now();
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let pid = i32::try_from(child.id()).expect("a pid fits in pid_t");
        let pipes = Arc::new(Pipes::default());
        pipes.state().open = 2;
        drain(child.stderr.take().expect("stderr is piped"), log.clone(), pipes.clone());
        drain(child.stdout.take().expect("stdout is piped"), log.clone(), pipes.clone());
        Ok(Process { child, pid, log: log.clone(), pipes, exit: None, spawned_at })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// The addresses announced so far.
    pub fn listening(&self) -> Listening {
        self.pipes.state().listening.clone()
    }

    /// Wait until the process has announced every one of `listeners`; fails if it exits first or stays silent
    /// for `within`.
    pub async fn wait_listening(&mut self, listeners: &[Listener], within: Duration) -> Result<Listening, LaunchError> {
        let waited = poll_until(within, POLL, async || {
            if let Some(status) = self.try_exit() {
                return Ok(Err(LaunchError::Exited(status)));
            }
            let listening = self.listening();
            let missing: Vec<Listener> = listeners.iter().copied().filter(|l| !listening.has(*l)).collect();
            if missing.is_empty() { Ok(Ok(listening)) } else { Err(format!("{missing:?}")) }
        })
        .await;
        match waited {
            Ok(outcome) => outcome,
            Err(_) => {
                let listening = self.listening();
                let missing = listeners.iter().copied().filter(|l| !listening.has(*l)).collect();
                Err(LaunchError::Silent { missing, within })
            }
        }
    }

    /// Whether the process has not been seen to exit.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Send `signal`; nothing once the process is reaped (its pid may belong to another process by then).
    pub fn signal(&self, signal: Signal) {
        if self.exit.is_none() {
            send(self.pid, signal.number());
        }
    }

    /// The exit status, reaping the process if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.reaped(status);
        }
        self.exit
    }

    /// Wait for the process to exit by itself (or after a signal); [`TimedOut`] after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, TimedOut> {
        poll_until(within, POLL, async || self.try_exit()).await
    }

    /// [`Process::wait_exit`] for callers that cannot await (a `Drop`); `None` at `deadline`.
    pub fn wait_exit_blocking(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL and reap: the process is gone when this returns, with no chance to flush or clean up.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit() {
            return status;
        }
        send(self.pid, libc::SIGKILL);
        let status = self.child.wait().expect("reap a killed child");
        self.reaped(status);
        status
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL: how it exited, and whether it had to be killed.
    pub async fn stop(&mut self, grace: Duration) -> (ExitStatus, bool) {
        self.signal(Signal::Term);
        match self.wait_exit(grace).await {
            Ok(status) => (status, false),
            Err(_) => (self.kill9(), true),
        }
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.exit = Some(status);
        // Its last lines may still be in the pipes: give the drains a moment so the log is complete.
        let state = self.pipes.state();
        let _waited = self.pipes.closed.wait_timeout_while(state, DRAIN_WAIT, |state| state.open > 0);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exit.is_none() {
            send(self.pid, libc::SIGKILL);
            if let Ok(status) = self.child.wait() {
                self.exit = Some(status);
            }
        }
    }
}

fn send(pid: i32, signal: libc::c_int) {
    assert!(pid > 0, "a signal to pid {pid} would reach a process group");
    // SAFETY: kill(2) takes no memory; the pid is our unreaped child's, so it cannot have been reused.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Copy a pipe into `log` on a thread of its own, line by line, recording the listening lines it sees, until
/// the pipe closes.
fn drain(pipe: impl Read + Send + 'static, log: Log, pipes: Arc<Pipes>) {
    std::thread::spawn(move || {
        copy_lines(pipe, &log, &pipes);
        pipes.state().open -= 1;
        pipes.closed.notify_all();
    });
}

fn copy_lines(pipe: impl Read, log: &Log, pipes: &Pipes) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(addr) = addr_after(&text, HTTP_LISTENING) {
            pipes.state().listening.http = Some(addr);
        } else if let Some(addr) = addr_after(&text, RPC_LISTENING) {
            pipes.state().listening.rpc = Some(addr);
        }
        log.append(&text);
    }
}

/// The `host:port` printed after `marker` in a log line (an optional `http://` or `https://` and any path dropped).
pub fn addr_after(line: &str, marker: &str) -> Option<String> {
    let at = line.find(marker)?;
    let rest = &line[at + marker.len()..];
    let rest = rest.strip_prefix("https://").or_else(|| rest.strip_prefix("http://")).unwrap_or(rest);
    // A JSON log line (`--log-format json`) ends the address with the message's closing quote.
    Some(rest.chars().take_while(|c| !c.is_whitespace() && !matches!(c, '/' | '"')).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `kairos`: a shell script.
    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("kairos");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Starts a script written by `script`. A child that another test thread forks while the script's write
    /// descriptor is open holds it until that child execs, and exec'ing the script meanwhile fails with ETXTBSY
    /// ("Text file busy"); the descriptor is closed on exec, so the spawn is tried again until it goes through.
    fn spawn_script(binary: &Path, log: &Log) -> Process {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Process::spawn(&mut kairos_command(binary), log) {
                Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                spawned => return spawned.unwrap(),
            }
        }
    }

    #[test]
    fn listening_lines_give_host_and_port() {
        let http = "2026-01-01T00:00:00Z  INFO kairos: HTTP API listening on http://127.0.0.1:8080/ui\n";
        assert_eq!(addr_after(http, HTTP_LISTENING).as_deref(), Some("127.0.0.1:8080"));
        let rpc = "kairos: RPC listening on 127.0.0.1:6868\n";
        assert_eq!(addr_after(rpc, RPC_LISTENING).as_deref(), Some("127.0.0.1:6868"));
        assert_eq!(addr_after("kairos: starting", RPC_LISTENING), None);
        let json = r#"{"level":"INFO","message":"RPC listening on 127.0.0.1:6868","node":"n"}"#;
        assert_eq!(addr_after(json, RPC_LISTENING).as_deref(), Some("127.0.0.1:6868"));
    }

    #[tokio::test]
    async fn announced_addresses_are_read_from_either_pipe_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let binary = script(
            dir.path(),
            "echo 'RPC listening on 127.0.0.1:7001'; echo 'HTTP API listening on http://127.0.0.1:7002' >&2; \
             exec sleep 60",
        );
        let log = Log::memory();
        let mut process = spawn_script(&binary, &log);
        let listening =
            process.wait_listening(&[Listener::Http, Listener::Rpc], Duration::from_secs(10)).await.unwrap();
        assert_eq!(listening.http.as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(listening.rpc.as_deref(), Some("127.0.0.1:7001"));
        let (status, killed) = process.stop(Duration::from_secs(10)).await;
        assert!(!status.success() && !killed, "sleep ends on SIGTERM: {status}");
        assert!(log.text().contains("RPC listening on 127.0.0.1:7001\n"), "{}", log.text());
    }

    #[tokio::test]
    async fn a_process_that_exits_before_listening_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let binary = script(dir.path(), "echo 'no config' >&2; exit 3");
        let log = Log::memory();
        let mut process = spawn_script(&binary, &log);
        let error = process.wait_listening(&[Listener::Http], Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(error, LaunchError::Exited(status) if status.code() == Some(3)), "{error}");
        assert_eq!(log.text(), "no config\n");
    }

    #[test]
    fn the_machines_kairos_settings_do_not_leak_in() {
        let command = kairos_command(Path::new("/bin/true"));
        let removed: Vec<_> = command.get_envs().filter(|(_, value)| value.is_none()).map(|(key, _)| key).collect();
        for (key, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("KAIROS_")) {
            assert!(removed.contains(&key.as_os_str()), "{key:?} is passed on");
        }
    }

    #[test]
    fn a_panic_kills_and_reaps_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let binary = script(dir.path(), "exec sleep 60");
        let (tx, rx) = std::sync::mpsc::channel();
        let panicked = std::thread::spawn(move || {
            let process = spawn_script(&binary, &Log::memory());
            tx.send(process.pid()).unwrap();
            panic!("a scenario fails");
        })
        .join();
        assert!(panicked.is_err());
        let pid = rx.recv().unwrap();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} outlived the panic");
    }
}
