//! Jobs that leave evidence: a "ticker" fires every second and appends its execution id and node to a file, so a
//! test can check every slot ran exactly once in the records and in what really ran.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use jiff::SignedDuration;

use super::runs;
use crate::common::*;

/// `prefix-00`, `prefix-01`, …
pub fn job_names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}-{n:02}")).collect()
}

pub fn side_effect_file(dir: &Path, job: &str) -> std::path::PathBuf {
    dir.join(format!("{job}.log"))
}

/// A job firing every second that appends a line `<execution id> <node>` to `<dir>/<name>.log`, catching up every
/// missed slot. The node is the last part of the run's working directory: runs inherit their node's, which the
/// harness makes the node's data directory, named after it.
pub fn ticker(name: &str, dir: &Path) -> Value {
    let file = side_effect_file(dir, name);
    let command = format!("echo \"$KAIROS_EXECUTION_ID ${{PWD##*/}}\" >> '{}'", file.display());
    with(shell_job(name, "@every 1s", &command), json!({"catch_up": "all", "catch_up_window": "1m"}))
}

/// The runs in a job's side-effect file, as (execution id, node), in the order they wrote them.
pub fn side_effects(dir: &Path, job: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(side_effect_file(dir, job)).unwrap_or_default();
    let run = |line: &str| {
        let (id, node) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        (id.to_string(), node.to_string())
    };
    text.lines().filter(|l| !l.trim().is_empty()).map(run).collect()
}

/// No slot ran twice: no `scheduled_at` has two first attempts, and no execution id is in the side-effect file
/// twice. Every line of the file is a recorded execution, and every `succeeded` record has its line, written on
/// the node the record names.
#[track_caller]
pub fn assert_each_slot_ran_once(name: &str, execs: &[Exec], dir: &Path) {
    // A job that runs on several nodes has one copy of each slot per target node, named in its id (`…@node`).
    let mut per_slot: BTreeMap<(Timestamp, Option<&str>), Vec<&str>> = BTreeMap::new();
    for exec in execs.iter().filter(|e| e.attempt == 1) {
        per_slot.entry((exec.scheduled_at, exec.id.split_once('@').map(|(_, t)| t))).or_default().push(&exec.id);
    }
    let twice: Vec<String> =
        per_slot.iter().filter(|(_, ids)| ids.len() > 1).map(|((at, _), ids)| format!("{at} {ids:?}")).collect();
    assert!(twice.is_empty(), "{name}: slots decided twice: {twice:?}\n{}", runs(execs));

    let mut ran_on: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, node) in side_effects(dir, name) {
        ran_on.entry(id).or_default().push(node);
    }
    let repeated: Vec<String> =
        ran_on.iter().filter(|(_, nodes)| nodes.len() > 1).map(|(id, nodes)| format!("{id} on {nodes:?}")).collect();
    assert!(repeated.is_empty(), "{name}: executions that ran more than once: {repeated:?}\n{}", runs(execs));
    let ids: BTreeSet<&str> = execs.iter().map(|e| e.id.as_str()).collect();
    let unrecorded: Vec<&String> = ran_on.keys().filter(|id| !ids.contains(id.as_str())).collect();
    assert!(unrecorded.is_empty(), "{name}: runs without a record: {unrecorded:?}\n{}", runs(execs));
    for exec in execs.iter().filter(|e| e.status == "succeeded") {
        let nodes = ran_on.get(&exec.id);
        assert!(nodes.is_some(), "{name}: {} is recorded succeeded but never ran\n{}", exec.id, runs(execs));
        assert!(
            nodes.is_some_and(|n| n.contains(&exec.node_name)),
            "{name}: {} is recorded as run on {} but ran on {nodes:?}\n{}",
            exec.id,
            exec.node_name,
            runs(execs)
        );
    }
}

/// What a ticker (see [`ticker`]) must show once it is disabled and quiet, after a disturbance at `around`: only
/// first attempts of scheduled or caught-up slots; its slots a gap-free 1-second sequence that starts before
/// `around` and goes on well after it; and every slot run exactly once.
#[track_caller]
pub fn assert_ticker_lost_and_duplicated_nothing(name: &str, execs: &[Exec], dir: &Path, around: Timestamp) {
    let odd: Vec<&Exec> =
        execs.iter().filter(|e| e.attempt != 1 || !matches!(e.trigger.as_str(), "schedule" | "catch_up")).collect();
    assert!(odd.is_empty(), "{name}: only first attempts of slots were expected, got {odd:?}\n{}", runs(execs));
    assert_each_slot_ran_once(name, execs, dir);

    let mut slots: Vec<Timestamp> = execs.iter().map(|e| e.scheduled_at).collect();
    slots.sort();
    assert!(!slots.is_empty(), "{name}: no execution at all");
    let gaps: Vec<String> = slots
        .windows(2)
        .filter(|p| p[1].duration_since(p[0]) != SignedDuration::from_secs(1))
        .map(|p| format!("{} -> {}", p[0], p[1]))
        .collect();
    assert!(gaps.is_empty(), "{name}: slots missing between {gaps:?}\n{}", runs(execs));
    let (first, last) = (slots[0], slots[slots.len() - 1]);
    assert!(
        first < around && last > around + secs(2),
        "{name}: the slots ({first} to {last}) do not span the disturbance at {around}\n{}",
        runs(execs)
    );
}
