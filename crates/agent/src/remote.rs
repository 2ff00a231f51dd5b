//! What the broker and database executors share: racing the remote operation against the job's timeout and its
//! cancellation, and turning how that race ended into the [`Outcome`].
//!
//! The operation writes its output into the capture as it goes; it answers `Err` with a message for `error`.
//! When the timeout or the cancellation wins, the operation's future is dropped, which abandons it (the
//! connection it was using is not reused, see `connections`); the sql executor additionally cancels the
//! statement on the server before it returns.

use std::future::Future;
use std::time::Duration;

use kairos_schedule::format_duration;
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::redact::Secrets;
use crate::spec::{Outcome, RunStatus};

pub(crate) enum Ended<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

impl<T> Ended<T> {
    /// The same ending with what the operation answered turned by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Ended<U> {
        match self {
            Ended::Done(done) => Ended::Done(f(done)),
            Ended::TimedOut => Ended::TimedOut,
            Ended::Cancelled => Ended::Cancelled,
        }
    }
}

/// Runs `work` until it ends, `timeout` passes, or `cancel` fires; cancellation wins a tie, then the timeout.
pub(crate) async fn race<T>(
    work: impl Future<Output = T>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> Ended<T> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Ended::Cancelled,
        () = sleep(timeout) => Ended::TimedOut,
        done = work => Ended::Done(done),
    }
}

/// The outcome of a remote operation that ended as `ended`; every message is scrubbed of `secrets`.
pub(crate) fn finish(
    capture: Capture,
    ended: Ended<Result<(), String>>,
    timeout: Option<Duration>,
    secrets: &Secrets,
) -> Outcome {
    match ended {
        Ended::Done(Ok(())) => capture.into_outcome(RunStatus::Succeeded, None, None),
        Ended::Done(Err(reason)) => capture.not_started(secrets.scrub(&reason)),
        Ended::TimedOut => capture.into_outcome(RunStatus::TimedOut, None, Some(timed_out(timeout))),
        Ended::Cancelled => capture.into_outcome(RunStatus::Cancelled, None, Some("cancelled".to_owned())),
    }
}

pub(crate) fn timed_out(timeout: Option<Duration>) -> String {
    match timeout {
        Some(timeout) => format!("timed out after {}", format_duration(timeout)),
        None => "timed out".to_owned(),
    }
}

async fn sleep(timeout: Option<Duration>) {
    match timeout {
        Some(timeout) => tokio::time::sleep(timeout).await,
        None => std::future::pending().await,
    }
}
