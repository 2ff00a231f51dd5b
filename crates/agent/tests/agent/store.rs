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
