//! The redis executor: one `PUBLISH`, `LPUSH`, `RPUSH` or `XADD`, its answer (receivers, list length, entry id)
//! as the output.
//!
//! A multiplexed connection carries any number of concurrent commands, so one is kept per URL
//! (`connections::Shared`) and dropped after an error that says it is broken. Named `redis_exec` so that it
//! does not shadow the `redis` crate.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::config::{RedisCommand, RedisConfig, RedisPayload};
use crate::connections::Shared;
use crate::http::error_chain;
use crate::redact::display_url;
use crate::remote::{self, race};
use crate::spec::Outcome;

pub(crate) type RedisConnections = Shared<MultiplexedConnection>;

pub(crate) async fn run(
    connections: &RedisConnections,
    config: RedisConfig,
    mut capture: Capture,
    cancel: &CancellationToken,
) -> Outcome {
    let ended = race(exchange(connections, &config, &mut capture), config.timeout, cancel).await;
    remote::finish(capture, ended, config.timeout, &config.secrets)
}

async fn exchange(connections: &RedisConnections, config: &RedisConfig, capture: &mut Capture) -> Result<(), String> {
    let key = config.url.as_str();
    let mut connection = match connections.get(key, |_| true) {
        Some(connection) => connection,
        None => {
            let connection = connect(config).await?;
            connections.put(key, connection.clone());
            connection
        }
    };
    let target = &config.target;
    let mut command = redis::cmd(config.command.name());
    command.arg(target);
    match &config.payload {
        RedisPayload::Message(message) => {
            command.arg(message);
        }
        RedisPayload::Fields(fields) => {
            // `*`: the server picks the entry id.
            command.arg("*");
            for (field, value) in fields {
                command.arg(field).arg(value);
            }
        }
    }
    let failed = |e: RedisError| {
        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            connections.remove(key);
        }
        format!("{} to '{target}' failed: {}", config.command.name(), error_chain(&e))
    };
    let line = match config.command {
        RedisCommand::Publish => {
            let receivers: i64 = command.query_async(&mut connection).await.map_err(failed)?;
            format!("published to channel '{target}'; {receivers} subscribers received it")
        }
        RedisCommand::LPush | RedisCommand::RPush => {
            let length: i64 = command.query_async(&mut connection).await.map_err(failed)?;
            format!("pushed to list '{target}', which now holds {length} items")
        }
        RedisCommand::XAdd => {
            let id: String = command.query_async(&mut connection).await.map_err(failed)?;
            format!("added entry {id} to stream '{target}'")
        }
    };
    capture.write(line.as_bytes());
    capture.write(b"\n");
    Ok(())
}

async fn connect(config: &RedisConfig) -> Result<MultiplexedConnection, String> {
    let cannot =
        |e: RedisError| format!("cannot connect to redis at {}: {}", display_url(&config.url), error_chain(&e));
    let client = Client::open(config.url.as_str()).map_err(cannot)?;
    // The job's timeout bounds the whole run; the client's own defaults would cut a slow server off first.
    let no_limits: Option<Duration> = None;
    let options = AsyncConnectionConfig::new().set_connection_timeout(no_limits).set_response_timeout(no_limits);
    client.get_multiplexed_async_connection_with_config(&options).await.map_err(cannot)
}
