//! [`WriteError`]: why a write (or a read barrier, or a membership change) did not happen, in the core's terms.
//! The HTTP layer (`kairos-http`) maps each kind to a status code; node-to-node calls carry it as a number and a
//! message (the wire format every version has spoken, see [`WriteError::wire`]).

use kairos_store::Refusal;

/// What kind of failure a [`WriteError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No leader, a leader change, a timeout, an unreachable leader: retrying later may work.
    Unavailable,
    /// This node's storage failed (a full disk); it is exiting.
    StorageFailed,
    /// The thing the write names does not exist.
    NotFound,
    /// The write conflicts with the current state (a changed version, a paused cluster, a removal of the leader).
    Conflict,
    /// The write is invalid; the message names the field.
    Invalid,
    /// Anything else (a store error).
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    pub failure: Failure,
    pub message: String,
}

impl WriteError {
    pub fn new(failure: Failure, message: impl Into<String>) -> WriteError {
        WriteError { failure, message: message.into() }
    }

    pub fn unavailable(message: impl Into<String>) -> WriteError {
        WriteError::new(Failure::Unavailable, message)
    }

    pub fn is_unavailable(&self) -> bool {
        self.failure == Failure::Unavailable
    }

    /// The error as node-to-node answers carry it: `(code, message)`, the code being the HTTP status an API
    /// answer would have (so older nodes, which sent the status itself, read it the same).
    pub fn wire(&self) -> (u16, String) {
        let code = match self.failure {
            Failure::Unavailable => 503,
            Failure::StorageFailed => 507,
            Failure::NotFound => 404,
            Failure::Conflict => 409,
            Failure::Invalid => 400,
            Failure::Internal => 500,
        };
        (code, self.message.clone())
    }

    /// The error a node-to-node answer carried (see [`WriteError::wire`]); an unknown code reads as unavailable.
    pub fn from_wire(code: Option<u16>, message: String) -> WriteError {
        let failure = match code {
            Some(507) => Failure::StorageFailed,
            Some(404) => Failure::NotFound,
            Some(409) => Failure::Conflict,
            Some(400) => Failure::Invalid,
            Some(500) => Failure::Internal,
            _ => Failure::Unavailable,
        };
        WriteError::new(failure, message)
    }
}

impl From<Refusal> for WriteError {
    fn from(refusal: Refusal) -> WriteError {
        match refusal {
            Refusal::NotFound(message) => WriteError::new(Failure::NotFound, message),
            Refusal::Conflict(message) => WriteError::new(Failure::Conflict, message),
            Refusal::Invalid { field, message } => WriteError::new(Failure::Invalid, format!("{field}: {message}")),
        }
    }
}

impl From<redb::Error> for WriteError {
    fn from(err: redb::Error) -> WriteError {
        WriteError::new(Failure::Internal, format!("store: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_survives_the_wire() {
        for failure in [
            Failure::Unavailable,
            Failure::StorageFailed,
            Failure::NotFound,
            Failure::Conflict,
            Failure::Invalid,
            Failure::Internal,
        ] {
            let (code, message) = WriteError::new(failure, "m").wire();
            assert_eq!(WriteError::from_wire(Some(code), message).failure, failure);
        }
        assert_eq!(WriteError::from_wire(None, "x".into()).failure, Failure::Unavailable);
    }
}
