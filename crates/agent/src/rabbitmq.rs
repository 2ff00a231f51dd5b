//! The rabbitmq executor: publishes one message to `exchange` with `queue.name` as the routing key (declaring
//! the queue first with `queue.create`), with publisher confirms, so success means the broker took the message.
//!
//! The message is published `mandatory`: a message no queue takes (a queue that does not exist, an exchange
//! without a matching binding) comes back, and the run fails saying so instead of reporting a message that
//! went nowhere. One AMQP connection is kept per URL (`connections::Shared`); each run opens a channel of its
//! own on it, which closes when the run ends.

use std::sync::Arc;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::config::RabbitConfig;
use crate::connections::Shared;
use crate::http::error_chain;
use crate::redact::display_url;
use crate::remote::{self, race};
use crate::spec::Outcome;

pub(crate) type RabbitConnections = Shared<Arc<Connection>>;

pub(crate) async fn run(
    connections: &RabbitConnections,
    config: RabbitConfig,
    mut capture: Capture,
    cancel: &CancellationToken,
) -> Outcome {
    let ended = race(exchange(connections, &config, &mut capture), config.timeout, cancel).await;
    remote::finish(capture, ended, config.timeout, &config.secrets)
}

async fn exchange(connections: &RabbitConnections, config: &RabbitConfig, capture: &mut Capture) -> Result<(), String> {
    let key = config.url.as_str();
    let connection = match connections.get(key, |c| c.status().connected()) {
        Some(connection) => connection,
        None => {
            let connection = Arc::new(connect(config).await?);
            connections.put(key, connection.clone());
            connection
        }
    };
    let failed = |what: &str, e: lapin::Error| {
        if !connection.status().connected() {
            connections.remove(key);
        }
        format!("{what} failed: {}", error_chain(&e))
    };
    let channel = connection.create_channel().await.map_err(|e| failed("opening a channel", e))?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| failed("confirm.select", e))?;
    if let Some(flags) = config.declare {
        let options = QueueDeclareOptions {
            durable: flags.durable,
            auto_delete: flags.auto_delete,
            exclusive: flags.exclusive,
            ..QueueDeclareOptions::default()
        };
        let declaring = format!("declaring queue '{}'", config.queue);
        channel
            .queue_declare(config.queue.clone().into(), options, FieldTable::default())
            .await
            .map_err(|e| failed(&declaring, e))?;
    }
    let publishing = format!("publishing to {}", destination(config));
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let confirm = channel
        .basic_publish(
            config.exchange.clone().into(),
            config.queue.clone().into(),
            options,
            &config.body,
            properties(config),
        )
        .await
        .map_err(|e| failed(&publishing, e))?;
    match confirm.await.map_err(|e| failed(&publishing, e))? {
        Confirmation::Ack(None) => {}
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            return Err(format!(
                "{publishing}: the broker returned the message ({} {}): no queue is bound to that route",
                returned.reply_code, returned.reply_text
            ));
        }
        Confirmation::Nack(None) => return Err(format!("{publishing}: the broker refused the message (nack)")),
        Confirmation::NotRequested => return Err(format!("{publishing}: the broker did not confirm the message")),
    }
    let line = format!("published {} bytes to {}; the broker confirmed it\n", config.body.len(), destination(config));
    capture.write(line.as_bytes());
    // The channel closes when dropped; closing it here would only add a round trip to the run.
    Ok(())
}

async fn connect(config: &RabbitConfig) -> Result<Connection, String> {
    Connection::connect(config.url.as_str(), ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect to RabbitMQ at {}: {}", display_url(&config.url), error_chain(&e)))
}

fn destination(config: &RabbitConfig) -> String {
    match config.exchange.as_str() {
        "" => format!("queue '{}' (default exchange)", config.queue),
        exchange => format!("exchange '{exchange}' with routing key '{}'", config.queue),
    }
}

fn properties(config: &RabbitConfig) -> BasicProperties {
    let mut properties = BasicProperties::default();
    if !config.content_type.is_empty() {
        properties = properties.with_content_type(config.content_type.clone().into());
    }
    if let Some(mode) = config.delivery_mode {
        properties = properties.with_delivery_mode(mode);
    }
    if !config.message_id.is_empty() {
        properties = properties.with_message_id(config.message_id.clone().into());
    }
    properties
}
