//! Giving memory back after a burst of runs.
//!
//! Thousands of runs at one instant allocate orders, reports and output buffers on every thread of the node; glibc
//! keeps what they free in its per-thread arenas, so the node's RSS stayed about 30 MiB higher after each burst
//! (BENCHMARKS.md, "Overload: a burst of 5,000 at one instant"). Once the node has launched many runs and its
//! queue of runs waiting for a place is empty again, it asks the allocator to return its free pages
//! (`malloc_trim`), on a blocking thread: measured after a burst of 2,176 runs, 137 MiB went down to 109 MiB.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::worker::Worker;

/// How often the node considers giving memory back.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Runs launched since the last trim before another is worth it.
const TRIM_AFTER_RUNS: u64 = 500;

/// Whether to give memory back now: many runs were launched since the last time, and none waits for a place.
fn due(launched_since: u64, queued: usize) -> bool {
    launched_since >= TRIM_AFTER_RUNS && queued == 0
}

/// Runs until `stopping`: every [`TRIM_EVERY`], gives free memory back to the system when [`due`].
pub async fn trim_loop(worker: Worker, stopping: CancellationToken) {
    let mut last = worker.launched_count();
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tokio::time::sleep(TRIM_EVERY) => {}
        }
        let launched = worker.launched_count();
        let since = launched.saturating_sub(last);
        if !due(since, worker.queued_count()) {
            continue;
        }
        last = launched;
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        debug!(released, "free memory given back after {since} runs");
    }
}

/// Return free heap pages to the system; true when some were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks and releases the allocator's own free memory; it takes the arenas' locks
    // like any allocation does and touches nothing of ours.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// Other allocators give memory back by themselves, or not at all.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_given_back_after_many_runs_once_nothing_waits() {
        assert!(!due(0, 0));
        assert!(!due(TRIM_AFTER_RUNS - 1, 0), "too few runs since the last time");
        assert!(due(TRIM_AFTER_RUNS, 0));
        assert!(!due(10 * TRIM_AFTER_RUNS, 1), "runs still wait for a place: the burst is not over");
    }
}
