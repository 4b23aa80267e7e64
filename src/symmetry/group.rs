//! A space group's operations split into a primitive part and centring vectors.
//!
//! # Conventions
//! * `sym_ops[0]` is the identity and `cen_ops[0]` is (0,0,0); every operation
//!   of the group is `sym_ops[i]` followed by a shift `cen_ops[j]`. Translations
//!   are kept wrapped into [0, 1).
//! * The order of `sym_ops` is the order in which [`GroupOps::from_generators`]
//!   meets them (Dimino's algorithm, generators taken in the order given). The
//!   MTZ ISYM code of a reflection counts in this order, and it is the same
//!   order gemmi produces from the same Hall symbol, so ISYM values agree with
//!   gemmi/CCP4-written files.
//! * Reflection properties (`is_centric`, `epsilon`, `is_sys_absent`) use the
//!   transpose rule `h' = h·R` (see [`super::op`]).

use super::op::{wrap_tran, Miller, Op, Rot, Tran, DEN};
use std::collections::HashMap;

/// No crystallographic point group has more than 48 operations.
const MAX_POINT_GROUP_ORDER: usize = 48;

/// Operations of a space group: primitive operations × centring translations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOps {
    pub sym_ops: Vec<Op>,
    pub cen_ops: Vec<Tran>,
}

/// Centring translations of a lattice symbol (Hall's table of lattice symbols;
/// `H` is the hexagonal triple cell). Units of `1/DEN`.
pub fn centring_vectors(lattice: char) -> Option<Vec<Tran>> {
    const H: i32 = DEN / 2;
    const T: i32 = DEN / 3;
    const D: i32 = 2 * DEN / 3;
    let v: Vec<Tran> = match lattice.to_ascii_uppercase() {
        'P' => vec![[0, 0, 0]],
        'A' => vec![[0, 0, 0], [0, H, H]],
        'B' => vec![[0, 0, 0], [H, 0, H]],
        'C' => vec![[0, 0, 0], [H, H, 0]],
        'I' => vec![[0, 0, 0], [H, H, H]],
        'R' => vec![[0, 0, 0], [D, T, T], [T, D, D]],
        'S' => vec![[0, 0, 0], [T, T, D], [D, D, T]],
        'T' => vec![[0, 0, 0], [T, D, T], [D, T, D]],
        'H' => vec![[0, 0, 0], [D, T, 0], [T, D, 0]],
        'F' => vec![[0, 0, 0], [0, H, H], [H, 0, H], [H, H, 0]],
        _ => return None,
    };
    Some(v)
}

impl GroupOps {
    /// The trivial group P 1.
    pub fn p1() -> GroupOps {
        GroupOps { sym_ops: vec![Op::IDENTITY], cen_ops: vec![[0, 0, 0]] }
    }

    /// Close a set of generators under composition (Dimino's algorithm).
    ///
    /// `cen_ops` must already hold every centring vector of the group. The
    /// result is checked: every rotation is crystallographic, the group is
    /// finite (≤ 48 primitive operations) and the translations close modulo the
    /// centring lattice. Any failure is an `Err` describing it.
    pub fn from_generators(generators: &[Op], cen_ops: Vec<Tran>) -> Result<GroupOps, String> {
        // a generator with the identity rotation is a centring vector
        let extra = generators.iter().filter(|g| g.rot == Op::IDENTITY.rot).map(|g| g.tran);
        let mut cen: Vec<Tran> = vec![[0, 0, 0]];
        for c in cen_ops.into_iter().chain(extra).map(wrap_tran) {
            if !cen.contains(&c) {
                cen.push(c);
            }
        }
        let gens: Vec<Op> =
            generators.iter().map(|g| g.wrapped()).filter(|g| g.rot != Op::IDENTITY.rot).collect();
        for g in &gens {
            if g.rot_type() == 0 {
                return Err(format!("operation {} is not a crystallographic rotation", g.triplet()));
            }
        }
        let mut ops = vec![Op::IDENTITY];
        if let Some(&g0) = gens.first() {
            // cyclic group of the first generator
            ops.push(g0);
            let mut p = g0 * g0;
            while p.rot != Op::IDENTITY.rot {
                if ops.len() > 6 {
                    return Err("generator of infinite order".into());
                }
                ops.push(p);
                p = p * g0;
            }
            // extend by each further generator with its coset representatives
            for i in 1..gens.len() {
                if find_rot(&ops, &gens[i].rot).is_some() {
                    continue;
                }
                let init = ops.len();
                let mut reps = vec![Op::IDENTITY];
                loop {
                    let len = reps.len();
                    for j in 0..len {
                        for g in &gens[..=i] {
                            let s = *g * reps[j];
                            if find_rot(&ops, &s.rot).is_none() {
                                ops.push(s);
                                for k in 1..init {
                                    let t = s * ops[k];
                                    ops.push(t);
                                }
                                reps.push(s);
                                if ops.len() > MAX_POINT_GROUP_ORDER {
                                    return Err("too many operations: the generators do not form a crystallographic group".into());
                                }
                            }
                        }
                    }
                    if len == reps.len() {
                        break;
                    }
                }
            }
        }
        let group = GroupOps { sym_ops: ops, cen_ops: cen };
        group.check_closed()?;
        Ok(group)
    }

    /// Split a full list of operations (as in MTZ `SYMM` records) into primitive
    /// operations and centring vectors, then check it is a group.
    pub fn from_all_ops(all: &[Op]) -> Result<GroupOps, String> {
        let mut sym_ops = vec![Op::IDENTITY];
        let mut cen_ops: Vec<Tran> = vec![[0, 0, 0]];
        for op in all.iter().map(|o| o.wrapped()) {
            if op.rot == Op::IDENTITY.rot {
                if !cen_ops.contains(&op.tran) {
                    cen_ops.push(op.tran);
                }
            } else if let Some(i) = find_rot(&sym_ops, &op.rot) {
                // several representatives differ by centring: prefer a zero shift
                if op.tran == [0, 0, 0] {
                    sym_ops[i] = op;
                }
            } else {
                if op.rot_type() == 0 {
                    return Err(format!("operation {} is not a crystallographic rotation", op.triplet()));
                }
                sym_ops.push(op);
            }
        }
        if sym_ops.len() > MAX_POINT_GROUP_ORDER || cen_ops.len() > 4 * 27 {
            return Err("too many operations".into());
        }
        let g = GroupOps { sym_ops, cen_ops };
        g.check_closed()?;
        if g.order() != all.iter().map(|o| o.wrapped()).collect::<std::collections::BTreeSet<_>>().len() {
            return Err("the operations do not form a group (missing or extra operations)".into());
        }
        Ok(g)
    }

    /// Number of operations (primitive × centring).
    pub fn order(&self) -> usize {
        self.sym_ops.len() * self.cen_ops.len()
    }

    /// Every operation, centring outermost (the order of MTZ `SYMM` records).
    pub fn all_ops(&self) -> Vec<Op> {
        let mut v = Vec::with_capacity(self.order());
        for c in &self.cen_ops {
            for s in &self.sym_ops {
                v.push(Op {
                    rot: s.rot,
                    tran: wrap_tran([s.tran[0] + c[0], s.tran[1] + c[1], s.tran[2] + c[2]]),
                });
            }
        }
        v
    }

    /// Every operation, sorted: a canonical key for comparing groups.
    pub fn sorted_ops(&self) -> Vec<Op> {
        let mut v = self.all_ops();
        v.sort();
        v
    }

    /// Whether both describe the same set of operations.
    pub fn is_same_as(&self, other: &GroupOps) -> bool {
        self.order() == other.order() && self.sorted_ops() == other.sorted_ops()
    }

    /// The lattice symbol of the centring vectors (P A B C I R S T H F), or
    /// `None` for an unconventional set.
    pub fn find_centring(&self) -> Option<char> {
        let mut mine = self.cen_ops.clone();
        mine.sort();
        for c in ['P', 'A', 'B', 'C', 'I', 'F', 'R', 'S', 'T', 'H'] {
            let mut v = centring_vectors(c).expect("known lattice");
            v.sort();
            if v == mine {
                return Some(c);
            }
        }
        None
    }

    pub fn is_centrosymmetric(&self) -> bool {
        find_rot(&self.sym_ops, &Op::INVERSION.rot).is_some()
    }

    /// Some operation maps h onto −h.
    pub fn is_centric(&self, h: &Miller) -> bool {
        let minus = h.map(|v| -v * DEN);
        self.sym_ops.iter().any(|op| op.apply_to_hkl_raw(h) == minus)
    }

    /// Operations (centring included) that leave h unchanged: gemmi's
    /// `epsilon_factor`. cctbx's `epsilon` is [`GroupOps::epsilon_without_centring`].
    pub fn epsilon(&self, h: &Miller) -> usize {
        self.epsilon_without_centring(h) * self.cen_ops.len()
    }

    /// Primitive operations that leave h unchanged.
    pub fn epsilon_without_centring(&self, h: &Miller) -> usize {
        let same = h.map(|v| v * DEN);
        self.sym_ops.iter().filter(|op| op.apply_to_hkl_raw(h) == same).count()
    }

    /// A centring vector or an operation that fixes h adds a phase that is not a
    /// multiple of 2π, so the reflection has zero intensity.
    pub fn is_sys_absent(&self, h: &Miller) -> bool {
        let shifted = |t: &Tran| (h[0] * t[0] + h[1] * t[1] + h[2] * t[2]) % DEN != 0;
        if self.cen_ops.iter().skip(1).any(shifted) {
            return true;
        }
        let same = h.map(|v| v * DEN);
        self.sym_ops.iter().skip(1).any(|op| op.apply_to_hkl_raw(h) == same && shifted(&op.tran))
    }

    /// Apply a change of basis `x' = P·x`: every operation becomes `P·op·P⁻¹`
    /// and the centring vectors are the images of the old lattice points.
    pub fn change_basis(&self, p: &Op) -> Result<GroupOps, String> {
        let g = self.change_basis_unchecked(p)?;
        g.check_closed()?;
        Ok(g)
    }

    /// [`GroupOps::change_basis`] on a set that need not be a group yet
    /// (identity + generators, before closure).
    pub(crate) fn change_basis_unchecked(&self, p: &Op) -> Result<GroupOps, String> {
        let pinv = p.inverse().ok_or_else(|| format!("change of basis {} is not invertible", p.triplet()))?;
        let conj = |op: &Op| -> Result<Op, String> {
            p.try_combine(op)
                .and_then(|a| a.try_combine(&pinv))
                .map(|o| o.wrapped())
                .ok_or_else(|| format!("change of basis {} gives non-exact operations", p.triplet()))
        };
        let mut sym_ops = Vec::with_capacity(self.sym_ops.len());
        for op in &self.sym_ops {
            sym_ops.push(conj(op)?);
        }
        // New lattice points: images of old lattice points n + c. P·(n + k·e_i)
        // repeats modulo 1 once k·P is integral, so a k³ box of n suffices.
        let k = p.rot.iter().flatten().fold(1i32, |acc, &v| lcm(acc, DEN / gcd(v.abs(), DEN)));
        if k > DEN {
            return Err("change of basis has an unsupported denominator".into());
        }
        let mut cen: Vec<Tran> = vec![[0, 0, 0]];
        for c in &self.cen_ops {
            for n0 in 0..k {
                for n1 in 0..k {
                    for n2 in 0..k {
                        let t = [c[0] + n0 * DEN, c[1] + n1 * DEN, c[2] + n2 * DEN];
                        let img =
                            Op { rot: p.rot, tran: [0, 0, 0] }.try_combine(&Op::translation(t)).ok_or_else(
                                || format!("change of basis {} gives non-exact centring", p.triplet()),
                            )?;
                        let w = wrap_tran(img.tran);
                        if !cen.contains(&w) {
                            cen.push(w);
                        }
                    }
                }
            }
            if cen.len() > 4 * 27 {
                return Err("change of basis makes too large a cell".into());
            }
        }
        Ok(GroupOps { sym_ops, cen_ops: cen })
    }

    /// Verify the group axioms modulo the centring lattice.
    fn check_closed(&self) -> Result<(), String> {
        if self.sym_ops.first() != Some(&Op::IDENTITY) {
            return Err("first operation is not the identity".into());
        }
        let by_rot: HashMap<Rot, Tran> = self.sym_ops.iter().map(|o| (o.rot, o.tran)).collect();
        if by_rot.len() != self.sym_ops.len() {
            return Err("two operations share a rotation part".into());
        }
        let is_lattice = |t: Tran| {
            let w = wrap_tran(t);
            self.cen_ops.contains(&w)
        };
        // centring vectors form a group and are invariant under the rotations
        for a in &self.cen_ops {
            for b in &self.cen_ops {
                if !is_lattice([a[0] + b[0], a[1] + b[1], a[2] + b[2]]) {
                    return Err("centring vectors do not form a lattice".into());
                }
            }
            for op in &self.sym_ops {
                let r = Op { rot: op.rot, tran: [0, 0, 0] }.combine(&Op::translation(*a));
                if !is_lattice(r.tran) {
                    return Err(format!("operation {} is incompatible with the centring", op.triplet()));
                }
            }
        }
        for a in &self.sym_ops {
            for b in &self.sym_ops {
                let ab = *a * *b;
                match by_rot.get(&ab.rot) {
                    None => return Err("the operations are not closed under composition".into()),
                    Some(t) => {
                        if !is_lattice([ab.tran[0] - t[0], ab.tran[1] - t[1], ab.tran[2] - t[2]]) {
                            return Err(format!(
                                "translations do not close: {} · {} is not in the group",
                                a.triplet(),
                                b.triplet()
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn find_rot(ops: &[Op], rot: &Rot) -> Option<usize> {
    ops.iter().position(|o| &o.rot == rot)
}

fn gcd(a: i32, b: i32) -> i32 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: i32, b: i32) -> i32 {
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(s: &str) -> Op {
        Op::parse_triplet(s).unwrap()
    }

    #[test]
    fn closure_of_p41212() {
        // P 4abw 2nw
        let g = GroupOps::from_generators(
            &[op("-y+1/2,x+1/2,z+1/4"), op("x+1/2,-y+1/2,-z+3/4")],
            vec![[0, 0, 0]],
        )
        .unwrap();
        assert_eq!(g.order(), 8);
        // 00l absent unless l = 4n; h00 absent unless h even
        assert!(g.is_sys_absent(&[0, 0, 2]));
        assert!(!g.is_sys_absent(&[0, 0, 4]));
        assert!(g.is_sys_absent(&[1, 0, 0]));
        assert!(!g.is_sys_absent(&[2, 0, 0]));
        assert!(g.is_centric(&[1, 2, 0]));
        assert!(!g.is_centric(&[1, 2, 3]));
        assert_eq!(g.epsilon(&[0, 0, 4]), 4);
        assert_eq!(g.epsilon(&[1, 2, 3]), 1);
    }

    #[test]
    fn rejects_bad_groups() {
        // 4-fold with a C-centring: the lattice is not invariant
        assert!(GroupOps::from_generators(&[op("-y,x,z")], centring_vectors('A').unwrap()).is_err());
        // inconsistent translations: a 2-fold whose square is a half translation
        assert!(GroupOps::from_all_ops(&[op("x,y,z"), op("-x,-y,z"), op("-x,-y,z+1/2")]).is_err());
        // a non-crystallographic matrix
        assert!(GroupOps::from_generators(&[op("x+y,y,z")], vec![[0, 0, 0]]).is_err());
    }

    #[test]
    fn split_all_ops() {
        let all = [op("x,y,z"), op("-x,y,-z"), op("x+1/2,y+1/2,z"), op("-x+1/2,y+1/2,-z")];
        let g = GroupOps::from_all_ops(&all).unwrap();
        assert_eq!(g.sym_ops.len(), 2);
        assert_eq!(g.find_centring(), Some('C'));
        assert!(GroupOps::from_all_ops(&all[..3]).is_err());
    }
}
