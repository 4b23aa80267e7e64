//! `diffbragg synth`: generate a synthetic stage-1 dataset with known truth
//! (see [`crate::synth`] for what is written).

use std::path::PathBuf;

use clap::Args;

use crate::synth::{generate, SynthOptions};

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of shots.
    #[arg(long, default_value_t = 20)]
    pub shots: usize,
    /// Random seed (every shot has its own stream derived from it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Spectral channels of the model spectrum (bins of --delta-en eV).
    #[arg(long, default_value_t = 50)]
    pub channels: usize,
    /// Channel width after downsampling, eV (written as downsamp_spec.delta_en).
    #[arg(long, default_value_t = 1.0)]
    pub delta_en: f64,
    /// Detector side, pixels (one square panel).
    #[arg(long, default_value_t = 1024)]
    pub pixels: usize,
    /// Detector distance, mm.
    #[arg(long, default_value_t = 100.0)]
    pub distance: f64,
    /// Space group of the crystal.
    #[arg(long, default_value = "P 43 21 2")]
    pub space_group: String,
    /// Unit cell a b c alpha beta gamma (Å, degrees).
    #[arg(long, num_args = 6, default_values_t = [79.1, 79.1, 38.2, 90.0, 90.0, 90.0])]
    pub cell: Vec<f64>,
    /// True mosaic-block size Na Nb Nc.
    #[arg(long, num_args = 3, default_values_t = [12.0, 12.0, 10.0])]
    pub ncells: Vec<f64>,
    /// Photons of the 99.9th-percentile Bragg pixel (sets G).
    #[arg(long, default_value_t = 400.0)]
    pub peak_photons: f64,
    /// Background, photons per pixel.
    #[arg(long, default_value_t = 5.0)]
    pub background: f64,
    /// Starting-model misorientation range, degrees.
    #[arg(long, num_args = 2, default_values_t = [0.05, 0.1])]
    pub misorientation: Vec<f64>,
    /// Starting cell edges = true × this.
    #[arg(long, default_value_t = 1.01)]
    pub cell_factor: f64,
    /// init.Nabc in the phil = true × this.
    #[arg(long, default_value_t = 1.5)]
    pub ncells_factor: f64,
    /// Structure factors from a text `h k l F` file instead of the built-in formula.
    #[arg(long)]
    pub hkl: Option<PathBuf>,
    /// ROI side written into the phil.
    #[arg(long, default_value_t = 15)]
    pub shoebox_size: usize,
    /// Instead of generating: score the stage-1 output folder given here
    /// against `--out`'s truth.parquet.
    #[arg(long, value_name = "STAGE1_DIR")]
    pub score: Option<PathBuf>,
}

pub fn run(a: SynthArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.score {
        let truth = crate::synth::read_truth(&a.out.join("truth.parquet"))?;
        let store = crate::store::Store::open(dir)?;
        let s = crate::synth::score(&truth, &store)?;
        print!("{}", crate::synth::score_summary(&s));
        return Ok(());
    }
    let o = SynthOptions {
        out: a.out.clone(),
        shots: a.shots,
        seed: a.seed,
        channels: a.channels,
        delta_en: a.delta_en,
        n_pixels: a.pixels,
        distance_mm: a.distance,
        space_group: a.space_group,
        cell: [a.cell[0], a.cell[1], a.cell[2], a.cell[3], a.cell[4], a.cell[5]],
        ncells: [a.ncells[0], a.ncells[1], a.ncells[2]],
        peak_photons: a.peak_photons,
        background: a.background,
        mis_deg: [a.misorientation[0], a.misorientation[1]],
        cell_factor: a.cell_factor,
        ncells_factor: a.ncells_factor,
        hkl: a.hkl,
        shoebox_size: a.shoebox_size,
        ..Default::default()
    };
    let t = generate(&o)?;
    let spots: Vec<usize> = t.iter().map(|r| r.n_spots).collect();
    println!(
        "{} shots in {} (indexed spots per shot: min {}, max {}); run: diffbragg hopper {}",
        t.len(),
        a.out.display(),
        spots.iter().min().unwrap_or(&0),
        spots.iter().max().unwrap_or(&0),
        a.out.join("hopper.phil").display()
    );
    Ok(())
}
