//! The CUDA kernels' maths (`kernels/diffbragg_model.cuh`, compiled here by
//! the host C++ compiler and run over the same (pixel, part) grid as a launch)
//! against the Rust CPU kernel: pixel values, every derivative, the
//! Fhkl-scale gradient, every lattice shape and system, several parts per
//! pixel, and multi-shot batches.
//!
//! Criterion: `|gpu − cpu| ≤ 1e-6·|cpu| + 1e-10·max|cpu row|` for every pixel
//! (the floor covers derivative entries that cancel to ~0). Both sides sum in
//! f64 in different orders, so the real agreement is ~1e-13; a sensitivity
//! test shows the criterion fails for a 1e-5 change of the model.

use diffbragg::conventions::{axis_angle, Mat3, Vec3};
use diffbragg::crystal::UnitCell;
use diffbragg::geometry::{Beam, Detector, Panel};
use diffbragg::gpu::{host, layout, BatchOutput, Mode, PixelBatch};
use diffbragg::kernel::{
    full_detector_pixels, CrystalModel, DetectorShifts, Eta, FhklScales, FhklTable, LatticeShape, MosaicSpec,
    NcellsParam, Param, Pixel, PreparedShot, ShotModel, Source,
};
use diffbragg::ucell::{LatticeSystem, UcellParams};

struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
}

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

fn rot(rng: &mut Rng, max: f64) -> Mat3 {
    let ax = Vec3::new(rng.range(-1.0, 1.0), rng.range(-1.0, 1.0), rng.range(-1.0, 1.0));
    axis_angle(&ax, rng.range(-max, max))
}

#[derive(Clone)]
struct Opts {
    system: LatticeSystem,
    shape: LatticeShape,
    n_domains: usize,
    eta: Eta,
    oversample: usize,
    off_diagonal_n: bool,
    absorbing: bool,
    point_pixel: bool,
    no_nabc_scale: bool,
    polarization: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            system: LatticeSystem::Triclinic,
            shape: LatticeShape::Gauss,
            n_domains: 1,
            eta: Eta::Iso(0.0),
            oversample: 1,
            off_diagonal_n: false,
            absorbing: false,
            point_pixel: false,
            no_nabc_scale: false,
            polarization: true,
        }
    }
}

/// Three tilted 64×64 panels, a 3-channel spectrum, random orientation, shifts
/// and rotations of the panels, an anomalous Fhkl box with holes.
fn shot(seed: u64, o: &Opts) -> (ShotModel, FhklTable) {
    let mut rng = Rng(seed);
    let centres = [(-13.0, 4.0), (3.0, 12.5), (11.0, -9.0)];
    let mut panels = Vec::new();
    for (i, (cx, cy)) in centres.iter().enumerate() {
        let r = rot(&mut rng, 0.08);
        let (fast, slow) = (r * Vec3::x(), r * -Vec3::y());
        let origin = Vec3::new(*cx, *cy, -80.0 - 3.0 * i as f64) - fast * 4.8 - slow * 4.8;
        let mut p = Panel {
            origin,
            fast,
            slow,
            pixel_size: [0.15, 0.15],
            image_size: [64, 64],
            ..Default::default()
        };
        if o.absorbing && i == 0 {
            p.thickness = 0.32;
            p.mu = 1.0 / 0.35;
        }
        panels.push(p);
    }
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
    let u = rot(&mut rng, std::f64::consts::PI);
    let mut c = CrystalModel::new(u, ucell, [9.0 + rng.range(0.0, 4.0), 11.0, 13.0 + rng.range(0.0, 3.0)]);
    c.shape = o.shape;
    c.rot_xyz = [rng.range(-0.01, 0.01), rng.range(-0.01, 0.01), rng.range(-0.01, 0.01)];
    if o.off_diagonal_n {
        c.ncells[3..].copy_from_slice(&[1.5, -0.8, 0.6]);
    }
    c.no_nabc_scale = o.no_nabc_scale;
    if o.n_domains > 1 {
        c.mosaic = MosaicSpec::Generated {
            n_domains: o.n_domains,
            eta: o.eta.clone(),
            axes: u * cell_for(o.system).b_real(),
        };
    }
    let mut m = ShotModel::new(Detector { panels, hierarchy: None }, beam, sources, c, 1e24);
    m.scale = 1.7;
    m.oversample = o.oversample;
    m.point_pixel = o.point_pixel;
    m.polarization = o.polarization;
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
    let (mut hkl, mut f) = (Vec::new(), Vec::new());
    for h in -25..=25 {
        for k in -25..=25 {
            for l in -25..=25 {
                if rng.uniform() < 0.9 {
                    hkl.push([h, k, l]);
                    f.push(rng.range(5.0, 100.0));
                }
            }
        }
    }
    (m, FhklTable::new(&hkl, &f, 3.0, false).unwrap())
}

/// Up to `cap` pixels with signal (> 1e-3 of the maximum) plus 20 anywhere.
fn pixels_for(m: &ShotModel, fhkl: &FhklTable, cap: usize) -> Vec<Pixel> {
    let all = full_detector_pixels(&m.detector);
    let v = PreparedShot::new(m, fhkl, None, &[]).unwrap().forward(&all).unwrap();
    let max = v.iter().cloned().fold(0.0, f64::max);
    assert!(max > 0.0, "no signal");
    let sig: Vec<Pixel> = all.iter().zip(&v).filter(|(_, &x)| x > 1e-3 * max).map(|(p, _)| *p).collect();
    let step = sig.len().div_ceil(cap).max(1);
    let mut out: Vec<Pixel> = sig.into_iter().step_by(step).collect();
    out.extend(all.iter().step_by(all.len() / 20).take(20));
    out
}

/// Largest scaled deviation of `got` from `want` (criterion: ≤ 1).
fn scaled_dev(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let max = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / (1e-6 * w.abs() + 1e-10 * max).max(f64::MIN_POSITIVE))
        .fold(0.0, f64::max)
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    let max = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    assert!(max > 0.0, "{what}: the CPU reference is identically zero (nothing compared)");
    let d = scaled_dev(got, want);
    let rel = got.iter().zip(want).fold(0.0f64, |a, (g, w)| a.max((g - w).abs())) / max;
    eprintln!("{what}: max|Δ|/max = {rel:.1e}, {d:.1e} of the tolerance");
    assert!(d <= 1.0, "{what}: deviation {d:.3e} of the tolerance");
}

fn host_eval(
    shots: &[&PreparedShot],
    px: &PixelBatch,
    mode: Mode,
    w: Option<&[f64]>,
    parts: usize,
) -> BatchOutput {
    host::evaluate(shots, px, mode, w, parts).unwrap()
}

/// Values and all derivative rows, host build vs CPU kernel, for 1 and 3 parts.
fn check_derivs(m: &ShotModel, fhkl: &FhklTable, params: &[Param], cap: usize, what: &str) {
    let px = pixels_for(m, fhkl, cap);
    let shot = PreparedShot::new(m, fhkl, None, params).unwrap();
    let cpu = shot.forward_with_derivs(&px).unwrap();
    let batch = PixelBatch::single(&px);
    for parts in [1, 3] {
        let out = host_eval(&[&shot], &batch, Mode::Derivs, None, parts);
        assert_close(&out.values[0], &cpu.values, &format!("{what} values, {parts} parts"));
        assert_eq!(out.derivs[0].len(), params.len());
        for (j, p) in params.iter().enumerate() {
            assert_close(
                &out.derivs[0][j],
                &cpu.derivs[j],
                &format!("{what} ∂/∂{}, {parts} parts", p.name()),
            );
        }
    }
    // Forward mode agrees too.
    let fwd = PreparedShot::new(m, fhkl, None, &[]).unwrap();
    let out = host_eval(&[&fwd], &batch, Mode::Forward, None, 2);
    assert_close(&out.values[0], &cpu.values, &format!("{what} forward"));
}

fn all_params(n_ucell: usize, n_eta: usize, off_diag: bool) -> Vec<Param> {
    let mut v = vec![Param::RotX, Param::RotY, Param::RotZ, Param::Scale];
    v.extend((0..n_ucell).map(Param::Ucell));
    v.extend((0..n_eta).map(Param::Eta));
    v.extend([NcellsParam::Na, NcellsParam::Nb, NcellsParam::Nc].map(Param::Ncells));
    if off_diag {
        v.extend([NcellsParam::Nd, NcellsParam::Ne, NcellsParam::Nf].map(Param::Ncells));
    }
    v.extend([Param::DetzShift, Param::LambdaOffset, Param::LambdaScale]);
    for panel in 0..3 {
        for axis in 0..3 {
            v.push(Param::PanelShift { panel, axis });
            v.push(Param::PanelRot { panel, axis });
        }
    }
    v
}

#[test]
fn layout_matches_the_header() {
    let h = host::host_layout();
    assert!(h.len() > 20);
    assert_eq!(h, layout::rust_layout(), "C++ and Rust disagree on the packed struct layout");
}

#[test]
fn every_gradient_with_domains_oversampling_absorption_and_off_diagonal_n() {
    let o = Opts {
        n_domains: 4,
        eta: Eta::Iso(0.05),
        oversample: 2,
        off_diagonal_n: true,
        absorbing: true,
        ..Default::default()
    };
    let (m, fhkl) = shot(0xA11, &o);
    check_derivs(&m, &fhkl, &all_params(6, 1, true), 120, "triclinic/4 domains/os 2/absorbing");
}

#[test]
fn point_pixel_anisotropic_eta_no_nabc_scale_no_polarization() {
    let o = Opts {
        system: LatticeSystem::Orthorhombic,
        n_domains: 6,
        eta: Eta::Aniso([0.06, 0.08, 0.1]),
        point_pixel: true,
        no_nabc_scale: true,
        polarization: false,
        ..Default::default()
    };
    let (m, fhkl) = shot(0xC0C, &o);
    let mut p = all_params(3, 3, false);
    p.push(Param::Ncells(NcellsParam::Iso));
    check_derivs(&m, &fhkl, &p, 120, "orthorhombic/aniso η/point pixel");
}

#[test]
fn rotations_and_cell_for_every_lattice_system() {
    for (i, sys) in LatticeSystem::ALL.into_iter().enumerate() {
        let (m, fhkl) = shot(0xB00 + i as u64, &Opts { system: sys, ..Default::default() });
        let mut p = vec![Param::RotX, Param::RotY, Param::RotZ];
        p.extend((0..sys.n_params()).map(Param::Ucell));
        check_derivs(&m, &fhkl, &p, 60, &format!("{sys:?}"));
    }
}

#[test]
fn every_lattice_shape_forward_and_fhkl_gradient() {
    for shape in [
        LatticeShape::Gauss,
        LatticeShape::Square,
        LatticeShape::Round,
        LatticeShape::Tophat,
        LatticeShape::GaussArgchk,
    ] {
        let o = Opts {
            shape,
            n_domains: 2,
            eta: Eta::Iso(0.05),
            oversample: 2,
            absorbing: true,
            ..Default::default()
        };
        let (mut m, mut fhkl) = shot(0xD00 + shape as u64, &o);
        fhkl.set_asu_ids(|h| Some(((h[0].abs() + 2 * h[1].abs() + 3 * h[2].abs()) % 97) as u32)).unwrap();
        for (i, s) in m.sources.iter_mut().enumerate() {
            s.channel = (i > 0) as u32;
        }
        let px = pixels_for(&m, &fhkl, 100);
        let batch = PixelBatch::single(&px);
        let plain = PreparedShot::new(&m, &fhkl, None, &[]).unwrap();
        let cpu = plain.forward(&px).unwrap();
        for parts in [1, 4] {
            let out = host_eval(&[&plain], &batch, Mode::Forward, None, parts);
            assert_close(&out.values[0], &cpu, &format!("{shape:?} forward, {parts} parts"));
        }
        let mut rng = Rng(5);
        let n_asu = fhkl.n_asu();
        let scales =
            FhklScales { n_channels: 2, values: (0..2 * n_asu).map(|_| rng.range(0.5, 2.0)).collect() };
        let scaled = PreparedShot::new(&m, &fhkl, Some(&scales), &[]).unwrap();
        let w: Vec<f64> = (0..px.len()).map(|_| rng.range(-1.0, 1.0)).collect();
        let cpu_g = scaled.fhkl_scale_gradient(&px, &w).unwrap();
        for parts in [1, 3] {
            let g = host_eval(&[&scaled], &batch, Mode::FhklGrad, Some(&w), parts).fhkl_grad;
            assert_close(&g, &cpu_g, &format!("{shape:?} Fhkl gradient, {parts} parts"));
        }
        // Scaled forward values too.
        let out = host_eval(&[&scaled], &batch, Mode::Forward, None, 1);
        assert_close(&out.values[0], &scaled.forward(&px).unwrap(), &format!("{shape:?} scaled forward"));
    }
}

#[test]
fn a_batch_of_different_shots_and_more_parts_than_steps() {
    let (m1, fhkl) = shot(0xE01, &Opts { n_domains: 4, eta: Eta::Iso(0.05), ..Default::default() });
    let (mut m2, _) = shot(0xE02, &Opts { oversample: 2, off_diagonal_n: true, ..Default::default() });
    m2.scale = 0.3;
    let p1 = [Param::RotX, Param::Scale, Param::Eta(0), Param::DetzShift];
    let p2 = all_params(6, 0, true);
    let (s1, s2) = (
        PreparedShot::new(&m1, &fhkl, None, &p1).unwrap(),
        PreparedShot::new(&m2, &fhkl, None, &p2).unwrap(),
    );
    let (x1, x2) = (pixels_for(&m1, &fhkl, 60), pixels_for(&m2, &fhkl, 60));
    let batch = PixelBatch::new(vec![x1.clone(), x2.clone()]);
    // 3 sources × 4 domains = 12 steps (shot 1), 3 (shot 2): 5 parts leaves some of shot 2's empty.
    for parts in [1, 5] {
        let out = host_eval(&[&s1, &s2], &batch, Mode::Derivs, None, parts);
        for (k, (s, x)) in [(&s1, &x1), (&s2, &x2)].into_iter().enumerate() {
            let cpu = s.forward_with_derivs(x).unwrap();
            assert_close(&out.values[k], &cpu.values, &format!("shot {k} values"));
            assert_eq!(out.derivs[k].len(), cpu.derivs.len());
            for (j, d) in cpu.derivs.iter().enumerate() {
                assert_close(&out.derivs[k][j], d, &format!("shot {k} param {j}, {parts} parts"));
            }
        }
    }
}

#[test]
fn the_criterion_detects_a_small_model_change() {
    let (m, fhkl) = shot(0xF00, &Opts::default());
    let px = pixels_for(&m, &fhkl, 80);
    let mut m2 = m.clone();
    m2.crystal.rot_xyz[0] += 1e-5;
    let host = host_eval(
        &[&PreparedShot::new(&m, &fhkl, None, &[]).unwrap()],
        &PixelBatch::single(&px),
        Mode::Forward,
        None,
        1,
    );
    let other = PreparedShot::new(&m2, &fhkl, None, &[]).unwrap().forward(&px).unwrap();
    assert!(scaled_dev(&host.values[0], &other) > 1.0, "a 1e-5 rad misorientation went unnoticed");
}

#[test]
fn bad_batches_are_rejected_with_named_errors() {
    let (m, fhkl) = shot(0x123, &Opts::default());
    let (_, other_table) = shot(0x124, &Opts::default());
    let px = vec![Pixel { panel: 0, fast: 1, slow: 1 }];
    let a = PreparedShot::new(&m, &fhkl, None, &[]).unwrap();
    let b = PreparedShot::new(&m, &other_table, None, &[]).unwrap();
    let two = PixelBatch::new(vec![px.clone(), px.clone()]);
    let e = host::evaluate(&[&a, &b], &two, Mode::Forward, None, 1).unwrap_err().to_string();
    assert!(e.contains("same structure-factor table"), "{e}");
    let bad = PixelBatch::single(&[Pixel { panel: 0, fast: 64, slow: 0 }]);
    let e = host::evaluate(&[&a], &bad, Mode::Forward, None, 1).unwrap_err().to_string();
    assert!(e.contains("outside panel"), "{e}");
    let one = PixelBatch::single(&px);
    let e = host::evaluate(&[&a], &one, Mode::FhklGrad, Some(&[1.0]), 1).unwrap_err().to_string();
    assert!(e.contains("scales"), "{e}");
    let e = host::evaluate(&[&a], &one, Mode::FhklGrad, None, 1).unwrap_err().to_string();
    assert!(e.contains("weight"), "{e}");
    let many: Vec<Param> = (0..65).map(|_| Param::RotX).collect();
    let c = PreparedShot::new(&m, &fhkl, None, &many).unwrap();
    let e = host::evaluate(&[&c], &one, Mode::Derivs, None, 1).unwrap_err().to_string();
    assert!(e.contains("at most 64"), "{e}");
}

#[test]
fn nanobragg_subpixel_convention_is_refused_by_the_gpu_layout() {
    let (mut m, fhkl) = shot(0xE00, &Opts::default());
    m.subpixel_factors = diffbragg::kernel::SubpixelFactors::FirstSubpixel;
    let px = pixels_for(&m, &fhkl, 10);
    let p = PreparedShot::new(&m, &fhkl, None, &[]).unwrap();
    let err = layout::pack(&[&p], &[&px[..]], layout::MODE_FWD).unwrap_err().to_string();
    assert!(err.contains("subpixel_factors") && err.contains("--device cpu"), "{err}");
}
