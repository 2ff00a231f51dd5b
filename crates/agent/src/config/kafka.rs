//! The kafka executor's config: Dkron's keys (`brokerAddress`, `topic`, `key`, `message`, `tlsEnable`,
//! `tlsInsecureSkipVerify`, `saslUsername`, `saslPassword`, `saslMechanism`) plus the http executor's
//! `tlsRootCAsFile` and `timeout`.
//!
//! Dkron quietly ignores settings that cannot apply (a CA file without TLS, a password without a user); here they
//! are refused when the job is submitted, naming the key, so a job never runs with less security than it says.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{BROKER_TIMEOUT_DEFAULT, ConfigError, get, parse_bool, parse_timeout, refuse_nul, required};
use crate::redact::Secrets;

/// Kafka's own limit on a topic name (longer names cannot be created).
const TOPIC_CHARS_MAX: usize = 249;

/// Brokers in one `brokerAddress`: a bootstrap list names a few; hundreds is a mistake.
const BROKERS_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

/// `tlsEnable`: the server is checked against `tlsRootCAsFile` (else the web's roots), or not at all with
/// `tlsInsecureSkipVerify`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KafkaTls {
    pub insecure_skip_verify: bool,
    pub root_cas_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub(crate) struct KafkaConfig {
    /// Bootstrap brokers, each `host:port`, in the order given.
    pub brokers: Vec<String>,
    pub topic: String,
    /// `None` (no `key`) sends a record without a key.
    pub key: Option<String>,
    pub message: String,
    pub tls: Option<KafkaTls>,
    pub sasl: Option<KafkaSasl>,
    /// `None` runs without a limit (Dkron's "0").
    pub timeout: Option<Duration>,
    pub secrets: Secrets,
}

impl KafkaConfig {
    pub fn parse(config: &BTreeMap<String, String>) -> Result<KafkaConfig, ConfigError> {
        let brokers = parse_brokers(required(config, "brokerAddress")?)?;
        let topic = parse_topic(required(config, "topic")?)?;
        let tls = parse_kafka_tls(config)?;
        let sasl = parse_sasl(config)?;
        let mut secrets = Secrets::new();
        if let Some(sasl) = &sasl {
            secrets.add(&sasl.password);
        }
        Ok(KafkaConfig {
            brokers,
            topic,
            key: Some(get(config, "key")).filter(|k| !k.is_empty()).map(str::to_owned),
            message: get(config, "message").to_owned(),
            tls,
            sasl,
            timeout: parse_timeout(config, Some(BROKER_TIMEOUT_DEFAULT))?,
            secrets,
        })
    }
}

/// Dkron's comma-separated `host:port` list (`[::1]:9092` for IPv6).
fn parse_brokers(list: &str) -> Result<Vec<String>, ConfigError> {
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if entries.len() > BROKERS_MAX {
        return Err(ConfigError::key("brokerAddress", format!("more than {BROKERS_MAX} brokers")));
    }
    let mut brokers = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let ok = entry.rsplit_once(':').is_some_and(|(host, port)| {
            let host_ok = !host.is_empty() && !host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@');
            host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !ok {
            let place = if entries.len() > 1 { format!("broker {}: ", i + 1) } else { String::new() };
            let message = format!("{place}'{entry}' is not host:port (e.g. kafka-1:9092)");
            return Err(ConfigError::key("brokerAddress", message));
        }
        brokers.push((*entry).to_owned());
    }
    Ok(brokers)
}

/// Kafka's legal topic names: letters, digits, `.`, `_` and `-`, at most 249 of them, not `.` or `..`.
fn parse_topic(topic: &str) -> Result<String, ConfigError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let problem = if topic.chars().count() > TOPIC_CHARS_MAX {
        Some(format!("longer than {TOPIC_CHARS_MAX} characters"))
    } else if topic == "." || topic == ".." {
        Some(format!("'{topic}' is not a topic name"))
    } else if !topic.chars().all(legal) {
        Some(format!("'{topic}' may hold only letters, digits, '.', '_' and '-'"))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(ConfigError::key("topic", problem)),
        None => Ok(topic.to_owned()),
    }
}

fn parse_kafka_tls(config: &BTreeMap<String, String>) -> Result<Option<KafkaTls>, ConfigError> {
    refuse_nul(config, "tlsRootCAsFile", "no path")?;
    let enabled = parse_bool(config, "tlsEnable")?;
    let insecure_skip_verify = parse_bool(config, "tlsInsecureSkipVerify")?;
    let root_cas_file = Some(get(config, "tlsRootCAsFile")).filter(|p| !p.is_empty()).map(PathBuf::from);
    if !enabled {
        if insecure_skip_verify {
            return Err(ConfigError::key("tlsInsecureSkipVerify", "needs tlsEnable: true"));
        }
        if root_cas_file.is_some() {
            return Err(ConfigError::key("tlsRootCAsFile", "needs tlsEnable: true"));
        }
        return Ok(None);
    }
    if insecure_skip_verify && root_cas_file.is_some() {
        let message = "give tlsRootCAsFile or tlsInsecureSkipVerify, not both (nothing is checked with the latter)";
        return Err(ConfigError::key("tlsInsecureSkipVerify", message));
    }
    Ok(Some(KafkaTls { insecure_skip_verify, root_cas_file }))
}

fn parse_sasl(config: &BTreeMap<String, String>) -> Result<Option<KafkaSasl>, ConfigError> {
    let username = get(config, "saslUsername");
    let password = get(config, "saslPassword");
    let mechanism = get(config, "saslMechanism").trim();
    if username.is_empty() {
        if !password.is_empty() {
            return Err(ConfigError::key("saslUsername", "required with saslPassword"));
        }
        if !mechanism.is_empty() {
            return Err(ConfigError::key("saslUsername", "required with saslMechanism"));
        }
        return Ok(None);
    }
    if password.is_empty() {
        return Err(ConfigError::key("saslPassword", "required with saslUsername"));
    }
    let mechanism = match mechanism.to_ascii_lowercase().as_str() {
        "sha256" | "scram-sha-256" => SaslMechanism::ScramSha256,
        "sha512" | "scram-sha-512" => SaslMechanism::ScramSha512,
        "plain" => SaslMechanism::Plain,
        "" => return Err(ConfigError::key("saslMechanism", "required with saslUsername: sha256, sha512 or plain")),
        _ => {
            let message =
                format!("'{mechanism}' is not one of sha256 (SCRAM-SHA-256), sha512 (SCRAM-SHA-512), plain (PLAIN)");
            return Err(ConfigError::key("saslMechanism", message));
        }
    };
    Ok(Some(KafkaSasl { mechanism, username: username.to_owned(), password: password.to_owned() }))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_rejected, check, map};
    use super::*;

    const BROKER: (&str, &str) = ("brokerAddress", "127.0.0.1:9092");
    const TOPIC: (&str, &str) = ("topic", "jobs.ticks");

    #[test]
    fn kafka_configs_that_are_accepted() {
        let accepted: &[&[(&str, &str)]] = &[
            &[],
            &[("key", "k"), ("message", "hello"), ("timeout", "2s")],
            &[("brokerAddress", "a:9092, b:9093,[::1]:9094")],
            &[("tlsEnable", "true")],
            &[("tlsEnable", "true"), ("tlsInsecureSkipVerify", "true")],
            &[("tlsEnable", "1"), ("tlsRootCAsFile", "/etc/kafka/ca.pem")],
            &[("tlsEnable", "false")],
            &[("saslUsername", "app"), ("saslPassword", "pw"), ("saslMechanism", "sha256")],
            &[("saslUsername", "app"), ("saslPassword", "pw"), ("saslMechanism", "SCRAM-SHA-512")],
            &[("saslUsername", "app"), ("saslPassword", "pw"), ("saslMechanism", "Plain")],
            &[("topic", "a_B-9.x")],
        ];
        for extra in accepted {
            let mut pairs = vec![BROKER, TOPIC];
            pairs.extend_from_slice(extra);
            assert_eq!(check("kafka", &pairs), Ok(()), "{pairs:?}");
        }
    }

    #[test]
    fn kafka_configs_that_are_rejected() {
        assert_rejected("kafka", &[TOPIC], "executor_config.brokerAddress", "required");
        assert_rejected("kafka", &[BROKER], "executor_config.topic", "required");
        let user = ("saslUsername", "app");
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 15] = [
            (&[("brokerAddress", "kafka")], "brokerAddress", "'kafka' is not host:port"),
            (&[("brokerAddress", "a:9092,b")], "brokerAddress", "broker 2: 'b' is not host:port"),
            (&[("brokerAddress", "a:99999")], "brokerAddress", "not host:port"),
            (&[("brokerAddress", "kafka://a:9092")], "brokerAddress", "not host:port"),
            (&[("topic", "a b")], "topic", "only letters, digits"),
            (&[("topic", "..")], "topic", "not a topic name"),
            (&[("tlsEnable", "yes")], "tlsEnable", "true or false"),
            (&[("tlsInsecureSkipVerify", "true")], "tlsInsecureSkipVerify", "needs tlsEnable"),
            (&[("tlsRootCAsFile", "/ca.pem")], "tlsRootCAsFile", "needs tlsEnable"),
            (
                &[("tlsEnable", "true"), ("tlsInsecureSkipVerify", "true"), ("tlsRootCAsFile", "/ca.pem")],
                "tlsInsecureSkipVerify",
                "not both",
            ),
            (&[user], "saslPassword", "required with saslUsername"),
            (&[("saslPassword", "pw")], "saslUsername", "required with saslPassword"),
            (&[user, ("saslPassword", "pw")], "saslMechanism", "required with saslUsername"),
            (&[user, ("saslPassword", "pw"), ("saslMechanism", "md5")], "saslMechanism", "'md5' is not one of"),
            (&[("timeout", "soon")], "timeout", "not a duration"),
        ];
        for (extra, key, fragment) in cases {
            let mut pairs = vec![BROKER, TOPIC];
            pairs.extend_from_slice(extra);
            assert_rejected("kafka", &pairs, &format!("executor_config.{key}"), fragment);
        }
        let long = "t".repeat(TOPIC_CHARS_MAX + 1);
        assert_rejected("kafka", &[BROKER, ("topic", &long)], "executor_config.topic", "longer than 249");
    }

    #[test]
    fn mechanisms_follow_dkron_and_the_password_is_a_secret() {
        let parse = |mechanism: &str| {
            let pairs =
                [BROKER, TOPIC, ("saslUsername", "u"), ("saslPassword", "hunter2"), ("saslMechanism", mechanism)];
            KafkaConfig::parse(&map(&pairs)).unwrap()
        };
        let config = parse("sha512");
        let sasl = config.sasl.as_ref().unwrap();
        assert_eq!((sasl.mechanism, sasl.username.as_str()), (SaslMechanism::ScramSha512, "u"));
        assert_eq!(config.secrets.scrub("auth hunter2 failed"), "auth *** failed");
        assert_eq!(parse("SHA256").sasl.unwrap().mechanism, SaslMechanism::ScramSha256);
        assert_eq!(parse("scram-sha-256").sasl.unwrap().mechanism, SaslMechanism::ScramSha256);
        assert_eq!(parse("PLAIN").sasl.unwrap().mechanism, SaslMechanism::Plain);
    }

    #[test]
    fn defaults_are_plain_text_without_a_key_and_the_broker_timeout() {
        let config = KafkaConfig::parse(&map(&[("brokerAddress", " a:1 , b:2 "), TOPIC])).unwrap();
        assert_eq!(config.brokers, ["a:1", "b:2"]);
        assert_eq!((config.key, config.message.as_str()), (None, ""));
        assert!(config.tls.is_none() && config.sasl.is_none());
        assert_eq!(config.timeout, Some(BROKER_TIMEOUT_DEFAULT));
    }
}
