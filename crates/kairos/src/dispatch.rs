//! The leader's dispatcher: it places committed runs on nodes, fences them with its term, and settles what a
//! previous leader left behind.
//!
//! - *Claims*: every pending execution the leader hands out is claimed once (with the node it went to), so a
//!   stale read can never dispatch it twice; the claim count per node is its load ("least busy").
//! - *Placement*: eligible nodes are the live members whose tags match the job's. A job without tags (or with a
//!   count of 1) runs on exactly one of them, the least busy, avoiding the node a failed attempt ran on where
//!   there is another. A job whose tags have no count runs on every matching node, `value:N` on N of them: the
//!   leader first commits one copy per target node (`<id>@<node>`), then places each copy on its node.
//! - *Orders*: runs decided ahead of their slot travel early with their instant and start on the agent's own
//!   timer; every order carries the leader's term, and agents refuse older terms.
//! - *Takeover*: a new leader first asks every live node what it runs, holds or has not reported yet (which
//!   also raises their term, fencing the old leader). Only then does it dispatch pending executions of the old
//!   leader; while a node does not answer (paused? cut off?), the old leader's pending runs wait for it, at most
//!   one lease. Running executions that no node owns any more turn `lost` at once; the rest is left to leases.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos_model::{Execution, ExecutionStatus, Job, Targets, Timestamp};
use kairos_store::{Command, Event, ExecRef, Expansion, Finish, Response};
use openraft::async_runtime::WatchReceiver;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::{info, warn};

use crate::api::ApiError;
use crate::cluster::{RpcError, client};
use crate::gossip::{Member, tags_match};
use crate::node::{Node, term_of};
use crate::scheduler::time_until;
use crate::worker::{Cancelled, Holding, Order};

/// The scheduler decides slots this far ahead at most (see [`crate::scheduler::DECIDE_AHEAD`]); runs decided
/// further ahead than this are left to the sweep.
const DECIDE_AHEAD_MAX: Duration = Duration::from_secs(2);
/// How often the leader re-checks pending executions and leases even without events.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// How long a node an order could not reach is avoided.
const UNREACHABLE_FOR: Duration = Duration::from_secs(10);
/// How long a due run may wait for a live node that matches its job's tags before it fails (nodes that are
/// starting or rejoining get this long to appear).
pub const PLACE_GRACE: Duration = Duration::from_secs(10);

/// Executions this leader has handed out, with when and to which node.
#[derive(Default)]
pub struct Claims {
    by_exec: HashMap<ExecRef, (Instant, String)>,
    load: HashMap<String, usize>,
    /// Executions whose expansion into copies (one per target node) is being committed.
    expanding: HashSet<ExecRef>,
}

impl Claims {
    fn contains(&self, exec: &ExecRef) -> bool {
        self.by_exec.contains_key(exec)
    }

    fn claim(&mut self, exec: ExecRef, node: &str) -> bool {
        if self.by_exec.contains_key(&exec) {
            return false;
        }
        *self.load.entry(node.to_string()).or_default() += 1;
        self.by_exec.insert(exec, (Instant::now(), node.to_string()));
        true
    }

    fn release(&mut self, exec: &ExecRef) {
        if let Some((_, node)) = self.by_exec.remove(exec)
            && let Some(load) = self.load.get_mut(&node)
        {
            *load = load.saturating_sub(1);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&ExecRef, &Instant, &str) -> bool) {
        let dropped: Vec<ExecRef> =
            self.by_exec.iter().filter(|(r, (at, node))| !keep(r, at, node)).map(|(r, _)| r.clone()).collect();
        for exec in dropped {
            self.release(&exec);
        }
    }

    fn clear(&mut self) {
        self.by_exec.clear();
        self.load.clear();
        self.expanding.clear();
    }

    /// The nodes this leader sent other executions of the same slot of the same job to.
    fn slot_nodes(&self, exec: &Execution) -> Vec<&str> {
        let slot = slot_of(&exec.id);
        self.by_exec
            .iter()
            .filter(|(r, _)| r.job == exec.job_name && r.id != exec.id && slot_of(&r.id) == slot)
            .map(|(_, (_, node))| node.as_str())
            .collect()
    }

    fn node_of(&self, exec: &ExecRef) -> Option<&str> {
        self.by_exec.get(exec).map(|(_, node)| node.as_str())
    }
}

/// What a new leader learned from its sync, while some nodes have not answered yet.
#[derive(Default)]
pub struct Takeover {
    /// Nodes that did not answer (but are not known dead), with the deadline after which they are presumed dead.
    unknown: HashMap<String, Instant>,
    /// Pending executions of the previous leader, not dispatched while `unknown` is not empty.
    suspects: HashSet<ExecRef>,
}

/// Dispatch what a committed command created, cancel what it replaced. Runs decided ahead of their instant
/// travel now and start at the instant.
pub fn after_commit(node: &Node, response: &Response) {
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
        node.dispatch_wake.notify_one();
    }
}

/// Stop a run wherever this node knows it is: this worker, or the node the leader sent it to.
pub fn stop_run(node: &Node, exec_ref: &ExecRef, reason: &str) {
    if node.worker.cancel(exec_ref, reason) != Cancelled::NotHere {
        return;
    }
    let target = node.claims.lock().expect("claims lock").node_of(exec_ref).map(str::to_string);
    let Some(target) = target.filter(|t| *t != node.config.node_name) else { return };
    let Some(member) = node.membership.alive().into_iter().find(|m| m.name == target) else { return };
    let (addr, rpc, exec_ref, reason) = (member.rpc_addr, node.rpc.clone(), exec_ref.clone(), reason.to_string());
    tokio::spawn(async move {
        let sent = rpc.cancel(&addr, &exec_ref, &reason, client::CANCEL_STOP_TIMEOUT).await;
        // Only a failure to deliver is worth a warning: any answer came from the node itself.
        if let Err(err @ (RpcError::Unreachable { .. } | RpcError::Timeout { .. } | RpcError::Broken { .. })) = sent {
            warn!("cannot cancel {}/{} on {target}: {err}", exec_ref.job, exec_ref.id);
        }
    });
}

/// The slot part of an execution id (its scheduled millisecond), shared by every attempt and copy of the slot.
fn slot_of(id: &str) -> &str {
    id.split_once('-').map_or(id, |(slot, _)| slot)
}

/// Claim, place and send runs (with their start instant, if early). Runs of a job that runs on several nodes
/// are first expanded into one copy per target node (a commit; the copies are dispatched when it applies).
/// Runs that cannot be placed now (no live node matches the job's tags, or a copy's node is not alive) stay
/// pending and unclaimed and are answered; the sweep tries again, and fails them after [`PLACE_GRACE`].
pub fn dispatch<'e>(node: &Node, runs: Vec<(&'e Execution, Option<Timestamp>)>) -> Vec<&'e Execution> {
    let mut unplaced = Vec::new();
    if runs.is_empty() || node.is_stopping() {
        return unplaced;
    }
    let term = term_of(node);
    if term == 0 {
        return unplaced; // leadership not settled yet: the takeover's first sweep dispatches
    }
    let mut members = eligible_members(node);
    let mut local = Vec::new();
    let mut remote: BTreeMap<String, (String, Vec<Order>)> = BTreeMap::new();
    let mut definitions: HashMap<String, Option<Arc<Job>>> = HashMap::new();
    let mut expansions = Vec::new();
    {
        let takeover = node.takeover.lock().expect("takeover lock");
        let mut claims = node.claims.lock().expect("claims lock");
        for (exec, at) in runs {
            let exec_ref = ExecRef { job: exec.job_name.clone(), id: exec.id.clone() };
            if claims.contains(&exec_ref) || takeover.suspects.contains(&exec_ref) {
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
                if let Some(targets) = choose_targets(&members, job, &claims, &node.config.node_name) {
                    claims.expanding.insert(exec_ref.clone());
                    expansions.push(Expansion { exec: exec_ref, targets });
                    continue;
                }
            }
            let Some(target) = place(&mut members, job, exec, &claims, &node.config.node_name) else {
                unplaced.push(exec);
                continue;
            };
            claims.claim(exec_ref, &target.name);
            let order = node.worker.prepare(exec, job, term, at);
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
    for order in local {
        let exec = order.exec.clone();
        if !node.worker.accept(order) {
            node.claims.lock().expect("claims lock").release(&exec);
        }
    }
    for (name, (rpc_addr, orders)) in remote {
        send_orders(node, name, rpc_addr, orders);
    }
    if !expansions.is_empty() {
        expand(node, expansions);
    }
    unplaced
}

/// Commit the expansion of runs into copies, then dispatch the copies.
fn expand(node: &Node, expansions: Vec<Expansion>) {
    let node_ptr = NodeHandle::of(node);
    tokio::spawn(async move {
        let Some(node) = node_ptr.upgrade() else { return };
        let refs: Vec<ExecRef> = expansions.iter().map(|e| e.exec.clone()).collect();
        let committed = node.submit(Command::Expand { expansions }).await;
        {
            let mut claims = node.claims.lock().expect("claims lock");
            for exec in &refs {
                claims.expanding.remove(exec);
            }
        }
        match committed {
            Ok(response) => after_commit(&node, &response),
            // The originals are still pending: the next sweep tries again.
            Err(err) => warn!("cannot expand {} run(s) into copies per node: {}", refs.len(), err.message),
        }
    });
}

/// The nodes a run of a job that runs on several nodes goes to: every live matching node, or the job's count of
/// them, least busy first and the leader last. `None` if no live node matches.
fn choose_targets(members: &[Member], job: &Job, claims: &Claims, leader: &str) -> Option<Vec<String>> {
    let eligible: Vec<&Member> = members.iter().filter(|m| tags_match(&job.tags, &m.tags)).collect();
    if eligible.is_empty() {
        return None;
    }
    let wanted = match job.targets() {
        Targets::All => eligible.len(),
        Targets::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
        Targets::One => 1,
    };
    let load = |m: &Member| claims.load.get(&m.name).copied().unwrap_or(0);
    let mut ranked: Vec<(bool, usize, u32, &str)> =
        eligible.iter().map(|m| (m.name == leader, load(m), rand::random(), m.name.as_str())).collect();
    ranked.sort_unstable();
    let mut chosen: Vec<String> = ranked.into_iter().take(wanted).map(|(.., name)| name.to_string()).collect();
    chosen.sort();
    Some(chosen)
}

/// Live nodes that take runs (servers and agents, not left), in name order.
fn eligible_members(node: &Node) -> Vec<Member> {
    let mut members = node.membership.alive();
    if !members.iter().any(|m| m.name == node.config.node_name) {
        // Gossip has not listed this node yet (it just started): it can still run jobs.
        members.push(Member {
            name: node.config.node_name.clone(),
            server: true,
            raft_id: Some(node.id),
            rpc_addr: node.rpc_addr.to_string(),
            http_addr: String::new(),
            gossip_addr: node.membership.gossip_addr(),
            generation: 0,
            tags: node.member_tags(),
            status: crate::gossip::Status::Alive,
            raft_initialized: true,
        });
    }
    let unreachable = node.unreachable.lock().expect("unreachable lock");
    let now = Instant::now();
    let reachable: Vec<Member> = members
        .iter()
        .filter(|m| unreachable.get(&m.name).is_none_or(|since| now.duration_since(*since) > UNREACHABLE_FOR))
        .cloned()
        .collect();
    if reachable.is_empty() { members } else { reachable }
}

/// The least busy eligible node for a run, avoiding its previous attempt's node where there is another, and the
/// leader itself (`leader`) where there is another: a run the leader starts itself is the one a leader crash can
/// leave unreported, and the leader has scheduling to do.
fn place<'m>(
    members: &'m mut [Member],
    job: &Job,
    exec: &Execution,
    claims: &Claims,
    leader: &str,
) -> Option<&'m Member> {
    let eligible: Vec<usize> = (0..members.len())
        .filter(|i| tags_match(&job.tags, &members[*i].tags))
        .filter(|i| exec.target.as_ref().is_none_or(|target| members[*i].name == *target))
        .collect();
    // A retry avoids the node that failed it, and a copy the nodes that run the slot's other copies.
    let mut avoid: Vec<&str> = exec.previous_node.as_deref().into_iter().collect();
    if exec.is_copy() && exec.target.is_none() {
        avoid.extend(claims.slot_nodes(exec));
    }
    let preferred: Vec<usize> =
        eligible.iter().copied().filter(|i| !avoid.contains(&members[*i].name.as_str())).collect();
    let pool = if preferred.is_empty() { eligible } else { preferred };
    let others: Vec<usize> = pool.iter().copied().filter(|i| members[*i].name != leader).collect();
    let pool = if others.is_empty() { pool } else { others };
    let load = |i: &usize| claims.load.get(&members[*i].name).copied().unwrap_or(0);
    let least = pool.iter().map(load).min()?;
    let ties: Vec<usize> = pool.iter().copied().filter(|i| load(i) == least).collect();
    let pick = ties[rand::random_range(0..ties.len())];
    Some(&members[pick])
}

/// Send orders to a node; on failure release their claims so the sweep places them again (elsewhere).
fn send_orders(node: &Node, name: String, rpc_addr: String, orders: Vec<Order>) {
    let rpc = node.rpc.clone();
    let node_ptr = NodeHandle::of(node);
    tokio::spawn(async move {
        let refs: Vec<ExecRef> = orders.iter().map(|o| o.exec.clone()).collect();
        let sent = rpc.run(&rpc_addr, &orders).await;
        // Some(answers): delivered; None: certainly not delivered (refused connection, error status); a timeout
        // or a broken connection leaves it unknown whether the node got the orders: their claims are kept until
        // the orders have expired (see `sweep`), so a node that was only slow cannot run them a second time.
        // `gone`: the connection was refused, so no process listens there any more.
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
                let refused = matches!(err, RpcError::Unreachable { refused: true, .. });
                (None, !refused, refused)
            }
        };
        let Some(node) = node_ptr.upgrade() else { return };
        if accepted.is_none() {
            node.unreachable.lock().expect("unreachable lock").insert(name.clone(), Instant::now());
        }
        if gone {
            // Its process is gone: orders it accepted earlier and has not started will never start there.
            node.claims.lock().expect("claims lock").retain(|_, _, target| target != name);
        }
        if uncertain {
            return;
        }
        let mut released = false;
        {
            let mut claims = node.claims.lock().expect("claims lock");
            for (i, exec) in refs.iter().enumerate() {
                let ok = accepted.as_ref().and_then(|a| a.get(i).copied()).unwrap_or(false);
                if !ok {
                    claims.release(exec);
                    released = true;
                }
            }
        }
        if released {
            node.dispatch_wake.notify_one();
        }
    });
}

/// A weak handle to the node for tasks that outlive a call.
struct NodeHandle(std::sync::Weak<Node>);

impl NodeHandle {
    fn of(node: &Node) -> NodeHandle {
        NodeHandle(node.self_weak())
    }

    fn upgrade(&self) -> Option<Arc<Node>> {
        self.0.upgrade()
    }
}

/// Orders the fence dropped (their leader no longer leads): if this node leads again, place them anew.
pub async fn dropped_loop(node: Arc<Node>, mut dropped: UnboundedReceiver<ExecRef>) {
    while let Some(exec) = dropped.recv().await {
        node.claims.lock().expect("claims lock").release(&exec);
        node.dispatch_wake.notify_one();
    }
}

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
                        stop_run(&node, &r, "cancelled: the job was deleted or replaced");
                    }
                }
            }
        }
    }
}

/// One node's answer to a sync.
enum Answer {
    Holds(Holding),
    /// The node's process is gone (connection refused): it holds nothing.
    Gone,
    /// No answer (paused, partitioned, overloaded): it may hold runs.
    Silent,
}

async fn sync_member(node: &Node, member: &Member, term: u64) -> Answer {
    if member.name == node.config.node_name {
        return Answer::Holds(node.worker.sync(term));
    }
    match node.rpc.sync(&member.rpc_addr, term).await {
        Ok(holding) => Answer::Holds(holding),
        Err(RpcError::Unreachable { refused: true, .. }) => Answer::Gone,
        Err(_) => Answer::Silent,
    }
}

/// Ask nodes what they hold; claim it. Answers the names of the nodes that answered with what they run, and
/// the names of the silent ones.
async fn sync_nodes(node: &Node, members: &[Member], term: u64) -> (HashMap<String, HashSet<ExecRef>>, Vec<String>) {
    let answers = futures::future::join_all(members.iter().map(|m| sync_member(node, m, term))).await;
    let mut held = HashMap::new();
    let mut silent = Vec::new();
    let mut claims = node.claims.lock().expect("claims lock");
    for (member, answer) in members.iter().zip(answers) {
        match answer {
            Answer::Holds(holding) => {
                let mut refs = HashSet::new();
                for exec in holding.running.into_iter().chain(holding.unreported).chain(holding.scheduled) {
                    claims.claim(exec.clone(), &member.name);
                    refs.insert(exec);
                }
                held.insert(member.name.clone(), refs);
            }
            Answer::Gone => {
                // Its process is gone, though gossip may call it alive for a few seconds more: place nothing there,
                // and what it was sent but never started is free to go elsewhere.
                node.unreachable.lock().expect("unreachable lock").insert(member.name.clone(), Instant::now());
                claims.retain(|_, _, target| target != member.name);
                held.insert(member.name.clone(), HashSet::new());
            }
            Answer::Silent => silent.push(member.name.clone()),
        }
    }
    (held, silent)
}

/// The leader's loop: take over (sync), then sweep periodically: dispatch pending executions whose time has
/// come (retries after their backoff, anything the previous leader decided), expire leases.
pub async fn dispatch_loop(node: Arc<Node>) {
    loop {
        if !node.wait_for_leadership().await {
            return;
        }
        // A new multi-server leader accepts writes once a quorum acknowledged it. Then read the state only after
        // applying everything committed so far: entries of the previous term (a finish reported just before the
        // old leader died) are committed by this leader's first entry, and a pending execution that is in
        // fact finished must not be dispatched again.
        node.wait_writable().await;
        if let Err(err) = node.leader_read_index().await {
            warn!("takeover: {}; trying again", err.message);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let term = node.raft.metrics().borrow_watched().current_term;
        node.worker.observe_term(term);
        node.claims.lock().expect("claims lock").clear();
        *node.takeover.lock().expect("takeover lock") = Takeover::default();
        let members = node.membership.alive();
        let (held, silent) = sync_nodes(&node, &members, term).await;
        let pending_now: Vec<ExecRef> = match node.state.active() {
            Ok(active) => active
                .iter()
                .filter(|e| e.status == ExecutionStatus::Pending)
                .map(|e| ExecRef { job: e.job_name.clone(), id: e.id.clone() })
                .collect(),
            Err(err) => {
                warn!("takeover: cannot read active executions: {err}");
                Vec::new()
            }
        };
        {
            let mut takeover = node.takeover.lock().expect("takeover lock");
            let deadline = Instant::now() + node.worker.lease;
            takeover.unknown = silent.iter().map(|n| (n.clone(), deadline)).collect();
            if !takeover.unknown.is_empty() {
                let claims = node.claims.lock().expect("claims lock");
                takeover.suspects = pending_now.into_iter().filter(|r| !claims.contains(r)).collect();
                warn!(
                    "took over in term {term}; {} node(s) did not answer ({}): holding {} pending run(s) of the \
                     previous leader until they do, at most {:?}",
                    silent.len(),
                    silent.join(", "),
                    takeover.suspects.len(),
                    node.worker.lease
                );
            }
        }
        node.leader_term.store(term, std::sync::atomic::Ordering::SeqCst);
        info!("leading in term {term}: {} node(s) synced", held.len());
        let mut first = Some(held);
        loop {
            if node.is_stopping() || !node.is_leader() {
                break;
            }
            let mut wait = SWEEP_INTERVAL;
            match sweep(&node, first.take(), term).await {
                Ok(Some(retry_at)) => wait = wait.min(time_until(retry_at)),
                Ok(None) => {}
                Err(err) => warn!("dispatcher: {}", err.message),
            }
            tokio::select! {
                _ = node.stopping_token().cancelled() => return,
                _ = node.dispatch_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        node.leader_term.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Ask the nodes that were silent at the takeover again; release the previous leader's pending runs once all
/// answered, died, or their time is up.
async fn resolve_silent(node: &Node, term: u64) {
    let unknown: Vec<String> = node.takeover.lock().expect("takeover lock").unknown.keys().cloned().collect();
    if unknown.is_empty() {
        return;
    }
    let alive = node.membership.alive();
    let asked: Vec<Member> = alive.iter().filter(|m| unknown.contains(&m.name)).cloned().collect();
    let (held, _) = sync_nodes(node, &asked, term).await;
    let mut takeover = node.takeover.lock().expect("takeover lock");
    let now = Instant::now();
    takeover
        .unknown
        .retain(|name, deadline| !held.contains_key(name) && *deadline > now && alive.iter().any(|m| m.name == *name));
    if takeover.unknown.is_empty() && !takeover.suspects.is_empty() {
        info!("every node answered (or is presumed dead): dispatching the previous leader's pending runs");
        takeover.suspects.clear();
    }
}

/// One pass over the active executions; answers the earliest future retry instant, to wake for it.
async fn sweep(
    node: &Node,
    synced: Option<HashMap<String, HashSet<ExecRef>>>,
    term: u64,
) -> Result<Option<Timestamp>, ApiError> {
    resolve_silent(node, term).await;
    let now = Timestamp::now();
    let taken = Instant::now();
    let active = node.state.active()?;
    // An order expires one lease after its instant (at most DECIDE_AHEAD_MAX after its dispatch): past that, a
    // node cannot start it any more, so a run still pending can safely be placed again.
    let stale_after = node.worker.lease + DECIDE_AHEAD_MAX + Duration::from_secs(1);
    {
        let by_ref: HashMap<ExecRef, &Execution> =
            active.iter().map(|e| (ExecRef { job: e.job_name.clone(), id: e.id.clone() }, e)).collect();
        let mut claims = node.claims.lock().expect("claims lock");
        claims.retain(|exec, at, target| match by_ref.get(exec) {
            // Claimed after this snapshot was read: keep.
            None => *at > taken,
            // Sent but never started: the node died or lost it; place it again once the order expired.
            Some(e) if e.status == ExecutionStatus::Pending => {
                target == node.config.node_name.as_str() || at.elapsed() < stale_after
            }
            Some(_) => true,
        });
    }
    let next_retry = active
        .iter()
        .filter(|e| e.status == ExecutionStatus::Pending)
        .filter_map(|e| e.not_before)
        .filter(|t| *t > now)
        .min();
    let mut lost = Vec::new();
    let mut due = Vec::new();
    for exec in &active {
        match exec.status {
            ExecutionStatus::Pending if exec.not_before.is_none_or(|t| t <= now) => due.push((exec, None)),
            ExecutionStatus::Running => {
                let exec_ref = ExecRef { job: exec.job_name.clone(), id: exec.id.clone() };
                let disowned = synced
                    .as_ref()
                    .and_then(|held| held.get(&exec.node_name))
                    .is_some_and(|refs| !refs.contains(&exec_ref));
                let expired = exec.lease_until.is_some_and(|l| l < now);
                if disowned || expired {
                    let reason = if disowned {
                        format!("lost: node '{}' no longer runs it (it restarted or died)", exec.node_name)
                    } else {
                        "lost: its lease expired without a renewal".to_string()
                    };
                    lost.push((exec, reason, disowned));
                }
            }
            _ => {}
        }
    }
    let unplaced = dispatch(node, due);
    let mut results = Vec::new();
    for exec in unplaced {
        let since = exec.not_before.unwrap_or(exec.scheduled_at);
        if now.duration_since(since).unsigned_abs() < PLACE_GRACE || since > now {
            continue;
        }
        let tags = node.state.definition(&exec.job_name).ok().flatten().map(|j| j.tags.clone()).unwrap_or_default();
        let error = match &exec.target {
            Some(target) => format!(
                "its node '{target}' is not alive or no longer matches the job's tags {tags:?} (waited {PLACE_GRACE:?})"
            ),
            None => format!("no live node matches the job's tags {tags:?} (waited {PLACE_GRACE:?})"),
        };
        warn!("execution {}/{} failed: {error}", exec.job_name, exec.id);
        results.push(Finish {
            exec: ExecRef { job: exec.job_name.clone(), id: exec.id.clone() },
            status: ExecutionStatus::Failed,
            exit_code: None,
            error: Some(error),
            output_tail: String::new(),
            output_bytes: 0,
            node: String::new(),
            started_at: None,
            finished_at: now,
            retry_at: crate::node::retry_instant(node, &exec.job_name, exec.attempt, now),
            only_if_lease_expired: false,
        });
    }
    if lost.is_empty() && results.is_empty() {
        return Ok(next_retry);
    }
    for (exec, reason, disowned) in lost {
        warn!("execution {}/{} {reason}", exec.job_name, exec.id);
        let retry_at = crate::node::retry_instant(node, &exec.job_name, exec.attempt, now);
        results.push(Finish {
            exec: ExecRef { job: exec.job_name.clone(), id: exec.id.clone() },
            status: ExecutionStatus::Lost,
            exit_code: None,
            error: Some(reason),
            output_tail: exec.output.clone(),
            output_bytes: exec.output_bytes,
            node: exec.node_name.clone(),
            started_at: exec.started_at,
            finished_at: now,
            retry_at,
            only_if_lease_expired: !disowned,
        });
    }
    node.submit(Command::Finish { results }).await?;
    Ok(next_retry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_model::Trigger;

    fn member(name: &str, tags: &[(&str, &str)]) -> Member {
        Member {
            name: name.into(),
            server: false,
            raft_id: None,
            rpc_addr: format!("{name}:6868"),
            http_addr: String::new(),
            gossip_addr: ([127, 0, 0, 1], 8946).into(),
            generation: 1,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            status: crate::gossip::Status::Alive,
            raft_initialized: false,
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

    #[test]
    fn the_least_busy_matching_node_is_chosen() {
        let mut members = vec![member("a", &[("pool", "x")]), member("b", &[("pool", "x")]), member("c", &[])];
        let mut claims = Claims::default();
        claims.claim(exec_ref(1), "a");
        claims.claim(exec_ref(2), "a");
        claims.claim(exec_ref(3), "b");
        let job = job(&[("pool", "x")]);
        let picked = place(&mut members, &job, &exec(), &claims, "leader").map(|m| m.name.clone());
        assert_eq!(picked.as_deref(), Some("b"), "b runs 1, a runs 2; c does not match");
        claims.release(&exec_ref(1));
        claims.release(&exec_ref(2));
        assert_eq!(claims.load.get("a"), Some(&0));
        assert_eq!(place(&mut members, &job, &exec(), &claims, "leader").map(|m| m.name.clone()).as_deref(), Some("a"));
    }

    #[test]
    fn a_job_without_tags_can_run_anywhere_and_unmatched_tags_nowhere() {
        let mut members = vec![member("a", &[("zone", "eu")]), member("b", &[])];
        let claims = Claims::default();
        assert!(place(&mut members, &job(&[]), &exec(), &claims, "leader").is_some());
        assert!(place(&mut members, &job(&[("zone", "us")]), &exec(), &claims, "leader").is_none());
    }

    #[test]
    fn a_retry_avoids_the_node_of_the_failed_attempt_unless_it_is_the_only_one() {
        let mut members = vec![member("a", &[]), member("b", &[])];
        let mut claims = Claims::default();
        claims.claim(exec_ref(1), "b"); // b is busier, but a failed the previous attempt
        let mut retry = exec();
        retry.previous_node = Some("a".into());
        for _ in 0..20 {
            assert_eq!(
                place(&mut members, &job(&[]), &retry, &claims, "leader").map(|m| m.name.clone()).as_deref(),
                Some("b")
            );
        }
        let mut alone = vec![member("a", &[])];
        assert_eq!(
            place(&mut alone, &job(&[]), &retry, &claims, "leader").map(|m| m.name.clone()).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn the_leader_runs_jobs_only_when_no_other_node_is_eligible() {
        let mut members = vec![member("leader", &[("gpu", "yes")]), member("b", &[])];
        let mut claims = Claims::default();
        claims.claim(exec_ref(1), "b");
        claims.claim(exec_ref(2), "b");
        let pick = |members: &mut Vec<Member>, job: &Job| {
            place(members, job, &exec(), &claims, "leader").map(|m| m.name.clone())
        };
        assert_eq!(pick(&mut members, &job(&[])).as_deref(), Some("b"), "b is busier but is not the leader");
        assert_eq!(pick(&mut members, &job(&[("gpu", "yes")])).as_deref(), Some("leader"), "only the leader matches");
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
        claims.claim(exec_ref(1), "w1");
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
            let picked = place(&mut members, &web, &copies[1], &claims, "leader").map(|m| m.name.clone());
            assert_eq!(picked.as_deref(), Some("b"));
        }
        let mut gone = copies[0].clone();
        gone.target = Some("z".into());
        assert!(place(&mut members, &web, &gone, &claims, "leader").is_none(), "its node is not alive");

        // "role: web:2" with a third web node: the retry of the copy that failed on a leaves a and the node that
        // runs the other copy (b), so it goes to d.
        members.push(member("d", &[("role", "web")]));
        let mut claims = Claims::default();
        claims.claim(ExecRef { job: "j".into(), id: copies[1].id.clone() }, "b");
        let mut failed = copies[0].clone();
        failed.node_name = "a".into();
        let mut retry = failed.retry(exec().scheduled_at);
        retry.target = None;
        for _ in 0..20 {
            let picked = place(&mut members, &job(&[("role", "web:2")]), &retry, &claims, "leader");
            assert_eq!(picked.map(|m| m.name.clone()).as_deref(), Some("d"));
        }
    }

    #[test]
    fn a_claim_is_taken_once_and_counted_once() {
        let mut claims = Claims::default();
        assert!(claims.claim(exec_ref(1), "a"));
        assert!(!claims.claim(exec_ref(1), "b"), "a second claim of the same execution is refused");
        assert_eq!((claims.load.get("a"), claims.load.get("b")), (Some(&1), None));
        claims.retain(|_, _, node| node != "a");
        assert!(!claims.contains(&exec_ref(1)));
        assert_eq!(claims.load.get("a"), Some(&0));
    }
}
