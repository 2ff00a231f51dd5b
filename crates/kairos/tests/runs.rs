//! Runs as a user observes them through the API: jobs fire on whole seconds without gaps or duplicates, follow
//! their concurrency, retry, chaining, ephemeral, `@at` and disabled rules, can be cancelled (the whole process
//! group goes), keep bounded output and a bounded history, and the http executor checks what it is told to.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{any, get};
use common::*;
use futures::StreamExt;
use jiff::SignedDuration;

fn ms(d: SignedDuration) -> i64 {
    d.as_millis() as i64
}

/// Executions sorted oldest slot first, first attempts only.
fn first_attempts_oldest_first(execs: &[Exec]) -> Vec<Exec> {
    let mut v: Vec<Exec> = execs.iter().filter(|e| e.attempt == 1).cloned().collect();
    v.sort_by_key(|e| e.scheduled_at);
    v
}

/// Every slot one second after the previous: no gap and no duplicate.
#[track_caller]
fn assert_consecutive_seconds(execs: &[Exec]) {
    for pair in execs.windows(2) {
        assert_eq!(
            pair[1].scheduled_at.duration_since(pair[0].scheduled_at),
            SignedDuration::from_secs(1),
            "slots {} and {} are not one second apart",
            pair[0].scheduled_at,
            pair[1].scheduled_at
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_every_second_job_fires_each_whole_second_once_and_records_its_output() {
    let server = Server::fresh(&[]).await;
    let created = Timestamp::now();
    server
        .create_job(&json!({
            "name": "ticker", "schedule": "* * * * * *", "executor": "shell",
            "executor_config": {"command": "echo \"tick $KAIROS_JOB_NAME $ENV_JOB_NAME $A$B\"", "shell": "true",
                                "env": "A=1,B=2"}
        }))
        .await;

    let execs = server
        .wait_executions("ticker", "six finished runs", secs(30), |e| e.iter().filter(|x| x.is_final()).count() >= 6)
        .await;
    for pair in execs.windows(2) {
        assert!(pair[0].scheduled_at > pair[1].scheduled_at, "listed newest first, without duplicates");
    }
    let oldest_first: Vec<Exec> = execs.iter().rev().cloned().collect();
    assert_consecutive_seconds(&oldest_first);
    for exec in &execs {
        assert_eq!(exec.scheduled_at.subsec_nanosecond(), 0, "{} is not a whole second", exec.scheduled_at);
        assert!(exec.scheduled_at > created - secs(1), "slot {} is older than the job", exec.scheduled_at);
        assert_eq!((exec.trigger.as_str(), exec.attempt, exec.job_name.as_str()), ("schedule", 1, "ticker"));
    }
    let finished: Vec<&Exec> = execs.iter().filter(|e| e.is_final()).collect();
    for exec in &finished {
        assert_eq!((exec.status.as_str(), exec.exit_code, exec.success), ("succeeded", Some(0), true), "{exec:?}");
        assert!(exec.output.contains("tick ticker ticker 12"), "output: {:?}", exec.output);
        let started = exec.started_at.expect("started_at");
        let lag = started.duration_since(exec.scheduled_at);
        assert!(lag >= SignedDuration::ZERO && lag < SignedDuration::from_secs(1), "fire lag {lag} of {exec:?}");
        assert!(exec.finished_at.expect("finished_at") >= started);
        assert_eq!(exec.node_name, server.node_name);
    }

    let one = server.execution("ticker", &finished[0].id).await;
    assert_eq!((one.id.as_str(), one.scheduled_at), (finished[0].id.as_str(), finished[0].scheduled_at));
    assert!(one.output.contains("tick ticker ticker 12"));

    // Executions page and sort like jobs.
    let page = server.get("/v1/jobs/ticker/executions?_start=1&_end=3").await;
    let items = page.expect(200).items();
    assert_eq!(items.len(), 2);
    assert!(page.total_count().is_some_and(|n| n >= 6), "X-Total-Count {:?}", page.total_count());
    let oldest = server.get("/v1/jobs/ticker/executions?_order=asc&_end=1").await.expect(200).items();
    assert_eq!(oldest[0]["id"].as_str(), Some(oldest_first[0].id.as_str()));
    let succeeded = server.get("/v1/jobs/ticker/executions?status=succeeded").await.expect(200).items();
    assert!(succeeded.len() >= 6 && succeeded.iter().all(|e| e["status"] == "succeeded"));

    let job = server.job("ticker").await;
    assert!(job["success_count"].as_u64().unwrap() >= 6, "{job}");
    assert_eq!(job["error_count"], 0);
}

/// A leader launches its own runs only once their start is committed (issue 15: whoever leads next must read every
/// run it may have launched as running): runs that ask the API about themselves as they start find themselves
/// running, on this node. Twenty jobs start together each second, so a start reported
/// after the launch would lose the race to some of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_on_the_leader_is_recorded_running_before_it_starts() {
    let server = Server::fresh(&[]).await;
    let seen = server.data_dir().join("seen");
    std::fs::create_dir_all(&seen).unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("self-{i:02}")).collect();
    for name in &names {
        let url = server.url(&format!("/v1/jobs/{name}/executions/"));
        let command =
            format!("curl -s \"{url}$KAIROS_EXECUTION_ID\" > '{}'/{name}-$KAIROS_EXECUTION_ID.json", seen.display());
        server
            .create_job(&json!({"name": name, "schedule": "* * * * * *", "executor": "shell",
                                "executor_config": {"command": command, "shell": "true"}}))
            .await;
    }
    for name in &names {
        let execs = server
            .wait_executions(name, "three finished runs", secs(30), |e| e.iter().filter(|x| x.is_final()).count() >= 3)
            .await;
        for exec in execs.iter().filter(|e| e.is_final()) {
            let text = std::fs::read_to_string(seen.join(format!("{name}-{}.json", exec.id))).unwrap();
            let record: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(record["status"], "running", "{name} run {} saw itself as: {text}", exec.id);
            assert_eq!(record["node_name"], server.node_name.as_str(), "{text}");
            // Recorded as it was committed, then moved to the true launch by the run's finish.
            let started: Option<Timestamp> = record["started_at"].as_str().and_then(|t| t.parse().ok());
            assert!(started.is_some() && started <= exec.started_at, "saw {text}, then {:?}", exec.started_at);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_full_output_is_served_by_id_while_lists_keep_a_tail() {
    let server = Server::fresh(&[]).await;
    let command = "head -c 20000 /dev/zero | tr '\\0' x; echo; echo END-OF-OUTPUT";
    server.create_job(&shell_job("loud", "@manually", command)).await;
    server.run("loud").await;
    let execs = server.wait_executions("loud", "the run finished", secs(20), |e| e.len() == 1 && e[0].is_final()).await;
    assert_eq!(execs[0].status, "succeeded");
    assert!(execs[0].output.len() < 20_000, "a list carries only a tail ({} bytes)", execs[0].output.len());
    assert!(execs[0].output.contains("END-OF-OUTPUT"), "the tail is the end of the output");

    let full = server.execution("loud", &execs[0].id).await;
    assert!(full.output.len() > 20_000, "full output has {} bytes", full.output.len());
    assert!(full.output.starts_with("xxxxxxxx"), "full output starts {:?}", &full.output[..100]);
    assert!(full.output.contains("END-OF-OUTPUT"));

    let limited = server.get(&format!("/v1/jobs/loud/executions/{}?output_size_limit=14", execs[0].id)).await;
    let output = limited.expect(200).json["output"].as_str().unwrap().to_string();
    assert!(output.len() <= 14 && "END-OF-OUTPUT\n".ends_with(&output), "limited output {output:?}");
    assert_eq!(limited.json["output_truncated"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_output_is_capped_by_output_max_bytes() {
    let server = Server::fresh(&["--output-max-bytes", "1000"]).await;
    server.create_job(&shell_job("capped", "@manually", "head -c 5000 /dev/zero | tr '\\0' y; echo END")).await;
    server.run("capped").await;
    let execs =
        server.wait_executions("capped", "the run finished", secs(20), |e| e.len() == 1 && e[0].is_final()).await;
    assert_eq!(execs[0].status, "succeeded", "a capped output does not fail the run");
    let full = server.execution("capped", &execs[0].id).await;
    let stored = full.output.len();
    assert!((900..=1300).contains(&stored), "stored output is {stored} bytes, cap 1000");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_forbid_records_overlapping_slots_as_skipped() {
    let server = Server::fresh(&[]).await;
    server.create_job(&with(shell_job("single", "* * * * * *", "sleep 3"), json!({"concurrency": "forbid"}))).await;

    let execs = server
        .wait_executions("single", "a run succeeded and slots were skipped", secs(30), |e| {
            let active = e.iter().filter(|x| x.is_active()).count();
            assert!(active <= 1, "forbid allows one active execution, saw {active}:\n{}", summary(e));
            count(e, "succeeded") >= 1 && count(e, "skipped") >= 3
        })
        .await;
    assert_eq!(count(&execs, "failed") + count(&execs, "cancelled") + count(&execs, "lost"), 0, "{}", summary(&execs));
    // Skipped slots are recorded, so the slots stay gap-free.
    assert_consecutive_seconds(&first_attempts_oldest_first(&execs));
    for skipped in execs.iter().filter(|e| e.status == "skipped") {
        assert!(skipped.finished_at.is_some() && !skipped.success, "{skipped:?}");
        assert_eq!(skipped.trigger, "schedule");
        // A slot is skipped only while an earlier run is still going.
        let overlapped = execs.iter().any(|r| {
            r.status != "skipped"
                && r.scheduled_at < skipped.scheduled_at
                && r.finished_at.is_none_or(|f| f > skipped.scheduled_at - millis(500))
        });
        assert!(overlapped, "{} was skipped but nothing was running", skipped.scheduled_at);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_replace_cancels_the_running_execution_for_the_new_one() {
    let server = Server::fresh(&[]).await;
    server.create_job(&with(shell_job("newest", "* * * * * *", "sleep 30"), json!({"concurrency": "replace"}))).await;

    let execs = server
        .wait_executions("newest", "three runs were replaced", secs(30), |e| {
            let active = e.iter().filter(|x| x.is_active()).count();
            assert!(
                active <= 2,
                "replace keeps at most the new run and the one being stopped, saw {active}:\n{}",
                summary(e)
            );
            count(e, "cancelled") >= 3
        })
        .await;
    assert_eq!(
        count(&execs, "succeeded") + count(&execs, "failed") + count(&execs, "skipped"),
        0,
        "{}",
        summary(&execs)
    );
    let newest_cancelled = execs.iter().filter(|e| e.status == "cancelled").map(|e| e.scheduled_at).max().unwrap();
    for exec in &execs {
        if exec.status == "cancelled" {
            // Stopped right after the next slot fired, not after its own 30 s.
            let replaced_by = exec.scheduled_at + secs(1);
            let stopped = exec.finished_at.expect("finished_at");
            assert!(stopped.duration_since(replaced_by) < SignedDuration::from_secs(3), "{exec:?}");
        } else {
            assert!(exec.scheduled_at > newest_cancelled, "only the newest slot may still run: {exec:?}");
        }
    }

    server.post_empty("/v1/jobs/newest/toggle").await.expect(200);
    stop_active(&server, "newest").await;
}

/// Cancel whatever still runs of a job, and wait until nothing does.
async fn stop_active(server: &Server, job: &str) {
    wait_until(&format!("no execution of {job} is active"), secs(20), async || {
        let execs = server.executions(job).await;
        for exec in execs.iter().filter(|e| e.is_active()) {
            server.post_empty(&format!("/v1/jobs/{job}/executions/{}/cancel", exec.id)).await;
        }
        execs.iter().all(Exec::is_final).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_allow_lets_runs_overlap() {
    let server = Server::fresh(&[]).await;
    server.create_job(&with(shell_job("overlap", "* * * * * *", "sleep 3"), json!({"concurrency": "allow"}))).await;

    server
        .wait_executions("overlap", "two runs at once", secs(30), |e| {
            e.iter().filter(|x| x.status == "running").count() >= 2
        })
        .await;
    let execs = server.wait_executions("overlap", "two runs succeeded", secs(30), |e| count(e, "succeeded") >= 2).await;
    assert_eq!(
        count(&execs, "skipped") + count(&execs, "cancelled") + count(&execs, "failed"),
        0,
        "{}",
        summary(&execs)
    );
    server.post_empty("/v1/jobs/overlap/toggle").await.expect(200);
    stop_active(&server, "overlap").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_at_its_running_limit_queues_runs_and_records_those_past_its_queue_as_skipped() {
    let server = Server::fresh(&["--max-running", "4", "--max-queued", "8"]).await;
    let scratch = tempfile::tempdir().unwrap();
    let (alive, counts) = (scratch.path().join("alive"), scratch.path().join("counts"));
    std::fs::create_dir(&alive).unwrap();
    std::fs::create_dir(&counts).unwrap();
    // Each run marks itself alive, counts the runs alive with it, holds its place for a second, and leaves.
    let command = format!(
        "mkdir {alive}/$KAIROS_JOB_NAME && ls {alive} | wc -l > {counts}/$KAIROS_JOB_NAME && sleep 1 && \
         rmdir {alive}/$KAIROS_JOB_NAME",
        alive = alive.display(),
        counts = counts.display()
    );
    // 20 jobs due at the same instant: 4 places, 8 in the queue, 8 past it.
    let at = Timestamp::from_second(Timestamp::now().as_second() + 4).unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("burst-{i:02}")).collect();
    for name in &names {
        server.create_job(&shell_job(name, &format!("@at {at}"), &command)).await;
    }
    assert!(Timestamp::now() < at, "the jobs were created before their instant");
    let mut execs = Vec::new();
    for name in &names {
        let job_execs =
            server.wait_executions(name, "its run is final", secs(60), |e| !e.is_empty() && e[0].is_final()).await;
        execs.extend(job_execs);
    }
    assert_eq!(execs.len(), 20, "{}", summary(&execs));
    assert_eq!(count(&execs, "succeeded"), 12, "4 ran at once and 8 waited for a place:\n{}", summary(&execs));
    assert_eq!(count(&execs, "skipped"), 8, "past the queue runs are skipped, visibly:\n{}", summary(&execs));
    for skipped in execs.iter().filter(|e| e.status == "skipped") {
        let error = skipped.error.as_deref().unwrap_or_default();
        assert!(error.contains("is overloaded") && error.contains("--max-queued 8"), "{skipped:?}");
    }
    // The queued ones ran late, once a place was free, and none of them is lost.
    let late = execs
        .iter()
        .filter(|e| e.started_at.is_some_and(|s| s.duration_since(at) > SignedDuration::from_millis(900)))
        .count();
    assert!(late >= 8, "the queued runs started after the first ones ended:\n{}", summary(&execs));
    let mut most = 0;
    for entry in std::fs::read_dir(&counts).unwrap() {
        let alive_with: usize = std::fs::read_to_string(entry.unwrap().path()).unwrap().trim().parse().unwrap();
        most = most.max(alive_with);
    }
    assert_eq!(std::fs::read_dir(&counts).unwrap().count(), 12, "one count per run that ran");
    assert!((1..=4).contains(&most), "at most 4 runs were alive at once, saw {most}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_its_node_is_too_busy_for_is_skipped_or_retried_as_its_job_says() {
    // One place and no queue: while `hog` runs, every other run finds the node full.
    let server = Server::fresh(&["--max-running", "1", "--max-queued", "0"]).await;
    let scratch = tempfile::tempdir().unwrap();
    let release = scratch.path().join("release");
    let hog = format!("while [ ! -e {} ]; do sleep 0.05; done", release.display());
    server.create_job(&shell_job("hog", "@manually", &hog)).await;
    server.create_job(&shell_job("impatient", "@manually", "echo ran")).await;
    server
        .create_job(&with(
            shell_job("patient", "@manually", "echo ran"),
            json!({"on_overload": "retry", "retries": 20, "retry_backoff": "200ms", "retry_backoff_max": "400ms"}),
        ))
        .await;
    server.run("hog").await;
    server
        .wait_executions("hog", "hog holds the one place", secs(30), |e| e.iter().any(|x| x.status == "running"))
        .await;

    server.run("impatient").await;
    server.run("patient").await;
    let impatient =
        server.wait_executions("impatient", "its run is final", secs(30), |e| e.iter().all(Exec::is_final)).await;
    server
        .wait_executions("patient", "a retry after a skipped attempt", secs(30), |e| {
            e.iter().any(|x| x.attempt >= 2) && e.iter().any(|x| x.status == "skipped")
        })
        .await;
    std::fs::write(&release, b"").unwrap();
    let patient =
        server.wait_executions("patient", "an attempt succeeded", secs(60), |e| count(e, "succeeded") == 1).await;

    assert_eq!(impatient.len(), 1, "on_overload: skip (the default) does not retry:\n{}", summary(&impatient));
    let error = impatient[0].error.as_deref().unwrap_or_default();
    assert_eq!(impatient[0].status, "skipped", "{}", summary(&impatient));
    assert!(error.contains("is overloaded") && error.contains("--max-running 1"), "{error}");
    let mut attempts = patient.clone();
    attempts.sort_by_key(|e| e.attempt);
    assert_eq!(attempts[0].trigger, "manual");
    assert!(attempts[1..].iter().all(|e| e.trigger == "retry"), "{}", summary(&attempts));
    let last = attempts.last().unwrap();
    assert_eq!(last.status, "succeeded", "the attempt after the node had room ran:\n{}", summary(&attempts));
    for skipped in &attempts[..attempts.len() - 1] {
        let error = skipped.error.as_deref().unwrap_or_default();
        assert_eq!(skipped.status, "skipped", "{}", summary(&attempts));
        assert!(error.contains("is overloaded"), "{error}");
        assert_eq!(skipped.scheduled_at, last.scheduled_at, "every attempt belongs to the same slot");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_run_is_retried_with_backoff_until_the_retries_are_used_up() {
    let server = Server::fresh(&[]).await;
    server
        .create_job(&with(
            shell_job("flaky", "@manually", "echo attempt; exit 3"),
            json!({"retries": 2, "retry_backoff": "100ms"}),
        ))
        .await;
    server.run("flaky").await;

    let execs = server
        .wait_executions("flaky", "three attempts finished", secs(30), |e| e.len() >= 3 && e.iter().all(Exec::is_final))
        .await;
    let mut attempts = execs.clone();
    attempts.sort_by_key(|e| e.attempt);
    assert_eq!(attempts.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(attempts.iter().map(|e| e.trigger.as_str()).collect::<Vec<_>>(), ["manual", "retry", "retry"]);
    for exec in &attempts {
        assert_eq!((exec.status.as_str(), exec.exit_code, exec.success), ("failed", Some(3), false), "{exec:?}");
        assert_eq!(exec.scheduled_at, attempts[0].scheduled_at, "every attempt belongs to the same slot");
    }
    for pair in attempts.windows(2) {
        // 100ms, then 200ms, each with at most 20% jitter.
        let waited = pair[1].started_at.unwrap().duration_since(pair[0].finished_at.unwrap());
        assert!(ms(waited) >= 75, "retry {} started {waited} after the failure", pair[1].attempt);
        assert!(ms(waited) < 5_000, "retry {} started {waited} after the failure", pair[1].attempt);
    }
    let job = server.job("flaky").await;
    assert_eq!((job["status"].as_str(), job["error_count"].as_u64()), (Some("failed"), Some(3)));

    tokio::time::sleep(millis(800)).await;
    assert_eq!(server.executions("flaky").await.len(), 3, "no attempt after the retries are used up");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_that_succeeds_ends_the_retries() {
    let server = Server::fresh(&[]).await;
    let scratch = tempfile::tempdir().unwrap();
    let flag = scratch.path().join("failed-once");
    let command = format!("if [ -e {0} ]; then echo recovered; else touch {0}; exit 1; fi", flag.display());
    server
        .create_job(&with(
            shell_job("recovers", "@manually", &command),
            json!({"retries": 3, "retry_backoff": "100ms"}),
        ))
        .await;
    server.run("recovers").await;

    server.wait_executions("recovers", "a retry succeeded", secs(30), |e| count(e, "succeeded") == 1).await;
    tokio::time::sleep(millis(800)).await;
    let execs_later = server.executions("recovers").await;
    assert_eq!(execs_later.len(), 2, "{}", summary(&execs_later));
    let mut attempts = execs_later;
    attempts.sort_by_key(|e| e.attempt);
    assert_eq!((attempts[0].attempt, attempts[0].status.as_str()), (1, "failed"));
    assert_eq!(
        (attempts[1].attempt, attempts[1].status.as_str(), attempts[1].trigger.as_str()),
        (2, "succeeded", "retry")
    );
    assert!(attempts[1].output.contains("recovered"));
}

#[tokio::test(flavor = "multi_thread")]
async fn children_run_after_their_parent_succeeds_and_not_after_it_fails() {
    let server = Server::fresh(&[]).await;
    server.create_job(&shell_job("good", "@manually", "echo parent-ok")).await;
    server.create_job(&shell_job("bad", "@manually", "exit 1")).await;
    server.create_job(&with(shell_job("after-good", "", "echo child-ran"), json!({"parent_job": "good"}))).await;
    server.create_job(&with(shell_job("after-bad", "", "echo child-ran"), json!({"parent_job": "bad"}))).await;
    assert_eq!(server.job("good").await["dependent_jobs"], json!(["after-good"]));
    assert!(server.executions("after-good").await.is_empty(), "a child does not run by itself");

    server.run("good").await;
    server.run("bad").await;
    let child =
        server.wait_executions("after-good", "the child ran", secs(20), |e| e.len() == 1 && e[0].is_final()).await;
    let parent = server.executions("good").await;
    assert_eq!((child[0].status.as_str(), child[0].trigger.as_str()), ("succeeded", "parent"));
    assert!(child[0].output.contains("child-ran"));
    assert!(
        child[0].started_at.unwrap() >= parent[0].finished_at.unwrap(),
        "the child starts after the parent finished: {child:?} {parent:?}"
    );

    server.wait_executions("bad", "the parent failed", secs(20), |e| e.len() == 1 && e[0].status == "failed").await;
    tokio::time::sleep(millis(1500)).await;
    assert!(server.executions("after-bad").await.is_empty(), "no child run after a failed parent");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ephemeral_job_is_deleted_after_it_succeeds_and_kept_when_it_fails() {
    let server = Server::fresh(&[]).await;
    let once = with(shell_job("one-shot", "@manually", "echo once"), json!({"ephemeral": true}));
    server.post("/v1/jobs?runoncreate=true", &once).await.expect(201);
    let failing = with(shell_job("one-shot-fails", "@manually", "exit 1"), json!({"ephemeral": true}));
    server.post("/v1/jobs?runoncreate=true", &failing).await.expect(201);

    wait_until("the ephemeral job is gone", secs(20), async || (!server.job_exists("one-shot").await).then_some(()))
        .await;
    server
        .wait_executions("one-shot-fails", "its run failed", secs(20), |e| e.len() == 1 && e[0].status == "failed")
        .await;
    assert!(server.job_exists("one-shot-fails").await, "a failed ephemeral job stays for inspection");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_at_schedule_fires_exactly_once_at_its_instant() {
    let server = Server::fresh(&[]).await;
    let at = Timestamp::from_second(Timestamp::now().as_second() + 3).unwrap();
    server.create_job(&shell_job("once", &format!("@at {at}"), "echo at-ran")).await;
    assert_eq!(server.job("once").await["next"].as_str(), Some(at.to_string().as_str()));

    let execs =
        server.wait_executions("once", "the run finished", secs(20), |e| !e.is_empty() && e[0].is_final()).await;
    assert_eq!(execs.len(), 1);
    assert_eq!((execs[0].scheduled_at, execs[0].status.as_str()), (at, "succeeded"));
    assert!(execs[0].started_at.unwrap() >= at, "not before its instant");
    // Once the job shows no next fire (Go's zero time, as in Dkron), the scheduler has nothing left to fire.
    wait_until("the job has no next fire", secs(10), async || {
        (server.job("once").await["next"] == GO_ZERO_TIME).then_some(())
    })
    .await;
    assert_eq!(server.executions("once").await.len(), 1, "@at fires once");
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_jobs_never_fire() {
    let server = Server::fresh(&[]).await;
    server.create_job(&with(shell_job("off", "* * * * * *", "true"), json!({"disabled": true}))).await;
    server.create_job(&shell_job("turned-off", "* * * * * *", "true")).await;
    server.wait_executions("turned-off", "two runs", secs(20), |e| e.len() >= 2).await;
    server.post_empty("/v1/jobs/turned-off/toggle").await.expect(200);
    // Let a slot that was already being decided settle, then nothing more may come.
    tokio::time::sleep(millis(1500)).await;
    let settled = server.executions("turned-off").await.len();
    tokio::time::sleep(secs(3)).await;
    assert_eq!(server.executions("turned-off").await.len(), settled, "a disabled job fired");
    assert!(server.executions("off").await.is_empty(), "a job created disabled fired");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_whole_process_group_quickly() {
    let server = Server::fresh(&["--kill-grace", "1s"]).await;
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().display();
    let polite = format!("echo $$ > {dir}/shell.pid; sleep 60 & echo $! > {dir}/sleep.pid; wait");
    server.create_job(&shell_job("long", "@manually", &polite)).await;
    server.run("long").await;
    let (shell_pid, sleep_pid) =
        (read_pid(&scratch.path().join("shell.pid")).await, read_pid(&scratch.path().join("sleep.pid")).await);
    assert!(process_alive(shell_pid) && process_alive(sleep_pid));
    let running =
        server.wait_executions("long", "it runs", secs(20), |e| e.len() == 1 && e[0].status == "running").await;

    let asked = std::time::Instant::now();
    let path = format!("/v1/jobs/long/executions/{}/cancel", running[0].id);
    server.post_empty(&path).await.expect(202);
    let execs = server.wait_executions("long", "it is cancelled", secs(10), |e| e[0].status == "cancelled").await;
    assert!(asked.elapsed() < secs(5), "cancel took {:?}", asked.elapsed());
    assert!(!execs[0].success && execs[0].finished_at.is_some());
    wait_until("the shell and its child are gone", secs(3), async || {
        (!process_alive(shell_pid) && !process_alive(sleep_pid)).then_some(())
    })
    .await;
    let again = server.post_empty(&path).await;
    assert_eq!(again.status, 409, "cancelling a finished execution is a conflict: {}", again.text);

    // A process group that ignores SIGTERM is killed after the kill grace.
    let stubborn = format!("trap '' TERM; echo $$ > {dir}/stubborn.pid; while true; do sleep 0.2; done");
    server.create_job(&shell_job("stubborn", "@manually", &stubborn)).await;
    server.run("stubborn").await;
    let stubborn_pid = read_pid(&scratch.path().join("stubborn.pid")).await;
    let running =
        server.wait_executions("stubborn", "it runs", secs(20), |e| e.len() == 1 && e[0].status == "running").await;
    let asked = std::time::Instant::now();
    server.post_empty(&format!("/v1/jobs/stubborn/executions/{}/cancel", running[0].id)).await.expect(202);
    server.wait_executions("stubborn", "it is cancelled", secs(15), |e| e[0].status == "cancelled").await;
    assert!(asked.elapsed() < secs(8), "cancel with kill grace 1s took {:?}", asked.elapsed());
    wait_until("the stubborn shell is gone", secs(3), async || (!process_alive(stubborn_pid)).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shell_executor_honours_env_cwd_direct_commands_and_timeout() {
    let server = Server::fresh(&[]).await;
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path().canonicalize().unwrap();
    let jobs = [
        json!({"name": "in-dir", "schedule": "@manually", "executor": "shell",
               "executor_config": {"command": "pwd; echo \"$GREETING-$TARGET\" >&2", "shell": "true",
                                   "env": "GREETING=hello,TARGET=world", "cwd": cwd.to_str().unwrap()}}),
        json!({"name": "direct", "schedule": "@manually", "executor": "shell",
               "executor_config": {"command": "echo \"two words\" $HOME"}}),
        json!({"name": "too-slow", "schedule": "@manually", "executor": "shell",
               "executor_config": {"command": "sleep 30", "shell": "true", "timeout": "1s"}}),
    ];
    for job in &jobs {
        server.create_job(job).await;
        server.run(job["name"].as_str().unwrap()).await;
    }
    let in_dir = finished_run(&server, "in-dir").await;
    assert_eq!(in_dir.status, "succeeded");
    assert!(in_dir.output.contains(&*cwd.to_string_lossy()), "{:?}", in_dir.output);
    assert!(in_dir.output.contains("hello-world"), "stderr is captured too: {:?}", in_dir.output);

    let direct = finished_run(&server, "direct").await;
    assert_eq!(direct.status, "succeeded");
    assert!(direct.output.contains("two words $HOME"), "without a shell nothing is expanded: {:?}", direct.output);

    let slow = finished_run(&server, "too-slow").await;
    assert_eq!(slow.status, "failed", "{slow:?}");
    let ran = slow.finished_at.unwrap().duration_since(slow.started_at.unwrap());
    assert!(ran < SignedDuration::from_secs(8), "the timeout stopped it after {ran}");
}

async fn finished_run(server: &Server, job: &str) -> Exec {
    let execs = server.wait_executions(job, "its run finished", secs(30), |e| e.len() == 1 && e[0].is_final()).await;
    execs[0].clone()
}

/// Output files of a job in the server's local output store (wherever under the data dir it keeps them).
fn output_files(data_dir: &Path, job: &str) -> usize {
    fn walk(dir: &Path, job: &str, inside: bool, found: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_job_dir = path.file_name().is_some_and(|n| n == job);
            if path.is_dir() {
                walk(&path, job, inside || is_job_dir, found);
            } else if inside {
                *found += 1;
            }
        }
    }
    let mut found = 0;
    walk(data_dir, job, false, &mut found);
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn at_most_the_retained_number_of_executions_is_kept() {
    let server = Server::fresh(&["--executions-retained", "5"]).await;
    server.create_job(&shell_job("kept-five", "* * * * * *", "echo kept")).await;
    server
        .create_job(&with(shell_job("kept-three", "* * * * * *", "echo kept"), json!({"executions_retained": 3})))
        .await;

    wait_until("both jobs ran eight times", secs(40), async || {
        let five = server.executions("kept-five").await;
        let three = server.executions("kept-three").await;
        assert!(five.len() <= 5, "server default 5, stored {}", five.len());
        assert!(three.len() <= 3, "job setting 3, stored {}", three.len());
        let five_runs = server.job("kept-five").await["success_count"].as_u64().unwrap();
        let three_runs = server.job("kept-three").await["success_count"].as_u64().unwrap();
        (five_runs >= 8 && three_runs >= 8).then_some(())
    })
    .await;
    for name in ["kept-five", "kept-three"] {
        server.post_empty(&format!("/v1/jobs/{name}/toggle")).await.expect(200);
    }
    for (name, kept) in [("kept-five", 5), ("kept-three", 3)] {
        let execs =
            server.wait_executions(name, "the last run finished", secs(10), |e| e.iter().all(Exec::is_final)).await;
        assert_eq!(execs.len(), kept, "{name}");
        assert_consecutive_seconds(&first_attempts_oldest_first(&execs));
        // Pruned executions take their stored output with them.
        let data_dir = server.data_dir().to_path_buf();
        wait_until(&format!("{name} keeps at most {kept} output files"), secs(10), async || {
            (output_files(&data_dir, name) <= kept).then_some(())
        })
        .await;
    }
}

/// What the test HTTP server received: method, the X-Test header, body.
type Seen = Arc<Mutex<Vec<(String, Option<String>, String)>>>;

async fn http_target() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new()
        .route("/ok", get(|| async { "all good: 42" }))
        .route("/teapot", get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }))
        .route(
            "/echo",
            any(move |method: Method, headers: HeaderMap, body: String| async move {
                let header = headers.get("x-test").and_then(|v| v.to_str().ok()).map(str::to_string);
                record.lock().unwrap().push((method.to_string(), header, body.clone()));
                format!("echo: {body}")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_executor_checks_the_status_code_and_body() {
    let server = Server::fresh(&[]).await;
    let (base, seen) = http_target().await;
    let http_job = |name: &str, config: Value| json!({"name": name, "schedule": "@manually", "executor": "http", "executor_config": config});
    let jobs = [
        http_job("matches", json!({"url": format!("{base}/ok"), "expectCode": "200", "expectBody": "good: \\d+"})),
        http_job("wrong-body", json!({"url": format!("{base}/ok"), "expectBody": "^bad"})),
        http_job("wrong-code", json!({"url": format!("{base}/teapot"), "expectCode": "200"})),
        http_job("teapot-expected", json!({"url": format!("{base}/teapot"), "expectCode": "418"})),
        http_job(
            "posts",
            json!({"url": format!("{base}/echo"), "method": "POST", "body": "ping",
                                 "headers": "[\"X-Test: yes\", \"Content-Type: text/plain\"]", "timeout": "5s"}),
        ),
        http_job("unreachable", json!({"url": "http://127.0.0.1:1/", "timeout": "2s"})),
    ];
    for job in &jobs {
        server.create_job(job).await;
        server.run(job["name"].as_str().unwrap()).await;
    }

    let matches = finished_run(&server, "matches").await;
    assert_eq!((matches.status.as_str(), matches.exit_code), ("succeeded", Some(200)), "{matches:?}");
    assert!(matches.output.contains("all good: 42"), "{:?}", matches.output);
    assert_eq!(finished_run(&server, "wrong-body").await.status, "failed");
    let wrong_code = finished_run(&server, "wrong-code").await;
    assert_eq!((wrong_code.status.as_str(), wrong_code.exit_code), ("failed", Some(418)), "{wrong_code:?}");
    assert_eq!(finished_run(&server, "teapot-expected").await.status, "succeeded");
    let posts = finished_run(&server, "posts").await;
    assert_eq!(posts.status, "succeeded", "{posts:?}");
    assert_eq!(
        seen.lock().unwrap().clone(),
        [("POST".to_string(), Some("yes".to_string()), "ping".to_string())],
        "the request carried the method, headers and body"
    );
    assert_eq!(finished_run(&server, "unreachable").await.status, "failed");
}

/// Slots are decided ahead of their instant; cancelling one in that window means it never starts at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_cancelled_before_its_instant_never_starts() {
    let server = Server::fresh(&[]).await;
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("ran");
    let command = format!("echo $KAIROS_EXECUTION_ID >> {}", marker.display());
    server.create_job(&shell_job("ahead", "* * * * * *", &command)).await;

    let decided = wait_until("a slot decided ahead of its instant", secs(20), async || {
        let now = Timestamp::now();
        server.executions("ahead").await.into_iter().find(|e| e.status == "pending" && e.scheduled_at > now)
    })
    .await;
    server.post_empty(&format!("/v1/jobs/ahead/executions/{}/cancel", decided.id)).await.expect(202);

    let cancelled = wait_until("its instant has passed and a later slot ran", secs(20), async || {
        let execs = server.executions("ahead").await;
        let later_ran = execs.iter().any(|e| e.scheduled_at > decided.scheduled_at && e.status == "succeeded");
        later_ran.then(|| server_exec(&execs, &decided.id))
    })
    .await;
    assert_eq!(cancelled.status, "cancelled", "{cancelled:?}");
    assert_eq!(cancelled.started_at, None, "a withdrawn slot has no start: {cancelled:?}");
    let ran = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(!ran.lines().any(|id| id == decided.id), "the cancelled slot's command ran: {ran}");
}

fn server_exec(execs: &[Exec], id: &str) -> Exec {
    execs.iter().find(|e| e.id == id).cloned().expect("the execution is still stored")
}

/// Tags place runs: a job whose tags match this node runs here; one whose tags match no live node does not run
/// anywhere, and its due runs fail (after a grace for nodes to appear) with an error naming the tags, instead
/// of piling up as pending.
#[tokio::test(flavor = "multi_thread")]
async fn tags_choose_where_a_job_runs_and_unmatched_tags_fail_visibly() {
    let server = Server::fresh(&["--tag", "zone=eu"]).await;
    server
        .create_job(&json!({
            "name": "here", "schedule": "@manually", "executor": "shell", "tags": {"zone": "eu"},
            "executor_config": {"command": "echo on $KAIROS_NODE_NAME", "shell": "true"}
        }))
        .await;
    server
        .create_job(&json!({
            "name": "nowhere", "schedule": "@manually", "executor": "shell", "tags": {"zone": "us"},
            "executor_config": {"command": "echo never"}
        }))
        .await;
    server.post_empty("/v1/jobs/here/run").await.expect(202);
    server.post_empty("/v1/jobs/nowhere/run").await.expect(202);
    let here = server.wait_executions("here", "the matching job ran", secs(30), |e| e.iter().any(Exec::is_final)).await;
    assert_eq!(here[0].status, "succeeded", "{}", summary(&here));
    assert!(here[0].output.contains(&format!("on {}", server.node_name)), "output: {:?}", here[0].output);
    let nowhere = server
        .wait_executions("nowhere", "the unplaceable run failed", secs(40), |e| e.iter().any(Exec::is_final))
        .await;
    assert_eq!(nowhere.len(), 1, "{}", summary(&nowhere));
    let failed = &nowhere[0];
    assert_eq!((failed.status.as_str(), failed.started_at), ("failed", None), "{failed:?}");
    let record = server.get(&format!("/v1/jobs/nowhere/executions/{}", failed.id)).await;
    let error = record.json["error"].as_str().unwrap_or_default();
    assert!(error.contains("no live node matches") && error.contains("us"), "error: {error:?}");
}

/// The tags a server shows in `/v1/members`, once they satisfy `wanted`.
async fn wait_for_tags(server: &Server, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, secs(20), async || {
        let members = server.get("/v1/members").await.expect(200).items();
        let tags = members[0]["Tags"].clone();
        wanted(&tags).then_some(tags)
    })
    .await
}

/// Wait until the server's log holds `line`.
async fn wait_for_log(server: &Server, line: &str) {
    wait_until(&format!("the log says {line:?}"), secs(20), async || server.log().contains(line).then_some(())).await;
}

/// SIGHUP reads the config file again, as Dkron's does: a changed tag is published at once (and placement uses
/// it), the log level changes, and a key that needs a restart is named in the log and keeps its running value.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_new_tags_from_the_config_file_and_names_what_needs_a_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("kairos.yml");
    std::fs::write(&file, "tags:\n  pool: old\n").unwrap();
    let server = Server::fresh(&["--config", file.to_str().unwrap()]).await;
    wait_for_tags(&server, "the file's tag is published", |t| t["pool"] == "old").await;

    std::fs::write(&file, "log-level: debug\nexecutions-retained: 7\ntags:\n  pool: new\n  team: ops\n").unwrap();
    server.sighup();
    let tags = wait_for_tags(&server, "the new tags are published", |t| t["pool"] == "new").await;
    assert_eq!((&tags["team"], &tags["role"], &tags["server"]), (&json!("ops"), &json!("dkron"), &json!("true")));
    wait_for_log(&server, "take effect after a restart: executions-retained: 100 → 7").await;
    assert!(server.log().contains(r#"log-level: "info" → "debug""#), "{}", server.log());
    assert!(!server.log().contains(" DEBUG "), "nothing was logged at debug level before");

    let job = json!({"tags": {"pool": "new", "team": "ops"}});
    server.create_job(&with(shell_job("on-new", "@every 1s", "echo placed"), job)).await;
    let execs = server.wait_executions("on-new", "a run", secs(20), |e| e.iter().any(|e| e.is_final())).await;
    let done = execs.iter().find(|e| e.is_final()).unwrap();
    assert_eq!(done.status, "succeeded", "{}", summary(&execs));
    // At debug level now (the leader's lines carry its `leader{term=…}` span between level and target).
    wait_until("the log has the scheduler's debug line", secs(20), async || {
        let log = server.log();
        let fired =
            |line: &str| line.contains(" DEBUG ") && line.contains("kairos_server::scheduler: scheduler: fired");
        log.lines().any(fired).then_some(())
    })
    .await;
}

/// A config file that does not parse, or holds an invalid value, changes nothing on SIGHUP: the node keeps
/// running with its tags, says why in its log, and a later good file still applies.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_config_file_keeps_the_node_running_as_it_was() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("kairos.yml");
    std::fs::write(&file, "tags:\n  pool: kept\n").unwrap();
    let server = Server::fresh(&["--config", file.to_str().unwrap()]).await;
    wait_for_tags(&server, "the file's tag is published", |t| t["pool"] == "kept").await;

    for broken in ["tags: [pool: lost\n", "retry-interval: soon\ntags:\n  pool: lost\n"] {
        std::fs::write(&file, broken).unwrap();
        let before = server.log().matches("configuration not reloaded").count();
        server.sighup();
        wait_until("the reload is refused", secs(20), async || {
            (server.log().matches("configuration not reloaded").count() > before).then_some(())
        })
        .await;
        assert!(process_alive(server.pid()), "the node must survive a broken file");
        let tags = wait_for_tags(&server, "the old tags stay", |_| true).await;
        assert_eq!(tags["pool"], "kept", "{broken:?} changed the tags: {tags}");
    }
    server.create_job(&with(shell_job("on-kept", "@manually", "echo placed"), json!({"tags": {"pool": "kept"}}))).await;
    server.run("on-kept").await;
    let execs = server.wait_executions("on-kept", "one run", secs(20), |e| e.len() == 1 && e[0].is_final()).await;
    assert_eq!(execs[0].status, "succeeded", "{}", summary(&execs));

    std::fs::write(&file, "tags:\n  pool: fixed\n").unwrap();
    server.sighup();
    wait_for_tags(&server, "a good file applies again", |t| t["pool"] == "fixed").await;
}

/// Set the soft open-file limit of a running process (util-linux `prlimit`); the hard limit stays, so it can be
/// raised again.
fn set_open_files_limit(pid: i32, limit: u64) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit exited {status}");
}

fn open_files(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// Out of file descriptors, a node neither crashes nor hangs: runs that cannot start fail saying why, the
/// listener keeps retrying instead of dying, and once descriptors are free again everything works as before.
#[tokio::test(flavor = "multi_thread")]
async fn out_of_file_descriptors_runs_fail_with_the_reason_and_the_node_recovers() {
    use std::io::{Read, Write};
    let server = Server::fresh(&[]).await;
    server.create_job(&shell_job("starved", "* * * * * *", "true")).await;
    server
        .wait_executions("starved", "a first run succeeded", secs(20), |e| e.iter().any(|x| x.status == "succeeded"))
        .await;
    let pid = server.pid();
    // Leave no descriptor free: every new pipe, file and socket fails with EMFILE.
    set_open_files_limit(pid, open_files(pid));
    let addr = server.url("").trim_start_matches("http://").trim_end_matches('/').to_string();
    // A client that connects meanwhile waits (or is served, if a descriptor came free) but is never dropped.
    let mut waiting = std::net::TcpStream::connect(&addr).expect("connect");
    waiting.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    // Slots keep falling due every second meanwhile: let two of them come while the node is starved.
    let starved_from = Timestamp::now();
    wait_until("the node refused a connection and two slots fell due while starved", secs(20), async || {
        let two_slots = Timestamp::now() > starved_from + SignedDuration::from_millis(2500);
        (two_slots && server.log().contains("accept failed: Too many open files")).then_some(())
    })
    .await;

    set_open_files_limit(pid, 4096);
    let mut answer = String::new();
    waiting.set_read_timeout(Some(secs(20))).expect("read timeout");
    waiting.read_to_string(&mut answer).expect("the waiting connection is served once descriptors are back");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let recovered_at = Timestamp::now();
    let execs = server
        .wait_executions("starved", "runs succeed again", secs(20), |e| {
            e.iter().any(|x| x.status == "succeeded" && x.scheduled_at > recovered_at)
        })
        .await;
    let failed: Vec<&Exec> = execs.iter().filter(|e| e.status == "failed").collect();
    assert!(!failed.is_empty(), "runs due while starved failed: {}", summary(&execs));
    for run in failed {
        let error = run.error.as_deref().unwrap_or("");
        assert!(error.contains("Too many open files"), "a failed run names the cause: {error:?}");
    }
    // A new connection is accepted again, and the listener says so.
    let mut fresh = std::net::TcpStream::connect(&addr).expect("connect");
    fresh.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut answer = String::new();
    fresh.set_read_timeout(Some(secs(20))).expect("read timeout");
    fresh.read_to_string(&mut answer).expect("a new connection is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_until("the listener says it accepts again", secs(10), async || {
        server.log().contains("accepting connections again").then_some(())
    })
    .await;
}

/// Out of memory: a node and its runs share one memory limit (a cgroup, as under a systemd unit or in a
/// container). A run that allocates past it is what the kernel's out-of-memory killer ends, not the node; the
/// run's failure says so instead of a bare "killed by signal 9", and the node goes on running jobs.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_exhausts_the_memory_limit_is_killed_instead_of_the_node_and_says_so() {
    let server = Server::fresh(&[]).await;
    let pid = server.pid();
    // Room for the node as it is now plus 128 MiB: the run below takes all of that and asks for more.
    let group = kairos_testkit::MemoryCgroup::create(resident_bytes(pid) + (128 << 20));
    group.add(pid);
    // The run's own process (the `sh` that runs the command) doubles a string until the memory runs out.
    server.create_job(&shell_job("hog", "@manually", "x=a; while :; do x=$x$x; done")).await;
    server.run("hog").await;
    let execs = server.wait_executions("hog", "the run ended", secs(60), |e| e.iter().any(Exec::is_final)).await;
    let run = &execs[0];
    assert_eq!(run.status, "failed", "{}", summary(&execs));
    let error = run.error.as_deref().unwrap_or("");
    assert!(error.contains("killed by signal 9 (SIGKILL) by the kernel's out-of-memory killer"), "{error:?}");
    assert!(group.oom_kills() >= 1, "the kernel killed for lack of memory in the group");
    assert!(process_alive(pid), "the node was not the one killed");

    // The node, still inside its limit, runs the next job as usual.
    server.create_job(&shell_job("after", "@manually", "echo still here")).await;
    server.run("after").await;
    let execs = server.wait_executions("after", "the run ended", secs(20), |e| e.iter().any(Exec::is_final)).await;
    assert_eq!(execs[0].status, "succeeded", "{}", summary(&execs));
    assert_eq!(server.get("/health").await.status, 200);
}

/// The resident memory of a process, from /proc/PID/status.
fn resident_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib << 10
}

/// A job references a secret in its environment and its command. The run gets the value (it writes it to a file
/// as proof); its output shows `***` in the record's tail, the full output and the stored file; the job's JSON, the
/// secrets list and the node's log never hold the value. A job naming a secret that does not exist is refused, and
/// a run after the secret is deleted fails naming it.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_reaches_its_run_and_is_masked_wherever_the_run_shows() {
    let server = Server::fresh(&[]).await;
    let value = "s3cr3t-hunter22";
    let stored = server.put("/v1/secrets/db_pass", &json!({"value": value})).await;
    assert_eq!(stored.status, 201, "{}", stored.text);
    assert!(!stored.text.contains(value));
    let dir = tempfile::tempdir().unwrap();
    let proof = dir.path().join("seen");
    // Long enough to be stored in a file, with the value at both ends of it.
    let command = format!(
        r#"echo "pass=$DB_PASS"; seq 1 3000; echo 'again {{{{secret "db_pass"}}}}'; printf %s "$DB_PASS" > {}"#,
        proof.display()
    );
    let job = json!({"name": "uses-secret", "schedule": "@manually", "executor": "shell",
                     "executor_config": {"command": command, "shell": "true", "env": "DB_PASS={{secret \"db_pass\"}}"}});
    server.create_job(&job).await;
    server.run("uses-secret").await;
    let execs =
        server.wait_executions("uses-secret", "the run ended", secs(20), |e| e.iter().any(Exec::is_final)).await;
    let run = &execs[0];
    assert_eq!(run.status, "succeeded", "{}", summary(&execs));
    assert_eq!(std::fs::read_to_string(&proof).unwrap(), value, "the run was given the value");
    assert!(run.output.ends_with("3000\nagain ***\n"), "tail: {:?}", run.output);
    let full = server.get(&format!("/v1/jobs/uses-secret/executions/{}/output", run.id)).await;
    assert!(full.text.starts_with("pass=***\n1\n"), "{}", &full.text[..40.min(full.text.len())]);
    assert!(full.text.ends_with("again ***\n"));
    let mut files = 0;
    for file in walk(&server.data_dir().join("outputs")) {
        files += 1;
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        assert!(!text.contains(value), "{} holds the value", file.display());
    }
    assert!(files > 0, "the output was stored in a file");
    let page_path = format!("/ui/jobs/uses-secret/executions/{}", run.id);
    let page = server.get(&page_path).await;
    assert!(page.status == 200 && page.text.contains("pass=***"), "the UI shows the masked output: {}", page.text);
    let shown = ["/v1/jobs/uses-secret", "/v1/secrets", "/v1/secrets/db_pass", "/v1/jobs/uses-secret/executions"];
    for path in shown.iter().copied().chain([page_path.as_str(), "/ui/jobs/uses-secret"]) {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(!reply.text.contains(value), "{path} shows the value: {}", reply.text);
    }
    assert!(server.get("/v1/jobs/uses-secret").await.text.contains(r#"{{secret \"db_pass\"}}"#));
    assert!(!server.log().contains(value), "the log holds the value");

    let unknown =
        with(job.clone(), json!({"name": "uses-missing", "executor_config": {"command": "echo {{secret \"nope\"}}"}}));
    let refused = server.post("/v1/jobs", &unknown).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(refused.text.contains("executor_config") && refused.text.contains("secret 'nope' does not exist"));
    assert!(!server.job_exists("uses-missing").await);

    assert_eq!(server.delete("/v1/secrets/db_pass").await.status, 200);
    server.run("uses-secret").await;
    let execs = server
        .wait_executions("uses-secret", "a second run ended", secs(20), |e| {
            e.iter().filter(|x| x.is_final()).count() == 2
        })
        .await;
    let failed = execs.iter().find(|e| e.status == "failed").expect("the run after the deletion failed");
    assert!(failed.error.as_deref().unwrap_or("").contains("secret 'db_pass' does not exist"), "{failed:?}");
}

/// Every file below `dir`, recursively.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A NATS job firing every second: a subscriber receives exactly one message per executed slot, with the
/// configured body and header, and each run's output says what it published.
#[tokio::test(flavor = "multi_thread")]
async fn a_nats_job_publishes_exactly_one_message_per_slot() {
    let nats = kairos_testkit::services::nats(None).await;
    let observer = async_nats::connect(nats.addr()).await.unwrap();
    let mut received = observer.subscribe("kairos.tick").await.unwrap();
    observer.flush().await.unwrap();
    let server = Server::fresh(&[]).await;
    server
        .create_job(&json!({
            "name": "tick", "schedule": "* * * * * *", "executor": "nats",
            "executor_config": {"url": format!("nats://{}", nats.addr()), "subject": "kairos.tick",
                                "message": "it is time", "headers": "[\"Source: kairos\"]"}
        }))
        .await;
    server.wait_executions("tick", "five succeeded runs", secs(30), |e| count(e, "succeeded") >= 5).await;
    server.post_empty("/v1/jobs/tick/toggle").await.expect(200);
    let execs = server.wait_executions("tick", "every run finished", secs(30), |e| e.iter().all(Exec::is_final)).await;

    // Everything the runs published is on the subscriber's connection before what the test publishes now.
    observer.publish("kairos.tick", "sentinel".into()).await.unwrap();
    let mut messages = 0;
    loop {
        let message = tokio::time::timeout(secs(10), received.next()).await.unwrap().unwrap();
        if &message.payload[..] == b"sentinel" {
            break;
        }
        assert_eq!(&message.payload[..], b"it is time");
        let headers = message.headers.unwrap();
        assert_eq!(headers.get("Source").map(|v| v.as_str()), Some("kairos"));
        messages += 1;
    }
    let succeeded: Vec<&Exec> = execs.iter().filter(|e| e.status == "succeeded").collect();
    // A slot decided before the toggle may be withdrawn; one that started must have succeeded.
    for exec in &execs {
        assert!(exec.status == "succeeded" || exec.started_at.is_none(), "{exec:?}\n{}", summary(&execs));
    }
    assert_eq!(messages, succeeded.len(), "one message per executed slot:\n{}", summary(&execs));
    let mut slots: Vec<Timestamp> = succeeded.iter().map(|e| e.scheduled_at).collect();
    slots.dedup();
    assert_eq!(slots.len(), succeeded.len(), "no slot ran twice:\n{}", summary(&execs));
    for exec in succeeded {
        assert_eq!(exec.output, "published 10 bytes to 'kairos.tick'\n", "{exec:?}");
    }
}

/// A Kafka job firing every second: the topic holds exactly one record per executed slot, with the configured key
/// and message, and each run's output names the partition and offset its record got. A kafka job without a topic
/// is refused at the write, naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_job_produces_exactly_one_record_per_slot() {
    let broker = kairos_testkit::services::tansu().await;
    let server = Server::fresh(&[]).await;
    let config =
        json!({"brokerAddress": broker.addr(), "topic": "kairos.ticks", "key": "tick", "message": "it is time"});
    let job = json!({"name": "tick", "schedule": "* * * * * *", "executor": "kafka", "executor_config": config});
    server.create_job(&job).await;
    server.wait_executions("tick", "five succeeded runs", secs(30), |e| count(e, "succeeded") >= 5).await;
    server.post_empty("/v1/jobs/tick/toggle").await.expect(200);
    let execs = server.wait_executions("tick", "every run finished", secs(30), |e| e.iter().all(Exec::is_final)).await;

    let records = kairos_testkit::kafka::records(&broker.addr(), "kairos.ticks").await;
    for record in &records {
        assert_eq!((record.key.as_deref(), record.value.as_str()), (Some("tick"), "it is time"), "{record:?}");
    }
    // A slot decided before the toggle may be withdrawn; one that started must have succeeded.
    for exec in &execs {
        assert!(exec.status == "succeeded" || exec.started_at.is_none(), "{exec:?}\n{}", summary(&execs));
    }
    let succeeded: Vec<&Exec> = execs.iter().filter(|e| e.status == "succeeded").collect();
    assert_eq!(records.len(), succeeded.len(), "one record per executed slot:\n{}", summary(&execs));
    let mut slots: Vec<Timestamp> = succeeded.iter().map(|e| e.scheduled_at).collect();
    slots.dedup();
    assert_eq!(slots.len(), succeeded.len(), "no slot ran twice:\n{}", summary(&execs));
    let mut outputs: Vec<&str> = succeeded.iter().map(|e| e.output.as_str()).collect();
    outputs.sort();
    let mut expected: Vec<String> = records
        .iter()
        .map(|r| format!("produced 10 bytes to topic 'kairos.ticks', partition {}, offset {}\n", r.partition, r.offset))
        .collect();
    expected.sort();
    assert_eq!(outputs, expected, "each run's output names its record");

    let no_topic = json!({"name": "no-topic", "schedule": "@manually", "executor": "kafka",
                          "executor_config": {"brokerAddress": broker.addr()}});
    let reply = server.post("/v1/jobs", &no_topic).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.text.contains("executor_config.topic"), "{}", reply.text);
}

/// Logins to brokers and a database, refused and accepted: a refused one fails the run with the server's reason,
/// an accepted one succeeds, and no password shows in the executions or in the server's log, even at debug level
/// (where client libraries log their connection settings).
#[tokio::test(flavor = "multi_thread")]
async fn logins_refused_or_accepted_never_show_a_password() {
    use kairos_testkit::services;
    let (nats, redis, postgres, rabbitmq) = tokio::join!(
        services::nats(Some(("app", "right-secret"))),
        services::redis(Some("right-secret")),
        services::postgres("app", "right-secret"),
        services::rabbitmq(),
    );
    rabbitmq.rabbitmqctl(&["add_user", "app", "right-secret"]);
    rabbitmq.rabbitmqctl(&["set_permissions", "-p", "/", "app", ".*", ".*", ".*"]);
    let server = Server::fresh(&["--log-level", "debug"]).await;
    let (nats, redis, pg, amqp) = (nats.addr(), redis.addr(), postgres.addr(), rabbitmq.addr());
    let pg_kv = |password: &str| {
        format!("host=127.0.0.1 port={} user=app password={password} dbname=postgres", postgres.port())
    };
    // (executor, config, Ok(output fragment) or Err(error fragment))
    let logins: [(&str, Value, Result<&str, &str>); 12] = [
        (
            "nats",
            json!({"url": format!("nats://{nats}"), "subject": "a", "userName": "app", "password": "nats-secret"}),
            Err("authorization violation"),
        ),
        (
            "nats",
            json!({"url": format!("nats://app:nats-url-secret@{nats}"), "subject": "a"}),
            Err("authorization violation"),
        ),
        (
            "nats",
            json!({"url": format!("nats://{nats}"), "subject": "a", "userName": "app", "password": "right-secret"}),
            Ok("published 0 bytes"),
        ),
        ("nats", json!({"url": format!("nats://app:right-secret@{nats}"), "subject": "a"}), Ok("published 0 bytes")),
        (
            "redis",
            json!({"url": format!("redis://:redis-secret@{redis}/0"), "command": "LPUSH", "key": "k"}),
            Err("Password authentication failed"),
        ),
        (
            "redis",
            json!({"url": format!("redis://:right-secret@{redis}/0"), "command": "LPUSH", "key": "k"}),
            Ok("pushed to list 'k'"),
        ),
        (
            "sql",
            json!({"url": format!("postgres://app:pg-secret@{pg}/postgres"), "statement": "SELECT 1"}),
            Err("28P01"),
        ),
        ("sql", json!({"url": pg_kv("pg-kv-secret"), "statement": "SELECT 1"}), Err("28P01")),
        (
            "sql",
            json!({"url": format!("postgres://app:right-secret@{pg}/postgres"), "statement": "SELECT 1"}),
            Ok("(1 rows)"),
        ),
        ("sql", json!({"url": pg_kv("right-secret"), "statement": "SELECT 1"}), Ok("(1 rows)")),
        (
            "rabbitmq",
            json!({"url": format!("amqp://app:amqp-secret@{amqp}/%2f"), "queue.name": "q"}),
            Err("cannot connect to RabbitMQ"),
        ),
        (
            "rabbitmq",
            json!({"url": format!("amqp://app:right-secret@{amqp}/%2f"), "queue.name": "q",
                            "queue.create": "true"}),
            Ok("the broker confirmed it"),
        ),
    ];
    for (i, (executor, config, _)) in logins.iter().enumerate() {
        let name = format!("login-{i}");
        server
            .create_job(
                &json!({"name": name, "schedule": "@manually", "executor": executor, "executor_config": config}),
            )
            .await;
        server.run(&name).await;
    }
    for (i, (executor, config, expected)) in logins.iter().enumerate() {
        let exec = finished_run(&server, &format!("login-{i}")).await;
        let error = exec.error.as_deref().unwrap_or_default();
        match expected {
            Ok(output) => assert!(exec.status == "succeeded" && exec.output.contains(output), "{config}: {exec:?}"),
            Err(reason) => assert!(exec.status == "failed" && error.contains(reason), "{config}: {exec:?}"),
        }
        let executions = server.get(&format!("/v1/jobs/login-{i}/executions")).await.text;
        assert!(!executions.contains("-secret"), "{executor}: a password in the executions: {executions}");
    }
    let log = server.log();
    let leaking: Vec<&str> = log.lines().filter(|l| l.contains("-secret")).collect();
    assert!(leaking.is_empty(), "passwords in the server log:\n{}", leaking.join("\n"));
}

/// Executor plugins (`--plugin-dir`, the protocol in the README), with the example plugin of the repository (a
/// Python program): it gets the job and config on stdin and its output is streamed into the execution while it
/// runs; cancel and `timeout` stop it; a plugin that crashes fails its run naming the signal and the node runs the
/// next job; a job naming an executor no node has is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_executor_plugin_runs_streams_its_output_is_cancelled_and_may_crash() {
    let plugins = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/kairos-executor-example");
    std::fs::copy(&example, plugins.path().join("kairos-executor-example")).unwrap();
    let server = Server::fresh(&["--plugin-dir", plugins.path().to_str().unwrap(), "--kill-grace", "1s"]).await;
    let scratch = tempfile::tempdir().unwrap();
    let go = scratch.path().join("go");
    let plugin_job = |name: &str, config: Value| json!({"name": name, "schedule": "@manually", "executor": "example", "executor_config": config});

    // Output streams while the plugin waits for a file; then it prints the rest and succeeds.
    let config = json!({"message": "tick", "count": "3", "wait_for": go.to_str().unwrap()});
    server.create_job(&plugin_job("streamed", config)).await;
    server.run("streamed").await;
    let running =
        server.wait_executions("streamed", "it runs", secs(20), |e| e.len() == 1 && e[0].status == "running").await;
    let id = running[0].id.clone();
    wait_until("the first line is in the running execution's output", secs(20), async || {
        let exec = server.execution("streamed", &id).await;
        (exec.status == "running" && exec.output.contains("tick (1/3, job streamed")).then_some(())
    })
    .await;
    std::fs::write(&go, "").unwrap();
    let done = server.wait_executions("streamed", "it succeeded", secs(20), |e| e[0].status == "succeeded").await;
    let exec = server.execution("streamed", &done[0].id).await;
    assert!(exec.output.contains(&format!("tick (3/3, job streamed, execution {id})")), "{}", exec.output);
    assert_eq!(exec.exit_code, Some(0));

    // Cancel stops it (its process too); a timeout fails it.
    let pid_file = scratch.path().join("plugin.pid");
    let endless =
        json!({"message": "busy", "count": "1000", "interval": "0.2", "pid_file": pid_file.to_str().unwrap()});
    server.create_job(&plugin_job("endless", endless)).await;
    server.run("endless").await;
    let pid = read_pid(&pid_file).await;
    let running =
        server.wait_executions("endless", "it runs", secs(20), |e| e.len() == 1 && e[0].status == "running").await;
    server.post_empty(&format!("/v1/jobs/endless/executions/{}/cancel", running[0].id)).await.expect(202);
    server.wait_executions("endless", "it is cancelled", secs(15), |e| e[0].status == "cancelled").await;
    wait_until("the plugin process is gone", secs(5), async || (!process_alive(pid)).then_some(())).await;
    server.create_job(&plugin_job("slow", json!({"count": "100", "interval": "0.2", "timeout": "1s"}))).await;
    server.run("slow").await;
    let slow = server.wait_executions("slow", "it timed out", secs(20), |e| e[0].is_final()).await;
    assert_eq!(slow[0].status, "failed", "{:?}", slow[0]);
    assert!(slow[0].error.as_deref().unwrap_or_default().contains("timed out"), "{:?}", slow[0]);

    // A crash fails the run, naming the signal; a non-zero exit fails with its code; the node goes on.
    server.create_job(&plugin_job("crashing", json!({"message": "about to crash", "crash": "true"}))).await;
    server.run("crashing").await;
    let crashed = server.wait_executions("crashing", "it failed", secs(20), |e| e[0].is_final()).await;
    assert_eq!(crashed[0].status, "failed", "{:?}", crashed[0]);
    assert!(crashed[0].error.as_deref().unwrap_or_default().contains("SIGSEGV"), "{:?}", crashed[0]);
    server.create_job(&plugin_job("exit-3", json!({"exit_code": "3"}))).await;
    server.run("exit-3").await;
    let failed = server.wait_executions("exit-3", "it failed", secs(20), |e| e[0].is_final()).await;
    assert_eq!((failed[0].status.as_str(), failed[0].exit_code), ("failed", Some(3)), "{:?}", failed[0]);

    // An executor no node has is refused, naming the field and the executors known.
    let reply = server
        .post(
            "/v1/jobs",
            &plugin_job("nowhere", json!({}))
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("executor".into(), json!("missing"));
                    Value::Object(o)
                })
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.text.contains("unknown executor 'missing'") && reply.text.contains("example"), "{}", reply.text);
}

/// The grpc executor against a real gRPC server with reflection (the test kit's `kairos.test.Greeter`): the JSON
/// body becomes the request and the response is the output; headers travel as metadata; another status fails the
/// run unless it is the `expectCode`; timeout and cancel abandon the call (the server sees it dropped); a server
/// that is down or a method it lacks fails with a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn the_grpc_executor_calls_a_method_found_by_reflection() {
    let greeter = kairos_testkit::grpc::greeter().await;
    let server = Server::fresh(&[]).await;
    let grpc_job = |name: &str, config: Value| json!({"name": name, "schedule": "@manually", "executor": "grpc", "executor_config": config});
    let body = r#"{"name": "kairos"}"#;
    let headers = r#"["X-Token: t0k"]"#;
    server
        .create_job(&grpc_job("hello", json!({"url": greeter.url("SayHello"), "body": body, "headers": headers})))
        .await;
    server.run("hello").await;
    let hello = server.wait_executions("hello", "it ended", secs(20), |e| e[0].is_final()).await;
    let exec = server.execution("hello", &hello[0].id).await;
    assert_eq!((exec.status.as_str(), exec.exit_code), ("succeeded", Some(0)), "{exec:?}");
    let reply: Value = serde_json::from_str(&exec.output).unwrap_or_else(|e| panic!("{e}: {}", exec.output));
    assert_eq!(reply["message"], "hello, kairos (token t0k)", "{reply}");
    // The channel and the descriptors are kept: a second run needs no new reflection, and works.
    server.run("hello").await;
    server.wait_executions("hello", "two succeeded", secs(20), |e| count(e, "succeeded") == 2).await;

    server.create_job(&grpc_job("refused", json!({"url": greeter.url("Fail"), "body": body}))).await;
    server.create_job(&grpc_job("expected", json!({"url": greeter.url("Fail"), "expectCode": "NOT_FOUND"}))).await;
    server.run("refused").await;
    server.run("expected").await;
    let refused = server.wait_executions("refused", "it ended", secs(20), |e| e[0].is_final()).await;
    assert_eq!((refused[0].status.as_str(), refused[0].exit_code), ("failed", Some(5)), "{:?}", refused[0]);
    assert!(
        refused[0].error.as_deref().unwrap_or_default().contains("NOT_FOUND: no greeting for kairos"),
        "{:?}",
        refused[0]
    );
    let expected = server.wait_executions("expected", "it ended", secs(20), |e| e[0].is_final()).await;
    assert_eq!(expected[0].status, "succeeded", "{:?}", expected[0]);

    // Timeout and cancel abandon the call.
    let slow = json!({"url": greeter.url("Slow"), "body": r#"{"name": "x", "delay_ms": 60000}"#, "timeout": "1s"});
    server.create_job(&grpc_job("slow", slow)).await;
    server.run("slow").await;
    let timed_out = server.wait_executions("slow", "it timed out", secs(20), |e| e[0].is_final()).await;
    assert_eq!(timed_out[0].status, "failed", "{:?}", timed_out[0]);
    assert!(timed_out[0].error.as_deref().unwrap_or_default().contains("timed out"), "{:?}", timed_out[0]);
    wait_until("the server saw the call dropped", secs(10), async || {
        (greeter.abandoned.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let endless = json!({"url": greeter.url("Slow"), "body": r#"{"name": "x", "delay_ms": 60000}"#, "timeout": "0"});
    server.create_job(&grpc_job("endless", endless)).await;
    server.run("endless").await;
    let running = server.wait_executions("endless", "it runs", secs(20), |e| e[0].status == "running").await;
    server.post_empty(&format!("/v1/jobs/endless/executions/{}/cancel", running[0].id)).await.expect(202);
    server.wait_executions("endless", "it is cancelled", secs(15), |e| e[0].status == "cancelled").await;
    wait_until("the server saw the cancelled call dropped", secs(10), async || {
        (greeter.abandoned.load(std::sync::atomic::Ordering::SeqCst) >= 2).then_some(())
    })
    .await;

    // A server that is down, and a method it does not have.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    server.create_job(&grpc_job("down", json!({"url": format!("{closed}/kairos.test.Greeter/SayHello")}))).await;
    server.create_job(&grpc_job("nomethod", json!({"url": greeter.url("Wave")}))).await;
    server.run("down").await;
    server.run("nomethod").await;
    let down = server.wait_executions("down", "it failed", secs(30), |e| e[0].is_final()).await;
    assert!(down[0].error.as_deref().unwrap_or_default().contains("unreachable"), "{:?}", down[0]);
    let nomethod = server.wait_executions("nomethod", "it failed", secs(20), |e| e[0].is_final()).await;
    assert!(nomethod[0].error.as_deref().unwrap_or_default().contains("has no method Wave"), "{:?}", nomethod[0]);

    // A config that cannot work is refused at the job's write, naming the key.
    let reply = server.post("/v1/jobs", &grpc_job("bad", json!({"url": "no-port/x.Y/Z"}))).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.text.contains("executor_config.url"), "{}", reply.text);
}

/// The grpc executor over TLS, with the http executor's TLS keys: the server's certificate is checked against
/// `tlsRootCAsFile`, and the client certificate is presented to a server that requires one. Without the CA file
/// (the web's roots do not know the test CA) or without the client certificate, the call fails saying why.
#[tokio::test(flavor = "multi_thread")]
async fn the_grpc_executor_speaks_tls_with_a_ca_file_and_a_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    for args in
        [&["tls", "ca", "create"][..], &["tls", "cert", "create", "--server"], &["tls", "cert", "create", "--client"]]
    {
        let out =
            kairos_testkit::kairos_command(Path::new(KAIROS_BIN)).args(args).current_dir(pki.path()).output().unwrap();
        assert!(out.status.success(), "kairos {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let file = |name: &str| pki.path().join(name);
    let read = |name: &str| std::fs::read(file(name)).unwrap();
    let ca = read("kairos-agent-ca.pem");
    let greeter = kairos_testkit::grpc::greeter_tls(
        &read("kairos-agent-server-0.pem"),
        &read("kairos-agent-server-0-key.pem"),
        Some(&ca),
    )
    .await;
    let server = Server::fresh(&[]).await;
    let url = format!("https://localhost:{}/kairos.test.Greeter/SayHello", greeter.addr.port());
    let path = |name: &str| file(name).to_str().unwrap().to_string();
    let job = |name: &str, config: Value| json!({"name": name, "schedule": "@manually", "executor": "grpc", "executor_config": config});
    let full = json!({"url": url, "body": r#"{"name": "tls"}"#, "tlsRootCAsFile": path("kairos-agent-ca.pem"),
        "tlsCertificateFile": path("kairos-agent-client-0.pem"), "tlsCertificateKeyFile": path("kairos-agent-client-0-key.pem")});
    server.create_job(&job("mutual", full)).await;
    server.create_job(&job("no-ca", json!({"url": url}))).await;
    server.create_job(&job("no-client-cert", json!({"url": url, "tlsRootCAsFile": path("kairos-agent-ca.pem")}))).await;
    for name in ["mutual", "no-ca", "no-client-cert"] {
        server.run(name).await;
    }
    let mutual = server.wait_executions("mutual", "it ended", secs(30), |e| e[0].is_final()).await;
    let exec = server.execution("mutual", &mutual[0].id).await;
    assert_eq!(exec.status, "succeeded", "{exec:?}");
    assert!(exec.output.contains("hello, tls"), "{}", exec.output);
    for name in ["no-ca", "no-client-cert"] {
        let failed = server.wait_executions(name, "it ended", secs(30), |e| e[0].is_final()).await;
        assert_eq!(failed[0].status, "failed", "{name}: {:?}", failed[0]);
        assert!(failed[0].error.as_deref().is_some_and(|e| !e.is_empty()), "{name}: {:?}", failed[0]);
    }
}
