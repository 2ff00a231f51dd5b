//! What this node's leader duties are doing (following, establishing leadership, leading; the last sweep and
//! error), as `/health` and the logs show it: the duties report here, `node::leadership` sets the phase. And
//! [`LeaderWrites`], the one way the duties (scheduler, dispatcher) write.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kairos_model::Timestamp;
use kairos_store::{Command, Response};
use serde_json::json;

use crate::error::WriteError;

/// A leader whose duties have not been running (or whose sweep has not completed) for this long is unhealthy.
pub const STALLED_AFTER: Duration = Duration::from_secs(10);
/// What this node's leader duties are doing, for `/health` and the logs.
#[derive(Default)]
pub struct Duties {
    state: Mutex<State>,
}

#[derive(Clone)]
struct State {
    phase: Phase,
    term: u64,
    since: Timestamp,
    since_instant: Instant,
    last_sweep: Option<Instant>,
    last_error: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Phase {
    Follower,
    Establishing,
    Leading,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Follower => "follower",
            Phase::Establishing => "establishing",
            Phase::Leading => "leading",
        }
    }
}

impl Default for State {
    fn default() -> State {
        State {
            phase: Phase::Follower,
            term: 0,
            since: Timestamp::now(),
            since_instant: Instant::now(),
            last_sweep: None,
            last_error: None,
        }
    }
}

impl Duties {
    pub(crate) fn set(&self, phase: Phase, term: u64) {
        let mut state = self.state.lock().expect("duties lock");
        *state = State { phase, term, ..State::default() };
    }

    /// The dispatcher's sweep completed a pass.
    pub fn swept(&self) {
        self.state.lock().expect("duties lock").last_sweep = Some(Instant::now());
    }

    /// A duty met an error it retries after; shown until the next phase.
    pub fn failed(&self, error: String) {
        self.state.lock().expect("duties lock").last_error = Some(error);
    }

    /// Why this node, which leads, does not do its duties; `None` when it does them (or does not lead).
    pub fn stalled(&self, leads: bool) -> Option<String> {
        let state = self.state.lock().expect("duties lock").clone();
        if !leads {
            return None;
        }
        let error = state.last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
        match state.phase {
            Phase::Leading => {
                let since = state.last_sweep.unwrap_or(state.since_instant);
                (since.elapsed() > STALLED_AFTER).then(|| {
                    format!(
                        "this node leads but its dispatcher has not completed a pass for {:?}{error}",
                        since.elapsed()
                    )
                })
            }
            Phase::Establishing | Phase::Follower => (state.since_instant.elapsed() > STALLED_AFTER).then(|| {
                format!(
                    "this node leads but its leader duties have not started ({} for {:?}){error}",
                    state.phase.as_str(),
                    state.since_instant.elapsed()
                )
            }),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let state = self.state.lock().expect("duties lock").clone();
        json!({
            "phase": state.phase.as_str(),
            "term": state.term,
            "since": state.since.to_string(),
            "last_sweep_ms_ago": state.last_sweep.map(|at| at.elapsed().as_millis() as u64),
            "last_error": state.last_error,
        })
    }
}

/// How a leader duty writes: through the node it runs on, as the leader of one term. The node implements it
/// (`node::writes`); the duties see nothing else of it, so they can be driven without a node.
pub trait LeaderWrites: Send + Sync {
    /// Propose `command` as the leader of `term`, bounded in time; refused once this node no longer leads in that
    /// term.
    fn submit_as_leader(&self, term: u64, command: Command) -> BoxFuture<'_, Result<Response, WriteError>>;
    /// Whether this node leads now.
    fn is_leader(&self) -> bool;
    /// Whether this node is shutting down.
    fn is_stopping(&self) -> bool;
}
