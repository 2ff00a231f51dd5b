//! The worker every node has: it runs the executions the leader orders, and reports on them.
//!
//! An [`Order`] carries everything needed to run (the spec), the instant to start at (runs are decided ahead of
//! their slot), and the Raft term of the leader that ordered it. The worker refuses orders of a term older than
//! one it has seen (fencing a deposed leader), keeps early orders on its own timer and launches them at their
//! instant, and asks a [`Fence`] right before launching: the leader checks its lease and commits the runs' start
//! for its own orders, any other node asks the leader for the run's launch permit (see [`crate::permit`]).
//!
//! A node runs at most `--max-running` executions at once. Orders that fall due while it is full wait in a queue
//! (at most `--max-queued`), started in the order of their instants as runs end; an order that finds the queue
//! full is recorded `skipped` with the reason. Queued orders are part of what the node holds (a new leader's
//! sync lists them), so they may start late without being placed twice, and their lease starts only when they
//! start: a busy node's runs run late, never falsely lost.
//!
//! A run's `Start`, its lease renewals and its `Finish` travel through one channel and are proposed in batches
//! ([`report_loop`]) through a [`Reporter`]: straight into Raft on a server, over RPC to a server on an agent.
//! A thousand runs a second cost a handful of Raft entries, not thousands.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use kairos_agent::{OutputStore, RunSpec, RunStatus, Runner};
use kairos_model::{Execution, ExecutionStatus, Job, Timestamp};
use kairos_store::{BATCH_ITEMS_MAX, Command, ExecRef, Finish, Response, Start};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{Config, RunLimits};
use kairos_schedule::time_until;

/// How long the reporter waits after the first report of a batch for more to join it.
const REPORT_LINGER: Duration = Duration::from_millis(5);
/// How many finished runs' output tails the worker remembers for followers.
const RECENT_OUTPUTS: usize = 1024;
/// How often a launch the fence holds back is asked about again.
const FENCE_RETRY: Duration = Duration::from_millis(50);
/// How long after its instant an order may still start. Past it the node refuses the order, so the leader can
/// place the run on another node soon after (see the dispatcher's sweep) with no risk of a second run, instead of
/// waiting for a node that is cut off or paused.
pub const START_DEADLINE: Duration = Duration::from_secs(3);

/// What the worker tells the leader.
#[derive(Debug)]
pub enum Report {
    Start(Start),
    Finish(Finish),
}

/// One run ordered by the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub exec: ExecRef,
    pub spec: RunSpec,
    /// The Raft term of the leader that ordered it.
    pub term: u64,
    /// Start at this instant (the slot), or at once.
    pub at: Option<Timestamp>,
    /// An order that has not started by this instant (its start instant plus [`START_DEADLINE`]) is refused, on
    /// arrival or at launch: its leader may have given up on it (a node paused or cut off while the order sat in
    /// its socket) and placed the run elsewhere.
    pub expires_at: Timestamp,
    /// How many output files of this job the node keeps (the job's retention): older ones are deleted after a
    /// run, so an agent's disk stays bounded like the state is.
    pub keep_outputs: u32,
    /// The sender's clock when the order was sent (stamped by the RPC client). The receiver moves `at` and
    /// `expires_at` by the difference to its own clock, so a node whose clock is fast or slow still starts the run
    /// at the leader's instant (see [`Order::on_local_clock`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Timestamp>,
}

/// Beyond this difference between a sender's clock and ours (network delay included), say so in the log.
pub const CLOCK_SKEW_WARN: Duration = Duration::from_millis(500);
/// At most one clock warning per this many seconds: orders arrive every second.
const CLOCK_SKEW_WARN_EVERY_S: i64 = 60;

/// Log (rate-limited) when the shift applied to an order ([`Order::on_local_clock`]) says our clock is off.
pub fn note_clock_shift(shift: jiff::SignedDuration) {
    static LAST_WARNED_S: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
    if shift.unsigned_abs() <= CLOCK_SKEW_WARN {
        return;
    }
    let now_s = Timestamp::now().as_second();
    let last = LAST_WARNED_S.load(Ordering::Relaxed);
    if last.checked_add(CLOCK_SKEW_WARN_EVERY_S).is_some_and(|next| now_s < next) {
        return;
    }
    LAST_WARNED_S.store(now_s, Ordering::Relaxed);
    warn!(
        "this node's clock is {shift:#} off the leader's (network delay included): orders are moved to this clock, \
         so runs still start at the leader's instants, but check NTP"
    );
}

impl Order {
    /// The order with its instants moved from the sender's clock to this node's: both are shifted by how far
    /// our clock is from the sender's at receipt. That difference includes the network delay, so the run starts
    /// that much late, never early, whatever either clock says. Answers the shift applied.
    pub fn on_local_clock(mut self, now: Timestamp) -> (Order, jiff::SignedDuration) {
        let Some(sent_at) = self.sent_at.take() else {
            return (self, jiff::SignedDuration::ZERO);
        };
        let shift = now.duration_since(sent_at);
        let moved = |t: Timestamp| t.checked_add(shift).unwrap_or(t);
        self.at = self.at.map(moved);
        self.expires_at = moved(self.expires_at);
        (self, shift)
    }
}

/// What a fence says about launching a batch of orders now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Launch,
    /// Launch these orders of the batch and drop the others: the leader granted a permit for these only (it no
    /// longer has the others placed on this node, see `crate::permit`).
    Only(HashSet<ExecRef>),
    /// Launch these orders of the batch and drop the others: their start is committed already, as running here
    /// since `at` (a leader's own orders, see `node::permits`). They launch even if a newer term was seen since:
    /// every later leader reads them as running here. Not once half their lease has passed (this node was paused):
    /// a leader may record them lost before a renewal reaches it.
    Started {
        at: Timestamp,
        execs: HashSet<ExecRef>,
    },
    /// Not sure yet (e.g. the leader's lease needs a fresh quorum ack, or the leader did not answer): ask again
    /// shortly.
    Wait,
    /// The order's leader no longer leads: drop it; the next leader decides what to do with the execution.
    Drop,
}

impl Verdict {
    /// Whether `exec`, one of the batch asked about, may launch.
    fn launches(&self, exec: &ExecRef) -> bool {
        match self {
            Verdict::Launch => true,
            Verdict::Only(granted) => granted.contains(exec),
            Verdict::Started { execs, .. } => execs.contains(exec),
            Verdict::Wait | Verdict::Drop => false,
        }
    }

    /// When the run's start was committed, for a [`Verdict::Started`].
    fn committed_start(&self) -> Option<Timestamp> {
        match self {
            Verdict::Started { at, .. } => Some(*at),
            _ => None,
        }
    }
}

/// Asked right before a batch of orders of one term is launched, with the batch's executions.
pub type Fence = Arc<dyn Fn(u64, Vec<ExecRef>) -> BoxFuture<'static, Verdict> + Send + Sync>;

/// Where reports go: into Raft on a server, to a server over RPC on an agent.
pub trait Reporter: Send + Sync + 'static {
    fn submit(&self, command: Command) -> BoxFuture<'_, Result<Response, String>>;
}

/// The answer to a new leader's sync: what this worker has that the state may not show yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Holding {
    /// Launched and not finished.
    pub running: Vec<ExecRef>,
    /// Finished, but the finish is not committed yet.
    pub unreported: Vec<ExecRef>,
    /// Accepted orders still waiting for their instant (of the new term).
    pub scheduled: Vec<ExecRef>,
}

impl Holding {
    /// Every execution the node holds, whatever its stage.
    pub fn all(self) -> impl Iterator<Item = ExecRef> {
        self.running.into_iter().chain(self.unreported).chain(self.scheduled)
    }
}

/// How a cancel request ended on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancelled {
    /// It was running; its finish (cancelled) will be reported.
    Running,
    /// It was waiting for its instant and will never start; the caller records the cancellation.
    Withdrawn,
    NotHere,
}

struct RunningExec {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

struct Waiting {
    order: Order,
    seq: u64,
}

/// What runs on this node and what waits for a free place: under one lock, so a place is never taken twice and
/// a new leader's sync sees every order exactly once.
#[derive(Default)]
struct Runs {
    running: HashMap<ExecRef, RunningExec>,
    /// Orders due but not started, by (instant, arrival): waiting for a free place, or for the fence.
    queue: BTreeMap<(Timestamp, u64), Queued>,
    /// Where each queued execution is in `queue`.
    queue_index: HashMap<ExecRef, (Timestamp, u64)>,
    /// Queued orders whose fence is being asked: their places are taken.
    checking: usize,
    /// Shutting down: nothing starts any more.
    closed: bool,
}

struct Queued {
    order: Order,
    /// The fence is being asked about it.
    checking: bool,
}

impl Runs {
    fn queued(&self, exec: &ExecRef) -> Option<(Timestamp, u64)> {
        self.queue_index.get(exec).copied()
    }

    fn enqueue(&mut self, key: (Timestamp, u64), order: Order) {
        self.queue_index.insert(order.exec.clone(), key);
        self.queue.insert(key, Queued { order, checking: false });
    }

    /// Take a queued order out (its place, if the fence was being asked, is freed).
    fn dequeue(&mut self, key: &(Timestamp, u64)) -> Option<Queued> {
        let queued = self.queue.remove(key)?;
        self.queue_index.remove(&queued.order.exec);
        if queued.checking {
            self.checking -= 1;
        }
        Some(queued)
    }

    /// Keep the queued orders `keep` answers true for.
    fn retain_queued(&mut self, keep: impl Fn(&Order) -> bool) {
        self.queue.retain(|_, q| keep(&q.order));
        let queue = &self.queue;
        self.queue_index.retain(|_, key| queue.contains_key(key));
        self.checking = self.queue.values().filter(|q| q.checking).count();
    }

    fn holds(&self, exec: &ExecRef) -> bool {
        self.running.contains_key(exec) || self.queued(exec).is_some()
    }
}

#[derive(Clone)]
pub struct Worker {
    runner: Runner,
    outputs: OutputStore,
    retained_default: u32,
    node_name: String,
    /// The output cap the orders this node prepares (as leader) carry; changes on a configuration reload.
    output_max_bytes: Arc<AtomicU64>,
    pub lease: Duration,
    /// The executors this node runs (`--executors`): orders of others are refused.
    executors: Arc<Vec<String>>,
    /// This node's clock offset from the leader (see [`crate::clock`]).
    pub clock: Arc<crate::clock::Clock>,
    /// `--clock-offset-max`: orders are refused while the clock is further off than this (zero: no limit).
    clock_offset_max: Duration,
    runs: Arc<Mutex<Runs>>,
    limits: RunLimits,
    /// Orders waiting for their instant, by execution; the launcher's heap holds (instant, seq).
    waiting: Arc<Mutex<HashMap<ExecRef, Waiting>>>,
    timer: UnboundedSender<(Timestamp, u64)>,
    sequence: Arc<AtomicU64>,
    /// The highest leader term seen; older orders are refused.
    max_term: Arc<AtomicU64>,
    fence: Arc<Mutex<Option<Fence>>>,
    /// Orders the fence dropped: the leader that sent them (if it still leads) must hear of it.
    dropped: UnboundedSender<ExecRef>,
    reports: UnboundedSender<Report>,
    /// Finishes sent but not committed yet.
    unreported: Arc<Mutex<HashSet<ExecRef>>>,
    /// The final output tails of the latest finished runs: an output that fits in the tail is never written to
    /// a file, so followers of a run that just ended read its last part here.
    recent: Arc<Mutex<std::collections::VecDeque<(ExecRef, String)>>>,
    /// Reports sent but not yet committed; shutdown waits for zero.
    in_flight: Arc<AtomicUsize>,
    /// Runs launched since the node started (see [`crate::memory`]).
    launched: Arc<AtomicU64>,
}

/// The receiving ends the node wires to [`report_loop`] and to its dispatcher.
pub struct WorkerChannels {
    pub reports: UnboundedReceiver<Report>,
    pub dropped: UnboundedReceiver<ExecRef>,
    pub timer: UnboundedReceiver<(Timestamp, u64)>,
}

impl Worker {
    /// Let running executions finish (bounded by the shutdown grace), cancel the rest, and flush their reports.
    pub async fn drain(&self, config: &Config) {
        // Queued and early orders never start now; the leader places them again elsewhere.
        self.close();
        let deadline = tokio::time::Instant::now() + config.shutdown_grace;
        while self.running_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.cancel_all("cancelled: the node shut down");
        if self.running_count() > 0 {
            warn!("shutting down: cancelling {} executions still running", self.running_count());
            let deadline = tokio::time::Instant::now() + config.kill_grace + Duration::from_secs(2);
            while self.running_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.flush_reports().await;
    }

    pub fn new(config: &Config, outputs: OutputStore) -> (Worker, WorkerChannels) {
        let (reports_tx, reports) = unbounded_channel();
        let (timer_tx, timer) = unbounded_channel();
        let (dropped_tx, dropped) = unbounded_channel();
        let worker = Worker {
            runner: Runner::with_plugins(outputs.clone(), config.kill_grace, config.plugins.clone()),
            outputs,
            retained_default: config.executions_retained,
            node_name: config.node_name.clone(),
            output_max_bytes: Arc::new(AtomicU64::new(config.output_max_bytes)),
            lease: config.execution_lease,
            executors: Arc::new(config.executors.clone()),
            clock: Arc::new(crate::clock::Clock::default()),
            clock_offset_max: config.clock_offset_max,
            runs: Arc::new(Mutex::new(Runs::default())),
            limits: config.run_limits,
            waiting: Arc::new(Mutex::new(HashMap::new())),
            timer: timer_tx,
            sequence: Arc::new(AtomicU64::new(0)),
            max_term: Arc::new(AtomicU64::new(0)),
            fence: Arc::new(Mutex::new(None)),
            dropped: dropped_tx,
            reports: reports_tx,
            unreported: Arc::new(Mutex::new(HashSet::new())),
            recent: Arc::new(Mutex::new(std::collections::VecDeque::new())),
            in_flight: Arc::new(AtomicUsize::new(0)),
            launched: Arc::new(AtomicU64::new(0)),
        };
        (worker, WorkerChannels { reports, dropped, timer })
    }

    /// `--output-max-bytes` for the runs this node orders from now on (a reload).
    pub fn set_output_max_bytes(&self, bytes: u64) {
        self.output_max_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn set_fence(&self, fence: Fence) {
        *self.fence.lock().expect("fence lock") = Some(fence);
    }

    fn report(&self, report: Report) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Report::Finish(finish) = &report {
            self.unreported.lock().expect("unreported lock").insert(finish.exec.clone());
        }
        if self.reports.send(report).is_err() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub fn running_count(&self) -> usize {
        self.runs.lock().expect("runs lock").running.len()
    }

    /// Runs launched since the node started.
    pub fn launched_count(&self) -> u64 {
        self.launched.load(Ordering::Relaxed)
    }

    /// Orders due and waiting for a free place (see [`RunLimits`]).
    pub fn queued_count(&self) -> usize {
        self.runs.lock().expect("runs lock").queue.len()
    }

    pub fn is_running(&self, exec_ref: &ExecRef) -> bool {
        self.runs.lock().expect("runs lock").running.contains_key(exec_ref)
    }

    /// The final output tail of a run of this worker that finished lately, if it is still remembered.
    pub fn recent_output(&self, exec: &ExecRef) -> Option<String> {
        let recent = self.recent.lock().expect("recent lock");
        recent.iter().rev().find(|(r, _)| r == exec).map(|(_, tail)| tail.clone())
    }

    pub fn running_refs(&self) -> Vec<ExecRef> {
        self.runs.lock().expect("runs lock").running.keys().cloned().collect()
    }

    /// Note a term seen elsewhere (e.g. this server's own Raft): orders older than it are refused from now on.
    pub fn observe_term(&self, term: u64) {
        self.max_term.fetch_max(term, Ordering::SeqCst);
    }

    /// Stop a run of this worker, or withdraw it if it waits for its instant.
    pub fn cancel(&self, exec_ref: &ExecRef, reason: &str) -> Cancelled {
        {
            let mut runs = self.runs.lock().expect("runs lock");
            if let Some(run) = runs.running.get(exec_ref) {
                run.reason.lock().expect("reason lock").get_or_insert_with(|| reason.to_string());
                run.token.cancel();
                return Cancelled::Running;
            }
            if let Some(key) = runs.queued(exec_ref) {
                // A queued order whose fence is being asked is simply not found when the answer comes.
                runs.dequeue(&key);
                return Cancelled::Withdrawn;
            }
        }
        if self.waiting.lock().expect("waiting lock").remove(exec_ref).is_some() {
            return Cancelled::Withdrawn;
        }
        Cancelled::NotHere
    }

    pub fn cancel_all(&self, reason: &str) {
        self.close();
        for exec_ref in self.running_refs() {
            self.cancel(&exec_ref, reason);
        }
    }

    /// A new leader of `term` asks what this worker holds. Orders of older terms that have not started are
    /// dropped (the new leader re-decides them), and no older order is accepted after this.
    pub fn sync(&self, term: u64) -> Holding {
        // Under the running lock: a launch either registered its runs before this (they are listed) or checks
        // the raised term after it (and drops them); see `launch_checked`.
        let (running, queued) = {
            let mut runs = self.runs.lock().expect("runs lock");
            self.observe_term(term);
            let runs = &mut *runs;
            let before = runs.queue.len();
            // A dropped order whose fence is being asked is not found when the answer comes.
            runs.retain_queued(|order| order.term >= term);
            if runs.queue.len() < before {
                debug!("sync of term {term}: {} queued order(s) of older terms dropped", before - runs.queue.len());
            }
            let queued: Vec<ExecRef> = runs.queue.values().map(|q| q.order.exec.clone()).collect();
            (runs.running.keys().cloned().collect::<Vec<_>>(), queued)
        };
        let mut scheduled: Vec<ExecRef> = {
            let mut waiting = self.waiting.lock().expect("waiting lock");
            waiting.retain(|_, w| w.order.term >= term);
            waiting.keys().cloned().collect()
        };
        scheduled.extend(queued);
        Holding {
            running,
            unreported: self.unreported.lock().expect("unreported lock").iter().cloned().collect(),
            scheduled,
        }
    }

    /// Get a run ready: everything that can be done before its instant is done here, on the leader.
    pub fn prepare(&self, exec: &Execution, job: &Job, term: u64, at: Option<Timestamp>) -> Order {
        let mut spec = RunSpec::new(&exec.job_name, &exec.id, &job.executor, job.executor_config.clone());
        spec.output_limit_bytes = self.output_max_bytes.load(Ordering::Relaxed);
        spec.processors = job.processors.clone();
        spec.extra_env = vec![
            ("KAIROS_EXECUTION_ID".into(), exec.id.clone()),
            ("KAIROS_SCHEDULED_AT".into(), exec.scheduled_at.to_string()),
            ("KAIROS_ATTEMPT".into(), exec.attempt.to_string()),
            ("KAIROS_TRIGGER".into(), trigger_name(exec.trigger).into()),
        ];
        let expires_at = at.unwrap_or_else(Timestamp::now).max(Timestamp::now()) + START_DEADLINE;
        let keep_outputs = job.executions_retained.unwrap_or(self.retained_default).max(1);
        let exec = ExecRef { job: exec.job_name.clone(), id: exec.id.clone() };
        Order { exec, spec, term, at, expires_at, keep_outputs, sent_at: None }
    }

    /// Take an order: refused (false) if its term is older than one seen; launched at its instant otherwise.
    pub fn accept(&self, order: Order) -> bool {
        // Every line about this order carries its job, execution and term (see crate::logging).
        let _span = info_span!("order", job = %order.exec.job, execution = %order.exec.id, term = order.term).entered();
        if let Some(offset) = self.clock.offset().filter(|o| o.beyond(self.clock_offset_max)) {
            warn!(
                "refusing {}/{}: this node's clock is {} ms off the leader's (±{} ms), more than --clock-offset-max {:?}",
                order.exec.job, order.exec.id, offset.offset_ms, offset.error_ms, self.clock_offset_max
            );
            return false;
        }
        if !self.executors.contains(&order.spec.executor) {
            warn!(
                "refusing {}/{}: this node does not run the '{}' executor (--executors)",
                order.exec.job, order.exec.id, order.spec.executor
            );
            return false;
        }
        if order.expires_at < Timestamp::now() {
            // A node past its capacity may refuse thousands a second: the log must not fill the disk.
            static EXPIRED: Limited = Limited::new("more expired orders were refused");
            EXPIRED.warn(|| {
                format!("refusing {}/{}: the order expired at {}", order.exec.job, order.exec.id, order.expires_at)
            });
            return false;
        }
        let seen = self.max_term.fetch_max(order.term, Ordering::SeqCst);
        if order.term < seen {
            debug!("refusing {}/{}: term {} < {seen}", order.exec.job, order.exec.id, order.term);
            return false;
        }
        if self.runs.lock().expect("runs lock").holds(&order.exec) {
            return true; // a repeated order (e.g. a re-dispatch after a lost reply): it runs or waits already
        }
        match order.at {
            Some(at) if at > Timestamp::now() => {
                let seq = self.sequence.fetch_add(1, Ordering::SeqCst);
                let exec = order.exec.clone();
                self.waiting.lock().expect("waiting lock").insert(exec, Waiting { order, seq });
                let _ = self.timer.send((at, seq));
            }
            _ => self.launch_due(vec![order]),
        }
        true
    }

    /// Orders whose instant has come: queue them in the order of their instants (or record them skipped when the
    /// node is full, see [`RunLimits`]) and start what fits.
    fn launch_due(&self, orders: Vec<Order>) {
        let now = Timestamp::now();
        let mut skipped = Vec::new();
        let mut dropped = Vec::new();
        {
            let mut runs = self.runs.lock().expect("runs lock");
            for order in orders {
                if runs.holds(&order.exec) {
                    continue;
                }
                // Past its start deadline the leader may have placed the run elsewhere: never start it here then.
                // Once queued, an order is held (a new leader's sync lists it), so it may start late.
                if order.expires_at < now {
                    warn!(
                        "not starting {}/{}: its start deadline passed at {}",
                        order.exec.job, order.exec.id, order.expires_at
                    );
                    dropped.push(order);
                    continue;
                }
                if runs.closed {
                    dropped.push(order);
                    continue;
                }
                let held = runs.running.len() + runs.queue.len();
                if held >= self.limits.max_running + self.limits.max_queued {
                    skipped.push((order, held));
                    continue;
                }
                let seq = self.sequence.fetch_add(1, Ordering::SeqCst);
                runs.enqueue((order.at.unwrap_or(now), seq), order);
            }
            crate::metrics::metrics().runs_queued.set(runs.queue.len() as i64);
        }
        for order in dropped {
            let _ = self.dropped.send(order.exec);
        }
        for (order, held) in skipped {
            self.skip_overloaded(order, held);
        }
        self.start_queued();
    }

    /// Record an order skipped: the node is full (`held` runs running or waiting for a place).
    fn skip_overloaded(&self, order: Order, held: usize) {
        let RunLimits { max_running, max_queued } = self.limits;
        let error = format!(
            "skipped: node '{}' is overloaded: {held} runs are running or waiting for a place, the most it holds \
             (--max-running {max_running}, --max-queued {max_queued})",
            self.node_name
        );
        note_skip(|| format!("execution {}/{} {error}", order.exec.job, order.exec.id));
        crate::metrics::metrics().runs_skipped_overloaded.inc();
        self.report(Report::Finish(Finish {
            exec: order.exec,
            status: ExecutionStatus::Skipped,
            exit_code: None,
            error: Some(error),
            output_tail: String::new(),
            output_bytes: 0,
            node: self.node_name.clone(),
            started_at: None,
            finished_at: self.clock.leader_now(),
            retry_at: None,
            only_if_lease_expired: false,
        }));
    }

    /// Start queued orders, earliest instant first, while places are free. Each asks the fence first (on a task:
    /// the fence may need to ask Raft) and stays queued, so held, until the answer; its place is taken meanwhile.
    fn start_queued(&self) {
        let fence = self.fence.lock().expect("fence lock").clone();
        loop {
            let picked: Vec<Order> = {
                let mut runs = self.runs.lock().expect("runs lock");
                if runs.closed {
                    return;
                }
                let free = self.limits.max_running.saturating_sub(runs.running.len() + runs.checking);
                let runs = &mut *runs;
                let mut picked = Vec::new();
                for queued in runs.queue.values_mut().filter(|q| !q.checking).take(free) {
                    queued.checking = true;
                    picked.push(queued.order.clone());
                }
                runs.checking += picked.len();
                picked
            };
            if picked.is_empty() {
                return;
            }
            let mut by_term: BTreeMap<u64, Vec<Order>> = BTreeMap::new();
            for order in picked {
                by_term.entry(order.term).or_default().push(order);
            }
            let Some(fence) = fence.clone() else {
                let dropped: usize =
                    by_term.into_iter().map(|(term, orders)| self.launch_checked(term, &Verdict::Launch, orders)).sum();
                if dropped == 0 {
                    return;
                }
                continue; // places were freed by dropped orders
            };
            let worker = self.clone();
            tokio::spawn(async move {
                let mut dropped = 0;
                for (term, orders) in by_term {
                    let deadline = tokio::time::Instant::now() + START_DEADLINE;
                    let execs: Vec<ExecRef> = orders.iter().map(|o| o.exec.clone()).collect();
                    let verdict = loop {
                        match fence(term, execs.clone()).await {
                            Verdict::Wait if tokio::time::Instant::now() < deadline => {
                                tokio::time::sleep(FENCE_RETRY).await;
                            }
                            Verdict::Wait => break Verdict::Drop,
                            verdict => break verdict,
                        }
                    };
                    dropped += worker.launch_checked(term, &verdict, orders);
                }
                if dropped > 0 {
                    worker.start_queued();
                }
            });
            return;
        }
    }

    /// After the fence answered for queued orders of `term`: start those its `verdict` lets launch unless a newer
    /// term was seen, and drop the others (their leader no longer leads, or placed them elsewhere). Orders
    /// withdrawn or dropped by a sync meanwhile are no longer queued and are left alone. The check and the start
    /// happen under the runs lock, so a concurrent [`Worker::sync`] sees either the runs or the raised term.
    /// Answers how many were dropped.
    fn launch_checked(&self, term: u64, verdict: &Verdict, orders: Vec<Order>) -> usize {
        let mut dropped = Vec::new();
        let committed = verdict.committed_start();
        // A start committed so long ago (this node was paused?) that its lease may run out before the renewals
        // (every third of a lease) reach the leader: the leader may record the run lost and retry it elsewhere, so
        // it does not start now (it turns lost, having run nowhere).
        let expired = committed.is_some_and(|at| self.clock.leader_now() >= at + self.lease / 2);
        {
            let mut runs = self.runs.lock().expect("runs lock");
            let current = !runs.closed && (committed.is_some() || self.max_term.load(Ordering::SeqCst) <= term);
            for order in orders {
                let Some(key) = runs.queued(&order.exec) else { continue };
                if !runs.queue.get(&key).is_some_and(|q| q.checking) {
                    continue; // withdrawn and ordered again meanwhile: its own turn comes
                }
                let Some(queued) = runs.dequeue(&key) else { continue };
                if !(current && !expired && verdict.launches(&queued.order.exec)) {
                    dropped.push(queued.order.exec);
                    continue;
                }
                let token = CancellationToken::new();
                let exec = queued.order.exec.clone();
                runs.running.insert(exec, RunningExec { token, reason: Arc::new(Mutex::new(None)) });
                self.launched.fetch_add(1, Ordering::Relaxed);
                let worker = self.clone();
                let order = &queued.order;
                let span = info_span!("run", job = %order.exec.job, execution = %order.exec.id, term = order.term);
                let start_committed = committed.is_some();
                spawn_run(async move { worker.run(queued.order, start_committed).await }.instrument(span));
            }
            crate::metrics::metrics().runs_queued.set(runs.queue.len() as i64);
        }
        if let Some(first) = dropped.first() {
            static DROPPED: Limited = Limited::new("more batches of runs were not launched");
            DROPPED.warn(|| format!(
                "not launching {} run(s), e.g. {}/{}: their leader (term {term}) no longer leads, or no longer has them \
                 placed here",
                dropped.len(),
                first.job,
                first.id
            ));
        }
        for exec in &dropped {
            let _ = self.dropped.send(exec.clone());
        }
        dropped.len()
    }

    /// Shutting down: nothing starts any more; orders waiting for their instant or a place are dropped (the
    /// leader places them again elsewhere: they are no longer held here).
    pub fn close(&self) {
        {
            let mut runs = self.runs.lock().expect("runs lock");
            runs.closed = true;
            runs.retain_queued(|_| false);
        }
        self.waiting.lock().expect("waiting lock").clear();
    }

    /// Run an order; `start_committed`: its start is committed already (not reported again).
    async fn run(&self, order: Order, start_committed: bool) {
        let Order { exec: exec_ref, mut spec, keep_outputs, .. } = order;
        spec.extra_env.push(("KAIROS_NODE_NAME".into(), self.node_name.clone()));
        let (token, reason) = {
            let runs = self.runs.lock().expect("runs lock");
            let run = runs.running.get(&exec_ref).expect("registered by launch_checked");
            (run.token.clone(), run.reason.clone())
        };
        // A committed start was recorded before the launch; the finish carries when the run truly started.
        let started_at = self.clock.leader_now();
        let executor = spec.executor.clone();
        crate::metrics::observe_start(&executor, &spec.extra_env, started_at);
        crate::metrics::metrics().runs_running.inc();
        debug!(executor = %executor, "run started");
        if !start_committed {
            self.report(Report::Start(Start {
                exec: exec_ref.clone(),
                node: self.node_name.clone(),
                started_at,
                lease_until: started_at + self.lease,
            }));
        }
        let outcome = self.runner.run(spec, token).await;
        let status = match outcome.status {
            RunStatus::Succeeded => ExecutionStatus::Succeeded,
            RunStatus::Failed | RunStatus::TimedOut => ExecutionStatus::Failed,
            RunStatus::Cancelled => ExecutionStatus::Cancelled,
        };
        let metrics = crate::metrics::metrics();
        metrics.runs_running.dec();
        metrics
            .runs_finished
            .get_or_create(&crate::metrics::RunLabels { executor, status: status.as_str().to_string() })
            .inc();
        let cancel_reason = reason.lock().expect("reason lock").clone();
        let error = match status {
            ExecutionStatus::Cancelled => cancel_reason.or(outcome.error),
            _ => outcome.error,
        };
        let took_s = self.clock.leader_now().duration_since(started_at).as_secs_f64();
        info!(
            status = status.as_str(),
            exit_code = outcome.exit_code,
            took_s,
            error = error.as_deref(),
            "run finished"
        );
        self.prune_outputs(&exec_ref.job, keep_outputs);
        crate::metrics::set_store_bytes("outputs", self.outputs.used_bytes());
        {
            let mut recent = self.recent.lock().expect("recent lock");
            if recent.len() >= RECENT_OUTPUTS {
                recent.pop_front();
            }
            recent.push_back((exec_ref.clone(), outcome.output_tail.clone()));
        }
        self.report(Report::Finish(Finish {
            exec: exec_ref.clone(),
            status,
            exit_code: outcome.exit_code,
            error,
            output_tail: outcome.output_tail,
            output_bytes: outcome.output_bytes,
            node: self.node_name.clone(),
            started_at: Some(started_at),
            finished_at: self.clock.leader_now(),
            retry_at: None,
            only_if_lease_expired: false,
        }));
        self.runs.lock().expect("runs lock").running.remove(&exec_ref);
        self.start_queued();
    }

    /// Keep the newest `keep` output files of a job (ids sort by slot), never one of a run still running.
    fn prune_outputs(&self, job: &str, keep: u32) {
        let ids = match self.outputs.list(job) {
            Ok(ids) => ids,
            Err(err) => {
                warn!("cannot list outputs of job {job}: {err}");
                return;
            }
        };
        let excess = ids.len().saturating_sub(keep as usize);
        for id in ids.into_iter().take(excess) {
            if self.is_running(&ExecRef { job: job.to_string(), id: id.clone() }) {
                continue;
            }
            if let Err(err) = self.outputs.delete(job, &id) {
                warn!("cannot delete output {job}/{id}: {err}");
            }
        }
    }

    /// Wait (bounded) until every report sent so far has been proposed.
    pub async fn flush_reports(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// At most one line about overload skips per this many seconds: past its capacity a node may skip thousands of
/// runs a second, and the log must not become the next thing that fills the disk.
const SKIP_LOG_EVERY_S: i64 = 10;

/// A kind of line logged at most once per [`SKIP_LOG_EVERY_S`]; the lines not logged are counted in the next.
pub(crate) struct Limited {
    last_logged_s: std::sync::atomic::AtomicI64,
    unlogged: AtomicU64,
    /// What the count of the lines not logged says, e.g. "more runs were skipped".
    more: &'static str,
}

impl Limited {
    pub(crate) const fn new(more: &'static str) -> Limited {
        Limited { last_logged_s: std::sync::atomic::AtomicI64::new(i64::MIN), unlogged: AtomicU64::new(0), more }
    }

    /// `line` is built only when it is logged: under overload most are only counted.
    fn warn(&self, line: impl FnOnce() -> String) {
        if let Some(line) = self.take(line) {
            warn!("{line}");
        }
    }

    /// The line to log now (with the count of those not logged since the last), or `None`: it is only counted.
    /// For callers that log it themselves (under their own module's name).
    pub(crate) fn take(&self, line: impl FnOnce() -> String) -> Option<String> {
        let now_s = Timestamp::now().as_second();
        let last = self.last_logged_s.load(Ordering::Relaxed);
        if last.checked_add(SKIP_LOG_EVERY_S).is_some_and(|next| now_s < next) {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.last_logged_s.store(now_s, Ordering::Relaxed);
        Some(match self.unlogged.swap(0, Ordering::Relaxed) {
            0 => line(),
            more => format!("{} ({more} {} since the last such line)", line(), self.more),
        })
    }
}

/// Log a skipped run, or count it toward the next line (which says how many were not logged).
fn note_skip(line: impl FnOnce() -> String) {
    static SKIPS: Limited = Limited::new("more runs were skipped; see kairos_runs_skipped_overloaded");
    SKIPS.warn(line);
}

/// Runs execute on a runtime of their own: starting a process blocks the thread that does it (about 0.3 ms of
/// `posix_spawn` each), and output capture writes files, so a burst of runs on the runtime that serves the API,
/// Raft and the scheduler would hold their tasks up. On their own threads the operating system shares the cores
/// between both fairly instead. Threads: one per core.
fn spawn_run(run: impl std::future::Future<Output = ()> + Send + 'static) {
    static RUNS: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    let runtime = RUNS.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("kairos-runs")
            .enable_all()
            .build();
        built.map_err(|err| warn!("cannot start the runtime for runs ({err}); runs share the main one")).ok()
    });
    match runtime {
        Some(runtime) => drop(runtime.spawn(run)),
        None => drop(tokio::spawn(run)),
    }
}

/// Launch accepted orders at their instants. The heap orders (instant, seq); an order withdrawn or dropped
/// meanwhile is simply no longer in `waiting`.
pub async fn launch_loop(worker: Worker, mut timer: UnboundedReceiver<(Timestamp, u64)>, stopping: CancellationToken) {
    let mut heap: BinaryHeap<Reverse<(Timestamp, u64)>> = BinaryHeap::new();
    loop {
        let next = heap.peek().map(|Reverse((at, _))| *at);
        let sleep_for = next.map_or(Duration::from_secs(3600), time_until);
        tokio::select! {
            _ = stopping.cancelled() => return,
            entry = timer.recv() => match entry {
                Some(entry) => heap.push(Reverse(entry)),
                None => return,
            },
            _ = tokio::time::sleep(sleep_for), if next.is_some() => {
                let now = Timestamp::now();
                let mut due = HashSet::new();
                while let Some(Reverse((at, seq))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    due.insert(seq);
                }
                let orders: Vec<Order> = {
                    let mut waiting = worker.waiting.lock().expect("waiting lock");
                    let refs: Vec<ExecRef> =
                        waiting.iter().filter(|(_, w)| due.contains(&w.seq)).map(|(r, _)| r.clone()).collect();
                    refs.iter().filter_map(|r| waiting.remove(r)).map(|w| w.order).collect()
                };
                if !orders.is_empty() {
                    worker.launch_due(orders);
                }
            }
        }
    }
}

/// Propose the worker's reports in batches: every start first, then every finish of the batch.
pub async fn report_loop(worker: Worker, reporter: Arc<dyn Reporter>, mut reports: UnboundedReceiver<Report>) {
    while let Some(first) = reports.recv().await {
        // Linger briefly so a burst of runs (and short runs' start and finish) share one proposal.
        tokio::time::sleep(REPORT_LINGER).await;
        let mut batch = vec![first];
        while batch.len() < BATCH_ITEMS_MAX {
            match reports.try_recv() {
                Ok(report) => batch.push(report),
                Err(_) => break,
            }
        }
        let count = batch.len();
        let mut starts = Vec::new();
        let mut finishes = Vec::new();
        // A run that started and finished within one batch needs no separate start: its finish carries it.
        let finished: HashSet<ExecRef> = batch
            .iter()
            .filter_map(|r| match r {
                Report::Finish(f) => Some(f.exec.clone()),
                Report::Start(_) => None,
            })
            .collect();
        for report in batch {
            match report {
                Report::Start(start) if finished.contains(&start.exec) => {}
                Report::Start(start) => starts.push(start),
                Report::Finish(finish) => finishes.push(finish),
            }
        }
        if !starts.is_empty() {
            let response = propose_with_retry(&*reporter, Command::Start { starts: starts.clone() }).await;
            // A start the state refused (cancelled while pending, or started elsewhere) must not keep running.
            let accepted: HashSet<&str> = response.executions.iter().map(|e| e.id.as_str()).collect();
            for start in &starts {
                if !accepted.contains(start.exec.id.as_str()) {
                    worker.cancel(&start.exec, "cancelled before it started");
                }
            }
        }
        if !finishes.is_empty() {
            let refs: Vec<ExecRef> = finishes.iter().map(|f| f.exec.clone()).collect();
            propose_with_retry(&*reporter, Command::Finish { results: finishes }).await;
            let mut unreported = worker.unreported.lock().expect("unreported lock");
            for exec in refs {
                unreported.remove(&exec);
            }
        }
        worker.in_flight.fetch_sub(count, Ordering::SeqCst);
    }
}

/// How long a report may fail before each further failure is an error in the log (at most one a minute).
const REPORT_FAILING_ERROR_AFTER: Duration = Duration::from_secs(60);
/// The longest pause between two tries of a report.
const REPORT_RETRY_MAX: Duration = Duration::from_secs(2);

/// A report is never dropped: it is tried until it is committed, with a growing pause (a leader change, a cluster
/// without quorum, a server too busy to answer). A run that the leader has settled meanwhile (recorded lost after
/// its lease) takes the report as a repeat, so retrying is always safe. A report that keeps failing is an error in
/// the log, once a minute.
async fn propose_with_retry(reporter: &dyn Reporter, command: Command) -> Response {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut last_error: Option<tokio::time::Instant> = None;
    loop {
        match reporter.submit(command.clone()).await {
            Ok(response) => {
                if last_error.is_some() {
                    warn!("report committed after {:?} of failures", started.elapsed());
                }
                return response;
            }
            Err(err) if started.elapsed() < REPORT_FAILING_ERROR_AFTER => {
                warn!("report not committed yet ({err}); retrying");
            }
            Err(err) => {
                if last_error.is_none_or(|at| at.elapsed() >= REPORT_FAILING_ERROR_AFTER) {
                    tracing::error!(
                        "a report of {command} has not been committed for {:?} ({err}); still retrying: can this \
                         node reach a server with a leader?",
                        started.elapsed()
                    );
                    last_error = Some(tokio::time::Instant::now());
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(REPORT_RETRY_MAX);
    }
}

/// Renew the leases of this worker's running executions well before they expire.
pub async fn renew_loop(worker: Worker, reporter: Arc<dyn Reporter>, stopping: CancellationToken) {
    let period = worker.lease / 3;
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let renewals = worker.running_refs();
        if renewals.is_empty() {
            continue;
        }
        let lease_until = worker.clock.leader_now() + worker.lease;
        for chunk in renewals.chunks(BATCH_ITEMS_MAX) {
            let command = Command::Renew { renewals: chunk.to_vec(), lease_until };
            if let Err(err) = reporter.submit(command).await {
                warn!("lease renewal failed: {err}");
            }
        }
    }
}

/// A trigger as the API spells it (`catch_up`), for `KAIROS_TRIGGER`.
fn trigger_name(trigger: kairos_model::Trigger) -> &'static str {
    use kairos_model::Trigger;
    match trigger {
        Trigger::Schedule => "schedule",
        Trigger::CatchUp => "catch_up",
        Trigger::Manual => "manual",
        Trigger::Retry => "retry",
        Trigger::Parent => "parent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_model::Trigger;

    fn worker() -> (Worker, WorkerChannels, tempfile::TempDir) {
        worker_with(crate::config::AgentArgs::default())
    }

    fn worker_with(args: crate::config::AgentArgs) -> (Worker, WorkerChannels, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let args = crate::config::AgentArgs { node_name: Some("w".into()), ..args };
        let config = args.resolve().unwrap();
        let outputs = OutputStore::open(dir.path().join("outputs")).unwrap();
        let (worker, channels) = Worker::new(&config, outputs);
        (worker, channels, dir)
    }

    #[tokio::test]
    async fn an_order_moves_to_the_receivers_clock_by_the_difference_at_receipt() {
        let (worker, _channels, _dir) = worker();
        let slot: Timestamp = "2026-11-22T00:00:10Z".parse().unwrap();
        let mut sent = order(&worker, "e1", 1, Some(slot));
        let expires = sent.expires_at;
        sent.sent_at = Some("2026-11-22T00:00:09.500Z".parse().unwrap());
        // Received when our clock says 5 s and 3 ms later than the sender's did: 5 s fast, 3 ms on the wire.
        let (local, shift) = sent.on_local_clock("2026-11-22T00:00:14.503Z".parse().unwrap());
        assert_eq!(shift, jiff::SignedDuration::from_millis(5003));
        assert_eq!(
            local.at,
            Some("2026-11-22T00:00:15.003Z".parse().unwrap()),
            "starts when our clock says slot + 5 s"
        );
        assert_eq!(local.expires_at, expires.checked_add(shift).unwrap());
        assert_eq!(local.sent_at, None, "moved once");
        // An order from a leader that does not stamp its orders is taken as it is.
        let unstamped = order(&worker, "e2", 1, Some(slot));
        assert_eq!(unstamped.clone().on_local_clock(Timestamp::now()).0.at, Some(slot));
    }

    fn order(worker: &Worker, id: &str, term: u64, at: Option<Timestamp>) -> Order {
        let mut job = Job::empty("j");
        job.executor = "shell".into();
        job.executor_config.insert("command".into(), "true".into());
        let mut exec = Execution::decided("j", "2026-11-22T00:00:00Z".parse().unwrap(), Trigger::Schedule);
        exec.id = id.into();
        worker.prepare(&exec, &job, term, at)
    }

    fn later() -> Option<Timestamp> {
        Some(Timestamp::now() + Duration::from_secs(60))
    }

    #[tokio::test]
    async fn orders_of_an_older_term_than_seen_are_refused() {
        let (worker, _channels, _dir) = worker();
        assert!(worker.accept(order(&worker, "1", 5, later())));
        assert!(!worker.accept(order(&worker, "2", 4, later())), "term 4 after term 5");
        worker.observe_term(7);
        assert!(!worker.accept(order(&worker, "3", 6, later())));
        assert!(worker.accept(order(&worker, "4", 7, later())));
    }

    #[tokio::test]
    async fn a_node_keeps_only_the_newest_output_files_of_a_job() {
        let (worker, mut channels, _dir) = worker();
        let mut job = Job::empty("j");
        job.executor = "shell".into();
        // More than the 4 KiB kept in the record, so each run writes an output file.
        job.executor_config.insert("command".into(), "head -c 6000 /dev/zero".into());
        job.executions_retained = Some(2);
        for ms in 1..=4u64 {
            let slot = Timestamp::from_millisecond(1_795_000_000_000 + ms as i64 * 1000).unwrap();
            let exec = Execution::decided("j", slot, Trigger::Schedule);
            assert!(worker.accept(worker.prepare(&exec, &job, 1, None)));
            loop {
                match channels.reports.recv().await.expect("reports") {
                    Report::Finish(finish) if finish.exec.id == exec.id => break,
                    _ => {}
                }
            }
        }
        let kept = worker.outputs.list("j").unwrap();
        assert_eq!(kept, ["1795000003000-1", "1795000004000-1"], "the two newest outputs stay");
    }

    #[tokio::test]
    async fn an_expired_order_is_refused() {
        let (worker, _channels, _dir) = worker();
        let mut stale = order(&worker, "1", 1, None);
        stale.expires_at = Timestamp::now() - Duration::from_secs(1);
        assert!(!worker.accept(stale));
        assert!(!worker.is_running(&ExecRef { job: "j".into(), id: "1".into() }));
    }

    #[tokio::test]
    async fn a_new_leaders_sync_drops_waiting_orders_of_older_terms_and_lists_the_rest() {
        let (worker, _channels, _dir) = worker();
        assert!(worker.accept(order(&worker, "old", 3, later())));
        assert!(worker.accept(order(&worker, "new", 4, later())));
        let holding = worker.sync(4);
        let ids: Vec<&str> = holding.scheduled.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["new"], "the term-3 order waiting for its instant is dropped");
        assert!(!worker.accept(order(&worker, "late", 3, later())), "and term 3 is fenced from now on");
        assert_eq!(worker.cancel(&ExecRef { job: "j".into(), id: "new".into() }, "test"), Cancelled::Withdrawn);
        assert_eq!(worker.cancel(&ExecRef { job: "j".into(), id: "old".into() }, "test"), Cancelled::NotHere);
    }

    fn sleeping(worker: &Worker, id: &str, slot_ms: i64, term: u64) -> Order {
        let mut job = Job::empty("j");
        job.executor = "shell".into();
        job.executor_config.insert("command".into(), "sleep 30".into());
        let slot = Timestamp::from_millisecond(1_795_000_000_000 + slot_ms).unwrap();
        let mut exec = Execution::decided("j", slot, Trigger::Schedule);
        exec.id = id.into();
        // Due already (their instants passed): they start at once, or wait for a place.
        worker.prepare(&exec, &job, term, Some(slot))
    }

    fn ids(refs: &[ExecRef]) -> Vec<&str> {
        let mut ids: Vec<&str> = refs.iter().map(|r| r.id.as_str()).collect();
        ids.sort();
        ids
    }

    fn exec(id: &str) -> ExecRef {
        ExecRef { job: "j".into(), id: id.into() }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_full_node_queues_runs_by_instant_skips_past_its_queue_and_starts_the_earliest_when_a_place_frees() {
        let args = crate::config::AgentArgs { max_running: Some(2), max_queued: Some(2), ..Default::default() };
        let (worker, mut channels, _dir) = worker_with(args);
        // Arrival order differs from instant order: the queue starts the earliest instant first.
        for (id, slot_ms) in [("a", 100), ("b", 200), ("d", 400), ("c", 300), ("e", 500)] {
            assert!(worker.accept(sleeping(&worker, id, slot_ms, 1)), "{id} accepted");
        }
        wait_for("two running", || worker.running_count() == 2).await;
        assert_eq!(ids(&worker.running_refs()), ["a", "b"]);
        assert_eq!(worker.queued_count(), 2, "d and c wait for a place");
        let skipped = loop {
            match channels.reports.recv().await.expect("reports") {
                Report::Finish(finish) => break finish,
                Report::Start(_) => {}
            }
        };
        assert_eq!(skipped.exec.id, "e", "the order that found the queue full");
        assert_eq!(skipped.status, ExecutionStatus::Skipped);
        let error = skipped.error.unwrap();
        assert!(error.contains("overloaded") && error.contains("--max-running 2"), "{error}");
        // The queue is held: a new leader's sync lists it, so the runs are not placed a second time.
        let holding = worker.sync(1);
        assert_eq!(ids(&holding.scheduled), ["c", "d"]);
        assert_eq!(ids(&holding.running), ["a", "b"]);
        // A place frees: the earliest queued instant (c, not d) starts; a repeated order changes nothing.
        assert!(worker.accept(sleeping(&worker, "d", 400, 1)), "a repeated order is acknowledged");
        assert_eq!(worker.cancel(&exec("a"), "test"), Cancelled::Running);
        wait_for("c started", || worker.is_running(&exec("c"))).await;
        assert_eq!(ids(&worker.running_refs()), ["b", "c"]);
        assert_eq!(worker.queued_count(), 1);
        // A queued order can be withdrawn; shutting down drops the rest and starts nothing more.
        assert_eq!(worker.cancel(&exec("d"), "test"), Cancelled::Withdrawn);
        assert!(worker.accept(sleeping(&worker, "f", 600, 1)));
        worker.cancel_all("shut down");
        wait_for("all stopped", || worker.running_count() == 0).await;
        assert_eq!(worker.queued_count(), 0);
        assert!(!worker.is_running(&exec("f")), "a queued run never starts after the node closed");
    }

    /// A fence that answers `Started` for the first execution of each batch, after a newer term was seen.
    fn committing_fence(worker: &Worker, at: Timestamp) -> Fence {
        let worker = worker.clone();
        Arc::new(move |term, execs: Vec<ExecRef>| {
            worker.observe_term(term + 1); // a new leader's sync came meanwhile
            let execs = execs.into_iter().filter(|e| e.id == "committed").collect();
            Box::pin(async move { Verdict::Started { at, execs } })
        })
    }

    fn quick(worker: &Worker, id: &str, term: u64) -> Order {
        let mut job = Job::empty("j");
        job.executor = "shell".into();
        job.executor_config.insert("command".into(), "true".into());
        let mut exec = Execution::decided("j", Timestamp::now(), Trigger::Schedule);
        exec.id = id.into();
        worker.prepare(&exec, &job, term, None)
    }

    #[tokio::test]
    async fn a_run_whose_start_is_committed_launches_whatever_term_came_since_and_is_not_reported_started_again() {
        let (worker, mut channels, _dir) = worker();
        let at = Timestamp::now() - Duration::from_millis(200);
        worker.set_fence(committing_fence(&worker, at));
        assert!(worker.accept(quick(&worker, "committed", 3)));
        assert!(worker.accept(quick(&worker, "other", 3)));
        let finish = match channels.reports.recv().await.expect("reports") {
            Report::Start(start) => panic!("the committed start was reported again: {start:?}"),
            Report::Finish(finish) => finish,
        };
        assert_eq!(finish.exec.id, "committed", "launched although term 4 was seen after the fence was asked");
        assert_eq!(finish.status, ExecutionStatus::Succeeded);
        assert!(finish.started_at > Some(at), "its finish carries when it truly started, after the commit");
        assert_eq!(channels.dropped.recv().await.expect("dropped").id, "other", "the rest of the batch is dropped");
    }

    #[tokio::test]
    async fn a_committed_start_half_a_lease_old_does_not_launch() {
        let (worker, mut channels, _dir) = worker();
        // The node was paused between the commit and the launch: the leader may record the run lost meanwhile.
        worker.set_fence(committing_fence(&worker, Timestamp::now() - worker.lease / 2));
        assert!(worker.accept(quick(&worker, "committed", 3)));
        assert_eq!(channels.dropped.recv().await.expect("dropped").id, "committed");
        assert_eq!(worker.launched_count(), 0);
    }

    #[tokio::test]
    async fn a_new_leaders_sync_drops_queued_orders_of_older_terms() {
        let args = crate::config::AgentArgs { max_running: Some(1), ..Default::default() };
        let (worker, _channels, _dir) = worker_with(args);
        assert!(worker.accept(sleeping(&worker, "running", 100, 3)));
        assert!(worker.accept(sleeping(&worker, "old", 200, 3)));
        wait_for("one running", || worker.running_count() == 1).await;
        assert_eq!(worker.queued_count(), 1);
        let holding = worker.sync(4);
        assert_eq!(ids(&holding.running), ["running"], "what runs keeps running");
        assert!(holding.scheduled.is_empty(), "the term-3 queued order is dropped: the new leader decides it");
        assert!(worker.accept(sleeping(&worker, "new", 300, 4)));
        worker.cancel(&exec("running"), "test");
        wait_for("the new term's order started", || worker.is_running(&exec("new"))).await;
        worker.cancel_all("done");
    }
}
