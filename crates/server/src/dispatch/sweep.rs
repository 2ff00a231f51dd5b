//! The sweep: every [`SWEEP_INTERVAL`] (or when woken) the leader looks at every active execution and dispatches
//! pending runs whose time has come (retries after their backoff, what the previous leader decided, what could
//! not be placed before), expires leases (a running execution whose lease ran out turns `lost`), fails runs
//! no live node could take within [`PLACE_GRACE`], and releases claims of orders that expired unstarted.
//!
//! [`decide`] and [`release_stale`] are pure (the clock is an argument); [`duty`] is the loop around them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kairos_model::{Execution, ExecutionStatus, Timestamp};
use kairos_store::{Command, ExecRef, Finish};
use tracing::warn;

use super::claims::Claims;
use super::{Host, retry_instant};
use super::{ORDER_STALE_AFTER, Synced, dispatch, takeover};
use crate::error::WriteError;
use crate::gossip::Member;
use crate::worker::START_DEADLINE;
use kairos_schedule::time_until;

/// How often the leader re-checks pending executions and leases even without events.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// A run placed on another node that has neither started nor been granted its launch permit this long after
/// its instant (and its claim) is asked about, and placed elsewhere if its node does not hold it or is silent.
pub const UNGRANTED_STALE_AFTER: Duration = Duration::from_millis(500);
/// A node silent to the sweep's question that asked for a launch permit this long before it, or since, is busy,
/// not cut off (see [`Asked::Busy`]).
pub const BUSY_HEARD_WITHIN: Duration = Duration::from_secs(1);
/// A run that no node has started this long after its instant is recorded skipped instead of being placed again.
/// A cluster past its capacity (its nodes' orders expiring in their queues, placed again, expiring again) would
/// otherwise carry a backlog it can never work off once the load is back to what it can run: every run stays late
/// for good (issue 19). Runs its nodes hold (queued, waiting for a permit) are not skipped while they hold them.
pub const START_WINDOW: Duration = Duration::from_secs(60);
/// Runs one sweep fails for want of a node are logged one by one up to this many, then counted in one line (a
/// cluster past its capacity failed 9,000 a second).
const UNPLACEABLE_LOGGED: usize = 20;
/// At most this many late runs are skipped per sweep: one write of a bounded size, and a sweep that stays short
/// (a backlog of 30,000 in one write did not commit in time, and the same runs were tried again and again).
const LATE_PER_SWEEP: usize = 2_000;
// A run no node can take fails first, with its own reason.
const _: () = assert!(START_WINDOW.as_secs() > PLACE_GRACE.as_secs());
/// How long a due run may wait for a live node that matches its job's tags before it fails (nodes that are
/// starting or rejoining get this long to appear).
pub const PLACE_GRACE: Duration = Duration::from_secs(10);

/// What one sweep decided from the active executions at `now`.
#[derive(Default)]
pub struct Decisions<'a> {
    /// Pending runs whose time has come.
    pub due: Vec<&'a Execution>,
    /// Running executions to record as lost, with why, and whether their node disowned them (a node that answered
    /// the takeover's sync without them) rather than their lease expiring.
    pub lost: Vec<(&'a Execution, String, bool)>,
    /// The earliest future instant a pending run waits for (a retry's backoff), to wake for it.
    pub next_retry: Option<Timestamp>,
}

/// Sort the active executions: due, lost, or waiting. `synced` is what each node answered at the takeover (first
/// sweep of a term only).
pub fn decide<'a>(active: &'a [Execution], synced: Option<&Synced>, now: Timestamp) -> Decisions<'a> {
    let mut decisions = Decisions::default();
    for exec in active {
        match exec.status {
            ExecutionStatus::Pending => match exec.not_before {
                Some(at) if at > now => {
                    decisions.next_retry = Some(decisions.next_retry.map_or(at, |t| t.min(at)));
                }
                _ => decisions.due.push(exec),
            },
            ExecutionStatus::Running => {
                let exec_ref = ExecRef { job: exec.job_name.clone(), id: exec.id.clone() };
                let disowned =
                    synced.and_then(|held| held.get(&exec.node_name)).is_some_and(|r| !r.contains(&exec_ref));
                if disowned {
                    let reason = format!("lost: node '{}' no longer runs it (it restarted or died)", exec.node_name);
                    decisions.lost.push((exec, reason, true));
                } else if exec.lease_until.is_some_and(|l| l < now) {
                    let reason = format!(
                        "lost: its lease expired without a renewal and node '{}' did not say it still runs it",
                        exec.node_name
                    );
                    decisions.lost.push((exec, reason, false));
                }
            }
            _ => {}
        }
    }
    decisions
}

/// Whether a run not started yet is past its start window: [`START_WINDOW`] since it became due.
pub fn past_start_window(exec: &Execution, now: Timestamp) -> bool {
    let since = exec.not_before.unwrap_or(exec.scheduled_at);
    since <= now && now.duration_since(since).unsigned_abs() >= START_WINDOW
}

/// Whether a run that no node could take has waited past [`PLACE_GRACE`] since it became due.
pub fn placement_expired(exec: &Execution, now: Timestamp) -> bool {
    let since = exec.not_before.unwrap_or(exec.scheduled_at);
    since <= now && now.duration_since(since).unsigned_abs() >= PLACE_GRACE
}

/// Release the claims of executions that are no longer active (finished), except those claimed after `taken`,
/// when `active` was read.
pub fn release_finished(claims: &mut Claims, active: &[Execution], taken: Instant) {
    let refs: HashSet<ExecRef> = active.iter().map(|e| ExecRef { job: e.job_name.clone(), id: e.id.clone() }).collect();
    claims.retain(|exec, at, _| refs.contains(exec) || *at > taken);
}

/// A claim worth asking its node about: a pending run sent to another node that has not started it in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleClaim {
    pub exec: ExecRef,
    pub node: String,
    /// How long ago it was claimed.
    pub age: Duration,
    /// Whether its node was granted the launch permit (then it may have started it).
    pub granted: bool,
    /// How long ago the run's instant was (zero if it is not due yet).
    pub due_since: Duration,
}

/// Claims of runs still pending on other nodes that should have started by now: those never granted a launch
/// permit once [`UNGRANTED_STALE_AFTER`] has passed since both the claim and the run's instant (a node asks for
/// the permit at the instant), and granted ones `stale_after` after the claim (the start's report is late). A
/// node may still hold one, waiting for a free place or for its permit, so the node is asked before the run is
/// placed again.
pub fn stale_claims(
    claims: &Claims,
    active: &[Execution],
    now: (Instant, Timestamp),
    leader: &str,
    stale_after: Duration,
) -> Vec<StaleClaim> {
    let (now, wall) = now;
    let pending: HashMap<ExecRef, Timestamp> = active
        .iter()
        .filter(|e| e.status == ExecutionStatus::Pending)
        .map(|e| (exec_ref(e), e.not_before.unwrap_or(e.scheduled_at)))
        .collect();
    claims
        .iter()
        .filter(|(_, _, node)| *node != leader)
        .filter_map(|(exec, at, node)| {
            let instant = pending.get(exec)?;
            let age = now.saturating_duration_since(*at);
            let granted = claims.granted(exec);
            let due_since = wall.duration_since(*instant);
            let stale = if granted {
                age >= stale_after
            } else {
                age >= UNGRANTED_STALE_AFTER
                    && due_since >= jiff::SignedDuration::try_from(UNGRANTED_STALE_AFTER).ok()?
            };
            let due_since = due_since.unsigned_abs();
            stale.then(|| StaleClaim { exec: exec.clone(), node: node.to_string(), age, granted, due_since })
        })
        .collect()
}

/// What a node answered when asked about its stale claims.
pub enum Asked {
    /// What it runs, holds or has not reported yet.
    Holds(HashSet<ExecRef>),
    /// Its process is gone (connection refused).
    Gone,
    /// No answer (cut off, paused, overloaded).
    Silent,
    /// No answer, but it asked for launch permits moments ago: it is alive and reaches the leader, only slow
    /// (swamped by runs), so its runs are not moved while their orders can still start there.
    Busy,
}

/// Decide stale claims from their nodes' answers: a claim its node does not hold (or whose node is gone) is
/// released, so the run is placed again (the node refuses the expired order if it still comes, and the leader
/// refuses its permit); a claim its node holds stays (it waits for a place, or its report is on its way). A claim
/// whose node is silent is released too if the node was never granted its permit (it cannot have started it);
/// a busy node's (see [`Asked::Busy`]) only once its order expired unstarted. Moving a busy node's runs at once
/// only piled them on the other nodes, which then fell silent in turn. Granted, a claim stays until it is
/// `give_up` old, then the run is recorded lost (the node may have started it; the job's retries apply). Answers
/// (released, lost).
pub fn settle_stale(
    stale: Vec<StaleClaim>,
    answers: &HashMap<String, Asked>,
    give_up: Duration,
) -> (Vec<ExecRef>, Vec<(ExecRef, String)>) {
    let mut released = Vec::new();
    let mut lost = Vec::new();
    for StaleClaim { exec, node, age, granted, due_since } in stale {
        match answers.get(&node).unwrap_or(&Asked::Silent) {
            Asked::Holds(held) if held.contains(&exec) => {}
            Asked::Holds(_) | Asked::Gone => released.push(exec),
            Asked::Silent if !granted => released.push(exec),
            Asked::Busy if !granted && due_since > START_DEADLINE => released.push(exec),
            Asked::Busy if !granted => {}
            Asked::Silent | Asked::Busy if age >= give_up => lost.push((exec, node)),
            Asked::Silent | Asked::Busy => {}
        }
    }
    (released, lost)
}

/// The sweep as a leader duty of `term`: runs until the duty is dropped (leadership revoked).
pub async fn duty(node: &Host, term: u64, synced: Synced) {
    let mut first = Some(synced);
    loop {
        let mut wait = SWEEP_INTERVAL;
        let began = Instant::now();
        let mut asking = Duration::ZERO;
        match sweep(node, first.take(), term, &mut asking).await {
            Ok(Some(retry_at)) => wait = wait.min(time_until(retry_at)),
            Ok(None) => {}
            Err(err) => {
                warn!("dispatcher: {}", err.message);
                node.duties.failed(format!("dispatcher: {}", err.message));
            }
        }
        node.duties.swept();
        // Waiting for nodes' answers takes no core: it does not count (a sweep that waited a second for a node
        // cut off made every next sweep wait a second more, and the runs with it).
        let (ended, spent) = (Instant::now(), began.elapsed().saturating_sub(asking));
        tokio::select! {
            _ = node.dispatcher.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        // A sweep reads every active execution, and a cluster past its capacity has tens of thousands pending:
        // woken again and again (each permit granted makes room), sweeps would take the leader's cores. The next
        // one waits at least as long as this one worked, so sweeping takes at most half of a core.
        tokio::time::sleep_until((ended + spent).into()).await;
    }
}

/// One pass over the active executions; answers the earliest future retry instant, to wake for it. `asking`:
/// how long it waited for nodes' answers.
async fn sweep(
    node: &Host,
    synced: Option<Synced>,
    term: u64,
    asking: &mut Duration,
) -> Result<Option<Timestamp>, WriteError> {
    let now = Timestamp::now();
    let taken = Instant::now();
    let active = node.state.active()?;
    release_finished(&mut node.dispatcher.claims.lock().expect("claims lock"), &active, taken);
    // Nodes silent since the takeover and nodes with stale claims are asked at the same time: a silent one takes
    // the whole RPC timeout, and the sweep should wait for that once, not twice.
    let asked_at = Instant::now();
    let ((), lost_orders) =
        tokio::join!(takeover::resolve_silent(node, term), settle_stale_claims(node, term, &active));
    *asking = asked_at.elapsed();
    let mut decisions = decide(&active, synced.as_ref(), now);
    let late = take_late(node, &mut decisions.due, now);
    // Newest first: when the nodes are past their capacity, the runs that can still start on time get the room,
    // and what is already late waits for what is left (and is skipped past its start window), so a cluster
    // back under its capacity is on time at once instead of working through its backlog first.
    decisions.due.sort_by_key(|exec| std::cmp::Reverse(exec.not_before.unwrap_or(exec.scheduled_at)));
    let left = dispatch(node, std::mem::take(&mut decisions.due).into_iter().map(|e| (e, None)).collect());
    crate::metrics::metrics().runs_waiting_for_room.set(left.waiting as i64);
    let mut results: Vec<Finish> = left
        .unplaced
        .into_iter()
        .filter(|exec| placement_expired(exec, now))
        .enumerate()
        .map(|(i, exec)| unplaceable(node, exec, now, i < UNPLACEABLE_LOGGED))
        .collect();
    if results.len() > UNPLACEABLE_LOGGED {
        warn!("and {} more runs failed the same way in this sweep", results.len() - UNPLACEABLE_LOGGED);
    }
    results.extend(late);
    let (held, waited) = spared(node, term, now, &decisions.lost).await;
    let lost: Vec<_> = decisions
        .lost
        .into_iter()
        .filter(|(exec, _, _)| !held.contains(&exec_ref(exec)) && !waited.contains(&exec_ref(exec)))
        .collect();
    if !held.is_empty() {
        let lease_until = now + node.worker.lease;
        let renewals: Vec<ExecRef> = held.into_iter().collect();
        warn!(
            "{} execution(s) outlived their lease without a renewal but their nodes still run them (busy?): leases \
             renewed on their behalf",
            renewals.len()
        );
        node.submit_as_leader(term, Command::Renew { renewals, lease_until }).await?;
    }
    let metrics = crate::metrics::metrics();
    metrics.placement_failures.inc_by(results.len() as u64);
    metrics.executions_lost.inc_by((lost.len() + lost_orders.len()) as u64);
    for (exec, reason, disowned) in lost {
        warn!(job = %exec.job_name, execution = %exec.id, "execution {}/{} {reason}", exec.job_name, exec.id);
        results.push(Finish {
            exec: ExecRef { job: exec.job_name.clone(), id: exec.id.clone() },
            status: ExecutionStatus::Lost,
            exit_code: None,
            error: Some(reason),
            output_tail: exec.output.clone(),
            output_bytes: exec.output_bytes,
            node: exec.node_name.clone(),
            started_at: exec.started_at,
            finished_at: now,
            retry_at: retry_instant(&node.state, &exec.job_name, exec.attempt, now),
            only_if_lease_expired: !disowned,
        });
    }
    for (exec_ref, target) in lost_orders {
        let Some(exec) = active.iter().find(|e| e.job_name == exec_ref.job && e.id == exec_ref.id) else { continue };
        let reason = format!(
            "lost: its order went to node '{target}', which has not answered since (cut off or paused?) and may have \
             started it"
        );
        warn!(job = %exec.job_name, execution = %exec.id, "execution {}/{} {reason}", exec.job_name, exec.id);
        results.push(Finish {
            exec: exec_ref,
            status: ExecutionStatus::Lost,
            exit_code: None,
            error: Some(reason),
            output_tail: String::new(),
            output_bytes: 0,
            node: target,
            started_at: None,
            finished_at: now,
            retry_at: retry_instant(&node.state, &exec.job_name, exec.attempt, now),
            only_if_lease_expired: false,
        });
    }
    for chunk in results.chunks(kairos_store::BATCH_ITEMS_MAX) {
        node.submit_as_leader(term, Command::Finish { results: chunk.to_vec() }).await?;
    }
    Ok(decisions.next_retry)
}

/// Take the due runs past their start window that no node holds out of `due` (at most [`LATE_PER_SWEEP`]): their
/// skipped finishes.
fn take_late(node: &Host, due: &mut Vec<&Execution>, now: Timestamp) -> Vec<Finish> {
    let late: Vec<&Execution> = {
        // The order `dispatch` takes them in.
        let takeover = node.dispatcher.takeover.lock().expect("takeover lock");
        let claims = node.dispatcher.claims.lock().expect("claims lock");
        let mut taken = 0;
        let (late, keep) = std::mem::take(due).into_iter().partition(|exec| {
            if taken == LATE_PER_SWEEP {
                return false;
            }
            let exec_ref = exec_ref(exec);
            let held = claims.contains(&exec_ref) || claims.expanding.contains(&exec_ref) || takeover.holds(&exec_ref);
            let late = past_start_window(exec, now) && !held;
            taken += usize::from(late);
            late
        });
        *due = keep;
        late
    };
    if late.is_empty() {
        return Vec::new();
    }
    warn!(
        "{} run(s) could not start within {START_WINDOW:?} of their instants (the nodes that can run them are busy or \
         unreachable): recorded skipped, e.g. {}/{}",
        late.len(),
        late[0].job_name,
        late[0].id
    );
    crate::metrics::metrics().runs_skipped_overloaded.inc_by(late.len() as u64);
    late.into_iter()
        .map(|exec| Finish {
            exec: exec_ref(exec),
            status: ExecutionStatus::Skipped,
            exit_code: None,
            error: Some(format!(
                "skipped: no node started it within {START_WINDOW:?} of its instant (the nodes that can run it were \
                 overloaded or unreachable)"
            )),
            output_tail: String::new(),
            output_bytes: 0,
            node: String::new(),
            started_at: None,
            finished_at: now,
            retry_at: None,
            only_if_lease_expired: false,
        })
        .collect()
}

fn exec_ref(exec: &Execution) -> ExecRef {
    ExecRef { job: exec.job_name.clone(), id: exec.id.clone() }
}

/// Of the executions whose lease expired (not those disowned), those not to record lost yet: their node says it
/// still runs them, or has finished and not reported yet (a node too busy to renew in time), and those whose node
/// does not answer but whose lease ran out less than a lease ago (a node paused or swamped may answer again). A
/// node that is gone (its connection refused), or silent for a second lease, holds nothing. Answers (held, silent
/// but waited for).
async fn spared(
    node: &Host,
    term: u64,
    now: Timestamp,
    lost: &[(&Execution, String, bool)],
) -> (HashSet<ExecRef>, HashSet<ExecRef>) {
    let expired: Vec<&Execution> = lost.iter().filter(|(_, _, disowned)| !disowned).map(|(e, _, _)| *e).collect();
    if expired.is_empty() {
        return Default::default();
    }
    let answers = ask(node, term, expired.iter().map(|e| e.node_name.as_str()).collect()).await;
    let (mut held, mut waited) = (HashSet::new(), HashSet::new());
    for exec in expired {
        match answers.get(&exec.node_name) {
            Some(Asked::Holds(holds)) if holds.contains(&exec_ref(exec)) => {
                held.insert(exec_ref(exec));
            }
            Some(Asked::Silent) if within_second_lease(exec, now, node.worker.lease) => {
                waited.insert(exec_ref(exec));
            }
            _ => {}
        }
    }
    (held, waited)
}

/// Whether an expired lease ran out less than one more `lease` before `now`.
fn within_second_lease(exec: &Execution, now: Timestamp, lease: Duration) -> bool {
    exec.lease_until.is_some_and(|until| until.checked_add(lease).is_ok_and(|grace| grace > now))
}

/// Ask the named nodes (those gossip knows) what they run, hold or have not reported yet, all at once.
async fn ask(node: &Host, term: u64, names: HashSet<&str>) -> HashMap<String, Asked> {
    let members: Vec<Member> =
        node.membership.all().await.into_iter().filter(|m| names.contains(m.name.as_str())).collect();
    let asked = futures::future::join_all(members.iter().map(|m| takeover::sync_member(node, m, term))).await;
    let answer = |answer| match answer {
        takeover::Answer::Holds(holding) => Asked::Holds(holding.all().collect()),
        takeover::Answer::Gone => Asked::Gone,
        takeover::Answer::Silent => Asked::Silent,
    };
    members.into_iter().zip(asked).map(|(member, asked)| (member.name, answer(asked))).collect()
}

/// Ask the nodes of stale claims (see [`stale_claims`]) what they hold; release the claims they do not hold,
/// answer those to record as lost.
async fn settle_stale_claims(node: &Host, term: u64, active: &[Execution]) -> Vec<(ExecRef, String)> {
    let stale = {
        let claims = node.dispatcher.claims.lock().expect("claims lock");
        stale_claims(&claims, active, (Instant::now(), Timestamp::now()), &node.config.node_name, ORDER_STALE_AFTER)
    };
    if stale.is_empty() {
        return Vec::new();
    }
    let asked_since = Instant::now();
    let mut answers = ask(node, term, stale.iter().map(|claim| claim.node.as_str()).collect()).await;
    // A node that did not answer gets no runs for a while: the ones it was not granted are placed elsewhere now.
    // Unless it asked for a permit while it was being asked: then it is only slow.
    let asked_at = Instant::now();
    for (name, answer) in answers.iter_mut() {
        if matches!(answer, Asked::Silent) {
            if node.dispatcher.heard_since(name, asked_since.checked_sub(BUSY_HEARD_WITHIN).unwrap_or(asked_since)) {
                *answer = Asked::Busy;
            } else {
                node.dispatcher.mark_unreachable(name, asked_at);
            }
        }
    }
    let granted_before: HashSet<ExecRef> = stale.iter().filter(|c| c.granted).map(|c| c.exec.clone()).collect();
    let (released, lost) = settle_stale(stale, &answers, ORDER_STALE_AFTER + node.worker.lease);
    if !released.is_empty() {
        let mut claims = node.dispatcher.claims.lock().expect("claims lock");
        for exec in &released {
            // Granted while its node was being asked: it may start now, so it stays where it is.
            if claims.granted(exec) && !granted_before.contains(exec) {
                continue;
            }
            claims.release(exec);
        }
    }
    {
        let mut claims = node.dispatcher.claims.lock().expect("claims lock");
        for (exec, _) in &lost {
            claims.release(exec);
        }
    }
    lost
}

/// The failure of a run no live node could take within [`PLACE_GRACE`], logged when `log`.
fn unplaceable(node: &Host, exec: &Execution, now: Timestamp, log: bool) -> Finish {
    let job = node.state.definition(&exec.job_name).ok().flatten();
    let tags = job.as_ref().map(|j| j.tags.clone()).unwrap_or_default();
    let executor = job.as_ref().map(|j| j.executor.clone()).unwrap_or_default();
    let matching: Vec<crate::gossip::Member> =
        node.membership.alive().into_iter().filter(|m| crate::gossip::tags_match(&tags, &m.tags)).collect();
    let max = node.config.clock_offset_max;
    let skewed: Vec<String> = matching
        .iter()
        .filter(|m| m.runs(&executor))
        .filter_map(|m| m.clock.filter(|c| c.beyond(max)).map(|c| format!("{} {} ms", m.name, c.offset_ms)))
        .collect();
    let target_skew = exec.target.as_ref().and_then(|target| {
        let member = matching.iter().find(|m| &m.name == target)?;
        member.clock.filter(|c| c.beyond(max)).map(|c| (target.clone(), c.offset_ms))
    });
    let error = match &exec.target {
        Some(_) if target_skew.is_some() => {
            let (target, offset) = target_skew.unwrap_or_default();
            format!(
                "its node '{target}' has a clock {offset} ms off the leader's, further than --clock-offset-max \
                 {max:?} (waited {PLACE_GRACE:?})"
            )
        }
        None if !skewed.is_empty() && skewed.len() == matching.iter().filter(|m| m.runs(&executor)).count() => format!(
            "the live nodes that match the job's tags {tags:?} have clocks further off the leader's than \
             --clock-offset-max {max:?} ({}; waited {PLACE_GRACE:?})",
            skewed.join(", ")
        ),
        None if !matching.is_empty() && !matching.iter().any(|m| m.runs(&executor)) => format!(
            "no live node that matches the job's tags {tags:?} runs the '{executor}' executor (see --executors; \
             waited {PLACE_GRACE:?})"
        ),
        Some(target) => format!(
            "its node '{target}' is not alive or no longer matches the job's tags {tags:?} (waited {PLACE_GRACE:?})"
        ),
        None => format!("no live node matches the job's tags {tags:?} (waited {PLACE_GRACE:?})"),
    };
    if log {
        warn!(job = %exec.job_name, execution = %exec.id, "execution {}/{} failed: {error}", exec.job_name, exec.id);
    }
    Finish {
        exec: ExecRef { job: exec.job_name.clone(), id: exec.id.clone() },
        status: ExecutionStatus::Failed,
        exit_code: None,
        error: Some(error),
        output_tail: String::new(),
        output_bytes: 0,
        node: String::new(),
        started_at: None,
        finished_at: now,
        retry_at: retry_instant(&node.state, &exec.job_name, exec.attempt, now),
        only_if_lease_expired: false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use kairos_model::Trigger;

    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn pending(id: &str, scheduled: &str) -> Execution {
        let mut exec = Execution::decided("j", ts(scheduled), Trigger::Schedule);
        exec.id = id.into();
        exec
    }

    fn running(id: &str, node: &str, lease_until: &str) -> Execution {
        let mut exec = pending(id, "2026-01-01T00:00:00Z");
        exec.status = ExecutionStatus::Running;
        exec.node_name = node.into();
        exec.lease_until = Some(ts(lease_until));
        exec
    }

    fn ids(execs: &[&Execution]) -> Vec<String> {
        execs.iter().map(|e| e.id.clone()).collect()
    }

    #[test]
    fn a_lease_expires_only_after_its_deadline() {
        let active = [running("1", "a", "2026-01-01T00:00:10Z")];
        assert!(decide(&active, None, ts("2026-01-01T00:00:10Z")).lost.is_empty(), "at the deadline it still holds");
        let lost = decide(&active, None, ts("2026-01-01T00:00:10.001Z")).lost;
        assert_eq!(lost.len(), 1);
        assert!(lost[0].1.starts_with("lost: its lease expired without a renewal"), "{}", lost[0].1);
        assert!(!lost[0].2, "not disowned: recorded only if the lease is still expired when applied");
    }

    #[test]
    fn a_run_its_node_no_longer_holds_is_lost_at_the_first_sweep_only() {
        let active = [running("1", "a", "2026-01-01T01:00:00Z"), running("2", "b", "2026-01-01T01:00:00Z")];
        let synced: Synced = HashMap::from([("a".to_string(), HashSet::new())]); // b was silent
        let now = ts("2026-01-01T00:00:05Z");
        let lost = decide(&active, Some(&synced), now).lost;
        assert_eq!(lost.iter().map(|(e, _, disowned)| (e.id.as_str(), *disowned)).collect::<Vec<_>>(), [("1", true)]);
        assert!(decide(&active, None, now).lost.is_empty(), "later sweeps rely on leases");
    }

    #[test]
    fn pending_runs_are_due_at_their_backoff_and_the_earliest_wakes_the_sweep() {
        let mut retry_soon = pending("r1", "2026-01-01T00:00:00Z");
        retry_soon.not_before = Some(ts("2026-01-01T00:00:20Z"));
        let mut retry_later = pending("r2", "2026-01-01T00:00:00Z");
        retry_later.not_before = Some(ts("2026-01-01T00:00:30Z"));
        let active = [pending("p", "2026-01-01T00:00:00Z"), retry_soon, retry_later];
        let now = ts("2026-01-01T00:00:10Z");
        let decisions = decide(&active, None, now);
        assert_eq!(ids(&decisions.due), ["p"]);
        assert_eq!(decisions.next_retry, Some(ts("2026-01-01T00:00:20Z")));
        assert_eq!(ids(&decide(&active, None, ts("2026-01-01T00:00:20Z")).due), ["p", "r1"]);
    }

    #[test]
    fn a_run_no_node_can_take_fails_after_the_grace_and_not_before() {
        let exec = pending("p", "2026-01-01T00:00:00Z");
        let at = |secs: u64| ts("2026-01-01T00:00:00Z") + Duration::from_secs(secs);
        assert!(!placement_expired(&exec, at(0)));
        assert!(!placement_expired(&exec, at(PLACE_GRACE.as_secs() - 1)));
        assert!(placement_expired(&exec, at(PLACE_GRACE.as_secs())));
        let mut retry = exec.clone();
        retry.not_before = Some(at(60));
        assert!(!placement_expired(&retry, at(61)), "the grace counts from the retry's instant");
        assert!(!placement_expired(&retry, at(30)), "not due yet");
    }

    #[test]
    fn a_run_not_started_within_its_window_is_late_counted_from_its_retry_instant() {
        let exec = pending("p", "2026-01-01T00:00:00Z");
        let at = |secs: u64| ts("2026-01-01T00:00:00Z") + Duration::from_secs(secs);
        assert!(!past_start_window(&exec, at(START_WINDOW.as_secs() - 1)));
        assert!(past_start_window(&exec, at(START_WINDOW.as_secs())));
        let mut retry = exec.clone();
        retry.not_before = Some(at(100));
        assert!(!past_start_window(&retry, at(100 + START_WINDOW.as_secs() - 1)), "counted from the retry's instant");
        assert!(past_start_window(&retry, at(100 + START_WINDOW.as_secs())));
    }

    #[test]
    fn claims_of_finished_runs_go_and_late_runs_are_stale_only_on_other_nodes() {
        let start = Instant::now();
        let wall = ts("2026-01-01T00:00:00Z");
        let stale_after = Duration::from_secs(20);
        let mut running_one = running("run", "b", "2026-01-01T01:00:00Z");
        running_one.job_name = "j".into();
        let mut later = pending("later", "2026-01-01T00:00:00Z");
        later.not_before = Some(wall + Duration::from_secs(30));
        let active = vec![
            pending("sent", "2026-01-01T00:00:00Z"),
            pending("granted", "2026-01-01T00:00:00Z"),
            pending("local", "2026-01-01T00:00:00Z"),
            later,
            running_one,
        ];
        let r = |id: &str| ExecRef { job: "j".into(), id: id.into() };
        let mut claims = Claims::default();
        claims.claim(r("sent"), "b", start);
        claims.claim(r("granted"), "b", start);
        assert_eq!(claims.grant("b", &[r("granted")]), [true]);
        claims.claim(r("local"), "leader", start);
        claims.claim(r("later"), "b", start);
        claims.claim(r("run"), "b", start);
        claims.claim(r("finished"), "b", start);
        let taken = start + Duration::from_millis(10);
        claims.claim(r("new"), "b", taken + Duration::from_millis(1));

        release_finished(&mut claims, &active, taken);
        let held =
            |c: &Claims| ["sent", "granted", "local", "later", "run", "finished", "new"].map(|id| c.contains(&r(id)));
        assert_eq!(held(&claims), [true, true, true, true, true, false, true], "a finished run's claim goes at once");
        assert_eq!(claims.load("b"), 5);

        let ids = |stale: Vec<StaleClaim>| {
            let mut ids: Vec<(String, bool)> = stale.into_iter().map(|c| (c.exec.id, c.granted)).collect();
            ids.sort();
            ids
        };
        let at = |secs: u64| (start + Duration::from_secs(secs), wall + Duration::from_secs(secs));
        assert!(stale_claims(&claims, &active, (start, wall), "leader", stale_after).is_empty(), "just sent");
        assert_eq!(
            ids(stale_claims(&claims, &active, at(1), "leader", stale_after)),
            [("sent".to_string(), false)],
            "a second past its instant without a permit: ask its node (not the leader's own, not a running one, not \
             one due later, not one granted)"
        );
        assert_eq!(
            ids(stale_claims(&claims, &active, at(20), "leader", stale_after)),
            [("granted".to_string(), true), ("sent".to_string(), false)],
            "a granted one whose start is not reported after `stale_after`"
        );
        assert_eq!(
            ids(stale_claims(&claims, &active, at(31), "leader", stale_after)),
            [("granted".to_string(), true), ("later".to_string(), false), ("sent".to_string(), false)]
        );
    }

    #[test]
    fn a_stale_claim_is_released_when_its_node_lacks_it_or_is_silent_and_never_had_the_permit() {
        let r = |id: &str| ExecRef { job: "j".into(), id: id.into() };
        let give_up = Duration::from_secs(9);
        let stale = |id: &str, node: &str, age: u64, granted: bool| StaleClaim {
            exec: r(id),
            node: node.to_string(),
            age: Duration::from_secs(age),
            granted,
            due_since: Duration::from_secs(age.saturating_sub(1)),
        };
        let answers = HashMap::from([
            ("answers".to_string(), Asked::Holds(HashSet::from([r("started"), r("waits")]))),
            ("gone".to_string(), Asked::Gone),
            ("silent".to_string(), Asked::Silent),
            ("busy".to_string(), Asked::Busy),
        ]);
        let (released, lost) = settle_stale(
            vec![
                stale("never-got-it", "answers", 6, false),
                stale("started", "answers", 6, true),
                stale("waits", "answers", 6, false),
                stale("on-gone", "gone", 6, true),
                stale("on-silent", "silent", 6, true),
                stale("on-silent-long", "silent", 9, true),
                stale("on-silent-no-permit", "silent", 1, false),
                stale("on-unknown", "unknown", 6, true),
                stale("on-busy-no-permit", "busy", 1, false),
                stale("on-busy-expired", "busy", 5, false),
                stale("on-busy", "busy", 6, true),
                stale("on-busy-long", "busy", 9, true),
            ],
            &answers,
            give_up,
        );
        let ids = |refs: Vec<ExecRef>| refs.into_iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(
            ids(released),
            ["never-got-it", "on-gone", "on-silent-no-permit", "on-busy-expired"],
            "the node does not hold them, or cannot have started them: place them again; a busy node's only once \
             its order can no longer start there"
        );
        assert_eq!(
            lost.into_iter().map(|(e, node)| (e.id, node)).collect::<Vec<_>>(),
            [("on-silent-long".to_string(), "silent".to_string()), ("on-busy-long".to_string(), "busy".to_string())],
            "a silent node granted the permit may have started it: after a lease it is recorded lost, never placed twice"
        );
    }
}
