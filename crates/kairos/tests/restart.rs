//! Stopping and starting a server on the same data directory: `kill -9` loses nothing that was acknowledged and
//! turns runs that died with the process `lost` (retried if retries remain); SIGTERM lets runs finish and exits 0;
//! slots missed while the server was down follow each job's `catch_up` policy.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use common::*;
use jiff::SignedDuration;

/// Job fields that runs change (counters, status, next fire): left out when comparing a job across a restart.
const VOLATILE: [&str; 6] = ["next", "status", "success_count", "error_count", "last_success", "last_error"];

async fn job_definitions(server: &Server) -> BTreeMap<String, Value> {
    let mut jobs = BTreeMap::new();
    for mut job in server.jobs().await {
        let fields = job.as_object_mut().unwrap();
        for key in VOLATILE {
            fields.remove(key);
        }
        jobs.insert(fields["name"].as_str().unwrap().to_string(), job);
    }
    jobs
}

/// What must survive of a finished execution.
fn essence(e: &Exec) -> String {
    format!(
        "{} {} {} {:?} {:?} {:?} {} {} {:?}",
        e.id, e.status, e.scheduled_at, e.started_at, e.finished_at, e.exit_code, e.attempt, e.trigger, e.output
    )
}

fn pids_in(path: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_no_job_or_finished_execution_and_turns_the_running_one_lost_then_retries_it() {
    let mut server = Server::fresh(&["--execution-lease", "3s"]).await;
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("sleepers");
    server.create_job(&shell_job("ticker", "* * * * * *", "echo tick")).await;
    server.create_job(&shell_job("parent", "@daily", "true")).await;
    server.create_job(&with(shell_job("child", "", "true"), json!({"parent_job": "parent"}))).await;
    server
        .create_job(&with(
            shell_job("quiet", "@hourly", "true"),
            json!({"disabled": true, "metadata": {"keep": "me"}, "timezone": "Asia/Tokyo", "catch_up": "all"}),
        ))
        .await;
    let sleeper = format!("echo $$ >> {}; exec sleep 60", pid_file.display());
    server
        .create_job(&with(shell_job("sleeper", "@manually", &sleeper), json!({"retries": 1, "retry_backoff": "100ms"})))
        .await;
    server.run("sleeper").await;
    server.wait_executions("sleeper", "it runs", secs(20), |e| e.len() == 1 && e[0].status == "running").await;
    server.wait_executions("ticker", "three finished runs", secs(20), |e| count(e, "succeeded") >= 3).await;
    let orphan = read_pid(&pid_file).await;

    let jobs_before = job_definitions(&server).await;
    let ticks_before: Vec<Exec> = server.executions("ticker").await.into_iter().filter(Exec::is_final).collect();
    server.kill9().await;
    server.restart().await;

    assert_eq!(job_definitions(&server).await, jobs_before, "jobs changed across kill -9");
    let ticks_after: BTreeMap<String, String> =
        server.executions("ticker").await.iter().map(|e| (e.id.clone(), essence(e))).collect();
    for exec in &ticks_before {
        assert_eq!(
            ticks_after.get(&exec.id),
            Some(&essence(exec)),
            "finished execution {} changed or vanished",
            exec.id
        );
    }
    let kept = server.execution("ticker", &ticks_before[0].id).await;
    assert!(kept.output.contains("tick"), "the stored output survives: {kept:?}");

    // The run that died with the process turns lost, and its retry runs.
    let execs = server
        .wait_executions("sleeper", "attempt 1 lost and attempt 2 running", secs(20), |e| {
            e.iter().any(|x| x.attempt == 1 && x.status == "lost")
                && e.iter().any(|x| x.attempt == 2 && x.status == "running")
        })
        .await;
    let lost = execs.iter().find(|e| e.attempt == 1).unwrap();
    assert!(lost.finished_at.is_some() && !lost.success, "{lost:?}");
    assert_eq!(execs.iter().find(|e| e.attempt == 2).unwrap().trigger, "retry");
    assert_eq!(execs.len(), 2, "{}", summary(&execs));

    // Nothing that was active before the kill stays active.
    let killed_before = ticks_before.iter().map(|e| e.scheduled_at).max().unwrap() + secs(1);
    wait_until("no pre-kill ticker execution is active", secs(15), async || {
        let execs = server.executions("ticker").await;
        execs.iter().filter(|e| e.scheduled_at <= killed_before).all(Exec::is_final).then_some(())
    })
    .await;

    kill_leftover(orphan);
    let retry = execs.iter().find(|e| e.attempt == 2).unwrap();
    server.post_empty(&format!("/v1/jobs/sleeper/executions/{}/cancel", retry.id)).await.expect(202);
    server.wait_executions("sleeper", "the retry is cancelled", secs(10), |e| e.iter().all(Exec::is_final)).await;
    for pid in pids_in(&pid_file) {
        kill_leftover(pid);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_executions_finish_exits_0_and_a_restart_finds_everything() {
    let mut server = Server::fresh(&["--shutdown-grace", "15s"]).await;
    server.create_job(&shell_job("ticker", "* * * * * *", "echo tick")).await;
    server.create_job(&shell_job("finisher", "@manually", "sleep 2; echo finished-cleanly")).await;
    server.wait_executions("ticker", "two finished runs", secs(20), |e| count(e, "succeeded") >= 2).await;
    server.run("finisher").await;
    server.wait_executions("finisher", "it runs", secs(20), |e| e.len() == 1 && e[0].status == "running").await;

    let jobs_before = job_definitions(&server).await;
    let signalled = Timestamp::now();
    let clock = Instant::now();
    let status = server.sigterm().await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM: {status}");
    assert!(clock.elapsed() < secs(15), "shutdown took {:?}", clock.elapsed());

    let restarting = Timestamp::now();
    server.restart().await;
    assert_eq!(job_definitions(&server).await, jobs_before);
    let finisher = server.executions("finisher").await;
    assert_eq!(finisher.len(), 1);
    assert_eq!(finisher[0].status, "succeeded", "SIGTERM waits for the run: {:?}", finisher[0]);
    assert!(finisher[0].output.contains("finished-cleanly"));

    let ticks = server.executions("ticker").await;
    let before_stop: Vec<&Exec> = ticks.iter().filter(|e| e.scheduled_at < signalled).collect();
    assert!(before_stop.len() >= 2);
    for exec in &before_stop {
        assert_eq!(exec.status, "succeeded", "a graceful stop loses no run: {exec:?}");
    }
    for exec in &ticks {
        let started = exec.started_at.unwrap_or(restarting);
        assert!(
            !(started > signalled + secs(1) && started < restarting),
            "{exec:?} started after SIGTERM: firing must stop"
        );
    }
}

/// Slots of a job, oldest first, first attempts only, as (instant, trigger).
fn slots(execs: &[Exec]) -> Vec<(Timestamp, String)> {
    let mut slots: Vec<(Timestamp, String)> =
        execs.iter().filter(|e| e.attempt == 1).map(|e| (e.scheduled_at, e.trigger.clone())).collect();
    slots.sort();
    slots
}

fn one_second_apart(a: Timestamp, b: Timestamp) -> bool {
    b.duration_since(a) == SignedDuration::from_secs(1)
}

#[tokio::test(flavor = "multi_thread")]
async fn missed_slots_follow_each_jobs_catch_up_policy_after_a_restart() {
    let mut server = Server::fresh(&[]).await;
    for policy in ["skip", "latest", "all"] {
        let job = with(
            shell_job(&format!("catch-{policy}"), "* * * * * *", "echo tick"),
            json!({"catch_up": policy, "catch_up_window": "1m"}),
        );
        server.create_job(&job).await;
    }
    for policy in ["skip", "latest", "all"] {
        let name = format!("catch-{policy}");
        server.wait_executions(&name, "two finished runs", secs(20), |e| count(e, "succeeded") >= 2).await;
    }

    server.kill9().await;
    let killed = Timestamp::now();
    // Let slots fall due while no server runs.
    tokio::time::sleep(secs(4)).await;
    server.restart().await;
    let restarted = Timestamp::now();

    let mut history = BTreeMap::new();
    for policy in ["skip", "latest", "all"] {
        let name = format!("catch-{policy}");
        let execs = server
            .wait_executions(&name, "two on-time runs after the restart", secs(20), |e| {
                e.iter().filter(|x| x.trigger == "schedule" && x.scheduled_at > restarted && x.is_final()).count() >= 2
            })
            .await;
        let ids: BTreeSet<&str> = execs.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), execs.len(), "{name}: duplicate execution ids");
        let slots = slots(&execs);
        for pair in slots.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{name}: slot {} decided twice", pair[0].0);
        }
        history.insert(policy, slots);
    }
    let before_kill = |slots: &[(Timestamp, String)]| slots.iter().filter(|s| s.0 < killed).map(|s| s.0).max().unwrap();
    let missed = |slots: &[(Timestamp, String)]| -> usize {
        slots.windows(2).map(|p| (p[1].0.duration_since(p[0].0).as_secs() as usize).saturating_sub(1)).sum()
    };

    // skip: nothing is caught up, the downtime leaves a gap.
    let skip = &history["skip"];
    assert!(skip.iter().all(|s| s.1 != "catch_up"), "skip caught up: {skip:?}");
    assert!(missed(skip) >= 2, "skip should leave the missed slots out: {skip:?}");

    // latest: exactly one catch-up run, for the most recent missed slot.
    let latest = &history["latest"];
    let caught: Vec<usize> = (0..latest.len()).filter(|&i| latest[i].1 == "catch_up").collect();
    assert_eq!(caught.len(), 1, "latest: {latest:?}");
    let i = caught[0];
    assert!(latest[i].0 > before_kill(latest) && latest[i].0 < restarted, "latest: {latest:?}");
    assert!(i + 1 < latest.len() && one_second_apart(latest[i].0, latest[i + 1].0), "not the latest slot: {latest:?}");
    assert!(!one_second_apart(latest[i - 1].0, latest[i].0), "older missed slots must not run: {latest:?}");

    // all: every slot across the downtime runs once.
    let all = &history["all"];
    assert_eq!(missed(all), 0, "all left a gap: {all:?}");
    assert!(all.iter().filter(|s| s.1 == "catch_up").count() >= 2, "all: {all:?}");
    assert!(all.iter().any(|s| s.0 < killed) && all.iter().any(|s| s.0 > restarted));
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_stay_within_their_budget_and_a_full_disk_stops_the_server_cleanly_without_losing_anything() {
    let mount_point = tempfile::Builder::new().prefix("kairos-disk-").tempdir().expect("mount point");
    let disk = kairos_testkit::SmallDisk::mount(mount_point.path(), 48);
    let data_dir = disk.path().join("data");
    let budget = 6_000_000u64;
    let args = ["--output-store-max-bytes", "6000000", "--disk-free-min-bytes", "4000000"];
    let mut server = Server::start(&data_dir, &args).await;
    // 4 jobs every second, 300 kB of output each: 1.2 MB a second, far past the 6 MB budget within the test.
    let command = "head -c 300000 /dev/zero | tr '\\0' x";
    for i in 0..4 {
        let job = with(
            shell_job(&format!("loud-{i}"), "* * * * * *", command),
            json!({"executor_config": {"command": command, "shell": "true"}}),
        );
        server.create_job(&job).await;
    }
    wait_until("40 runs of the loud jobs finished", secs(60), async || {
        let mut finished = 0;
        for i in 0..4 {
            finished += server.executions(&format!("loud-{i}")).await.iter().filter(|e| e.is_final()).count();
        }
        (finished >= 40).then_some(())
    })
    .await;
    let outputs = kairos_testkit::dir_bytes(&data_dir.join("outputs"));
    assert!(outputs <= budget, "outputs take {outputs} bytes, over the {budget}-byte budget");
    for i in 0..4 {
        let execs = server.executions(&format!("loud-{i}")).await;
        assert!(execs.iter().filter(|e| e.is_final()).all(|e| e.status == "succeeded"), "{}", summary(&execs));
    }
    let before = job_definitions(&server).await;
    let mut finished_before = BTreeSet::new();
    for i in 0..4 {
        for e in server.executions(&format!("loud-{i}")).await.iter().filter(|e| e.is_final()) {
            finished_before.insert(essence(e));
        }
    }

    // Now exhaust the disk from outside. The Raft files may still have free pages inside, so keep writing large
    // job definitions until a write needs the disk: it fails, and the server says why and exits 75.
    let filler = disk.fill();
    let big = "x".repeat(60_000);
    let mut refused = None;
    for i in 0..500 {
        let job = with(shell_job(&format!("big-{i}"), "@manually", "true"), json!({"displayname": big}));
        match server.try_post("/v1/jobs", &job).await {
            Some(reply) if reply.status == 201 => continue,
            answer => {
                refused = Some(answer);
                break;
            }
        }
    }
    let refused = refused.expect("writes kept succeeding on a full disk");
    if let Some(reply) = &refused {
        // Answered before the exit: the real cause, not "no leader".
        assert_eq!(reply.status, 507, "{}", reply.text);
        assert!(reply.error().starts_with("storage failed"), "{}", reply.text);
    }
    let status = server.wait_exit().await;
    assert_eq!(status.code(), Some(75), "a server whose storage failed exits 75\n{}", server.log());
    let log = server.log();
    assert!(log.contains("storage failed"), "the log says what failed:\n{log}");
    assert!(log.contains("free space on the filesystem of the data directory"), "the log says what to do:\n{log}");

    // Space back, started again: every job and every finished execution is there, nothing stays running.
    std::fs::remove_file(filler).expect("remove the filler");
    server.restart().await;
    let after = job_definitions(&server).await;
    assert!(before.keys().all(|name| after.contains_key(name)), "jobs lost: {:?} → {:?}", before.keys(), after.keys());
    let mut finished_after = BTreeSet::new();
    for i in 0..4 {
        let name = format!("loud-{i}");
        let execs = server.executions(&name).await;
        finished_after.extend(execs.iter().filter(|e| e.is_final()).map(essence));
    }
    let lost: Vec<&String> = finished_before.difference(&finished_after).collect();
    // Retention keeps the newest 100 per job; far fewer ran here, so every finished record must still be there.
    assert!(lost.is_empty(), "finished executions lost across the disk-full episode: {lost:?}");
    server.get("/health").await.expect(200);
}

/// A server whose Raft port is chosen freely keeps the port it got in its data directory; if another process took
/// it while the server was down (seen in CI: an ephemeral port handed out again within seconds), the server starts
/// on another free port instead of refusing to start, and leads and runs jobs as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_whose_kept_raft_port_was_taken_meanwhile_starts_on_another() {
    let mut server = Server::fresh(&[]).await;
    let kept = server.data_dir().join("raft-port");
    let port: u16 = std::fs::read_to_string(&kept).unwrap().trim().parse().unwrap();
    server.kill9().await;
    let taker =
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the kept port is free while the server is down");
    server.restart().await;
    let now: u16 = std::fs::read_to_string(&kept).unwrap().trim().parse().unwrap();
    assert_ne!(now, port, "the server must have moved to another port");
    assert!(server.log().contains("is taken by another process: taking a free one"), "{}", server.log());
    server.create_job(&shell_job("after-move", "@every 1s", "echo ran")).await;
    server.wait_executions("after-move", "a finished run", secs(20), |e| count(e, "succeeded") >= 1).await;
    drop(taker);
}
