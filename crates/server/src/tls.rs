//! TLS on both listeners and every node-to-node call, with Dkron Pro's flags: `--cert-file` and `--key-file`
//! (this node's certificate, served to clients and presented to other nodes), `--trusted-ca-file` (the CA that
//! signs every node's certificate; nodes verify each other against it) and `--client-cert-auth` (mutual TLS: the
//! listeners accept only clients with a certificate that CA signed).
//!
//! With TLS on, the HTTP API is HTTPS, the RPC listener speaks only TLS (a plain connection fails its handshake),
//! and the RPC client uses `https://` with the CA as its only root. A node's certificate must name the address other
//! nodes reach it at (its advertise IP) and carry both the server and the client usage: [`create_cert`] makes
//! such certificates, and [`create_ca`] the CA (`kairos tls ca create`, `kairos tls cert create`), for users
//! without a PKI. rustls only (ring).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS files of a node, as the flags name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    pub client_cert_auth: bool,
}

impl TlsFiles {
    /// The files from the flags: none given means no TLS; a partial set is an error naming what is missing.
    pub fn from_flags(
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        client_cert_auth: bool,
    ) -> anyhow::Result<Option<TlsFiles>> {
        match (cert_file, key_file, ca_file) {
            (None, None, None) if !client_cert_auth => Ok(None),
            (None, None, None) => bail!("--client-cert-auth: needs --cert-file, --key-file and --trusted-ca-file"),
            (Some(cert_file), Some(key_file), Some(ca_file)) => {
                Ok(Some(TlsFiles { cert_file, key_file, ca_file, client_cert_auth }))
            }
            (None, _, _) => bail!("--cert-file: required with --key-file or --trusted-ca-file"),
            (_, None, _) => bail!("--key-file: required with --cert-file"),
            (_, _, None) => {
                bail!(
                    "--trusted-ca-file: required with --cert-file (nodes verify each other's certificates against it)"
                )
            }
        }
    }
}

/// Loaded TLS settings: what the listeners serve and what the RPC client presents and trusts.
#[derive(Clone)]
pub struct Tls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: rustls::ClientConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Read and check the files; every error names the flag and the file.
    pub fn load(files: &TlsFiles) -> anyhow::Result<Tls> {
        kairos_agent::install_crypto_provider();
        let certs = read_certs("--cert-file", &files.cert_file)?;
        let key = read_key("--key-file", &files.key_file)?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in read_certs("--trusted-ca-file", &files.ca_file)? {
            roots
                .add(ca)
                .with_context(|| format!("--trusted-ca-file: '{}' is not a usable CA", files.ca_file.display()))?;
        }
        let roots = Arc::new(roots);
        let server = rustls::ServerConfig::builder();
        let server = if files.client_cert_auth {
            let verifier = rustls::server::WebPkiClientVerifier::builder(roots.clone())
                .build()
                .context("--trusted-ca-file: cannot verify clients with it")?;
            server.with_client_cert_verifier(verifier)
        } else {
            server.with_no_client_auth()
        };
        let mut server = server.with_single_cert(certs.clone(), key.clone_key()).with_context(|| {
            format!(
                "--key-file: '{}' does not match --cert-file '{}'",
                files.key_file.display(),
                files.cert_file.display()
            )
        })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .context("--cert-file: cannot be presented as a client certificate")?;
        Ok(Tls { server: Arc::new(server), client })
    }
}

/// A command-line client's TLS settings for a server's HTTPS API: trust the CA of `--trusted-ca-file`, and present
/// `--cert-file`/`--key-file` when given (the API asks for a client certificate under `--client-cert-auth`).
pub fn api_client_config(ca_file: &Path, identity: Option<(&Path, &Path)>) -> anyhow::Result<rustls::ClientConfig> {
    kairos_agent::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs("--trusted-ca-file", ca_file)? {
        roots.add(ca).with_context(|| format!("--trusted-ca-file: '{}' is not a usable CA", ca_file.display()))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some((cert_file, key_file)) => builder
            .with_client_auth_cert(read_certs("--cert-file", cert_file)?, read_key("--key-file", key_file)?)
            .context("--cert-file: cannot be presented as a client certificate")?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_certs(flag: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("{flag}: cannot read '{}'", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{flag}: '{}' is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{flag}: '{}' holds no certificate", path.display());
    }
    Ok(certs)
}

fn read_key(flag: &str, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("{flag}: cannot read '{}'", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("{flag}: '{}' holds no PEM private key", path.display()))
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// A node: serves the listeners and presents itself to other nodes (server and client usage).
    Server,
    /// A user or tool calling the API or a node's RPC address (`kairos leave`) under mutual TLS.
    Client,
}

/// Create a CA: `<dir>/kairos-agent-ca.pem` and `<dir>/kairos-agent-ca-key.pem`; refuses to overwrite.
pub fn create_ca(dir: &Path, days: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let (cert_path, key_path) = (dir.join("kairos-agent-ca.pem"), dir.join("kairos-agent-ca-key.pem"));
    refuse_existing(&[&cert_path, &key_path])?;
    let mut params = CertificateParams::new(Vec::new())?;
    params.distinguished_name.push(DnType::CommonName, "Kairos CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    Ok((cert_path, key_path))
}

/// Create a certificate signed by the CA: `<dir>/<prefix>-<n>.pem` and `-key.pem` (n counts up from 0, as Consul
/// names them), with the names and IPs given (a server certificate always names `localhost` and `127.0.0.1`).
pub fn create_cert(
    ca_cert: &Path,
    ca_key: &Path,
    kind: CertKind,
    dns_names: &[String],
    ips: &[std::net::IpAddr],
    dir: &Path,
    days: u32,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType};
    let ca_pem =
        std::fs::read_to_string(ca_cert).with_context(|| format!("--ca: cannot read '{}'", ca_cert.display()))?;
    let ca_key_pem =
        std::fs::read_to_string(ca_key).with_context(|| format!("--key: cannot read '{}'", ca_key.display()))?;
    let ca_key =
        KeyPair::from_pem(&ca_key_pem).with_context(|| format!("--key: '{}' is not a key", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("--ca: '{}' is not a CA certificate", ca_cert.display()))?;
    let prefix = match kind {
        CertKind::Server => "kairos-agent-server",
        CertKind::Client => "kairos-agent-client",
    };
    let n = (0..).find(|n| !dir.join(format!("{prefix}-{n}.pem")).exists()).unwrap_or(0);
    let (cert_path, key_path) = (dir.join(format!("{prefix}-{n}.pem")), dir.join(format!("{prefix}-{n}-key.pem")));
    refuse_existing(&[&cert_path, &key_path])?;
    let mut params = CertificateParams::new(Vec::new())?;
    params.distinguished_name.push(DnType::CommonName, format!("{prefix}-{n}"));
    let mut names: Vec<String> = dns_names.to_vec();
    let mut addrs: Vec<std::net::IpAddr> = ips.to_vec();
    if kind == CertKind::Server {
        names.push("localhost".into());
        addrs.push([127, 0, 0, 1].into());
    }
    names.sort();
    names.dedup();
    addrs.sort();
    addrs.dedup();
    for name in names {
        params.subject_alt_names.push(SanType::DnsName(name.try_into().context("--dns: not a valid DNS name")?));
    }
    params.subject_alt_names.extend(addrs.into_iter().map(SanType::IpAddress));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = match kind {
        CertKind::Server => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        CertKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    set_validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    Ok((cert_path, key_path))
}

fn set_validity(params: &mut rcgen::CertificateParams, days: u32) {
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
}

fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    if let Some(path) = paths.iter().find(|p| p.exists()) {
        bail!("'{}' exists already; not overwriting it", path.display());
    }
    Ok(())
}

/// Write a new file (a private key readable by its owner only).
fn write_new(path: &Path, data: &[u8], private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("cannot create '{}'", path.display()))?;
    file.write_all(data).with_context(|| format!("cannot write '{}'", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_set_of_files_names_what_is_missing() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(TlsFiles::from_flags(None, None, None, false).unwrap(), None);
        let err = |r: anyhow::Result<Option<TlsFiles>>| r.unwrap_err().to_string();
        assert!(err(TlsFiles::from_flags(p("c"), None, p("ca"), false)).starts_with("--key-file"));
        assert!(err(TlsFiles::from_flags(p("c"), p("k"), None, false)).starts_with("--trusted-ca-file"));
        assert!(err(TlsFiles::from_flags(None, p("k"), None, false)).starts_with("--cert-file"));
        assert!(err(TlsFiles::from_flags(None, None, None, true)).starts_with("--client-cert-auth"));
    }

    #[test]
    fn created_certificates_load_and_mismatched_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = create_ca(dir.path(), 30).unwrap();
        assert!(create_ca(dir.path(), 30).unwrap_err().to_string().contains("exists already"));
        let (cert, key) = create_cert(&ca, &ca_key, CertKind::Server, &[], &[], dir.path(), 30).unwrap();
        let (cert2, key2) = create_cert(&ca, &ca_key, CertKind::Server, &[], &[], dir.path(), 30).unwrap();
        assert_ne!(cert, cert2, "a second certificate gets the next number");
        let files = TlsFiles { cert_file: cert.clone(), key_file: key, ca_file: ca.clone(), client_cert_auth: true };
        Tls::load(&files).unwrap();
        let mismatched = TlsFiles { key_file: key2, ..files.clone() };
        assert!(Tls::load(&mismatched).unwrap_err().to_string().starts_with("--key-file"));
        let missing = TlsFiles { ca_file: dir.path().join("nope.pem"), ..files.clone() };
        assert!(Tls::load(&missing).unwrap_err().to_string().starts_with("--trusted-ca-file: cannot read"));
        let not_pem = TlsFiles { cert_file: ca_key.clone(), ..files };
        assert!(Tls::load(&not_pem).unwrap_err().to_string().starts_with("--cert-file"));
    }
}
