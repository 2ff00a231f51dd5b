//! The nats executor against a real `nats-server` on 127.0.0.1.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kairos_agent::RunStatus;
use kairos_testkit::{free_port, services, wait_until};
use tokio_util::sync::CancellationToken;

use crate::support::{PATIENCE, agent, spec};

/// A plain client of the test's own, flushed so that its subscriptions are in place on the server.
async fn client(server: &kairos_testkit::Service) -> async_nats::Client {
    async_nats::connect(server.addr()).await.unwrap()
}

#[tokio::test]
async fn a_publish_reaches_a_subscriber_exactly_once_with_body_and_headers() {
    let server = services::nats(None).await;
    let observer = client(&server).await;
    let mut received = observer.subscribe("jobs.tick").await.unwrap();
    observer.flush().await.unwrap();
    let agent = agent();
    // The test's client, and any the server's readiness probe left in TIME_WAIT.
    let connections_before = services::connections_to(server.port());
    let url = format!("nats://{}", server.addr());
    let pairs = [
        ("url", url.as_str()),
        ("subject", "jobs.tick"),
        ("message", "hello"),
        ("headers", r#"["Trace-Id: 42", "Trace-Id: 43"]"#),
    ];
    for run in 0..2 {
        let outcome = agent.runner.run(spec("nats", &pairs), CancellationToken::new()).await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "run {run}: {outcome:?}");
        assert_eq!(outcome.output_tail, "published 5 bytes to 'jobs.tick'\n");
        let message = received.next().await.unwrap();
        assert_eq!(&message.payload[..], b"hello");
        let headers = message.headers.unwrap();
        let trace: Vec<&str> = headers.get_all("Trace-Id").map(|v| v.as_str()).collect();
        assert_eq!(trace, ["42", "43"]);
    }
    assert_eq!(
        services::connections_to(server.port()),
        connections_before + 1,
        "the test's client and one kept by the runner, none opened and closed per run"
    );
    // Exactly once: the next message after the runs is one the test sends now.
    observer.publish("jobs.tick", "sentinel".into()).await.unwrap();
    assert_eq!(&received.next().await.unwrap().payload[..], b"sentinel");
}

#[tokio::test]
async fn request_reply_puts_the_reply_in_the_output() {
    let server = services::nats(None).await;
    let responder = client(&server).await;
    let mut requests = responder.subscribe("svc.echo").await.unwrap();
    responder.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let reply = format!("pong:{}", String::from_utf8_lossy(&request.payload));
            responder.publish(request.reply.unwrap(), reply.into()).await.unwrap();
        }
    });
    let url = format!("nats://{}", server.addr());
    let pairs = [("url", url.as_str()), ("subject", "svc.echo"), ("message", "ping"), ("request", "true")];
    let outcome = agent().runner.run(spec("nats", &pairs), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output_tail, "pong:ping");
}

#[tokio::test]
async fn a_request_nobody_answers_fails_naming_the_subject() {
    let server = services::nats(None).await;
    let url = format!("nats://{}", server.addr());
    let pairs = [("url", url.as_str()), ("subject", "svc.nobody"), ("request", "true")];
    let outcome = agent().runner.run(spec("nats", &pairs), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.contains("request to 'svc.nobody' failed") && error.contains("no responders"), "{error}");
}

/// A responder that takes requests and never answers.
async fn silent_responder(server: &kairos_testkit::Service, subject: &str) -> async_nats::Subscriber {
    let responder = client(server).await;
    let requests = responder.subscribe(subject.to_owned()).await.unwrap();
    responder.flush().await.unwrap();
    requests
}

#[tokio::test]
async fn a_request_without_a_reply_times_out() {
    let server = services::nats(None).await;
    let _requests = silent_responder(&server, "svc.slow").await;
    let url = format!("nats://{}", server.addr());
    let pairs = [("url", url.as_str()), ("subject", "svc.slow"), ("request", "true"), ("timeout", "300ms")];
    let started = Instant::now();
    let outcome = agent().runner.run(spec("nats", &pairs), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("timed out after 300ms"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn cancel_abandons_a_pending_request() {
    let server = services::nats(None).await;
    let mut requests = silent_responder(&server, "svc.slow").await;
    let url = format!("nats://{}", server.addr());
    let pairs = [("url", url.as_str()), ("subject", "svc.slow"), ("request", "true")];
    let agent = agent();
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (runner, cancel, spec) = (agent.runner.clone(), cancel.clone(), spec("nats", &pairs));
        async move { runner.run(spec, cancel).await }
    });
    // The request is on the server: now cancel it.
    requests.next().await.unwrap();
    let cancelled_at = Instant::now();
    cancel.cancel();
    let outcome = run.await.unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("cancelled"));
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let pairs = [("url", url.as_str()), ("subject", "jobs.tick"), ("timeout", "10s")];
    let outcome = agent().runner.run(spec("nats", &pairs), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.starts_with(&format!("cannot connect to NATS at {url}")), "{error}");
    assert!(error.contains("refused"), "{error}");
}

#[tokio::test]
async fn wrong_credentials_fail_without_the_password_showing() {
    let server = services::nats(Some(("app", "right-secret"))).await;
    let url = format!("nats://{}", server.addr());
    let wrong = [("url", url.as_str()), ("subject", "a"), ("userName", "app"), ("password", "wrong-secret")];
    let outcome = agent().runner.run(spec("nats", &wrong), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.clone().unwrap();
    assert!(error.contains("authorization violation"), "{error}");
    assert!(!format!("{outcome:?}").contains("wrong-secret"), "{outcome:?}");

    // The password in the URL instead of the keys, masked the same way.
    let in_url = format!("nats://app:wrong-secret@{}", server.addr());
    let outcome =
        agent().runner.run(spec("nats", &[("url", &in_url), ("subject", "a")]), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    assert!(!format!("{outcome:?}").contains("wrong-secret"), "{outcome:?}");

    let right = [("url", url.as_str()), ("subject", "a"), ("userName", "app"), ("password", "right-secret")];
    let outcome = agent().runner.run(spec("nats", &right), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
}

#[tokio::test]
async fn a_server_that_went_away_is_a_clear_error_and_its_return_is_noticed() {
    let mut server = services::nats(None).await;
    let url = format!("nats://{}", server.addr());
    // A short timeout bounds a run that still tries the old connection.
    let pairs = [("url", url.as_str()), ("subject", "jobs.tick"), ("message", "m"), ("timeout", "2s")];
    let agent = agent();
    let outcome = agent.runner.run(spec("nats", &pairs), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");

    server.kill();
    // The kept client notices the closed connection; until it has, a run may still try it (and time out).
    let failed = wait_until("a run fails for the server being down", PATIENCE, async || {
        let outcome = agent.runner.run(spec("nats", &pairs), CancellationToken::new()).await;
        (outcome.status == RunStatus::Failed).then_some(outcome)
    })
    .await;
    let error = failed.error.unwrap();
    assert!(error.starts_with(&format!("cannot connect to NATS at {url}")), "{error}");

    let _back = services::nats_on(server.port(), None).await;
    let outcome = agent.runner.run(spec("nats", &pairs), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "the next run connects again: {outcome:?}");
}
