//! The kafka executor: produces one record (`key`, `message`) to `topic` and waits until every in-sync replica has
//! it (`acks=all`, which rskafka always asks for); the output names the topic, partition and offset it got.
//!
//! A [`Session`] (one rskafka client plus a client per partition written to, each holding a connection to that
//! partition's leader) is kept per brokers, TLS and SASL settings (`connections::Shared`), and dropped after an
//! error that says a connection is broken. The partition follows Kafka's Java client for a keyed record
//! (murmur2 of the key), so records with the same key land where other producers put them; keyless records of a
//! session go to one partition of the topic picked at random, which spreads a cluster's runs over the partitions
//! without one leader connection per partition per node.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::config::{KafkaConfig, KafkaSasl, KafkaTls, SaslMechanism};
use crate::connections::Shared;
use crate::http::error_chain;
use crate::remote::{self, race};
use crate::spec::Outcome;

pub(crate) type KafkaSessions = Shared<Arc<Session>>;

/// How long rskafka keeps retrying a failing request (a refused connection, a leader being elected) before the
/// run fails with the last error; the job's timeout still bounds the whole run.
const RETRY_FOR: Duration = Duration::from_secs(2);

/// How long a topic's partition count is trusted: Kafka's clients refresh metadata this often
/// (`metadata.max.age.ms`), so partitions added to a topic are used as soon as they would be by them.
const TOPIC_METADATA_MAX_AGE: Duration = Duration::from_secs(300);

/// Partition clients (each a connection to a leader) one session keeps; past it, the session starts over.
const PARTITION_CLIENTS_MAX: usize = 64;

pub(crate) async fn run(
    sessions: &KafkaSessions,
    config: KafkaConfig,
    mut capture: Capture,
    cancel: &CancellationToken,
) -> Outcome {
    let ended = race(exchange(sessions, &config, &mut capture), config.timeout, cancel).await;
    remote::finish(capture, ended, config.timeout, &config.secrets)
}

async fn exchange(sessions: &KafkaSessions, config: &KafkaConfig, capture: &mut Capture) -> Result<(), String> {
    let key = cache_key(config);
    let session = match sessions.get(&key, |_| true) {
        Some(session) => session,
        None => {
            let session = Arc::new(Session::connect(config).await?);
            sessions.put(&key, Arc::clone(&session));
            session
        }
    };
    let (partition, offset) = session.produce(config).await.map_err(|failure| {
        if failure.broken {
            sessions.remove(&key);
        }
        failure.message
    })?;
    let bytes = config.message.len();
    let line = format!("produced {bytes} bytes to topic '{}', partition {partition}, offset {offset}\n", config.topic);
    capture.write(line.as_bytes());
    Ok(())
}

/// Brokers, TLS and SASL settings: runs that differ in any must not share connections.
fn cache_key(config: &KafkaConfig) -> String {
    format!("{}\n{:?}\n{:?}", config.brokers.join(","), config.tls, config.sasl)
}

/// Why a produce failed, and whether the session's connections are suspect.
struct Failure {
    message: String,
    broken: bool,
}

/// A client of one cluster and the partition clients its runs wrote to.
pub(crate) struct Session {
    client: Client,
    topics: Mutex<HashMap<String, Topic>>,
    /// Picks the partition of keyless records, once per topic.
    random: RandomState,
}

struct Topic {
    partitions: i32,
    /// `None`: not listed yet (a partition client made before the count was known).
    listed_at: Option<Instant>,
    clients: HashMap<i32, Arc<PartitionClient>>,
}

impl Session {
    async fn connect(config: &KafkaConfig) -> Result<Session, String> {
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 3.0,
            deadline: Some(RETRY_FOR),
        };
        let mut builder = ClientBuilder::new(config.brokers.clone()).client_id("kairos").backoff_config(backoff);
        if let Some(tls) = &config.tls {
            builder = builder.tls_config(Arc::new(tls_config(tls)?));
        }
        if let Some(sasl) = &config.sasl {
            builder = builder.sasl_config(sasl_config(sasl));
        }
        let client = builder.build().await.map_err(|e| {
            let what = if is_sasl(&e) { "cannot authenticate to" } else { "cannot connect to" };
            format!("{what} Kafka at {}: {}", config.brokers.join(", "), error_chain(&e))
        })?;
        Ok(Session { client, topics: Mutex::new(HashMap::new()), random: RandomState::new() })
    }

    /// Produces the run's record; answers its partition and offset.
    async fn produce(&self, config: &KafkaConfig) -> Result<(i32, i64), Failure> {
        let topic = config.topic.as_str();
        let partitions = self.partition_count(topic).await?;
        let partition = match &config.key {
            Some(key) => murmur2_partition(key.as_bytes(), partitions),
            None => (self.random.hash_one(topic) % partitions as u64) as i32,
        };
        let client = self.partition_client(topic, partition).await?;
        let record = Record {
            key: config.key.as_ref().map(|k| k.clone().into_bytes()),
            value: Some(config.message.clone().into_bytes()),
            headers: Default::default(),
            timestamp: now(),
        };
        let offsets = client
            .produce(vec![record], Compression::NoCompression)
            .await
            .map_err(|e| failure(e, &format!("produce to topic '{topic}', partition {partition} failed")))?;
        let offset = offsets.first().copied().ok_or_else(|| Failure {
            message: format!("produce to topic '{topic}' failed: the broker answered no offset"),
            broken: false,
        })?;
        Ok((partition, offset))
    }

    async fn partition_count(&self, topic: &str) -> Result<i32, Failure> {
        let fresh = |t: &&Topic| t.listed_at.is_some_and(|at| at.elapsed() < TOPIC_METADATA_MAX_AGE);
        if let Some(known) = self.lock().get(topic).filter(fresh) {
            return Ok(known.partitions);
        }
        let mut count = self.listed_partitions(topic).await?;
        if count.is_none() {
            // Not there yet. Asking for the leader of its partition 0 lets brokers that create topics on demand
            // (`auto.create.topics.enable`) create it; the others answer that it does not exist.
            let client = self.new_partition_client(topic, 0).await?;
            self.keep(topic, 0, client);
            count = self.listed_partitions(topic).await?;
        }
        let count = count.ok_or_else(|| unknown_topic(topic))?;
        let mut topics = self.lock();
        let entry = topics.entry(topic.to_owned()).or_insert_with(|| Topic {
            partitions: count,
            listed_at: None,
            clients: HashMap::new(),
        });
        entry.partitions = count;
        entry.listed_at = Some(Instant::now());
        // Partitions only grow, but a topic deleted and created again may have fewer.
        entry.clients.retain(|partition, _| *partition < count);
        Ok(count)
    }

    /// The number of partitions of `topic` as the cluster lists it now; `None` when it does not exist.
    async fn listed_partitions(&self, topic: &str) -> Result<Option<i32>, Failure> {
        let topics = self.client.list_topics().await.map_err(|e| failure(e, "cannot list the cluster's topics"))?;
        let found = topics.into_iter().find(|t| t.name == topic);
        Ok(found.map(|t| t.partitions.len() as i32).filter(|n| *n > 0))
    }

    async fn partition_client(&self, topic: &str, partition: i32) -> Result<Arc<PartitionClient>, Failure> {
        if let Some(client) = self.lock().get(topic).and_then(|t| t.clients.get(&partition)) {
            return Ok(Arc::clone(client));
        }
        let client = self.new_partition_client(topic, partition).await?;
        self.keep(topic, partition, Arc::clone(&client));
        Ok(client)
    }

    async fn new_partition_client(&self, topic: &str, partition: i32) -> Result<Arc<PartitionClient>, Failure> {
        match self.client.partition_client(topic, partition, UnknownTopicHandling::Error).await {
            Ok(client) => Ok(Arc::new(client)),
            Err(e) => Err(failure(e, &format!("cannot reach the leader of topic '{topic}', partition {partition}"))),
        }
    }

    fn keep(&self, topic: &str, partition: i32, client: Arc<PartitionClient>) {
        let mut topics = self.lock();
        if topics.values().map(|t| t.clients.len()).sum::<usize>() >= PARTITION_CLIENTS_MAX {
            topics.clear();
        }
        let entry = topics.entry(topic.to_owned()).or_insert_with(|| Topic {
            partitions: partition + 1,
            listed_at: None,
            clients: HashMap::new(),
        });
        entry.clients.insert(partition, client);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        // The map holds no invariant a panicking holder could break.
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A failure described for `error`: `doing` says what failed; a missing topic and a refusal by the broker say so
/// plainly, and a connection error marks the session broken.
fn failure(error: KafkaError, doing: &str) -> Failure {
    // rskafka wraps the last error of its retries; the cause is what to describe.
    let error = match error {
        KafkaError::RetryFailed(retried) => match retried {
            rskafka::BackoffError::DeadlineExceded { source, .. } => match source.downcast::<KafkaError>() {
                Ok(inner) => *inner,
                Err(other) => {
                    return Failure { message: format!("{doing}: {}", error_chain(&*other)), broken: true };
                }
            },
        },
        other => other,
    };
    match &error {
        KafkaError::ServerError { protocol_error: ProtocolError::UnknownTopicOrPartition, request, .. } => {
            let topic = match request {
                rskafka::client::error::RequestContext::Topic(topic)
                | rskafka::client::error::RequestContext::Partition(topic, _) => topic.as_str(),
                _ => "",
            };
            unknown_topic(topic)
        }
        KafkaError::ServerError { protocol_error, error_message, .. } => {
            let detail = error_message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
            Failure { message: format!("{doing}: the broker answered {protocol_error}{detail}"), broken: false }
        }
        KafkaError::Connection(_) | KafkaError::Request(_) => {
            let what = if is_sasl(&error) { format!("{doing}: authentication failed") } else { doing.to_owned() };
            Failure { message: format!("{what}: {}", error_chain(&error)), broken: true }
        }
        _ => Failure { message: format!("{doing}: {}", error_chain(&error)), broken: false },
    }
}

fn unknown_topic(topic: &str) -> Failure {
    Failure {
        message: format!("unknown topic '{topic}': it does not exist and the brokers do not create topics on demand"),
        broken: false,
    }
}

/// True when a SASL exchange failed somewhere in `error`. A failed connection attempt reaches us inside rskafka's
/// `MultiError` (one error per broker tried), which exposes no sources, hence the look at the text as well.
fn is_sasl(error: &KafkaError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<rskafka::SaslError>() || cause.to_string().contains("Sasl") {
            return true;
        }
        source = cause.source();
    }
    false
}

fn sasl_config(sasl: &KafkaSasl) -> SaslConfig {
    let credentials = Credentials::new(sasl.username.clone(), sasl.password.clone());
    match sasl.mechanism {
        SaslMechanism::Plain => SaslConfig::Plain(credentials),
        SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
        SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
    }
}

/// The TLS client: the server checked against `tlsRootCAsFile` (read when the session is made, i.e. once per
/// cache life), else the web's root certificates; with `tlsInsecureSkipVerify`, not checked at all.
fn tls_config(tls: &KafkaTls) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    if tls.insecure_skip_verify {
        let verifier = Arc::new(NoServerCheck(provider));
        return Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    match &tls.root_cas_file {
        Some(path) => {
            let shown = path.display();
            let pem = std::fs::read(path).map_err(|e| format!("cannot read tlsRootCAsFile '{shown}': {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("tlsRootCAsFile '{shown}': {e}"))?;
                roots.add(cert).map_err(|e| format!("tlsRootCAsFile '{shown}': {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("no certificates in tlsRootCAsFile '{shown}'"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `tlsInsecureSkipVerify`: any certificate for any name is accepted (the handshake's signatures are still
/// checked, so the connection is encrypted to whoever holds the key, just not authenticated).
#[derive(Debug)]
struct NoServerCheck(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoServerCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn now() -> chrono::DateTime<chrono::Utc> {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

/// The partition Kafka's Java client picks for a keyed record: murmur2 of the key, made positive, modulo the
/// partition count.
fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Kafka's `Utils.murmur2` (32-bit MurmurHash2, seed 0x9747b28c), bit for bit.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, byte) in rest.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_own_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
        }
        assert_eq!(murmur2_partition(b"21", 1), 0);
        assert!((0..7).contains(&murmur2_partition(b"foobar", 7)));
    }
}
