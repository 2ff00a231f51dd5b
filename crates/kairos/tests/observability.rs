//! What a node tells the world beyond its API, as a receiver sees it: StatsD and DogStatsD packets on a real UDP
//! socket (`--statsd-addr`, `--dog-statsd-addr`, `--dog-statsd-tags`), JSON log lines that follow one run
//! (`--log-format json`), and the Grafana dashboard, whose every metric must exist in a real scrape.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod cluster_common;
mod common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::Stdio;
use std::sync::Mutex;

use cluster_common::Cluster;
use common::*;

/// A StatsD receiver: a UDP socket the test binds on loopback, and every line it got.
struct Receiver {
    socket: UdpSocket,
    lines: Mutex<Vec<String>>,
}

impl Receiver {
    fn bind() -> Receiver {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        Receiver { socket, lines: Mutex::default() }
    }

    fn addr(&self) -> String {
        self.socket.local_addr().unwrap().to_string()
    }

    /// Read what arrived; every packet must fit the size limit.
    fn drain(&self) {
        let mut buffer = [0u8; 65536];
        while let Ok((n, _)) = self.socket.recv_from(&mut buffer) {
            assert!(n <= 1432, "a packet of {n} bytes");
            let text = std::str::from_utf8(&buffer[..n]).unwrap();
            self.lines.lock().unwrap().extend(text.split('\n').map(str::to_string));
        }
    }

    /// The sum of the values of the lines `name:value|c…` whose tags (after `|#`) hold every one of `tags`.
    fn counted(&self, name: &str, tags: &[&str]) -> f64 {
        self.drain();
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|line| {
                let (metric, rest) = line.split_once(':')?;
                let (value, rest) = rest.split_once('|')?;
                let line_tags: Vec<&str> = rest.split_once("|#").map_or(vec![], |(_, t)| t.split(',').collect());
                (metric == name && rest.starts_with('c') && tags.iter().all(|t| line_tags.contains(t)))
                    .then(|| value.parse::<f64>().unwrap())
            })
            .sum()
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// A job that runs only when asked.
fn manual_job(name: &str) -> Value {
    shell_job(name, "@manually", "echo hello")
}

/// `--statsd-addr` (plain StatsD, without `--enable-prometheus`): after one run, the run-finished counter arrives as
/// an increase of one in total, labels folded into the name; gauges carry the node's name.
#[tokio::test(flavor = "multi_thread")]
async fn statsd_receives_the_runs_finished_counter_of_a_run() {
    let receiver = Receiver::bind();
    let addr = receiver.addr();
    let server = Server::fresh(&["--statsd-addr", &addr, "--statsd-flush-interval", "200ms"]).await;
    server.create_job(&manual_job("hello")).await;
    server.run("hello").await;
    server.wait_executions("hello", "the run succeeded", secs(20), |e| e.iter().any(|x| x.status == "succeeded")).await;
    let name = "kairos.runs_finished.executor.shell.status.succeeded";
    wait_until("the run-finished counter arrives", secs(20), async || {
        (receiver.counted(name, &[]) == 1.0).then_some(())
    })
    .await;
    let leader = format!("kairos.{}.raft_leader:1|g", server.node_name);
    wait_until("the leader gauge arrives with the node's name", secs(10), async || {
        receiver.drain();
        receiver.text().contains(&leader).then_some(())
    })
    .await;
    // Counters go out as increases: later flushes add nothing for one run.
    tokio::time::sleep(millis(600)).await;
    assert_eq!(receiver.counted(name, &[]), 1.0, "{}", receiver.text());
}

/// `--dog-statsd-addr` and `--dog-statsd-tags` (here from the environment) on an agent-only node: the run it
/// executed arrives as `kairos.runs_finished` with its labels, the node and the global tags as tags.
#[tokio::test(flavor = "multi_thread")]
async fn dogstatsd_receives_tagged_metrics_from_an_agent_only_node() {
    let receiver = Receiver::bind();
    let mut cluster = Cluster::prepare(1, &[("a1", &["role=worker"])], &[]);
    cluster.set_env(1, "KAIROS_DOG_STATSD_ADDR", &receiver.addr());
    cluster.set_env(1, "KAIROS_DOG_STATSD_TAGS", "env:test,team:ops");
    cluster.set_env(1, "KAIROS_STATSD_FLUSH_INTERVAL", "200ms");
    cluster.launch_all().await;
    cluster.wait_formed().await;
    let job = with(manual_job("tagged"), json!({"tags": {"role": "worker"}}));
    cluster.create_job(&job).await;
    cluster.run("tagged").await;
    cluster
        .wait_executions("tagged", "the run succeeded on a1", secs(30), |e| {
            e.iter().any(|x| x.status == "succeeded" && x.node_name == "a1")
        })
        .await;
    let tags = ["executor:shell", "status:succeeded", "node:a1", "env:test", "team:ops"];
    wait_until("the tagged run-finished counter arrives", secs(20), async || {
        (receiver.counted("kairos.runs_finished", &tags) == 1.0).then_some(())
    })
    .await;
}

/// A bad value stops the node at start with exit 2, naming the flag.
#[tokio::test(flavor = "multi_thread")]
async fn bad_statsd_and_log_format_values_stop_the_node_naming_the_flag() {
    for (flag, value) in [
        ("--statsd-addr", "nonsense"),
        ("--dog-statsd-addr", "host:port"),
        ("--dog-statsd-tags", "has space"),
        ("--statsd-flush-interval", "soon"),
        ("--log-format", "xml"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(KAIROS_BIN)
            .args(["agent", "--server", "--bootstrap-expect", "1", "--http-addr", "127.0.0.1:0", "--rpc-port", "0"])
            .args(["--bind-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args([flag, value])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}

/// `--log-format json`: every line the node writes is a JSON object with the node's name, and the run's lines
/// carry its job and execution id (and the term of the leader that ordered it).
#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_follow_a_run_with_its_job_execution_and_node() {
    let mut server = Server::fresh(&["--log-format", "json"]).await;
    server.create_job(&manual_job("traced")).await;
    server.run("traced").await;
    let execs = server
        .wait_executions("traced", "the run succeeded", secs(20), |e| e.iter().any(|x| x.status == "succeeded"))
        .await;
    let id = execs[0].id.clone();
    let found =
        |log: &str| log.lines().any(|l| l.contains("run finished") && l.contains(&id) && l.contains("\"node\""));
    wait_until("the run's finish is logged", secs(10), async || found(&server.log()).then_some(())).await;
    server.sigterm().await;
    let log = server.log();
    let mut lines = Vec::new();
    for line in log.lines().filter(|l| !l.starts_with("===")) {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(parsed["node"], server.node_name.as_str(), "{line}");
        for field in ["timestamp", "level", "target", "message"] {
            assert!(parsed[field].is_string(), "{field} missing: {line}");
        }
        lines.push(parsed);
    }
    let finished = lines
        .iter()
        .find(|l| l["message"] == "run finished" && l["execution"] == id.as_str())
        .unwrap_or_else(|| panic!("no 'run finished' line of {id}:\n{log}"));
    assert_eq!(finished["job"], "traced", "{finished}");
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert!(finished["term"].as_u64().is_some_and(|t| t >= 1), "{finished}");
    assert!(lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.starts_with("HTTP API listening on"))));
    assert!(
        lines
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.starts_with("leading in term")) && l["term"].is_u64()),
        "the leader's lines carry the term:\n{log}"
    );
}

/// Without `--log-format`, lines are text as before (and the run's fields are in them).
#[tokio::test(flavor = "multi_thread")]
async fn text_logs_stay_the_default() {
    let server = Server::fresh(&[]).await;
    server.create_job(&manual_job("plain")).await;
    server.run("plain").await;
    server.wait_executions("plain", "the run succeeded", secs(20), |e| e.iter().any(|x| x.status == "succeeded")).await;
    let line = wait_until("the run's finish is logged", secs(10), async || {
        server.log().lines().find(|l| l.contains("run finished")).map(str::to_string)
    })
    .await;
    assert!(!line.trim_start().starts_with('{'), "{line}");
    assert!(line.contains("job=plain") && line.contains("status=\"succeeded\""), "{line}");
    assert!(server.log().contains("kairos: HTTP API listening on http://"), "{}", server.log());
}

/// The Grafana dashboard (`deploy/grafana/kairos-dashboard.json`) reads only metrics a node exports: every
/// `kairos_…` name in its queries is in a real scrape of `/metrics` (families as `# TYPE` declares them, with
/// their `_total`, `_bucket`, `_sum` and `_count` samples).
#[tokio::test(flavor = "multi_thread")]
async fn every_metric_of_the_grafana_dashboard_is_exported() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana/kairos-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut used = BTreeSet::new();
    let mut exprs = 0;
    visit_exprs(&dashboard, &mut |expr| {
        exprs += 1;
        used.extend(metric_names(expr));
    });
    assert!(exprs >= 10 && used.len() >= 15, "{exprs} queries naming {used:?}");

    // A family shows in a scrape once it has a series: a run (its outcome and lag) and its webhook (a
    // notification) give every labelled family one.
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/finished", webhook.local_addr().unwrap());
    tokio::spawn(async move {
        let app = axum::Router::new().route("/finished", axum::routing::post(|| async { "thanks" }));
        axum::serve(webhook, app).await.unwrap();
    });
    let server = Server::fresh(&["--enable-prometheus", "--webhook-endpoint", &endpoint]).await;
    server.create_job(&manual_job("scraped")).await;
    server.run("scraped").await;
    server
        .wait_executions("scraped", "the run succeeded", secs(20), |e| e.iter().any(|x| x.status == "succeeded"))
        .await;
    let mut last = String::new();
    let missing = poll_until_exported(&server, &used, &mut last).await;
    assert!(missing.is_empty(), "the dashboard queries {missing:?}, which no node exports:\n{last}");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
}

/// Scrape until every name of `used` is exported, for a few seconds; answers the names still missing (and the last
/// scrape in `last`).
async fn poll_until_exported(server: &Server, used: &BTreeSet<String>, last: &mut String) -> Vec<String> {
    let deadline = std::time::Instant::now() + secs(15);
    loop {
        let reply = server.get("/metrics").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let exported = exported_names(&reply.text);
        let missing: Vec<String> = used.difference(&exported).cloned().collect();
        *last = reply.text;
        if missing.is_empty() || std::time::Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(millis(200)).await;
    }
}

/// The sample names a scrape can hold: each family as `# TYPE` declares it, with its kind's suffixes.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (family, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        exported.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    exported
}

/// Every query in the dashboard: panel targets' `expr` and template variables' `definition`.
fn visit_exprs(value: &Value, found: &mut impl FnMut(&str)) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(expr)) => found(expr),
                    _ => visit_exprs(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| visit_exprs(v, found)),
        _ => {}
    }
}

/// The `kairos_…` identifiers of a PromQL expression (label values in quotes are skipped).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_quotes = false;
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if !in_quotes && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("kairos_") {
            names.push(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}
