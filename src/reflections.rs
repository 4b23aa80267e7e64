//! The DIALS reflection table: named, typed columns of equal length.
//!
//! Conventions (the same as DIALS; see `docs/formats.md` §2):
//! * A table has `nrows` rows (reflections) and any number of columns. Every column holds
//!   exactly `nrows` values of one type from a closed set ([`ColumnType`]): the DIALS
//!   `bool, int, std::size_t, double, vec2<double>, vec3<double>, mat3<double>, int6,
//!   cctbx::miller::index<>, Shoebox<>`. `std::string` columns are not modelled (DIALS cannot
//!   store them in a `.refl` file, dials#1858).
//! * `mat3<double>` is row-major (`m[3*i + j]` is row i, column j).
//! * `id` (int) is a file-local experiment index; `identifiers` maps it to the experiment's
//!   identifier string (a UUID) in the matching `.expt`.
//! * Pixel positions (`xyzobs.px.value`, `xyzcal.px`) are (fast, slow, frame) with the
//!   pixel-corner origin: the first pixel spans 0..1 (see `conventions`).
//! * `bbox` / shoebox bounds are `(x0, x1, y0, y1, z0, z1)`, half-open, in pixels and frames;
//!   they may be negative or run past the panel.
//! * Shoebox pixel arrays are C-ordered `[z][y][x]`: voxel (z, y, x) relative to (z0, y0, x0)
//!   is at `(z * ny + y) * nx + x` with `nx = x1 - x0`, `ny = y1 - y0`, `nz = z1 - z0`.
//! * `flags` (std::size_t) is a bit field; the bit values are in [`flags`]. Shoebox mask bits
//!   are in [`mask_code`].
//!
//! Row order is preserved by every operation; nothing here reorders or renumbers `id`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Reflection state bits of the `flags` column (DIALS `reflection_table.h`).
pub mod flags {
    pub const PREDICTED: u64 = 1 << 0;
    pub const OBSERVED: u64 = 1 << 1;
    pub const INDEXED: u64 = 1 << 2;
    pub const USED_IN_REFINEMENT: u64 = 1 << 3;
    /// Note: bit 5, not 4 (bit 4 is unused in DIALS).
    pub const STRONG: u64 = 1 << 5;
    pub const REFERENCE_SPOT: u64 = 1 << 6;
    pub const DONT_INTEGRATE: u64 = 1 << 7;
    pub const INTEGRATED_SUM: u64 = 1 << 8;
    pub const INTEGRATED_PRF: u64 = 1 << 9;
    pub const INTEGRATED: u64 = INTEGRATED_SUM | INTEGRATED_PRF;
    pub const OVERLOADED: u64 = 1 << 10;
    pub const OVERLAPPED_BG: u64 = 1 << 11;
    pub const OVERLAPPED_FG: u64 = 1 << 12;
    pub const IN_POWDER_RING: u64 = 1 << 13;
    pub const FOREGROUND_INCLUDES_BAD_PIXELS: u64 = 1 << 14;
    pub const BACKGROUND_INCLUDES_BAD_PIXELS: u64 = 1 << 15;
    pub const INCLUDES_BAD_PIXELS: u64 = FOREGROUND_INCLUDES_BAD_PIXELS | BACKGROUND_INCLUDES_BAD_PIXELS;
    pub const BAD_SHOEBOX: u64 =
        OVERLOADED | OVERLAPPED_BG | OVERLAPPED_FG | IN_POWDER_RING | INCLUDES_BAD_PIXELS;
    pub const USED_IN_MODELLING: u64 = 1 << 16;
    pub const CENTROID_OUTLIER: u64 = 1 << 17;
    pub const FAILED_DURING_BACKGROUND_MODELLING: u64 = 1 << 18;
    pub const FAILED_DURING_SUMMATION: u64 = 1 << 19;
    pub const FAILED_DURING_PROFILE_FITTING: u64 = 1 << 20;
    pub const BAD_REFERENCE: u64 = 1 << 21;
    pub const USER_EXCLUDED_IN_SCALING: u64 = 1 << 22;
    pub const OUTLIER_IN_SCALING: u64 = 1 << 23;
    pub const EXCLUDED_FOR_SCALING: u64 = 1 << 24;
    pub const BAD_FOR_SCALING: u64 = USER_EXCLUDED_IN_SCALING | OUTLIER_IN_SCALING | EXCLUDED_FOR_SCALING;
    pub const EXCLUDED_FOR_REFINEMENT: u64 = 1 << 25;
    pub const BAD_FOR_REFINEMENT: u64 = EXCLUDED_FOR_REFINEMENT | CENTROID_OUTLIER;
    pub const SCALED: u64 = 1 << 26;
    /// Newer DIALS only (formats.md §2.5).
    pub const NOT_SUITABLE_FOR_REFINEMENT: u64 = 1 << 27;

    /// True when every bit of `flag` is set in `value` (DIALS `get_flags(flag, all=True)`).
    pub fn has_flag(value: u64, flag: u64) -> bool {
        value & flag == flag
    }

    /// True when at least one bit of `flag` is set in `value` (`get_flags(flag, all=False)`).
    pub fn has_any_flag(value: u64, flag: u64) -> bool {
        value & flag != 0
    }
}

/// Per-voxel shoebox mask bits (DIALS `mask_code.h`).
pub mod mask_code {
    pub const VALID: i32 = 1;
    pub const BACKGROUND: i32 = 2;
    pub const FOREGROUND: i32 = 4;
    pub const STRONG: i32 = 8;
    pub const BACKGROUND_USED: i32 = 16;
    pub const OVERLAPPED: i32 = 32;
}

/// The closed set of DIALS column types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ColumnType {
    Bool,
    Int,
    Size,
    Double,
    Vec2,
    Vec3,
    Mat3,
    Int6,
    Miller,
    Shoebox,
}

impl ColumnType {
    pub const ALL: [ColumnType; 10] = [
        ColumnType::Bool,
        ColumnType::Int,
        ColumnType::Size,
        ColumnType::Double,
        ColumnType::Vec2,
        ColumnType::Vec3,
        ColumnType::Mat3,
        ColumnType::Int6,
        ColumnType::Miller,
        ColumnType::Shoebox,
    ];

    /// The type name DIALS writes in `.refl` files.
    pub fn dials_name(self) -> &'static str {
        match self {
            ColumnType::Bool => "bool",
            ColumnType::Int => "int",
            ColumnType::Size => "std::size_t",
            ColumnType::Double => "double",
            ColumnType::Vec2 => "vec2<double>",
            ColumnType::Vec3 => "vec3<double>",
            ColumnType::Mat3 => "mat3<double>",
            ColumnType::Int6 => "int6",
            ColumnType::Miller => "cctbx::miller::index<>",
            ColumnType::Shoebox => "Shoebox<>",
        }
    }

    pub fn from_dials_name(name: &str) -> Option<ColumnType> {
        ColumnType::ALL.into_iter().find(|t| t.dials_name() == name)
    }

    /// Bytes per element in a `.refl` blob; `None` for the variable-size shoebox.
    pub fn element_size(self) -> Option<usize> {
        match self {
            ColumnType::Bool => Some(1),
            ColumnType::Int => Some(4),
            ColumnType::Size | ColumnType::Double => Some(8),
            ColumnType::Vec2 => Some(16),
            ColumnType::Vec3 | ColumnType::Int6 => Some(24),
            ColumnType::Mat3 => Some(72),
            ColumnType::Miller => Some(12),
            ColumnType::Shoebox => None,
        }
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dials_name())
    }
}

/// A shoebox mask keeps the width it was stored with, so a table round-trips losslessly:
/// table version 1 files hold int32 masks, version 2 files (DIALS ≥ 2026-04) hold bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum ShoeboxMask {
    I32(Vec<i32>),
    U8(Vec<u8>),
}

impl ShoeboxMask {
    pub fn len(&self) -> usize {
        match self {
            ShoeboxMask::I32(m) => m.len(),
            ShoeboxMask::U8(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mask value of voxel `i` (C order), widened to i32; `None` past the end.
    pub fn get(&self, i: usize) -> Option<i32> {
        match self {
            ShoeboxMask::I32(m) => m.get(i).copied(),
            ShoeboxMask::U8(m) => m.get(i).map(|&v| v as i32),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = i32> + '_ {
        (0..self.len()).filter_map(move |i| self.get(i))
    }
}

/// Pixel arrays of one shoebox, each with `nz * ny * nx` values in C order `[z][y][x]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShoeboxData {
    pub data: Vec<f32>,
    pub mask: ShoeboxMask,
    pub background: Vec<f32>,
}

/// One reflection's shoebox: panel, bounding box and (optionally) its pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Shoebox {
    pub panel: u32,
    /// (x0, x1, y0, y1, z0, z1), half-open.
    pub bbox: [i32; 6],
    pub data: Option<ShoeboxData>,
}

impl Shoebox {
    /// (nz, ny, nx), or an error if the box is inverted (x1 < x0 etc.).
    pub fn shape(&self) -> std::result::Result<[usize; 3], String> {
        let [x0, x1, y0, y1, z0, z1] = self.bbox.map(i64::from);
        if x1 < x0 || y1 < y0 || z1 < z0 {
            return Err(format!("inverted bounding box {:?}", self.bbox));
        }
        // Differences of two i32 fit in u32, hence in usize on every supported target.
        Ok([(z1 - z0) as usize, (y1 - y0) as usize, (x1 - x0) as usize])
    }

    /// nz·ny·nx as u64 (checked: three extents of up to 2^32 can overflow u64).
    pub fn num_voxels(&self) -> std::result::Result<u64, String> {
        let [nz, ny, nx] = self.shape()?;
        (nz as u64)
            .checked_mul(ny as u64)
            .and_then(|v| v.checked_mul(nx as u64))
            .ok_or_else(|| format!("bounding box {:?} has too many voxels", self.bbox))
    }

    /// Check the bounding box and that every pixel array has nz·ny·nx values.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.num_voxels()?;
        if let Some(d) = &self.data {
            for (what, len) in
                [("data", d.data.len()), ("mask", d.mask.len()), ("background", d.background.len())]
            {
                if len as u64 != n {
                    return Err(format!(
                        "shoebox {what} has {len} values, bounding box {:?} needs {n}",
                        self.bbox
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One typed column. The variant fixes the DIALS type.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    Bool(Vec<bool>),
    Int(Vec<i32>),
    Size(Vec<u64>),
    Double(Vec<f64>),
    Vec2(Vec<[f64; 2]>),
    Vec3(Vec<[f64; 3]>),
    Mat3(Vec<[f64; 9]>),
    Int6(Vec<[i32; 6]>),
    Miller(Vec<[i32; 3]>),
    Shoebox(Vec<Shoebox>),
}

/// Apply `$e` (with `$v` bound to the inner Vec) to any column variant.
macro_rules! each_column {
    ($col:expr, $v:ident => $e:expr) => {
        match $col {
            Column::Bool($v) => $e,
            Column::Int($v) => $e,
            Column::Size($v) => $e,
            Column::Double($v) => $e,
            Column::Vec2($v) => $e,
            Column::Vec3($v) => $e,
            Column::Mat3($v) => $e,
            Column::Int6($v) => $e,
            Column::Miller($v) => $e,
            Column::Shoebox($v) => $e,
        }
    };
}

/// Like `each_column!` but wraps the result back into the same variant.
macro_rules! map_column {
    ($col:expr, $v:ident => $e:expr) => {
        match $col {
            Column::Bool($v) => Column::Bool($e),
            Column::Int($v) => Column::Int($e),
            Column::Size($v) => Column::Size($e),
            Column::Double($v) => Column::Double($e),
            Column::Vec2($v) => Column::Vec2($e),
            Column::Vec3($v) => Column::Vec3($e),
            Column::Mat3($v) => Column::Mat3($e),
            Column::Int6($v) => Column::Int6($e),
            Column::Miller($v) => Column::Miller($e),
            Column::Shoebox($v) => Column::Shoebox($e),
        }
    };
}

impl Column {
    pub fn column_type(&self) -> ColumnType {
        match self {
            Column::Bool(_) => ColumnType::Bool,
            Column::Int(_) => ColumnType::Int,
            Column::Size(_) => ColumnType::Size,
            Column::Double(_) => ColumnType::Double,
            Column::Vec2(_) => ColumnType::Vec2,
            Column::Vec3(_) => ColumnType::Vec3,
            Column::Mat3(_) => ColumnType::Mat3,
            Column::Int6(_) => ColumnType::Int6,
            Column::Miller(_) => ColumnType::Miller,
            Column::Shoebox(_) => ColumnType::Shoebox,
        }
    }

    pub fn len(&self) -> usize {
        each_column!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows at `indices` (in that order, repeats allowed). Indices must be in range:
    /// [`ReflectionTable::select_indices`] checks them.
    fn take(&self, indices: &[usize]) -> Column {
        map_column!(self, v => pick(v, indices))
    }

    /// Append `other` (same type) to this column.
    fn append(&mut self, other: &Column) -> std::result::Result<(), ColumnType> {
        match (self, other) {
            (Column::Bool(a), Column::Bool(b)) => a.extend_from_slice(b),
            (Column::Int(a), Column::Int(b)) => a.extend_from_slice(b),
            (Column::Size(a), Column::Size(b)) => a.extend_from_slice(b),
            (Column::Double(a), Column::Double(b)) => a.extend_from_slice(b),
            (Column::Vec2(a), Column::Vec2(b)) => a.extend_from_slice(b),
            (Column::Vec3(a), Column::Vec3(b)) => a.extend_from_slice(b),
            (Column::Mat3(a), Column::Mat3(b)) => a.extend_from_slice(b),
            (Column::Int6(a), Column::Int6(b)) => a.extend_from_slice(b),
            (Column::Miller(a), Column::Miller(b)) => a.extend_from_slice(b),
            (Column::Shoebox(a), Column::Shoebox(b)) => a.extend_from_slice(b),
            (_, b) => return Err(b.column_type()),
        }
        Ok(())
    }
}

fn pick<T: Clone>(v: &[T], indices: &[usize]) -> Vec<T> {
    indices.iter().map(|&i| v[i].clone()).collect()
}

macro_rules! column_from {
    ($($variant:ident: $t:ty),*) => {$(
        impl From<Vec<$t>> for Column {
            fn from(v: Vec<$t>) -> Column {
                Column::$variant(v)
            }
        }
    )*};
}
column_from!(Bool: bool, Int: i32, Size: u64, Double: f64, Vec2: [f64; 2], Vec3: [f64; 3], Mat3: [f64; 9],
    Int6: [i32; 6], Miller: [i32; 3], Shoebox: Shoebox);

fn wrong_type(name: &str, found: ColumnType, expected: ColumnType) -> Error {
    Error::msg(format!("reflection table column `{name}` has type {found}, expected {expected}"))
}

/// A DIALS reflection table. Invariant: every column has exactly `nrows` values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReflectionTable {
    nrows: usize,
    /// Experiment index (`id` column value) → experiment identifier (UUID string).
    pub identifiers: BTreeMap<u64, String>,
    columns: BTreeMap<String, Column>,
}

macro_rules! typed_getters {
    ($($get:ident, $get_mut:ident, $variant:ident, $t:ty;)*) => {$(
        #[doc = concat!("The column `name` as `", stringify!($t), "` values; errors if it is missing or of another type.")]
        pub fn $get(&self, name: &str) -> Result<&[$t]> {
            match self.column(name)? {
                Column::$variant(v) => Ok(v),
                other => Err(wrong_type(name, other.column_type(), ColumnType::$variant)),
            }
        }

        #[doc = concat!("Mutable `", stringify!($t), "` values of column `name` (the length cannot change).")]
        pub fn $get_mut(&mut self, name: &str) -> Result<&mut [$t]> {
            let found = self.column(name)?.column_type();
            match self.columns.get_mut(name) {
                Some(Column::$variant(v)) => Ok(v),
                _ => Err(wrong_type(name, found, ColumnType::$variant)),
            }
        }
    )*};
}

impl ReflectionTable {
    /// An empty table (no columns) with `nrows` rows.
    pub fn new(nrows: usize) -> ReflectionTable {
        ReflectionTable { nrows, identifiers: BTreeMap::new(), columns: BTreeMap::new() }
    }

    pub fn nrows(&self) -> usize {
        self.nrows
    }

    pub fn ncols(&self) -> usize {
        self.columns.len()
    }

    /// Column names in byte order (the order DIALS writes them).
    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.keys().map(String::as_str)
    }

    /// (name, column) pairs in byte order of the names.
    pub fn columns(&self) -> impl Iterator<Item = (&str, &Column)> {
        self.columns.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.columns.contains_key(name)
    }

    /// The column `name`, or an error listing the columns that exist.
    pub fn column(&self, name: &str) -> Result<&Column> {
        self.columns.get(name).ok_or_else(|| {
            let have: Vec<&str> = self.column_names().collect();
            Error::msg(format!("reflection table has no column `{name}` (columns: {})", have.join(", ")))
        })
    }

    typed_getters! {
        get_bool, get_bool_mut, Bool, bool;
        get_int, get_int_mut, Int, i32;
        get_size, get_size_mut, Size, u64;
        get_double, get_double_mut, Double, f64;
        get_vec2, get_vec2_mut, Vec2, [f64; 2];
        get_vec3, get_vec3_mut, Vec3, [f64; 3];
        get_mat3, get_mat3_mut, Mat3, [f64; 9];
        get_int6, get_int6_mut, Int6, [i32; 6];
        get_miller, get_miller_mut, Miller, [i32; 3];
        get_shoebox, get_shoebox_mut, Shoebox, Shoebox;
    }

    /// Add or replace column `name`; returns the column it replaced. The column must have
    /// `nrows` values.
    pub fn insert(&mut self, name: &str, column: impl Into<Column>) -> Result<Option<Column>> {
        let column = column.into();
        if column.len() != self.nrows {
            return Err(Error::msg(format!(
                "cannot set column `{name}`: it has {} values but the table has {} rows",
                column.len(),
                self.nrows
            )));
        }
        if name.is_empty() {
            return Err(Error::msg("cannot set a column with an empty name"));
        }
        Ok(self.columns.insert(name.to_string(), column))
    }

    pub fn remove(&mut self, name: &str) -> Option<Column> {
        self.columns.remove(name)
    }

    /// Rows where `mask` is true. `mask` must have `nrows` entries. Identifiers are kept.
    pub fn select(&self, mask: &[bool]) -> Result<ReflectionTable> {
        if mask.len() != self.nrows {
            return Err(Error::msg(format!(
                "selection mask has {} entries but the table has {} rows",
                mask.len(),
                self.nrows
            )));
        }
        let indices: Vec<usize> = mask.iter().enumerate().filter(|(_, &m)| m).map(|(i, _)| i).collect();
        Ok(self.take_unchecked(&indices))
    }

    /// Rows at `indices`, in that order (repeats allowed). Identifiers are kept.
    pub fn select_indices(&self, indices: &[usize]) -> Result<ReflectionTable> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.nrows) {
            return Err(Error::msg(format!("row index {bad} out of range (table has {} rows)", self.nrows)));
        }
        Ok(self.take_unchecked(indices))
    }

    fn take_unchecked(&self, indices: &[usize]) -> ReflectionTable {
        ReflectionTable {
            nrows: indices.len(),
            identifiers: self.identifiers.clone(),
            columns: self.columns.iter().map(|(k, c)| (k.clone(), c.take(indices))).collect(),
        }
    }

    /// Rows with `id == id`. The result keeps only the identifier of that experiment (the
    /// `id` values themselves are not renumbered).
    pub fn select_id(&self, id: i32) -> Result<ReflectionTable> {
        let mask: Vec<bool> = self.get_int("id")?.iter().map(|&v| v == id).collect();
        let mut out = self.select(&mask)?;
        out.identifiers.retain(|&k, _| i64::try_from(k).ok() == Some(i64::from(id)));
        Ok(out)
    }

    /// The distinct values of the `id` column, sorted.
    pub fn distinct_ids(&self) -> Result<Vec<i32>> {
        let mut ids: Vec<i32> = self.get_int("id")?.to_vec();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Rows whose `flags` have every bit of `flag` set.
    pub fn get_flags(&self, flag: u64) -> Result<Vec<bool>> {
        Ok(self.get_size("flags")?.iter().map(|&v| flags::has_flag(v, flag)).collect())
    }

    /// Set (or clear) the bits `flag` in `flags` on the rows where `mask` is true.
    pub fn set_flags(&mut self, mask: &[bool], flag: u64, on: bool) -> Result<()> {
        if mask.len() != self.nrows {
            return Err(Error::msg(format!(
                "flag mask has {} entries but the table has {} rows",
                mask.len(),
                self.nrows
            )));
        }
        for (v, &m) in self.get_size_mut("flags")?.iter_mut().zip(mask) {
            if m {
                if on {
                    *v |= flag;
                } else {
                    *v &= !flag;
                }
            }
        }
        Ok(())
    }

    /// Append the rows of `other`. Both tables must have the same column names and types
    /// (unlike DIALS, which pads missing columns with zeros: a silent `id = 0` or
    /// `flags = 0` is worse than an error). An empty table with no columns takes `other`'s
    /// columns. Identifiers are merged; the same id with two different identifiers is an
    /// error.
    pub fn extend(&mut self, other: &ReflectionTable) -> Result<()> {
        for (k, v) in &other.identifiers {
            if let Some(mine) = self.identifiers.get(k) {
                if mine != v {
                    return Err(Error::msg(format!(
                        "cannot join reflection tables: experiment id {k} is `{mine}` in one and `{v}` in the other"
                    )));
                }
            }
        }
        if self.columns.is_empty() && self.nrows == 0 {
            self.nrows = other.nrows;
            self.columns = other.columns.clone();
        } else {
            let mine: Vec<&str> = self.column_names().collect();
            let theirs: Vec<&str> = other.column_names().collect();
            if mine != theirs {
                let only_a: Vec<&str> = mine.iter().filter(|n| !other.contains(n)).copied().collect();
                let only_b: Vec<&str> = theirs.iter().filter(|n| !self.contains(n)).copied().collect();
                return Err(Error::msg(format!(
                    "cannot join reflection tables with different columns (only in first: [{}]; only in second: [{}])",
                    only_a.join(", "),
                    only_b.join(", ")
                )));
            }
            for (name, col) in &other.columns {
                let found = self.columns[name].column_type();
                if found != col.column_type() {
                    return Err(Error::msg(format!(
                        "cannot join reflection tables: column `{name}` is {found} in one and {} in the other",
                        col.column_type()
                    )));
                }
            }
            for (name, col) in &other.columns {
                if let Some(mine) = self.columns.get_mut(name) {
                    // Types were checked above, so this cannot fail.
                    mine.append(col).map_err(|t| {
                        Error::msg(format!(
                            "cannot join reflection tables: column `{name}` type {t} does not match"
                        ))
                    })?;
                }
            }
            self.nrows += other.nrows;
        }
        for (k, v) in &other.identifiers {
            self.identifiers.entry(*k).or_insert_with(|| v.clone());
        }
        Ok(())
    }

    /// Concatenate tables in order (see [`ReflectionTable::extend`]).
    pub fn concat<'a>(tables: impl IntoIterator<Item = &'a ReflectionTable>) -> Result<ReflectionTable> {
        let mut out = ReflectionTable::default();
        for t in tables {
            out.extend(t)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ReflectionTable {
        let mut t = ReflectionTable::new(4);
        t.insert("id", vec![0, 1, 0, 2]).unwrap();
        t.insert("flags", vec![32u64, 45, 1, 256]).unwrap();
        t.insert("xyzobs.px.value", vec![[0.5, 1.5, 0.5], [2.0, 3.0, 0.5], [4.0, 5.0, 0.5], [6.0, 7.0, 0.5]])
            .unwrap();
        t.identifiers.insert(0, "a".into());
        t.identifiers.insert(1, "b".into());
        t.identifiers.insert(2, "c".into());
        t
    }

    #[test]
    fn type_names_round_trip_and_sizes() {
        for t in ColumnType::ALL {
            assert_eq!(ColumnType::from_dials_name(t.dials_name()), Some(t));
        }
        assert_eq!(ColumnType::from_dials_name("std::string"), None);
        assert_eq!(ColumnType::Mat3.element_size(), Some(72));
        assert_eq!(ColumnType::Miller.element_size(), Some(12));
    }

    #[test]
    fn getters_name_column_and_type() {
        let t = small();
        assert_eq!(t.get_vec3("xyzobs.px.value").unwrap()[1], [2.0, 3.0, 0.5]);
        let e = t.get_double("xyzobs.px.value").unwrap_err().to_string();
        assert!(
            e.contains("`xyzobs.px.value`") && e.contains("vec3<double>") && e.contains("expected double"),
            "{e}"
        );
        let e = t.get_int("nope").unwrap_err().to_string();
        assert!(e.contains("`nope`") && e.contains("flags"), "{e}");
        let mut t = t;
        assert!(t.get_size_mut("id").is_err());
        t.get_int_mut("id").unwrap()[0] = 7;
        assert_eq!(t.get_int("id").unwrap()[0], 7);
    }

    #[test]
    fn insert_checks_length() {
        let mut t = small();
        let e = t.insert("d", vec![1.0f64; 3]).unwrap_err().to_string();
        assert!(e.contains("`d`") && e.contains("3 values") && e.contains("4 rows"), "{e}");
        assert!(t.insert("d", vec![1.0f64; 4]).unwrap().is_none());
        assert_eq!(t.column_names().collect::<Vec<_>>(), ["d", "flags", "id", "xyzobs.px.value"]);
    }

    #[test]
    fn select_and_select_id() {
        let t = small();
        let s = t.select(&[true, false, false, true]).unwrap();
        assert_eq!(s.nrows(), 2);
        assert_eq!(s.get_int("id").unwrap(), &[0, 2]);
        assert!(t.select(&[true]).is_err());
        let s = t.select_indices(&[3, 3, 0]).unwrap();
        assert_eq!(s.get_size("flags").unwrap(), &[256, 256, 32]);
        assert!(t.select_indices(&[4]).is_err());
        let s = t.select_id(0).unwrap();
        assert_eq!(s.nrows(), 2);
        assert_eq!(s.get_vec3("xyzobs.px.value").unwrap()[1], [4.0, 5.0, 0.5]);
        assert_eq!(s.identifiers.len(), 1);
        assert_eq!(s.identifiers[&0], "a");
        assert_eq!(t.select_id(9).unwrap().nrows(), 0);
        assert_eq!(t.distinct_ids().unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn flags_helpers() {
        assert!(flags::has_flag(45, flags::INDEXED | flags::STRONG));
        assert!(!flags::has_flag(45, flags::INTEGRATED));
        assert!(flags::has_any_flag(256, flags::INTEGRATED));
        assert_eq!(flags::STRONG, 32);
        assert_eq!(flags::INTEGRATED_SUM, 256);
        let mut t = small();
        assert_eq!(t.get_flags(flags::STRONG).unwrap(), vec![true, true, false, false]);
        t.set_flags(&[false, false, true, false], flags::STRONG, true).unwrap();
        t.set_flags(&[true, false, false, false], flags::STRONG, false).unwrap();
        assert_eq!(t.get_size("flags").unwrap(), &[0, 45, 33, 256]);
    }

    #[test]
    fn extend_checks_columns_types_and_identifiers() {
        let mut a = small();
        let b = small();
        a.extend(&b).unwrap();
        assert_eq!(a.nrows(), 8);
        assert_eq!(a.get_int("id").unwrap(), &[0, 1, 0, 2, 0, 1, 0, 2]);

        let mut c = small();
        c.remove("flags");
        let e = small().extend(&c).unwrap_err().to_string();
        assert!(e.contains("only in first: [flags]"), "{e}");

        let mut d = small();
        d.insert("flags", vec![1.0f64; 4]).unwrap();
        let e = small().extend(&d).unwrap_err().to_string();
        assert!(e.contains("`flags`") && e.contains("std::size_t") && e.contains("double"), "{e}");

        let mut f = small();
        f.identifiers.insert(1, "other".into());
        assert!(small().extend(&f).unwrap_err().to_string().contains("experiment id 1"));

        let all = ReflectionTable::concat([&small(), &small(), &small()]).unwrap();
        assert_eq!(all.nrows(), 12);
        assert_eq!(all.identifiers.len(), 3);
    }

    #[test]
    fn shoebox_shape_and_validation() {
        let mut s = Shoebox { panel: 0, bbox: [-2, 1, 5, 7, 0, 1], data: None };
        assert_eq!(s.shape().unwrap(), [1, 2, 3]);
        assert_eq!(s.num_voxels().unwrap(), 6);
        s.data = Some(ShoeboxData {
            data: vec![0.0; 6],
            mask: ShoeboxMask::U8(vec![5; 6]),
            background: vec![0.0; 5],
        });
        assert!(s.validate().unwrap_err().contains("background"));
        s.bbox = [3, 1, 0, 1, 0, 1];
        assert!(s.validate().unwrap_err().contains("inverted"));
        let big = Shoebox {
            panel: 0,
            bbox: [i32::MIN, i32::MAX, i32::MIN, i32::MAX, i32::MIN, i32::MAX],
            data: None,
        };
        assert!(big.num_voxels().is_err());
        assert_eq!(ShoeboxMask::I32(vec![19, 5]).iter().collect::<Vec<_>>(), vec![19, 5]);
    }
}
