//! The end-to-end harness: start the real `kairos` binary on free ports, talk to it over HTTP, stop it
//! gently (SIGTERM) or not (SIGKILL), and start it again on the same data directory.
//!
//! Every test owns its server and its temporary data directory, so tests run in parallel. Nothing here
//! sleeps for correctness: [`wait_until`] polls a condition until a deadline and fails with the name of
//! what it waited for. When a test panics, the server's log (stdout and stderr, across restarts) is printed.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub use jiff::Timestamp;
use serde::Deserialize;
pub use serde_json::{Value, json};
use tempfile::TempDir;

/// The binary under test, built by Cargo for this test run.
pub const KAIROS_BIN: &str = env!("CARGO_BIN_EXE_kairos");

/// How long a server may take to print its listening line and become leader.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a stopped server may take to exit before the harness gives up.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// The line (on stderr) that announces the bound HTTP address.
const LISTENING: &str = "HTTP API listening on http://";
/// Poll interval of [`wait_until`].
const POLL: Duration = Duration::from_millis(100);
/// Lines of the server log printed when a test fails.
const LOG_LINES_ON_FAILURE: usize = 300;

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Poll `probe` until it returns `Some`, or fail the test after `within`, naming `what` was awaited.
pub async fn wait_until<T>(what: &str, within: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One answer of the API: status, headers, raw text and, when the body is JSON, the parsed value.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    /// The `error` message of an error answer (empty if there is none).
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }

    /// Dkron's `X-Total-Count` header.
    pub fn total_count(&self) -> Option<usize> {
        self.headers.get("x-total-count")?.to_str().ok()?.parse().ok()
    }

    pub fn items(&self) -> Vec<Value> {
        self.json.as_array().cloned().unwrap_or_else(|| panic!("expected a JSON array, got {}", self.text))
    }

    /// Assert the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Reply {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        self
    }

    /// Assert a 4xx answer whose `error` names `field` first (`{"error": "field: problem"}`).
    #[track_caller]
    pub fn expect_error(&self, status: u16, field: &str) -> &Reply {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        let error = self.error();
        assert!(
            error.starts_with(&format!("{field}:")) || error.starts_with(&format!("{field} ")),
            "the error should name '{field}' first, got {error:?}"
        );
        self
    }
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
/// unless they set one), nothing from the machine's `KAIROS_*` environment, the data dir as working directory,
/// and piped output.
pub fn finish_command(command: &mut Command, args: &[String], data_dir: &Path) {
    // Stopping a test server should not wait long for its runs, unless the test says otherwise.
    if !args.iter().any(|a| a.starts_with("--shutdown-grace")) {
        command.args(["--shutdown-grace", "2s"]);
    }
    command.args(args);
    // No configuration may leak in from the machine running the tests.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KAIROS_") {
            command.env_remove(&key);
        }
    }
    command
        .env("NO_COLOR", "1")
        .current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

/// A `kairos agent --server` process on 127.0.0.1 with free ports, and its data directory.
pub struct Server {
    data_dir: PathBuf,
    /// Set when the server owns a temporary data directory; removed when the server is dropped.
    _temp: Option<TempDir>,
    args: Vec<String>,
    pub node_name: String,
    child: Option<Child>,
    base: String,
    log: Arc<Mutex<String>>,
    http: reqwest::Client,
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
        kairos_agent::install_crypto_provider();
        let http = reqwest::Client::builder().no_proxy().timeout(secs(30)).build().expect("http client");
        let mut server = Server {
            data_dir: data_dir.to_path_buf(),
            _temp: None,
            args: extra_args.iter().map(|a| a.to_string()).collect(),
            node_name: format!("node-{}", std::process::id()),
            child: None,
            base: String::new(),
            log: Arc::new(Mutex::new(String::new())),
            http,
        };
        server.launch().await;
        server
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn command(&self) -> Command {
        let mut command = Command::new(KAIROS_BIN);
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
        self.append_log(&format!("=== starting kairos on {} ===\n", self.data_dir.display()));
        let mut child = self.command().spawn().expect("spawn kairos");
        let (addr_tx, addr_rx) = mpsc::channel();
        drain(child.stderr.take().expect("stderr"), self.log.clone(), Some(addr_tx));
        drain(child.stdout.take().expect("stdout"), self.log.clone(), None);
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        let addr = loop {
            match addr_rx.try_recv() {
                Ok(addr) => break addr,
                Err(mpsc::TryRecvError::Disconnected) => self.fail("kairos closed stderr before it was listening"),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.fail(&format!("kairos exited ({status}) before it was listening"));
            }
            if Instant::now() >= deadline {
                self.fail("kairos did not print its listening line within the deadline");
            }
            tokio::time::sleep(millis(20)).await;
        };
        self.base = addr;
        let this = &*self;
        wait_until("the node is leader", START_DEADLINE, async || {
            let reply = this.try_request(reqwest::Method::GET, "/v1/isleader", None).await?;
            (reply.status == 200).then_some(())
        })
        .await;
    }

    fn fail(&mut self, why: &str) -> ! {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("{why}\n--- server log ---\n{}", self.log());
    }

    fn append_log(&self, text: &str) {
        self.log.lock().expect("log lock").push_str(text);
    }

    /// Everything the server printed so far, across restarts.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("server is running").id() as i32
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.base, path)
    }

    /// Send SIGHUP (reload the configuration) without waiting for anything.
    pub fn sighup(&self) {
        // SAFETY: kill(2) with a pid and a signal has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid(), libc::SIGHUP);
        }
    }

    /// Send SIGTERM and wait for the process to exit; returns its exit status.
    pub async fn sigterm(&mut self) -> ExitStatus {
        // SAFETY: kill(2) with a pid and a signal has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        self.wait_exit().await
    }

    /// SIGKILL: the process gets no chance to flush or clean up.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("server is running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap kairos");
        self.append_log("=== killed with SIGKILL ===\n");
    }

    /// Wait for the process to exit on its own (or after a signal); its exit status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_DEADLINE;
        loop {
            let child = self.child.as_mut().expect("server is running");
            if let Some(status) = child.try_wait().expect("wait for kairos") {
                self.child = None;
                self.append_log(&format!("=== exited: {status} ===\n"));
                return status;
            }
            if Instant::now() >= deadline {
                self.fail("kairos did not exit within the deadline after SIGTERM");
            }
            tokio::time::sleep(millis(20)).await;
        }
    }

    /// Start the server again on the same data directory with the same flags (after a stop or a kill).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped server: call sigterm() or kill9() first");
        self.launch().await;
    }

    // --- HTTP ---

    async fn try_request(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Option<Reply> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.ok()?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Some(Reply { status, headers, text, json })
    }

    /// Send a request; `body` is sent verbatim as JSON (so tests can send invalid JSON too).
    pub async fn request(&self, method: &str, path: &str, body: Option<String>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        match self.try_request(method.clone(), path, body).await {
            Some(reply) => reply,
            None => panic!("{method} {path}: no answer from the server\n--- server log ---\n{}", self.log()),
        }
    }

    /// Send a request with exactly these headers and raw body bytes (no Content-Type unless given).
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method.clone(), self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}\n--- server log ---\n{}", self.log()));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, text, json }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(body.to_string())).await
    }

    /// POST a JSON body; `None` when the server did not answer (it may be exiting).
    pub async fn try_post(&self, path: &str, body: &Value) -> Option<Reply> {
        self.try_request(reqwest::Method::POST, path, Some(body.to_string())).await
    }

    pub async fn post_empty(&self, path: &str) -> Reply {
        self.request("POST", path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.request("PUT", path, Some(body.to_string())).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.request("PATCH", path, Some(body.to_string())).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, None).await
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
        if let Some(mut child) = self.child.take() {
            // SIGTERM first so the server stops its runs (their process groups) instead of orphaning them.
            // SAFETY: kill(2) with a pid and a signal has no memory-safety preconditions.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + secs(8);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_LINES_ON_FAILURE)..];
            eprintln!("--- server log ({} lines, last {} shown) ---", lines.len(), tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// Copy a pipe into the shared log, line by line, so the pipe never fills up; report the listening address.
fn drain(pipe: impl Read + Send + 'static, log: Arc<Mutex<String>>, addr: Option<mpsc::Sender<String>>) {
    drain_lines(pipe, log, move |line| {
        if let (Some(tx), Some(host_port)) = (&addr, addr_after(line, LISTENING)) {
            let _ = tx.send(host_port);
        }
    });
}

/// Copy a pipe into `log` on a thread of its own (so the pipe never fills up), showing `on_line` each line first.
pub fn drain_lines(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    mut on_line: impl FnMut(&str) + Send + 'static,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            on_line(&text);
            log.lock().expect("log lock").push_str(&text);
        }
    });
}

/// The `host:port` printed after `marker` in a log line (an optional `http://` and any path dropped).
pub fn addr_after(line: &str, marker: &str) -> Option<String> {
    let at = line.find(marker)?;
    let rest = line[at + marker.len()..].trim_start_matches("http://");
    Some(rest.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect())
}
