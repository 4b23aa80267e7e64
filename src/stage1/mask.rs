//! Per-pixel masks (`roi.hotpixel_mask`): **true = good pixel**.
//!
//! \[TRAP\] decided: diffBragg loads the DIALS mask pickle as `is_trusted`
//! (True = good), whatever its help text says; DIALS masks mean the same. We
//! keep that polarity.
//!
//! Accepted files (chosen by content, never by name):
//! * **NPY** (`numpy.save`): a C-ordered array of shape `(n_panels, n_slow,
//!   n_fast)` or, for a one-panel detector, `(n_slow, n_fast)`; dtype bool or
//!   any integer (non-zero = good).
//! * **HDF5**: a dataset `/mask` (else the only dataset at the root) with the
//!   same shapes and dtypes.
//! * A Python **pickle** (what `dials.generate_mask` writes) is refused with one
//!   error that says how to convert it, since its flex arrays use scitbx's own
//!   serialisation.

use std::path::Path;

use crate::error::{io_err, Error, Result};

/// A mask: one `Vec<bool>` per panel, row-major `(slow, fast)`.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelMask {
    pub panels: Vec<Vec<bool>>,
    /// `(n_slow, n_fast)` of every panel.
    pub shape: (usize, usize),
}

const PICKLE_HELP: &str = "this is a Python pickle (a DIALS mask), which cannot be read here; \
convert it once with DIALS, e.g. `dials.python -c \"import pickle, numpy as np; \
m = pickle.load(open('IN.mask', 'rb')); np.save('OUT.npy', np.array([p.as_numpy_array() for p in m]))\"` \
and set roi.hotpixel_mask=OUT.npy (true = good pixel)";

impl PixelMask {
    /// Read a mask file (see the module doc) and check it against the panel sizes
    /// `(n_fast, n_slow)` of the detector.
    pub fn read(path: &Path, panels: &[[usize; 2]]) -> Result<PixelMask> {
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        let m = if bytes.starts_with(b"\x93NUMPY") {
            parse_npy(&bytes, path)?
        } else if bytes.starts_with(&crate::image::HDF5_SIGNATURE) {
            read_h5(path)?
        } else if bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
            return Err(Error::file(path, PICKLE_HELP));
        } else {
            return Err(Error::file(path, "not a mask file: expected NPY or HDF5 (true = good pixel)"));
        };
        m.check(path, panels)?;
        Ok(m)
    }

    fn check(&self, path: &Path, panels: &[[usize; 2]]) -> Result<()> {
        if self.panels.len() != panels.len() {
            return Err(Error::file(
                path,
                format!("mask has {} panel(s), the detector {}", self.panels.len(), panels.len()),
            ));
        }
        for (i, p) in panels.iter().enumerate() {
            if (self.shape.1, self.shape.0) != (p[0], p[1]) {
                return Err(Error::file(
                    path,
                    format!(
                        "mask panels are {}×{} (fast×slow), detector panel {i} is {}×{}",
                        self.shape.1, self.shape.0, p[0], p[1]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether pixel (fast, slow) of `panel` is good.
    pub fn good(&self, panel: usize, fast: usize, slow: usize) -> bool {
        self.panels[panel][slow * self.shape.1 + fast]
    }

    fn from_flat(shape: &[usize], good: Vec<bool>, path: &Path) -> Result<PixelMask> {
        let (np, ns, nf) = match *shape {
            [s, f] => (1, s, f),
            [p, s, f] => (p, s, f),
            _ => {
                return Err(Error::file(
                    path,
                    format!("mask shape {shape:?}: expected (panels, slow, fast) or (slow, fast)"),
                ))
            }
        };
        if np == 0
            || ns == 0
            || nf == 0
            || np.checked_mul(ns).and_then(|x| x.checked_mul(nf)) != Some(good.len())
        {
            return Err(Error::file(
                path,
                format!("mask shape {shape:?} does not match its {} values", good.len()),
            ));
        }
        let panels = good.chunks(ns * nf).map(|c| c.to_vec()).collect();
        Ok(PixelMask { panels, shape: (ns, nf) })
    }
}

/// Parse an NPY file (versions 1–3, little-endian or byte-typed, C order).
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<PixelMask> {
    let bad = |m: &str| Error::file(path, format!("NPY: {m}"));
    if bytes.len() < 10 || !bytes.starts_with(b"\x93NUMPY") {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let major = bytes[6];
    let (hlen, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header"));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let end = start.checked_add(hlen).filter(|&e| e <= bytes.len()).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let k = header.find(&format!("'{key}'"))?;
        let rest = &header[k + key.len() + 2..];
        let colon = rest.find(':')?;
        Some(rest[colon + 1..].trim_start())
    };
    let descr = field("descr").ok_or_else(|| bad("no 'descr' in the header"))?;
    let descr =
        descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or_else(|| bad("bad 'descr'"))?;
    let fortran = field("fortran_order").ok_or_else(|| bad("no 'fortran_order' in the header"))?;
    if fortran.starts_with("True") {
        return Err(bad("Fortran-ordered arrays are not supported; save with np.ascontiguousarray"));
    }
    let shape_txt = field("shape").ok_or_else(|| bad("no 'shape' in the header"))?;
    let close = shape_txt
        .find(')')
        .filter(|&c| c >= 1 && shape_txt.starts_with('('))
        .ok_or_else(|| bad("bad 'shape'"))?;
    let shape: Vec<usize> = shape_txt[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| bad("bad 'shape'")))
        .collect::<Result<_>>()?;
    let n = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or_else(|| bad("shape overflows"))?;
    let data = &bytes[end..];
    if descr.len() < 3 || !descr.is_ascii() {
        return Err(bad(&format!("unsupported dtype {descr}")));
    }
    let (kind, size, big) = {
        let (order, rest) = descr.split_at(1);
        let big = order == ">";
        if !matches!(order, "<" | ">" | "|" | "=") {
            return Err(bad(&format!("unsupported dtype {descr}")));
        }
        let kind = rest.chars().next().ok_or_else(|| bad("empty dtype"))?;
        let size: usize = rest[1..].parse().map_err(|_| bad(&format!("unsupported dtype {descr}")))?;
        (kind, size, big)
    };
    if !matches!(kind, 'b' | 'u' | 'i') || !matches!(size, 1 | 2 | 4 | 8) || (kind == 'b' && size != 1) {
        return Err(bad(&format!("dtype {descr}: a mask must be bool or integer")));
    }
    let need = n.checked_mul(size).ok_or_else(|| bad("shape overflows"))?;
    if data.len() < need {
        return Err(bad(&format!("{} data bytes, the shape needs {need}", data.len())));
    }
    let good: Vec<bool> = data[..need]
        .chunks_exact(size)
        .map(|c| {
            let nz = c.iter().any(|&b| b != 0);
            let _ = big; // any byte order: non-zero is non-zero
            nz
        })
        .collect();
    PixelMask::from_flat(&shape, good, path)
}

fn read_h5(path: &Path) -> Result<PixelMask> {
    ::hdf5::silence_errors(true);
    let f = ::hdf5::File::open(path).map_err(|e| Error::file(path, format!("HDF5: {e}")))?;
    let ds = match f.dataset("mask") {
        Ok(d) => d,
        Err(_) => {
            let names = f.member_names().map_err(|e| Error::file(path, format!("HDF5: {e}")))?;
            let ds: Vec<_> = names.iter().filter_map(|n| f.dataset(n).ok()).collect();
            if ds.len() != 1 {
                return Err(Error::file(
                    path,
                    "HDF5 mask: expected a dataset /mask (or exactly one root dataset)",
                ));
            }
            ds.into_iter().next().unwrap_or_else(|| unreachable!())
        }
    };
    let shape = ds.shape();
    let vals: Vec<i64> = ds
        .read_raw::<i64>()
        .or_else(|_| ds.read_raw::<u8>().map(|v| v.into_iter().map(i64::from).collect()))
        .or_else(|_| ds.read_raw::<bool>().map(|v| v.into_iter().map(i64::from).collect()))
        .map_err(|e| Error::file(path, format!("HDF5 mask {}: {e}", ds.name())))?;
    PixelMask::from_flat(&shape, vals.into_iter().map(|v| v != 0).collect(), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((h.len() as u16).to_le_bytes());
        v.extend(h.as_bytes());
        v.extend(data);
        v
    }

    #[test]
    fn npy_bool_and_int_masks() {
        let p = Path::new("m.npy");
        let m = parse_npy(&npy("|b1", "(2, 3)", &[1, 0, 1, 1, 1, 0]), p).unwrap();
        assert_eq!(m.shape, (2, 3));
        assert!(m.good(0, 0, 0) && !m.good(0, 1, 0) && !m.good(0, 2, 1));
        let m = parse_npy(&npy("<i4", "(1, 1, 2)", &[0, 0, 0, 0, 5, 0, 0, 0]), p).unwrap();
        assert_eq!(m.panels, vec![vec![false, true]]);
        assert!(parse_npy(&npy("<f8", "(1, 1)", &[0; 8]), p).is_err());
        assert!(parse_npy(&npy("|b1", "(2, 3)", &[1, 0]), p).is_err());
    }
}
