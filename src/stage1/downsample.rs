//! Spectrum reduction for `spectrum_from_imageset=True` (diffBragg
//! `downsamp_spec`, simtbx `downsample_spectrum(method=2)`, fwd-model §2.10).
//!
//! From a raw spectrometer trace (energies in eV, weights of any scale):
//! 1. a straight line fitted (least squares) to the first and last `tail`
//!    points is subtracted (the spectrometer baseline);
//! 2. a zero-phase low-pass Butterworth filter of order `filt_order` and
//!    cut-off `filt_freq` (fraction of the Nyquist frequency, per channel) is
//!    applied: scipy `butter(order, freq, 'low')` + `filtfilt(b, a, x)` with its
//!    defaults (odd extension of `3·max(len(a), len(b))` points, steady-state
//!    initial conditions scaled by the first sample of each pass);
//! 3. the filtered trace is averaged in bins of `delta_en` eV with edges
//!    `E_min + k·delta_en` below `E_max` (numpy `arange`), scipy
//!    `binned_statistic` semantics (half-open bins, the last bin closed);
//!    channels sit at the bin centres;
//! 4. negative means are set to 0, then `stride` keeps every k-th channel and
//!    the weights are scaled to sum to `total_flux`.
//!
//! Decisions: an empty bin (the raw trace is coarser than `delta_en`) is
//! dropped; the reference keeps a NaN there that poisons the whole spectrum.
//! A trace too short for the filter's padding, or with no positive weight
//! left, is an error naming `downsamp_spec`.

use crate::conventions::wavelength_a_from_energy_ev;
use crate::error::{Error, Result};
use crate::spectrum::Spectrum;
use nalgebra::{DMatrix, DVector};

/// The `downsamp_spec` settings (diffBragg defaults in [`Default`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DownsampleParams {
    pub filt_freq: f64,
    pub filt_order: usize,
    pub tail: usize,
    pub delta_en: f64,
}

impl Default for DownsampleParams {
    fn default() -> Self {
        DownsampleParams { filt_freq: 0.07, filt_order: 3, tail: 50, delta_en: 0.5 }
    }
}

/// Digital Butterworth low-pass coefficients `(b, a)` (scipy `butter(n, wn, 'low')`),
/// `wn` relative to the Nyquist frequency, `a[0] = 1`.
pub fn butter_lowpass(order: usize, wn: f64) -> Result<(Vec<f64>, Vec<f64>)> {
    if order == 0 || order > 20 {
        return Err(Error::param("downsamp_spec.filt_order", format!("{order} must be within 1..=20")));
    }
    if !(wn > 0.0 && wn < 1.0) {
        return Err(Error::param(
            "downsamp_spec.filt_freq",
            format!("{wn} must lie strictly between 0 and 1 (a fraction of the Nyquist frequency)"),
        ));
    }
    let n = order as f64;
    // Analogue prototype poles, pre-warped for the bilinear transform with fs = 2.
    let warped = 4.0 * (std::f64::consts::PI * wn / 2.0).tan();
    let mut poles: Vec<(f64, f64)> = Vec::with_capacity(order);
    for k in 0..order {
        let m = -(n - 1.0) + 2.0 * k as f64;
        let th = std::f64::consts::PI * m / (2.0 * n);
        // p = −exp(iθ)·warped
        poles.push((-th.cos() * warped, -th.sin() * warped));
    }
    // Bilinear transform: z = (4 + p)/(4 − p); gain k = warped^n / Re Π(4 − p).
    let cmul = |a: (f64, f64), b: (f64, f64)| (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0);
    let cdiv = |a: (f64, f64), b: (f64, f64)| {
        let d = b.0 * b.0 + b.1 * b.1;
        ((a.0 * b.0 + a.1 * b.1) / d, (a.1 * b.0 - a.0 * b.1) / d)
    };
    let mut prod = (1.0, 0.0);
    let mut zp = Vec::with_capacity(order);
    for &p in &poles {
        let num = (4.0 + p.0, p.1);
        let den = (4.0 - p.0, -p.1);
        prod = cmul(prod, den);
        zp.push(cdiv(num, den));
    }
    let gain = warped.powi(order as i32) / prod.0;
    // a = poly(zp) (real up to rounding), b = gain·(z + 1)^n.
    let mut a: Vec<(f64, f64)> = vec![(1.0, 0.0)];
    for &r in &zp {
        let mut next = vec![(0.0, 0.0); a.len() + 1];
        for (i, &c) in a.iter().enumerate() {
            next[i].0 += c.0;
            next[i].1 += c.1;
            let m = cmul(c, r);
            next[i + 1].0 -= m.0;
            next[i + 1].1 -= m.1;
        }
        a = next;
    }
    let a: Vec<f64> = a.into_iter().map(|c| c.0).collect();
    let mut b = vec![0.0; order + 1];
    for (i, bi) in b.iter_mut().enumerate() {
        *bi = gain * binomial(order, i);
    }
    Ok((b, a))
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// scipy `lfilter_zi`: the steady-state initial conditions for a unit step.
fn lfilter_zi(b: &[f64], a: &[f64]) -> Vec<f64> {
    let n = a.len().max(b.len());
    let m = n - 1;
    let mut aa = a.to_vec();
    aa.resize(n, 0.0);
    let mut bb = b.to_vec();
    bb.resize(n, 0.0);
    // (I − companion(a)ᵀ)·zi = b[1:] − a[1:]·b[0]
    let mut mat = DMatrix::<f64>::identity(m, m);
    for i in 0..m {
        mat[(i, 0)] += aa[i + 1];
        if i + 1 < m {
            mat[(i, i + 1)] -= 1.0;
        }
    }
    let rhs = DVector::from_iterator(m, (0..m).map(|i| bb[i + 1] - aa[i + 1] * bb[0]));
    mat.lu().solve(&rhs).map(|v| v.iter().copied().collect()).unwrap_or_else(|| vec![0.0; m])
}

/// Direct-form-II-transposed IIR filter (scipy `lfilter` with `zi`), `a[0] = 1`.
fn lfilter(b: &[f64], a: &[f64], x: &[f64], zi: &[f64]) -> Vec<f64> {
    let n = a.len().max(b.len());
    let mut z = zi.to_vec();
    let bk = |k: usize| b.get(k).copied().unwrap_or(0.0);
    let ak = |k: usize| a.get(k).copied().unwrap_or(0.0);
    let mut y = Vec::with_capacity(x.len());
    for &xn in x {
        let yn = bk(0) * xn + z.first().copied().unwrap_or(0.0);
        for k in 0..n - 1 {
            let next = if k + 1 < n - 1 { z[k + 1] } else { 0.0 };
            z[k] = bk(k + 1) * xn + next - ak(k + 1) * yn;
        }
        y.push(yn);
    }
    y
}

/// scipy `filtfilt(b, a, x)` with the default odd padding.
pub fn filtfilt(b: &[f64], a: &[f64], x: &[f64]) -> Result<Vec<f64>> {
    let padlen = 3 * a.len().max(b.len());
    if x.len() <= padlen {
        return Err(Error::param(
            "downsamp_spec",
            format!(
                "the spectrum has {} points; the low-pass filter needs more than {padlen} (set downsamp_spec.skip=True for coarse spectra)",
                x.len()
            ),
        ));
    }
    let n = x.len();
    let mut ext = Vec::with_capacity(n + 2 * padlen);
    for i in (1..=padlen).rev() {
        ext.push(2.0 * x[0] - x[i]);
    }
    ext.extend_from_slice(x);
    for i in 1..=padlen {
        ext.push(2.0 * x[n - 1] - x[n - 1 - i]);
    }
    let zi = lfilter_zi(b, a);
    let z0: Vec<f64> = zi.iter().map(|z| z * ext[0]).collect();
    let mut y = lfilter(b, a, &ext, &z0);
    y.reverse();
    let z1: Vec<f64> = zi.iter().map(|z| z * y[0]).collect();
    let mut y2 = lfilter(b, a, &y, &z1);
    y2.reverse();
    Ok(y2[padlen..padlen + n].to_vec())
}

/// Reduce a raw spectrum (energies eV, weights) as the module doc says.
/// Returns the channels (ascending energy) with weights summing to `total_flux`.
pub fn downsample(
    energies: &[f64],
    weights: &[f64],
    p: &DownsampleParams,
    stride: usize,
    total_flux: f64,
) -> Result<Spectrum> {
    let n = energies.len();
    if n != weights.len() {
        return Err(Error::param("spectrum", format!("{n} energies but {} weights", weights.len())));
    }
    if let Some(i) = energies.iter().chain(weights).position(|v| !v.is_finite()) {
        return Err(Error::param("spectrum", format!("value {i} is not finite")));
    }
    if !(p.delta_en > 0.0 && p.delta_en.is_finite()) {
        return Err(Error::param("downsamp_spec.delta_en", format!("{} must be > 0", p.delta_en)));
    }
    if stride == 0 {
        return Err(Error::param("simulator.spectrum.stride", "must be at least 1"));
    }
    if !(total_flux > 0.0 && total_flux.is_finite()) {
        return Err(Error::param("simulator.total_flux", format!("{total_flux} must be > 0")));
    }
    if p.tail == 0 {
        return Err(Error::param("downsamp_spec.tail", "must be at least 1"));
    }
    // 1. Baseline through the tails (numpy slices: [:tail] and [-tail:]).
    let t = p.tail.min(n);
    let idx: Vec<usize> = (0..t).chain(n - t..n).collect();
    let m = idx.len() as f64;
    let (sx, sy) = idx.iter().fold((0.0, 0.0), |(sx, sy), &i| (sx + energies[i], sy + weights[i]));
    let (mx, my) = (sx / m, sy / m);
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for &i in &idx {
        sxx += (energies[i] - mx) * (energies[i] - mx);
        sxy += (energies[i] - mx) * (weights[i] - my);
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let resid: Vec<f64> = (0..n).map(|i| weights[i] - (my + slope * (energies[i] - mx))).collect();
    // 2. Zero-phase low-pass.
    let (b, a) = butter_lowpass(p.filt_order, p.filt_freq)?;
    let den = filtfilt(&b, &a, &resid)?;
    // 3. Mean per bin, edges E_min + k·Δ < E_max.
    let (emin, emax) =
        energies.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &e| (lo.min(e), hi.max(e)));
    let n_edges = ((emax - emin) / p.delta_en).ceil() as usize;
    if n_edges < 2 {
        return Err(Error::param(
            "downsamp_spec.delta_en",
            format!(
                "{} eV leaves fewer than one bin across the spectrum's {:.3} eV",
                p.delta_en,
                emax - emin
            ),
        ));
    }
    // numpy `arange`: element 1 is start + step, later ones start + i·(e1 − e0).
    let e1 = emin + p.delta_en;
    let d = e1 - emin;
    let edges: Vec<f64> = (0..n_edges)
        .map(|k| match k {
            0 => emin,
            1 => e1,
            _ => emin + k as f64 * d,
        })
        .collect();
    let nb = n_edges - 1;
    let (mut sum, mut cnt) = (vec![0.0; nb], vec![0usize; nb]);
    let last = edges[nb];
    // scipy `binned_statistic`: a value on the rightmost edge (to its rounding
    // precision) belongs to the last bin.
    let decimal = (-(d.log10())).trunc() as i32 + 6;
    let round = |x: f64| {
        let f = 10f64.powi(decimal);
        (x * f).round_ties_even() / f
    };
    for (e, v) in energies.iter().zip(&den) {
        let k = if *e >= last && round(*e) == round(last) {
            nb - 1
        } else if *e < edges[0] || *e >= last {
            continue;
        } else {
            // numpy digitize: the first edge > e, minus one.
            edges.partition_point(|x| x <= e) - 1
        };
        if k < nb {
            sum[k] += v;
            cnt[k] += 1;
        }
    }
    let mut en = Vec::with_capacity(nb);
    let mut wt = Vec::with_capacity(nb);
    for k in 0..nb {
        if cnt[k] == 0 {
            continue;
        }
        en.push(0.5 * (edges[k] + edges[k + 1]));
        wt.push((sum[k] / cnt[k] as f64).max(0.0));
    }
    // 4. Stride, then normalise.
    if stride > en.len() {
        return Err(Error::param(
            "simulator.spectrum.stride",
            format!("{stride} exceeds the {} downsampled channels", en.len()),
        ));
    }
    let en: Vec<f64> = en.into_iter().step_by(stride).collect();
    let wt: Vec<f64> = wt.into_iter().step_by(stride).collect();
    let total: f64 = wt.iter().sum();
    if !(total > 0.0) {
        return Err(Error::param(
            "downsamp_spec",
            "no positive weight is left after baseline removal and filtering",
        ));
    }
    let waves: Vec<f64> = en.iter().map(|&e| wavelength_a_from_energy_ev(e)).collect();
    let w: Vec<f64> = wt.iter().map(|x| x / total * total_flux).collect();
    Ok(Spectrum::new(waves, w))
}

/// `downsamp_spec.skip=True`: the raw channels with `stride`, weights untouched.
pub fn raw_strided(energies: &[f64], weights: &[f64], stride: usize) -> Result<Spectrum> {
    if stride == 0 || stride > energies.len() {
        return Err(Error::param(
            "simulator.spectrum.stride",
            format!("{stride} must be within 1..={}", energies.len()),
        ));
    }
    let waves: Vec<f64> = energies.iter().step_by(stride).map(|&e| wavelength_a_from_energy_ev(e)).collect();
    let w: Vec<f64> = weights.iter().step_by(stride).copied().collect();
    Ok(Spectrum::new(waves, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn butterworth_has_unit_dc_gain_and_half_power_at_cutoff() {
        for (order, wn) in [(3, 0.07), (2, 0.3), (5, 0.5)] {
            let (b, a) = butter_lowpass(order, wn).unwrap();
            let h = |w: f64| {
                let (mut nr, mut ni, mut dr, mut di) = (0.0, 0.0, 0.0, 0.0);
                for (k, (bk, ak)) in b.iter().zip(&a).enumerate() {
                    let (s, c) = (-(w * k as f64)).sin_cos();
                    nr += bk * c;
                    ni += bk * s;
                    dr += ak * c;
                    di += ak * s;
                }
                ((nr * nr + ni * ni) / (dr * dr + di * di)).sqrt()
            };
            assert!((h(0.0) - 1.0).abs() < 1e-12);
            assert!((h(std::f64::consts::PI * wn) - 0.5f64.sqrt()).abs() < 1e-9, "order {order}");
        }
        assert!(butter_lowpass(3, 1.2).is_err());
        assert!(butter_lowpass(0, 0.1).is_err());
    }

    #[test]
    fn filtfilt_keeps_a_constant_and_a_line() {
        let (b, a) = butter_lowpass(3, 0.07).unwrap();
        let c = vec![2.5; 200];
        for v in filtfilt(&b, &a, &c).unwrap() {
            assert!((v - 2.5).abs() < 1e-12, "{v}");
        }
        // A ramp passes unchanged away from the ends (zero phase: no lag).
        let x: Vec<f64> = (0..200).map(|i| 2.0 + 0.01 * i as f64).collect();
        let y = filtfilt(&b, &a, &x).unwrap();
        for (u, v) in x.iter().zip(&y).skip(80).take(40) {
            assert!((u - v).abs() < 1e-4, "{u} {v}");
        }
        assert!(filtfilt(&b, &a, &x[..12]).is_err());
    }
}
