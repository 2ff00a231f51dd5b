//! The local output store.

use kairos_agent::OutputStore;

fn store() -> (OutputStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (OutputStore::open(dir.path().join("nested/outputs")).unwrap(), dir)
}

#[tokio::test]
async fn outputs_are_read_listed_and_deleted_per_execution_and_per_job() {
    let (store, _dir) = store();
    let runner = kairos_agent::Runner::new(store.clone(), std::time::Duration::from_millis(100));
    for (job, id) in [("a", "e2"), ("a", "e1"), ("b", "e1")] {
        let spec =
            // Longer than the tail, so the output is stored in a file.
            kairos_agent::RunSpec::new(job, id, "shell", [("command".to_owned(), format!("seq -f {job}-{id}-%g 1 1000"))].into());
        runner.run(spec, Default::default()).await;
    }
    assert_eq!(store.list("a").unwrap(), ["e1", "e2"]);
    let first_lines = |text: Option<String>| text.map(|t| t.lines().take(2).collect::<Vec<_>>().join(","));
    assert_eq!(first_lines(store.read("a", "e2").unwrap()).as_deref(), Some("a-e2-1,a-e2-2"));

    store.delete("a", "e2").unwrap();
    store.delete("a", "e2").unwrap(); // already gone: fine
    assert_eq!(store.read("a", "e2").unwrap(), None);
    assert_eq!(store.list("a").unwrap(), ["e1"]);

    store.delete_job("a").unwrap();
    store.delete_job("a").unwrap();
    assert!(store.list("a").unwrap().is_empty());
    assert_eq!(first_lines(store.read("b", "e1").unwrap()).as_deref(), Some("b-e1-1,b-e1-2"));
}

#[test]
fn unknown_jobs_and_executions_read_as_absent() {
    let (store, _dir) = store();
    assert_eq!(store.read("nope", "x").unwrap(), None);
    assert!(store.list("nope").unwrap().is_empty());
}

#[test]
fn names_that_would_escape_the_directory_are_refused() {
    let (store, _dir) = store();
    for (job, id) in [("..", "x"), ("a/b", "x"), ("a", "../x"), ("", "x"), ("a", "")] {
        let err = store.read(job, id).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{job:?}/{id:?}");
    }
    assert!(store.delete_job("..").is_err());
}

/// Run a shell job whose output is `bytes` bytes of one repeated line; its outcome's tail.
async fn run_bytes(runner: &kairos_agent::Runner, job: &str, id: &str, bytes: u64) -> kairos_agent::Outcome {
    let command = format!("head -c {bytes} /dev/zero | tr '\\0' 'x'");
    let config = [("command".to_owned(), command), ("shell".to_owned(), "true".to_owned())];
    let spec = kairos_agent::RunSpec::new(job, id, "shell", config.into());
    runner.run(spec, Default::default()).await
}

fn stored_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for job in std::fs::read_dir(dir).unwrap() {
        for file in std::fs::read_dir(job.unwrap().path()).unwrap() {
            total += file.unwrap().metadata().unwrap().len();
        }
    }
    total
}

#[tokio::test]
async fn the_node_wide_budget_holds_by_deleting_the_oldest_outputs_first() {
    let dir = tempfile::tempdir().unwrap();
    let outputs = dir.path().join("outputs");
    let limits = kairos_agent::OutputLimits { store_bytes_max: 250_000, disk_free_bytes_min: 0 };
    let store = OutputStore::open_with(&outputs, limits).unwrap();
    let runner = kairos_agent::Runner::new(store.clone(), std::time::Duration::from_millis(100));
    for i in 0..6 {
        let outcome = run_bytes(&runner, if i % 2 == 0 { "even" } else { "odd" }, &format!("e{i}"), 100_000).await;
        assert!(!outcome.output_tail.contains("not stored"), "run {i} had room: {}", outcome.output_tail);
        assert!(stored_bytes(&outputs) <= 250_000, "over budget after run {i}: {}", stored_bytes(&outputs));
        assert_eq!(store.used_bytes(), stored_bytes(&outputs), "the ledger matches the disk");
    }
    // Two of six 100 kB outputs fit: the newest two, across jobs.
    assert_eq!(store.list("even").unwrap(), ["e4"]);
    assert_eq!(store.list("odd").unwrap(), ["e5"]);
    assert_eq!(store.read("odd", "e5").unwrap().map(|t| t.len()), Some(100_000));

    // Reopened, the store counts what is on disk, oldest first in line.
    drop(runner);
    let store = OutputStore::open_with(&outputs, limits).unwrap();
    assert_eq!(store.used_bytes(), 200_000);
    let runner = kairos_agent::Runner::new(store.clone(), std::time::Duration::from_millis(100));
    run_bytes(&runner, "even", "e6", 100_000).await;
    assert_eq!(store.list("even").unwrap(), ["e6"], "e4 was the oldest");
    assert_eq!(store.list("odd").unwrap(), ["e5"]);
    store.delete_job("odd").unwrap();
    assert_eq!(store.used_bytes(), 100_000, "deleting a job gives its bytes back");
}

#[tokio::test]
async fn an_output_larger_than_the_budget_stops_being_stored_and_its_record_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let outputs = dir.path().join("outputs");
    let limits = kairos_agent::OutputLimits { store_bytes_max: 50_000, disk_free_bytes_min: 0 };
    let store = OutputStore::open_with(&outputs, limits).unwrap();
    let runner = kairos_agent::Runner::new(store.clone(), std::time::Duration::from_millis(100));
    let outcome = run_bytes(&runner, "big", "e1", 200_000).await;
    assert_eq!(outcome.status, kairos_agent::RunStatus::Succeeded, "the run itself goes on: {outcome:?}");
    assert!(outcome.output_tail.contains("output not stored in full"), "{}", outcome.output_tail);
    assert!(outcome.output_tail.contains("--output-store-max-bytes"), "{}", outcome.output_tail);
    assert!(stored_bytes(&outputs) <= 50_000, "{}", stored_bytes(&outputs));
    assert_eq!(store.used_bytes(), stored_bytes(&outputs));
}

#[tokio::test]
async fn the_free_space_floor_stops_outputs_before_the_disk_fills() {
    let dir = tempfile::tempdir().unwrap();
    // A floor higher than any disk's free space: nothing may be stored, and the record says so.
    let limits = kairos_agent::OutputLimits { store_bytes_max: u64::MAX / 2, disk_free_bytes_min: u64::MAX / 4 };
    let store = OutputStore::open_with(dir.path().join("outputs"), limits).unwrap();
    let runner = kairos_agent::Runner::new(store.clone(), std::time::Duration::from_millis(100));
    let outcome = run_bytes(&runner, "floor", "e1", 100_000).await;
    assert_eq!(outcome.status, kairos_agent::RunStatus::Succeeded);
    assert!(outcome.output_tail.contains("--disk-free-min-bytes"), "{}", outcome.output_tail);
    assert_eq!(store.read("floor", "e1").unwrap(), None, "no file rather than an empty one");
    assert_eq!(store.used_bytes(), 0);
}
