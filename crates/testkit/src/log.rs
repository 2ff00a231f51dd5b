//! A process's output across its restarts, with the harness's own markers between: in memory (tests print it
//! when they fail) or in a file (the benchmark keeps its logs, and a long run's log must not live in memory).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A shared, append-only log; clones append to the same one.
#[derive(Clone)]
pub struct Log {
    sink: Arc<Mutex<Sink>>,
}

enum Sink {
    Memory(String),
    File { file: File, path: PathBuf },
}

impl Default for Log {
    fn default() -> Log {
        Log::memory()
    }
}

impl Log {
    pub fn memory() -> Log {
        Log::from(Sink::Memory(String::new()))
    }

    /// A log written to `path` (created, or truncated).
    pub fn file(path: &Path) -> std::io::Result<Log> {
        Ok(Log::from(Sink::File { file: File::create(path)?, path: path.to_path_buf() }))
    }

    fn from(sink: Sink) -> Log {
        Log { sink: Arc::new(Mutex::new(sink)) }
    }

    pub fn append(&self, text: &str) {
        // A thread that panicked while appending left whole lines behind: the log is still worth having.
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *sink {
            Sink::Memory(log) => log.push_str(text),
            // A log that cannot be written must not fail the test or the benchmark it records.
            Sink::File { file, .. } => drop(file.write_all(text.as_bytes())),
        }
    }

    /// Everything appended so far.
    pub fn text(&self) -> String {
        let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        match &*sink {
            Sink::Memory(log) => log.clone(),
            Sink::File { path, .. } => std::fs::read_to_string(path).unwrap_or_default(),
        }
    }

    /// The file the log is written to, if it is one.
    pub fn path(&self) -> Option<PathBuf> {
        match &*self.sink.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::Memory(_) => None,
            Sink::File { path, .. } => Some(path.clone()),
        }
    }

    /// The last `lines` lines.
    pub fn tail(&self, lines: usize) -> String {
        tail(&self.text(), lines).join("\n")
    }

    /// Print the last `lines` lines to stderr under a `--- title (N lines, last M shown) ---` header.
    pub fn print_tail(&self, title: &str, lines: usize) {
        let text = self.text();
        let all = text.lines().count();
        let shown = tail(&text, lines);
        eprintln!("--- {title} ({all} lines, last {} shown) ---", shown.len());
        for line in shown {
            eprintln!("{line}");
        }
    }
}

fn tail(text: &str, lines: usize) -> Vec<&str> {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_log_and_the_tail_is_its_last_lines() {
        let log = Log::memory();
        log.clone().append("one\ntwo\n");
        log.append("three\n");
        assert_eq!(log.text(), "one\ntwo\nthree\n");
        assert_eq!(log.tail(2), "two\nthree");
        assert_eq!(log.tail(10), "one\ntwo\nthree");
    }

    #[test]
    fn a_file_log_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let log = Log::file(&path).unwrap();
        log.append("listening\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "listening\n");
        assert_eq!(log.text(), "listening\n");
        assert_eq!(log.path(), Some(path));
    }
}
