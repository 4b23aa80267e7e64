//! Stage 2 (`diffbragg ens-hopper`): structure factors refined globally
//! against every ROI pixel of every shot, with each shot's spectrum.
//!
//! # Before: the pre-import (`--preImport`, [`preimport`](mod@preimport))
//! reads the ROI pixels of the integrate store's predictions from the images
//! into a new store (`pixels` plus the shots' stage-1 rows); the run below
//! reads only tables.
//!
//! # What runs
//! 1. Shots: those with rows in `pixels` and a stage-1 `shot_params` row
//!    (`--stage1Tag`, default `stage1`), in shot_id order, after `skip`,
//!    `first_n`, `max_process` and `--halfSet`; assigned to ranks
//!    longest-first by pixel count ([`crate::dist::longest_first`]).
//! 2. Each rank streams its shots' pixels ([`data`]) and builds their forward
//!    models ([`shots`]). The structure factors to refine are the anomalous-ASU
//!    indices the ROIs are centred on, per energy channel ([`params`]); the
//!    kernel's |F|² table starts from the MTZ or `default_F` ([`sf`]).
//! 3. One replicated L-BFGS-B on every rank: each evaluation sums the rank's
//!    shots ([`target`]), then one `MPI_Allreduce(SUM)` over an f64 buffer of
//!    [f, sigZ, ∂f/∂(per-shot), ∂f/∂s per kernel slot] gives every rank the
//!    same f and gradient; restraints ([`restraints`]) are added on every rank.
//!    A cheap check after each evaluation confirms that the ranks still hold
//!    bitwise the same x.
//! 4. Every `--saveFreq` evaluations: a checkpoint ([`checkpoint`]) and its
//!    outputs ([`output`]); at the end the final outputs.
//!
//! # Decisions on the reference's traps (each also documented where it is coded)
//! * T2.1 `max_process = -1` keeps every shot. T2.2/T2.3: pixels and spectra
//!   come from tables keyed by shot_id, so nothing collides and no spectrum
//!   is lost.
//! * T3.1 per-shot G everywhere ([`target`]). T3.2 only touched indices vary
//!   ([`params`]). T3.3 per-shot restraints: ens.hopper adds none whatever
//!   `use_restraints` says; we do the same and say so in the log.
//! * T3.4 σ from the Fisher curvature of the summed likelihood ([`target`]);
//!   zero starting intensities are filled from their shell ([`sf`]).
//! * T3.5/T3.7 per-shot simulator settings from each shot's stage-1 row
//!   ([`shots`]). T3.6 no spectrum is replaced. T3.8 centred lattices: the
//!   table is over primitive indices with ASU ids of their conventional
//!   indices ([`sf`]). T3.9 one f64 allreduce per evaluation.
//!
//! # Kernel backend
//! `--device cpu|cuda|auto` ([`run_with_backend`]; [`run`] and [`prepare`]
//! take `auto`): every kernel evaluation runs on it, several shots per launch
//! with pixels resident on a GPU ([`target`]); each `shot_params` row and the
//! summary record its name.
//!
//! # Outputs (all in the store's catalog, rank 0 unless said)
//! `fhkl` rows per checkpoint and final (tag = `--saveTag`), `traces` (shot_id
//! null, stage = tag), `shot_params` (stage = tag, each rank its shots), MTZs
//! `OUT/optimized_channel{c}[_iter{N}].mtz`, checkpoints in `OUT/checkpoints/`,
//! and `OUT/<tag>_summary.json`.

// `!(x > 0.0)` is deliberate: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod checkpoint;
pub mod data;
pub mod output;
pub mod params;
pub mod preimport;
pub mod report;
pub mod restraints;
pub mod sf;
pub mod shots;
pub mod synth;
pub mod target;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::config::EnsHopperConfig;
use crate::crystal::UnitCell;
use crate::dist::{longest_first, Comm};
use crate::error::{io_err, Error, Result};
use crate::experiment::ExperimentList;
use crate::gpu::{select, Backend, DeviceChoice};
use crate::refine::lbfgsb::{
    minimize_resumable, Control, Event, Options, Progress, State, StateView, Status,
};
use crate::store::{BatchBuilder, FailureRow, Store, Table};
use crate::symmetry::{Miller, SpaceGroup};

use checkpoint::{Checkpoint, JournalEntry, TracePoint};
use params::{FhklLayout, Observation, ShotParams};
use target::{LocalShot, Problem};

/// Which half of the shots to refine (for CC½): shots at even or odd
/// positions of the selected, shot_id-sorted list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    Even,
    Odd,
}

/// Options of one run (the command line's; the phil is in the config).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The store holding pixels, spectra and stage-1 shot_params.
    pub store_dir: PathBuf,
    /// Where MTZs, checkpoints and the summary go.
    pub outdir: PathBuf,
    /// Run tag (`--saveTag`): the `stage` of the outputs.
    pub tag: String,
    /// `stage` of the shot_params rows to start from.
    pub stage1_tag: String,
    /// Checkpoint every this many evaluations.
    pub save_freq: Option<usize>,
    /// MTZ filter on var(s) (the reference's `--maxSigma`).
    pub max_sigma: f64,
    /// Continue from the newest checkpoint.
    pub restart: bool,
    /// Unit cell of the MTZs (default: mean of the shots' cells).
    pub cell: Option<[f64; 6]>,
    /// Also write per-shot `shot_params` rows at every checkpoint (iteration = N).
    pub save_all: bool,
    pub half: Option<Half>,
    /// Stop after this many evaluations.
    pub max_evals: Option<usize>,
    /// Shots evaluated at once per rank (default: rayon's thread count).
    pub threads: Option<usize>,
    /// No per-evaluation log lines.
    pub quiet: bool,
}

impl RunOptions {
    pub fn new(store_dir: impl Into<PathBuf>, outdir: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            store_dir: store_dir.into(),
            outdir: outdir.into(),
            tag: "stage2".into(),
            stage1_tag: "stage1".into(),
            save_freq: None,
            max_sigma: 1e20,
            restart: false,
            cell: None,
            save_all: false,
            half: None,
            max_evals: None,
            threads: None,
            quiet: false,
        }
    }
}

/// What a run did (also written as `OUT/<tag>_summary.json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunSummary {
    pub tag: String,
    /// The kernel backend ([`Backend::name`]) and its description (rank 0's).
    pub backend: String,
    pub device: String,
    pub n_ranks: usize,
    pub threads_per_rank: usize,
    pub n_shots: usize,
    pub n_failed_shots: usize,
    pub n_pixels: u64,
    pub n_trusted_pixels: u64,
    pub n_fhkl_params: usize,
    pub n_shot_params: usize,
    pub n_channels: usize,
    pub n_eval: usize,
    pub n_iter: usize,
    pub status: String,
    pub message: String,
    pub f: f64,
    pub sigz: f64,
    pub resumed_from_eval: Option<u64>,
    /// Heap bytes of the pixel data per pixel (all ranks).
    pub bytes_per_pixel_memory: f64,
    /// `pixels` shards on disk per pixel (the whole table).
    pub bytes_per_pixel_disk: f64,
    /// Mean wall seconds per evaluation (this run's evaluations only).
    pub seconds_per_eval: f64,
    /// Wall seconds per evaluation × ranks / shots: the cost of one shot's
    /// evaluation on one rank with `threads_per_rank` threads.
    pub seconds_per_shot_eval: f64,
    pub filled_missing_intensities: usize,
    pub mtz_files: Vec<PathBuf>,
}

/// The `--preImport` step: a new store at `opts.outdir` with the `pixels`
/// table read from the images (stage 1's ROI code) for the shots of the
/// integrate store `opts.store_dir`, plus copies of their stage-1 rows; see
/// [`preimport`](mod@preimport). `diffbragg ens-hopper --preImport` calls it.
pub fn preimport(cfg: &EnsHopperConfig, opts: &RunOptions, comm: &dyn Comm) -> Result<preimport::Summary> {
    preimport::run(cfg, opts, comm)
}

fn log(comm: &dyn Comm, opts: &RunOptions, msg: &str) {
    if comm.is_root() && !opts.quiet {
        println!("RANK{:04} | {} | {msg}", comm.rank(), chrono::Local::now().format("%H:%M:%S"));
    }
}

/// `%.*g` as C prints it.
fn fmt_g(x: f64, p: usize) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let e = x.abs().log10().floor() as i32;
    if e < -4 || e >= p as i32 {
        format!("{:.*e}", p.saturating_sub(1), x)
    } else {
        let dec = (p as i32 - 1 - e).max(0) as usize;
        let s = format!("{x:.dec$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// Check the phil for what stage 2 can do.
fn check_config(cfg: &EnsHopperConfig) -> Result<()> {
    if cfg.fix.fhkl {
        return Err(Error::param("fix.Fhkl", "ens-hopper refines the structure factors: set fix.Fhkl=False"));
    }
    let unsupported = [
        ("fix.eta_abc", cfg.fix.eta_abc),
        ("fix.Ndef", cfg.fix.ndef),
        ("fix.detz_shift", cfg.fix.detz_shift),
        ("fix.spec", cfg.fix.spec),
        ("fix.perRoiScale", cfg.fix.per_roi_scale),
        ("fix.diffuse_sigma", cfg.fix.diffuse_sigma),
        ("fix.diffuse_gamma", cfg.fix.diffuse_gamma),
    ];
    for (name, fixed) in unsupported {
        if !fixed {
            return Err(Error::param(
                name,
                "ens-hopper refines G, RotXYZ, Nabc and the unit cell per shot; this parameter must stay fixed (True)",
            ));
        }
    }
    if cfg.use_diffuse_models {
        return Err(Error::param("use_diffuse_models", "the diffuse model is not part of the forward model"));
    }
    if let Some(b) = &cfg.fhkl_channel_bounds {
        if b.windows(2).any(|w| !(w[0] < w[1])) || b.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::param(
                "Fhkl_channel_bounds",
                format!("{b:?} must be positive and increasing (eV)"),
            ));
        }
    }
    Ok(())
}

fn space_group(cfg: &EnsHopperConfig, first_expt: Option<&(String, i32)>) -> Result<SpaceGroup> {
    if let Some(s) = &cfg.space_group {
        return SpaceGroup::parse(s).map_err(|e| Error::param("space_group", e.to_string()));
    }
    if let Some(p) = &cfg.simulator.structure_factors.mtz_name {
        if let Some(sg) = crate::io::mtz::Mtz::read(p)?.space_group {
            return Ok(sg);
        }
    }
    if let Some((name, idx)) = first_expt {
        let list = ExperimentList::read_one(name, (*idx).max(0) as usize)?;
        let hall = &list.get(0)?.crystal()?.space_group_hall;
        return SpaceGroup::from_hall(hall);
    }
    Err(Error::param("space_group", "not given, and neither the MTZ nor the experiments have one"))
}

/// Bytes ↔ shot list (id, pixels) for the broadcast.
fn encode_counts(v: &[(i64, u64)]) -> Vec<u8> {
    v.iter().flat_map(|(a, b)| a.to_le_bytes().into_iter().chain(b.to_le_bytes())).collect()
}

fn decode_counts(b: &[u8]) -> Vec<(i64, u64)> {
    b.chunks_exact(16)
        .map(|c| {
            (
                i64::from_le_bytes(c[..8].try_into().expect("8")),
                u64::from_le_bytes(c[8..].try_into().expect("8")),
            )
        })
        .collect()
}

/// Rank 0's decision (shot list or an error), on every rank.
fn broadcast_result(comm: &dyn Comm, local: Option<Result<Vec<u8>>>) -> Result<Vec<u8>> {
    let mut buf = match &local {
        Some(Ok(b)) => {
            let mut v = vec![1u8];
            v.extend_from_slice(b);
            v
        }
        Some(Err(e)) => {
            let mut v = vec![0u8];
            v.extend_from_slice(e.to_string().as_bytes());
            v
        }
        None => vec![],
    };
    comm.broadcast_bytes(0, &mut buf);
    match local {
        Some(Err(e)) => Err(e),
        _ if buf.first() == Some(&1) => Ok(buf[1..].to_vec()),
        _ => Err(Error::msg(String::from_utf8_lossy(buf.get(1..).unwrap_or(&[])).to_string())),
    }
}

/// Select the shots (rank 0), as (shot_id, pixel count) in shot_id order.
fn select_shots(store: &Store, cfg: &EnsHopperConfig, opts: &RunOptions) -> Result<Vec<(i64, u64)>> {
    let counts = data::shot_counts(store)?;
    if counts.is_empty() {
        return Err(Error::file(
            store.root(),
            "the `pixels` table is empty: run the pre-import first (ens-hopper --preImport)",
        ));
    }
    let ids: BTreeSet<i64> = counts.iter().map(|c| c.shot_id).collect();
    let stage1: BTreeSet<i64> =
        shots::read_stage1_rows(store, &opts.stage1_tag, Some(&ids))?.into_keys().collect();
    let mut v: Vec<(i64, u64)> =
        counts.iter().filter(|c| stage1.contains(&c.shot_id)).map(|c| (c.shot_id, c.n_pixels)).collect();
    if v.is_empty() {
        return Err(Error::file(
            store.root(),
            format!("no shot has both pixels and a `{}` shot_params row", opts.stage1_tag),
        ));
    }
    // skip, first_n, max_process (−1: all; the reference drops the last shot, T2.1).
    let skip = cfg.skip.unwrap_or(0).min(v.len());
    v.drain(..skip);
    if let Some(n) = cfg.first_n {
        v.truncate(n);
    }
    if cfg.max_process >= 0 {
        v.truncate(cfg.max_process as usize);
    }
    if let Some(h) = opts.half {
        let want = if h == Half::Even { 0 } else { 1 };
        v = v.into_iter().enumerate().filter(|(i, _)| i % 2 == want).map(|(_, x)| x).collect();
    }
    if v.is_empty() {
        return Err(Error::msg("no shots left after skip/first_n/max_process/--halfSet"));
    }
    Ok(v)
}

/// Fingerprint of the problem: what a checkpoint must match.
fn fingerprint(
    shots: &[(i64, u64)],
    layout: &FhklLayout,
    inits: &[f64],
    cfg: &EnsHopperConfig,
    n_per_shot: usize,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"diffbragg stage2 v1\n");
    for (id, n) in shots {
        h.update(id.to_le_bytes());
        h.update(n.to_le_bytes());
    }
    for (k, hkl) in layout.asu_hkl.iter().enumerate() {
        h.update(format!("{hkl:?}{}", layout.i_init[k].to_bits()));
    }
    for k in &layout.key {
        h.update(k.to_le_bytes());
    }
    for v in inits {
        h.update(v.to_bits().to_le_bytes());
    }
    let knobs = format!(
        "{n_per_shot} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {} {:?} {:?} {:?} {}",
        cfg.sigmas.fhkl.to_bits(),
        cfg.sigmas.g.to_bits(),
        cfg.types.g,
        cfg.types.nabc,
        cfg.betas.fhkl,
        cfg.betas.finit,
        cfg.betas.friedel,
        cfg.fhkl_dspace_bins,
        cfg.roi.allow_overlapping_spots,
        cfg.fix.rot_xyz,
        cfg.fix.nabc,
        cfg.fix.ucell,
        cfg.refiner.stage_two.min_multiplicity,
    );
    h.update(knobs.as_bytes());
    h.finalize().into()
}

/// Flush a checkpoint's outputs (rank 0; idempotent).
#[allow(clippy::too_many_arguments)]
fn flush_outputs(
    store: &mut Store,
    opts: &RunOptions,
    layout: &FhklLayout,
    s: &[f64],
    h: &[f64],
    traces: &[TracePoint],
    iteration: u64,
    is_final: bool,
    cell: &UnitCell,
    sg: &SpaceGroup,
    wavelength: f64,
) -> Result<Vec<PathBuf>> {
    output::write_traces(store, &opts.tag, traces)?;
    let rows = output::fhkl_rows(layout, s, h);
    output::write_fhkl(store, &opts.tag, &rows, iteration as i32, is_final)?;
    let mut files = Vec::new();
    for c in 0..layout.n_chan {
        let name = if is_final {
            format!("optimized_channel{c}.mtz")
        } else {
            format!("optimized_channel{c}_iter{iteration}.mtz")
        };
        let path = opts.outdir.join(name);
        output::write_mtz(&path, &rows, c as i32, cell, sg, opts.max_sigma, wavelength)?;
        files.push(path);
    }
    Ok(files)
}

/// Shared state of the optimiser callbacks.
struct Driver {
    snapshot: Option<State>,
    journal: Vec<JournalEntry>,
    replay: std::collections::VecDeque<JournalEntry>,
    replay_until: u64,
    pending: Vec<TracePoint>,
    n_eval: u64,
    elapsed0: f64,
    started: Instant,
    eval_seconds: Vec<f64>,
    last_sigz: f64,
    error: Option<Error>,
}

/// A loaded problem: the store, this rank's shots and the target.
pub struct Prepared {
    pub store: Store,
    pub problem: Problem,
    /// The global shot list (shot_id, pixels), index = position in x.
    pub global: Vec<(i64, u64)>,
    pub n_failed: usize,
    pub space_group: SpaceGroup,
    /// Cell of the outputs (`--cell` or the mean cell).
    pub cell: UnitCell,
    pub mean_wavelength: f64,
    pub filled: usize,
    /// Pixels, trusted pixels, heap bytes of the pixel data (all ranks).
    pub sizes: [f64; 3],
    pub bytes_per_pixel_disk: f64,
    pub threads: usize,
}

/// Shots per backend launch on a GPU (the CPU evaluates shot by shot).
pub const GPU_SHOTS_PER_LAUNCH: usize = 32;

/// [`prepare_with_backend`] with `--device auto`.
pub fn prepare(cfg: &EnsHopperConfig, opts: &RunOptions, comm: &dyn Comm) -> Result<Prepared> {
    check_config(cfg)?;
    let backend = select(DeviceChoice::Auto, comm)?;
    prepare_with_backend(cfg, opts, comm, backend.into())
}

/// Load everything a run needs (collective), every kernel evaluation on
/// `backend`. Refuses to start a run whose tag already has results unless
/// `opts.restart`.
pub fn prepare_with_backend(
    cfg: &EnsHopperConfig,
    opts: &RunOptions,
    comm: &dyn Comm,
    backend: std::sync::Arc<dyn Backend>,
) -> Result<Prepared> {
    check_config(cfg)?;
    if opts.tag.is_empty()
        || !opts.tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(Error::param("--saveTag", format!("`{}` must be non-empty [A-Za-z0-9_.-]", opts.tag)));
    }
    let rank = comm.rank();
    let nranks = comm.size();
    if comm.is_root() {
        std::fs::create_dir_all(&opts.outdir).map_err(|e| io_err(&opts.outdir, e))?;
    }
    let mut store = Store::create(&opts.store_dir, rank as u32, comm.is_root())?;

    // --- Fresh or restart, and the shot list: rank 0 decides. ---
    let decision = if comm.is_root() {
        Some((|| -> Result<Vec<u8>> {
            let has_ckpt = !checkpoint::list(&opts.outdir, &opts.tag)?.is_empty();
            let has_rows = output::traces_max_eval(&store, &opts.tag)?.is_some();
            if !opts.restart && (has_ckpt || has_rows) {
                return Err(Error::msg(format!(
                    "run tag `{}` already has results ({}): use --restart to continue it, or another --saveTag",
                    opts.tag,
                    if has_ckpt { format!("checkpoints in {}", checkpoint::dir(&opts.outdir).display()) } else { "traces in the store".into() }
                )));
            }
            Ok(encode_counts(&select_shots(&store, cfg, opts)?))
        })())
    } else {
        None
    };
    let selected = decode_counts(&broadcast_result(comm, decision)?);
    let costs: Vec<u64> = selected.iter().map(|s| s.1).collect();
    let mine_idx = longest_first(&costs, nranks).swap_remove(rank);
    let mine: BTreeSet<i64> = mine_idx.iter().map(|&i| selected[i].0).collect();
    log(comm, opts, &format!("{} shots on {nranks} rank(s); tag `{}`", selected.len(), opts.tag));

    // --- The space group (from the phil, the MTZ or the first shot's crystal). ---
    let first = shots::read_stage1_rows(&store, &opts.stage1_tag, Some(&BTreeSet::from([selected[0].0])))?;
    let sg = space_group(cfg, first.values().next().map(|r| (r.exp_name.clone(), r.exp_idx)).as_ref())?;

    // --- Load this rank's shots; shots that fail are dropped everywhere. ---
    type Loaded = (Vec<shots::ShotInput>, BTreeMap<i64, data::ShotPixels>, Vec<FailureRow>);
    let load = (|| -> Result<Loaded> {
        let rows = shots::read_stage1_rows(&store, &opts.stage1_tag, Some(&mine))?;
        let spectra = shots::read_spectra(&store, &mine)?;
        let bounds = cfg.fhkl_channel_bounds.clone().unwrap_or_default();
        let set = shots::ShotSettings { cfg, space_group: &sg, channel_bounds: &bounds };
        let mut inputs = Vec::new();
        let mut failures = Vec::new();
        for (id, r) in shots::build_inputs(&rows, &spectra, &set)? {
            match r {
                Ok(s) => inputs.push(s),
                Err(e) => failures.push(FailureRow::now(id, "stage2", "bad_input", e.to_string())),
            }
        }
        let n_mono = inputs.iter().filter(|s| s.mono_fallback).count();
        if n_mono > 0 {
            eprintln!("warning: rank {rank}: {n_mono} shot(s) have no spectrum rows; modelled at the beam wavelength");
        }
        let pixels = data::load_pixels(&store, &mine)?;
        let mut kept = Vec::new();
        for s in inputs {
            let dims: Vec<[usize; 2]> = s.detector.panels.iter().map(|p| p.image_size).collect();
            match pixels.get(&s.shot_id).map(|p| p.check_panels(&dims, s.shot_id)) {
                Some(Ok(())) => kept.push(s),
                Some(Err(e)) => {
                    failures.push(FailureRow::now(s.shot_id, "stage2", "bad_input", e.to_string()))
                }
                None => failures.push(FailureRow::now(s.shot_id, "stage2", "no_pixels", "no pixels rows")),
            }
        }
        Ok((kept, pixels, failures))
    })();
    // Every rank learns which shots failed (or that a rank could not load at all).
    let (inputs, mut pixels, failures, load_err) = match load {
        Ok((i, p, f)) => (i, p, f, None),
        Err(e) => (vec![], BTreeMap::new(), vec![], Some(e)),
    };
    let mut mine_bytes = if load_err.is_some() { vec![1u8] } else { vec![0u8] };
    for f in &failures {
        mine_bytes.extend_from_slice(&f.shot_id.to_le_bytes());
    }
    let gathered = comm.allgather_bytes(&mine_bytes);
    if let Some(e) = load_err {
        return Err(e);
    }
    if gathered.iter().any(|g| g.first() == Some(&1)) {
        return Err(Error::msg("loading the shots failed on another rank (see its message)"));
    }
    let failed: BTreeSet<i64> = gathered
        .iter()
        .flat_map(|g| g[1..].chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))))
        .collect();
    if !failures.is_empty() {
        let mut b = BatchBuilder::new(Table::Failures);
        for f in &failures {
            b.append_row(f)?;
            eprintln!("warning: shot {} skipped: {}", f.shot_id, f.message);
        }
        store.append_builder(&mut b)?;
    }
    let global: Vec<(i64, u64)> = selected.iter().copied().filter(|s| !failed.contains(&s.0)).collect();
    if global.is_empty() {
        return Err(Error::msg("every shot failed to load (see the failures table)"));
    }
    let index_of: HashMap<i64, usize> = global.iter().enumerate().map(|(i, s)| (s.0, i)).collect();

    // --- Cell, observations, layout, table. ---
    let n_chan = cfg.fhkl_channel_bounds.as_ref().map_or(1, |b| b.len() + 1);
    // Mean cell and wavelength over all shots.
    let mut buf = vec![0.0; 8];
    for s in &inputs {
        let c = s.ucell.unit_cell().to_array();
        for k in 0..6 {
            buf[k] += c[k];
        }
        let wsum: f64 = s.sources.iter().map(|x| x.weight).sum();
        buf[6] += s.sources.iter().map(|x| x.wavelength * x.weight).sum::<f64>() / wsum;
        buf[7] += 1.0;
    }
    comm.allreduce_sum(&mut buf);
    let mean_cell = UnitCell::from_array(std::array::from_fn(|k| buf[k] / buf[7]));
    let mean_wavelength = buf[6] / buf[7];
    let cell = opts.cell.map(UnitCell::from_array).unwrap_or(mean_cell);
    if !cell.is_valid() {
        return Err(Error::param("--cell", format!("{:?} is not a valid cell", cell.to_array())));
    }
    let mut sf = sf::StartingF::from_config(cfg, &sg)?;
    log(comm, opts, &format!("space group {}, starting structure factors: {}", sg.hm(), sf.source));
    // Observations on this rank, then everyone's.
    let mut local: BTreeMap<(Miller, u32), u32> = BTreeMap::new();
    for s in &inputs {
        let Some(p) = pixels.get(&s.shot_id) else { continue };
        for r in &p.rois {
            let Some(h) = r.hkl else { continue };
            if h == [0, 0, 0] {
                continue;
            }
            let key = sf::asu_key(&sf.asu, &h);
            for (c, on) in s.channels.iter().enumerate() {
                if *on {
                    *local.entry((key, c as u32)).or_default() += 1;
                }
            }
        }
    }
    let mut enc = Vec::with_capacity(local.len() * 20);
    for ((h, c), n) in &local {
        for v in h {
            enc.extend_from_slice(&v.to_le_bytes());
        }
        enc.extend_from_slice(&c.to_le_bytes());
        enc.extend_from_slice(&n.to_le_bytes());
    }
    let mut obs: Vec<Observation> = Vec::new();
    for g in comm.allgather_bytes(&enc) {
        for c in g.chunks_exact(20) {
            let i = |k: usize| i32::from_le_bytes(c[4 * k..4 * k + 4].try_into().expect("4"));
            let u = |k: usize| u32::from_le_bytes(c[4 * k..4 * k + 4].try_into().expect("4"));
            obs.push(Observation { hkl: [i(0), i(1), i(2)], channel: u(3), count: u(4) });
        }
    }
    obs.sort();
    let min_mult = cfg.refiner.stage_two.min_multiplicity.max(1) as u32;
    let mut per_key: BTreeMap<(Miller, u32), u32> = BTreeMap::new();
    for o in &obs {
        *per_key.entry((o.hkl, o.channel)).or_default() += o.count;
    }
    let needed: Vec<Miller> = {
        let mut v: Vec<Miller> =
            per_key.iter().filter(|(_, &n)| n >= min_mult).map(|((h, _), _)| *h).collect();
        v.dedup();
        v
    };
    let filled = sf.fill_missing(&needed, &cell)?;
    if filled > 0 {
        log(
            comm,
            opts,
            &format!("{filled} observed reflections had no starting value: started at their shell mean"),
        );
    }
    let res = crate::symmetry::miller::Resolution::new(&cell)?;
    let layout =
        FhklLayout::new(&obs, n_chan, min_mult, |h| sg.is_centric(h), |h| res.d(h), |h| sf.intensity(h))?;
    if layout.n_params() == 0 {
        return Err(Error::msg("no structure factor to refine: no ROI has a Miller index (pixels.hkl)"));
    }
    let ids: HashMap<Miller, u32> = layout.asu_hkl.iter().enumerate().map(|(i, h)| (*h, i as u32)).collect();
    let table = sf.table(&ids)?;

    // --- Local shots and their parameters. ---
    let mut local_shots = Vec::with_capacity(inputs.len());
    for s in inputs {
        let params = ShotParams::new(cfg, &s)?;
        let px = pixels.remove(&s.shot_id).expect("checked above");
        local_shots.push(LocalShot { index: index_of[&s.shot_id], input: s, pixels: px, params });
    }
    local_shots.sort_by_key(|s| s.index);
    // Every shot has the same block; an empty rank learns its size from the others.
    let mut npsmax = [local_shots.first().map_or(0, |s| s.params.n_free() as u64 + 1)];
    comm.allreduce_max_u64(&mut npsmax);
    let n_per_shot = npsmax[0].saturating_sub(1) as usize;
    // Default: the node's threads shared among the node's ranks.
    let threads =
        opts.threads.unwrap_or_else(|| rayon::current_num_threads() / comm.local_size().max(1)).max(1);
    let rcfg = restraints::FhklRestraints {
        beta_fhkl: cfg.betas.fhkl,
        beta_finit: cfg.betas.finit,
        beta_friedel: cfg.betas.friedel,
        n_bins: cfg.fhkl_dspace_bins,
    };
    let plan = restraints::RestraintPlan::new(rcfg, &layout)?;
    let mut problem = Problem::new(
        local_shots,
        global.len(),
        n_per_shot,
        layout,
        table,
        cfg.sigmas.fhkl,
        plan,
        cfg.roi.allow_overlapping_spots,
        threads,
    )?;
    let per_launch = if backend.name() == "cpu" { 1 } else { GPU_SHOTS_PER_LAUNCH };
    log(comm, opts, &format!("kernel backend: {}, {per_launch} shot(s) per launch", backend.describe()));
    problem.set_backend(backend, per_launch);
    let (npix, ntrust) = problem.pixel_counts();
    let mut sizes = vec![npix as f64, ntrust as f64, problem.pixel_bytes() as f64];
    comm.allreduce_sum(&mut sizes);
    let disk = data::bytes_on_disk(&store)?;
    let total_table_pixels: u64 =
        if comm.is_root() { data::shot_counts(&store)?.iter().map(|c| c.n_pixels).sum() } else { 0 };
    let mut ttp = [total_table_pixels];
    comm.allreduce_max_u64(&mut ttp);
    let bpp_mem = sizes[2] / sizes[0].max(1.0);
    let bpp_disk = disk as f64 / ttp[0].max(1) as f64;
    log(
        comm,
        opts,
        &format!(
            "{} pixels ({} trusted); {} structure-factor scales over {} channel(s), {} per-shot parameters; \
             pixel data {:.2} B/pixel in memory, {:.2} B/pixel on disk",
            sizes[0],
            sizes[1],
            problem.layout.n_params(),
            n_chan,
            n_per_shot * global.len(),
            bpp_mem,
            bpp_disk
        ),
    );
    // [TRAP] T3.5: the noise model must match the pre-import's; the table's σ_r is used.
    if let Some(r) = problem.shots.first().and_then(|s| s.pixels.rois.first()) {
        let phil = cfg.refiner.sigma_r / cfg.refiner.adu_per_photon;
        let table = (r.sigma_r2 as f64).sqrt();
        if (phil - table).abs() > 0.01 * phil.abs().max(table) {
            log(
                comm,
                opts,
                &format!(
                    "note: refiner.sigma_r/adu_per_photon = {phil} photons but the pixels table holds σ_r = {table}; \
                     the table's value (the pre-import's) is used"
                ),
            );
        }
    }
    if cfg.use_restraints {
        log(comm, opts, "note: use_restraints has no effect in ens-hopper (per-shot restraints are never added, as in the reference)");
    }

    Ok(Prepared {
        store,
        problem,
        global,
        n_failed: failed.len(),
        space_group: sg,
        cell,
        mean_wavelength,
        filled,
        sizes: [sizes[0], sizes[1], sizes[2]],
        bytes_per_pixel_disk: bpp_disk,
        threads,
    })
}

/// Run stage 2 with `--device auto`. Collective: every rank calls it with
/// the same arguments.
pub fn run(cfg: &EnsHopperConfig, opts: &RunOptions, comm: &dyn Comm) -> Result<RunSummary> {
    check_config(cfg)?;
    let backend = select(DeviceChoice::Auto, comm)?;
    run_with_backend(cfg, opts, comm, backend.into())
}

/// Run stage 2, every kernel evaluation on `backend` (collective).
pub fn run_with_backend(
    cfg: &EnsHopperConfig,
    opts: &RunOptions,
    comm: &dyn Comm,
    backend: std::sync::Arc<dyn Backend>,
) -> Result<RunSummary> {
    let Prepared {
        mut store,
        problem,
        global,
        n_failed,
        space_group: sg,
        cell,
        mean_wavelength,
        filled,
        sizes,
        bytes_per_pixel_disk: bpp_disk,
        threads,
    } = prepare_with_backend(cfg, opts, comm, backend)?;
    let (rank, nranks) = (comm.rank(), comm.size());
    let _ = rank;
    let n_chan = problem.layout.n_chan;
    let n_per_shot = problem.n_per_shot;
    let bpp_mem = sizes[2] / sizes[0].max(1.0);

    // --- Fingerprint and restart. ---
    let mut inits = vec![0.0; global.len()];
    for s in &problem.shots {
        inits[s.index] = s.input.row.spot_scales;
    }
    comm.allreduce_sum(&mut inits);
    let fp = fingerprint(&global, &problem.layout, &inits, cfg, n_per_shot);
    let ck_bytes = if comm.is_root() && opts.restart {
        let mut w = Vec::new();
        let r = checkpoint::latest(&opts.outdir, &opts.tag, &fp, &mut w)
            .map(|c| c.map(|c| c.to_bytes()).unwrap_or_default());
        for m in w {
            eprintln!("warning: skipped checkpoint: {m}");
        }
        Some(r)
    } else if comm.is_root() {
        Some(Ok(vec![]))
    } else {
        None
    };
    let ck_bytes = broadcast_result(comm, ck_bytes)?;
    let resume = if ck_bytes.is_empty() {
        if opts.restart {
            log(comm, opts, "--restart: no checkpoint found, starting from the beginning");
        }
        None
    } else {
        Some(Checkpoint::from_bytes(&ck_bytes, &checkpoint::dir(&opts.outdir))?)
    };
    if let Some(ck) = &resume {
        log(comm, opts, &format!("continuing from the checkpoint at evaluation {}", ck.n_eval));
        if comm.is_root() {
            let s = problem.scales(&ck.x);
            flush_outputs(
                &mut store,
                opts,
                &problem.layout,
                &s,
                &ck.h,
                &ck.traces,
                ck.n_eval,
                false,
                &cell,
                &sg,
                mean_wavelength,
            )?;
        }
    }

    // --- The optimiser. ---
    let n_x = problem.n_x();
    let x0 = vec![1.0; n_x];
    let bounds = params::bounds(problem.fhkl_offset(), problem.layout.n_params());
    let lopts = Options {
        ftol: cfg.ftol,
        gtol: 1e-12,
        maxiter: cfg.lbfgs_maxiter,
        maxfun: opts.max_evals.unwrap_or(100_000),
        ..Options::default()
    };
    let drv = RefCell::new(Driver {
        snapshot: None,
        journal: Vec::new(),
        replay: resume.as_ref().map(|c| c.journal.iter().cloned().collect()).unwrap_or_default(),
        replay_until: resume.as_ref().map_or(0, |c| c.n_eval),
        pending: Vec::new(),
        n_eval: resume.as_ref().map_or(0, |c| c.state.n_eval as u64),
        elapsed0: resume.as_ref().map_or(0.0, |c| c.elapsed),
        started: Instant::now(),
        eval_seconds: Vec::new(),
        last_sigz: f64::NAN,
        error: None,
    });
    let store_cell = RefCell::new(store);
    let fg = |x: &[f64], g: &mut [f64]| -> Result<f64> {
        let mut d = drv.borrow_mut();
        d.n_eval += 1;
        if let Some(j) = d.replay.pop_front() {
            if j.x.len() != x.len() || j.x.iter().zip(x).any(|(a, b)| a.to_bits() != b.to_bits()) {
                return Err(Error::msg(format!(
                    "the checkpoint does not replay (evaluation {} went elsewhere): it was written by a different build or problem",
                    d.n_eval
                )));
            }
            g.copy_from_slice(&j.g);
            let f = j.f;
            d.journal.push(j);
            return Ok(f);
        }
        drop(d);
        let t0 = Instant::now();
        let e = problem.evaluate(x, comm)?;
        let secs = t0.elapsed().as_secs_f64();
        check_in_step(x, comm)?;
        g.copy_from_slice(&e.g);
        let mut d = drv.borrow_mut();
        let gnorm = e.g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let time = d.elapsed0 + d.started.elapsed().as_secs_f64();
        let eval = d.n_eval;
        d.pending.push(TracePoint { eval: (eval - 1) as u32, f: e.f, sigz: e.sigz, grad_norm: gnorm, time });
        d.journal.push(JournalEntry { x: x.to_vec(), f: e.f, g: e.g.clone() });
        d.eval_seconds.push(secs);
        d.last_sigz = e.sigz;
        log(
            comm,
            opts,
            &format!("it={} | t/it={secs:.4}s | F={} | sigZ={}", eval - 1, fmt_g(e.f, 10), fmt_g(e.sigz, 10)),
        );
        Ok(e.f)
    };
    let observer = |p: &Progress| -> Control {
        if p.event != Event::Evaluation {
            return Control::Continue;
        }
        let n = p.n_eval as u64;
        let mut d = drv.borrow_mut();
        if n <= d.replay_until {
            return Control::Continue;
        }
        if let Some(freq) = opts.save_freq.filter(|&f| f > 0) {
            if n % freq as u64 == 0 {
                // The very first evaluation precedes any optimiser state: no checkpoint there.
                let r = (|| -> Result<()> {
                    let Some(state) = d.snapshot.clone() else { return Ok(()) };
                    let curv = problem.curvature(p.x, comm)?;
                    let ck = Checkpoint {
                        fingerprint: fp,
                        n_eval: n,
                        elapsed: d.elapsed0 + d.started.elapsed().as_secs_f64(),
                        state,
                        journal: d.journal.clone(),
                        traces: std::mem::take(&mut d.pending),
                        x: p.x.to_vec(),
                        h: curv.h.clone(),
                    };
                    // Rank 0 writes; a failure there must stop every rank.
                    let mut local = Ok(());
                    if comm.is_root() {
                        local = checkpoint::save(&opts.outdir, &opts.tag, &ck).and_then(|_| {
                            let s = problem.scales(p.x);
                            flush_outputs(
                                &mut store_cell.borrow_mut(),
                                opts,
                                &problem.layout,
                                &s,
                                &curv.h,
                                &ck.traces,
                                n,
                                false,
                                &cell,
                                &sg,
                                mean_wavelength,
                            )
                            .map(|_| ())
                        });
                    }
                    if local.is_ok() && opts.save_all {
                        let wall = d.elapsed0 + d.started.elapsed().as_secs_f64();
                        local = problem
                            .shots
                            .iter()
                            .zip(&curv.shots)
                            .map(|(s, c)| shot_row(&problem, s, p.x, c, "checkpoint", n as usize, wall))
                            .collect::<Result<Vec<_>>>()
                            .and_then(|rows| {
                                output::write_shot_rows(
                                    &mut store_cell.borrow_mut(),
                                    &opts.tag,
                                    &rows,
                                    Some(n as i32),
                                )
                            })
                            .map(|_| ());
                    }
                    let mut flag = [f64::from(u8::from(local.is_err()))];
                    comm.allreduce_sum(&mut flag);
                    local?;
                    if flag[0] > 0.0 {
                        return Err(Error::msg(
                            "writing the checkpoint failed on another rank (see its message)",
                        ));
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    d.error = Some(e);
                    return Control::Stop;
                }
            }
        }
        if opts.max_evals.is_some_and(|m| n as usize >= m) {
            return Control::Stop;
        }
        Control::Continue
    };
    let on_state = |s: &StateView| {
        let mut d = drv.borrow_mut();
        d.snapshot = Some(s.to_state());
        d.journal.clear();
    };
    let out = minimize_resumable(
        fg,
        &x0,
        Some(&bounds),
        &lopts,
        resume.as_ref().map(|c| &c.state),
        observer,
        on_state,
    )?;
    let mut d = drv.into_inner();
    let mut store = store_cell.into_inner();
    if let Some(e) = d.error.take() {
        return Err(e);
    }
    if out.status == Status::EvaluationFailed {
        return Err(Error::msg(format!("stage 2 stopped: {}", out.message)));
    }

    // --- Final outputs at the last accepted iterate. ---
    let curv = problem.curvature(&out.x, comm)?;
    let s = problem.scales(&out.x);
    let mut mtz_files = Vec::new();
    if comm.is_root() {
        mtz_files = flush_outputs(
            &mut store,
            opts,
            &problem.layout,
            &s,
            &curv.h,
            &d.pending,
            out.n_eval as u64,
            true,
            &cell,
            &sg,
            mean_wavelength,
        )?;
    }
    let wall = d.elapsed0 + d.started.elapsed().as_secs_f64();
    let status = if out.status.converged() {
        "converged"
    } else if out.status == Status::EvaluationLimit || opts.max_evals.is_some_and(|m| out.n_eval >= m) {
        "max_evals"
    } else {
        "stopped"
    };
    let rows: Vec<output::ShotRow> = problem
        .shots
        .iter()
        .zip(&curv.shots)
        .map(|(s, c)| shot_row(&problem, s, &out.x, c, status, out.n_eval, wall))
        .collect::<Result<_>>()?;
    output::write_shot_rows(&mut store, &opts.tag, &rows, None)?;
    comm.barrier();
    let secs: f64 = d.eval_seconds.iter().sum();
    let spe = if d.eval_seconds.is_empty() { f64::NAN } else { secs / d.eval_seconds.len() as f64 };
    let summary = RunSummary {
        tag: opts.tag.clone(),
        backend: problem.backend().name().to_string(),
        device: problem.backend().describe(),
        n_ranks: nranks,
        threads_per_rank: threads,
        n_shots: global.len(),
        n_failed_shots: n_failed,
        n_pixels: sizes[0] as u64,
        n_trusted_pixels: sizes[1] as u64,
        n_fhkl_params: problem.layout.n_params(),
        n_shot_params: n_per_shot * global.len(),
        n_channels: n_chan,
        n_eval: out.n_eval,
        n_iter: out.n_iter,
        status: status.into(),
        message: out.message.clone(),
        f: out.f,
        sigz: curv.shots.iter().map(|s| s.sigz).sum::<f64>(),
        resumed_from_eval: resume.as_ref().map(|c| c.n_eval),
        bytes_per_pixel_memory: bpp_mem,
        bytes_per_pixel_disk: bpp_disk,
        seconds_per_eval: spe,
        seconds_per_shot_eval: spe * nranks as f64 / global.len() as f64,
        filled_missing_intensities: filled,
        mtz_files,
    };
    // sigZ of the summary: mean over all shots.
    let mut sz = [summary.sigz];
    comm.allreduce_sum(&mut sz);
    let summary = RunSummary { sigz: sz[0] / global.len() as f64, ..summary };
    if comm.is_root() {
        let path = opts.outdir.join(format!("{}_summary.json", opts.tag));
        let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::msg(e.to_string()))?;
        crate::store::atomic::write_bytes(&path, text.as_bytes())?;
        log(
            comm,
            opts,
            &format!(
                "done: {} after {} evaluations ({}); F={} sigZ={:.4}; {:.3} s/evaluation, {:.4} s per shot-evaluation",
                summary.status, summary.n_eval, summary.message, fmt_g(summary.f, 10), summary.sigz, spe, summary.seconds_per_shot_eval
            ),
        );
    }
    Ok(summary)
}

/// The ranks must hold the same x: compare a hash (two max-reductions).
fn check_in_step(x: &[f64], comm: &dyn Comm) -> Result<()> {
    if comm.size() <= 1 {
        return Ok(());
    }
    let mut h = Sha256::new();
    for v in x {
        h.update(v.to_bits().to_le_bytes());
    }
    let d = h.finalize();
    let v = u64::from_le_bytes(d[..8].try_into().expect("8"));
    let mut buf = [v, !v];
    comm.allreduce_max_u64(&mut buf);
    if buf[0] != v || buf[1] != !v {
        return Err(Error::msg(
            "the ranks' optimisers diverged (different x): results would be inconsistent",
        ));
    }
    Ok(())
}

fn shot_row(
    p: &Problem,
    s: &LocalShot,
    x: &[f64],
    c: &target::ShotSummary,
    status: &str,
    n_eval: usize,
    wall: f64,
) -> Result<output::ShotRow> {
    let v = s.params.values(p.shot_block(x, s.index));
    let inp = &s.input;
    let a = inp.a_matrix(v.rot, &v.ucell)?;
    let cell = crate::ucell::UcellParams::new(inp.ucell.system, v.ucell.clone())?.unit_cell().to_array();
    let r = &inp.row;
    Ok(output::ShotRow {
        shot_id: inp.shot_id,
        exp_name: r.exp_name.clone(),
        exp_idx: r.exp_idx,
        refl_name: r.refl_name.clone(),
        status: status.into(),
        n_evals: n_eval as i32,
        wall_time_s: wall,
        f_final: c.f,
        sigz: c.sigz,
        g: v.g,
        g_init: r.spot_scales,
        sigma_g: c.sigma_g,
        amats: crate::conventions::mat3_to_row_major(&a),
        ncells: v.nabc,
        ncells_init: r.ncells,
        ncells_def: [inp.ncells[3], inp.ncells[4], inp.ncells[5]],
        rot: v.rot,
        cell,
        cell_init: inp.ucell.unit_cell().to_array(),
        eta_abc: r.eta_abc,
        num_mosaicity_samples: inp.mosaic_n as i32,
        detz_shift_mm: inp.detz_shift,
        lam: inp.lambda_coef,
        spectrum_source: r.spectrum_source.clone(),
        spectrum_filename: r.spectrum_filename.clone(),
        spectrum_stride: r.spectrum_stride,
        total_flux: r.total_flux,
        beamsize_mm: r.beamsize_mm,
        oversample: inp.oversample as i32,
        backend: p.backend().name().to_string(),
    })
}

/// The folder of a store path given on the command line, checked.
pub fn check_store_dir(p: &Path) -> Result<()> {
    if p.is_file() {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        let what = if ext == "pkl" { "a pandas pickle (the reference's input)" } else { "a file" };
        return Err(Error::file(
            p,
            format!("is {what}; ens-hopper reads a diffbragg store directory (stage-1 output with a filled `pixels` table)"),
        ));
    }
    if !p.is_dir() {
        return Err(Error::file(p, "no such store directory"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_style_g_format() {
        assert_eq!(fmt_g(1234.5678, 7), "1234.568");
        assert_eq!(fmt_g(1.5e-7, 3), "1.50e-7");
        assert_eq!(fmt_g(-2.0, 7), "-2");
        assert_eq!(fmt_g(123456789.0, 4), "1.235e8");
    }

    #[test]
    fn counts_roundtrip() {
        let v = vec![(5i64, 10u64), (-3, 0)];
        assert_eq!(decode_counts(&encode_counts(&v)), v);
    }
}
