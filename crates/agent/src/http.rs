//! The http executor: one request, its response body as the output, success judged by status and body.
//!
//! The body is streamed into the capture as it arrives. For `expectBody` it is also kept in memory, up to
//! the output cap, so matching is bounded like everything else: a body longer than the cap is matched on
//! its first `output_limit_bytes` (Dkron matched the whole body, without a bound).

use std::time::Duration;

use kairos_schedule::format_duration;
use reqwest::RequestBuilder;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::config::HttpConfig;
use crate::http_clients::HttpClients;
use crate::spec::{Outcome, RunSpec, RunStatus};

pub(crate) async fn run(
    clients: &HttpClients,
    spec: &RunSpec,
    config: HttpConfig,
    mut capture: Capture,
    cancel: &CancellationToken,
) -> Outcome {
    let client = match clients.client(&config.tls) {
        Ok(client) => client,
        Err(reason) => return capture.not_started(reason),
    };
    let mut request = client.request(config.method.clone(), config.url.clone()).headers(config.headers.clone());
    if !config.body.is_empty() {
        request = request.body(config.body.clone());
    }
    let mut response = Response {
        status: None,
        body: config.expect_body.as_ref().map(|_| Vec::new()),
        body_limit_bytes: usize::try_from(spec.output_limit_bytes).unwrap_or(usize::MAX),
    };
    let ended = tokio::select! {
        result = exchange(request, &mut capture, &mut response) => Ended::Exchanged(result),
        () = sleep(config.timeout) => Ended::TimedOut,
        () = cancel.cancelled() => Ended::Cancelled,
    };
    let exit_code = response.status.map(i32::from);
    match ended {
        Ended::Exchanged(Ok(())) => {
            let (status, error) = judge(&config, &response);
            capture.into_outcome(status, exit_code, error)
        }
        Ended::Exchanged(Err(e)) => {
            let reason = format!("{} {} failed: {}", config.method, config.url, error_chain(&e));
            if response.status.is_none() {
                // Nothing came back, so the reason is the only output there is.
                capture.not_started(reason)
            } else {
                capture.into_outcome(RunStatus::Failed, exit_code, Some(reason))
            }
        }
        Ended::TimedOut => {
            let after = config.timeout.map(format_duration).unwrap_or_default();
            capture.into_outcome(RunStatus::TimedOut, exit_code, Some(format!("timed out after {after}")))
        }
        Ended::Cancelled => capture.into_outcome(RunStatus::Cancelled, exit_code, Some("cancelled".to_owned())),
    }
}

enum Ended {
    Exchanged(Result<(), reqwest::Error>),
    TimedOut,
    Cancelled,
}

/// What came back, filled in as it arrives so that a timeout mid-body still reports the status.
struct Response {
    status: Option<u16>,
    /// The body kept for `expectBody` matching, `None` when there is nothing to match.
    body: Option<Vec<u8>>,
    body_limit_bytes: usize,
}

async fn exchange(
    request: RequestBuilder,
    capture: &mut Capture,
    response: &mut Response,
) -> Result<(), reqwest::Error> {
    let mut reply = request.send().await?;
    response.status = Some(reply.status().as_u16());
    while let Some(chunk) = reply.chunk().await? {
        capture.write(&chunk);
        if let Some(body) = &mut response.body {
            let room = response.body_limit_bytes.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }
    Ok(())
}

/// Status first, then body, as Dkron checks them.
fn judge(config: &HttpConfig, response: &Response) -> (RunStatus, Option<String>) {
    let status = response.status.unwrap_or_default();
    if !config.expect_codes.contains(&status) {
        let expected: Vec<String> = config.expect_codes.iter().map(u16::to_string).collect();
        let error = format!("expected status {}, got {status}", expected.join(" or "));
        return (RunStatus::Failed, Some(error));
    }
    if let (Some(regex), Some(body)) = (&config.expect_body, &response.body)
        && !regex.is_match(&String::from_utf8_lossy(body))
    {
        let error = format!("response body does not match expectBody '{}'", regex.as_str());
        return (RunStatus::Failed, Some(error));
    }
    (RunStatus::Succeeded, None)
}

async fn sleep(timeout: Option<Duration>) {
    match timeout {
        Some(timeout) => tokio::time::sleep_until(Instant::now() + timeout).await,
        None => std::future::pending().await,
    }
}

/// An error with its causes: reqwest's top-level message ("error sending request") hides the useful part
/// ("Connection refused") in its sources.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
