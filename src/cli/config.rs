//! `diffbragg config`: show the effective configuration of a program, or
//! explain one parameter.
//!
//! `--cmdlinePhil` takes one or more `key=value` arguments (like argparse's
//! `nargs="+"` in diffBragg), so put the phil files before it. Relative paths
//! typed in `--cmdlinePhil` resolve against the current directory; relative
//! paths inside phil files resolve against each file's folder.

use crate::config::{render, Config, EnsHopper, Hopper, Integrate, ProgramKind, StillsProcess};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Print every effective value with where it came from, then the warnings.
    Show(ShowArgs),
    /// Print a parameter's type, default, units, status and help.
    Explain {
        /// Full dotted name, a dotted suffix (all matches are shown) or a scope.
        param: String,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ProgramArg {
    /// Stage 1 (simtbx.diffBragg.hopper).
    Hopper,
    /// Prediction (diffBragg.integrate's pred phil).
    Integrate,
    /// Spot finding (diffBragg.integrate's proc phil, DIALS stills_process).
    StillsProcess,
    /// Stage 2 (ens.hopper).
    EnsHopper,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Which program's parameters the files hold.
    #[arg(long, value_enum)]
    pub program: ProgramArg,
    /// Phil files, applied in order (later files override earlier ones).
    pub phil_files: Vec<PathBuf>,
    /// Overrides `key=value`; a key may be a unique dotted suffix (`threshold=1e2`).
    #[arg(long = "cmdlinePhil", alias = "cmdLinePhil", num_args = 1.., value_name = "KEY=VALUE")]
    pub cmdline_phil: Vec<String>,
    /// Only list parameters that were set (leave out defaults).
    #[arg(long)]
    pub only_set: bool,
}

fn show<K: ProgramKind>(a: &ShowArgs) -> crate::error::Result<String> {
    let (cfg, warnings) = Config::<K>::load(&a.phil_files, &a.cmdline_phil)?;
    Ok(render::show(&cfg, &warnings, a.only_set))
}

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let text = match args.action {
        ConfigAction::Explain { param } => render::explain(&param)?,
        ConfigAction::Show(a) => match a.program {
            ProgramArg::Hopper => show::<Hopper>(&a)?,
            ProgramArg::Integrate => show::<Integrate>(&a)?,
            ProgramArg::StillsProcess => show::<StillsProcess>(&a)?,
            ProgramArg::EnsHopper => show::<EnsHopper>(&a)?,
        },
    };
    print!("{text}");
    Ok(())
}
