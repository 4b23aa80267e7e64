//! Spot finding on synthetic images:
//! * the SAT thresholds against a brute-force implementation written here from DIALS'
//!   `local.h` (direct window sums, brute-force Chebyshev distance) on random images with
//!   masked pixels, edges, negative and ≥ 2^24 values, every parameter varied: identical masks;
//! * the gain plumbing: scaling an image by 2 with gain 2 gives the gain-1 mask bit for bit;
//! * Gaussian spots on a Poisson background: all found, none extra, centroids within the
//!   statistical error that DIALS' own variance estimate predicts;
//! * pure Poisson background: false-positive spots at σ_s = 3 at the rate the algorithm allows.
//!
//! Pixel values are integers, so window sums are exact in any order and the brute force must
//! agree bit for bit with the summed-area tables.

use diffbragg::predict::label::{label_panel, LabelParams};
use diffbragg::predict::spotfinder::{
    threshold_panel, threshold_panel_with_gain_map, DispersionParams, ThresholdAlgorithm, BIG,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};

// ---------------------------------------------------------------------------------------------
// Brute force, straight from the DIALS formulas.

fn sums(
    image: &[f64],
    include: &[bool],
    shape: [usize; 2],
    j: usize,
    i: usize,
    ky: usize,
    kx: usize,
) -> (f64, f64, f64) {
    let [ny, nx] = shape;
    let (mut m, mut x, mut y) = (0.0, 0.0, 0.0);
    for jj in j.saturating_sub(ky)..=(j + ky).min(ny - 1) {
        for ii in i.saturating_sub(kx)..=(i + kx).min(nx - 1) {
            let k = jj * nx + ii;
            if include[k] && image[k] < BIG {
                m += 1.0;
                x += image[k];
                y += image[k] * image[k];
            }
        }
    }
    (m, x, y)
}

fn dispersion_test(m: f64, x: f64, y: f64, g: Option<f64>, nsig_b: f64) -> bool {
    match g {
        None => m * y - x * x - x * (m - 1.0) > x * nsig_b * (2.0 * (m - 1.0)).sqrt(),
        Some(g) => m * y - x * x > g * x * (m - 1.0 + nsig_b * (2.0 * (m - 1.0)).sqrt()),
    }
}

fn brute(
    image: &[f64],
    shape: [usize; 2],
    trusted: &[bool],
    gain: &dyn Fn(usize) -> Option<f64>,
    p: &DispersionParams,
) -> Vec<bool> {
    let [ny, nx] = shape;
    let [ky, kx] = p.kernel_size;
    let min_count = if p.min_local <= 0 { ((2 * ky + 1) * (2 * kx + 1)) as f64 } else { p.min_local as f64 };
    let n = ny * nx;
    match p.algorithm {
        ThresholdAlgorithm::Dispersion => (0..n)
            .map(|k| {
                let (j, i) = (k / nx, k % nx);
                let (m, x, y) = sums(image, trusted, shape, j, i, ky, kx);
                let v = image[k];
                if !(trusted[k] && m >= min_count && x >= 0.0 && v > p.global_threshold) {
                    return false;
                }
                let d = match gain(k) {
                    None => p.sigma_strong * (x * m).sqrt(),
                    Some(g) => p.sigma_strong * (g * x * m).sqrt(),
                };
                dispersion_test(m, x, y, gain(k), p.sigma_background) && m * v - x > d
            })
            .collect(),
        ThresholdAlgorithm::DispersionExtended => {
            let not_bg: Vec<bool> = (0..n)
                .map(|k| {
                    if !trusted[k] {
                        return true;
                    }
                    let (m, x, y) = sums(image, trusted, shape, k / nx, k % nx, ky, kx);
                    m >= min_count && x >= 0.0 && dispersion_test(m, x, y, gain(k), p.sigma_background)
                })
                .collect();
            let bg_pixels: Vec<usize> = (0..n).filter(|&k| !not_bg[k]).collect();
            let dist = |k: usize| -> usize {
                let (j, i) = (k / nx, k % nx);
                bg_pixels
                    .iter()
                    .map(|&b| (b / nx).abs_diff(j).max((b % nx).abs_diff(i)))
                    .min()
                    .unwrap_or(ny + nx + 1)
            };
            let erosion = ky.min(kx);
            let background: Vec<bool> =
                (0..n).map(|k| trusted[k] && !(not_bg[k] && dist(k) >= erosion)).collect();
            (0..n)
                .map(|k| {
                    let (m, x, _) = sums(image, &background, shape, k / nx, k % nx, ky + 2, kx + 2);
                    if !(trusted[k] && x >= 0.0) {
                        return false;
                    }
                    let v = image[k];
                    let mean = if m >= 2.0 { x / m } else { 0.0 };
                    let spread = match gain(k) {
                        None => mean.sqrt(),
                        Some(g) => (g * mean).sqrt(),
                    };
                    !background[k] && v > p.global_threshold && v >= mean + p.sigma_strong * spread
                })
                .collect()
        }
    }
}

/// A random test image: Poisson background, a few bright blobs, negative and huge values.
fn random_image(rng: &mut ChaCha8Rng, shape: [usize; 2]) -> (Vec<f64>, Vec<bool>) {
    let [ny, nx] = shape;
    let lambda = [0.3, 2.0, 20.0][rng.random_range(0..3)];
    let pois = Poisson::new(lambda).unwrap();
    let mut img: Vec<f64> = (0..ny * nx).map(|_| pois.sample(rng)).collect();
    for _ in 0..rng.random_range(0..4) {
        let (cy, cx) = (rng.random_range(0..ny), rng.random_range(0..nx));
        let amp = rng.random_range(5.0..500.0f64);
        for j in cy.saturating_sub(2)..(cy + 3).min(ny) {
            for i in cx.saturating_sub(2)..(cx + 3).min(nx) {
                let r2 = (j.abs_diff(cy).pow(2) + i.abs_diff(cx).pow(2)) as f64;
                img[j * nx + i] += (amp * (-r2 / 2.0).exp()).round();
            }
        }
    }
    for v in img.iter_mut() {
        let u: f64 = rng.random();
        if u < 0.01 {
            *v = -rng.random_range(1..5) as f64;
        } else if u < 0.015 {
            *v = [BIG, BIG + 1.0, 3.0e7][rng.random_range(0..3)];
        }
    }
    let p_mask = [0.0, 0.05, 0.3][rng.random_range(0..3)];
    let mut trusted: Vec<bool> = (0..ny * nx).map(|_| rng.random::<f64>() >= p_mask).collect();
    if rng.random::<bool>() && ny > 3 && nx > 3 {
        // A masked block, as around a panel gap.
        let (j0, i0) = (rng.random_range(0..ny - 2), rng.random_range(0..nx - 2));
        for j in j0..(j0 + 3).min(ny) {
            for i in i0..(i0 + 5).min(nx) {
                trusted[j * nx + i] = false;
            }
        }
    }
    (img, trusted)
}

#[test]
fn sat_thresholds_equal_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(20260901);
    let mut strong_total = [0usize; 2];
    let mut cases = 0;
    for case in 0..400 {
        let shape = match case % 10 {
            0 => [1, 1],
            1 => [1, rng.random_range(2..40)],
            2 => [rng.random_range(2..40), 1],
            _ => [rng.random_range(2..36), rng.random_range(2..36)],
        };
        let (img, trusted) = random_image(&mut rng, shape);
        let kernels = [[1, 1], [3, 3], [2, 1], [1, 4], [6, 6], [2, 2]];
        let kernel_size = kernels[rng.random_range(0..kernels.len())];
        let full = ((2 * kernel_size[0] + 1) * (2 * kernel_size[1] + 1)) as i64;
        let min_local = [0, 2, 5.min(full), full][rng.random_range(0..4)];
        let algorithm = if case % 2 == 0 {
            ThresholdAlgorithm::DispersionExtended
        } else {
            ThresholdAlgorithm::Dispersion
        };
        let mut p = DispersionParams {
            algorithm,
            gain: None,
            kernel_size,
            sigma_background: [6.0, 2.0, 0.0][rng.random_range(0..3)],
            sigma_strong: [3.0, 1.0][rng.random_range(0..2)],
            min_local,
            global_threshold: [0.0, 5.0][rng.random_range(0..2)],
        };
        let n = img.len();
        let ours;
        let gain_kind = rng.random_range(0..4);
        let reference = match gain_kind {
            0 => {
                ours = threshold_panel(&img, shape, &trusted, &p).unwrap();
                brute(&img, shape, &trusted, &|_| None, &p)
            }
            1 | 2 => {
                let g = if gain_kind == 1 { 1.0 } else { 2.5 };
                p.gain = Some(g);
                ours = threshold_panel(&img, shape, &trusted, &p).unwrap();
                brute(&img, shape, &trusted, &|_| Some(g), &p)
            }
            _ => {
                let map: Vec<f64> = (0..n).map(|_| rng.random_range(0.5..3.0)).collect();
                ours = threshold_panel_with_gain_map(&img, shape, &trusted, &map, &p).unwrap();
                brute(&img, shape, &trusted, &|k| Some(map[k]), &p)
            }
        };
        assert_eq!(ours, reference, "case {case}: shape {shape:?}, {p:?}, gain kind {gain_kind}");
        strong_total[case % 2] += ours.iter().filter(|&&s| s).count();
        cases += 1;
    }
    // The comparison must have exercised strong pixels with both algorithms.
    eprintln!("{cases} cases, strong pixels (extended, dispersion) = {strong_total:?}");
    assert!(strong_total.iter().all(|&s| s > 200), "{strong_total:?}");
}

#[test]
fn gain_scales_out_exactly() {
    // var = g·mean: an image of counts ×2 with gain 2 must give the gain-1 mask (every formula
    // scales by powers of 2 exactly, including the square roots).
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for algorithm in [ThresholdAlgorithm::Dispersion, ThresholdAlgorithm::DispersionExtended] {
        let shape = [120, 90];
        let (img, trusted) = random_image(&mut rng, shape);
        let img: Vec<f64> = img.into_iter().map(|v| v.min(1.0e6)).collect();
        let p1 = DispersionParams { algorithm, gain: Some(1.0), ..Default::default() };
        let p2 = DispersionParams { gain: Some(2.0), ..p1.clone() };
        let doubled: Vec<f64> = img.iter().map(|v| 2.0 * v).collect();
        let a = threshold_panel(&img, shape, &trusted, &p1).unwrap();
        let b = threshold_panel(&doubled, shape, &trusted, &p2).unwrap();
        assert_eq!(a, b, "{algorithm:?}");
        assert!(a.iter().any(|&s| s));
        // Without the gain, the doubled image looks over-dispersed: more strong pixels.
        let c = threshold_panel(&doubled, shape, &trusted, &DispersionParams { gain: None, ..p1 }).unwrap();
        assert!(c.iter().filter(|&&s| s).count() > a.iter().filter(|&&s| s).count());
    }
}

// ---------------------------------------------------------------------------------------------
// Gaussian spots on a Poisson background.

struct Truth {
    x: f64,
    y: f64,
}

/// Photon-counting image: each spot's N ~ Poisson(I) photons land at Gaussian positions;
/// pixel (y, x) collects positions in [x, x+1) × [y, y+1). Background Poisson(bg).
fn spot_image(
    rng: &mut ChaCha8Rng,
    shape: [usize; 2],
    bg: f64,
    spots: &[Truth],
    intensity: f64,
    sigma: f64,
) -> Vec<f64> {
    let [ny, nx] = shape;
    let pois = Poisson::new(bg).unwrap();
    let mut img: Vec<f64> = (0..ny * nx).map(|_| pois.sample(rng)).collect();
    let g = Normal::new(0.0, sigma).unwrap();
    for s in spots {
        let n = Poisson::new(intensity).unwrap().sample(rng) as usize;
        for _ in 0..n {
            let (x, y) = (s.x + g.sample(rng), s.y + g.sample(rng));
            if x >= 0.0 && y >= 0.0 && (x as usize) < nx && (y as usize) < ny {
                img[y as usize * nx + x as usize] += 1.0;
            }
        }
    }
    img
}

#[test]
fn gaussian_spots_found_with_expected_centroid_errors() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let shape = [360, 360];
    let mut truth = Vec::new();
    for gy in 0..6 {
        for gx in 0..6 {
            truth.push(Truth {
                x: 30.0 + 60.0 * gx as f64 + rng.random_range(-10.0..10.0),
                y: 30.0 + 60.0 * gy as f64 + rng.random_range(-10.0..10.0),
            });
        }
    }
    // σ = 1.2 px, 20 000 photons, background 2: statistical error √((σ² + 1/12)/I) ≈ 0.009 px;
    // the background inside the strong pixels (≈ 0.6 % of the signal, spread nearly
    // symmetrically) and the Gaussian tail beyond the ≈ 4 px strong region (≈ 0.3 %) bias the
    // centroid by ≲ 0.003 px, well below it.
    let sigma = 1.2;
    let img = spot_image(&mut rng, shape, 2.0, &truth, 20000.0, sigma);
    let trusted = vec![true; img.len()];
    let nearest = |spots: &[diffbragg::predict::label::Spot], t: &Truth| {
        spots
            .iter()
            .min_by(|a, b| {
                let da = (a.centroid.position[0] - t.x).hypot(a.centroid.position[1] - t.y);
                let db = (b.centroid.position[0] - t.x).hypot(b.centroid.position[1] - t.y);
                da.total_cmp(&db)
            })
            .unwrap()
            .clone()
    };

    let p = DispersionParams::default();
    let mask = threshold_panel(&img, shape, &trusted, &p).unwrap();
    let spots = label_panel(&img, &mask, shape, 0, 0, &LabelParams::dials_find_spots(2)).unwrap();
    assert_eq!(spots.len(), truth.len(), "dispersion_extended found {} spots", spots.len());
    let mut zs = Vec::new();
    for t in &truth {
        let s = nearest(&spots, t);
        for (a, truth) in [(0, t.x), (1, t.y)] {
            // DIALS' xyzobs.px.variance − 1/12 is its estimate of the squared standard error.
            let se = (s.centroid.std_err_sq[a] - 1.0 / 12.0).sqrt();
            assert!(se > 0.007 && se < 0.011, "standard error {se}");
            zs.push((s.centroid.position[a] - truth) / se);
        }
    }
    // The deviations must look like standard normal draws: none beyond 4.5σ, and the mean of z²
    // (72 values; its own sd ≈ 0.17) near 1.
    let mean_z2 = zs.iter().map(|z| z * z).sum::<f64>() / zs.len() as f64;
    let worst = zs.iter().map(|z| z.abs()).fold(0.0, f64::max);
    eprintln!("dispersion_extended centroid z-scores: mean z² = {mean_z2:.3}, max |z| = {worst:.2}");
    assert!(worst < 4.5);
    assert!((0.6..1.5).contains(&mean_z2), "mean z² = {mean_z2}");

    // Plain `dispersion` keeps only the pixels ≥ 3σ above a local mean that includes the spot
    // itself: ≈ 15 pixels instead of ≈ 60, a truncation at ≈ 1.5σ. Pixel-quantised truncation
    // biases the centroid by up to (tail mass ≈ 5 %) × (≈ 2 px), ~0.1 px, far above the
    // statistical error: the reason DIALS made dispersion_extended the default. All spots
    // must still be found and be within that bound.
    let p = DispersionParams { algorithm: ThresholdAlgorithm::Dispersion, ..Default::default() };
    let mask = threshold_panel(&img, shape, &trusted, &p).unwrap();
    let spots = label_panel(&img, &mask, shape, 0, 0, &LabelParams::dials_find_spots(2)).unwrap();
    assert_eq!(spots.len(), truth.len(), "dispersion found {} spots", spots.len());
    let mut worst: f64 = 0.0;
    for t in &truth {
        let s = nearest(&spots, t);
        assert!(s.n_pixels() < 30, "{} pixels", s.n_pixels());
        worst = worst.max((s.centroid.position[0] - t.x).abs()).max((s.centroid.position[1] - t.y).abs());
    }
    eprintln!("dispersion: largest centroid error {worst:.3} px");
    assert!(worst < 0.25);
}

// ---------------------------------------------------------------------------------------------
// Pure background.

#[test]
fn pure_background_false_positives() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let shape = [512, 512];
    let n = shape[0] * shape[1];
    let trusted = vec![true; n];
    // DIALS defaults (σ_b = 6, σ_s = 3): a strong pixel needs a 6σ index-of-dispersion excess
    // in its window on top of the 3σ pixel excess. On pure Poisson noise the joint probability
    // is ≪ 1e-6 per pixel (a lone outlier in a 7×7 window raises var/mean by (v−λ)²/(48λ),
    // which reaches 1 + 6√(2/48) only for ≳ 9σ outliers), so we expect no spot at all.
    for lambda in [1.0, 10.0, 100.0] {
        let pois = Poisson::new(lambda).unwrap();
        let img: Vec<f64> = (0..n).map(|_| pois.sample(&mut rng)).collect();
        for algorithm in [ThresholdAlgorithm::DispersionExtended, ThresholdAlgorithm::Dispersion] {
            let p = DispersionParams { algorithm, ..Default::default() };
            let mask = threshold_panel(&img, shape, &trusted, &p).unwrap();
            let n_strong = mask.iter().filter(|&&s| s).count();
            let spots = label_panel(&img, &mask, shape, 0, 0, &LabelParams::dials_find_spots(2)).unwrap();
            eprintln!("λ = {lambda}, {algorithm:?}: {n_strong} strong pixels, {} spots", spots.len());
            assert!(n_strong <= 3, "λ = {lambda}, {algorithm:?}: {n_strong} strong pixels");
            assert!(spots.is_empty());
        }
    }

    // With the dispersion test off (σ_b = 0: any window with var > mean passes) the rate is the
    // σ_s = 3 pixel test's. At λ = 1000 (near-Gaussian) the pixel test n·v − s > 3√(s·n) is
    // v − mean_rest > 3·(49/48)·√mean, with v − mean_rest of variance λ(1 + 1/48): probability
    // p = P(Z > 3.0625/√(1+1/48)) = P(Z > 3.031) ≈ 1.22e-3. Given such an outlier the window
    // has var > mean with probability ≳ 0.8 (the outlier adds ≳ 9λ to a χ²₄₇·λ that must beat
    // 48λ), so the expected fraction is 0.8p–p; bounds: 0.5p to 1.1p (Poisson skewness 1/√λ
    // adds a few per cent to the tail).
    let lambda = 1000.0;
    let pois = Poisson::new(lambda).unwrap();
    let img: Vec<f64> = (0..n).map(|_| pois.sample(&mut rng)).collect();
    let p = DispersionParams {
        algorithm: ThresholdAlgorithm::Dispersion,
        sigma_background: 0.0,
        ..Default::default()
    };
    let frac =
        threshold_panel(&img, shape, &trusted, &p).unwrap().iter().filter(|&&s| s).count() as f64 / n as f64;
    let tail = 1.22e-3;
    eprintln!("σ_b = 0, λ = 1000: strong fraction {frac:.2e} (pixel-test tail {tail:.2e})");
    assert!(frac > 0.5 * tail && frac < 1.1 * tail, "strong fraction {frac}");
}

// ---------------------------------------------------------------------------------------------
// Model-image masks against the reference code (diffBragg `utils.detect_peaks`, scipy).

const PY_DETECT_PEAKS: &str = r#"
import sys, json
import numpy as np
from scipy.ndimage import maximum_filter, generate_binary_structure, binary_erosion
def detect_peaks(image_, threshold=0):
    image = image_.copy()
    image[image < threshold] = 0
    neighborhood = generate_binary_structure(2, 2)
    local_max = maximum_filter(image, footprint=neighborhood) == image
    background = (image == 0)
    eroded_background = binary_erosion(background, structure=neighborhood, border_value=1)
    return local_max ^ eroded_background
out = []
for case in json.load(sys.stdin):
    img = np.array(case["img"], dtype=float).reshape(case["shape"])
    out.append(detect_peaks(img, case["thr"]).ravel().astype(int).tolist())
json.dump(out, sys.stdout)
"#;

#[test]
fn local_maxima_equal_reference_detect_peaks() {
    use diffbragg::predict::spotfinder::local_maxima;
    use std::io::Write;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for c in 0..60 {
        let shape = if c < 4 { [1, 1 + c] } else { [rng.random_range(1..20), rng.random_range(1..20)] };
        // Small integers give plateaus and zero regions; some negatives.
        let img: Vec<f64> = (0..shape[0] * shape[1]).map(|_| rng.random_range(-1..4) as f64).collect();
        let thr = [0.0, 1.0, 2.5, -0.5][c % 4];
        ours.push(local_maxima(&img, shape, thr).unwrap().iter().map(|&b| b as i64).collect::<Vec<_>>());
        cases.push(serde_json::json!({"img": img, "shape": shape, "thr": thr}));
    }
    let mut child = std::process::Command::new("python3")
        .args(["-c", PY_DETECT_PEAKS])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with numpy and scipy");
    child.stdin.take().unwrap().write_all(serde_json::Value::from(cases).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed");
    let reference: Vec<Vec<i64>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ours, reference);
    assert!(ours.iter().flatten().filter(|&&v| v == 1).count() > 100);
}

// ---------------------------------------------------------------------------------------------
// Hostile inputs: errors, never panics.

#[test]
fn hostile_inputs_never_panic() {
    use diffbragg::predict::spotfinder::{above_threshold, local_maxima};
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1e300, 1e300, 0.0, -0.0, 5.0e-324];
    let mut n_err = 0;
    for case in 0..300 {
        let ny = rng.random_range(0..12);
        let nx = rng.random_range(0..12);
        // Lengths sometimes wrong on purpose.
        let len = if case % 7 == 0 { ny * nx + 1 } else { ny * nx };
        let img: Vec<f64> = (0..len)
            .map(|_| {
                if rng.random::<f64>() < 0.2 {
                    specials[rng.random_range(0..specials.len())]
                } else {
                    rng.random_range(-5.0..50.0)
                }
            })
            .collect();
        let trusted: Vec<bool> = (0..len).map(|_| rng.random::<f64>() < 0.7).collect();
        let p = DispersionParams {
            algorithm: if case % 2 == 0 {
                ThresholdAlgorithm::Dispersion
            } else {
                ThresholdAlgorithm::DispersionExtended
            },
            gain: [None, Some(1.0), Some(-1.0), Some(f64::NAN)][rng.random_range(0..4)],
            kernel_size: [[0, 1], [1, 1], [3, 3], [50, 1], [usize::MAX, 2]][rng.random_range(0..5)],
            sigma_background: [6.0, -1.0, f64::NAN][rng.random_range(0..3)],
            sigma_strong: 3.0,
            min_local: [-5, 0, 1, 2, 1000][rng.random_range(0..5)],
            global_threshold: [0.0, -1.0, f64::INFINITY][rng.random_range(0..3)],
        };
        let shape = [ny, nx];
        let r = std::panic::catch_unwind(|| {
            let mut errs = 0;
            match threshold_panel(&img, shape, &trusted, &p) {
                Ok(mask) => {
                    let _ = label_panel(&img, &mask, shape, 0, rng_frame(case), &LabelParams::default());
                }
                Err(_) => errs += 1,
            }
            errs += label_panel(&img, &trusted, shape, 2, rng_frame(case), &LabelParams::dials_find_spots(1))
                .is_err() as usize;
            errs += above_threshold(&img, shape, 1.0).is_err() as usize;
            errs += local_maxima(&img, shape, [0.0, f64::NAN][case % 2]).is_err() as usize;
            errs
        });
        n_err += r.unwrap_or_else(|_| panic!("case {case} panicked"));
    }
    assert!(n_err > 100);
}

fn rng_frame(case: usize) -> i32 {
    [0, -1, 16999, i32::MAX, i32::MIN][case % 5]
}
