//! `.lam` spectrum files (diffBragg's "precognition" format).
//!
//! Text as numpy `savetxt(delimiter=',', header="wavelengths, weights")` writes:
//! ```text
//! # wavelengths, weights
//! 9.537245464324951172e-01,1.234500000000000000e+10
//! ```
//! Column 1 is the wavelength in Å, column 2 the weight (any scale).
//! **\[TRAP\]** The first line is skipped **unconditionally** (diffBragg
//! `load_spectra_file` uses `skiprows=1`), so a file without a header loses its
//! first channel; we reproduce that. After it, as `np.loadtxt` does, blank lines
//! and `#` comments are skipped. Every row needs exactly two numbers; errors
//! name `file: line N`.

use std::path::Path;

use crate::error::{io_err, Error, Result};
use crate::spectrum::Spectrum;

/// Reads a `.lam` file as stored (weights not rescaled).
pub fn read_lam(path: impl AsRef<Path>) -> Result<Spectrum> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| Error::file(path, "not a text file (invalid UTF-8)"))?;
    parse_lam(&text, path)
}

/// Parses `.lam` text; `path` names the source in errors.
pub fn parse_lam(text: &str, path: &Path) -> Result<Spectrum> {
    let mut wavelengths = Vec::new();
    let mut weights = Vec::new();
    for (k, line) in text.lines().enumerate().skip(1) {
        let line_no = k + 1;
        let body = line.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let loc = || format!("line {line_no}");
        let fields: Vec<&str> = body.split(',').map(str::trim).collect();
        if fields.len() != 2 {
            return Err(Error::record(
                path,
                loc(),
                format!("expected `wavelength,weight`, found {} field(s): `{body}`", fields.len()),
            ));
        }
        let num = |s: &str, what: &str| -> Result<f64> {
            match s.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                _ => Err(Error::record(path, loc(), format!("{what} `{s}` is not a finite number"))),
            }
        };
        let l = num(fields[0], "wavelength")?;
        let w = num(fields[1], "weight")?;
        if l <= 0.0 {
            return Err(Error::record(path, loc(), format!("wavelength {l} Å is not positive")));
        }
        wavelengths.push(l);
        weights.push(w);
    }
    if wavelengths.is_empty() {
        return Err(Error::file(
            path,
            "no spectrum rows after the header line (the first line is always skipped)",
        ));
    }
    Ok(Spectrum::new(wavelengths, weights))
}

/// diffBragg's `load_spectra_file`: every `stride`-th channel (1 = all), then
/// weights rescaled to sum to `total_flux` when given. Errors if the stride is 0
/// or larger than the channel count, or the weights cannot be normalised.
pub fn load_lam(path: impl AsRef<Path>, stride: usize, total_flux: Option<f64>) -> Result<Spectrum> {
    let path = path.as_ref();
    let s = read_lam(path)?;
    if stride == 0 || stride > s.len() {
        return Err(Error::param(
            "spectrum.stride",
            format!("{stride} is not in 1..={} (channels in {})", s.len(), path.display()),
        ));
    }
    let s = s.strided(stride);
    match total_flux {
        None => Ok(s),
        Some(f) => {
            s.validate().map_err(|m| Error::file(path, format!("cannot normalise the spectrum: {m}")))?;
            Ok(s.normalized_to(f))
        }
    }
}

/// numpy's `%.18e`: 18 decimals, exponent with a sign and at least two digits.
pub fn format_e18(x: f64) -> String {
    let s = format!("{x:.18e}");
    match s.split_once('e') {
        Some((mant, exp)) => {
            let e: i32 = exp.parse().unwrap_or(0);
            let sign = if e < 0 { '-' } else { '+' };
            format!("{mant}e{sign}{:02}", e.abs())
        }
        None => s, // inf/NaN: written as Rust spells them
    }
}

/// Writes `s` as a `.lam` file (numpy `savetxt` format), atomically.
pub fn write_lam(path: impl AsRef<Path>, s: &Spectrum) -> Result<()> {
    let path = path.as_ref();
    if s.wavelengths.len() != s.weights.len() || s.is_empty() {
        return Err(Error::file(path, "refusing to write an empty or inconsistent spectrum"));
    }
    if s.wavelengths.iter().chain(&s.weights).any(|x| !x.is_finite()) {
        return Err(Error::file(path, "refusing to write non-finite spectrum values"));
    }
    let mut text = String::from("# wavelengths, weights\n");
    for (l, w) in s.wavelengths.iter().zip(&s.weights) {
        text.push_str(&format_e18(*l));
        text.push(',');
        text.push_str(&format_e18(*w));
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Writes `bytes` to `path.tmp-<pid>` and renames it onto `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_e18_format() {
        assert_eq!(format_e18(1.309083538309), "1.309083538309000039e+00");
        assert_eq!(format_e18(0.011702118365136644), "1.170211836513664408e-02");
        assert_eq!(format_e18(1.2345e10), "1.234500000000000000e+10");
        assert_eq!(format_e18(0.0), "0.000000000000000000e+00");
        assert_eq!(format_e18(-2.5e-300), "-2.499999999999999980e-300"); // printf("%.18e")
    }

    #[test]
    fn first_line_always_skipped() {
        let p = Path::new("x.lam");
        let s = parse_lam("1.0,2.0\n1.1,3.0\n", p).unwrap();
        assert_eq!(s.wavelengths, vec![1.1]);
        let s = parse_lam("# h\n\n1.0, 2.0  # c\n# x\n1.1,3\n", p).unwrap();
        assert_eq!((s.wavelengths.clone(), s.weights.clone()), (vec![1.0, 1.1], vec![2.0, 3.0]));
        let e = parse_lam("# h\n1.0,2.0\n1.0\n", p).unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(parse_lam("# h\n", p).is_err());
        assert!(parse_lam("# h\n-1,2\n", p).unwrap_err().to_string().contains("line 2"));
        assert!(parse_lam("# h\nnan,2\n", p).is_err());
    }
}
