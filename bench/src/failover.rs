//! Failover: a 3-server cluster runs N jobs `@every 1s` (catch-up of every missed slot within a minute); after a
//! few seconds the leader is disrupted (see [`Disruption`]: killed with SIGKILL, or, on a test network of
//! namespaces, cut off from the other servers, or a follower cut off instead), the cluster carries on (a cut is
//! held, then healed, and the cluster runs a few more seconds), then every job is disabled and, once nothing is
//! active any more, every execution is read back from the leader. Repeated over fresh clusters (trials).
//!
//! Measured per trial, from the records:
//! - disruption → the first `started_at` of any execution after it; and → the first start of a run the old
//!   leader cannot have decided (a slot more than [`DECIDE_AHEAD`] after the disruption, or a catch-up), not
//!   started on the struck node while it was struck. Runs decided ahead by the old leader start on the others at
//!   their instant whatever happens to it, so the first figure can look good while the schedule is in fact
//!   stalled; the second one is the failover time;
//! - slots lost: for each job, the whole seconds missing in the sequence of its slots (first attempts of
//!   `schedule` and `catch_up` runs) from its first slot to its last, plus the seconds after its last slot that
//!   fell due at least 1 s before the jobs were disabled;
//! - slots duplicated: slots with more than one first attempt;
//! - the lag `started_at − scheduled_at` of the slots due while a cut lasted, of the caught-up slots (scheduled
//!   between the disruption and the first start of a run decided after it), and of every slot after the
//!   disruption.
//!
//! Also, from polls of the servers ([`crate::leadership`]): how long until a server, then a majority, names a new
//! leader; whether a cut-off leader stops naming itself; whether the leader changed while a follower was cut off
//! (it must not) or after a heal (the healed node must rejoin without unseating anyone); what became of the slots
//! after the disruption (by status and trigger), and what ran on the struck node while it was struck (after a
//! kill, nothing may).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use kairos_testkit::Cut;

use crate::client::{Api, Execution};
use crate::cluster::{Cluster, Layout};
use crate::fire_lag::millis_between;
use crate::leadership::{self, Leadership};
use crate::report::{Report, at_most};
use crate::server::{Launcher, describe_kinds, sort_kinds};
use crate::stats::{ms, summarize, thousands};

/// The scheduler decides a slot this long before its instant (`kairos_server::scheduler::DECIDE_AHEAD`), so a slot more
/// than this after the kill cannot have been decided by the killed leader.
const DECIDE_AHEAD: SignedDuration = SignedDuration::from_millis(500);
/// How long a fresh cluster may take to elect a leader and see every node alive.
const FORM_BUDGET: Duration = Duration::from_secs(60);
/// After the jobs are disabled, how long to wait at most for every execution to end (longer than the default
/// execution lease of 30 s, so runs stranded on the killed node show how they end).
const QUIET_BUDGET: Duration = Duration::from_secs(45);
/// One write may keep meeting transient errors (an election) this long.
const WRITE_BUDGET: Duration = Duration::from_secs(20);
const CONCURRENCY: usize = 16;
/// Executions kept per job: far more than a trial produces.
const RETAINED: u32 = 1_000;
/// The targets.
const FIRST_FIRE_MAX_MS: f64 = 1_000.0;
/// The lag a slot due during a cut may have: the bound `crates/kairos/tests/partition.rs` asserts, for a leader or a
/// follower cut (an election, the takeover's sync, or for a run whose node was cut off the question to it, then a
/// sweep and a spawn).
const CUT_LAG_MAX_MS: f64 = 5_000.0;
/// A slot due during a cut is late when it started more than this after its instant (issue 3's failover target).
const LATE_MS: f64 = 1_000.0;
const SERVERS: usize = 3;

/// What befalls the cluster of each trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Disruption {
    /// `kill -9` of the leader (nodes on loopback).
    Kill,
    /// The leader cut off from the other servers both ways.
    LeaderCut,
    /// The leader receives but cannot send.
    LeaderCutOutgoing,
    /// The leader sends but receives nothing.
    LeaderCutIncoming,
    /// A follower cut off both ways: the leader must keep leading, before and after the heal.
    FollowerCut,
    /// Every one of the above, in this order.
    All,
}

impl Disruption {
    const EVERY: [Disruption; 5] = [
        Disruption::Kill,
        Disruption::LeaderCut,
        Disruption::LeaderCutOutgoing,
        Disruption::LeaderCutIncoming,
        Disruption::FollowerCut,
    ];

    /// The disruptions to run, in the order given, `all` spelled out, each once.
    pub fn expand(chosen: &[Disruption]) -> Vec<Disruption> {
        let mut out: Vec<Disruption> = Vec::new();
        for d in chosen {
            let each: &[Disruption] = if *d == Disruption::All { &Self::EVERY } else { std::slice::from_ref(d) };
            for d in each {
                if !out.contains(d) {
                    out.push(*d);
                }
            }
        }
        out
    }

    /// The cut, for a partition.
    fn cut(self) -> Option<Cut> {
        match self {
            Disruption::Kill | Disruption::All => None,
            Disruption::LeaderCut | Disruption::FollowerCut => Some(Cut::Both),
            Disruption::LeaderCutOutgoing => Some(Cut::Outgoing),
            Disruption::LeaderCutIncoming => Some(Cut::Incoming),
        }
    }

    fn strikes_leader(self) -> bool {
        self != Disruption::FollowerCut
    }

    /// What the report calls the moment it happens.
    fn event(self) -> &'static str {
        if self.cut().is_some() { "cut" } else { "kill" }
    }

    /// `s0 killed`, `s1 cut off (outgoing)`.
    fn struck(self, name: &str) -> String {
        match self.cut() {
            None => format!("{name} killed"),
            Some(Cut::Both) => format!("{name} cut off both ways"),
            Some(Cut::Outgoing) => format!("{name} cut off outgoing (receives, cannot send)"),
            Some(Cut::Incoming) => format!("{name} cut off incoming (sends, receives nothing)"),
            Some(Cut::Calls) => format!("{name} cut off from its calls"),
        }
    }

    /// The scenario's name in the report (the kill keeps the name earlier runs reported under).
    fn scenario(self, args: &FailoverArgs) -> String {
        let setup =
            format!("{SERVERS} servers, {} jobs @every 1s, {} trials", thousands(args.jobs as f64), args.trials);
        let cut = args.cut_secs;
        match self {
            Disruption::Kill | Disruption::All => format!("failover, {setup}"),
            Disruption::LeaderCut => format!("partition: leader cut off both ways for {cut} s, {setup}"),
            Disruption::LeaderCutOutgoing => {
                format!("partition: leader cut off outgoing (receives, cannot send) for {cut} s, {setup}")
            }
            Disruption::LeaderCutIncoming => {
                format!("partition: leader cut off incoming (sends, receives nothing) for {cut} s, {setup}")
            }
            Disruption::FollowerCut => format!("partition: a follower cut off both ways for {cut} s, {setup}"),
        }
    }

    /// Its name on the command line.
    fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// What befalls each trial's cluster: `kill` (kill -9 of the leader, nodes on loopback); a partition, on a
    /// test network of namespaces (needs root, `ip` and `nft`): `leader-cut`, `leader-cut-outgoing`,
    /// `leader-cut-incoming`, `follower-cut`; or `all`. Several may be given, comma-separated.
    #[arg(long = "scenario", value_enum, value_delimiter = ',', default_value = "kill")]
    pub scenarios: Vec<Disruption>,
    /// Fresh clusters per scenario, each disrupted once.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Jobs firing every second.
    #[arg(long, default_value_t = 100)]
    pub jobs: usize,
    /// Seconds the jobs run before the disruption.
    #[arg(long, default_value_t = 5)]
    pub before_secs: u64,
    /// Seconds a cut lasts before it is healed.
    #[arg(long, default_value_t = 10)]
    pub cut_secs: u64,
    /// Seconds the cluster runs after the kill (or after the heal) before the jobs are disabled.
    #[arg(long, default_value_t = 6)]
    pub after_secs: u64,
}

/// The section of BENCHMARKS.md a run writes: the kill alone keeps its own, partitions have theirs.
pub fn section_title(args: &FailoverArgs) -> &'static str {
    if Disruption::expand(&args.scenarios) == [Disruption::Kill] {
        "Cluster: leader failover"
    } else {
        "Cluster: network partitions"
    }
}

pub async fn run(launcher: &Launcher, args: &FailoverArgs, report: &mut Report) -> anyhow::Result<()> {
    let disruptions = Disruption::expand(&args.scenarios);
    let mut done = Vec::new();
    for disruption in disruptions {
        let scenario = disruption.scenario(args);
        println!("== {scenario}");
        let trials = run_trials(launcher, args, disruption, &scenario, report).await;
        report_trials(report, &scenario, disruption, args, &trials);
        if trials.is_empty() {
            report.note(format!("{scenario}: every trial failed"));
        }
        done.push((disruption, trials));
    }
    if done.len() > 1 {
        summary_table(report, args, &done);
    }
    if done.iter().all(|(_, trials)| trials.is_empty()) {
        bail!("every trial failed");
    }
    Ok(())
}

async fn run_trials(
    launcher: &Launcher,
    args: &FailoverArgs,
    disruption: Disruption,
    scenario: &str,
    report: &mut Report,
) -> Vec<Trial> {
    let mut trials = Vec::with_capacity(args.trials);
    for index in 1..=args.trials {
        match trial(launcher, args, disruption, index).await {
            Ok(trial) => {
                println!(
                    "  trial {index}: {}: {}",
                    disruption.struck(&trial.leadership.struck),
                    trial.describe_result()
                );
                trials.push(trial);
            }
            Err(err) => report.note(format!("{scenario}: trial {index} failed: {err:#}")),
        }
    }
    trials
}

/// One trial's facts.
struct Trial {
    index: usize,
    formed: Duration,
    /// When the disruption began and ended.
    window: Window,
    leadership: Leadership,
    /// After the disable: how long until no execution was active, or how many still were at the end.
    quiet: Result<Duration, usize>,
    analysis: Analysis,
    /// Warnings and errors the nodes logged, by kind.
    log_problems: Vec<(String, usize)>,
}

/// When a trial's disruption began and ended, and the node it struck.
#[derive(Debug, Clone)]
struct Window {
    from: Timestamp,
    /// The heal of a cut; a kill lasts until the disable.
    until: Timestamp,
    healed: bool,
    disabled_at: Timestamp,
    node: String,
}

impl Trial {
    fn describe_result(&self) -> String {
        let a = &self.analysis;
        let l = &self.leadership;
        let leader =
            l.majority_named.as_ref().map_or("none".to_string(), |(name, d)| format!("{name} after {}", millis(*d)));
        let caught_up = summarize(a.caught_up_lag_ms.clone())
            .map_or("none".to_string(), |s| format!("{} slots, lag p99 {} ms", s.count, ms(s.p99)));
        let during = summarize(a.during_lag_ms.clone())
            .map_or("none".to_string(), |s| format!("{} slots, lag p99 {} · max {} ms", s.count, ms(s.p99), ms(s.max)));
        let after = summarize(a.after_lag_ms.clone()).map_or("none".to_string(), |s| format!("p99 {} ms", ms(s.p99)));
        let mut text = format!(
            "first start {} · decided first start {} · new leader named by a majority: {leader} · lost {} · \
             duplicated {} · caught up: {caught_up}",
            opt_ms(a.first_start_ms),
            opt_ms(a.first_decided_start_ms),
            a.lost(),
            a.duplicated
        );
        if self.window.healed {
            text += &format!(" · due during the cut: {during}; {}", late_text(a));
        }
        text += &format!(" · every slot after the {}: lag {after}", self.disruption_event());
        if self.window.healed {
            let heal = l.changed_at_heal().unwrap_or_else(|| "no leader change after the heal".to_string());
            text += &format!(" · {heal}");
        }
        text
    }

    fn disruption_event(&self) -> &'static str {
        if self.window.healed { "cut" } else { "kill" }
    }
}

/// `12 started > 1 s late (on the cut-off node 10, elsewhere 2), 8 only after the heal` (8 of the 12).
fn late_text(a: &Analysis) -> String {
    format!(
        "{} started > {} s late (on the cut-off node {}, elsewhere {}), {} only after the heal",
        thousands((a.late_on_struck + a.late_elsewhere) as f64),
        LATE_MS / 1e3,
        thousands(a.late_on_struck as f64),
        thousands(a.late_elsewhere as f64),
        thousands(a.started_after_heal as f64)
    )
}

fn millis(d: Duration) -> String {
    format!("{} ms", ms(d.as_secs_f64() * 1e3))
}

fn opt_ms(value: Option<f64>) -> String {
    value.map_or("none".to_string(), |v| format!("{} ms", ms(v)))
}

async fn trial(
    launcher: &Launcher,
    args: &FailoverArgs,
    disruption: Disruption,
    index: usize,
) -> anyhow::Result<Trial> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let log_prefix = format!("failover-{}-t{index:02}", disruption.name());
    let layout = Layout { servers: SERVERS, agents: 0, agent_tags: Vec::new(), log_prefix };
    let started = Instant::now();
    let mut cluster = match disruption.cut() {
        Some(_) => Cluster::start_on_network(launcher, dir.path(), &layout).await?,
        None => Cluster::start(launcher, dir.path(), &layout).await?,
    };
    cluster.wait_ready(FORM_BUDGET).await?;
    let formed = started.elapsed();

    let api = cluster.leader_api(FORM_BUDGET).await?;
    let names: Vec<String> = (0..args.jobs).map(|i| format!("fo-{i:04}")).collect();
    let created = futures::stream::iter(&names)
        .map(|name| write_retrying(&api, "POST", "/v1/jobs", job_json(name)))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    created.into_iter().collect::<anyhow::Result<Vec<()>>>().context("creating the jobs")?;
    tokio::time::sleep(Duration::from_secs(args.before_secs)).await;

    let (leader, leader_name) = cluster.leader().await?;
    let struck = if disruption.strikes_leader() { leader } else { (leader + 1) % SERVERS };
    let struck_name = cluster.server_names[struck].clone();
    let term_before = leadership::term(&cluster, &leader_name).await;
    let mut leadership = Leadership::new(SERVERS, &leader_name, term_before, &struck_name);
    let from = Timestamp::now();
    let from_instant = Instant::now();
    match disruption.cut() {
        Some(cut) => cluster.cut(struck, cut).await?,
        None => cluster.kill9_server(struck)?,
    }
    println!("  trial {index}: {} at {from} (leader {leader_name})", disruption.struck(&struck_name));
    let healed_at = match disruption.cut() {
        Some(_) => {
            leadership.watch(&cluster, from_instant, from_instant + Duration::from_secs(args.cut_secs)).await;
            let leader_at_heal = leadership.latest().map(str::to_string);
            let term_at_heal = match &leader_at_heal {
                Some(name) => leadership::term(&cluster, name).await,
                None => None,
            };
            leadership.heal(term_at_heal);
            // The heal begins now: a run may start while the rules are being removed.
            let healed = (Timestamp::now(), Instant::now());
            cluster.heal(struck).await?;
            Some(healed)
        }
        None => None,
    };
    let since = healed_at.map_or(from_instant, |(_, instant)| instant);
    leadership.watch(&cluster, since, since + Duration::from_secs(args.after_secs)).await;
    let term_at_end = match leadership.latest().map(str::to_string) {
        Some(name) => leadership::term(&cluster, &name).await,
        None => None,
    };
    leadership.end(term_at_end);

    let api =
        cluster.leader_api(FORM_BUDGET).await.with_context(|| format!("no leader after the {}", disruption.event()))?;
    let disabled_at = Timestamp::now();
    let disabled = futures::stream::iter(&names)
        .map(|name| {
            let body = serde_json::json!({"name": name, "disabled": true}).to_string();
            write_retrying(&api, "PATCH", "/v1/jobs", body)
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    disabled.into_iter().collect::<anyhow::Result<Vec<()>>>().context("disabling the jobs")?;
    let disabled_instant = Instant::now();
    let (jobs, quiet) = read_when_quiet(&api, &names, disabled_instant).await?;
    let log_problems = cluster.log_problems();
    for (name, stopped) in cluster.stop().await {
        stopped.with_context(|| format!("stopping {name}"))?;
    }
    let window = Window {
        from,
        until: healed_at.map_or(disabled_at, |(at, _)| at),
        healed: healed_at.is_some(),
        disabled_at,
        node: struck_name,
    };
    let analysis = analyze(&names, &jobs, &window);
    Ok(Trial { index, formed, window, leadership, quiet, analysis, log_problems })
}

/// The job of every trial: a shell `true` every second, catching up every missed slot of the last minute.
fn job_json(name: &str) -> String {
    serde_json::json!({
        "name": name,
        "schedule": "@every 1s",
        "executor": "shell",
        "executor_config": {"command": "true"},
        "catch_up": "all",
        "catch_up_window": "1m",
        "executions_retained": RETAINED,
    })
    .to_string()
}

/// A write, retried while it meets errors (an election under way), for at most [`WRITE_BUDGET`].
async fn write_retrying(api: &Api, method: &str, path: &str, body: String) -> anyhow::Result<()> {
    let deadline = Instant::now() + WRITE_BUDGET;
    loop {
        let result = match method {
            "PATCH" => api.patch_json(path, body.clone()).await,
            _ => api.post_json(path, body.clone()).await.map(|_| ()),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Read every job's executions until none is pending or running (bounded by [`QUIET_BUDGET`]); answers the last
/// read and how long after `since` it became quiet (or how many executions were still active).
async fn read_when_quiet(
    api: &Api,
    names: &[String],
    since: Instant,
) -> anyhow::Result<(Vec<Vec<Execution>>, Result<Duration, usize>)> {
    loop {
        let reads = futures::stream::iter(names)
            .map(|name| api.executions(name, RETAINED))
            .buffered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let jobs = reads.into_iter().collect::<anyhow::Result<Vec<_>>>().context("reading executions")?;
        let active = jobs.iter().flatten().filter(|e| matches!(e.status.as_str(), "pending" | "running")).count();
        if active == 0 {
            return Ok((jobs, Ok(since.elapsed())));
        }
        if since.elapsed() > QUIET_BUDGET {
            return Ok((jobs, Err(active)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the records of one trial show.
#[derive(Debug, Default)]
struct Analysis {
    /// Slots each job should have run, from its first slot to the last one due before the disable.
    expected: u64,
    /// Whole seconds missing between a job's first and last slot.
    lost_gaps: u64,
    /// Whole seconds after a job's last slot that fell due at least 1 s before the disable.
    lost_tail: u64,
    /// Slots with more than one first attempt.
    duplicated: u64,
    /// Executions of attempt 2 or more.
    retries: u64,
    /// First attempts of every slot, by status.
    statuses: BTreeMap<String, u64>,
    /// First attempts that did not succeed, counted by (status, slot, node).
    unsucceeded: BTreeMap<(String, Timestamp, String), u64>,
    first_start_ms: Option<f64>,
    first_decided_start_ms: Option<f64>,
    /// Slots due while the disruption lasted (a cut: until the heal; a kill: until the disable).
    during_lag_ms: Vec<f64>,
    /// Slots due during a cut that started more than [`LATE_MS`] late: on the cut-off node, on the others.
    late_on_struck: u64,
    late_elsewhere: u64,
    /// Of the late ones, those that started only after the heal (a slot due just before the heal may start just
    /// after it on time: not counted).
    started_after_heal: u64,
    caught_up_lag_ms: Vec<f64>,
    after_lag_ms: Vec<f64>,
    /// First attempts of slots scheduled after the disruption, by status and by trigger.
    after_statuses: BTreeMap<String, u64>,
    after_triggers: BTreeMap<String, u64>,
    /// Executions started on the struck node while it was struck (after a kill: must be none).
    on_struck_node: u64,
    /// Jobs with no slot before the disruption (they had not fired yet).
    jobs_not_fired_before: u64,
    /// A few of the gaps and duplicates, for the notes: `job: …`.
    examples: Vec<String>,
}

impl Analysis {
    fn lost(&self) -> u64 {
        self.lost_gaps + self.lost_tail
    }
}

/// Examples of gaps and duplicates kept for the notes.
const EXAMPLES_MAX: usize = 6;

/// The records of every job (`names[i]`'s executions are `jobs[i]`) and the trial's window.
fn analyze(names: &[String], jobs: &[Vec<Execution>], window: &Window) -> Analysis {
    let mut a = Analysis::default();
    let from = window.from;
    let all = || jobs.iter().flatten();
    let started_after = |e: &&Execution| e.started_at.filter(|s| *s > from);
    let on_struck_node =
        |e: &&Execution| e.node_name == window.node && e.started_at.is_some_and(|s| s > from && s < window.until);
    a.first_start_ms = all().filter_map(|e| started_after(&e)).min().map(|s| millis_between(from, s));
    let decided_after = |e: &&Execution| e.trigger == "catch_up" || e.scheduled_at > from + DECIDE_AHEAD;
    let first_decided =
        all().filter(decided_after).filter(|e| !on_struck_node(e)).filter_map(|e| started_after(&e)).min();
    a.first_decided_start_ms = first_decided.map(|s| millis_between(from, s));
    a.on_struck_node = all().filter(on_struck_node).count() as u64;
    a.retries = all().filter(|e| e.attempt > 1).count() as u64;
    let caught_up_until = first_decided.unwrap_or(window.disabled_at);
    let last_due = window.disabled_at - SignedDuration::from_secs(1);

    for (name, executions) in names.iter().zip(jobs) {
        let mut by_slot: BTreeMap<Timestamp, Vec<&Execution>> = BTreeMap::new();
        for e in executions.iter().filter(|e| e.attempt == 1 && matches!(e.trigger.as_str(), "schedule" | "catch_up")) {
            by_slot.entry(e.scheduled_at).or_default().push(e);
        }
        let (Some(first), Some(last)) = (by_slot.keys().next().copied(), by_slot.keys().next_back().copied()) else {
            a.jobs_not_fired_before += 1;
            continue;
        };
        if first >= from {
            a.jobs_not_fired_before += 1;
        }
        let slots: Vec<Timestamp> = by_slot.keys().copied().collect();
        for pair in slots.windows(2) {
            let missing = whole_seconds(pair[0], pair[1]).saturating_sub(1);
            a.lost_gaps += missing;
            if missing > 0 && a.examples.len() < EXAMPLES_MAX {
                a.examples.push(format!("{name}: {missing} slots missing between {} and {}", pair[0], pair[1]));
            }
        }
        let tail = if last < last_due { whole_seconds(last, last_due) } else { 0 };
        a.lost_tail += tail;
        if tail > 0 && a.examples.len() < EXAMPLES_MAX {
            a.examples.push(format!("{name}: last slot {last}, {tail} due after it before the disable never ran"));
        }
        a.expected += whole_seconds(first, last.max(last_due)) + 1;
        for (slot, group) in &by_slot {
            if group.len() > 1 {
                a.duplicated += 1;
                if a.examples.len() < EXAMPLES_MAX {
                    let runs: Vec<String> = group.iter().map(|e| format!("{} on {}", e.id, e.node_name)).collect();
                    a.examples.push(format!("{name}: slot {slot} ran {} times ({})", group.len(), runs.join(", ")));
                }
            }
            let e = group[0];
            *a.statuses.entry(e.status.clone()).or_default() += 1;
            if e.status != "succeeded" {
                *a.unsucceeded.entry((e.status.clone(), *slot, e.node_name.clone())).or_default() += 1;
            }
            if *slot < from {
                continue;
            }
            *a.after_statuses.entry(e.status.clone()).or_default() += 1;
            *a.after_triggers.entry(e.trigger.clone()).or_default() += 1;
            let Some(started) = e.started_at else {
                continue;
            };
            let lag = millis_between(*slot, started);
            a.after_lag_ms.push(lag);
            if *slot < window.until {
                a.during_lag_ms.push(lag);
                match (lag > LATE_MS, e.node_name == window.node) {
                    (true, true) => a.late_on_struck += 1,
                    (true, false) => a.late_elsewhere += 1,
                    (false, _) => {}
                }
                if lag > LATE_MS && window.healed && started >= window.until {
                    a.started_after_heal += 1;
                }
            }
            if *slot <= caught_up_until {
                a.caught_up_lag_ms.push(lag);
            }
        }
    }
    a
}

/// Whole seconds from `from` to `to` (rounded down; slots lie on whole seconds, so exact in practice).
fn whole_seconds(from: Timestamp, to: Timestamp) -> u64 {
    let millis = to.as_millisecond() - from.as_millisecond();
    if millis <= 0 { 0 } else { (millis / 1_000) as u64 }
}

fn report_trials(report: &mut Report, scenario: &str, disruption: Disruption, args: &FailoverArgs, trials: &[Trial]) {
    if trials.is_empty() {
        return;
    }
    let ev = disruption.event();
    report.row(scenario, "each trial", trial_description(disruption, args));
    let formed: Vec<f64> = trials.iter().map(|t| t.formed.as_secs_f64() * 1e3).collect();
    report.row(scenario, "cluster formed (spawn → leader named by all, 3 members alive)", median_max(&formed));
    for t in trials {
        let l = &t.leadership;
        let leads = l.at_end.0.as_ref().map_or("no leader at the end".to_string(), |n| format!("{n} leads"));
        report.target(
            scenario,
            &format!("trial {}: {}, {leads}", t.index, disruption.struck(&l.struck)),
            t.describe_result(),
            &trial_target(disruption),
            trial_verdict(disruption, t),
        );
    }
    let n = trials.len();
    let elapsed_ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let first_named: Vec<f64> =
        trials.iter().filter_map(|t| t.leadership.first_named.as_ref().map(|(_, d)| elapsed_ms(d))).collect();
    let majority: Vec<f64> =
        trials.iter().filter_map(|t| t.leadership.majority_named.as_ref().map(|(_, d)| elapsed_ms(d))).collect();
    let other = if disruption.cut().is_some() { "a server other than the cut-off one" } else { "a survivor" };
    let majority_text = with_missing(median_max(&majority), majority.len(), n);
    if disruption.strikes_leader() {
        report.row(
            scenario,
            &format!("{ev} → {other} names the new leader"),
            with_missing(median_max(&first_named), first_named.len(), n),
        );
        report.row(scenario, &format!("{ev} → a majority of the servers name the same new leader"), majority_text);
    } else {
        let changed = trials.iter().filter(|t| t.leadership.changed_during_cut().is_some()).count();
        report.target(
            scenario,
            "leader changed while the follower was cut off (a majority named another, or the term changed)",
            format!("{changed} of {n} trials"),
            "0",
            zero_verdict(changed as u64),
        );
    }
    if disruption.cut().is_some() && disruption.strikes_leader() {
        let stepped: Vec<f64> =
            trials.iter().filter_map(|t| t.leadership.struck_stepped_down.map(|d| elapsed_ms(&d))).collect();
        report.row(
            scenario,
            "cut → the cut-off leader no longer names itself",
            with_missing(median_max(&stepped), stepped.len(), n),
        );
    }
    if disruption.cut().is_some() {
        let changed = trials.iter().filter(|t| t.leadership.changed_at_heal().is_some()).count();
        report.target(
            scenario,
            "leader changed after the heal (a majority named another, or the term grew)",
            format!("{changed} of {n} trials"),
            "0",
            zero_verdict(changed as u64),
        );
    }
    let first: Vec<f64> = trials.iter().filter_map(|t| t.analysis.first_start_ms).collect();
    let decided: Vec<f64> = trials.iter().filter_map(|t| t.analysis.first_decided_start_ms).collect();
    let worst = |v: &[f64]| if v.len() < n { f64::INFINITY } else { v.iter().copied().fold(0.0, f64::max) };
    let (first_text, decided_text) =
        (with_missing(median_max(&first), first.len(), n), with_missing(median_max(&decided), decided.len(), n));
    let decided_measure = format!(
        "{ev} → first started_at of a run decided after the {ev} (slot > {ev} + 500 ms, or a catch-up{})",
        if disruption.cut().is_some() { "; not on the cut-off node during the cut" } else { "" }
    );
    let any_measure = format!("{ev} → first started_at of any run after the {ev}");
    if disruption.cut().is_some() {
        // Issue 3's target is about a dead leader; the partitions have none of their own: figures only.
        report.row(scenario, &any_measure, first_text);
        report.row(scenario, &decided_measure, decided_text);
    } else {
        report.target(scenario, &any_measure, first_text, "≤ 1 s", at_most(worst(&first), FIRST_FIRE_MAX_MS));
        report.target(scenario, &decided_measure, decided_text, "≤ 1 s", at_most(worst(&decided), FIRST_FIRE_MAX_MS));
    }
    let sum = |f: fn(&Analysis) -> u64| trials.iter().map(|t| f(&t.analysis)).sum::<u64>();
    let (lost, gaps, tail, expected) =
        (sum(Analysis::lost), sum(|a| a.lost_gaps), sum(|a| a.lost_tail), sum(|a| a.expected));
    report.target(
        scenario,
        "slots lost, all trials",
        format!(
            "{} of {} slots ({} in gaps of a job's sequence, {} due after its last slot ≥ 1 s before the disable)",
            thousands(lost as f64),
            thousands(expected as f64),
            thousands(gaps as f64),
            thousands(tail as f64)
        ),
        "0",
        zero_verdict(lost),
    );
    let duplicated = sum(|a| a.duplicated);
    report.target(
        scenario,
        "slots duplicated (two first attempts), all trials",
        thousands(duplicated as f64),
        "0",
        zero_verdict(duplicated),
    );
    let pooled = |f: fn(&Analysis) -> &Vec<f64>| trials.iter().flat_map(|t| f(&t.analysis).iter().copied()).collect();
    let sample = |values: Vec<f64>| {
        summarize(values).map_or("no sample".to_string(), |s| format!("{s} ({} slots)", thousands(s.count as f64)))
    };
    if disruption.cut().is_some() {
        let during: Vec<f64> = pooled(|a| &a.during_lag_ms);
        let worst_during = summarize(during.clone()).map_or(f64::INFINITY, |s| s.max);
        report.target(
            scenario,
            "lag of slots due during the cut, all trials",
            sample(during),
            "max < 5 s (the bound of tests/partition.rs)",
            at_most(worst_during, CUT_LAG_MAX_MS),
        );
        let total = Analysis {
            late_on_struck: sum(|a| a.late_on_struck),
            late_elsewhere: sum(|a| a.late_elsewhere),
            started_after_heal: sum(|a| a.started_after_heal),
            ..Analysis::default()
        };
        report.row(scenario, "slots due during the cut, late ones and where they ran, all trials", late_text(&total));
    }
    report.row(
        scenario,
        &format!("lag of caught-up slots (scheduled between the {ev} and the first decided start), all trials"),
        sample(pooled(|a| &a.caught_up_lag_ms)),
    );
    report.row(scenario, &format!("lag of every slot after the {ev}, all trials"), sample(pooled(|a| &a.after_lag_ms)));
    let merged = |f: fn(&Analysis) -> &BTreeMap<String, u64>| {
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        for t in trials {
            for (k, v) in f(&t.analysis) {
                *all.entry(k.clone()).or_default() += v;
            }
        }
        all
    };
    report.row(
        scenario,
        &format!("slots after the {ev}, first attempts by status (by trigger), all trials"),
        format!(
            "{} ({}); retries (attempt ≥ 2): {}",
            counts(&merged(|a| &a.after_statuses)),
            counts(&merged(|a| &a.after_triggers)),
            sum(|a| a.retries)
        ),
    );
    report.row(scenario, "every slot's first attempt by status, all trials", counts(&merged(|a| &a.statuses)));
    if disruption.cut().is_some() {
        report.row(
            scenario,
            "executions started on the cut-off node during the cut, all trials",
            thousands(sum(|a| a.on_struck_node) as f64),
        );
    }
    let quiet: Vec<f64> = trials.iter().filter_map(|t| t.quiet.as_ref().ok().map(|d| d.as_secs_f64() * 1e3)).collect();
    report.row(
        scenario,
        "disable of all jobs → no execution pending or running",
        with_missing(median_max(&quiet), quiet.len(), n),
    );
    notes(report, scenario, disruption, args, trials);
}

fn trial_description(disruption: Disruption, args: &FailoverArgs) -> String {
    let jobs = format!("a fresh cluster; {} jobs `@every 1s`, shell `true`, catch_up all within 1m", args.jobs);
    let read = "executions read from the leader once none is pending or running";
    match disruption.cut() {
        None => format!(
            "{jobs}; SIGKILL of the leader {} s after creating them; every job disabled {} s after the kill; {read}",
            args.before_secs, args.after_secs
        ),
        Some(_) => format!(
            "{jobs}, each node in a network namespace of its own on a bridge; {} {} s after creating them \
             (nftables rules in its namespace; the harness still reaches it); healed {} s later; every job \
             disabled {} s after the heal; {read}",
            disruption.struck(if disruption.strikes_leader() { "the leader" } else { "a follower" }),
            args.before_secs,
            args.cut_secs,
            args.after_secs
        ),
    }
}

fn trial_target(disruption: Disruption) -> String {
    match disruption.cut() {
        None => "decided first start ≤ 1 s · 0 lost · 0 duplicated".to_string(),
        Some(_) if disruption.strikes_leader() => {
            "0 lost · 0 duplicated · lag during the cut < 5 s · no leader change after the heal".to_string()
        }
        Some(_) => "0 lost · 0 duplicated · lag during the cut < 5 s · no leader change at all".to_string(),
    }
}

fn trial_verdict(disruption: Disruption, t: &Trial) -> String {
    let a = &t.analysis;
    let mut missed = Vec::new();
    if disruption.cut().is_none() {
        match a.first_decided_start_ms {
            Some(v) if v <= FIRST_FIRE_MAX_MS => {}
            Some(v) => missed.push(format!("first start {:.1} s", v / 1e3)),
            None => missed.push("no start after the kill".to_string()),
        }
    }
    if a.lost() > 0 {
        missed.push(format!("{} lost", a.lost()));
    }
    if a.duplicated > 0 {
        missed.push(format!("{} duplicated", a.duplicated));
    }
    if disruption.cut().is_some() {
        if let Some(s) = summarize(a.during_lag_ms.clone())
            && s.max >= CUT_LAG_MAX_MS
        {
            missed.push(format!("lag during the cut {:.1} s", s.max / 1e3));
        }
        if !disruption.strikes_leader()
            && let Some(change) = t.leadership.changed_during_cut()
        {
            missed.push(format!("leader changed during the cut: {change}"));
        }
        if disruption.strikes_leader() && t.leadership.majority_named.is_none() {
            missed.push("no new leader named by a majority during the cut".to_string());
        }
        if let Some(change) = t.leadership.changed_at_heal() {
            missed.push(format!("after the heal: {change}"));
        }
    }
    if missed.is_empty() { "met".to_string() } else { format!("missed: {}", missed.join(", ")) }
}

/// One line per scenario, side by side: what the brief of issue 15 asks to compare.
fn summary_table(report: &mut Report, args: &FailoverArgs, done: &[(Disruption, Vec<Trial>)]) {
    let header = [
        "Scenario",
        "trials",
        "→ new leader named by a majority, median · max",
        "→ first start of a run decided after it, median · max",
        "lag of slots due during the cut, p99 · max",
        "slots due during the cut started > 1 s late (of them, only after the heal)",
        "lag of every slot after it, p99 · max",
        "lost",
        "duplicated",
        "leader changes after the heal (follower cut: during it)",
    ];
    let rows =
        done.iter().filter(|(_, trials)| !trials.is_empty()).map(|(d, trials)| summary_row(*d, trials)).collect();
    report.table(
        format!(
            "Failover and partitions side by side ({SERVERS} servers, {} jobs @every 1s; cuts last {} s)",
            args.jobs, args.cut_secs
        ),
        &header,
        rows,
    );
}

fn summary_row(disruption: Disruption, trials: &[Trial]) -> Vec<String> {
    let n = trials.len();
    let elapsed_ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let majority: Vec<f64> =
        trials.iter().filter_map(|t| t.leadership.majority_named.as_ref().map(|(_, d)| elapsed_ms(d))).collect();
    let decided: Vec<f64> = trials.iter().filter_map(|t| t.analysis.first_decided_start_ms).collect();
    let pooled = |f: fn(&Analysis) -> &Vec<f64>| trials.iter().flat_map(|t| f(&t.analysis).iter().copied()).collect();
    let p99_max = |values: Vec<f64>| {
        summarize(values).map_or("no sample".to_string(), |s| format!("{} · {} ms", ms(s.p99), ms(s.max)))
    };
    let leader = if disruption.strikes_leader() {
        with_missing(median_max(&majority), majority.len(), n)
    } else {
        "— (the leader stays)".to_string()
    };
    let during = if disruption.cut().is_some() { p99_max(pooled(|a| &a.during_lag_ms)) } else { "—".to_string() };
    let sum = |f: fn(&Analysis) -> u64| trials.iter().map(|t| f(&t.analysis)).sum::<u64>();
    let late = match disruption.cut() {
        None => "—".to_string(),
        Some(_) => format!(
            "{} of {} ({})",
            thousands(sum(|a| a.late_on_struck + a.late_elsewhere) as f64),
            thousands(trials.iter().map(|t| t.analysis.during_lag_ms.len()).sum::<usize>() as f64),
            thousands(sum(|a| a.started_after_heal) as f64)
        ),
    };
    let changes = match disruption.cut() {
        None => "—".to_string(),
        Some(_) => {
            let at_heal = trials.iter().filter(|t| t.leadership.changed_at_heal().is_some()).count();
            let during = trials.iter().filter(|t| t.leadership.changed_during_cut().is_some()).count();
            if disruption.strikes_leader() {
                format!("{at_heal} of {n}")
            } else {
                format!("{at_heal} of {n} (during: {during} of {n})")
            }
        }
    };
    vec![
        disruption.name(),
        n.to_string(),
        leader,
        with_missing(median_max(&decided), decided.len(), n),
        during,
        late,
        p99_max(pooled(|a| &a.after_lag_ms)),
        thousands(sum(Analysis::lost) as f64),
        thousands(sum(|a| a.duplicated) as f64),
        changes,
    ]
}

fn zero_verdict(count: u64) -> String {
    if count == 0 { "met".to_string() } else { format!("missed: {}", thousands(count as f64)) }
}

/// `median X · max Y ms` of a small sample (nearest rank).
fn median_max(values: &[f64]) -> String {
    match summarize(values.to_vec()) {
        Some(s) => format!("median {} · max {} ms", ms(s.p50), ms(s.max)),
        None => "no sample".to_string(),
    }
}

fn with_missing(text: String, have: usize, of: usize) -> String {
    if have == of { text } else { format!("{text} ({} of {of} trials had none)", of - have) }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_string();
    }
    map.iter().map(|(k, v)| format!("{k} {}", thousands(*v as f64))).collect::<Vec<_>>().join(", ")
}

/// `32 lost (slot 02:24:16Z, 35 ms before the kill, on s1, the killed node); …`, at most a few groups.
fn unsucceeded_text(a: &Analysis, window: &Window) -> String {
    const GROUPS_MAX: usize = 4;
    let (ev, struck) = if window.healed { ("cut", "the cut-off node") } else { ("kill", "the killed node") };
    let groups: Vec<String> = a
        .unsucceeded
        .iter()
        .take(GROUPS_MAX)
        .map(|((status, slot, node), n)| {
            let offset = millis_between(*slot, window.from);
            let when = if offset >= 0.0 {
                format!("{} ms before the {ev}", ms(offset))
            } else {
                format!("{} ms after the {ev}", ms(-offset))
            };
            let node = match node.as_str() {
                "" => "no node".to_string(),
                n if n == window.node => format!("{n}, {struck}"),
                n => n.to_string(),
            };
            format!("{n} {status} (slot {slot}, {when}, on {node})")
        })
        .collect();
    let more = a.unsucceeded.len().saturating_sub(GROUPS_MAX);
    let more = if more > 0 { format!("; and {more} more groups") } else { String::new() };
    format!("{}{more}", groups.join("; "))
}

fn notes(report: &mut Report, scenario: &str, disruption: Disruption, args: &FailoverArgs, trials: &[Trial]) {
    let ev = disruption.event();
    for t in trials {
        let a = &t.analysis;
        if a.on_struck_node > 0 && disruption.cut().is_none() {
            report.note(format!(
                "{scenario}: trial {}: {} executions are recorded as started on the killed node {} after its kill",
                t.index, a.on_struck_node, t.window.node
            ));
        }
        if a.jobs_not_fired_before > 0 {
            report.note(format!(
                "{scenario}: trial {}: {} of {} jobs had not fired before the {ev} ({} s after their creation)",
                t.index, a.jobs_not_fired_before, args.jobs, args.before_secs
            ));
        }
        if !a.examples.is_empty() {
            report.note(format!("{scenario}: trial {}: {}", t.index, a.examples.join("; ")));
        }
        if !a.unsucceeded.is_empty() {
            report.note(format!(
                "{scenario}: trial {} ({ev} at {}): first attempts that did not succeed: {}",
                t.index,
                t.window.from,
                unsucceeded_text(a, &t.window)
            ));
        }
        if let Some(change) = t.leadership.changed_during_cut().filter(|_| !disruption.strikes_leader()) {
            report.note(format!("{scenario}: trial {}: the leader changed during the cut: {change}", t.index));
        }
        if let Some(change) = t.leadership.changed_at_heal() {
            report.note(format!("{scenario}: trial {} (heal at {}): {change}", t.index, t.window.until));
        }
        if let Err(active) = t.quiet {
            report.note(format!(
                "{scenario}: trial {}: {active} executions were still pending or running {QUIET_BUDGET:?} after \
                 the jobs were disabled",
                t.index
            ));
        }
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for t in trials {
        for (kind, n) in &t.log_problems {
            *kinds.entry(kind.as_str()).or_default() += n;
        }
    }
    let mut kinds: Vec<(String, usize)> = kinds.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
    sort_kinds(&mut kinds);
    if let Some(problems) = describe_kinds(&kinds, 8) {
        report.note(format!("{scenario}: over all trials the nodes logged {problems}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const KILL: i64 = 1_000;

    fn at_ms(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(ms).unwrap()
    }

    fn exec(slot_s: i64, attempt: u32, trigger: &str, started_ms: Option<i64>, node: &str) -> Execution {
        let scheduled_at = Timestamp::from_second(slot_s).unwrap();
        let started_at = started_ms.map(|m| at_ms(slot_s * 1000 + m));
        Execution {
            id: format!("{:013}-{attempt}", slot_s * 1000),
            node_name: node.into(),
            scheduled_at,
            started_at,
            finished_at: started_at,
            status: if started_ms.is_some() { "succeeded" } else { "pending" }.into(),
            output: String::new(),
            attempt,
            trigger: trigger.into(),
            error: None,
        }
    }

    fn kill(killed_at: Timestamp, disabled_at: Timestamp, node: &str) -> Window {
        Window { from: killed_at, until: disabled_at, healed: false, disabled_at, node: node.into() }
    }

    fn trial_of(analysis: Analysis, window: Window, leadership: Leadership) -> Trial {
        Trial {
            index: 1,
            formed: Duration::ZERO,
            window,
            leadership,
            quiet: Ok(Duration::ZERO),
            analysis,
            log_problems: vec![],
        }
    }

    /// The command line of the `failover` subcommand alone.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FailoverArgs,
    }

    fn parse(line: &[&str]) -> Result<FailoverArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("failover").chain(line.iter().copied())).map(|cli| cli.args)
    }

    #[test]
    fn the_kill_is_the_default_and_keeps_its_section() {
        let args = parse(&[]).unwrap();
        assert_eq!(Disruption::expand(&args.scenarios), vec![Disruption::Kill]);
        assert_eq!(section_title(&args), "Cluster: leader failover");
        assert_eq!((args.trials, args.cut_secs, args.after_secs), (10, 10, 6));
    }

    #[test]
    fn scenarios_are_chosen_by_name_all_spells_out_every_one_once() {
        let args = parse(&["--scenario", "follower-cut,leader-cut-outgoing"]).unwrap();
        assert_eq!(Disruption::expand(&args.scenarios), vec![Disruption::FollowerCut, Disruption::LeaderCutOutgoing]);
        assert_eq!(section_title(&args), "Cluster: network partitions");
        let args = parse(&["--scenario", "leader-cut", "--scenario", "all"]).unwrap();
        assert_eq!(
            Disruption::expand(&args.scenarios),
            vec![
                Disruption::LeaderCut,
                Disruption::Kill,
                Disruption::LeaderCutOutgoing,
                Disruption::LeaderCutIncoming,
                Disruption::FollowerCut
            ]
        );
        assert!(parse(&["--scenario", "cut"]).is_err());
    }

    #[test]
    fn each_partition_cuts_what_its_name_says() {
        assert_eq!(Disruption::Kill.cut(), None);
        assert_eq!(Disruption::LeaderCut.cut(), Some(Cut::Both));
        assert_eq!(Disruption::LeaderCutOutgoing.cut(), Some(Cut::Outgoing));
        assert_eq!(Disruption::LeaderCutIncoming.cut(), Some(Cut::Incoming));
        assert_eq!(Disruption::FollowerCut.cut(), Some(Cut::Both));
        assert!(!Disruption::FollowerCut.strikes_leader());
        assert_eq!(Disruption::LeaderCutIncoming.name(), "leader-cut-incoming");
    }

    #[test]
    fn whole_seconds_between_slots() {
        assert_eq!(whole_seconds(at_ms(1_000), at_ms(2_000)), 1);
        assert_eq!(whole_seconds(at_ms(1_000), at_ms(4_000)), 3);
        assert_eq!(whole_seconds(at_ms(1_000), at_ms(3_999)), 2);
        assert_eq!(whole_seconds(at_ms(1_000), at_ms(1_000)), 0);
        assert_eq!(whole_seconds(at_ms(2_000), at_ms(1_000)), 0);
    }

    #[test]
    fn finds_gaps_duplicates_and_the_first_fires_after_the_kill() {
        // The old leader decided KILL + 1 at KILL + 0.5 s, before it was killed at KILL + 0.7 s.
        let killed_at = at_ms(KILL * 1000 + 700);
        let disabled_at = at_ms((KILL + 6) * 1000 + 200);
        let job = vec![
            exec(KILL - 2, 1, "schedule", Some(5), "s0"),
            exec(KILL - 1, 1, "schedule", Some(5), "s0"),
            exec(KILL, 1, "schedule", Some(5), "s1"),
            // KILL + 1 was dispatched ahead to a survivor: it starts on time, 0.3 s after the kill.
            exec(KILL + 1, 1, "schedule", Some(2), "s1"),
            // KILL + 2 and + 3 are fired by the new leader at KILL + 3.5 s.
            exec(KILL + 2, 1, "catch_up", Some(1_500), "s2"),
            exec(KILL + 3, 1, "schedule", Some(500), "s2"),
            exec(KILL + 3, 1, "schedule", Some(600), "s1"), // twice
            // KILL + 4 is missing.
            exec(KILL + 5, 1, "schedule", Some(4), "s2"),
        ];
        let a = analyze(&["j".to_string()], &[job], &kill(killed_at, disabled_at, "s0"));
        assert_eq!(a.first_start_ms, Some(302.0));
        assert_eq!(a.first_decided_start_ms, Some(2_800.0));
        assert_eq!(a.lost_gaps, 1);
        assert_eq!(a.lost_tail, 0, "KILL + 6 fell due less than a second before the disable");
        assert_eq!(a.expected, 8);
        assert_eq!(a.duplicated, 1);
        assert_eq!(a.examples.len(), 2, "{:?}", a.examples);
        assert_eq!(a.caught_up_lag_ms, vec![2.0, 1_500.0, 500.0]);
        assert_eq!(a.after_lag_ms.len(), 4);
        assert_eq!(a.after_triggers.get("catch_up"), Some(&1));
        assert_eq!(a.on_struck_node, 0);
    }

    #[test]
    fn a_job_that_stops_at_the_kill_counts_its_missing_end() {
        let killed_at = at_ms(KILL * 1000 + 300);
        let disabled_at = at_ms((KILL + 6) * 1000 + 200);
        let job = vec![exec(KILL - 1, 1, "schedule", Some(5), "s0"), exec(KILL, 1, "schedule", Some(5), "s0")];
        let a = analyze(&["j".to_string(), "k".to_string()], &[job, vec![]], &kill(killed_at, disabled_at, "s0"));
        // Slots KILL + 1 ..= KILL + 5 fell due at least 1 s before the disable and never ran.
        assert_eq!(a.lost_tail, 5);
        assert_eq!(a.lost(), 5);
        assert_eq!(a.first_start_ms, None);
        assert_eq!(a.jobs_not_fired_before, 1);
    }

    #[test]
    fn runs_on_the_killed_node_after_the_kill_are_counted() {
        let killed_at = at_ms(KILL * 1000 + 300);
        let disabled_at = at_ms((KILL + 2) * 1000);
        let job = vec![exec(KILL, 1, "schedule", Some(5), "s0"), exec(KILL + 1, 1, "schedule", Some(5), "s0")];
        let window = kill(killed_at, disabled_at, "s0");
        let a = analyze(&["j".to_string()], &[job], &window);
        assert_eq!(a.on_struck_node, 1);
        let trial = trial_of(a, window, Leadership::new(SERVERS, "s0", Some(1), "s0"));
        assert_eq!(trial_verdict(Disruption::Kill, &trial), "missed: no start after the kill");
    }

    #[test]
    fn a_cut_counts_the_lag_of_slots_due_until_the_heal_and_not_runs_on_the_cut_off_node() {
        // s0, the leader, is cut at KILL + 0.3 s and healed at KILL + 3.3 s.
        let window = Window {
            from: at_ms(KILL * 1000 + 300),
            until: at_ms((KILL + 3) * 1000 + 300),
            healed: true,
            disabled_at: at_ms((KILL + 6) * 1000 + 200),
            node: "s0".into(),
        };
        let job = vec![
            exec(KILL, 1, "schedule", Some(5), "s0"),
            // Ordered to s0 before the cut, run there all the same: not the survivors running again.
            exec(KILL + 1, 1, "schedule", Some(5), "s0"),
            exec(KILL + 2, 1, "catch_up", Some(1_200), "s1"),
            exec(KILL + 3, 1, "schedule", Some(200), "s1"),
            exec(KILL + 4, 1, "schedule", Some(6), "s1"),
            exec(KILL + 5, 1, "schedule", Some(7), "s0"),
        ];
        let a = analyze(&["j".to_string()], &[job], &window);
        assert_eq!(a.on_struck_node, 1, "the run on s0 at KILL + 5 came after the heal");
        assert_eq!(a.first_start_ms, Some(705.0));
        assert_eq!(a.first_decided_start_ms, Some(2_900.0));
        assert_eq!(a.during_lag_ms, vec![5.0, 1_200.0, 200.0]);
        assert_eq!((a.late_on_struck, a.late_elsewhere, a.started_after_heal), (0, 1, 0));
        assert_eq!(a.after_lag_ms.len(), 5);
        let mut leadership = Leadership::new(SERVERS, "s0", Some(1), "s0");
        leadership
            .take(&[("s1".into(), Some("s1".into())), ("s2".into(), Some("s1".into()))], Duration::from_millis(900));
        leadership.heal(Some(2));
        leadership.end(Some(2));
        let trial = trial_of(a, window, leadership);
        assert_eq!(trial_verdict(Disruption::LeaderCut, &trial), "met");
    }

    #[test]
    fn a_slot_that_waited_for_the_cut_off_node_until_the_heal_is_late_there() {
        let window = Window {
            from: at_ms(KILL * 1000 + 300),
            until: at_ms((KILL + 3) * 1000 + 300),
            healed: true,
            disabled_at: at_ms((KILL + 6) * 1000 + 200),
            node: "s2".into(),
        };
        let job = vec![
            exec(KILL, 1, "schedule", Some(5), "s1"),
            // Placed on s2 just before the cut; it starts there once the cut heals.
            exec(KILL + 1, 1, "schedule", Some(2_500), "s2"),
            exec(KILL + 2, 1, "schedule", Some(5), "s1"),
            // Due 0.3 s before the heal, started on time just after it: not late.
            exec(KILL + 3, 1, "schedule", Some(310), "s1"),
        ];
        let a = analyze(&["j".to_string()], &[job], &window);
        assert_eq!((a.late_on_struck, a.late_elsewhere, a.started_after_heal), (1, 0, 1));
        assert_eq!(late_text(&a), "1 started > 1 s late (on the cut-off node 1, elsewhere 0), 1 only after the heal");
    }

    #[test]
    fn first_attempts_that_did_not_succeed_are_grouped_by_slot_and_node() {
        let killed_at = at_ms(KILL * 1000 + 35);
        let mut lost = exec(KILL, 1, "schedule", Some(2), "s1");
        lost.status = "lost".into();
        let mut other = exec(KILL, 1, "schedule", Some(2), "s1");
        other.status = "lost".into();
        let job = vec![exec(KILL - 1, 1, "schedule", Some(5), "s0"), lost];
        let names = ["j".to_string(), "k".to_string()];
        let window = kill(killed_at, at_ms((KILL + 1) * 1000), "s1");
        let a = analyze(&names, &[job, vec![other]], &window);
        assert_eq!(a.statuses.get("lost"), Some(&2));
        assert_eq!(a.statuses.get("succeeded"), Some(&1));
        assert_eq!(
            unsucceeded_text(&a, &window),
            format!(
                "2 lost (slot {}, 35.0 ms before the kill, on s1, the killed node)",
                Timestamp::from_second(KILL).unwrap()
            )
        );
    }
}
