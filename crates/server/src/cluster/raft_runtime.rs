//! Raft runs on a runtime of its own, apart from the API, the scheduler, the leader's duties and the traffic of
//! runs (orders, reports). On one shared runtime a burst of job traffic (thousands of reports to decode and
//! commit, orders to place) held Raft's tasks up behind it: heartbeats went out late, followers timed out and
//! started elections, and the leader changed while nothing was wrong but load (issue 19).
//!
//! Here run openraft's core and its replication streams (so heartbeats are sent on time), the log and state
//! machine's storage (whose fsync'd commits go on this runtime's blocking pool), the Raft client's connections
//! (they are driven by the runtime that opened them), and the receiving side of every Raft RPC after the
//! listener has read its body: decoding an append of up to 8 MiB of entries and answering it.
//!
//! One runtime per process, as a node is one per process; should it fail to start, Raft shares the caller's.

use std::future::Future;
use std::sync::OnceLock;

use tracing::warn;

/// Threads: one for the core and its storage, one for replication and the RPCs' decoding; fsyncs wait on the
/// blocking pool, not on these.
const THREADS: usize = 2;

fn runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RAFT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RAFT.get_or_init(|| {
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("kairos-raft")
            .enable_all()
            .build();
        built.map_err(|err| warn!("cannot start Raft's runtime ({err}); Raft shares the main one")).ok()
    })
    .as_ref()
}

/// Run `work` on Raft's runtime and wait for its result here. Whatever `work` spawns stays on Raft's runtime.
pub async fn run<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> T {
    match runtime() {
        Some(runtime) => match runtime.spawn(work).await {
            Ok(value) => value,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // Only a runtime shutting down cancels its tasks, and this one lives as long as the process.
            Err(err) => panic!("Raft's runtime dropped a task: {err}"),
        },
        None => work.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_raft_threads_and_what_it_spawns_stays_there() {
        let (outer, inner) = run(async {
            let outer = std::thread::current().name().map(str::to_owned);
            let inner = tokio::spawn(async { std::thread::current().name().map(str::to_owned) }).await.unwrap();
            (outer, inner)
        })
        .await;
        assert_eq!(outer.as_deref(), Some("kairos-raft"));
        assert_eq!(inner.as_deref(), Some("kairos-raft"));
        assert_ne!(std::thread::current().name(), Some("kairos-raft"));
    }

    #[tokio::test]
    #[should_panic(expected = "boom")]
    async fn a_panic_goes_on_in_the_caller() {
        run(async { panic!("boom") }).await;
    }
}
