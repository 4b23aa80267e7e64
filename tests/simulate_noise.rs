//! Noise of `diffbragg simulate`: Poisson counts of the photon value, scaled
//! to ADU, plus Gaussian readout noise, from a seeded ChaCha20 stream.
//!
//! * On flat models (one λ everywhere) the sample mean, variance and (for
//!   small λ) the fraction of zeros match `adu·λ`, `adu²·λ + σ²` and `e^−λ`
//!   within 5 standard errors.
//! * End to end: the CLI's noisy image, standardised with its own noise-free
//!   image, has mean 0 and variance 1; outside the ROI it is exactly 0; the
//!   same seed gives the same file, another seed another image.

use std::path::Path;
use std::process::Command;

use diffbragg::kernel::Pixel;
use diffbragg::simulate::{add_noise, Noise};

fn flat(n: usize) -> Vec<Pixel> {
    (0..n).map(|i| Pixel { panel: 0, fast: (i % 1000) as u32, slow: (i / 1000) as u32 }).collect()
}

fn moments(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

#[test]
fn poisson_and_readout_moments_on_flat_models() {
    let n = 200_000;
    let px = flat(n);
    for &(lam, adu, sigma) in &[(0.3, 1.0, 0.0), (7.0, 2.5, 0.0), (50.0, 1.0, 3.0), (4000.0, 0.5, 10.0)] {
        let photons = vec![lam; n];
        let out = add_noise(&photons, &px, &Noise::Poisson { readout_sigma: sigma, seed: 42 }, adu).unwrap();
        let (mean, var) = moments(&out);
        let want_var = adu * adu * lam + sigma * sigma;
        let se_mean = (want_var / n as f64).sqrt();
        // Var of the sample variance: var²·(2/(n−1) + κ/n), κ = excess kurtosis = adu⁴λ/var².
        let kappa = adu.powi(4) * lam / (want_var * want_var);
        let se_var = want_var * (2.0 / (n as f64 - 1.0) + kappa / n as f64).sqrt();
        eprintln!(
            "λ={lam} adu={adu} σ={sigma}: mean {mean:.5} (want {:.5} ± {se_mean:.1e}), var {var:.5} (want {want_var:.5} ± {se_var:.1e})",
            adu * lam
        );
        assert!((mean - adu * lam).abs() < 5.0 * se_mean, "mean {mean} vs {}", adu * lam);
        assert!((var - want_var).abs() < 5.0 * se_var, "variance {var} vs {want_var}");
        if sigma == 0.0 {
            // Whole photons only.
            assert!(out.iter().all(|&x| (x / adu).fract() == 0.0 && x >= 0.0));
        }
        if lam < 1.0 {
            let p0 = (-lam).exp();
            let zeros = out.iter().filter(|&&x| x == 0.0).count() as f64 / n as f64;
            let se = (p0 * (1.0 - p0) / n as f64).sqrt();
            assert!((zeros - p0).abs() < 5.0 * se, "P(0) = {zeros} vs {p0}");
        }
    }
}

#[test]
fn seeds_zero_pixels_and_no_noise() {
    let px = flat(10_000);
    let photons: Vec<f64> = (0..10_000).map(|i| if i % 3 == 0 { 0.0 } else { 20.0 }).collect();
    let a = add_noise(&photons, &px, &Noise::Poisson { readout_sigma: 0.0, seed: 1 }, 1.0).unwrap();
    let b = add_noise(&photons, &px, &Noise::Poisson { readout_sigma: 0.0, seed: 1 }, 1.0).unwrap();
    let c = add_noise(&photons, &px, &Noise::Poisson { readout_sigma: 0.0, seed: 2 }, 1.0).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().zip(&photons).all(|(x, l)| *l != 0.0 || *x == 0.0), "a zero model gave counts");
    let none = add_noise(&photons, &px, &Noise::None, 3.0).unwrap();
    assert!(none.iter().zip(&photons).all(|(x, l)| *x == 3.0 * l));
    // Bad models are named, not sampled.
    let bad = add_noise(&[f64::NAN], &px[..1], &Noise::Poisson { readout_sigma: 0.0, seed: 1 }, 1.0);
    assert!(bad.unwrap_err().to_string().contains("cannot be Poisson-sampled"));
}

fn run_cli(dir: &Path, extra: &[&str], out: &str) {
    let r = diffbragg::testutil::shared("reference");
    let o = Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .current_dir(dir)
        .arg("simulate")
        .arg("--expt")
        .arg(r.join("shot_00_tophat.expt"))
        .arg("--spectrum")
        .arg(r.join("shot_00_tophat.lam"))
        .arg("--hkl")
        .arg(r.join("lyso_P1.hkl.gz"))
        .args(["--ncells", "18", "22", "30", "--shape", "tophat", "--fluence", "5e24", "--no-progress"])
        .arg("--mosaic-umats")
        .arg(r.join("shot_00_tophat_umats.txt"))
        .args(["--roi", "540", "795", "600", "855", "--out", out])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn image(path: &Path) -> Vec<f64> {
    let src = diffbragg::image::open_image_source(path).unwrap();
    src.read_image(0).unwrap().panel(0).data().to_vec()
}

#[test]
fn cli_noise_is_standard_after_standardising_and_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (adu, sigma) = (9.5, 2.0);
    run_cli(d, &[], "clean.h5");
    let noisy_args =
        ["--noise", "poisson", "--readout-sigma", "2", "--adu-per-photon", "9.5", "--seed", "11"];
    run_cli(d, &noisy_args, "noisy.h5");
    run_cli(d, &noisy_args, "again.h5");
    let mut other = noisy_args;
    other[7] = "12";
    run_cli(d, &other, "other.h5");
    let (clean, noisy) = (image(&d.join("clean.h5")), image(&d.join("noisy.h5")));
    assert_eq!(noisy, image(&d.join("again.h5")), "same seed, different image");
    assert_ne!(noisy, image(&d.join("other.h5")), "another seed, same image");
    let nf = 1024;
    let inside = |i: usize| (540..=795).contains(&(i % nf)) && (600..=855).contains(&(i / nf));
    let mut z = Vec::new();
    for (i, (&lam, &y)) in clean.iter().zip(&noisy).enumerate() {
        if inside(i) {
            z.push((y - adu * lam) / (adu * adu * lam + sigma * sigma).sqrt());
        } else {
            assert_eq!((lam, y), (0.0, 0.0), "pixel {i} outside the ROI is not 0");
        }
    }
    let n = z.len() as f64;
    assert_eq!(z.len(), 256 * 256);
    let (mean, var) = moments(&z);
    eprintln!("standardised CLI noise over {n} px: mean {mean:.4}, variance {var:.4}");
    assert!(mean.abs() < 5.0 / n.sqrt(), "mean {mean}");
    // Most pixels are dark (readout-dominated, nearly Gaussian): Var(s²) ≈ 2/n, with room for the bright ones.
    assert!((var - 1.0).abs() < 5.0 * (3.0 / n).sqrt(), "variance {var}");
}
