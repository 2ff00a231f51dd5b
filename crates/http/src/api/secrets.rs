//! `/v1/secrets`: write-only secrets. A value goes in with `PUT /v1/secrets/{name}` (`{"value": "…"}`) and never
//! comes out again: every answer, the list included, shows names and times only. Jobs reference a secret as
//! `{{secret "name"}}` in their `executor_config` (see `kairos_model::secret`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kairos_model::secret::{SecretValue, check_secret_name, check_secret_value};
use kairos_model::{FieldError, Timestamp};
use kairos_store::Command;
use serde_json::Value;

use super::guard::JsonBody;
use super::{ApiError, ApiResult, AppState, Params, reply, reply_list};

/// `GET /v1/secrets`: every secret's name and times, by name.
pub async fn list(State(node): State<AppState>, Query(params): Query<Params>) -> ApiResult {
    let secrets = node.state.secrets()?;
    Ok(reply_list(&secrets, secrets.len(), &params))
}

/// `GET /v1/secrets/{name}`: the secret's name and times.
pub async fn show(State(node): State<AppState>, Path(name): Path<String>, Query(params): Query<Params>) -> ApiResult {
    let secret = node.state.secrets()?.into_iter().find(|s| s.name == name).ok_or_else(|| not_found(&name))?;
    Ok(reply(StatusCode::OK, &secret, &params))
}

/// `PUT /v1/secrets/{name}` with `{"value": "…"}`: creates (201) or replaces (200) the value.
pub async fn put(
    State(node): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
    JsonBody(body): JsonBody,
) -> ApiResult {
    check_secret_name("name", &name)?;
    let value = value_of(&body)?;
    let existed = node.state.secrets()?.iter().any(|s| s.name == name);
    let command = Command::SecretPut { name: name.clone(), value: SecretValue(value), at: Timestamp::now() };
    let response = node.submit(command).await?;
    let secret = response.secret.ok_or_else(|| ApiError::internal("a secret stored without its record"))?;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok(reply(status, &secret, &params))
}

/// `DELETE /v1/secrets/{name}`: jobs that reference it fail their next runs, naming it, until it is set again.
pub async fn delete(State(node): State<AppState>, Path(name): Path<String>, Query(params): Query<Params>) -> ApiResult {
    let response = node.submit(Command::SecretDelete { name: name.clone() }).await?;
    let secret = response.secret.ok_or_else(|| not_found(&name))?;
    Ok(reply(StatusCode::OK, &secret, &params))
}

/// The `value` of a body `{"value": "…"}`; nothing else is accepted.
fn value_of(body: &[u8]) -> Result<String, ApiError> {
    let map = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(ApiError::bad_request("body: must be a JSON object {\"value\": \"…\"}")),
        Err(err) => return Err(ApiError::bad_request(format!("body: not JSON: {err}"))),
    };
    if let Some(key) = map.keys().find(|k| k.as_str() != "value") {
        return Err(ApiError::bad_request(format!("{key}: unknown field (known: value)")));
    }
    let value = match map.get("value") {
        Some(Value::String(value)) => value.clone(),
        Some(_) => return Err(FieldError::new("value", "must be a string").into()),
        None => return Err(FieldError::new("value", "required").into()),
    };
    check_secret_value("value", &value)?;
    Ok(value)
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("secret '{name}' not found"))
}
