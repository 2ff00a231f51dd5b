//! Agent configuration: Dkron's flag names, from the command line, `KAIROS_*` environment variables and a config
//! file, in that order of precedence, over built-in defaults.
//!
//! Clap handles flags and environment (every flag `--foo-bar` also reads `KAIROS_FOO_BAR`); the file is read with
//! figment into the same field names, and [`AgentArgs::resolve`] merges the two layers field by field. Keys in the
//! file are the flag names (kebab-case) with node tags under `tags:`, so a `dkron.yml` works when passed with
//! `--config`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use figment::Figment;
use figment::providers::{Format, Json, Toml, Yaml};
use serde::Deserialize;

/// Flags of `kairos agent`. Every value is optional here so we can tell "not given" from "given as default".
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// Run as a server: a Raft voter that stores state and schedules jobs.
    #[arg(long, env = "KAIROS_SERVER", num_args = 0..=1, default_missing_value = "true")]
    pub server: Option<bool>,
    /// Number of servers to wait for before bootstrapping the cluster.
    #[arg(long, env = "KAIROS_BOOTSTRAP_EXPECT")]
    pub bootstrap_expect: Option<u32>,
    /// Name of this node in the cluster (default: the host name).
    #[arg(long, env = "KAIROS_NODE_NAME")]
    pub node_name: Option<String>,
    /// Directory for the Raft log, the state and local execution outputs (default: kairos.data).
    #[arg(long, env = "KAIROS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP API and UI (default :8080; port 0 picks a free port, which is logged).
    #[arg(long, env = "KAIROS_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Address for cluster membership traffic (default 0.0.0.0:8946).
    #[arg(long, env = "KAIROS_BIND_ADDR")]
    pub bind_addr: Option<String>,
    /// Address other nodes use to reach this one (default: the bind address).
    #[arg(long, env = "KAIROS_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Port of the node-to-node RPC listener (default 6868; 0 picks a free port).
    #[arg(long, env = "KAIROS_RPC_PORT")]
    pub rpc_port: Option<u16>,
    /// Port of a server's Raft listener, used only by the other servers (default: the RPC port + 1, or the port
    /// this server used before; 0 picks a free port and keeps it across restarts).
    #[arg(long, env = "KAIROS_RAFT_PORT")]
    pub raft_port: Option<u16>,
    /// Gossip address (host:port) of a node to join at start; repeatable. Fails if none answers.
    #[arg(long, env = "KAIROS_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Like --join, but keeps retrying (see --retry-max and --retry-interval); repeatable.
    #[arg(long, env = "KAIROS_RETRY_JOIN", value_delimiter = ',')]
    pub retry_join: Vec<String>,
    /// How many times --retry-join is tried before giving up; 0 retries forever (default 0).
    #[arg(long, env = "KAIROS_RETRY_MAX")]
    pub retry_max: Option<u32>,
    /// Time between --retry-join attempts (default 30s).
    #[arg(long, env = "KAIROS_RETRY_INTERVAL")]
    pub retry_interval: Option<String>,
    /// Scales the Raft timings (heartbeat 50 ms, election timeout 250-350 ms at 1); 1 to 10.
    #[arg(long, env = "KAIROS_RAFT_MULTIPLIER")]
    pub raft_multiplier: Option<u32>,
    /// A node tag, `key=value`; repeatable.
    #[arg(long = "tag", env = "KAIROS_TAG", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Log level: error, warn, info, debug or trace (default info).
    #[arg(long, env = "KAIROS_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format: `text` (default) or `json` (one JSON object a line, with the node's name and, where they apply,
    /// the job, execution and Raft term).
    #[arg(long, env = "KAIROS_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[arg(long, env = "KAIROS_DATACENTER")]
    pub datacenter: Option<String>,
    #[arg(long, env = "KAIROS_REGION")]
    pub region: Option<String>,
    /// How long a shutdown waits for running executions before killing them (default 30s).
    #[arg(long, env = "KAIROS_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Cap on the stored output of one execution, in bytes (default 1048576).
    #[arg(long, env = "KAIROS_OUTPUT_MAX_BYTES")]
    pub output_max_bytes: Option<u64>,
    /// Bytes all stored outputs of this node may take together; the oldest go first (default 2 GiB).
    #[arg(long, env = "KAIROS_OUTPUT_STORE_MAX_BYTES")]
    pub output_store_max_bytes: Option<u64>,
    /// Free space to keep on the data directory's filesystem: outputs stop being stored before it is reached, so
    /// the Raft log and the state always have room (default 268435456, 256 MiB).
    #[arg(long, env = "KAIROS_DISK_FREE_MIN_BYTES")]
    pub disk_free_min_bytes: Option<u64>,
    /// Executions this node runs at once; more wait in its queue, started in the order of their instants
    /// (default 64 per core, at least 16).
    #[arg(long, env = "KAIROS_MAX_RUNNING")]
    pub max_running: Option<u32>,
    /// Executions due on this node that may wait for a place; past it a run is recorded `skipped` with the reason
    /// (default 16 times --max-running).
    #[arg(long, env = "KAIROS_MAX_QUEUED")]
    pub max_queued: Option<u32>,
    /// Finished executions kept per job unless the job says otherwise (default 100).
    #[arg(long, env = "KAIROS_EXECUTIONS_RETAINED")]
    pub executions_retained: Option<u32>,
    /// Records the audit log keeps (the oldest beyond are dropped; default 100000).
    #[arg(long, env = "KAIROS_AUDIT_RETAINED")]
    pub audit_retained: Option<u64>,
    /// How long a running execution stays alive without a renewal before it turns lost (default 30s).
    #[arg(long, env = "KAIROS_EXECUTION_LEASE")]
    pub execution_lease: Option<String>,
    /// Time between SIGTERM and SIGKILL when a run is cancelled or times out (default 5s).
    #[arg(long, env = "KAIROS_KILL_GRACE")]
    pub kill_grace: Option<String>,
    /// Serve the web UI at /ui/ (default true; `--ui=false` turns it off).
    #[arg(long, env = "KAIROS_UI", num_args = 0..=1, default_missing_value = "true")]
    pub ui: Option<bool>,
    /// Web origins (`scheme://host[:port]`) whose pages may call the API from a browser, for a UI served elsewhere;
    /// comma-separated or repeated (default: none; the built-in UI needs none).
    #[arg(long, env = "KAIROS_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Most a node's clock may be off the leader's (beyond the measurement's error) and still get runs; 0: no
    /// limit (default 10s). Runs start on the leader's instants anyway; this bounds the times nodes record.
    #[arg(long, env = "KAIROS_CLOCK_OFFSET_MAX")]
    pub clock_offset_max: Option<String>,
    /// URL that gets a POST when an execution finishes (Dkron's flag; the leader sends it).
    #[arg(long, env = "KAIROS_WEBHOOK_ENDPOINT")]
    pub webhook_endpoint: Option<String>,
    /// Body of that POST: a Go text/template over Dkron's fields ({{.JobName}}, {{.Success}}, {{.Output}}, …) and
    /// ours (default: a JSON document of the execution).
    #[arg(long, env = "KAIROS_WEBHOOK_PAYLOAD")]
    pub webhook_payload: Option<String>,
    /// A header of that POST, `Name: value`; repeatable.
    #[arg(long = "webhook-headers", env = "KAIROS_WEBHOOK_HEADERS")]
    pub webhook_headers: Vec<String>,
    /// URL that gets a POST when an execution starts (Dkron's flag).
    #[arg(long, env = "KAIROS_PRE_WEBHOOK_ENDPOINT")]
    pub pre_webhook_endpoint: Option<String>,
    /// Body of that POST (as --webhook-payload).
    #[arg(long, env = "KAIROS_PRE_WEBHOOK_PAYLOAD")]
    pub pre_webhook_payload: Option<String>,
    /// A header of that POST, `Name: value`; repeatable.
    #[arg(long = "pre-webhook-headers", env = "KAIROS_PRE_WEBHOOK_HEADERS")]
    pub pre_webhook_headers: Vec<String>,
    /// SMTP server for mail about finished executions, to the job's owner_email (Dkron's flag; the leader sends).
    #[arg(long, env = "KAIROS_MAIL_HOST")]
    pub mail_host: Option<String>,
    /// Its port (default 25); STARTTLS is used whenever the server offers it.
    #[arg(long, env = "KAIROS_MAIL_PORT")]
    pub mail_port: Option<u16>,
    #[arg(long, env = "KAIROS_MAIL_USERNAME")]
    pub mail_username: Option<String>,
    #[arg(long, env = "KAIROS_MAIL_PASSWORD", hide_env_values = true)]
    pub mail_password: Option<String>,
    /// The sender, e.g. `Kairos <kairos@example.com>`.
    #[arg(long, env = "KAIROS_MAIL_FROM")]
    pub mail_from: Option<String>,
    /// The mail's body: a Go text/template as --webhook-payload (default: a readable report).
    #[arg(long, env = "KAIROS_MAIL_PAYLOAD")]
    pub mail_payload: Option<String>,
    /// Put before every subject (default `[Kairos]`).
    #[arg(long, env = "KAIROS_MAIL_SUBJECT_PREFIX")]
    pub mail_subject_prefix: Option<String>,
    /// Cronitor's ping URL with its key (Dkron's flag, e.g. https://cronitor.link/p/KEY): the leader pings
    /// `<endpoint>/<job>?state=run|complete|fail` as executions start and end.
    #[arg(long, env = "KAIROS_CRONITOR_ENDPOINT")]
    pub cronitor_endpoint: Option<String>,
    /// The executors this node runs, comma-separated (default: all of them: shell, http, nats, rabbitmq, redis,
    /// kafka, sql, grpc); jobs of other executors are placed elsewhere.
    #[arg(long, env = "KAIROS_EXECUTORS", value_delimiter = ',')]
    pub executors: Vec<String>,
    /// A directory of executor plugins: each executable `kairos-executor-NAME` runs jobs whose executor is NAME
    /// (the protocol is in the README); they join the executors this node runs.
    #[arg(long, env = "KAIROS_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics (the HTTP API on servers, the RPC listener on agent-only nodes).
    #[arg(long, env = "KAIROS_ENABLE_PROMETHEUS", num_args = 0..=1, default_missing_value = "true")]
    pub enable_prometheus: Option<bool>,
    /// StatsD address (`host:port`) to push metrics to every --statsd-flush-interval (labels folded into names).
    #[arg(long, env = "KAIROS_STATSD_ADDR")]
    pub statsd_addr: Option<String>,
    /// DogStatsD (Datadog agent) address (`host:port`): metrics pushed with their labels as tags.
    #[arg(long, env = "KAIROS_DOG_STATSD_ADDR")]
    pub dog_statsd_addr: Option<String>,
    /// Tags added to every DogStatsD metric, `key:value`; comma-separated or repeated.
    #[arg(long, env = "KAIROS_DOG_STATSD_TAGS", value_delimiter = ',')]
    pub dog_statsd_tags: Vec<String>,
    /// How often metrics are pushed to StatsD and DogStatsD (default 10s).
    #[arg(long, env = "KAIROS_STATSD_FLUSH_INTERVAL")]
    pub statsd_flush_interval: Option<String>,
    /// Key (base64, from `kairos keygen`) that encrypts and authenticates gossip; every node needs the same one.
    #[arg(long, env = "KAIROS_ENCRYPT")]
    pub encrypt: Option<String>,
    /// This node's TLS certificate (PEM): with it the HTTP API is HTTPS and all node-to-node traffic is TLS.
    #[arg(long, env = "KAIROS_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, env = "KAIROS_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The CA (PEM) that signs every node's certificate; nodes verify each other against it.
    #[arg(long, env = "KAIROS_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Mutual TLS: the API and RPC listeners accept only clients with a certificate signed by --trusted-ca-file.
    #[arg(long, env = "KAIROS_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// Require ACL tokens on the HTTP API and UI (config file: `acl: {enabled: true}`, as Dkron Pro); default false.
    #[arg(long, env = "KAIROS_ACL_ENABLED", num_args = 0..=1, default_missing_value = "true")]
    pub acl_enabled: Option<bool>,
    /// Read configuration from this file instead of searching /etc/kairos, $HOME/.kairos and ./config.
    #[arg(long, env = "KAIROS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The same keys as the flags, as they appear in a config file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileConfig {
    server: Option<bool>,
    bootstrap_expect: Option<u32>,
    node_name: Option<String>,
    data_dir: Option<PathBuf>,
    http_addr: Option<String>,
    bind_addr: Option<String>,
    advertise_addr: Option<String>,
    rpc_port: Option<u16>,
    raft_port: Option<u16>,
    tags: Option<BTreeMap<String, String>>,
    join: Option<Vec<String>>,
    retry_join: Option<Vec<String>>,
    retry_max: Option<u32>,
    retry_interval: Option<String>,
    raft_multiplier: Option<u32>,
    log_level: Option<String>,
    log_format: Option<String>,
    datacenter: Option<String>,
    region: Option<String>,
    shutdown_grace: Option<String>,
    output_max_bytes: Option<u64>,
    output_store_max_bytes: Option<u64>,
    disk_free_min_bytes: Option<u64>,
    max_running: Option<u32>,
    max_queued: Option<u32>,
    executions_retained: Option<u32>,
    audit_retained: Option<u64>,
    execution_lease: Option<String>,
    kill_grace: Option<String>,
    ui: Option<bool>,
    cors_allowed_origins: Option<Vec<String>>,
    encrypt: Option<String>,
    enable_prometheus: Option<bool>,
    statsd_addr: Option<String>,
    dog_statsd_addr: Option<String>,
    dog_statsd_tags: Option<Vec<String>>,
    statsd_flush_interval: Option<String>,
    executors: Option<Vec<String>>,
    plugin_dir: Option<PathBuf>,
    clock_offset_max: Option<String>,
    webhook_endpoint: Option<String>,
    webhook_payload: Option<String>,
    webhook_headers: Option<Vec<String>>,
    pre_webhook_endpoint: Option<String>,
    pre_webhook_payload: Option<String>,
    pre_webhook_headers: Option<Vec<String>>,
    mail_host: Option<String>,
    mail_port: Option<u16>,
    mail_username: Option<String>,
    mail_password: Option<String>,
    mail_from: Option<String>,
    mail_payload: Option<String>,
    mail_subject_prefix: Option<String>,
    cronitor_endpoint: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    trusted_ca_file: Option<PathBuf>,
    client_cert_auth: Option<bool>,
    /// Dkron Pro's `acl: {enabled: true}`.
    acl: Option<AclFile>,
}

#[derive(Debug, Default, Deserialize)]
struct AclFile {
    enabled: Option<bool>,
}

/// The resolved configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: bool,
    pub bootstrap_expect: u32,
    pub node_name: String,
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub bind_addr: String,
    pub advertise_addr: Option<String>,
    pub rpc_port: u16,
    /// `--raft-port` as given; see [`Config::raft_bind_addr`] for the default.
    pub raft_port: Option<u16>,
    pub tags: BTreeMap<String, String>,
    pub join: Vec<String>,
    pub retry_join: Vec<String>,
    pub retry_max: u32,
    pub retry_interval: Duration,
    pub raft_multiplier: u32,
    pub log_level: String,
    /// `--log-format`.
    pub log_format: LogFormat,
    pub datacenter: String,
    pub region: String,
    pub shutdown_grace: Duration,
    pub output_max_bytes: u64,
    /// The node's output store: its byte budget and the disk's free-space floor.
    pub output_limits: kairos_agent::OutputLimits,
    /// `--max-running` and `--max-queued`.
    pub run_limits: RunLimits,
    pub executions_retained: u32,
    /// Records the audit log keeps (`--audit-retained`).
    pub audit_retained: u64,
    pub execution_lease: Duration,
    pub kill_grace: Duration,
    /// Serve the web UI at `/ui/`.
    pub ui: bool,
    /// Browser origins allowed to make cross-origin API calls (exact `scheme://host[:port]`, no trailing slash).
    pub cors_allowed_origins: Vec<String>,
    /// Serve `GET /metrics` (see [`crate::metrics`]).
    pub enable_prometheus: bool,
    /// Where metrics are pushed (`--statsd-addr`, `--dog-statsd-*`; see [`crate::statsd`]).
    pub statsd: crate::statsd::Statsd,
    /// The executors this node runs (published in gossip; placement matches it).
    pub executors: Vec<String>,
    /// The executor plugins of `--plugin-dir`.
    pub plugins: kairos_agent::plugin::Plugins,
    /// `--clock-offset-max` (zero: no limit).
    pub clock_offset_max: Duration,
    /// `--webhook-*` and `--pre-webhook-*`.
    pub webhooks: crate::notify::Webhooks,
    /// Mail about finished executions (`--mail-*`).
    pub mail: Option<crate::notify::Mail>,
    /// `--cronitor-endpoint`.
    pub cronitor_endpoint: Option<String>,
    /// The gossip key (`--encrypt`), when gossip is encrypted.
    pub encrypt: Option<crate::gossip_key::GossipKey>,
    /// TLS files (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`), when TLS is on.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Every API and UI request must carry a token its policies allow (`/health` and, until it happened, the ACL
    /// bootstrap excepted).
    pub acl_enabled: bool,
    /// The file the configuration was read from, if any.
    pub config_file: Option<PathBuf>,
}

const CONFIG_NAMES: [&str; 4] = ["kairos.yml", "kairos.yaml", "kairos.toml", "kairos.json"];

impl AgentArgs {
    /// Merge flags and environment (already in `self`) over the config file over the defaults.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let config_file = locate_config_file(self.config.as_deref())?;
        let file = match &config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let tags = merged_tags(file.tags.unwrap_or_default(), &self.tags)?;
        let node_name = checked_node_name(self.node_name.or(file.node_name).unwrap_or_else(default_node_name))?;
        let http_addr = self.http_addr.or(file.http_addr).unwrap_or_else(|| ":8080".into());
        let log_level = checked_log_level(self.log_level.or(file.log_level).unwrap_or_else(|| "info".into()))?;
        let log_format = LogFormat::parse(self.log_format.or(file.log_format).as_deref().unwrap_or("text"))?;
        let advertise_addr = self.advertise_addr.or(file.advertise_addr);
        if let Some(text) = &advertise_addr
            && advertise_host(text).is_none()
        {
            bail!("--advertise-addr: '{text}' is not an IP address (optionally with a port)");
        }
        let raft_multiplier = self.raft_multiplier.or(file.raft_multiplier).unwrap_or(1);
        if !(1..=10).contains(&raft_multiplier) {
            bail!("--raft-multiplier: {raft_multiplier} is not between 1 and 10");
        }
        let join = seeds("--join", if self.join.is_empty() { file.join.unwrap_or_default() } else { self.join })?;
        let retry_join = seeds(
            "--retry-join",
            if self.retry_join.is_empty() { file.retry_join.unwrap_or_default() } else { self.retry_join },
        )?;
        let cors_allowed_origins = origins(if self.cors_allowed_origins.is_empty() {
            file.cors_allowed_origins.unwrap_or_default()
        } else {
            self.cors_allowed_origins
        })?;
        let tls = crate::tls::TlsFiles::from_flags(
            self.cert_file.or(file.cert_file),
            self.key_file.or(file.key_file),
            self.trusted_ca_file.or(file.trusted_ca_file),
            self.client_cert_auth.or(file.client_cert_auth).unwrap_or(false),
        )?;
        let encrypt = self.encrypt.or(file.encrypt).map(|k| crate::gossip_key::GossipKey::parse(&k)).transpose()?;
        let plugins = match self.plugin_dir.or(file.plugin_dir) {
            Some(dir) => kairos_agent::plugin::Plugins::scan(&dir).map_err(|e| anyhow::anyhow!(e))?,
            None => kairos_agent::plugin::Plugins::default(),
        };
        let executors = checked_executors(
            &plugins,
            if self.executors.is_empty() { file.executors.unwrap_or_default() } else { self.executors },
        )?;
        let acl_enabled = self.acl_enabled.or(file.acl.and_then(|acl| acl.enabled)).unwrap_or(false);
        require_node_credentials(acl_enabled, encrypt.is_some(), tls.as_ref())?;
        let webhooks = crate::notify::Webhooks {
            post: crate::notify::Webhook::from_flags(
                "--webhook",
                self.webhook_endpoint.or(file.webhook_endpoint),
                self.webhook_payload.or(file.webhook_payload),
                non_empty(self.webhook_headers).or(file.webhook_headers).unwrap_or_default(),
            )?,
            pre: crate::notify::Webhook::from_flags(
                "--pre-webhook",
                self.pre_webhook_endpoint.or(file.pre_webhook_endpoint),
                self.pre_webhook_payload.or(file.pre_webhook_payload),
                non_empty(self.pre_webhook_headers).or(file.pre_webhook_headers).unwrap_or_default(),
            )?,
        };
        let mail = crate::notify::Mail::from_flags(crate::notify::MailFlags {
            host: self.mail_host.or(file.mail_host),
            port: self.mail_port.or(file.mail_port),
            username: self.mail_username.or(file.mail_username),
            password: self.mail_password.or(file.mail_password),
            from: self.mail_from.or(file.mail_from),
            payload: self.mail_payload.or(file.mail_payload),
            subject_prefix: self.mail_subject_prefix.or(file.mail_subject_prefix),
        })?;
        let cronitor_endpoint = match self.cronitor_endpoint.or(file.cronitor_endpoint).filter(|e| !e.trim().is_empty())
        {
            Some(endpoint) => {
                let url = reqwest::Url::parse(endpoint.trim())
                    .map_err(|err| anyhow::anyhow!("--cronitor-endpoint: '{endpoint}': {err}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    bail!("--cronitor-endpoint: '{endpoint}' is not an http or https URL");
                }
                Some(endpoint.trim().to_string())
            }
            None => None,
        };
        let statsd = crate::statsd::Statsd::from_flags(
            self.statsd_addr.or(file.statsd_addr),
            self.dog_statsd_addr.or(file.dog_statsd_addr),
            non_empty(self.dog_statsd_tags).or(file.dog_statsd_tags).unwrap_or_default(),
            duration(
                "--statsd-flush-interval",
                self.statsd_flush_interval.or(file.statsd_flush_interval),
                crate::statsd::FLUSH_INTERVAL_DEFAULT,
            )?,
        )?;
        Ok(Config {
            statsd,
            log_format,
            webhooks,
            mail,
            cronitor_endpoint,
            clock_offset_max: duration("--clock-offset-max", self.clock_offset_max.or(file.clock_offset_max), "10s")?,
            executors,
            plugins,
            enable_prometheus: self.enable_prometheus.or(file.enable_prometheus).unwrap_or(false),
            encrypt,
            tls,
            cors_allowed_origins,
            acl_enabled,
            join,
            retry_join,
            retry_max: self.retry_max.or(file.retry_max).unwrap_or(0),
            retry_interval: duration("--retry-interval", self.retry_interval.or(file.retry_interval), "30s")?,
            raft_multiplier,
            server: self.server.or(file.server).unwrap_or(false),
            bootstrap_expect: self.bootstrap_expect.or(file.bootstrap_expect).unwrap_or(0),
            node_name,
            data_dir: self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("kairos.data")),
            http_addr: parse_listen_addr("--http-addr", &http_addr)?,
            bind_addr: self.bind_addr.or(file.bind_addr).unwrap_or_else(|| "0.0.0.0:8946".into()),
            advertise_addr,
            rpc_port: self.rpc_port.or(file.rpc_port).unwrap_or(6868),
            raft_port: self.raft_port.or(file.raft_port),
            tags,
            log_level,
            datacenter: self.datacenter.or(file.datacenter).unwrap_or_else(|| "dc1".into()),
            region: self.region.or(file.region).unwrap_or_else(|| "global".into()),
            shutdown_grace: duration("--shutdown-grace", self.shutdown_grace.or(file.shutdown_grace), "30s")?,
            output_max_bytes: self.output_max_bytes.or(file.output_max_bytes).unwrap_or(1024 * 1024),
            output_limits: kairos_agent::OutputLimits {
                store_bytes_max: self
                    .output_store_max_bytes
                    .or(file.output_store_max_bytes)
                    .unwrap_or(kairos_agent::STORE_BYTES_MAX_DEFAULT),
                disk_free_bytes_min: self
                    .disk_free_min_bytes
                    .or(file.disk_free_min_bytes)
                    .unwrap_or(kairos_agent::DISK_FREE_BYTES_MIN_DEFAULT),
            },
            run_limits: run_limits(self.max_running.or(file.max_running), self.max_queued.or(file.max_queued))?,
            executions_retained: self
                .executions_retained
                .or(file.executions_retained)
                .unwrap_or(kairos_model::job::EXECUTIONS_RETAINED_DEFAULT)
                .max(1),
            audit_retained: self.audit_retained.or(file.audit_retained).unwrap_or(AUDIT_RETAINED_DEFAULT).max(1),
            execution_lease: duration("--execution-lease", self.execution_lease.or(file.execution_lease), "30s")?,
            kill_grace: duration("--kill-grace", self.kill_grace.or(file.kill_grace), "5s")?,
            ui: self.ui.or(file.ui).unwrap_or(true),
            config_file,
        })
    }
}

/// The configuration file `--config` names (which must exist), else the first one found in the usual places.
fn locate_config_file(flag: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    match flag {
        Some(path) if !path.is_file() => bail!("--config: file '{}' does not exist", path.display()),
        Some(path) => Ok(Some(path.to_path_buf())),
        None => Ok(search_config_file()),
    }
}

/// The file's tags with the `--tag key=value` flags over them.
fn merged_tags(mut tags: BTreeMap<String, String>, flags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    for tag in flags {
        let (k, v) = tag
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--tag: '{tag}' is not key=value"))?;
        tags.insert(k.to_string(), v.to_string());
    }
    Ok(tags)
}

/// The name is part of execution ids (a copy of a slot on several nodes is `<id>@<node>`), URLs and file names:
/// letters, digits, '.', '_' and '-' only (any host name qualifies).
fn checked_node_name(node_name: String) -> anyhow::Result<String> {
    if node_name.is_empty() {
        bail!("--node-name: must not be empty");
    }
    if let Some(c) = node_name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        bail!("--node-name: '{node_name}' contains '{c}'; use letters, digits, '.', '_' and '-'");
    }
    Ok(node_name)
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (tracing's default format).
    Text,
    /// One JSON object a line.
    Json,
}

impl LogFormat {
    fn parse(text: &str) -> anyhow::Result<LogFormat> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => bail!("--log-format: '{other}' is not one of text, json"),
        }
    }
}

fn checked_log_level(log_level: String) -> anyhow::Result<String> {
    if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
        bail!("--log-level: '{log_level}' is not one of error, warn, info, debug, trace");
    }
    Ok(log_level)
}

/// The executors this node runs: all of them (built in and plugins) unless listed; an unknown name is an error
/// listing the known ones.
fn checked_executors(plugins: &kairos_agent::plugin::Plugins, listed: Vec<String>) -> anyhow::Result<Vec<String>> {
    let known: Vec<String> =
        kairos_agent::EXECUTORS.iter().copied().chain(plugins.names()).map(str::to_string).collect();
    let executors: Vec<String> =
        if listed.is_empty() { known.clone() } else { listed.into_iter().map(|e| e.trim().to_string()).collect() };
    if let Some(unknown) = executors.iter().find(|e| !known.contains(e)) {
        bail!("--executors: unknown executor '{unknown}'; known: {}", known.join(", "));
    }
    Ok(executors)
}

/// With ACL on, node-to-node routes must require node credentials too: a cluster key or mutual TLS.
fn require_node_credentials(
    acl_enabled: bool,
    cluster_key: bool,
    tls: Option<&crate::tls::TlsFiles>,
) -> anyhow::Result<()> {
    if acl_enabled && !cluster_key && !tls.is_some_and(|t| t.client_cert_auth) {
        bail!(
            "--acl-enabled: node-to-node routes need node credentials too: a cluster key (--encrypt, from \
             `kairos keygen`) or mutual TLS (--cert-file, --key-file, --trusted-ca-file, --client-cert-auth)"
        );
    }
    Ok(())
}

impl Config {
    /// The RPC listener's address: the `--bind-addr` host with `--rpc-port`.
    pub fn rpc_bind_addr(&self) -> anyhow::Result<SocketAddr> {
        self.bind_host_with(self.rpc_port)
    }

    /// A server's Raft listener: the `--bind-addr` host with `--raft-port`; without it (or with 0: a free port),
    /// the port this server's Raft listened on before (`used`, kept in the data directory), else the RPC port + 1
    /// (0 with an RPC port of 0: a free port).
    pub fn raft_bind_addr(&self, used: Option<u16>) -> anyhow::Result<SocketAddr> {
        let default = if self.rpc_port == 0 { 0 } else { self.rpc_port.checked_add(1).unwrap_or(0) };
        let port = match self.raft_port {
            Some(0) => used.unwrap_or(0),
            Some(port) => port,
            None => used.unwrap_or(default),
        };
        self.bind_host_with(port)
    }

    fn bind_host_with(&self, port: u16) -> anyhow::Result<SocketAddr> {
        let host = self.bind_addr.rsplit_once(':').map_or(self.bind_addr.as_str(), |(h, _)| h);
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        format!("{host}:{port}").parse().with_context(|| format!("--bind-addr: '{}' is not host:port", self.bind_addr))
    }

    /// The address peers use for a listener on the `--bind-addr` host (RPC): the node's advertise IP
    /// ([`Config::advertise_ip`]) with the bound port.
    pub fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        SocketAddr::new(self.advertise_ip(), bound.port())
    }

    /// The IP other nodes and users reach this node at: the `--advertise-addr`'s; else the `--bind-addr` host's
    /// when it names one; else (bound to every interface) the address of the interface that routes outward, as
    /// Dkron picks the host's private IP; loopback when there is none. The gossip and RPC listeners bind the
    /// `--bind-addr` host, so this IP reaches both.
    pub fn advertise_ip(&self) -> IpAddr {
        let bind = bind_ip(&self.bind_addr);
        choose_advertise_ip(self.advertise_addr.as_deref(), bind, || outward_ip(bind.is_ipv6()))
    }
}

/// The HTTP API's address as other nodes and users reach it (`http_addr` in `/v1/members`): the bound one, or,
/// when bound to every interface (`--http-addr :8080`), the node's advertise IP with the bound port.
pub fn public_http_addr(bound: SocketAddr, advertise_ip: IpAddr) -> SocketAddr {
    if bound.ip().is_unspecified() { SocketAddr::new(advertise_ip, bound.port()) } else { bound }
}

fn choose_advertise_ip(advertise: Option<&str>, bind: IpAddr, outward: impl FnOnce() -> Option<IpAddr>) -> IpAddr {
    if let Some(ip) = advertise.and_then(advertise_host) {
        return ip;
    }
    if !bind.is_unspecified() {
        return bind;
    }
    outward().unwrap_or(if bind.is_ipv6() { IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]) } else { [127, 0, 0, 1].into() })
}

/// The IP of an `--advertise-addr` (`10.0.0.1`, `10.0.0.1:8946`, `[fd00::1]:8946`, `fd00::1`).
fn advertise_host(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let host = text.rsplit_once(':').map_or(text, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// The host part of `--bind-addr` as an IP (`:8946` and an unresolvable host mean every interface).
fn bind_ip(text: &str) -> IpAddr {
    let host = text.rsplit_once(':').map_or(text, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return [0, 0, 0, 0].into();
    }
    host.parse()
        .ok()
        .or_else(|| (host, 0).to_socket_addrs().ok()?.next().map(|a| a.ip()))
        .unwrap_or([0, 0, 0, 0].into())
}

/// The source address the host would use to reach the outside world. Connecting a UDP socket sends nothing; it
/// only picks the route (to a documentation address, RFC 5737 / RFC 3849). Looked up once per process, so every
/// listener advertises the same IP.
fn outward_ip(ipv6: bool) -> Option<IpAddr> {
    static V4: OnceLock<Option<IpAddr>> = OnceLock::new();
    static V6: OnceLock<Option<IpAddr>> = OnceLock::new();
    let (cell, local, remote) =
        if ipv6 { (&V6, "[::]:0", "[2001:db8::1]:9") } else { (&V4, "0.0.0.0:0", "192.0.2.1:9") };
    *cell.get_or_init(|| {
        let socket = UdpSocket::bind(local).ok()?;
        socket.connect(remote).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
    })
}

/// Gossip seed addresses: `host:port`, or a bare host meaning the default gossip port 8946.
fn seeds(flag: &str, addrs: Vec<String>) -> anyhow::Result<Vec<String>> {
    addrs
        .into_iter()
        .map(|addr| {
            let addr = addr.trim().to_string();
            match addr.rsplit_once(':') {
                _ if addr.is_empty() => bail!("{flag}: an empty address"),
                Some((host, port)) if !host.is_empty() && !host.ends_with(':') => {
                    port.parse::<u16>().map_err(|_| anyhow::anyhow!("{flag}: '{addr}' has no valid port"))?;
                    Ok(addr)
                }
                _ if addr.starts_with('[') || addr.contains("::") => bail!("{flag}: '{addr}' needs a port"),
                _ => Ok(format!("{addr}:8946")),
            }
        })
        .collect()
}

/// `--cors-allowed-origins`: each an origin as browsers send it in the `Origin` header (`https://ops.example.com`,
/// `http://localhost:3000`), so it can be compared exactly.
fn origins(values: Vec<String>) -> anyhow::Result<Vec<String>> {
    let flag = "--cors-allowed-origins";
    values
        .into_iter()
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
        .map(|origin| {
            let Some((scheme, rest)) = origin.split_once("://") else {
                bail!("{flag}: '{origin}' is not an origin like https://ops.example.com (scheme://host[:port])");
            };
            if !matches!(scheme, "http" | "https") {
                bail!("{flag}: '{origin}' has scheme '{scheme}'; use http or https");
            }
            if rest.is_empty() || rest.contains(['/', '?', '#', '*']) {
                bail!("{flag}: '{origin}' must be scheme://host[:port] exactly, without a path or wildcard");
            }
            Ok(origin.to_ascii_lowercase())
        })
        .collect()
}

/// A repeatable flag given at least once, else `None` (so the config file's list applies).
fn non_empty(values: Vec<String>) -> Option<Vec<String>> {
    (!values.is_empty()).then_some(values)
}

/// Places per core by default: runs mostly wait on something (a child process, the network), so a core serves
/// many; the bound is there to keep processes, memory and descriptors finite when runs pile up.
const RUNNING_PER_CORE: usize = 64;
const RUNNING_MIN_DEFAULT: usize = 16;
/// The queue's default length, in multiples of `--max-running`.
const QUEUED_PER_PLACE: usize = 16;

/// Records the audit log keeps unless `--audit-retained` says otherwise.
pub const AUDIT_RETAINED_DEFAULT: u64 = 100_000;

/// The node's bounds on runs: `--max-running` and `--max-queued` (the worker keeps them).
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    pub max_running: usize,
    pub max_queued: usize,
}

/// `--max-running` and `--max-queued`, or their defaults; zero is refused (a node that cannot run anything is a
/// node that should not take orders: use `--executors` or tags).
fn run_limits(max_running: Option<u32>, max_queued: Option<u32>) -> anyhow::Result<RunLimits> {
    if max_running == Some(0) {
        bail!("--max-running: must be at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let max_running = max_running.map_or((RUNNING_PER_CORE * cores).max(RUNNING_MIN_DEFAULT), |n| n as usize);
    let max_queued = max_queued.map_or(QUEUED_PER_PLACE * max_running, |n| n as usize);
    Ok(RunLimits { max_running, max_queued })
}

fn duration(flag: &str, value: Option<String>, default: &str) -> anyhow::Result<Duration> {
    let text = value.unwrap_or_else(|| default.to_string());
    kairos_schedule::parse_duration(&text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// The host name, with any character a node name may not hold (see `resolve`) replaced by '-', so the default
/// always starts.
fn default_node_name() -> String {
    let host = hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    node_name_from_host(&host)
}

fn node_name_from_host(host: &str) -> String {
    let name: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).collect();
    if name.is_empty() { "kairos".into() } else { name }
}

fn search_config_file() -> Option<PathBuf> {
    let mut dirs = vec![PathBuf::from("/etc/kairos")];
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".kairos"));
    }
    dirs.push(PathBuf::from("./config"));
    dirs.iter().flat_map(|dir| CONFIG_NAMES.iter().map(move |name| dir.join(name))).find(|p| p.is_file())
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("yml");
    let figment = match ext {
        "toml" => Figment::from(Toml::file_exact(path)),
        "json" => Figment::from(Json::file_exact(path)),
        _ => Figment::from(Yaml::file_exact(path)),
    };
    figment.extract().with_context(|| format!("config file '{}'", path.display()))
}

/// Accept Dkron's `:8080` (all interfaces) as well as `host:port`.
pub fn parse_listen_addr(flag: &str, text: &str) -> anyhow::Result<SocketAddr> {
    let full = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_string() };
    full.parse().with_context(|| format!("{flag}: '{text}' is not an address like :8080 or 127.0.0.1:8080"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kairos.yml");
        std::fs::write(&file, "node-name: from-file\nhttp-addr: 127.0.0.1:9000\ntags:\n  role: web\n").unwrap();
        let args = AgentArgs {
            node_name: Some("from-flag".into()),
            config: Some(file),
            tags: vec!["zone=a".into()],
            ..AgentArgs::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.node_name, "from-flag");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(config.tags.get("role").map(String::as_str), Some("web"));
        assert_eq!(config.tags.get("zone").map(String::as_str), Some("a"));
        assert_eq!(config.rpc_port, 6868);
        assert_eq!(config.data_dir, PathBuf::from("kairos.data"));
    }

    #[test]
    fn the_raft_port_is_the_flag_else_the_kept_one_else_the_rpc_port_plus_one() {
        let port = |rpc_port: u16, raft_port: Option<u16>, used: Option<u16>| {
            let mut config = AgentArgs::default().resolve().unwrap();
            (config.rpc_port, config.raft_port) = (rpc_port, raft_port);
            config.raft_bind_addr(used).unwrap().port()
        };
        assert_eq!(port(6868, None, None), 6869);
        assert_eq!(port(6868, None, Some(7000)), 7000, "the port of the last start");
        assert_eq!(port(6868, Some(7100), Some(7000)), 7100, "the flag wins");
        assert_eq!(port(0, None, None), 0, "RPC port 0: a free port");
        assert_eq!(port(0, None, Some(7000)), 7000, "chosen freely once, then kept");
        assert_eq!(port(6868, Some(0), None), 0, "--raft-port 0: a free port");
        assert_eq!(port(6868, Some(0), Some(7000)), 7000, "chosen freely once, then kept");
    }

    #[test]
    fn acl_is_off_by_default_and_read_from_dkron_pros_key_or_the_flag() {
        assert!(!AgentArgs::default().resolve().unwrap().acl_enabled);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dkron.yml");
        std::fs::write(&file, "acl:\n  enabled: true\n").unwrap();
        let without_key = AgentArgs { config: Some(file.clone()), ..AgentArgs::default() };
        let refused = without_key.resolve().unwrap_err().to_string();
        assert!(refused.starts_with("--acl-enabled: node-to-node routes need node credentials"), "{refused}");
        std::fs::write(&file, format!("acl:\n  enabled: true\nencrypt: {}\n", crate::gossip_key::keygen().unwrap()))
            .unwrap();
        let from_file = AgentArgs { config: Some(file.clone()), ..AgentArgs::default() };
        assert!(from_file.resolve().unwrap().acl_enabled);
        let flag_wins = AgentArgs { config: Some(file), acl_enabled: Some(false), ..AgentArgs::default() };
        assert!(!flag_wins.resolve().unwrap().acl_enabled);
    }

    #[test]
    fn a_dkron_yml_with_notification_and_metrics_keys_is_read_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dkron.yml");
        let yml = "server: true\nbootstrap-expect: 1\n\
                   webhook-endpoint: https://hooks.example.com/done\n\
                   webhook-payload: \"{{.JobName}} {{.Success}}\"\n\
                   webhook-headers:\n  - \"X-Token: abc\"\n\
                   pre-webhook-endpoint: https://hooks.example.com/start\n\
                   mail-host: smtp.example.com\nmail-port: 587\nmail-username: kairos\nmail-password: secret\n\
                   mail-from: kairos@example.com\nmail-payload: \"{{.JobName}} ended\"\nmail-subject-prefix: \"[cron]\"\n\
                   cronitor-endpoint: https://cronitor.link/p/KEY\n\
                   enable-prometheus: true\nstatsd-addr: 127.0.0.1:8125\n";
        std::fs::write(&file, yml).unwrap();
        let config = AgentArgs { config: Some(file), ..AgentArgs::default() }.resolve().unwrap();
        let post = config.webhooks.post.as_ref().unwrap();
        assert_eq!(post.endpoint, "https://hooks.example.com/done");
        assert_eq!(post.payload.as_deref(), Some("{{.JobName}} {{.Success}}"));
        assert_eq!(post.headers, [("X-Token".to_string(), "abc".to_string())]);
        assert_eq!(config.webhooks.pre.as_ref().unwrap().endpoint, "https://hooks.example.com/start");
        let mail = config.mail.as_ref().unwrap();
        assert_eq!((mail.host.as_str(), mail.port), ("smtp.example.com", 587));
        assert_eq!(config.cronitor_endpoint.as_deref(), Some("https://cronitor.link/p/KEY"));
        assert!(config.enable_prometheus);
    }

    #[test]
    fn toml_and_json_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("kairos.toml");
        std::fs::write(&toml, "server = true\nbootstrap-expect = 1\n").unwrap();
        let config = AgentArgs { config: Some(toml), ..AgentArgs::default() }.resolve().unwrap();
        assert!(config.server);
        assert_eq!(config.bootstrap_expect, 1);
        let json = dir.path().join("dkron.json");
        std::fs::write(&json, r#"{"rpc-port": 7000}"#).unwrap();
        let config = AgentArgs { config: Some(json), ..AgentArgs::default() }.resolve().unwrap();
        assert_eq!(config.rpc_port, 7000);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let bad = [
            AgentArgs { http_addr: Some("nope".into()), ..AgentArgs::default() },
            AgentArgs { tags: vec!["novalue".into()], ..AgentArgs::default() },
            AgentArgs { log_level: Some("loud".into()), ..AgentArgs::default() },
            AgentArgs { log_format: Some("xml".into()), ..AgentArgs::default() },
            AgentArgs { statsd_addr: Some("nonsense".into()), ..AgentArgs::default() },
            AgentArgs {
                dog_statsd_tags: vec!["a b".into()],
                dog_statsd_addr: Some("h:1".into()),
                ..AgentArgs::default()
            },
            AgentArgs { shutdown_grace: Some("soon".into()), ..AgentArgs::default() },
            AgentArgs { config: Some("/nonexistent/kairos.yml".into()), ..AgentArgs::default() },
            AgentArgs { node_name: Some("web@1".into()), ..AgentArgs::default() },
            AgentArgs { node_name: Some("a/b".into()), ..AgentArgs::default() },
        ];
        for args in bad {
            let err = args.clone().resolve().unwrap_err().to_string();
            assert!(err.starts_with("--"), "{err}");
        }
    }

    #[test]
    fn join_addresses_default_to_the_gossip_port() {
        let args = AgentArgs {
            join: vec!["10.0.0.1".into()],
            retry_join: vec!["a.example:9000".into()],
            ..AgentArgs::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.join, ["10.0.0.1:8946"]);
        assert_eq!(config.retry_join, ["a.example:9000"]);
        let bad = AgentArgs { retry_join: vec!["host:port".into()], ..AgentArgs::default() };
        assert!(bad.resolve().unwrap_err().to_string().starts_with("--retry-join"));
        let bad = AgentArgs { raft_multiplier: Some(0), ..AgentArgs::default() };
        assert!(bad.resolve().unwrap_err().to_string().starts_with("--raft-multiplier"));
    }

    #[test]
    fn the_default_node_name_is_the_host_name_made_safe() {
        assert_eq!(node_name_from_host("web-1.example.com"), "web-1.example.com");
        assert_eq!(node_name_from_host("büro pc@home"), "b-ro-pc-home");
        assert_eq!(node_name_from_host(""), "kairos");
        assert_eq!(default_node_name(), node_name_from_host(&hostname::get().unwrap().into_string().unwrap()));
    }

    #[test]
    fn the_advertise_ip_is_the_given_one_else_the_bound_one_else_the_outward_one() {
        let outward = || Some(IpAddr::from([10, 1, 2, 3]));
        let none = || None;
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(choose_advertise_ip(Some("192.168.0.9"), v4("0.0.0.0"), outward), v4("192.168.0.9"));
        assert_eq!(choose_advertise_ip(Some("192.168.0.9:7946"), v4("127.0.0.1"), outward), v4("192.168.0.9"));
        assert_eq!(choose_advertise_ip(Some("[fd00::1]:7946"), v4("0.0.0.0"), outward), v4("fd00::1"));
        assert_eq!(choose_advertise_ip(None, v4("172.16.0.4"), outward), v4("172.16.0.4"));
        assert_eq!(choose_advertise_ip(None, v4("0.0.0.0"), outward), v4("10.1.2.3"));
        assert_eq!(choose_advertise_ip(None, v4("0.0.0.0"), none), v4("127.0.0.1"));
        assert_eq!(choose_advertise_ip(None, v4("::"), none), v4("::1"));
        assert_eq!(bind_ip(":8946"), v4("0.0.0.0"));
        assert_eq!(bind_ip("127.0.0.1:0"), v4("127.0.0.1"));
        assert_eq!(bind_ip("[::1]:8946"), v4("::1"));
        let bad = AgentArgs { advertise_addr: Some("not an ip".into()), ..AgentArgs::default() };
        assert!(bad.resolve().unwrap_err().to_string().starts_with("--advertise-addr"));
    }

    #[test]
    fn an_api_bound_to_every_interface_is_shown_at_the_advertise_ip() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let advertise: IpAddr = [10, 0, 0, 7].into();
        assert_eq!(public_http_addr(addr("0.0.0.0:8080"), advertise), addr("10.0.0.7:8080"));
        assert_eq!(public_http_addr(addr("[::]:8080"), advertise), addr("10.0.0.7:8080"));
        assert_eq!(public_http_addr(addr("127.0.0.1:8080"), advertise), addr("127.0.0.1:8080"), "bound to one IP");
        assert_eq!(public_http_addr(addr("192.168.1.4:80"), advertise), addr("192.168.1.4:80"));
        let config = AgentArgs {
            http_addr: Some(":0".into()),
            bind_addr: Some("172.16.0.4:8946".into()),
            ..AgentArgs::default()
        }
        .resolve()
        .unwrap();
        let bound = SocketAddr::new(config.http_addr.ip(), 41234);
        assert_eq!(public_http_addr(bound, config.advertise_ip()), addr("172.16.0.4:41234"), "the gossip bind IP");
        let with_advertise =
            AgentArgs { advertise_addr: Some("192.168.7.7".into()), ..AgentArgs::default() }.resolve().unwrap();
        assert_eq!(with_advertise.advertise_ip(), IpAddr::from([192, 168, 7, 7]));
    }

    #[test]
    fn dkron_style_port_only_address_binds_all_interfaces() {
        assert_eq!(parse_listen_addr("--http-addr", ":8080").unwrap().to_string(), "0.0.0.0:8080");
    }
}
