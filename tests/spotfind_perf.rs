//! Timing of the thresholds on a 4-Mpixel panel (ignored by default; run with
//! `cargo test --release --test spotfind_perf -- --ignored --nocapture`). The numbers are
//! printed; the only assertion is a generous ceiling that catches an accidental O(pixels ×
//! kernel) or quadratic path (a 4-Mpixel dispersion_extended should take tens of ms).

use std::time::Instant;

use diffbragg::predict::label::{label_panel, LabelParams};
use diffbragg::predict::spotfinder::{threshold_panel, DispersionParams, ThresholdAlgorithm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};

#[test]
#[ignore]
fn threshold_4_mpixel() {
    let shape = [2048, 2048];
    let [ny, nx] = shape;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let pois = Poisson::new(5.0).unwrap();
    let mut img: Vec<f64> = (0..ny * nx).map(|_| pois.sample(&mut rng)).collect();
    for _ in 0..2000 {
        let (cy, cx): (usize, usize) = (rng.random_range(3..ny - 3), rng.random_range(3..nx - 3));
        for j in cy - 3..=cy + 3 {
            for i in cx - 3..=cx + 3 {
                let r2 = (j.abs_diff(cy).pow(2) + i.abs_diff(cx).pow(2)) as f64;
                img[j * nx + i] += (300.0f64 * (-r2 / 2.0).exp()).round();
            }
        }
    }
    let trusted: Vec<bool> = (0..ny * nx).map(|k| k % 97 != 0).collect();
    eprintln!("rayon threads: {}", rayon::current_num_threads());
    for algorithm in [ThresholdAlgorithm::Dispersion, ThresholdAlgorithm::DispersionExtended] {
        for kernel in [[3, 3], [10, 10]] {
            let p = DispersionParams { algorithm, kernel_size: kernel, ..Default::default() };
            let mut best = f64::INFINITY;
            let mut mask = Vec::new();
            for _ in 0..3 {
                let t0 = Instant::now();
                mask = threshold_panel(&img, shape, &trusted, &p).unwrap();
                best = best.min(t0.elapsed().as_secs_f64() * 1e3);
            }
            let t0 = Instant::now();
            let spots = label_panel(&img, &mask, shape, 0, 0, &LabelParams::dials_find_spots(2)).unwrap();
            let tl = t0.elapsed().as_secs_f64() * 1e3;
            eprintln!(
                "{:>20} kernel {kernel:?}: threshold {best:.1} ms, label {tl:.1} ms, {} spots",
                algorithm.name(),
                spots.len()
            );
            assert!(best < 5000.0);
        }
    }
}
