//! Acceptance test: reproduce the noise-free nanoBragg images in
//! `shared/reference/` (independent C simulator) without any fitted scale.
//!
//! Criteria: max relative difference ≤ 1e-5 over pixels above 1e-3 of the image
//! maximum (≤ 5e-4 for shot_06, whose reference evaluates Ω and P at the first
//! sub-pixel instead of per sub-pixel / at the centre), and the summed
//! intensity within 1e-6 for oversample 1. To stay fast in the dev profile the
//! full-detector cases are compared on every pixel above the threshold plus a
//! deterministic random sample of the others; the summed intensity is checked
//! on full images where that is cheap (ROI cases, quad_00) and on the full
//! shot_00 image by `diffbragg bench kernel --reference` in release.

mod common;

use common::{load_case, Rng};
use diffbragg::kernel::refcase::compare;
use diffbragg::kernel::{Pixel, PreparedShot};

/// Pixels above `frac·max` plus `n_random` others.
fn subset(case: &diffbragg::kernel::refcase::RefCase, frac: f64, n_random: usize) -> Vec<Pixel> {
    let all = case.rendered_pixels();
    let max = case.image.iter().fold(0.0f32, |a, &x| a.max(x));
    let mut rng = Rng(0x5eed_1234);
    let mut v: Vec<Pixel> =
        all.iter().copied().filter(|p| case.image[case.image_index(p)] > frac as f32 * max).collect();
    for _ in 0..n_random {
        v.push(all[rng.below(all.len())]);
    }
    v
}

fn run(name: &str, full: bool, tol: f64, check_sum: bool) {
    let case = load_case(name);
    let pixels = if full { case.rendered_pixels() } else { subset(&case, 1e-4, 4000) };
    let shot = PreparedShot::new(&case.model, &case.fhkl, None, &[]).unwrap();
    let t = std::time::Instant::now();
    let vals = shot.forward(&pixels).unwrap();
    let c = compare(&case, &pixels, &vals, 1e-3);
    eprintln!(
        "{name}: {} px in {:.2} s, {} compared, max rel {:.3e}, sum ours {:.6e} ref {:.6e} (rel {:.2e})",
        pixels.len(),
        t.elapsed().as_secs_f64(),
        c.n_compared,
        c.max_rel,
        c.sum_ours,
        c.sum_ref,
        (c.sum_ours - c.sum_ref) / c.sum_ref
    );
    assert!(c.n_compared >= 20, "too few bright pixels compared: {}", c.n_compared);
    assert!(c.max_rel <= tol, "{name}: max relative difference {:.3e} > {tol:e}", c.max_rel);
    if check_sum {
        let rel = ((c.sum_ours - c.sum_ref) / c.sum_ref).abs();
        assert!(rel <= 1e-6, "{name}: summed intensity differs by {rel:.3e}");
    }
}

#[test]
fn shot_00_gaussian() {
    run("shot_00", true, 1e-5, true);
}

#[test]
fn shot_00_square() {
    run("shot_00_square", true, 1e-5, true);
}

#[test]
fn shot_00_round() {
    run("shot_00_round", true, 1e-5, true);
}

#[test]
fn shot_00_tophat() {
    run("shot_00_tophat", true, 1e-5, true);
}

/// shot_06 with our convention (Ω per sub-pixel, P at the pixel centre). The
/// reference evaluates Ω and P once, at the first sub-pixel. Its README
/// estimates the effect at up to 3e-4; it is up to 5.5e-4 here, and an
/// independent numpy evaluation of both conventions from the case files gives
/// 5.0e-4 (ours, on 150 sampled bright pixels) and 5.6e-8 (nanoBragg's) — so
/// the bound is 6e-4, and the strict check is the next test.
#[test]
fn shot_06_oversample_2() {
    run("shot_06", false, 6e-4, false);
}

/// shot_06 to 1e-5: simulate the sub-pixels as pixels of a detector with half
/// the pixel size, divide out each sub-pixel's own Ω and P, and re-weight with
/// nanoBragg's Ω and P of the first sub-pixel. This checks everything except
/// the evaluation point of Ω and P, to the full tolerance.
#[test]
fn shot_06_matches_with_the_reference_subpixel_convention() {
    use diffbragg::kernel::model::{polarization, solid_angle};
    let case = load_case("shot_06");
    assert_eq!(case.model.oversample, 2);
    let max = case.image.iter().fold(0.0f32, |a, &x| a.max(x));
    let pixels: Vec<Pixel> =
        case.rendered_pixels().into_iter().filter(|p| case.image[case.image_index(p)] > 1e-3 * max).collect();
    let mut fine = case.model.clone();
    fine.oversample = 1;
    let pan0 = case.model.detector.panels[0].clone();
    {
        let p = &mut fine.detector.panels[0];
        p.pixel_size = [pan0.pixel_size[0] / 2.0, pan0.pixel_size[1] / 2.0];
        p.image_size = [pan0.image_size[0] * 2, pan0.image_size[1] * 2];
    }
    let subs: Vec<Pixel> = pixels
        .iter()
        .flat_map(|p| {
            (0..4).map(move |k| Pixel { panel: 0, fast: 2 * p.fast + (k % 2), slow: 2 * p.slow + (k / 2) })
        })
        .collect();
    let shot = PreparedShot::new(&fine, &case.fhkl, None, &[]).unwrap();
    let v = shot.forward(&subs).unwrap();
    let beam = &case.model.beam;
    let inc = beam.unit_s0();
    let e = {
        let e = beam.polarization_axis();
        (e - inc * inc.dot(&e)).normalize()
    };
    let b = inc.cross(&e);
    let a3 = |x: &diffbragg::conventions::Vec3| [x.x, x.y, x.z];
    let pol = |pos: diffbragg::conventions::Vec3| {
        let k = pos / pos.norm();
        polarization(&a3(&k), &a3(&inc), &a3(&e), &a3(&b), beam.kahn_factor())
    };
    let n = pan0.outward_normal();
    let omega = |pos: diffbragg::conventions::Vec3, area: f64| solid_angle(area, n.dot(&pos), pos.norm());
    let mut worst = 0.0f64;
    for (i, p) in pixels.iter().enumerate() {
        let mut isum = 0.0;
        for k in 0..4 {
            let sp = &subs[4 * i + k];
            let pos = fine.detector.panels[0].pixel_centre_lab(sp.fast as usize, sp.slow as usize);
            isum += v[4 * i + k] / (pol(pos) * omega(pos, fine.detector.panels[0].pixel_size[0].powi(2)));
        }
        let first = pan0.pixel_to_lab(p.fast as f64 + 0.25, p.slow as f64 + 0.25);
        let nb = isum / 4.0 * pol(first) * omega(first, pan0.pixel_size[0].powi(2));
        let r = case.image[case.image_index(p)] as f64;
        worst = worst.max((nb / r - 1.0).abs());
    }
    eprintln!("shot_06 with the reference's sub-pixel convention: {} px, max rel {worst:.3e}", pixels.len());
    assert!(pixels.len() > 1000);
    assert!(worst <= 1e-5, "max relative difference {worst:.3e}");
}

#[test]
fn quad_00_four_tilted_panels() {
    run("quad_00", true, 1e-5, true);
}
