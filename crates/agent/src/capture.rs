//! Capture of one execution's output: written to the output store as it arrives, capped, counted, and
//! with its last [`TAIL_BYTES`] kept in memory for the [`Outcome`](crate::Outcome).
//!
//! Output that fits in the tail is never written to a file: the tail travels in the execution record, which is
//! then the whole output. Creating (and later pruning) a file per run would dominate the cost of short runs at
//! thousands per second (inode allocation). Once the output outgrows the tail, the file is created and every
//! chunk goes to it the moment it is read, so a reader (and later a live follower) sees the output grow while
//! the run goes on. Writes are plain blocking `write(2)` calls on the async thread: they land in the page cache
//! and cost microseconds, far less than a hop through `spawn_blocking`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::mask::Masker;
use crate::output::OutputStore;
use crate::spec::{Outcome, RunSpec, RunStatus, TAIL_BYTES};

pub(crate) struct Capture {
    store: OutputStore,
    job_name: String,
    execution_id: String,
    /// Opened once the output outgrows the tail.
    file: Option<File>,
    /// Output stored so far while no file is open (at most [`TAIL_BYTES`]), readable through the store meanwhile.
    pending: Arc<Mutex<Vec<u8>>>,
    /// Set when the file could not be created or written: stop trying, keep counting.
    store_failed: bool,
    /// Why the store refused more of this output (its budget or the disk's free-space floor), said in the tail.
    refused: Option<String>,
    /// Whether an output file was created (it may have stopped growing since): it joins the store's age order.
    created: bool,
    limit_bytes: u64,
    stored_bytes: u64,
    total_bytes: u64,
    tail: VecDeque<u8>,
    /// Masks the values of the secrets the run was given, before anything is kept.
    masker: Option<Masker>,
}

/// What a finished capture hands to the outcome.
struct Captured {
    tail: String,
    total_bytes: u64,
}

impl Capture {
    /// Starts capturing; the output file is created only if the output outgrows the tail.
    pub fn open(store: &OutputStore, spec: &RunSpec) -> Capture {
        let pending = Arc::new(Mutex::new(Vec::new()));
        store.register_live(&spec.job_name, &spec.execution_id, pending.clone());
        Capture {
            store: store.clone(),
            job_name: spec.job_name.clone(),
            execution_id: spec.execution_id.clone(),
            file: None,
            pending,
            store_failed: false,
            refused: None,
            created: false,
            limit_bytes: spec.output_limit_bytes,
            stored_bytes: 0,
            total_bytes: 0,
            tail: VecDeque::with_capacity(TAIL_BYTES),
            masker: Masker::new(spec.secrets.values()),
        }
    }

    /// Takes the next chunk of output (masked first, when the run was given secrets).
    pub fn write(&mut self, chunk: &[u8]) {
        match &mut self.masker {
            Some(masker) => {
                let masked = masker.push(chunk);
                self.keep(&masked);
            }
            None => self.keep(chunk),
        }
    }

    fn keep(&mut self, chunk: &[u8]) {
        self.total_bytes += chunk.len() as u64;
        self.keep_tail(chunk);
        let room = self.limit_bytes.saturating_sub(self.stored_bytes);
        let stored = &chunk[..chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        if stored.is_empty() {
            return;
        }
        self.stored_bytes += stored.len() as u64;
        self.write_file(stored);
    }

    /// Appends the truncation marker if the cap was hit and returns the tail and the total size.
    fn finish(mut self) -> Captured {
        if let Some(mut masker) = self.masker.take() {
            let rest = masker.finish();
            self.keep(&rest);
        }
        if let Some(reason) = self.refused.take() {
            // The stored file (if any) stops short: the record's tail is what remains, and it says why.
            let marker = format!("\n[kairos: output not stored in full: {reason}]\n");
            self.keep_tail(marker.as_bytes());
            self.total_bytes += marker.len() as u64;
        }
        let omitted = self.total_bytes - self.stored_bytes;
        if omitted > 0 {
            // The tail cannot stand for a truncated output: make sure it is stored, with the marker.
            if self.file.is_none() && !self.store_failed {
                self.open_file();
            }
            let marker = format!("\n[kairos: output truncated, {omitted} bytes omitted]\n");
            self.write_file(marker.as_bytes());
        }
        if self.created {
            self.store.finished(&self.job_name, &self.execution_id);
        }
        let cut = self.total_bytes > self.tail.len() as u64;
        Captured { tail: tail_text(self.tail.make_contiguous(), cut), total_bytes: self.total_bytes }
    }

    /// Finishes the capture into the outcome of the run.
    pub fn into_outcome(self, status: RunStatus, exit_code: Option<i32>, error: Option<String>) -> Outcome {
        let error = match (&self.masker, error) {
            (Some(masker), Some(error)) => Some(masker.mask_text(&error)),
            (_, error) => error,
        };
        let captured = self.finish();
        Outcome { status, exit_code, output_tail: captured.tail, output_bytes: captured.total_bytes, error }
    }

    /// The outcome of a run that never started: the reason goes into the output too, because the
    /// output is where a user looks first.
    pub fn not_started(mut self, reason: String) -> Outcome {
        self.write(reason.as_bytes());
        self.write(b"\n");
        self.into_outcome(RunStatus::Failed, None, Some(reason))
    }

    fn keep_tail(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(TAIL_BYTES)..];
        let overflow = (self.tail.len() + chunk.len()).saturating_sub(TAIL_BYTES);
        self.tail.drain(..overflow);
        self.tail.extend(chunk);
    }

    fn write_file(&mut self, bytes: &[u8]) {
        if self.store_failed {
            return;
        }
        if self.file.is_none() {
            {
                let mut pending = self.pending.lock().expect("pending output lock");
                if pending.len() + bytes.len() <= TAIL_BYTES {
                    pending.extend_from_slice(bytes);
                    return;
                }
            }
            self.open_file();
        }
        if self.file.is_some() && !self.charge(bytes.len()) {
            return;
        }
        if let Some(file) = &mut self.file
            && let Err(e) = file.write_all(bytes)
        {
            // A full disk must not fail the run; stop writing, keep counting.
            tracing::warn!("output store write failed, output no longer stored: {e}");
            self.file = None;
            self.store_failed = true;
        }
    }

    /// Take room in the store for `bytes` more; when refused, stop storing (the file keeps what it has) and
    /// remember why.
    fn charge(&mut self, bytes: usize) -> bool {
        match self.store.charge(&self.job_name, &self.execution_id, bytes as u64) {
            Ok(()) => true,
            Err(refused) => {
                tracing::warn!(job = %self.job_name, execution = %self.execution_id, "output no longer stored: {}", refused.0);
                self.refused = Some(refused.0);
                self.store_failed = true;
                false
            }
        }
    }

    /// Creates the output file and moves what was held in memory into it. If the store cannot take it, the run
    /// still goes ahead: its outcome and tail matter more than the full output.
    fn open_file(&mut self) {
        let pending = std::mem::take(&mut *self.pending.lock().expect("pending output lock"));
        match self.store.create(&self.job_name, &self.execution_id) {
            Ok(_) if !self.charge(pending.len()) => {
                // Nothing of it could be kept: no file rather than an empty one.
                if let Err(e) = self.store.delete(&self.job_name, &self.execution_id) {
                    tracing::warn!("cannot remove an output file that was refused room: {e}");
                }
            }
            Ok(mut file) => match file.write_all(&pending) {
                Ok(()) => {
                    self.file = Some(file);
                    self.created = true;
                }
                Err(e) => {
                    tracing::warn!("output store write failed, output not stored: {e}");
                    self.store_failed = true;
                }
            },
            Err(e) => {
                tracing::warn!(job = %self.job_name, execution = %self.execution_id, "cannot store output: {e}");
                self.store_failed = true;
            }
        }
        self.store.unregister_live(&self.job_name, &self.execution_id);
    }
}

impl Drop for Capture {
    /// A finished (or abandoned) run's in-memory output is no longer served: the tail in its record is.
    fn drop(&mut self) {
        self.store.unregister_live(&self.job_name, &self.execution_id);
    }
}

/// Turns the raw tail into text that starts on a char boundary and is at most [`TAIL_BYTES`] long.
///
/// When the output was cut, the first bytes may be the end of a multi-byte character: those are
/// dropped rather than shown as replacement characters. Invalid bytes elsewhere become U+FFFD, which
/// is longer than one byte, so the result is trimmed again at a char boundary.
fn tail_text(bytes: &[u8], cut: bool) -> String {
    let start = if cut { bytes.iter().take(3).take_while(|&&b| b & 0b1100_0000 == 0b1000_0000).count() } else { 0 };
    let text = String::from_utf8_lossy(&bytes[start..]);
    if text.len() <= TAIL_BYTES {
        return text.into_owned();
    }
    let mut from = text.len() - TAIL_BYTES;
    while !text.is_char_boundary(from) {
        from += 1;
    }
    text[from..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_drops_a_character_cut_in_half() {
        // "é" is 0xC3 0xA9; a cut right after 0xC3 leaves 0xA9 first.
        assert_eq!(tail_text(&[0xA9, b'a', b'b'], true), "ab");
        // Not cut: a stray continuation byte is real (invalid) output.
        assert_eq!(tail_text(&[0xA9, b'a'], false), "\u{FFFD}a");
    }

    #[test]
    fn tail_of_invalid_bytes_stays_within_the_limit() {
        let text = tail_text(&[0xFF; TAIL_BYTES], false);
        assert!(text.len() <= TAIL_BYTES);
        assert!(text.chars().all(|c| c == '\u{FFFD}'));
    }
}
