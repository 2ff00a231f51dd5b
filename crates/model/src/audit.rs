//! The audit log: one record per write made through the API, the CLI or the UI (jobs, runs, cancels, pause, ACL,
//! secrets, restore, leave), whoever made it and however it ended, refusals included.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Who made a request when ACL is off: anyone could.
pub const ANONYMOUS: &str = "anonymous";
/// Who made a request that carried no valid token (refused with 401, or malformed).
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// One write request as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Its position in the log, assigned when it is stored (increasing, never reused).
    #[serde(default)]
    pub seq: u64,
    /// When the answer was given.
    pub at: Timestamp,
    /// The token's name, or [`ANONYMOUS`] (ACL off), or [`UNAUTHENTICATED`].
    pub token: String,
    /// The token's accessor id, when a token was recognized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessor_id: Option<String>,
    /// The client's address (`ip:port`) as the server saw it.
    pub client: String,
    /// The server that answered.
    pub node: String,
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The job the path names, if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The answer's HTTP status: 2xx done, 4xx refused, 5xx failed.
    pub status: u16,
}

/// What `GET /v1/audit` filters on.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// A token's name or accessor id.
    pub token: Option<String>,
    pub job: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl AuditFilter {
    pub fn matches(&self, record: &AuditRecord) -> bool {
        let token = self.token.as_ref().is_none_or(|t| record.token == *t || record.accessor_id.as_ref() == Some(t));
        let job = self.job.as_ref().is_none_or(|j| record.job.as_ref() == Some(j));
        let since = self.since.is_none_or(|s| record.at >= s);
        let until = self.until.is_none_or(|u| record.at < u);
        token && job && since && until
    }
}

/// The job a request path names: `/v1/jobs/{job}…` or the UI's `/ui/jobs/{job}…`.
pub fn job_of_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/jobs/").or_else(|| path.strip_prefix("/ui/jobs/"))?;
    let job = rest.split('/').next().filter(|j| !j.is_empty())?;
    Some(job.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_is_read_from_api_and_ui_paths() {
        assert_eq!(job_of_path("/v1/jobs/backup/run").as_deref(), Some("backup"));
        assert_eq!(job_of_path("/ui/jobs/backup/toggle").as_deref(), Some("backup"));
        assert_eq!(job_of_path("/v1/jobs"), None);
        assert_eq!(job_of_path("/v1/secrets/x"), None);
    }

    #[test]
    fn filters_match_token_name_or_accessor_and_a_time_window() {
        let at: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let record = AuditRecord {
            seq: 1,
            at,
            token: "ci".into(),
            accessor_id: Some("acc".into()),
            client: "127.0.0.1:1".into(),
            node: "n".into(),
            method: "POST".into(),
            path: "/v1/jobs/x/run".into(),
            job: Some("x".into()),
            status: 202,
        };
        assert!(AuditFilter { token: Some("ci".into()), ..Default::default() }.matches(&record));
        assert!(
            AuditFilter { token: Some("acc".into()), job: Some("x".into()), ..Default::default() }.matches(&record)
        );
        assert!(!AuditFilter { token: Some("other".into()), ..Default::default() }.matches(&record));
        assert!(
            AuditFilter { since: Some(at), until: Some(at + jiff::SignedDuration::from_secs(1)), ..Default::default() }
                .matches(&record)
        );
        assert!(!AuditFilter { until: Some(at), ..Default::default() }.matches(&record));
    }
}
