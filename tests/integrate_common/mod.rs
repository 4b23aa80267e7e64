//! Synthetic data with known truth for the `diffbragg integrate` tests.
//!
//! Each shot: a tetragonal crystal (P 43 21 2, 79.1 × 79.1 × 38.2 Å) in a random
//! orientation, a spiky 12-channel spectrum, structure factors that vary by
//! reflection (so the data have bright and faint spots), one image written in
//! diffBragg's HDF5 layout (ADU = photons, Poisson + readout noise, flat
//! background) with its spectrum, and an `.expt` whose crystal is the truth
//! **misoriented by 0.3°** and whose detector lacks the stage-1 `detz_shift`:
//! a run that used the expt models instead of `shot_params` would be off.
//! The stage-1 store holds the true models as `shot_params` rows (stage
//! `stage1`) and the spectra.
//!
//! The truth of the predictions is built here, independently of the
//! integrate code path: per candidate reflection, the flat-F model of that one
//! reflection (a table holding only it) is simulated on a box around where the
//! stills predictor puts it; its pixels above the threshold give the true spot.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use diffbragg::conventions::{axis_angle, mat3_to_row_major, Mat3, Vec3};
use diffbragg::crystal::{Crystal, UnitCell};
use diffbragg::experiment::{Experiment, ImageSetRef};
use diffbragg::geometry::{Beam, Detector, Panel};
use diffbragg::image::{Image, PanelImage};
use diffbragg::io::dials_expt::write_experiments;
use diffbragg::io::hdf5::writer::{write_attr_geom_h5, WriterOptions};
use diffbragg::kernel::{
    pixels_from_rois, simulate_image, sources_from_spectrum, CrystalModel, FhklTable, PreparedShot, Roi,
    ShotModel,
};
use diffbragg::spectrum::Spectrum;
use diffbragg::store::schema::Table;
use diffbragg::store::{shot_id, BatchBuilder, Store, Value};
use diffbragg::symmetry::SpaceGroup;
use diffbragg::ucell::{LatticeSystem, UcellParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};

pub const HALL: &str = " P 4nw 2abw";
pub const CELL: [f64; 6] = [79.1, 79.1, 38.2, 90.0, 90.0, 90.0];
pub const NCELLS: [f64; 3] = [12.0, 11.0, 14.0];
pub const G: f64 = 200.0;
pub const TOTAL_FLUX: f64 = 1e12;
pub const BEAMSIZE_MM: f64 = 1e-3;
pub const FLAT_F: f64 = 1e3;
pub const DETZ_SHIFT_MM: f64 = 0.35;
pub const BACKGROUND: f64 = 1.0;
pub const READOUT: f64 = 0.5;

/// Knobs of a dataset.
#[derive(Clone, Debug)]
pub struct Spec {
    pub n_shots: usize,
    pub seed: u64,
    /// Panels side by side (1 or 2).
    pub n_panels: usize,
    /// Panel size (pixels, square) and pixel size (mm).
    pub n_px: usize,
    pub pixel_mm: f64,
    pub distance_mm: f64,
    pub wavelength: f64,
    /// Relative half-width of the spectrum.
    pub bandwidth: f64,
    pub channels: usize,
    /// Mosaic-block size (unit cells) and scale G of every shot.
    pub ncells: [f64; 3],
    pub g: f64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            n_shots: 2,
            seed: 7,
            n_panels: 1,
            n_px: 448,
            pixel_mm: 0.11,
            distance_mm: 70.0,
            wavelength: 1.3,
            bandwidth: 0.008,
            channels: 12,
            ncells: NCELLS,
            g: G,
        }
    }
}

/// One synthetic shot.
#[derive(Clone, Debug)]
pub struct Shot {
    pub index: usize,
    pub shot_id: i64,
    pub expt: PathBuf,
    pub h5: PathBuf,
    /// The true orientation and cell.
    pub u: Mat3,
    pub cell: UnitCell,
    pub spectrum: Spectrum,
    pub ncells: [f64; 3],
    pub g: f64,
    /// The detector as the expt holds it (unshifted).
    pub detector: Detector,
    pub beam: Beam,
    /// The noise-free data (photons) and the noisy image (ADU).
    pub clean: Vec<f64>,
    pub noisy: Vec<f64>,
}

impl Shot {
    /// True `A = U·B*`.
    pub fn a_matrix(&self) -> Mat3 {
        Crystal::from_u_and_cell(&self.u, &self.cell, HALL).a_matrix()
    }

    /// The stage-1 detector (shifted by detz).
    pub fn model_detector(&self) -> Detector {
        let mut d = self.detector.clone();
        d.shift_z(DETZ_SHIFT_MM);
        d
    }

    /// The true model with a given structure-factor table.
    pub fn model(&self) -> ShotModel {
        let c = CrystalModel::new(
            self.u,
            UcellParams::from_cell(LatticeSystem::Tetragonal, &self.cell).unwrap(),
            self.ncells,
        );
        let beam_m = BEAMSIZE_MM * 1e-3;
        let mut m = ShotModel::new(
            self.model_detector(),
            self.beam.clone(),
            sources_from_spectrum(&self.spectrum),
            c,
            TOTAL_FLUX / (beam_m * beam_m),
        );
        m.scale = self.g;
        m
    }
}

/// A dataset on disk.
#[derive(Debug)]
pub struct Dataset {
    pub dir: PathBuf,
    pub stage1: PathBuf,
    pub shots: Vec<Shot>,
    pub spec: Spec,
}

pub fn detector(spec: &Spec) -> Detector {
    let n = spec.n_px;
    let w = n as f64 * spec.pixel_mm;
    let gap = 1.0;
    let total = spec.n_panels as f64 * w + (spec.n_panels as f64 - 1.0) * gap;
    let panels = (0..spec.n_panels)
        .map(|i| Panel {
            name: format!("panel{i}"),
            panel_type: "SENSOR_PAD".into(),
            // Panels side by side along x, the beam hitting near the middle (slightly off-centre).
            origin: Vec3::new(-total / 2.0 + i as f64 * (w + gap) + 0.37, w / 2.0 - 0.21, -spec.distance_mm),
            fast: Vec3::x(),
            slow: -Vec3::y(),
            pixel_size: [spec.pixel_mm, spec.pixel_mm],
            image_size: [n, n],
            trusted_range: [-1e4, 1e9],
            material: "Si".into(),
            identifier: String::new(),
            ..Default::default()
        })
        .collect();
    Detector { panels, hierarchy: None }
}

/// Data amplitude of reflection h: 5 % to 100 % of FLAT_F, pseudo-random.
pub fn data_f(h: [i32; 3]) -> f64 {
    let x = (h[0] * 7919 + h[1] * 104729 + h[2] * 1299709).rem_euclid(1000) as f64 / 1000.0;
    FLAT_F * (0.05 + 0.95 * x * x)
}

/// Every non-absent P1 index to d_min.
pub fn hkl_list(cell: &UnitCell, d_min: f64) -> Vec<[i32; 3]> {
    let sg = SpaceGroup::from_hall(HALL).unwrap();
    diffbragg::symmetry::miller::unique_reflections(cell, &SpaceGroup::p1(), d_min, true)
        .unwrap()
        .into_iter()
        .filter(|h| !sg.is_sys_absent(h))
        .collect()
}

fn spectrum(rng: &mut ChaCha8Rng, spec: &Spec) -> Spectrum {
    let n = spec.channels;
    let lam: Vec<f64> = (0..n)
        .map(|i| spec.wavelength * (1.0 + spec.bandwidth * (2.0 * i as f64 / (n as f64 - 1.0) - 1.0)))
        .collect();
    // SASE-like: a Gaussian envelope times random spikes.
    let w = (0..n)
        .map(|i| {
            let t = 2.0 * i as f64 / (n as f64 - 1.0) - 1.0;
            (-2.0 * t * t).exp() * rng.random_range(0.2..1.0)
        })
        .collect();
    Spectrum::new(lam, w)
}

fn random_rotation(rng: &mut ChaCha8Rng) -> Mat3 {
    let axis =
        Vec3::new(rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
    axis_angle(&axis, rng.random_range(0.0..std::f64::consts::PI))
}

/// Build the dataset in `dir` (images, expts, the stage-1 store).
pub fn make_dataset(dir: &Path, spec: Spec) -> Dataset {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let det = detector(&spec);
    let beam = Beam {
        direction: Vec3::new(0.0, 0.0, 1.0),
        wavelength: spec.wavelength,
        polarization_normal: Vec3::new(0.0, 1.0, 0.0),
        polarization_fraction: 0.999,
        ..Default::default()
    };
    let cell = UnitCell::from_array(CELL);
    let hkl = hkl_list(&cell, 2.0);
    let f: Vec<f64> = hkl.iter().map(|&h| data_f(h)).collect();
    let table = FhklTable::new(&hkl, &f, 0.0, false).unwrap();
    let mut shots = Vec::new();
    for i in 0..spec.n_shots {
        let u = random_rotation(&mut rng);
        let sp = spectrum(&mut rng, &spec);
        let h5 = dir.join(format!("shot_{i}.h5"));
        let expt = dir.join(format!("shot_{i}.expt"));
        let mut shot = Shot {
            index: i,
            shot_id: 0,
            expt: expt.clone(),
            h5: h5.clone(),
            u,
            cell,
            spectrum: sp.clone(),
            ncells: spec.ncells,
            g: spec.g,
            detector: det.clone(),
            beam: beam.clone(),
            clean: vec![],
            noisy: vec![],
        };
        let model = shot.model();
        let bragg = simulate_image(&model, &table).unwrap();
        let clean: Vec<f64> = bragg.iter().map(|v| v + BACKGROUND).collect();
        let noise = Normal::new(0.0, READOUT).unwrap();
        let noisy: Vec<f64> = clean
            .iter()
            .map(|&m| Poisson::new(m).unwrap().sample(&mut rng) + noise.sample(&mut rng))
            .collect();
        shot.clean = clean;
        shot.noisy = noisy.clone();

        // The expt: misoriented crystal, unshifted detector, the image file.
        let mis = axis_angle(&Vec3::new(0.3, 0.8, -0.5), 0.3f64.to_radians());
        let mut e = Experiment::new(format!("synthetic-{}-{i}", spec.seed), beam.clone(), det.clone());
        e.crystal = Some(Crystal::from_u_and_cell(&(mis * u), &cell, HALL));
        e.imageset = Some(ImageSetRef::single_image(&h5, Some(0)));
        write_experiments(&expt, &[e]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&expt).unwrap()).unwrap();
        let n = spec.n_px;
        let panels: Vec<PanelImage> =
            noisy.chunks(n * n).map(|c| PanelImage::new(n, n, c.to_vec()).unwrap()).collect();
        write_attr_geom_h5(
            &h5,
            &v["detector"][0],
            &v["beam"][0],
            &[Image::new(panels)],
            Some(&[sp]),
            WriterOptions::default(),
        )
        .unwrap();
        shot.shot_id = shot_id::shot_id(&expt, 0).unwrap().0;
        shots.push(shot);
    }
    let stage1 = dir.join("stage1");
    write_stage1(&stage1, &shots);
    Dataset { dir: dir.to_path_buf(), stage1, shots, spec }
}

/// The stage-1 store: true models as `shot_params`, and the spectra.
pub fn write_stage1(stage1: &Path, shots: &[Shot]) {
    write_stage1_opts(stage1, shots, true)
}

/// [`write_stage1`], optionally without the `spectra` rows.
pub fn write_stage1_opts(stage1: &Path, shots: &[Shot], with_spectra: bool) {
    let mut store = Store::create(stage1, 0, true).unwrap();
    let mut b = BatchBuilder::new(Table::ShotParams);
    let mut sp = BatchBuilder::new(Table::Spectra);
    for s in shots {
        let a = mat3_to_row_major(&s.a_matrix());
        let canon = std::fs::canonicalize(&s.expt).unwrap();
        let c = s.cell;
        b.append(&[
            ("shot_id", s.shot_id.into()),
            ("stage", "stage1".into()),
            ("exp_name", canon.to_string_lossy().into_owned().into()),
            ("exp_idx", 0i32.into()),
            ("status", "converged".into()),
            ("backend", "cpu".into()),
            ("n_evals", 10i32.into()),
            ("wall_time_s", 1.0.into()),
            ("spot_scales", s.g.into()),
            ("Amats", Value::from(&a[..])),
            ("ncells", Value::from(&s.ncells[..])),
            ("ncells_def", Value::from(&[0.0; 3][..])),
            ("eta_abc", Value::from(&[0.0; 3][..])),
            ("num_mosaicity_samples", 1i32.into()),
            ("detz_shift_mm", DETZ_SHIFT_MM.into()),
            ("lam0", 0.0.into()),
            ("lam1", 1.0.into()),
            ("oversample", 1i32.into()),
            ("total_flux", TOTAL_FLUX.into()),
            ("beamsize_mm", BEAMSIZE_MM.into()),
            ("spectrum_source", "imageset".into()),
            ("a", c.a.into()),
            ("b", c.b.into()),
            ("c", c.c.into()),
            ("al", c.alpha.into()),
            ("be", c.beta.into()),
            ("ga", c.gamma.into()),
        ])
        .unwrap();
        if with_spectra {
            for r in diffbragg::store::SpectrumRow::from_spectrum(s.shot_id, &s.spectrum).unwrap() {
                sp.append_row(&r).unwrap();
            }
        }
    }
    store.append_builder(&mut b).unwrap();
    store.append_builder(&mut sp).unwrap();
}

/// One true (flat-F) reflection.
#[derive(Clone, Debug)]
pub struct TrueSpot {
    pub hkl: [i32; 3],
    pub panel: usize,
    /// Centroid of its pixels above the threshold (pixel-corner origin).
    pub centroid: [f64; 2],
    /// Its pixels above the threshold, (panel, x, y).
    pub pixels: Vec<(usize, usize, usize)>,
    pub peak: f64,
    pub integrated: f64,
    /// Wavelength at which h meets the Ewald sphere exactly (Å).
    pub lambda_bragg: f64,
    /// Another true spot touches this one (they form one model region).
    pub merged: bool,
}

/// The true flat-F spots of a shot above `threshold`: every reflection whose
/// own model has a pixel above it, with the centroid of those pixels.
pub fn true_spots(shot: &Shot, threshold: f64) -> Vec<TrueSpot> {
    let model = shot.model();
    let det = &model.detector;
    let a = shot.a_matrix();
    let s0u = shot.beam.unit_s0();
    let (lmin, lmax) =
        shot.spectrum.wavelengths.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &l| (a.min(l), b.max(l)));
    let half = 12usize;
    let mut out = Vec::new();
    for h in hkl_list(&shot.cell, 2.0) {
        let q = a * Vec3::new(h[0] as f64, h[1] as f64, h[2] as f64);
        let lam = -2.0 * q.dot(&s0u) / q.norm_squared();
        // Distance of the point from the nearest Ewald sphere of the band: the
        // lattice transform (width ~1/(N·a) ≈ 2e-3 Å⁻¹ here) is negligible
        // beyond 0.01 Å⁻¹. (In λ the tolerance is 2δq/|q|²: wide at low resolution.)
        let lam_c = if lam > 0.0 { lam.clamp(lmin, lmax) } else { lmin };
        let s1 = s0u / lam_c + q;
        if (s1.norm() - 1.0 / lam_c).abs() > 0.01 {
            continue;
        }
        let mut hit = None;
        for (pi, p) in det.panels.iter().enumerate() {
            if let Some((x, y)) = p.ray_intersection_px(&s1) {
                if x > -(half as f64)
                    && y > -(half as f64)
                    && x < (p.image_size[0] + half) as f64
                    && y < (p.image_size[1] + half) as f64
                {
                    hit = Some((pi, x, y));
                }
            }
        }
        let Some((pi, x, y)) = hit else { continue };
        let p = &det.panels[pi];
        let clip = |c: f64, n: usize| -> (usize, usize) {
            let c = c.floor() as i64;
            ((c - half as i64).clamp(0, n as i64) as usize, (c + half as i64 + 1).clamp(0, n as i64) as usize)
        };
        let (x0, x1) = clip(x, p.image_size[0]);
        let (y0, y1) = clip(y, p.image_size[1]);
        if x0 >= x1 || y0 >= y1 {
            continue;
        }
        let roi = Roi { panel: pi, x0, x1, y0, y1 };
        let (px, _) = pixels_from_rois(&[roi], det).unwrap();
        let t = FhklTable::new(&[h], &[FLAT_F], 0.0, false).unwrap();
        let v = PreparedShot::new(&model, &t, None, &[]).unwrap().forward(&px).unwrap();
        let (kmax, &peak) = v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        if peak <= threshold {
            continue;
        }
        // 4-connected region above threshold around the peak, inside the box.
        let (w, hgt) = (x1 - x0, y1 - y0);
        let mut inr = vec![false; v.len()];
        let mut stack = vec![kmax];
        inr[kmax] = true;
        let mut touches_box = false;
        while let Some(k) = stack.pop() {
            let (cx, cy) = (k % w, k / w);
            if (cx == 0 && x0 > 0)
                || (cy == 0 && y0 > 0)
                || (cx + 1 == w && x1 < p.image_size[0])
                || (cy + 1 == hgt && y1 < p.image_size[1])
            {
                touches_box = true;
            }
            let mut nb = vec![];
            if cx > 0 {
                nb.push(k - 1)
            }
            if cx + 1 < w {
                nb.push(k + 1)
            }
            if cy > 0 {
                nb.push(k - w)
            }
            if cy + 1 < hgt {
                nb.push(k + w)
            }
            for n in nb {
                if !inr[n] && v[n] > threshold {
                    inr[n] = true;
                    stack.push(n);
                }
            }
        }
        assert!(!touches_box, "reflection {h:?}: spot larger than the {half}-px box; enlarge it");
        let (mut sw, mut sx, mut sy) = (0.0, 0.0, 0.0);
        let mut pixels = vec![];
        for k in 0..v.len() {
            if inr[k] {
                let (xx, yy) = (x0 + k % w, y0 + k / w);
                sw += v[k];
                sx += v[k] * (xx as f64 + 0.5);
                sy += v[k] * (yy as f64 + 0.5);
                pixels.push((pi, xx, yy));
            }
        }
        out.push(TrueSpot {
            hkl: h,
            panel: pi,
            centroid: [sx / sw, sy / sw],
            pixels,
            peak,
            integrated: v.iter().sum(),
            lambda_bragg: lam,
            merged: false,
        });
    }
    // Spots whose pixels touch another's merge into one region.
    let mut owner = std::collections::HashMap::new();
    for (i, s) in out.iter().enumerate() {
        for &p in &s.pixels {
            owner.insert(p, i);
        }
    }
    let mut merged = vec![false; out.len()];
    for (i, s) in out.iter().enumerate() {
        for &(pi, x, y) in &s.pixels {
            for (dx, dy) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1), (0, 0)] {
                let n = (pi, (x as i64 + dx) as usize, (y as i64 + dy) as usize);
                if let Some(&j) = owner.get(&n) {
                    if j != i {
                        merged[i] = true;
                        merged[j] = true;
                    }
                }
            }
        }
    }
    for (s, m) in out.iter_mut().zip(merged) {
        s.merged = m;
    }
    out
}

/// A pred phil for the tests (qcut etc. given by the caller).
pub fn write_pred_phil(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("pred.phil");
    let text = format!(
        "simulator.detector.force_zero_thickness=True\nspectrum_from_imageset=True\npredictions {{\n  \
         default_Famplitude = {FLAT_F}\n  resolution_range = [1, 40]\n{extra}\n}}\n"
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// A proc phil for the tests.
pub fn write_proc_phil(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("proc.phil");
    let text = format!(
        "spotfinder {{\n  filter.min_spot_size = 2\n  threshold {{\n    algorithm = dispersion\n    \
         dispersion {{\n      kernel_size = 3 3\n      sigma_strong = 3\n      global_threshold = 4\n    }}\n  }}\n{extra}\n}}\n"
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// A random generator for test code.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// The model-intensity-weighted mean wavelength over a true spot's pixels,
/// by brute force: one single-source model per channel with the whole flat-F
/// table `flat` ([`flat_table`]; every reflection that reaches these pixels counts, as in the
/// pixel values), `Σ_p Σ_c w_c·λ_c·I_pc / Σ_p Σ_c w_c·I_pc`.
pub fn true_spot_wavelength(shot: &Shot, spot: &TrueSpot, flat: &FhklTable) -> f64 {
    let model = shot.model();
    let t = flat;
    let px: Vec<diffbragg::kernel::Pixel> = spot
        .pixels
        .iter()
        .map(|&(p, x, y)| diffbragg::kernel::Pixel { panel: p as u32, fast: x as u32, slow: y as u32 })
        .collect();
    let (mut num, mut den) = (0.0, 0.0);
    for src in &model.sources {
        let mut one = model.clone();
        one.sources = vec![*src];
        let v = PreparedShot::new(&one, t, None, &[]).unwrap().forward(&px).unwrap();
        let i: f64 = v.iter().sum();
        num += src.weight * src.wavelength * i;
        den += src.weight * i;
    }
    num / den
}

/// The flat-F table of every non-absent index to 2 Å.
pub fn flat_table(cell: &UnitCell) -> FhklTable {
    let hkl = hkl_list(cell, 2.0);
    FhklTable::new(&hkl, &vec![FLAT_F; hkl.len()], 0.0, false).unwrap()
}
