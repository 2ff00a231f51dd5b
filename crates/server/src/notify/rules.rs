//! A job's `notify` rules applied to what happens: which event an execution is (`start`, `success`, `failure`,
//! `recovery`, `lost`), whether the job's rules want it, and the repeat limit: while a job keeps failing, a
//! failure notifies again only `repeat_after` (1h) after the last one that did; a recovery notifies at once and
//! ends the quiet. Jobs without rules notify on every start and finish, as in Dkron, and are not tracked.
//!
//! Whether the job was failing before is remembered by the leader for the jobs with rules; the first time it
//! meets a job (after it took over), it reads the job's latest finished execution from the state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use kairos_model::job::{Notify, NotifyOn};
use kairos_model::{Execution, ExecutionStatus};
use kairos_store::StateReader;

/// What the leader remembers of a job with rules.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    failing: bool,
    /// When a failure of the current streak last notified.
    notified_at: Option<Instant>,
}

/// The decision about one finished execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Notify(Option<NotifyOn>),
    /// The rules do not want this event.
    NotWanted,
    /// A failure within `repeat_after` of the last one that notified.
    Repeated,
}

#[derive(Default)]
pub struct Rules {
    tracks: Mutex<HashMap<String, Track>>,
}

/// The event a finished execution is, before recovery is considered; `None` for one that is neither (cancelled,
/// skipped).
fn finish_event(exec: &Execution) -> Option<NotifyOn> {
    match exec.status {
        ExecutionStatus::Succeeded => Some(NotifyOn::Success),
        ExecutionStatus::Failed => Some(NotifyOn::Failure),
        ExecutionStatus::Lost => Some(NotifyOn::Lost),
        _ => None,
    }
}

impl Rules {
    /// Whether a start notifies.
    pub fn start(rules: Option<&Notify>) -> bool {
        rules.is_none_or(|r| r.wants(NotifyOn::Start))
    }

    /// Whether (and as what) a finished execution notifies, `now` being the moment it is decided.
    pub fn finish(&self, rules: Option<&Notify>, exec: &Execution, state: &StateReader, now: Instant) -> Decision {
        let Some(rules) = rules else { return Decision::Notify(finish_event(exec)) };
        let Some(event) = finish_event(exec) else { return Decision::NotWanted };
        let mut tracks = self.tracks.lock().expect("notify rules lock");
        let track = tracks
            .entry(exec.job_name.clone())
            .or_insert_with(|| Track { failing: previously_failing(state, exec), notified_at: None });
        match event {
            NotifyOn::Success => {
                let recovered = track.failing;
                *track = Track::default();
                let event = if recovered { NotifyOn::Recovery } else { NotifyOn::Success };
                let wanted = rules.wants(event) || (recovered && rules.wants(NotifyOn::Success));
                if wanted { Decision::Notify(Some(event)) } else { Decision::NotWanted }
            }
            _ => {
                track.failing = true;
                if !rules.wants(event) {
                    return Decision::NotWanted;
                }
                let quiet = track.notified_at.is_some_and(|at| now.duration_since(at) < rules.repeat_after());
                if quiet {
                    return Decision::Repeated;
                }
                track.notified_at = Some(now);
                Decision::Notify(Some(event))
            }
        }
    }
}

/// Whether the job's latest finished execution before `exec` failed (or was lost).
fn previously_failing(state: &StateReader, exec: &Execution) -> bool {
    let Ok(executions) = state.executions(&exec.job_name) else { return false };
    executions
        .iter()
        .filter(|e| e.id != exec.id && e.finished_at.is_some() && finish_event(e).is_some())
        .max_by_key(|e| e.finished_at)
        .is_some_and(|e| e.status != ExecutionStatus::Succeeded)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rules(on: &[NotifyOn], repeat_after: &str) -> Notify {
        Notify {
            on: Some(on.to_vec()),
            repeat_after: Some(repeat_after.into()),
            emails: Vec::new(),
            webhooks: Vec::new(),
            alert_if_not_succeeded_within: None,
        }
    }

    fn finished(status: ExecutionStatus, n: i64) -> Execution {
        let at: kairos_model::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut exec = Execution::decided("j", at, kairos_model::Trigger::Manual);
        exec.id = format!("e{n}");
        exec.status = status;
        exec.finished_at = Some(at);
        exec
    }

    #[test]
    fn failures_notify_once_per_repeat_window_and_a_recovery_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let machine = kairos_store::StateMachine::open(&dir.path().join("s.redb"), 10, None).unwrap();
        let state = machine.reader();
        let tracker = Rules::default();
        let r = rules(&[NotifyOn::Failure, NotifyOn::Recovery], "1h");
        let t0 = Instant::now();
        let decide = |status, n, at| tracker.finish(Some(&r), &finished(status, n), &state, at);
        assert_eq!(decide(ExecutionStatus::Succeeded, 1, t0), Decision::NotWanted, "a plain success");
        assert_eq!(decide(ExecutionStatus::Failed, 2, t0), Decision::Notify(Some(NotifyOn::Failure)));
        assert_eq!(decide(ExecutionStatus::Failed, 3, t0 + Duration::from_secs(60)), Decision::Repeated);
        assert_eq!(
            decide(ExecutionStatus::Lost, 4, t0 + Duration::from_secs(3601)),
            Decision::NotWanted,
            "a lost run is not a failure these rules want, but the streak goes on"
        );
        assert_eq!(
            decide(ExecutionStatus::Succeeded, 5, t0 + Duration::from_secs(3602)),
            Decision::Notify(Some(NotifyOn::Recovery))
        );
        assert_eq!(
            decide(ExecutionStatus::Failed, 6, t0 + Duration::from_secs(3603)),
            Decision::Notify(Some(NotifyOn::Failure))
        );
        assert_eq!(decide(ExecutionStatus::Cancelled, 7, t0), Decision::NotWanted);
    }

    #[test]
    fn without_rules_every_finish_notifies_and_a_success_rule_covers_recoveries() {
        let dir = tempfile::tempdir().unwrap();
        let machine = kairos_store::StateMachine::open(&dir.path().join("s.redb"), 10, None).unwrap();
        let state = machine.reader();
        let tracker = Rules::default();
        let exec = finished(ExecutionStatus::Failed, 1);
        assert_eq!(tracker.finish(None, &exec, &state, Instant::now()), Decision::Notify(Some(NotifyOn::Failure)));
        let r = rules(&[NotifyOn::Success], "0s");
        assert_eq!(tracker.finish(Some(&r), &exec, &state, Instant::now()), Decision::NotWanted);
        let ok = finished(ExecutionStatus::Succeeded, 2);
        assert_eq!(tracker.finish(Some(&r), &ok, &state, Instant::now()), Decision::Notify(Some(NotifyOn::Recovery)));
        assert!(Rules::start(None) && !Rules::start(Some(&r)));
    }
}
