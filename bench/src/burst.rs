//! Burst (issue 14, "Overload"): N jobs all due at one instant (`0 * * * * *`: second 0 of every minute), on one
//! single-node server or, with `--cluster`, on 3 servers + 2 agent-only nodes, the jobs tagged as in
//! [`crate::cluster_lag`] (`{"pool": "agents:1"}`: each slot runs once, on one of the two agents; the servers
//! run none).
//!
//! The jobs are created through [`crate::overload`]'s fleet (64 requests at a time) before a minute boundary; when
//! creation ends less than [`CREATE_MARGIN`] before the next one, the first burst is the minute after. `--bursts`
//! instants are measured, one a minute, each watched for `--window-secs`. Throughout, [`crate::overload`]'s
//! sampler reads every node's RSS, CPU and descendants four times a second, and its probes time `POST /v1/jobs`
//! (an update of a throwaway job) and `GET /v1/jobs` at `--probe-rate` requests per second each, open loop. After
//! the last window every execution is read back. Per second after each instant: runs started and their lag (all
//! slots of a burst are the same instant, so the lag of a second is that of the runs it started), slots skipped,
//! lost, failed, slots still pending (neither started nor decided) at the second's end, children, RSS and CPU of
//! each node, the probes' p99; rows end once the burst has drained. At the end: every slot accounted for (ran +
//! skipped with the overload reason = N × bursts, none lost), the time from each instant to its last start, and
//! how long SIGTERM takes when sent `--sigterm-into-burst-secs` into the next instant.
//!
//! `--previous BIN` runs the same scenario once more, on fresh nodes, with a second binary (the previous commit's,
//! say), first, so that both sit side by side in one report with their ratios (lag p99, server CPU per run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jiff::{SignedDuration, Timestamp};

use crate::client::{Api, Execution};
use crate::cluster::{Cluster, Layout};
use crate::cluster_lag::{self, Placement};
use crate::fire_lag::{millis_between, sleep_until};
use crate::overload::{Fleet, JobTemplate, OVERLOAD_REASON, Probe, Sample, Sampler, probe, probe_get, probe_post};
use crate::procfs::ticks_per_second;
use crate::report::Report;
use crate::server::{Launcher, Server, Stopped, describe_kinds, problem_kinds};
use crate::stats::{Summary, mib, ms, summarize, thousands};

/// Second 0 of every minute: every job is due at the same instant.
const SCHEDULE: &str = "0 * * * * *";
/// Creation must end at least this long before the first instant, else the first burst is a minute later.
const CREATE_MARGIN: SignedDuration = SignedDuration::from_secs(5);
/// Sampling and probing start this long before the first instant.
const LEAD: SignedDuration = SignedDuration::from_secs(3);
/// A window leaves the rest of the minute to the next instant's start and, after the last, to the read-back.
const WINDOW_SECS_MAX: u64 = 50;
/// Executions kept per job beyond the measured instants (the one SIGTERM interrupts included).
const RETAINED_MARGIN: u32 = 10;
/// A single server's wait for its own leadership.
const LEAD_BUDGET: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct BurstArgs {
    /// Jobs, all due at the same instant (second 0 of every minute).
    #[arg(long, default_value_t = 5_000)]
    pub jobs: usize,
    /// Instants measured, one a minute: N runs due at each.
    #[arg(long, default_value_t = 2)]
    pub bursts: u32,
    /// The shell command of every job.
    #[arg(long, default_value = "date")]
    pub command: String,
    /// 3 servers + 2 agent-only nodes (jobs tagged `pool: agents:1`, run on one of the agents) instead of one
    /// server.
    #[arg(long)]
    pub cluster: bool,
    /// Seconds watched after each instant (at most 50): long enough for the queue to drain (a node holds 16 ×
    /// `--max-running` runs waiting, 2,048 by default, which took 20–35 s at 60–100 starts a second on 2 busy cores).
    #[arg(long, default_value_t = 45)]
    pub window_secs: u64,
    /// Requests per second of each probe client (POST /v1/jobs and GET /v1/jobs).
    #[arg(long, default_value_t = 5)]
    pub probe_rate: u32,
    /// Seconds into the instant after the last measured one at which every node gets SIGTERM.
    #[arg(long, default_value_t = 1)]
    pub sigterm_into_burst_secs: u64,
    /// Run the same scenario first with this kairos binary (e.g. the previous commit's), then with `--kairos`,
    /// and compare them.
    #[arg(long)]
    pub previous: Option<PathBuf>,
    /// An extra flag for the single server, e.g. `--server-arg=--max-running=64` (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
}

/// The report's section for these arguments.
pub fn section_title(args: &BurstArgs) -> String {
    format!("Overload: a burst of {} at one instant, {}", thousands(args.jobs as f64), where_(args))
}

fn where_(args: &BurstArgs) -> String {
    if args.cluster {
        format!("{} servers + {} agents", cluster_lag::SERVERS, cluster_lag::AGENTS)
    } else {
        "one node".to_string()
    }
}

pub async fn run(launcher: &Launcher, args: &BurstArgs, report: &mut Report) -> anyhow::Result<()> {
    if args.jobs == 0 || args.bursts == 0 || args.probe_rate == 0 {
        bail!("--jobs, --bursts and --probe-rate must be positive");
    }
    if args.window_secs == 0 || args.window_secs > WINDOW_SECS_MAX {
        bail!("--window-secs {}: give 1 to {WINDOW_SECS_MAX}", args.window_secs);
    }
    if args.cluster && !args.server_args.is_empty() {
        bail!("--server-arg applies to the single server only");
    }
    let mut binaries = Vec::new();
    if let Some(previous) = &args.previous {
        if !previous.is_file() {
            bail!("--previous: '{}' is not a file", previous.display());
        }
        binaries.push(("--previous", Launcher { binary: previous.clone(), ..launcher.clone() }));
    }
    binaries.push(("--kairos", launcher.clone()));
    let mut runs = Vec::new();
    for (flag, launcher) in binaries {
        let label = launcher.binary.file_name().map_or("kairos".into(), |n| n.to_string_lossy().into_owned());
        let scenario = format!(
            "burst, {}, {} `{}` jobs at one instant, {label} ({flag})",
            where_(args),
            thousands(args.jobs as f64),
            args.command
        );
        println!("== {scenario}");
        match measure(&launcher, args, &label).await {
            Ok(run) => {
                report_run(report, &scenario, args, &run);
                runs.push((label, run));
            }
            Err(err) => report.note(format!("{scenario}: failed: {err:#}")),
        }
    }
    match &runs[..] {
        [] => bail!("every run failed"),
        [(previous, a), (current, b)] => compare(report, args, (previous, a), (current, b)),
        _ => {}
    }
    Ok(())
}

/// What one run talks to and samples: one server, or a cluster.
enum Nodes {
    One { server: Server, log: PathBuf },
    Cluster { cluster: Cluster, leader: String },
}

impl Nodes {
    /// Start the nodes and wait until they are ready; the API to drive (the leader's).
    async fn start(launcher: &Launcher, scratch: &Path, args: &BurstArgs, label: &str) -> anyhow::Result<(Nodes, Api)> {
        if args.cluster {
            let layout = Layout {
                servers: cluster_lag::SERVERS,
                agents: cluster_lag::AGENTS,
                agent_tags: vec![format!("{}={}", cluster_lag::POOL_TAG.0, cluster_lag::POOL_TAG.1)],
                log_prefix: format!("burst-{label}"),
            };
            let cluster = Cluster::start(launcher, scratch, &layout).await?;
            let leader = cluster.wait_ready(cluster_lag::FORM_BUDGET).await?;
            let api = cluster.leader_api(cluster_lag::FORM_BUDGET).await?;
            Ok((Nodes::Cluster { cluster, leader }, api))
        } else {
            let mut spec = launcher.spec(scratch, &format!("burst-{label}"));
            spec.flags.extend(args.server_args.iter().cloned());
            let log = spec.log_path.clone();
            let server = Server::spawn(&spec).await?;
            server.wait_leader(LEAD_BUDGET).await?;
            let api = server.api.clone();
            Ok((Nodes::One { server, log }, api))
        }
    }

    /// Every process: (name, pid, whether it is a server), servers first.
    fn processes(&self) -> Vec<(String, u32, bool)> {
        match self {
            Nodes::One { server, .. } => vec![("server".to_string(), server.pid, true)],
            Nodes::Cluster { cluster, .. } => cluster
                .pids()
                .into_iter()
                .map(|(name, pid)| {
                    let server = cluster.server_names.contains(&name);
                    (name, pid, server)
                })
                .collect(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Nodes::One { .. } => "one server (--bootstrap-expect 1), jobs untagged".to_string(),
            Nodes::Cluster { leader, .. } => format!(
                "{} servers + {} agent-only nodes tagged {}={}, leader {leader}; jobs tagged {{\"{}\": \"{}\"}} (once, on \
                 one of the agents, as in cluster-lag); requests to the leader",
                cluster_lag::SERVERS,
                cluster_lag::AGENTS,
                cluster_lag::POOL_TAG.0,
                cluster_lag::POOL_TAG.1,
                cluster_lag::POOL_TAG.0,
                Placement::OneAgent.tag_value()
            ),
        }
    }

    fn log_problems(&self) -> Vec<(String, usize)> {
        match self {
            Nodes::One { log, .. } => problem_kinds([log.as_path()]),
            Nodes::Cluster { cluster, .. } => cluster.log_problems(),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Nodes::One { server, .. } => server.log_tail(10),
            Nodes::Cluster { cluster, .. } => {
                let paths = cluster.log_paths();
                let tails: Vec<String> =
                    paths.iter().map(|(name, path)| format!("{name}: {}", crate::server::log_tail(path, 3))).collect();
                tails.join("\n")
            }
        }
    }

    /// SIGTERM every node (a cluster's agents first), each timed.
    async fn stop(self) -> Vec<(String, anyhow::Result<Stopped>)> {
        match self {
            Nodes::One { server, .. } => vec![("server".to_string(), server.stop().await)],
            Nodes::Cluster { cluster, .. } => cluster.stop().await,
        }
    }
}

/// One process's samples: its name, whether it is a server.
struct Series {
    name: String,
    server: bool,
    samples: Vec<Sample>,
}

/// Everything one run measured.
struct Run {
    nodes: String,
    created: String,
    /// From the end of creation to the first instant.
    lead_secs: f64,
    instants: Vec<Timestamp>,
    names: Vec<String>,
    /// Every job's executions, in the order of `names`.
    executions: Vec<Vec<Execution>>,
    read_took: Duration,
    series: Vec<Series>,
    posts: Vec<Probe>,
    gets: Vec<Probe>,
    /// How far into the next instant SIGTERM was sent, in s.
    sigterm_offset_secs: f64,
    stopped: Vec<(String, anyhow::Result<Stopped>)>,
    problems: Option<String>,
}

async fn measure(launcher: &Launcher, args: &BurstArgs, label: &str) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let (nodes, api) = Nodes::start(launcher, dir.path(), args, label).await?;
    let mut run = match measure_on(&nodes, api, args).await {
        Ok(run) => run,
        Err(err) => {
            let tail = nodes.log_tail();
            nodes.stop().await;
            return Err(err.context(format!("the nodes' last lines:\n{tail}")));
        }
    };
    let next = *run.instants.last().expect("at least one burst") + SignedDuration::from_mins(1);
    sleep_until(next + SignedDuration::from_secs(args.sigterm_into_burst_secs as i64)).await;
    run.sigterm_offset_secs = millis_between(next, Timestamp::now()) / 1e3;
    run.problems = describe_kinds(&nodes.log_problems(), 6);
    run.stopped = nodes.stop().await;
    Ok(run)
}

async fn measure_on(nodes: &Nodes, api: Api, args: &BurstArgs) -> anyhow::Result<Run> {
    let mut template = JobTemplate {
        prefix: "burst",
        schedule: SCHEDULE.to_string(),
        command: args.command.clone(),
        tags: BTreeMap::new(),
    };
    if args.cluster {
        template.tags.insert(cluster_lag::POOL_TAG.0.to_string(), Placement::OneAgent.tag_value());
    }
    let mut fleet = Fleet::new(api.clone(), template, args.bursts + RETAINED_MARGIN);
    println!("   creating {} jobs", args.jobs);
    let created = fleet.resize(args.jobs).await?;
    if created.errors() > 0 {
        bail!("not every job was created: {}", created.describe());
    }
    let now = Timestamp::now();
    let first = first_instant(now)?;
    let instants: Vec<Timestamp> = (0..i64::from(args.bursts)).map(|b| first + SignedDuration::from_mins(b)).collect();
    let window = SignedDuration::from_secs(args.window_secs as i64);
    let end = *instants.last().expect("at least one burst") + window;
    println!("   first burst at {first}");
    sleep_until(first - LEAD).await;
    let processes = nodes.processes();
    let sampler = Sampler::start(processes.iter().map(|(_, pid, _)| *pid).collect());
    let posts = tokio::spawn(probe(api.clone(), args.probe_rate, end, probe_post));
    let gets = tokio::spawn(probe(api.clone(), args.probe_rate, end, probe_get));
    for instant in &instants {
        sleep_until(*instant).await;
        println!("   burst at {instant}");
    }
    sleep_until(end).await;
    let posts = posts.await.context("the POST probe")?;
    let gets = gets.await.context("the GET probe")?;
    let series = processes
        .into_iter()
        .zip(sampler.finish())
        .map(|((name, _, server), samples)| Series { name, server, samples })
        .collect();
    println!("   reading executions back");
    let read_start = Instant::now();
    let executions = fleet.executions(&fleet.names, fleet.retained).await?;
    Ok(Run {
        nodes: nodes.describe(),
        created: created.describe(),
        lead_secs: millis_between(now, first) / 1e3,
        instants,
        names: fleet.names.clone(),
        executions,
        read_took: read_start.elapsed(),
        series,
        posts,
        gets,
        sigterm_offset_secs: 0.0,
        stopped: Vec::new(),
        problems: None,
    })
}

/// The first whole minute at least [`CREATE_MARGIN`] after `now`.
fn first_instant(now: Timestamp) -> anyhow::Result<Timestamp> {
    let earliest = now + CREATE_MARGIN;
    let minute = earliest.as_second().div_euclid(60) * 60;
    let at = Timestamp::from_second(minute)?;
    Ok(if at >= earliest { at } else { at + SignedDuration::from_mins(1) })
}

/// What became of one burst's slots: the first attempt of each job's run at the instant.
#[derive(Debug, Default)]
struct Slots {
    expected: u64,
    ran: u64,
    failed: u64,
    skipped_overloaded: u64,
    skipped_other: u64,
    lost: u64,
    /// Pending or running when read back.
    unfinished: u64,
    missing: u64,
    duplicates: u64,
    other: BTreeMap<String, u64>,
    lag: Option<Summary>,
    examples: Vec<String>,
}

impl Slots {
    fn count(names: &[String], executions: &[Vec<Execution>], instant: Timestamp) -> Slots {
        let mut slots = Slots { expected: names.len() as u64, ..Slots::default() };
        let mut lag = Vec::new();
        for (name, job) in names.iter().zip(executions) {
            let records: Vec<&Execution> = job.iter().filter(|e| e.scheduled_at == instant && e.attempt == 1).collect();
            slots.duplicates += records.len().saturating_sub(1) as u64;
            let Some(e) = records.first() else {
                slots.missing += 1;
                slots.example(format!("{name}: no record of {instant}"));
                continue;
            };
            if let Some(started) = e.started_at {
                lag.push(millis_between(instant, started));
            }
            let reason = e.error.as_deref().unwrap_or("no reason");
            match e.status.as_str() {
                "succeeded" => slots.ran += 1,
                "failed" => {
                    slots.ran += 1;
                    slots.failed += 1;
                    slots.example(format!("{name}: failed: {reason}"));
                }
                "skipped" if reason.contains(OVERLOAD_REASON) => slots.skipped_overloaded += 1,
                "skipped" => {
                    slots.skipped_other += 1;
                    slots.example(format!("{name}: skipped: {reason}"));
                }
                "lost" => {
                    slots.lost += 1;
                    slots.example(format!("{name}: lost: {reason}"));
                }
                "pending" | "running" => {
                    slots.unfinished += 1;
                    slots.example(format!("{name}: still {} when read", e.status));
                }
                other => *slots.other.entry(other.to_string()).or_default() += 1,
            }
        }
        slots.lag = summarize(lag);
        slots
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < 3 {
            self.examples.push(text);
        }
    }

    fn accounted(&self) -> bool {
        self.ran + self.skipped_overloaded == self.expected && self.lost == 0 && self.duplicates == 0
    }

    fn add(&mut self, other: &Slots) {
        self.expected += other.expected;
        self.ran += other.ran;
        self.failed += other.failed;
        self.skipped_overloaded += other.skipped_overloaded;
        self.skipped_other += other.skipped_other;
        self.lost += other.lost;
        self.unfinished += other.unfinished;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        for (status, n) in &other.other {
            *self.other.entry(status.clone()).or_default() += n;
        }
    }

    fn describe(&self) -> String {
        let mut extra = Vec::new();
        for (what, n) in [
            ("skipped for another reason", self.skipped_other),
            ("still pending or running when read", self.unfinished),
            ("without any record", self.missing),
            ("duplicated", self.duplicates),
        ] {
            if n > 0 {
                extra.push(format!("{what} {}", thousands(n as f64)));
            }
        }
        for (status, n) in &self.other {
            extra.push(format!("{status} {}", thousands(*n as f64)));
        }
        let extra = if extra.is_empty() { String::new() } else { format!("; {}", extra.join(", ")) };
        format!(
            "ran {} (failed {}) + skipped with the overload reason {} = {} of {} expected; lost {}{extra}",
            thousands(self.ran as f64),
            thousands(self.failed as f64),
            thousands(self.skipped_overloaded as f64),
            thousands((self.ran + self.skipped_overloaded) as f64),
            thousands(self.expected as f64),
            thousands(self.lost as f64),
        )
    }
}

/// One second `[start, end)` after an instant: the burst's runs by what happened in it, the nodes and probes.
#[derive(Debug, Default)]
struct Second {
    started: u64,
    lag: Option<Summary>,
    skipped: u64,
    lost: u64,
    failed: u64,
    /// Slots of the burst neither started nor decided by the end.
    pending: u64,
    children_max: usize,
    /// Per process, in the order of the run's series.
    rss_max: Vec<u64>,
    cores: Vec<f64>,
    post: Option<Summary>,
    get: Option<Summary>,
    probe_errors: usize,
}

impl Second {
    fn measure(run: &Run, instant: Timestamp, start: Timestamp, end: Timestamp) -> Second {
        let within = |t: Timestamp| t >= start && t < end;
        let before_end = |t: Option<Timestamp>| t.is_some_and(|t| t < end);
        let mut s = Second::default();
        let mut lag = Vec::new();
        for e in run.executions.iter().flatten().filter(|e| e.scheduled_at == instant && e.attempt == 1) {
            if let Some(started) = e.started_at.filter(|t| within(*t)) {
                s.started += 1;
                lag.push(millis_between(instant, started));
                s.failed += u64::from(e.status == "failed");
            }
            let decided_within = e.started_at.is_none() && e.finished_at.is_some_and(within);
            s.skipped += u64::from(decided_within && e.status == "skipped");
            s.lost += u64::from(decided_within && e.status == "lost");
            if !before_end(e.started_at) && !before_end(e.finished_at) {
                s.pending += 1;
            }
        }
        s.lag = summarize(lag);
        let mut children = BTreeMap::<Timestamp, usize>::new();
        for series in &run.series {
            let inside: Vec<&Sample> = series.samples.iter().filter(|x| within(x.at)).collect();
            for x in &inside {
                *children.entry(x.at).or_default() += x.children;
            }
            s.rss_max.push(inside.iter().map(|x| x.rss).max().unwrap_or(0));
            s.cores.push(cores(&series.samples, start, end).0);
        }
        s.children_max = children.values().copied().max().unwrap_or(0);
        let probes = |probes: &[Probe]| summarize(probes.iter().filter(|q| within(q.at)).map(|q| q.ms).collect());
        s.post = probes(&run.posts);
        s.get = probes(&run.gets);
        s.probe_errors = run.posts.iter().chain(&run.gets).filter(|q| within(q.at) && !q.ok).count();
        s
    }

    fn active(&self) -> bool {
        self.started + self.skipped + self.lost + self.pending > 0
    }
}

/// CPU of one process over `[start, end)` from its samples (the last at or before each end), in cores of its own
/// and of its reaped children, and CPU-seconds of its own.
fn cores(samples: &[Sample], start: Timestamp, end: Timestamp) -> (f64, f64, f64) {
    let at_or_before = |t: Timestamp| samples.iter().rev().find(|x| x.at <= t).or(samples.first());
    let (Some(a), Some(b)) = (at_or_before(start), at_or_before(end)) else { return (0.0, 0.0, 0.0) };
    let secs = millis_between(a.at, b.at) / 1e3;
    if secs <= 0.0 {
        return (0.0, 0.0, 0.0);
    }
    let ticks = ticks_per_second();
    let own = b.own_ticks.saturating_sub(a.own_ticks) as f64 / ticks;
    let children = b.children_ticks.saturating_sub(a.children_ticks) as f64 / ticks;
    (own / secs, children / secs, own)
}

/// A burst's figures for the report and the comparison.
struct Burst {
    slots: Slots,
    /// From the instant to the last run started, and to the end of the first second with nothing pending.
    last_start_secs: Option<f64>,
    drained_secs: Option<u64>,
    seconds: Vec<Second>,
    /// CPU-seconds of the servers' own (not their children's) over the window, and of the agents'.
    server_cpu_secs: f64,
    agent_cpu_secs: f64,
}

impl Burst {
    fn measure(run: &Run, instant: Timestamp, window_secs: u64) -> Burst {
        let slots = Slots::count(&run.names, &run.executions, instant);
        let last_start = run
            .executions
            .iter()
            .flatten()
            .filter(|e| e.scheduled_at == instant && e.attempt == 1)
            .filter_map(|e| e.started_at)
            .max();
        let seconds: Vec<Second> = (0..window_secs as i64)
            .map(|k| {
                let start = instant + SignedDuration::from_secs(k);
                Second::measure(run, instant, start, start + SignedDuration::from_secs(1))
            })
            .collect();
        let drained_secs = seconds.iter().position(|s| s.pending == 0).map(|k| k as u64 + 1);
        let end = instant + SignedDuration::from_secs(window_secs as i64);
        let (mut server_cpu_secs, mut agent_cpu_secs) = (0.0, 0.0);
        for series in &run.series {
            let own = cores(&series.samples, instant, end).2;
            if series.server {
                server_cpu_secs += own;
            } else {
                agent_cpu_secs += own;
            }
        }
        Burst {
            slots,
            last_start_secs: last_start.map(|t| millis_between(instant, t) / 1e3),
            drained_secs,
            seconds,
            server_cpu_secs,
            agent_cpu_secs,
        }
    }

    fn started(&self) -> u64 {
        self.seconds.iter().map(|s| s.started).sum()
    }

    /// Milliseconds of the servers' own CPU per run started.
    fn server_ms_per_run(&self) -> Option<f64> {
        let started = self.started();
        (started > 0).then(|| self.server_cpu_secs * 1e3 / started as f64)
    }
}

fn report_run(report: &mut Report, scenario: &str, args: &BurstArgs, run: &Run) {
    report.row(scenario, "nodes", &run.nodes);
    report.row(
        scenario,
        "jobs created (64 concurrent POST /v1/jobs)",
        format!(
            "{}; schedule `{SCHEDULE}`, command `{}`; first instant {:.0} s after creation ended",
            run.created, args.command, run.lead_secs
        ),
    );
    let mut all = Slots::default();
    let mut bursts = Vec::new();
    for (b, instant) in run.instants.iter().enumerate() {
        let burst = Burst::measure(run, *instant, args.window_secs);
        all.add(&burst.slots);
        report.row(scenario, &format!("burst {} at {instant}", b + 1), describe_burst(run, &burst, args.window_secs));
        bursts.push(burst);
    }
    report.target(
        scenario,
        &format!("slots of {} bursts accounted for", run.instants.len()),
        all.describe(),
        "ran + skipped with reason = N × bursts, 0 lost",
        if all.accounted() { "met" } else { "missed" },
    );
    let examples: Vec<String> = bursts.iter().flat_map(|b| b.slots.examples.iter().cloned()).take(4).collect();
    if !examples.is_empty() {
        report.note(format!("{scenario}: for example {}", examples.join("; ")));
    }
    report.row(scenario, "every execution read back", format!("{:.1} s", run.read_took.as_secs_f64()));
    let stops: Vec<String> = run
        .stopped
        .iter()
        .map(|(name, stopped)| match stopped {
            Ok(s) => format!(
                "{name} {:.1} s ({}{})",
                s.took.as_secs_f64(),
                s.status,
                if s.killed { ", needed SIGKILL" } else { "" }
            ),
            Err(err) => format!("{name}: {err:#}"),
        })
        .collect();
    report.row(
        scenario,
        &format!("SIGTERM to exit, {:.1} s into the next burst (nodes one after another)", run.sigterm_offset_secs),
        stops.join(" · "),
    );
    if let Some(problems) = &run.problems {
        report.note(format!("{scenario}: the nodes logged {problems}"));
    }
    for (b, (burst, instant)) in bursts.iter().zip(&run.instants).enumerate() {
        per_second_table(report, scenario, run, b + 1, *instant, burst);
    }
}

fn describe_burst(run: &Run, burst: &Burst, window_secs: u64) -> String {
    let lag = burst.slots.lag.map_or("no run started".to_string(), |s| s.to_string());
    let last = burst.last_start_secs.map_or("–".to_string(), |s| format!("{s:.1} s"));
    let drained =
        burst.drained_secs.map_or(format!("not within the {window_secs} s watched"), |s| format!("within {s} s"));
    let children = burst.seconds.iter().map(|s| s.children_max).max().unwrap_or(0);
    let per_process: Vec<String> = run
        .series
        .iter()
        .enumerate()
        .map(|(i, series)| {
            let rss = burst.seconds.iter().map(|s| s.rss_max[i]).max().unwrap_or(0);
            format!("{} {}", series.name, mib(rss))
        })
        .collect();
    let seconds = burst.seconds.len() as f64;
    let probe_p99 =
        |pick: fn(&Second) -> Option<Summary>| burst.seconds.iter().filter_map(pick).map(|s| s.p99).reduce(f64::max);
    let p99 = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{} ms", ms(v)));
    let agents = if run.series.iter().any(|s| !s.server) {
        format!(", agents {:.2} cores", burst.agent_cpu_secs / seconds)
    } else {
        String::new()
    };
    format!(
        "{}; lag {lag}; last run started {last} after the instant; nothing pending {drained}; children ≤ {children}; \
         RSS ≤ {}; CPU over {window_secs} s: servers {:.2} cores{agents} (servers {} ms per run started); worst \
         second's p99: POST /v1/jobs {}, GET /v1/jobs {}",
        burst.slots.describe(),
        per_process.join(" · "),
        burst.server_cpu_secs / seconds,
        burst.server_ms_per_run().map_or("–".to_string(), |v| format!("{v:.2}")),
        p99(probe_p99(|s| s.post)),
        p99(probe_p99(|s| s.get)),
    )
}

fn per_second_table(report: &mut Report, scenario: &str, run: &Run, number: usize, instant: Timestamp, burst: &Burst) {
    // Up to the second after the last with anything started, decided or pending.
    let last_active = burst.seconds.iter().rposition(Second::active).unwrap_or(0);
    let shown = (last_active + 2).min(burst.seconds.len());
    let names: Vec<&str> = run.series.iter().map(|s| s.name.as_str()).collect();
    let mut rows = Vec::new();
    for (k, s) in burst.seconds.iter().take(shown).enumerate() {
        let (p50, p99, max) =
            s.lag.map_or(("–".into(), "–".into(), "–".into()), |l| (ms(l.p50), ms(l.p99), ms(l.max)));
        let rss: Vec<String> = s.rss_max.iter().map(|r| format!("{:.0}", *r as f64 / (1024.0 * 1024.0))).collect();
        let cpu: Vec<String> = s.cores.iter().map(|c| format!("{c:.2}")).collect();
        let probe = |p: Option<Summary>| p.map_or("–".to_string(), |p| ms(p.p99));
        rows.push(vec![
            format!("{k}–{}", k + 1),
            thousands(s.started as f64),
            p50,
            p99,
            max,
            thousands(s.skipped as f64),
            thousands(s.lost as f64),
            thousands(s.failed as f64),
            thousands(s.pending as f64),
            thousands(s.children_max as f64),
            rss.join(" / "),
            cpu.join(" / "),
            probe(s.post),
            probe(s.get),
            s.probe_errors.to_string(),
        ]);
    }
    report.table(
        format!(
            "{scenario}: burst {number} at {instant}, per second after the instant (lag of the runs started in the \
             second; skipped, lost: decided in it; pending: neither started nor decided by its end; children: max of \
             4 Hz samples, all nodes; RSS MiB and CPU cores (own, not children's) per node: {})",
            names.join(" / ")
        ),
        &[
            "s",
            "started",
            "lag p50 ms",
            "lag p99 ms",
            "lag max ms",
            "skipped",
            "lost",
            "failed",
            "pending",
            "children",
            "RSS MiB",
            "CPU",
            "POST p99 ms",
            "GET p99 ms",
            "probe errors",
        ],
        rows,
    );
}

/// The two binaries side by side, burst by burst, with the ratio current / previous.
fn compare(report: &mut Report, args: &BurstArgs, (previous, a): (&String, &Run), (current, b): (&String, &Run)) {
    let mut rows = Vec::new();
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if x > 0.0 => format!("{:.2}×", y / x),
        _ => "–".to_string(),
    };
    let cell = |v: Option<f64>, unit: &str| match v {
        None => "–".to_string(),
        Some(v) if unit.is_empty() => thousands(v),
        Some(v) => format!("{} {unit}", ms(v)),
    };
    for (k, (ia, ib)) in a.instants.iter().zip(&b.instants).enumerate() {
        let (x, y) = (Burst::measure(a, *ia, args.window_secs), Burst::measure(b, *ib, args.window_secs));
        let lines: [(&str, Option<f64>, Option<f64>, &str); 5] = [
            ("lag p99", x.slots.lag.map(|s| s.p99), y.slots.lag.map(|s| s.p99), "ms"),
            (
                "instant → last run started",
                x.last_start_secs.map(|s| s * 1e3),
                y.last_start_secs.map(|s| s * 1e3),
                "ms",
            ),
            ("server CPU per run started", x.server_ms_per_run(), y.server_ms_per_run(), "ms"),
            ("runs started within the window", Some(x.started() as f64), Some(y.started() as f64), ""),
            (
                "skipped with the overload reason",
                Some(x.slots.skipped_overloaded as f64),
                Some(y.slots.skipped_overloaded as f64),
                "",
            ),
        ];
        for (what, x, y, unit) in lines {
            rows.push(vec![format!("burst {}: {what}", k + 1), cell(x, unit), cell(y, unit), ratio(x, y)]);
        }
    }
    report.table(
        format!(
            "burst, {}: {previous} (--previous, run first) and {current} (--kairos), each on fresh nodes",
            where_(args)
        ),
        &["measure", previous.as_str(), current.as_str(), "ratio (current / previous)"],
        rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_instant_leaves_the_margin() {
        assert_eq!(first_instant(at("2026-01-01T00:00:10Z")).unwrap(), at("2026-01-01T00:01:00Z"));
        assert_eq!(first_instant(at("2026-01-01T00:00:55Z")).unwrap(), at("2026-01-01T00:01:00Z"));
        assert_eq!(first_instant(at("2026-01-01T00:00:55.5Z")).unwrap(), at("2026-01-01T00:02:00Z"));
        assert_eq!(first_instant(at("2026-01-01T00:00:00Z")).unwrap(), at("2026-01-01T00:01:00Z"));
    }

    fn exec(instant: Timestamp, status: &str, started_ms: Option<i64>, error: Option<&str>) -> Execution {
        let started_at = started_ms.map(|m| instant + SignedDuration::from_millis(m));
        Execution {
            id: "x".into(),
            node_name: "s".into(),
            scheduled_at: instant,
            started_at,
            finished_at: Some(started_at.unwrap_or(instant + SignedDuration::from_millis(500))),
            status: status.into(),
            output: String::new(),
            attempt: 1,
            trigger: "schedule".into(),
            error: error.map(String::from),
        }
    }

    #[test]
    fn every_slot_of_a_burst_is_counted_once() {
        let t = at("2026-01-01T00:01:00Z");
        let names: Vec<String> = (0..5).map(|i| format!("j{i}")).collect();
        let executions = vec![
            vec![
                exec(t, "succeeded", Some(20), None),
                exec(t - SignedDuration::from_mins(1), "succeeded", Some(5), None),
            ],
            vec![exec(t, "skipped", None, Some("skipped: node 's' is overloaded: 2176 runs …"))],
            vec![exec(t, "lost", None, Some("lease expired"))],
            vec![exec(t, "failed", Some(1_500), None)],
            vec![],
        ];
        let slots = Slots::count(&names, &executions, t);
        assert_eq!((slots.expected, slots.ran, slots.failed, slots.skipped_overloaded), (5, 2, 1, 1));
        assert_eq!((slots.lost, slots.missing), (1, 1));
        assert_eq!(slots.lag.map(|l| l.max), Some(1_500.0));
        assert!(!slots.accounted());
        let fine = Slots::count(&names[..2], &executions[..2], t);
        assert!(fine.accounted(), "{}", fine.describe());
    }
}
