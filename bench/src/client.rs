//! The harness's one HTTP client: a pooled reqwest client bound to one server's base URL (always loopback),
//! with a timeout on every request and helpers for the few calls the scenarios make.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jiff::Timestamp;
use serde::Deserialize;

/// No single request may take longer (a 5,000-job restore on a slow disk included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// An execution as the API lists it: only the fields the harness reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Execution {
    #[serde(default)]
    pub id: String,
    /// The node that ran it (empty while pending).
    #[serde(default)]
    pub node_name: String,
    pub scheduled_at: Timestamp,
    #[serde(deserialize_with = "dkron_time")]
    pub started_at: Option<Timestamp>,
    #[serde(deserialize_with = "dkron_time")]
    pub finished_at: Option<Timestamp>,
    pub status: String,
    #[serde(default)]
    pub output: String,
    pub attempt: u32,
    pub trigger: String,
}

/// A Dkron `time.Time` field: `0001-01-01T00:00:00Z` (Go's zero time, which the API shows for "none") reads as
/// `None`.
fn dkron_time<'de, D: serde::Deserializer<'de>>(from: D) -> Result<Option<Timestamp>, D::Error> {
    let instant = Option::<Timestamp>::deserialize(from)?;
    Ok(instant.filter(|t| t.as_second() != -62_135_596_800))
}

/// A node as `GET /v1/members` and `GET /v1/leader` show it (serf's field names): only what the harness reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Member {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "statusText", default)]
    pub status: String,
}

/// reqwest is built without a default TLS provider; plain HTTP still needs one installed.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        if !base.starts_with("http://127.0.0.1:") {
            bail!("refusing to talk to '{base}': the harness only talks to 127.0.0.1");
        }
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(256)
            .build()
            .context("building the HTTP client")?;
        Ok(Api { http, base: base.to_string() })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The status code of a GET, or an error when no answer came.
    pub async fn status(&self, path: &str) -> anyhow::Result<u16> {
        let response = self.http.get(self.url(path)).timeout(Duration::from_secs(5)).send().await?;
        Ok(response.status().as_u16())
    }

    /// POST a JSON body; the time it took, or an error carrying the status and the server's message.
    pub async fn post_json(&self, path: &str, body: String) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {path}: {status}: {}", text.chars().take(300).collect::<String>());
        }
        Ok(start.elapsed())
    }

    /// GET a JSON answer within `timeout`; an error unless the server answers 200.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str, timeout: Duration) -> anyhow::Result<T> {
        let response =
            self.http.get(self.url(path)).timeout(timeout).send().await.with_context(|| format!("GET {path}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("GET {path}: {status}: {}", text.chars().take(300).collect::<String>());
        }
        response.json().await.with_context(|| format!("GET {path}: unexpected JSON"))
    }

    /// PATCH a JSON body; an error carrying the status and the server's message unless it succeeds.
    pub async fn patch_json(&self, path: &str, body: String) -> anyhow::Result<()> {
        let response = self
            .http
            .patch(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("PATCH {path}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("PATCH {path}: {status}: {}", text.chars().take(300).collect::<String>());
        }
        Ok(())
    }

    /// `GET /v1/jobs?_end=1`: the `X-Total-Count` header, when the server answers 200.
    pub async fn job_count(&self, timeout: Duration) -> anyhow::Result<u64> {
        let response = self.http.get(self.url("/v1/jobs?_end=1")).timeout(timeout).send().await?;
        if response.status() != 200 {
            bail!("GET /v1/jobs: {}", response.status());
        }
        let header = response.headers().get("x-total-count").context("GET /v1/jobs: no X-Total-Count header")?;
        let count = header.to_str()?.parse()?;
        Ok(count)
    }

    /// Up to `limit` executions of a job, newest first.
    pub async fn executions(&self, job: &str, limit: u32) -> anyhow::Result<Vec<Execution>> {
        let path = format!("/v1/jobs/{job}/executions?_start=0&_end={limit}");
        let response = self.http.get(self.url(&path)).send().await.with_context(|| format!("GET {path}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
        response.json().await.with_context(|| format!("GET {path}: not a list of executions"))
    }
}
