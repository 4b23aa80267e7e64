//! Spot finding against real DIALS output: `ssx_CuNiR/strong_1.refl` (dials.find_spots on one
//! Pilatus 6M SSX still, 167 spots with shoeboxes).
//!
//! What the shoeboxes hold (checked in `shoeboxes_hold_only_the_strong_pixels`): DIALS'
//! `PixelListShoeboxCreator` writes each labelled pixel's value with mask Valid|Foreground (5);
//! every other pixel of the bbox has data 0 and mask 0, and the background is 0. So the file
//! keeps the exact strong-pixel set and values of every spot, and nothing about the
//! background. That allows two tests:
//! 1. Labelling + centroid + sums from the strong-pixel set: must reproduce DIALS' table
//!    (count, order, bbox, n_signal, intensity, centroid, centroid variance).
//! 2. The threshold re-run on an image assembled from the shoebox pixels on a *constant*
//!    background, where the outcome is known by hand (see the test): DIALS' default
//!    `dispersion_extended` must mark exactly the stored pixels, and the whole pipeline
//!    (threshold → label → size and peak–centroid filters) must return DIALS' 167 spots.
//!    The threshold's decisions at the margin (which rim pixels of a real spot were just above
//!    or below) cannot be tested from this file: the real background is not stored. Those are
//!    covered by the brute-force comparison in `spotfind_synthetic.rs`.

use diffbragg::io::dials_refl::read_refl;
use diffbragg::predict::label::{
    find_spots_panel, label_panel, spots_to_table, LabelParams, Spot, TableOptions,
};
use diffbragg::predict::spotfinder::{threshold_panel, DispersionParams};
use diffbragg::reflections::{flags, ReflectionTable};
use diffbragg::testutil::shared;

const DIR: &str = "fixtures/dials_data_files/ssx_CuNiR";
/// The image number − 1 of `merlin0047_17000.cbf` (the file's z values are 16999.5).
const FRAME: i32 = 16999;

struct Fixture {
    table: ReflectionTable,
    shape: [usize; 2],
    values: Vec<f64>,
    strong: Vec<bool>,
}

/// The panel size from the matching `.expt` (image_size is (fast, slow)).
fn panel_shape() -> [usize; 2] {
    let text = std::fs::read_to_string(shared(&format!("{DIR}/imported_with_ref_5.expt"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let size = &v["detector"][0]["panels"][0]["image_size"];
    [size[1].as_u64().unwrap() as usize, size[0].as_u64().unwrap() as usize]
}

fn load() -> Fixture {
    let table = read_refl(shared(&format!("{DIR}/strong_1.refl"))).unwrap();
    let shape = panel_shape();
    assert_eq!(shape, [2527, 2463]);
    let [ny, nx] = shape;
    let mut values = vec![0.0; ny * nx];
    let mut strong = vec![false; ny * nx];
    for sb in table.get_shoebox("shoebox").unwrap() {
        let d = sb.data.as_ref().unwrap();
        let [x0, x1, y0, y1, _, _] = sb.bbox;
        let w = (x1 - x0) as usize;
        for (i, m) in d.mask.iter().enumerate() {
            if m == 5 {
                let (y, x) = (y0 as usize + i / w, x0 as usize + i % w);
                let k = y * nx + x;
                assert!(!strong[k], "pixel ({y}, {x}) belongs to two spots");
                assert!(y < (y1 as usize));
                strong[k] = true;
                values[k] = d.data[i] as f64;
            }
        }
    }
    Fixture { table, shape, values, strong }
}

#[test]
fn shoeboxes_hold_only_the_strong_pixels() {
    let t = read_refl(shared(&format!("{DIR}/strong_1.refl"))).unwrap();
    assert_eq!(t.nrows(), 167);
    let n_signal = t.get_int("n_signal").unwrap();
    for (sb, &n) in t.get_shoebox("shoebox").unwrap().iter().zip(n_signal) {
        assert_eq!(sb.panel, 0);
        assert_eq!(&sb.bbox[4..], &[FRAME, FRAME + 1]);
        let d = sb.data.as_ref().unwrap();
        let mut count = 0;
        for (i, m) in d.mask.iter().enumerate() {
            assert!(m == 0 || m == 5, "mask code {m}");
            if m == 5 {
                count += 1;
            } else {
                assert_eq!(d.data[i], 0.0, "non-spot pixel with data");
            }
            assert_eq!(d.background[i], 0.0);
        }
        assert_eq!(count, n);
    }
    // Smallest spots have 2 pixels: the file was made with min_spot_size = 2.
    assert_eq!(n_signal.iter().min(), Some(&2));
}

/// Compare our spots with the file row by row; returns the largest centroid difference (px).
fn compare(spots: &[Spot], t: &ReflectionTable) -> f64 {
    assert_eq!(spots.len(), t.nrows(), "spot count");
    let bbox = t.get_int6("bbox").unwrap();
    let xyz = t.get_vec3("xyzobs.px.value").unwrap();
    let var = t.get_vec3("xyzobs.px.variance").unwrap();
    let isum = t.get_double("intensity.sum.value").unwrap();
    let ivar = t.get_double("intensity.sum.variance").unwrap();
    let nsig = t.get_int("n_signal").unwrap();
    let mut within = 0;
    let mut max_dxy: f64 = 0.0;
    let mut max_rel_var: f64 = 0.0;
    for (i, s) in spots.iter().enumerate() {
        // DIALS orders spots by their first pixel in raster order: the rows must line up.
        assert_eq!(s.bbox, bbox[i], "row {i} bbox");
        assert_eq!(s.n_pixels() as i32, nsig[i], "row {i} n_signal");
        // Integer counts summed exactly (DIALS sums in f32, exact below 2^24).
        assert_eq!(s.intensity, isum[i], "row {i} intensity");
        assert_eq!(s.intensity.abs(), ivar[i], "row {i} intensity variance");
        let d = (0..3).map(|a| (s.centroid.position[a] - xyz[i][a]).abs()).fold(0.0, f64::max);
        max_dxy = max_dxy.max(d);
        if d <= 0.05 {
            within += 1;
        }
        for (ours, theirs) in s.centroid.std_err_sq.iter().zip(&var[i]) {
            max_rel_var = max_rel_var.max((ours - theirs).abs() / theirs);
        }
    }
    // The acceptance criterion (≥ 95 % within 0.05 px) …
    assert!(within * 100 >= 95 * spots.len(), "{within} of {} within 0.05 px", spots.len());
    // … and what the arithmetic allows: DIALS' positions are double sums of integer weights,
    // ours too, so they agree to rounding. Its Σw² is an f32 sum (rounds above 2^24), hence
    // the 1e-6 relative bound on the variance.
    assert!(max_dxy < 1e-9, "largest centroid difference {max_dxy} px");
    assert!(max_rel_var < 1e-6, "largest relative variance difference {max_rel_var}");
    eprintln!("{} spots: max |Δxyz| = {max_dxy:.2e} px, max rel Δvariance = {max_rel_var:.2e}", spots.len());
    max_dxy
}

#[test]
fn labelling_and_centroids_from_strong_pixels_match_dials() {
    let f = load();
    let params = LabelParams::dials_find_spots(2);
    let spots = label_panel(&f.values, &f.strong, f.shape, 0, FRAME, &params).unwrap();
    compare(&spots, &f.table);

    // The table has DIALS' strong-spot columns, and its shoeboxes are DIALS' shoeboxes.
    let t = spots_to_table(&spots, &TableOptions { shoeboxes: true, ..Default::default() }).unwrap();
    let names: Vec<&str> = t.column_names().collect();
    let theirs: Vec<&str> = f.table.column_names().collect();
    assert_eq!(names, theirs);
    assert!(t.get_size("flags").unwrap().iter().all(|&v| v == flags::STRONG));
    assert_eq!(t.get_size("flags").unwrap(), f.table.get_size("flags").unwrap());
    assert_eq!(t.get_size("panel").unwrap(), f.table.get_size("panel").unwrap());
    assert_eq!(t.get_int("n_signal").unwrap(), f.table.get_int("n_signal").unwrap());
    assert_eq!(t.get_shoebox("shoebox").unwrap(), f.table.get_shoebox("shoebox").unwrap());

    // Connectivity: this file cannot tell 4- from 8-connectivity — no two of its spots touch
    // only diagonally (checked here, so the claim stays true). 4-connectivity is DIALS'
    // (`PixelListLabeller::labels_2d` links x+1 and y+1 only) and is tested on hand-built
    // masks in `label::tests::four_connectivity_and_order`.
    let [_, nx] = f.shape;
    let diagonal_only = (0..f.strong.len() - nx - 1).any(|k| {
        (f.strong[k] && f.strong[k + nx + 1] && !f.strong[k + 1] && !f.strong[k + nx])
            || (k % nx > 0 && f.strong[k] && f.strong[k + nx - 1] && !f.strong[k - 1] && !f.strong[k + nx])
    });
    assert!(!diagonal_only);
}

#[test]
fn size_filter_is_inclusive_and_applied() {
    let f = load();
    let p3 = LabelParams { min_spot_size: 3, ..LabelParams::dials_find_spots(3) };
    let spots = label_panel(&f.values, &f.strong, f.shape, 0, FRAME, &p3).unwrap();
    let n2 = f.table.get_int("n_signal").unwrap().iter().filter(|&&n| n == 2).count();
    assert_eq!(spots.len(), 167 - n2);
    let p = LabelParams { min_spot_size: 2, max_spot_size: 7, max_separation: None };
    let spots = label_panel(&f.values, &f.strong, f.shape, 0, FRAME, &p).unwrap();
    let n8 = f.table.get_int("n_signal").unwrap().iter().filter(|&&n| n == 8).count();
    assert_eq!(spots.len(), 167 - n8);
}

#[test]
fn threshold_rerun_on_constant_background_reproduces_dials_spots() {
    let f = load();
    let trusted = vec![true; f.values.len()];
    // DIALS defaults (dispersion_extended, kernel 3 3, σ_b 6, σ_s 3, min_local 2, global 0) and
    // dials.find_spots' filters with the file's min_spot_size.
    let params = DispersionParams::default();
    let label = LabelParams::dials_find_spots(2);
    for b in [0.0, 1.0] {
        // With background b ∈ {0, 1} and spot pixels ≥ 14 counts (the file's minimum), every 7×7
        // window holding a spot pixel fails the dispersion test (for b = 1 and one pixel of 14:
        // n·s2 − s² − s(n−1) = 5136 > s·6·√(2·48) = 3645; more or brighter pixels only raise it)
        // and no other window does (constant). The non-background region is each spot dilated
        // by 3 px, its core (distance ≥ 3 from background) the spot dilated by 1 px, and the
        // local mean over the 11×11 background is exactly b. A core pixel is strong iff
        // v > 0 and v ≥ b + 3√b: exactly the stored spot pixels.
        let image: Vec<f64> = f.values.iter().zip(&f.strong).map(|(&v, &s)| if s { v } else { b }).collect();
        let mask = threshold_panel(&image, f.shape, &trusted, &params).unwrap();
        let wrong = mask.iter().zip(&f.strong).filter(|(a, b)| a != b).count();
        assert_eq!(wrong, 0, "background {b}: {wrong} pixels differ from DIALS' strong set");
        let spots = find_spots_panel(&image, f.shape, &trusted, 0, FRAME, &params, &label).unwrap();
        assert!(compare(&spots, &f.table) < 1e-9);
    }
}
