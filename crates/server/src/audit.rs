//! The audit log's writer on a server. The API edge (`kairos-http`) hands it one [`AuditRecord`] per write request
//! as the answer goes out; records are committed through Raft in batches (one entry carries up to
//! [`BATCH_RECORDS_MAX`]), so auditing costs one extra Raft entry per burst of writes, not per write. A follower's
//! batches are forwarded to the leader like any write.
//!
//! A record is committed a few milliseconds after its answer. A server killed in that window loses the records
//! it had not committed yet (never the writes they describe); a server that cannot commit (no leader) keeps
//! retrying, holding at most [`QUEUE_RECORDS_MAX`] records, and counts what it had to drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kairos_model::audit::AuditRecord;
use kairos_store::Command;
use tokio::sync::mpsc::{Receiver, Sender, channel};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::worker::Reporter;

/// Records one Raft entry carries at most.
pub const BATCH_RECORDS_MAX: usize = 512;
/// Records waiting to be committed at most; past this, new ones are dropped (and counted).
pub const QUEUE_RECORDS_MAX: usize = 16_384;
/// How long the writer waits for more records after the first of a batch.
const GATHER_FOR: Duration = Duration::from_millis(5);
/// Pause between attempts to commit a batch that failed, growing to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(50);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Where the API edge puts its records.
pub struct AuditLog {
    queue: Sender<AuditRecord>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// The log, and the receiving end its [`commit_loop`] drains.
    pub fn new() -> (AuditLog, Receiver<AuditRecord>) {
        let (queue, records) = channel(QUEUE_RECORDS_MAX);
        (AuditLog { queue, dropped: AtomicU64::new(0) }, records)
    }

    /// Hands a record on; never waits. A full queue (the cluster has not committed for a long while) drops it and
    /// says so.
    pub fn record(&self, record: AuditRecord) {
        if self.queue.try_send(record).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                error!("audit: {dropped} records dropped so far: {QUEUE_RECORDS_MAX} wait to be committed already");
            }
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Commit queued records in batches until `stopping` (then what is queued is committed once more, if it can be).
pub async fn commit_loop(
    mut records: Receiver<AuditRecord>,
    writer: Arc<dyn Reporter>,
    keep: u64,
    stopping: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            record = records.recv() => record,
            () = stopping.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let gather = tokio::time::sleep(GATHER_FOR);
        tokio::pin!(gather);
        while batch.len() < BATCH_RECORDS_MAX {
            tokio::select! {
                record = records.recv() => match record {
                    Some(record) => batch.push(record),
                    None => break,
                },
                () = &mut gather => break,
            }
        }
        commit(&*writer, batch, keep, &stopping).await;
    }
    // Stopping: what is queued gets one attempt.
    let mut rest = Vec::new();
    while let Ok(record) = records.try_recv() {
        rest.push(record);
    }
    for batch in rest.chunks(BATCH_RECORDS_MAX) {
        if let Err(err) = writer.submit(Command::Audit { records: batch.to_vec(), keep }).await {
            warn!("audit: {} records not committed at shutdown: {err}", batch.len());
        }
    }
}

/// Commit one batch, retrying with a growing pause until it is committed or the node stops.
async fn commit(writer: &dyn Reporter, batch: Vec<AuditRecord>, keep: u64, stopping: &CancellationToken) {
    let mut pause = RETRY_PAUSE_MIN;
    let mut failures = 0u32;
    loop {
        match writer.submit(Command::Audit { records: batch.clone(), keep }).await {
            Ok(_) => return,
            Err(err) => {
                failures += 1;
                if failures.is_power_of_two() {
                    warn!("audit: {} records not committed yet ({failures} attempts): {err}", batch.len());
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stopping.cancelled() => {
                warn!("audit: {} records not committed at shutdown", batch.len());
                return;
            }
        }
        pause = (pause * 2).min(RETRY_PAUSE_MAX);
    }
}
