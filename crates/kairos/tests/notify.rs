//! Webhooks as a receiver sees them (Dkron's `--webhook-*` and `--pre-webhook-*`): a real HTTP server on
//! loopback gets one pre-webhook when a run starts and one webhook when it finishes, with the configured headers
//! and Dkron's template rendered; a receiver that is down changes nothing for the runs; a template that does not
//! parse stops the node at start, naming the flag.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod cluster_common;
mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::post;
use cluster_common::Cluster;
use common::*;
use jiff::SignedDuration;

/// What the receiver got: path, `x-token` header, content type, body.
type Received = Arc<Mutex<Vec<(String, Option<String>, String, String)>>>;

async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let record = |path: &'static str, received: Received| {
        post(move |headers: HeaderMap, body: String| async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let content_type = header("content-type").unwrap_or_default();
            received.lock().unwrap().push((path.to_string(), header("x-token"), content_type, body));
            "thanks"
        })
    };
    let app = axum::Router::new()
        .route("/post", record("/post", received.clone()))
        .route("/pre", record("/pre", received.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

fn got(received: &Received, path: &str) -> Vec<(Option<String>, String, String)> {
    let received = received.lock().unwrap();
    received
        .iter()
        .filter(|r| r.0 == path)
        .map(|(_, token, kind, body)| (token.clone(), kind.clone(), body.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_gets_one_pre_and_one_post_webhook_per_run_with_dkrons_template() {
    let (base, received) = receiver().await;
    let template = "{{.JobName}} {{if .Success}}ok{{else}}failed{{end}} on {{.NodeName}}: {{.Output}}";
    let server = Server::fresh(&[
        "--webhook-endpoint",
        &format!("{base}/post"),
        "--webhook-payload",
        template,
        "--webhook-headers",
        "X-Token: t0ken",
        "--pre-webhook-endpoint",
        &format!("{base}/pre"),
    ])
    .await;
    server.create_job(&shell_job("greet", "@manually", "echo hello")).await;
    server.create_job(&shell_job("broken", "@manually", "echo oops; exit 3")).await;
    server.run("greet").await;
    server.run("broken").await;
    wait_until("two webhooks and two pre-webhooks arrived", secs(20), async || {
        let (post, pre) = (got(&received, "/post"), got(&received, "/pre"));
        (post.len() >= 2 && pre.len() >= 2).then_some(())
    })
    .await;
    let node = server.executions("greet").await[0].node_name.clone();
    let mut posts: Vec<String> = got(&received, "/post")
        .into_iter()
        .map(|(token, kind, body)| {
            assert_eq!(token.as_deref(), Some("t0ken"), "the configured header");
            assert!(kind.starts_with("text/plain"), "{kind}");
            body
        })
        .collect();
    posts.sort();
    assert_eq!(posts, [format!("broken failed on {node}: oops\n"), format!("greet ok on {node}: hello\n")]);
    // Without a template the body is JSON; the pre-webhook of each run names it running.
    let mut pres: Vec<serde_json::Value> =
        got(&received, "/pre").iter().map(|(_, _, body)| serde_json::from_str(body).unwrap()).collect();
    pres.sort_by_key(|p| p["JobName"].as_str().unwrap_or_default().to_string());
    let names: Vec<&str> = pres.iter().map(|p| p["JobName"].as_str().unwrap()).collect();
    assert_eq!(names, ["broken", "greet"]);
    assert!(pres.iter().all(|p| p["Status"] == "running" && p["NodeName"] == node.as_str()), "{pres:?}");
    // One of each per execution: nothing more arrives.
    server.create_job(&shell_job("marker", "@manually", "true")).await;
    server.run("marker").await;
    wait_until("the marker's webhook arrived", secs(20), async || {
        got(&received, "/post").iter().any(|(_, _, b)| b.starts_with("marker ok")).then_some(())
    })
    .await;
    assert_eq!((got(&received, "/post").len(), got(&received, "/pre").len()), (3, 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_is_down_does_not_delay_runs_and_the_failure_is_logged() {
    // A port nobody listens on: every delivery is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = Server::fresh(&["--webhook-endpoint", &format!("http://{closed}/gone")]).await;
    server.create_job(&shell_job("tick", "* * * * * *", "true")).await;
    let execs = server.wait_executions("tick", "five runs finished", secs(30), |e| count(e, "succeeded") >= 5).await;
    for exec in execs.iter().filter(|e| e.status == "succeeded") {
        let lag = exec.started_at.unwrap().duration_since(exec.scheduled_at);
        assert!(lag < SignedDuration::from_millis(500), "a run started {lag:?} after its slot: {exec:?}");
    }
    wait_until("the failed delivery is logged", secs(20), async || {
        server.log().contains("not delivered after 3 tries").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_template_that_does_not_parse_stops_the_node_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(KAIROS_BIN)
        .args(["agent", "--server", "--bootstrap-expect", "1", "--http-addr", "127.0.0.1:0", "--rpc-port", "0"])
        .args(["--bind-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--webhook-endpoint", "http://127.0.0.1:9/h", "--webhook-payload", "{{.JobName"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--webhook-payload"), "{stderr}");
}

/// Mail as an SMTP server receives it (Dkron's `--mail-*`): one message per finished run to every address of
/// the job's `owner_email`, from `--mail-from`, the subject saying what happened, the body Dkron's template
/// rendered; a job without owners sends nothing; without a template the body is a readable report.
#[tokio::test(flavor = "multi_thread")]
async fn the_owners_of_a_job_get_one_mail_per_finished_run() {
    let smtp = kairos_testkit::services::smtp().await;
    let port = smtp.port().to_string();
    let template = "{{.JobName}} {{if .Success}}ok{{else}}failed{{end}} on {{.NodeName}}: {{.Output}}";
    let flags = ["--mail-host", "127.0.0.1", "--mail-port", &port, "--mail-from", "Kairos <kairos@example.com>"];
    let server = Server::fresh(&[&flags[..], &["--mail-payload", template]].concat()).await;
    let owned = with(
        shell_job("owned", "@manually", "echo hello from the job; exit 3"),
        json!({"owner_email": "ops@example.com, dev@example.com"}),
    );
    server.create_job(&owned).await;
    server.create_job(&shell_job("unowned", "@manually", "true")).await;
    server.run("unowned").await;
    server.wait_executions("unowned", "its run ended", secs(20), |e| e.iter().any(Exec::is_final)).await;
    server.run("owned").await;
    server.wait_executions("owned", "its run ended", secs(20), |e| e.iter().any(Exec::is_final)).await;
    let mails = wait_until("the mail about the owned job arrived", secs(20), async || {
        let mails = smtp.mails();
        (!mails.is_empty()).then_some(mails)
    })
    .await;
    assert_eq!(mails.len(), 1, "one mail, none for the job without owners: {mails:#?}");
    let mail = &mails[0];
    assert!(mail.contains("X-RcptTo: ops@example.com, dev@example.com"), "{mail}");
    assert!(mail.contains("From: Kairos <kairos@example.com>"), "{mail}");
    let node = server.get("/v1/members").await.json[0]["Name"].as_str().unwrap_or_default().to_string();
    assert!(mail.contains(&format!("Subject: [Kairos] owned failed (exit code 3) on {node}")), "{mail}");
    assert!(mail.contains(&format!("owned failed on {node}: hello from the job")), "{mail}");
    drop(server);

    // Without a template: the report, with the job, its status and its output.
    let server = Server::fresh(&flags).await;
    server
        .create_job(&with(
            shell_job("reported", "@manually", "echo all good"),
            json!({"owner_email": "ops@example.com"}),
        ))
        .await;
    server.run("reported").await;
    let mail =
        wait_until("the report arrived", secs(20), async || smtp.mails().into_iter().find(|m| m.contains("reported")))
            .await;
    for line in ["Job:          reported", "Status:       succeeded (exit code 0)", "all good"] {
        assert!(mail.contains(line), "{line:?} in {mail}");
    }
}

/// An SMTP server that is down changes nothing for the runs; the failure is logged.
#[tokio::test(flavor = "multi_thread")]
async fn a_mail_server_that_is_down_does_not_hold_up_runs() {
    let port = kairos_testkit::free_port().to_string();
    let server =
        Server::fresh(&["--mail-host", "127.0.0.1", "--mail-port", &port, "--mail-from", "kairos@example.com"]).await;
    server
        .create_job(&with(shell_job("ticking", "* * * * * *", "true"), json!({"owner_email": "ops@example.com"})))
        .await;
    let execs = server
        .wait_executions("ticking", "three runs succeeded", secs(30), |e| {
            e.iter().filter(|x| x.status == "succeeded").count() >= 3
        })
        .await;
    for exec in execs.iter().filter(|e| e.status == "succeeded") {
        let lag = exec.started_at.unwrap().duration_since(exec.scheduled_at);
        assert!(lag < SignedDuration::from_millis(500), "{} started {lag:?} late", exec.id);
    }
    wait_until("the failed delivery is logged", secs(30), async || {
        server.log().contains("not delivered after 3 tries").then_some(())
    })
    .await;
}

/// A job's `notify` rules (beyond Dkron, whose users asked for "only on failure"): with `on: [failure, recovery]`
/// a success notifies nothing, the first failure does, a second failure within `repeat_after` does not, and the
/// success after them does (a recovery); starts notify nothing. Rules that name no event are refused, naming it.
#[tokio::test(flavor = "multi_thread")]
async fn notify_rules_send_failures_once_per_streak_and_the_recovery() {
    let (base, received) = receiver().await;
    let server = Server::fresh(&[
        "--webhook-endpoint",
        &format!("{base}/post"),
        "--pre-webhook-endpoint",
        &format!("{base}/pre"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("failing");
    let command = format!("test ! -e {}", failing.display());
    let job = with(
        shell_job("watched", "@manually", &command),
        json!({"notify": {"on": ["failure", "recovery"], "repeat_after": "1h"}}),
    );
    server.create_job(&job).await;
    for (run, fail) in [false, true, true, false].into_iter().enumerate() {
        if fail {
            std::fs::write(&failing, "").unwrap();
        } else {
            let _ = std::fs::remove_file(&failing);
        }
        server.run("watched").await;
        server
            .wait_executions("watched", "the run ended", secs(20), |e| {
                e.iter().filter(|x| x.is_final()).count() == run + 1
            })
            .await;
    }
    let bodies = wait_until("the recovery's webhook arrived", secs(20), async || {
        let posts = got(&received, "/post");
        (posts.len() >= 2).then_some(posts)
    })
    .await;
    let statuses: Vec<String> = bodies
        .iter()
        .map(|(_, _, body)| serde_json::from_str::<Value>(body).unwrap()["Status"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(statuses, ["failed", "succeeded"], "the first failure and the recovery only");
    assert!(got(&received, "/pre").is_empty(), "starts are not among the events");

    let refused =
        server.post("/v1/jobs", &with(job.clone(), json!({"notify": {"on": ["failure", "sometimes"]}}))).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(refused.text.contains("notify.on[1]"), "{}", refused.text);
    let stored = server.get("/v1/jobs/watched").await;
    assert_eq!(stored.json["notify"], json!({"on": ["failure", "recovery"], "repeat_after": "1h"}));
}

/// Every request a catch-all receiver got: method, path with query, the `x-token` and `x-kairos-delivery`
/// headers, and the body.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    token: Option<String>,
    delivery: Option<String>,
    body: String,
}

type Requests = Arc<Mutex<Vec<Request>>>;

/// A receiver that answers 200 to anything and keeps what it got; while `refusing` is set it answers 503 and
/// keeps nothing.
async fn catch_all() -> (String, Requests, Arc<AtomicBool>) {
    let requests: Requests = Arc::default();
    let refusing = Arc::new(AtomicBool::new(false));
    let (kept, refuse) = (requests.clone(), refusing.clone());
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
        let (kept, refuse) = (kept.clone(), refuse.clone());
        async move {
            if refuse.load(Ordering::SeqCst) {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not now");
            }
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let path = uri.path_and_query().map_or(uri.path().to_string(), |p| p.to_string());
            kept.lock().unwrap().push(Request {
                path,
                token: header("x-token"),
                delivery: header("x-kairos-delivery"),
                body,
            });
            (axum::http::StatusCode::OK, "thanks")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), requests, refusing)
}

fn requests_to(requests: &Requests, prefix: &str) -> Vec<Request> {
    requests.lock().unwrap().iter().filter(|r| r.path.starts_with(prefix)).cloned().collect()
}

/// The `notifications` of a job's executions, by execution id, as the API shows them.
async fn deliveries(server: &Server, job: &str) -> Vec<(String, Vec<serde_json::Value>)> {
    let reply = server.get(&format!("/v1/jobs/{job}/executions")).await;
    let execs = reply.json.as_array().cloned().unwrap_or_default();
    execs
        .into_iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap_or_default().to_string();
            (id, e["notifications"].as_array().cloned().unwrap_or_default())
        })
        .collect()
}

/// A job's own webhooks (with its template, `{{.Event}}` and `{{.Metadata}}`) and Cronitor get their
/// notifications, and how every delivery ended is recorded on the execution: sent, or failed after its tries
/// with the error; the UI's execution page lists them.
#[tokio::test(flavor = "multi_thread")]
async fn every_delivery_is_recorded_on_its_execution_and_a_jobs_own_webhooks_get_the_event() {
    let (base, requests, _) = catch_all().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = Server::fresh(&[
        "--webhook-endpoint",
        &format!("{base}/post"),
        "--cronitor-endpoint",
        &format!("{base}/cronitor/p/KEY"),
    ])
    .await;
    let notify = serde_json::json!({
        "webhooks": [
            {"url": format!("{base}/job"), "payload": "{{.Event}} {{.JobName}} team={{.Metadata.team}}", "headers": {"X-Token": "j0b"}},
            {"url": format!("http://{closed}/gone")}
        ]
    });
    let job = with(
        shell_job("flaky", "@manually", "echo no; exit 1"),
        serde_json::json!({"metadata": {"team": "ops"}, "notify": notify}),
    );
    server.create_job(&job).await;
    server.run("flaky").await;
    // The refused webhook ends after its three tries (about 3 s of pauses); then all five are recorded.
    let recorded = wait_until("five deliveries recorded on the execution", secs(40), async || {
        let all = deliveries(&server, "flaky").await;
        let (_, records) = all.into_iter().next()?;
        (records.len() >= 5).then_some(records)
    })
    .await;
    let outcome = |kind: &str, target_part: &str| -> Vec<(String, String, u64)> {
        recorded
            .iter()
            .filter(|r| r["kind"] == kind && r["target"].as_str().unwrap_or_default().contains(target_part))
            .map(|r| {
                let (event, outcome) =
                    (r["event"].as_str().unwrap_or_default(), r["outcome"].as_str().unwrap_or_default());
                (event.to_string(), outcome.to_string(), r["attempts"].as_u64().unwrap_or_default())
            })
            .collect()
    };
    assert_eq!(outcome("webhook", "/post"), [("failure".to_string(), "sent".to_string(), 1)], "{recorded:#?}");
    assert_eq!(outcome("job_webhook", "/job"), [("failure".to_string(), "sent".to_string(), 1)], "{recorded:#?}");
    assert_eq!(outcome("job_webhook", "/gone"), [("failure".to_string(), "failed".to_string(), 3)], "{recorded:#?}");
    let gone = recorded.iter().find(|r| r["target"].as_str().unwrap_or_default().contains("/gone")).unwrap();
    assert!(gone["error"].as_str().unwrap_or_default().contains("/gone"), "{gone}");
    let cronitor: Vec<(String, String)> =
        outcome("cronitor", "/cronitor/p/KEY/flaky").into_iter().map(|(e, o, _)| (e, o)).collect();
    assert_eq!(
        cronitor,
        [("start".to_string(), "sent".to_string()), ("failed".to_string(), "sent".to_string())],
        "{recorded:#?}"
    );

    let job_hooks = requests_to(&requests, "/job");
    assert_eq!(job_hooks.len(), 1, "{job_hooks:?}");
    assert_eq!((job_hooks[0].body.as_str(), job_hooks[0].token.as_deref()), ("failure flaky team=ops", Some("j0b")));
    let id = deliveries(&server, "flaky").await[0].0.clone();
    assert_eq!(job_hooks[0].delivery.as_deref(), Some(format!("flaky/{id}/job_webhook/failure").as_str()));
    let pings: Vec<String> = requests_to(&requests, "/cronitor/p/KEY/flaky").into_iter().map(|r| r.path).collect();
    assert_eq!(pings.len(), 2, "{pings:?}");
    assert!(pings[0].contains("state=run") && pings[0].contains(&format!("series={id}")), "{pings:?}");
    assert!(pings[1].contains("state=fail") && pings[1].contains("status_code=1"), "{pings:?}");

    // The UI's execution page lists the deliveries.
    let page = server.get(&format!("/ui/jobs/flaky/executions/{id}")).await;
    assert!(page.text.contains("Notifications") && page.text.contains("job_webhook"), "{}", page.text);
    // A job whose webhook template does not parse is refused, naming it.
    let bad = with(
        shell_job("bad", "@manually", "true"),
        serde_json::json!({"notify": {"webhooks": [{"url": "http://x/", "payload": "{{.Event"}]}}),
    );
    let reply = server.post("/v1/jobs", &bad).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.text.contains("notify.webhooks[0].payload"), "{}", reply.text);
    assert!(!server.job_exists("bad").await);
}

/// `missed` alerts (what people buy Cronitor and Healthchecks for): a job whose tags match no node cannot succeed;
/// once `alert_if_not_succeeded_within` has passed, one `missed` alert goes out, and none more while it stays
/// missed; when a node that matches appears and the job succeeds, one `recovery` goes out.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_no_node_can_run_raises_one_missed_alert_and_a_recovery_once_a_node_appears() {
    let (base, requests, _) = catch_all().await;
    let mut cluster = Cluster::prepare(1, &[("late", &["pool=late"])], &[]);
    cluster.launch_node(0).await;
    cluster.wait_formed().await;
    let notify = json!({
        "on": ["missed", "recovery"],
        "alert_if_not_succeeded_within": "3s",
        "webhooks": [{"url": format!("{base}/alert"), "payload": "{{.Event}} {{.JobName}}: {{.Error}}"}]
    });
    let job = with(shell_job("nightly", "* * * * * *", "true"), json!({"tags": {"pool": "late"}, "notify": notify}));
    cluster.create_job(&job).await;
    let alerts = || requests_to(&requests, "/alert").into_iter().map(|r| r.body).collect::<Vec<_>>();
    wait_until("the missed alert arrived", secs(30), async || (!alerts().is_empty()).then_some(())).await;
    let first = alerts();
    assert!(first[0].starts_with("missed nightly: no success within 3s (never succeeded)"), "{first:?}");
    // The node that can run it appears; its first success sends the recovery.
    cluster.launch_node(1).await;
    wait_until("the recovery arrived", secs(60), async || {
        alerts().iter().any(|a| a.starts_with("recovery")).then_some(())
    })
    .await;
    let all = alerts();
    let missed = all.iter().filter(|a| a.starts_with("missed")).count();
    let recovered = all.iter().filter(|a| a.starts_with("recovery")).count();
    assert_eq!((missed, recovered), (1, 1), "one missed alert while it stayed missed, one recovery: {all:?}");
    let record = cluster.any_api().get("/v1/jobs/nightly").await;
    assert!(record.status == 200, "{}", record.text);
}

/// Notifications survive the leader's death: three servers with the same webhook, jobs firing every second,
/// `kill -9` of the leader in the middle, while the receiver refuses for a moment (so the leader dies with
/// deliveries it is still trying: they were lost with it before the outbox). Every finished execution's webhook
/// arrives, and exactly once per execution by its `X-Kairos-Delivery` key (a receiver that drops repeats of a key
/// sees each once); the new leader records each delivery on its execution.
#[tokio::test(flavor = "multi_thread")]
async fn every_execution_notifies_exactly_once_across_a_leader_kill() {
    let (base, requests, refusing) = catch_all().await;
    let endpoint = format!("{base}/post");
    let mut cluster = Cluster::start(3, &[], &["--webhook-endpoint", &endpoint, "--execution-lease", "3s"]).await;
    let leader = cluster.wait_formed().await;
    let names: Vec<String> = (0..4).map(|i| format!("tick-{i}")).collect();
    for name in &names {
        cluster.create_job(&shell_job(name, "* * * * * *", "true")).await;
    }
    wait_until("webhooks arrive", secs(30), async || (requests_to(&requests, "/post").len() >= 8).then_some(())).await;
    // Refused for 1.5 s (two of a delivery's three tries, which span 3 s): the leader dies trying.
    refusing.store(true, Ordering::SeqCst);
    tokio::time::sleep(millis(1500)).await;
    cluster.kill9(leader).await;
    let new_leader = cluster.wait_leader().await;
    assert_ne!(new_leader, leader);
    refusing.store(false, Ordering::SeqCst);
    // Runs go on under the new leader; then the jobs stop.
    let fired_after = requests_to(&requests, "/post").len() + 8;
    wait_until("webhooks arrive under the new leader", secs(30), async || {
        (requests_to(&requests, "/post").len() >= fired_after).then_some(())
    })
    .await;
    cluster.disable_all(&names).await;
    let history = cluster.wait_quiet(&names, secs(30)).await;
    let finished: Vec<(String, String)> = history
        .iter()
        .flat_map(|(job, execs)| execs.iter().filter(|e| e.is_final()).map(move |e| (job.clone(), e.id.clone())))
        .collect();
    assert!(finished.len() >= 12, "{finished:?}");
    let keys = |requests: &Requests| -> Vec<String> {
        requests_to(requests, "/post").into_iter().filter_map(|r| r.delivery).collect()
    };
    wait_until("every finished execution's webhook arrived", secs(60), async || {
        let got = keys(&requests);
        let missing: Vec<String> = finished
            .iter()
            .map(|(job, id)| format!("{job}/{id}/webhook/"))
            .filter(|prefix| !got.iter().any(|k| k.starts_with(prefix.as_str())))
            .collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("missing {missing:?}")) }
    })
    .await;
    let got = keys(&requests);
    let distinct: std::collections::BTreeSet<&String> = got.iter().collect();
    for (job, id) in &finished {
        let per_exec = distinct.iter().filter(|k| k.starts_with(&format!("{job}/{id}/webhook/"))).count();
        assert_eq!(per_exec, 1, "{job}/{id}: {got:?}");
    }
    let repeats = got.len() - distinct.len();
    cluster.note(&format!("{} deliveries, {repeats} repeated by the new leader", got.len()));
    // The new leader records the deliveries on the executions (including those the old one had sent).
    let api = cluster.server(new_leader);
    wait_until("every finished execution records its webhook as sent", secs(60), async || {
        for job in &names {
            let reply = api.get(&format!("/v1/jobs/{job}/executions")).await;
            for exec in reply.json.as_array().cloned().unwrap_or_default() {
                let finished = !matches!(exec["status"].as_str(), Some("pending" | "running"));
                let sent = exec["notifications"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|d| d["kind"] == "webhook" && d["outcome"] == "sent"));
                if finished && !sent {
                    return Err(format!("{job}/{} has no webhook recorded: {exec}", exec["id"]));
                }
            }
        }
        Ok(())
    })
    .await;
}
