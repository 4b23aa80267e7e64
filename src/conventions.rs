//! The one place that owns frames, units and sign conventions.
//!
//! Every other module converts through the functions here; none of them
//! re-derives a convention on its own.
//!
//! # Lab frame
//! The dxtbx/imgCIF laboratory frame: right-handed, the sample at the origin,
//! the beam propagating along −z in the usual XFEL set-up, +y up. Nothing in
//! this crate assumes the beam runs along an axis; every quantity is a vector.
//!
//! # Units
//! | quantity                         | unit in files        | unit in memory       |
//! |----------------------------------|----------------------|----------------------|
//! | detector origins, pixel sizes    | mm                   | mm                   |
//! | wavelength                       | Å                    | Å                    |
//! | cell edges                       | Å                    | Å                    |
//! | cell angles                      | degrees              | degrees (API), radians inside maths |
//! | q, s0, s1, rlp                   | Å⁻¹ (no 2π)          | Å⁻¹                  |
//! | energies                         | eV                   | eV                   |
//! | rotX/Y/Z, η derivatives          | radians / degrees    | as stated per field  |
//! | detector distance shift          | mm (phil, tables)    | mm                   |
//!
//! The kernel works in mm for positions: the solid angle `px²·cd/R³` is
//! dimensionless, so the choice of length unit cancels as long as it is
//! consistent (diffBragg uses metres, which gives the same number).
//!
//! # Beam direction
//! DIALS stores the beam `direction` as the unit vector from the sample
//! **towards the source**. The incident wave vector is therefore
//! `s0 = −direction/λ`. [`s0_unit_from_direction`] is the only place that flips it.
//!
//! # Crystal matrices
//! * `B_recip` (dxtbx `get_B()`): lower-triangular, columns a*, b*, c* in the
//!   crystal Cartesian frame, Å⁻¹.
//! * `B_real`: upper-triangular (PDB convention: a ∥ x, b in the xy-plane),
//!   columns a, b, c, Å. `B_real = B_recip⁻ᵀ`.
//! * `A = U·B_recip` (dxtbx `get_A()`): columns a*, b*, c* in the lab frame;
//!   the reciprocal-lattice point of h is `q = A·h`.
//! * The real-space matrix `R = U·B_real = A⁻ᵀ` has columns a, b, c in the lab
//!   frame; the fractional Miller index of a scattering vector is `h = Rᵀ·q`.
//!
//! # Misorientation angles
//! diffBragg's rotX/Y/Z: each is a rotation by +θ about the **negative** axis
//! (−θ about +axis), applied on the left in the order `Rx·Ry·Rz`, so the
//! refined orientation is `U' = Rx·Ry·Rz·U`. Mosaic domain rotations are applied
//! further left, in the lab frame: `A_real(m) = Umos_m·Rx·Ry·Rz·U·B_real`.
//!
//! # Miller rounding
//! The nearest lattice point is `h0 = ceil(h − ½)` per component, so exact
//! halves round **down** (diffBragg and DIALS `refls_to_hkl`). See [`round_miller`].
//!
//! # Pixel coordinates
//! dxtbx pixel `i` spans `[i, i+1)`; its centre is at `i + 0.5`. Fractional
//! pixel coordinates `(x, y)` are (fast, slow). Image arrays are (slow, fast).

use nalgebra::{Matrix3, Vector3};

pub type Vec3 = Vector3<f64>;
pub type Mat3 = Matrix3<f64>;

/// h·c/e in eV·Å (CODATA 2018 exact constants; cctbx `factor_ev_angstrom`).
pub const EV_ANGSTROM: f64 = 12398.419843320026;

/// Classical electron radius squared, m² (nanoBragg's `r_e_sqr`).
pub const R_E_SQR_M2: f64 = 7.94079248018965e-30;

/// Lattice-shape width constant of the diffBragg/nanoBragg Gaussian (`0.63`).
pub const GAUSS_WIDTH: f64 = 0.63;

/// Millimetres per metre.
pub const MM_PER_M: f64 = 1000.0;

/// Photon energy (eV) of a wavelength (Å).
#[inline]
pub fn energy_ev_from_wavelength_a(lambda_a: f64) -> f64 {
    EV_ANGSTROM / lambda_a
}

/// Wavelength (Å) of a photon energy (eV).
#[inline]
pub fn wavelength_a_from_energy_ev(energy_ev: f64) -> f64 {
    EV_ANGSTROM / energy_ev
}

/// Unit incident-beam vector (along propagation) from a DIALS `direction`
/// (sample→source). Panics never; a zero vector gives NaNs, which callers
/// reject when validating a beam.
#[inline]
pub fn s0_unit_from_direction(direction: &Vec3) -> Vec3 {
    -direction / direction.norm()
}

/// DIALS `direction` (sample→source) from an incident unit vector.
#[inline]
pub fn direction_from_s0_unit(s0_unit: &Vec3) -> Vec3 {
    -s0_unit / s0_unit.norm()
}

/// Incident wave vector `s0 = −direction̂/λ` (Å⁻¹).
#[inline]
pub fn s0_from_direction(direction: &Vec3, lambda_a: f64) -> Vec3 {
    s0_unit_from_direction(direction) / lambda_a
}

/// Nearest integer with halves rounding down: `ceil(x − ½)`.
#[inline]
pub fn round_miller(x: f64) -> i32 {
    (x - 0.5).ceil() as i32
}

/// [`round_miller`] applied per component.
#[inline]
pub fn round_miller3(h: &Vec3) -> [i32; 3] {
    [round_miller(h.x), round_miller(h.y), round_miller(h.z)]
}

/// diffBragg rotX: rotation by −θ about +x (θ in radians).
pub fn rot_x(theta: f64) -> Mat3 {
    let (s, c) = theta.sin_cos();
    Mat3::new(1.0, 0.0, 0.0, 0.0, c, s, 0.0, -s, c)
}

/// diffBragg rotY: rotation by −θ about +y.
pub fn rot_y(theta: f64) -> Mat3 {
    let (s, c) = theta.sin_cos();
    Mat3::new(c, 0.0, -s, 0.0, 1.0, 0.0, s, 0.0, c)
}

/// diffBragg rotZ: rotation by −θ about +z.
pub fn rot_z(theta: f64) -> Mat3 {
    let (s, c) = theta.sin_cos();
    Mat3::new(c, s, 0.0, -s, c, 0.0, 0.0, 0.0, 1.0)
}

/// d/dθ of [`rot_x`].
pub fn drot_x(theta: f64) -> Mat3 {
    let (s, c) = theta.sin_cos();
    Mat3::new(0.0, 0.0, 0.0, 0.0, -s, c, 0.0, -c, -s)
}

/// d/dθ of [`rot_y`].
pub fn drot_y(theta: f64) -> Mat3 {
    let (s, c) = theta.sin_cos();
    Mat3::new(-s, 0.0, -c, 0.0, 0.0, 0.0, c, 0.0, -s)
}

/// d/dθ of [`rot_z`].
pub fn drot_z(theta: f64) -> Mat3 {
    let (s, c) = theta.sin_cos();
    Mat3::new(-s, c, 0.0, -c, -s, 0.0, 0.0, 0.0, 0.0)
}

/// The misorientation `Rx·Ry·Rz` (order fixed here, used everywhere).
pub fn rot_xyz(rx: f64, ry: f64, rz: f64) -> Mat3 {
    rot_x(rx) * rot_y(ry) * rot_z(rz)
}

/// Right-handed rotation by `angle` (radians) about unit `axis` (Rodrigues).
pub fn axis_angle(axis: &Vec3, angle: f64) -> Mat3 {
    let k = axis / axis.norm();
    let (s, c) = angle.sin_cos();
    let kx = Mat3::new(0.0, -k.z, k.y, k.z, 0.0, -k.x, -k.y, k.x, 0.0);
    Mat3::identity() + kx * s + kx * kx * (1.0 - c)
}

/// d/dangle of [`axis_angle`].
pub fn daxis_angle(axis: &Vec3, angle: f64) -> Mat3 {
    let k = axis / axis.norm();
    let (s, c) = angle.sin_cos();
    let kx = Mat3::new(0.0, -k.z, k.y, k.z, 0.0, -k.x, -k.y, k.x, 0.0);
    kx * c + kx * kx * s
}

/// The rotation of the unit quaternion `(w, x, y, z)` (w the scalar part;
/// active, right-handed: it rotates vectors by 2·acos(w) about (x, y, z)).
pub fn quaternion_matrix(w: f64, x: f64, y: f64, z: f64) -> Mat3 {
    Mat3::new(
        1.0 - 2.0 * (y * y + z * z),
        2.0 * (x * y - z * w),
        2.0 * (x * z + y * w),
        2.0 * (x * y + z * w),
        1.0 - 2.0 * (x * x + z * z),
        2.0 * (y * z - x * w),
        2.0 * (x * z - y * w),
        2.0 * (y * z + x * w),
        1.0 - 2.0 * (x * x + y * y),
    )
}

/// Real-space matrix (columns a, b, c, lab frame) from dxtbx `A = U·B_recip`.
pub fn real_from_reciprocal(a_recip: &Mat3) -> Option<Mat3> {
    a_recip.try_inverse().map(|m| m.transpose())
}

/// dxtbx `A` (columns a*, b*, c*) from the real-space matrix (columns a, b, c).
pub fn reciprocal_from_real(real: &Mat3) -> Option<Mat3> {
    real.try_inverse().map(|m| m.transpose())
}

/// Fractional Miller index `h = Rᵀ·q` for real-space matrix `R` (columns a, b, c).
#[inline]
pub fn fractional_hkl(real: &Mat3, q: &Vec3) -> Vec3 {
    real.transpose() * q
}

/// Reciprocal-lattice point `q = A·h`.
#[inline]
pub fn rlp_from_hkl(a_recip: &Mat3, hkl: [i32; 3]) -> Vec3 {
    a_recip * Vec3::new(hkl[0] as f64, hkl[1] as f64, hkl[2] as f64)
}

/// Convert a row-major 9-slice (dxtbx/JSON order) to a matrix.
pub fn mat3_from_row_major(v: &[f64]) -> Mat3 {
    assert!(v.len() == 9, "mat3 needs 9 values");
    Mat3::new(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8])
}

/// Row-major 9 values of a matrix (dxtbx/JSON order).
pub fn mat3_to_row_major(m: &Mat3) -> [f64; 9] {
    [m[(0, 0)], m[(0, 1)], m[(0, 2)], m[(1, 0)], m[(1, 1)], m[(1, 2)], m[(2, 0)], m[(2, 1)], m[(2, 2)]]
}

/// Three-vector from a slice.
pub fn vec3(v: &[f64]) -> Vec3 {
    Vec3::new(v[0], v[1], v[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Mat3, b: &Mat3, tol: f64) -> bool {
        (a - b).abs().max() < tol
    }

    #[test]
    fn energy_wavelength_roundtrip() {
        let e = 9500.0;
        let l = wavelength_a_from_energy_ev(e);
        assert!((l - 1.305097).abs() < 1e-6, "{l}");
        assert!((energy_ev_from_wavelength_a(l) - e).abs() < 1e-9);
    }

    #[test]
    fn beam_direction_is_sample_to_source() {
        // DIALS direction (0,0,1) means the beam travels along −z.
        let s0 = s0_from_direction(&Vec3::new(0.0, 0.0, 1.0), 2.0);
        assert_eq!(s0, Vec3::new(0.0, 0.0, -0.5));
        let d = direction_from_s0_unit(&Vec3::new(0.0, 0.0, -1.0));
        assert_eq!(d, Vec3::new(0.0, 0.0, 1.0));
    }

    #[test]
    fn miller_rounding_halves_go_down() {
        assert_eq!(round_miller(0.5), 0);
        assert_eq!(round_miller(-0.5), -1);
        assert_eq!(round_miller(1.49), 1);
        assert_eq!(round_miller(1.51), 2);
        assert_eq!(round_miller(-1.51), -2);
        assert_eq!(round_miller(2.0), 2);
    }

    #[test]
    fn rotations_are_minus_theta_about_plus_axis() {
        let t = 0.3;
        assert!(close(&rot_x(t), &axis_angle(&Vec3::x(), -t), 1e-14));
        assert!(close(&rot_y(t), &axis_angle(&Vec3::y(), -t), 1e-14));
        assert!(close(&rot_z(t), &axis_angle(&Vec3::z(), -t), 1e-14));
        assert!(close(&rot_xyz(0.1, 0.2, 0.3), &(rot_x(0.1) * rot_y(0.2) * rot_z(0.3)), 1e-15));
    }

    #[test]
    fn rotation_derivatives_match_finite_differences() {
        let t = 0.37;
        let h = 1e-6;
        for (f, df) in
            [(rot_x as fn(f64) -> Mat3, drot_x as fn(f64) -> Mat3), (rot_y, drot_y), (rot_z, drot_z)]
        {
            let fd = (f(t + h) - f(t - h)) / (2.0 * h);
            assert!(close(&fd, &df(t), 1e-9));
        }
        let ax = Vec3::new(0.3, -0.5, 0.8).normalize();
        let fd = (axis_angle(&ax, t + h) - axis_angle(&ax, t - h)) / (2.0 * h);
        assert!(close(&fd, &daxis_angle(&ax, t), 1e-9));
    }

    #[test]
    fn real_reciprocal_roundtrip_and_index() {
        let real = Mat3::new(10.0, 1.0, 0.5, 0.0, 12.0, -0.3, 0.2, 0.0, 15.0);
        let a = reciprocal_from_real(&real).unwrap();
        let back = real_from_reciprocal(&a).unwrap();
        assert!(close(&real, &back, 1e-12));
        let q = rlp_from_hkl(&a, [3, -2, 5]);
        let h = fractional_hkl(&real, &q);
        assert!((h - Vec3::new(3.0, -2.0, 5.0)).norm() < 1e-12);
    }

    #[test]
    fn row_major_roundtrip() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let m = mat3_from_row_major(&v);
        assert_eq!(m[(0, 1)], 2.0);
        assert_eq!(m[(1, 0)], 4.0);
        assert_eq!(mat3_to_row_major(&m), v);
    }

    #[test]
    fn quaternion_matrix_is_the_axis_angle_rotation() {
        let (axis, angle) = (Vec3::new(1.0, -2.0, 0.5).normalize(), 0.7_f64);
        let (h, sn) = ((angle / 2.0).cos(), (angle / 2.0).sin());
        let q = quaternion_matrix(h, sn * axis.x, sn * axis.y, sn * axis.z);
        assert!((q - axis_angle(&axis, angle)).norm() < 1e-14);
        // A quarter turn about z takes x to y.
        let r = quaternion_matrix(0.5f64.sqrt(), 0.0, 0.0, 0.5f64.sqrt());
        assert!((r * Vec3::x() - Vec3::y()).norm() < 1e-15);
    }
}
