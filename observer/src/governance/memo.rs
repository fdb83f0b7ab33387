//! What the flow-log scanner read before: a value's text and the parts it
//! gave, so that the same text met again is taken without reading it.
//!
//! In: a value the scanner has just read (a record's end after its address,
//! a verdict, an object it skipped) with the text it read it from. Out, for
//! a later line whose bytes at that place start with the same text: the
//! same value, its strings borrowed from the later line. A flow log repeats
//! itself: a pod's end is written with the same namespace, name, uid,
//! workload and labels in every record it is in, and an edge's verdict in
//! every record of the edge. The scanner is a deterministic function of the
//! bytes it reads (it never looks past the end of a value), so equal bytes
//! read from the same state give an equal value: taking it is exact.

use std::net::IpAddr;

use super::line::{LinePeer, LineVerdict};
use crate::FastMap;

/// Most ends and verdicts remembered; past it that memo starts again (a
/// cluster's pods are far fewer, so that happens only when pods churn
/// through it, or edges are that many).
const MAX_REMEMBERED: usize = 1 << 16;

/// Most skipped values remembered (one per key).
const MAX_SKIPPED: usize = 16;

/// A value of type `T` whose strings are positions in its text.
#[derive(Debug)]
pub struct Remembered<T> {
    text: Vec<u8>,
    /// Each string's offset and length in `text`, in the order `T` lists them.
    spans: Vec<(usize, usize)>,
    /// The value, its strings empty.
    shape: T,
}

/// The memo one reading of flow logs keeps.
#[derive(Debug, Default)]
pub struct Memo {
    /// A record's end after its `ip` and `port`, by address and whether
    /// it had a port.
    pub ends: FastMap<(IpAddr, bool), Remembered<LinePeer<'static>>>,
    /// The last verdict of an edge, by its source and destination address
    /// and port.
    pub verdicts: FastMap<(IpAddr, IpAddr, Option<u16>), Remembered<LineVerdict<'static>>>,
    /// The last object or array skipped under each key of a record.
    pub skipped: Vec<(Box<str>, Vec<u8>)>,
    /// Values taken from the memo.
    pub recalled: u64,
}

/// A value whose strings can be listed and replaced in a fixed order.
pub trait Strings {
    /// The value with its strings in the other lifetime.
    type In<'b>;

    /// The value with each string replaced by what `each` gives for it, in
    /// a fixed order.
    fn map_strings<'b>(&self, each: &mut dyn FnMut(&str) -> &'b str) -> Self::In<'b>;
}

impl<T> Remembered<T> {
    /// Whether `rest` starts with this value's text.
    pub fn matches(&self, rest: &[u8]) -> bool {
        starts_with(rest, &self.text)
    }

    /// Bytes of its text.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// The value again, its strings borrowed from `text` at `at`, where
    /// [`Self::matches`] found its text.
    pub fn recall<'a>(&self, text: &'a str, at: usize) -> T::In<'a>
    where
        T: Strings,
    {
        let mut spans = self.spans.iter();
        self.shape.map_strings(&mut |_| {
            let (offset, len) = spans.next().copied().unwrap_or_default();
            text.get(at + offset..at + offset + len).unwrap_or_default()
        })
    }
}

/// `value`, read from `text[from..to]`, as a [`Remembered`] value; `None`
/// when one of its strings is not borrowed from there (it had an escape).
pub fn remember<V: Strings>(value: &V, text: &str, from: usize, to: usize) -> Option<Remembered<V::In<'static>>> {
    let base = text.as_ptr() as usize + from;
    let mut spans = Vec::new();
    let mut borrowed = true;
    let shape = value.map_strings(&mut |string| {
        let offset = (string.as_ptr() as usize).wrapping_sub(base);
        if string.is_empty() {
            spans.push((0, 0));
        } else if offset + string.len() <= to - from {
            spans.push((offset, string.len()));
        } else {
            borrowed = false;
        }
        ""
    });
    borrowed.then(|| Remembered { text: text.as_bytes()[from..to].to_vec(), spans, shape })
}

/// Remembers `value` under `key` in `memo`, which starts again when full.
pub fn bounded_insert<K: std::hash::Hash + Eq, V>(memo: &mut FastMap<K, V>, key: K, value: V) {
    if memo.len() >= MAX_REMEMBERED && !memo.contains_key(&key) {
        memo.clear();
    }
    memo.insert(key, value);
}

impl Memo {
    /// Whether `rest` starts with the last value skipped under `key`.
    pub fn skipped_matches(&self, key: &str, rest: &[u8]) -> Option<usize> {
        let (_, text) = self.skipped.iter().find(|(known, _)| **known == *key)?;
        starts_with(rest, text).then_some(text.len())
    }

    /// Remembers a value skipped under `key`.
    pub fn remember_skipped(&mut self, key: &str, text: &[u8]) {
        if let Some((_, known)) = self.skipped.iter_mut().find(|(known, _)| **known == *key) {
            known.clear();
            known.extend_from_slice(text);
        } else if self.skipped.len() < MAX_SKIPPED {
            self.skipped.push((key.into(), text.to_vec()));
        }
    }
}

/// `a == b`, without a call to libc (see [`starts_with`]).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && starts_with(a, b)
}

/// `bytes.starts_with(prefix)`, compared inline eight bytes at a time
/// rather than through a call to libc's `memcmp` for every value.
fn starts_with(bytes: &[u8], prefix: &[u8]) -> bool {
    let Some(bytes) = bytes.get(..prefix.len()) else {
        return false;
    };
    if prefix.len() < 8 {
        return bytes.iter().zip(prefix).all(|(a, b)| a == b);
    }
    let word = |chunk: &[u8]| u64::from_le_bytes(chunk.try_into().unwrap_or_default());
    // The last eight bytes overlap the words before them when the length
    // is not a multiple of eight.
    let last = prefix.len() - 8;
    let differ = bytes
        .chunks_exact(8)
        .zip(prefix.chunks_exact(8))
        .fold(word(&bytes[last..]) ^ word(&prefix[last..]), |differ, (a, b)| differ | (word(a) ^ word(b)));
    differ == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_is_slices_starts_with() {
        let text: Vec<u8> = (0..40).collect();
        for len in 0..=40 {
            for from in 0..=40 - len {
                let prefix = &text[from..from + len];
                for at in 0..=40 {
                    let mut changed = prefix.to_vec();
                    if let Some(byte) = changed.get_mut(at) {
                        *byte ^= 0x80;
                    }
                    for candidate in [prefix, &changed[..]] {
                        assert_eq!(starts_with(&text[from..], candidate), text[from..].starts_with(candidate));
                        assert_eq!(
                            starts_with(&text[..len.min(3)], candidate),
                            text[..len.min(3)].starts_with(candidate)
                        );
                    }
                }
            }
        }
    }
}
