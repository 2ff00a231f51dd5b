//! The browser-test harness: a real `kairos` server on free ports, a real Chromium driven through chromedriver
//! (WebDriver, plain HTTP on localhost), and polling helpers with deadlines.
//!
//! Chromium and chromedriver are required: when either is missing the test fails and says how to install them
//! (`.ci/run` does). Browser tests take [`serial`] first, so a 2-core machine runs one browser at a time.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
pub use kairos_testkit::wait_until;
use kairos_testkit::{Listener, Log, Process, free_port, kairos_command};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const KAIROS_BIN: &str = env!("CARGO_BIN_EXE_kairos");
/// How long anything the tests wait for may take.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Lines of the server log printed when a test fails.
const LOG_LINES_ON_FAILURE: usize = 300;

/// One browser test at a time (each test has its own runtime, so the lock is tokio's, which any runtime can wait
/// on).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A `kairos agent --server` process with its own data directory; killed when dropped.
pub struct Server {
    process: Process,
    pub client: kairos_testkit::Client,
    log: Log,
    _dir: TempDir,
}

impl Server {
    pub async fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = kairos_command(Path::new(KAIROS_BIN));
        command
            .args(["agent", "--server", "--bootstrap-expect", "1", "--http-addr", "127.0.0.1:0", "--rpc-port", "0"])
            .args(["--bind-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .env("KAIROS_LOG", "warn")
            .current_dir(dir.path());
        let log = Log::memory();
        let mut process = Process::spawn(&mut command, &log).expect("start kairos");
        let listening = process.wait_listening(&[Listener::Http], DEADLINE).await;
        let listening = listening.unwrap_or_else(|e| panic!("{e}; log:\n{}", log.text()));
        let base = format!("http://{}", listening.http.expect("waited for the HTTP address"));
        let client = kairos_testkit::Client::new(&base, DEADLINE).with_log(log.clone());
        let server = Server { process, client, log, _dir: dir };
        wait_until("the server is leader", DEADLINE, async || {
            let reply = server.client.try_request("GET", "/v1/isleader", None, None).await.ok()?;
            if reply.status == 401 {
                // ACL is enabled: the open health check names the leader (this single server, once elected).
                let health = server.client.try_request("GET", "/health", None, None).await.ok()?;
                return health.json["leader"].is_string().then_some(());
            }
            (reply.status == 200).then_some(())
        })
        .await;
        server
    }

    /// `http://host:port` of the API and the UI.
    pub fn base(&self) -> &str {
        self.client.base()
    }

    pub fn url(&self, path: &str) -> String {
        self.client.url(path)
    }

    /// A JSON request; answers the status and the body (as a JSON string when it is not JSON).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let reply = self.client.request(method, path, body.map(|b| b.to_string())).await;
        let body = serde_json::from_str(&reply.text).unwrap_or(Value::String(reply.text));
        (reply.status, body)
    }

    pub async fn create_job(&self, job: Value) -> Value {
        let (status, body) = self.api("POST", "/v1/jobs", Some(job)).await;
        assert_eq!(status, 201, "creating a job: {body}");
        body
    }

    pub fn log(&self) -> String {
        self.log.text()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.process.kill9();
        if std::thread::panicking() {
            self.log.print_tail("kairos log", LOG_LINES_ON_FAILURE);
        }
    }
}

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .chain(names.iter().map(|n| Path::new("/usr/bin").join(n)))
        .find(|p| p.is_file())
}

/// Chromium under chromedriver, headless, with a fresh profile; both stop when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        Browser::start_with(&[]).await
    }

    /// A browser with extra Chromium flags (e.g. `--force-dark-mode`).
    pub async fn start_with(extra_args: &[&str]) -> Browser {
        let missing = "install them with `apt-get install -y chromium chromium-driver` (Debian; .ci/run does), or \
                       point KAIROS_CHROMIUM and KAIROS_CHROMEDRIVER at them";
        let chromium = find_program("KAIROS_CHROMIUM", &["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("the browser tests need Chromium, which was not found: {missing}"));
        let driver_path = find_program("KAIROS_CHROMEDRIVER", &["chromedriver"])
            .unwrap_or_else(|| panic!("the browser tests need chromedriver, which was not found: {missing}"));
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_path.display()));
        let profile = tempfile::tempdir().expect("profile dir");
        let browser =
            Browser { client: connect(port, &chromium, profile.path(), extra_args).await, driver, _profile: profile };
        browser.resize(1280, 900).await;
        browser
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.expect("set window size");
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The first element matching `css`, once it exists.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        wait_until(&format!("'{css}' is on the page"), DEADLINE, async || {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// The first element matching `css` once it is displayed.
    pub async fn visible(&self, css: &str) -> fantoccini::elements::Element {
        wait_until(&format!("'{css}' is displayed"), DEADLINE, async || {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            element.is_displayed().await.ok()?.then_some(element)
        })
        .await
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_default()
    }

    /// Wait until the text of `css` satisfies `ok`; answers that text.
    pub async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        wait_until(what, DEADLINE, async || {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            let text = element.text().await.ok()?;
            ok(&text).then_some(text)
        })
        .await
    }

    pub async fn click(&self, css: &str) {
        let element = self.visible(css).await;
        element.click().await.unwrap_or_else(|e| panic!("click '{css}': {e}"));
    }

    /// Replace the value of an input by typing.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.visible(css).await;
        element.clear().await.unwrap_or_else(|e| panic!("clear '{css}': {e}"));
        element.send_keys(text).await.unwrap_or_else(|e| panic!("type into '{css}': {e}"));
    }

    /// Accept the confirmation dialog that the last action opened; answers its text.
    pub async fn accept_confirm(&self) -> String {
        let text =
            wait_until("a confirmation dialog opens", DEADLINE, async || self.client.get_alert_text().await.ok()).await;
        self.client.accept_alert().await.expect("accept the dialog");
        text
    }

    pub async fn path(&self) -> String {
        self.client.current_url().await.map(|u| u.path().to_string()).unwrap_or_default()
    }

    pub async fn wait_path(&self, path: &str) {
        wait_until(&format!("the browser is at {path}"), DEADLINE, async || (self.path().await == path).then_some(()))
            .await;
    }

    pub async fn script(&self, js: &str) -> Value {
        self.client.execute(js, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{js}"))
    }

    /// Every URL the current page requested (itself and its resources), with the page's origin.
    pub async fn requested_urls(&self) -> (String, Vec<String>) {
        let answer = self
            .script(
                "return [location.origin, performance.getEntriesByType('navigation').map(e => e.name)
                   .concat(performance.getEntriesByType('resource').map(e => e.name))];",
            )
            .await;
        let origin = answer[0].as_str().unwrap_or_default().to_string();
        let urls = answer[1].as_array().map(|a| a.iter().filter_map(|u| u.as_str().map(String::from)).collect());
        (origin, urls.unwrap_or_default())
    }

    /// Fail if the current page asked any host but `base` for anything.
    pub async fn assert_only_requests(&self, base: &str) {
        let (origin, urls) = self.requested_urls().await;
        assert_eq!(origin, base, "the page's origin");
        assert!(!urls.is_empty(), "the page recorded no requests at all");
        let foreign: Vec<&String> = urls.iter().filter(|u| !u.starts_with(&format!("{base}/"))).collect();
        assert!(foreign.is_empty(), "the page at {} requested other hosts: {foreign:?}", self.path().await);
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }
}

async fn connect(port: u16, chromium: &Path, profile: &Path, extra_args: &[&str]) -> Client {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,900",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
    let url = format!("http://127.0.0.1:{port}");
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut last_error = String::new();
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        match ClientBuilder::new(connector.clone()).capabilities(capabilities.clone()).connect(&url).await {
            Ok(client) => return client,
            Err(err) => last_error = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("could not start a Chromium session through chromedriver on port {port}: {last_error}");
}

impl Browser {
    /// End the session (Chromium quits), then chromedriver.
    pub async fn stop(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group, with the Chromium it started: stop them all, even after a
        // failed test that never reached `stop`.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            // SAFETY: kill(2) on a process group we created; no memory is involved.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.driver.wait();
    }
}
