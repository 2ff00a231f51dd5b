//! A node past its capacity for a while, then back under it (issue 19): long runs take all its places while jobs
//! keep falling due on it, so a backlog of late runs builds up. Once its places are free again, the runs due from
//! then on must start on time: the leader never sends a node more due runs than it starts, and it places the newest
//! first, so the backlog (late already) gets what room is left, instead of every new run waiting behind it.
//!
//! Before, the leader sent the node every due run; the node held them all in its queue, oldest first, and once its
//! places were free every new run waited until the backlog had run.
//!
//! A file of its own, so its load does not share the machine with the other tests (test binaries run one after
//! another).

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod cluster_common;
mod common;

use cluster_common::*;
use common::*;
use jiff::SignedDuration;

/// The agent's places (`--max-running`); its room for due runs it has not started is then the minimum, 8.
const PLACES: usize = 32;
/// How long the long runs take every place.
const FULL_FOR_SECS: u64 = 30;
/// Jobs falling due on the agent every second, and what each run does: 40 runs a second of half a second each
/// take 20 of its 32 places, so once free it works a backlog off at 24 runs a second at most (about 50 s for the
/// 1,200 runs of the 30 s it was full), whatever the machine.
const JOBS: usize = 40;
const RUN: &str = "sleep 0.5";
/// Once the places are free, slots due this long after are counted, for [`COUNTED_SECS`].
const COUNTED_AFTER: SignedDuration = SignedDuration::from_secs(2);
const COUNTED_SECS: i64 = 10;
/// A counted slot must start within this long of its instant (an order not started 3 s after its instant expires).
const ON_TIME: SignedDuration = SignedDuration::from_secs(3);

#[tokio::test(flavor = "multi_thread")]
async fn once_a_full_node_has_room_again_new_runs_start_on_time_ahead_of_the_backlog() {
    let places = PLACES.to_string();
    let cluster = Cluster::start(1, &[("a1", &["pool=w"])], &["--max-running", &places, "--max-queued", "4096"]).await;
    cluster.wait_formed().await;
    let on_agent = json!({"tags": {"pool": "w:1"}});

    let hog = with(shell_job("hog", "@manually", &format!("sleep {FULL_FOR_SECS}")), on_agent.clone());
    cluster.create_job(&with(hog, json!({"concurrency": "allow"}))).await;
    for _ in 0..PLACES {
        cluster.write("POST", "/v1/jobs/hog/run", None, &[202]).await;
    }
    wait_until("the long runs take every place on a1", secs(30), async || {
        let running = cluster.executions("hog").await.into_iter().filter(|e| e.status == "running").count();
        if running == PLACES { Ok(()) } else { Err(format!("{running} of {PLACES} running")) }
    })
    .await;

    let jobs = job_names("due", JOBS);
    for name in &jobs {
        cluster.create_job(&with(shell_job(name, "@every 1s", RUN), on_agent.clone())).await;
    }
    let hogs = wait_until("the long runs end", secs(FULL_FOR_SECS + 60), async || {
        let hogs = cluster.executions("hog").await;
        let ended = hogs.iter().filter(|e| e.finished_at.is_some()).count();
        if ended == PLACES { Ok(hogs) } else { Err(format!("{ended} of {PLACES} ended")) }
    })
    .await;
    let free_at = hogs.iter().filter_map(|e| e.finished_at).max().unwrap();
    let (from, to) = (free_at + COUNTED_AFTER, free_at + COUNTED_AFTER + SignedDuration::from_secs(COUNTED_SECS));
    cluster.note(&format!("the agent's places are free from {free_at}; counting slots due in [{from}, {to})"));

    let counted = |execs: Vec<Exec>| -> Vec<Exec> {
        execs.into_iter().filter(|e| e.scheduled_at >= from && e.scheduled_at < to && e.attempt == 1).collect()
    };
    let mut lags = Vec::new();
    for name in &jobs {
        let slots = wait_until(&format!("{name}: the counted slots are decided"), secs(90), async || {
            let slots = counted(cluster.executions(name).await);
            let open = slots.iter().filter(|e| e.status == "pending" || e.status == "running").count();
            if slots.len() >= COUNTED_SECS as usize && open == 0 {
                Ok(slots)
            } else {
                Err(format!("{} slots, {open} pending or running: {}", slots.len(), runs(&slots)))
            }
        })
        .await;
        for exec in &slots {
            assert_eq!(exec.status, "succeeded", "{name}: slot {} ended {}: {exec:?}", exec.scheduled_at, exec.status);
            let lag = exec.started_at.unwrap().duration_since(exec.scheduled_at);
            assert!(
                lag < ON_TIME,
                "{name}: slot {} started {lag:#} after its instant, behind the backlog\n{}",
                exec.scheduled_at,
                runs(&slots)
            );
            lags.push(lag.as_millis());
        }
    }
    lags.sort_unstable();
    println!(
        "{} slots due {COUNTED_AFTER:#}–{}s after the places freed: lag p50 {} ms, max {} ms",
        lags.len(),
        COUNTED_AFTER.as_secs() + COUNTED_SECS,
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
}
