//! The grpc executor's config, Dkron's keys: `url` (`host:port/package.Service/Method`; `https://` in front for
//! TLS), `body` (the request as JSON), `headers` (metadata, as the http executor's: a JSON array of
//! `"Name: value"`), `timeout`, `expectCode` (the gRPC status code that means success, a number or a name; default
//! 0, OK), and the http executor's TLS files (`tlsRootCAsFile`, `tlsCertificateFile`/`tlsCertificateKeyFile`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{BROKER_TIMEOUT_DEFAULT, ConfigError, TlsOptions, get, parse_timeout, parse_tls, required};

/// gRPC's status codes by number, as their canonical names.
pub(crate) const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

#[derive(Debug, Clone)]
pub(crate) struct GrpcConfig {
    /// `host:port`.
    pub authority: String,
    /// `package.Service`.
    pub service: String,
    pub method: String,
    /// The request as JSON (checked to be a JSON object; its fields are checked against the method's input type
    /// when the run resolves it by reflection).
    pub body: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    /// The status code that means success.
    pub expect_code: i32,
    /// `Some` for TLS (`https://`): the CA file (else the web's roots) and a client certificate.
    pub tls: Option<TlsOptions>,
}

impl GrpcConfig {
    pub fn parse(config: &BTreeMap<String, String>) -> Result<GrpcConfig, ConfigError> {
        let url = required(config, "url")?.trim();
        let (secure, bare) = match url.split_once("://") {
            Some(("https" | "grpcs", rest)) => (true, rest),
            Some(("http" | "grpc", rest)) => (false, rest),
            Some((scheme, _)) => {
                return Err(ConfigError::key("url", format!("scheme must be http or https, not '{scheme}'")));
            }
            None => (false, url),
        };
        let tls = parse_tls(config)?;
        if tls.no_verify_peer {
            return Err(ConfigError::key("tlsNoVerifyPeer", "not supported by the grpc executor: give tlsRootCAsFile"));
        }
        if !secure && tls.has_files() {
            return Err(ConfigError::key("url", "TLS settings need an https:// url"));
        }
        let malformed = || ConfigError::key("url", format!("'{url}' is not host:port/package.Service/Method"));
        let (authority, path) = bare.split_once('/').ok_or_else(malformed)?;
        let (service, method) = path.rsplit_once('/').ok_or_else(malformed)?;
        let port_ok =
            authority.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok || !service.contains('.') || method.is_empty() || service.contains('/') {
            return Err(malformed());
        }
        let body = match get(config, "body").trim() {
            "" => "{}".to_string(),
            text => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| ConfigError::key("body", format!("not JSON: {e}")))?;
                if !value.is_object() {
                    return Err(ConfigError::key("body", "must be a JSON object (the request message)"));
                }
                text.to_string()
            }
        };
        let headers = super::parse_headers(get(config, "headers"))?
            .iter()
            .map(|(name, value)| {
                let value = value.to_str().map_err(|_| ConfigError::key("headers", format!("'{name}' is not text")))?;
                Ok((name.as_str().to_string(), value.to_string()))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let expect_code = match get(config, "expectCode").trim() {
            "" => 0,
            text => parse_code(text).ok_or_else(|| {
                ConfigError::key(
                    "expectCode",
                    format!("'{text}' is not a gRPC status code (0-16 or a name such as NOT_FOUND)"),
                )
            })?,
        };
        Ok(GrpcConfig {
            authority: authority.to_string(),
            service: service.to_string(),
            method: method.to_string(),
            body,
            headers,
            timeout: parse_timeout(config, Some(BROKER_TIMEOUT_DEFAULT))?,
            expect_code,
            tls: secure.then_some(tls),
        })
    }
}

fn parse_code(text: &str) -> Option<i32> {
    if let Ok(number) = text.parse::<i32>() {
        return (0..STATUS_NAMES.len() as i32).contains(&number).then_some(number);
    }
    let name = text.to_ascii_uppercase().replace(['-', ' '], "_");
    let name = match name.as_str() {
        "NOTFOUND" => "NOT_FOUND",
        "INVALIDARGUMENT" => "INVALID_ARGUMENT",
        other => other,
    };
    STATUS_NAMES.iter().position(|n| *n == name).map(|i| i as i32)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_rejected, map};
    use super::*;

    #[test]
    fn urls_bodies_and_codes_are_checked_naming_the_key() {
        let ok =
            GrpcConfig::parse(&map(&[("url", "127.0.0.1:9000/demo.v1.Greeter/SayHello"), ("expectCode", "NOT_FOUND")]))
                .unwrap();
        assert_eq!(
            (ok.authority.as_str(), ok.service.as_str(), ok.method.as_str()),
            ("127.0.0.1:9000", "demo.v1.Greeter", "SayHello")
        );
        assert_eq!((ok.body.as_str(), ok.expect_code), ("{}", 5));
        assert_rejected("grpc", &[("url", "localhost/demo.Greeter/SayHello")], "executor_config.url", "host:port");
        assert_rejected("grpc", &[("url", "localhost:9000/Greeter")], "executor_config.url", "host:port");
        assert!(GrpcConfig::parse(&map(&[("url", "https://h:1/a.B/C")])).unwrap().tls.is_some());
        assert_rejected(
            "grpc",
            &[("url", "h:1/a.B/C"), ("tlsRootCAsFile", "/ca.pem")],
            "executor_config.url",
            "https://",
        );
        assert_rejected(
            "grpc",
            &[("url", "https://h:1/a.B/C"), ("tlsNoVerifyPeer", "true")],
            "executor_config.tlsNoVerifyPeer",
            "not supported",
        );
        assert_rejected("grpc", &[("url", "ftp://h:1/a.B/C")], "executor_config.url", "scheme");
        assert_rejected("grpc", &[("url", "h:1/a.B/C"), ("body", "[1]")], "executor_config.body", "JSON object");
        assert_rejected("grpc", &[("url", "h:1/a.B/C"), ("body", "{")], "executor_config.body", "not JSON");
        assert_rejected(
            "grpc",
            &[("url", "h:1/a.B/C"), ("expectCode", "17")],
            "executor_config.expectCode",
            "gRPC status",
        );
        assert_rejected("grpc", &[], "executor_config.url", "");
    }
}
