//! A user-facing validation error that always names the field it is about, so the API can answer
//! `{"error": "schedule: ..."}` and the UI can show the message next to the right input.

/// Invalid input in one field. `field` uses the JSON name (`executor_config.command` for nested keys).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}
