//! The nats executor: publishes `message` to `subject`, or with `request` sends it as a request and makes the
//! one reply the output.
//!
//! A plain publish succeeds once the server has the message: NATS core has no acknowledgement, so after the
//! publish the client flushes (a PING answered by a PONG, which the server sends after it has processed
//! everything before it). Clients are kept per server list and credentials (`connections::Shared`).

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Request};
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::config::{NatsConfig, NatsCredentials};
use crate::connections::Shared;
use crate::http::error_chain;
use crate::redact::display_url;
use crate::remote::{self, race};
use crate::spec::Outcome;

pub(crate) type NatsClients = Shared<Client>;

pub(crate) async fn run(
    clients: &NatsClients,
    config: NatsConfig,
    mut capture: Capture,
    cancel: &CancellationToken,
) -> Outcome {
    let ended = race(exchange(clients, &config, &mut capture), config.timeout, cancel).await;
    remote::finish(capture, ended, config.timeout, &config.secrets)
}

async fn exchange(clients: &NatsClients, config: &NatsConfig, capture: &mut Capture) -> Result<(), String> {
    let key = cache_key(config);
    let client = match clients.get(&key, |c| c.connection_state() == State::Connected) {
        Some(client) => client,
        None => {
            let client = connect(config).await?;
            clients.put(&key, client.clone());
            client
        }
    };
    let subject = config.subject.clone();
    let payload = config.message.clone().into_bytes();
    let bytes = payload.len();
    if config.request {
        let mut request = Request::new().payload(payload.into()).timeout(None);
        if let Some(headers) = &config.headers {
            request = request.headers(headers.clone());
        }
        let reply = client
            .send_request(subject, request)
            .await
            .map_err(|e| format!("request to '{}' failed: {}", config.subject, error_chain(&e)))?;
        capture.write(&reply.payload);
        return Ok(());
    }
    let published = match &config.headers {
        Some(headers) => client.publish_with_headers(subject, headers.clone(), payload.into()).await,
        None => client.publish(subject, payload.into()).await,
    };
    published.map_err(|e| format!("publish to '{}' failed: {}", config.subject, error_chain(&e)))?;
    client.flush().await.map_err(|e| {
        clients.remove(&key);
        format!("publish to '{}' not confirmed by the server: {}", config.subject, error_chain(&e))
    })?;
    capture.write(format!("published {bytes} bytes to '{}'\n", config.subject).as_bytes());
    Ok(())
}

async fn connect(config: &NatsConfig) -> Result<Client, String> {
    let mut options = ConnectOptions::new().name("kairos");
    match &config.credentials {
        Some(NatsCredentials::UserPassword(user, password)) => {
            options = options.user_and_password(user.clone(), password.clone());
        }
        Some(NatsCredentials::Token(token)) => options = options.token(token.clone()),
        None => {}
    }
    options.connect(config.addrs.clone()).await.map_err(|e| {
        let servers: Vec<String> = config.servers.iter().map(display_url).collect();
        format!("cannot connect to NATS at {}: {}", servers.join(", "), error_chain(&e))
    })
}

/// Servers and credentials: runs that differ in either must not share a client.
fn cache_key(config: &NatsConfig) -> String {
    let servers: Vec<&str> = config.servers.iter().map(|u| u.as_str()).collect();
    format!("{}\n{:?}", servers.join(","), config.credentials)
}
