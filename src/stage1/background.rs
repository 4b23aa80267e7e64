//! The fixed background of an ROI (fwd-model §4.2.4), estimated once from the
//! data and never refined.
//!
//! * Background pixels: two passes of the modified z-score test
//!   `0.6745·|x − median|/MAD > threshold` (MAD = median |x − median|; a zero
//!   MAD flags nothing); with `only_high`, only pixels above the inlier median
//!   can be outliers (zingers and the Bragg peak, not dips). Untrusted pixels
//!   never count as background (the reference lets masked pixels vote).
//! * Constant model: the median of the background pixels.
//! * Tilt model: the plane `a·X + b·Y + c` (X fast, Y slow, 0-based in the
//!   box) by least squares over the background pixels. \[TRAP\] decided: the
//!   reference's optional weights act as `1/σ` (it square-roots the diagonal
//!   `1/σ²` matrix and then forms `AᵀWA`); we weight by `1/σ²` with
//!   `σ² = σ_r² + max(x, 0)`, the proper weighted least squares.
//! * Numbers follow numpy: the median of an even count is the mean of the two
//!   middle values.

/// numpy-style median (NaN for an empty slice).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Outlier flags by the modified z-score (`is_outlier` of diffBragg's utils).
pub fn modified_z_outliers(x: &[f64], threshold: f64) -> Vec<bool> {
    let med = median(x);
    let diff: Vec<f64> = x.iter().map(|v| (v - med).abs()).collect();
    let mad = median(&diff);
    if !(mad > 0.0) {
        return vec![false; x.len()];
    }
    diff.iter().map(|d| 0.6745 * d / mad > threshold).collect()
}

/// Background flags of `values` (only entries with `usable` may be background),
/// two passes as the module doc says.
pub fn label_background(values: &[f64], usable: &[bool], threshold: f64, only_high: bool) -> Vec<bool> {
    let mut bg: Vec<bool> = usable.to_vec();
    for _pass in 0..2 {
        let idx: Vec<usize> = (0..values.len()).filter(|&i| bg[i]).collect();
        if idx.is_empty() {
            break;
        }
        let sub: Vec<f64> = idx.iter().map(|&i| values[i]).collect();
        let out = modified_z_outliers(&sub, threshold);
        let inl: Vec<f64> = sub.iter().zip(&out).filter(|(_, &o)| !o).map(|(v, _)| *v).collect();
        let m = median(&inl);
        for (k, &i) in idx.iter().enumerate() {
            let is_out = out[k] && (!only_high || values[i] > m);
            if is_out {
                bg[i] = false;
            }
        }
    }
    bg
}

/// Plane `(a, b, c)` through the flagged pixels of a `nx × ny` box (row-major,
/// slow outer) by (weighted) least squares. `None` when the fit is singular.
pub fn fit_plane(
    values: &[f64],
    use_px: &[bool],
    nx: usize,
    sigma_r2: f64,
    weighted: bool,
) -> Option<[f64; 3]> {
    let mut ata = [[0.0f64; 3]; 3];
    let mut atb = [0.0f64; 3];
    let mut n = 0usize;
    for (k, (&v, &u)) in values.iter().zip(use_px).enumerate() {
        if !u {
            continue;
        }
        let row = [(k % nx) as f64, (k / nx) as f64, 1.0];
        let w = if weighted { 1.0 / (sigma_r2 + v.max(0.0)).max(1e-12) } else { 1.0 };
        for i in 0..3 {
            atb[i] += w * row[i] * v;
            for j in 0..3 {
                ata[i][j] += w * row[i] * row[j];
            }
        }
        n += 1;
    }
    if n < 3 {
        return None;
    }
    let m = crate::conventions::Mat3::from_fn(|i, j| ata[i][j]);
    let scale = ata[0][0].max(ata[1][1]).max(ata[2][2]);
    if !(m.determinant().abs() > 1e-12 * scale * scale * scale) {
        return None;
    }
    let sol = m.try_inverse()? * crate::conventions::Vec3::new(atb[0], atb[1], atb[2]);
    sol.iter().all(|x| x.is_finite()).then(|| [sol[0], sol[1], sol[2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_match_numpy() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn spot_pixels_are_not_background_and_plane_is_recovered() {
        // 9×9 box: plane 0.5·x − 0.25·y + 10 plus a bright 3×3 peak in the middle.
        let nx = 9;
        let mut v: Vec<f64> =
            (0..81).map(|k| 0.5 * (k % nx) as f64 - 0.25 * (k / nx) as f64 + 10.0).collect();
        for y in 3..6 {
            for x in 3..6 {
                v[y * nx + x] += 200.0;
            }
        }
        // tiny deterministic jitter so the MAD is not zero
        for (k, x) in v.iter_mut().enumerate() {
            *x += 0.01 * ((k * 7919) % 13) as f64;
        }
        let bg = label_background(&v, &[true; 81], 3.5, true);
        for y in 3..6 {
            for x in 3..6 {
                assert!(!bg[y * nx + x]);
            }
        }
        assert!(bg.iter().filter(|&&b| b).count() >= 70);
        let p = fit_plane(&v, &bg, nx, 1.0, false).unwrap();
        assert!(
            (p[0] - 0.5).abs() < 0.01 && (p[1] + 0.25).abs() < 0.01 && (p[2] - 10.06).abs() < 0.05,
            "{p:?}"
        );
        let pw = fit_plane(&v, &bg, nx, 1.0, true).unwrap();
        assert!((pw[0] - 0.5).abs() < 0.01);
        assert!(fit_plane(&v, &[false; 81], nx, 1.0, false).is_none());
    }
}
