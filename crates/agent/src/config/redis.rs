//! The redis executor's config (Dkron has no redis executor, so the keys are ours): `url`, `command`
//! (`PUBLISH`, `LPUSH`, `RPUSH` or `XADD`), `channel` (PUBLISH) or `key` (the list or stream), `message`,
//! `fields` (XADD) and `timeout`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;

use super::{BROKER_TIMEOUT_DEFAULT, ConfigError, get, parse_service_url, parse_timeout, required};
use crate::redact::Secrets;

/// The stream field that carries `message` when XADD is given no `fields`.
pub(crate) const XADD_MESSAGE_FIELD: &str = "message";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisCommand {
    Publish,
    LPush,
    RPush,
    XAdd,
}

impl RedisCommand {
    pub fn name(self) -> &'static str {
        match self {
            RedisCommand::Publish => "PUBLISH",
            RedisCommand::LPush => "LPUSH",
            RedisCommand::RPush => "RPUSH",
            RedisCommand::XAdd => "XADD",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RedisConfig {
    /// `redis://[user][:password@]host[:port][/db]`.
    pub url: Url,
    pub command: RedisCommand,
    /// The channel (PUBLISH) or the key of the list or stream.
    pub target: String,
    /// The message (PUBLISH, LPUSH, RPUSH) or, for XADD, the entry's fields in key order.
    pub payload: Payload,
    /// `None` runs without a limit.
    pub timeout: Option<Duration>,
    pub secrets: Secrets,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Payload {
    Message(String),
    Fields(Vec<(String, String)>),
}

impl RedisConfig {
    pub fn parse(config: &BTreeMap<String, String>) -> Result<RedisConfig, ConfigError> {
        let url = parse_service_url(config, "url", &["redis"]).map_err(|mut e| {
            if e.message.contains("rediss://") {
                e.message.push_str("; rediss:// (TLS) is not supported yet");
            }
            e
        })?;
        let command = parse_command(required(config, "command")?)?;
        let (target_key, other_key) = match command {
            RedisCommand::Publish => ("channel", "key"),
            _ => ("key", "channel"),
        };
        if !get(config, other_key).is_empty() {
            let message = format!("{} takes {target_key}, not {other_key}", command.name());
            return Err(ConfigError::key(other_key, message));
        }
        let target = required(config, target_key)?.to_owned();
        let fields = get(config, "fields");
        let payload = match command {
            RedisCommand::XAdd if !fields.trim().is_empty() => {
                if !get(config, "message").is_empty() {
                    return Err(ConfigError::key("message", "XADD takes fields or message, not both"));
                }
                Payload::Fields(parse_fields(fields)?)
            }
            RedisCommand::XAdd => {
                Payload::Fields(vec![(XADD_MESSAGE_FIELD.to_owned(), get(config, "message").to_owned())])
            }
            _ if !fields.is_empty() => {
                return Err(ConfigError::key("fields", format!("only XADD takes fields, not {}", command.name())));
            }
            _ => Payload::Message(get(config, "message").to_owned()),
        };
        let mut secrets = Secrets::new();
        secrets.add_url_password(&url);
        Ok(RedisConfig {
            url,
            command,
            target,
            payload,
            timeout: parse_timeout(config, Some(BROKER_TIMEOUT_DEFAULT))?,
            secrets,
        })
    }
}

fn parse_command(text: &str) -> Result<RedisCommand, ConfigError> {
    match text.trim().to_ascii_uppercase().as_str() {
        "PUBLISH" => Ok(RedisCommand::Publish),
        "LPUSH" => Ok(RedisCommand::LPush),
        "RPUSH" => Ok(RedisCommand::RPush),
        "XADD" => Ok(RedisCommand::XAdd),
        _ => Err(ConfigError::key("command", format!("'{text}' is not one of PUBLISH, LPUSH, RPUSH, XADD"))),
    }
}

/// A JSON object of string values, e.g. `{"event": "tick", "source": "kairos"}`.
fn parse_fields(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let fields: BTreeMap<String, String> = serde_json::from_str(text)
        .map_err(|_| ConfigError::key("fields", r#"must be a JSON object of strings, e.g. {"event": "tick"}"#))?;
    if fields.is_empty() {
        return Err(ConfigError::key("fields", "must hold at least one field"));
    }
    Ok(fields.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_rejected, check, map};
    use super::*;

    #[test]
    fn redis_configs_that_are_accepted() {
        let url = ("url", "redis://127.0.0.1:6379/0");
        let accepted: &[&[(&str, &str)]] = &[
            &[url, ("command", "PUBLISH"), ("channel", "ticks"), ("message", "hi")],
            &[url, ("command", "publish"), ("channel", "ticks")],
            &[url, ("command", "LPUSH"), ("key", "queue"), ("message", "job")],
            &[url, ("command", "RPUSH"), ("key", "queue"), ("message", "job"), ("timeout", "1s")],
            &[url, ("command", "XADD"), ("key", "events"), ("message", "tick")],
            &[url, ("command", "XADD"), ("key", "events"), ("fields", r#"{"a": "1", "b": "two"}"#)],
            &[("url", "redis://:pw@h"), ("command", "LPUSH"), ("key", "k")],
        ];
        for pairs in accepted {
            assert_eq!(check("redis", pairs), Ok(()), "{pairs:?}");
        }
    }

    #[test]
    fn redis_configs_that_are_rejected() {
        let url = ("url", "redis://h");
        assert_rejected("redis", &[("command", "LPUSH"), ("key", "k")], "executor_config.url", "required");
        assert_rejected("redis", &[url, ("key", "k")], "executor_config.command", "required");
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 10] = [
            (&[("url", "rediss://h"), ("command", "LPUSH"), ("key", "k")], "url", "not supported yet"),
            (&[("url", "http://h"), ("command", "LPUSH"), ("key", "k")], "url", "redis://"),
            (&[url, ("command", "SET"), ("key", "k")], "command", "'SET' is not one of PUBLISH"),
            (&[url, ("command", "PUBLISH")], "channel", "required"),
            (&[url, ("command", "PUBLISH"), ("key", "k")], "key", "PUBLISH takes channel, not key"),
            (&[url, ("command", "LPUSH"), ("channel", "c")], "channel", "LPUSH takes key, not channel"),
            (&[url, ("command", "RPUSH"), ("key", "k"), ("fields", "{}")], "fields", "only XADD"),
            (&[url, ("command", "XADD"), ("key", "k"), ("fields", "[1]")], "fields", "JSON object of strings"),
            (&[url, ("command", "XADD"), ("key", "k"), ("fields", r#"{"a": 1}"#)], "fields", "JSON object"),
            (
                &[url, ("command", "XADD"), ("key", "k"), ("fields", r#"{"a":"1"}"#), ("message", "m")],
                "message",
                "not both",
            ),
        ];
        for (pairs, key, fragment) in cases {
            assert_rejected("redis", pairs, &format!("executor_config.{key}"), fragment);
        }
        let empty = [url, ("command", "XADD"), ("key", "k"), ("fields", "{}")];
        assert_rejected("redis", &empty, "executor_config.fields", "at least one field");
    }

    #[test]
    fn xadd_without_fields_sends_the_message_as_one_field() {
        let config =
            RedisConfig::parse(&map(&[("url", "redis://:pw@h"), ("command", "xadd"), ("key", "s"), ("message", "m")]))
                .unwrap();
        assert_eq!(config.command, RedisCommand::XAdd);
        assert_eq!(config.payload, Payload::Fields(vec![("message".to_owned(), "m".to_owned())]));
        assert_eq!(config.secrets.scrub("pw"), "***");
    }
}
