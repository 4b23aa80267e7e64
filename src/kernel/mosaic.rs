//! Mosaic domains: rotation matrices `Umos_m` applied on the far left, in the
//! lab frame (`A_real(m) = Umos_m·Rx·Ry·Rz·U·B_real·Oᵀ`).
//!
//! Two sources:
//! * an explicit list (the reference cases' `*_umats.txt`: domain m uses `U_m·a`);
//! * diffBragg's generator (fwd-model §2.9), reproduced exactly:
//!   - N_mos even; N_rand = N_mos/2 axes on the upper hemisphere by the spiral
//!     rule `t_i = (i−½)/N_rand`, `θ_i = acos t_i`, `φ_i = √(π·N_rand)·asin t_i`;
//!   - angle quantiles `u_i = i/N_rand` (i = 0..N_rand−1) permuted by CPython's
//!     `random.Random(8675309).shuffle` (MT19937 + `_randbelow` below);
//!   - rotation angle `ρ_i = η_eff·√2·erfinv(u_i)·π/180` (η in **degrees**);
//!     isotropic `η_eff = η`; anisotropic `η_eff = |cᵀTc|^{-1/2}` with
//!     `T = S·diag(η_a⁻², η_b⁻², η_c⁻²)·S⁻¹`, S = unit crystal axes a, b, c
//!     (lab frame, at initialisation; they do not follow rotX/Y/Z);
//!   - list order `[R(c₁,+ρ₁), R(c₁,−ρ₁), R(c₂,+ρ₂), …]`, right-handed axis-angle.
//! * Derivatives `∂Umos_m/∂η_j` are **per degree**, exact (including the sign
//!   of cᵀTc, which the reference drops; it only matters if cᵀTc < 0).

use crate::conventions::{axis_angle, daxis_angle, Mat3, Vec3};
use crate::error::{Error, Result};

/// diffBragg's seed for the quantile permutation.
pub const DIFFBRAGG_SEED: u32 = 8675309;

/// Mosaic spread, degrees.
#[derive(Clone, Debug, PartialEq)]
pub enum Eta {
    /// One η for every axis (one derivative).
    Iso(f64),
    /// η along the crystal's a, b, c (three derivatives); each must be > 0.
    Aniso([f64; 3]),
}

impl Eta {
    pub fn n_params(&self) -> usize {
        match self {
            Eta::Iso(_) => 1,
            Eta::Aniso(_) => 3,
        }
    }
}

/// Domain matrices and their η derivatives (`d_umats[j][m]`, per degree).
#[derive(Clone, Debug)]
pub struct MosaicDomains {
    pub umats: Vec<Mat3>,
    pub d_umats: Vec<Vec<Mat3>>,
}

/// Generate diffBragg's mosaic domains. `crystal_axes`: columns a, b, c (lab
/// frame, any length) used for the anisotropic tensor; ignored for `Iso`.
pub fn generate_umats(n_domains: usize, eta: &Eta, crystal_axes: &Mat3) -> Result<MosaicDomains> {
    let n_eta = eta.n_params();
    if n_domains == 0 {
        return Err(Error::param("mosaic_domains", "must be at least 1"));
    }
    match eta {
        Eta::Iso(e) if !e.is_finite() => return Err(Error::param("eta", "must be finite")),
        Eta::Aniso(e) if !e.iter().all(|x| x.is_finite() && *x > 0.0) => {
            return Err(Error::param(
                "eta_abc",
                format!("{e:?}: every anisotropic η must be > 0 (use the isotropic model for zero spread)"),
            ))
        }
        _ => {}
    }
    if n_domains == 1 {
        return Ok(MosaicDomains {
            umats: vec![Mat3::identity()],
            d_umats: vec![vec![Mat3::zeros()]; n_eta],
        });
    }
    if n_domains % 2 != 0 {
        return Err(Error::param("mosaic_domains", format!("{n_domains} must be even (± pairs) or 1")));
    }
    let n_rand = n_domains / 2;
    let axes = spiral_axes(n_rand);
    let quantiles = shuffled_quantiles(n_rand, DIFFBRAGG_SEED);

    // Anisotropic tensor and its derivatives, in the lab frame.
    let (t, dts) = match eta {
        Eta::Iso(_) => (Mat3::zeros(), vec![]),
        Eta::Aniso(e) => {
            let s = Mat3::from_columns(&[0, 1, 2].map(|k| crystal_axes.column(k).normalize()));
            let s_inv = s.try_inverse().ok_or_else(|| Error::param("crystal", "degenerate crystal axes"))?;
            let t = s * Mat3::from_diagonal(&Vec3::new(e[0].powi(-2), e[1].powi(-2), e[2].powi(-2))) * s_inv;
            let dts: Vec<Mat3> = (0..3)
                .map(|j| {
                    let mut d = Vec3::zeros();
                    d[j] = -2.0 * e[j].powi(-3);
                    s * Mat3::from_diagonal(&d) * s_inv
                })
                .collect();
            (t, dts)
        }
    };

    let mut umats = Vec::with_capacity(n_domains);
    let mut d_umats = vec![Vec::with_capacity(n_domains); n_eta];
    for (c, &u) in axes.iter().zip(&quantiles) {
        let f = std::f64::consts::SQRT_2 * erfinv(u) * std::f64::consts::PI / 180.0;
        // ρ and dρ/dη_j (radians per degree).
        let (rho, drho): (f64, Vec<f64>) = match eta {
            Eta::Iso(e) => (e * f, vec![f]),
            Eta::Aniso(_) => {
                let x = c.dot(&(t * c));
                let eta_eff = 1.0 / x.abs().sqrt();
                let d =
                    dts.iter().map(|dt| -0.5 * eta_eff.powi(3) * x.signum() * c.dot(&(dt * c)) * f).collect();
                (eta_eff * f, d)
            }
        };
        for sign in [1.0, -1.0] {
            umats.push(axis_angle(c, sign * rho));
            let dr = daxis_angle(c, sign * rho);
            for j in 0..n_eta {
                d_umats[j].push(dr * (sign * drho[j]));
            }
        }
    }
    Ok(MosaicDomains { umats, d_umats })
}

/// Upper-hemisphere spiral directions (Ponti 1999, eq. A6), as diffBragg's `search_directions`.
pub fn spiral_axes(n: usize) -> Vec<Vec3> {
    (1..=n)
        .map(|i| {
            let t = (i as f64 - 0.5) / n as f64;
            let theta = t.acos();
            let phi = (std::f64::consts::PI * n as f64).sqrt() * t.asin();
            Vec3::new(theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos())
        })
        .collect()
}

/// `[i/n for i in range(n)]` shuffled by `random.Random(seed).shuffle`.
pub fn shuffled_quantiles(n: usize, seed: u32) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 / n as f64).collect();
    let mut rng = Mt19937::new_cpython_int_seed(seed);
    rng.shuffle(&mut v);
    v
}

/// MT19937 as CPython's `random` module uses it.
pub struct Mt19937 {
    mt: [u32; 624],
    idx: usize,
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;

    fn init_genrand(s: u32) -> Mt19937 {
        let mut mt = [0u32; 624];
        mt[0] = s;
        for i in 1..Self::N {
            mt[i] = 1812433253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { mt, idx: Self::N }
    }

    /// The reference `init_by_array`.
    pub fn new_by_array(key: &[u32]) -> Mt19937 {
        let mut r = Self::init_genrand(19650218);
        let mt = &mut r.mt;
        let n = Self::N;
        let (mut i, mut j) = (1usize, 0usize);
        let klen = key.len().max(1);
        for _ in 0..n.max(key.len()) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            let kj = key.get(j).copied().unwrap_or(0);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1664525)).wrapping_add(kj).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= n {
                mt[0] = mt[n - 1];
                i = 1;
            }
            if j >= klen {
                j = 0;
            }
        }
        for _ in 0..n - 1 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1566083941)).wrapping_sub(i as u32);
            i += 1;
            if i >= n {
                mt[0] = mt[n - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        r
    }

    /// CPython `random.seed(n)` for a non-negative integer below 2³².
    pub fn new_cpython_int_seed(seed: u32) -> Mt19937 {
        Self::new_by_array(&[seed])
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.idx >= Self::N {
            let mt = &mut self.mt;
            for k in 0..Self::N {
                let y = (mt[k] & 0x8000_0000) | (mt[(k + 1) % Self::N] & 0x7fff_ffff);
                let mag = if y & 1 != 0 { 0x9908_b0df } else { 0 };
                mt[k] = mt[(k + Self::M) % Self::N] ^ (y >> 1) ^ mag;
            }
            self.idx = 0;
        }
        let mut y = self.mt[self.idx];
        self.idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// CPython `getrandbits(k)` for 1 ≤ k ≤ 32.
    pub fn getrandbits(&mut self, k: u32) -> u32 {
        debug_assert!((1..=32).contains(&k));
        self.next_u32() >> (32 - k)
    }

    /// CPython `_randbelow(n)` (rejection sampling with n.bit_length() bits), n ≥ 1.
    pub fn randbelow(&mut self, n: u32) -> u32 {
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// CPython `shuffle`: for i from len−1 down to 1, swap `x[i]` with `x[randbelow(i+1)]`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow((i + 1) as u32) as usize;
            x.swap(i, j);
        }
    }
}

/// `erf(x)` to about 1e-16 relative for |x| ≤ 6, by the all-positive series
/// `erf x = (2/√π)·e^{−x²}·Σ 2ⁿx^{2n+1}/(1·3·…·(2n+1))` (no cancellation).
pub fn erf(x: f64) -> f64 {
    let ax = x.abs();
    if ax > 6.0 {
        return x.signum();
    }
    let x2 = ax * ax;
    let mut term = ax;
    let mut sum = ax;
    let mut n = 0.0;
    while term > 1e-17 * sum {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
    }
    let v = 2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum;
    v.min(1.0).copysign(x)
}

/// Inverse error function on (−1, 1): a rough start refined by Newton steps on [`erf`].
pub fn erfinv(u: f64) -> f64 {
    if u == 0.0 {
        return 0.0;
    }
    if !(u > -1.0 && u < 1.0) {
        return if u == 1.0 {
            f64::INFINITY
        } else if u == -1.0 {
            f64::NEG_INFINITY
        } else {
            f64::NAN
        };
    }
    let a = u.abs();
    // Start: Winitzki's closed-form approximation (≈ 2e-3 relative).
    let ka = 0.147;
    let ln = (1.0 - a * a).ln();
    let t = 2.0 / (std::f64::consts::PI * ka) + ln / 2.0;
    let mut x = ((t * t - ln / ka).sqrt() - t).sqrt();
    let c = 2.0 / std::f64::consts::PI.sqrt();
    for _ in 0..6 {
        let err = erf(x) - a;
        let d = c * (-x * x).exp();
        // Halley step (erf'' = −2x·erf').
        let step = err / d;
        let dx = step / (1.0 + x * step);
        x -= dx;
        if dx.abs() <= 1e-16 * x {
            break;
        }
    }
    x.copysign(u)
}

/// Parse explicit domain matrices: one row-major 3×3 per non-empty line.
/// `path` only names the source in errors. Each must be a rotation (to 1e-6).
pub fn parse_umats(text: &str, path: &std::path::Path) -> Result<Vec<Mat3>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let loc = format!("line {}", i + 1);
        let v: Vec<f64> = t
            .split_whitespace()
            .map(|s| s.parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::record(path, &loc, format!("not a number: {e}")))?;
        if v.len() != 9 {
            return Err(Error::record(path, &loc, format!("expected 9 values, found {}", v.len())));
        }
        let m = crate::conventions::mat3_from_row_major(&v);
        check_rotation(&m).map_err(|e| Error::record(path, &loc, e))?;
        out.push(m);
    }
    if out.is_empty() {
        return Err(Error::file(path, "no matrices"));
    }
    Ok(out)
}

/// Whether `m` is a proper rotation (orthonormal to 1e-6, det +1).
pub fn check_rotation(m: &Mat3) -> std::result::Result<(), String> {
    if !m.iter().all(|x| x.is_finite()) {
        return Err("matrix has non-finite entries".into());
    }
    let e = (m.transpose() * m - Mat3::identity()).abs().max();
    if e > 1e-6 || (m.determinant() - 1.0).abs() > 1e-6 {
        return Err(format!("not a proper rotation (|MᵀM − I| = {e:.2e}, det = {:.6})", m.determinant()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_reference_vector() {
        // Published MT19937 check: init_by_array({0x123, 0x234, 0x345, 0x456}) → first outputs.
        let mut r = Mt19937::new_by_array(&[0x123, 0x234, 0x345, 0x456]);
        let want = [1067595299u32, 955945823, 477289528, 4107218783, 4228976476];
        for w in want {
            assert_eq!(r.next_u32(), w);
        }
    }

    #[test]
    fn erf_and_erfinv_roundtrip() {
        // erf(0.5) and erf(1) from tables (Abramowitz & Stegun, 7.1).
        assert!((erf(0.5) - 0.5204998778130465).abs() < 2e-16);
        assert!((erf(1.0) - 0.8427007929497149).abs() < 2e-16);
        for i in 0..1000 {
            let u = -0.9995 + 1.999 * i as f64 / 999.0;
            let x = erfinv(u);
            assert!((erf(x) - u).abs() < 1.5e-15, "{u} {x} {}", erf(x) - u);
        }
        assert_eq!(erfinv(0.0), 0.0);
        assert!(erfinv(1.0).is_infinite() && erfinv(2.0).is_nan());
    }

    #[test]
    fn umats_are_rotations_with_exact_eta_derivatives() {
        let axes = Mat3::new(50.0, 31.0, -25.0, -60.0, 11.7, -24.1, -12.6, 71.5, 15.1);
        for eta in [Eta::Iso(0.07), Eta::Aniso([0.05, 0.08, 0.11])] {
            let d = generate_umats(10, &eta, &axes).unwrap();
            assert_eq!(d.umats.len(), 10);
            assert_eq!(d.d_umats.len(), eta.n_params());
            for u in &d.umats {
                check_rotation(u).unwrap();
            }
            // ± pairs: U(+ρ)·U(−ρ) = I.
            assert!((d.umats[0] * d.umats[1] - Mat3::identity()).abs().max() < 1e-14);
            for j in 0..eta.n_params() {
                let eps = 1e-4;
                let shift = |s: f64| match &eta {
                    Eta::Iso(e) => Eta::Iso(e + s),
                    Eta::Aniso(e) => {
                        let mut e = *e;
                        e[j] += s;
                        Eta::Aniso(e)
                    }
                };
                // Richardson-extrapolated central difference (error O(ε⁴)).
                let cd = |h: f64, m: usize| {
                    (generate_umats(10, &shift(h), &axes).unwrap().umats[m]
                        - generate_umats(10, &shift(-h), &axes).unwrap().umats[m])
                        / (2.0 * h)
                };
                for m in 0..10 {
                    let fd = (cd(eps / 2.0, m) * 4.0 - cd(eps, m)) / 3.0;
                    let err = (fd - d.d_umats[j][m]).abs().max();
                    assert!(err < 1e-8 * fd.abs().max() + 2e-11, "{eta:?} j={j} m={m} {err}");
                }
            }
        }
        // Isotropic: rotation angle = η·√2·erfinv(u)·π/180 about the spiral axes.
        let d = generate_umats(6, &Eta::Iso(0.5), &axes).unwrap();
        let q = shuffled_quantiles(3, DIFFBRAGG_SEED);
        for (i, u) in q.iter().enumerate() {
            let rho = 0.5 * std::f64::consts::SQRT_2 * erfinv(*u) * std::f64::consts::PI / 180.0;
            let ang = ((d.umats[2 * i].trace() - 1.0) / 2.0).clamp(-1.0, 1.0).acos();
            assert!((ang - rho).abs() < 1e-7, "{ang} {rho}");
        }
    }

    #[test]
    fn bad_mosaic_settings_are_errors() {
        let ax = Mat3::identity();
        assert!(generate_umats(3, &Eta::Iso(0.1), &ax).is_err());
        assert!(generate_umats(0, &Eta::Iso(0.1), &ax).is_err());
        assert!(generate_umats(4, &Eta::Aniso([0.1, 0.0, 0.1]), &ax).is_err());
        let one = generate_umats(1, &Eta::Aniso([0.1, 0.1, 0.1]), &ax).unwrap();
        assert_eq!(one.umats, vec![Mat3::identity()]);
        assert_eq!(one.d_umats.len(), 3);
    }

    #[test]
    fn parse_umats_checks_rotations() {
        let p = std::path::Path::new("u.txt");
        let ok = parse_umats("1 0 0 0 1 0 0 0 1\n\n0 -1 0 1 0 0 0 0 1\n", p).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1][(0, 1)], -1.0);
        for (t, want) in
            [("1 0 0 0 1 0 0 0\n", "9 values"), ("2 0 0 0 1 0 0 0 1\n", "rotation"), ("a\n", "number")]
        {
            let e = parse_umats(t, p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("line 1"), "{e}");
        }
        let path = crate::testutil::shared("reference/shot_00_umats.txt");
        let u = parse_umats(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        assert_eq!(u.len(), 10);
        assert_eq!(u[0], Mat3::identity());
    }
}
