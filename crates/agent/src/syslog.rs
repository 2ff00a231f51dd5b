//! The syslog protocol, as the `syslog` output processor speaks it: a message per line of output.
//!
//! To the local socket (`/dev/log`) messages go in the BSD form that the C library's `syslog(3)` sends and every
//! local daemon reads (`<PRI>Mmm dd hh:mm:ss tag[pid]: text`, the daemon adds the host). Over the network they go
//! in the RFC 5424 form (`<PRI>1 timestamp host tag pid - - text`), one datagram each over UDP, framed by octet
//! counting (RFC 6587) over TCP.
//!
//! Bounded: a line longer than [`TEXT_BYTES_MAX`] continues in the next message, and at most [`MESSAGES_MAX`]
//! messages are sent per run (the last one says how many lines were left out).

use std::io;

use kairos_model::processor::{Facility, SyslogAddress, SyslogSettings};
use kairos_schedule::jiff::{Timestamp, Zoned};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram};

/// Text per message: with its header a message stays well within the 2048 octets RFC 5424 asks every receiver to
/// accept (RFC 3164's limit was 1024 for the whole message; receivers have long accepted more).
pub(crate) const TEXT_BYTES_MAX: usize = 1024;
/// Messages per run: a megabyte of one-character lines must not become half a million datagrams.
pub(crate) const MESSAGES_MAX: usize = 10_000;

const SEVERITY_ERR: u8 = 3;
const SEVERITY_INFO: u8 = 6;

/// Who sends: the parts of the header that do not change from message to message.
pub(crate) struct Sender<'a> {
    pub settings: &'a SyslogSettings,
    /// Info for a run that succeeded, err for one that did not.
    pub succeeded: bool,
    pub hostname: &'a str,
    pub pid: u32,
}

impl Sender<'_> {
    fn priority(&self) -> u8 {
        let Facility(facility) = self.settings.facility;
        facility * 8 + if self.succeeded { SEVERITY_INFO } else { SEVERITY_ERR }
    }

    /// A message for the local socket (BSD form, local time).
    fn local(&self, now: &Zoned, text: &str) -> String {
        let stamp = now.strftime("%b %e %H:%M:%S");
        format!("<{}>{stamp} {}[{}]: {text}", self.priority(), self.settings.tag, self.pid)
    }

    /// A message for a remote receiver (RFC 5424, UTC with milliseconds).
    fn network(&self, now: Timestamp, text: &str) -> String {
        let stamp = now.strftime("%Y-%m-%dT%H:%M:%S%.3fZ");
        format!("<{}>1 {stamp} {} {} {} - - {text}", self.priority(), self.hostname, self.settings.tag, self.pid)
    }

    /// Sends `texts`, one message each, to the job's address.
    pub(crate) async fn send(&self, texts: &[String]) -> io::Result<()> {
        match &self.settings.address {
            SyslogAddress::Local => {
                let found = SyslogAddress::LOCAL_SOCKETS.iter().find(|path| std::path::Path::new(path).exists());
                let Some(path) = found else {
                    let paths = SyslogAddress::LOCAL_SOCKETS.join(", ");
                    return Err(io::Error::new(io::ErrorKind::NotFound, format!("no local syslog socket ({paths})")));
                };
                self.send_unix(path, texts).await
            }
            SyslogAddress::Unix(path) => self.send_unix(path, texts).await,
            SyslogAddress::Udp(address) => {
                let socket = UdpSocket::bind(if address.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" }).await?;
                socket.connect(address.as_str()).await?;
                for text in texts {
                    socket.send(self.network(Timestamp::now(), text).as_bytes()).await?;
                }
                Ok(())
            }
            SyslogAddress::Tcp(address) => {
                let mut stream = TcpStream::connect(address.as_str()).await?;
                let mut framed = Vec::new();
                for text in texts {
                    let message = self.network(Timestamp::now(), text);
                    framed.extend_from_slice(format!("{} {message}", message.len()).as_bytes());
                }
                stream.write_all(&framed).await?;
                stream.shutdown().await
            }
        }
    }

    async fn send_unix(&self, path: &str, texts: &[String]) -> io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        for text in texts {
            socket.send(self.local(&Zoned::now(), text).as_bytes()).await?;
        }
        Ok(())
    }
}

/// The texts of the messages for `output`: a line each (a long line in pieces of at most [`TEXT_BYTES_MAX`], cut
/// on character boundaries), each after `prefix`, at most [`MESSAGES_MAX`] in all. Empty lines are left out.
pub(crate) fn texts(prefix: &str, output: &str) -> Vec<String> {
    let mut texts = Vec::new();
    let mut lines = output.lines().filter(|line| !line.trim().is_empty());
    // Room is kept for the last message to say what was left out.
    while texts.len() < MESSAGES_MAX - 1 {
        let Some(line) = lines.next() else { break };
        let mut rest = line;
        while !rest.is_empty() && texts.len() < MESSAGES_MAX - 1 {
            let mut cut = rest.len().min(TEXT_BYTES_MAX);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            texts.push(format!("{prefix}{}", &rest[..cut]));
            rest = &rest[cut..];
        }
        if !rest.is_empty() {
            texts.push(format!("{prefix}[kairos: a line cut short and {} more not sent to syslog]", lines.count()));
            return texts;
        }
    }
    let left_out = lines.count();
    if left_out > 0 {
        texts.push(format!("{prefix}[kairos: {left_out} more lines not sent to syslog]"));
    }
    debug_assert!(texts.len() <= MESSAGES_MAX, "at most {MESSAGES_MAX} messages");
    texts
}

/// This machine's host name, for the RFC 5424 header (`-`, the nil value, if it has none).
pub(crate) fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable and its length is passed; gethostname(2) writes at most that many bytes.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).into_owned();
    if status != 0 || name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) { "-".to_string() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_model::processor::SYSLOG_FACILITY_DEFAULT;

    fn settings() -> SyslogSettings {
        SyslogSettings {
            address: SyslogAddress::Local,
            tag: "kairos".into(),
            facility: SYSLOG_FACILITY_DEFAULT,
            forward: false,
        }
    }

    #[test]
    fn headers_carry_facility_severity_tag_and_pid() {
        let settings = settings();
        let sender = Sender { settings: &settings, succeeded: true, hostname: "h1", pid: 42 };
        let now: Timestamp = "2026-03-05T07:08:09.5Z".parse().unwrap();
        assert_eq!(sender.network(now, "hello"), "<78>1 2026-03-05T07:08:09.500Z h1 kairos 42 - - hello");
        let local = sender.local(&now.to_zoned(kairos_schedule::jiff::tz::TimeZone::UTC), "hello");
        assert_eq!(local, "<78>Mar  5 07:08:09 kairos[42]: hello");
        let failed = Sender { succeeded: false, ..sender };
        assert!(failed.network(now, "x").starts_with("<75>1 "), "cron.err is 9*8+3");
    }

    #[tokio::test]
    async fn over_tcp_each_message_is_framed_by_its_length() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings =
            SyslogSettings { address: SyslogAddress::Tcp(listener.local_addr().unwrap().to_string()), ..settings() };
        let receiver = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut received = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut received).await.unwrap();
            received
        });
        let sender = Sender { settings: &settings, succeeded: true, hostname: "h1", pid: 7 };
        sender.send(&["a b".to_string(), "ü".to_string()]).await.unwrap();
        let mut received = receiver.await.unwrap();
        let mut messages = Vec::new();
        while !received.is_empty() {
            let (length, rest) = received.split_once(' ').expect("LENGTH SP MESSAGE");
            let length: usize = length.parse().unwrap();
            messages.push(rest[..length].to_string());
            received = rest[length..].to_string();
        }
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].starts_with("<78>1 ") && messages[0].ends_with(" h1 kairos 7 - - a b"), "{}", messages[0]);
        assert!(messages[1].ends_with(" - - ü"), "the length counts bytes: {}", messages[1]);
    }

    #[test]
    fn output_becomes_a_message_per_line_bounded() {
        assert_eq!(texts("j: ", "one\n\ntwo\r\n"), vec!["j: one", "j: two"]);
        let long = "é".repeat(TEXT_BYTES_MAX);
        let pieces = texts("", &long);
        assert_eq!(pieces.len(), 2, "2048 bytes in pieces of at most 1024");
        assert!(pieces.iter().all(|p| p.len() <= TEXT_BYTES_MAX) && pieces.concat() == long);
        let many = "x\n".repeat(MESSAGES_MAX + 5);
        let sent = texts("", &many);
        assert_eq!(sent.len(), MESSAGES_MAX);
        assert_eq!(sent.last().unwrap(), "[kairos: 6 more lines not sent to syslog]");
    }
}
