//! Notifications: Dkron's webhooks, `--webhook-*` (when an execution finishes) and `--pre-webhook-*` (when it
//! starts), mail to the job's `owner_email` and `notify.emails` (`--mail-*`, see [`mail`]), a job's own
//! `notify.webhooks`, Cronitor pings (`--cronitor-endpoint`), and `missed` alerts for jobs that have not succeeded
//! within `notify.alert_if_not_succeeded_within`.
//!
//! **Who sends.** The leader, from the replicated outbox (see `kairos_store::outbox`): every start and every final
//! status is an outbox entry, committed with the change itself. The leader's notifier duty ([`duty`]) reads the
//! entries in order, sends what the job's rules want, and commits the outcome of every delivery onto its execution
//! (`notifications` in the API and the UI), which also takes the entries out of the outbox. A leader that dies
//! leaves the entries it had not finished to the next leader, which sends them: at least once. A delivery is sent
//! twice only if a leader dies after it went out and before its record committed (at most [`RECORD_EVERY`] plus a
//! commit); each request carries `X-Kairos-Delivery: <job>/<execution>/<kind>/<event>` (mail: its `Message-ID`)
//! so a receiver can drop the repeat.
//!
//! **Payloads** are Go `text/template`s over Dkron's fields (`JobName`, `ReportingNode`, `StartTime`,
//! `FinishedAt`, `Success`, `NodeName`, `Output`, times printed as Go prints a `time.Time`) and ours
//! (`Event`, `ExecutionID`, `ScheduledAt`, `Status`, `ExitCode`, `Attempt`, `Trigger`, `Error`, `LagMs`,
//! `Metadata`, `ExecutionURL`), so a `dkron.yml` payload renders the same. Without a template the body is a JSON document of those
//! fields. A template that does not parse is refused at start, naming the flag (a job's, at the job's write).
//!
//! **Delivery never slows a run**: the notifier holds at most [`WINDOW_MAX`] outbox entries at once and sends at
//! most [`IN_FLIGHT_MAX`] requests at once, each bounded by [`TIMEOUT`] and tried [`ATTEMPTS`] times with a
//! growing pause; slow receivers make the outbox grow (up to its bound), never the runs wait. Every outcome is
//! counted in `kairos_notifications{kind,outcome}` and a failure is logged with its error.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use kairos_model::{Execution, Job, Timestamp};

mod duty;
pub mod mail;
mod rules;

pub use duty::{Notifier, duty};
pub use mail::{Mail, MailFlags};

/// Outbox entries the notifier holds at once (read, being delivered, or waiting for their record to commit); with
/// a record every [`RECORD_EVERY`], it drains up to 20,000 entries a second.
const WINDOW_MAX: usize = 4096;
/// Requests in flight at once.
const IN_FLIGHT_MAX: usize = 16;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Tries per delivery, the pause doubling from [`FIRST_PAUSE`].
const ATTEMPTS: u32 = 3;
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// How often finished deliveries are recorded (one Raft entry each time).
const RECORD_EVERY: Duration = Duration::from_millis(200);

/// What a notification is about: an execution (or, for `missed`, a stand-in naming the job and why) and the event.
pub struct Note<'a> {
    pub exec: &'a Execution,
    /// `start`, `success`, `failure`, `recovery`, `lost`, `missed`, or the final status (`cancelled`, `skipped`).
    pub event: &'a str,
    pub job: Option<&'a Job>,
    pub reporting_node: &'a str,
    /// `http(s)://host:port` of the sending server's UI, for links; empty: none.
    pub ui_base: &'a str,
}

/// The server that sends: its name (Dkron's `ReportingNode`) and the base URL of its UI.
#[derive(Debug, Clone, Default)]
pub struct Sender {
    pub name: String,
    pub ui_base: String,
}

/// One webhook: where, what (a template, or the default JSON), with which headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub endpoint: String,
    pub payload: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// The webhooks a node sends while it leads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Webhooks {
    /// When an execution finishes.
    pub post: Option<Webhook>,
    /// When it starts.
    pub pre: Option<Webhook>,
}

impl Webhook {
    /// From `<flag>-endpoint`, `<flag>-payload` and `<flag>-headers`; `None` without an endpoint. Every problem
    /// names its flag.
    pub fn from_flags(
        flag: &str,
        endpoint: Option<String>,
        payload: Option<String>,
        headers: Vec<String>,
    ) -> anyhow::Result<Option<Webhook>> {
        let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) else {
            if payload.is_some() || !headers.is_empty() {
                bail!("{flag}-payload and {flag}-headers need {flag}-endpoint");
            }
            return Ok(None);
        };
        let url = reqwest::Url::parse(endpoint.trim()).with_context(|| format!("{flag}-endpoint: '{endpoint}'"))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("{flag}-endpoint: '{endpoint}' is not an http or https URL");
        }
        let headers = headers
            .iter()
            .map(|header| {
                let (name, value) = header
                    .split_once(':')
                    .with_context(|| format!("{flag}-headers: '{header}' is not `Name: value`"))?;
                let (name, value) = (name.trim(), value.trim());
                reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .with_context(|| format!("{flag}-headers: '{name}' is not a header name"))?;
                reqwest::header::HeaderValue::from_str(value)
                    .with_context(|| format!("{flag}-headers: the value of '{name}' is not a header value"))?;
                Ok((name.to_string(), value.to_string()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(template) = &payload {
            let mut parsed = gtmpl::Template::default();
            parsed.parse(template.as_str()).map_err(|err| anyhow::anyhow!("{flag}-payload: {err}"))?;
        }
        Ok(Some(Webhook { endpoint: url.to_string(), payload, headers }))
    }

    /// The body about `note`: the template rendered, or the default JSON.
    pub fn body(&self, note: &Note) -> Result<String, String> {
        body(self.payload.as_deref(), note)
    }
}

/// The body about `note`: `template` rendered, or the default JSON document.
fn body(template: Option<&str>, note: &Note) -> Result<String, String> {
    match template {
        Some(template) => render(template, note),
        None => {
            let object: serde_json::Map<String, serde_json::Value> =
                fields(note).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            Ok(serde_json::Value::Object(object).to_string())
        }
    }
}

fn content_type(template: Option<&str>) -> &'static str {
    if template.is_some() { "text/plain; charset=utf-8" } else { "application/json" }
}

/// A payload template rendered over `note`'s fields.
pub(crate) fn render(template: &str, note: &Note) -> Result<String, String> {
    let mut parsed = gtmpl::Template::default();
    parsed.parse(template).map_err(|err| err.to_string())?;
    let context: HashMap<String, gtmpl::Value> =
        fields(note).into_iter().map(|(k, v)| (k.to_string(), template_value(v))).collect();
    parsed.render(&gtmpl::Context::from(context)).map_err(|err| err.to_string())
}

/// The fields a payload may use.
fn fields(note: &Note) -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::Value;
    let (exec, reporting_node) = (note.exec, note.reporting_node);
    let metadata = note.job.map(|job| serde_json::to_value(&job.metadata).unwrap_or(Value::Null));
    let go_time =
        |t: Option<Timestamp>| Value::String(t.map(go_time).unwrap_or_else(|| go_time(Timestamp::UNIX_EPOCH)));
    let lag = exec.started_at.map(|s| s.duration_since(exec.scheduled_at).as_millis() as i64);
    vec![
        ("JobName", Value::from(exec.job_name.clone())),
        ("ReportingNode", Value::from(reporting_node)),
        ("StartTime", go_time(exec.started_at)),
        ("FinishedAt", go_time(exec.finished_at)),
        ("Success", Value::from(exec.success)),
        ("NodeName", Value::from(exec.node_name.clone())),
        ("Output", Value::from(exec.output.clone())),
        ("ExecutionID", Value::from(exec.id.clone())),
        ("ScheduledAt", Value::from(exec.scheduled_at.to_string())),
        ("Status", Value::from(exec.status.as_str())),
        ("ExitCode", exec.exit_code.map_or(Value::Null, Value::from)),
        ("Attempt", Value::from(exec.attempt)),
        ("Trigger", serde_json::to_value(exec.trigger).unwrap_or(Value::Null)),
        ("Error", exec.error.clone().map_or(Value::Null, Value::from)),
        ("LagMs", lag.map_or(Value::Null, Value::from)),
        ("Event", Value::from(note.event)),
        ("ExecutionURL", Value::from(execution_url(note))),
        ("Metadata", metadata.unwrap_or_else(|| Value::Object(Default::default()))),
    ]
}

/// The execution's page in the UI (the job's page for a `missed` alert); empty without a UI base.
fn execution_url(note: &Note) -> String {
    if note.ui_base.is_empty() {
        return String::new();
    }
    let job = percent_encode(&note.exec.job_name);
    if note.exec.id.is_empty() {
        return format!("{}/ui/jobs/{job}", note.ui_base);
    }
    format!("{}/ui/jobs/{job}/executions/{}", note.ui_base, percent_encode(&note.exec.id))
}

/// A path segment, percent-encoded where needed (job names may hold characters a URL path cannot).
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'@' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A JSON value as a template value (Dkron's fields are strings, booleans and numbers).
fn template_value(value: serde_json::Value) -> gtmpl::Value {
    match value {
        serde_json::Value::Null => gtmpl::Value::Nil,
        serde_json::Value::Bool(b) => gtmpl::Value::from(b),
        serde_json::Value::Number(n) => {
            n.as_i64().map_or_else(|| gtmpl::Value::from(n.to_string()), gtmpl::Value::from)
        }
        serde_json::Value::String(s) => gtmpl::Value::from(s),
        serde_json::Value::Object(members) => {
            gtmpl::Value::Map(members.into_iter().map(|(k, v)| (k, template_value(v))).collect())
        }
        other => gtmpl::Value::from(other.to_string()),
    }
}

/// A time as Go's `time.Time.String()` prints it in UTC: `2006-01-02 15:04:05.999999999 +0000 UTC` (fraction
/// without trailing zeros, none when zero), which is what Dkron's templates get.
pub fn go_time(t: Timestamp) -> String {
    let utc = t.to_zoned(jiff::tz::TimeZone::UTC);
    let nanos = utc.subsec_nanosecond();
    let fraction = if nanos == 0 { String::new() } else { format!(".{nanos:09}").trim_end_matches('0').to_string() };
    format!("{}{fraction} +0000 UTC", utc.strftime("%Y-%m-%d %H:%M:%S"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_model::{ExecutionStatus, Trigger};

    pub(super) fn finished() -> Execution {
        let mut exec = Execution::decided("backup", "2026-11-29T10:00:00Z".parse().unwrap(), Trigger::Schedule);
        exec.status = ExecutionStatus::Succeeded;
        exec.success = true;
        exec.started_at = Some("2026-11-29T10:00:00.0125Z".parse().unwrap());
        exec.finished_at = Some("2026-11-29T10:00:03Z".parse().unwrap());
        exec.node_name = "a1".into();
        exec.output = "done\n".into();
        exec.exit_code = Some(0);
        exec
    }

    #[test]
    fn a_dkron_payload_renders_with_go_times_and_the_default_is_json() {
        let template = "{{.JobName}} on {{.NodeName}} via {{.ReportingNode}}: {{if .Success}}ok{{else}}failed{{end}} \
                        {{.StartTime}} to {{.FinishedAt}} [{{.Output}}] {{.Status}} lag {{.LagMs}}";
        let hook = Webhook::from_flags("--webhook", Some("http://127.0.0.1:9/h".into()), Some(template.into()), vec![])
            .unwrap()
            .unwrap();
        let exec = finished();
        let note = Note { exec: &exec, event: "success", job: None, reporting_node: "s1", ui_base: "http://k:8080" };
        let body = hook.body(&note).unwrap();
        assert_eq!(
            body,
            "backup on a1 via s1: ok 2026-11-29 10:00:00.0125 +0000 UTC to 2026-11-29 10:00:03 +0000 UTC [done\n] \
             succeeded lag 12"
        );
        let json = Webhook { payload: None, ..hook }.body(&note).unwrap();
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!((json["JobName"].as_str(), json["Success"].as_bool()), (Some("backup"), Some(true)));
        assert_eq!((&json["ExitCode"], json["Event"].as_str()), (&serde_json::json!(0), Some("success")));
        let mut job = Job::empty("backup");
        job.metadata.insert("team".into(), "ops".into());
        let note = Note { job: Some(&job), event: "failure", ..note };
        assert_eq!(render("{{.Event}} {{.Metadata.team}}", &note).unwrap(), "failure ops");
        let url = render("{{.ExecutionURL}}", &note).unwrap();
        assert_eq!(url, format!("http://k:8080/ui/jobs/backup/executions/{}", exec.id));
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        let refused = |endpoint: Option<&str>, payload: Option<&str>, headers: &[&str]| {
            let headers = headers.iter().map(|h| h.to_string()).collect();
            let result = Webhook::from_flags("--webhook", endpoint.map(Into::into), payload.map(Into::into), headers);
            format!("{:#}", result.unwrap_err())
        };
        assert!(refused(Some("http://x/"), Some("{{.JobName"), &[]).starts_with("--webhook-payload:"));
        assert!(refused(Some("not a url"), None, &[]).starts_with("--webhook-endpoint:"));
        assert!(refused(Some("ftp://x/"), None, &[]).contains("not an http or https URL"));
        assert!(refused(Some("http://x/"), None, &["NoColon"]).starts_with("--webhook-headers:"));
        assert!(refused(None, Some("{{.JobName}}"), &[]).contains("need --webhook-endpoint"));
        let ok = Webhook::from_flags("--webhook", Some("https://x/y".into()), None, vec!["X-Token: abc".into()]);
        assert_eq!(ok.unwrap().unwrap().headers, [("X-Token".to_string(), "abc".to_string())]);
    }
}
