//! The kernel's out-of-memory killer and our runs: a run is its first choice, and a run it killed says so.
//!
//! A node and the runs it starts usually share one memory limit (a systemd unit, a container, a cgroup, or
//! the machine). When that memory is exhausted the kernel kills the process with the highest score. A run
//! that allocates without bound is most often that process anyway, but a node that has grown bigger than
//! its runs must never be chosen instead of them: the node keeps the cluster's records and every other
//! run, a run only itself. So every run raises its own `oom_score_adj` to [`RUN_OOM_SCORE_ADJ`] before its
//! command executes (raising needs no privilege; a node whose own score is already higher keeps it for
//! its runs, since lowering is refused).
//!
//! A run ended by a SIGKILL that Kairos did not send is judged against the kernel's count of OOM kills:
//! the count of the node's memory cgroup (v1 `memory.oom_control`, v2 `memory.events`), or the machine's
//! (`/proc/vmstat`) where no cgroup count can be read. If the count rose while the run ran, its error says
//! the out-of-memory killer ended it, instead of a bare "killed by signal 9".

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The `oom_score_adj` every run takes (range −1000…1000; 0 is the default every process inherits).
pub const RUN_OOM_SCORE_ADJ: i32 = 500;

/// What a shell run executes before its script, on the same line (so the script keeps its line numbers): it
/// raises the shell's own score, which everything the script starts inherits. A failure (no /proc) is silent and
/// harmless.
///
/// The score is raised by the run itself, not by a hook between fork and exec (`pre_exec`), because such a hook
/// makes the standard library fork the whole node to start each run, where without one it uses posix_spawn
/// (vfork). A node of a few hundred MiB with many threads paid for that fork in copied page tables and in page
/// faults of its own: at 300 `date` runs a second the node used 0.85–0.95 cores with the hook and 0.12–0.13
/// without it (`kairos-bench fire-lag --jobs 300`, BENCHMARKS.md).
pub const SHELL_PREFIX: &str = "echo 500 >/proc/self/oom_score_adj 2>/dev/null; ";

/// How a program run without a shell is started: `/bin/sh -c EXEC_TRAMPOLINE program args…` raises the score as
/// [`SHELL_PREFIX`] does, then `exec`s the program with its arguments as given (the same process: its pid, group
/// and exit status are the program's). It costs the child one small shell start, and spares the node a fork.
pub const EXEC_TRAMPOLINE: &str = "echo 500 >/proc/self/oom_score_adj 2>/dev/null; exec \"$0\" \"$@\"";

/// Whether this machine has the `/bin/sh` that [`EXEC_TRAMPOLINE`] needs (a distroless image may not: runs
/// without a shell then raise their score in a forked child, [`raise_score_in_child`], at the fork's cost).
pub(crate) fn have_shell() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| Path::new("/bin/sh").is_file())
}

/// What a forked child writes to `/proc/self/oom_score_adj`, NUL-terminated path and the value as text.
const SCORE_ADJ_PATH: &[u8] = b"/proc/self/oom_score_adj\0";
const SCORE_ADJ_VALUE: &[u8] = b"500";

/// Makes the command's child raise its `oom_score_adj` before it executes the program: a hook between fork and
/// exec, so the node forks (see [`SHELL_PREFIX`] for the cost). Only for a machine without `/bin/sh`.
pub(crate) fn raise_score_in_child(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe functions
    // (open, write, close) on static data; it allocates nothing and touches no lock. A failure (a kernel
    // without the file, a refused lowering) leaves the score as it was, which is harmless.
    unsafe {
        command.pre_exec(|| {
            let fd = libc::open(SCORE_ADJ_PATH.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, SCORE_ADJ_VALUE.as_ptr().cast(), SCORE_ADJ_VALUE.len());
                libc::close(fd);
            }
            Ok(())
        });
    }
}

/// The kernel's count of OOM kills when a run started, to compare with when it ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OomKills {
    at_start: Option<u64>,
}

impl OomKills {
    /// Reads the count now (`None` inside when no count can be read on this system).
    pub(crate) fn now() -> OomKills {
        OomKills { at_start: counter_file().and_then(read_oom_kills) }
    }

    /// Whether the kernel killed something for lack of memory since [`OomKills::now`] was taken.
    pub(crate) fn rose(&self) -> bool {
        match (self.at_start, counter_file().and_then(read_oom_kills)) {
            (Some(before), Some(after)) => after > before,
            _ => false,
        }
    }
}

/// The file that counts OOM kills for this node, found once: its memory cgroup's, else the machine's.
fn counter_file() -> Option<&'static Path> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let candidates = cgroup_counter_files(&own).into_iter().chain([PathBuf::from("/proc/vmstat")]);
        candidates.into_iter().find(|file| read_oom_kills(file).is_some())
    })
    .as_deref()
}

/// The OOM-kill counters of the memory cgroup named in a `/proc/self/cgroup` text, v1 first.
fn cgroup_counter_files(proc_self_cgroup: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            files.insert(0, Path::new("/sys/fs/cgroup/memory").join(path).join("memory.oom_control"));
        } else if controllers.is_empty() {
            files.push(Path::new("/sys/fs/cgroup").join(path).join("memory.events"));
        }
    }
    files
}

/// The `oom_kill N` line of a counter file (the same line in all three formats).
fn read_oom_kills(file: &Path) -> Option<u64> {
    parse_oom_kills(&std::fs::read_to_string(file).ok()?)
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_kill_line_is_read_from_every_format() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        let vmstat = "nr_free_pages 1\noom_kill 7\nnuma_hit 2\n";
        assert_eq!(parse_oom_kills(v1), Some(3));
        assert_eq!(parse_oom_kills(v2), Some(2));
        assert_eq!(parse_oom_kills(vmstat), Some(7));
        assert_eq!(parse_oom_kills("oom_kill_disable 0\n"), None);
    }

    #[test]
    fn the_memory_cgroup_is_found_in_v1_and_v2_listings() {
        let hybrid = "5:devices:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(
            cgroup_counter_files(hybrid),
            [
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/memory.oom_control"),
                "/sys/fs/cgroup/memory.events".into()
            ]
        );
        let v2 = "0::/system.slice/kairos.service\n";
        assert_eq!(
            cgroup_counter_files(v2),
            [PathBuf::from("/sys/fs/cgroup/system.slice/kairos.service/memory.events")]
        );
        let v1_joined = "7:cpu,memory:/k\n";
        assert_eq!(cgroup_counter_files(v1_joined), [PathBuf::from("/sys/fs/cgroup/memory/k/memory.oom_control")]);
    }

    #[test]
    fn the_score_value_matches_the_constant() {
        assert_eq!(SCORE_ADJ_VALUE, RUN_OOM_SCORE_ADJ.to_string().as_bytes());
        assert!(SHELL_PREFIX.starts_with(&format!("echo {RUN_OOM_SCORE_ADJ} >/proc/self/oom_score_adj ")));
        assert!(!SHELL_PREFIX.contains('\n'), "the script keeps its line numbers");
        assert!(EXEC_TRAMPOLINE.starts_with(SHELL_PREFIX));
    }
}
