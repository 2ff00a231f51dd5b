//! `kairos`: a distributed job scheduler with a Dkron-compatible CLI and API.
//!
//! The binary's parts, in the order a run goes through them:
//! - [`config`]: flags, `KAIROS_*` environment and config file, merged;
//! - [`node`]: opens the stores, starts Raft, the listeners and the leader's duties;
//! - [`scheduler`]: the leader's timer that decides which slots fire;
//! - [`worker`]: runs executions locally and reports them in batches;
//! - [`gossip`]: cluster membership (chitchat);
//! - [`dispatch`]: the leader's placement of runs on nodes, fencing, takeover and leases;
//! - [`agent_node`]: a node without `--server`, which only runs what it is sent;
//! - [`cluster`]: RPC between nodes (Raft, forwarded writes, orders, reports);
//! - [`listener`]: serving both listeners with a connection limit and header deadlines;
//! - [`cli`]: `kairos leave` and `kairos raft …`, which talk to a node's RPC address;
//! - [`api`]: the HTTP `/v1` API;
//! - [`ui`]: the web UI at `/ui/`, rendered by the server over the same state.

mod agent_node;
mod api;
mod cli;
mod cluster;
mod config;
mod dispatch;
mod gossip;
mod listener;
mod node;
mod scheduler;
mod ui;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "kairos", about = "Kairos: a distributed, fault-tolerant job scheduler", version)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run a node (with --server: a scheduler that stores state and runs jobs).
    Agent(Box<config::AgentArgs>),
    /// Make a node leave the cluster gracefully (a leader hands leadership over first).
    Leave(cli::RpcArgs),
    /// Inspect or change the Raft configuration of the servers.
    #[command(subcommand)]
    Raft(cli::RaftCommand),
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Version => {
            println!("kairos {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Commands::Leave(args) => cli::leave(&args),
        Commands::Raft(command) => cli::raft(command),
        Commands::Agent(args) => match args.resolve() {
            Ok(config) => run_agent(config),
            Err(err) => {
                eprintln!("kairos: {err:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_env("KAIROS_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},openraft=warn,hyper=warn,reqwest=warn")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn run_agent(config: config::Config) -> ExitCode {
    init_logging(&config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kairos: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        if !config.server {
            let agent = match agent_node::AgentNode::start(config).await {
                Ok(agent) => agent,
                Err(err) => {
                    error!("{err:#}");
                    eprintln!("kairos: {err:#}");
                    return ExitCode::FAILURE;
                }
            };
            let exit = agent.exit.clone();
            if let Err(code) = wait_for_stop(exit).await {
                return code;
            }
            agent.shutdown().await;
            info!("stopped");
            return ExitCode::SUCCESS;
        }
        let running = match node::Node::start(config).await {
            Ok(running) => running,
            Err(err) => {
                error!("{err:#}");
                eprintln!("kairos: {err:#}");
                return ExitCode::FAILURE;
            }
        };
        // Tests and scripts read this line to learn the bound port; keep its wording.
        eprintln!("kairos: HTTP API listening on http://{}", running.http_addr);
        if let Err(code) = wait_for_stop(running.node.exit.clone()).await {
            return code;
        }
        running.shutdown().await;
        info!("stopped");
        ExitCode::SUCCESS
    });
    // Everything that matters is flushed; tasks still parked (listeners, timers) must not be polled by a runtime
    // that is tearing down, so drop it without waiting for them.
    runtime.shutdown_background();
    code
}

/// Wait for SIGTERM/SIGINT or for the node to ask to exit (after leaving); a second signal exits at once.
async fn wait_for_stop(exit: tokio_util::sync::CancellationToken) -> Result<(), ExitCode> {
    tokio::select! {
        signal = wait_for_signal() => {
            if let Err(err) = signal {
                eprintln!("kairos: cannot install signal handlers: {err}");
                return Err(ExitCode::FAILURE);
            }
            info!("signal received: stopping (a second signal exits at once)");
        }
        _ = exit.cancelled() => info!("left the cluster: stopping"),
    }
    tokio::spawn(async {
        if wait_for_signal().await.is_ok() {
            eprintln!("kairos: second signal, exiting now");
            std::process::exit(130);
        }
    });
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
