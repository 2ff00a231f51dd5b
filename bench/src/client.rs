//! The harness's one HTTP client: the test kit's client bound to one server's base URL (loopback, or an address on
//! the harness's own test network), with a timeout on every request and helpers for the few calls the scenarios
//! make, which answer errors instead of failing a test. For a server started with `--secure` ([`crate::secure`])
//! the same client speaks HTTPS with the CA and a client certificate, and sends the ACL token on every request.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jiff::Timestamp;
use kairos_testkit::{Client, Reply};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::secure::ClientTls;

/// No single request may take longer (a 5,000-job restore on a slow disk included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a status probe may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Api {
    client: Client,
    /// HTTPS: the CA and client certificate it was built with (kept to add the token once it is known).
    tls: Option<ClientTls>,
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
    /// Why it failed or was skipped, when more than an exit code says (older servers may omit it).
    #[serde(default)]
    pub error: Option<String>,
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

/// `http://127.0.0.1:…`, or `http://10.200-207.…:…`: the range where the test kit's networks of namespaces put
/// their hosts (`kairos_testkit::netns`), which only the harness's own nodes use.
fn is_harness_base(base: &str) -> bool {
    let Some(host) = base.strip_prefix("http://").and_then(|rest| rest.split(':').next()) else {
        return false;
    };
    let Ok(octets) = host.split('.').map(str::parse).collect::<Result<Vec<u8>, _>>() else {
        return false;
    };
    match octets[..] {
        [127, 0, 0, 1] => true,
        [10, second, _, _] => (200..208).contains(&second),
        _ => false,
    }
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        if !is_harness_base(base) {
            bail!("refusing to talk to '{base}': the harness only talks to 127.0.0.1 and to its own test network");
        }
        kairos_testkit::install_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(256)
            .build()
            .context("building the HTTP client")?;
        Ok(Api { client: Client::with_http(http, base), tls: None })
    }

    /// A client of an HTTPS API on loopback that trusts `tls`'s CA and presents its client certificate; with
    /// `token`, every request carries it in `X-Dkron-Token`.
    pub fn secure(base: &str, tls: &ClientTls, token: Option<&str>) -> anyhow::Result<Api> {
        if !base.starts_with("https://127.0.0.1:") {
            bail!("refusing to talk to '{base}': the harness only talks to 127.0.0.1 (over HTTPS here)");
        }
        kairos_testkit::install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(&tls.ca_pem).context("the CA certificate")?;
        let identity = reqwest::Identity::from_pem(&tls.identity_pem).context("the client certificate")?;
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token).context("the token as a header")?;
            value.set_sensitive(true);
            headers.insert("X-Dkron-Token", value);
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(256)
            .add_root_certificate(ca)
            .identity(identity)
            .default_headers(headers)
            .build()
            .context("building the HTTPS client")?;
        Ok(Api { client: Client::with_http(http, base), tls: Some(tls.clone()) })
    }

    /// Bootstrap the ACL of a secure server (retrying while it has no leader to commit it, within `budget`), and
    /// answer the same client carrying the management token it got.
    pub async fn bootstrap(&self, budget: Duration) -> anyhow::Result<Api> {
        let tls = self.tls.as_ref().context("bootstrapping the ACL of a server without TLS")?;
        let deadline = Instant::now() + budget;
        let secret = loop {
            let last = match self.client.try_request("POST", "/v1/acl/bootstrap", None, Some(STATUS_TIMEOUT)).await {
                Ok(reply) if reply.status == 201 => {
                    break reply.json["secret"].as_str().map(str::to_string).with_context(|| {
                        format!(
                            "POST /v1/acl/bootstrap: no secret in {}",
                            reply.text.chars().take(300).collect::<String>()
                        )
                    })?;
                }
                Ok(reply) if reply.status != 503 => {
                    bail!(
                        "POST /v1/acl/bootstrap: {}: {}",
                        reply.status,
                        reply.text.chars().take(300).collect::<String>()
                    )
                }
                Ok(reply) => format!("{}: {}", reply.status, reply.text.chars().take(300).collect::<String>()),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() > deadline {
                bail!("POST /v1/acl/bootstrap was not accepted within {budget:?}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Api::secure(self.client.base(), tls, Some(&secret))
    }

    /// The status code of a GET, or an error when no answer came.
    pub async fn status(&self, path: &str) -> anyhow::Result<u16> {
        Ok(self.client.try_request("GET", path, None, Some(STATUS_TIMEOUT)).await?.status)
    }

    /// POST a JSON body; the time it took, or an error carrying the status and the server's message.
    pub async fn post_json(&self, path: &str, body: String) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.send("POST", path, Some(body), None).await?;
        Ok(start.elapsed())
    }

    /// GET a text answer (within the status timeout); an error unless the server answers 200.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.send("GET", path, None, Some(STATUS_TIMEOUT)).await?.text)
    }

    /// GET a JSON answer within `timeout`; an error unless the server answers 200.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str, timeout: Duration) -> anyhow::Result<T> {
        let reply = self.send("GET", path, None, Some(timeout)).await?;
        serde_json::from_str(&reply.text).with_context(|| format!("GET {path}: unexpected JSON"))
    }

    /// PATCH a JSON body; an error carrying the status and the server's message unless it succeeds.
    pub async fn patch_json(&self, path: &str, body: String) -> anyhow::Result<()> {
        self.send("PATCH", path, Some(body), None).await?;
        Ok(())
    }

    /// Any request, optionally within `timeout`: the time it took, or an error carrying the status and the
    /// server's message unless it answers 2xx.
    pub async fn timed(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.send(method, path, body, timeout).await?;
        Ok(start.elapsed())
    }

    /// `GET /v1/jobs?_end=1`: the `X-Total-Count` header, when the server answers 200.
    pub async fn job_count(&self, timeout: Duration) -> anyhow::Result<u64> {
        let reply = self.client.try_request("GET", "/v1/jobs?_end=1", None, Some(timeout)).await?;
        if reply.status != 200 {
            bail!("GET /v1/jobs: {}", reply.status);
        }
        let count = reply.total_count().context("GET /v1/jobs: no X-Total-Count header")?;
        Ok(count as u64)
    }

    /// Up to `limit` executions of a job, newest first.
    pub async fn executions(&self, job: &str, limit: u32) -> anyhow::Result<Vec<Execution>> {
        let path = format!("/v1/jobs/{job}/executions?_start=0&_end={limit}");
        let reply = self.send("GET", &path, None, None).await?;
        serde_json::from_str(&reply.text).with_context(|| format!("GET {path}: not a list of executions"))
    }

    /// A request within `timeout` whatever its answer: the status and the start of the server's message, or an
    /// error when no answer came in time.
    pub async fn answer(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<(u16, String)> {
        let reply = self
            .client
            .try_request(method, path, body, Some(timeout))
            .await
            .with_context(|| format!("{method} {path}"))?;
        Ok((reply.status, reply.text.chars().take(300).collect()))
    }

    /// Up to `limit` executions of a job, newest first, within `timeout`.
    pub async fn executions_within(&self, job: &str, limit: u32, timeout: Duration) -> anyhow::Result<Vec<Execution>> {
        let path = format!("/v1/jobs/{job}/executions?_start=0&_end={limit}");
        let reply = self.send("GET", &path, None, Some(timeout)).await?;
        serde_json::from_str(&reply.text).with_context(|| format!("GET {path}: not a list of executions"))
    }

    /// One JSON request; an error carrying the status and the start of the server's message unless it is a 2xx.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Reply> {
        let reply =
            self.client.try_request(method, path, body, timeout).await.with_context(|| format!("{method} {path}"))?;
        if !(200..300).contains(&reply.status) {
            bail!("{method} {path}: {}: {}", reply.status, reply.text.chars().take(300).collect::<String>());
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talks_only_to_loopback_and_the_test_networks() {
        assert!(is_harness_base("http://127.0.0.1:8080"));
        assert!(is_harness_base("http://10.203.4.2:41000"));
        assert!(!is_harness_base("http://10.1.4.2:41000"));
        assert!(!is_harness_base("http://10.208.4.2:41000"));
        assert!(!is_harness_base("http://192.168.1.2:80"));
        assert!(!is_harness_base("https://127.0.0.1:80"));
        assert!(!is_harness_base("http://127.0.0.1.example.com:80"));
    }
}
