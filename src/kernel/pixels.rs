//! Pixel lists and the per-ROI pixel assembly.
//!
//! * A [`Pixel`] is (panel, fast, slow) with integer pixel indices; pixel `i`
//!   spans `[i, i+1)` so its centre is at `i + ½` (see [`crate::conventions`]).
//! * An [`Roi`] is a half-open box `[x0, x1) × [y0, y1)` (fast × slow) on one
//!   panel. Its pixels are listed slow-major (slow outer, fast inner), ROI after
//!   ROI — the order of diffBragg's `data_to_one_dim`.
//! * Assembly: `model = roi_scale·raw + background`, where `raw` is the
//!   kernel's Bragg value (G included) and the background plane is
//!   `a·(x − x0) + b·(y − y0) + c` with x, y the pixel's fast and slow indices,
//!   relative to the ROI corner. The step loop stays Bragg-only.

use crate::error::{Error, Result};
use crate::geometry::Detector;

/// One detector pixel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pixel {
    pub panel: u32,
    pub fast: u32,
    pub slow: u32,
}

/// A region of interest: half-open box on one panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roi {
    pub panel: usize,
    pub x0: usize,
    pub x1: usize,
    pub y0: usize,
    pub y1: usize,
}

impl Roi {
    pub fn n_pixels(&self) -> usize {
        (self.x1 - self.x0) * (self.y1 - self.y0)
    }
}

/// Background plane coefficients of one ROI (photons; per pixel for a, b).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BackgroundPlane {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

/// Check that every pixel lies on its panel.
pub fn validate_pixels(pixels: &[Pixel], panels: &[[usize; 2]]) -> Result<()> {
    for (i, p) in pixels.iter().enumerate() {
        let Some(dims) = panels.get(p.panel as usize) else {
            return Err(Error::param(format!("pixels[{i}]"), format!("panel {} does not exist", p.panel)));
        };
        if p.fast as usize >= dims[0] || p.slow as usize >= dims[1] {
            return Err(Error::param(
                format!("pixels[{i}]"),
                format!(
                    "(fast {}, slow {}) is outside panel {} of {}×{}",
                    p.fast, p.slow, p.panel, dims[0], dims[1]
                ),
            ));
        }
    }
    Ok(())
}

/// Pixels of the ROIs (ROI-major, then slow, then fast), with each pixel's ROI index.
pub fn pixels_from_rois(rois: &[Roi], detector: &Detector) -> Result<(Vec<Pixel>, Vec<u32>)> {
    let mut px = Vec::with_capacity(rois.iter().map(|r| r.n_pixels()).sum());
    let mut roi_of = Vec::with_capacity(px.capacity());
    for (ri, r) in rois.iter().enumerate() {
        let Some(p) = detector.panels.get(r.panel) else {
            return Err(Error::param(format!("rois[{ri}]"), format!("panel {} does not exist", r.panel)));
        };
        if r.x0 >= r.x1 || r.y0 >= r.y1 || r.x1 > p.image_size[0] || r.y1 > p.image_size[1] {
            return Err(Error::param(
                format!("rois[{ri}]"),
                format!(
                    "box [{}, {}) × [{}, {}) is empty or leaves panel {} ({}×{})",
                    r.x0, r.x1, r.y0, r.y1, r.panel, p.image_size[0], p.image_size[1]
                ),
            ));
        }
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                px.push(Pixel { panel: r.panel as u32, fast: x as u32, slow: y as u32 });
                roi_of.push(ri as u32);
            }
        }
    }
    Ok((px, roi_of))
}

/// Every pixel of the detector: panel after panel, slow-major (the image layout).
pub fn full_detector_pixels(detector: &Detector) -> Vec<Pixel> {
    let mut v = Vec::with_capacity(detector.n_pixels());
    for (pi, p) in detector.panels.iter().enumerate() {
        for y in 0..p.image_size[1] {
            for x in 0..p.image_size[0] {
                v.push(Pixel { panel: pi as u32, fast: x as u32, slow: y as u32 });
            }
        }
    }
    v
}

/// `model_p = roi_scale[r]·raw_p + plane_r(x, y)` for every pixel of the ROIs.
pub fn assemble_model(
    rois: &[Roi],
    pixels: &[Pixel],
    roi_of: &[u32],
    raw: &[f64],
    roi_scale: &[f64],
    background: &[BackgroundPlane],
) -> Result<Vec<f64>> {
    let n = pixels.len();
    if roi_of.len() != n || raw.len() != n {
        return Err(Error::msg(format!(
            "assemble: {n} pixels, {} ROI ids, {} values",
            roi_of.len(),
            raw.len()
        )));
    }
    if roi_scale.len() != rois.len() || background.len() != rois.len() {
        return Err(Error::msg(format!(
            "assemble: {} ROIs, {} scales, {} background planes",
            rois.len(),
            roi_scale.len(),
            background.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = roi_of[i] as usize;
        let Some(roi) = rois.get(r) else {
            return Err(Error::param(format!("roi_of[{i}]"), format!("ROI {r} does not exist")));
        };
        let [gx, gy, _] = background_gradient(roi, &pixels[i]);
        let bg = background[r];
        out.push(roi_scale[r] * raw[i] + bg.a * gx + bg.b * gy + bg.c);
    }
    Ok(out)
}

/// `∂model/∂(a, b, c)` of a pixel's background plane: `(x − x0, y − y0, 1)`.
#[inline]
pub fn background_gradient(roi: &Roi, p: &Pixel) -> [f64; 3] {
    [p.fast as f64 - roi.x0 as f64, p.slow as f64 - roi.y0 as f64, 1.0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Panel;

    fn det() -> Detector {
        Detector {
            panels: vec![
                Panel { image_size: [10, 8], ..Default::default() },
                Panel { image_size: [4, 4], ..Default::default() },
            ],
            hierarchy: None,
        }
    }

    #[test]
    fn roi_order_and_bounds() {
        let rois =
            [Roi { panel: 0, x0: 2, x1: 4, y0: 5, y1: 7 }, Roi { panel: 1, x0: 0, x1: 1, y0: 3, y1: 4 }];
        let (px, of) = pixels_from_rois(&rois, &det()).unwrap();
        assert_eq!(px.len(), 5);
        assert_eq!(px[0], Pixel { panel: 0, fast: 2, slow: 5 });
        assert_eq!(px[1], Pixel { panel: 0, fast: 3, slow: 5 });
        assert_eq!(px[2], Pixel { panel: 0, fast: 2, slow: 6 });
        assert_eq!(of, vec![0, 0, 0, 0, 1]);
        let bad = [Roi { panel: 1, x0: 0, x1: 5, y0: 0, y1: 1 }];
        assert!(pixels_from_rois(&bad, &det()).unwrap_err().to_string().contains("rois[0]"));
        assert!(pixels_from_rois(&[Roi { panel: 2, x0: 0, x1: 1, y0: 0, y1: 1 }], &det()).is_err());
        assert_eq!(full_detector_pixels(&det()).len(), 96);
        assert_eq!(full_detector_pixels(&det())[10], Pixel { panel: 0, fast: 0, slow: 1 });
        let dims = [[10, 8], [4, 4]];
        assert!(validate_pixels(&px, &dims).is_ok());
        assert!(validate_pixels(&[Pixel { panel: 1, fast: 4, slow: 0 }], &dims).is_err());
    }

    #[test]
    fn background_plane_assembly_and_its_gradient() {
        let rois = [Roi { panel: 0, x0: 2, x1: 5, y0: 1, y1: 3 }];
        let (px, of) = pixels_from_rois(&rois, &det()).unwrap();
        let raw: Vec<f64> = (0..px.len()).map(|i| i as f64).collect();
        let bg = BackgroundPlane { a: 0.5, b: -0.25, c: 3.0 };
        let m = assemble_model(&rois, &px, &of, &raw, &[2.0], &[bg]).unwrap();
        // pixel 4 = (fast 3, slow 2): 2·4 + 0.5·1 − 0.25·1 + 3
        assert_eq!(m[4], 8.0 + 0.5 - 0.25 + 3.0);
        // Finite differences of the assembly agree with background_gradient.
        for k in 0..3 {
            let eps = 1e-3;
            let mut hi = bg;
            let mut lo = bg;
            match k {
                0 => (hi.a += eps, lo.a -= eps),
                1 => (hi.b += eps, lo.b -= eps),
                _ => (hi.c += eps, lo.c -= eps),
            };
            let mh = assemble_model(&rois, &px, &of, &raw, &[2.0], &[hi]).unwrap();
            let ml = assemble_model(&rois, &px, &of, &raw, &[2.0], &[lo]).unwrap();
            for i in 0..px.len() {
                let fd = (mh[i] - ml[i]) / (2.0 * eps);
                assert!((fd - background_gradient(&rois[0], &px[i])[k]).abs() < 1e-9);
            }
        }
        assert!(assemble_model(&rois, &px, &of, &raw[1..], &[2.0], &[bg]).is_err());
    }
}
