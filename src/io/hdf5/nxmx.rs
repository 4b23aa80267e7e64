//! NeXus/NXmx stills (dxtbx `FormatNXmx`, `dxtbx.nexus`).
//!
//! What is read:
//! * the first `NXentry` (by name; or `/entry`), its `NXdata` (or `data`) and
//!   the dataset named by the group's `signal` attribute (else `data`, else the
//!   first dataset): `(nframes, …)`, frames on the first axis;
//! * panels: each `NXdetector_module` (in name order, like h5py) of the first
//!   `NXdetector` selects the block `data_origin .. data_origin+data_size` of a
//!   frame; every block dimension but the last two must be 1. Without modules a
//!   frame `(slow, fast)` is one panel and `(npanel, slow, fast)` is npanel panels;
//! * spectra under the `NXbeam` (in `instrument`, else `sample`), as dxtbx does:
//!   - simple form: `incident_wavelength` holds the channel wavelengths and
//!     `incident_wavelength_weights` (deprecated `_weight`) the weights;
//!     `(nchan,)` shared or `(nframes, nchan)`. Beam wavelength = hc/(weighted
//!     mean energy) of the shot's spectrum (dxtbx `get_weighted_wavelength`);
//!   - variant form: `incident_wavelength` `(nframes,)` or scalar is the
//!     calibrated wavelength and its `variant` attribute names the next
//!     dataset; the chain is followed until a dataset with `_weights`/`_weight`
//!     exists. Beam wavelength = the calibrated value;
//!   - `units` attributes are honoured (length units, or eV/keV as energies);
//!     a missing `units` is taken as Å.
//! * geometry: a flat dxtbx detector dict (identity root, panels in the lab
//!   frame) composed from each module's `fast/slow_pixel_direction` and its
//!   `depends_on` chain, mapped McStas → imgCIF with diag(−1, 1, −1). The
//!   chain is composed as NeXus defines it (`A = T_last·…·T_first`, origin =
//!   `A·offset`). **\[BUG?\]** dxtbx's single-module (flat) code instead adds
//!   the chain's translation to the *unrotated* offset; the two agree unless
//!   the chain rotates (e.g. a two-theta arm). We follow the standard, which
//!   is also what dxtbx's multi-module (hierarchical) code computes. `mu` is left 0
//!   (no attenuation table here: the caller sets it if it models parallax),
//!   and the hierarchy dxtbx builds for multi-module files is not rebuilt: the
//!   lab-frame panels are the same, the tree is flat.

use std::path::{Path, PathBuf};

use ::hdf5::{Dataset, File, Group};
use serde_json::{json, Value};

use super::{
    check_spectrum, h5msg, join, nx_class, obj_err, opt_dataset, opt_group, read_block_f64, read_f64,
    read_num_attr, read_row_f64, read_str_attr, read_str_dataset,
};
use crate::conventions::{axis_angle, Mat3, Vec3, EV_ANGSTROM};
use crate::error::{Error, Result};
use crate::image::{index_error, Image, ImageFormat, ImageSource, PanelImage};
use crate::spectrum::Spectrum;

/// One panel: a block of a frame.
#[derive(Clone, Debug)]
struct Module {
    /// `(start, count)` for every dimension after the frame axis.
    block: Vec<(usize, usize)>,
    n_slow: usize,
    n_fast: usize,
}

/// How the file gives spectra and wavelengths.
struct BeamInfo {
    /// `incident_wavelength` and its scale to Å (None if absent).
    wavelength: Option<(Dataset, Units)>,
    /// Channel wavelengths + weights datasets, with the wavelengths' units.
    spectrum: Option<(Dataset, Dataset, Units)>,
    /// True when the spectrum came through the `variant` chain.
    variant: bool,
}

/// An opened NXmx file.
pub struct NxmxFile {
    path: PathBuf,
    data: Dataset,
    n_images: usize,
    modules: Vec<Module>,
    beam: BeamInfo,
    detector: Option<Value>,
    _file: File,
}

/// The NXentry group: the first group (by name) with `NX_class = NXentry`, else `/entry`.
pub fn find_entry(file: &File) -> Option<Group> {
    if let Ok(groups) = file.groups() {
        for g in groups {
            if nx_class(&g).as_deref() == Some("NXentry") {
                return Some(g);
            }
        }
    }
    opt_group(file, "entry")
}

/// The first child group of class `class` (by name), else the child named `fallback`.
fn find_child(g: &Group, class: &str, fallback: &str) -> Option<Group> {
    if let Ok(groups) = g.groups() {
        for c in groups {
            if nx_class(&c).as_deref() == Some(class) {
                return Some(c);
            }
        }
    }
    opt_group(g, fallback)
}

fn children_of_class(g: &Group, class: &str) -> Vec<Group> {
    g.groups().unwrap_or_default().into_iter().filter(|c| nx_class(c).as_deref() == Some(class)).collect()
}

impl NxmxFile {
    pub fn open(path: impl AsRef<Path>) -> Result<NxmxFile> {
        let path = path.as_ref();
        let file = super::open_file(path)?;
        Self::from_file(path, file)
    }

    pub(crate) fn from_file(path: &Path, file: File) -> Result<NxmxFile> {
        let entry = find_entry(&file).ok_or_else(|| Error::file(path, "no NXentry group"))?;
        let nxdata = find_child(&entry, "NXdata", "data")
            .ok_or_else(|| obj_err(path, &format!("group {}", entry.name()), "no NXdata group"))?;
        let data = signal_dataset(&nxdata, path)?;
        let shape = data.shape();
        let dname = format!("dataset {}", data.name());
        if shape.len() < 3 {
            return Err(obj_err(
                path,
                &dname,
                format!("expected (nframes, …, slow, fast), found shape {shape:?}"),
            ));
        }
        let n_images = shape[0];
        let frame = &shape[1..];

        let instrument = find_child(&entry, "NXinstrument", "instrument");
        let nxdet = instrument.as_ref().and_then(|i| children_of_class(i, "NXdetector").into_iter().next());
        let module_groups =
            nxdet.as_ref().map(|d| children_of_class(d, "NXdetector_module")).unwrap_or_default();

        let modules = if module_groups.is_empty() {
            match frame.len() {
                2 => vec![Module { block: vec![(0, frame[0]), (0, frame[1])], n_slow: frame[0], n_fast: frame[1] }],
                3 => (0..frame[0])
                    .map(|p| Module { block: vec![(p, 1), (0, frame[1]), (0, frame[2])], n_slow: frame[1], n_fast: frame[2] })
                    .collect(),
                _ => {
                    return Err(obj_err(
                        path,
                        &dname,
                        format!("no NXdetector_module and frame shape {frame:?} is not (slow, fast) or (panel, slow, fast)"),
                    ))
                }
            }
        } else {
            module_groups.iter().map(|m| module_block(m, frame, path)).collect::<Result<Vec<_>>>()?
        };

        let beam_group = instrument.as_ref().and_then(|i| find_child(i, "NXbeam", "beam")).or_else(|| {
            find_child(&entry, "NXsample", "sample").and_then(|s| find_child(&s, "NXbeam", "beam"))
        });
        let beam = match &beam_group {
            Some(g) => read_beam_info(g, n_images, path)?,
            None => BeamInfo { wavelength: None, spectrum: None, variant: false },
        };

        let detector = match (&nxdet, module_groups.is_empty()) {
            (Some(d), false) => Some(detector_dict(&file, d, &module_groups, &modules, path)?),
            _ => None,
        };

        Ok(NxmxFile { path: path.to_path_buf(), data, n_images, modules, beam, detector, _file: file })
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i >= self.n_images {
            Err(index_error(&self.path, i, self.n_images))
        } else {
            Ok(())
        }
    }
}

/// The NXdata signal dataset.
fn signal_dataset(nxdata: &Group, path: &Path) -> Result<Dataset> {
    if let Some(sig) = read_str_attr(nxdata, "signal", path)? {
        if let Some(d) = opt_dataset(nxdata, &sig) {
            return Ok(d);
        }
    }
    if let Some(d) = opt_dataset(nxdata, "data") {
        return Ok(d);
    }
    nxdata
        .datasets()
        .ok()
        .and_then(|v| v.into_iter().next())
        .ok_or_else(|| obj_err(path, &format!("group {}", nxdata.name()), "holds no dataset"))
}

/// A module's block of a frame from `data_origin`/`data_size`.
fn module_block(m: &Group, frame: &[usize], path: &Path) -> Result<Module> {
    let what = format!("group {}", m.name());
    let get = |name: &str| -> Result<Vec<f64>> {
        let ds = opt_dataset(m, name).ok_or_else(|| obj_err(path, &what, format!("missing {name}")))?;
        read_f64(&ds, path)
    };
    let origin = get("data_origin")?;
    let size = get("data_size")?;
    if origin.len() != size.len() || origin.is_empty() || origin.len() > frame.len() {
        return Err(obj_err(
            path,
            &what,
            format!("data_origin {origin:?} / data_size {size:?} do not match frame shape {frame:?}"),
        ));
    }
    let mut block = Vec::with_capacity(frame.len());
    for (k, &dim) in frame.iter().enumerate() {
        if k < origin.len() {
            let (o, s) = (origin[k], size[k]);
            if !(o >= 0.0 && s >= 1.0 && o.fract() == 0.0 && s.fract() == 0.0 && o + s <= dim as f64) {
                return Err(obj_err(
                    path,
                    &what,
                    format!("data_origin {origin:?} / data_size {size:?} fall outside frame shape {frame:?}"),
                ));
            }
            block.push((o as usize, s as usize));
        } else {
            // numpy semantics: dimensions beyond the given slices are taken whole.
            block.push((0, dim));
        }
    }
    let n = block.len();
    if block.len() < 2 || block[..n - 2].iter().any(|&(_, s)| s != 1) {
        return Err(obj_err(path, &what, format!("block {block:?} is not a 2-D panel")));
    }
    Ok(Module { n_slow: block[n - 2].1, n_fast: block[n - 1].1, block })
}

/// Scale of a `units` attribute to Å, or an energy unit.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Units {
    /// Multiply by this to get Å.
    Length(f64),
    /// Multiply by this to get eV, then λ = hc/E.
    Energy(f64),
}

impl Units {
    fn parse(u: Option<&str>) -> std::result::Result<Units, String> {
        let Some(u) = u else { return Ok(Units::Length(1.0)) };
        let t = u.trim();
        let l = t.to_ascii_lowercase();
        Ok(match l.as_str() {
            "" | "angstrom" | "angstroms" | "a" | "å" | "ang" | "angstroem" => Units::Length(1.0),
            "nm" | "nanometer" | "nanometers" | "nanometre" | "nanometres" => Units::Length(10.0),
            "pm" | "picometer" | "picometers" => Units::Length(0.01),
            "m" | "meter" | "meters" | "metre" | "metres" => Units::Length(1e10),
            "mm" | "millimeter" | "millimeters" | "millimetre" => Units::Length(1e7),
            "um" | "µm" | "μm" | "micron" | "microns" | "micrometer" | "micrometers" => Units::Length(1e4),
            "cm" | "centimeter" | "centimeters" => Units::Length(1e8),
            "ev" | "electron_volt" => Units::Energy(1.0),
            "kev" => Units::Energy(1e3),
            _ if t == "Å" => Units::Length(1.0),
            _ => return Err(format!("unknown wavelength units `{u}`")),
        })
    }

    fn to_angstrom(self, v: &[f64]) -> Vec<f64> {
        match self {
            Units::Length(f) => v.iter().map(|x| x * f).collect(),
            Units::Energy(f) => v.iter().map(|x| EV_ANGSTROM / (x * f)).collect(),
        }
    }
}

fn units_of(ds: &Dataset, path: &Path) -> Result<Units> {
    let u = read_str_attr(ds, "units", path)?;
    Units::parse(u.as_deref()).map_err(|m| obj_err(path, &format!("attribute {}@units", ds.name()), m))
}

/// Port of dxtbx's NXbeam spectrum logic (simple and variant forms).
fn read_beam_info(beam: &Group, n_images: usize, path: &Path) -> Result<BeamInfo> {
    const PRIMARY: &str = "incident_wavelength";
    let Some(primary) = opt_dataset(beam, PRIMARY) else {
        return Ok(BeamInfo { wavelength: None, spectrum: None, variant: false });
    };
    let weights_of = |key: &str| {
        opt_dataset(beam, &format!("{key}_weights")).or_else(|| opt_dataset(beam, &format!("{key}_weight")))
    };
    let mut spectrum = weights_of(PRIMARY).map(|w| (primary.clone(), w));
    let mut variant = false;
    let mut current = primary.clone();
    let mut hops = 0;
    while spectrum.is_none() {
        let Some(next) = read_str_attr(&current, "variant", path)? else { break };
        hops += 1;
        if hops > 32 {
            return Err(obj_err(
                path,
                &format!("dataset {}", primary.name()),
                "`variant` chain does not end",
            ));
        }
        let ds = opt_dataset(beam, &next).ok_or_else(|| {
            obj_err(
                path,
                &format!("attribute {}@variant", current.name()),
                format!("names missing dataset `{next}`"),
            )
        })?;
        match weights_of(&next) {
            Some(w) => {
                spectrum = Some((ds, w));
                variant = true;
            }
            None => current = ds,
        }
    }
    let wl_units = units_of(&primary, path)?;
    let spectrum = match spectrum {
        None => None,
        Some((l, w)) => {
            let what = format!("datasets {} and {}", l.name(), w.name());
            let (sl, sw) = (l.shape(), w.shape());
            let ok =
                |s: &[usize]| matches!(s, [n] if *n > 0) || matches!(s, [m, n] if *m == n_images && *n > 0);
            if !ok(&sl) || !ok(&sw) || sl.last() != sw.last() {
                return Err(obj_err(
                    path,
                    &what,
                    format!("spectrum shapes {sl:?} and {sw:?} are not (nchan,) or ({n_images}, nchan) with equal nchan"),
                ));
            }
            let u = units_of(&l, path)?;
            Some((l, w, u))
        }
    };
    // A scalar/per-frame wavelength must have a usable shape when we will use it.
    if spectrum.is_none() || variant {
        let s = primary.shape();
        let ok = s.is_empty() || s == [1] || s == [n_images];
        if !ok {
            return Err(obj_err(
                path,
                &format!("dataset {}", primary.name()),
                format!("expected a scalar or ({n_images},) wavelength, found shape {s:?}"),
            ));
        }
    }
    Ok(BeamInfo { wavelength: Some((primary, wl_units)), spectrum, variant })
}

fn row_or_all(ds: &Dataset, i: usize, path: &Path) -> Result<Vec<f64>> {
    if ds.ndim() == 1 {
        read_f64(ds, path)
    } else {
        read_row_f64(ds, i, path)
    }
}

impl ImageSource for NxmxFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self) -> ImageFormat {
        ImageFormat::Nxmx
    }

    fn n_images(&self) -> usize {
        self.n_images
    }

    fn panel_shapes(&self) -> Vec<(usize, usize)> {
        self.modules.iter().map(|m| (m.n_slow, m.n_fast)).collect()
    }

    fn read_image(&self, i: usize) -> Result<Image> {
        self.check_index(i)?;
        let mut panels = Vec::with_capacity(self.modules.len());
        for (k, m) in self.modules.iter().enumerate() {
            let mut block = Vec::with_capacity(m.block.len() + 1);
            block.push((i, 1));
            block.extend_from_slice(&m.block);
            let v = read_block_f64(&self.data, &block, &self.path).map_err(|e| match e {
                Error::Record { path, location, msg } => {
                    Error::Record { path, location: format!("{location}, image {i}, panel {k}"), msg }
                }
                e => e,
            })?;
            panels.push(
                PanelImage::new(m.n_slow, m.n_fast, v).map_err(|e| {
                    obj_err(&self.path, &format!("dataset {}", self.data.name()), e.to_string())
                })?,
            );
        }
        Ok(Image::new(panels))
    }

    fn spectrum(&self, i: usize) -> Result<Option<Spectrum>> {
        self.check_index(i)?;
        let Some((l, w, units)) = &self.beam.spectrum else { return Ok(None) };
        let lam = units.to_angstrom(&row_or_all(l, i, &self.path)?);
        let wts = row_or_all(w, i, &self.path)?;
        check_spectrum(&lam, &wts).map_err(|m| {
            obj_err(&self.path, &format!("datasets {} and {}", l.name(), w.name()), format!("image {i}: {m}"))
        })?;
        Ok(Some(Spectrum::new(lam, wts)))
    }

    fn wavelength(&self, i: usize) -> Result<Option<f64>> {
        self.check_index(i)?;
        if self.beam.spectrum.is_some() && !self.beam.variant {
            let s = self.spectrum(i)?.expect("spectrum present");
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
        let Some((ds, units)) = &self.beam.wavelength else { return Ok(None) };
        let s = ds.shape();
        let v = if s.is_empty() || s == [1] {
            read_f64(ds, &self.path)?
        } else {
            read_block_f64(ds, &[(i, 1)], &self.path)?
        };
        let l = units.to_angstrom(&v).first().copied().unwrap_or(f64::NAN);
        if !(l.is_finite() && l > 0.0) {
            return Err(obj_err(
                &self.path,
                &format!("dataset {}", ds.name()),
                format!("image {i}: bad wavelength {l}"),
            ));
        }
        Ok(Some(l))
    }

    fn detector_dict(&self) -> Option<Value> {
        self.detector.clone()
    }

    fn beam_dict(&self, i: usize) -> Result<Option<Value>> {
        // dxtbx builds Beam(direction=(0, 0, 1), wavelength) with default polarization.
        Ok(self.wavelength(i)?.map(|l| {
            json!({
                "__id__": "monochromatic",
                "direction": [0.0, 0.0, 1.0],
                "wavelength": l,
                "divergence": 0.0,
                "sigma_divergence": 0.0,
                "polarization_normal": [0.0, 1.0, 0.0],
                "polarization_fraction": 0.999,
                "flux": 0.0,
                "transmission": 1.0,
                "probe": "x-ray",
                "sample_to_source_distance": 0.0
            })
        }))
    }
}

// ---------------------------------------------------------------- geometry

/// McStas (NeXus) → imgCIF (dxtbx): diag(−1, 1, −1).
fn mcstas_to_imgcif(v: &Vec3) -> Vec3 {
    Vec3::new(-v.x, v.y, -v.z)
}

/// A rigid transform `p ↦ R·p + t` (t in mm).
#[derive(Clone, Copy)]
struct Rigid {
    r: Mat3,
    t: Vec3,
}

impl Rigid {
    fn identity() -> Rigid {
        Rigid { r: Mat3::identity(), t: Vec3::zeros() }
    }
    /// `self ∘ other` (apply `other` first).
    fn then_outer(&self, inner: &Rigid) -> Rigid {
        Rigid { r: self.r * inner.r, t: self.r * inner.t + self.t }
    }
}

fn length_scale_mm(u: Option<&str>) -> std::result::Result<f64, String> {
    let Some(u) = u else { return Ok(1.0) };
    Ok(match u.trim().to_ascii_lowercase().as_str() {
        "mm" | "millimeter" | "millimeters" | "millimetre" | "millimetres" => 1.0,
        "m" | "meter" | "meters" | "metre" | "metres" => 1e3,
        "cm" | "centimeter" | "centimeters" => 10.0,
        "um" | "µm" | "μm" | "micron" | "microns" | "micrometer" | "micrometers" => 1e-3,
        "nm" => 1e-6,
        _ => return Err(format!("unknown length units `{u}`")),
    })
}

fn angle_scale_rad(u: Option<&str>) -> std::result::Result<f64, String> {
    let Some(u) = u else { return Ok(std::f64::consts::PI / 180.0) };
    Ok(match u.trim().to_ascii_lowercase().as_str() {
        "deg" | "degree" | "degrees" | "°" => std::f64::consts::PI / 180.0,
        "rad" | "radian" | "radians" => 1.0,
        _ => return Err(format!("unknown angle units `{u}`")),
    })
}

fn vec3_attr(ds: &Dataset, name: &str, path: &Path) -> Result<Option<Vec3>> {
    match read_num_attr(ds, name, path)? {
        None => Ok(None),
        Some(v) if v.len() == 3 && v.iter().all(|x| x.is_finite()) => Ok(Some(Vec3::new(v[0], v[1], v[2]))),
        Some(v) => Err(obj_err(
            path,
            &format!("attribute {}@{name}", ds.name()),
            format!("expected 3 numbers, found {v:?}"),
        )),
    }
}

/// The dataset a `depends_on` value points at, relative to `parent` (or absolute).
fn resolve(file: &File, parent: &str, target: &str, path: &Path) -> Result<Dataset> {
    let full = join(parent, target);
    file.dataset(&full).map_err(|e| obj_err(path, &format!("depends_on `{target}`"), h5msg(&e)))
}

fn parent_of(name: &str) -> String {
    match name.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(k) => name[..k].to_string(),
    }
}

/// One NXtransformations axis as a rigid transform (first value for stills).
fn axis_transform(ds: &Dataset, path: &Path) -> Result<Rigid> {
    let what = format!("dataset {}", ds.name());
    let kind = read_str_attr(ds, "transformation_type", path)?.unwrap_or_default();
    let vector = vec3_attr(ds, "vector", path)?.unwrap_or_else(Vec3::zeros);
    let units = read_str_attr(ds, "units", path)?;
    let offset_units = read_str_attr(ds, "offset_units", path)?.or_else(|| units.clone());
    let offset = match vec3_attr(ds, "offset", path)? {
        Some(o) => o * length_scale_mm(offset_units.as_deref()).map_err(|m| obj_err(path, &what, m))?,
        None => Vec3::zeros(),
    };
    let values = read_f64(ds, path)?;
    let value = values.first().copied().unwrap_or(0.0);
    if !value.is_finite() {
        return Err(obj_err(path, &what, "value is not finite"));
    }
    match kind.as_str() {
        "rotation" => {
            let a = value * angle_scale_rad(units.as_deref()).map_err(|m| obj_err(path, &what, m))?;
            let r = if vector.norm() > 0.0 { axis_angle(&vector, a) } else { Mat3::identity() };
            Ok(Rigid { r, t: offset })
        }
        "translation" => {
            let d = value * length_scale_mm(units.as_deref()).map_err(|m| obj_err(path, &what, m))?;
            Ok(Rigid { r: Mat3::identity(), t: vector * d + offset })
        }
        _ => Ok(Rigid { r: Mat3::identity(), t: offset }),
    }
}

/// Composes the chain starting at the `depends_on` attribute of `ds`.
fn chain_from(file: &File, ds: &Dataset, path: &Path) -> Result<Rigid> {
    let mut total = Rigid::identity();
    let mut current_parent = parent_of(&ds.name());
    let mut next = read_str_attr(ds, "depends_on", path)?;
    let mut hops = 0;
    while let Some(target) = next.filter(|t| !t.is_empty() && t != ".") {
        hops += 1;
        if hops > 64 {
            return Err(obj_err(path, &format!("dataset {}", ds.name()), "depends_on chain does not end"));
        }
        let axis = resolve(file, &current_parent, &target, path)?;
        // Each further link is outer: lab = T_last · … · T_first · p.
        total = axis_transform(&axis, path)?.then_outer(&total);
        current_parent = parent_of(&axis.name());
        next = read_str_attr(&axis, "depends_on", path)?;
    }
    Ok(total)
}

fn pixel_axis(file: &File, m: &Group, name: &str, path: &Path) -> Result<(Vec3, Vec3, f64)> {
    let what = format!("group {}", m.name());
    let ds = opt_dataset(m, name).ok_or_else(|| obj_err(path, &what, format!("missing {name}")))?;
    let dwhat = format!("dataset {}", ds.name());
    let vector = vec3_attr(&ds, "vector", path)?.ok_or_else(|| obj_err(path, &dwhat, "missing `vector`"))?;
    if vector.norm() <= 0.0 {
        return Err(obj_err(path, &dwhat, "zero `vector`"));
    }
    let units = read_str_attr(&ds, "units", path)?;
    let offset_units = read_str_attr(&ds, "offset_units", path)?.or_else(|| units.clone());
    let offset = match vec3_attr(&ds, "offset", path)? {
        Some(o) => o * length_scale_mm(offset_units.as_deref()).map_err(|m| obj_err(path, &dwhat, m))?,
        None => Vec3::zeros(),
    };
    let size = read_f64(&ds, path)?.first().copied().unwrap_or(f64::NAN)
        * length_scale_mm(units.as_deref()).map_err(|m| obj_err(path, &dwhat, m))?;
    if !(size.is_finite() && size > 0.0) {
        return Err(obj_err(path, &dwhat, format!("pixel size {size} mm is not positive")));
    }
    let chain = chain_from(file, &ds, path)?;
    let axis = chain.r * (vector / vector.norm());
    let corner = chain.r * offset + chain.t;
    Ok((mcstas_to_imgcif(&axis), mcstas_to_imgcif(&corner), size))
}

fn scalar_of(g: &Group, name: &str, path: &Path) -> Result<Option<(f64, Option<String>)>> {
    match opt_dataset(g, name) {
        None => Ok(None),
        Some(ds) => {
            let v = read_f64(&ds, path)?;
            let u = read_str_attr(&ds, "units", path)?;
            Ok(v.first().map(|&x| (x, u)))
        }
    }
}

fn detector_dict(
    file: &File,
    det: &Group,
    groups: &[Group],
    modules: &[Module],
    path: &Path,
) -> Result<Value> {
    let material = read_str_dataset(det, "sensor_material", path)?.unwrap_or_default();
    let thickness = match scalar_of(det, "sensor_thickness", path)? {
        Some((t, u)) => {
            t * length_scale_mm(u.as_deref())
                .map_err(|m| obj_err(path, &format!("dataset {}/sensor_thickness", det.name()), m))?
        }
        None => 0.0,
    };
    let under = scalar_of(det, "underload_value", path)?.map(|x| x.0).unwrap_or(-(0x7FFF_FFFF as f64));
    let over = scalar_of(det, "saturation_value", path)?.map(|x| x.0).unwrap_or(0x7FFF_FFFF as f64);
    let mut panels = Vec::with_capacity(groups.len());
    for (g, m) in groups.iter().zip(modules) {
        let (fast, origin, px_f) = pixel_axis(file, g, "fast_pixel_direction", path)?;
        let (slow, _, px_s) = pixel_axis(file, g, "slow_pixel_direction", path)?;
        panels.push(json!({
            "name": g.name(),
            "type": "SENSOR_PAD",
            "fast_axis": [fast.x, fast.y, fast.z],
            "slow_axis": [slow.x, slow.y, slow.z],
            "origin": [origin.x, origin.y, origin.z],
            "raw_image_offset": [0, 0],
            "image_size": [m.n_fast, m.n_slow],
            "pixel_size": [px_f, px_s],
            "trusted_range": [under, over],
            "thickness": thickness,
            "material": material,
            "mu": 0.0,
            "identifier": "",
            "mask": [],
            "gain": 1.0,
            "pedestal": 0.0,
            "px_mm_strategy": {"type": "SimplePxMmStrategy"}
        }));
    }
    let children: Vec<Value> = (0..panels.len()).map(|i| json!({"panel": i})).collect();
    Ok(json!({
        "panels": panels,
        "hierarchy": {
            "name": "", "type": "",
            "fast_axis": [1.0, 0.0, 0.0], "slow_axis": [0.0, 1.0, 0.0], "origin": [0.0, 0.0, 0.0],
            "raw_image_offset": [0, 0], "image_size": [0, 0], "pixel_size": [0.0, 0.0],
            "trusted_range": [0.0, 0.0], "thickness": 0.0, "material": "", "mu": 0.0,
            "identifier": "", "mask": [], "gain": 1.0, "pedestal": 0.0,
            "px_mm_strategy": {"type": "SimplePxMmStrategy"},
            "children": children
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_to_angstrom() {
        assert_eq!(Units::parse(Some("nm")).unwrap().to_angstrom(&[0.1]), vec![1.0]);
        assert_eq!(Units::parse(Some("angstrom")).unwrap(), Units::Length(1.0));
        assert_eq!(Units::parse(None).unwrap(), Units::Length(1.0));
        let l = Units::parse(Some("keV")).unwrap().to_angstrom(&[EV_ANGSTROM / 1000.0]);
        assert!((l[0] - 1.0).abs() < 1e-12);
        assert!(Units::parse(Some("furlong")).is_err());
    }

    #[test]
    fn chain_composition_order() {
        // Inner: translate +x by 1; outer: rotate 90° about z. Lab point = R·(p + x̂).
        let inner = Rigid { r: Mat3::identity(), t: Vec3::x() };
        let outer = Rigid { r: axis_angle(&Vec3::z(), std::f64::consts::FRAC_PI_2), t: Vec3::zeros() };
        let c = outer.then_outer(&inner);
        assert!((c.t - Vec3::y()).norm() < 1e-12);
    }
}
