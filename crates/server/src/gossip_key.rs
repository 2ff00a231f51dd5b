//! Gossip encryption (`--encrypt KEY`, Dkron's flag; `kairos keygen` makes a key): every gossip datagram is sealed
//! with AES-GCM under the cluster's key, so a node without the key can neither read the membership nor join it.
//!
//! chitchat serializes its messages privately, so [`EncryptedTransport`] gets at the bytes through chitchat's own
//! UDP socket on loopback: a message to send goes from chitchat's socket to a relay socket (both on 127.0.0.1 and
//! checked by address), is sealed and leaves by the public socket; a datagram that arrives is opened and handed to
//! chitchat's socket through the relay, and the peer's address is put back on what chitchat reads. A datagram that
//! does not open (a node with another key or none) is dropped and logged, once a minute per sender.
//!
//! Wire format: `[1 (version)][12-byte random nonce][ciphertext and 16-byte tag]`.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use base64::Engine;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as ChitchatSocket};
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use tracing::warn;

const VERSION: u8 = 1;
/// The header that carries a node's credential on node-to-node requests (see [`GossipKey::node_token`]).
pub const NODE_AUTH_HEADER: &str = "x-kairos-node-auth";
const NODE_AUTH_LABEL: &[u8] = b"kairos node-to-node v1";
const AAD: &[u8] = b"kairos-gossip";
/// Largest UDP payload.
const DATAGRAM_MAX: usize = 65_507;
/// How long a datagram may take through the loopback relay before it is given up.
const RELAY_WAIT: Duration = Duration::from_millis(200);
/// One warning per sender whose datagrams do not open, per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A new random key for `--encrypt`, base64 (32 bytes: AES-256-GCM).
pub fn keygen() -> anyhow::Result<String> {
    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).map_err(|_| anyhow::anyhow!("no random numbers from the system"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

/// The cluster's gossip key (and a digest of it, to tell keys apart without keeping them twice), and the node
/// credential derived from it (see [`GossipKey::node_token`]).
#[derive(Clone)]
pub struct GossipKey(Arc<LessSafeKey>, [u8; 32], Arc<ring::hmac::Key>);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A short digest tells keys apart in logs and reload reports without revealing them.
        write!(f, "GossipKey(sha256:{:02x}{:02x}{:02x}{:02x}…)", self.1[0], self.1[1], self.1[2], self.1[3])
    }
}

impl PartialEq for GossipKey {
    fn eq(&self, other: &Self) -> bool {
        self.1 == other.1
    }
}

impl GossipKey {
    /// A key from `--encrypt`: base64 of 16 bytes (AES-128-GCM) or 32 bytes (AES-256-GCM).
    pub fn parse(text: &str) -> anyhow::Result<GossipKey> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .context("--encrypt: not base64 (make a key with `kairos keygen`)")?;
        let algorithm = match bytes.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            n => bail!("--encrypt: the key is {n} bytes; it must be 16 or 32 (make one with `kairos keygen`)"),
        };
        let key = UnboundKey::new(algorithm, &bytes).map_err(|_| anyhow::anyhow!("--encrypt: unusable key"))?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
        Ok(GossipKey(Arc::new(LessSafeKey::new(key)), digest, Arc::new(hmac)))
    }

    /// The node credential every node-to-node request carries in [`NODE_AUTH_HEADER`] when the cluster has a key:
    /// an HMAC of a fixed label under the key, so the key itself never travels. Without TLS it can be read on the
    /// wire, like any bearer secret: use TLS on untrusted networks.
    pub fn node_token(&self) -> String {
        let tag = ring::hmac::sign(&self.2, NODE_AUTH_LABEL);
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is this cluster's node credential (checked in constant time).
    pub fn verify_node_token(&self, token: &str) -> bool {
        let Some(bytes) = (0..token.len())
            .step_by(2)
            .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        ring::hmac::verify(&self.2, NODE_AUTH_LABEL, &bytes).is_ok()
    }

    fn seal(&self, plain: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| anyhow::anyhow!("no random numbers from the system"))?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plain.len() + 16);
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut body)
            .map_err(|_| anyhow::anyhow!("sealing a gossip message failed"))?;
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    /// The plaintext of a sealed datagram; `None` if it does not open under this key.
    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != VERSION {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).ok()?;
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self.0.open_in_place(nonce, Aad::from(AAD), &mut body).ok()?;
        Some(plain.to_vec())
    }
}

/// chitchat's UDP transport with every datagram sealed under the key.
pub struct EncryptedTransport {
    pub key: GossipKey,
}

#[async_trait]
impl Transport for EncryptedTransport {
    async fn open(&self, bind: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = tokio::net::UdpSocket::bind(bind)
            .await
            .with_context(|| format!("failed to bind to {bind}/UDP for gossip"))?;
        let loopback: IpAddr = if bind.is_ipv6() { [0u16, 0, 0, 0, 0, 0, 0, 1].into() } else { [127, 0, 0, 1].into() };
        let inner = ChitchatSocket::open(SocketAddr::new(loopback, 0)).await?;
        let relay = tokio::net::UdpSocket::bind(SocketAddr::new(loopback, 0)).await.context("gossip relay socket")?;
        let inner_addr = inner.local_addr()?;
        let relay_addr = relay.local_addr()?;
        Ok(Box::new(EncryptedSocket {
            key: self.key.clone(),
            public,
            inner,
            inner_addr,
            relay,
            relay_addr,
            buf: vec![0u8; DATAGRAM_MAX],
            warned: HashMap::new(),
            destinations: VecDeque::new(),
            senders: VecDeque::new(),
        }))
    }
}

struct EncryptedSocket {
    key: GossipKey,
    public: tokio::net::UdpSocket,
    inner: ChitchatSocket,
    inner_addr: SocketAddr,
    relay: tokio::net::UdpSocket,
    relay_addr: SocketAddr,
    buf: Vec<u8>,
    warned: HashMap<SocketAddr, Instant>,
    /// Where the messages on their way through the relay go, oldest first. chitchat may drop a `send` or `recv`
    /// future between its two steps; a message left in a loopback socket then keeps its own address instead of
    /// taking the next one's.
    destinations: VecDeque<SocketAddr>,
    /// Who sent the messages handed to chitchat's socket and not read back yet, oldest first.
    senders: VecDeque<SocketAddr>,
}

#[async_trait]
impl Socket for EncryptedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public.local_addr().context("failed to get UDP socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        // chitchat serializes it onto the loopback relay; what arrives there is sealed and sent for real.
        self.destinations.push_back(to);
        let SendOutcome { num_bytes_sent } = self.inner.send(self.relay_addr, envelope).await?;
        let (plain, to) = loop {
            let received = tokio::time::timeout(RELAY_WAIT, self.relay.recv_from(&mut self.buf)).await;
            let Ok(received) = received else {
                self.destinations.pop_front();
                warn!("gossip: a message to {to} was lost on the loopback relay; it goes with the next round");
                return Ok(SendOutcome { num_bytes_sent });
            };
            let (len, from) = received.context("gossip relay")?;
            if from == self.inner_addr {
                let Some(to) = self.destinations.pop_front() else { continue };
                break (self.buf[..len].to_vec(), to);
            }
        };
        let sealed = self.key.seal(&plain)?;
        if sealed.len() > DATAGRAM_MAX {
            warn!("gossip: a sealed message to {to} is {} bytes, over the UDP maximum; not sent", sealed.len());
            return Ok(SendOutcome { num_bytes_sent });
        }
        if let Err(err) = self.public.send_to(&sealed, to).await {
            // As chitchat's own socket does: a peer that went away is not a broken transport.
            warn!("gossip: cannot send to {to}: {err}");
        }
        Ok(SendOutcome { num_bytes_sent: sealed.len() })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from) = match self.public.recv_from(&mut self.buf).await {
                Ok(received) => received,
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(err) => return Err(err).context("fatal UDP recv error"),
            };
            let Some(plain) = self.key.open(&self.buf[..len]) else {
                let now = Instant::now();
                if self.warned.get(&from).is_none_or(|at| now.duration_since(*at) > WARN_EVERY) {
                    warn!(
                        "gossip: a message from {from} does not open with this node's --encrypt key (a node with \
                         another key, or none); ignored"
                    );
                    self.warned.insert(from, now);
                }
                continue;
            };
            // Hand the plaintext to chitchat's socket to decode, and put the sender back.
            self.senders.push_back(from);
            self.relay.send_to(&plain, self.inner_addr).await.context("gossip relay")?;
            match tokio::time::timeout(RELAY_WAIT, self.inner.recv()).await {
                Ok(Ok(outcome)) if outcome.from_addr == self.relay_addr => {
                    let Some(from) = self.senders.pop_front() else { continue };
                    return Ok(RecvOutcome { from_addr: from, envelope: outcome.envelope, num_bytes_received: len });
                }
                Ok(Ok(_)) => continue, // something else wrote to the loopback socket: not ours
                Ok(Err(err)) => return Err(err),
                Err(_) => {
                    self.senders.pop_front(); // lost on loopback: gossip repeats itself
                    continue;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_message_opens_with_the_same_key_only() {
        let key = GossipKey::parse(&keygen().unwrap()).unwrap();
        let other = GossipKey::parse(&keygen().unwrap()).unwrap();
        let sealed = key.seal(b"hello").unwrap();
        assert_eq!(key.open(&sealed).as_deref(), Some(&b"hello"[..]));
        assert_eq!(other.open(&sealed), None);
        assert_eq!(key.open(b"hello, in the clear"), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(&tampered), None);
    }

    #[test]
    fn the_node_token_proves_the_key_and_only_it() {
        let key = GossipKey::parse(&keygen().unwrap()).unwrap();
        let other = GossipKey::parse(&keygen().unwrap()).unwrap();
        assert!(key.verify_node_token(&key.node_token()));
        assert!(!key.verify_node_token(&other.node_token()));
        assert!(!key.verify_node_token("not hex"));
        assert!(!key.verify_node_token(""));
    }

    #[test]
    fn keys_must_be_base64_of_16_or_32_bytes() {
        assert!(GossipKey::parse("not base64!").unwrap_err().to_string().starts_with("--encrypt: not base64"));
        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 8]);
        assert!(GossipKey::parse(&short).unwrap_err().to_string().contains("8 bytes"));
        let sixteen = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        assert!(GossipKey::parse(&sixteen).is_ok(), "serf's 16-byte keys work");
    }
}
