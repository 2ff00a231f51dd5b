//! `kairos acl …`: bootstrap, tokens and policies, as Dkron Pro's CLI has them.
//!
//! These commands talk to a server's **HTTP API** (`--http-addr`, default `127.0.0.1:8080`) with a token's secret
//! (`--token`, or `KAIROS_TOKEN`), not to the RPC address `kairos leave` and `kairos raft` use: the RPC port is
//! the nodes' own trust domain, where a user token never authorizes anything, while the API is where tokens are
//! checked. So the CLI is one more API client and is refused exactly as the API refuses (a 403 names the
//! capability and path). Any server will do; writes reaching a follower are forwarded to the leader.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Longest a command waits for the server's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// HTTP API address of a server (host:port, `:port` for this host, or a URL).
    #[arg(long, env = "KAIROS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// A token's secret, sent as X-Dkron-Token (not needed for `acl bootstrap`).
    #[arg(long, env = "KAIROS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For an HTTPS API (`https://…` in --http-addr): the CA (PEM) its certificate is signed by.
    #[arg(long, env = "KAIROS_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// For an API with --client-cert-auth: a client certificate (PEM) signed by the CA.
    #[arg(long, env = "KAIROS_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file.
    #[arg(long, env = "KAIROS_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

/// The HTTP client for `args`: with the TLS settings its flags give, else the system's trust roots.
fn http_client(http: &HttpArgs) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT);
    let identity = match (&http.cert_file, &http.key_file) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        (Some(_), None) => return Err("--key-file: required with --cert-file".into()),
        (None, Some(_)) => return Err("--cert-file: required with --key-file".into()),
    };
    let builder = match (&http.trusted_ca_file, identity) {
        (Some(ca), identity) => {
            let config = kairos_server::tls::api_client_config(ca, identity).map_err(|e| format!("{e:#}"))?;
            builder.tls_backend_preconfigured(config)
        }
        (None, Some(_)) => return Err("--trusted-ca-file: required with --cert-file".into()),
        (None, None) => builder,
    };
    builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Create the cluster's first management token (works once per cluster) and print it.
    Bootstrap(HttpArgs),
    /// Create, list, show and delete tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create or replace, list, show and delete policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it with its secret (shown this once).
    Create {
        #[arg(long)]
        name: String,
        /// client (what its policies allow) or management (everything).
        #[arg(long = "type", default_value = "client")]
        token_type: String,
        /// A policy of the token; repeatable.
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// The token expires this long after its creation (e.g. 24h).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// List every token (never their secrets).
    List(HttpArgs),
    /// Show one token by its accessor id.
    Info {
        accessor_id: String,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Delete a token by its accessor id.
    Delete {
        accessor_id: String,
        #[command(flatten)]
        http: HttpArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create or replace a policy from a rules file (Dkron Pro's JSON: {"path": {"/v1/jobs/*": {"capabilities": […]}}}).
    Apply {
        #[arg(long)]
        name: String,
        #[arg(long)]
        rules_file: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// List every policy, the built-in ones included.
    List(HttpArgs),
    /// Show one policy with its rules.
    Info {
        name: String,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Delete a policy.
    Delete {
        name: String,
        #[command(flatten)]
        http: HttpArgs,
    },
}

pub fn run(command: AclCommand) -> ExitCode {
    let result = match command {
        AclCommand::Bootstrap(http) => {
            call(&http, "POST", "/v1/acl/bootstrap", None).map(|t| print!("{}", token_text(&t)))
        }
        AclCommand::Token(command) => token(command),
        AclCommand::Policy(command) => policy(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kairos: {err}");
            ExitCode::FAILURE
        }
    }
}

fn token(command: TokenCommand) -> Result<(), String> {
    match command {
        TokenCommand::Create { name, token_type, policies, ttl, http } => {
            let mut body = json!({"name": name, "type": token_type, "policies": policies});
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl);
            }
            print!("{}", token_text(&call(&http, "POST", "/v1/acl/tokens", Some(body))?));
        }
        TokenCommand::List(http) => {
            let tokens = call(&http, "GET", "/v1/acl/tokens", None)?;
            let texts: Vec<String> = tokens.as_array().into_iter().flatten().map(token_text).collect();
            print!("{}", texts.join("\n"));
        }
        TokenCommand::Info { accessor_id, http } => {
            print!("{}", token_text(&call(&http, "GET", &format!("/v1/acl/tokens/{accessor_id}"), None)?));
        }
        TokenCommand::Delete { accessor_id, http } => {
            call(&http, "DELETE", &format!("/v1/acl/tokens/{accessor_id}"), None)?;
            println!("Token {accessor_id} deleted");
        }
    }
    Ok(())
}

fn policy(command: PolicyCommand) -> Result<(), String> {
    match command {
        PolicyCommand::Apply { name, rules_file, description, http } => {
            let text = std::fs::read_to_string(&rules_file)
                .map_err(|e| format!("--rules-file: cannot read '{}': {e}", rules_file.display()))?;
            let rules: Value = serde_json::from_str(&text)
                .map_err(|e| format!("--rules-file: '{}' is not JSON: {e}", rules_file.display()))?;
            let body = json!({"name": name, "description": description, "rules": rules});
            let policy = call(&http, "POST", "/v1/acl/policies", Some(body))?;
            println!("Successfully wrote policy {}", str_of(&policy, "name"));
        }
        PolicyCommand::List(http) => {
            let policies = call(&http, "GET", "/v1/acl/policies", None)?;
            for policy in policies.as_array().into_iter().flatten() {
                println!("{}: {}", str_of(policy, "name"), str_of(policy, "description"));
            }
        }
        PolicyCommand::Info { name, http } => {
            let policy = call(&http, "GET", &format!("/v1/acl/policies/{name}"), None)?;
            let rules = serde_json::to_string_pretty(&policy["rules"]).unwrap_or_default();
            println!(
                "Name: {}\nDescription: {}\nRules:\n{rules}",
                str_of(&policy, "name"),
                str_of(&policy, "description")
            );
        }
        PolicyCommand::Delete { name, http } => {
            call(&http, "DELETE", &format!("/v1/acl/policies/{name}"), None)?;
            println!("Policy {name} deleted");
        }
    }
    Ok(())
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

/// A token as Dkron Pro prints it: one `Key: value` line per field; the secret only when the answer holds it.
fn token_text(token: &Value) -> String {
    let mut out = format!("Accessor ID: {}\n", str_of(token, "accessor_id"));
    if let Some(secret) = token["secret"].as_str() {
        out.push_str(&format!("Secret: {secret}\n"));
    }
    let policies: Vec<&str> = token["policies"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    out.push_str(&format!(
        "Name: {}\nType: {}\nCreateTime: {}\nPolicies: {}\n",
        str_of(token, "name"),
        str_of(token, "type"),
        str_of(token, "create_time"),
        policies.join(", ")
    ));
    if let Some(expires) = token["expiration_time"].as_str() {
        out.push_str(&format!("ExpirationTime: {expires}\n"));
    }
    out
}

/// The base URL for `--http-addr`: `:8080` and `0.0.0.0:8080` (how servers are told to listen) mean this host.
fn base_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        return addr.trim_end_matches('/').to_string();
    }
    let addr = if addr.starts_with(':') { format!("127.0.0.1{addr}") } else { addr.to_string() };
    let addr = addr.strip_prefix("0.0.0.0:").map_or(addr.clone(), |port| format!("127.0.0.1:{port}"));
    format!("http://{addr}")
}

/// One API call; the answer's JSON, or the API's error message with its status.
pub(crate) fn call(http: &HttpArgs, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let url = format!("{}{path}", base_url(&http.http_addr));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        kairos_agent::install_crypto_provider();
        let client = http_client(http)?;
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| format!("method {method}: {e}"))?;
        let mut request = client.request(method, &url);
        if let Some(token) = &http.token {
            request = request.header("X-Dkron-Token", token.trim());
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body.to_string());
        }
        let response = request.send().await.map_err(|e| format!("--http-addr: cannot reach {url}: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| format!("reading the answer of {url}: {e}"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"].as_str().map_or(text.clone(), str::to_string);
            return Err(format!("{} (HTTP {})", message, status.as_u16()));
        }
        Ok(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_mean_this_host() {
        assert_eq!(base_url(":8080"), "http://127.0.0.1:8080");
        assert_eq!(base_url("0.0.0.0:9000"), "http://127.0.0.1:9000");
        assert_eq!(base_url("10.0.0.1:8080"), "http://10.0.0.1:8080");
        assert_eq!(base_url("https://k.example/"), "https://k.example");
    }

    #[test]
    fn tokens_print_as_dkron_pro_prints_them() {
        let token = json!({"accessor_id": "a", "secret": "s", "name": "Bootstrap Token", "type": "management",
                           "create_time": "2026-01-01T00:00:00Z", "policies": [], "expiration_time": null});
        assert_eq!(
            token_text(&token),
            "Accessor ID: a\nSecret: s\nName: Bootstrap Token\nType: management\nCreateTime: 2026-01-01T00:00:00Z\nPolicies: \n"
        );
    }
}
