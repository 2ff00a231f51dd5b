//! Notifications: Dkron's webhooks, `--webhook-*` (when an execution finishes) and `--pre-webhook-*` (when it
//! starts), and mail to the job's `owner_email` when it finishes (`--mail-*`, see [`mail`]).
//!
//! **Who sends.** The leader, from the responses of the Start and Finish commands it commits (its own runs',
//! agents' reports forwarded to it, the leases it expires), so each execution is notified once across the
//! cluster. A run that starts and finishes within one report batch commits no separate start; its pre-webhook
//! goes out just before its post-webhook. Deliveries wait in the leader's memory only: a leader that dies takes
//! the ones it has not sent with it (at most once, never twice).
//!
//! **Payloads** are Go `text/template`s over Dkron's fields (`JobName`, `ReportingNode`, `StartTime`,
//! `FinishedAt`, `Success`, `NodeName`, `Output`, times printed as Go prints a `time.Time`) and ours
//! (`ExecutionID`, `ScheduledAt`, `Status`, `ExitCode`, `Attempt`, `Trigger`, `Error`, `LagMs`), so a `dkron.yml`
//! payload renders the same. Without a template the body is a JSON document of those fields. A template that does
//! not parse is refused at start, naming the flag.
//!
//! **Delivery never slows a run**: a bounded queue ([`QUEUE_MAX`]; past it a delivery is dropped and counted), at
//! most [`IN_FLIGHT_MAX`] requests at once, each bounded by [`TIMEOUT`] and tried [`ATTEMPTS`] times with a
//! growing pause. Every outcome is counted in `kairos_notifications{kind,outcome}` and a failure is logged with its
//! error.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use kairos_model::{Execution, ExecutionStatus, Timestamp};
use kairos_store::Response;
use kairos_store::StateReader;
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

pub mod mail;
mod rules;

pub use mail::{Mail, MailFlags};

/// Deliveries waiting to be sent; more are dropped (and counted).
const QUEUE_MAX: usize = 10_000;
/// Requests in flight at once.
const IN_FLIGHT_MAX: usize = 16;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Tries per delivery, the pause doubling from [`FIRST_PAUSE`].
const ATTEMPTS: u32 = 3;
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Executions whose pre-webhook went out, remembered so a finish knows whether to send it first.
const PRE_SENT_REMEMBERED: usize = 100_000;

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

    /// The body for `exec`, sent by `reporting_node`: the template rendered, or the default JSON.
    pub fn body(&self, exec: &Execution, reporting_node: &str) -> Result<String, String> {
        match &self.payload {
            Some(template) => render(template, exec, reporting_node),
            None => {
                let fields = fields(exec, reporting_node);
                let object: serde_json::Map<String, serde_json::Value> =
                    fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                Ok(serde_json::Value::Object(object).to_string())
            }
        }
    }

    fn content_type(&self) -> &'static str {
        if self.payload.is_some() { "text/plain; charset=utf-8" } else { "application/json" }
    }
}

/// A payload template rendered over `exec`'s fields.
pub(crate) fn render(template: &str, exec: &Execution, reporting_node: &str) -> Result<String, String> {
    let mut parsed = gtmpl::Template::default();
    parsed.parse(template).map_err(|err| err.to_string())?;
    let context: HashMap<String, gtmpl::Value> =
        fields(exec, reporting_node).into_iter().map(|(k, v)| (k.to_string(), template_value(v))).collect();
    parsed.render(&gtmpl::Context::from(context)).map_err(|err| err.to_string())
}

/// The fields a payload may use.
fn fields(exec: &Execution, reporting_node: &str) -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::Value;
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
    ]
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

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Pre,
    Post,
    Mail,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Pre => "pre_webhook",
            Kind::Post => "webhook",
            Kind::Mail => "mail",
        }
    }
}

struct Delivery {
    kind: Kind,
    what: String,
    body: String,
    /// The message, for [`Kind::Mail`].
    mail: Option<lettre::Message>,
}

/// Mail as the sender holds it: the settings and one pooled transport.
struct MailSender {
    mail: Mail,
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
}

/// The leader's sender of webhooks and mail (inert without any configured).
pub struct Notifier {
    hooks: Arc<Webhooks>,
    mail: Option<Arc<MailSender>>,
    /// Where the jobs' owners and notification rules are read.
    state: StateReader,
    /// The jobs' `notify` rules applied (what was failing, when a failure last notified).
    rules: rules::Rules,
    node_name: String,
    queue: Option<mpsc::Sender<Delivery>>,
    /// Executions whose pre-webhook was queued (bounded, oldest forgotten first).
    pre_sent: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Notifier {
    /// Start the sender task (when any webhook or mail is configured).
    pub fn start(
        hooks: Webhooks,
        mail: Option<Mail>,
        state: StateReader,
        node_name: String,
        http: reqwest::Client,
    ) -> anyhow::Result<Notifier> {
        let hooks = Arc::new(hooks);
        let mail = match mail {
            Some(mail) => Some(Arc::new(MailSender { transport: mail.transport(TIMEOUT)?, mail })),
            None => None,
        };
        let queue = (hooks.post.is_some() || hooks.pre.is_some() || mail.is_some()).then(|| {
            let (tx, rx) = mpsc::channel(QUEUE_MAX);
            tokio::spawn(send_loop(hooks.clone(), mail.clone(), http, rx));
            tx
        });
        let rules = rules::Rules::default();
        Ok(Notifier { hooks, mail, state, rules, node_name, queue, pre_sent: Mutex::new(Default::default()) })
    }

    /// After a command this node committed as leader: a pre-webhook for each execution it started, a
    /// post-webhook (preceded by its pre-webhook if that never went out) for each that finished.
    pub fn after_commit(&self, response: &Response) {
        if self.queue.is_none() {
            return;
        }
        for exec in &response.executions {
            let key = format!("{}/{}", exec.job_name, exec.id);
            let job = self.state.definition(&exec.job_name).ok().flatten();
            let rules = job.as_ref().and_then(|job| job.notify.as_ref());
            match exec.status {
                ExecutionStatus::Running => {
                    if self.hooks.pre.is_some() && rules::Rules::start(rules) && self.remember_pre(&key) {
                        self.enqueue(Kind::Pre, exec);
                    }
                }
                ExecutionStatus::Pending => {}
                _ => {
                    let starts = rules::Rules::start(rules);
                    if self.hooks.pre.is_some() && starts && exec.started_at.is_some() && self.remember_pre(&key) {
                        self.enqueue(Kind::Pre, &as_started(exec));
                    }
                    match self.rules.finish(rules, exec, &self.state, std::time::Instant::now()) {
                        rules::Decision::Notify(_) => {}
                        rules::Decision::NotWanted => continue,
                        rules::Decision::Repeated => {
                            count(Kind::Post, "repeat_suppressed");
                            continue;
                        }
                    }
                    if self.hooks.post.is_some() {
                        self.enqueue(Kind::Post, exec);
                    }
                    if self.mail.is_some() {
                        self.enqueue_mail(exec, job.as_ref().map_or("", |job| job.owner_email.as_str()));
                    }
                }
            }
        }
    }

    /// Note that `key`'s pre-webhook goes out; false if it did already.
    fn remember_pre(&self, key: &str) -> bool {
        let mut pre_sent = self.pre_sent.lock().expect("pre_sent lock");
        let (set, order) = &mut *pre_sent;
        if !set.insert(key.to_string()) {
            return false;
        }
        order.push_back(key.to_string());
        if order.len() > PRE_SENT_REMEMBERED
            && let Some(oldest) = order.pop_front()
        {
            set.remove(&oldest);
        }
        true
    }

    fn enqueue(&self, kind: Kind, exec: &Execution) {
        let Some(queue) = &self.queue else { return };
        let hook = match kind {
            Kind::Pre => self.hooks.pre.as_ref(),
            Kind::Post => self.hooks.post.as_ref(),
            Kind::Mail => None,
        };
        let Some(hook) = hook else { return };
        let what = format!("{} of {}/{}", kind.as_str(), exec.job_name, exec.id);
        let body = match hook.body(exec, &self.node_name) {
            Ok(body) => body,
            Err(err) => {
                warn!("{what}: the payload template failed: {err}");
                count(kind, "template_failed");
                return;
            }
        };
        self.push(Delivery { kind, what, body, mail: None }, queue);
    }

    /// Mail about a finished execution to its job's owners, if it has any.
    fn enqueue_mail(&self, exec: &Execution, owners: &str) {
        let (Some(queue), Some(sender)) = (&self.queue, &self.mail) else { return };
        let what = format!("mail about {}/{}", exec.job_name, exec.id);
        match sender.mail.message(exec, owners, &self.node_name) {
            Ok(Some(message)) => {
                self.push(Delivery { kind: Kind::Mail, what, body: String::new(), mail: Some(message) }, queue)
            }
            Ok(None) => {}
            Err(err) => {
                warn!("{what}: {err}");
                count(Kind::Mail, "template_failed");
            }
        }
    }

    fn push(&self, delivery: Delivery, queue: &mpsc::Sender<Delivery>) {
        let (kind, what) = (delivery.kind, delivery.what.clone());
        if queue.try_send(delivery).is_err() {
            warn!("{what} dropped: {QUEUE_MAX} deliveries are waiting already");
            count(kind, "dropped");
        }
    }
}

/// A finished execution as it was when it started (for a pre-webhook sent late): running, nothing of its end.
fn as_started(exec: &Execution) -> Execution {
    Execution {
        status: ExecutionStatus::Running,
        success: false,
        finished_at: None,
        exit_code: None,
        error: None,
        output: String::new(),
        output_bytes: 0,
        ..exec.clone()
    }
}

fn count(kind: Kind, outcome: &str) {
    let labels = crate::metrics::NotificationLabels { kind: kind.as_str().to_string(), outcome: outcome.to_string() };
    crate::metrics::metrics().notifications.get_or_create(&labels).inc();
}

async fn send_loop(
    hooks: Arc<Webhooks>,
    mail: Option<Arc<MailSender>>,
    http: reqwest::Client,
    mut queue: mpsc::Receiver<Delivery>,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    while let Some(delivery) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let hook = match delivery.kind {
            Kind::Pre => hooks.pre.clone(),
            Kind::Post => hooks.post.clone(),
            Kind::Mail => {
                let Some(sender) = mail.clone() else { continue };
                tokio::spawn(async move {
                    deliver_mail(&sender, &delivery).await;
                    drop(permit);
                });
                continue;
            }
        };
        let Some(hook) = hook else { continue };
        let http = http.clone();
        tokio::spawn(async move {
            deliver(&http, &hook, &delivery).await;
            drop(permit);
        });
    }
}

async fn deliver_mail(sender: &MailSender, delivery: &Delivery) {
    let Some(message) = &delivery.mail else { return };
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=ATTEMPTS {
        let failure = match Mail::send(&sender.transport, message.clone()).await {
            Ok(()) => {
                count(Kind::Mail, "sent");
                return;
            }
            Err(err) => format!("{}:{}: {err}", sender.mail.host, sender.mail.port),
        };
        if attempt == ATTEMPTS {
            warn!("{} not delivered after {ATTEMPTS} tries: {failure}", delivery.what);
            count(Kind::Mail, "failed");
            return;
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

async fn deliver(http: &reqwest::Client, hook: &Webhook, delivery: &Delivery) {
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=ATTEMPTS {
        let mut request = http
            .post(&hook.endpoint)
            .timeout(TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, hook.content_type())
            .body(delivery.body.clone());
        for (name, value) in &hook.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let failure = match request.send().await {
            Ok(response) if response.status().is_success() => {
                count(delivery.kind, "sent");
                return;
            }
            Ok(response) => format!("{} answered {}", hook.endpoint, response.status()),
            Err(err) => format!("{}: {err}", hook.endpoint),
        };
        if attempt == ATTEMPTS {
            warn!("{} not delivered after {ATTEMPTS} tries: {failure}", delivery.what);
            count(delivery.kind, "failed");
            return;
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_model::Trigger;

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
        let body = hook.body(&finished(), "s1").unwrap();
        assert_eq!(
            body,
            "backup on a1 via s1: ok 2026-11-29 10:00:00.0125 +0000 UTC to 2026-11-29 10:00:03 +0000 UTC [done\n] \
             succeeded lag 12"
        );
        let json = Webhook { payload: None, ..hook }.body(&finished(), "s1").unwrap();
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!((json["JobName"].as_str(), json["Success"].as_bool()), (Some("backup"), Some(true)));
        assert_eq!(json["ExitCode"], 0);
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
