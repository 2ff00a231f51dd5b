//! The leader's dispatcher: it places committed runs on nodes, fences them with its term, and settles what a
//! previous leader left behind. One [`Dispatcher`] per node holds its state; it is armed with a term by the
//! takeover and disarmed when leadership is revoked (see [`crate::node::leadership`]).
//!
//! - `claims`: every pending execution the leader hands out is claimed once (with the node it went to), so a
//!   stale read can never dispatch it twice; the claim count per node is its load ("least busy").
//! - `placement`: which live, reachable node with matching tags runs a run (or which nodes, for jobs that run on
//!   several: the leader first commits one copy per target node, `<id>@<node>`, then places each copy).
//! - orders (here): runs decided ahead of their slot travel early with their instant and start on the agent's own
//!   timer; every order carries the leader's term, and nodes refuse older terms.
//! - `takeover`: a new leader syncs every live node before it dispatches what the old one left.
//! - `sweep`: the periodic pass that dispatches due runs, expires leases and fails runs no node can take.

mod claims;
mod placement;
mod sweep;
mod takeover;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use kairos_model::secret::{SecretValue, referenced_secrets};
use kairos_model::{Execution, ExecutionStatus, Job, Targets, Timestamp};
use kairos_store::{Command, ExecRef, Expansion, Response, StateReader};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{Instrument, warn};

pub use claims::Claims;
pub use sweep::duty;
pub use takeover::{PreviousLeader, Takeover, take_over};

use crate::cluster::{RpcClient, RpcError, client};
use crate::config::Config;
use crate::duties::{Duties, LeaderWrites};
use crate::error::WriteError;
use crate::gossip::Member;
use crate::gossip::Membership;
use crate::worker::{Cancelled, Limited, Order, START_DEADLINE, Worker};

/// How long a node that asked for a launch permit counts as alive for placement, whatever gossip says.
const HEARD_ALIVE_FOR: Duration = Duration::from_secs(10);

/// The scheduler decides slots this far ahead at most (see [`crate::scheduler::DECIDE_AHEAD`]); runs decided
/// further ahead than this are left to the sweep.
const DECIDE_AHEAD_MAX: Duration = Duration::from_secs(2);

/// After this long since it was sent, an order that has not started never will: it expires
/// [`START_DEADLINE`] after its instant, which is at most [`DECIDE_AHEAD_MAX`] after it was sent; the last second
/// covers the difference between this clock and the node's (orders already correct for it with `sent_at`). A run
/// still pending then can be placed again without risk of a second run.
pub const ORDER_STALE_AFTER: Duration = Duration::from_secs(START_DEADLINE.as_secs() + DECIDE_AHEAD_MAX.as_secs() + 1);

/// What each node answered at the takeover: the executions it runs, holds or has not reported yet.
pub type Synced = HashMap<String, HashSet<ExecRef>>;

/// The dispatcher's state on one node. Its term is 0 unless this node leads and has taken over.
#[derive(Default)]
pub struct Dispatcher {
    claims: Mutex<Claims>,
    takeover: Mutex<Takeover>,
    /// Nodes an order could not reach recently, with when; avoided for [`placement::UNREACHABLE_FOR`].
    unreachable: Mutex<HashMap<String, Instant>>,
    /// Wakes the sweep before its interval (a claim was released, a run was decided for later).
    wake: Notify,
    term: AtomicU64,
    /// When each node last asked for a launch permit: it reaches this leader (see [`sweep::Asked::Busy`]).
    heard: Mutex<HashMap<String, Instant>>,
    /// Each member as gossip last listed it alive (see [`eligible_members`]).
    last_alive: Mutex<HashMap<String, Member>>,
    /// Runs were left waiting for a node with room (see [`placement::Room`]) since the last permit granted: a
    /// grant makes room, so it wakes the sweep.
    full_since_grant: std::sync::atomic::AtomicBool,
}

impl Dispatcher {
    /// The term this node dispatches in; 0 while it does not lead (or has not taken over yet).
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::SeqCst)
    }

    /// Forget everything of an earlier term (the start of a takeover).
    fn reset(&self) {
        self.claims.lock().expect("claims lock").clear();
        *self.takeover.lock().expect("takeover lock") = Takeover::default();
    }

    /// Dispatch in `term` from now on (the takeover's sync is done).
    fn arm(&self, term: u64) {
        self.term.store(term, Ordering::SeqCst);
    }

    /// Stop dispatching: leadership was lost or changed term. Runs already sent keep running on their nodes.
    pub fn revoke(&self) {
        self.term.store(0, Ordering::SeqCst);
        self.reset();
    }

    /// `node` asks for the permit to launch `execs` (see [`crate::permit`]): granted for those this leader has
    /// placed on it, which are noted granted (they may start from now on).
    pub fn grant(&self, node: &str, execs: &[ExecRef]) -> Vec<bool> {
        self.heard.lock().expect("heard lock").insert(node.to_string(), Instant::now());
        let granted = self.claims.lock().expect("claims lock").grant(node, execs);
        if granted.iter().any(|g| *g) && self.full_since_grant.swap(false, Ordering::SeqCst) {
            self.wake();
        }
        granted
    }

    /// Add to `alive` (gossip's live members) the members gossip stopped listing that asked for a launch permit
    /// within [`HEARD_ALIVE_FOR`] before `now`, and remember the live ones. On a machine short of CPU, gossip's
    /// failure detector took all 50 agents for dead at once while they kept asking for permits and running what
    /// they were sent; runs then failed `no live node matches` by the thousand (issue 19). A node that asks for
    /// permits reaches this leader: it is alive. One that is really gone stops asking and drops out.
    fn alive_or_heard(&self, alive: &mut Vec<Member>, now: Instant) {
        let mut last_alive = self.last_alive.lock().expect("last alive lock");
        for member in alive.iter() {
            last_alive.insert(member.name.clone(), member.clone());
        }
        let heard = self.heard.lock().expect("heard lock");
        let listed: HashSet<String> = alive.iter().map(|m| m.name.clone()).collect();
        for (name, at) in heard.iter() {
            if listed.contains(name) || now.saturating_duration_since(*at) > HEARD_ALIVE_FOR {
                continue;
            }
            if let Some(member) = last_alive.get(name) {
                alive.push(member.clone());
            }
        }
    }

    /// Whether `node` asked for a launch permit at or after `since`.
    fn heard_since(&self, node: &str, since: Instant) -> bool {
        self.heard.lock().expect("heard lock").get(node).is_some_and(|at| *at >= since)
    }

    /// Wake the sweep now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// An order could not reach `name`: avoid it for a while.
    fn mark_unreachable(&self, name: &str, at: Instant) {
        self.unreachable.lock().expect("unreachable lock").insert(name.to_string(), at);
    }

    /// `name` answered: it may get runs again.
    fn mark_reachable(&self, name: &str) {
        self.unreachable.lock().expect("unreachable lock").remove(name);
    }

    /// `name`'s process is gone: avoid it, and what it was sent but never started is free to go elsewhere.
    fn node_gone(&self, name: &str, at: Instant) {
        self.mark_unreachable(name, at);
        self.claims.lock().expect("claims lock").retain(|_, _, target| target != name);
    }

    /// A node dropped an order (its fence refused it): if this node still leads, place it anew.
    pub fn dropped(&self, exec: &ExecRef) {
        self.claims.lock().expect("claims lock").release(exec);
        self.wake();
    }
}

/// The node the dispatcher runs on, as far as dispatching may see it: its name and addresses, the state it reads,
/// its worker, the members gossip knows, the RPC client orders go through, the dispatcher's own state, and how it
/// writes as leader ([`LeaderWrites`]). The node builds one at start; nothing here reaches back into the node.
pub struct Host {
    pub config: Config,
    pub id: u64,
    pub rpc_addr: SocketAddr,
    pub state: StateReader,
    pub worker: Worker,
    pub membership: Arc<Membership>,
    pub rpc: RpcClient,
    pub dispatcher: Dispatcher,
    pub duties: Arc<Duties>,
    writes: Arc<dyn LeaderWrites>,
    weak: Weak<Host>,
}

/// What a [`Host`] is made of.
pub struct HostParts {
    pub config: Config,
    pub id: u64,
    pub rpc_addr: SocketAddr,
    pub state: StateReader,
    pub worker: Worker,
    pub membership: Arc<Membership>,
    pub rpc: RpcClient,
    pub duties: Arc<Duties>,
    pub writes: Arc<dyn LeaderWrites>,
}

impl Host {
    pub fn new(parts: HostParts) -> Arc<Host> {
        let HostParts { config, id, rpc_addr, state, worker, membership, rpc, duties, writes } = parts;
        Arc::new_cyclic(|weak| Host {
            config,
            id,
            rpc_addr,
            state,
            worker,
            membership,
            rpc,
            dispatcher: Dispatcher::default(),
            duties,
            writes,
            weak: weak.clone(),
        })
    }

    pub async fn submit_as_leader(&self, term: u64, command: Command) -> Result<Response, WriteError> {
        self.writes.submit_as_leader(term, command).await
    }

    pub fn is_leader(&self) -> bool {
        self.writes.is_leader()
    }

    pub fn is_stopping(&self) -> bool {
        self.writes.is_stopping()
    }

    fn member_tags(&self) -> BTreeMap<String, String> {
        self.membership.tags()
    }

    fn self_weak(&self) -> Weak<Host> {
        self.weak.clone()
    }
}

/// The values of the secrets a job references, for its order: empty for most jobs. One that no longer exists is
/// left out, and the run fails on its node naming it.
fn secrets_of(node: &Host, job: &Job) -> BTreeMap<String, SecretValue> {
    let Ok(names) = referenced_secrets(&job.executor_config) else { return BTreeMap::new() };
    if names.is_empty() {
        return BTreeMap::new();
    }
    node.state.secret_values(&names).unwrap_or_else(|err| {
        warn!("dispatch: cannot read the secrets of job {}: {err}", job.name);
        BTreeMap::new()
    })
}

/// When the next attempt after a failed `attempt` should start, if the job allows one: the job's backoff,
/// doubled per attempt and capped, with ±20 % jitter so retries of many jobs do not stampede.
pub fn retry_instant(state: &StateReader, job: &str, attempt: u32, now: Timestamp) -> Option<Timestamp> {
    let record = state.job(job).ok().flatten()?;
    if attempt > record.job.retries {
        return None;
    }
    let backoff = record.job.backoff_before_retry(attempt);
    let jitter = rand::random_range(0.8..1.2);
    Some(now + backoff.mul_f64(jitter))
}

/// Dispatch what a committed command created, cancel what it replaced. Runs decided ahead of their instant
/// travel now and start at the instant.
pub fn after_commit(node: &Host, response: &Response) {
    for exec_ref in &response.to_cancel {
        stop_run(node, exec_ref, "cancelled: replaced by a newer execution (concurrency: replace)");
    }
    if !node.is_leader() {
        return;
    }
    let now = Timestamp::now();
    let mut ready = Vec::new();
    let mut later = false;
    for exec in response.executions.iter().filter(|e| e.status == ExecutionStatus::Pending) {
        match exec.not_before {
            Some(at) if at > now && at.duration_since(now).unsigned_abs() <= DECIDE_AHEAD_MAX => {
                ready.push((exec, Some(at)));
            }
            Some(at) if at > now => later = true,
            _ => ready.push((exec, None)),
        }
    }
    // What cannot be placed now waits for the sweep (a node with the right tags may still appear).
    dispatch(node, ready);
    if later {
        node.dispatcher.wake();
    }
}

/// Stop a run wherever this node knows it is: this worker, or the node the leader sent it to.
pub fn stop_run(node: &Host, exec_ref: &ExecRef, reason: &str) {
    if node.worker.cancel(exec_ref, reason) != Cancelled::NotHere {
        return;
    }
    let target = node.dispatcher.claims.lock().expect("claims lock").node_of(exec_ref).map(str::to_string);
    let Some(target) = target.filter(|t| *t != node.config.node_name) else { return };
    let Some(member) = node.membership.alive().into_iter().find(|m| m.name == target) else { return };
    let (addr, rpc, exec_ref, reason) = (member.rpc_addr, node.rpc.clone(), exec_ref.clone(), reason.to_string());
    tokio::spawn(
        async move {
            let sent = rpc.cancel(&addr, &exec_ref, &reason, client::CANCEL_STOP_TIMEOUT).await;
            // Only a failure to deliver is worth a warning: any answer came from the node itself.
            if let Err(err @ (RpcError::Unreachable { .. } | RpcError::Timeout { .. } | RpcError::Broken { .. })) = sent
            {
                warn!("cannot cancel {}/{} on {target}: {err}", exec_ref.job, exec_ref.id);
            }
        }
        .in_current_span(),
    );
}

/// What one dispatch left pending: runs no live node matches (the sweep fails them after
/// [`sweep::PLACE_GRACE`]), and how many waited for a node with room (see [`placement::Room`]).
#[derive(Default)]
pub struct Left<'e> {
    pub unplaced: Vec<&'e Execution>,
    pub waiting: usize,
}

/// Claim, place and send runs (with their start instant, if early). Runs of a job that runs on several nodes
/// are first expanded into one copy per target node (a commit; the copies are dispatched when it applies).
/// Runs that cannot be placed now (no live node matches the job's tags, or a copy's node is not alive; or every
/// node that matches is past its capacity) stay pending and unclaimed and are answered; the sweep tries again.
pub fn dispatch<'e>(node: &Host, runs: Vec<(&'e Execution, Option<Timestamp>)>) -> Left<'e> {
    let mut unplaced = Vec::new();
    if runs.is_empty() || node.is_stopping() {
        return Left::default();
    }
    let term = node.dispatcher.term();
    if term == 0 {
        return Left::default(); // leadership not settled yet: the takeover's first sweep dispatches
    }
    let members = eligible_members(node);
    let mut local = Vec::new();
    let mut remote: BTreeMap<String, (String, Vec<Order>)> = BTreeMap::new();
    let mut definitions: HashMap<String, Option<Arc<Job>>> = HashMap::new();
    let mut expansions = Vec::new();
    let mut full = 0usize;
    let now = Timestamp::now();
    {
        let takeover = node.dispatcher.takeover.lock().expect("takeover lock");
        let mut claims = node.dispatcher.claims.lock().expect("claims lock");
        let mut room = placement::Room::new(claims.due_unstarted(now), &node.config.node_name);
        for (exec, at) in runs {
            let exec_ref = ExecRef { job: exec.job_name.clone(), id: exec.id.clone() };
            if claims.contains(&exec_ref) || takeover.holds(&exec_ref) {
                continue;
            }
            let job = definitions.entry(exec.job_name.clone()).or_insert_with(|| {
                node.state.definition(&exec.job_name).unwrap_or_else(|err| {
                    warn!("dispatch: cannot read job {}: {err}", exec.job_name);
                    None
                })
            });
            let Some(job) = job.as_ref() else { continue };
            if !exec.is_copy() && job.targets() != Targets::One {
                if claims.expanding.contains(&exec_ref) {
                    continue;
                }
                if let Some(targets) = placement::choose_targets(&members, job, &claims, &node.config.node_name) {
                    claims.expanding.insert(exec_ref.clone());
                    expansions.push(Expansion { exec: exec_ref, targets });
                    continue;
                }
            }
            let start = at.unwrap_or_else(|| exec.not_before.unwrap_or(exec.scheduled_at));
            let late = start + placement::LATE_AFTER < now;
            let leader = &node.config.node_name;
            let target = match placement::place_with_room(&members, job, exec, &claims, leader, (&room, late)) {
                placement::Placed::On(target) => target,
                placement::Placed::Full => {
                    full += 1;
                    continue;
                }
                placement::Placed::NoMatch => {
                    unplaced.push(exec);
                    continue;
                }
            };
            if start <= now {
                room.took(&target.name);
            }
            claims.claim_starting(exec_ref, &target.name, Instant::now(), Some(start));
            let mut order = node.worker.prepare(exec, job, term, at);
            order.spec.secrets = secrets_of(node, job);
            if target.name == node.config.node_name {
                local.push(order);
            } else {
                remote
                    .entry(target.name.clone())
                    .or_insert_with(|| (target.rpc_addr.clone(), Vec::new()))
                    .1
                    .push(order);
            }
        }
    }
    if full > 0 {
        node.dispatcher.full_since_grant.store(true, Ordering::SeqCst);
        static FULL: Limited = Limited::new("more runs waited for a node with room");
        let line = FULL.take(|| {
            format!(
                "{full} due run(s) wait: every node that can run them has as many due runs it has not started yet as \
                 it takes (past its capacity); they are placed as the nodes catch up, newest first"
            )
        });
        if let Some(line) = line {
            warn!("{line}");
        }
    }
    for order in local {
        let exec = order.exec.clone();
        if !node.worker.accept(order) {
            node.dispatcher.claims.lock().expect("claims lock").release(&exec);
        }
    }
    for (name, (rpc_addr, orders)) in remote {
        send_orders(node, name, rpc_addr, orders);
    }
    if !expansions.is_empty() {
        expand(node, term, expansions);
    }
    Left { unplaced, waiting: full }
}

/// Commit the expansion of runs into copies, then dispatch the copies.
fn expand(node: &Host, term: u64, expansions: Vec<Expansion>) {
    let node_ptr = HostHandle::of(node);
    tokio::spawn(
        async move {
            let Some(node) = node_ptr.upgrade() else { return };
            let refs: Vec<ExecRef> = expansions.iter().map(|e| e.exec.clone()).collect();
            let committed = node.submit_as_leader(term, Command::Expand { expansions }).await;
            {
                let mut claims = node.dispatcher.claims.lock().expect("claims lock");
                for exec in &refs {
                    claims.expanding.remove(exec);
                }
            }
            match committed {
                Ok(response) => after_commit(&node, &response),
                // The originals are still pending: the next sweep tries again.
                Err(err) => warn!("cannot expand {} run(s) into copies per node: {}", refs.len(), err.message),
            }
        }
        .in_current_span(),
    );
}

/// Send orders to a node; on failure release their claims so the sweep places them again (elsewhere).
fn send_orders(node: &Host, name: String, rpc_addr: String, orders: Vec<Order>) {
    let rpc = node.rpc.clone();
    let node_ptr = HostHandle::of(node);
    tokio::spawn(
        async move {
            let refs: Vec<ExecRef> = orders.iter().map(|o| o.exec.clone()).collect();
            let sent = rpc.run(&rpc_addr, &orders).await;
            // Some(answers): delivered; None: certainly not delivered (no connection could be made, or an error
            // status); a timeout or a broken connection leaves it unknown whether the node got the orders: their claims
            // are kept until the sweep asks the node (see `sweep`); a node only slow to answer still cannot run them
            // a second time, since it needs the permit for the claim to launch (see `crate::permit`). `gone`: the
            // connection was refused, so no process listens there any more.
            let (accepted, uncertain, gone): (Option<Vec<bool>>, bool, bool) = match sent {
                Ok(answers) => (Some(answers), false, false),
                Err(err @ RpcError::BadAnswer { .. }) => {
                    warn!("orders to {name}: unreadable answer ({err})");
                    (None, true, false)
                }
                Err(RpcError::Status { status, .. }) => {
                    warn!("orders to {name} refused: HTTP {status}");
                    (None, false, false)
                }
                Err(err) => {
                    warn!("cannot send orders to {name}: {err}");
                    let unreachable = matches!(err, RpcError::Unreachable { .. });
                    let refused = matches!(err, RpcError::Unreachable { refused: true, .. });
                    (None, !unreachable, refused)
                }
            };
            let Some(node) = node_ptr.upgrade() else { return };
            if gone {
                // Its process is gone: orders it accepted earlier and has not started will never start there.
                node.dispatcher.node_gone(&name, Instant::now());
            } else if accepted.is_none() {
                node.dispatcher.mark_unreachable(&name, Instant::now());
            }
            if uncertain {
                return;
            }
            let mut released = false;
            {
                let mut claims = node.dispatcher.claims.lock().expect("claims lock");
                for (i, exec) in refs.iter().enumerate() {
                    let ok = accepted.as_ref().and_then(|a| a.get(i).copied()).unwrap_or(false);
                    if !ok {
                        claims.release(exec);
                        released = true;
                    }
                }
            }
            // Refused orders wait for the next sweep rather than waking it: a node that refuses for good (its clock,
            // its executors) must not be offered the run again in a tight loop.
            if released && accepted.is_none() {
                node.dispatcher.wake();
            }
        }
        // The leader's span (its term) goes with the task (see crate::logging).
        .in_current_span(),
    );
}

/// A weak handle to the node for tasks that outlive a call.
struct HostHandle(Weak<Host>);

impl HostHandle {
    fn of(node: &Host) -> HostHandle {
        HostHandle(node.self_weak())
    }

    fn upgrade(&self) -> Option<Arc<Host>> {
        self.0.upgrade()
    }
}

/// Orders the fence dropped (their leader no longer leads): if this node leads again, place them anew.
pub async fn dropped_loop(node: Arc<Host>, mut dropped: UnboundedReceiver<ExecRef>) {
    while let Some(exec) = dropped.recv().await {
        node.dispatcher.dropped(&exec);
    }
}

/// Live nodes that take runs (servers and agents, not left) and that orders could reach lately, in name order.
fn eligible_members(node: &Host) -> Vec<Member> {
    let mut members = node.membership.alive();
    node.dispatcher.alive_or_heard(&mut members, Instant::now());
    if !members.iter().any(|m| m.name == node.config.node_name) {
        // Gossip has not listed this node yet (it just started): it can still run jobs.
        members.push(Member {
            name: node.config.node_name.clone(),
            server: true,
            raft_id: Some(node.id),
            rpc_addr: node.rpc_addr.to_string(),
            raft_listener: None,
            http_addr: String::new(),
            gossip_addr: node.membership.gossip_addr(),
            generation: 0,
            tags: node.member_tags(),
            status: crate::gossip::Status::Alive,
            raft_initialized: true,
            executors: Some(node.config.executors.clone()),
            clock: node.worker.clock.offset(),
            places: Some(node.config.run_limits.max_running),
            leading: None,
        });
    }
    // A node whose clock is certainly further off than --clock-offset-max gets no runs (see crate::clock).
    let max = node.config.clock_offset_max;
    members.retain(|m| m.clock.is_none_or(|c| !c.beyond(max)));
    let unreachable = node.dispatcher.unreachable.lock().expect("unreachable lock");
    placement::reachable(members, &unreachable, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(members: &[Member]) -> Vec<&str> {
        let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_node_gossip_stopped_listing_stays_eligible_while_it_asks_for_permits() {
        let dispatcher = Dispatcher::default();
        let member = placement::tests::member;
        let start = Instant::now();
        let mut alive = vec![member("a", &[]), member("b", &[]), member("c", &[])];
        dispatcher.alive_or_heard(&mut alive, start);
        assert_eq!(names(&alive), ["a", "b", "c"]);
        dispatcher.grant("b", &[]);
        dispatcher.grant("unknown", &[]);
        // Gossip now lists only "a": "b" asked for a permit moments ago, "c" did not, "unknown" was never listed.
        let mut alive = vec![member("a", &[])];
        dispatcher.alive_or_heard(&mut alive, Instant::now());
        assert_eq!(names(&alive), ["a", "b"]);
        let mut alive = vec![member("a", &[])];
        dispatcher.alive_or_heard(&mut alive, Instant::now() + HEARD_ALIVE_FOR + Duration::from_secs(1));
        assert_eq!(names(&alive), ["a"], "silent for longer: gossip's word stands");
    }
}
