//! Structure-factor table: |F|² on a dense P1 grid, with an ASU id per grid point.
//!
//! * The grid is the bounding box of the supplied indices, extended to contain
//!   (0,0,0); it is h-major (`idx = ((h−h_min)·n_k + (k−k_min))·n_l + (l−l_min)`).
//! * Anomalous: F(h) and F(−h) are separate entries. [`FhklTable::new`] can
//!   fill missing Friedel mates with F(h) (cctbx `generate_bijvoet_mates`).
//! * **Absent reflections.** Every index not in the supplied array, inside or
//!   outside the box, gets `default_F`. \[TRAP\] decided: in the reference hopper
//!   flow in-box absent reflections are 0 and only out-of-box lookups get
//!   `default_F` (fwd-model §2.5); we use `default_F` everywhere, which is also
//!   what nanoBragg's standalone program does. `F(0,0,0) = 0` always.
//! * ASU ids are supplied by the caller (a closure from the P1 index; the
//!   symmetry module knows the space group) and index the per-(ASU, channel)
//!   scale factors `s[a + c·n_asu]` that multiply |F|². Grid points without an
//!   id, and every out-of-box lookup, fall in a "no ASU" bucket whose scale is 1.
//! * Stored: |F|² (f64) and the id (u32) on the box grown by one layer on
//!   every side; that border holds `default_F²` and the no-ASU id. A lookup
//!   clamps each index into the grown box, so it never branches: anything
//!   outside the box lands on the border.

use crate::error::{Error, Result};
use std::collections::HashMap;

/// Largest grid accepted (points): 2²⁸ ≈ 2.7e8, about 3 GB. Guards against corrupt input.
pub const MAX_GRID_POINTS: usize = 1 << 28;

#[derive(Clone, Debug)]
pub struct FhklTable {
    min: [i32; 3],
    max: [i32; 3],
    /// Box dimensions (without the border).
    n: [usize; 3],
    /// |F|² on the bordered grid, dims `n + 2`.
    f2: Vec<f64>,
    /// ASU id on the bordered grid; `n_asu` means "no ASU".
    asu: Vec<u32>,
    n_asu: usize,
    default_f: f64,
}

impl FhklTable {
    /// Build from P1 indices and amplitudes. With `fill_friedel_mates`, a
    /// missing −h gets F(h). A repeated index with a different F is an error.
    pub fn new(hkl: &[[i32; 3]], f: &[f64], default_f: f64, fill_friedel_mates: bool) -> Result<FhklTable> {
        if hkl.len() != f.len() {
            return Err(Error::msg(format!(
                "structure factors: {} indices but {} amplitudes",
                hkl.len(),
                f.len()
            )));
        }
        if !(default_f.is_finite() && default_f >= 0.0) {
            return Err(Error::param("default_F", format!("{default_f} must be finite and ≥ 0")));
        }
        let mut map: HashMap<[i32; 3], f64> = HashMap::with_capacity(hkl.len() * 2);
        for (i, (&h, &fv)) in hkl.iter().zip(f).enumerate() {
            if !(fv.is_finite() && fv >= 0.0) {
                return Err(Error::msg(format!(
                    "structure factor {i} {h:?}: amplitude {fv} must be finite and ≥ 0"
                )));
            }
            if h.iter().any(|&x| x.unsigned_abs() > (1 << 20)) {
                return Err(Error::msg(format!("structure factor {i}: index {h:?} is out of range")));
            }
            if let Some(&old) = map.get(&h) {
                if old != fv {
                    return Err(Error::msg(format!("structure factor {h:?} given twice ({old} and {fv})")));
                }
            }
            map.insert(h, fv);
        }
        if fill_friedel_mates {
            let mates: Vec<([i32; 3], f64)> = map
                .iter()
                .map(|(h, &fv)| ([-h[0], -h[1], -h[2]], fv))
                .filter(|(m, _)| !map.contains_key(m))
                .collect();
            map.extend(mates);
        }
        let mut min = [0i32; 3];
        let mut max = [0i32; 3];
        for h in map.keys() {
            for k in 0..3 {
                min[k] = min[k].min(h[k]);
                max[k] = max[k].max(h[k]);
            }
        }
        let n = [0, 1, 2].map(|k| (max[k] - min[k]) as usize + 1);
        let total = (n[0] + 2)
            .checked_mul(n[1] + 2)
            .and_then(|x| x.checked_mul(n[2] + 2))
            .filter(|&x| x <= MAX_GRID_POINTS);
        let Some(total) = total else {
            return Err(Error::msg(format!(
                "structure factors: index box {min:?}..{max:?} exceeds {MAX_GRID_POINTS} grid points"
            )));
        };
        let mut t = FhklTable {
            min,
            max,
            n,
            f2: vec![default_f * default_f; total],
            asu: vec![0; total],
            n_asu: 0,
            default_f,
        };
        for (h, fv) in &map {
            let i = t.store_index(*h);
            t.f2[i] = fv * fv;
        }
        let i0 = t.store_index([0, 0, 0]);
        t.f2[i0] = 0.0;
        Ok(t)
    }

    /// Index of an in-box `h` in the bordered storage.
    fn store_index(&self, h: [i32; 3]) -> usize {
        let (nk, nl) = (self.n[1] + 2, self.n[2] + 2);
        (((h[0] - self.min[0] + 1) as usize) * nk + (h[1] - self.min[1] + 1) as usize) * nl
            + (h[2] - self.min[2] + 1) as usize
    }

    /// Storage slot of any `h` (clamped onto the border when outside the box).
    fn clamped_slot(&self, h: [i32; 3]) -> usize {
        let c: [i32; 3] = std::array::from_fn(|k| h[k].clamp(self.min[k] - 1, self.max[k] + 1));
        let (nk, nl) = (self.n[1] + 2, self.n[2] + 2);
        (((c[0] - self.min[0] + 1) as usize) * nk + (c[1] - self.min[1] + 1) as usize) * nl
            + (c[2] - self.min[2] + 1) as usize
    }

    /// Assign ASU ids from the P1 index of each grid point (`None`: no ASU, scale 1).
    /// Ids must be dense-ish: `n_asu` becomes max id + 1.
    pub fn set_asu_ids(&mut self, mut id_of: impl FnMut([i32; 3]) -> Option<u32>) -> Result<()> {
        let mut ids = vec![u32::MAX; self.f2.len()];
        let mut max_id: Option<u32> = None;
        for g in 0..self.n_grid() {
            let h = self.hkl_of(g);
            if let Some(a) = id_of(h) {
                if a == u32::MAX {
                    return Err(Error::msg("ASU id u32::MAX is reserved"));
                }
                ids[self.store_index(h)] = a;
                max_id = Some(max_id.map_or(a, |m| m.max(a)));
            }
        }
        let n_asu = max_id.map_or(0, |m| m as usize + 1);
        if n_asu > (1 << 30) {
            return Err(Error::msg(format!("{n_asu} ASU ids is too many")));
        }
        self.n_asu = n_asu;
        self.asu = ids.into_iter().map(|a| if a == u32::MAX { n_asu as u32 } else { a }).collect();
        Ok(())
    }

    /// Assign ASU ids from a vector over grid points (h-major order, [`Self::hkl_of`]);
    /// `u32::MAX` means "no ASU".
    pub fn set_asu_id_vec(&mut self, ids: &[u32]) -> Result<()> {
        if ids.len() != self.n_grid() {
            return Err(Error::msg(format!(
                "ASU ids: {} values for {} grid points",
                ids.len(),
                self.n_grid()
            )));
        }
        let (min, n) = (self.min, self.n);
        self.set_asu_ids(|h| {
            let a = ids[self_index(h, &min, &n)];
            (a != u32::MAX).then_some(a)
        })
    }

    pub fn n_grid(&self) -> usize {
        self.n[0] * self.n[1] * self.n[2]
    }
    pub fn n_asu(&self) -> usize {
        self.n_asu
    }
    pub fn default_f(&self) -> f64 {
        self.default_f
    }
    pub fn min_index(&self) -> [i32; 3] {
        self.min
    }
    pub fn max_index(&self) -> [i32; 3] {
        self.max
    }
    pub fn dims(&self) -> [usize; 3] {
        self.n
    }

    /// Grid index of `h` (h-major over the box, no border), `None` outside the box.
    pub fn grid_index(&self, h: [i32; 3]) -> Option<usize> {
        if (0..3).all(|k| h[k] >= self.min[k] && h[k] <= self.max[k]) {
            Some(self_index(h, &self.min, &self.n))
        } else {
            None
        }
    }

    /// The Miller index of grid point `g`.
    pub fn hkl_of(&self, g: usize) -> [i32; 3] {
        let l = g % self.n[2];
        let k = (g / self.n[2]) % self.n[1];
        let h = g / (self.n[2] * self.n[1]);
        [h as i32 + self.min[0], k as i32 + self.min[1], l as i32 + self.min[2]]
    }

    /// |F(h)|² (default_F² when absent, 0 at the origin).
    pub fn f2(&self, h: [i32; 3]) -> f64 {
        self.f2[self.clamped_slot(h)]
    }

    /// ASU id of `h` (`n_asu` = none).
    pub fn asu_id(&self, h: [i32; 3]) -> u32 {
        self.asu[self.clamped_slot(h)]
    }

    /// The lookup the kernel uses: the storage slot of a nearest lattice point
    /// given as doubles (already rounded). Each index is clamped into the
    /// bordered box, so outside points land on a border cell (default_F).
    #[inline(always)]
    pub fn slot(&self, lut: &SlotLut, h0: f64, k0: f64, l0: f64) -> usize {
        lut.slot_f(h0, k0, l0) as usize
    }

    /// Box bounds as doubles for [`Self::slot`].
    pub fn slot_lut(&self) -> SlotLut {
        SlotLut {
            lo: self.min.map(|x| x as f64 - 1.0),
            hi: self.max.map(|x| x as f64 + 1.0),
            nk: (self.n[1] + 2) as f64,
            nl: (self.n[2] + 2) as f64,
        }
    }

    /// |F|² by slot (see [`Self::slot`]).
    #[inline(always)]
    pub fn f2_slot(&self, s: usize) -> f64 {
        self.f2[s]
    }

    /// ASU id by slot (`n_asu` = none).
    #[inline(always)]
    pub fn asu_slot(&self, s: usize) -> u32 {
        self.asu[s]
    }

    pub(crate) fn f2_slice(&self) -> &[f64] {
        &self.f2
    }
    pub(crate) fn asu_slice(&self) -> &[u32] {
        &self.asu
    }
}

/// Bordered-box bounds in doubles, for slot computation in the step loop.
#[derive(Clone, Copy, Debug)]
pub struct SlotLut {
    pub lo: [f64; 3],
    pub hi: [f64; 3],
    pub nk: f64,
    pub nl: f64,
}

impl SlotLut {
    /// The storage slot as an exact integer-valued double (branch-free).
    #[inline(always)]
    pub fn slot_f(&self, h0: f64, k0: f64, l0: f64) -> f64 {
        let a = h0.max(self.lo[0]).min(self.hi[0]) - self.lo[0];
        let b = k0.max(self.lo[1]).min(self.hi[1]) - self.lo[1];
        let c = l0.max(self.lo[2]).min(self.hi[2]) - self.lo[2];
        (a * self.nk + b) * self.nl + c
    }
}

fn self_index(h: [i32; 3], min: &[i32; 3], n: &[usize; 3]) -> usize {
    (((h[0] - min[0]) as usize) * n[1] + (h[1] - min[1]) as usize) * n[2] + (h[2] - min[2]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_defaults_and_friedel() {
        let hkl = [[1, 2, 3], [-1, -2, -3], [2, 0, 0], [0, 0, 0]];
        let f = [10.0, 11.0, 5.0, 99.0];
        let t = FhklTable::new(&hkl, &f, 2.0, true).unwrap();
        assert_eq!(t.f2([1, 2, 3]), 100.0);
        assert_eq!(t.f2([-1, -2, -3]), 121.0); // anomalous pair kept distinct
        assert_eq!(t.f2([-2, 0, 0]), 25.0); // filled mate
        assert_eq!(t.f2([0, 0, 0]), 0.0); // F000 forced to 0
        assert_eq!(t.f2([1, 1, 1]), 4.0); // in-box absent → default_F
        assert_eq!(t.f2([50, 0, 0]), 4.0); // out-of-box → default_F
        let no_mates = FhklTable::new(&hkl, &f, 2.0, false).unwrap();
        assert_eq!(no_mates.f2([-2, 0, 0]), 4.0);
        // slot() agrees with f2() everywhere in and around the box.
        let lut = t.slot_lut();
        for h in -4..=4 {
            for k in -4..=4 {
                for l in -5..=5 {
                    let s = t.slot(&lut, h as f64, k as f64, l as f64);
                    assert_eq!(t.f2_slot(s), t.f2([h, k, l]));
                    if let Some(g) = t.grid_index([h, k, l]) {
                        assert_eq!(t.hkl_of(g), [h, k, l]);
                    }
                }
            }
        }
    }

    #[test]
    fn asu_ids() {
        let hkl = [[1, 0, 0], [-1, 0, 0], [0, 1, 0]];
        let mut t = FhklTable::new(&hkl, &[1.0, 2.0, 3.0], 0.0, false).unwrap();
        t.set_asu_ids(
            |h| if h == [0, 0, 0] { None } else { Some((h[0] + 1) as u32 * 3 + (h[1] + 1) as u32) },
        )
        .unwrap();
        assert_eq!(t.n_asu(), 9);
        assert_eq!(t.asu_id([1, 0, 0]), 7);
        assert_eq!(t.asu_id([0, 0, 0]), 9);
        assert_eq!(t.asu_id([7, 7, 7]), 9);
        let ids: Vec<u32> = (0..t.n_grid() as u32).collect();
        t.set_asu_id_vec(&ids).unwrap();
        assert_eq!(t.asu_id(t.hkl_of(5)), 5);
        assert!(t.set_asu_id_vec(&ids[1..]).is_err());
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(FhklTable::new(&[[1, 0, 0]], &[1.0, 2.0], 0.0, false).is_err());
        assert!(FhklTable::new(&[[1, 0, 0]], &[f64::NAN], 0.0, false).is_err());
        assert!(FhklTable::new(&[[1, 0, 0]], &[1.0], -1.0, false).is_err());
        assert!(FhklTable::new(&[[1, 0, 0], [1, 0, 0]], &[1.0, 2.0], 0.0, false).is_err());
        let e =
            FhklTable::new(&[[1000000, 0, 0], [-1000000, 1000, 1000]], &[1.0, 1.0], 0.0, false).unwrap_err();
        assert!(e.to_string().contains("grid points"), "{e}");
    }
}
