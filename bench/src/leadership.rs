//! Who leads, as the servers say it, through a failover trial: every [`POLL`] each live server's `GET /v1/leader`,
//! from the disruption (a kill, a cut) until the jobs are disabled. From these views: when a server other than the
//! struck one first named a new leader, when a majority first named the same new leader, when a cut-off leader
//! stopped naming itself, and whether the leader changed again once a cut was healed (a healed node must rejoin
//! without unseating the leader that kept a quorum), by name or by Raft term.
//!
//! A majority counts every server of the cluster, the struck one included: 2 of 3 must name the same leader.

use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::client::Member;
use crate::cluster::Cluster;

/// Interval between two polls.
pub const POLL: Duration = Duration::from_millis(50);
/// Per-request timeout of a poll: a node that hangs must not hold the poll (and its timing) up for long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One poll: each live server's name and the leader it names (`None`: none, or no answer in time).
pub type Views = Vec<(String, Option<String>)>;

/// Ask every live server at once whom it names leader.
pub async fn poll(cluster: &Cluster) -> Views {
    let asks = cluster.live_servers().map(|(i, server)| async move {
        let named = server.api.get_json::<Member>("/v1/leader", PROBE_TIMEOUT).await.ok().map(|m| m.name);
        (cluster.server_names[i].clone(), named)
    });
    join_all(asks).await
}

/// The Raft term of server `name` (`GET /v1`, `raft.term`); `None` when it does not answer.
pub async fn term(cluster: &Cluster, name: &str) -> Option<u64> {
    let server = cluster.server(cluster.server_index(name)?)?;
    let about: serde_json::Value = server.api.get_json("/v1", PROBE_TIMEOUT).await.ok()?;
    about["raft"]["term"].as_u64()
}

/// The leader that more than half of the cluster's `servers` name, if any.
pub fn majority(views: &[(String, Option<String>)], servers: usize) -> Option<&str> {
    let named = || views.iter().filter_map(|(_, leader)| leader.as_deref());
    named().find(|candidate| named().filter(|n| n == candidate).count() * 2 > servers)
}

/// What the polls of one trial showed.
#[derive(Debug, Clone)]
pub struct Leadership {
    servers: usize,
    /// The leader before the disruption, and its term.
    pub before: String,
    pub term_before: Option<u64>,
    /// The server killed or cut off.
    pub struck: String,
    /// The first leader other than `before` that a server other than the struck one named, and when (since the
    /// disruption).
    pub first_named: Option<(String, Duration)>,
    /// The first leader other than `before` a majority named, and when (since the disruption).
    pub majority_named: Option<(String, Duration)>,
    /// When the struck server, if it led, stopped naming itself (since the disruption; a cut leader only).
    pub struck_stepped_down: Option<Duration>,
    /// The leader a majority named at the last poll before the heal, and its term then.
    pub at_heal: Option<(Option<String>, Option<u64>)>,
    /// The first leader a majority named after the heal other than the one at the heal, and when (since the heal).
    pub changed_after_heal: Option<(String, Duration)>,
    /// The leader a majority named at the last poll, and its term then.
    pub at_end: (Option<String>, Option<u64>),
    /// The leader a majority named at the last poll.
    latest: Option<String>,
}

impl Leadership {
    pub fn new(servers: usize, before: &str, term_before: Option<u64>, struck: &str) -> Leadership {
        Leadership {
            servers,
            before: before.to_string(),
            term_before,
            struck: struck.to_string(),
            first_named: None,
            majority_named: None,
            struck_stepped_down: None,
            at_heal: None,
            changed_after_heal: None,
            at_end: (Some(before.to_string()), term_before),
            latest: Some(before.to_string()),
        }
    }

    /// Poll until `until`, taking in what the servers say; `since` is the disruption (or, once healed, the heal).
    pub async fn watch(&mut self, cluster: &Cluster, since: Instant, until: Instant) {
        while Instant::now() < until {
            let views = poll(cluster).await;
            self.take(&views, since.elapsed());
            tokio::time::sleep(POLL).await;
        }
    }

    /// Take in one poll, `elapsed` after the disruption (or, once healed, after the heal).
    pub fn take(&mut self, views: &[(String, Option<String>)], elapsed: Duration) {
        self.latest = majority(views, self.servers).map(str::to_string);
        if let Some((at_heal, _)) = &self.at_heal {
            if let (Some(now), Some(then)) = (&self.latest, at_heal)
                && now != then
                && self.changed_after_heal.is_none()
            {
                self.changed_after_heal = Some((now.clone(), elapsed));
            }
            return;
        }
        let new = |name: &&str| *name != self.before;
        if self.first_named.is_none()
            && let Some(name) = views
                .iter()
                .filter(|(server, _)| *server != self.struck)
                .filter_map(|(_, leader)| leader.as_deref())
                .find(new)
        {
            self.first_named = Some((name.to_string(), elapsed));
        }
        if self.majority_named.is_none()
            && let Some(name) = self.latest.as_deref().filter(new)
        {
            self.majority_named = Some((name.to_string(), elapsed));
        }
        // A killed server is not polled; a cut-off one still answers the harness.
        let struck_names = views.iter().find(|(server, _)| *server == self.struck).map(|(_, leader)| leader.as_deref());
        if self.struck == self.before
            && self.struck_stepped_down.is_none()
            && struck_names.is_some_and(|named| named != Some(self.struck.as_str()))
        {
            self.struck_stepped_down = Some(elapsed);
        }
    }

    /// The cut is about to be healed: remember who leads now (and the term, read by the caller).
    pub fn heal(&mut self, term: Option<u64>) {
        self.at_heal = Some((self.latest.clone(), term));
    }

    /// The leader a majority named at the last poll.
    pub fn latest(&self) -> Option<&str> {
        self.latest.as_deref()
    }

    /// The last poll is done: remember who leads (and the term, read by the caller).
    pub fn end(&mut self, term: Option<u64>) {
        self.at_end = (self.latest.clone(), term);
    }

    /// Whether the leader changed while a follower was cut off: a majority named another leader, or the leader's
    /// term at the heal differs from the one before the cut.
    pub fn changed_during_cut(&self) -> Option<String> {
        if let Some((name, after)) = &self.majority_named {
            return Some(format!("a majority named {name} {} ms after the cut", after.as_millis()));
        }
        let term_at_heal = self.at_heal.as_ref().and_then(|(_, term)| *term);
        match (self.term_before, term_at_heal) {
            (Some(before), Some(at_heal)) if before != at_heal => {
                Some(format!("term {before} before the cut, {at_heal} at the heal"))
            }
            _ => None,
        }
    }

    /// Whether the leader changed once the cut was healed: a majority named another leader than at the heal, or the
    /// term grew. `None` when neither (or when there was no heal).
    pub fn changed_at_heal(&self) -> Option<String> {
        let (leader_at_heal, term_at_heal) = self.at_heal.as_ref()?;
        let Some(leader_at_heal) = leader_at_heal else {
            return Some("no leader named by a majority at the heal".to_string());
        };
        if let Some((name, after)) = &self.changed_after_heal {
            return Some(format!(
                "{leader_at_heal} led at the heal, a majority named {name} {} ms later",
                after.as_millis()
            ));
        }
        match (*term_at_heal, self.at_end.1) {
            (Some(at_heal), Some(at_end)) if at_heal != at_end => {
                Some(format!("{leader_at_heal} still leads, but term {at_heal} at the heal became {at_end}"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(named: &[(&str, Option<&str>)]) -> Views {
        named.iter().map(|(s, l)| (s.to_string(), l.map(str::to_string))).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_majority_is_more_than_half_of_every_server() {
        assert_eq!(majority(&views(&[("s0", Some("s1")), ("s1", Some("s1")), ("s2", None)]), 3), Some("s1"));
        assert_eq!(majority(&views(&[("s0", Some("s0")), ("s1", Some("s1")), ("s2", None)]), 3), None);
        // The struck server killed: the two survivors must agree.
        assert_eq!(majority(&views(&[("s1", Some("s2")), ("s2", None)]), 3), None);
        assert_eq!(majority(&views(&[("s1", Some("s2")), ("s2", Some("s2"))]), 3), Some("s2"));
    }

    #[test]
    fn a_cut_leader_is_replaced_and_steps_down() {
        let mut l = Leadership::new(3, "s0", Some(2), "s0");
        l.take(&views(&[("s0", Some("s0")), ("s1", Some("s0")), ("s2", Some("s0"))]), ms(50));
        l.take(&views(&[("s0", Some("s0")), ("s1", Some("s1")), ("s2", None)]), ms(900));
        assert_eq!(l.first_named, Some(("s1".to_string(), ms(900))));
        assert_eq!(l.majority_named, None);
        l.take(&views(&[("s0", Some("s0")), ("s1", Some("s1")), ("s2", Some("s1"))]), ms(950));
        assert_eq!(l.majority_named, Some(("s1".to_string(), ms(950))));
        assert_eq!(l.struck_stepped_down, None);
        l.take(&views(&[("s0", None), ("s1", Some("s1")), ("s2", Some("s1"))]), ms(1_500));
        assert_eq!(l.struck_stepped_down, Some(ms(1_500)));
        l.heal(Some(3));
        l.take(&views(&[("s0", Some("s1")), ("s1", Some("s1")), ("s2", Some("s1"))]), ms(100));
        l.end(Some(3));
        assert_eq!(l.changed_at_heal(), None);
    }

    #[test]
    fn a_healed_node_that_unseats_the_leader_is_a_change_at_heal() {
        let mut l = Leadership::new(3, "s0", Some(2), "s0");
        l.take(&views(&[("s0", Some("s0")), ("s1", Some("s1")), ("s2", Some("s1"))]), ms(900));
        l.heal(Some(3));
        l.take(&views(&[("s0", Some("s0")), ("s1", Some("s0")), ("s2", Some("s0"))]), ms(400));
        l.end(Some(4));
        assert_eq!(l.changed_at_heal().as_deref(), Some("s1 led at the heal, a majority named s0 400 ms later"));

        let mut same_name = Leadership::new(3, "s0", Some(2), "s1");
        same_name.heal(Some(2));
        same_name.take(&views(&[("s0", Some("s0")), ("s1", Some("s0")), ("s2", Some("s0"))]), ms(400));
        same_name.end(Some(3));
        assert_eq!(same_name.changed_at_heal().as_deref(), Some("s0 still leads, but term 2 at the heal became 3"));
        assert_eq!(same_name.changed_during_cut(), None);
    }

    #[test]
    fn a_follower_cut_that_moves_leadership_is_a_change_during_the_cut() {
        let mut l = Leadership::new(3, "s0", Some(2), "s1");
        l.take(&views(&[("s0", Some("s0")), ("s1", None), ("s2", Some("s0"))]), ms(500));
        assert_eq!(l.struck_stepped_down, None, "a follower never led");
        l.heal(Some(5));
        assert_eq!(l.changed_during_cut().as_deref(), Some("term 2 before the cut, 5 at the heal"));
    }

    #[test]
    fn a_kill_has_no_heal() {
        let mut l = Leadership::new(3, "s0", Some(2), "s0");
        l.take(&views(&[("s1", Some("s2")), ("s2", Some("s2"))]), ms(700));
        assert_eq!(l.majority_named, Some(("s2".to_string(), ms(700))));
        assert_eq!(l.struck_stepped_down, None, "a killed leader is not polled");
        assert_eq!(l.changed_at_heal(), None);
    }
}
