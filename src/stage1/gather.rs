//! One shot's pixels: regions of interest, masks, background and data in
//! photons, flattened in diffBragg's order (ROIs in reflection order; inside
//! each, slow outer, fast inner) (fwd-model §4.2).
//!
//! Two sources:
//! * [`gather_from_image`] (`GatherFromExperiment`): square ROIs of
//!   `roi.shoebox_size` around the `xyzobs.px.value` (or `xyzcal.px`)
//!   centroid, background fitted per ROI ([`super::background`]).
//! * [`gather_from_shoeboxes`] (`refiner.load_data_from_refl=True`,
//!   `GatherFromReflectionTable`): the ROI is each shoebox's bounding box, data
//!   and background are its arrays, trust comes from its mask (`Valid` bit:
//!   diffBragg's default `refldata_trusted=allValid`).
//!
//! Decisions (the reference's \[TRAP\]s of fwd-model §4.2 and §7):
//! * ROI box: with `x = xobs − ½`, `[floor(x − s/2), floor(x + s/2))` clipped to
//!   `[0, n]`. The reference clips the upper end at `n − 1`, so the last row and
//!   column of a panel can never be modelled; we clip at `n`. "On edge" keeps the
//!   reference's test (a side shorter than `s − 1`).
//! * Overlaps (`allow_overlapping_spots=False`): an ROI overlapping an
//!   **accepted** ROI shrinks by one pixel per pass, alternately at its low and
//!   high corner (the reference's parity rule). The reference also lets rejected
//!   ROIs block their neighbours; we do not. With overlaps allowed, each
//!   pixel's likelihood is divided by the number of ROIs that contain it.
//! * Hot-pixel mask: true = good (see [`super::mask`]); an ROI with more than 4
//!   pixels bad in that mask is always rejected, with any if
//!   `reject_roi_with_hotpix`. Other untrusted pixels (trusted range, the
//!   panel's masked rectangles) are only left out of the target.
//! * Trusted pixels: good in the hot-pixel mask, outside the panel's untrusted
//!   rectangles, strictly inside the trusted range when
//!   `mask_outside_trusted_range` (raw ADU, exclusive bounds as diffBragg),
//!   `data + σ_r² ≥ 0` and `background ≥ 0`.
//! * `refiner.res_ranges`: d from the Miller index and the input crystal (else
//!   from `rlp`); rows with neither are kept.

use std::collections::BTreeMap;

use super::background::{fit_plane, label_background, median};
use super::mask::PixelMask;
use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::image::Image;
use crate::kernel::{BackgroundPlane, Pixel, Roi};
use crate::reflections::ReflectionTable;

/// The `roi`/`refiner` settings that shape the data.
#[derive(Clone, Debug, PartialEq)]
pub struct GatherOptions {
    pub shoebox_size: usize,
    /// Centre ROIs on `xyzcal.px` instead of `xyzobs.px.value`.
    pub centroid_cal: bool,
    pub reject_edge: bool,
    pub reject_hotpix: bool,
    pub pad: Option<usize>,
    pub fit_tilt: bool,
    pub tilt_weights: bool,
    pub bg_threshold: f64,
    pub only_high: bool,
    pub allow_overlaps: bool,
    pub skip_negative_bg: bool,
    pub mask_outside_trusted: bool,
    /// Readout noise, ADU.
    pub sigma_r: f64,
    pub adu_per_photon: f64,
    /// Keep only reflections with d (Å) in one of these `[dmin, dmax)` ranges.
    pub res_ranges: Option<Vec<[f64; 2]>>,
}

impl Default for GatherOptions {
    fn default() -> Self {
        GatherOptions {
            shoebox_size: 10,
            centroid_cal: false,
            reject_edge: true,
            reject_hotpix: true,
            pad: None,
            fit_tilt: false,
            tilt_weights: false,
            bg_threshold: 3.5,
            only_high: true,
            allow_overlaps: false,
            skip_negative_bg: true,
            mask_outside_trusted: false,
            sigma_r: 3.0,
            adu_per_photon: 1.0,
            res_ranges: None,
        }
    }
}

impl GatherOptions {
    /// The options a diffBragg parameter set gives (stage 1 and the stage-2
    /// pre-import read the same `roi`/`refiner` parameters).
    pub fn from_params(c: &crate::config::DiffBraggParams) -> GatherOptions {
        GatherOptions {
            shoebox_size: c.roi.shoebox_size,
            centroid_cal: c.roi.centroid == crate::config::diffbragg::RoiCentroid::Cal,
            reject_edge: c.roi.reject_edge_reflections,
            reject_hotpix: c.roi.reject_roi_with_hotpix,
            pad: c.roi.pad_shoebox_for_background_estimation,
            fit_tilt: c.roi.fit_tilt,
            tilt_weights: c.roi.fit_tilt_using_weights,
            bg_threshold: c.roi.background_threshold,
            only_high: c.roi.only_filter_zingers_above_mean,
            allow_overlaps: c.roi.allow_overlapping_spots,
            skip_negative_bg: c.roi.skip_roi_with_negative_bg,
            mask_outside_trusted: c.roi.mask_outside_trusted_range,
            sigma_r: c.refiner.sigma_r,
            adu_per_photon: c.refiner.adu_per_photon,
            res_ranges: c.refiner.res_ranges.as_ref().map(|r| r.0.clone()),
        }
    }
}

/// The gathered data of one shot (only accepted ROIs).
#[derive(Clone, Debug, Default)]
pub struct ShotData {
    pub rois: Vec<Roi>,
    /// Reflection row (within the shot's table) of each ROI.
    pub roi_refl: Vec<usize>,
    pub planes: Vec<BackgroundPlane>,
    /// Starting per-ROI scale (the refl `scale_factor`, else 1).
    pub roi_scale_init: Vec<f64>,
    pub pixels: Vec<Pixel>,
    pub roi_of: Vec<u32>,
    /// Data, photons.
    pub data: Vec<f64>,
    /// Background, photons.
    pub background: Vec<f64>,
    pub trusted: Vec<bool>,
    /// Overlap multiplicity (only with overlapping ROIs allowed).
    pub freq: Option<Vec<f64>>,
    /// Readout variance, photons².
    pub sigma_r2: f64,
    /// Rejected reflections by reason.
    pub rejected: BTreeMap<&'static str, usize>,
}

impl ShotData {
    pub fn n_trusted(&self) -> usize {
        self.trusted.iter().filter(|&&t| t).count()
    }
}

/// ROI box around a centroid (see the module doc). Returns `(x0, x1, y0, y1, on_edge)`.
pub fn roi_box(
    centroid: [f64; 2],
    size: usize,
    n_fast: usize,
    n_slow: usize,
) -> (usize, usize, usize, usize, bool) {
    let s = size as f64;
    let lo = |c: f64| ((c - 0.5 - s / 2.0).max(0.0)).floor();
    let hi = |c: f64, n: usize| ((c - 0.5 + s / 2.0).min(n as f64)).max(0.0).floor();
    let (x0, x1) = (lo(centroid[0]), hi(centroid[0], n_fast));
    let (y0, y1) = (lo(centroid[1]), hi(centroid[1], n_slow));
    let x0 = (x0 as usize).min(n_fast);
    let y0 = (y0 as usize).min(n_slow);
    let x1 = (x1 as usize).max(x0);
    let y1 = (y1 as usize).max(y0);
    let on_edge = (x1 - x0) + 1 < size || (y1 - y0) + 1 < size;
    (x0, x1, y0, y1, on_edge)
}

fn bump(rej: &mut BTreeMap<&'static str, usize>, why: &'static str) {
    *rej.entry(why).or_insert(0) += 1;
}

/// Resolution (Å) of reflection row `i`, if it can be known.
fn resolution(refls: &ReflectionTable, i: usize, expt: &Experiment) -> Option<f64> {
    if let (Ok(h), Ok(c)) = (refls.get_miller("miller_index"), expt.crystal()) {
        let q = c.a_matrix() * crate::conventions::Vec3::new(h[i][0] as f64, h[i][1] as f64, h[i][2] as f64);
        if q.norm() > 0.0 {
            return Some(1.0 / q.norm());
        }
    }
    let r = refls.get_vec3("rlp").ok()?[i];
    let n = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
    (n > 0.0).then(|| 1.0 / n)
}

fn keep_resolution(o: &GatherOptions, refls: &ReflectionTable, i: usize, expt: &Experiment) -> bool {
    match (&o.res_ranges, resolution(refls, i, expt)) {
        (Some(r), Some(d)) => r.iter().any(|[lo, hi]| d >= *lo && d < *hi),
        _ => true,
    }
}

/// Per-pixel trust of every panel from the image and the masks, and (second)
/// the hot-pixel mask alone, which is what the ROI rejection rule counts.
fn panel_trust(
    expt: &Experiment,
    image: &Image,
    mask: Option<&PixelMask>,
    o: &GatherOptions,
) -> Result<(Vec<Vec<bool>>, Vec<Vec<bool>>)> {
    let det = expt.detector()?;
    let mut out = Vec::with_capacity(det.panels.len());
    let mut hot = Vec::with_capacity(det.panels.len());
    for (pi, p) in det.panels.iter().enumerate() {
        let (nf, ns) = (p.image_size[0], p.image_size[1]);
        let raw = image.panel(pi).data();
        let mut t = vec![true; nf * ns];
        for (k, tk) in t.iter_mut().enumerate() {
            let v = raw[k];
            if !v.is_finite() {
                *tk = false;
                continue;
            }
            if o.mask_outside_trusted && !(v > p.trusted_range[0] && v < p.trusted_range[1]) {
                *tk = false;
            }
            if let Some(m) = mask {
                if !m.panels[pi][k] {
                    *tk = false;
                }
            }
        }
        for r in &p.mask {
            let [f0, s0, f1, s1] = *r;
            for s in s0.max(0) as usize..(s1.max(0) as usize).min(ns) {
                for f in f0.max(0) as usize..(f1.max(0) as usize).min(nf) {
                    t[s * nf + f] = false;
                }
            }
        }
        out.push(t);
        hot.push(mask.map_or_else(|| vec![true; nf * ns], |m| m.panels[pi].clone()));
    }
    Ok((out, hot))
}

/// ROIs, background and data from the shot's image (`image` in raw file units).
pub fn gather_from_image(
    expt: &Experiment,
    refls: &ReflectionTable,
    image: &Image,
    mask: Option<&PixelMask>,
    o: &GatherOptions,
) -> Result<ShotData> {
    let det = expt.detector()?;
    image.check_detector(det).map_err(|m| expt.error(format!("image does not match the detector: {m}")))?;
    if !(o.adu_per_photon > 0.0) {
        return Err(Error::param("refiner.adu_per_photon", "must be > 0"));
    }
    let col = if o.centroid_cal { "xyzcal.px" } else { "xyzobs.px.value" };
    let cen = refls.get_vec3(col).map_err(|e| Error::msg(format!("roi.centroid needs `{col}`: {e}")))?;
    let panel = refls.get_size("panel")?;
    let scale0 = refls.get_double("scale_factor").ok();
    let (trust, hot) = panel_trust(expt, image, mask, o)?;
    let sigma_r2 = (o.sigma_r / o.adu_per_photon).powi(2);
    let mut occupied: BTreeMap<usize, Vec<u16>> = BTreeMap::new();
    let mut d = ShotData { sigma_r2, ..Default::default() };
    let mut kept_boxes: Vec<(usize, usize, usize, usize, usize)> = Vec::new();
    let mut kept_meta: Vec<(usize, BackgroundPlane, Vec<f64>, Vec<f64>, Vec<bool>)> = Vec::new();
    for i in 0..refls.nrows() {
        let pid = panel[i] as usize;
        let Some(p) = det.panels.get(pid) else {
            return Err(Error::msg(format!("reflection row {i}: panel {pid} does not exist")));
        };
        let (nf, ns) = (p.image_size[0], p.image_size[1]);
        if !cen[i][0].is_finite() || !cen[i][1].is_finite() {
            bump(&mut d.rejected, "no_centroid");
            continue;
        }
        if !keep_resolution(o, refls, i, expt) {
            bump(&mut d.rejected, "resolution");
            continue;
        }
        let (mut x0, mut x1, mut y0, mut y1, on_edge) =
            roi_box([cen[i][0], cen[i][1]], o.shoebox_size, nf, ns);
        if on_edge && o.reject_edge {
            bump(&mut d.rejected, "edge");
            continue;
        }
        let t = &trust[pid];
        let h = &hot[pid];
        let n_bad =
            (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).filter(|&(x, y)| !h[y * nf + x]).count();
        if n_bad > 4 || (n_bad > 0 && o.reject_hotpix) {
            bump(&mut d.rejected, "masked_pixels");
            continue;
        }
        if !o.allow_overlaps {
            let occ = occupied.entry(pid).or_insert_with(|| vec![0; nf * ns]);
            loop {
                let hit = (y0..y1).any(|y| (x0..x1).any(|x| occ[y * nf + x] != 0));
                if !hit || x1 <= x0 || y1 <= y0 {
                    break;
                }
                // Alternate corners: the parity of x0 + x1 flips with every shrink.
                if (x0 + x1) % 2 == 1 {
                    x0 += 1;
                    y0 += 1;
                } else {
                    x1 = x1.saturating_sub(1);
                    y1 = y1.saturating_sub(1);
                }
            }
        }
        if x1 < x0 + 2 || y1 < y0 + 2 {
            bump(&mut d.rejected, "too_small");
            continue;
        }
        // Background on the (padded) box.
        let pad = o.pad.unwrap_or(0);
        let (px0, py0) = (x0.saturating_sub(pad), y0.saturating_sub(pad));
        let (px1, py1) = ((x1 + pad).min(nf), (y1 + pad).min(ns));
        let pnx = px1 - px0;
        let raw = image.panel(pid).data();
        let mut vals = Vec::with_capacity(pnx * (py1 - py0));
        let mut usable = Vec::with_capacity(vals.capacity());
        for y in py0..py1 {
            for x in px0..px1 {
                vals.push(raw[y * nf + x] / o.adu_per_photon);
                usable.push(t[y * nf + x]);
            }
        }
        let bg_flags = label_background(&vals, &usable, o.bg_threshold, o.only_high);
        let plane = if o.fit_tilt {
            match fit_plane(&vals, &bg_flags, pnx, sigma_r2, o.tilt_weights) {
                Some([a, b, c]) => {
                    // Re-express relative to the unpadded corner.
                    BackgroundPlane { a, b, c: c + a * (x0 - px0) as f64 + b * (y0 - py0) as f64 }
                }
                None => {
                    bump(&mut d.rejected, "background_fit");
                    continue;
                }
            }
        } else {
            let bgv: Vec<f64> = vals.iter().zip(&bg_flags).filter(|(_, &b)| b).map(|(v, _)| *v).collect();
            let m = median(&bgv);
            if !m.is_finite() {
                bump(&mut d.rejected, "background_fit");
                continue;
            }
            BackgroundPlane { a: 0.0, b: 0.0, c: m }
        };
        let mut dat = Vec::with_capacity((x1 - x0) * (y1 - y0));
        let mut bgs = Vec::with_capacity(dat.capacity());
        let mut tr = Vec::with_capacity(dat.capacity());
        let mut negative = false;
        for y in y0..y1 {
            for x in x0..x1 {
                let v = raw[y * nf + x] / o.adu_per_photon;
                let b = plane.a * (x - x0) as f64 + plane.b * (y - y0) as f64 + plane.c;
                negative |= b < 0.0;
                dat.push(v);
                bgs.push(b);
                tr.push(t[y * nf + x] && v + sigma_r2 >= 0.0 && b >= 0.0);
            }
        }
        if negative && o.skip_negative_bg {
            bump(&mut d.rejected, "negative_background");
            continue;
        }
        if tr.iter().filter(|&&b| b).count() < 4 {
            bump(&mut d.rejected, "too_few_trusted");
            continue;
        }
        if !o.allow_overlaps {
            if let Some(occ) = occupied.get_mut(&pid) {
                for y in y0..y1 {
                    for x in x0..x1 {
                        occ[y * nf + x] = 1;
                    }
                }
            }
        }
        kept_boxes.push((pid, x0, x1, y0, y1));
        kept_meta.push((i, plane, dat, bgs, tr));
    }
    for ((pid, x0, x1, y0, y1), (i, plane, dat, bgs, tr)) in kept_boxes.into_iter().zip(kept_meta) {
        let r = d.rois.len() as u32;
        d.rois.push(Roi { panel: pid, x0, x1, y0, y1 });
        d.roi_refl.push(i);
        d.planes.push(plane);
        d.roi_scale_init.push(scale0.map_or(1.0, |s| s[i]));
        for y in y0..y1 {
            for x in x0..x1 {
                d.pixels.push(Pixel { panel: pid as u32, fast: x as u32, slow: y as u32 });
                d.roi_of.push(r);
            }
        }
        d.data.extend(dat);
        d.background.extend(bgs);
        d.trusted.extend(tr);
    }
    if o.allow_overlaps {
        let mut count: std::collections::HashMap<Pixel, f64> = std::collections::HashMap::new();
        for p in &d.pixels {
            *count.entry(*p).or_insert(0.0) += 1.0;
        }
        d.freq = Some(d.pixels.iter().map(|p| count[p]).collect());
    }
    Ok(d)
}

/// ROIs and data from the reflections' shoeboxes (see the module doc).
pub fn gather_from_shoeboxes(
    expt: &Experiment,
    refls: &ReflectionTable,
    mask: Option<&PixelMask>,
    o: &GatherOptions,
) -> Result<ShotData> {
    let det = expt.detector()?;
    let sbs = refls
        .get_shoebox("shoebox")
        .map_err(|e| Error::msg(format!("refiner.load_data_from_refl=True needs shoeboxes: {e}")))?;
    let scale0 = refls.get_double("scale_factor").ok();
    let sigma_r2 = (o.sigma_r / o.adu_per_photon).powi(2);
    let mut d = ShotData { sigma_r2, ..Default::default() };
    for (i, sb) in sbs.iter().enumerate() {
        let pid = sb.panel as usize;
        let Some(p) = det.panels.get(pid) else {
            return Err(Error::msg(format!("reflection row {i}: shoebox panel {pid} does not exist")));
        };
        let Some(arr) = &sb.data else {
            bump(&mut d.rejected, "no_shoebox_data");
            continue;
        };
        sb.validate().map_err(|m| Error::msg(format!("reflection row {i}: {m}")))?;
        if !keep_resolution(o, refls, i, expt) {
            bump(&mut d.rejected, "resolution");
            continue;
        }
        let [nz, ny, nx] = sb.shape().map_err(|m| Error::msg(format!("reflection row {i}: {m}")))?;
        if nz != 1 {
            return Err(Error::msg(format!("reflection row {i}: shoebox has {nz} frames; stills have one")));
        }
        let [bx0, _, by0, ..] = sb.bbox;
        let (nf, ns) = (p.image_size[0] as i64, p.image_size[1] as i64);
        // Crop to the panel.
        let x0 = (bx0 as i64).max(0);
        let y0 = (by0 as i64).max(0);
        let x1 = (bx0 as i64 + nx as i64).min(nf);
        let y1 = (by0 as i64 + ny as i64).min(ns);
        if x1 <= x0 || y1 <= y0 {
            bump(&mut d.rejected, "off_panel");
            continue;
        }
        let r = d.rois.len() as u32;
        let mut n_tr = 0;
        let start = d.pixels.len();
        for y in y0..y1 {
            for x in x0..x1 {
                let k = ((y - by0 as i64) as usize) * nx + (x - bx0 as i64) as usize;
                // Shoebox values are used as stored (diffBragg's refldata_to_photons=False).
                let v = arr.data[k] as f64;
                let b = arr.background[k] as f64;
                let valid = arr.mask.get(k).is_some_and(|m| m & 1 != 0);
                let good = mask.is_none_or(|m| m.good(pid, x as usize, y as usize));
                let t = valid && good && v.is_finite() && b.is_finite() && v + sigma_r2 >= 0.0 && b >= 0.0;
                n_tr += t as usize;
                d.pixels.push(Pixel { panel: pid as u32, fast: x as u32, slow: y as u32 });
                d.roi_of.push(r);
                d.data.push(if v.is_finite() { v } else { 0.0 });
                d.background.push(if b.is_finite() { b } else { 0.0 });
                d.trusted.push(t);
            }
        }
        if n_tr == 0 {
            d.pixels.truncate(start);
            d.roi_of.truncate(start);
            d.data.truncate(start);
            d.background.truncate(start);
            d.trusted.truncate(start);
            bump(&mut d.rejected, "too_few_trusted");
            continue;
        }
        d.rois.push(Roi { panel: pid, x0: x0 as usize, x1: x1 as usize, y0: y0 as usize, y1: y1 as usize });
        d.roi_refl.push(i);
        // The shoebox background is per pixel; the plane is a summary (its mean).
        let nb = (start..d.pixels.len()).len() as f64;
        let mean_bg = d.background[start..].iter().sum::<f64>() / nb;
        d.planes.push(BackgroundPlane { a: 0.0, b: 0.0, c: mean_bg });
        d.roi_scale_init.push(scale0.map_or(1.0, |s| s[i]));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{Beam, Detector, Panel};
    use crate::image::PanelImage;

    /// A 40×30 panel with a flat background of 10 and two bright spots.
    fn setup() -> (Experiment, Image, ReflectionTable) {
        let det = Detector {
            panels: vec![Panel {
                image_size: [40, 30],
                trusted_range: [-10.0, 1000.0],
                ..Default::default()
            }],
            hierarchy: None,
        };
        let mut e = Experiment::new("t", Beam::default(), det);
        e.crystal = None;
        let mut img = vec![10.0; 40 * 30];
        for (k, v) in img.iter_mut().enumerate() {
            *v += ((k * 7919) % 5) as f64 * 0.5; // a little texture, so the MAD is not 0
        }
        img[15 * 40 + 12] = 500.0;
        img[15 * 40 + 19] = 2000.0; // saturated: above the trusted range
        let image = Image::new(vec![PanelImage::new(30, 40, img).unwrap()]);
        let mut t = ReflectionTable::new(3);
        t.insert("panel", vec![0u64; 3]).unwrap();
        t.insert("xyzobs.px.value", vec![[12.5, 15.5, 0.5], [19.5, 15.5, 0.5], [39.6, 15.5, 0.5]]).unwrap();
        (e, image, t)
    }

    #[test]
    fn overlaps_shrink_trusted_range_masks_pixels_and_hot_pixels_reject() {
        let (e, img, t) = setup();
        let o = GatherOptions {
            shoebox_size: 8,
            mask_outside_trusted: true,
            reject_edge: false,
            ..Default::default()
        };
        let d = gather_from_image(&e, &t, &img, None, &o).unwrap();
        // Both spots kept; the second ROI shrank until it no longer overlaps the first.
        assert_eq!(d.roi_refl[..2], [0, 1], "rejected: {:?}", d.rejected);
        let (a, b) = (d.rois[0], d.rois[1]);
        assert_eq!((a.x0, a.x1), (8, 16));
        assert!(b.x0 >= a.x1, "{a:?} {b:?}");
        // The saturated pixel is in the second ROI but only untrusted, not a rejection.
        let k = d.pixels.iter().position(|p| (p.fast, p.slow) == (19, 15)).unwrap();
        assert!(!d.trusted[k]);
        // The third ROI reaches the panel's last column (the reference stops one short).
        assert_eq!(d.rois[2].x1, 40);
        // Background: the median of the flat part, not pulled up by the spot.
        assert!((d.planes[0].c - 11.0).abs() < 1.0, "{:?}", d.planes[0]);
        // A hot pixel (mask false) inside the first ROI rejects it by default.
        let mut m = PixelMask { panels: vec![vec![true; 1200]], shape: (30, 40) };
        m.panels[0][14 * 40 + 11] = false;
        let d2 = gather_from_image(&e, &t, &img, Some(&m), &o).unwrap();
        assert_eq!(d2.rejected.get("masked_pixels"), Some(&1));
        assert!(!d2.roi_refl.contains(&0));
        let keep = GatherOptions { reject_hotpix: false, ..o };
        let d3 = gather_from_image(&e, &t, &img, Some(&m), &keep).unwrap();
        assert!(d3.roi_refl.contains(&0));
    }

    #[test]
    fn roi_box_reaches_the_last_column_and_flags_edges() {
        // Centroid 100.3 → x = 99.8, box [92, 107) for size 15.
        assert_eq!(roi_box([100.3, 50.5], 15, 1000, 1000), (92, 107, 42, 57, false));
        // Near the high edge: clipped at n (the last column is included).
        let (x0, x1, ..) = roi_box([999.5, 500.0], 10, 1000, 1000);
        assert_eq!((x0, x1), (994, 1000));
        let (.., edge) = roi_box([999.5, 500.0], 10, 1000, 1000);
        assert!(edge);
        // Off the panel entirely: an empty box.
        let (x0, x1, ..) = roi_box([-30.0, 5.0], 10, 100, 100);
        assert_eq!((x0, x1), (0, 0));
    }
}
