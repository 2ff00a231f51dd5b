//! Write-only secrets: values stored once (`PUT /v1/secrets/{name}`), never shown again, that job definitions
//! reference as `{{secret "name"}}` in any value of their `executor_config` (a shell job's `env` or `command`, an
//! HTTP job's header, URL or body, a broker's password…).
//!
//! A job's JSON keeps the reference, never the value. The leader sends the values a run needs with its order; the
//! node that runs it puts them in place just before the executor starts, and masks them (`***`) in everything the
//! run prints. This module holds the pure parts: names, values, finding and replacing references.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::FieldError;
use crate::Timestamp;

/// The longest secret name, in characters.
pub const SECRET_NAME_CHARS_MAX: usize = 128;
/// The largest secret value, in bytes.
pub const SECRET_VALUE_BYTES_MAX: usize = 64 * 1024;
/// What masked output shows in place of a secret's value.
pub const MASK: &str = "***";
/// Values shorter than this are not masked in output (a one-letter value would mask every such letter); they are
/// still resolved.
pub const MASKED_BYTES_MIN: usize = 4;

/// A secret's value: shown as `***` by `Debug`, so a logged command or order cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(pub String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A secret as the API lists it: its name and when it was set, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A secret name: letters, digits, `.`, `_`, `-`; 1 to [`SECRET_NAME_CHARS_MAX`] characters.
pub fn check_secret_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if name.chars().count() > SECRET_NAME_CHARS_MAX {
        return Err(FieldError::new(field, format!("longer than {SECRET_NAME_CHARS_MAX} characters")));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(FieldError::new(field, format!("'{name}' contains '{c}'; use letters, digits, '.', '_' and '-'")));
    }
    Ok(())
}

/// A secret value: not empty, at most [`SECRET_VALUE_BYTES_MAX`] bytes, no NUL byte (it may end up in an
/// environment variable or a command line).
pub fn check_secret_value(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > SECRET_VALUE_BYTES_MAX {
        return Err(FieldError::new(field, format!("longer than {SECRET_VALUE_BYTES_MAX} bytes")));
    }
    if value.contains('\0') {
        return Err(FieldError::new(field, "contains a NUL byte"));
    }
    Ok(())
}

/// One piece of a config value: literal text or a reference.
enum Piece<'a> {
    Text(&'a str),
    Secret(&'a str),
}

const OPEN: &str = "{{";
const CLOSE: &str = "}}";

/// Splits a value into text and `{{secret "name"}}` references (spaces inside the braces are allowed). Other
/// `{{…}}` text is left as it is: it is not ours to interpret. A `{{secret` that is not a well-formed reference is
/// an error naming it.
fn pieces(value: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find(OPEN) {
        let inner_start = start + OPEN.len();
        let Some(len) = rest[inner_start..].find(CLOSE) else { break };
        let inner = rest[inner_start..inner_start + len].trim();
        let Some(argument) = inner.strip_prefix("secret") else {
            out.push(Piece::Text(&rest[..inner_start + len + CLOSE.len()]));
            rest = &rest[inner_start + len + CLOSE.len()..];
            continue;
        };
        let name = argument.trim().strip_prefix('"').and_then(|n| n.strip_suffix('"'));
        let name = match name {
            Some(name) if !argument.starts_with(|c: char| c.is_ascii_alphanumeric()) => name,
            _ => return Err(format!("'{{{{{inner}}}}}' is not a secret reference; write {{{{secret \"name\"}}}}")),
        };
        out.push(Piece::Text(&rest[..start]));
        out.push(Piece::Secret(name));
        rest = &rest[inner_start + len + CLOSE.len()..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// The secret names an executor config references, each checked; errors name the config key.
pub fn referenced_secrets(config: &BTreeMap<String, String>) -> Result<BTreeSet<String>, FieldError> {
    let mut names = BTreeSet::new();
    for (key, value) in config {
        let field = format!("executor_config.{key}");
        for piece in pieces(value).map_err(|message| FieldError::new(&field, message))? {
            if let Piece::Secret(name) = piece {
                check_secret_name(&field, name)?;
                names.insert(name.to_owned());
            }
        }
    }
    Ok(names)
}

/// The config with every reference replaced by its value; an error names a secret `values` does not hold.
pub fn resolve_secrets(
    config: &BTreeMap<String, String>,
    values: &BTreeMap<String, SecretValue>,
) -> Result<BTreeMap<String, String>, String> {
    let mut resolved = BTreeMap::new();
    for (key, value) in config {
        let mut out = String::with_capacity(value.len());
        for piece in pieces(value).map_err(|message| format!("executor_config.{key}: {message}"))? {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Secret(name) => match values.get(name) {
                    Some(secret) => out.push_str(secret.expose()),
                    None => return Err(format!("executor_config.{key}: secret '{name}' does not exist")),
                },
            }
        }
        resolved.insert(key.clone(), out);
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn references_are_found_in_every_value() {
        let c = config(&[
            ("env", r#"DB_PASS={{secret "db_pass"}},USER=app"#),
            ("command", r#"curl -u "x:{{ secret "api.key" }}" {{secret "db_pass"}}"#),
            ("body", "{{.JobName}} stays"),
        ]);
        let names: Vec<String> = referenced_secrets(&c).unwrap().into_iter().collect();
        assert_eq!(names, ["api.key", "db_pass"]);
    }

    #[test]
    fn references_resolve_and_other_braces_stay() {
        let c = config(&[("env", r#"A={{secret "a"}},B={{secret "b"}}{{x}}"#)]);
        let values = |pairs: &[(&str, &str)]| -> BTreeMap<String, SecretValue> {
            pairs.iter().map(|(k, v)| (k.to_string(), SecretValue(v.to_string()))).collect()
        };
        assert_eq!(resolve_secrets(&c, &values(&[("a", "one"), ("b", "two")])).unwrap()["env"], "A=one,B=two{{x}}");
        let missing = resolve_secrets(&c, &values(&[("a", "one")])).unwrap_err();
        assert_eq!(format!("{:?}", SecretValue("one".into())), "***");
        assert_eq!(missing, "executor_config.env: secret 'b' does not exist");
    }

    #[test]
    fn malformed_references_name_the_key() {
        for bad in [r#"{{secret db}}"#, r#"{{secret "db}}"#, r#"{{secrets "db"}}"#, r#"{{secret}}"#] {
            let err = referenced_secrets(&config(&[("command", bad)])).unwrap_err();
            assert_eq!(err.field, "executor_config.command", "{bad}: {err:?}");
        }
        let err = referenced_secrets(&config(&[("command", r#"{{secret "a/b"}}"#)])).unwrap_err();
        assert!(err.message.contains("contains '/'"), "{err:?}");
    }

    #[test]
    fn names_and_values_are_checked() {
        assert!(check_secret_name("name", "db_pass-1.x").is_ok());
        assert!(check_secret_name("name", "").is_err());
        assert!(check_secret_name("name", "a b").is_err());
        assert!(check_secret_value("value", "").is_err());
        assert!(check_secret_value("value", "a\0b").is_err());
        assert!(check_secret_value("value", &"x".repeat(SECRET_VALUE_BYTES_MAX + 1)).is_err());
        assert!(check_secret_value("value", "hunter22").is_ok());
    }
}
