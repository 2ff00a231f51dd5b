//! The replicated state on disk: jobs, executions and the schedule cursors, in one redb file, and the
//! deterministic transitions that [`Command`]s make on them.
//!
//! Tables:
//! - `jobs`: job name → [`JobRecord`] (the job, its cursor and counters);
//! - `executions`: `job \0 id` → [`Execution`]; ids sort by slot, so a prefix scan is oldest first;
//! - `active`: `job \0 id` → (), the pending and running executions (what the dispatcher and leases look at);
//! - `meta`: small singletons (pause flag, and the Raft wrapper's last-applied id and membership);
//! - `acl`: access-control tokens and policies and the index of token secret hashes (see [`crate::acl`]).
//!
//! [`Applier`] applies a batch of commands inside one write transaction and caches job records for the batch, so
//! a thousand fires of one entry cost one record write per job, not one per fire. Side effects that are local to
//! a node (deleting pruned output files, waking the scheduler) are returned as [`Event`]s, never done here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kairos_model::job::EXECUTIONS_RETAINED_DEFAULT;
use kairos_model::{Execution, ExecutionStatus, Job, OnOverload, Targets, Timestamp, Trigger};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::command::{Command, ExecRef, Expansion, Finish, Fire, Refusal, Response, Start};
use crate::outbox::OutboxEvent;

pub const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
pub const EXECUTIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("executions");
pub const ACTIVE: TableDefinition<&[u8], ()> = TableDefinition::new("active");
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub const ACL: TableDefinition<&str, &[u8]> = TableDefinition::new("acl");
pub const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
pub const AUDIT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("audit");
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

const META_PAUSED: &str = "paused";
/// The last job version handed out ([`JobRecord::version`]).
const META_JOB_VERSION: &str = "job_version";

/// Manual and child runs take the current millisecond as their slot; if it is taken, the next free one.
const FREE_SLOT_PROBES_MAX: i64 = 1000;

/// A job with the state the scheduler needs that is not part of the job's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: Job,
    /// The last scheduled instant decided for this job (fired, skipped or advanced past).
    pub cursor: Option<Timestamp>,
    /// Pending plus running executions.
    pub active: u32,
    /// Executions stored (any status).
    pub stored: u64,
    /// Changes with every put of the job's definition, never repeats across deletes and re-creations (it is drawn
    /// from one counter of the whole state), so a writer can ask to apply only over the version it read.
    #[serde(default)]
    pub version: u64,
    /// When the job's `missed` alert went out (it has not succeeded within `notify.alert_if_not_succeeded_within`);
    /// cleared by its next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_at: Option<Timestamp>,
}

/// Something a node may need to react to after a batch is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    JobChanged(String),
    JobDeleted(String),
    /// New pending executions exist (fires, retries, children).
    Pending,
    /// Executions that were removed (retention or delete); their local outputs can go.
    Pruned(Vec<ExecRef>),
    /// Running executions that should be cancelled where they run.
    Cancel(Vec<ExecRef>),
}

pub fn exec_key(job: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(job.len() + 1 + id.len());
    key.extend_from_slice(job.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The key range holding every execution of `job`.
fn job_range(job: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = job.as_bytes().to_vec();
    start.push(0);
    let mut end = job.as_bytes().to_vec();
    end.push(1);
    (start, end)
}

fn split_key(key: &[u8]) -> Option<ExecRef> {
    let pos = key.iter().position(|b| *b == 0)?;
    Some(ExecRef {
        job: String::from_utf8_lossy(&key[..pos]).into_owned(),
        id: String::from_utf8_lossy(&key[pos + 1..]).into_owned(),
    })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("state records always serialize")
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, redb::Error> {
    serde_json::from_slice(bytes).map_err(|e| redb::Error::Corrupted(format!("undecodable record: {e}")))
}

/// Ensure every table exists, so readers never meet a missing one.
pub fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(JOBS)?;
    txn.open_table(EXECUTIONS)?;
    txn.open_table(ACTIVE)?;
    txn.open_table(META)?;
    txn.open_table(ACL)?;
    txn.open_table(SECRETS)?;
    txn.open_table(AUDIT)?;
    txn.open_table(OUTBOX)?;
    txn.commit()?;
    Ok(())
}

/// Applies commands inside one write transaction.
pub struct Applier<'txn> {
    jobs: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) executions: Table<'txn, &'static [u8], &'static [u8]>,
    active: Table<'txn, &'static [u8], ()>,
    pub(crate) meta: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) acl: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) secrets: Table<'txn, &'static str, &'static [u8]>,
    pub(crate) audit: Table<'txn, &'static [u8], &'static [u8]>,
    pub(crate) outbox: Table<'txn, u64, &'static [u8]>,
    /// The outbox's next sequence number, once read in this batch (written back by [`Applier::finish`]).
    pub(crate) outbox_next: Option<u64>,
    /// Job records read or changed in this batch; `None` marks a deletion.
    cache: HashMap<String, Option<JobRecord>>,
    retained_default: u32,
    events: Vec<Event>,
}

impl<'txn> Applier<'txn> {
    pub fn new(txn: &'txn WriteTransaction, retained_default: u32) -> Result<Applier<'txn>, redb::Error> {
        Ok(Applier {
            jobs: txn.open_table(JOBS)?,
            executions: txn.open_table(EXECUTIONS)?,
            active: txn.open_table(ACTIVE)?,
            meta: txn.open_table(META)?,
            acl: txn.open_table(ACL)?,
            secrets: txn.open_table(SECRETS)?,
            audit: txn.open_table(AUDIT)?,
            outbox: txn.open_table(OUTBOX)?,
            outbox_next: None,
            cache: HashMap::new(),
            retained_default: if retained_default == 0 { EXECUTIONS_RETAINED_DEFAULT } else { retained_default },
            events: Vec::new(),
        })
    }

    /// Write the cached job records and hand back the events of the batch.
    pub fn finish(mut self) -> Result<Vec<Event>, redb::Error> {
        self.outbox_flush()?;
        for (name, record) in std::mem::take(&mut self.cache) {
            match record {
                Some(record) => {
                    self.jobs.insert(name.as_str(), encode(&record).as_slice())?;
                }
                None => {
                    self.jobs.remove(name.as_str())?;
                }
            }
        }
        Ok(self.events)
    }

    pub fn apply(&mut self, command: &Command) -> Result<Response, redb::Error> {
        match command {
            Command::PutJob { job, now, expect_version } => self.put_job(job, *now, *expect_version),
            Command::RestoreJobs { jobs, now } => self.restore(jobs, *now),
            Command::DeleteJob { name } => self.delete_job(name),
            Command::SetPaused { paused } => {
                self.meta.insert(META_PAUSED, encode(paused).as_slice())?;
                Ok(Response { paused: Some(*paused), ..Response::default() })
            }
            Command::Fire { fires } => self.fire_all(fires),
            Command::Advance { job, cursor } => {
                if let Some(mut record) = self.record(job)? {
                    record.cursor = record.cursor.max(Some(*cursor));
                    self.cache.insert(job.clone(), Some(record));
                }
                Ok(Response::default())
            }
            Command::Expand { expansions } => self.expand_all(expansions),
            Command::Start { starts } => self.start_all(starts),
            Command::Renew { renewals, lease_until } => self.renew(renewals, *lease_until),
            Command::Finish { results } => self.finish_all(results),
            Command::DeleteExecutions { job } => self.delete_executions(job),
            Command::AclBootstrap { token } => self.acl_bootstrap(token),
            Command::AclPutToken { token } => self.acl_put_token(token),
            Command::AclDeleteToken { accessor_id } => self.acl_delete_token(accessor_id),
            Command::AclPutPolicy { policy } => self.acl_put_policy(policy),
            Command::AclDeletePolicy { name } => self.acl_delete_policy(name),
            Command::SecretPut { name, value, at } => self.secret_put(name, value.expose(), *at),
            Command::SecretDelete { name } => self.secret_delete(name),
            Command::Audit { records, keep } => self.audit(records, *keep),
            Command::Notified { upto, records, alerts } => self.notified(*upto, records, alerts),
        }
    }

    pub(crate) fn record(&mut self, name: &str) -> Result<Option<JobRecord>, redb::Error> {
        if let Some(cached) = self.cache.get(name) {
            return Ok(cached.clone());
        }
        let record = match self.jobs.get(name)? {
            Some(bytes) => Some(decode::<JobRecord>(bytes.value())?),
            None => None,
        };
        self.cache.insert(name.to_string(), record.clone());
        Ok(record)
    }

    pub(crate) fn store(&mut self, record: JobRecord) {
        self.cache.insert(record.job.name.clone(), Some(record));
    }

    fn put_job(&mut self, job: &Job, now: Timestamp, expect_version: Option<u64>) -> Result<Response, redb::Error> {
        let previous = self.record(&job.name)?;
        if let Some(expected) = expect_version {
            let actual = previous.as_ref().map_or(0, |p| p.version);
            if actual != expected {
                let what = if actual == 0 { "was deleted" } else { "was changed" };
                return Ok(Response::refused(Refusal::Conflict(format!(
                    "job '{}' {what} by another request while this one was applied; read it again and retry",
                    job.name
                ))));
            }
        }
        if let Some(refusal) = self.check_parent(job)? {
            return Ok(Response::refused(refusal));
        }
        if let Some(refusal) = self.check_secret_references(job)? {
            return Ok(Response::refused(refusal));
        }
        let version = self.next_job_version()?;
        let mut stored = job.clone();
        let record = match previous {
            Some(prev) => {
                let mut cursor = prev.cursor;
                // A new schedule must not catch up on its own past, and slots passed while the job was disabled
                // were never due: either way the job starts afresh from now.
                let rescheduled = prev.job.schedule != job.schedule || prev.job.timezone != job.timezone;
                let enabled = prev.job.disabled && !job.disabled;
                if rescheduled || enabled {
                    cursor = cursor.max(Some(now));
                }
                carry_derived_fields(&prev.job, &mut stored);
                stored.updated_at = Some(now);
                if prev.job.parent_job != job.parent_job {
                    self.unlink_child(&prev.job.parent_job, &job.name)?;
                }
                JobRecord {
                    job: stored,
                    cursor,
                    active: prev.active,
                    stored: prev.stored,
                    version,
                    missed_at: prev.missed_at,
                }
            }
            None => {
                stored.created_at = Some(now);
                stored.updated_at = Some(now);
                stored.dependent_jobs = Vec::new();
                JobRecord { job: stored, cursor: Some(now), active: 0, stored: 0, version, missed_at: None }
            }
        };
        self.link_child(&record.job.parent_job, &record.job.name)?;
        let (job, cursor) = (record.job.clone(), record.cursor);
        self.store(record);
        self.events.push(Event::JobChanged(job.name.clone()));
        Ok(Response { job: Some(job), cursor, ..Response::default() })
    }

    fn next_job_version(&mut self) -> Result<u64, redb::Error> {
        let last = match self.meta.get(META_JOB_VERSION)? {
            Some(bytes) => decode::<u64>(bytes.value())?,
            None => 0,
        };
        let next = last + 1;
        self.meta.insert(META_JOB_VERSION, encode(&next).as_slice())?;
        Ok(next)
    }

    /// A parent must exist and must not descend from the child (no cycles).
    fn check_parent(&mut self, job: &Job) -> Result<Option<Refusal>, redb::Error> {
        let mut ancestor = job.parent_job.clone();
        let mut hops = 0;
        while !ancestor.is_empty() {
            if ancestor == job.name {
                return Ok(Some(Refusal::Invalid {
                    field: "parent_job".into(),
                    message: format!("'{}' would make a cycle of parent jobs", job.parent_job),
                }));
            }
            let Some(record) = self.record(&ancestor)? else {
                let message = format!("parent job '{ancestor}' does not exist");
                return Ok(Some(Refusal::Invalid { field: "parent_job".into(), message }));
            };
            ancestor = record.job.parent_job;
            hops += 1;
            assert!(hops < 1_000_000, "parent chain longer than the job table");
        }
        Ok(None)
    }

    fn link_child(&mut self, parent: &str, child: &str) -> Result<(), redb::Error> {
        if parent.is_empty() {
            return Ok(());
        }
        if let Some(mut record) = self.record(parent)?
            && !record.job.dependent_jobs.iter().any(|c| c == child)
        {
            record.job.dependent_jobs.push(child.to_string());
            record.job.dependent_jobs.sort();
            self.store(record);
        }
        Ok(())
    }

    fn unlink_child(&mut self, parent: &str, child: &str) -> Result<(), redb::Error> {
        if parent.is_empty() {
            return Ok(());
        }
        if let Some(mut record) = self.record(parent)? {
            record.job.dependent_jobs.retain(|c| c != child);
            self.store(record);
        }
        Ok(())
    }

    /// All jobs or none: putting a job only touches the record cache and the events, so a refusal rolls back by
    /// restoring both.
    fn restore(&mut self, jobs: &[Job], now: Timestamp) -> Result<Response, redb::Error> {
        let saved = (self.cache.clone(), self.events.len());
        let mut last = Response::default();
        for job in jobs {
            last = self.put_job(job, now, None)?;
            if last.refusal.is_some() {
                self.cache = saved.0;
                self.events.truncate(saved.1);
                return Ok(last);
            }
        }
        Ok(last)
    }

    fn delete_job(&mut self, name: &str) -> Result<Response, redb::Error> {
        let Some(record) = self.record(name)? else {
            return Ok(Response::refused(Refusal::NotFound(format!("job '{name}' not found"))));
        };
        if !record.job.dependent_jobs.is_empty() {
            return Ok(Response::refused(Refusal::Conflict(format!(
                "job '{name}' has dependent jobs ({}); delete or re-parent them first",
                record.job.dependent_jobs.join(", ")
            ))));
        }
        self.unlink_child(&record.job.parent_job, name)?;
        let (start, end) = job_range(name);
        let keys: Vec<Vec<u8>> = self
            .executions
            .range(start.as_slice()..end.as_slice())?
            .map(|item| item.map(|(k, _)| k.value().to_vec()))
            .collect::<Result<_, _>>()?;
        let mut removed = Vec::with_capacity(keys.len());
        let mut active = Vec::new();
        for key in keys {
            self.executions.remove(key.as_slice())?;
            if self.active.remove(key.as_slice())?.is_some() {
                active.extend(split_key(&key));
            }
            removed.extend(split_key(&key));
        }
        self.cache.insert(name.to_string(), None);
        if !active.is_empty() {
            self.events.push(Event::Cancel(active));
        }
        if !removed.is_empty() {
            self.events.push(Event::Pruned(removed));
        }
        self.events.push(Event::JobDeleted(name.to_string()));
        Ok(Response { job: Some(record.job), ..Response::default() })
    }

    fn fire_all(&mut self, fires: &[Fire]) -> Result<Response, redb::Error> {
        let mut response = Response::default();
        for fire in fires {
            self.fire(fire, &mut response)?;
        }
        Ok(response)
    }

    fn fire(&mut self, fire: &Fire, response: &mut Response) -> Result<(), redb::Error> {
        let Some(mut record) = self.record(&fire.job)? else {
            return Ok(());
        };
        let slot = match fire.trigger {
            Trigger::Schedule | Trigger::CatchUp => {
                if record.cursor.is_some_and(|c| fire.scheduled_at <= c) {
                    return Ok(()); // already decided: a duplicate proposal of the same slot
                }
                record.cursor = Some(fire.scheduled_at);
                if record.job.disabled {
                    self.store(record);
                    return Ok(());
                }
                fire.scheduled_at
            }
            Trigger::Manual | Trigger::Parent | Trigger::Retry => self.free_slot(&fire.job, fire.scheduled_at)?,
        };
        let mut exec = Execution::decided(&fire.job, slot, fire.trigger);
        if fire.trigger == Trigger::Schedule {
            // A slot may be decided ahead of its instant; it must not start before it.
            exec.not_before = Some(slot);
        }
        if record.active > 0 {
            match record.job.concurrency {
                kairos_model::Concurrency::Allow => {}
                kairos_model::Concurrency::Forbid => {
                    exec.status = ExecutionStatus::Skipped;
                    exec.finished_at = Some(slot);
                    exec.error = Some("skipped: an earlier execution is still active (concurrency: forbid)".into());
                }
                kairos_model::Concurrency::Replace => {
                    let cancelled = self.cancel_active(&mut record, slot)?;
                    response.to_cancel.extend(cancelled);
                }
            }
        }
        self.insert_execution(&mut record, &exec)?;
        if exec.status == ExecutionStatus::Skipped {
            self.outbox_push(&exec, OutboxEvent::Finished)?;
        }
        self.store(record);
        response.executions.push(exec);
        Ok(())
    }

    /// The first millisecond at or after `at` that no stored execution of the job uses as its slot, so a run
    /// started by hand (and its retries) never meets another run's ids, even ones pruned from attempt 1 only.
    fn free_slot(&mut self, job: &str, at: Timestamp) -> Result<Timestamp, redb::Error> {
        let mut ms = at.as_millisecond();
        for _ in 0..FREE_SLOT_PROBES_MAX {
            let slot = Timestamp::from_millisecond(ms).expect("slot within range");
            let start = exec_key(job, &kairos_model::slot_prefix(slot));
            let mut end = start.clone();
            *end.last_mut().expect("prefix ends with '-'") += 1;
            if self.executions.range(start.as_slice()..end.as_slice())?.next().is_none() {
                return Ok(slot);
            }
            ms += 1;
        }
        Ok(Timestamp::from_millisecond(ms).expect("slot within range"))
    }

    /// Pending executions of the job become cancelled at once; running ones are returned for the node to stop.
    fn cancel_active(&mut self, record: &mut JobRecord, now: Timestamp) -> Result<Vec<ExecRef>, redb::Error> {
        let (start, end) = job_range(&record.job.name);
        let keys: Vec<Vec<u8>> = self
            .active
            .range(start.as_slice()..end.as_slice())?
            .map(|item| item.map(|(k, _)| k.value().to_vec()))
            .collect::<Result<_, _>>()?;
        let mut running = Vec::new();
        for key in keys {
            let Some(mut exec) = self.execution(&key)? else {
                continue;
            };
            if exec.status == ExecutionStatus::Pending {
                exec.status = ExecutionStatus::Cancelled;
                exec.finished_at = Some(now);
                exec.error = Some("cancelled: replaced by a newer execution (concurrency: replace)".into());
                self.executions.insert(key.as_slice(), encode(&exec).as_slice())?;
                self.active.remove(key.as_slice())?;
                record.active = record.active.saturating_sub(1);
            } else {
                running.push(ExecRef { job: exec.job_name, id: exec.id });
            }
        }
        if !running.is_empty() {
            self.events.push(Event::Cancel(running.clone()));
        }
        Ok(running)
    }

    pub(crate) fn execution(&self, key: &[u8]) -> Result<Option<Execution>, redb::Error> {
        match self.executions.get(key)? {
            Some(bytes) => Ok(Some(decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Store a new execution. Ids are unique by construction; one that exists anyway is never overwritten.
    fn insert_execution(&mut self, record: &mut JobRecord, exec: &Execution) -> Result<(), redb::Error> {
        let key = exec_key(&exec.job_name, &exec.id);
        if self.executions.get(key.as_slice())?.is_some() {
            return Ok(());
        }
        self.executions.insert(key.as_slice(), encode(exec).as_slice())?;
        record.stored += 1;
        if exec.status.is_active() {
            self.active.insert(key.as_slice(), ())?;
            record.active += 1;
            record.job.status = "running".into();
            self.events.push(Event::Pending);
        }
        self.prune(record)
    }

    /// Keep at most the job's retained number of executions, dropping the oldest finished ones.
    fn prune(&mut self, record: &mut JobRecord) -> Result<(), redb::Error> {
        let retained = u64::from(record.job.executions_retained.unwrap_or(self.retained_default));
        if record.stored <= retained {
            return Ok(());
        }
        let excess = record.stored - retained;
        let (start, end) = job_range(&record.job.name);
        let mut doomed = Vec::new();
        for item in self.executions.range(start.as_slice()..end.as_slice())? {
            let (key, value) = item?;
            let exec: Execution = decode(value.value())?;
            if !exec.status.is_active() {
                doomed.push(key.value().to_vec());
                if doomed.len() as u64 >= excess {
                    break;
                }
            }
        }
        let mut pruned = Vec::with_capacity(doomed.len());
        for key in doomed {
            self.executions.remove(key.as_slice())?;
            record.stored -= 1;
            pruned.extend(split_key(&key));
        }
        if !pruned.is_empty() {
            self.events.push(Event::Pruned(pruned));
        }
        Ok(())
    }

    fn expand_all(&mut self, expansions: &[Expansion]) -> Result<Response, redb::Error> {
        let mut response = Response::default();
        for expansion in expansions {
            self.expand(expansion, &mut response)?;
        }
        Ok(response)
    }

    /// A pending execution of a job that runs on several nodes becomes one pinned copy per target. Only a
    /// pending original is expanded: a cancelled one, or one a previous leader expanded already, stays as it is.
    fn expand(&mut self, expansion: &Expansion, response: &mut Response) -> Result<(), redb::Error> {
        let key = exec_key(&expansion.exec.job, &expansion.exec.id);
        let Some(exec) = self.execution(&key)? else {
            return Ok(());
        };
        if exec.status != ExecutionStatus::Pending || exec.is_copy() || expansion.targets.is_empty() {
            return Ok(());
        }
        let Some(mut record) = self.record(&exec.job_name)? else {
            return Ok(());
        };
        self.executions.remove(key.as_slice())?;
        self.active.remove(key.as_slice())?;
        record.stored = record.stored.saturating_sub(1);
        record.active = record.active.saturating_sub(1);
        for copy in exec.copies(&expansion.targets) {
            self.insert_execution(&mut record, &copy)?;
            response.executions.push(copy);
        }
        self.store(record);
        Ok(())
    }

    /// Whether every copy of the slot of `exec` (a copy) has finished, each with a success at its last attempt.
    fn copies_succeeded(&self, exec: &Execution) -> Result<bool, redb::Error> {
        let start = exec_key(&exec.job_name, &kairos_model::slot_prefix(exec.scheduled_at));
        let mut end = start.clone();
        *end.last_mut().expect("prefix ends with '-'") += 1;
        let mut last: HashMap<String, (u32, ExecutionStatus)> = HashMap::new();
        for item in self.executions.range(start.as_slice()..end.as_slice())? {
            let copy: Execution = decode(item?.1.value())?;
            let target = kairos_model::target_of(&copy.id).unwrap_or_default().to_string();
            let entry = last.entry(target).or_insert((0, ExecutionStatus::Pending));
            if copy.attempt >= entry.0 {
                *entry = (copy.attempt, copy.status);
            }
        }
        Ok(last.values().all(|(_, status)| *status == ExecutionStatus::Succeeded))
    }

    fn start_all(&mut self, starts: &[Start]) -> Result<Response, redb::Error> {
        let mut response = Response::default();
        for start in starts {
            let key = exec_key(&start.exec.job, &start.exec.id);
            let Some(mut exec) = self.execution(&key)? else {
                continue;
            };
            if exec.status == ExecutionStatus::Running && exec.node_name == start.node {
                // The same start again (a report retried through another server after a timeout): still accepted,
                // so the node keeps running it.
                response.executions.push(exec);
                continue;
            }
            if exec.status != ExecutionStatus::Pending {
                continue; // cancelled or started elsewhere: the caller must not (keep) run(ning) it
            }
            exec.status = ExecutionStatus::Running;
            exec.started_at = Some(start.started_at);
            exec.node_name = start.node.clone();
            exec.lease_until = Some(start.lease_until);
            self.executions.insert(key.as_slice(), encode(&exec).as_slice())?;
            self.outbox_push(&exec, OutboxEvent::Started)?;
            response.executions.push(exec);
        }
        Ok(response)
    }

    fn renew(&mut self, renewals: &[ExecRef], lease_until: Timestamp) -> Result<Response, redb::Error> {
        for exec_ref in renewals {
            let key = exec_key(&exec_ref.job, &exec_ref.id);
            let Some(mut exec) = self.execution(&key)? else {
                continue;
            };
            if exec.status == ExecutionStatus::Running && exec.lease_until < Some(lease_until) {
                exec.lease_until = Some(lease_until);
                self.executions.insert(key.as_slice(), encode(&exec).as_slice())?;
            }
        }
        Ok(Response::default())
    }

    fn finish_all(&mut self, results: &[Finish]) -> Result<Response, redb::Error> {
        let mut response = Response::default();
        for result in results {
            self.finish_one(result, &mut response)?;
        }
        Ok(response)
    }

    fn finish_one(&mut self, result: &Finish, response: &mut Response) -> Result<(), redb::Error> {
        assert!(!result.status.is_active(), "a finish must carry a final status");
        let key = exec_key(&result.exec.job, &result.exec.id);
        let Some(mut exec) = self.execution(&key)? else {
            return Ok(());
        };
        if !exec.status.is_active() {
            return Ok(()); // already final: a repeated report
        }
        if result.only_if_lease_expired
            && exec.status == ExecutionStatus::Running
            && exec.lease_until.is_some_and(|lease| lease > result.finished_at)
        {
            return Ok(()); // renewed meanwhile: the node is alive after all
        }
        let Some(mut record) = self.record(&result.exec.job)? else {
            return Ok(());
        };
        exec.status = result.status;
        exec.success = result.status == ExecutionStatus::Succeeded;
        exec.finished_at = Some(result.finished_at);
        exec.exit_code = result.exit_code;
        exec.error = result.error.clone();
        exec.output = result.output_tail.clone();
        exec.output_bytes = result.output_bytes;
        exec.lease_until = None;
        if exec.node_name.is_empty() {
            exec.node_name = result.node.clone();
        }
        if exec.started_at.is_none() && result.started_at.is_some() {
            // A run too short for a separate start report: its start notifies just before its finish.
            exec.started_at = result.started_at;
            self.outbox_push(&exec, OutboxEvent::Started)?;
        } else if result.started_at > exec.started_at && result.node == exec.node_name {
            // Its node launched it after the start recorded: a leader records the start of its own runs before it
            // launches them; the record keeps when the run truly started.
            exec.started_at = result.started_at;
        }
        self.executions.insert(key.as_slice(), encode(&exec).as_slice())?;
        self.outbox_push(&exec, OutboxEvent::Finished)?;
        self.active.remove(key.as_slice())?;
        record.active = record.active.saturating_sub(1);
        count_result(&mut record.job, &exec);
        if record.active > 0 {
            record.job.status = "running".into();
        }
        response.executions.push(exec.clone());
        self.follow_up(record, &exec, result.retry_at, response)
    }

    /// After a final status: a retry if the attempt failed (or found its node too busy, under `on_overload:
    /// retry`) and retries remain, children and ephemeral deletion if it succeeded.
    fn follow_up(
        &mut self,
        mut record: JobRecord,
        exec: &Execution,
        retry_at: Option<Timestamp>,
        response: &mut Response,
    ) -> Result<(), redb::Error> {
        // A finish reported `skipped` is always a node that was too busy to run it (slots a job's concurrency
        // skips are decided so when they fire, never reported): retried only if the job says so.
        let too_busy = exec.status == ExecutionStatus::Skipped && record.job.on_overload == OnOverload::Retry;
        let failed = matches!(exec.status, ExecutionStatus::Failed | ExecutionStatus::Lost) || too_busy;
        if failed && exec.attempt <= record.job.retries {
            let mut retry = exec.retry(retry_at.unwrap_or(exec.finished_at.unwrap_or(exec.scheduled_at)));
            if matches!(record.job.targets(), Targets::Count(_)) {
                // "Run on N nodes": the retry may run on any matching node that does not run this slot already.
                // A job that runs on every matching node keeps each copy on its own node.
                retry.target = None;
            }
            self.insert_execution(&mut record, &retry)?;
            response.executions.push(retry);
        }
        // Children and ephemeral deletion follow the whole slot: for copies, once the last one has succeeded.
        let succeeded =
            exec.status == ExecutionStatus::Succeeded && (!exec.is_copy() || self.copies_succeeded(exec)?);
        let children = record.job.dependent_jobs.clone();
        let ephemeral = record.job.ephemeral && children.is_empty();
        let name = record.job.name.clone();
        self.store(record);
        if succeeded {
            let at = exec.finished_at.unwrap_or(exec.scheduled_at);
            for child in children {
                self.fire(&Fire { job: child, scheduled_at: at, trigger: Trigger::Parent }, response)?;
            }
            if ephemeral {
                self.delete_job(&name)?;
            }
        }
        Ok(())
    }

    fn delete_executions(&mut self, job: &str) -> Result<Response, redb::Error> {
        let Some(mut record) = self.record(job)? else {
            return Ok(Response::refused(Refusal::NotFound(format!("job '{job}' not found"))));
        };
        let (start, end) = job_range(job);
        let mut doomed = Vec::new();
        for item in self.executions.range(start.as_slice()..end.as_slice())? {
            let (key, value) = item?;
            let exec: Execution = decode(value.value())?;
            if !exec.status.is_active() {
                doomed.push(key.value().to_vec());
            }
        }
        let mut pruned = Vec::with_capacity(doomed.len());
        for key in doomed {
            self.executions.remove(key.as_slice())?;
            record.stored -= 1;
            pruned.extend(split_key(&key));
        }
        self.events.push(Event::Pruned(pruned));
        let job = record.job.clone();
        self.store(record);
        Ok(Response { job: Some(job), ..Response::default() })
    }
}

/// Fields the server maintains survive an update of the job by a client.
fn carry_derived_fields(prev: &Job, next: &mut Job) {
    next.success_count = prev.success_count;
    next.error_count = prev.error_count;
    next.last_success = prev.last_success;
    next.last_error = prev.last_error;
    next.status = prev.status.clone();
    next.dependent_jobs = prev.dependent_jobs.clone();
    next.created_at = prev.created_at;
}

fn count_result(job: &mut Job, exec: &Execution) {
    let at = exec.finished_at;
    match exec.status {
        ExecutionStatus::Succeeded => {
            job.success_count += 1;
            job.last_success = at;
            job.status = "success".into();
        }
        ExecutionStatus::Failed | ExecutionStatus::Lost | ExecutionStatus::Cancelled => {
            job.error_count += 1;
            job.last_error = at;
            job.status = "failed".into();
        }
        ExecutionStatus::Skipped | ExecutionStatus::Pending | ExecutionStatus::Running => {}
    }
}

/// Upper bound on cached job definitions; past it the cache starts over (it refills from disk on demand).
const DEFINITIONS_CACHED_MAX: usize = 100_000;

/// Job definitions (what to run and how) by name, for the dispatch hot path: a thousand runs a second should not
/// decode a thousand job records. Entries are dropped by the state machine when a job is put or deleted, before
/// the command's proposer hears back, so a dispatch after a committed change never sees the old definition.
/// Derived fields (counters, status) of a cached job may be stale; only its definition is meant to be read.
#[derive(Default)]
pub struct Definitions {
    jobs: std::sync::Mutex<HashMap<String, Arc<Job>>>,
}

impl Definitions {
    pub fn forget(&self, name: &str) {
        self.jobs.lock().expect("definitions lock").remove(name);
    }

    pub fn jobs_clear(&self) {
        self.jobs.lock().expect("definitions lock").clear();
    }
}

/// Read access to the state, from an MVCC snapshot: readers never block the applier.
#[derive(Clone)]
pub struct StateReader {
    pub(crate) db: Arc<Database>,
    definitions: Arc<Definitions>,
}

impl StateReader {
    pub fn new(db: Arc<Database>, definitions: Arc<Definitions>) -> StateReader {
        StateReader { db, definitions }
    }

    /// The job's definition, from the cache when possible (see [`Definitions`]).
    pub fn definition(&self, name: &str) -> Result<Option<Arc<Job>>, redb::Error> {
        if let Some(job) = self.definitions.jobs.lock().expect("definitions lock").get(name) {
            return Ok(Some(job.clone()));
        }
        let Some(record) = self.job(name)? else { return Ok(None) };
        let job = Arc::new(record.job);
        let mut jobs = self.definitions.jobs.lock().expect("definitions lock");
        if jobs.len() >= DEFINITIONS_CACHED_MAX {
            jobs.clear();
        }
        jobs.insert(name.to_string(), job.clone());
        Ok(Some(job))
    }

    pub fn job(&self, name: &str) -> Result<Option<JobRecord>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        match table.get(name)? {
            Some(bytes) => Ok(Some(decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    pub fn job_count(&self) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(JOBS)?.len()?)
    }

    /// Visit every job record in name order; the visitor returns false to stop.
    pub fn for_each_job(&self, mut visit: impl FnMut(JobRecord) -> bool) -> Result<(), redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        for item in table.iter()? {
            let (_, value) = item?;
            if !visit(decode(value.value())?) {
                break;
            }
        }
        Ok(())
    }

    /// One page of jobs in name order (reversed if `desc`) and the total count, decoding only the page: skipping
    /// walks keys, so the first pages of a million jobs come back in milliseconds.
    pub fn job_page(&self, start: usize, end: usize, desc: bool) -> Result<(Vec<JobRecord>, u64), redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        let total = table.len()?;
        let take = end.saturating_sub(start);
        let mut page = Vec::with_capacity(take.min(10_000));
        let iter = table.iter()?;
        let items: Box<dyn Iterator<Item = _>> = if desc { Box::new(iter.rev()) } else { Box::new(iter) };
        for item in items.skip(start).take(take) {
            page.push(decode(item?.1.value())?);
        }
        Ok((page, total))
    }

    pub fn execution(&self, job: &str, id: &str) -> Result<Option<Execution>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EXECUTIONS)?;
        match table.get(exec_key(job, id).as_slice())? {
            Some(bytes) => Ok(Some(decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every execution of a job, oldest slot first.
    pub fn executions(&self, job: &str) -> Result<Vec<Execution>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EXECUTIONS)?;
        let (start, end) = job_range(job);
        let mut out = Vec::new();
        for item in table.range(start.as_slice()..end.as_slice())? {
            out.push(decode(item?.1.value())?);
        }
        Ok(out)
    }

    /// Every pending or running execution, across jobs.
    pub fn active(&self) -> Result<Vec<Execution>, redb::Error> {
        let txn = self.db.begin_read()?;
        let active = txn.open_table(ACTIVE)?;
        let executions = txn.open_table(EXECUTIONS)?;
        let mut out = Vec::new();
        for item in active.iter()? {
            let (key, _) = item?;
            if let Some(bytes) = executions.get(key.value())? {
                out.push(decode(bytes.value())?);
            }
        }
        Ok(out)
    }

    pub fn paused(&self) -> Result<bool, redb::Error> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        match meta.get(META_PAUSED)? {
            Some(bytes) => decode(bytes.value()),
            None => Ok(false),
        }
    }

    /// Count of stored executions per status for one job (used by tests and stats).
    pub fn status_counts(&self, job: &str) -> Result<BTreeMap<&'static str, u64>, redb::Error> {
        let mut counts = BTreeMap::new();
        for exec in self.executions(job)? {
            *counts.entry(exec.status.as_str()).or_insert(0) += 1;
        }
        Ok(counts)
    }
}
