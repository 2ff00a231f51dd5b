//! Masking secret values in a run's output as it streams: every occurrence of a value the run was given becomes
//! `***`, in the stored file, the tail and the live view alike, even when the value is split across two reads.
//!
//! The masker holds back the last `longest − 1` bytes of what it has seen (they could be the start of a value the
//! next read completes) and hands on everything before them, masked. At the end of the run it hands on the rest.

use kairos_model::secret::{MASK, MASKED_BYTES_MIN, SecretValue};

pub(crate) struct Masker {
    /// The values to mask, longest first, so a value that contains another is masked whole.
    values: Vec<Vec<u8>>,
    /// The first byte of each value, to skip positions quickly.
    first_bytes: [bool; 256],
    longest: usize,
    /// Bytes seen but not handed on yet.
    held: Vec<u8>,
}

impl Masker {
    /// A masker for these values; `None` when none is long enough to mask (see [`MASKED_BYTES_MIN`]).
    pub(crate) fn new<'a>(values: impl IntoIterator<Item = &'a SecretValue>) -> Option<Masker> {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .map(|v| v.expose().as_bytes().to_vec())
            .filter(|v| v.len() >= MASKED_BYTES_MIN)
            .collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        let mut first_bytes = [false; 256];
        for value in &values {
            first_bytes[usize::from(value[0])] = true;
        }
        let longest = values[0].len();
        Some(Masker { values, first_bytes, longest, held: Vec::new() })
    }

    /// Takes the next chunk of output; answers what may be handed on now, masked.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(chunk);
        let safe = self.held.len().saturating_sub(self.longest - 1);
        let (out, used) = self.mask(safe);
        self.held.drain(..used);
        out
    }

    /// The end of the output: everything still held, masked.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let (out, used) = self.mask(self.held.len());
        self.held.drain(..used);
        out
    }

    /// A text (an error message) with every value masked.
    pub(crate) fn mask_text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for value in &self.values {
            if let Ok(value) = std::str::from_utf8(value) {
                text = text.replace(value, MASK);
            }
        }
        text
    }

    /// Masks `held` from its start while a value could begin before `until`; answers the masked bytes and how
    /// many held bytes they stand for. A value that begins before `until` lies wholly within `held` (or, at the
    /// end of the output, cannot be completed any more).
    fn mask(&self, until: usize) -> (Vec<u8>, usize) {
        let held = &self.held;
        let mut out = Vec::with_capacity(until);
        let mut i = 0;
        while i < until {
            if self.first_bytes[usize::from(held[i])]
                && let Some(value) = self.values.iter().find(|v| held[i..].starts_with(v))
            {
                out.extend_from_slice(MASK.as_bytes());
                i += value.len();
                continue;
            }
            out.push(held[i]);
            i += 1;
        }
        (out, i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(values: &[&str]) -> Masker {
        let values: Vec<SecretValue> = values.iter().map(|v| SecretValue(v.to_string())).collect();
        Masker::new(&values).expect("values to mask")
    }

    fn through(masker: &mut Masker, chunks: &[&str]) -> String {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(masker.push(chunk.as_bytes()));
        }
        out.extend(masker.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_masked_wherever_the_reads_split_them() {
        let text = "user=app pass=hunter22 again:hunter22.";
        for split in 0..text.len() {
            let mut m = masker(&["hunter22"]);
            let (a, b) = text.split_at(split);
            assert_eq!(through(&mut m, &[a, b]), "user=app pass=*** again:***.", "split at {split}");
        }
        let mut m = masker(&["hunter22"]);
        let bytes: Vec<String> = text.chars().map(String::from).collect();
        let chunks: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(through(&mut m, &chunks), "user=app pass=*** again:***.");
    }

    #[test]
    fn the_longest_value_wins_and_short_values_are_not_masked() {
        let mut m = masker(&["abcd", "abcdefgh", "x"]);
        assert_eq!(through(&mut m, &["abcdefgh abcd x"]), "*** *** x");
        let none = [SecretValue("ab".into())];
        assert!(Masker::new(&none).is_none());
    }

    #[test]
    fn a_partial_value_at_the_end_is_handed_on_as_it_is() {
        let mut m = masker(&["hunter22"]);
        assert_eq!(through(&mut m, &["pass=hunter2"]), "pass=hunter2");
        assert_eq!(m.mask_text("connect failed for hunter22@db"), "connect failed for ***@db");
    }
}
