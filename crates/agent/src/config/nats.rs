//! The nats executor's config: Dkron's keys (`url`, `subject`, `message`, `userName`, `password`) plus
//! `headers`, `request` and `timeout`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_nats::{HeaderMap, HeaderName, HeaderValue, ServerAddr};
use reqwest::Url;

use super::{BROKER_TIMEOUT_DEFAULT, ConfigError, get, parse_bool, parse_service_url, parse_timeout, required};
use crate::redact::Secrets;

/// Bytes of one subject; the server's own limit is far higher, but a subject this long is a mistake.
const SUBJECT_BYTES_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NatsCredentials {
    UserPassword(String, String),
    /// `nats://token@host`: a user name without a password is a token.
    Token(String),
}

#[derive(Debug, Clone)]
pub(crate) struct NatsConfig {
    /// One server or a comma-separated list of them, each `nats://` or `tls://`.
    pub servers: Vec<Url>,
    /// The same servers, as the client takes them: without credentials, which the client would log.
    pub addrs: Vec<ServerAddr>,
    pub subject: String,
    pub message: String,
    /// Sent with the message; `None` when there are none (a message with empty headers is a different message).
    pub headers: Option<HeaderMap>,
    /// `userName` and `password`, else those of the (first) URL that has them.
    pub credentials: Option<NatsCredentials>,
    /// Request-reply: wait for one reply and make it the output.
    pub request: bool,
    /// `None` runs without a limit (Dkron's "0").
    pub timeout: Option<Duration>,
    pub secrets: Secrets,
}

impl NatsConfig {
    pub fn parse(config: &BTreeMap<String, String>) -> Result<NatsConfig, ConfigError> {
        let servers = parse_servers(config)?;
        let subject = parse_subject(required(config, "subject")?)?;
        let user = get(config, "userName");
        let password = get(config, "password");
        if user.is_empty() && !password.is_empty() {
            return Err(ConfigError::key("userName", "required with password"));
        }
        let mut secrets = Secrets::new();
        secrets.add(password);
        for server in &servers {
            secrets.add_url_password(server);
            if server.password().is_none() {
                // A token.
                secrets.add(server.username());
            }
        }
        let credentials = if user.is_empty() {
            servers.iter().find_map(url_credentials)
        } else {
            Some(NatsCredentials::UserPassword(user.to_owned(), password.to_owned()))
        };
        let addrs = servers
            .iter()
            .map(|url| {
                let mut bare = url.clone();
                // Cannot fail: nats:// and tls:// URLs have a host, so they can have credentials.
                let _ = bare.set_username("");
                let _ = bare.set_password(None);
                ServerAddr::from_url(bare)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::key("url", format!("not a NATS server address: {e}")))?;
        Ok(NatsConfig {
            servers,
            addrs,
            subject,
            message: get(config, "message").to_owned(),
            headers: parse_nats_headers(get(config, "headers"))?,
            credentials,
            request: parse_bool(config, "request")?,
            timeout: parse_timeout(config, Some(BROKER_TIMEOUT_DEFAULT))?,
            secrets,
        })
    }
}

fn url_credentials(url: &Url) -> Option<NatsCredentials> {
    let decode = |text: &str| crate::redact::percent_decode(text).unwrap_or_else(|| text.to_owned());
    match (url.username(), url.password()) {
        ("", None) => None,
        (token, None) => Some(NatsCredentials::Token(decode(token))),
        (user, Some(password)) => Some(NatsCredentials::UserPassword(decode(user), decode(password))),
    }
}

fn parse_servers(config: &BTreeMap<String, String>) -> Result<Vec<Url>, ConfigError> {
    let list = required(config, "url")?;
    let mut servers = Vec::new();
    for (i, one) in list.split(',').map(str::trim).enumerate() {
        // Each entry is checked on its own map, so the message names the key and never quotes the URL.
        let single = BTreeMap::from([("url".to_owned(), one.to_owned())]);
        let url = parse_service_url(&single, "url", &["nats", "tls"]).map_err(|e| {
            if list.contains(',') { ConfigError::key("url", format!("server {}: {}", i + 1, e.message)) } else { e }
        })?;
        servers.push(url);
    }
    Ok(servers)
}

/// A subject is dot-separated tokens without whitespace; wildcards make no sense to publish to.
fn parse_subject(subject: &str) -> Result<String, ConfigError> {
    let problem = if subject.len() > SUBJECT_BYTES_MAX {
        Some(format!("longer than {SUBJECT_BYTES_MAX} bytes"))
    } else if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain whitespace".to_owned())
    } else if subject.split('.').any(str::is_empty) {
        Some(format!("'{subject}' has an empty token (a leading, trailing or double dot)"))
    } else if subject.split('.').any(|t| t == "*" || t == ">") {
        Some(format!("'{subject}' has a wildcard; a message goes to one subject"))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfigError::key("subject", problem)),
        None => Ok(subject.to_owned()),
    }
}

/// The http executor's header format: a JSON array of "Name: value" strings. A name may repeat (NATS headers
/// are multi-valued); names keep their case.
fn parse_nats_headers(text: &str) -> Result<Option<HeaderMap>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let lines: Vec<String> = serde_json::from_str(text).map_err(|_| {
        ConfigError::key("headers", r#"must be a JSON array of "Name: value" strings, e.g. ["Trace-Id: 42"]"#)
    })?;
    let mut headers = HeaderMap::new();
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ConfigError::key("headers", format!("'{line}' is not a \"Name: value\" header")));
        };
        let name = name.trim();
        let header_name = HeaderName::from_str(name)
            .ok()
            .filter(|_| !name.is_empty())
            .ok_or_else(|| ConfigError::key("headers", format!("'{name}' is not a valid header name")))?;
        let value = value.trim();
        let header_value = HeaderValue::from_str(value)
            .ok()
            .filter(|_| !value.contains('\0'))
            .ok_or_else(|| ConfigError::key("headers", format!("header '{name}' has an invalid value")))?;
        headers.append(header_name, header_value);
    }
    Ok((!headers.is_empty()).then_some(headers))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_rejected, check, map};
    use super::*;

    #[test]
    fn nats_configs_that_are_accepted() {
        let base = [("url", "nats://127.0.0.1:4222"), ("subject", "jobs.tick")];
        let accepted: &[&[(&str, &str)]] = &[
            &[],
            &[("message", "hello"), ("userName", "app"), ("password", "secret")],
            &[("url", "tls://nats.example.com:4222")],
            &[("url", "nats://a:4222, nats://b:4222")],
            &[("headers", r#"["Trace-Id: 42", "Trace-Id: 43", "At: 12:00"]"#)],
            &[("request", "true"), ("timeout", "2s")],
            &[("subject", "_INBOX.x-y")],
        ];
        for extra in accepted {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            assert_eq!(check("nats", &pairs), Ok(()), "{pairs:?}");
        }
    }

    #[test]
    fn nats_configs_that_are_rejected() {
        assert_rejected("nats", &[("subject", "a")], "executor_config.url", "required");
        assert_rejected("nats", &[("url", "nats://h:4222")], "executor_config.subject", "required");
        let base = [("url", "nats://h:4222"), ("subject", "a")];
        let cases = [
            (("url", "http://h:4222"), "executor_config.url", "nats:// or tls://"),
            (("url", "nats://a:1,nope"), "executor_config.url", "server 2: not a URL"),
            (("subject", "a b"), "executor_config.subject", "whitespace"),
            (("subject", "a..b"), "executor_config.subject", "empty token"),
            (("subject", "a.*"), "executor_config.subject", "wildcard"),
            (("subject", "a.>"), "executor_config.subject", "wildcard"),
            (("password", "x"), "executor_config.userName", "required with password"),
            (("headers", "Trace-Id: 1"), "executor_config.headers", "JSON array"),
            (("headers", r#"["NoColon"]"#), "executor_config.headers", "'NoColon'"),
            (("headers", r#"["Bad Name: x"]"#), "executor_config.headers", "'Bad Name' is not a valid header name"),
            (("headers", r#"["A: x\ny"]"#), "executor_config.headers", "header 'A' has an invalid value"),
            (("request", "yes"), "executor_config.request", "true or false"),
            (("timeout", "soon"), "executor_config.timeout", "not a duration"),
        ];
        for ((key, value), field, fragment) in cases {
            let mut pairs = base.to_vec();
            pairs.push((key, value));
            assert_rejected("nats", &pairs, field, fragment);
        }
    }

    #[test]
    fn a_password_in_the_url_is_never_quoted_and_is_a_secret() {
        let error = validate_err(&[("url", "nats://u:hunter2@h:99999"), ("subject", "a")]);
        assert!(!error.contains("hunter2"), "{error}");
        let config = NatsConfig::parse(&map(&[
            ("url", "nats://u:hunter2@h:4222"),
            ("subject", "a"),
            ("userName", "u2"),
            ("password", "pw"),
        ]))
        .unwrap();
        assert_eq!(config.secrets.scrub("hunter2 pw"), "*** ***");
        assert_eq!(config.timeout, Some(BROKER_TIMEOUT_DEFAULT));
        assert!(!config.request);
    }

    #[test]
    fn credentials_come_from_the_keys_else_from_the_url_and_never_reach_the_client_addresses() {
        let parse = |pairs: &[(&str, &str)]| NatsConfig::parse(&map(pairs)).unwrap();
        let from_url = parse(&[("url", "nats://u:p%40ss@h:4222"), ("subject", "a")]);
        assert_eq!(from_url.credentials, Some(NatsCredentials::UserPassword("u".into(), "p@ss".into())));
        assert!(!format!("{:?}", from_url.addrs).contains("p%40ss"), "{:?}", from_url.addrs);
        let token = parse(&[("url", "nats://s3cr3t@h:4222"), ("subject", "a")]);
        assert_eq!(token.credentials, Some(NatsCredentials::Token("s3cr3t".into())));
        assert_eq!(token.secrets.scrub("s3cr3t"), "***");
        let keys = parse(&[("url", "nats://u:p@h:4222"), ("subject", "a"), ("userName", "k"), ("password", "kp")]);
        assert_eq!(keys.credentials, Some(NatsCredentials::UserPassword("k".into(), "kp".into())));
        assert_eq!(parse(&[("url", "nats://h:4222"), ("subject", "a")]).credentials, None);
    }

    fn validate_err(pairs: &[(&str, &str)]) -> String {
        NatsConfig::parse(&map(pairs)).unwrap_err().to_string()
    }
}
