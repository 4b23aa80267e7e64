//! Gaussian restraints on parameter values (hopper `use_restraints`, §4.6).
//!
//! # Conventions
//! * A restraint has a center and a variance β in the **parameter's own unit**:
//!   `f_r = ½[ln(2πβ) + (center − value)²/β]`, `∂f_r/∂value = −(center − value)/β`,
//!   chained to x by `∂value/∂x`. It exists only when both center and β are
//!   given; one without the other is an error naming the parameter.
//! * Only refined parameters contribute (a fixed one would add a constant).
//! * Nvol: `f = ½(Nvol_c − det N)²/β` (no log term, as the reference), with
//!   `∂det N/∂N_k = tr(adj(N)·dN_k)`, which equals `det·tr(N⁻¹dN_k)` and stays
//!   defined when N is singular.
//!
//! # Units: the reference's traps and what we do
//! * [TRAP] diffBragg compares `centers.detz_shift` (given like mins/maxs, in mm)
//!   with its internal value in metres. Here the user gives the detz center in
//!   **mm**, like its mins/maxs, and β in **mm²**. Our detz_shift is in mm
//!   (`conventions.rs`), so no conversion happens; a caller that parameterises in
//!   another unit converts with [`Restraint::from_user_units`].
//! * [TRAP] diffBragg converts cell-angle centers from degrees to radians but
//!   leaves their β as given, so β is silently a variance in rad². Here angle
//!   centers are in **degrees** and β in **degrees²**; when the parameter is in
//!   radians both are converted together ([`DEG_TO_RAD`]: center·k, β·k²).
//! * RotXYZ: center 0 whenever its β is set (the reference ignores
//!   `centers.RotXYZ`); that is the config's job, not this module's.

use super::params::ParameterSet;
use crate::conventions::Mat3;
use crate::error::{Error, Result};
use std::f64::consts::PI;

/// Radians per degree, for [`Restraint::from_user_units`].
pub const DEG_TO_RAD: f64 = PI / 180.0;

/// A Gaussian restraint in the parameter's own unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Restraint {
    pub center: f64,
    /// Variance (β > 0).
    pub beta: f64,
}

impl Restraint {
    /// Both given: a restraint; neither: none; one only: an error naming `param`.
    pub fn new(param: &str, center: Option<f64>, beta: Option<f64>) -> Result<Option<Restraint>> {
        match (center, beta) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(Error::param(param, "restraint center given without a beta")),
            (None, Some(_)) => Err(Error::param(param, "restraint beta given without a center")),
            (Some(c), Some(b)) => {
                if !c.is_finite() {
                    return Err(Error::param(param, format!("restraint center must be finite, got {c}")));
                }
                if !(b.is_finite() && b > 0.0) {
                    return Err(Error::param(
                        param,
                        format!("restraint beta must be finite and > 0, got {b}"),
                    ));
                }
                Ok(Some(Restraint { center: c, beta: b }))
            }
        }
    }

    /// Center and β given in user units, converted to the parameter's unit by
    /// `to_internal` (value_internal = value_user·to_internal; β scales by its square).
    pub fn from_user_units(
        param: &str,
        center: Option<f64>,
        beta: Option<f64>,
        to_internal: f64,
    ) -> Result<Option<Restraint>> {
        Restraint::new(param, center.map(|c| c * to_internal), beta.map(|b| b * to_internal * to_internal))
    }

    /// `½[ln(2πβ) + (center − value)²/β]`.
    pub fn target(&self, value: f64) -> f64 {
        let r = self.center - value;
        0.5 * ((2.0 * PI * self.beta).ln() + r * r / self.beta)
    }

    /// ∂target/∂value.
    pub fn dtarget(&self, value: f64) -> f64 {
        -(self.center - value) / self.beta
    }

    /// ∂²target/∂value² (the prior precision, for uncertainties).
    pub fn curvature(&self) -> f64 {
        1.0 / self.beta
    }
}

/// Sum of the per-parameter restraints at `x_free`; adds ∂/∂x into `grad_x`.
pub fn apply(set: &ParameterSet, x_free: &[f64], grad_x: &mut [f64]) -> f64 {
    assert_eq!(grad_x.len(), set.n_free(), "gradient has the wrong length");
    let mut f = 0.0;
    for (k, &i) in set.free_indices().iter().enumerate() {
        let p = &set.params()[i];
        if let Some(r) = &p.restraint {
            let v = p.value(x_free[k]);
            f += r.target(v);
            grad_x[k] += r.dtarget(v) * p.dvalue_dx(x_free[k]);
        }
    }
    f
}

/// The mosaic-block tensor N from (Na, Nb, Nc) and off-diagonals (Nd, Ne, Nf)
/// at (0,1), (1,2), (0,2).
pub fn n_tensor(nabc: [f64; 3], ndef: [f64; 3]) -> Mat3 {
    let [a, b, c] = nabc;
    let [d, e, f] = ndef;
    Mat3::new(a, d, f, d, b, e, f, e, c)
}

/// Restraint on the mosaic-block volume det N.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NvolRestraint {
    pub center: f64,
    pub beta: f64,
}

impl NvolRestraint {
    pub fn new(center: Option<f64>, beta: Option<f64>) -> Result<Option<NvolRestraint>> {
        Ok(Restraint::new("Nvol", center, beta)?.map(|r| NvolRestraint { center: r.center, beta: r.beta }))
    }

    /// Target and its derivatives with respect to (Na, Nb, Nc, Nd, Ne, Nf).
    pub fn target_and_grad(&self, nabc: [f64; 3], ndef: [f64; 3]) -> (f64, [f64; 6]) {
        let n = n_tensor(nabc, ndef);
        let det = n.determinant();
        // Adjugate = transpose of the cofactor matrix.
        let cof = |i: usize, j: usize| {
            let r: Vec<usize> = (0..3).filter(|&k| k != i).collect();
            let c: Vec<usize> = (0..3).filter(|&k| k != j).collect();
            let m = n[(r[0], c[0])] * n[(r[1], c[1])] - n[(r[0], c[1])] * n[(r[1], c[0])];
            if (i + j) % 2 == 0 {
                m
            } else {
                -m
            }
        };
        // ∂det/∂N_ij = cof(i,j); symmetric off-diagonals enter twice.
        let ddet = [cof(0, 0), cof(1, 1), cof(2, 2), 2.0 * cof(0, 1), 2.0 * cof(1, 2), 2.0 * cof(0, 2)];
        let r = self.center - det;
        let f = 0.5 * r * r / self.beta;
        let k = -r / self.beta;
        (f, ddet.map(|dd| k * dd))
    }

    /// Adds the Nvol restraint at `x_free` to `grad_x` using the parameters
    /// named Nabc0..2 and Ndef0..2 (missing ones count as fixed: N diagonal 0
    /// would be meaningless, so Nabc* must exist).
    pub fn apply(&self, set: &ParameterSet, x_free: &[f64], grad_x: &mut [f64]) -> Result<f64> {
        use super::params::names;
        let mut vals = [0.0; 6];
        let mut names6 = Vec::with_capacity(6);
        for i in 0..3 {
            names6.push(names::nabc(i));
        }
        for i in 0..3 {
            names6.push(names::ndef(i));
        }
        for (k, n) in names6.iter().enumerate() {
            vals[k] = match set.value(n, x_free) {
                Some(v) => v,
                None if k >= 3 => 0.0,
                None => return Err(Error::param("Nvol", format!("restraint needs parameter {n}"))),
            };
        }
        let (f, g) = self.target_and_grad([vals[0], vals[1], vals[2]], [vals[3], vals[4], vals[5]]);
        let dvdx = set.dvalue_dx(x_free);
        for (k, n) in names6.iter().enumerate() {
            if let Some(pos) = set.free_position(n) {
                grad_x[pos] += g[k] * dvdx[pos];
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::super::params::{names, Parameter};
    use super::*;

    #[test]
    fn needs_both_center_and_beta() {
        assert_eq!(Restraint::new("G_xtal0", None, None).unwrap(), None);
        let e = Restraint::new("G_xtal0", Some(1.0), None).unwrap_err();
        assert!(e.to_string().contains("G_xtal0") && e.to_string().contains("without a beta"), "{e}");
        let e = Restraint::new("ucell3", None, Some(1.0)).unwrap_err();
        assert!(e.to_string().contains("ucell3"), "{e}");
        assert!(Restraint::new("x", Some(1.0), Some(0.0)).is_err());
        assert!(Parameter::positive("G_xtal0", 1.0, 1.0).unwrap().with_restraint(Some(1.0), None).is_err());
    }

    #[test]
    fn value_matches_gaussian_negative_log_density() {
        let r = Restraint::new("p", Some(2.0), Some(0.25)).unwrap().unwrap();
        // −ln N(1.5; 2, 0.25) computed independently.
        let want = -(1.0 / (2.0 * PI * 0.25f64).sqrt() * (-(0.5f64).powi(2) / (2.0 * 0.25)).exp()).ln();
        assert!((r.target(1.5) - want).abs() < 1e-14);
    }

    #[test]
    fn unit_conversion_scales_beta_by_square() {
        let r = Restraint::from_user_units("ucell3", Some(90.0), Some(4.0), DEG_TO_RAD).unwrap().unwrap();
        assert!((r.center - PI / 2.0).abs() < 1e-15);
        assert!((r.beta - 4.0 * DEG_TO_RAD * DEG_TO_RAD).abs() < 1e-18);
        // A 2° (one-sigma) offset costs ½ whatever the unit.
        let v = PI / 2.0 + 2.0 * DEG_TO_RAD;
        let base = 0.5 * (2.0 * PI * r.beta).ln();
        assert!((r.target(v) - base - 0.5).abs() < 1e-12);
    }

    fn restrained_set() -> ParameterSet {
        let mut s = ParameterSet::new();
        s.push(
            Parameter::positive(names::G, 50.0, 1.0).unwrap().with_restraint(Some(40.0), Some(25.0)).unwrap(),
        )
        .unwrap();
        s.push(Parameter::ranged(names::nabc(0), 20.0, 3.0, 300.0, 1.0).unwrap()).unwrap();
        s.push(
            Parameter::ranged(names::nabc(1), 25.0, 3.0, 300.0, 1.0)
                .unwrap()
                .with_restraint(Some(30.0), Some(4.0))
                .unwrap(),
        )
        .unwrap();
        s.push(Parameter::ranged(names::nabc(2), 15.0, 3.0, 300.0, 1.0).unwrap()).unwrap();
        s.push(Parameter::ranged(names::ndef(0), 2.0, -200.0, 200.0, 1.0).unwrap()).unwrap();
        s.push(Parameter::fixed(names::ndef(1), 1.0).unwrap()).unwrap();
        s.push(Parameter::ranged(names::ndef(2), -3.0, -200.0, 200.0, 1.0).unwrap()).unwrap();
        s
    }

    #[test]
    fn gradients_match_central_differences() {
        let s = restrained_set();
        let nvol = NvolRestraint::new(Some(7000.0), Some(1e6)).unwrap().unwrap();
        let total = |x: &[f64], g: &mut [f64]| -> f64 {
            g.iter_mut().for_each(|v| *v = 0.0);
            apply(&s, x, g) + nvol.apply(&s, x, g).unwrap()
        };
        let x = vec![1.03, 0.98, 1.01, 1.02, 0.97, 1.05];
        let mut g = vec![0.0; x.len()];
        let f0 = total(&x, &mut g);
        assert!(f0.is_finite());
        for k in 0..x.len() {
            let h = 1e-6;
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp[k] += h;
            xm[k] -= h;
            let mut tmp = vec![0.0; x.len()];
            let fd = (total(&xp, &mut tmp) - total(&xm, &mut tmp)) / (2.0 * h);
            assert!((fd - g[k]).abs() <= 1e-6 * (1.0 + g[k].abs()), "coord {k}: fd {fd} vs {}", g[k]);
        }
    }

    #[test]
    fn nvol_derivative_is_adjugate_and_handles_singular_n() {
        let r = NvolRestraint { center: 10.0, beta: 2.0 };
        // Singular N (rank 2): the derivative is still finite and matches differences.
        let nabc = [1.0, 1.0, 0.0];
        let ndef = [1.0, 0.0, 0.0];
        let (_, g) = r.target_and_grad(nabc, ndef);
        let mut v = [nabc[0], nabc[1], nabc[2], ndef[0], ndef[1], ndef[2]];
        for k in 0..6 {
            let h = 1e-6;
            v[k] += h;
            let fp = r.target_and_grad([v[0], v[1], v[2]], [v[3], v[4], v[5]]).0;
            v[k] -= 2.0 * h;
            let fm = r.target_and_grad([v[0], v[1], v[2]], [v[3], v[4], v[5]]).0;
            v[k] += h;
            assert!(((fp - fm) / (2.0 * h) - g[k]).abs() < 1e-6, "{k}");
        }
        assert!(NvolRestraint::new(Some(1.0), None).is_err());
    }
}
