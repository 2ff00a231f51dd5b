//! The leader's notifier: the sender of every notification and the duty that drains the outbox into it (see the
//! module above for the guarantees), and the `missed` watch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kairos_model::execution::{Delivery, DeliveryOutcome};
use kairos_model::job::{JobWebhook, NotifyOn};
use kairos_model::{Execution, ExecutionStatus, Job, Timestamp};
use kairos_store::outbox::{DeliveryRecord, MissedAlert, OutboxEntry, OutboxEvent};
use kairos_store::{Command, ExecRef, Response, StateReader};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::rules::{self, Decision};
use super::{
    ATTEMPTS, FIRST_PAUSE, IN_FLIGHT_MAX, Mail, Note, RECORD_EVERY, TIMEOUT, WINDOW_MAX, Webhook, Webhooks, body,
    content_type,
};
use crate::duties::LeaderWrites;

/// How often jobs are checked for a missed success.
const MISSED_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Deliveries one [`Command::Notified`] records at most.
const RECORDS_PER_COMMIT_MAX: usize = 4096;

/// Mail as the sender holds it: the settings and one pooled transport.
struct MailSender {
    mail: Mail,
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
}

/// The leader's sender of notifications; its [`duty`] runs while the node leads.
pub struct Notifier {
    hooks: Webhooks,
    mail: Option<Arc<MailSender>>,
    /// Cronitor's ping URL (`--cronitor-endpoint`), without a trailing slash.
    cronitor: Option<String>,
    state: StateReader,
    /// This server (its name is Dkron's `ReportingNode`).
    node: super::Sender,
    http: reqwest::Client,
    /// Rung by every commit that made outbox entries, so the duty reads them at once.
    wake: tokio::sync::Notify,
    /// Jobs written since the duty last looked (their `missed` watch is read again).
    changed_jobs: Mutex<HashSet<String>>,
}

impl Notifier {
    pub fn new(
        hooks: Webhooks,
        mail: Option<Mail>,
        cronitor: Option<String>,
        state: StateReader,
        node: super::Sender,
        http: reqwest::Client,
    ) -> anyhow::Result<Notifier> {
        let mail = match mail {
            Some(mail) => Some(Arc::new(MailSender { transport: mail.transport(TIMEOUT)?, mail })),
            None => None,
        };
        let cronitor = cronitor.map(|url| url.trim_end_matches('/').to_string());
        let (wake, changed_jobs) = (tokio::sync::Notify::new(), Mutex::new(HashSet::new()));
        Ok(Notifier { hooks, mail, cronitor, state, node, http, wake, changed_jobs })
    }

    /// After a command this node committed as leader: wake the duty if the command may have made outbox entries,
    /// and note written jobs for the `missed` watch.
    pub fn after_commit(&self, response: &Response) {
        if let Some(job) = &response.job {
            self.changed_jobs.lock().expect("changed jobs lock").insert(job.name.clone());
        }
        if !response.executions.is_empty() {
            self.wake.notify_one();
        }
    }

    /// The deliveries `entry` calls for, and the records of those decided without sending (suppressed, a template
    /// that failed).
    fn plan(&self, entry: &OutboxEntry, rules: &rules::Rules, watch: &mut Watch) -> Plan {
        let mut plan = Plan::default();
        let job = self.state.definition(&entry.exec.job).ok().flatten();
        let notify = job.as_ref().and_then(|job| job.notify.as_ref());
        // Nothing to send and nothing to watch (the common case without notifications): not even the execution is
        // read.
        let own = notify.is_some_and(|n| !n.webhooks.is_empty() || (self.mail.is_some() && !n.emails.is_empty()));
        let owners = self.mail.is_some() && job.as_ref().is_some_and(|j| !j.owner_email.trim().is_empty());
        let node_wide = self.hooks.pre.is_some() || self.hooks.post.is_some() || self.cronitor.is_some();
        if !(node_wide || own || owners || watch.jobs.contains_key(&entry.exec.job)) {
            return plan;
        }
        let Ok(Some(exec)) = self.state.execution(&entry.exec.job, &entry.exec.id) else { return plan };
        match entry.event {
            OutboxEvent::Started => {
                self.ping_cronitor(&mut plan, &exec, "run");
                if !rules::Rules::start(notify) {
                    return plan;
                }
                let started = as_started(&exec);
                let note = self.note(&started, "start", job.as_deref());
                if let Some(hook) = &self.hooks.pre {
                    plan.webhook(Kind::PreWebhook, hook, &note);
                }
                if notify.is_some_and(|n| n.on.as_ref().is_some_and(|on| on.contains(&NotifyOn::Start))) {
                    self.plan_job_channels(&mut plan, &note);
                }
            }
            OutboxEvent::Finished => {
                match exec.status {
                    ExecutionStatus::Succeeded => self.ping_cronitor(&mut plan, &exec, "complete"),
                    ExecutionStatus::Failed | ExecutionStatus::Lost => self.ping_cronitor(&mut plan, &exec, "fail"),
                    _ => {}
                }
                let recovered_from_missed = exec.status == ExecutionStatus::Succeeded && watch.succeeded(&exec);
                let mut decision = rules.finish(notify, &exec, &self.state, Instant::now());
                if recovered_from_missed {
                    plan.alert = Some(MissedAlert { job: exec.job_name.clone(), missed_at: None });
                    let wanted = notify.is_none_or(|n| n.wants(NotifyOn::Recovery));
                    decision = if wanted { Decision::Notify(Some(NotifyOn::Recovery)) } else { Decision::NotWanted };
                }
                let event = match decision {
                    Decision::Notify(event) => event.map_or(exec.status.as_str(), NotifyOn::as_str),
                    Decision::NotWanted => return plan,
                    Decision::Repeated => {
                        let quiet = notify.map(|n| n.repeat_after()).unwrap_or_default();
                        let why = format!("a failure of this job notified less than repeat_after ({quiet:?}) ago");
                        plan.suppressed(&exec, &why, self.hooks.post.is_some(), self.mail.is_some(), job.as_deref());
                        return plan;
                    }
                };
                self.plan_end(&mut plan, &self.note(&exec, event, job.as_deref()));
            }
        }
        plan
    }

    /// Mail to the job's owners and `notify.emails`, and the job's own webhooks.
    fn plan_job_channels(&self, plan: &mut Plan, note: &Note) {
        if let Some(sender) = &self.mail {
            let recipients = recipients(note.job);
            match sender.mail.message(note, &recipients) {
                Ok(Some(message)) => plan.sends.push(Planned {
                    kind: Kind::Mail,
                    event: note.event.to_string(),
                    target: recipients,
                    send: Send::Mail(Box::new(message)),
                }),
                Ok(None) => {}
                Err(err) => plan.failed_template(Kind::Mail, note, recipients, err),
            }
        }
        for hook in note.job.and_then(|job| job.notify.as_ref()).map_or(&[][..], |n| n.webhooks.as_slice()) {
            plan.job_webhook(hook, note);
        }
    }

    fn ping_cronitor(&self, plan: &mut Plan, exec: &Execution, state: &str) {
        let Some(endpoint) = &self.cronitor else { return };
        let mut url = match reqwest::Url::parse(&format!("{endpoint}/{}", exec.job_name)) {
            Ok(url) => url,
            Err(err) => return warn!("cronitor: cannot make a URL for job {}: {err}", exec.job_name),
        };
        url.query_pairs_mut().append_pair("state", state).append_pair("series", &exec.id);
        if !exec.node_name.is_empty() {
            url.query_pairs_mut().append_pair("host", &exec.node_name);
        }
        if let (Some(code), "fail" | "complete") = (exec.exit_code, state) {
            url.query_pairs_mut().append_pair("status_code", &code.to_string());
        }
        let event = if state == "run" { "start" } else { exec.status.as_str() };
        let target = format!("{endpoint}/{}", exec.job_name);
        plan.sends.push(Planned {
            kind: Kind::Cronitor,
            event: event.into(),
            target,
            send: Send::Get(url.to_string()),
        });
    }

    /// The `missed` notification about `job`, which has not succeeded for `within` (since `since`).
    fn plan_missed(&self, job: &Job, since: Option<Timestamp>, within: Duration) -> Plan {
        let mut plan = Plan::default();
        let now = Timestamp::now();
        let mut stand_in = Execution::decided(&job.name, now, kairos_model::Trigger::Schedule);
        stand_in.id = String::new();
        stand_in.status = ExecutionStatus::Failed;
        let since = since.map_or_else(|| "never succeeded".to_string(), |t| format!("last success at {t}"));
        stand_in.error = Some(format!("no success within {} ({since})", humantime(within)));
        self.plan_end(&mut plan, &self.note(&stand_in, "missed", Some(job)));
        plan
    }

    /// A note about `exec` from this server.
    fn note<'a>(&'a self, exec: &'a Execution, event: &'a str, job: Option<&'a Job>) -> Note<'a> {
        Note { exec, event, job, reporting_node: &self.node.name, ui_base: &self.node.ui_base }
    }

    /// What an ending (a finish, or a missed alert) sends: the node's webhook, mail, the job's own webhooks.
    fn plan_end(&self, plan: &mut Plan, note: &Note) {
        if let Some(hook) = &self.hooks.post {
            plan.webhook(Kind::Webhook, hook, note);
        }
        self.plan_job_channels(plan, note);
    }
}

fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The job's `owner_email` and `notify.emails`, comma-separated.
fn recipients(job: Option<&Job>) -> String {
    let Some(job) = job else { return String::new() };
    let extra = job.notify.as_ref().map_or(&[][..], |n| n.emails.as_slice());
    let owners = job.owner_email.split(',').map(str::trim).filter(|o| !o.is_empty());
    owners.chain(extra.iter().map(String::as_str)).collect::<Vec<_>>().join(", ")
}

/// A finished execution as it was when it started (for a start notified after the run ended): running, nothing of
/// its end.
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    PreWebhook,
    Webhook,
    Mail,
    JobWebhook,
    Cronitor,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::PreWebhook => "pre_webhook",
            Kind::Webhook => "webhook",
            Kind::Mail => "mail",
            Kind::JobWebhook => "job_webhook",
            Kind::Cronitor => "cronitor",
        }
    }
}

enum Send {
    Post { endpoint: String, headers: Vec<(String, String)>, content_type: &'static str, body: String },
    Mail(Box<lettre::Message>),
    Get(String),
}

struct Planned {
    kind: Kind,
    event: String,
    target: String,
    send: Send,
}

/// What one outbox entry (or a `missed` alert) calls for.
#[derive(Default)]
struct Plan {
    sends: Vec<Planned>,
    /// Decided without sending.
    records: Vec<Delivery>,
    alert: Option<MissedAlert>,
}

impl Plan {
    fn webhook(&mut self, kind: Kind, hook: &Webhook, note: &Note) {
        match hook.body(note) {
            Ok(body) => self.sends.push(Planned {
                kind,
                event: note.event.to_string(),
                target: hook.endpoint.clone(),
                send: Send::Post {
                    endpoint: hook.endpoint.clone(),
                    headers: hook.headers.clone(),
                    content_type: content_type(hook.payload.as_deref()),
                    body,
                },
            }),
            Err(err) => self.failed_template(kind, note, hook.endpoint.clone(), err),
        }
    }

    fn job_webhook(&mut self, hook: &JobWebhook, note: &Note) {
        match body(hook.payload.as_deref(), note) {
            Ok(body) => self.sends.push(Planned {
                kind: Kind::JobWebhook,
                event: note.event.to_string(),
                target: hook.url.clone(),
                send: Send::Post {
                    endpoint: hook.url.clone(),
                    headers: hook.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    content_type: content_type(hook.payload.as_deref()),
                    body,
                },
            }),
            Err(err) => self.failed_template(Kind::JobWebhook, note, hook.url.clone(), err),
        }
    }

    fn failed_template(&mut self, kind: Kind, note: &Note, target: String, err: String) {
        warn!("{} about {}/{}: the payload template failed: {err}", kind.as_str(), note.exec.job_name, note.exec.id);
        count(kind, DeliveryOutcome::TemplateFailed);
        self.records.push(Delivery {
            kind: kind.as_str().into(),
            event: note.event.into(),
            target,
            outcome: DeliveryOutcome::TemplateFailed,
            attempts: 0,
            error: Some(err),
            at: Timestamp::now(),
        });
    }

    /// Records for the channels a repeated failure would have used.
    fn suppressed(&mut self, exec: &Execution, why: &str, webhook: bool, mail: bool, job: Option<&Job>) {
        let mut channels: Vec<(Kind, String)> = Vec::new();
        if webhook {
            channels.push((Kind::Webhook, String::new()));
        }
        if mail && !recipients(job).is_empty() {
            channels.push((Kind::Mail, recipients(job)));
        }
        for hook in job.and_then(|j| j.notify.as_ref()).map_or(&[][..], |n| n.webhooks.as_slice()) {
            channels.push((Kind::JobWebhook, hook.url.clone()));
        }
        for (kind, target) in channels {
            count(kind, DeliveryOutcome::Suppressed);
            self.records.push(Delivery {
                kind: kind.as_str().into(),
                event: exec.status.as_str().into(),
                target,
                outcome: DeliveryOutcome::Suppressed,
                attempts: 0,
                error: Some(why.to_string()),
                at: Timestamp::now(),
            });
        }
    }
}

/// The `missed` watch of the jobs that set `notify.alert_if_not_succeeded_within`.
#[derive(Default)]
struct Watch {
    jobs: HashMap<String, Watched>,
}

struct Watched {
    within: Duration,
    /// The last success, else the job's creation: where the window starts.
    since: Option<Timestamp>,
    last_success: Option<Timestamp>,
    alerted: bool,
}

impl Watch {
    fn load(&mut self, record: &kairos_store::JobRecord) {
        match record.job.notify.as_ref().and_then(|n| n.alert_within()) {
            Some(within) => {
                let since = record.job.last_success.or(record.job.created_at);
                let alerted = record.missed_at.is_some();
                let watched = Watched { within, since, last_success: record.job.last_success, alerted };
                self.jobs.insert(record.job.name.clone(), watched);
            }
            None => {
                self.jobs.remove(&record.job.name);
            }
        }
    }

    /// `exec` succeeded: its job's window starts again. Answers whether the job had a `missed` alert out.
    fn succeeded(&mut self, exec: &Execution) -> bool {
        let Some(watched) = self.jobs.get_mut(&exec.job_name) else { return false };
        watched.since = watched.since.max(exec.finished_at);
        watched.last_success = watched.last_success.max(exec.finished_at);
        std::mem::take(&mut watched.alerted)
    }

    /// Jobs whose window has passed without a success and that have no alert out; they are marked alerted.
    fn due(&mut self, now: Timestamp) -> Vec<(String, Option<Timestamp>, Duration)> {
        let mut due = Vec::new();
        for (name, watched) in &mut self.jobs {
            let Some(since) = watched.since else { continue };
            let deadline = since.checked_add(watched.within).unwrap_or(since);
            if !watched.alerted && deadline <= now {
                watched.alerted = true;
                due.push((name.clone(), watched.last_success, watched.within));
            }
        }
        due
    }
}

/// One outbox entry in hand: its deliveries still out, and the records of those that ended.
struct InHand {
    seq: u64,
    exec: ExecRef,
    remaining: usize,
    records: Vec<Delivery>,
    alert: Option<MissedAlert>,
    /// A finish's sends held until the start of the same execution has been delivered (a receiver hears of a
    /// start before its end), with their delivery keys.
    held: Vec<(Planned, String)>,
    /// The entry those sends wait for.
    after: Option<u64>,
}

/// Where the duty sends from: what a delivery task needs.
struct Outlet<'a> {
    notifier: &'a Notifier,
    in_flight: &'a Arc<Semaphore>,
    done: &'a mpsc::UnboundedSender<(u64, Delivery)>,
}

impl Outlet<'_> {
    fn send(&self, tasks: &mut JoinSet<()>, seq: u64, planned: Planned, key: String) {
        spawn_delivery(tasks, self.notifier, self.in_flight, planned, key, Some((seq, self.done.clone())));
    }
}

/// Record a delivery's outcome on its entry; when that completes a start, send the finish sends held for it.
fn settle(
    window: &mut VecDeque<InHand>,
    starts: &mut HashMap<String, u64>,
    (seq, delivery): (u64, Delivery),
    tasks: &mut JoinSet<()>,
    outlet: &Outlet,
) {
    let at = window.partition_point(|hand| hand.seq < seq);
    let Some(hand) = window.get_mut(at).filter(|hand| hand.seq == seq) else { return };
    hand.records.push(delivery);
    hand.remaining = hand.remaining.saturating_sub(1);
    if hand.remaining > 0 {
        return;
    }
    let key = exec_key(&hand.exec);
    if starts.get(&key) != Some(&seq) {
        return;
    }
    starts.remove(&key);
    for waiting in window.iter_mut().skip(at + 1).filter(|h| h.after == Some(seq)) {
        waiting.after = None;
        for (planned, key) in std::mem::take(&mut waiting.held) {
            outlet.send(tasks, waiting.seq, planned, key);
        }
    }
}

fn exec_key(exec: &ExecRef) -> String {
    format!("{}/{}", exec.job, exec.id)
}

/// Drain the outbox while this node leads in `term`: send what each entry calls for, record the outcomes, raise
/// `missed` alerts. Ends (aborting deliveries in flight) when the caller drops it.
pub async fn duty(notifier: &Notifier, writes: &dyn LeaderWrites, term: u64) {
    let rules = rules::Rules::default();
    let mut watch = Watch::default();
    let state = notifier.state.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let mut watch = Watch::default();
        let result = state.for_each_job(|record| {
            watch.load(&record);
            true
        });
        (watch, result)
    })
    .await;
    match loaded {
        Ok((loaded, Ok(()))) => watch = loaded,
        Ok((_, Err(err))) => warn!("notifier: cannot read the jobs for the missed watch: {err}"),
        Err(err) => warn!("notifier: the missed watch's reader failed: {err}"),
    }
    notifier.changed_jobs.lock().expect("changed jobs lock").clear();
    if !watch.jobs.is_empty() {
        info!("notifier: watching {} jobs for a missed success", watch.jobs.len());
    }

    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, Delivery)>();
    let outlet = Outlet { notifier, in_flight: &in_flight, done: &done_tx };
    let mut tasks = JoinSet::new();
    let mut window: VecDeque<InHand> = VecDeque::new();
    // Starts whose deliveries are still out, by execution: the entry's sequence number.
    let mut starts: HashMap<String, u64> = HashMap::new();
    let mut next_seq = 0u64;
    let mut alerts: Vec<MissedAlert> = Vec::new();
    let mut last_record = Instant::now();
    let mut last_missed_check = Instant::now();
    loop {
        // Take more entries while there is room.
        if window.len() < WINDOW_MAX {
            match notifier.state.outbox(next_seq, WINDOW_MAX - window.len()) {
                Ok(entries) => {
                    for entry in entries {
                        if next_seq > 0 && entry.seq > next_seq {
                            let lost = entry.seq - next_seq;
                            warn!("notifier: {lost} outbox entries were dropped unsent (the outbox was full)");
                        }
                        next_seq = entry.seq + 1;
                        let plan = notifier.plan(&entry, &rules, &mut watch);
                        let exec = exec_key(&entry.exec);
                        let after = match entry.event {
                            OutboxEvent::Finished => starts.get(&exec).copied(),
                            OutboxEvent::Started => None,
                        };
                        if entry.event == OutboxEvent::Started && !plan.sends.is_empty() {
                            starts.insert(exec, entry.seq);
                        }
                        let mut hand = InHand {
                            seq: entry.seq,
                            exec: entry.exec.clone(),
                            remaining: plan.sends.len(),
                            records: plan.records,
                            alert: plan.alert,
                            held: Vec::new(),
                            after,
                        };
                        for planned in plan.sends {
                            let key = format!(
                                "{}/{}/{}/{}",
                                entry.exec.job,
                                entry.exec.id,
                                planned.kind.as_str(),
                                planned.event
                            );
                            match after {
                                Some(_) => hand.held.push((planned, key)),
                                None => outlet.send(&mut tasks, entry.seq, planned, key),
                            }
                        }
                        window.push_back(hand);
                    }
                }
                Err(err) => warn!("notifier: cannot read the outbox: {err}"),
            }
        }
        // Outcomes that came in.
        while let Ok(done) = done_rx.try_recv() {
            settle(&mut window, &mut starts, done, &mut tasks, &outlet);
        }
        // Missed alerts.
        if last_missed_check.elapsed() >= MISSED_CHECK_EVERY {
            last_missed_check = Instant::now();
            check_missed(notifier, &mut watch, &mut alerts, &mut tasks, &in_flight);
        }
        // Record what is over, in outbox order.
        let over = window.iter().take_while(|hand| hand.remaining == 0).count();
        if (over > 0 || !alerts.is_empty()) && last_record.elapsed() >= RECORD_EVERY {
            last_record = Instant::now();
            let (command, taken) = notified(&window, over, &alerts);
            match writes.submit_as_leader(term, command).await {
                Ok(_) => {
                    window.drain(..taken);
                    alerts.clear();
                }
                Err(err) => warn!("notifier: recording deliveries failed ({}); trying again", err.message),
            }
        }
        if writes.is_stopping() {
            return;
        }
        let pause = if over > 0 || !alerts.is_empty() { RECORD_EVERY } else { Duration::from_millis(500) };
        let done = tokio::select! {
            _ = notifier.wake.notified(), if window.len() < WINDOW_MAX => None,
            Some(done) = done_rx.recv() => Some(done),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => None,
            _ = tokio::time::sleep(pause) => None,
        };
        if let Some(done) = done {
            settle(&mut window, &mut starts, done, &mut tasks, &outlet);
        }
    }
}

/// The command recording the first `over` entries of `window` (fewer if their records are too many) and `alerts`,
/// and how many entries it covers.
fn notified(window: &VecDeque<InHand>, over: usize, alerts: &[MissedAlert]) -> (Command, usize) {
    let (mut records, mut alerts, mut taken) = (Vec::new(), alerts.to_vec(), 0);
    for hand in window.iter().take(over) {
        if taken > 0 && records.len() + hand.records.len() > RECORDS_PER_COMMIT_MAX {
            break;
        }
        records.extend(hand.records.iter().map(|d| DeliveryRecord { exec: hand.exec.clone(), delivery: d.clone() }));
        alerts.extend(hand.alert.clone());
        taken += 1;
    }
    let upto = if taken == 0 { 0 } else { window[taken - 1].seq };
    (Command::Notified { upto, records, alerts }, taken)
}

/// Raise a `missed` alert for every watched job whose window passed without a success.
fn check_missed(
    notifier: &Notifier,
    watch: &mut Watch,
    alerts: &mut Vec<MissedAlert>,
    tasks: &mut JoinSet<()>,
    in_flight: &Arc<Semaphore>,
) {
    let changed: Vec<String> = notifier.changed_jobs.lock().expect("changed jobs lock").drain().collect();
    for name in changed {
        match notifier.state.job(&name) {
            Ok(Some(record)) => watch.load(&record),
            Ok(None) => {
                watch.jobs.remove(&name);
            }
            Err(err) => warn!("notifier: cannot read job {name}: {err}"),
        }
    }
    let now = Timestamp::now();
    for (name, last_success, within) in watch.due(now) {
        let Ok(Some(job)) = notifier.state.definition(&name) else { continue };
        if !job.notify.as_ref().is_some_and(|n| n.wants(NotifyOn::Missed)) {
            // Watched for its recovery only: the alert is remembered, nothing is sent.
            alerts.push(MissedAlert { job: name, missed_at: Some(now) });
            continue;
        }
        warn!(
            "job {name} has not succeeded within {} ({}): sending its missed alert",
            humantime(within),
            last_success.map_or_else(|| "never".to_string(), |t| format!("last success at {t}"))
        );
        let plan = notifier.plan_missed(&job, last_success, within);
        for planned in plan.sends {
            let key = format!("{name}//{}/missed/{}", planned.kind.as_str(), now.as_millisecond());
            spawn_delivery(tasks, notifier, in_flight, planned, key, None);
        }
        crate::metrics::metrics().missed_alerts.inc();
        alerts.push(MissedAlert { job: name, missed_at: Some(now) });
    }
}

fn spawn_delivery(
    tasks: &mut JoinSet<()>,
    notifier: &Notifier,
    in_flight: &Arc<Semaphore>,
    planned: Planned,
    key: String,
    done: Option<(u64, mpsc::UnboundedSender<(u64, Delivery)>)>,
) {
    let (http, mail, in_flight) = (notifier.http.clone(), notifier.mail.clone(), in_flight.clone());
    tasks.spawn(async move {
        let Ok(_permit) = in_flight.acquire_owned().await else { return };
        let delivery = deliver(&http, mail.as_deref(), &planned, &key).await;
        if let Some((seq, done)) = done {
            let _ = done.send((seq, delivery));
        }
    });
}

/// Send one notification, trying [`ATTEMPTS`] times; answers how it ended.
async fn deliver(http: &reqwest::Client, mail: Option<&MailSender>, planned: &Planned, key: &str) -> Delivery {
    let mut pause = FIRST_PAUSE;
    let mut attempt = 0;
    let failure = loop {
        attempt += 1;
        let failure = match &planned.send {
            Send::Post { endpoint, headers, content_type, body } => {
                let mut request = http
                    .post(endpoint)
                    .timeout(TIMEOUT)
                    .header(reqwest::header::CONTENT_TYPE, *content_type)
                    .header("X-Kairos-Delivery", key)
                    .body(body.clone());
                for (name, value) in headers {
                    request = request.header(name.as_str(), value.as_str());
                }
                answered(request.send().await, endpoint)
            }
            Send::Get(url) => answered(http.get(url).timeout(TIMEOUT).send().await, &planned.target),
            Send::Mail(message) => match mail {
                Some(sender) => Mail::send(&sender.transport, (**message).clone())
                    .await
                    .err()
                    .map(|err| format!("{}:{}: {err}", sender.mail.host, sender.mail.port)),
                None => Some("mail is not configured on this node".to_string()),
            },
        };
        match failure {
            None => break None,
            Some(failure) if attempt >= ATTEMPTS => break Some(failure),
            Some(_) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    };
    let outcome = if failure.is_some() { DeliveryOutcome::Failed } else { DeliveryOutcome::Sent };
    if let Some(failure) = &failure {
        warn!("{} {key} not delivered after {attempt} tries: {failure}", planned.kind.as_str());
    }
    count(planned.kind, outcome);
    Delivery {
        kind: planned.kind.as_str().into(),
        event: planned.event.clone(),
        target: planned.target.clone(),
        outcome,
        attempts: attempt,
        error: failure,
        at: Timestamp::now(),
    }
}

/// `None` for a 2xx answer, else what went wrong.
fn answered(result: reqwest::Result<reqwest::Response>, endpoint: &str) -> Option<String> {
    match result {
        Ok(response) if response.status().is_success() => None,
        Ok(response) => Some(format!("{endpoint} answered {}", response.status())),
        Err(err) => Some(format!("{endpoint}: {err}")),
    }
}

fn count(kind: Kind, outcome: DeliveryOutcome) {
    let labels =
        crate::metrics::NotificationLabels { kind: kind.as_str().to_string(), outcome: outcome.as_str().to_string() };
    crate::metrics::metrics().notifications.get_or_create(&labels).inc();
}
