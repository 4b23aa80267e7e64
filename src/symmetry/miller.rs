//! Miller-index sets: the unique reflections of a cell and group, expansion
//! to P1 with Bijvoet mates, centric flags, resolution.
//!
//! # Conventions
//! * Resolution uses `1/d² = hᵀ·G*·h` with the reciprocal metric `G*` of the
//!   cell (Å⁻²); a reflection is inside `d_min` when `1/d² ≤ 1/d_min²`.
//! * "Anomalous" lists keep Friedel mates apart: an acentric ASU reflection h
//!   is followed by its mate −h (which lies in the "minus" ASU); centric
//!   reflections appear once.
//! * `F(000)` is never listed; systematically absent reflections are left out.

use super::asu::ReciprocalAsu;
use super::op::Miller;
use super::spacegroup::SpaceGroup;
use crate::crystal::UnitCell;
use crate::error::{Error, Result};

/// 1/d² of Miller indices for one cell, with the metric computed once.
#[derive(Clone, Copy, Debug)]
pub struct Resolution {
    g: [[f64; 3]; 3],
}

impl Resolution {
    pub fn new(cell: &UnitCell) -> Result<Resolution> {
        if !cell.is_valid() {
            return Err(Error::msg(format!("invalid unit cell {:?}", cell.to_array())));
        }
        let m = cell.reciprocal_metric();
        Ok(Resolution {
            g: [
                [m[(0, 0)], m[(0, 1)], m[(0, 2)]],
                [m[(1, 0)], m[(1, 1)], m[(1, 2)]],
                [m[(2, 0)], m[(2, 1)], m[(2, 2)]],
            ],
        })
    }

    /// 1/d², Å⁻².
    #[inline]
    pub fn d_star_sq(&self, h: &Miller) -> f64 {
        let v = [h[0] as f64, h[1] as f64, h[2] as f64];
        let mut s = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                s += v[i] * self.g[i][j] * v[j];
            }
        }
        s
    }

    /// d-spacing, Å (infinite for 000).
    pub fn d(&self, h: &Miller) -> f64 {
        1.0 / self.d_star_sq(h).sqrt()
    }
}

/// Every symmetry-unique, non-absent reflection with `d ≥ d_min`, in the CCP4
/// ASU, in h-major order (h, then k, then l ascending). With `anomalous`, each
/// acentric reflection is followed by its Friedel mate −h.
pub fn unique_reflections(
    cell: &UnitCell,
    sg: &SpaceGroup,
    d_min: f64,
    anomalous: bool,
) -> Result<Vec<Miller>> {
    if !(d_min.is_finite() && d_min > 0.0) {
        return Err(Error::param("d_min", format!("must be a positive number of Å, got {d_min}")));
    }
    let res = Resolution::new(cell)?;
    let limit = 1.0 / (d_min * d_min);
    // |h| = |a·q| ≤ a/d_min bounds the box
    let lim = [cell.a / d_min, cell.b / d_min, cell.c / d_min].map(|v| v.floor() as i32);
    let cells: f64 = lim.iter().map(|&v| 2.0 * v as f64 + 1.0).product();
    if cells > 2.0e9 {
        return Err(Error::param("d_min", format!("{d_min} Å gives too many reflections for this cell")));
    }
    let asu = ReciprocalAsu::new(sg);
    let mut out = Vec::new();
    for h in -lim[0]..=lim[0] {
        for k in -lim[1]..=lim[1] {
            for l in -lim[2]..=lim[2] {
                let hkl = [h, k, l];
                if hkl == [0, 0, 0] || !asu.is_in(&hkl) {
                    continue;
                }
                if res.d_star_sq(&hkl) > limit || sg.is_sys_absent(&hkl) {
                    continue;
                }
                out.push(hkl);
                if anomalous && !sg.is_centric(&hkl) {
                    out.push([-h, -k, -l]);
                }
            }
        }
    }
    Ok(out)
}

/// Expand reflections to P1: for each input index i, every distinct `h·R` over
/// the group's primitive operations, plus (unless `anomalous`) their Friedel
/// mates `−h·R` (the Bijvoet mates of non-anomalous data). Returns
/// `(index, i)` pairs, grouped by i in input order.
pub fn expand_to_p1(sg: &SpaceGroup, hkls: &[Miller], anomalous: bool) -> Vec<(Miller, usize)> {
    let ops = &sg.ops().sym_ops;
    let mut out = Vec::with_capacity(hkls.len() * ops.len() * if anomalous { 1 } else { 2 });
    let mut seen: Vec<Miller> = Vec::with_capacity(2 * ops.len());
    for (i, h) in hkls.iter().enumerate() {
        seen.clear();
        for op in ops {
            let e = op.apply_to_hkl(h);
            if !seen.contains(&e) {
                seen.push(e);
            }
        }
        if !anomalous {
            let n = seen.len();
            for j in 0..n {
                let m = seen[j].map(|v| -v);
                if !seen.contains(&m) {
                    seen.push(m);
                }
            }
        }
        out.extend(seen.iter().map(|&e| (e, i)));
    }
    out
}

/// `is_centric` for each index.
pub fn centric_flags(sg: &SpaceGroup, hkls: &[Miller]) -> Vec<bool> {
    hkls.iter().map(|h| sg.is_centric(h)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_expansion_counts() {
        let sg = SpaceGroup::from_hm("P 43 21 2").unwrap();
        // general position: 8 equivalents and 8 mates
        let v = expand_to_p1(&sg, &[[1, 2, 3]], false);
        assert_eq!(v.len(), 16);
        assert_eq!(expand_to_p1(&sg, &[[1, 2, 3]], true).len(), 8);
        // centric hk0: mates already among the equivalents
        assert_eq!(expand_to_p1(&sg, &[[1, 2, 0]], false).len(), 8);
        // 00l: 2 distinct, with mates
        assert_eq!(expand_to_p1(&sg, &[[0, 0, 4]], false).len(), 2);
    }

    #[test]
    fn unique_set_is_complete_and_unique() {
        let cell = UnitCell::new(40.0, 40.0, 60.0, 90.0, 90.0, 90.0);
        let sg = SpaceGroup::from_hm("P 43 21 2").unwrap();
        let asu = unique_reflections(&cell, &sg, 5.0, false).unwrap();
        let p1 = expand_to_p1(&sg, &asu, false);
        let mut all: Vec<Miller> = p1.iter().map(|x| x.0).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(n, all.len(), "equivalents of distinct ASU reflections overlap");
        // every non-absent P1 reflection in range is reached
        let res = Resolution::new(&cell).unwrap();
        let mut count = 0;
        for h in -8..=8 {
            for k in -8..=8 {
                for l in -12..=12 {
                    let x = [h, k, l];
                    if x != [0, 0, 0] && res.d_star_sq(&x) <= 1.0 / 25.0 && !sg.is_sys_absent(&x) {
                        count += 1;
                        assert!(all.binary_search(&x).is_ok(), "{x:?}");
                    }
                }
            }
        }
        assert_eq!(count, all.len());
        let anom = unique_reflections(&cell, &sg, 5.0, true).unwrap();
        let acentric = asu.iter().filter(|h| !sg.is_centric(h)).count();
        assert_eq!(anom.len(), asu.len() + acentric);
        assert!(unique_reflections(&cell, &sg, 0.0, false).is_err());
    }
}
