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

use std::future::Future;

use tokio::runtime::Handle;

/// Threads of the Raft runtime: one can wait for a log write's fsync while the other answers a heartbeat.
const THREADS: usize = 2;

/// The runtime Raft runs on; shut down (without waiting for its tasks) when dropped.
pub struct RaftRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl RaftRuntime {
    pub fn start() -> std::io::Result<RaftRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("kairos-raft")
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

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
