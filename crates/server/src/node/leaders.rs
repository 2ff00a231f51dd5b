//! The leaders this server has seen, and since when; and the leader before this one in the log. A new leader uses
//! them to know which runs a previous leader that does not answer may have launched without a committed start
//! (see `dispatch::takeover`): only runs due before it led, which it could have launched as a follower, with a
//! launch permit of an earlier term. As leader it launches its own runs only once their start is committed
//! (`Node::start_own`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kairos_model::Timestamp;
use kairos_store::Raft;
use openraft::async_runtime::WatchReceiver;

use super::Node;

/// How many leaderships a server remembers.
const REMEMBERED: usize = 64;

/// A leadership: the Raft term and the leader's node id.
pub type Leadership = (u64, u64);

/// When this server first saw each of the last [`REMEMBERED`] leaderships (its clock). A server that was down or
/// cut off when a leader was elected sees it later: the instant is never before the election, which is what its
/// users need (see the module's text).
#[derive(Default)]
pub struct LeaderLog {
    seen: Mutex<BTreeMap<Leadership, Timestamp>>,
}

impl LeaderLog {
    /// Raft names `leader` as the leader of `term` at `now`.
    pub fn observe(&self, term: u64, leader: Option<u64>, now: Timestamp) {
        let Some(leader) = leader else { return };
        let mut seen = self.seen.lock().expect("leader log lock");
        seen.entry((term, leader)).or_insert(now);
        while seen.len() > REMEMBERED {
            seen.pop_first();
        }
    }

    /// When this server first saw `leadership`, if it did and still remembers.
    pub fn since(&self, leadership: Leadership) -> Option<Timestamp> {
        self.seen.lock().expect("leader log lock").get(&leadership).copied()
    }
}

/// Record every leader Raft names, for as long as the node runs.
pub async fn watch(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    loop {
        {
            let now = metrics.borrow_watched();
            node.leaders.observe(now.current_term, now.current_leader, Timestamp::now());
        }
        tokio::select! {
            _ = node.stopping() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// On the leader `ours`: the leadership of the last entry before this leader's first one in this server's log (its
/// first entry is the blank one it appends when elected, so everything before it came from earlier leaders).
/// `None` when the log holds no earlier entry (or only a purged one).
pub async fn previous_in_log(raft: &Raft, ours: Leadership) -> Option<Leadership> {
    raft.with_raft_state(move |state| {
        let ids = &state.log_ids;
        let first = ids.purged().map_or(0, |purged| purged.index + 1);
        let last = ids.last()?.index;
        let leadership = |index: u64| ids.get(index).map(|id| (id.leader_id.term, id.leader_id.node_id));
        previous_before(first, last, ours, leadership)
    })
    .await
    .ok()
    .flatten()
}

/// Of the log's entries `first..=last` (their leaderships never decrease), the leadership of the last one before
/// the first of `ours`.
fn previous_before(
    first: u64,
    last: u64,
    ours: Leadership,
    leadership: impl Fn(u64) -> Option<Leadership>,
) -> Option<Leadership> {
    if first > last || leadership(first)? >= ours {
        return None;
    }
    // The last index whose leadership is before ours: leadership(lo) < ours holds throughout.
    let (mut lo, mut hi) = (first, last);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if leadership(mid)? < ours {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    leadership(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sighting_of_each_leadership_is_kept() {
        let log = LeaderLog::default();
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        log.observe(3, None, t(0));
        log.observe(3, Some(2), t(1));
        log.observe(3, Some(2), t(5));
        log.observe(4, Some(1), t(9));
        assert_eq!(log.since((3, 2)), Some(t(1)), "seen again later: the first sighting counts");
        assert_eq!(log.since((4, 1)), Some(t(9)));
        assert_eq!(log.since((3, 1)), None, "never seen");
        for term in 10..10 + REMEMBERED as u64 {
            log.observe(term, Some(1), t(20));
        }
        assert_eq!(log.since((3, 2)), None, "the oldest are forgotten");
        assert_eq!(log.since((10, 1)), Some(t(20)));
    }

    #[test]
    fn the_previous_leadership_is_the_one_of_the_entry_before_ours() {
        // Entries 5..=7 by (2, 1), 8..=8 by (3, 3), 9..=12 by (5, 2): ours is (5, 2).
        let log = |index: u64| match index {
            5..=7 => Some((2, 1)),
            8 => Some((3, 3)),
            9..=12 => Some((5, 2)),
            _ => None,
        };
        assert_eq!(previous_before(5, 12, (5, 2), log), Some((3, 3)));
        assert_eq!(previous_before(5, 8, (5, 2), log), Some((3, 3)), "our blank entry not in the log yet");
        assert_eq!(previous_before(9, 12, (5, 2), log), None, "nothing before ours is left");
        assert_eq!(previous_before(5, 7, (3, 3), log), Some((2, 1)));
        assert_eq!(previous_before(6, 5, (5, 2), log), None, "an empty log");
    }
}
