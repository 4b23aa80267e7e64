//! `diffbragg simulate`: render one shot with the forward model into an HDF5
//! file (diffBragg's layout) and a matching `.expt`. The library side is
//! [`crate::simulate`]; this file only parses and checks the flags.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::gpu::DeviceArgs;
use crate::kernel::{Eta, LatticeShape, SubpixelFactors};
use crate::simulate::{
    simulate, Fluence, Mosaic, Noise, RoiSpec, SimulateConfig, SpectrumSource, StructureFactors,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShapeArg {
    /// diffBragg's Gaussian (full N tensor).
    Gauss,
    /// nanoBragg's parallelepiped (sinc-like) transform.
    Square,
    /// nanoBragg's sphere.
    Round,
    /// nanoBragg's top hat.
    Tophat,
    /// The Gaussian, set to 0 where its exponent reaches 35 (nanoBragg GAUSS_ARGCHK).
    GaussArgchk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SubpixelArg {
    /// Ω at every sub-pixel, polarization at the pixel centre (diffBragg).
    Diffbragg,
    /// Ω and polarization once, at the first sub-pixel (nanoBragg's standalone program).
    Nanobragg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NoiseArg {
    None,
    Poisson,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Experiment list with the beam, detector and crystal.
    #[arg(long)]
    pub expt: PathBuf,
    /// Which experiment of the list.
    #[arg(long, default_value_t = 0)]
    pub exp_idx: usize,
    /// Spectrum file (.lam: a header line, then `wavelength_Å,weight` rows).
    /// Default: one channel at the beam wavelength.
    #[arg(long, conflicts_with = "spectrum_from_image")]
    pub spectrum: Option<PathBuf>,
    /// Use the spectrum stored with the experiment's image.
    #[arg(long)]
    pub spectrum_from_image: bool,
    /// Structure factors from an MTZ (expanded to P1 in the space group).
    #[arg(long, conflicts_with = "hkl", requires = "mtz_column")]
    pub mtz: Option<PathBuf>,
    /// MTZ columns, as diffBragg's mtz_column: `F`, `F,SIGF`, `IMEAN`, `F(+),F(-)`, ...
    #[arg(long, requires = "mtz")]
    pub mtz_column: Option<String>,
    /// Structure factors as text `h k l F` (gzip accepted), expanded in the space group.
    #[arg(long)]
    pub hkl: Option<PathBuf>,
    /// Amplitude of every reflection the structure factors do not give.
    #[arg(long, default_value_t = 0.0)]
    pub default_f: f64,
    /// Space group of the structure factors and the crystal (number, H-M or Hall
    /// symbol). Default: the crystal's Hall symbol.
    #[arg(long)]
    pub space_group: Option<String>,
    /// Mosaic block size along a, b, c (unit cells).
    #[arg(long, num_args = 3, value_names = ["NA", "NB", "NC"], required = true)]
    pub ncells: Vec<f64>,
    /// Off-diagonal block-size entries Nd, Ne, Nf (Gaussian shape only).
    #[arg(long, num_args = 3, value_names = ["ND", "NE", "NF"])]
    pub ncells_def: Option<Vec<f64>>,
    /// Isotropic mosaic spread, degrees (with --mosaic-domains).
    #[arg(long, conflicts_with_all = ["eta_abc", "mosaic_umats"])]
    pub eta: Option<f64>,
    /// Anisotropic mosaic spread along a, b, c, degrees (with --mosaic-domains).
    #[arg(long, num_args = 3, value_names = ["ETA_A", "ETA_B", "ETA_C"], conflicts_with = "mosaic_umats")]
    pub eta_abc: Option<Vec<f64>>,
    /// Number of mosaic domains made by diffBragg's generator (1 or even).
    #[arg(long, conflicts_with = "mosaic_umats")]
    pub mosaic_domains: Option<usize>,
    /// Explicit mosaic domains: one row-major 3×3 rotation per line.
    #[arg(long)]
    pub mosaic_umats: Option<PathBuf>,
    /// Lattice transform shape.
    #[arg(long, value_enum, default_value = "gauss")]
    pub shape: ShapeArg,
    /// Overall scale G.
    #[arg(long = "G", default_value_t = 1.0)]
    pub g: f64,
    /// Fluence, photons/m² (default: --total-flux / --beamsize-mm², 1e12 photons in 1 mm).
    #[arg(long, conflicts_with_all = ["total_flux", "beamsize_mm"])]
    pub fluence: Option<f64>,
    /// Photons in the shot.
    #[arg(long)]
    pub total_flux: Option<f64>,
    /// Edge of the (square) beam, mm.
    #[arg(long)]
    pub beamsize_mm: Option<f64>,
    /// Sub-pixels per pixel edge.
    #[arg(long, default_value_t = 1)]
    pub oversample: usize,
    /// Where the solid angle and polarization of an oversampled pixel are evaluated.
    #[arg(long, value_enum, default_value = "diffbragg")]
    pub subpixel_factors: SubpixelArg,
    /// No polarization factor (default: Kahn factor from the beam's polarization fraction).
    #[arg(long)]
    pub nopolar: bool,
    /// Solid angle 1/R² instead of the pixel's (nanoBragg point_pixel).
    #[arg(long)]
    pub point_pixel: bool,
    /// Render only this inclusive pixel box (fast F0..=F1, slow S0..=S1), on every panel.
    #[arg(long, num_args = 4, value_names = ["F0", "F1", "S0", "S1"], conflicts_with = "roi_refl")]
    pub roi: Option<Vec<usize>>,
    /// Restrict --roi to one panel.
    #[arg(long, requires = "roi")]
    pub roi_panel: Option<usize>,
    /// Render only the bounding boxes of this reflection table's rows of the experiment.
    #[arg(long)]
    pub roi_refl: Option<PathBuf>,
    /// Grow each --roi-refl box by this many pixels.
    #[arg(long, requires = "roi_refl")]
    pub roi_pad: Option<usize>,
    /// Noise model.
    #[arg(long, value_enum, default_value = "none")]
    pub noise: NoiseArg,
    /// Gaussian readout noise σ, ADU (with --noise poisson).
    #[arg(long, default_value_t = 0.0)]
    pub readout_sigma: f64,
    /// Image units: ADU per photon (1 = photons).
    #[arg(long, default_value_t = 1.0)]
    pub adu_per_photon: f64,
    /// Seed of the noise generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output HDF5 file; the .expt is written next to it (same name, extension .expt).
    #[arg(long)]
    pub out: PathBuf,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Turn the flags into a [`SimulateConfig`] (every cross-flag rule checked here).
pub fn config_from_args(a: &SimulateArgs) -> anyhow::Result<SimulateConfig> {
    let n3 = |v: &[f64]| [v[0], v[1], v[2]];
    let mut c = SimulateConfig::new(&a.expt, n3(&a.ncells), &a.out);
    c.exp_idx = a.exp_idx;
    c.spectrum = match (&a.spectrum, a.spectrum_from_image) {
        (Some(p), _) => SpectrumSource::Lam(p.clone()),
        (None, true) => SpectrumSource::FromImage,
        (None, false) => SpectrumSource::Monochromatic,
    };
    c.structure_factors = match (&a.mtz, &a.mtz_column, &a.hkl) {
        (Some(p), Some(col), None) => StructureFactors::Mtz { path: p.clone(), column: col.clone() },
        (None, None, Some(p)) => StructureFactors::HklText(p.clone()),
        (None, None, None) => StructureFactors::DefaultOnly,
        _ => anyhow::bail!("give --mtz with --mtz-column, or --hkl, not both"),
    };
    c.default_f = a.default_f;
    c.space_group = a.space_group.clone();
    if let Some(d) = &a.ncells_def {
        c.ncells_def = n3(d);
    }
    c.shape = match a.shape {
        ShapeArg::Gauss => LatticeShape::Gauss,
        ShapeArg::Square => LatticeShape::Square,
        ShapeArg::Round => LatticeShape::Round,
        ShapeArg::Tophat => LatticeShape::Tophat,
        ShapeArg::GaussArgchk => LatticeShape::GaussArgchk,
    };
    let eta = match (a.eta, &a.eta_abc) {
        (Some(e), None) => Some(Eta::Iso(e)),
        (None, Some(v)) => Some(Eta::Aniso(n3(v))),
        (None, None) => None,
        _ => anyhow::bail!("give --eta or --eta-abc, not both"),
    };
    c.mosaic = match (&a.mosaic_umats, a.mosaic_domains, eta) {
        (Some(p), None, None) => Mosaic::Umats(p.clone()),
        (None, Some(n), Some(eta)) => Mosaic::Generated { n_domains: n, eta },
        (None, Some(1), None) => Mosaic::Single,
        (None, None, None) => Mosaic::Single,
        (None, Some(n), None) => anyhow::bail!("--mosaic-domains {n} needs a spread: --eta or --eta-abc"),
        (None, None, Some(_)) => anyhow::bail!("--eta/--eta-abc need --mosaic-domains (an even number)"),
        _ => anyhow::bail!("--mosaic-umats excludes --mosaic-domains, --eta and --eta-abc"),
    };
    c.scale = a.g;
    c.fluence = match (a.fluence, a.total_flux, a.beamsize_mm) {
        (Some(f), None, None) => Fluence::PerArea(f),
        (None, t, b) => Fluence::Flux { total_flux: t.unwrap_or(1e12), beamsize_mm: b.unwrap_or(1.0) },
        _ => anyhow::bail!("--fluence excludes --total-flux and --beamsize-mm"),
    };
    c.oversample = a.oversample;
    c.subpixel_factors = match a.subpixel_factors {
        SubpixelArg::Diffbragg => SubpixelFactors::OmegaPerSubpixel,
        SubpixelArg::Nanobragg => SubpixelFactors::FirstSubpixel,
    };
    c.polarization = !a.nopolar;
    c.point_pixel = a.point_pixel;
    c.roi = match (&a.roi, &a.roi_refl) {
        (Some(r), None) => RoiSpec::Box { f0: r[0], f1: r[1], s0: r[2], s1: r[3], panel: a.roi_panel },
        (None, Some(p)) => RoiSpec::Refl { path: p.clone(), pad: a.roi_pad.unwrap_or(0) },
        (None, None) => RoiSpec::Full,
        _ => anyhow::bail!("give --roi or --roi-refl, not both"),
    };
    c.noise = match a.noise {
        NoiseArg::None => {
            if a.readout_sigma != 0.0 {
                anyhow::bail!("--readout-sigma needs --noise poisson");
            }
            Noise::None
        }
        NoiseArg::Poisson => Noise::Poisson { readout_sigma: a.readout_sigma, seed: a.seed },
    };
    c.adu_per_photon = a.adu_per_photon;
    c.progress = !a.no_progress;
    c.device = a.device.device;
    Ok(c)
}

pub fn run(a: SimulateArgs) -> anyhow::Result<()> {
    let cfg = config_from_args(&a)?;
    let r = simulate(&cfg)?;
    let e = &r.expansion;
    println!(
        "structure factors: {} read, {} in P1 ({} Friedel mates added{}{}), space group {}",
        e.input,
        e.p1,
        e.friedel_added,
        if e.centric_minus_dropped > 0 {
            format!(", {} centric F(-) dropped", e.centric_minus_dropped)
        } else {
            String::new()
        },
        if e.centring_absent_dropped > 0 {
            format!(", {} centring-absent dropped", e.centring_absent_dropped)
        } else {
            String::new()
        },
        r.space_group
    );
    println!(
        "rendered {} pixels in {:.2} s on {}: {:.6e} photons in total, brightest pixel {:.6e} (fluence {:.4e} photons/m²)",
        r.n_pixels, r.seconds, r.device, r.sum_photons, r.max_photons, r.fluence
    );
    println!("wrote {} and {}", r.h5.display(), r.expt.display());
    Ok(())
}
