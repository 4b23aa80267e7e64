//! Text structure factors: one reflection per line, `h k l F` (nanoBragg's
//! `-hkl` format), whitespace separated.
//!
//! * F is an **amplitude** (≥ 0, finite); the kernel squares it.
//! * Blank lines and lines starting with `#` are skipped; extra columns after
//!   F are an error (a likely column mix-up, e.g. `h k l F sigF` read as F).
//! * gzip input is recognised by its magic bytes, whatever the file name.
//! * A repeated index with the same F is tolerated; with a different F it is an
//!   error naming both lines.
//! * Indices are limited to |h|, |k|, |l| ≤ 4096 so that a corrupt file cannot
//!   ask for an absurd grid.

use crate::error::{io_err, Error, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Largest |index| accepted.
pub const MAX_INDEX: i32 = 4096;

/// A list of reflections with amplitudes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HklAmplitudes {
    pub hkl: Vec<[i32; 3]>,
    pub f: Vec<f64>,
}

impl HklAmplitudes {
    pub fn len(&self) -> usize {
        self.hkl.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hkl.is_empty()
    }
}

/// Read an `h k l F` file (plain or gzip).
pub fn read_hkl_text(path: impl AsRef<Path>) -> Result<HklAmplitudes> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut s = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut s)
            .map_err(|e| Error::file(path, format!("gzip: {e}")))?;
        s
    } else {
        bytes
    };
    let text = std::str::from_utf8(&text).map_err(|e| Error::file(path, format!("not UTF-8 text: {e}")))?;
    parse_hkl_text(text, path)
}

/// Parse `h k l F` text; `path` is only used in error messages.
pub fn parse_hkl_text(text: &str, path: &Path) -> Result<HklAmplitudes> {
    let mut out = HklAmplitudes::default();
    let mut seen: HashMap<[i32; 3], (usize, usize)> = HashMap::new(); // hkl → (row index, line no)
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let loc = || format!("line {lineno}");
        let cols: Vec<&str> = t.split_whitespace().collect();
        if cols.len() != 4 {
            return Err(Error::record(
                path,
                loc(),
                format!("expected 4 columns `h k l F`, found {}", cols.len()),
            ));
        }
        let mut hkl = [0i32; 3];
        for k in 0..3 {
            hkl[k] = cols[k]
                .parse::<i32>()
                .map_err(|_| Error::record(path, loc(), format!("index `{}` is not an integer", cols[k])))?;
            if hkl[k].abs() > MAX_INDEX {
                return Err(Error::record(path, loc(), format!("index {} exceeds ±{MAX_INDEX}", hkl[k])));
            }
        }
        let f: f64 = cols[3]
            .parse()
            .map_err(|_| Error::record(path, loc(), format!("amplitude `{}` is not a number", cols[3])))?;
        if !(f.is_finite() && f >= 0.0) {
            return Err(Error::record(path, loc(), format!("amplitude {f} must be finite and ≥ 0")));
        }
        if let Some(&(row, first)) = seen.get(&hkl) {
            if out.f[row] != f {
                return Err(Error::record(
                    path,
                    loc(),
                    format!(
                        "{hkl:?} repeats line {first} with a different amplitude ({} vs {f})",
                        out.f[row]
                    ),
                ));
            }
            continue;
        }
        seen.insert(hkl, (out.hkl.len(), lineno));
        out.hkl.push(hkl);
        out.f.push(f);
    }
    if out.is_empty() {
        return Err(Error::file(path, "no reflections"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("x.hkl")
    }

    #[test]
    fn parses_comments_blanks_and_duplicates() {
        let t = "# h k l F\n1 2 3 4.5\n\n-1 -2 -3 4.5\n1 2 3 4.5\n 0 0 1 0\n";
        let h = parse_hkl_text(t, p()).unwrap();
        assert_eq!(h.hkl, vec![[1, 2, 3], [-1, -2, -3], [0, 0, 1]]);
        assert_eq!(h.f, vec![4.5, 4.5, 0.0]);
    }

    #[test]
    fn errors_name_the_line() {
        for (t, want) in [
            ("1 2 3\n", "line 1"),
            ("1 2 3 4\n1 2 x 4\n", "line 2"),
            ("1 2 3 -4\n", "≥ 0"),
            ("1 2 3 nan\n", "finite"),
            ("1 2 3 4 5\n", "4 columns"),
            ("1 2 3 4\n1 2 3 5\n", "repeats line 1"),
            ("99999 0 0 1\n", "exceeds"),
            ("# only a comment\n", "no reflections"),
        ] {
            let e = parse_hkl_text(t, p()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("x.hkl"), "{t:?}: {e}");
        }
    }

    #[test]
    fn reads_the_reference_file() {
        let path = crate::testutil::shared("reference/lyso_P1.hkl.gz");
        let h = read_hkl_text(&path).unwrap();
        // Row count and first row cross-checked with `zcat | wc -l` and `head -1`.
        assert_eq!(h.len(), 93203);
        assert_eq!(h.hkl[0], [-35, -8, 0]);
        assert_eq!(h.f[0], 97.68);
    }

    #[test]
    fn mutated_input_never_panics() {
        let path = crate::testutil::shared("reference/lyso_P1.hkl.gz");
        let mut full = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()).read_to_end(&mut full).unwrap();
        let base: Vec<u8> = full[..4000].to_vec();
        let mut state = 0x9E3779B97F4A7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut n_err = 0;
        for _ in 0..2000 {
            let mut b = base.clone();
            let cut = (next() % b.len() as u64) as usize;
            if next() % 3 == 0 {
                b.truncate(cut);
            }
            for _ in 0..(next() % 8) {
                if b.is_empty() {
                    break;
                }
                let i = (next() % b.len() as u64) as usize;
                b[i] = (next() & 0xff) as u8;
            }
            let r = std::panic::catch_unwind(|| {
                let text = String::from_utf8_lossy(&b);
                parse_hkl_text(&text, p()).is_err()
            });
            n_err += r.expect("parser panicked") as usize;
        }
        assert!(n_err > 100, "mutations should mostly be rejected, got {n_err}");
    }
}
