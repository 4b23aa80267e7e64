//! DIALS experiments in memory: one experiment is a beam, a detector, an
//! optional crystal and a reference to its image, as in a `.expt` file.
//!
//! Conventions:
//! * The models are the lab-frame types of [`crate::geometry`] and
//!   [`crate::crystal`]. What those types do not carry (beam probe, panel
//!   px→mm strategy, crystal covariance, ...) sits in the `*Meta` structs here.
//! * Goniometer, scan, profile and scaling model are kept as raw JSON: stills
//!   refinement does not use them, and a written file must still hold them.
//!   Inside raw JSON a non-finite number is one of the sentinel strings of
//!   [`crate::io::dials_expt`] (`NONFINITE_*`).
//! * Image paths are absolute: a relative path in a file was resolved against
//!   that file's folder when it was read.
//! * An experiment remembers where its models came from in the file it was
//!   read from ([`Provenance`]), so that writing it back keeps model sharing,
//!   key order and keys this crate does not model. Models built in memory
//!   have no provenance and are written the way dxtbx writes them.
//!
//! Reading and writing live in [`crate::io::dials_expt`]:
//!
//! ```no_run
//! use diffbragg::experiment::ExperimentList;
//! # fn main() -> diffbragg::error::Result<()> {
//! let mut list = ExperimentList::read_one("/data/refined.expt", 3)?; // only experiment 3
//! let e = &mut list.experiments[0];
//! let image = e.image_location()?; // (file, index in file)
//! e.detector.as_mut().unwrap().shift_z(0.2);
//! list.write("/data/out/refined_3.expt")?; // atomic; other keys kept
//! # let _ = image; Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::conventions::Vec3;
use crate::crystal::Crystal;
use crate::error::{Error, Result};
use crate::geometry::{Beam, Detector};

/// Monochromatic beam (`wavelength`) or polychromatic beam (`wavelength_range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BeamKind {
    #[default]
    Monochromatic,
    Polychromatic,
}

/// Beam fields that [`Beam`] does not carry.
#[derive(Clone, Debug, PartialEq)]
pub struct BeamMeta {
    pub kind: BeamKind,
    /// `"x-ray"`, `"electron"` or `"neutron"`.
    pub probe: String,
    /// mm.
    pub sample_to_source_distance: f64,
    /// `[λmin, λmax]`, Å, polychromatic beams only. [`Beam::wavelength`] then
    /// holds the middle of the range (dxtbx has no single wavelength for them).
    pub wavelength_range: Option<[f64; 2]>,
    /// Scan-varying s0 (Å⁻¹), empty for stills.
    pub s0_at_scan_points: Vec<Vec3>,
}

impl Default for BeamMeta {
    fn default() -> Self {
        BeamMeta {
            kind: BeamKind::Monochromatic,
            probe: "x-ray".into(),
            sample_to_source_distance: 0.0,
            wavelength_range: None,
            s0_at_scan_points: vec![],
        }
    }
}

/// dxtbx's pixel↔millimetre mapping of a panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PxMmStrategy {
    #[default]
    Simple,
    /// Active only when the panel has `mu > 0` and `thickness > 0`.
    ParallaxCorrected,
    /// Needs dx/dy maps from the imageset.
    Offset,
    OffsetParallaxCorrected,
}

impl PxMmStrategy {
    pub fn name(&self) -> &'static str {
        match self {
            PxMmStrategy::Simple => "SimplePxMmStrategy",
            PxMmStrategy::ParallaxCorrected => "ParallaxCorrectedPxMmStrategy",
            PxMmStrategy::Offset => "OffsetPxMmStrategy",
            PxMmStrategy::OffsetParallaxCorrected => "OffsetParallaxCorrectedPxMmStrategy",
        }
    }

    pub fn from_name(name: &str) -> Option<PxMmStrategy> {
        [
            PxMmStrategy::Simple,
            PxMmStrategy::ParallaxCorrected,
            PxMmStrategy::Offset,
            PxMmStrategy::OffsetParallaxCorrected,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// Image-viewer layout of a panel: 2×2 integer rotation (row-major) and a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Projection2d {
    pub rotation: [i32; 4],
    pub translation: [i32; 2],
}

/// Panel fields that [`crate::geometry::Panel`] does not carry.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PanelMeta {
    pub px_mm_strategy: PxMmStrategy,
    /// Old files put `mu`/`t0` inside a parallax strategy; they override the
    /// panel's `mu`/`thickness` (as in dxtbx) and are written back there.
    pub strategy_has_mu_t0: bool,
    pub projection_2d: Option<Projection2d>,
}

impl PanelMeta {
    /// Whether dxtbx would correct this panel for parallax.
    pub fn parallax_active(&self, panel: &crate::geometry::Panel) -> bool {
        matches!(self.px_mm_strategy, PxMmStrategy::ParallaxCorrected | PxMmStrategy::OffsetParallaxCorrected)
            && panel.mu > 0.0
            && panel.thickness > 0.0
    }
}

/// Per-panel extras of a detector (index = panel id).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DetectorMeta {
    pub panels: Vec<PanelMeta>,
}

impl DetectorMeta {
    /// The extras of panel `i` (defaults if the list is shorter).
    pub fn panel(&self, i: usize) -> PanelMeta {
        self.panels.get(i).cloned().unwrap_or_default()
    }
}

/// Crystal fields that [`Crystal`] does not carry.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct CrystalMeta {
    /// 9×9 covariance of the B matrix, row-major (81 values).
    pub b_covariance: Option<Vec<f64>>,
    pub recalculated_unit_cell: Option<[f64; 6]>,
    pub recalculated_cell_parameter_sd: Option<[f64; 6]>,
    pub recalculated_cell_volume_sd: Option<f64>,
    pub identified_isoform: Option<String>,
    /// Scan-varying A matrices (row-major), empty for stills.
    pub a_at_scan_points: Vec<[f64; 9]>,
}

/// The kind of a DIALS imageset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSetKind {
    /// Stills: one entry per image.
    ImageSet,
    /// Rotation scan (legacy name `ImageSweep`); images come from a template and the scan.
    ImageSequence,
    /// Grid scan: an image list plus `grid_size`.
    ImageGrid,
    /// In-memory only; has no files.
    MemImageSet,
}

impl ImageSetKind {
    pub fn name(&self) -> &'static str {
        match self {
            ImageSetKind::ImageSet => "ImageSet",
            ImageSetKind::ImageSequence => "ImageSequence",
            ImageSetKind::ImageGrid => "ImageGrid",
            ImageSetKind::MemImageSet => "MemImageSet",
        }
    }

    pub fn from_name(name: &str) -> Option<ImageSetKind> {
        match name {
            "ImageSet" => Some(ImageSetKind::ImageSet),
            "ImageSequence" | "ImageSweep" => Some(ImageSetKind::ImageSequence),
            "ImageGrid" => Some(ImageSetKind::ImageGrid),
            "MemImageSet" => Some(ImageSetKind::MemImageSet),
            _ => None,
        }
    }
}

/// Where an experiment's images live (a DIALS imageset entry).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSetRef {
    pub kind: ImageSetKind,
    /// Image files (ImageSet, ImageGrid), absolute.
    pub images: Vec<PathBuf>,
    /// `name_####.cbf` (`#` = zero-padded image number) or a multi-image file (ImageSequence).
    pub template: Option<PathBuf>,
    /// Index of each image inside its (multi-image) file.
    pub single_file_indices: Option<Vec<usize>>,
    /// `[nx, ny]` (ImageGrid).
    pub grid_size: Option<[usize; 2]>,
    /// External lookups (DIALS pickles); `None` for null or `""`.
    pub mask: Option<PathBuf>,
    pub gain: Option<PathBuf>,
    pub pedestal: Option<PathBuf>,
    pub dx: Option<PathBuf>,
    pub dy: Option<PathBuf>,
    /// Format-class keyword arguments.
    pub params: Map<String, Value>,
}

impl ImageSetRef {
    /// A stills imageset of one image.
    pub fn single_image(path: impl Into<PathBuf>, index_in_file: Option<usize>) -> ImageSetRef {
        ImageSetRef {
            kind: ImageSetKind::ImageSet,
            images: vec![path.into()],
            template: None,
            single_file_indices: index_in_file.map(|i| vec![i]),
            grid_size: None,
            mask: None,
            gain: None,
            pedestal: None,
            dx: None,
            dy: None,
            params: Map::new(),
        }
    }

    /// The one image this imageset gives an experiment. An experiment holds a
    /// single image (as diffBragg requires); sequences take the image number
    /// from the experiment's scan (`image_range`, which must be one image).
    pub fn location(&self, scan: Option<&Value>) -> std::result::Result<ImageLocation, String> {
        match self.kind {
            ImageSetKind::ImageSet | ImageSetKind::ImageGrid => {
                if self.images.len() != 1 {
                    return Err(format!(
                        "imageset holds {} images; an experiment needs exactly one",
                        self.images.len()
                    ));
                }
                let index = match &self.single_file_indices {
                    Some(ix) => *ix.first().ok_or("single_file_indices is empty")?,
                    None => 0,
                };
                Ok(ImageLocation { path: self.images[0].clone(), index })
            }
            ImageSetKind::ImageSequence => {
                let template = self.template.as_ref().ok_or("image sequence has no template")?;
                let number = single_image_number(scan)?;
                let t = template.to_str().ok_or("template is not UTF-8")?;
                if t.contains('#') {
                    Ok(ImageLocation { path: PathBuf::from(expand_template(t, number)), index: 0 })
                } else {
                    // A multi-image file: image numbers start at 1, indices at 0 (dxtbx).
                    if number < 1 {
                        return Err(format!("image number {number} < 1 for a multi-image file"));
                    }
                    Ok(ImageLocation { path: template.clone(), index: (number - 1) as usize })
                }
            }
            ImageSetKind::MemImageSet => Err("an in-memory imageset (MemImageSet) has no image files".into()),
        }
    }
}

/// The image number of a one-image scan.
fn single_image_number(scan: Option<&Value>) -> std::result::Result<i64, String> {
    let scan = scan.ok_or("image sequence without a scan: the image number is unknown")?;
    let range = scan
        .get("image_range")
        .and_then(|r| r.as_array())
        .filter(|r| r.len() == 2)
        .ok_or("scan has no image_range [first, last]")?;
    let first = range[0].as_i64().ok_or("scan image_range is not integer")?;
    let last = range[1].as_i64().ok_or("scan image_range is not integer")?;
    if first != last {
        return Err(format!("scan covers images {first}..={last}; an experiment needs exactly one"));
    }
    Ok(first)
}

/// Replace the run of `#` in a template by `number`, zero-padded to the run's
/// width (a single `#` means no padding), as dxtbx does.
pub fn expand_template(template: &str, number: i64) -> String {
    let count = template.matches('#').count();
    if count == 0 {
        return template.to_string();
    }
    let prefix = template.split('#').next().unwrap_or("");
    let suffix = template.rsplit('#').next().unwrap_or("");
    if count == 1 {
        format!("{prefix}{number}{suffix}")
    } else {
        format!("{prefix}{number:0count$}{suffix}")
    }
}

/// An image file and the index of the image inside it (0 for one-image files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLocation {
    pub path: PathBuf,
    pub index: usize,
}

/// Where a model came from: its index in its pool and its original JSON.
#[derive(Clone)]
pub(crate) struct ModelOrigin {
    pub index: usize,
    pub raw: Arc<Value>,
}

/// How the file an experiment was read from stored it (see the module docs).
#[derive(Clone, Default)]
pub struct Provenance {
    pub(crate) file: Option<Arc<PathBuf>>,
    /// Index of the experiment in that file.
    pub(crate) index: usize,
    /// The experiment object itself.
    pub(crate) raw: Option<Arc<Value>>,
    pub(crate) beam: Option<ModelOrigin>,
    pub(crate) detector: Option<ModelOrigin>,
    pub(crate) crystal: Option<ModelOrigin>,
    pub(crate) imageset: Option<ModelOrigin>,
    pub(crate) goniometer: Option<ModelOrigin>,
    pub(crate) scan: Option<ModelOrigin>,
    pub(crate) profile: Option<ModelOrigin>,
    pub(crate) scaling_model: Option<ModelOrigin>,
}

impl Provenance {
    /// The file the experiment was read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref().map(|p| p.as_path())
    }

    /// The experiment's index in that file.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl fmt::Debug for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idx = |o: &Option<ModelOrigin>| o.as_ref().map(|o| o.index);
        f.debug_struct("Provenance")
            .field("file", &self.file)
            .field("index", &self.index)
            .field("beam", &idx(&self.beam))
            .field("detector", &idx(&self.detector))
            .field("crystal", &idx(&self.crystal))
            .field("imageset", &idx(&self.imageset))
            .finish_non_exhaustive()
    }
}

/// One experiment: the models of one shot (one crystal lattice on one image).
#[derive(Clone, Debug)]
pub struct Experiment {
    /// Stable key matching the reflection table's identifiers (`""` in old files).
    pub identifier: String,
    pub beam: Option<Beam>,
    pub beam_meta: BeamMeta,
    pub detector: Option<Detector>,
    pub detector_meta: DetectorMeta,
    pub crystal: Option<Crystal>,
    pub crystal_meta: CrystalMeta,
    pub imageset: Option<ImageSetRef>,
    pub goniometer: Option<Value>,
    pub scan: Option<Value>,
    pub profile: Option<Value>,
    pub scaling_model: Option<Value>,
    pub provenance: Provenance,
}

impl Experiment {
    /// An experiment built in memory from a beam and a detector.
    pub fn new(identifier: impl Into<String>, beam: Beam, detector: Detector) -> Experiment {
        let n = detector.panels.len();
        Experiment {
            identifier: identifier.into(),
            beam: Some(beam),
            beam_meta: BeamMeta::default(),
            detector: Some(detector),
            detector_meta: DetectorMeta { panels: vec![PanelMeta::default(); n] },
            crystal: None,
            crystal_meta: CrystalMeta::default(),
            imageset: None,
            goniometer: None,
            scan: None,
            profile: None,
            scaling_model: None,
            provenance: Provenance::default(),
        }
    }

    /// An error about this experiment that names its file and index when known.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        match self.provenance.file() {
            Some(f) => Error::record(f, format!("experiment[{}]", self.provenance.index), msg),
            None => Error::msg(format!("experiment `{}`: {}", self.identifier, msg.into())),
        }
    }

    /// The beam, or an error if the experiment has none.
    pub fn beam(&self) -> Result<&Beam> {
        self.beam.as_ref().ok_or_else(|| self.error("has no beam model"))
    }

    /// The detector, or an error if the experiment has none.
    pub fn detector(&self) -> Result<&Detector> {
        self.detector.as_ref().ok_or_else(|| self.error("has no detector model"))
    }

    /// The crystal, or an error if the experiment has none (not indexed).
    pub fn crystal(&self) -> Result<&Crystal> {
        self.crystal.as_ref().ok_or_else(|| self.error("has no crystal model"))
    }

    /// The file and in-file index of this experiment's image.
    pub fn image_location(&self) -> Result<ImageLocation> {
        let iset = self.imageset.as_ref().ok_or_else(|| self.error("has no imageset"))?;
        iset.location(self.scan.as_ref()).map_err(|m| self.error(format!("imageset: {m}")))
    }
}

/// A list of experiments (a `.expt` file).
#[derive(Clone, Debug, Default)]
pub struct ExperimentList {
    pub experiments: Vec<Experiment>,
    /// The file's top-level object (pools and experiments replaced by null):
    /// keeps unknown top-level keys (e.g. `history`) and key order.
    pub(crate) top: Option<Map<String, Value>>,
    pub(crate) path: Option<PathBuf>,
}

impl ExperimentList {
    pub fn new(experiments: Vec<Experiment>) -> ExperimentList {
        ExperimentList { experiments, top: None, path: None }
    }

    /// The file this list was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn len(&self) -> usize {
        self.experiments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.experiments.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Experiment> {
        self.experiments.iter()
    }

    /// Experiment `i`, or an error naming the file.
    pub fn get(&self, i: usize) -> Result<&Experiment> {
        self.experiments.get(i).ok_or_else(|| {
            let msg = format!("experiment index {i} out of range ({} experiments)", self.experiments.len());
            match &self.path {
                Some(p) => Error::file(p, msg),
                None => Error::msg(msg),
            }
        })
    }

    /// The image file and in-file index of experiment `i`'s image.
    pub fn image_location(&self, i: usize) -> Result<ImageLocation> {
        self.get(i)?.image_location()
    }

    /// Unknown top-level keys of the file (e.g. `history`), in file order.
    pub fn extra(&self) -> Vec<(&str, &Value)> {
        match &self.top {
            Some(t) => t
                .iter()
                .filter(|(k, _)| !crate::io::dials_expt::is_structural_key(k))
                .map(|(k, v)| (k.as_str(), v))
                .collect(),
            None => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_expansion_matches_dxtbx_rules() {
        assert_eq!(expand_template("/d/merlin0047_#####.cbf", 17000), "/d/merlin0047_17000.cbf");
        assert_eq!(expand_template("/d/x_####.cbf", 7), "/d/x_0007.cbf");
        assert_eq!(expand_template("/d/x_#.cbf", 123), "/d/x_123.cbf");
        assert_eq!(expand_template("/d/x.h5", 3), "/d/x.h5");
    }

    #[test]
    fn sequence_location_uses_scan() {
        let iset = ImageSetRef {
            kind: ImageSetKind::ImageSequence,
            template: Some("/d/img_###.cbf".into()),
            ..ImageSetRef::single_image("unused", None)
        };
        let scan = json!({"image_range": [12, 12]});
        let loc = iset.location(Some(&scan)).unwrap();
        assert_eq!(loc, ImageLocation { path: "/d/img_012.cbf".into(), index: 0 });
        assert!(iset.location(None).is_err());
        assert!(iset.location(Some(&json!({"image_range": [1, 3]}))).is_err());
        let master = ImageSetRef { template: Some("/d/master.h5".into()), ..iset };
        let loc = master.location(Some(&json!({"image_range": [5, 5]}))).unwrap();
        assert_eq!(loc, ImageLocation { path: "/d/master.h5".into(), index: 4 });
        assert!(master.location(Some(&json!({"image_range": [0, 0]}))).is_err());
    }

    #[test]
    fn still_location_and_missing_models() {
        let iset = ImageSetRef::single_image("/d/run.h5", Some(22));
        assert_eq!(iset.location(None).unwrap(), ImageLocation { path: "/d/run.h5".into(), index: 22 });
        let mut two = iset.clone();
        two.images.push("/d/other.h5".into());
        assert!(two.location(None).is_err());
        let mut e = Experiment::new("abc", Beam::default(), Detector::default());
        e.beam = None;
        let msg = e.beam().unwrap_err().to_string();
        assert!(msg.contains("abc") && msg.contains("no beam"), "{msg}");
        assert!(e.crystal().is_err());
        assert!(e.image_location().is_err());
        e.imageset = Some(iset);
        assert_eq!(e.image_location().unwrap().index, 22);
    }

    #[test]
    fn strategy_names_roundtrip() {
        for s in [
            PxMmStrategy::Simple,
            PxMmStrategy::ParallaxCorrected,
            PxMmStrategy::Offset,
            PxMmStrategy::OffsetParallaxCorrected,
        ] {
            assert_eq!(PxMmStrategy::from_name(s.name()), Some(s));
        }
        assert_eq!(PxMmStrategy::from_name("Bogus"), None);
        assert_eq!(ImageSetKind::from_name("ImageSweep"), Some(ImageSetKind::ImageSequence));
    }
}
