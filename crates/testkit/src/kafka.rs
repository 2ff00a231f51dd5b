//! What the kafka executor's tests need around a real broker ([`crate::services::tansu`]): a reader of every
//! record of a topic, and a loopback proxy in front of the broker that counts the connections it accepts and can
//! terminate TLS (Tansu 0.6.0's command line cannot switch its own TLS on: `--cert` and `--key` sit in one clap
//! group, so giving both is refused).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::ClientBuilder;
use rskafka::client::partition::UnknownTopicHandling;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One record as a consumer reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: String,
}

/// How long the reader waits for the broker on each fetch.
const FETCH_WAIT_MS: i32 = 100;

/// Every record of `topic` on the broker at `addr` (`host:port`, plain text), partition by partition, in offset
/// order; empty when the topic does not exist. Panics when the broker cannot be read.
pub async fn records(addr: &str, topic: &str) -> Vec<Consumed> {
    crate::install_crypto_provider();
    let backoff = BackoffConfig { deadline: Some(Duration::from_secs(5)), ..Default::default() };
    let client = ClientBuilder::new(vec![addr.to_owned()]).backoff_config(backoff).build().await;
    let client = client.unwrap_or_else(|e| panic!("cannot read kafka at {addr}: {e}"));
    let topics = client.list_topics().await.unwrap_or_else(|e| panic!("cannot list topics at {addr}: {e}"));
    let Some(found) = topics.into_iter().find(|t| t.name == topic) else {
        return Vec::new();
    };
    let mut consumed = Vec::new();
    for partition in found.partitions {
        let reader = client.partition_client(topic, partition, UnknownTopicHandling::Error).await;
        let reader = reader.unwrap_or_else(|e| panic!("cannot read {topic}/{partition}: {e}"));
        let mut offset = 0;
        loop {
            let fetched = reader.fetch_records(offset, 1..1_000_000, FETCH_WAIT_MS).await;
            let (batch, high_watermark) = fetched.unwrap_or_else(|e| panic!("fetch {topic}/{partition}@{offset}: {e}"));
            for record in &batch {
                let text = |bytes: &Option<Vec<u8>>| bytes.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
                consumed.push(Consumed {
                    partition,
                    offset: record.offset,
                    key: text(&record.record.key),
                    value: text(&record.record.value).unwrap_or_default(),
                });
                offset = record.offset + 1;
            }
            if batch.is_empty() || offset >= high_watermark {
                break;
            }
        }
    }
    consumed
}

/// A TCP proxy on `127.0.0.1:port` to a broker, counting the connections it accepted; with TLS, it terminates
/// it. Stops when dropped.
pub struct Proxy {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `port` and forwards every connection to `127.0.0.1:target`, after a TLS handshake with `tls`
    /// when given.
    pub async fn start(port: u16, target: u16, tls: Option<&TlsFiles>) -> Proxy {
        let acceptor = tls.map(|files| TlsAcceptor::from(Arc::new(files.server_config())));
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the proxy's port");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(forward(client, acceptor.clone(), SocketAddr::from(([127, 0, 0, 1], target))));
            }
        });
        Proxy { port, accepted, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, acceptor: Option<TlsAcceptor>, target: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(target).await else { return };
    match acceptor {
        Some(acceptor) => {
            // A client that does not trust the certificate ends the handshake: nothing to forward.
            if let Ok(mut client) = acceptor.accept(client).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        }
        None => {
            let mut client = client;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
    }
}

/// A CA and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM files in a temporary
/// directory removed when dropped.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsFiles {
    pub fn new() -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let dir = tempfile::Builder::new().prefix("kairos-kafka-tls-").tempdir().expect("temporary directory");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.distinguished_name.push(DnType::CommonName, "Kairos test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };
        TlsFiles {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("server.pem", cert.pem()),
            key: write("server-key.pem", key.serialize_pem()),
            _dir: dir,
        }
    }

    fn server_config(&self) -> ServerConfig {
        crate::install_crypto_provider();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .expect("read the server certificate")
            .collect::<Result<_, _>>()
            .expect("parse the server certificate");
        let key = PrivateKeyDer::from_pem_file(&self.key).expect("read the server key");
        ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).expect("server TLS config")
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca
    }
}

impl Default for TlsFiles {
    fn default() -> Self {
        TlsFiles::new()
    }
}
