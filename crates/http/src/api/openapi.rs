//! The OpenAPI 3 document of the HTTP API, served at `GET /v1/openapi.json`.
//!
//! Written by hand next to the route table; the tests check that every route in [`super::routes`] is described
//! here with the same methods, and nothing more.

use axum::extract::Query;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiResult, Params, reply};

pub async fn serve(Query(params): Query<Params>) -> ApiResult {
    Ok(reply(StatusCode::OK, &document(), &params))
}

fn error_responses(codes: &[&str]) -> Value {
    let mut map = serde_json::Map::new();
    for code in codes {
        let description = match *code {
            "400" => "Invalid input; the error names the field and the problem",
            "404" => "Unknown job or execution",
            "403" => {
                "The token's policies do not allow this (the error names the capability and path), or a browser page of another origin may not change anything (see --cors-allowed-origins)"
            }
            "409" => "Conflict (e.g. the job has dependent jobs, or the execution already finished)",
            "413" => "The body is larger than the limit",
            "415" => "The body is not sent as application/json",
            "502" => "The node that ran the execution could not be reached",
            "503" => "New job submissions are paused, or no leader is elected yet (retry)",
            "401" => "ACL is enabled and the request carries no valid token (none, unknown or expired)",
            _ => "Error",
        };
        map.insert(
            code.to_string(),
            json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(map)
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn with_errors(mut responses: Value, codes: &[&str]) -> Value {
    if let (Some(target), Value::Object(errors)) = (responses.as_object_mut(), error_responses(codes)) {
        target.extend(errors);
    }
    responses
}

fn job_ref() -> Value {
    json!({"$ref": "#/components/schemas/Job"})
}

fn exec_ref() -> Value {
    json!({"$ref": "#/components/schemas/Execution"})
}

fn param(name: &str, location: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": location, "required": location == "path", "description": description, "schema": schema})
}

fn job_param() -> Value {
    param("job", "path", "Job name", json!({"type": "string"}))
}

fn exec_param() -> Value {
    param("execution", "path", "Execution id", json!({"type": "string"}))
}

fn paging() -> Vec<Value> {
    vec![
        param("_start", "query", "First index of the page (inclusive)", json!({"type": "integer"})),
        param("_end", "query", "Last index of the page (exclusive)", json!({"type": "integer"})),
        param("_sort", "query", "Field to sort by", json!({"type": "string"})),
        param("_order", "query", "ASC or DESC", json!({"type": "string", "enum": ["ASC", "DESC"]})),
        param("pretty", "query", "Indent the JSON answer", json!({"type": "string"})),
    ]
}

fn token_ref() -> Value {
    json!({"$ref": "#/components/schemas/Token"})
}

fn policy_ref() -> Value {
    json!({"$ref": "#/components/schemas/Policy"})
}

fn accessor_param() -> Value {
    param("accessor", "path", "The token's accessor id (a UUID)", json!({"type": "string", "format": "uuid"}))
}

fn policy_param() -> Value {
    param("name", "path", "Policy name", json!({"type": "string"}))
}

fn token_body() -> Value {
    let schema = json!({"type": "object", "additionalProperties": false, "properties": {
        "name": {"type": "string"}, "type": {"type": "string", "enum": ["client", "management"], "default": "client"},
        "policies": {"type": "array", "items": {"type": "string"}},
        "ttl": {"type": "string", "description": "Duration after which the token expires (e.g. 24h)"},
    }});
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn policy_body() -> Value {
    json!({"required": true, "content": {"application/json": {"schema": policy_ref()}}})
}

fn job_body() -> Value {
    json!({"required": true, "content": {"application/json": {"schema": job_ref()}}})
}

/// An object of string values (Dkron's maps).
fn strings() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

/// The `/v1/secrets` and `/v1/audit` routes, added to [`paths`].
fn with_security_paths(mut paths: Value) -> Value {
    let secret = || json!({"$ref": "#/components/schemas/Secret"});
    let name = || param("name", "path", "Secret name (letters, digits, '.', '_', '-')", json!({"type": "string"}));
    let body = json!({"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["value"],
        "properties": {"value": {"type": "string", "description": "The value (at most 64 KiB); never returned"}}}}}});
    let secrets = json!({
        "/v1/secrets": {
            "get": {"summary": "List secrets: names and times, never values", "responses": with_errors(json!({"200": ok("Secrets", json!({"type": "array", "items": secret()}))}), &["401", "403"])},
        },
        "/v1/secrets/{name}": {
            "get": {"summary": "Show a secret's name and times", "parameters": [name()], "responses": with_errors(json!({"200": ok("The secret", secret())}), &["401", "403", "404"])},
            "put": {"summary": "Create (201) or replace (200) a secret's value; jobs reference it as {{secret \"name\"}} in executor_config", "parameters": [name()], "requestBody": body,
                    "responses": with_errors(json!({"200": ok("The secret", secret()), "201": ok("The secret", secret())}), &["400", "401", "403", "415"])},
            "delete": {"summary": "Delete a secret (jobs referencing it fail their next runs, naming it)", "parameters": [name()],
                       "responses": with_errors(json!({"200": ok("The deleted secret", secret())}), &["401", "403", "404"])},
        },
        "/v1/audit": {
            "get": {"summary": "The audit log, newest first: every write request to the API and UI, refusals included",
                    "parameters": [
                        param("token", "query", "A token's name or accessor id (anonymous, unauthenticated)", json!({"type": "string"})),
                        param("job", "query", "The job the request named", json!({"type": "string"})),
                        param("since", "query", "From this instant (RFC 3339)", json!({"type": "string", "format": "date-time"})),
                        param("until", "query", "Before this instant (RFC 3339)", json!({"type": "string", "format": "date-time"})),
                        param("_start", "query", "First index of the page (inclusive)", json!({"type": "integer"})),
                        param("_end", "query", "Last index of the page (exclusive)", json!({"type": "integer"})),
                    ],
                    "responses": with_errors(json!({"200": ok("Records", json!({"type": "array", "items": {"$ref": "#/components/schemas/AuditRecord"}}))}), &["400", "401", "403"])},
        },
    });
    if let (Some(paths), Value::Object(secrets)) = (paths.as_object_mut(), secrets) {
        paths.extend(secrets);
    }
    paths
}

fn paths() -> Value {
    let str_schema = json!({"type": "string"});
    let list_jobs_params: Vec<Value> = [
        param("q", "query", "Substring of the name or display name", str_schema.clone()),
        param("metadata[key]", "query", "Only jobs whose metadata has key=value (repeatable)", str_schema.clone()),
        param("tags[key]", "query", "Only jobs whose tags have key=value (repeatable)", str_schema.clone()),
        param("status", "query", "success, failed, running or untriggered", str_schema.clone()),
        param("disabled", "query", "true or false", str_schema.clone()),
        param("executor", "query", "Executor name", str_schema.clone()),
    ]
    .into_iter()
    .chain(paging())
    .collect();
    let mut list_exec_params = vec![
        job_param(),
        param("status", "query", "Only executions with this status", str_schema.clone()),
        param("output_size_limit", "query", "Keep only the last N bytes of each output", json!({"type": "integer"})),
    ];
    list_exec_params.extend(paging());
    let run = json!({
        "summary": "Run the job now (answers at once; the run is decided through Raft)",
        "parameters": [job_param()],
        "responses": with_errors(json!({"202": ok("The job", job_ref())}), &["404"]),
    });
    json!({
        "/health": {"get": {"summary": "Liveness", "responses": {"200": ok("OK", json!({"type": "object"}))}}},
        "/v1": {"get": {"summary": "Agent summary (Dkron's agent, serf and tags; ours: raft)", "responses": {"200": ok("Summary", json!({"type": "object", "properties": {"agent": strings(), "serf": strings(), "tags": strings(), "raft": {"type": "object"}}}))}}},
        "/v1/members": {"get": {"summary": "Cluster members", "responses": {"200": ok("Members", json!({"type": "array", "items": {"$ref": "#/components/schemas/Member"}}))}}},
        "/v1/leader": {"get": {"summary": "The leader member", "responses": with_errors(json!({"200": ok("Leader", json!({"$ref": "#/components/schemas/Member"}))}), &["404"])}},
        "/v1/isleader": {"get": {"summary": "200 on the leader, 404 elsewhere", "responses": {"200": ok("Leader", str_schema.clone()), "404": ok("Follower", str_schema.clone())}}},
        "/v1/busy": {"get": {"summary": "Pending and running executions", "responses": {"200": ok("Executions", json!({"type": "array", "items": exec_ref()}))}}},
        "/v1/pause": {
            "get": {"summary": "Whether new job submissions are paused", "responses": {"200": ok("Pause state", json!({"type": "object", "properties": {"paused": {"type": "boolean"}}}))}},
            "post": {"summary": "Pause new job submissions (replicated, kept across restarts)", "responses": {"200": ok("Pause state", json!({"type": "object"}))}},
        },
        "/v1/unpause": {"post": {"summary": "Accept job submissions again", "responses": {"200": ok("Pause state", json!({"type": "object"}))}}},
        "/v1/restore": {"post": {
            "summary": "Create or replace jobs from a JSON array (multipart field `file`, or the raw body); all are validated first",
            "requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}}, "application/json": {"schema": {"type": "array", "items": job_ref()}}}},
            "responses": with_errors(json!({"200": ok("Dkron's answer: a JSON string holding a JSON array of 'success create <name>' lines", json!({"type": "string"}))}), &["400", "403", "404", "413", "415"]),
        }},
        "/v1/leave": {"post": {"summary": "This node leaves the cluster and exits (as `kairos leave`); answers the members as they were",
            "responses": with_errors(json!({"200": ok("Members", json!({"type": "array", "items": {"$ref": "#/components/schemas/Member"}}))}), &["403"])}},
        "/v1/schedule/preview": {"get": {
            "summary": "Next fire instants of a schedule, in UTC and in its zone",
            "parameters": [
                param("schedule", "query", "Cron expression or descriptor", str_schema.clone()),
                param("timezone", "query", "IANA time zone (default UTC)", str_schema.clone()),
                param("count", "query", "How many (1-1000, default 10)", json!({"type": "integer"})),
                param("from", "query", "RFC 3339 instant to start after (default now)", str_schema.clone()),
                param("name", "query", "Job name, for the ~ hash spread", str_schema.clone()),
            ],
            "responses": with_errors(json!({"200": ok("Preview", json!({"$ref": "#/components/schemas/Preview"}))}), &["400"]),
        }},
        "/v1/stats": super::stats::openapi_path(),
        "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": ok("OpenAPI 3 document", json!({"type": "object"}))}}},
        "/v1/jobs": {
            "get": {"summary": "List jobs (filtered, sorted, paged; X-Total-Count has the filtered count)", "parameters": list_jobs_params,
                    "responses": with_errors(json!({"200": ok("Jobs", json!({"type": "array", "items": job_ref()}))}), &["400"])},
            "post": {"summary": "Create or replace a job", "requestBody": job_body(),
                     "parameters": [param("runoncreate", "query", "Run the job right after saving it", str_schema.clone())],
                     "responses": with_errors(json!({"201": ok("The stored job", job_ref())}), &["400", "403", "413", "415", "503"])},
            "patch": {"summary": "Change the fields present in the body (creates the job if missing)", "requestBody": job_body(),
                      "responses": with_errors(json!({"201": ok("The stored job", job_ref())}), &["400", "403", "409", "413", "415", "503"])},
        },
        "/v1/jobs/{job}": {
            "get": {"summary": "Show a job", "parameters": [job_param()], "responses": with_errors(json!({"200": ok("The job", job_ref())}), &["404"])},
            "put": {"summary": "Create or replace the named job", "parameters": [job_param()], "requestBody": job_body(),
                    "responses": with_errors(json!({"201": ok("The stored job", job_ref())}), &["400", "403", "413", "415", "503"])},
            "post": run.clone(),
            "delete": {"summary": "Delete a job and its executions", "parameters": [job_param()],
                       "responses": with_errors(json!({"200": ok("The deleted job", job_ref())}), &["404", "409"])},
        },
        "/v1/jobs/{job}/run": {"post": run},
        "/v1/jobs/{job}/toggle": {"post": {"summary": "Enable or disable a job", "parameters": [job_param()],
            "responses": with_errors(json!({"200": ok("The job", job_ref())}), &["404", "409"])}},
        "/v1/jobs/{job}/executions": {
            "get": {"summary": "List executions (newest first by default)", "parameters": list_exec_params,
                    "responses": with_errors(json!({"200": ok("Executions", json!({"type": "array", "items": exec_ref()}))}), &["400", "404"])},
            "delete": {"summary": "Delete every finished execution of the job", "parameters": [job_param()],
                       "responses": with_errors(json!({"200": ok("The job", job_ref())}), &["404"])},
        },
        "/v1/jobs/{job}/executions/{execution}": {"get": {"summary": "Show an execution with its full stored output",
            "parameters": [job_param(), exec_param()], "responses": with_errors(json!({"200": ok("The execution", exec_ref())}), &["404"])}},
        "/v1/jobs/{job}/executions/{execution}/cancel": {"post": {"summary": "Cancel a pending or running execution",
            "parameters": [job_param(), exec_param()], "responses": with_errors(json!({"202": ok("The execution", exec_ref())}), &["404", "409"])}},
        "/v1/acl/bootstrap": {"post": {"summary": "Create the first management token (once per cluster; open without a token until then)",
            "responses": with_errors(json!({"201": ok("The token, with its secret (shown this once)", token_ref())}), &["409", "503"])}},
        "/v1/acl/tokens": {
            "get": {"summary": "List tokens (never their secrets); management tokens only", "responses": with_errors(json!({"200": ok("Tokens", json!({"type": "array", "items": token_ref()}))}), &["401", "403"])},
            "post": {"summary": "Create a token", "requestBody": token_body(),
                     "responses": with_errors(json!({"201": ok("The token, with its secret (shown this once)", token_ref())}), &["400", "401", "403", "415"])},
        },
        "/v1/acl/tokens/{accessor}": {
            "get": {"summary": "Show a token (without its secret)", "parameters": [accessor_param()], "responses": with_errors(json!({"200": ok("The token", token_ref())}), &["400", "401", "403", "404"])},
            "post": {"summary": "Change a token's name, type, policies or ttl (from now); its secret stays", "parameters": [accessor_param()], "requestBody": token_body(),
                     "responses": with_errors(json!({"200": ok("The token", token_ref())}), &["400", "401", "403", "404", "415"])},
            "delete": {"summary": "Delete a token", "parameters": [accessor_param()], "responses": with_errors(json!({"200": ok("The deleted token", token_ref())}), &["400", "401", "403", "404"])},
        },
        "/v1/acl/policies": {
            "get": {"summary": "List policies, the built-in default and readonly included", "responses": with_errors(json!({"200": ok("Policies", json!({"type": "array", "items": policy_ref()}))}), &["401", "403"])},
            "post": {"summary": "Create or replace a policy", "requestBody": policy_body(),
                     "responses": with_errors(json!({"200": ok("The policy", policy_ref())}), &["400", "401", "403", "415"])},
        },
        "/v1/acl/policies/{name}": {
            "get": {"summary": "Show a policy", "parameters": [policy_param()], "responses": with_errors(json!({"200": ok("The policy", policy_ref())}), &["401", "403", "404"])},
            "post": {"summary": "Create or replace the named policy", "parameters": [policy_param()], "requestBody": policy_body(),
                     "responses": with_errors(json!({"200": ok("The policy", policy_ref())}), &["400", "401", "403", "415"])},
            "delete": {"summary": "Delete a policy (tokens naming it keep the name, which grants nothing)", "parameters": [policy_param()],
                       "responses": with_errors(json!({"200": ok("The deleted policy", policy_ref())}), &["400", "401", "403", "404"])},
        },
        "/v1/jobs/{job}/executions/{execution}/output": {"get": {"summary": "The full output as text, from the node that ran it; follow=true streams it live until the run ends",
            "parameters": [job_param(), exec_param(), param("follow", "query", "Stream the output as it grows (chunked) until the run ends", json!({"type": "boolean"}))],
            "responses": with_errors(json!({"200": {"description": "The output", "content": {"text/plain": {"schema": {"type": "string"}}}}}), &["400", "404", "502", "503"])}},
    })
}

fn schemas() -> Value {
    let s = json!({"type": "string"});
    let t = json!({"type": "string", "format": "date-time", "nullable": true});
    // Dkron's `time.Time` fields: never null (see `api::dkron_time`).
    let zt = json!({"type": "string", "format": "date-time", "description": "0001-01-01T00:00:00Z (Go's zero time, as in Dkron) when there is none"});
    let map = strings();
    let notify = json!({"type": "object", "nullable": true, "description": "When webhooks and mail go out (default: every start and finish, and missed when alert_if_not_succeeded_within is set). While the job keeps failing, a failure notifies again only repeat_after (default 1h) after the last one that did. emails are mailed beside owner_email; webhooks are the job's own (payload: a Go template over the webhook fields). alert_if_not_succeeded_within: one missed alert when the job has gone that long without a success, a recovery when it next succeeds",
        "properties": {"on": {"type": "array", "items": {"type": "string", "enum": ["start", "success", "failure", "recovery", "lost", "missed"]}}, "repeat_after": {"type": "string"},
            "emails": {"type": "array", "items": {"type": "string"}},
            "webhooks": {"type": "array", "items": {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}, "payload": {"type": "string"}, "headers": {"type": "object", "additionalProperties": {"type": "string"}}}}},
            "alert_if_not_succeeded_within": {"type": "string"}}});
    // Dkron's settings are strings; `forward` may be a boolean too.
    let forward = json!({"oneOf": [{"type": "boolean"}, {"type": "string"}], "description": "Pass the output on unchanged (default false: replace it with a note)"});
    let settings = |properties: Value| json!({"type": "object", "nullable": true, "additionalProperties": false, "properties": properties});
    let on_overload = json!({"type": "string", "enum": ["skip", "retry"], "description": "A run its node is too busy for (--max-running and --max-queued full): recorded skipped, or that attempt skipped and retried after the backoff within retries, on another matching node when there is one"});
    let processors = json!({"type": "object", "additionalProperties": false,
    "description": "Where each run's output goes once it ends, applied in name order on the node that ran it (see the README, Output processors)",
    "properties": {
        "files": settings(json!({"log_dir": {"type": "string", "description": "Absolute; default /var/log/kairos"}, "forward": forward})),
        "log": settings(json!({"forward": forward})),
        "syslog": settings(json!({"address": {"type": "string", "description": "unix:///path, udp://host:port or tcp://host:port; default the local socket"},
            "tag": {"type": "string", "description": "Default kairos"}, "facility": {"type": "string", "description": "Default cron"}, "forward": forward})),
    }});
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string", "description": "Names the field and the problem"}}},
        "Job": {"type": "object", "required": ["name", "executor"], "additionalProperties": false, "properties": {
            "id": {"type": "string", "readOnly": true}, "name": {"type": "string", "pattern": "^[a-z0-9_-]+$"},
            "displayname": s, "schedule": {"type": "string", "description": "Cron (5, 6 or 7 fields) or @descriptor; empty for child jobs"},
            "timezone": {"type": "string", "description": "IANA zone for the schedule"}, "owner": s, "owner_email": s,
            "success_count": {"type": "integer", "readOnly": true}, "error_count": {"type": "integer", "readOnly": true},
            "last_success": t, "last_error": t, "disabled": {"type": "boolean"}, "tags": map, "metadata": map,
            "retries": {"type": "integer", "minimum": 0, "maximum": 100},
            "dependent_jobs": {"type": "array", "items": s, "readOnly": true}, "parent_job": s,
            "processors": processors,
            "concurrency": {"type": "string", "enum": ["allow", "forbid", "replace"]},
            "on_overload": on_overload,
            "executor": {"type": "string", "description": format!("A built-in executor ({}) or the name of an executor plugin a live node has (--plugin-dir)", kairos_agent::EXECUTORS.join(", "))}, "executor_config": map,
            "status": {"type": "string", "readOnly": true, "enum": ["", "success", "failed", "running"]},
            "next": zt, "ephemeral": {"type": "boolean"}, "starts_at": t, "expires_at": t,
            "catch_up": {"type": "string", "enum": ["skip", "latest", "all"], "description": "Slots missed while no scheduler ran"},
            "catch_up_window": {"type": "string", "description": "Duration, default 1h"},
            "retry_backoff": {"type": "string", "description": "Duration, default 1s, doubling with jitter"},
            "retry_backoff_max": {"type": "string", "description": "Duration, default 5m"},
            "executions_retained": {"type": "integer", "nullable": true, "description": "Finished executions kept (default: server's)"},
            "notify": notify,
            "created_at": t, "updated_at": t,
        }},
        "Execution": {"type": "object", "properties": {
            "id": s, "job_name": s, "started_at": zt, "finished_at": zt, "success": {"type": "boolean"},
            "output": s, "output_truncated": {"type": "boolean"}, "node_name": s, "group": {"type": "integer"},
            "attempt": {"type": "integer"}, "scheduled_at": {"type": "string", "format": "date-time"},
            "status": {"type": "string", "enum": ["pending", "running", "succeeded", "failed", "lost", "cancelled", "skipped"]},
            "exit_code": {"type": "integer", "nullable": true},
            "trigger": {"type": "string", "enum": ["schedule", "catch_up", "manual", "retry", "parent"]},
            "error": {"type": "string", "nullable": true}, "not_before": t, "lease_until": t, "output_bytes": {"type": "integer"},
            "notifications": {"type": "array", "description": "How each notification about it ended (recorded by the leader once its delivery is over)",
                "items": {"type": "object", "properties": {
                    "kind": {"type": "string", "enum": ["pre_webhook", "webhook", "mail", "job_webhook", "cronitor"]},
                    "event": s, "target": s, "attempts": {"type": "integer"}, "error": {"type": "string"},
                    "outcome": {"type": "string", "enum": ["sent", "failed", "suppressed", "template_failed"]},
                    "at": {"type": "string", "format": "date-time"}}}},
        }},
        "Member": {"type": "object", "properties": {
            "id": s, "Name": s, "Addr": {"type": "string", "description": "IP of its gossip address"},
            "Port": {"type": "integer", "description": "Port of its gossip address"}, "Tags": map,
            "Status": {"type": "integer", "description": "serf's: 1 alive, 3 left, 4 failed"}, "statusText": s,
            "ProtocolMin": {"type": "integer"}, "ProtocolMax": {"type": "integer"}, "ProtocolCur": {"type": "integer"},
            "DelegateMin": {"type": "integer"}, "DelegateMax": {"type": "integer"}, "DelegateCur": {"type": "integer"},
            "leader": {"type": "boolean"}, "server": {"type": "boolean"}, "rpc_addr": s,
            "http_addr": {"type": "string", "description": "Where its HTTP API is reached (servers)"}, "gossip_addr": s,
        }},
        "Stats": super::stats::openapi_schema(),
        "AuditRecord": {"type": "object", "properties": {
            "seq": {"type": "integer"}, "at": {"type": "string", "format": "date-time"}, "token": s, "accessor_id": s,
            "client": s, "node": s, "method": s, "path": s, "job": s, "status": {"type": "integer"},
        }},
        "Secret": {"type": "object", "description": "A secret's name and times; its value is never shown", "properties": {
            "name": s, "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
        }},
        "Token": {"type": "object", "properties": {
            "accessor_id": {"type": "string", "format": "uuid"},
            "secret": {"type": "string", "format": "uuid", "description": "Only in the answer that created the token"},
            "name": s, "type": {"type": "string", "enum": ["client", "management"]},
            "policies": {"type": "array", "items": s}, "create_time": {"type": "string", "format": "date-time"},
            "expiration_time": t,
        }},
        "Policy": {"type": "object", "required": ["name", "rules"], "properties": {
            "name": s, "description": s,
            "rules": {"type": "object", "description": "Dkron Pro's document: {\"path\": {\"/v1/jobs/*\": {\"capabilities\": [\"read\", \"list\"]}}}; '*' matches any run of characters",
                "properties": {"path": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                    "capabilities": {"type": "array", "items": {"type": "string", "enum": ["read", "create", "update", "delete", "list"]}}}}}}},
        }},
        "Preview": {"type": "object", "properties": {
            "schedule": s, "timezone": s, "from": s,
            "fires": {"type": "array", "items": {"type": "object", "properties": {"utc": s, "local": s, "zone_abbreviation": s}}},
        }},
    })
}

pub fn document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Kairos API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Dkron-compatible /v1 API of the Kairos scheduler. Errors are {\"error\": \"field: problem\"}."},
        "paths": with_security_paths(paths()),
        "components": {"schemas": schemas(), "securitySchemes": {
            "token": {"type": "apiKey", "in": "header", "name": "X-Dkron-Token", "description": "With --acl-enabled: a token's secret (or Authorization: Bearer <secret>)"},
        }},
        "security": [{"token": []}],
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn document_describes_exactly_the_served_routes() {
        let doc = document();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| ops.as_object().unwrap().keys().map(move |m| (path.clone(), m.clone())))
            .collect();
        let served: BTreeSet<(String, String)> = super::super::routes()
            .iter()
            .flat_map(|r| r.methods.iter().map(move |m| (r.path.to_string(), m.to_string())))
            .collect();
        assert_eq!(documented, served);
    }
}
