//! Helpers shared by the end-to-end tests: a runner on a temporary store, specs, polling, pid checks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kairos_agent::{OutputStore, RunSpec, Runner};
use tempfile::TempDir;

/// Short, so that tests of killing stay fast.
pub const KILL_GRACE: Duration = Duration::from_millis(200);

/// Upper bound for anything a test waits on; correctness never depends on it being reached.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct Agent {
    pub runner: Runner,
    pub store: OutputStore,
    _dir: TempDir,
}

pub fn agent() -> Agent {
    agent_with_grace(KILL_GRACE)
}

pub fn agent_with_grace(kill_grace: Duration) -> Agent {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = OutputStore::open(dir.path().join("outputs")).expect("open store");
    Agent { runner: Runner::new(store.clone(), kill_grace), store, _dir: dir }
}

pub fn spec(executor: &str, pairs: &[(&str, &str)]) -> RunSpec {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let config: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let id = format!("exec-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    RunSpec::new("test-job", id, executor, config)
}

/// Polls `check` until it yields a value or `PATIENCE` runs out.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// True once `pid` no longer runs. A zombie counts as gone: it has been killed, and in a container
/// nobody may be reaping orphans.
pub fn process_gone(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    if !alive {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

pub async fn wait_gone(pid: i32) {
    eventually(&format!("pid {pid} to be gone"), || process_gone(pid).then_some(())).await;
}

/// Parses the whitespace-separated pids a test command printed.
pub fn pids(output: &str) -> Vec<i32> {
    output.split_whitespace().filter_map(|word| word.parse().ok()).collect()
}
