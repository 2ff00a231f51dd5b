//! The scheduler: on the Raft leader only, decides which slot of which job fires when.
//!
//! It keeps a min-heap of each enabled job's next fire instant, sleeps until the earliest, and proposes every
//! due slot in one `Fire` command (group commit). The state machine accepts a slot only if it is after the job's
//! cursor, so proposing a slot twice (a retry, a new leader) never runs it twice. Dispatch happens only after the
//! fire is committed (see [`crate::node`]).
//!
//! When a node becomes leader, and whenever a job changes, [`plan`] compares the job's cursor with the clock: slots
//! that fell due while no scheduler ran are handled by the job's `catch_up` policy, slots due within
//! [`LATE_GRACE`] fire as ordinary slots.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kairos_model::{CatchUp, Timestamp, Trigger};
use kairos_schedule::{Schedule, time_until};
use kairos_store::{BATCH_ITEMS_MAX, Command, Fire, JobRecord, StateReader};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, info, warn};

use crate::duties::{Duties, LeaderWrites};

/// Slots of jobs with `concurrency: allow` are decided (committed through Raft) this long before their instant and
/// launched at the instant itself, so the commit of a large batch does not delay the runs. Jobs with `forbid` or
/// `replace` are decided at the instant, because their decision depends on what is still running then.
pub const DECIDE_AHEAD: Duration = Duration::from_millis(500);

/// A slot this late or less is fired as an ordinary slot, not as a catch-up (leader changes and slow commits).
pub const LATE_GRACE: Duration = Duration::from_secs(2);
/// Most slots one job may catch up at once under `catch_up: all`: the most recent ones win.
pub const CATCH_UP_SLOTS_MAX: usize = 10_000;

/// The next instant the job will fire, for display (`next` in the API): `None` if it will not fire by itself.
pub fn next_fire(record: &JobRecord, now: Timestamp) -> Option<Timestamp> {
    if record.job.disabled {
        return None;
    }
    let schedule = record.job.parsed_schedule().ok().flatten()?;
    if let Some(cursor) = record.cursor
        && cursor > now
    {
        return Some(cursor); // decided ahead of its instant, not run yet
    }
    let mut from = record.cursor.map_or(now, |c| c.max(now));
    if let Some(starts) = record.job.starts_at
        && starts > from
    {
        from = starts - Duration::from_nanos(1);
    }
    schedule.next_after(from).filter(|t| record.job.expires_at.is_none_or(|e| *t <= e))
}

/// What to do about one job right now.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Slots to decide now, oldest first.
    pub fires: Vec<Fire>,
    /// Move the cursor here without running anything (missed slots under `skip`, or outside the window).
    pub advance: Option<Timestamp>,
    /// The first slot after `now`, to wait for.
    pub next: Option<Timestamp>,
    /// Missed slots that will never run (the `catch_up` policy, or more than a catch-up takes at once); slots
    /// older than the catch-up window are not counted.
    pub missed: u64,
}

/// Decide a job's due and missed slots at `now`. Pure: the same inputs give the same plan.
pub fn plan(record: &JobRecord, schedule: &Schedule, now: Timestamp) -> Plan {
    let job = &record.job;
    if job.disabled || schedule.is_manual() {
        return Plan::default();
    }
    let cursor = record.cursor.unwrap_or(now);
    let mut from = cursor;
    if let Some(starts) = job.starts_at
        && starts > from
    {
        from = starts - Duration::from_nanos(1);
    }
    let in_bounds = |t: &Timestamp| job.expires_at.is_none_or(|e| *t <= e);
    // Slots older than the catch-up window are never run; start looking at the window's edge.
    let window_start = now.checked_sub(job.catch_up_window()).unwrap_or(Timestamp::MIN);
    let mut skipped_old = false;
    if from < window_start {
        skipped_old = schedule.next_after(from).is_some_and(|t| t <= window_start && in_bounds(&t));
        from = window_start;
    }
    let mut late = Vec::new();
    let mut on_time = Vec::new();
    let mut overflowed = 0u64;
    let mut t = from;
    while let Some(slot) = schedule.next_after(t) {
        if slot > now || !in_bounds(&slot) {
            break;
        }
        let late_by = now.duration_since(slot).unsigned_abs();
        if late_by > LATE_GRACE {
            late.push(slot)
        } else {
            on_time.push(slot)
        }
        if late.len() > CATCH_UP_SLOTS_MAX {
            late.remove(0);
            skipped_old = true;
            overflowed += 1;
        }
        t = slot;
    }
    let next = schedule.next_after(t.max(now)).filter(in_bounds);
    let fire = |slot: Timestamp, trigger: Trigger| Fire { job: job.name.clone(), scheduled_at: slot, trigger };
    let mut plan = Plan { next, ..Plan::default() };
    match job.catch_up {
        CatchUp::Skip => {}
        CatchUp::Latest => plan.fires.extend(late.last().map(|slot| fire(*slot, Trigger::CatchUp))),
        CatchUp::All => plan.fires.extend(late.iter().map(|slot| fire(*slot, Trigger::CatchUp))),
    }
    let late_fired = plan.fires.len();
    plan.missed = overflowed + (late.len() - late_fired) as u64;
    plan.fires.extend(on_time.iter().map(|slot| fire(*slot, Trigger::Schedule)));
    let last_considered = late.last().or(on_time.last()).copied();
    let fired_up_to = plan.fires.last().map(|f| f.scheduled_at);
    if last_considered > fired_up_to || (skipped_old && fired_up_to.is_none()) {
        plan.advance = Some(last_considered.unwrap_or(window_start).max(cursor));
    }
    plan
}

/// The leader's timer over decision instants (a slot's instant minus how far ahead it is decided). Stale heap
/// entries (a job changed or deleted) are skipped lazily.
#[derive(Default)]
struct Timer {
    heap: BinaryHeap<Reverse<(Timestamp, String)>>,
    entries: HashMap<String, Entry>,
}

struct Entry {
    decide_at: Timestamp,
    slot: Timestamp,
    ahead: Duration,
    schedule: Arc<Schedule>,
}

impl Timer {
    fn set(&mut self, job: &str, next: Option<Timestamp>, schedule: Arc<Schedule>, ahead: Duration) {
        match next {
            Some(slot) => {
                let decide_at = slot.checked_sub(ahead).unwrap_or(slot);
                self.entries.insert(job.to_string(), Entry { decide_at, slot, ahead, schedule });
                self.heap.push(Reverse((decide_at, job.to_string())));
            }
            None => {
                self.entries.remove(job);
            }
        }
    }

    fn remove(&mut self, job: &str) {
        self.entries.remove(job);
    }

    /// The earliest decision instant.
    fn earliest(&mut self) -> Option<Timestamp> {
        while let Some(Reverse((at, job))) = self.heap.peek() {
            if self.entries.get(job).is_some_and(|e| e.decide_at == *at) {
                return Some(*at);
            }
            self.heap.pop();
        }
        None
    }

    /// Pop every slot whose decision is due at `now`, re-arming each job at its following slot.
    fn take_due(&mut self, now: Timestamp, expires: impl Fn(&str) -> Option<Timestamp>) -> Vec<Fire> {
        let mut fires = Vec::new();
        while let Some(at) = self.earliest() {
            if at > now || fires.len() >= BATCH_ITEMS_MAX {
                break;
            }
            let Reverse((_, job)) = self.heap.pop().expect("earliest saw an entry");
            let entry = &self.entries[&job];
            let (slot, ahead, schedule) = (entry.slot, entry.ahead, entry.schedule.clone());
            fires.push(Fire { job: job.clone(), scheduled_at: slot, trigger: Trigger::Schedule });
            let next = schedule.next_after(slot).filter(|t| expires(&job).is_none_or(|e| *t <= e));
            self.set(&job, next, schedule, ahead);
        }
        fires
    }
}

/// The leader's view of every enabled job: the timer plus what re-arming needs.
#[derive(Default)]
struct Armed {
    timer: Timer,
    /// `expires_at` of the jobs that have one.
    expiries: HashMap<String, Timestamp>,
    /// Parsed schedules shared by every job with the same expression and zone (all but `~` ones), so a million
    /// jobs on a few schedules hold a few parsed schedules.
    shared: HashMap<(String, String), Arc<Schedule>>,
    /// Missed slots that will not run, and the jobs they belong to, since the last rebuild reported them.
    missed: (u64, u64),
}

impl Armed {
    fn schedule(&mut self, job: &kairos_model::Job) -> Option<Arc<Schedule>> {
        if job.schedule.contains('~') {
            return job.parsed_schedule().ok().flatten().map(Arc::new);
        }
        let key = (job.schedule.clone(), job.timezone.clone());
        if let Some(schedule) = self.shared.get(&key) {
            return Some(schedule.clone());
        }
        let schedule = Arc::new(job.parsed_schedule().ok().flatten()?);
        self.shared.insert(key, schedule.clone());
        Some(schedule)
    }

    /// Plan one job and arm the timer for it; fires and cursor moves are collected for one proposal.
    fn arm(&mut self, record: &JobRecord, now: Timestamp, fires: &mut Vec<Fire>, commands: &mut Vec<Command>) {
        let name = &record.job.name;
        let Some(schedule) = self.schedule(&record.job) else {
            self.forget(name);
            return;
        };
        let plan = plan(record, &schedule, now);
        if plan.missed > 0 {
            self.missed.0 += plan.missed;
            self.missed.1 += 1;
        }
        if let Some(cursor) = plan.advance {
            commands.push(Command::Advance { job: name.clone(), cursor });
        }
        fires.extend(plan.fires);
        match record.job.expires_at {
            Some(expires) => self.expiries.insert(name.clone(), expires),
            None => self.expiries.remove(name),
        };
        let ahead = match record.job.concurrency {
            kairos_model::Concurrency::Allow => DECIDE_AHEAD,
            kairos_model::Concurrency::Forbid | kairos_model::Concurrency::Replace => Duration::ZERO,
        };
        self.timer.set(name, plan.next, schedule, ahead);
    }

    fn forget(&mut self, name: &str) {
        self.timer.remove(name);
        self.expiries.remove(name);
    }

    fn take_due(&mut self, now: Timestamp) -> Vec<Fire> {
        let expiries = &self.expiries;
        self.timer.take_due(now, |job| expiries.get(job).copied())
    }
}

/// What the scheduler uses of its node: the state it reads, how it writes as leader, and where it reports errors.
pub struct Ports<'a> {
    pub state: &'a StateReader,
    pub writes: &'a dyn LeaderWrites,
    pub duties: &'a Duties,
}

/// The scheduler as a leader duty of `term` (see `leadership`): rebuilds the timer from the stored jobs,
/// then fires slots as they fall due. Runs until the duty is dropped; a failed write rebuilds the timer.
pub async fn duty(ports: &Ports<'_>, term: u64, changes: &mut UnboundedReceiver<String>) {
    loop {
        info!("scheduler: leading in term {term}; rebuilding the timer from the stored jobs");
        let mut armed = Armed::default();
        while changes.try_recv().is_ok() {} // everything is reloaded below
        let result = match rebuild(ports, term, &mut armed).await {
            Ok(()) => lead(ports, term, &mut armed, changes).await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            warn!("scheduler: {err}; rebuilding the timer");
            ports.duties.failed(format!("scheduler: {err}"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Arm every stored job, streaming the records (a million jobs must not sit in memory at once).
async fn rebuild(ports: &Ports<'_>, term: u64, armed: &mut Armed) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let mut commands = Vec::new();
    let mut fires = Vec::new();
    let reader = ports.state.clone();
    tokio::task::block_in_place(|| {
        reader.for_each_job(|record| {
            armed.arm(&record, now, &mut fires, &mut commands);
            true
        })
    })?;
    info!("scheduler: {} jobs armed, {} slots to decide now", armed.timer.entries.len(), fires.len());
    let (missed, jobs) = std::mem::take(&mut armed.missed);
    if missed > 0 {
        warn!(
            "scheduler: {missed} slots of {jobs} jobs fell due while no scheduler ran and will not run (their \
             catch_up policy: skip or latest); set catch_up: all to run every one"
        );
        crate::metrics::metrics().slots_missed.inc_by(missed);
    }
    propose(ports, term, fires, commands).await
}

async fn propose(ports: &Ports<'_>, term: u64, fires: Vec<Fire>, commands: Vec<Command>) -> anyhow::Result<()> {
    for command in commands {
        ports.writes.submit_as_leader(term, command).await.map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let mut fires = fires;
    fires.sort_by_key(|f| f.scheduled_at);
    for chunk in fires.chunks(BATCH_ITEMS_MAX) {
        let fire = Command::Fire { fires: chunk.to_vec() };
        ports.writes.submit_as_leader(term, fire).await.map_err(|e| anyhow::anyhow!(e.message))?;
    }
    Ok(())
}

async fn lead(
    ports: &Ports<'_>,
    term: u64,
    armed: &mut Armed,
    changes: &mut UnboundedReceiver<String>,
) -> anyhow::Result<()> {
    loop {
        let wake = armed.timer.earliest().map(|at| {
            let wait = time_until(at);
            tokio::time::Instant::now() + wait
        });
        let sleep_until = wake.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            Some(first) = changes.recv() => {
                let mut names = vec![first];
                while let Ok(name) = changes.try_recv() {
                    names.push(name);
                }
                names.sort();
                names.dedup();
                reload(ports, term, armed, names).await?;
            }
            _ = tokio::time::sleep_until(sleep_until) => {
                let fires = armed.take_due(Timestamp::now());
                if !fires.is_empty() {
                    let count = fires.len();
                    let started = std::time::Instant::now();
                    propose(ports, term, fires, Vec::new()).await?;
                    debug!("scheduler: fired {count} slots, committed and dispatched in {:?}", started.elapsed());
                }
            }
        }
    }
}

async fn reload(ports: &Ports<'_>, term: u64, armed: &mut Armed, names: Vec<String>) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let mut fires = Vec::new();
    let mut commands = Vec::new();
    for name in names {
        match ports.state.job(&name)? {
            Some(record) => armed.arm(&record, now, &mut fires, &mut commands),
            None => armed.forget(&name),
        }
    }
    // A changed job (re-enabled, rescheduled) has no slots missed for want of a scheduler.
    armed.missed = (0, 0);
    propose(ports, term, fires, commands).await
}

#[cfg(test)]
mod tests {
    use kairos_model::Job;

    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn record(catch_up: CatchUp, cursor: &str) -> (JobRecord, Schedule) {
        let mut job = Job::empty("j");
        job.schedule = "* * * * * *".into();
        job.executor = "shell".into();
        job.catch_up = catch_up;
        job.catch_up_window = "1m".into();
        let schedule = job.parsed_schedule().unwrap().unwrap();
        (JobRecord { job, cursor: Some(ts(cursor)), active: 0, stored: 0, version: 1, missed_at: None }, schedule)
    }

    fn slots(plan: &Plan) -> Vec<(String, Trigger)> {
        plan.fires.iter().map(|f| (f.scheduled_at.to_string(), f.trigger)).collect()
    }

    #[test]
    fn a_slot_due_now_fires_on_schedule() {
        let (rec, s) = record(CatchUp::Latest, "2026-01-01T00:00:09Z");
        let plan = plan(&rec, &s, ts("2026-01-01T00:00:10.001Z"));
        assert_eq!(slots(&plan), [("2026-01-01T00:00:10Z".to_string(), Trigger::Schedule)]);
        assert_eq!(plan.next, Some(ts("2026-01-01T00:00:11Z")));
        assert_eq!(plan.advance, None);
    }

    #[test]
    fn missed_slots_follow_the_catch_up_policy() {
        let now = ts("2026-01-01T00:00:10.5Z");
        let (rec, s) = record(CatchUp::Skip, "2026-01-01T00:00:00Z");
        let skip = plan(&rec, &s, now);
        // 9 and 10 are within the grace and fire; 1..=8 are skipped by moving the cursor past them.
        assert_eq!(skip.fires.len(), 2);
        assert!(skip.fires.iter().all(|f| f.trigger == Trigger::Schedule));
        assert_eq!(skip.missed, 8, "1..=8 are counted as missed");

        let (rec, s) = record(CatchUp::Latest, "2026-01-01T00:00:00Z");
        let latest = plan(&rec, &s, now);
        assert_eq!(
            slots(&latest)[0],
            ("2026-01-01T00:00:08Z".to_string(), Trigger::CatchUp),
            "the latest missed slot runs once"
        );
        assert_eq!(latest.fires.len(), 3);
        assert_eq!(latest.missed, 7, "1..=7 never run");

        let (rec, s) = record(CatchUp::All, "2026-01-01T00:00:00Z");
        let all = plan(&rec, &s, now);
        assert_eq!(all.fires.len(), 10, "every slot from 1 to 10 runs");
        assert_eq!(all.missed, 0);
        assert!(all.fires.windows(2).all(|w| w[0].scheduled_at < w[1].scheduled_at));
    }

    #[test]
    fn skip_without_on_time_slots_advances_the_cursor() {
        let (rec, s) = record(CatchUp::Skip, "2026-01-01T00:00:00Z");
        let plan = plan(&rec, &s, ts("2026-01-01T00:00:10.5Z"));
        assert!(plan.advance.is_none() || plan.advance <= plan.fires.last().map(|f| f.scheduled_at));
        let (mut rec, s) = record(CatchUp::Skip, "2026-01-01T00:00:00Z");
        rec.job.schedule = "0 * * * * *".into();
        let s2 = rec.job.parsed_schedule().unwrap().unwrap();
        let p = super::plan(&rec, &s2, ts("2026-01-01T00:05:30Z"));
        assert!(p.fires.is_empty());
        assert_eq!(p.advance, Some(ts("2026-01-01T00:05:00Z")));
        let _ = s;
    }

    #[test]
    fn slots_older_than_the_window_never_run() {
        let (rec, s) = record(CatchUp::All, "2026-01-01T00:00:00Z");
        let plan = plan(&rec, &s, ts("2026-01-01T01:00:00Z"));
        assert_eq!(plan.fires.len(), 60, "only the last minute (the window) is caught up");
    }

    #[test]
    fn disabled_and_expired_jobs_do_not_fire() {
        let (mut rec, s) = record(CatchUp::All, "2026-01-01T00:00:00Z");
        rec.job.disabled = true;
        assert_eq!(plan(&rec, &s, ts("2026-01-01T00:00:05Z")), Plan::default());
        rec.job.disabled = false;
        rec.job.expires_at = Some(ts("2026-01-01T00:00:02Z"));
        let p = plan(&rec, &s, ts("2026-01-01T00:00:05Z"));
        assert_eq!(p.fires.len(), 2);
        assert_eq!(p.next, None);
    }

    #[test]
    fn starts_at_holds_back_early_slots() {
        let (mut rec, s) = record(CatchUp::All, "2026-01-01T00:00:00Z");
        rec.job.starts_at = Some(ts("2026-01-01T00:00:04Z"));
        let p = plan(&rec, &s, ts("2026-01-01T00:00:05Z"));
        assert_eq!(p.fires.first().map(|f| f.scheduled_at), Some(ts("2026-01-01T00:00:04Z")));
    }

    #[test]
    fn timer_pops_due_slots_in_order_and_rearms() {
        let (rec, s) = record(CatchUp::All, "2026-01-01T00:00:00Z");
        let mut timer = Timer::default();
        let s = Arc::new(s);
        timer.set("a", Some(ts("2026-01-01T00:00:01Z")), s.clone(), Duration::ZERO);
        timer.set("b", Some(ts("2026-01-01T00:00:02Z")), s.clone(), Duration::ZERO);
        timer.set("a", Some(ts("2026-01-01T00:00:03Z")), s.clone(), Duration::ZERO); // replaces a's entry
        let due = timer.take_due(ts("2026-01-01T00:00:03Z"), |_| None);
        let got: Vec<(String, String)> = due.iter().map(|f| (f.job.clone(), f.scheduled_at.to_string())).collect();
        assert_eq!(
            got,
            [
                ("b".to_string(), "2026-01-01T00:00:02Z".to_string()),
                ("a".to_string(), "2026-01-01T00:00:03Z".to_string()),
                ("b".to_string(), "2026-01-01T00:00:03Z".to_string()),
            ]
        );
        assert_eq!(timer.earliest(), Some(ts("2026-01-01T00:00:04Z")));
        let _ = rec;
    }

    #[test]
    fn a_passed_instant_is_due_now() {
        assert_eq!(time_until(Timestamp::now() - Duration::from_secs(30)), Duration::ZERO);
        assert!(time_until(Timestamp::now() + Duration::from_secs(30)) > Duration::from_secs(29));
    }

    #[test]
    fn slots_decided_ahead_keep_their_own_instant() {
        let (_, s) = record(CatchUp::All, "2026-01-01T00:00:00Z");
        let mut timer = Timer::default();
        timer.set("a", Some(ts("2026-01-01T00:00:01Z")), Arc::new(s), DECIDE_AHEAD);
        assert_eq!(timer.earliest(), Some(ts("2026-01-01T00:00:00.5Z")));
        assert!(timer.take_due(ts("2026-01-01T00:00:00.4Z"), |_| None).is_empty());
        let due = timer.take_due(ts("2026-01-01T00:00:00.5Z"), |_| None);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].scheduled_at, ts("2026-01-01T00:00:01Z"));
        assert_eq!(timer.earliest(), Some(ts("2026-01-01T00:00:01.5Z")));
    }
}
