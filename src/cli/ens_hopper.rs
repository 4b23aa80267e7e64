//! `diffbragg ens-hopper`: stage 2, global structure-factor refinement.
//!
//! ```text
//! diffbragg ens-hopper STORE [PHIL...] --outdir OUT [--cmdlinePhil k=v ...]
//!     [--saveFreq N] [--maxSigma V] [--restart] [--cell a b c al be ga]
//!     [--saveTag TAG] [--saveAll] [--preImport] [--halfSet even|odd] [--maxEvals N]
//! ```
//! The reference's argument names are accepted as they are; `--refl` and
//! `--exp` are accepted and ignored (the data come from the store's tables,
//! keyed by shot). With `--features mpi`, run it under `mpirun`/`srun`.
//!
//! Two steps, as the reference's two `ens.hopper` runs:
//! ```text
//! diffbragg ens-hopper reintegrated PHIL --preImport --outdir preimport   # pixels from the images
//! diffbragg ens-hopper preimport PHIL --outdir global ...                 # the global refinement
//! ```
//! With `--preImport`, STORE is the `diffbragg integrate` outdir (or a file
//! in it, e.g. `reintegrated/pred.parquet` or the reference's
//! `reintegrated/pred.pkl`) and `--outdir` is the **new store** that receives
//! the `pixels` table and copies of the shots' stage-1 rows
//! ([`crate::stage2::preimport`]); the phil's `roi`/`refiner` settings shape
//! the ROIs as in stage 1. A rerun into the same outdir imports only what is
//! missing.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::config::EnsHopperConfig;
use crate::dist;
use crate::stage2::{self, Half, RunOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HalfArg {
    Even,
    Odd,
}

#[derive(Args, Debug)]
pub struct EnsHopperArgs {
    /// The store directory: stage-1 results (shot_params, spectra) and the
    /// pre-imported `pixels` table; the results are added to it. With
    /// --preImport: the `diffbragg integrate` outdir (or a file inside it, e.g.
    /// reintegrated/pred.parquet or the reference's reintegrated/pred.pkl).
    pub store: PathBuf,
    /// diffBragg phil files (e.g. stage_two_test.phil), applied in order.
    pub phil: Vec<PathBuf>,
    /// Output folder for the MTZs, checkpoints and the summary (default: the phil's `outdir`).
    /// With --preImport: the new store that receives the `pixels` table.
    #[arg(long)]
    pub outdir: Option<PathBuf>,
    /// Phil overrides `name=value` (dotted suffixes allowed), applied after the files.
    #[arg(long = "cmdlinePhil", num_args = 1..)]
    pub cmdline_phil: Vec<String>,
    /// Checkpoint (and write MTZs) every N target evaluations.
    #[arg(long = "saveFreq")]
    pub save_freq: Option<usize>,
    /// Leave out of the MTZs the structure factors whose scale variance 1/H is at least this
    /// (the reference compares the variance despite the name).
    #[arg(long = "maxSigma", default_value_t = 1e20)]
    pub max_sigma: f64,
    /// Continue from the newest checkpoint of this --saveTag in --outdir.
    #[arg(long)]
    pub restart: bool,
    /// Unit cell written into the MTZs (default: the mean of the shots' cells).
    #[arg(long, num_args = 6, value_names = ["A", "B", "C", "AL", "BE", "GA"])]
    pub cell: Option<Vec<f64>>,
    /// Run tag: the `stage` of this run's rows in the store.
    #[arg(long = "saveTag", default_value = "stage2")]
    pub save_tag: String,
    /// Also write per-shot `shot_params` rows at every checkpoint (final rows are always written).
    #[arg(long = "saveAll")]
    pub save_all: bool,
    /// Read the ROI pixels of STORE's predictions from the images into a new store at
    /// --outdir (its `pixels` table, plus the shots' stage-1 rows) instead of refining.
    #[arg(long = "preImport", visible_alias = "preimport")]
    pub pre_import: bool,
    /// Accepted for compatibility with ens.hopper and ignored (e.g. `predicted_refls`,
    /// `ens.hopper.imported`): ROIs come from the `predictions` table, pixels from `pixels`.
    #[arg(long)]
    pub refl: Option<String>,
    /// Accepted for compatibility with ens.hopper and ignored.
    #[arg(long)]
    pub exp: Option<String>,
    /// Refine only the shots at even or odd positions (for CC½ between two runs).
    #[arg(long = "halfSet", value_enum)]
    pub half_set: Option<HalfArg>,
    /// Stop after this many target evaluations.
    #[arg(long = "maxEvals")]
    pub max_evals: Option<usize>,
    /// The `stage` of the shot_params rows to start from.
    #[arg(long = "stage1Tag", default_value = "stage1")]
    pub stage1_tag: String,
    /// Shots evaluated at once per rank (default: the rayon thread count).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No per-evaluation log lines.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub device: crate::gpu::DeviceArgs,
}

pub fn run(a: EnsHopperArgs) -> anyhow::Result<()> {
    let (cfg, warnings) = EnsHopperConfig::load(&a.phil, &a.cmdline_phil)?;
    let comm = dist::init();
    dist::install_abort_on_panic(comm.as_ref());
    if comm.is_root() {
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    let outdir = a
        .outdir
        .clone()
        .or_else(|| cfg.outdir.clone())
        .ok_or_else(|| anyhow::anyhow!("give --outdir (or `outdir` in the phil)"))?;
    let cell = match &a.cell {
        Some(v) => {
            Some(<[f64; 6]>::try_from(v.as_slice()).map_err(|_| anyhow::anyhow!("--cell takes 6 numbers"))?)
        }
        None => None,
    };
    let opts = RunOptions {
        store_dir: a.store.clone(),
        outdir,
        tag: a.save_tag.clone(),
        stage1_tag: a.stage1_tag.clone(),
        save_freq: a.save_freq,
        max_sigma: a.max_sigma,
        restart: a.restart,
        cell,
        save_all: a.save_all,
        half: a.half_set.map(|h| if h == HalfArg::Even { Half::Even } else { Half::Odd }),
        max_evals: a.max_evals,
        threads: a.threads,
        quiet: a.quiet,
    };
    let result = (|| -> crate::error::Result<()> {
        if a.pre_import {
            if comm.is_root() {
                if let Some(r) = &a.refl {
                    println!(
                        "note: --refl {r} is ignored: the ROIs are the input store's `predictions` rows"
                    );
                }
            }
            let s = stage2::preimport(&cfg, &opts, comm.as_ref())?;
            if comm.is_root() {
                print_preimport(&s);
            }
            return Ok(());
        }
        stage2::check_store_dir(&a.store)?;
        // The backend before any work: `--device cuda` without a GPU stops here.
        let backend = crate::gpu::select(a.device.device, comm.as_ref())?;
        let s = stage2::run_with_backend(&cfg, &opts, comm.as_ref(), backend.into())?;
        if comm.is_root() {
            println!(
                "stage 2 `{}`: {} shots, {} structure-factor scales, {} evaluations ({}), f = {:.8e}, sigZ = {:.4}",
                s.tag, s.n_shots, s.n_fhkl_params, s.n_eval, s.status, s.f, s.sigz
            );
            println!(
                "pixel data: {:.2} bytes/pixel in memory, {:.2} bytes/pixel on disk; {:.4} s per evaluation, {:.5} s per shot-evaluation ({} rank(s) × {} thread(s))",
                s.bytes_per_pixel_memory, s.bytes_per_pixel_disk, s.seconds_per_eval, s.seconds_per_shot_eval, s.n_ranks, s.threads_per_rank
            );
            for m in &s.mtz_files {
                println!("wrote {}", m.display());
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        if comm.size() > 1 {
            eprintln!("error (rank {}): {e}", comm.rank());
            comm.abort(2);
        }
        return Err(e.into());
    }
    Ok(())
}

fn print_preimport(s: &stage2::preimport::Summary) {
    println!(
        "pre-import: {} shot(s) imported, {} failed, {} already present (of {} listed) in {:.1} s ({:.3} s per shot per rank)",
        s.n_imported, s.n_failed, s.n_skipped_done, s.n_listed, s.import_seconds, s.seconds_per_shot
    );
    if !s.rejected.is_empty() {
        let r: Vec<String> = s.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("candidate ROIs left out: {}", r.join(", "));
    }
    println!(
        "pixels table {}: {} shots, {} ROIs, {} pixels ({} trusted); {:.2} bytes/pixel on disk, {:.2} bytes/pixel in memory (stage 2's loader)",
        s.output_store.display(),
        s.n_shots,
        s.n_rois,
        s.n_pixels,
        s.n_trusted,
        s.bytes_per_pixel_disk,
        s.bytes_per_pixel_memory
    );
    println!("next: diffbragg ens-hopper {} PHIL --outdir global ...", s.output_store.display());
}
