//! Raft on threads of its own (issue 19): openraft's core, its replication and heartbeat tasks, the client that
//! sends them, and the RPC listener that receives them run on a runtime no job traffic uses.
//!
//! On the node's main runtime Raft's tasks queued behind whatever else was ready: forwarded writes, agents'
//! reports and permits, the scheduler, the API. On a machine short of CPU a heartbeat's answer then came later
//! than openraft's deadline for it (the heartbeat interval), leaders lost their quorum and elections followed one
//! another while the load lasted. Here a heartbeat waits only for the operating system to give its thread a core,
//! which it shares fairly with the main runtime's threads.
//!
//! The RPC listener is one port for everything node-to-node, as Dkron's is: its connections are served on this
//! runtime (reading and parsing requests is little work), and every route but Raft's and the clock's is handed to
//! the main runtime by [`on_main`], so a burst of reports or permits cannot hold a heartbeat up.

use std::future::Future;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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

/// Middleware: serve the request on the main runtime (`main`) rather than on the listener's.
pub async fn on_main(State(main): State<Handle>, request: Request, next: Next) -> Response {
    match main.spawn(next.run(request)).await {
        Ok(response) => response,
        // A handler that panicked: the connection gets a 500, as axum gives when a handler panics in place.
        Err(err) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("handler failed: {err}")).into_response(),
    }
}
