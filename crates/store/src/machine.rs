//! The Raft state machine: applies committed [`Command`]s to the redb state file and builds and installs
//! snapshots.
//!
//! Each `apply` call is one redb transaction holding every entry of the batch plus the last-applied id and
//! membership, so the state and its position in the log never disagree after a crash. Events of the batch go to
//! the node after the commit. Snapshots are a dump of every table taken from an MVCC read snapshot (applying
//! continues meanwhile), written to `snapshot/current` next to the state file.

use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::command::Response;
use crate::state::{
    ACL, ACTIVE, AUDIT, Applier, Definitions, EXECUTIONS, Event, JOBS, META, OUTBOX, SECRETS, StateReader,
    create_tables,
};
use crate::{TypeConfig, from_json, io_err, to_json};

/// Page cache of the state file: bounds memory with a million jobs (redb's default is 1 GiB).
const STATE_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Every this many applied batches, one commit is made durable (fsync'd) so redb can reclaim pages; the others
/// are not fsync'd because the Raft log already holds every applied entry durably: after a crash, openraft
/// re-applies the log from the last durable `last_applied`.
const DURABLE_EVERY_BATCHES: u64 = 64;

/// Raft bookkeeping lives in its own table so snapshots of the data tables need not filter it.
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    snapshot_dir: PathBuf,
    retained_default: u32,
    events: Option<UnboundedSender<Vec<Event>>>,
    batches_applied: Arc<AtomicU64>,
    definitions: Arc<Definitions>,
}

/// Rows of every data table: (table, key, value), all UTF-8 in our encoding.
#[derive(Serialize, Deserialize, Default)]
struct Dump {
    jobs: Vec<(String, String)>,
    executions: Vec<(String, String)>,
    active: Vec<String>,
    meta: Vec<(String, String)>,
    /// Absent in snapshots taken before access control existed.
    #[serde(default)]
    acl: Vec<(String, String)>,
    /// Absent in snapshots taken before secrets existed.
    #[serde(default)]
    secrets: Vec<(String, String)>,
    /// Absent in snapshots taken before the audit log existed; keys are sequence numbers.
    #[serde(default)]
    audit: Vec<(u64, String)>,
    /// Absent in snapshots taken before the notification outbox existed.
    #[serde(default)]
    outbox: Vec<(u64, String)>,
}

impl StateMachine {
    /// Open (or create) the state file. `events` receives the side effects of every applied batch.
    pub fn open(
        path: &Path,
        retained_default: u32,
        events: Option<UnboundedSender<Vec<Event>>>,
    ) -> io::Result<StateMachine> {
        let db = Database::builder().set_cache_size(STATE_CACHE_BYTES).create(path).map_err(io_err)?;
        create_tables(&db).map_err(io_err)?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(RAFT_META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        let snapshot_dir = path.parent().unwrap_or(Path::new(".")).join("snapshot");
        std::fs::create_dir_all(&snapshot_dir)?;
        Ok(StateMachine {
            db: Arc::new(db),
            snapshot_dir,
            retained_default,
            events,
            batches_applied: Arc::new(AtomicU64::new(0)),
            definitions: Arc::new(Definitions::default()),
        })
    }

    pub fn reader(&self) -> StateReader {
        StateReader::new(self.db.clone(), self.definitions.clone())
    }

    fn read_raft_meta<T: serde::de::DeserializeOwned>(txn: &ReadTransaction, key: &str) -> io::Result<Option<T>> {
        let table = txn.open_table(RAFT_META).map_err(io_err)?;
        match table.get(key).map_err(io_err)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(from_json(bytes.value())?)),
        }
    }

    /// An empty fsync'd commit persists every earlier non-durable commit.
    pub fn make_durable(&self) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.commit().map_err(io_err)
    }

    fn write_snapshot_files(&self, meta: &SnapshotMetaOf<TypeConfig>, data: &[u8]) -> io::Result<()> {
        // One file, meta line first, so a crash can never pair one snapshot's meta with another's data.
        let mut bytes = to_json(meta)?;
        bytes.push(b'\n');
        bytes.extend_from_slice(data);
        write_atomically(&self.snapshot_dir.join("current"), &bytes)
    }

    fn apply_batch(&self, items: Vec<EntryResponder<TypeConfig>>) -> io::Result<Vec<Event>> {
        let mut replies = Vec::with_capacity(items.len());
        let mut txn = self.db.begin_write().map_err(io_err)?;
        if !self.batches_applied.fetch_add(1, Ordering::Relaxed).is_multiple_of(DURABLE_EVERY_BATCHES) {
            txn.set_durability(Durability::None).map_err(io_err)?;
        }
        let events = {
            let mut applier = Applier::new(&txn, self.retained_default).map_err(io_err)?;
            let mut raft_meta = txn.open_table(RAFT_META).map_err(io_err)?;
            let mut last_applied = None;
            for (entry, responder) in items {
                let response = match entry.payload {
                    EntryPayload::Blank => Response::default(),
                    EntryPayload::Normal(command) => applier.apply(&command).map_err(io_err)?,
                    EntryPayload::Membership(membership) => {
                        let stored = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), membership);
                        raft_meta.insert("membership", to_json(&stored)?.as_slice()).map_err(io_err)?;
                        Response::default()
                    }
                };
                last_applied = Some(entry.log_id);
                if let Some(responder) = responder {
                    replies.push((responder, response));
                }
            }
            raft_meta.insert("last_applied", to_json(&last_applied)?.as_slice()).map_err(io_err)?;
            applier.finish().map_err(io_err)?
        };
        txn.commit().map_err(io_err)?;
        for event in &events {
            if let Event::JobChanged(name) | Event::JobDeleted(name) = event {
                self.definitions.forget(name);
            }
        }
        for (responder, response) in replies {
            responder.send(response);
        }
        Ok(events)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn utf8(bytes: &[u8]) -> io::Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Copy every data table out of a consistent read snapshot.
fn dump(txn: &ReadTransaction) -> io::Result<Dump> {
    let mut out = Dump::default();
    for item in txn.open_table(JOBS).map_err(io_err)?.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        out.jobs.push((k.value().to_string(), utf8(v.value())?));
    }
    for item in txn.open_table(EXECUTIONS).map_err(io_err)?.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        out.executions.push((utf8(k.value())?, utf8(v.value())?));
    }
    for item in txn.open_table(ACTIVE).map_err(io_err)?.iter().map_err(io_err)? {
        out.active.push(utf8(item.map_err(io_err)?.0.value())?);
    }
    for item in txn.open_table(META).map_err(io_err)?.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        out.meta.push((k.value().to_string(), utf8(v.value())?));
    }
    for item in txn.open_table(ACL).map_err(io_err)?.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        out.acl.push((k.value().to_string(), utf8(v.value())?));
    }
    for item in txn.open_table(SECRETS).map_err(io_err)?.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        out.secrets.push((k.value().to_string(), utf8(v.value())?));
    }
    for item in txn.open_table(AUDIT).map_err(io_err)?.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        let seq = <[u8; 8]>::try_from(k.value()).map(u64::from_be_bytes).map_err(io_err)?;
        out.audit.push((seq, utf8(v.value())?));
    }
    for item in txn.open_table(OUTBOX).map_err(io_err)?.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        out.outbox.push((k.value(), utf8(v.value())?));
    }
    Ok(out)
}

pub struct SnapshotBuilder {
    machine: StateMachine,
    txn: ReadTransaction,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        let last_log_id: Option<LogIdOf<TypeConfig>> =
            StateMachine::read_raft_meta(&self.txn, "last_applied")?.flatten();
        let last_membership: StoredMembershipOf<TypeConfig> =
            StateMachine::read_raft_meta(&self.txn, "membership")?.unwrap_or_default();
        let data = to_json(&dump(&self.txn)?)?;
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id, last_membership };
        self.machine.write_snapshot_files(&meta, &data)?;
        Ok(SnapshotOf::<TypeConfig, _> { meta, snapshot: Cursor::new(data) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let last_applied = Self::read_raft_meta::<Option<LogIdOf<TypeConfig>>>(&txn, "last_applied")?.flatten();
        let membership = Self::read_raft_meta(&txn, "membership")?.unwrap_or_default();
        Ok((last_applied, membership))
    }

    async fn apply<S>(&mut self, entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Collect first: a redb transaction must not be held across an await.
        let items: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        if items.is_empty() {
            return Ok(());
        }
        let events = self.apply_batch(items)?;
        if let Some(sender) = &self.events
            && !events.is_empty()
        {
            // The receiver is gone only while the node shuts down; nothing left to notify then.
            let _ = sender.send(events);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Make every applied batch durable first: once the snapshot exists, openraft may purge the log entries
        // that a crash would otherwise have to re-apply.
        if let Err(err) = self.make_durable() {
            tracing::error!("cannot make the state durable before a snapshot: {err}");
        }
        let txn = self.db.begin_read().expect("a read transaction can always begin on an open database");
        SnapshotBuilder { machine: self.clone(), txn }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let dump: Dump = from_json(&data)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            let mut jobs = txn.open_table(JOBS).map_err(io_err)?;
            jobs.retain(|_, _| false).map_err(io_err)?;
            for (k, v) in &dump.jobs {
                jobs.insert(k.as_str(), v.as_bytes()).map_err(io_err)?;
            }
            let mut executions = txn.open_table(EXECUTIONS).map_err(io_err)?;
            executions.retain(|_, _| false).map_err(io_err)?;
            for (k, v) in &dump.executions {
                executions.insert(k.as_bytes(), v.as_bytes()).map_err(io_err)?;
            }
            let mut active = txn.open_table(ACTIVE).map_err(io_err)?;
            active.retain(|_, _| false).map_err(io_err)?;
            for k in &dump.active {
                active.insert(k.as_bytes(), ()).map_err(io_err)?;
            }
            let mut state_meta = txn.open_table(META).map_err(io_err)?;
            state_meta.retain(|_, _| false).map_err(io_err)?;
            for (k, v) in &dump.meta {
                state_meta.insert(k.as_str(), v.as_bytes()).map_err(io_err)?;
            }
            let mut acl = txn.open_table(ACL).map_err(io_err)?;
            acl.retain(|_, _| false).map_err(io_err)?;
            for (k, v) in &dump.acl {
                acl.insert(k.as_str(), v.as_bytes()).map_err(io_err)?;
            }
            let mut secrets = txn.open_table(SECRETS).map_err(io_err)?;
            secrets.retain(|_, _| false).map_err(io_err)?;
            for (k, v) in &dump.secrets {
                secrets.insert(k.as_str(), v.as_bytes()).map_err(io_err)?;
            }
            let mut audit = txn.open_table(AUDIT).map_err(io_err)?;
            audit.retain(|_, _| false).map_err(io_err)?;
            for (seq, v) in &dump.audit {
                audit.insert(seq.to_be_bytes().as_slice(), v.as_bytes()).map_err(io_err)?;
            }
            let mut outbox = txn.open_table(OUTBOX).map_err(io_err)?;
            outbox.retain(|_, _| false).map_err(io_err)?;
            for (seq, v) in &dump.outbox {
                outbox.insert(*seq, v.as_bytes()).map_err(io_err)?;
            }
            let mut raft_meta = txn.open_table(RAFT_META).map_err(io_err)?;
            raft_meta.insert("last_applied", to_json(&meta.last_log_id)?.as_slice()).map_err(io_err)?;
            raft_meta.insert("membership", to_json(&meta.last_membership)?.as_slice()).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        self.definitions.jobs_clear();
        self.write_snapshot_files(meta, &data)?;
        if let Some(sender) = &self.events {
            let _ = sender.send(vec![Event::Pending]);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>>, io::Error> {
        let path = self.snapshot_dir.join("current");
        if !path.exists() {
            return Ok(None);
        }
        let mut bytes = std::fs::read(path)?;
        let split = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "snapshot file has no meta line"))?;
        let meta: SnapshotMetaOf<TypeConfig> = from_json(&bytes[..split])?;
        let data = bytes.split_off(split + 1);
        Ok(Some(SnapshotOf::<TypeConfig, _> { meta, snapshot: Cursor::new(data) }))
    }
}
