//! Access-control tokens and policies in the replicated state: how the ACL commands apply, and how the edge of
//! the API reads them.
//!
//! The `acl` table holds three kinds of rows, told apart by a key prefix:
//! - `token/<accessor id>` → [`Token`] (with the SHA-256 of its secret, never the secret);
//! - `secret/<hex sha-256>` → accessor id, so a request's token is found with one lookup;
//! - `policy/<name>` → [`Policy`] (the built-in ones are not stored: they are code, see
//!   [`builtin_policies`]).
//!
//! `meta/acl_bootstrapped` records that the one bootstrap of the cluster happened. Applying is deterministic:
//! the proposer drew every id and secret and decided every instant; the state only checks and stores.

use kairos_model::acl::{Policy, Token, builtin_policies, check_policy, check_token, is_builtin};
use redb::{ReadableDatabase, ReadableTable};

use crate::command::{Refusal, Response};
use crate::state::{ACL, Applier, META, StateReader, decode, encode};

const META_ACL_BOOTSTRAPPED: &str = "acl_bootstrapped";
const TOKEN: &str = "token/";
const SECRET: &str = "secret/";
const POLICY: &str = "policy/";

fn invalid(err: kairos_model::FieldError) -> Response {
    Response::refused(Refusal::Invalid { field: err.field, message: err.message })
}

fn acl_response(token: Option<Token>, policy: Option<Policy>) -> Response {
    Response { acl_token: token, acl_policy: policy, ..Response::default() }
}

impl Applier<'_> {
    pub(crate) fn acl_bootstrap(&mut self, token: &Token) -> Result<Response, redb::Error> {
        if self.meta.get(META_ACL_BOOTSTRAPPED)?.is_some() {
            return Ok(Response::refused(Refusal::Conflict(
                "acl: the ACL system is already bootstrapped (once per cluster); use a management token to create \
                 more tokens"
                    .into(),
            )));
        }
        let response = self.acl_put_token(token)?;
        if response.refusal.is_none() {
            self.meta.insert(META_ACL_BOOTSTRAPPED, encode(&token.accessor_id).as_slice())?;
        }
        Ok(response)
    }

    pub(crate) fn acl_put_token(&mut self, token: &Token) -> Result<Response, redb::Error> {
        if let Err(err) = check_token(token) {
            return Ok(invalid(err));
        }
        for name in &token.policies {
            if !is_builtin(name) && self.acl.get(format!("{POLICY}{name}").as_str())?.is_none() {
                let message = format!("policy '{name}' does not exist");
                return Ok(Response::refused(Refusal::Invalid { field: "policies".into(), message }));
            }
        }
        let secret_key = format!("{SECRET}{}", token.secret_hash);
        if let Some(owner) = self.acl.get(secret_key.as_str())? {
            let owner: String = decode(owner.value())?;
            if owner != token.accessor_id {
                return Ok(Response::refused(Refusal::Conflict("secret: already used by another token".into())));
            }
        }
        let token_key = format!("{TOKEN}{}", token.accessor_id);
        let previous = match self.acl.get(token_key.as_str())? {
            Some(bytes) => Some(decode::<Token>(bytes.value())?),
            None => None,
        };
        if let Some(previous) = previous
            && previous.secret_hash != token.secret_hash
        {
            self.acl.remove(format!("{SECRET}{}", previous.secret_hash).as_str())?;
        }
        self.acl.insert(token_key.as_str(), encode(token).as_slice())?;
        self.acl.insert(secret_key.as_str(), encode(&token.accessor_id).as_slice())?;
        Ok(acl_response(Some(token.clone()), None))
    }

    pub(crate) fn acl_delete_token(&mut self, accessor_id: &str) -> Result<Response, redb::Error> {
        let Some(bytes) = self.acl.remove(format!("{TOKEN}{accessor_id}").as_str())? else {
            return Ok(Response::refused(Refusal::NotFound(format!("token '{accessor_id}' not found"))));
        };
        let token: Token = decode(bytes.value())?;
        drop(bytes);
        self.acl.remove(format!("{SECRET}{}", token.secret_hash).as_str())?;
        Ok(acl_response(Some(token), None))
    }

    pub(crate) fn acl_put_policy(&mut self, policy: &Policy) -> Result<Response, redb::Error> {
        if let Err(err) = check_policy(policy) {
            return Ok(invalid(err));
        }
        self.acl.insert(format!("{POLICY}{}", policy.name).as_str(), encode(policy).as_slice())?;
        Ok(acl_response(None, Some(policy.clone())))
    }

    /// Tokens that name a deleted policy keep the name; it grants nothing until a policy of that name exists again.
    pub(crate) fn acl_delete_policy(&mut self, name: &str) -> Result<Response, redb::Error> {
        if is_builtin(name) {
            let message = format!("'{name}' is a built-in policy and cannot be deleted");
            return Ok(Response::refused(Refusal::Invalid { field: "name".into(), message }));
        }
        let Some(bytes) = self.acl.remove(format!("{POLICY}{name}").as_str())? else {
            return Ok(Response::refused(Refusal::NotFound(format!("policy '{name}' not found"))));
        };
        let policy: Policy = decode(bytes.value())?;
        Ok(acl_response(None, Some(policy)))
    }
}

impl StateReader {
    /// Whether the cluster's one ACL bootstrap happened.
    pub fn acl_bootstrapped(&self) -> Result<bool, redb::Error> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(META)?.get(META_ACL_BOOTSTRAPPED)?.is_some())
    }

    /// The token whose secret hashes to `secret_hash`.
    pub fn acl_token_by_secret(&self, secret_hash: &str) -> Result<Option<Token>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ACL)?;
        let Some(accessor) = table.get(format!("{SECRET}{secret_hash}").as_str())? else {
            return Ok(None);
        };
        let accessor: String = decode(accessor.value())?;
        match table.get(format!("{TOKEN}{accessor}").as_str())? {
            Some(bytes) => Ok(Some(decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    pub fn acl_token(&self, accessor_id: &str) -> Result<Option<Token>, redb::Error> {
        let txn = self.db.begin_read()?;
        match txn.open_table(ACL)?.get(format!("{TOKEN}{accessor_id}").as_str())? {
            Some(bytes) => Ok(Some(decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every token, by accessor id.
    pub fn acl_tokens(&self) -> Result<Vec<Token>, redb::Error> {
        self.acl_rows(TOKEN)
    }

    /// A policy by name, built-in ones included.
    pub fn acl_policy(&self, name: &str) -> Result<Option<Policy>, redb::Error> {
        if let Some(builtin) = builtin_policies().into_iter().find(|p| p.name == name) {
            return Ok(Some(builtin));
        }
        let txn = self.db.begin_read()?;
        match txn.open_table(ACL)?.get(format!("{POLICY}{name}").as_str())? {
            Some(bytes) => Ok(Some(decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every policy by name, built-in ones included.
    pub fn acl_policies(&self) -> Result<Vec<Policy>, redb::Error> {
        let mut policies = builtin_policies();
        policies.extend(self.acl_rows::<Policy>(POLICY)?);
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(policies)
    }

    fn acl_rows<T: for<'de> serde::Deserialize<'de>>(&self, prefix: &str) -> Result<Vec<T>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ACL)?;
        let mut out = Vec::new();
        for item in table.range(prefix..)? {
            let (key, value) = item?;
            if !key.value().starts_with(prefix) {
                break;
            }
            out.push(decode(value.value())?);
        }
        Ok(out)
    }
}
