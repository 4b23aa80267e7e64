//! Structure-factor restraints (`betas.Fhkl`, `betas.Finit`, `betas.Friedel`),
//! in terms of the scales s (pred-and-stage2 §3.6).
//!
//! Per channel c, over the refined (ASU, channel) slots of that channel, with
//! `I⁰_a` the starting intensity:
//! * `Fhkl` (β): resolution bins b (equal-count over the channel's slots sorted
//!   by d, `Fhkl_dspace_bins` of them), `A_b = mean s·I⁰`, `A⁰_b = mean I⁰`:
//!   `R = Σ_b ½[ln 2πβ + (A_b − A⁰_b)²/β]`. It holds each bin's mean intensity
//!   (the Wilson shape) at its start. Decided: bins are over the refined
//!   slots, not over every index of the box as in the reference, so empty bins
//!   do not exist.
//! * `Finit` (β): `U_a = (s_a − 1)·I⁰_a/A_b`, `R = Σ U_a²/(2β)`. Decided: the
//!   gradient is exact (the reference drops the terms through A_b).
//! * `Friedel` (β): for each acentric pair (h, −h) refined in the channel,
//!   `S = s⁺I⁺ + s⁻I⁻`, `D = s⁺I⁺ − s⁻I⁻`, `φ = D/(2S)`,
//!   `R = ½Σ(φ²/β + ln 2πβ)`. Decided: every such pair counts (the reference
//!   only pairs whose h, k, l are all > 0).
//!
//! All are computed from the allreduced x on every rank alike, so the ranks
//! stay in step without another reduction.

use std::collections::HashMap;
use std::f64::consts::PI;

use crate::error::{Error, Result};
use crate::symmetry::Miller;

use super::params::FhklLayout;

/// The restraint settings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FhklRestraints {
    pub beta_fhkl: Option<f64>,
    pub beta_finit: Option<f64>,
    pub beta_friedel: Option<f64>,
    pub n_bins: usize,
}

/// Slot groups precomputed from the layout.
#[derive(Clone, Debug, Default)]
pub struct RestraintPlan {
    cfg: FhklRestraints,
    /// Per channel: bins of slot indices (`a + c·n_asu`).
    bins: Vec<Vec<Vec<usize>>>,
    /// Friedel pairs of slots (plus, minus).
    pairs: Vec<(usize, usize)>,
}

impl RestraintPlan {
    pub fn new(cfg: FhklRestraints, layout: &FhklLayout) -> Result<RestraintPlan> {
        for (name, b) in [
            ("betas.Fhkl", cfg.beta_fhkl),
            ("betas.Finit", cfg.beta_finit),
            ("betas.Friedel", cfg.beta_friedel),
        ] {
            if let Some(b) = b {
                if !(b.is_finite() && b > 0.0) {
                    return Err(Error::param(name, format!("must be > 0, got {b}")));
                }
            }
        }
        let n_asu = layout.n_asu();
        let mut bins = Vec::new();
        if cfg.beta_fhkl.is_some() || cfg.beta_finit.is_some() {
            if cfg.n_bins == 0 {
                return Err(Error::param("Fhkl_dspace_bins", "must be ≥ 1"));
            }
            for c in 0..layout.n_chan {
                let mut slots: Vec<usize> =
                    (0..n_asu).map(|a| a + c * n_asu).filter(|&k| layout.key[k] != u32::MAX).collect();
                // Low resolution (large d) first; ties by slot for determinism.
                slots.sort_by(|&x, &y| layout.d[y % n_asu].total_cmp(&layout.d[x % n_asu]).then(x.cmp(&y)));
                let nb = cfg.n_bins.min(slots.len()).max(1);
                let per = slots.len().div_ceil(nb).max(1);
                bins.push(slots.chunks(per).map(|c| c.to_vec()).collect());
            }
        }
        let mut pairs = Vec::new();
        if cfg.beta_friedel.is_some() {
            let id: HashMap<Miller, usize> =
                layout.asu_hkl.iter().enumerate().map(|(i, h)| (*h, i)).collect();
            for (a, h) in layout.asu_hkl.iter().enumerate() {
                if layout.centric[a] || !first_of_pair(h) {
                    continue;
                }
                let Some(&m) = id.get(&[-h[0], -h[1], -h[2]]) else { continue };
                for c in 0..layout.n_chan {
                    let (kp, km) = (a + c * n_asu, m + c * n_asu);
                    if layout.key[kp] != u32::MAX && layout.key[km] != u32::MAX {
                        pairs.push((kp, km));
                    }
                }
            }
        }
        Ok(RestraintPlan { cfg, bins, pairs })
    }

    pub fn is_empty(&self) -> bool {
        self.cfg.beta_fhkl.is_none() && self.cfg.beta_finit.is_none() && self.cfg.beta_friedel.is_none()
    }

    /// The restraint value and its gradient with respect to each slot's s
    /// (added into `grad_s`, length n_asu·n_chan). `s` is per slot.
    pub fn apply(&self, layout: &FhklLayout, s: &[f64], grad_s: &mut [f64]) -> f64 {
        let n_asu = layout.n_asu();
        let i0 = |k: usize| layout.i_init[k % n_asu];
        let mut r = 0.0;
        for chan_bins in &self.bins {
            for bin in chan_bins {
                let nb = bin.len() as f64;
                let a_b = bin.iter().map(|&k| s[k] * i0(k)).sum::<f64>() / nb;
                let a0 = bin.iter().map(|&k| i0(k)).sum::<f64>() / nb;
                if let Some(beta) = self.cfg.beta_fhkl {
                    let dlt = a_b - a0;
                    r += 0.5 * ((2.0 * PI * beta).ln() + dlt * dlt / beta);
                    for &k in bin {
                        grad_s[k] += dlt / beta * i0(k) / nb;
                    }
                }
                if let Some(beta) = self.cfg.beta_finit {
                    // U_a = (s_a − 1) I⁰_a / A_b; ∂A_b/∂s_j = I⁰_j / N_b.
                    let mut cross = 0.0;
                    for &k in bin {
                        let u = (s[k] - 1.0) * i0(k) / a_b;
                        r += u * u / (2.0 * beta);
                        grad_s[k] += u / beta * i0(k) / a_b;
                        cross += u * u;
                    }
                    // Σ_a U_a/β · (−U_a/A_b) · I⁰_j/N_b
                    for &k in bin {
                        grad_s[k] -= cross / beta / a_b * i0(k) / nb;
                    }
                }
            }
        }
        if let Some(beta) = self.cfg.beta_friedel {
            for &(kp, km) in &self.pairs {
                let (ip, im) = (i0(kp), i0(km));
                let sum = s[kp] * ip + s[km] * im;
                let dif = s[kp] * ip - s[km] * im;
                let phi = 0.5 * dif / sum;
                r += 0.5 * (phi * phi / beta + (2.0 * PI * beta).ln());
                grad_s[kp] += phi / beta * 0.5 * ip / sum * (1.0 - dif / sum);
                grad_s[km] -= phi / beta * 0.5 * im / sum * (1.0 + dif / sum);
            }
        }
        r
    }
}

/// Picks one member of each Friedel pair of keys (`h` and `−h`): the one
/// that compares greater. R depends on φ² only, so which one is "plus" does not matter.
fn first_of_pair(h: &Miller) -> bool {
    *h > [-h[0], -h[1], -h[2]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage2::params::Observation;

    fn layout() -> FhklLayout {
        let hkls: Vec<Miller> =
            vec![[1, 0, 0], [2, 1, 3], [-2, -1, -3], [3, 1, 1], [-3, -1, -1], [4, 2, 5], [1, 1, 2]];
        let mut obs = Vec::new();
        for (i, h) in hkls.iter().enumerate() {
            obs.push(Observation { hkl: *h, channel: 0, count: 1 });
            if i % 2 == 0 {
                obs.push(Observation { hkl: *h, channel: 1, count: 1 });
            }
        }
        FhklLayout::new(
            &obs,
            2,
            1,
            |h| h[2] == 0,
            |h| 30.0 / ((h[0] * h[0] + h[1] * h[1] + h[2] * h[2]) as f64).sqrt(),
            |h| 100.0 + (h[0] * 7 + h[1] * 3 + h[2]).abs() as f64 * 13.0,
        )
        .unwrap()
    }

    /// Every restraint's gradient matches central differences of its value.
    #[test]
    fn gradients_match_finite_differences() {
        let l = layout();
        let n = l.n_asu() * l.n_chan;
        let cfg = FhklRestraints {
            beta_fhkl: Some(50.0),
            beta_finit: Some(0.3),
            beta_friedel: Some(0.05),
            n_bins: 3,
        };
        let plan = RestraintPlan::new(cfg, &l).unwrap();
        assert!(!plan.pairs.is_empty());
        let s: Vec<f64> = (0..n).map(|k| 0.6 + 0.13 * (k % 7) as f64).collect();
        let mut g = vec![0.0; n];
        plan.apply(&l, &s, &mut g);
        for k in 0..n {
            let h = 1e-6;
            let (mut sp, mut sm) = (s.clone(), s.clone());
            sp[k] += h;
            sm[k] -= h;
            let mut junk = vec![0.0; n];
            let fd = (plan.apply(&l, &sp, &mut junk) - plan.apply(&l, &sm, &mut junk)) / (2.0 * h);
            if l.key[k] == u32::MAX {
                assert_eq!(g[k], 0.0);
                continue;
            }
            assert!((fd - g[k]).abs() <= 1e-6 * (1.0 + g[k].abs()), "slot {k}: {fd} vs {}", g[k]);
        }
    }

    /// Values from first principles at a hand-checkable point.
    #[test]
    fn values_at_the_start_and_for_a_pair() {
        let l = layout();
        let n = l.n_asu() * l.n_chan;
        let ones = vec![1.0; n];
        let mut g = vec![0.0; n];
        let only = |c: FhklRestraints| RestraintPlan::new(c, &l).unwrap();
        // At s = 1 the Fhkl and Finit terms are at their minimum.
        let p = only(FhklRestraints { beta_fhkl: Some(2.0), n_bins: 2, ..Default::default() });
        let r = p.apply(&l, &ones, &mut g);
        let bins: usize = p.bins.iter().map(|b| b.len()).sum();
        assert!((r - bins as f64 * 0.5 * (4.0 * PI).ln()).abs() < 1e-12);
        assert!(g.iter().all(|&v| v == 0.0));
        let p = only(FhklRestraints { beta_finit: Some(2.0), n_bins: 2, ..Default::default() });
        assert_eq!(p.apply(&l, &ones, &mut g), 0.0);
        // Friedel: one pair with s⁺ = 2 → φ = (2I⁺ − I⁻)/(2(2I⁺ + I⁻)).
        let p = only(FhklRestraints { beta_friedel: Some(0.5), ..Default::default() });
        let (kp, km) = p.pairs[0];
        let mut s = ones.clone();
        s[kp] = 2.0;
        let (ip, im) = (l.i_init[kp % l.n_asu()], l.i_init[km % l.n_asu()]);
        let phi_changed = (2.0 * ip - im) / (2.0 * (2.0 * ip + im));
        let base = p.apply(&l, &ones, &mut g);
        let phi0 = (ip - im) / (2.0 * (ip + im));
        let want = base + 0.5 * (phi_changed * phi_changed - phi0 * phi0) / 0.5;
        assert!((p.apply(&l, &s, &mut g) - want).abs() < 1e-12);
        assert!(
            RestraintPlan::new(FhklRestraints { beta_fhkl: Some(-1.0), ..Default::default() }, &l).is_err()
        );
    }
}
