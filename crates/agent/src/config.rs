//! Dkron-compatible executor configs, parsed into typed values.
//!
//! A job's `executor_config` is a flat string map. The server calls [`validate`] before it accepts a job,
//! and the runner parses the same map again right before each run (a run may come from a job stored by an
//! older version), so both go through the one parser here and can never disagree. Unknown keys are
//! ignored, as Dkron does.
//!
//! The shell and http configs live here; each broker and database executor has its config in a submodule of
//! its own (`config/nats.rs`, `config/rabbitmq.rs`, `config/redis.rs`, `config/kafka.rs`, `config/sql.rs`), built from the same
//! helpers.

mod grpc;
mod kafka;
mod nats;
mod rabbitmq;
mod redis;
mod sql;

pub(crate) use grpc::{GrpcConfig, STATUS_NAMES as GRPC_STATUS_NAMES};
pub(crate) use kafka::{KafkaConfig, KafkaSasl, KafkaTls, SaslMechanism};
pub(crate) use nats::{NatsConfig, NatsCredentials};
pub(crate) use rabbitmq::RabbitConfig;
pub(crate) use redis::{Payload as RedisPayload, RedisCommand, RedisConfig};
pub(crate) use sql::SqlConfig;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

use crate::words;
use kairos_schedule::parse_duration;

/// Executors this agent can run, in the order error messages list them.
pub const EXECUTORS: [&str; 8] = ["shell", "http", "nats", "rabbitmq", "redis", "kafka", "sql", "grpc"];

/// Dkron's http executor default request timeout.
const HTTP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Default timeout of the broker executors (nats, rabbitmq, redis, kafka), the http executor's: a publish takes
/// milliseconds, so a broker that does not answer for this long is not going to.
const BROKER_TIMEOUT_DEFAULT: Duration = HTTP_TIMEOUT_DEFAULT;

/// A config problem, naming the job field at fault (`executor_config.command`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn key(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { field: format!("executor_config.{key}"), message: message.into() }
    }
}

/// Checks an executor config before a job is accepted.
pub fn validate(executor: &str, config: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    match executor {
        "shell" => ShellConfig::parse(config).map(drop),
        "http" => HttpConfig::parse(config, Regex::new).map(drop),
        "nats" => NatsConfig::parse(config).map(drop),
        "rabbitmq" => RabbitConfig::parse(config).map(drop),
        "redis" => RedisConfig::parse(config).map(drop),
        "kafka" => KafkaConfig::parse(config).map(drop),
        "sql" => SqlConfig::parse(config).map(drop),
        "grpc" => GrpcConfig::parse(config).map(drop),
        other => Err(unknown_executor(other)),
    }
}

pub(crate) fn unknown_executor(executor: &str) -> ConfigError {
    ConfigError {
        field: "executor".to_owned(),
        message: format!("unknown executor '{executor}'; known: {}", EXECUTORS.join(", ")),
    }
}

/// What a shell job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `/bin/sh -c <script>`.
    Shell(String),
    /// A program and its arguments, executed directly.
    Direct(Vec<String>),
}

#[derive(Debug, Clone)]
pub(crate) struct ShellConfig {
    pub command: Command,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// `None` runs without a limit (no key, or Dkron's "0").
    pub timeout: Option<Duration>,
    /// Written to the process's standard input, which is then closed (executor plugins); `None`: no input.
    pub input: Option<Vec<u8>>,
}

impl ShellConfig {
    pub fn parse(config: &BTreeMap<String, String>) -> Result<ShellConfig, ConfigError> {
        let text = get(config, "command");
        if text.trim().is_empty() {
            return Err(ConfigError::key("command", "must not be empty"));
        }
        refuse_nul(config, "command", "no command line")?;
        let command = if parse_bool(config, "shell")? {
            Command::Shell(text.to_owned())
        } else {
            let argv = words::split(text).map_err(|e| ConfigError::key("command", e))?;
            if argv.is_empty() {
                return Err(ConfigError::key("command", "must not be empty"));
            }
            Command::Direct(argv)
        };
        refuse_nul(config, "cwd", "no path")?;
        let cwd = Some(get(config, "cwd")).filter(|c| !c.is_empty()).map(PathBuf::from);
        Ok(ShellConfig {
            command,
            env: parse_env(get(config, "env"))?,
            cwd,
            timeout: parse_timeout(config, None)?,
            input: None,
        })
    }
}

/// TLS settings that need a client of their own; the common case (all default) uses the shared one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsOptions {
    pub no_verify_peer: bool,
    pub root_cas_file: Option<PathBuf>,
    pub certificate_file: Option<PathBuf>,
    pub certificate_key_file: Option<PathBuf>,
}

impl TlsOptions {
    /// True when files are involved, so the default and the no-verify client cannot serve the run.
    pub fn has_files(&self) -> bool {
        self.root_cas_file.is_some() || self.certificate_file.is_some()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct HttpConfig {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: String,
    /// `None` runs without a limit (Dkron's "0").
    pub timeout: Option<Duration>,
    /// Success requires one of these statuses. Dkron allows a comma-separated list ("200,206").
    pub expect_codes: Vec<u16>,
    pub expect_body: Option<Regex>,
    pub tls: TlsOptions,
}

impl HttpConfig {
    /// Parses an http config; `compile` turns the `expectBody` pattern into a regex, so that the runner
    /// can serve it from a cache while validation compiles afresh.
    pub fn parse<E: std::fmt::Display>(
        config: &BTreeMap<String, String>,
        compile: impl FnOnce(&str) -> Result<Regex, E>,
    ) -> Result<HttpConfig, ConfigError> {
        let expect_body = match get(config, "expectBody") {
            "" => None,
            pattern => {
                Some(compile(pattern).map_err(|e| ConfigError::key("expectBody", format!("invalid regex: {e}")))?)
            }
        };
        Ok(HttpConfig {
            method: parse_method(get(config, "method"))?,
            url: parse_url(get(config, "url"))?,
            headers: parse_headers(get(config, "headers"))?,
            body: get(config, "body").to_owned(),
            timeout: parse_timeout(config, Some(HTTP_TIMEOUT_DEFAULT))?,
            expect_codes: parse_expect_codes(get(config, "expectCode"))?,
            expect_body,
            tls: parse_tls(config)?,
        })
    }
}

fn get<'a>(config: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    config.get(key).map_or("", String::as_str)
}

/// The value of `key`, which must be there and not blank.
fn required<'a>(config: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, ConfigError> {
    match get(config, key) {
        text if text.trim().is_empty() => Err(ConfigError::key(key, "required")),
        text => Ok(text),
    }
}

/// A connection URL that must parse and use one of `schemes`. The text is never repeated in a message: it
/// may hold a password.
fn parse_service_url(config: &BTreeMap<String, String>, key: &str, schemes: &[&str]) -> Result<Url, ConfigError> {
    let text = required(config, key)?;
    let url = Url::parse(text.trim()).map_err(|e| ConfigError::key(key, format!("not a URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        let expected = schemes.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(" or ");
        return Err(ConfigError::key(key, format!("must start with {expected}, not {}://", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::key(key, "has no host"));
    }
    Ok(url)
}

/// Refuses a NUL byte in a value the operating system takes as a C string (`holder` says which kind, for the
/// message). Such a job would be accepted and then fail at every run (spawn refuses the argument, a `cwd`
/// reads as missing), so it is refused when the job is submitted.
fn refuse_nul(config: &BTreeMap<String, String>, key: &str, holder: &str) -> Result<(), ConfigError> {
    if get(config, key).contains('\0') {
        return Err(ConfigError::key(key, format!("contains a NUL byte, which {holder} can hold")));
    }
    Ok(())
}

/// Go's `strconv.ParseBool`, which Dkron uses, so "1" and "True" keep working; empty means false.
fn parse_bool(config: &BTreeMap<String, String>, key: &str) -> Result<bool, ConfigError> {
    match get(config, key) {
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        other => Err(ConfigError::key(key, format!("must be true or false, not '{other}'"))),
    }
}

pub(crate) fn parse_timeout(
    config: &BTreeMap<String, String>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match get(config, "timeout") {
        "" => Ok(default),
        text => {
            // The field is named already; keep just the value and the problem.
            let timeout = parse_duration(text).map_err(|e| ConfigError::key("timeout", e.problem()))?;
            Ok(Some(timeout).filter(|t| !t.is_zero()))
        }
    }
}

/// Dkron's env format: comma-separated `KEY=value` pairs.
fn parse_env(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(ConfigError::key("env", format!("'{pair}' is not a KEY=value pair")));
        };
        if key.is_empty() {
            return Err(ConfigError::key("env", format!("'{pair}' is not a valid KEY=value pair (the key is empty)")));
        }
        if pair.contains('\0') {
            let shown = pair.escape_debug();
            return Err(ConfigError::key(
                "env",
                format!("'{shown}' contains a NUL byte, which no environment variable can hold"),
            ));
        }
        env.push((key.to_owned(), value.to_owned()));
    }
    Ok(env)
}

fn parse_method(text: &str) -> Result<Method, ConfigError> {
    if text.is_empty() {
        return Ok(Method::GET);
    }
    // Methods are case-sensitive on the wire, but every standard one is upper case and a job saying
    // "post" means POST.
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| ConfigError::key("method", format!("'{text}' is not a valid HTTP method")))
}

fn parse_url(text: &str) -> Result<Url, ConfigError> {
    if text.is_empty() {
        return Err(ConfigError::key("url", "must not be empty"));
    }
    // The URL parser would quietly percent-encode a NUL in the path or drop it from the query, so the request
    // would go somewhere the job does not say.
    if text.contains('\0') {
        return Err(ConfigError::key("url", "contains a NUL byte, which no URL can hold"));
    }
    let url = Url::parse(text).map_err(|e| ConfigError::key("url", format!("'{text}': {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::key("url", format!("scheme must be http or https, not '{}'", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::key("url", format!("'{text}' has no host")));
    }
    Ok(url)
}

/// Dkron's header format: a JSON array of "Key: Value" strings.
fn parse_headers(text: &str) -> Result<HeaderMap, ConfigError> {
    let mut headers = HeaderMap::new();
    if text.trim().is_empty() {
        return Ok(headers);
    }
    let lines: Vec<String> = serde_json::from_str(text).map_err(|_| {
        ConfigError::key(
            "headers",
            r#"must be a JSON array of "Key: Value" strings, e.g. ["Content-Type: application/json"]"#,
        )
    })?;
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        // Split at the first colon only: values such as URLs and times contain colons too.
        let Some((name, value)) = line.split_once(':') else {
            return Err(ConfigError::key("headers", format!("'{line}' is not a \"Key: Value\" header")));
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ConfigError::key("headers", format!("'{}' is not a valid header name", name.trim())))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| ConfigError::key("headers", format!("header '{name}' has an invalid value")))?;
        // Dkron sets (replaces) rather than appends, so a repeated key keeps its last value.
        headers.insert(name, value);
    }
    Ok(headers)
}

fn parse_expect_codes(text: &str) -> Result<Vec<u16>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(vec![200]);
    }
    text.split(',')
        .map(|code| {
            code.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c)).ok_or_else(|| {
                ConfigError::key("expectCode", format!("'{}' is not an HTTP status code (100-599)", code.trim()))
            })
        })
        .collect()
}

fn parse_tls(config: &BTreeMap<String, String>) -> Result<TlsOptions, ConfigError> {
    for key in ["tlsRootCAsFile", "tlsCertificateFile", "tlsCertificateKeyFile"] {
        refuse_nul(config, key, "no path")?;
    }
    let path = |key| Some(get(config, key)).filter(|p| !p.is_empty()).map(PathBuf::from);
    let tls = TlsOptions {
        no_verify_peer: parse_bool(config, "tlsNoVerifyPeer")?,
        root_cas_file: path("tlsRootCAsFile"),
        certificate_file: path("tlsCertificateFile"),
        certificate_key_file: path("tlsCertificateKeyFile"),
    };
    match (&tls.certificate_file, &tls.certificate_key_file) {
        (Some(_), None) => Err(ConfigError::key("tlsCertificateKeyFile", "is required with tlsCertificateFile")),
        (None, Some(_)) => Err(ConfigError::key("tlsCertificateFile", "is required with tlsCertificateKeyFile")),
        _ => Ok(tls),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// `Ok` for accepted configs, else the offending field and a fragment of the message.
    pub(crate) fn check(executor: &str, pairs: &[(&str, &str)]) -> Result<(), (String, String)> {
        validate(executor, &map(pairs)).map_err(|e| (e.field, e.message))
    }

    #[track_caller]
    pub(crate) fn assert_rejected(executor: &str, pairs: &[(&str, &str)], field: &str, fragment: &str) {
        match check(executor, pairs) {
            Ok(()) => panic!("{pairs:?} should be rejected"),
            Err((f, m)) => {
                assert_eq!(f, field, "{pairs:?}: {m}");
                assert!(m.contains(fragment), "{pairs:?}: '{m}' lacks '{fragment}'");
            }
        }
    }

    #[test]
    fn unknown_executor_is_named_with_the_known_ones() {
        assert_rejected(
            "docker",
            &[],
            "executor",
            "unknown executor 'docker'; known: shell, http, nats, rabbitmq, redis, kafka, sql, grpc",
        );
    }

    #[test]
    fn shell_configs_that_are_accepted() {
        let accepted: &[&[(&str, &str)]] = &[
            &[("command", "echo hi")],
            &[("command", "echo hi | wc"), ("shell", "true")],
            &[("command", "echo"), ("shell", "1")],
            &[("command", "echo"), ("shell", "False")],
            &[("command", "echo"), ("env", "A=1,B=two, C=x=y,")],
            &[("command", "echo"), ("env", "EMPTY=")],
            &[("command", "echo"), ("cwd", "/tmp")],
            &[("command", "echo"), ("timeout", "30s")],
            &[("command", "echo"), ("timeout", "1m30s")],
            &[("command", "echo"), ("timeout", "15")],
            &[("command", "echo"), ("payload", "ignored"), ("mystery", "x")],
        ];
        for pairs in accepted {
            assert_eq!(check("shell", pairs), Ok(()), "{pairs:?}");
        }
    }

    #[test]
    fn shell_configs_that_are_rejected() {
        let field = "executor_config.command";
        assert_rejected("shell", &[], field, "must not be empty");
        assert_rejected("shell", &[("command", "  ")], field, "must not be empty");
        assert_rejected("shell", &[("command", "echo 'a")], field, "unterminated");
        let cases = [
            (("shell", "yes"), "executor_config.shell", "true or false"),
            (("timeout", "soon"), "executor_config.timeout", "'soon' is not a duration"),
            (("timeout", "-1s"), "executor_config.timeout", "negative"),
            (("timeout", "10x"), "executor_config.timeout", "unknown unit"),
            (("env", "A=1,B"), "executor_config.env", "'B' is not a KEY=value"),
            (("env", "=1"), "executor_config.env", "not a valid"),
        ];
        for ((key, value), field, fragment) in cases {
            assert_rejected("shell", &[("command", "echo"), (key, value)], field, fragment);
        }
    }

    #[test]
    fn a_nul_byte_that_would_fail_every_run_is_refused_at_submission() {
        for shell in ["true", "false"] {
            let pairs = [("command", "echo a\0b"), ("shell", shell)];
            assert_rejected("shell", &pairs, "executor_config.command", "contains a NUL byte");
        }
        let cases = [
            (("cwd", "/tmp\0x"), "executor_config.cwd", "contains a NUL byte, which no path can hold"),
            (("env", "A=1\0"), "executor_config.env", "'A=1\\0' contains a NUL byte"),
            (("env", "A\0B=1"), "executor_config.env", "contains a NUL byte"),
        ];
        for ((key, value), field, fragment) in cases {
            assert_rejected("shell", &[("command", "echo"), (key, value)], field, fragment);
        }
        let url = ("url", "http://127.0.0.1/");
        let cases = [
            (("url", "http://h/a\0b"), "executor_config.url", "contains a NUL byte"),
            (("headers", r#"["X-A: a\u0000b"]"#), "executor_config.headers", "header 'x-a' has an invalid value"),
            (("headers", r#"["X-\u0000: b"]"#), "executor_config.headers", "not a valid header name"),
            (("tlsRootCAsFile", "/ca\0.pem"), "executor_config.tlsRootCAsFile", "no path"),
            (("tlsCertificateFile", "/c\0.pem"), "executor_config.tlsCertificateFile", "no path"),
            (("tlsCertificateKeyFile", "/k\0.pem"), "executor_config.tlsCertificateKeyFile", "no path"),
        ];
        for ((key, value), field, fragment) in cases {
            let pairs = [url, (key, value)];
            // The url case replaces the good url: a map keeps the last value of a key.
            assert_rejected("http", &pairs, field, fragment);
        }
        assert_eq!(check("http", &[url, ("body", "binary\0body")]), Ok(()), "a body is bytes, NUL included");
    }

    #[test]
    fn shell_command_is_split_unless_run_by_the_shell() {
        let direct = ShellConfig::parse(&map(&[("command", "printf '%s' \"a b\"")])).unwrap();
        assert_eq!(direct.command, Command::Direct(vec!["printf".into(), "%s".into(), "a b".into()]));
        let shell = ShellConfig::parse(&map(&[("command", "echo $HOME"), ("shell", "true")]));
        assert_eq!(shell.unwrap().command, Command::Shell("echo $HOME".into()));
    }

    #[test]
    fn http_configs_that_are_accepted() {
        let url = ("url", "http://127.0.0.1:8080/hook");
        let accepted: &[&[(&str, &str)]] = &[
            &[url],
            &[("url", "https://example.com")],
            &[url, ("method", "POST"), ("body", "{}")],
            &[url, ("method", "purge")],
            &[url, ("headers", r#"["Content-Type: application/json", "X-At: 12:00"]"#)],
            &[url, ("headers", "[]")],
            &[url, ("headers", "")],
            &[url, ("timeout", "30")],
            &[url, ("timeout", "500ms")],
            &[url, ("expectCode", "204")],
            &[url, ("expectCode", "200,206")],
            &[url, ("expectBody", "^ok\\b")],
            &[url, ("tlsNoVerifyPeer", "true")],
            &[url, ("debug", "true")],
            &[url, ("tlsRootCAsFile", "/etc/ca.pem")],
            &[url, ("tlsCertificateFile", "/c.pem"), ("tlsCertificateKeyFile", "/k.pem")],
        ];
        for pairs in accepted {
            assert_eq!(check("http", pairs), Ok(()), "{pairs:?}");
        }
    }

    #[test]
    fn http_configs_that_are_rejected() {
        assert_rejected("http", &[], "executor_config.url", "must not be empty");
        assert_rejected("http", &[("url", "not a url")], "executor_config.url", "not a url");
        assert_rejected("http", &[("url", "ftp://example.com/x")], "executor_config.url", "http or https");
        let url = ("url", "http://127.0.0.1/");
        let cases = [
            (("method", "GE T"), "executor_config.method", "not a valid HTTP method"),
            (("headers", "Content-Type: x"), "executor_config.headers", "JSON array"),
            (("headers", r#"{"a":"b"}"#), "executor_config.headers", "JSON array"),
            (("headers", r#"["NoColon"]"#), "executor_config.headers", "'NoColon'"),
            (("headers", r#"["Bad Name: x"]"#), "executor_config.headers", "header name"),
            (("timeout", "forever"), "executor_config.timeout", "is not a duration"),
            (("expectCode", "abc"), "executor_config.expectCode", "'abc'"),
            (("expectCode", "99"), "executor_config.expectCode", "100-599"),
            (("expectCode", "600"), "executor_config.expectCode", "100-599"),
            (("expectCode", "200,"), "executor_config.expectCode", "''"),
            (("expectBody", "(unclosed"), "executor_config.expectBody", "invalid regex"),
            (("tlsNoVerifyPeer", "maybe"), "executor_config.tlsNoVerifyPeer", "true or false"),
            (("tlsCertificateFile", "/c.pem"), "executor_config.tlsCertificateKeyFile", "required"),
            (("tlsCertificateKeyFile", "/k.pem"), "executor_config.tlsCertificateFile", "required"),
        ];
        for ((key, value), field, fragment) in cases {
            assert_rejected("http", &[url, (key, value)], field, fragment);
        }
    }

    #[test]
    fn http_defaults_follow_dkron_with_an_exact_200() {
        let config = HttpConfig::parse(&map(&[("url", "http://h/")]), Regex::new).unwrap();
        assert_eq!(config.method, Method::GET);
        assert_eq!(config.timeout, Some(Duration::from_secs(30)));
        assert_eq!(config.expect_codes, [200]);
        assert!(config.expect_body.is_none());
        assert_eq!(config.tls, TlsOptions::default());
        let no_limit = HttpConfig::parse(&map(&[("url", "http://h/"), ("timeout", "0")]), Regex::new);
        assert_eq!(no_limit.unwrap().timeout, None);
    }

    #[test]
    fn header_values_keep_their_colons() {
        let config =
            HttpConfig::parse(&map(&[("url", "http://h/"), ("headers", r#"["Referer: http://x:1/"]"#)]), Regex::new)
                .unwrap();
        assert_eq!(config.headers["referer"], "http://x:1/");
    }
}
