//! Fire lag: N jobs on `* * * * * *`, left to run for a window of whole seconds after a warm-up; then every
//! execution whose slot lies in the window is read back and compared with its slot.
//!
//! Measured: `started_at − scheduled_at` (the scheduler's decision plus dispatch), for the shell executor also the
//! instant the process itself saw (`date +%s.%N`) minus the slot, slots executed against slots expected
//! (N × window seconds, each (job, slot) counted once, duplicates apart), failures, the server's CPU and RSS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use jiff::Timestamp;

use crate::client::{Api, Execution};
use crate::procfs::{CpuMeter, CpuUse, listen_overflows, rss_bytes};
use crate::report::{Report, at_least, at_most};
use crate::secure::Secure;
use crate::server::{Launcher, Server, ServerSpec, Stopped, log_problems};
use crate::sink::Sink;
use crate::stats::{mib, summarize, thousands};

/// Creating the jobs may not take longer than this.
const CREATE_BUDGET: Duration = Duration::from_secs(900);
/// Reading every job's executions back may not take longer than this.
const READ_BUDGET: Duration = Duration::from_secs(600);
/// Concurrent reads of executions.
const READ_CONCURRENCY: usize = 16;
/// After the window, how long to wait at most for its last slot to finish on a few probe jobs.
const SETTLE_BUDGET: Duration = Duration::from_secs(60);
/// Executions kept per job beyond the warm-up and the window, so slow creation or reading prunes nothing.
const RETAINED_MARGIN: u64 = 300;
/// With a lower `--retained`, the seconds of slots assumed pruned between the window's end and the read-back.
const RETAINED_READ_MARGIN: u64 = 30;
/// The targets.
const LAG_P99_MAX_MS: f64 = 20.0;
const SHELL_RUNS_TARGET: f64 = 1_000.0;
const HTTP_RUNS_TARGET: f64 = 10_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    Shell,
    Http,
    /// A NATS publish to a local `nats-server` (started by the harness).
    Nats,
    /// A Redis `PUBLISH` to a local `redis-server` (started by the harness).
    Redis,
    /// A Kafka produce (acks=all) to a local Tansu broker (started by the harness through the test kit).
    Kafka,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FireLagArgs {
    /// Number of jobs, each firing every second.
    #[arg(long, default_value_t = 100)]
    pub jobs: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    #[arg(long, value_enum, default_value_t = Executor::Shell)]
    pub executor: Executor,
    /// Seconds after the last job is created before the window opens.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Jobs created at once.
    #[arg(long, default_value_t = 64)]
    pub create_concurrency: usize,
    /// Executions kept per job (default: enough that nothing in the window is pruned). Lower it to measure
    /// under pruning, as in production; slots are then counted only over the window's last (N − 30) seconds,
    /// the part retention still holds when the executions are read.
    #[arg(long)]
    pub retained: Option<u32>,
    /// Start the server with ACL, gossip encryption and mutual TLS on (see `secure.rs`): the harness makes the
    /// certificates, bootstraps the ACL and talks HTTPS with the management token.
    #[arg(long)]
    pub secure: bool,
    /// Notifications and metrics on: the server sends a webhook and a pre-webhook for every execution to a receiver
    /// that answers each only after this many milliseconds, serves `--enable-prometheus`, and the harness scrapes
    /// `/metrics` every second during the window. Compare with the same run without it.
    #[arg(long)]
    pub notify_slow_ms: Option<u64>,
}

/// The measured slots: every whole second in `[start, start + seconds)`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start_second: i64,
    pub seconds: u64,
}

impl Window {
    /// The first whole second at least `warmup` seconds after `now`.
    pub fn after(now: Timestamp, warmup: u64, seconds: u64) -> Window {
        Window { start_second: now.as_second() + warmup as i64 + 1, seconds }
    }

    pub fn start(&self) -> Timestamp {
        Timestamp::from_second(self.start_second).expect("window start in range")
    }

    pub fn end(&self) -> Timestamp {
        Timestamp::from_second(self.start_second + self.seconds as i64).expect("window end in range")
    }

    /// The last `seconds` of the window (all of it when it is shorter).
    fn tail(&self, seconds: u64) -> Window {
        let seconds = seconds.min(self.seconds);
        Window { start_second: self.start_second + (self.seconds - seconds) as i64, seconds }
    }

    fn contains(&self, t: Timestamp) -> bool {
        t >= self.start() && t < self.end()
    }
}

/// Everything one run measured, before it is judged and reported.
struct Measured {
    created: Created,
    window: Window,
    retained: u32,
    rss_idle: u64,
    rss: Vec<(u64, u64)>,
    cpu: CpuUse,
    sink_hits: Option<u64>,
    listen_overflows: u64,
    unsettled: Option<String>,
    jobs: Vec<anyhow::Result<Vec<Execution>>>,
    read_took: Duration,
    stopped: Stopped,
    log_problems: (usize, Vec<String>),
    /// With `--notify-slow-ms`: `kairos_outbox_entries` when the window closed.
    outbox_at_end: Option<String>,
}

pub async fn run(launcher: &Launcher, args: &FireLagArgs, report: &mut Report) -> anyhow::Result<()> {
    let executor = match args.executor {
        Executor::Shell => "shell",
        Executor::Http => "http",
        Executor::Nats => "nats",
        Executor::Redis => "redis",
        Executor::Kafka => "kafka",
    };
    let mut scenario = format!("fire lag, {} {executor} jobs, {} s", thousands(args.jobs as f64), args.seconds);
    if args.secure {
        scenario.push_str(", ACL + TLS");
    }
    if let Some(ms) = args.notify_slow_ms {
        scenario.push_str(&format!(", webhooks to a {ms} ms receiver + metrics scraped"));
    }
    println!("== {scenario} window");
    let retained = retained(args)?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut spec = launcher.spec(dir.path(), &format!("fire-lag-{executor}-{}", args.jobs));
    if args.secure {
        spec = spec.secure(&Secure::make(&launcher.binary, &dir.path().join("pki"))?);
    }
    let receiver = match args.notify_slow_ms {
        Some(ms) => {
            let receiver = Sink::start_slow(Duration::from_millis(ms)).await?;
            let base = format!("http://{}", receiver.addr);
            spec.flags.extend(["--webhook-endpoint".into(), format!("{base}/post")]);
            spec.flags.extend(["--pre-webhook-endpoint".into(), format!("{base}/pre"), "--enable-prometheus".into()]);
            Some(receiver)
        }
        None => None,
    };
    let measured = measure(&spec, args, retained).await?;
    if let Some(receiver) = &receiver {
        report.row(
            &scenario,
            "notification requests received (from the first job's creation to the server's stop)",
            thousands(receiver.hits() as f64),
        );
        if let Some(outbox) = &measured.outbox_at_end {
            report.row(&scenario, "notification outbox entries at the window's end", outbox.clone());
        }
    }
    report_run(report, &scenario, args, &measured);
    Ok(())
}

/// Executions kept per job: `--retained`, else enough that nothing of the window is pruned.
pub fn retained(args: &FireLagArgs) -> anyhow::Result<u32> {
    Ok(match args.retained {
        Some(n) if u64::from(n) <= RETAINED_READ_MARGIN => {
            anyhow::bail!("--retained {n}: keep more than {RETAINED_READ_MARGIN} executions per job")
        }
        Some(n) => n.min(100_000),
        None => (args.seconds + args.warmup + RETAINED_MARGIN).min(100_000) as u32,
    })
}

/// Start a server, create the jobs, watch the window, read every execution back, stop the server.
async fn measure(spec: &ServerSpec, args: &FireLagArgs, retained: u32) -> anyhow::Result<Measured> {
    let server = Server::spawn(spec).await?;
    server.wait_leader(Duration::from_secs(60)).await?;
    let rss_idle = rss_bytes(server.pid)?;
    let sink = match args.executor {
        Executor::Http => Some(Sink::start().await?),
        Executor::Shell | Executor::Nats | Executor::Redis | Executor::Kafka => None,
    };
    // The brokers run for the whole measurement and are stopped (killed with their process group) on drop.
    let broker = match args.executor {
        Executor::Nats => Some(kairos_testkit::services::nats(None).await),
        Executor::Redis => Some(kairos_testkit::services::redis(None).await),
        Executor::Kafka => Some(kairos_testkit::services::tansu().await),
        Executor::Shell | Executor::Http => None,
    };
    let publish = broker.as_ref().map(|b| match args.executor {
        Executor::Nats => Broker::Nats(format!("nats://127.0.0.1:{}", b.port())),
        Executor::Kafka => Broker::Kafka(b.addr()),
        _ => Broker::Redis(format!("redis://127.0.0.1:{}/0", b.port())),
    });
    let body = JobBody { sink: sink.as_ref().map(|s| s.addr), retained, tags: BTreeMap::new(), broker: publish };
    let created = create_jobs(&server.api, args, &body).await?;

    let window = Window::after(Timestamp::now(), args.warmup, args.seconds);
    sleep_until(window.start()).await;
    let meter = CpuMeter::start(server.pid)?;
    let hits_before = sink.as_ref().map(Sink::hits);
    let overflows_before = listen_overflows()?;
    let scraper = args.notify_slow_ms.map(|_| tokio::spawn(scrape_every_second(server.api.clone(), window)));
    let rss = sample_rss(server.pid, window).await?;
    let cpu = meter.finish()?;
    let outbox_at_end = match scraper {
        Some(scraper) => scraper.await.ok().flatten(),
        None => None,
    };
    let sink_hits = sink.as_ref().zip(hits_before).map(|(sink, before)| sink.hits() - before);
    let listen_overflows = listen_overflows()?.saturating_sub(overflows_before);

    let unsettled = settle(&server.api, &created.names, window).await;
    let read_start = Instant::now();
    let jobs = read_executions(&server.api, &created.names, retained).await?;
    let read_took = read_start.elapsed();
    let log_problems = log_problems(&spec.log_path, 3);
    let stopped = server.stop().await?;
    Ok(Measured {
        created,
        window,
        retained,
        rss_idle,
        rss,
        cpu,
        sink_hits,
        listen_overflows,
        unsettled,
        jobs,
        read_took,
        stopped,
        log_problems,
        outbox_at_end,
    })
}

/// Scrape `/metrics` every second until the window ends, as a Prometheus server would; answers the last value of
/// `kairos_outbox_entries`.
async fn scrape_every_second(api: Api, window: Window) -> Option<String> {
    let mut last = None;
    while Timestamp::now() < window.end() {
        if let Ok(text) = api.get_text("/metrics").await {
            last = text
                .lines()
                .find(|l| l.starts_with("kairos_outbox_entries "))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_string);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    last
}

fn report_run(report: &mut Report, scenario: &str, args: &FireLagArgs, m: &Measured) {
    report.row(scenario, "jobs created (64 concurrent POST /v1/jobs)", m.created.describe());
    if let Some(error) = &m.created.first_error {
        report.note(format!("{scenario}: {} of {} job creations failed; first: {error}", m.created.errors, args.jobs));
    }
    let counted = m.window.tail(u64::from(m.retained) - RETAINED_READ_MARGIN);
    if counted.seconds < m.window.seconds {
        report.row(
            scenario,
            "slots counted (executions_retained limits what can be read back)",
            format!(
                "the window's last {} s of {} s (executions_retained {})",
                counted.seconds, m.window.seconds, m.retained
            ),
        );
    }
    let slots = Slots::count(&m.jobs, counted, m.retained);
    report_slots(report, scenario, args, &slots, m.created.names.len() as u64 * counted.seconds, counted.seconds);
    report.row(scenario, "CPU during the window", m.cpu.to_string());
    if let Some(hits) = m.sink_hits {
        report.row(scenario, "sink requests/s during the window", thousands(hits as f64 / m.window.seconds as f64));
    }
    rss_rows(report, scenario, m.rss_idle, &m.rss);
    report.row(
        scenario,
        "reading executions back / SIGTERM to exit",
        format!(
            "{:.1} s / {:.1} s ({}{})",
            m.read_took.as_secs_f64(),
            m.stopped.took.as_secs_f64(),
            m.stopped.status,
            if m.stopped.killed { ", needed SIGKILL" } else { "" }
        ),
    );
    if let Some(unsettled) = &m.unsettled {
        report.note(format!("{scenario}: {unsettled}"));
    }
    if m.listen_overflows > 0 {
        report.note(format!(
            "{scenario}: the kernel dropped {} connections on full accept queues during the window \
             (TcpExt ListenOverflows; the server's API or the harness's sink); their clients retried after ≥ 1 s",
            m.listen_overflows
        ));
    }
    if slots.pruned_suspects > 0 {
        report.note(format!(
            "{scenario}: {} jobs had {} executions, all newer than the counted window: some of its slots may \
             have been pruned before they were read",
            slots.pruned_suspects, m.retained
        ));
    }
    if slots.read_errors > 0 {
        report.note(format!("{scenario}: reading executions failed for {} jobs", slots.read_errors));
    }
    let (count, first) = &m.log_problems;
    if *count > 0 {
        report.note(format!("{scenario}: the server logged {count} warnings/errors, first: {}", first.join(" // ")));
    }
}

/// Throughput, slots, lags and statuses of the counted window.
pub fn report_slots(
    report: &mut Report,
    scenario: &str,
    args: &FireLagArgs,
    slots: &Slots,
    expected: u64,
    seconds: u64,
) {
    let runs_per_sec = slots.executed as f64 / seconds as f64;
    let (runs_target, runs_goal) = match (args.executor, args.jobs) {
        (Executor::Shell, 1_000) => ("≥ 1,000 runs/s", Some(SHELL_RUNS_TARGET)),
        (Executor::Http, 10_000) => ("≥ 10,000 runs/s", Some(HTTP_RUNS_TARGET)),
        _ => ("", None),
    };
    report.target(
        scenario,
        "runs/s executed in the window",
        thousands(runs_per_sec),
        runs_target,
        runs_goal.map_or(String::new(), |g| at_least(runs_per_sec, g)),
    );
    let missing = expected.saturating_sub(slots.executed);
    report.target(
        scenario,
        "slots executed / expected",
        format!(
            "{} / {} (missing {}, duplicates {}, retries {})",
            thousands(slots.executed as f64),
            thousands(expected as f64),
            thousands(missing as f64),
            slots.duplicates,
            slots.retries
        ),
        "all",
        if missing == 0 && slots.duplicates == 0 {
            "met".to_string()
        } else {
            format!("missed: {:.2} % of slots not run", 100.0 * missing as f64 / expected.max(1) as f64)
        },
    );
    lag_row(report, scenario, "lag started_at − scheduled_at", slots.lag_ms.clone());
    if args.executor == Executor::Shell {
        lag_row(report, scenario, "lag seen by the process (date +%s.%N)", slots.self_lag_ms.clone());
        if slots.self_unparsed > 0 {
            report
                .note(format!("{scenario}: {} finished executions had no parsable `date` output", slots.self_unparsed));
        }
    }
    if let Some(s) = summarize(slots.duration_ms.clone()) {
        report.row(scenario, "run time finished_at − started_at", s.to_string());
    }
    report.row(scenario, "executions by status", slots.status_text());
}

fn lag_row(report: &mut Report, scenario: &str, measure: &str, sample: Vec<f64>) {
    match summarize(sample) {
        Some(s) => report.target(scenario, measure, s.to_string(), "p99 ≤ 20 ms", at_most(s.p99, LAG_P99_MAX_MS)),
        None => report.row(scenario, measure, "no sample"),
    }
}

fn rss_rows(report: &mut Report, scenario: &str, idle: u64, samples: &[(u64, u64)]) {
    let at = |k: u64| samples.iter().find(|(s, _)| *s == k).map(|(_, r)| *r);
    let first = samples.first().map_or(0, |(_, r)| *r);
    let last = samples.last().map_or(0, |(_, r)| *r);
    report.row(
        scenario,
        "RSS idle → window start → window end",
        format!("{} → {} → {}", mib(idle), mib(at(0).unwrap_or(first)), mib(last)),
    );
    let half = samples.last().map_or(0, |(s, _)| *s) / 2;
    let second_half: Vec<u64> = samples.iter().filter(|(s, _)| *s >= half).map(|(_, r)| *r).collect();
    if let (Some(min), Some(max)) = (second_half.iter().min(), second_half.iter().max()) {
        let growth = 100.0 * (*max as f64 - *min as f64) / (*min).max(1) as f64;
        report.target(
            scenario,
            "RSS over the window's second half (1 Hz)",
            format!("min {} · max {} (spread {growth:.1} %)", mib(*min), mib(*max)),
            "flat",
            if growth <= 5.0 { "met (≤ 5 % spread)".to_string() } else { format!("spread {growth:.0} %") },
        );
    }
}

/// What every job of the run looks like, apart from its name.
pub struct JobBody {
    pub sink: Option<SocketAddr>,
    pub retained: u32,
    /// The job's tags: only nodes with all of them run it (none: any node).
    pub tags: BTreeMap<String, String>,
    /// Publish to this broker instead (nats, redis or kafka executor).
    pub broker: Option<Broker>,
}

/// A broker the jobs publish to, by its URL.
#[derive(Debug, Clone)]
pub enum Broker {
    Nats(String),
    Redis(String),
    /// `host:port` of a Kafka broker.
    Kafka(String),
}

impl JobBody {
    pub fn json(&self, name: &str) -> String {
        let executor = match (&self.broker, self.sink) {
            (Some(Broker::Nats(url)), _) => serde_json::json!({
                "executor": "nats",
                "executor_config": {"url": url, "subject": format!("bench.{name}"), "message": "tick"},
            }),
            (Some(Broker::Redis(url)), _) => serde_json::json!({
                "executor": "redis",
                "executor_config": {"url": url, "command": "PUBLISH", "channel": format!("bench.{name}"), "message": "tick"},
            }),
            (Some(Broker::Kafka(addr)), _) => serde_json::json!({
                "executor": "kafka",
                // One topic for all jobs, keyed by job (many jobs feeding one topic is the common shape).
                "executor_config": {"brokerAddress": addr, "topic": "bench.ticks", "key": name, "message": "tick"},
            }),
            (None, None) => serde_json::json!({
                "executor": "shell",
                "executor_config": {"command": "date +%s.%N"},
            }),
            (None, Some(addr)) => serde_json::json!({
                "executor": "http",
                "executor_config": {"url": format!("http://{addr}/"), "method": "GET", "expectCode": "200"},
            }),
        };
        let mut job = serde_json::json!({
            "name": name,
            "schedule": "* * * * * *",
            "executions_retained": self.retained,
        });
        if let (Some(job), Some(executor)) = (job.as_object_mut(), executor.as_object()) {
            job.extend(executor.clone());
            if !self.tags.is_empty() {
                job.insert("tags".to_string(), serde_json::json!(self.tags));
            }
        }
        job.to_string()
    }
}

pub struct Created {
    pub names: Vec<String>,
    latency_ms: Vec<f64>,
    pub errors: usize,
    pub first_error: Option<String>,
    took: Duration,
}

impl Created {
    pub fn describe(&self) -> String {
        let rate = self.names.len() as f64 / self.took.as_secs_f64().max(1e-3);
        let latency = summarize(self.latency_ms.clone()).map_or(String::new(), |s| format!("; {s}"));
        format!(
            "{} in {:.1} s = {} jobs/s{latency}",
            thousands(self.names.len() as f64),
            self.took.as_secs_f64(),
            thousands(rate)
        )
    }
}

pub async fn create_jobs(api: &Api, args: &FireLagArgs, body: &JobBody) -> anyhow::Result<Created> {
    let start = Instant::now();
    let requests = futures::stream::iter(0..args.jobs)
        .map(|i| {
            let name = format!("lag-{i:06}");
            let json = body.json(&name);
            async move { (name, api.post_json("/v1/jobs", json).await) }
        })
        .buffer_unordered(args.create_concurrency.max(1))
        .collect::<Vec<_>>();
    let results = tokio::time::timeout(CREATE_BUDGET, requests)
        .await
        .with_context(|| format!("creating {} jobs took over {CREATE_BUDGET:?}", args.jobs))?;
    let mut created = Created {
        names: Vec::with_capacity(args.jobs),
        latency_ms: Vec::with_capacity(args.jobs),
        errors: 0,
        first_error: None,
        took: start.elapsed(),
    };
    for (name, result) in results {
        match result {
            Ok(took) => {
                created.names.push(name);
                created.latency_ms.push(took.as_secs_f64() * 1e3);
            }
            Err(err) => {
                created.errors += 1;
                created.first_error.get_or_insert(format!("{err:#}"));
            }
        }
    }
    created.names.sort();
    Ok(created)
}

pub async fn sleep_until(t: Timestamp) {
    let nanos = t.as_nanosecond() - Timestamp::now().as_nanosecond();
    if nanos > 0 {
        tokio::time::sleep(Duration::from_nanos(nanos as u64)).await;
    }
}

/// RSS once a second through the window: (seconds since the window opened, bytes).
async fn sample_rss(pid: u32, window: Window) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut samples = Vec::with_capacity(window.seconds as usize + 1);
    for k in 0..=window.seconds {
        let at = Timestamp::from_second(window.start_second + k as i64)?;
        sleep_until(at).await;
        samples.push((k, rss_bytes(pid)?));
    }
    Ok(samples)
}

/// Wait (bounded) until a few probe jobs have a finished execution for the window's last slot, so the
/// read-back does not catch the tail of the window still pending. When they never do, say how far behind the
/// newest slot the probes had was: that is how late the scheduler is.
pub async fn settle(api: &Api, names: &[String], window: Window) -> Option<String> {
    let last_slot = window.end() - jiff::SignedDuration::from_secs(1);
    let probes: Vec<&String> =
        [names.first(), names.get(names.len() / 2), names.last()].into_iter().flatten().collect();
    let deadline = Instant::now() + SETTLE_BUDGET;
    let mut newest: Vec<Option<Timestamp>> = Vec::new();
    while Instant::now() < deadline {
        newest.clear();
        let mut done = true;
        for name in &probes {
            let execs = api.executions(name, 50).await.unwrap_or_default();
            done &= execs.iter().any(|e| e.scheduled_at >= last_slot && e.finished_at.is_some());
            newest.push(execs.iter().map(|e| e.scheduled_at).max());
        }
        if done {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = Timestamp::now();
    let behind: Vec<String> = probes
        .iter()
        .zip(&newest)
        .map(|(name, slot)| match slot {
            Some(slot) => format!("{name} {:.0} s", millis_between(*slot, now) / 1e3),
            None => format!("{name} never fired"),
        })
        .collect();
    Some(format!(
        "{SETTLE_BUDGET:?} after the window the probe jobs still had not finished its last slot; newest slot \
         decided, behind the clock: {}",
        behind.join(", ")
    ))
}

pub async fn read_executions(
    api: &Api,
    names: &[String],
    retained: u32,
) -> anyhow::Result<Vec<anyhow::Result<Vec<Execution>>>> {
    let reads = futures::stream::iter(names)
        .map(|name| api.executions(name, retained))
        .buffer_unordered(READ_CONCURRENCY)
        .collect::<Vec<_>>();
    tokio::time::timeout(READ_BUDGET, reads)
        .await
        .with_context(|| format!("reading executions took over {READ_BUDGET:?}"))
}

/// The window's slots as the executions show them.
#[derive(Debug, Default)]
pub struct Slots {
    /// Distinct (job, slot) pairs with a started first attempt.
    pub executed: u64,
    /// Executions beyond the first for the same (job, slot, attempt).
    pub duplicates: u64,
    pub retries: u64,
    pub statuses: BTreeMap<String, u64>,
    pub triggers: BTreeMap<String, u64>,
    pub lag_ms: Vec<f64>,
    pub self_lag_ms: Vec<f64>,
    pub self_unparsed: u64,
    pub duration_ms: Vec<f64>,
    pub pruned_suspects: u64,
    pub read_errors: u64,
    /// Distinct slots executed, by the node that ran them.
    pub nodes: BTreeMap<String, u64>,
}

impl Slots {
    pub fn count(jobs: &[anyhow::Result<Vec<Execution>>], window: Window, retained: u32) -> Slots {
        let mut slots = Slots::default();
        for job in jobs {
            let Ok(executions) = job else {
                slots.read_errors += 1;
                continue;
            };
            if executions.len() >= retained as usize && executions.iter().all(|e| e.scheduled_at > window.start()) {
                slots.pruned_suspects += 1;
            }
            slots.add_job(executions, window);
        }
        slots
    }

    fn add_job(&mut self, executions: &[Execution], window: Window) {
        // A job on several nodes runs one copy of each slot per node, named in its id (`<id>@<node>`).
        let mut by_slot: BTreeMap<(i128, u32, Option<&str>), Vec<&Execution>> = BTreeMap::new();
        for e in executions.iter().filter(|e| window.contains(e.scheduled_at)) {
            *self.statuses.entry(e.status.clone()).or_default() += 1;
            *self.triggers.entry(e.trigger.clone()).or_default() += 1;
            let copy = e.id.split_once('@').map(|(_, target)| target);
            by_slot.entry((e.scheduled_at.as_nanosecond(), e.attempt, copy)).or_default().push(e);
        }
        for ((_, attempt, _), group) in by_slot {
            self.duplicates += group.len() as u64 - 1;
            if attempt > 1 {
                self.retries += 1;
                continue;
            }
            let e = group[0];
            let Some(started) = e.started_at else {
                continue;
            };
            self.executed += 1;
            *self.nodes.entry(e.node_name.clone()).or_default() += 1;
            self.lag_ms.push(millis_between(e.scheduled_at, started));
            if let Some(finished) = e.finished_at {
                self.duration_ms.push(millis_between(started, finished));
                match self_observed(&e.output) {
                    Some(seen_ns) => self.self_lag_ms.push((seen_ns - e.scheduled_at.as_nanosecond()) as f64 / 1e6),
                    None => self.self_unparsed += 1,
                }
            }
        }
    }

    fn status_text(&self) -> String {
        let statuses: Vec<String> =
            self.statuses.iter().map(|(s, n)| format!("{s} {}", thousands(*n as f64))).collect();
        let triggers: Vec<String> =
            self.triggers.iter().map(|(t, n)| format!("{t} {}", thousands(*n as f64))).collect();
        if statuses.is_empty() {
            return "none in the window".to_string();
        }
        format!("{} (triggers: {})", statuses.join(", "), triggers.join(", "))
    }
}

pub fn millis_between(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_nanosecond() - from.as_nanosecond()) as f64 / 1e6
}

/// The instant a `date +%s.%N` printed, in Unix nanoseconds: the last line of the output that parses.
fn self_observed(output: &str) -> Option<i128> {
    output.lines().rev().find_map(|line| {
        let (secs, frac) = line.trim().split_once('.')?;
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let secs: i128 = secs.parse().ok()?;
        let nanos: i128 = format!("{frac:0<9}").parse().ok()?;
        Some(secs * 1_000_000_000 + nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(slot: i64, attempt: u32, started_ms: Option<i64>) -> Execution {
        let scheduled_at = Timestamp::from_second(slot).unwrap();
        let started_at = started_ms.map(|m| Timestamp::from_millisecond(slot * 1000 + m).unwrap());
        Execution {
            id: format!("{:013}-{attempt}", slot * 1000),
            node_name: "s".into(),
            scheduled_at,
            started_at,
            finished_at: started_at,
            status: "succeeded".into(),
            output: format!("{slot}.010000000\n"),
            attempt,
            trigger: "schedule".into(),
            error: None,
        }
    }

    #[test]
    fn parses_what_date_prints() {
        assert_eq!(self_observed("1700000000.123456789\n"), Some(1_700_000_000_123_456_789));
        assert_eq!(self_observed("noise\n1700000000.5"), Some(1_700_000_000_500_000_000));
        assert_eq!(self_observed("1700000000.\n"), None);
        assert_eq!(self_observed("date: invalid\n"), None);
    }

    #[test]
    fn counts_each_slot_once_and_duplicates_apart() {
        let window = Window { start_second: 100, seconds: 3 };
        let executions = vec![
            exec(99, 1, Some(5)), // before the window
            exec(100, 1, Some(5)),
            exec(100, 1, Some(6)), // the same slot again
            exec(101, 1, None),    // decided, never started
            exec(102, 1, Some(7)),
            exec(102, 2, Some(9)), // a retry
            exec(103, 1, Some(5)), // after the window
        ];
        let slots = Slots::count(&[Ok(executions)], window, 100);
        assert_eq!(slots.executed, 2);
        assert_eq!(slots.duplicates, 1);
        assert_eq!(slots.retries, 1);
        assert_eq!(slots.lag_ms, vec![5.0, 7.0]);
        assert_eq!(slots.self_lag_ms, vec![10.0, 10.0]);
    }

    #[test]
    fn window_opens_on_a_whole_second_after_the_warmup() {
        let now = Timestamp::from_millisecond(10_400).unwrap();
        let window = Window::after(now, 2, 5);
        assert_eq!(window.start_second, 13);
        assert!(window.contains(Timestamp::from_second(17).unwrap()));
        assert!(!window.contains(Timestamp::from_second(18).unwrap()));
        let tail = window.tail(2);
        assert_eq!((tail.start_second, tail.seconds), (16, 2));
        assert_eq!(window.tail(99).start_second, 13);
    }
}
