//! The http executor against a real axum server on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{any, get};
use kairos_agent::RunStatus;
use tokio_util::sync::CancellationToken;

use crate::support::{agent, eventually, spec};

/// A sink with the endpoints the tests need; it lives until the test's runtime ends.
async fn server() -> SocketAddr {
    server_counting_slow_requests(Arc::default()).await
}

/// The sink, counting requests that reached `/slow`.
async fn server_counting_slow_requests(slow_requests: Arc<AtomicUsize>) -> SocketAddr {
    let app = Router::new()
        .route("/ok", get(|| async { "all good" }))
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move { (StatusCode::from_u16(code).unwrap(), format!("status {code}")) }),
        )
        .route("/echo", any(echo))
        .route("/big", get(|| async { "y".repeat(3000) }))
        .route(
            "/slow",
            get(move || async move {
                slow_requests.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn echo(method: Method, headers: HeaderMap, body: String) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    format!("{method}|{}|{}|{body}", header("x-test"), header("content-type"))
}

async fn run(pairs: &[(&str, &str)]) -> kairos_agent::Outcome {
    agent().runner.run(spec("http", pairs), CancellationToken::new()).await
}

#[tokio::test]
async fn success_stores_the_body_and_reports_the_status() {
    let addr = server().await;
    let agent = agent();
    let spec = spec("http", &[("url", &format!("http://{addr}/ok"))]);
    let (job, id) = (spec.job_name.clone(), spec.execution_id.clone());
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(200));
    assert_eq!(outcome.output_tail, "all good");
    assert_eq!(outcome.output_bytes, 8);
    assert_eq!(agent.store.read(&job, &id).unwrap(), None, "a short body lives in the tail only");
}

#[tokio::test]
async fn a_status_other_than_expect_code_fails() {
    let addr = server().await;
    let url = format!("http://{addr}/status/500");
    let outcome = run(&[("url", &url)]).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.exit_code, Some(500));
    assert_eq!(outcome.error.as_deref(), Some("expected status 200, got 500"));
    assert_eq!(outcome.output_tail, "status 500");

    let outcome = run(&[("url", &url), ("expectCode", "500")]).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let outcome = run(&[("url", &url), ("expectCode", "200,500")]).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
}

#[tokio::test]
async fn expect_body_must_match_the_response() {
    let addr = server().await;
    let url = format!("http://{addr}/ok");
    let outcome = run(&[("url", &url), ("expectBody", "^all g[o]+d$")]).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let outcome = run(&[("url", &url), ("expectBody", "bad")]).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.exit_code, Some(200));
    assert_eq!(outcome.error.as_deref(), Some("response body does not match expectBody 'bad'"));
}

#[tokio::test]
async fn method_headers_and_body_are_delivered() {
    let addr = server().await;
    let outcome = run(&[
        ("url", &format!("http://{addr}/echo")),
        ("method", "POST"),
        ("headers", r#"["X-Test: yes: really", "Content-Type: text/plain"]"#),
        ("body", "payload"),
    ])
    .await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output_tail, "POST|yes: really|text/plain|payload");

    let outcome = run(&[("url", &format!("http://{addr}/echo")), ("method", "put")]).await;
    assert_eq!(outcome.output_tail, "PUT|-|-|");
}

#[tokio::test]
async fn a_slow_response_times_out() {
    let addr = server().await;
    let started = Instant::now();
    let outcome = run(&[("url", &format!("http://{addr}/slow")), ("timeout", "300ms")]).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("timed out after 300ms"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn cancel_drops_the_request() {
    let slow_requests = Arc::new(AtomicUsize::new(0));
    let addr = server_counting_slow_requests(slow_requests.clone()).await;
    let agent = agent();
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (runner, cancel) = (agent.runner.clone(), cancel.clone());
        let spec = spec("http", &[("url", &format!("http://{addr}/slow"))]);
        async move { runner.run(spec, cancel).await }
    });
    eventually("the request to reach the server", || (slow_requests.load(Ordering::SeqCst) > 0).then_some(())).await;
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    assert_eq!(outcome.exit_code, None);
}

#[tokio::test]
async fn connection_refused_is_reported() {
    // Bind and release a port, so that nothing listens on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let outcome = run(&[("url", &format!("http://{addr}/ok"))]).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.exit_code, None);
    let error = outcome.error.unwrap();
    assert!(error.to_lowercase().contains("connection refused"), "{error}");
    assert!(error.starts_with(&format!("GET http://{addr}/ok failed: ")), "{error}");
    assert_eq!(outcome.output_tail, format!("{error}\n"));
}

#[tokio::test]
async fn a_large_body_is_capped_like_shell_output() {
    let addr = server().await;
    let agent = agent();
    let mut spec = spec("http", &[("url", &format!("http://{addr}/big"))]);
    spec.output_limit_bytes = 1000;
    let (job, id) = (spec.job_name.clone(), spec.execution_id.clone());
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output_bytes, 3000);
    let stored = agent.store.read(&job, &id).unwrap().unwrap();
    let expected = format!("{}\n[kairos: output truncated, 2000 bytes omitted]\n", "y".repeat(1000));
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn missing_tls_files_fail_the_run_with_the_file_named() {
    let outcome = run(&[("url", "https://127.0.0.1:1/"), ("tlsRootCAsFile", "/nonexistent/ca.pem")]).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(error.starts_with("cannot read tlsRootCAsFile '/nonexistent/ca.pem'"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_runs_share_one_client() {
    let addr = server().await;
    let agent = agent();
    let url = format!("http://{addr}/ok");
    let runs: Vec<_> = (0..500)
        .map(|_| {
            let runner = agent.runner.clone();
            let spec = spec("http", &[("url", &url), ("expectBody", "good")]);
            tokio::spawn(async move { runner.run(spec, CancellationToken::new()).await })
        })
        .collect();
    for run in runs {
        let outcome = run.await.unwrap();
        assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    }
    assert!(agent.store.list("test-job").unwrap().is_empty(), "short bodies create no files");
}
