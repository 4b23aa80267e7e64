//! X-ray spectra: channel wavelengths (Å) and weights.
//!
//! Weight normalisation is explicit. Files and images carry arbitrary weights;
//! the kernel takes weights that **sum to the total fluence fraction 1** and
//! divides by nothing else (see `kernel`). diffBragg normalises to mean 1 and
//! divides by the number of channels, which is the same value; the reference
//! images in `shared/reference` use weights that sum to 1.

use crate::conventions::{energy_ev_from_wavelength_a, wavelength_a_from_energy_ev};

#[derive(Clone, Debug, PartialEq)]
pub struct Spectrum {
    /// Channel wavelengths, Å.
    pub wavelengths: Vec<f64>,
    /// Channel weights (arbitrary scale unless stated).
    pub weights: Vec<f64>,
}

impl Spectrum {
    pub fn new(wavelengths: Vec<f64>, weights: Vec<f64>) -> Spectrum {
        assert_eq!(wavelengths.len(), weights.len(), "spectrum arrays differ in length");
        Spectrum { wavelengths, weights }
    }

    /// One channel at `wavelength` with weight 1.
    pub fn monochromatic(wavelength: f64) -> Spectrum {
        Spectrum { wavelengths: vec![wavelength], weights: vec![1.0] }
    }

    pub fn from_energies(energies_ev: &[f64], weights: Vec<f64>) -> Spectrum {
        Spectrum::new(energies_ev.iter().map(|&e| wavelength_a_from_energy_ev(e)).collect(), weights)
    }

    pub fn energies(&self) -> Vec<f64> {
        self.wavelengths.iter().map(|&l| energy_ev_from_wavelength_a(l)).collect()
    }

    pub fn len(&self) -> usize {
        self.wavelengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wavelengths.is_empty()
    }

    pub fn total(&self) -> f64 {
        self.weights.iter().sum()
    }

    /// Weighted mean wavelength, Å (DIALS/diffBragg set the beam to this).
    pub fn mean_wavelength(&self) -> f64 {
        let t = self.total();
        self.wavelengths.iter().zip(&self.weights).map(|(l, w)| l * w).sum::<f64>() / t
    }

    /// Weighted mean energy, eV (dxtbx `get_weighted_energy_eV`).
    pub fn mean_energy(&self) -> f64 {
        let t = self.total();
        self.energies().iter().zip(&self.weights).map(|(e, w)| e * w).sum::<f64>() / t
    }

    /// A copy whose weights sum to `total`.
    pub fn normalized_to(&self, total: f64) -> Spectrum {
        let t = self.total();
        Spectrum {
            wavelengths: self.wavelengths.clone(),
            weights: self.weights.iter().map(|w| w * total / t).collect(),
        }
    }

    /// Every `stride`-th channel, starting with the first (diffBragg `spectrum.stride`).
    pub fn strided(&self, stride: usize) -> Spectrum {
        let s = stride.max(1);
        Spectrum {
            wavelengths: self.wavelengths.iter().step_by(s).copied().collect(),
            weights: self.weights.iter().step_by(s).copied().collect(),
        }
    }

    /// Checks that the arrays agree, are finite, wavelengths positive and weights ≥ 0 with a positive sum.
    pub fn validate(&self) -> Result<(), String> {
        if self.wavelengths.len() != self.weights.len() {
            return Err(format!("{} wavelengths but {} weights", self.wavelengths.len(), self.weights.len()));
        }
        if self.is_empty() {
            return Err("empty spectrum".into());
        }
        if let Some(i) = self.wavelengths.iter().position(|l| !(l.is_finite() && *l > 0.0)) {
            return Err(format!("channel {i}: wavelength {} is not a positive number", self.wavelengths[i]));
        }
        if let Some(i) = self.weights.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(format!("channel {i}: weight {} is not a non-negative number", self.weights[i]));
        }
        // `!(x > 0)` also rejects NaN.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(self.total() > 0.0) {
            return Err("weights sum to zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_and_normalisation() {
        let s = Spectrum::from_energies(&[9000.0, 9500.0, 10000.0], vec![1.0, 2.0, 1.0]);
        assert!((s.mean_energy() - 9500.0).abs() < 1e-9);
        let n = s.normalized_to(1.0);
        assert!((n.total() - 1.0).abs() < 1e-15);
        assert_eq!(s.strided(2).len(), 2);
        assert!(s.validate().is_ok());
        assert!(Spectrum::new(vec![1.0], vec![-1.0]).validate().is_err());
    }
}
