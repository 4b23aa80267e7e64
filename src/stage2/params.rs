//! The stage-2 parameter vector: per-shot parameters, then the structure-factor
//! scales.
//!
//! # Layout of x (replicated on every rank)
//! `x = [shot 0 block | shot 1 block | … | Fhkl scales]`. Shots are in
//! ascending shot_id order (the global order, independent of the rank count);
//! every shot has the same block: its refined parameters among G, RotXYZ0..2,
//! Nabc0..2, ucell0.. in hopper order. x₀ = 1 everywhere.
//!
//! # Structure-factor scales (decisions)
//! * One scale multiplies the starting **intensity** of an anomalous-ASU index
//!   in one energy channel: `I_{a,c} = s_{a,c}·|F⁰_a|²`,
//!   `s = exp(σ_F(x − 1))`, σ_F = `sigmas.Fhkl`.
//! * \[TRAP\] T3.2 decided: only ASU indices the data touch get a scale: those
//!   that are the nominal index of at least `refiner.stage_two.min_multiplicity`
//!   ROIs (on shots whose spectrum has weight in that channel). Every other
//!   index keeps its starting value (scale 1), including indices that a box
//!   only sees in the tail of a neighbour.
//! * Centric reflections have no anomalous signal, so their intensity cannot
//!   depend on the channel: a centric index has **one** scale shared by every
//!   channel (the kernel's per-(ASU, channel) scales are tied; their gradients
//!   and curvatures add up). The reference instead copies channel 0 into the
//!   others before each call and folds the gradients back, which is the same
//!   model with redundant coordinates.
//! * Bounds: `x ≤ 8` on every scale coordinate (s ≤ e^{7σ_F}), as the
//!   reference; per-shot coordinates are unbounded.
//! * `key[a + c·n_asu]` maps the kernel's (ASU id, channel) slot to its
//!   parameter (`u32::MAX`: not refined).

use std::collections::BTreeMap;

use crate::config::diffbragg::ParamKind;
use crate::config::EnsHopperConfig;
use crate::error::{Error, Result};
use crate::kernel::{NcellsParam, Param};
use crate::refine::lbfgsb::Bound;
use crate::refine::params::{names, Parameter, ParameterSet};
use crate::symmetry::Miller;

use super::shots::ShotInput;

/// Upper bound of every scale coordinate (the reference's).
pub const FHKL_X_MAX: f64 = 8.0;

/// What one refined per-shot parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShotParamKind {
    G,
    Rot(usize),
    Nabc(usize),
    Ucell(usize),
}

impl ShotParamKind {
    /// The kernel derivative it needs (G is applied outside the kernel).
    pub fn kernel_param(self) -> Option<Param> {
        match self {
            ShotParamKind::G => None,
            ShotParamKind::Rot(0) => Some(Param::RotX),
            ShotParamKind::Rot(1) => Some(Param::RotY),
            ShotParamKind::Rot(_) => Some(Param::RotZ),
            ShotParamKind::Nabc(0) => Some(Param::Ncells(NcellsParam::Na)),
            ShotParamKind::Nabc(1) => Some(Param::Ncells(NcellsParam::Nb)),
            ShotParamKind::Nabc(_) => Some(Param::Ncells(NcellsParam::Nc)),
            ShotParamKind::Ucell(i) => Some(Param::Ucell(i)),
        }
    }
}

/// One shot's parameters: every per-shot quantity stage 2 knows, refined or fixed.
#[derive(Clone, Debug)]
pub struct ShotParams {
    pub set: ParameterSet,
    /// The refined ones, in x order.
    pub kinds: Vec<ShotParamKind>,
    n_ucell: usize,
}

/// Values of one shot's parameters at some x.
#[derive(Clone, Debug, PartialEq)]
pub struct ShotValues {
    pub g: f64,
    pub rot: [f64; 3],
    pub nabc: [f64; 3],
    pub ucell: Vec<f64>,
    /// ∂value/∂x of each refined parameter, in x order.
    pub dvalue_dx: Vec<f64>,
}

impl ShotParams {
    /// The set for `shot` under the phil's fix/types/sigmas/mins/maxs. Starting
    /// values are the shot's stage-1 results (rotations start at 0).
    pub fn new(cfg: &EnsHopperConfig, shot: &ShotInput) -> Result<ShotParams> {
        let mut set = ParameterSet::new();
        let mut kinds = Vec::new();
        let mut push = |p: Parameter, kind: ShotParamKind| -> Result<()> {
            if p.is_refined() {
                kinds.push(kind);
            }
            set.push(p).map(|_| ())
        };
        let name = |n: String| format!("shot {}: {n}", shot.shot_id);
        let wrap = |e: Error, n: &str| Error::param(name(n.to_string()), e.to_string());
        for i in 0..3 {
            let n = names::rot(i);
            let p = if cfg.fix.rot_xyz {
                Parameter::fixed(&n, 0.0)
            } else {
                Parameter::ranged(&n, 0.0, cfg.mins.rot_xyz[i], cfg.maxs.rot_xyz[i], cfg.sigmas.rot_xyz[i])
            };
            push(p.map_err(|e| wrap(e, &n))?, ShotParamKind::Rot(i))?;
        }
        let g0 = shot.row.spot_scales;
        let p = if cfg.fix.g {
            Parameter::fixed(names::G, g0)
        } else {
            match cfg.types.g {
                ParamKind::Positive => Parameter::positive(names::G, g0, cfg.sigmas.g),
                ParamKind::Ranged => Parameter::ranged(names::G, g0, cfg.mins.g, cfg.maxs.g, cfg.sigmas.g),
            }
        };
        push(p.map_err(|e| wrap(e, names::G))?, ShotParamKind::G)?;
        for i in 0..3 {
            let n = names::nabc(i);
            let v0 = shot.ncells[i];
            let p = if cfg.fix.nabc {
                Parameter::fixed(&n, v0)
            } else {
                match cfg.types.nabc {
                    ParamKind::Positive => Parameter::positive(&n, v0, cfg.sigmas.nabc[i]),
                    ParamKind::Ranged => {
                        Parameter::ranged(&n, v0, cfg.mins.nabc[i], cfg.maxs.nabc[i], cfg.sigmas.nabc[i])
                    }
                }
            };
            push(p.map_err(|e| wrap(e, &n))?, ShotParamKind::Nabc(i))?;
        }
        let sys = shot.ucell.system;
        let n_ucell = sys.n_params();
        for i in 0..n_ucell {
            let n = names::ucell(i);
            let v0 = shot.ucell.values[i];
            let p = if cfg.fix.ucell {
                Parameter::fixed(&n, v0)
            } else {
                let (lo, hi) = if sys.is_angle(i) {
                    let d = cfg.ucell_ang_abs.to_radians();
                    (v0 - d, v0 + d)
                } else {
                    let d = v0 * cfg.ucell_edge_perc / 100.0;
                    (v0 - d, v0 + d)
                };
                let sigma = cfg.sigmas.ucell.get(i).copied().unwrap_or(1.0);
                Parameter::ranged(&n, v0, lo, hi, sigma)
            };
            push(p.map_err(|e| wrap(e, &n))?, ShotParamKind::Ucell(i))?;
        }
        Ok(ShotParams { set, kinds, n_ucell })
    }

    pub fn n_free(&self) -> usize {
        self.kinds.len()
    }

    /// Values at this shot's block of x.
    pub fn values(&self, x_block: &[f64]) -> ShotValues {
        let v = self.set.values(x_block);
        let at = |n: &str| v[self.set.index(n).expect("defined in new")];
        ShotValues {
            g: at(names::G),
            rot: std::array::from_fn(|i| at(&names::rot(i))),
            nabc: std::array::from_fn(|i| at(&names::nabc(i))),
            ucell: (0..self.n_ucell).map(|i| at(&names::ucell(i))).collect(),
            dvalue_dx: self.set.dvalue_dx(x_block),
        }
    }

    /// The kernel derivatives needed (refined parameters other than G), in x order.
    pub fn kernel_params(&self) -> Vec<Param> {
        self.kinds.iter().filter_map(|k| k.kernel_param()).collect()
    }
}

/// One observed (ASU index, channel) pair, with its ROI count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Observation {
    /// Anomalous-ASU Miller index (conventional setting).
    pub hkl: Miller,
    pub channel: u32,
    pub count: u32,
}

/// The refined structure-factor scales and how they map onto the kernel's slots.
#[derive(Clone, Debug, PartialEq)]
pub struct FhklLayout {
    pub n_chan: usize,
    /// ASU indices with a kernel id, in id order (sorted).
    pub asu_hkl: Vec<Miller>,
    pub centric: Vec<bool>,
    /// Resolution of each ASU index, Å.
    pub d: Vec<f64>,
    /// Starting intensity |F⁰|² of each ASU index.
    pub i_init: Vec<f64>,
    /// ROI count per slot `a + c·n_asu`.
    pub multiplicity: Vec<u32>,
    /// Parameter per slot `a + c·n_asu` (`u32::MAX`: fixed at 1).
    pub key: Vec<u32>,
    /// Per parameter: its ASU id and the channels it covers.
    pub params: Vec<(u32, Vec<u32>)>,
}

impl FhklLayout {
    /// Build from the observations of every rank (merged, any order),
    /// keeping pairs with at least `min_multiplicity` ROIs. `centric`, `d`
    /// and `i_init` give each index's properties.
    pub fn new(
        obs: &[Observation],
        n_chan: usize,
        min_multiplicity: u32,
        centric: impl Fn(&Miller) -> bool,
        d: impl Fn(&Miller) -> f64,
        i_init: impl Fn(&Miller) -> f64,
    ) -> Result<FhklLayout> {
        let mut counts: BTreeMap<(Miller, u32), u32> = BTreeMap::new();
        for o in obs {
            if o.channel as usize >= n_chan {
                return Err(Error::msg(format!("observation in channel {} of {n_chan}", o.channel)));
            }
            *counts.entry((o.hkl, o.channel)).or_default() += o.count;
        }
        let kept: BTreeMap<(Miller, u32), u32> =
            counts.iter().filter(|(_, &n)| n >= min_multiplicity.max(1)).map(|(k, &n)| (*k, n)).collect();
        let mut asu_hkl: Vec<Miller> = kept.keys().map(|k| k.0).collect();
        asu_hkl.dedup();
        let n_asu = asu_hkl.len();
        let id: BTreeMap<Miller, usize> = asu_hkl.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        let centric: Vec<bool> = asu_hkl.iter().map(&centric).collect();
        let mut multiplicity = vec![0u32; n_asu * n_chan];
        for (&(h, c), &n) in &counts {
            if let Some(&a) = id.get(&h) {
                multiplicity[a + c as usize * n_asu] = n;
            }
        }
        let mut key = vec![u32::MAX; n_asu * n_chan];
        let mut params: Vec<(u32, Vec<u32>)> = Vec::new();
        for (a, h) in asu_hkl.iter().enumerate() {
            let chans: Vec<u32> = (0..n_chan as u32).filter(|&c| kept.contains_key(&(*h, c))).collect();
            if centric[a] {
                let p = params.len() as u32;
                // One scale for every channel (observed or not): centric
                // intensities do not depend on the energy.
                for c in 0..n_chan {
                    key[a + c * n_asu] = p;
                }
                params.push((a as u32, chans));
            } else {
                for c in chans {
                    key[a + c as usize * n_asu] = params.len() as u32;
                    params.push((a as u32, vec![c]));
                }
            }
        }
        let d: Vec<f64> = asu_hkl.iter().map(d).collect();
        let i_init: Vec<f64> = asu_hkl.iter().map(i_init).collect();
        if let Some(a) = i_init.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::msg(format!(
                "structure factor {:?}: starting intensity {} must be > 0 to be refined",
                asu_hkl[a], i_init[a]
            )));
        }
        Ok(FhklLayout { n_chan, asu_hkl, centric, d, i_init, multiplicity, key, params })
    }

    pub fn n_asu(&self) -> usize {
        self.asu_hkl.len()
    }

    pub fn n_params(&self) -> usize {
        self.params.len()
    }

    /// Kernel scales `s[a + c·n_asu]` from the scale coordinates.
    pub fn kernel_scales(&self, x_fhkl: &[f64], sigma: f64) -> Vec<f64> {
        self.key
            .iter()
            .map(|&p| if p == u32::MAX { 1.0 } else { scale_of(x_fhkl[p as usize], sigma) })
            .collect()
    }

    /// Fold a per-slot vector (gradient or curvature) onto the parameters.
    pub fn fold(&self, per_slot: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.n_params()];
        for (k, &p) in self.key.iter().enumerate() {
            if p != u32::MAX {
                out[p as usize] += per_slot[k];
            }
        }
        out
    }

    /// The ROI count of parameter p (summed over its channels).
    pub fn param_multiplicity(&self, p: usize) -> u32 {
        let (a, chans) = &self.params[p];
        chans.iter().map(|&c| self.multiplicity[*a as usize + c as usize * self.n_asu()]).sum()
    }
}

/// `s = exp(σ(x − 1))`.
#[inline]
pub fn scale_of(x: f64, sigma: f64) -> f64 {
    (sigma * (x - 1.0)).exp()
}

/// The bounds of x: per-shot coordinates free, scale coordinates ≤ [`FHKL_X_MAX`].
pub fn bounds(n_shot_coords: usize, n_fhkl: usize) -> Vec<Bound> {
    let mut b = vec![Bound::FREE; n_shot_coords];
    b.extend(std::iter::repeat_n(Bound::upper(FHKL_X_MAX), n_fhkl));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_ties_centrics_and_drops_rare_pairs() {
        let obs = [
            Observation { hkl: [1, 0, 0], channel: 0, count: 3 },
            Observation { hkl: [1, 0, 0], channel: 1, count: 2 },
            Observation { hkl: [2, 1, 3], channel: 0, count: 1 },
            Observation { hkl: [2, 1, 3], channel: 1, count: 4 },
            Observation { hkl: [-2, -1, -3], channel: 1, count: 1 },
            Observation { hkl: [2, 1, 3], channel: 1, count: 1 },
        ];
        let l = FhklLayout::new(&obs, 2, 2, |h| h[2] == 0, |_| 3.0, |_| 4.0).unwrap();
        // [-2,-1,-3] has 1 ROI < 2: dropped; [2,1,3] channel 0 also dropped.
        assert_eq!(l.asu_hkl, vec![[1, 0, 0], [2, 1, 3]]);
        assert_eq!(l.n_params(), 2);
        // Centric [1,0,0]: one parameter for both channels.
        assert_eq!(l.key, vec![0, u32::MAX, 0, 1]);
        assert_eq!(l.multiplicity, vec![3, 1, 2, 5]);
        assert_eq!(l.param_multiplicity(0), 5);
        let s = l.kernel_scales(&[1.5, 0.5], 2.0);
        assert_eq!(s, vec![1f64.exp(), 1.0, 1f64.exp(), (-1f64).exp()]);
        assert_eq!(l.fold(&[1.0, 2.0, 3.0, 4.0]), vec![4.0, 4.0]);
        assert!(FhklLayout::new(&obs, 2, 1, |_| false, |_| 3.0, |_| 0.0).is_err());
        let b = bounds(2, 3);
        assert_eq!(b[1], Bound::FREE);
        assert_eq!(b[4], Bound::upper(8.0));
    }
}
