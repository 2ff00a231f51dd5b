//! The end-to-end harness: start the real `kairos` binary on free ports, talk to it over HTTP, stop it
//! gently (SIGTERM) or not (SIGKILL), and start it again on the same data directory.
//!
//! Every test owns its server and its temporary data directory, so tests run in parallel. Nothing here
//! sleeps for correctness: [`wait_until`] polls a condition until a deadline and fails with the name of
//! what it waited for. When a test panics, the server's log (stdout and stderr, across restarts) is printed.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

pub use jiff::Timestamp;
pub use kairos_testkit::{Client, Log, Reply, wait_until};
use kairos_testkit::{Listener, Process, Signal, kairos_command};
use serde::Deserialize;
pub use serde_json::{Value, json};
use tempfile::TempDir;

/// The binary under test, built by Cargo for this test run.
pub const KAIROS_BIN: &str = env!("CARGO_BIN_EXE_kairos");
/// A cluster key for tests that need one (`--encrypt`; ACL requires node credentials): base64 of 32 bytes.
pub const TEST_CLUSTER_KEY: &str = "a2Fpcm9zLXRlc3QtY2x1c3Rlci1rZXktMzItYnl0ZXM=";

/// How long a server may take to print its listening line and become leader.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a stopped server may take to exit before the harness gives up.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// How long a dropped server may take to stop its runs after SIGTERM before it is killed.
const DROP_GRACE: Duration = Duration::from_secs(8);
/// Per-request timeout of the API client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the server log printed when a test fails.
const LOG_LINES_ON_FAILURE: usize = 300;

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Go's zero time, which Dkron's API (and ours) shows in a `time.Time` field that holds no instant.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A Dkron `time.Time` field: [`GO_ZERO_TIME`] (or, leniently, `null`) reads as `None`.
pub fn dkron_time<'de, D: serde::Deserializer<'de>>(from: D) -> Result<Option<Timestamp>, D::Error> {
    let instant = Option::<Timestamp>::deserialize(from)?;
    Ok(instant.filter(|t| t.to_string() != GO_ZERO_TIME))
}

/// An execution as the API shows it (the wire contract: field names and value spellings).
#[derive(Debug, Clone, Deserialize)]
pub struct Exec {
    pub id: String,
    pub job_name: String,
    pub scheduled_at: Timestamp,
    #[serde(deserialize_with = "dkron_time")]
    pub started_at: Option<Timestamp>,
    #[serde(deserialize_with = "dkron_time")]
    pub finished_at: Option<Timestamp>,
    pub status: String,
    pub exit_code: Option<i32>,
    pub attempt: u32,
    pub trigger: String,
    #[serde(default)]
    pub output: String,
    pub success: bool,
    pub node_name: String,
    #[serde(default)]
    pub error: Option<String>,
}

impl Exec {
    pub fn is_active(&self) -> bool {
        self.status == "pending" || self.status == "running"
    }

    pub fn is_final(&self) -> bool {
        !self.is_active()
    }
}

/// One line per execution (slot, attempt, trigger, status, start, finish), for failure messages.
pub fn summary(execs: &[Exec]) -> String {
    let line = |e: &Exec| {
        let at = |t: Option<Timestamp>| t.map_or("-".to_string(), |t| t.to_string());
        format!(
            "  {} #{} {} {} started {} finished {}",
            e.scheduled_at,
            e.attempt,
            e.trigger,
            e.status,
            at(e.started_at),
            at(e.finished_at)
        )
    };
    execs.iter().map(line).collect::<Vec<_>>().join("\n")
}

/// Count executions by status.
pub fn by_status(execs: &[Exec]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in execs {
        *counts.entry(e.status.clone()).or_insert(0) += 1;
    }
    counts
}

pub fn count(execs: &[Exec], status: &str) -> usize {
    execs.iter().filter(|e| e.status == status).count()
}

/// A shell job (Dkron's JSON) running `command` through `/bin/sh -c`.
pub fn shell_job(name: &str, schedule: &str, command: &str) -> Value {
    json!({
        "name": name,
        "schedule": schedule,
        "executor": "shell",
        "executor_config": {"command": command, "shell": "true"},
    })
}

/// `base` with the fields of `extra` added or replaced.
pub fn with(mut base: Value, extra: Value) -> Value {
    let (Some(target), Value::Object(fields)) = (base.as_object_mut(), extra) else {
        panic!("with() takes two JSON objects");
    };
    target.extend(fields);
    base
}

/// Whether a process exists and is not a zombie (a zombie has already exited; only its parent must reap it).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name, which may itself contain spaces.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Read a PID a job's command wrote into a file, once it is there.
pub async fn read_pid(path: &Path) -> i32 {
    wait_until(&format!("{} holds a pid", path.display()), secs(20), async || {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    })
    .await
}

/// Kill a leftover process (a run orphaned by a `kill -9` of the server), ignoring one that is gone.
pub fn kill_leftover(pid: i32) {
    // SAFETY: kill(2) with a pid and a signal has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// The common end of every test node's command line: the test's own flags (after a short `--shutdown-grace`
/// unless they set one) and the data dir as working directory.
pub fn finish_command(command: &mut Command, args: &[String], data_dir: &Path) {
    // Stopping a test server should not wait long for its runs, unless the test says otherwise.
    if !args.iter().any(|a| a.starts_with("--shutdown-grace")) {
        command.args(["--shutdown-grace", "2s"]);
    }
    command.args(args).current_dir(data_dir);
}

/// A `kairos agent --server` process on 127.0.0.1 with free ports, and its data directory.
pub struct Server {
    data_dir: PathBuf,
    /// Set when the server owns a temporary data directory; removed when the server is dropped.
    _temp: Option<TempDir>,
    args: Vec<String>,
    pub node_name: String,
    process: Option<Process>,
    /// Bound to the HTTP address of the last launch.
    api: Option<Client>,
    log: Log,
}

impl Server {
    /// Start a server on a fresh temporary data directory.
    pub async fn fresh(extra_args: &[&str]) -> Server {
        let temp = tempfile::Builder::new().prefix("kairos-e2e-").tempdir().expect("temporary data dir");
        let mut server = Server::start(temp.path(), extra_args).await;
        server._temp = Some(temp);
        server
    }

    /// Start a server on `data_dir` with `extra_args` after the standard single-node flags, and wait until
    /// its API answers and it is the leader.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> Server {
        let mut server = Server {
            data_dir: data_dir.to_path_buf(),
            _temp: None,
            args: extra_args.iter().map(|a| a.to_string()).collect(),
            node_name: format!("node-{}", std::process::id()),
            process: None,
            api: None,
            log: Log::memory(),
        };
        server.launch().await;
        server
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn command(&self) -> Command {
        let mut command = kairos_command(Path::new(KAIROS_BIN));
        command.arg("agent").arg("--server").args(["--bootstrap-expect", "1"]).arg("--data-dir").arg(&self.data_dir);
        // Loopback addresses unless the test gives its own; the log level unless the test's config file may set it
        // (a flag would win over the file).
        let given = |flag: &str| self.args.iter().any(|a| a == flag);
        for (flag, default) in [("--http-addr", "127.0.0.1:0"), ("--bind-addr", "127.0.0.1:0"), ("--log-level", "info")]
        {
            let set_by_test = given(flag) || (flag == "--log-level" && given("--config"));
            if !set_by_test {
                command.args([flag, default]);
            }
        }
        command.args(["--rpc-port", "0"]).args(["--node-name", &self.node_name]);
        finish_command(&mut command, &self.args, &self.data_dir);
        command
    }

    async fn launch(&mut self) {
        std::fs::create_dir_all(&self.data_dir).expect("data dir");
        self.log.append(&format!("=== starting kairos on {} ===\n", self.data_dir.display()));
        let mut process = Process::spawn(&mut self.command(), &self.log).expect("spawn kairos");
        let listening = match process.wait_listening(&[Listener::Http], START_DEADLINE).await {
            Ok(listening) => listening,
            Err(error) => {
                drop(process);
                panic!("{error}\n--- server log ---\n{}", self.log());
            }
        };
        let base = format!("http://{}", listening.http.expect("waited for the HTTP address"));
        self.api = Some(Client::new(&base, REQUEST_TIMEOUT).with_log(self.log.clone()));
        self.process = Some(process);
        let api = self.api();
        let name = self.node_name.clone();
        wait_until("the node is leader", START_DEADLINE, async || {
            let reply = api.try_request("GET", "/v1/isleader", None, None).await.ok()?;
            if reply.status == 401 {
                // ACL is enabled: the open health check names the leader.
                let health = api.try_request("GET", "/health", None, None).await.ok()?;
                return (health.json["leader"] == name.as_str()).then_some(());
            }
            (reply.status == 200).then_some(())
        })
        .await;
    }

    /// Everything the server printed so far, across restarts.
    pub fn log(&self) -> String {
        self.log.text()
    }

    fn process(&mut self) -> &mut Process {
        self.process.as_mut().expect("server is running")
    }

    pub fn pid(&self) -> i32 {
        self.process.as_ref().expect("server is running").pid()
    }

    /// The API client of the last launch.
    pub fn api(&self) -> &Client {
        self.api.as_ref().expect("the server has been launched")
    }

    pub fn url(&self, path: &str) -> String {
        self.api().url(path)
    }

    /// Send SIGHUP (reload the configuration) without waiting for anything.
    pub fn sighup(&self) {
        self.process.as_ref().expect("server is running").signal(Signal::Hup);
    }

    /// Send SIGTERM and wait for the process to exit; returns its exit status.
    pub async fn sigterm(&mut self) -> ExitStatus {
        self.process().signal(Signal::Term);
        self.wait_exit().await
    }

    /// SIGKILL: the process gets no chance to flush or clean up.
    pub async fn kill9(&mut self) {
        self.process().kill9();
        self.process = None;
        self.log.append("=== killed with SIGKILL ===\n");
    }

    /// Wait for the process to exit on its own (or after a signal); its exit status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let Ok(status) = self.process().wait_exit(EXIT_DEADLINE).await else {
            self.process = None;
            panic!("kairos did not exit within {EXIT_DEADLINE:?} after SIGTERM\n--- server log ---\n{}", self.log());
        };
        self.process = None;
        self.log.append(&format!("=== exited: {status} ===\n"));
        status
    }

    /// Start the server again on the same data directory with the same flags (after a stop or a kill).
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "restart() needs a stopped server: call sigterm() or kill9() first");
        self.launch().await;
    }

    // --- HTTP ---

    /// Send a request; `body` is sent verbatim as JSON (so tests can send invalid JSON too).
    pub async fn request(&self, method: &str, path: &str, body: Option<String>) -> Reply {
        self.api().request(method, path, body).await
    }

    /// Send a request with exactly these headers and raw body bytes (no Content-Type unless given).
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        self.api().request_with(method, path, headers, body).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.api().get(path).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.api().post(path, body).await
    }

    /// POST a JSON body; `None` when the server did not answer (it may be exiting).
    pub async fn try_post(&self, path: &str, body: &Value) -> Option<Reply> {
        self.api().try_request("POST", path, Some(body.to_string()), None).await.ok()
    }

    pub async fn post_empty(&self, path: &str) -> Reply {
        self.api().post_empty(path).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.api().put(path, body).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.api().patch(path, body).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.api().delete(path).await
    }

    // --- Jobs and executions ---

    /// Create (or replace) a job; asserts 201 and returns the stored job.
    pub async fn create_job(&self, job: &Value) -> Value {
        let reply = self.post("/v1/jobs", job).await;
        assert_eq!(reply.status, 201, "creating {job} answered {}", reply.text);
        reply.json
    }

    pub async fn job(&self, name: &str) -> Value {
        let reply = self.get(&format!("/v1/jobs/{name}")).await;
        assert_eq!(reply.status, 200, "GET job {name}: {}", reply.text);
        reply.json
    }

    pub async fn job_exists(&self, name: &str) -> bool {
        let reply = self.get(&format!("/v1/jobs/{name}")).await;
        assert!(reply.status == 200 || reply.status == 404, "GET job {name}: {} {}", reply.status, reply.text);
        reply.status == 200
    }

    pub async fn jobs(&self) -> Vec<Value> {
        self.get("/v1/jobs").await.expect(200).items()
    }

    pub async fn job_names(&self) -> Vec<String> {
        self.jobs().await.iter().map(|j| j["name"].as_str().expect("job name").to_string()).collect()
    }

    /// Start a manual run (answers 202).
    pub async fn run(&self, name: &str) {
        let reply = self.post_empty(&format!("/v1/jobs/{name}/run")).await;
        assert_eq!(reply.status, 202, "run {name}: {}", reply.text);
    }

    /// Every stored execution of a job, newest first (as the API lists them).
    pub async fn executions(&self, job: &str) -> Vec<Exec> {
        let reply = self.get(&format!("/v1/jobs/{job}/executions")).await;
        assert_eq!(reply.status, 200, "executions of {job}: {}", reply.text);
        serde_json::from_value(reply.json).unwrap_or_else(|e| panic!("executions of {job}: {e}: {}", reply.text))
    }

    pub async fn execution(&self, job: &str, id: &str) -> Exec {
        let reply = self.get(&format!("/v1/jobs/{job}/executions/{id}")).await;
        assert_eq!(reply.status, 200, "execution {id} of {job}: {}", reply.text);
        serde_json::from_value(reply.json).unwrap_or_else(|e| panic!("execution {id}: {e}: {}", reply.text))
    }

    /// Poll a job's executions until `done` holds for them; returns them (newest first).
    pub async fn wait_executions(
        &self,
        job: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&[Exec]) -> bool,
    ) -> Vec<Exec> {
        wait_until(&format!("{job}: {what}"), within, async || {
            let execs = self.executions(job).await;
            done(&execs).then_some(execs)
        })
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            // SIGTERM first so the server stops its runs (their process groups) instead of orphaning them; the
            // process is killed when dropped if it is still there.
            process.signal(Signal::Term);
            process.wait_exit_blocking(Instant::now() + DROP_GRACE);
        }
        if std::thread::panicking() {
            self.log.print_tail("server log", LOG_LINES_ON_FAILURE);
        }
    }
}
