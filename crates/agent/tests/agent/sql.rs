//! The sql executor against a real PostgreSQL server on 127.0.0.1.

use std::time::{Duration, Instant};

use kairos_agent::{Outcome, RunStatus};
use kairos_testkit::{Service, free_port, services, wait_until};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::support::{Agent, PATIENCE, agent, spec};

const USER: &str = "kairos";
const PASSWORD: &str = "pg-secret";

fn url(server: &Service) -> String {
    format!("postgres://{USER}:{PASSWORD}@{}/postgres", server.addr())
}

/// A plain client of the test's own.
async fn client(server: &Service) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(server), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn run(agent: &Agent, pairs: &[(&str, &str)]) -> Outcome {
    agent.runner.run(spec("sql", pairs), CancellationToken::new()).await
}

#[tokio::test]
async fn a_script_reports_rows_affected_and_a_bounded_preview() {
    let server = services::postgres(USER, PASSWORD).await;
    let url = url(&server);
    let script = "CREATE TABLE t (id int, name text); \
                  INSERT INTO t VALUES (1, 'one'), (2, NULL), (3, 'three'); \
                  SELECT id, name FROM t ORDER BY id;";
    let outcome = run(&agent(), &[("url", &url), ("statement", script), ("previewRows", "2")]).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(
        outcome.output_tail,
        "(0 rows affected)\n(3 rows affected)\nid\tname\n1\tone\n2\tNULL\n(3 rows, first 2 shown)\n"
    );
    let rows = client(&server).await.query("SELECT count(*) FROM t", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 3, "the script was committed");
}

#[tokio::test]
async fn connections_are_reused_and_reset_between_runs() {
    let server = services::postgres(USER, PASSWORD).await;
    let url = url(&server);
    let agent = agent();
    let leaves_state = "SET application_name = 'leak'; BEGIN; SELECT 'pid=' || pg_backend_pid() AS pid";
    let first = run(&agent, &[("url", &url), ("statement", leaves_state)]).await;
    let looks = "SELECT 'pid=' || pg_backend_pid() AS pid, '[' || current_setting('application_name') || ']' AS app";
    let second = run(&agent, &[("url", &url), ("statement", looks)]).await;
    assert_eq!(first.status, RunStatus::Succeeded, "{first:?}");
    assert_eq!(second.status, RunStatus::Succeeded, "{second:?}");
    let pid = |outcome: &Outcome| {
        let at = outcome.output_tail.find("pid=").unwrap();
        outcome.output_tail[at..].split(['\t', '\n']).next().unwrap().to_owned()
    };
    assert_eq!(pid(&first), pid(&second), "one connection served both runs: {first:?} {second:?}");
    assert!(second.output_tail.contains(&format!("{}\t[]\n", pid(&second))), "no setting leaked: {second:?}");
}

#[tokio::test]
async fn a_failing_statement_fails_with_the_servers_message() {
    let server = services::postgres(USER, PASSWORD).await;
    let outcome = run(&agent(), &[("url", &url(&server)), ("statement", "SELECT 1; SELECT * FROM nope")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("ERROR 42P01: relation \"nope\" does not exist"));
    assert!(outcome.output_tail.starts_with("?column?\n1\n(1 rows)\n"), "{outcome:?}");
}

#[tokio::test]
async fn wrong_credentials_fail_without_the_password_showing() {
    let server = services::postgres(USER, PASSWORD).await;
    let wrong = format!("postgres://{USER}:wrong-secret@{}/postgres", server.addr());
    let outcome = run(&agent(), &[("url", &wrong), ("statement", "SELECT 1")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.clone().unwrap();
    assert!(error.starts_with("cannot connect to PostgreSQL: FATAL 28P01: password authentication failed"), "{error}");
    assert!(!format!("{outcome:?}").contains("wrong-secret"), "{outcome:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let url = format!("host=127.0.0.1 port={} user=u password=p-secret", free_port());
    let outcome = run(&agent(), &[("url", &url), ("statement", "SELECT 1")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.starts_with("cannot connect to PostgreSQL: error connecting to server"), "{error}");
    assert!(error.contains("refused") && !error.contains("p-secret"), "{error}");
}

/// Whether a statement containing `marker` is still running on the server, as the server itself says.
async fn running(observer: &tokio_postgres::Client, marker: &str) -> bool {
    let rows = observer
        .query(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' \
             AND pid <> pg_backend_pid()",
            &[&marker],
        )
        .await
        .unwrap();
    rows[0].get::<_, i64>(0) > 0
}

#[tokio::test]
async fn cancel_cancels_the_statement_on_the_server() {
    let server = services::postgres(USER, PASSWORD).await;
    let observer = client(&server).await;
    let agent = agent();
    let cancel = CancellationToken::new();
    let statement = "SELECT pg_sleep(30) -- cancel-marker";
    let run = tokio::spawn({
        let (runner, cancel) = (agent.runner.clone(), cancel.clone());
        let spec = spec("sql", &[("url", &url(&server)), ("statement", statement)]);
        async move { runner.run(spec, cancel).await }
    });
    wait_until("the statement runs on the server", PATIENCE, async || {
        running(&observer, "cancel-marker").await.then_some(())
    })
    .await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let outcome = run.await.unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("cancelled; the statement was cancelled on the server"));
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    wait_until("the statement is gone from the server", PATIENCE, async || {
        (!running(&observer, "cancel-marker").await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_timeout_cancels_the_statement_on_the_server() {
    let server = services::postgres(USER, PASSWORD).await;
    let observer = client(&server).await;
    let pairs = [
        ("url", url(&server)),
        ("statement", "SELECT pg_sleep(30) -- timeout-marker".to_owned()),
        ("timeout", "1s".to_owned()),
    ];
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = Instant::now();
    let outcome = run(&agent(), &pairs).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("timed out after 1s; the statement was cancelled on the server"));
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_until("the statement is gone from the server", PATIENCE, async || {
        (!running(&observer, "timeout-marker").await).then_some(())
    })
    .await;
}
