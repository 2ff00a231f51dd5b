//! The rabbitmq executor's config: Dkron's keys (`url`, `exchange`, `queue.*`, `message.*`) plus `timeout`.
//!
//! As in Dkron, the message is published to `exchange` (the default exchange when empty) with `queue.name` as
//! the routing key, so with the default exchange it lands in the queue of that name.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use reqwest::Url;

use super::{BROKER_TIMEOUT_DEFAULT, ConfigError, get, parse_bool, parse_service_url, parse_timeout};
use crate::redact::Secrets;

/// AMQP limits names (queue, exchange, message id as a short string) to 255 bytes.
const SHORT_STRING_BYTES_MAX: usize = 255;

#[derive(Debug, Clone)]
pub(crate) struct RabbitConfig {
    /// `amqp://user:password@host:port/vhost`.
    pub url: Url,
    /// `""` is the default exchange.
    pub exchange: String,
    /// The routing key; with the default exchange, the queue.
    pub queue: String,
    /// Declare the queue (`queue.create`) with these flags before publishing.
    pub declare: Option<QueueFlags>,
    pub content_type: String,
    /// 1 transient, 2 persistent; `None` leaves it to the broker (transient).
    pub delivery_mode: Option<u8>,
    pub message_id: String,
    pub body: Vec<u8>,
    /// `None` runs without a limit (Dkron's "0").
    pub timeout: Option<Duration>,
    pub secrets: Secrets,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QueueFlags {
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive: bool,
}

impl RabbitConfig {
    pub fn parse(config: &BTreeMap<String, String>) -> Result<RabbitConfig, ConfigError> {
        let url = parse_service_url(config, "url", &["amqp"])
            .map_err(|e| with_hint(e, "amqps:// (TLS) is not supported yet"))?;
        let exchange = short_string(config, "exchange")?;
        let queue = short_string(config, "queue.name")?;
        if exchange.is_empty() && queue.is_empty() {
            return Err(ConfigError::key("queue.name", "required when no exchange is given"));
        }
        let flags = QueueFlags {
            durable: parse_bool(config, "queue.durable")?,
            auto_delete: parse_bool(config, "queue.auto_delete")?,
            exclusive: parse_bool(config, "queue.exclusive")?,
        };
        let declare = parse_bool(config, "queue.create")?.then_some(flags);
        if declare.is_some() && queue.is_empty() {
            return Err(ConfigError::key("queue.name", "required with queue.create"));
        }
        let mut secrets = Secrets::new();
        secrets.add_url_password(&url);
        Ok(RabbitConfig {
            url,
            exchange,
            queue,
            declare,
            content_type: short_string(config, "message.content_type")?,
            delivery_mode: parse_delivery_mode(get(config, "message.delivery_mode"))?,
            message_id: short_string(config, "message.messageId")?,
            body: parse_body(config)?,
            timeout: parse_timeout(config, Some(BROKER_TIMEOUT_DEFAULT))?,
            secrets,
        })
    }
}

fn with_hint(mut error: ConfigError, hint: &str) -> ConfigError {
    if error.message.contains("amqps://") {
        error.message = format!("{}; {hint}", error.message);
    }
    error
}

fn short_string(config: &BTreeMap<String, String>, key: &str) -> Result<String, ConfigError> {
    let text = get(config, key);
    if text.len() > SHORT_STRING_BYTES_MAX {
        return Err(ConfigError::key(key, format!("longer than {SHORT_STRING_BYTES_MAX} bytes")));
    }
    Ok(text.to_owned())
}

fn parse_delivery_mode(text: &str) -> Result<Option<u8>, ConfigError> {
    match text.trim() {
        "" | "0" => Ok(None),
        "1" => Ok(Some(1)),
        "2" => Ok(Some(2)),
        other => Err(ConfigError::key(
            "message.delivery_mode",
            format!("must be 1 (transient) or 2 (persistent), not '{other}'"),
        )),
    }
}

/// `message.base64Body` wins over `message.body`, as in Dkron.
fn parse_body(config: &BTreeMap<String, String>) -> Result<Vec<u8>, ConfigError> {
    match get(config, "message.base64Body").trim() {
        "" => Ok(get(config, "message.body").as_bytes().to_vec()),
        encoded => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| ConfigError::key("message.base64Body", format!("not base64: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_rejected, check, map};
    use super::*;

    #[test]
    fn rabbitmq_configs_that_are_accepted() {
        let url = ("url", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let accepted: &[&[(&str, &str)]] = &[
            &[url, ("queue.name", "jobs")],
            &[url, ("exchange", "events")],
            &[url, ("exchange", "events"), ("queue.name", "route.key")],
            &[url, ("queue.name", "q"), ("queue.create", "true"), ("queue.durable", "true")],
            &[url, ("queue.name", "q"), ("queue.auto_delete", "1"), ("queue.exclusive", "false")],
            &[url, ("queue.name", "q"), ("message.delivery_mode", "2"), ("message.content_type", "text/plain")],
            &[url, ("queue.name", "q"), ("message.messageId", "m-1"), ("message.body", "hi")],
            &[url, ("queue.name", "q"), ("message.base64Body", "aGk="), ("timeout", "5s")],
        ];
        for pairs in accepted {
            assert_eq!(check("rabbitmq", pairs), Ok(()), "{pairs:?}");
        }
    }

    #[test]
    fn rabbitmq_configs_that_are_rejected() {
        assert_rejected("rabbitmq", &[("queue.name", "q")], "executor_config.url", "required");
        assert_rejected("rabbitmq", &[("url", "amqp://h")], "executor_config.queue.name", "required");
        let url = ("url", "amqp://h");
        let q = ("queue.name", "q");
        let long = "x".repeat(256);
        let cases = [
            (("url", "amqps://h"), "executor_config.url", "not supported yet"),
            (("url", "http://h"), "executor_config.url", "amqp://"),
            (("queue.name", long.as_str()), "executor_config.queue.name", "longer than 255"),
            (("queue.create", "yes"), "executor_config.queue.create", "true or false"),
            (("queue.durable", "2"), "executor_config.queue.durable", "true or false"),
            (("message.delivery_mode", "3"), "executor_config.message.delivery_mode", "1 (transient) or 2"),
            (("message.base64Body", "***"), "executor_config.message.base64Body", "not base64"),
            (("timeout", "-1s"), "executor_config.timeout", "negative"),
        ];
        for ((key, value), field, fragment) in cases {
            assert_rejected("rabbitmq", &[url, q, (key, value)], field, fragment);
        }
        let declare_without_queue = [url, ("exchange", "x"), ("queue.create", "true")];
        assert_rejected("rabbitmq", &declare_without_queue, "executor_config.queue.name", "queue.create");
    }

    #[test]
    fn base64_body_wins_and_the_url_password_is_a_secret() {
        let config = RabbitConfig::parse(&map(&[
            ("url", "amqp://app:pw1@h/v"),
            ("queue.name", "q"),
            ("message.body", "plain"),
            ("message.base64Body", "AAEC"),
        ]))
        .unwrap();
        assert_eq!(config.body, [0, 1, 2]);
        assert_eq!(config.secrets.scrub("pw1"), "***");
        assert_eq!(config.declare, None);
        assert_eq!(config.delivery_mode, None);
    }
}
