//! Writer for diffBragg's simple HDF5 layout (see [`super::simple`]).
//!
//! Follows simtbx `H5AttributeGeomWriter` so that dxtbx's
//! `FormatHDF5AttributeGeometry` opens the file:
//! * `/images (nimg, npanel, n_slow, n_fast)`, float64 (or float32), chunked one
//!   panel per chunk, gzip (level 4 by default, as h5py's default);
//! * attributes `dxtbx_detector_string` and `dxtbx_beam_string` on `/images`:
//!   scalar variable-length UTF-8 strings holding the dicts as Python literals
//!   ([`super::pyliteral::to_literal`]; identical to `json.dumps` output when the
//!   dict has no null/booleans, and always accepted by `ast.literal_eval`);
//! * per-shot spectra, if every shot has one: `/spectrum_energies` and
//!   `/spectrum_weights` `(nimg, nchan)` float64, energies in eV. Shots with
//!   fewer channels are padded with zero weight at the last energy (harmless
//!   to dxtbx's weighted mean) and `/spectrum_nchan (nimg,)` int64 records the
//!   true counts for our reader.
//!
//! The file is written to `path.tmp-<pid>` and renamed onto `path` by
//! [`AttrGeomWriter::finish`]; dropping an unfinished writer deletes the tmp file.

use std::path::{Path, PathBuf};

use ::hdf5::types::VarLenUnicode;
use ::hdf5::{Dataset, File, Hyperslab, SliceOrIndex};
use serde_json::Value;

use super::{h5msg, obj_err};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::spectrum::Spectrum;

/// Sample type of `/images`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ImageDtype {
    #[default]
    F64,
    F32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    pub dtype: ImageDtype,
    /// gzip level 0–9, or `None` for no compression.
    pub gzip: Option<u8>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { dtype: ImageDtype::F64, gzip: Some(4) }
    }
}

/// Streams shots into a new diffBragg-layout file.
pub struct AttrGeomWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    images: Option<Dataset>,
    n_images: usize,
    n_panels: usize,
    n_slow: usize,
    n_fast: usize,
    dtype: ImageDtype,
    spectra: Vec<Option<Spectrum>>,
    finished: bool,
}

/// `(n_panels, n_slow, n_fast)` from a dxtbx detector dict; all panels must agree.
pub fn stack_shape(detector: &Value) -> std::result::Result<(usize, usize, usize), String> {
    let panels =
        detector.get("panels").and_then(Value::as_array).ok_or("detector dict has no `panels` list")?;
    if panels.is_empty() {
        return Err("detector dict has no panels".into());
    }
    let mut shape = None;
    for (i, p) in panels.iter().enumerate() {
        let sz = p.get("image_size").and_then(Value::as_array);
        let dims = sz.and_then(|a| Some((a.first()?.as_u64()? as usize, a.get(1)?.as_u64()? as usize)));
        let (nf, ns) = dims.ok_or_else(|| format!("panel {i}: no valid `image_size`"))?;
        if nf == 0 || ns == 0 {
            return Err(format!("panel {i}: empty image_size"));
        }
        match shape {
            None => shape = Some((ns, nf)),
            Some(s) if s != (ns, nf) => {
                return Err(format!(
                    "panel {i} is {nf}×{ns} (fast×slow) but panel 0 is {}×{}: the /images layout needs equal panels",
                    s.1, s.0
                ))
            }
            _ => {}
        }
    }
    let (ns, nf) = shape.unwrap_or((0, 0));
    Ok((panels.len(), ns, nf))
}

impl AttrGeomWriter {
    /// Starts a file for `n_images` shots of the detector described by `detector`
    /// (dxtbx `Detector.to_dict()`), with beam `beam` (`Beam.to_dict()`).
    pub fn create(
        path: impl AsRef<Path>,
        detector: &Value,
        beam: &Value,
        n_images: usize,
        opts: WriterOptions,
    ) -> Result<AttrGeomWriter> {
        let path = path.as_ref().to_path_buf();
        let (n_panels, n_slow, n_fast) = stack_shape(detector).map_err(|m| Error::param("detector", m))?;
        if !beam.is_object() {
            return Err(Error::param("beam", "the beam must be a dictionary"));
        }
        if n_images == 0 {
            return Err(Error::param("n_images", "a file needs at least one image"));
        }
        if opts.gzip.is_some_and(|l| l > 9) {
            return Err(Error::param("gzip", "level must be 0–9"));
        }
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        super::disable_file_locking_unless_set();
        ::hdf5::silence_errors(true);
        let e = |what: &str, err: ::hdf5::Error| obj_err(&path, what, h5msg(&err));
        // Strong close degree: `close()` really closes the file (and releases HDF5's
        // lock) even if some handle were still alive, so the rename publishes a
        // complete file and a reader in this process can open it at once.
        let file = File::with_options()
            .with_fapl(|p| p.fclose_degree(::hdf5::file::FileCloseDegree::Strong))
            .create(&tmp)
            .map_err(|err| Error::file(&tmp, format!("cannot create: {}", h5msg(&err))))?;
        let mut w = AttrGeomWriter {
            path: path.clone(),
            tmp,
            file: None,
            images: None,
            n_images,
            n_panels,
            n_slow,
            n_fast,
            dtype: opts.dtype,
            spectra: Vec::with_capacity(n_images),
            finished: false,
        };
        let shape = [n_images, n_panels, n_slow, n_fast];
        let chunk = [1, 1, n_slow, n_fast];
        let mut b = match opts.dtype {
            ImageDtype::F64 => file.new_dataset::<f64>(),
            ImageDtype::F32 => file.new_dataset::<f32>(),
        }
        .chunk(chunk);
        if let Some(level) = opts.gzip {
            b = b.deflate(level);
        }
        let images = b.shape(shape).create("images").map_err(|err| e("dataset /images", err))?;
        write_str_attr(&images, "dxtbx_detector_string", &super::pyliteral::to_literal(detector))
            .map_err(|err| e("attribute /images@dxtbx_detector_string", err))?;
        write_str_attr(&images, "dxtbx_beam_string", &super::pyliteral::to_literal(beam))
            .map_err(|err| e("attribute /images@dxtbx_beam_string", err))?;
        w.file = Some(file);
        w.images = Some(images);
        Ok(w)
    }

    /// Number of shots added so far.
    pub fn len(&self) -> usize {
        self.spectra.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spectra.is_empty()
    }

    /// Appends the next shot and (optionally) its spectrum.
    pub fn add_image(&mut self, image: &Image, spectrum: Option<&Spectrum>) -> Result<()> {
        let i = self.spectra.len();
        if i >= self.n_images {
            return Err(Error::file(&self.path, format!("more than the {} images announced", self.n_images)));
        }
        if image.n_panels() != self.n_panels
            || image.panels.iter().any(|p| p.shape() != (self.n_slow, self.n_fast))
        {
            return Err(Error::file(
                &self.path,
                format!(
                    "image {i}: panels {:?} (slow, fast) do not match the detector's {} × ({}, {})",
                    image.shapes(),
                    self.n_panels,
                    self.n_slow,
                    self.n_fast
                ),
            ));
        }
        if let Some(s) = spectrum {
            s.validate().map_err(|m| Error::file(&self.path, format!("image {i}: spectrum: {m}")))?;
        }
        let images = self.images.as_ref().ok_or_else(|| Error::file(&self.path, "writer already closed"))?;
        for (p, panel) in image.panels.iter().enumerate() {
            let sel = Hyperslab::from(vec![
                SliceOrIndex::from(i),
                SliceOrIndex::from(p),
                SliceOrIndex::from(0..self.n_slow),
                SliceOrIndex::from(0..self.n_fast),
            ]);
            let res = match self.dtype {
                ImageDtype::F64 => {
                    let view = ndarray::ArrayView2::from_shape((self.n_slow, self.n_fast), panel.data())
                        .map_err(|err| Error::msg(err.to_string()))?;
                    images.write_slice(view, sel)
                }
                ImageDtype::F32 => {
                    let buf: Vec<f32> = panel.data().iter().map(|&x| x as f32).collect();
                    let view = ndarray::ArrayView2::from_shape((self.n_slow, self.n_fast), &buf[..])
                        .map_err(|err| Error::msg(err.to_string()))?;
                    images.write_slice(view, sel)
                }
            };
            res.map_err(|err| {
                obj_err(&self.path, &format!("dataset /images, image {i}, panel {p}"), h5msg(&err))
            })?;
        }
        self.spectra.push(spectrum.cloned());
        Ok(())
    }

    /// Writes the spectra, closes the file and renames it into place.
    pub fn finish(mut self) -> Result<()> {
        if self.spectra.len() != self.n_images {
            return Err(Error::file(
                &self.path,
                format!("{} images announced but {} written", self.n_images, self.spectra.len()),
            ));
        }
        let n_with = self.spectra.iter().filter(|s| s.is_some()).count();
        if n_with != 0 && n_with != self.n_images {
            return Err(Error::file(
                &self.path,
                format!(
                    "spectra given for {n_with} of {} images: give one for every image or none",
                    self.n_images
                ),
            ));
        }
        if n_with == self.n_images {
            self.write_spectra()?;
        }
        // Close every handle before the rename.
        self.images = None;
        if let Some(f) = self.file.take() {
            f.close().map_err(|err| Error::file(&self.tmp, format!("closing: {}", h5msg(&err))))?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|err| crate::error::io_err(&self.path, err))?;
        self.finished = true;
        Ok(())
    }

    fn write_spectra(&self) -> Result<()> {
        let file = self.file.as_ref().ok_or_else(|| Error::file(&self.path, "writer already closed"))?;
        let spectra: Vec<&Spectrum> = self.spectra.iter().flatten().collect();
        let nchan = spectra.iter().map(|s| s.len()).max().unwrap_or(0);
        let ragged = spectra.iter().any(|s| s.len() != nchan);
        let mut energies = Vec::with_capacity(self.n_images * nchan);
        let mut weights = Vec::with_capacity(self.n_images * nchan);
        for s in &spectra {
            let e = s.energies();
            let last = *e.last().unwrap_or(&0.0);
            energies.extend_from_slice(&e);
            energies.extend(std::iter::repeat_n(last, nchan - e.len()));
            weights.extend_from_slice(&s.weights);
            weights.extend(std::iter::repeat_n(0.0, nchan - s.len()));
        }
        let err = |what: &str, e: ::hdf5::Error| obj_err(&self.path, what, h5msg(&e));
        let shape = (self.n_images, nchan);
        fn view(shape: (usize, usize), v: &[f64]) -> Result<ndarray::ArrayView2<'_, f64>> {
            ndarray::ArrayView2::from_shape(shape, v).map_err(|e| Error::msg(e.to_string()))
        }
        file.new_dataset_builder()
            .with_data(view(shape, &energies)?)
            .create("spectrum_energies")
            .map_err(|e| err("dataset /spectrum_energies", e))?;
        file.new_dataset_builder()
            .with_data(view(shape, &weights)?)
            .create("spectrum_weights")
            .map_err(|e| err("dataset /spectrum_weights", e))?;
        if ragged {
            let counts: Vec<i64> = spectra.iter().map(|s| s.len() as i64).collect();
            file.new_dataset_builder()
                .with_data(&counts[..])
                .create("spectrum_nchan")
                .map_err(|e| err("dataset /spectrum_nchan", e))?;
        }
        Ok(())
    }
}

impl Drop for AttrGeomWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.images = None;
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn write_str_attr(ds: &Dataset, name: &str, text: &str) -> ::hdf5::Result<()> {
    let v: VarLenUnicode =
        text.parse().map_err(|e: ::hdf5::types::StringError| ::hdf5::Error::from(e.to_string()))?;
    let attr = ds.new_attr::<VarLenUnicode>().shape(()).create(name)?;
    attr.write_scalar(&v)
}

/// Writes a whole file at once: `images[i]` with `spectra[i]` if given.
pub fn write_attr_geom_h5(
    path: impl AsRef<Path>,
    detector: &Value,
    beam: &Value,
    images: &[Image],
    spectra: Option<&[Spectrum]>,
    opts: WriterOptions,
) -> Result<()> {
    if let Some(s) = spectra {
        if s.len() != images.len() {
            return Err(Error::param("spectra", format!("{} spectra for {} images", s.len(), images.len())));
        }
    }
    let mut w = AttrGeomWriter::create(path, detector, beam, images.len(), opts)?;
    for (i, im) in images.iter().enumerate() {
        w.add_image(im, spectra.map(|s| &s[i]))?;
    }
    w.finish()
}
