//! StatsD and DogStatsD (`--statsd-addr`, `--dog-statsd-addr`, `--dog-statsd-tags`, Dkron's flags): every
//! `--statsd-flush-interval` (10 s, as go-metrics flushes in Dkron) the node pushes the metrics of its Prometheus
//! registry ([`crate::metrics`]) over UDP, whether or not `--enable-prometheus` serves them too.
//!
//! The registry is read through its own text encoder ([`exposition`]), so StatsD sends exactly what `/metrics`
//! shows, gauges read from the node at that moment like a scrape; [`lines`] says how each kind is sent and named.
//! UDP never waits for the receiver: an address that does not answer or does not resolve costs a failed send per
//! flush, counted in `kairos_statsd_send_errors` and logged at most once a minute; nothing else waits on it.

pub mod exposition;
pub mod lines;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use futures::future::BoxFuture;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use lines::Flavor;

/// The default `--statsd-flush-interval`.
pub const FLUSH_INTERVAL_DEFAULT: &str = "10s";
/// How long a flush may wait for the address to resolve (DNS) before it is skipped.
const RESOLVE_WITHIN: Duration = Duration::from_secs(2);
/// At most one warning about failed sends per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where metrics are pushed; no sink, nothing is pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statsd {
    pub sinks: Vec<Sink>,
    pub flush_interval: Duration,
}

/// One receiver: `host:port` and how it reads lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    pub addr: String,
    pub flavor: Flavor,
}

impl Statsd {
    /// From the flags: each address `host:port` (resolved at every flush, not now), tags `key:value` or `key`.
    pub fn from_flags(
        statsd_addr: Option<String>,
        dog_statsd_addr: Option<String>,
        dog_statsd_tags: Vec<String>,
        flush_interval: Duration,
    ) -> anyhow::Result<Statsd> {
        if flush_interval.is_zero() {
            bail!("--statsd-flush-interval: must be more than zero");
        }
        let mut sinks = Vec::new();
        if let Some(addr) = statsd_addr.filter(|a| !a.is_empty()) {
            sinks.push(Sink { addr: checked_addr("--statsd-addr", addr)?, flavor: Flavor::Plain });
        }
        let tags = checked_tags(dog_statsd_tags)?;
        if let Some(addr) = dog_statsd_addr.filter(|a| !a.is_empty()) {
            sinks.push(Sink { addr: checked_addr("--dog-statsd-addr", addr)?, flavor: Flavor::Dog { tags } });
        }
        Ok(Statsd { sinks, flush_interval })
    }
}

/// `host:port` with a port; the host is looked up when sending.
fn checked_addr(flag: &str, addr: String) -> anyhow::Result<String> {
    let addr = addr.trim().to_string();
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(addr),
        _ => bail!("{flag}: '{addr}' is not an address like 127.0.0.1:8125 or statsd.example.com:8125"),
    }
}

/// DogStatsD tags: `key:value` (or a bare `key`), without the characters its line format reserves.
fn checked_tags(tags: Vec<String>) -> anyhow::Result<Vec<String>> {
    tags.into_iter()
        .map(|tag| tag.trim().to_string())
        .filter(|tag| !tag.is_empty())
        .map(|tag| {
            if tag.starts_with(':') || tag.contains(['|', '#', ',']) || tag.contains(char::is_whitespace) {
                bail!("--dog-statsd-tags: '{tag}' is not a tag like env:prod (no spaces, '|', '#' or ',')");
            }
            Ok(tag)
        })
        .collect()
}

/// Reads the registry's text with its gauges up to date (a server reads Raft, gossip and the state first).
pub type Scrape = Box<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>;

/// Push every flush interval until the node stops; does nothing without sinks.
pub async fn push_loop(statsd: Statsd, node: String, scrape: Scrape, stopping: CancellationToken) {
    if statsd.sinks.is_empty() {
        return;
    }
    let mut deltas = lines::Deltas::default();
    let mut sockets = Sockets::default();
    let mut warned: Option<tokio::time::Instant> = None;
    let mut ticks = tokio::time::interval(statsd.flush_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is at once: the first flush is one interval after the start
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let points = deltas.points(&exposition::parse(&scrape().await));
        for sink in &statsd.sinks {
            let lines: Vec<String> = points.iter().flat_map(|p| lines::lines(p, &sink.flavor, &node)).collect();
            let (packets, too_long) = lines::packets(&lines, lines::PACKET_BYTES_MAX);
            let failures = sockets.send(&sink.addr, &packets).await;
            let failed = failures.count + too_long;
            if failed > 0 {
                crate::metrics::metrics().statsd_send_errors.inc_by(failed as u64);
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    let why = failures.last.unwrap_or_else(|| format!("{too_long} line(s) longer than a packet"));
                    warn!("statsd: {failed} packet(s) to {} not sent: {why} (logged at most once a minute)", sink.addr);
                    warned = Some(tokio::time::Instant::now());
                }
            }
        }
    }
}

/// What a flush to one sink could not send.
struct Failures {
    count: usize,
    last: Option<String>,
}

/// One unconnected UDP socket per address family, bound on first use and kept.
#[derive(Default)]
struct Sockets {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl Sockets {
    async fn send(&mut self, addr: &str, packets: &[String]) -> Failures {
        let all_failed = |why: String| Failures { count: packets.len(), last: Some(why) };
        let target = match tokio::time::timeout(RESOLVE_WITHIN, tokio::net::lookup_host(addr)).await {
            Ok(Ok(mut addrs)) => match addrs.next() {
                Some(target) => target,
                None => return all_failed(format!("'{addr}' resolves to no address")),
            },
            Ok(Err(err)) => return all_failed(format!("cannot resolve '{addr}': {err}")),
            Err(_) => return all_failed(format!("'{addr}' did not resolve within {RESOLVE_WITHIN:?}")),
        };
        let socket = match self.socket(target).await {
            Ok(socket) => socket,
            Err(err) => return all_failed(format!("cannot open a UDP socket: {err}")),
        };
        let mut failures = Failures { count: 0, last: None };
        for packet in packets {
            if let Err(err) = socket.send_to(packet.as_bytes(), target).await {
                failures.count += 1;
                failures.last = Some(err.to_string());
            }
        }
        failures
    }

    async fn socket(&mut self, target: SocketAddr) -> std::io::Result<&UdpSocket> {
        let (slot, any) = if target.is_ipv6() { (&mut self.v6, "[::]:0") } else { (&mut self.v4, "0.0.0.0:0") };
        if slot.is_none() {
            *slot = Some(UdpSocket::bind(any).await?);
        }
        Ok(slot.as_ref().expect("bound just above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_host_and_a_port_and_tags_no_reserved_characters() {
        let ok = Statsd::from_flags(
            Some("127.0.0.1:8125".into()),
            Some("datadog.local:8125".into()),
            vec!["env:prod".into(), "canary".into()],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(ok.sinks.len(), 2);
        assert_eq!(ok.sinks[1].flavor, Flavor::Dog { tags: vec!["env:prod".into(), "canary".into()] });
        let none = Statsd::from_flags(None, None, vec!["env:prod".into()], Duration::from_secs(10)).unwrap();
        assert!(none.sinks.is_empty());
        let ten = Duration::from_secs(10);
        for (statsd, dog, tags, flag) in [
            (Some("nonsense"), None, vec![], "--statsd-addr"),
            (Some(":8125"), None, vec![], "--statsd-addr"),
            (Some("host:port"), None, vec![], "--statsd-addr"),
            (None, Some("host:0"), vec![], "--dog-statsd-addr"),
            (None, Some("host:1"), vec!["env prod"], "--dog-statsd-tags"),
            (None, Some("host:1"), vec!["a|b"], "--dog-statsd-tags"),
        ] {
            let tags = tags.into_iter().map(String::from).collect();
            let err = Statsd::from_flags(statsd.map(String::from), dog.map(String::from), tags, ten).unwrap_err();
            assert!(err.to_string().starts_with(flag), "{err}");
        }
        let zero = Statsd::from_flags(None, None, vec![], Duration::ZERO).unwrap_err();
        assert!(zero.to_string().starts_with("--statsd-flush-interval"), "{zero}");
    }

    #[tokio::test]
    async fn an_unresolvable_address_is_a_counted_failure_not_a_wait() {
        let mut sockets = Sockets::default();
        let started = std::time::Instant::now();
        let failures = sockets.send("no-such-host.invalid:8125", &["a:1|c".into(), "b:1|c".into()]).await;
        assert_eq!(failures.count, 2);
        assert!(failures.last.is_some());
        assert!(started.elapsed() <= RESOLVE_WITHIN + Duration::from_millis(500));
    }
}
