//! The pixel target of stage 1 and stage 2 (hopper `target_func`, §4.7; stage 2 §3.4).
//!
//! # Conventions
//! * Data `d`, model `m`, background and readout variance `σ_r²` are in photons
//!   (data pre-divided by the gain). The model already includes the background:
//!   `m = G·roi_scale·raw + bg` ([`model_pixels`]).
//! * Over trusted pixels, with `r = d − m` and the **model-based** variance
//!   `v = m + σ_r²` (Poisson plus readout, not data-based):
//!   `f = Σ ½[ln(2πv) + r²/v]/freq`, `∂f/∂m = ½(1 − 2r − r²/v)/v/freq`,
//!   `Z = r/√v`, `sigZ = std(Z)` (population std, numpy's default).
//!   `freq` (overlapping-spot multiplicity) divides only when given.
//! * Untrusted pixels contribute nothing; their ∂f/∂m is 0.
//! * `v ≤ 0` (the model went negative below −σ_r²) or a non-finite model is an
//!   error naming the pixel, never a NaN target.
//! * Everything accumulates in f64.
//!
//! # Gradient assembly
//! `J` holds one dense row per parameter, `J[p,i] = ∂m_i/∂value_p` (hopper:
//! `J_G = raw·roi_scale`, others `G·roi_scale·∂raw/∂value`); the x-gradient is
//! `g_p = ∂value_p/∂x_p · Σ_i J[p,i]·∂f/∂m_i` ([`gradient`]), plus restraints.
//!
//! # Curvature (stage-2 errors, §3.8)
//! Per pixel, `∂²f/∂m² = 1/v − 1/(2v²) + 2r/v² + r²/v³` (÷freq); its expectation
//! under the model is the Fisher weight `W = 1/v + 1/(2v²)`. For parameters on
//! which m depends linearly (G, the Fhkl scales) `∂²f/∂θ_a∂θ_b = Σ_i c₂_i J_ai J_bi`
//! is then exact, and with `W` in place of `c₂` it is the Gauss–Newton/Fisher form.
//! The per-pixel derivative `J_ai` must be the **sum over all sub-steps** of the
//! pixel before it is squared. The reference instead sums the squares of the
//! per-sub-step derivatives (and drops the background from v), which
//! underestimates the curvature and overestimates σ; we do not reproduce that.

use crate::error::{Error, Result};
use nalgebra::DMatrix;
use std::f64::consts::PI;

/// Readout variance σ_r² (photons²): one value for all pixels, or one per pixel.
#[derive(Clone, Copy, Debug)]
pub enum ReadNoise<'a> {
    Uniform(f64),
    PerPixel(&'a [f64]),
}

impl ReadNoise<'_> {
    #[inline]
    fn at(&self, i: usize) -> f64 {
        match self {
            ReadNoise::Uniform(v) => *v,
            ReadNoise::PerPixel(v) => v[i],
        }
    }
}

/// The data side of the target for one set of pixels.
#[derive(Clone, Copy, Debug)]
pub struct PixelTarget<'a> {
    pub data: &'a [f64],
    pub sigma_r2: ReadNoise<'a>,
    /// None: every pixel trusted.
    pub trusted: Option<&'a [bool]>,
    /// Overlap multiplicity; None: no division (the reference's default).
    pub freq: Option<&'a [f64]>,
}

/// Value, ∂f/∂m and diagnostics at one model.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub f: f64,
    /// ∂f/∂m per pixel (0 on untrusted pixels).
    pub dfdm: Vec<f64>,
    pub sigz: f64,
    pub n_trusted: usize,
}

impl<'a> PixelTarget<'a> {
    /// All pixels trusted, no overlap weights. Validates the inputs.
    pub fn new(data: &'a [f64], sigma_r2: ReadNoise<'a>) -> Result<PixelTarget<'a>> {
        PixelTarget { data, sigma_r2, trusted: None, freq: None }.validated()
    }

    pub fn with_trusted(mut self, trusted: &'a [bool]) -> Result<PixelTarget<'a>> {
        self.trusted = Some(trusted);
        self.validated()
    }

    pub fn with_freq(mut self, freq: &'a [f64]) -> Result<PixelTarget<'a>> {
        self.freq = Some(freq);
        self.validated()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn validated(self) -> Result<PixelTarget<'a>> {
        let n = self.data.len();
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::msg(format!("pixel {i}: data value {} is not finite", self.data[i])));
        }
        match self.sigma_r2 {
            ReadNoise::Uniform(v) => {
                if !(v >= 0.0 && v.is_finite()) {
                    return Err(Error::param(
                        "sigma_readout",
                        format!("variance must be finite and >= 0, got {v}"),
                    ));
                }
            }
            ReadNoise::PerPixel(v) => {
                if v.len() != n {
                    return Err(Error::msg(format!("{} readout variances for {n} pixels", v.len())));
                }
                if let Some(i) = v.iter().position(|s| !(*s >= 0.0 && s.is_finite())) {
                    return Err(Error::msg(format!(
                        "pixel {i}: readout variance {} must be finite and >= 0",
                        v[i]
                    )));
                }
            }
        }
        if let Some(t) = self.trusted {
            if t.len() != n {
                return Err(Error::msg(format!("{} trusted flags for {n} pixels", t.len())));
            }
        }
        if let Some(q) = self.freq {
            if q.len() != n {
                return Err(Error::msg(format!("{} overlap frequencies for {n} pixels", q.len())));
            }
            if let Some(i) = q.iter().position(|s| !(*s > 0.0 && s.is_finite())) {
                return Err(Error::msg(format!("pixel {i}: overlap frequency {} must be > 0", q[i])));
            }
        }
        Ok(self)
    }

    #[inline]
    fn is_trusted(&self, i: usize) -> bool {
        self.trusted.is_none_or(|t| t[i])
    }

    #[inline]
    fn inv_freq(&self, i: usize) -> f64 {
        self.freq.map_or(1.0, |q| 1.0 / q[i])
    }

    /// (r, v) at pixel i, or the error naming it.
    #[inline]
    fn residual_variance(&self, model: &[f64], i: usize) -> Result<(f64, f64)> {
        let m = model[i];
        let v = m + self.sigma_r2.at(i);
        if !(v > 0.0) || !m.is_finite() {
            return Err(Error::msg(format!(
                "pixel {i}: model variance v = m + sigma_r^2 = {v} is not > 0 (model {m}); the model went negative"
            )));
        }
        Ok((self.data[i] - m, v))
    }

    fn check_len(&self, model: &[f64]) -> Result<()> {
        if model.len() != self.data.len() {
            return Err(Error::msg(format!("model has {} pixels, data {}", model.len(), self.data.len())));
        }
        Ok(())
    }

    /// Target, ∂f/∂m and sigZ.
    pub fn evaluate(&self, model: &[f64]) -> Result<Evaluation> {
        self.check_len(model)?;
        let n = model.len();
        let mut f = 0.0;
        let mut dfdm = vec![0.0; n];
        let (mut n_t, mut zs, mut zs2) = (0usize, 0.0, 0.0);
        for i in 0..n {
            if !self.is_trusted(i) {
                continue;
            }
            let (r, v) = self.residual_variance(model, i)?;
            let w = self.inv_freq(i);
            f += 0.5 * ((2.0 * PI * v).ln() + r * r / v) * w;
            dfdm[i] = 0.5 * (1.0 - 2.0 * r - r * r / v) / v * w;
            let z = r / v.sqrt();
            n_t += 1;
            zs += z;
            zs2 += z * z;
        }
        if n_t == 0 {
            return Err(Error::msg("no trusted pixels"));
        }
        let mean = zs / n_t as f64;
        let sigz = (zs2 / n_t as f64 - mean * mean).max(0.0).sqrt();
        Ok(Evaluation { f, dfdm, sigz, n_trusted: n_t })
    }

    /// Z-scores `r/√v` (NaN on untrusted pixels).
    pub fn zscores(&self, model: &[f64]) -> Result<Vec<f64>> {
        self.check_len(model)?;
        (0..model.len())
            .map(|i| {
                if !self.is_trusted(i) {
                    return Ok(f64::NAN);
                }
                let (r, v) = self.residual_variance(model, i)?;
                Ok(r / v.sqrt())
            })
            .collect()
    }

    /// Observed ∂²f/∂m² per pixel (0 on untrusted pixels). Can be negative for
    /// pixels with large residuals.
    pub fn curvature(&self, model: &[f64]) -> Result<Vec<f64>> {
        self.check_len(model)?;
        (0..model.len())
            .map(|i| {
                if !self.is_trusted(i) {
                    return Ok(0.0);
                }
                let (r, v) = self.residual_variance(model, i)?;
                let c2 = 1.0 / v - 0.5 / (v * v) + 2.0 * r / (v * v) + r * r / (v * v * v);
                Ok(c2 * self.inv_freq(i))
            })
            .collect()
    }

    /// Fisher weights `(1/v + 1/(2v²))/freq` per pixel (0 on untrusted pixels):
    /// the expected ∂²f/∂m² for a Gaussian whose variance is the model plus σ_r².
    pub fn fisher_weights(&self, model: &[f64]) -> Result<Vec<f64>> {
        self.check_len(model)?;
        (0..model.len())
            .map(|i| {
                if !self.is_trusted(i) {
                    return Ok(0.0);
                }
                let (_, v) = self.residual_variance(model, i)?;
                Ok((1.0 / v + 0.5 / (v * v)) * self.inv_freq(i))
            })
            .collect()
    }
}

/// `m_i = G·roi_scale_i·raw_i + bg_i` (roi_scale None: 1).
pub fn model_pixels(raw: &[f64], g: f64, roi_scale: Option<&[f64]>, background: &[f64]) -> Vec<f64> {
    (0..raw.len()).map(|i| g * roi_scale.map_or(1.0, |s| s[i]) * raw[i] + background[i]).collect()
}

/// Dense rows `J[p, i] = ∂m_i/∂value_p`.
#[derive(Clone, Debug, PartialEq)]
pub struct Jacobian {
    n_pix: usize,
    data: Vec<f64>,
}

impl Jacobian {
    pub fn zeros(n_rows: usize, n_pix: usize) -> Jacobian {
        Jacobian { n_pix, data: vec![0.0; n_rows * n_pix] }
    }

    /// From rows of equal length.
    pub fn from_rows(rows: &[Vec<f64>]) -> Result<Jacobian> {
        let n_pix = rows.first().map_or(0, |r| r.len());
        if let Some(p) = rows.iter().position(|r| r.len() != n_pix) {
            return Err(Error::msg(format!(
                "Jacobian row {p} has {} pixels, row 0 has {n_pix}",
                rows[p].len()
            )));
        }
        Ok(Jacobian { n_pix, data: rows.concat() })
    }

    pub fn n_rows(&self) -> usize {
        self.data.len().checked_div(self.n_pix).unwrap_or(0)
    }

    pub fn n_pix(&self) -> usize {
        self.n_pix
    }

    pub fn row(&self, p: usize) -> &[f64] {
        &self.data[p * self.n_pix..(p + 1) * self.n_pix]
    }

    pub fn row_mut(&mut self, p: usize) -> &mut [f64] {
        &mut self.data[p * self.n_pix..(p + 1) * self.n_pix]
    }
}

/// x-gradient `g_p = ∂value_p/∂x_p · Σ_i J[p,i]·∂f/∂m_i`.
pub fn gradient(jac: &Jacobian, dfdm: &[f64], dvalue_dx: &[f64]) -> Vec<f64> {
    assert_eq!(jac.n_pix(), dfdm.len(), "Jacobian and dfdm differ in pixel count");
    assert_eq!(jac.n_rows(), dvalue_dx.len(), "Jacobian rows and dvalue_dx differ");
    (0..jac.n_rows())
        .map(|p| {
            let row = jac.row(p);
            let mut s = 0.0;
            for i in 0..row.len() {
                s += row[i] * dfdm[i];
            }
            s * dvalue_dx[p]
        })
        .collect()
}

/// `Σ_i w_i J_ai J_bi` (value units): with Fisher weights, the information
/// matrix; with [`PixelTarget::curvature`], the Hessian for linear parameters.
pub fn weighted_normal_matrix(jac: &Jacobian, w: &[f64]) -> DMatrix<f64> {
    assert_eq!(jac.n_pix(), w.len(), "Jacobian and weights differ in pixel count");
    let np = jac.n_rows();
    let mut h = DMatrix::zeros(np, np);
    for a in 0..np {
        let ra = jac.row(a);
        for b in 0..=a {
            let rb = jac.row(b);
            let mut s = 0.0;
            for i in 0..w.len() {
                s += w[i] * ra[i] * rb[i];
            }
            h[(a, b)] = s;
            h[(b, a)] = s;
        }
    }
    h
}

/// Diagonal of [`weighted_normal_matrix`] (stage 2's per-Fhkl curvature).
pub fn diagonal_curvature(jac: &Jacobian, w: &[f64]) -> Vec<f64> {
    assert_eq!(jac.n_pix(), w.len(), "Jacobian and weights differ in pixel count");
    (0..jac.n_rows())
        .map(|a| {
            let r = jac.row(a);
            let mut s = 0.0;
            for i in 0..w.len() {
                s += w[i] * r[i] * r[i];
            }
            s
        })
        .collect()
}

/// The scale G minimising `Σ w_i (d_i − G·raw_i − bg_i)²` over trusted pixels:
/// `G = Σ w·raw·(d − bg) / Σ w·raw²` (the model is linear in G). It may be ≤ 0
/// when the data sit below the background; the caller decides what to do then.
pub fn least_squares_scale(
    raw: &[f64],
    data: &[f64],
    background: &[f64],
    weights: Option<&[f64]>,
    trusted: Option<&[bool]>,
) -> Result<f64> {
    let n = raw.len();
    if data.len() != n || background.len() != n {
        return Err(Error::msg(format!(
            "least-squares scale: {n} model pixels, {} data, {} background",
            data.len(),
            background.len()
        )));
    }
    if weights.is_some_and(|w| w.len() != n) || trusted.is_some_and(|t| t.len() != n) {
        return Err(Error::msg("least-squares scale: weights or trusted flags have the wrong length"));
    }
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..n {
        if !trusted.is_none_or(|t| t[i]) {
            continue;
        }
        let w = weights.map_or(1.0, |w| w[i]);
        num += w * raw[i] * (data[i] - background[i]);
        den += w * raw[i] * raw[i];
    }
    let g = num / den;
    if !(den > 0.0) || !g.is_finite() {
        return Err(Error::msg(format!(
            "least-squares scale: no model signal in the trusted pixels (sum w*raw^2 = {den})"
        )));
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Setup = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<bool>, Vec<f64>);

    fn setup() -> Setup {
        let n = 40;
        let data: Vec<f64> =
            (0..n).map(|i| (3.0 + 20.0 * (-((i as f64 - 20.0) / 5.0).powi(2)).exp()).round()).collect();
        let model: Vec<f64> =
            (0..n).map(|i| 2.5 + 18.0 * (-((i as f64 - 19.0) / 5.5).powi(2)).exp()).collect();
        let s2: Vec<f64> = (0..n).map(|i| 0.5 + 0.01 * i as f64).collect();
        let trusted: Vec<bool> = (0..n).map(|i| i % 7 != 3).collect();
        let freq: Vec<f64> = (0..n).map(|i| if i % 5 == 0 { 2.0 } else { 1.0 }).collect();
        (data, model, s2, trusted, freq)
    }

    #[test]
    fn dfdm_and_curvature_match_central_differences() {
        let (data, model, s2, trusted, freq) = setup();
        let t = PixelTarget::new(&data, ReadNoise::PerPixel(&s2))
            .unwrap()
            .with_trusted(&trusted)
            .unwrap()
            .with_freq(&freq)
            .unwrap();
        let e = t.evaluate(&model).unwrap();
        let c2 = t.curvature(&model).unwrap();
        for i in 0..model.len() {
            let h = 1e-5;
            let mut mp = model.clone();
            let mut mm = model.clone();
            mp[i] += h;
            mm[i] -= h;
            let (ep, em) = (t.evaluate(&mp).unwrap(), t.evaluate(&mm).unwrap());
            let fd = (ep.f - em.f) / (2.0 * h);
            assert!(
                (fd - e.dfdm[i]).abs() < 1e-7 * (1.0 + e.dfdm[i].abs()),
                "pixel {i}: {fd} vs {}",
                e.dfdm[i]
            );
            let fd2 = (ep.dfdm[i] - em.dfdm[i]) / (2.0 * h);
            assert!((fd2 - c2[i]).abs() < 1e-6 * (1.0 + c2[i].abs()), "pixel {i}: {fd2} vs {}", c2[i]);
            if !trusted[i] {
                assert_eq!((e.dfdm[i], c2[i]), (0.0, 0.0));
            }
        }
    }

    #[test]
    fn value_and_sigz_from_first_principles() {
        let (data, model, _, trusted, _) = setup();
        let t = PixelTarget::new(&data, ReadNoise::Uniform(1.5)).unwrap().with_trusted(&trusted).unwrap();
        let e = t.evaluate(&model).unwrap();
        // −ln of a normal density N(d; m, m + σ²), summed.
        let mut f = 0.0;
        let mut z = Vec::new();
        for i in 0..data.len() {
            if trusted[i] {
                let v = model[i] + 1.5;
                f -= ((-(data[i] - model[i]).powi(2) / (2.0 * v)).exp() / (2.0 * PI * v).sqrt()).ln();
                z.push((data[i] - model[i]) / v.sqrt());
            }
        }
        let mean = z.iter().sum::<f64>() / z.len() as f64;
        let sd = (z.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / z.len() as f64).sqrt();
        assert!((e.f - f).abs() < 1e-10 * f.abs());
        assert!((e.sigz - sd).abs() < 1e-12);
        assert_eq!(e.n_trusted, z.len());
    }

    #[test]
    fn fisher_weight_is_expected_curvature() {
        // E[c2] over r ~ N(0, v): E[r] = 0, E[r²] = v → 1/v + 1/(2v²).
        let v: f64 = 2.7;
        let expect = 1.0 / v - 0.5 / (v * v) + v / (v * v * v);
        let data = [5.0];
        let model = [v - 0.2];
        let t = PixelTarget::new(&data, ReadNoise::Uniform(0.2)).unwrap();
        assert!((t.fisher_weights(&model).unwrap()[0] - expect).abs() < 1e-15);
    }

    #[test]
    fn nonpositive_variance_is_a_named_error() {
        let data = [1.0, 2.0, 3.0];
        let t = PixelTarget::new(&data, ReadNoise::Uniform(0.5)).unwrap();
        let e = t.evaluate(&[1.0, -0.6, 1.0]).unwrap_err().to_string();
        assert!(e.contains("pixel 1"), "{e}");
        assert!(t.evaluate(&[1.0, f64::NAN, 1.0]).is_err());
        // Untrusted pixels are not inspected.
        let tr = [true, false, true];
        let t2 = t.with_trusted(&tr).unwrap();
        assert!(t2.evaluate(&[1.0, -0.6, 1.0]).is_ok());
        assert!(PixelTarget::new(&data, ReadNoise::Uniform(-1.0)).is_err());
        assert!(PixelTarget::new(&[f64::INFINITY], ReadNoise::Uniform(1.0)).is_err());
        assert!(t.with_freq(&[1.0, 0.0, 1.0]).is_err());
        assert!(t.evaluate(&[1.0]).is_err());
        let none = [false, false, false];
        assert!(t.with_trusted(&none).unwrap().evaluate(&[1.0, 1.0, 1.0]).is_err());
    }

    #[test]
    fn assembled_gradient_matches_central_differences() {
        // m_i = G·raw_i(μ, w) + bg_i with a Gaussian spot; x-gradient through
        // the reparameterisation, checked against differences of f(x).
        use crate::refine::params::{Parameter, ParameterSet};
        let (data, _, s2, trusted, _) = setup();
        let n = data.len();
        let bg = vec![2.0; n];
        let mut set = ParameterSet::new();
        set.push(Parameter::positive("G_xtal0", 15.0, 1.0).unwrap()).unwrap();
        set.push(Parameter::ranged("mu", 19.0, 10.0, 30.0, 0.1).unwrap()).unwrap();
        set.push(Parameter::ranged("w", 5.0, 1.0, 10.0, 0.5).unwrap()).unwrap();
        let t = PixelTarget::new(&data, ReadNoise::PerPixel(&s2)).unwrap().with_trusted(&trusted).unwrap();
        let eval = |x: &[f64]| -> (f64, Vec<f64>) {
            let v = set.values(x);
            let (g, mu, w) = (v[0], v[1], v[2]);
            let mut jac = Jacobian::zeros(3, n);
            let mut raw = vec![0.0; n];
            for i in 0..n {
                let u = (i as f64 - mu) / w;
                raw[i] = (-0.5 * u * u).exp();
                jac.row_mut(0)[i] = raw[i];
                jac.row_mut(1)[i] = g * raw[i] * u / w;
                jac.row_mut(2)[i] = g * raw[i] * u * u / w;
            }
            let m = model_pixels(&raw, g, None, &bg);
            let e = t.evaluate(&m).unwrap();
            (e.f, gradient(&jac, &e.dfdm, &set.dvalue_dx(x)))
        };
        let x = vec![1.05, 0.7, 1.3];
        let (_, g) = eval(&x);
        for k in 0..3 {
            let h = 1e-6;
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp[k] += h;
            xm[k] -= h;
            let fd = (eval(&xp).0 - eval(&xm).0) / (2.0 * h);
            assert!((fd - g[k]).abs() < 1e-6 * (1.0 + g[k].abs()), "param {k}: {fd} vs {}", g[k]);
        }
    }

    #[test]
    fn least_squares_scale_recovers_and_is_optimal() {
        let raw: Vec<f64> = (0..30).map(|i| (-((i as f64 - 15.0) / 4.0).powi(2)).exp()).collect();
        let bg: Vec<f64> = (0..30).map(|i| 1.0 + 0.1 * i as f64).collect();
        let data: Vec<f64> = (0..30).map(|i| 250.0 * raw[i] + bg[i]).collect();
        assert!((least_squares_scale(&raw, &data, &bg, None, None).unwrap() - 250.0).abs() < 1e-10);
        // With noise and weights: the closed form is the minimiser of the weighted sum.
        let noisy: Vec<f64> =
            data.iter().enumerate().map(|(i, d)| d + ((i * 7919) % 13) as f64 - 6.0).collect();
        let w: Vec<f64> = (0..30).map(|i| 1.0 / (1.0 + data[i])).collect();
        let tr: Vec<bool> = (0..30).map(|i| i != 15).collect();
        let g = least_squares_scale(&raw, &noisy, &bg, Some(&w), Some(&tr)).unwrap();
        let ss = |gg: f64| -> f64 {
            (0..30).filter(|&i| tr[i]).map(|i| w[i] * (noisy[i] - gg * raw[i] - bg[i]).powi(2)).sum()
        };
        assert!(ss(g) < ss(g + 1e-3) && ss(g) < ss(g - 1e-3));
        assert!(least_squares_scale(&[0.0; 3], &[1.0; 3], &[0.0; 3], None, None).is_err());
        assert!(least_squares_scale(&raw, &data[..3], &bg, None, None).is_err());
    }

    #[test]
    fn normal_matrix_and_diagonal_agree() {
        let jac = Jacobian::from_rows(&[vec![1.0, 2.0, 3.0], vec![0.5, -1.0, 2.0]]).unwrap();
        let w = [1.0, 0.5, 2.0];
        let h = weighted_normal_matrix(&jac, &w);
        assert_eq!(h[(0, 0)], 1.0 + 2.0 + 18.0);
        assert_eq!(h[(0, 1)], 0.5 - 1.0 + 12.0);
        assert_eq!(diagonal_curvature(&jac, &w), vec![h[(0, 0)], h[(1, 1)]]);
        assert!(Jacobian::from_rows(&[vec![1.0], vec![1.0, 2.0]]).is_err());
    }
}
