//! Upserts: many clients POST distinct `@manually` jobs (creates), then POST them all again (updates); each
//! phase reports upserts per second and the latency of one request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::Api;
use crate::procfs::{CpuMeter, rss_bytes};
use crate::report::{Report, at_least};
use crate::secure::Secure;
use crate::server::{Launcher, Server, log_problems};
use crate::stats::{mib, summarize, thousands};

/// One phase may not take longer than this; clients stop taking work when it is over.
const PHASE_BUDGET: Duration = Duration::from_secs(900);
const UPSERTS_TARGET_PER_SEC: f64 = 10_000.0;

#[derive(Debug, Clone, clap::Args)]
pub struct UpsertArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Distinct jobs; each is created once and updated once.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Start the server with ACL, gossip encryption and mutual TLS on (see `secure.rs`): the harness makes the
    /// certificates, bootstraps the ACL and talks HTTPS with the management token.
    #[arg(long)]
    pub secure: bool,
}

pub async fn run(launcher: &Launcher, args: &UpsertArgs, report: &mut Report) -> anyhow::Result<()> {
    let mut scenario = format!("upserts, {} clients", args.clients);
    if args.secure {
        scenario.push_str(", ACL + TLS");
    }
    println!("== {scenario}, {} jobs", thousands(args.count as f64));
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut spec = launcher.spec(dir.path(), "upserts");
    if args.secure {
        spec = spec.secure(&Secure::make(&launcher.binary, &dir.path().join("pki"))?);
    }
    let log_path = spec.log_path.clone();
    let server = Server::spawn(&spec).await?;
    server.wait_leader(Duration::from_secs(60)).await?;
    for (phase, revision) in [("create", 1), ("update", 2)] {
        let meter = CpuMeter::start(server.pid)?;
        let outcome = phase_run(&server.api, args, revision).await;
        let cpu = meter.finish()?;
        let rate = outcome.done as f64 / outcome.took.as_secs_f64().max(1e-3);
        report.target(
            &scenario,
            &format!("{phase}: upserts/s"),
            format!(
                "{} ({} in {:.1} s, {} errors)",
                thousands(rate),
                thousands(outcome.done as f64),
                outcome.took.as_secs_f64(),
                outcome.errors
            ),
            "≥ 10,000/s",
            at_least(rate, UPSERTS_TARGET_PER_SEC),
        );
        if let Some(s) = summarize(outcome.latency_ms) {
            // The issue asks for p99 latency but sets no bound on it.
            report.row(&scenario, &format!("{phase}: latency of one POST"), s.to_string());
        }
        report.row(&scenario, &format!("{phase}: CPU"), cpu.to_string());
        if let Some(error) = outcome.first_error {
            report.note(format!("{scenario}, {phase}: first error: {error}"));
        }
    }
    report.row(&scenario, "RSS after both phases", mib(rss_bytes(server.pid)?));
    let (count, first) = log_problems(&log_path, 3);
    if count > 0 {
        report.note(format!("{scenario}: the server logged {count} warnings/errors, first: {}", first.join(" // ")));
    }
    server.stop().await?;
    Ok(())
}

struct PhaseOutcome {
    done: usize,
    errors: usize,
    first_error: Option<String>,
    latency_ms: Vec<f64>,
    took: Duration,
}

fn job_json(i: usize, revision: u32) -> String {
    serde_json::json!({
        "name": format!("upsert-{i:07}"),
        "displayname": format!("upsert {i} revision {revision}"),
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": "true"},
    })
    .to_string()
}

/// `clients` tasks take job indices from one counter until `count` is reached or the budget is spent.
async fn phase_run(api: &Api, args: &UpsertArgs, revision: u32) -> PhaseOutcome {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + PHASE_BUDGET;
    let mut tasks = Vec::with_capacity(args.clients);
    for _ in 0..args.clients.max(1) {
        let api = api.clone();
        let next = next.clone();
        let count = args.count;
        tasks.push(tokio::spawn(async move {
            let mut latency_ms = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || Instant::now() > deadline {
                    break;
                }
                match api.post_json("/v1/jobs", job_json(i, revision)).await {
                    Ok(took) => latency_ms.push(took.as_secs_f64() * 1e3),
                    Err(err) => errors.push(format!("{err:#}")),
                }
            }
            (latency_ms, errors)
        }));
    }
    let mut outcome = PhaseOutcome {
        done: 0,
        errors: 0,
        first_error: None,
        latency_ms: Vec::with_capacity(args.count),
        took: Duration::ZERO,
    };
    for task in tasks {
        match task.await {
            Ok((latency, errors)) => {
                outcome.done += latency.len();
                outcome.latency_ms.extend(latency);
                outcome.errors += errors.len();
                if outcome.first_error.is_none() {
                    outcome.first_error = errors.into_iter().next();
                }
            }
            Err(err) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(format!("client task: {err}"));
            }
        }
    }
    outcome.took = start.elapsed();
    outcome
}
