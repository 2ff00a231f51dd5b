//! The sql executor: runs one statement or a script on PostgreSQL (simple query protocol, so `;`-separated
//! statements run in one implicit transaction, as `psql -c` does) and writes, per statement, a bounded preview
//! of its rows (tab-separated, with the column names first) and its row count.
//!
//! Rows are streamed: only the previewed ones are formatted and the rest are counted, so a large result costs
//! no memory. When the timeout passes or the run is cancelled, the statement is cancelled on the server (a
//! cancel request on a connection of its own, the way `psql` does on Ctrl-C): dropping our end alone would leave
//! the backend running until the statement ends by itself.
//!
//! A connection runs one statement at a time and a cancel request cancels whatever it runs, so connections are
//! lent to one run at a time (`connections::Idle`). One goes back to the pool only after a run that ended
//! normally, and after a `ROLLBACK` and a `DISCARD ALL`, so no transaction or session setting leaks into the
//! next job's run.

use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::config::SqlConfig;
use crate::connections::Idle;
use crate::http::error_chain;
use crate::remote::{self, Ended, race};
use crate::spec::{Outcome, RunStatus};

pub(crate) type SqlConnections = Idle<Client>;

/// How long the cancel request may take; past this the run ends anyway and says the cancel is unconfirmed.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// How long resetting a connection after a run may take; past this the connection is dropped, not kept. The
/// reset runs after the job's own statement, outside its timeout, so it needs a bound of its own.
const RESET_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn run(
    connections: &SqlConnections,
    config: SqlConfig,
    mut capture: Capture,
    cancel: &CancellationToken,
) -> Outcome {
    let client = match race(checkout(connections, &config), config.timeout, cancel).await {
        Ended::Done(Ok(client)) => client,
        other => return remote::finish(capture, other.map(|r| r.map(drop)), config.timeout, &config.secrets),
    };
    let ended = race(execute(&client, &config, &mut capture), config.timeout, cancel).await;
    let (status, error) = match ended {
        Ended::Done(Ok(())) => {
            give_back(connections, &config, client).await;
            return capture.into_outcome(RunStatus::Succeeded, None, None);
        }
        failed @ Ended::Done(Err(_)) => return remote::finish(capture, failed, None, &config.secrets),
        Ended::TimedOut => (RunStatus::TimedOut, remote::timed_out(config.timeout)),
        Ended::Cancelled => (RunStatus::Cancelled, "cancelled".to_owned()),
    };
    let error = match cancel_on_server(&client).await {
        Ok(()) => format!("{error}; the statement was cancelled on the server"),
        Err(why) => format!("{error}; cancelling the statement on the server failed: {why}"),
    };
    capture.into_outcome(status, None, Some(config.secrets.scrub(&error)))
}

async fn checkout(connections: &SqlConnections, config: &SqlConfig) -> Result<Client, String> {
    if let Some(client) = connections.take(&config.url, |c| !c.is_closed()) {
        return Ok(client);
    }
    let (client, connection) =
        config.connect.connect(NoTls).await.map_err(|e| format!("cannot connect to PostgreSQL: {}", describe(&e)))?;
    // The connection does the I/O of the client; it ends when the client is dropped or the server goes away.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Resets the session and keeps the connection for the next run; a connection that cannot be reset is dropped.
async fn give_back(connections: &SqlConnections, config: &SqlConfig, client: Client) {
    // Separate round trips: DISCARD ALL may not run inside the implicit transaction of a multi-statement query.
    let reset = async {
        client.batch_execute("ROLLBACK").await?;
        client.batch_execute("DISCARD ALL").await
    };
    if let Ok(Ok(())) = tokio::time::timeout(RESET_WAIT, reset).await {
        connections.give_back(&config.url, client);
    }
}

async fn cancel_on_server(client: &Client) -> Result<(), String> {
    let token = client.cancel_token();
    match tokio::time::timeout(CANCEL_WAIT, token.cancel_query(NoTls)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {CANCEL_WAIT:?}")),
    }
}

/// Streams the results into the capture, one block per statement.
async fn execute(client: &Client, config: &SqlConfig, capture: &mut Capture) -> Result<(), String> {
    let stream = client.simple_query_raw(&config.statement).await.map_err(|e| describe(&e))?;
    let mut stream = pin!(stream);
    let mut block = Block::default();
    while let Some(message) = stream.next().await {
        match message.map_err(|e| describe(&e))? {
            SimpleQueryMessage::RowDescription(columns) => {
                let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
                capture.write(format!("{}\n", names.join("\t")).as_bytes());
                block.has_rows = true;
            }
            SimpleQueryMessage::Row(row) if block.shown < config.preview_rows => {
                let cells: Vec<String> = (0..row.len()).map(|i| cell(row.try_get(i).ok().flatten())).collect();
                capture.write(format!("{}\n", cells.join("\t")).as_bytes());
                block.shown += 1;
            }
            SimpleQueryMessage::CommandComplete(rows) => {
                capture.write(block.summary(rows).as_bytes());
                block = Block::default();
            }
            _ => {}
        }
    }
    Ok(())
}

/// What has been written of the current statement's result.
#[derive(Default)]
struct Block {
    has_rows: bool,
    shown: usize,
}

impl Block {
    fn summary(&self, rows: u64) -> String {
        if !self.has_rows {
            return format!("({rows} rows affected)\n");
        }
        if (self.shown as u64) < rows {
            return format!("({rows} rows, first {} shown)\n", self.shown);
        }
        format!("({rows} rows)\n")
    }
}

/// A value on one line: NULL spelled out, tabs and line breaks escaped so the columns stay aligned.
fn cell(value: Option<&str>) -> String {
    match value {
        None => "NULL".to_owned(),
        Some(text) => text.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n").replace('\r', "\\r"),
    }
}

/// A server error as `psql` shows it (severity, SQLSTATE, message, detail, hint); other errors with their causes.
fn describe(error: &tokio_postgres::Error) -> String {
    let Some(db) = error.as_db_error() else {
        return error_chain(error);
    };
    let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    if let Some(detail) = db.detail() {
        text.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = db.hint() {
        text.push_str(&format!("; hint: {hint}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_stay_on_one_line_and_null_is_spelled_out() {
        assert_eq!(cell(None), "NULL");
        assert_eq!(cell(Some("a\tb\nc\\")), "a\\tb\\nc\\\\");
    }

    #[test]
    fn the_summary_says_how_much_of_the_result_is_shown() {
        assert_eq!(Block::default().summary(3), "(3 rows affected)\n");
        assert_eq!(Block { has_rows: true, shown: 2 }.summary(2), "(2 rows)\n");
        assert_eq!(Block { has_rows: true, shown: 2 }.summary(50), "(50 rows, first 2 shown)\n");
    }
}
