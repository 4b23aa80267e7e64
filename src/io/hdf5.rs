//! HDF5 image files: readers for three layouts and a writer for one.
//!
//! * [`nxmx`]: NeXus/NXmx stills (dxtbx `FormatNXmx`), multi-panel data and
//!   spectra under `/entry/instrument/beam`.
//! * [`simple`]: diffBragg's `/images` + geometry-attribute layout (dxtbx
//!   `FormatHDF5AttributeGeometry`) and its cxid9114-era variant.
//! * [`writer`]: writes the diffBragg layout (what `diffbragg simulate` makes).
//! * [`pyliteral`]: the Python-literal geometry strings.
//!
//! Layout detection ([`detect_layout`]) looks only at the content:
//! `/images` with both geometry attributes → diffBragg (cxid9114 if the root
//! also holds `wavelengths` + `spectrum` and no `spectrum_energies`); otherwise
//! an `NXentry` group (or `/entry`) → NXmx.
//!
//! HDF5's own error stack printing is silenced; every failure becomes one
//! [`Error`] naming the file and the dataset or attribute.

pub mod nxmx;
pub mod pyliteral;
pub mod simple;
pub mod writer;

use std::path::Path;

use ::hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor, VarLenAscii, VarLenUnicode};
use ::hdf5::{Dataset, File, Group, Location};

use crate::error::{Error, Result};
use crate::image::{ImageFormat, ImageSource};

/// Opens an HDF5 image file with the reader its content calls for.
pub fn open(path: &Path) -> Result<Box<dyn ImageSource>> {
    let file = open_file(path)?;
    match detect(&file, path)? {
        ImageFormat::DiffBraggH5 | ImageFormat::Cxid9114H5 => {
            Ok(Box::new(simple::AttrGeomFile::from_file(path, file)?))
        }
        ImageFormat::Nxmx => Ok(Box::new(nxmx::NxmxFile::from_file(path, file)?)),
        ImageFormat::Smv => Err(Error::file(path, "internal: SMV is not HDF5")),
    }
}

/// Which HDF5 layout a file uses (see the module docs).
pub fn detect_layout(path: &Path) -> Result<ImageFormat> {
    let file = open_file(path)?;
    detect(&file, path)
}

fn detect(file: &File, path: &Path) -> Result<ImageFormat> {
    if file.link_exists("images") {
        if let Ok(ds) = file.dataset("images") {
            let names = ds.attr_names().unwrap_or_default();
            if names.iter().any(|n| n == "dxtbx_detector_string")
                && names.iter().any(|n| n == "dxtbx_beam_string")
            {
                let cxid = file.link_exists("wavelengths")
                    && file.link_exists("spectrum")
                    && !file.link_exists("spectrum_energies");
                return Ok(if cxid { ImageFormat::Cxid9114H5 } else { ImageFormat::DiffBraggH5 });
            }
        }
    }
    if nxmx::find_entry(file).is_some() {
        return Ok(ImageFormat::Nxmx);
    }
    Err(Error::file(
        path,
        "HDF5 file of unknown layout: expected /images with dxtbx_detector_string and \
         dxtbx_beam_string attributes, or a NeXus NXentry group",
    ))
}

/// Turns HDF5's file locking off unless the user set `HDF5_USE_FILE_LOCKING`.
///
/// We only read files in place and write new ones under a temporary name that
/// is renamed when complete, so locks protect nothing here, while they hurt:
/// on Lustre/GPFS many ranks reading one file fail to lock, and a child process
/// spawned while a file is being written inherits the descriptor and keeps the
/// lock after the rename. HDF5 reads the variable at every open.
pub fn disable_file_locking_unless_set() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("HDF5_USE_FILE_LOCKING").is_none() {
            std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE");
        }
    });
}

/// Opens `path` read-only with HDF5's error printing silenced.
pub(crate) fn open_file(path: &Path) -> Result<File> {
    disable_file_locking_unless_set();
    ::hdf5::silence_errors(true);
    File::open(path).map_err(|e| Error::file(path, format!("cannot open as HDF5: {}", h5msg(&e))))
}

/// The most useful line of an hdf5 error (the innermost description).
pub(crate) fn h5msg(e: &::hdf5::Error) -> String {
    let s = e.to_string();
    let s = s.trim();
    if s.is_empty() {
        "HDF5 error".to_string()
    } else {
        s.to_string()
    }
}

/// An hdf5 read error, with a hint when the cause is a missing compression filter.
pub(crate) fn read_msg(e: &::hdf5::Error) -> String {
    let m = h5msg(e);
    if m.contains("plugin") || m.contains("filter") {
        format!(
            "{m} (the data use a compression filter this HDF5 library does not have, e.g. lzf, \
             bitshuffle or blosc: rewrite the file with gzip, e.g. `h5repack -f GZIP=4 in.h5 out.h5`)"
        )
    } else {
        m
    }
}

/// An error about one object (dataset, attribute, group) of a file.
pub(crate) fn obj_err(path: &Path, object: &str, msg: impl Into<String>) -> Error {
    Error::record(path, object.to_string(), msg)
}

/// The dataset `name` of `group`, or an error naming it.
pub(crate) fn dataset(group: &Group, name: &str, path: &Path) -> Result<Dataset> {
    let full = join(&group.name(), name);
    if !group.link_exists(name) {
        return Err(obj_err(path, &format!("dataset {full}"), "missing"));
    }
    group.dataset(name).map_err(|e| obj_err(path, &format!("dataset {full}"), h5msg(&e)))
}

/// The dataset `name` of `group` if the link exists and is a dataset.
pub(crate) fn opt_dataset(group: &Group, name: &str) -> Option<Dataset> {
    if !group.link_exists(name) {
        return None;
    }
    group.dataset(name).ok()
}

/// The sub-group `name` of `group` if the link exists and is a group.
pub(crate) fn opt_group(group: &Group, name: &str) -> Option<Group> {
    if !group.link_exists(name) {
        return None;
    }
    group.group(name).ok()
}

pub(crate) fn join(parent: &str, name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Most values one read may return (8 GiB of f64): a corrupt dataspace must
/// give an error, not an allocation failure.
const MAX_READ_ELEMS: usize = 1 << 30;

/// Guards a read against corrupt metadata that libhdf5 1.10 does not catch
/// itself (it can crash on a datatype of absurd size): the stored type must be
/// a plain integer or float of at most 8 bytes, and the count sane.
pub(crate) fn check_numeric(c: &::hdf5::Container, n_elems: usize, what: &str, path: &Path) -> Result<()> {
    let dt = c.dtype().map_err(|e| obj_err(path, what, h5msg(&e)))?;
    let size = dt.size();
    let td = dt
        .to_descriptor()
        .map_err(|e| obj_err(path, what, format!("unsupported datatype: {}", h5msg(&e))))?;
    match td {
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) | TypeDescriptor::Float(_) if size <= 8 => {}
        other => {
            return Err(obj_err(
                path,
                what,
                format!("expected numbers, found datatype {other} ({size} bytes)"),
            ))
        }
    }
    if n_elems > MAX_READ_ELEMS {
        return Err(obj_err(
            path,
            what,
            format!("{n_elems} values is more than one read may hold (corrupt file?)"),
        ));
    }
    Ok(())
}

/// Whole dataset as f64 (any numeric type; HDF5 converts).
pub(crate) fn read_f64(ds: &Dataset, path: &Path) -> Result<Vec<f64>> {
    let what = format!("dataset {}", ds.name());
    check_numeric(ds, ds.size(), &what, path)?;
    ds.read_raw::<f64>().map_err(|e| obj_err(path, &what, read_msg(&e)))
}

/// Row `i` of a 2-D dataset, as f64.
pub(crate) fn read_row_f64(ds: &Dataset, i: usize, path: &Path) -> Result<Vec<f64>> {
    let what = format!("dataset {}", ds.name());
    let shape = ds.shape();
    if shape.len() != 2 || i >= shape[0] {
        return Err(obj_err(path, &what, format!("cannot read row {i} of shape {shape:?}")));
    }
    check_numeric(ds, shape[1], &what, path)?;
    let sel =
        ::hdf5::Hyperslab::from(vec![::hdf5::SliceOrIndex::from(i), ::hdf5::SliceOrIndex::from(0..shape[1])]);
    let a = ds.read_slice_1d::<f64, _>(sel).map_err(|e| obj_err(path, &what, read_msg(&e)))?;
    Ok(a.into_raw_vec_and_offset().0)
}

/// A hyperslab of `ds` (one `(start, count)` per dimension) as a flat C-order f64 vector.
pub(crate) fn read_block_f64(ds: &Dataset, block: &[(usize, usize)], path: &Path) -> Result<Vec<f64>> {
    let what = format!("dataset {}", ds.name());
    let shape = ds.shape();
    if block.len() != shape.len()
        || block.iter().zip(&shape).any(|(&(s, n), &d)| s.checked_add(n).is_none_or(|e| e > d))
    {
        return Err(obj_err(path, &what, format!("block {block:?} does not fit shape {shape:?}")));
    }
    let n = block.iter().try_fold(1usize, |acc, &(_, c)| acc.checked_mul(c)).unwrap_or(usize::MAX);
    check_numeric(ds, n, &what, path)?;
    let sel = ::hdf5::Hyperslab::from(
        block.iter().map(|&(s, n)| ::hdf5::SliceOrIndex::from(s..s + n)).collect::<Vec<_>>(),
    );
    let a = ds
        .as_reader()
        .read_slice::<f64, _, ndarray::IxDyn>(sel)
        .map_err(|e| obj_err(path, &what, read_msg(&e)))?;
    Ok(a.into_raw_vec_and_offset().0)
}

/// A string attribute (variable or fixed length, ASCII or UTF-8, scalar or
/// one-element array); `None` if absent.
pub(crate) fn read_str_attr(loc: &Location, name: &str, path: &Path) -> Result<Option<String>> {
    let names = loc.attr_names().unwrap_or_default();
    if !names.iter().any(|n| n == name) {
        return Ok(None);
    }
    let what = format!("attribute {}@{name}", loc.name());
    let attr = loc.attr(name).map_err(|e| obj_err(path, &what, h5msg(&e)))?;
    read_string(&attr, &what, path).map(Some)
}

/// A string dataset `name` of `group` (same forms as [`read_str_attr`]); `None` if absent.
pub(crate) fn read_str_dataset(group: &Group, name: &str, path: &Path) -> Result<Option<String>> {
    let Some(ds) = opt_dataset(group, name) else { return Ok(None) };
    read_string(&ds, &format!("dataset {}", ds.name()), path).map(Some)
}

/// One string from an attribute or dataset of any HDF5 string type.
fn read_string(c: &::hdf5::Container, what: &str, path: &Path) -> Result<String> {
    let td = c.dtype().and_then(|t| t.to_descriptor()).map_err(|e| obj_err(path, what, h5msg(&e)))?;
    if c.size() != 1 {
        return Err(obj_err(path, what, format!("expected one string, found {} values", c.size())));
    }
    let e = |e: ::hdf5::Error| obj_err(path, what, h5msg(&e));
    Ok(match td {
        TypeDescriptor::VarLenUnicode => c.read_raw::<VarLenUnicode>().map_err(e)?[0].as_str().to_string(),
        TypeDescriptor::VarLenAscii => c.read_raw::<VarLenAscii>().map_err(e)?[0].as_str().to_string(),
        TypeDescriptor::FixedAscii(n) | TypeDescriptor::FixedUnicode(n) => {
            let unicode = matches!(td, TypeDescriptor::FixedUnicode(_));
            let bytes = read_fixed_string(c, n, unicode).map_err(e)?;
            String::from_utf8_lossy(&bytes).trim_end_matches([' ', '\0']).to_string()
        }
        other => return Err(obj_err(path, what, format!("expected a string, found {other}"))),
    })
}

/// Reads a fixed-length string through a large enough fixed buffer type.
fn read_fixed_string(attr: &::hdf5::Container, n: usize, unicode: bool) -> ::hdf5::Result<Vec<u8>> {
    macro_rules! via {
        ($cap:expr) => {{
            if unicode {
                attr.read_raw::<FixedUnicode<$cap>>().map(|v| v[0].as_bytes().to_vec())
            } else {
                attr.read_raw::<FixedAscii<$cap>>().map(|v| v[0].as_bytes().to_vec())
            }
        }};
    }
    if n <= 256 {
        via!(256)
    } else if n <= 65536 {
        via!(65536)
    } else if n <= 1 << 22 {
        via!(4194304)
    } else {
        Err(::hdf5::Error::from(format!("fixed-length string of {n} bytes is too long")))
    }
}

/// A numeric attribute as f64 values; `None` if absent.
pub(crate) fn read_num_attr(loc: &Location, name: &str, path: &Path) -> Result<Option<Vec<f64>>> {
    let names = loc.attr_names().unwrap_or_default();
    if !names.iter().any(|n| n == name) {
        return Ok(None);
    }
    let what = format!("attribute {}@{name}", loc.name());
    let attr = loc.attr(name).map_err(|e| obj_err(path, &what, h5msg(&e)))?;
    check_numeric(&attr, attr.size(), &what, path)?;
    attr.read_raw::<f64>().map(Some).map_err(|e| obj_err(path, &what, h5msg(&e)))
}

/// The `NX_class` attribute of a group, if any.
pub(crate) fn nx_class(g: &Group) -> Option<String> {
    read_str_attr(g, "NX_class", Path::new("")).ok().flatten()
}

/// Checks that a spectrum read from a file is usable: equal lengths, finite
/// positive wavelengths, finite weights. Measured weights may be negative.
pub(crate) fn check_spectrum(wavelengths: &[f64], weights: &[f64]) -> std::result::Result<(), String> {
    if wavelengths.len() != weights.len() {
        return Err(format!("{} wavelengths but {} weights", wavelengths.len(), weights.len()));
    }
    if wavelengths.is_empty() {
        return Err("empty spectrum".into());
    }
    if let Some(i) = wavelengths.iter().position(|l| !(l.is_finite() && *l > 0.0)) {
        return Err(format!("channel {i}: wavelength {} Å is not a positive number", wavelengths[i]));
    }
    if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
        return Err(format!("channel {i}: weight {} is not finite", weights[i]));
    }
    Ok(())
}
