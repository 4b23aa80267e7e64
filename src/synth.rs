//! `diffbragg synth`: a synthetic stage-1 dataset with known truth.
//!
//! For each shot: a random crystal orientation (uniform on SO(3)) of a
//! lysozyme-like crystal (default P 43 21 2, 79.1 × 79.1 × 38.2 Å), a SASE-like
//! spiky raw spectrum stored with the image, the noise-free image from the
//! kernel (with the spectrum stage 1 derives from that raw trace, so model and
//! data agree), a smooth background, Poisson and Gaussian readout noise, DIALS
//! strong spots from the spot finder indexed with the true crystal, and the
//! **perturbed** starting model stage 1 begins from (misoriented by a random
//! angle in `[mis_min, mis_max]` degrees about a random axis, every cell edge
//! ×`cell_factor`; `init.Nabc` = truth × `ncells_factor` goes in the phil).
//!
//! Files written into `--out` (relative paths inside them point to their own folder):
//! * `shot_NNN.h5`: the image (ADU) and its raw spectrum (diffBragg HDF5 layout:
//!   `/images` + `/spectrum_energies`, `/spectrum_weights`);
//! * `shot_NNN.expt` / `shot_NNN.refl`: the starting model and the indexed spots
//!   (`miller_index`, `xyzobs.px.value`, `xyzobs.px.variance`, `xyzobs.mm.*`,
//!   `panel`, `rlp`, `s1`, `bbox`, `flags` = indexed|used|strong, `id` 0);
//! * `spec_file.out`, `hopper.phil` (ready for `diffbragg hopper`), `F.mtz` (the
//!   structure factors, column `F`), `truth.parquet` (one row per shot).
//!
//! Structure factors: by default a deterministic pseudo-random Wilson-like
//! amplitude per ASU reflection (`hkl_amplitude`), or amplitudes read from a
//! text `h k l F` file (`--hkl`, e.g. a P1 list). Nothing random depends on the
//! thread count: every shot has its own ChaCha stream from the seed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};
use rayon::prelude::*;

use crate::conventions::{axis_angle, Mat3, Vec3, EV_ANGSTROM};
use crate::crystal::{Crystal, UnitCell};
use crate::error::{io_err, Error, Result};
use crate::experiment::{Experiment, ImageSetRef};
use crate::geometry::{Beam, Detector, Panel};
use crate::image::{Image, PanelImage};
use crate::kernel::{sources_from_spectrum, FhklTable, ShotModel};
use crate::reflections::flags;
use crate::spectrum::Spectrum;
use crate::stage1::downsample::{downsample, DownsampleParams};
use crate::stage1::model::{base_crystal, fluence, kernel_eval};
use crate::stage1::params::{lattice_system, ucell_params};
use crate::symmetry::SpaceGroup;

/// What to generate (the CLI flags; see `diffbragg synth --help`).
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub out: PathBuf,
    pub shots: usize,
    pub seed: u64,
    /// Model spectrum channels (bins of `delta_en` eV after downsampling).
    pub channels: usize,
    pub delta_en: f64,
    pub energy_ev: f64,
    pub space_group: String,
    pub cell: [f64; 6],
    pub ncells: [f64; 3],
    /// Detector: square panel side (pixels), pixel size and distance (mm).
    pub n_pixels: usize,
    pub pixel_mm: f64,
    pub distance_mm: f64,
    /// Brightness: target value (photons) of the 99.9th-percentile Bragg pixel.
    pub peak_photons: f64,
    /// Flat background level, photons per pixel.
    pub background: f64,
    pub sigma_r_adu: f64,
    pub adu_per_photon: f64,
    pub mis_deg: [f64; 2],
    pub cell_factor: f64,
    pub ncells_factor: f64,
    pub d_min: f64,
    pub hkl: Option<PathBuf>,
    pub shoebox_size: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            out: PathBuf::from("synth"),
            shots: 20,
            seed: 1,
            channels: 50,
            delta_en: 1.0,
            energy_ev: 9500.0,
            space_group: "P 43 21 2".into(),
            cell: [79.1, 79.1, 38.2, 90.0, 90.0, 90.0],
            ncells: [12.0, 12.0, 10.0],
            n_pixels: 1024,
            pixel_mm: 0.1,
            distance_mm: 100.0,
            peak_photons: 400.0,
            background: 5.0,
            sigma_r_adu: 3.0,
            adu_per_photon: 1.0,
            mis_deg: [0.05, 0.1],
            cell_factor: 1.01,
            ncells_factor: 1.5,
            d_min: 1.6,
            hkl: None,
            shoebox_size: 15,
        }
    }
}

/// The true model of one shot (a `truth.parquet` row).
#[derive(Clone, Debug)]
pub struct Truth {
    pub shot_id: i64,
    pub expt: PathBuf,
    pub u: Mat3,
    pub cell: [f64; 6],
    pub ncells: [f64; 3],
    pub g: f64,
    pub misorientation_deg: f64,
    pub n_spots: usize,
}

/// Deterministic Wilson-like amplitude of an ASU reflection (B = 20 Å²).
pub fn hkl_amplitude(h: [i32; 3], stol2: f64) -> f64 {
    let mut x = (h[0] as i64 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (h[1] as i64 as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (h[2] as i64 as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    // |F| of a Wilson acentric distribution: Rayleigh, mean ≈ 0.89·scale.
    1000.0 * (-u.ln()).sqrt() * (-20.0 * stol2).exp() + 50.0
}

/// A SASE-like raw trace: `(energies eV, weights)`, 0.1 eV steps, with a
/// baseline, covering `channels` bins of `delta_en` plus 5 eV tails.
pub fn sase_spectrum(rng: &mut ChaCha8Rng, e0: f64, channels: usize, delta_en: f64) -> (Vec<f64>, Vec<f64>) {
    let span = (channels as f64 + 0.999) * delta_en;
    let step = 0.1;
    let lo = e0 - span / 2.0 - 5.0;
    let n = ((span + 10.0) / step).round() as usize + 1;
    let en: Vec<f64> = (0..n).map(|i| lo + i as f64 * step).collect();
    let centre = e0 + rng.random_range(-0.05..0.05) * span;
    let sig_env = 0.18 * span;
    let n_spikes = 12 + (rng.random::<f64>() * 10.0) as usize;
    let spikes: Vec<(f64, f64, f64)> = (0..n_spikes)
        .map(|_| {
            let c = centre + sig_env * 1.5 * (rng.random::<f64>() * 2.0 - 1.0);
            let w = 0.3 + 0.5 * rng.random::<f64>();
            let a = -(rng.random::<f64>().max(1e-12)).ln();
            (c, w, a)
        })
        .collect();
    let mut wt: Vec<f64> = en
        .iter()
        .map(|&e| {
            let env = (-0.5 * ((e - centre) / sig_env).powi(2)).exp();
            let s: f64 = spikes.iter().map(|&(c, w, a)| a * (-0.5 * ((e - c) / w).powi(2)).exp()).sum();
            env * s
        })
        .collect();
    let peak = wt.iter().cloned().fold(0.0, f64::max).max(1e-12);
    for w in &mut wt {
        *w = 1000.0 * *w / peak + 20.0 + rng.random::<f64>();
    }
    (en, wt)
}

fn random_rotation(rng: &mut ChaCha8Rng) -> Mat3 {
    // Uniform unit quaternion (Shoemake).
    let (u1, u2, u3): (f64, f64, f64) = (rng.random(), rng.random(), rng.random());
    let tau = std::f64::consts::TAU;
    let (a, b) = ((1.0 - u1).sqrt(), u1.sqrt());
    let (w, x, y, z) =
        (a * (tau * u2).sin(), a * (tau * u2).cos(), b * (tau * u3).sin(), b * (tau * u3).cos());
    crate::conventions::quaternion_matrix(w, x, y, z)
}

fn random_axis(rng: &mut ChaCha8Rng) -> Vec3 {
    let z: f64 = rng.random_range(-1.0..1.0);
    let p: f64 = rng.random_range(0.0..std::f64::consts::TAU);
    let r = (1.0 - z * z).sqrt();
    Vec3::new(r * p.cos(), r * p.sin(), z)
}

/// The detector: one square panel, beam through its centre, facing the beam (−z).
pub fn synth_detector(o: &SynthOptions) -> Detector {
    let half = o.n_pixels as f64 * o.pixel_mm / 2.0;
    Detector {
        panels: vec![Panel {
            name: "synth".into(),
            panel_type: "SENSOR_PAD".into(),
            origin: Vec3::new(-half, half, -o.distance_mm),
            fast: Vec3::x(),
            slow: -Vec3::y(),
            pixel_size: [o.pixel_mm, o.pixel_mm],
            image_size: [o.n_pixels, o.n_pixels],
            trusted_range: [-100.0, 1e9],
            ..Default::default()
        }],
        hierarchy: None,
    }
}

fn synth_beam(o: &SynthOptions) -> Beam {
    Beam {
        direction: Vec3::new(0.0, 0.0, 1.0),
        wavelength: EV_ANGSTROM / o.energy_ev,
        polarization_normal: Vec3::new(0.0, 1.0, 0.0),
        polarization_fraction: 0.999,
        ..Default::default()
    }
}

/// Write the structure factors as an MTZ (`F`) and return the P1 table stage 1 will build from it.
fn write_structure_factors(o: &SynthOptions, sg: &SpaceGroup, path: &Path) -> Result<FhklTable> {
    let cell = UnitCell::from_array(o.cell);
    let (hkl, f): (Vec<[i32; 3]>, Vec<f64>) = match &o.hkl {
        Some(p) => {
            let a = crate::io::hkl_text::read_hkl_text(p)?;
            let asu = crate::symmetry::ReciprocalAsu::new(sg);
            let mut seen = std::collections::BTreeMap::new();
            for (h, f) in a.hkl.iter().zip(&a.f) {
                seen.entry(asu.to_asu(h).0).or_insert(*f);
            }
            seen.into_iter().unzip()
        }
        None => {
            let hkl = crate::symmetry::miller::unique_reflections(&cell, sg, o.d_min, false)?;
            let res = crate::symmetry::miller::Resolution::new(&cell)?;
            let f = hkl.iter().map(|h| hkl_amplitude(*h, res.d_star_sq(h) / 4.0)).collect();
            (hkl, f)
        }
    };
    let mut mtz = crate::io::mtz::Mtz::new_merged(
        cell,
        sg.clone(),
        &hkl,
        ("synth", "synth", "synth"),
        EV_ANGSTROM / o.energy_ev,
    );
    mtz.add_column("F", 'F', f.iter().map(|&v| v as f32).collect())?;
    mtz.write(path)?;
    crate::stage1::driver::fhkl_from_mtz(path, "F", 0.0)
}

/// Generate the dataset; returns the truth rows.
pub fn generate(o: &SynthOptions) -> Result<Vec<Truth>> {
    if o.shots == 0 {
        return Err(Error::param("--shots", "must be at least 1"));
    }
    if o.channels < 2 {
        return Err(Error::param("--channels", "must be at least 2"));
    }
    std::fs::create_dir_all(&o.out).map_err(|e| io_err(&o.out, e))?;
    let out = std::fs::canonicalize(&o.out).map_err(|e| io_err(&o.out, e))?;
    let sg = SpaceGroup::parse(&o.space_group)?;
    let hall = format!(" {}", sg.hall());
    let system = lattice_system(&sg);
    let cell = UnitCell::from_array(o.cell);
    let ucell = ucell_params(system, &cell)?;
    let fhkl = write_structure_factors(o, &sg, &out.join("F.mtz"))?;
    let det = synth_detector(o);
    let beam = synth_beam(o);
    let dparams = DownsampleParams { delta_en: o.delta_en, ..Default::default() };
    let results: Vec<Result<Truth>> = (0..o.shots)
        .into_par_iter()
        .map(|i| {
            let mut rng = ChaCha8Rng::seed_from_u64(o.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
            let u_true = random_rotation(&mut rng);
            let (en, wt) = sase_spectrum(&mut rng, o.energy_ev, o.channels, o.delta_en);
            let model_spec = downsample(&en, &wt, &dparams, 1, 1e12)?;
            let raw_spec = Spectrum::from_energies(&en, wt);
            let mut b = beam.clone();
            b.wavelength = model_spec.mean_wavelength();
            let ncells6 = [o.ncells[0], o.ncells[1], o.ncells[2], 0.0, 0.0, 0.0];
            let mut model = ShotModel::new(
                det.clone(),
                b.clone(),
                sources_from_spectrum(&model_spec),
                base_crystal(u_true, ucell.clone(), Mat3::identity(), ncells6, false),
                fluence(model_spec.total(), model_spec.len(), 1.0),
            );
            model.oversample = 1;
            let px = crate::kernel::full_detector_pixels(&det);
            let bragg1 = kernel_eval(&model, &fhkl, &[], &px)?.values;
            let mut sorted = bragg1.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let p999 = sorted[((sorted.len() as f64) * 0.999) as usize].max(1e-30);
            let g = o.peak_photons / p999 * rng.random_range(0.7..1.3);
            let n = o.n_pixels;
            let c = n as f64 / 2.0;
            let mut adu = Vec::with_capacity(n * n);
            let noise = Normal::new(0.0, o.sigma_r_adu.max(1e-12)).map_err(|e| Error::msg(e.to_string()))?;
            let mut photons = Vec::with_capacity(n * n);
            for s in 0..n {
                for f in 0..n {
                    let r2 = ((f as f64 - c).powi(2) + (s as f64 - c).powi(2)) / (0.6 * c).powi(2);
                    let bg = o.background * (1.0 + 0.6 * (-r2).exp());
                    let lam = g * bragg1[s * n + f] + bg;
                    let k = if lam > 0.0 {
                        Poisson::new(lam).map_err(|e| Error::msg(e.to_string()))?.sample(&mut rng)
                    } else {
                        0.0
                    };
                    photons.push(k);
                    adu.push(k * o.adu_per_photon + noise.sample(&mut rng));
                }
            }
            let img = Image::new(vec![PanelImage::new(n, n, adu.clone())?]);
            // Strong spots and their indices (with the true crystal).
            let ph: Vec<f64> = adu.iter().map(|v| v / o.adu_per_photon).collect();
            let spots = crate::predict::label::find_spots_panel(
                &ph,
                [n, n],
                &vec![true; n * n],
                0,
                0,
                &crate::predict::spotfinder::DispersionParams::default(),
                &crate::predict::label::LabelParams::dials_find_spots(2),
            )?;
            let real_true = u_true * cell.b_real();
            let s0u = crate::conventions::s0_unit_from_direction(&b.direction);
            let lam = b.wavelength;
            let p0 = &det.panels[0];
            let mut keep = Vec::new();
            let mut hkls: Vec<[i32; 3]> = Vec::new();
            for (k, sp) in spots.iter().enumerate() {
                let [x, y, _] = sp.centroid.position;
                let lab = p0.pixel_to_lab(x, y);
                let q = (lab.normalize() - s0u) / lam;
                let h = real_true.transpose() * q;
                let h0 = crate::conventions::round_miller3(&h);
                let off = (0..3).map(|j| (h[j] - h0[j] as f64).abs()).fold(0.0, f64::max);
                if off < 0.3 && h0 != [0, 0, 0] && !hkls.contains(&h0) {
                    keep.push(k);
                    hkls.push(h0);
                }
            }
            let kept: Vec<_> = keep.iter().map(|&k| spots[k].clone()).collect();
            let mut t = crate::predict::label::spots_to_table(&kept, &Default::default())?;
            let nk = kept.len();
            // The perturbed starting model.
            let mis = rng.random_range(o.mis_deg[0]..=o.mis_deg[1]);
            let u_start = axis_angle(&random_axis(&mut rng), mis.to_radians()) * u_true;
            let mut c0 = o.cell;
            for e in &mut c0[..3] {
                *e *= o.cell_factor;
            }
            let crystal = Crystal::from_u_and_cell(&u_start, &UnitCell::from_array(c0), &hall);
            let a_start = crystal.a_matrix();
            t.insert("miller_index", hkls.clone())?;
            let pos = t.get_vec3("xyzobs.px.value")?.to_vec();
            let var = t.get_vec3("xyzobs.px.variance")?.to_vec();
            let mm: Vec<[f64; 3]> = pos.iter().map(|p| [p[0] * o.pixel_mm, p[1] * o.pixel_mm, 0.0]).collect();
            let mmv: Vec<[f64; 3]> =
                var.iter().map(|v| [v[0] * o.pixel_mm.powi(2), v[1] * o.pixel_mm.powi(2), 0.0]).collect();
            let s1: Vec<[f64; 3]> = pos
                .iter()
                .map(|p| {
                    let d = p0.pixel_to_lab(p[0], p[1]).normalize() / lam;
                    [d.x, d.y, d.z]
                })
                .collect();
            let rlp: Vec<[f64; 3]> = hkls
                .iter()
                .map(|h| {
                    let q = a_start * Vec3::new(h[0] as f64, h[1] as f64, h[2] as f64);
                    [q.x, q.y, q.z]
                })
                .collect();
            t.insert("xyzobs.mm.value", mm)?;
            t.insert("xyzobs.mm.variance", mmv)?;
            t.insert("s1", s1)?;
            t.insert("rlp", rlp)?;
            t.insert("flags", vec![flags::INDEXED | flags::USED_IN_REFINEMENT | flags::STRONG; nk])?;
            // Files.
            let stem = format!("shot_{i:03}");
            let h5 = out.join(format!("{stem}.h5"));
            let expt_path = out.join(format!("{stem}.expt"));
            let refl_path = out.join(format!("{stem}.refl"));
            let mut e = Experiment::new(format!("synth-{i}"), b.clone(), det.clone());
            e.crystal = Some(crystal);
            e.imageset = Some(ImageSetRef::single_image(&h5, None));
            crate::io::dials_expt::write_experiments(&expt_path, std::slice::from_ref(&e))?;
            let text = std::fs::read(&expt_path).map_err(|er| io_err(&expt_path, er))?;
            let js = crate::io::dials_expt::parse_json(&text, &expt_path)?;
            let (dd, bd) = (js["detector"][0].clone(), js["beam"][0].clone());
            crate::io::hdf5::writer::write_attr_geom_h5(
                &h5,
                &dd,
                &bd,
                std::slice::from_ref(&img),
                Some(std::slice::from_ref(&raw_spec)),
                crate::io::hdf5::writer::WriterOptions {
                    dtype: crate::io::hdf5::writer::ImageDtype::F32,
                    gzip: Some(4),
                },
            )?;
            t.identifiers = [(0u64, e.identifier.clone())].into_iter().collect();
            crate::io::dials_refl::write_refl(&refl_path, &t)?;
            let (sid, _) = crate::store::shot_id::shot_id(&expt_path, 0)?;
            let _ = photons;
            Ok(Truth {
                shot_id: sid,
                expt: expt_path,
                u: u_true,
                cell: o.cell,
                ncells: o.ncells,
                g,
                misorientation_deg: mis,
                n_spots: nk,
            })
        })
        .collect();
    let truths: Vec<Truth> = results.into_iter().collect::<Result<_>>()?;
    let mut spec = String::new();
    for i in 0..o.shots {
        spec.push_str(&format!("shot_{i:03}.expt shot_{i:03}.refl\n"));
    }
    crate::store::atomic::write_bytes(&out.join("spec_file.out"), spec.as_bytes())?;
    crate::store::atomic::write_bytes(&out.join("hopper.phil"), hopper_phil(o, &sg).as_bytes())?;
    write_truth(&out.join("truth.parquet"), &truths)?;
    Ok(truths)
}

/// The phil file that refines the dataset.
pub fn hopper_phil(o: &SynthOptions, sg: &SpaceGroup) -> String {
    let n = o.ncells.map(|v| v * o.ncells_factor);
    format!(
        "# written by `diffbragg synth`; paths are relative to this file's folder\n\
exp_ref_spec_file = spec_file.out\n\
outdir = stage1\n\
method = \"L-BFGS-B\"\n\
space_group = \"{sg}\"\n\
spectrum_from_imageset = True\n\
downsamp_spec {{\n  delta_en = {de}\n}}\n\
init {{\n  Nabc = {n0} {n1} {n2}\n}}\n\
# G from the least-squares start, mapped exp(σ(x−1)): the default sine map over [0, 1e12]\n\
# starts near its turning point (fwd-model §4.5 [TRAP]) and can throw the first steps far.\n\
types {{\n  G = positive\n}}\n\
fix {{\n  detz_shift = True\n}}\n\
refiner {{\n  sigma_r = {sr}\n  adu_per_photon = {adu}\n}}\n\
roi {{\n  shoebox_size = {sb}\n  fit_tilt = True\n  pad_shoebox_for_background_estimation = 5\n  reject_edge_reflections = True\n}}\n\
simulator {{\n  oversample = 1\n  total_flux = 1e12\n  beam {{\n    size_mm = 1\n  }}\n  structure_factors {{\n    mtz_name = F.mtz\n    mtz_column = \"F\"\n  }}\n  detector {{\n    force_zero_thickness = True\n  }}\n}}\n",
        sg = sg.hm().replace(' ', ""),
        de = o.delta_en,
        n0 = n[0],
        n1 = n[1],
        n2 = n[2],
        sr = o.sigma_r_adu,
        adu = o.adu_per_photon,
        sb = o.shoebox_size,
    )
}

fn fixed_list(values: Vec<f64>, n: i32) -> ArrayRef {
    let item = Arc::new(Field::new("item", DataType::Float64, false));
    Arc::new(FixedSizeListArray::new(item, n, Arc::new(Float64Array::from(values)), None))
}

/// `truth.parquet`: shot_id, exp_name, U (row-major), cell, ncells, G, misorientation, spot count.
pub fn write_truth(path: &Path, t: &[Truth]) -> Result<()> {
    let fl = |n: i32| DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float64, false)), n);
    let schema = Arc::new(Schema::new(vec![
        Field::new("shot_id", DataType::Int64, false),
        Field::new("exp_name", DataType::Utf8, false),
        Field::new("u", fl(9), false),
        Field::new("cell", fl(6), false),
        Field::new("ncells", fl(3), false),
        Field::new("g", DataType::Float64, false),
        Field::new("misorientation_deg", DataType::Float64, false),
        Field::new("n_spots", DataType::Int32, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(t.iter().map(|r| r.shot_id).collect::<Vec<_>>())),
        Arc::new(StringArray::from(
            t.iter().map(|r| r.expt.to_string_lossy().into_owned()).collect::<Vec<_>>(),
        )),
        fixed_list(t.iter().flat_map(|r| crate::conventions::mat3_to_row_major(&r.u)).collect(), 9),
        fixed_list(t.iter().flat_map(|r| r.cell).collect(), 6),
        fixed_list(t.iter().flat_map(|r| r.ncells).collect(), 3),
        Arc::new(Float64Array::from(t.iter().map(|r| r.g).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(t.iter().map(|r| r.misorientation_deg).collect::<Vec<_>>())),
        Arc::new(Int32Array::from(t.iter().map(|r| r.n_spots as i32).collect::<Vec<_>>())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::msg(e.to_string()))?;
    crate::store::atomic::write_replace(path, |w| crate::store::parquet::write_any(schema, &[batch], w))
}

/// Read `truth.parquet` back.
pub fn read_truth(path: &Path) -> Result<Vec<Truth>> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| Error::file(path, e.to_string()))?;
    let mut out = Vec::new();
    for b in r {
        let b = b.map_err(|e| Error::file(path, e.to_string()))?;
        let sid = b.column(0).as_primitive::<Int64Type>();
        let name = b.column(1).as_string::<i32>();
        let list = |c: usize, i: usize| -> Vec<f64> {
            let l = b.column(c).as_fixed_size_list();
            l.value(i).as_primitive::<Float64Type>().values().to_vec()
        };
        let g = b.column(5).as_primitive::<Float64Type>();
        let mis = b.column(6).as_primitive::<Float64Type>();
        let ns = b.column(7).as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            let u = list(2, i);
            let c = list(3, i);
            let n = list(4, i);
            out.push(Truth {
                shot_id: sid.value(i),
                expt: PathBuf::from(name.value(i)),
                u: crate::conventions::mat3_from_row_major(&u),
                cell: [c[0], c[1], c[2], c[3], c[4], c[5]],
                ncells: [n[0], n[1], n[2]],
                g: g.value(i),
                misorientation_deg: mis.value(i),
                n_spots: ns.value(i) as usize,
            });
        }
    }
    Ok(out)
}

/// Recovery of one shot: refined minus true, with the reported uncertainties.
#[derive(Clone, Debug, PartialEq)]
pub struct ShotScore {
    pub shot_id: i64,
    pub status: String,
    /// Angle of `U_refined·U_trueᵀ`, degrees, and the reported σ of that angle
    /// (`√(σ_x² + σ_y² + σ_z²)`, degrees).
    pub orient_deg: f64,
    pub sigma_orient_deg: f64,
    /// Relative errors and σ of a, b, c.
    pub cell_rel: [f64; 3],
    pub sigma_cell_rel: [f64; 3],
    pub ncells_rel: [f64; 3],
    pub sigma_ncells_rel: [f64; 3],
    pub g_rel: f64,
    pub sigma_g_rel: f64,
    pub start_orient_deg: f64,
}

/// Compare a stage-1 store's `shot_params` with the truth (shots missing from
/// the store are left out).
pub fn score(truth: &[Truth], store: &crate::store::Store) -> Result<Vec<ShotScore>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};
    let cols = [
        "shot_id",
        "status",
        "Amats",
        "a",
        "b",
        "c",
        "al",
        "be",
        "ga",
        "ncells",
        "spot_scales",
        "sigma_rot",
        "sigma_cell",
        "sigma_ncells",
        "sigma_spot_scales",
    ];
    let mut by_id = std::collections::BTreeMap::new();
    for b in store.read_columns(crate::store::Table::ShotParams, &cols, None)? {
        let f = |c: usize, i: usize| {
            let a = b.column(c).as_primitive::<Float64Type>();
            if a.is_null(i) {
                f64::NAN
            } else {
                a.value(i)
            }
        };
        let list = |c: usize, i: usize, n: usize| -> Vec<f64> {
            let a = b.column(c);
            if a.is_null(i) {
                return vec![f64::NAN; n];
            }
            let v = match a.data_type() {
                DataType::FixedSizeList(..) => a.as_fixed_size_list().value(i),
                _ => a.as_list::<i32>().value(i),
            };
            v.as_primitive::<Float64Type>().values().to_vec()
        };
        for i in 0..b.num_rows() {
            let sid = b.column(0).as_primitive::<Int64Type>().value(i);
            let status = b.column(1).as_string::<i32>().value(i).to_string();
            let a = list(2, i, 9);
            let cell = [f(3, i), f(4, i), f(5, i), f(6, i), f(7, i), f(8, i)];
            by_id.insert(
                sid,
                (
                    status,
                    a,
                    cell,
                    list(9, i, 3),
                    f(10, i),
                    list(11, i, 3),
                    list(12, i, 6),
                    list(13, i, 3),
                    f(14, i),
                ),
            );
        }
    }
    let mut out = Vec::new();
    for t in truth {
        let Some((status, a, cell, nc, g, srot, scell, snc, sg)) = by_id.get(&t.shot_id) else { continue };
        let a = crate::conventions::mat3_from_row_major(a);
        let b = UnitCell::from_array(*cell).b_recip();
        let u = a * b.try_inverse().ok_or_else(|| Error::msg("degenerate refined cell"))?;
        let r = u * t.u.transpose();
        let ang = ((r.trace() - 1.0) / 2.0).clamp(-1.0, 1.0).acos().to_degrees();
        let so = (srot.iter().map(|s| s * s).sum::<f64>()).sqrt().to_degrees();
        out.push(ShotScore {
            shot_id: t.shot_id,
            status: status.clone(),
            orient_deg: ang,
            sigma_orient_deg: so,
            cell_rel: std::array::from_fn(|k| (cell[k] - t.cell[k]) / t.cell[k]),
            sigma_cell_rel: std::array::from_fn(|k| scell[k] / t.cell[k]),
            ncells_rel: std::array::from_fn(|k| (nc[k] - t.ncells[k]) / t.ncells[k]),
            sigma_ncells_rel: std::array::from_fn(|k| snc[k] / t.ncells[k]),
            g_rel: (g - t.g) / t.g,
            sigma_g_rel: sg / t.g,
            start_orient_deg: t.misorientation_deg,
        });
    }
    Ok(out)
}

/// Root mean square.
pub fn rms(v: impl IntoIterator<Item = f64>) -> f64 {
    let (s, n) = v.into_iter().fold((0.0, 0usize), |(s, n), x| (s + x * x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        (s / n as f64).sqrt()
    }
}

/// The recovery summary: RMS errors and RMS reported σ per quantity.
pub fn score_summary(s: &[ShotScore]) -> String {
    let mut t = format!("{} shots scored\n", s.len());
    t += &format!(
        "orientation  RMS error {:.5}°  (RMS σ {:.5}°; start {:.3}°)\n",
        rms(s.iter().map(|x| x.orient_deg)),
        rms(s.iter().map(|x| x.sigma_orient_deg)),
        rms(s.iter().map(|x| x.start_orient_deg))
    );
    for (k, n) in ["a", "b", "c"].iter().enumerate() {
        t += &format!(
            "cell {n}       RMS error {:.5}%  (RMS σ {:.5}%)\n",
            100.0 * rms(s.iter().map(|x| x.cell_rel[k])),
            100.0 * rms(s.iter().map(|x| x.sigma_cell_rel[k]))
        );
    }
    for (k, n) in ["Na", "Nb", "Nc"].iter().enumerate() {
        t += &format!(
            "{n}           RMS error {:.3}%  (RMS σ {:.3}%)\n",
            100.0 * rms(s.iter().map(|x| x.ncells_rel[k])),
            100.0 * rms(s.iter().map(|x| x.sigma_ncells_rel[k]))
        );
    }
    t += &format!(
        "G            RMS error {:.3}%  (RMS σ {:.3}%)\n",
        100.0 * rms(s.iter().map(|x| x.g_rel)),
        100.0 * rms(s.iter().map(|x| x.sigma_g_rel))
    );
    t
}
