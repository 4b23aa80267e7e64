//! The physics of one step, as small pure functions over plain `f64`s.
//!
//! This file is the one definition of the per-step maths; the CPU loops in
//! [`super::cpu`] call these functions and a GPU port mirrors them one for one.
//! Nothing here allocates or dispatches dynamically. Units: lengths in mm
//! (positions, pixel sizes, depths, attenuation lengths), q in Å⁻¹, angles in radians.

use crate::conventions::GAUSS_WIDTH;

/// `C = 2/0.63`: the Gaussian lattice intensity is `det(N)²·exp(−C·|N·Δh|²)`
/// (the amplitude `det(N)·exp(−|N·Δh|²/0.63)` squared).
pub const GAUSS_C: f64 = 2.0 / GAUSS_WIDTH;

/// Steps whose Gaussian exponent `C·|N·Δh|²` exceeds this are treated as 0:
/// they are below `e^-100 ≈ 4e-44` of their reflection's peak. (diffBragg's
/// GPU kernel cuts at 70; its CPU kernel has no cut.)
pub const GAUSS_CUTOFF: f64 = 100.0;

/// ROUND shape constant: makes the sphere's integral match the cube's (nanoBragg).
pub const ROUND_NORM: f64 = 0.723601254558268;

/// TOPHAT radius²: `0.63²`.
pub const TOPHAT_R2: f64 = 0.3969;

/// GAUSS_ARGCHK: the amplitude is 0 once its exponent `|N·Δh|²/0.63` reaches 35
/// (nanoBragg's cut, which avoids underflow in `exp`).
pub const GAUSS_ARGCHK_LIMIT: f64 = 35.0;

const LOG2E: f64 = std::f64::consts::LOG2_E;
const LN2_HI: f64 = 0.6931471803691238;
const LN2_LO: f64 = 1.9082149292705877e-10;
/// 1.5·2⁵²: adding it rounds a double (|x| < 2⁵¹) to the nearest integer.
const ROUND_MAGIC: f64 = 6755399441055744.0;

/// `a·b + c`: fused (one rounding) when `FMA`, else a multiply and an add.
/// The vector paths of the CPU loops run with `FMA = true` (they are compiled
/// for CPUs with FMA); the portable path uses `false`, since a fused multiply-add
/// without hardware support is a slow library call.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for `x ≤ 0` (accepts up to +709), accurate to about 1 ulp, with no
/// branches or library calls so the loops that use it vectorise. Returns
/// exactly 0 for `x < −708` (true value < 3e-308).
#[inline(always)]
pub fn exp_neg(x: f64) -> f64 {
    exp_neg_with::<false>(x)
}

/// [`exp_neg`] with the multiply-adds fused or not (see [`madd`]).
#[inline(always)]
pub fn exp_neg_with<const FMA: bool>(x: f64) -> f64 {
    let xc = x.clamp(-708.0, 709.0);
    // x = k·ln2 + r, |r| ≤ ln2/2 (Cody–Waite split of ln2).
    let t = madd::<FMA>(xc, LOG2E, ROUND_MAGIC);
    let k = t - ROUND_MAGIC;
    let r = madd::<FMA>(-k, LN2_LO, madd::<FMA>(-k, LN2_HI, xc));
    // Taylor series of e^r to degree 13 (truncation error < 6e-18 for |r| ≤ 0.347),
    // evaluated by Estrin's scheme: 8 dependent operations instead of Horner's 26.
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let p01 = 1.0 + r;
    let p23 = madd::<FMA>(r, 1.0 / 6.0, 1.0 / 2.0);
    let p45 = madd::<FMA>(r, 1.0 / 120.0, 1.0 / 24.0);
    let p67 = madd::<FMA>(r, 1.0 / 5040.0, 1.0 / 720.0);
    let p89 = madd::<FMA>(r, 1.0 / 362880.0, 1.0 / 40320.0);
    let p1011 = madd::<FMA>(r, 1.0 / 39916800.0, 1.0 / 3628800.0);
    let p1213 = madd::<FMA>(r, 1.0 / 6227020800.0, 1.0 / 479001600.0);
    let q0 = madd::<FMA>(r2, p23, p01);
    let q1 = madd::<FMA>(r2, p67, p45);
    let q2 = madd::<FMA>(r2, p1011, p89);
    let s0 = madd::<FMA>(r4, q1, q0);
    let s1 = madd::<FMA>(r4, p1213, q2);
    let p = madd::<FMA>(r8, s1, s0);
    // 2^k from the low bits of t (k + 1023 fits the 11-bit exponent for k ∈ [−1021, 1023]).
    let scale = f64::from_bits(t.to_bits().wrapping_add(1023) << 52);
    if x < -708.0 {
        0.0
    } else {
        p * scale
    }
}

/// Nearest lattice point with halves rounding down, `ceil(x − ½)` (see
/// [`crate::conventions::round_miller`]), as a double and without a library
/// call. Valid for |x| < 2⁵⁰.
#[inline(always)]
pub fn round_miller_f(x: f64) -> f64 {
    let y = x - 0.5;
    let r = (y + ROUND_MAGIC) - ROUND_MAGIC; // nearest integer, ties to even
    if r < y {
        r + 1.0
    } else {
        r
    }
}

/// [`round_miller_f`] by the hardware rounding instruction when `HW` (for code
/// compiled with SSE4.1 or later, where `ceil` is one instruction); identical results.
#[inline(always)]
pub fn round_miller_with<const HW: bool>(x: f64) -> f64 {
    if HW {
        (x - 0.5).ceil()
    } else {
        round_miller_f(x)
    }
}

/// Solid angle (sr) of a pixel of area `area` (mm²) whose position is `r` (mm)
/// from the sample, with `n_dot_p` = outward normal · position (mm): the
/// inverse-square law times the obliquity, `area·(n̂·P)/R³`.
#[inline(always)]
pub fn solid_angle(area: f64, n_dot_p: f64, r: f64) -> f64 {
    area * n_dot_p / (r * r * r)
}

/// `point_pixel` solid angle `1/R²` (R in mm, so per mm²; nanoBragg uses m²).
#[inline(always)]
pub fn solid_angle_point(r: f64) -> f64 {
    1.0 / (r * r)
}

/// ∂k̂ for a move `dp` of the point `p = r·k̂`: `(dp − k̂(k̂·dp))/r`.
#[inline(always)]
pub fn direction_derivative(k: &[f64; 3], r: f64, dp: &[f64; 3]) -> [f64; 3] {
    let kdp = dot(k, dp);
    [(dp[0] - k[0] * kdp) / r, (dp[1] - k[1] * kdp) / r, (dp[2] - k[2] * kdp) / r]
}

/// ∂Ω of [`solid_angle`] `area·(n̂·p)/r³` when the point moves by `dp` and
/// the normal turns by `dn`: `area·[(dn·p + n̂·dp)/r³ − 3(n̂·p)(k̂·dp)/r⁴]`.
/// The full pixel area is used for every sub-pixel, so no 1/os² appears
/// (\[BUG?\] of the reference, which scales this term by the sub-pixel area).
#[inline(always)]
pub fn solid_angle_derivative(
    area: f64,
    n: &[f64; 3],
    dn: &[f64; 3],
    p: &[f64; 3],
    k: &[f64; 3],
    r: f64,
    dp: &[f64; 3],
) -> f64 {
    let r3 = r * r * r;
    area * ((dot(dn, p) + dot(n, dp)) / r3 - 3.0 * dot(n, p) * dot(k, dp) / (r3 * r))
}

/// ∂Ω of [`solid_angle_point`] when the point moves by `dp`: `−2(k̂·dp)/r³`.
#[inline(always)]
pub fn solid_angle_point_derivative(k: &[f64; 3], r: f64, dp: &[f64; 3]) -> f64 {
    -2.0 * dot(k, dp) / (r * r * r)
}

/// Kahn polarization factor for diffracted unit vector `k`, incident unit
/// vector `inc`, the unit electric-field axis `e` (⟂ inc) and `b = inc × e`
/// (in the plane ⟂ inc), with Kahn factor `kahn = 2·fraction − 1`:
/// `P = ½(1 + cos²2θ − K·cos2ψ·sin²2θ)`, where ψ is the azimuth of `k` from
/// `e`. Since `cos2ψ·sin²2θ = (k·e)² − (k·b)²`, no angle is needed.
#[inline(always)]
pub fn polarization(k: &[f64; 3], inc: &[f64; 3], e: &[f64; 3], b: &[f64; 3], kahn: f64) -> f64 {
    let c = dot(k, inc);
    let ke = dot(k, e);
    let kb = dot(k, b);
    0.5 * (1.0 + c * c - kahn * (ke * ke - kb * kb))
}

/// Gradient of [`polarization`] with respect to `k` (treating k's components
/// as free; contract with a `dk` that keeps |k| = 1).
#[inline(always)]
pub fn polarization_grad(k: &[f64; 3], inc: &[f64; 3], e: &[f64; 3], b: &[f64; 3], kahn: f64) -> [f64; 3] {
    let c = dot(k, inc);
    let ke = dot(k, e);
    let kb = dot(k, b);
    let mut g = [0.0; 3];
    for i in 0..3 {
        g[i] = c * inc[i] - kahn * (ke * e[i] - kb * b[i]);
    }
    g
}

/// Fraction of photons absorbed in the sensor layer between depths `d0` and
/// `d0 + dz` (mm, along the normal) for attenuation length `att` (mm = 1/μ) and
/// `cos` = k̂·n̂ (path length = depth/cos): `exp(−d0/(att·cos)) − exp(−(d0+dz)/(att·cos))`.
/// Returns (fraction, ∂fraction/∂cos).
#[inline(always)]
pub fn capture_fraction(d0: f64, dz: f64, att: f64, cos: f64) -> (f64, f64) {
    let l = att * cos;
    let d1 = d0 + dz;
    let e0 = (-d0 / l).exp();
    let e1 = (-d1 / l).exp();
    // ∂/∂cos exp(−d/(att·cos)) = exp(·)·d/(att·cos²)
    let de = (e0 * d0 - e1 * d1) / (l * cos);
    (e0 - e1, de)
}

/// nanoBragg `sincg(x, N) = sin(N·x)/sin(x)`, with the limit N at x = 0.
#[inline(always)]
pub fn sincg(x: f64, n: f64) -> f64 {
    if x == 0.0 {
        n
    } else {
        (n * x).sin() / x.sin()
    }
}

/// `sinc3(x) = 3(sin x/x − cos x)/x²`, 1 at x = 0 (the sphere's transform).
#[inline(always)]
pub fn sinc3(x: f64) -> f64 {
    if x.abs() < 0.1 {
        // Series 3·Σ (−1)^(n+1)·2n·x^(2n−2)/(2n+1)! avoids the cancellation near 0.
        let x2 = x * x;
        1.0 - x2 * (1.0 / 10.0 - x2 * (1.0 / 280.0 - x2 * (1.0 / 15120.0 - x2 / 1330560.0)))
    } else {
        3.0 * (x.sin() / x - x.cos()) / (x * x)
    }
}

/// The lattice-transform shapes (fwd-model §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatticeShape {
    /// diffBragg Gaussian with the full N tensor: `F = det(N)·exp(−|N·Δh|²/0.63)`.
    /// For diagonal N it equals nanoBragg's GAUSS.
    Gauss,
    /// nanoBragg SQUARE (parallelepiped): `Π_i sincg(π·h_i, N_i)` over axes with
    /// N_i > 1, using the full fractional h. Needs diagonal N.
    Square,
    /// nanoBragg ROUND: `det(N)·0.7236·sinc3(π·|N·Δh|)`.
    Round,
    /// nanoBragg TOPHAT: `det(N)·[|N·Δh|² < 0.3969]`.
    Tophat,
    /// nanoBragg GAUSS_ARGCHK: [`LatticeShape::Gauss`], but 0 where the
    /// amplitude's exponent `|N·Δh|²/0.63` is ≥ 35. Forward only (scalar path).
    GaussArgchk,
}

impl LatticeShape {
    pub fn from_name(s: &str) -> Option<LatticeShape> {
        Some(match s.to_ascii_lowercase().as_str() {
            "gauss" | "gauss_xtal" | "gaussian" => LatticeShape::Gauss,
            "square" | "square_xtal" => LatticeShape::Square,
            "round" | "round_xtal" => LatticeShape::Round,
            "tophat" | "tophat_spots" => LatticeShape::Tophat,
            "gauss-argchk" | "gauss_argchk" => LatticeShape::GaussArgchk,
            _ => return None,
        })
    }
}

/// Lattice **intensity** `F_latt²` for any shape (the scalar path). `h` is the
/// fractional index, `v = N·(h − h0)`, `det_n = det(N)` (or 1 with
/// `no_Nabc_scale`), `n_diag` the diagonal of N (for SQUARE).
#[inline(always)]
pub fn lattice_intensity(
    shape: LatticeShape,
    h: &[f64; 3],
    v: &[f64; 3],
    det_n: f64,
    n_diag: &[f64; 3],
) -> f64 {
    let v2 = dot(v, v);
    let f = match shape {
        LatticeShape::Gauss => {
            let x = GAUSS_C * v2;
            return if x > GAUSS_CUTOFF { 0.0 } else { det_n * det_n * exp_neg(-x) };
        }
        LatticeShape::Square => {
            let mut f = 1.0;
            for i in 0..3 {
                if n_diag[i] > 1.0 {
                    f *= sincg(std::f64::consts::PI * h[i], n_diag[i]);
                }
            }
            f
        }
        LatticeShape::GaussArgchk => {
            let x = v2 / GAUSS_WIDTH;
            return if x >= GAUSS_ARGCHK_LIMIT { 0.0 } else { det_n * det_n * exp_neg(-2.0 * x) };
        }
        LatticeShape::Round => det_n * ROUND_NORM * sinc3(std::f64::consts::PI * v2.sqrt()),
        LatticeShape::Tophat => {
            if v2 < TOPHAT_R2 {
                det_n
            } else {
                0.0
            }
        }
    };
    f * f
}

#[inline(always)]
pub fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_is_accurate() {
        let (mut worst, mut worst_fma) = (0.0f64, 0.0f64);
        let mut x: f64 = -707.9;
        while x < 5.0 {
            let want = x.exp();
            worst = worst.max(((exp_neg(x) - want) / want).abs());
            worst_fma = worst_fma.max(((exp_neg_with::<true>(x) - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-16 && worst_fma < 5e-16, "worst rel err {worst} {worst_fma}");
        for x in [-0.5, -1.5, -2.5, 0.49999, 3.0, -49.7, 1e6 + 0.5] {
            assert_eq!(round_miller_with::<true>(x), round_miller_f(x));
        }
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(-709.0), 0.0);
        assert_eq!(exp_neg(f64::NEG_INFINITY), 0.0);
        assert!((exp_neg(-1e-300) - 1.0).abs() < 1e-16);
    }

    #[test]
    fn round_miller_f_matches_convention() {
        use crate::conventions::round_miller;
        for x in
            [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999, 0.50001, -0.49999, 3.0, -3.0, 49.7, -49.2, 1e6 + 0.5]
        {
            assert_eq!(round_miller_f(x), round_miller(x) as f64, "{x}");
        }
        let mut s = 0.123f64;
        for _ in 0..10000 {
            s = (s * 7919.0 + 0.377).fract();
            let x = (s - 0.5) * 200.0;
            assert_eq!(round_miller_f(x), round_miller(x) as f64, "{x}");
        }
    }

    #[test]
    fn polarization_limits_and_gradient() {
        let inc = [0.0, 0.0, -1.0];
        let e = [1.0, 0.0, 0.0];
        let b = [0.0, -1.0, 0.0]; // inc × e = (0,0,−1)×(1,0,0) = (0,−1,0)
                                  // k in the E plane at 2θ = 60°: K = 1 gives cos²2θ.
        let t = 60f64.to_radians();
        let k = [t.sin(), 0.0, -t.cos()];
        assert!((polarization(&k, &inc, &e, &b, 1.0) - t.cos().powi(2)).abs() < 1e-15);
        // k ⟂ E: P = 1 for K = 1; unpolarized K = 0: ½(1 + cos²2θ).
        let k2 = [0.0, t.sin(), -t.cos()];
        assert!((polarization(&k2, &inc, &e, &b, 1.0) - 1.0).abs() < 1e-15);
        assert!((polarization(&k2, &inc, &e, &b, 0.0) - 0.5 * (1.0 + t.cos().powi(2))).abs() < 1e-15);
        // Same as the atan2 form of nanoBragg for a generic direction.
        let k3 = {
            let v = [0.3, -0.2, -0.9];
            let n = dot(&v, &v).sqrt();
            [v[0] / n, v[1] / n, v[2] / n]
        };
        let c = dot(&k3, &inc);
        let psi = -(dot(&k3, &b)).atan2(dot(&k3, &e));
        let want = 0.5 * (1.0 + c * c - 0.99 * (2.0 * psi).cos() * (1.0 - c * c));
        assert!((polarization(&k3, &inc, &e, &b, 0.99) - want).abs() < 1e-15);
        // Gradient by finite differences.
        let g = polarization_grad(&k3, &inc, &e, &b, 0.99);
        for i in 0..3 {
            let mut kp = k3;
            let mut km = k3;
            kp[i] += 1e-6;
            km[i] -= 1e-6;
            let fd = (polarization(&kp, &inc, &e, &b, 0.99) - polarization(&km, &inc, &e, &b, 0.99)) / 2e-6;
            assert!((fd - g[i]).abs() < 1e-9);
        }
    }

    #[test]
    fn geometry_derivatives_match_finite_differences() {
        let p = [12.0, -7.0, -95.0];
        let dp = [0.3, -0.8, 0.5];
        let n0 = [0.05, -0.02, -1.0];
        let nn = dot(&n0, &n0).sqrt();
        let n = n0.map(|x| x / nn);
        let dn = [0.01, 0.03, 0.0005]; // a small turn (not unit-preserving; linear in the formula)
        let at = |t: f64| {
            let q = [p[0] + t * dp[0], p[1] + t * dp[1], p[2] + t * dp[2]];
            let m = [n[0] + t * dn[0], n[1] + t * dn[1], n[2] + t * dn[2]];
            let r = dot(&q, &q).sqrt();
            let k = q.map(|x| x / r);
            (k, solid_angle(0.0056, dot(&m, &q), r), solid_angle_point(r))
        };
        let eps = 1e-5;
        let ((kp, op, pp), (km, om, pm)) = (at(eps), at(-eps));
        let r = dot(&p, &p).sqrt();
        let k = p.map(|x| x / r);
        let dk = direction_derivative(&k, r, &dp);
        for i in 0..3 {
            assert!(((kp[i] - km[i]) / (2.0 * eps) - dk[i]).abs() < 1e-10);
        }
        let d_om = solid_angle_derivative(0.0056, &n, &dn, &p, &k, r, &dp);
        assert!(((op - om) / (2.0 * eps) - d_om).abs() < 1e-9 * d_om.abs());
        let d_pt = solid_angle_point_derivative(&k, r, &dp);
        assert!(((pp - pm) / (2.0 * eps) - d_pt).abs() < 1e-9 * d_pt.abs());
    }

    #[test]
    fn capture_fraction_sums_to_absorption_and_has_right_derivative() {
        let (att, thick, cos) = (0.35, 0.32, 0.93);
        let n = 5;
        let dz = thick / n as f64;
        let total: f64 = (0..n).map(|t| capture_fraction(t as f64 * dz, dz, att, cos).0).sum();
        assert!((total - (1.0 - (-thick / (att * cos)).exp())).abs() < 1e-14);
        let (_, d) = capture_fraction(0.1, 0.05, att, cos);
        let fd = (capture_fraction(0.1, 0.05, att, cos + 1e-7).0
            - capture_fraction(0.1, 0.05, att, cos - 1e-7).0)
            / 2e-7;
        assert!((fd - d).abs() < 1e-8 * d.abs().max(1.0));
    }

    #[test]
    fn shapes_at_their_peak_and_limits() {
        let n = [18.0, 22.0, 30.0];
        let det = n[0] * n[1] * n[2];
        let z = [0.0; 3];
        let hint = [3.0, -2.0, 0.0];
        assert!((lattice_intensity(LatticeShape::Gauss, &hint, &z, det, &n) - det * det).abs() < 1e-6);
        assert!((lattice_intensity(LatticeShape::Tophat, &hint, &z, det, &n) - det * det).abs() < 1e-6);
        let r = lattice_intensity(LatticeShape::Round, &hint, &z, det, &n);
        assert!((r - (det * ROUND_NORM).powi(2)).abs() < 1e-6);
        // SQUARE at an exact zero index: sincg(0, N) = N.
        let s = lattice_intensity(LatticeShape::Square, &[0.0, 0.0, 0.0], &z, det, &n);
        assert!((s - det * det).abs() < 1e-6);
        // SQUARE near integers: sin(Nπh)/sin(πh) → ±N.
        let s = lattice_intensity(LatticeShape::Square, &[2.0 + 1e-7, 1.0 - 1e-7, -1.0 + 1e-7], &z, det, &n);
        assert!((s / (det * det) - 1.0).abs() < 1e-6, "{}", s / (det * det));
        // And the plain formula elsewhere.
        let h = [0.37, -1.21, 2.05];
        let pi = std::f64::consts::PI;
        let want: f64 = (0..3).map(|i| (n[i] * pi * h[i]).sin() / (pi * h[i]).sin()).product();
        let s = lattice_intensity(LatticeShape::Square, &h, &z, det, &n);
        assert!((s - want * want).abs() < 1e-12 * want * want);
        assert!((sinc3(1e-5) - 1.0).abs() < 1e-10);
        let x = 0.0999;
        assert!((sinc3(x) - 3.0 * (x.sin() / x - x.cos()) / (x * x)).abs() < 1e-13);
        assert!((sinc3(0.5) - 3.0 * (0.5f64.sin() / 0.5 - 0.5f64.cos()) / 0.25).abs() < 1e-15);
        assert_eq!(lattice_intensity(LatticeShape::Tophat, &hint, &[0.7, 0.0, 0.0], det, &n), 0.0);
    }

    #[test]
    fn gauss_argchk_is_the_gaussian_cut_at_35() {
        let n = [18.0, 22.0, 30.0];
        let det = n[0] * n[1] * n[2];
        let h = [0.0; 3];
        // |v|²/0.63 just below and at the limit (v along one axis).
        let below = [(0.63f64 * 34.999).sqrt(), 0.0, 0.0];
        let at = [(0.63f64 * 35.0).sqrt() * (1.0 + 1e-15), 0.0, 0.0];
        for v in [[0.1, -0.2, 0.05], below] {
            let g = lattice_intensity(LatticeShape::Gauss, &h, &v, det, &n);
            let a = lattice_intensity(LatticeShape::GaussArgchk, &h, &v, det, &n);
            let want = det * det * (-2.0 * dot(&v, &v) / 0.63).exp();
            assert!((a - want).abs() <= 1e-13 * want, "{a} vs {want}");
            assert!((a - g).abs() <= 1e-13 * g);
        }
        assert_eq!(lattice_intensity(LatticeShape::GaussArgchk, &h, &at, det, &n), 0.0);
        assert!(lattice_intensity(LatticeShape::Gauss, &h, &at, det, &n) > 0.0);
        assert_eq!(LatticeShape::from_name("gauss-argchk"), Some(LatticeShape::GaussArgchk));
    }
}
