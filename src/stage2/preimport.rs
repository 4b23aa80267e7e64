//! The pre-import (`diffbragg ens-hopper STORE PHIL --preImport --outdir DIR`):
//! the ROI pixels of every predicted shot, read once from the images into a
//! new store's `pixels` table, so the global refinement never opens an image.
//! (predict-and-stage2.md §2.3–2.6; the successor of ens.hopper's
//! `--preImport` pass.)
//!
//! # Input and output
//! * Input: the `diffbragg integrate` outdir (a store with `predictions` and
//!   copies of the stage-1 `shot_params`, `spectra`, `experiments` rows). A
//!   path to a file inside it (`reintegrated/pred.parquet`, or the reference's
//!   `reintegrated/pred.pkl`, which need not exist) names its folder, with a note.
//! * Output: a **new** store at `--outdir` holding `pixels` and, for every
//!   pre-imported shot, copies of its stage-1 `shot_params` row (stage
//!   `--stage1Tag`), its `spectra` rows (the downsampled spectrum stage 1
//!   modelled, channel by channel) and its `experiments` row; `failures` rows
//!   (stage `preimport`) for shots that could not be imported. Stage 2 runs on
//!   it directly: `diffbragg ens-hopper DIR PHIL --outdir global ...`.
//!   `DIR/preimport_summary.json` gives the totals and each shot's ROI and
//!   pixel counts.
//!
//! # Per shot
//! The shot's experiment (`exp_name[exp_idx]` of its stage-1 row; detector
//! from `refiner.reference_geom` when given, as stage 1 and stage 2 do), its
//! image, and its `predictions` rows: one candidate ROI per prediction,
//! centred on `xyzcal_px` (for integrate output the reference's
//! `xyzobs.px.value` is that same model centroid) with its nominal Miller
//! index. Boxes, background planes, trusted flags, the hot-pixel mask,
//! `adu_per_photon`, `sigma_r`, `res_ranges`... are stage 1's
//! ([`crate::stage1::gather::gather_from_image`] with the same `roi`/`refiner`
//! parameters), so the pixels of a spot are those stage 1 would model.
//!
//! # Rows of `pixels` (one per kept ROI, key (shot_id, roi_id))
//! `roi_id` = the ROI's position in the shot (prediction order), `refl_id` =
//! the prediction's `pred_id`, `hkl` its nominal index, `hkl_asu` that index
//! in the anomalous ASU of the run's space group (`space_group`, else the MTZ's,
//! else the crystal's; [`super::sf::asu_key`], as stage 2 keys its
//! parameters), `asu_id` = the position of `hkl_asu` in the sorted ASU keys of
//! `simulator.structure_factors.mtz_name` (null without an MTZ or when the MTZ
//! lacks it), `rlp` the prediction's, `sigma_readout` = σ_r/adu_per_photon,
//! `tilt_abc` the background plane (a·X + b·Y + c, X and Y relative to the
//! **unpadded** box corner, as [`crate::kernel::BackgroundPlane`]), `data` and
//! `background` f32 photons, `trusted` u8, `freq` only with
//! `roi.allow_overlapping_spots`.
//!
//! # Decisions
//! * \[TRAP\] T2.2: rows are keyed by shot_id (one shot = (expt, exp_idx)), so
//!   nothing collides whatever the expt layout. T2.3: the spectrum travels
//!   with the pixels (the stage-1 `spectra` rows), nothing is re-read.
//!   T2.5: each rank reads its shots' predictions once.
//! * Predictions with hkl (0,0,0) are dropped, and so are **all** copies of an
//!   hkl predicted more than once in a shot (the reference's
//!   `remove_duplicate_hkl`): stage 2 attributes an ROI to one index.
//!   Indices missing from the MTZ are kept (the reference drops them): stage 2
//!   starts them from their resolution shell (T3.4).
//! * `skip`, `first_n`, `max_process` are not applied here, only in the
//!   refinement (applying them in both would apply them twice).
//! * Shots: those with a stage-1 row (`--stage1Tag`) and predictions. A shot
//!   with predictions but no stage-1 row becomes a failure row.
//! * Ranks: shots longest-first by prediction count ([`crate::dist::longest_first`]);
//!   shots run in parallel (rayon) on each rank; finished shots are committed
//!   in groups all-or-nothing across tables ([`crate::stage1::commit`]); rank 0
//!   recovers interrupted commits first and publishes the catalog last.
//! * Resumable: a shot already in `pixels`, or with a `preimport` failure row,
//!   is skipped on a rerun into the same outdir, so a rerun adds no row.
//!   Delete the failure rows' shard to retry failed shots.
//! * One bad shot (unreadable image, no ROI left, a panic) is one failure row;
//!   the run goes on. Errors of the whole run (bad mask, bad reference
//!   geometry, unreadable input store) stop it before any shot is written.
//! * `--refl` (the reference's `predicted_refls` column) is accepted and
//!   ignored: the ROIs come from the input store's `predictions` table.
//!
//! # Figures
//! At the end the summary gives bytes per pixel on disk (the `pixels` shards /
//! pixels) and in memory, measured by loading the table with stage 2's loader
//! ([`super::data::load_pixels`], each rank its longest-first share), which
//! also checks every written row as stage 2 will.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::sf::asu_key;
use super::RunOptions;
use crate::config::EnsHopperConfig;
use crate::dist::{longest_first, Comm};
use crate::error::{Error, Result};
use crate::experiment::ExperimentList;
use crate::geometry::Detector;
use crate::reflections::ReflectionTable;
use crate::stage1::commit;
use crate::stage1::gather::{gather_from_image, GatherOptions, ShotData};
use crate::stage1::mask::PixelMask;
use crate::store::parquet::read_shard_each;
use crate::store::{BatchBuilder, FailureRow, Store, Table};
use crate::symmetry::{Miller, ReciprocalAsu};

/// The `stage` of this step's `failures` rows.
pub const STAGE: &str = "preimport";

/// Name of the summary file written into the outdir.
pub const SUMMARY_FILE: &str = "preimport_summary.json";

/// One shot's counts in the output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShotCount {
    pub shot_id: i64,
    pub n_rois: u64,
    pub n_pixels: u64,
}

/// What a pre-import did (all ranks; also `DIR/preimport_summary.json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// The store read (the integrate outdir).
    pub input_store: PathBuf,
    pub output_store: PathBuf,
    pub n_ranks: usize,
    /// Shots with a stage-1 row and predictions.
    pub n_listed: usize,
    /// Of those, already imported (or failed) by an earlier run.
    pub n_skipped_done: usize,
    /// Imported by this run.
    pub n_imported: usize,
    /// Failed in this run.
    pub n_failed: usize,
    /// Rejected candidate ROIs of this run, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Totals of the output `pixels` table (this and earlier runs).
    pub n_shots: usize,
    pub n_rois: u64,
    pub n_pixels: u64,
    pub n_trusted: u64,
    /// `pixels` shards on disk / pixels.
    pub bytes_per_pixel_disk: f64,
    /// Heap bytes of stage 2's in-memory form / pixels.
    pub bytes_per_pixel_memory: f64,
    /// Wall seconds of the import phase (rank 0's view; all ranks wait at its end).
    pub import_seconds: f64,
    /// `import_seconds × ranks / (shots imported + failed)`: one shot on one rank.
    pub seconds_per_shot: f64,
    pub wall_seconds: f64,
    pub notes: Vec<String>,
    pub shots: Vec<ShotCount>,
}

/// One shot to import (rank 0's list, broadcast).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Task {
    shot_id: i64,
    exp_name: String,
    exp_idx: i32,
    n_pred: u64,
}

/// Rank 0's decision.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Selection {
    tasks: Vec<Task>,
    n_listed: usize,
    n_done: usize,
    notes: Vec<String>,
}

/// One prediction (a candidate ROI).
#[derive(Clone, Debug, PartialEq)]
struct Pred {
    pred_id: i32,
    panel: u32,
    hkl: Miller,
    xyz: [f64; 3],
    rlp: Option<[f64; 3]>,
}

/// A shot's gathered data and the predictions its ROIs came from.
struct Imported {
    data: ShotData,
    /// Rows of the reflection table given to the gather (`data.roi_refl` indexes it).
    preds: Vec<Pred>,
    /// Candidates dropped before the gather, by reason.
    dropped: BTreeMap<&'static str, usize>,
}

struct Failed {
    reason: &'static str,
    message: String,
}

fn fail(reason: &'static str) -> impl Fn(Error) -> Failed {
    move |e| Failed { reason, message: e.to_string() }
}

/// What every shot of a rank shares.
struct Context<'a> {
    gather: GatherOptions,
    mask: Option<PixelMask>,
    reference_detector: Option<Detector>,
    preds: &'a BTreeMap<i64, Vec<Pred>>,
}

/// The store folder an input path names (see the module doc), with a note
/// when a file name was given.
pub fn resolve_input(p: &Path) -> Result<(PathBuf, Option<String>)> {
    let is_store =
        |d: &Path| d.is_dir() && (d.join("predictions").is_dir() || d.join("catalog.duckdb").is_file());
    if p.is_dir() {
        if !is_store(p) {
            return Err(Error::file(
                p,
                "is not a diffbragg store (no predictions/ folder): give the `diffbragg integrate` outdir",
            ));
        }
        return Ok((p.to_path_buf(), None));
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if is_store(&parent) {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        let what = if ext == "pkl" {
            "the reference's pandas pickle"
        } else if p.exists() {
            "a file"
        } else {
            "not present"
        };
        let note =
            format!("{} is {what}; reading the store folder it is in ({})", p.display(), parent.display());
        return Ok((parent, Some(note)));
    }
    Err(Error::file(p, "is neither a store folder (the `diffbragg integrate` outdir) nor a file inside one"))
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a dyn Array {
    b.column_by_name(name).expect("projected column").as_ref()
}

/// Predictions of `shots`, per shot in pred_id order.
fn read_predictions(src: &Store, shots: &BTreeSet<i64>) -> Result<BTreeMap<i64, Vec<Pred>>> {
    let mut out: BTreeMap<i64, Vec<Pred>> = BTreeMap::new();
    let cols = ["shot_id", "pred_id", "panel", "miller_index", "xyzcal_px", "rlp"];
    for (_, _, path) in src.shards(Table::Predictions)? {
        read_shard_each(Table::Predictions, &path, Some(&cols), Some(shots), |b| {
            let sid = col(&b, "shot_id").as_primitive::<Int64Type>();
            let pid = col(&b, "pred_id").as_primitive::<Int32Type>();
            let panel = col(&b, "panel").as_primitive::<UInt32Type>();
            let mi = col(&b, "miller_index").as_struct();
            let xyz = col(&b, "xyzcal_px").as_fixed_size_list();
            let rlp = col(&b, "rlp").as_fixed_size_list();
            let vec3 = |l: &arrow::array::FixedSizeListArray, i: usize| -> Option<[f64; 3]> {
                if !l.is_valid(i) {
                    return None;
                }
                let v = l.value(i);
                let v = v.as_primitive::<Float64Type>();
                (v.len() == 3 && v.null_count() == 0).then(|| [v.value(0), v.value(1), v.value(2)])
            };
            for i in 0..b.num_rows() {
                let bad = |m: &str| {
                    Error::record(&path, format!("shot_id {} pred_id {}", sid.value(i), pid.value(i)), m)
                };
                if !mi.is_valid(i) {
                    return Err(bad("miller_index is null"));
                }
                let h = |k: usize| mi.column(k).as_primitive::<Int32Type>().value(i);
                let p = Pred {
                    pred_id: pid.value(i),
                    panel: panel.value(i),
                    hkl: [h(0), h(1), h(2)],
                    xyz: vec3(xyz, i).ok_or_else(|| bad("xyzcal_px is null or malformed"))?,
                    rlp: vec3(rlp, i),
                };
                out.entry(sid.value(i)).or_default().push(p);
            }
            Ok(())
        })?;
    }
    for v in out.values_mut() {
        v.sort_by_key(|p| p.pred_id);
    }
    Ok(out)
}

/// Prediction counts per shot (rank 0's schedule costs).
fn prediction_counts(src: &Store) -> Result<BTreeMap<i64, u64>> {
    let mut m = BTreeMap::new();
    for b in src.read_columns(Table::Predictions, &["shot_id"], None)? {
        for v in b.column(0).as_primitive::<Int64Type>().iter().flatten() {
            *m.entry(v).or_insert(0u64) += 1;
        }
    }
    Ok(m)
}

/// Shot ids with a failure row of `stage`.
fn failed_ids(store: &Store, stage: &str) -> Result<BTreeSet<i64>> {
    let mut ids = BTreeSet::new();
    for b in store.read_columns(Table::Failures, &["shot_id", "stage"], None)? {
        let sid = b.column(0).as_primitive::<Int64Type>();
        let st = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            if sid.is_valid(i) && st.is_valid(i) && st.value(i) == stage {
                ids.insert(sid.value(i));
            }
        }
    }
    Ok(ids)
}

fn arrow_err(e: arrow::error::ArrowError) -> Error {
    Error::msg(format!("arrow: {e}"))
}

/// Rows of `batches` (one table) that belong to `ids`, the last one per key
/// (shot_id, plus `channel` for spectra) kept: a source with repeated rows
/// (e.g. a stage-1 rerun) gives one row per key here.
fn rows_for(table: Table, batches: &[RecordBatch], ids: &BTreeSet<i64>) -> Result<Option<RecordBatch>> {
    let Some(first) = batches.first() else { return Ok(None) };
    let b = concat_batches(&first.schema(), batches).map_err(arrow_err)?;
    let sid = b.column_by_name("shot_id").expect("schema").as_primitive::<Int64Type>();
    let chan = (table == Table::Spectra)
        .then(|| b.column_by_name("channel").expect("schema").as_primitive::<Int32Type>());
    let key = |i: usize| (sid.value(i), chan.map_or(0, |c| c.value(i)));
    let mut last: HashMap<(i64, i32), usize> = HashMap::new();
    for i in 0..b.num_rows() {
        if sid.is_valid(i) && ids.contains(&sid.value(i)) {
            last.insert(key(i), i);
        }
    }
    if last.is_empty() {
        return Ok(None);
    }
    let mask: BooleanArray =
        (0..b.num_rows()).map(|i| Some(sid.is_valid(i) && last.get(&key(i)) == Some(&i))).collect();
    Ok(Some(filter_record_batch(&b, &mask).map_err(arrow_err)?))
}

/// The stage-1 rows of `shots` to copy (stage = tag, final rows only).
fn stage1_batches(src: &Store, tag: &str, shots: &BTreeSet<i64>) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for b in src.read(Table::ShotParams, Some(shots))? {
        let st = b.column_by_name("stage").expect("schema").as_string::<i32>();
        let it = b.column_by_name("iteration").expect("schema");
        let mask: BooleanArray =
            (0..b.num_rows()).map(|i| Some(st.is_valid(i) && st.value(i) == tag && it.is_null(i))).collect();
        out.push(filter_record_batch(&b, &mask).map_err(arrow_err)?);
    }
    Ok(out)
}

/// Candidates → reflection table for the gather: (0,0,0) and repeated hkl dropped.
fn candidate_table(preds: &[Pred]) -> Result<(ReflectionTable, Vec<Pred>, BTreeMap<&'static str, usize>)> {
    let mut count: HashMap<Miller, usize> = HashMap::new();
    for p in preds {
        *count.entry(p.hkl).or_default() += 1;
    }
    let mut dropped = BTreeMap::new();
    let mut keep = Vec::with_capacity(preds.len());
    for p in preds {
        if p.hkl == [0, 0, 0] {
            *dropped.entry("hkl_000").or_default() += 1;
        } else if count[&p.hkl] > 1 {
            *dropped.entry("duplicate_hkl").or_default() += 1;
        } else {
            keep.push(p.clone());
        }
    }
    let mut t = ReflectionTable::new(keep.len());
    let xyz: Vec<[f64; 3]> = keep.iter().map(|p| p.xyz).collect();
    t.insert("panel", keep.iter().map(|p| p.panel as u64).collect::<Vec<u64>>())?;
    t.insert("xyzobs.px.value", xyz.clone())?;
    t.insert("xyzcal.px", xyz)?;
    t.insert("miller_index", keep.iter().map(|p| p.hkl).collect::<Vec<Miller>>())?;
    if keep.iter().all(|p| p.rlp.is_some()) {
        t.insert("rlp", keep.iter().map(|p| p.rlp.unwrap_or([0.0; 3])).collect::<Vec<[f64; 3]>>())?;
    }
    Ok((t, keep, dropped))
}

/// Import one shot.
fn import_shot(ctx: &Context, task: &Task) -> std::result::Result<Imported, Failed> {
    let idx = usize::try_from(task.exp_idx)
        .map_err(|_| Failed { reason: "bad_input", message: format!("negative exp_idx {}", task.exp_idx) })?;
    let mut list = ExperimentList::read_one(&task.exp_name, idx).map_err(fail("bad_input"))?;
    let mut e = list.get(0).map_err(fail("bad_input"))?.clone();
    list.experiments.clear();
    if let Some(d) = &ctx.reference_detector {
        e.detector = Some(d.clone());
    }
    let det = e.detector().map_err(fail("bad_input"))?;
    if let Some(m) = &ctx.mask {
        let ok = m.panels.len() == det.panels.len()
            && det.panels.iter().all(|p| (m.shape.1, m.shape.0) == (p.image_size[0], p.image_size[1]));
        if !ok {
            return Err(Failed {
                reason: "bad_mask",
                message: "roi.hotpixel_mask does not match this shot's detector".into(),
            });
        }
    }
    let preds = ctx.preds.get(&task.shot_id).map(|v| v.as_slice()).unwrap_or(&[]);
    let (table, kept, dropped) = candidate_table(preds).map_err(fail("bad_input"))?;
    let loc = e.image_location().map_err(fail("bad_input"))?;
    let src = crate::image::open_image_source(&loc.path).map_err(fail("bad_image"))?;
    let img = src.read_image(loc.index).map_err(fail("bad_image"))?;
    drop(src);
    let data =
        gather_from_image(&e, &table, &img, ctx.mask.as_ref(), &ctx.gather).map_err(fail("bad_image"))?;
    if data.rois.is_empty() || data.n_trusted() == 0 {
        return Err(Failed {
            reason: "no_rois",
            message: format!(
                "no usable ROI among {} predictions (dropped before the gather: {dropped:?}; rejected: {:?})",
                preds.len(),
                data.rejected
            ),
        });
    }
    Ok(Imported { data, preds: kept, dropped })
}

/// Append a shot's `pixels` rows.
fn append_pixels(
    b: &mut BatchBuilder,
    shot_id: i64,
    imp: &Imported,
    asu: &ReciprocalAsu,
    asu_ids: &HashMap<Miller, i32>,
) -> Result<(u64, u64)> {
    let d = &imp.data;
    let sigma = d.sigma_r2.sqrt() as f32;
    let mut off = 0;
    for (k, roi) in d.rois.iter().enumerate() {
        let n = (roi.x1 - roi.x0) * (roi.y1 - roi.y0);
        let p = &imp.preds[d.roi_refl[k]];
        let data: Vec<f32> = d.data[off..off + n].iter().map(|&v| v as f32).collect();
        let bg: Vec<f32> = d.background[off..off + n].iter().map(|&v| v as f32).collect();
        let tr: Vec<u8> = d.trusted[off..off + n].iter().map(|&t| u8::from(t)).collect();
        // Multiplicities above 255 cannot occur with boxes of ≤ 255 overlapping spots; clamp anyway.
        let freq: Option<Vec<u8>> =
            d.freq.as_ref().map(|f| f[off..off + n].iter().map(|&v| v.clamp(1.0, 255.0) as u8).collect());
        let plane = d.planes[k];
        let key = asu_key(asu, &p.hkl);
        let bbox = [roi.x0 as i32, roi.x1 as i32, roi.y0 as i32, roi.y1 as i32];
        b.append(&[
            ("shot_id", shot_id.into()),
            ("roi_id", (k as i32).into()),
            ("refl_id", p.pred_id.into()),
            ("panel", (roi.panel as u32).into()),
            ("bbox", bbox.into()),
            ("hkl", p.hkl.into()),
            ("hkl_asu", key.into()),
            ("asu_id", asu_ids.get(&key).copied().into()),
            ("rlp", p.rlp.into()),
            ("sigma_readout", sigma.into()),
            ("tilt_abc", [plane.a, plane.b, plane.c].into()),
            ("data", data.into()),
            ("background", bg.into()),
            ("trusted", tr.into()),
            ("freq", freq.into()),
        ])?;
        off += n;
    }
    Ok((d.rois.len() as u64, off as u64))
}

/// Rank 0: the shots to import (see the module doc).
fn select(src: &Store, out: &Store, tag: &str) -> Result<(Selection, Vec<FailureRow>)> {
    let counts = prediction_counts(src)?;
    if counts.is_empty() {
        return Err(Error::file(
            src.root(),
            "the `predictions` table is empty: give the outdir of `diffbragg integrate`",
        ));
    }
    let stage1 = super::shots::read_stage1_rows(src, tag, None)?;
    let mut done = out.shot_ids(Table::Pixels)?;
    done.extend(failed_ids(out, STAGE)?);
    let mut sel = Selection::default();
    let mut failures = Vec::new();
    for (&sid, &n) in &counts {
        match stage1.get(&sid) {
            Some(r) => {
                sel.n_listed += 1;
                if done.contains(&sid) {
                    sel.n_done += 1;
                } else {
                    sel.tasks.push(Task {
                        shot_id: sid,
                        exp_name: r.exp_name.clone(),
                        exp_idx: r.exp_idx,
                        n_pred: n,
                    });
                }
            }
            None if !done.contains(&sid) => failures.push(FailureRow::now(
                sid,
                STAGE,
                "no_stage1_row",
                format!("{n} predictions but no `{tag}` shot_params row in {}", src.root().display()),
            )),
            None => {}
        }
    }
    let n_unpredicted = stage1.keys().filter(|s| !counts.contains_key(s)).count();
    if n_unpredicted > 0 {
        sel.notes.push(format!(
            "{n_unpredicted} shot(s) with a `{tag}` row have no predictions (see the input store's failures table)"
        ));
    }
    let ids: BTreeSet<i64> = sel.tasks.iter().map(|t| t.shot_id).collect();
    if !ids.is_empty() {
        let with_spec = src.shot_ids(Table::Spectra)?;
        let n = ids.iter().filter(|s| !with_spec.contains(s)).count();
        if n > 0 {
            sel.notes.push(format!(
                "{n} shot(s) have no `spectra` rows: stage 2 will model them at the beam wavelength"
            ));
        }
    }
    Ok((sel, failures))
}

/// The detector of the first readable experiment of `tasks` (for the mask's shape).
fn first_detector(tasks: &[&Task]) -> Option<Detector> {
    tasks.iter().find_map(|t| {
        let l = ExperimentList::read_one(&t.exp_name, t.exp_idx.max(0) as usize).ok()?;
        l.get(0).ok()?.detector().ok().cloned()
    })
}

/// Run the pre-import. Collective: every rank calls it with the same arguments.
pub fn run(cfg: &EnsHopperConfig, opts: &RunOptions, comm: &dyn Comm) -> Result<Summary> {
    let t0 = Instant::now();
    let (rank, nranks) = (comm.rank(), comm.size());
    let log = |m: &str| {
        if comm.is_root() && !opts.quiet {
            println!("preimport: {m}");
        }
    };
    // --- Everything that can be checked before writing. ---
    let (src_dir, note) = resolve_input(&opts.store_dir)?;
    let gather = GatherOptions::from_params(cfg);
    if !(gather.adu_per_photon > 0.0) {
        return Err(Error::param("refiner.adu_per_photon", format!("{} must be > 0", gather.adu_per_photon)));
    }
    if !(gather.sigma_r >= 0.0) {
        return Err(Error::param("refiner.sigma_r", format!("{} must be ≥ 0", gather.sigma_r)));
    }
    if gather.shoebox_size < 2 {
        return Err(Error::param(
            "roi.shoebox_size",
            "must be at least 2 (ROIs smaller than 2×2 are rejected)",
        ));
    }
    let src = Store::open(&src_dir)?;
    if let Ok(o) = std::fs::canonicalize(&opts.outdir) {
        if o == src.root() {
            return Err(Error::file(
                &opts.outdir,
                "--outdir is the input store itself: the pre-import writes a new store (give another folder)",
            ));
        }
    }
    if let Some(n) = &note {
        log(&format!("note: {n}"));
    }

    // --- Rank 0: the output store, interrupted commits, the shot list. ---
    let decision = if comm.is_root() {
        Some((|| -> Result<Vec<u8>> {
            let mut out = Store::create(&opts.outdir, 0, true)?;
            let (fin, dropped) = commit::recover(out.root())?;
            if fin + dropped > 0 {
                eprintln!("preimport: recovered {fin} committed and dropped {dropped} unfinished batch(es) of an interrupted run");
            }
            let (sel, orphans) = select(&src, &out, &opts.stage1_tag)?;
            if !orphans.is_empty() {
                let mut b = BatchBuilder::new(Table::Failures);
                for f in &orphans {
                    eprintln!("warning: shot {}: {}", f.shot_id, f.message);
                    b.append_row(f)?;
                }
                out.append_builder(&mut b)?;
            }
            serde_json::to_vec(&sel).map_err(|e| Error::msg(format!("shot list: {e}")))
        })())
    } else {
        None
    };
    let bytes = super::broadcast_result(comm, decision)?;
    let sel: Selection = serde_json::from_slice(&bytes).map_err(|e| Error::msg(format!("shot list: {e}")))?;
    let out = Store::create(&opts.outdir, rank as u32, comm.is_root())?;
    let out_root = out.root().to_path_buf();
    for n in &sel.notes {
        log(&format!("note: {n}"));
    }
    log(&format!(
        "{} shot(s) listed in {}, {} already done, {} to import on {nranks} rank(s)",
        sel.n_listed,
        src.root().display(),
        sel.n_done,
        sel.tasks.len()
    ));

    // --- This rank's shots and what they share. ---
    let costs: Vec<u64> = sel.tasks.iter().map(|t| t.n_pred).collect();
    let mine: Vec<&Task> =
        longest_first(&costs, nranks).swap_remove(rank).into_iter().map(|i| &sel.tasks[i]).collect();
    let mine_ids: BTreeSet<i64> = mine.iter().map(|t| t.shot_id).collect();
    let first = sel.tasks.first().map(|t| (t.exp_name.clone(), t.exp_idx));
    let sg = super::space_group(cfg, first.as_ref())?;
    let asu = ReciprocalAsu::new(&sg);
    let asu_ids: HashMap<Miller, i32> = if cfg.simulator.structure_factors.mtz_name.is_some() {
        let sf = super::sf::StartingF::from_config(cfg, &sg)?;
        sf.amplitudes.keys().enumerate().map(|(i, k)| (*k, i as i32)).collect()
    } else {
        HashMap::new()
    };
    let reference_detector = match &cfg.refiner.reference_geom {
        Some(p) => {
            let l = ExperimentList::read_one(p, 0)?;
            Some(
                l.get(0)?
                    .detector()
                    .map_err(|_| {
                        Error::param("refiner.reference_geom", format!("{} has no detector", p.display()))
                    })?
                    .clone(),
            )
        }
        None => None,
    };
    let mask = match (&cfg.roi.hotpixel_mask, mine.is_empty()) {
        (Some(path), false) => {
            let det = reference_detector.clone().or_else(|| first_detector(&mine)).ok_or_else(|| {
                Error::param(
                    "roi.hotpixel_mask",
                    "no shot of this rank has a readable detector to check the mask against",
                )
            })?;
            let dims: Vec<[usize; 2]> = det.panels.iter().map(|p| p.image_size).collect();
            Some(PixelMask::read(path, &dims)?)
        }
        _ => None,
    };
    let (preds, copies) = if mine.is_empty() {
        (BTreeMap::new(), vec![])
    } else {
        let copies = vec![
            (Table::ShotParams, stage1_batches(&src, &opts.stage1_tag, &mine_ids)?),
            (Table::Spectra, src.read(Table::Spectra, Some(&mine_ids))?),
            (Table::Experiments, src.read(Table::Experiments, Some(&mine_ids))?),
        ];
        (read_predictions(&src, &mine_ids)?, copies)
    };
    let ctx = Context { gather, mask, reference_detector, preds: &preds };

    // --- Import, in groups committed all-or-nothing. ---
    let t_import = Instant::now();
    let show_bar = comm.is_root() && !opts.quiet && std::io::stderr().is_terminal();
    let bar = show_bar.then(|| {
        let b = indicatif::ProgressBar::new(mine.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} shots  {elapsed_precise} (eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let group = (4 * rayon::current_num_threads()).max(8);
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let (mut n_ok, mut n_fail) = (0usize, 0usize);
    let mut last_log = Instant::now();
    let mut local_err: Option<Error> = None;
    for (seq, chunk) in mine.chunks(group).enumerate() {
        let results: Vec<std::result::Result<Imported, Failed>> = chunk
            .par_iter()
            .map(|t| {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| import_shot(&ctx, t)))
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(Failed { reason: "panic", message: format!("internal error: {msg}") })
                    });
                if let Some(b) = &bar {
                    b.inc(1);
                }
                r
            })
            .collect();
        let r = (|| -> Result<()> {
            let mut px = BatchBuilder::new(Table::Pixels);
            let mut fa = BatchBuilder::new(Table::Failures);
            let mut ok_ids = BTreeSet::new();
            for (t, r) in chunk.iter().zip(&results) {
                match r {
                    Ok(imp) => {
                        append_pixels(&mut px, t.shot_id, imp, &asu, &asu_ids)?;
                        ok_ids.insert(t.shot_id);
                        for (k, v) in imp
                            .data
                            .rejected
                            .iter()
                            .map(|(k, v)| (*k, *v))
                            .chain(imp.dropped.iter().map(|(k, v)| (*k, *v)))
                        {
                            *rejected.entry(k.to_string()).or_default() += v as u64;
                        }
                    }
                    Err(f) => {
                        let mut row = FailureRow::now(t.shot_id, STAGE, f.reason, f.message.clone());
                        row.exp_name = Some(t.exp_name.clone());
                        row.exp_idx = Some(t.exp_idx);
                        fa.append_row(&row)?;
                        eprintln!(
                            "shot {} ({}, experiment {}): {}: {}",
                            t.shot_id, t.exp_name, t.exp_idx, f.reason, f.message
                        );
                    }
                }
            }
            let mut batches = vec![(Table::Pixels, px.finish()?)];
            for (table, src_batches) in &copies {
                if let Some(b) = rows_for(*table, src_batches, &ok_ids)? {
                    batches.push((*table, b));
                }
            }
            batches.push((Table::Failures, fa.finish()?));
            commit::commit(&out_root, rank as u32, seq as u64, &batches)
        })();
        if let Err(e) = r {
            local_err = Some(e);
            break;
        }
        n_ok += results.iter().filter(|r| r.is_ok()).count();
        n_fail += results.iter().filter(|r| r.is_err()).count();
        if let Some(b) = &bar {
            b.set_message(format!("{n_fail} failed"));
        } else if !opts.quiet && last_log.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "preimport rank {rank}: {}/{} shots ({n_fail} failed), {:.0} s",
                n_ok + n_fail,
                mine.len(),
                t0.elapsed().as_secs_f64()
            );
            last_log = Instant::now();
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    // A rank that could not write stops everyone (after the others' commits).
    let mut flag = [f64::from(u8::from(local_err.is_some()))];
    comm.allreduce_sum(&mut flag);
    if let Some(e) = local_err {
        return Err(e);
    }
    if flag[0] > 0.0 {
        return Err(Error::msg("the pre-import failed on another rank (see its message)"));
    }
    let import_seconds = t_import.elapsed().as_secs_f64();
    let mut totals = [n_ok as f64, n_fail as f64];
    comm.allreduce_sum(&mut totals);
    let mut rej_all: BTreeMap<String, u64> = BTreeMap::new();
    let enc = serde_json::to_vec(&rejected).map_err(|e| Error::msg(e.to_string()))?;
    for g in comm.allgather_bytes(&enc) {
        let m: BTreeMap<String, u64> = serde_json::from_slice(&g).map_err(|e| Error::msg(e.to_string()))?;
        for (k, v) in m {
            *rej_all.entry(k).or_default() += v;
        }
    }
    comm.barrier();
    if comm.is_root() {
        out.publish()?;
    }

    // --- Totals of the output table, and stage 2's in-memory size. ---
    let counts = if comm.is_root() {
        Some(super::data::shot_counts(&out).map(|c| {
            let v: Vec<ShotCount> = c
                .iter()
                .map(|c| ShotCount { shot_id: c.shot_id, n_rois: c.n_rois, n_pixels: c.n_pixels })
                .collect();
            serde_json::to_vec(&v).unwrap_or_default()
        }))
    } else {
        None
    };
    let shots: Vec<ShotCount> = serde_json::from_slice(&super::broadcast_result(comm, counts)?)
        .map_err(|e| Error::msg(format!("shot counts: {e}")))?;
    let share =
        longest_first(&shots.iter().map(|s| s.n_pixels).collect::<Vec<_>>(), nranks).swap_remove(rank);
    let share_ids: BTreeSet<i64> = share.iter().map(|&i| shots[i].shot_id).collect();
    let mut mem = [0.0f64; 3];
    if !share_ids.is_empty() {
        for p in super::data::load_pixels(&out, &share_ids)?.values() {
            mem[0] += p.heap_bytes() as f64;
            mem[1] += p.n_pixels() as f64;
            mem[2] += p.n_trusted() as f64;
        }
    }
    comm.allreduce_sum(&mut mem);
    let n_pixels: u64 = shots.iter().map(|s| s.n_pixels).sum();
    let disk = if comm.is_root() { super::data::bytes_on_disk(&out)? } else { 0 };
    let summary = Summary {
        input_store: src.root().to_path_buf(),
        output_store: out_root.clone(),
        n_ranks: nranks,
        n_listed: sel.n_listed,
        n_skipped_done: sel.n_done,
        n_imported: totals[0] as usize,
        n_failed: totals[1] as usize,
        rejected: rej_all,
        n_shots: shots.len(),
        n_rois: shots.iter().map(|s| s.n_rois).sum(),
        n_pixels,
        n_trusted: mem[2] as u64,
        bytes_per_pixel_disk: disk as f64 / n_pixels.max(1) as f64,
        bytes_per_pixel_memory: mem[0] / mem[1].max(1.0),
        import_seconds,
        seconds_per_shot: if totals[0] + totals[1] > 0.0 {
            import_seconds * nranks as f64 / (totals[0] + totals[1])
        } else {
            0.0
        },
        wall_seconds: t0.elapsed().as_secs_f64(),
        notes: note.into_iter().chain(sel.notes.iter().cloned()).collect(),
        shots,
    };
    if comm.is_root() {
        let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::msg(e.to_string()))?;
        let path = out_root.join(SUMMARY_FILE);
        crate::store::atomic::write_bytes(&path, text.as_bytes())?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(id: i32, hkl: Miller) -> Pred {
        Pred { pred_id: id, panel: 0, hkl, xyz: [10.0 + id as f64, 20.0, 0.0], rlp: Some([0.1, 0.0, 0.0]) }
    }

    #[test]
    fn candidates_drop_000_and_every_copy_of_a_repeated_hkl() {
        let p = vec![
            pred(0, [1, 2, 3]),
            pred(1, [0, 0, 0]),
            pred(2, [2, 0, 0]),
            pred(3, [1, 2, 3]),
            pred(4, [-1, 0, 0]),
        ];
        let (t, keep, dropped) = candidate_table(&p).unwrap();
        assert_eq!(keep.iter().map(|p| p.pred_id).collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(dropped.get("duplicate_hkl"), Some(&2));
        assert_eq!(dropped.get("hkl_000"), Some(&1));
        assert_eq!(t.nrows(), 2);
        assert_eq!(t.get_vec3("xyzobs.px.value").unwrap()[1], [14.0, 20.0, 0.0]);
        assert_eq!(t.get_miller("miller_index").unwrap()[0], [2, 0, 0]);
        assert_eq!(t.get_size("panel").unwrap(), &[0, 0]);
    }

    #[test]
    fn input_path_resolves_to_its_store_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let st = tmp.path().join("reintegrated");
        std::fs::create_dir_all(st.join("predictions")).unwrap();
        assert_eq!(resolve_input(&st).unwrap(), (st.clone(), None));
        let (d, n) = resolve_input(&st.join("pred.pkl")).unwrap();
        assert_eq!(d, st);
        assert!(n.unwrap().contains("pickle"));
        std::fs::write(st.join("pred.parquet"), b"x").unwrap();
        let (d, n) = resolve_input(&st.join("pred.parquet")).unwrap();
        assert_eq!(d, st);
        assert!(n.unwrap().contains("a file"));
        let e = resolve_input(&tmp.path().join("nothing/pred.pkl")).unwrap_err().to_string();
        assert!(e.contains("nothing/pred.pkl"), "{e}");
        let e = resolve_input(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("not a diffbragg store"), "{e}");
    }
}
