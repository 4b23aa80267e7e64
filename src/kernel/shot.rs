//! The inputs that define one shot's Bragg model ([`ShotModel`]), their
//! validation, and the derivative parameters ([`Param`]).
//!
//! Everything here is plain data; [`super::PreparedShot`] hoists the matrices.
//! Units: detector lengths mm, wavelengths Å, rotX/Y/Z and cell angles
//! radians, η degrees, fluence photons/m².

// `!(x > 0.0)` is deliberate: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::model::LatticeShape;
use super::mosaic::{check_rotation, Eta};
use crate::conventions::{Mat3, Vec3};
use crate::error::{Error, Result};
use crate::geometry::{Beam, Detector};
use crate::spectrum::Spectrum;
use crate::ucell::UcellParams;

/// One spectral channel ("source").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Source {
    /// Wavelength, Å (before the affine correction λ' = λ0 + λ1·λ).
    pub wavelength: f64,
    /// Relative weight (any scale; the kernel normalises the weights to sum 1).
    pub weight: f64,
    /// Fhkl energy channel of this source (indexes the per-(ASU, channel) scales).
    pub channel: u32,
}

/// Sources from a spectrum, all in channel 0.
pub fn sources_from_spectrum(s: &Spectrum) -> Vec<Source> {
    s.wavelengths
        .iter()
        .zip(&s.weights)
        .map(|(&wavelength, &weight)| Source { wavelength, weight, channel: 0 })
        .collect()
}

/// How the mosaic domains are made.
#[derive(Clone, Debug, PartialEq)]
pub enum MosaicSpec {
    /// One domain, the identity.
    Single,
    /// Explicit rotations (domain m uses `U_m·a`); no η derivative.
    Explicit(Vec<Mat3>),
    /// diffBragg's generator ([`super::mosaic::generate_umats`]). `axes`: the
    /// crystal's a, b, c (columns, lab frame) **fixed at initialisation**, used
    /// only by the anisotropic model.
    Generated { n_domains: usize, eta: Eta, axes: Mat3 },
}

impl MosaicSpec {
    pub fn n_domains(&self) -> usize {
        match self {
            MosaicSpec::Single => 1,
            MosaicSpec::Explicit(v) => v.len(),
            MosaicSpec::Generated { n_domains, .. } => *n_domains,
        }
    }
}

/// The crystal part of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct CrystalModel {
    /// Orientation U (a proper rotation); fixed during refinement.
    pub u: Mat3,
    /// Unit cell by its lattice system's free parameters.
    pub ucell: UcellParams,
    /// Change of basis to the primitive setting (`A_real = …·B_real·Oᵀ`); identity for P lattices.
    pub o_matrix: Mat3,
    /// Misorientation angles rotX, rotY, rotZ, radians (`U' = Rx·Ry·Rz·U`).
    pub rot_xyz: [f64; 3],
    /// Mosaic-block size tensor entries `[Na, Nb, Nc, Nd, Ne, Nf]` (unit cells),
    /// `N = [[Na, Nd, Nf], [Nd, Nb, Ne], [Nf, Ne, Nc]]`.
    pub ncells: [f64; 6],
    pub shape: LatticeShape,
    /// Drop the `det(N)` prefactor of the Gaussian (diffBragg `no_Nabc_scale`).
    pub no_nabc_scale: bool,
    pub mosaic: MosaicSpec,
}

impl CrystalModel {
    /// A crystal with orientation `u`, cell `ucell`, diagonal N and one domain.
    pub fn new(u: Mat3, ucell: UcellParams, ncells_abc: [f64; 3]) -> CrystalModel {
        CrystalModel {
            u,
            ucell,
            o_matrix: Mat3::identity(),
            rot_xyz: [0.0; 3],
            ncells: [ncells_abc[0], ncells_abc[1], ncells_abc[2], 0.0, 0.0, 0.0],
            shape: LatticeShape::Gauss,
            no_nabc_scale: false,
            mosaic: MosaicSpec::Single,
        }
    }

    /// The symmetric N tensor.
    pub fn n_matrix(&self) -> Mat3 {
        let [a, b, c, d, e, f] = self.ncells;
        Mat3::new(a, d, f, d, b, e, f, e, c)
    }
}

/// Perturbations of the detector that are refined: a common lab-z shift,
/// per-panel lab translations and per-panel rotations.
///
/// A point of panel p moves as `P = c_p + R_p·(P₀ − c_p) + t_p + detz·ẑ`, with
/// `R_p = Rot(Ô₀, ω₀)·Rot(F̂₀, ω₁)·Rot(Ŝ₀, ω₂)` (right-handed, about the
/// unperturbed panel's outward normal, fast and slow axes) and `c_p` the
/// rotation centre (default: the panel centre).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DetectorShifts {
    /// Lab-z shift of every panel, mm (diffBragg `detz_shift`, not along each panel's normal).
    pub detz_shift: f64,
    /// Per-panel lab translation, mm (empty = none).
    pub panel_shift: Vec<Vec3>,
    /// Per-panel rotation angles (ω_O, ω_F, ω_S), radians (empty = none).
    pub panel_rot: Vec<[f64; 3]>,
    /// Per-panel rotation centre, lab mm (empty = panel centres).
    pub panel_rot_centre: Vec<Vec3>,
}

/// Where a pixel's solid angle Ω and polarization P are evaluated. The two
/// conventions differ only for oversampled pixels (or absorbing sensors, whose
/// layers each have their own Ω by default); at the corners of a 2×2
/// oversampled pixel the difference reaches ~5e-4 relative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SubpixelFactors {
    /// diffBragg (`oversample_omega = True`): Ω at every sub-pixel and sensor
    /// layer (with the full pixel area), P once at the pixel centre.
    #[default]
    OmegaPerSubpixel,
    /// nanoBragg's standalone program (no `-oversample_omega`/`-oversample_polar`):
    /// Ω and P once per pixel, at the centre of the first sub-pixel (0, 0) on
    /// the sensor's front face, and used for every sub-pixel and layer.
    FirstSubpixel,
}

/// Everything that defines one shot's Bragg model.
///
/// Pixel value (photons), before `roi_scale` and background:
/// `r_e²·Φ·G·P/(N_mos·os²) · Σ_sub Σ_layer Σ_c w_c Σ_m Ω·cap·|F(h0)|²·s·F_latt²`,
/// with w_c normalised to sum 1. \[TRAP\] diffBragg normalises the weights to
/// mean 1 and carries 1/N_src in the fluence instead; the pixel value is the
/// same for the same Φ, but cctbx's Φ is total_flux/(N_src·beamsize²) while
/// ours is total_flux/beamsize², so **our G = cctbx G / N_src** for the same
/// data. Layers are not averaged: their capture fractions add up to the
/// sensor's absorption (diffBragg divides by the layer count, which is wrong
/// once the capture fractions are right).
#[derive(Clone, Debug)]
pub struct ShotModel {
    /// Detector in the lab frame (mm).
    pub detector: Detector,
    /// Beam direction and polarization (its wavelength is not used: the sources give λ).
    pub beam: Beam,
    pub sources: Vec<Source>,
    pub crystal: CrystalModel,
    /// Fluence Φ, photons/m² (e.g. total_flux/beamsize²).
    pub fluence: f64,
    /// Overall scale G.
    pub scale: f64,
    /// Sub-pixels per pixel edge (≥ 1).
    pub oversample: usize,
    /// Where Ω and P are evaluated (default: diffBragg's convention).
    pub subpixel_factors: SubpixelFactors,
    /// Solid angle `1/R²` (per mm²) instead of `area·cosθ/R²` (nanoBragg `point_pixel`).
    pub point_pixel: bool,
    /// Apply the Kahn polarization factor with the beam's own fraction and
    /// normal. \[TRAP\] decided: hopper forces K = 1 with normal ŷ; we use the
    /// experiment's polarization. `false` = no polarization factor (P = 1).
    pub polarization: bool,
    /// Spectrum correction `λ' = λ0 + λ1·λ` (Å, dimensionless); default (0, 1).
    pub lambda_coef: [f64; 2],
    pub shifts: DetectorShifts,
    /// Sensor layers for absorption (≥ 1); used only for panels with
    /// thickness > 0 and μ > 0 (otherwise one layer with capture 1).
    pub thickness_layers: usize,
}

impl ShotModel {
    /// A model with G = 1, no oversampling, polarization on, no corrections.
    pub fn new(
        detector: Detector,
        beam: Beam,
        sources: Vec<Source>,
        crystal: CrystalModel,
        fluence: f64,
    ) -> ShotModel {
        ShotModel {
            detector,
            beam,
            sources,
            crystal,
            fluence,
            scale: 1.0,
            oversample: 1,
            subpixel_factors: SubpixelFactors::default(),
            point_pixel: false,
            polarization: true,
            lambda_coef: [0.0, 1.0],
            shifts: DetectorShifts::default(),
            thickness_layers: 1,
        }
    }

    /// Check every input; one error naming the offending parameter.
    pub fn validate(&self) -> Result<()> {
        let finite3 = |v: &Vec3| v.iter().all(|x| x.is_finite());
        if self.detector.panels.is_empty() {
            return Err(Error::param("detector", "no panels"));
        }
        for (i, p) in self.detector.panels.iter().enumerate() {
            let name = |f: &str| format!("detector.panel[{i}].{f}");
            if !(finite3(&p.origin) && finite3(&p.fast) && finite3(&p.slow)) {
                return Err(Error::param(name("origin/axes"), "not finite"));
            }
            if (p.fast.norm() - 1.0).abs() > 1e-6 || (p.slow.norm() - 1.0).abs() > 1e-6 {
                return Err(Error::param(name("axes"), "fast and slow axes must be unit vectors"));
            }
            if p.fast.cross(&p.slow).norm() < 1e-6 {
                return Err(Error::param(name("axes"), "fast and slow axes are parallel"));
            }
            if !(p.pixel_size.iter().all(|x| x.is_finite() && *x > 0.0)) {
                return Err(Error::param(name("pixel_size"), format!("{:?} must be positive", p.pixel_size)));
            }
            if p.image_size[0] == 0
                || p.image_size[1] == 0
                || p.image_size[0] > 1 << 20
                || p.image_size[1] > 1 << 20
            {
                return Err(Error::param(
                    name("image_size"),
                    format!("{:?} is not a usable size", p.image_size),
                ));
            }
            if !(p.thickness.is_finite() && p.thickness >= 0.0 && p.mu.is_finite() && p.mu >= 0.0) {
                return Err(Error::param(name("thickness/mu"), "must be finite and ≥ 0"));
            }
            if p.close_distance() <= 0.0 {
                return Err(Error::param(name("origin"), "the panel plane passes through the sample"));
            }
        }
        let b = &self.beam;
        if !(finite3(&b.direction) && b.direction.norm() > 0.0) {
            return Err(Error::param("beam.direction", "must be a finite non-zero vector"));
        }
        if self.polarization {
            if !(finite3(&b.polarization_normal) && b.polarization_normal.cross(&b.unit_s0()).norm() > 1e-6) {
                return Err(Error::param(
                    "beam.polarization_normal",
                    "must be finite and not along the beam",
                ));
            }
            if !(b.polarization_fraction.is_finite() && (0.0..=1.0).contains(&b.polarization_fraction)) {
                return Err(Error::param("beam.polarization_fraction", "must be within [0, 1]"));
            }
        }
        if self.sources.is_empty() {
            return Err(Error::param("sources", "empty spectrum"));
        }
        for (i, s) in self.sources.iter().enumerate() {
            if !(s.wavelength.is_finite() && s.wavelength > 0.0) {
                return Err(Error::param(
                    format!("sources[{i}].wavelength"),
                    format!("{} must be > 0", s.wavelength),
                ));
            }
            if !(s.weight.is_finite() && s.weight >= 0.0) {
                return Err(Error::param(
                    format!("sources[{i}].weight"),
                    format!("{} must be ≥ 0", s.weight),
                ));
            }
            let lp = self.lambda_coef[0] + self.lambda_coef[1] * s.wavelength;
            if !(lp.is_finite() && lp > 0.0) {
                return Err(Error::param(
                    "lambda_coef",
                    format!("corrected wavelength {lp} of source {i} is not > 0"),
                ));
            }
        }
        if !(self.sources.iter().map(|s| s.weight).sum::<f64>() > 0.0) {
            return Err(Error::param("sources", "weights sum to zero"));
        }
        if !(self.fluence.is_finite() && self.fluence >= 0.0) {
            return Err(Error::param("fluence", format!("{} must be finite and ≥ 0", self.fluence)));
        }
        if !self.scale.is_finite() {
            return Err(Error::param("G", "not finite"));
        }
        if self.oversample == 0 || self.oversample > 64 {
            return Err(Error::param("oversample", format!("{} must be within 1..=64", self.oversample)));
        }
        if self.thickness_layers == 0 || self.thickness_layers > 64 {
            return Err(Error::param("thickness_layers", "must be within 1..=64"));
        }
        let np = self.detector.panels.len();
        let s = &self.shifts;
        if !s.detz_shift.is_finite() {
            return Err(Error::param("detz_shift", "not finite"));
        }
        for (name, len) in [
            ("panel_shift", s.panel_shift.len()),
            ("panel_rot", s.panel_rot.len()),
            ("panel_rot_centre", s.panel_rot_centre.len()),
        ] {
            if len != 0 && len != np {
                return Err(Error::param(name, format!("{len} entries for {np} panels")));
            }
        }
        if !(s.panel_shift.iter().all(finite3)
            && s.panel_rot.iter().all(|r| r.iter().all(|x| x.is_finite()))
            && s.panel_rot_centre.iter().all(finite3))
        {
            return Err(Error::param("panel_shift/panel_rot", "not finite"));
        }
        self.validate_crystal()
    }

    fn validate_crystal(&self) -> Result<()> {
        let c = &self.crystal;
        check_rotation(&c.u).map_err(|e| Error::param("crystal.U", e))?;
        c.ucell.validate()?;
        if !(c.o_matrix.iter().all(|x| x.is_finite()) && c.o_matrix.determinant().abs() > 1e-9) {
            return Err(Error::param("crystal.O", "change-of-basis matrix must be finite and invertible"));
        }
        if !c.rot_xyz.iter().all(|x| x.is_finite()) {
            return Err(Error::param("rot_xyz", "not finite"));
        }
        if !c.ncells.iter().all(|x| x.is_finite()) {
            return Err(Error::param("ncells", "not finite"));
        }
        if !(c.ncells[..3].iter().all(|&x| x > 0.0)) {
            return Err(Error::param("ncells", format!("Na, Nb, Nc = {:?} must be > 0", &c.ncells[..3])));
        }
        if c.n_matrix().determinant() <= 0.0 {
            return Err(Error::param("ncells", "the N tensor must have a positive determinant"));
        }
        if c.shape == LatticeShape::Square && c.ncells[3..].iter().any(|&x| x != 0.0) {
            return Err(Error::param("ncells", "the SQUARE shape needs a diagonal N (Nd = Ne = Nf = 0)"));
        }
        match &c.mosaic {
            MosaicSpec::Single => {}
            MosaicSpec::Explicit(v) => {
                if v.is_empty() {
                    return Err(Error::param("mosaic", "explicit domain list is empty"));
                }
                for (i, u) in v.iter().enumerate() {
                    check_rotation(u).map_err(|e| Error::param(format!("mosaic.umats[{i}]"), e))?;
                }
            }
            MosaicSpec::Generated { axes, .. } => {
                if !(axes.iter().all(|x| x.is_finite()) && axes.determinant().abs() > 0.0) {
                    return Err(Error::param("mosaic.axes", "crystal axes must be finite and independent"));
                }
            }
        }
        Ok(())
    }
}

/// Which entry of the N tensor a derivative is taken for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NcellsParam {
    Na,
    Nb,
    Nc,
    /// Off-diagonal (0,1).
    Nd,
    /// Off-diagonal (1,2).
    Ne,
    /// Off-diagonal (0,2).
    Nf,
    /// Na = Nb = Nc moved together (isotropic Ncells).
    Iso,
}

impl NcellsParam {
    /// The unit perturbation dN.
    pub fn dn(self) -> Mat3 {
        let mut m = Mat3::zeros();
        let mut set = |i: usize, j: usize| {
            m[(i, j)] = 1.0;
            m[(j, i)] = 1.0;
        };
        match self {
            NcellsParam::Na => set(0, 0),
            NcellsParam::Nb => set(1, 1),
            NcellsParam::Nc => set(2, 2),
            NcellsParam::Nd => set(0, 1),
            NcellsParam::Ne => set(1, 2),
            NcellsParam::Nf => set(0, 2),
            NcellsParam::Iso => {
                set(0, 0);
                set(1, 1);
                set(2, 2)
            }
        }
        m
    }
}

/// A parameter the kernel can differentiate the pixel values by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Param {
    /// rotX, rotY, rotZ (radians).
    RotX,
    RotY,
    RotZ,
    /// Free unit-cell parameter i of the crystal's lattice system (Å or radians).
    Ucell(usize),
    /// An entry of the N tensor (unit cells).
    Ncells(NcellsParam),
    /// The overall scale G.
    Scale,
    /// Mosaic spread η (degrees): index 0 for isotropic, 0..3 (a, b, c) for anisotropic.
    Eta(usize),
    /// Lab-z shift of every panel, mm.
    DetzShift,
    /// Lab translation of one panel along x (0), y (1) or z (2), mm.
    PanelShift {
        panel: usize,
        axis: usize,
    },
    /// Rotation of one panel about its outward normal (0), fast (1) or slow (2) axis, radians.
    PanelRot {
        panel: usize,
        axis: usize,
    },
    /// Spectrum offset λ0, Å.
    LambdaOffset,
    /// Spectrum scale λ1 (dimensionless).
    LambdaScale,
}

impl Param {
    /// A stable, readable name (`rotX`, `ucell1`, `Na`, `panel3_shift_z`...).
    pub fn name(&self) -> String {
        match self {
            Param::RotX => "rotX".into(),
            Param::RotY => "rotY".into(),
            Param::RotZ => "rotZ".into(),
            Param::Ucell(i) => format!("ucell{i}"),
            Param::Ncells(n) => format!("{n:?}"),
            Param::Scale => "G".into(),
            Param::Eta(i) => format!("eta{i}"),
            Param::DetzShift => "detz_shift".into(),
            Param::PanelShift { panel, axis } => {
                format!("panel{panel}_shift_{}", ["x", "y", "z"][(*axis).min(2)])
            }
            Param::PanelRot { panel, axis } => {
                format!("panel{panel}_rot_{}", ["O", "F", "S"][(*axis).min(2)])
            }
            Param::LambdaOffset => "lambda_offset".into(),
            Param::LambdaScale => "lambda_scale".into(),
        }
    }

    /// The stage-1 default set: rotX/Y/Z, every cell parameter, Na/Nb/Nc, G.
    pub fn stage1_defaults(crystal: &CrystalModel) -> Vec<Param> {
        let mut v = vec![Param::RotX, Param::RotY, Param::RotZ, Param::Scale];
        v.extend([NcellsParam::Na, NcellsParam::Nb, NcellsParam::Nc].map(Param::Ncells));
        v.extend((0..crystal.ucell.system.n_params()).map(Param::Ucell));
        v
    }
}
