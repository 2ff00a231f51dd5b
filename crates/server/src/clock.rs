//! How far this node's clock is from the leader's, measured continuously with an error bound, published in gossip
//! (`clock_offset_ms` and `clock_error_ms` in `/v1/members` and on the nodes page), logged past
//! [`CLOCK_OFFSET_WARN`], and enforced: a node more than `--clock-offset-max` off (beyond the error bound) gets no
//! runs, and refuses them itself.
//!
//! The measurement is NTP's: every [`MEASURE_EVERY`] the node asks a server for its time (`GET /cluster/clock`),
//! noting its own clock before (t0) and after (t2). The server's time t1 was read somewhere in between, so the offset
//! is `t1 - (t0 + t2) / 2`, within `(t2 - t0) / 2`. A server measures against the leader; an agent, which does not
//! know the leader, against any server, and adds that server's own offset from the leader (and its error). The
//! sample with the smallest error of the last [`SAMPLES`] wins, so one slow round trip does not spoil the figure.
//!
//! Runs start on the leader's instants whatever the offset: orders carry the sender's clock (see
//! [`crate::worker::Order::on_local_clock`]); this module makes the offset visible and bounded. The loop that asks
//! over RPC is `cluster::clock_sync`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kairos_model::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// How often a node measures its offset.
pub const MEASURE_EVERY: Duration = Duration::from_secs(5);
/// Offsets past this (beyond the error bound) are logged, once a minute.
pub const CLOCK_OFFSET_WARN: Duration = Duration::from_millis(500);
/// Samples kept; the one with the smallest error counts.
const SAMPLES: usize = 8;
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A server's answer to `GET /cluster/clock`: its time, and its own offset from the leader (0 on the leader).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ClockReading {
    pub now: Timestamp,
    pub offset_ms: i64,
    pub error_ms: i64,
}

/// An offset from the leader's clock: leader − this node, in ms, within ± `error_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offset {
    pub offset_ms: i64,
    pub error_ms: i64,
}

impl Offset {
    /// From one round trip: `t0` and `t2` on this clock around the server's reading.
    pub fn from_round_trip(t0: Timestamp, reading: ClockReading, t2: Timestamp) -> Offset {
        let round_trip_ns = t2.as_nanosecond() - t0.as_nanosecond();
        let midpoint_ns = t0.as_nanosecond() + round_trip_ns / 2;
        let to_server_ms = i64::try_from((reading.now.as_nanosecond() - midpoint_ns) / 1_000_000).unwrap_or(i64::MAX);
        let error_ms = i64::try_from(round_trip_ns.max(0) / 2_000_000).unwrap_or(i64::MAX) + 1;
        Offset {
            offset_ms: to_server_ms.saturating_add(reading.offset_ms),
            error_ms: error_ms.saturating_add(reading.error_ms),
        }
    }

    /// How far off the clock is at least (the offset's size less its error), in ms.
    pub fn at_least_ms(&self) -> i64 {
        (self.offset_ms.abs() - self.error_ms).max(0)
    }

    /// Whether the clock is certainly more than `max` off (a zero `max` is no limit).
    pub fn beyond(&self, max: Duration) -> bool {
        !max.is_zero() && u128::try_from(self.at_least_ms()).unwrap_or(0) > max.as_millis()
    }
}

/// This node's offset from the leader, as last measured.
#[derive(Default)]
pub struct Clock {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    samples: VecDeque<Offset>,
    warned: Option<Instant>,
}

impl Clock {
    /// This node leads: its clock is the reference.
    pub fn leading(&self) {
        self.record(Offset { offset_ms: 0, error_ms: 0 });
    }

    /// A new sample; answers the best of the recent ones.
    pub fn record(&self, sample: Offset) -> Offset {
        let mut state = self.state.lock().expect("clock lock");
        if state.samples.len() == SAMPLES {
            state.samples.pop_front();
        }
        state.samples.push_back(sample);
        let best = state.samples.iter().copied().min_by_key(|s| s.error_ms).unwrap_or(sample);
        if u128::try_from(best.at_least_ms()).unwrap_or(0) > CLOCK_OFFSET_WARN.as_millis()
            && state.warned.is_none_or(|at| at.elapsed() > WARN_EVERY)
        {
            warn!(
                "this node's clock is {} ms {} the leader's (±{} ms); runs still start on the leader's instants and the \
                 times it records are corrected, but fix its time synchronisation (NTP)",
                best.offset_ms.abs(),
                if best.offset_ms < 0 { "ahead of" } else { "behind" },
                best.error_ms
            );
            state.warned = Some(Instant::now());
        }
        best
    }

    /// The best recent measurement, if any.
    pub fn offset(&self) -> Option<Offset> {
        let state = self.state.lock().expect("clock lock");
        state.samples.iter().copied().min_by_key(|s| s.error_ms)
    }

    /// Now on the leader's time base: this clock plus the measured offset when the offset is certainly not zero
    /// (larger than its error bound); this clock as it is before the first measurement. The times a node records
    /// for its runs (start, finish, lease) use it, so lags and leases mean the same whatever node ran the run.
    pub fn leader_now(&self) -> Timestamp {
        let now = Timestamp::now();
        match self.offset() {
            Some(offset) if offset.offset_ms.abs() > offset.error_ms => {
                now.checked_add(jiff::SignedDuration::from_millis(offset.offset_ms)).unwrap_or(now)
            }
            _ => now,
        }
    }

    /// The best recent measurement against another server (this node's own zero while it leads left out): as a
    /// new leader, what it last measured against the previous one.
    pub fn measured(&self) -> Option<Offset> {
        let state = self.state.lock().expect("clock lock");
        state.samples.iter().copied().filter(|s| s.error_ms > 0).min_by_key(|s| s.error_ms)
    }

    /// This node's reading for a node that asks (`GET /cluster/clock`).
    pub fn reading(&self) -> ClockReading {
        let offset = self.offset().unwrap_or(Offset { offset_ms: 0, error_ms: i64::from(i32::MAX) });
        ClockReading { now: Timestamp::now(), offset_ms: offset.offset_ms, error_ms: offset.error_ms }
    }
}

/// Whom a node asks for the time.
pub enum Source {
    /// This node leads: it is the reference.
    Leading,
    /// A server's RPC address (the leader's, for a server; any server's, for an agent).
    Ask(String),
    /// Nobody to ask yet.
    Nobody,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_offset_is_taken_at_the_midpoint_of_the_round_trip() {
        // Our clock reads 10.000 and 10.100 around a server reading of 15.050: we are 5 s behind, ±50 ms.
        let reading = ClockReading { now: ts("2026-01-01T00:00:15.05Z"), offset_ms: 0, error_ms: 0 };
        let offset = Offset::from_round_trip(ts("2026-01-01T00:00:10Z"), reading, ts("2026-01-01T00:00:10.1Z"));
        assert_eq!(offset, Offset { offset_ms: 5000, error_ms: 51 });
        assert_eq!(offset.at_least_ms(), 4949);
        assert!(offset.beyond(Duration::from_secs(2)));
        assert!(!offset.beyond(Duration::from_secs(5)));
        assert!(!offset.beyond(Duration::ZERO), "zero is no limit");
    }

    #[test]
    fn an_agents_offset_adds_the_servers_own() {
        let reading = ClockReading { now: ts("2026-01-01T00:00:10Z"), offset_ms: -300, error_ms: 4 };
        let offset = Offset::from_round_trip(ts("2026-01-01T00:00:10Z"), reading, ts("2026-01-01T00:00:10Z"));
        assert_eq!(offset, Offset { offset_ms: -300, error_ms: 5 });
    }

    #[test]
    fn the_sample_with_the_smallest_error_wins() {
        let clock = Clock::default();
        clock.record(Offset { offset_ms: 900, error_ms: 400 });
        clock.record(Offset { offset_ms: 20, error_ms: 2 });
        assert_eq!(clock.record(Offset { offset_ms: 700, error_ms: 300 }), Offset { offset_ms: 20, error_ms: 2 });
        assert_eq!(clock.offset(), Some(Offset { offset_ms: 20, error_ms: 2 }));
    }
}
