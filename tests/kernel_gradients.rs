//! Analytic first derivatives of the kernel against central finite
//! differences, on randomised shots: three tilted panels (one absorbing, two
//! layers), a 3-channel spectrum, generated mosaic domains, oversampling, a
//! random orientation and misorientation, an anomalous random Fhkl table with
//! holes (default_F), every lattice system.
//!
//! Criterion: for every pixel with meaningful signal,
//! `|fd − analytic| ≤ 1e-6·(|analytic| + 1e-3·max|analytic|)`, where fd is a
//! Richardson-extrapolated central difference (error O(ε⁴)) with ε ≈ 1% of the
//! parameter's natural width (so h0 does not change between ±ε and neither
//! truncation nor rounding reaches 1e-7).

mod common;

use common::Rng;
use diffbragg::conventions::{axis_angle, Mat3, Vec3};
use diffbragg::crystal::UnitCell;
use diffbragg::geometry::{Beam, Detector, Panel};
use diffbragg::kernel::{
    full_detector_pixels, CrystalModel, DetectorShifts, Eta, FhklTable, MosaicSpec, NcellsParam, Param,
    Pixel, PreparedShot, ShotModel, Source, SubpixelFactors,
};
use diffbragg::ucell::{LatticeSystem, UcellParams};

fn cell_for(sys: LatticeSystem) -> UnitCell {
    match sys {
        LatticeSystem::Triclinic => UnitCell::new(61.0, 73.0, 89.0, 84.0, 97.0, 103.0),
        LatticeSystem::Monoclinic => UnitCell::new(61.0, 73.0, 89.0, 90.0, 107.0, 90.0),
        LatticeSystem::Orthorhombic => UnitCell::new(61.0, 73.0, 89.0, 90.0, 90.0, 90.0),
        LatticeSystem::Tetragonal => UnitCell::new(79.0, 79.0, 38.0, 90.0, 90.0, 90.0),
        LatticeSystem::Rhombohedral => UnitCell::new(70.0, 70.0, 70.0, 76.0, 76.0, 76.0),
        LatticeSystem::Hexagonal => UnitCell::new(98.0, 98.0, 61.0, 90.0, 90.0, 120.0),
        LatticeSystem::Cubic => UnitCell::new(64.0, 64.0, 64.0, 90.0, 90.0, 90.0),
    }
}

fn random_rotation(rng: &mut Rng, max_angle: f64) -> Mat3 {
    let ax = Vec3::new(rng.range(-1.0, 1.0), rng.range(-1.0, 1.0), rng.range(-1.0, 1.0));
    axis_angle(&ax, rng.range(-max_angle, max_angle))
}

struct Opts {
    system: LatticeSystem,
    n_domains: usize,
    eta: Eta,
    oversample: usize,
    off_diagonal_n: bool,
    absorbing: bool,
    point_pixel: bool,
    no_nabc_scale: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            system: LatticeSystem::Triclinic,
            n_domains: 1,
            eta: Eta::Iso(0.0),
            oversample: 1,
            off_diagonal_n: false,
            absorbing: false,
            point_pixel: false,
            no_nabc_scale: false,
        }
    }
}

fn random_shot(seed: u64, o: &Opts) -> (ShotModel, FhklTable) {
    let mut rng = Rng(seed);
    // Three 96×96 panels of 0.1 mm around the beam at ~80 mm, each tilted a few degrees.
    let centres = [(-13.0, 4.0), (3.0, 12.5), (11.0, -9.0)];
    let mut panels = Vec::new();
    for (i, (cx, cy)) in centres.iter().enumerate() {
        let r = random_rotation(&mut rng, 0.08);
        let fast = r * Vec3::x();
        let slow = r * -Vec3::y();
        let centre = Vec3::new(*cx, *cy, -80.0 - 3.0 * i as f64);
        let origin = centre - fast * 4.8 - slow * 4.8;
        let mut p =
            Panel { origin, fast, slow, pixel_size: [0.1, 0.1], image_size: [96, 96], ..Default::default() };
        if o.absorbing && i == 0 {
            p.thickness = 0.32;
            p.mu = 1.0 / 0.35;
        }
        panels.push(p);
    }
    let detector = Detector { panels, hierarchy: None };
    let dir = Vec3::new(rng.range(-0.01, 0.01), rng.range(-0.01, 0.01), 1.0).normalize();
    let beam = Beam {
        direction: dir,
        wavelength: 1.3,
        polarization_normal: Vec3::new(0.0, 1.0, 0.0),
        polarization_fraction: 0.93,
        ..Default::default()
    };
    let sources: Vec<Source> = (0..3)
        .map(|c| Source { wavelength: 1.288 + 0.012 * c as f64, weight: rng.range(0.5, 1.5), channel: 0 })
        .collect();
    let ucell = UcellParams::from_cell(o.system, &cell_for(o.system)).unwrap();
    let u = random_rotation(&mut rng, std::f64::consts::PI);
    let mut crystal =
        CrystalModel::new(u, ucell, [9.0 + rng.range(0.0, 4.0), 11.0, 13.0 + rng.range(0.0, 3.0)]);
    crystal.rot_xyz = [rng.range(-0.01, 0.01), rng.range(-0.01, 0.01), rng.range(-0.01, 0.01)];
    if o.off_diagonal_n {
        crystal.ncells[3] = 1.5;
        crystal.ncells[4] = -0.8;
        crystal.ncells[5] = 0.6;
    }
    crystal.no_nabc_scale = o.no_nabc_scale;
    if o.n_domains > 1 {
        crystal.mosaic = MosaicSpec::Generated {
            n_domains: o.n_domains,
            eta: o.eta.clone(),
            axes: u * cell_for(o.system).b_real(),
        };
    }
    let mut m = ShotModel::new(detector, beam, sources, crystal, 1e24);
    m.scale = 1.7;
    m.oversample = o.oversample;
    m.point_pixel = o.point_pixel;
    m.lambda_coef = [0.0012, 0.998];
    m.thickness_layers = 2;
    m.shifts = DetectorShifts {
        detz_shift: 0.3,
        panel_shift: (0..3)
            .map(|_| Vec3::new(rng.range(-0.1, 0.1), rng.range(-0.1, 0.1), rng.range(-0.1, 0.1)))
            .collect(),
        panel_rot: (0..3)
            .map(|_| [rng.range(-0.01, 0.01), rng.range(-0.01, 0.01), rng.range(-0.01, 0.01)])
            .collect(),
        panel_rot_centre: vec![],
    };
    // Random anomalous amplitudes over a box, with 10% holes (default_F = 3).
    let (mut hkl, mut f) = (Vec::new(), Vec::new());
    for h in -30..=30 {
        for k in -30..=30 {
            for l in -30..=30 {
                if rng.uniform() < 0.9 {
                    hkl.push([h, k, l]);
                    f.push(rng.range(5.0, 100.0));
                }
            }
        }
    }
    let fhkl = FhklTable::new(&hkl, &f, 3.0, false).unwrap();
    (m, fhkl)
}

/// Pixels whose value exceeds 1e-3 of the maximum (at most `cap`, deterministic).
fn signal_pixels(model: &ShotModel, fhkl: &FhklTable, cap: usize) -> Vec<Pixel> {
    let all = full_detector_pixels(&model.detector);
    let v = PreparedShot::new(model, fhkl, None, &[]).unwrap().forward(&all).unwrap();
    let max = v.iter().cloned().fold(0.0, f64::max);
    let mut sel: Vec<Pixel> = all.iter().zip(&v).filter(|(_, &x)| x > 1e-3 * max).map(|(p, _)| *p).collect();
    let mut rng = Rng(99);
    while sel.len() > cap {
        let i = rng.below(sel.len());
        sel.swap_remove(i);
    }
    sel
}

/// Apply `+delta` to parameter `p` of the model.
fn perturb(m: &ShotModel, p: Param, delta: f64) -> ShotModel {
    let mut m = m.clone();
    let c = &mut m.crystal;
    match p {
        Param::RotX => c.rot_xyz[0] += delta,
        Param::RotY => c.rot_xyz[1] += delta,
        Param::RotZ => c.rot_xyz[2] += delta,
        Param::Ucell(i) => c.ucell.values[i] += delta,
        Param::Ncells(n) => match n {
            NcellsParam::Na => c.ncells[0] += delta,
            NcellsParam::Nb => c.ncells[1] += delta,
            NcellsParam::Nc => c.ncells[2] += delta,
            NcellsParam::Nd => c.ncells[3] += delta,
            NcellsParam::Ne => c.ncells[4] += delta,
            NcellsParam::Nf => c.ncells[5] += delta,
            NcellsParam::Iso => (0..3).for_each(|k| c.ncells[k] += delta),
        },
        Param::Scale => m.scale += delta,
        Param::Eta(j) => match &mut c.mosaic {
            MosaicSpec::Generated { eta: Eta::Iso(e), .. } => *e += delta,
            MosaicSpec::Generated { eta: Eta::Aniso(e), .. } => e[j] += delta,
            _ => panic!("no eta"),
        },
        Param::DetzShift => m.shifts.detz_shift += delta,
        Param::PanelShift { panel, axis } => m.shifts.panel_shift[panel][axis] += delta,
        Param::PanelRot { panel, axis } => m.shifts.panel_rot[panel][axis] += delta,
        Param::LambdaOffset => m.lambda_coef[0] += delta,
        Param::LambdaScale => m.lambda_coef[1] += delta,
    }
    m
}

/// ε for each parameter: about 1% of the change that moves a spot by its width.
fn step(p: Param, system: LatticeSystem) -> f64 {
    match p {
        Param::RotX | Param::RotY | Param::RotZ => 2e-5,
        Param::Ucell(i) => {
            if system.is_angle(i) {
                2e-5
            } else {
                2e-3
            }
        }
        Param::Ncells(_) => 1e-2,
        Param::Scale => 1e-3,
        Param::Eta(_) => 1e-3,
        Param::DetzShift => 1e-3,
        Param::PanelShift { .. } => 3e-4,
        Param::PanelRot { .. } => 1e-4,
        Param::LambdaOffset => 3e-5,
        Param::LambdaScale => 2e-5,
    }
}

fn check(model: &ShotModel, fhkl: &FhklTable, params: &[Param], pixels: &[Pixel], system: LatticeSystem) {
    assert!(pixels.len() >= 30, "only {} signal pixels", pixels.len());
    let out = PreparedShot::new(model, fhkl, None, params).unwrap().forward_with_derivs(pixels).unwrap();
    let base = PreparedShot::new(model, fhkl, None, &[]).unwrap().forward(pixels).unwrap();
    for (a, b) in out.values.iter().zip(&base) {
        assert!((a - b).abs() <= 1e-12 * b.abs(), "values differ between modes");
    }
    for (k, &p) in params.iter().enumerate() {
        let eps = step(p, system);
        let eval = |d: f64| {
            PreparedShot::new(&perturb(model, p, d), fhkl, None, &[]).unwrap().forward(pixels).unwrap()
        };
        let (p1, m1, p2, m2) = (eval(eps), eval(-eps), eval(eps / 2.0), eval(-eps / 2.0));
        let an = &out.derivs[k];
        let amax = an.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        assert!(amax > 0.0, "{}: derivative is identically zero", p.name());
        let mut worst = 0.0f64;
        for i in 0..pixels.len() {
            let d1 = (p1[i] - m1[i]) / (2.0 * eps);
            let d2 = (p2[i] - m2[i]) / eps;
            let fd = (4.0 * d2 - d1) / 3.0;
            let err = (fd - an[i]).abs() / (an[i].abs() + 1e-3 * amax);
            worst = worst.max(err);
        }
        let vmax = base.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        eprintln!(
            "{system:?} {:>16}: worst scaled error {worst:.2e} over {} px (max|d|·ε/max v = {:.1e})",
            p.name(),
            pixels.len(),
            amax * eps / vmax
        );
        assert!(worst <= 1e-6, "{system:?} {}: scaled error {worst:.3e}", p.name());
    }
}

#[test]
fn all_parameters_triclinic_with_domains_oversampling_absorption_and_off_diagonal_n() {
    let o = Opts {
        n_domains: 4,
        eta: Eta::Iso(0.05),
        oversample: 2,
        off_diagonal_n: true,
        absorbing: true,
        ..Default::default()
    };
    let (m, fhkl) = random_shot(0xA11, &o);
    let pixels = signal_pixels(&m, &fhkl, 300);
    // Every panel must contribute, so panel parameters are exercised.
    for p in 0..3 {
        assert!(pixels.iter().any(|x| x.panel == p), "no signal on panel {p}");
    }
    let mut params = vec![Param::RotX, Param::RotY, Param::RotZ, Param::Scale, Param::Eta(0)];
    params.extend((0..6).map(Param::Ucell));
    params.extend(
        [
            NcellsParam::Na,
            NcellsParam::Nb,
            NcellsParam::Nc,
            NcellsParam::Nd,
            NcellsParam::Ne,
            NcellsParam::Nf,
        ]
        .map(Param::Ncells),
    );
    params.extend([Param::DetzShift, Param::LambdaOffset, Param::LambdaScale]);
    for panel in 0..3 {
        for axis in 0..3 {
            params.push(Param::PanelShift { panel, axis });
            params.push(Param::PanelRot { panel, axis });
        }
    }
    check(&m, &fhkl, &params, &pixels, LatticeSystem::Triclinic);
}

#[test]
fn unit_cell_and_rotations_for_every_lattice_system() {
    for (i, sys) in LatticeSystem::ALL.into_iter().enumerate() {
        let o = Opts { system: sys, ..Default::default() };
        let (m, fhkl) = random_shot(0xB00 + i as u64, &o);
        let pixels = signal_pixels(&m, &fhkl, 150);
        let mut params = vec![Param::RotX, Param::RotY, Param::RotZ];
        params.extend((0..sys.n_params()).map(Param::Ucell));
        check(&m, &fhkl, &params, &pixels, sys);
    }
}

#[test]
fn anisotropic_eta_isotropic_ncells_and_point_pixel() {
    let o = Opts {
        n_domains: 10,
        eta: Eta::Aniso([0.06, 0.08, 0.1]),
        point_pixel: true,
        system: LatticeSystem::Orthorhombic,
        ..Default::default()
    };
    let (m, fhkl) = random_shot(0xC0C, &o);
    let pixels = signal_pixels(&m, &fhkl, 200);
    let params = [
        Param::Eta(0),
        Param::Eta(1),
        Param::Eta(2),
        Param::Ncells(NcellsParam::Iso),
        Param::DetzShift,
        Param::PanelRot { panel: 1, axis: 0 },
        Param::PanelShift { panel: 2, axis: 2 },
    ];
    check(&m, &fhkl, &params, &pixels, LatticeSystem::Orthorhombic);
}

#[test]
fn ncells_without_the_det_prefactor() {
    let o = Opts {
        no_nabc_scale: true,
        off_diagonal_n: true,
        system: LatticeSystem::Monoclinic,
        ..Default::default()
    };
    let (m, fhkl) = random_shot(0xD0D, &o);
    let pixels = signal_pixels(&m, &fhkl, 200);
    let params = [
        NcellsParam::Na,
        NcellsParam::Nb,
        NcellsParam::Nc,
        NcellsParam::Nd,
        NcellsParam::Ne,
        NcellsParam::Nf,
    ]
    .map(Param::Ncells);
    check(&m, &fhkl, &params, &pixels, LatticeSystem::Monoclinic);
}

/// nanoBragg's sub-pixel convention (Ω and P fixed at the first sub-pixel)
/// moves both with the detector parameters: oversampling 3, an absorbing
/// panel, then point pixels.
#[test]
fn first_subpixel_convention_detector_and_crystal_parameters() {
    for (seed, point_pixel) in [(0x5B1, false), (0x5B2, true)] {
        let o = Opts {
            n_domains: 4,
            eta: Eta::Iso(0.05),
            oversample: 3,
            absorbing: true,
            point_pixel,
            ..Default::default()
        };
        let (mut m, fhkl) = random_shot(seed, &o);
        m.subpixel_factors = SubpixelFactors::FirstSubpixel;
        let pixels = signal_pixels(&m, &fhkl, 150);
        // The convention changes the values (so this is not the default model again).
        let mut d = m.clone();
        d.subpixel_factors = SubpixelFactors::OmegaPerSubpixel;
        let a = PreparedShot::new(&m, &fhkl, None, &[]).unwrap().forward(&pixels).unwrap();
        let b = PreparedShot::new(&d, &fhkl, None, &[]).unwrap().forward(&pixels).unwrap();
        assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-6 * y.abs()));
        let mut params = vec![Param::RotX, Param::Scale, Param::Eta(0), Param::Ucell(0), Param::DetzShift];
        params.extend([Param::Ncells(NcellsParam::Na), Param::LambdaOffset]);
        for panel in 0..2 {
            for axis in 0..3 {
                params.push(Param::PanelShift { panel, axis });
                params.push(Param::PanelRot { panel, axis });
            }
        }
        check(&m, &fhkl, &params, &pixels, LatticeSystem::Triclinic);
    }
}

#[test]
fn fhkl_scale_gradient_matches_finite_differences_and_dense_weights() {
    use diffbragg::kernel::FhklScales;
    let o = Opts { n_domains: 2, eta: Eta::Iso(0.05), oversample: 2, ..Default::default() };
    let (mut m, mut fhkl) = random_shot(0xE0E, &o);
    // ASU ids: a made-up grouping h → (|h|+|k|+|l|) mod 97 (any map will do for the gradient).
    fhkl.set_asu_ids(|h| Some(((h[0].abs() + 2 * h[1].abs() + 3 * h[2].abs()) % 97) as u32)).unwrap();
    // Two channels: the first source in channel 0, the others in channel 1.
    for (i, s) in m.sources.iter_mut().enumerate() {
        s.channel = (i > 0) as u32;
    }
    let n_asu = fhkl.n_asu();
    let mut rng = Rng(7);
    let scales = FhklScales { n_channels: 2, values: (0..2 * n_asu).map(|_| rng.range(0.5, 2.0)).collect() };
    let pixels = signal_pixels(&m, &fhkl, 200);
    let weights: Vec<f64> = (0..pixels.len()).map(|_| rng.range(-1.0, 1.0)).collect();
    let shot = PreparedShot::new(&m, &fhkl, Some(&scales), &[]).unwrap();
    let g = shot.fhkl_scale_gradient(&pixels, &weights).unwrap();
    assert_eq!(g.len(), 2 * n_asu);
    // The model is linear in each s, so a central difference is exact up to rounding.
    let gmax = g.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    let mut checked = 0;
    for (idx, &gi) in g.iter().enumerate() {
        if gi.abs() < 1e-3 * gmax {
            continue;
        }
        let eval = |d: f64| {
            let mut s = scales.clone();
            s.values[idx] += d;
            let v = PreparedShot::new(&m, &fhkl, Some(&s), &[]).unwrap().forward(&pixels).unwrap();
            v.iter().zip(&weights).map(|(a, w)| a * w).sum::<f64>()
        };
        let fd = (eval(1e-3) - eval(-1e-3)) / 2e-3;
        assert!((fd - gi).abs() <= 1e-9 * gmax, "slot {idx}: fd {fd} analytic {gi}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} scale slots had signal");
    // Values with all scales 1 equal the unscaled model.
    let ones = FhklScales::ones(n_asu, 2);
    let a = PreparedShot::new(&m, &fhkl, Some(&ones), &[]).unwrap().forward(&pixels).unwrap();
    let b = PreparedShot::new(&m, &fhkl, None, &[]).unwrap().forward(&pixels).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-13 * y.abs());
    }
}

/// The vector paths (AVX2, AVX-512) fuse multiply-adds and must agree with
/// each other bit for bit; the portable path does not fuse, so it agrees to
/// rounding (1e-12 relative).
#[test]
fn every_instruction_set_gives_the_same_results() {
    use diffbragg::kernel::SimdLevel;
    let o =
        Opts { n_domains: 4, eta: Eta::Iso(0.05), oversample: 2, off_diagonal_n: true, ..Default::default() };
    let (m, fhkl) = random_shot(0xF0F, &o);
    let pixels = signal_pixels(&m, &fhkl, 300);
    let params = Param::stage1_defaults(&m.crystal);
    let mut shot = PreparedShot::new(&m, &fhkl, None, &params).unwrap();
    shot.set_simd(SimdLevel::Generic).unwrap();
    let generic = shot.forward_with_derivs(&pixels).unwrap();
    let close = |a: &[f64], b: &[f64], what: &str| {
        let max = b.iter().fold(0.0f64, |x, y| x.max(y.abs()));
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-12 * max, "{what}: {x} vs {y}");
        }
    };
    let mut vector: Vec<diffbragg::kernel::KernelOutput> = vec![];
    for level in [SimdLevel::Avx2, SimdLevel::Avx512] {
        if shot.set_simd(level).is_err() {
            continue;
        }
        let got = shot.forward_with_derivs(&pixels).unwrap();
        close(&got.values, &generic.values, "values");
        for (k, row) in got.derivs.iter().enumerate() {
            close(row, &generic.derivs[k], &params[k].name());
        }
        if let Some(first) = vector.first() {
            assert_eq!(got.values, first.values, "{level:?} values differ from AVX2");
            assert_eq!(got.derivs, first.derivs, "{level:?} derivatives differ from AVX2");
        }
        vector.push(got);
    }
    eprintln!("compared {} vector instruction sets with the portable loop", vector.len());
}
