//! Operator commands that talk to a running node's RPC address: `kairos leave`, `kairos raft list-peers`,
//! `kairos raft remove-peer`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use kairos_server::cluster::{RpcClient, RpcError, client};
use kairos_server::node::Peer;

#[derive(Debug, Clone, Args)]
pub struct RpcArgs {
    /// RPC address (host:port) of the node to talk to.
    #[arg(long, env = "KAIROS_RPC_ADDR", default_value = "127.0.0.1:6868")]
    pub rpc_addr: String,
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

fn rpc_client() -> Result<RpcClient, String> {
    RpcClient::new().map_err(|e| format!("{e:#}"))
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
        let rpc = rpc_client()?;
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
            let peers = match rpc_client()?.peers(&args.rpc_addr).await {
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
            match rpc_client()?.remove_peer(&rpc.rpc_addr, peer_id, client::OPERATOR_TIMEOUT).await {
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
