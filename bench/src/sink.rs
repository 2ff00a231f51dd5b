//! The local target of the HTTP executor: answers every request with 200 "ok" and counts them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::routing::any;

/// Pending connections the kernel may queue (capped by net.core.somaxconn).
const ACCEPT_QUEUE: u32 = 65_535;

pub struct Sink {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    pub async fn start() -> anyhow::Result<Sink> {
        Sink::start_slow(Duration::ZERO).await
    }

    /// A sink that answers each request only after `delay` (a slow webhook receiver).
    pub async fn start_slow(delay: Duration) -> anyhow::Result<Sink> {
        let hits = Arc::new(AtomicU64::new(0));
        let app = Router::new().fallback(any(ok)).with_state((hits.clone(), delay));
        // Thousands of runs may connect in the same millisecond: a short accept queue would drop SYNs and add
        // the client's 1 s retransmission to the measured lag, a fault of the harness rather than the server.
        let socket = tokio::net::TcpSocket::new_v4().context("creating the HTTP sink socket")?;
        socket.bind(([127, 0, 0, 1], 0).into()).context("binding the HTTP sink")?;
        let listener = socket.listen(ACCEPT_QUEUE).context("listening on the HTTP sink")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink { addr, hits, task })
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ok(State((hits, delay)): State<(Arc<AtomicU64>, Duration)>) -> &'static str {
    hits.fetch_add(1, Ordering::Relaxed);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    "ok"
}
