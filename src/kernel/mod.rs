//! The forward model: diffBragg's pixel kernel with analytic first derivatives.
//!
//! # The model
//! For a pixel (panel, fast, slow), in photons, before the ROI scale and the
//! background (see [`pixels::assemble_model`]):
//!
//! ```text
//! raw = r_e²·Φ·G·P(pixel centre)/(N_mos·os²)
//!       · Σ_sub Σ_layer Σ_c w_c Σ_m Ω·cap · |F(h0)|²·s_{a(h0),ch(c)} · F_latt(h)²
//! ```
//! * `w_c`: source weights normalised to **sum 1**. \[TRAP\] diffBragg normalises
//!   to mean 1 and carries `1/N_src` in the fluence, so **our G is cctbx's G
//!   divided by N_src** for the same data (the pixel values agree; see
//!   `shared/reference/README.md`).
//! * Φ fluence (photons/m²), r_e² = [`crate::conventions::R_E_SQR_M2`], G the scale.
//! * Sub-pixels: os×os grid, centre of sub-pixel (i, j) of pixel f at
//!   `(f + (i+½)/os)·pixel_size` (fwd-model §1.2). Ω per sub-pixel with the
//!   **full** pixel area (`oversample_omega = True`): `area·(n̂·P)/R³`, or
//!   `1/R²` with `point_pixel`.
//! * P: Kahn polarization once per pixel at the pixel centre, with the beam's
//!   own Kahn factor and E-axis. \[TRAP\] hopper uses K = 1; we use the
//!   experiment's polarization.
//! * [`SubpixelFactors`] chooses where Ω and P are evaluated: the above is
//!   diffBragg's (default); nanoBragg's standalone program evaluates both once,
//!   at the first sub-pixel's centre on the front face
//!   (`SubpixelFactors::FirstSubpixel`, which its reference images need).
//! * `q = (k̂ − ŝ0)/λ'_c` (Å⁻¹), `λ'_c = λ0 + λ1·λ_c`;
//!   `h = A_real(m)ᵀ·q` with `A_real(m) = Umos_m·Rx·Ry·Rz·U·B_real·Oᵀ`;
//!   `h0 = ceil(h − ½)`.
//! * F_latt: [`LatticeShape`]; the Gaussian is `det(N)·exp(−|N·Δh|²/0.63)`
//!   with the full symmetric N tensor. Steps with `|N·Δh|²·2/0.63 > 100` count
//!   as 0 ([`model::GAUSS_CUTOFF`]).
//! * |F|²: [`FhklTable`] (default_F for every absent reflection, F(000) = 0),
//!   times the optional per-(ASU, channel) scale s.
//! * Detector absorption (\[BUG?\] of fwd-model §2.2 fixed): with thickness t > 0
//!   and μ > 0 the sensor is split into `thickness_layers` slabs of t/n (mm,
//!   covering exactly the sensor); slab j at depth `j·t/n` along the outward
//!   normal captures `exp(−j·Δ/(L·cos)) − exp(−(j+1)·Δ/(L·cos))` with L = 1/μ
//!   (mm) and cos = k̂·n̂, and its point sets k̂, R and Ω. Capture fractions add
//!   up (no division by the layer count). Off when the thickness is 0.
//!
//! # Derivatives
//! [`Param`] lists them with their units. All are exact derivatives of the
//! model above (h0 held fixed), including: the polarization's dependence on
//! detector parameters, the Ω term for every oversampling (\[BUG?\] of the
//! reference's 1/os² fixed), the exact `∂/∂λ1 = λ_c·∂/∂λ0` (the reference uses
//! the corrected λ), and no `tr(N⁻¹dN)` term when `no_Nabc_scale` (\[BUG?\] of
//! the reference, which keeps it). Derivatives need the Gaussian shape.
//!
//! # Modules
//! [`model`] the per-step maths (pure functions; a GPU port mirrors them),
//! [`shot`] the inputs and the derivative parameters, [`prepared`] the hoisted
//! per-shot/per-domain quantities, [`cpu`] the loops, [`fhkl`] the |F|² grid,
//! [`mosaic`] the domain generator, [`pixels`] pixel lists and the ROI
//! assembly (background plane). The reference images are loaded by
//! [`crate::simulate::reference`].
//! [`mosaic`] the domain generator, [`wavelength`] the per-pixel mean
//! wavelength (laue mode), [`pixels`] pixel lists and the ROI
//! assembly (background plane), [`refcase`] a temporary loader of the
//! reference images.
//!
//! # Numerics and speed
//! All maths in f64. The step loop runs over blocks of 8 steps with no
//! branches, compiled three times (portable, AVX2+FMA, AVX-512) and chosen at
//! run time ([`SimdLevel`]); the vector variants fuse multiply-adds, so they
//! agree with the portable one to rounding (~1e-15), and with each other
//! exactly. `diffbragg bench kernel` measures it.
//!
//! # Use
//! ```text
//! let shot = PreparedShot::new(&model, &fhkl, None, &[Param::RotX, Param::Scale])?;
//! let out = shot.forward_with_derivs(&pixels)?;     // values + dense rows
//! let img = shot.forward(&full_detector_pixels(&model.detector))?;
//! ```

pub mod cpu;
pub mod fhkl;
pub mod model;
pub mod mosaic;
pub mod pixels;
pub mod prepared;
pub mod shot;
pub mod wavelength;

pub use cpu::KernelOutput;
pub use fhkl::FhklTable;
pub use model::LatticeShape;
pub use mosaic::{generate_umats, Eta};
pub use pixels::{full_detector_pixels, pixels_from_rois, BackgroundPlane, Pixel, Roi};
pub use prepared::{FhklScales, PreparedShot, SimdLevel};
pub use shot::{
    sources_from_spectrum, CrystalModel, DetectorShifts, MosaicSpec, NcellsParam, Param, ShotModel, Source,
    SubpixelFactors,
};
pub use wavelength::mean_wavelength;

/// Simulate every pixel of the detector (panel after panel, slow-major).
pub fn simulate_image(model: &ShotModel, fhkl: &FhklTable) -> crate::error::Result<Vec<f64>> {
    let shot = PreparedShot::new(model, fhkl, None, &[])?;
    shot.forward(&full_detector_pixels(&model.detector))
}
