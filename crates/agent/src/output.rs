//! The local output store: the full output of each execution, on this node's disk only.
//!
//! Full output never passes through Raft (see DESIGN.md); the API reads it from the node that ran the
//! execution. The layout is one file per execution, `{dir}/{job_name}/{execution_id}.log`, so deleting
//! a job's outputs is one directory removal and listing them is one directory read.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const EXTENSION: &str = "log";

/// Output of running executions that is still held in memory (it fits in the tail), by (job, execution id), so a
/// reader can follow a run before (or without) its file existing.
type LiveOutputs = Arc<Mutex<HashMap<(String, String), Arc<Mutex<Vec<u8>>>>>>;

/// Handle to the output directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OutputStore {
    dir: Arc<PathBuf>,
    live: LiveOutputs,
}

impl OutputStore {
    /// Opens (creating if needed) the store rooted at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<OutputStore> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(OutputStore { dir: Arc::new(dir), live: LiveOutputs::default() })
    }

    /// The stored output of one execution (lossy UTF-8), or `None` if there is none: an output that fits in the
    /// execution record's tail is not stored here, the tail is all of it.
    pub fn read(&self, job: &str, execution_id: &str) -> io::Result<Option<String>> {
        let path = self.file_path(job, execution_id)?;
        let live =
            self.live.lock().expect("live outputs lock").get(&(job.to_owned(), execution_id.to_owned())).cloned();
        if let Some(pending) = live {
            let bytes = pending.lock().expect("live output lock");
            return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
        }
        match fs::read(path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes one execution's output; a missing one is not an error.
    pub fn delete(&self, job: &str, execution_id: &str) -> io::Result<()> {
        ignore_not_found(fs::remove_file(self.file_path(job, execution_id)?))
    }

    /// Deletes every output of a job.
    pub fn delete_job(&self, job: &str) -> io::Result<()> {
        ignore_not_found(fs::remove_dir_all(self.job_dir(job)?))
    }

    /// The execution ids that have an output for `job`, sorted.
    pub fn list(&self, job: &str) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(self.job_dir(job)?) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == EXTENSION)
                && let Some(id) = path.file_stem().and_then(|s| s.to_str())
            {
                ids.push(id.to_owned());
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Registers the in-memory output of a running execution (see [`LiveOutputs`]).
    pub(crate) fn register_live(&self, job: &str, execution_id: &str, pending: Arc<Mutex<Vec<u8>>>) {
        self.live.lock().expect("live outputs lock").insert((job.to_owned(), execution_id.to_owned()), pending);
    }

    pub(crate) fn unregister_live(&self, job: &str, execution_id: &str) {
        self.live.lock().expect("live outputs lock").remove(&(job.to_owned(), execution_id.to_owned()));
    }

    /// Creates (or truncates, for a re-run of the same id) the file an execution writes to.
    pub(crate) fn create(&self, job: &str, execution_id: &str) -> io::Result<File> {
        let path = self.file_path(job, execution_id)?;
        if let Some(job_dir) = path.parent() {
            fs::create_dir_all(job_dir)?;
        }
        File::create(path)
    }

    fn job_dir(&self, job: &str) -> io::Result<PathBuf> {
        Ok(self.dir.join(checked_name("job name", job)?))
    }

    fn file_path(&self, job: &str, execution_id: &str) -> io::Result<PathBuf> {
        let id = checked_name("execution id", execution_id)?;
        Ok(self.job_dir(job)?.join(format!("{id}.{EXTENSION}")))
    }
}

/// Names become path components, so anything that could leave the store's directory is refused.
fn checked_name<'a>(what: &str, name: &'a str) -> io::Result<&'a str> {
    let bad = name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']);
    if bad {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{what} '{name}' cannot name an output file")));
    }
    Ok(name)
}

fn ignore_not_found(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
