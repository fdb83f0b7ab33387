//! A fast hasher for the engine's small string-keyed lookups.
//!
//! In: short keys (namespace names) looked up once per end of every flow. Out:
//! a 64-bit hash in a few multiply steps (the Fx scheme of rustc). The keys are
//! names the cluster's own objects carry, so SipHash's resistance to chosen
//! collisions is not worth its cost on the per-flow path.

use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// The Fx hasher.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // Byte by byte: a copy of a variable-length tail would call memmove.
            let word = rest.iter().rev().fold(0_u64, |word, byte| word << 8 | u64::from(*byte));
            self.add(word);
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` hasher builder for [`FxHasher`].
pub(crate) type FxBuildHasher = BuildHasherDefault<FxHasher>;

/// The hash of a label, as the engine indexes policies by a label their pod selector requires.
pub(crate) fn label_hash(key: &str, value: &str) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(key.as_bytes());
    hasher.write_u8(0xff);
    hasher.write(value.as_bytes());
    hasher.finish()
}

/// A hasher for addresses: one multiply, then a rotation so that the bits
/// `HashMap` takes its bucket from depend on all of the address, not only on
/// its low bits, which alignment leaves at zero.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|byte| self.write_u8(*byte));
    }

    fn write_u8(&mut self, byte: u8) {
        self.write_usize(usize::from(byte));
    }

    fn write_usize(&mut self, value: usize) {
        self.0 = (self.0 ^ value as u64).wrapping_mul(SEED);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

/// A `HashMap` hasher builder for [`AddressHasher`].
pub(crate) type AddressBuildHasher = BuildHasherDefault<AddressHasher>;
