//! The deterministic transitions of the replicated state, as a specification: each test applies commands through
//! [`Applier`] on a real redb file, exactly as the Raft state machine does, and reads the result back through
//! [`StateReader`]. A property test at the end drives random fires, starts and finishes and checks the
//! bookkeeping invariants (`active`, `stored`, one execution per slot) after every batch.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kairos_model::{Concurrency, Execution, ExecutionStatus, Job, Timestamp, Trigger, execution_id};
use kairos_store::state::{Applier, create_tables};
use kairos_store::{
    Command, Event, ExecRef, Expansion, Finish, Fire, JobRecord, Refusal, Response, Start, StateReader,
};
use redb::Database;
use tempfile::TempDir;

/// A state file in a temporary directory, applying one batch of commands per write transaction.
struct State {
    db: Arc<Database>,
    retained_default: u32,
    _dir: TempDir,
}

impl State {
    fn new() -> State {
        State::with_retained_default(100)
    }

    fn with_retained_default(retained_default: u32) -> State {
        let dir = TempDir::new().unwrap();
        let db = Database::create(dir.path().join("state.redb")).unwrap();
        create_tables(&db).unwrap();
        State { db: Arc::new(db), retained_default, _dir: dir }
    }

    /// Apply commands in one transaction (one Raft entry batch); the responses and the batch's events.
    fn batch(&self, commands: &[Command]) -> (Vec<Response>, Vec<Event>) {
        let txn = self.db.begin_write().unwrap();
        let mut applier = Applier::new(&txn, self.retained_default).unwrap();
        let responses = commands.iter().map(|command| applier.apply(command).unwrap()).collect();
        let events = applier.finish().unwrap();
        txn.commit().unwrap();
        (responses, events)
    }

    fn apply(&self, command: Command) -> (Response, Vec<Event>) {
        let (mut responses, events) = self.batch(&[command]);
        (responses.remove(0), events)
    }

    fn reader(&self) -> StateReader {
        StateReader::new(self.db.clone(), Default::default())
    }

    fn record(&self, name: &str) -> JobRecord {
        self.reader().job(name).unwrap().unwrap_or_else(|| panic!("job {name} should exist"))
    }

    fn executions(&self, name: &str) -> Vec<Execution> {
        self.reader().executions(name).unwrap()
    }

    fn execution(&self, name: &str, id: &str) -> Execution {
        self.reader().execution(name, id).unwrap().unwrap_or_else(|| panic!("execution {name}/{id} should exist"))
    }

    fn put(&self, job: Job, now: Timestamp) -> Response {
        self.apply(put(job, now)).0
    }

    /// Fire a slot and return the one execution it created.
    fn fire_one(&self, name: &str, slot: Timestamp, trigger: Trigger) -> Execution {
        let (response, _) = self.apply(fire(name, slot, trigger));
        assert_eq!(response.executions.len(), 1, "{response:?}");
        response.executions[0].clone()
    }

    fn start(&self, exec: &Execution, at: Timestamp, lease_until: Timestamp) -> Response {
        self.apply(Command::Start {
            starts: vec![Start { exec: exec_ref(exec), node: "node-1".into(), started_at: at, lease_until }],
        })
        .0
    }

    fn finish(&self, result: Finish) -> (Response, Vec<Event>) {
        self.apply(Command::Finish { results: vec![result] })
    }
}

const BASE_MS: i64 = 1_800_000_000_000;

/// An instant `secs` seconds after a fixed base.
fn at(secs: i64) -> Timestamp {
    at_ms(secs * 1000)
}

fn at_ms(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(BASE_MS + ms).unwrap()
}

fn job(name: &str) -> Job {
    let mut job = Job::empty(name);
    job.schedule = "* * * * * *".into();
    job.executor = "shell".into();
    job.executor_config.insert("command".into(), "echo hi".into());
    job
}

fn child_of(name: &str, parent: &str) -> Job {
    let mut job = job(name);
    job.schedule = String::new();
    job.parent_job = parent.into();
    job
}

fn put(job: Job, now: Timestamp) -> Command {
    Command::PutJob { job: Box::new(job), now, expect_version: None }
}

fn fire(name: &str, slot: Timestamp, trigger: Trigger) -> Command {
    Command::Fire { fires: vec![Fire { job: name.into(), scheduled_at: slot, trigger }] }
}

fn exec_ref(exec: &Execution) -> ExecRef {
    ExecRef { job: exec.job_name.clone(), id: exec.id.clone() }
}

fn finished(exec: &Execution, status: ExecutionStatus, finished_at: Timestamp) -> Finish {
    Finish {
        exec: exec_ref(exec),
        status,
        exit_code: Some(if status == ExecutionStatus::Succeeded { 0 } else { 1 }),
        error: None,
        output_tail: "hi\n".into(),
        output_bytes: 3,
        node: "node-1".into(),
        started_at: None,
        finished_at,
        retry_at: None,
        only_if_lease_expired: false,
    }
}

fn ids(executions: &[Execution]) -> Vec<String> {
    executions.iter().map(|e| e.id.clone()).collect()
}

fn active_count(executions: &[Execution]) -> u32 {
    executions.iter().filter(|e| e.status.is_active()).count() as u32
}

fn pruned_in(events: &[Event]) -> Vec<ExecRef> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Pruned(refs) => Some(refs.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn invalid_field(response: &Response) -> &str {
    match &response.refusal {
        Some(Refusal::Invalid { field, .. }) => field,
        other => panic!("expected an Invalid refusal, got {other:?}"),
    }
}

// ----- jobs -----

/// Every start and final status is an outbox entry, in commit order with a sequence that continues across
/// batches; `Notified` records the deliveries on their executions, raises or ends a job's missed alert, and takes
/// the entries it covers out of the outbox. A run too short for its own start gets a start entry before its finish.
#[test]
fn the_outbox_holds_starts_and_finishes_until_the_notifier_records_them() {
    use kairos_model::execution::{Delivery, DeliveryOutcome};
    use kairos_store::outbox::{DeliveryRecord, MissedAlert, OutboxEvent};
    let state = State::new();
    state.put(job("j"), at(0));
    let first = state.fire_one("j", at(1), Trigger::Schedule);
    state.start(&first, at(1), at(31));
    state.finish(finished(&first, ExecutionStatus::Failed, at(2)));
    let second = state.fire_one("j", at(3), Trigger::Schedule);
    state.finish(Finish { started_at: Some(at(3)), ..finished(&second, ExecutionStatus::Succeeded, at(4)) });
    let entries = state.reader().outbox(0, 100).unwrap();
    let seen: Vec<(u64, String, OutboxEvent)> = entries.iter().map(|e| (e.seq, e.exec.id.clone(), e.event)).collect();
    assert_eq!(
        seen,
        [
            (1, first.id.clone(), OutboxEvent::Started),
            (2, first.id.clone(), OutboxEvent::Finished),
            (3, second.id.clone(), OutboxEvent::Started),
            (4, second.id.clone(), OutboxEvent::Finished),
        ]
    );
    let delivery = Delivery {
        kind: "webhook".into(),
        event: "failure".into(),
        target: "http://receiver/".into(),
        outcome: DeliveryOutcome::Sent,
        attempts: 1,
        error: None,
        at: at(2),
    };
    let record = DeliveryRecord { exec: exec_ref(&first), delivery: delivery.clone() };
    let alert = MissedAlert { job: "j".into(), missed_at: Some(at(5)) };
    state.apply(Command::Notified { upto: 2, records: vec![record], alerts: vec![alert] });
    assert_eq!(state.execution("j", &first.id).notifications, [delivery]);
    assert_eq!(state.record("j").missed_at, Some(at(5)));
    let left: Vec<u64> = state.reader().outbox(0, 100).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(left, [3, 4]);
    assert_eq!(state.reader().outbox_len().unwrap(), 2);
    // The sequence goes on from where it was, in a later batch.
    let third = state.fire_one("j", at(5), Trigger::Schedule);
    state.start(&third, at(5), at(35));
    assert_eq!(state.reader().outbox(5, 10).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
    state.apply(Command::Notified {
        upto: 5,
        records: vec![],
        alerts: vec![MissedAlert { job: "j".into(), missed_at: None }],
    });
    assert_eq!(state.reader().outbox_len().unwrap(), 0);
    assert_eq!(state.record("j").missed_at, None);
}

#[test]
fn put_job_creates_a_record_whose_cursor_starts_now() {
    let state = State::new();
    let (response, events) = state.apply(put(job("backup"), at(10)));

    assert_eq!(response.refusal, None);
    let record = state.record("backup");
    assert_eq!(record.cursor, Some(at(10)));
    assert_eq!(record.job.created_at, Some(at(10)));
    assert_eq!(record.job.updated_at, Some(at(10)));
    assert_eq!((record.active, record.stored), (0, 0));
    assert_eq!(response.job, Some(record.job));
    assert_eq!(events, vec![Event::JobChanged("backup".into())]);
}

#[test]
fn updating_a_job_keeps_counters_created_at_and_cursor() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let exec = state.fire_one("backup", at(5), Trigger::Schedule);
    state.finish(finished(&exec, ExecutionStatus::Succeeded, at(6)));

    let mut update = job("backup");
    update.owner = "ops".into();
    update.success_count = 99; // clients cannot set derived fields
    update.created_at = Some(at(1000));
    state.put(update, at(20));

    let record = state.record("backup");
    assert_eq!(record.job.owner, "ops");
    assert_eq!(record.job.success_count, 1);
    assert_eq!(record.job.last_success, Some(at(6)));
    assert_eq!(record.job.status, "success");
    assert_eq!(record.job.created_at, Some(at(0)));
    assert_eq!(record.job.updated_at, Some(at(20)));
    assert_eq!(record.cursor, Some(at(5)), "same schedule: the cursor stays");
    assert_eq!(record.stored, 1);
}

#[test]
fn changing_the_schedule_moves_the_cursor_to_now() {
    let state = State::new();
    state.put(job("backup"), at(0));
    state.fire_one("backup", at(5), Trigger::Schedule);

    let mut update = job("backup");
    update.schedule = "*/2 * * * * *".into();
    state.put(update, at(30));

    assert_eq!(state.record("backup").cursor, Some(at(30)));
}

#[test]
fn changing_the_schedule_never_moves_the_cursor_back() {
    let state = State::new();
    state.put(job("backup"), at(0));
    state.fire_one("backup", at(50), Trigger::Schedule);

    let mut update = job("backup");
    update.schedule = "*/2 * * * * *".into();
    state.put(update, at(30));

    assert_eq!(state.record("backup").cursor, Some(at(50)));
}

#[test]
fn changing_the_time_zone_moves_the_cursor_to_now() {
    let state = State::new();
    state.put(job("backup"), at(0));

    let mut update = job("backup");
    update.timezone = "Europe/Paris".into();
    state.put(update, at(30));

    assert_eq!(state.record("backup").cursor, Some(at(30)));
}

#[test]
fn enabling_a_disabled_job_moves_the_cursor_to_now() {
    let state = State::new();
    let mut disabled = job("backup");
    disabled.disabled = true;
    state.put(disabled, at(0));

    state.put(job("backup"), at(30));

    assert_eq!(state.record("backup").cursor, Some(at(30)));
    let (response, _) = state.apply(fire("backup", at(29), Trigger::Schedule));
    assert!(response.executions.is_empty(), "slots passed while disabled were never due");
}

#[test]
fn disabling_a_job_keeps_its_cursor() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let mut disabled = job("backup");
    disabled.disabled = true;
    state.put(disabled, at(30));
    assert_eq!(state.record("backup").cursor, Some(at(0)));
}

#[test]
fn a_put_expecting_a_version_applies_only_over_that_version() {
    let state = State::new();
    let guarded =
        |job: Job, expect: u64| Command::PutJob { job: Box::new(job), now: at(1), expect_version: Some(expect) };
    // 0 means "only if absent": the first create applies, a second one conflicts.
    assert!(state.apply(guarded(job("a"), 0)).0.refusal.is_none());
    let v1 = state.record("a").version;
    assert!(v1 > 0);
    assert!(matches!(state.apply(guarded(job("a"), 0)).0.refusal, Some(Refusal::Conflict(_))));
    // A write over the version read applies and moves the version on; a write over the stale one conflicts.
    let mut disabled = job("a");
    disabled.disabled = true;
    let (response, _) = state.apply(guarded(disabled.clone(), v1));
    assert!(response.refusal.is_none(), "{response:?}");
    assert_eq!(response.cursor, state.record("a").cursor, "the put answers the cursor it left");
    let v2 = state.record("a").version;
    assert!(v2 > v1);
    let (response, _) = state.apply(guarded(job("a"), v1));
    assert!(matches!(response.refusal, Some(Refusal::Conflict(_))), "{response:?}");
    assert!(state.record("a").job.disabled, "the conflicting write changed nothing");
    // Deleted and re-created, the job never gets an old version back (no ABA).
    state.apply(Command::DeleteJob { name: "a".into() });
    assert!(matches!(state.apply(guarded(job("a"), v2)).0.refusal, Some(Refusal::Conflict(_))));
    state.put(job("a"), at(2));
    assert!(state.record("a").version > v2);
}

#[test]
fn a_parent_job_must_exist() {
    let state = State::new();
    let (response, events) = state.apply(put(child_of("report", "ghost"), at(0)));

    assert_eq!(invalid_field(&response), "parent_job");
    match &response.refusal {
        Some(Refusal::Invalid { message, .. }) => assert!(message.contains("ghost"), "{message}"),
        _ => unreachable!(),
    }
    assert_eq!(state.reader().job("report").unwrap(), None);
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn a_cycle_of_parent_jobs_is_refused_and_changes_nothing() {
    let state = State::new();
    state.put(job("a"), at(0));
    state.put(child_of("b", "a"), at(0));
    state.put(child_of("c", "b"), at(0));
    let before = state.record("a");

    let mut a = job("a");
    a.parent_job = "c".into();
    let response = state.put(a, at(10));

    assert_eq!(invalid_field(&response), "parent_job");
    assert_eq!(state.record("a"), before);
    assert_eq!(state.record("c").job.dependent_jobs, Vec::<String>::new());
}

#[test]
fn a_job_cannot_be_its_own_parent() {
    let state = State::new();
    state.put(job("a"), at(0));
    let response = state.put(child_of("a", "a"), at(1));
    assert_eq!(invalid_field(&response), "parent_job");
    assert_eq!(state.record("a").job.parent_job, "");
}

#[test]
fn dependent_jobs_of_the_parent_follow_its_children() {
    let state = State::new();
    state.put(job("p"), at(0));
    state.put(job("q"), at(0));
    state.put(child_of("c2", "p"), at(1));
    state.put(child_of("c1", "p"), at(1));
    assert_eq!(state.record("p").job.dependent_jobs, ["c1", "c2"]);

    // A client sending the parent back (with a stale dependent_jobs) does not change the list.
    let mut p = job("p");
    p.dependent_jobs = vec!["bogus".into()];
    state.put(p, at(2));
    assert_eq!(state.record("p").job.dependent_jobs, ["c1", "c2"]);

    state.put(child_of("c1", "q"), at(3));
    assert_eq!(state.record("p").job.dependent_jobs, ["c2"]);
    assert_eq!(state.record("q").job.dependent_jobs, ["c1"]);

    state.apply(Command::DeleteJob { name: "c2".into() });
    assert_eq!(state.record("p").job.dependent_jobs, Vec::<String>::new());
}

#[test]
fn a_new_job_starts_with_no_dependent_jobs() {
    let state = State::new();
    let mut p = job("p");
    p.dependent_jobs = vec!["bogus".into()];
    state.put(p, at(0));
    assert_eq!(state.record("p").job.dependent_jobs, Vec::<String>::new());
}

#[test]
fn deleting_a_job_with_children_is_a_conflict_and_changes_nothing() {
    let state = State::new();
    state.put(job("p"), at(0));
    state.put(child_of("c", "p"), at(0));
    state.fire_one("p", at(1), Trigger::Schedule);
    let record = state.record("p");
    let executions = state.executions("p");

    let (response, events) = state.apply(Command::DeleteJob { name: "p".into() });

    assert!(matches!(response.refusal, Some(Refusal::Conflict(ref m)) if m.contains('c')), "{response:?}");
    assert_eq!(state.record("p"), record);
    assert_eq!(state.executions("p"), executions);
    assert!(!events.contains(&Event::JobDeleted("p".into())));
    assert!(pruned_in(&events).is_empty());
}

#[test]
fn deleting_an_unknown_job_is_not_found() {
    let state = State::new();
    let (response, _) = state.apply(Command::DeleteJob { name: "ghost".into() });
    assert!(matches!(response.refusal, Some(Refusal::NotFound(_))));
}

#[test]
fn deleting_a_job_removes_its_executions_and_reports_them() {
    let state = State::new();
    state.put(job("backup"), at(0));
    state.put(job("other"), at(0));
    let done = state.fire_one("backup", at(1), Trigger::Schedule);
    state.finish(finished(&done, ExecutionStatus::Succeeded, at(2)));
    let running = state.fire_one("backup", at(3), Trigger::Schedule);
    state.start(&running, at(3), at(60));
    let unrelated = state.fire_one("other", at(3), Trigger::Schedule);

    let (response, events) = state.apply(Command::DeleteJob { name: "backup".into() });

    assert_eq!(response.refusal, None);
    assert_eq!(response.job.map(|j| j.name), Some("backup".into()));
    assert_eq!(state.reader().job("backup").unwrap(), None);
    assert!(state.executions("backup").is_empty());
    assert_eq!(state.reader().active().unwrap(), vec![unrelated]);
    let mut pruned = pruned_in(&events);
    pruned.sort();
    assert_eq!(pruned, vec![exec_ref(&done), exec_ref(&running)]);
    assert!(events.contains(&Event::JobDeleted("backup".into())));
    let cancel: Vec<&ExecRef> = events
        .iter()
        .filter_map(|e| match e {
            Event::Cancel(refs) => Some(refs),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(cancel.contains(&&exec_ref(&running)), "the running execution must be stopped where it runs: {events:?}");
}

#[test]
fn set_paused_persists() {
    let state = State::new();
    assert!(!state.reader().paused().unwrap());

    let (response, _) = state.apply(Command::SetPaused { paused: true });
    assert_eq!(response.paused, Some(true));
    assert!(state.reader().paused().unwrap());

    state.apply(Command::SetPaused { paused: false });
    assert!(!state.reader().paused().unwrap());
}

#[test]
fn restore_creates_every_job_parents_first() {
    let state = State::new();
    let (response, _) =
        state.apply(Command::RestoreJobs { jobs: vec![job("p"), child_of("c", "p"), job("z")], now: at(0) });
    assert_eq!(response.refusal, None);
    assert_eq!(state.reader().job_count().unwrap(), 3);
    assert_eq!(state.record("p").job.dependent_jobs, ["c"]);
}

/// `Refusal`'s contract: "Refusals change nothing". A restore refused at its third job must not have created
/// the first two (the API answers the client with an error).
#[test]
fn a_refused_restore_changes_nothing() {
    let state = State::new();
    let (response, _) = state.apply(Command::RestoreJobs {
        jobs: vec![job("p"), child_of("c", "p"), child_of("x", "ghost"), job("z")],
        now: at(0),
    });
    assert_eq!(invalid_field(&response), "parent_job");
    assert_eq!(state.reader().job_count().unwrap(), 0);
}

// ----- firing -----

#[test]
fn firing_a_schedule_slot_creates_one_pending_execution_with_the_slot_id() {
    let state = State::new();
    state.put(job("backup"), at(0));

    let (response, events) = state.apply(fire("backup", at(5), Trigger::Schedule));

    let exec = state.execution("backup", &execution_id(at(5), 1));
    assert_eq!(response.executions, vec![exec.clone()]);
    assert_eq!(exec.status, ExecutionStatus::Pending);
    assert_eq!((exec.attempt, exec.scheduled_at, exec.trigger), (1, at(5), Trigger::Schedule));
    let record = state.record("backup");
    assert_eq!((record.active, record.stored), (1, 1));
    assert_eq!(record.cursor, Some(at(5)));
    assert_eq!(record.job.status, "running");
    assert!(events.contains(&Event::Pending));
    assert_eq!(state.reader().active().unwrap(), vec![exec]);
}

#[test]
fn firing_the_same_or_an_older_slot_again_does_nothing() {
    let state = State::new();
    state.put(job("backup"), at(0));
    state.fire_one("backup", at(5), Trigger::Schedule);

    for slot in [at(5), at(4), at(0)] {
        let (response, events) = state.apply(fire("backup", slot, Trigger::Schedule));
        assert!(response.executions.is_empty(), "slot {slot}: {response:?}");
        assert!(!events.contains(&Event::Pending));
    }

    assert_eq!(state.executions("backup").len(), 1);
    let record = state.record("backup");
    assert_eq!((record.active, record.stored), (1, 1));
    assert_eq!(record.cursor, Some(at(5)));
}

#[test]
fn the_same_slot_twice_in_one_batch_fires_once() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let twice = Command::Fire {
        fires: vec![
            Fire { job: "backup".into(), scheduled_at: at(5), trigger: Trigger::Schedule },
            Fire { job: "backup".into(), scheduled_at: at(5), trigger: Trigger::Schedule },
        ],
    };
    let (responses, _) = state.batch(&[twice.clone(), twice]);
    assert_eq!(responses[0].executions.len(), 1);
    assert!(responses[1].executions.is_empty());
    assert_eq!(state.record("backup").stored, 1);
}

#[test]
fn slots_before_the_job_was_created_never_fire() {
    let state = State::new();
    state.put(job("backup"), at(10));
    let (response, _) = state.apply(fire("backup", at(9), Trigger::Schedule));
    assert!(response.executions.is_empty());
}

#[test]
fn firing_an_unknown_job_does_nothing() {
    let state = State::new();
    let (response, events) = state.apply(fire("ghost", at(1), Trigger::Schedule));
    assert!(response.executions.is_empty());
    assert!(events.is_empty());
    assert_eq!(state.reader().job("ghost").unwrap(), None);
}

#[test]
fn manual_runs_of_the_same_instant_get_distinct_ids() {
    let state = State::new();
    state.put(job("backup"), at(0));

    let first = state.fire_one("backup", at(7), Trigger::Manual);
    let second = state.fire_one("backup", at(7), Trigger::Manual);
    let (response, _) = state.apply(Command::Fire {
        fires: vec![Fire { job: "backup".into(), scheduled_at: at(7), trigger: Trigger::Manual }; 2],
    });

    let mut all: Vec<String> = ids(&[first.clone(), second.clone()]);
    all.extend(ids(&response.executions));
    assert_eq!(all.len(), 4);
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 4, "{all:?}");
    assert_eq!(first.id, format!("{}-manual", execution_id(at(7), 1)));
    assert_eq!(second.id, format!("{}-manual", execution_id(at_ms(7001), 1)));
    assert_eq!(state.record("backup").stored, 4);
    assert_eq!(state.record("backup").cursor, Some(at(0)), "manual runs leave the schedule alone");
}

#[test]
fn a_manual_run_does_not_take_a_scheduled_slot() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let scheduled = state.fire_one("backup", at(5), Trigger::Schedule);
    let manual = state.fire_one("backup", at(5), Trigger::Manual);

    assert_ne!(manual.id, scheduled.id);
    assert_eq!(state.execution("backup", &scheduled.id).trigger, Trigger::Schedule);
    assert_eq!(state.record("backup").stored, 2);
}

/// The reverse order: a manual run took the instant first, then the schedule reaches the same instant.
#[test]
fn a_scheduled_slot_does_not_overwrite_a_manual_run_of_the_same_instant() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let manual = state.fire_one("backup", at(5), Trigger::Manual);
    state.start(&manual, at(5), at(65));

    state.apply(fire("backup", at(5), Trigger::Schedule));

    let kept = state.execution("backup", &manual.id);
    assert_eq!(kept.trigger, Trigger::Manual, "{kept:?}");
    assert_eq!(kept.status, ExecutionStatus::Running, "{kept:?}");
    let executions = state.executions("backup");
    let record = state.record("backup");
    assert_eq!(record.active, active_count(&executions));
    assert_eq!(record.stored, executions.len() as u64);
}

/// A manual run may reuse the first-attempt id of a slot whose first attempt was pruned; its retry must still not
/// take the id of the scheduled slot's own (still pending) retry.
#[test]
fn a_retry_never_overwrites_another_execution() {
    let state = State::new();
    let mut flaky = job("flaky");
    flaky.retries = 1;
    flaky.executions_retained = Some(2);
    state.put(flaky, at(0));
    let scheduled = state.fire_one("flaky", at(5), Trigger::Schedule);
    let (response, _) = state.finish(finished(&scheduled, ExecutionStatus::Failed, at(5)));
    let scheduled_retry = response.executions[1].clone();
    state.fire_one("flaky", at(6), Trigger::Schedule); // prunes the failed first attempt at 5 s
    let manual = state.fire_one("flaky", at(5), Trigger::Manual);

    state.finish(finished(&manual, ExecutionStatus::Failed, at(7)));

    assert_ne!(manual.scheduled_at, scheduled.scheduled_at, "the slot's retry still uses 5 s, so the manual run moves");
    let executions = state.executions("flaky");
    let record = state.record("flaky");
    assert_eq!(record.active, active_count(&executions), "active drifts: {executions:#?}");
    assert_eq!(record.stored, executions.len() as u64);
    let kept = state.execution("flaky", &scheduled_retry.id);
    assert_eq!(kept.not_before, scheduled_retry.not_before, "{kept:?}");
}

#[test]
fn a_disabled_job_advances_its_cursor_but_runs_nothing() {
    let state = State::new();
    let mut disabled = job("backup");
    disabled.disabled = true;
    state.put(disabled, at(0));

    let (response, events) = state.apply(fire("backup", at(5), Trigger::Schedule));

    assert!(response.executions.is_empty());
    assert!(!events.contains(&Event::Pending));
    assert!(state.executions("backup").is_empty());
    let record = state.record("backup");
    assert_eq!(record.cursor, Some(at(5)));
    assert_eq!((record.active, record.stored), (0, 0));
}

#[test]
fn advance_moves_the_cursor_forward_only() {
    let state = State::new();
    state.put(job("backup"), at(0));
    state.apply(Command::Advance { job: "backup".into(), cursor: at(30) });
    assert_eq!(state.record("backup").cursor, Some(at(30)));
    state.apply(Command::Advance { job: "backup".into(), cursor: at(10) });
    assert_eq!(state.record("backup").cursor, Some(at(30)));
    let (response, _) = state.apply(fire("backup", at(20), Trigger::Schedule));
    assert!(response.executions.is_empty());
}

#[test]
fn concurrency_forbid_records_a_skipped_execution_while_one_is_active() {
    let state = State::new();
    let mut forbid = job("backup");
    forbid.concurrency = Concurrency::Forbid;
    state.put(forbid, at(0));
    let first = state.fire_one("backup", at(1), Trigger::Schedule);

    let skipped = state.fire_one("backup", at(2), Trigger::Schedule);

    assert_eq!(skipped.status, ExecutionStatus::Skipped);
    assert_eq!(skipped.finished_at, Some(at(2)));
    assert!(skipped.error.is_some());
    assert_eq!(state.execution("backup", &skipped.id), skipped);
    let record = state.record("backup");
    assert_eq!((record.active, record.stored), (1, 2));
    assert_eq!(record.cursor, Some(at(2)));

    state.finish(finished(&first, ExecutionStatus::Succeeded, at(3)));
    let third = state.fire_one("backup", at(4), Trigger::Schedule);
    assert_eq!(third.status, ExecutionStatus::Pending);
}

#[test]
fn concurrency_replace_cancels_pending_runs_and_asks_to_cancel_running_ones() {
    let state = State::new();
    let mut replace = job("backup");
    replace.concurrency = Concurrency::Replace;
    state.put(replace, at(0));
    let running = state.fire_one("backup", at(1), Trigger::Schedule);
    state.start(&running, at(1), at(60));

    let (response, events) = state.apply(fire("backup", at(2), Trigger::Schedule));
    assert_eq!(response.to_cancel, vec![exec_ref(&running)]);
    assert!(events.contains(&Event::Cancel(vec![exec_ref(&running)])));
    let pending = response.executions[0].clone();
    assert_eq!(pending.status, ExecutionStatus::Pending);

    let (response, _) = state.apply(fire("backup", at(3), Trigger::Schedule));
    assert_eq!(response.to_cancel, vec![exec_ref(&running)]);
    let cancelled = state.execution("backup", &pending.id);
    assert_eq!(cancelled.status, ExecutionStatus::Cancelled);
    assert_eq!(cancelled.finished_at, Some(at(3)));
    assert_eq!(
        state.execution("backup", &running.id).status,
        ExecutionStatus::Running,
        "the node cancels running executions and reports their end"
    );
    let executions = state.executions("backup");
    let record = state.record("backup");
    assert_eq!(record.active, 2);
    assert_eq!(record.active, active_count(&executions));
    assert_eq!(record.stored, 3);
}

// ----- running -----

#[test]
fn start_moves_a_pending_execution_to_running_with_a_lease() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let exec = state.fire_one("backup", at(1), Trigger::Schedule);

    let response = state.start(&exec, at(2), at(62));

    let running = state.execution("backup", &exec.id);
    assert_eq!(response.executions, vec![running.clone()]);
    assert_eq!(running.status, ExecutionStatus::Running);
    assert_eq!(running.started_at, Some(at(2)));
    assert_eq!(running.lease_until, Some(at(62)));
    assert_eq!(running.node_name, "node-1");
    assert_eq!(state.record("backup").active, 1);
    assert_eq!(state.reader().active().unwrap(), vec![running]);
}

#[test]
fn a_finish_moves_the_start_to_when_its_node_truly_launched_the_run() {
    let state = State::new();
    state.put(job("backup"), at(0));
    // A leader commits the start of its own run (at 2 s), then launches it (at 2.3 s).
    let exec = state.fire_one("backup", at(1), Trigger::Schedule);
    state.start(&exec, at(2), at(62));
    state.finish(Finish { started_at: Some(at_ms(2_300)), ..finished(&exec, ExecutionStatus::Succeeded, at(4)) });
    assert_eq!(state.execution("backup", &exec.id).started_at, Some(at_ms(2_300)));

    // Never earlier than recorded, and never from another node's report.
    let earlier = state.fire_one("backup", at(5), Trigger::Schedule);
    state.start(&earlier, at(6), at(66));
    state.finish(Finish { started_at: Some(at_ms(5_500)), ..finished(&earlier, ExecutionStatus::Succeeded, at(7)) });
    assert_eq!(state.execution("backup", &earlier.id).started_at, Some(at(6)));
    let other = state.fire_one("backup", at(8), Trigger::Schedule);
    state.start(&other, at(9), at(69));
    let elsewhere =
        Finish { node: "node-2".into(), started_at: Some(at(10)), ..finished(&other, ExecutionStatus::Lost, at(11)) };
    state.finish(elsewhere);
    assert_eq!(state.execution("backup", &other.id).started_at, Some(at(9)));
}

#[test]
fn start_of_an_execution_that_is_not_pending_is_ignored() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let exec = state.fire_one("backup", at(1), Trigger::Schedule);
    state.start(&exec, at(2), at(62));

    let again = state.apply(Command::Start {
        starts: vec![Start { exec: exec_ref(&exec), node: "node-2".into(), started_at: at(3), lease_until: at(99) }],
    });
    assert!(again.0.executions.is_empty());
    let running = state.execution("backup", &exec.id);
    assert_eq!((running.node_name.as_str(), running.started_at), ("node-1", Some(at(2))));

    state.finish(finished(&exec, ExecutionStatus::Succeeded, at(4)));
    assert!(state.start(&exec, at(5), at(65)).executions.is_empty());
    assert_eq!(state.execution("backup", &exec.id).status, ExecutionStatus::Succeeded);

    let ghost = Execution::decided("backup", at(50), Trigger::Schedule);
    assert!(state.start(&ghost, at(5), at(65)).executions.is_empty());
    assert_eq!(state.record("backup").stored, 1);
}

#[test]
fn renew_extends_only_the_leases_of_running_executions() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let running = state.fire_one("backup", at(1), Trigger::Schedule);
    let pending = state.fire_one("backup", at(2), Trigger::Schedule);
    let done = state.fire_one("backup", at(3), Trigger::Schedule);
    state.start(&running, at(1), at(60));
    state.finish(finished(&done, ExecutionStatus::Succeeded, at(4)));
    let renew = |lease_until| {
        state.apply(Command::Renew {
            renewals: vec![exec_ref(&running), exec_ref(&pending), exec_ref(&done)],
            lease_until,
        })
    };

    renew(at(90));
    assert_eq!(state.execution("backup", &running.id).lease_until, Some(at(90)));
    assert_eq!(state.execution("backup", &pending.id).lease_until, None);
    assert_eq!(state.execution("backup", &done.id).lease_until, None);

    renew(at(70));
    assert_eq!(state.execution("backup", &running.id).lease_until, Some(at(90)), "a lease never shrinks");
}

// ----- finishing -----

#[test]
fn a_success_updates_the_job_counters_and_status() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let exec = state.fire_one("backup", at(1), Trigger::Schedule);
    state.start(&exec, at(1), at(60));

    let (response, _) = state.finish(finished(&exec, ExecutionStatus::Succeeded, at(4)));

    let done = state.execution("backup", &exec.id);
    assert_eq!(response.executions, vec![done.clone()]);
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    assert!(done.success);
    assert_eq!(done.finished_at, Some(at(4)));
    assert_eq!(done.exit_code, Some(0));
    assert_eq!((done.output.as_str(), done.output_bytes), ("hi\n", 3));
    assert_eq!(done.lease_until, None);
    let record = state.record("backup");
    assert_eq!(record.job.success_count, 1);
    assert_eq!(record.job.error_count, 0);
    assert_eq!(record.job.last_success, Some(at(4)));
    assert_eq!(record.job.status, "success");
    assert_eq!((record.active, record.stored), (0, 1));
    assert!(state.reader().active().unwrap().is_empty());
}

#[test]
fn a_finish_without_a_reported_start_records_when_it_started() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let short = state.fire_one("backup", at(1), Trigger::Schedule);
    let mut result = finished(&short, ExecutionStatus::Succeeded, at(2));
    result.started_at = Some(at(1));
    state.finish(result);
    let done = state.execution("backup", &short.id);
    assert_eq!((done.started_at, done.node_name.as_str()), (Some(at(1)), "node-1"));

    let long = state.fire_one("backup", at(3), Trigger::Schedule);
    state.start(&long, at(4), at(60));
    let mut result = finished(&long, ExecutionStatus::Succeeded, at(9));
    result.started_at = Some(at(8));
    state.finish(result);
    let started = state.execution("backup", &long.id).started_at;
    assert_eq!(started, Some(at(8)), "its node launched it later than the start recorded (see the next test)");
}

#[test]
fn a_success_runs_each_dependent_job() {
    let state = State::new();
    state.put(job("p"), at(0));
    state.put(child_of("c1", "p"), at(0));
    state.put(child_of("c2", "p"), at(0));
    let exec = state.fire_one("p", at(1), Trigger::Schedule);

    let (response, events) = state.finish(finished(&exec, ExecutionStatus::Succeeded, at(4)));

    for child in ["c1", "c2"] {
        let runs = state.executions(child);
        assert_eq!(runs.len(), 1, "{child}: {runs:?}");
        let run = &runs[0];
        assert_eq!(run.status, ExecutionStatus::Pending);
        assert_eq!(run.trigger, Trigger::Parent);
        assert_eq!(run.id, format!("{}-parent", execution_id(at(4), 1)));
        assert!(response.executions.contains(run));
        assert_eq!(state.record(child).active, 1);
    }
    assert!(events.contains(&Event::Pending));
}

fn tagged(name: &str, role: &str) -> Job {
    let mut job = job(name);
    job.tags.insert("role".into(), role.into());
    job
}

fn expand(state: &State, exec: &Execution, targets: &[&str]) -> Response {
    let targets = targets.iter().map(|t| t.to_string()).collect();
    state.apply(Command::Expand { expansions: vec![Expansion { exec: exec_ref(exec), targets }] }).0
}

#[test]
fn expanding_a_pending_run_replaces_it_by_one_pinned_copy_per_node() {
    let state = State::new();
    state.put(tagged("web", "web"), at(0));
    let exec = state.fire_one("web", at(1), Trigger::Schedule);

    let response = expand(&state, &exec, &["w1", "w2"]);

    let expected = [format!("{}@w1", exec.id), format!("{}@w2", exec.id)];
    assert_eq!(ids(&response.executions), expected);
    assert_eq!(ids(&state.executions("web")), expected, "the original is gone");
    for copy in state.executions("web") {
        assert_eq!(copy.status, ExecutionStatus::Pending);
        assert_eq!(copy.not_before, Some(at(1)), "a copy starts at the slot, as the original would have");
        assert_eq!(copy.target.as_deref(), kairos_model::target_of(&copy.id));
    }
    let record = state.record("web");
    assert_eq!((record.active, record.stored), (2, 2));
    assert_eq!(state.reader().active().unwrap().len(), 2);

    // A second expansion (a new leader's, say) finds no pending original and changes nothing; nor does one of a
    // copy, of an unknown id, or with no targets.
    assert!(expand(&state, &exec, &["w3"]).executions.is_empty());
    assert!(expand(&state, &response.executions[0], &["w3"]).executions.is_empty());
    let other = state.fire_one("web", at(2), Trigger::Schedule);
    assert!(expand(&state, &other, &[]).executions.is_empty());
    assert_eq!(state.executions("web").len(), 3);
    assert_eq!(state.record("web").active, 3);
}

#[test]
fn a_cancelled_run_is_not_expanded() {
    let state = State::new();
    let mut web = tagged("web", "web");
    web.concurrency = Concurrency::Replace;
    state.put(web, at(0));
    let first = state.fire_one("web", at(1), Trigger::Schedule);
    state.fire_one("web", at(2), Trigger::Schedule); // replaces the pending first one
    assert_eq!(state.execution("web", &first.id).status, ExecutionStatus::Cancelled);
    assert!(expand(&state, &first, &["w1", "w2"]).executions.is_empty());
    assert_eq!(state.executions("web").len(), 2);
}

#[test]
fn children_run_once_per_slot_after_every_copy_succeeded() {
    let state = State::new();
    let mut parent = tagged("p", "web");
    parent.retries = 1;
    state.put(parent, at(0));
    state.put(child_of("c", "p"), at(0));
    let exec = state.fire_one("p", at(1), Trigger::Schedule);
    let copies = expand(&state, &exec, &["w1", "w2", "w3"]).executions;

    state.finish(finished(&copies[0], ExecutionStatus::Succeeded, at(2)));
    let (response, _) = state.finish(finished(&copies[1], ExecutionStatus::Failed, at(3)));
    let retry = response.executions.iter().find(|e| e.status == ExecutionStatus::Pending).unwrap().clone();
    assert_eq!(retry.id, format!("{}@w2", execution_id(at(1), 2)));
    assert_eq!(retry.target.as_deref(), Some("w2"), "a copy of a job on every web node retries on its own node");
    state.finish(finished(&copies[2], ExecutionStatus::Succeeded, at(4)));
    assert!(state.executions("c").is_empty(), "the retry on w2 is still to run");

    state.finish(finished(&retry, ExecutionStatus::Succeeded, at(5)));
    let runs = state.executions("c");
    assert_eq!(runs.len(), 1, "one child run for the slot: {runs:?}");
    assert_eq!(runs[0].id, format!("{}-parent", execution_id(at(5), 1)));
    assert_eq!(state.record("p").job.success_count, 3, "counters count each copy");
}

#[test]
fn a_failed_copy_runs_no_child_and_a_counted_copy_retries_unpinned() {
    let state = State::new();
    let mut parent = tagged("p", "web:2");
    parent.retries = 1;
    state.put(parent, at(0));
    state.put(child_of("c", "p"), at(0));
    let exec = state.fire_one("p", at(1), Trigger::Schedule);
    let copies = expand(&state, &exec, &["w1", "w2"]).executions;

    let (response, _) = state.finish(finished(&copies[0], ExecutionStatus::Lost, at(2)));
    let retry = response.executions.iter().find(|e| e.status == ExecutionStatus::Pending).unwrap().clone();
    assert_eq!((retry.target.as_deref(), retry.previous_node.as_deref()), (None, Some("node-1")));
    assert!(retry.is_copy(), "the retry keeps the copy's id: {}", retry.id);
    state.finish(finished(&retry, ExecutionStatus::Failed, at(3)));
    state.finish(finished(&copies[1], ExecutionStatus::Succeeded, at(4)));
    assert!(state.executions("c").is_empty(), "w1's copy failed for good");
}

#[test]
fn an_ephemeral_job_on_several_nodes_is_deleted_after_its_last_copy() {
    let state = State::new();
    let mut once = tagged("once", "web");
    once.ephemeral = true;
    state.put(once, at(0));
    let exec = state.fire_one("once", at(1), Trigger::Schedule);
    let copies = expand(&state, &exec, &["w1", "w2"]).executions;
    let (_, events) = state.finish(finished(&copies[0], ExecutionStatus::Succeeded, at(2)));
    assert!(!events.iter().any(|e| matches!(e, Event::Cancel(_))), "the other copy is not cancelled");
    assert!(state.reader().job("once").unwrap().is_some());
    state.finish(finished(&copies[1], ExecutionStatus::Succeeded, at(3)));
    assert_eq!(state.reader().job("once").unwrap(), None);
}

#[test]
fn a_failure_runs_no_dependent_job() {
    let state = State::new();
    state.put(job("p"), at(0));
    state.put(child_of("c", "p"), at(0));
    let exec = state.fire_one("p", at(1), Trigger::Schedule);
    state.finish(finished(&exec, ExecutionStatus::Failed, at(4)));
    assert!(state.executions("c").is_empty());
    let record = state.record("p");
    assert_eq!(record.job.error_count, 1);
    assert_eq!(record.job.last_error, Some(at(4)));
    assert_eq!(record.job.status, "failed");
}

#[test]
fn an_ephemeral_job_is_deleted_after_its_first_success() {
    let state = State::new();
    let mut once = job("once");
    once.ephemeral = true;
    state.put(once, at(0));
    let failed = state.fire_one("once", at(1), Trigger::Schedule);
    state.finish(finished(&failed, ExecutionStatus::Failed, at(2)));
    assert!(state.reader().job("once").unwrap().is_some(), "a failure keeps it");

    let exec = state.fire_one("once", at(3), Trigger::Schedule);
    let (_, events) = state.finish(finished(&exec, ExecutionStatus::Succeeded, at(4)));

    assert_eq!(state.reader().job("once").unwrap(), None);
    assert!(state.executions("once").is_empty());
    assert!(events.contains(&Event::JobDeleted("once".into())));
}

#[test]
fn a_failure_with_retries_left_decides_the_next_attempt() {
    let state = State::new();
    let mut flaky = job("flaky");
    flaky.retries = 2;
    state.put(flaky, at(0));
    let first = state.fire_one("flaky", at(1), Trigger::Schedule);
    state.start(&first, at(1), at(60));

    let mut result = finished(&first, ExecutionStatus::Failed, at(2));
    result.retry_at = Some(at(7));
    let (response, events) = state.finish(result);

    let retry = state.execution("flaky", &execution_id(at(1), 2));
    assert_eq!(response.executions.len(), 2);
    assert_eq!(response.executions[1], retry);
    assert_eq!(retry.status, ExecutionStatus::Pending);
    assert_eq!(retry.attempt, 2);
    assert_eq!(retry.trigger, Trigger::Retry);
    assert_eq!(retry.scheduled_at, at(1));
    assert_eq!(retry.group, first.group);
    assert_eq!(retry.not_before, Some(at(7)));
    assert!(events.contains(&Event::Pending));
    let record = state.record("flaky");
    assert_eq!((record.active, record.stored), (1, 2));
    assert_eq!(record.job.error_count, 1);

    // A lost attempt is retried too; the last allowed attempt is not.
    let (response, _) = state.finish(finished(&retry, ExecutionStatus::Lost, at(8)));
    let third = response.executions[1].clone();
    assert_eq!(third.id, execution_id(at(1), 3));
    assert_eq!(third.not_before, Some(at(8)), "without retry_at: at once");
    let (response, _) = state.finish(finished(&third, ExecutionStatus::Failed, at(9)));
    assert_eq!(response.executions.len(), 1);
    let record = state.record("flaky");
    assert_eq!((record.active, record.stored), (0, 3));
    assert_eq!(record.job.error_count, 3);
}

#[test]
fn a_failure_without_retries_decides_nothing_more() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let exec = state.fire_one("backup", at(1), Trigger::Schedule);
    let mut result = finished(&exec, ExecutionStatus::Failed, at(2));
    result.retry_at = Some(at(7));

    let (response, _) = state.finish(result);

    assert_eq!(response.executions.len(), 1);
    assert_eq!(ids(&state.executions("backup")), vec![exec.id]);
    assert_eq!(state.record("backup").active, 0);
}

#[test]
fn a_run_its_node_was_too_busy_for_is_retried_only_under_on_overload_retry() {
    let state = State::new();
    for (name, policy) in [("skips", kairos_model::OnOverload::Skip), ("retries", kairos_model::OnOverload::Retry)] {
        let mut job = job(name);
        job.retries = 1;
        job.on_overload = policy;
        state.put(job, at(0));
    }

    for name in ["skips", "retries"] {
        let exec = state.fire_one(name, at(1), Trigger::Schedule);
        let mut result = finished(&exec, ExecutionStatus::Skipped, at(2));
        result.error = Some("skipped: node 'a' is overloaded".into());
        result.retry_at = Some(at(5));
        state.finish(result);
    }

    let skipped = state.executions("skips");
    assert_eq!(skipped.len(), 1, "on_overload: skip records the slot skipped and nothing more");
    assert_eq!(skipped[0].status, ExecutionStatus::Skipped);
    let retried = state.execution("retries", &execution_id(at(1), 2));
    assert_eq!((retried.status, retried.attempt, retried.trigger), (ExecutionStatus::Pending, 2, Trigger::Retry));
    assert_eq!(retried.not_before, Some(at(5)), "after the backoff the leader decided");
    assert_eq!(state.execution("retries", &execution_id(at(1), 1)).status, ExecutionStatus::Skipped);

    // Within the retries: the second attempt skipped too is the last.
    let mut result = finished(&retried, ExecutionStatus::Skipped, at(6));
    result.retry_at = Some(at(9));
    let (response, _) = state.finish(result);
    assert_eq!(response.executions.len(), 1);
    assert_eq!(state.executions("retries").len(), 2);
    assert_eq!(state.record("retries").active, 0);
}

#[test]
fn a_cancelled_execution_is_not_retried() {
    let state = State::new();
    let mut flaky = job("flaky");
    flaky.retries = 3;
    state.put(flaky, at(0));
    let exec = state.fire_one("flaky", at(1), Trigger::Schedule);
    state.finish(finished(&exec, ExecutionStatus::Cancelled, at(2)));
    assert_eq!(state.executions("flaky").len(), 1);
}

#[test]
fn a_repeated_finish_is_ignored() {
    let state = State::new();
    let mut flaky = job("flaky");
    flaky.retries = 1;
    state.put(flaky, at(0));
    let exec = state.fire_one("flaky", at(1), Trigger::Schedule);
    state.finish(finished(&exec, ExecutionStatus::Failed, at(2)));
    let before = (state.record("flaky"), state.executions("flaky"));

    let (response, events) = state.finish(finished(&exec, ExecutionStatus::Failed, at(3)));
    let (again, _) = state.finish(finished(&exec, ExecutionStatus::Succeeded, at(4)));

    assert!(response.executions.is_empty() && again.executions.is_empty());
    assert!(events.is_empty(), "{events:?}");
    assert_eq!((state.record("flaky"), state.executions("flaky")), before);
}

#[test]
fn a_lost_report_is_ignored_when_the_lease_was_renewed_past_it() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let exec = state.fire_one("backup", at(1), Trigger::Schedule);
    state.start(&exec, at(1), at(10));
    state.apply(Command::Renew { renewals: vec![exec_ref(&exec)], lease_until: at(20) });

    let mut lost = finished(&exec, ExecutionStatus::Lost, at(15));
    lost.only_if_lease_expired = true;
    let (response, _) = state.finish(lost.clone());
    assert!(response.executions.is_empty());
    assert_eq!(state.execution("backup", &exec.id).status, ExecutionStatus::Running);
    assert_eq!(state.record("backup").job.error_count, 0);

    lost.finished_at = at(21);
    state.finish(lost);
    assert_eq!(state.execution("backup", &exec.id).status, ExecutionStatus::Lost);
    assert_eq!(state.record("backup").active, 0);
}

#[test]
fn an_unconditional_lost_report_applies_even_within_the_lease() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let exec = state.fire_one("backup", at(1), Trigger::Schedule);
    state.start(&exec, at(1), at(60));
    state.finish(finished(&exec, ExecutionStatus::Lost, at(5)));
    assert_eq!(state.execution("backup", &exec.id).status, ExecutionStatus::Lost);
}

// ----- retention -----

/// Fire and finish `count` slots starting at second `from`; the executions in slot order.
fn run_slots(state: &State, name: &str, from: i64, count: i64) -> Vec<Execution> {
    (from..from + count)
        .map(|s| {
            let exec = state.fire_one(name, at(s), Trigger::Schedule);
            state.finish(finished(&exec, ExecutionStatus::Succeeded, at(s)));
            exec
        })
        .collect()
}

#[test]
fn retention_keeps_the_newest_executions_of_the_job() {
    let state = State::new();
    let mut kept3 = job("backup");
    kept3.executions_retained = Some(3);
    state.put(kept3, at(0));

    let mut pruned = Vec::new();
    let mut all = Vec::new();
    for s in 1..=5 {
        let (response, events) = state.apply(fire("backup", at(s), Trigger::Schedule));
        pruned.extend(pruned_in(&events));
        let exec = response.executions[0].clone();
        state.finish(finished(&exec, ExecutionStatus::Succeeded, at(s)));
        all.push(exec);
    }

    assert_eq!(ids(&state.executions("backup")), ids(&all[2..]));
    assert_eq!(pruned, vec![exec_ref(&all[0]), exec_ref(&all[1])]);
    assert_eq!(state.record("backup").stored, 3);
}

#[test]
fn retention_uses_the_server_default_when_the_job_sets_none() {
    let state = State::with_retained_default(2);
    state.put(job("backup"), at(0));
    let runs = run_slots(&state, "backup", 1, 4);
    assert_eq!(ids(&state.executions("backup")), ids(&runs[2..]));
    assert_eq!(state.record("backup").stored, 2);
}

#[test]
fn retention_never_prunes_active_executions() {
    let state = State::new();
    let mut kept2 = job("backup");
    kept2.executions_retained = Some(2);
    state.put(kept2, at(0));
    let active: Vec<Execution> = (1..=4).map(|s| state.fire_one("backup", at(s), Trigger::Schedule)).collect();
    assert_eq!(ids(&state.executions("backup")), ids(&active));
    assert_eq!(state.record("backup").stored, 4);

    for exec in &active {
        state.finish(finished(exec, ExecutionStatus::Succeeded, at(5)));
    }
    let (response, events) = state.apply(fire("backup", at(6), Trigger::Schedule));

    let newest = vec![active[3].clone(), response.executions[0].clone()];
    assert_eq!(ids(&state.executions("backup")), ids(&newest));
    assert_eq!(pruned_in(&events), active[..3].iter().map(exec_ref).collect::<Vec<_>>());
    let record = state.record("backup");
    assert_eq!((record.active, record.stored), (1, 2));
}

#[test]
fn delete_executions_keeps_the_active_ones() {
    let state = State::new();
    state.put(job("backup"), at(0));
    let done = state.fire_one("backup", at(1), Trigger::Schedule);
    state.finish(finished(&done, ExecutionStatus::Failed, at(1)));
    let running = state.fire_one("backup", at(2), Trigger::Schedule);
    state.start(&running, at(2), at(60));
    let pending = state.fire_one("backup", at(3), Trigger::Schedule);

    let (response, events) = state.apply(Command::DeleteExecutions { job: "backup".into() });

    assert_eq!(response.refusal, None);
    assert_eq!(pruned_in(&events), vec![exec_ref(&done)]);
    assert_eq!(ids(&state.executions("backup")), vec![running.id, pending.id]);
    let record = state.record("backup");
    assert_eq!((record.active, record.stored), (2, 2));
    let (missing, _) = state.apply(Command::DeleteExecutions { job: "ghost".into() });
    assert!(matches!(missing.refusal, Some(Refusal::NotFound(_))));
}

#[test]
fn commands_in_one_batch_see_each_other() {
    let state = State::new();
    let exec_id = execution_id(at(1), 1);
    let (responses, _) = state.batch(&[
        put(job("backup"), at(0)),
        fire("backup", at(1), Trigger::Schedule),
        Command::Start {
            starts: vec![Start {
                exec: ExecRef { job: "backup".into(), id: exec_id.clone() },
                node: "node-1".into(),
                started_at: at(1),
                lease_until: at(60),
            }],
        },
        fire("backup", at(1), Trigger::Schedule),
    ]);
    assert_eq!(responses[1].executions.len(), 1);
    assert_eq!(responses[2].executions.len(), 1);
    assert!(responses[3].executions.is_empty());
    assert_eq!(state.execution("backup", &exec_id).status, ExecutionStatus::Running);
    let record = state.record("backup");
    assert_eq!((record.active, record.stored, record.cursor), (1, 1, Some(at(1))));
}

// ----- invariants under random operation sequences -----

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// The jobs of the model: allow with a retry, forbid with a small retention, replace as a child of the first.
    const JOBS: [&str; 3] = ["alpha", "beta", "gamma"];

    #[derive(Debug, Clone)]
    enum Op {
        Fire {
            job: usize,
            second: i64,
            manual: bool,
        },
        Start {
            job: usize,
            pick: usize,
        },
        Finish {
            job: usize,
            pick: usize,
            status: ExecutionStatus,
            second: i64,
        },
        /// Expand a pending original into copies on `targets` nodes (0 asks for none: a no-op).
        Expand {
            job: usize,
            pick: usize,
            targets: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let status = prop_oneof![
            Just(ExecutionStatus::Succeeded),
            Just(ExecutionStatus::Failed),
            Just(ExecutionStatus::Lost),
            Just(ExecutionStatus::Cancelled),
        ];
        prop_oneof![
            3 => (0..JOBS.len(), 0..12i64, any::<bool>())
                .prop_map(|(job, second, manual)| Op::Fire { job, second, manual }),
            2 => (0..JOBS.len(), 0..4usize).prop_map(|(job, pick)| Op::Start { job, pick }),
            2 => (0..JOBS.len(), 0..4usize, status, 0..12i64)
                .prop_map(|(job, pick, status, second)| Op::Finish { job, pick, status, second }),
            1 => (0..JOBS.len(), 0..4usize, 0..4usize).prop_map(|(job, pick, targets)| Op::Expand { job, pick, targets }),
        ]
    }

    fn setup() -> State {
        let state = State::with_retained_default(1000);
        let mut alpha = job("alpha");
        alpha.retries = 1;
        let mut beta = job("beta");
        beta.concurrency = Concurrency::Forbid;
        beta.executions_retained = Some(3);
        let mut gamma = child_of("gamma", "alpha");
        gamma.concurrency = Concurrency::Replace;
        state.batch(&[put(alpha, at(0)), put(beta, at(0)), put(gamma, at(0))]);
        state
    }

    /// Turn an op into a command, choosing its execution among those committed before the batch.
    fn command(state: &State, op: &Op) -> Option<Command> {
        match *op {
            Op::Fire { job, second, manual } => {
                Some(fire(JOBS[job], at(second), if manual { Trigger::Manual } else { Trigger::Schedule }))
            }
            Op::Start { job, pick } => {
                let pending: Vec<Execution> =
                    state.executions(JOBS[job]).into_iter().filter(|e| e.status == ExecutionStatus::Pending).collect();
                let exec = pending.get(pick % pending.len().max(1))?;
                Some(Command::Start {
                    starts: vec![Start {
                        exec: exec_ref(exec),
                        node: "node-1".into(),
                        started_at: exec.scheduled_at,
                        lease_until: at(100),
                    }],
                })
            }
            Op::Finish { job, pick, status, second } => {
                let active: Vec<Execution> =
                    state.executions(JOBS[job]).into_iter().filter(|e| e.status.is_active()).collect();
                let exec = active.get(pick % active.len().max(1))?;
                Some(Command::Finish { results: vec![finished(exec, status, at(second))] })
            }
            Op::Expand { job, pick, targets } => {
                let pending: Vec<Execution> =
                    state.executions(JOBS[job]).into_iter().filter(|e| e.status == ExecutionStatus::Pending).collect();
                let exec = pending.get(pick % pending.len().max(1))?;
                let targets = (1..=targets).map(|n| format!("n{n}")).collect();
                Some(Command::Expand { expansions: vec![Expansion { exec: exec_ref(exec), targets }] })
            }
        }
    }

    /// What the model remembers of every execution it saw decided: its identity must never change.
    type Decided = BTreeMap<(String, String), (Trigger, Timestamp, u32)>;

    fn check_invariants(state: &State, decided: &Decided) -> Result<(), TestCaseError> {
        let mut active_ids = BTreeSet::new();
        for name in JOBS {
            let record = state.record(name);
            let executions = state.executions(name);
            prop_assert_eq!(record.active, active_count(&executions), "active of {}", name);
            prop_assert_eq!(record.stored, executions.len() as u64, "stored of {}", name);
            for exec in &executions {
                let key = (name.to_string(), exec.id.clone());
                let identity = (exec.trigger, exec.scheduled_at, exec.attempt);
                prop_assert_eq!(decided.get(&key), Some(&identity), "{:?} changed identity", key);
                prop_assert!(
                    exec.id.starts_with(&execution_id(exec.scheduled_at, exec.attempt)),
                    "id {} does not name its slot and attempt",
                    exec.id
                );
                if exec.status.is_active() {
                    active_ids.insert(key);
                }
                if let Some((original, target)) = exec.id.split_once('@') {
                    prop_assert!(
                        !executions.iter().any(|e| e.id == original),
                        "copy {} lives beside its original",
                        exec.id
                    );
                    prop_assert_eq!(exec.target.as_deref(), Some(target), "copy {} lost its target", exec.id);
                }
            }
        }
        let indexed: BTreeSet<(String, String)> =
            state.reader().active().unwrap().into_iter().map(|e| (e.job_name, e.id)).collect();
        prop_assert_eq!(indexed, active_ids, "the active index matches the statuses");
        Ok(())
    }

    /// Record newly decided executions; deciding an id that is already decided (and not pruned in the same
    /// batch) is a violation.
    fn record_decisions(
        state: &State,
        decided: &mut Decided,
        responses: &[Response],
        events: &[Event],
    ) -> Result<(), TestCaseError> {
        let pruned: BTreeSet<(String, String)> = pruned_in(events).into_iter().map(|r| (r.job, r.id)).collect();
        let created = responses
            .iter()
            .flat_map(|r| &r.executions)
            .filter(|e| matches!(e.status, ExecutionStatus::Pending | ExecutionStatus::Skipped));
        for exec in created {
            let key = (exec.job_name.clone(), exec.id.clone());
            let identity = (exec.trigger, exec.scheduled_at, exec.attempt);
            let previous = decided.insert(key.clone(), identity);
            prop_assert!(
                previous.is_none() || pruned.contains(&key),
                "{:?} decided twice: {:?} then {:?}",
                key,
                previous,
                identity
            );
        }
        for (job, id) in pruned {
            if state.reader().execution(&job, &id).unwrap().is_none() {
                decided.remove(&(job, id));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn bookkeeping_stays_consistent_under_random_runs(
            batches in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..25)
        ) {
            let state = setup();
            let mut decided = Decided::new();
            for batch in &batches {
                let commands: Vec<Command> =
                    batch.iter().filter_map(|op| command(&state, op)).collect();
                let (responses, events) = state.batch(&commands);
                record_decisions(&state, &mut decided, &responses, &events)?;
                check_invariants(&state, &decided)?;
            }
        }
    }
}

// --- Access control: tokens and policies ---

mod acl {
    use super::*;
    use kairos_model::acl::{Capability, PathRule, Policy, Rules, Token, TokenType, secret_hash, uuid_from_bytes};

    fn token(seed: u8, token_type: TokenType, policies: &[&str]) -> Token {
        Token {
            accessor_id: uuid_from_bytes([seed; 16]),
            secret_hash: secret_hash(&format!("secret-{seed}")),
            name: format!("token-{seed}"),
            token_type,
            policies: policies.iter().map(|p| p.to_string()).collect(),
            create_time: at(0),
            expiration_time: None,
        }
    }

    fn policy(name: &str, glob: &str, capabilities: &[Capability]) -> Policy {
        let rules =
            Rules { path: BTreeMap::from([(glob.to_string(), PathRule { capabilities: capabilities.to_vec() })]) };
        Policy { name: name.into(), description: String::new(), rules }
    }

    #[test]
    fn bootstrap_stores_a_management_token_once() {
        let state = State::new();
        assert!(!state.reader().acl_bootstrapped().unwrap());
        let first = token(1, TokenType::Management, &[]);
        let (response, _) = state.apply(Command::AclBootstrap { token: first.clone() });
        assert_eq!(response.refusal, None);
        assert_eq!(response.acl_token.as_ref(), Some(&first));
        assert!(state.reader().acl_bootstrapped().unwrap());
        assert_eq!(state.reader().acl_token_by_secret(&secret_hash("secret-1")).unwrap(), Some(first.clone()));

        let (again, _) = state.apply(Command::AclBootstrap { token: token(2, TokenType::Management, &[]) });
        assert!(matches!(again.refusal, Some(Refusal::Conflict(ref m)) if m.contains("already bootstrapped")));
        assert_eq!(state.reader().acl_tokens().unwrap(), vec![first], "the refused bootstrap stored nothing");
    }

    #[test]
    fn a_token_naming_an_unknown_policy_is_refused_and_changes_nothing() {
        let state = State::new();
        let (response, _) = state.apply(Command::AclPutToken { token: token(3, TokenType::Client, &["nope"]) });
        assert_eq!(invalid_field(&response), "policies");
        assert!(state.reader().acl_tokens().unwrap().is_empty());
        assert_eq!(state.reader().acl_token_by_secret(&secret_hash("secret-3")).unwrap(), None);
    }

    #[test]
    fn tokens_may_name_built_in_and_stored_policies() {
        let state = State::new();
        let team = policy("team-a", "/v1/jobs/team-a-*", &[Capability::Read]);
        assert_eq!(state.apply(Command::AclPutPolicy { policy: team.clone() }).0.refusal, None);
        let t = token(4, TokenType::Client, &["readonly", "team-a"]);
        assert_eq!(state.apply(Command::AclPutToken { token: t.clone() }).0.refusal, None);
        assert_eq!(state.reader().acl_token(&t.accessor_id).unwrap(), Some(t));
        let names: Vec<String> = state.reader().acl_policies().unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["default", "readonly", "team-a"]);
        assert_eq!(state.reader().acl_policy("team-a").unwrap(), Some(team));
    }

    #[test]
    fn replacing_a_token_secret_forgets_the_old_secret() {
        let state = State::new();
        let mut t = token(5, TokenType::Management, &[]);
        state.apply(Command::AclPutToken { token: t.clone() });
        t.secret_hash = secret_hash("rotated");
        state.apply(Command::AclPutToken { token: t.clone() });
        assert_eq!(state.reader().acl_token_by_secret(&secret_hash("secret-5")).unwrap(), None);
        assert_eq!(state.reader().acl_token_by_secret(&secret_hash("rotated")).unwrap(), Some(t));
    }

    #[test]
    fn deleting_a_token_removes_it_and_its_secret() {
        let state = State::new();
        let t = token(6, TokenType::Management, &[]);
        state.apply(Command::AclPutToken { token: t.clone() });
        let (response, _) = state.apply(Command::AclDeleteToken { accessor_id: t.accessor_id.clone() });
        assert_eq!(response.acl_token, Some(t.clone()));
        assert_eq!(state.reader().acl_token_by_secret(&t.secret_hash).unwrap(), None);
        let (again, _) = state.apply(Command::AclDeleteToken { accessor_id: t.accessor_id });
        assert!(matches!(again.refusal, Some(Refusal::NotFound(_))));
    }

    #[test]
    fn built_in_policies_cannot_be_replaced_or_deleted() {
        let state = State::new();
        let (put, _) = state.apply(Command::AclPutPolicy { policy: policy("readonly", "/*", &[Capability::Delete]) });
        assert_eq!(invalid_field(&put), "name");
        let (delete, _) = state.apply(Command::AclDeletePolicy { name: "default".into() });
        assert_eq!(invalid_field(&delete), "name");
        let readonly = state.reader().acl_policy("readonly").unwrap().unwrap();
        assert_eq!(readonly.rules.path["/*"].capabilities, vec![Capability::Read, Capability::List]);
    }

    #[test]
    fn a_policy_with_an_invalid_glob_is_refused_and_changes_nothing() {
        let state = State::new();
        let (response, _) = state.apply(Command::AclPutPolicy { policy: policy("p", "/v1/jobs/[a]", &[]) });
        assert_eq!(invalid_field(&response), "rules.path./v1/jobs/[a]");
        assert_eq!(state.reader().acl_policy("p").unwrap(), None);
    }

    #[test]
    fn deleting_a_policy_keeps_the_tokens_that_name_it() {
        let state = State::new();
        state.apply(Command::AclPutPolicy { policy: policy("p", "/v1/jobs/*", &[Capability::Read]) });
        let t = token(7, TokenType::Client, &["p"]);
        state.apply(Command::AclPutToken { token: t.clone() });
        assert_eq!(state.apply(Command::AclDeletePolicy { name: "p".into() }).0.refusal, None);
        assert_eq!(state.reader().acl_policy("p").unwrap(), None);
        assert_eq!(state.reader().acl_token(&t.accessor_id).unwrap(), Some(t));
        let (again, _) = state.apply(Command::AclDeletePolicy { name: "p".into() });
        assert!(matches!(again.refusal, Some(Refusal::NotFound(_))));
    }

    #[test]
    fn the_same_commands_give_the_same_state_on_every_server() {
        let commands = vec![
            Command::AclPutPolicy { policy: policy("p", "/v1/jobs/a-*", &[Capability::Read, Capability::List]) },
            Command::AclBootstrap { token: token(8, TokenType::Management, &[]) },
            Command::AclPutToken { token: token(9, TokenType::Client, &["p", "default"]) },
            Command::AclBootstrap { token: token(10, TokenType::Management, &[]) },
            Command::AclDeleteToken { accessor_id: uuid_from_bytes([8; 16]) },
        ];
        let (a, b) = (State::new(), State::new());
        let (ra, _) = a.batch(&commands);
        let (rb, _) = b.batch(&commands);
        assert_eq!(ra, rb);
        assert_eq!(a.reader().acl_tokens().unwrap(), b.reader().acl_tokens().unwrap());
        assert_eq!(a.reader().acl_policies().unwrap(), b.reader().acl_policies().unwrap());
        assert_eq!(a.reader().acl_tokens().unwrap().len(), 1);
    }
}

mod secrets {
    use std::collections::{BTreeMap, BTreeSet};

    use kairos_model::secret::SecretValue;

    use super::*;

    fn put_secret(name: &str, value: &str, secs: i64) -> Command {
        Command::SecretPut { name: name.into(), value: SecretValue(value.into()), at: at(secs) }
    }

    fn with_env(name: &str, env: &str) -> Job {
        let mut job = job(name);
        job.executor_config = BTreeMap::from([("command".into(), "true".into()), ("env".into(), env.into())]);
        job
    }

    #[test]
    fn a_secret_keeps_its_creation_time_and_shows_no_value() {
        let state = State::new();
        assert_eq!(state.apply(put_secret("db", "one", 1)).0.refusal, None);
        let (replaced, _) = state.apply(put_secret("db", "two", 5));
        let info = replaced.secret.expect("the stored secret");
        assert_eq!((info.created_at, info.updated_at), (at(1), at(5)));
        assert_eq!(state.reader().secrets().unwrap(), vec![info]);
        let values = state.reader().secret_values(&BTreeSet::from(["db".to_string(), "nope".to_string()])).unwrap();
        assert_eq!(values, BTreeMap::from([("db".to_string(), SecretValue("two".into()))]));
    }

    #[test]
    fn bad_names_and_values_are_refused_naming_the_field() {
        let state = State::new();
        assert_eq!(invalid_field(&state.apply(put_secret("a b", "x", 1)).0), "name");
        assert_eq!(invalid_field(&state.apply(put_secret("a", "", 1)).0), "value");
        assert!(state.reader().secrets().unwrap().is_empty());
    }

    #[test]
    fn a_job_may_reference_only_secrets_that_exist() {
        let state = State::new();
        let referencing = with_env("j", r#"PASS={{secret "db"}}"#);
        let refused = state.put(referencing.clone(), at(1));
        assert_eq!(invalid_field(&refused), "executor_config");
        assert!(state.reader().job("j").unwrap().is_none());
        state.apply(put_secret("db", "pw", 2));
        assert_eq!(state.put(referencing, at(3)).refusal, None);
        let malformed = state.put(with_env("k", "PASS={{secret db}}"), at(4));
        assert_eq!(invalid_field(&malformed), "executor_config.env");
        let (deleted, _) = state.apply(Command::SecretDelete { name: "db".into() });
        assert_eq!(deleted.secret.map(|s| s.name).as_deref(), Some("db"));
        let (again, _) = state.apply(Command::SecretDelete { name: "db".into() });
        assert!(matches!(again.refusal, Some(Refusal::NotFound(_))));
    }
}

mod audit {
    use kairos_model::audit::{AuditFilter, AuditRecord};

    use super::*;

    fn record(token: &str, job: Option<&str>, secs: i64) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at: at(secs),
            token: token.into(),
            accessor_id: None,
            client: "127.0.0.1:5000".into(),
            node: "n1".into(),
            method: "POST".into(),
            path: job.map_or("/v1/pause".into(), |j| format!("/v1/jobs/{j}/run")),
            job: job.map(str::to_string),
            status: 202,
        }
    }

    #[test]
    fn records_are_numbered_kept_to_the_limit_and_read_newest_first() {
        let state = State::new();
        let batch = |from: i64, to: i64| (from..to).map(|s| record("ci", Some("j"), s)).collect::<Vec<_>>();
        state.apply(Command::Audit { records: batch(0, 3), keep: 4 });
        state.apply(Command::Audit { records: batch(3, 6), keep: 4 });
        let (all, total) = state.reader().audit(&AuditFilter::default(), 0, usize::MAX).unwrap();
        assert_eq!(total, 4, "the oldest beyond the limit are dropped");
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [6, 5, 4, 3]);
        let (page, total) = state.reader().audit(&AuditFilter::default(), 1, 3).unwrap();
        assert_eq!((page.iter().map(|r| r.seq).collect::<Vec<_>>(), total), (vec![5, 4], 4));
    }

    #[test]
    fn filters_select_by_token_job_and_time() {
        let state = State::new();
        let records = vec![record("ci", Some("a"), 1), record("ops", Some("b"), 2), record("ci", None, 3)];
        state.apply(Command::Audit { records, keep: 100 });
        let count = |filter: AuditFilter| state.reader().audit(&filter, 0, usize::MAX).unwrap().1;
        assert_eq!(count(AuditFilter { token: Some("ci".into()), ..Default::default() }), 2);
        assert_eq!(count(AuditFilter { job: Some("b".into()), ..Default::default() }), 1);
        assert_eq!(count(AuditFilter { since: Some(at(2)), ..Default::default() }), 2);
    }
}
