//! The job editor: `/ui/new` (create; `?clone=name` starts from a copy) and `/ui/jobs/{name}/edit`.
//!
//! One form holds every job field, with the `shell` and `http` executors' own keys; a second view shows the same
//! job as raw JSON. The script sends the job to the API (`POST /v1/jobs`, or `PUT /v1/jobs/{name}` when editing)
//! and shows the API's `{"error": "field: problem"}` next to the named field (`data-field`), and it previews the
//! next fire times through `GET /v1/schedule/preview` while the schedule or time zone is typed.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use kairos_model::Job;
use maud::{Markup, html};

use super::UiResult;
use super::layout::{Nav, node_page};
use crate::api::AppState;

/// The executor config keys the form has inputs for; others go to the "other keys" box.
pub const SHELL_KEYS: [&str; 5] = ["command", "shell", "env", "cwd", "timeout"];
pub const HTTP_KEYS: [&str; 11] = [
    "url",
    "method",
    "headers",
    "body",
    "timeout",
    "expectCode",
    "expectBody",
    "tlsNoVerifyPeer",
    "tlsRootCAsFile",
    "tlsCertificateFile",
    "tlsCertificateKeyFile",
];
const HTTP_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Create,
    Edit,
}

pub async fn create(State(node): State<AppState>, Query(params): Query<HashMap<String, String>>) -> UiResult {
    let mut job = Job::empty("");
    job.executor = "shell".into();
    let mut title = "New job".to_string();
    if let Some(source) = params.get("clone").filter(|s| !s.is_empty()) {
        let record = node.state.job(source)?.ok_or_else(|| super::job::not_found(source))?;
        job = record.job;
        job.name = format!("{source}-copy");
        job.dependent_jobs.clear();
        title = format!("New job (copy of {source})");
    }
    let body = editor(&job, Mode::Create, &title);
    Ok(node_page(&node, &title, Nav::New, body).into_response())
}

pub async fn edit(State(node): State<AppState>, Path(name): Path<String>) -> UiResult {
    let record = node.state.job(&name)?.ok_or_else(|| super::job::not_found(&name))?;
    let title = format!("Edit {name}");
    let body = editor(&record.job, Mode::Edit, &title);
    Ok(node_page(&node, &title, Nav::Jobs, body).into_response())
}

/// A control's names from its spec: `key` (the API's field name), or `section:key` for an executor's own
/// inputs, whose ids must differ between sections (both executors have a `timeout`).
struct Names {
    key: String,
    id: String,
    /// The executor_config key, for inputs that fill `executor_config`.
    ec: Option<String>,
}

fn names(spec: &str) -> Names {
    let (section, key) = spec.split_once(':').unwrap_or(("", spec));
    let id = if section.is_empty() {
        format!("f-{}", key.replace('.', "-"))
    } else {
        format!("f-{section}-{}", key.replace('.', "-"))
    };
    let ec = key.strip_prefix("executor_config.").map(str::to_string);
    Names { key: key.to_string(), id, ec }
}

/// One labelled control with its hint and the slot for the API's error about it.
fn field(spec: &str, label: &str, hint: Option<&str>, control: impl Fn(&Names, &str) -> Markup) -> Markup {
    let n = names(spec);
    let described = match hint {
        Some(_) => format!("{0}-error {0}-hint", n.id),
        None => format!("{}-error", n.id),
    };
    html! {
        div.field data-field=(n.key) {
            label for=(n.id) { (label) }
            (control(&n, &described))
            @if let Some(hint) = hint { p.hint id={ (n.id) "-hint" } { (hint) } }
            p.field-error id={ (n.id) "-error" } hidden {}
        }
    }
}

fn text_input(spec: &str, label: &str, value: &str, hint: Option<&str>) -> Markup {
    field(spec, label, hint, |n, described| {
        html! {
            input id=(n.id) name=(n.key) type="text" value=(value) aria-describedby=(described) autocomplete="off"
                spellcheck="false" data-ec=[n.ec.as_deref()];
        }
    })
}

fn textarea(spec: &str, label: &str, value: &str, hint: Option<&str>, rows: u32) -> Markup {
    field(spec, label, hint, |n, described| {
        html! {
            textarea id=(n.id) name=(n.key) rows=(rows) aria-describedby=(described) spellcheck="false"
                data-ec=[n.ec.as_deref()] { (value) }
        }
    })
}

fn checkbox(spec: &str, label: &str, checked: bool) -> Markup {
    let n = names(spec);
    html! {
        div.field.check data-field=(n.key) {
            input id=(n.id) name=(n.key) type="checkbox" checked[checked] aria-describedby={ (n.id) "-error" }
                data-ec=[n.ec.as_deref()];
            label for=(n.id) { (label) }
            p.field-error id={ (n.id) "-error" } hidden {}
        }
    }
}

fn select(spec: &str, label: &str, options: &[(&str, &str)], selected: &str) -> Markup {
    field(spec, label, None, |n, described| {
        html! {
            select id=(n.id) name=(n.key) aria-describedby=(described) data-ec=[n.ec.as_deref()] {
                @for (value, text) in options { option value=(value) selected[*value == selected] { (text) } }
            }
        }
    })
}

fn pairs_text(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n")
}

fn truthy(value: Option<&String>) -> bool {
    matches!(value.map(String::as_str), Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
}

fn time_text(t: Option<kairos_model::Timestamp>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

/// Every IANA zone name the server knows, for the time zone input's suggestions.
fn zone_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: Vec<String> = jiff::tz::db().available().map(|n| n.as_str().to_string()).collect();
        names.sort();
        names
    })
}

fn editor(job: &Job, mode: Mode, title: &str) -> Markup {
    let config = &job.executor_config;
    let ec = |key: &str| config.get(key).cloned().unwrap_or_default();
    // Executors without inputs of their own (nats, rabbitmq, redis, kafka, sql, grpc, plugins) keep every key in the "other keys" box.
    let own_keys: &[&str] = match job.executor.as_str() {
        "http" => &HTTP_KEYS,
        "shell" | "" => &SHELL_KEYS,
        _ => &[],
    };
    let others: BTreeMap<String, String> =
        config.iter().filter(|(k, _)| !own_keys.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut executors: Vec<&str> = kairos_agent::EXECUTORS.to_vec();
    if !job.executor.is_empty() && !executors.contains(&job.executor.as_str()) {
        executors.push(job.executor.as_str());
    }
    let executor_options: Vec<(&str, &str)> = executors.iter().map(|e| (*e, *e)).collect();
    let method = if ec("method").is_empty() { "GET".to_string() } else { ec("method").to_uppercase() };
    let method_options: Vec<(&str, &str)> = HTTP_METHODS.iter().map(|m| (*m, *m)).collect();
    let concurrency = format!("{:?}", job.concurrency).to_lowercase();
    let on_overload = format!("{:?}", job.on_overload).to_lowercase();
    let catch_up = format!("{:?}", job.catch_up).to_lowercase();
    let (mode_name, cancel_href) = match mode {
        Mode::Create => ("create", "/ui/jobs".to_string()),
        Mode::Edit => ("edit", format!("/ui/jobs/{}", job.name)),
    };
    html! {
        h1 { (title) }
        div.tabs role="tablist" aria-label="Editor view" {
            button #tab-form type="button" role="tab" aria-selected="true" aria-controls="pane-form" { "Form" }
            button #tab-json type="button" role="tab" aria-selected="false" aria-controls="pane-json" tabindex="-1" { "JSON" }
        }
        form #job-form novalidate data-mode=(mode_name) data-name=(job.name) {
            div #form-error.notice.error role="alert" hidden {}
            div #pane-form role="tabpanel" aria-labelledby="tab-form" {
                fieldset {
                    legend { "Job" }
                    @if mode == Mode::Edit {
                        (field("name", "Name", Some("A job's name cannot change; clone it to use another name."), |n, d| html! {
                            input id=(n.id) name="name" type="text" value=(job.name) readonly aria-describedby=(d);
                        }))
                    } @else {
                        (text_input("name", "Name", &job.name, Some("Lowercase letters, digits, '_' and '-'.")))
                    }
                    (text_input("displayname", "Display name", &job.displayname, None))
                    (text_input("owner", "Owner", &job.owner, None))
                    (text_input("owner_email", "Owner email", &job.owner_email, None))
                    (checkbox("disabled", "Disabled (does not fire by itself)", job.disabled))
                }
                fieldset {
                    legend { "When" }
                    (text_input("schedule", "Schedule", &job.schedule,
                        Some("Cron with seconds (\"*/10 * * * * *\"), 5 fields, or @every 1m, @daily, @at <instant>, @manually. Empty for a child job.")))
                    (field("timezone", "Time zone", Some("IANA name, e.g. Europe/Berlin; empty means UTC."), |n, d| html! {
                        input id=(n.id) name="timezone" type="text" value=(job.timezone) list="zones" aria-describedby=(d)
                            autocomplete="off" spellcheck="false";
                    }))
                    datalist #zones { @for zone in zone_names() { option value=(zone) {} } }
                    div.preview #preview aria-live="polite" aria-label="Next fire times" {}
                    (text_input("starts_at", "Starts at", &time_text(job.starts_at), Some("RFC 3339, e.g. 2026-01-01T00:00:00Z; empty: now.")))
                    (text_input("expires_at", "Expires at", &time_text(job.expires_at), Some("RFC 3339; empty: never.")))
                    (select("catch_up", "Catch up missed slots", &[("latest", "latest: run the most recent once"), ("skip", "skip: drop them"), ("all", "all: run every one")], &catch_up))
                    (text_input("catch_up_window", "Catch-up window", &job.catch_up_window, Some("Missed slots older than this are never run (e.g. 1h).")))
                }
                fieldset {
                    legend { "What" }
                    (select("executor", "Executor", &executor_options, &job.executor))
                    fieldset.executor data-executor="shell" hidden[job.executor != "shell" && !job.executor.is_empty()] {
                        legend { "Shell" }
                        (textarea("shell:executor_config.command", "Command", &ec("command"), Some("Split into words and run directly, unless \"Run in /bin/sh\" is on."), 2))
                        (checkbox("shell:executor_config.shell", "Run in /bin/sh -c (pipes, redirects, variables)", truthy(config.get("shell"))))
                        (text_input("shell:executor_config.env", "Environment", &ec("env"), Some("KEY=value pairs separated by commas.")))
                        (text_input("shell:executor_config.cwd", "Working directory", &ec("cwd"), None))
                        (text_input("shell:executor_config.timeout", "Timeout", &ec("timeout"), Some("e.g. 30s; empty or 0: none.")))
                    }
                    fieldset.executor data-executor="http" hidden[job.executor != "http"] {
                        legend { "HTTP" }
                        (text_input("http:executor_config.url", "URL", &ec("url"), None))
                        (select("http:executor_config.method", "Method", &method_options, &method))
                        (text_input("http:executor_config.headers", "Headers", &ec("headers"), Some("A JSON array, e.g. [\"Content-Type: application/json\"].")))
                        (textarea("http:executor_config.body", "Body", &ec("body"), None, 3))
                        (text_input("http:executor_config.timeout", "Timeout", &ec("timeout"), Some("Default 30s; 0: none.")))
                        (text_input("http:executor_config.expectCode", "Expected status", &ec("expectCode"), Some("e.g. 200 or 200,204; empty: any 2xx.")))
                        (text_input("http:executor_config.expectBody", "Expected body (regex)", &ec("expectBody"), None))
                        (checkbox("http:executor_config.tlsNoVerifyPeer", "Do not verify the server's certificate", truthy(config.get("tlsNoVerifyPeer"))))
                        (text_input("http:executor_config.tlsRootCAsFile", "CA certificates file", &ec("tlsRootCAsFile"), None))
                        (text_input("http:executor_config.tlsCertificateFile", "Client certificate file", &ec("tlsCertificateFile"), None))
                        (text_input("http:executor_config.tlsCertificateKeyFile", "Client key file", &ec("tlsCertificateKeyFile"), None))
                    }
                    (textarea("executor_config", "Other executor_config keys", &pairs_text(&others), Some("key=value, one per line."), 2))
                }
                fieldset {
                    legend { "Policies" }
                    (text_input("retries", "Retries", &job.retries.to_string(), Some("Extra attempts after a failure (0–100).")))
                    (text_input("retry_backoff", "Retry backoff", &job.retry_backoff, Some("Before the first retry; doubles each time.")))
                    (text_input("retry_backoff_max", "Retry backoff max", &job.retry_backoff_max, None))
                    (select("concurrency", "Concurrency", &[("allow", "allow: run alongside"), ("forbid", "forbid: skip while one is active"), ("replace", "replace: cancel the active one")], &concurrency))
                    (select("on_overload", "When its node is full", &[("skip", "skip: record the run skipped"), ("retry", "retry: after the backoff, within the retries, elsewhere if possible")], &on_overload))
                    (text_input("parent_job", "Parent job", &job.parent_job, Some("Run after this job succeeds.")))
                    (checkbox("ephemeral", "Ephemeral (delete after the first success)", job.ephemeral))
                    (text_input("executions_retained", "Executions kept", &job.executions_retained.map(|n| n.to_string()).unwrap_or_default(), Some("Empty: the server's default.")))
                }
                fieldset {
                    legend { "Labels" }
                    (textarea("tags", "Tags", &pairs_text(&job.tags), Some("key=value, one per line."), 3))
                    (textarea("metadata", "Metadata", &pairs_text(&job.metadata), Some("key=value, one per line."), 3))
                    (textarea("processors", "Processors (JSON object)", &if job.processors.is_empty() { String::new() } else { serde_json::to_string_pretty(&job.processors).unwrap_or_default() }, Some(r#"Where each run's output goes: files, log and syslog, applied in that order on the node that ran it, e.g. {"files": {"log_dir": "/var/log/kairos", "forward": "true"}}. Not forwarded, the output is replaced by a note."#), 2))
                    (textarea("notify", "Notify (JSON object)", &job.notify.as_ref().map(|n| serde_json::to_string_pretty(n).unwrap_or_default()).unwrap_or_default(), Some(r#"When webhooks and mail go out, e.g. {"on": ["failure", "recovery"]}. Empty: every start and finish."#), 2))
                }
            }
            div #pane-json role="tabpanel" aria-labelledby="tab-json" hidden {
                div.field data-field="json" {
                    label for="f-json" { "The job as JSON (what Save sends)" }
                    textarea #f-json rows="24" spellcheck="false" aria-describedby="f-json-error" {}
                    p.field-error #f-json-error hidden {}
                }
            }
            div.form-actions {
                button.primary #save type="submit" { "Save" }
                @if mode == Mode::Create {
                    label.inline-check { input #runoncreate type="checkbox"; " Run once right after saving" }
                }
                a.button.link href=(cancel_href) { "Cancel" }
            }
        }
        noscript { p.notice.error { "The editor needs JavaScript; the API (POST /v1/jobs) works without it." } }
    }
}
