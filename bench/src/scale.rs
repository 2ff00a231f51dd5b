//! Scale and recovery (issue 19): 3 servers and N agent-only nodes (`a0`…, tagged `pool=w`) on this machine, shell
//! jobs every second tagged `{"pool": "w:1"}` (each slot runs once, on one of the agents), in three phases:
//! 1. `--base` jobs for a window of `--seconds`;
//! 2. jobs added up to 4 × base (more than the machine may run: overload is expected) for `--overload-seconds`;
//! 3. the added jobs deleted again, then the cluster watched until it is healthy: every server names the same
//!    leader, a write (`POST /v1/jobs` of a probe job) is answered within 2 s, and no execution of the kept jobs
//!    is still `pending` [`PENDING_MAX_AGE`] after its slot. Then a last window of `--after-seconds` shows how the
//!    base load runs again.
//!
//! Reported per phase: slots expected, and what became of them (ran, skipped, failed, lost, pending, never
//! decided), lag `started_at − scheduled_at`, CPU of the leader, the other servers and the agents, RSS of servers
//! and agents; for phase 3 the deletions (by answer) and the time to recover. Slots are counted over the base jobs,
//! which exist throughout (the added jobs are deleted in phase 3, and their executions with them); every execution
//! is read back once at the end, when leases have settled what they could. A cluster that does not recover is
//! reported as "did not recover within X s" with the check that failed last; nothing is asserted.
//!
//! Every node is a named process (`--node-name s0`, `a0`, …) with its own log (`scale-s0.log`, …, kept with
//! `--log-dir`): the report names each server's pid and how long before the end its log last grew, so a wedged
//! node can be found; `--hold-wedged-secs` keeps a cluster that did not recover running for stack dumps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};

use crate::client::{Api, Execution};
use crate::cluster::{Cluster, Layout};
use crate::fire_lag::{self, JobBody, Window, millis_between};
use crate::procfs::{ProcessUse, ProcessesMeter, rss_bytes};
use crate::report::Report;
use crate::server::{Launcher, describe_kinds};
use crate::stats::{mib, summarize, thousands};

const SERVERS: usize = 3;
const POOL_TAG: (&str, &str) = ("pool", "w");
/// Phase 2 runs this many times the base jobs.
const OVERLOAD_FACTOR: usize = 4;
/// How long a fresh cluster of 50 agents on 2 cores may take to elect a leader and see every node alive.
const FORM_BUDGET: Duration = Duration::from_secs(180);
/// Seconds between the last job created and a window's first slot.
const WARMUP_SECS: u64 = 2;
/// Job creations and deletions at once, and how long one may take (a wedged cluster never answers).
const WRITE_CONCURRENCY: usize = 32;
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Creating one phase's jobs may not take longer than this; what is not created by then is reported.
const CREATE_BUDGET: Duration = Duration::from_secs(300);
/// Deleting the added jobs may not take longer than this; a deletion that fails is tried again after a pause.
const DELETE_BUDGET: Duration = Duration::from_secs(300);
const DELETE_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// The health checks: the write probe's deadline, the other probes' deadline, the pause between two checks.
const WRITE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const HEALTH_POLL: Duration = Duration::from_secs(1);
/// A slot still `pending` this long after its instant counts as stuck (the start deadline is 3 s).
const PENDING_MAX_AGE: SignedDuration = SignedDuration::from_secs(15);
/// Kept jobs whose executions every health check reads (a full scan of all of them follows once these pass).
const HEALTH_PROBE_JOBS: usize = 16;
/// Executions read per job by a health check: enough to cover [`PENDING_MAX_AGE`] and well beyond.
const HEALTH_EXECUTIONS: u32 = 120;
/// Reads at once (health scan and the final read-back).
const READ_CONCURRENCY: usize = 16;
/// After a window, time for its last slots to finish before the next step.
const SETTLE: Duration = Duration::from_secs(3);
/// Executions kept per job beyond the seconds the phases can take, so nothing counted is pruned.
const RETAINED_MARGIN: u64 = 120;
/// The write the health check makes: an upsert of a disabled job that never fires.
const PROBE_JOB: &str = "scale-probe";
/// Log lines the issue counts, by what they contain (all of the fragments): (label, fragments).
const WATCHED_LINES: &[(&str, &[&str])] = &[
    ("report dropped after retries", &["report dropped after retries"]),
    ("report not committed yet (retried)", &["report not committed yet"]),
    ("lease renewal failed", &["lease renewal failed"]),
    ("leader stepped down: did not accept the write as leader", &["did not accept the write as leader"]),
    ("Raft append refused with HTTP 413 (body over the RPC listener's limit)", &["HTTP 413"]),
    ("Raft append failed, timed out", &["/raft/append", "timed out"]),
    ("Raft append failed, broken pipe (the follower closed the connection)", &["/raft/append", "Broken pipe"]),
    ("Raft append failed, other error", &["/raft/append"]),
    ("Raft (pre-)vote failed", &["/raft/", "vote"]),
    ("Raft heartbeat failed", &["failed to send a heartbeat"]),
    ("order refused or not launched", &["refusing "]),
    ("run not launched (leader no longer leads / deadline passed)", &["not launching", "not starting"]),
];

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Agent-only nodes (tagged `pool=w`), besides the 3 servers.
    #[arg(long, default_value_t = 50)]
    pub agents: usize,
    /// Jobs every second in phases 1 and 3; phase 2 runs 4 × as many.
    #[arg(long, default_value_t = 500)]
    pub base: usize,
    /// Window of phase 1, in seconds.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Window of phase 2 (the overload), in seconds.
    #[arg(long, default_value_t = 60)]
    pub overload_seconds: u64,
    /// After the deletions, how long to wait at most for the cluster to be healthy again.
    #[arg(long, default_value_t = 300)]
    pub recovery_budget_secs: u64,
    /// Window of the base load once the cluster has recovered, in seconds (0: none).
    #[arg(long, default_value_t = 20)]
    pub after_seconds: u64,
    /// When the cluster does not recover, keep it running this long (printing every pid) for stack dumps.
    #[arg(long, default_value_t = 0)]
    pub hold_wedged_secs: u64,
    /// The shell command of every job.
    #[arg(long, default_value = "date +%s.%N")]
    pub command: String,
}

pub async fn run(launcher: &Launcher, args: &ScaleArgs, report: &mut Report) -> anyhow::Result<()> {
    let scenario = format!(
        "scale, {SERVERS} servers + {} agents, {} → {} → {} shell jobs every second",
        args.agents,
        thousands(args.base as f64),
        thousands((args.base * OVERLOAD_FACTOR) as f64),
        thousands(args.base as f64)
    );
    println!("== {scenario}");
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let layout = Layout {
        servers: SERVERS,
        agents: args.agents,
        agent_tags: vec![format!("{}={}", POOL_TAG.0, POOL_TAG.1)],
        log_prefix: "scale".to_string(),
    };
    let started = Instant::now();
    let cluster = Cluster::start(launcher, dir.path(), &layout).await?;
    let leader = cluster.wait_ready(FORM_BUDGET).await?;
    report.row(
        &scenario,
        &format!("cluster formed (spawn → leader named by all, {} members alive)", SERVERS + args.agents),
        format!("{:.1} s, leader {leader}", started.elapsed().as_secs_f64()),
    );
    let pids: Vec<String> = cluster.pids().iter().take(SERVERS).map(|(name, pid)| format!("{name} {pid}")).collect();
    report.row(&scenario, "server pids", pids.join(" · "));
    report.row(&scenario, "RSS after forming", rss_text(&cluster));
    let logs = cluster.log_paths();
    let result = phases(&cluster, args, &scenario, report).await;
    report_logs(report, &scenario, &cluster, &logs);
    if let Err(err) = &result {
        report.note(format!("{scenario}: stopped early: {err:#}"));
    }
    for (name, stopped) in cluster.stop().await {
        match stopped {
            Ok(s) if s.killed => report.note(format!("{scenario}: {name} needed SIGKILL to stop")),
            Ok(_) => {}
            Err(err) => report.note(format!("{scenario}: stopping {name}: {err:#}")),
        }
    }
    result
}

/// The three phases on a formed cluster; the figures go into the report as they come.
async fn phases(cluster: &Cluster, args: &ScaleArgs, scenario: &str, report: &mut Report) -> anyhow::Result<()> {
    let retained = retained(args);
    let tags = BTreeMap::from([(POOL_TAG.0.to_string(), format!("{}:1", POOL_TAG.1))]);
    let body = JobBody { sink: None, retained, tags, broker: None };
    let body = |name: &str| with_command(&body.json(name), &args.command);
    let base: Vec<String> = (0..args.base).map(job_name).collect();
    let extra: Vec<String> = (args.base..args.base * OVERLOAD_FACTOR).map(job_name).collect();

    // Phase 1: the base load.
    let phase1 = "phase 1 (base)";
    let api = cluster.leader_api(FORM_BUDGET).await?;
    let created = create_jobs(&api, &base, &body).await;
    report.row(scenario, &format!("{phase1}: jobs created"), created.describe(base.len()));
    let window1 = Window::after(Timestamp::now(), WARMUP_SECS, args.seconds);
    let load1 = watch_window(cluster, window1).await?;
    load1.report(report, scenario, phase1);

    // Phase 2: four times the load.
    let phase2 = "phase 2 (overload)";
    let api = cluster.leader_api(FORM_BUDGET).await?;
    let created = create_jobs(&api, &extra, &body).await;
    report.row(scenario, &format!("{phase2}: jobs added"), created.describe(extra.len()));
    let window2 = Window::after(Timestamp::now(), WARMUP_SECS, args.overload_seconds);
    let load2 = watch_window(cluster, window2).await?;
    load2.report(report, scenario, phase2);

    // Phase 3: back to the base load, and how long until the cluster is healthy.
    let phase3 = "phase 3 (back to base)";
    let deleting = Instant::now();
    let deleted = delete_jobs(cluster, &extra).await;
    report.row(scenario, &format!("{phase3}: added jobs deleted"), deleted.describe(extra.len()));
    let budget = Duration::from_secs(args.recovery_budget_secs);
    let recovery = wait_healthy(cluster, &base, budget).await;
    let since_delete = deleting.elapsed();
    let recovered_at = Timestamp::now();
    match &recovery.healthy_after {
        Some(after) => report.row(
            scenario,
            &format!(
                "{phase3}: time to recover (healthy: one leader, every server applying, a write ≤ 2 s, nothing \
                 pending > 15 s)"
            ),
            format!(
                "{:.1} s after the deletions ended ({:.1} s after they began; {} checks)",
                after.as_secs_f64(),
                since_delete.as_secs_f64(),
                recovery.checks
            ),
        ),
        None => report.row(
            scenario,
            &format!("{phase3}: time to recover"),
            format!("did not recover within {} s; last failed check: {}", budget.as_secs(), recovery.last_failure),
        ),
    }
    if !recovery.failures.is_empty() {
        let kinds: Vec<String> = recovery.failures.iter().map(|(k, n)| format!("{n}× {k}")).collect();
        report.row(scenario, &format!("{phase3}: failed health checks, by first failing check"), kinds.join("; "));
    }
    // The slots between the overload's window and recovery (or the end of the budget).
    let gap_start = window2.end().as_second();
    let gap_end = (recovered_at - PENDING_MAX_AGE).as_second().max(gap_start);
    let gap = Window { start_second: gap_start, seconds: (gap_end - gap_start) as u64 };

    let mut window3 = None;
    if recovery.healthy_after.is_some() && args.after_seconds > 0 {
        let window = Window::after(Timestamp::now(), WARMUP_SECS, args.after_seconds);
        let load = watch_window(cluster, window).await?;
        load.report(report, scenario, "phase 3, after recovery");
        window3 = Some(window);
    } else if recovery.healthy_after.is_none() {
        hold_wedged(cluster, args).await;
    }

    // Every execution of the kept jobs, read once, counted per window.
    tokio::time::sleep(SETTLE).await;
    let api = cluster.leader_api(FORM_BUDGET).await?;
    let read_started = Instant::now();
    let jobs = fire_lag::read_executions(&api, &base, retained).await?;
    report.row(
        scenario,
        "executions of the base jobs read back",
        format!("{} jobs in {:.1} s", thousands(base.len() as f64), read_started.elapsed().as_secs_f64()),
    );
    report.row(scenario, "Raft of each server at the end", raft_text(cluster).await);
    let counted = [
        (phase1, Some(window1)),
        (phase2, Some(window2)),
        ("phase 3, deletions until healthy", Some(gap)),
        ("phase 3, after recovery", window3),
    ];
    for (phase, window) in counted {
        let Some(window) = window.filter(|w| w.seconds > 0) else { continue };
        Tally::count(&jobs, window).report(report, scenario, phase, base.len());
    }
    Ok(())
}

/// Executions kept per job: every phase's seconds at their longest, and a margin.
fn retained(args: &ScaleArgs) -> u32 {
    let seconds = args.seconds
        + args.overload_seconds
        + args.after_seconds
        + 3 * WARMUP_SECS
        + args.recovery_budget_secs
        + DELETE_BUDGET.as_secs()
        + RETAINED_MARGIN;
    seconds.min(100_000) as u32
}

fn job_name(i: usize) -> String {
    format!("scale-{i:06}")
}

/// A fire-lag job body with another shell command.
fn with_command(json: &str, command: &str) -> String {
    let mut job: serde_json::Value = serde_json::from_str(json).expect("JobBody writes JSON");
    job["executor_config"]["command"] = serde_json::Value::String(command.to_string());
    job.to_string()
}

/// How a batch of writes went: done, failed (by answer), how long, latencies.
#[derive(Debug, Default)]
struct Writes {
    done: usize,
    latency_ms: Vec<f64>,
    /// Answers that were not a success, by status (`no answer` when none came), every attempt counted.
    refusals: BTreeMap<String, usize>,
    /// Given up (the budget ran out).
    failed: usize,
    first_error: Option<String>,
    took: Duration,
}

impl Writes {
    fn describe(&self, total: usize) -> String {
        let latency = summarize(self.latency_ms.clone()).map_or(String::new(), |s| format!("; {s}"));
        let mut text = format!(
            "{} of {} in {:.1} s{latency}",
            thousands(self.done as f64),
            thousands(total as f64),
            self.took.as_secs_f64()
        );
        if !self.refusals.is_empty() {
            let refusals: Vec<String> = self.refusals.iter().map(|(k, n)| format!("{n}× {k}")).collect();
            text.push_str(&format!("; answers other than success: {}", refusals.join(", ")));
        }
        if self.failed > 0 {
            text.push_str(&format!("; {} given up", self.failed));
        }
        if let Some(first) = &self.first_error {
            text.push_str(&format!("; first error: {first}"));
        }
        text
    }

    fn refused(&mut self, outcome: &Result<(u16, String), anyhow::Error>) {
        let kind = match outcome {
            Ok((status, _)) => status.to_string(),
            Err(_) => "no answer".to_string(),
        };
        *self.refusals.entry(kind).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(match outcome {
                Ok((status, text)) => format!("{status}: {}", text.chars().take(160).collect::<String>()),
                Err(err) => format!("{err:#}").chars().take(200).collect(),
            });
        }
    }
}

/// POST every job (bounded: a wedged cluster never answers); what was not created within the budget is failed.
async fn create_jobs(api: &Api, names: &[String], body: &impl Fn(&str) -> String) -> Writes {
    let start = Instant::now();
    let requests = futures::stream::iter(names)
        .map(|name| {
            let json = body(name);
            async move {
                let sent = Instant::now();
                (api.answer("POST", "/v1/jobs", Some(json), WRITE_TIMEOUT).await, sent.elapsed())
            }
        })
        .buffer_unordered(WRITE_CONCURRENCY);
    let mut writes = Writes::default();
    let mut answered = 0;
    let mut requests = std::pin::pin!(requests);
    let deadline = tokio::time::Instant::now() + CREATE_BUDGET;
    while let Ok(Some((outcome, took))) = tokio::time::timeout_at(deadline, requests.next()).await {
        answered += 1;
        match &outcome {
            Ok((status, _)) if (200..300).contains(status) => {
                writes.done += 1;
                writes.latency_ms.push(took.as_secs_f64() * 1e3);
            }
            _ => {
                writes.refused(&outcome);
                writes.failed += 1;
            }
        }
    }
    writes.failed += names.len() - answered;
    writes.took = start.elapsed();
    writes
}

/// DELETE every job through whichever server leads at the time; a deletion that is refused or not answered is
/// tried again after [`DELETE_RETRY_PAUSE`] until it succeeds or [`DELETE_BUDGET`] has passed (a 404 after an
/// attempt without answer counts as deleted: that attempt got through).
async fn delete_jobs(cluster: &Cluster, names: &[String]) -> Writes {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + DELETE_BUDGET;
    let requests = futures::stream::iter(names)
        .map(|name| async move {
            let path = format!("/v1/jobs/{name}");
            let mut outcomes = Vec::new();
            loop {
                let outcome = match cluster.leader_api(WRITE_TIMEOUT).await {
                    Ok(api) => {
                        let sent = Instant::now();
                        let outcome = api.answer("DELETE", &path, None, WRITE_TIMEOUT).await;
                        let retried = !outcomes.is_empty();
                        match &outcome {
                            Ok((status, _)) if (200..300).contains(status) || (retried && *status == 404) => {
                                return (outcomes, Some(sent.elapsed()));
                            }
                            _ => outcome,
                        }
                    }
                    Err(err) => Err(err),
                };
                outcomes.push(outcome);
                if tokio::time::Instant::now() + DELETE_RETRY_PAUSE >= deadline {
                    return (outcomes, None);
                }
                tokio::time::sleep(DELETE_RETRY_PAUSE).await;
            }
        })
        .buffer_unordered(WRITE_CONCURRENCY);
    let mut writes = Writes::default();
    let mut answered = 0;
    let mut requests = std::pin::pin!(requests);
    while let Ok(Some((refusals, took))) = tokio::time::timeout_at(deadline, requests.next()).await {
        answered += 1;
        for refusal in &refusals {
            writes.refused(refusal);
        }
        match took {
            Some(took) => {
                writes.done += 1;
                writes.latency_ms.push(took.as_secs_f64() * 1e3);
            }
            None => writes.failed += 1,
        }
    }
    writes.failed += names.len() - answered;
    writes.took = start.elapsed();
    writes
}

/// What a window's load cost: CPU per node, RSS at its end, who led.
struct Load {
    window: Window,
    leaders: (String, String),
    cpu: Vec<ProcessUse>,
    machine_busy: f64,
    rss: String,
}

impl Load {
    fn report(&self, report: &mut Report, scenario: &str, phase: &str) {
        let (start, end) = &self.leaders;
        let leader = if start == end { start.clone() } else { format!("{start} at the start, {end} at the end") };
        report.row(scenario, &format!("{phase}: window"), format!("{} s, leader {leader}", self.window.seconds));
        let servers: Vec<String> = self
            .cpu
            .iter()
            .filter(|p| p.name.starts_with('s'))
            .map(|p| {
                let role = if p.name == *start { " (leader)" } else { "" };
                format!("{}{role} {:.2}", p.name, p.own_cores + p.children_cores)
            })
            .collect();
        let agents: Vec<&ProcessUse> = self.cpu.iter().filter(|p| p.name.starts_with('a')).collect();
        let agent_cores: Vec<f64> = agents.iter().map(|p| p.own_cores + p.children_cores).collect();
        let sum: f64 = agent_cores.iter().sum();
        let max = agent_cores.iter().copied().fold(0.0, f64::max);
        report.row(
            scenario,
            &format!("{phase}: CPU, cores"),
            format!(
                "{} · agents {sum:.2} together (max {max:.2}, shell commands included) · machine {:.0} % busy",
                servers.join(" · "),
                self.machine_busy * 100.0
            ),
        );
        report.row(scenario, &format!("{phase}: RSS at the window's end"), self.rss.clone());
    }
}

/// Wait for the window to open, meter it, and answer what it cost.
async fn watch_window(cluster: &Cluster, window: Window) -> anyhow::Result<Load> {
    fire_lag::sleep_until(window.start()).await;
    let meter = ProcessesMeter::start(&cluster.pids())?;
    let leader_start = leader_name(cluster).await;
    fire_lag::sleep_until(window.end()).await;
    let (cpu, machine_busy) = meter.finish()?;
    let leader_end = leader_name(cluster).await;
    Ok(Load { window, leaders: (leader_start, leader_end), cpu, machine_busy, rss: rss_text(cluster) })
}

async fn leader_name(cluster: &Cluster) -> String {
    match cluster.leader().await {
        Ok((_, name)) => name,
        Err(_) => "none named".to_string(),
    }
}

/// `s0 45.1 MiB · s1 … · agents 13.0–14.2 MiB (650 MiB together)`.
fn rss_text(cluster: &Cluster) -> String {
    let pids = cluster.pids();
    let rss = |pid: u32| rss_bytes(pid).unwrap_or(0);
    let servers: Vec<String> =
        pids.iter().filter(|(n, _)| n.starts_with('s')).map(|(n, pid)| format!("{n} {}", mib(rss(*pid)))).collect();
    let agents: Vec<u64> = pids.iter().filter(|(n, _)| n.starts_with('a')).map(|(_, pid)| rss(*pid)).collect();
    let (min, max, sum) = (
        agents.iter().min().copied().unwrap_or(0),
        agents.iter().max().copied().unwrap_or(0),
        agents.iter().sum::<u64>(),
    );
    format!("{} · agents {}–{} ({} together)", servers.join(" · "), mib(min), mib(max), mib(sum))
}

/// How the wait for a healthy cluster went.
struct Recovery {
    /// From the end of the deletions to the first check that passed.
    healthy_after: Option<Duration>,
    checks: usize,
    /// Failed checks, by the first check that failed in them.
    failures: BTreeMap<String, usize>,
    last_failure: String,
}

/// Check the cluster's health every [`HEALTH_POLL`] until it is healthy or `budget` has passed.
async fn wait_healthy(cluster: &Cluster, kept: &[String], budget: Duration) -> Recovery {
    let start = Instant::now();
    let step = (kept.len() / HEALTH_PROBE_JOBS).max(1);
    let probes: Vec<String> = kept.iter().step_by(step).take(HEALTH_PROBE_JOBS).cloned().collect();
    let mut recovery =
        Recovery { healthy_after: None, checks: 0, failures: BTreeMap::new(), last_failure: String::new() };
    let mut floor = applied_floor(cluster).await;
    while start.elapsed() < budget {
        tokio::time::sleep(HEALTH_POLL).await;
        recovery.checks += 1;
        let check = match health(cluster, &probes, recovery.checks, &mut floor).await {
            Ok(()) => scan_pending(cluster, kept).await,
            failed => failed,
        };
        match check {
            Ok(()) => {
                recovery.healthy_after = Some(start.elapsed());
                return recovery;
            }
            Err((kind, detail)) => {
                *recovery.failures.entry(kind.to_string()).or_default() += 1;
                recovery.last_failure = format!("{kind}: {detail}");
                if recovery.checks % 10 == 1 {
                    println!("  [{:>4.0} s] not healthy: {}", start.elapsed().as_secs_f64(), recovery.last_failure);
                }
            }
        }
    }
    recovery
}

/// A server's Raft as `GET /v1` shows it (`raft`): only what the harness reads.
#[derive(Debug, Clone, serde::Deserialize)]
struct RaftSummary {
    state: String,
    term: u64,
    last_applied: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
struct NodeSummary {
    raft: RaftSummary,
}

/// Every live server's Raft, by name (an error when it did not answer in time).
async fn raft_summaries(cluster: &Cluster) -> Vec<(String, Result<RaftSummary, String>)> {
    let mut summaries = Vec::new();
    for (i, server) in cluster.live_servers() {
        let summary = server.api.get_json::<NodeSummary>("/v1", PROBE_TIMEOUT).await;
        summaries.push((cluster.server_names[i].clone(), summary.map(|s| s.raft).map_err(|e| format!("{e:#}"))));
    }
    summaries
}

/// The highest index any server has applied now: every server must have applied it by the next check.
async fn applied_floor(cluster: &Cluster) -> u64 {
    let summaries = raft_summaries(cluster).await;
    summaries.iter().filter_map(|(_, s)| s.as_ref().ok()?.last_applied).max().unwrap_or(0)
}

/// `s0 Leader, term 4, applied 12,345 · s1 …`.
async fn raft_text(cluster: &Cluster) -> String {
    let parts: Vec<String> = raft_summaries(cluster)
        .await
        .into_iter()
        .map(|(name, summary)| match summary {
            Ok(r) => format!(
                "{name} {}, term {}, applied {}",
                r.state,
                r.term,
                r.last_applied.map_or("none".to_string(), |a| thousands(a as f64))
            ),
            Err(err) => format!("{name}: {}", err.chars().take(120).collect::<String>()),
        })
        .collect();
    parts.join(" · ")
}

/// A failed health check: which check (a fixed label, for counting) and what it saw.
type Unhealthy = (&'static str, String);

/// One leader named by every server, every server applying what any had applied at the previous check (`floor`,
/// raised here), a write within 2 s, no stuck pending run among the probe jobs.
async fn health(cluster: &Cluster, probes: &[String], check: usize, floor: &mut u64) -> Result<(), Unhealthy> {
    let mut named = Vec::new();
    for (i, server) in cluster.live_servers() {
        let answer = server.api.get_json::<crate::client::Member>("/v1/leader", PROBE_TIMEOUT).await;
        named.push((cluster.server_names[i].clone(), answer.map(|m| m.name).map_err(|e| format!("{e:#}"))));
    }
    let leaders: Vec<&String> = named.iter().filter_map(|(_, n)| n.as_ref().ok()).collect();
    if leaders.len() < named.len() || leaders.windows(2).any(|w| w[0] != w[1]) {
        let seen: Vec<String> = named
            .iter()
            .map(|(server, n)| match n {
                Ok(leader) => format!("{server} names {leader}"),
                Err(err) => format!("{server}: {}", err.chars().take(120).collect::<String>()),
            })
            .collect();
        return Err(("servers do not name one leader", seen.join("; ")));
    }
    let summaries = raft_summaries(cluster).await;
    let behind: Vec<String> = summaries
        .iter()
        .filter_map(|(name, summary)| match summary {
            Ok(r) if r.last_applied.unwrap_or(0) >= *floor => None,
            Ok(r) => Some(format!("{name} applied {} < {floor}", r.last_applied.unwrap_or(0))),
            Err(err) => Some(format!("{name}: {}", err.chars().take(120).collect::<String>())),
        })
        .collect();
    let highest = summaries.iter().filter_map(|(_, s)| s.as_ref().ok()?.last_applied).max();
    *floor = highest.unwrap_or(*floor).max(*floor);
    if !behind.is_empty() {
        return Err(("a server did not apply what another had a check earlier", behind.join("; ")));
    }
    let leader = leaders.first().map(|l| l.to_string()).unwrap_or_default();
    let api = cluster
        .server_index(&leader)
        .and_then(|i| cluster.server(i))
        .map(|s| s.api.clone())
        .ok_or(("the leader is not one of our servers", leader.clone()))?;
    let probe = serde_json::json!({
        "name": PROBE_JOB,
        "schedule": "@every 1h",
        "disabled": true,
        "executor": "shell",
        "executor_config": {"command": "true"},
        "metadata": {"check": check.to_string()},
    });
    let sent = Instant::now();
    match api.answer("POST", "/v1/jobs", Some(probe.to_string()), WRITE_PROBE_TIMEOUT).await {
        Ok((status, _)) if (200..300).contains(&status) => {}
        Ok((status, text)) => return Err(("the write was refused", format!("{leader}: {status}: {text}"))),
        Err(err) => {
            let waited = sent.elapsed().as_secs_f64();
            return Err(("the write got no answer within 2 s", format!("{leader} after {waited:.1} s: {err:#}")));
        }
    }
    for name in probes {
        let executions = api
            .executions_within(name, HEALTH_EXECUTIONS, PROBE_TIMEOUT)
            .await
            .map_err(|e| ("reading executions failed", format!("{e:#}")))?;
        if let Some(stuck) = stuck_pending(&executions, Timestamp::now()) {
            return Err(("a probe job has a stuck pending run", format!("{name}: {stuck}")));
        }
    }
    Ok(())
}

/// Every kept job's recent executions: none may be stuck pending.
async fn scan_pending(cluster: &Cluster, kept: &[String]) -> Result<(), Unhealthy> {
    let api = cluster.leader_api(PROBE_TIMEOUT).await.map_err(|e| ("no leader for the scan", format!("{e:#}")))?;
    let reads = futures::stream::iter(kept)
        .map(|name| {
            let api = api.clone();
            async move { (name, api.executions_within(name, HEALTH_EXECUTIONS, WRITE_TIMEOUT).await) }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let now = Timestamp::now();
    let mut stuck = Vec::new();
    for (name, read) in reads {
        let executions = read.map_err(|e| ("reading executions failed", format!("{e:#}")))?;
        if let Some(what) = stuck_pending(&executions, now) {
            stuck.push(format!("{name}: {what}"));
        }
    }
    match stuck.first() {
        None => Ok(()),
        Some(first) => Err(("kept jobs have stuck pending runs", format!("{} jobs, first {first}", stuck.len()))),
    }
}

/// `N pending, the oldest slot S s ago` when some execution is pending past [`PENDING_MAX_AGE`].
fn stuck_pending(executions: &[Execution], now: Timestamp) -> Option<String> {
    let stuck: Vec<Timestamp> = executions
        .iter()
        .filter(|e| e.status == "pending" && now.duration_since(e.scheduled_at) > PENDING_MAX_AGE)
        .map(|e| e.scheduled_at)
        .collect();
    let oldest = stuck.iter().min()?;
    Some(format!("{} pending, the oldest slot {:.0} s ago", stuck.len(), millis_between(*oldest, now) / 1e3))
}

/// Keep a cluster that did not recover running (bounded) so its processes can be inspected.
async fn hold_wedged(cluster: &Cluster, args: &ScaleArgs) {
    if args.hold_wedged_secs == 0 {
        return;
    }
    let pids: Vec<String> = cluster.pids().iter().map(|(name, pid)| format!("{name}={pid}")).collect();
    println!(
        "  the cluster did not recover; holding it {} s for inspection: {}",
        args.hold_wedged_secs,
        pids.join(" ")
    );
    tokio::time::sleep(Duration::from_secs(args.hold_wedged_secs)).await;
}

/// What became of one window's slots over the base jobs (first attempts), by status.
#[derive(Debug, Default)]
struct Tally {
    expected: u64,
    by_status: BTreeMap<String, u64>,
    started: u64,
    never_decided: u64,
    duplicates: u64,
    lag_ms: Vec<f64>,
    /// Runs started per node (the spread over the agents).
    by_node: BTreeMap<String, u64>,
    read_errors: u64,
}

impl Tally {
    fn count(jobs: &[anyhow::Result<Vec<Execution>>], window: Window) -> Tally {
        let mut tally = Tally::default();
        let (from, to) = (window.start_second, window.start_second + window.seconds as i64);
        for job in jobs {
            tally.expected += window.seconds;
            let Ok(executions) = job else {
                tally.read_errors += 1;
                continue;
            };
            let mut by_slot: BTreeMap<i64, Vec<&Execution>> = BTreeMap::new();
            for e in executions.iter().filter(|e| e.attempt == 1) {
                let second = e.scheduled_at.as_second();
                if second >= from && second < to {
                    by_slot.entry(second).or_default().push(e);
                }
            }
            tally.never_decided += window.seconds - by_slot.len() as u64;
            for group in by_slot.values() {
                tally.duplicates += group.len() as u64 - 1;
                let first = group[0];
                *tally.by_status.entry(first.status.clone()).or_default() += 1;
                if let Some(started) = first.started_at {
                    tally.started += 1;
                    tally.lag_ms.push(millis_between(first.scheduled_at, started));
                    *tally.by_node.entry(first.node_name.clone()).or_default() += 1;
                }
            }
        }
        tally
    }

    fn report(&self, report: &mut Report, scenario: &str, phase: &str, jobs: usize) {
        let status = |s: &str| thousands(self.by_status.get(s).copied().unwrap_or(0) as f64);
        let others: Vec<String> = self
            .by_status
            .iter()
            .filter(|(s, _)| !["succeeded", "failed", "skipped", "lost", "pending"].contains(&s.as_str()))
            .map(|(s, n)| format!("{s} {}", thousands(*n as f64)))
            .collect();
        report.row(
            scenario,
            &format!("{phase}: slots of the {} base jobs", thousands(jobs as f64)),
            format!(
                "expected {} · ran {} (succeeded {}, failed {}) · skipped {} · lost {} · pending {} · never decided {}{}{}",
                thousands(self.expected as f64),
                thousands(self.started as f64),
                status("succeeded"),
                status("failed"),
                status("skipped"),
                status("lost"),
                status("pending"),
                thousands(self.never_decided as f64),
                if others.is_empty() { String::new() } else { format!(" · {}", others.join(", ")) },
                if self.duplicates > 0 { format!(" · duplicates {}", self.duplicates) } else { String::new() },
            ),
        );
        let lag = summarize(self.lag_ms.clone()).map_or("no run started".to_string(), |s| s.to_string());
        report.row(scenario, &format!("{phase}: lag started_at − scheduled_at"), lag);
        if let Some(spread) = spread(&self.by_node) {
            report.row(scenario, &format!("{phase}: runs per node (spread)"), spread);
        }
        if self.read_errors > 0 {
            report.note(format!("{scenario}: {phase}: reading executions failed for {} jobs", self.read_errors));
        }
    }
}

/// How evenly the runs went over the nodes: how many nodes ran any, and the fewest, median and most per node.
fn spread(by_node: &BTreeMap<String, u64>) -> Option<String> {
    let mut counts: Vec<u64> = by_node.values().copied().collect();
    counts.sort_unstable();
    let (fewest, most) = (*counts.first()?, *counts.last()?);
    let median = counts[counts.len() / 2];
    Some(format!(
        "{} nodes ran them · fewest {} · median {} · most {}",
        counts.len(),
        thousands(fewest as f64),
        thousands(median as f64),
        thousands(most as f64)
    ))
}

/// The watched log lines per node, the servers' silence, and every warning by kind.
fn report_logs(report: &mut Report, scenario: &str, cluster: &Cluster, logs: &[(String, PathBuf)]) {
    let mut counts: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for (node, path) in logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            // The first matching label only (the list goes from specific to general).
            if let Some((label, _)) = WATCHED_LINES.iter().find(|(_, parts)| parts.iter().all(|p| line.contains(p))) {
                *counts.entry(label).or_default().entry(node.clone()).or_default() += 1;
            }
        }
    }
    for (label, by_node) in &counts {
        let total: usize = by_node.values().sum();
        let mut nodes: Vec<(&String, &usize)> = by_node.iter().collect();
        nodes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = nodes.iter().take(6).map(|(n, c)| format!("{n} {c}")).collect();
        let more = if nodes.len() > 6 { format!(", {} more nodes", nodes.len() - 6) } else { String::new() };
        report.row(scenario, &format!("log: {label}"), format!("{total} ({}{more})", shown.join(", ")));
    }
    let now = SystemTime::now();
    let silence: Vec<String> = logs
        .iter()
        .filter(|(node, _)| cluster.server_index(node).is_some())
        .map(|(node, path)| {
            let age = std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok());
            match age {
                Some(age) => format!("{node} {:.0} s ago", age.as_secs_f64()),
                None => format!("{node} unknown"),
            }
        })
        .collect();
    report.row(scenario, "servers' logs last written", silence.join(" · "));
    if let Some(problems) = describe_kinds(&cluster.log_problems(), 10) {
        report.note(format!("{scenario}: the nodes logged {problems}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(second: i64, attempt: u32, status: &str, started_ms: Option<i64>) -> Execution {
        let scheduled_at = Timestamp::from_second(second).unwrap();
        Execution {
            id: format!("{:013}-{attempt}", second * 1000),
            node_name: "a0".into(),
            scheduled_at,
            started_at: started_ms.map(|m| Timestamp::from_millisecond(second * 1000 + m).unwrap()),
            finished_at: None,
            status: status.into(),
            output: String::new(),
            attempt,
            trigger: "schedule".into(),
            error: None,
        }
    }

    #[test]
    fn a_tally_counts_each_slot_of_the_window_once_by_its_first_attempt() {
        let window = Window { start_second: 100, seconds: 4 };
        let executions = vec![
            exec(99, 1, "succeeded", Some(5)),
            exec(100, 1, "succeeded", Some(10)),
            exec(100, 1, "succeeded", Some(12)),
            exec(101, 1, "lost", None),
            exec(101, 2, "succeeded", Some(40)),
            exec(102, 1, "pending", None),
            exec(104, 1, "succeeded", Some(5)),
        ];
        let tally = Tally::count(&[Ok(executions), Err(anyhow::anyhow!("read failed"))], window);
        assert_eq!(tally.expected, 8);
        assert_eq!(tally.started, 1);
        assert_eq!(tally.duplicates, 1);
        assert_eq!(tally.never_decided, 1, "slot 103");
        assert_eq!(tally.by_status.get("lost"), Some(&1));
        assert_eq!(tally.by_status.get("pending"), Some(&1));
        assert_eq!(tally.lag_ms, vec![10.0]);
        assert_eq!(tally.by_node, BTreeMap::from([("a0".to_string(), 1)]));
        assert_eq!(tally.read_errors, 1);
    }

    #[test]
    fn the_spread_names_the_fewest_median_and_most_runs_per_node() {
        let by_node = BTreeMap::from([("a0".to_string(), 3), ("a1".to_string(), 10), ("a2".to_string(), 5)]);
        assert_eq!(spread(&by_node).unwrap(), "3 nodes ran them · fewest 3 · median 5 · most 10");
        assert_eq!(spread(&BTreeMap::new()), None);
    }

    #[test]
    fn only_old_pending_runs_are_stuck() {
        let now = Timestamp::from_second(1_000).unwrap();
        let fresh = exec(990, 1, "pending", None);
        assert_eq!(stuck_pending(std::slice::from_ref(&fresh), now), None);
        let old = exec(900, 1, "pending", None);
        let done = exec(800, 1, "succeeded", Some(1));
        assert_eq!(stuck_pending(&[fresh, old, done], now).as_deref(), Some("1 pending, the oldest slot 100 s ago"));
    }

    #[test]
    fn the_job_body_runs_the_command_asked_for() {
        let body =
            JobBody { sink: None, retained: 10, tags: BTreeMap::from([("pool".into(), "w:1".into())]), broker: None };
        let json: serde_json::Value = serde_json::from_str(&with_command(&body.json("j"), "true")).unwrap();
        assert_eq!(json["executor_config"]["command"], "true");
        assert_eq!(json["tags"]["pool"], "w:1");
        assert_eq!(json["schedule"], "* * * * * *");
    }
}
