//! `diffbragg integrate`: predictions from the stage-1 models, labelled strong
//! or weak by matching them to spots found on the measured images
//! (the successor of cctbx's `diffBragg.integrate`; predict-and-stage2.md §1).
//!
//! # Flow (per shot, shots in parallel with rayon, ranks by MPI)
//! 1. The stage-1 row (`shot_params`, stage `stage1`) and its spectrum (the
//!    `spectra` rows stage 1 wrote: exactly what it modelled), the data
//!    experiment `exp_name[exp_idx]` and its image.
//! 2. Predictions ([`super::predictions`]): the model simulated over the whole
//!    detector, spots = connected regions above `threshold`.
//! 3. Strong spots on the raw image (ADU, not divided by `adu_per_photon`) with
//!    the proc phil's DIALS threshold ([`find_strong_spots`]).
//! 4. Matching within `qcut` in the `label_weak_col` space, then all strong
//!    predictions plus the brightest `weak_fraction` of the weak ones.
//!
//! # Outputs (in `outdir`)
//! * A store: `predictions` (kept predictions), `reflections` (the strong spots
//!   found on the data; `matched_refl_id` of a prediction is their `refl_id`),
//!   `failures`, and copies of the `shot_params`, `spectra` and `experiments`
//!   rows of the predicted shots, so stage 2 needs only this folder.
//! * `expts_and_refls/rank{R}_preds.{expt,refl}` and `rank{R}_strong.refl`:
//!   DIALS files; `id` = the shot's index in the rank's expt file. The expt
//!   holds the **stage-1** crystal (`Amats`), the z-shifted detector and the
//!   beam at the spectrum's mean corrected wavelength (the reference writes the
//!   original crystal).
//! * `NAME.parquet` and `NAME.csv` (`--hopInputName`): one row per predicted
//!   shot (the successor of `NAME.pkl`/`NAME.txt`); `integrate_settings.json`
//!   (the matching settings, for the report); `cmdline_execution.txt`.
//!
//! # Decisions
//! * \[T1.4/T1.6\] A shot that cannot be predicted (unreadable image, bad model,
//!   no prediction, no strong spot matched) becomes one `failures` row (stage
//!   `predict`, a reason code) and is left out **atomically**: nothing of it is
//!   written and the next shot's `id` is unaffected. A rank with no predicted
//!   shot writes empty files.
//! * `--cmdlinePhil` applies to **both** phil files: each `key=value` goes to
//!   the pred phil if its key names a diffBragg parameter, else to the proc phil
//!   (DIALS names, e.g. `spotfinder.lookup.mask=mask.npy`). The reference
//!   applies it to the pred phil only.
//! * Strong spots honour `spotfinder.filter.d_min/d_max` (pixels outside the
//!   range are masked before thresholding, as DIALS' resolution mask does),
//!   `border`, the panels' trusted ranges and untrusted rectangles and
//!   `lookup.mask` (the reference ignores d_min/d_max). `max_separation` is
//!   applied only when the proc phil sets it (the reference never applies it).
//! * `lookup.mask` must be NPY or HDF5 ([`crate::io::mask`]); a DIALS mask
//!   pickle is refused with the conversion command, before any shot runs.
//! * The spectrum: the stage-1 `spectra` rows; without them (a store from
//!   elsewhere) the image's spectrum strided by `simulator.spectrum.stride`
//!   **without** downsampling (a note says so), else `.lam` files, else a
//!   Gaussian (`gen_gauss_spec`), else the beam's wavelength.
//!   `pink_stride_override` strides whichever spectrum is used (the reference
//!   applies it to `.lam` spectra only).
//! * Which stage-1 rows: `stage = 'stage1'`, `iteration` null, any status but
//!   `failed`/`error`. Shots are ordered by (exp_name, exp_idx) and ranks take
//!   contiguous blocks (the reference's `array_split`).
//! * `outdir` must not already hold predictions (no silent duplicates).
//!
//! # Device (`--device cpu|cuda|auto`, default `auto`)
//! The two kernel evaluations of a shot (the full-detector image, and laue
//! mode's weighted pass for λ̄) run on the rank's [`Backend`]
//! ([`crate::gpu::select`]: rank r uses GPU (node-local r) mod (visible GPUs),
//! logged at start-up; `cuda` fails before the output folder is created when no
//! GPU is usable; `auto` falls back to the CPU and says why). Everything else
//! (spot finding, matching, outputs) is the same code for every backend. The
//! backend's name is recorded in every `predictions` row and every row of the
//! summary table (`backend`). Shots still run in parallel (rayon); with CUDA
//! their kernel calls queue on the one device while the other shots' CPU work
//! proceeds. Shots are not batched into one launch: each has its own
//! structure-factor table ([`crate::gpu::ops`]). The reference's `--numdev` is
//! accepted and ignored (with a note): one knob, the visible devices
//! (`CUDA_VISIBLE_DEVICES`), decides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float64Array, Int32Array, Int64Array,
    ListArray, StringArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::dials::ThresholdAlgorithm as PhilThreshold;
use crate::config::diffbragg::LabelWeakCol;
use crate::config::names::{self, Resolution};
use crate::config::value::AutoOr;
use crate::config::{
    DiffBraggParams, Integrate as IntegrateKind, IntegrateConfig, ProgramKind, Root, StillsProcessConfig,
    StillsProcessParams, Warning,
};
use crate::crystal::Crystal;
use crate::dist::Comm;
use crate::error::{io_err, Error, Result};
use crate::experiment::{Experiment, ExperimentList};
use crate::geometry::Detector;
use crate::gpu::{select, Backend, DeviceChoice};
use crate::image::{open_image_source, Image};
use crate::io::dials_expt::write_experiments;
use crate::io::dials_refl::write_refl;
use crate::io::mask::{read_mask, TrustedMask};
use crate::reflections::ReflectionTable;
use crate::spectrum::Spectrum;
use crate::store::reflections::reflections_batch;
use crate::store::rows::FailureRow;
use crate::store::schema::Table;
use crate::store::{BatchBuilder, Store};
use crate::symmetry::{miller::expand_to_p1, SpaceGroup};

use super::label::{self, LabelParams, TableOptions};
use super::matching::{label_weak, select_weak, MatchColumn, MatchParams};
use super::predictions::{
    append_prediction_rows, apply_laue_rlp, build_model, predict, HklSet, PredictConfig, ShotGeometry,
    Stage1Model,
};
use super::spotfinder::{DispersionParams, ThresholdAlgorithm};

/// The `stage` of this program's `failures` rows.
pub const STAGE: &str = "predict";

/// What the command line gives.
#[derive(Clone, Debug, PartialEq)]
pub struct IntegrateOptions {
    pub pred_phil: PathBuf,
    pub proc_phil: PathBuf,
    /// The stage-1 output folder (a store with `shot_params`).
    pub stage1_dir: PathBuf,
    pub outdir: PathBuf,
    /// The reference's GPUs per node: accepted and ignored (a note says so when
    /// it is not 1); the device follows [`crate::dist::device_for`].
    pub numdev: usize,
    /// Kernel backend (`--device`).
    pub device: DeviceChoice,
    /// Basename of the summary table (`NAME.parquet`, `NAME.csv`).
    pub hop_input_name: String,
    /// `key=value` overrides for either phil (see the module doc).
    pub cmdline_phil: Vec<String>,
    /// Keep the model shoeboxes in the prediction `.refl` files.
    pub keep_shoeboxes: bool,
    /// Written to `cmdline_execution.txt`.
    pub command_line: String,
    /// One log line per shot.
    pub verbose: bool,
}

impl IntegrateOptions {
    pub fn new(pred_phil: &Path, proc_phil: &Path, stage1_dir: &Path, outdir: &Path) -> IntegrateOptions {
        IntegrateOptions {
            pred_phil: pred_phil.into(),
            proc_phil: proc_phil.into(),
            stage1_dir: stage1_dir.into(),
            outdir: outdir.into(),
            numdev: 1,
            device: DeviceChoice::default(),
            hop_input_name: "preds_for_hopper".into(),
            cmdline_phil: vec![],
            keep_shoeboxes: false,
            command_line: String::new(),
            verbose: false,
        }
    }
}

// ---------------------------------------------------------------------------
// Configuration

/// Split `--cmdlinePhil` arguments between the pred phil (diffBragg names)
/// and the proc phil (DIALS names). A key that names neither is an error
/// listing the closest names of both.
pub fn route_cmdline(args: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let db = DiffBraggParams::schema();
    let sp = StillsProcessParams::schema();
    let (mut pred, mut proc) = (vec![], vec![]);
    for a in args {
        let Some((key, _)) = a.split_once('=') else {
            // Let the config loader report the syntax error.
            pred.push(a.clone());
            continue;
        };
        let key = key.trim();
        let in_db = names::resolve(key, db.defs.iter().map(|d| d.name.as_str()), &|n| IntegrateKind::uses(n));
        match in_db {
            Resolution::Found { .. } | Resolution::Ambiguous(_) => pred.push(a.clone()),
            Resolution::Unknown(sugg_db) => {
                let in_sp = names::resolve(key, sp.defs.iter().map(|d| d.name.as_str()), &|_| true);
                if matches!(in_sp, Resolution::Found { .. } | Resolution::Ambiguous(_))
                    || sp.opaque_scope(key).is_some()
                {
                    proc.push(a.clone());
                } else {
                    let sugg_sp = match in_sp {
                        Resolution::Unknown(s) => s,
                        _ => vec![],
                    };
                    let mut all: Vec<String> = sugg_db.into_iter().take(3).collect();
                    all.extend(sugg_sp.into_iter().take(3));
                    return Err(Error::param(
                        key,
                        format!(
                            "--cmdlinePhil `{a}`: neither a diffBragg (pred phil) nor a DIALS (proc phil) parameter{}",
                            names::did_you_mean(&all)
                        ),
                    ));
                }
            }
        }
    }
    Ok((pred, proc))
}

/// Load both phil files with the routed overrides.
pub fn load_configs(opts: &IntegrateOptions) -> Result<(IntegrateConfig, StillsProcessConfig, Vec<Warning>)> {
    let (pred_args, proc_args) = route_cmdline(&opts.cmdline_phil)?;
    let (pred, mut w1) = IntegrateConfig::load(&[&opts.pred_phil], &pred_args)?;
    let (proc, w2) = StillsProcessConfig::load(&[&opts.proc_phil], &proc_args)?;
    w1.extend(w2);
    Ok((pred, proc, w1))
}

/// Strong-spot finding on the data (the proc phil).
#[derive(Clone, Debug)]
pub struct StrongConfig {
    pub dispersion: DispersionParams,
    pub label: LabelParams,
    /// `min_spot_size = Auto`: 3 for pixel-array detectors, else 6 (DIALS).
    pub min_spot_size_auto: bool,
    pub mask: Option<(PathBuf, Arc<TrustedMask>)>,
    pub d_min: Option<f64>,
    pub d_max: Option<f64>,
    pub border: usize,
}

/// Where a shot's spectrum comes from when the stage-1 store has none.
#[derive(Clone, Debug, Default)]
pub struct SpectrumConfig {
    pub from_imageset: bool,
    pub stride: usize,
    pub lam_file: Option<PathBuf>,
    /// (fwhm eV, channels, spacing eV) with `gen_gauss_spec`.
    pub gauss: Option<(f64, usize, f64)>,
}

/// Everything a shot needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub predict: PredictConfig,
    pub strong: StrongConfig,
    pub matching: MatchParams,
    pub weak_fraction: f64,
    pub spectrum: SpectrumConfig,
    /// Things the user should know (printed once).
    pub notes: Vec<String>,
}

impl Settings {
    pub fn from_configs(pred: &IntegrateConfig, proc: &StillsProcessConfig) -> Result<Settings> {
        let mut notes = Vec::new();
        let p = &pred.predictions;
        if !p.threshold.is_finite() {
            return Err(Error::param("predictions.threshold", format!("{} must be finite", p.threshold)));
        }
        let (amplitude, hkl_set) = if p.use_diffbragg_mtz {
            let sf = &pred.simulator.structure_factors;
            let path = sf.mtz_name.as_ref().ok_or_else(|| {
                Error::param(
                    "simulator.structure_factors.mtz_name",
                    "needed by predictions.use_diffBragg_mtz=True",
                )
            })?;
            let col = sf.mtz_column.as_deref().ok_or_else(|| {
                Error::param(
                    "simulator.structure_factors.mtz_column",
                    "needed by predictions.use_diffBragg_mtz=True",
                )
            })?;
            let mtz = crate::io::mtz::Mtz::read(path)?;
            let amps = mtz.amplitudes(col)?;
            if amps.f.is_empty() {
                return Err(Error::file(path, format!("column `{col}` holds no values")));
            }
            let mean = amps.f.iter().sum::<f64>() / amps.f.len() as f64;
            let sg = mtz.space_group.clone().ok_or_else(|| Error::file(path, "MTZ without a space group"))?;
            let mut set: BTreeSet<[i32; 3]> = BTreeSet::new();
            for (h, _) in expand_to_p1(&sg, &amps.hkl, false) {
                set.insert(h);
            }
            notes.push(format!(
                "prediction amplitudes: the {} P1 indices of {} with their mean |F| = {mean:.4}",
                set.len(),
                path.display()
            ));
            (mean, HklSet::List { p1: Arc::new(set.into_iter().collect()) })
        } else {
            let sg = match &p.symbol_override {
                Some(s) => Some(
                    SpaceGroup::parse(s)
                        .map_err(|e| Error::param("predictions.symbol_override", e.to_string()))?,
                ),
                None => None,
            };
            (p.default_famplitude, HklSet::Flat { space_group: sg })
        };
        if !(amplitude.is_finite() && amplitude > 0.0) {
            return Err(Error::param("predictions.default_Famplitude", format!("{amplitude} must be > 0")));
        }
        if p.laue_mode && !pred.spectrum_from_imageset {
            notes.push(
                "laue_mode with spectrum_from_imageset=False: λ̄ per spot still follows the spectrum used"
                    .into(),
            );
        }
        let sim = &pred.simulator;
        let predict = PredictConfig {
            threshold: p.threshold,
            peak_detection: p.use_peak_detection,
            amplitude,
            hkl_set,
            d_range: p.resolution_range,
            laue: p.laue_mode,
            oversample_override: p.oversample_override.filter(|&o| o > 0),
            default_oversample: if sim.oversample > 0 { sim.oversample } else { 1 },
            nabc_override: p.nabc_override.map(|n| n.map(|x| x as f64)),
            pink_stride: p.pink_stride_override,
            zero_thickness: sim.detector.force_zero_thickness,
            thickness_layers: p.thicksteps_override.filter(|&t| t > 0).map_or(1, |t| t as usize),
            default_total_flux: sim.total_flux,
            default_beamsize_mm: sim.beam.size_mm,
            keep_shoeboxes: false,
        };
        if let Some(n) = predict.nabc_override {
            if !n.iter().all(|&x| x > 0.0) {
                return Err(Error::param("predictions.Nabc_override", format!("{n:?} must be > 0")));
            }
        }

        // Strong spots (proc phil).
        let sf = &proc.spotfinder;
        let d = &sf.threshold.dispersion;
        let algorithm = match sf.threshold.algorithm {
            PhilThreshold::Dispersion => ThresholdAlgorithm::Dispersion,
            PhilThreshold::DispersionExtended => ThresholdAlgorithm::DispersionExtended,
            PhilThreshold::RadialProfile => {
                return Err(Error::param(
                    "spotfinder.threshold.algorithm",
                    "radial_profile is not implemented",
                ))
            }
        };
        let global_threshold = match d.global_threshold {
            AutoOr::Value(v) => v,
            AutoOr::Auto => {
                return Err(Error::param(
                    "spotfinder.threshold.dispersion.global_threshold",
                    "Auto is not implemented: give a number (ADU)",
                ))
            }
        };
        let ks = d.kernel_size;
        if ks.iter().any(|&k| k < 1) {
            return Err(Error::param(
                "spotfinder.threshold.dispersion.kernel_size",
                format!("{ks:?} must be ≥ 1"),
            ));
        }
        let dispersion = DispersionParams {
            algorithm,
            gain: d.gain,
            kernel_size: [ks[0] as usize, ks[1] as usize],
            sigma_background: d.sigma_background,
            sigma_strong: d.sigma_strong,
            min_local: d.min_local,
            global_threshold,
        };
        dispersion.validate()?;
        let (min_spot, auto) = match sf.filter.min_spot_size {
            AutoOr::Value(v) => (v, false),
            AutoOr::Auto => (3, true),
        };
        let max_sep =
            proc.sources.is_set("spotfinder.filter.max_separation").then_some(sf.filter.max_separation);
        let label = LabelParams {
            min_spot_size: min_spot,
            max_spot_size: sf.filter.max_spot_size,
            max_separation: max_sep,
        };
        label.validate()?;
        let mask = match &sf.lookup.mask {
            Some(path) => {
                let m = read_mask(path).map_err(|e| {
                    Error::param(
                        "spotfinder.lookup.mask",
                        format!("{e}\n  (give another mask with --cmdlinePhil spotfinder.lookup.mask=FILE.npy, or drop it with spotfinder.lookup.mask=None)"),
                    )
                })?;
                Some((path.clone(), Arc::new(m)))
            }
            None => None,
        };
        if sf.filter.border < 0 {
            return Err(Error::param("spotfinder.filter.border", "must be ≥ 0"));
        }
        for (n, v) in [("d_min", sf.filter.d_min), ("d_max", sf.filter.d_max)] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(Error::param(format!("spotfinder.filter.{n}"), format!("{v} must be > 0")));
                }
            }
        }
        if sf.filter.resolution_range.is_some() {
            notes.push("spotfinder.filter.resolution_range (untrusted rings) is not applied".into());
        }
        let strong = StrongConfig {
            dispersion,
            label,
            min_spot_size_auto: auto,
            mask,
            d_min: sf.filter.d_min,
            d_max: sf.filter.d_max,
            border: sf.filter.border as usize,
        };

        let column = match p.label_weak_col {
            LabelWeakCol::Rlp => MatchColumn::Rlp,
            LabelWeakCol::XyzobsPx => MatchColumn::Pixels,
        };
        let matching = MatchParams { column, qcut: p.qcut };
        matching.validate()?;
        if !(0.0..=1.0).contains(&p.weak_fraction) {
            return Err(Error::param("predictions.weak_fraction", "must lie in [0, 1]"));
        }
        let ss = &sim.spectrum;
        let spectrum = SpectrumConfig {
            from_imageset: pred.spectrum_from_imageset,
            stride: ss.stride.max(1),
            lam_file: ss.filename.clone(),
            gauss: pred.gen_gauss_spec.then_some((
                ss.gauss_spec.fwhm,
                ss.gauss_spec.nchannels,
                ss.gauss_spec.res,
            )),
        };
        Ok(Settings { predict, strong, matching, weak_fraction: p.weak_fraction, spectrum, notes })
    }
}

// ---------------------------------------------------------------------------
// Stage-1 inputs

/// One shot to predict: its stage-1 model and, if stage 1 wrote it, its spectrum.
#[derive(Clone, Debug)]
pub struct ShotInput {
    pub model: Stage1Model,
    pub spectrum: Option<Spectrum>,
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a ArrayRef> {
    b.column_by_name(name)
}

fn f64_at(b: &RecordBatch, name: &str, i: usize) -> Option<f64> {
    let a = column(b, name)?;
    let a = a.as_any().downcast_ref::<Float64Array>()?;
    a.is_valid(i).then(|| a.value(i))
}

fn int_at(b: &RecordBatch, name: &str, i: usize) -> Option<i64> {
    let a = column(b, name)?;
    if let Some(x) = a.as_any().downcast_ref::<Int32Array>() {
        return x.is_valid(i).then(|| x.value(i) as i64);
    }
    let x = a.as_any().downcast_ref::<Int64Array>()?;
    x.is_valid(i).then(|| x.value(i))
}

fn str_at(b: &RecordBatch, name: &str, i: usize) -> Option<String> {
    let a = column(b, name)?.as_any().downcast_ref::<StringArray>()?;
    a.is_valid(i).then(|| a.value(i).to_string())
}

fn bool_at(b: &RecordBatch, name: &str, i: usize) -> Option<bool> {
    let a = column(b, name)?.as_any().downcast_ref::<BooleanArray>()?;
    a.is_valid(i).then(|| a.value(i))
}

fn list_at(b: &RecordBatch, name: &str, i: usize) -> Option<Vec<f64>> {
    let a = column(b, name)?;
    let v = if let Some(l) = a.as_any().downcast_ref::<FixedSizeListArray>() {
        if !l.is_valid(i) {
            return None;
        }
        l.value(i)
    } else if let Some(l) = a.as_any().downcast_ref::<ListArray>() {
        if !l.is_valid(i) {
            return None;
        }
        l.value(i)
    } else {
        return None;
    };
    let f = v.as_any().downcast_ref::<Float64Array>()?;
    Some((0..f.len()).map(|k| if f.is_valid(k) { f.value(k) } else { f64::NAN }).collect())
}

fn arr3(v: Option<Vec<f64>>) -> Option<[f64; 3]> {
    v.filter(|v| v.len() == 3).map(|v| [v[0], v[1], v[2]])
}

/// The stage-1 model in row `i` of a `shot_params` batch.
pub fn stage1_model_from_row(b: &RecordBatch, i: usize) -> Result<Stage1Model> {
    let sid =
        int_at(b, "shot_id", i).ok_or_else(|| Error::msg(format!("shot_params row {i}: no shot_id")))?;
    let need = |c: &str| Error::param(format!("shot_params.{c} (shot {sid})"), "missing");
    let amats = list_at(b, "Amats", i).filter(|v| v.len() == 9).ok_or_else(|| need("Amats"))?;
    let exp_idx = int_at(b, "exp_idx", i).ok_or_else(|| need("exp_idx"))?;
    if exp_idx < 0 {
        return Err(Error::param(
            format!("shot_params.exp_idx (shot {sid})"),
            format!("{exp_idx} is negative"),
        ));
    }
    let eta = arr3(list_at(b, "eta_abc", i)).unwrap_or([0.0; 3]);
    Ok(Stage1Model {
        shot_id: sid,
        exp_name: str_at(b, "exp_name", i).ok_or_else(|| need("exp_name"))?,
        exp_idx: exp_idx as usize,
        status: str_at(b, "status", i).unwrap_or_default(),
        amats: std::array::from_fn(|k| amats[k]),
        ncells: arr3(list_at(b, "ncells", i)).ok_or_else(|| need("ncells"))?,
        ncells_def: arr3(list_at(b, "ncells_def", i)).unwrap_or([0.0; 3]),
        eta_abc: eta,
        num_mosaicity_samples: int_at(b, "num_mosaicity_samples", i).unwrap_or(1).max(1) as usize,
        spot_scale: f64_at(b, "spot_scales", i).ok_or_else(|| need("spot_scales"))?,
        detz_shift_mm: f64_at(b, "detz_shift_mm", i).unwrap_or(0.0),
        lam0: f64_at(b, "lam0", i).unwrap_or(0.0),
        lam1: f64_at(b, "lam1", i).unwrap_or(1.0),
        oversample: int_at(b, "oversample", i).filter(|&o| o > 0).map(|o| o as usize),
        total_flux: f64_at(b, "total_flux", i),
        beamsize_mm: f64_at(b, "beamsize_mm", i),
        spectrum_source: str_at(b, "spectrum_source", i),
        spectrum_filename: str_at(b, "spectrum_filename", i),
        spectrum_stride: int_at(b, "spectrum_stride", i).filter(|&s| s > 0).map(|s| s as usize),
        use_diffuse_models: bool_at(b, "use_diffuse_models", i).unwrap_or(false),
    })
}

/// Statuses of stage-1 rows that are not predicted.
const REJECTED_STATUS: [&str; 2] = ["failed", "error"];

/// Read the stage-1 results to predict, ordered by (exp_name, exp_idx).
/// Returns the shots and notes (duplicates dropped, statuses skipped).
pub fn read_stage1(stage1: &Store) -> Result<(Vec<ShotInput>, Vec<String>)> {
    let mut notes = Vec::new();
    let mut by_id: BTreeMap<i64, Stage1Model> = BTreeMap::new();
    let mut n_dup = 0;
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    for b in stage1.read(Table::ShotParams, None)? {
        for i in 0..b.num_rows() {
            if str_at(&b, "stage", i).as_deref() != Some("stage1") || int_at(&b, "iteration", i).is_some() {
                continue;
            }
            let status = str_at(&b, "status", i).unwrap_or_default();
            if REJECTED_STATUS.contains(&status.to_ascii_lowercase().as_str()) {
                *skipped.entry(status).or_default() += 1;
                continue;
            }
            let m = stage1_model_from_row(&b, i)?;
            if by_id.insert(m.shot_id, m).is_some() {
                n_dup += 1;
            }
        }
    }
    if n_dup > 0 {
        notes.push(format!("{n_dup} duplicate stage-1 rows: the last one written was kept for each shot"));
    }
    for (s, n) in skipped {
        notes.push(format!("{n} stage-1 rows with status `{s}` are not predicted"));
    }
    let ids: BTreeSet<i64> = by_id.keys().copied().collect();
    let mut spectra: HashMap<i64, Vec<(i32, f64, f64)>> = HashMap::new();
    if !ids.is_empty() {
        for b in stage1.read_columns(
            Table::Spectra,
            &["shot_id", "channel", "wavelength", "weight"],
            Some(&ids),
        )? {
            let sid = b.column(0).as_primitive::<Int64Type>();
            let ch = b.column(1).as_primitive::<Int32Type>();
            let wl = b.column(2).as_primitive::<Float64Type>();
            let w = b.column(3).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                spectra.entry(sid.value(i)).or_default().push((ch.value(i), wl.value(i), w.value(i)));
            }
        }
    }
    let mut shots: Vec<ShotInput> = by_id
        .into_values()
        .map(|m| {
            let spectrum = spectra.remove(&m.shot_id).map(|mut rows| {
                rows.sort_by_key(|r| r.0);
                Spectrum::new(rows.iter().map(|r| r.1).collect(), rows.iter().map(|r| r.2).collect())
            });
            ShotInput { model: m, spectrum }
        })
        .collect();
    shots.sort_by(|a, b| (&a.model.exp_name, a.model.exp_idx).cmp(&(&b.model.exp_name, b.model.exp_idx)));
    Ok((shots, notes))
}

/// Contiguous block of `n` items for `rank` of `size` (numpy `array_split`).
pub fn contiguous_block(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let size = size.max(1);
    let (q, r) = (n / size, n % size);
    let start = rank * q + rank.min(r);
    start..start + q + usize::from(rank < r)
}

// ---------------------------------------------------------------------------
// Strong spots

/// Trusted pixels of one panel for spot finding (see the module doc).
fn trusted_pixels(
    data: &[f64],
    panel_idx: usize,
    orig: &Detector,
    geom: &ShotGeometry,
    cfg: &StrongConfig,
) -> Vec<bool> {
    let p = &orig.panels[panel_idx];
    let [nf, ns] = p.image_size;
    let [lo, hi] = p.trusted_range;
    let use_range = hi > lo;
    let mut t: Vec<bool> =
        data.iter().map(|&v| v.is_finite() && (!use_range || (v >= lo && v <= hi))).collect();
    for r in &p.mask {
        let [f0, s0, f1, s1] = r.map(|v| v.max(0) as usize);
        for s in s0.min(ns)..s1.min(ns) {
            for f in f0.min(nf)..f1.min(nf) {
                t[s * nf + f] = false;
            }
        }
    }
    if let Some((_, m)) = &cfg.mask {
        for (k, &ok) in m.panels[panel_idx].trusted.iter().enumerate() {
            t[k] &= ok;
        }
    }
    let b = cfg.border;
    if b > 0 {
        for s in 0..ns {
            for f in 0..nf {
                if s < b || f < b || s + b >= ns || f + b >= nf {
                    t[s * nf + f] = false;
                }
            }
        }
    }
    if cfg.d_min.is_some() || cfg.d_max.is_some() {
        let gp = &geom.detector.panels[panel_idx];
        let s0 = geom.s0();
        let (dmin, dmax) = (cfg.d_min.unwrap_or(0.0), cfg.d_max.unwrap_or(f64::INFINITY));
        t.par_chunks_mut(nf).enumerate().for_each(|(s, row)| {
            for (f, ok) in row.iter_mut().enumerate() {
                if *ok {
                    let d = gp.resolution_at_px(&s0, f as f64 + 0.5, s as f64 + 0.5);
                    *ok = d >= dmin && d <= dmax;
                }
            }
        });
    }
    t
}

/// Strong spots of a measured image (raw values) with the proc phil's
/// threshold, as a DIALS table (`flags` = strong, `id` 0) with the shot's
/// reciprocal-space columns.
pub fn find_strong_spots(
    image: &Image,
    orig: &Detector,
    geom: &ShotGeometry,
    cfg: &StrongConfig,
) -> Result<ReflectionTable> {
    let mut label = cfg.label.clone();
    if cfg.min_spot_size_auto {
        label.min_spot_size =
            if orig.panels.first().is_some_and(|p| p.panel_type == "SENSOR_PAD") { 3 } else { 6 };
        label.max_spot_size = label.max_spot_size.max(label.min_spot_size);
    }
    let mut spots = Vec::new();
    for pi in 0..image.n_panels() {
        let pim = image.panel(pi);
        let trusted = trusted_pixels(pim.data(), pi, orig, geom, cfg);
        spots.extend(label::find_spots_panel(
            pim.data(),
            [pim.n_slow(), pim.n_fast()],
            &trusted,
            pi,
            0,
            &cfg.dispersion,
            &label,
        )?);
    }
    let mut t = label::spots_to_table(&spots, &TableOptions::default())?;
    geom.add_reciprocal_columns(&mut t)?;
    Ok(t)
}

// ---------------------------------------------------------------------------
// One shot

/// Per-shot counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShotStats {
    /// Predictions before the weak selection.
    pub n_pred_total: usize,
    pub n_strong_pred: usize,
    pub n_weak_total: usize,
    pub n_weak_kept: usize,
    /// Strong spots found on the data, and how many matched a prediction.
    pub n_strong_spots: usize,
    pub n_strong_matched: usize,
    /// Miller indices in the model's amplitude set.
    pub n_hkl: usize,
    pub wall_time_s: f64,
}

/// A predicted shot.
#[derive(Clone, Debug)]
pub struct ShotResult {
    pub shot_id: i64,
    /// Kept predictions (`id` 0 until the rank assigns it).
    pub predictions: ReflectionTable,
    /// Strong spots on the data (`id` 0 likewise).
    pub strong: ReflectionTable,
    /// The data experiment with the stage-1 models.
    pub experiment: Experiment,
    /// Where the spectrum came from.
    pub spectrum_desc: String,
    pub stats: ShotStats,
}

/// Why a shot was not predicted.
#[derive(Clone, Debug, PartialEq)]
pub struct ShotFailure {
    pub reason: &'static str,
    pub message: String,
}

fn fail(reason: &'static str) -> impl Fn(Error) -> ShotFailure {
    move |e| ShotFailure { reason, message: e.to_string() }
}

/// Read-only context shared by the shots of a rank.
pub struct Context<'a> {
    pub settings: &'a Settings,
    /// The rank's kernel backend.
    pub backend: &'a dyn Backend,
    /// Parsed expt files by `exp_name` (an `Err` holds the read error).
    pub expts: HashMap<String, std::result::Result<Arc<ExperimentList>, String>>,
}

impl<'a> Context<'a> {
    /// Read every expt file the shots name, once each.
    pub fn new(settings: &'a Settings, shots: &[ShotInput], backend: &'a dyn Backend) -> Context<'a> {
        let names: BTreeSet<&str> = shots.iter().map(|s| s.model.exp_name.as_str()).collect();
        let expts = names
            .into_par_iter()
            .map(|n| (n.to_string(), ExperimentList::read(n).map(Arc::new).map_err(|e| e.to_string())))
            .collect();
        Context { settings, backend, expts }
    }
}

/// The spectrum to model a shot with, and where it came from.
fn choose_spectrum(
    inp: &ShotInput,
    exp: &Experiment,
    src: &dyn crate::image::ImageSource,
    index: usize,
    cfg: &SpectrumConfig,
) -> Result<(Spectrum, String)> {
    if let Some(s) = &inp.spectrum {
        return Ok((s.clone(), "spectra table (stage 1)".into()));
    }
    if cfg.from_imageset {
        let s = src.spectrum(index)?.ok_or_else(|| {
            Error::file(src.path(), format!("image {index} has no spectrum (spectrum_from_imageset=True)"))
        })?;
        return Ok((
            s.strided(cfg.stride),
            format!("imageset {} #{index}, stride {}, not downsampled", src.path().display(), cfg.stride),
        ));
    }
    if let Some(f) = &inp.model.spectrum_filename {
        let s = crate::io::lam::read_lam(f)?;
        let k = inp.model.spectrum_stride.unwrap_or(1);
        return Ok((s.strided(k), format!("{f}, stride {k}")));
    }
    if let Some(f) = &cfg.lam_file {
        let s = crate::io::lam::read_lam(f)?;
        return Ok((s.strided(cfg.stride), format!("{}, stride {}", f.display(), cfg.stride)));
    }
    let lambda = exp.beam()?.wavelength;
    if let Some((fwhm, n, res)) = cfg.gauss {
        let e0 = crate::conventions::energy_ev_from_wavelength_a(lambda);
        let sig = fwhm / (8.0 * 2f64.ln()).sqrt();
        let n = n.max(1);
        let energies: Vec<f64> = (0..n).map(|i| e0 + (i as f64 - (n as f64 - 1.0) / 2.0) * res).collect();
        let w = energies.iter().map(|e| (-0.5 * ((e - e0) / sig).powi(2)).exp()).collect();
        return Ok((Spectrum::from_energies(&energies, w), format!("gaussian fwhm {fwhm} eV, {n} channels")));
    }
    Ok((Spectrum::monochromatic(lambda), "monochromatic (beam wavelength)".into()))
}

/// Predict, find strong spots, match and select for one shot.
pub fn process_shot(inp: &ShotInput, ctx: &Context) -> std::result::Result<ShotResult, ShotFailure> {
    let t0 = Instant::now();
    let s = ctx.settings;
    let m = &inp.model;
    let bad_input = |msg: String| ShotFailure { reason: "bad_input", message: msg };
    let list = match ctx.expts.get(&m.exp_name) {
        Some(Ok(l)) => l.clone(),
        Some(Err(e)) => return Err(bad_input(e.clone())),
        None => return Err(bad_input(format!("{}: not loaded", m.exp_name))),
    };
    let exp = list.get(m.exp_idx).map_err(fail("bad_input"))?;
    let orig_det = exp.detector().map_err(fail("bad_input"))?;
    exp.crystal().map_err(fail("bad_input"))?;
    if let Some((path, mask)) = &s.strong.mask {
        mask.check_detector(orig_det, path).map_err(fail("mask_mismatch"))?;
    }
    let loc = exp.image_location().map_err(fail("bad_input"))?;
    let src = open_image_source(&loc.path).map_err(fail("image_unreadable"))?;
    let image = src.read_image(loc.index).map_err(fail("image_unreadable"))?;
    image.check_detector(orig_det).map_err(|m| ShotFailure {
        reason: "image_mismatch",
        message: format!("{} image {}: {m}", loc.path.display(), loc.index),
    })?;
    let (spectrum, spectrum_desc) =
        choose_spectrum(inp, exp, src.as_ref(), loc.index, &s.spectrum).map_err(fail("no_spectrum"))?;

    let built = build_model(m, exp, &spectrum, &s.predict).map_err(fail("bad_model"))?;
    let predicted = predict(&built, &s.predict, ctx.backend).map_err(fail("model_error"))?;
    let mut pred = predicted.table;
    if pred.nrows() == 0 {
        return Err(ShotFailure {
            reason: "no_predictions",
            message: format!(
                "no model pixel above predictions.threshold = {} (the flat-F model of {} indices)",
                s.predict.threshold, built.n_hkl
            ),
        });
    }
    let mut strong =
        find_strong_spots(&image, orig_det, &built.geometry, &s.strong).map_err(fail("spotfinding_error"))?;
    let res = label_weak(&mut pred, &mut strong, &s.matching).map_err(fail("matching_error"))?;
    let matched: Vec<i32> = res.pred_to_strong.iter().map(|m| m.map_or(-1, |m| m.index as i32)).collect();
    pred.insert("matched_strong_idx", matched).map_err(fail("matching_error"))?;
    let n_strong_pred = res.n_strong_predictions();
    let n_strong_matched = res.strong_to_pred.iter().filter(|m| m.is_some()).count();
    if n_strong_pred == 0 {
        return Err(ShotFailure {
            reason: "no_matched_strong_spots",
            message: format!(
                "{} predictions, {} strong spots, none within qcut = {} ({})",
                pred.nrows(),
                strong.nrows(),
                s.matching.qcut,
                s.matching.column.column_name()
            ),
        });
    }
    let n_pred_total = pred.nrows();
    let mut kept = select_weak(&pred, s.weak_fraction).map_err(fail("matching_error"))?;
    if let Some(laue) = &predicted.laue_rlp {
        let rows: Vec<usize> =
            kept.get_int("refl_idx").map_err(fail("matching_error"))?.iter().map(|&r| r as usize).collect();
        apply_laue_rlp(&mut kept, laue, &rows).map_err(fail("matching_error"))?;
    }
    let n_kept = kept.nrows();

    // The experiment written out: stage-1 crystal, shifted detector, beam at λ̄.
    let mut out = exp.clone();
    let hall = exp.crystal().map_err(fail("bad_input"))?.space_group_hall.clone();
    let mut xtal = Crystal::from_a_matrix(&built.geometry.a, &hall)
        .ok_or_else(|| bad_input("shot_params.Amats is singular".into()))?;
    if let Some(c) = &exp.crystal {
        xtal.ml_half_mosaicity_deg = c.ml_half_mosaicity_deg;
        xtal.ml_domain_size_ang = c.ml_domain_size_ang;
        xtal.mosaicity = c.mosaicity;
    }
    out.crystal = Some(xtal);
    if let Some(d) = out.detector.as_mut() {
        d.shift_z(m.detz_shift_mm);
    }
    if let Some(b) = out.beam.as_mut() {
        b.wavelength = built.geometry.wavelength;
    }
    let stats = ShotStats {
        n_pred_total,
        n_strong_pred,
        n_weak_total: n_pred_total - n_strong_pred,
        n_weak_kept: n_kept - n_strong_pred,
        n_strong_spots: strong.nrows(),
        n_strong_matched,
        n_hkl: built.n_hkl,
        wall_time_s: t0.elapsed().as_secs_f64(),
    };
    Ok(ShotResult { shot_id: m.shot_id, predictions: kept, strong, experiment: out, spectrum_desc, stats })
}

// ---------------------------------------------------------------------------
// The run

/// One row of the `NAME` summary table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub shot_id: i64,
    pub rank: u32,
    /// The rank's expt file and this shot's index in it.
    pub exp_name: String,
    pub exp_idx: usize,
    /// The rank's prediction refl file (`id == exp_idx`).
    pub refl: String,
    pub spectrum: String,
    pub old_exp_name: String,
    pub old_exp_idx: usize,
    /// The kernel backend that simulated the shot ([`Backend::name`]).
    pub backend: String,
    #[serde(flatten)]
    pub stats: ShotStats,
}

/// What a run did (on this rank, and in total on rank 0).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    pub n_shots: usize,
    pub n_predicted: usize,
    pub n_failed: usize,
    pub n_predictions: usize,
    /// Failures by reason.
    pub failures: BTreeMap<String, usize>,
    /// All ranks' summary rows (rank 0 only).
    pub rows: Vec<SummaryRow>,
    pub notes: Vec<String>,
}

/// Set `id` and `imageset_id` of every row, and the identifier map.
fn set_id(t: &mut ReflectionTable, id: i32, identifier: &str) -> Result<()> {
    let n = t.nrows();
    t.insert("id", vec![id; n])?;
    t.insert("imageset_id", vec![id; n])?;
    t.identifiers.clear();
    if !identifier.is_empty() {
        t.identifiers.insert(id as u64, identifier.to_string());
    }
    Ok(())
}

fn log(comm: &dyn Comm, msg: &str) {
    log_as(comm.rank(), comm.size(), msg)
}

fn log_as(rank: usize, size: usize, msg: &str) {
    if size > 1 {
        eprintln!("integrate [rank {rank}]: {msg}");
    } else {
        eprintln!("integrate: {msg}");
    }
}

/// Run `diffbragg integrate` on this rank (every rank calls it).
pub fn run(opts: &IntegrateOptions, comm: &dyn Comm) -> Result<RunSummary> {
    let (pred_cfg, proc_cfg, warnings) = load_configs(opts)?;
    let mut settings = Settings::from_configs(&pred_cfg, &proc_cfg)?;
    settings.predict.keep_shoeboxes = opts.keep_shoeboxes;
    if comm.is_root() {
        for w in &warnings {
            log(comm, &format!("warning: {w}"));
        }
        for n in &settings.notes {
            log(comm, &format!("note: {n}"));
        }
    }
    run_with(opts, &settings, comm)
}

/// [`run`] with the settings already built (tests adjust them); the backend
/// is chosen from `opts.device` once the inputs are read, before any output.
pub fn run_with(opts: &IntegrateOptions, settings: &Settings, comm: &dyn Comm) -> Result<RunSummary> {
    run_inner(opts, settings, comm, None)
}

/// [`run_with`] on a given backend (`opts.device` is not used).
pub fn run_with_backend(
    opts: &IntegrateOptions,
    settings: &Settings,
    comm: &dyn Comm,
    backend: &dyn Backend,
) -> Result<RunSummary> {
    run_inner(opts, settings, comm, Some(backend))
}

fn run_inner(
    opts: &IntegrateOptions,
    settings: &Settings,
    comm: &dyn Comm,
    backend: Option<&dyn Backend>,
) -> Result<RunSummary> {
    if opts.hop_input_name.is_empty() || opts.hop_input_name.contains(['/', '\\']) {
        return Err(Error::param(
            "--hopInputName",
            format!("`{}` must be a plain file name", opts.hop_input_name),
        ));
    }
    let stage1 = Store::open(&opts.stage1_dir)?;
    let (all, mut notes) = read_stage1(&stage1)?;
    notes.extend(settings.notes.iter().cloned());
    if all.is_empty() {
        return Err(Error::file(
            stage1.root(),
            "no stage-1 results (shot_params rows with stage = 'stage1') to predict",
        ));
    }
    if opts.numdev != 1 {
        notes.push(format!(
            "--numdev {} is ignored: rank r uses GPU (node-local r) mod (visible GPUs); \
             choose the GPUs with CUDA_VISIBLE_DEVICES",
            opts.numdev
        ));
    }
    // The device before any output: `--device cuda` without a GPU writes nothing.
    let selected;
    let backend: &dyn Backend = match backend {
        Some(b) => b,
        None => {
            selected = select(opts.device, comm)?;
            &*selected
        }
    };
    log(comm, &format!("kernel backend: {}", backend.describe()));
    std::fs::create_dir_all(&opts.outdir).map_err(|e| io_err(&opts.outdir, e))?;
    let out_root = std::fs::canonicalize(&opts.outdir).map_err(|e| io_err(&opts.outdir, e))?;
    if out_root == stage1.root() {
        return Err(Error::file(&opts.outdir, "the output folder must differ from the stage-1 folder"));
    }
    let pred_dir = out_root.join(Table::Predictions.name());
    if pred_dir.is_dir() {
        let has_shards = std::fs::read_dir(&pred_dir)
            .map_err(|e| io_err(&pred_dir, e))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("rank"));
        if has_shards {
            return Err(Error::file(
                &opts.outdir,
                "already holds predictions from an earlier run: choose a new output folder (or delete this one)",
            ));
        }
    }
    comm.barrier();
    let rank = comm.rank();
    let block = contiguous_block(all.len(), rank, comm.size());
    let mine = &all[block.clone()];
    log(comm, &format!("{} of {} shots (rows {}..{})", mine.len(), all.len(), block.start, block.end));
    if settings.predict.laue {
        log(comm, "laue mode: indexing predictions with the per-spot mean wavelength");
    }
    if mine.iter().any(|s| s.model.use_diffuse_models) {
        notes.push("use_diffuse_models is ignored: prediction models Bragg spots only".into());
    }

    let ctx = Context::new(settings, mine, backend);
    let done = AtomicUsize::new(0);
    let every = (mine.len() / 10).max(1);
    let (rank_, size_) = (comm.rank(), comm.size());
    let outcomes: Vec<std::result::Result<ShotResult, ShotFailure>> = mine
        .par_iter()
        .with_max_len(1)
        .map(|inp| {
            let r = process_shot(inp, &ctx);
            let k = done.fetch_add(1, Ordering::Relaxed) + 1;
            if opts.verbose {
                match &r {
                    Ok(x) => log_as(
                        rank_,
                        size_,
                        &format!(
                            "shot {} ({}#{}): {} predictions ({} strong), {} strong spots, {:.2} s",
                            inp.model.shot_id,
                            inp.model.exp_name,
                            inp.model.exp_idx,
                            x.predictions.nrows(),
                            x.stats.n_strong_pred,
                            x.stats.n_strong_spots,
                            x.stats.wall_time_s
                        ),
                    ),
                    Err(f) => log_as(
                        rank_,
                        size_,
                        &format!("shot {}: failed ({}): {}", inp.model.shot_id, f.reason, f.message),
                    ),
                }
            } else if k % every == 0 || k == mine.len() {
                log_as(rank_, size_, &format!("{k}/{} shots", mine.len()));
            }
            r
        })
        .collect();

    // Rank-local ids over the predicted shots, in shot order.
    let files = out_root.join("expts_and_refls");
    std::fs::create_dir_all(&files).map_err(|e| io_err(&files, e))?;
    let expt_path = files.join(format!("rank{rank}_preds.expt"));
    let refl_path = files.join(format!("rank{rank}_preds.refl"));
    let strong_path = files.join(format!("rank{rank}_strong.refl"));
    let mut preds = Vec::new();
    let mut strongs = Vec::new();
    let mut exps = Vec::new();
    let mut rows = Vec::new();
    let mut failures = BatchBuilder::new(Table::Failures);
    let mut pred_rows = BatchBuilder::new(Table::Predictions);
    let mut summary = RunSummary { n_shots: mine.len(), notes, ..Default::default() };
    let mut ok_ids = BTreeSet::new();
    for (inp, outcome) in mine.iter().zip(outcomes) {
        match outcome {
            Ok(mut r) => {
                let id = exps.len() as i32;
                set_id(&mut r.predictions, id, &r.experiment.identifier)?;
                set_id(&mut r.strong, id, &r.experiment.identifier)?;
                append_prediction_rows(&mut pred_rows, r.shot_id, &r.predictions, backend.name())?;
                rows.push(SummaryRow {
                    shot_id: r.shot_id,
                    rank: rank as u32,
                    exp_name: expt_path.to_string_lossy().into_owned(),
                    exp_idx: id as usize,
                    refl: refl_path.to_string_lossy().into_owned(),
                    spectrum: r.spectrum_desc.clone(),
                    old_exp_name: inp.model.exp_name.clone(),
                    old_exp_idx: inp.model.exp_idx,
                    backend: backend.name().to_string(),
                    stats: r.stats.clone(),
                });
                summary.n_predictions += r.predictions.nrows();
                ok_ids.insert(r.shot_id);
                preds.push(r.predictions);
                strongs.push(r.strong);
                exps.push(r.experiment);
            }
            Err(f) => {
                let mut row = FailureRow::now(inp.model.shot_id, STAGE, f.reason, f.message.clone());
                row.exp_name = Some(inp.model.exp_name.clone());
                row.exp_idx = Some(inp.model.exp_idx as i32);
                failures.append_row(&row)?;
                *summary.failures.entry(f.reason.to_string()).or_default() += 1;
            }
        }
    }
    summary.n_predicted = exps.len();
    let n_other_spectrum = rows.iter().filter(|r| !r.spectrum.starts_with("spectra table")).count();
    if n_other_spectrum > 0 {
        summary.notes.push(format!(
            "{n_other_spectrum} shot(s) had no stage-1 `spectra` rows and were modelled with another spectrum \
             (see the `spectrum` column of {}.csv)",
            opts.hop_input_name
        ));
    }
    summary.n_failed = summary.n_shots - summary.n_predicted;

    // DIALS files.
    let all_pred = ReflectionTable::concat(&preds)?;
    let all_strong = ReflectionTable::concat(&strongs)?;
    write_refl(&refl_path, &all_pred)?;
    write_refl(&strong_path, &all_strong)?;
    write_experiments(&expt_path, &exps)?;

    // Tables.
    let mut store = Store::create(&out_root, rank as u32, comm.is_root())?;
    let mut refl_batches = Vec::new();
    let mut row0 = 0;
    for (st, r) in strongs.iter().zip(&rows) {
        let rows_of_shot: Vec<usize> = (row0..row0 + st.nrows()).collect();
        row0 += st.nrows();
        if !rows_of_shot.is_empty() {
            refl_batches.push(reflections_batch(r.shot_id, &all_strong, &rows_of_shot)?.0);
        }
    }
    store.append_builder(&mut pred_rows)?;
    store.append(Table::Reflections, &refl_batches)?;
    store.append_builder(&mut failures)?;
    if !ok_ids.is_empty() {
        for t in [Table::ShotParams, Table::Spectra, Table::Experiments] {
            let b = stage1.read(t, Some(&ok_ids))?;
            store.append(t, &b)?;
        }
    }

    // Summary rows from every rank; rank 0 writes the NAME table and the run files.
    let bytes = serde_json::to_vec(&rows).map_err(|e| Error::msg(format!("summary rows: {e}")))?;
    let gathered = comm.allgather_bytes(&bytes);
    let mut counts = [
        summary.n_shots as f64,
        summary.n_predicted as f64,
        summary.n_failed as f64,
        summary.n_predictions as f64,
    ];
    comm.allreduce_sum(&mut counts);
    if comm.is_root() {
        let mut all_rows: Vec<SummaryRow> = Vec::new();
        for (r, b) in gathered.iter().enumerate() {
            let v: Vec<SummaryRow> = serde_json::from_slice(b)
                .map_err(|e| Error::msg(format!("summary rows of rank {r}: {e}")))?;
            all_rows.extend(v);
        }
        write_summary_table(&out_root, &opts.hop_input_name, &all_rows)?;
        let settings_json = serde_json::json!({
            "qcut": settings.matching.qcut,
            "label_weak_col": settings.matching.column.column_name(),
            "threshold": settings.predict.threshold,
            "weak_fraction": settings.weak_fraction,
            "laue_mode": settings.predict.laue,
            "hopInputName": opts.hop_input_name,
            "ranks": comm.size(),
            "device": opts.device.as_str(),
            "backends": all_rows.iter().map(|r| r.backend.as_str()).collect::<BTreeSet<_>>(),
        });
        crate::store::atomic::write_bytes(
            &out_root.join("integrate_settings.json"),
            serde_json::to_string_pretty(&settings_json).unwrap_or_default().as_bytes(),
        )?;
        let cmd = if opts.command_line.is_empty() {
            "diffbragg integrate (library call)".to_string()
        } else {
            opts.command_line.clone()
        };
        crate::store::atomic::write_bytes(
            &out_root.join("cmdline_execution.txt"),
            format!("{cmd}\n").as_bytes(),
        )?;
        summary.rows = all_rows;
        summary.n_shots = counts[0] as usize;
        summary.n_predicted = counts[1] as usize;
        summary.n_failed = counts[2] as usize;
        summary.n_predictions = counts[3] as usize;
    }
    comm.barrier();
    if comm.is_root() {
        store.publish()?;
    }
    Ok(summary)
}

/// The arrow schema of the `NAME` summary table.
pub fn summary_schema() -> Arc<Schema> {
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    Arc::new(Schema::new(vec![
        f("shot_id", DataType::Int64),
        f("rank", DataType::Int32),
        f("exp_name", DataType::Utf8),
        f("exp_idx", DataType::Int32),
        f("refl", DataType::Utf8),
        f("spectrum", DataType::Utf8),
        f("old_exp_name", DataType::Utf8),
        f("old_exp_idx", DataType::Int32),
        f("num_pred", DataType::Int32),
        f("n_strong_pred", DataType::Int32),
        f("n_weak_pred", DataType::Int32),
        f("n_weak_total", DataType::Int32),
        f("n_strong_spots", DataType::Int32),
        f("n_strong_matched", DataType::Int32),
        f("n_hkl", DataType::Int64),
        f("wall_time_s", DataType::Float64),
        f("backend", DataType::Utf8),
    ]))
}

/// Write `NAME.parquet` and `NAME.csv` (atomically) in `dir`.
pub fn write_summary_table(dir: &Path, name: &str, rows: &[SummaryRow]) -> Result<()> {
    let i32c = |f: &dyn Fn(&SummaryRow) -> usize| -> ArrayRef {
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| f(r) as i32)))
    };
    let strc = |f: &dyn Fn(&SummaryRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.shot_id))),
        i32c(&|r| r.rank as usize),
        strc(&|r| &r.exp_name),
        i32c(&|r| r.exp_idx),
        strc(&|r| &r.refl),
        strc(&|r| &r.spectrum),
        strc(&|r| &r.old_exp_name),
        i32c(&|r| r.old_exp_idx),
        i32c(&|r| r.stats.n_strong_pred + r.stats.n_weak_kept),
        i32c(&|r| r.stats.n_strong_pred),
        i32c(&|r| r.stats.n_weak_kept),
        i32c(&|r| r.stats.n_weak_total),
        i32c(&|r| r.stats.n_strong_spots),
        i32c(&|r| r.stats.n_strong_matched),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.stats.n_hkl as i64))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.stats.wall_time_s))),
        strc(&|r| &r.backend),
    ];
    let schema = summary_schema();
    let batch =
        RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::msg(format!("summary table: {e}")))?;
    let pq = dir.join(format!("{name}.parquet"));
    crate::store::atomic::write_replace(&pq, |w| {
        crate::store::parquet::write_any(schema.clone(), std::slice::from_ref(&batch), w)
    })?;
    let csv = dir.join(format!("{name}.csv"));
    crate::store::atomic::write_replace(&csv, |w| {
        let mut wr = arrow::csv::WriterBuilder::new().with_header(true).build(w);
        wr.write(&batch).map_err(|e| Error::file(&csv, format!("writing CSV: {e}")))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_contiguous_and_cover() {
        for n in [0usize, 1, 5, 10, 11] {
            for size in 1..5 {
                let mut next = 0;
                for r in 0..size {
                    let b = contiguous_block(n, r, size);
                    assert_eq!(b.start, next);
                    next = b.end;
                }
                assert_eq!(next, n);
            }
        }
        // numpy.array_split(range(10), 3) → 4, 3, 3.
        assert_eq!(contiguous_block(10, 0, 3), 0..4);
        assert_eq!(contiguous_block(10, 2, 3), 7..10);
    }

    #[test]
    fn cmdline_goes_to_the_phil_that_knows_the_name() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (p, q) = route_cmdline(&a(&[
            "threshold=1e2",
            "spotfinder.lookup.mask=/x/m.npy",
            "qcut=0.003",
            "global_threshold=5",
            "indexing.stills.method_list=fft1d",
        ]))
        .unwrap();
        assert_eq!(p, a(&["threshold=1e2", "qcut=0.003"]));
        assert_eq!(
            q,
            a(&[
                "spotfinder.lookup.mask=/x/m.npy",
                "global_threshold=5",
                "indexing.stills.method_list=fft1d"
            ])
        );
        let e = route_cmdline(&a(&["no_such_thing=1"])).unwrap_err().to_string();
        assert!(e.contains("neither a diffBragg") && e.contains("no_such_thing"), "{e}");
    }

    #[test]
    fn trusted_pixels_combine_every_source() {
        use crate::conventions::{Mat3, Vec3};
        use crate::geometry::Panel;
        use crate::io::mask::PanelMask;
        let (nf, ns) = (30usize, 20usize);
        let panel = Panel {
            origin: Vec3::new(-1.5, 1.0, -10.0),
            fast: Vec3::x(),
            slow: -Vec3::y(),
            pixel_size: [0.1, 0.1],
            image_size: [nf, ns],
            trusted_range: [-1.0, 100.0],
            mask: vec![[3, 4, 6, 5]],
            ..Default::default()
        };
        let det = Detector { panels: vec![panel.clone()], hierarchy: None };
        let geom = ShotGeometry {
            detector: det.clone(),
            pxmm: vec![crate::report::deltapsi::PxMm::Simple],
            unit_s0: Vec3::new(0.0, 0.0, -1.0),
            wavelength: 1.0,
            a: Mat3::identity(),
            real: Mat3::identity(),
        };
        let mut lookup = vec![true; nf * ns];
        lookup[7 * nf + 20] = false;
        let cfg = StrongConfig {
            dispersion: DispersionParams::default(),
            label: LabelParams::default(),
            min_spot_size_auto: false,
            mask: Some((
                PathBuf::from("m.npy"),
                Arc::new(TrustedMask { panels: vec![PanelMask { n_slow: ns, n_fast: nf, trusted: lookup }] }),
            )),
            d_min: Some(6.3),
            d_max: Some(40.0),
            border: 2,
        };
        let mut data: Vec<f64> = (0..nf * ns).map(|k| (k % 7) as f64).collect();
        data[10 * nf + 10] = 150.0; // above the trusted range
        data[11 * nf + 11] = -1.0; // at the lower bound: trusted (inclusive)
        data[12 * nf + 12] = f64::NAN;
        let t = trusted_pixels(&data, 0, &det, &geom, &cfg);
        let mut n_res = 0;
        for s in 0..ns {
            for f in 0..nf {
                let k = s * nf + f;
                // Independent resolution: d = λ / (2 sin θ) at the pixel centre.
                let p = panel.pixel_to_lab(f as f64 + 0.5, s as f64 + 0.5);
                let two_theta = (p.z.abs() / p.norm()).acos();
                let d = 1.0 / (2.0 * (two_theta / 2.0).sin());
                let in_res = (6.3..=40.0).contains(&d);
                n_res += usize::from(!in_res);
                let want = data[k].is_finite()
                    && (-1.0..=100.0).contains(&data[k])
                    && !((3..6).contains(&f) && s == 4)
                    && k != 7 * nf + 20
                    && f >= 2
                    && s >= 2
                    && f + 2 < nf
                    && s + 2 < ns
                    && in_res;
                assert_eq!(t[k], want, "pixel (fast {f}, slow {s})");
            }
        }
        assert!(n_res > 20 && n_res < nf * ns - 20, "the resolution cut must bite: {n_res}");
    }
}
