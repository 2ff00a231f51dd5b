//! `/v1/acl`: the one bootstrap of the cluster, tokens and policies (Dkron Pro's surface). Who may call these is
//! the edge's business ([`super::auth`]: a management token, bootstrap excepted); here they are read and written.
//!
//! A token's secret appears in exactly one answer: the one that created it. Every other answer shows the token
//! without it (and the state never had it, only its hash).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kairos_model::acl::{
    NAME_CHARS_MAX, Policy, TOKEN_POLICIES_MAX, TokenType, check_name, check_policy, check_token_name, is_uuid,
    parse_rules,
};
use kairos_model::{FieldError, Timestamp};
use kairos_server::acl::{TokenRequest, expires_at, mint};
use kairos_store::Command;
use serde_json::{Map, Value};

use super::guard::JsonBody;
use super::{ApiError, ApiResult, AppState, Params, reply, reply_list};

/// The name of the token `kairos acl bootstrap` creates, as Dkron Pro names it.
const BOOTSTRAP_TOKEN_NAME: &str = "Bootstrap Token";

/// `POST /v1/acl/bootstrap`: the first management token, once per cluster (a second one is a 409).
pub async fn bootstrap(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    if node.state.acl_bootstrapped()? {
        return Err(already_bootstrapped());
    }
    let request = TokenRequest {
        name: BOOTSTRAP_TOKEN_NAME.into(),
        token_type: TokenType::Management,
        policies: Vec::new(),
        ttl: None,
    };
    let (token, secret) = mint(request, Timestamp::now());
    let response = node.submit(Command::AclBootstrap { token }).await?;
    let token = response.acl_token.ok_or_else(|| ApiError::internal("a bootstrap applied without its token"))?;
    Ok(reply(StatusCode::CREATED, &token.view(Some(secret)), &params))
}

fn already_bootstrapped() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "acl: already bootstrapped (bootstrap works once per cluster); create more tokens with a management token",
    )
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("body: must be a JSON object")),
        Err(err) => Err(ApiError::bad_request(format!("body: not JSON: {err}"))),
    }
}

fn refuse_unknown_fields(map: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(ApiError::bad_request(format!("{key}: unknown field (known: {})", known.join(", ")))),
        None => Ok(()),
    }
}

fn string_field(map: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{key}: must be a string"))),
    }
}

fn accessor(accessor_id: &str) -> Result<(), ApiError> {
    if is_uuid(accessor_id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("accessor_id: '{accessor_id}' is not a UUID")))
    }
}

/// A token's fields as a client sends them: `name`, `type`, `policies`, `ttl`.
struct TokenInput {
    name: Option<String>,
    token_type: Option<TokenType>,
    policies: Option<Vec<String>>,
    ttl: Option<std::time::Duration>,
}

fn token_input(body: &[u8]) -> Result<TokenInput, ApiError> {
    let map = object(body)?;
    refuse_unknown_fields(&map, &["name", "type", "policies", "ttl", "accessor_id"])?;
    let name = string_field(&map, "name")?;
    if let Some(name) = &name {
        check_token_name("name", name)?;
    }
    let token_type = match string_field(&map, "type")?.as_deref() {
        None => None,
        Some("client") => Some(TokenType::Client),
        Some("management") => Some(TokenType::Management),
        Some(other) => return Err(ApiError::bad_request(format!("type: '{other}' is not client or management"))),
    };
    let policies = match map.get("policies") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            if items.len() > TOKEN_POLICIES_MAX {
                return Err(ApiError::bad_request(format!("policies: more than {TOKEN_POLICIES_MAX}")));
            }
            let mut names = Vec::with_capacity(items.len());
            for item in items {
                let name = item.as_str().ok_or_else(|| ApiError::bad_request("policies: must be policy names"))?;
                check_name("policies", name)?;
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
            Some(names)
        }
        Some(_) => return Err(ApiError::bad_request("policies: must be a list of policy names")),
    };
    let ttl = match string_field(&map, "ttl")? {
        None => None,
        Some(text) => {
            let ttl = kairos_schedule::parse_duration(&text)
                .map_err(|e| ApiError::bad_request(format!("ttl: '{text}': {e}")))?;
            if ttl.is_zero() {
                return Err(ApiError::bad_request("ttl: must be more than zero"));
            }
            Some(ttl)
        }
    };
    Ok(TokenInput { name, token_type, policies, ttl })
}

/// `GET /v1/acl/tokens`: every token, without secrets.
pub async fn list_tokens(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    let tokens: Vec<_> = node.state.acl_tokens()?.iter().map(|t| t.view(None)).collect();
    Ok(reply_list(&tokens, tokens.len(), &params))
}

/// `POST /v1/acl/tokens`: a new token; the answer (201) holds its secret, shown this once.
pub async fn create_token(
    State(node): State<AppState>,
    Query(params): Query<Params>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    let input = token_input(&body)?;
    let name = input.name.ok_or_else(|| FieldError::new("name", "required"))?;
    let request = TokenRequest {
        name,
        token_type: input.token_type.unwrap_or(TokenType::Client),
        policies: input.policies.unwrap_or_default(),
        ttl: input.ttl,
    };
    let (token, secret) = mint(request, Timestamp::now());
    let response = node.submit(Command::AclPutToken { token }).await?;
    let token = response.acl_token.ok_or_else(|| ApiError::internal("a token applied without answering it"))?;
    Ok(reply(StatusCode::CREATED, &token.view(Some(secret)), &params))
}

/// `GET /v1/acl/tokens/{accessor}`.
pub async fn show_token(
    State(node): State<AppState>,
    Path(accessor_id): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    accessor(&accessor_id)?;
    let token = node.state.acl_token(&accessor_id)?.ok_or_else(|| token_not_found(&accessor_id))?;
    Ok(reply(StatusCode::OK, &token.view(None), &params))
}

/// `POST /v1/acl/tokens/{accessor}`: change a token's name, type, policies or expiry (`ttl` counts from now); its
/// secret stays.
pub async fn update_token(
    State(node): State<AppState>,
    Path(accessor_id): Path<String>,
    Query(params): Query<Params>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    accessor(&accessor_id)?;
    let input = token_input(&body)?;
    let mut token = node.state.acl_token(&accessor_id)?.ok_or_else(|| token_not_found(&accessor_id))?;
    if let Some(name) = input.name {
        token.name = name;
    }
    if let Some(token_type) = input.token_type {
        token.token_type = token_type;
    }
    if let Some(policies) = input.policies {
        token.policies = policies;
    }
    if let Some(ttl) = input.ttl {
        token.expiration_time = expires_at(Timestamp::now(), ttl);
    }
    let response = node.submit(Command::AclPutToken { token }).await?;
    let token = response.acl_token.ok_or_else(|| ApiError::internal("a token applied without answering it"))?;
    Ok(reply(StatusCode::OK, &token.view(None), &params))
}

/// `DELETE /v1/acl/tokens/{accessor}`: the token stops working on every server as each applies the delete.
pub async fn delete_token(
    State(node): State<AppState>,
    Path(accessor_id): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    accessor(&accessor_id)?;
    let response = node.submit(Command::AclDeleteToken { accessor_id: accessor_id.clone() }).await?;
    let token = response.acl_token.ok_or_else(|| token_not_found(&accessor_id))?;
    Ok(reply(StatusCode::OK, &token.view(None), &params))
}

fn token_not_found(accessor_id: &str) -> ApiError {
    ApiError::not_found(format!("token '{accessor_id}' not found"))
}

/// `GET /v1/acl/policies`: every policy, the built-in `default` and `readonly` included.
pub async fn list_policies(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    let policies = node.state.acl_policies()?;
    Ok(reply_list(&policies, policies.len(), &params))
}

/// A policy from a body `{"name": …, "description": …, "rules": {"path": {…}}}` (`rules` may also be a string
/// holding that document); `name` comes from the path when the route has one.
fn policy_input(body: &[u8], path_name: Option<&str>) -> Result<Policy, ApiError> {
    let map = object(body)?;
    refuse_unknown_fields(&map, &["name", "description", "rules"])?;
    let body_name = string_field(&map, "name")?;
    let name = match (path_name, body_name) {
        (Some(path), Some(body)) if path != body => {
            return Err(ApiError::bad_request(format!("name: '{body}' differs from the path's '{path}'")));
        }
        (Some(path), _) => path.to_string(),
        (None, Some(body)) => body,
        (None, None) => return Err(FieldError::new("name", "required").into()),
    };
    let description = string_field(&map, "description")?.unwrap_or_default();
    if description.chars().count() > NAME_CHARS_MAX * 4 {
        return Err(ApiError::bad_request(format!("description: longer than {} characters", NAME_CHARS_MAX * 4)));
    }
    let rules = parse_rules(map.get("rules").ok_or_else(|| FieldError::new("rules", "required"))?)?;
    let policy = Policy { name, description, rules };
    check_policy(&policy)?;
    Ok(policy)
}

/// `POST /v1/acl/policies`: create or replace a policy.
pub async fn put_policy(
    State(node): State<AppState>,
    Query(params): Query<Params>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    store_policy(&node, policy_input(&body, None)?, &params).await
}

/// `POST /v1/acl/policies/{name}`: create or replace the policy of that name.
pub async fn put_named_policy(
    State(node): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    store_policy(&node, policy_input(&body, Some(&name))?, &params).await
}

async fn store_policy(node: &AppState, policy: Policy, params: &Params) -> ApiResult {
    let response = node.submit(Command::AclPutPolicy { policy }).await?;
    let policy = response.acl_policy.ok_or_else(|| ApiError::internal("a policy applied without answering it"))?;
    Ok(reply(StatusCode::OK, &policy, params))
}

/// `GET /v1/acl/policies/{name}`.
pub async fn show_policy(
    State(node): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    let policy = node.state.acl_policy(&name)?.ok_or_else(|| policy_not_found(&name))?;
    Ok(reply(StatusCode::OK, &policy, &params))
}

/// `DELETE /v1/acl/policies/{name}`: tokens that name it keep the name, which grants nothing from then on.
pub async fn delete_policy(
    State(node): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    let response = node.submit(Command::AclDeletePolicy { name: name.clone() }).await?;
    let policy = response.acl_policy.ok_or_else(|| policy_not_found(&name))?;
    Ok(reply(StatusCode::OK, &policy, &params))
}

fn policy_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("policy '{name}' not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_input_names_the_bad_field() {
        let err = |body: &str| token_input(body.as_bytes()).err().map(|e| e.message).unwrap_or_default();
        assert!(err(r#"{"name": "x", "type": "root"}"#).starts_with("type:"));
        assert!(err(r#"{"name": "x", "policies": "readonly"}"#).starts_with("policies:"));
        assert!(err(r#"{"name": "x", "policies": ["a b"]}"#).starts_with("policies:"));
        assert!(err(r#"{"name": "x", "ttl": "soon"}"#).starts_with("ttl:"));
        assert!(err(r#"{"name": "x", "ttl": "0s"}"#).starts_with("ttl:"));
        assert!(err(r#"{"name": "x", "secret": "s"}"#).starts_with("secret:"));
        assert!(err(r#"[1]"#).starts_with("body:"));
        let ok = token_input(br#"{"name": "ci", "type": "client", "policies": ["readonly"], "ttl": "1h"}"#).unwrap();
        assert_eq!(ok.ttl, Some(std::time::Duration::from_secs(3600)));
    }

    #[test]
    fn policy_input_takes_dkron_pros_document() {
        let body = br#"{"name": "team-a", "rules": {"path": {"/v1/jobs/team-a-*": {"capabilities": ["read"]}}}}"#;
        let policy = policy_input(body, None).unwrap();
        assert_eq!(policy.rules.path.len(), 1);
        let mismatch = policy_input(body, Some("team-b")).unwrap_err();
        assert!(mismatch.message.starts_with("name:"), "{}", mismatch.message);
        let builtin = br#"{"name": "readonly", "rules": {"path": {}}}"#;
        assert!(policy_input(builtin, None).unwrap_err().message.starts_with("name:"));
    }
}
