//! Unit cell and crystal orientation (conventions in [`crate::conventions`]).
//!
//! * [`UnitCell`]: a, b, c in Å and α, β, γ in degrees, with the PDB-convention
//!   real-space matrix `B_real` (upper-triangular, columns a, b, c) and the
//!   dxtbx reciprocal `B_recip = B_real⁻ᵀ` (lower-triangular).
//! * [`Crystal`]: the lab-frame real-space vectors as DIALS stores them, plus
//!   the Hall symbol and the mosaicity fields. `A = U·B_recip`, `R = U·B_real`.

use crate::conventions::{Mat3, Vec3};

/// Unit-cell parameters: edges in Å, angles in degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UnitCell {
    pub a: f64,
    pub b: f64,
    pub c: f64,
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
}

impl UnitCell {
    pub fn new(a: f64, b: f64, c: f64, alpha: f64, beta: f64, gamma: f64) -> UnitCell {
        UnitCell { a, b, c, alpha, beta, gamma }
    }

    pub fn from_array(p: [f64; 6]) -> UnitCell {
        UnitCell::new(p[0], p[1], p[2], p[3], p[4], p[5])
    }

    pub fn to_array(&self) -> [f64; 6] {
        [self.a, self.b, self.c, self.alpha, self.beta, self.gamma]
    }

    /// Cell of the real-space vectors in the columns of `real`.
    pub fn from_real_matrix(real: &Mat3) -> UnitCell {
        let a = real.column(0).into_owned();
        let b = real.column(1).into_owned();
        let c = real.column(2).into_owned();
        UnitCell::from_vectors(&a, &b, &c)
    }

    pub fn from_vectors(a: &Vec3, b: &Vec3, c: &Vec3) -> UnitCell {
        let ang =
            |u: &Vec3, v: &Vec3| (u.dot(v) / (u.norm() * v.norm())).clamp(-1.0, 1.0).acos().to_degrees();
        UnitCell::new(a.norm(), b.norm(), c.norm(), ang(b, c), ang(a, c), ang(a, b))
    }

    /// Volume, Å³.
    pub fn volume(&self) -> f64 {
        let (ca, cb, cg) =
            (self.alpha.to_radians().cos(), self.beta.to_radians().cos(), self.gamma.to_radians().cos());
        self.a * self.b * self.c * (1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg).sqrt()
    }

    /// Real-space orthogonalisation matrix (PDB convention), columns a, b, c.
    pub fn b_real(&self) -> Mat3 {
        let (ca, cb, cg) =
            (self.alpha.to_radians().cos(), self.beta.to_radians().cos(), self.gamma.to_radians().cos());
        let sg = self.gamma.to_radians().sin();
        let v = self.volume();
        Mat3::new(
            self.a,
            self.b * cg,
            self.c * cb,
            0.0,
            self.b * sg,
            self.c * (ca - cb * cg) / sg,
            0.0,
            0.0,
            v / (self.a * self.b * sg),
        )
    }

    /// dxtbx `B` (reciprocal, lower-triangular), columns a*, b*, c*.
    pub fn b_recip(&self) -> Mat3 {
        self.b_real().try_inverse().expect("degenerate unit cell").transpose()
    }

    /// Reciprocal metric tensor G* = B_recipᵀ·B_recip.
    pub fn reciprocal_metric(&self) -> Mat3 {
        let b = self.b_recip();
        b.transpose() * b
    }

    /// d-spacing of reflection h, Å.
    pub fn d_spacing(&self, hkl: [i32; 3]) -> f64 {
        let h = Vec3::new(hkl[0] as f64, hkl[1] as f64, hkl[2] as f64);
        let s2 = (h.transpose() * self.reciprocal_metric() * h)[(0, 0)];
        1.0 / s2.sqrt()
    }

    /// Whether every parameter is finite and the cell has a positive volume.
    pub fn is_valid(&self) -> bool {
        self.to_array().iter().all(|v| v.is_finite())
            && self.a > 0.0
            && self.b > 0.0
            && self.c > 0.0
            && self.volume() > 0.0
    }
}

/// A crystal model as DIALS stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Crystal {
    /// Real-space lattice vectors, lab frame, Å (columns a, b, c).
    pub real: Mat3,
    /// Hall symbol, possibly with a change of basis, e.g. `" P 61 2 (x,y,z+5/12)"`.
    pub space_group_hall: String,
    /// Sauter-2014 model: half mosaicity (deg) and domain size (Å).
    pub ml_half_mosaicity_deg: Option<f64>,
    pub ml_domain_size_ang: Option<f64>,
    /// Kabsch-2010 mosaicity, degrees.
    pub mosaicity: Option<f64>,
}

impl Crystal {
    pub fn from_vectors(a: Vec3, b: Vec3, c: Vec3, hall: &str) -> Crystal {
        Crystal {
            real: Mat3::from_columns(&[a, b, c]),
            space_group_hall: hall.to_string(),
            ml_half_mosaicity_deg: None,
            ml_domain_size_ang: None,
            mosaicity: None,
        }
    }

    /// A crystal with orientation `u` and cell `cell`: `R = U·B_real`.
    pub fn from_u_and_cell(u: &Mat3, cell: &UnitCell, hall: &str) -> Crystal {
        let real = u * cell.b_real();
        Crystal::from_vectors(
            real.column(0).into_owned(),
            real.column(1).into_owned(),
            real.column(2).into_owned(),
            hall,
        )
    }

    /// A crystal from dxtbx `A = U·B_recip`.
    pub fn from_a_matrix(a: &Mat3, hall: &str) -> Option<Crystal> {
        let real = crate::conventions::real_from_reciprocal(a)?;
        Some(Crystal::from_vectors(
            real.column(0).into_owned(),
            real.column(1).into_owned(),
            real.column(2).into_owned(),
            hall,
        ))
    }

    pub fn a(&self) -> Vec3 {
        self.real.column(0).into_owned()
    }
    pub fn b(&self) -> Vec3 {
        self.real.column(1).into_owned()
    }
    pub fn c(&self) -> Vec3 {
        self.real.column(2).into_owned()
    }

    pub fn unit_cell(&self) -> UnitCell {
        UnitCell::from_real_matrix(&self.real)
    }

    /// dxtbx `A = U·B_recip` (columns a*, b*, c*, lab frame).
    pub fn a_matrix(&self) -> Mat3 {
        crate::conventions::reciprocal_from_real(&self.real).expect("degenerate crystal")
    }

    /// dxtbx `B` of this crystal's cell.
    pub fn b_matrix(&self) -> Mat3 {
        self.unit_cell().b_recip()
    }

    /// Orientation `U = A·B_recip⁻¹` (a proper rotation).
    pub fn u_matrix(&self) -> Mat3 {
        self.a_matrix() * self.b_matrix().try_inverse().expect("degenerate cell")
    }

    /// Replace the orientation, keeping the cell.
    pub fn set_u(&mut self, u: &Mat3) {
        self.real = u * self.unit_cell().b_real();
    }

    /// Replace the cell, keeping the orientation.
    pub fn set_unit_cell(&mut self, cell: &UnitCell) {
        let u = self.u_matrix();
        self.real = u * cell.b_real();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conventions::{axis_angle, fractional_hkl, rlp_from_hkl};

    #[test]
    fn b_matrices_are_inverse_transposes_and_triangular() {
        let cell = UnitCell::new(55.0, 65.0, 75.0, 88.0, 95.0, 101.0);
        let br = cell.b_real();
        let bs = cell.b_recip();
        assert!((br.transpose() * bs - Mat3::identity()).abs().max() < 1e-12);
        assert_eq!(br[(1, 0)], 0.0);
        assert_eq!(br[(2, 0)], 0.0);
        assert_eq!(br[(2, 1)], 0.0);
        assert!(bs[(0, 1)].abs() < 1e-15 && bs[(0, 2)].abs() < 1e-15 && bs[(1, 2)].abs() < 1e-15);
        let back = UnitCell::from_real_matrix(&br);
        for (x, y) in back.to_array().iter().zip(cell.to_array()) {
            assert!((x - y).abs() < 1e-10);
        }
    }

    #[test]
    fn orthorhombic_d_spacing() {
        let cell = UnitCell::new(10.0, 20.0, 40.0, 90.0, 90.0, 90.0);
        assert!((cell.d_spacing([1, 0, 0]) - 10.0).abs() < 1e-12);
        let d = cell.d_spacing([1, 2, 4]);
        assert!((d - 1.0 / (3.0f64 * 0.01).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn u_b_roundtrip_and_indexing() {
        let cell = UnitCell::new(79.1, 79.1, 38.2, 90.0, 90.0, 90.0);
        let u = axis_angle(&Vec3::new(0.2, 0.7, -0.4), 0.83);
        let x = Crystal::from_u_and_cell(&u, &cell, " P 4nw 2abw");
        assert!((x.u_matrix() - u).abs().max() < 1e-12);
        let a = x.a_matrix();
        assert!((a - u * cell.b_recip()).abs().max() < 1e-14);
        let q = rlp_from_hkl(&a, [5, -3, 7]);
        let h = fractional_hkl(&x.real, &q);
        assert!((h - Vec3::new(5.0, -3.0, 7.0)).norm() < 1e-10);
        let mut y = x.clone();
        let new_cell = UnitCell::new(80.0, 80.0, 38.0, 90.0, 90.0, 90.0);
        y.set_unit_cell(&new_cell);
        assert!((y.u_matrix() - u).abs().max() < 1e-12);
        assert!((y.unit_cell().a - 80.0).abs() < 1e-10);
    }
}
