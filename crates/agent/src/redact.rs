//! Keeping credentials out of what a run reports: outputs, `error` and logs are stored, replicated through Raft
//! and shown in the web UI, so a password from a connection URL must never reach them.
//!
//! Two layers, because a client library's error message may quote what it was given: messages we write name a
//! URL only through [`display_url`] (password replaced), and every message that leaves an executor goes through
//! [`Secrets::scrub`], which replaces each known secret wherever it appears.

use reqwest::Url;

/// What replaces a secret.
const MASK: &str = "***";

/// The secrets of one run's config: passwords from its URL and its password keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Secrets(Vec<String>);

impl Secrets {
    pub fn new() -> Secrets {
        Secrets(Vec::new())
    }

    /// Adds a secret; empty ones are ignored (scrubbing "" would mask everything).
    pub fn add(&mut self, secret: &str) {
        if !secret.is_empty() && !self.0.iter().any(|s| s == secret) {
            self.0.push(secret.to_owned());
        }
    }

    /// Adds the password of `url`, in both its percent-encoded and its decoded spelling.
    pub fn add_url_password(&mut self, url: &Url) {
        if let Some(password) = url.password() {
            self.add(password);
            if let Some(decoded) = percent_decode(password) {
                self.add(&decoded);
            }
        }
    }

    /// `text` with every secret masked, longest first (so a secret inside a longer one is not half-masked).
    pub fn scrub(&self, text: &str) -> String {
        let mut secrets: Vec<&String> = self.0.iter().collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.iter().fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), MASK))
    }
}

/// `url` as it may be shown: with its password masked.
pub(crate) fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Only fails for URLs that cannot have credentials, which then have no password to hide.
        let _ = shown.set_password(Some(MASK));
    }
    shown.to_string()
}

/// `text` with its `%XX` escapes decoded; `None` when they do not make UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let url = Url::parse("amqp://app:s3cret@broker:5672/vhost").unwrap();
        assert_eq!(display_url(&url), "amqp://app:***@broker:5672/vhost");
        let plain = Url::parse("nats://broker:4222").unwrap();
        assert_eq!(display_url(&plain), "nats://broker:4222");
    }

    #[test]
    fn scrub_masks_every_spelling_of_a_password() {
        let mut secrets = Secrets::new();
        secrets.add_url_password(&Url::parse("redis://:p%40ss@h/").unwrap());
        secrets.add("");
        let scrubbed = secrets.scrub("auth p%40ss failed for p@ss; retry p@ss");
        assert_eq!(scrubbed, "auth *** failed for ***; retry ***");
        assert_eq!(Secrets::new().scrub("nothing to hide"), "nothing to hide");
    }
}
