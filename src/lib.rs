//! diffbragg-rs: pixel-level refinement of X-ray free-electron-laser still shots.
//!
//! Module map (each module states its conventions at the top):
//! * [`conventions`]: frames, units, rotation order, Miller rounding, A = U·B.
//! * [`geometry`]: beam and detector (panel hierarchy composed into lab frame).
//! * [`crystal`]: unit cell and orientation.
//! * [`spectrum`]: channel wavelengths and weights.
//! * [`error`]: errors that name the file, row or parameter.
//! * [`config`]: phil files and overrides → typed, validated configuration.

#[doc(hidden)]
pub mod cli;
pub mod config;
pub mod conventions;
pub mod crystal;
pub mod dist;
pub mod error;
pub mod experiment;
pub mod geometry;
pub mod gpu;
pub mod image;
pub mod import;
pub mod io;
pub mod kernel;
pub mod predict;
pub mod refine;
pub mod reflections;
pub mod report;
pub mod simulate;
pub mod spectrum;
pub mod stage1;
pub mod stage2;
pub mod store;
pub mod symmetry;
pub mod synth;
pub mod testutil;
pub mod ucell;
