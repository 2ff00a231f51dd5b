//! The one HTTP client of the kairos API for tests and the benchmark: requests with a raw body and headers or
//! with JSON, answered as a [`Reply`] (status, headers, text, and the body parsed when it is JSON) with the
//! assertions tests make on it. `try_*` methods answer the transport error (for polling); the others fail the
//! test, printing the server's log when the client knows it.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::log::Log;

/// How long a connection may take to open (a loopback server that does not accept is down or frozen).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of the server log a failed request shows.
const LOG_LINES_ON_FAILURE: usize = 300;

/// A client bound to one server's base URL (`http://host:port`). Clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    log: Option<Log>,
}

/// One answer of the API: status, headers, raw text and, when the body is JSON, the parsed value (else `Null`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Client {
    /// A client for `base` whose requests each time out after `timeout`, ignoring any proxy settings.
    pub fn new(base: &str, timeout: Duration) -> Client {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .build()
            .expect("an HTTP client with no TLS configuration builds");
        Client::with_http(http, base)
    }

    /// A client for `base` over an existing reqwest client (its pool and timeouts).
    pub fn with_http(http: reqwest::Client, base: &str) -> Client {
        assert!(base.starts_with("http://") || base.starts_with("https://"), "a base URL, not {base:?}");
        Client { http, base: base.trim_end_matches('/').to_string(), log: None }
    }

    /// Show this log (the server's) when a request gets no answer.
    pub fn with_log(mut self, log: Log) -> Client {
        self.log = Some(log);
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying reqwest client, for what a [`Reply`] cannot hold (a streamed body).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Send `method path` with exactly these headers and raw body bytes; `timeout` overrides the client's.
    pub async fn try_request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Reply, reqwest::Error> {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or_else(|_| panic!("HTTP method {method:?}"));
        let mut request = self.http.request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, headers, text, json })
    }

    /// Send `body` verbatim as JSON (so tests can send invalid JSON too); `timeout` overrides the client's.
    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<Reply, reqwest::Error> {
        let json = [("content-type", "application/json")];
        let headers: &[(&str, &str)] = if body.is_some() { &json } else { &[] };
        self.try_request_with(method, path, headers, body.map(String::into_bytes), timeout).await
    }

    /// [`Client::try_request`], failing the test when no answer comes.
    pub async fn request(&self, method: &str, path: &str, body: Option<String>) -> Reply {
        let reply = self.try_request(method, path, body, None).await;
        reply.unwrap_or_else(|error| self.no_answer(method, path, error))
    }

    /// [`Client::try_request_with`], failing the test when no answer comes.
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let reply = self.try_request_with(method, path, headers, body, None).await;
        reply.unwrap_or_else(|error| self.no_answer(method, path, error))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(body.to_string())).await
    }

    pub async fn post_empty(&self, path: &str) -> Reply {
        self.request("POST", path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.request("PUT", path, Some(body.to_string())).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.request("PATCH", path, Some(body.to_string())).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, None).await
    }

    fn no_answer(&self, method: &str, path: &str, error: reqwest::Error) -> ! {
        let log = self.log.as_ref().map_or(String::new(), |log| {
            format!("\n--- server log (last {LOG_LINES_ON_FAILURE} lines) ---\n{}", log.tail(LOG_LINES_ON_FAILURE))
        });
        panic!("{method} {path}: no answer from {}: {error}{log}", self.base)
    }
}

impl Reply {
    /// The `error` message of an error answer (empty if there is none).
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }

    /// Dkron's `X-Total-Count` header.
    pub fn total_count(&self) -> Option<usize> {
        self.headers.get("x-total-count")?.to_str().ok()?.parse().ok()
    }

    /// The body as a JSON array; fails the test if it is not one.
    pub fn items(&self) -> Vec<Value> {
        self.json.as_array().cloned().unwrap_or_else(|| panic!("expected a JSON array, got {}", self.text))
    }

    /// Assert the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Reply {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        self
    }

    /// Assert a 4xx answer whose `error` names `field` first (`{"error": "field: problem"}`).
    #[track_caller]
    pub fn expect_error(&self, status: u16, field: &str) -> &Reply {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        let error = self.error();
        assert!(
            error.starts_with(&format!("{field}:")) || error.starts_with(&format!("{field} ")),
            "the error should name '{field}' first, got {error:?}"
        );
        self
    }

    /// Parse the JSON body as `T`; fails the test (showing the body) if it does not fit.
    #[track_caller]
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("unexpected JSON ({e}): {}", self.text))
    }
}

/// reqwest is built without a default TLS provider (the project uses ring); plain HTTP still needs one installed.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, text: &str) -> Reply {
        let json = serde_json::from_str(text).unwrap_or(Value::Null);
        Reply { status, headers: Default::default(), text: text.to_string(), json }
    }

    #[test]
    fn expect_error_accepts_an_error_that_names_the_field_first() {
        reply(400, r#"{"error": "schedule: not a cron expression"}"#).expect_error(400, "schedule");
        reply(400, r#"{"error": "schedule is required"}"#).expect_error(400, "schedule");
    }

    #[test]
    #[should_panic(expected = "should name 'name' first")]
    fn expect_error_refuses_an_error_about_another_field() {
        reply(400, r#"{"error": "schedule: empty"}"#).expect_error(400, "name");
    }

    #[test]
    #[should_panic(expected = "unexpected status; body: nope")]
    fn expect_shows_the_body_of_an_unexpected_status() {
        reply(500, "nope").expect(200);
    }

    #[test]
    fn a_body_that_is_not_json_reads_as_null() {
        let reply = reply(200, "plain text");
        assert_eq!(reply.json, Value::Null);
        assert_eq!(reply.error(), "");
    }
}
