//! `kairos-bench`: the benchmark harness of issue 2. It starts a real `kairos` server in a temporary directory,
//! drives it over HTTP on loopback, and reports what it measured as a Markdown table with the date, the machine
//! and the commit. Figures come from one run and are reported, never asserted.
//!
//! The parts:
//! - [`server`]: start, watch, stop and kill one `kairos agent` process (server or agent-only node);
//! - [`cluster`]: servers and agent-only nodes forming one cluster on loopback (or on a test network, to cut nodes
//!   off);
//! - [`leadership`]: who the servers name leader through a disruption;
//! - [`client`]: the one HTTP client, bound to that server;
//! - [`secure`]: `--secure`, the server with ACL and mutual TLS on, and what its client needs;
//! - [`procfs`]: CPU and RSS of the server from `/proc`;
//! - [`sink`]: the local HTTP target of the `http` executor;
//! - [`stats`]: percentiles and number formatting;
//! - [`report`]: rows, verdicts against the targets, the Markdown;
//! - the scenarios: [`fire_lag`], [`upserts`], [`million`], [`overload`], [`burst`] (also on a cluster), and on a
//!   cluster [`failover`], [`cluster_lag`], [`scale`].

mod burst;
mod client;
mod cluster;
mod cluster_lag;
mod failover;
mod fire_lag;
mod leadership;
mod million;
mod overload;
mod procfs;
mod report;
mod scale;
mod secure;
mod server;
mod sink;
mod stats;
mod upserts;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::burst::BurstArgs;
use crate::cluster_lag::ClusterLagArgs;
use crate::failover::{Disruption, FailoverArgs};
use crate::fire_lag::{Executor, FireLagArgs};
use crate::million::MillionArgs;
use crate::overload::OverloadArgs;
use crate::report::{Machine, Report};
use crate::scale::ScaleArgs;
use crate::server::Launcher;
use crate::upserts::UpsertArgs;

#[derive(Parser)]
#[command(name = "kairos-bench", about = "Benchmarks a real Kairos server on this machine")]
struct Cli {
    /// The kairos binary (default: `kairos` next to this executable, i.e. target/release/kairos).
    #[arg(long, global = true)]
    kairos: Option<PathBuf>,
    /// What the kairos binary was built from, for the report (default: this workspace's commit and whether
    /// tracked files differ from it).
    #[arg(long, global = true)]
    revision: Option<String>,
    /// Keep the servers' logs in this directory (one file per server) instead of discarding them.
    #[arg(long, global = true)]
    log_dir: Option<PathBuf>,
    /// Tracing filter for the servers (their KAIROS_LOG), e.g. `warn,kairos=debug`; default `--log-level warn`.
    #[arg(long, global = true)]
    server_log: Option<String>,
    /// Before each scenario, wait up to this many seconds for the machine to be nearly idle (other work skews
    /// every figure); 0 does not wait.
    #[arg(long, global = true, default_value_t = 120)]
    quiet_wait_secs: u64,
    /// After a single scenario, also write its results into this file (e.g. BENCHMARKS.md) as a section of their
    /// own, replacing the section an earlier run of the same scenario wrote and keeping the rest of the file.
    #[arg(long, global = true)]
    into: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N jobs firing every second: lag between slot and start, slots executed, CPU and RSS.
    FireLag(FireLagArgs),
    /// Concurrent clients creating, then updating, distinct jobs.
    Upserts(UpsertArgs),
    /// RSS and restart time with many stored jobs.
    Million(MillionArgs),
    /// Past capacity: find it, run at 2x capacity, then at half of it; lag, skips, children, RSS, API latency.
    Overload(OverloadArgs),
    /// N jobs all due at one instant (`0 * * * * *`), on one node or (`--cluster`) 3 servers + 2 agents: runs,
    /// lag, skips, children, RSS, CPU and API latency per second after each instant; `--previous BIN` for an A/B.
    Burst(BurstArgs),
    /// 3 servers, N jobs every second, kill -9 of the leader (or, `--scenario`, a network partition): time to a new
    /// leader and to the next run, slots lost and duplicated, leader changes after a heal.
    Failover(FailoverArgs),
    /// 3 servers + 2 agent-only nodes, N tagged jobs every second run on the agents: lag and runs per agent.
    ClusterLag(ClusterLagArgs),
    /// 3 servers + N agents (issue 19): base jobs every second, 4× as many for a while, back to base; the slots
    /// of each phase, CPU, RSS, and how long until the cluster is healthy again.
    Scale(ScaleArgs),
    /// Every scenario with the parameters, then BENCHMARKS.md.
    All(AllArgs),
}

#[derive(clap::Args)]
struct AllArgs {
    /// Window of each fire-lag run, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Length of an extra run of 1,000 shell jobs at the server's default retention (100 executions per job, so
    /// pruning runs as in production), to see whether RSS stays flat under sustained load; 0 skips it.
    #[arg(long, default_value_t = 120)]
    sustained_seconds: u64,
    /// Jobs stored by the million scenario.
    #[arg(long, default_value_t = 1_000_000)]
    million_jobs: usize,
    /// Seconds the million scenario may spend loading before it reports what it stored.
    #[arg(long, default_value_t = 1_800)]
    million_budget_secs: u64,
    /// Where to write the Markdown report (default: BENCHMARKS.md at the workspace root). A hand-written
    /// `## Analysis` section already in that file is kept after the regenerated part.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn workspace_root() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).to_path_buf()
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo run --release -p kairos-bench -- {}", args.join(" "))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let binary = server::locate_kairos(cli.kairos.as_deref())?;
    println!("kairos binary: {}", binary.display());
    if let Some(dir) = &cli.log_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The tree as the run starts (the binary was built before it), not as it ends: others may commit meanwhile.
    let tree = Machine::describe(&workspace_root()).commit;
    let kairos = Launcher { binary, log_dir: cli.log_dir, log_filter: cli.server_log };
    let mut report = Report::default();
    let quiet = Quiet { budget: Duration::from_secs(cli.quiet_wait_secs) };
    // What to write where: the whole document (`all`), or one section (a single scenario with `--into`).
    let (output, section) = match cli.scenario {
        Scenario::FireLag(args) => {
            quiet.wait(&mut report, "fire lag").await;
            fire_lag::run(&kairos, &args, &mut report).await?;
            (cli.into, Some("Fire lag (single run)".to_string()))
        }
        Scenario::Upserts(args) => {
            quiet.wait(&mut report, "upserts").await;
            upserts::run(&kairos, &args, &mut report).await?;
            (cli.into, Some("Upserts (single run)".to_string()))
        }
        Scenario::Million(args) => {
            quiet.wait(&mut report, "stored jobs").await;
            million::run(&kairos, &args, &mut report).await?;
            (cli.into, Some("Stored jobs (single run)".to_string()))
        }
        Scenario::Overload(args) => {
            quiet.wait(&mut report, "overload").await;
            overload::run(&kairos, &args, &mut report).await?;
            // One section per binary, so runs of two binaries sit side by side in one file.
            let binary = kairos.binary.file_name().map_or("kairos".into(), |n| n.to_string_lossy().into_owned());
            (cli.into, Some(format!("Overload: {binary}")))
        }
        Scenario::Burst(args) => {
            quiet.wait(&mut report, "burst").await;
            burst::run(&kairos, &args, &mut report).await?;
            (cli.into, Some(burst::section_title(&args)))
        }
        Scenario::Failover(args) => {
            quiet.wait(&mut report, "failover").await;
            failover::run(&kairos, &args, &mut report).await?;
            (cli.into, Some(failover::section_title(&args).to_string()))
        }
        Scenario::ClusterLag(args) => {
            quiet.wait(&mut report, "cluster fire lag").await;
            cluster_lag::run(&kairos, &args, &mut report).await?;
            (cli.into, Some("Cluster: fire lag on agent-only nodes".to_string()))
        }
        Scenario::Scale(args) => {
            quiet.wait(&mut report, "scale").await;
            scale::run(&kairos, &args, &mut report).await?;
            (cli.into, Some("Cluster: scale and recovery".to_string()))
        }
        Scenario::All(args) => {
            run_all(&kairos, &args, &quiet, &mut report).await;
            (Some(args.output.unwrap_or_else(|| workspace_root().join("BENCHMARKS.md"))), None)
        }
    };
    let mut machine = Machine::describe(&workspace_root());
    machine.commit = cli.revision.unwrap_or(tree);
    let command = command_line();
    let markdown = match &section {
        Some(title) => report.section(title, &machine, &command),
        None => report.markdown(&machine, &command),
    };
    println!("\n{markdown}");
    if let Some(path) = output {
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        let text = match &section {
            Some(title) => report::merge_section(&existing, title, &markdown),
            None => report::keep_analysis(&existing, &markdown),
        };
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("written to {}", path.display());
    }
    Ok(())
}

/// The runs in sequence; a scenario that fails becomes a note and the next one still runs.
async fn run_all(kairos: &Launcher, args: &AllArgs, quiet: &Quiet, report: &mut Report) {
    let fire_lag = |jobs, executor| FireLagArgs {
        jobs,
        seconds: args.seconds,
        executor,
        warmup: 2,
        create_concurrency: 64,
        retained: None,
        secure: false,
        notify_slow_ms: None,
    };
    let mut runs =
        vec![fire_lag(100, Executor::Shell), fire_lag(1_000, Executor::Shell), fire_lag(10_000, Executor::Http)];
    if args.sustained_seconds > 0 {
        runs.push(FireLagArgs {
            seconds: args.sustained_seconds,
            retained: Some(100),
            ..fire_lag(1_000, Executor::Shell)
        });
    }
    for lag in runs {
        quiet.wait(report, "fire lag").await;
        if let Err(err) = fire_lag::run(kairos, &lag, report).await {
            report.note(format!("fire lag, {} {:?} jobs failed: {err:#}", lag.jobs, lag.executor));
        }
    }
    let upserts = UpsertArgs { clients: 64, count: 20_000, secure: false };
    quiet.wait(report, "upserts").await;
    if let Err(err) = upserts::run(kairos, &upserts, report).await {
        report.note(format!("upserts failed: {err:#}"));
    }
    let million = MillionArgs { jobs: args.million_jobs, chunk: 5_000, load_budget_secs: args.million_budget_secs };
    quiet.wait(report, "stored jobs").await;
    if let Err(err) = million::run(kairos, &million, report).await {
        report.note(format!("million failed: {err:#}"));
    }
    let burst = BurstArgs {
        jobs: 5_000,
        bursts: 2,
        command: "date".to_string(),
        cluster: false,
        window_secs: 45,
        probe_rate: 5,
        sigterm_into_burst_secs: 1,
        previous: None,
        server_args: Vec::new(),
    };
    quiet.wait(report, "burst").await;
    if let Err(err) = burst::run(kairos, &burst, report).await {
        report.note(format!("burst failed: {err:#}"));
    }
    let failover = FailoverArgs {
        scenarios: vec![Disruption::Kill],
        trials: 10,
        jobs: 100,
        before_secs: 5,
        cut_secs: 10,
        after_secs: 6,
    };
    quiet.wait(report, "failover").await;
    if let Err(err) = failover::run(kairos, &failover, report).await {
        report.note(format!("failover failed: {err:#}"));
    }
    let cluster_lag =
        ClusterLagArgs { jobs: vec![100, 1_000], seconds: args.seconds, warmup: 2, every_agent: vec![100] };
    quiet.wait(report, "cluster fire lag").await;
    if let Err(err) = cluster_lag::run(kairos, &cluster_lag, report).await {
        report.note(format!("cluster fire lag failed: {err:#}"));
    }
}

/// Waiting for a quiet machine before a scenario: the harness cannot stop other work, only wait for it (bounded)
/// and say when it did not end.
struct Quiet {
    budget: Duration,
}

impl Quiet {
    /// Busy cores (all processes) below which the machine counts as quiet.
    const BUSY_CORES_MAX: f64 = 0.3;

    async fn wait(&self, report: &mut Report, scenario: &str) {
        if self.budget.is_zero() {
            return;
        }
        match procfs::wait_for_quiet(self.budget, Self::BUSY_CORES_MAX).await {
            Ok((_, true)) => {}
            Ok((busy, false)) => report.note(format!(
                "{scenario}: the machine was still busy ({busy:.2} cores used by other processes) after waiting \
                 {:?}; the figures of this scenario are skewed by that load",
                self.budget
            )),
            Err(err) => report.note(format!("{scenario}: cannot read the machine's load: {err:#}")),
        }
    }
}
