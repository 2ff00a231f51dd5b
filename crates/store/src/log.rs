//! The Raft log on redb: entries by index, plus the vote, the committed id and the last purged id.
//!
//! Every append is one fsync'd redb transaction (`Durability::Immediate`), so an entry acknowledged to openraft
//! survives `kill -9`. openraft batches entries per append, which is where write throughput comes from.

use std::fmt;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{TypeConfig, from_json, io_err, to_json};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The log is read mostly near its tail; a small page cache is enough (redb's default is 1 GiB).
const LOG_CACHE_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn open(path: &Path) -> io::Result<LogStore> {
        let db = Database::builder().set_cache_size(LOG_CACHE_BYTES).create(path).map_err(io_err)?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(LOGS).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(META).map_err(io_err)?;
        match table.get(key).map_err(io_err)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(from_json(bytes.value())?)),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> io::Result<()> {
        let bytes = to_json(value)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?.insert(key, bytes.as_slice()).map_err(io_err)?;
        txn.commit().map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOGS).map_err(io_err)?;
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let mut out = Vec::new();
        for item in table.range(bounds).map_err(io_err)? {
            let (_, value) = item.map_err(io_err)?;
            out.push(from_json(value.value())?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.get_meta("vote")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogIdOf<TypeConfig>> = self.get_meta("last_purged")?;
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(LOGS).map_err(io_err)?;
        let last = match table.last().map_err(io_err)? {
            None => None,
            Some((_, value)) => Some(from_json::<EntryOf<TypeConfig>>(value.value())?.log_id()),
        };
        Ok(LogState { last_log_id: last.or(last_purged), last_purged_log_id: last_purged })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.put_meta("vote", vote)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        self.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.get_meta::<Option<LogIdOf<TypeConfig>>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = (|| {
            let mut txn = self.db.begin_write().map_err(io_err)?;
            txn.set_durability(Durability::Immediate).map_err(io_err)?;
            {
                let mut table = txn.open_table(LOGS).map_err(io_err)?;
                for entry in entries {
                    table.insert(entry.index(), to_json(&entry)?.as_slice()).map_err(io_err)?;
                }
            }
            txn.commit().map_err(io_err)
        })();
        // The commit is fsync'd: the entries are readable and durable now.
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(err) => {
                callback.io_completed(Err(io::Error::other(err.to_string())));
                Err(err)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let start = last_log_id.map(|id| id.index() + 1).unwrap_or(0);
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(LOGS).map_err(io_err)?.retain_in(start.., |_, _| false).map_err(io_err)?;
        txn.commit().map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let bytes = to_json(&log_id)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            txn.open_table(META).map_err(io_err)?.insert("last_purged", bytes.as_slice()).map_err(io_err)?;
            txn.open_table(LOGS).map_err(io_err)?.retain_in(..=log_id.index(), |_, _| false).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }
}
