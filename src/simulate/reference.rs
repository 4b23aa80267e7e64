//! The nanoBragg reference cases of `shared/reference` (the acceptance test of
//! the kernel and of `diffbragg simulate`; see that folder's README).
//!
//! A case's `CASE_params.json` becomes a [`SimulateConfig`] over the case's
//! own files (`.expt`, `.lam`, `_umats.txt`, `lyso_P1.hkl.gz`), so the model is
//! built exactly as the command line builds it, through the real readers. The
//! config uses nanoBragg's sub-pixel convention
//! ([`SubpixelFactors::FirstSubpixel`]), with which the images were made.
//! The image is gzip'd little-endian float32, panel after panel, slow-major.

// `!(x > 0.0)` is deliberate: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{
    load_inputs, Fluence, Mosaic, RoiSpec, ShotInputs, SimulateConfig, SpectrumSource, StructureFactors,
};
use crate::error::{io_err, Error, Result};
use crate::kernel::{LatticeShape, Pixel, SubpixelFactors};

/// The names of the cases.
pub const CASES: [&str; 6] =
    ["shot_00", "shot_00_square", "shot_00_round", "shot_00_tophat", "shot_06", "quad_00"];

/// The structure factors every case uses.
pub const HKL_FILE: &str = "lyso_P1.hkl.gz";

/// One reference case: its configuration, the loaded shot and the image.
pub struct RefCase {
    pub name: String,
    pub config: SimulateConfig,
    /// The model, F table and the rendered pixels (the ROI, or every pixel).
    pub inputs: ShotInputs,
    /// The image (photons), panel after panel, slow-major.
    pub image: Vec<f32>,
    /// Rendered ROI `[fast_min, fast_max, slow_min, slow_max]`, inclusive (pixels outside are 0).
    pub roi: Option<[usize; 4]>,
}

impl RefCase {
    /// Index of a pixel in [`Self::image`].
    pub fn image_index(&self, p: &Pixel) -> usize {
        let pan = &self.inputs.model.detector.panels;
        let before: usize = pan[..p.panel as usize].iter().map(|q| q.n_pixels()).sum();
        before + p.slow as usize * pan[p.panel as usize].image_size[0] + p.fast as usize
    }

    /// Every pixel that the reference rendered (the ROI, or the whole detector).
    pub fn rendered_pixels(&self) -> &[Pixel] {
        &self.inputs.pixels
    }

    /// Largest reference value.
    pub fn image_max(&self) -> f64 {
        self.image.iter().fold(0.0f64, |a, &x| a.max(x as f64))
    }
}

/// Agreement of simulated values with the reference image over a pixel set.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Largest |ours − ref|/ref over pixels whose reference is > `threshold·max`.
    pub max_rel: f64,
    pub n_compared: usize,
    pub sum_ours: f64,
    pub sum_ref: f64,
    pub ref_max: f64,
}

/// Compare `values` (for `pixels`) with the reference image.
pub fn compare(case: &RefCase, pixels: &[Pixel], values: &[f64], threshold: f64) -> Comparison {
    let ref_max = case.image_max();
    let mut c = Comparison { max_rel: 0.0, n_compared: 0, sum_ours: 0.0, sum_ref: 0.0, ref_max };
    for (p, &v) in pixels.iter().zip(values) {
        let r = case.image[case.image_index(p)] as f64;
        c.sum_ours += v;
        c.sum_ref += r;
        if r > threshold * ref_max {
            c.max_rel = c.max_rel.max(((v - r) / r).abs());
            c.n_compared += 1;
        }
    }
    c
}

/// The reference folder inside the shared data.
pub fn reference_dir(shared: &Path) -> PathBuf {
    shared.join("reference")
}

/// The configuration of case `name` in folder `dir` (output: `out`), and its ROI.
pub fn case_config(dir: &Path, name: &str, out: &Path) -> Result<(SimulateConfig, Option<[usize; 4]>)> {
    let params_path = dir.join(format!("{name}_params.json"));
    let params = read_json(&params_path)?;
    let get = |k: &str| params.get(k).ok_or_else(|| Error::file(&params_path, format!("missing `{k}`")));
    let num =
        |k: &str| get(k)?.as_f64().ok_or_else(|| Error::file(&params_path, format!("`{k}` is not a number")));
    let n3: Vec<f64> = get("Ncells_abc")?
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if n3.len() != 3 {
        return Err(Error::file(&params_path, "`Ncells_abc` needs 3 numbers"));
    }
    let shape_name = get("lattice_shape")?.as_str().unwrap_or("");
    let shape = LatticeShape::from_name(shape_name)
        .ok_or_else(|| Error::file(&params_path, format!("unknown lattice_shape `{shape_name}`")))?;
    let umats = get("mosaic_umats")?.as_str().ok_or_else(|| Error::file(&params_path, "`mosaic_umats`"))?;
    let r_e2 = num("r_e_sqr_m2")?;
    if (r_e2 - crate::conventions::R_E_SQR_M2).abs() > 1e-40 {
        return Err(Error::file(&params_path, "r_e_sqr_m2 differs from the constant the kernel uses"));
    }
    let roi = match get("roi_fast_slow_inclusive")? {
        Value::Null => None,
        v => {
            let a: Vec<usize> = v
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect())
                .unwrap_or_default();
            if a.len() != 4 {
                return Err(Error::file(&params_path, "`roi_fast_slow_inclusive` needs 4 integers"));
            }
            Some([a[0], a[1], a[2], a[3]])
        }
    };
    let oversample = num("oversample")?;
    if !(oversample >= 1.0 && oversample.fract() == 0.0) {
        return Err(Error::file(&params_path, format!("oversample {oversample} is not a positive integer")));
    }
    let mut cfg = SimulateConfig::new(dir.join(format!("{name}.expt")), [n3[0], n3[1], n3[2]], out);
    cfg.spectrum = SpectrumSource::Lam(dir.join(format!("{name}.lam")));
    cfg.structure_factors = StructureFactors::HklText(dir.join(HKL_FILE));
    cfg.default_f = num("default_F")?;
    cfg.shape = shape;
    cfg.mosaic = Mosaic::Umats(dir.join(umats));
    cfg.fluence = Fluence::PerArea(num("fluence_photons_per_m2")?);
    cfg.oversample = oversample as usize;
    cfg.subpixel_factors = SubpixelFactors::FirstSubpixel;
    cfg.roi = match roi {
        Some([f0, f1, s0, s1]) => RoiSpec::Box { f0, f1, s0, s1, panel: None },
        None => RoiSpec::Full,
    };
    Ok((cfg, roi))
}

/// Load case `name` from the reference folder `dir`.
pub fn load(dir: &Path, name: &str) -> Result<RefCase> {
    let (config, roi) = case_config(dir, name, &std::env::temp_dir().join(format!("{name}.h5")))?;
    let inputs = load_inputs(&config)?;
    let params_path = dir.join(format!("{name}_params.json"));
    let params = read_json(&params_path)?;
    let kahn = params.get("kahn_factor").and_then(Value::as_f64).unwrap_or(f64::NAN);
    if (kahn - inputs.model.beam.kahn_factor()).abs() > 1e-12 {
        return Err(Error::file(
            &params_path,
            format!("kahn_factor {kahn} disagrees with the beam's {}", inputs.model.beam.kahn_factor()),
        ));
    }
    let img_name = params.get("image").and_then(Value::as_str).unwrap_or("");
    let image = read_f32_gz(&dir.join(img_name), inputs.model.detector.n_pixels())?;
    Ok(RefCase { name: name.to_string(), config, inputs, image, roi })
}

/// A gzip'd raw little-endian float32 image of `n` values.
pub fn read_f32_gz(path: &Path, n: usize) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut raw)
        .map_err(|e| Error::file(path, e.to_string()))?;
    if raw.len() != 4 * n {
        return Err(Error::file(
            path,
            format!("{} bytes, expected {} float32 for {n} pixels", raw.len(), 4 * n),
        ));
    }
    Ok(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("JSON: {e}")))
}
