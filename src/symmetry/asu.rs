//! The reciprocal-space asymmetric unit in the CCP4 convention.
//!
//! # Conventions
//! * One of ten CCP4 predicates is chosen from the Laue class (and, for −3m, from
//!   whether the 2-folds lie along a or along a+b: `P 3 1 2`-type vs `P 3 2 1`-type).
//!   The predicate is written for the reference setting; in another setting the
//!   index is first taken to the reference basis, `h_ref = h·B` (B = the
//!   setting's basis operation). This is the CCP4/gemmi `ReciprocalAsu` with
//!   the default `tnt = false`; cctbx picks a different ASU for a few groups.
//! * [`ReciprocalAsu::to_asu`] returns the MTZ ISYM code: operations are tried
//!   in the group's order (see [`super::group`]); for the n-th operation
//!   (1-based) ISYM = 2n−1 when `h·R` is in the ASU (Friedel +) and 2n when
//!   `−h·R` is (Friedel −).
//! * [`ReciprocalAsu::to_asu_anomalous`] gives `plus = true` for centric
//!   reflections even when a minus mapping is met first.

use super::op::{Miller, DEN};
use super::spacegroup::{PointGroup, SpaceGroup};

/// The CCP4 reciprocal ASU of one space group.
#[derive(Clone, Debug)]
pub struct ReciprocalAsu {
    rule: u8,
    /// `B` (units of 1/DEN) for a non-reference setting.
    to_reference: Option<[[i32; 3]; 3]>,
    /// Integer rotation parts of the primitive operations, in group order.
    rots: Vec<[[i32; 3]; 3]>,
}

const CONDITIONS: [&str; 10] = [
    "l>0 or (l=0 and (h>0 or (h=0 and k>=0)))",
    "k>=0 and (l>0 or (l=0 and h>=0))",
    "h>=0 and k>=0 and l>=0",
    "l>=0 and ((h>=0 and k>0) or (h=0 and k=0))",
    "h>=k and k>=0 and l>=0",
    "(h>=0 and k>0) or (h=0 and k=0 and l>=0)",
    "h>=k and k>=0 and (k>0 or l>=0)",
    "h>=k and k>=0 and (h>k or l>=0)",
    "h>=0 and ((l>=h and k>h) or (l=h and k=h))",
    "k>=l and l>=h and h>=0",
];

/// The CCP4 ASU predicate for space-group type `number`.
fn rule_for(sg: &SpaceGroup) -> u8 {
    use PointGroup::*;
    match sg.laue_class() {
        Ci => 0,
        C2h => 1,
        D2h => 2,
        C4h | C6h => 3,
        D4h | D6h => 4,
        C3i => 5,
        D3d => {
            // "P 3 1 2", "P 31 1 2", "P 3 1 m", "P -3 1 c", ...: 2-folds along a+b
            let r = sg.reference();
            let hm = r.setting().map(|s| s.hm).unwrap_or("");
            if hm.split(' ').nth(2) == Some("1") {
                6
            } else {
                7
            }
        }
        Th => 8,
        _ => 9,
    }
}

#[inline]
fn in_rule(rule: u8, h: i32, k: i32, l: i32) -> bool {
    match rule {
        0 => l > 0 || (l == 0 && (h > 0 || (h == 0 && k >= 0))),
        1 => k >= 0 && (l > 0 || (l == 0 && h >= 0)),
        2 => h >= 0 && k >= 0 && l >= 0,
        3 => l >= 0 && ((h >= 0 && k > 0) || (h == 0 && k == 0)),
        4 => h >= k && k >= 0 && l >= 0,
        5 => (h >= 0 && k > 0) || (h == 0 && k == 0 && l >= 0),
        6 => h >= k && k >= 0 && (k > 0 || l >= 0),
        7 => h >= k && k >= 0 && (h > k || l >= 0),
        8 => h >= 0 && ((l >= h && k > h) || (l == h && k == h)),
        _ => k >= l && l >= h && h >= 0,
    }
}

#[inline]
fn times_rot(h: &Miller, r: &[[i32; 3]; 3]) -> Miller {
    [
        h[0] * r[0][0] + h[1] * r[1][0] + h[2] * r[2][0],
        h[0] * r[0][1] + h[1] * r[1][1] + h[2] * r[2][1],
        h[0] * r[0][2] + h[1] * r[1][2] + h[2] * r[2][2],
    ]
}

impl ReciprocalAsu {
    pub fn new(sg: &SpaceGroup) -> ReciprocalAsu {
        let b = sg.basisop();
        ReciprocalAsu {
            rule: rule_for(sg),
            // the predicates are homogeneous, so B may stay in units of 1/DEN
            to_reference: if b.rot == super::op::Op::IDENTITY.rot { None } else { Some(b.rot) },
            rots: sg.ops().sym_ops.iter().map(|o| o.rot.map(|r| r.map(|v| v / DEN))).collect(),
        }
    }

    /// The predicate in words, for the reference setting.
    pub fn condition(&self) -> &'static str {
        CONDITIONS[self.rule as usize]
    }

    /// Whether h lies in the ASU.
    #[inline]
    pub fn is_in(&self, h: &Miller) -> bool {
        match &self.to_reference {
            None => in_rule(self.rule, h[0], h[1], h[2]),
            Some(b) => {
                let r = times_rot(h, b);
                in_rule(self.rule, r[0], r[1], r[2])
            }
        }
    }

    /// The ASU equivalent of h and its MTZ ISYM code (odd: Friedel +, even: −).
    /// ISYM is 0 only if the group and ASU were inconsistent, which the tests
    /// rule out for every tabulated setting.
    pub fn to_asu(&self, h: &Miller) -> (Miller, i32) {
        for (n, r) in self.rots.iter().enumerate() {
            let e = times_rot(h, r);
            if self.is_in(&e) {
                return (e, 2 * n as i32 + 1);
            }
            let m = [-e[0], -e[1], -e[2]];
            if self.is_in(&m) {
                return (m, 2 * n as i32 + 2);
            }
        }
        (*h, 0)
    }

    /// The ASU equivalent of h and whether h is a Friedel-plus (or centric)
    /// reflection; for `plus == false` the Bijvoet mate `−h` is the one that
    /// is equivalent to the returned index.
    pub fn to_asu_anomalous(&self, h: &Miller) -> (Miller, bool) {
        let mut minus = None;
        for r in &self.rots {
            let e = times_rot(h, r);
            if self.is_in(&e) {
                return (e, true);
            }
            let m = [-e[0], -e[1], -e[2]];
            if minus.is_none() && self.is_in(&m) {
                minus = Some(m);
            }
        }
        (minus.unwrap_or(*h), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p41212_asu() {
        let sg = SpaceGroup::from_hm("P 41 21 2").unwrap();
        let asu = ReciprocalAsu::new(&sg);
        assert_eq!(asu.condition(), "h>=k and k>=0 and l>=0");
        let (h, isym) = asu.to_asu(&[1, 2, 3]);
        assert_eq!(h, [2, 1, 3]);
        assert!(isym > 0);
        assert_eq!(asu.to_asu(&[2, 1, 3]), ([2, 1, 3], 1));
        assert_eq!(asu.to_asu(&[-2, -1, -3]), ([2, 1, 3], 2));
        assert_eq!(asu.to_asu_anomalous(&[-2, -1, -3]), ([2, 1, 3], false));
        // centric h k 0: reported as plus
        assert!(asu.to_asu_anomalous(&[-2, -1, 0]).1);
    }
}
