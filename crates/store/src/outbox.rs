//! The notification outbox in the replicated state: the `outbox` table maps a sequence number (big-endian, so the
//! table is in commit order) to an [`OutboxEntry`], one per execution that started or reached a final status.
//! The leader's notifier reads it in order, sends what the job's rules and the node's flags ask for, and commits
//! [`Command::Notified`](crate::Command::Notified): the delivery records go onto the executions and the entries up
//! to the last one handled leave the outbox. A leader that dies leaves its unfinished entries for the next one, so
//! a notification is sent at least once, and twice only when a leader dies between a delivery and its record.
//!
//! The outbox keeps at most [`OUTBOX_MAX`] entries: past that (no leader drained it for a long while, or receivers
//! slower than the runs) the oldest are dropped, and the notifier reports the gap.

use kairos_model::execution::{Delivery, NOTIFICATIONS_RECORDED_MAX};
use kairos_model::{Execution, Timestamp};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use crate::command::{ExecRef, Response};
use crate::state::{Applier, OUTBOX, StateReader, decode, encode, exec_key};

const META_OUTBOX_NEXT: &str = "outbox_next";
/// Entries the outbox holds at most; the oldest go first.
pub const OUTBOX_MAX: u64 = 100_000;

/// What happened to an execution that may notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxEvent {
    Started,
    Finished,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub seq: u64,
    pub exec: ExecRef,
    pub event: OutboxEvent,
}

/// The outcome of one delivery, for [`Command::Notified`](crate::Command::Notified).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub exec: ExecRef,
    pub delivery: Delivery,
}

/// A job's `missed` alert raised (`missed_at` set) or ended by a success (`None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissedAlert {
    pub job: String,
    pub missed_at: Option<Timestamp>,
}

impl Applier<'_> {
    /// Put `exec`'s event in the outbox.
    pub(crate) fn outbox_push(&mut self, exec: &Execution, event: OutboxEvent) -> Result<(), redb::Error> {
        let next: u64 = match self.meta.get(META_OUTBOX_NEXT)? {
            Some(bytes) => decode(bytes.value())?,
            None => 1,
        };
        let exec = ExecRef { job: exec.job_name.clone(), id: exec.id.clone() };
        let entry = OutboxEntry { seq: next, exec, event };
        self.outbox.insert(next, encode(&entry).as_slice())?;
        self.meta.insert(META_OUTBOX_NEXT, encode(&(next + 1)).as_slice())?;
        if self.outbox.len()? > OUTBOX_MAX {
            self.outbox.pop_first()?;
        }
        Ok(())
    }

    /// Record deliveries on their executions, end or raise `missed` alerts, and drop outbox entries up to `upto`.
    pub(crate) fn notified(
        &mut self,
        upto: u64,
        records: &[DeliveryRecord],
        alerts: &[MissedAlert],
    ) -> Result<Response, redb::Error> {
        for record in records {
            let key = exec_key(&record.exec.job, &record.exec.id);
            let Some(mut exec) = self.execution(&key)? else { continue };
            if exec.notifications.len() < NOTIFICATIONS_RECORDED_MAX {
                exec.notifications.push(record.delivery.clone());
                self.executions.insert(key.as_slice(), encode(&exec).as_slice())?;
            }
        }
        for alert in alerts {
            if let Some(mut job) = self.record(&alert.job)? {
                job.missed_at = alert.missed_at;
                self.store(job);
            }
        }
        while self.outbox.first()?.is_some_and(|(seq, _)| seq.value() <= upto) {
            self.outbox.pop_first()?;
        }
        Ok(Response::default())
    }
}

impl StateReader {
    /// Entries waiting in the outbox.
    pub fn outbox_len(&self) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OUTBOX)?.len()?)
    }

    /// Up to `max` outbox entries from sequence number `from` on, oldest first.
    pub fn outbox(&self, from: u64, max: usize) -> Result<Vec<OutboxEntry>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut entries = Vec::new();
        for item in table.range(from..)?.take(max) {
            entries.push(decode(item?.1.value())?);
        }
        Ok(entries)
    }
}
