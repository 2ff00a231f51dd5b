//! The rabbitmq executor against a real `rabbitmq-server` on 127.0.0.1 (each test boots a broker: seconds).

use std::time::{Duration, Instant};

use kairos_agent::{Outcome, RunStatus};
use kairos_testkit::{Service, free_port, services};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::support::{Agent, agent, spec};

fn url(server: &Service) -> String {
    format!("amqp://guest:guest@{}/%2f", server.addr())
}

async fn channel(server: &Service) -> (Connection, Channel) {
    let connection = Connection::connect(&url(server), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// The next message in `queue`, taken off it.
async fn take(channel: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap()
}

async fn run(agent: &Agent, pairs: &[(&str, &str)]) -> Outcome {
    agent.runner.run(spec("rabbitmq", pairs), CancellationToken::new()).await
}

#[tokio::test]
async fn a_confirmed_message_arrives_once_and_an_unroutable_one_fails() {
    let server = services::rabbitmq().await;
    let url = url(&server);
    let agent = agent();
    let (_connection, observer) = channel(&server).await;
    // The test's connection, and any the server's readiness probe left in TIME_WAIT.
    let connections_before = services::connections_to(server.port());
    let publish = [
        ("url", url.as_str()),
        ("queue.name", "jobs"),
        ("queue.create", "true"),
        ("queue.durable", "true"),
        ("message.body", "hello"),
        ("message.content_type", "text/plain"),
        ("message.delivery_mode", "2"),
        ("message.messageId", "m-1"),
    ];
    for run_number in 0..2 {
        let outcome = run(&agent, &publish).await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "run {run_number}: {outcome:?}");
        assert_eq!(
            outcome.output_tail,
            "published 5 bytes to queue 'jobs' (default exchange); the broker confirmed it\n"
        );
        let message = take(&observer, "jobs").await.expect("the message is in the queue");
        assert_eq!(message.delivery.data, b"hello");
        let properties = &message.delivery.properties;
        assert_eq!(properties.content_type().as_ref().map(|s| s.as_str()), Some("text/plain"));
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(properties.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert!(take(&observer, "jobs").await.is_none(), "exactly one message per run");
    }

    assert_eq!(
        services::connections_to(server.port()),
        connections_before + 1,
        "the test's connection and one kept by the runner, none opened and closed per run"
    );

    // base64Body, into a queue the test declared itself.
    observer.queue_declare("raw".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let outcome = run(&agent, &[("url", &url), ("queue.name", "raw"), ("message.base64Body", "AAEC")]).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(take(&observer, "raw").await.unwrap().delivery.data, [0, 1, 2]);

    let outcome = run(&agent, &[("url", &url), ("queue.name", "no-such-queue"), ("message.body", "x")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.contains("publishing to queue 'no-such-queue'") && error.contains("NO_ROUTE"), "{error}");

    let outcome = run(&agent, &[("url", &url), ("exchange", "no-such-exchange"), ("queue.name", "jobs")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.contains("no-such-exchange") && error.contains("NOT_FOUND"), "{error}");

    let wrong = format!("amqp://guest:wrong-secret@{}/%2f", server.addr());
    let outcome = run(&agent, &[("url", &wrong), ("queue.name", "jobs")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.clone().unwrap();
    assert!(error.starts_with(&format!("cannot connect to RabbitMQ at amqp://guest:***@{}", server.addr())), "{error}");
    assert!(!format!("{outcome:?}").contains("wrong-secret"), "{outcome:?}");

    // After all those failures the kept connection still serves.
    let outcome = run(&agent, &publish).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
}

#[tokio::test]
async fn a_blocked_broker_times_out_and_a_cancel_ends_the_run() {
    let server = services::rabbitmq().await;
    let url = url(&server);
    let agent = agent();
    let publish = [("url", url.as_str()), ("queue.name", "jobs"), ("queue.create", "true"), ("message.body", "x")];
    assert_eq!(run(&agent, &publish).await.status, RunStatus::Succeeded);
    // A memory alarm: the broker stops reading from publishing connections, so no confirm comes.
    server.rabbitmqctl(&["set_vm_memory_high_watermark", "absolute", "1"]);
    let mut with_timeout = publish.to_vec();
    with_timeout.push(("timeout", "1s"));
    let outcome = run(&agent, &with_timeout).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("timed out after 1s"));

    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let (runner, cancel, spec) = (agent.runner.clone(), cancel.clone(), spec("rabbitmq", &publish));
        async move { runner.run(spec, cancel).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // let it reach the broker; correctness does not depend on it
    let cancelled_at = Instant::now();
    cancel.cancel();
    let outcome = running.await.unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error() {
    let url = format!("amqp://guest:guest-secret@127.0.0.1:{}/%2f", free_port());
    let outcome = run(&agent(), &[("url", &url), ("queue.name", "jobs")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.starts_with("cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:"), "{error}");
    assert!(error.contains("refused") && !error.contains("guest-secret"), "{error}");
}
