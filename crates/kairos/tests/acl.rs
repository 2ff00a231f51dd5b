//! Access control as an operator and its users meet it, on real processes: with `--acl-enabled` every API route
//! answers 401 without a valid token and 403 when the token's policies do not allow the request; the bootstrap
//! works once per cluster; tokens and policies are replicated, so they work on followers and after the leader is
//! killed; lists show only what a token may read. With ACL off (the default) nothing changes (every other test
//! file runs that way).

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

#[allow(unused_imports)] // the ticker helpers are for the scheduling tests
mod cluster_common;
mod common;

use std::time::Duration;

use cluster_common::*;
use common::*;

/// The secrets of the tokens the matrix is run with.
struct Tokens {
    management: String,
    readonly: String,
    team_a: String,
    expired: String,
}

/// Who sends a request: nobody, or the holder of one of the [`Tokens`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Nobody,
    Readonly,
    TeamA,
    Management,
    Expired,
}

const EVERYONE: [Who; 5] = [Who::Nobody, Who::Readonly, Who::TeamA, Who::Management, Who::Expired];

impl Tokens {
    fn secret(&self, who: Who) -> Option<&str> {
        match who {
            Who::Nobody => None,
            Who::Readonly => Some(&self.readonly),
            Who::TeamA => Some(&self.team_a),
            Who::Management => Some(&self.management),
            Who::Expired => Some(&self.expired),
        }
    }
}

/// Send a request as `who` (`X-Dkron-Token`), with a JSON body if given.
async fn send(api: &Client, tokens: &Tokens, who: Who, method: &str, path: &str, body: Option<&Value>) -> Reply {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(secret) = tokens.secret(who) {
        headers.push(("x-dkron-token", secret));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    api.request_with(method, path, &headers, body.map(|b| b.to_string().into_bytes())).await
}

fn team_a_policy() -> Value {
    json!({"name": "team-a", "description": "team A's jobs", "rules": {"path": {
        "/v1/jobs/team-a-*": {"capabilities": ["read", "list", "create", "update", "delete"]},
    }}})
}

fn job(name: &str) -> Value {
    shell_job(name, "@every 1h", "true")
}

/// Create a token as `management`; its secret.
async fn create_token(api: &Client, management: &str, body: Value) -> String {
    let headers = [("x-dkron-token", management), ("content-type", "application/json")];
    let reply = api.request_with("POST", "/v1/acl/tokens", &headers, Some(body.to_string().into_bytes())).await;
    reply.expect(201);
    assert!(reply.json["accessor_id"].is_string(), "{}", reply.text);
    reply.json["secret"].as_str().expect("the creating answer holds the secret").to_string()
}

/// The team-a policy and one token of each kind, created as `management` through `api`.
async fn tokens(api: &Client, management: &str) -> Tokens {
    let headers = [("x-dkron-token", management), ("content-type", "application/json")];
    let policy = team_a_policy().to_string().into_bytes();
    api.request_with("POST", "/v1/acl/policies", &headers, Some(policy)).await.expect(200);
    let readonly = create_token(api, management, json!({"name": "viewer", "policies": ["readonly"]})).await;
    let team_a = create_token(api, management, json!({"name": "team A", "policies": ["team-a"]})).await;
    let expired = create_token(api, management, json!({"name": "short", "policies": ["readonly"], "ttl": "1ms"})).await;
    Tokens { management: management.to_string(), readonly, team_a, expired }
}

/// One row of the matrix: a request and the status each caller gets, in the order of [`EVERYONE`].
struct Row {
    method: &'static str,
    path: &'static str,
    expect: [u16; 5],
}

fn row(method: &'static str, path: &'static str, expect: [u16; 5]) -> Row {
    Row { method, path, expect }
}

/// Requests that change nothing the later rows depend on, over every kind of route, and who may send them:
/// nobody, readonly, team A (`/v1/jobs/team-a-*`), management, an expired token.
fn matrix() -> Vec<Row> {
    const OPEN: [u16; 5] = [200, 200, 200, 200, 200];
    const READ: [u16; 5] = [401, 200, 403, 200, 401];
    const TEAM_READ: [u16; 5] = [401, 200, 200, 200, 401];
    const MANAGE: [u16; 5] = [401, 403, 403, 200, 401];
    // A page opened without a valid token redirects to the sign-in page (303, followed by the client).
    const PAGE: [u16; 5] = [303, 200, 403, 200, 303];
    vec![
        row("GET", "/health", OPEN),
        row("GET", "/v1", READ),
        row("GET", "/v1/members", READ),
        row("GET", "/v1/leader", READ),
        row("GET", "/v1/busy", READ),
        row("GET", "/v1/pause", READ),
        row("GET", "/v1/stats", READ),
        row("GET", "/v1/openapi.json", READ),
        row("GET", "/v1/schedule/preview?schedule=@hourly", READ),
        row("GET", "/v1/jobs", TEAM_READ),
        row("GET", "/v1/jobs/", TEAM_READ),
        row("GET", "/v1/jobs/team-a-one", TEAM_READ),
        row("GET", "/v1/jobs/team-b-one", READ),
        row("GET", "/v1/jobs/team-a-one/executions", TEAM_READ),
        row("GET", "/v1/jobs/team-b-one/executions", READ),
        row("POST", "/v1/jobs/team-a-one/run", [401, 403, 202, 202, 401]),
        row("POST", "/v1/jobs/team-b-one/run", [401, 403, 403, 202, 401]),
        row("POST", "/v1/jobs/team-b-one/toggle", [401, 403, 403, 200, 401]),
        row("POST", "/v1/jobs/team-b-one/toggle", [401, 403, 403, 200, 401]),
        row("DELETE", "/v1/jobs/team-b-one/executions", MANAGE),
        row("POST", "/v1/unpause", MANAGE),
        row("GET", "/v1/acl/tokens", MANAGE),
        row("GET", "/v1/acl/policies", MANAGE),
        row("GET", "/v1/acl/policies/readonly", MANAGE),
        row("GET", "/v1/secrets", READ),
        row("GET", "/v1/audit", READ),
        row("GET", "/ui/", PAGE),
        row("GET", "/ui/jobs", PAGE),
        row("GET", "/ui/signin", OPEN),
    ]
}

/// Every caller against every row; every mismatch is reported at once.
async fn assert_matrix(api: &Client, tokens: &Tokens, where_: &str) {
    let mut wrong = Vec::new();
    for row in matrix() {
        for (who, expected) in EVERYONE.iter().zip(row.expect) {
            let reply = send(api, tokens, *who, row.method, row.path, None).await;
            let signin_page = reply.status == 200 && reply.text.contains("<title>Sign in");
            if expected == 303 && signin_page {
                continue;
            }
            if reply.status != expected {
                wrong.push(format!(
                    "{} {} as {who:?}: {} (expected {expected}): {}",
                    row.method, row.path, reply.status, reply.text
                ));
            } else if expected == 401 || expected == 403 {
                assert!(
                    reply.json["error"].is_string(),
                    "{} {}: a JSON error, got {}",
                    row.method,
                    row.path,
                    reply.text
                );
            }
        }
    }
    assert!(wrong.is_empty(), "on {where_}:\n{}", wrong.join("\n"));
}

async fn acl_server() -> Server {
    Server::fresh(&["--acl-enabled", "--encrypt", TEST_CLUSTER_KEY]).await
}

/// Bootstrap through `api`, retrying while no leader accepts writes yet; the management secret.
async fn bootstrap(api: &Client) -> String {
    wait_until("the bootstrap is accepted", secs(60), async || {
        let reply = api.try_request("POST", "/v1/acl/bootstrap", None, None).await.ok()?;
        if reply.status == 503 {
            return None;
        }
        reply.expect(201);
        assert_eq!(reply.json["type"], "management", "{}", reply.text);
        assert_eq!(reply.json["name"], "Bootstrap Token");
        Some(reply.json["secret"].as_str().expect("secret").to_string())
    })
    .await
}

async fn create_jobs(api: &Client, tokens: &Tokens) {
    for name in ["team-a-one", "team-a-two", "team-b-one"] {
        send(api, tokens, Who::Management, "POST", "/v1/jobs", Some(&job(name))).await.expect(201);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_401_403_or_200_by_token() {
    let server = acl_server().await;
    let api = server.api();
    let anonymous = server.get("/v1/jobs").await;
    anonymous.expect_error(401, "token");
    assert_eq!(anonymous.headers["www-authenticate"], "Bearer realm=\"kairos\"");
    server.get("/health").await.expect(200);
    let management = bootstrap(api).await;
    let tokens = tokens(api, &management).await;
    create_jobs(api, &tokens).await;
    tokio::time::sleep(millis(20)).await; // the 1 ms token has expired by now
    assert_matrix(api, &tokens, "a single server").await;

    // The 403 names the capability and the path; POST /v1/jobs is checked on the job's own path.
    let denied = send(api, &tokens, Who::Readonly, "POST", "/v1/jobs", Some(&job("team-a-new"))).await;
    denied.expect(403);
    assert!(denied.error().contains("'create' on '/v1/jobs/team-a-new'"), "{}", denied.text);
    let expired = send(api, &tokens, Who::Expired, "GET", "/v1/jobs", None).await;
    assert!(expired.error().contains("expired"), "{}", expired.text);
    let unknown =
        api.request_with("GET", "/v1/jobs", &[("x-dkron-token", "6f1c2f52-5a0e-4c7e-9a55-2a4c1c1f0b4e")], None).await;
    unknown.expect_error(401, "token");
    let bearer = format!("Bearer {}", tokens.readonly);
    api.request_with("GET", "/v1/jobs", &[("authorization", &bearer)], None).await.expect(200);
    api.request_with("GET", "/v1/jobs", &[("x-dkron-token", "not-a-secret")], None)
        .await
        .expect_error(400, "X-Dkron-Token");
    api.request_with("GET", "/v1/jobs", &[("authorization", "Basic Zm9vOmJhcg==")], None)
        .await
        .expect_error(400, "Authorization");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_glob_token_writes_and_lists_only_its_own_jobs() {
    let server = acl_server().await;
    let api = server.api();
    let management = bootstrap(api).await;
    let tokens = tokens(api, &management).await;
    create_jobs(api, &tokens).await;

    // POST /v1/jobs is an upsert: create for a new name, update for an existing one; both granted to team A.
    send(api, &tokens, Who::TeamA, "POST", "/v1/jobs", Some(&job("team-a-new"))).await.expect(201);
    send(api, &tokens, Who::TeamA, "POST", "/v1/jobs", Some(&job("team-a-new"))).await.expect(201);
    let other = send(api, &tokens, Who::TeamA, "POST", "/v1/jobs", Some(&job("team-b-new"))).await;
    other.expect(403);
    assert!(other.error().contains("'create' on '/v1/jobs/team-b-new'"), "{}", other.text);
    let update_b = send(api, &tokens, Who::TeamA, "POST", "/v1/jobs", Some(&job("team-b-one"))).await;
    assert!(update_b.error().contains("'update' on '/v1/jobs/team-b-one'"), "{}", update_b.text);
    send(api, &tokens, Who::TeamA, "PATCH", "/v1/jobs", Some(&json!({"name": "team-b-one", "disabled": true})))
        .await
        .expect(403);
    send(api, &tokens, Who::TeamA, "PUT", "/v1/jobs/team-b-one", Some(&job("team-b-one"))).await.expect(403);
    send(api, &tokens, Who::TeamA, "PUT", "/v1/jobs/team-a-put", Some(&job("team-a-put"))).await.expect(201);
    send(api, &tokens, Who::TeamA, "DELETE", "/v1/jobs/team-a-put", None).await.expect(200);
    send(api, &tokens, Who::TeamA, "DELETE", "/v1/jobs/team-b-one", None).await.expect(403);
    send(api, &tokens, Who::TeamA, "DELETE", "/v1/jobs/team-a-new", None).await.expect(200);

    // Lists show only what the token may read, and X-Total-Count counts only that.
    let listed = |reply: &Reply| -> (Vec<String>, Option<usize>) {
        let names = reply.items().iter().map(|j| j["name"].as_str().unwrap().to_string()).collect();
        (names, reply.total_count())
    };
    let team = send(api, &tokens, Who::TeamA, "GET", "/v1/jobs", None).await;
    assert_eq!(listed(&team), (vec!["team-a-one".to_string(), "team-a-two".to_string()], Some(2)));
    let page = send(api, &tokens, Who::TeamA, "GET", "/v1/jobs?_start=1&_end=2", None).await;
    assert_eq!(listed(&page), (vec!["team-a-two".to_string()], Some(2)));
    let filtered = send(api, &tokens, Who::TeamA, "GET", "/v1/jobs?q=one", None).await;
    assert_eq!(listed(&filtered), (vec!["team-a-one".to_string()], Some(1)));
    let all = send(api, &tokens, Who::Readonly, "GET", "/v1/jobs", None).await;
    assert_eq!(listed(&all).1, Some(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_and_policies_are_refused_naming_the_field_and_change_nothing() {
    let server = acl_server().await;
    let api = server.api();
    let management = bootstrap(api).await;
    let as_management = async |method: &str, path: &str, body: Value| {
        let headers = [("x-dkron-token", management.as_str()), ("content-type", "application/json")];
        api.request_with(method, path, &headers, Some(body.to_string().into_bytes())).await
    };
    let policies_before = as_management("GET", "/v1/acl/policies", Value::Null).await.text;
    let tokens_before = as_management("GET", "/v1/acl/tokens", Value::Null).await.text;

    let unknown_cap = json!({"name": "p", "rules": {"path": {"/v1/jobs/*": {"capabilities": ["write"]}}}});
    let reply = as_management("POST", "/v1/acl/policies", unknown_cap).await;
    reply.expect_error(400, "rules.path./v1/jobs/*.capabilities");
    let bad_glob = json!({"name": "p", "rules": {"path": {"/v1/jobs/[ab]": {"capabilities": ["read"]}}}});
    as_management("POST", "/v1/acl/policies", bad_glob).await.expect_error(400, "rules.path./v1/jobs/[ab]");
    let builtin = json!({"name": "readonly", "rules": {"path": {"/*": {"capabilities": ["delete"]}}}});
    as_management("POST", "/v1/acl/policies", builtin).await.expect_error(400, "name");
    as_management("DELETE", "/v1/acl/policies/default", Value::Null).await.expect_error(400, "name");

    let unknown_policy = json!({"name": "t", "policies": ["nope"]});
    as_management("POST", "/v1/acl/tokens", unknown_policy).await.expect_error(400, "policies");
    as_management("POST", "/v1/acl/tokens", json!({"name": "t", "type": "root", "policies": ["readonly"]}))
        .await
        .expect_error(400, "type");
    as_management("POST", "/v1/acl/tokens", json!({"name": "t", "policies": ["readonly"], "ttl": "later"}))
        .await
        .expect_error(400, "ttl");
    as_management("POST", "/v1/acl/tokens", json!({"name": "t"})).await.expect_error(400, "policies");
    as_management("GET", "/v1/acl/tokens/not-an-id", Value::Null).await.expect_error(400, "accessor_id");

    assert_eq!(as_management("GET", "/v1/acl/policies", Value::Null).await.text, policies_before);
    assert_eq!(as_management("GET", "/v1/acl/tokens", Value::Null).await.text, tokens_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_bootstraps_once_and_manages_tokens_and_policies() {
    let server = acl_server().await;
    let addr = server.api().base().trim_start_matches("http://").to_string();
    let first = cli(&["acl", "bootstrap", "--http-addr", &addr]).await;
    assert!(first.status.success(), "{}{}", first.stdout, first.stderr);
    for key in ["Accessor ID: ", "Secret: ", "Name: Bootstrap Token", "Type: management", "CreateTime: ", "Policies: "]
    {
        assert!(first.stdout.lines().any(|l| l.starts_with(key)), "no '{key}' line in:\n{}", first.stdout);
    }
    let secret = first.stdout.lines().find_map(|l| l.strip_prefix("Secret: ")).unwrap().to_string();
    let second = cli(&["acl", "bootstrap", "--http-addr", &addr]).await;
    assert!(!second.status.success());
    assert!(second.stderr.contains("already bootstrapped"), "{}", second.stderr);

    let rules = server.data_dir().join("team-a.json");
    std::fs::write(&rules, team_a_policy()["rules"].to_string()).unwrap();
    let rules = rules.to_str().unwrap();
    let auth = ["--http-addr", &addr, "--token", &secret];
    let applied =
        cli(&[&["acl", "policy", "apply", "--name", "team-a", "--rules-file", rules], &auth[..]].concat()).await;
    assert!(applied.status.success(), "{}{}", applied.stdout, applied.stderr);
    let listed = cli(&[&["acl", "policy", "list"], &auth[..]].concat()).await;
    assert!(listed.stdout.contains("team-a: ") && listed.stdout.contains("readonly: "), "{}", listed.stdout);

    let bad = server.data_dir().join("bad.json");
    std::fs::write(&bad, r#"{"path": {"/v1/*": {"capabilities": ["sudo"]}}}"#).unwrap();
    let refused =
        cli(&[&["acl", "policy", "apply", "--name", "bad", "--rules-file", bad.to_str().unwrap()], &auth[..]].concat())
            .await;
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("rules.path./v1/*.capabilities"), "{}", refused.stderr);

    let created =
        cli(&[&["acl", "token", "create", "--name", "ci", "--policy", "team-a", "--ttl", "24h"], &auth[..]].concat())
            .await;
    assert!(created.status.success(), "{}{}", created.stdout, created.stderr);
    assert!(created.stdout.contains("Secret: ") && created.stdout.contains("Policies: team-a"), "{}", created.stdout);
    assert!(created.stdout.contains("ExpirationTime: "), "{}", created.stdout);
    let accessor = created.stdout.lines().find_map(|l| l.strip_prefix("Accessor ID: ")).unwrap().to_string();
    let tokens = cli(&[&["acl", "token", "list"], &auth[..]].concat()).await;
    assert!(tokens.stdout.contains(&accessor) && !tokens.stdout.contains("Secret:"), "{}", tokens.stdout);
    let info = cli(&[&["acl", "token", "info", &accessor], &auth[..]].concat()).await;
    assert!(info.stdout.contains("Name: ci") && !info.stdout.contains("Secret:"), "{}", info.stdout);
    let deleted = cli(&[&["acl", "token", "delete", &accessor], &auth[..]].concat()).await;
    assert!(deleted.status.success(), "{}", deleted.stderr);
    let gone = cli(&[&["acl", "token", "info", &accessor], &auth[..]].concat()).await;
    assert!(!gone.status.success() && gone.stderr.contains("not found"), "{}", gone.stderr);
    let unauthorized = cli(&["acl", "token", "list", "--http-addr", &addr]).await;
    assert!(!unauthorized.status.success() && unauthorized.stderr.contains("401"), "{}", unauthorized.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_acl_a_server_listening_beyond_loopback_warns_loudly_in_its_log_and_ui() {
    let open = Server::fresh(&["--http-addr", "0.0.0.0:0"]).await;
    wait_until("the warning", secs(10), async || open.log().contains("ACL IS DISABLED").then_some(())).await;
    let banner = "Access control is disabled and this API listens on";
    assert!(open.get("/ui/").await.text.contains(banner), "the UI shows a banner too");
    let local = Server::fresh(&[]).await;
    assert!(!local.log().contains("ACL IS DISABLED"), "a loopback API needs no warning");
    assert!(!local.get("/ui/").await.text.contains(banner));
    local.get("/v1/jobs").await.expect(200);
}

/// Tokens are replicated state: a three-server cluster enforces them the same way on followers and on the
/// leader, refuses a second bootstrap anywhere, and keeps them after the leader is killed.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_work_on_every_server_and_after_the_leader_is_killed() {
    let mut cluster = Cluster::start(3, &[], &["--acl-enabled", "--encrypt", TEST_CLUSTER_KEY]).await;
    // Clients without the harness's token, so each request carries exactly the token the test gives it.
    let bases: Vec<String> = (0..3).map(|i| cluster.node(i).http_base()).collect();
    let plain = |i: usize| Client::new(&bases[i], Duration::from_secs(30));
    let management = bootstrap(&plain(1)).await;
    cluster.authorize(&management);
    let leader = cluster.wait_formed().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let other = (0..3).find(|&i| i != leader && i != follower).unwrap();

    let api = plain(follower);
    let tokens = tokens(&api, &management).await;
    create_jobs(&api, &tokens).await;
    // The last write went through `follower`; wait until the others applied it too.
    for i in 0..3 {
        wait_until("the tokens are applied everywhere", secs(10), async || {
            let reply = send(&plain(i), &tokens, Who::TeamA, "GET", "/v1/jobs/team-b-one", None).await;
            (reply.status == 403).then_some(())
        })
        .await;
    }
    tokio::time::sleep(millis(20)).await;
    assert_matrix(&plain(follower), &tokens, "a follower").await;
    assert_matrix(&plain(leader), &tokens, "the leader").await;
    plain(other).request("POST", "/v1/acl/bootstrap", None).await.expect(409);

    cluster.kill9(leader).await;
    let new_leader = cluster.wait_leader().await;
    assert_ne!(new_leader, leader);
    for i in [new_leader, (0..3).find(|&i| i != leader && i != new_leader).unwrap()] {
        let api = plain(i);
        send(&api, &tokens, Who::Nobody, "GET", "/v1/jobs", None).await.expect(401);
        send(&api, &tokens, Who::Readonly, "GET", "/v1/jobs", None).await.expect(200);
        let team = send(&api, &tokens, Who::TeamA, "GET", "/v1/jobs", None).await;
        team.expect(200);
        let names: Vec<String> = team.items().iter().map(|j| j["name"].as_str().unwrap().to_string()).collect();
        assert!(names.len() >= 2 && names.iter().all(|n| n.starts_with("team-a-")), "{names:?}");
        assert_eq!(team.total_count(), Some(names.len()));
        send(&api, &tokens, Who::TeamA, "POST", "/v1/jobs", Some(&job(&format!("team-a-after-{i}")))).await.expect(201);
        send(&api, &tokens, Who::TeamA, "POST", "/v1/jobs", Some(&job(&format!("team-b-after-{i}")))).await.expect(403);
        send(&api, &tokens, Who::Expired, "GET", "/v1/jobs", None).await.expect(401);
    }
    plain(new_leader).request("POST", "/v1/acl/bootstrap", None).await.expect(409);
}

/// With ACL on, a page opened without a token goes to the sign-in page; signing in sets an `HttpOnly`,
/// `SameSite=Strict` cookie the pages and the API accept; a forged cross-site sign-in is refused; signing out
/// clears the cookie.
#[tokio::test(flavor = "multi_thread")]
async fn the_ui_signs_in_with_a_token_into_a_strict_cookie_and_out_again() {
    let server = acl_server().await;
    let management = bootstrap(server.api()).await;
    let tokens = tokens(server.api(), &management).await;
    create_jobs(server.api(), &tokens).await;
    let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let ui = Client::with_http(http, server.api().base());

    let away = ui.get("/ui/jobs").await;
    assert_eq!((away.status, away.headers["location"].to_str().unwrap()), (303, "/ui/signin"));
    let form = ui.get("/ui/signin").await;
    form.expect(200);
    assert!(form.text.contains("name=\"secret\""), "{}", form.text);

    let post = |secret: &str, origin: Option<&'static str>| {
        let body = format!("secret={secret}").into_bytes();
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(origin) = origin {
            headers.push(("origin", origin));
        }
        let ui = ui.clone();
        async move { ui.request_with("POST", "/ui/signin", &headers, Some(body)).await }
    };
    post("6f1c2f52-5a0e-4c7e-9a55-2a4c1c1f0b4e", None).await.expect(401);
    post(&tokens.expired, None).await.expect(401);
    post(&tokens.readonly, Some("https://evil.example")).await.expect(403);
    let signed_in = post(&tokens.readonly, None).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.text);
    let cookie = signed_in.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();

    let with_cookie = [("cookie", pair.as_str())];
    let jobs = ui.request_with("GET", "/ui/jobs", &with_cookie, None).await;
    jobs.expect(200);
    assert!(jobs.text.contains("Sign out"), "a signed-in page offers to sign out");
    ui.request_with("GET", "/v1/jobs", &with_cookie, None).await.expect(200);
    // The job page offers only what the token may do: nothing but Clone for a readonly token.
    let job_page = |cookie: String| {
        let ui = ui.clone();
        async move { ui.request_with("GET", "/ui/jobs/team-a-one", &[("cookie", cookie.as_str())], None).await }
    };
    let readonly_page = job_page(pair.clone()).await;
    readonly_page.expect(200);
    assert!(!readonly_page.text.contains("data-action=\"run\""), "no Run button for a readonly token");
    assert!(!readonly_page.text.contains("data-action=\"delete\""));
    let managed = job_page(format!("kairos_token={}", tokens.management)).await;
    assert!(managed.text.contains("data-action=\"run\"") && managed.text.contains("data-action=\"delete\""));
    // The cookie carries the readonly token's rights, no more.
    let write = ui.request_with("POST", "/v1/unpause", &with_cookie, None).await;
    write.expect(403);

    let out = ui.request_with("POST", "/ui/signout", &with_cookie, None).await;
    assert_eq!(out.status, 303);
    assert!(out.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
}

/// Tokens and the bootstrap are in the replicated state on disk: after a `kill -9` and a restart the tokens
/// still work and the bootstrap is still refused.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_the_bootstrap_survive_a_kill_and_restart() {
    let mut server = acl_server().await;
    let management = bootstrap(server.api()).await;
    let tokens = tokens(server.api(), &management).await;
    server.kill9().await;
    server.restart().await;
    let api = server.api();
    send(api, &tokens, Who::Readonly, "GET", "/v1/jobs", None).await.expect(200);
    send(api, &tokens, Who::TeamA, "GET", "/v1/members", None).await.expect(403);
    send(api, &tokens, Who::Management, "GET", "/v1/acl/tokens", None).await.expect(200);
    send(api, &tokens, Who::Nobody, "GET", "/v1/jobs", None).await.expect(401);
    server.request("POST", "/v1/acl/bootstrap", None).await.expect(409);
}

/// Every write request is in the audit log, refusals included, with who made it and from where: the bootstrap
/// (no token yet), a management token's writes, a readonly token's refused delete (403) and a request without a
/// token (401); reads are not. The log filters by token and job, pages newest first, and survives a kill and a
/// restart; a token that may not read `/v1/audit` is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_records_every_write_with_who_made_it_and_survives_a_restart() {
    let mut server = acl_server().await;
    let management = bootstrap(server.api()).await;
    let tokens = tokens(server.api(), &management).await;
    let api = server.api();
    send(api, &tokens, Who::Management, "POST", "/v1/jobs", Some(&job("audited"))).await.expect(201);
    send(api, &tokens, Who::Management, "POST", "/v1/jobs/audited/run", None).await.expect(202);
    send(api, &tokens, Who::Readonly, "DELETE", "/v1/jobs/audited", None).await.expect(403);
    send(api, &tokens, Who::Nobody, "POST", "/v1/jobs/audited/toggle", None).await.expect(401);
    send(api, &tokens, Who::Management, "GET", "/v1/jobs/audited", None).await.expect(200);

    let audit = async |query: &str| -> Vec<Value> {
        let reply = send(server.api(), &tokens, Who::Management, "GET", &format!("/v1/audit{query}"), None).await;
        reply.expect(200);
        reply.json.as_array().expect("a list").clone()
    };
    // Records are committed a moment after their answers.
    let records = wait_until("the toggle's refusal is in the audit log", secs(10), async || {
        let records = audit("?job=audited").await;
        (records.len() == 4).then_some(records)
    })
    .await;
    let seen: Vec<(String, String, String, u64)> = records
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (text("method"), text("path"), text("token"), r["status"].as_u64().unwrap_or(0))
        })
        .collect();
    let expected = [
        ("POST", "/v1/jobs/audited/toggle", "unauthenticated", 401),
        ("DELETE", "/v1/jobs/audited", "viewer", 403),
        ("POST", "/v1/jobs/audited/run", "Bootstrap Token", 202),
        ("POST", "/v1/jobs", "Bootstrap Token", 201),
    ];
    let expected: Vec<(String, String, String, u64)> =
        expected.iter().map(|(m, p, t, s)| (m.to_string(), p.to_string(), t.to_string(), *s)).collect();
    assert_eq!(seen, expected, "{records:#?}");
    for record in &records {
        assert!(record["client"].as_str().unwrap_or("").starts_with("127.0.0.1:"), "{record}");
        assert!(record["node"].is_string() && record["at"].is_string(), "{record}");
    }
    assert!(records[2]["accessor_id"].is_string(), "a token's accessor is recorded");
    assert_eq!(records[3]["job"], "audited", "a created job is named by its answer's Location");
    let all = audit("").await;
    assert!(
        all.iter().any(|r| r["path"] == "/v1/acl/bootstrap" && r["token"] == "unauthenticated" && r["status"] == 201)
    );
    assert!(!all.iter().any(|r| r["method"] == "GET"), "reads are not audited");
    let viewer = audit("?token=viewer").await;
    assert_eq!(viewer.len(), 1, "{viewer:#?}");
    let page = audit("?_start=1&_end=3").await;
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["seq"], all[1]["seq"]);
    let page = send(server.api(), &tokens, Who::Management, "GET", "/ui/audit?job=audited", None).await;
    page.expect(200);
    assert!(page.text.contains("POST /v1/jobs/audited/run") && page.text.contains("viewer"), "{}", page.text);
    send(server.api(), &tokens, Who::TeamA, "GET", "/v1/audit", None).await.expect(403);
    send(server.api(), &tokens, Who::Management, "GET", "/v1/audit?since=yesterday", None).await.expect(400);

    server.kill9().await;
    server.restart().await;
    let after = wait_until("the audit log is back", secs(30), async || {
        let reply = send(server.api(), &tokens, Who::Management, "GET", "/v1/audit", None).await;
        (reply.status == 200).then(|| reply.json.as_array().cloned().unwrap_or_default())
    })
    .await;
    // The reads of the log itself are not audited; everything recorded before the kill is still there.
    assert!(after.len() >= all.len(), "{} records after the restart, {} before", after.len(), all.len());
    assert_eq!(
        after[after.len() - all.len()..].iter().map(|r| r["seq"].clone()).collect::<Vec<_>>(),
        all.iter().map(|r| r["seq"].clone()).collect::<Vec<_>>()
    );
}
