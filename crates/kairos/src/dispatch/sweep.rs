//! The sweep: every [`SWEEP_INTERVAL`] (or when woken) the leader looks at every active execution and dispatches
//! pending runs whose time has come (retries after their backoff, what the previous leader decided, what could
//! not be placed before), expires leases (a running execution whose lease ran out turns `lost`), fails runs
//! no live node could take within [`PLACE_GRACE`], and releases claims of orders that expired unstarted.
//!
//! [`decide`] and [`release_stale`] are pure (the clock is an argument); [`duty`] is the loop around them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kairos_model::{Execution, ExecutionStatus, Timestamp};
use kairos_store::{Command, ExecRef, Finish};
use tracing::warn;

use super::claims::Claims;
use super::{DECIDE_AHEAD_MAX, Synced, dispatch, takeover};
use crate::api::ApiError;
use crate::node::{Node, retry_instant};
use crate::scheduler::time_until;

/// How often the leader re-checks pending executions and leases even without events.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
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
                    decisions.lost.push((exec, "lost: its lease expired without a renewal".into(), false));
                }
            }
            _ => {}
        }
    }
    decisions
}

/// Whether a run that no node could take has waited past [`PLACE_GRACE`] since it became due.
pub fn placement_expired(exec: &Execution, now: Timestamp) -> bool {
    let since = exec.not_before.unwrap_or(exec.scheduled_at);
    since <= now && now.duration_since(since).unsigned_abs() >= PLACE_GRACE
}

/// Release the claims that no longer hold: of executions that finished (absent from `active`, read at `taken`),
/// and of orders sent to another node more than `stale_after` ago that never started (the node died or lost them;
/// past their expiry it cannot start them any more, so they can be placed again without risk of a second run).
pub fn release_stale(
    claims: &mut Claims,
    active: &[Execution],
    taken: Instant,
    now: Instant,
    leader: &str,
    stale_after: Duration,
) {
    let by_ref: HashMap<ExecRef, &Execution> =
        active.iter().map(|e| (ExecRef { job: e.job_name.clone(), id: e.id.clone() }, e)).collect();
    claims.retain(|exec, at, target| match by_ref.get(exec) {
        // Claimed after the snapshot was read: keep.
        None => *at > taken,
        Some(e) if e.status == ExecutionStatus::Pending => {
            target == leader || now.saturating_duration_since(*at) < stale_after
        }
        Some(_) => true,
    });
}

/// The sweep as a leader duty of `term`: runs until the duty is dropped (leadership revoked).
pub async fn duty(node: &Node, term: u64, synced: Synced) {
    let mut first = Some(synced);
    loop {
        let mut wait = SWEEP_INTERVAL;
        match sweep(node, first.take(), term).await {
            Ok(Some(retry_at)) => wait = wait.min(time_until(retry_at)),
            Ok(None) => {}
            Err(err) => {
                warn!("dispatcher: {}", err.message);
                node.duties.failed(format!("dispatcher: {}", err.message));
            }
        }
        node.duties.swept();
        tokio::select! {
            _ = node.dispatcher.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pass over the active executions; answers the earliest future retry instant, to wake for it.
async fn sweep(node: &Node, synced: Option<Synced>, term: u64) -> Result<Option<Timestamp>, ApiError> {
    takeover::resolve_silent(node, term).await;
    let now = Timestamp::now();
    let taken = Instant::now();
    let active = node.state.active()?;
    // An order expires one lease after its instant (at most DECIDE_AHEAD_MAX after its dispatch): past that, a
    // node cannot start it any more, so a run still pending can safely be placed again.
    let stale_after = node.worker.lease + DECIDE_AHEAD_MAX + Duration::from_secs(1);
    {
        let mut claims = node.dispatcher.claims.lock().expect("claims lock");
        release_stale(&mut claims, &active, taken, Instant::now(), &node.config.node_name, stale_after);
    }
    let decisions = decide(&active, synced.as_ref(), now);
    let unplaced = dispatch(node, decisions.due.into_iter().map(|e| (e, None)).collect());
    let mut results: Vec<Finish> = unplaced
        .into_iter()
        .filter(|exec| placement_expired(exec, now))
        .map(|exec| unplaceable(node, exec, now))
        .collect();
    for (exec, reason, disowned) in decisions.lost {
        warn!("execution {}/{} {reason}", exec.job_name, exec.id);
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
            retry_at: retry_instant(node, &exec.job_name, exec.attempt, now),
            only_if_lease_expired: !disowned,
        });
    }
    if !results.is_empty() {
        node.submit_as_leader(term, Command::Finish { results }).await?;
    }
    Ok(decisions.next_retry)
}

/// The failure of a run no live node could take within [`PLACE_GRACE`].
fn unplaceable(node: &Node, exec: &Execution, now: Timestamp) -> Finish {
    let tags = node.state.definition(&exec.job_name).ok().flatten().map(|j| j.tags.clone()).unwrap_or_default();
    let error = match &exec.target {
        Some(target) => format!(
            "its node '{target}' is not alive or no longer matches the job's tags {tags:?} (waited {PLACE_GRACE:?})"
        ),
        None => format!("no live node matches the job's tags {tags:?} (waited {PLACE_GRACE:?})"),
    };
    warn!("execution {}/{} failed: {error}", exec.job_name, exec.id);
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
        retry_at: retry_instant(node, &exec.job_name, exec.attempt, now),
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
        assert_eq!(lost[0].1, "lost: its lease expired without a renewal");
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
    fn claims_of_orders_that_expired_unstarted_are_released_and_others_kept() {
        let start = Instant::now();
        let stale_after = Duration::from_secs(20);
        let active = [pending("sent", "2026-01-01T00:00:00Z"), pending("local", "2026-01-01T00:00:00Z")];
        let mut running_one = running("run", "b", "2026-01-01T01:00:00Z");
        running_one.job_name = "j".into();
        let active: Vec<Execution> = active.into_iter().chain([running_one]).collect();
        let r = |id: &str| ExecRef { job: "j".into(), id: id.into() };
        let mut claims = Claims::default();
        claims.claim(r("sent"), "b", start);
        claims.claim(r("local"), "leader", start);
        claims.claim(r("run"), "b", start);
        claims.claim(r("finished"), "b", start);
        let taken = start + Duration::from_millis(10);
        claims.claim(r("new"), "b", taken + Duration::from_millis(1));

        release_stale(&mut claims, &active, taken, start + Duration::from_secs(5), "leader", stale_after);
        let held = |c: &Claims| ["sent", "local", "run", "finished", "new"].map(|id| c.contains(&r(id)));
        assert_eq!(held(&claims), [true, true, true, false, true], "a finished run's claim goes at once");

        release_stale(&mut claims, &active, taken, start + stale_after, "leader", stale_after);
        assert_eq!(
            held(&claims),
            [false, true, true, false, true],
            "the unstarted order expired; the leader's own stays"
        );
        assert_eq!(claims.load("b"), 2);
    }
}
