//! The kernel's API contract: bad input gives one clear error naming the
//! parameter (never a panic), the ROI/full-image helpers agree with each
//! other, and the detector-absorption model has the right physics.

mod common;

use diffbragg::conventions::{axis_angle, Mat3, Vec3};
use diffbragg::crystal::UnitCell;
use diffbragg::geometry::{Beam, Detector, Panel};
use diffbragg::kernel::pixels::assemble_model;
use diffbragg::kernel::{
    full_detector_pixels, pixels_from_rois, simulate_image, BackgroundPlane, CrystalModel, Eta, FhklScales,
    FhklTable, LatticeShape, MosaicSpec, Param, Pixel, PreparedShot, Roi, ShotModel, Source,
};
use diffbragg::ucell::{LatticeSystem, UcellParams};

fn model() -> (ShotModel, FhklTable) {
    let panel = Panel {
        origin: Vec3::new(-10.0, 10.0, -80.0),
        fast: Vec3::x(),
        slow: -Vec3::y(),
        pixel_size: [0.1, 0.1],
        image_size: [200, 200],
        ..Default::default()
    };
    let cell = UnitCell::new(61.0, 73.0, 89.0, 90.0, 90.0, 90.0);
    let u = axis_angle(&Vec3::new(0.3, -0.5, 0.8), 1.1);
    let c = CrystalModel::new(
        u,
        UcellParams::from_cell(LatticeSystem::Orthorhombic, &cell).unwrap(),
        [12.0, 14.0, 9.0],
    );
    let sources =
        (0..3).map(|i| Source { wavelength: 1.29 + 0.01 * i as f64, weight: 1.0, channel: 0 }).collect();
    let m =
        ShotModel::new(Detector { panels: vec![panel], hierarchy: None }, Beam::default(), sources, c, 1e24);
    let mut hkl = vec![];
    let mut f = vec![];
    for h in -25..=25 {
        for k in -25..=25 {
            for l in -25..=25 {
                hkl.push([h, k, l]);
                f.push(10.0 + (h * 7 + k * 13 + l * 31i32).rem_euclid(97) as f64);
            }
        }
    }
    (m, FhklTable::new(&hkl, &f, 0.0, false).unwrap())
}

fn err_of(m: &ShotModel, t: &FhklTable, params: &[Param]) -> String {
    match PreparedShot::new(m, t, None, params) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_models_give_named_errors() {
    let (base, t) = model();
    type Mutation = Box<dyn Fn(&mut ShotModel)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|m| m.sources.clear()), "sources"),
        (Box::new(|m| m.sources[1].wavelength = -1.0), "sources[1].wavelength"),
        (Box::new(|m| m.sources[0].weight = f64::NAN), "sources[0].weight"),
        (Box::new(|m| m.sources.iter_mut().for_each(|s| s.weight = 0.0)), "weights sum to zero"),
        (Box::new(|m| m.fluence = -1.0), "fluence"),
        (Box::new(|m| m.oversample = 0), "oversample"),
        (Box::new(|m| m.crystal.ncells[0] = 0.0), "ncells"),
        (Box::new(|m| m.crystal.ncells[3] = 20.0), "ncells"),
        (Box::new(|m| m.crystal.u = Mat3::identity() * 2.0), "crystal.U"),
        (Box::new(|m| m.crystal.o_matrix = Mat3::zeros()), "crystal.O"),
        (Box::new(|m| m.crystal.mosaic = MosaicSpec::Explicit(vec![])), "mosaic"),
        (
            Box::new(|m| m.crystal.mosaic = MosaicSpec::Explicit(vec![Mat3::identity() * 1.1])),
            "mosaic.umats[0]",
        ),
        (
            Box::new(|m| {
                m.crystal.mosaic =
                    MosaicSpec::Generated { n_domains: 3, eta: Eta::Iso(0.1), axes: Mat3::identity() }
            }),
            "mosaic_domains",
        ),
        (Box::new(|m| m.detector.panels[0].pixel_size = [0.0, 0.1]), "pixel_size"),
        (Box::new(|m| m.detector.panels[0].slow = Vec3::x()), "axes"),
        (Box::new(|m| m.detector.panels[0].origin = Vec3::new(0.0, 0.0, 0.0)), "origin"),
        (Box::new(|m| m.beam.direction = Vec3::zeros()), "beam.direction"),
        (Box::new(|m| m.beam.polarization_normal = Vec3::z()), "polarization_normal"),
        (Box::new(|m| m.shifts.panel_shift = vec![Vec3::zeros(); 2]), "panel_shift"),
        (Box::new(|m| m.lambda_coef = [-5.0, 1.0]), "lambda_coef"),
        (Box::new(|m| m.crystal.rot_xyz[1] = f64::INFINITY), "rot_xyz"),
    ];
    for (i, (f, want)) in cases.iter().enumerate() {
        let mut m = base.clone();
        f(&mut m);
        let e = err_of(&m, &t, &[]);
        assert!(e.contains(want), "case {i}: `{e}` does not mention `{want}`");
    }
    // Derivative requests that cannot be honoured.
    for (p, want) in [
        (Param::Ucell(3), "ucell3"),
        (Param::Eta(0), "eta0"),
        (Param::PanelShift { panel: 1, axis: 0 }, "panel1_shift_x"),
        (Param::PanelRot { panel: 0, axis: 3 }, "panel0_rot"),
    ] {
        let e = err_of(&base, &t, &[p]);
        assert!(e.contains(want), "{p:?}: {e}");
    }
    let mut sq = base.clone();
    sq.crystal.shape = LatticeShape::Square;
    assert!(err_of(&sq, &t, &[Param::RotX]).contains("Gaussian"));
    assert!(PreparedShot::new(&sq, &t, None, &[]).is_ok());
    // Scales of the wrong length, channels beyond the scales.
    let bad = FhklScales { n_channels: 1, values: vec![1.0; 3] };
    assert!(PreparedShot::new(&base, &t, Some(&bad), &[]).unwrap_err().to_string().contains("fhkl_scales"));
    let mut two = base.clone();
    two.sources[2].channel = 1;
    let one = FhklScales::ones(t.n_asu(), 1);
    let e = PreparedShot::new(&two, &t, Some(&one), &[]).unwrap_err().to_string();
    assert!(e.contains("sources[2].channel"), "{e}");
}

#[test]
fn bad_pixels_and_weights_are_errors() {
    let (m, t) = model();
    let shot = PreparedShot::new(&m, &t, None, &[]).unwrap();
    let e = shot.forward(&[Pixel { panel: 0, fast: 200, slow: 0 }]).unwrap_err().to_string();
    assert!(e.contains("pixels[0]"), "{e}");
    let e = shot.forward(&[Pixel { panel: 0, fast: 0, slow: 0 }, Pixel { panel: 3, fast: 0, slow: 0 }]);
    assert!(e.unwrap_err().to_string().contains("pixels[1]"));
    assert!(shot.fhkl_scale_gradient(&[Pixel { panel: 0, fast: 1, slow: 1 }], &[1.0]).is_err());
    let sc = FhklScales::ones(t.n_asu(), 1);
    let shot = PreparedShot::new(&m, &t, Some(&sc), &[]).unwrap();
    let px = [Pixel { panel: 0, fast: 1, slow: 1 }];
    assert!(shot.fhkl_scale_gradient(&px, &[]).unwrap_err().to_string().contains("weights"));
    assert!(shot.fhkl_scale_gradient(&px, &[f64::NAN]).unwrap_err().to_string().contains("weights[0]"));
    assert!(shot.forward(&[]).unwrap().is_empty());
}

#[test]
fn rois_full_image_and_assembly_agree() {
    let (m, t) = model();
    let img = simulate_image(&m, &t).unwrap();
    let all = full_detector_pixels(&m.detector);
    assert_eq!(img.len(), all.len());
    let imax = img.iter().cloned().fold(0.0, f64::max);
    assert!(imax > 0.0);
    // ROIs around the brightest pixel and a corner: same values as the full image.
    let best = (0..img.len()).max_by(|&a, &b| img[a].total_cmp(&img[b])).unwrap();
    let (bx, by) = (all[best].fast as usize, all[best].slow as usize);
    let rois = [
        Roi {
            panel: 0,
            x0: bx.saturating_sub(5),
            x1: (bx + 6).min(200),
            y0: by.saturating_sub(5),
            y1: (by + 6).min(200),
        },
        Roi { panel: 0, x0: 0, x1: 7, y0: 190, y1: 200 },
    ];
    let (px, roi_of) = pixels_from_rois(&rois, &m.detector).unwrap();
    let raw = PreparedShot::new(&m, &t, None, &[]).unwrap().forward(&px).unwrap();
    let no_params = PreparedShot::new(&m, &t, None, &[]).unwrap().forward_with_derivs(&px).unwrap();
    assert_eq!(no_params.values, raw);
    assert!(no_params.derivs.is_empty());
    for (p, v) in px.iter().zip(&raw) {
        assert_eq!(*v, img[p.slow as usize * 200 + p.fast as usize]);
    }
    let bg = [BackgroundPlane { a: 0.1, b: 0.2, c: 3.0 }, BackgroundPlane { a: 0.0, b: 0.0, c: 1.0 }];
    let model_vals = assemble_model(&rois, &px, &roi_of, &raw, &[2.0, 1.0], &bg).unwrap();
    let first = &px[0];
    assert_eq!(model_vals[0], 2.0 * raw[0] + 3.0);
    assert_eq!(first.fast as usize, rois[0].x0);
}

#[test]
fn absorption_single_layer_is_the_sensor_efficiency() {
    // One layer at the front face: value(thick) = value(thin)·(1 − exp(−t·μ/cosθ)),
    // with cosθ = k̂·n̂ at the pixel (oversample 1, so one position per pixel).
    let (m, t) = model();
    let all = full_detector_pixels(&m.detector);
    let thin = PreparedShot::new(&m, &t, None, &[]).unwrap().forward(&all).unwrap();
    let mut thick = m.clone();
    thick.detector.panels[0].thickness = 0.45;
    thick.detector.panels[0].mu = 1.0 / 0.32;
    thick.thickness_layers = 1;
    let v = PreparedShot::new(&thick, &t, None, &[]).unwrap().forward(&all).unwrap();
    let pan = &m.detector.panels[0];
    let n = pan.outward_normal();
    let max = thin.iter().cloned().fold(0.0, f64::max);
    let mut checked = 0;
    for (i, p) in all.iter().enumerate() {
        if thin[i] < 1e-6 * max {
            continue;
        }
        let pos = pan.pixel_centre_lab(p.fast as usize, p.slow as usize);
        let cos = pos.normalize().dot(&n);
        let eff = 1.0 - (-0.45 / (0.32 * cos)).exp();
        assert!((v[i] / thin[i] - eff).abs() < 1e-12, "pixel {p:?}");
        checked += 1;
    }
    assert!(checked > 10);
    // Several layers: the capture fractions still add up to the same efficiency,
    // up to the parallax shift of the deeper layers (small at these angles).
    thick.thickness_layers = 4;
    let v4 = PreparedShot::new(&thick, &t, None, &[]).unwrap().forward(&all).unwrap();
    let s1: f64 = v.iter().sum();
    let s4: f64 = v4.iter().sum();
    assert!((s4 / s1 - 1.0).abs() < 0.02, "{s4} vs {s1}");
}
