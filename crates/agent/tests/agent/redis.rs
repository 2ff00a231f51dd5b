//! The redis executor against a real `redis-server` on 127.0.0.1.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kairos_agent::{Outcome, RunStatus};
use kairos_testkit::{Service, free_port, services};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::support::{Agent, agent, spec};

fn url(server: &Service) -> String {
    format!("redis://{}/0", server.addr())
}

/// A plain connection of the test's own.
async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn run(agent: &Agent, pairs: &[(&str, &str)]) -> Outcome {
    agent.runner.run(spec("redis", pairs), CancellationToken::new()).await
}

#[tokio::test]
async fn lpush_rpush_and_xadd_store_what_the_job_says() {
    let server = services::redis(None).await;
    let url = url(&server);
    let agent = agent();
    let mut observer = connection(&url).await;
    // The test's connection, and any the server's readiness probe left in TIME_WAIT.
    let connections_before = services::connections_to(server.port());
    for (command, message, length) in [("LPUSH", "a", 1), ("LPUSH", "b", 2), ("RPUSH", "c", 3)] {
        let pairs = [("url", url.as_str()), ("command", command), ("key", "jobs"), ("message", message)];
        let outcome = run(&agent, &pairs).await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "{command}: {outcome:?}");
        assert_eq!(outcome.output_tail, format!("pushed to list 'jobs', which now holds {length} items\n"));
    }
    let list: Vec<String> = observer.lrange("jobs", 0, -1).await.unwrap();
    assert_eq!(list, ["b", "a", "c"]);

    let fields =
        [("url", url.as_str()), ("command", "XADD"), ("key", "events"), ("fields", r#"{"event": "tick", "n": "1"}"#)];
    let with_fields = run(&agent, &fields).await;
    let message = [("url", url.as_str()), ("command", "xadd"), ("key", "events"), ("message", "plain")];
    let with_message = run(&agent, &message).await;
    let entries: redis::streams::StreamRangeReply = observer.xrange_all("events").await.unwrap();
    assert_eq!(entries.ids.len(), 2);
    for (outcome, entry) in [(&with_fields, &entries.ids[0]), (&with_message, &entries.ids[1])] {
        assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
        assert_eq!(outcome.output_tail, format!("added entry {} to stream 'events'\n", entry.id));
    }
    assert_eq!(
        services::connections_to(server.port()),
        connections_before + 1,
        "the test's connection and one kept by the runner, none opened and closed per run"
    );
    let field = |entry: &redis::streams::StreamId, name: &str| entry.get::<String>(name);
    assert_eq!(field(&entries.ids[0], "event").as_deref(), Some("tick"));
    assert_eq!(field(&entries.ids[0], "n").as_deref(), Some("1"));
    assert_eq!(field(&entries.ids[1], "message").as_deref(), Some("plain"));
}

#[tokio::test]
async fn a_publish_reaches_a_subscriber_exactly_once() {
    let server = services::redis(None).await;
    let url = url(&server);
    let mut subscriber = redis::Client::open(url.as_str()).unwrap().get_async_pubsub().await.unwrap();
    subscriber.subscribe("ticks").await.unwrap();
    let pairs = [("url", url.as_str()), ("command", "PUBLISH"), ("channel", "ticks"), ("message", "hello")];
    let outcome = run(&agent(), &pairs).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output_tail, "published to channel 'ticks'; 1 subscribers received it\n");
    let _: i64 = connection(&url).await.publish("ticks", "sentinel").await.unwrap();
    let mut messages = subscriber.on_message();
    let payload = |m: redis::Msg| m.get_payload::<String>().unwrap();
    assert_eq!(payload(messages.next().await.unwrap()), "hello");
    assert_eq!(payload(messages.next().await.unwrap()), "sentinel", "the job's message came once");
}

#[tokio::test]
async fn wrong_credentials_fail_without_the_password_showing() {
    let server = services::redis(Some("right-secret")).await;
    let agent = agent();
    let wrong = format!("redis://:wrong-secret@{}/0", server.addr());
    let outcome = run(&agent, &[("url", &wrong), ("command", "LPUSH"), ("key", "k"), ("message", "m")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.clone().unwrap();
    assert!(error.starts_with(&format!("cannot connect to redis at redis://:***@{}/0", server.addr())), "{error}");
    assert!(error.to_lowercase().contains("password"), "{error}");
    assert!(!format!("{outcome:?}").contains("wrong-secret"), "{outcome:?}");

    let none = url(&server);
    let outcome = run(&agent, &[("url", &none), ("command", "LPUSH"), ("key", "k"), ("message", "m")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    assert!(outcome.error.as_deref().unwrap().contains("NOAUTH"), "{outcome:?}");

    let right = format!("redis://:right-secret@{}/0", server.addr());
    let outcome = run(&agent, &[("url", &right), ("command", "LPUSH"), ("key", "k"), ("message", "m")]).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let outcome = run(&agent(), &[("url", &url), ("command", "PUBLISH"), ("channel", "c")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.starts_with(&format!("cannot connect to redis at {url}")), "{error}");
    assert!(error.contains("refused"), "{error}");
}

/// Makes the server hold every client's commands for a minute (`CLIENT PAUSE ... ALL`), as a stuck server would.
async fn pause(url: &str) {
    let () =
        redis::cmd("CLIENT").arg("PAUSE").arg(60_000).arg("ALL").query_async(&mut connection(url).await).await.unwrap();
}

#[tokio::test]
async fn a_stuck_server_times_out_and_a_cancel_ends_the_run() {
    let server = services::redis(None).await;
    let url = url(&server);
    pause(&url).await;
    let agent = agent();
    let pairs = [("url", url.as_str()), ("command", "LPUSH"), ("key", "k"), ("message", "m"), ("timeout", "300ms")];
    let outcome = run(&agent, &pairs).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("timed out after 300ms"));

    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let (runner, cancel) = (agent.runner.clone(), cancel.clone());
        let spec = spec("redis", &[("url", url.as_str()), ("command", "LPUSH"), ("key", "k"), ("message", "m")]);
        async move { runner.run(spec, cancel).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // let it reach the server; correctness does not depend on it
    let cancelled_at = Instant::now();
    cancel.cancel();
    let outcome = running.await.unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_server_that_went_away_fails_runs_clearly_until_it_is_back() {
    let mut server = services::redis(None).await;
    let url = url(&server);
    let pairs = [("url", url.as_str()), ("command", "RPUSH"), ("key", "k"), ("message", "m"), ("timeout", "2s")];
    let agent = agent();
    assert_eq!(run(&agent, &pairs).await.status, RunStatus::Succeeded);

    server.kill();
    // The kept connection is broken: the run that finds out fails naming the command, and forgets it.
    let outcome = run(&agent, &pairs).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    let clear = error.starts_with("RPUSH to 'k' failed") || error.starts_with("cannot connect to redis at");
    assert!(clear, "{error}");
    let outcome = run(&agent, &pairs).await;
    let error = outcome.error.unwrap();
    assert!(error.starts_with(&format!("cannot connect to redis at {url}")) && error.contains("refused"), "{error}");

    let _back = services::redis_on(server.port(), None).await;
    let outcome = run(&agent, &pairs).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "the next run connects again: {outcome:?}");
}
