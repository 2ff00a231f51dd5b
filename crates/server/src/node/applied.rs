//! What follows from entries the state machine applied, on every server: the scheduler hears which jobs changed,
//! outputs of pruned executions and deleted jobs are removed from this node's disk, and runs a command cancelled
//! are stopped where they run.

use std::sync::Arc;

use kairos_store::Event;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::warn;

use crate::dispatch::stop_run;
use crate::node::Node;

/// React to what the state machine applied: wake the scheduler, drop pruned outputs, cancel.
pub async fn events_loop(node: Arc<Node>, mut events: UnboundedReceiver<Vec<Event>>, changes: UnboundedSender<String>) {
    while let Some(batch) = events.recv().await {
        for event in batch {
            match event {
                Event::JobChanged(name) => {
                    let _ = changes.send(name);
                }
                Event::JobDeleted(name) => {
                    if let Err(err) = node.outputs.delete_job(&name) {
                        warn!("cannot delete outputs of job {name}: {err}");
                    }
                    let _ = changes.send(name);
                }
                // Pending executions reach the leader's dispatcher through the responses of the commands that
                // created them; the periodic sweep catches the rest. Sweeping on every applied batch would decode
                // every active execution hundreds of times a second under load.
                Event::Pending => {}
                Event::Pruned(refs) => {
                    for r in refs {
                        if let Err(err) = node.outputs.delete(&r.job, &r.id) {
                            warn!("cannot delete output {}/{}: {err}", r.job, r.id);
                        }
                    }
                }
                Event::Cancel(refs) => {
                    for r in refs {
                        stop_run(&node.dispatch, &r, "cancelled: the job was deleted or replaced");
                    }
                }
            }
        }
    }
}
