//! `diffbragg integrate`: predictions from stage-1 models, labelled strong or
//! weak against spots found on the data (cctbx `diffBragg.integrate`).
//!
//! The reference's command line works unchanged:
//! `diffbragg integrate pred.phil proc.phil STAGE1_DIR OUTDIR [--numdev N]
//! [--hopInputName NAME] [--cmdlinePhil k=v ...]` (`--cmdLinePhil` too).
//! `--cmdlinePhil` takes one or more values, so put it last. Under MPI
//! (`--features mpi`, `srun`/`mpirun`) every rank takes a contiguous block of
//! shots; rank 0 writes the summary table and the catalog.
//!
//! `--device cpu|cuda|auto` (default `auto`, see [`crate::gpu::DeviceChoice`])
//! chooses the kernel backend; `--numdev` is accepted for the reference's
//! command lines and ignored (the visible devices decide).

use std::path::PathBuf;

use clap::Args;

use crate::gpu::DeviceArgs;
use crate::predict::integrate::{run, IntegrateOptions};

#[derive(Args, Debug)]
pub struct IntegrateArgs {
    /// The prediction phil (diffBragg parameters: predictions.*, simulator.*, ...).
    pub pred_phil: PathBuf,
    /// The spot-finding phil (DIALS stills_process parameters: spotfinder.*).
    pub proc_phil: PathBuf,
    /// The stage-1 output folder (its shot_params and spectra tables).
    pub stage1_dir: PathBuf,
    /// Output folder (created; must not already hold predictions).
    pub outdir: PathBuf,
    /// The reference's GPUs per node: accepted and ignored (rank r uses GPU
    /// (node-local r) mod (visible GPUs); restrict them with CUDA_VISIBLE_DEVICES).
    #[arg(long, default_value_t = 1)]
    pub numdev: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Basename of the per-shot summary table written as NAME.parquet and NAME.csv.
    #[arg(long = "hopInputName", default_value = "preds_for_hopper")]
    pub hop_input_name: String,
    /// Overrides `key=value` for either phil: diffBragg names go to the pred phil,
    /// DIALS names (e.g. spotfinder.lookup.mask=mask.npy) to the proc phil.
    #[arg(long = "cmdlinePhil", alias = "cmdLinePhil", num_args = 1.., value_name = "KEY=VALUE")]
    pub cmdline_phil: Vec<String>,
    /// Keep the model shoeboxes in the prediction .refl files.
    #[arg(long = "keepShoeboxes")]
    pub keep_shoeboxes: bool,
    /// One log line per shot.
    #[arg(long)]
    pub loud: bool,
    /// Not implemented (reference: merge predictions that share an HKL).
    #[arg(long = "filterDupes", hide = true)]
    pub filter_dupes: bool,
    /// Not implemented (reference: extra tables for several weak fractions).
    #[arg(long = "scanWeakFracs", hide = true)]
    pub scan_weak_fracs: bool,
    /// Not implemented (reference: DIALS integration; broken at cctbx HEAD).
    #[arg(long = "dialsInteg", hide = true)]
    pub dials_integ: bool,
    /// Ignored (unused in the reference too).
    #[arg(long = "pklTag", hide = true)]
    pub pkl_tag: Option<String>,
}

pub fn run_cli(args: IntegrateArgs) -> anyhow::Result<()> {
    for (set, flag, why) in [
        (args.filter_dupes, "--filterDupes", "merging predictions that share a Miller index"),
        (
            args.scan_weak_fracs,
            "--scanWeakFracs",
            "scanning weak fractions (rerun with predictions.weak_fraction=...)",
        ),
        (args.dials_integ, "--dialsInteg", "DIALS summation integration (broken in the reference too)"),
    ] {
        if set {
            anyhow::bail!("{flag} ({why}) is not implemented");
        }
    }
    if args.numdev == 0 {
        anyhow::bail!("--numdev must be at least 1");
    }
    let comm = crate::dist::init();
    crate::dist::install_abort_on_panic(comm.as_ref());
    let opts = IntegrateOptions {
        pred_phil: args.pred_phil,
        proc_phil: args.proc_phil,
        stage1_dir: args.stage1_dir,
        outdir: args.outdir.clone(),
        numdev: args.numdev,
        device: args.device.device,
        hop_input_name: args.hop_input_name.clone(),
        cmdline_phil: args.cmdline_phil,
        keep_shoeboxes: args.keep_shoeboxes,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        verbose: args.loud,
    };
    match run(&opts, comm.as_ref()) {
        Ok(s) => {
            if comm.is_root() {
                println!(
                    "predicted {} of {} shots: {} predictions; {} failed",
                    s.n_predicted, s.n_shots, s.n_predictions, s.n_failed
                );
                for n in &s.notes {
                    println!("note: {n}");
                }
                let out = args.outdir.display();
                println!("tables: {out} (diffbragg sql {out} \"SELECT * FROM predict_per_shot\")");
                println!("summary: {out}/{}.parquet, {out}/{}.csv", args.hop_input_name, args.hop_input_name);
                println!("DIALS files: {out}/expts_and_refls/rank*_preds.{{expt,refl}}");
            }
            Ok(())
        }
        Err(e) => {
            if comm.size() > 1 {
                eprintln!("rank {}: error: {e}; aborting all ranks", comm.rank());
                comm.abort(2);
            }
            Err(e.into())
        }
    }
}
