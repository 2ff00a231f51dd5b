//! A million jobs: store N `@manually` jobs through `POST /v1/restore` in chunks, measure the load and the RSS,
//! then SIGTERM the server, start it again on the same data directory, and time how long it takes until
//! `GET /v1/jobs?_end=1` answers 200 with `X-Total-Count` = N.
//!
//! When loading all N would take longer than the budget, the run stops at the largest N that fitted and the
//! report extrapolates to the target's million, labelled as such.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::procfs::rss_bytes;
use crate::report::{Report, at_most};
use crate::server::{Launcher, Server, ServerSpec, Stopped, log_problems};
use crate::stats::{mib, ms, summarize, thousands};

const TARGET_JOBS: usize = 1_000_000;
const RSS_MAX_BYTES: u64 = 1 << 30;
const RESTART_MAX_SECS: f64 = 10.0;
/// From restart to a complete job listing, at most this long.
const RESTART_BUDGET: Duration = Duration::from_secs(900);
/// One listing of every job may take this long.
const LISTING_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, clap::Args)]
pub struct MillionArgs {
    /// Jobs to store.
    #[arg(long, default_value_t = TARGET_JOBS)]
    pub jobs: usize,
    /// Jobs per `POST /v1/restore`.
    #[arg(long, default_value_t = 5_000)]
    pub chunk: usize,
    /// Stop loading after this many seconds and report what was stored (with an extrapolation).
    #[arg(long, default_value_t = 1_800)]
    pub load_budget_secs: u64,
}

/// One job firing every second among the stored ones: its first run after the restart shows when the scheduler
/// is back at work, which a listing alone does not.
const PROBE_JOB: &str = "m-probe-every-second";

pub async fn run(launcher: &Launcher, args: &MillionArgs, report: &mut Report) -> anyhow::Result<()> {
    let scenario = format!("{} stored jobs", thousands(args.jobs as f64));
    println!("== {scenario}");
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut spec = launcher.spec(dir.path(), &format!("stored-{}", args.jobs));
    let server = Server::spawn(&spec).await?;
    server.wait_leader(Duration::from_secs(60)).await?;
    let rss_idle = rss_bytes(server.pid)?;

    let load = load(&server, args).await;
    let loaded = load.loaded;
    report.row(
        &scenario,
        "jobs stored (POST /v1/restore), all @manually",
        format!(
            "{} of {} in {:.1} s = {} jobs/s; one chunk of {}: {}",
            thousands(loaded as f64),
            thousands(args.jobs as f64),
            load.took.as_secs_f64(),
            thousands(loaded as f64 / load.took.as_secs_f64().max(1e-3)),
            thousands(args.chunk as f64),
            load.chunk_summary()
        ),
    );
    if let Some(why) = &load.stopped_because {
        report.note(format!("{scenario}: loading stopped at {loaded} jobs: {why}"));
    }
    let probe = serde_json::json!({
        "name": PROBE_JOB, "schedule": "* * * * * *", "executor": "shell",
        "executor_config": {"command": "true"}, "executions_retained": 20,
    });
    server.api.post_json("/v1/jobs", probe.to_string()).await.context("creating the probe job")?;
    let expected = loaded as u64 + 1;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_loaded = rss_bytes(server.pid)?;
    let listing = Instant::now();
    let counted = server.api.job_count(LISTING_TIMEOUT).await;
    let listing_took = listing.elapsed();
    let rss_listed = rss_bytes(server.pid)?;
    report.target(
        &scenario,
        "RSS idle → after load → after one GET /v1/jobs?_end=1",
        format!("{} → {} → {}", mib(rss_idle), mib(rss_loaded), mib(rss_listed)),
        "≤ 1 GiB at 1,000,000",
        rss_verdict(loaded, rss_loaded.max(rss_listed)),
    );
    report.row(
        &scenario,
        "GET /v1/jobs?_end=1 after load (+1 probe job firing every second)",
        format!(
            "{} ms, X-Total-Count {}",
            ms(listing_took.as_secs_f64() * 1e3),
            counted.as_ref().map_or_else(|e| format!("error: {e:#}"), |c| c.to_string())
        ),
    );
    report.row(&scenario, "data directory on disk", mib(dir_bytes(&spec.data_dir)));
    let problems = log_problems(&spec.log_path, 3);
    report.row(&scenario, "SIGTERM to exit", stop_text(&server.stop().await?));

    spec.log_path = launcher.spec(dir.path(), &format!("stored-{}-restart", args.jobs)).log_path;
    let restart = restart(&spec, expected).await?;
    report_restart(report, &scenario, loaded, &restart);
    if loaded < TARGET_JOBS && loaded > 0 {
        extrapolate(report, &scenario, loaded, rss_idle, rss_loaded, &load, &restart);
    }
    for (count, first) in [problems, log_problems(&spec.log_path, 3)] {
        if count > 0 {
            report
                .note(format!("{scenario}: the server logged {count} warnings/errors, first: {}", first.join(" // ")));
        }
    }
    Ok(())
}

fn stop_text(stopped: &Stopped) -> String {
    format!(
        "{:.1} s ({}{})",
        stopped.took.as_secs_f64(),
        stopped.status,
        if stopped.killed { ", needed SIGKILL" } else { "" }
    )
}

fn report_restart(report: &mut Report, scenario: &str, loaded: usize, restart: &Restart) {
    report.target(
        scenario,
        "restart: spawn → listening → leader → full listing",
        format!(
            "{:.2} s → {:.2} s → {:.2} s ({})",
            restart.listening.as_secs_f64(),
            restart.leader.as_secs_f64(),
            restart.listed.as_secs_f64(),
            restart.listed_count
        ),
        "≤ 10 s at 1,000,000",
        restart_verdict(loaded, restart.listed.as_secs_f64()),
    );
    report.row(
        scenario,
        "restart: spawn → the probe job runs again",
        restart.probe_ran.map_or("never, within the budget".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
    );
    report.target(
        scenario,
        "RSS after restart: leader → after listing → after the probe ran",
        format!("{} → {} → {}", mib(restart.rss_leader), mib(restart.rss_listed), mib(restart.rss_probe_ran)),
        "≤ 1 GiB at 1,000,000",
        rss_verdict(loaded, restart.rss_leader.max(restart.rss_listed).max(restart.rss_probe_ran)),
    );
    report.row(scenario, "SIGTERM to exit after the restart", stop_text(&restart.stopped));
}

fn rss_verdict(jobs: usize, rss: u64) -> String {
    if jobs >= TARGET_JOBS {
        at_most(rss as f64, RSS_MAX_BYTES as f64)
    } else {
        format!("n/a at {} jobs (see extrapolation)", thousands(jobs as f64))
    }
}

fn restart_verdict(jobs: usize, secs: f64) -> String {
    if jobs >= TARGET_JOBS {
        at_most(secs, RESTART_MAX_SECS)
    } else {
        format!("n/a at {} jobs (see extrapolation)", thousands(jobs as f64))
    }
}

/// Linear extrapolation from the jobs that were stored to the target's million, labelled as such.
fn extrapolate(
    report: &mut Report,
    scenario: &str,
    loaded: usize,
    rss_idle: u64,
    rss_loaded: u64,
    load: &Load,
    restart: &Restart,
) {
    let factor = TARGET_JOBS as f64 / loaded as f64;
    let label = format!("EXTRAPOLATED linearly from {}", thousands(loaded as f64));
    let rss = rss_idle as f64 + (rss_loaded.saturating_sub(rss_idle)) as f64 * factor;
    report.target(
        scenario,
        &format!("RSS after load at 1,000,000 ({label})"),
        mib(rss as u64),
        "≤ 1 GiB",
        at_most(rss, RSS_MAX_BYTES as f64),
    );
    let restart_secs = restart.listed.as_secs_f64() * factor;
    report.target(
        scenario,
        &format!("restart at 1,000,000 ({label})"),
        format!("{restart_secs:.1} s"),
        "≤ 10 s",
        at_most(restart_secs, RESTART_MAX_SECS),
    );
    report.row(
        scenario,
        &format!("load time at 1,000,000 ({label})"),
        format!("{:.0} s", load.took.as_secs_f64() * factor),
    );
}

struct Load {
    loaded: usize,
    took: Duration,
    chunk_ms: Vec<f64>,
    stopped_because: Option<String>,
}

impl Load {
    fn chunk_summary(&self) -> String {
        let first = self.chunk_ms.first().copied().unwrap_or(0.0);
        let last = self.chunk_ms.last().copied().unwrap_or(0.0);
        let all = summarize(self.chunk_ms.clone()).map_or(String::new(), |s| s.to_string());
        format!("{all} (first {} ms, last {} ms)", ms(first), ms(last))
    }
}

fn chunk_json(from: usize, to: usize) -> String {
    let mut body = String::with_capacity((to - from) * 110 + 2);
    body.push('[');
    for i in from..to {
        if i > from {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"name":"m-{i:07}","schedule":"@manually","executor":"shell","executor_config":{{"command":"true"}}}}"#
        ));
    }
    body.push(']');
    body
}

/// Restore chunk after chunk until every job is stored, a chunk fails, or the budget is spent.
async fn load(server: &Server, args: &MillionArgs) -> Load {
    let start = Instant::now();
    let budget = Duration::from_secs(args.load_budget_secs);
    let chunk = args.chunk.max(1);
    let mut load = Load {
        loaded: 0,
        took: Duration::ZERO,
        chunk_ms: Vec::with_capacity(args.jobs / chunk + 1),
        stopped_because: None,
    };
    while load.loaded < args.jobs {
        if start.elapsed() > budget {
            load.stopped_because = Some(format!("the load budget of {budget:?} was spent"));
            break;
        }
        let to = (load.loaded + chunk).min(args.jobs);
        match server.api.post_json("/v1/restore", chunk_json(load.loaded, to)).await {
            Ok(took) => {
                load.chunk_ms.push(took.as_secs_f64() * 1e3);
                load.loaded = to;
            }
            Err(err) => {
                load.stopped_because = Some(format!("{err:#}"));
                break;
            }
        }
        if load.chunk_ms.len().is_multiple_of(20) {
            println!(
                "  … {} jobs in {:.0} s, RSS {}",
                thousands(load.loaded as f64),
                start.elapsed().as_secs_f64(),
                rss_bytes(server.pid).map_or("?".to_string(), mib)
            );
        }
    }
    load.took = start.elapsed();
    load
}

struct Restart {
    listening: Duration,
    leader: Duration,
    listed: Duration,
    listed_count: String,
    probe_ran: Option<Duration>,
    rss_leader: u64,
    rss_listed: u64,
    rss_probe_ran: u64,
    stopped: Stopped,
}

/// Start the server on the stored data and time it to listening, to leading, to a listing of every job, and to
/// the probe job's first run; then stop it.
async fn restart(spec: &ServerSpec, expected: u64) -> anyhow::Result<Restart> {
    let spawned_wall = jiff::Timestamp::now();
    let server = Server::spawn(spec).await?;
    let listening = server.listening_at - server.spawned_at;
    server.wait_leader(RESTART_BUDGET).await?;
    let leader = server.spawned_at.elapsed();
    let rss_leader = rss_bytes(server.pid)?;
    let deadline = server.spawned_at + RESTART_BUDGET;
    let mut listed_count = "never listed every job".to_string();
    while Instant::now() < deadline {
        match server.api.job_count(LISTING_TIMEOUT).await {
            Ok(count) if count == expected => {
                listed_count = format!("X-Total-Count {count}");
                break;
            }
            Ok(count) => listed_count = format!("X-Total-Count {count}, expected {expected}"),
            Err(err) => listed_count = format!("{err:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = server.spawned_at.elapsed();
    let rss_listed = rss_bytes(server.pid)?;
    let mut probe_ran = None;
    while probe_ran.is_none() && Instant::now() < deadline {
        let executions = server.api.executions(PROBE_JOB, 1).await.unwrap_or_default();
        if executions.iter().any(|e| e.started_at.is_some_and(|t| t >= spawned_wall)) {
            probe_ran = Some(server.spawned_at.elapsed());
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let rss_probe_ran = rss_bytes(server.pid)?;
    let stopped = server.stop().await?;
    Ok(Restart { listening, leader, listed, listed_count, probe_ran, rss_leader, rss_listed, rss_probe_ran, stopped })
}

/// Bytes of the files under a directory (bounded depth: the data dir is shallow).
fn dir_bytes(path: &Path) -> u64 {
    fn walk(path: &Path, depth: u32) -> u64 {
        let Ok(entries) = std::fs::read_dir(path) else {
            return 0;
        };
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(m) if m.is_dir() && depth < 8 => walk(&entry.path(), depth + 1),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(path, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_json_arrays_of_distinct_jobs() {
        let body = chunk_json(5, 8);
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0]["name"], "m-0000005");
        assert_eq!(jobs[2]["name"], "m-0000007");
        assert_eq!(jobs[1]["schedule"], "@manually");
    }
}
