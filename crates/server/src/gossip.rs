//! Cluster membership by gossip (chitchat over UDP on `--bind-addr`).
//!
//! Every node publishes a few keys: its role, Raft id (servers), RPC and HTTP addresses, tags, and whether it
//! left. Chitchat's phi-accrual failure detector tells live nodes from failed ones. Raft membership (servers
//! only) is decided by the leader from this view (see `node::membership_loop`); dispatch picks agents from it.
//!
//! The tags are Dkron's ([`node_tags`]): the built-in ones a Dkron node publishes (`role=dkron`, `server`, `dc`,
//! `region`, `version`, `rpc_addr`, `port`) with the user's `--tag`s, so jobs written for Dkron place the same
//! way ([`tags_match`]), and `/v1/members` shows the tags placement matches against.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;

const KEY_ROLE: &str = "role";
const KEY_RAFT_ID: &str = "raft_id";
const KEY_RPC: &str = "rpc";
/// A server's Raft listener (servers of earlier versions have none: Raft reaches them on their RPC listener).
const KEY_RAFT: &str = "raft";
const KEY_HTTP: &str = "http";
const KEY_TAGS: &str = "tags";
const KEY_LEFT: &str = "left";
const KEY_INITIALIZED: &str = "raft_initialized";
/// The executors a node runs (comma-separated); absent on nodes of earlier versions, which run them all.
const KEY_EXECUTORS: &str = "executors";
/// The node's clock offset from the leader: `offset_ms,error_ms` (see [`crate::clock`]).
const KEY_CLOCK: &str = "clock";
/// How many executions the node runs at once (`--max-running`); placement weighs its load by it.
const KEY_PLACES: &str = "places";
/// The Raft term a server leads in ("0" when it does not lead): agents send their permit requests and reports
/// to the leader directly rather than through a follower that forwards them.
const KEY_LEADING: &str = "leading";

/// How often a node gossips with a few peers.
const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);

/// The `role` tag every Dkron node has; every Kairos node satisfies it, whatever its own `role` tag says.
pub const DKRON_ROLE: &str = "dkron";
/// Tags that state facts about a node (as in Dkron, the user's `--tag`s cannot override them): `dc` and `region`
/// come from `--datacenter` and `--region`, `server` is there on servers only, `expect` is `--bootstrap-expect`,
/// `rpc_addr` and `port` are where its RPC listener is reached. Dkron also reserves `bootstrap` (its `-bootstrap`
/// flag, which Kairos does not have).
const FACT_TAGS: [&str; 8] = ["dc", "region", "version", "server", "expect", "bootstrap", "rpc_addr", "port"];
/// What `/v1/members` shows in serf's protocol version fields: chitchat's wire protocol (`ProtocolMin/Max/Cur`;
/// `chitchat::ProtocolVersion::V0`) and the layout of the keys Kairos publishes in it (`DelegateMin/Max/Cur`).
/// Every member of a cluster speaks these (a node that did not could not gossip with the others).
pub const GOSSIP_PROTOCOL_VERSION: u8 = 0;
pub const GOSSIP_KEYS_VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Alive,
    Failed,
    Left,
}

impl Status {
    /// Serf's numeric member status, which Dkron's API shows.
    pub fn serf_code(self) -> u8 {
        match self {
            Status::Alive => 1,
            Status::Left => 3,
            Status::Failed => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Alive => "alive",
            Status::Failed => "failed",
            Status::Left => "left",
        }
    }
}

/// One node as gossip knows it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub server: bool,
    pub raft_id: Option<u64>,
    pub rpc_addr: String,
    /// A server's Raft listener, if it has one of its own (see [`Member::raft_addr`]).
    pub raft_listener: Option<String>,
    pub http_addr: String,
    pub gossip_addr: SocketAddr,
    /// Start time of this life of the node (a restart is a new generation).
    pub generation: u64,
    pub tags: BTreeMap<String, String>,
    pub status: Status,
    /// A server that reports it belongs to an initialized Raft cluster.
    pub raft_initialized: bool,
    /// The executors it runs (`--executors`); `None`: it did not say (an earlier version), so any.
    pub executors: Option<Vec<String>>,
    /// Its clock's offset from the leader's, once measured.
    pub clock: Option<crate::clock::Offset>,
    /// How many executions it runs at once (`--max-running`); `None`: it did not say (an earlier version).
    pub places: Option<usize>,
    /// The Raft term this server says it leads in (see [`KEY_LEADING`]).
    pub leading: Option<u64>,
}

impl Member {
    /// Where the other servers' Raft reaches this server: its Raft listener, or its RPC listener (which answers
    /// Raft too) when it did not publish one.
    pub fn raft_addr(&self) -> &str {
        self.raft_listener.as_deref().unwrap_or(&self.rpc_addr)
    }

    /// Whether this node runs jobs of `executor`.
    pub fn runs(&self, executor: &str) -> bool {
        self.executors.as_ref().is_none_or(|list| list.iter().any(|e| e == executor))
    }
}

pub struct Membership {
    handle: ChitchatHandle,
    live: watch::Receiver<BTreeMap<ChitchatId, chitchat::NodeState>>,
    name: String,
    rpc_addr: SocketAddr,
    /// The tags this node publishes now (they change on a configuration reload).
    tags: Mutex<BTreeMap<String, String>>,
}

impl Membership {
    /// Join gossip: listen on `--bind-addr`, advertise `--advertise-addr`, and contact the `--join` and
    /// `--retry-join` seeds (chitchat keeps retrying seeds until they answer).
    pub async fn start(
        config: &Config,
        raft_id: Option<u64>,
        (rpc_addr, raft_addr): (SocketAddr, Option<SocketAddr>),
        http_addr: Option<SocketAddr>,
    ) -> anyhow::Result<Membership> {
        let bind = resolve_bind(&config.bind_addr)?;
        let advertise = SocketAddr::new(config.advertise_ip(), bind.port());
        // The generation tells a restarted node from its previous life.
        let generation = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let chitchat_id = ChitchatId::new(config.node_name.clone(), generation, advertise);
        let seeds: Vec<String> =
            config.join.iter().chain(&config.retry_join).filter(|s| **s != advertise.to_string()).cloned().collect();
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: 8.0,
            sampling_window_size: 1000,
            max_interval: Duration::from_secs(10),
            initial_interval: GOSSIP_INTERVAL * 5,
            dead_node_grace_period: Duration::from_secs(24 * 3600),
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: "kairos".into(),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: bind,
            seed_nodes: seeds,
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let tags = node_tags(config, rpc_addr);
        warn_overridden(config, &tags);
        let mut keys = vec![
            (KEY_ROLE.to_string(), if config.server { "server" } else { "agent" }.to_string()),
            (KEY_RPC.to_string(), rpc_addr.to_string()),
            (KEY_TAGS.to_string(), serde_json::to_string(&tags)?),
            (KEY_EXECUTORS.to_string(), config.executors.join(",")),
            (KEY_PLACES.to_string(), config.run_limits.max_running.to_string()),
        ];
        if let Some(id) = raft_id {
            keys.push((KEY_RAFT_ID.to_string(), id.to_string()));
        }
        if let Some(http) = http_addr {
            keys.push((KEY_HTTP.to_string(), http.to_string()));
        }
        if let Some(raft) = raft_addr {
            keys.push((KEY_RAFT.to_string(), raft.to_string()));
        }
        let handle = match &config.encrypt {
            Some(key) => {
                spawn_chitchat(chitchat_config, keys, &crate::gossip_key::EncryptedTransport { key: key.clone() }).await
            }
            None => spawn_chitchat(chitchat_config, keys, &UdpTransport).await,
        }
        .with_context(|| format!("--bind-addr: cannot listen for gossip on {bind}"))?;
        let live = handle.chitchat().lock().await.live_nodes_watcher();
        Ok(Membership { handle, live, name: config.node_name.clone(), rpc_addr, tags: Mutex::new(tags) })
    }

    /// The tags this node publishes.
    pub fn tags(&self) -> BTreeMap<String, String> {
        self.tags.lock().expect("tags lock").clone()
    }

    /// Publish this node's tags anew from `config` (after a reload); answers them. Placement on the leader sees
    /// them once gossip carried them there (a few rounds).
    pub async fn publish_tags(&self, config: &Config) -> BTreeMap<String, String> {
        let tags = node_tags(config, self.rpc_addr);
        warn_overridden(config, &tags);
        let text = serde_json::to_string(&tags).expect("a map of strings always serializes");
        let chitchat = self.handle.chitchat();
        chitchat.lock().await.self_node_state().set(KEY_TAGS, text);
        *self.tags.lock().expect("tags lock") = tags.clone();
        tags
    }

    /// What Dkron shows as `serf` in `GET /v1` (serf's `Stats()`, every value a string): how many members are
    /// known, failed and left. Chitchat has no health score (0 is serf's healthy), no Lamport clocks and no
    /// broadcast queues (0), and gossip is not encrypted.
    pub async fn serf_stats(&self) -> BTreeMap<&'static str, String> {
        let members = self.all().await;
        let count = |status: Status| members.iter().filter(|m| m.status == status).count().to_string();
        let zero = || "0".to_string();
        BTreeMap::from([
            ("members", members.len().to_string()),
            ("failed", count(Status::Failed)),
            ("left", count(Status::Left)),
            ("health_score", zero()),
            ("member_time", zero()),
            ("event_time", zero()),
            ("query_time", zero()),
            ("intent_queue", zero()),
            ("event_queue", zero()),
            ("query_queue", zero()),
            ("encrypted", "false".to_string()),
        ])
    }

    pub fn self_name(&self) -> &str {
        &self.name
    }

    pub fn gossip_addr(&self) -> SocketAddr {
        self.handle.chitchat_id().gossip_advertise_addr
    }

    /// Nodes the failure detector considers alive (this one included), newest generation per name.
    pub fn alive(&self) -> Vec<Member> {
        let live = self.live.borrow();
        let mut by_name: BTreeMap<String, (u64, Member)> = BTreeMap::new();
        for (id, state) in live.iter() {
            let Some(member) = member_of(id, state, Status::Alive) else { continue };
            if member.status != Status::Alive {
                continue;
            }
            if by_name.get(&member.name).is_none_or(|(generation, _)| *generation < id.generation_id) {
                by_name.insert(member.name.clone(), (id.generation_id, member));
            }
        }
        by_name.into_values().map(|(_, m)| m).collect()
    }

    /// Every node gossip knows, alive, failed or left (newest generation per name).
    pub async fn all(&self) -> Vec<Member> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let live: std::collections::HashSet<ChitchatId> = chitchat.live_nodes().cloned().collect();
        let mut by_name: BTreeMap<String, (u64, Member)> = BTreeMap::new();
        for (id, state) in chitchat.node_states() {
            let status = if live.contains(id) { Status::Alive } else { Status::Failed };
            let Some(member) = member_of(id, state, status) else { continue };
            if by_name.get(&member.name).is_none_or(|(generation, _)| *generation < id.generation_id) {
                by_name.insert(member.name.clone(), (id.generation_id, member));
            }
        }
        by_name.into_values().map(|(_, m)| m).collect()
    }

    /// Publish that this server belongs to an initialized Raft cluster.
    pub async fn set_initialized(&self) {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        if chitchat.self_node_state().get(KEY_INITIALIZED).is_none() {
            chitchat.self_node_state().set(KEY_INITIALIZED, "true");
        }
    }

    /// Publish the term this server leads in, or 0.
    pub async fn set_leading(&self, term: u64) {
        let text = term.to_string();
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        if chitchat.self_node_state().get(KEY_LEADING).unwrap_or("0") != text {
            chitchat.self_node_state().set(KEY_LEADING, text);
        }
    }

    /// The live servers' RPC addresses, the one that says it leads in the highest term first (with the term),
    /// the others in name order.
    pub fn servers_leader_first(&self) -> (Vec<String>, Option<u64>) {
        leader_first(self.alive())
    }

    /// Publish this node's clock offset from the leader.
    pub async fn set_clock(&self, offset: crate::clock::Offset) {
        let text = format!("{},{}", offset.offset_ms, offset.error_ms);
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        if chitchat.self_node_state().get(KEY_CLOCK) != Some(text.as_str()) {
            chitchat.self_node_state().set(KEY_CLOCK, text);
        }
    }

    /// Tell the cluster this node leaves on purpose (servers stop re-adding it to Raft; dispatch avoids it).
    pub async fn announce_leave(&self) {
        let chitchat = self.handle.chitchat();
        chitchat.lock().await.self_node_state().set(KEY_LEFT, "true");
    }

    /// Announce leaving, give gossip a few rounds to spread it, and stop gossiping.
    pub async fn leave(&self) {
        self.announce_leave().await;
        tokio::time::sleep(GOSSIP_INTERVAL * 5).await;
        let _ = self.handle.initiate_shutdown();
    }
}

/// Which server a node sends its permit requests or reports to: the leader (as gossip hints it) first, so no
/// follower has to forward them; after a failure the next server, kept until gossip names a leader of a newer term.
#[derive(Default)]
pub struct ServerChoice {
    term: std::sync::atomic::AtomicU64,
    next: std::sync::atomic::AtomicUsize,
}

impl ServerChoice {
    /// The live servers' RPC addresses in the order to try them, the current choice first.
    pub fn order(&self, membership: &Membership) -> Vec<String> {
        let (servers, term) = membership.servers_leader_first();
        self.order_of(servers, term)
    }

    fn order_of(&self, servers: Vec<String>, term: Option<u64>) -> Vec<String> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(term) = term
            && self.term.swap(term, Relaxed) != term
        {
            self.next.store(0, Relaxed);
        }
        if servers.is_empty() {
            return servers;
        }
        let start = self.next.load(Relaxed) % servers.len();
        servers[start..].iter().chain(&servers[..start]).cloned().collect()
    }

    /// The first server of the last `order` failed: start with the next one from now on.
    pub fn failed(&self) {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// See [`Membership::servers_leader_first`].
fn leader_first(members: Vec<Member>) -> (Vec<String>, Option<u64>) {
    let mut servers: Vec<Member> = members.into_iter().filter(|m| m.server).collect();
    let leader = servers.iter().enumerate().filter_map(|(i, m)| Some((m.leading?, i))).max();
    if let Some((_, i)) = leader {
        let first = servers.remove(i);
        servers.insert(0, first);
    }
    (servers.into_iter().map(|m| m.rpc_addr).collect(), leader.map(|(term, _)| term))
}

fn member_of(id: &ChitchatId, state: &chitchat::NodeState, status: Status) -> Option<Member> {
    let rpc_addr = state.get(KEY_RPC)?.to_string();
    let status = if state.get(KEY_LEFT).is_some() { Status::Left } else { status };
    Some(Member {
        name: id.node_id.to_string(),
        server: state.get(KEY_ROLE) == Some("server"),
        raft_id: state.get(KEY_RAFT_ID).and_then(|v| v.parse().ok()),
        rpc_addr,
        raft_listener: state.get(KEY_RAFT).map(str::to_string),
        http_addr: state.get(KEY_HTTP).unwrap_or_default().to_string(),
        gossip_addr: id.gossip_advertise_addr,
        generation: id.generation_id,
        tags: state.get(KEY_TAGS).and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default(),
        status,
        raft_initialized: state.get(KEY_INITIALIZED).is_some(),
        clock: state.get(KEY_CLOCK).and_then(|text| {
            let (offset, error) = text.split_once(',')?;
            Some(crate::clock::Offset { offset_ms: offset.parse().ok()?, error_ms: error.parse().ok()? })
        }),
        places: state.get(KEY_PLACES).and_then(|n| n.parse().ok()).filter(|n| *n > 0),
        leading: state.get(KEY_LEADING).and_then(|t| t.parse().ok()).filter(|t| *t > 0),
        executors: state
            .get(KEY_EXECUTORS)
            .map(|list| list.split(',').filter(|e| !e.is_empty()).map(str::to_string).collect()),
    })
}

/// The gossip listen address; port 0 picks a free UDP port now (chitchat must know the port it advertises
/// before it binds).
fn resolve_bind(text: &str) -> anyhow::Result<SocketAddr> {
    let full = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_string() };
    let mut addr = full
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("--bind-addr: '{text}' is not host:port"))?;
    if addr.port() == 0 {
        let probe = std::net::UdpSocket::bind(addr).with_context(|| format!("--bind-addr: cannot bind {addr}"))?;
        addr.set_port(probe.local_addr()?.port());
    }
    Ok(addr)
}

/// The tags a node publishes, as a Dkron node does: `role=dkron`, then the user's `--tag`s (which may set
/// `role`: a `--tag role=web` node shows and matches `role: web`), then the [`FACT_TAGS`], which replace any user
/// tag of the same key.
pub fn node_tags(config: &Config, rpc_addr: SocketAddr) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::from([("role".to_string(), DKRON_ROLE.to_string())]);
    tags.extend(
        config.tags.iter().filter(|(key, _)| !FACT_TAGS.contains(&key.as_str())).map(|(k, v)| (k.clone(), v.clone())),
    );
    tags.insert("dc".into(), config.datacenter.clone());
    tags.insert("region".into(), config.region.clone());
    tags.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    if config.server {
        tags.insert("server".into(), "true".into());
    }
    if config.bootstrap_expect > 0 {
        tags.insert("expect".into(), config.bootstrap_expect.to_string());
    }
    tags.insert("rpc_addr".into(), rpc_addr.to_string());
    tags.insert("port".into(), rpc_addr.port().to_string());
    tags
}

fn warn_overridden(config: &Config, published: &BTreeMap<String, String>) {
    let overridden = overridden_tags(config, published);
    if !overridden.is_empty() {
        tracing::warn!(
            "tags {overridden:?} are not published: {FACT_TAGS:?} describe the node (use --datacenter and --region)"
        );
    }
}

/// The user's tags that [`node_tags`] replaced by a different value (worth a warning: such a tag is not what
/// placement sees).
pub fn overridden_tags(config: &Config, published: &BTreeMap<String, String>) -> Vec<String> {
    config
        .tags
        .iter()
        .filter(|(key, value)| FACT_TAGS.contains(&key.as_str()) && published.get(*key) != Some(*value))
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

/// Whether a node's tags satisfy a job's: every key must be present with the value (Dkron's `value:count`
/// form counts only the value part here). Every node satisfies `role: dkron`, Dkron's built-in role, even one
/// with a `role` tag of its own, so jobs written for Dkron (`"role": "dkron:1"`) place on Kairos.
pub fn tags_match(job_tags: &BTreeMap<String, String>, node_tags: &BTreeMap<String, String>) -> bool {
    job_tags.iter().all(|(key, wanted)| {
        let wanted = kairos_model::tag_value(wanted).0;
        node_tags.get(key).is_some_and(|have| have == wanted) || (key == "role" && wanted == DKRON_ROLE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, leading: Option<u64>) -> Member {
        Member {
            name: name.into(),
            server: true,
            raft_id: Some(1),
            rpc_addr: format!("{name}:6868"),
            raft_listener: None,
            http_addr: String::new(),
            gossip_addr: ([127, 0, 0, 1], 8946).into(),
            generation: 1,
            tags: BTreeMap::new(),
            status: Status::Alive,
            raft_initialized: true,
            executors: None,
            clock: None,
            places: None,
            leading,
        }
    }

    #[test]
    fn the_server_leading_the_newest_term_comes_first_and_a_failure_moves_on_until_a_new_term() {
        let agent = Member { server: false, ..server("a", Some(9)) };
        let (order, term) = leader_first(vec![server("s1", None), server("s2", Some(3)), server("s3", Some(4)), agent]);
        assert_eq!(order, ["s3:6868", "s1:6868", "s2:6868"], "s2 still says it leads term 3, s3 leads term 4");
        assert_eq!(term, Some(4));
        assert_eq!(
            leader_first(vec![server("s1", None), server("s2", None)]),
            (vec!["s1:6868".into(), "s2:6868".into()], None)
        );

        let choice = ServerChoice::default();
        let servers = || vec!["leader".to_string(), "f1".to_string(), "f2".to_string()];
        assert_eq!(choice.order_of(servers(), Some(4)), ["leader", "f1", "f2"]);
        choice.failed();
        assert_eq!(choice.order_of(servers(), Some(4)), ["f1", "f2", "leader"], "the leader failed: the next one");
        assert_eq!(choice.order_of(servers(), Some(4)), ["f1", "f2", "leader"], "and it stays");
        assert_eq!(choice.order_of(servers(), Some(5)), ["leader", "f1", "f2"], "a new term: the leader again");
        assert!(choice.order_of(Vec::new(), None).is_empty());
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_job_tag_must_match() {
        let node = tags(&[("pool", "a"), ("zone", "eu")]);
        assert!(tags_match(&tags(&[]), &node));
        assert!(tags_match(&tags(&[("pool", "a")]), &node));
        assert!(tags_match(&tags(&[("pool", "a:2"), ("zone", "eu")]), &node));
        assert!(!tags_match(&tags(&[("pool", "b")]), &node));
        assert!(!tags_match(&tags(&[("pool", "a"), ("gpu", "yes")]), &node));
        assert!(!tags_match(&tags(&[("zone", "eu:x")]), &node));
    }

    fn config(server: bool, user: &[(&str, &str)]) -> Config {
        let args = crate::config::AgentArgs {
            server: Some(server),
            bootstrap_expect: Some(3),
            node_name: Some("n1".into()),
            datacenter: Some("eu-1".into()),
            region: Some("europe".into()),
            tags: user.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            ..Default::default()
        };
        args.resolve().unwrap()
    }

    const RPC: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7)), 6868);

    #[test]
    fn nodes_publish_dkrons_built_in_tags_beside_their_own() {
        let server = node_tags(&config(true, &[("pool", "batch")]), RPC);
        let version = env!("CARGO_PKG_VERSION");
        let expected = tags(&[
            ("dc", "eu-1"),
            ("expect", "3"),
            ("pool", "batch"),
            ("port", "6868"),
            ("region", "europe"),
            ("role", "dkron"),
            ("rpc_addr", "10.0.0.7:6868"),
            ("server", "true"),
            ("version", version),
        ]);
        assert_eq!(server, expected);
        let agent = node_tags(&config(false, &[]), RPC);
        assert_eq!(agent.get("server"), None, "as in Dkron, only servers have the server tag");
        assert_eq!(agent.get("role").map(String::as_str), Some("dkron"));
    }

    #[test]
    fn a_users_role_is_shown_and_matched_but_facts_are_not_overridden() {
        let user = config(false, &[("role", "web"), ("server", "true"), ("dc", "elsewhere"), ("region", "europe")]);
        let published = node_tags(&user, RPC);
        assert_eq!(published.get("role").map(String::as_str), Some("web"));
        assert_eq!(published.get("server"), None, "an agent cannot claim to be a server");
        assert_eq!(published.get("dc").map(String::as_str), Some("eu-1"), "dc comes from --datacenter");
        assert_eq!(overridden_tags(&user, &published), ["dc=elsewhere", "server=true"], "region was equal");
        assert!(tags_match(&tags(&[("role", "web")]), &published));
        assert!(tags_match(&tags(&[("role", "dkron:1")]), &published), "every node is a Dkron node");
        assert!(!tags_match(&tags(&[("role", "db")]), &published));
        assert!(!tags_match(&tags(&[("server", "true")]), &published));
    }

    #[test]
    fn jobs_written_for_dkron_match_kairos_nodes() {
        let server = node_tags(&config(true, &[]), RPC);
        for job in [
            tags(&[("role", "dkron:1")]),
            tags(&[("role", "dkron")]),
            tags(&[("server", "true")]),
            tags(&[("server", "true:1"), ("dc", "eu-1"), ("region", "europe")]),
            tags(&[("version", env!("CARGO_PKG_VERSION"))]),
        ] {
            assert!(tags_match(&job, &server), "{job:?} should match {server:?}");
        }
        assert!(!tags_match(&tags(&[("role", "kairos")]), &server));
        assert!(!tags_match(&tags(&[("dc", "us-1")]), &server));
    }
}
