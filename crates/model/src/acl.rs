//! Access control: tokens, policies and the decision whether a token may do something to a path.
//!
//! Policies are Dkron Pro's JSON documents, `{"path": {"/v1/jobs/*": {"capabilities": ["read", "list"]}}}`: each
//! key is a glob over request paths (`*` matches any run of characters, `/` included), each value the
//! capabilities it grants. A token holds policy names; what it may do is the union of what its policies grant.
//! Management tokens may do everything. The built-in policies [`DEFAULT_POLICY`] and [`READONLY_POLICY`] always
//! exist and cannot be changed or deleted.
//!
//! Secrets are never stored: a token record holds the SHA-256 of its secret ([`secret_hash`]), and the node that
//! creates a token (never the state machine) draws the secret.
//!
//! Everything here is pure: the store applies these records, the HTTP edge asks [`Access::allows`].

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::FieldError;

pub const DEFAULT_POLICY: &str = "default";
pub const READONLY_POLICY: &str = "readonly";

/// Limits on what a client may store, so one request cannot grow the replicated state without bound.
pub const NAME_CHARS_MAX: usize = 128;
pub const PATH_CHARS_MAX: usize = 512;
pub const RULES_MAX: usize = 256;
pub const TOKEN_POLICIES_MAX: usize = 64;

/// What a request does to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Read,
    Create,
    Update,
    Delete,
    List,
}

impl Capability {
    pub const ALL: [Capability; 5] =
        [Capability::Read, Capability::Create, Capability::Update, Capability::Delete, Capability::List];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Read => "read",
            Capability::Create => "create",
            Capability::Update => "update",
            Capability::Delete => "delete",
            Capability::List => "list",
        }
    }

    fn parse(text: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRule {
    pub capabilities: Vec<Capability>,
}

/// A policy's rules, Dkron Pro's document: path glob → capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    #[serde(default)]
    pub path: BTreeMap<String, PathRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rules: Rules,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Client,
    Management,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Client => "client",
            TokenType::Management => "management",
        }
    }
}

/// A token as the replicated state keeps it: the secret only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub accessor_id: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    pub name: String,
    #[serde(rename = "type")]
    pub token_type: TokenType,
    pub policies: Vec<String>,
    pub create_time: Timestamp,
    #[serde(default)]
    pub expiration_time: Option<Timestamp>,
}

/// A token as the API shows it: everything but the secret's hash; the secret itself only in the answer that
/// created the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub accessor_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub token_type: TokenType,
    pub policies: Vec<String>,
    pub create_time: Timestamp,
    pub expiration_time: Option<Timestamp>,
}

impl Token {
    pub fn view(&self, secret: Option<String>) -> TokenView {
        TokenView {
            accessor_id: self.accessor_id.clone(),
            secret,
            name: self.name.clone(),
            token_type: self.token_type,
            policies: self.policies.clone(),
            create_time: self.create_time,
            expiration_time: self.expiration_time,
        }
    }

    pub fn expired(&self, now: Timestamp) -> bool {
        self.expiration_time.is_some_and(|at| at <= now)
    }
}

/// The hex SHA-256 of a secret, as tokens are stored and looked up.
pub fn secret_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `text` has the shape of the ids and secrets we hand out: a UUID (`8-4-4-4-12` hex digits).
pub fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Format 16 random bytes as a version-4 UUID.
pub fn uuid_from_bytes(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The built-in policies, which always exist.
pub fn builtin_policies() -> Vec<Policy> {
    let rule = |caps: &[Capability]| PathRule { capabilities: caps.to_vec() };
    let read = [Capability::Read];
    let readonly = Rules { path: BTreeMap::from([("/*".to_string(), rule(&[Capability::Read, Capability::List]))]) };
    // What any signed-in client may see about the cluster itself, and nothing about jobs.
    let default = Rules {
        path: BTreeMap::from([
            ("/v1".to_string(), rule(&read)),
            ("/v1/leader".to_string(), rule(&read)),
            ("/v1/isleader".to_string(), rule(&read)),
            ("/v1/members".to_string(), rule(&[Capability::List])),
            ("/v1/openapi.json".to_string(), rule(&read)),
            ("/v1/schedule/preview".to_string(), rule(&read)),
        ]),
    };
    vec![
        Policy {
            name: DEFAULT_POLICY.into(),
            description: "built-in: cluster status (agent, leader, members), schedule previews; no jobs".into(),
            rules: default,
        },
        Policy {
            name: READONLY_POLICY.into(),
            description: "built-in: read and list everything but ACL tokens and policies".into(),
            rules: readonly,
        },
    ]
}

pub fn is_builtin(name: &str) -> bool {
    name == DEFAULT_POLICY || name == READONLY_POLICY
}

/// A token or policy name: letters, digits, `.`, `_`, `-`; 1 to [`NAME_CHARS_MAX`] characters.
pub fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if name.chars().count() > NAME_CHARS_MAX {
        return Err(FieldError::new(field, format!("longer than {NAME_CHARS_MAX} characters")));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(FieldError::new(field, format!("'{name}' contains '{c}'; use letters, digits, '.', '_' and '-'")));
    }
    Ok(())
}

/// A token's name is a description for people ("Bootstrap Token", "CI of team A"): 1 to [`NAME_CHARS_MAX`]
/// characters, no control characters.
pub fn check_token_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if name.chars().count() > NAME_CHARS_MAX {
        return Err(FieldError::new(field, format!("longer than {NAME_CHARS_MAX} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// A path glob: starts with `/`, printable ASCII without spaces, `*` its only wildcard (`?`, `[…]` and `{…}`
/// would mean something in other glob dialects, so they are refused rather than matched literally).
pub fn check_glob(field: &str, glob: &str) -> Result<(), FieldError> {
    if !glob.starts_with('/') {
        return Err(FieldError::new(field, format!("'{glob}' is not a path; it must start with '/'")));
    }
    if glob.len() > PATH_CHARS_MAX {
        return Err(FieldError::new(field, format!("longer than {PATH_CHARS_MAX} characters")));
    }
    if let Some(c) = glob.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '[' | ']' | '{' | '}' | '\\')) {
        return Err(FieldError::new(
            field,
            format!("'{glob}' is not a valid glob: '{}' is not allowed; '*' is the only wildcard", c.escape_default()),
        ));
    }
    Ok(())
}

/// Whether `path` matches `glob`, where `*` stands for any run of characters (`/` included).
pub fn glob_matches(glob: &str, path: &str) -> bool {
    let (g, p) = (glob.as_bytes(), path.as_bytes());
    let (mut gi, mut pi) = (0, 0);
    // The last `*` seen and the path position it was tried at: on a mismatch, let that star eat one more byte.
    let mut star: Option<(usize, usize)> = None;
    while pi < p.len() {
        if gi < g.len() && g[gi] == b'*' {
            star = Some((gi, pi));
            gi += 1;
        } else if gi < g.len() && g[gi] == p[pi] {
            gi += 1;
            pi += 1;
        } else if let Some((sg, sp)) = star {
            gi = sg + 1;
            pi = sp + 1;
            star = Some((sg, sp + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|b| *b == b'*')
}

/// Read a policy's rules from JSON (an object, or a string holding one, as `--rules-file` gives it), naming the
/// field of any problem.
pub fn parse_rules(value: &Value) -> Result<Rules, FieldError> {
    let parsed;
    let value = match value {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| FieldError::new("rules", format!("not a JSON document: {e}")))?;
            &parsed
        }
        other => other,
    };
    let Some(object) = value.as_object() else {
        return Err(FieldError::new("rules", "must be an object like {\"path\": {\"/v1/jobs/*\": {...}}}"));
    };
    if let Some(key) = object.keys().find(|k| k.as_str() != "path") {
        return Err(FieldError::new(format!("rules.{key}"), "unknown key; only 'path' is supported"));
    }
    let Some(paths) = object.get("path").and_then(Value::as_object) else {
        return Err(FieldError::new("rules.path", "required: an object of path globs to capabilities"));
    };
    if paths.len() > RULES_MAX {
        return Err(FieldError::new("rules.path", format!("more than {RULES_MAX} paths")));
    }
    let mut rules = Rules::default();
    for (glob, rule) in paths {
        let field = format!("rules.path.{glob}");
        check_glob(&field, glob)?;
        let caps = rule
            .get("capabilities")
            .and_then(Value::as_array)
            .ok_or_else(|| FieldError::new(format!("{field}.capabilities"), "required: a list of capabilities"))?;
        let mut capabilities = Vec::with_capacity(caps.len());
        for cap in caps {
            let text = cap.as_str().unwrap_or_default();
            let capability = Capability::parse(text).ok_or_else(|| {
                FieldError::new(
                    format!("{field}.capabilities"),
                    format!("'{}' is not a capability; use read, create, update, delete or list", cap_text(cap)),
                )
            })?;
            if !capabilities.contains(&capability) {
                capabilities.push(capability);
            }
        }
        if let Some(key) = rule.as_object().and_then(|o| o.keys().find(|k| k.as_str() != "capabilities")) {
            return Err(FieldError::new(format!("{field}.{key}"), "unknown key; only 'capabilities' is supported"));
        }
        rules.path.insert(glob.clone(), PathRule { capabilities });
    }
    Ok(rules)
}

fn cap_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Check a policy before it is proposed (the state machine checks the same again).
pub fn check_policy(policy: &Policy) -> Result<(), FieldError> {
    check_name("name", &policy.name)?;
    if is_builtin(&policy.name) {
        return Err(FieldError::new("name", format!("'{}' is a built-in policy and cannot be changed", policy.name)));
    }
    for glob in policy.rules.path.keys() {
        check_glob(&format!("rules.path.{glob}"), glob)?;
    }
    Ok(())
}

/// Check a token's own fields (its policies' existence is the state's to check).
pub fn check_token(token: &Token) -> Result<(), FieldError> {
    check_token_name("name", &token.name)?;
    if token.policies.len() > TOKEN_POLICIES_MAX {
        return Err(FieldError::new("policies", format!("more than {TOKEN_POLICIES_MAX} policies")));
    }
    for policy in &token.policies {
        check_name("policies", policy)?;
    }
    if token.token_type == TokenType::Client && token.policies.is_empty() {
        return Err(FieldError::new("policies", "a client token needs at least one policy"));
    }
    if !is_uuid(&token.accessor_id) {
        return Err(FieldError::new("accessor_id", "not a UUID"));
    }
    Ok(())
}

/// What one token may do, resolved from its policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub management: bool,
    /// (glob, capabilities) of every policy of the token.
    pub rules: Vec<(String, Vec<Capability>)>,
}

impl Access {
    pub fn management() -> Access {
        Access { management: true, rules: Vec::new() }
    }

    /// Resolve a token's policies (`lookup` answers a policy by name; a policy deleted since grants nothing).
    pub fn of(token: &Token, lookup: impl Fn(&str) -> Option<Policy>) -> Access {
        if token.token_type == TokenType::Management {
            return Access::management();
        }
        let mut rules = Vec::new();
        for name in &token.policies {
            if let Some(policy) = lookup(name) {
                rules.extend(policy.rules.path.into_iter().map(|(glob, rule)| (glob, rule.capabilities)));
            }
        }
        Access { management: false, rules }
    }

    /// Whether some policy grants `capability` on `path`.
    pub fn allows(&self, capability: Capability, path: &str) -> bool {
        self.management || self.rules.iter().any(|(glob, caps)| caps.contains(&capability) && glob_matches(glob, path))
    }

    /// Whether some policy grants `capability` on `path` or on anything below it (`path/…`): a job-glob token
    /// (`/v1/jobs/team-a-*`) may list `/v1/jobs`, and sees only what it may read there.
    pub fn allows_within(&self, capability: Capability, path: &str) -> bool {
        if self.allows(capability, path) {
            return true;
        }
        let below = format!("{path}/");
        self.rules.iter().any(|(glob, caps)| {
            caps.contains(&capability) && (glob.starts_with(&below) || glob_matches(glob, &format!("{below}x")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_star_matches_any_run_of_characters_slashes_included() {
        assert!(glob_matches("/v1/jobs/*", "/v1/jobs/a"));
        assert!(glob_matches("/v1/jobs/*", "/v1/jobs/a/executions/1"));
        assert!(!glob_matches("/v1/jobs/*", "/v1/jobs"));
        assert!(glob_matches("/v1/jobs/team-a-*", "/v1/jobs/team-a-backup"));
        assert!(!glob_matches("/v1/jobs/team-a-*", "/v1/jobs/team-b-backup"));
        assert!(glob_matches("/*", "/v1/acl/tokens"));
        assert!(glob_matches("/v1/*/run", "/v1/jobs/x/run"));
        assert!(!glob_matches("/v1/*/run", "/v1/jobs/x/toggle"));
        assert!(glob_matches("/v1", "/v1"));
        assert!(!glob_matches("/v1", "/v1/jobs"));
        assert!(glob_matches("*a*b*", "xxaxxbxx"));
        assert!(!glob_matches("*a*b", "xxaxxbxx"));
    }

    #[test]
    fn rules_are_read_as_dkron_pro_writes_them() {
        let doc = json!({"path": {"/v1/jobs/*": {"capabilities": ["read", "list", "read"]}}});
        let rules = parse_rules(&doc).unwrap();
        assert_eq!(rules.path["/v1/jobs/*"].capabilities, vec![Capability::Read, Capability::List]);
        let as_text = Value::String(doc.to_string());
        assert_eq!(parse_rules(&as_text).unwrap(), rules);
    }

    #[test]
    fn bad_rules_name_the_field() {
        let unknown = json!({"path": {"/v1/jobs/*": {"capabilities": ["write"]}}});
        let err = parse_rules(&unknown).unwrap_err();
        assert_eq!(err.field, "rules.path./v1/jobs/*.capabilities");
        assert!(err.message.contains("'write' is not a capability"), "{err}");
        let glob = json!({"path": {"/v1/jobs/[ab]": {"capabilities": ["read"]}}});
        assert_eq!(parse_rules(&glob).unwrap_err().field, "rules.path./v1/jobs/[ab]");
        let relative = json!({"path": {"v1/jobs": {"capabilities": ["read"]}}});
        assert!(parse_rules(&relative).unwrap_err().message.contains("must start with '/'"));
        assert_eq!(parse_rules(&json!({"paths": {}})).unwrap_err().field, "rules.paths");
        assert_eq!(parse_rules(&json!("{not json")).unwrap_err().field, "rules");
        assert_eq!(parse_rules(&json!({"path": {"/x": {}}})).unwrap_err().field, "rules.path./x.capabilities");
    }

    #[test]
    fn access_is_the_union_of_the_policies_and_management_may_do_everything() {
        let policies = builtin_policies();
        let lookup = |name: &str| policies.iter().find(|p| p.name == name).cloned();
        let token = Token {
            accessor_id: uuid_from_bytes([1; 16]),
            secret_hash: secret_hash("s"),
            name: "t".into(),
            token_type: TokenType::Client,
            policies: vec![READONLY_POLICY.into(), "gone".into()],
            create_time: Timestamp::UNIX_EPOCH,
            expiration_time: None,
        };
        let access = Access::of(&token, lookup);
        assert!(access.allows(Capability::Read, "/v1/jobs/a"));
        assert!(access.allows(Capability::List, "/v1/jobs"));
        assert!(!access.allows(Capability::Create, "/v1/jobs/a"));
        let management = Access::of(&Token { token_type: TokenType::Management, ..token }, |_| None);
        assert!(management.allows(Capability::Delete, "/v1/acl/tokens/x"));
    }

    #[test]
    fn a_job_glob_may_list_the_collection_above_it() {
        let access = Access { management: false, rules: vec![("/v1/jobs/team-a-*".into(), vec![Capability::List])] };
        assert!(access.allows_within(Capability::List, "/v1/jobs"));
        assert!(!access.allows_within(Capability::List, "/v1/members"));
        let star = Access { management: false, rules: vec![("/v1/*".into(), vec![Capability::List])] };
        assert!(star.allows_within(Capability::List, "/v1/jobs"));
    }

    #[test]
    fn secrets_are_hashed_and_ids_are_uuids() {
        assert_eq!(secret_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let id = uuid_from_bytes([0xab; 16]);
        assert!(is_uuid(&id), "{id}");
        assert_eq!(&id[14..15], "4");
        assert!(!is_uuid("not-a-uuid"));
        assert!(!is_uuid("abababab-abab-4bab-abab-ababababababx"));
    }

    #[test]
    fn names_and_tokens_are_checked() {
        assert!(check_name("name", "ops-team_1.x").is_ok());
        assert_eq!(check_name("name", "").unwrap_err().field, "name");
        assert!(check_name("name", "a b").unwrap_err().message.contains("' '"));
        let token = Token {
            accessor_id: uuid_from_bytes([2; 16]),
            secret_hash: secret_hash("s"),
            name: "ci".into(),
            token_type: TokenType::Client,
            policies: vec![],
            create_time: Timestamp::UNIX_EPOCH,
            expiration_time: None,
        };
        assert_eq!(check_token(&token).unwrap_err().field, "policies");
        let unnamed = Token { name: " ".into(), policies: vec!["readonly".into()], ..token.clone() };
        assert_eq!(check_token(&unnamed).unwrap_err().field, "name");
        let spaced = Token { name: "Bootstrap Token".into(), policies: vec!["readonly".into()], ..token.clone() };
        assert!(check_token(&spaced).is_ok());
        let builtin = Policy { name: "readonly".into(), description: String::new(), rules: Rules::default() };
        assert_eq!(check_policy(&builtin).unwrap_err().field, "name");
    }
}
