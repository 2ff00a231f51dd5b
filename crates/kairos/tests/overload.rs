//! A cluster past its capacity, then back under it (issue 19), scaled to what CI holds: three servers and six
//! agent-only nodes on one machine, five tickers whose every slot must be accounted for (`catch_up: all`), and
//! hundreds of jobs every second on the agents for 20 s on top, far more than two cores start. Then the load is
//! deleted and the cluster must recover by itself: one leader, writes answered within seconds, nothing left
//! pending or running, every ticker slot recorded once (run, or skipped with the reason) and run at most once,
//! none lost. How long the recovery took is printed.
//!
//! A file of its own, so its load does not share the machine with the other cluster tests (test binaries run one
//! after another).

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod cluster_common;
mod common;

use std::time::{Duration, Instant};

use cluster_common::*;
use common::*;

/// Jobs firing every second on the agents during the overload.
const LOAD_JOBS: usize = 400;
/// How long the overload lasts once every load job exists.
const OVERLOAD_FOR: Duration = Duration::from_secs(20);
/// How long a write may take once the cluster has recovered.
const WRITE_WITHIN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_past_its_capacity_recovers_by_itself_and_accounts_for_every_slot() {
    let names: Vec<String> = (1..=6).map(|i| format!("a{i}")).collect();
    let agents: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &["pool=w"][..])).collect();
    let cluster = Cluster::start(3, &agents, &[]).await;
    cluster.wait_formed().await;
    let dir = cluster.scratch("side-effects");
    let tickers = job_names("tick", 5);
    for name in &tickers {
        cluster.create_job(&ticker(name, &dir)).await;
    }
    cluster.wait_each_fired(&tickers, secs(30)).await;

    let started = Timestamp::now();
    let load = job_names("load", LOAD_JOBS);
    for name in &load {
        let job = with(shell_job(name, "* * * * * *", "true"), json!({"tags": {"pool": "w:1"}}));
        cluster.create_job(&job).await;
    }
    cluster
        .note(&format!("{LOAD_JOBS} load jobs created in {} ms", Timestamp::now().duration_since(started).as_millis()));
    // The overload itself: slots must fall due for this long; nothing waits on it for correctness.
    tokio::time::sleep(OVERLOAD_FOR).await;
    let deleting = Instant::now();
    for name in &load {
        cluster.write("DELETE", &format!("/v1/jobs/{name}"), None, &[200, 404]).await;
    }
    cluster.note(&format!("load deleted in {} ms", deleting.elapsed().as_millis()));

    let probe = with(shell_job("probe", "@manually", "true"), json!({}));
    wait_until("a write is answered within 3 s", secs(60), async || {
        let leader = cluster.leader().await?;
        let sent = Instant::now();
        match cluster.node(leader).try_request("POST", "/v1/jobs", Some(&probe), WRITE_WITHIN).await {
            Some(reply) if reply.status == 201 => Ok(()),
            Some(reply) => Err(format!("{} {} after {:?}", reply.status, reply.text, sent.elapsed())),
            None => Err(format!("no answer within {WRITE_WITHIN:?}")),
        }
    })
    .await;
    let recovered = deleting.elapsed();
    cluster.disable_all(&tickers).await;
    let history = cluster.wait_quiet(&tickers, secs(60)).await;
    let mut statuses = std::collections::BTreeMap::new();
    for name in &tickers {
        let execs = &history[name];
        assert_ticker_lost_and_duplicated_nothing(name, execs, &dir, started + secs(5));
        for exec in execs {
            *statuses.entry(exec.status.clone()).or_insert(0) += 1;
            match exec.status.as_str() {
                "succeeded" => {}
                "skipped" => {
                    let error = exec.error.as_deref().unwrap_or_default();
                    assert!(error.contains("overloaded"), "{name}: skipped without the reason: {exec:?}");
                }
                _ => panic!("{name}: slot {} ended {}: {exec:?}\n{}", exec.scheduled_at, exec.status, runs(execs)),
            }
        }
    }
    println!(
        "overload of {LOAD_JOBS} jobs/s for {OVERLOAD_FOR:?}: recovered {} ms after the deletions started; ticker \
         slots {statuses:?}",
        recovered.as_millis()
    );
}
