//! Stage 1 (`diffbragg hopper`): per-shot pixel refinement of still shots
//! (diffBragg's `simtbx.diffBragg.hopper`, fwd-model §4).
//!
//! For each shot of `exp_ref_spec_file`: cut ROIs around the indexed spots and
//! fit their background ([`gather`], [`background`], [`mask`]); build the
//! spectrum ([`downsample`]); refine the crystal (misorientation, cell from the
//! space group's lattice system, N, G, optionally η, detz, spectrum, per-ROI
//! scales: [`params`]) by minimising the Gaussian NLL with L-BFGS-B ([`model`],
//! [`refine`]); write the results ([`shot`]) and commit them all-or-nothing
//! into the store ([`commit`], [`driver`]).
//!
//! # Decisions on the reference's traps (each detailed where it is made)
//! * `method=None` (Nelder–Mead) is not offered; L-BFGS-B is the default (config).
//! * `filter_after_refinement.enable` is honoured and the retry starts from the
//!   previous solution ([`refine`]).
//! * Hot-pixel masks are true = good; pickles are refused with a conversion
//!   recipe ([`mask`]).
//! * ROIs may include the last row/column of a panel ([`gather`]).
//! * Tilt-plane weights are 1/σ² ([`background`]).
//! * The lattice system comes from the space group ([`params`]).
//! * `ignore_existing` is replaced by resuming from the tables ([`driver`]).
//! * G keeps diffBragg's meaning (fluence with 1/N_src, [`model`]).
//! * detz_shift is in mm everywhere, restraint centre included ([`params`]).

// `!(x > 0.0)` is deliberate (it also rejects NaN); index loops keep the
// numerical summation order explicit.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop, clippy::type_complexity)]

pub mod background;
pub mod commit;
pub mod downsample;
pub mod driver;
pub mod gather;
pub mod mask;
pub mod model;
pub mod params;
pub mod refine;
pub mod shot;

pub use driver::{run, RunOptions, RunSummary};
