//! The Kairos data model: jobs and executions as the API shows them (Dkron's JSON, field for field, plus our
//! additions), and the validation that turns what a client sent into a job the store may accept.
//!
//! - [`job`]: the [`Job`] record, its policies ([`Concurrency`], [`CatchUp`], [`OnOverload`]) and its validation.
//! - [`input`]: [`JobInput`], what a client may send, read from JSON field by field so that a wrong type or an
//!   unknown field is refused naming the field.
//! - [`execution`]: the [`Execution`] record and its [`ExecutionStatus`] life cycle.
//! - [`acl`]: access-control tokens and policies, and whether a token may do something to a path.
//! - [`audit`]: the audit log's records and filters.
//! - [`processor`]: output processors (`files`, `log`, `syslog`) and their settings, read and checked.
//! - [`secret`]: write-only secrets, and the `{{secret "name"}}` references jobs make to them.
//! - [`error`]: [`FieldError`], a user-facing error that names the offending field.
//!
//! Nothing here does I/O; the store, the scheduler and the API all build on these types.

pub mod acl;
pub mod audit;
pub mod error;
pub mod execution;
pub mod input;
pub mod job;
pub mod processor;
pub mod secret;

pub use error::FieldError;
pub use execution::{
    Execution, ExecutionStatus, TARGET_SEPARATOR, Trigger, attempt_of, execution_id, slot_prefix, target_of,
};
pub use input::JobInput;
pub use job::{CatchUp, Concurrency, Job, OnOverload, Targets, tag_value};
pub use kairos_schedule::jiff::Timestamp;
