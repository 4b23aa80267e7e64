//! MTZ reflection files (CCP4): reader and merged-file writer.
//!
//! # Layout (all 4-byte words; see `shared/docs/formats.md` §5.2)
//! * Bytes 0–3 `MTZ `; 4–7 the 1-based word index of the header (or −1 and an
//!   int64 at 12–19); 8–11 the machine stamp, whose first nibbles give the
//!   number formats: 4 = little-endian IEEE, 1 = big-endian IEEE.
//! * Bytes 80.. the data: `nrefl` rows × `ncol` float32, row-major in COLUMN
//!   order; H, K, L are stored as floats. Missing values are NaN (`VALM NAN`);
//!   a numeric `VALM` sentinel is turned into NaN on reading.
//! * The header: 80-character ASCII records up to `END`, then optional
//!   `MTZHIST` lines and `MTZBATS` batch headers (unmerged files; their binary
//!   blocks are skipped), closed by `MTZENDOFHEADERS`.
//!
//! # Conventions
//! * [`Mtz::space_group`] combines the `SYMM` records (their order is kept: it
//!   defines ISYM) and the `SYMINF` name or number; see `resolve_space_group`
//!   for which one wins when they disagree.
//! * Columns are stored per column (`values[i]` is row i), f32 as in the file.
//! * The writer writes little-endian files with dataset 0 `HKL_base` (owning H,
//!   K, L) and one data dataset 1, like CCP4 and gemmi.

use crate::crystal::UnitCell;
use crate::error::{io_err, Error, Result};
use crate::symmetry::miller::Resolution;
use crate::symmetry::{GroupOps, Miller, Op, SpaceGroup};
use std::path::Path;

/// Column types that CCP4 defines.
pub const COLUMN_TYPES: &str = "HJFDQGLKMEPWABYIR";

/// One crystal/dataset of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub id: i32,
    pub project: String,
    pub crystal: String,
    pub dataset: String,
    /// `DCELL`, if given.
    pub cell: Option<UnitCell>,
    /// `DWAVEL` in Å (0 if not given).
    pub wavelength: f64,
}

/// One column: label, CCP4 type letter, dataset and the values of every row.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub label: String,
    pub kind: char,
    pub dataset_id: i32,
    pub values: Vec<f32>,
    /// `COLSRC` text (empty if absent).
    pub source: String,
}

/// A whole MTZ file in memory.
#[derive(Clone, Debug)]
pub struct Mtz {
    pub title: String,
    /// The global `CELL`.
    pub cell: UnitCell,
    pub space_group: Option<SpaceGroup>,
    /// `SYMINF` space-group name and number as written.
    pub space_group_name: String,
    pub space_group_number: i32,
    /// `SYMM` records as written (empty in a file without them).
    pub symops: Vec<Op>,
    pub datasets: Vec<Dataset>,
    pub columns: Vec<Column>,
    pub nrefl: usize,
    pub sort_order: [i32; 5],
    /// `RESO`: (min, max) of 1/d², Å⁻².
    pub reso: Option<(f64, f64)>,
    pub history: Vec<String>,
    /// Batch numbers of an unmerged file (their headers are skipped).
    pub batches: Vec<i32>,
}

/// Amplitudes extracted by [`Mtz::amplitudes`].
#[derive(Clone, Debug, PartialEq)]
pub struct Amplitudes {
    /// Miller indices; for anomalous input the F(−) entries carry −h.
    pub hkl: Vec<Miller>,
    /// |F| for each index.
    pub f: Vec<f64>,
    /// Whether Friedel mates were read separately.
    pub anomalous: bool,
}

impl Mtz {
    /// Read an MTZ file.
    pub fn read(path: impl AsRef<Path>) -> Result<Mtz> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        Mtz::from_bytes(&bytes, path)
    }

    /// Parse MTZ bytes; `path` is used in error messages only.
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Mtz> {
        Reader { b: bytes, path: path.as_ref(), big: false }.read()
    }

    /// A new merged file with H, K, L from `hkl`; add data with [`Mtz::add_column`].
    pub fn new_merged(
        cell: UnitCell,
        space_group: SpaceGroup,
        hkl: &[Miller],
        names: (&str, &str, &str),
        wavelength: f64,
    ) -> Mtz {
        let base = Dataset {
            id: 0,
            project: "HKL_base".into(),
            crystal: "HKL_base".into(),
            dataset: "HKL_base".into(),
            cell: Some(cell),
            wavelength: 0.0,
        };
        let data = Dataset {
            id: 1,
            project: names.0.into(),
            crystal: names.1.into(),
            dataset: names.2.into(),
            cell: Some(cell),
            wavelength,
        };
        let columns = ["H", "K", "L"]
            .iter()
            .enumerate()
            .map(|(i, l)| Column {
                label: l.to_string(),
                kind: 'H',
                dataset_id: 0,
                values: hkl.iter().map(|h| h[i] as f32).collect(),
                source: String::new(),
            })
            .collect();
        Mtz {
            title: String::new(),
            cell,
            space_group_name: space_group.hm(),
            space_group_number: space_group.ccp4_number() as i32,
            symops: Vec::new(),
            space_group: Some(space_group),
            datasets: vec![base, data],
            columns,
            nrefl: hkl.len(),
            sort_order: [0; 5],
            reso: None,
            history: Vec::new(),
            batches: Vec::new(),
        }
    }

    /// Append a data column to the last dataset.
    pub fn add_column(&mut self, label: &str, kind: char, values: Vec<f32>) -> Result<()> {
        let bad = |m: String| Error::param(format!("MTZ column `{label}`"), m);
        if values.len() != self.nrefl {
            return Err(bad(format!("{} values for {} reflections", values.len(), self.nrefl)));
        }
        if !COLUMN_TYPES.contains(kind) {
            return Err(bad(format!("unknown column type `{kind}` (CCP4 types: {COLUMN_TYPES})")));
        }
        check_word(label, 30).map_err(&bad)?;
        if self.column(label).is_some() {
            return Err(bad("duplicate label".into()));
        }
        let dataset_id = self.datasets.last().map(|d| d.id).unwrap_or(0);
        self.columns.push(Column { label: label.into(), kind, dataset_id, values, source: String::new() });
        Ok(())
    }

    pub fn column(&self, label: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.label == label)
    }

    /// Miller indices of every row, from the columns labelled H, K, L (else the
    /// first three columns of type H).
    pub fn hkl(&self) -> Result<Vec<Miller>> {
        let named: Vec<&Column> =
            ["H", "K", "L"].iter().filter_map(|l| self.column(l)).filter(|c| c.kind == 'H').collect();
        let cols: Vec<&Column> = if named.len() == 3 {
            named
        } else {
            self.columns.iter().filter(|c| c.kind == 'H').take(3).collect()
        };
        if cols.len() != 3 {
            return Err(Error::msg("MTZ has no H, K, L index columns"));
        }
        let mut out = Vec::with_capacity(self.nrefl);
        for i in 0..self.nrefl {
            let mut h = [0i32; 3];
            for j in 0..3 {
                let v = cols[j].values[i];
                if !v.is_finite() || v.fract() != 0.0 || v.abs() > 1.0e6 {
                    return Err(Error::msg(format!(
                        "MTZ row {}: index column {} is {v}",
                        i + 1,
                        cols[j].label
                    )));
                }
                h[j] = v as i32;
            }
            out.push(h);
        }
        Ok(out)
    }

    /// Structure-factor amplitudes selected as diffBragg's `mtz_column` does:
    /// comma-separated labels of one array.
    /// * `F` (F), `F,SIGF` (F Q), `F-model,PHIF-model` (F P: the amplitude);
    /// * `I` or `IMEAN,SIGIMEAN` (types J or J Q): amplitudes `√max(I, 0)`;
    /// * `F(+),F(-)` or `F(+),SIGF(+),F(-),SIGF(-)` (types G G or G L G L): anomalous,
    ///   F(−) is reported at −h; likewise `I(+),I(-)` (K K or K M K M).
    ///
    /// Rows whose value is missing (NaN) are skipped. Unlike iotbx, the labels
    /// need not be the complete column group (sigma columns may be left out).
    pub fn amplitudes(&self, spec: &str) -> Result<Amplitudes> {
        let err = |m: String| Error::param("mtz_column", format!("`{spec}`: {m}"));
        let labels: Vec<&str> = spec.split(',').map(|s| s.trim()).collect();
        let mut cols = Vec::new();
        for l in &labels {
            match self.column(l) {
                Some(c) => cols.push(c),
                None => {
                    let have: Vec<&str> = self.columns.iter().map(|c| c.label.as_str()).collect();
                    return Err(err(format!("no column `{l}`; columns are {}", have.join(" "))));
                }
            }
        }
        let types: String = cols.iter().map(|c| c.kind).collect();
        let hkl = self.hkl()?;
        let as_amp = |v: f32, intensity: bool| -> f64 {
            if intensity {
                (v as f64).max(0.0).sqrt()
            } else {
                v as f64
            }
        };
        let mut out = Amplitudes { hkl: Vec::new(), f: Vec::new(), anomalous: false };
        let (plus, minus, intensity) = match types.as_str() {
            "F" | "FQ" | "FP" => (cols[0], None, false),
            "J" | "JQ" => (cols[0], None, true),
            "GG" => (cols[0], Some(cols[1]), false),
            "GLGL" => (cols[0], Some(cols[2]), false),
            "KK" => (cols[0], Some(cols[1]), true),
            "KMKM" => (cols[0], Some(cols[2]), true),
            _ => {
                return Err(err(format!(
                    "column types `{types}` are not an amplitude or intensity array \
                     (expected F, F+Q, F+P, J, J+Q, G+G, G+L+G+L, K+K or K+M+K+M)"
                )))
            }
        };
        for (i, h) in hkl.iter().enumerate() {
            let v = plus.values[i];
            if v.is_finite() {
                out.hkl.push(*h);
                out.f.push(as_amp(v, intensity));
            }
            if let Some(m) = minus {
                let v = m.values[i];
                if v.is_finite() {
                    out.hkl.push([-h[0], -h[1], -h[2]]);
                    out.f.push(as_amp(v, intensity));
                }
            }
        }
        out.anomalous = minus.is_some();
        Ok(out)
    }

    /// Serialise (little-endian).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bad = |m: String| Error::msg(format!("cannot write MTZ: {m}"));
        let sg = self.space_group.as_ref().ok_or_else(|| bad("no space group".into()))?;
        if !self.cell.is_valid() {
            return Err(bad(format!("invalid cell {:?}", self.cell.to_array())));
        }
        for c in &self.columns {
            if c.values.len() != self.nrefl {
                return Err(bad(format!(
                    "column {} has {} values for {} rows",
                    c.label,
                    c.values.len(),
                    self.nrefl
                )));
            }
            check_word(&c.label, 30).map_err(|m| bad(format!("column label `{}`: {m}", c.label)))?;
            if !COLUMN_TYPES.contains(c.kind) {
                return Err(bad(format!("column {} has unknown type `{}`", c.label, c.kind)));
            }
        }
        for d in &self.datasets {
            for n in [&d.project, &d.crystal, &d.dataset] {
                check_word(n, 64).map_err(|m| bad(format!("dataset name `{n}`: {m}")))?;
            }
        }
        if self.title.len() > 70 || !self.title.is_ascii() {
            return Err(bad("title must be ASCII and at most 70 characters".into()));
        }
        let ncol = self.columns.len();
        let words = ncol as u64 * self.nrefl as u64;
        let mut out: Vec<u8> = Vec::with_capacity(80 + 4 * words as usize + 80 * (40 + ncol));
        out.extend_from_slice(b"MTZ ");
        let header_word = words + 21;
        if header_word > i32::MAX as u64 {
            out.extend_from_slice(&(-1i32).to_le_bytes());
        } else {
            out.extend_from_slice(&(header_word as i32).to_le_bytes());
        }
        out.extend_from_slice(&[0x44, 0x41, 0x00, 0x00]);
        let big = if header_word > i32::MAX as u64 { header_word as i64 } else { 0 };
        out.extend_from_slice(&big.to_le_bytes());
        out.resize(80, 0);
        for i in 0..self.nrefl {
            for c in &self.columns {
                out.extend_from_slice(&c.values[i].to_le_bytes());
            }
        }
        let mut rec = |s: String| -> Result<()> {
            if s.len() > 80 || !s.is_ascii() {
                return Err(bad(format!("header record too long: `{s}`")));
            }
            out.extend_from_slice(s.as_bytes());
            out.resize(out.len() + 80 - s.len(), b' ');
            Ok(())
        };
        let cell =
            |c: &UnitCell| c.to_array().iter().map(|v| format!("{v:.6}")).collect::<Vec<_>>().join(" ");
        rec("VERS MTZ:V1.1".into())?;
        rec(format!("TITLE {}", self.title))?;
        rec(format!("NCOL {:8} {:12} {:8}", ncol, self.nrefl, 0))?;
        rec(format!("CELL  {}", cell(&self.cell)))?;
        let so = self.sort_order;
        rec(format!("SORT  {:3} {:3} {:3} {:3} {:3}", so[0], so[1], so[2], so[3], so[4]))?;
        let lat = sg.ccp4_lattice_type();
        // CCP4 style ("H 3" for R 3:H); the qualifier only where the bare
        // symbol would mean another setting (origin choice 2, rhombohedral axes)
        let name = match sg.setting() {
            Some(s) if s.ext == "2" || s.ext == "R" => s.xhm(),
            Some(s) => format!("{lat}{}", &s.hm[1..]),
            None => sg.hm(),
        };
        rec(format!(
            "SYMINF {:3} {:2} {} {:5} '{}' PG{}",
            sg.order(),
            sg.ops().sym_ops.len(),
            lat,
            sg.ccp4_number(),
            name,
            sg.point_group().hm()
        ))?;
        for op in sg.all_ops() {
            rec(format!("SYMM {}", op.triplet().to_uppercase()))?;
        }
        let (lo, hi) = self.resolution_range().unwrap_or((0.0, 0.0));
        rec(format!("RESO {lo:e} {hi:e}"))?;
        rec("VALM NAN".into())?;
        for c in &self.columns {
            let (mn, mx) = min_max(&c.values);
            rec(format!(
                "COLUMN {:<30} {} {:>17} {:>17} {:4}",
                c.label,
                c.kind,
                fmt17(mn),
                fmt17(mx),
                c.dataset_id
            ))?;
        }
        rec(format!("NDIF {:8}", self.datasets.len()))?;
        for d in &self.datasets {
            rec(format!("PROJECT {:7} {}", d.id, d.project))?;
            rec(format!("CRYSTAL {:7} {}", d.id, d.crystal))?;
            rec(format!("DATASET {:7} {}", d.id, d.dataset))?;
            rec(format!("DCELL {:9} {}", d.id, cell(d.cell.as_ref().unwrap_or(&self.cell))))?;
            rec(format!("DWAVEL {:8} {:.6}", d.id, d.wavelength))?;
        }
        rec("END".into())?;
        if !self.history.is_empty() {
            rec(format!("MTZHIST {:3}", self.history.len()))?;
            for h in &self.history {
                rec(h.chars().take(80).collect())?;
            }
        }
        rec("MTZENDOFHEADERS".into())?;
        Ok(out)
    }

    /// Write atomically (`<path>.tmp-<pid>`, then rename).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes().map_err(|e| Error::file(path, e.to_string()))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| io_err(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(path, e)
        })
    }

    /// (min, max) of 1/d² over rows with finite indices.
    fn resolution_range(&self) -> Option<(f64, f64)> {
        let res = Resolution::new(&self.cell).ok()?;
        let hkl = self.hkl().ok()?;
        let mut r: Option<(f64, f64)> = None;
        for h in &hkl {
            let v = res.d_star_sq(h);
            r = Some(match r {
                None => (v, v),
                Some((a, b)) => (a.min(v), b.max(v)),
            });
        }
        r
    }
}

fn check_word(s: &str, max: usize) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.len() > max {
        return Err(format!("longer than {max} characters"));
    }
    if !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".into());
    }
    Ok(())
}

fn min_max(v: &[f32]) -> (f32, f32) {
    let mut r = (f32::NAN, f32::NAN);
    for &x in v.iter().filter(|x| !x.is_nan()) {
        if r.0.is_nan() || x < r.0 {
            r.0 = x;
        }
        if r.1.is_nan() || x > r.1 {
            r.1 = x;
        }
    }
    r
}

/// A float in at most 17 characters (header min/max are informative only).
fn fmt17(v: f32) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    let s = format!("{v}");
    if s.len() <= 17 {
        s
    } else {
        format!("{v:.9e}").chars().take(17).collect()
    }
}

struct Reader<'a> {
    b: &'a [u8],
    path: &'a Path,
    big: bool,
}

impl Reader<'_> {
    fn fail(&self, m: impl Into<String>) -> Error {
        Error::file(self.path, m)
    }

    fn rec_fail(&self, n: usize, key: &str, m: impl Into<String>) -> Error {
        Error::record(self.path, format!("header record {n} ({key})"), m)
    }

    fn i32_at(&self, off: usize) -> i32 {
        let w: [u8; 4] = self.b[off..off + 4].try_into().unwrap();
        if self.big {
            i32::from_be_bytes(w)
        } else {
            i32::from_le_bytes(w)
        }
    }

    fn read(mut self) -> Result<Mtz> {
        let b = self.b;
        if b.len() < 80 || &b[0..4] != b"MTZ " {
            return Err(self.fail("not an MTZ file (no `MTZ ` stamp)"));
        }
        // machine stamp: high nibble of byte 9 is the integer format
        self.big = match b[9] >> 4 {
            1 => true,
            4 => false,
            _ => match b[8] >> 4 {
                1 => true,
                4 => false,
                _ => return Err(self.fail(format!("unsupported machine stamp {:02x?}", &b[8..12]))),
            },
        };
        let w = self.i32_at(4);
        let header_word: i64 = if w == -1 {
            let x: [u8; 8] = b[12..20].try_into().unwrap();
            if self.big {
                i64::from_be_bytes(x)
            } else {
                i64::from_le_bytes(x)
            }
        } else {
            w as i64
        };
        if header_word < 21 || (header_word - 1).saturating_mul(4) >= b.len() as i64 {
            return Err(self.fail(format!(
                "header position (word {header_word}) outside the file of {} bytes",
                b.len()
            )));
        }
        let header_start = 4 * (header_word as usize - 1);
        let data_words = (header_start - 80) / 4;

        let mut mtz = Mtz {
            title: String::new(),
            cell: UnitCell::new(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            space_group: None,
            space_group_name: String::new(),
            space_group_number: 0,
            symops: Vec::new(),
            datasets: Vec::new(),
            columns: Vec::new(),
            nrefl: 0,
            sort_order: [0; 5],
            reso: None,
            history: Vec::new(),
            batches: Vec::new(),
        };
        let mut ncol: Option<usize> = None;
        let mut nbatch = 0usize;
        let mut valm: Option<f32> = None;
        let mut pos = header_start;
        let mut n = 0usize;
        let mut saw_end = false;
        let mut saw_vers = false;
        while pos + 80 <= b.len() {
            let raw = &b[pos..pos + 80];
            pos += 80;
            n += 1;
            let line = String::from_utf8_lossy(raw).trim_end().to_string();
            let key: String = line.chars().take(4).collect::<String>().to_ascii_uppercase();
            let args = line.split_once(char::is_whitespace).map(|x| x.1.trim()).unwrap_or("");
            let rf = |m: String| self.rec_fail(n, line.split_whitespace().next().unwrap_or(""), m);
            if key.starts_with("END") && line.trim() == "END" {
                saw_end = true;
                break;
            }
            match key.as_str() {
                "VERS" => saw_vers = true,
                "TITL" => mtz.title = args.to_string(),
                "NCOL" => {
                    let v = ints(args, 3).map_err(rf)?;
                    if v[0] < 0 || v[1] < 0 || v[2] < 0 {
                        return Err(self.rec_fail(n, "NCOL", "negative count"));
                    }
                    let (nc, nr) = (v[0] as u64, v[1] as u64);
                    if nc.saturating_mul(nr) > data_words as u64 {
                        return Err(self.rec_fail(
                            n,
                            "NCOL",
                            format!("{nc} columns × {nr} rows exceed the data block ({data_words} words)"),
                        ));
                    }
                    if v[2] as u64 > (b.len() as u64) / 80 {
                        return Err(self.rec_fail(n, "NCOL", "more batches than the file can hold"));
                    }
                    ncol = Some(nc as usize);
                    mtz.nrefl = nr as usize;
                    nbatch = v[2] as usize;
                }
                "CELL" => mtz.cell = cell_from(args).map_err(rf)?,
                "SORT" => {
                    let v = ints(args, 5).map_err(rf)?;
                    mtz.sort_order = [v[0] as i32, v[1] as i32, v[2] as i32, v[3] as i32, v[4] as i32];
                }
                "SYMI" => {
                    let (num, name) = syminf(args).map_err(rf)?;
                    mtz.space_group_number = num;
                    mtz.space_group_name = name;
                }
                "SYMM" => {
                    let op = Op::parse_triplet(args).map_err(rf)?;
                    if mtz.symops.len() >= 192 {
                        return Err(self.rec_fail(n, "SYMM", "more than 192 operations"));
                    }
                    mtz.symops.push(op);
                }
                "RESO" => {
                    let v = floats(args, 2).map_err(rf)?;
                    mtz.reso = Some((v[0], v[1]));
                }
                "VALM" =>
                {
                    #[allow(clippy::collapsible_match)]
                    if !args.to_ascii_uppercase().starts_with("NAN") {
                        let v: f32 = args
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .parse()
                            .map_err(|_| rf(format!("bad missing-value marker `{args}`")))?;
                        valm = Some(v);
                    }
                }
                "COLU" => {
                    let t: Vec<&str> = args.split_whitespace().collect();
                    if t.len() < 2 {
                        return Err(rf("expected `COLUMN label type min max dataset`".into()));
                    }
                    let kind = t[1].chars().next().unwrap_or(' ');
                    if t[1].chars().count() != 1 || !kind.is_ascii_uppercase() {
                        return Err(rf(format!("bad column type `{}`", t[1])));
                    }
                    let dataset_id = match t.get(4) {
                        Some(s) => s.parse().map_err(|_| rf(format!("bad dataset id `{s}`")))?,
                        None => 0,
                    };
                    if mtz.columns.len() >= ncol.unwrap_or(0) {
                        return Err(rf("more COLUMN records than NCOL says (or COLUMN before NCOL)".into()));
                    }
                    mtz.columns.push(Column {
                        label: t[0].to_string(),
                        kind,
                        dataset_id,
                        values: Vec::new(),
                        source: String::new(),
                    });
                }
                "COLS" => {
                    let t: Vec<&str> = args.split_whitespace().collect();
                    if let (Some(c), Some(l), Some(s)) = (mtz.columns.last_mut(), t.first(), t.get(1)) {
                        if c.label == *l {
                            c.source = s.to_string();
                        }
                    }
                }
                "PROJ" | "CRYS" | "DATA" | "DCEL" | "DWAV" => {
                    let (id_s, rest) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
                    let id: i32 = id_s.parse().map_err(|_| rf(format!("bad dataset id `{id_s}`")))?;
                    let rest = rest.trim();
                    if mtz.datasets.len() > 1000 {
                        return Err(rf("too many datasets".into()));
                    }
                    let ds = match mtz.datasets.iter().position(|d| d.id == id) {
                        Some(i) => &mut mtz.datasets[i],
                        None => {
                            mtz.datasets.push(Dataset {
                                id,
                                project: String::new(),
                                crystal: String::new(),
                                dataset: String::new(),
                                cell: None,
                                wavelength: 0.0,
                            });
                            mtz.datasets.last_mut().unwrap()
                        }
                    };
                    match key.as_str() {
                        "PROJ" => ds.project = rest.to_string(),
                        "CRYS" => ds.crystal = rest.to_string(),
                        "DATA" => ds.dataset = rest.to_string(),
                        "DCEL" => ds.cell = Some(cell_from(rest).map_err(rf)?),
                        _ => {
                            ds.wavelength = floats(rest, 1).map_err(rf)?[0];
                        }
                    }
                }
                // BATCH lists batch numbers again; the BH headers are authoritative
                // (some writers list fewer numbers here), so only check the syntax.
                "BATC" => {
                    for t in args.split_whitespace() {
                        t.parse::<i32>().map_err(|_| rf(format!("bad batch number `{t}`")))?;
                    }
                }
                _ => {} // NDIF, COLGRP, DRES, ... carry nothing we use
            }
        }
        if !saw_end {
            return Err(self.fail("header has no END record (truncated file?)"));
        }
        if !saw_vers {
            return Err(self.fail("header has no VERS record"));
        }
        let ncol = ncol.ok_or_else(|| self.fail("header has no NCOL record"))?;
        if mtz.columns.len() != ncol {
            return Err(
                self.fail(format!("NCOL says {ncol} columns but {} COLUMN records", mtz.columns.len()))
            );
        }
        self.read_trailer(pos, nbatch, &mut mtz)?;
        if mtz.batches.len() != nbatch {
            return Err(
                self.fail(format!("NCOL says {nbatch} batches but {} batch headers", mtz.batches.len()))
            );
        }

        // data block
        for (j, c) in mtz.columns.iter_mut().enumerate() {
            c.values = (0..mtz.nrefl)
                .map(|i| {
                    let off = 80 + 4 * (i * ncol + j);
                    let w: [u8; 4] = b[off..off + 4].try_into().unwrap();
                    let v = if self.big { f32::from_be_bytes(w) } else { f32::from_le_bytes(w) };
                    match valm {
                        Some(m) if v == m => f32::NAN,
                        _ => v,
                    }
                })
                .collect();
        }
        mtz.space_group = resolve_space_group(&mtz);
        Ok(mtz)
    }

    /// History lines and batch headers after END, up to MTZENDOFHEADERS.
    fn read_trailer(&self, mut pos: usize, nbatch: usize, mtz: &mut Mtz) -> Result<()> {
        let b = self.b;
        let rec = |pos: usize| -> Option<String> {
            b.get(pos..pos + 80).map(|r| String::from_utf8_lossy(r).trim_end().to_string())
        };
        loop {
            let line =
                rec(pos).ok_or_else(|| self.fail("header ends without MTZENDOFHEADERS (truncated file?)"))?;
            pos += 80;
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("MTZENDOFHEADERS") {
                return Ok(());
            } else if upper.starts_with("MTZHIST") {
                let k: usize = line[7..]
                    .trim()
                    .parse()
                    .map_err(|_| self.fail(format!("bad MTZHIST record `{line}`")))?;
                if k > 1000 {
                    return Err(self.fail(format!("MTZHIST claims {k} lines")));
                }
                for _ in 0..k {
                    let h = rec(pos).ok_or_else(|| self.fail("history truncated"))?;
                    pos += 80;
                    mtz.history.push(h.trim().to_string());
                }
            } else if upper.starts_with("MTZBATS") {
                for i in 0..nbatch {
                    let bh = rec(pos).ok_or_else(|| self.fail("batch headers truncated"))?;
                    pos += 80;
                    if !bh.starts_with("BH") {
                        return Err(
                            self.fail(format!("batch header {} does not start with BH: `{bh}`", i + 1))
                        );
                    }
                    let v =
                        ints(&bh[2..], 4).map_err(|m| self.fail(format!("batch header {}: {m}", i + 1)))?;
                    if v[1] != v[2] + v[3] || v[2] < 0 || v[3] < 0 || v[1] > 10_000 {
                        return Err(
                            self.fail(format!("batch header {}: inconsistent word counts `{bh}`", i + 1))
                        );
                    }
                    mtz.batches.push(v[0] as i32);
                    // TITLE record, binary ints and floats, BHCH record
                    pos += 80 + 4 * v[1] as usize;
                    let bhch = rec(pos).ok_or_else(|| self.fail("batch headers truncated"))?;
                    pos += 80;
                    if !bhch.starts_with("BHCH") {
                        return Err(self.fail(format!("batch header {}: missing BHCH record", i + 1)));
                    }
                }
            }
            // other records between END and MTZENDOFHEADERS are ignored
        }
    }
}

/// The group from the SYMM records (their order kept: it defines ISYM) and the
/// SYMINF name. When both are known and differ: the same ITA number means
/// another setting of the named type (`R 3` on rhombohedral axes, origin
/// choice 2), so the operations win; a different number means the records are
/// incomplete (e.g. centring operations left out), so the name wins, as in
/// CCP4 and gemmi, which read only the name.
fn resolve_space_group(mtz: &Mtz) -> Option<SpaceGroup> {
    let by_name =
        if mtz.space_group_name.is_empty() { None } else { SpaceGroup::from_hm(&mtz.space_group_name).ok() };
    let by_ops = if mtz.symops.is_empty() {
        None
    } else {
        GroupOps::from_all_ops(&mtz.symops).ok().and_then(|ops| SpaceGroup::from_ops(ops).ok())
    };
    match (by_name, by_ops) {
        (Some(named), Some(from_ops)) => {
            if let Ok(sg) = named.with_ops(from_ops.ops().clone()) {
                Some(sg)
            } else if named.number() == from_ops.number() {
                Some(from_ops)
            } else {
                Some(named)
            }
        }
        (Some(named), None) => Some(named),
        (None, Some(from_ops)) => Some(from_ops),
        (None, None) if mtz.space_group_number > 0 => {
            SpaceGroup::from_number(mtz.space_group_number as u32).ok()
        }
        (None, None) => None,
    }
}

fn ints(s: &str, n: usize) -> std::result::Result<Vec<i64>, String> {
    let v: Vec<i64> = s
        .split_whitespace()
        .take(n)
        .map(|t| t.parse::<i64>().map_err(|_| format!("`{t}` is not an integer")))
        .collect::<std::result::Result<_, _>>()?;
    if v.len() < n {
        return Err(format!("expected {n} integers in `{s}`"));
    }
    Ok(v)
}

fn floats(s: &str, n: usize) -> std::result::Result<Vec<f64>, String> {
    let v: Vec<f64> = s
        .split_whitespace()
        .take(n)
        .map(|t| t.parse::<f64>().map_err(|_| format!("`{t}` is not a number")))
        .collect::<std::result::Result<_, _>>()?;
    if v.len() < n {
        return Err(format!("expected {n} numbers in `{s}`"));
    }
    Ok(v)
}

fn cell_from(s: &str) -> std::result::Result<UnitCell, String> {
    let v = floats(s, 6)?;
    Ok(UnitCell::new(v[0], v[1], v[2], v[3], v[4], v[5]))
}

/// `nsym nsymp lattice number 'name' pg` → (number, name).
fn syminf(s: &str) -> std::result::Result<(i32, String), String> {
    let t: Vec<&str> = s.split_whitespace().collect();
    if t.len() < 4 {
        return Err(format!("expected `nsym nsymp lattice number 'name'` in `{s}`"));
    }
    let number: i32 = t[3].parse().map_err(|_| format!("bad space-group number `{}`", t[3]))?;
    let name = match (s.find('\''), s.rfind('\'')) {
        (Some(a), Some(z)) if z > a => s[a + 1..z].to_string(),
        _ => t.get(4).map(|x| x.to_string()).unwrap_or_default(),
    };
    Ok((number, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_back() {
        let sg = SpaceGroup::from_hm("P 43 21 2").unwrap();
        let cell = UnitCell::new(78.9, 78.9, 37.1, 90.0, 90.0, 90.0);
        let hkl = vec![[1, 2, 3], [4, 0, 2], [10, 5, 7]];
        let mut m = Mtz::new_merged(cell, sg.clone(), &hkl, ("proj", "xtal", "data"), 1.3);
        m.add_column("F", 'F', vec![10.0, f32::NAN, 3.5]).unwrap();
        m.add_column("SIGF", 'Q', vec![1.0, f32::NAN, 0.5]).unwrap();
        assert!(m.add_column("F", 'F', vec![0.0; 3]).is_err());
        assert!(m.add_column("X", 'Z', vec![0.0; 3]).is_err());
        assert!(m.add_column("Y", 'F', vec![0.0; 2]).is_err());
        let bytes = m.to_bytes().unwrap();
        let r = Mtz::from_bytes(&bytes, "mem.mtz").unwrap();
        assert_eq!(r.nrefl, 3);
        assert_eq!(r.hkl().unwrap(), hkl);
        assert_eq!(r.space_group.as_ref().unwrap().hm(), "P 43 21 2");
        assert_eq!(r.column("F").unwrap().values[2], 3.5);
        assert!(r.column("F").unwrap().values[1].is_nan());
        assert_eq!(r.datasets[1].dataset, "data");
        assert!((r.datasets[1].wavelength - 1.3).abs() < 1e-9);
        let a = r.amplitudes("F,SIGF").unwrap();
        assert_eq!(a.hkl, vec![[1, 2, 3], [10, 5, 7]]);
        assert!(r.amplitudes("SIGF").is_err());
        assert!(r.amplitudes("nope").is_err());
    }

    /// Replace the header record starting with `key` by `new`.
    fn patch_record(bytes: &mut [u8], key: &[u8], new: &str) {
        let hs = 4 * (i32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize - 1);
        let at = (hs..bytes.len()).step_by(80).find(|&p| bytes[p..].starts_with(key)).unwrap();
        bytes[at..at + 80].copy_from_slice(format!("{new:<80}").as_bytes());
    }

    #[test]
    fn name_and_symm_disagreeing() {
        let cell = UnitCell::new(30.0, 40.0, 50.0, 90.0, 100.0, 90.0);
        // SYMM lists only the primitive operations of C 1 2 1: the name wins
        let m = Mtz::new_merged(
            cell,
            SpaceGroup::from_hm("C 1 2 1").unwrap(),
            &[[1, 1, 0]],
            ("p", "c", "d"),
            1.0,
        );
        let mut bytes = m.to_bytes().unwrap();
        patch_record(&mut bytes, b"SYMM X+1/2", "SYMM X,Y,Z");
        patch_record(&mut bytes, b"SYMM -X+1/2", "SYMM -X,Y,-Z");
        let r = Mtz::from_bytes(&bytes, "c2.mtz").unwrap();
        assert_eq!(r.space_group.unwrap().hm(), "C 1 2 1");
        // same type, other setting: the operations win
        let rr = SpaceGroup::from_hm("R 3:R").unwrap();
        let m = Mtz::new_merged(
            UnitCell::new(60.0, 60.0, 60.0, 80.0, 80.0, 80.0),
            rr,
            &[[1, 0, 0]],
            ("p", "c", "d"),
            1.0,
        );
        let r = Mtz::from_bytes(&m.to_bytes().unwrap(), "r3.mtz").unwrap();
        assert_eq!(r.space_group_name, "R 3:R");
        assert_eq!(r.space_group.unwrap().hm(), "R 3:R");
        // a bare "R 3" name with rhombohedral SYMM records
        let mut bytes = m.to_bytes().unwrap();
        let sym = bytes.windows(6).position(|w| w == b"SYMINF").unwrap();
        let rec = String::from_utf8_lossy(&bytes[sym..sym + 80]).replace("'R 3:R'", "'R 3'  ");
        bytes[sym..sym + 80].copy_from_slice(rec.as_bytes());
        let r = Mtz::from_bytes(&bytes, "r3.mtz").unwrap();
        assert_eq!(r.space_group_name, "R 3");
        assert_eq!(r.space_group.unwrap().hm(), "R 3:R");
    }

    #[test]
    fn numeric_missing_value_marker_becomes_nan() {
        let sg = SpaceGroup::from_hm("P 1").unwrap();
        let cell = UnitCell::new(30.0, 40.0, 50.0, 90.0, 90.0, 90.0);
        let mut m = Mtz::new_merged(cell, sg, &[[1, 0, 0], [0, 1, 0]], ("p", "c", "d"), 1.0);
        m.add_column("I", 'J', vec![-999.0, 5.0]).unwrap();
        let mut bytes = m.to_bytes().unwrap();
        let at = bytes.windows(8).position(|w| w == b"VALM NAN").unwrap();
        bytes[at..at + 80].copy_from_slice(format!("{:<80}", "VALM -999").as_bytes());
        let r = Mtz::from_bytes(&bytes, "valm.mtz").unwrap();
        let v = &r.column("I").unwrap().values;
        assert!(v[0].is_nan());
        assert_eq!(v[1], 5.0);
    }
}
