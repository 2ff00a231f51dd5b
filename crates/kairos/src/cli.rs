//! Operator commands: `kairos leave`, `kairos raft list-peers` and `kairos raft remove-peer` talk to a running
//! node's RPC address (over TLS when given the TLS flags); `kairos tls ca create` and `kairos tls cert create`
//! make a CA and certificates for users without a PKI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use kairos_server::cluster::Peer;
use kairos_server::cluster::{RpcClient, RpcError, client};

#[derive(Debug, Clone, Args)]
pub struct RpcArgs {
    /// RPC address (host:port) of the node to talk to.
    #[arg(long, env = "KAIROS_RPC_ADDR", default_value = "127.0.0.1:6868")]
    pub rpc_addr: String,
    /// For a cluster with TLS: a certificate (PEM) signed by the cluster's CA, presented to the node.
    #[arg(long, env = "KAIROS_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file.
    #[arg(long, env = "KAIROS_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The cluster's CA (PEM): the node's certificate must be signed by it.
    #[arg(long, env = "KAIROS_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// For a cluster with a key (`--encrypt`): the key, from which the node credential is derived.
    #[arg(long, env = "KAIROS_ENCRYPT")]
    pub encrypt: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Certificate authorities.
    #[command(subcommand)]
    Ca(TlsCaCommand),
    /// Certificates signed by the CA.
    #[command(subcommand)]
    Cert(TlsCertCommand),
}

#[derive(Debug, Subcommand)]
pub enum TlsCaCommand {
    /// Create a CA: kairos-agent-ca.pem and kairos-agent-ca-key.pem in the current directory.
    Create {
        /// Days the CA is valid.
        #[arg(long, default_value_t = 1825)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCertCommand {
    /// Create a certificate signed by the CA: kairos-agent-{server,client}-N.pem and -N-key.pem.
    Create {
        /// A node's certificate (server and client usage; names localhost and 127.0.0.1).
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        server: bool,
        /// A client's certificate (for operators and tools under mutual TLS).
        #[arg(long)]
        client: bool,
        /// A DNS name the certificate is for; repeatable.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// An IP address the certificate is for (a node's advertise address); repeatable.
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// The CA certificate.
        #[arg(long, default_value = "kairos-agent-ca.pem")]
        ca: PathBuf,
        /// The CA's private key.
        #[arg(long, default_value = "kairos-agent-ca-key.pem")]
        key: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// `kairos tls …`: files are written to the current directory and never overwritten.
pub fn tls(command: TlsCommand) -> ExitCode {
    use kairos_server::tls::{CertKind, create_ca, create_cert};
    let here = std::path::Path::new(".");
    let created = match command {
        TlsCommand::Ca(TlsCaCommand::Create { days }) => create_ca(here, days),
        TlsCommand::Cert(TlsCertCommand::Create { server, client: _, dns, ips, ca, key, days }) => {
            let kind = if server { CertKind::Server } else { CertKind::Client };
            create_cert(&ca, &key, kind, &dns, &ips, here, days)
        }
    };
    match created {
        Ok((cert, key)) => {
            println!("==> Saved {}", cert.display());
            println!("==> Saved {}", key.display());
            ExitCode::SUCCESS
        }
        Err(err) => finish(Err(format!("{err:#}"))),
    }
}

#[derive(Debug, Subcommand)]
pub enum RaftCommand {
    /// List the servers of the Raft configuration: Node, ID, Address, State, Voter.
    ListPeers(RpcArgs),
    /// Remove a server from the Raft configuration (for a server that is gone for good).
    RemovePeer {
        /// The Raft ID of the server to remove (see `kairos raft list-peers`).
        #[arg(long)]
        peer_id: u64,
        #[command(flatten)]
        rpc: RpcArgs,
    },
}

fn block_on<T>(future: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(future)
}

fn rpc_client(args: &RpcArgs) -> Result<RpcClient, String> {
    let files = kairos_server::tls::TlsFiles::from_flags(
        args.cert_file.clone(),
        args.key_file.clone(),
        args.trusted_ca_file.clone(),
        false,
    )
    .map_err(|e| format!("{e:#}"))?;
    let tls = files.as_ref().map(kairos_server::tls::Tls::load).transpose().map_err(|e| format!("{e:#}"))?;
    let key = args
        .encrypt
        .as_deref()
        .map(kairos_server::gossip_key::GossipKey::parse)
        .transpose()
        .map_err(|e| format!("{e:#}"))?;
    RpcClient::with_credentials(tls.as_ref(), key.as_ref()).map_err(|e| format!("{e:#}"))
}

/// What to print when the node at `addr` could not be asked at all.
fn unreachable(addr: &str, err: RpcError) -> String {
    format!("--rpc-addr: cannot reach {addr}: {err}")
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kairos: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Ask the node to leave, then wait until it stopped answering (it exits by itself once it left).
pub fn leave(args: &RpcArgs) -> ExitCode {
    finish(block_on(async {
        let rpc = rpc_client(args)?;
        match rpc.leave(&args.rpc_addr).await {
            Ok(()) => {}
            Err(RpcError::Status { status, .. }) => {
                return Err(format!("{} refused to leave: HTTP {status}", args.rpc_addr));
            }
            Err(err) => return Err(unreachable(&args.rpc_addr, err)),
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if !rpc.answers(&args.rpc_addr).await {
                println!("{} left the cluster", args.rpc_addr);
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{} accepted to leave but is still running after 60 s", args.rpc_addr));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}

pub fn raft(command: RaftCommand) -> ExitCode {
    match command {
        RaftCommand::ListPeers(args) => finish(block_on(async {
            let peers = match rpc_client(&args)?.peers(&args.rpc_addr).await {
                Ok(peers) => peers,
                Err(RpcError::Status { status, .. }) => {
                    return Err(format!("{} is not a server (HTTP {status})", args.rpc_addr));
                }
                Err(err @ RpcError::BadAnswer { .. }) => return Err(format!("bad answer: {err}")),
                Err(err) => return Err(unreachable(&args.rpc_addr, err)),
            };
            print!("{}", peers_table(&peers));
            Ok(())
        })),
        RaftCommand::RemovePeer { peer_id, rpc } => finish(block_on(async {
            match rpc_client(&rpc)?.remove_peer(&rpc.rpc_addr, peer_id, client::OPERATOR_TIMEOUT).await {
                Ok(()) => {}
                Err(RpcError::Rejected { message, .. }) => return Err(message),
                Err(err @ (RpcError::Status { .. } | RpcError::BadAnswer { .. })) => {
                    return Err(format!("bad answer: {err}"));
                }
                Err(err) => return Err(unreachable(&rpc.rpc_addr, err)),
            }
            println!("removed peer {peer_id}");
            Ok(())
        })),
    }
}

fn peers_table(peers: &[Peer]) -> String {
    let rows: Vec<[String; 5]> = peers
        .iter()
        .map(|p| [p.node.clone(), p.id.to_string(), p.address.clone(), p.state.clone(), p.voter.to_string()])
        .collect();
    let header = ["Node", "ID", "Address", "State", "Voter"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_table_aligns_columns() {
        let peers = vec![
            Peer { node: "s1".into(), id: 12, address: "127.0.0.1:6868".into(), state: "leader".into(), voter: true },
            Peer {
                node: "server-2".into(),
                id: 7,
                address: "10.0.0.2:6868".into(),
                state: "follower".into(),
                voter: false,
            },
        ];
        let table = peers_table(&peers);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "Node      ID  Address         State     Voter");
        assert_eq!(lines[1], "s1        12  127.0.0.1:6868  leader    true");
        assert_eq!(lines[2], "server-2  7   10.0.0.2:6868   follower  false");
    }
}
