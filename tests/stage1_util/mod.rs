//! Helpers shared by the stage-1 integration tests: a small synthetic dataset
//! in a temp dir, configuration loading, and running stage 1 in-process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use diffbragg::config::HopperConfig;
use diffbragg::dist::SingleProcess;
use diffbragg::stage1::{run, RunOptions, RunSummary};
use diffbragg::synth::{generate, SynthOptions, Truth};

/// A small dataset: `shots` shots on a `pixels`² detector at `distance` mm with
/// `channels` spectral channels.
pub fn small(
    dir: &Path,
    shots: usize,
    seed: u64,
    pixels: usize,
    distance: f64,
    channels: usize,
) -> Vec<Truth> {
    let o = SynthOptions {
        out: dir.to_path_buf(),
        shots,
        seed,
        n_pixels: pixels,
        distance_mm: distance,
        channels,
        ..Default::default()
    };
    generate(&o).expect("synth")
}

/// Load `phil` with `overrides` (absolute paths only: they resolve against the cwd).
pub fn config(phil: &Path, overrides: &[String]) -> HopperConfig {
    HopperConfig::load(&[phil.to_path_buf()], overrides).expect("config").0
}

pub fn run_stage1(cfg: HopperConfig) -> RunSummary {
    run(
        cfg,
        &SingleProcess,
        &RunOptions { flush_every: 4, progress: Some(false), verbose: false, serial_shots: false },
    )
    .expect("stage 1")
}

pub fn outdir_arg(p: &Path) -> String {
    format!("outdir={}", p.display())
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_diffbragg"))
}
