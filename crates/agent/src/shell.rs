//! The shell executor: runs a command in its own process group and captures what it prints.
//!
//! The life of a run: spawn (stdin null, stdout and stderr piped, new process group); pump output into
//! the capture while waiting for the process to exit, for the timeout, or for cancellation; then make
//! sure nothing of the job is left. A timeout or cancellation terminates the whole group (SIGTERM, then
//! SIGKILL after the grace period). After a normal exit the pipes get a short, bounded drain: a
//! background grandchild that still holds them open would otherwise keep the run alive forever, so past
//! that bound the group is terminated too. A job whose leftovers closed our pipes (daemons that redirect
//! their output) is left alone, as Dkron does.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use kairos_schedule::format_duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::config::{Command, ShellConfig};
use crate::oom::{self, OomKills};
use crate::process_group::{self, KillOnDrop};
use crate::spec::{Outcome, RunSpec, RunStatus};

/// How long output may keep arriving after the main process has exited (or was killed).
const PIPE_DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// How often a terminated group is checked for members still alive during the grace period.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Read size per pipe; a pipe holds 64 KiB, so a few reads empty it.
const READ_CHUNK_BYTES: usize = 16 * 1024;

pub(crate) async fn run(
    spec: &RunSpec,
    config: ShellConfig,
    capture: Capture,
    cancel: &CancellationToken,
    kill_grace: Duration,
) -> Outcome {
    if let Some(cwd) = &config.cwd
        && !cwd.is_dir()
    {
        let reason =
            format!("cannot start: working directory '{}' does not exist or is not a directory", cwd.display());
        return capture.not_started(reason);
    }
    if let Command::Direct(argv) = &config.command
        && let Err(e) = executable(&argv[0], path_of(&config).as_deref(), config.cwd.as_deref())
    {
        return capture.not_started(format!("cannot start {}: {e}", program(&config)));
    }
    let oom_kills = OomKills::now();
    let mut child = match command(spec, &config).spawn() {
        Ok(child) => child,
        Err(e) => return capture.not_started(format!("cannot start {}: {e}", program(&config))),
    };
    let Some(pgid) = child.id() else {
        // A freshly spawned child always has a pid; without one we could not kill its group.
        let _ = child.start_kill();
        return capture.not_started("the started process has no pid".to_owned());
    };
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), config.input.clone()) {
        // Written beside the output pump, so a program that prints before it reads cannot deadlock with us; a
        // program that exits without reading it all is not an error here (its exit status says how it went).
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
    }
    let pipes = Pipes::new(child.stdout.take(), child.stderr.take());
    let mut job = Job { child, pgid, exit: None, pipes, capture, guard: KillOnDrop::new(pgid), oom_kills };
    let deadline = config.timeout.map(|t| Instant::now() + t);
    let stop = job.pump(Until::Exited, deadline, Some(cancel)).await;
    match stop {
        Pumped::Done => {
            let drain_deadline = Instant::now() + PIPE_DRAIN_AFTER_EXIT;
            let drained = job.pump(Until::Drained, Some(drain_deadline), None).await;
            if drained == Pumped::Deadline {
                tracing::debug!(
                    job = %spec.job_name,
                    "leftover processes hold the output open; terminating them"
                );
                job.terminate(kill_grace).await;
            }
        }
        Pumped::Deadline | Pumped::Cancelled => job.terminate(kill_grace).await,
    }
    job.finish(stop, config.timeout)
}

fn command(spec: &RunSpec, config: &ShellConfig) -> tokio::process::Command {
    let mut cmd = match &config.command {
        // The script raises its own OOM score first (see `oom::SHELL_PREFIX`), on its own line 1, so the
        // script's line numbers and `$0` stay its own. No hook runs in the child between fork and exec, so the
        // process is started with posix_spawn (vfork) instead of a fork of this whole process.
        Command::Shell(script) => {
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(format!("{}{script}", oom::SHELL_PREFIX));
            cmd
        }
        Command::Direct(argv) => direct(argv, oom::have_shell()),
    };
    // Later settings win: the job's env, then our names (which a job must not fake), then the spec's.
    cmd.envs(config.env.iter().map(|(k, v)| (k, v)))
        .env("KAIROS_JOB_NAME", &spec.job_name)
        .env("ENV_JOB_NAME", &spec.job_name)
        .envs(spec.extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(if config.input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &config.cwd {
        cmd.current_dir(cwd);
    }
    cmd
}

/// A program run without a shell: started through `/bin/sh`, which raises the score and then becomes the program
/// (`exec`: the same process, its argv as given; see `oom::EXEC_TRAMPOLINE`); on a machine without `/bin/sh`,
/// directly, raising the score in the forked child.
fn direct(argv: &[String], through_shell: bool) -> tokio::process::Command {
    if through_shell {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(oom::EXEC_TRAMPOLINE).args(argv);
        return cmd;
    }
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    oom::raise_score_in_child(&mut cmd);
    cmd
}

/// The PATH a run sees: the job's `env` sets it, or it inherits this node's.
fn path_of(config: &ShellConfig) -> Option<OsString> {
    config
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| OsString::from(v))
        .or_else(|| std::env::var_os("PATH"))
}

/// Whether `program` can be executed as `execvp` would find it: a name with a slash names a file (relative to
/// the run's directory), a name without one is looked up in `path`. A run without a shell is started through
/// `/bin/sh` (see [`command`]), so a program that is missing or not executable is caught here, with the error
/// exec itself gives, before anything starts.
fn executable(program: &str, path: Option<&std::ffi::OsStr>, cwd: Option<&std::path::Path>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    let in_dir = |p: PathBuf| match cwd {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    };
    let check = |file: &Path| -> io::Result<()> {
        let meta = std::fs::metadata(file)?;
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        }
    };
    if program.contains('/') {
        return check(&in_dir(PathBuf::from(program)));
    }
    let dirs = std::env::split_paths(path.unwrap_or_else(|| std::ffi::OsStr::new("/usr/bin:/bin")));
    for dir in dirs {
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        if check(&in_dir(dir).join(program)).is_ok() {
            return Ok(());
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

fn program(config: &ShellConfig) -> String {
    match &config.command {
        Command::Shell(_) => "'/bin/sh'".to_owned(),
        Command::Direct(argv) => format!("'{}'", argv[0]),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The main process has exited.
    Exited,
    /// The main process has exited and both pipes are closed.
    Drained,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pumped {
    Done,
    Deadline,
    Cancelled,
}

/// A running job: the child, its group, and where its output goes.
struct Job {
    child: Child,
    pgid: u32,
    exit: Option<io::Result<ExitStatus>>,
    pipes: Pipes,
    capture: Capture,
    guard: KillOnDrop,
    /// The kernel's OOM-kill count at spawn, to tell its SIGKILL from anyone else's.
    oom_kills: OomKills,
}

impl Job {
    /// Moves output into the capture until `until` holds, the deadline passes, or `cancel` fires.
    async fn pump(&mut self, until: Until, deadline: Option<Instant>, cancel: Option<&CancellationToken>) -> Pumped {
        loop {
            if self.exit.is_some() && (until == Until::Exited || !self.pipes.is_open()) {
                return Pumped::Done;
            }
            tokio::select! {
                status = self.child.wait(), if self.exit.is_none() => self.exit = Some(status),
                chunk = self.pipes.next_chunk(), if self.pipes.is_open() => {
                    if let Some(chunk) = chunk {
                        self.capture.write(chunk);
                    }
                }
                () = sleep_until(deadline) => return Pumped::Deadline,
                () = cancelled(cancel) => return Pumped::Cancelled,
            }
        }
    }

    /// SIGTERM to the group, up to `grace` for it to go, then SIGKILL, then a bounded last drain.
    async fn terminate(&mut self, grace: Duration) {
        process_group::signal(self.pgid, libc::SIGTERM);
        let grace_deadline = Instant::now() + grace;
        self.pump(Until::Drained, Some(grace_deadline), None).await;
        // Our child is gone and the pipes are closed, but other members may still be cleaning up after
        // SIGTERM; they get the rest of the grace period. Nothing notifies us of that, hence the polling.
        while process_group::exists(self.pgid) && Instant::now() < grace_deadline {
            tokio::time::sleep(GROUP_POLL_INTERVAL).await;
        }
        // Unconditional: the main process may be gone while a grandchild that ignores SIGTERM lives on.
        process_group::signal(self.pgid, libc::SIGKILL);
        let drained = self.pump(Until::Drained, Some(Instant::now() + PIPE_DRAIN_AFTER_EXIT), None).await;
        if drained == Pumped::Deadline {
            // Only a process that left the group (setsid) can still hold the pipes; we stop listening.
            tracing::warn!(pgid = self.pgid, "output pipes still open after SIGKILL; abandoning them");
        }
    }

    fn finish(mut self, stop: Pumped, timeout: Option<Duration>) -> Outcome {
        // Everything of the job is gone, or deliberately left alone after a normal exit.
        self.guard.disarm();
        let exit_code = match &self.exit {
            Some(Ok(status)) => status.code(),
            _ => None,
        };
        let (status, error) = match stop {
            Pumped::Deadline => {
                let after = timeout.map_or_else(String::new, |t| format!(" after {}", format_duration(t)));
                (RunStatus::TimedOut, Some(format!("timed out{after}")))
            }
            Pumped::Cancelled => (RunStatus::Cancelled, Some("cancelled".to_owned())),
            Pumped::Done => judge_exit(self.exit.take(), &self.oom_kills),
        };
        self.capture.into_outcome(status, exit_code, error)
    }
}

/// The status of a process that exited on its own (or was killed by someone else: a SIGKILL while the
/// kernel's OOM-kill count rose is the out-of-memory killer's).
fn judge_exit(exit: Option<io::Result<ExitStatus>>, oom_kills: &OomKills) -> (RunStatus, Option<String>) {
    match exit {
        Some(Ok(status)) if status.success() => (RunStatus::Succeeded, None),
        Some(Ok(status)) if status.code().is_some() => (RunStatus::Failed, None),
        Some(Ok(status)) => {
            let error = match status.signal() {
                Some(libc::SIGKILL) if oom_kills.rose() => format!(
                    "killed by signal {} (SIGKILL) by the kernel's out-of-memory killer: memory ran out while it \
                     ran (the node's memory limit or the machine's)",
                    libc::SIGKILL
                ),
                Some(sig) => match process_group::signal_name(sig) {
                    Some(name) => format!("killed by signal {sig} ({name})"),
                    None => format!("killed by signal {sig}"),
                },
                None => format!("ended without an exit code: {status}"),
            };
            (RunStatus::Failed, Some(error))
        }
        Some(Err(e)) => (RunStatus::Failed, Some(format!("cannot wait for the process: {e}"))),
        None => (RunStatus::Failed, Some("the process state is unknown".to_owned())),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn cancelled(cancel: Option<&CancellationToken>) {
    match cancel {
        Some(cancel) => cancel.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The child's stdout and stderr, read as one stream in arrival order.
struct Pipes {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    stdout_buf: Vec<u8>,
    stderr_buf: Vec<u8>,
}

impl Pipes {
    fn new(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>) -> Pipes {
        Pipes { stdout, stderr, stdout_buf: vec![0; READ_CHUNK_BYTES], stderr_buf: vec![0; READ_CHUNK_BYTES] }
    }

    fn is_open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// The next chunk from whichever pipe has one, or `None` once both are closed. Cancel-safe:
    /// a read that did not complete consumed nothing.
    async fn next_chunk(&mut self) -> Option<&[u8]> {
        loop {
            if !self.is_open() {
                return None;
            }
            let (from_stdout, read) = tokio::select! {
                read = read_some(&mut self.stdout, &mut self.stdout_buf) => (true, read),
                read = read_some(&mut self.stderr, &mut self.stderr_buf) => (false, read),
            };
            match (from_stdout, read) {
                (true, Ok(n)) if n > 0 => return Some(&self.stdout_buf[..n]),
                (false, Ok(n)) if n > 0 => return Some(&self.stderr_buf[..n]),
                // End of file, or a read error that we cannot do better with: that pipe is done.
                (true, _) => self.stdout = None,
                (false, _) => self.stderr = None,
            }
        }
    }
}

async fn read_some<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    #[tokio::test]
    async fn a_program_run_without_a_shell_has_the_runs_score_either_way() {
        for through_shell in [true, false] {
            let argv = ["cat".to_string(), "/proc/self/oom_score_adj".to_string()];
            let out = direct(&argv, through_shell).stdout(Stdio::piped()).output().await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{}\n", oom::RUN_OOM_SCORE_ADJ),
                "{through_shell}"
            );
        }
    }

    #[test]
    fn a_program_is_found_as_exec_would_find_it() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, "").unwrap();
        let path = std::ffi::OsString::from(format!("/nonexistent:{}", dir.path().display()));
        let kind = |r: io::Result<()>| r.map_err(|e| e.raw_os_error());

        assert_eq!(kind(executable("tool", Some(&path), None)), Ok(()), "by name, in PATH");
        assert_eq!(kind(executable("tool", Some(std::ffi::OsStr::new("/usr/bin")), None)), Err(Some(libc::ENOENT)));
        assert_eq!(kind(executable(tool.to_str().unwrap(), None, None)), Ok(()), "by path");
        assert_eq!(kind(executable("./tool", None, Some(dir.path()))), Ok(()), "relative to the run's directory");
        assert_eq!(kind(executable("./tool", None, Some(Path::new("/")))), Err(Some(libc::ENOENT)));
        assert_eq!(kind(executable(data.to_str().unwrap(), None, None)), Err(Some(libc::EACCES)), "not executable");
        assert_eq!(kind(executable(dir.path().to_str().unwrap(), None, None)), Err(Some(libc::EACCES)), "a directory");
        assert_eq!(kind(executable("sh", Some(std::ffi::OsStr::new("/usr/bin:/bin")), None)), Ok(()));
    }
}
