//! `diffbragg hopper`: stage 1 (see [`crate::stage1`]).
//!
//! `diffbragg hopper stage_one.phil [more.phil] [--cmdlinePhil k=v ...]`:
//! the phil files are diffBragg's (unchanged); `--cmdlinePhil` overrides come
//! last (put the phil files before it). `exp_ref_spec_file` and `outdir` come
//! from the configuration. Under MPI (`--features mpi`, `srun`/`mpirun`) every
//! rank runs the same command; a rank that hits a fatal error aborts the job.
//! `--device cpu|cuda|auto` (default auto) picks the kernel backend before any
//! work: rank r uses GPU (node-local r) mod (visible GPUs); `cuda` without a
//! usable GPU is an error; each `shot_params` row records the backend.

use std::path::PathBuf;

use clap::Args;

use crate::config::{HopperConfig, WarningKind};
use crate::gpu::DeviceArgs;
use crate::stage1::driver::run_with_backend;
use crate::stage1::RunOptions;

#[derive(Args, Debug)]
pub struct HopperArgs {
    /// diffBragg phil files, applied in order.
    #[arg(required = true)]
    pub phil_files: Vec<PathBuf>,
    /// Overrides `key=value` (a key may be a unique dotted suffix).
    #[arg(long = "cmdlinePhil", alias = "cmdLinePhil", num_args = 1.., value_name = "KEY=VALUE")]
    pub cmdline_phil: Vec<String>,
    /// Commit results every N finished shots (all tables at once).
    #[arg(long, default_value_t = 8)]
    pub flush_every: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// One line per shot.
    #[arg(long, short)]
    pub verbose: bool,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Refine one shot at a time (parallel only inside the kernel) instead of
    /// several shots at once.
    #[arg(long)]
    pub serial_shots: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Recognised, implemented-elsewhere parameters that stage 1 does not use,
/// listed in one warning when a file or the command line sets them.
const NOT_STAGE1: &[(&str, &str)] = &[
    ("refiner.num_devices", "the GPU is chosen by --device (node-local rank mod visible devices)"),
    ("Fhkl_channel_bounds", "structure-factor refinement is stage 2"),
    ("Fhkl_dspace_bins", "structure-factor refinement is stage 2"),
    ("fix.Fhkl", "structure-factor refinement is stage 2"),
    ("sigmas.Fhkl", "structure-factor refinement is stage 2"),
    ("betas.Fhkl", "structure-factor refinement is stage 2"),
    ("betas.Finit", "structure-factor refinement is stage 2"),
    ("betas.Friedel", "structure-factor refinement is stage 2"),
    ("refiner.load_data_from_refl", ""),
    ("types.diffuse_sigma", "the diffuse model is not implemented"),
    ("types.diffuse_gamma", "the diffuse model is not implemented"),
    ("init.diffuse_sigma", "the diffuse model is not implemented"),
    ("init.diffuse_gamma", "the diffuse model is not implemented"),
    ("fix.diffuse_sigma", "the diffuse model is not implemented"),
    ("fix.diffuse_gamma", "the diffuse model is not implemented"),
];

/// The stage-1 warning: set parameters that stage 1 does not use.
pub fn stage1_unused(cfg: &HopperConfig) -> Option<String> {
    let items: Vec<String> = NOT_STAGE1
        .iter()
        .filter(|(n, why)| !why.is_empty() && cfg.sources.is_set(n))
        .map(|(n, why)| format!("  {n} ({}): {why}", cfg.sources.describe(n)))
        .collect();
    (!items.is_empty()).then(|| format!("stage 1 does not use these settings:\n{}", items.join("\n")))
}

pub fn run(a: HopperArgs) -> anyhow::Result<()> {
    let comm = crate::dist::init();
    crate::dist::install_abort_on_panic(comm.as_ref());
    if let Some(n) = a.threads {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global();
    }
    let result = (|| -> anyhow::Result<()> {
        let (cfg, warnings) = HopperConfig::load(&a.phil_files, &a.cmdline_phil)?;
        if comm.is_root() {
            for w in &warnings {
                if w.kind != WarningKind::Advice || !w.message.is_empty() {
                    eprintln!("warning: {}", w.message);
                }
            }
            if let Some(w) = stage1_unused(&cfg) {
                eprintln!("warning: {w}");
            }
            if !cfg.sources.is_set("types.G") && !cfg.fix.g {
                eprintln!(
                    "note: types.G=ranged (the default) maps G by a sine over [mins.G, maxs.G]; far below maxs.G it \
                     starts near the turning point and early steps can overshoot (types.G=positive is better behaved)"
                );
            }
        }
        let opts = RunOptions {
            flush_every: a.flush_every,
            progress: a.no_progress.then_some(false),
            verbose: a.verbose,
            serial_shots: a.serial_shots,
        };
        // The backend is chosen (and a missing GPU reported) before any work.
        let backend = crate::gpu::select(a.device.device, comm.as_ref())?;
        let s = run_with_backend(cfg, comm.as_ref(), &opts, backend.into())?;
        if comm.is_root() || a.verbose {
            eprintln!(
                "stage 1 done ({}): {} refined, {} failed, {} skipped (already done) of {} listed, {:.1} s",
                comm.describe(),
                s.n_refined,
                s.n_failed,
                s.n_skipped_done,
                s.n_listed,
                s.wall_s
            );
        }
        Ok(())
    })();
    if let Err(e) = result {
        if comm.size() > 1 {
            eprintln!("error on rank {}: {e:#}; aborting all ranks", comm.rank());
            comm.abort(2);
        }
        return Err(e);
    }
    Ok(())
}
