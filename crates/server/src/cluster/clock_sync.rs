//! Measuring this node's clock against the cluster's, over RPC: every [`MEASURE_EVERY`] a server asks the
//! leader (an agent, any server) for its time, and the best offset goes into gossip (see [`crate::clock`]).

use kairos_model::Timestamp;

use super::RpcClient;
use crate::clock::{Clock, MEASURE_EVERY, Offset, Source};
use crate::gossip::Membership;

/// Measure this node's offset every [`MEASURE_EVERY`] and publish it in gossip, until `stopping`.
pub async fn measure_loop(
    clock: std::sync::Arc<Clock>,
    membership: std::sync::Arc<Membership>,
    rpc: RpcClient,
    source: impl Fn() -> Source + Send,
    stopping: tokio_util::sync::CancellationToken,
) {
    loop {
        let best = match source() {
            Source::Leading => {
                clock.leading();
                clock.offset()
            }
            Source::Ask(addr) => {
                let t0 = Timestamp::now();
                match rpc.clock(&addr).await {
                    Ok(reading) => Some(clock.record(Offset::from_round_trip(t0, reading, Timestamp::now()))),
                    Err(err) => {
                        tracing::debug!("clock: cannot ask {addr}: {err}");
                        clock.offset()
                    }
                }
            }
            Source::Nobody => clock.offset(),
        };
        if let Some(best) = best {
            membership.set_clock(best).await;
        }
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tokio::time::sleep(MEASURE_EVERY) => {}
        }
    }
}
