//! One shot from its files to its results: models, spectrum, pixels, the fit,
//! and every row and file stage 1 writes for it (fwd-model §4.1–4.9).
//!
//! Inputs per shot (a line of `exp_ref_spec_file`): experiment `exp_idx` of the
//! expt (its imageset must hold one image), the refl rows with `id == exp_idx`
//! (all rows when there is no `id` column), optionally a `.lam` spectrum.
//!
//! Spectrum, in diffBragg's order of precedence: `spectrum_from_imageset`
//! (downsampled, [`super::downsample`]), a `.lam` file (the spec line's, else
//! `simulator.spectrum.filename`), `gen_gauss_spec`, else one channel at the
//! beam wavelength. Weights are scaled to sum to `simulator.total_flux`
//! (except `downsamp_spec.skip`, as diffBragg). The output beam wavelength is
//! the spectrum's weighted mean wavelength.
//!
//! Outputs per shot: a refined `.expt` (crystal `U' = Rx·Ry·Rz·U` with the
//! refined cell; beam at the mean wavelength; detector shifted by
//! `detz_shift`; image reference kept) and `.refl` (the shot's rows with `id`
//! 0, `xyzcal.px` = the ROI's Bragg-only model centroid `(Σx·I/ΣI + ½, Σy·I/ΣI + ½)`,
//! the old value in `dials.xyzcal.px`, `xyzcal.mm` from it, `delpsical.rad`
//! re-predicted with the refined crystal, `scale_factor` with per-ROI scales;
//! rows without a model centroid dropped, diffBragg's
//! `filter_unpredicted_refls_in_output=True`), plus the table rows.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::downsample::{downsample, raw_strided, DownsampleParams};
use super::gather::{gather_from_image, gather_from_shoeboxes, GatherOptions, ShotData};
use super::mask::PixelMask;
use super::model::{base_crystal, fluence, kernel_eval_on, Problem};
use super::params::{build, lattice_system, ucell_params, ShotInit, ShotParams};
use super::refine::{refine, Fit, Trace};
use crate::config::HopperConfig;
use crate::conventions::{mat3_to_row_major, rot_xyz, Mat3, Vec3, EV_ANGSTROM};
use crate::error::{Error, Result};
use crate::experiment::{Experiment, ExperimentList};
use crate::geometry::Detector;
use crate::gpu::{Backend, CpuBackend, PixelBatch};
use crate::io::spec_file::SpecEntry;
use crate::kernel::{sources_from_spectrum, FhklTable, ShotModel};
use crate::reflections::ReflectionTable;
use crate::report::residuals::{evaluate_shot, CalSource, EvalOptions, ModelKind, ResidualRow};
use crate::spectrum::Spectrum;
use crate::store::Value;
use crate::symmetry::SpaceGroup;

/// One shot to process.
#[derive(Clone, Debug)]
pub struct ShotTask {
    pub entry: SpecEntry,
    pub shot_id: i64,
    /// Canonical absolute expt path.
    pub exp_name: String,
    /// Reflection rows of the shot (the scheduling cost).
    pub n_refl: usize,
}

/// What every shot of a run shares.
pub struct RunContext {
    pub cfg: HopperConfig,
    pub fhkl: FhklTable,
    /// Space group from `space_group` (else each crystal's own).
    pub space_group: Option<SpaceGroup>,
    pub reference_detector: Option<Detector>,
    pub outdir: PathBuf,
    pub tag: String,
    /// The kernel backend of every evaluation (its name goes into `shot_params.backend`).
    pub backend: Arc<dyn Backend>,
    mask: Mutex<Option<Arc<PixelMask>>>,
}

impl RunContext {
    pub fn new(
        cfg: HopperConfig,
        fhkl: FhklTable,
        space_group: Option<SpaceGroup>,
        reference_detector: Option<Detector>,
        outdir: PathBuf,
    ) -> RunContext {
        RunContext {
            cfg,
            fhkl,
            space_group,
            reference_detector,
            outdir,
            tag: "stage1".into(),
            backend: Arc::new(CpuBackend),
            mask: Mutex::new(None),
        }
    }

    /// The same context on another kernel backend (`new` uses the CPU).
    pub fn with_backend(self, backend: Arc<dyn Backend>) -> RunContext {
        RunContext { backend, ..self }
    }

    fn mask_for(&self, det: &Detector) -> Result<Option<Arc<PixelMask>>> {
        let Some(path) = &self.cfg.roi.hotpixel_mask else { return Ok(None) };
        let dims: Vec<[usize; 2]> = det.panels.iter().map(|p| p.image_size).collect();
        let mut g = self.mask.lock().map_err(|_| Error::msg("mask cache poisoned"))?;
        if g.is_none() {
            *g = Some(Arc::new(PixelMask::read(path, &dims)?));
        }
        let m = g.as_ref().cloned().ok_or_else(|| Error::msg("mask cache empty"))?;
        if m.panels.len() != dims.len() || dims.iter().any(|d| (m.shape.1, m.shape.0) != (d[0], d[1])) {
            return Err(Error::file(path, "mask does not match this shot's detector"));
        }
        Ok(Some(m))
    }

    /// The gather options of the configuration.
    pub fn gather_options(&self) -> GatherOptions {
        GatherOptions::from_params(&self.cfg)
    }
}

/// Everything stage 1 keeps of one refined shot.
#[derive(Clone, Debug)]
pub struct ShotOutput {
    pub shot_id: i64,
    /// `shot_params` cells.
    pub params_row: Vec<(&'static str, Value<'static>)>,
    pub experiment_row: crate::store::ExperimentRow,
    pub traces: Vec<Trace>,
    pub spectrum: Spectrum,
    pub residuals: Vec<ResidualRow>,
    pub n_rois: usize,
    pub n_pixels: usize,
    pub wall: f64,
    pub status: String,
}

/// A failed shot: a reason code and a message.
#[derive(Clone, Debug)]
pub struct ShotFailure {
    pub reason: &'static str,
    pub message: String,
}

fn fail(reason: &'static str) -> impl Fn(Error) -> ShotFailure {
    move |e| ShotFailure { reason, message: e.to_string() }
}

/// The shot's spectrum and where it came from.
pub fn shot_spectrum(
    ctx: &RunContext,
    e: &Experiment,
    entry: &SpecEntry,
    image: Option<&dyn crate::image::ImageSource>,
) -> Result<(Spectrum, &'static str, Option<String>)> {
    let c = &ctx.cfg;
    let beam = e.beam()?;
    let total = c.simulator.total_flux;
    let stride = c.simulator.spectrum.stride;
    if c.spectrum_from_imageset {
        let loc = e.image_location()?;
        let opened;
        let src = match image {
            Some(s) => s,
            None => {
                opened = crate::image::open_image_source(&loc.path)?;
                opened.as_ref()
            }
        };
        let sp = src.spectrum(loc.index)?.ok_or_else(|| {
            Error::file(
                &loc.path,
                format!("spectrum_from_imageset=True but image {} carries no spectrum", loc.index),
            )
        })?;
        let en = sp.energies();
        let s = if c.downsamp_spec.skip {
            raw_strided(&en, &sp.weights, stride)?
        } else {
            let d = &c.downsamp_spec;
            let p = DownsampleParams {
                filt_freq: d.filt_freq,
                filt_order: d.filt_order,
                tail: d.tail,
                delta_en: d.delta_en,
            };
            downsample(&en, &sp.weights, &p, stride, total)?
        };
        return Ok((s, "imageset", Some(loc.path.to_string_lossy().into_owned())));
    }
    if let Some(lam) = entry.spectrum.as_ref().or(c.simulator.spectrum.filename.as_ref()) {
        let s = crate::io::lam::load_lam(lam, stride, Some(total))?;
        return Ok((s, "lam", Some(lam.to_string_lossy().into_owned())));
    }
    if c.gen_gauss_spec {
        let g = &c.simulator.spectrum.gauss_spec;
        let n = g.nchannels.max(1);
        let e0 = EV_ANGSTROM / beam.wavelength;
        let half = n as f64 / 2.0 * g.res;
        let sig = g.fwhm / 2.35482;
        let en: Vec<f64> = (0..n)
            .map(|i| if n == 1 { e0 } else { e0 - half + 2.0 * half * i as f64 / (n - 1) as f64 })
            .collect();
        let w: Vec<f64> = en.iter().map(|e| (-0.5 * ((e - e0) / sig).powi(2)).exp()).collect();
        let s = Spectrum::from_energies(&en, w).normalized_to(1e12);
        return Ok((s, "gaussian", None));
    }
    Ok((Spectrum::new(vec![beam.wavelength], vec![total]), "mono", None))
}

/// diffBragg's automatic oversampling (`simulator.oversample=0`, fwd-model §2.11).
pub fn auto_oversample(det: &Detector, real: &Mat3, ncells: [f64; 3], lambda: f64) -> usize {
    let Some(p) = det.panels.first() else { return 1 };
    let reso = (0..3).map(|i| ncells[i] * real.column(i).norm()).fold(0.0, f64::max);
    let x = 3.0 * reso / (lambda * p.close_distance() / p.pixel_size[0]);
    (x.ceil() as usize).clamp(1, 16)
}

/// Model centroids `(x, y)` (corner origin) of each ROI's Bragg-only model.
pub fn model_centroids(data: &ShotData, raw: &[f64]) -> Vec<Option<[f64; 2]>> {
    let n = data.rois.len();
    let (mut s, mut sx, mut sy) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for (i, p) in data.pixels.iter().enumerate() {
        let r = data.roi_of[i] as usize;
        s[r] += raw[i];
        sx[r] += raw[i] * p.fast as f64;
        sy[r] += raw[i] * p.slow as f64;
    }
    (0..n).map(|r| (s[r] > 0.0).then(|| [sx[r] / s[r] + 0.5, sy[r] / s[r] + 0.5])).collect()
}

/// Select the shot's reflection rows (id == exp_idx).
pub fn shot_reflections(table: &ReflectionTable, exp_idx: usize) -> Result<ReflectionTable> {
    if table.contains("id") {
        table.select_id(exp_idx as i32)
    } else {
        Ok(table.clone())
    }
}

fn file_stem(p: &Path) -> String {
    let s = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "shot".into());
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect()
}

/// Read and prepare one shot (everything before the fit).
pub fn prepare_shot(ctx: &RunContext, task: &ShotTask) -> std::result::Result<Prepared, ShotFailure> {
    let cfg = &ctx.cfg;
    let entry = &task.entry;
    let mut list = ExperimentList::read_one(&entry.expt, entry.exp_idx).map_err(fail("bad_input"))?;
    if list.experiments.is_empty() {
        return Err(ShotFailure {
            reason: "bad_input",
            message: format!("{}: no experiment {}", entry.expt.display(), entry.exp_idx),
        });
    }
    if let Some(d) = &ctx.reference_detector {
        let e = &mut list.experiments[0];
        e.detector = Some(d.clone());
    }
    let expt_in = list.experiments[0].clone();
    let crystal = expt_in.crystal().map_err(fail("missing_model"))?.clone();
    let beam = expt_in.beam().map_err(fail("missing_model"))?.clone();
    let det_in = expt_in.detector().map_err(fail("missing_model"))?.clone();
    let table = crate::io::dials_refl::read_refl(&entry.refl).map_err(fail("bad_input"))?;
    let refls = shot_reflections(&table, entry.exp_idx).map_err(fail("bad_input"))?;
    if refls.nrows() == 0 {
        return Err(ShotFailure {
            reason: "no_reflections",
            message: format!("{}: no rows with id {}", entry.refl.display(), entry.exp_idx),
        });
    }
    // The image file is opened once, for the pixels and (if asked) the spectrum.
    let needs_image = !cfg.refiner.load_data_from_refl || cfg.spectrum_from_imageset;
    let image_src = if needs_image {
        let loc = expt_in.image_location().map_err(fail("bad_input"))?;
        Some((crate::image::open_image_source(&loc.path).map_err(fail("bad_image"))?, loc.index))
    } else {
        None
    };
    let (spectrum, spec_source, spec_file) =
        shot_spectrum(ctx, &expt_in, entry, image_src.as_ref().map(|(s, _)| s.as_ref()))
            .map_err(fail("bad_spectrum"))?;
    spectrum.validate().map_err(|m| ShotFailure { reason: "bad_spectrum", message: m })?;
    let mean_wave = spectrum.mean_wavelength();

    // Pixels.
    let mask = ctx.mask_for(&det_in).map_err(fail("bad_mask"))?;
    let gopt = ctx.gather_options();
    let data = if cfg.refiner.load_data_from_refl {
        gather_from_shoeboxes(&expt_in, &refls, mask.as_deref(), &gopt).map_err(fail("bad_input"))?
    } else {
        let (src, index) = image_src
            .as_ref()
            .ok_or_else(|| ShotFailure { reason: "bad_input", message: "no image".into() })?;
        let img = src.read_image(*index).map_err(fail("bad_image"))?;
        gather_from_image(&expt_in, &refls, &img, mask.as_deref(), &gopt).map_err(fail("bad_image"))?
    };
    if data.rois.is_empty() || data.n_trusted() == 0 {
        return Err(ShotFailure {
            reason: "no_rois",
            message: format!(
                "no usable ROI among {} reflections (rejected: {:?})",
                refls.nrows(),
                data.rejected
            ),
        });
    }

    // Model.
    let sg = match &ctx.space_group {
        Some(s) => s.clone(),
        None => SpaceGroup::from_hall(&crystal.space_group_hall).map_err(fail("bad_input"))?,
    };
    let system = lattice_system(&sg);
    let ucell0 = ucell_params(system, &crystal.unit_cell()).map_err(fail("bad_input"))?;
    let o_matrix = if sg.centring().is_some_and(|c| c != 'P') {
        sg.change_of_basis_to_primitive().map_err(fail("bad_input"))?.o_matrix()
    } else {
        Mat3::identity()
    };
    let u0 = crystal.u_matrix();
    let nabc0 = cfg.init.nabc;
    let ndef0 = cfg.init.ndef;
    let ncells0 = [nabc0[0], nabc0[1], nabc0[2], ndef0[0], ndef0[1], ndef0[2]];
    let mut det_model = det_in.clone();
    if cfg.simulator.detector.force_zero_thickness {
        for p in &mut det_model.panels {
            p.thickness = 0.0;
            p.mu = 0.0;
        }
    }
    let sources = sources_from_spectrum(&spectrum);
    let flux = spectrum.total();
    let mut base = ShotModel::new(
        det_model,
        beam.clone(),
        sources,
        base_crystal(u0, ucell0.clone(), o_matrix, ncells0, cfg.no_nabc_scale),
        // simulator.init_scale multiplies the kernel (nanoBragg spot_scale).
        fluence(flux, spectrum.len(), cfg.simulator.beam.size_mm) * cfg.simulator.init_scale,
    );
    base.oversample = if cfg.simulator.oversample > 0 {
        cfg.simulator.oversample
    } else {
        auto_oversample(&det_in, &crystal.real, cfg.simulator.crystal.ncells_abc, mean_wave)
    };
    let axes0 = crystal.real;

    // Starting G: init.G if the user set it, else the least-squares scale.
    let g_init = if ctx.cfg.sources.is_set("init.G") {
        cfg.init.g
    } else {
        let mut m0 = base.clone();
        m0.scale = 1.0;
        let raw = kernel_eval_on(&*ctx.backend, &m0, &ctx.fhkl, &[], &PixelBatch::single(&data.pixels))
            .map_err(fail("model_failed"))?;
        let scaled: Vec<f64> =
            raw.values.iter().zip(&data.roi_of).map(|(r, &k)| r * data.roi_scale_init[k as usize]).collect();
        match crate::refine::likelihood::least_squares_scale(
            &scaled,
            &data.data,
            &data.background,
            None,
            Some(&data.trusted),
        ) {
            Ok(g) if g > 0.0 => g,
            _ => cfg.init.g,
        }
    };
    let params: ShotParams = build(
        cfg,
        &cfg.sources,
        &ShotInit { ucell: &ucell0, n_rois: data.rois.len(), roi_scale_init: &data.roi_scale_init, g_init },
    )
    .map_err(fail("bad_config"))?;
    Ok(Prepared {
        list,
        expt_in,
        crystal,
        beam,
        det_in,
        refls,
        spectrum,
        spec_source,
        spec_file,
        mean_wave,
        data,
        base,
        params,
        axes0,
        u0,
        system,
        g_init,
        flux,
        nabc0,
    })
}

/// A shot ready to refine (see [`prepare_shot`]).
pub struct Prepared {
    pub list: ExperimentList,
    pub expt_in: Experiment,
    pub crystal: crate::crystal::Crystal,
    pub beam: crate::geometry::Beam,
    pub det_in: Detector,
    pub refls: ReflectionTable,
    pub spectrum: Spectrum,
    pub spec_source: &'static str,
    pub spec_file: Option<String>,
    pub mean_wave: f64,
    pub data: ShotData,
    pub base: ShotModel,
    pub params: ShotParams,
    pub axes0: Mat3,
    pub u0: Mat3,
    pub system: crate::ucell::LatticeSystem,
    pub g_init: f64,
    pub flux: f64,
    pub nabc0: [f64; 3],
}

impl Prepared {
    /// The target of this shot on the CPU kernel.
    pub fn problem<'a>(&'a self, fhkl: &'a FhklTable) -> Problem<'a> {
        self.problem_on(fhkl, &CpuBackend)
    }

    /// The target of this shot on `backend`.
    pub fn problem_on<'a>(&'a self, fhkl: &'a FhklTable, backend: &'a dyn Backend) -> Problem<'a> {
        Problem::new(&self.data, &self.base, fhkl, &self.params, self.axes0, backend)
    }
}

/// Refine one shot.
pub fn process_shot(ctx: &RunContext, task: &ShotTask) -> std::result::Result<ShotOutput, ShotFailure> {
    let t0 = Instant::now();
    let cfg = &ctx.cfg;
    let entry = &task.entry;
    let Prepared {
        mut list,
        expt_in,
        crystal,
        beam,
        det_in,
        refls,
        spectrum,
        spec_source,
        spec_file,
        mean_wave,
        data,
        base,
        params,
        axes0,
        u0,
        system,
        g_init,
        flux,
        nabc0,
    } = prepare_shot(ctx, task)?;
    let problem = Problem::new(&data, &base, &ctx.fhkl, &params, axes0, &*ctx.backend);
    let x0 = params.set.x0();
    let fit: Fit = if x0.is_empty() {
        return Err(ShotFailure {
            reason: "bad_config",
            message: "every parameter is fixed: nothing to refine".into(),
        });
    } else {
        refine(&problem, cfg, &x0).map_err(fail("refinement_failed"))?
    };
    let v = &fit.eval.values;

    // Refined models.
    let u_ref = rot_xyz(v.rot[0], v.rot[1], v.rot[2]) * u0;
    let cell_ref = crate::ucell::UcellParams::new(system, v.ucell.clone())
        .map_err(fail("refinement_failed"))?
        .unit_cell();
    let mut crystal_out =
        crate::crystal::Crystal::from_u_and_cell(&u_ref, &cell_ref, &crystal.space_group_hall);
    crystal_out.ml_half_mosaicity_deg = crystal.ml_half_mosaicity_deg;
    crystal_out.ml_domain_size_ang = crystal.ml_domain_size_ang;
    crystal_out.mosaicity = crystal.mosaicity;
    let mut expt_out = expt_in.clone();
    expt_out.crystal = Some(crystal_out.clone());
    if let Some(b) = expt_out.beam.as_mut() {
        b.wavelength = mean_wave;
    }
    if v.detz_shift != 0.0 {
        if let Some(d) = expt_out.detector.as_mut() {
            d.shift_z(v.detz_shift);
        }
    }
    list.experiments[0] = expt_out.clone();

    // Refined reflections.
    let scaled_bragg: Vec<f64> = fit.eval.raw.clone();
    let cents = model_centroids(&data, &scaled_bragg);
    let refl_out = refined_reflections(&refls, &data, &cents, v, &expt_out, mean_wave, params.per_roi)
        .map_err(fail("output_failed"))?;
    let stem = file_stem(&entry.expt);
    let id8 = format!("{:016x}", task.shot_id);
    let base_name = format!("{}_{}_{}_{}", ctx.tag, stem, entry.exp_idx, &id8[..8]);
    let expt_path = ctx.outdir.join("expers").join(format!("{base_name}.expt"));
    let refl_path = ctx.outdir.join("refls").join(format!("{base_name}.refl"));
    for d in [expt_path.parent(), refl_path.parent()].into_iter().flatten() {
        std::fs::create_dir_all(d)
            .map_err(|e| ShotFailure { reason: "output_failed", message: format!("{}: {e}", d.display()) })?;
    }
    list.write(&expt_path).map_err(fail("output_failed"))?;
    crate::io::dials_refl::write_refl(&refl_path, &refl_out).map_err(fail("output_failed"))?;

    // Residuals: input vs refined, DIALS stills re-prediction of the same rows.
    let used = refls.contains("flags")
        && refls
            .get_size("flags")
            .is_ok_and(|f| f.iter().any(|&v| v & crate::reflections::flags::USED_IN_REFINEMENT != 0));
    let ev_opts =
        EvalOptions { cal_source: CalSource::Repredict, wavelength: None, used_in_refinement_only: used };
    let mut residuals = Vec::new();
    if let Ok(ev) = evaluate_shot(&expt_in, &refls, task.shot_id, ModelKind::Input, &ev_opts) {
        residuals.extend(ev.rows);
    }
    if let Ok(ev) = evaluate_shot(&expt_out, &refls, task.shot_id, ModelKind::Refined, &ev_opts) {
        residuals.extend(ev.rows);
    }

    // Table rows.
    let wall = t0.elapsed().as_secs_f64();
    let canonical = PathBuf::from(&task.exp_name);
    let mut erow = crate::store::ExperimentRow::from_models(
        task.shot_id,
        &canonical,
        entry.exp_idx,
        &beam,
        &det_in,
        &crystal,
    )
    .map_err(fail("output_failed"))?;
    erow.identifier = (!expt_in.identifier.is_empty()).then(|| expt_in.identifier.clone());
    erow.refl_name =
        Some(std::fs::canonicalize(&entry.refl).unwrap_or(entry.refl.clone()).to_string_lossy().into_owned());
    if let Ok(loc) = expt_in.image_location() {
        erow.image_file = Some(loc.path.to_string_lossy().into_owned());
        erow.image_index = Some(loc.index as i64);
    }
    erow.spectrum_source = Some(spec_source.to_string());
    let a_out = crystal_out.a_matrix();
    let cell0 = crystal.unit_cell().to_array();
    let cell1 = cell_ref.to_array();
    let sig = |n: &str| fit.sigma.get(n).copied();
    let sig3 = |f: &dyn Fn(usize) -> String| -> Option<Vec<f64>> {
        let v: Vec<f64> = (0..3).map(|i| sig(&f(i)).unwrap_or(f64::NAN)).collect();
        v.iter().any(|x| x.is_finite()).then_some(v)
    };
    use crate::refine::params::names;
    let mut sigma_cell = [f64::NAN; 6];
    for (i, pname) in system.param_names().iter().enumerate() {
        if let Some(s) = sig(&names::ucell(i)) {
            let targets: &[usize] = match (*pname, system) {
                ("a", crate::ucell::LatticeSystem::Tetragonal | crate::ucell::LatticeSystem::Hexagonal) => {
                    &[0, 1]
                }
                ("a", crate::ucell::LatticeSystem::Rhombohedral | crate::ucell::LatticeSystem::Cubic) => {
                    &[0, 1, 2]
                }
                ("alpha", crate::ucell::LatticeSystem::Rhombohedral) => &[3, 4, 5],
                ("a", _) => &[0],
                ("b", _) => &[1],
                ("c", _) => &[2],
                ("alpha", _) => &[3],
                ("beta", _) => &[4],
                _ => &[5],
            };
            for &t in targets {
                sigma_cell[t] = if t >= 3 { s.to_degrees() } else { s };
            }
        }
    }
    let str_v = |s: String| Value::Str(Cow::Owned(s));
    let f64s = |v: Vec<f64>| Value::F64s(Cow::Owned(v));
    let row: Vec<(&'static str, Value<'static>)> = vec![
        ("shot_id", task.shot_id.into()),
        ("stage", str_v(ctx.tag.clone())),
        ("iteration", Value::Null),
        ("exp_name", str_v(task.exp_name.clone())),
        ("exp_idx", (entry.exp_idx as i64).into()),
        ("refl_name", str_v(erow.refl_name.clone().unwrap_or_default())),
        ("opt_exp_name", str_v(expt_path.to_string_lossy().into_owned())),
        ("status", str_v(fit.status.clone())),
        ("backend", str_v(ctx.backend.name().into())),
        ("n_evals", (fit.n_evals as i64).into()),
        ("wall_time_s", wall.into()),
        ("f_final", fit.eval.f.into()),
        ("sigz", fit.eval.sigz.into()),
        ("spot_scales", v.g.into()),
        ("spot_scales_init", g_init.into()),
        ("Amats", f64s(mat3_to_row_major(&a_out).to_vec())),
        ("ncells", f64s(v.ncells[..3].to_vec())),
        ("ncells_init", f64s(nabc0.to_vec())),
        ("ncells_def", f64s(v.ncells[3..].to_vec())),
        ("eta_abc", f64s(v.eta.to_vec())),
        ("num_mosaicity_samples", (params.n_domains as i64).into()),
        ("detz_shift_mm", v.detz_shift.into()),
        ("use_diffuse_models", false.into()),
        ("rotX", v.rot[0].into()),
        ("rotY", v.rot[1].into()),
        ("rotZ", v.rot[2].into()),
        ("a", cell1[0].into()),
        ("b", cell1[1].into()),
        ("c", cell1[2].into()),
        ("al", cell1[3].into()),
        ("be", cell1[4].into()),
        ("ga", cell1[5].into()),
        ("a_init", cell0[0].into()),
        ("b_init", cell0[1].into()),
        ("c_init", cell0[2].into()),
        ("al_init", cell0[3].into()),
        ("be_init", cell0[4].into()),
        ("ga_init", cell0[5].into()),
        ("lam0", v.lambda[0].into()),
        ("lam1", v.lambda[1].into()),
        ("spectrum_source", str_v(spec_source.into())),
        ("spectrum_filename", spec_file.map_or(Value::Null, str_v)),
        ("spectrum_stride", (cfg.simulator.spectrum.stride as i64).into()),
        ("total_flux", flux.into()),
        ("beamsize_mm", cfg.simulator.beam.size_mm.into()),
        ("oversample", (base.oversample as i64).into()),
        ("sigma_spot_scales", sig(names::G).map_or(Value::Null, Value::from)),
        ("sigma_rot", sig3(&names::rot).map_or(Value::Null, f64s)),
        ("sigma_ncells", {
            let mut s = sig3(&names::nabc);
            if params.iso_ncells {
                s = sig(&names::nabc(0)).map(|x| vec![x; 3]);
            }
            s.map_or(Value::Null, f64s)
        }),
        (
            "sigma_cell",
            if sigma_cell.iter().any(|x| x.is_finite()) { f64s(sigma_cell.to_vec()) } else { Value::Null },
        ),
        ("sigma_eta_abc", sig3(&names::eta_abc).map_or(Value::Null, f64s)),
        ("sigma_detz_shift_mm", sig(names::DETZ_SHIFT).map_or(Value::Null, Value::from)),
    ];
    Ok(ShotOutput {
        shot_id: task.shot_id,
        params_row: row,
        experiment_row: erow,
        traces: fit.traces,
        spectrum,
        residuals,
        n_rois: data.rois.len(),
        n_pixels: data.pixels.len(),
        wall,
        status: fit.status,
    })
}

/// The refined reflection table of one shot (see the module doc).
fn refined_reflections(
    refls: &ReflectionTable,
    data: &ShotData,
    cents: &[Option<[f64; 2]>],
    v: &super::params::Values,
    expt_out: &Experiment,
    wavelength: f64,
    per_roi: bool,
) -> Result<ReflectionTable> {
    let n = refls.nrows();
    let mut cal: Vec<[f64; 3]> = vec![[f64::NAN; 3]; n];
    let mut scale = vec![f64::NAN; n];
    for (r, &row) in data.roi_refl.iter().enumerate() {
        if let Some(c) = cents[r] {
            cal[row] = [c[0], c[1], 0.0];
        }
        scale[row] = v.roi_scale[r];
    }
    let keep: Vec<bool> = cal.iter().map(|c| c[0].is_finite()).collect();
    let mut t = refls.clone();
    if t.contains("xyzcal.px") {
        let old = t.get_vec3("xyzcal.px")?.to_vec();
        t.insert("dials.xyzcal.px", old)?;
    }
    if t.contains("xyzcal.mm") {
        let old = t.get_vec3("xyzcal.mm")?.to_vec();
        t.insert("dials.xyzcal.mm", old)?;
    }
    // xyzcal.mm through the panel's px→mm strategy (parallax where the file
    // says so), as DIALS readers expect; the pixel position itself is
    // diffBragg's model centroid (no parallax, fwd-model §1.2 [TRAP]).
    let det = expt_out.detector()?;
    let pxmm = crate::report::deltapsi::PxMm::for_detector(det, &expt_out.detector_meta)
        .unwrap_or_else(|_| vec![crate::report::deltapsi::PxMm::Simple; det.panels.len()]);
    let panel = t.get_size("panel")?.to_vec();
    let mut cal_mm = vec![[f64::NAN; 3]; n];
    for i in 0..n {
        let pi = panel[i] as usize;
        if let (Some(p), Some(m)) = (det.panels.get(pi), pxmm.get(pi)) {
            if cal[i][0].is_finite() {
                if let Some([x, y]) = m.px_to_mm(p, [cal[i][0], cal[i][1]]) {
                    cal_mm[i] = [x, y, 0.0];
                }
            }
        }
    }
    t.insert("xyzcal.px", cal)?;
    t.insert("xyzcal.mm", cal_mm)?;
    if let (Ok(h), Ok(c), Ok(b)) = (t.get_miller("miller_index"), expt_out.crystal(), expt_out.beam()) {
        let a = c.a_matrix();
        let s0 = crate::conventions::s0_from_direction(&b.direction, wavelength);
        let dpsi: Vec<f64> = h
            .iter()
            .map(|hkl| crate::report::deltapsi::predict_ray(&a, &s0, *hkl).map_or(f64::NAN, |r| r.delpsi))
            .collect();
        t.insert("delpsical.rad", dpsi)?;
    }
    if per_roi {
        t.insert("scale_factor", scale)?;
    }
    if t.contains("id") {
        let nr = t.nrows();
        t.insert("id", vec![0i32; nr])?;
        if let Some(ident) = (!expt_out.identifier.is_empty()).then(|| expt_out.identifier.clone()) {
            t.identifiers = [(0u64, ident)].into_iter().collect();
        } else {
            t.identifiers.clear();
        }
    }
    let out = t.select(&keep)?;
    let _ = Vec3::zeros();
    Ok(out)
}
