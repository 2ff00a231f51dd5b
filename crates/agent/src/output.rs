//! The local output store: the full output of each execution, on this node's disk only.
//!
//! Full output never passes through Raft (see DESIGN.md); the API reads it from the node that ran the
//! execution. The layout is one file per execution, `{dir}/{job_name}/{execution_id}.log`, so deleting
//! a job's outputs is one directory removal and listing them is one directory read.
//!
//! The store is bounded twice, so outputs can never starve the Raft log and the state of their disk: a node-wide
//! budget of bytes for all outputs together ([`Limits::store_bytes_max`]), and a floor of free space on the
//! filesystem ([`Limits::disk_free_bytes_min`]). Writing more takes the room from the oldest finished outputs
//! first; when there is nothing left to take, the capture stops storing and says so in the run's tail (the
//! record), and the run goes on. Retention by count, per job, is applied separately by the node.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const EXTENSION: &str = "log";

/// Output of running executions that is still held in memory (it fits in the tail), by (job, execution id), so a
/// reader can follow a run before (or without) its file existing.
type LiveOutputs = Arc<Mutex<HashMap<(String, String), Arc<Mutex<Vec<u8>>>>>>;

/// How much disk the store may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All stored outputs together, in bytes.
    pub store_bytes_max: u64,
    /// Free space the filesystem must keep; outputs stop growing before it is reached.
    pub disk_free_bytes_min: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { store_bytes_max: STORE_BYTES_MAX_DEFAULT, disk_free_bytes_min: DISK_FREE_BYTES_MIN_DEFAULT }
    }
}

/// 2 GiB of outputs per node unless told otherwise: thousands of large outputs, a small part of a server's disk.
pub const STORE_BYTES_MAX_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;
/// Leave 256 MiB free: room for the Raft log and the state to keep growing long after outputs stopped.
pub const DISK_FREE_BYTES_MIN_DEFAULT: u64 = 256 * 1024 * 1024;
/// Free space is asked of the filesystem (one `statvfs`) at most once per this many bytes charged.
const FREE_CHECK_EVERY_BYTES: u64 = 1024 * 1024;

/// Why a capture may not store more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// What the store holds, for its limits: the bytes of every output file, and the finished ones oldest first (the
/// ones that may be deleted to make room).
#[derive(Debug, Default)]
struct Ledger {
    used_bytes: u64,
    /// Size of every output file by (job, execution id), finished or still being written.
    sizes: HashMap<(String, String), u64>,
    /// Finished outputs by age (a sequence number: files found at open, by modification time, then in the
    /// order runs finish).
    finished: BTreeMap<u64, (String, String)>,
    finished_seq: HashMap<(String, String), u64>,
    next_seq: u64,
    /// Bytes charged since the filesystem was last asked for its free space.
    unchecked_bytes: u64,
    /// Free bytes the filesystem had at the last check, minus what was charged since.
    free_bytes: Option<u64>,
}

impl Ledger {
    fn forget(&mut self, key: &(String, String)) -> u64 {
        if let Some(seq) = self.finished_seq.remove(key) {
            self.finished.remove(&seq);
        }
        let bytes = self.sizes.remove(key).unwrap_or(0);
        self.used_bytes -= bytes;
        bytes
    }

    fn mark_finished(&mut self, key: (String, String)) {
        if self.finished_seq.contains_key(&key) || !self.sizes.contains_key(&key) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.finished.insert(seq, key.clone());
        self.finished_seq.insert(key, seq);
    }

    /// The sum of the sizes is what the ledger says is used: checked where the ledger changes shape.
    fn assert_consistent(&self) {
        debug_assert_eq!(self.used_bytes, self.sizes.values().sum::<u64>(), "output ledger out of balance");
        debug_assert_eq!(self.finished.len(), self.finished_seq.len(), "output age index out of balance");
    }
}

/// Handle to the output directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OutputStore {
    dir: Arc<PathBuf>,
    live: LiveOutputs,
    limits: Limits,
    ledger: Arc<Mutex<Ledger>>,
}

impl OutputStore {
    /// Opens (creating if needed) the store rooted at `dir`, with the default [`Limits`].
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<OutputStore> {
        OutputStore::open_with(dir, Limits::default())
    }

    /// Opens (creating if needed) the store rooted at `dir`; the outputs already there count against `limits`,
    /// oldest (by modification time) first in line to make room.
    pub fn open_with(dir: impl Into<PathBuf>, limits: Limits) -> io::Result<OutputStore> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let ledger = Arc::new(Mutex::new(scan(&dir)?));
        Ok(OutputStore { dir: Arc::new(dir), live: LiveOutputs::default(), limits, ledger })
    }

    /// Bytes all stored outputs take now.
    pub fn used_bytes(&self) -> u64 {
        self.ledger.lock().expect("output ledger lock").used_bytes
    }

    /// Make room for `bytes` more of the output of (job, execution id), deleting the oldest finished outputs if
    /// needed; refused (with the reason) when the budget or the free-space floor cannot be kept.
    pub(crate) fn charge(&self, job: &str, execution_id: &str, bytes: u64) -> Result<(), Refused> {
        let mut ledger = self.ledger.lock().expect("output ledger lock");
        let key = (job.to_owned(), execution_id.to_owned());
        if ledger.free_bytes.is_none() || ledger.unchecked_bytes >= FREE_CHECK_EVERY_BYTES {
            ledger.free_bytes = free_bytes(&self.dir);
            ledger.unchecked_bytes = 0;
        }
        loop {
            let over_budget = ledger.used_bytes + bytes > self.limits.store_bytes_max;
            let over_floor = ledger.free_bytes.is_some_and(|free| free < self.limits.disk_free_bytes_min + bytes);
            if !over_budget && !over_floor {
                break;
            }
            let Some((_, oldest)) = ledger.finished.pop_first() else {
                return Err(Refused(if over_budget {
                    format!(
                        "the node's output store is full ({} bytes, --output-store-max-bytes)",
                        self.limits.store_bytes_max
                    )
                } else {
                    format!(
                        "the disk has less than {} bytes free (--disk-free-min-bytes)",
                        self.limits.disk_free_bytes_min
                    )
                }));
            };
            ledger.finished_seq.remove(&oldest);
            let freed = ledger.sizes.remove(&oldest).unwrap_or(0);
            ledger.used_bytes -= freed;
            if let Ok(path) = self.file_path(&oldest.0, &oldest.1) {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::debug!(job = %oldest.0, execution = %oldest.1, freed, "oldest output deleted to make room")
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!("cannot delete output {}: {e}", path.display()),
                }
            }
            if let Some(free) = ledger.free_bytes.as_mut() {
                *free += freed;
            }
        }
        *ledger.sizes.entry(key).or_insert(0) += bytes;
        ledger.used_bytes += bytes;
        ledger.unchecked_bytes += bytes;
        if let Some(free) = ledger.free_bytes.as_mut() {
            *free = free.saturating_sub(bytes);
        }
        ledger.assert_consistent();
        Ok(())
    }

    /// The output of (job, execution id) is complete: from now on it may be deleted to make room.
    pub(crate) fn finished(&self, job: &str, execution_id: &str) {
        self.ledger.lock().expect("output ledger lock").mark_finished((job.to_owned(), execution_id.to_owned()));
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

    /// Appends `bytes` to the stored output of a finished execution, if it has one (answers whether it had), within
    /// the store's limits like the rest of it: refused room is an error.
    pub(crate) fn append(&self, job: &str, execution_id: &str, bytes: &[u8]) -> io::Result<bool> {
        let path = self.file_path(job, execution_id)?;
        let mut file = match fs::OpenOptions::new().append(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        self.charge(job, execution_id, bytes.len() as u64).map_err(|refused| io::Error::other(refused.0))?;
        io::Write::write_all(&mut file, bytes)?;
        Ok(true)
    }

    /// Deletes one execution's output; a missing one is not an error.
    pub fn delete(&self, job: &str, execution_id: &str) -> io::Result<()> {
        let path = self.file_path(job, execution_id)?;
        self.ledger.lock().expect("output ledger lock").forget(&(job.to_owned(), execution_id.to_owned()));
        ignore_not_found(fs::remove_file(path))
    }

    /// Deletes every output of a job.
    pub fn delete_job(&self, job: &str) -> io::Result<()> {
        let dir = self.job_dir(job)?;
        {
            let mut ledger = self.ledger.lock().expect("output ledger lock");
            let keys: Vec<(String, String)> = ledger.sizes.keys().filter(|(j, _)| j == job).cloned().collect();
            for key in keys {
                ledger.forget(&key);
            }
            ledger.assert_consistent();
        }
        ignore_not_found(fs::remove_dir_all(dir))
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
        self.ledger.lock().expect("output ledger lock").forget(&(job.to_owned(), execution_id.to_owned()));
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

/// The outputs already on disk: their sizes, and their age order by modification time.
fn scan(dir: &Path) -> io::Result<Ledger> {
    let mut found: Vec<(std::time::SystemTime, (String, String), u64)> = Vec::new();
    for job_dir in fs::read_dir(dir)? {
        let job_dir = job_dir?;
        let Some(job) = job_dir.file_name().to_str().map(str::to_owned) else { continue };
        if !job_dir.file_type()?.is_dir() {
            continue;
        }
        for file in fs::read_dir(job_dir.path())? {
            let file = file?;
            let path = file.path();
            if path.extension().is_none_or(|e| e != EXTENSION) {
                continue;
            }
            let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
            let meta = file.metadata()?;
            found.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), (job.clone(), id), meta.len()));
        }
    }
    found.sort();
    let mut ledger = Ledger::default();
    for (_, key, bytes) in found {
        ledger.used_bytes += bytes;
        ledger.sizes.insert(key.clone(), bytes);
        ledger.mark_finished(key);
    }
    ledger.assert_consistent();
    Ok(ledger)
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`; `None` if it cannot be asked.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to writable memory of the right type;
    // statvfs(3) fills it on success, and it is read only then.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
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
