//! Takeover: a new leader first asks every live node what it runs, holds or has not reported yet (which also
//! raises their term, fencing the old leader). Only then does it dispatch pending executions of the old leader;
//! while a node does not answer (paused? cut off?), the old leader's pending runs that were due before this
//! takeover wait for it, at most a lease (and at least until any order it may hold has expired,
//! [`ORDER_STALE_AFTER`]): a silent node may have started one and not reported it yet. Runs due after the takeover
//! go at once: no node can have launched them (see [`crate::permit`]). Running executions that no node owns any
//! more turn `lost` at the first sweep; the rest is left to leases.
//!
//! When the only silent node is the previous leader, only runs due before it led wait: as leader it launched its
//! own runs only once their start was committed (so this leader reads them as running), and it asks no permit of
//! itself, so a run it launched unreported is one it launched as a follower, with a permit of an earlier term,
//! before it led (see [`crate::node::leaders`]). A leader cut off from the others, or paused, no longer holds up
//! the runs due while it was being replaced (issue 15).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kairos_model::{Execution, ExecutionStatus, Timestamp};
use kairos_store::ExecRef;
use tracing::{info, warn};

use super::Host;
use super::{ORDER_STALE_AFTER, Synced};
use crate::cluster::RpcError;
use crate::gossip::Member;
use crate::worker::Holding;

/// The leader before this one, and when this server first saw it lead (never before it was elected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousLeader {
    pub name: String,
    pub since: Timestamp,
}

/// What a new leader learned from its sync, while some nodes have not answered yet.
#[derive(Default)]
pub struct Takeover {
    /// Nodes that did not answer (but are not known dead), with the deadline after which they are presumed dead.
    unknown: HashMap<String, Instant>,
    /// Pending executions of the previous leader, not dispatched while `unknown` is not empty.
    suspects: HashSet<ExecRef>,
}

impl Takeover {
    /// After the first sync: `silent` nodes did not answer; until they do (or `deadline`), the previous leader's
    /// `pending` runs are held back, since a silent node may have been sent them already.
    pub fn begin(silent: &[String], pending: Vec<ExecRef>, deadline: Instant) -> Takeover {
        if silent.is_empty() || pending.is_empty() {
            return Takeover::default(); // nothing to hold, nobody to wait for
        }
        Takeover {
            unknown: silent.iter().map(|n| (n.clone(), deadline)).collect(),
            suspects: pending.into_iter().collect(),
        }
    }

    /// Whether a run is held back (a silent node may run it).
    pub fn holds(&self, exec: &ExecRef) -> bool {
        self.suspects.contains(exec)
    }

    pub fn silent(&self) -> Vec<String> {
        self.unknown.keys().cloned().collect()
    }

    /// Forget silent nodes that answered, are no longer alive, or whose deadline passed. Answers true when this
    /// released the held runs.
    pub fn settle(&mut self, answered: &HashSet<String>, alive: &HashSet<String>, now: Instant) -> bool {
        self.unknown.retain(|name, deadline| !answered.contains(name) && *deadline > now && alive.contains(name));
        if self.unknown.is_empty() && !self.suspects.is_empty() {
            self.suspects.clear();
            return true;
        }
        false
    }
}

/// One node's answer to a sync.
pub(super) enum Answer {
    Holds(Holding),
    /// The node's process is gone (connection refused): it holds nothing.
    Gone,
    /// No answer (paused, partitioned, overloaded): it may hold runs.
    Silent,
}

pub(super) async fn sync_member(node: &Host, member: &Member, term: u64) -> Answer {
    if member.name == node.config.node_name {
        return Answer::Holds(node.worker.sync(term));
    }
    match node.rpc.sync(&member.rpc_addr, term).await {
        Ok(holding) => Answer::Holds(holding),
        Err(RpcError::Unreachable { refused: true, .. }) => Answer::Gone,
        Err(_) => Answer::Silent,
    }
}

/// Ask nodes what they hold; claim it. A node that does not answer gets no runs until it does (see
/// [`placement::reachable`](super::placement::reachable)). Answers what the nodes that answered run, and the names of
/// the silent ones.
async fn sync_nodes(node: &Host, members: &[Member], term: u64) -> (Synced, Vec<String>) {
    let answers = futures::future::join_all(members.iter().map(|m| sync_member(node, m, term))).await;
    let mut held = HashMap::new();
    let mut silent = Vec::new();
    let dispatcher = &node.dispatcher;
    let now = Instant::now();
    for (member, answer) in members.iter().zip(answers) {
        match answer {
            Answer::Holds(holding) => {
                let mut refs = HashSet::new();
                let mut claims = dispatcher.claims.lock().expect("claims lock");
                // What it launched already counts as granted: it must never be placed elsewhere while it is silent.
                let launched: Vec<ExecRef> = holding.running.iter().chain(&holding.unreported).cloned().collect();
                for exec in holding.all() {
                    claims.claim(exec.clone(), &member.name, now);
                    refs.insert(exec);
                }
                claims.grant(&member.name, &launched);
                held.insert(member.name.clone(), refs);
                drop(claims);
                dispatcher.mark_reachable(&member.name);
            }
            Answer::Gone => {
                // Its process is gone, though gossip may call it alive for a few seconds more: place nothing there,
                // and what it was sent but never started is free to go elsewhere.
                dispatcher.node_gone(&member.name, now);
                held.insert(member.name.clone(), HashSet::new());
            }
            Answer::Silent => {
                // Whatever gossip says, it gets no runs until it answers (or for a while): orders to a node cut
                // off take their whole timeout to fail, and the runs wait for that meanwhile (issue 15).
                dispatcher.mark_unreachable(&member.name, now);
                silent.push(member.name.clone());
            }
        }
    }
    (held, silent)
}

/// Take over as the leader of `term`: sync every live node, hold the previous leader's pending runs while a
/// node is silent, then arm the dispatcher with the term. Answers what each node that answered runs, for the
/// first sweep (a running execution no node owns any more is lost).
pub async fn take_over(node: &Host, term: u64, previous: Option<PreviousLeader>) -> Synced {
    let dispatcher = &node.dispatcher;
    node.worker.observe_term(term);
    dispatcher.reset();
    let members = node.membership.alive();
    let (held, silent) = sync_nodes(node, &members, term).await;
    let launchable_before =
        launchable_unreported_before(&silent, previous.as_ref(), Timestamp::now()) + suspect_margin(node);
    let pending_now: Vec<ExecRef> = match node.state.active() {
        Ok(active) => launchable(&active, launchable_before),
        Err(err) => {
            warn!("takeover: cannot read active executions: {err}");
            Vec::new()
        }
    };
    {
        // Lock order everywhere: takeover, then claims.
        let pending: Vec<ExecRef> = {
            let claims = dispatcher.claims.lock().expect("claims lock");
            pending_now.into_iter().filter(|r| !claims.contains(r)).collect()
        };
        let hold = node.worker.lease.max(ORDER_STALE_AFTER);
        let takeover = Takeover::begin(&silent, pending, Instant::now() + hold);
        if !silent.is_empty() && takeover.suspects.is_empty() {
            info!(
                "took over in term {term}; {} node(s) did not answer ({}), none of which may have launched a pending \
                 run: nothing held, and they get no runs until they answer",
                silent.len(),
                silent.join(", ")
            );
        } else if !silent.is_empty() {
            let previous =
                previous.map_or_else(|| "unknown".into(), |p| format!("{}, seen leading since {}", p.name, p.since));
            warn!(
                "took over in term {term}; {} node(s) did not answer ({}): holding {} pending run(s) due before \
                 {launchable_before} until they do, at most {:?} (previous leader: {previous})",
                silent.len(),
                silent.join(", "),
                takeover.suspects.len(),
                hold
            );
        }
        *dispatcher.takeover.lock().expect("takeover lock") = takeover;
    }
    dispatcher.arm(term);
    info!("leading in term {term}: {} node(s) synced", held.len());
    held
}

/// Until when (give or take the clocks' difference) a run may have been launched unreported by one of the `silent`
/// nodes, at `now`. A node launches only at or after a run's instant: with a permit that a leader gives only while
/// it leads, so before this election; or, on the previous leader, once the run's start is committed, so it is
/// not pending here. When the previous leader is the only silent node, its unreported runs are those it launched
/// with a permit before it led.
fn launchable_unreported_before(silent: &[String], previous: Option<&PreviousLeader>, now: Timestamp) -> Timestamp {
    match previous {
        Some(previous) if silent.iter().all(|name| *name == previous.name) => previous.since.min(now),
        _ => now,
    }
}

/// The pending runs that may have been launched before `before` (due before it): only these wait for silent nodes.
fn launchable(active: &[Execution], before: Timestamp) -> Vec<ExecRef> {
    active
        .iter()
        .filter(|e| e.status == ExecutionStatus::Pending)
        .filter(|e| e.not_before.unwrap_or(e.scheduled_at) < before)
        .map(|e| ExecRef { job: e.job_name.clone(), id: e.id.clone() })
        .collect()
}

/// How far this node's clock may be behind the previous leader's: its measured offset from the leader and the
/// measurement's error (servers measure against the leader, see `crate::clock`), plus a quarter second; two
/// seconds when it has not been measured.
fn suspect_margin(node: &Host) -> Duration {
    margin_for(node.worker.clock.offset())
}

/// The clock margin for a measurement, if any: a measurement whose error is larger than the margin assumed without
/// one (against a server that had not measured its own clock yet, which answers with an error of 24 days) counts
/// as none.
fn margin_for(offset: Option<crate::clock::Offset>) -> Duration {
    const UNMEASURED: Duration = Duration::from_secs(2);
    match offset {
        Some(o) if u128::from(o.error_ms.unsigned_abs()) < UNMEASURED.as_millis() => {
            Duration::from_millis(o.offset_ms.unsigned_abs() + o.error_ms.unsigned_abs() + 250)
        }
        _ => UNMEASURED,
    }
}

/// Ask the nodes that were silent at the takeover again; release the previous leader's pending runs once all
/// answered, died, or their time is up.
pub async fn resolve_silent(node: &Host, term: u64) {
    let unknown = node.dispatcher.takeover.lock().expect("takeover lock").silent();
    if unknown.is_empty() {
        return;
    }
    let alive = node.membership.alive();
    let asked: Vec<Member> = alive.iter().filter(|m| unknown.contains(&m.name)).cloned().collect();
    let (held, _) = sync_nodes(node, &asked, term).await;
    let answered: HashSet<String> = held.into_keys().collect();
    let alive: HashSet<String> = alive.into_iter().map(|m| m.name).collect();
    let mut takeover = node.dispatcher.takeover.lock().expect("takeover lock");
    if takeover.settle(&answered, &alive, Instant::now()) {
        info!("every node answered (or is presumed dead): dispatching the previous leader's pending runs");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn exec_ref(n: u32) -> ExecRef {
        ExecRef { job: "j".into(), id: n.to_string() }
    }

    fn names(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn nothing_is_held_when_every_node_answered() {
        let takeover = Takeover::begin(&[], vec![exec_ref(1)], Instant::now());
        assert!(!takeover.holds(&exec_ref(1)));
    }

    #[test]
    fn silent_nodes_are_not_waited_for_when_nothing_is_held() {
        let takeover = Takeover::begin(&["a".to_string()], vec![], Instant::now() + Duration::from_secs(10));
        assert!(takeover.silent().is_empty(), "no sweep asks them again for nothing");
    }

    #[test]
    fn the_previous_leaders_runs_wait_until_every_silent_node_answered() {
        let start = Instant::now();
        let silent = ["a".to_string(), "b".to_string()];
        let mut takeover = Takeover::begin(&silent, vec![exec_ref(1)], start + Duration::from_secs(10));
        assert!(takeover.holds(&exec_ref(1)));
        let alive = names(&["a", "b", "c"]);
        assert!(!takeover.settle(&names(&["a"]), &alive, start + Duration::from_secs(1)), "b is still silent");
        assert!(takeover.holds(&exec_ref(1)));
        assert_eq!(takeover.silent(), ["b"]);
        assert!(takeover.settle(&names(&["b"]), &alive, start + Duration::from_secs(2)));
        assert!(!takeover.holds(&exec_ref(1)));
        assert!(!takeover.settle(&names(&[]), &alive, start + Duration::from_secs(3)), "released only once");
    }

    #[test]
    fn a_silent_node_that_dies_or_stays_silent_past_the_deadline_releases_the_runs() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let mut dies = Takeover::begin(&["a".to_string()], vec![exec_ref(1)], deadline);
        assert!(dies.settle(&names(&[]), &names(&["b"]), start), "a is no longer alive");

        let mut silent = Takeover::begin(&["a".to_string()], vec![exec_ref(1)], deadline);
        assert!(!silent.settle(&names(&[]), &names(&["a"]), deadline - Duration::from_millis(1)));
        assert!(silent.settle(&names(&[]), &names(&["a"]), deadline), "its time is up at the deadline");
    }

    #[test]
    fn the_clock_margin_is_the_measured_offset_and_error_or_two_seconds() {
        use crate::clock::Offset;
        assert_eq!(margin_for(Some(Offset { offset_ms: -40, error_ms: 3 })), Duration::from_millis(293));
        assert_eq!(margin_for(None), Duration::from_secs(2));
        let unmeasured = Offset { offset_ms: 0, error_ms: i64::from(i32::MAX) };
        assert_eq!(margin_for(Some(unmeasured)), Duration::from_secs(2), "not 24 days");
    }

    #[test]
    fn a_silent_previous_leader_holds_back_only_runs_due_before_it_led() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let now = at("2026-01-01T00:01:00Z");
        let previous = PreviousLeader { name: "s1".into(), since: at("2026-01-01T00:00:00Z") };
        let silent = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(launchable_unreported_before(&silent(&["s1"]), Some(&previous), now), previous.since);
        assert_eq!(
            launchable_unreported_before(&silent(&["s1", "a1"]), Some(&previous), now),
            now,
            "another silent node may have been granted permits until this election"
        );
        assert_eq!(launchable_unreported_before(&silent(&["a1"]), Some(&previous), now), now);
        assert_eq!(launchable_unreported_before(&silent(&["s1"]), None, now), now, "previous leader unknown");
        let recent = PreviousLeader { name: "s1".into(), since: at("2026-01-01T00:02:00Z") };
        assert_eq!(launchable_unreported_before(&silent(&["s1"]), Some(&recent), now), now, "never after now");
    }

    #[test]
    fn only_runs_due_before_the_takeover_wait_for_silent_nodes() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let exec = |id: &str, scheduled: &str, not_before: Option<&str>, status: ExecutionStatus| {
            let mut e = Execution::decided("j", at(scheduled), kairos_model::Trigger::Schedule);
            e.id = id.into();
            e.not_before = not_before.map(at);
            e.status = status;
            e
        };
        let active = [
            exec("due", "2026-01-01T00:00:09Z", None, ExecutionStatus::Pending),
            exec("later", "2026-01-01T00:00:11Z", None, ExecutionStatus::Pending),
            exec("retry-later", "2026-01-01T00:00:01Z", Some("2026-01-01T00:00:12Z"), ExecutionStatus::Pending),
            exec("retry-due", "2026-01-01T00:00:01Z", Some("2026-01-01T00:00:05Z"), ExecutionStatus::Pending),
            exec("running", "2026-01-01T00:00:01Z", None, ExecutionStatus::Running),
        ];
        let ids: Vec<String> = launchable(&active, at("2026-01-01T00:00:10Z")).into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["due", "retry-due"]);
    }
}
