//! Simulate one shot with the forward model: `diffbragg simulate` without the
//! command line, so stages and tests can call it.
//!
//! [`SimulateConfig`] names every input; [`simulate`] reads them, renders the
//! image and writes it. The steps are public on their own:
//! [`load_inputs`] (files → [`ShotInputs`]: the kernel's [`ShotModel`] and
//! [`FhklTable`]), [`render`] (noise-free photons), [`add_noise`] and
//! [`write_outputs`].
//!
//! # Conventions
//! * The shot: beam, detector and crystal of experiment `exp_idx` of an `.expt`.
//!   Polarization is the beam's own (Kahn factor from its fraction, E-vector
//!   ⟂ to its polarization normal), or none with `polarization = false`.
//! * The spectrum's weights may have any scale: the kernel normalises them to
//!   sum 1, and the fluence Φ (photons/m²) is the shot's total. From a total
//!   flux and a square beam, `Φ = total_flux/beamsize²` (diffBragg's `1/N_src`
//!   lives in its G, see [`crate::kernel`]).
//! * Structure factors are amplitudes in space group S: `space_group` if given,
//!   else the crystal's Hall symbol. They are expanded to P1 by
//!   [`expand_amplitudes`] (symmetry mates, then Friedel mates unless the input
//!   is an anomalous F(+)/F(−) array), then, for a centred S, re-indexed in the
//!   primitive basis `h_p = O·h` that the kernel's `A_real·Oᵀ` expects
//!   ([`crate::symmetry::PrimitiveBasis`]). An MTZ must be in a group with S's
//!   point-group operations (else say `space_group`). Indices absent after the
//!   expansion get `default_F`; F(000) = 0.
//! * The image is in photons times `adu_per_photon` (1 = photons), panel after
//!   panel, slow-major. With an ROI, pixels outside it are exactly 0 (no noise
//!   either). Noise: Poisson counts of the photon value, then Gaussian readout
//!   noise of σ = `readout_sigma` ADU, drawn in pixel order from ChaCha20
//!   seeded with `seed` (the same seed gives the same image on any machine and
//!   thread count).
//! * Outputs: `out` (HDF5, diffBragg's layout, [`crate::io::hdf5::writer`]) with
//!   the spectrum used, and `out` with extension `.expt`: the experiment with
//!   its imageset pointing at the HDF5 file by file name (a path relative to
//!   the `.expt`). Each is written atomically.
//! * Device: the image is rendered on the backend `device` chooses
//!   ([`crate::gpu::select_for`]; default `auto`, logged). The nanoBragg
//!   sub-pixel convention exists on the CPU kernel only: `auto` then takes the
//!   CPU and `cuda` is an error before any work. The backend that ran is in the
//!   report and in the HDF5 file's root attributes `diffbragg_backend`
//!   (`cpu`/`cuda`) and `diffbragg_device` (its one-line description).

// `!(x > 0.0)` is deliberate: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod reference;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Poisson};

use crate::conventions::Mat3;
use crate::error::{io_err, Error, Result};
use crate::experiment::{Experiment, ExperimentList, ImageSetRef};
use crate::gpu::{ops, select_for, Backend, CpuBackend, DeviceChoice};
use crate::image::{Image, PanelImage};
use crate::io::hdf5::writer::{write_attr_geom_h5, WriterOptions};
use crate::kernel::mosaic::parse_umats;
use crate::kernel::{
    full_detector_pixels, sources_from_spectrum, CrystalModel, Eta, FhklTable, LatticeShape, MosaicSpec,
    Pixel, PreparedShot, ShotModel, SubpixelFactors,
};
use crate::spectrum::Spectrum;
use crate::symmetry::{Miller, SpaceGroup};
use crate::ucell::{LatticeSystem, UcellParams};

/// Where the spectrum comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum SpectrumSource {
    /// One channel at the beam's wavelength.
    Monochromatic,
    /// A `.lam` file (wavelength Å, weight).
    Lam(PathBuf),
    /// The spectrum stored with the experiment's image (HDF5/NeXus).
    FromImage,
}

/// Where the structure factors come from.
#[derive(Clone, Debug, PartialEq)]
pub enum StructureFactors {
    /// None: every reflection has `default_F`.
    DefaultOnly,
    /// Text `h k l F` (gzip accepted).
    HklText(PathBuf),
    /// An MTZ and diffBragg's `mtz_column` spec (`F`, `F,SIGF`, `I`, `F(+),F(-)`, ...).
    Mtz { path: PathBuf, column: String },
}

/// How the mosaic domains are made.
#[derive(Clone, Debug, PartialEq)]
pub enum Mosaic {
    /// One domain.
    Single,
    /// diffBragg's generator: `n` domains (1 or even) with spread η (degrees).
    Generated { n_domains: usize, eta: Eta },
    /// Explicit rotations, one row-major 3×3 per line (domain m uses `U_m·a`).
    Umats(PathBuf),
}

/// How the fluence is given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fluence {
    /// Photons/m².
    PerArea(f64),
    /// Photons in the shot and the edge of a square beam (mm): `Φ = flux/beamsize²`.
    Flux { total_flux: f64, beamsize_mm: f64 },
}

impl Fluence {
    /// Photons/m².
    pub fn photons_per_m2(&self) -> Result<f64> {
        match *self {
            Fluence::PerArea(f) => {
                if f.is_finite() && f > 0.0 {
                    Ok(f)
                } else {
                    Err(Error::param("fluence", format!("{f} must be finite and > 0")))
                }
            }
            Fluence::Flux { total_flux, beamsize_mm } => {
                if !(total_flux.is_finite() && total_flux > 0.0) {
                    return Err(Error::param("total_flux", format!("{total_flux} must be finite and > 0")));
                }
                if !(beamsize_mm.is_finite() && beamsize_mm > 0.0) {
                    return Err(Error::param("beamsize_mm", format!("{beamsize_mm} must be finite and > 0")));
                }
                let side_m = beamsize_mm / crate::conventions::MM_PER_M;
                Ok(total_flux / (side_m * side_m))
            }
        }
    }
}

/// Which pixels are rendered.
#[derive(Clone, Debug, PartialEq)]
pub enum RoiSpec {
    /// Every pixel.
    Full,
    /// An inclusive pixel box `[f0, f1] × [s0, s1]` (fast, slow), on `panel`
    /// or, if `None`, on every panel (clipped to each).
    Box { f0: usize, f1: usize, s0: usize, s1: usize, panel: Option<usize> },
    /// The `bbox` of every row of a reflection table that belongs to the
    /// experiment, grown by `pad` pixels on each side (clipped to the panel).
    Refl { path: PathBuf, pad: usize },
}

/// Noise model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Noise {
    None,
    /// Poisson photon counts, then Gaussian readout noise (σ in ADU, may be 0).
    Poisson {
        readout_sigma: f64,
        seed: u64,
    },
}

/// Every input of one simulation.
#[derive(Clone, Debug)]
pub struct SimulateConfig {
    pub expt: PathBuf,
    pub exp_idx: usize,
    pub spectrum: SpectrumSource,
    pub structure_factors: StructureFactors,
    pub default_f: f64,
    /// Override of the crystal's space group (number, H-M or Hall symbol).
    pub space_group: Option<String>,
    /// Na, Nb, Nc.
    pub ncells: [f64; 3],
    /// Nd, Ne, Nf (off-diagonal entries of the N tensor).
    pub ncells_def: [f64; 3],
    pub shape: LatticeShape,
    pub mosaic: Mosaic,
    /// Overall scale G.
    pub scale: f64,
    pub fluence: Fluence,
    pub oversample: usize,
    pub subpixel_factors: SubpixelFactors,
    pub polarization: bool,
    pub point_pixel: bool,
    pub roi: RoiSpec,
    pub noise: Noise,
    pub adu_per_photon: f64,
    /// The HDF5 file to write; the `.expt` goes next to it.
    pub out: PathBuf,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Kernel backend (`--device`).
    pub device: DeviceChoice,
}

impl SimulateConfig {
    /// A configuration with diffBragg's defaults for everything but the
    /// experiment, the block size and the output.
    pub fn new(expt: impl Into<PathBuf>, ncells: [f64; 3], out: impl Into<PathBuf>) -> SimulateConfig {
        SimulateConfig {
            expt: expt.into(),
            exp_idx: 0,
            spectrum: SpectrumSource::Monochromatic,
            structure_factors: StructureFactors::DefaultOnly,
            default_f: 0.0,
            space_group: None,
            ncells,
            ncells_def: [0.0; 3],
            shape: LatticeShape::Gauss,
            mosaic: Mosaic::Single,
            scale: 1.0,
            fluence: Fluence::Flux { total_flux: 1e12, beamsize_mm: 1.0 },
            oversample: 1,
            subpixel_factors: SubpixelFactors::default(),
            polarization: true,
            point_pixel: false,
            roi: RoiSpec::Full,
            noise: Noise::None,
            adu_per_photon: 1.0,
            out: out.into(),
            progress: false,
            device: DeviceChoice::default(),
        }
    }

    /// Where the `.expt` of the output goes: `out` with extension `.expt`.
    pub fn out_expt(&self) -> PathBuf {
        self.out.with_extension("expt")
    }
}

/// The loaded shot: what the kernel needs, and what the outputs describe.
#[derive(Clone, Debug)]
pub struct ShotInputs {
    pub experiment: Experiment,
    pub spectrum: Spectrum,
    pub model: ShotModel,
    pub fhkl: FhklTable,
    pub space_group: SpaceGroup,
    /// The rendered pixels, panel after panel, slow-major (ROI order).
    pub pixels: Vec<Pixel>,
    /// Counts from the structure-factor expansion.
    pub expansion: ExpansionStats,
}

/// What [`expand_amplitudes`] and the primitive re-indexing did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpansionStats {
    /// Reflections read.
    pub input: usize,
    /// P1 reflections after symmetry and Friedel mates (before re-indexing).
    pub p1: usize,
    /// Friedel mates added.
    pub friedel_added: usize,
    /// Anomalous F(−) of centric reflections dropped (F(+) kept).
    pub centric_minus_dropped: usize,
    /// Reflections without a primitive index (centring-absent) dropped.
    pub centring_absent_dropped: usize,
}

/// A summary of one run.
#[derive(Clone, Debug)]
pub struct SimulateReport {
    pub h5: PathBuf,
    pub expt: PathBuf,
    pub n_pixels: usize,
    /// Noise-free photons summed over the rendered pixels, and the largest value.
    pub sum_photons: f64,
    pub max_photons: f64,
    pub seconds: f64,
    pub expansion: ExpansionStats,
    pub space_group: String,
    pub fluence: f64,
    /// [`Backend::name`] and [`Backend::describe`] of the backend that rendered.
    pub backend: String,
    pub device: String,
}

/// Read every input, render, add noise and write both outputs.
pub fn simulate(cfg: &SimulateConfig) -> Result<SimulateReport> {
    check_output(cfg)?;
    let inputs = load_inputs(cfg)?;
    let cpu_only = (inputs.model.subpixel_factors == SubpixelFactors::FirstSubpixel)
        .then_some("--subpixel-factors nanobragg (the nanoBragg sub-pixel convention)");
    let backend = select_for(cfg.device, &crate::dist::SingleProcess, cpu_only)?;
    let t = std::time::Instant::now();
    let photons = render_on(&*backend, &inputs, cfg.progress)?;
    let seconds = t.elapsed().as_secs_f64();
    let (sum_photons, max_photons) = photons.iter().fold((0.0, 0.0f64), |(s, m), &v| (s + v, m.max(v)));
    let image = add_noise(&photons, &inputs.pixels, &cfg.noise, cfg.adu_per_photon)?;
    let det = &inputs.model.detector;
    let full = scatter_to_image(det, &inputs.pixels, &image)?;
    let (h5, expt) = write_outputs(&cfg.out, &inputs.experiment, &full, &inputs.spectrum, &*backend)?;
    Ok(SimulateReport {
        h5,
        expt,
        n_pixels: inputs.pixels.len(),
        sum_photons,
        max_photons,
        seconds,
        expansion: inputs.expansion,
        space_group: inputs.space_group.hm(),
        fluence: inputs.model.fluence,
        backend: backend.name().to_string(),
        device: backend.describe(),
    })
}

/// The output must not overwrite an input and must end in `.h5`-like name
/// different from its `.expt`.
fn check_output(cfg: &SimulateConfig) -> Result<()> {
    let out = &cfg.out;
    if out.file_name().is_none() {
        return Err(Error::param("out", format!("`{}` is not a file name", out.display())));
    }
    if out.extension().is_some_and(|e| e.eq_ignore_ascii_case("expt")) {
        return Err(Error::param(
            "out",
            "give the HDF5 file (e.g. shot.h5); the .expt is written next to it",
        ));
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    if same(&cfg.expt, &cfg.out_expt()) || same(&cfg.expt, out) {
        return Err(Error::param("out", "would overwrite the input .expt"));
    }
    Ok(())
}

/// Read the experiment, spectrum, structure factors and ROI into kernel inputs.
pub fn load_inputs(cfg: &SimulateConfig) -> Result<ShotInputs> {
    // Only this experiment's models are parsed (big combined files stay cheap).
    let list = ExperimentList::read_one(&cfg.expt, cfg.exp_idx)?;
    let experiment = list.get(0)?.clone();
    let beam = experiment.beam()?.clone();
    let detector = experiment.detector()?.clone();
    let crystal = experiment.crystal()?.clone();
    if !(crystal.real.determinant().abs() > 1e-6 && crystal.real.iter().all(|x| x.is_finite())) {
        return Err(experiment.error("crystal: degenerate real-space vectors"));
    }
    let sg = match &cfg.space_group {
        Some(s) => SpaceGroup::parse(s).map_err(|e| Error::param("space_group", e.to_string()))?,
        None => SpaceGroup::from_hall(&crystal.space_group_hall).map_err(|e| {
            experiment.error(format!(
                "crystal space group `{}`: {e} (give one with --space-group)",
                crystal.space_group_hall.trim()
            ))
        })?,
    };
    let spectrum = load_spectrum(cfg, &experiment)?;

    // Structure factors: P1 expansion, then the primitive basis.
    let (hkl, f, anomalous, what) = match &cfg.structure_factors {
        StructureFactors::DefaultOnly => {
            if !(cfg.default_f > 0.0) {
                return Err(Error::param(
                    "default_F",
                    "no structure factors given (--mtz or --hkl) and default_F is not > 0: the image would be empty",
                ));
            }
            (vec![], vec![], false, "default_F".to_string())
        }
        StructureFactors::HklText(p) => {
            let a = crate::io::hkl_text::read_hkl_text(p)?;
            (a.hkl, a.f, false, p.display().to_string())
        }
        StructureFactors::Mtz { path, column } => {
            let mtz = crate::io::mtz::Mtz::read(path)?;
            if cfg.space_group.is_none() {
                if let Some(msg) = mtz.space_group.as_ref().and_then(|m| point_group_mismatch(m, &sg)) {
                    return Err(Error::file(path, format!("{msg}; choose one with --space-group")));
                }
            }
            let a = mtz.amplitudes(column).map_err(|e| Error::file(path, e.to_string()))?;
            (a.hkl, a.f, a.anomalous, path.display().to_string())
        }
    };
    let (p1_hkl, p1_f, mut expansion) =
        expand_amplitudes(&sg, &hkl, &f, anomalous).map_err(|m| Error::msg(format!("{what}: {m}")))?;
    let pb = sg.change_of_basis_to_primitive()?;
    let o_matrix = pb.o_matrix();
    let (mut ph, mut pf) = (Vec::with_capacity(p1_hkl.len()), Vec::with_capacity(p1_f.len()));
    for (h, v) in p1_hkl.iter().zip(&p1_f) {
        match pb.to_primitive_hkl(h) {
            Some(hp) => {
                ph.push(hp);
                pf.push(*v);
            }
            None => expansion.centring_absent_dropped += 1,
        }
    }
    let fhkl =
        FhklTable::new(&ph, &pf, cfg.default_f, false).map_err(|e| Error::msg(format!("{what}: {e}")))?;

    // The crystal: A_real = U·B_real·Oᵀ (the kernel's convention).
    let ucell = UcellParams::from_cell(LatticeSystem::Triclinic, &crystal.unit_cell())?;
    let u = crystal.u_matrix();
    let mut cm = CrystalModel::new(u, ucell, cfg.ncells);
    cm.ncells[3..].copy_from_slice(&cfg.ncells_def);
    cm.o_matrix = o_matrix;
    cm.shape = cfg.shape;
    cm.mosaic = match &cfg.mosaic {
        Mosaic::Single => MosaicSpec::Single,
        Mosaic::Generated { n_domains, eta } => {
            // The anisotropic model's axes: the crystal's a, b, c as given (conventional cell).
            MosaicSpec::Generated { n_domains: *n_domains, eta: eta.clone(), axes: crystal.real }
        }
        Mosaic::Umats(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| io_err(p, e))?;
            MosaicSpec::Explicit(parse_umats(&text, p)?)
        }
    };
    let fluence = cfg.fluence.photons_per_m2()?;
    let mut model = ShotModel::new(detector, beam, sources_from_spectrum(&spectrum), cm, fluence);
    if !cfg.scale.is_finite() || cfg.scale < 0.0 {
        return Err(Error::param("G", format!("{} must be finite and ≥ 0", cfg.scale)));
    }
    model.scale = cfg.scale;
    model.oversample = cfg.oversample;
    model.subpixel_factors = cfg.subpixel_factors;
    model.polarization = cfg.polarization;
    model.point_pixel = cfg.point_pixel;
    model.validate()?;
    if !(cfg.adu_per_photon.is_finite() && cfg.adu_per_photon > 0.0) {
        return Err(Error::param("adu_per_photon", format!("{} must be finite and > 0", cfg.adu_per_photon)));
    }
    if let Noise::Poisson { readout_sigma, .. } = cfg.noise {
        if !(readout_sigma.is_finite() && readout_sigma >= 0.0) {
            return Err(Error::param("readout_sigma", format!("{readout_sigma} must be finite and ≥ 0")));
        }
    }
    let pixels = select_pixels(&cfg.roi, &model, &experiment, cfg.exp_idx)?;
    Ok(ShotInputs { experiment, spectrum, model, fhkl, space_group: sg, pixels, expansion })
}

fn load_spectrum(cfg: &SimulateConfig, e: &Experiment) -> Result<Spectrum> {
    let s = match &cfg.spectrum {
        SpectrumSource::Monochromatic => Spectrum::monochromatic(e.beam()?.wavelength),
        SpectrumSource::Lam(p) => crate::io::lam::read_lam(p)?,
        SpectrumSource::FromImage => {
            let loc = e.image_location()?;
            let src = crate::image::open_image_source(&loc.path)?;
            src.spectrum(loc.index)?.ok_or_else(|| {
                Error::file(
                    &loc.path,
                    format!("image {} carries no spectrum (--spectrum-from-image)", loc.index),
                )
            })?
        }
    };
    s.validate().map_err(|m| Error::param("spectrum", m))?;
    Ok(s)
}

/// `None` if the two groups have the same point-group rotations, else why not.
fn point_group_mismatch(a: &SpaceGroup, b: &SpaceGroup) -> Option<String> {
    let rots = |g: &SpaceGroup| {
        let mut v: Vec<_> = g.ops().sym_ops.iter().map(|o| o.rot).collect();
        v.sort();
        v
    };
    (rots(a) != rots(b)).then(|| {
        format!(
            "the file's space group {} has other symmetry operations than the crystal's {}",
            a.hm(),
            b.hm()
        )
    })
}

/// Expand amplitudes given in space group `sg` to P1.
///
/// Every input reflection gives its value to its symmetry mates `h·R` (proper
/// rotations; translations do not change an amplitude); two inputs that are
/// mates must agree (to 1e-6 relative), else the data are not in `sg`. The
/// exception is an `anomalous` array (F(+) at h and F(−) at −h) where −h is
/// itself a mate of h (a centric reflection): there F(+) is kept and F(−)
/// dropped. Then, unless `anomalous`, every index still empty whose Friedel
/// mate has a value gets that value (cctbx `generate_bijvoet_mates`, which
/// leaves anomalous arrays alone: a missing F(−) stays missing).
/// Returns the P1 indices, their amplitudes (ordered by input) and counts.
pub fn expand_amplitudes(
    sg: &SpaceGroup,
    hkl: &[Miller],
    f: &[f64],
    anomalous: bool,
) -> std::result::Result<(Vec<Miller>, Vec<f64>, ExpansionStats), String> {
    if hkl.len() != f.len() {
        return Err(format!("{} indices but {} amplitudes", hkl.len(), f.len()));
    }
    let mut stats = ExpansionStats { input: hkl.len(), ..Default::default() };
    let ops = &sg.ops().sym_ops;
    // Index → (position in the output, input row that set it).
    let mut at: HashMap<Miller, (usize, usize)> = HashMap::with_capacity(hkl.len() * ops.len() * 2);
    let (mut out_h, mut out_f): (Vec<Miller>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut orbit: Vec<Miller> = Vec::with_capacity(ops.len());
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs());
    for (i, (h, &v)) in hkl.iter().zip(f).enumerate() {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("reflection {h:?}: amplitude {v} must be finite and ≥ 0"));
        }
        orbit.clear();
        for op in ops {
            let e = op.apply_to_hkl(h);
            if !orbit.contains(&e) {
                orbit.push(e);
            }
        }
        let mut conflict = None;
        for e in &orbit {
            if let Some(&(k, j)) = at.get(e) {
                if !same(out_f[k], v) {
                    conflict = Some((j, out_f[k]));
                    break;
                }
            }
        }
        if let Some((j, other)) = conflict {
            let minus_h = [-h[0], -h[1], -h[2]];
            if anomalous && orbit.contains(&minus_h) {
                stats.centric_minus_dropped += 1;
                continue;
            }
            return Err(format!(
                "reflections {:?} (F = {other}) and {h:?} (F = {v}) are equivalent in {} but differ: \
                 the data are not in this space group",
                hkl[j],
                sg.hm()
            ));
        }
        for e in &orbit {
            if !at.contains_key(e) {
                at.insert(*e, (out_h.len(), i));
                out_h.push(*e);
                out_f.push(v);
            }
        }
    }
    if !anomalous {
        let n = out_h.len();
        for k in 0..n {
            let m = out_h[k].map(|x| -x);
            if !at.contains_key(&m) {
                at.insert(m, (out_h.len(), at[&out_h[k]].1));
                out_h.push(m);
                out_f.push(out_f[k]);
                stats.friedel_added += 1;
            }
        }
    }
    stats.p1 = out_h.len();
    Ok((out_h, out_f, stats))
}

/// The pixels to render, panel after panel, slow-major, without repeats.
pub fn select_pixels(roi: &RoiSpec, model: &ShotModel, e: &Experiment, exp_idx: usize) -> Result<Vec<Pixel>> {
    let det = &model.detector;
    let all = || full_detector_pixels(det);
    let mut mask: Vec<Vec<bool>> = det.panels.iter().map(|p| vec![false; p.n_pixels()]).collect();
    let mut mark = |panel: usize, x0: usize, x1: usize, y0: usize, y1: usize| {
        let nf = det.panels[panel].image_size[0];
        for y in y0..y1 {
            mask[panel][y * nf + x0..y * nf + x1].iter_mut().for_each(|m| *m = true);
        }
    };
    match roi {
        RoiSpec::Full => return Ok(all()),
        RoiSpec::Box { f0, f1, s0, s1, panel } => {
            if f0 > f1 || s0 > s1 {
                return Err(Error::param(
                    "roi",
                    format!("[{f0}, {f1}] × [{s0}, {s1}] is empty (need F0 ≤ F1, S0 ≤ S1)"),
                ));
            }
            let panels: Vec<usize> = match panel {
                Some(p) if *p >= det.panels.len() => {
                    return Err(Error::param(
                        "roi_panel",
                        format!("panel {p} does not exist ({} panels)", det.panels.len()),
                    ))
                }
                Some(p) => vec![*p],
                None => (0..det.panels.len()).collect(),
            };
            let mut any = false;
            for p in panels {
                let [nf, ns] = det.panels[p].image_size;
                if *f0 < nf && *s0 < ns {
                    mark(p, *f0, (*f1 + 1).min(nf), *s0, (*s1 + 1).min(ns));
                    any = true;
                }
            }
            if !any {
                return Err(Error::param(
                    "roi",
                    format!("[{f0}, {f1}] × [{s0}, {s1}] lies outside the panels"),
                ));
            }
        }
        RoiSpec::Refl { path, pad } => {
            let table = crate::io::dials_refl::read_refl(path)?;
            let rows = refl_rows_of_experiment(&table, e, exp_idx, path)?;
            let bbox = table.get_int6("bbox").map_err(|m| Error::file(path, m.to_string()))?;
            let panel_col: Option<&[u64]> = table.get_size("panel").ok();
            if rows.is_empty() {
                return Err(Error::file(path, format!("no reflections of experiment {exp_idx}")));
            }
            for &r in &rows {
                let b = bbox[r];
                let p = panel_col.map_or(0, |c| c[r] as usize);
                let Some(pan) = det.panels.get(p) else {
                    return Err(Error::record(path, format!("row {r}"), format!("panel {p} does not exist")));
                };
                let [nf, ns] = pan.image_size;
                let pad = *pad as i64;
                let clip = |lo: i32, hi: i32, n: usize| {
                    let lo = (lo as i64 - pad).clamp(0, n as i64) as usize;
                    let hi = (hi as i64 + pad).clamp(0, n as i64) as usize;
                    (lo, hi)
                };
                let (x0, x1) = clip(b[0], b[1], nf);
                let (y0, y1) = clip(b[2], b[3], ns);
                if x0 < x1 && y0 < y1 {
                    mark(p, x0, x1, y0, y1);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (p, m) in mask.iter().enumerate() {
        let nf = det.panels[p].image_size[0];
        for (i, _) in m.iter().enumerate().filter(|(_, &on)| on) {
            out.push(Pixel { panel: p as u32, fast: (i % nf) as u32, slow: (i / nf) as u32 });
        }
    }
    if out.is_empty() {
        return Err(Error::param("roi", "selects no pixel on the detector"));
    }
    Ok(out)
}

/// Rows of a reflection table that belong to experiment `exp_idx`: by the
/// experiment's identifier when the table maps ids to identifiers, else by
/// `id == exp_idx`; every row if the table has no `id` column.
fn refl_rows_of_experiment(
    t: &crate::reflections::ReflectionTable,
    e: &Experiment,
    exp_idx: usize,
    path: &Path,
) -> Result<Vec<usize>> {
    let Ok(ids) = t.get_int("id") else {
        return Ok((0..t.nrows()).collect());
    };
    let by_ident = (!e.identifier.is_empty())
        .then(|| t.identifiers.iter().find(|(_, s)| **s == e.identifier).map(|(&k, _)| k as i64))
        .flatten();
    let want = match by_ident {
        Some(id) => id,
        None if !t.identifiers.is_empty() && !e.identifier.is_empty() => {
            return Err(Error::file(
                path,
                format!("no experiment identifier `{}` in the table's identifiers", e.identifier),
            ))
        }
        None => exp_idx as i64,
    };
    Ok(ids.iter().enumerate().filter(|(_, &v)| v as i64 == want).map(|(i, _)| i).collect())
}

/// Noise-free values of `inputs.pixels` (photons) on the CPU kernel
/// ([`render_on`] with [`CpuBackend`]).
pub fn render(inputs: &ShotInputs, progress: bool) -> Result<Vec<f64>> {
    render_on(&CpuBackend, inputs, progress)
}

/// Noise-free values of `inputs.pixels` (photons) on `backend`, with a
/// progress bar for big images when `progress` and stderr is a terminal.
pub fn render_on(backend: &dyn Backend, inputs: &ShotInputs, progress: bool) -> Result<Vec<f64>> {
    let shot = PreparedShot::new(&inputs.model, &inputs.fhkl, None, &[])?;
    let px = &inputs.pixels;
    let steps = px.len() as f64 * shot.steps_per_pixel(0) as f64;
    let bar = (progress && std::io::stderr().is_terminal() && steps > 2e8).then(|| {
        let b = indicatif::ProgressBar::new(px.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "simulate {bar:40} {percent:>3}% {elapsed_precise} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let Some(bar) = bar else {
        return ops::forward_prepared(backend, &shot, px.clone());
    };
    let mut out = Vec::with_capacity(px.len());
    for chunk in px.chunks(px.len().div_ceil(100).max(4096)) {
        out.extend(ops::forward_prepared(backend, &shot, chunk.to_vec())?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Image values (ADU) of the rendered pixels: `adu_per_photon` times the
/// photons, or times a Poisson draw of them plus readout noise.
pub fn add_noise(photons: &[f64], pixels: &[Pixel], noise: &Noise, adu_per_photon: f64) -> Result<Vec<f64>> {
    if photons.len() != pixels.len() {
        return Err(Error::msg(format!("{} values for {} pixels", photons.len(), pixels.len())));
    }
    match *noise {
        Noise::None => Ok(photons.iter().map(|&v| v * adu_per_photon).collect()),
        Noise::Poisson { readout_sigma, seed } => {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let readout = if readout_sigma > 0.0 {
                Some(
                    Normal::new(0.0, readout_sigma)
                        .map_err(|e| Error::param("readout_sigma", e.to_string()))?,
                )
            } else {
                None
            };
            let mut out = Vec::with_capacity(photons.len());
            for (i, &lam) in photons.iter().enumerate() {
                if !(lam.is_finite() && lam >= 0.0) {
                    return Err(Error::msg(format!(
                        "pixel {:?}: model value {lam} cannot be Poisson-sampled",
                        pixels[i]
                    )));
                }
                let counts = if lam > 0.0 {
                    Poisson::new(lam)
                        .map_err(|e| Error::msg(format!("Poisson({lam}): {e}")))?
                        .sample(&mut rng)
                } else {
                    0.0
                };
                let r = readout.map_or(0.0, |n| n.sample(&mut rng));
                out.push(counts * adu_per_photon + r);
            }
            Ok(out)
        }
    }
}

/// Place per-pixel values into a full detector image (zeros elsewhere).
pub fn scatter_to_image(det: &crate::geometry::Detector, pixels: &[Pixel], values: &[f64]) -> Result<Image> {
    let mut panels: Vec<PanelImage> =
        det.panels.iter().map(|p| PanelImage::zeros(p.image_size[1], p.image_size[0])).collect();
    for (p, &v) in pixels.iter().zip(values) {
        let nf = det.panels[p.panel as usize].image_size[0];
        panels[p.panel as usize].data_mut()[p.slow as usize * nf + p.fast as usize] = v;
    }
    Ok(Image::new(panels))
}

/// Write `image` to `h5` (diffBragg's layout, with `spectrum`, and the
/// `backend` that rendered it as root attributes) and the experiment, pointing
/// at it, to `h5` with extension `.expt`. Returns both paths.
pub fn write_outputs(
    h5: &Path,
    e: &Experiment,
    image: &Image,
    spectrum: &Spectrum,
    backend: &dyn Backend,
) -> Result<(PathBuf, PathBuf)> {
    let expt_path = h5.with_extension("expt");
    let name = h5
        .file_name()
        .ok_or_else(|| Error::param("out", format!("`{}` is not a file name", h5.display())))?;
    let mut out = e.clone();
    // The image is the first (only) image of the HDF5 file, named relative to the .expt.
    out.imageset = Some(ImageSetRef::single_image(PathBuf::from(name), Some(0)));
    out.provenance.imageset = None;
    out.scan = None;
    out.provenance.scan = None;
    out.goniometer = None;
    out.provenance.goniometer = None;
    let list = ExperimentList::new(vec![out]);
    // The dxtbx dicts of the geometry attributes are exactly what the .expt holds.
    let text = list.to_json_string(&expt_path)?;
    let v = crate::io::dials_expt::parse_json(text.as_bytes(), &expt_path)?;
    let first = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_array())
            .and_then(|a| a.first())
            .cloned()
            .ok_or_else(|| Error::msg(format!("internal: no {k} in the written experiment")))
    };
    let (det_dict, beam_dict) = (first("detector")?, first("beam")?);
    // The writer renames its finished file onto the path it is given: give it a
    // staging name, add the backend attributes there, then rename onto `h5`,
    // so `h5` appears complete (attributes included) or not at all.
    let staging = h5.with_file_name(format!("{}.staging-{}", name.to_string_lossy(), std::process::id()));
    let staged = write_attr_geom_h5(
        &staging,
        &det_dict,
        &beam_dict,
        std::slice::from_ref(image),
        Some(std::slice::from_ref(spectrum)),
        WriterOptions::default(),
    )
    .and_then(|()| write_backend_attrs(&staging, backend))
    .and_then(|()| std::fs::rename(&staging, h5).map_err(|err| io_err(h5, err)));
    if let Err(err) = staged {
        let _ = std::fs::remove_file(&staging);
        return Err(err);
    }
    list.write(&expt_path)?;
    Ok((h5.to_path_buf(), expt_path))
}

/// Root attributes `diffbragg_backend` ([`Backend::name`]) and
/// `diffbragg_device` ([`Backend::describe`]) of an HDF5 file.
fn write_backend_attrs(path: &Path, backend: &dyn Backend) -> Result<()> {
    use ::hdf5::types::VarLenUnicode;
    let err = |e: ::hdf5::Error| Error::file(path, format!("writing the backend attributes: {e}"));
    let f = ::hdf5::File::open_rw(path).map_err(err)?;
    for (k, v) in
        [("diffbragg_backend", backend.name().to_string()), ("diffbragg_device", backend.describe())]
    {
        let v: VarLenUnicode =
            v.parse().map_err(|_| Error::msg(format!("{k}: `{v}` is not an HDF5 string")))?;
        f.new_attr::<VarLenUnicode>().shape(()).create(k).map_err(err)?.write_scalar(&v).map_err(err)?;
    }
    f.close().map_err(err)
}

/// The O matrix the kernel uses for a space group (identity for primitive lattices).
pub fn o_matrix(sg: &SpaceGroup) -> Result<Mat3> {
    Ok(sg.change_of_basis_to_primitive()?.o_matrix())
}
