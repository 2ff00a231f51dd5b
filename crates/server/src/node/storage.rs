//! What a server does when its storage fails (a full disk, an I/O error): it stops, says why, and exits with
//! [`STORAGE_FAILED_EXIT`] so a supervisor restarts it.
//!
//! Why exit instead of limping on: openraft stops its core for good on a storage error (there is no way to
//! restart it in the process), so a node that stayed up would be a zombie: serving stale reads, naming itself
//! leader, refusing every write with a misleading "no leader" and leaving its runs `running`. The Raft log and the
//! state are ACID files, intact up to the write that failed, so a restart after space is freed loses nothing that
//! was acknowledged (a run that was going on becomes `lost` and follows its retries). In a cluster, the exit stops
//! this node's heartbeats at once, so the other servers elect a new leader within an election timeout.

use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;
use tracing::error;

use crate::node::Node;

/// `EX_TEMPFAIL` (sysexits.h): a temporary failure; retrying later (after the disk is fixed) may work.
pub const STORAGE_FAILED_EXIT: u8 = 75;

/// Watch Raft's running state; on a fatal error (storage, or a panic of Raft's core) record why, stop running
/// work, and ask the process to exit.
pub async fn watch(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    loop {
        let fatal = metrics.borrow_and_update().running_state.clone().err();
        // A normal stop (shutdown, leave) also ends Raft's core: that is not a failure.
        if matches!(fatal, Some(openraft::error::Fatal::Stopped)) {
            return;
        }
        if let Some(fatal) = fatal {
            let reason = format!("storage failed: {fatal}");
            let hint = if reason.contains("No space left") || reason.contains("os error 28") {
                "free space on the filesystem of the data directory"
            } else {
                "check the disk and the data directory"
            };
            error!(
                data_dir = %node.config.data_dir.display(),
                "{reason}; this node stops and exits with status {STORAGE_FAILED_EXIT}: {hint}, then start it \
                 again (nothing acknowledged is lost; runs that were going on turn lost and are retried)"
            );
            let _ = node.fatal.set(reason);
            node.worker.cancel_all("cancelled: the node's storage failed");
            node.exit.cancel();
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
