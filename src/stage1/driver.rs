//! The stage-1 run: the shot list, scheduling across ranks and threads,
//! resumable output, progress.
//!
//! * Shots: the lines of `exp_ref_spec_file`, after `skip`, `first_n` and
//!   `max_process`. A shot already present (by `shot_id`, with this stage) in
//!   `shot_params` or `failures` is skipped, so a rerun finishes what is left.
//!   (\[TRAP\] of fwd-model §4.9 avoided: diffBragg's `ignore_existing` looks for
//!   file names it never writes; here the tables are the record.)
//! * Ranks: shots are scheduled longest-first by reflection count
//!   ([`crate::dist::longest_first`]), so every rank computes the same split
//!   without talking. Rank 0 recovers interrupted flushes before anyone starts
//!   and publishes the catalog at the end.
//! * Threads: shots run in parallel on rayon's pool (and the kernel's pixel loop
//!   shares that pool). Finished shots are committed together every
//!   `flush_every` shots (and at the end) by [`super::commit`], one shard per
//!   table, all-or-nothing.
//! * A shot that fails (bad file, no ROI, a panic) becomes one `failures` row;
//!   the run goes on.
//! * Progress: a bar on a terminal, else a log line every 30 s.
//! * Kernel: every evaluation runs on the run's [`Backend`] ([`run_with_backend`];
//!   [`run`] takes `--device auto`), whose name each `shot_params` row records.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use rayon::prelude::*;

use super::commit;
use super::shot::{process_shot, RunContext, ShotFailure, ShotOutput, ShotTask};
use crate::config::HopperConfig;
use crate::dist::{longest_first, Comm};
use crate::error::{Error, Result};
use crate::gpu::{select, Backend, DeviceChoice};
use crate::io::spec_file::{read_spec_file, SpecEntry};
use crate::kernel::FhklTable;
use crate::report::residuals::ResidualRow;
use crate::store::{BatchBuilder, FailureRow, SpectrumRow, Store, Table, TraceRow, Value};

/// Run settings that are not diffBragg parameters.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Commit every this many finished shots.
    pub flush_every: usize,
    /// Draw a progress bar (default: when stderr is a terminal).
    pub progress: Option<bool>,
    /// Print per-shot lines.
    pub verbose: bool,
    /// One shot at a time (the kernel's pixel loop still uses every thread)
    /// instead of several shots in parallel.
    pub serial_shots: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { flush_every: 8, progress: None, verbose: false, serial_shots: false }
    }
}

/// Counts of a run (this rank).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    pub n_listed: usize,
    pub n_skipped_done: usize,
    pub n_refined: usize,
    pub n_failed: usize,
    pub wall_s: f64,
}

/// Structure factors of the run (fwd-model §2.5): the MTZ's amplitudes expanded
/// to P1 (and to the primitive basis for centred groups), or a flat `default_F`.
pub fn structure_factors(cfg: &HopperConfig) -> Result<FhklTable> {
    let sf = &cfg.simulator.structure_factors;
    let default_f = sf.default_f;
    let Some(path) = &sf.mtz_name else {
        if !(default_f > 0.0) {
            return Err(Error::param(
                "simulator.structure_factors.default_F",
                "is 0 and no mtz_name is given: every structure factor would be 0; set default_F (e.g. 1e3) or mtz_name",
            ));
        }
        return FhklTable::new(&[], &[], default_f, false);
    };
    fhkl_from_mtz(path, sf.mtz_column.as_deref().unwrap_or("F"), default_f)
}

/// |F| of an MTZ column group on the P1 grid (primitive basis for centred groups).
pub fn fhkl_from_mtz(path: &Path, spec: &str, default_f: f64) -> Result<FhklTable> {
    let mtz = crate::io::mtz::Mtz::read(path)?;
    let amps = mtz.amplitudes(spec).map_err(|e| Error::file(path, e.to_string()))?;
    let sg = mtz.space_group.clone().ok_or_else(|| Error::file(path, "MTZ without a space group"))?;
    let p1 = crate::symmetry::miller::expand_to_p1(&sg, &amps.hkl, amps.anomalous);
    let prim =
        if sg.centring().is_some_and(|c| c != 'P') { Some(sg.change_of_basis_to_primitive()?) } else { None };
    let mut hkl = Vec::with_capacity(p1.len());
    let mut f = Vec::with_capacity(p1.len());
    let mut seen = std::collections::HashMap::new();
    for (h, src) in p1 {
        let h = match &prim {
            Some(p) => match p.to_primitive_hkl(&h) {
                Some(hp) => hp,
                None => continue,
            },
            None => h,
        };
        if seen.insert(h, ()).is_none() {
            hkl.push(h);
            f.push(amps.f[src]);
        }
    }
    FhklTable::new(&hkl, &f, default_f, !amps.anomalous)
}

/// Rows with id == idx in a reflection file, counted without decoding columns.
fn count_rows(path: &Path, idx: usize) -> Result<usize> {
    let bytes = std::fs::read(path).map_err(|e| crate::error::io_err(path, e))?;
    if let Ok(raw) = crate::io::dials_refl::scan_refl(&bytes, path) {
        if let Some(c) = raw.columns.iter().find(|c| c.name == "id" && c.type_name == "int") {
            return Ok(c
                .blob
                .chunks_exact(4)
                .filter(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) == idx as i32)
                .count());
        }
        return Ok(raw.nrows as usize);
    }
    let t = crate::io::dials_refl::read_refl(path)?;
    Ok(super::shot::shot_reflections(&t, idx)?.nrows())
}

/// Shot ids already recorded by `stage` in `table`.
fn done_ids(store: &Store, table: Table, stage: &str) -> Result<BTreeSet<i64>> {
    let mut ids = BTreeSet::new();
    for b in store.read_columns(table, &["shot_id", "stage"], None)? {
        let sid = b.column(0).as_primitive::<Int64Type>();
        let st = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            if st.value(i) == stage && !sid.is_null(i) {
                ids.insert(sid.value(i));
            }
        }
    }
    Ok(ids)
}

fn residual_cells(r: &ResidualRow) -> Vec<(&'static str, Value<'_>)> {
    vec![
        ("shot_id", r.shot_id.into()),
        ("refl_id", r.refl_id.into()),
        ("model", r.model.as_str().into()),
        ("panel", r.panel.into()),
        ("miller_index", r.hkl.into()),
        ("d", r.d.into()),
        ("two_theta_obs_deg", r.two_theta_obs_deg.into()),
        ("two_theta_cal_deg", r.two_theta_cal_deg.into()),
        ("obs_x_px", r.obs_px[0].into()),
        ("obs_y_px", r.obs_px[1].into()),
        ("cal_x_px", r.cal_px[0].into()),
        ("cal_y_px", r.cal_px[1].into()),
        ("obs_x_mm", r.obs_mm[0].into()),
        ("obs_y_mm", r.obs_mm[1].into()),
        ("cal_x_mm", r.cal_mm[0].into()),
        ("cal_y_mm", r.cal_mm[1].into()),
        ("radial_mm", r.radial_mm.into()),
        ("transverse_mm", r.transverse_mm.into()),
        ("delpsi_deg", r.delpsi_deg.into()),
        ("obs_var_mm2", if r.obs_var_mm2.is_finite() { Value::Float(r.obs_var_mm2) } else { Value::Null }),
        ("wavelength", r.wavelength.into()),
    ]
}

type Outcome = (ShotTask, std::result::Result<ShotOutput, ShotFailure>);

/// Rows waiting for the next commit.
struct Pending {
    tag: String,
    rows: Vec<Outcome>,
}

impl Pending {
    fn batches(&self) -> Result<Vec<(Table, RecordBatch)>> {
        let mut sp = BatchBuilder::new(Table::ShotParams);
        let mut tr = BatchBuilder::new(Table::Traces);
        let mut spc = BatchBuilder::new(Table::Spectra);
        let mut ex = BatchBuilder::new(Table::Experiments);
        let mut rs = BatchBuilder::new(Table::Residuals);
        let mut fa = BatchBuilder::new(Table::Failures);
        for (task, res) in &self.rows {
            match res {
                Ok(o) => {
                    sp.append(&o.params_row)?;
                    for t in &o.traces {
                        tr.append_row(&TraceRow {
                            shot_id: Some(o.shot_id),
                            stage: self.tag.clone(),
                            eval: t.eval as i32,
                            f: t.f,
                            sigz: Some(t.sigz),
                            grad_norm: Some(t.grad_norm),
                            time: t.time,
                        })?;
                    }
                    for r in SpectrumRow::from_spectrum(o.shot_id, &o.spectrum)? {
                        spc.append_row(&r)?;
                    }
                    ex.append_row(&o.experiment_row)?;
                    for r in &o.residuals {
                        rs.append(&residual_cells(r))?;
                    }
                }
                Err(f) => {
                    let mut row = FailureRow::now(task.shot_id, &self.tag, f.reason, f.message.clone());
                    row.exp_name = Some(task.exp_name.clone());
                    row.exp_idx = Some(task.entry.exp_idx as i32);
                    fa.append_row(&row)?;
                }
            }
        }
        Ok(vec![
            (Table::Experiments, ex.finish()?),
            (Table::Spectra, spc.finish()?),
            (Table::Traces, tr.finish()?),
            (Table::Residuals, rs.finish()?),
            (Table::ShotParams, sp.finish()?),
            (Table::Failures, fa.finish()?),
        ])
    }
}

/// The tasks of the run, in spec-file order (shot ids computed, costs unknown).
pub fn list_tasks(cfg: &HopperConfig) -> Result<Vec<ShotTask>> {
    let spec = cfg.exp_ref_spec_file.as_ref().ok_or_else(|| {
        Error::param("exp_ref_spec_file", "is required: the list of `expt refl` lines to refine")
    })?;
    let mut entries: Vec<SpecEntry> = read_spec_file(spec)?;
    if let Some(s) = cfg.skip {
        entries = entries.into_iter().skip(s).collect();
    }
    if let Some(n) = cfg.first_n {
        entries.truncate(n);
    }
    if cfg.max_process >= 0 {
        entries.truncate(cfg.max_process as usize);
    }
    entries
        .into_iter()
        .map(|e| {
            let (sid, canon) = crate::store::shot_id::shot_id(&e.expt, e.exp_idx)?;
            Ok(ShotTask { entry: e, shot_id: sid, exp_name: canon.to_string_lossy().into_owned(), n_refl: 0 })
        })
        .collect()
}

/// Run stage 1 on this rank with `--device auto` (CUDA when usable, else the
/// CPU; the choice is logged).
pub fn run(cfg: HopperConfig, comm: &dyn Comm, opts: &RunOptions) -> Result<RunSummary> {
    let backend = select(DeviceChoice::Auto, comm)?;
    run_with_backend(cfg, comm, opts, backend.into())
}

/// Run stage 1 on this rank, every kernel evaluation on `backend`.
pub fn run_with_backend(
    cfg: HopperConfig,
    comm: &dyn Comm,
    opts: &RunOptions,
    backend: std::sync::Arc<dyn Backend>,
) -> Result<RunSummary> {
    let t0 = Instant::now();
    let rank = comm.rank();
    let outdir: PathBuf = cfg
        .outdir
        .clone()
        .ok_or_else(|| Error::param("outdir", "is required: the folder stage 1 writes into"))?;
    let mut tasks = list_tasks(&cfg)?;
    let fhkl = structure_factors(&cfg)?;
    let space_group = cfg.space_group.as_deref().map(crate::symmetry::SpaceGroup::parse).transpose()?;
    let reference_detector = match &cfg.refiner.reference_geom {
        Some(p) => {
            let l = crate::experiment::ExperimentList::read(p)?;
            Some(
                l.experiments
                    .first()
                    .and_then(|e| e.detector.clone())
                    .ok_or_else(|| Error::file(p, "refiner.reference_geom has no detector"))?,
            )
        }
        None => None,
    };
    // Rank 0 prepares the store and recovers interrupted flushes; then everyone opens it.
    if rank == 0 {
        let store = Store::create(&outdir, 0, true)?;
        let (fin, dropped) = commit::recover(store.root())?;
        if fin + dropped > 0 {
            eprintln!("stage 1: recovered {fin} committed and dropped {dropped} unfinished output batch(es) of an interrupted run");
        }
        let phil = crate::config::render::show(&cfg, &[], true);
        crate::store::atomic::write_replace(&store.root().join("diff.phil"), |w| {
            use std::io::Write;
            w.write_all(phil.as_bytes()).map_err(|e| crate::error::io_err(&outdir, e))
        })?;
    }
    comm.barrier();
    let store = Store::create(&outdir, rank as u32, rank == 0)?;
    let root = store.root().to_path_buf();
    let tag = "stage1".to_string();
    let mut done = done_ids(&store, Table::ShotParams, &tag)?;
    done.extend(done_ids(&store, Table::Failures, &tag)?);

    // Costs: rank 0 counts reflections per shot, everyone gets the same numbers.
    let n_all = tasks.len();
    let mut cost_bytes = Vec::new();
    if rank == 0 {
        let mut cache: BTreeMap<(PathBuf, usize), usize> = BTreeMap::new();
        for t in &tasks {
            let key = (t.entry.refl.clone(), t.entry.exp_idx);
            let n = match cache.get(&key) {
                Some(&n) => n,
                None => {
                    let n = count_rows(&t.entry.refl, t.entry.exp_idx).unwrap_or(0);
                    cache.insert(key, n);
                    n
                }
            };
            cost_bytes.extend((n as u64).to_le_bytes());
        }
    }
    comm.broadcast_bytes(0, &mut cost_bytes);
    for (t, c) in tasks.iter_mut().zip(cost_bytes.chunks_exact(8)) {
        t.n_refl = u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as usize;
    }
    let todo: Vec<ShotTask> = tasks.into_iter().filter(|t| !done.contains(&t.shot_id)).collect();
    let n_skipped = n_all - todo.len();
    let costs: Vec<u64> = todo.iter().map(|t| t.n_refl as u64).collect();
    let mine_idx = longest_first(&costs, comm.size()).swap_remove(rank.min(comm.size() - 1));
    let mine: Vec<ShotTask> = mine_idx.into_iter().map(|i| todo[i].clone()).collect();
    let ctx = RunContext::new(cfg, fhkl, space_group, reference_detector, root.clone()).with_backend(backend);

    let show_bar = opts.progress.unwrap_or_else(|| std::io::stderr().is_terminal()) && rank == 0;
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
    if rank == 0 || opts.verbose {
        eprintln!(
            "stage 1 {}: {} shot(s) listed, {n_skipped} already done, {} for this rank; kernel: {}",
            comm.describe(),
            n_all,
            mine.len(),
            ctx.backend.describe()
        );
    }
    let mut summary = RunSummary { n_listed: n_all, n_skipped_done: n_skipped, ..Default::default() };
    let (tx, rx) = mpsc::channel::<Outcome>();
    let mut seq = 0u64;
    let mut commit_err: Option<Error> = None;
    std::thread::scope(|s| {
        let ctx = &ctx;
        let mine = &mine;
        let serial = opts.serial_shots;
        s.spawn(move || {
            let one = |tx: &mut mpsc::Sender<Outcome>, task: &ShotTask| {
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process_shot(ctx, task)))
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(ShotFailure { reason: "panic", message: format!("internal error: {msg}") })
                    });
                let _ = tx.send((task.clone(), res));
            };
            if serial {
                let mut tx = tx;
                for task in mine.iter() {
                    one(&mut tx, task);
                }
            } else {
                mine.par_iter().for_each_with(tx, one);
            }
        });
        let mut pending = Pending { tag: tag.clone(), rows: Vec::new() };
        let mut last_log = Instant::now();
        let mut n_done = 0usize;
        let flush = |pending: &mut Pending, seq: &mut u64| -> Result<()> {
            if pending.rows.is_empty() {
                return Ok(());
            }
            let b = pending.batches()?;
            commit::commit(&root, rank as u32, *seq, &b)?;
            *seq += 1;
            pending.rows.clear();
            Ok(())
        };
        for (task, res) in rx {
            n_done += 1;
            match &res {
                Ok(o) => {
                    summary.n_refined += 1;
                    if opts.verbose {
                        eprintln!(
                            "shot {:016x}: {} ROIs, {} px, {} evals, {} in {:.1} s",
                            o.shot_id,
                            o.n_rois,
                            o.n_pixels,
                            o.traces.len(),
                            o.status,
                            o.wall
                        );
                    }
                }
                Err(f) => {
                    summary.n_failed += 1;
                    eprintln!(
                        "shot {} ({}, experiment {}): {}: {}",
                        task.shot_id,
                        task.entry.expt.display(),
                        task.entry.exp_idx,
                        f.reason,
                        f.message
                    );
                }
            }
            pending.rows.push((task, res));
            if let Some(b) = &bar {
                b.inc(1);
                b.set_message(format!("{} failed", summary.n_failed));
            } else if last_log.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "stage 1 rank {rank}: {n_done}/{} shots ({} failed), {:.0} s",
                    mine.len(),
                    summary.n_failed,
                    t0.elapsed().as_secs_f64()
                );
                last_log = Instant::now();
            }
            if pending.rows.len() >= opts.flush_every.max(1) && commit_err.is_none() {
                if let Err(e) = flush(&mut pending, &mut seq) {
                    commit_err = Some(e);
                }
            }
        }
        if commit_err.is_none() {
            if let Err(e) = flush(&mut pending, &mut seq) {
                commit_err = Some(e);
            }
        }
    });
    if let Some(b) = &bar {
        b.finish();
    }
    if let Some(e) = commit_err {
        return Err(e);
    }
    comm.barrier();
    if rank == 0 {
        store.publish()?;
    }
    summary.wall_s = t0.elapsed().as_secs_f64();
    Ok(summary)
}
