//! Encrypted gossip: with `--encrypt`, only nodes with the same key join; the others' messages are refused and
//! logged.
//!
//! TLS for real: certificates made by `kairos tls`, a three-server cluster with mutual TLS on both listeners that
//! forms, runs jobs and fails over, and clients that must be refused (plain HTTP, no client certificate, a
//! certificate from another CA, curl without the CA) next to the ones that must get through (curl with the CA
//! and a client certificate, `kairos raft list-peers` with the TLS flags).

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod cluster_common;
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use cluster_common::*;
use common::*;

/// Run `kairos args…` in `dir`; answers (success, stdout + stderr).
fn kairos_in(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = kairos_testkit::kairos_command(Path::new(KAIROS_BIN)).args(args).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A CA with a server (node) and a client certificate, made by the CLI in `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn make_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    for args in
        [&["tls", "ca", "create"][..], &["tls", "cert", "create", "--server"], &["tls", "cert", "create", "--client"]]
    {
        let (ok, text) = kairos_in(dir, args);
        assert!(ok, "kairos {args:?}: {text}");
    }
    Pki {
        ca: dir.join("kairos-agent-ca.pem"),
        server: (dir.join("kairos-agent-server-0.pem"), dir.join("kairos-agent-server-0-key.pem")),
        client: (dir.join("kairos-agent-client-0.pem"), dir.join("kairos-agent-client-0-key.pem")),
    }
}

fn identity(cert: &Path, key: &Path) -> reqwest::Identity {
    let mut pem = std::fs::read(cert).unwrap();
    pem.extend(std::fs::read(key).unwrap());
    reqwest::Identity::from_pem(&pem).unwrap()
}

fn https_client(ca: Option<&Path>, identity: Option<reqwest::Identity>) -> reqwest::Client {
    kairos_testkit::install_crypto_provider();
    let mut builder = reqwest::Client::builder().no_proxy().timeout(secs(10));
    if let Some(ca) = ca {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().unwrap()
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl (Debian's curl; scripts/test installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn tls_commands_make_a_ca_and_certificates_and_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    for path in [&pki.ca, &pki.server.0, &pki.server.1, &pki.client.0, &pki.client.1] {
        assert!(path.is_file(), "{} was not written", path.display());
    }
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
    assert_eq!(mode(&pki.server.1), 0o600, "a private key is readable by its owner only");
    let (ok, text) = kairos_in(dir.path(), &["tls", "ca", "create"]);
    assert!(!ok && text.contains("exists already"), "a second CA must not overwrite the first: {text}");
    let (ok, _) = kairos_in(dir.path(), &["tls", "cert", "create", "--server"]);
    assert!(ok && dir.path().join("kairos-agent-server-1.pem").is_file(), "the next certificate gets the next number");
    let elsewhere = tempfile::tempdir().unwrap();
    let (ok, text) = kairos_in(elsewhere.path(), &["tls", "cert", "create", "--server"]);
    assert!(!ok && text.contains("--ca: cannot read"), "no CA here: {text}");
}

#[test]
fn a_node_refuses_to_start_with_tls_files_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("a"));
    let other = make_pki(&dir.path().join("b"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let data = dir.path().join("data");
    let base = ["agent", "--server", "--bootstrap-expect", "1", "--http-addr", "127.0.0.1:0", "--rpc-port", "0"];
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--cert-file".into(), s(&pki.server.0)], "--key-file"),
        (
            vec!["--cert-file".into(), s(&pki.server.0), "--key-file".into(), s(&pki.server.1)],
            "--trusted-ca-file: required",
        ),
        (
            vec![
                "--cert-file".into(),
                s(&pki.server.0),
                "--key-file".into(),
                s(&other.server.1),
                "--trusted-ca-file".into(),
                s(&pki.ca),
            ],
            "--key-file",
        ),
        (
            vec![
                "--cert-file".into(),
                s(&pki.server.0),
                "--key-file".into(),
                s(&pki.server.1),
                "--trusted-ca-file".into(),
                s(&dir.path().join("missing.pem")),
            ],
            "--trusted-ca-file: cannot read",
        ),
    ];
    for (flags, expected) in cases {
        let mut args: Vec<String> = base.iter().map(|a| a.to_string()).collect();
        args.extend(["--data-dir".to_string(), s(&data), "--bind-addr".into(), "127.0.0.1:0".into()]);
        args.extend(flags.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, text) = kairos_in(dir.path(), &args);
        assert!(!ok, "started with {flags:?}: {text}");
        assert!(text.contains(expected), "{flags:?}: expected an error naming {expected:?}, got: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_with_mutual_tls_and_encrypted_gossip_forms_fails_over_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"));
    let other = make_pki(&dir.path().join("other"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (ok, key) = kairos_in(dir.path(), &["keygen"]);
    assert!(ok, "kairos keygen: {key}");
    let flags = [
        "--encrypt".to_string(),
        key.trim().to_string(),
        "--cert-file".to_string(),
        s(&pki.server.0),
        "--key-file".to_string(),
        s(&pki.server.1),
        "--trusted-ca-file".to_string(),
        s(&pki.ca),
        "--client-cert-auth".to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let client = https_client(Some(&pki.ca), Some(identity(&pki.client.0, &pki.client.1)));
    let mut cluster = Cluster::start_tls(3, &[("a1", &[])], &flags, client).await;
    let leader = cluster.wait_formed().await;
    let job = shell_job("hello", "@manually", "echo over tls");
    cluster.create_job(&job).await;
    cluster.run("hello").await;
    cluster.wait_executions("hello", "a run succeeded", secs(30), |e| e.iter().any(|x| x.status == "succeeded")).await;

    // Strangers, on the leader's API and RPC listeners.
    let api = cluster.node(leader).http_base().replace("http://", "").replace("https://", "");
    let rpc = cluster.rpc_addr(leader).to_string();
    let plain = reqwest::Client::builder().no_proxy().timeout(secs(10)).build().unwrap();
    for (what, client, url) in [
        ("plain HTTP to the API", plain.clone(), format!("http://{api}/v1/leader")),
        ("plain HTTP to the RPC port", plain, format!("http://{rpc}/cluster/peers")),
        ("no client certificate", https_client(Some(&pki.ca), None), format!("https://{api}/v1/leader")),
        (
            "a client certificate from another CA",
            https_client(Some(&pki.ca), Some(identity(&other.client.0, &other.client.1))),
            format!("https://{rpc}/cluster/peers"),
        ),
        (
            "a node certificate from another CA sending an order",
            https_client(Some(&pki.ca), Some(identity(&other.server.0, &other.server.1))),
            format!("https://{rpc}/agent/run"),
        ),
    ] {
        let sent = client.post(&url).body("[]").send().await;
        assert!(sent.is_err(), "{what}: {url} answered {:?}", sent.map(|r| r.status()));
    }
    let (ok, text) = curl(&[&format!("https://{api}/v1/leader")]);
    assert!(!ok, "curl without the CA got through: {text}");
    let (ok, text) = curl(&[
        "--cacert",
        &s(&pki.ca),
        "--cert",
        &s(&pki.client.0),
        "--key",
        &s(&pki.client.1),
        &format!("https://{api}/v1/leader"),
    ]);
    assert!(ok && text.contains("\"Name\""), "curl with the CA and a client certificate: {text}");
    let tls_flags =
        ["--cert-file", &s(&pki.client.0), "--key-file", &s(&pki.client.1), "--trusted-ca-file", &s(&pki.ca)];
    let listed = cli(&[&["raft", "list-peers", "--rpc-addr", &rpc][..], &tls_flags].concat()).await;
    assert!(listed.status.success(), "kairos raft list-peers over TLS: {}{}", listed.stdout, listed.stderr);
    assert_eq!(listed.stdout.lines().count(), 4, "a header and three servers: {}", listed.stdout);
    let refused = cli(&["raft", "list-peers", "--rpc-addr", &rpc]).await;
    assert!(!refused.status.success(), "kairos raft list-peers without TLS got through: {}", refused.stdout);

    // The API's command-line clients over HTTPS with mutual TLS: a secret set with `kairos secret`, then used by a
    // job whose order carries it to the node that runs it over the cluster's TLS.
    let https_api = format!("https://{api}");
    let api_tls = [
        "--http-addr",
        &https_api,
        "--trusted-ca-file",
        &s(&pki.ca),
        "--cert-file",
        &s(&pki.client.0),
        "--key-file",
        &s(&pki.client.1),
    ];
    let put = cli(&[&["secret", "put", "tls-secret", "--value", "over-tls-value"][..], &api_tls].concat()).await;
    assert!(put.status.success(), "kairos secret put over TLS: {}{}", put.stdout, put.stderr);
    let secrets = cli(&[&["secret", "list"][..], &api_tls].concat()).await;
    assert!(secrets.stdout.contains("tls-secret") && !secrets.stdout.contains("over-tls-value"), "{}", secrets.stdout);
    let untrusted = cli(&["secret", "list", "--http-addr", &https_api]).await;
    assert!(!untrusted.status.success(), "kairos secret list without the CA got through: {}", untrusted.stdout);
    cluster.create_job(&shell_job("secretive", "@manually", r#"echo "got {{secret "tls-secret"}}""#)).await;
    cluster.run("secretive").await;
    let execs = cluster
        .wait_executions("secretive", "the run ended", secs(30), |e| {
            e.iter().any(|x| x.status != "pending" && x.status != "running")
        })
        .await;
    assert_eq!(execs[0].status, "succeeded", "{}", summary(&execs));
    assert_eq!(execs[0].output, "got ***\n");

    // Failover over TLS: kill the leader; another leads and runs jobs.
    cluster.kill9(leader).await;
    let new_leader = cluster.wait_leader().await;
    assert_ne!(new_leader, leader);
    cluster.run("hello").await;
    cluster
        .wait_executions("hello", "a second run succeeded", secs(30), |e| {
            e.iter().filter(|x| x.status == "succeeded").count() >= 2
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_gossip_admits_only_nodes_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keygen = || {
        let (ok, key) = kairos_in(dir.path(), &["keygen"]);
        assert!(ok, "kairos keygen: {key}");
        key.trim().to_string()
    };
    let (key, other) = (keygen(), keygen());
    assert_ne!(key, other);
    let mut cluster = Cluster::prepare(1, &[("good", &[]), ("wrong-key", &[]), ("no-key", &[])], &[]);
    cluster.set_env(0, "KAIROS_ENCRYPT", &key);
    cluster.set_env(1, "KAIROS_ENCRYPT", &key);
    cluster.set_env(2, "KAIROS_ENCRYPT", &other);
    cluster.launch_all().await;
    let server = cluster.server(0);
    wait_until("the node with the key joins", secs(30), async || {
        let members = server.members().await.ok_or("no answer")?;
        let alive = |name: &str| members.iter().any(|m| m.name == name && m.status_text == "alive");
        if alive("good") { Ok(()) } else { Err(format!("{members:?}")) }
    })
    .await;
    // Observable refusals: the server says it dropped what the two others sent (they retry joining every few
    // hundred milliseconds), so by then they had their chance to join.
    wait_until("the server refuses the other nodes' gossip", secs(30), async || {
        let log = server.log();
        let refused = log.lines().filter(|l| l.contains("does not open with this node's --encrypt key")).count();
        if refused >= 2 { Ok(()) } else { Err(format!("{refused} refusals logged")) }
    })
    .await;
    let members = server.members().await.unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert!(
        !names.contains(&"wrong-key") && !names.contains(&"no-key"),
        "only nodes with the key are members: {names:?}"
    );
    // The key never shows in the logs.
    for i in 0..cluster.len() {
        assert!(!cluster.node(i).log().contains(&key) && !cluster.node(i).log().contains(&other));
    }
}

/// With a cluster key every node-to-node route wants the node credential the key derives: the nodes have it (the
/// cluster forms, an agent runs a job), a request without it is refused on every route, and `kairos raft
/// list-peers` works only with `--encrypt`.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_cluster_key_node_routes_refuse_requests_without_the_node_credential() {
    let cluster = Cluster::start(1, &[("a1", &["role=worker"])], &["--encrypt", TEST_CLUSTER_KEY]).await;
    cluster.wait_formed().await;
    let job = with(shell_job("hello", "@manually", "echo hi"), json!({"tags": {"role": "worker"}}));
    cluster.create_job(&job).await;
    cluster.run("hello").await;
    let execs = cluster
        .wait_executions("hello", "the agent ran it", secs(30), |e| e.iter().any(|x| x.status == "succeeded"))
        .await;
    assert_eq!(execs[0].node_name, "a1", "orders and reports crossed with the credential");
    let plain = reqwest::Client::builder().no_proxy().timeout(secs(10)).build().unwrap();
    for (node, path) in [
        (0, "/raft/append"),
        (0, "/raft/vote"),
        (0, "/cluster/submit"),
        (0, "/cluster/report"),
        (0, "/cluster/peers"),
        (0, "/agent/run"),
        (1, "/agent/run"),
        (1, "/agent/sync"),
        (1, "/agent/leave"),
    ] {
        let url = format!("http://{}{path}", cluster.rpc_addr(node));
        let answer = plain.post(&url).body("{}").header("content-type", "application/json").send().await.unwrap();
        assert_eq!(answer.status(), 401, "{url} without the node credential");
    }
    let rpc = cluster.rpc_addr(0).to_string();
    let refused = cli(&["raft", "list-peers", "--rpc-addr", &rpc]).await;
    assert!(!refused.status.success(), "list-peers without the key: {}", refused.stdout);
    let listed = cli(&["raft", "list-peers", "--rpc-addr", &rpc, "--encrypt", TEST_CLUSTER_KEY]).await;
    assert!(listed.status.success(), "list-peers with the key: {}{}", listed.stdout, listed.stderr);
}
