//! Webhooks as a receiver sees them (Dkron's `--webhook-*` and `--pre-webhook-*`): a real HTTP server on
//! loopback gets one pre-webhook when a run starts and one webhook when it finishes, with the configured headers
//! and Dkron's template rendered; a receiver that is down changes nothing for the runs; a template that does not
//! parse stops the node at start, naming the flag.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::post;
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
