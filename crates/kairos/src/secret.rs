//! `kairos secret …`: write-only secrets, over a server's HTTP API like `kairos acl …` (same `--http-addr` and
//! `--token`). A value is read from standard input unless `--value` gives it (which leaves it in the shell's
//! history); it is never printed back.

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::acl::{HttpArgs, call};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create or replace a secret; its value comes from standard input (one trailing newline dropped).
    Put {
        name: String,
        /// The value itself, instead of standard input.
        #[arg(long)]
        value: Option<String>,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// List the secrets: names and when they were set, never values.
    List(HttpArgs),
    /// Delete a secret (jobs referencing it fail their next runs, naming it).
    Delete {
        name: String,
        #[command(flatten)]
        http: HttpArgs,
    },
}

pub fn run(command: SecretCommand) -> ExitCode {
    match secret(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kairos: {err}");
            ExitCode::FAILURE
        }
    }
}

fn secret(command: SecretCommand) -> Result<(), String> {
    match command {
        SecretCommand::Put { name, value, http } => {
            let value = match value {
                Some(value) => value,
                None => read_value()?,
            };
            let stored = call(&http, "PUT", &format!("/v1/secrets/{name}"), Some(json!({"value": value})))?;
            println!("Secret {} set at {}", str_of(&stored, "name"), str_of(&stored, "updated_at"));
        }
        SecretCommand::List(http) => {
            let secrets = call(&http, "GET", "/v1/secrets", None)?;
            for secret in secrets.as_array().into_iter().flatten() {
                println!("{}\tupdated {}", str_of(secret, "name"), str_of(secret, "updated_at"));
            }
        }
        SecretCommand::Delete { name, http } => {
            call(&http, "DELETE", &format!("/v1/secrets/{name}"), None)?;
            println!("Secret {name} deleted");
        }
    }
    Ok(())
}

/// The value from standard input, without the newline `echo` or a terminal adds.
fn read_value() -> Result<String, String> {
    let mut value = String::new();
    std::io::stdin().read_to_string(&mut value).map_err(|e| format!("reading the value from standard input: {e}"))?;
    let value = value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value);
    Ok(value.to_owned())
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}
