//! Output processors (Dkron's `files`, `log` and `syslog`), applied on the node that ran the run, right after it
//! ends and before its outcome is reported.
//!
//! Why here: this node has the full output (the execution record carries only its tail, see DESIGN.md), and what a
//! processor does with it must be known before the outcome goes into Raft, since a processor that does not forward
//! replaces the stored output. Dkron applies processors on the leader, to the output the agent sent it.
//!
//! What they get: the stored output (masked, and capped at the job's output limit with its marker), or the record's
//! tail when the output fitted in it. They run one after the other in the order of their names (`files`, `log`,
//! `syslog`; see `kairos_model::processor`), each getting what the previous one forwarded, as in Dkron. One that
//! does not forward replaces the output: the record's tail becomes its note (the file's path, `Output in kairos
//! log`, `Output in syslog`) and the stored output file is deleted, so every reader sees the note.
//!
//! Failures never fail the run nor lose its output: a processor that cannot do its work (an unwritable directory,
//! no syslog listening, a setting this version refuses, more than [`PROCESSOR_TIMEOUT`]) is logged as a warning and
//! treated as forwarding, and a line saying so (`[kairos: processor files failed, output kept: …]`) ends the
//! stored output. File writes go to the blocking pool, syslog is asynchronous: no processor holds an async thread,
//! so other runs start on time; the run itself keeps its place on the node until they are done.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use kairos_model::processor::{self, Processor};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::output::OutputStore;
use crate::spec::{Outcome, RunSpec, RunStatus, TAIL_BYTES};
use crate::syslog;

/// The longest one processor may take; past it the output is kept as if it had forwarded.
pub const PROCESSOR_TIMEOUT: Duration = Duration::from_secs(10);

/// The output that replaces a run's output when the `log` processor does not forward it (Dkron: `Output in dkron
/// log`).
pub const LOG_NOTE: &str = "Output in kairos log";
/// The output that replaces a run's output when the `syslog` processor does not forward it (Dkron's words).
pub const SYSLOG_NOTE: &str = "Output in syslog";

/// What the processors of one run need to know about it, taken from its spec before the run consumes it.
pub(crate) struct Processing {
    job_name: String,
    execution_id: String,
    processors: BTreeMap<String, Value>,
}

impl Processing {
    pub fn of(spec: &RunSpec) -> Option<Processing> {
        if spec.processors.is_empty() {
            return None;
        }
        Some(Processing {
            job_name: spec.job_name.clone(),
            execution_id: spec.execution_id.clone(),
            processors: spec.processors.clone(),
        })
    }

    /// Applies the processors to the run's output; answers the outcome with its output replaced, or with the note
    /// of a failure added.
    pub async fn apply(self, outputs: &OutputStore, mut outcome: Outcome) -> Outcome {
        let (job, id) = (self.job_name.as_str(), self.execution_id.as_str());
        let output = match read_stored(outputs, job, id).await {
            Ok(stored) => stored.unwrap_or_else(|| outcome.output_tail.clone()),
            Err(e) => {
                tracing::warn!(job, execution = id, "processors: cannot read the stored output, using its tail: {e}");
                outcome.output_tail.clone()
            }
        };
        let run = Run { job, id, succeeded: outcome.status == RunStatus::Succeeded };
        let applied = run.process_all(&self.processors, output).await;
        if let Some(note) = applied.replaced_by {
            if let Err(e) = outputs.delete(job, id) {
                tracing::warn!(job, execution = id, "processors: cannot delete the stored output they replaced: {e}");
            }
            outcome.output_tail.clear();
            add_to_tail(&mut outcome.output_tail, &note);
        }
        for (name, problem) in applied.failures {
            tracing::warn!(job, execution = id, "processor {name} failed, the output is kept: {problem}");
            let line = format!("\n[kairos: processor {name} failed, output kept: {problem}]\n");
            add_to_tail(&mut outcome.output_tail, &line);
            if let Err(e) = outputs.append(job, id, line.as_bytes()) {
                tracing::warn!(job, execution = id, "cannot add the processor's failure to the stored output: {e}");
            }
        }
        debug_assert!(outcome.output_tail.len() <= TAIL_BYTES, "the record's tail stays bounded");
        outcome
    }
}

/// What the processors did: the output that replaces the run's (when one did not forward), and which failed why.
struct Applied {
    replaced_by: Option<String>,
    failures: Vec<(String, String)>,
}

/// The stored output of a run (`None` when its tail is all of it), read on the blocking pool.
async fn read_stored(outputs: &OutputStore, job: &str, id: &str) -> io::Result<Option<String>> {
    let (outputs, job, id) = (outputs.clone(), job.to_string(), id.to_string());
    tokio::task::spawn_blocking(move || outputs.read(&job, &id)).await.map_err(io::Error::other)?
}

/// Appends `text` to a tail, dropping its start so it stays within [`TAIL_BYTES`] on a character boundary.
fn add_to_tail(tail: &mut String, text: &str) {
    tail.push_str(text);
    if tail.len() > TAIL_BYTES {
        let mut from = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(from) {
            from += 1;
        }
        tail.drain(..from);
    }
}

/// One run's identity, as processors show it.
struct Run<'a> {
    job: &'a str,
    id: &'a str,
    succeeded: bool,
}

impl Run<'_> {
    /// Applies each processor in turn to what the previous one forwarded. A failed one counts as forwarding.
    async fn process_all(&self, processors: &BTreeMap<String, Value>, mut output: String) -> Applied {
        let mut applied = Applied { replaced_by: None, failures: Vec::new() };
        for (name, settings) in processors {
            // Read again although the API checked it: the job may predate this version.
            let processor = match processor::parse_one(name, settings) {
                Ok(processor) => processor,
                Err(e) => {
                    applied.failures.push((name.clone(), e.message));
                    continue;
                }
            };
            let result = tokio::time::timeout(PROCESSOR_TIMEOUT, self.process(&processor, &output)).await;
            match result {
                Ok(Ok(note)) if !processor.forward() => {
                    output = note.clone();
                    applied.replaced_by = Some(note);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => applied.failures.push((name.clone(), e.to_string())),
                Err(_) => applied.failures.push((name.clone(), format!("no answer within {PROCESSOR_TIMEOUT:?}"))),
            }
        }
        applied
    }

    /// Sends `output` where `processor` says; answers the note that replaces the output when it is not forwarded.
    async fn process(&self, processor: &Processor, output: &str) -> io::Result<String> {
        match processor {
            Processor::Files { log_dir, .. } => self.write_file(log_dir, output).await,
            Processor::Log { .. } => {
                self.log(output);
                Ok(LOG_NOTE.to_string())
            }
            Processor::Syslog(settings) => {
                let hostname = syslog::hostname();
                let sender = syslog::Sender {
                    settings,
                    succeeded: self.succeeded,
                    hostname: &hostname,
                    pid: std::process::id(),
                };
                let prefix = format!("job={} execution={}: ", self.job, self.id);
                sender.send(&syslog::texts(&prefix, output)).await?;
                Ok(SYSLOG_NOTE.to_string())
            }
        }
    }

    /// `files`: the output goes to `<log_dir>/<job>.<execution id>.log` (the directory is created if missing);
    /// answers the file's path. Dkron names the file `<started_at ns>-<node>.log`, unique per node only; ours is
    /// unique in the cluster and says which run it holds (job names have no dots).
    async fn write_file(&self, log_dir: &str, output: &str) -> io::Result<String> {
        let name = format!("{}.{}.log", self.job, self.id);
        if name.contains('/') || self.id.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("'{name}' cannot name a file")));
        }
        let path = PathBuf::from(log_dir).join(name);
        let (dir, file, bytes) = (PathBuf::from(log_dir), path.clone(), output.as_bytes().to_vec());
        let written = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&file, bytes)
        });
        written
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(path.display().to_string())
    }

    /// `log`: the output goes to this node's log between Dkron's markers, as info (warning for a run that did not
    /// succeed, where Dkron writes to stderr instead of stdout).
    fn log(&self, output: &str) {
        let (job, id) = (self.job, self.id);
        let text = format!("----- BEGIN OUTPUT job={job} execution={id} -----\n{output}\n----- END OUTPUT -----");
        if self.succeeded {
            tracing::info!(target: "kairos::output", "{text}");
        } else {
            tracing::warn!(target: "kairos::output", "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_added_to_a_full_tail_keeps_it_within_its_size_on_a_character_boundary() {
        let mut tail = "é".repeat(TAIL_BYTES / 2);
        add_to_tail(&mut tail, "\n[kairos: x]\n");
        assert!(tail.len() <= TAIL_BYTES && tail.ends_with("[kairos: x]\n"), "{} bytes", tail.len());
        let mut short = "out".to_string();
        add_to_tail(&mut short, "\n[note]\n");
        assert_eq!(short, "out\n[note]\n");
    }
}
