//! Jobs: what runs, when, where and under which policies.
//!
//! [`Job`] is the record the store keeps and the API returns; its JSON is Dkron's job, field for field, plus our
//! additions (`catch_up`, `catch_up_window`, `retry_backoff`, `retry_backoff_max`, `executions_retained`,
//! `created_at`, `updated_at`). What a client may send is a [`JobInput`] (see `input`); [`Job::from_input`] and
//! [`Job::apply`] turn it into a job and validate every field, each error naming its field exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_schedule::jiff::Timestamp;
use kairos_schedule::{Schedule, ScheduleError, parse_duration};
use serde::{Deserialize, Serialize};

use crate::{FieldError, JobInput};

/// Longest accepted job name; names are keys in the store and parts of file paths.
pub const NAME_LEN_MAX: usize = 200;
/// Bounds on user-supplied maps and strings, so one request cannot bloat every replica.
pub const MAP_ENTRIES_MAX: usize = 256;
pub const TEXT_LEN_MAX: usize = 64 * 1024;
pub const RETRIES_MAX: u32 = 100;
pub const EXECUTIONS_RETAINED_MAX: u32 = 100_000;
/// Default number of finished executions kept per job when neither the job nor the server says otherwise.
pub const EXECUTIONS_RETAINED_DEFAULT: u32 = 100;

/// What happens when a slot fires while an earlier execution of the same job is still active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// Run the new execution alongside the old one.
    #[default]
    Allow,
    /// Record the new slot as `skipped`.
    Forbid,
    /// Cancel the running execution and start the new one.
    Replace,
}

/// What happens to a run that finds its node full: `--max-running` runs running and `--max-queued` waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnOverload {
    /// Record the run `skipped`, with the reason.
    #[default]
    Skip,
    /// Record that attempt `skipped` and retry it like a failed one: after the job's backoff, within `retries`,
    /// on another matching node when there is one.
    Retry,
}

/// What happens to slots that fell due while no server was running the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Drop them.
    Skip,
    /// Run the most recent missed slot once.
    #[default]
    Latest,
    /// Run every missed slot within `catch_up_window`.
    All,
}

/// On how many nodes each run of a job happens, from its tags (Dkron's semantics, except for untagged jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// One eligible node: a job without tags, or one whose smallest tag count is 1.
    One,
    /// This many distinct matching nodes (or every matching node, if fewer match): the smallest `value:count`.
    Count(u32),
    /// Every matching node: tags without a count.
    All,
}

/// A job tag's value without its count: `"web:2"` → (`"web"`, `Some(2)`), `"web"` → (`"web"`, `None`). Only a
/// decimal suffix is a count, so a value that merely contains a colon (`"eu:x"`) is kept whole.
pub fn tag_value(wanted: &str) -> (&str, Option<u32>) {
    match wanted.rsplit_once(':') {
        Some((value, count)) if !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()) => {
            (value, Some(count.parse().unwrap_or(u32::MAX)))
        }
        _ => (wanted, None),
    }
}

/// What a job's notifications are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// An execution started (the pre-webhook).
    Start,
    /// An execution succeeded.
    Success,
    /// An execution failed (a timeout is a failure).
    Failure,
    /// An execution succeeded after the job's previous one had failed, or after a `missed` alert (a success too).
    Recovery,
    /// An execution was lost (its node went away while it ran).
    Lost,
    /// The job has not succeeded for `notify.alert_if_not_succeeded_within` (whatever the reason: failing, no node
    /// to run it, disabled, not firing).
    Missed,
}

impl NotifyOn {
    pub const ALL: [NotifyOn; 6] =
        [NotifyOn::Start, NotifyOn::Success, NotifyOn::Failure, NotifyOn::Recovery, NotifyOn::Lost, NotifyOn::Missed];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Start => "start",
            NotifyOn::Success => "success",
            NotifyOn::Failure => "failure",
            NotifyOn::Recovery => "recovery",
            NotifyOn::Lost => "lost",
            NotifyOn::Missed => "missed",
        }
    }
}

/// A webhook of the job's own, beyond the node's `--webhook-endpoint`: a Slack, Teams or Discord incoming webhook
/// works through its payload template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWebhook {
    pub url: String,
    /// A Go `text/template` over the same fields as `--webhook-payload`; without one, the JSON document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A job's notification rules: `{"on": ["failure", "recovery"], "repeat_after": "1h", "emails": [...],
/// "webhooks": [...], "alert_if_not_succeeded_within": "2h"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// The events that notify; the others do not. Absent: every start and finish (as in Dkron), and `missed` and
    /// its recovery when `alert_if_not_succeeded_within` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<NotifyOn>>,
    /// While a job keeps failing, a failure notifies again only this long after the last one that did (a job failing
    /// every second must not send 3,600 mails an hour); a recovery notifies at once. Default 1h; `0s` notifies
    /// every failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_after: Option<String>,
    /// Mail recipients beyond the job's `owner_email`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<String>,
    /// Webhooks of this job, sent for every event the rules want.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<JobWebhook>,
    /// Raise one `missed` alert when the job has gone this long without a success (counted from its last success,
    /// or from its creation), and a `recovery` when it succeeds again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_if_not_succeeded_within: Option<String>,
}

/// While a job keeps failing, failures notify at most this often unless `notify.repeat_after` says otherwise.
pub const NOTIFY_REPEAT_AFTER_DEFAULT: Duration = Duration::from_secs(3600);
/// Extra recipients and webhooks a job may name.
pub const NOTIFY_TARGETS_MAX: usize = 16;
/// The shortest `alert_if_not_succeeded_within` (the leader checks every second).
pub const ALERT_WITHIN_MIN: Duration = Duration::from_secs(1);

const NOTIFY_MEMBERS: [&str; 5] = ["on", "repeat_after", "emails", "webhooks", "alert_if_not_succeeded_within"];

impl Notify {
    /// Read from the job's `notify` member; every mistake names its place (`notify.on[1]`).
    pub fn from_json(members: &BTreeMap<String, serde_json::Value>) -> Result<Notify, FieldError> {
        if let Some(key) = members.keys().find(|k| !NOTIFY_MEMBERS.contains(&k.as_str())) {
            let known = NOTIFY_MEMBERS.join(", ");
            return Err(FieldError::new(format!("notify.{key}"), format!("unknown member (known: {known})")));
        }
        let known = NotifyOn::ALL.map(NotifyOn::as_str).join(", ");
        let on = match members.get("on") {
            Some(serde_json::Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let text = item.as_str().unwrap_or_default();
                        NotifyOn::ALL.into_iter().find(|e| e.as_str() == text).ok_or_else(|| {
                            FieldError::new(format!("notify.on[{i}]"), format!("{item} is not one of {known}"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None | Some(serde_json::Value::Null) => None,
            Some(other) => {
                return Err(FieldError::new("notify.on", format!("expected a list of events ({known}), got {other}")));
            }
        };
        let repeat_after = duration_member(members, "repeat_after", Duration::ZERO)?;
        let alert_if_not_succeeded_within =
            duration_member(members, "alert_if_not_succeeded_within", ALERT_WITHIN_MIN)?;
        let emails = match members.get("emails") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item.as_str().map(str::trim) {
                    Some(address) if is_mail_address(address) => Ok(address.to_string()),
                    _ => Err(FieldError::new(format!("notify.emails[{i}]"), format!("{item} is not a mail address"))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(FieldError::new(
                    "notify.emails",
                    format!("expected a list of mail addresses, got {other}"),
                ));
            }
        };
        let webhooks = match members.get("webhooks") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| job_webhook(&format!("notify.webhooks[{i}]"), item))
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(FieldError::new("notify.webhooks", format!("expected a list of webhooks, got {other}")));
            }
        };
        for (field, len) in [("notify.emails", emails.len()), ("notify.webhooks", webhooks.len())] {
            if len > NOTIFY_TARGETS_MAX {
                return Err(FieldError::new(field, format!("at most {NOTIFY_TARGETS_MAX} entries")));
            }
        }
        Ok(Notify { on, repeat_after, emails, webhooks, alert_if_not_succeeded_within })
    }

    /// Whether `event` notifies.
    pub fn wants(&self, event: NotifyOn) -> bool {
        match &self.on {
            Some(on) => on.contains(&event),
            None => event != NotifyOn::Missed || self.alert_if_not_succeeded_within.is_some(),
        }
    }

    /// How long repeated failures stay quiet.
    pub fn repeat_after(&self) -> Duration {
        self.repeat_after
            .as_deref()
            .and_then(|text| kairos_schedule::parse_duration(text).ok())
            .unwrap_or(NOTIFY_REPEAT_AFTER_DEFAULT)
    }

    /// After how long without a success the job raises a `missed` alert, if it asks for one.
    pub fn alert_within(&self) -> Option<Duration> {
        self.alert_if_not_succeeded_within.as_deref().and_then(|text| kairos_schedule::parse_duration(text).ok())
    }
}

/// A duration member of `notify` (`"1h"`), at least `min`.
fn duration_member(
    members: &BTreeMap<String, serde_json::Value>,
    key: &str,
    min: Duration,
) -> Result<Option<String>, FieldError> {
    let field = format!("notify.{key}");
    match members.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => {
            let duration = kairos_schedule::parse_duration(text).map_err(|e| FieldError::new(&field, e.to_string()))?;
            if duration < min {
                return Err(FieldError::new(&field, format!("must be at least {min:?}")));
            }
            Ok(Some(text.clone()))
        }
        Some(other) => Err(FieldError::new(field, format!("expected a duration such as \"1h\", got {other}"))),
    }
}

/// `local@domain`, roughly: what a mail server would take as a recipient.
fn is_mail_address(text: &str) -> bool {
    let address = text.rsplit_once('<').map_or(text, |(_, rest)| rest.trim_end_matches('>'));
    address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !address.chars().any(|c| c.is_whitespace() || c == ',')
    })
}

fn job_webhook(field: &str, item: &serde_json::Value) -> Result<JobWebhook, FieldError> {
    let serde_json::Value::Object(members) = item else {
        return Err(FieldError::new(field, format!("expected an object with a url, got {item}")));
    };
    if let Some(key) = members.keys().find(|k| !["url", "payload", "headers"].contains(&k.as_str())) {
        return Err(FieldError::new(format!("{field}.{key}"), "unknown member (known: url, payload, headers)"));
    }
    let url = match members.get("url").and_then(|u| u.as_str()).map(str::trim) {
        Some(url) if (url.starts_with("http://") || url.starts_with("https://")) && url.len() > "https://".len() => {
            url.to_string()
        }
        Some(url) => return Err(FieldError::new(format!("{field}.url"), format!("'{url}' is not an http(s) URL"))),
        None => return Err(FieldError::new(format!("{field}.url"), "required: the URL to POST to")),
    };
    let payload = match members.get("payload") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) => {
            gtmpl::Template::default()
                .parse(text.as_str())
                .map_err(|err| FieldError::new(format!("{field}.payload"), format!("not a Go template: {err}")))?;
            Some(text.clone())
        }
        Some(other) => {
            return Err(FieldError::new(format!("{field}.payload"), format!("expected a template, got {other}")));
        }
    };
    let mut headers = BTreeMap::new();
    match members.get("headers") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(map)) => {
            for (name, value) in map {
                let valid_name =
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                let value = value.as_str().filter(|v| !v.chars().any(char::is_control));
                match (valid_name, value) {
                    (true, Some(value)) => headers.insert(name.clone(), value.to_string()),
                    _ => {
                        return Err(FieldError::new(
                            format!("{field}.headers.{name}"),
                            "not a header name and text value",
                        ));
                    }
                };
            }
        }
        Some(other) => {
            return Err(FieldError::new(format!("{field}.headers"), format!("expected an object, got {other}")));
        }
    }
    Ok(JobWebhook { url, payload, headers })
}

/// A job as stored and as served by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub displayname: String,
    pub schedule: String,
    pub timezone: String,
    pub owner: String,
    pub owner_email: String,
    pub success_count: u64,
    pub error_count: u64,
    pub last_success: Option<Timestamp>,
    pub last_error: Option<Timestamp>,
    pub disabled: bool,
    pub tags: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub retries: u32,
    pub dependent_jobs: Vec<String>,
    pub parent_job: String,
    pub processors: BTreeMap<String, serde_json::Value>,
    pub concurrency: Concurrency,
    /// Absent in jobs stored before it existed.
    #[serde(default)]
    pub on_overload: OnOverload,
    pub executor: String,
    pub executor_config: BTreeMap<String, String>,
    /// Derived: `success`, `failed`, `running`, or empty before the first run (Dkron's values).
    pub status: String,
    /// Derived at read time from the schedule and the job's cursor.
    pub next: Option<Timestamp>,
    pub ephemeral: bool,
    pub starts_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub catch_up: CatchUp,
    pub catch_up_window: String,
    pub retry_backoff: String,
    pub retry_backoff_max: String,
    /// Finished executions kept for this job; `None` means the server's default.
    pub executions_retained: Option<u32>,
    /// When the job's notifications (webhooks, mail) go out; `None`: on every start and finish, as in Dkron.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
}

impl Job {
    /// A job with every field at its default; `name` still has to be set and validated.
    pub fn empty(name: &str) -> Job {
        Job {
            id: name.to_string(),
            name: name.to_string(),
            displayname: String::new(),
            schedule: String::new(),
            timezone: String::new(),
            owner: String::new(),
            owner_email: String::new(),
            success_count: 0,
            error_count: 0,
            last_success: None,
            last_error: None,
            disabled: false,
            tags: BTreeMap::new(),
            metadata: BTreeMap::new(),
            retries: 0,
            dependent_jobs: Vec::new(),
            parent_job: String::new(),
            processors: BTreeMap::new(),
            concurrency: Concurrency::Allow,
            on_overload: OnOverload::Skip,
            executor: String::new(),
            executor_config: BTreeMap::new(),
            status: String::new(),
            next: None,
            ephemeral: false,
            starts_at: None,
            expires_at: None,
            catch_up: CatchUp::Latest,
            catch_up_window: "1h".to_string(),
            retry_backoff: "1s".to_string(),
            retry_backoff_max: "5m".to_string(),
            executions_retained: None,
            notify: None,
            created_at: None,
            updated_at: None,
        }
    }

    /// Build a new job from a client's input (defaults fill what is missing), then validate it.
    pub fn from_input(input: JobInput) -> Result<Job, FieldError> {
        let name = input.name.clone().unwrap_or_default();
        validate_name(&name)?;
        let mut job = Job::empty(&name);
        job.apply(input)?;
        Ok(job)
    }

    /// Overwrite the fields present in `input` (PATCH semantics) and validate the result. The name cannot change,
    /// and a schedule the input sends must fire again after now.
    pub fn apply(&mut self, input: JobInput) -> Result<(), FieldError> {
        self.apply_at(input, Timestamp::now())
    }

    /// [`Job::apply`] with the clock read by the caller. A schedule the client sends must fire after `now`;
    /// a stored schedule the input leaves alone is not judged again (see [`Job::check_fires_after`]).
    fn apply_at(&mut self, input: JobInput, now: Timestamp) -> Result<(), FieldError> {
        let schedule_sent = input.schedule.is_some();
        self.merge(input)?;
        self.validate()?;
        if schedule_sent {
            self.check_fires_after(now)?;
        }
        Ok(())
    }

    fn merge(&mut self, input: JobInput) -> Result<(), FieldError> {
        if let Some(name) = &input.name
            && name != &self.name
        {
            return Err(FieldError::new("name", format!("cannot rename job '{}' to '{name}'", self.name)));
        }
        set(&mut self.displayname, input.displayname);
        set(&mut self.schedule, input.schedule.map(|s| s.trim().to_string()));
        set(&mut self.timezone, input.timezone);
        set(&mut self.owner, input.owner);
        set(&mut self.owner_email, input.owner_email);
        set(&mut self.disabled, input.disabled);
        set(&mut self.tags, input.tags);
        set(&mut self.metadata, input.metadata);
        set(&mut self.retries, input.retries);
        set(&mut self.parent_job, input.parent_job);
        set(&mut self.processors, input.processors);
        if let Some(c) = input.concurrency {
            self.concurrency = parse_concurrency(&c)?;
        }
        if let Some(policy) = input.on_overload {
            self.on_overload = parse_on_overload(&policy)?;
        }
        set(&mut self.executor, input.executor);
        set(&mut self.executor_config, input.executor_config);
        set(&mut self.ephemeral, input.ephemeral);
        if input.starts_at.is_some() {
            self.starts_at = input.starts_at;
        }
        if input.expires_at.is_some() {
            self.expires_at = input.expires_at;
        }
        if let Some(c) = input.catch_up {
            self.catch_up = parse_catch_up(&c)?;
        }
        set(&mut self.catch_up_window, input.catch_up_window);
        set(&mut self.retry_backoff, input.retry_backoff);
        set(&mut self.retry_backoff_max, input.retry_backoff_max);
        if input.executions_retained.is_some() {
            self.executions_retained = input.executions_retained;
        }
        if let Some(notify) = input.notify {
            self.notify = Some(Notify::from_json(&notify)?);
        }
        Ok(())
    }

    /// Refuses a schedule that has no fire time after `now`, like one that has none at all (`0 0 30 2 *`, which
    /// the schedule parser refuses): `* * * * * * 1999` or a year list that has run out would store a job
    /// that never runs, and that is always a mistake when the schedule is being written.
    ///
    /// Two schedules are exempt by design. `@manually` never fires by itself: that is its point. An `@at` in
    /// the past is accepted as before: a one-shot job is kept after its run for inspection, and a client that
    /// reads it and sends it back (read-modify-write, as Dkron's clients do) or restores a backup that holds
    /// it must not be refused; its `next` is `null`, which says plainly that it will not run again. The check
    /// only applies to a schedule the client sends, so a stored job whose years ran out can still be patched
    /// (disabled, re-owned) without touching it.
    fn check_fires_after(&self, now: Timestamp) -> Result<(), FieldError> {
        let Some(schedule) = self.parsed_schedule()? else {
            return Ok(());
        };
        if schedule.is_manual() || schedule.is_one_shot() || schedule.next_after(now).is_some() {
            return Ok(());
        }
        Err(FieldError::new(
            "schedule",
            format!("'{}' has no fire time after now ({now}), so the job would never run", self.schedule),
        ))
    }

    /// Check every field a client controls. Executor configs are checked by the agent's executors, which
    /// know their keys; this checks that an executor is named.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_name(&self.name)?;
        if self.parent_job == self.name {
            return Err(FieldError::new("parent_job", "a job cannot be its own parent"));
        }
        if !self.parent_job.is_empty() {
            validate_name(&self.parent_job).map_err(|e| FieldError::new("parent_job", e.message))?;
        }
        if !self.timezone.is_empty() {
            kairos_schedule::parse_timezone(&self.timezone).map_err(schedule_error)?;
        }
        if self.schedule.is_empty() {
            if self.parent_job.is_empty() {
                return Err(FieldError::new("schedule", "required unless parent_job is set"));
            }
        } else {
            self.parsed_schedule()?;
        }
        if self.executor.is_empty() {
            return Err(FieldError::new(
                "executor",
                "required (shell, http, nats, rabbitmq, redis, kafka, sql, grpc or a plugin's name)",
            ));
        }
        if self.retries > RETRIES_MAX {
            return Err(FieldError::new("retries", format!("must be at most {RETRIES_MAX}")));
        }
        if self.on_overload == OnOverload::Retry && self.retries == 0 {
            return Err(FieldError::new(
                "on_overload",
                "'retry' retries a run its node was too busy for within the job's retries, which are 0: set \
                 retries too",
            ));
        }
        if let Some(n) = self.executions_retained
            && !(1..=EXECUTIONS_RETAINED_MAX).contains(&n)
        {
            return Err(FieldError::new(
                "executions_retained",
                format!("must be between 1 and {EXECUTIONS_RETAINED_MAX}"),
            ));
        }
        if let (Some(start), Some(end)) = (self.starts_at, self.expires_at)
            && end <= start
        {
            return Err(FieldError::new("expires_at", "must be after starts_at"));
        }
        duration_field("catch_up_window", &self.catch_up_window)?;
        let backoff = duration_field("retry_backoff", &self.retry_backoff)?;
        let backoff_max = duration_field("retry_backoff_max", &self.retry_backoff_max)?;
        if backoff_max < backoff {
            return Err(FieldError::new("retry_backoff_max", "must not be less than retry_backoff"));
        }
        crate::processor::parse(&self.processors)?;
        for (key, value) in &self.tags {
            if key.is_empty() {
                return Err(FieldError::new("tags", "a tag key must not be empty"));
            }
            if tag_value(value).1 == Some(0) {
                return Err(FieldError::new(format!("tags.{key}"), "the count after ':' must be at least 1"));
            }
        }
        self.validate_sizes()
    }

    fn validate_sizes(&self) -> Result<(), FieldError> {
        for (field, map) in
            [("tags", &self.tags), ("metadata", &self.metadata), ("executor_config", &self.executor_config)]
        {
            if map.len() > MAP_ENTRIES_MAX {
                return Err(FieldError::new(field, format!("at most {MAP_ENTRIES_MAX} entries")));
            }
            if let Some((k, _)) = map.iter().find(|(k, v)| k.len() + v.len() > TEXT_LEN_MAX) {
                return Err(FieldError::new(format!("{field}.{k}"), format!("longer than {TEXT_LEN_MAX} bytes")));
            }
        }
        if serde_json::to_string(&self.processors).map_or(0, |json| json.len()) > TEXT_LEN_MAX {
            return Err(FieldError::new("processors", format!("longer than {TEXT_LEN_MAX} bytes")));
        }
        for (field, text) in [
            ("displayname", &self.displayname),
            ("owner", &self.owner),
            ("owner_email", &self.owner_email),
            ("schedule", &self.schedule),
        ] {
            if text.len() > TEXT_LEN_MAX {
                return Err(FieldError::new(field, format!("longer than {TEXT_LEN_MAX} bytes")));
            }
        }
        Ok(())
    }

    /// On how many nodes each run happens: untagged → one; tags → every matching node, or the smallest count.
    pub fn targets(&self) -> Targets {
        if self.tags.is_empty() {
            return Targets::One;
        }
        match self.tags.values().filter_map(|v| tag_value(v).1).min() {
            None => Targets::All,
            Some(1) => Targets::One,
            Some(n) => Targets::Count(n),
        }
    }

    /// The job's schedule, parsed in its time zone; `Ok(None)` for a job that only runs as a child.
    pub fn parsed_schedule(&self) -> Result<Option<Schedule>, FieldError> {
        if self.schedule.is_empty() {
            return Ok(None);
        }
        let tz = (!self.timezone.is_empty()).then_some(self.timezone.as_str());
        Schedule::parse(&self.schedule, tz, &self.name).map(Some).map_err(schedule_error)
    }

    pub fn catch_up_window(&self) -> Duration {
        parse_duration(&self.catch_up_window).unwrap_or(Duration::from_secs(3600))
    }

    pub fn retry_backoff(&self) -> Duration {
        parse_duration(&self.retry_backoff).unwrap_or(Duration::from_secs(1))
    }

    pub fn retry_backoff_max(&self) -> Duration {
        parse_duration(&self.retry_backoff_max).unwrap_or(Duration::from_secs(300))
    }

    /// The backoff before retry number `retry` (1 for the first retry): doubling from `retry_backoff`, capped.
    /// Jitter is added by the caller, which has a random source; this stays deterministic.
    pub fn backoff_before_retry(&self, retry: u32) -> Duration {
        let base = self.retry_backoff();
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        base.checked_mul(factor).unwrap_or(Duration::MAX).min(self.retry_backoff_max())
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn duration_field(field: &str, text: &str) -> Result<Duration, FieldError> {
    parse_duration(text).map_err(|e| FieldError::new(field, e.problem()))
}

/// A schedule or time zone error as a field error. The schedule crate's messages start with their field
/// (`schedule: …`); the field error is built from the parts, so it names the field once, not `schedule: schedule:`.
fn schedule_error(error: ScheduleError) -> FieldError {
    FieldError::new(error.field(), error.problem())
}

/// Job names are store keys, URL segments and directory names: lowercase letters, digits, `_` and `-`.
pub fn validate_name(name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::new("name", "required"));
    }
    if name.len() > NAME_LEN_MAX {
        return Err(FieldError::new("name", format!("longer than {NAME_LEN_MAX} characters")));
    }
    if let Some(c) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-')) {
        return Err(FieldError::new(
            "name",
            format!("illegal character '{c}' (use lowercase letters, digits, '_' and '-')"),
        ));
    }
    Ok(())
}

pub fn parse_concurrency(text: &str) -> Result<Concurrency, FieldError> {
    match text {
        "" | "allow" => Ok(Concurrency::Allow),
        "forbid" => Ok(Concurrency::Forbid),
        "replace" => Ok(Concurrency::Replace),
        other => Err(FieldError::new("concurrency", format!("'{other}' is not one of allow, forbid, replace"))),
    }
}

pub fn parse_on_overload(text: &str) -> Result<OnOverload, FieldError> {
    match text {
        "" | "skip" => Ok(OnOverload::Skip),
        "retry" => Ok(OnOverload::Retry),
        other => Err(FieldError::new("on_overload", format!("'{other}' is not one of skip, retry"))),
    }
}

pub fn parse_catch_up(text: &str) -> Result<CatchUp, FieldError> {
    match text {
        "skip" => Ok(CatchUp::Skip),
        "" | "latest" => Ok(CatchUp::Latest),
        "all" => Ok(CatchUp::All),
        other => Err(FieldError::new("catch_up", format!("'{other}' is not one of skip, latest, all"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_decide_how_many_nodes_run_a_slot() {
        let with_tags = |pairs: &[(&str, &str)]| {
            let mut job = Job::empty("j");
            job.tags = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            job
        };
        assert_eq!(with_tags(&[]).targets(), Targets::One);
        assert_eq!(with_tags(&[("role", "web")]).targets(), Targets::All);
        assert_eq!(with_tags(&[("role", "web:1")]).targets(), Targets::One);
        assert_eq!(with_tags(&[("role", "web:3"), ("zone", "eu:2")]).targets(), Targets::Count(2));
        assert_eq!(with_tags(&[("role", "web:3"), ("zone", "eu")]).targets(), Targets::Count(3));
        assert_eq!(with_tags(&[("zone", "eu:x")]).targets(), Targets::All, "not a count: part of the value");
        assert_eq!(tag_value("eu:x"), ("eu:x", None));
        assert_eq!(tag_value("web:12"), ("web", Some(12)));
        assert_eq!(tag_value("a:b:2"), ("a:b", Some(2)));
        assert_eq!(tag_value("web:"), ("web:", None));
    }

    #[test]
    fn a_zero_count_or_an_empty_tag_key_is_refused() {
        let zero = input(r#"{"name":"j","schedule":"@every 1s","executor":"shell","tags":{"role":"web:0"}}"#);
        let err = zero.unwrap_err();
        assert_eq!((err.field.as_str(), err.message.as_str()), ("tags.role", "the count after ':' must be at least 1"));
        let empty = input(r#"{"name":"j","schedule":"@every 1s","executor":"shell","tags":{"":"web"}}"#);
        assert_eq!(empty.unwrap_err().field, "tags");
    }

    #[test]
    fn processors_are_checked_with_the_job() {
        let unknown = input(r#"{"name":"j","schedule":"@every 1s","executor":"shell","processors":{"foo":{}}}"#);
        assert_eq!(unknown.unwrap_err().to_string(), "processors.foo: unknown processor; known: files, log, syslog");
        let files = r#"{"name":"j","schedule":"@every 1s","executor":"shell","processors":{"files":{"log_dir":1}}}"#;
        assert_eq!(input(files).unwrap_err().field, "processors.files.log_dir");
        let fine = r#"{"name":"j","schedule":"@every 1s","executor":"shell","processors":{"log":{"forward":"true"}}}"#;
        assert_eq!(input(fine).unwrap().processors["log"], serde_json::json!({"forward": "true"}), "stored as sent");
    }

    fn input(json: &str) -> Result<Job, FieldError> {
        Job::from_input(JobInput::from_json(json.as_bytes())?)
    }

    #[test]
    fn dkron_job_json_is_accepted_with_defaults() {
        let job = input(
            r#"{"name":"job1","schedule":"@every 10s","executor":"shell",
                "executor_config":{"command":"echo hi"},"tags":{"role":"web"},"concurrency":"forbid",
                "disabled":false,"retries":2,"next":"0001-01-01T00:00:00Z","status":"","success_count":0,
                "dependent_jobs":null,"processors":{},"last_success":null,"id":"job1"}"#,
        )
        .unwrap();
        assert_eq!(job.name, "job1");
        assert_eq!(job.concurrency, Concurrency::Forbid);
        assert_eq!(job.catch_up, CatchUp::Latest);
        assert_eq!(job.retries, 2);
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let err = input(r#"{"name":"a","schedule":"@daily","executor":"shell","schedul":"x"}"#).unwrap_err();
        assert_eq!(err.field, "schedul");
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (r#"{"schedule":"@daily","executor":"shell"}"#, "name"),
            (r#"{"name":"Bad","schedule":"@daily","executor":"shell"}"#, "name"),
            (r#"{"name":"a","executor":"shell"}"#, "schedule"),
            (r#"{"name":"a","schedule":"61 * * * * *","executor":"shell"}"#, "schedule"),
            (r#"{"name":"a","schedule":"@daily","executor":"shell","timezone":"Mars/Base"}"#, "timezone"),
            (r#"{"name":"a","schedule":"@daily"}"#, "executor"),
            (r#"{"name":"a","schedule":"@daily","executor":"shell","concurrency":"sometimes"}"#, "concurrency"),
            (r#"{"name":"a","schedule":"@daily","executor":"shell","catch_up":"maybe"}"#, "catch_up"),
            (r#"{"name":"a","schedule":"@daily","executor":"shell","on_overload":"wait"}"#, "on_overload"),
            (r#"{"name":"a","schedule":"@daily","executor":"shell","on_overload":"retry"}"#, "on_overload"),
            (r#"{"name":"a","schedule":"@daily","executor":"shell","catch_up_window":"soon"}"#, "catch_up_window"),
            (
                r#"{"name":"a","schedule":"@daily","executor":"shell","retry_backoff":"10s","retry_backoff_max":"1s"}"#,
                "retry_backoff_max",
            ),
            (r#"{"name":"a","schedule":"@daily","executor":"shell","parent_job":"a"}"#, "parent_job"),
            (r#"{"name":"a","schedule":"@daily","executor":"shell","retries":1000}"#, "retries"),
            (r#"{"name":"a","schedule":"@daily","executor":"shell","executions_retained":0}"#, "executions_retained"),
            (
                r#"{"name":"a","schedule":"@daily","executor":"shell","starts_at":"2026-01-02T00:00:00Z","expires_at":"2026-01-01T00:00:00Z"}"#,
                "expires_at",
            ),
            (r#"{"name":"a","schedule":"@daily","executor":"shell","retries":"x"}"#, "retries"),
            (r#"{"name":"a","schedule":"* * * * * * 1999","executor":"shell"}"#, "schedule"),
        ];
        for (json, field) in cases {
            let err = input(json).expect_err(json);
            assert_eq!(err.field, field, "{json}: {err}");
        }
    }

    /// A job with `extra` members added to a valid shell job, or the full error text.
    fn job_with(extra: &str) -> Result<Job, String> {
        input(&format!(r#"{{"name":"a","executor":"shell",{extra}}}"#)).map_err(|e| e.to_string())
    }

    #[test]
    fn schedule_timezone_and_duration_errors_name_their_field_once() {
        let cases = [
            (
                r#""schedule":"@daily","timezone":"Mars/Base""#,
                "timezone: unknown time zone 'Mars/Base'; use an IANA name such as 'Europe/Berlin', \
                 'America/New_York' or 'UTC'",
            ),
            (
                r#""schedule":"@daily","timezone":"Local""#,
                "timezone: 'Local' means each server's own zone, so servers could disagree on when a job fires; \
                 use an IANA name such as 'Europe/Berlin' or 'UTC'",
            ),
            (r#""schedule":"61 * * * * *""#, "schedule: field 1 (seconds) value '61' is out of range 0-59"),
            (r#""schedule":"@every 1s 2s""#, "schedule: @every duration '1s 2s' "),
            (
                r#""schedule":"CRON_TZ=Mars/Base 0 * * * *""#,
                "schedule: unknown time zone 'Mars/Base' in the schedule's",
            ),
            (r#""schedule":"@daily","catch_up_window":"soon""#, "catch_up_window: 'soon' is not a duration"),
            (r#""schedule":"@daily","retry_backoff":"-1s""#, "retry_backoff: '-1s' is negative"),
            (r#""schedule":"@daily","retry_backoff_max":"1x""#, "retry_backoff_max: '1x' "),
        ];
        for (extra, wanted) in cases {
            let message = job_with(extra).expect_err(extra);
            assert!(message.starts_with(wanted), "{extra}:\n  wanted {wanted:?}\n     got {message:?}");
            let field = wanted.split(':').next().unwrap_or_default();
            for name in ["schedule", "timezone", "duration", field] {
                let doubled = format!("{field}: {name}:");
                assert!(!message.contains(&doubled), "{extra}: {message}");
            }
        }
    }

    #[test]
    fn a_schedule_that_never_fires_again_is_refused_like_one_that_never_fires() {
        let past_year = job_with(r#""schedule":"* * * * * * 1999""#).unwrap_err();
        assert!(past_year.starts_with("schedule: '* * * * * * 1999' has no fire time after now ("), "{past_year}");
        assert!(past_year.ends_with("), so the job would never run"), "{past_year}");
        let never = job_with(r#""schedule":"0 0 30 2 *""#).unwrap_err();
        assert!(never.starts_with("schedule: field 3 (day-of-month) value '30' never occurs"), "{never}");
    }

    #[test]
    fn whether_a_schedule_fires_again_is_judged_at_the_time_it_is_sent() {
        let sent = |now: &str| {
            let input = JobInput {
                schedule: Some("0 0 12 1 1 * 2030".into()),
                executor: Some("shell".into()),
                ..Default::default()
            };
            Job::empty("a").apply_at(input, now.parse().unwrap())
        };
        assert_eq!(sent("2029-06-01T00:00:00Z"), Ok(()));
        assert_eq!(sent("2030-01-01T11:59:59Z"), Ok(()));
        let err = sent("2030-01-01T12:00:00Z").unwrap_err();
        assert_eq!(
            err.to_string(),
            "schedule: '0 0 12 1 1 * 2030' has no fire time after now (2030-01-01T12:00:00Z), so the job would \
             never run"
        );
        // A stored job whose years ran out can still be changed without sending its schedule again.
        let mut job = Job::empty("a");
        job.schedule = "0 0 12 1 1 * 2030".into();
        job.executor = "shell".into();
        let disable = JobInput { disabled: Some(true), ..Default::default() };
        assert_eq!(job.apply_at(disable, "2031-01-01T00:00:00Z".parse().unwrap()), Ok(()));
        assert!(job.disabled);
    }

    #[test]
    fn a_past_at_and_manually_are_accepted_as_they_never_fire_by_design() {
        for schedule in ["@at 2001-01-01T00:00:00Z", "@manually"] {
            let job = job_with(&format!(r#""schedule":"{schedule}""#)).expect(schedule);
            let parsed = job.parsed_schedule().unwrap().unwrap();
            assert_eq!(parsed.next_after(Timestamp::now()), None, "{schedule}");
        }
    }

    #[test]
    fn an_at_beyond_the_last_representable_instant_says_so() {
        assert_eq!(
            job_with(r#""schedule":"@at 9999-12-31T23:59:59Z""#).unwrap_err(),
            "schedule: @at timestamp '9999-12-31T23:59:59Z' is after the latest supported instant, \
             9999-12-30T22:00:00Z"
        );
        let last = job_with(r#""schedule":"@at 9999-12-30T22:00:00Z""#).unwrap();
        let next = last.parsed_schedule().unwrap().unwrap().next_after(Timestamp::now());
        assert_eq!(next.map(|t| t.to_string()), Some("9999-12-30T22:00:00Z".to_string()));
    }

    #[test]
    fn child_job_needs_no_schedule() {
        let job = input(r#"{"name":"child","parent_job":"parent","executor":"shell"}"#).unwrap();
        assert_eq!(job.parsed_schedule().unwrap().map(|_| ()), None);
    }

    #[test]
    fn patch_overrides_only_present_fields_and_keeps_name() {
        let mut job = input(r#"{"name":"a","schedule":"@daily","executor":"shell","owner":"me"}"#).unwrap();
        job.apply(JobInput { disabled: Some(true), ..Default::default() }).unwrap();
        assert!(job.disabled);
        assert_eq!(job.owner, "me");
        let err = job.apply(JobInput { name: Some("b".into()), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "name");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut job = Job::empty("a");
        job.retry_backoff = "1s".into();
        job.retry_backoff_max = "5s".into();
        let secs: Vec<u64> = (1..=5).map(|r| job.backoff_before_retry(r).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 5, 5]);
        assert_eq!(job.backoff_before_retry(200), Duration::from_secs(5));
    }
}
