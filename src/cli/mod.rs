//! Command-line front end. `main.rs` only calls [`run`].
//!
//! Each subcommand lives in its own file: its clap `Args` struct (low-level,
//! parse only) and a `run` function that validates them into a config and
//! calls the library.

pub mod bench;
pub mod config;
pub mod ens_hopper;
pub mod hopper;
pub mod import;
pub mod integrate;
pub mod report;
pub mod simulate;
pub mod sql;
pub mod synth;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "diffbragg", version, about = "Pixel-level refinement of XFEL still shots")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stage 1: per-shot pixel refinement (diffBragg's hopper).
    Hopper(hopper::HopperArgs),
    /// Predict spots from stage-1 models and label them against the data (diffBragg.integrate).
    Integrate(integrate::IntegrateArgs),
    /// Stage 2: refine structure factors globally over all shots (ens.hopper).
    EnsHopper(ens_hopper::EnsHopperArgs),
    /// Diagnostics of an output folder: stage-1 residuals and Δψ per panel, predictions, stage-2 convergence and CC.
    Report(report::ReportArgs),
    /// Generate a synthetic stage-1 dataset with known truth.
    Synth(synth::SynthArgs),
    /// Import DIALS experiments and reflections (and .lam spectra) into a store's tables.
    Import(import::ImportArgs),
    /// Run one SQL query over a store's tables and views.
    Sql(sql::SqlArgs),
    /// Detector residuals and Δψ per panel, input vs refined models (text, CSV, PNG).
    Residuals(crate::report::cli::ResidualsArgs),
    /// Render one shot with the forward model into an HDF5 image and a matching .expt.
    Simulate(Box<simulate::SimulateArgs>),
    /// Inspect configuration: effective values of phil files, or one parameter's documentation.
    Config(config::ConfigArgs),
    /// Benchmarks: `bench kernel`, `bench stage1`, `bench stage2` (throughput, seconds per shot, --device).
    Bench(bench::BenchArgs),
    /// Print version and build information.
    Info,
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info => {
            println!("diffbragg {} (features: mpi={})", env!("CARGO_PKG_VERSION"), cfg!(feature = "mpi"));
            Ok(())
        }
        Command::Config(args) => config::run(args),
        Command::Import(args) => import::run(args),
        Command::Sql(args) => sql::run(args),
        Command::Bench(a) => bench::run(a),
        Command::Integrate(a) => integrate::run_cli(a),
        Command::Residuals(a) => Ok(crate::report::cli::run(&a)?),
        Command::Simulate(a) => simulate::run(*a),
        Command::EnsHopper(a) => ens_hopper::run(a),
        Command::Hopper(a) => hopper::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Report(a) => report::run(a),
    }
}
