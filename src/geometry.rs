//! Beam and detector models in the lab frame (see [`crate::conventions`]).
//!
//! A [`Detector`] keeps both the composed lab-frame [`Panel`]s that every
//! computation uses and the DIALS hierarchy tree ([`DetectorNode`]) whose
//! frames are parent-local, so that a file written back keeps its structure.

use crate::conventions::{s0_unit_from_direction, Vec3};

/// An X-ray beam as DIALS stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Beam {
    /// Unit vector from the sample **towards the source** (DIALS `direction`).
    pub direction: Vec3,
    /// Nominal wavelength, Å.
    pub wavelength: f64,
    /// Beam divergence, degrees (as in the JSON file).
    pub divergence_deg: f64,
    /// Standard deviation of the divergence, degrees.
    pub sigma_divergence_deg: f64,
    /// Normal to the polarization plane.
    pub polarization_normal: Vec3,
    /// Fraction of the beam polarized in the plane ⟂ `polarization_normal`.
    pub polarization_fraction: f64,
    pub flux: f64,
    pub transmission: f64,
}

impl Default for Beam {
    fn default() -> Self {
        Beam {
            direction: Vec3::new(0.0, 0.0, 1.0),
            wavelength: 1.0,
            divergence_deg: 0.0,
            sigma_divergence_deg: 0.0,
            polarization_normal: Vec3::new(0.0, 1.0, 0.0),
            polarization_fraction: 0.999,
            flux: 0.0,
            transmission: 1.0,
        }
    }
}

impl Beam {
    /// Unit vector along propagation.
    pub fn unit_s0(&self) -> Vec3 {
        s0_unit_from_direction(&self.direction)
    }

    /// Incident wave vector `s0`, Å⁻¹.
    pub fn s0(&self) -> Vec3 {
        self.unit_s0() / self.wavelength
    }

    /// The electric-field (polarization) axis: ⟂ to the polarization normal
    /// and to the beam. Its sign is irrelevant (the factor uses cos 2ψ).
    pub fn polarization_axis(&self) -> Vec3 {
        let e = self.polarization_normal.cross(&self.unit_s0());
        e / e.norm()
    }

    /// nanoBragg's Kahn factor `K = 2·fraction − 1`.
    pub fn kahn_factor(&self) -> f64 {
        2.0 * self.polarization_fraction - 1.0
    }
}

/// One detector panel, composed into the lab frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub name: String,
    pub panel_type: String,
    /// Lab position (mm) of the outer corner of pixel (0, 0).
    pub origin: Vec3,
    /// Unit fast axis, lab frame.
    pub fast: Vec3,
    /// Unit slow axis, lab frame.
    pub slow: Vec3,
    /// Pixel size (fast, slow), mm.
    pub pixel_size: [f64; 2],
    /// Image size (n_fast, n_slow), pixels.
    pub image_size: [usize; 2],
    /// Trusted range of raw values (ADU), inclusive in dxtbx.
    pub trusted_range: [f64; 2],
    /// Sensor thickness, mm.
    pub thickness: f64,
    /// Linear attenuation coefficient, mm⁻¹.
    pub mu: f64,
    pub material: String,
    /// ADU per photon.
    pub gain: f64,
    pub pedestal: f64,
    pub identifier: String,
    pub raw_image_offset: [i32; 2],
    /// Untrusted rectangles `[f0, s0, f1, s1]`, half-open.
    pub mask: Vec<[i32; 4]>,
}

impl Default for Panel {
    fn default() -> Self {
        Panel {
            name: String::new(),
            panel_type: "SENSOR_UNKNOWN".into(),
            origin: Vec3::zeros(),
            fast: Vec3::x(),
            slow: -Vec3::y(),
            pixel_size: [0.1, 0.1],
            image_size: [0, 0],
            trusted_range: [0.0, 0.0],
            thickness: 0.0,
            mu: 0.0,
            material: String::new(),
            gain: 1.0,
            pedestal: 0.0,
            identifier: String::new(),
            raw_image_offset: [0, 0],
            mask: vec![],
        }
    }
}

impl Panel {
    /// Unit normal `fast × slow` (dxtbx's normal; it may point towards the sample).
    pub fn normal(&self) -> Vec3 {
        let n = self.fast.cross(&self.slow);
        n / n.norm()
    }

    /// Unit normal oriented away from the sample (nanoBragg's `odet` vector).
    pub fn outward_normal(&self) -> Vec3 {
        let n = self.normal();
        if self.origin.dot(&n) < 0.0 {
            -n
        } else {
            n
        }
    }

    /// Perpendicular distance from the sample to the panel plane, mm (≥ 0).
    pub fn close_distance(&self) -> f64 {
        self.origin.dot(&self.outward_normal())
    }

    pub fn n_fast(&self) -> usize {
        self.image_size[0]
    }

    pub fn n_slow(&self) -> usize {
        self.image_size[1]
    }

    pub fn n_pixels(&self) -> usize {
        self.image_size[0] * self.image_size[1]
    }

    /// Lab position (mm) of fractional pixel coordinates (x fast, y slow).
    pub fn pixel_to_lab(&self, x: f64, y: f64) -> Vec3 {
        self.origin + self.fast * (x * self.pixel_size[0]) + self.slow * (y * self.pixel_size[1])
    }

    /// Lab position (mm) of the centre of integer pixel (f, s).
    pub fn pixel_centre_lab(&self, f: usize, s: usize) -> Vec3 {
        self.pixel_to_lab(f as f64 + 0.5, s as f64 + 0.5)
    }

    /// Panel-plane millimetres (x along fast, y along slow) of pixel coordinates.
    pub fn pixel_to_mm(&self, x: f64, y: f64) -> (f64, f64) {
        (x * self.pixel_size[0], y * self.pixel_size[1])
    }

    /// Pixel coordinates of panel-plane millimetres.
    pub fn mm_to_pixel(&self, x_mm: f64, y_mm: f64) -> (f64, f64) {
        (x_mm / self.pixel_size[0], y_mm / self.pixel_size[1])
    }

    /// Lab position of panel-plane millimetres.
    pub fn mm_to_lab(&self, x_mm: f64, y_mm: f64) -> Vec3 {
        self.origin + self.fast * x_mm + self.slow * y_mm
    }

    /// Where the ray from the sample along `dir` meets the panel plane, as
    /// panel millimetres; `None` if the ray is parallel or points away.
    pub fn ray_intersection_mm(&self, dir: &Vec3) -> Option<(f64, f64)> {
        let n = self.normal();
        let denom = dir.dot(&n);
        if denom.abs() < 1e-300 {
            return None;
        }
        let t = self.origin.dot(&n) / denom;
        if t <= 0.0 {
            return None;
        }
        let p = dir * t - self.origin;
        // Solve p = x·fast + y·slow in the (possibly non-orthogonal) panel basis.
        let ff = self.fast.dot(&self.fast);
        let ss = self.slow.dot(&self.slow);
        let fs = self.fast.dot(&self.slow);
        let pf = p.dot(&self.fast);
        let ps = p.dot(&self.slow);
        let det = ff * ss - fs * fs;
        Some(((pf * ss - ps * fs) / det, (ps * ff - pf * fs) / det))
    }

    /// Fractional pixel coordinates where the ray along `dir` meets the panel.
    pub fn ray_intersection_px(&self, dir: &Vec3) -> Option<(f64, f64)> {
        self.ray_intersection_mm(dir).map(|(x, y)| self.mm_to_pixel(x, y))
    }

    /// Whether fractional pixel coordinates fall on the panel.
    pub fn contains_px(&self, x: f64, y: f64) -> bool {
        x >= 0.0 && y >= 0.0 && x < self.image_size[0] as f64 && y < self.image_size[1] as f64
    }

    /// The lab point where the beam line meets the panel plane (dxtbx
    /// `get_beam_centre_lab`).
    pub fn beam_centre_lab(&self, unit_s0: &Vec3) -> Option<Vec3> {
        self.ray_intersection_mm(unit_s0).map(|(x, y)| self.mm_to_lab(x, y))
    }

    /// Resolution (Å) at fractional pixel coordinates for incident `s0` (Å⁻¹).
    pub fn resolution_at_px(&self, s0: &Vec3, x: f64, y: f64) -> f64 {
        let p = self.pixel_to_lab(x, y);
        let s1 = p / p.norm() * s0.norm();
        1.0 / (s1 - s0).norm()
    }
}

/// A node of the DIALS detector hierarchy. Frames are **local to the parent**.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorNode {
    pub name: String,
    pub local_fast: Vec3,
    pub local_slow: Vec3,
    pub local_origin: Vec3,
    pub children: Vec<NodeChild>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeChild {
    Panel(usize),
    Group(DetectorNode),
}

/// A frame: orthonormal axes (fast, slow, normal) and an origin, lab frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame {
    pub fast: Vec3,
    pub slow: Vec3,
    pub normal: Vec3,
    pub origin: Vec3,
}

impl Frame {
    pub fn identity() -> Frame {
        Frame { fast: Vec3::x(), slow: Vec3::y(), normal: Vec3::z(), origin: Vec3::zeros() }
    }

    fn rotation(&self) -> crate::conventions::Mat3 {
        crate::conventions::Mat3::from_columns(&[self.fast, self.slow, self.normal])
    }

    /// Compose a child's local (fast, slow, origin) into this frame.
    pub fn child(&self, fast: &Vec3, slow: &Vec3, origin: &Vec3) -> Frame {
        let r = self.rotation();
        let f = r * fast;
        let s = r * slow;
        let n = f.cross(&s);
        Frame { fast: f, slow: s, normal: n / n.norm(), origin: r * origin + self.origin }
    }

    /// Express lab-frame (fast, slow, origin) in this frame's local coordinates.
    pub fn to_local(&self, fast: &Vec3, slow: &Vec3, origin: &Vec3) -> (Vec3, Vec3, Vec3) {
        let rt = self.rotation().transpose();
        (rt * fast, rt * slow, rt * (origin - self.origin))
    }
}

/// A detector: lab-frame panels plus (optionally) the hierarchy they came from.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Detector {
    pub panels: Vec<Panel>,
    pub hierarchy: Option<DetectorNode>,
}

impl Detector {
    /// Shift every panel by `dz_mm` along lab z (diffBragg's `detz_shift`).
    /// The hierarchy root's origin moves with it, so a written file agrees.
    pub fn shift_z(&mut self, dz_mm: f64) {
        for p in &mut self.panels {
            p.origin.z += dz_mm;
        }
        if let Some(root) = &mut self.hierarchy {
            root.local_origin.z += dz_mm;
        }
    }

    pub fn n_pixels(&self) -> usize {
        self.panels.iter().map(|p| p.n_pixels()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel() -> Panel {
        Panel {
            origin: Vec3::new(-20.0, 15.0, -100.0),
            fast: Vec3::x(),
            slow: -Vec3::y(),
            pixel_size: [0.1, 0.1],
            image_size: [400, 300],
            ..Default::default()
        }
    }

    #[test]
    fn pixel_lab_roundtrip() {
        let p = panel();
        let lab = p.pixel_to_lab(123.25, 77.5);
        let (x, y) = p.ray_intersection_px(&lab).unwrap();
        assert!((x - 123.25).abs() < 1e-9 && (y - 77.5).abs() < 1e-9);
        assert_eq!(p.pixel_centre_lab(0, 0), p.pixel_to_lab(0.5, 0.5));
    }

    #[test]
    fn normals_and_distance() {
        let p = panel();
        // fast × slow = x × −y = −z, which points away from the sample here.
        assert_eq!(p.normal(), Vec3::new(0.0, 0.0, -1.0));
        assert_eq!(p.outward_normal(), Vec3::new(0.0, 0.0, -1.0));
        assert!((p.close_distance() - 100.0).abs() < 1e-12);
    }

    #[test]
    fn beam_centre_and_polarization() {
        let p = panel();
        let b = Beam { wavelength: 1.3, ..Default::default() };
        let bc = p.beam_centre_lab(&b.unit_s0()).unwrap();
        assert!((bc - Vec3::new(0.0, 0.0, -100.0)).norm() < 1e-12);
        // normal (0,1,0), beam along −z: E-vector along ±x.
        let e = b.polarization_axis();
        assert!((e.x.abs() - 1.0).abs() < 1e-12);
        assert!((b.kahn_factor() - 0.998).abs() < 1e-12);
    }

    #[test]
    fn frame_composition_roundtrip() {
        let root = Frame::identity().child(
            &Vec3::new(0.0, 1.0, 0.0),
            &Vec3::new(1.0, 0.0, 0.0),
            &Vec3::new(1.0, 2.0, -150.0),
        );
        let child = root.child(&Vec3::x(), &Vec3::y(), &Vec3::new(3.0, 4.0, 0.0));
        // child origin: R·(3,4,0) + o with R columns (y, x, −z)
        assert!((child.origin - Vec3::new(5.0, 5.0, -150.0)).norm() < 1e-12);
        let (f, s, o) = root.to_local(&child.fast, &child.slow, &child.origin);
        assert!((f - Vec3::x()).norm() < 1e-12);
        assert!((s - Vec3::y()).norm() < 1e-12);
        assert!((o - Vec3::new(3.0, 4.0, 0.0)).norm() < 1e-12);
    }

    #[test]
    fn resolution_at_beam_direction_is_infinite() {
        let p = panel();
        let b = Beam { wavelength: 1.0, ..Default::default() };
        let (x, y) = p.ray_intersection_px(&b.unit_s0()).unwrap();
        assert!(p.resolution_at_px(&b.s0(), x, y) > 1e10);
    }
}
