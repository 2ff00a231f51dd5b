//! Raft on threads of its own (issue 19): openraft's core, its replication and heartbeat tasks, the client that
//! sends them, and the Raft listener that receives them run on a runtime no job traffic uses; so does gossip,
//! whose failure detector otherwise took every agent for dead when a busy leader's main runtime read their
//! heartbeats late.
//!
//! On the node's main runtime and its RPC listener, Raft waited behind job traffic. Under load, agents' reports,
//! permits and renewals held every one of the RPC listener's 1,024 connections, each waiting for a write that
//! Raft could not commit; a heartbeat's new connection then waited in the kernel's accept queue (a request to
//! the listener took up to 2 minutes), leaders lost their quorum, elections followed one another, and writes
//! stalled further: a cycle the cluster did not leave by itself once the load was gone. Now a heartbeat goes
//! through a listener only servers use and waits only for the operating system to give its thread a core.
//!
//! That wait is shortened too: the runtime's threads ask the operating system for a higher priority (nice
//! [`NICE`]) when the process may have it (root, or `CAP_SYS_NICE`). On a machine saturated by runs (2 cores, 53
//! nodes and their shell runs), heartbeats with a 50 ms deadline otherwise waited for a core behind every run's
//! thread, timed out by the thousand, and leaders stepped down. Without the privilege the threads run at the
//! process's priority, as before. An agent-only node runs its gossip on such a runtime of one thread, so its
//! heartbeats reach the others while its runs keep its cores busy.

use std::future::Future;

use tokio::runtime::Handle;

/// Threads of the Raft runtime: one can wait for a log write's fsync while the other answers a heartbeat.
const THREADS: usize = 2;
/// The nice value the runtime's threads ask for: ahead of the node's other threads and of its runs (0).
const NICE: libc::c_int = -10;

/// The runtime Raft runs on; shut down (without waiting for its tasks) when dropped.
pub struct RaftRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl RaftRuntime {
    pub fn start() -> std::io::Result<RaftRuntime> {
        RaftRuntime::named("kairos-raft", THREADS)
    }

    /// The runtime an agent-only node runs gossip on.
    pub fn for_gossip() -> std::io::Result<RaftRuntime> {
        RaftRuntime::named("kairos-gossip", 1)
    }

    fn named(name: &str, threads: usize) -> std::io::Result<RaftRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .on_thread_start(raise_priority)
            .enable_all()
            .build()?;
        Ok(RaftRuntime { runtime: Some(runtime) })
    }

    pub fn handle(&self) -> &Handle {
        self.runtime.as_ref().expect("the runtime lives until drop").handle()
    }

    /// Run `work` on the Raft runtime and wait for its result from any runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        self.handle().spawn(work).await
    }
}

/// Ask for nice [`NICE`] for the calling thread; refused (no privilege) it keeps the process's priority.
fn raise_priority() {
    // SAFETY: gettid and setpriority only read their arguments; on Linux a thread id names that thread alone.
    let raised = unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, NICE)
    };
    if raised != 0 {
        tracing::debug!(
            "cannot raise the priority of the Raft and gossip threads (nice {NICE}): {}; they run at the process's",
            std::io::Error::last_os_error()
        );
    }
}

/// The nice value of the calling thread.
#[cfg(test)]
fn thread_nice() -> libc::c_int {
    // SAFETY: as above; getpriority returns the value (errno tells an error from -1, not needed here).
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_threads_run_ahead_of_the_others_when_the_process_may() {
        let base = thread_nice();
        let runtime = RaftRuntime::start().unwrap();
        let nice = runtime.handle().block_on(async { tokio::spawn(async { thread_nice() }).await.unwrap() });
        // SAFETY: geteuid has no arguments. Root may always raise a thread's priority.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(nice, NICE);
        } else {
            assert!(nice == NICE || nice == base, "nice {nice}, process {base}");
        }
        assert_eq!(thread_nice(), base, "the calling thread keeps its priority");
    }
}
