//! The sql executor's config (ours; Dkron has none): `url` (a PostgreSQL connection string, URL or
//! `key=value` form), `statement` (one statement or a script), `previewRows` and `timeout`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use super::{ConfigError, get, parse_timeout, required};
use crate::redact::Secrets;

/// Rows of each result shown in the output unless `previewRows` says otherwise.
const PREVIEW_ROWS_DEFAULT: usize = 10;
/// The most rows `previewRows` may ask for: the output is capped anyway, and a preview is not an export.
const PREVIEW_ROWS_MAX: usize = 1000;

#[derive(Debug, Clone)]
pub(crate) struct SqlConfig {
    /// The connection string as given: the key of the connection cache.
    pub url: String,
    pub connect: tokio_postgres::Config,
    /// Run with the simple query protocol, so a script of several statements works.
    pub statement: String,
    pub preview_rows: usize,
    /// `None` runs without a limit, as the shell executor does: a SQL job may be a long batch.
    pub timeout: Option<Duration>,
    pub secrets: Secrets,
}

impl SqlConfig {
    pub fn parse(config: &BTreeMap<String, String>) -> Result<SqlConfig, ConfigError> {
        let url = required(config, "url")?.trim().to_owned();
        // tokio-postgres' messages name the option at fault, never its value, so they are safe to pass on.
        let connect = tokio_postgres::Config::from_str(&url)
            .map_err(|e| ConfigError::key("url", format!("not a PostgreSQL connection string: {e}")))?;
        if connect.get_hosts().is_empty() {
            return Err(ConfigError::key("url", "names no host"));
        }
        if connect.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(ConfigError::key("url", "sslmode=require: TLS is not supported yet by the sql executor"));
        }
        let statement = required(config, "statement")?.to_owned();
        if statement.contains('\0') {
            return Err(ConfigError::key("statement", "contains a NUL byte, which PostgreSQL cannot take"));
        }
        let mut secrets = Secrets::new();
        if let Some(password) = connect.get_password() {
            secrets.add(&String::from_utf8_lossy(password));
        }
        if let Ok(parsed) = reqwest::Url::parse(&url) {
            secrets.add_url_password(&parsed);
        }
        Ok(SqlConfig {
            url,
            connect,
            statement,
            preview_rows: parse_preview_rows(get(config, "previewRows"))?,
            timeout: parse_timeout(config, None)?,
            secrets,
        })
    }
}

fn parse_preview_rows(text: &str) -> Result<usize, ConfigError> {
    if text.trim().is_empty() {
        return Ok(PREVIEW_ROWS_DEFAULT);
    }
    text.trim().parse::<usize>().ok().filter(|n| *n <= PREVIEW_ROWS_MAX).ok_or_else(|| {
        ConfigError::key("previewRows", format!("'{text}' is not a number of rows from 0 to {PREVIEW_ROWS_MAX}"))
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_rejected, check, map};
    use super::*;

    #[test]
    fn sql_configs_that_are_accepted() {
        let statement = ("statement", "SELECT 1");
        let accepted: &[&[(&str, &str)]] = &[
            &[("url", "postgres://app:pw@127.0.0.1:5432/db"), statement],
            &[("url", "postgresql://127.0.0.1/db?connect_timeout=5"), statement],
            &[("url", "host=127.0.0.1 port=5432 user=app password=pw dbname=db"), statement],
            &[("url", "postgres://h/db"), ("statement", "CREATE TABLE t(a int); INSERT INTO t VALUES (1);")],
            &[("url", "postgres://h/db"), statement, ("previewRows", "0"), ("timeout", "5m")],
            &[("url", "postgres://h/db?sslmode=disable"), statement, ("previewRows", "1000")],
        ];
        for pairs in accepted {
            assert_eq!(check("sql", pairs), Ok(()), "{pairs:?}");
        }
    }

    #[test]
    fn sql_configs_that_are_rejected() {
        let url = ("url", "postgres://h/db");
        let statement = ("statement", "SELECT 1");
        assert_rejected("sql", &[statement], "executor_config.url", "required");
        assert_rejected("sql", &[url], "executor_config.statement", "required");
        assert_rejected("sql", &[url, ("statement", "  ")], "executor_config.statement", "required");
        let cases = [
            (("url", "postgres://h:notaport/db"), "executor_config.url", "not a PostgreSQL connection string"),
            (("url", "host=h sslmode=require"), "executor_config.url", "TLS is not supported yet"),
            (("url", "dbname=x"), "executor_config.url", "names no host"),
            (("statement", "SELECT '\0'"), "executor_config.statement", "NUL byte"),
            (("previewRows", "many"), "executor_config.previewRows", "0 to 1000"),
            (("previewRows", "1001"), "executor_config.previewRows", "0 to 1000"),
            (("timeout", "1y"), "executor_config.timeout", "unknown unit"),
        ];
        for ((key, value), field, fragment) in cases {
            assert_rejected("sql", &[url, statement, (key, value)], field, fragment);
        }
    }

    #[test]
    fn the_password_is_a_secret_in_either_form_and_never_quoted() {
        for url in ["postgres://app:hunter2@h/db", "host=h user=app password=hunter2"] {
            let config = SqlConfig::parse(&map(&[("url", url), ("statement", "SELECT 1")])).unwrap();
            assert_eq!(config.secrets.scrub("hunter2"), "***", "{url}");
            assert_eq!(config.timeout, None);
            assert_eq!(config.preview_rows, PREVIEW_ROWS_DEFAULT);
        }
        let error = SqlConfig::parse(&map(&[("url", "postgres://app:hunter2@h:x/db"), ("statement", "S")]))
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
