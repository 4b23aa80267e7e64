//! Symmetry-equivalent reflections give identical lattice transforms and
//! identical intensities. A re-indexing `h → g·h` (through the change-of-basis
//! matrix O) describes the same physical crystal, so with a structure-factor
//! table that is invariant under g the image must not change:
//! * g = −1 (Friedel) with a P1 table holding equal Friedel pairs;
//! * the three 2-folds of P 2 2 2 with a table built on the mmm orbits.
//!
//! An anomalous table (F(h) ≠ F(−h)) must change the image under g = −1,
//! which shows the comparison can fail.

mod common;

use common::Rng;
use diffbragg::conventions::{axis_angle, Mat3, Vec3};
use diffbragg::crystal::UnitCell;
use diffbragg::geometry::{Beam, Detector, Panel};
use diffbragg::kernel::model::{lattice_intensity, LatticeShape};
use diffbragg::kernel::{
    full_detector_pixels, CrystalModel, Eta, FhklTable, MosaicSpec, PreparedShot, ShotModel, Source,
};
use diffbragg::ucell::{LatticeSystem, UcellParams};
use std::collections::HashMap;

fn model(o: Mat3) -> ShotModel {
    let panel = Panel {
        origin: Vec3::new(-12.0, 12.0, -90.0),
        fast: Vec3::x(),
        slow: -Vec3::y(),
        pixel_size: [0.1, 0.1],
        image_size: [240, 240],
        ..Default::default()
    };
    let cell = UnitCell::new(61.0, 73.0, 89.0, 90.0, 90.0, 90.0);
    let u = axis_angle(&Vec3::new(0.3, -0.5, 0.8), 1.1);
    let mut c = CrystalModel::new(
        u,
        UcellParams::from_cell(LatticeSystem::Orthorhombic, &cell).unwrap(),
        [12.0, 14.0, 9.0],
    );
    c.o_matrix = o;
    c.mosaic = MosaicSpec::Generated { n_domains: 2, eta: Eta::Iso(0.05), axes: u * cell.b_real() };
    let sources =
        (0..3).map(|i| Source { wavelength: 1.29 + 0.01 * i as f64, weight: 1.0, channel: 0 }).collect();
    let beam = Beam { polarization_fraction: 0.9, ..Default::default() };
    ShotModel::new(Detector { panels: vec![panel], hierarchy: None }, beam, sources, c, 1e24)
}

/// A table whose amplitude depends only on `key(h)`.
fn table(key: impl Fn([i32; 3]) -> [i32; 3]) -> FhklTable {
    let mut rng = Rng(42);
    let mut by_key: HashMap<[i32; 3], f64> = HashMap::new();
    let (mut hkl, mut f) = (vec![], vec![]);
    for h in -30..=30 {
        for k in -30..=30 {
            for l in -30..=30 {
                let v = *by_key.entry(key([h, k, l])).or_insert_with(|| rng.range(1.0, 100.0));
                hkl.push([h, k, l]);
                f.push(v);
            }
        }
    }
    FhklTable::new(&hkl, &f, 0.0, false).unwrap()
}

fn image(o: Mat3, t: &FhklTable) -> Vec<f64> {
    let m = model(o);
    PreparedShot::new(&m, t, None, &[]).unwrap().forward(&full_detector_pixels(&m.detector)).unwrap()
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let max = a.iter().cloned().fold(0.0, f64::max);
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / max).fold(0.0, f64::max)
}

#[test]
fn friedel_and_p222_equivalents_give_identical_images() {
    let friedel = table(|h| if h > [-h[0], -h[1], -h[2]] { h } else { [-h[0], -h[1], -h[2]] });
    let mmm = table(|h| h.map(i32::abs));
    let anomalous = table(|h| h);

    let base_f = image(Mat3::identity(), &friedel);
    let max = base_f.iter().cloned().fold(0.0, f64::max);
    let bright = base_f.iter().filter(|&&v| v > 1e-3 * max).count();
    assert!(bright > 50, "only {bright} bright pixels");
    let d = max_rel_diff(&base_f, &image(-Mat3::identity(), &friedel));
    assert!(d < 1e-12, "Friedel re-indexing changed the image by {d:e}");

    let base_m = image(Mat3::identity(), &mmm);
    for g in [Vec3::new(1.0, -1.0, -1.0), Vec3::new(-1.0, 1.0, -1.0), Vec3::new(-1.0, -1.0, 1.0)] {
        let d = max_rel_diff(&base_m, &image(Mat3::from_diagonal(&g), &mmm));
        assert!(d < 1e-12, "2-fold {g:?} changed the image by {d:e}");
    }

    // The control: an anomalous table is not invariant under −1.
    let d = max_rel_diff(&image(Mat3::identity(), &anomalous), &image(-Mat3::identity(), &anomalous));
    assert!(d > 1e-2, "anomalous differences were not seen ({d:e})");
}

#[test]
fn lattice_transform_is_invariant_under_the_point_group() {
    let n = Mat3::from_diagonal(&Vec3::new(12.0, 14.0, 9.0));
    let det = n.determinant();
    let diag = [12.0, 14.0, 9.0];
    let h = Vec3::new(3.04, -7.97, 11.02);
    let h0 = h.map(|x| (x - 0.5f64).ceil());
    for g in [
        Vec3::new(1.0, -1.0, -1.0),
        Vec3::new(-1.0, 1.0, -1.0),
        Vec3::new(-1.0, -1.0, 1.0),
        Vec3::new(-1.0, -1.0, -1.0),
    ] {
        let gh = h.component_mul(&g);
        let gh0 = gh.map(|x| (x - 0.5f64).ceil());
        assert_eq!(gh0, h0.component_mul(&g));
        for shape in [LatticeShape::Gauss, LatticeShape::Round, LatticeShape::Tophat, LatticeShape::Square] {
            let v = n * (h - h0);
            let gv = n * (gh - gh0);
            let a = lattice_intensity(shape, &[h.x, h.y, h.z], &[v.x, v.y, v.z], det, &diag);
            let b = lattice_intensity(shape, &[gh.x, gh.y, gh.z], &[gv.x, gv.y, gv.z], det, &diag);
            assert!((a - b).abs() <= 1e-12 * a.abs().max(1e-300), "{shape:?} {g:?}: {a} vs {b}");
        }
    }
}
