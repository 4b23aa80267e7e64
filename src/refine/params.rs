//! Refined parameters and diffBragg's reparameterisation (`refiners/parameters.py`).
//!
//! # Conventions
//! * The optimiser works on dimensionless coordinates `x`; every parameter starts
//!   at **x = 1**, where `value(1) = init`.
//! * Ranged (the reference's `RangedParameter`): with `rng = max − min` and
//!   `φ0 = asin(2(init − min)/rng − 1)`,
//!   `value(x) = min + rng·(1 + sin(σ(x−1) + φ0))/2`, `∂value/∂x = (rng/2)·σ·cos(σ(x−1) + φ0)`.
//!   The map is periodic and never leaves [min, max].
//! * Positive (`PositiveParameter`, also the Fhkl scales): `value = init·exp(σ(x−1))`,
//!   `∂value/∂x = σ·value`.
//! * Fixed: `value = init` whatever x; a fixed parameter has no slot in the free x.
//!   (The reference resets a fixed ranged parameter's range to init ± 1; since x
//!   stays 1 that changes nothing, so we drop it.)
//! * Values are in the parameter's own unit (see [`names`] for the diffBragg
//!   names; units are the caller's: this module never converts).
//!
//! # Numerics of the ranged map
//! With `ψ = σ(x−1) + φ0 + π/2` the same map reads `min + rng·sin²(ψ/2)` =
//! `max − rng·cos²(ψ/2)`. We evaluate whichever form is taken relative to the
//! bound `init` is nearer to, with `ψ0` from `asin`/`acos` of a square root. This
//! is the reference map exactly, but `value(1)` reproduces `init` to rounding even
//! when init sits at a bound; the literal formula loses ~5 digits there (the
//! G trap below: `1 + sin(φ0)` ≈ 2e-12 is a difference of two O(1) numbers).
//!
//! # [TRAP] G ranged over [0, 1e12] with init 1
//! The reference default starts G at the lower turning point of the sine
//! (`φ0 ≈ −π/2 + 2e-6`), where `value ≈ 2.5e11·(2e-6 + σ(x−1))²` is strongly
//! nonlinear and `∂G/∂x ≈ 1e6` grows with every step. We keep the reference
//! default (so a phil file means the same thing here) but the typed config may
//! choose `Positive` for G, and the stage-1 driver starts G from the
//! least-squares scale ([`super::likelihood::least_squares_scale`]) so that
//! init is the data's own scale, away from the bound.

use super::restraints::Restraint;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::f64::consts::PI;

/// How a parameter's value depends on its coordinate x.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// Bounded sine map onto [min, max].
    Ranged { min: f64, max: f64 },
    /// `init·exp(σ(x−1))`.
    Positive,
    /// Constant `init`.
    Fixed,
}

/// One named parameter with its reparameterisation and optional restraint.
#[derive(Clone, Debug, PartialEq)]
pub struct Parameter {
    pub name: String,
    pub init: f64,
    pub sigma: f64,
    pub transform: Transform,
    pub restraint: Option<Restraint>,
    /// Ranged only: ψ0 and which closed form is evaluated.
    psi0: f64,
    from_upper: bool,
}

impl Parameter {
    /// A parameter refined through `transform`. Errors name the parameter.
    pub fn new(name: impl Into<String>, init: f64, sigma: f64, transform: Transform) -> Result<Parameter> {
        let name = name.into();
        if !init.is_finite() {
            return Err(Error::param(&name, format!("init must be finite, got {init}")));
        }
        let mut p = Parameter { name, init, sigma, transform, restraint: None, psi0: 0.0, from_upper: false };
        if transform == Transform::Fixed {
            return Ok(p);
        }
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::param(&p.name, format!("sigma must be finite and > 0, got {sigma}")));
        }
        match transform {
            Transform::Ranged { min, max } => {
                if !(min.is_finite() && max.is_finite() && min < max) {
                    return Err(Error::param(&p.name, format!("needs finite min < max, got [{min}, {max}]")));
                }
                if !(init >= min && init <= max) {
                    return Err(Error::param(&p.name, format!("init {init} lies outside [{min}, {max}]")));
                }
                let rng = max - min;
                p.from_upper = init - min > max - init;
                p.psi0 = psi_of(init, min, max, rng, p.from_upper);
            }
            Transform::Positive => {
                if !(init > 0.0) {
                    return Err(Error::param(
                        &p.name,
                        format!("a positive parameter needs init > 0, got {init}"),
                    ));
                }
            }
            Transform::Fixed => unreachable!(),
        }
        Ok(p)
    }

    pub fn ranged(name: impl Into<String>, init: f64, min: f64, max: f64, sigma: f64) -> Result<Parameter> {
        Parameter::new(name, init, sigma, Transform::Ranged { min, max })
    }

    pub fn positive(name: impl Into<String>, init: f64, sigma: f64) -> Result<Parameter> {
        Parameter::new(name, init, sigma, Transform::Positive)
    }

    pub fn fixed(name: impl Into<String>, value: f64) -> Result<Parameter> {
        Parameter::new(name, value, 1.0, Transform::Fixed)
    }

    /// Attach a restraint; both or neither of center and beta (error otherwise).
    pub fn with_restraint(mut self, center: Option<f64>, beta: Option<f64>) -> Result<Parameter> {
        self.restraint = Restraint::new(&self.name, center, beta)?;
        Ok(self)
    }

    pub fn is_refined(&self) -> bool {
        self.transform != Transform::Fixed
    }

    /// The value at coordinate x.
    pub fn value(&self, x: f64) -> f64 {
        match self.transform {
            Transform::Fixed => self.init,
            Transform::Positive => self.init * (self.sigma * (x - 1.0)).exp(),
            Transform::Ranged { min, max } => {
                let half = 0.5 * (self.psi0 + self.sigma * (x - 1.0));
                let v = if self.from_upper {
                    let c = half.cos();
                    max - (max - min) * c * c
                } else {
                    let s = half.sin();
                    min + (max - min) * s * s
                };
                v.clamp(min, max)
            }
        }
    }

    /// ∂value/∂x at coordinate x.
    pub fn dvalue_dx(&self, x: f64) -> f64 {
        match self.transform {
            Transform::Fixed => 0.0,
            Transform::Positive => self.sigma * self.value(x),
            Transform::Ranged { min, max } => {
                0.5 * (max - min) * self.sigma * (self.psi0 + self.sigma * (x - 1.0)).sin()
            }
        }
    }

    /// The coordinate x (principal branch, ψ ∈ [0, π]) at which the parameter
    /// takes `value`. Fixed parameters give 1 if `value == init`.
    pub fn x_for_value(&self, value: f64) -> Result<f64> {
        match self.transform {
            Transform::Fixed => {
                if value == self.init {
                    Ok(1.0)
                } else {
                    Err(Error::param(&self.name, format!("is fixed at {}, cannot take {value}", self.init)))
                }
            }
            Transform::Positive => {
                if !(value > 0.0 && value.is_finite()) {
                    return Err(Error::param(&self.name, format!("positive parameter cannot take {value}")));
                }
                Ok(1.0 + (value / self.init).ln() / self.sigma)
            }
            Transform::Ranged { min, max } => {
                if !(value >= min && value <= max) {
                    return Err(Error::param(
                        &self.name,
                        format!("value {value} lies outside [{min}, {max}]"),
                    ));
                }
                let rng = max - min;
                let psi = psi_of(value, min, max, rng, value - min > max - value);
                Ok(1.0 + (psi - self.psi0) / self.sigma)
            }
        }
    }
}

/// ψ ∈ [0, π] with `sin²(ψ/2) = (v − min)/rng`, from the better-conditioned side.
fn psi_of(v: f64, min: f64, max: f64, rng: f64, from_upper: bool) -> f64 {
    if from_upper {
        2.0 * ((max - v) / rng).clamp(0.0, 1.0).sqrt().acos()
    } else {
        2.0 * ((v - min) / rng).clamp(0.0, 1.0).sqrt().asin()
    }
    .clamp(0.0, PI)
}

/// diffBragg's parameter names (hopper `Parameters` keys).
pub mod names {
    pub fn rot(i: usize) -> String {
        format!("RotXYZ{i}_xtal0")
    }
    pub const G: &str = "G_xtal0";
    pub fn nabc(i: usize) -> String {
        format!("Nabc{i}")
    }
    pub fn ndef(i: usize) -> String {
        format!("Ndef{i}")
    }
    pub fn diffuse_gamma(i: usize) -> String {
        format!("diffuse_gamma{i}")
    }
    pub fn diffuse_sigma(i: usize) -> String {
        format!("diffuse_sigma{i}")
    }
    pub fn eta_abc(i: usize) -> String {
        format!("eta_abc{i}")
    }
    pub fn ucell(i: usize) -> String {
        format!("ucell{i}")
    }
    pub const DETZ_SHIFT: &str = "detz_shift";
    pub fn scale_roi(roi_id: usize) -> String {
        format!("scale_roi{roi_id}")
    }
    pub const LAMBDA_OFFSET: &str = "lambda_offset";
    pub const LAMBDA_SCALE: &str = "lambda_scale";
    /// Stage-2 structure-factor scale of ASU entry `asu` in spectral channel
    /// `chan`. The reference keeps these unnamed at the end of x; we name them.
    pub fn fhkl_scale(asu: usize, chan: usize) -> String {
        format!("Fhkl_scale{asu}_chan{chan}")
    }

    /// Hopper's insertion order (§4.4): rot ×3, G, then for ii = 0..3 the
    /// interleaved Nabc, Ndef, diffuse_gamma, diffuse_sigma, eta_abc; the cell
    /// variables; detz_shift; scale_roi* (only when per-ROI scales are used);
    /// lambda_offset, lambda_scale. Fhkl scales (stage 2) come after, in x only.
    pub fn hopper_order(n_ucell: usize, roi_ids: &[usize]) -> Vec<String> {
        let mut v: Vec<String> = (0..3).map(rot).collect();
        v.push(G.to_string());
        for ii in 0..3 {
            v.extend([nabc(ii), ndef(ii), diffuse_gamma(ii), diffuse_sigma(ii), eta_abc(ii)]);
        }
        v.extend((0..n_ucell).map(ucell));
        v.push(DETZ_SHIFT.to_string());
        v.extend(roi_ids.iter().map(|&r| scale_roi(r)));
        v.push(LAMBDA_OFFSET.to_string());
        v.push(LAMBDA_SCALE.to_string());
        v
    }
}

/// An ordered set of named parameters. The free coordinates are the refined
/// parameters in insertion order; fixed ones take no slot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParameterSet {
    params: Vec<Parameter>,
    by_name: BTreeMap<String, usize>,
    free: Vec<usize>,
}

impl ParameterSet {
    pub fn new() -> ParameterSet {
        ParameterSet::default()
    }

    /// Append a parameter; names must be unique. Returns its index.
    pub fn push(&mut self, p: Parameter) -> Result<usize> {
        if self.by_name.contains_key(&p.name) {
            return Err(Error::param(&p.name, "defined twice"));
        }
        let i = self.params.len();
        self.by_name.insert(p.name.clone(), i);
        if p.is_refined() {
            self.free.push(i);
        }
        self.params.push(p);
        Ok(i)
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn params(&self) -> &[Parameter] {
        &self.params
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, name: &str) -> Option<&Parameter> {
        self.index(name).map(|i| &self.params[i])
    }

    /// Indices (into [`Self::params`]) of the refined parameters, in x order.
    pub fn free_indices(&self) -> &[usize] {
        &self.free
    }

    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Vary mask over all parameters.
    pub fn vary(&self) -> Vec<bool> {
        self.params.iter().map(|p| p.is_refined()).collect()
    }

    /// Position of a parameter in the free x, if it is refined.
    pub fn free_position(&self, name: &str) -> Option<usize> {
        let i = self.index(name)?;
        self.free.iter().position(|&k| k == i)
    }

    /// Names of the refined parameters, in x order.
    pub fn free_names(&self) -> Vec<&str> {
        self.free.iter().map(|&i| self.params[i].name.as_str()).collect()
    }

    /// The starting free x (all ones).
    pub fn x0(&self) -> Vec<f64> {
        vec![1.0; self.free.len()]
    }

    /// Full coordinate vector: the free x scattered into place, 1 elsewhere.
    pub fn full_x(&self, x_free: &[f64]) -> Vec<f64> {
        assert_eq!(x_free.len(), self.free.len(), "free x has the wrong length");
        let mut x = vec![1.0; self.params.len()];
        for (k, &i) in self.free.iter().enumerate() {
            x[i] = x_free[k];
        }
        x
    }

    /// Every parameter's value at free coordinates `x_free`.
    pub fn values(&self, x_free: &[f64]) -> Vec<f64> {
        let x = self.full_x(x_free);
        self.params.iter().zip(&x).map(|(p, &xi)| p.value(xi)).collect()
    }

    /// One parameter's value at `x_free`, by name.
    pub fn value(&self, name: &str, x_free: &[f64]) -> Option<f64> {
        let i = self.index(name)?;
        let xi = match self.free.iter().position(|&k| k == i) {
            Some(k) => x_free[k],
            None => 1.0,
        };
        Some(self.params[i].value(xi))
    }

    /// ∂value/∂x for each refined parameter, in x order.
    pub fn dvalue_dx(&self, x_free: &[f64]) -> Vec<f64> {
        assert_eq!(x_free.len(), self.free.len(), "free x has the wrong length");
        self.free.iter().zip(x_free).map(|(&i, &x)| self.params[i].dvalue_dx(x)).collect()
    }

    /// Free x giving the refined parameters the values `values` (full length;
    /// entries of fixed parameters are ignored).
    pub fn x_for_values(&self, values: &[f64]) -> Result<Vec<f64>> {
        if values.len() != self.params.len() {
            return Err(Error::msg(format!("{} values for {} parameters", values.len(), self.params.len())));
        }
        self.free.iter().map(|&i| self.params[i].x_for_value(values[i])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's literal formula, for comparison.
    fn literal_ranged(init: f64, min: f64, max: f64, sigma: f64, x: f64) -> (f64, f64) {
        let rng = max - min;
        let phi0 = (2.0 * (init - min) / rng - 1.0).asin();
        let a = sigma * (x - 1.0) + phi0;
        (min + rng * (1.0 + a.sin()) / 2.0, 0.5 * rng * sigma * a.cos())
    }

    fn cases() -> Vec<Parameter> {
        vec![
            Parameter::ranged("RotXYZ0_xtal0", 0.0, -PI, PI, 1e-3).unwrap(),
            Parameter::ranged("Nabc0", 100.0, 3.0, 300.0, 1.0).unwrap(),
            Parameter::ranged("ucell0", 79.1, 71.19, 87.01, 1.0).unwrap(),
            Parameter::ranged("lambda_scale", 1.04, 0.95, 1.05, 1.0).unwrap(),
            Parameter::ranged("eta_abc0", 0.0, -1e-10, 10.0, 1.0).unwrap(),
            Parameter::positive("G_xtal0", 3.7e5, 1.0).unwrap(),
            Parameter::positive("Fhkl_scale3_chan0", 1.0, 0.5).unwrap(),
        ]
    }

    #[test]
    fn starts_at_init_and_matches_reference_formula() {
        for p in cases() {
            let scale = match p.transform {
                Transform::Ranged { min, max } => min.abs().max(max.abs()),
                _ => p.init.abs(),
            };
            assert!((p.value(1.0) - p.init).abs() <= 1e-14 * scale, "{}", p.name);
            if let Transform::Ranged { min, max } = p.transform {
                for &x in &[0.3, 0.9, 1.0, 1.2, 3.0, -7.0] {
                    let (v, d) = literal_ranged(p.init, min, max, p.sigma, x);
                    let rng = max - min;
                    assert!((p.value(x) - v).abs() <= 1e-12 * rng, "{} value at {x}", p.name);
                    assert!((p.dvalue_dx(x) - d).abs() <= 1e-9 * rng * p.sigma, "{} deriv at {x}", p.name);
                }
            }
        }
    }

    #[test]
    fn derivatives_match_central_differences() {
        for p in cases() {
            for &x in &[0.5, 1.0, 1.37, 2.2] {
                let h = 1e-6 / p.sigma;
                let fd = (p.value(x + h) - p.value(x - h)) / (2.0 * h);
                let an = p.dvalue_dx(x);
                assert!(
                    (fd - an).abs() <= 1e-6 * an.abs().max(1e-3 * p.sigma),
                    "{} at {x}: {fd} vs {an}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn inverse_roundtrip_and_range() {
        for p in cases() {
            for &x in &[0.95, 1.0, 1.05, 1.4] {
                let v = p.value(x);
                let x2 = p.x_for_value(v).unwrap();
                assert!((p.value(x2) - v).abs() <= 1e-11 * v.abs().max(1.0), "{} at {x}", p.name);
            }
            if let Transform::Ranged { min, max } = p.transform {
                for k in -50..50 {
                    let v = p.value(k as f64 * 0.37 / p.sigma);
                    assert!(v >= min && v <= max);
                }
                assert!(p.x_for_value(max + 1.0).is_err());
            }
        }
    }

    #[test]
    fn g_trap_is_reproduced_and_init_is_exact() {
        // Reference default: G ranged [0, 1e12], init 1.
        let g = Parameter::ranged(names::G, 1.0, 0.0, 1e12, 1.0).unwrap();
        // Our evaluation keeps init exactly; the literal formula does not.
        assert!((g.value(1.0) - 1.0).abs() < 1e-12);
        let (lit, _) = literal_ranged(1.0, 0.0, 1e12, 1.0, 1.0);
        assert!((lit - 1.0).abs() > 1e-7, "literal formula unexpectedly exact: {lit}");
        // The trap itself: ∂G/∂x ≈ 1e6 at x = 1, and G is quadratic in the step.
        let d = g.dvalue_dx(1.0);
        assert!((d / 1e6 - 1.0).abs() < 1e-3, "{d}");
        let step = 1e-3;
        let want = 2.5e11 * (2e-6f64 + step).powi(2);
        assert!((g.value(1.0 + step) / want - 1.0).abs() < 1e-3);
    }

    #[test]
    fn bad_definitions_name_the_parameter() {
        let e = Parameter::ranged("Nabc1", 400.0, 3.0, 300.0, 1.0).unwrap_err();
        assert!(e.to_string().contains("Nabc1"), "{e}");
        assert!(Parameter::ranged("a", 1.0, 2.0, 2.0, 1.0).is_err());
        assert!(Parameter::ranged("a", 1.0, 0.0, 2.0, 0.0).is_err());
        assert!(Parameter::positive("G_xtal0", 0.0, 1.0).unwrap_err().to_string().contains("G_xtal0"));
        assert!(Parameter::positive("G", f64::NAN, 1.0).is_err());
        // A fixed parameter may sit outside any range.
        assert_eq!(Parameter::fixed("detz_shift", 12.0).unwrap().value(5.0), 12.0);
    }

    #[test]
    fn set_packs_free_coordinates() {
        let mut s = ParameterSet::new();
        for n in names::hopper_order(2, &[]) {
            let p = match n.as_str() {
                "G_xtal0" => Parameter::positive(&n, 10.0, 1.0),
                "Nabc0" | "Nabc1" | "Nabc2" => Parameter::ranged(&n, 100.0, 3.0, 300.0, 1.0),
                "ucell0" | "ucell1" => Parameter::ranged(&n, 79.0, 71.0, 87.0, 1.0),
                _ => Parameter::fixed(&n, if n == "lambda_scale" { 1.0 } else { 0.0 }),
            }
            .unwrap();
            s.push(p).unwrap();
        }
        assert_eq!(s.len(), 4 + 15 + 2 + 1 + 2);
        assert_eq!(s.free_names(), ["G_xtal0", "Nabc0", "Nabc1", "Nabc2", "ucell0", "ucell1"]);
        assert_eq!(s.params()[4].name, "Nabc0");
        assert_eq!(s.params()[5].name, "Ndef0");
        assert!(s.push(Parameter::fixed("G_xtal0", 1.0).unwrap()).is_err());
        let x = vec![1.1, 0.9, 1.0, 1.2, 1.0, 0.8];
        let v = s.values(&x);
        assert_eq!(v[s.index("lambda_scale").unwrap()], 1.0);
        assert!((v[3] - 10.0 * 0.1f64.exp()).abs() < 1e-12);
        let back = s.x_for_values(&v).unwrap();
        for k in 0..x.len() {
            assert!((back[k] - x[k]).abs() < 1e-10, "{k}");
        }
        assert_eq!(s.free_position("Nabc1"), Some(2));
        assert_eq!(s.free_position("Ndef1"), None);
        assert_eq!(s.value("ucell1", &x), Some(v[s.index("ucell1").unwrap()]));
    }
}
