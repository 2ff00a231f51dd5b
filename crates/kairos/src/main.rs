//! `kairos`: a distributed job scheduler with a Dkron-compatible CLI and API.
//!
//! The binary: the command line (`kairos agent`, `kairos leave`, `kairos raft …`) and the process around a node
//! (logging, signals, exit codes). The node itself is `kairos_server`; its HTTP API and UI are `kairos_http`.
//! - [`cli`]: `kairos leave` and `kairos raft …`, which talk to a node's RPC address.
//! - [`acl`]: `kairos acl …` (bootstrap, tokens, policies), which talk to a server's HTTP API with a token.

mod acl;
mod cli;
mod secret;

use kairos_server::node::storage;
use kairos_server::{agent_node, config, logging, node, reload};

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
    /// Print a new random key for --encrypt (gossip encryption).
    Keygen,
    /// Create a CA and certificates for TLS (for users without a PKI).
    #[command(subcommand)]
    Tls(cli::TlsCommand),
    /// Access control: bootstrap, tokens and policies (over a server's HTTP API).
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// Write-only secrets that jobs reference as {{secret "name"}} (over a server's HTTP API).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
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
        Commands::Tls(command) => cli::tls(command),
        Commands::Keygen => match kairos_server::gossip_key::keygen() {
            Ok(key) => {
                println!("{key}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("kairos: {err:#}");
                ExitCode::FAILURE
            }
        },
        Commands::Acl(command) => acl::run(command),
        Commands::Secret(command) => secret::run(command),
        Commands::Agent(args) => match args.clone().resolve() {
            Ok(config) => run_agent(config, *args),
            Err(err) => {
                eprintln!("kairos: {err:#}");
                ExitCode::from(2)
            }
        },
    }
}

/// Log to stderr at the configured level (or as `KAIROS_LOG` says), in the configured format; the answer changes
/// the level later (a reload).
fn init_logging(config: &config::Config) -> reload::LogFilter {
    let (filter, handle) = tracing_subscriber::reload::Layer::new(reload::log_filter(&config.log_level));
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        config::LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).init();
        }
        config::LogFormat::Json => {
            let json = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .fmt_fields(logging::json_fields())
                .event_format(logging::JsonLines { node: config.node_name.clone() });
            registry.with(json).init();
        }
    }
    handle
}

/// Run a node until it is told to stop. `args` are its flags and environment, read again with the config file
/// on `SIGHUP`.
fn run_agent(config: config::Config, args: config::AgentArgs) -> ExitCode {
    let log = init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kairos: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        // SIGHUP's default action ends the process: take it over before anyone can have a reason to send it.
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(err) => {
                eprintln!("kairos: cannot install signal handlers: {err}");
                return ExitCode::FAILURE;
            }
        };
        let running_config = config.clone();
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
            let mut reloader =
                reload::Reloader::new(args, running_config, log, agent.membership.clone(), agent.worker.clone());
            if let Err(code) = wait_for_stop(exit, &mut hangups, &mut reloader).await {
                return code;
            }
            agent.shutdown().await;
            info!("stopped");
            return ExitCode::SUCCESS;
        }
        let running = match node::Node::start(config, kairos_http::router).await {
            Ok(running) => running,
            Err(err) => {
                error!("{err:#}");
                eprintln!("kairos: {err:#}");
                return ExitCode::FAILURE;
            }
        };
        // Tests and scripts read this line to learn the bound port; keep its wording.
        let scheme = if running.node.config.tls.is_some() { "https" } else { "http" };
        let (format, name) = (running.node.config.log_format, &running.node.config.node_name);
        logging::announce(format, name, &format!("HTTP API listening on {scheme}://{}", running.http_addr));
        let node = &running.node;
        let mut reloader =
            reload::Reloader::new(args, running_config, log, node.membership.clone(), node.worker.clone());
        if let Err(code) = wait_for_stop(node.exit.clone(), &mut hangups, &mut reloader).await {
            return code;
        }
        let fatal = node.fatal.get().cloned();
        running.shutdown().await;
        if let Some(reason) = fatal {
            error!("stopped: {reason}");
            return ExitCode::from(storage::STORAGE_FAILED_EXIT);
        }
        info!("stopped");
        ExitCode::SUCCESS
    });
    // Everything that matters is flushed; tasks still parked (listeners, timers) must not be polled by a runtime
    // that is tearing down, so drop it without waiting for them.
    runtime.shutdown_background();
    code
}

/// Wait for SIGTERM/SIGINT or for the node to ask to exit (after leaving); a second signal exits at once.
/// Meanwhile every SIGHUP reloads the configuration.
async fn wait_for_stop(
    exit: tokio_util::sync::CancellationToken,
    hangups: &mut Signal,
    reloader: &mut reload::Reloader,
) -> Result<(), ExitCode> {
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            signal = &mut stop => {
                if let Err(err) = signal {
                    eprintln!("kairos: cannot install signal handlers: {err}");
                    return Err(ExitCode::FAILURE);
                }
                info!("signal received: stopping (a second signal exits at once)");
                break;
            }
            _ = exit.cancelled() => {
                info!("left the cluster: stopping");
                break;
            }
            _ = hangups.recv() => {
                info!("SIGHUP: reloading the configuration");
                reloader.reload().await;
            }
        }
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
