//! `diffbragg import`: DIALS files into the `experiments`, `reflections` and `spectra` tables.

use std::path::PathBuf;

use clap::Args;

use crate::import::{import, sources_from_spec_file, ImportSource};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// An exp_ref_spec_file (one `expt refl [spec.lam] [exp_idx]` per line), or
    /// `expt refl` pairs: every experiment of each expt is imported with its rows.
    #[arg(required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// The store directory (created if needed).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let sources: Vec<ImportSource> = if args.inputs.len() == 1 {
        sources_from_spec_file(&args.inputs[0])?
    } else if args.inputs.len() % 2 == 0 {
        args.inputs
            .chunks(2)
            .map(|p| ImportSource { expt: p[0].clone(), refl: p[1].clone(), exp_idx: None, spectrum: None })
            .collect()
    } else {
        anyhow::bail!(
            "import: give one spec file, or expt/refl pairs (got {} paths, an odd number)",
            args.inputs.len()
        );
    };
    let s = import(&sources, &args.out)?;
    println!(
        "imported {} shots, {} reflections, {} spectrum channels into {} ({} failures)",
        s.shots,
        s.reflections,
        s.spectra_channels,
        args.out.display(),
        s.failures
    );
    if !s.skipped_columns.is_empty() {
        println!("columns not imported: {}", s.skipped_columns.join(", "));
    }
    println!("query with: diffbragg sql {} \"SELECT * FROM reflections_per_shot\"", args.out.display());
    Ok(())
}
