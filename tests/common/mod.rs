//! Test-only helpers shared by the kernel integration tests.
//!
//! The reference cases are loaded by `diffbragg::simulate::reference` (through
//! the real `.expt`, `.lam` and `h k l F` readers), which the bench command uses too.
#![allow(dead_code)]

use diffbragg::simulate::reference::{self, RefCase};

/// Load a reference case from the shared folder.
pub fn load_case(name: &str) -> RefCase {
    let dir = reference::reference_dir(&diffbragg::testutil::shared_dir());
    reference::load(&dir, name).unwrap_or_else(|e| panic!("loading reference case {name}: {e}"))
}

/// A small deterministic generator (xorshift64*), so tests need no seed plumbing.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
