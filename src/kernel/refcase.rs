//! Loader for the nanoBragg reference cases in `shared/reference/` (the
//! acceptance test of the kernel), used by `tests/kernel_reference.rs` and by
//! `diffbragg bench kernel --reference`.
//!
//! TEMPORARY minimal reader: it understands only those files' flat, single-level
//! detector hierarchy with an identity root, and a single beam/detector/crystal.
//! The lead switches it to `io::dials_expt` (and the `.lam` reader) once merged.

// `!(x > 0.0)` is deliberate: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::fhkl::FhklTable;
use super::model::LatticeShape;
use super::mosaic::parse_umats;
use super::pixels::Pixel;
use super::shot::{CrystalModel, MosaicSpec, ShotModel, Source};
use crate::conventions::{vec3, Vec3};
use crate::crystal::Crystal;
use crate::error::{io_err, Error, Result};
use crate::geometry::{Beam, Detector, Panel};
use crate::io::hkl_text::read_hkl_text;
use crate::ucell::{LatticeSystem, UcellParams};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The names of the cases.
pub const CASES: [&str; 6] =
    ["shot_00", "shot_00_square", "shot_00_round", "shot_00_tophat", "shot_06", "quad_00"];

/// One reference case: the model, the structure factors and the image.
pub struct RefCase {
    pub name: String,
    pub model: ShotModel,
    pub fhkl: FhklTable,
    /// The image (photons), panel after panel, slow-major.
    pub image: Vec<f32>,
    /// Rendered ROI `[fast_min, fast_max, slow_min, slow_max]`, inclusive (pixels outside are 0).
    pub roi: Option<[usize; 4]>,
}

impl RefCase {
    /// Index of a pixel in [`Self::image`].
    pub fn image_index(&self, p: &Pixel) -> usize {
        let pan = &self.model.detector.panels;
        let before: usize = pan[..p.panel as usize].iter().map(|q| q.n_pixels()).sum();
        before + p.slow as usize * pan[p.panel as usize].image_size[0] + p.fast as usize
    }

    /// Every pixel that the reference rendered (the ROI, or the whole detector).
    pub fn rendered_pixels(&self) -> Vec<Pixel> {
        let mut v = super::pixels::full_detector_pixels(&self.model.detector);
        if let Some([f0, f1, s0, s1]) = self.roi {
            v.retain(|p| (f0..=f1).contains(&(p.fast as usize)) && (s0..=s1).contains(&(p.slow as usize)));
        }
        v
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
    let ref_max = case.image.iter().fold(0.0f64, |a, &x| a.max(x as f64));
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

/// Load case `name` from the reference folder `dir`.
pub fn load(dir: &Path, name: &str) -> Result<RefCase> {
    let file = |s: &str| dir.join(format!("{name}{s}"));
    let params_path = file("_params.json");
    let params = read_json(&params_path)?;
    let expt_path = file(".expt");
    let expt = read_json(&expt_path)?;

    let (detector, beam, crystal) = parse_expt(&expt, &expt_path)?;
    let sources = read_lam(&file(".lam"))?;

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
    let umats_name =
        get("mosaic_umats")?.as_str().ok_or_else(|| Error::file(&params_path, "`mosaic_umats`"))?;
    let umats_path = dir.join(umats_name);
    let umats =
        parse_umats(&std::fs::read_to_string(&umats_path).map_err(|e| io_err(&umats_path, e))?, &umats_path)?;
    let kahn = num("kahn_factor")?;
    if (kahn - beam.kahn_factor()).abs() > 1e-12 {
        return Err(Error::file(
            &params_path,
            format!("kahn_factor {kahn} disagrees with the beam's {}", beam.kahn_factor()),
        ));
    }
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

    let cell = crystal.unit_cell();
    let ucell = UcellParams::from_cell(LatticeSystem::Triclinic, &cell)?;
    let mut cm = CrystalModel::new(crystal.u_matrix(), ucell, [n3[0], n3[1], n3[2]]);
    cm.shape = shape;
    cm.mosaic = MosaicSpec::Explicit(umats);
    let mut model = ShotModel::new(detector, beam, sources, cm, num("fluence_photons_per_m2")?);
    model.oversample = num("oversample")? as usize;

    let hkl = read_hkl_text(dir.join("lyso_P1.hkl.gz"))?;
    let fhkl = FhklTable::new(&hkl.hkl, &hkl.f, num("default_F")?, false)?;

    let img_path = dir.join(get("image")?.as_str().unwrap_or(""));
    let bytes = std::fs::read(&img_path).map_err(|e| io_err(&img_path, e))?;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut raw)
        .map_err(|e| Error::file(&img_path, e.to_string()))?;
    let n = model.detector.n_pixels();
    if raw.len() != 4 * n {
        return Err(Error::file(
            &img_path,
            format!("{} bytes, expected {} float32 for {n} pixels", raw.len(), 4 * n),
        ));
    }
    let image = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(RefCase { name: name.to_string(), model, fhkl, image, roi })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("JSON: {e}")))
}

fn v3(v: &Value, key: &str, path: &Path) -> Result<Vec3> {
    let a: Vec<f64> = v
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if a.len() != 3 {
        return Err(Error::file(path, format!("`{key}` must be 3 numbers")));
    }
    Ok(vec3(&a))
}

fn pair<T: Copy>(v: &Value, key: &str, path: &Path, f: impl Fn(&Value) -> Option<T>) -> Result<[T; 2]> {
    let a: Vec<T> =
        v.get(key).and_then(Value::as_array).map(|a| a.iter().filter_map(&f).collect()).unwrap_or_default();
    if a.len() != 2 {
        return Err(Error::file(path, format!("`{key}` must be 2 numbers")));
    }
    Ok([a[0], a[1]])
}

fn parse_expt(v: &Value, path: &Path) -> Result<(Detector, Beam, Crystal)> {
    let first = |k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .ok_or_else(|| Error::file(path, format!("no `{k}`")))
    };
    let b = first("beam")?;
    let num = |o: &Value, k: &str| {
        o.get(k).and_then(Value::as_f64).ok_or_else(|| Error::file(path, format!("`{k}`")))
    };
    let beam = Beam {
        direction: v3(b, "direction", path)?,
        wavelength: num(b, "wavelength")?,
        polarization_normal: v3(b, "polarization_normal", path)?,
        polarization_fraction: num(b, "polarization_fraction")?,
        ..Default::default()
    };
    let d = first("detector")?;
    if let Some(h) = d.get("hierarchy") {
        let id = v3(h, "fast_axis", path)? == Vec3::x()
            && v3(h, "slow_axis", path)? == Vec3::y()
            && v3(h, "origin", path)? == Vec3::zeros();
        let flat = h
            .get("children")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().all(|x| x.get("panel").is_some()));
        if !(id && flat) {
            return Err(Error::file(
                path,
                "only a flat hierarchy with an identity root is supported by this loader",
            ));
        }
    }
    let mut panels = Vec::new();
    for p in d.get("panels").and_then(Value::as_array).ok_or_else(|| Error::file(path, "no panels"))? {
        panels.push(Panel {
            name: p.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
            origin: v3(p, "origin", path)?,
            fast: v3(p, "fast_axis", path)?,
            slow: v3(p, "slow_axis", path)?,
            pixel_size: pair(p, "pixel_size", path, Value::as_f64)?,
            image_size: pair(p, "image_size", path, |x| x.as_u64().map(|x| x as usize))?,
            thickness: num(p, "thickness")?,
            mu: num(p, "mu")?,
            ..Default::default()
        });
    }
    let c = first("crystal")?;
    let crystal = Crystal::from_vectors(
        v3(c, "real_space_a", path)?,
        v3(c, "real_space_b", path)?,
        v3(c, "real_space_c", path)?,
        c.get("space_group_hall_symbol").and_then(Value::as_str).unwrap_or(""),
    );
    if !(crystal.real.determinant().abs() > 0.0) {
        return Err(Error::file(path, "degenerate crystal"));
    }
    Ok((Detector { panels, hierarchy: None }, beam, crystal))
}

/// `.lam`: a header line, then `wavelength_Å,weight` rows (channel 0).
pub fn read_lam(path: &Path) -> Result<Vec<Source>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let f: Vec<&str> = t.split(',').collect();
        let parse = |s: &str| s.trim().parse::<f64>().ok();
        match (f.len(), f.first().and_then(|s| parse(s)), f.get(1).and_then(|s| parse(s))) {
            (2, Some(wavelength), Some(weight)) => out.push(Source { wavelength, weight, channel: 0 }),
            _ => return Err(Error::record(path, format!("line {}", i + 1), "expected `wavelength,weight`")),
        }
    }
    if out.is_empty() {
        return Err(Error::file(path, "no channels"));
    }
    Ok(out)
}

/// The reference folder inside the shared data.
pub fn reference_dir(shared: &Path) -> PathBuf {
    shared.join("reference")
}
