//! Write-only secrets in the replicated state: the `secrets` table maps a name to its value and when it was set.
//! Values leave the state only for the leader's orders (see `kairos_model::secret`); every other reader gets names
//! and times. A job may reference only secrets that exist, checked when the job is stored; a secret deleted later
//! fails the job's next run, naming it.

use std::collections::{BTreeMap, BTreeSet};

use kairos_model::Job;
use kairos_model::Timestamp;
use kairos_model::secret::{SecretInfo, SecretValue, check_secret_name, check_secret_value, referenced_secrets};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::command::{Refusal, Response};
use crate::state::{Applier, SECRETS, StateReader, decode, encode};

/// One row of the `secrets` table.
#[derive(Serialize, Deserialize)]
struct Stored {
    value: String,
    created_at: Timestamp,
    updated_at: Timestamp,
}

fn invalid(err: kairos_model::FieldError) -> Refusal {
    Refusal::Invalid { field: err.field, message: err.message }
}

impl Applier<'_> {
    pub(crate) fn secret_put(&mut self, name: &str, value: &str, at: Timestamp) -> Result<Response, redb::Error> {
        if let Err(err) = check_secret_name("name", name).and_then(|()| check_secret_value("value", value)) {
            return Ok(Response::refused(invalid(err)));
        }
        let created_at = match self.secrets.get(name)? {
            Some(bytes) => decode::<Stored>(bytes.value())?.created_at,
            None => at,
        };
        let row = Stored { value: value.to_owned(), created_at, updated_at: at };
        self.secrets.insert(name, encode(&row).as_slice())?;
        let info = SecretInfo { name: name.to_owned(), created_at, updated_at: at };
        Ok(Response { secret: Some(info), ..Response::default() })
    }

    pub(crate) fn secret_delete(&mut self, name: &str) -> Result<Response, redb::Error> {
        let Some(bytes) = self.secrets.remove(name)? else {
            return Ok(Response::refused(Refusal::NotFound(format!("secret '{name}' does not exist"))));
        };
        let row: Stored = decode(bytes.value())?;
        let info = SecretInfo { name: name.to_owned(), created_at: row.created_at, updated_at: row.updated_at };
        Ok(Response { secret: Some(info), ..Response::default() })
    }

    /// Why a job may not be stored because of its secret references (malformed, or naming no secret), if it may
    /// not.
    pub(crate) fn check_secret_references(&self, job: &Job) -> Result<Option<Refusal>, redb::Error> {
        let names = match referenced_secrets(&job.executor_config) {
            Ok(names) => names,
            Err(err) => return Ok(Some(invalid(err))),
        };
        for name in names {
            if self.secrets.get(name.as_str())?.is_none() {
                let field = "executor_config".to_owned();
                let message = format!("secret '{name}' does not exist; create it first (PUT /v1/secrets/{name})");
                return Ok(Some(Refusal::Invalid { field, message }));
            }
        }
        Ok(None)
    }
}

impl StateReader {
    /// Every secret's name and times, by name; never a value.
    pub fn secrets(&self) -> Result<Vec<SecretInfo>, redb::Error> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in txn.open_table(SECRETS)?.iter()? {
            let (name, bytes) = item?;
            let row: Stored = decode(bytes.value())?;
            out.push(SecretInfo {
                name: name.value().to_owned(),
                created_at: row.created_at,
                updated_at: row.updated_at,
            });
        }
        Ok(out)
    }

    /// The values of the named secrets that exist (for the orders of runs that reference them).
    pub fn secret_values(&self, names: &BTreeSet<String>) -> Result<BTreeMap<String, SecretValue>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SECRETS)?;
        let mut out = BTreeMap::new();
        for name in names {
            if let Some(bytes) = table.get(name.as_str())? {
                out.insert(name.clone(), SecretValue(decode::<Stored>(bytes.value())?.value));
            }
        }
        Ok(out)
    }
}
