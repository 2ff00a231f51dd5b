//! `kairos-bench`: the benchmark harness of issue 2. It starts a real `kairos` server in a temporary directory,
//! drives it over HTTP on loopback, and reports what it measured as a Markdown table with the date, the machine
//! and the commit. Figures come from one run and are reported, never asserted.
//!
//! The parts:
//! - [`server`]: start, watch and stop one `kairos agent --server` process;
//! - [`client`]: the one HTTP client, bound to that server;
//! - [`procfs`]: CPU and RSS of the server from `/proc`;
//! - [`sink`]: the local HTTP target of the `http` executor;
//! - [`stats`]: percentiles and number formatting;
//! - [`report`]: rows, verdicts against the targets, the Markdown;
//! - the scenarios: [`fire_lag`], [`upserts`], [`million`].

mod client;
mod fire_lag;
mod million;
mod procfs;
mod report;
mod server;
mod sink;
mod stats;
mod upserts;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::fire_lag::{Executor, FireLagArgs};
use crate::million::MillionArgs;
use crate::report::{Machine, Report};
use crate::upserts::UpsertArgs;

#[derive(Parser)]
#[command(name = "kairos-bench", about = "Benchmarks a real Kairos server on this machine")]
struct Cli {
    /// The kairos binary (default: `kairos` next to this executable, i.e. target/release/kairos).
    #[arg(long, global = true)]
    kairos: Option<PathBuf>,
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
    /// Every scenario with the parameters, then BENCHMARKS.md.
    All(AllArgs),
}

#[derive(clap::Args)]
struct AllArgs {
    /// Window of each fire-lag run, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Jobs stored by the million scenario.
    #[arg(long, default_value_t = 1_000_000)]
    million_jobs: usize,
    /// Seconds the million scenario may spend loading before it reports what it stored.
    #[arg(long, default_value_t = 1_800)]
    million_budget_secs: u64,
    /// Where to write the Markdown report (default: BENCHMARKS.md at the workspace root).
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
    let kairos = server::locate_kairos(cli.kairos.as_deref())?;
    println!("kairos binary: {}", kairos.display());
    let mut report = Report::default();
    let output = match cli.scenario {
        Scenario::FireLag(args) => {
            fire_lag::run(&kairos, &args, &mut report).await?;
            None
        }
        Scenario::Upserts(args) => {
            upserts::run(&kairos, &args, &mut report).await?;
            None
        }
        Scenario::Million(args) => {
            million::run(&kairos, &args, &mut report).await?;
            None
        }
        Scenario::All(args) => {
            run_all(&kairos, &args, &mut report).await;
            Some(args.output.unwrap_or_else(|| workspace_root().join("BENCHMARKS.md")))
        }
    };
    let markdown = report.markdown(&Machine::describe(&workspace_root()), &command_line());
    println!("\n{markdown}");
    if let Some(path) = output {
        std::fs::write(&path, markdown).with_context(|| format!("writing {}", path.display()))?;
        println!("written to {}", path.display());
    }
    Ok(())
}

/// The runs in sequence; a scenario that fails becomes a note and the next one still runs.
async fn run_all(kairos: &Path, args: &AllArgs, report: &mut Report) {
    let fire_lag =
        |jobs, executor| FireLagArgs { jobs, seconds: args.seconds, executor, warmup: 2, create_concurrency: 64 };
    for lag in [fire_lag(100, Executor::Shell), fire_lag(1_000, Executor::Shell), fire_lag(10_000, Executor::Http)] {
        if let Err(err) = fire_lag::run(kairos, &lag, report).await {
            report.note(format!("fire lag, {} {:?} jobs failed: {err:#}", lag.jobs, lag.executor));
        }
    }
    let upserts = UpsertArgs { clients: 64, count: 20_000 };
    if let Err(err) = upserts::run(kairos, &upserts, report).await {
        report.note(format!("upserts failed: {err:#}"));
    }
    let million = MillionArgs { jobs: args.million_jobs, chunk: 5_000, load_budget_secs: args.million_budget_secs };
    if let Err(err) = million::run(kairos, &million, report).await {
        report.note(format!("million failed: {err:#}"));
    }
}
