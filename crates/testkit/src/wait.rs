//! Waiting without sleeping for correctness: poll an observable condition until a deadline, and when giving up
//! say what was awaited and what was seen last.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Poll interval of [`wait_until`]: short against the seconds a test waits, long against the cost of a probe.
pub const POLL: Duration = Duration::from_millis(100);

/// What a probe answers: done with a value, or not yet (with, for a `Result`, what it saw instead).
pub trait Probe<T> {
    fn outcome(self) -> Result<T, Option<String>>;
}

impl<T> Probe<T> for Option<T> {
    fn outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Probe<T> for Result<T, E> {
    fn outcome(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// A wait that gave up: how long it waited and the last thing its probe saw, if it said.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {within:?}{}", last_seen(.seen))]
pub struct TimedOut {
    pub within: Duration,
    pub seen: Option<String>,
}

fn last_seen(seen: &Option<String>) -> String {
    seen.as_ref().map_or(String::new(), |seen| format!("; last seen: {seen}"))
}

/// Poll `probe` every `every` until it is done, or answer [`TimedOut`] after `within` (the probe runs at least
/// once, and once more at the deadline).
pub async fn poll_until<T, P: Probe<T>>(
    within: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> P,
) -> Result<T, TimedOut> {
    assert!(!every.is_zero(), "a poll interval of zero would spin");
    let deadline = Instant::now() + within;
    loop {
        let seen = match probe().await.outcome() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            return Err(TimedOut { within, seen });
        }
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now())).max(Duration::from_millis(1)))
            .await;
    }
}

/// Poll `probe` until it answers `Some` (or `Ok`), or fail the test after `within`, naming `what` was awaited
/// (and the last `Err` seen).
pub async fn wait_until<T, P: Probe<T>>(what: &str, within: Duration, probe: impl AsyncFnMut() -> P) -> T {
    match poll_until(within, POLL, probe).await {
        Ok(value) => value,
        Err(TimedOut { within, seen: None }) => panic!("timed out after {within:?} waiting until {what}"),
        Err(TimedOut { within, seen: Some(seen) }) => {
            panic!("timed out after {within:?} waiting until {what}\nlast seen: {seen}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_the_first_value_the_probe_gives() {
        let mut calls = 0;
        let value = wait_until("the third call", Duration::from_secs(5), async || {
            calls += 1;
            (calls == 3).then_some(calls * 10)
        })
        .await;
        assert_eq!(value, 30);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_with_what_it_saw_last() {
        let mut calls = 0;
        let started = Instant::now();
        let timed_out = poll_until(Duration::from_millis(300), Duration::from_millis(50), async || {
            calls += 1;
            Err::<(), _>(format!("call {calls}"))
        })
        .await
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(timed_out.seen, Some(format!("call {calls}")));
        assert!(calls >= 2, "the probe runs again at the deadline");
        assert!(timed_out.to_string().ends_with(&format!("last seen: call {calls}")), "{timed_out}");
    }

    #[tokio::test]
    #[should_panic(expected = "waiting until the impossible")]
    async fn wait_until_fails_naming_what_it_awaited() {
        wait_until("the impossible", Duration::from_millis(150), async || None::<()>).await;
    }
}
