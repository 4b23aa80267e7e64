//! Synthetic stage-2 data: a store with `pixels`, `spectra` and stage-1
//! `shot_params` rows, simulated with the kernel from known structure
//! factors, for tests and demonstrations.
//!
//! * Truth: Wilson-distributed intensities (`exp(−B/(2d²))`, exponential for
//!   acentric, χ²₁ for centric indices) over the anomalous ASU to `d_min`;
//!   Friedel mates differ by a random relative amount; with energy channels,
//!   acentric intensities also change per channel. The truth is simulated as
//!   |F⁰|² × per-(ASU, channel) scales through the same kernel path the
//!   refinement uses.
//! * Shots: uniformly random orientations, per-shot SASE-like spectra
//!   (Gaussian envelope with random spikes), per-shot G (log-normal around a
//!   value chosen so that the median ROI holds `spot_photons`), flat
//!   background per ROI, Poisson counts plus Gaussian readout noise.
//! * ROIs: square boxes around every reflection whose excitation error at
//!   some wavelength of the band is within the spot size; purely geometric
//!   (no truth intensity is used to pick them); boxes that would overlap an
//!   earlier one or leave the panel are skipped.
//! * The stage-1 rows hold the true orientation, cell and Ncells and a G
//!   perturbed by `g_init_error` (relative σ): stage 2 refines G.
//! * Every random draw comes from one ChaCha8 stream seeded by `seed`.

// `!(x > 0.0)` is deliberate: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};

use crate::conventions::{mat3_to_row_major, wavelength_a_from_energy_ev, Mat3, Vec3};
use crate::crystal::{Crystal, UnitCell};
use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::geometry::{Beam, Detector, Panel};
use crate::io::mtz::Mtz;
use crate::kernel::{CrystalModel, FhklScales, Pixel, PreparedShot, ShotModel, Source};
use crate::spectrum::Spectrum;
use crate::store::{BatchBuilder, SpectrumRow, Store, Table};
use crate::symmetry::miller::{expand_to_p1, unique_reflections, Resolution};
use crate::symmetry::{Miller, ReciprocalAsu, SpaceGroup};

use super::sf::{asu_key, StartingF};
use super::shots::{channel_of, lattice_system, symmetrize_cell};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub n_shots: usize,
    pub seed: u64,
    pub space_group: String,
    pub cell: [f64; 6],
    pub d_min: f64,
    /// Wilson B, Å².
    pub wilson_b: f64,
    /// Relative σ of the Friedel difference of amplitudes.
    pub anomalous_rel: f64,
    /// Relative σ of the intensity change between energy channels (acentric).
    pub channel_rel: f64,
    pub energy_ev: f64,
    /// Full width of the spectrum, relative to the energy.
    pub bandwidth: f64,
    pub n_spectrum: usize,
    /// `Fhkl_channel_bounds` used for the truth (eV).
    pub channel_bounds: Vec<f64>,
    pub distance_mm: f64,
    pub pixel_mm: f64,
    pub n_pixels: usize,
    pub ncells: [f64; 3],
    /// ROI half-width: boxes of (2r+1)².
    pub roi_half: usize,
    /// Mean flat background, photons per pixel.
    pub background: f64,
    /// Readout noise σ, photons.
    pub sigma_r: f64,
    /// Median ROI signal (photons) of the mean G.
    pub spot_photons: f64,
    /// σ of ln G across shots.
    pub g_spread: f64,
    /// Relative σ of the stage-1 G around the truth.
    pub g_init_error: f64,
    /// Keep reflections whose excitation error is below this many spot widths.
    pub excitation_cut: f64,
    /// Pixels written per `pixels` shard (in shots).
    pub shots_per_shard: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            n_shots: 40,
            seed: 1,
            space_group: "P 43 21 2".into(),
            cell: [32.0, 32.0, 48.0, 90.0, 90.0, 90.0],
            d_min: 4.0,
            wilson_b: 15.0,
            anomalous_rel: 0.06,
            channel_rel: 0.04,
            energy_ev: 9500.0,
            bandwidth: 0.006,
            n_spectrum: 6,
            channel_bounds: vec![],
            distance_mm: 80.0,
            pixel_mm: 0.1,
            n_pixels: 1000,
            ncells: [12.0, 12.0, 12.0],
            roi_half: 2,
            background: 2.0,
            sigma_r: 1.0,
            spot_photons: 400.0,
            g_spread: 0.3,
            g_init_error: 0.1,
            excitation_cut: 1.2,
            shots_per_shard: 25,
        }
    }
}

/// What was simulated (the truth), for comparisons.
#[derive(Clone, Debug)]
pub struct SynthTruth {
    pub store: PathBuf,
    pub expt: PathBuf,
    pub space_group: SpaceGroup,
    pub cell: UnitCell,
    /// Anomalous-ASU keys and their true intensity per channel (`intensity[c][k]`).
    pub keys: Vec<Miller>,
    pub intensity: Vec<Vec<f64>>,
    /// The flat starting amplitude that matches the truth's mean intensity.
    pub default_f: f64,
    pub shot_ids: Vec<i64>,
    pub g_true: BTreeMap<i64, f64>,
    pub n_rois: usize,
    pub n_pixels: usize,
    /// One truth MTZ per channel (`F(+)`, `F(-)`).
    pub mtz: Vec<PathBuf>,
}

fn random_rotation(rng: &mut ChaCha8Rng) -> Mat3 {
    let n = Normal::new(0.0, 1.0).expect("valid");
    let q: [f64; 4] = std::array::from_fn(|_| n.sample(rng));
    let s = q.iter().map(|v| v * v).sum::<f64>().sqrt();
    let [w, x, y, z] = q.map(|v| v / s);
    crate::conventions::quaternion_matrix(w, x, y, z)
}

/// The detector: one square panel centred on the beam, ⟂ to it.
pub fn detector(o: &SynthOptions) -> Detector {
    let half = o.n_pixels as f64 / 2.0 * o.pixel_mm;
    Detector {
        panels: vec![Panel {
            name: "synth".into(),
            origin: Vec3::new(-half, half, -o.distance_mm),
            fast: Vec3::x(),
            slow: -Vec3::y(),
            pixel_size: [o.pixel_mm, o.pixel_mm],
            image_size: [o.n_pixels, o.n_pixels],
            trusted_range: [-10.0, 1e9],
            ..Default::default()
        }],
        hierarchy: None,
    }
}

/// Simulate a dataset into `dir` (the store is `dir/store`).
pub fn make(dir: &Path, o: &SynthOptions) -> Result<SynthTruth> {
    if o.n_shots == 0 || o.n_spectrum == 0 || o.roi_half == 0 {
        return Err(Error::msg("synth: n_shots, n_spectrum and roi_half must be ≥ 1"));
    }
    std::fs::create_dir_all(dir).map_err(|e| crate::error::io_err(dir, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let normal = Normal::new(0.0, 1.0).expect("valid");
    let sg = SpaceGroup::parse(&o.space_group)?;
    let asu = ReciprocalAsu::new(&sg);
    let cell = UnitCell::from_array(o.cell);
    let res = Resolution::new(&cell)?;
    let n_chan = o.channel_bounds.len() + 1;

    // --- Truth. ---
    let keys = unique_reflections(&cell, &sg, o.d_min, true)?;
    let mut plus_i: HashMap<Miller, f64> = HashMap::new();
    let mut i0: Vec<f64> = Vec::with_capacity(keys.len());
    for k in &keys {
        let wilson = 1e4 * (-o.wilson_b * res.d_star_sq(k) / 2.0).exp();
        let mate = [-k[0], -k[1], -k[2]];
        let v = if let Some(&ip) = plus_i.get(&mate) {
            // Minus mate of an acentric index: the same amplitude up to the anomalous difference.
            let f = ip.sqrt() * (1.0 + o.anomalous_rel * normal.sample(&mut rng));
            f * f
        } else if sg.is_centric(k) {
            let z: f64 = normal.sample(&mut rng);
            wilson * z * z
        } else {
            let u: f64 = rng.random::<f64>();
            -wilson * (1.0 - u).ln()
        };
        let v = v.max(1e-3 * wilson);
        plus_i.insert(*k, v);
        i0.push(v);
    }
    let mut intensity = vec![i0.clone()];
    for _ in 1..n_chan {
        intensity.push(
            keys.iter()
                .zip(&i0)
                .map(|(k, &v)| {
                    if sg.is_centric(k) {
                        v
                    } else {
                        v * (1.0 + o.channel_rel * normal.sample(&mut rng)).max(0.05)
                    }
                })
                .collect(),
        );
    }
    let mean_i = i0.iter().sum::<f64>() / i0.len() as f64;
    let amplitudes: BTreeMap<Miller, f64> = keys.iter().zip(&i0).map(|(k, v)| (*k, v.sqrt())).collect();
    let truth_sf =
        StartingF { sg: sg.clone(), asu: asu.clone(), amplitudes, default_f: 0.0, source: "truth".into() };
    let ids: HashMap<Miller, u32> = keys.iter().enumerate().map(|(i, k)| (*k, i as u32)).collect();
    let table = truth_sf.table(&ids)?;
    let scales = FhklScales {
        n_channels: n_chan,
        values: (0..n_chan)
            .flat_map(|c| (0..keys.len()).map(move |k| (c, k)))
            .map(|(c, k)| intensity[c][k] / i0[k])
            .collect(),
    };

    // --- Geometry and the shots' crystals. ---
    let det = detector(o);
    let beam = Beam {
        direction: Vec3::z(),
        wavelength: wavelength_a_from_energy_ev(o.energy_ev),
        polarization_normal: Vec3::y(),
        polarization_fraction: 0.999,
        ..Default::default()
    };
    let system = lattice_system(&sg);
    let ucell = symmetrize_cell(system, &cell)?;
    let p1: Vec<Miller> =
        keys.iter().flat_map(|k| expand_to_p1(&sg, &[*k], true).into_iter().map(|e| e.0)).collect();
    let spot_width = 1.0
        / (o.ncells.iter().cloned().fold(f64::INFINITY, f64::min)
            * o.cell[..3].iter().cloned().fold(0.0, f64::max));
    let lam_lo = wavelength_a_from_energy_ev(o.energy_ev * (1.0 + o.bandwidth / 2.0));
    let lam_hi = wavelength_a_from_energy_ev(o.energy_ev * (1.0 - o.bandwidth / 2.0));
    let panel = &det.panels[0];
    let expt = dir.join("synth.expt");
    let mut exps = Vec::with_capacity(o.n_shots);
    let mut us = Vec::with_capacity(o.n_shots);
    for i in 0..o.n_shots {
        let u = random_rotation(&mut rng);
        let mut e = Experiment::new(format!("synth-{i}"), beam.clone(), det.clone());
        e.crystal = Some(Crystal::from_u_and_cell(&u, &ucell.unit_cell(), sg.hall()));
        exps.push(e);
        us.push(u);
    }
    crate::io::dials_expt::write_experiments(&expt, &exps)?;
    let mut store = Store::create(&dir.join("store"), 0, true)?;

    // --- Per shot: spectrum, ROIs, simulation. ---
    struct ShotSim {
        shot_id: i64,
        u: Mat3,
        sources: Vec<Source>,
        rois: Vec<(Miller, [u32; 4], Vec3)>,
    }
    let mut sims = Vec::with_capacity(o.n_shots);
    for (i, u) in us.iter().enumerate() {
        let (shot_id, _) = crate::store::shot_id::shot_id(&expt, i)?;
        let centre = (o.n_spectrum as f64 - 1.0) / 2.0 + rng.random_range(-0.5..0.5);
        let sources: Vec<Source> = (0..o.n_spectrum)
            .map(|k| {
                let t = if o.n_spectrum == 1 { 0.0 } else { k as f64 / (o.n_spectrum - 1) as f64 - 0.5 };
                let e = o.energy_ev * (1.0 + o.bandwidth * t);
                let env = (-0.5 * ((k as f64 - centre) / (o.n_spectrum as f64 / 3.0)).powi(2)).exp();
                let spike = (0.5 * normal.sample(&mut rng)).exp();
                Source {
                    wavelength: wavelength_a_from_energy_ev(e),
                    weight: env * spike,
                    channel: channel_of(e, &o.channel_bounds),
                }
            })
            .collect();
        let a = u * ucell.unit_cell().b_recip();
        let s0u = beam.unit_s0();
        let mut rois: Vec<(Miller, [u32; 4], Vec3)> = Vec::new();
        for h in &p1 {
            let q = a * Vec3::new(h[0] as f64, h[1] as f64, h[2] as f64);
            let q2 = q.norm_squared();
            let lam_star = -2.0 * q.dot(&s0u) / q2;
            if !(lam_star > 0.0) {
                continue;
            }
            let lam = lam_star.clamp(lam_lo, lam_hi);
            let s1 = s0u / lam + q;
            if (s1.norm() - 1.0 / lam).abs() > o.excitation_cut * spot_width {
                continue;
            }
            let Some((x, y)) = panel.ray_intersection_px(&s1) else { continue };
            let (cx, cy) = (x.floor() as i64, y.floor() as i64);
            let r = o.roi_half as i64;
            let bb = [cx - r, cx + r + 1, cy - r, cy + r + 1];
            if bb[0] < 0 || bb[2] < 0 || bb[1] > o.n_pixels as i64 || bb[3] > o.n_pixels as i64 {
                continue;
            }
            let bb = bb.map(|v| v as u32);
            if rois.iter().any(|(_, o2, _)| bb[0] < o2[1] && o2[0] < bb[1] && bb[2] < o2[3] && o2[2] < bb[3])
            {
                continue;
            }
            rois.push((*h, bb, q));
        }
        sims.push(ShotSim { shot_id, u: *u, sources, rois });
    }
    let model_of = |s: &ShotSim, g: f64| -> Result<ShotModel> {
        let crystal = CrystalModel::new(s.u, ucell.clone(), o.ncells);
        let mut m = ShotModel::new(det.clone(), beam.clone(), s.sources.clone(), crystal, 1e24);
        m.scale = g;
        Ok(m)
    };
    let pixels_of = |s: &ShotSim| -> Vec<Pixel> {
        let mut v = Vec::new();
        for (_, b, _) in &s.rois {
            for y in b[2]..b[3] {
                for x in b[0]..b[1] {
                    v.push(Pixel { panel: 0, fast: x, slow: y });
                }
            }
        }
        v
    };
    // Calibrate the mean G on the first shots with signal.
    let mut sums = Vec::new();
    for s in sims.iter().take(10) {
        let raw =
            PreparedShot::new(&model_of(s, 1.0)?, &table, Some(&scales), &[])?.forward(&pixels_of(s))?;
        let n = (2 * o.roi_half + 1).pow(2);
        sums.extend(raw.chunks(n).map(|c| c.iter().sum::<f64>()));
    }
    sums.retain(|v| *v > 0.0);
    if sums.is_empty() {
        return Err(Error::msg("synth: no reflection in the first shots; enlarge the detector or d_min"));
    }
    sums.sort_by(f64::total_cmp);
    let g_mean = o.spot_photons / sums[sums.len() / 2];

    let mut truth_g = BTreeMap::new();
    let (mut n_rois, mut n_pixels) = (0, 0);
    let mut pix = BatchBuilder::new(Table::Pixels);
    let mut spec = BatchBuilder::new(Table::Spectra);
    let mut params = BatchBuilder::new(Table::ShotParams);
    let noise = Normal::new(0.0, o.sigma_r.max(1e-300)).expect("valid");
    for (i, s) in sims.iter().enumerate() {
        let g = g_mean * (o.g_spread * normal.sample(&mut rng)).exp();
        truth_g.insert(s.shot_id, g);
        let pixels = pixels_of(s);
        let mu = PreparedShot::new(&model_of(s, g)?, &table, Some(&scales), &[])?.forward(&pixels)?;
        let n = (2 * o.roi_half + 1).pow(2);
        for (r, ((h, b, q), mu_r)) in s.rois.iter().zip(mu.chunks(n)).enumerate() {
            let bg = (o.background * (0.8 + 0.4 * rng.random::<f64>())) as f32;
            let mut data = Vec::with_capacity(n);
            let mut trusted = Vec::with_capacity(n);
            for &m in mu_r {
                let lam = m + bg as f64;
                let counts =
                    if lam > 0.0 { Poisson::new(lam).expect("λ > 0").sample(&mut rng) } else { 0.0 };
                let read = if o.sigma_r > 0.0 { noise.sample(&mut rng) } else { 0.0 };
                data.push((counts + read) as f32);
                trusted.push(u8::from(rng.random::<f64>() > 0.01));
            }
            let key = asu_key(&asu, h);
            pix.append(&[
                ("shot_id", s.shot_id.into()),
                ("roi_id", (r as i32).into()),
                ("refl_id", (r as i32).into()),
                ("panel", 0u32.into()),
                ("bbox", b.map(|v| v as i32).into()),
                ("hkl", (*h).into()),
                ("hkl_asu", key.into()),
                ("rlp", [q.x, q.y, q.z].into()),
                ("sigma_readout", (o.sigma_r as f32).into()),
                ("tilt_abc", [0.0, 0.0, bg as f64].into()),
                ("data", data.into()),
                ("background", vec![bg; n].into()),
                ("trusted", trusted.into()),
            ])?;
            n_rois += 1;
            n_pixels += n;
        }
        let spectrum = Spectrum::new(
            s.sources.iter().map(|x| x.wavelength).collect(),
            s.sources.iter().map(|x| x.weight).collect(),
        );
        for row in SpectrumRow::from_spectrum(s.shot_id, &spectrum)? {
            spec.append_row(&row)?;
        }
        let a = s.u * ucell.unit_cell().b_recip();
        let c = ucell.unit_cell().to_array();
        let g_init = g * (1.0 + o.g_init_error * normal.sample(&mut rng)).max(0.2);
        params.append(&[
            ("shot_id", s.shot_id.into()),
            ("stage", "stage1".into()),
            (
                "exp_name",
                std::fs::canonicalize(&expt)
                    .map_err(|e| crate::error::io_err(&expt, e))?
                    .to_string_lossy()
                    .to_string()
                    .into(),
            ),
            ("exp_idx", (i as i32).into()),
            ("status", "converged".into()),
            ("backend", "cpu".into()),
            ("n_evals", 0i32.into()),
            ("wall_time_s", 0.0.into()),
            ("spot_scales", g_init.into()),
            ("Amats", mat3_to_row_major(&a).into()),
            ("ncells", o.ncells.into()),
            ("ncells_def", [0.0; 3].into()),
            ("num_mosaicity_samples", 1i32.into()),
            ("a", c[0].into()),
            ("b", c[1].into()),
            ("c", c[2].into()),
            ("al", c[3].into()),
            ("be", c[4].into()),
            ("ga", c[5].into()),
            ("lam0", 0.0.into()),
            ("lam1", 1.0.into()),
            ("total_flux", 1e12.into()),
            ("beamsize_mm", 0.001.into()),
            ("oversample", 1i32.into()),
            ("spectrum_source", "synth".into()),
        ])?;
        if (i + 1) % o.shots_per_shard.max(1) == 0 || i + 1 == sims.len() {
            store.append_builder(&mut pix)?;
        }
    }
    store.append_builder(&mut spec)?;
    store.append_builder(&mut params)?;

    // --- Truth MTZs. ---
    let mut mtz = Vec::new();
    for (c, ic) in intensity.iter().enumerate() {
        let mut m: BTreeMap<Miller, [f32; 2]> = BTreeMap::new();
        for (k, &v) in keys.iter().zip(ic) {
            let plus = asu.is_in(k);
            let rep = if plus { *k } else { [-k[0], -k[1], -k[2]] };
            let e = m.entry(rep).or_insert([f32::NAN; 2]);
            e[usize::from(!plus)] = v.sqrt() as f32;
        }
        let hkl: Vec<Miller> = m.keys().copied().collect();
        let mut t = Mtz::new_merged(cell, sg.clone(), &hkl, ("synth", "truth", "truth"), beam.wavelength);
        t.add_column("F(+)", 'G', m.values().map(|v| v[0]).collect())?;
        t.add_column("F(-)", 'G', m.values().map(|v| v[1]).collect())?;
        let p = dir.join(format!("truth_channel{c}.mtz"));
        t.write(&p)?;
        mtz.push(p);
    }
    Ok(SynthTruth {
        store: dir.join("store"),
        expt,
        space_group: sg,
        cell,
        keys,
        intensity,
        default_f: mean_i.sqrt(),
        shot_ids: sims.iter().map(|s| s.shot_id).collect(),
        g_true: truth_g,
        n_rois,
        n_pixels,
        mtz,
    })
}
