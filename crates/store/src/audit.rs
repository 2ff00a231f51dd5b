//! The audit log in the replicated state: the `audit` table maps a sequence number (big-endian, so the table is in
//! log order) to an [`AuditRecord`]. Records arrive in batches; the proposer says how many the log keeps, and the
//! oldest beyond that are dropped as new ones come in.

use kairos_model::audit::{AuditFilter, AuditRecord};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::command::Response;
use crate::state::{AUDIT, Applier, StateReader, decode, encode};

const META_AUDIT_NEXT: &str = "audit_next";

impl Applier<'_> {
    pub(crate) fn audit(&mut self, records: &[AuditRecord], keep: u64) -> Result<Response, redb::Error> {
        let mut next: u64 = match self.meta.get(META_AUDIT_NEXT)? {
            Some(bytes) => decode(bytes.value())?,
            None => 1,
        };
        for record in records {
            let record = AuditRecord { seq: next, ..record.clone() };
            self.audit.insert(next.to_be_bytes().as_slice(), encode(&record).as_slice())?;
            next += 1;
        }
        self.meta.insert(META_AUDIT_NEXT, encode(&next).as_slice())?;
        let keep = keep.max(1);
        let mut len = self.audit.len()?;
        while len > keep {
            self.audit.pop_first()?;
            len -= 1;
        }
        Ok(Response::default())
    }
}

impl StateReader {
    /// The records that match `filter`, newest first: those from `start` (inclusive) to `end` (exclusive) of
    /// that order, and how many match in all.
    pub fn audit(
        &self,
        filter: &AuditFilter,
        start: usize,
        end: usize,
    ) -> Result<(Vec<AuditRecord>, usize), redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut page = Vec::new();
        let mut total = 0;
        for item in table.iter()?.rev() {
            let (_, bytes) = item?;
            let record: AuditRecord = decode(bytes.value())?;
            if !filter.matches(&record) {
                continue;
            }
            if (start..end).contains(&total) {
                page.push(record);
            }
            total += 1;
        }
        Ok((page, total))
    }
}
