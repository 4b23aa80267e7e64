//! Per-pixel model-weighted mean wavelength: what diffBragg's kernel stores
//! in its `wavelenimage` when `perpixel_wavelen` is on, and what predict's
//! `laue_mode` needs to index a spot with the wavelength that made it.
//!
//! # Definition
//! `λ̄_p = Σ_steps λ'_c·I_step / Σ_steps I_step` over every step of pixel p
//! (sub-pixels, sensor layers, mosaic domains, sources), where
//! `λ'_c = λ0 + λ1·λ_c` is the **corrected** wavelength of the step's source
//! (diffBragg accumulates `Iincrement·lambda_ang` after the λ0/λ1
//! correction) and `I_step` the step's full contribution to the pixel value.
//!
//! # How
//! Two forward passes of the one kernel, no second copy of the physics: the
//! model as given (weights w_c), and the same model with weights `w_c·λ'_c`.
//! The kernel normalises the weights to sum 1, so the passes give
//! `A = K·Σ w_c I_c / Σw` and `B = K·Σ w_c λ'_c I_c / Σ(wλ')`, hence
//! `λ̄ = (B/A)·Σ(wλ')/Σw`. Everything that does not depend on the source
//! (Ω, polarization, G, fluence) cancels. Pixels with no Bragg signal
//! (A = 0) get NaN. Callers evaluate it on the few pixels they need (the
//! predicted spots), so the second pass costs little.

use super::fhkl::FhklTable;
use super::pixels::Pixel;
use super::prepared::PreparedShot;
use super::shot::ShotModel;
use crate::error::{Error, Result};

/// λ̄ (Å) of each of `pixels`. `values`: the model's own values of these
/// pixels if already computed (saves one pass); they must come from `model`.
pub fn mean_wavelength(
    model: &ShotModel,
    fhkl: &FhklTable,
    pixels: &[Pixel],
    values: Option<&[f64]>,
) -> Result<Vec<f64>> {
    mean_wavelength_with(model, pixels.len(), values, |m| {
        PreparedShot::new(m, fhkl, None, &[])?.forward(pixels)
    })
}

/// The two-pass λ̄ of `n` pixels with any evaluator of the model's values
/// (`forward(m)` = the values of those pixels under model `m`), so every
/// backend shares one definition.
pub fn mean_wavelength_with(
    model: &ShotModel,
    n: usize,
    values: Option<&[f64]>,
    forward: impl Fn(&ShotModel) -> Result<Vec<f64>>,
) -> Result<Vec<f64>> {
    let a_owned;
    let a: &[f64] = match values {
        Some(v) => {
            if v.len() != n {
                return Err(Error::param("values", format!("{} values for {n} pixels", v.len())));
            }
            v
        }
        None => {
            a_owned = forward(model)?;
            &a_owned
        }
    };
    let [l0, l1] = model.lambda_coef;
    let mut weighted = model.clone();
    let mut w_sum = 0.0;
    let mut wl_sum = 0.0;
    for s in &mut weighted.sources {
        let lp = l0 + l1 * s.wavelength;
        w_sum += s.weight;
        wl_sum += s.weight * lp;
        s.weight *= lp;
    }
    // `PreparedShot::new` validates the corrected wavelengths (> 0), so the
    // weighted model is valid whenever the original is.
    let b = forward(&weighted)?;
    let scale = wl_sum / w_sum;
    Ok(a.iter().zip(&b).map(|(&a, &b)| if a > 0.0 { b / a * scale } else { f64::NAN }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conventions::{axis_angle, Vec3};
    use crate::crystal::UnitCell;
    use crate::geometry::{Beam, Detector, Panel};
    use crate::kernel::{full_detector_pixels, CrystalModel, Eta, MosaicSpec, Source};
    use crate::ucell::{LatticeSystem, UcellParams};

    fn model() -> ShotModel {
        let panel = Panel {
            origin: Vec3::new(-6.0, 6.0, -60.0),
            fast: Vec3::x(),
            slow: -Vec3::y(),
            pixel_size: [0.1, 0.1],
            image_size: [120, 120],
            ..Default::default()
        };
        let cell = UnitCell::new(41.0, 47.0, 53.0, 90.0, 90.0, 90.0);
        let u = axis_angle(&Vec3::new(0.2, -0.4, 0.9), 0.8);
        let mut c = CrystalModel::new(
            u,
            UcellParams::from_cell(LatticeSystem::Orthorhombic, &cell).unwrap(),
            [8.0, 9.0, 7.0],
        );
        c.mosaic = MosaicSpec::Generated { n_domains: 4, eta: Eta::Iso(0.05), axes: u * cell.b_real() };
        // A wide, uneven spectrum so λ̄ varies across each spot.
        let sources = (0..7)
            .map(|i| Source { wavelength: 1.25 + 0.012 * i as f64, weight: 1.0 + (i % 3) as f64, channel: 0 })
            .collect();
        let mut m = ShotModel::new(
            Detector { panels: vec![panel], hierarchy: None },
            Beam::default(),
            sources,
            c,
            1e24,
        );
        m.oversample = 2;
        m.lambda_coef = [0.01, 0.995];
        m
    }

    #[test]
    fn matches_the_per_source_sum() {
        let m = model();
        let fhkl = FhklTable::new(&[[1, 0, 0]], &[1.0], 100.0, false).unwrap();
        let px = full_detector_pixels(&m.detector);
        let total = PreparedShot::new(&m, &fhkl, None, &[]).unwrap().forward(&px).unwrap();
        let lam = mean_wavelength(&m, &fhkl, &px, None).unwrap();
        let lam2 = mean_wavelength(&m, &fhkl, &px, Some(&total)).unwrap();
        // Independent route: one single-source model per channel.
        let mut num = vec![0.0; px.len()];
        let mut den = vec![0.0; px.len()];
        for s in &m.sources {
            let mut one = m.clone();
            one.sources = vec![*s];
            let v = PreparedShot::new(&one, &fhkl, None, &[]).unwrap().forward(&px).unwrap();
            let lp = m.lambda_coef[0] + m.lambda_coef[1] * s.wavelength;
            for k in 0..px.len() {
                num[k] += s.weight * lp * v[k];
                den[k] += s.weight * v[k];
            }
        }
        let max = total.iter().cloned().fold(0.0, f64::max);
        let mut checked = 0;
        let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
        for k in 0..px.len() {
            if total[k] > 1e-6 * max {
                let want = num[k] / den[k];
                assert!((lam[k] - want).abs() < 1e-12, "pixel {k}: {} vs {want}", lam[k]);
                assert_eq!(lam[k], lam2[k]);
                lo = lo.min(lam[k]);
                hi = hi.max(lam[k]);
                checked += 1;
            } else if total[k] == 0.0 {
                assert!(lam[k].is_nan());
            }
        }
        assert!(checked > 50, "only {checked} pixels with signal");
        // The corrected band is 0.01 + 0.995·[1.25, 1.322]: λ̄ spans a real part of it.
        assert!(lo >= 0.01 + 0.995 * 1.25 - 1e-12 && hi <= 0.01 + 0.995 * 1.322 + 1e-12);
        assert!(hi - lo > 0.02, "λ̄ range {lo}..{hi} too narrow to test anything");
        assert!(mean_wavelength(&m, &fhkl, &px, Some(&total[1..])).is_err());
    }
}
