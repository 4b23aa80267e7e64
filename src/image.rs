//! Detector images and the files that hold them.
//!
//! Conventions:
//! * An [`Image`] is one shot: one 2-D array per detector panel, in the
//!   panel order of the detector model (dxtbx `get_raw_data()` tuple order).
//! * Each [`PanelImage`] is row-major `(slow, fast)`: element `(s, f)` sits at
//!   `s·n_fast + f`, matching dxtbx/numpy C order. Values are raw file units
//!   (ADU or photons, whatever the file stores), converted to f64.
//! * An [`ImageSource`] is one opened file holding `n_images()` shots, indexed
//!   from 0 (dxtbx `single_file_indices`). Every error names the file, and the
//!   dataset or record where it applies.
//! * [`open_image_source`] picks the reader from the file's content (HDF5
//!   signature and the datasets present, or an SMV header), never its name.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::spectrum::Spectrum;

/// One panel's pixels, row-major `(slow, fast)`.
#[derive(Clone, Debug, PartialEq)]
pub struct PanelImage {
    n_slow: usize,
    n_fast: usize,
    data: Vec<f64>,
}

impl PanelImage {
    /// Wraps `data` (length `n_slow·n_fast`, slow-major).
    pub fn new(n_slow: usize, n_fast: usize, data: Vec<f64>) -> Result<PanelImage> {
        if n_slow.checked_mul(n_fast) != Some(data.len()) {
            return Err(Error::msg(format!(
                "panel image of {n_slow}×{n_fast} (slow×fast) pixels given {} values",
                data.len()
            )));
        }
        Ok(PanelImage { n_slow, n_fast, data })
    }

    pub fn zeros(n_slow: usize, n_fast: usize) -> PanelImage {
        PanelImage { n_slow, n_fast, data: vec![0.0; n_slow * n_fast] }
    }

    pub fn n_slow(&self) -> usize {
        self.n_slow
    }

    pub fn n_fast(&self) -> usize {
        self.n_fast
    }

    /// `(n_slow, n_fast)`, the numpy shape.
    pub fn shape(&self) -> (usize, usize) {
        (self.n_slow, self.n_fast)
    }

    pub fn data(&self) -> &[f64] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f64] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f64> {
        self.data
    }

    /// Pixel at slow index `s`, fast index `f`. Panics when out of range.
    pub fn get(&self, s: usize, f: usize) -> f64 {
        assert!(s < self.n_slow && f < self.n_fast, "pixel ({s}, {f}) outside {:?}", self.shape());
        self.data[s * self.n_fast + f]
    }

    /// Row `s` (all fast pixels).
    pub fn row(&self, s: usize) -> &[f64] {
        &self.data[s * self.n_fast..(s + 1) * self.n_fast]
    }

    /// Sum of all pixels, accumulated in f64.
    pub fn sum(&self) -> f64 {
        self.data.iter().sum()
    }
}

/// One shot: a panel image per detector panel.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Image {
    pub panels: Vec<PanelImage>,
}

impl Image {
    pub fn new(panels: Vec<PanelImage>) -> Image {
        Image { panels }
    }

    /// Builds an image from a `(panel, slow, fast)` C-order block.
    pub fn from_stack(n_panels: usize, n_slow: usize, n_fast: usize, data: Vec<f64>) -> Result<Image> {
        let per = n_slow.checked_mul(n_fast);
        if per.and_then(|p| p.checked_mul(n_panels)) != Some(data.len()) {
            return Err(Error::msg(format!(
                "image stack of {n_panels}×{n_slow}×{n_fast} (panel×slow×fast) given {} values",
                data.len()
            )));
        }
        let per = per.unwrap_or(0);
        let panels = if per == 0 {
            (0..n_panels).map(|_| PanelImage::zeros(n_slow, n_fast)).collect()
        } else {
            data.chunks_exact(per).map(|c| PanelImage { n_slow, n_fast, data: c.to_vec() }).collect()
        };
        Ok(Image { panels })
    }

    pub fn n_panels(&self) -> usize {
        self.panels.len()
    }

    pub fn panel(&self, i: usize) -> &PanelImage {
        &self.panels[i]
    }

    /// `(n_slow, n_fast)` of every panel.
    pub fn shapes(&self) -> Vec<(usize, usize)> {
        self.panels.iter().map(|p| p.shape()).collect()
    }

    /// The common `(n_slow, n_fast)` if every panel has the same shape.
    pub fn uniform_shape(&self) -> Option<(usize, usize)> {
        let first = self.panels.first()?.shape();
        self.panels.iter().all(|p| p.shape() == first).then_some(first)
    }

    pub fn n_pixels(&self) -> usize {
        self.panels.iter().map(|p| p.data.len()).sum()
    }

    /// Sum of all pixels of all panels, accumulated in f64.
    pub fn sum(&self) -> f64 {
        self.panels.iter().map(|p| p.sum()).sum()
    }

    /// Checks the panel count and each panel's size against a detector model
    /// (whose `image_size` is `(n_fast, n_slow)`).
    pub fn check_detector(&self, det: &crate::geometry::Detector) -> std::result::Result<(), String> {
        if self.panels.len() != det.panels.len() {
            return Err(format!("image has {} panels, detector {}", self.panels.len(), det.panels.len()));
        }
        for (i, (im, p)) in self.panels.iter().zip(&det.panels).enumerate() {
            if (im.n_fast, im.n_slow) != (p.image_size[0], p.image_size[1]) {
                return Err(format!(
                    "panel {i}: image is {}×{} (fast×slow) pixels, detector says {}×{}",
                    im.n_fast, im.n_slow, p.image_size[0], p.image_size[1]
                ));
            }
        }
        Ok(())
    }
}

/// Which reader handles a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// NeXus/NXmx HDF5 (dxtbx `FormatNXmx`).
    Nxmx,
    /// diffBragg's simple HDF5 (`/images` + dxtbx geometry attribute strings),
    /// dxtbx `FormatHDF5AttributeGeometry`.
    DiffBraggH5,
    /// The cxid9114-era variant of the simple layout with root `wavelengths` +
    /// `spectrum` (cxid9114 `FormatD9114`).
    Cxid9114H5,
    /// ADSC-style SMV (`.img`), optionally gzipped.
    Smv,
}

/// A file of shots. Sources may be shared between threads; HDF5 reads are
/// serialised by the hdf5 crate's global lock.
pub trait ImageSource: Send + Sync {
    /// The file this source reads.
    fn path(&self) -> &Path;

    fn format(&self) -> ImageFormat;

    fn n_images(&self) -> usize;

    /// `(n_slow, n_fast)` of every panel, as the file lays them out.
    fn panel_shapes(&self) -> Vec<(usize, usize)>;

    /// Shot `i` (0-based).
    fn read_image(&self, i: usize) -> Result<Image>;

    /// The spectrum of shot `i`, if the file carries one (dxtbx `get_spectrum`).
    /// Wavelengths in Å; weights as stored (arbitrary scale).
    fn spectrum(&self, i: usize) -> Result<Option<Spectrum>>;

    /// The beam wavelength (Å) the file gives shot `i`, if any: the calibrated
    /// per-shot value, or the spectrum's mean, as the dxtbx format class sets it.
    fn wavelength(&self, i: usize) -> Result<Option<f64>>;

    /// The dxtbx detector dict (`Detector.to_dict()`) the file carries, if any.
    fn detector_dict(&self) -> Option<Value>;

    /// The dxtbx beam dict for shot `i` (with that shot's wavelength), if the
    /// file carries a beam.
    fn beam_dict(&self, i: usize) -> Result<Option<Value>>;
}

impl std::fmt::Debug for dyn ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}({}, {} images)", self.format(), self.path().display(), self.n_images())
    }
}

/// Error for a shot index outside `0..n`.
pub(crate) fn index_error(path: &Path, i: usize, n: usize) -> Error {
    Error::record(path, format!("image {i}"), format!("index out of range: the file holds {n} image(s)"))
}

/// The 8-byte signature that opens an HDF5 superblock.
pub(crate) const HDF5_SIGNATURE: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];

/// True if an HDF5 superblock signature sits at offset 0, 512, 1024, … (the
/// places a user block may push it to).
pub(crate) fn has_hdf5_signature(path: &Path) -> Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| crate::error::io_err(path, e))?;
    let len = f.metadata().map_err(|e| crate::error::io_err(path, e))?.len();
    let mut off = 0u64;
    let mut buf = [0u8; 8];
    while off + 8 <= len {
        f.seek(SeekFrom::Start(off)).map_err(|e| crate::error::io_err(path, e))?;
        f.read_exact(&mut buf).map_err(|e| crate::error::io_err(path, e))?;
        if buf == HDF5_SIGNATURE {
            return Ok(true);
        }
        off = if off == 0 { 512 } else { off * 2 };
    }
    Ok(false)
}

/// Opens an image file, choosing the reader from its content: an HDF5 file is
/// NXmx, diffBragg's simple layout or the cxid9114 layout depending on the
/// datasets it holds; a file (or gzip stream) that starts with an SMV header
/// `{ HEADER_BYTES=… }` is SMV.
pub fn open_image_source(path: impl AsRef<Path>) -> Result<Box<dyn ImageSource>> {
    let path = path.as_ref();
    if path.is_dir() {
        return Err(Error::file(path, "is a folder, not an image file"));
    }
    if !path.is_file() {
        return Err(Error::file(path, "image file not found"));
    }
    if has_hdf5_signature(path)? {
        return crate::io::hdf5::open(path);
    }
    if crate::io::smv::looks_like_smv(path)? {
        return Ok(Box::new(crate::io::smv::SmvFile::open(path)?));
    }
    Err(Error::file(path, "not a recognised image file (neither HDF5 nor an SMV header)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_splits_panels_in_order() {
        let data: Vec<f64> = (0..24).map(f64::from).collect();
        let im = Image::from_stack(2, 3, 4, data).unwrap();
        assert_eq!(im.n_panels(), 2);
        assert_eq!(im.panel(1).get(0, 0), 12.0);
        assert_eq!(im.panel(0).get(2, 3), 11.0);
        assert_eq!(im.panel(1).row(1), &[16.0, 17.0, 18.0, 19.0]);
        assert_eq!(im.sum(), (0..24).sum::<i32>() as f64);
        assert_eq!(im.uniform_shape(), Some((3, 4)));
        assert!(Image::from_stack(2, 3, 4, vec![0.0; 23]).is_err());
        assert!(PanelImage::new(usize::MAX, 2, vec![]).is_err());
    }

    #[test]
    fn detector_check_uses_fast_slow_order() {
        let det = crate::geometry::Detector {
            panels: vec![crate::geometry::Panel { image_size: [4, 3], ..Default::default() }],
            hierarchy: None,
        };
        assert!(Image::new(vec![PanelImage::zeros(3, 4)]).check_detector(&det).is_ok());
        assert!(Image::new(vec![PanelImage::zeros(4, 3)]).check_detector(&det).is_err());
    }
}
