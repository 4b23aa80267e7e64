//! `diffbragg bench kernel`: throughput of the CPU kernel on the documented
//! standard case, and (with `--reference DIR`) the full-image acceptance check
//! against the nanoBragg reference images.
//!
//! Standard case (self-contained, no input files): one 1024×1024 panel of
//! 75 µm at 100 mm, lysozyme-like tetragonal cell (79.1, 38.2 Å), N = (18, 22,
//! 30), a 50-channel Gaussian spectrum at 9.5 keV (FWHM 20 eV), random
//! anomalous |F| on a ±40 box, and 200 ROIs of 15×15 pixels centred on the
//! brightest separated spots; 1 domain, or 25 generated domains (η = 0.05°).
//! A step is one (pixel, sub-pixel, source, domain) term.
//!
//! `diffbragg bench stage1` / `stage2` time the real stages on a backend
//! (`--device`, default auto): stage 1 refines a synthetic dataset (`synth`,
//! 50 channels, 15×15 ROIs, ≈ 200 per shot at the default 200 mm) end to end; stage 2 repeats the global target
//! evaluation on a synthetic multi-shot store ([`crate::stage2::synth`]).
//! Their data go to a fresh folder under the system temp dir (removed at the
//! end unless `--keep`).

use crate::conventions::{axis_angle, Vec3};
use crate::crystal::UnitCell;
use crate::geometry::{Beam, Detector, Panel};
use crate::kernel::{
    full_detector_pixels, generate_umats, pixels_from_rois, CrystalModel, Eta, FhklScales, FhklTable,
    MosaicSpec, Param, Pixel, PreparedShot, Roi, ShotModel, SimdLevel, Source,
};
use crate::simulate::reference as refcase;
use crate::ucell::{LatticeSystem, UcellParams};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Steps per second of the pixel kernel (forward, and forward + stage-1 gradients).
    Kernel(KernelBenchArgs),
    /// Stage-1 refinement (`hopper`) of a synthetic dataset: seconds per shot, evaluations.
    Stage1(Stage1BenchArgs),
    /// Stage-2 target evaluations on a synthetic store: seconds per shot-evaluation.
    Stage2(Stage2BenchArgs),
}

#[derive(Args, Debug)]
pub struct Stage1BenchArgs {
    /// Shots to synthesise and refine.
    #[arg(long, default_value_t = 4)]
    pub shots: usize,
    /// Spectrum channels of the model.
    #[arg(long, default_value_t = 50)]
    pub channels: usize,
    /// ROI edge, pixels.
    #[arg(long, default_value_t = 15)]
    pub roi_size: usize,
    /// Detector distance (mm) of the 1024² detector of 0.1 mm pixels; sets
    /// the number of ROIs (200 mm gives about 200 per shot).
    #[arg(long, default_value_t = 200.0)]
    pub distance: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Refine one shot at a time (the kernel's loops use every thread).
    #[arg(long)]
    pub serial_shots: bool,
    /// Keep the data and results in this folder (default: a temp folder, removed).
    #[arg(long)]
    pub keep: Option<PathBuf>,
    #[command(flatten)]
    pub device: crate::gpu::DeviceArgs,
}

#[derive(Args, Debug)]
pub struct Stage2BenchArgs {
    /// Shots of the synthetic store.
    #[arg(long, default_value_t = 40)]
    pub shots: usize,
    /// Target evaluations timed (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub evals: usize,
    /// Spectrum sources per shot.
    #[arg(long, default_value_t = 6)]
    pub sources: usize,
    /// Shots evaluated at once (default: all threads).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the store in this folder (default: a temp folder, removed).
    #[arg(long)]
    pub keep: Option<PathBuf>,
    #[command(flatten)]
    pub device: crate::gpu::DeviceArgs,
}

#[derive(Args, Debug)]
pub struct KernelBenchArgs {
    /// Number of ROIs.
    #[arg(long, default_value_t = 200)]
    pub rois: usize,
    /// ROI edge, pixels.
    #[arg(long, default_value_t = 15)]
    pub roi_size: usize,
    /// Spectrum channels.
    #[arg(long, default_value_t = 50)]
    pub sources: usize,
    /// Mosaic-domain counts to measure (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,25")]
    pub domains: Vec<usize>,
    /// Timed evaluations per configuration (the best is reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Which evaluations to time: `forward`, `grad` or `both`.
    #[arg(long, default_value = "both")]
    pub mode: String,
    /// Instruction set of the step loops: `generic`, `avx2`, `avx512` (default: the best available).
    #[arg(long)]
    pub simd: Option<String>,
    /// Threads for the "total" figure (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also reproduce the full nanoBragg reference images in this folder
    /// (`shared/reference`) and report their agreement.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Kernel backend: `cpu` (the default here), `cuda` (error without a usable
    /// GPU) or `auto`. A GPU run reports stage-1 and stage-2 figures (src/gpu/bench.rs).
    #[arg(long, value_enum, default_value_t = crate::gpu::DeviceChoice::Cpu)]
    pub device: crate::gpu::DeviceChoice,
    /// Shots per launch for the stage-2 figure of a GPU run.
    #[arg(long, default_value_t = 16)]
    pub batch_shots: usize,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchWhat::Kernel(a) => run_kernel(a),
        BenchWhat::Stage1(a) => run_stage1(a),
        BenchWhat::Stage2(a) => run_stage2(a),
    }
}

/// A work folder: `keep`, or a fresh one under the temp dir removed on drop.
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new(keep: Option<&std::path::Path>, what: &str) -> Result<WorkDir> {
        let (path, remove) = match keep {
            Some(p) => (p.to_path_buf(), false),
            None => {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
                (
                    std::env::temp_dir().join(format!("diffbragg-bench-{what}-{}-{t}", std::process::id())),
                    true,
                )
            }
        };
        if remove && path.exists() {
            bail!("{} exists", path.display());
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path, remove })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `bench stage1`: synthesise, then run stage 1 on the chosen backend.
fn run_stage1(a: Stage1BenchArgs) -> Result<()> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int32Type};
    if a.shots == 0 || a.channels < 2 || a.roi_size < 3 || a.distance.is_nan() || a.distance <= 0.0 {
        bail!("--shots and --distance must be positive, --channels ≥ 2, --roi-size ≥ 3");
    }
    let comm = crate::dist::SingleProcess;
    let backend: std::sync::Arc<dyn crate::gpu::Backend> = crate::gpu::select(a.device.device, &comm)?.into();
    let work = WorkDir::new(a.keep.as_deref(), "stage1")?;
    let data = work.path.join("data");
    let o = crate::synth::SynthOptions {
        out: data.clone(),
        shots: a.shots,
        seed: a.seed,
        channels: a.channels,
        distance_mm: a.distance,
        shoebox_size: a.roi_size,
        ..Default::default()
    };
    let t = Instant::now();
    let truth = crate::synth::generate(&o)?;
    let t_synth = t.elapsed().as_secs_f64();
    let spots: Vec<usize> = truth.iter().map(|t| t.n_spots).collect();
    let out = work.path.join("stage1");
    let (cfg, _) = crate::config::HopperConfig::load(
        &[data.join("hopper.phil")],
        &[format!("outdir={}", out.display())],
    )?;
    println!("backend: {}", backend.describe());
    println!(
        "data: {} shots, {} channels, {}×{} ROIs, indexed spots per shot {:?} (synth {t_synth:.1} s)",
        a.shots, a.channels, a.roi_size, a.roi_size, spots
    );
    let opts = crate::stage1::RunOptions {
        flush_every: 8,
        progress: Some(false),
        verbose: true, // one line per shot with its ROI and pixel counts
        serial_shots: a.serial_shots,
    };
    let t = Instant::now();
    let s = crate::stage1::driver::run_with_backend(cfg, &comm, &opts, backend.clone())?;
    let wall = t.elapsed().as_secs_f64();
    if s.n_refined == 0 {
        bail!("no shot was refined ({} failed): see the messages above", s.n_failed);
    }
    let store = crate::store::Store::open(&out)?;
    let (mut evals, mut shot_wall, mut names) = (0i64, 0.0f64, std::collections::BTreeSet::new());
    for b in
        store.read_columns(crate::store::Table::ShotParams, &["n_evals", "wall_time_s", "backend"], None)?
    {
        let n = b.column(0).as_primitive::<Int32Type>();
        let w = b.column(1).as_primitive::<Float64Type>();
        let be = b.column(2).as_string::<i32>();
        for i in 0..b.num_rows() {
            evals += n.value(i) as i64;
            shot_wall += w.value(i);
            if !be.is_null(i) {
                names.insert(be.value(i).to_string());
            }
        }
    }
    let threads = if a.serial_shots { 1 } else { rayon::current_num_threads() };
    println!(
        "stage 1: {} refined, {} failed; {evals} evaluations ({:.1} per shot); backend column {names:?}",
        s.n_refined,
        s.n_failed,
        evals as f64 / s.n_refined as f64
    );
    println!(
        "{wall:.2} s wall = {:.3} s/shot with {threads} shot(s) at once; per shot alone {:.3} s; {:.4} s per evaluation",
        wall / s.n_refined as f64,
        shot_wall / s.n_refined as f64,
        shot_wall / evals.max(1) as f64
    );
    Ok(())
}

/// `bench stage2`: a synthetic store, then repeated target evaluations.
fn run_stage2(a: Stage2BenchArgs) -> Result<()> {
    if a.shots == 0 || a.evals == 0 || a.sources == 0 {
        bail!("--shots, --evals and --sources must be positive");
    }
    let comm = crate::dist::SingleProcess;
    let backend: std::sync::Arc<dyn crate::gpu::Backend> = crate::gpu::select(a.device.device, &comm)?.into();
    let work = WorkDir::new(a.keep.as_deref(), "stage2")?;
    let o = crate::stage2::synth::SynthOptions {
        n_shots: a.shots,
        seed: a.seed,
        n_spectrum: a.sources,
        ..Default::default()
    };
    let t = Instant::now();
    let truth = crate::stage2::synth::make(&work.path.join("data"), &o)?;
    let t_synth = t.elapsed().as_secs_f64();
    let over = vec![
        "fix.Fhkl=False".to_string(),
        "fix.G=False".into(),
        "fix.RotXYZ=True".into(),
        "fix.Nabc=True".into(),
        "fix.ucell=True".into(),
        "types.G=positive".into(),
        "space_group=P43212".into(),
        format!("simulator.structure_factors.default_F={}", truth.default_f),
    ];
    let (cfg, _) = crate::config::EnsHopperConfig::from_texts(&[], &over, &work.path)?;
    let opts = crate::stage2::RunOptions {
        quiet: true,
        threads: a.threads,
        ..crate::stage2::RunOptions::new(&truth.store, work.path.join("out"))
    };
    let p = crate::stage2::prepare_with_backend(&cfg, &opts, &comm, backend)?;
    let pr = &p.problem;
    println!("backend: {}", pr.backend().describe());
    println!(
        "data: {} shots, {} ROIs, {} pixels, {} sources per shot, {} structure-factor scales (synth {t_synth:.1} s)",
        truth.shot_ids.len(),
        truth.n_rois,
        truth.n_pixels,
        a.sources,
        pr.layout.n_params()
    );
    // x away from 1 so that every scale and G differs from its start.
    let n = pr.n_x();
    let x: Vec<f64> = (0..n).map(|k| 1.0 + 0.01 * (((k * 7919) % 23) as f64 / 11.0 - 1.0)).collect();
    let e0 = pr.evaluate(&x, &comm)?; // warm-up (PTX load, uploads)
    let mut best = f64::INFINITY;
    let mut total = 0.0;
    for _ in 0..a.evals {
        let t = Instant::now();
        let e = pr.evaluate(&x, &comm)?;
        let dt = t.elapsed().as_secs_f64();
        if e.f.to_bits() != e0.f.to_bits() && pr.backend().name() == "cpu" {
            bail!("the CPU evaluation is not reproducible: f = {} then {}", e0.f, e.f);
        }
        best = best.min(dt);
        total += dt;
    }
    let shots = p.global.len() as f64;
    println!(
        "stage 2: {} evaluations ({} launch(es) each, {} thread(s)); mean {:.4} s, best {best:.4} s per evaluation",
        a.evals,
        pr.n_launches(),
        p.threads,
        total / a.evals as f64
    );
    println!(
        "{:.3e} s per shot-evaluation (mean), {:.3e} (best); f = {:.10e}",
        total / a.evals as f64 / shots,
        best / shots,
        e0.f
    );
    Ok(())
}

fn run_kernel(a: KernelBenchArgs) -> Result<()> {
    if !["forward", "grad", "both"].contains(&a.mode.as_str()) {
        bail!("--mode must be forward, grad or both, not `{}`", a.mode);
    }
    if a.rois == 0 || a.roi_size == 0 || a.sources == 0 || a.repeat == 0 || a.domains.is_empty() {
        bail!("--rois, --roi-size, --sources, --repeat and --domains must be positive");
    }
    if a.device != crate::gpu::DeviceChoice::Cpu {
        let backend = crate::gpu::select(a.device, &crate::dist::SingleProcess)?;
        if backend.name() != "cpu" {
            if a.batch_shots == 0 {
                bail!("--batch-shots must be positive");
            }
            return crate::gpu::bench::run(&*backend, &a);
        }
    }
    let threads =
        a.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let pool_all = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let pool_one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;

    let simd = match a.simd.as_deref() {
        None => None,
        Some("generic") => Some(SimdLevel::Generic),
        Some("avx2") => Some(SimdLevel::Avx2),
        Some("avx512") => Some(SimdLevel::Avx512),
        Some(x) => bail!("--simd must be generic, avx2 or avx512, not `{x}`"),
    };
    let (base, mut fhkl) = standard_case(a.sources)?;
    // Stage-2 style: one ASU id per P1 grid point, one channel.
    let n_grid = fhkl.n_grid() as u32;
    let ids: Vec<u32> = (0..n_grid).collect();
    fhkl.set_asu_id_vec(&ids)?;
    let fhkl = fhkl;
    let rois = pool_all.install(|| find_rois(&base, &fhkl, a.rois, a.roi_size))?;
    let (pixels, _) = pixels_from_rois(&rois, &base.detector)?;
    println!(
        "standard case: {} ROIs of {}×{} px = {} px, {} sources; threads: {threads}; simd: {:?}",
        rois.len(),
        a.roi_size,
        a.roi_size,
        pixels.len(),
        a.sources,
        simd.unwrap_or_else(SimdLevel::detect)
    );
    println!(
        "{:>7} {:>10} {:>12} {:>14} {:>14} {:>12}",
        "domains", "mode", "steps/eval", "steps/s/core", "steps/s total", "s/eval"
    );
    for &nd in &a.domains {
        let mut m = base.clone();
        if nd > 1 {
            // diffBragg's generator makes ± pairs (an even count); for an odd count
            // take the identity plus the first nd − 1 generated domains.
            let axes = m.crystal.u * m.crystal.ucell.b_real();
            let gen = generate_umats(nd + nd % 2, &Eta::Iso(0.05), &axes)?;
            let mut umats = vec![crate::conventions::Mat3::identity()];
            umats.extend_from_slice(&gen.umats[..nd - 1]);
            m.crystal.mosaic = MosaicSpec::Explicit(umats);
        }
        let steps = (pixels.len() * a.sources * nd * m.oversample * m.oversample) as f64;
        let mut params = Param::stage1_defaults(&m.crystal);
        params.push(Param::DetzShift);
        let scales = FhklScales::ones(fhkl.n_asu(), 1);
        let weights: Vec<f64> = (0..pixels.len()).map(|i| ((i % 7) as f64 - 3.0) * 0.1).collect();
        for (mode, ps) in [("forward", &[][..]), ("fwd+grad", &params[..]), ("fhkl-grad", &[][..])] {
            let wanted = match a.mode.as_str() {
                "forward" => mode == "forward",
                "grad" => mode != "forward",
                _ => true,
            };
            if !wanted {
                continue;
            }
            let fhkl_mode = mode == "fhkl-grad";
            let mut shot = PreparedShot::new(&m, &fhkl, fhkl_mode.then_some(&scales), ps)?;
            if let Some(level) = simd {
                shot.set_simd(level)?;
            }
            let time = |pool: &rayon::ThreadPool| -> Result<f64> {
                let mut best = f64::INFINITY;
                for _ in 0..a.repeat {
                    let t = Instant::now();
                    pool.install(|| -> Result<()> {
                        if fhkl_mode {
                            std::hint::black_box(shot.fhkl_scale_gradient(&pixels, &weights)?);
                        } else if ps.is_empty() {
                            std::hint::black_box(shot.forward(&pixels)?);
                        } else {
                            std::hint::black_box(shot.forward_with_derivs(&pixels)?);
                        }
                        Ok(())
                    })?;
                    best = best.min(t.elapsed().as_secs_f64());
                }
                Ok(best)
            };
            let t1 = time(&pool_one)?;
            let tn = time(&pool_all)?;
            println!(
                "{nd:>7} {mode:>10} {steps:>12.3e} {:>14.3e} {:>14.3e} {tn:>12.4}",
                steps / t1,
                steps / tn
            );
        }
    }
    if let Some(dir) = a.reference {
        pool_all.install(|| reference_check(&dir))?;
    }
    Ok(())
}

/// The standard shot (see the module doc) with `n_sources` channels.
pub fn standard_case(n_sources: usize) -> Result<(ShotModel, FhklTable)> {
    let panel = Panel {
        name: "bench".into(),
        origin: Vec3::new(-38.4, 38.4, -100.0),
        fast: Vec3::x(),
        slow: -Vec3::y(),
        pixel_size: [0.075, 0.075],
        image_size: [1024, 1024],
        ..Default::default()
    };
    let detector = Detector { panels: vec![panel], hierarchy: None };
    let beam = Beam { wavelength: 1.3051, polarization_fraction: 0.995, ..Default::default() };
    let e0 = 9500.0;
    let sigma = 20.0 / 2.3548;
    let sources: Vec<Source> = (0..n_sources)
        .map(|i| {
            let e = e0 + 3.0 * sigma * (2.0 * (i as f64 + 0.5) / n_sources as f64 - 1.0);
            Source {
                wavelength: crate::conventions::wavelength_a_from_energy_ev(e),
                weight: (-0.5 * ((e - e0) / sigma).powi(2)).exp(),
                channel: 0,
            }
        })
        .collect();
    let cell = UnitCell::new(79.1, 79.1, 38.2, 90.0, 90.0, 90.0);
    let u = axis_angle(&Vec3::new(0.31, -0.62, 0.72), 0.97);
    let crystal =
        CrystalModel::new(u, UcellParams::from_cell(LatticeSystem::Tetragonal, &cell)?, [18.0, 22.0, 30.0]);
    let model = ShotModel::new(detector, beam, sources, crystal, 1e24);
    // Deterministic pseudo-random anomalous amplitudes (splitmix64).
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut hkl, mut f) = (Vec::new(), Vec::new());
    for h in -40..=40 {
        for k in -40..=40 {
            for l in -20..=20 {
                hkl.push([h, k, l]);
                f.push(10.0 + 190.0 * next());
            }
        }
    }
    Ok((model, FhklTable::new(&hkl, &f, 0.0, false)?))
}

/// ROIs centred on the brightest spots at least `size` pixels apart (one domain).
pub fn find_rois(model: &ShotModel, fhkl: &FhklTable, n: usize, size: usize) -> Result<Vec<Roi>> {
    let all = full_detector_pixels(&model.detector);
    let v = PreparedShot::new(model, fhkl, None, &[])?.forward(&all)?;
    let mut order: Vec<usize> = (0..all.len()).filter(|&i| v[i] > 0.0).collect();
    order.sort_by(|&i, &j| v[j].total_cmp(&v[i]));
    let mut picked: Vec<Pixel> = Vec::new();
    for &i in &order {
        let p = all[i];
        if picked
            .iter()
            .all(|q| p.fast.abs_diff(q.fast) as usize >= size || p.slow.abs_diff(q.slow) as usize >= size)
        {
            picked.push(p);
            if picked.len() == n {
                break;
            }
        }
    }
    if picked.len() < n {
        bail!("the standard case has only {} separated spots, {n} requested", picked.len());
    }
    let [nf, ns] = model.detector.panels[0].image_size;
    let half = size / 2;
    Ok(picked
        .iter()
        .map(|p| {
            let x0 = (p.fast as usize).saturating_sub(half).min(nf - size);
            let y0 = (p.slow as usize).saturating_sub(half).min(ns - size);
            Roi { panel: 0, x0, x1: x0 + size, y0, y1: y0 + size }
        })
        .collect())
}

fn reference_check(dir: &std::path::Path) -> Result<()> {
    println!(
        "\nreference images ({}), full detector / ROI, no fitted scale, nanoBragg's sub-pixel convention:",
        dir.display()
    );
    println!(
        "{:>16} {:>10} {:>9} {:>12} {:>12} {:>9}",
        "case", "pixels", "compared", "max rel", "sum rel", "s"
    );
    for name in refcase::CASES {
        let case = refcase::load(dir, name).with_context(|| format!("loading {name}"))?;
        let pixels = case.rendered_pixels();
        let t = Instant::now();
        let vals = PreparedShot::new(&case.inputs.model, &case.inputs.fhkl, None, &[])?.forward(pixels)?;
        let dt = t.elapsed().as_secs_f64();
        let c = refcase::compare(&case, pixels, &vals, 1e-3);
        println!(
            "{name:>16} {:>10} {:>9} {:>12.3e} {:>12.3e} {dt:>9.3}",
            pixels.len(),
            c.n_compared,
            c.max_rel,
            (c.sum_ours - c.sum_ref) / c.sum_ref
        );
    }
    Ok(())
}
