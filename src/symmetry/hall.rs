//! Hall symbols (Hall 1981; ITB ch. A1.4.2) → group operations.
//!
//! Grammar: `[-]L  M1 [M2 [M3 [M4]]]  [(V)]`
//! * `L`: lattice symbol P A B C I R S T F (H: hexagonal triple cell); a leading
//!   `-` adds the inversion centre at the origin.
//! * `M`: `[-]N[A][T…]`: order `N` ∈ {1,2,3,4,6} (`-` for a rotoinversion),
//!   axis `A` (`x y z`, or the diagonal axes `'` `"` for 2-folds and `*` for
//!   the body-diagonal 3-fold) and translations `T`: `a b c` (½ along an
//!   axis), `n` (½,½,½), `u v w` (¼ along an axis), `d` (¼,¼,¼) and a screw
//!   digit `k` (k/N along the rotation axis).
//! * Default axes when `A` is omitted: the first matrix is along z; a second
//!   2-fold is along x after a 2- or 4-fold and along a−b (`'`) after a 3- or
//!   6-fold; a third matrix that is a 3-fold is along the body diagonal (`*`).
//! * `(V)`: change of basis applied to every operation as `V·op·V⁻¹`, either as
//!   a triplet `(x,y,z+5/12)` or as a translation in twelfths `(0 0 5)`.
//!
//! Spaces are optional between tokens only where Hall symbols allow them;
//! DIALS writes a leading space (`" P 4nw 2abw"`), which is ignored. `_` is
//! accepted as a space, as in some CIF files.

use super::group::{centring_vectors, GroupOps};
use super::op::{Op, Rot, DEN};

/// A parsed Hall symbol: the group and, separately, its change-of-basis suffix.
pub struct ParsedHall {
    /// The operations of the full symbol (change of basis applied).
    pub ops: GroupOps,
    /// The operations of the symbol without its `(V)` suffix.
    pub core: GroupOps,
    /// The `(V)` change of basis, if the symbol has one.
    pub change_of_basis: Option<Op>,
}

/// The group of a Hall symbol.
pub fn parse_hall(hall: &str) -> Result<GroupOps, String> {
    parse_hall_full(hall).map(|p| p.ops)
}

/// The group of a Hall symbol, with the core and change of basis kept apart.
pub fn parse_hall_full(hall: &str) -> Result<ParsedHall, String> {
    let err = |m: String| format!("Hall symbol `{}`: {m}", hall.trim());
    let s = hall.replace('_', " ");
    let (body, cob) = match s.find('(') {
        Some(open) => {
            let close = s[open..].find(')').map(|c| open + c).ok_or_else(|| err("missing `)`".into()))?;
            if !s[close + 1..].trim().is_empty() {
                return Err(err("unexpected characters after `)`".into()));
            }
            let v = parse_change_of_basis(&s[open + 1..close]).map_err(&err)?;
            (&s[..open], Some(v))
        }
        None => (&s[..], None),
    };
    let mut tokens: Vec<&str> = body.split_whitespace().collect();
    if tokens.is_empty() {
        return Err(err("empty".into()));
    }
    // lattice token: "-P", "P", or "-" "P"
    let mut lat = tokens.remove(0).to_string();
    if lat == "-" && !tokens.is_empty() {
        lat.push_str(tokens.remove(0));
    }
    let centro = lat.starts_with('-');
    let lat_chars: Vec<char> = lat.trim_start_matches('-').chars().collect();
    if lat_chars.len() != 1 {
        return Err(err(format!("bad lattice symbol `{lat}`")));
    }
    let cen = centring_vectors(lat_chars[0]).ok_or_else(|| err(format!("unknown lattice symbol `{lat}`")))?;
    if tokens.is_empty() || tokens.len() > 4 {
        return Err(err("expected 1 to 4 matrix symbols".into()));
    }
    let mut gens = Vec::new();
    let mut prev_order = 0;
    for (i, tok) in tokens.iter().enumerate() {
        if *tok == "1" {
            continue; // the identity: counts as a position but generates nothing
        }
        let (op, order) = matrix_symbol(tok, i + 1, prev_order).map_err(|m| err(format!("`{tok}`: {m}")))?;
        prev_order = order;
        gens.push(op);
    }
    if centro {
        gens.push(Op::INVERSION);
    }
    let core = GroupOps::from_generators(&gens, cen.clone()).map_err(&err)?;
    let ops = match &cob {
        None => core.clone(),
        Some(v) => {
            // transform the generators, then close, so the operation order is
            // that of the symbol (as in other Hall interpreters)
            let shifted =
                GroupOps { sym_ops: std::iter::once(Op::IDENTITY).chain(gens).collect(), cen_ops: cen };
            let moved = shifted.change_basis_unchecked(v).map_err(&err)?;
            GroupOps::from_generators(&moved.sym_ops[1..], moved.cen_ops).map_err(&err)?
        }
    };
    Ok(ParsedHall { ops, core, change_of_basis: cob })
}

/// Rotation matrices for an axis along z (and the diagonal 2-folds of a
/// z-axis frame), integers.
fn z_matrix(symbol: char) -> [[i32; 3]; 3] {
    match symbol {
        '1' => [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        '2' => [[-1, 0, 0], [0, -1, 0], [0, 0, 1]],
        '3' => [[0, -1, 0], [1, -1, 0], [0, 0, 1]],
        '4' => [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
        '6' => [[1, -1, 0], [1, 0, 0], [0, 0, 1]],
        '\'' => [[0, -1, 0], [-1, 0, 0], [0, 0, -1]],
        '"' => [[0, 1, 0], [1, 0, 0], [0, 0, -1]],
        '*' => [[0, 0, 1], [1, 0, 0], [0, 1, 0]],
        _ => unreachable!("caller passes only known symbols"),
    }
}

/// One matrix symbol at 1-based `pos`; returns the operation and its order N.
fn matrix_symbol(tok: &str, pos: usize, prev_order: i32) -> Result<(Op, i32), String> {
    let mut chars = tok.chars().peekable();
    let improper = chars.peek() == Some(&'-');
    if improper {
        chars.next();
    }
    let n_char = chars.next().ok_or("missing rotation order")?;
    let order: i32 = match n_char {
        '1' | '2' | '3' | '4' | '6' => n_char.to_digit(10).unwrap() as i32,
        _ => return Err(format!("bad rotation order `{n_char}`")),
    };
    let mut screw: Option<i32> = None;
    let mut principal: Option<usize> = None;
    let mut diagonal: Option<char> = None;
    let mut tran = [0i32; 3];
    for c in chars {
        match c {
            '1'..='5' => {
                if screw.is_some() {
                    return Err("two screw subscripts".into());
                }
                screw = Some(c.to_digit(10).unwrap() as i32);
            }
            'x' | 'y' | 'z' => {
                if principal.is_some() {
                    return Err("two axis symbols".into());
                }
                principal = Some((c as u8 - b'x') as usize);
            }
            '\'' | '"' | '*' => {
                if diagonal.is_some() {
                    return Err("two diagonal-axis symbols".into());
                }
                let needed = if c == '*' { 3 } else { 2 };
                if order != needed {
                    return Err(format!("axis `{c}` needs a {needed}-fold"));
                }
                diagonal = Some(c);
            }
            _ => {
                let t = translation_symbol(c).ok_or_else(|| format!("unknown symbol `{c}`"))?;
                for i in 0..3 {
                    tran[i] += t[i];
                }
            }
        }
    }
    if principal.is_none() && diagonal.is_none() {
        match (pos, order) {
            (_, 1) => {}
            (1, _) => principal = Some(2),
            (2, 2) if prev_order == 2 || prev_order == 4 => principal = Some(0),
            (2, 2) if prev_order == 3 || prev_order == 6 => diagonal = Some('\''),
            (3, 3) => diagonal = Some('*'),
            _ => return Err("the axis direction cannot be implied here".into()),
        }
    }
    let mut m = z_matrix(diagonal.unwrap_or(n_char));
    if improper {
        m = m.map(|r| r.map(|v| -v));
    }
    // re-express a z-axis matrix for an axis along x or y (cyclic permutation)
    let perm = match principal {
        Some(0) => Some([2, 0, 1]),
        Some(1) => Some([1, 2, 0]),
        _ => None,
    };
    if let Some(p) = perm {
        let mut r = [[0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                r[i][j] = m[p[i]][p[j]];
            }
        }
        m = r;
    }
    if let Some(k) = screw {
        if k >= order {
            return Err(format!("screw subscript {k} needs an order above {k}"));
        }
        let axis = match (principal, diagonal) {
            (Some(a), None) => a,
            _ => return Err("screw subscript on a diagonal axis".into()),
        };
        tran[axis] += DEN / order * k;
    }
    let rot: Rot = m.map(|r| r.map(|v| v * DEN));
    Ok((Op { rot, tran }, order))
}

fn translation_symbol(c: char) -> Option<[i32; 3]> {
    const H: i32 = DEN / 2;
    const Q: i32 = DEN / 4;
    Some(match c {
        'a' => [H, 0, 0],
        'b' => [0, H, 0],
        'c' => [0, 0, H],
        'n' => [H, H, H],
        'u' => [Q, 0, 0],
        'v' => [0, Q, 0],
        'w' => [0, 0, Q],
        'd' => [Q, Q, Q],
        _ => return None,
    })
}

/// `(x,y,z+5/12)` or `(0 0 5)` (translation in twelfths; may be negative).
fn parse_change_of_basis(inner: &str) -> Result<Op, String> {
    if inner.contains(',') {
        return Op::parse_triplet(inner);
    }
    let parts: Vec<&str> = inner.split_whitespace().collect();
    if parts.len() != 3 {
        return Err(format!("change of basis `({inner})`: expected three numbers or a triplet"));
    }
    let mut t = [0i32; 3];
    for (i, p) in parts.iter().enumerate() {
        let v: i32 =
            p.parse().map_err(|_| format!("change of basis `({inner})`: `{p}` is not an integer"))?;
        t[i] = (v % 12) * (DEN / 12);
    }
    Ok(Op::translation(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p212121_and_friends() {
        let g = parse_hall(" P 2ac 2ab").unwrap();
        assert_eq!(g.order(), 4);
        let want = ["x,y,z", "-x+1/2,-y,z+1/2", "x+1/2,-y+1/2,-z", "-x,y+1/2,-z+1/2"];
        for w in want {
            let op = Op::parse_triplet(w).unwrap().wrapped();
            assert!(g.all_ops().contains(&op), "{w}");
        }
        assert_eq!(parse_hall("-P 4 2").unwrap().order(), 16);
        assert_eq!(parse_hall(" P 2ac 2ab 3").unwrap().order(), 12);
        assert_eq!(parse_hall("-F 4vw 2vw 3").unwrap().order(), 192);
        assert_eq!(parse_hall(" P 2yb").unwrap().order(), 2);
    }

    #[test]
    fn change_of_basis_forms_agree() {
        let a = parse_hall(" P 61 2 (x,y,z+5/12)").unwrap();
        let b = parse_hall("P 61 2 (0 0 5)").unwrap();
        assert!(a.is_same_as(&b));
        assert_eq!(a.order(), 12);
        let c = parse_hall("P 61 2").unwrap();
        assert!(!a.is_same_as(&c));
    }

    #[test]
    fn errors() {
        for s in [
            "",
            "Q 2",
            "P",
            "P 5",
            "P 2q",
            "P 2 2 2 2 2",
            "P 2 (x,y",
            "P 2 (1 2)",
            "P 61'",
            "P 2x 3",
            "A 4",
            "P 2 3 3",
        ] {
            assert!(parse_hall(s).is_err(), "{s:?}");
        }
    }
}
