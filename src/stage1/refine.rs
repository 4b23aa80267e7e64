//! Per-shot minimisation (fwd-model §4.8), outlier filters, and the Fisher
//! uncertainties at the optimum.
//!
//! * One local L-BFGS-B run in the reparameterised coordinates (no bounds;
//!   the maps keep values in range), scipy's stopping rules with `ftol` and
//!   `lbfgs_maxiter` from the config, gtol 1e-12 and maxfun 1e5 (hopper's).
//!   A run that ends with a failed line search at the noise floor is reported
//!   as `converged_noise` (scipy's ABNORMAL_TERMINATION_IN_LNSRCH; the iterate
//!   is the best found).
//! * `filter_during_refinement`: every `after_n` evaluations, ROIs whose sigZ
//!   is a modified-z outlier above `threshold` become untrusted.
//! * `filter_after_refinement` \[TRAP\] decided: honoured only when `enable`
//!   (the reference ignores the flag), and the new run starts from the
//!   **previous solution**, not the original x0 (the reference restarts).
//! * Uncertainties: `I = Jᵀ·diag(W)·J` in value units at the optimum
//!   ([`crate::refine::uncertainty`]), restraint precisions added when
//!   restraints are on. The per-ROI scales are marginalised exactly by a Schur
//!   complement (their block is diagonal); G is then not identifiable apart
//!   from them and gets no uncertainty.

use std::time::Instant;

use nalgebra::DMatrix;

use super::background::median;
use super::model::{Eval, Problem};
use super::params::Slot;
use crate::config::diffbragg::DiffBraggParams;
use crate::error::{Error, Result};
use crate::refine::lbfgsb::{minimize, Control, Event, Options, Status};
use crate::refine::likelihood::{PixelTarget, ReadNoise};
use crate::refine::uncertainty::{restraint_precisions, standard_errors};

/// One target evaluation (a `traces` row).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trace {
    pub eval: usize,
    pub f: f64,
    pub sigz: f64,
    pub grad_norm: f64,
    pub time: f64,
}

/// The result of refining one shot.
#[derive(Clone, Debug)]
pub struct Fit {
    pub x: Vec<f64>,
    pub eval: Eval,
    pub status: String,
    pub n_evals: usize,
    pub n_iter: usize,
    pub traces: Vec<Trace>,
    pub trusted: Vec<bool>,
    /// Standard error of each parameter by name (value units); absent = not available.
    pub sigma: std::collections::BTreeMap<String, f64>,
    /// Why uncertainties are missing, if they are.
    pub sigma_note: Option<String>,
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::GradientConverged | Status::FunctionConverged => "converged",
        Status::LineSearchFailed => "converged_noise",
        Status::IterationLimit => "max_iter",
        Status::EvaluationLimit => "max_evals",
        Status::ObserverStop => "stopped",
        Status::EvaluationFailed => "eval_failed",
    }
}

/// Per-ROI sigZ of the trusted pixels.
fn roi_sigz(p: &Problem, model: &[f64], trusted: &[bool]) -> Vec<f64> {
    let n = p.params.n_rois;
    let (mut s, mut s2, mut c) = (vec![0.0; n], vec![0.0; n], vec![0usize; n]);
    for i in 0..model.len() {
        if !trusted[i] {
            continue;
        }
        let v = model[i] + p.data.sigma_r2;
        if v <= 0.0 {
            continue;
        }
        let z = (p.data.data[i] - model[i]) / v.sqrt();
        let r = p.data.roi_of[i] as usize;
        s[r] += z;
        s2[r] += z * z;
        c[r] += 1;
    }
    (0..n)
        .map(|r| {
            if c[r] == 0 {
                return f64::NAN;
            }
            let m = s[r] / c[r] as f64;
            (s2[r] / c[r] as f64 - m * m).max(0.0).sqrt()
        })
        .collect()
}

/// Mark ROIs whose sigZ is a modified-z outlier (> threshold, above the median) untrusted.
/// Returns how many ROIs were dropped.
fn filter_rois(p: &Problem, model: &[f64], trusted: &mut [bool], threshold: f64) -> usize {
    let sz = roi_sigz(p, model, trusted);
    let good: Vec<f64> = sz.iter().copied().filter(|v| v.is_finite()).collect();
    let med = median(&good);
    let mad = median(&good.iter().map(|v| (v - med).abs()).collect::<Vec<_>>());
    if !(mad > 0.0) {
        return 0;
    }
    let bad: Vec<bool> =
        sz.iter().map(|v| v.is_finite() && *v > med && 0.6745 * (v - med) / mad > threshold).collect();
    let n_bad = bad.iter().filter(|&&b| b).count();
    if n_bad == 0 || n_bad == sz.len() {
        return 0;
    }
    for (i, t) in trusted.iter_mut().enumerate() {
        if bad[p.data.roi_of[i] as usize] {
            *t = false;
        }
    }
    n_bad
}

/// Refine one shot from `x0`.
pub fn refine(p: &Problem, cfg: &DiffBraggParams, x0: &[f64]) -> Result<Fit> {
    let t0 = Instant::now();
    let opts = Options { ftol: cfg.ftol, maxiter: cfg.lbfgs_maxiter, ..Options::hopper() };
    let mut trusted = p.data.trusted.clone();
    let mut traces: Vec<Trace> = Vec::new();
    let mut x = x0.to_vec();
    let mut n_evals_total = 0usize;
    let mut n_iter_total = 0usize;
    let mut status;
    let fd = &cfg.filter_during_refinement;
    let fa = &cfg.filter_after_refinement;
    let mut attempt = 0usize;
    loop {
        let mut last_model: Vec<f64> = Vec::new();
        let mut n_since_filter = 0usize;
        let out = {
            let trusted_ref = &mut trusted;
            let traces_ref = &mut traces;
            let last = &mut last_model;
            let fg = |xx: &[f64], g: &mut [f64]| -> Result<f64> {
                if fd.enable && n_since_filter >= fd.after_n.max(1) && !last.is_empty() {
                    filter_rois(p, last, trusted_ref, fd.threshold);
                    n_since_filter = 0;
                }
                let e = p.evaluate(xx, Some(g), trusted_ref)?;
                n_since_filter += 1;
                let gn = g.iter().map(|v| v * v).sum::<f64>().sqrt();
                traces_ref.push(Trace {
                    eval: traces_ref.len(),
                    f: e.f,
                    sigz: e.sigz,
                    grad_norm: gn,
                    time: t0.elapsed().as_secs_f64(),
                });
                *last = e.model;
                Ok(e.f)
            };
            minimize(fg, &x, None, &opts, |pr: &crate::refine::lbfgsb::Progress| {
                let _ = pr.event == Event::Evaluation;
                Control::Continue
            })?
        };
        n_evals_total += out.n_eval;
        n_iter_total += out.n_iter;
        status = out.status;
        if status == Status::EvaluationFailed && out.n_iter == 0 && attempt == 0 {
            return Err(Error::msg(format!("refinement failed at the start: {}", out.message)));
        }
        x = out.x;
        attempt += 1;
        if !fa.enable || attempt > fa.max_attempts {
            break;
        }
        let sigz = traces.last().map_or(f64::NAN, |t| t.sigz);
        if !(out.n_eval < fa.min_prev_niter || sigz > fa.max_prev_sigz) {
            break;
        }
        if last_model.is_empty() || filter_rois(p, &last_model, &mut trusted, fa.threshold) == 0 {
            break;
        }
    }
    let mut g = vec![0.0; x.len()];
    let eval = p.evaluate(&x, Some(&mut g), &trusted)?;
    let (sigma, sigma_note) = match uncertainties(p, &eval, &x, &trusted, cfg.use_restraints) {
        Ok(s) => (s, None),
        Err(e) => (Default::default(), Some(e.to_string())),
    };
    Ok(Fit {
        x,
        eval,
        status: status_name(status).to_string(),
        n_evals: n_evals_total,
        n_iter: n_iter_total,
        traces,
        trusted,
        sigma,
        sigma_note,
    })
}

/// Standard errors by parameter name (see the module doc).
fn uncertainties(
    p: &Problem,
    e: &Eval,
    x: &[f64],
    trusted: &[bool],
    restrained: bool,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut target =
        PixelTarget::new(&p.data.data, ReadNoise::Uniform(p.data.sigma_r2))?.with_trusted(trusted)?;
    if let Some(f) = &p.data.freq {
        target = target.with_freq(f)?;
    }
    let w = target.fisher_weights(&e.model)?;
    let v = &e.values;
    let n_pix = e.raw.len();
    let roi_of = &p.data.roi_of;
    let free_names = p.params.set.free_names();
    // θ rows (value units) and the ROI-scale columns.
    let mut theta_rows: Vec<Vec<f64>> = Vec::new();
    let mut theta_names: Vec<String> = Vec::new();
    let mut theta_x: Vec<usize> = Vec::new();
    let mut k = 0usize;
    for (j, slot) in p.params.slots.iter().enumerate() {
        match *slot {
            Slot::Kernel(_) => {
                let d = &e.derivs[k];
                k += 1;
                theta_rows.push((0..n_pix).map(|i| v.g * v.roi_scale[roi_of[i] as usize] * d[i]).collect());
                theta_names.push(free_names[j].to_string());
                theta_x.push(j);
            }
            Slot::G if !p.params.per_roi => {
                theta_rows.push((0..n_pix).map(|i| v.roi_scale[roi_of[i] as usize] * e.raw[i]).collect());
                theta_names.push(free_names[j].to_string());
                theta_x.push(j);
            }
            _ => {}
        }
    }
    let nt = theta_rows.len();
    if nt == 0 {
        return Ok(Default::default());
    }
    let mut info = DMatrix::<f64>::zeros(nt, nt);
    for a in 0..nt {
        for b in 0..=a {
            let (ra, rb) = (&theta_rows[a], &theta_rows[b]);
            let mut s = 0.0;
            for i in 0..n_pix {
                s += w[i] * ra[i] * rb[i];
            }
            info[(a, b)] = s;
            info[(b, a)] = s;
        }
    }
    if p.params.per_roi {
        let nr = p.params.n_rois;
        let mut irr = vec![0.0; nr];
        let mut itr = vec![vec![0.0; nr]; nt];
        for i in 0..n_pix {
            let r = roi_of[i] as usize;
            let jr = v.g * e.raw[i];
            irr[r] += w[i] * jr * jr;
            for a in 0..nt {
                itr[a][r] += w[i] * theta_rows[a][i] * jr;
            }
        }
        for r in 0..nr {
            if irr[r] > 0.0 {
                for a in 0..nt {
                    for b in 0..nt {
                        info[(a, b)] -= itr[a][r] * itr[b][r] / irr[r];
                    }
                }
            }
        }
    }
    if restrained {
        let prec = restraint_precisions(&p.params.set);
        for (a, &j) in theta_x.iter().enumerate() {
            info[(a, a)] += prec[j];
        }
    }
    let _ = x;
    let names: Vec<&str> = theta_names.iter().map(|s| s.as_str()).collect();
    let u = standard_errors(&info, &names)?;
    Ok(u.names.into_iter().zip(u.sigma).collect())
}
