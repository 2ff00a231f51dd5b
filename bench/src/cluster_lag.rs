//! Fire lag in a cluster: 3 servers and 2 agent-only nodes tagged `pool=agents`; N shell jobs firing every second,
//! tagged `{"pool": "agents:1"}` so each slot runs once, on one of the agents; and N jobs tagged `{"pool":
//! "agents"}` (Dkron's semantics: every matching node), so each slot runs on both agents, as two copies. The measurement is the single-node fire-lag one
//! (see [`crate::fire_lag`]): a window of whole seconds after a warm-up, every execution of the window read back
//! from the leader, `started_at − scheduled_at` and the lag the process itself saw; plus which node ran each slot
//! and the CPU of every node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use jiff::Timestamp;

use crate::cluster::{Cluster, Layout};
use crate::fire_lag::{self, Executor, FireLagArgs, JobBody, Slots, Window};
use crate::procfs::ProcessesMeter;
use crate::report::Report;
use crate::server::{Launcher, describe_kinds};
use crate::stats::thousands;

pub(crate) const SERVERS: usize = 3;
pub(crate) const AGENTS: usize = 2;
pub(crate) const POOL_TAG: (&str, &str) = ("pool", "agents");
/// How long a fresh cluster may take to elect a leader and see every node alive.
pub(crate) const FORM_BUDGET: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterLagArgs {
    /// Numbers of jobs, one run (on a fresh cluster) each, e.g. `100,1000`.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1_000])]
    pub jobs: Vec<usize>,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Seconds after the last job is created before the window opens.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Numbers of jobs tagged to run on every agent (Dkron's tags without a count: one copy of each slot per
    /// agent), one run each; `0` for none.
    #[arg(long, value_delimiter = ',', default_values_t = [100])]
    pub every_agent: Vec<usize>,
}

pub async fn run(launcher: &Launcher, args: &ClusterLagArgs, report: &mut Report) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let runs: Vec<(usize, Placement)> = (args.jobs.iter().map(|&n| (n, Placement::OneAgent)))
        .chain(args.every_agent.iter().map(|&n| (n, Placement::EveryAgent)))
        .filter(|(n, _)| *n > 0)
        .collect();
    let total = runs.len();
    for (jobs, placement) in runs {
        let lag = FireLagArgs {
            jobs,
            seconds: args.seconds,
            executor: Executor::Shell,
            warmup: args.warmup,
            create_concurrency: 64,
            retained: None,
            secure: false,
            notify_slow_ms: None,
        };
        if let Err(err) = run_one(launcher, &lag, placement, report).await {
            report.note(format!("cluster fire lag, {jobs} shell jobs {} failed: {err:#}", placement.describe()));
            failed.push(jobs);
        }
    }
    if failed.len() == total {
        anyhow::bail!("every run failed");
    }
    Ok(())
}

/// Where each slot of the jobs runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Placement {
    /// `pool: agents:1`: once, on one of the agents.
    OneAgent,
    /// `pool: agents`: once on every agent (the leader commits one copy per agent first).
    EveryAgent,
}

impl Placement {
    fn describe(self) -> &'static str {
        match self {
            Placement::OneAgent => "on the agents",
            Placement::EveryAgent => "on every agent",
        }
    }

    fn copies(self) -> u64 {
        match self {
            Placement::OneAgent => 1,
            Placement::EveryAgent => AGENTS as u64,
        }
    }

    pub(crate) fn tag_value(self) -> String {
        match self {
            Placement::OneAgent => format!("{}:1", POOL_TAG.1),
            Placement::EveryAgent => POOL_TAG.1.to_string(),
        }
    }
}

async fn run_one(
    launcher: &Launcher,
    args: &FireLagArgs,
    placement: Placement,
    report: &mut Report,
) -> anyhow::Result<()> {
    let scenario = format!(
        "cluster fire lag, {SERVERS} servers + {AGENTS} agents, {} shell jobs {}, {} s",
        thousands(args.jobs as f64),
        placement.describe(),
        args.seconds
    );
    println!("== {scenario} window");
    let retained = fire_lag::retained(args)?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let layout = Layout {
        servers: SERVERS,
        agents: AGENTS,
        agent_tags: vec![format!("{}={}", POOL_TAG.0, POOL_TAG.1)],
        log_prefix: format!("cluster-lag-{}", args.jobs),
    };
    let started = Instant::now();
    let cluster = Cluster::start(launcher, dir.path(), &layout).await?;
    let leader = cluster.wait_ready(FORM_BUDGET).await?;
    report.row(
        &scenario,
        "cluster formed (spawn → leader named by all, 5 members alive)",
        format!("{:.1} s, leader {leader}", started.elapsed().as_secs_f64()),
    );
    let api = cluster.leader_api(FORM_BUDGET).await?;
    let tags = BTreeMap::from([(POOL_TAG.0.to_string(), placement.tag_value())]);
    let body = JobBody { sink: None, retained, tags, broker: None };
    let created = fire_lag::create_jobs(&api, args, &body).await?;
    report.row(&scenario, "jobs created on the leader (64 concurrent POST /v1/jobs)", created.describe());
    if let Some(error) = &created.first_error {
        report.note(format!("{scenario}: {} of {} job creations failed; first: {error}", created.errors, args.jobs));
    }

    let window = Window::after(Timestamp::now(), args.warmup, args.seconds);
    fire_lag::sleep_until(window.start()).await;
    let meter = ProcessesMeter::start(&cluster.pids())?;
    fire_lag::sleep_until(window.end()).await;
    let (cpu, machine_busy) = meter.finish()?;
    let unsettled = fire_lag::settle(&api, &created.names, window).await;
    let jobs = fire_lag::read_executions(&api, &created.names, retained).await?;
    let slots = Slots::count(&jobs, window, retained);
    fire_lag::report_slots(
        report,
        &scenario,
        args,
        &slots,
        created.names.len() as u64 * window.seconds * placement.copies(),
        window.seconds,
    );
    report.row(&scenario, "slots run, by node", by_node(&slots, &cluster.agent_names));
    let cpu: Vec<String> = cpu
        .iter()
        .map(|p| {
            let role = if p.name == leader { " (leader)" } else { "" };
            if p.children_cores >= 0.005 {
                format!("{}{role} {:.2} + children {:.2}", p.name, p.own_cores, p.children_cores)
            } else {
                format!("{}{role} {:.2}", p.name, p.own_cores)
            }
        })
        .collect();
    report.row(
        &scenario,
        "CPU during the window, cores per node",
        format!("{} (machine {:.0} % busy)", cpu.join(" · "), machine_busy * 100.0),
    );
    if let Some(unsettled) = unsettled {
        report.note(format!("{scenario}: {unsettled}"));
    }
    if slots.read_errors > 0 {
        report.note(format!("{scenario}: reading executions failed for {} jobs", slots.read_errors));
    }
    let elsewhere: u64 =
        slots.nodes.iter().filter(|(node, _)| !cluster.agent_names.contains(node)).map(|(_, n)| *n).sum();
    if elsewhere > 0 {
        report.note(format!(
            "{scenario}: {elsewhere} runs of jobs tagged {}={} ran on nodes without that tag",
            POOL_TAG.0, POOL_TAG.1
        ));
    }
    if let Some(problems) = describe_kinds(&cluster.log_problems(), 6) {
        report.note(format!("{scenario}: the nodes logged {problems}"));
    }
    for (name, stopped) in cluster.stop().await {
        stopped.with_context(|| format!("stopping {name}"))?;
    }
    Ok(())
}

/// `a0 1,000 (50.0 %) · a1 1,000 (50.0 %)`, every agent listed (with 0 if it ran nothing), other nodes after them.
fn by_node(slots: &Slots, agents: &[String]) -> String {
    let total = slots.nodes.values().sum::<u64>().max(1) as f64;
    let mut nodes: Vec<(String, u64)> = agents.iter().map(|a| (a.clone(), 0)).collect();
    for (node, count) in &slots.nodes {
        match nodes.iter_mut().find(|(n, _)| n == node) {
            Some(entry) => entry.1 = *count,
            None => nodes.push((if node.is_empty() { "(none)".to_string() } else { node.clone() }, *count)),
        }
    }
    let parts: Vec<String> = nodes
        .iter()
        .map(|(node, count)| format!("{node} {} ({:.1} %)", thousands(*count as f64), 100.0 * *count as f64 / total))
        .collect();
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_agent_and_strangers_after_them() {
        let slots = Slots { nodes: BTreeMap::from([("a1".to_string(), 3), ("s0".to_string(), 1)]), ..Slots::default() };
        let text = by_node(&slots, &["a0".to_string(), "a1".to_string()]);
        assert_eq!(text, "a0 0 (0.0 %) · a1 3 (75.0 %) · s0 1 (25.0 %)");
    }
}
