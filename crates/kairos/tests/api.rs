//! The HTTP API as a user of Dkron sees it: jobs are created, read, listed, filtered, paged, sorted, toggled,
//! patched, run and deleted over `/v1`; every bad request is refused with 4xx, an error naming the field, and no
//! change; every route in the OpenAPI document is served.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use common::*;

/// A job as the API shows it, without `next` (it moves with the clock).
fn without_next(job: &Value) -> Value {
    let mut job = job.clone();
    job.as_object_mut().expect("job object").remove("next");
    job
}

async fn stable_jobs(server: &Server) -> Vec<Value> {
    server.jobs().await.iter().map(without_next).collect()
}

fn names(items: &[Value]) -> Vec<String> {
    items.iter().map(|j| j["name"].as_str().expect("name").to_string()).collect()
}

async fn listed(server: &Server, query: &str) -> (Vec<String>, Option<usize>) {
    let reply = server.get(&format!("/v1/jobs?{query}")).await;
    reply.expect(200);
    (names(&reply.items()), reply.total_count())
}

fn dkron_job() -> Value {
    json!({
        "name": "backup",
        "displayname": "Nightly backup",
        "schedule": "0 30 2 * * *",
        "timezone": "Europe/Berlin",
        "owner": "ops",
        "owner_email": "ops@example.com",
        "disabled": false,
        "tags": {"role": "db"},
        "metadata": {"team": "infra"},
        "retries": 2,
        "concurrency": "forbid",
        "executor": "shell",
        "executor_config": {"command": "echo backup", "shell": "true", "env": "A=1,B=2", "timeout": "5s"},
        "processors": {}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dkron_job_is_created_read_back_listed_and_accepted_again_unchanged() {
    let server = Server::fresh(&[]).await;

    let reply = server.post("/v1/jobs", &dkron_job()).await;
    reply.expect(201);
    let location = reply.headers.get("location").and_then(|v| v.to_str().ok());
    assert_eq!(location, Some("/v1/jobs/backup"));
    let created = reply.json.clone();
    for (field, value) in dkron_job().as_object().unwrap() {
        assert_eq!(&created[field], value, "field {field} as created");
    }
    // Our additions take their documented defaults.
    assert_eq!(created["catch_up"], "latest");
    assert_eq!(created["catch_up_window"], "1h");
    assert_eq!(created["retry_backoff"], "1s");
    assert_eq!(created["retry_backoff_max"], "5m");
    // `next` is the next 02:30 in Berlin, in the future.
    let next: Timestamp = created["next"].as_str().expect("next is set").parse().unwrap();
    assert!(next > Timestamp::now());
    let local = next.to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap());
    assert_eq!((local.hour(), local.minute(), local.second()), (2, 30, 0), "next = {next}");

    let shown = server.job("backup").await;
    assert_eq!(without_next(&shown), without_next(&created));
    let list = server.get("/v1/jobs").await;
    assert_eq!(names(&list.expect(200).items()), ["backup"]);
    assert_eq!(list.total_count(), Some(1));

    // ?pretty indents; without it the body is compact.
    let pretty = server.get("/v1/jobs/backup?pretty").await;
    assert!(pretty.expect(200).text.contains("\n  \"name\": \"backup\""), "{}", pretty.text);
    assert_eq!(pretty.json, server.get("/v1/jobs/backup").await.json);
    assert!(!server.get("/v1/jobs/backup").await.text.contains('\n'));

    // A client may send back exactly what it read (read-only fields included): accepted, nothing changes.
    server.post("/v1/jobs", &shown).await.expect(201);
    let again = server.job("backup").await;
    let mut before = without_next(&shown);
    let mut after = without_next(&again);
    for job in [&mut before, &mut after] {
        job.as_object_mut().unwrap().remove("updated_at");
    }
    assert_eq!(after, before);
    assert_eq!(server.job_names().await, ["backup"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_are_filtered_by_query_metadata_status_and_disabled() {
    let server = Server::fresh(&[]).await;
    let jobs = [
        with(
            shell_job("web-frontend", "@manually", "true"),
            json!({"displayname": "Front", "metadata": {"team": "web"}}),
        ),
        with(
            shell_job("web-backend", "@manually", "true"),
            json!({"metadata": {"team": "web", "tier": "back"}, "disabled": true}),
        ),
        with(shell_job("db-backup", "@manually", "true"), json!({"displayname": "Nightly Snapshot"})),
        with(shell_job("failing", "@manually", "exit 1"), json!({"metadata": {"team": "ops"}})),
        shell_job("passing", "@manually", "true"),
    ];
    for job in &jobs {
        server.create_job(job).await;
    }
    server.run("failing").await;
    server.run("passing").await;
    for (name, status) in [("failing", "failed"), ("passing", "success")] {
        wait_until(&format!("{name} has status {status}"), secs(20), async || {
            (server.job(name).await["status"] == status).then_some(())
        })
        .await;
    }

    assert_eq!(listed(&server, "q=front").await, (vec!["web-frontend".into()], Some(1)));
    assert_eq!(listed(&server, "q=snapshot").await, (vec!["db-backup".into()], Some(1)), "q matches displayname");
    assert_eq!(listed(&server, "q=web").await, (vec!["web-backend".into(), "web-frontend".into()], Some(2)));
    assert_eq!(
        listed(&server, "metadata[team]=web").await,
        (vec!["web-backend".into(), "web-frontend".into()], Some(2))
    );
    assert_eq!(listed(&server, "metadata%5Bteam%5D=web&metadata%5Btier%5D=back").await.0, ["web-backend"]);
    assert_eq!(listed(&server, "metadata[team]=nobody").await, (vec![], Some(0)));
    assert_eq!(listed(&server, "disabled=true").await.0, ["web-backend"]);
    assert_eq!(listed(&server, "disabled=false").await.0, ["db-backup", "failing", "passing", "web-frontend"]);
    assert_eq!(listed(&server, "status=failed").await.0, ["failing"]);
    assert_eq!(listed(&server, "status=success").await.0, ["passing"]);
    assert_eq!(listed(&server, "status=untriggered").await.0, ["db-backup", "web-backend", "web-frontend"]);
    assert_eq!(listed(&server, "q=web&disabled=false").await.0, ["web-frontend"], "filters combine");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_are_paged_and_sorted_with_the_total_in_x_total_count() {
    let server = Server::fresh(&[]).await;
    // Display names sort the other way round from names.
    for (name, display) in [("j1", "e"), ("j2", "d"), ("j3", "c"), ("j4", "b"), ("j5", "a"), ("other", "z")] {
        server.create_job(&with(shell_job(name, "@daily", "true"), json!({"displayname": display}))).await;
    }

    assert_eq!(listed(&server, "_start=1&_end=3").await, (vec!["j2".into(), "j3".into()], Some(6)));
    assert_eq!(listed(&server, "_start=5&_end=100").await, (vec!["other".into()], Some(6)));
    assert_eq!(listed(&server, "_start=10").await, (vec![], Some(6)));
    assert_eq!(listed(&server, "_sort=displayname").await.0, ["j5", "j4", "j3", "j2", "j1", "other"]);
    assert_eq!(listed(&server, "_sort=displayname&_order=DESC").await.0, ["other", "j1", "j2", "j3", "j4", "j5"]);
    assert_eq!(listed(&server, "_sort=name&_order=desc").await.0, ["other", "j5", "j4", "j3", "j2", "j1"]);
    // The total counts the filtered list, not the page and not every job.
    assert_eq!(listed(&server, "q=j&_sort=name&_start=0&_end=2").await, (vec!["j1".into(), "j2".into()], Some(5)));
}

#[tokio::test(flavor = "multi_thread")]
async fn toggle_flips_disabled_and_delete_removes_the_job() {
    let server = Server::fresh(&[]).await;
    server.create_job(&shell_job("flip", "@daily", "true")).await;
    server.create_job(&shell_job("stay", "@daily", "true")).await;

    let reply = server.post_empty("/v1/jobs/flip/toggle").await;
    assert_eq!(reply.expect(200).json["disabled"], true);
    assert_eq!(server.job("flip").await["disabled"], true);
    assert_eq!(server.job("flip").await["next"], GO_ZERO_TIME, "a disabled job has no next fire (Go's zero time)");
    let reply = server.post_empty("/v1/jobs/flip/toggle").await;
    assert_eq!(reply.expect(200).json["disabled"], false);
    assert_eq!(server.job("flip").await["disabled"], false);

    let reply = server.delete("/v1/jobs/flip").await;
    assert_eq!(reply.expect(200).json["name"], "flip", "delete answers the deleted job");
    server.get("/v1/jobs/flip").await.expect_error(404, "job");
    assert_eq!(server.job_names().await, ["stay"]);
    server.delete("/v1/jobs/flip").await.expect(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_answers_202_at_once_and_the_run_happens_afterwards() {
    let server = Server::fresh(&[]).await;
    server.create_job(&shell_job("slow", "@manually", "sleep 2; echo slow-done")).await;

    let started = Instant::now();
    let reply = server.post_empty("/v1/jobs/slow/run").await;
    assert!(started.elapsed() < millis(1500), "run must not wait for the run ({:?})", started.elapsed());
    assert_eq!(reply.expect(202).json["name"], "slow");
    // Dkron's older spelling, POST /v1/jobs/{job}, runs the job too.
    server.post_empty("/v1/jobs/slow").await.expect(202);

    let execs = server
        .wait_executions("slow", "two manual runs finished", secs(20), |e| e.len() == 2 && e.iter().all(Exec::is_final))
        .await;
    assert_ne!(execs[0].id, execs[1].id);
    for exec in &execs {
        assert_eq!((exec.status.as_str(), exec.trigger.as_str(), exec.attempt), ("succeeded", "manual", 1));
        assert!(exec.output.contains("slow-done"), "{exec:?}");
        assert!(exec.success);
        assert_eq!(exec.node_name, server.node_name);
    }

    // DELETE /v1/jobs/{job}/executions forgets the finished executions; the job stays.
    server.delete("/v1/jobs/slow/executions").await.expect(200);
    assert!(server.executions("slow").await.is_empty());
    server.get(&format!("/v1/jobs/slow/executions/{}", execs[0].id)).await.expect(404);
    assert!(server.job_exists("slow").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn runoncreate_runs_a_new_job_once() {
    let server = Server::fresh(&[]).await;
    server.post("/v1/jobs?runoncreate=true", &shell_job("eager", "@manually", "echo eager-ran")).await.expect(201);
    server.create_job(&shell_job("lazy", "@manually", "echo lazy-ran")).await;

    let execs =
        server.wait_executions("eager", "its run finished", secs(20), |e| e.len() == 1 && e[0].is_final()).await;
    assert_eq!((execs[0].status.as_str(), execs[0].trigger.as_str()), ("succeeded", "manual"));
    assert!(execs[0].output.contains("eager-ran"));
    assert!(server.executions("lazy").await.is_empty(), "without runoncreate nothing runs");
}

#[tokio::test(flavor = "multi_thread")]
async fn put_creates_or_replaces_the_job_named_in_the_path() {
    let server = Server::fresh(&[]).await;
    let body = json!({"schedule": "@daily", "executor": "shell", "executor_config": {"command": "true"},
                      "owner": "alice", "metadata": {"a": "1"}});
    let reply = server.put("/v1/jobs/report", &body).await;
    assert!(reply.status == 200 || reply.status == 201, "PUT answered {} {}", reply.status, reply.text);
    let job = server.job("report").await;
    assert_eq!((job["name"].as_str(), job["owner"].as_str()), (Some("report"), Some("alice")));

    // A PUT replaces the whole job: fields left out take their defaults.
    let reply = server
        .put(
            "/v1/jobs/report",
            &json!({"name": "report", "schedule": "@hourly", "executor": "shell",
        "executor_config": {"command": "true"}}),
        )
        .await;
    assert!(reply.status == 200 || reply.status == 201, "PUT answered {} {}", reply.status, reply.text);
    let job = server.job("report").await;
    assert_eq!(job["schedule"], "@hourly");
    assert_eq!(job["owner"], "");
    assert_eq!(job["metadata"], json!({}));

    let before = stable_jobs(&server).await;
    server.put("/v1/jobs/report", &with(body, json!({"name": "other"}))).await.expect_error(400, "name");
    assert_eq!(stable_jobs(&server).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_changes_only_the_fields_it_is_given() {
    let server = Server::fresh(&[]).await;
    let original = with(
        shell_job("tuned", "@daily", "echo tuned"),
        json!({"owner": "alice", "metadata": {"team": "a"}, "retries": 2, "timezone": "Europe/Paris"}),
    );
    server.create_job(&original).await;

    let reply = server.patch("/v1/jobs", &json!({"name": "tuned", "disabled": true})).await;
    assert!(reply.status == 200 || reply.status == 201, "PATCH answered {} {}", reply.status, reply.text);
    let job = server.job("tuned").await;
    assert_eq!(job["disabled"], true);
    for field in ["owner", "metadata", "retries", "timezone", "schedule", "executor", "executor_config"] {
        assert_eq!(job[field], original[field], "PATCH changed {field}");
    }

    server.patch("/v1/jobs", &json!({"name": "tuned", "owner": "bob", "metadata": {"x": "y"}})).await;
    let job = server.job("tuned").await;
    assert_eq!((job["owner"].as_str(), &job["metadata"]), (Some("bob"), &json!({"x": "y"})));
    assert_eq!(job["disabled"], true, "an earlier patch is kept");
    assert_eq!(job["retries"], 2);

    let before = stable_jobs(&server).await;
    server
        .patch("/v1/jobs", &json!({"name": "tuned", "schedule": "not a schedule"}))
        .await
        .expect_error(400, "schedule");
    server.patch("/v1/jobs", &json!({"owner": "nobody"})).await.expect_error(400, "name");
    assert_eq!(stable_jobs(&server).await, before);
}

/// One request that must be refused: what it is, the request, and the status and field of the answer.
struct Bad {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: String,
    status: u16,
    field: &'static str,
}

fn bad(what: &'static str, method: &'static str, path: &'static str, body: Value, field: &'static str) -> Bad {
    Bad { what, method, path, body: body.to_string(), status: 400, field }
}

fn bad_job(what: &'static str, changes: Value, field: &'static str) -> Bad {
    // Most cases try to overwrite the existing job "keep", so a partial write would show.
    let job = with(with(shell_job("keep", "@daily", "echo keep"), json!({"owner": "keeper"})), changes);
    bad(what, "POST", "/v1/jobs", job, field)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_request_is_refused_naming_the_field_and_changes_nothing() {
    let server = Server::fresh(&[]).await;
    server.create_job(&with(shell_job("keep", "@daily", "echo keep"), json!({"owner": "keeper"}))).await;
    server.create_job(&shell_job("parent", "@daily", "true")).await;
    let before = stable_jobs(&server).await;

    let http = |config: Value| json!({"executor": "http", "executor_config": config});
    let executor = |name: &str, config: Value| json!({"executor": name, "executor_config": config});
    let cases = [
        bad_job("an unknown field", json!({"schedul": "@hourly"}), "schedul"),
        bad_job("a name with capitals", json!({"name": "Keep"}), "name"),
        bad_job("a name with a slash", json!({"name": "a/b"}), "name"),
        bad_job("an empty name", json!({"name": ""}), "name"),
        bad_job("a second out of range", json!({"schedule": "61 * * * * *"}), "schedule"),
        bad_job("a schedule that is no schedule", json!({"schedule": "every tuesday"}), "schedule"),
        bad_job("an unknown descriptor", json!({"schedule": "@fortnightly"}), "schedule"),
        bad_job("no schedule and no parent", json!({"schedule": ""}), "schedule"),
        bad_job("an unknown time zone", json!({"timezone": "Mars/Olympus_Mons"}), "timezone"),
        bad_job("an unknown executor", json!({"executor": "telepathy"}), "executor"),
        bad_job("no executor", json!({"executor": ""}), "executor"),
        bad_job(
            "a shell job without command",
            json!({"executor_config": {"shell": "true"}}),
            "executor_config.command",
        ),
        bad_job(
            "a bad env pair",
            json!({"executor_config": {"command": "true", "env": "NOVALUE"}}),
            "executor_config.env",
        ),
        bad_job(
            "a bad timeout",
            json!({"executor_config": {"command": "true", "timeout": "soon"}}),
            "executor_config.timeout",
        ),
        bad_job("an http job without url", http(json!({"method": "GET"})), "executor_config.url"),
        bad_job(
            "a bad expectCode",
            http(json!({"url": "http://127.0.0.1:9/", "expectCode": "abc"})),
            "executor_config.expectCode",
        ),
        bad_job(
            "a bad expectBody",
            http(json!({"url": "http://127.0.0.1:9/", "expectBody": "(unclosed"})),
            "executor_config.expectBody",
        ),
        bad_job(
            "bad headers",
            http(json!({"url": "http://127.0.0.1:9/", "headers": "X: y"})),
            "executor_config.headers",
        ),
        bad_job(
            "a nats job without subject",
            executor("nats", json!({"url": "nats://127.0.0.1:4222"})),
            "executor_config.subject",
        ),
        bad_job(
            "a rabbitmq job with a bad delivery mode",
            executor("rabbitmq", json!({"url": "amqp://127.0.0.1", "queue.name": "q", "message.delivery_mode": "9"})),
            "executor_config.message.delivery_mode",
        ),
        bad_job(
            "a redis job with an unknown command",
            executor("redis", json!({"url": "redis://127.0.0.1", "command": "DEL", "key": "k"})),
            "executor_config.command",
        ),
        bad_job(
            "a sql job without statement",
            executor("sql", json!({"url": "postgres://127.0.0.1/db"})),
            "executor_config.statement",
        ),
        bad_job("an unknown concurrency", json!({"concurrency": "sometimes"}), "concurrency"),
        bad_job("an unknown catch_up", json!({"catch_up": "maybe"}), "catch_up"),
        bad_job("an unknown on_overload", json!({"on_overload": "wait"}), "on_overload"),
        bad_job("on_overload retry without retries", json!({"on_overload": "retry"}), "on_overload"),
        bad_job("a bad catch_up_window", json!({"catch_up_window": "a while"}), "catch_up_window"),
        bad_job("a bad retry_backoff", json!({"retry_backoff": "fast"}), "retry_backoff"),
        bad_job(
            "backoff max below backoff",
            json!({"retry_backoff": "10s", "retry_backoff_max": "1s"}),
            "retry_backoff_max",
        ),
        bad_job("too many retries", json!({"retries": 1000}), "retries"),
        bad_job("zero executions retained", json!({"executions_retained": 0}), "executions_retained"),
        bad_job(
            "expires before it starts",
            json!({"starts_at": "2030-01-02T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"}),
            "expires_at",
        ),
        bad_job("a parent that does not exist", json!({"parent_job": "ghost"}), "parent_job"),
        bad_job("its own parent", json!({"parent_job": "keep"}), "parent_job"),
        bad_job("a wrongly typed field", json!({"retries": "three"}), "retries"),
        Bad {
            what: "invalid JSON",
            method: "POST",
            path: "/v1/jobs",
            body: "{\"name\": ".into(),
            status: 400,
            field: "body",
        },
        Bad {
            what: "a JSON array",
            method: "POST",
            path: "/v1/jobs",
            body: "[1, 2]".into(),
            status: 400,
            field: "body",
        },
        bad("PUT with another name in the body", "PUT", "/v1/jobs/keep", shell_job("other", "@daily", "true"), "name"),
        bad(
            "PUT with a bad schedule",
            "PUT",
            "/v1/jobs/keep",
            json!({"schedule": "nope", "executor": "shell",
            "executor_config": {"command": "true"}}),
            "schedule",
        ),
        bad("PATCH without a name", "PATCH", "/v1/jobs", json!({"owner": "x"}), "name"),
        bad(
            "PATCH with a bad concurrency",
            "PATCH",
            "/v1/jobs",
            json!({"name": "keep", "concurrency": "x"}),
            "concurrency",
        ),
        bad("PATCH with an unknown field", "PATCH", "/v1/jobs", json!({"name": "keep", "colour": "red"}), "colour"),
        bad(
            "restore with one bad job",
            "POST",
            "/v1/restore",
            json!([shell_job("restored", "@daily", "true"), shell_job("broken", "bad schedule", "true")]),
            "[1].schedule",
        ),
    ];
    // Every case is checked and every failure reported, so one run shows all that is wrong.
    let mut failures = Vec::new();
    for case in cases {
        let reply = server.request(case.method, case.path, Some(case.body.clone())).await;
        let error = reply.error();
        if reply.status != case.status || !error.starts_with(&format!("{}:", case.field)) {
            failures.push(format!(
                "{}: {} {} {}\n    expected {} naming '{}', got {} {}",
                case.what, case.method, case.path, case.body, case.status, case.field, reply.status, reply.text
            ));
        }
        if stable_jobs(&server).await != before {
            failures.push(format!("{}: changed the stored jobs", case.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad requests were not refused as they should be:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // A parent cycle: child -> parent exists, making parent a child of child is refused.
    server.create_job(&with(shell_job("child", "", "true"), json!({"parent_job": "parent"}))).await;
    let before = stable_jobs(&server).await;
    server.patch("/v1/jobs", &json!({"name": "parent", "parent_job": "child"})).await.expect_error(400, "parent_job");
    assert_eq!(stable_jobs(&server).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_job_that_has_children_is_a_conflict() {
    let server = Server::fresh(&[]).await;
    server.create_job(&shell_job("parent", "@daily", "true")).await;
    server.create_job(&with(shell_job("child", "", "true"), json!({"parent_job": "parent"}))).await;
    assert_eq!(server.job("parent").await["dependent_jobs"], json!(["child"]), "the server maintains dependent_jobs");

    let before = stable_jobs(&server).await;
    let reply = server.delete("/v1/jobs/parent").await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert!(reply.error().contains("child"), "the conflict names the child: {}", reply.error());
    assert_eq!(stable_jobs(&server).await, before);

    server.delete("/v1/jobs/child").await.expect(200);
    assert_eq!(server.job("parent").await["dependent_jobs"], json!([]));
    server.delete("/v1/jobs/parent").await.expect(200);
    assert!(server.jobs().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_jobs_executions_and_routes_answer_404() {
    let server = Server::fresh(&[]).await;
    server.create_job(&shell_job("known", "@manually", "true")).await;
    let before = stable_jobs(&server).await;

    for (method, path) in [
        ("GET", "/v1/jobs/ghost"),
        ("DELETE", "/v1/jobs/ghost"),
        ("POST", "/v1/jobs/ghost"),
        ("POST", "/v1/jobs/ghost/run"),
        ("POST", "/v1/jobs/ghost/toggle"),
        ("GET", "/v1/jobs/ghost/executions"),
        ("DELETE", "/v1/jobs/ghost/executions"),
        ("GET", "/v1/jobs/ghost/executions/0000000000000-1"),
        ("GET", "/v1/jobs/known/executions/0000000000000-1"),
        ("POST", "/v1/jobs/known/executions/0000000000000-1/cancel"),
        ("GET", "/v1/no/such/route"),
    ] {
        let reply = server.request(method, path, None).await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.text);
        assert!(!reply.error().is_empty(), "{method} {path}: a 404 carries an error: {}", reply.text);
    }
    assert_eq!(stable_jobs(&server).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_paging_sorting_and_filter_parameters_answer_400() {
    let server = Server::fresh(&[]).await;
    server.create_job(&shell_job("known", "@manually", "true")).await;
    for (query, field) in [
        ("_start=-1", "_start"),
        ("_start=abc", "_start"),
        ("_end=1.5", "_end"),
        ("_order=sideways", "_order"),
        ("_sort=colour", "_sort"),
        ("status=happy", "status"),
    ] {
        server.get(&format!("/v1/jobs?{query}")).await.expect_error(400, field);
        server.get(&format!("/v1/jobs/known/executions?{query}")).await.expect_error(400, field);
    }
    server.get("/v1/jobs?disabled=maybe").await.expect_error(400, "disabled");
    server.get("/v1/jobs/known/executions?output_size_limit=lots").await.expect_error(400, "output_size_limit");
}

/// One request of the concurrent-writes test, with when it was sent and answered.
struct Acked {
    sent: Instant,
    answered: Instant,
    /// What the request leaves behind if it was the last one applied: `Some(Some(name))` a job with that display
    /// name, `Some(None)` no job, `None` nothing to say (runs and toggles change neither).
    leaves: Option<Option<String>>,
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_and_deletes_of_one_job_never_answer_5xx_and_the_last_write_wins() {
    let server = Arc::new(Server::fresh(&[]).await);
    let clients = 20;
    let until = Instant::now() + secs(3);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0u32;
            while Instant::now() < until {
                n += 1;
                let label = format!("c{client}-{n}");
                let job = with(shell_job("race", "@manually", "true"), json!({"displayname": label}));
                let sent = Instant::now();
                let (reply, leaves) = match (client + n) % 5 {
                    0 | 1 => (server.put("/v1/jobs/race", &job).await, Some(Some(label.clone()))),
                    2 => (server.post("/v1/jobs", &job).await, Some(Some(label.clone()))),
                    3 => (server.delete("/v1/jobs/race").await, Some(None)),
                    _ if n.is_multiple_of(2) => (server.post_empty("/v1/jobs/race/toggle").await, None),
                    _ => (server.post_empty("/v1/jobs/race/run").await, None),
                };
                let answered = Instant::now();
                assert!(reply.status < 500, "a server error under concurrent writes: {} {}", reply.status, reply.text);
                match reply.status {
                    201 => assert_eq!(reply.json["displayname"], json!(label), "a write answers its own result"),
                    200 | 202 | 404 => {}
                    // A toggle reads, flips and writes over the version it read; when other writes keep winning
                    // in between it gives up with a conflict rather than overwrite them.
                    409 if leaves.is_none() => {}
                    other => panic!("unexpected status {other}: {}", reply.text),
                }
                let leaves = match reply.status {
                    // A delete of a missing job and a refused request leave the state as it was.
                    404 | 409 => None,
                    _ => leaves,
                };
                acked.push(Acked { sent, answered, leaves });
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("client task"));
    }
    assert!(acked.len() >= clients as usize * 5, "each client got several answers: {}", acked.len());
    // Among the acknowledged writes (creates, replaces, deletes that found the job), the one applied last cannot
    // have been answered before another write was sent (that one was applied after it): the final state must be
    // what one of the writes still in flight when the last write was sent left behind.
    let writes: Vec<&Acked> = acked.iter().filter(|a| a.leaves.is_some()).collect();
    let last_sent = writes.iter().map(|a| a.sent).max().expect("acknowledged writes");
    let candidates: Vec<&Option<String>> =
        writes.iter().filter(|a| a.answered >= last_sent).filter_map(|a| a.leaves.as_ref()).collect();
    let reply = server.get("/v1/jobs/race").await;
    let final_state = match reply.status {
        200 => Some(reply.json["displayname"].as_str().expect("displayname").to_string()),
        404 => None,
        other => panic!("reading the job back: {other} {}", reply.text),
    };
    assert!(
        candidates.contains(&&final_state),
        "the final state {final_state:?} is none of the last acknowledged writes {candidates:?}"
    );
    assert!(!server.log().contains("job vanished"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_page_of_another_site_cannot_create_run_or_delete_jobs() {
    let ui = "http://ui.example:3000";
    let server = Server::fresh(&["--cors-allowed-origins", ui]).await;
    let job = shell_job("csrf", "@manually", "touch should-not-exist").to_string().into_bytes();
    let post = async |headers: &[(&str, &str)]| {
        server.request_with("POST", "/v1/jobs?runoncreate=true", headers, Some(job.clone())).await
    };

    // "Simple" requests, which a browser sends to any site without asking first: refused before anything runs.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        post(&[("content-type", content_type)]).await.expect_error(415, "Content-Type");
    }
    post(&[]).await.expect_error(415, "Content-Type");
    // JSON from a page of another origin (or another port of this host) needs CORS, which it is not given.
    let evil = [("content-type", "application/json"), ("origin", "https://evil.example")];
    post(&evil).await.expect_error(403, "origin");
    let port =
        [("content-type", "application/json"), ("origin", "http://127.0.0.1:1"), ("sec-fetch-site", "same-site")];
    post(&port).await.expect_error(403, "origin");
    assert!(!server.job_exists("csrf").await, "a refused request created the job");

    // Bodyless state changes are refused the same way.
    server.create_job(&shell_job("target", "@manually", "true")).await;
    for (method, path) in
        [("POST", "/v1/jobs/target/run"), ("POST", "/v1/jobs/target/toggle"), ("DELETE", "/v1/jobs/target")]
    {
        let reply = server.request_with(method, path, &[("origin", "https://evil.example")], None).await;
        reply.expect_error(403, "origin");
        let reply = server.request_with(method, path, &[("sec-fetch-site", "cross-site")], None).await;
        reply.expect_error(403, "origin");
    }
    assert!(server.executions("target").await.is_empty(), "a refused run ran");
    assert_eq!(server.job("target").await["disabled"], json!(false), "a refused toggle toggled");

    // Reads stay open to any page, but without CORS headers its script cannot see the answer.
    let read = server.request_with("GET", "/v1/jobs", &[("origin", "https://evil.example")], None).await;
    read.expect(200);
    assert!(read.headers.get("access-control-allow-origin").is_none(), "{:?}", read.headers);

    // The UI's own requests are same-origin, and an allowed origin gets CORS.
    let own = server.url("");
    let own = own.trim_end_matches('/');
    post(&[("content-type", "application/json"), ("origin", own), ("sec-fetch-site", "same-origin")]).await.expect(201);
    server.delete("/v1/jobs/csrf").await.expect(200);
    let preflight = server
        .request_with(
            "OPTIONS",
            "/v1/jobs",
            &[
                ("origin", ui),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            None,
        )
        .await;
    assert!(preflight.status < 300, "preflight: {} {}", preflight.status, preflight.text);
    assert_eq!(preflight.headers.get("access-control-allow-origin").map(|v| v.to_str().unwrap()), Some(ui));
    let created = post(&[("content-type", "application/json"), ("origin", ui), ("sec-fetch-site", "cross-site")]).await;
    created.expect(201);
    assert_eq!(created.headers.get("access-control-allow-origin").map(|v| v.to_str().unwrap()), Some(ui));
}

#[tokio::test(flavor = "multi_thread")]
async fn framework_errors_are_json_and_name_what_is_wrong() {
    let server = Server::fresh(&[]).await;
    // A body announced over the limit is refused from its header alone. Sent by hand, because a client that
    // pushes all 9 MiB may see the connection closed under it before it reads the answer.
    let addr = server.url("").trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{{\"name\": ",
        9 * 1024 * 1024
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.expect("send");
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await.expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-type: application/json"), "{answer}");
    assert!(answer.contains(r#"{"error":"body: larger than the 8 MiB limit"}"#), "{answer}");
    let reply = server.get("/v1/jobs/%FF%FE").await;
    assert!(reply.status == 400 || reply.status == 404, "{} {}", reply.status, reply.text);
    assert!(!reply.error().is_empty(), "not a JSON error: {}", reply.text);
    let reply = server.get("/v1/jobs/%FF/executions").await;
    assert!(reply.status == 400 || reply.status == 404, "{} {}", reply.status, reply.text);
    assert!(!reply.error().is_empty(), "not a JSON error: {}", reply.text);
    // Empty sort and order values mean the defaults on every list, as in Dkron; a bad order is quoted as sent.
    server.create_job(&shell_job("sorted", "@manually", "true")).await;
    server.get("/v1/jobs?_sort=&_order=").await.expect(200);
    server.get("/v1/jobs/sorted/executions?_sort=&_order=").await.expect(200);
    let reply = server.get("/v1/jobs?_order=foo").await;
    reply.expect_error(400, "_order");
    assert!(reply.error().contains("'foo'"), "{}", reply.error());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_with_a_trailing_slash_too() {
    let server = Server::fresh(&[]).await;
    server.create_job(&shell_job("slash", "@manually", "true")).await;
    for path in [
        "/v1/",
        "/v1/jobs/",
        "/v1/members/",
        "/v1/leader/",
        "/v1/isleader/",
        "/v1/busy/",
        "/v1/jobs/slash/",
        "/v1/jobs/slash/executions/",
        "/v1/pause/",
        "/v1/stats/",
        "/health/",
        "/v1/openapi.json/",
    ] {
        server.get(path).await.expect(200);
    }
    server.post("/v1/jobs/", &shell_job("slash2", "@manually", "true")).await.expect(201);
    server.post_empty("/v1/jobs/slash2/run/").await.expect(202);
    server.delete("/v1/jobs/slash2/").await.expect(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn post_v1_leave_answers_the_members_and_the_node_exits() {
    let mut server = Server::fresh(&[]).await;
    let reply = server.post_empty("/v1/leave").await;
    reply.expect(200);
    let members = reply.items();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["Name"], json!(server.node_name));
    let status = server.wait_exit().await;
    assert!(status.success(), "leave exits 0: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_answers_as_dkron_does() {
    let server = Server::fresh(&[]).await;
    let file = json!([shell_job("r-one", "@daily", "true"), shell_job("r-two", "@daily", "true")]).to_string();
    let boundary = "kairos-test-boundary";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"jobs.json\"\r\n\
         Content-Type: application/json\r\n\r\n{file}\r\n--{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let reply = server.request_with("POST", "/v1/restore", &[("content-type", &content_type)], Some(form.into())).await;
    reply.expect(200);
    // Dkron answers a JSON string that holds a JSON array of result lines.
    let lines: Vec<String> =
        serde_json::from_str(reply.json.as_str().expect("a JSON string")).expect("an array inside");
    assert_eq!(lines, ["success create r-one", "success create r-two"]);
    // A form without a file part: 404 as in Dkron, with a message that says what is missing.
    let empty =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--{boundary}--\r\n");
    let reply =
        server.request_with("POST", "/v1/restore", &[("content-type", &content_type)], Some(empty.into())).await;
    reply.expect_error(404, "file");
    let reply = server.request_with("POST", "/v1/restore", &[("content-type", "text/plain")], Some(file.into())).await;
    reply.expect_error(415, "Content-Type");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_refuses_new_jobs_until_unpause_and_survives_a_restart() {
    let mut server = Server::fresh(&[]).await;
    server.create_job(&shell_job("before", "@daily", "true")).await;
    assert_eq!(server.get("/v1/pause").await.expect(200).json["paused"], false);

    server.post_empty("/v1/pause").await.expect(200);
    assert_eq!(server.get("/v1/pause").await.json["paused"], true);
    let refused = server.post("/v1/jobs", &shell_job("during", "@daily", "true")).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(!refused.error().is_empty());
    assert_eq!(server.put("/v1/jobs/during", &shell_job("during", "@daily", "true")).await.status, 503);
    assert_eq!(server.job_names().await, ["before"], "nothing is created while paused");

    server.kill9().await;
    server.restart().await;
    assert_eq!(server.get("/v1/pause").await.json["paused"], true, "the pause is replicated state");
    assert_eq!(server.post("/v1/jobs", &shell_job("during", "@daily", "true")).await.status, 503);

    server.post_empty("/v1/unpause").await.expect(200);
    assert_eq!(server.get("/v1/pause").await.json["paused"], false);
    server.create_job(&shell_job("after", "@daily", "true")).await;
    assert_eq!(server.job_names().await, ["after", "before"]);
}

fn fire_times(reply: &Reply) -> Vec<(String, String)> {
    reply.json["fires"]
        .as_array()
        .unwrap_or_else(|| panic!("no fires in {}", reply.text))
        .iter()
        .map(|f| (f["utc"].as_str().unwrap().to_string(), f["local"].as_str().unwrap().to_string()))
        .collect()
}

/// A local time as shown by the preview names the same instant as its UTC time.
fn assert_same_instant(utc: &str, local: &str) {
    let u: Timestamp = utc.parse().unwrap_or_else(|e| panic!("utc {utc}: {e}"));
    let l: Timestamp = local.parse().unwrap_or_else(|e| panic!("local {local}: {e}"));
    assert_eq!(u, l, "{utc} vs {local}");
}

#[tokio::test(flavor = "multi_thread")]
async fn schedule_preview_shows_next_fires_in_utc_and_local_time_across_dst() {
    let server = Server::fresh(&[]).await;

    // Spring forward in Berlin (2026-03-29, 02:00 -> 03:00): 02:30 does not exist and runs once at 03:00.
    let reply = server
        .get("/v1/schedule/preview?schedule=0%2030%202%20*%20*%20*&timezone=Europe/Berlin&count=3&from=2026-03-28T00:00:00Z")
        .await;
    reply.expect(200);
    assert_eq!(reply.json["timezone"], "Europe/Berlin");
    let fires = fire_times(&reply);
    let utc: Vec<&str> = fires.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(utc, ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]);
    assert!(fires[0].1.starts_with("2026-03-28T02:30:00") && fires[0].1.ends_with("+01:00"), "{:?}", fires[0]);
    assert!(fires[1].1.starts_with("2026-03-29T03:00:00") && fires[1].1.ends_with("+02:00"), "{:?}", fires[1]);
    assert!(fires[2].1.starts_with("2026-03-30T02:30:00") && fires[2].1.ends_with("+02:00"), "{:?}", fires[2]);
    for (u, l) in &fires {
        assert_same_instant(u, l);
    }

    // Fall back (2026-10-25, 03:00 -> 02:00): 02:30 happens twice and runs once, at the first.
    let reply = server
        .get("/v1/schedule/preview?schedule=0%2030%202%20*%20*%20*&timezone=Europe/Berlin&count=3&from=2026-10-24T00:00:00Z")
        .await;
    let utc: Vec<String> = fire_times(reply.expect(200)).into_iter().map(|(u, _)| u).collect();
    assert_eq!(utc, ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]);

    // Defaults: ten fires after now, in UTC.
    let reply = server.get("/v1/schedule/preview?schedule=@every%2010s").await;
    let fires = fire_times(reply.expect(200));
    assert_eq!(fires.len(), 10);
    let first: Timestamp = fires[0].0.parse().unwrap();
    assert!(first > Timestamp::now() - secs(1) && first <= Timestamp::now() + secs(11), "first = {first}");
    for pair in fires.windows(2) {
        let (a, b): (Timestamp, Timestamp) = (pair[0].0.parse().unwrap(), pair[1].0.parse().unwrap());
        assert_eq!(b.duration_since(a), jiff::SignedDuration::from_secs(10));
    }

    for (query, field) in [
        ("", "schedule"),
        ("schedule=61%20*%20*%20*%20*%20*", "schedule"),
        ("schedule=@daily&timezone=Mars/Base", "timezone"),
        ("schedule=@daily&count=0", "count"),
        ("schedule=@daily&count=1001", "count"),
        ("schedule=@daily&count=many", "count"),
        ("schedule=@daily&from=yesterday", "from"),
    ] {
        server.get(&format!("/v1/schedule/preview?{query}")).await.expect_error(400, field);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn node_routes_describe_the_single_server_and_its_busy_runs() {
    let server = Server::fresh(&[]).await;

    let health = server.get("/health").await;
    assert_eq!(health.expect(200).json["status"], "ok");
    let index = server.get("/v1").await;
    assert_eq!(index.expect(200).json["agent"]["name"], server.node_name.as_str());
    let members = server.get("/v1/members").await;
    let items = members.expect(200).items();
    assert_eq!(items.len(), 1, "{}", members.text);
    assert_eq!(members.total_count(), Some(1));
    assert!(members.text.contains(&server.node_name), "{}", members.text);
    let leader = server.get("/v1/leader").await;
    assert!(leader.expect(200).text.contains(&server.node_name), "{}", leader.text);
    server.get("/v1/isleader").await.expect(200);

    let busy = server.get("/v1/busy").await;
    assert_eq!(busy.expect(200).items().len(), 0);
    server.create_job(&shell_job("busy-one", "@manually", "sleep 30")).await;
    server.run("busy-one").await;
    let busy = wait_until("/v1/busy lists the running execution", secs(20), async || {
        let items = server.get("/v1/busy").await.expect(200).items();
        (items.len() == 1 && items[0]["status"] == "running").then_some(items)
    })
    .await;
    assert_eq!(busy[0]["job_name"], "busy-one");
    let id = busy[0]["id"].as_str().unwrap().to_string();
    server.post_empty(&format!("/v1/jobs/busy-one/executions/{id}/cancel")).await.expect(202);
    wait_until("/v1/busy is empty again", secs(20), async || {
        server.get("/v1/busy").await.expect(200).items().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_in_the_openapi_document_is_served() {
    let server = Server::fresh(&[]).await;
    server.create_job(&shell_job("doc-job", "@manually", "echo documented")).await;
    server.run("doc-job").await;
    let execs =
        server.wait_executions("doc-job", "one finished run", secs(20), |e| e.len() == 1 && e[0].is_final()).await;
    let execution = execs[0].id.clone();

    let doc = server.get("/v1/openapi.json").await;
    doc.expect(200);
    assert!(doc.json["openapi"].as_str().is_some_and(|v| v.starts_with('3')), "an OpenAPI 3 document");
    let paths = doc.json["paths"].as_object().expect("paths");
    // Every route of the issue's API is documented.
    let documented: BTreeSet<String> = paths
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| format!("{} {path}", m.to_uppercase())))
        .collect();
    for route in [
        "GET /health",
        "GET /v1",
        "GET /v1/members",
        "GET /v1/leader",
        "GET /v1/isleader",
        "GET /v1/busy",
        "GET /v1/pause",
        "POST /v1/pause",
        "POST /v1/unpause",
        "POST /v1/restore",
        "POST /v1/leave",
        "GET /v1/schedule/preview",
        "GET /v1/jobs",
        "POST /v1/jobs",
        "PATCH /v1/jobs",
        "PUT /v1/jobs/{job}",
        "GET /v1/jobs/{job}",
        "POST /v1/jobs/{job}",
        "DELETE /v1/jobs/{job}",
        "POST /v1/jobs/{job}/run",
        "POST /v1/jobs/{job}/toggle",
        "GET /v1/jobs/{job}/executions",
        "DELETE /v1/jobs/{job}/executions",
        "GET /v1/jobs/{job}/executions/{execution}",
        "POST /v1/jobs/{job}/executions/{execution}/cancel",
    ] {
        assert!(documented.contains(route), "{route} is not in the OpenAPI document: {documented:?}");
    }

    // Send every documented request; destructive ones last, so the job and execution exist for the others.
    let mut requests: Vec<(String, String)> = documented
        .iter()
        .map(|r| {
            let (method, path) = r.split_once(' ').unwrap();
            let path = path.replace("{job}", "doc-job").replace("{execution}", &execution);
            (method.to_string(), path)
        })
        .collect();
    // Leaving would stop the server: its own test covers it.
    requests.retain(|(method, path)| !(method == "POST" && path == "/v1/leave"));
    requests.sort_by_key(|(method, path)| (method == "DELETE", method == "DELETE" && !path.contains("executions")));
    let job_body = shell_job("doc-job", "@manually", "echo documented").to_string();
    for (method, path) in requests {
        let body = match (method.as_str(), path.as_str()) {
            ("POST", "/v1/restore") => Some(format!("[{job_body}]")),
            ("POST" | "PATCH", "/v1/jobs") | ("PUT", _) => Some(job_body.clone()),
            _ => None,
        };
        let query = if path == "/v1/schedule/preview" { "?schedule=@daily" } else { "" };
        let reply = server.request(&method, &format!("{path}{query}"), body).await;
        assert_ne!(reply.status, 405, "{method} {path} is documented but not allowed");
        assert_ne!(reply.error(), "no such route", "{method} {path} is documented but not routed");
        assert!(reply.status < 500, "{method} {path}: {} {}", reply.status, reply.text);
        if path == "/v1/pause" && method == "POST" {
            server.post_empty("/v1/unpause").await.expect(200);
        }
    }
    // The check above can fail: an undocumented route answers the fallback.
    assert_eq!(server.get("/v1/undocumented").await.error(), "no such route");
    assert_eq!(server.request("PATCH", "/v1/jobs/doc-job/toggle", None).await.status, 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_stores_every_job_of_a_file_parents_first() {
    let server = Server::fresh(&[]).await;
    let file = json!([
        with(shell_job("restored-child", "", "true"), json!({"parent_job": "restored-parent"})),
        shell_job("restored-parent", "@daily", "true"),
    ]);
    server.post("/v1/restore", &file).await.expect(200);
    assert_eq!(server.job_names().await, ["restored-child", "restored-parent"]);
    assert_eq!(server.job("restored-parent").await["dependent_jobs"], json!(["restored-child"]));
}

/// Every field a client may write, each with a value of the wrong JSON type, and the path the error must name
/// (members of `executor_config`, `tags` and `metadata` are named by their path).
fn wrongly_typed_fields() -> Vec<(&'static str, Value)> {
    vec![
        ("name", json!({"name": 3})),
        ("displayname", json!({"displayname": ["x"]})),
        ("schedule", json!({"schedule": 5})),
        ("timezone", json!({"timezone": true})),
        ("owner", json!({"owner": {}})),
        ("owner_email", json!({"owner_email": 1.5})),
        ("disabled", json!({"disabled": "yes"})),
        ("tags", json!({"tags": ["role"]})),
        ("metadata", json!({"metadata": "team=infra"})),
        ("retries", json!({"retries": "3"})),
        ("parent_job", json!({"parent_job": false})),
        ("processors", json!({"processors": []})),
        ("concurrency", json!({"concurrency": 1})),
        ("executor", json!({"executor": ["shell"]})),
        ("executor_config", json!({"executor_config": "echo hi"})),
        ("ephemeral", json!({"ephemeral": "true"})),
        ("starts_at", json!({"starts_at": 1767225600})),
        ("expires_at", json!({"expires_at": ["2030-01-01T00:00:00Z"]})),
        ("catch_up", json!({"catch_up": true})),
        ("catch_up_window", json!({"catch_up_window": 3600})),
        ("retry_backoff", json!({"retry_backoff": 1})),
        ("retry_backoff_max", json!({"retry_backoff_max": false})),
        ("executions_retained", json!({"executions_retained": "10"})),
        ("executor_config.command", json!({"executor_config": {"command": ["echo", "hi"]}})),
        ("executor_config.timeout", json!({"executor_config": {"command": "true", "timeout": 30}})),
        ("tags.role", json!({"tags": {"role": 2}})),
        ("metadata.team", json!({"metadata": {"team": null}})),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrongly_typed_field_is_refused_naming_it_and_nothing_is_created() {
    let server = Server::fresh(&[]).await;
    let mut failures = Vec::new();
    let mut check = |what: String, reply: &Reply, field: &str| {
        let is_json = reply.headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if reply.status != 400 || !is_json || !reply.error().starts_with(&format!("{field}: ")) {
            failures.push(format!(
                "{what}: expected 400 and a JSON error naming '{field}', got {} {}",
                reply.status, reply.text
            ));
        }
    };
    for (field, wrong) in wrongly_typed_fields() {
        let job = with(shell_job("typed", "@daily", "true"), wrong);
        check(format!("POST {job}"), &server.post("/v1/jobs", &job).await, field);
        check(format!("PUT {job}"), &server.put("/v1/jobs/typed", &job).await, field);
        check(format!("PATCH {job}"), &server.patch("/v1/jobs", &job).await, field);
        let file = json!([shell_job("fine", "@daily", "true"), job]);
        check(format!("restore {file}"), &server.post("/v1/restore", &file).await, &format!("[1].{field}"));
    }
    for body in ["[]", "\"x\"", "null", "3", "", "{\"name\": "] {
        check(format!("POST {body:?}"), &server.request("POST", "/v1/jobs", Some(body.to_string())).await, "body");
    }
    assert!(
        failures.is_empty(),
        "{} requests were not refused as they should be:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(server.job_names().await, Vec::<String>::new(), "a refused request creates nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_could_never_run_is_refused_at_creation() {
    let server = Server::fresh(&[]).await;
    let cases = [
        (
            json!({"executor_config": {"command": "echo a\0b", "shell": "true"}}),
            "executor_config.command: contains a NUL byte",
        ),
        (json!({"executor_config": {"command": "true", "cwd": "/tmp\0"}}), "executor_config.cwd: contains a NUL byte"),
        (json!({"executor_config": {"command": "true", "env": "A=\0"}}), "executor_config.env: "),
        (json!({"schedule": "* * * * * * 1999"}), "schedule: '* * * * * * 1999' has no fire time after now ("),
        (json!({"schedule": "0 0 30 2 *"}), "schedule: field 3 (day-of-month) value '30' never occurs"),
        (
            json!({"schedule": "@at 9999-12-31T23:59:59Z"}),
            "schedule: @at timestamp '9999-12-31T23:59:59Z' is after the latest supported instant",
        ),
        (json!({"timezone": "Mars/Base"}), "timezone: unknown time zone 'Mars/Base'; use an IANA name"),
        (
            json!({"schedule": "CRON_TZ=Mars/Base 0 0 * * *"}),
            "schedule: unknown time zone 'Mars/Base' in the schedule's",
        ),
        (json!({"catch_up_window": "soon"}), "catch_up_window: 'soon' is not a duration"),
    ];
    for (change, wanted) in cases {
        let job = with(shell_job("never", "@daily", "true"), change);
        let reply = server.post("/v1/jobs", &job).await;
        reply.expect(400);
        assert!(reply.error().starts_with(wanted), "{job}:\n  wanted {wanted:?}\n     got {:?}", reply.error());
    }
    assert_eq!(server.job_names().await, Vec::<String>::new());
    // A past `@at` is still accepted: it is what every one-shot job becomes after its run.
    let once = server.create_job(&shell_job("once", "@at 2001-01-01T00:00:00Z", "true")).await;
    assert_eq!(once["next"], GO_ZERO_TIME, "{once}");
}

/// Every value of a JSON object is a string (Dkron's `GET /v1` is a `map[string]map[string]string`).
fn all_strings(object: &Value) -> bool {
    object.as_object().is_some_and(|o| !o.is_empty() && o.values().all(Value::is_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_summary_and_members_keep_dkrons_shape_with_ours_beside() {
    let server = Server::fresh(&["--datacenter", "eu-1", "--tag", "pool=batch"]).await;

    let index = server.get("/v1").await.expect(200).json.clone();
    assert_eq!(index["agent"]["name"], server.node_name.as_str());
    assert!(all_strings(&index["agent"]) && all_strings(&index["serf"]) && all_strings(&index["tags"]), "{index:#}");
    let serf = &index["serf"];
    assert_eq!((&serf["members"], &serf["failed"], &serf["left"]), (&json!("1"), &json!("0"), &json!("0")), "{serf}");
    for key in ["health_score", "member_time", "event_time", "query_time", "intent_queue", "event_queue", "encrypted"] {
        assert!(serf[key].is_string(), "serf.{key} is missing: {serf}");
    }
    let tags = &index["tags"];
    for (key, value) in [("role", "dkron"), ("server", "true"), ("dc", "eu-1"), ("region", "global"), ("pool", "batch")]
    {
        assert_eq!(tags[key], value, "tag {key}: {tags}");
    }
    assert_eq!(tags["version"], index["agent"]["version"]);
    assert!(index["raft"]["term"].as_u64().is_some_and(|t| t >= 1), "ours stays beside them: {index:#}");

    let members = server.get("/v1/members").await.expect(200).items();
    let me = &members[0];
    assert_eq!(&me["Tags"], tags, "a member shows the tags the node publishes");
    for key in ["ProtocolMin", "ProtocolMax", "ProtocolCur", "DelegateMin", "DelegateMax", "DelegateCur", "Status"] {
        assert!(me[key].is_u64(), "{key} is missing: {me:#}");
    }
    assert_eq!((&me["Status"], &me["statusText"]), (&json!(1), &json!("alive")));
    // Port is the gossip (UDP) port, as serf's: something holds it, and it is not the RPC port (the `port` tag).
    let (addr, port) = (me["Addr"].as_str().unwrap(), me["Port"].as_u64().unwrap() as u16);
    assert_eq!((addr, me["gossip_addr"].as_str()), ("127.0.0.1", Some(format!("{addr}:{port}").as_str())));
    assert_ne!(tags["port"], port.to_string(), "{me:#}");
    assert_eq!(tags["rpc_addr"], format!("127.0.0.1:{}", tags["port"].as_str().unwrap()));
    let taken = std::net::UdpSocket::bind(("127.0.0.1", port)).map(|_| ()).unwrap_err().kind();
    assert_eq!(taken, std::io::ErrorKind::AddrInUse, "gossip listens on {port}");
    assert_eq!(me["http_addr"].as_str().map(|a| format!("http://{a}/x")), Some(server.url("/x")));
    assert_eq!(server.get("/v1/leader").await.expect(200).json["Tags"], *tags);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_bound_to_every_interface_is_shown_at_the_advertise_address() {
    let every = ["--http-addr", "0.0.0.0:0", "--bind-addr", "0.0.0.0:0", "--advertise-addr", "127.0.0.2"];
    let server = Server::fresh(&every).await;
    let port = server.url("").rsplit_once(':').unwrap().1.to_string();
    let members = server.get("/v1/members").await.expect(200).items();
    let http_addr = members[0]["http_addr"].as_str().unwrap().to_string();
    assert_eq!(http_addr, format!("127.0.0.2:{port}"), "not 0.0.0.0 nor 127.0.0.1: {:#}", members[0]);
    assert_eq!(members[0]["Addr"], "127.0.0.2");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = http.get(format!("http://{http_addr}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "others reach the API at the address shown");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_written_for_dkrons_built_in_tags_run_on_a_kairos_server() {
    let server = Server::fresh(&[]).await;
    for (name, tags) in [("on-dkron", json!({"role": "dkron:1"})), ("on-server", json!({"server": "true"}))] {
        server.create_job(&with(shell_job(name, "@manually", "echo placed"), json!({"tags": tags}))).await;
        server.run(name).await;
        let execs = server.wait_executions(name, "one run", secs(20), |e| e.len() == 1 && e[0].is_final()).await;
        assert_eq!(execs[0].status, "succeeded", "{name}: {execs:?}");
        assert_eq!(execs[0].node_name, server.node_name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_own_role_tag_is_shown_and_placed_as_it_is_matched() {
    let server = Server::fresh(&["--tag", "role=web"]).await;
    let members = server.get("/v1/members").await.expect(200).items();
    assert_eq!(members[0]["Tags"]["role"], "web", "{:#}", members[0]);
    assert_eq!(server.get("/v1/leader").await.expect(200).json["Tags"]["role"], "web");
    for (name, role) in [("web-job", "web"), ("dkron-job", "dkron:1")] {
        server.create_job(&with(shell_job(name, "@manually", "echo placed"), json!({"tags": {"role": role}}))).await;
        server.run(name).await;
        let execs = server.wait_executions(name, "one run", secs(20), |e| e.len() == 1 && e[0].is_final()).await;
        assert_eq!(execs[0].status, "succeeded", "{name}: {execs:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unset_go_time_fields_are_gos_zero_time_and_nullable_ones_null() {
    let server = Server::fresh(&[]).await;
    let job = server.create_job(&shell_job("zero", "@manually", "sleep 30")).await;
    assert_eq!(job["next"], GO_ZERO_TIME, "a time.Time in Dkron");
    assert_eq!((&job["last_success"], &job["last_error"]), (&Value::Null, &Value::Null), "NullableTime in Dkron");
    server.run("zero").await;
    let running = wait_until("the run is running", secs(20), async || {
        let items = server.get("/v1/jobs/zero/executions").await.expect(200).items();
        items.into_iter().find(|e| e["status"] == "running")
    })
    .await;
    // Dkron's UI tells a running execution by this very value.
    assert_eq!(running["finished_at"], GO_ZERO_TIME, "{running:#}");
    assert!(running["started_at"].as_str().is_some_and(|s| s != GO_ZERO_TIME), "{running:#}");
    let busy = server.get("/v1/busy").await.expect(200).items();
    assert_eq!(busy[0]["finished_at"], GO_ZERO_TIME);
    let id = running["id"].as_str().unwrap();
    let shown = server.get(&format!("/v1/jobs/zero/executions/{id}")).await.expect(200).json.clone();
    assert_eq!(shown["finished_at"], GO_ZERO_TIME);
    server.post_empty(&format!("/v1/jobs/zero/executions/{id}/cancel")).await.expect(202);
}
