//! Output processors: what happens to a run's output after it ends (Dkron's job field `processors`).
//!
//! A job names processors with their settings: `{"files": {"log_dir": "/var/log/kairos"}, "log": {"forward":
//! true}, "syslog": {}}`. Each one sends the output somewhere (a file, the node's log, syslog); `forward` says
//! whether the output goes on unchanged to the next processor and to the execution record, or is replaced by a
//! note saying where it went (the file's path, `Output in kairos log`, `Output in syslog`). This module reads the
//! settings into typed values and refuses mistakes naming the key (`processors.files.log_dir`); the agent that ran
//! the run applies them (see `kairos_agent`'s `processors`).
//!
//! Order: Dkron applies a job's processors in the random order of a Go map, each one getting what the previous
//! one forwarded. Kairos applies them in the order of their names (`files`, `log`, `syslog`), which is the order
//! [`parse`] answers and the order of the job's `BTreeMap`, so the same job always does the same thing.
//!
//! Dkron's settings are strings (`"forward": "true"`); a JSON boolean is accepted for `forward` too, and its
//! strings are Go's `strconv.ParseBool` spellings. Unlike Dkron, an unknown processor or setting is refused rather
//! than ignored: a typo must not silently send the output nowhere.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::FieldError;
use crate::input::describe;

/// The processors Kairos knows, in the order they are applied.
pub const PROCESSORS: [&str; 3] = ["files", "log", "syslog"];

/// Dkron's `files` default (`/var/log/dkron`), under our name.
pub const FILES_LOG_DIR_DEFAULT: &str = "/var/log/kairos";
/// The syslog tag (RFC 5424 APP-NAME) unless the job sets `tag`.
pub const SYSLOG_TAG_DEFAULT: &str = "kairos";
/// RFC 3164 asks for at most 32 characters in a tag; longer ones are cut by some receivers.
pub const SYSLOG_TAG_LEN_MAX: usize = 32;
/// Dkron logs to the `cron` facility.
pub const SYSLOG_FACILITY_DEFAULT: Facility = Facility(9);

/// One processor of a job, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processor {
    /// Writes the output to `<log_dir>/<job>.<execution id>.log`; not forwarded, the output becomes that path.
    Files { log_dir: String, forward: bool },
    /// Writes the output to the log of the node that ran it; not forwarded, it becomes `Output in kairos log`.
    Log { forward: bool },
    /// Sends the output to syslog, a message per line; not forwarded, it becomes `Output in syslog`.
    Syslog(SyslogSettings),
}

impl Processor {
    pub fn name(&self) -> &'static str {
        match self {
            Processor::Files { .. } => "files",
            Processor::Log { .. } => "log",
            Processor::Syslog(_) => "syslog",
        }
    }

    /// Whether the output goes on unchanged (Dkron's default: it does not).
    pub fn forward(&self) -> bool {
        match self {
            Processor::Files { forward, .. } | Processor::Log { forward } => *forward,
            Processor::Syslog(settings) => settings.forward,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSettings {
    pub address: SyslogAddress,
    pub tag: String,
    pub facility: Facility,
    pub forward: bool,
}

/// Where syslog messages go (the setting `address`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    /// The local syslog socket, the first of [`SyslogAddress::LOCAL_SOCKETS`] that exists (as Dkron's Go library
    /// looks for it).
    Local,
    /// `unix:///path`: a Unix datagram socket.
    Unix(String),
    /// `udp://host:port`
    Udp(String),
    /// `tcp://host:port`, messages framed by octet counting (RFC 6587).
    Tcp(String),
}

impl SyslogAddress {
    pub const LOCAL_SOCKETS: [&str; 3] = ["/dev/log", "/var/run/syslog", "/var/run/log"];
}

/// A syslog facility code (0 to 23).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(pub u8);

/// The facility names and codes of RFC 5424 (and `syslog.h`).
const FACILITIES: [(&str, u8); 20] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// Every processor of a job, in the order they are applied; the first mistake names its place.
pub fn parse(processors: &BTreeMap<String, Value>) -> Result<Vec<Processor>, FieldError> {
    processors.iter().map(|(name, settings)| parse_one(name, settings)).collect()
}

/// One processor from its name and settings (an object of strings; `null` is read as no settings).
pub fn parse_one(name: &str, settings: &Value) -> Result<Processor, FieldError> {
    let field = format!("processors.{name}");
    let known: &[&str] = match name {
        "files" => &["log_dir", "forward"],
        "log" => &["forward"],
        "syslog" => &["address", "tag", "facility", "forward"],
        _ => return Err(FieldError::new(field, format!("unknown processor; known: {}", PROCESSORS.join(", ")))),
    };
    let empty = serde_json::Map::new();
    let members = match settings {
        Value::Object(members) => members,
        Value::Null => &empty,
        other => {
            return Err(FieldError::new(field, format!("expected an object of settings, got {}", describe(other))));
        }
    };
    if let Some(key) = members.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(FieldError::new(
            format!("{field}.{key}"),
            format!("unknown setting (known: {})", known.join(", ")),
        ));
    }
    let settings = Settings { field: &field, members };
    let forward = settings.forward()?;
    Ok(match name {
        "files" => Processor::Files { log_dir: settings.log_dir()?, forward },
        "log" => Processor::Log { forward },
        _ => Processor::Syslog(SyslogSettings {
            address: settings.address()?,
            tag: settings.tag()?,
            facility: settings.facility()?,
            forward,
        }),
    })
}

/// One processor's settings, read key by key.
struct Settings<'a> {
    field: &'a str,
    members: &'a serde_json::Map<String, Value>,
}

impl Settings<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> FieldError {
        FieldError::new(format!("{}.{key}", self.field), message)
    }

    /// A string setting; absent, `null` and `""` are all unset (Dkron reads a missing key as `""`).
    fn text(&self, key: &str) -> Result<Option<&str>, FieldError> {
        match self.members.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(self.error(key, format!("expected a string, got {}", describe(other)))),
        }
    }

    /// `forward`: a boolean, or one of Go's `strconv.ParseBool` strings as Dkron reads it; unset is false.
    fn forward(&self) -> Result<bool, FieldError> {
        let expected = "expected true or false (a boolean, or a string such as \"true\")";
        match self.members.get("forward") {
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(Value::String(_)) | Some(Value::Null) | None => match self.text("forward")? {
                None => Ok(false),
                Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
                Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
                Some(other) => Err(self.error("forward", format!("{expected}, got a string {other:?}"))),
            },
            Some(other) => Err(self.error("forward", format!("{expected}, got {}", describe(other)))),
        }
    }

    /// `log_dir`: an absolute path; unset is [`FILES_LOG_DIR_DEFAULT`] (Dkron's default, under our name).
    fn log_dir(&self) -> Result<String, FieldError> {
        let Some(dir) = self.text("log_dir")? else {
            return Ok(FILES_LOG_DIR_DEFAULT.to_string());
        };
        if !dir.starts_with('/') {
            return Err(self.error("log_dir", format!("must be an absolute path, got {dir:?}")));
        }
        if dir.contains('\0') {
            return Err(self.error("log_dir", "must not contain a NUL character"));
        }
        Ok(dir.to_string())
    }

    /// `address`: `unix:///path`, `udp://host:port` or `tcp://host:port`; unset is the local syslog socket.
    fn address(&self) -> Result<SyslogAddress, FieldError> {
        let Some(address) = self.text("address")? else {
            return Ok(SyslogAddress::Local);
        };
        let expected = "expected unix:///path, udp://host:port or tcp://host:port";
        let Some((scheme, rest)) = address.split_once("://") else {
            return Err(self.error("address", format!("{expected}, got {address:?}")));
        };
        match scheme {
            "unix" if rest.starts_with('/') && !rest.contains('\0') => Ok(SyslogAddress::Unix(rest.to_string())),
            "unix" => Err(self.error("address", format!("a unix address needs an absolute path, got {address:?}"))),
            "udp" | "tcp" => {
                let port =
                    rest.rsplit_once(':').filter(|(host, _)| !host.is_empty()).map(|(_, port)| port.parse::<u16>());
                match port {
                    Some(Ok(port)) if port != 0 && !rest.contains('/') => Ok(if scheme == "udp" {
                        SyslogAddress::Udp(rest.to_string())
                    } else {
                        SyslogAddress::Tcp(rest.to_string())
                    }),
                    _ => Err(self.error("address", format!("expected {scheme}://host:port, got {address:?}"))),
                }
            }
            _ => Err(self.error("address", format!("{expected}, got {address:?}"))),
        }
    }

    /// `tag`: printable ASCII without spaces, at most [`SYSLOG_TAG_LEN_MAX`] characters.
    fn tag(&self) -> Result<String, FieldError> {
        let Some(tag) = self.text("tag")? else {
            return Ok(SYSLOG_TAG_DEFAULT.to_string());
        };
        if tag.len() > SYSLOG_TAG_LEN_MAX || !tag.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.error(
                "tag",
                format!("expected at most {SYSLOG_TAG_LEN_MAX} printable ASCII characters without spaces, got {tag:?}"),
            ));
        }
        Ok(tag.to_string())
    }

    /// `facility`: a name from RFC 5424 (`cron`, `daemon`, `local0`, …), in any case; unset is `cron`.
    fn facility(&self) -> Result<Facility, FieldError> {
        let Some(name) = self.text("facility")? else {
            return Ok(SYSLOG_FACILITY_DEFAULT);
        };
        let lower = name.to_ascii_lowercase();
        match FACILITIES.iter().find(|(known, _)| *known == lower) {
            Some(&(_, code)) => Ok(Facility(code)),
            None => {
                let known: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
                Err(self.error("facility", format!("{name:?} is not one of {}", known.join(", "))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn processors(value: Value) -> Result<Vec<Processor>, FieldError> {
        let Value::Object(members) = value else { panic!("test input must be an object") };
        parse(&members.into_iter().collect())
    }

    #[track_caller]
    fn refused(value: Value) -> (String, String) {
        let error = processors(value).unwrap_err();
        (error.field, error.message)
    }

    #[test]
    fn processors_are_read_in_name_order_with_dkrons_defaults() {
        let parsed = processors(json!({"syslog": {}, "log": null, "files": {"log_dir": "/tmp/out"}})).unwrap();
        assert_eq!(
            parsed,
            vec![
                Processor::Files { log_dir: "/tmp/out".into(), forward: false },
                Processor::Log { forward: false },
                Processor::Syslog(SyslogSettings {
                    address: SyslogAddress::Local,
                    tag: "kairos".into(),
                    facility: Facility(9),
                    forward: false,
                }),
            ]
        );
        assert_eq!(parsed.iter().map(Processor::name).collect::<Vec<_>>(), PROCESSORS);
        let files = processors(json!({"files": {}})).unwrap();
        assert_eq!(files, vec![Processor::Files { log_dir: FILES_LOG_DIR_DEFAULT.into(), forward: false }]);
    }

    #[test]
    fn forward_is_a_boolean_or_one_of_gos_spellings() {
        for (value, forward) in [
            (json!(true), true),
            (json!(false), false),
            (json!("true"), true),
            (json!("True"), true),
            (json!("1"), true),
            (json!("t"), true),
            (json!("false"), false),
            (json!("0"), false),
            (json!(""), false),
            (Value::Null, false),
        ] {
            let parsed = processors(json!({"log": {"forward": value.clone()}})).unwrap();
            assert_eq!(parsed[0].forward(), forward, "forward: {value}");
        }
        for value in [json!("yes"), json!(1), json!(["true"]), json!({})] {
            let (field, message) = refused(json!({"log": {"forward": value.clone()}}));
            assert_eq!(field, "processors.log.forward", "forward: {value}");
            assert!(message.starts_with("expected true or false"), "{message}");
        }
    }

    #[test]
    fn an_unknown_processor_is_refused_naming_it_and_the_known_ones() {
        assert_eq!(
            refused(json!({"log": {}, "foo": {}})),
            ("processors.foo".into(), "unknown processor; known: files, log, syslog".into())
        );
    }

    #[test]
    fn a_wrong_setting_is_refused_naming_its_key() {
        let cases = [
            (json!({"files": {"log_dir": 3}}), "processors.files.log_dir", "expected a string, got a number 3"),
            (json!({"files": {"log_dir": "var/log"}}), "processors.files.log_dir", "must be an absolute path"),
            (
                json!({"files": {"logdir": "/x"}}),
                "processors.files.logdir",
                "unknown setting (known: log_dir, forward)",
            ),
            (json!({"files": "/var/log"}), "processors.files", "expected an object of settings, got a string"),
            (json!({"log": {"log_dir": "/x"}}), "processors.log.log_dir", "unknown setting (known: forward)"),
            (json!({"syslog": {"address": "/dev/log"}}), "processors.syslog.address", "expected unix:///path"),
            (json!({"syslog": {"address": "udp://host"}}), "processors.syslog.address", "expected udp://host:port"),
            (json!({"syslog": {"address": "tcp://:514"}}), "processors.syslog.address", "expected tcp://host:port"),
            (
                json!({"syslog": {"address": "unix://dev/log"}}),
                "processors.syslog.address",
                "a unix address needs an absolute path",
            ),
            (json!({"syslog": {"tag": "two words"}}), "processors.syslog.tag", "expected at most 32 printable ASCII"),
            (json!({"syslog": {"facility": "cronn"}}), "processors.syslog.facility", "\"cronn\" is not one of kern"),
        ];
        for (value, field, message) in cases {
            let (got_field, got_message) = refused(value.clone());
            assert_eq!(got_field, field, "{value}");
            assert!(got_message.starts_with(message), "{value}: {got_message}");
        }
    }

    #[test]
    fn syslog_addresses_tags_and_facilities_are_read() {
        let parsed = processors(json!({"syslog": {
            "address": "udp://127.0.0.1:5514", "tag": "[dkron]", "facility": "LOCAL3", "forward": "true"
        }}))
        .unwrap();
        let expected = SyslogSettings {
            address: SyslogAddress::Udp("127.0.0.1:5514".into()),
            tag: "[dkron]".into(),
            facility: Facility(19),
            forward: true,
        };
        assert_eq!(parsed, vec![Processor::Syslog(expected)]);
        let address = |text: &str| match &processors(json!({"syslog": {"address": text}})).unwrap()[0] {
            Processor::Syslog(settings) => settings.address.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(address("tcp://[::1]:601"), SyslogAddress::Tcp("[::1]:601".into()));
        assert_eq!(address("unix:///run/log.sock"), SyslogAddress::Unix("/run/log.sock".into()));
    }
}
