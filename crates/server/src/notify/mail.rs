//! Mail when an execution finishes, Dkron's `--mail-*` flags: to the job's `owner_email` (a comma-separated list),
//! through the SMTP server of `--mail-host`/`--mail-port`, with STARTTLS whenever the server offers it (rustls,
//! the web's root certificates) and `--mail-username`/`--mail-password` when given. The body is `--mail-payload`
//! (a Go template over the same fields as the webhooks') or a readable report; the subject is
//! `--mail-subject-prefix` (`[Kairos]`) with the job, how it ended and where.

use std::time::Duration;

use anyhow::{Context, bail};
use kairos_model::ExecutionStatus;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Note, render};

/// The subject's prefix unless `--mail-subject-prefix` says otherwise.
pub const SUBJECT_PREFIX_DEFAULT: &str = "[Kairos]";
/// The SMTP port unless `--mail-port` says otherwise.
pub const PORT_DEFAULT: u16 = 25;

/// How mail is sent, from the flags.
#[derive(Clone)]
pub struct Mail {
    pub host: String,
    pub port: u16,
    credentials: Option<(String, String)>,
    from: Mailbox,
    payload: Option<String>,
    subject_prefix: String,
}

impl std::fmt::Debug for Mail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs.
        write!(f, "Mail {{ host: {}, port: {}, from: {} }}", self.host, self.port, self.from)
    }
}

impl PartialEq for Mail {
    fn eq(&self, other: &Mail) -> bool {
        (&self.host, self.port, &self.credentials, &self.from, &self.payload, &self.subject_prefix)
            == (&other.host, other.port, &other.credentials, &other.from, &other.payload, &other.subject_prefix)
    }
}

/// The `--mail-*` flags as given.
#[derive(Debug, Default)]
pub struct MailFlags {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: Option<String>,
    pub payload: Option<String>,
    pub subject_prefix: Option<String>,
}

impl Mail {
    /// `None` without `--mail-host`; every problem names its flag.
    pub fn from_flags(flags: MailFlags) -> anyhow::Result<Option<Mail>> {
        let Some(host) = flags.host.filter(|h| !h.trim().is_empty()) else {
            if flags.from.is_some() || flags.username.is_some() || flags.payload.is_some() {
                bail!("--mail-from, --mail-username and --mail-payload need --mail-host");
            }
            return Ok(None);
        };
        let port = flags.port.unwrap_or(PORT_DEFAULT);
        if port == 0 {
            bail!("--mail-port: 0 is not a port");
        }
        let from = flags.from.context("--mail-from: required with --mail-host (the sender of the mails)")?;
        let from: Mailbox = from.parse().with_context(|| format!("--mail-from: '{from}' is not a mail address"))?;
        let credentials = match (flags.username, flags.password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            (Some(_), None) => bail!("--mail-password: required with --mail-username"),
            (None, Some(_)) => bail!("--mail-username: required with --mail-password"),
        };
        if let Some(template) = &flags.payload {
            let mut parsed = gtmpl::Template::default();
            parsed.parse(template.as_str()).map_err(|err| anyhow::anyhow!("--mail-payload: {err}"))?;
        }
        let subject_prefix = flags.subject_prefix.unwrap_or_else(|| SUBJECT_PREFIX_DEFAULT.to_owned());
        Ok(Some(Mail { host: host.trim().to_owned(), port, credentials, from, payload: flags.payload, subject_prefix }))
    }

    /// The transport: one pool of connections, STARTTLS when the server offers it, each step bounded by `timeout`.
    pub fn transport(&self, timeout: Duration) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
        let tls = TlsParameters::new(self.host.clone()).context("--mail-host: cannot set up TLS for it")?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .tls(Tls::Opportunistic(tls))
            .timeout(Some(timeout));
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(builder.build())
    }

    /// The mail about `note` to `recipients` (comma-separated), or why there is none (no recipient, or an address
    /// that is not one). Its `Message-ID` names the execution and event, so a mail sent twice (a leader died
    /// between sending it and recording it) can be recognised.
    pub fn message(&self, note: &Note, recipients: &str) -> Result<Option<Message>, String> {
        if recipients.trim().is_empty() {
            return Ok(None);
        }
        let to: Mailboxes = recipients.parse().map_err(|err| {
            format!("'{recipients}' is not a list of mail addresses (owner_email, notify.emails): {err}")
        })?;
        let body = match &self.payload {
            Some(template) => render(template, note)?,
            None => report(note),
        };
        let id =
            format!("<{}.{}.{}@kairos>", note.event, note.exec.id, note.exec.job_name.replace(['<', '>', '@'], "_"));
        let mut builder = Message::builder().from(self.from.clone()).subject(self.subject(note)).message_id(Some(id));
        for mailbox in to {
            builder = builder.to(mailbox);
        }
        builder
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map(Some)
            .map_err(|err| format!("cannot build the mail: {err}"))
    }

    /// `[Kairos] backup failed (exit code 1) on agent-1`; `[Kairos] backup missed: no success within 1h`.
    fn subject(&self, note: &Note) -> String {
        let exec = note.exec;
        if note.event == "missed" {
            let why = exec.error.as_deref().unwrap_or("no success within its alert window");
            return format!("{} {} missed: {why}", self.subject_prefix, exec.job_name);
        }
        let how = match (exec.status, exec.exit_code) {
            (ExecutionStatus::Failed, Some(code)) => format!("failed (exit code {code})"),
            (status, _) => status.as_str().to_owned(),
        };
        let node = if exec.node_name.is_empty() { String::new() } else { format!(" on {}", exec.node_name) };
        format!("{} {} {how}{node}", self.subject_prefix, exec.job_name)
    }

    /// Send one message.
    pub async fn send(transport: &AsyncSmtpTransport<Tokio1Executor>, message: Message) -> Result<(), String> {
        transport.send(message).await.map(|_| ()).map_err(|err| err.to_string())
    }
}

/// The default body: what happened, one line per fact, then the output's tail.
fn report(note: &Note) -> String {
    let exec = note.exec;
    if note.event == "missed" {
        let why = exec.error.as_deref().unwrap_or("no success within its alert window");
        return format!("Job:          {}\nEvent:        missed\nWhy:          {why}\n", exec.job_name);
    }
    let time = |t: Option<kairos_model::Timestamp>| t.map_or_else(|| "—".to_owned(), |t| t.to_string());
    let lag = exec.started_at.map(|s| format!("{} ms", s.duration_since(exec.scheduled_at).as_millis()));
    let mut text = format!(
        "Job:          {}\nExecution:    {}\nEvent:        {}\nStatus:       {}{}\n",
        exec.job_name,
        exec.id,
        note.event,
        exec.status.as_str(),
        exec.exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default()
    );
    if let Some(error) = &exec.error {
        text.push_str(&format!("Error:        {error}\n"));
    }
    text.push_str(&format!(
        "Node:         {}\nScheduled at: {}\nStarted at:   {}\nFinished at:  {}\nStart lag:    {}\nAttempt:      {}\n",
        if exec.node_name.is_empty() { "—" } else { &exec.node_name },
        exec.scheduled_at,
        time(exec.started_at),
        time(exec.finished_at),
        lag.unwrap_or_else(|| "—".to_owned()),
        exec.attempt,
    ));
    if !exec.output.is_empty() {
        text.push_str(&format!("\nOutput (its end, {} bytes in all):\n{}", exec.output_bytes, exec.output));
        if !exec.output.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(host: &str, from: &str) -> MailFlags {
        MailFlags { host: Some(host.into()), from: Some(from.into()), ..MailFlags::default() }
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        let err = |flags: MailFlags| Mail::from_flags(flags).unwrap_err().to_string();
        assert!(err(MailFlags { host: Some("smtp".into()), ..MailFlags::default() }).starts_with("--mail-from"));
        assert!(err(flags("smtp", "not an address")).starts_with("--mail-from"));
        assert!(
            err(MailFlags { username: Some("u".into()), ..flags("smtp", "k@example.com") })
                .starts_with("--mail-password")
        );
        assert!(
            err(MailFlags { payload: Some("{{.JobName".into()), ..flags("smtp", "k@example.com") })
                .starts_with("--mail-payload")
        );
        assert!(err(MailFlags { from: Some("k@example.com".into()), ..MailFlags::default() }).contains("--mail-host"));
        assert_eq!(Mail::from_flags(MailFlags::default()).unwrap(), None);
    }

    #[test]
    fn the_message_goes_to_every_owner_with_a_subject_that_says_what_happened() {
        let mail = Mail::from_flags(flags("smtp", "Kairos <k@example.com>")).unwrap().unwrap();
        let mut exec = super::super::tests::finished();
        exec.status = ExecutionStatus::Failed;
        exec.success = false;
        exec.exit_code = Some(3);
        exec.node_name = "agent-1".into();
        let note = Note { exec: &exec, event: "failure", job: None, reporting_node: "s1" };
        let message = mail.message(&note, "a@example.com, b@example.com").unwrap().unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(text.contains("To: a@example.com, b@example.com"), "{text}");
        assert!(text.contains("Subject: [Kairos] backup failed (exit code 3) on agent-1"), "{text}");
        assert!(text.contains("Status:       failed (exit code 3)"), "{text}");
        assert!(text.contains("Message-ID: <failure."), "{text}");
        assert!(mail.message(&note, " ").unwrap().is_none());
        assert!(mail.message(&note, "not an address").unwrap_err().contains("owner_email"));
    }
}
