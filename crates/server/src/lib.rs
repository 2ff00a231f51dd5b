//! A Kairos node: everything but HTTP and the command line.
//!
//! What each part owns, in the order a run goes through them:
//! - [`config`]: the merged configuration (flags, `KAIROS_*` environment, config file); [`reload`] applies what
//!   `SIGHUP` may change while running;
//! - [`node`]: a server: opens the stores, starts Raft (openraft over [`cluster`]), gossip ([`gossip`]), the
//!   listeners ([`listener`]) and the worker, and shuts them down; writes go through [`Node::submit`], which
//!   forwards to the leader when following, and fail with a [`WriteError`]. Its parts: `node::leadership` turns
//!   the leader duties on when this node wins an election and off when it loses, in one place, and says where
//!   fencing happens; `node::applied` does what follows from applied entries (wake the scheduler, delete
//!   outputs, stop cancelled runs); `node::storage` stops a server whose storage fails (exit non-zero instead of a
//!   zombie); `node::routes` answers the RPC routes only servers have. The node is the one module that knows
//!   every other; nothing imports it back;
//! - [`duties`]: what the leader duties are doing (for `/health`) and [`duties::LeaderWrites`], the one way they
//!   write, which the node implements;
//! - [`scheduler`] (a leader duty): the timer over every job's next slot; it proposes `Fire` commands;
//! - [`dispatch`] (a leader duty): places what a committed `Fire` created on nodes (claims, placement), sends
//!   orders stamped with its term, syncs every node when it takes over, and sweeps: due retries, lease expiry,
//!   runs no node can take. It sees its node through a [`dispatch::Host`] (state, worker, members, RPC client,
//!   writes), not the node itself;
//! - [`worker`]: on every node, takes orders (refusing older terms and expired orders), starts runs at their
//!   instant through `kairos_agent`, renews their leases and reports starts and finishes in batches;
//! - [`permit`]: a node other than the leader launches a run only with the leader's permit for it, which tells the
//!   leader what a silent node cannot have started;
//! - [`memory`]: after a burst of runs, free memory is given back to the system;
//! - [`clock`]: this node's offset from the leader's clock (`cluster::clock_sync` measures it over RPC);
//! - [`notify`]: webhooks; [`metrics`]: Prometheus metrics; [`statsd`]: the same metrics pushed to StatsD or
//!   DogStatsD;
//! - [`agent_node`]: a node without `--server`: gossip, the worker and the agent's RPC routes only;
//! - [`acl`]: new access-control tokens get their ids and secret on the proposer (enforcement is at the HTTP
//!   edge, in `kairos-http`);
//! - [`audit`]: the audit log's writer (records from the API edge, committed in batches);
//! - [`logging`]: log lines as text or JSON (`--log-format`), with the node, job, execution and term in them;
//! - [`tls`]: TLS on both listeners and every node-to-node call, and the certificates `kairos tls` creates.
//!
//! The life of one run: the scheduler's timer fires → `Fire` is committed through Raft → the dispatcher claims
//! the new pending execution, places it and sends the order → the worker on that node starts it at its instant
//! and reports `Start` → renewals keep its lease → `Finish` is committed; the sweep turns a run whose lease ran out
//! `lost`. The HTTP API and UI (`kairos-http`) read the state and submit commands through [`Node`].

pub mod acl;
pub mod agent_node;
pub mod audit;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod duties;
pub mod error;
pub mod gossip;
pub mod gossip_key;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod permit;
pub mod reload;
pub mod scheduler;
pub mod statsd;
pub mod tls;
pub mod worker;

pub use error::{Failure, WriteError};
pub use node::Node;
