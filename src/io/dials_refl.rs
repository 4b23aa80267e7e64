//! DIALS `.refl` files: read and write [`ReflectionTable`]s in DIALS' msgpack layout.
//!
//! Layout (formats.md §2.2–2.3): a msgpack `array(3)` of the file type string
//! `"dials::af::reflection_table"`, the table version (1 or 2) and a header map with the keys
//! `identifiers` (map uint → str, optional), `nrows` (uint) and `data` (map column name →
//! `[type_name, [n_elements, bin]]`). Each blob is a raw little-endian dump of the column;
//! shoebox columns are a per-row record stream: `u32 panel, 6×i32 bbox, u8 flag` and, when the
//! flag is 1 or 2, `f32 data[n], mask[n] (i32 for flag 1, u8 for flag 2), f32 background[n]`.
//!
//! Choices (where DIALS is loose or broken):
//! * Header keys may come in any order; an unknown or repeated key, a repeated column name or
//!   trailing bytes are errors. `identifiers` may be absent (old files).
//! * `std::string` columns are skipped with a warning: DIALS writes them as raw
//!   `std::string` structs (heap pointers), so their content is garbage (dials#1858).
//!   `FrameSlicedShoebox<>` columns (newer DIALS, rotation data) are skipped likewise.
//! * A `bool` byte other than 0/1, or a shoebox flag other than 0/1/2, is an error (DIALS
//!   treats unknown shoebox flags as "no pixels").
//! * Every length read from the file is checked against the bytes that are actually left
//!   before anything is allocated, so a corrupt length cannot request terabytes.
//! * Writing: version 1 unless some shoebox holds a u8 mask (then 2, as DIALS ≥ 2026-04
//!   writes), so files stay readable by every DIALS release; columns in byte order of their
//!   names; the smallest msgpack encodings (what msgpack-c emits). A version-1 fixture
//!   rewritten this way is byte-identical to the original.
//! * HDF5 (`DIALS_USE_H5`) and legacy pickle tables are refused with the command that
//!   converts them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{io_err, Error, Result};
use crate::reflections::{Column, ColumnType, ReflectionTable, Shoebox, ShoeboxData, ShoeboxMask};

const FILE_TYPE: &str = "dials::af::reflection_table";
/// Bytes before the pixel arrays of one shoebox record: panel, bbox, flag.
const SHOEBOX_HEADER: usize = 4 + 6 * 4 + 1;

/// The DIALS command that rewrites `path` as a msgpack `.refl` file named `out`.
fn convert_hint(path: &Path, out: &str) -> String {
    let dir = path.parent().unwrap_or(Path::new(""));
    format!(
        "convert it with DIALS (DIALS_USE_H5 unset): dials.python -c \"from dials.array_family import flex; \
         flex.reflection_table.from_file('{}').as_file('{}')\"",
        path.display(),
        dir.join(out).display()
    )
}

fn stem(path: &Path) -> String {
    path.file_stem().map_or_else(|| "table".into(), |s| s.to_string_lossy().into_owned())
}

/// How the table was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    Msgpack,
    GzipMsgpack,
}

/// A decoded `.refl` file: the table plus what the file said about itself.
#[derive(Clone, Debug)]
pub struct ReflFile {
    pub table: ReflectionTable,
    /// Table version from the file (1 or 2).
    pub version: u64,
    pub container: Container,
    /// Columns that were skipped, one line each.
    pub warnings: Vec<String>,
}

/// One column as stored, without decoding: the blob borrows the file's bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawColumn<'a> {
    pub name: &'a str,
    pub type_name: &'a str,
    pub n_elements: u64,
    pub blob: &'a [u8],
}

/// The msgpack structure of a `.refl` file, columns undecoded, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTable<'a> {
    pub version: u64,
    pub nrows: u64,
    pub identifiers: BTreeMap<u64, String>,
    pub columns: Vec<RawColumn<'a>>,
}

/// Read a `.refl` file. Skipped columns are reported on stderr; use [`read_refl_file`] to
/// get them as data instead.
pub fn read_refl(path: impl AsRef<Path>) -> Result<ReflectionTable> {
    let path = path.as_ref();
    let f = read_refl_file(path)?;
    for w in &f.warnings {
        eprintln!("warning: {}: {w}", path.display());
    }
    Ok(f.table)
}

/// Read a `.refl` file (msgpack, or gzip-compressed msgpack).
pub fn read_refl_file(path: impl AsRef<Path>) -> Result<ReflFile> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    decode_refl(&bytes, path)
}

#[derive(Debug, PartialEq)]
enum Sniff {
    Msgpack,
    Gzip,
    Hdf5,
    Pickle,
    Empty,
    Unknown,
}

fn sniff(bytes: &[u8]) -> Sniff {
    match bytes {
        [] => Sniff::Empty,
        // fixarray(3), or array16/array32 from a writer that does not use the short form.
        [0x93, ..] | [0xdc, ..] | [0xdd, ..] => Sniff::Msgpack,
        [0x1f, 0x8b, ..] => Sniff::Gzip,
        [0x89, b'H', b'D', b'F', ..] => Sniff::Hdf5,
        [0x80, 2..=5, ..] => Sniff::Pickle,
        _ => Sniff::Unknown,
    }
}

/// Decode the bytes of a `.refl` file; `path` is only used in messages.
pub fn decode_refl(bytes: &[u8], path: &Path) -> Result<ReflFile> {
    match sniff(bytes) {
        Sniff::Msgpack => decode_msgpack(bytes, path, Container::Msgpack),
        Sniff::Gzip => {
            let mut inner = Vec::new();
            flate2::read::MultiGzDecoder::new(bytes)
                .read_to_end(&mut inner)
                .map_err(|e| Error::file(path, format!("gzip-compressed reflection table: {e}")))?;
            if sniff(&inner) != Sniff::Msgpack {
                return Err(Error::file(
                    path,
                    "gzip-compressed file does not hold a msgpack DIALS reflection table",
                ));
            }
            decode_msgpack(&inner, path, Container::GzipMsgpack)
        }
        Sniff::Hdf5 => Err(Error::file(
            path,
            format!(
                "HDF5 reflection tables (written with DIALS_USE_H5) are not supported; {}",
                convert_hint(path, &format!("{}_msgpack.refl", stem(path)))
            ),
        )),
        Sniff::Pickle => Err(Error::file(
            path,
            format!(
                "this is a legacy pickled reflection table (DIALS < 2.0), which is not supported; {}",
                convert_hint(path, &format!("{}.refl", stem(path)))
            ),
        )),
        Sniff::Empty => Err(Error::file(path, "empty file, expected a DIALS reflection table")),
        Sniff::Unknown => {
            let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
            Err(Error::file(
                path,
                format!(
                    "not a DIALS reflection table (msgpack .refl expected; file starts with {})",
                    head.join(" ")
                ),
            ))
        }
    }
}

fn decode_msgpack(bytes: &[u8], path: &Path, container: Container) -> Result<ReflFile> {
    let raw = scan_msgpack(bytes).map_err(|m| Error::file(path, m))?;
    let nrows = usize::try_from(raw.nrows)
        .map_err(|_| Error::file(path, format!("nrows = {} does not fit in memory", raw.nrows)))?;
    let mut table = ReflectionTable::new(nrows);
    table.identifiers = raw.identifiers;
    let mut warnings = Vec::new();
    for col in &raw.columns {
        let loc = || format!("column `{}`", col.name);
        if col.n_elements != raw.nrows {
            return Err(Error::record(
                path,
                loc(),
                format!("has {} elements but the table has nrows = {}", col.n_elements, raw.nrows),
            ));
        }
        let Some(ty) = ColumnType::from_dials_name(col.type_name) else {
            match col.type_name {
                "std::string" => warnings.push(format!(
                    "skipped column `{}` of type std::string: DIALS cannot store strings in .refl files (dials#1858)",
                    col.name
                )),
                "FrameSlicedShoebox<>" => warnings
                    .push(format!("skipped column `{}` of type FrameSlicedShoebox<> (not supported)", col.name)),
                other => {
                    let known: Vec<&str> = ColumnType::ALL.iter().map(|t| t.dials_name()).collect();
                    return Err(Error::record(
                        path,
                        loc(),
                        format!("unknown column type `{other}` (known: {})", known.join(", ")),
                    ));
                }
            }
            continue;
        };
        let column = decode_column(ty, col.blob, nrows).map_err(|(row, m)| match row {
            Some(r) => Error::record(path, format!("column `{}`, row {r}", col.name), m),
            None => Error::record(path, loc(), m),
        })?;
        table.insert(col.name, column).map_err(|e| Error::record(path, loc(), e.to_string()))?;
    }
    Ok(ReflFile { table, version: raw.version, container, warnings })
}

/// Parse the msgpack structure of an uncompressed `.refl` file without decoding the columns.
pub fn scan_refl<'a>(bytes: &'a [u8], path: &Path) -> Result<RawTable<'a>> {
    scan_msgpack(bytes).map_err(|m| Error::file(path, m))
}

fn scan_msgpack(bytes: &[u8]) -> std::result::Result<RawTable<'_>, String> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let n = r.array_len("top-level array")?;
    if n != 3 {
        return Err(format!("top-level msgpack array has {n} elements, expected 3"));
    }
    let file_type = r.str("file type")?;
    if file_type != FILE_TYPE {
        return Err(format!("file type is `{file_type}`, expected `{FILE_TYPE}`"));
    }
    let version = r.uint("table version")?;
    if version != 1 && version != 2 {
        return Err(format!("table version {version} is not supported (this reader knows versions 1 and 2)"));
    }
    let nkeys = r.map_len("header map")?;
    let (mut identifiers, mut nrows, mut columns) = (None, None, None);
    for _ in 0..nkeys {
        let key = r.str("header key")?;
        let repeated = || format!("header key `{key}` appears twice");
        match key {
            "identifiers" => {
                if identifiers.is_some() {
                    return Err(repeated());
                }
                let m = r.map_len("identifiers map")?;
                let mut ids = BTreeMap::new();
                for _ in 0..m {
                    let k = r.uint("experiment id")?;
                    let v = r.str("experiment identifier")?;
                    if ids.insert(k, v.to_string()).is_some() {
                        return Err(format!("experiment id {k} appears twice in identifiers"));
                    }
                }
                identifiers = Some(ids);
            }
            "nrows" => {
                if nrows.is_some() {
                    return Err(repeated());
                }
                nrows = Some(r.uint("nrows")?);
            }
            "data" => {
                if columns.is_some() {
                    return Err(repeated());
                }
                columns = Some(scan_columns(&mut r)?);
            }
            other => return Err(format!("unknown header key `{other}` (expected identifiers, nrows, data)")),
        }
    }
    let nrows = nrows.ok_or("header has no `nrows`")?;
    let columns = columns.ok_or("header has no `data`")?;
    if r.pos != bytes.len() {
        return Err(format!(
            "{} unexpected bytes after the table (from byte {})",
            bytes.len() - r.pos,
            r.pos
        ));
    }
    Ok(RawTable { version, nrows, identifiers: identifiers.unwrap_or_default(), columns })
}

fn scan_columns<'a>(r: &mut Reader<'a>) -> std::result::Result<Vec<RawColumn<'a>>, String> {
    let ncols = r.map_len("column map")?;
    let mut seen = BTreeSet::new();
    let mut cols = Vec::new();
    for _ in 0..ncols {
        let name = r.str("column name")?;
        let ctx = |m: String| format!("column `{name}`: {m}");
        if !seen.insert(name) {
            return Err(ctx("appears twice".into()));
        }
        let n = r.array_len("column entry").map_err(ctx)?;
        if n != 2 {
            return Err(ctx(format!("entry has {n} elements, expected [type, [count, data]]")));
        }
        let type_name = r.str("column type").map_err(ctx)?;
        let n = r.array_len("column body").map_err(ctx)?;
        if n != 2 {
            return Err(ctx(format!("body has {n} elements, expected [count, data]")));
        }
        let n_elements = r.uint("element count").map_err(ctx)?;
        let blob = r.bin("column data").map_err(ctx)?;
        cols.push(RawColumn { name, type_name, n_elements, blob });
    }
    Ok(cols)
}

/// Bounds-checked msgpack reader over a byte slice. Lengths are checked against what is
/// left before they are used.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Res<T> = std::result::Result<T, String>;

fn marker_kind(m: u8) -> &'static str {
    match m {
        0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff => "integer",
        0x80..=0x8f | 0xde | 0xdf => "map",
        0x90..=0x9f | 0xdc | 0xdd => "array",
        0xa0..=0xbf | 0xd9..=0xdb => "string",
        0xc0 => "nil",
        0xc1 => "reserved byte 0xc1",
        0xc2 | 0xc3 => "boolean",
        0xc4..=0xc6 => "binary",
        0xc7..=0xc9 | 0xd4..=0xd8 => "extension",
        0xca | 0xcb => "float",
    }
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Res<&'a [u8]> {
        if n > self.left() {
            return Err(format!(
                "truncated: {what} needs {n} bytes at byte {} but only {} remain",
                self.pos,
                self.left()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Big-endian unsigned integer of `n` (1, 2, 4 or 8) bytes.
    fn be(&mut self, n: usize, what: &str) -> Res<u64> {
        Ok(self.take(n, what)?.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn marker(&mut self, what: &str) -> Res<(usize, u8)> {
        let at = self.pos;
        Ok((at, self.take(1, what)?[0]))
    }

    fn unexpected(what: &str, expected: &str, at: usize, m: u8) -> String {
        format!("{what}: expected {expected} at byte {at}, found {} (0x{m:02x})", marker_kind(m))
    }

    fn uint(&mut self, what: &str) -> Res<u64> {
        let (at, m) = self.marker(what)?;
        let signed = |v: u64, bits: u32| -> Res<u64> {
            // Sign-extend; a non-negative signed encoding is accepted, a negative one is not.
            let s = ((v << (64 - bits)) as i64) >> (64 - bits);
            u64::try_from(s).map_err(|_| format!("{what}: negative value {s} at byte {at}"))
        };
        match m {
            0x00..=0x7f => Ok(m as u64),
            0xcc => self.be(1, what),
            0xcd => self.be(2, what),
            0xce => self.be(4, what),
            0xcf => self.be(8, what),
            0xd0 => signed(self.be(1, what)?, 8),
            0xd1 => signed(self.be(2, what)?, 16),
            0xd2 => signed(self.be(4, what)?, 32),
            0xd3 => signed(self.be(8, what)?, 64),
            0xe0..=0xff => Err(format!("{what}: negative value {} at byte {at}", m as i8)),
            _ => Err(Self::unexpected(what, "an unsigned integer", at, m)),
        }
    }

    fn len_as_usize(v: u64) -> usize {
        // Lengths come from at most 32-bit fields; usize is at least 32 bits.
        v as usize
    }

    fn array_len(&mut self, what: &str) -> Res<usize> {
        let (at, m) = self.marker(what)?;
        match m {
            0x90..=0x9f => Ok((m & 0x0f) as usize),
            0xdc => Ok(Self::len_as_usize(self.be(2, what)?)),
            0xdd => Ok(Self::len_as_usize(self.be(4, what)?)),
            _ => Err(Self::unexpected(what, "an array", at, m)),
        }
    }

    fn map_len(&mut self, what: &str) -> Res<usize> {
        let (at, m) = self.marker(what)?;
        match m {
            0x80..=0x8f => Ok((m & 0x0f) as usize),
            0xde => Ok(Self::len_as_usize(self.be(2, what)?)),
            0xdf => Ok(Self::len_as_usize(self.be(4, what)?)),
            _ => Err(Self::unexpected(what, "a map", at, m)),
        }
    }

    fn str(&mut self, what: &str) -> Res<&'a str> {
        let (at, m) = self.marker(what)?;
        let n = match m {
            0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 => Self::len_as_usize(self.be(1, what)?),
            0xda => Self::len_as_usize(self.be(2, what)?),
            0xdb => Self::len_as_usize(self.be(4, what)?),
            _ => return Err(Self::unexpected(what, "a string", at, m)),
        };
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map_err(|_| format!("{what}: string at byte {at} is not valid UTF-8"))
    }

    fn bin(&mut self, what: &str) -> Res<&'a [u8]> {
        let (at, m) = self.marker(what)?;
        let n = match m {
            0xc4 => Self::len_as_usize(self.be(1, what)?),
            0xc5 => Self::len_as_usize(self.be(2, what)?),
            0xc6 => Self::len_as_usize(self.be(4, what)?),
            _ => return Err(Self::unexpected(what, "binary data", at, m)),
        };
        self.take(n, what)
    }
}

// ---------------------------------------------------------------------------------------
// Column blobs

type ColRes<T> = std::result::Result<T, (Option<usize>, String)>;

/// Split `blob` into `N`-byte elements and convert each (one allocation for the column).
fn fixed<T, const N: usize>(blob: &[u8], f: impl Fn(&[u8; N]) -> T) -> Vec<T> {
    blob.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(&a)
        })
        .collect()
}

fn f64_at(b: &[u8], i: usize) -> f64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[8 * i..8 * i + 8]);
    f64::from_le_bytes(a)
}

fn i32_at(b: &[u8], i: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[4 * i..4 * i + 4]);
    i32::from_le_bytes(a)
}

fn decode_column(ty: ColumnType, blob: &[u8], nrows: usize) -> ColRes<Column> {
    let Some(size) = ty.element_size() else {
        return decode_shoeboxes(blob, nrows).map(Column::Shoebox);
    };
    let expected = nrows.checked_mul(size);
    if expected != Some(blob.len()) {
        return Err((
            None,
            format!(
                "{ty} data has {} bytes, expected {nrows} × {size} = {}",
                blob.len(),
                nrows as u128 * size as u128
            ),
        ));
    }
    Ok(match ty {
        ColumnType::Bool => {
            if let Some(i) = blob.iter().position(|&b| b > 1) {
                return Err((Some(i), format!("bool byte is {} (expected 0 or 1)", blob[i])));
            }
            Column::Bool(blob.iter().map(|&b| b == 1).collect())
        }
        ColumnType::Int => Column::Int(fixed::<_, 4>(blob, |a| i32::from_le_bytes(*a))),
        ColumnType::Size => Column::Size(fixed::<_, 8>(blob, |a| u64::from_le_bytes(*a))),
        ColumnType::Double => Column::Double(fixed::<_, 8>(blob, |a| f64::from_le_bytes(*a))),
        ColumnType::Vec2 => Column::Vec2(fixed::<_, 16>(blob, |a| [f64_at(a, 0), f64_at(a, 1)])),
        ColumnType::Vec3 => {
            Column::Vec3(fixed::<_, 24>(blob, |a| [f64_at(a, 0), f64_at(a, 1), f64_at(a, 2)]))
        }
        ColumnType::Mat3 => Column::Mat3(fixed::<_, 72>(blob, |a| std::array::from_fn(|i| f64_at(a, i)))),
        ColumnType::Int6 => Column::Int6(fixed::<_, 24>(blob, |a| std::array::from_fn(|i| i32_at(a, i)))),
        ColumnType::Miller => {
            Column::Miller(fixed::<_, 12>(blob, |a| [i32_at(a, 0), i32_at(a, 1), i32_at(a, 2)]))
        }
        ColumnType::Shoebox => unreachable!("shoeboxes have no fixed element size"),
    })
}

fn f32s(b: &[u8]) -> Vec<f32> {
    fixed::<_, 4>(b, |a| f32::from_le_bytes(*a))
}

fn decode_shoeboxes(blob: &[u8], nrows: usize) -> ColRes<Vec<Shoebox>> {
    // Each record is at least a header long: check before reserving nrows records.
    if (nrows as u128) * (SHOEBOX_HEADER as u128) > blob.len() as u128 {
        return Err((None, format!("{} bytes of shoebox data cannot hold {nrows} shoeboxes", blob.len())));
    }
    let mut r = Reader { buf: blob, pos: 0 };
    let mut out = Vec::with_capacity(nrows);
    for row in 0..nrows {
        let err = |m: String| (Some(row), m);
        let h = r.take(SHOEBOX_HEADER, "shoebox header").map_err(err)?;
        let panel = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        // DIALS writes int32 bounds (and reads them back through uint32; negatives survive).
        let bbox: [i32; 6] = std::array::from_fn(|i| i32_at(&h[4..28], i));
        let flag = h[28];
        let mut sb = Shoebox { panel, bbox, data: None };
        let nvox = sb.num_voxels().map_err(err)?;
        match flag {
            0 => {}
            1 | 2 => {
                let mask_size: u64 = if flag == 1 { 4 } else { 1 };
                let need = nvox as u128 * (8 + mask_size) as u128;
                if need > r.left() as u128 {
                    return Err(err(format!(
                        "shoebox {:?} needs {need} bytes of pixels but only {} remain",
                        bbox,
                        r.left()
                    )));
                }
                let n = nvox as usize; // fits: n * 9 <= bytes left
                let data = f32s(r.take(4 * n, "shoebox data").map_err(err)?);
                let mask_bytes = r.take(mask_size as usize * n, "shoebox mask").map_err(err)?;
                let mask = if flag == 1 {
                    ShoeboxMask::I32(fixed::<_, 4>(mask_bytes, |a| i32::from_le_bytes(*a)))
                } else {
                    ShoeboxMask::U8(mask_bytes.to_vec())
                };
                let background = f32s(r.take(4 * n, "shoebox background").map_err(err)?);
                sb.data = Some(ShoeboxData { data, mask, background });
            }
            f => return Err(err(format!("unknown shoebox data flag {f} (expected 0, 1 or 2)"))),
        }
        out.push(sb);
    }
    if r.left() != 0 {
        return Err((None, format!("{} bytes left over after the last shoebox", r.left())));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Writer

/// Write `table` to `path` atomically (temporary file, then rename).
pub fn write_refl(path: impl AsRef<Path>, table: &ReflectionTable) -> Result<()> {
    let path = path.as_ref();
    let bytes =
        encode_refl(table).map_err(|e| Error::file(path, format!("cannot write reflection table: {e}")))?;
    write_atomic(path, &bytes)
}

/// The table version [`encode_refl`] writes: 2 when a shoebox holds a u8 mask, else 1.
pub fn table_version(table: &ReflectionTable) -> u64 {
    let has_u8 = table.columns().any(|(_, c)| match c {
        Column::Shoebox(v) => {
            v.iter().any(|s| matches!(&s.data, Some(d) if matches!(d.mask, ShoeboxMask::U8(_))))
        }
        _ => false,
    });
    if has_u8 {
        2
    } else {
        1
    }
}

fn shoebox_record_size(s: &Shoebox) -> u64 {
    let n = s.data.as_ref().map_or(0, |d| d.data.len() as u64);
    let mask = match s.data.as_ref().map(|d| &d.mask) {
        Some(ShoeboxMask::I32(_)) => 4,
        Some(ShoeboxMask::U8(_)) => 1,
        None => 0,
    };
    SHOEBOX_HEADER as u64 + n * (8 + mask)
}

/// Encode `table` in DIALS' msgpack layout.
pub fn encode_refl(table: &ReflectionTable) -> Result<Vec<u8>> {
    let mut blob_sizes = Vec::with_capacity(table.ncols());
    for (name, col) in table.columns() {
        let size = match col {
            Column::Shoebox(v) => {
                let mut total = 0u64;
                for (row, s) in v.iter().enumerate() {
                    s.validate().map_err(|m| Error::msg(format!("column `{name}`, row {row}: {m}")))?;
                    total += shoebox_record_size(s);
                }
                total
            }
            c => c.len() as u64 * c.column_type().element_size().unwrap_or(0) as u64,
        };
        if size > u32::MAX as u64 {
            return Err(Error::msg(format!(
                "column `{name}` needs {size} bytes; a msgpack .refl column holds at most 4 GiB (split the table)"
            )));
        }
        blob_sizes.push(size as usize);
    }

    let mut w = Vec::with_capacity(
        blob_sizes.iter().sum::<usize>() + 64 * (table.ncols() + table.identifiers.len()) + 64,
    );
    put_array_len(&mut w, 3)?;
    put_str(&mut w, FILE_TYPE)?;
    put_uint(&mut w, table_version(table));
    put_map_len(&mut w, 3)?;
    put_str(&mut w, "identifiers")?;
    put_map_len(&mut w, table.identifiers.len())?;
    for (k, v) in &table.identifiers {
        put_uint(&mut w, *k);
        put_str(&mut w, v)?;
    }
    put_str(&mut w, "nrows")?;
    put_uint(&mut w, table.nrows() as u64);
    put_str(&mut w, "data")?;
    put_map_len(&mut w, table.ncols())?;
    for ((name, col), size) in table.columns().zip(blob_sizes) {
        put_str(&mut w, name)?;
        put_array_len(&mut w, 2)?;
        put_str(&mut w, col.column_type().dials_name())?;
        put_array_len(&mut w, 2)?;
        put_uint(&mut w, col.len() as u64);
        put_bin_header(&mut w, size)?;
        let start = w.len();
        put_blob(&mut w, col);
        debug_assert_eq!(w.len() - start, size);
    }
    Ok(w)
}

fn put_blob(w: &mut Vec<u8>, col: &Column) {
    fn each<T>(w: &mut Vec<u8>, v: &[T], f: impl Fn(&mut Vec<u8>, &T)) {
        for x in v {
            f(w, x);
        }
    }
    fn f64s(w: &mut Vec<u8>, v: &[f64]) {
        for x in v {
            w.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn i32s(w: &mut Vec<u8>, v: &[i32]) {
        for x in v {
            w.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn f32s(w: &mut Vec<u8>, v: &[f32]) {
        for x in v {
            w.extend_from_slice(&x.to_le_bytes());
        }
    }
    match col {
        Column::Bool(v) => w.extend(v.iter().map(|&b| b as u8)),
        Column::Int(v) => i32s(w, v),
        Column::Size(v) => each(w, v, |w, x| w.extend_from_slice(&x.to_le_bytes())),
        Column::Double(v) => f64s(w, v),
        Column::Vec2(v) => each(w, v, |w, x| f64s(w, x)),
        Column::Vec3(v) => each(w, v, |w, x| f64s(w, x)),
        Column::Mat3(v) => each(w, v, |w, x| f64s(w, x)),
        Column::Int6(v) => each(w, v, |w, x| i32s(w, x)),
        Column::Miller(v) => each(w, v, |w, x| i32s(w, x)),
        Column::Shoebox(v) => each(w, v, |w, s| {
            w.extend_from_slice(&s.panel.to_le_bytes());
            i32s(w, &s.bbox);
            match &s.data {
                None => w.push(0),
                Some(d) => {
                    w.push(if matches!(d.mask, ShoeboxMask::I32(_)) { 1 } else { 2 });
                    f32s(w, &d.data);
                    match &d.mask {
                        ShoeboxMask::I32(m) => i32s(w, m),
                        ShoeboxMask::U8(m) => w.extend_from_slice(m),
                    }
                    f32s(w, &d.background);
                }
            }
        }),
    }
}

fn too_long(what: &str, n: usize) -> Error {
    Error::msg(format!("{what} of length {n} is too long for msgpack"))
}

/// Smallest unsigned encoding, as msgpack-c packs `size_t`.
fn put_uint(w: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        w.push(v as u8);
    } else if v <= u8::MAX as u64 {
        w.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u16::MAX as u64 {
        w.push(0xcd);
        w.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u32::MAX as u64 {
        w.push(0xce);
        w.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        w.push(0xcf);
        w.extend_from_slice(&v.to_be_bytes());
    }
}

/// msgpack length prefix: the fix form (marker base, exclusive limit) when there is one and
/// `n` fits, else the 8-bit form when there is one, else 16 or 32 bits.
fn put_len(
    w: &mut Vec<u8>,
    n: usize,
    fix: Option<(u8, usize)>,
    m8: Option<u8>,
    m16: u8,
    m32: u8,
    what: &str,
) -> Result<()> {
    if let Some((base, limit)) = fix {
        if n < limit {
            w.push(base | n as u8);
            return Ok(());
        }
    }
    if let Some(m) = m8 {
        if n <= u8::MAX as usize {
            w.extend_from_slice(&[m, n as u8]);
            return Ok(());
        }
    }
    if n <= u16::MAX as usize {
        w.push(m16);
        w.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n as u64 <= u32::MAX as u64 {
        w.push(m32);
        w.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        return Err(too_long(what, n));
    }
    Ok(())
}

fn put_array_len(w: &mut Vec<u8>, n: usize) -> Result<()> {
    put_len(w, n, Some((0x90, 16)), None, 0xdc, 0xdd, "array")
}

fn put_map_len(w: &mut Vec<u8>, n: usize) -> Result<()> {
    put_len(w, n, Some((0x80, 16)), None, 0xde, 0xdf, "map")
}

fn put_str(w: &mut Vec<u8>, s: &str) -> Result<()> {
    put_len(w, s.len(), Some((0xa0, 32)), Some(0xd9), 0xda, 0xdb, "string")?;
    w.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_bin_header(w: &mut Vec<u8>, n: usize) -> Result<()> {
    put_len(w, n, None, Some(0xc4), 0xc5, 0xc6, "binary")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| Error::file(path, "not a file path"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_encodings_are_smallest() {
        let cases: [(u64, &[u8]); 7] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0xcc, 0x80]),
            (255, &[0xcc, 0xff]),
            (256, &[0xcd, 0x01, 0x00]),
            (65536, &[0xce, 0x00, 0x01, 0x00, 0x00]),
            (1 << 32, &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
        ];
        for (v, enc) in cases {
            let mut w = Vec::new();
            put_uint(&mut w, v);
            assert_eq!(w, enc, "{v}");
            assert_eq!(Reader { buf: &w, pos: 0 }.uint("x").unwrap(), v);
        }
    }

    #[test]
    fn length_encodings_follow_msgpack() {
        let mut w = Vec::new();
        put_str(&mut w, &"a".repeat(31)).unwrap();
        assert_eq!(w[0], 0xbf);
        w.clear();
        put_str(&mut w, &"a".repeat(32)).unwrap();
        assert_eq!(&w[..2], &[0xd9, 32]);
        w.clear();
        put_str(&mut w, &"a".repeat(256)).unwrap();
        assert_eq!(&w[..3], &[0xda, 1, 0]);
        w.clear();
        put_bin_header(&mut w, 3).unwrap();
        assert_eq!(w, [0xc4, 3]);
        w.clear();
        put_bin_header(&mut w, 70000).unwrap();
        assert_eq!(w, [0xc6, 0, 1, 0x11, 0x70]);
        w.clear();
        put_map_len(&mut w, 16).unwrap();
        assert_eq!(w, [0xde, 0, 16]);
        w.clear();
        put_array_len(&mut w, 15).unwrap();
        assert_eq!(w, [0x9f]);
    }

    #[test]
    fn signed_encodings_of_counts_are_accepted_when_non_negative() {
        assert_eq!(Reader { buf: &[0xd1, 0x01, 0x00], pos: 0 }.uint("n").unwrap(), 256);
        assert!(Reader { buf: &[0xd0, 0xff], pos: 0 }.uint("n").unwrap_err().contains("negative value -1"));
        assert!(Reader { buf: &[0xff], pos: 0 }.uint("n").unwrap_err().contains("negative"));
        assert!(Reader { buf: &[0xcb], pos: 0 }.uint("n").unwrap_err().contains("float"));
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"\x93\xbbdials"), Sniff::Msgpack);
        assert_eq!(sniff(b"\x1f\x8b\x08"), Sniff::Gzip);
        assert_eq!(sniff(b"\x89HDF\r\n\x1a\n"), Sniff::Hdf5);
        assert_eq!(sniff(b"\x80\x02cdials"), Sniff::Pickle);
        assert_eq!(sniff(b"\x80\x06"), Sniff::Unknown);
        assert_eq!(sniff(b""), Sniff::Empty);
    }
}
