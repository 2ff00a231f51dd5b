//! Failover: a 3-server cluster runs N jobs `@every 1s` (catch-up of every missed slot within a minute); after a
//! few seconds the leader is killed with SIGKILL, the two survivors carry on for a few more seconds, then every job
//! is disabled and, once nothing is active any more, every execution is read back from the new leader. Repeated
//! over fresh clusters (trials).
//!
//! Measured per trial, from the records:
//! - kill → the first `started_at` of any execution after the kill; and kill → the first start of a run the old
//!   leader cannot have decided (a slot more than [`DECIDE_AHEAD`] after the kill, or a catch-up). Runs decided
//!   ahead by the old leader start on the survivors at their instant whatever happens to it, so the first figure
//!   can look good while the schedule is in fact stalled; the second one is the failover time;
//! - slots lost: for each job, the whole seconds missing in the sequence of its slots (first attempts of
//!   `schedule` and `catch_up` runs) from its first slot to its last, plus the seconds after its last slot that
//!   fell due at least 1 s before the jobs were disabled;
//! - slots duplicated: slots with more than one first attempt;
//! - the lag `started_at − scheduled_at` of the caught-up slots (scheduled between the kill and the first start
//!   of a run decided after it), and of every slot after the kill.
//!
//! Also: how long until a survivor names a new leader, what became of the slots after the kill (by status and
//! trigger), and whether anything ran on the killed node after its death (it must not).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};

use crate::client::{Api, Execution, Member};
use crate::cluster::{Cluster, Layout};
use crate::fire_lag::millis_between;
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
const POLL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Executions kept per job: far more than a trial produces.
const RETAINED: u32 = 1_000;
/// The targets.
const FIRST_FIRE_MAX_MS: f64 = 1_000.0;
const SERVERS: usize = 3;

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// Fresh clusters, each losing its leader once.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Jobs firing every second.
    #[arg(long, default_value_t = 100)]
    pub jobs: usize,
    /// Seconds the jobs run before the leader is killed.
    #[arg(long, default_value_t = 5)]
    pub before_secs: u64,
    /// Seconds the survivors run after the kill before the jobs are disabled.
    #[arg(long, default_value_t = 6)]
    pub after_secs: u64,
}

pub async fn run(launcher: &Launcher, args: &FailoverArgs, report: &mut Report) -> anyhow::Result<()> {
    let scenario =
        format!("failover, {SERVERS} servers, {} jobs @every 1s, {} trials", thousands(args.jobs as f64), args.trials);
    println!("== {scenario}");
    let mut trials = Vec::with_capacity(args.trials);
    for index in 1..=args.trials {
        match trial(launcher, args, index).await {
            Ok(trial) => {
                println!("  trial {index}: {} killed: {}", trial.killed, trial.describe_result());
                trials.push(trial);
            }
            Err(err) => report.note(format!("{scenario}: trial {index} failed: {err:#}")),
        }
    }
    report_trials(report, &scenario, args, &trials);
    if trials.is_empty() {
        bail!("every trial failed");
    }
    Ok(())
}

/// One trial's facts.
struct Trial {
    index: usize,
    formed: Duration,
    killed: String,
    killed_at: Timestamp,
    /// The leader a survivor named first after the kill, and when.
    new_leader: Option<(String, Duration)>,
    /// After the disable: how long until no execution was active, or how many still were at the end.
    quiet: Result<Duration, usize>,
    analysis: Analysis,
    /// Warnings and errors the nodes logged, by kind.
    log_problems: Vec<(String, usize)>,
}

impl Trial {
    fn describe_result(&self) -> String {
        let a = &self.analysis;
        let leader =
            self.new_leader.as_ref().map_or("none".to_string(), |(_, d)| format!("{} ms", ms(d.as_secs_f64() * 1e3)));
        let caught_up = summarize(a.caught_up_lag_ms.clone())
            .map_or("none".to_string(), |s| format!("{} slots, lag p99 {} ms", s.count, ms(s.p99)));
        let after =
            summarize(a.after_kill_lag_ms.clone()).map_or("none".to_string(), |s| format!("p99 {} ms", ms(s.p99)));
        format!(
            "first start {} · decided first start {} · new leader named {leader} · lost {} · duplicated {} · \
             caught up: {caught_up} · every slot after the kill: lag {after}",
            opt_ms(a.first_start_ms),
            opt_ms(a.first_decided_start_ms),
            a.lost(),
            a.duplicated
        )
    }
}

fn opt_ms(value: Option<f64>) -> String {
    value.map_or("none".to_string(), |v| format!("{} ms", ms(v)))
}

async fn trial(launcher: &Launcher, args: &FailoverArgs, index: usize) -> anyhow::Result<Trial> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let layout =
        Layout { servers: SERVERS, agents: 0, agent_tags: Vec::new(), log_prefix: format!("failover-t{index:02}") };
    let started = Instant::now();
    let mut cluster = Cluster::start(launcher, dir.path(), &layout).await?;
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

    let (leader, killed) = cluster.leader().await?;
    let killed_at = Timestamp::now();
    let kill_instant = Instant::now();
    cluster.kill9_server(leader)?;
    println!("  trial {index}: kill -9 of the leader {killed} at {killed_at}");
    let until = kill_instant + Duration::from_secs(args.after_secs);
    let mut new_leader = None;
    while Instant::now() < until {
        if new_leader.is_none() {
            new_leader = named_leader(&cluster, &killed).await.map(|name| (name, kill_instant.elapsed()));
        }
        tokio::time::sleep(POLL).await;
    }

    let api = cluster.leader_api(FORM_BUDGET).await.context("no leader after the kill")?;
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
    let analysis = analyze(&names, &jobs, killed_at, disabled_at, &killed);
    Ok(Trial { index, formed, killed, killed_at, new_leader, quiet, analysis, log_problems })
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

/// A leader other than `not` as some live server names it.
async fn named_leader(cluster: &Cluster, not: &str) -> Option<String> {
    for (_, server) in cluster.live_servers() {
        if let Ok(member) = server.api.get_json::<Member>("/v1/leader", PROBE_TIMEOUT).await
            && member.name != not
        {
            return Some(member.name);
        }
    }
    None
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
    caught_up_lag_ms: Vec<f64>,
    after_kill_lag_ms: Vec<f64>,
    /// First attempts of slots scheduled after the kill, by status and by trigger.
    after_kill_statuses: BTreeMap<String, u64>,
    after_kill_triggers: BTreeMap<String, u64>,
    /// Executions started on the killed node after the kill (must be none).
    on_killed_node: u64,
    /// Jobs with no slot before the kill (they had not fired yet).
    jobs_not_fired_before_kill: u64,
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

/// The records of every job (`names[i]`'s executions are `jobs[i]`), the instants of the kill and of the disable,
/// and the killed node's name.
fn analyze(
    names: &[String],
    jobs: &[Vec<Execution>],
    killed_at: Timestamp,
    disabled_at: Timestamp,
    killed: &str,
) -> Analysis {
    let mut a = Analysis::default();
    let all = || jobs.iter().flatten();
    let started_after = |e: &&Execution| e.started_at.filter(|s| *s > killed_at);
    a.first_start_ms = all().filter_map(|e| started_after(&e)).min().map(|s| millis_between(killed_at, s));
    let decided_after_kill = |e: &&Execution| e.trigger == "catch_up" || e.scheduled_at > killed_at + DECIDE_AHEAD;
    let first_decided = all().filter(decided_after_kill).filter_map(|e| started_after(&e)).min();
    a.first_decided_start_ms = first_decided.map(|s| millis_between(killed_at, s));
    a.on_killed_node = all().filter(|e| e.node_name == killed && started_after(e).is_some()).count() as u64;
    a.retries = all().filter(|e| e.attempt > 1).count() as u64;
    let caught_up_until = first_decided.unwrap_or(disabled_at);
    let last_due = disabled_at - SignedDuration::from_secs(1);

    for (name, executions) in names.iter().zip(jobs) {
        let mut by_slot: BTreeMap<Timestamp, Vec<&Execution>> = BTreeMap::new();
        for e in executions.iter().filter(|e| e.attempt == 1 && matches!(e.trigger.as_str(), "schedule" | "catch_up")) {
            by_slot.entry(e.scheduled_at).or_default().push(e);
        }
        let (Some(first), Some(last)) = (by_slot.keys().next().copied(), by_slot.keys().next_back().copied()) else {
            a.jobs_not_fired_before_kill += 1;
            continue;
        };
        if first >= killed_at {
            a.jobs_not_fired_before_kill += 1;
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
            if *slot < killed_at {
                continue;
            }
            *a.after_kill_statuses.entry(e.status.clone()).or_default() += 1;
            *a.after_kill_triggers.entry(e.trigger.clone()).or_default() += 1;
            let Some(started) = e.started_at else {
                continue;
            };
            let lag = millis_between(*slot, started);
            a.after_kill_lag_ms.push(lag);
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

fn report_trials(report: &mut Report, scenario: &str, args: &FailoverArgs, trials: &[Trial]) {
    if trials.is_empty() {
        return;
    }
    report.row(
        scenario,
        "each trial",
        format!(
            "a fresh cluster; {} jobs `@every 1s`, shell `true`, catch_up all within 1m; SIGKILL of the leader {} s \
             after creating them; every job disabled {} s after the kill; executions read from the new leader once \
             none is pending or running",
            args.jobs, args.before_secs, args.after_secs
        ),
    );
    let formed: Vec<f64> = trials.iter().map(|t| t.formed.as_secs_f64() * 1e3).collect();
    report.row(scenario, "cluster formed (spawn → leader named by all, 3 members alive)", median_max(&formed));
    for t in trials {
        let a = &t.analysis;
        let new_leader = t.new_leader.as_ref().map_or("none named".to_string(), |(n, _)| format!("{n} leads"));
        report.target(
            scenario,
            &format!("trial {}: {} killed, {new_leader}", t.index, t.killed),
            t.describe_result(),
            "decided first start ≤ 1 s · 0 lost · 0 duplicated",
            trial_verdict(a),
        );
    }
    let first: Vec<f64> = trials.iter().filter_map(|t| t.analysis.first_start_ms).collect();
    let decided: Vec<f64> = trials.iter().filter_map(|t| t.analysis.first_decided_start_ms).collect();
    let leaders: Vec<f64> =
        trials.iter().filter_map(|t| t.new_leader.as_ref().map(|(_, d)| d.as_secs_f64() * 1e3)).collect();
    let n = trials.len();
    let worst = |v: &[f64]| if v.len() < n { f64::INFINITY } else { v.iter().copied().fold(0.0, f64::max) };
    report.row(
        scenario,
        "kill → a survivor names the new leader",
        with_missing(median_max(&leaders), leaders.len(), n),
    );
    report.target(
        scenario,
        "kill → first started_at of any run after the kill",
        with_missing(median_max(&first), first.len(), n),
        "≤ 1 s",
        at_most(worst(&first), FIRST_FIRE_MAX_MS),
    );
    report.target(
        scenario,
        "kill → first started_at of a run decided after the kill (slot > kill + 500 ms, or a catch-up)",
        with_missing(median_max(&decided), decided.len(), n),
        "≤ 1 s",
        at_most(worst(&decided), FIRST_FIRE_MAX_MS),
    );
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
    let caught_up: Vec<f64> = pooled(|a| &a.caught_up_lag_ms);
    let after_kill: Vec<f64> = pooled(|a| &a.after_kill_lag_ms);
    report.row(
        scenario,
        "lag of caught-up slots (scheduled between the kill and the first decided start), all trials",
        summarize(caught_up).map_or("no sample".to_string(), |s| format!("{s} ({} slots)", thousands(s.count as f64))),
    );
    report.row(
        scenario,
        "lag of every slot after the kill, all trials",
        summarize(after_kill).map_or("no sample".to_string(), |s| format!("{s} ({} slots)", thousands(s.count as f64))),
    );
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut triggers: BTreeMap<String, u64> = BTreeMap::new();
    for t in trials {
        for (k, v) in &t.analysis.after_kill_statuses {
            *statuses.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &t.analysis.after_kill_triggers {
            *triggers.entry(k.clone()).or_default() += v;
        }
    }
    report.row(
        scenario,
        "slots after the kill, first attempts by status (by trigger), all trials",
        format!("{} ({}); retries (attempt ≥ 2): {}", counts(&statuses), counts(&triggers), sum(|a| a.retries)),
    );
    let mut all_statuses: BTreeMap<String, u64> = BTreeMap::new();
    for t in trials {
        for (k, v) in &t.analysis.statuses {
            *all_statuses.entry(k.clone()).or_default() += v;
        }
    }
    report.row(scenario, "every slot's first attempt by status, all trials", counts(&all_statuses));
    let quiet: Vec<f64> = trials.iter().filter_map(|t| t.quiet.as_ref().ok().map(|d| d.as_secs_f64() * 1e3)).collect();
    report.row(
        scenario,
        "disable of all jobs → no execution pending or running",
        with_missing(median_max(&quiet), quiet.len(), n),
    );
    notes(report, scenario, args, trials);
}

fn trial_verdict(a: &Analysis) -> String {
    let mut missed = Vec::new();
    match a.first_decided_start_ms {
        Some(v) if v <= FIRST_FIRE_MAX_MS => {}
        Some(v) => missed.push(format!("first start {:.1} s", v / 1e3)),
        None => missed.push("no start after the kill".to_string()),
    }
    if a.lost() > 0 {
        missed.push(format!("{} lost", a.lost()));
    }
    if a.duplicated > 0 {
        missed.push(format!("{} duplicated", a.duplicated));
    }
    if missed.is_empty() { "met".to_string() } else { format!("missed: {}", missed.join(", ")) }
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
fn unsucceeded_text(a: &Analysis, killed_at: Timestamp, killed: &str) -> String {
    const GROUPS_MAX: usize = 4;
    let groups: Vec<String> = a
        .unsucceeded
        .iter()
        .take(GROUPS_MAX)
        .map(|((status, slot, node), n)| {
            let offset = millis_between(*slot, killed_at);
            let when = if offset >= 0.0 {
                format!("{} ms before the kill", ms(offset))
            } else {
                format!("{} ms after the kill", ms(-offset))
            };
            let node = match node.as_str() {
                "" => "no node".to_string(),
                n if n == killed => format!("{n}, the killed node"),
                n => n.to_string(),
            };
            format!("{n} {status} (slot {slot}, {when}, on {node})")
        })
        .collect();
    let more = a.unsucceeded.len().saturating_sub(GROUPS_MAX);
    let more = if more > 0 { format!("; and {more} more groups") } else { String::new() };
    format!("{}{more}", groups.join("; "))
}

fn notes(report: &mut Report, scenario: &str, args: &FailoverArgs, trials: &[Trial]) {
    for t in trials {
        let a = &t.analysis;
        if a.on_killed_node > 0 {
            report.note(format!(
                "{scenario}: trial {}: {} executions are recorded as started on the killed node {} after its kill",
                t.index, a.on_killed_node, t.killed
            ));
        }
        if a.jobs_not_fired_before_kill > 0 {
            report.note(format!(
                "{scenario}: trial {}: {} of {} jobs had not fired before the kill ({} s after their creation)",
                t.index, a.jobs_not_fired_before_kill, args.jobs, args.before_secs
            ));
        }
        if !a.examples.is_empty() {
            report.note(format!("{scenario}: trial {}: {}", t.index, a.examples.join("; ")));
        }
        if !a.unsucceeded.is_empty() {
            report.note(format!(
                "{scenario}: trial {} (kill at {}): first attempts that did not succeed: {}",
                t.index,
                t.killed_at,
                unsucceeded_text(a, t.killed_at, &t.killed)
            ));
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
        let a = analyze(&["j".to_string()], &[job], killed_at, disabled_at, "s0");
        assert_eq!(a.first_start_ms, Some(302.0));
        assert_eq!(a.first_decided_start_ms, Some(2_800.0));
        assert_eq!(a.lost_gaps, 1);
        assert_eq!(a.lost_tail, 0, "KILL + 6 fell due less than a second before the disable");
        assert_eq!(a.expected, 8);
        assert_eq!(a.duplicated, 1);
        assert_eq!(a.examples.len(), 2, "{:?}", a.examples);
        assert_eq!(a.caught_up_lag_ms, vec![2.0, 1_500.0, 500.0]);
        assert_eq!(a.after_kill_lag_ms.len(), 4);
        assert_eq!(a.after_kill_triggers.get("catch_up"), Some(&1));
        assert_eq!(a.on_killed_node, 0);
    }

    #[test]
    fn a_job_that_stops_at_the_kill_counts_its_missing_end() {
        let killed_at = at_ms(KILL * 1000 + 300);
        let disabled_at = at_ms((KILL + 6) * 1000 + 200);
        let job = vec![exec(KILL - 1, 1, "schedule", Some(5), "s0"), exec(KILL, 1, "schedule", Some(5), "s0")];
        let a = analyze(&["j".to_string(), "k".to_string()], &[job, vec![]], killed_at, disabled_at, "s0");
        // Slots KILL + 1 ..= KILL + 5 fell due at least 1 s before the disable and never ran.
        assert_eq!(a.lost_tail, 5);
        assert_eq!(a.lost(), 5);
        assert_eq!(a.first_start_ms, None);
        assert_eq!(a.jobs_not_fired_before_kill, 1);
    }

    #[test]
    fn runs_on_the_killed_node_after_the_kill_are_counted() {
        let killed_at = at_ms(KILL * 1000 + 300);
        let job = vec![exec(KILL, 1, "schedule", Some(5), "s0"), exec(KILL + 1, 1, "schedule", Some(5), "s0")];
        let a = analyze(&["j".to_string()], &[job], killed_at, at_ms((KILL + 2) * 1000), "s0");
        assert_eq!(a.on_killed_node, 1);
        assert_eq!(trial_verdict(&a), "met");
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
        let a = analyze(&names, &[job, vec![other]], killed_at, at_ms((KILL + 1) * 1000), "s1");
        assert_eq!(a.statuses.get("lost"), Some(&2));
        assert_eq!(a.statuses.get("succeeded"), Some(&1));
        assert_eq!(
            unsucceeded_text(&a, killed_at, "s1"),
            format!(
                "2 lost (slot {}, 35.0 ms before the kill, on s1, the killed node)",
                Timestamp::from_second(KILL).unwrap()
            )
        );
    }
}
