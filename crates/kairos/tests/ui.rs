//! The web UI in a real browser: Chromium, driven through chromedriver, against a real `kairos` server.
//!
//! Each test starts its own server and browser and does what a person would: fill in the editor, click buttons,
//! confirm dialogs, and watch pages update live. Every wait polls with a deadline. Chromium and chromedriver must
//! be installed (`.ci/run` installs Debian's `chromium` and `chromium-driver`); without them these tests fail.
//!
//! `KAIROS_UI_SCREENSHOTS=1` makes `screenshots_of_the_main_pages` write its PNGs to `docs/`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod ui_common;

use std::path::PathBuf;

use serde_json::{Value, json};
use ui_common::{Browser, DEADLINE, Server, serial, wait_until};

fn execution_statuses(executions: &Value) -> Vec<String> {
    executions
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["status"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_shows_the_api_error_next_to_the_field_then_the_new_job_fires_live() {
    let _one_browser = serial().await;
    let server = Server::start(&[]).await;
    let browser = Browser::start().await;

    browser.goto(&server.url("/ui/new")).await;
    browser.fill("#f-name", "hello-ui").await;
    browser.fill("#f-schedule", "61 * * * * *").await;
    browser.fill("#f-shell-executor_config-command", "echo hello from the ui").await;
    browser.click("#f-shell-executor_config-shell").await;
    // The live preview already objects while the schedule is typed.
    browser.wait_text("#preview", "the preview reports the bad schedule", |t| t.starts_with("schedule:")).await;
    browser.click("#save").await;

    let shown = browser
        .wait_text("[data-field='schedule'] .field-error", "an error is shown at the schedule", |t| !t.is_empty())
        .await;
    let same_job = json!({
        "name": "hello-ui", "schedule": "61 * * * * *", "executor": "shell",
        "executor_config": {"command": "echo hello from the ui", "shell": "true"},
    });
    let (status, answer) = server.api("POST", "/v1/jobs", Some(same_job)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(shown, answer["error"].as_str().unwrap(), "the field shows the API's message, word for word");
    let invalid = browser.find("#f-schedule").await.attr("aria-invalid").await.unwrap();
    assert_eq!(invalid.as_deref(), Some("true"), "the schedule input is marked invalid");
    let (status, _) = server.api("GET", "/v1/jobs/hello-ui", None).await;
    assert_eq!(status, 404, "a rejected job is not stored");

    // The JSON view shows the same job; edits there come back to the form.
    browser.click("#tab-json").await;
    let text = browser.script("return document.querySelector('#f-json').value;").await;
    let job: Value = serde_json::from_str(text.as_str().unwrap()).expect("the JSON view holds JSON");
    assert_eq!((job["name"].as_str(), job["schedule"].as_str()), (Some("hello-ui"), Some("61 * * * * *")));
    assert_eq!(job["executor_config"], json!({"command": "echo hello from the ui", "shell": "true"}));
    browser
        .script("const j = JSON.parse(document.querySelector('#f-json').value); j.displayname = 'Hello from JSON'; document.querySelector('#f-json').value = JSON.stringify(j);")
        .await;
    browser.click("#tab-form").await;
    let displayname = browser.script("return document.querySelector('#f-displayname').value;").await;
    assert_eq!(displayname, "Hello from JSON");

    browser.fill("#f-schedule", "@every 1s").await;
    browser.wait_text("#preview", "the preview lists fire times", |t| t.contains("Next fire times")).await;
    browser.click("#save").await;
    browser.wait_path("/ui/jobs/hello-ui").await;

    // The job fires; its execution appears on the open page without a reload.
    let link = browser.find("#job-live tr[data-status='succeeded'] a").await;
    browser.assert_only_requests(server.base()).await;
    link.click().await.expect("open the execution");
    wait_until("the execution page opens", DEADLINE, async || {
        browser.path().await.starts_with("/ui/jobs/hello-ui/executions/").then_some(())
    })
    .await;
    browser.wait_text("#output", "the output is shown", |t| t.contains("hello from the ui")).await;
    browser.wait_text("#exec-status", "the status is shown", |t| t == "succeeded").await;
    browser.assert_only_requests(server.base()).await;
    let (_, job) = server.api("GET", "/v1/jobs/hello-ui", None).await;
    assert_eq!(job["displayname"], "Hello from JSON");
    browser.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_execution_is_followed_live_and_cancelled() {
    let _one_browser = serial().await;
    let server = Server::start(&[]).await;
    server
        .create_job(json!({
            "name": "sleeper", "schedule": "@manually", "executor": "shell",
            "executor_config": {"command": "echo started; sleep 60", "shell": "true"},
        }))
        .await;
    let browser = Browser::start().await;

    browser.goto(&server.url("/ui/jobs/sleeper")).await;
    browser.click(".title-row button[data-action='run']").await;
    browser.find("#job-live tr[data-status='running']").await;

    browser.goto(&server.url("/ui/busy")).await;
    browser
        .wait_text("#busy-live", "the busy page lists the run", |t| t.contains("sleeper") && t.contains("started"))
        .await;
    browser.click("#busy-live a[href*='/executions/']").await;
    browser.wait_text("#output", "the output so far is shown", |t| t.contains("started")).await;
    browser.wait_text("#exec-status", "the execution is running", |t| t == "running").await;

    browser.click("#cancel-execution").await;
    browser.wait_text("#exec-status", "the page shows the cancellation", |t| t == "cancelled").await;
    browser.wait_text("#follow-state", "following stops", |t| t == "finished: cancelled").await;
    let (_, executions) = server.api("GET", "/v1/jobs/sleeper/executions", None).await;
    assert_eq!(execution_statuses(&executions), ["cancelled"]);
    browser.assert_only_requests(server.base()).await;
    browser.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_disabled_then_deleted_and_children_that_prevent_it_are_explained() {
    let _one_browser = serial().await;
    let server = Server::start(&[]).await;
    let shell = json!({"command": "true"});
    server
        .create_job(json!({"name": "nightly", "schedule": "@every 1h", "executor": "shell", "executor_config": shell}))
        .await;
    server
        .create_job(
            json!({"name": "nightly-report", "parent_job": "nightly", "executor": "shell", "executor_config": shell}),
        )
        .await;
    let browser = Browser::start().await;

    browser.goto(&server.url("/ui/jobs/nightly")).await;
    browser.click(".title-row button[data-action='toggle']").await;
    browser
        .wait_text(".title-row button[data-action='toggle']", "the button offers to enable", |t| t == "Enable")
        .await;
    browser.wait_text("#flash", "the page confirms", |t| t.contains("nightly is now disabled")).await;
    let (_, job) = server.api("GET", "/v1/jobs/nightly", None).await;
    assert_eq!(job["disabled"], true);

    browser.click(".title-row button[data-action='delete']").await;
    let question = browser.accept_confirm().await;
    assert!(question.contains("Delete job nightly"), "{question}");
    let refusal = browser.wait_text("#flash", "the refusal is shown", |t| t.contains("dependent jobs")).await;
    let (status, answer) = server.api("DELETE", "/v1/jobs/nightly", None).await;
    assert_eq!(status, 409);
    assert_eq!(refusal, answer["error"].as_str().unwrap(), "the API's own message");

    browser.goto(&server.url("/ui/jobs/nightly-report")).await;
    browser.click(".title-row button[data-action='delete']").await;
    browser.accept_confirm().await;
    browser.wait_path("/ui/jobs").await;
    browser.goto(&server.url("/ui/jobs/nightly")).await;
    browser.click(".title-row button[data-action='delete']").await;
    browser.accept_confirm().await;
    browser.wait_path("/ui/jobs").await;
    browser.wait_text("#flash", "the deletion is confirmed", |t| t == "Deleted job nightly.").await;
    let (status, _) = server.api("GET", "/v1/jobs/nightly", None).await;
    assert_eq!(status, 404);
    browser.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_ask_first_then_act_on_every_selected_job() {
    let _one_browser = serial().await;
    let server = Server::start(&[]).await;
    for name in ["bulk-a", "bulk-b", "bulk-c"] {
        server
            .create_job(json!({"name": name, "schedule": "@every 1h", "executor": "shell", "executor_config": {"command": "true"}}))
            .await;
    }
    let browser = Browser::start().await;
    browser.goto(&server.url("/ui/jobs?q=bulk")).await;
    browser.click("#select-all").await;
    browser.wait_text("#bulk-count", "three are selected", |t| t == "3 selected").await;
    browser.click("button[data-bulk='disable']").await;
    let question = browser.accept_confirm().await;
    assert!(question.contains("Disable 3 jobs"), "{question}");
    browser.wait_text("#flash", "the result is reported", |t| t.contains("3 of 3 done")).await;
    for name in ["bulk-a", "bulk-b", "bulk-c"] {
        let (_, job) = server.api("GET", &format!("/v1/jobs/{name}"), None).await;
        assert_eq!(job["disabled"], true, "{name}");
    }

    browser.click("input[name='select'][value='bulk-b']").await;
    browser.click("button[data-bulk='delete']").await;
    browser.accept_confirm().await;
    browser.wait_text("#flash", "the deletion is reported", |t| t.contains("1 of 1 done")).await;
    let (status, _) = server.api("GET", "/v1/jobs/bulk-b", None).await;
    assert_eq!(status, 404);
    let (_, jobs) = server.api("GET", "/v1/jobs", None).await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(2));
    browser.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_from_the_server_alone() {
    let _one_browser = serial().await;
    let server = Server::start(&[]).await;
    server
        .create_job(json!({"name": "solo", "schedule": "@every 1h", "executor": "shell", "executor_config": {"command": "echo solo"}}))
        .await;
    let (status, _) = server.api("POST", "/v1/jobs/solo/run", None).await;
    assert_eq!(status, 202);
    let id = wait_until("the manual run finishes", DEADLINE, async || {
        let (_, executions) = server.api("GET", "/v1/jobs/solo/executions", None).await;
        let first = executions.as_array()?.first()?.clone();
        (first["status"] == "succeeded").then(|| first["id"].as_str().map(String::from)).flatten()
    })
    .await;
    let browser = Browser::start().await;

    browser.goto(server.base()).await;
    browser.wait_path("/ui/").await;
    let pages = [
        "/ui/".to_string(),
        "/ui/jobs".into(),
        "/ui/jobs/solo".into(),
        format!("/ui/jobs/solo/executions/{id}"),
        "/ui/jobs/solo/edit".into(),
        "/ui/new".into(),
        "/ui/new?clone=solo".into(),
        "/ui/busy".into(),
        "/ui/nodes".into(),
    ];
    for page in pages {
        browser.goto(&server.url(&page)).await;
        browser.find("main h1").await;
        wait_until("the page has loaded", DEADLINE, async || {
            (browser.script("return document.readyState;").await == "complete").then_some(())
        })
        .await;
        browser.assert_only_requests(server.base()).await;
        let errors = browser.script("return document.querySelectorAll('#flash.error').length;").await;
        assert_eq!(errors, 0, "{page} shows an error");
    }
    browser.stop().await;
}

/// The editor has inputs for shell and http only; a job of another executor (here nats) keeps every key of its
/// config, `timeout` included, when it is saved from the editor unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editor_keeps_every_key_of_an_executor_without_inputs() {
    let _one_browser = serial().await;
    let server = Server::start(&[]).await;
    let config = json!({"url": "nats://127.0.0.1:4222", "subject": "jobs.tick", "message": "hi", "timeout": "5s"});
    server
        .create_job(
            json!({"name": "publisher", "schedule": "@every 1h", "executor": "nats", "executor_config": config}),
        )
        .await;
    let browser = Browser::start().await;
    browser.goto(&server.url("/ui/jobs/publisher/edit")).await;
    browser.find("main h1").await;
    browser.fill("#f-displayname", "Publisher").await;
    browser.click("#save").await;
    browser.wait_path("/ui/jobs/publisher").await;
    let (_, job) = server.api("GET", "/v1/jobs/publisher", None).await;
    assert_eq!(job["displayname"], "Publisher", "the edit was saved");
    assert_eq!((&job["executor"], &job["executor_config"]), (&json!("nats"), &config));
    browser.stop().await;
}

/// No browser needed: where the UI is served, and that `--ui=false` turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_is_served_at_ui_and_can_be_turned_off() {
    let server = Server::start(&[]).await;
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let root = no_redirects.get(server.url("/")).send().await.unwrap();
    assert_eq!(root.status().as_u16(), 303);
    assert_eq!(root.headers()["location"], "/ui/");
    let page = server.client.http().get(server.url("/ui/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"), "the page links to another host");
    let (status, stats) = server.api("GET", "/v1/stats", None).await;
    assert_eq!(status, 200);
    assert_eq!(stats["minutes"].as_array().map(Vec::len), Some(60));
    let (_, document) = server.api("GET", "/v1/openapi.json", None).await;
    assert!(document["paths"]["/v1/stats"]["get"].is_object());
    drop(server);

    let off = Server::start(&["--ui=false"]).await;
    for path in ["/", "/ui/", "/ui/jobs", "/ui/assets/kairos.js"] {
        let reply = no_redirects.get(off.url(path)).send().await.unwrap();
        assert_eq!(reply.status().as_u16(), 404, "{path} with --ui=false");
    }
    let (status, _) = off.api("GET", "/v1/jobs", None).await;
    assert_eq!(status, 200, "the API stays on");
}

/// Jobs with some history, so the pages have something to show (the server must have the tag zone=eu-west).
async fn seed(server: &Server) {
    let shell = |command: &str| json!({"command": command, "shell": "true"});
    let jobs = [
        json!({"name": "heartbeat", "displayname": "Heartbeat", "schedule": "@every 1s", "executor": "shell",
               "executor_config": shell("echo beat at $(date -u +%H:%M:%S)"), "tags": {"zone": "eu-west"}, "metadata": {"team": "platform"}}),
        json!({"name": "flaky-sync", "displayname": "Sync from the warehouse (flaky)", "schedule": "*/2 * * * * *",
               "executor": "shell", "executor_config": shell("echo syncing; if [ $(( $(date +%s) % 3 )) -eq 0 ]; then echo 'upstream timed out' >&2; exit 3; fi; echo done"),
               "retries": 1, "retry_backoff": "1s", "tags": {"zone": "eu-west"}, "metadata": {"team": "data"}}),
        json!({"name": "nightly-backup", "displayname": "Nightly database backup", "schedule": "0 30 2 * * *",
               "timezone": "Europe/Berlin", "owner": "ops", "owner_email": "ops@example.com", "executor": "shell",
               "executor_config": shell("echo dumping 3 databases; echo backup complete"), "tags": {"zone": "eu-west"},
               "metadata": {"tier": "critical", "team": "ops"}, "retries": 2, "concurrency": "forbid"}),
        json!({"name": "backup-report", "parent_job": "nightly-backup", "executor": "shell",
               "executor_config": shell("echo mailing the report")}),
        json!({"name": "api-health", "displayname": "API health check", "schedule": "@every 5s", "executor": "http",
               "executor_config": {"url": server.url("/health"), "method": "GET", "expectCode": "200"}}),
        json!({"name": "long-export", "displayname": "Quarterly export", "schedule": "0 0 6 1 */3 *",
               "timezone": "America/New_York", "executor": "shell",
               "executor_config": shell("for i in $(seq 1 600); do echo \"exported batch $i\"; sleep 1; done")}),
        json!({"name": "legacy-cleanup", "schedule": "@daily", "disabled": true, "executor": "shell",
               "executor_config": shell("echo cleaning")}),
    ];
    for job in jobs {
        server.create_job(job).await;
    }
    for name in ["nightly-backup", "long-export"] {
        let (status, _) = server.api("POST", &format!("/v1/jobs/{name}/run"), None).await;
        assert_eq!(status, 202);
    }
    wait_until("the jobs have some history", DEADLINE, async || {
        let (_, executions) = server.api("GET", "/v1/jobs/heartbeat/executions", None).await;
        let (_, flaky) = server.api("GET", "/v1/jobs/flaky-sync/executions?status=failed", None).await;
        (executions.as_array()?.len() >= 10 && !flaky.as_array()?.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_the_main_pages() {
    let _one_browser = serial().await;
    // Jobs are placed by tags: the seeded jobs run on nodes tagged zone=eu-west.
    let server = Server::start(&["--node-name", "kairos-1", "--tag", "zone=eu-west"]).await;
    seed(&server).await;
    let (_, failed) = server.api("GET", "/v1/jobs/flaky-sync/executions?status=failed", None).await;
    let failed_id = failed[0]["id"].as_str().unwrap().to_string();
    let (_, running) = server.api("GET", "/v1/jobs/long-export/executions", None).await;
    let running_id = running[0]["id"].as_str().unwrap().to_string();

    let write = std::env::var_os("KAIROS_UI_SCREENSHOTS").is_some();
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let pages: [(&str, String, u32, u32); 8] = [
        ("ui-dashboard.png", "/ui/".into(), 1280, 820),
        ("ui-jobs.png", "/ui/jobs".into(), 1280, 760),
        ("ui-job.png", "/ui/jobs/flaky-sync".into(), 1280, 1000),
        ("ui-editor.png", "/ui/jobs/nightly-backup/edit".into(), 1280, 1250),
        ("ui-execution.png", format!("/ui/jobs/flaky-sync/executions/{failed_id}"), 1280, 640),
        ("ui-execution-live.png", format!("/ui/jobs/long-export/executions/{running_id}"), 1280, 700),
        ("ui-busy.png", "/ui/busy".into(), 1280, 520),
        ("ui-jobs-phone.png", "/ui/jobs".into(), 390, 900),
    ];
    let browser = Browser::start().await;
    for (file, page, width, height) in &pages {
        browser.resize(*width, *height).await;
        browser.goto(&server.url(page)).await;
        browser.find("main h1").await;
        if page.contains("/edit") {
            browser.wait_text("#preview", "the preview has loaded", |t| t.contains("Next fire times")).await;
        }
        if page.contains("long-export") {
            browser.wait_text("#output", "output streams in", |t| t.lines().count() >= 3).await;
        }
        browser.assert_only_requests(server.base()).await;
        let png = browser.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "{file} is not a PNG");
        if write {
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(file), &png).unwrap();
        }
    }
    browser.stop().await;

    let dark = Browser::start_with(&["--force-dark-mode"]).await;
    dark.resize(1280, 820).await;
    dark.goto(&server.url("/ui/")).await;
    dark.find("main h1").await;
    let scheme = dark.script("return matchMedia('(prefers-color-scheme: dark)').matches;").await;
    let png = dark.screenshot().await;
    if write && scheme == true {
        std::fs::write(docs.join("ui-dashboard-dark.png"), &png).unwrap();
    }
    dark.stop().await;
}

/// With ACL on, a person signs in with a token's secret, acts through the UI (its calls carry the cookie), a
/// page of another origin cannot use the session, and signing out ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_acl_a_person_signs_in_acts_and_signs_out_and_other_sites_cannot_act() {
    let _one_browser = serial().await;
    let server = Server::start(&["--acl-enabled", "--encrypt", "a2Fpcm9zLXRlc3QtY2x1c3Rlci1rZXktMzItYnl0ZXM="]).await;
    let (status, token) = server.api("POST", "/v1/acl/bootstrap", None).await;
    assert_eq!(status, 201, "{token}");
    let secret = token["secret"].as_str().unwrap().to_string();
    let job = json!({"name": "nightly", "schedule": "@every 1h", "executor": "shell", "executor_config": {"command": "true"}});
    let headers = [("x-dkron-token", secret.as_str()), ("content-type", "application/json")];
    let created = server.client.request_with("POST", "/v1/jobs", &headers, Some(job.to_string().into_bytes())).await;
    created.expect(201);
    let disabled = async || {
        let reply = server.client.request_with("GET", "/v1/jobs/nightly", &headers[..1], None).await;
        reply.json["disabled"].as_bool().unwrap()
    };
    let browser = Browser::start().await;

    browser.goto(&server.url("/ui/jobs/nightly")).await;
    browser.wait_path("/ui/signin").await;
    browser.fill("#secret", "6f1c2f52-5a0e-4c7e-9a55-2a4c1c1f0b4e").await;
    browser.click("main form button[type='submit']").await;
    browser.wait_text("main .notice.error", "the refusal", |t| t.contains("No such token")).await;
    browser.fill("#secret", &secret).await;
    browser.click("main form button[type='submit']").await;
    browser.wait_path("/ui/").await;

    browser.goto(&server.url("/ui/jobs/nightly")).await;
    browser.click(".title-row button[data-action='toggle']").await;
    browser.wait_text("#flash", "the page confirms", |t| t.contains("nightly is now disabled")).await;
    assert!(disabled().await);

    // A page of another origin (here: a blank page) posts to the API with the browser's cookies: refused.
    browser.goto("about:blank").await;
    let forged = format!(
        "return fetch('{}', {{method: 'POST', credentials: 'include'}}).then(r => 'answered ' + r.status, e => 'failed: ' + e);",
        server.url("/v1/jobs/nightly/toggle")
    );
    let outcome = browser.script(&forged).await;
    assert!(outcome.as_str().unwrap().starts_with("failed"), "{outcome}");
    assert!(disabled().await, "the forged toggle changed nothing");

    browser.goto(&server.url("/ui/jobs")).await;
    browser.click("form.signout button").await;
    browser.wait_path("/ui/signin").await;
    browser.goto(&server.url("/ui/jobs")).await;
    browser.wait_path("/ui/signin").await;
    browser.stop().await;
}
