//! SMV (ADSC-style `.img`) images, optionally gzipped.
//!
//! Layout: an ASCII header `{\n KEY=VALUE;\n … }` padded to `HEADER_BYTES`
//! bytes, then `SIZE2` rows (slow) of `SIZE1` pixels (fast), byte order from
//! `BYTE_ORDER` (`little_endian`/`big_endian`), sample type from `TYPE`
//! (`unsigned_short` when absent; also `signed_short`, `unsigned_int`/
//! `unsigned_long`, `signed_int`/`signed_long`, `float`). One image, one panel.
//! Values after a key may end with `;` or not (nanoBragg writes
//! `DIALS_ORIGIN=…` without one). Bytes after the data are ignored; fewer
//! bytes than `SIZE1·SIZE2·size` is a truncation error.
//!
//! No detector or beam dict is derived from the header (the geometry comes
//! from the `.expt`); [`SmvFile::header`] exposes the keys, and
//! `WAVELENGTH` is reported as the shot's wavelength.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{io_err, Error, Result};
use crate::image::{index_error, Image, ImageFormat, ImageSource, PanelImage};
use crate::spectrum::Spectrum;

/// The largest header we look through for the closing brace.
const MAX_HEADER: usize = 1 << 20;

/// A parsed SMV file (the pixels are read on open: SMV holds one image).
#[derive(Clone, Debug)]
pub struct SmvFile {
    path: PathBuf,
    header: Vec<(String, String)>,
    image: Image,
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// The file's bytes, gunzipped when they start with the gzip magic.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| io_err(path, e))?;
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| Error::file(path, format!("corrupt gzip stream: {e}")))?;
    Ok(out)
}

/// True if the file (or its gzip content) starts with an SMV header.
pub fn looks_like_smv(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut head = [0u8; 2];
    let n = f.read(&mut head).map_err(|e| io_err(path, e))?;
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut start = Vec::with_capacity(4096);
    let reader: Box<dyn Read> =
        if is_gzip(&head[..n]) { Box::new(flate2::read::MultiGzDecoder::new(f)) } else { Box::new(f) };
    // A corrupt gzip stream is "not SMV" here; open() reports the corruption.
    let _ = reader.take(4096).read_to_end(&mut start);
    let text = String::from_utf8_lossy(&start);
    Ok(text.starts_with('{') && text.contains("HEADER_BYTES"))
}

/// Parses the `{ … }` header; returns its key/value pairs in file order.
fn parse_header(bytes: &[u8], path: &Path) -> Result<Vec<(String, String)>> {
    if bytes.first() != Some(&b'{') {
        return Err(Error::file(path, "not an SMV file: it does not start with `{`"));
    }
    let end = bytes
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'}')
        .ok_or_else(|| Error::file(path, "SMV header has no closing `}`"))?;
    let text = String::from_utf8_lossy(&bytes[1..end]);
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v.strip_suffix(';').unwrap_or(v).trim();
            out.push((k.trim().to_string(), v.to_string()));
        }
    }
    Ok(out)
}

impl SmvFile {
    pub fn open(path: impl AsRef<Path>) -> Result<SmvFile> {
        let path = path.as_ref();
        let bytes = read_bytes(path)?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses SMV bytes; `path` only names the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<SmvFile> {
        let header = parse_header(bytes, path)?;
        let get = |k: &str| header.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let num = |k: &str| -> Result<usize> {
            let v = get(k).ok_or_else(|| Error::record(path, format!("header {k}"), "missing"))?;
            v.parse::<usize>()
                .map_err(|_| Error::record(path, format!("header {k}"), format!("`{v}` is not a count")))
        };
        let header_bytes = num("HEADER_BYTES")?;
        let n_fast = num("SIZE1")?;
        let n_slow = num("SIZE2")?;
        if let Some(d) = get("DIM") {
            if d != "2" {
                return Err(Error::record(
                    path,
                    "header DIM",
                    format!("only 2-D images are supported, found {d}"),
                ));
            }
        }
        let big = match get("BYTE_ORDER") {
            Some("little_endian") => false,
            Some("big_endian") => true,
            Some(o) => {
                return Err(Error::record(path, "header BYTE_ORDER", format!("unknown byte order `{o}`")))
            }
            None => return Err(Error::record(path, "header BYTE_ORDER", "missing")),
        };
        let ty = get("TYPE").unwrap_or("unsigned_short");
        let size = match ty {
            "unsigned_short" | "signed_short" => 2,
            "unsigned_int" | "unsigned_long" | "signed_int" | "signed_long" | "float" => 4,
            _ => return Err(Error::record(path, "header TYPE", format!("unsupported sample type `{ty}`"))),
        };
        let n = n_fast.checked_mul(n_slow).filter(|&n| n > 0).ok_or_else(|| {
            Error::record(path, "header SIZE1/SIZE2", format!("bad image size {n_fast}×{n_slow}"))
        })?;
        let need = n
            .checked_mul(size)
            .ok_or_else(|| Error::record(path, "header SIZE1/SIZE2", "image too large"))?;
        let data = bytes.get(header_bytes..).unwrap_or(&[]);
        if data.len() < need {
            return Err(Error::file(
                path,
                format!("truncated SMV file: {need} data bytes expected after the {header_bytes}-byte header, {} found", data.len()),
            ));
        }
        let data = &data[..need];
        let vals: Vec<f64> = data
            .chunks_exact(size)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..size].copy_from_slice(c);
                if big {
                    b[..size].reverse();
                }
                match ty {
                    "unsigned_short" => f64::from(u16::from_le_bytes([b[0], b[1]])),
                    "signed_short" => f64::from(i16::from_le_bytes([b[0], b[1]])),
                    "unsigned_int" | "unsigned_long" => f64::from(u32::from_le_bytes(b)),
                    "signed_int" | "signed_long" => f64::from(i32::from_le_bytes(b)),
                    _ => f64::from(f32::from_le_bytes(b)),
                }
            })
            .collect();
        let image = Image::new(vec![PanelImage::new(n_slow, n_fast, vals)?]);
        Ok(SmvFile { path: path.to_path_buf(), header, image })
    }

    /// The header's key/value pairs in file order (values without `;`).
    pub fn header(&self) -> &[(String, String)] {
        &self.header
    }

    pub fn header_value(&self, key: &str) -> Option<&str> {
        self.header.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The image (SMV files hold one).
    pub fn image(&self) -> &Image {
        &self.image
    }
}

impl ImageSource for SmvFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self) -> ImageFormat {
        ImageFormat::Smv
    }

    fn n_images(&self) -> usize {
        1
    }

    fn panel_shapes(&self) -> Vec<(usize, usize)> {
        self.image.shapes()
    }

    fn read_image(&self, i: usize) -> Result<Image> {
        if i != 0 {
            return Err(index_error(&self.path, i, 1));
        }
        Ok(self.image.clone())
    }

    fn spectrum(&self, i: usize) -> Result<Option<Spectrum>> {
        if i != 0 {
            return Err(index_error(&self.path, i, 1));
        }
        Ok(None)
    }

    fn wavelength(&self, i: usize) -> Result<Option<f64>> {
        if i != 0 {
            return Err(index_error(&self.path, i, 1));
        }
        match self.header_value("WAVELENGTH") {
            None => Ok(None),
            Some(v) => match v.parse::<f64>() {
                Ok(l) if l.is_finite() && l > 0.0 => Ok(Some(l)),
                _ => {
                    Err(Error::record(&self.path, "header WAVELENGTH", format!("`{v}` is not a wavelength")))
                }
            },
        }
    }

    fn detector_dict(&self) -> Option<Value> {
        None
    }

    fn beam_dict(&self, _i: usize) -> Result<Option<Value>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smv(order: &str, ty: &str, pix: &[u8], nf: usize, ns: usize) -> Vec<u8> {
        let mut h = format!(
            "{{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER={order};\nTYPE={ty};\nSIZE1={nf};\nSIZE2={ns};\nNOSEMI=1,2\n}}\n"
        )
        .into_bytes();
        h.resize(512, b' ');
        h.extend_from_slice(pix);
        h
    }

    #[test]
    fn byte_orders_and_types() {
        let p = Path::new("t.img");
        let le =
            SmvFile::from_bytes(&smv("little_endian", "unsigned_short", &[1, 0, 0, 1, 255, 255], 3, 1), p)
                .unwrap();
        assert_eq!(le.image().panel(0).data(), &[1.0, 256.0, 65535.0]);
        let be = SmvFile::from_bytes(&smv("big_endian", "unsigned_short", &[1, 0, 0, 1], 1, 2), p).unwrap();
        assert_eq!(be.image().panel(0).data(), &[256.0, 1.0]);
        assert_eq!(be.image().panel(0).shape(), (2, 1));
        let f = SmvFile::from_bytes(&smv("little_endian", "float", &1.5f32.to_le_bytes(), 1, 1), p).unwrap();
        assert_eq!(f.image().panel(0).data(), &[1.5]);
        assert_eq!(le.header_value("NOSEMI"), Some("1,2"));
    }

    /// The nanoBragg reference image, cross-checked with an independent numpy read.
    #[test]
    fn reference_image_matches_numpy() {
        let gz = crate::testutil::shared("reference/shot_00_noisy.img.gz");
        let script = "import sys, gzip, json, numpy as np\n\
            b = gzip.open(sys.argv[1]).read()\n\
            a = np.frombuffer(b[512:512 + 1024 * 1000 * 2], dtype='<u2').reshape(1000, 1024).astype(np.float64)\n\
            s, f = np.unravel_index(np.argmax(a), a.shape)\n\
            print(json.dumps({'sum': a.sum(), 'max': [int(s), int(f), a[s, f]], 'px': [a[0, 0], a[500, 512], a[999, 1023], a[123, 987]], 'nonzero': int((a > 0).sum())}))";
        let out =
            std::process::Command::new("python3").arg("-c").arg(script).arg(&gz).output().expect("python3");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

        let src = crate::image::open_image_source(&gz).unwrap();
        assert_eq!(src.format(), ImageFormat::Smv);
        assert_eq!(src.panel_shapes(), vec![(1000, 1024)]);
        assert_eq!(src.wavelength(0).unwrap(), Some(1.3051));
        let im = src.read_image(0).unwrap();
        let p = im.panel(0);
        assert_eq!(im.sum(), want["sum"].as_f64().unwrap());
        let (ms, mf) = (want["max"][0].as_u64().unwrap() as usize, want["max"][1].as_u64().unwrap() as usize);
        assert_eq!(p.get(ms, mf), want["max"][2].as_f64().unwrap());
        let px = [p.get(0, 0), p.get(500, 512), p.get(999, 1023), p.get(123, 987)];
        let wpx: Vec<f64> = want["px"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(px.to_vec(), wpx);
        assert_eq!(p.data().iter().filter(|&&x| x > 0.0).count() as u64, want["nonzero"].as_u64().unwrap());
        assert!(src.read_image(1).is_err());

        // Content, not the name, picks the reader: the same bytes unzipped under another name.
        let dir = tempfile::tempdir().unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap()).read_to_end(&mut raw).unwrap();
        let plain = dir.path().join("image.h5");
        std::fs::write(&plain, &raw).unwrap();
        let again = crate::image::open_image_source(&plain).unwrap();
        assert_eq!(again.read_image(0).unwrap(), im);
        assert_eq!(
            SmvFile::open(&plain).unwrap().header_value("DIALS_ORIGIN"),
            Some("-99.921,36.5297,39.259")
        );
    }

    #[test]
    fn truncation_and_bad_headers() {
        let p = Path::new("t.img");
        let e =
            SmvFile::from_bytes(&smv("little_endian", "unsigned_short", &[1, 0, 0], 2, 1), p).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(SmvFile::from_bytes(&smv("middle_endian", "unsigned_short", &[0; 2], 1, 1), p).is_err());
        assert!(SmvFile::from_bytes(&smv("little_endian", "complex", &[0; 2], 1, 1), p).is_err());
        assert!(SmvFile::from_bytes(b"{HEADER_BYTES=512;", p).is_err());
        assert!(SmvFile::from_bytes(b"", p).is_err());
    }
}
