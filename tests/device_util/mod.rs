//! A test backend: the CPU kernel behind a wrapper that counts every call
//! (per mode, and shots per mode) and changes nothing.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

use diffbragg::error::Result;
use diffbragg::gpu::{Backend, BatchOutput, CpuBackend, Mode, PixelBatch};
use diffbragg::kernel::PreparedShot;

/// Name recorded in the outputs of runs on this backend.
pub const NAME: &str = "counting";

#[derive(Default)]
pub struct Counting {
    /// Calls per mode: Forward, Derivs, FhklGrad.
    pub calls: [AtomicUsize; 3],
    /// Shots evaluated per mode.
    pub shots: [AtomicUsize; 3],
    /// Largest number of shots in one call.
    pub max_shots: AtomicUsize,
}

fn slot(m: Mode) -> usize {
    match m {
        Mode::Forward => 0,
        Mode::Derivs => 1,
        Mode::FhklGrad => 2,
    }
}

impl Counting {
    pub fn calls(&self, m: Mode) -> usize {
        self.calls[slot(m)].load(Ordering::SeqCst)
    }
    pub fn shots(&self, m: Mode) -> usize {
        self.shots[slot(m)].load(Ordering::SeqCst)
    }
}

impl Backend for Counting {
    fn name(&self) -> &'static str {
        NAME
    }
    fn describe(&self) -> String {
        format!("counting wrapper of {}", CpuBackend.describe())
    }
    fn evaluate(
        &self,
        shots: &[&PreparedShot<'_>],
        pixels: &PixelBatch,
        mode: Mode,
        weights: Option<&[f64]>,
    ) -> Result<BatchOutput> {
        self.calls[slot(mode)].fetch_add(1, Ordering::SeqCst);
        self.shots[slot(mode)].fetch_add(shots.len(), Ordering::SeqCst);
        self.max_shots.fetch_max(shots.len(), Ordering::SeqCst);
        CpuBackend.evaluate(shots, pixels, mode, weights)
    }
}
