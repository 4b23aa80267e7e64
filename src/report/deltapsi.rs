//! The DIALS stills re-prediction: Δψ, the diffracted ray and where it meets a panel.
//!
//! For reflection `h` with `q = A·h` (dxtbx `A = U·B`, Å⁻¹, no 2π) and incident
//! wave vector `s0` (Å⁻¹, `|s0| = 1/λ`), DIALS's `StillsRayPredictor` rotates `q`
//! about `e1 = unit(q × ŝ0)` onto the Ewald sphere:
//!
//! ```text
//! c0 = unit(ŝ0 × e1),  a = ½|q|²λ,  b = sqrt(|q|² − a²)
//! r  = −a·ŝ0 + b·c0                         (|r| = |q|, r + s0 on the sphere)
//! Δψ = −atan2(r·q1, r·q0),  q0 = q/|q|,  q1 = unit(q0 × e1)
//! s1 = unit(s0 + r)·|s0|
//! ```
//!
//! The predicted position is the plain ray–plane intersection of `s1` in panel
//! millimetres (dxtbx "mm"); pixels come from the panel's px↔mm strategy
//! ([`PxMm`]), which for parallax-corrected panels moves the point by the
//! expected absorption depth. That is how DIALS fills `xyzcal.mm` and `xyzcal.px`.
//!
//! The spectrum-aware variant is the same prediction with `s0 = ŝ0/λ̄`, where λ̄ is
//! the spectrum's weighted mean wavelength (diffBragg sets the refined beam to it).

// `!(x > 0.0)` is deliberate: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::fmt;

use crate::conventions::{Mat3, Vec3};
use crate::experiment::{PanelMeta, PxMmStrategy};
use crate::geometry::{Beam, Detector, Panel};
use crate::spectrum::Spectrum;

/// Why a reflection cannot be predicted (DIALS would assert).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpredictable {
    /// `q = A·h` is zero (h = 0 0 0) or not finite.
    ZeroQ,
    /// `q` is parallel to the beam, so the rotation axis is undefined.
    AlongBeam,
    /// `|q| ≥ 2|s0|`: no rotation brings the point onto the Ewald sphere.
    BeyondLimit,
    /// The diffracted ray does not meet the panel plane in front of the sample.
    MissesPanel,
    /// The ray meets no panel of the detector inside its bounds.
    MissesDetector,
}

impl fmt::Display for Unpredictable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unpredictable::ZeroQ => "reciprocal-lattice vector is zero (hkl 0 0 0?)",
            Unpredictable::AlongBeam => "reciprocal-lattice vector is parallel to the beam",
            Unpredictable::BeyondLimit => "reflection lies beyond the 2/λ resolution limit",
            Unpredictable::MissesPanel => "diffracted ray does not meet the panel plane",
            Unpredictable::MissesDetector => "diffracted ray meets no panel",
        })
    }
}

/// A stills ray: Δψ and the diffracted beam vector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StillsRay {
    /// Δψ, radians (DIALS `delpsical.rad`).
    pub delpsi: f64,
    /// Diffracted beam vector, Å⁻¹, `|s1| = |s0|`.
    pub s1: Vec3,
    /// `q` rotated onto the Ewald sphere, Å⁻¹.
    pub r: Vec3,
    /// Unit rotation axis `unit(q × ŝ0)`.
    pub e1: Vec3,
}

/// DIALS `StillsRayPredictor` for reflection `hkl` with `A = U·B` and `s0` (Å⁻¹).
pub fn predict_ray(a: &Mat3, s0: &Vec3, hkl: [i32; 3]) -> Result<StillsRay, Unpredictable> {
    let q = a * Vec3::new(hkl[0] as f64, hkl[1] as f64, hkl[2] as f64);
    ray_for_q(&q, s0)
}

/// [`predict_ray`] for a given reciprocal-lattice vector `q`.
pub fn ray_for_q(q: &Vec3, s0: &Vec3) -> Result<StillsRay, Unpredictable> {
    let qq = q.norm_squared();
    if !(qq > 0.0 && qq.is_finite()) {
        return Err(Unpredictable::ZeroQ);
    }
    let s0_len = s0.norm();
    let us0 = s0 / s0_len;
    let e1 = q.cross(&us0);
    // A relative tolerance: |q × ŝ0| ≤ 1e-12 |q| means the axis is pure noise.
    if e1.norm() <= 1e-12 * qq.sqrt() {
        return Err(Unpredictable::AlongBeam);
    }
    let e1 = e1.normalize();
    let c0 = us0.cross(&e1).normalize();
    let a = 0.5 * qq / s0_len;
    let tmp = qq - a * a;
    if !(tmp > 0.0) {
        return Err(Unpredictable::BeyondLimit);
    }
    let r = -a * us0 + tmp.sqrt() * c0;
    let q0 = q / qq.sqrt();
    let q1 = q0.cross(&e1).normalize();
    let delpsi = -r.dot(&q1).atan2(r.dot(&q0));
    let s1 = (s0 + r).normalize() * s0_len;
    Ok(StillsRay { delpsi, s1, r, e1 })
}

/// Incident wave vector of `beam` with wavelength `lambda` (Å) instead of its own.
pub fn s0_with_wavelength(beam: &Beam, lambda: f64) -> Vec3 {
    beam.unit_s0() / lambda
}

/// Incident wave vector for a spectrum: the beam direction with the
/// spectrum's weighted-mean wavelength Σλw/Σw (what diffBragg writes to the
/// refined experiment; not hc/⟨E⟩, see formats.md §3.3).
pub fn s0_for_spectrum(beam: &Beam, spectrum: &Spectrum) -> Vec3 {
    s0_with_wavelength(beam, spectrum.mean_wavelength())
}

/// dxtbx's pixel↔millimetre mapping of one panel.
///
/// `Simple`: mm = px·pixel_size. `Parallax`: the mm position is where the ray
/// meets the front face; the pixel is where the photon is on average absorbed,
/// shifted along the panel by `o·(ŝ1·f̂, ŝ1·ŝ)` with the attenuation length
/// `o = 1/μ − (t0/cosθ + 1/μ)·exp(−μ·t0/cosθ)` and `cosθ = ŝ1·n̂` (n̂ away from
/// the sample). Like dxtbx, mm→px evaluates ŝ1 at the mm point (exact) and
/// px→mm evaluates it at the uncorrected point (dxtbx's approximate inverse).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PxMm {
    Simple,
    Parallax { mu: f64, t0: f64 },
}

impl PxMm {
    /// The mapping dxtbx uses for `panel`. Offset strategies need the imageset's
    /// dx/dy maps, which this crate does not read: they are an error.
    pub fn for_panel(panel: &Panel, meta: &PanelMeta) -> Result<PxMm, String> {
        match meta.px_mm_strategy {
            PxMmStrategy::Offset | PxMmStrategy::OffsetParallaxCorrected => Err(format!(
                "panel `{}`: {} needs dx/dy offset maps, which are not supported",
                panel.name,
                meta.px_mm_strategy.name()
            )),
            _ if meta.parallax_active(panel) => Ok(PxMm::Parallax { mu: panel.mu, t0: panel.thickness }),
            _ => Ok(PxMm::Simple),
        }
    }

    /// The mappings of every panel of a detector (`metas` may be shorter: defaults).
    pub fn for_detector(
        detector: &Detector,
        metas: &crate::experiment::DetectorMeta,
    ) -> Result<Vec<PxMm>, String> {
        detector.panels.iter().enumerate().map(|(i, p)| PxMm::for_panel(p, &metas.panel(i))).collect()
    }

    /// Attenuation length (mm) for the ray through panel millimetres `mm`;
    /// `None` if the ray grazes or leaves through the back (dxtbx asserts).
    fn attenuation(mu: f64, t0: f64, panel: &Panel, mm: [f64; 2]) -> Option<(Vec3, f64)> {
        let u = panel.mm_to_lab(mm[0], mm[1]).normalize();
        let cos_t = u.dot(&panel.outward_normal());
        if !(cos_t > 0.0) {
            return None;
        }
        let o = 1.0 / mu - (t0 / cos_t + 1.0 / mu) * (-mu * t0 / cos_t).exp();
        Some((u, o))
    }

    /// Pixel coordinates of panel millimetres (dxtbx `millimeter_to_pixel`).
    pub fn mm_to_px(&self, panel: &Panel, mm: [f64; 2]) -> Option<[f64; 2]> {
        let mm = match *self {
            PxMm::Simple => mm,
            PxMm::Parallax { mu, t0 } => {
                let (u, o) = Self::attenuation(mu, t0, panel, mm)?;
                [mm[0] + u.dot(&panel.fast) * o, mm[1] + u.dot(&panel.slow) * o]
            }
        };
        Some([mm[0] / panel.pixel_size[0], mm[1] / panel.pixel_size[1]])
    }

    /// Panel millimetres of pixel coordinates (dxtbx `pixel_to_millimeter`).
    pub fn px_to_mm(&self, panel: &Panel, px: [f64; 2]) -> Option<[f64; 2]> {
        let mm = [px[0] * panel.pixel_size[0], px[1] * panel.pixel_size[1]];
        match *self {
            PxMm::Simple => Some(mm),
            PxMm::Parallax { mu, t0 } => {
                let (u, o) = Self::attenuation(mu, t0, panel, mm)?;
                Some([mm[0] - u.dot(&panel.fast) * o, mm[1] - u.dot(&panel.slow) * o])
            }
        }
    }
}

/// A stills prediction placed on a panel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    pub panel: usize,
    /// Δψ, radians.
    pub delpsi: f64,
    /// Diffracted beam vector, Å⁻¹.
    pub s1: Vec3,
    /// Panel millimetres (`xyzcal.mm` x, y).
    pub mm: [f64; 2],
    /// Pixel coordinates (`xyzcal.px` x, y).
    pub px: [f64; 2],
}

/// Predict `hkl` onto a given panel, as DIALS does when the table already names
/// the panel (`for_reflection_table`): the intersection may lie outside the
/// panel's bounds.
pub fn predict_on_panel(
    a: &Mat3,
    s0: &Vec3,
    hkl: [i32; 3],
    panel_id: usize,
    panel: &Panel,
    pxmm: &PxMm,
) -> Result<Prediction, Unpredictable> {
    let ray = predict_ray(a, s0, hkl)?;
    let (x, y) = panel.ray_intersection_mm(&ray.s1).ok_or(Unpredictable::MissesPanel)?;
    let px = pxmm.mm_to_px(panel, [x, y]).ok_or(Unpredictable::MissesPanel)?;
    Ok(Prediction { panel: panel_id, delpsi: ray.delpsi, s1: ray.s1, mm: [x, y], px })
}

/// The panel a ray meets (dxtbx `Detector::get_ray_intersection`): among the
/// panels whose bounds (in mm) contain the intersection, the nearest along the ray.
pub fn detector_intersection(detector: &Detector, s1: &Vec3) -> Option<(usize, [f64; 2])> {
    let mut best: Option<(usize, [f64; 2], f64)> = None;
    for (i, p) in detector.panels.iter().enumerate() {
        let Some((x, y)) = p.ray_intersection_mm(s1) else { continue };
        let w = p.mm_to_lab(x, y).norm();
        let size = [p.image_size[0] as f64 * p.pixel_size[0], p.image_size[1] as f64 * p.pixel_size[1]];
        let inside = (0.0..size[0]).contains(&x) && (0.0..size[1]).contains(&y);
        if inside && best.is_none_or(|b| w < b.2) {
            best = Some((i, [x, y], w));
        }
    }
    best.map(|(i, mm, _)| (i, mm))
}

/// Predict `hkl` onto whichever panel its ray meets.
pub fn predict_on_detector(
    a: &Mat3,
    s0: &Vec3,
    hkl: [i32; 3],
    detector: &Detector,
    pxmm: &[PxMm],
) -> Result<Prediction, Unpredictable> {
    let ray = predict_ray(a, s0, hkl)?;
    let (panel, mm) = detector_intersection(detector, &ray.s1).ok_or(Unpredictable::MissesDetector)?;
    let px = pxmm
        .get(panel)
        .unwrap_or(&PxMm::Simple)
        .mm_to_px(&detector.panels[panel], mm)
        .ok_or(Unpredictable::MissesPanel)?;
    Ok(Prediction { panel, delpsi: ray.delpsi, s1: ray.s1, mm, px })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conventions::axis_angle;
    use crate::crystal::{Crystal, UnitCell};

    fn setup() -> (Mat3, Vec3) {
        let cell = UnitCell::new(60.0, 70.0, 80.0, 90.0, 97.0, 90.0);
        let u = axis_angle(&Vec3::new(0.3, -0.2, 0.9), 0.7);
        let x = Crystal::from_u_and_cell(&u, &cell, " P 2y");
        (x.a_matrix(), Vec3::new(0.0, 0.0, -1.0 / 1.3))
    }

    #[test]
    fn ray_lies_on_ewald_sphere_and_rotation_is_delpsi() {
        let (a, s0) = setup();
        let mut n = 0;
        for h in -6..=6 {
            for k in -6..=6 {
                for l in -6..=6 {
                    let Ok(ray) = predict_ray(&a, &s0, [h, k, l]) else { continue };
                    n += 1;
                    let q = a * Vec3::new(h as f64, k as f64, l as f64);
                    // r + s0 lies on the sphere |s1| = |s0|; |r| = |q|.
                    assert!(((s0 + ray.r).norm() - s0.norm()).abs() < 1e-12);
                    assert!((ray.r.norm() - q.norm()).abs() < 1e-12);
                    // Rotating q by Δψ about e1 (right-handed) gives r.
                    let rq = axis_angle(&ray.e1, ray.delpsi) * q;
                    assert!((rq - ray.r).norm() < 1e-12, "{h} {k} {l}");
                    assert!((ray.s1.norm() - s0.norm()).abs() < 1e-12);
                }
            }
        }
        assert!(n > 1000);
    }

    #[test]
    fn delpsi_is_zero_in_reflecting_position_and_odd_in_a_small_turn() {
        let (a, s0) = setup();
        let q = a * Vec3::new(3.0, -2.0, 4.0);
        let r0 = ray_for_q(&q, &s0).unwrap();
        // Put q exactly on the sphere, then turn it back by ±ε about e1.
        let on = r0.r;
        let r1 = ray_for_q(&on, &s0).unwrap();
        assert!(r1.delpsi.abs() < 1e-12);
        let eps = 1e-3;
        let plus = ray_for_q(&(axis_angle(&r1.e1, -eps) * on), &s0).unwrap();
        let minus = ray_for_q(&(axis_angle(&r1.e1, eps) * on), &s0).unwrap();
        assert!((plus.delpsi - eps).abs() < 1e-9, "{}", plus.delpsi);
        assert!((minus.delpsi + eps).abs() < 1e-9, "{}", minus.delpsi);
    }

    #[test]
    fn unpredictable_cases() {
        let (a, s0) = setup();
        assert_eq!(predict_ray(&a, &s0, [0, 0, 0]), Err(Unpredictable::ZeroQ));
        assert_eq!(ray_for_q(&Vec3::new(0.0, 0.0, 0.3), &s0), Err(Unpredictable::AlongBeam));
        assert_eq!(ray_for_q(&Vec3::new(2.0, 0.0, 0.0), &s0), Err(Unpredictable::BeyondLimit));
        assert_eq!(ray_for_q(&Vec3::new(f64::NAN, 0.0, 0.0), &s0), Err(Unpredictable::ZeroQ));
    }

    #[test]
    fn parallax_roundtrip_is_close_and_moves_outwards() {
        let panel = Panel {
            origin: Vec3::new(-100.0, 100.0, -150.0),
            fast: Vec3::x(),
            slow: -Vec3::y(),
            pixel_size: [0.172, 0.172],
            image_size: [1200, 1200],
            mu: 10.68,
            thickness: 0.45,
            ..Default::default()
        };
        let pm = PxMm::Parallax { mu: panel.mu, t0: panel.thickness };
        let mm = [180.0, 30.0];
        let px = pm.mm_to_px(&panel, mm).unwrap();
        // The absorbed position is further from the beam (the ray travels on into the sensor).
        let plain = PxMm::Simple.mm_to_px(&panel, mm).unwrap();
        assert!(px[0] > plain[0] && px[1] < plain[1]);
        let back = pm.px_to_mm(&panel, px).unwrap();
        // dxtbx's inverse is approximate; it is good to well under a micrometre here.
        assert!((back[0] - mm[0]).abs() < 1e-3 && (back[1] - mm[1]).abs() < 1e-3);
        assert_eq!(PxMm::Simple.px_to_mm(&panel, plain).unwrap(), mm);
    }
}
