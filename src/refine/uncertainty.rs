//! Standard errors of refined parameters from the Fisher information at the optimum.
//!
//! # Conventions
//! * Everything is in **value units** (not x): `J[a,i] = ∂m_i/∂value_a`.
//! * For `d_i ~ N(m_i, v_i)` with `v_i = m_i + σ_r²` the variance moves with the
//!   model, so the information per pixel is `W_i = 1/v_i + 1/(2v_i²)` (the second
//!   term is ½(∂v/∂m)²/v²); trusted pixels only, divided by freq when given.
//!   `I = Jᵀ·diag(W)·J` ([`fisher_information`]).
//! * Restraints act as Gaussian priors and add `1/β` to the diagonal
//!   ([`restraint_precisions`], [`add_precisions`]) when the caller wants
//!   posterior rather than data-only errors.
//! * `cov = I⁻¹` by Cholesky after Jacobi scaling (unit diagonal). A parameter
//!   with no information, or one whose Schur pivot falls below 1e-12 of its own
//!   information (it is a combination of the parameters before it), is a clear
//!   error naming it.

use super::likelihood::{weighted_normal_matrix, Jacobian, PixelTarget};
use super::params::ParameterSet;
use crate::error::{Error, Result};
use nalgebra::DMatrix;

/// Relative pivot below which the information matrix counts as singular.
const SINGULAR_PIVOT: f64 = 1e-12;

/// Covariance and standard errors, in value units, in the order given.
#[derive(Clone, Debug)]
pub struct Uncertainties {
    pub names: Vec<String>,
    pub sigma: Vec<f64>,
    pub covariance: DMatrix<f64>,
}

/// `I = Jᵀ·diag(W)·J` with the Fisher weights of `target` at `model`.
pub fn fisher_information(jac: &Jacobian, target: &PixelTarget, model: &[f64]) -> Result<DMatrix<f64>> {
    if jac.n_pix() != model.len() {
        return Err(Error::msg(format!("Jacobian has {} pixels, model {}", jac.n_pix(), model.len())));
    }
    let w = target.fisher_weights(model)?;
    Ok(weighted_normal_matrix(jac, &w))
}

/// `1/β` for each refined parameter of `set` that has a restraint, else 0 (x order).
pub fn restraint_precisions(set: &ParameterSet) -> Vec<f64> {
    set.free_indices().iter().map(|&i| set.params()[i].restraint.map_or(0.0, |r| r.curvature())).collect()
}

/// Add prior precisions to the diagonal.
pub fn add_precisions(info: &mut DMatrix<f64>, precisions: &[f64]) {
    assert_eq!(info.nrows(), precisions.len(), "one precision per parameter");
    for (k, p) in precisions.iter().enumerate() {
        info[(k, k)] += p;
    }
}

/// Invert the information matrix into covariance and standard errors.
pub fn standard_errors(info: &DMatrix<f64>, names: &[&str]) -> Result<Uncertainties> {
    let n = info.nrows();
    if info.ncols() != n || names.len() != n {
        return Err(Error::msg(format!(
            "information matrix is {}x{} for {} parameter names",
            info.nrows(),
            info.ncols(),
            names.len()
        )));
    }
    let mut scale = vec![0.0; n];
    for k in 0..n {
        let d = info[(k, k)];
        if !(d > 0.0 && d.is_finite()) {
            return Err(Error::param(
                names[k],
                format!("has no information (Fisher diagonal {d}): it does not change any trusted pixel"),
            ));
        }
        scale[k] = d.sqrt();
    }
    // Cholesky of the scaled matrix C = S⁻¹ I S⁻¹ (unit diagonal).
    let mut l = DMatrix::zeros(n, n);
    for j in 0..n {
        let mut d = info[(j, j)] / (scale[j] * scale[j]);
        for k in 0..j {
            d -= l[(j, k)] * l[(j, k)];
        }
        if !(d > SINGULAR_PIVOT) {
            return Err(Error::param(
                names[j],
                format!(
                    "Fisher information is singular: this parameter is not determined independently of {} (relative pivot {d:e})",
                    if j == 0 { "the others".to_string() } else { names[..j].join(", ") }
                ),
            ));
        }
        let d = d.sqrt();
        l[(j, j)] = d;
        for i in j + 1..n {
            let mut v = info[(i, j)] / (scale[i] * scale[j]);
            for k in 0..j {
                v -= l[(i, k)] * l[(j, k)];
            }
            l[(i, j)] = v / d;
        }
    }
    // C⁻¹ column by column, then undo the scaling.
    let mut cov = DMatrix::zeros(n, n);
    for c in 0..n {
        let mut y = vec![0.0; n];
        y[c] = 1.0;
        for i in 0..n {
            let mut v = y[i];
            for k in 0..i {
                v -= l[(i, k)] * y[k];
            }
            y[i] = v / l[(i, i)];
        }
        for i in (0..n).rev() {
            let mut v = y[i];
            for k in i + 1..n {
                v -= l[(k, i)] * y[k];
            }
            y[i] = v / l[(i, i)];
        }
        for r in 0..n {
            cov[(r, c)] = y[r] / (scale[r] * scale[c]);
        }
    }
    let sigma = (0..n).map(|k| cov[(k, k)].sqrt()).collect();
    Ok(Uncertainties { names: names.iter().map(|s| s.to_string()).collect(), sigma, covariance: cov })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_matches_nalgebra() {
        let a = DMatrix::from_row_slice(3, 3, &[4.0, 1.0, 0.5, 1.0, 3.0, -0.2, 0.5, -0.2, 2.0]) * 1e6;
        let u = standard_errors(&a, &["a", "b", "c"]).unwrap();
        let inv = a.clone().try_inverse().unwrap();
        for i in 0..3 {
            for j in 0..3 {
                assert!((u.covariance[(i, j)] - inv[(i, j)]).abs() < 1e-12 * inv[(i, i)].abs());
            }
            assert!((u.sigma[i] - inv[(i, i)].sqrt()).abs() < 1e-12 * u.sigma[i]);
        }
    }

    #[test]
    fn singular_information_names_the_parameter() {
        // Third parameter duplicates the first.
        let jac = Jacobian::from_rows(&[
            vec![1.0, 2.0, 3.0, 4.0],
            vec![1.0, 0.0, 1.0, 0.0],
            vec![2.0, 4.0, 6.0, 8.0],
        ])
        .unwrap();
        let info = weighted_normal_matrix(&jac, &[1.0; 4]);
        let e = standard_errors(&info, &["G_xtal0", "Nabc0", "Nabc1"]).unwrap_err().to_string();
        assert!(e.contains("Nabc1") && e.contains("singular"), "{e}");
        // A parameter that touches no pixel.
        let jac = Jacobian::from_rows(&[vec![1.0, 2.0], vec![0.0, 0.0]]).unwrap();
        let info = weighted_normal_matrix(&jac, &[1.0; 2]);
        let e = standard_errors(&info, &["G_xtal0", "detz_shift"]).unwrap_err().to_string();
        assert!(e.contains("detz_shift") && e.contains("no information"), "{e}");
        // A prior makes it determined.
        let mut info = info;
        add_precisions(&mut info, &[0.0, 4.0]);
        let u = standard_errors(&info, &["G_xtal0", "detz_shift"]).unwrap();
        assert!((u.sigma[1] - 0.5).abs() < 1e-12);
    }
}
