//! `exp_ref_spec_file`: the list of shots stage 1 refines.
//!
//! One shot per line, 2–4 whitespace-separated fields (diffBragg `hopper`):
//! ```text
//! expt refl
//! expt refl spec.lam
//! expt refl exp_idx
//! expt refl spec.lam exp_idx
//! ```
//! A 3rd field that parses as an integer is `exp_idx`, otherwise it is a
//! spectrum file. `exp_idx` defaults to 0 and must be ≥ 0 (Python would let
//! −1 pick the last experiment; we reject it).
//!
//! Differences from hopper, on purpose:
//! * blank lines and lines whose first non-blank character is `#` are
//!   skipped (hopper asserts on them); a `#` inside a line is part of a path;
//! * relative paths resolve against the spec file's own folder, never the
//!   working directory;
//! * every line is validated before anything runs: field count, integers, and
//!   that the expt, refl and spectrum files exist. Errors name the spec file
//!   and the line number (1-based, counting every line).

use std::path::{Path, PathBuf};

use crate::error::{io_err, Error, Result};

/// One shot of the spec file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecEntry {
    /// 1-based line number in the spec file.
    pub line_no: usize,
    pub expt: PathBuf,
    pub refl: PathBuf,
    /// `.lam` spectrum file, if given.
    pub spectrum: Option<PathBuf>,
    /// Experiment index inside `expt`.
    pub exp_idx: usize,
}

/// Reads and validates a spec file (see the module docs).
pub fn read_spec_file(path: impl AsRef<Path>) -> Result<Vec<SpecEntry>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| Error::file(path, "not a text file (invalid UTF-8)"))?;
    let entries = parse_spec_text(&text, path)?;
    for e in &entries {
        check_exists(path, e)?;
    }
    Ok(entries)
}

/// Parses spec-file text without touching the file system; relative paths are
/// joined to `path`'s folder.
pub fn parse_spec_text(text: &str, path: &Path) -> Result<Vec<SpecEntry>> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let mut out = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line_no = k + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let loc = format!("line {line_no}");
        let f: Vec<&str> = t.split_whitespace().collect();
        let (spectrum, exp_idx) = match f.len() {
            2 => (None, 0),
            3 => match parse_int(f[2]) {
                Some(i) => (None, nonneg(i, path, &loc)?),
                None => (Some(resolve(f[2])), 0),
            },
            4 => {
                let i = parse_int(f[3]).ok_or_else(|| {
                    Error::record(
                        path,
                        &loc,
                        format!("4th field `{}` must be an integer experiment index", f[3]),
                    )
                })?;
                (Some(resolve(f[2])), nonneg(i, path, &loc)?)
            }
            n => {
                return Err(Error::record(
                    path,
                    loc,
                    format!("expected 2–4 fields (expt refl [spectrum.lam] [exp_idx]), found {n}"),
                ))
            }
        };
        out.push(SpecEntry { line_no, expt: resolve(f[0]), refl: resolve(f[1]), spectrum, exp_idx });
    }
    if out.is_empty() {
        return Err(Error::file(path, "lists no shots"));
    }
    Ok(out)
}

/// Python `int()` on ASCII: optional sign, digits, single underscores between digits.
fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty()
        || !digits.bytes().all(|c| c.is_ascii_digit() || c == b'_')
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let v: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -v } else { v })
}

fn nonneg(i: i64, path: &Path, loc: &str) -> Result<usize> {
    usize::try_from(i).map_err(|_| Error::record(path, loc, format!("experiment index {i} must be ≥ 0")))
}

fn check_exists(spec: &Path, e: &SpecEntry) -> Result<()> {
    let loc = format!("line {}", e.line_no);
    let check = |what: &str, p: &Path| -> Result<()> {
        if p.is_file() {
            Ok(())
        } else {
            Err(Error::record(spec, &loc, format!("{what} file not found: {}", p.display())))
        }
    };
    check("experiment", &e.expt)?;
    check("reflection", &e.refl)?;
    if let Some(s) = &e.spectrum {
        check("spectrum", s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_forms() {
        let p = Path::new("/data/run/spec.txt");
        let v =
            parse_spec_text("a.expt a.refl\n\n# c\nb.expt /x/b.refl 3\nc.expt c.refl s.lam\nd d s 2\n", p)
                .unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].expt, PathBuf::from("/data/run/a.expt"));
        assert_eq!((v[1].line_no, v[1].exp_idx, v[1].refl.clone()), (4, 3, PathBuf::from("/x/b.refl")));
        assert_eq!(v[2].spectrum, Some(PathBuf::from("/data/run/s.lam")));
        assert_eq!((v[3].exp_idx, v[3].spectrum.is_some()), (2, true));
    }

    #[test]
    fn ints_like_python() {
        assert_eq!(parse_int("+7"), Some(7));
        assert_eq!(parse_int("1_0"), Some(10));
        assert_eq!(parse_int("-2"), Some(-2));
        for bad in ["", "+", "1.0", "_1", "1__0", "x1", "0x1"] {
            assert_eq!(parse_int(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_lines_name_their_number() {
        let p = Path::new("/s.txt");
        for (text, line) in [("a b\nonly\n", 2), ("a b c d e\n", 1), ("a b\n\na b s x\n", 3), ("a b -1\n", 1)]
        {
            let e = parse_spec_text(text, p).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}")), "{text:?}: {e}");
        }
        assert!(parse_spec_text("# nothing\n\n", p).is_err());
    }
}
