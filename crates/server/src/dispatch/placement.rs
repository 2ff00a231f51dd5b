//! Placement: which live node runs a run. Eligible nodes are the live members whose tags match the job's, that run
//! the job's executor (`--executors`) and that answered over RPC lately. A job without tags (or with a count of 1) runs on exactly one of them, the least
//! busy, avoiding the node a failed attempt ran on where there is another, and the leader where there is
//! another. A job whose tags have no count runs on every matching node, `value:N` on N of them. "Least busy" is
//! the share of its places (`--max-running`, which each node publishes) that the leader's orders take on it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kairos_model::{Execution, Job, Targets};

use super::claims::Claims;
use crate::gossip::{Member, tags_match};

/// The places of a node that does not publish them (an earlier version): the default on one core.
const PLACES_UNSAID: usize = 64;

/// How busy a node is: the leader's claims on it per thousand of its places.
fn busyness(member: &Member, claims: &Claims) -> usize {
    claims.load(&member.name).saturating_mul(1000) / member.places.unwrap_or(PLACES_UNSAID).max(1)
}

/// A run whose instant is further in the past than this is late: it gets only half a node's room (see [`Room`]).
pub const LATE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A node's room for runs that are due now: at most this share of its places (`--max-running`)
/// ([`ROOM_PER_PLACES`]), and at least [`ROOM_MIN`], may be due there and not yet asked to launch.
const ROOM_PER_PLACES: usize = 16;
const ROOM_MIN: usize = 8;

/// How many of a node's runs may be due and not yet asked for (its orders on their way, or waiting in its queue)
/// before it gets no more: a node that keeps up asks to launch each run at its instant, so it never reaches this;
/// one past its capacity would otherwise be sent runs faster than it starts them, and every one of them would
/// expire in its queue, be placed again and expire again (issue 19: a cluster that never caught up).
pub fn room_of(member: &Member) -> usize {
    (member.places.unwrap_or(PLACES_UNSAID) / ROOM_PER_PLACES).max(ROOM_MIN)
}

/// Which nodes have room for more runs during one dispatch: each node's due runs it has not asked to launch (see
/// `Claims::due_unstarted`), counting the runs placed in this dispatch that are due already. The leader itself
/// never asks for permits (its own worker bounds what it takes), so it always has room.
///
/// Runs already late (see [`LATE_AFTER`]) get only half a node's room: the other half stays for runs that can
/// still start on time, which the scheduler sends ahead of their instants. Without it, the backlog the sweep
/// places filled every node's room, and each new run waited for a sweep after its instant.
pub struct Room {
    due_unstarted: HashMap<String, usize>,
    leader: String,
}

impl Room {
    pub fn new(due_unstarted: HashMap<String, usize>, leader: &str) -> Room {
        Room { due_unstarted, leader: leader.to_string() }
    }

    fn has_room(&self, member: &Member, late: bool) -> bool {
        let room = if late { room_of(member) / 2 } else { room_of(member) };
        member.name == self.leader || self.due_unstarted.get(&member.name).copied().unwrap_or(0) < room
    }

    /// A run due now was placed on `node`.
    pub fn took(&mut self, node: &str) {
        *self.due_unstarted.entry(node.to_string()).or_default() += 1;
    }
}

/// Where a run goes.
pub enum Placed<'m> {
    On(&'m Member),
    /// Nodes match, but none has room now (see [`Room`]): the run stays pending for a later sweep.
    Full,
    /// No live node matches the job's tags and executor (or the copy's node).
    NoMatch,
}

/// How long a node an order could not reach is avoided.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(10);

/// The members an order can reach: those not marked unreachable within [`UNREACHABLE_FOR`] before `now`. When
/// every member is marked, all of them (one may have come back; a failed send marks it again).
pub fn reachable(members: Vec<Member>, unreachable: &HashMap<String, Instant>, now: Instant) -> Vec<Member> {
    let fresh = |m: &Member| {
        unreachable.get(&m.name).is_none_or(|since| now.saturating_duration_since(*since) > UNREACHABLE_FOR)
    };
    if members.iter().any(fresh) { members.into_iter().filter(fresh).collect() } else { members }
}

/// The nodes a run of a job that runs on several nodes goes to: every live matching node, or the job's count of
/// them, least busy first and the leader last. `None` if no live node matches.
pub fn choose_targets(members: &[Member], job: &Job, claims: &Claims, leader: &str) -> Option<Vec<String>> {
    let eligible: Vec<&Member> =
        members.iter().filter(|m| tags_match(&job.tags, &m.tags) && m.runs(&job.executor)).collect();
    if eligible.is_empty() {
        return None;
    }
    let wanted = match job.targets() {
        Targets::All => eligible.len(),
        Targets::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
        Targets::One => 1,
    };
    let mut ranked: Vec<(bool, usize, u32, &str)> =
        eligible.iter().map(|m| (m.name == leader, busyness(m, claims), rand::random(), m.name.as_str())).collect();
    ranked.sort_unstable();
    let mut chosen: Vec<String> = ranked.into_iter().take(wanted).map(|(.., name)| name.to_string()).collect();
    chosen.sort();
    Some(chosen)
}

/// The least busy eligible node with room for a run (see [`Room`]; `late`: the run is late), avoiding its previous
/// attempt's node where there is another, and the leader itself (`leader`) where another node matches, full or
/// not: a run the leader starts itself is the one a leader crash can leave unreported, and the leader has
/// scheduling to do.
pub fn place_with_room<'m>(
    members: &'m [Member],
    job: &Job,
    exec: &Execution,
    claims: &Claims,
    leader: &str,
    (room, late): (&Room, bool),
) -> Placed<'m> {
    let matching: Vec<&Member> = members
        .iter()
        .filter(|m| tags_match(&job.tags, &m.tags) && m.runs(&job.executor))
        .filter(|m| exec.target.as_ref().is_none_or(|target| m.name == *target))
        .collect();
    if matching.is_empty() {
        return Placed::NoMatch;
    }
    // The leader takes runs only where no other node matches, never because the others are full: it would then
    // get the whole backlog of a cluster past its capacity.
    let alone = matching.iter().all(|m| m.name == leader);
    let with_room: Vec<&Member> =
        matching.into_iter().filter(|m| room.has_room(m, late) && (alone || m.name != leader)).collect();
    pick(with_room, exec, claims, leader).map_or(Placed::Full, Placed::On)
}

/// Of `eligible`, the node for a run: see [`place_with_room`].
fn pick<'m>(eligible: Vec<&'m Member>, exec: &Execution, claims: &Claims, leader: &str) -> Option<&'m Member> {
    // A retry avoids the node that failed it, and a copy the nodes that run the slot's other copies.
    let mut avoid: Vec<&str> = exec.previous_node.as_deref().into_iter().collect();
    if exec.is_copy() && exec.target.is_none() {
        avoid.extend(claims.slot_nodes(exec));
    }
    let preferred: Vec<&Member> = eligible.iter().copied().filter(|m| !avoid.contains(&m.name.as_str())).collect();
    let pool = if preferred.is_empty() { eligible } else { preferred };
    let others: Vec<&Member> = pool.iter().copied().filter(|m| m.name != leader).collect();
    let pool = if others.is_empty() { pool } else { others };
    let least = pool.iter().map(|m| busyness(m, claims)).min()?;
    let ties: Vec<&Member> = pool.into_iter().filter(|m| busyness(m, claims) == least).collect();
    Some(ties[rand::random_range(0..ties.len())])
}

#[cfg(test)]
pub(super) mod tests {
    use kairos_model::Trigger;
    use kairos_store::ExecRef;

    use super::*;

    pub fn member(name: &str, tags: &[(&str, &str)]) -> Member {
        Member {
            name: name.into(),
            server: false,
            raft_id: None,
            rpc_addr: format!("{name}:6868"),
            raft_listener: None,
            http_addr: String::new(),
            gossip_addr: ([127, 0, 0, 1], 8946).into(),
            generation: 1,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            status: crate::gossip::Status::Alive,
            raft_initialized: false,
            executors: None,
            clock: None,
            places: None,
            leading: None,
        }
    }

    /// Placement when every node has room.
    fn place<'m>(
        members: &'m [Member],
        job: &Job,
        exec: &Execution,
        claims: &Claims,
        leader: &str,
    ) -> Option<&'m Member> {
        match place_with_room(members, job, exec, claims, leader, (&Room::new(HashMap::new(), leader), false)) {
            Placed::On(member) => Some(member),
            Placed::Full | Placed::NoMatch => None,
        }
    }

    fn job(tags: &[(&str, &str)]) -> Job {
        let mut job = Job::empty("j");
        job.tags = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        job
    }

    fn exec() -> Execution {
        Execution::decided("j", "2026-11-22T00:00:00Z".parse().unwrap(), Trigger::Schedule)
    }

    fn exec_ref(n: u32) -> ExecRef {
        ExecRef { job: "j".into(), id: n.to_string() }
    }

    fn name(member: Option<&Member>) -> Option<&str> {
        member.map(|m| m.name.as_str())
    }

    #[test]
    fn the_least_busy_matching_node_is_chosen() {
        let now = Instant::now();
        let members = vec![member("a", &[("pool", "x")]), member("b", &[("pool", "x")]), member("c", &[])];
        let mut claims = Claims::default();
        claims.claim(exec_ref(1), "a", now);
        claims.claim(exec_ref(2), "a", now);
        claims.claim(exec_ref(3), "b", now);
        let job = job(&[("pool", "x")]);
        assert_eq!(name(place(&members, &job, &exec(), &claims, "leader")), Some("b"), "b runs 1, a runs 2");
        claims.release(&exec_ref(1));
        claims.release(&exec_ref(2));
        assert_eq!(name(place(&members, &job, &exec(), &claims, "leader")), Some("a"));
    }

    #[test]
    fn busy_is_measured_against_the_places_a_node_publishes() {
        let now = Instant::now();
        let (mut small, mut big) = (member("small", &[("pool", "x")]), member("big", &[("pool", "x")]));
        (small.places, big.places) = (Some(4), Some(64));
        let members = vec![small, big];
        let mut claims = Claims::default();
        for n in 0..2 {
            claims.claim(exec_ref(n), "small", now);
        }
        for n in 10..20 {
            claims.claim(exec_ref(n), "big", now);
        }
        let chosen = name(place(&members, &job(&[]), &exec(), &claims, "leader"));
        assert_eq!(chosen, Some("big"), "10 of 64 places is less busy than 2 of 4");
        let targets = choose_targets(&members, &job(&[("pool", "x:1")]), &claims, "leader");
        assert_eq!(targets, Some(vec!["big".to_string()]), "one of them: the less busy");
    }

    #[test]
    fn a_job_without_tags_can_run_anywhere_and_unmatched_tags_nowhere() {
        let members = vec![member("a", &[("zone", "eu")]), member("b", &[])];
        let claims = Claims::default();
        assert!(place(&members, &job(&[]), &exec(), &claims, "leader").is_some());
        assert!(place(&members, &job(&[("zone", "us")]), &exec(), &claims, "leader").is_none());
    }

    #[test]
    fn a_retry_avoids_the_node_of_the_failed_attempt_unless_it_is_the_only_one() {
        let members = vec![member("a", &[]), member("b", &[])];
        let mut claims = Claims::default();
        claims.claim(exec_ref(1), "b", Instant::now()); // b is busier, but a failed the previous attempt
        let mut retry = exec();
        retry.previous_node = Some("a".into());
        for _ in 0..20 {
            assert_eq!(name(place(&members, &job(&[]), &retry, &claims, "leader")), Some("b"));
        }
        let alone = vec![member("a", &[])];
        assert_eq!(name(place(&alone, &job(&[]), &retry, &claims, "leader")), Some("a"));
    }

    #[test]
    fn the_leader_runs_jobs_only_when_no_other_node_is_eligible() {
        let members = vec![member("leader", &[("gpu", "yes")]), member("b", &[])];
        let mut claims = Claims::default();
        claims.claim(exec_ref(1), "b", Instant::now());
        claims.claim(exec_ref(2), "b", Instant::now());
        assert_eq!(name(place(&members, &job(&[]), &exec(), &claims, "leader")), Some("b"), "b is not the leader");
        let gpu = job(&[("gpu", "yes")]);
        assert_eq!(name(place(&members, &gpu, &exec(), &claims, "leader")), Some("leader"), "only the leader matches");
    }

    #[test]
    fn tags_without_a_count_target_every_matching_node_and_a_count_that_many() {
        let members = vec![
            member("leader", &[("role", "web")]),
            member("w1", &[("role", "web")]),
            member("w2", &[("role", "web")]),
            member("db", &[("role", "db")]),
        ];
        let mut claims = Claims::default();
        let all = choose_targets(&members, &job(&[("role", "web")]), &claims, "leader").unwrap();
        assert_eq!(all, ["leader", "w1", "w2"], "every web node, the leader included");
        claims.claim(exec_ref(1), "w1", Instant::now());
        for _ in 0..20 {
            let two = choose_targets(&members, &job(&[("role", "web:2")]), &claims, "leader").unwrap();
            assert_eq!(two, ["w1", "w2"], "the leader comes last, even after the busier w1");
        }
        let mut more = members.clone();
        more.push(member("w3", &[("role", "web")]));
        for _ in 0..20 {
            let two = choose_targets(&more, &job(&[("role", "web:2")]), &claims, "leader").unwrap();
            assert_eq!(two, ["w2", "w3"], "w1 is busy: the two idle web nodes");
        }
        let many = choose_targets(&members, &job(&[("role", "web:9")]), &claims, "leader").unwrap();
        assert_eq!(many.len(), 3, "a count above the matching nodes means all of them");
        assert_eq!(choose_targets(&members, &job(&[("role", "cache")]), &claims, "leader"), None);
    }

    #[test]
    fn a_copy_runs_only_on_its_node_and_an_unpinned_retry_avoids_its_siblings() {
        let mut members = vec![member("a", &[("role", "web")]), member("b", &[("role", "web")]), member("c", &[])];
        let claims = Claims::default();
        let copies = exec().copies(&["a".to_string(), "b".to_string()]);
        let web = job(&[("role", "web")]);
        for _ in 0..20 {
            assert_eq!(name(place(&members, &web, &copies[1], &claims, "leader")), Some("b"));
        }
        let mut gone = copies[0].clone();
        gone.target = Some("z".into());
        assert!(place(&members, &web, &gone, &claims, "leader").is_none(), "its node is not alive");

        // "role: web:2" with a third web node: the retry of the copy that failed on a leaves a and the node that
        // runs the other copy (b), so it goes to d.
        members.push(member("d", &[("role", "web")]));
        let mut claims = Claims::default();
        claims.claim(ExecRef { job: "j".into(), id: copies[1].id.clone() }, "b", Instant::now());
        let mut failed = copies[0].clone();
        failed.node_name = "a".into();
        let mut retry = failed.retry(exec().scheduled_at);
        retry.target = None;
        for _ in 0..20 {
            assert_eq!(name(place(&members, &job(&[("role", "web:2")]), &retry, &claims, "leader")), Some("d"));
        }
    }

    #[test]
    fn a_node_an_order_could_not_reach_is_avoided_for_a_while() {
        let start = Instant::now();
        let members = vec![member("a", &[]), member("b", &[])];
        let marked = HashMap::from([("a".to_string(), start)]);
        let names = |m: Vec<Member>| m.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(reachable(members.clone(), &marked, start + Duration::from_secs(1))), ["b"]);
        let later = start + UNREACHABLE_FOR + Duration::from_millis(1);
        assert_eq!(names(reachable(members.clone(), &marked, later)), ["a", "b"], "a gets another chance");
        let all = HashMap::from([("a".to_string(), start), ("b".to_string(), start)]);
        assert_eq!(names(reachable(members, &all, start)), ["a", "b"], "none answered: try them all");
    }

    fn placed<'m>(placed: Placed<'m>) -> Result<&'m str, &'static str> {
        match placed {
            Placed::On(member) => Ok(member.name.as_str()),
            Placed::Full => Err("full"),
            Placed::NoMatch => Err("no match"),
        }
    }

    #[test]
    fn a_node_with_as_many_due_runs_as_its_room_not_asked_for_gets_no_more() {
        let members = vec![member("leader", &[]), member("a", &[]), member("b", &[("pool", "x")])];
        let claims = Claims::default();
        let (any, pool) = (job(&[]), job(&[("pool", "x")]));
        let mut room = Room::new(HashMap::new(), "leader");
        for _ in 0..ROOM_MIN {
            room.took("b");
        }
        for _ in 0..20 {
            assert_eq!(placed(place_with_room(&members, &any, &exec(), &claims, "leader", (&room, false))), Ok("a"));
        }
        assert_eq!(placed(place_with_room(&members, &pool, &exec(), &claims, "leader", (&room, false))), Err("full"));
        assert_eq!(
            placed(place_with_room(&members, &job(&[("pool", "y")]), &exec(), &claims, "leader", (&room, false))),
            Err("no match")
        );
        // With a and b full, the leader does not take the backlog; alone, it takes everything.
        for _ in 0..ROOM_MIN {
            room.took("a");
        }
        assert_eq!(placed(place_with_room(&members, &any, &exec(), &claims, "leader", (&room, false))), Err("full"));
        assert_eq!(
            placed(place_with_room(&members[..1], &any, &exec(), &claims, "leader", (&room, false))),
            Ok("leader")
        );
        // A node with more places has more room.
        let mut big = member("big", &[]);
        big.places = Some(ROOM_PER_PLACES * ROOM_MIN * 2);
        assert_eq!(room_of(&big), ROOM_MIN * 2);
        let members = vec![member("leader", &[]), big];
        for _ in 0..ROOM_MIN {
            room.took("big");
        }
        assert_eq!(placed(place_with_room(&members, &any, &exec(), &claims, "leader", (&room, false))), Ok("big"));
        // A late run gets half of it: the rest stays for runs that can still start on time.
        assert_eq!(placed(place_with_room(&members, &any, &exec(), &claims, "leader", (&room, true))), Err("full"));
        let members = vec![member("leader", &[]), member("a", &[]), member("fresh", &[])];
        let mut room = Room::new(HashMap::new(), "leader");
        for _ in 0..ROOM_MIN / 2 {
            room.took("fresh");
        }
        for _ in 0..20 {
            assert_eq!(placed(place_with_room(&members, &any, &exec(), &claims, "leader", (&room, true))), Ok("a"));
        }
    }
}
