//! Monte-Carlo check of the reported standard errors.
//!
//! A spot `m_i = A·p_i + B` on a 15×15 shoebox is refined (positive
//! reparameterisation, L-BFGS-B, the pixel likelihood) against many noisy
//! replicates. The spread of the estimates must match the σ reported from the
//! Fisher information at each optimum:
//! * linear-Gaussian: `d ~ N(m, m + σ_r²)` with small variances, where the
//!   `1/(2v²)` term of the Fisher weight is large enough to be tested;
//! * Poisson-like: `d ~ Poisson(m)` with a bright spot on a background, G started
//!   from the least-squares scale.

use diffbragg::error::Result;
use diffbragg::refine::lbfgsb::{minimize, Control, Options, Progress, Status};
use diffbragg::refine::likelihood::{gradient, least_squares_scale, Jacobian, PixelTarget, ReadNoise};
use diffbragg::refine::params::{Parameter, ParameterSet};
use diffbragg::refine::uncertainty::{fisher_information, standard_errors};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};

fn profile() -> Vec<f64> {
    let mut p = Vec::new();
    for i in 0..15 {
        for j in 0..15 {
            let r2 = ((i as f64 - 7.0).powi(2) + (j as f64 - 7.2).powi(2)) / (2.0 * 2.0 * 2.0);
            p.push((-r2).exp());
        }
    }
    p
}

struct Fit {
    est: [f64; 2],
    sigma: [f64; 2],
    /// σ with the Fisher weight 1/v only (the 1/(2v²) term dropped).
    sigma_no_var_term: [f64; 2],
    noise_floor: bool,
}

fn fit(data: &[f64], p: &[f64], s2: f64, init: [f64; 2]) -> Fit {
    let n = p.len();
    let mut set = ParameterSet::new();
    set.push(Parameter::positive("A", init[0], 1.0).unwrap()).unwrap();
    set.push(Parameter::positive("B", init[1], 1.0).unwrap()).unwrap();
    let target = PixelTarget::new(data, ReadNoise::Uniform(s2)).unwrap();
    let jac = Jacobian::from_rows(&[p.to_vec(), vec![1.0; n]]).unwrap();
    let model = |v: &[f64]| -> Vec<f64> { p.iter().map(|pi| v[0] * pi + v[1]).collect() };
    let fg = |x: &[f64], g: &mut [f64]| -> Result<f64> {
        let e = target.evaluate(&model(&set.values(x)))?;
        g.copy_from_slice(&gradient(&jac, &e.dfdm, &set.dvalue_dx(x)));
        Ok(e.f)
    };
    // hopper's ftol; a gtol above the noise floor of f (~1e-13 relative).
    let opts = Options { ftol: 1e-10, gtol: 1e-7, ..Options::default() };
    let out = minimize(fg, &set.x0(), None, &opts, |_: &Progress| Control::Continue).unwrap();
    // A line search that cannot beat rounding ends at the best iterate (as
    // scipy's ABNORMAL_TERMINATION_IN_LNSRCH); count those, fail on anything else.
    let noise_floor = out.status == Status::LineSearchFailed;
    assert!(out.status.converged() || noise_floor, "{:?}: {}", out.status, out.message);
    let v = set.values(&out.x);
    let m = model(&v);
    let info = fisher_information(&jac, &target, &m).unwrap();
    let u = standard_errors(&info, &["A", "B"]).unwrap();
    let w1: Vec<f64> = m.iter().map(|mi| 1.0 / (mi + s2)).collect();
    let info1 = diffbragg::refine::likelihood::weighted_normal_matrix(&jac, &w1);
    let u1 = standard_errors(&info1, &["A", "B"]).unwrap();
    Fit {
        est: [v[0], v[1]],
        sigma: [u.sigma[0], u.sigma[1]],
        sigma_no_var_term: [u1.sigma[0], u1.sigma[1]],
        noise_floor,
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, (v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt())
}

/// Returns, per parameter: (mean estimate, empirical std, mean reported σ, mean σ without the 1/(2v²) term).
fn monte_carlo(
    reps: usize,
    mut draw: impl FnMut(&mut ChaCha8Rng) -> (Vec<f64>, [f64; 2]),
    s2: f64,
) -> Vec<(f64, f64, f64, f64)> {
    let p = profile();
    let mut rng = ChaCha8Rng::seed_from_u64(20240611);
    let mut est = [Vec::new(), Vec::new()];
    let mut sig = [Vec::new(), Vec::new()];
    let mut sig1 = [Vec::new(), Vec::new()];
    let mut n_floor = 0;
    for _ in 0..reps {
        let (data, init) = draw(&mut rng);
        let f = fit(&data, &p, s2, init);
        n_floor += f.noise_floor as usize;
        for k in 0..2 {
            est[k].push(f.est[k]);
            sig[k].push(f.sigma[k]);
            sig1[k].push(f.sigma_no_var_term[k]);
        }
    }
    println!("{n_floor} of {reps} fits ended on a line search at the noise floor of f");
    assert!(n_floor * 100 <= reps, "too many line-search failures: {n_floor}");
    (0..2)
        .map(|k| {
            let (m, s) = mean_std(&est[k]);
            (m, s, mean_std(&sig[k]).0, mean_std(&sig1[k]).0)
        })
        .collect()
}

#[test]
fn sigma_matches_spread_linear_gaussian() {
    let (a, b, s2) = (2.0, 0.5, 0.2);
    let p = profile();
    let reps = 2000;
    let res = monte_carlo(
        reps,
        |rng| {
            let z = Normal::new(0.0, 1.0).unwrap();
            let d = p.iter().map(|pi| {
                let m = a * pi + b;
                m + (m + s2).sqrt() * z.sample(rng)
            });
            (d.collect(), [1.5, 0.8])
        },
        s2,
    );
    // Statistical error of a std from 2000 draws is ~1.6%; allow 6%.
    for (k, (truth, (mean, spread, sigma, sigma1))) in [a, b].iter().zip(&res).enumerate() {
        println!("linear-Gaussian param {k}: truth {truth} mean {mean:.5} spread {spread:.5} reported σ {sigma:.5} (without 1/(2v²): {sigma1:.5})");
        assert!((spread / sigma - 1.0).abs() < 0.06, "param {k}: spread {spread} vs σ {sigma}");
        assert!((mean - truth).abs() < 0.15 * sigma, "param {k}: biased mean {mean}");
        // The test has the power to see the model-variance term of the weight.
        assert!((spread / sigma1 - 1.0).abs() > 0.10, "param {k}: 1/(2v²) term not resolved ({sigma1})");
    }
}

#[test]
fn sigma_matches_spread_poisson() {
    let (g, bg) = (400.0, 40.0);
    let p = profile();
    let reps = 1000;
    let res = monte_carlo(
        reps,
        |rng| {
            let d: Vec<f64> = p.iter().map(|pi| Poisson::new(g * pi + bg).unwrap().sample(rng)).collect();
            // Background from the shoebox border, G from the closed-form least squares.
            let border: Vec<f64> = (0..225)
                .filter(|i| i % 15 == 0 || i % 15 == 14 || i / 15 == 0 || i / 15 == 14)
                .map(|i| d[i])
                .collect();
            let bg0 = border.iter().sum::<f64>() / border.len() as f64;
            let g0 = least_squares_scale(&p, &d, &vec![bg0; 225], None, None).unwrap().max(1.0);
            (d, [g0, bg0])
        },
        0.0,
    );
    // ~2.2% statistical error; the Gaussian-vs-Poisson sandwich adds < 2% here.
    for (k, (truth, (mean, spread, sigma, _))) in [g, bg].iter().zip(&res).enumerate() {
        println!("Poisson param {k}: truth {truth} mean {mean:.4} spread {spread:.4} reported σ {sigma:.4}");
        assert!((spread / sigma - 1.0).abs() < 0.08, "param {k}: spread {spread} vs σ {sigma}");
        assert!((mean - truth).abs() < 0.2 * sigma, "param {k}: biased mean {mean}");
    }
}
