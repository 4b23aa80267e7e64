//! diffBragg's simple HDF5 layout and its cxid9114-era variant.
//!
//! Layout (dxtbx `FormatHDF5AttributeGeometry`, written by simtbx
//! `H5AttributeGeomWriter`):
//! ```text
//! /images (nimg, npanel, n_slow, n_fast)   any numeric dtype, any filter HDF5 knows
//!     @dxtbx_detector_string  Python literal / JSON of Detector.to_dict()
//!     @dxtbx_beam_string      Python literal / JSON of Beam.to_dict()
//! /spectrum_energies (nimg, nchan) eV   } optional per-shot spectra
//! /spectrum_weights  (nimg, nchan)      }
//! /spectrum_nchan    (nimg,)            our extension: channels used per row (ragged spectra)
//! /central_wavelengths (nimg,) Å          optional, used when there are no spectra
//! ```
//! cxid9114 variant (cxid9114 `FormatD9114`): root `wavelengths` (Å) and
//! `spectrum` (weights), one shared spectrum `(nchan,)`; `(nimg, nchan)` is
//! accepted too.
//!
//! Beam wavelength per shot, as the dxtbx format classes set it: with spectra,
//! `hc / (Σ w·E / Σ w)`; else `central_wavelengths[i]`; else the beam dict's.
//! **\[TRAP\]** dxtbx's `FormatHDF5AttributeGeometry` never implements
//! `get_spectrum`, so there `spectrum_from_imageset=True` fails; we do return
//! the per-shot spectrum, which is what the user meant by writing it.
//! Lenient on purpose: JSON `true/false/null` in the attribute strings (which
//! `ast.literal_eval` would reject) are accepted.

use std::path::{Path, PathBuf};

use ::hdf5::{Dataset, File};
use serde_json::Value;

use super::{
    check_spectrum, dataset, obj_err, opt_dataset, read_block_f64, read_f64, read_row_f64, read_str_attr,
};
use crate::conventions::{wavelength_a_from_energy_ev, EV_ANGSTROM};
use crate::error::{Error, Result};
use crate::image::{index_error, Image, ImageFormat, ImageSource};
use crate::spectrum::Spectrum;

/// Where a file keeps its spectra.
enum Spectra {
    None,
    /// `/spectrum_energies` + `/spectrum_weights` (+ optional `/spectrum_nchan`).
    PerShotEnergies {
        energies: Dataset,
        weights: Dataset,
        nchan: Option<Vec<usize>>,
    },
    /// `/central_wavelengths`, one wavelength per shot, no spectrum.
    Central(Vec<f64>),
    /// cxid9114 `/wavelengths` + `/spectrum`, shared (1-D) or per shot (2-D).
    Cxid {
        wavelengths: Dataset,
        weights: Dataset,
    },
}

/// An opened diffBragg-layout (or cxid9114-layout) file.
pub struct AttrGeomFile {
    path: PathBuf,
    format: ImageFormat,
    images: Dataset,
    n_images: usize,
    n_panels: usize,
    n_slow: usize,
    n_fast: usize,
    detector: Value,
    beam: Value,
    spectra: Spectra,
    // Keeps the file open for the datasets' lifetime (explicit, although HDF5 would too).
    _file: File,
}

impl AttrGeomFile {
    pub fn open(path: impl AsRef<Path>) -> Result<AttrGeomFile> {
        let path = path.as_ref();
        let file = super::open_file(path)?;
        Self::from_file(path, file)
    }

    pub(crate) fn from_file(path: &Path, file: File) -> Result<AttrGeomFile> {
        let images = dataset(&file, "images", path)?;
        let shape = images.shape();
        if shape.len() != 4 {
            return Err(obj_err(
                path,
                "dataset /images",
                format!("expected 4 dimensions (nimg, npanel, slow, fast), found shape {shape:?}"),
            ));
        }
        let (n_images, n_panels, n_slow, n_fast) = (shape[0], shape[1], shape[2], shape[3]);
        let detector = geometry_attr(&images, "dxtbx_detector_string", path)?;
        let beam = geometry_attr(&images, "dxtbx_beam_string", path)?;
        check_detector_dict(&detector, n_panels, n_slow, n_fast)
            .map_err(|m| obj_err(path, "attribute /images@dxtbx_detector_string", m))?;
        if !beam.is_object() {
            return Err(obj_err(path, "attribute /images@dxtbx_beam_string", "not a dictionary"));
        }

        let (spectra, format) = if let (Some(e), Some(w)) =
            (opt_dataset(&file, "spectrum_energies"), opt_dataset(&file, "spectrum_weights"))
        {
            let nchan = check_pair(&e, &w, n_images, path)?;
            let counts = match opt_dataset(&file, "spectrum_nchan") {
                None => None,
                Some(ds) => {
                    let v = read_f64(&ds, path)?;
                    if v.len() != n_images
                        || v.iter().any(|&c| !(c >= 1.0 && c <= nchan as f64 && c.fract() == 0.0))
                    {
                        return Err(obj_err(
                            path,
                            "dataset /spectrum_nchan",
                            format!("expected {n_images} channel counts in 1..={nchan}"),
                        ));
                    }
                    Some(v.iter().map(|&c| c as usize).collect())
                }
            };
            (Spectra::PerShotEnergies { energies: e, weights: w, nchan: counts }, ImageFormat::DiffBraggH5)
        } else if let (Some(l), Some(w)) = (opt_dataset(&file, "wavelengths"), opt_dataset(&file, "spectrum"))
        {
            check_pair(&l, &w, n_images, path)?;
            (Spectra::Cxid { wavelengths: l, weights: w }, ImageFormat::Cxid9114H5)
        } else if let Some(c) = opt_dataset(&file, "central_wavelengths") {
            let v = read_f64(&c, path)?;
            if v.len() != n_images {
                return Err(obj_err(
                    path,
                    "dataset /central_wavelengths",
                    format!("has {} values for {n_images} images", v.len()),
                ));
            }
            if let Some(i) = v.iter().position(|l| !(l.is_finite() && *l > 0.0)) {
                return Err(obj_err(
                    path,
                    "dataset /central_wavelengths",
                    format!("image {i}: bad wavelength {}", v[i]),
                ));
            }
            (Spectra::Central(v), ImageFormat::DiffBraggH5)
        } else {
            (Spectra::None, ImageFormat::DiffBraggH5)
        };

        Ok(AttrGeomFile {
            path: path.to_path_buf(),
            format,
            images,
            n_images,
            n_panels,
            n_slow,
            n_fast,
            detector,
            beam,
            spectra,
            _file: file,
        })
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i >= self.n_images {
            Err(index_error(&self.path, i, self.n_images))
        } else {
            Ok(())
        }
    }
}

/// Parses one geometry attribute string.
fn geometry_attr(images: &Dataset, name: &str, path: &Path) -> Result<Value> {
    let what = format!("attribute /images@{name}");
    let text = read_str_attr(images, name, path)?.ok_or_else(|| obj_err(path, &what, "missing"))?;
    super::pyliteral::parse(&text).map_err(|m| obj_err(path, &what, m))
}

/// The detector dict must describe the panels `/images` holds.
fn check_detector_dict(
    det: &Value,
    n_panels: usize,
    n_slow: usize,
    n_fast: usize,
) -> std::result::Result<(), String> {
    let panels = det.get("panels").and_then(Value::as_array).ok_or("no `panels` list")?;
    if panels.len() != n_panels {
        return Err(format!("{} panels but /images holds {n_panels}", panels.len()));
    }
    for (i, p) in panels.iter().enumerate() {
        if let Some(sz) = p.get("image_size").and_then(Value::as_array) {
            let nf = sz.first().and_then(Value::as_u64);
            let ns = sz.get(1).and_then(Value::as_u64);
            if nf != Some(n_fast as u64) || ns != Some(n_slow as u64) {
                return Err(format!(
                    "panel {i}: image_size {sz:?} (fast, slow) but /images panels are {n_fast}×{n_slow}"
                ));
            }
        }
    }
    Ok(())
}

/// Two spectrum datasets must agree: both `(nchan,)` or both `(nimg, nchan)`.
/// Returns nchan.
fn check_pair(a: &Dataset, b: &Dataset, n_images: usize, path: &Path) -> Result<usize> {
    let (sa, sb) = (a.shape(), b.shape());
    let what = format!("datasets {} and {}", a.name(), b.name());
    if sa != sb {
        return Err(obj_err(path, &what, format!("shapes differ: {sa:?} vs {sb:?}")));
    }
    match sa.as_slice() {
        [n] if *n > 0 => Ok(*n),
        [m, n] if *m == n_images && *n > 0 => Ok(*n),
        _ => Err(obj_err(path, &what, format!("expected (nchan,) or ({n_images}, nchan), found {sa:?}"))),
    }
}

/// Row `i` of a per-shot dataset, or the whole of a shared 1-D one.
fn row_or_all(ds: &Dataset, i: usize, path: &Path) -> Result<Vec<f64>> {
    if ds.ndim() == 1 {
        read_f64(ds, path)
    } else {
        read_row_f64(ds, i, path)
    }
}

impl ImageSource for AttrGeomFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self) -> ImageFormat {
        self.format
    }

    fn n_images(&self) -> usize {
        self.n_images
    }

    fn panel_shapes(&self) -> Vec<(usize, usize)> {
        vec![(self.n_slow, self.n_fast); self.n_panels]
    }

    fn read_image(&self, i: usize) -> Result<Image> {
        self.check_index(i)?;
        let data = read_block_f64(
            &self.images,
            &[(i, 1), (0, self.n_panels), (0, self.n_slow), (0, self.n_fast)],
            &self.path,
        )
        .map_err(|e| match e {
            Error::Record { path, location, msg } => {
                Error::Record { path, location: format!("{location}, image {i}"), msg }
            }
            e => e,
        })?;
        Image::from_stack(self.n_panels, self.n_slow, self.n_fast, data)
            .map_err(|e| obj_err(&self.path, "dataset /images", e.to_string()))
    }

    fn spectrum(&self, i: usize) -> Result<Option<Spectrum>> {
        self.check_index(i)?;
        let (wavelengths, weights, what) = match &self.spectra {
            Spectra::None | Spectra::Central(_) => return Ok(None),
            Spectra::PerShotEnergies { energies, weights, nchan } => {
                let mut e = row_or_all(energies, i, &self.path)?;
                let mut w = row_or_all(weights, i, &self.path)?;
                if let Some(n) = nchan {
                    e.truncate(n[i]);
                    w.truncate(n[i]);
                }
                if let Some(k) = e.iter().position(|x| !(x.is_finite() && *x > 0.0)) {
                    return Err(obj_err(
                        &self.path,
                        "dataset /spectrum_energies",
                        format!("image {i}, channel {k}: energy {} eV is not a positive number", e[k]),
                    ));
                }
                let l: Vec<f64> = e.iter().map(|&x| wavelength_a_from_energy_ev(x)).collect();
                (l, w, "datasets /spectrum_energies, /spectrum_weights")
            }
            Spectra::Cxid { wavelengths, weights } => (
                row_or_all(wavelengths, i, &self.path)?,
                row_or_all(weights, i, &self.path)?,
                "datasets /wavelengths, /spectrum",
            ),
        };
        check_spectrum(&wavelengths, &weights)
            .map_err(|m| obj_err(&self.path, what, format!("image {i}: {m}")))?;
        Ok(Some(Spectrum::new(wavelengths, weights)))
    }

    fn wavelength(&self, i: usize) -> Result<Option<f64>> {
        self.check_index(i)?;
        if let Spectra::Central(v) = &self.spectra {
            return Ok(Some(v[i]));
        }
        if let Some(s) = self.spectrum(i)? {
            // dxtbx: hc / weighted mean energy (not the weighted mean wavelength).
            let e = s.mean_energy();
            if !(e.is_finite() && e > 0.0) {
                return Err(obj_err(
                    &self.path,
                    "spectrum",
                    format!("image {i}: weights do not give a mean energy"),
                ));
            }
            return Ok(Some(EV_ANGSTROM / e));
        }
        Ok(self.beam.get("wavelength").and_then(Value::as_f64))
    }

    fn detector_dict(&self) -> Option<Value> {
        Some(self.detector.clone())
    }

    fn beam_dict(&self, i: usize) -> Result<Option<Value>> {
        let mut beam = self.beam.clone();
        if let Some(l) = self.wavelength(i)? {
            if let Some(m) = beam.as_object_mut() {
                m.insert("wavelength".into(), Value::from(l));
            }
        }
        Ok(Some(beam))
    }
}

impl std::fmt::Debug for AttrGeomFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AttrGeomFile({}, {:?}, {} images)", self.path.display(), self.format, self.n_images)
    }
}
