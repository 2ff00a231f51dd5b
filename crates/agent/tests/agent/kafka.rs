//! The kafka executor against a real Kafka-protocol broker (Tansu 0.6.0, see `services::tansu`) on 127.0.0.1.

use std::time::{Duration, Instant};

use kairos_agent::{Outcome, RunStatus};
use kairos_model::secret::SecretValue;
use kairos_testkit::kafka::{Proxy, TlsFiles, records};
use kairos_testkit::{free_port, services};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::{Agent, agent, spec};

async fn run(agent: &Agent, pairs: &[(&str, &str)]) -> Outcome {
    agent.runner.run(spec("kafka", pairs), CancellationToken::new()).await
}

#[tokio::test]
async fn each_run_produces_exactly_one_record_with_its_key_over_one_kept_connection() {
    // The broker behind a proxy that counts connections, and tells clients to come through it.
    let proxy_port = free_port();
    let broker = services::tansu_advertising(Some(proxy_port)).await;
    let proxy = Proxy::start(proxy_port, broker.port(), None).await;
    let agent = agent();
    let mut accepted_after_first = 0;
    for n in 0..2 {
        let message = format!("tick {n}");
        let pairs =
            [("brokerAddress", proxy.addr()), ("topic", "ticks".into()), ("key", "job-1".into()), ("message", message)];
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let outcome = run(&agent, &pairs).await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "run {n}: {outcome:?}");
        let expected = "produced 6 bytes to topic 'ticks', partition ";
        assert!(outcome.output_tail.starts_with(expected), "{:?}", outcome.output_tail);
        assert!(outcome.output_tail.ends_with(&format!(", offset {n}\n")), "{:?}", outcome.output_tail);
        if n == 0 {
            accepted_after_first = proxy.accepted();
        }
    }
    assert_eq!(proxy.accepted(), accepted_after_first, "the second run opened no connection");
    let consumed = records(&proxy.addr(), "ticks").await;
    assert_eq!(consumed.len(), 2, "{consumed:?}");
    for (n, record) in consumed.iter().enumerate() {
        assert_eq!((record.key.as_deref(), record.value.as_str()), (Some("job-1"), format!("tick {n}").as_str()));
        assert_eq!(record.offset, n as i64);
    }
    assert_eq!(consumed[0].partition, consumed[1].partition, "one key, one partition");
}

#[tokio::test]
async fn a_keyless_record_is_produced_and_read_back() {
    let broker = services::tansu().await;
    let pairs = [("brokerAddress", broker.addr()), ("topic", "plain".into()), ("message", "no key".into())];
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let outcome = run(&agent(), &pairs).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let consumed = records(&broker.addr(), "plain").await;
    assert_eq!(consumed.len(), 1, "{consumed:?}");
    assert_eq!((consumed[0].key.as_deref(), consumed[0].value.as_str()), (None, "no key"));
    let expected = format!("produced 6 bytes to topic 'plain', partition {}, offset 0\n", consumed[0].partition);
    assert_eq!(outcome.output_tail, expected);
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error_naming_it() {
    let addr = format!("127.0.0.1:{}", free_port());
    let outcome = run(&agent(), &[("brokerAddress", &addr), ("topic", "t"), ("timeout", "10s")]).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.starts_with(&format!("cannot connect to Kafka at {addr}: ")), "{error}");
    assert!(error.contains("refused"), "{error}");
}

#[tokio::test]
async fn a_dead_first_broker_in_the_list_is_skipped() {
    let broker = services::tansu().await;
    let list = format!("127.0.0.1:{},{}", free_port(), broker.addr());
    let outcome = run(&agent(), &[("brokerAddress", &list), ("topic", "fallback"), ("message", "m")]).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(records(&broker.addr(), "fallback").await.len(), 1);
}

/// A listener that accepts connections and never answers, as a hung broker would.
async fn silent_broker() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_broker_that_never_answers_times_out_and_a_cancel_ends_the_run() {
    let (addr, _silent) = silent_broker().await;
    let agent = agent();
    let started = Instant::now();
    let outcome = run(&agent, &[("brokerAddress", &addr), ("topic", "t"), ("timeout", "300ms")]).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("timed out after 300ms"));
    assert!(started.elapsed() < Duration::from_secs(5));

    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let (runner, cancel) = (agent.runner.clone(), cancel.clone());
        let spec = spec("kafka", &[("brokerAddress", &addr), ("topic", "t")]);
        async move { runner.run(spec, cancel).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // let it reach the broker; correctness does not depend on it
    let cancelled_at = Instant::now();
    cancel.cancel();
    let outcome = running.await.unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("cancelled"));
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn tls_checks_the_broker_against_the_ca_file_or_skips_the_check_when_told() {
    let files = TlsFiles::new();
    let proxy_port = free_port();
    let broker = services::tansu_advertising(Some(proxy_port)).await;
    let _proxy = Proxy::start(proxy_port, broker.port(), Some(&files)).await;
    let addr = format!("127.0.0.1:{proxy_port}");
    let ca = files.ca.display().to_string();
    // One key: both successful runs land on one partition, so their offsets count them.
    let base =
        [("brokerAddress", addr.as_str()), ("topic", "secure"), ("key", "k"), ("message", "m"), ("timeout", "10s")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut pairs: Vec<(&str, &str)> = base.to_vec();
        pairs.extend_from_slice(extra);
        pairs
    };
    let agent = agent();

    let mut checked = with(&[("tlsEnable", "true")]);
    checked.push(("tlsRootCAsFile", &ca));
    let outcome = run(&agent, &checked).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert!(outcome.output_tail.ends_with(", offset 0\n"), "{:?}", outcome.output_tail);

    let outcome = run(&agent, &with(&[("tlsEnable", "true")])).await;
    assert_eq!(outcome.status, RunStatus::Failed, "the web's roots do not know the test CA: {outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.starts_with(&format!("cannot connect to Kafka at {addr}")), "{error}");
    assert!(error.contains("certificate"), "{error}");

    let outcome = run(&agent, &with(&[("tlsEnable", "true"), ("tlsInsecureSkipVerify", "true")])).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert!(outcome.output_tail.ends_with(", offset 1\n"), "{:?}", outcome.output_tail);

    let outcome = run(&agent, &base).await;
    assert_eq!(outcome.status, RunStatus::Failed, "plain text to a TLS listener: {outcome:?}");
}

/// Tansu without authentication refuses every SASL handshake: the run fails saying so, and the password, given
/// through a secret, shows nowhere.
#[tokio::test]
async fn a_refused_sasl_login_fails_clearly_without_the_password() {
    let broker = services::tansu().await;
    let mut spec = spec(
        "kafka",
        &[
            ("brokerAddress", &broker.addr()),
            ("topic", "t"),
            ("saslUsername", "app"),
            ("saslPassword", r#"{{secret "kafka_pass"}}"#),
            ("saslMechanism", "sha512"),
            ("timeout", "10s"),
        ],
    );
    spec.secrets.insert("kafka_pass".to_owned(), SecretValue("hunter2-kafka".to_owned()));
    let outcome = agent().runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.clone().unwrap();
    assert!(error.starts_with(&format!("cannot authenticate to Kafka at {}", broker.addr())), "{error}");
    assert!(!format!("{outcome:?}").contains("hunter2-kafka"), "{outcome:?}");
}
