//! `--secure` (issue 11): a server with access control and TLS on, as a production server runs. The harness makes
//! a CA, a server certificate and a client certificate with `kairos tls`, and a gossip key with `kairos keygen`
//! (which `--acl-enabled` requires as node credentials), in the scenario's scratch directory; the server is
//! started with `--acl-enabled --encrypt KEY --cert-file … --key-file … --trusted-ca-file … --client-cert-auth`.
//! Its API is then reached over HTTPS with the CA and the client certificate, the ACL is bootstrapped
//! (`POST /v1/acl/bootstrap`) and every later request carries the management secret in `X-Dkron-Token` (see
//! [`crate::client::Api`]). The audit log is on in both modes (it records every write, `anonymous` without ACL).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kairos_testkit::kairos_command;

/// What a client needs to reach a server started with [`Secure::flags`]: the CA to trust, and the client
/// certificate with its key (one PEM) for `--client-cert-auth`.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub identity_pem: Vec<u8>,
}

/// The files and the key of one secure server.
#[derive(Debug, Clone)]
pub struct Secure {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    gossip_key: String,
    pub client: ClientTls,
}

impl Secure {
    /// Make the CA, the certificates and the gossip key with `binary` in `dir` (created; must not hold a CA yet).
    pub fn make(binary: &Path, dir: &Path) -> anyhow::Result<Secure> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for args in [
            &["tls", "ca", "create"][..],
            &["tls", "cert", "create", "--server"],
            &["tls", "cert", "create", "--client"],
        ] {
            kairos_in(binary, dir, args)?;
        }
        let gossip_key = kairos_in(binary, dir, &["keygen"])?.trim().to_string();
        let read = |name: &str| std::fs::read(dir.join(name)).with_context(|| format!("reading {name}"));
        let mut identity_pem = read("kairos-agent-client-0.pem")?;
        identity_pem.extend(read("kairos-agent-client-0-key.pem")?);
        Ok(Secure {
            ca: dir.join("kairos-agent-ca.pem"),
            server_cert: dir.join("kairos-agent-server-0.pem"),
            server_key: dir.join("kairos-agent-server-0-key.pem"),
            gossip_key,
            client: ClientTls { ca_pem: read("kairos-agent-ca.pem")?, identity_pem },
        })
    }

    /// The flags of `kairos agent` that turn ACL, gossip encryption and mutual TLS on.
    pub fn flags(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        vec![
            "--acl-enabled".into(),
            "--encrypt".into(),
            self.gossip_key.clone(),
            "--cert-file".into(),
            path(&self.server_cert),
            "--key-file".into(),
            path(&self.server_key),
            "--trusted-ca-file".into(),
            path(&self.ca),
            "--client-cert-auth".into(),
        ]
    }
}

/// Run `binary args…` in `dir`; its standard output, or an error with everything it printed.
fn kairos_in(binary: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = kairos_command(binary)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {} {}", binary.display(), args.join(" ")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("kairos {}: {}{stdout}{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(stdout)
}
