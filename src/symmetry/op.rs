//! Exact symmetry and change-of-basis operations on fractional coordinates.
//!
//! # Conventions
//! * An [`Op`] is `x' = R·x + t` on fractional coordinates. Both the 3×3
//!   rotation part `R` and the translation `t` are stored as integers in units
//!   of `1/DEN`, `DEN = 24` (so 1/2, 1/3, 1/4, 1/6, 1/8 are exact). A proper
//!   space-group operation has `R` entries in {−24, 0, 24}; a change of basis
//!   may have fractional entries (e.g. 12 = ½ for a centred→primitive matrix).
//! * Composition `a * b` applies `b` first, then `a`; its translation is wrapped
//!   into [0, 1). [`Op::combine`] is the same without the wrap.
//! * **Miller indices transform with the transpose**: `h' = h·R`, i.e.
//!   `h'_i = Σ_j R_ji h_j` ([`Op::apply_to_hkl`]). This keeps `h·x` invariant
//!   when `x` and `h` are both expressed in the new basis, and makes the
//!   symmetry equivalents of `h` the set `{h·R}` over the group.
//! * Triplets (`x,y,z+1/2`, `-y,x-y,z+2/3`, `1/2*x+1/2*y,...`) are parsed
//!   case-insensitively (MTZ `SYMM` records are upper case) and written in
//!   lower case with translations as reduced fractions.

// Index loops mirror the matrix formulas they implement.
#![allow(clippy::needless_range_loop)]

use std::fmt;

/// The common denominator of rotation and translation entries.
pub const DEN: i32 = 24;

/// A Miller index (h, k, l).
pub type Miller = [i32; 3];

/// Rotation part, units of `1/DEN`, row-major (`rot[i][j]` multiplies `x_j` into `x'_i`).
pub type Rot = [[i32; 3]; 3];

/// Translation part, units of `1/DEN`.
pub type Tran = [i32; 3];

/// A rotation + translation on fractional coordinates, exact in units of `1/DEN`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Op {
    pub rot: Rot,
    pub tran: Tran,
}

/// Largest magnitude accepted for any parsed entry (in `1/DEN` units); keeps all
/// products of three entries far from `i32` overflow.
const MAX_ENTRY: i64 = 64 * DEN as i64;

impl Op {
    pub const IDENTITY: Op = Op { rot: [[DEN, 0, 0], [0, DEN, 0], [0, 0, DEN]], tran: [0, 0, 0] };
    pub const INVERSION: Op = Op { rot: [[-DEN, 0, 0], [0, -DEN, 0], [0, 0, -DEN]], tran: [0, 0, 0] };

    /// A pure translation (units of `1/DEN`).
    pub fn translation(t: Tran) -> Op {
        Op { rot: Op::IDENTITY.rot, tran: t }
    }

    /// From an integer rotation matrix (entries in units of 1, row-major) and a
    /// translation in units of `1/DEN`.
    pub fn from_int_rot(r: [[i32; 3]; 3], tran: Tran) -> Op {
        let mut rot = [[0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                rot[i][j] = r[i][j] * DEN;
            }
        }
        Op { rot, tran }
    }

    pub fn is_identity(&self) -> bool {
        *self == Op::IDENTITY
    }

    /// Determinant of the rotation part in units of `1/DEN³`.
    pub fn det_rot(&self) -> i64 {
        det3(&self.rot)
    }

    /// Whether the rotation part is an integer matrix (entries multiples of DEN).
    pub fn has_integer_rot(&self) -> bool {
        self.rot.iter().flatten().all(|&v| v % DEN == 0)
    }

    /// Rotation part as integers. Only meaningful when [`Op::has_integer_rot`].
    pub fn int_rot(&self) -> [[i32; 3]; 3] {
        self.rot.map(|row| row.map(|v| v / DEN))
    }

    /// Rotation type of a proper symmetry operation: 1, 2, 3, 4, 6 for rotations,
    /// −1, −2 (mirror), −3, −4, −6 for rotoinversions; 0 if not crystallographic.
    pub fn rot_type(&self) -> i32 {
        if !self.has_integer_rot() {
            return 0;
        }
        let d = DEN as i64;
        let det = self.det_rot();
        let tr = (self.rot[0][0] + self.rot[1][1] + self.rot[2][2]) / DEN;
        if det == d * d * d {
            match tr {
                3 => 1,
                -1 => 2,
                0 => 3,
                1 => 4,
                2 => 6,
                _ => 0,
            }
        } else if det == -d * d * d {
            match tr {
                -3 => -1,
                1 => -2,
                0 => -3,
                -1 => -4,
                -2 => -6,
                _ => 0,
            }
        } else {
            0
        }
    }

    /// `self ∘ b` (apply `b` first) without wrapping the translation, or `None`
    /// when the product is not representable in units of `1/DEN`.
    pub fn try_combine(&self, b: &Op) -> Option<Op> {
        let d = DEN as i64;
        let mut r = Op { rot: [[0; 3]; 3], tran: [0; 3] };
        for i in 0..3 {
            let mut t = self.tran[i] as i64 * d;
            for j in 0..3 {
                let mut s = 0i64;
                for k in 0..3 {
                    s += self.rot[i][k] as i64 * b.rot[k][j] as i64;
                }
                if s % d != 0 {
                    return None;
                }
                r.rot[i][j] = i32::try_from(s / d).ok()?;
                t += self.rot[i][j] as i64 * b.tran[j] as i64;
            }
            if t % d != 0 {
                return None;
            }
            r.tran[i] = i32::try_from(t / d).ok()?;
        }
        Some(r)
    }

    /// `self ∘ b` without wrapping. Panics only if the product is not exact in
    /// units of `1/DEN`, which cannot happen when either operand has an integer
    /// rotation part and the other a translation representable in `1/DEN`
    /// (every space-group operation).
    pub fn combine(&self, b: &Op) -> Op {
        self.try_combine(b).expect("symmetry operations compose exactly")
    }

    /// Translation wrapped into [0, DEN).
    pub fn wrapped(&self) -> Op {
        Op { rot: self.rot, tran: wrap_tran(self.tran) }
    }

    /// The inverse, or `None` for a singular or non-representable operation.
    pub fn inverse(&self) -> Option<Op> {
        let det = self.det_rot();
        if det == 0 {
            return None;
        }
        let r = &self.rot;
        let cof = |a: usize, b: usize, c: usize, e: usize| -> i64 {
            r[a][b] as i64 * r[c][e] as i64 - r[a][e] as i64 * r[c][b] as i64
        };
        // adjugate: inv[i][j] = cofactor(j, i)
        let adj = [
            [cof(1, 1, 2, 2), -cof(0, 1, 2, 2), cof(0, 1, 1, 2)],
            [-cof(1, 0, 2, 2), cof(0, 0, 2, 2), -cof(0, 0, 1, 2)],
            [cof(1, 0, 2, 1), -cof(0, 0, 2, 1), cof(0, 0, 1, 1)],
        ];
        let d2 = (DEN as i64) * (DEN as i64);
        let mut inv = Op { rot: [[0; 3]; 3], tran: [0; 3] };
        for i in 0..3 {
            for j in 0..3 {
                let num = adj[i][j] * d2;
                if num % det != 0 {
                    return None;
                }
                inv.rot[i][j] = i32::try_from(num / det).ok()?;
            }
        }
        for i in 0..3 {
            let mut t = 0i64;
            for j in 0..3 {
                t -= inv.rot[i][j] as i64 * self.tran[j] as i64;
            }
            if t % DEN as i64 != 0 {
                return None;
            }
            inv.tran[i] = i32::try_from(t / DEN as i64).ok()?;
        }
        Some(inv)
    }

    /// `h·R` in units of `1/DEN` (no division).
    #[inline]
    pub fn apply_to_hkl_raw(&self, h: &Miller) -> [i32; 3] {
        let r = &self.rot;
        [
            r[0][0] * h[0] + r[1][0] * h[1] + r[2][0] * h[2],
            r[0][1] * h[0] + r[1][1] * h[1] + r[2][1] * h[2],
            r[0][2] * h[0] + r[1][2] * h[1] + r[2][2] * h[2],
        ]
    }

    /// `h' = h·R` (the transpose acts on Miller indices). Exact for symmetry
    /// operations; for a fractional change of basis use [`Op::apply_to_hkl_exact`].
    #[inline]
    pub fn apply_to_hkl(&self, h: &Miller) -> Miller {
        self.apply_to_hkl_raw(h).map(|v| v / DEN)
    }

    /// `h·R` if it is an integer index, else `None`.
    pub fn apply_to_hkl_exact(&self, h: &Miller) -> Option<Miller> {
        let raw = self.apply_to_hkl_raw(h);
        if raw.iter().all(|v| v % DEN == 0) {
            Some(raw.map(|v| v / DEN))
        } else {
            None
        }
    }

    /// Phase shift `2π·h·t` (radians) that this operation's translation adds
    /// to the structure factor of the equivalent reflection.
    pub fn phase_shift(&self, h: &Miller) -> f64 {
        let ht = h[0] as i64 * self.tran[0] as i64
            + h[1] as i64 * self.tran[1] as i64
            + h[2] as i64 * self.tran[2] as i64;
        -2.0 * std::f64::consts::PI * ht as f64 / DEN as f64
    }

    /// Apply to fractional coordinates.
    pub fn apply_to_xyz(&self, x: [f64; 3]) -> [f64; 3] {
        let d = DEN as f64;
        let mut out = [0.0; 3];
        for i in 0..3 {
            out[i] = (self.rot[i][0] as f64 * x[0]
                + self.rot[i][1] as f64 * x[1]
                + self.rot[i][2] as f64 * x[2]
                + self.tran[i] as f64)
                / d;
        }
        out
    }

    /// Rotation part as a floating-point matrix (row-major rows).
    pub fn rot_f64(&self) -> [[f64; 3]; 3] {
        self.rot.map(|row| row.map(|v| v as f64 / DEN as f64))
    }

    /// Parse a triplet such as `x,y,z+1/2`, `-Y,X-Y,Z+2/3` or `1/2*x+1/2*y,-x/2+y/2,z`.
    pub fn parse_triplet(s: &str) -> Result<Op, String> {
        let parts: Vec<&str> = s.split(',').collect();
        if parts.len() != 3 {
            return Err(format!("triplet `{s}`: expected three comma-separated parts"));
        }
        let mut op = Op { rot: [[0; 3]; 3], tran: [0; 3] };
        for (i, part) in parts.iter().enumerate() {
            let (row, t) = parse_triplet_part(part).map_err(|e| format!("triplet `{s}`: {e}"))?;
            op.rot[i] = row;
            op.tran[i] = t;
        }
        Ok(op)
    }

    /// The triplet in lower case, e.g. `-y,x-y,z+2/3`.
    pub fn triplet(&self) -> String {
        let mut s = String::new();
        for i in 0..3 {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&triplet_part(&self.rot[i], self.tran[i]));
        }
        s
    }
}

impl std::ops::Mul for Op {
    type Output = Op;
    /// `a * b`: apply `b` then `a`, translation wrapped into [0, 1).
    fn mul(self, b: Op) -> Op {
        self.combine(&b).wrapped()
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.triplet())
    }
}

/// Wrap each translation component into [0, DEN).
#[inline]
pub fn wrap_tran(t: Tran) -> Tran {
    t.map(|v| v.rem_euclid(DEN))
}

pub(crate) fn det3(r: &Rot) -> i64 {
    let m = |i: usize, j: usize| r[i][j] as i64;
    m(0, 0) * (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) - m(0, 1) * (m(1, 0) * m(2, 2) - m(1, 2) * m(2, 0))
        + m(0, 2) * (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0))
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

/// One part of a triplet: returns the row (units 1/DEN) and the constant (units 1/DEN).
fn parse_triplet_part(part: &str) -> Result<([i32; 3], i32), String> {
    let chars: Vec<char> = part.chars().filter(|c| !c.is_whitespace()).collect();
    if chars.is_empty() {
        return Err("empty part".into());
    }
    let mut row = [0i64; 3];
    let mut tran = 0i64;
    let mut i = 0;
    while i < chars.len() {
        // optional sign (required between terms)
        let mut sign = 1i64;
        if chars[i] == '+' || chars[i] == '-' {
            if chars[i] == '-' {
                sign = -1;
            }
            i += 1;
        } else if i != 0 {
            return Err(format!("unexpected `{}`", chars[i]));
        }
        if i >= chars.len() {
            return Err("trailing sign".into());
        }
        // optional number, optionally "/den"
        let (mut num, mut den) = (1i64, 1i64);
        let mut has_number = false;
        let mut star = false;
        if chars[i].is_ascii_digit() {
            let (n, next) = read_int(&chars, i)?;
            num = n;
            i = next;
            has_number = true;
            if i < chars.len() && chars[i] == '.' {
                return Err("decimal fractions are not supported; use n/d".into());
            }
            if i < chars.len() && chars[i] == '/' {
                let (d, next) = read_int(&chars, i + 1)?;
                den = d;
                i = next;
            }
            if i < chars.len() && chars[i] == '*' {
                i += 1;
                star = true;
            }
        }
        let axis = if i < chars.len() { axis_index(chars[i]) } else { None };
        match axis {
            Some(a) => {
                i += 1;
                // "x/2" form
                if i < chars.len() && chars[i] == '/' {
                    if has_number && den != 1 {
                        return Err("two denominators in one term".into());
                    }
                    let (d, next) = read_int(&chars, i + 1)?;
                    den = d;
                    i = next;
                }
                row[a] += sign * to_den(num, den)?;
            }
            None => {
                if star {
                    return Err("`*` without a variable".into());
                }
                if !has_number {
                    return Err(format!("unexpected `{}`", chars.get(i).copied().unwrap_or(' ')));
                }
                tran += sign * to_den(num, den)?;
            }
        }
        if row.iter().chain(std::iter::once(&tran)).any(|v| v.abs() > MAX_ENTRY) {
            return Err("coefficient too large".into());
        }
    }
    Ok((row.map(|v| v as i32), tran as i32))
}

fn read_int(chars: &[char], start: usize) -> Result<(i64, usize), String> {
    let mut i = start;
    let mut v: i64 = 0;
    while i < chars.len() && chars[i].is_ascii_digit() {
        v = v * 10 + chars[i].to_digit(10).unwrap() as i64;
        if v > 1_000_000 {
            return Err("number too large".into());
        }
        i += 1;
    }
    if i == start {
        return Err("expected a number".into());
    }
    Ok((v, i))
}

fn axis_index(c: char) -> Option<usize> {
    match c.to_ascii_lowercase() {
        'x' => Some(0),
        'y' => Some(1),
        'z' => Some(2),
        _ => None,
    }
}

/// `num/den` in units of `1/DEN`, exactly.
fn to_den(num: i64, den: i64) -> Result<i64, String> {
    if den <= 0 {
        return Err("zero denominator".into());
    }
    let v = num * DEN as i64;
    if v % den != 0 {
        return Err(format!("{num}/{den} is not a multiple of 1/{DEN}"));
    }
    Ok(v / den)
}

/// `w/DEN` reduced: (numerator, denominator).
fn reduced(w: i32) -> (i64, i64) {
    let g = gcd(w as i64, DEN as i64);
    (w as i64 / g, DEN as i64 / g)
}

fn triplet_part(row: &[i32; 3], t: i32) -> String {
    let mut s = String::new();
    for (j, &v) in row.iter().enumerate() {
        if v == 0 {
            continue;
        }
        let letter = ['x', 'y', 'z'][j];
        if v < 0 {
            s.push('-');
        } else if !s.is_empty() {
            s.push('+');
        }
        let (n, d) = reduced(v.abs());
        match (n, d) {
            (1, 1) => s.push(letter),
            (1, d) => s.push_str(&format!("{letter}/{d}")),
            (n, 1) => s.push_str(&format!("{n}*{letter}")),
            (n, d) => s.push_str(&format!("{n}/{d}*{letter}")),
        }
    }
    if t != 0 {
        if t < 0 {
            s.push('-');
        } else if !s.is_empty() {
            s.push('+');
        }
        let (n, d) = reduced(t.abs());
        if d == 1 {
            s.push_str(&n.to_string());
        } else {
            s.push_str(&format!("{n}/{d}"));
        }
    }
    if s.is_empty() {
        s.push('0');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format_round_trip() {
        for t in ["x,y,z", "-y,x-y,z+2/3", "x+1/2,-y+1/4,z+3/4", "-x,-y,-z", "x-y,x,z+1/6", "z,x,y"] {
            let op = Op::parse_triplet(t).unwrap();
            assert_eq!(op.triplet(), t);
        }
        let op = Op::parse_triplet("X, Y, Z+1/2").unwrap();
        assert_eq!(op.tran, [0, 0, 12]);
        let op = Op::parse_triplet("1/2*x+1/2*y,x/2-y/2,-z").unwrap();
        assert_eq!(op.rot, [[12, 12, 0], [12, -12, 0], [0, 0, -24]]);
        assert_eq!(op.triplet(), "x/2+y/2,x/2-y/2,-z");
        let op = Op::parse_triplet("1/2+x,y,z").unwrap();
        assert_eq!(op.tran, [12, 0, 0]);
        assert_eq!(Op::parse_triplet("2/3*x,y,z").unwrap().triplet(), "2/3*x,y,z");
    }

    #[test]
    fn parse_rejects_garbage() {
        for t in [
            "",
            "x,y",
            "x,y,z,x",
            "x+,y,z",
            "q,y,z",
            "x/0,y,z",
            "x+1/5,y,z",
            "x,y,z+0.5",
            "x*y,y,z",
            "1//2,y,z",
            "2*3,y,z",
            "2*,y,z",
        ] {
            assert!(Op::parse_triplet(t).is_err(), "{t}");
        }
    }

    #[test]
    fn compose_and_invert() {
        let a = Op::parse_triplet("-y,x-y,z+1/3").unwrap();
        let a2 = a * a;
        assert_eq!(a2.triplet(), "-x+y,-x,z+2/3");
        assert!((a2 * a).is_identity());
        let inv = a.inverse().unwrap();
        assert!((a * inv).is_identity());
        assert!(a.combine(&inv).is_identity());
        let cb = Op::parse_triplet("x/2+y/2,x/2-y/2,-z").unwrap();
        let cbi = cb.inverse().unwrap();
        assert_eq!(cbi.triplet(), "x+y,x-y,-z");
        assert!(cb.try_combine(&cbi).unwrap().is_identity());
        assert!(Op::parse_triplet("x,y,0").unwrap().inverse().is_none());
    }

    #[test]
    fn hkl_uses_transpose() {
        // 3-fold along c in hexagonal axes: x' = -y, y' = x-y.
        let op = Op::parse_triplet("-y,x-y,z").unwrap();
        // h' = h·R: (1,0,0) -> (0,-1,0); (0,1,0) -> (1,-1,0)
        assert_eq!(op.apply_to_hkl(&[1, 0, 0]), [0, -1, 0]);
        assert_eq!(op.apply_to_hkl(&[0, 1, 0]), [1, -1, 0]);
        // h·x is invariant: h·(R x) = (h·R)·x for an equivalent pair
        let x = [0.1, 0.27, 0.4];
        let h = [2, -3, 5];
        let hx: f64 = (0..3).map(|i| h[i] as f64 * op.apply_to_xyz(x)[i]).sum();
        let hr = op.apply_to_hkl(&h);
        let hrx: f64 = (0..3).map(|i| hr[i] as f64 * x[i]).sum();
        assert!((hx - hrx).abs() < 1e-12);
    }

    #[test]
    fn rotation_types() {
        let t = |s: &str| Op::parse_triplet(s).unwrap().rot_type();
        assert_eq!(t("x,y,z"), 1);
        assert_eq!(t("-x,-y,z"), 2);
        assert_eq!(t("-y,x-y,z"), 3);
        assert_eq!(t("-y,x,z"), 4);
        assert_eq!(t("x-y,x,z"), 6);
        assert_eq!(t("-x,-y,-z"), -1);
        assert_eq!(t("x,y,-z"), -2);
        assert_eq!(t("y,-x+y,-z"), -3);
        assert_eq!(t("y,-x,-z"), -4);
        assert_eq!(t("-x+y,-x,-z"), -6);
    }
}
