//! Serving a router on a TCP listener with bounds: at most so many connections at once, and a deadline for each
//! request's header (which also closes keep-alive connections left idle that long).
//!
//! `axum::serve` has neither, so 100 clients sending half a header, or thousands of idle connections, could hold a
//! node's sockets and memory forever. Both listeners (the public API and the node-to-node RPC) go through
//! [`serve`] with their own [`Limits`]. When every connection slot is taken, new connections wait in the kernel's
//! accept queue (as mini-redis does) instead of being accepted and starved.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// How much one listener lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Which listener, for the log.
    pub name: &'static str,
    /// Connections served at once; more wait to be accepted.
    pub connections_max: usize,
    /// From the moment a connection is ready for a request until its whole header has arrived. An idle
    /// keep-alive connection is closed after this long too (hyper starts the same clock while it waits).
    pub header_read_timeout: Duration,
}

/// The public API and UI: browsers and scripts. 30 s is hyper's own default header deadline and longer than any
/// sane client needs to send a header; a browser reconnects transparently when an idle connection is closed.
pub const API_LIMITS: Limits =
    Limits { name: "api", connections_max: 1024, header_read_timeout: Duration::from_secs(30) };

/// Node-to-node RPC: every server and agent of the cluster keeps a few pooled connections to each node it talks to
/// (50 agents and 5 servers use well under 1024). The header deadline must exceed the RPC client's pool idle
/// timeout ([`RPC_POOL_IDLE`]), so a client never reuses a connection the server is just closing.
pub const RPC_LIMITS: Limits =
    Limits { name: "rpc", connections_max: 1024, header_read_timeout: Duration::from_secs(60) };

/// Raft between servers: a few pooled connections from each other server (Raft's own client), never the agents'
/// traffic, so however many connections jobs take on the RPC listener, a heartbeat is accepted at once.
pub const RAFT_LIMITS: Limits =
    Limits { name: "raft", connections_max: 256, header_read_timeout: Duration::from_secs(60) };

/// How long the RPC client keeps an idle pooled connection: shorter than [`RPC_LIMITS`]'s header deadline.
pub const RPC_POOL_IDLE: Duration = Duration::from_secs(45);

/// Serve `router` on `listener` until the listener fails; each connection runs in its own task.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    assert!(limits.connections_max > 0, "a listener that admits no connection serves nothing");
    assert!(limits.header_read_timeout > Duration::ZERO, "a zero header deadline closes every connection");
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let mut warned_full = false;
    let mut accept_failing = false;
    loop {
        // Take a slot first, so a full listener stops accepting instead of accepting and dropping.
        if slots.available_permits() == 0 && !warned_full {
            warn!(
                listener = limits.name,
                limit = limits.connections_max,
                "connection limit reached; new connections wait to be accepted"
            );
            warned_full = true;
        }
        let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        if slots.available_permits() > limits.connections_max / 2 {
            warned_full = false;
        }
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) if is_per_connection(&err) => {
                debug!("accept: {err}");
                continue;
            }
            Err(err) => {
                // Out of file descriptors and the like: wait a little instead of spinning, then try again; say
                // so once, not ten times a second. (Linux fails accept with EMFILE even when no connection is
                // waiting, so this also shows while the node is merely out of descriptors.)
                if !accept_failing {
                    warn!(listener = limits.name, "accept failed: {err}; retrying every 100 ms until it works again");
                    accept_failing = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if accept_failing {
            warn!(listener = limits.name, "accepting connections again");
            accept_failing = false;
        }
        let _ = stream.set_nodelay(true);
        // Every request knows its client's address (`ConnectInfo`), for the audit log.
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let builder = builder.clone();
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let served = match tls {
                // The handshake is bounded like a request's header: a client that stalls in it holds a slot no
                // longer. A plain client (or one without the certificate mutual TLS asks for) fails here.
                Some(tls) => match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => builder.serve_connection(TokioIo::new(stream), service).with_upgrades().await,
                    Ok(Err(err)) => {
                        debug!(%peer, "TLS handshake failed: {err}");
                        Ok(())
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        Ok(())
                    }
                },
                None => builder.serve_connection(TokioIo::new(stream), service).with_upgrades().await,
            };
            if let Err(err) = served {
                debug!(%peer, "connection ended: {err}");
            }
            drop(slot);
        });
    }
}

/// Errors of one incoming connection (reset before accept), which say nothing about the listener.
fn is_per_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(err.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(listener, router, limits, None));
        addr
    }

    /// Read until the server closes the connection; the bytes it sent.
    async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
            .await
            .expect("the server closes the connection")
            .expect("reading");
        received
    }

    #[tokio::test]
    async fn a_half_sent_header_is_cut_off_at_the_deadline() {
        let addr =
            start(Limits { name: "test", connections_max: 8, header_read_timeout: Duration::from_millis(300) }).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        let answer = read_to_close(&mut stream).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_deadline() {
        let addr =
            start(Limits { name: "test", connections_max: 8, header_read_timeout: Duration::from_millis(300) }).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answer = read_to_close(&mut stream).await;
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "the request itself is served");
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_until_a_slot_frees() {
        let addr =
            start(Limits { name: "test", connections_max: 1, header_read_timeout: Duration::from_secs(30) }).await;
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        // The second connection completes its TCP handshake (the kernel's backlog) but is not served while the
        // first one holds the only slot.
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
        assert!(waited.is_err(), "served past the connection limit");
        drop(first);
        let answer = read_to_close(&mut second).await;
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "served once the slot freed");
    }
}
