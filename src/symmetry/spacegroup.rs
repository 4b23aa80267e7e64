//! Space groups: the table of settings, lookup by number / H-M symbol / Hall
//! symbol / operations, and the classification of a group.
//!
//! # Conventions
//! * A *setting* is one row of ITB Table A1.4.2.7 ([`Setting`], 530 rows). For
//!   each ITA number one row is the *reference setting* (the ITA standard: unique
//!   axis b for monoclinic groups, origin choice 2 where ITA gives two, hexagonal
//!   axes for R groups). Every other row carries `basisop`, the change of basis
//!   `x_setting = B·x_reference` (so `ops_setting = B·ops_reference·B⁻¹` and
//!   `h_reference = h_setting·B`).
//! * Lookup by number uses CCP4 numbers (1–230 plus e.g. 1004 = `P 1 1 21`,
//!   3018 = `P 2 21 21`): for the 24 groups with two origin choices, number and
//!   bare H-M symbol give origin choice 1, and `R 3` means hexagonal axes
//!   (`R 3:H`), as in CCP4 and gemmi. `:1`, `:2`, `:H`, `:R` select explicitly.
//! * A Hall symbol whose operations are not in the table but whose core (the
//!   symbol without its `(V)` suffix) is, is accepted as that group in a
//!   non-tabulated setting; its `basisop` is `V·B_core`.
//! * [`SpaceGroup::change_of_basis_to_primitive`] follows cctbx's
//!   `z2p_op()` (see [`PrimitiveBasis`]), which is what diffBragg uses for its
//!   `O` matrix.

use super::group::GroupOps;
use super::hall::{parse_hall, parse_hall_full};
use super::op::{Miller, Op};
use super::tables::SETTINGS;
use crate::conventions::Mat3;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

/// One tabulated setting.
#[derive(Debug)]
pub struct Setting {
    /// ITA space-group number, 1–230.
    pub number: u16,
    /// CCP4 space-group number (0 if CCP4 has none for this setting).
    pub ccp4: u16,
    /// Setting-specific H-M symbol as written in MTZ files, e.g. `P 1 21 1`, `R 3`.
    pub hm: &'static str,
    /// Setting qualifier: `""`, `"1"`/`"2"` (origin choice), `"H"`/`"R"` (axes).
    pub ext: &'static str,
    /// Full H-M symbol of ITA, e.g. `P 1 21/c 1`, `P 21/n 21/m 21/a`.
    pub full_hm: &'static str,
    /// Hall symbol (no leading space).
    pub hall: &'static str,
    /// Change of basis from the reference setting; `""` for the reference itself.
    pub basisop: &'static str,
    /// Newer ITA symbol with the `e` glide (e.g. `C c c e`), else `""`.
    pub alias: &'static str,
}

impl Setting {
    #[allow(clippy::too_many_arguments)]
    pub(crate) const fn new(
        number: u16,
        ccp4: u16,
        hm: &'static str,
        ext: &'static str,
        full_hm: &'static str,
        hall: &'static str,
        basisop: &'static str,
        alias: &'static str,
    ) -> Setting {
        Setting { number, ccp4, hm, ext, full_hm, hall, basisop, alias }
    }

    /// H-M symbol with its qualifier, e.g. `R 3:H`, `P n n n:1`.
    pub fn xhm(&self) -> String {
        if self.ext.is_empty() {
            self.hm.to_string()
        } else {
            format!("{}:{}", self.hm, self.ext)
        }
    }

    pub fn is_reference(&self) -> bool {
        self.basisop.is_empty()
    }
}

/// All tabulated settings, in ITB order.
pub fn settings() -> &'static [Setting] {
    &SETTINGS
}

/// The seven crystal systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrystalSystem {
    Triclinic,
    Monoclinic,
    Orthorhombic,
    Tetragonal,
    Trigonal,
    Hexagonal,
    Cubic,
}

impl CrystalSystem {
    pub fn name(self) -> &'static str {
        match self {
            CrystalSystem::Triclinic => "triclinic",
            CrystalSystem::Monoclinic => "monoclinic",
            CrystalSystem::Orthorhombic => "orthorhombic",
            CrystalSystem::Tetragonal => "tetragonal",
            CrystalSystem::Trigonal => "trigonal",
            CrystalSystem::Hexagonal => "hexagonal",
            CrystalSystem::Cubic => "cubic",
        }
    }
}

/// The 32 crystallographic point groups, in ITA order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PointGroup {
    C1,
    Ci,
    C2,
    Cs,
    C2h,
    D2,
    C2v,
    D2h,
    C4,
    S4,
    C4h,
    D4,
    C4v,
    D2d,
    D4h,
    C3,
    C3i,
    D3,
    C3v,
    D3d,
    C6,
    C3h,
    C6h,
    D6,
    C6v,
    D3h,
    D6h,
    T,
    Th,
    O,
    Td,
    Oh,
}

const PG_HM: [&str; 32] = [
    "1", "-1", "2", "m", "2/m", "222", "mm2", "mmm", "4", "-4", "4/m", "422", "4mm", "-42m", "4/mmm", "3",
    "-3", "32", "3m", "-3m", "6", "-6", "6/m", "622", "6mm", "-62m", "6/mmm", "23", "m-3", "432", "-43m",
    "m-3m",
];

/// Last ITA number of each point group, in [`PointGroup`] order.
const PG_LAST_NUMBER: [u16; 32] = [
    1, 2, 5, 9, 15, 24, 46, 74, 80, 82, 88, 98, 110, 122, 142, 146, 148, 155, 161, 167, 173, 174, 176, 182,
    186, 190, 194, 199, 206, 214, 220, 230,
];

impl PointGroup {
    const ALL: [PointGroup; 32] = {
        use PointGroup::*;
        [
            C1, Ci, C2, Cs, C2h, D2, C2v, D2h, C4, S4, C4h, D4, C4v, D2d, D4h, C3, C3i, D3, C3v, D3d, C6,
            C3h, C6h, D6, C6v, D3h, D6h, T, Th, O, Td, Oh,
        ]
    };

    /// The point group of space-group type `number` (1–230).
    pub fn of_number(number: u16) -> Option<PointGroup> {
        if !(1..=230).contains(&number) {
            return None;
        }
        PG_LAST_NUMBER.iter().position(|&last| number <= last).map(|i| PointGroup::ALL[i])
    }

    /// H-M symbol, e.g. `4/mmm`.
    pub fn hm(self) -> &'static str {
        PG_HM[self as usize]
    }

    /// The Laue class: the point group with an inversion centre added.
    pub fn laue(self) -> PointGroup {
        use PointGroup::*;
        match self {
            C1 | Ci => Ci,
            C2 | Cs | C2h => C2h,
            D2 | C2v | D2h => D2h,
            C4 | S4 | C4h => C4h,
            D4 | C4v | D2d | D4h => D4h,
            C3 | C3i => C3i,
            D3 | C3v | D3d => D3d,
            C6 | C3h | C6h => C6h,
            D6 | C6v | D3h | D6h => D6h,
            T | Th => Th,
            O | Td | Oh => Oh,
        }
    }

    pub fn crystal_system(self) -> CrystalSystem {
        use PointGroup::*;
        match self.laue() {
            Ci => CrystalSystem::Triclinic,
            C2h => CrystalSystem::Monoclinic,
            D2h => CrystalSystem::Orthorhombic,
            C4h | D4h => CrystalSystem::Tetragonal,
            C3i | D3d => CrystalSystem::Trigonal,
            C6h | D6h => CrystalSystem::Hexagonal,
            _ => CrystalSystem::Cubic,
        }
    }
}

/// The change of basis from a centred (conventional) cell to a primitive one,
/// as cctbx `space_group.z2p_op()` (table `conventional_z2p_matrices`).
///
/// * `c` maps conventional fractional coordinates to primitive ones
///   (`x_p = c·x`); integer entries.
/// * `c_inv` maps back; its **columns are the primitive basis vectors** in
///   conventional fractional coordinates.
/// * diffBragg's `O = transpose(rotation part of cb_op_to_primitive.c_inv())`
///   (`nanoBragg_crystal.Omatrix`). Hence the primitive real-space matrix is
///   `B_real·Oᵀ` (columns = primitive a, b, c), primitive indices are
///   `h_p = O·h` (integer exactly when h is not centring-absent) and
///   `h = O⁻¹·h_p = cᵀ·h_p`.
/// * ASU ids belong to conventional indices: map a primitive grid index back
///   with [`PrimitiveBasis::to_conventional_hkl`] before
///   [`super::ReciprocalAsu::to_asu`] (diffBragg's `linearize_Fhkl` applies O⁻¹
///   and then `asym_index`; its `_set_mtz_data` mixes the two bases, a
///   suspected bug for C/I/F/R lattices, `predict-and-stage2.md` T3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimitiveBasis {
    pub c: Op,
    pub c_inv: Op,
}

impl PrimitiveBasis {
    /// diffBragg's `O` matrix: `transpose(c_inv)` as f64.
    pub fn o_matrix(&self) -> Mat3 {
        let r = self.c_inv.rot_f64();
        Mat3::from_fn(|i, j| r[j][i])
    }

    /// `O⁻¹ = transpose(c)`.
    pub fn o_inverse(&self) -> Mat3 {
        let r = self.c.rot_f64();
        Mat3::from_fn(|i, j| r[j][i])
    }

    /// `h_p = O·h`, or `None` when h has no primitive index (centring-absent).
    pub fn to_primitive_hkl(&self, h: &Miller) -> Option<Miller> {
        self.c_inv.apply_to_hkl_exact(h)
    }

    /// `h = O⁻¹·h_p`; always integral.
    pub fn to_conventional_hkl(&self, hp: &Miller) -> Miller {
        self.c.apply_to_hkl(hp)
    }
}

fn z2p_matrix(centring: char) -> Option<[[i32; 3]; 3]> {
    Some(match centring {
        'P' => [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        'A' => [[-1, 0, 0], [0, -1, 1], [0, 1, 1]],
        'B' => [[-1, 0, 1], [0, -1, 0], [1, 0, 1]],
        'C' => [[1, 1, 0], [1, -1, 0], [0, 0, -1]],
        'I' => [[0, 1, 1], [1, 0, 1], [1, 1, 0]],
        'R' => [[1, 0, 1], [-1, 1, 1], [0, -1, 1]],
        'H' => [[1, 1, 0], [-1, 2, 0], [0, 0, 1]],
        'F' => [[-1, 1, 1], [1, -1, 1], [1, 1, -1]],
        _ => return None,
    })
}

/// A space group: its operations, its type (ITA number) and its setting.
#[derive(Clone, Debug)]
pub struct SpaceGroup {
    setting: Option<&'static Setting>,
    number: u16,
    hall: String,
    ops: GroupOps,
    basisop: Op,
}

impl PartialEq for SpaceGroup {
    /// Same operations (the same group in the same setting).
    fn eq(&self, other: &SpaceGroup) -> bool {
        self.ops.is_same_as(&other.ops)
    }
}

struct Index {
    groups: Vec<GroupOps>,
    by_ops: HashMap<Vec<Op>, usize>,
    by_name: HashMap<String, usize>,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let groups: Vec<GroupOps> = SETTINGS
            .iter()
            .map(|s| parse_hall(s.hall).unwrap_or_else(|e| panic!("table Hall symbol: {e}")))
            .collect();
        let mut by_ops = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            by_ops.entry(g.sorted_ops()).or_insert(i);
        }
        let mut by_name = HashMap::new();
        let mut add = |name: String, i: usize| {
            if let Some(k) = normalize_hm(&name) {
                by_name.entry(k).or_insert(i);
            }
        };
        for (i, s) in SETTINGS.iter().enumerate() {
            if !s.ext.is_empty() {
                add(s.xhm(), i);
            }
            add(s.hm.to_string(), i);
        }
        // secondary names only where they do not shadow a primary one
        for (i, s) in SETTINGS.iter().enumerate() {
            let t: Vec<&str> = s.hm.split(' ').collect();
            // monoclinic short names: "P 1 21/c 1" -> "P 21/c"; PDB's "B 2" = "B 1 1 2"
            if t.len() == 4 && t[1] == "1" && t[3] == "1" {
                add(format!("{} {}", t[0], t[2]), i);
            }
            if t.len() == 4 && t[0] == "B" && t[1] == "1" && t[2] == "1" {
                add(format!("B {}", t[3]), i);
            }
            add(s.full_hm.to_string(), i);
            if !s.alias.is_empty() {
                add(s.alias.to_string(), i);
                if !s.ext.is_empty() {
                    add(format!("{}:{}", s.alias, s.ext), i);
                }
            }
            // symbols of IT 1952 for centrosymmetric cubic groups: "P m 3" for "P m -3"
            if (200..=206).contains(&s.number) || (221..=230).contains(&s.number) {
                add(s.hm.replace("-3", "3"), i);
                if !s.ext.is_empty() {
                    add(format!("{}:{}", s.hm.replace("-3", "3"), s.ext), i);
                }
            }
        }
        Index { groups, by_ops, by_name }
    })
}

/// Canonical lookup key of an H-M symbol: no spaces, lattice letter upper
/// case, the rest lower case, the qualifier after `:` upper case; `H 3` means
/// `R 3:H` and `R3R` means `R 3:R`.
fn normalize_hm(name: &str) -> Option<String> {
    let s: String = name.chars().filter(|c| !c.is_whitespace() && *c != '_').collect();
    let (body, mut ext) = match s.split_once(':') {
        Some((b, e)) => (b.to_string(), Some(e.to_ascii_uppercase())),
        None => (s.clone(), None),
    };
    let mut chars = body.chars();
    let mut lattice = chars.next()?.to_ascii_uppercase();
    if !lattice.is_ascii_alphabetic() {
        return None;
    }
    let mut rest: String = chars.as_str().to_ascii_lowercase();
    if rest.is_empty() {
        return None;
    }
    if ext.is_none() && rest.len() > 1 && (rest.ends_with('h') || rest.ends_with('r')) {
        ext = Some(rest.pop().unwrap().to_ascii_uppercase().to_string());
    }
    if lattice == 'H' {
        lattice = 'R';
        if ext.is_none() {
            ext = Some("H".into());
        }
    }
    let mut key = format!("{lattice}{rest}");
    if let Some(e) = ext {
        if e.is_empty() {
            return None;
        }
        key.push(':');
        key.push_str(&e);
    }
    Some(key)
}

impl SpaceGroup {
    fn from_index(i: usize) -> SpaceGroup {
        let s = &SETTINGS[i];
        SpaceGroup {
            setting: Some(s),
            number: s.number,
            hall: s.hall.to_string(),
            ops: index().groups[i].clone(),
            basisop: setting_basisop(s),
        }
    }

    /// P 1.
    pub fn p1() -> SpaceGroup {
        SpaceGroup::from_index(0)
    }

    /// By CCP4 number: 1–230 (origin choice 1, hexagonal axes where there is a
    /// choice) or a CCP4 alternative-setting code such as 1004 (`P 1 1 21`).
    pub fn from_number(n: u32) -> Result<SpaceGroup> {
        SETTINGS
            .iter()
            .position(|s| s.ccp4 as u32 == n)
            .map(SpaceGroup::from_index)
            .ok_or_else(|| Error::msg(format!("unknown space-group number {n}")))
    }

    /// The reference (ITA standard) setting of ITA number `n`.
    pub fn reference_setting(n: u16) -> Result<SpaceGroup> {
        SETTINGS
            .iter()
            .position(|s| s.number == n && s.is_reference())
            .map(SpaceGroup::from_index)
            .ok_or_else(|| Error::msg(format!("unknown space-group number {n}")))
    }

    /// By Hermann–Mauguin symbol: spaces optional, lattice letter in either
    /// case (`P41212` == `p 41 21 2` == `P 41 21 2`), monoclinic short forms
    /// (`P21`, `C2`, `P21/c`), full symbols (`P 21/n 21/m 21/a`), `e` glides
    /// (`C m c e`), `:1`/`:2`/`:H`/`:R` qualifiers and `H 3` for `R 3:H`.
    pub fn from_hm(name: &str) -> Result<SpaceGroup> {
        normalize_hm(name)
            .and_then(|k| index().by_name.get(&k).copied())
            .map(SpaceGroup::from_index)
            .ok_or_else(|| Error::msg(format!("unknown space-group symbol `{}`", name.trim())))
    }

    /// By Hall symbol, e.g. `" P 4nw 2abw"` or `" P 61 2 (x,y,z+5/12)"`.
    pub fn from_hall(hall: &str) -> Result<SpaceGroup> {
        let parsed = parse_hall_full(hall).map_err(Error::msg)?;
        let idx = index();
        if let Some(&i) = idx.by_ops.get(&parsed.ops.sorted_ops()) {
            return Ok(SpaceGroup {
                hall: hall.trim().to_string(),
                ops: parsed.ops,
                ..SpaceGroup::from_index(i)
            });
        }
        if let (Some(v), Some(&i)) = (parsed.change_of_basis, idx.by_ops.get(&parsed.core.sorted_ops())) {
            let s = &SETTINGS[i];
            let basisop = v.try_combine(&setting_basisop(s)).ok_or_else(|| {
                Error::msg(format!("Hall symbol `{}`: change of basis is not exact", hall.trim()))
            })?;
            return Ok(SpaceGroup {
                setting: None,
                number: s.number,
                hall: hall.trim().to_string(),
                ops: parsed.ops,
                basisop,
            });
        }
        Err(Error::msg(format!(
            "Hall symbol `{}`: a valid group, but not a setting this program knows (no match in ITB Table A1.4.2.7)",
            hall.trim()
        )))
    }

    /// By a full set of operations (e.g. MTZ `SYMM` records); the group must be
    /// a tabulated setting. The given operation order is kept (it defines ISYM).
    pub fn from_ops(ops: GroupOps) -> Result<SpaceGroup> {
        match index().by_ops.get(&ops.sorted_ops()) {
            Some(&i) => Ok(SpaceGroup { ops, ..SpaceGroup::from_index(i) }),
            None => Err(Error::msg(format!(
                "symmetry operations ({}) match no tabulated space-group setting",
                ops.all_ops().iter().map(|o| o.triplet()).collect::<Vec<_>>().join("; ")
            ))),
        }
    }

    /// This group with its operations listed in another order (e.g. that of an
    /// MTZ file's `SYMM` records); `Err` if `ops` is not the same set.
    pub fn with_ops(&self, ops: GroupOps) -> Result<SpaceGroup> {
        if !ops.is_same_as(&self.ops) {
            return Err(Error::msg(format!("the operations are not those of {}", self.hm())));
        }
        Ok(SpaceGroup { ops, ..self.clone() })
    }

    /// A number, an H-M symbol or a Hall symbol, tried in that order (so `P 2`
    /// is the H-M `P 1 2 1`, not the Hall `P 2` = `P 1 1 2`).
    pub fn parse(s: &str) -> Result<SpaceGroup> {
        let t = s.trim();
        if t.is_empty() {
            return Err(Error::msg("empty space-group symbol"));
        }
        if t.chars().all(|c| c.is_ascii_digit()) {
            let n: u32 = t.parse().map_err(|_| Error::msg(format!("bad space-group number `{t}`")))?;
            return SpaceGroup::from_number(n);
        }
        SpaceGroup::from_hm(t).or_else(|_| SpaceGroup::from_hall(t)).map_err(|_| {
            Error::msg(format!(
                "`{t}` is neither a known space-group number, Hermann–Mauguin symbol nor Hall symbol"
            ))
        })
    }

    /// ITA number.
    pub fn number(&self) -> u16 {
        self.number
    }

    /// CCP4 number of the setting (the ITA number for non-tabulated settings).
    pub fn ccp4_number(&self) -> u16 {
        match self.setting {
            Some(s) if s.ccp4 != 0 => s.ccp4,
            _ => self.number,
        }
    }

    /// The tabulated setting, if this is one.
    pub fn setting(&self) -> Option<&'static Setting> {
        self.setting
    }

    /// H-M symbol with qualifier (`P 41 21 2`, `R 3:H`); for a non-tabulated
    /// setting the reference symbol followed by the basis change, e.g.
    /// `P 1 21 1 (x,y,z+1/4)`.
    pub fn hm(&self) -> String {
        match self.setting {
            Some(s) => s.xhm(),
            None => {
                let r = reference_entry(self.number);
                format!("{} ({})", r.xhm(), self.basisop.triplet())
            }
        }
    }

    /// Compact H-M symbol without spaces: monoclinic settings with unique axis
    /// b drop the 1s (`P21`, `C2`, `P21/c`); otherwise the spaces are removed
    /// (`P41212`, `P1121`, `R3:H`).
    pub fn short_hm(&self) -> String {
        let hm = self.hm();
        let t: Vec<&str> = hm.split(' ').collect();
        let s =
            if t.len() == 4 && t[1] == "1" && t[3] == "1" { format!("{}{}", t[0], t[2]) } else { hm.clone() };
        s.replace(' ', "")
    }

    /// Full H-M symbol of ITA (`P 21/n 21/m 21/a`), for tabulated settings.
    pub fn full_hm(&self) -> Option<&'static str> {
        self.setting.map(|s| s.full_hm)
    }

    /// The Hall symbol this group was built from (trimmed).
    pub fn hall(&self) -> &str {
        &self.hall
    }

    pub fn ops(&self) -> &GroupOps {
        &self.ops
    }

    /// Every operation (centring included), in MTZ `SYMM` order.
    pub fn all_ops(&self) -> Vec<Op> {
        self.ops.all_ops()
    }

    pub fn order(&self) -> usize {
        self.ops.order()
    }

    /// Change of basis from the reference setting (`x = B·x_ref`).
    pub fn basisop(&self) -> &Op {
        &self.basisop
    }

    pub fn is_reference_setting(&self) -> bool {
        self.basisop.is_identity()
    }

    /// The same group type in its reference setting.
    pub fn reference(&self) -> SpaceGroup {
        SpaceGroup::reference_setting(self.number).expect("number comes from the table")
    }

    /// Lattice (centring) symbol of the operations: P A B C I R S T H F, or
    /// `None` for an unconventional centring (possible only after a change of basis).
    pub fn centring(&self) -> Option<char> {
        self.ops.find_centring()
    }

    /// Lattice letter written in MTZ `SYMINF`: `H` for R groups on hexagonal
    /// axes, else the first letter of the H-M symbol (`R` on rhombohedral axes).
    pub fn ccp4_lattice_type(&self) -> char {
        match self.setting {
            Some(s) if s.ext == "H" => 'H',
            Some(s) => s.hm.chars().next().unwrap_or('P'),
            None => self.centring().unwrap_or('P'),
        }
    }

    pub fn point_group(&self) -> PointGroup {
        PointGroup::of_number(self.number).expect("number in 1..=230")
    }

    pub fn laue_class(&self) -> PointGroup {
        self.point_group().laue()
    }

    pub fn crystal_system(&self) -> CrystalSystem {
        self.point_group().crystal_system()
    }

    /// A rhombohedral group described on rhombohedral axes (`R 3:R`).
    pub fn is_rhombohedral_axes(&self) -> bool {
        reference_entry(self.number).hm.starts_with('R') && self.centring() == Some('P')
    }

    pub fn is_centrosymmetric(&self) -> bool {
        self.ops.is_centrosymmetric()
    }

    pub fn is_sys_absent(&self, h: &Miller) -> bool {
        self.ops.is_sys_absent(h)
    }

    pub fn is_centric(&self, h: &Miller) -> bool {
        self.ops.is_centric(h)
    }

    /// Operations (centring included) fixing h (gemmi `epsilon_factor`).
    pub fn epsilon(&self, h: &Miller) -> usize {
        self.ops.epsilon(h)
    }

    /// Primitive operations fixing h (cctbx `epsilon`).
    pub fn epsilon_without_centring(&self, h: &Miller) -> usize {
        self.ops.epsilon_without_centring(h)
    }

    /// Conventional → primitive change of basis (cctbx `z2p_op`); see
    /// [`PrimitiveBasis`] for how diffBragg's `O` matrix is built from it.
    /// Identity for primitive groups; `Err` for S/T or unconventional centrings.
    pub fn change_of_basis_to_primitive(&self) -> Result<PrimitiveBasis> {
        let z = self.centring().ok_or_else(|| {
            Error::msg(format!("space group {}: unconventional centring, no primitive basis", self.hm()))
        })?;
        let m = z2p_matrix(z).ok_or_else(|| {
            Error::msg(format!("space group {}: no conventional primitive basis for lattice {z}", self.hm()))
        })?;
        let c = Op::from_int_rot(m, [0, 0, 0]);
        let c_inv = c.inverse().expect("z2p matrices are invertible in 1/24");
        Ok(PrimitiveBasis { c, c_inv })
    }
}

impl fmt::Display for SpaceGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (No. {})", self.hm(), self.number)
    }
}

impl std::str::FromStr for SpaceGroup {
    type Err = Error;
    fn from_str(s: &str) -> Result<SpaceGroup> {
        SpaceGroup::parse(s)
    }
}

fn setting_basisop(s: &Setting) -> Op {
    if s.basisop.is_empty() {
        Op::IDENTITY
    } else {
        Op::parse_triplet(s.basisop).unwrap_or_else(|e| panic!("table basis op: {e}"))
    }
}

fn reference_entry(number: u16) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.number == number && s.is_reference())
        .expect("every number has a reference setting")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lookup() {
        let a = SpaceGroup::from_hm("P41212").unwrap();
        let b = SpaceGroup::from_hm("p 41 21 2").unwrap();
        assert_eq!(a.number(), 92);
        assert_eq!(b.number(), 92);
        assert_eq!(SpaceGroup::from_hm("P 1 21 1").unwrap().number(), 4);
        assert_eq!(SpaceGroup::from_hm("P21").unwrap().hm(), "P 1 21 1");
        assert_eq!(SpaceGroup::from_hm("C2").unwrap().hm(), "C 1 2 1");
        assert_eq!(SpaceGroup::from_hm("P 21/c").unwrap().hm(), "P 1 21/c 1");
        assert_eq!(SpaceGroup::from_hm("R 3 :H").unwrap().hm(), "R 3:H");
        assert_eq!(SpaceGroup::from_hm("H 3").unwrap().hm(), "R 3:H");
        assert_eq!(SpaceGroup::from_hm("R3").unwrap().hm(), "R 3:H");
        assert_eq!(SpaceGroup::from_hm("R 3 2:R").unwrap().hm(), "R 3 2:R");
        assert_eq!(SpaceGroup::from_hm("R32R").unwrap().hm(), "R 3 2:R");
        assert_eq!(SpaceGroup::from_hm("Fd3m").unwrap().hm(), "F d -3 m:1");
        assert_eq!(SpaceGroup::from_hm("F d -3 m:2").unwrap().hm(), "F d -3 m:2");
        assert_eq!(SpaceGroup::from_hm("C m c e").unwrap().number(), 64);
        assert_eq!(SpaceGroup::from_hm("P 21/n 21/m 21/a").unwrap().number(), 62);
        assert!(SpaceGroup::from_hm("P 5").is_err());
        assert!(SpaceGroup::from_hm("").is_err());
        assert!(SpaceGroup::from_hm(":").is_err());
    }

    #[test]
    fn number_and_hall_lookup() {
        assert_eq!(SpaceGroup::from_number(19).unwrap().hm(), "P 21 21 21");
        assert_eq!(SpaceGroup::from_number(1004).unwrap().hm(), "P 1 1 21");
        assert!(SpaceGroup::from_number(231).is_err());
        let g = SpaceGroup::from_hall(" P 4nw 2abw").unwrap();
        assert_eq!(g.number(), 96);
        assert_eq!(g.hm(), "P 43 21 2");
        let g = SpaceGroup::from_hall(" P 61 2 (x,y,z+5/12)").unwrap();
        assert_eq!(g.number(), 178);
        assert!(g.is_reference_setting());
        assert_eq!(SpaceGroup::parse("P 2").unwrap().hm(), "P 1 2 1");
        assert_eq!(SpaceGroup::parse(" P 2yb").unwrap().number(), 4);
        assert_eq!(SpaceGroup::parse("96").unwrap().number(), 96);
        // a setting outside the table, recognised through its core
        let g = SpaceGroup::from_hall(" P 2yb (x,y,z+1/4)").unwrap();
        assert_eq!(g.number(), 4);
        assert!(g.setting().is_none());
        assert_eq!(g.hm(), "P 1 21 1 (x,y,z+1/4)");
    }

    #[test]
    fn table_basis_ops_relate_each_setting_to_its_reference() {
        for (i, s) in SETTINGS.iter().enumerate() {
            let sg = SpaceGroup::from_index(i);
            let moved = sg.reference().ops().change_basis(sg.basisop()).unwrap();
            assert!(moved.is_same_as(sg.ops()), "{} {}", s.xhm(), s.basisop);
            assert_eq!(sg.number(), s.number);
        }
        // every H-M symbol of the table finds a setting with the same operations
        for s in SETTINGS.iter() {
            let sg = SpaceGroup::from_hm(&s.xhm()).unwrap();
            assert!(sg.ops().is_same_as(&parse_hall(s.hall).unwrap()), "{}", s.xhm());
        }
    }

    #[test]
    fn classification() {
        let g = SpaceGroup::from_hm("R 3:R").unwrap();
        assert!(g.is_rhombohedral_axes());
        assert_eq!(g.crystal_system(), CrystalSystem::Trigonal);
        assert!(!SpaceGroup::from_hm("R 3:H").unwrap().is_rhombohedral_axes());
        assert_eq!(SpaceGroup::from_hm("P 4/m m m").unwrap().laue_class().hm(), "4/mmm");
        assert_eq!(SpaceGroup::from_hm("P 21 3").unwrap().point_group(), PointGroup::T);
        assert_eq!(SpaceGroup::from_hm("P 1 21 1").unwrap().short_hm(), "P21");
        assert_eq!(SpaceGroup::from_hm("P 41 21 2").unwrap().short_hm(), "P41212");
    }
}
