//! The stage-2 pre-import (`diffbragg ens-hopper INTEG PHIL --outdir PRE --preImport`):
//! every shoebox pixel of every predicted shot, materialised once into the
//! `pixels` table, so that the global refinement streams columns instead of
//! re-reading images (predict-and-stage2.md §2).
//!
//! # Input and output
//! * Input: a `diffbragg integrate` output folder (a store holding
//!   `predictions` and copies of the stage-1 `shot_params`, `spectra` and
//!   `experiments` rows). A file inside it (`reintegrated/pred.parquet`, or
//!   the reference's `reintegrated/pred.pkl` name) stands for the folder.
//! * Output: a new store at `--outdir` with `pixels` (one row per ROI, keyed
//!   by (`shot_id`, `roi_id`)), the stage-1 `shot_params`, `spectra` and
//!   `experiments` rows of each pre-imported shot, and a `failures` row
//!   (stage `preimport`) for each shot that could not be read. Stage 2 then
//!   needs only this folder.
//!
//! # ROIs
//! One per kept prediction, centred on its model centroid `xyzcal_px` (the
//! stage-1 model, z-shifted detector), built by stage 1's own code
//! ([`crate::stage1::gather::gather_from_image`]) with the same `roi.*` and
//! `refiner.*` parameters: box size, edge rejection, overlap shrinking,
//! hot-pixel mask, trusted range, background plane with outlier rejection,
//! `adu_per_photon`, `sigma_r`. So the pixels of a spot are the same ones
//! stage 1 would gather. Data and background are stored in photons as f32
//! (the images are f32 or integer ADU: no precision is lost for data; the
//! background plane is a model, 7 digits suffice), trust as u8.
//! Each ROI keeps its nominal index `hkl`, the anomalous-ASU key `hkl_asu` of
//! the run's space group, `rlp` and the background plane.
//!
//! # Decisions on the reference (§2 traps)
//! * Pre-import files keyed by the expt name collide; rows here are keyed by
//!   `shot_id`, and the spectrum of each shot travels with it (T2.2/T2.3).
//! * `--refl predicted_refls` and other reference arguments are accepted and
//!   ignored: the predictions come from the table.
//! * A rerun into the same `--outdir` skips shots that already have `pixels`
//!   or `failures` rows; rows are committed in all-or-nothing flushes
//!   ([`crate::stage1::commit`]), so kill -9 and rerun leaves each shot once.
//! * Shots go to ranks longest-first by prediction count.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, AsArray, BooleanArray, Int64Array};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;

use super::data;
use super::sf::asu_key;
use crate::config::EnsHopperConfig;
use crate::dist::{longest_first, Comm};
use crate::error::{Error, Result};
use crate::experiment::ExperimentList;
use crate::image::open_image_source;
use crate::reflections::{Column, ReflectionTable};
use crate::stage1::commit;
use crate::stage1::gather::{gather_from_image, ShotData};
use crate::stage1::mask::PixelMask;
use crate::store::{BatchBuilder, FailureRow, Store, Table};
use crate::symmetry::{ReciprocalAsu, SpaceGroup};

/// The `stage` of pre-import failure rows.
pub const STAGE: &str = "preimport";

/// Options of a pre-import run.
#[derive(Clone, Debug)]
pub struct PreimportOptions {
    /// The integrate output folder (or a file inside it).
    pub input: PathBuf,
    /// The new store.
    pub outdir: PathBuf,
    /// Shots per all-or-nothing commit.
    pub flush_every: usize,
    /// Progress bar (default: when stderr is a terminal).
    pub progress: Option<bool>,
}

/// What a pre-import did (this rank's shots; the totals are on rank 0 after
/// the run in the store).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PreimportSummary {
    pub n_listed: usize,
    pub n_skipped_done: usize,
    pub n_imported: usize,
    pub n_failed: usize,
    pub n_rois: usize,
    pub n_pixels: u64,
    /// Whole `pixels` table: Parquet bytes per pixel (rank 0).
    pub bytes_per_pixel_disk: f64,
    /// Stage 2's in-memory representation, bytes per pixel (rank 0, first shot).
    pub bytes_per_pixel_memory: f64,
    pub wall_s: f64,
}

/// The store folder of `p`: `p` itself, or the folder of a file inside a
/// store (with a note saying so).
pub fn resolve_input(p: &Path) -> Result<(PathBuf, Option<String>)> {
    let is_store =
        |d: &Path| d.join(crate::store::catalog::CATALOG_FILE).is_file() || d.join("predictions").is_dir();
    if p.is_dir() {
        if !is_store(p) {
            return Err(Error::file(
                p,
                "is not a diffbragg store (no catalog.duckdb): give the `diffbragg integrate` output folder",
            ));
        }
        return Ok((p.to_path_buf(), None));
    }
    if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()).or(Some(Path::new("."))) {
        if is_store(parent) {
            let note = format!(
                "pre-import: {} names a file; reading the store it lies in, {}",
                p.display(),
                parent.display()
            );
            return Ok((parent.to_path_buf(), Some(note)));
        }
    }
    Err(Error::file(
        p,
        "neither a store folder nor a file inside one: give the `diffbragg integrate` output folder",
    ))
}

/// One ROI-to-be: a kept prediction.
#[derive(Clone, Copy, Debug)]
struct Pred {
    pred_id: i32,
    panel: u32,
    xyz: [f64; 3],
    hkl: [i32; 3],
    rlp: [f64; 3],
}

/// A stage-1 row's link to its data.
#[derive(Clone, Debug)]
struct ShotRef {
    exp_name: String,
    exp_idx: usize,
}

/// The predictions of every shot.
fn read_predictions(store: &Store) -> Result<BTreeMap<i64, Vec<Pred>>> {
    let mut out: BTreeMap<i64, Vec<Pred>> = BTreeMap::new();
    let cols = ["shot_id", "pred_id", "panel", "miller_index", "xyzcal_px", "rlp"];
    for b in store.read_columns(Table::Predictions, &cols, None)? {
        let sid = b.column(0).as_primitive::<Int64Type>();
        let pid = b.column(1).as_primitive::<Int32Type>();
        let panel = b.column(2).as_primitive::<UInt32Type>();
        let mi = b.column(3).as_struct();
        let (h, k, l) = (
            mi.column(0).as_primitive::<Int32Type>(),
            mi.column(1).as_primitive::<Int32Type>(),
            mi.column(2).as_primitive::<Int32Type>(),
        );
        let xyz = b.column(4).as_fixed_size_list();
        let rlp = b.column(5).as_fixed_size_list();
        let v3 = |l: &arrow::array::FixedSizeListArray, i: usize| -> [f64; 3] {
            if l.is_null(i) {
                return [f64::NAN; 3];
            }
            let v = l.value(i);
            let f = v.as_primitive::<Float64Type>();
            [f.value(0), f.value(1), f.value(2)]
        };
        for i in 0..b.num_rows() {
            out.entry(sid.value(i)).or_default().push(Pred {
                pred_id: pid.value(i),
                panel: panel.value(i),
                xyz: v3(xyz, i),
                hkl: [h.value(i), k.value(i), l.value(i)],
                rlp: v3(rlp, i),
            });
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|p| p.pred_id);
    }
    Ok(out)
}

/// The stage-1 rows (exp_name, exp_idx) of the predicted shots.
fn read_shot_refs(store: &Store, ids: &BTreeSet<i64>) -> Result<BTreeMap<i64, ShotRef>> {
    let mut out = BTreeMap::new();
    for b in store.read_columns(Table::ShotParams, &["shot_id", "stage", "exp_name", "exp_idx"], Some(ids))? {
        let sid = b.column(0).as_primitive::<Int64Type>();
        let st = b.column(1).as_string::<i32>();
        let name = b.column(2).as_string::<i32>();
        let idx = b.column(3).as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            if st.value(i) != "stage1" || name.is_null(i) || idx.is_null(i) {
                continue;
            }
            out.insert(
                sid.value(i),
                ShotRef { exp_name: name.value(i).to_string(), exp_idx: idx.value(i).max(0) as usize },
            );
        }
    }
    Ok(out)
}

/// Shots already in the output (pixels, or a pre-import failure).
fn done_ids(store: &Store) -> Result<BTreeSet<i64>> {
    let mut done = store.shot_ids(Table::Pixels)?;
    for b in store.read_columns(Table::Failures, &["shot_id", "stage"], None)? {
        let sid = b.column(0).as_primitive::<Int64Type>();
        let st = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            if st.value(i) == STAGE && !sid.is_null(i) {
                done.insert(sid.value(i));
            }
        }
    }
    Ok(done)
}

/// Everything a worker needs, shared.
struct Ctx<'a> {
    cfg: &'a EnsHopperConfig,
    asu: ReciprocalAsu,
    expts: Mutex<HashMap<String, Arc<ExperimentList>>>,
    mask: Mutex<Option<Arc<PixelMask>>>,
}

impl Ctx<'_> {
    fn experiments(&self, name: &str) -> Result<Arc<ExperimentList>> {
        if let Some(l) = self.expts.lock().map_err(|_| Error::msg("expt cache poisoned"))?.get(name) {
            return Ok(l.clone());
        }
        let l = Arc::new(ExperimentList::read(name)?);
        self.expts.lock().map_err(|_| Error::msg("expt cache poisoned"))?.insert(name.to_string(), l.clone());
        Ok(l)
    }

    fn mask(&self, dims: &[[usize; 2]]) -> Result<Option<Arc<PixelMask>>> {
        let Some(path) = &self.cfg.roi.hotpixel_mask else { return Ok(None) };
        let mut g = self.mask.lock().map_err(|_| Error::msg("mask cache poisoned"))?;
        if g.is_none() {
            *g = Some(Arc::new(PixelMask::read(path, dims)?));
        }
        let m = g.as_ref().cloned().ok_or_else(|| Error::msg("mask cache empty"))?;
        if m.panels.len() != dims.len() || dims.iter().any(|d| (m.shape.1, m.shape.0) != (d[0], d[1])) {
            return Err(Error::file(path, "mask does not match this shot's detector"));
        }
        Ok(Some(m))
    }
}

/// The gathered ROIs of one shot, or why not.
type ShotResult = std::result::Result<(ShotData, Vec<Pred>), (&'static str, String)>;

fn gather_shot(ctx: &Ctx, r: &ShotRef, preds: &[Pred]) -> ShotResult {
    let f = |why: &'static str| move |e: Error| (why, e.to_string());
    let list = ctx.experiments(&r.exp_name).map_err(f("bad_input"))?;
    let exp = list.get(r.exp_idx).map_err(f("bad_input"))?;
    let det = exp.detector().map_err(f("bad_input"))?;
    let dims: Vec<[usize; 2]> = det.panels.iter().map(|p| p.image_size).collect();
    let mask = ctx.mask(&dims).map_err(f("bad_mask"))?;
    let loc = exp.image_location().map_err(f("bad_input"))?;
    let src = open_image_source(&loc.path).map_err(f("image_unreadable"))?;
    let image = src.read_image(loc.index).map_err(f("image_unreadable"))?;
    // The predictions as a reflection table centred on the model centroids.
    let mut t = ReflectionTable::new(preds.len());
    let ins =
        |t: &mut ReflectionTable, n: &str, c: Column| t.insert(n, c).map(|_| ()).map_err(f("bad_input"));
    ins(&mut t, "panel", Column::Size(preds.iter().map(|p| p.panel as u64).collect()))?;
    ins(&mut t, "xyzcal.px", Column::Vec3(preds.iter().map(|p| p.xyz).collect()))?;
    ins(&mut t, "miller_index", Column::Miller(preds.iter().map(|p| p.hkl).collect()))?;
    ins(&mut t, "rlp", Column::Vec3(preds.iter().map(|p| p.rlp).collect()))?;
    let mut o = crate::stage1::shot::gather_options(ctx.cfg);
    o.centroid_cal = true;
    let d = gather_from_image(exp, &t, &image, mask.as_deref(), &o).map_err(f("gather_failed"))?;
    if d.rois.is_empty() {
        let why: Vec<String> = d.rejected.iter().map(|(k, n)| format!("{k} {n}")).collect();
        return Err((
            "no_rois",
            format!("no ROI kept of {} predictions (rejected: {})", preds.len(), why.join(", ")),
        ));
    }
    let kept = d.roi_refl.iter().map(|&i| preds[i]).collect();
    Ok((d, kept))
}

/// `pixels` rows of one shot.
fn append_pixels(
    b: &mut BatchBuilder,
    shot_id: i64,
    d: &ShotData,
    kept: &[Pred],
    asu: &ReciprocalAsu,
) -> Result<()> {
    let sigma_readout = d.sigma_r2.sqrt() as f32;
    let mut start = 0usize;
    for (r, (roi, p)) in d.rois.iter().zip(kept).enumerate() {
        let n = (roi.x1 - roi.x0) * (roi.y1 - roi.y0);
        let range = start..start + n;
        start += n;
        let plane = d.planes[r];
        let data: Vec<f32> = d.data[range.clone()].iter().map(|&v| v as f32).collect();
        let bg: Vec<f32> = d.background[range.clone()].iter().map(|&v| v as f32).collect();
        let tr: Vec<u8> = d.trusted[range.clone()].iter().map(|&t| u8::from(t)).collect();
        let mut cells: Vec<(&str, crate::store::Value)> = vec![
            ("shot_id", shot_id.into()),
            ("roi_id", (r as i32).into()),
            ("refl_id", p.pred_id.into()),
            ("panel", (roi.panel as u32).into()),
            ("bbox", [roi.x0 as i32, roi.x1 as i32, roi.y0 as i32, roi.y1 as i32].into()),
            ("hkl", p.hkl.into()),
            ("hkl_asu", asu_key(asu, &p.hkl).into()),
            ("sigma_readout", sigma_readout.into()),
            ("tilt_abc", [plane.a, plane.b, plane.c].into()),
            ("data", data.into()),
            ("background", bg.into()),
            ("trusted", tr.into()),
        ];
        if p.rlp.iter().all(|v| v.is_finite()) {
            cells.push(("rlp", p.rlp.into()));
        }
        if let Some(fr) = &d.freq {
            let v: Vec<u8> = fr[range].iter().map(|&x| x.clamp(0.0, 255.0) as u8).collect();
            cells.push(("freq", v.into()));
        }
        b.append(&cells)?;
    }
    Ok(())
}

/// The rows of `batches` whose `shot_id` is in `ids`, as one batch.
fn rows_of(table: Table, batches: &[RecordBatch], ids: &BTreeSet<i64>) -> Result<RecordBatch> {
    let schema = table.arrow_schema();
    let mut parts = Vec::new();
    for b in batches {
        let Some(c) = b.column_by_name("shot_id") else { continue };
        let sid =
            c.as_any().downcast_ref::<Int64Array>().ok_or_else(|| Error::msg("shot_id is not int64"))?;
        let keep: BooleanArray =
            (0..b.num_rows()).map(|i| Some(sid.is_valid(i) && ids.contains(&sid.value(i)))).collect();
        let f = filter_record_batch(b, &keep).map_err(|e| Error::msg(format!("{table:?}: {e}")))?;
        if f.num_rows() > 0 {
            parts.push(f);
        }
    }
    concat_batches(&schema, &parts).map_err(|e| Error::msg(format!("{table:?}: {e}")))
}

/// Run the pre-import (every rank calls it; see the module doc).
pub fn run(cfg: &EnsHopperConfig, o: &PreimportOptions, comm: &dyn Comm) -> Result<PreimportSummary> {
    let t0 = Instant::now();
    let rank = comm.rank();
    let (in_dir, note) = resolve_input(&o.input)?;
    if let (Some(n), true) = (note, comm.is_root()) {
        eprintln!("{n}");
    }
    if std::fs::canonicalize(&in_dir).ok() == std::fs::canonicalize(&o.outdir).ok() {
        return Err(Error::param("--outdir", "must differ from the input store"));
    }
    let input = Store::open(&in_dir)?;
    let preds = read_predictions(&input)?;
    if preds.is_empty() {
        return Err(Error::file(&in_dir, "has no predictions: run `diffbragg integrate` into it first"));
    }
    let ids: BTreeSet<i64> = preds.keys().copied().collect();
    let refs = read_shot_refs(&input, &ids)?;
    let sg = match &cfg.space_group {
        Some(s) => SpaceGroup::parse(s).map_err(|e| Error::param("space_group", e.to_string()))?,
        None => {
            let r = refs
                .values()
                .next()
                .ok_or_else(|| Error::file(&in_dir, "no stage-1 rows for the predicted shots"))?;
            let l = ExperimentList::read_one(&r.exp_name, r.exp_idx)?;
            SpaceGroup::from_hall(&l.get(0)?.crystal()?.space_group_hall)?
        }
    };
    if rank == 0 {
        let store = Store::create(&o.outdir, 0, true)?;
        let (fin, dropped) = commit::recover(store.root())?;
        if fin + dropped > 0 {
            eprintln!("pre-import: recovered {fin} committed and dropped {dropped} unfinished batch(es) of an interrupted run");
        }
    }
    comm.barrier();
    let out = Store::create(&o.outdir, rank as u32, rank == 0)?;
    let done = done_ids(&out)?;
    let mut summary = PreimportSummary { n_listed: ids.len(), ..Default::default() };
    // Shots without a stage-1 row become failures; the rest are shared out.
    let todo: Vec<i64> = ids.iter().copied().filter(|s| !done.contains(s)).collect();
    summary.n_skipped_done = ids.len() - todo.len();
    let costs: Vec<u64> = todo.iter().map(|s| preds[s].len() as u64).collect();
    let mine_idx = longest_first(&costs, comm.size()).swap_remove(rank.min(comm.size() - 1));
    let mine: Vec<i64> = mine_idx.into_iter().map(|i| todo[i]).collect();
    if comm.is_root() {
        eprintln!(
            "pre-import {}: {} predicted shot(s) in {}, {} already done, {} for this rank; space group {}",
            comm.describe(),
            ids.len(),
            in_dir.display(),
            summary.n_skipped_done,
            mine.len(),
            sg.hm()
        );
    }
    let mine_set: BTreeSet<i64> = mine.iter().copied().collect();
    // The rows copied with each shot (small tables, read once).
    let copies: Vec<(Table, Vec<RecordBatch>)> = [Table::ShotParams, Table::Spectra, Table::Experiments]
        .into_iter()
        .map(|t| input.read(t, Some(&mine_set)).map(|b| (t, b)))
        .collect::<Result<_>>()?;
    let ctx =
        Ctx { cfg, asu: ReciprocalAsu::new(&sg), expts: Mutex::new(HashMap::new()), mask: Mutex::new(None) };
    let show_bar = o.progress.unwrap_or_else(|| std::io::stderr().is_terminal()) && rank == 0;
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
    let mut last_log = Instant::now();
    for (seq, chunk) in mine.chunks(o.flush_every.max(1)).enumerate() {
        let results: Vec<(i64, ShotResult)> = chunk
            .par_iter()
            .map(|sid| {
                let res = match refs.get(sid) {
                    Some(r) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        gather_shot(&ctx, r, &preds[sid])
                    }))
                    .unwrap_or_else(|_| Err(("panic", "internal error while gathering".into()))),
                    None => Err(("no_stage1_row", "no stage-1 shot_params row for this shot".into())),
                };
                (*sid, res)
            })
            .collect();
        let mut pix = BatchBuilder::new(Table::Pixels);
        let mut fails = BatchBuilder::new(Table::Failures);
        let mut ok_ids = BTreeSet::new();
        for (sid, res) in &results {
            match res {
                Ok((d, kept)) => {
                    append_pixels(&mut pix, *sid, d, kept, &ctx.asu)?;
                    ok_ids.insert(*sid);
                    summary.n_imported += 1;
                    summary.n_rois += d.rois.len();
                    summary.n_pixels += d.pixels.len() as u64;
                }
                Err((why, msg)) => {
                    let mut row = FailureRow::now(*sid, STAGE, why, msg.clone());
                    if let Some(r) = refs.get(sid) {
                        row.exp_name = Some(r.exp_name.clone());
                        row.exp_idx = Some(r.exp_idx as i32);
                        eprintln!("shot {sid} ({} #{}): {why}: {msg}", r.exp_name, r.exp_idx);
                    } else {
                        eprintln!("shot {sid}: {why}: {msg}");
                    }
                    fails.append_row(&row)?;
                    summary.n_failed += 1;
                }
            }
        }
        let mut batches = vec![(Table::Pixels, pix.finish()?), (Table::Failures, fails.finish()?)];
        for (t, b) in &copies {
            batches.push((*t, rows_of(*t, b, &ok_ids)?));
        }
        commit::commit(out.root(), rank as u32, seq as u64, &batches)?;
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
            b.set_message(format!("{} failed", summary.n_failed));
        } else if last_log.elapsed().as_secs() >= 30 {
            eprintln!(
                "pre-import rank {rank}: {}/{} shots ({} failed), {:.0} s",
                summary.n_imported + summary.n_failed,
                mine.len(),
                summary.n_failed,
                t0.elapsed().as_secs_f64()
            );
            last_log = Instant::now();
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    comm.barrier();
    if rank == 0 {
        out.publish()?;
        let store = Store::open(&o.outdir)?;
        let counts = data::shot_counts(&store)?;
        let total: u64 = counts.iter().map(|c| c.n_pixels).sum();
        if total > 0 {
            summary.bytes_per_pixel_disk = data::bytes_on_disk(&store)? as f64 / total as f64;
            if let Some(first) = counts.first() {
                let one: BTreeSet<i64> = [first.shot_id].into();
                let px = data::load_pixels(&store, &one)?;
                if let Some(sp) = px.get(&first.shot_id) {
                    summary.bytes_per_pixel_memory = sp.heap_bytes() as f64 / sp.n_pixels().max(1) as f64;
                }
            }
        }
    }
    summary.wall_s = t0.elapsed().as_secs_f64();
    Ok(summary)
}
