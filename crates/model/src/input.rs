//! What a client may send for a job, read from JSON one field at a time so that every mistake names its field.
//!
//! [`JobInput`] has one optional member per field a client may write: the same type serves create (defaults
//! fill the gaps) and patch (present fields override), and [`crate::Job::from_input`] and [`crate::Job::apply`]
//! turn it into a validated job. Reading happens in two steps. The body must be well-formed JSON and an object,
//! else the error is about the `body`. Then each member is checked against its field's type, and a wrong one is
//! refused in the user's words: `retries: expected a whole number, got a string "3"`, never serde's
//! `invalid type: string "3", expected u32`. Members of `tags`, `metadata` and `executor_config` are named by
//! their path (`executor_config.timeout`).
//!
//! A JSON `null` counts as absent, as serde's `Option` has always read it, so clients that send every field
//! keep working. Unknown fields are refused, because a typo must not silently become a no-op; read-only fields
//! (`id`, `status`, `next`, …) are accepted and ignored, so a client can send back a job exactly as it read it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kairos_schedule::jiff::Timestamp;
use serde::de::value::SeqAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::FieldError;

/// What a client may send for a job; `None` leaves the field as it is (patch) or at its default (create).
#[derive(Debug, Clone, Default)]
pub struct JobInput {
    pub name: Option<String>,
    pub displayname: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub owner: Option<String>,
    pub owner_email: Option<String>,
    pub disabled: Option<bool>,
    pub tags: Option<BTreeMap<String, String>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub retries: Option<u32>,
    pub parent_job: Option<String>,
    pub processors: Option<BTreeMap<String, Value>>,
    pub concurrency: Option<String>,
    pub on_overload: Option<String>,
    pub executor: Option<String>,
    pub executor_config: Option<BTreeMap<String, String>>,
    pub ephemeral: Option<bool>,
    pub starts_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub catch_up: Option<String>,
    pub catch_up_window: Option<String>,
    pub retry_backoff: Option<String>,
    pub retry_backoff_max: Option<String>,
    pub executions_retained: Option<u32>,
    pub notify: Option<BTreeMap<String, Value>>,
}

/// Fields the API shows but a client cannot set: accepted with any value and ignored.
const READ_ONLY_FIELDS: [&str; 10] = [
    "id",
    "success_count",
    "error_count",
    "last_success",
    "last_error",
    "dependent_jobs",
    "status",
    "next",
    "created_at",
    "updated_at",
];

/// The field that names the request body as a whole.
const BODY: &str = "body";

/// Longest piece of a wrong string value quoted back in an error, in characters.
const QUOTED_CHARS_MAX: usize = 40;

impl JobInput {
    /// Reads a request body: JSON, an object, and every member of its field's type.
    pub fn from_json(body: &[u8]) -> Result<JobInput, FieldError> {
        if body.trim_ascii().is_empty() {
            return Err(FieldError::new(BODY, "empty; expected a JSON object (a job)"));
        }
        match serde_json::from_slice::<Body>(body).map_err(syntax_error)? {
            Body::Object(members) => JobInput::from_members(members),
            Body::Other(value) => Err(not_a_job(&value)),
        }
    }

    /// Reads a job that is already JSON, such as one element of a `/v1/restore` array.
    pub fn from_value(value: Value) -> Result<JobInput, FieldError> {
        match value {
            Value::Object(members) => JobInput::from_members(members),
            other => Err(not_a_job(&other)),
        }
    }

    fn from_members(members: impl IntoIterator<Item = (String, Value)>) -> Result<JobInput, FieldError> {
        let mut input = JobInput::default();
        let mut seen = BTreeSet::new();
        for (name, value) in members {
            if !seen.insert(name.clone()) {
                return Err(FieldError::new(name, "given more than once"));
            }
            input.set(&name, value)?;
        }
        Ok(input)
    }

    /// Sets the field `name` from its JSON value, or says what is wrong with it.
    fn set(&mut self, name: &str, value: Value) -> Result<(), FieldError> {
        let field = Field { name, value };
        match name {
            "name" => self.name = field.text()?,
            "displayname" => self.displayname = field.text()?,
            "schedule" => self.schedule = field.text()?,
            "timezone" => self.timezone = field.text()?,
            "owner" => self.owner = field.text()?,
            "owner_email" => self.owner_email = field.text()?,
            "disabled" => self.disabled = field.flag()?,
            "tags" => self.tags = field.text_map()?,
            "metadata" => self.metadata = field.text_map()?,
            "retries" => self.retries = field.whole_number()?,
            "parent_job" => self.parent_job = field.text()?,
            "processors" => self.processors = field.object()?,
            "notify" => self.notify = field.object()?,
            "concurrency" => self.concurrency = field.text()?,
            "on_overload" => self.on_overload = field.text()?,
            "executor" => self.executor = field.text()?,
            "executor_config" => self.executor_config = field.text_map()?,
            "ephemeral" => self.ephemeral = field.flag()?,
            "starts_at" => self.starts_at = field.time()?,
            "expires_at" => self.expires_at = field.time()?,
            "catch_up" => self.catch_up = field.text()?,
            "catch_up_window" => self.catch_up_window = field.text()?,
            "retry_backoff" => self.retry_backoff = field.text()?,
            "retry_backoff_max" => self.retry_backoff_max = field.text()?,
            "executions_retained" => self.executions_retained = field.whole_number()?,
            read_only if READ_ONLY_FIELDS.contains(&read_only) => {}
            unknown => return Err(FieldError::new(unknown, "unknown field (neither Dkron nor Kairos knows it)")),
        }
        Ok(())
    }
}

/// One member of the body: its field's name and the value sent. Each reader answers `None` for `null`.
struct Field<'a> {
    name: &'a str,
    value: Value,
}

impl Field<'_> {
    fn wrong_type(&self, expected: &str) -> FieldError {
        FieldError::new(self.name, format!("expected {expected}, got {}", describe(&self.value)))
    }

    fn text(self) -> Result<Option<String>, FieldError> {
        match self.value {
            Value::Null => Ok(None),
            Value::String(text) => Ok(Some(text)),
            _ => Err(self.wrong_type("a string")),
        }
    }

    fn flag(self) -> Result<Option<bool>, FieldError> {
        match self.value {
            Value::Null => Ok(None),
            Value::Bool(flag) => Ok(Some(flag)),
            _ => Err(self.wrong_type("true or false")),
        }
    }

    /// A whole number that fits in 32 bits. `3.0` is refused like `3.5`: Dkron (Go) refuses both too.
    fn whole_number(self) -> Result<Option<u32>, FieldError> {
        let Value::Number(number) = &self.value else {
            return match self.value {
                Value::Null => Ok(None),
                _ => Err(self.wrong_type("a whole number")),
            };
        };
        match (number.as_u64(), number.as_i64()) {
            (Some(n), _) => {
                u32::try_from(n).map(Some).map_err(|_| self.wrong_type(&format!("a whole number up to {}", u32::MAX)))
            }
            (None, Some(_)) => Err(self.wrong_type("a whole number, 0 or more")),
            (None, None) => Err(self.wrong_type("a whole number")),
        }
    }

    fn time(self) -> Result<Option<Timestamp>, FieldError> {
        const EXPECTED: &str = r#"an RFC 3339 time such as "2026-12-31T23:59:00Z", or null"#;
        let text = match &self.value {
            Value::Null => return Ok(None),
            Value::String(text) => text,
            _ => return Err(self.wrong_type(EXPECTED)),
        };
        text.parse::<Timestamp>().map(Some).map_err(|error| {
            FieldError::new(self.name, format!("{} is not {EXPECTED} ({error})", describe(&self.value)))
        })
    }

    /// An object whose values are all strings (`tags`, `metadata`, `executor_config`); a wrong value is named
    /// by its path, `tags.role`.
    fn text_map(self) -> Result<Option<BTreeMap<String, String>>, FieldError> {
        let members = match self.value {
            Value::Null => return Ok(None),
            Value::Object(members) => members,
            _ => return Err(self.wrong_type(r#"an object of strings, such as {"key": "value"}"#)),
        };
        let mut map = BTreeMap::new();
        for (key, value) in members {
            let path = format!("{}.{key}", self.name);
            let Value::String(text) = value else {
                let mut problem = format!("expected a string, got {}", describe(&value));
                // Dkron's configs are strings throughout, and `"timeout": 30` is the usual slip: show the fix.
                if value.is_number() || value.is_boolean() {
                    problem.push_str(&format!(" (write \"{value}\", in quotes)"));
                }
                return Err(FieldError::new(path, problem));
            };
            map.insert(key, text);
        }
        Ok(Some(map))
    }

    /// An object with any values (`processors`, whose settings are the processors' own business).
    fn object(self) -> Result<Option<BTreeMap<String, Value>>, FieldError> {
        match self.value {
            Value::Null => Ok(None),
            Value::Object(members) => Ok(Some(members.into_iter().collect())),
            _ => Err(self.wrong_type("an object")),
        }
    }
}

/// A JSON value in a few words, for `got …`: `a string "3"`, `a number 2.5`, `true`, `null`, `an array`.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => format!("a number {number}"),
        Value::String(text) => format!("a string {}", quote(text)),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// `text` in JSON quotes with its escapes (so a NUL shows as `\u0000`), shortened when long.
fn quote(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(QUOTED_CHARS_MAX).collect();
    let quoted = Value::String(head).to_string();
    if chars.next().is_some() { format!("{quoted}…") } else { quoted }
}

fn not_a_job(value: &Value) -> FieldError {
    FieldError::new(BODY, format!("expected a JSON object (a job), got {}", describe(value)))
}

/// Malformed JSON: where, then what. serde_json puts the place last (`… at line 1 column 5`); it reads better
/// first, and the column is what a user looks for in a long body.
fn syntax_error(error: serde_json::Error) -> FieldError {
    let text = error.to_string();
    let place = format!(" at line {} column {}", error.line(), error.column());
    let what = text.strip_suffix(&place).unwrap_or(&text);
    FieldError::new(BODY, format!("invalid JSON{place}: {what}"))
}

/// A parsed body: an object's members as written, or any other JSON value (which is an error, reported with
/// its type). Members are kept in a list rather than a `serde_json::Map` so that a field given twice can be
/// refused; a map would silently keep the last value.
enum Body {
    Object(Vec<(String, Value)>),
    Other(Value),
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Body, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Value>()? {
            members.push(member);
        }
        Ok(Body::Object(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Body, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(Body::Other)
    }

    fn visit_unit<E>(self) -> Result<Body, E> {
        Ok(Body::Other(Value::Null))
    }

    fn visit_bool<E>(self, flag: bool) -> Result<Body, E> {
        Ok(Body::Other(Value::Bool(flag)))
    }

    fn visit_i64<E>(self, number: i64) -> Result<Body, E> {
        Ok(Body::Other(Value::from(number)))
    }

    fn visit_u64<E>(self, number: u64) -> Result<Body, E> {
        Ok(Body::Other(Value::from(number)))
    }

    fn visit_f64<E>(self, number: f64) -> Result<Body, E> {
        Ok(Body::Other(Value::from(number)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Body, E> {
        Ok(Body::Other(Value::from(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field a client may write, each with a value of the wrong type and the error it must get.
    const WRONG_TYPES: [(&str, &str, &str); 25] = [
        ("name", "3", "name: expected a string, got a number 3"),
        ("displayname", "[]", "displayname: expected a string, got an array"),
        ("schedule", "{}", "schedule: expected a string, got an object"),
        ("timezone", "true", "timezone: expected a string, got true"),
        ("owner", "1.5", "owner: expected a string, got a number 1.5"),
        ("owner_email", "false", "owner_email: expected a string, got false"),
        ("disabled", r#""yes""#, r#"disabled: expected true or false, got a string "yes""#),
        ("tags", r#"["web"]"#, r#"tags: expected an object of strings, such as {"key": "value"}, got an array"#),
        (
            "metadata",
            r#""a=b""#,
            r#"metadata: expected an object of strings, such as {"key": "value"}, got a string "a=b""#,
        ),
        ("retries", r#""3""#, r#"retries: expected a whole number, got a string "3""#),
        ("parent_job", "{}", "parent_job: expected a string, got an object"),
        ("processors", "[]", "processors: expected an object, got an array"),
        ("notify", r#""failure""#, r#"notify: expected an object, got a string "failure""#),
        ("concurrency", "1", "concurrency: expected a string, got a number 1"),
        ("on_overload", "2", "on_overload: expected a string, got a number 2"),
        ("executor", "true", "executor: expected a string, got true"),
        (
            "executor_config",
            r#""echo""#,
            r#"executor_config: expected an object of strings, such as {"key": "value"}, got a string "echo""#,
        ),
        ("ephemeral", "1", "ephemeral: expected true or false, got a number 1"),
        (
            "starts_at",
            "1767225600",
            r#"starts_at: expected an RFC 3339 time such as "2026-12-31T23:59:00Z", or null, got a number 1767225600"#,
        ),
        (
            "expires_at",
            "{}",
            r#"expires_at: expected an RFC 3339 time such as "2026-12-31T23:59:00Z", or null, got an object"#,
        ),
        ("catch_up", "false", "catch_up: expected a string, got false"),
        ("catch_up_window", "3600", "catch_up_window: expected a string, got a number 3600"),
        ("retry_backoff", "1", "retry_backoff: expected a string, got a number 1"),
        ("retry_backoff_max", "[]", "retry_backoff_max: expected a string, got an array"),
        ("executions_retained", "true", "executions_retained: expected a whole number, got true"),
    ];

    fn error(body: &str) -> String {
        JobInput::from_json(body.as_bytes()).expect_err(body).to_string()
    }

    #[test]
    fn a_wrong_type_in_any_writable_field_is_refused_naming_the_field() {
        for (field, value, wanted) in WRONG_TYPES {
            let body = format!(r#"{{"executor":"shell","{field}":{value}}}"#);
            let body = if field == "executor" { format!(r#"{{"{field}":{value}}}"#) } else { body };
            assert_eq!(error(&body), wanted, "{body}");
        }
    }

    #[test]
    fn every_writable_field_is_in_the_table_and_takes_null_as_absent() {
        for (field, _, _) in WRONG_TYPES {
            let input = JobInput::from_json(format!(r#"{{"{field}":null}}"#).as_bytes()).expect(field);
            assert_eq!(format!("{input:?}"), format!("{:?}", JobInput::default()), "{field}");
        }
        // The table and the struct agree: its Debug form lists every member once.
        let members = format!("{:?}", JobInput::default()).matches(": None").count();
        assert_eq!(members, WRONG_TYPES.len());
    }

    #[test]
    fn values_inside_tags_metadata_and_executor_config_are_named_by_their_path() {
        let cases = [
            (r#"{"tags":{"role":3}}"#, r#"tags.role: expected a string, got a number 3 (write "3", in quotes)"#),
            (r#"{"metadata":{"team":null}}"#, "metadata.team: expected a string, got null"),
            (
                r#"{"executor_config":{"command":["ls","-l"]}}"#,
                "executor_config.command: expected a string, got an array",
            ),
            (
                r#"{"executor_config":{"command":"ls","timeout":30}}"#,
                r#"executor_config.timeout: expected a string, got a number 30 (write "30", in quotes)"#,
            ),
            (
                r#"{"executor_config":{"shell":true}}"#,
                r#"executor_config.shell: expected a string, got true (write "true", in quotes)"#,
            ),
            (r#"{"executor_config":{"env":{"A":"1"}}}"#, "executor_config.env: expected a string, got an object"),
        ];
        for (body, wanted) in cases {
            assert_eq!(error(body), wanted, "{body}");
        }
        let input = JobInput::from_json(br#"{"processors":{"log":{"forward":true}}}"#).unwrap();
        assert_eq!(input.processors.unwrap()["log"], serde_json::json!({"forward": true}), "processors hold any JSON");
    }

    #[test]
    fn whole_numbers_say_what_range_they_need() {
        let cases = [
            (r#"{"retries":-1}"#, "retries: expected a whole number, 0 or more, got a number -1"),
            (r#"{"retries":2.5}"#, "retries: expected a whole number, got a number 2.5"),
            (r#"{"retries":3.0}"#, "retries: expected a whole number, got a number 3.0"),
            (
                r#"{"executions_retained":4294967296}"#,
                "executions_retained: expected a whole number up to 4294967295, got a number 4294967296",
            ),
        ];
        for (body, wanted) in cases {
            assert_eq!(error(body), wanted, "{body}");
        }
        assert_eq!(JobInput::from_json(br#"{"retries":4294967295}"#).unwrap().retries, Some(u32::MAX));
    }

    #[test]
    fn a_time_that_does_not_parse_is_quoted_with_the_reason() {
        let message = error(r#"{"starts_at":"tomorrow"}"#);
        assert!(
            message.starts_with(
                r#"starts_at: a string "tomorrow" is not an RFC 3339 time such as "2026-12-31T23:59:00Z""#
            ),
            "{message}"
        );
        let input = JobInput::from_json(br#"{"starts_at":"2026-01-01T00:00:00+01:00"}"#).unwrap();
        assert_eq!(input.starts_at.map(|t| t.to_string()), Some("2025-12-31T23:00:00Z".to_string()));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_as_a_body() {
        let cases = [
            ("[]", "body: expected a JSON object (a job), got an array"),
            (r#"[{"name":"a"}]"#, "body: expected a JSON object (a job), got an array"),
            (r#""x""#, r#"body: expected a JSON object (a job), got a string "x""#),
            ("null", "body: expected a JSON object (a job), got null"),
            ("3", "body: expected a JSON object (a job), got a number 3"),
            ("-3.5", "body: expected a JSON object (a job), got a number -3.5"),
            ("true", "body: expected a JSON object (a job), got true"),
            ("", "body: empty; expected a JSON object (a job)"),
            (" \n", "body: empty; expected a JSON object (a job)"),
        ];
        for (body, wanted) in cases {
            assert_eq!(error(body), wanted, "{body:?}");
        }
        assert_eq!(
            JobInput::from_value(serde_json::json!(["a"])).unwrap_err().to_string(),
            "body: expected a JSON object (a job), got an array"
        );
    }

    #[test]
    fn malformed_json_says_where_first() {
        assert_eq!(error(r#"{"name":"a",}"#), "body: invalid JSON at line 1 column 13: trailing comma");
        assert_eq!(error("{\n\"name\": nope}"), "body: invalid JSON at line 2 column 10: expected ident");
        assert_eq!(error(r#"{"name":"a"} x"#), "body: invalid JSON at line 1 column 14: trailing characters");
        assert_eq!(error(r#"{"name":"a""#), "body: invalid JSON at line 1 column 11: EOF while parsing an object");
    }

    #[test]
    fn unknown_and_repeated_fields_are_refused_by_name() {
        assert_eq!(error(r#"{"schedul":"@daily"}"#), "schedul: unknown field (neither Dkron nor Kairos knows it)");
        assert_eq!(error(r#"{"schedul":null}"#), "schedul: unknown field (neither Dkron nor Kairos knows it)");
        assert_eq!(error(r#"{"name":"a","retries":1,"name":"b"}"#), "name: given more than once");
    }

    #[test]
    fn read_only_fields_are_accepted_with_any_value_and_ignored() {
        for field in READ_ONLY_FIELDS {
            for value in ["null", "3", r#""x""#, "[1]", "{}"] {
                let body = format!(r#"{{"{field}":{value}}}"#);
                assert!(JobInput::from_json(body.as_bytes()).is_ok(), "{body}");
            }
        }
    }

    #[test]
    fn long_and_odd_strings_are_quoted_safely() {
        let long = "x".repeat(100);
        let message = error(&format!(r#"{{"retries":"{long}"}}"#));
        assert_eq!(message, format!(r#"retries: expected a whole number, got a string "{}"…"#, "x".repeat(40)));
        assert_eq!(error(r#"{"retries":"a\u0000b"}"#), r#"retries: expected a whole number, got a string "a\u0000b""#);
    }
}
