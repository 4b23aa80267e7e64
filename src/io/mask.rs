//! Per-panel trusted-pixel masks (`spotfinder.lookup.mask`, `roi.hotpixel_mask`).
//!
//! # Convention
//! **Nonzero / true = trusted (good) pixel**, as DIALS' `lookup.mask`. One
//! 2-D array per detector panel, row-major `(slow, fast)` like the images.
//!
//! # Layouts read (chosen by the file's content, never its name)
//! * **NPY** (`numpy.save`): a bool, integer or float array of shape
//!   `(n_panels, n_slow, n_fast)`, or `(n_slow, n_fast)` for a one-panel
//!   detector; C or Fortran order, either byte order.
//! * **HDF5**: a root dataset `mask` of the same shapes, or, for panels of
//!   different sizes, root datasets `panel_0`, `panel_1`, … of shape
//!   `(n_slow, n_fast)`. Bool (h5py's enum), integer or float values.
//! * A **DIALS mask pickle** (a tuple of `flex.bool`, what `dials.generate_mask`
//!   writes) cannot be read without Python: it is refused with one error that
//!   gives the conversion command ([`PICKLE_HELP`]).
//!
//! Converting a DIALS pickle (run with cctbx's python, `dials.python`):
//! ```text
//! dials.python -c "import pickle,numpy as np; m=pickle.load(open('in.mask','rb'),encoding='bytes'); np.save('out.npy', np.array([p.as_numpy_array() for p in m]))"
//! ```

use std::path::Path;

use ::hdf5::types::TypeDescriptor;

use crate::error::{io_err, Error, Result};
use crate::geometry::Detector;

/// What to run to convert a DIALS mask pickle.
pub const PICKLE_HELP: &str = "convert it once with cctbx's python: dials.python -c \"import pickle,numpy as np; \
m=pickle.load(open('IN.mask','rb'),encoding='bytes'); np.save('OUT.npy', np.array([p.as_numpy_array() for p in m]))\" \
and give OUT.npy instead (an HDF5 file with a `mask` dataset works too)";

/// Largest mask accepted (pixels); guards against corrupt headers.
const MAX_PIXELS: usize = 1 << 31;

/// One panel's mask.
#[derive(Clone, Debug, PartialEq)]
pub struct PanelMask {
    pub n_slow: usize,
    pub n_fast: usize,
    /// Row-major `(slow, fast)`; true = trusted.
    pub trusted: Vec<bool>,
}

/// A whole detector's mask.
#[derive(Clone, Debug, PartialEq)]
pub struct TrustedMask {
    pub panels: Vec<PanelMask>,
}

impl TrustedMask {
    /// Check that the mask has the detector's panels and panel sizes.
    pub fn check_detector(&self, det: &Detector, path: &Path) -> Result<()> {
        if self.panels.len() != det.panels.len() {
            return Err(Error::file(
                path,
                format!("mask has {} panel(s), the detector {}", self.panels.len(), det.panels.len()),
            ));
        }
        for (i, (m, p)) in self.panels.iter().zip(&det.panels).enumerate() {
            if [m.n_fast, m.n_slow] != p.image_size {
                return Err(Error::file(
                    path,
                    format!(
                        "mask panel {i} is {}×{} (fast×slow), the detector panel {}×{}",
                        m.n_fast, m.n_slow, p.image_size[0], p.image_size[1]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Number of trusted pixels.
    pub fn n_trusted(&self) -> usize {
        self.panels.iter().map(|p| p.trusted.iter().filter(|&&t| t).count()).sum()
    }
}

/// Read a mask file (see the module doc for the layouts).
pub fn read_mask(path: impl AsRef<Path>) -> Result<TrustedMask> {
    let path = path.as_ref();
    if path.is_dir() {
        return Err(Error::file(path, "is a folder, not a mask file"));
    }
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    if bytes.starts_with(b"\x93NUMPY") {
        return parse_npy(&bytes, path);
    }
    if crate::image::has_hdf5_signature(path)? {
        return read_h5(path);
    }
    if looks_like_pickle(&bytes) {
        return Err(Error::file(
            path,
            format!("this is a Python pickle (a DIALS mask?), which cannot be read; {PICKLE_HELP}"),
        ));
    }
    Err(Error::file(path, "not a mask file: expected NPY (numpy.save) or HDF5 with a `mask` dataset"))
}

/// Pickle protocol 2–5 header (`0x80 n`), or a protocol-0 tuple of class instances (`(c`).
fn looks_like_pickle(b: &[u8]) -> bool {
    matches!(b, [0x80, 2..=5, ..]) || b.starts_with(b"(c")
}

/// Split a flat C-order stack into panels.
fn split_panels(shape: &[usize], values: Vec<bool>, path: &Path) -> Result<TrustedMask> {
    let (np, ns, nf) = match *shape {
        [ns, nf] => (1, ns, nf),
        [np, ns, nf] => (np, ns, nf),
        _ => {
            return Err(Error::file(
                path,
                format!(
                    "mask array has shape {shape:?}; expected (n_panels, n_slow, n_fast) or (n_slow, n_fast)"
                ),
            ))
        }
    };
    if np == 0 || ns == 0 || nf == 0 {
        return Err(Error::file(path, format!("mask array of shape {shape:?} is empty")));
    }
    let per = ns * nf;
    debug_assert_eq!(values.len(), np * per);
    let panels =
        values.chunks_exact(per).map(|c| PanelMask { n_slow: ns, n_fast: nf, trusted: c.to_vec() }).collect();
    Ok(TrustedMask { panels })
}

/// Element count of `shape`, guarded.
fn n_elems(shape: &[usize], path: &Path) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_PIXELS)
        .ok_or_else(|| Error::file(path, format!("mask shape {shape:?} is too large (corrupt header?)")))
}

// ---------------------------------------------------------------------------
// NPY

/// Parse an NPY file (format versions 1–3).
pub fn parse_npy(b: &[u8], path: &Path) -> Result<TrustedMask> {
    let bad = |m: &str| Error::file(path, format!("NPY: {m}"));
    if b.len() < 10 || !b.starts_with(b"\x93NUMPY") {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let major = b[6];
    let (hlen, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err(bad("truncated header"));
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let end = start.checked_add(hlen).filter(|&e| e <= b.len()).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(&b[start..end]).map_err(|_| bad("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad("header has no 'descr'"))?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let fortran = match dict_value(header, "fortran_order").map(str::trim) {
        Some("False") => false,
        Some("True") => true,
        _ => return Err(bad("header has no valid 'fortran_order'")),
    };
    let shape_text = dict_value(header, "shape").ok_or_else(|| bad("header has no 'shape'"))?;
    let shape = parse_shape(shape_text).ok_or_else(|| bad(&format!("cannot read shape {shape_text}")))?;
    let n = n_elems(&shape, path)?;
    let (kind, size, big) = parse_descr(descr)
        .ok_or_else(|| bad(&format!("unsupported dtype '{descr}' (use bool, integers or floats)")))?;
    let data = &b[end..];
    let need = n.checked_mul(size).ok_or_else(|| bad("size overflow"))?;
    if data.len() < need {
        return Err(bad(&format!("data holds {} bytes, the shape needs {need}", data.len())));
    }
    let mut flat: Vec<bool> = (0..n).map(|i| nonzero(&data[i * size..(i + 1) * size], kind, big)).collect();
    if fortran && shape.len() > 1 {
        flat = fortran_to_c(&flat, &shape);
    }
    split_panels(&shape, flat, path)
}

/// The text of `key`'s value in a Python dict literal (up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let s = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| t.parse().ok()).collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    Int,
    Uint,
    Float,
}

/// (kind, item size, big-endian) of an NPY `descr` such as `|b1`, `<i4`, `>f8`.
fn parse_descr(d: &str) -> Option<(Kind, usize, bool)> {
    let mut c = d.chars();
    let order = c.next()?;
    let big = match order {
        '<' | '|' | '=' => false,
        '>' => true,
        _ => return None,
    };
    let kind = match c.next()? {
        'b' => Kind::Bool,
        'i' => Kind::Int,
        'u' => Kind::Uint,
        'f' => Kind::Float,
        _ => return None,
    };
    let size: usize = c.as_str().parse().ok()?;
    let ok = match kind {
        Kind::Bool => size == 1,
        Kind::Int | Kind::Uint => matches!(size, 1 | 2 | 4 | 8),
        Kind::Float => matches!(size, 4 | 8),
    };
    ok.then_some((kind, size, big))
}

fn nonzero(bytes: &[u8], kind: Kind, big: bool) -> bool {
    match kind {
        Kind::Bool | Kind::Int | Kind::Uint => bytes.iter().any(|&x| x != 0),
        Kind::Float => {
            let mut v = [0u8; 8];
            let n = bytes.len();
            v[..n].copy_from_slice(bytes);
            if big {
                v[..n].reverse();
            }
            let x = if n == 4 {
                f32::from_le_bytes([v[0], v[1], v[2], v[3]]) as f64
            } else {
                f64::from_le_bytes(v)
            };
            // NaN is not a trusted marker.
            x != 0.0 && !x.is_nan()
        }
    }
}

/// Reorder a Fortran-order array into C order.
fn fortran_to_c(f: &[bool], shape: &[usize]) -> Vec<bool> {
    let nd = shape.len();
    let mut out = vec![false; f.len()];
    let mut idx = vec![0usize; nd];
    for (c_lin, o) in out.iter_mut().enumerate() {
        let mut r = c_lin;
        for d in (0..nd).rev() {
            idx[d] = r % shape[d];
            r /= shape[d];
        }
        let mut f_lin = 0;
        let mut stride = 1;
        for d in 0..nd {
            f_lin += idx[d] * stride;
            stride *= shape[d];
        }
        *o = f[f_lin];
    }
    out
}

// ---------------------------------------------------------------------------
// HDF5

fn read_h5(path: &Path) -> Result<TrustedMask> {
    let file = crate::io::hdf5::open_file(path)?;
    if let Ok(ds) = file.dataset("mask") {
        let shape = ds.shape();
        let values = read_bools(&ds, path)?;
        return split_panels(&shape, values, path);
    }
    let mut panels = Vec::new();
    while let Ok(ds) = file.dataset(&format!("panel_{}", panels.len())) {
        let shape = ds.shape();
        let values = read_bools(&ds, path)?;
        match split_panels(&shape, values, path)?.panels.as_slice() {
            [one] => panels.push(one.clone()),
            _ => {
                return Err(Error::record(
                    path,
                    format!("dataset panel_{}", panels.len()),
                    format!("shape {shape:?}: each panel_<i> dataset must be 2-D (n_slow, n_fast)"),
                ))
            }
        }
    }
    if panels.is_empty() {
        return Err(Error::file(
            path,
            "HDF5 mask needs a root dataset `mask` (or `panel_0`, `panel_1`, ...)",
        ));
    }
    Ok(TrustedMask { panels })
}

fn read_bools(ds: &::hdf5::Dataset, path: &Path) -> Result<Vec<bool>> {
    let what = format!("dataset {}", ds.name());
    let err = |m: String| Error::record(path, what.clone(), m);
    n_elems(&ds.shape(), path)?;
    let dt = ds.dtype().map_err(|e| err(e.to_string()))?;
    match dt.to_descriptor() {
        Ok(TypeDescriptor::Boolean) => ds.read_raw::<bool>().map_err(|e| err(e.to_string())),
        Ok(TypeDescriptor::Enum(e)) if e.size as usize == 1 => {
            // h5py stores numpy bools as an int8 enum {FALSE: 0, TRUE: 1}.
            ds.read_raw::<bool>().map_err(|e| err(e.to_string()))
        }
        _ => Ok(crate::io::hdf5::read_f64(ds, path)?.into_iter().map(|v| v != 0.0 && !v.is_nan()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let shape_s = match shape.len() {
            1 => format!("({},)", shape[0]),
            _ => format!("({})", shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let mut h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape_s}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn npy_layouts() {
        let p = Path::new("m.npy");
        // (2 panels, 2 slow, 3 fast), bool.
        let data = [1u8, 0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 1];
        let m = parse_npy(&npy("|b1", false, &[2, 2, 3], &data), p).unwrap();
        assert_eq!(m.panels.len(), 2);
        assert_eq!(m.panels[0].trusted, vec![true, false, true, true, true, true]);
        assert_eq!(m.panels[1].trusted, vec![false, false, false, true, false, true]);
        assert_eq!(m.n_trusted(), 7);
        // One panel, big-endian float; NaN counts as untrusted.
        let mut d = Vec::new();
        for v in [0.0f64, 2.5, f64::NAN, -1.0] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        let m = parse_npy(&npy(">f8", false, &[2, 2], &d), p).unwrap();
        assert_eq!(m.panels[0].trusted, vec![false, true, false, true]);
        // Fortran order: element (s, f) at s + f·n_slow.
        let m = parse_npy(&npy("|u1", true, &[2, 3], &[1, 0, 0, 0, 0, 1]), p).unwrap();
        assert_eq!(m.panels[0].trusted, vec![true, false, false, false, false, true]);
        // Errors name the problem.
        assert!(parse_npy(&npy("<c16", false, &[1, 1], &[0; 16]), p)
            .unwrap_err()
            .to_string()
            .contains("dtype"));
        assert!(parse_npy(&npy("|b1", false, &[2, 2], &[1, 1]), p)
            .unwrap_err()
            .to_string()
            .contains("bytes"));
        assert!(parse_npy(&npy("|b1", false, &[4], &[1; 4]), p).unwrap_err().to_string().contains("shape"));
    }

    #[test]
    fn npy_fuzz_never_panics() {
        let base = npy("<i4", false, &[2, 3, 4], &[1u8; 96]);
        let mut rng = 0x9E3779B97F4A7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut n_ok = 0;
        for _ in 0..3000 {
            let mut b = base.clone();
            match next() % 3 {
                0 => b.truncate((next() as usize) % base.len()),
                _ => {
                    for _ in 0..1 + next() % 4 {
                        let i = (next() as usize) % b.len();
                        b[i] ^= 1 << (next() % 8);
                    }
                }
            }
            let r = std::panic::catch_unwind(|| parse_npy(&b, Path::new("fuzz.npy")));
            assert!(r.is_ok(), "panic on mutated input");
            n_ok += r.unwrap().is_ok() as usize;
        }
        assert!(n_ok > 0 && n_ok < 3000);
    }
}
