//! Stage-1 diagnostics: Δψ, detector residuals, per-panel distributions and plots.
//!
//! Users judge a stage-1 run by the detector residuals (radial and transverse
//! offsets of model centroids from observed ones) and by how the Δψ
//! distribution on each panel changes between the input and the refined
//! models. This module computes both, the way DIALS and `cctbx.xfel.detector_residuals`
//! define them, so the numbers agree with what crystallographers already know.
//!
//! * [`deltapsi`]: the DIALS stills re-prediction (Δψ, s1, panel position,
//!   dxtbx px↔mm conversion with parallax).
//! * [`residuals`]: one [`residuals::ResidualRow`] per reflection and model
//!   (the `residuals` table), radial/transverse offsets, 2θ and d.
//! * [`stats`]: per panel / panel group / dataset statistics.
//! * [`summary`]: the before-vs-after [`summary::Comparison`] and its text table.
//! * [`figures`]: the PNG figures, drawn with the small rasteriser in [`plot`]
//!   (own bitmap font in [`font`]; no system fonts needed).
//! * [`cli`]: the `diffbragg residuals` subcommand.
//!
//! # Conventions (shared by every submodule)
//! * Offsets are **cal − obs** (model minus observation), in lab millimetres;
//!   statistics report µm. This is `detector_residuals`; `experiment_residuals`
//!   uses obs − cal and is not followed.
//! * Radial unit vector `r̂ = unit(obs_lab − bc_lab)`: from the beam centre on the
//!   spot's panel plane towards the observed spot. Transverse `t̂ = unit(r̂ × bc_lab)`.
//!   With the beam along −z this makes `t̂` the counter-clockwise azimuthal
//!   direction seen from the source (for a spot on +x, `t̂` = +y).
//! * Δψ is DIALS's `delpsical.rad` sign: positive when the reciprocal-lattice
//!   point must turn by a positive angle about `e1 = unit(q × ŝ0)` to reach the
//!   Ewald sphere. Tables and statistics store it in degrees (`delpsi_deg`).
//! * Δ2θ = 2θ(obs) − 2θ(cal), degrees (`detector_residuals`).
//! * Pixel coordinates have the dxtbx pixel-corner origin; panel millimetres
//!   are dxtbx "mm" (parallax-corrected where the panel's strategy says so).

pub mod cli;
pub mod deltapsi;
pub mod figures;
pub mod font;
pub mod plot;
pub mod residuals;
pub mod stats;
pub mod summary;
