//! Evaluations that predict and simulate need, written once over
//! [`Backend`], so the CPU and CUDA runs share every line but the kernel call:
//! values of a pixel list, the full-detector image, and the per-pixel mean
//! wavelength of laue mode.
//!
//! # Conventions
//! * Values are the kernel's Bragg photons (G included, no background), in the
//!   order of the pixels given; the full image is panel after panel,
//!   slow-major ([`full_detector_pixels`]).
//! * [`mean_wavelength`] is the definition of [`crate::kernel::wavelength`]
//!   (two forward passes: the model, and the model with source weights
//!   `w_c·λ'_c`), so both passes run on the backend. With the CPU backend it
//!   equals [`crate::kernel::mean_wavelength`] bit for bit (tested).
//! * One shot per launch: prediction builds a structure-factor table per shot
//!   (the flat index set depends on the shot's refined cell) and a batch takes
//!   one table, so shots are not batched; a full detector is millions of
//!   pixels, which fills a GPU on its own.

use super::backend::{Backend, Mode, PixelBatch};
use crate::error::{Error, Result};
use crate::kernel::{full_detector_pixels, FhklTable, Pixel, PreparedShot, ShotModel};

/// Bragg values of `pixels` (owned, so a large list is not copied again).
pub fn forward_pixels(
    backend: &dyn Backend,
    model: &ShotModel,
    fhkl: &FhklTable,
    pixels: Vec<Pixel>,
) -> Result<Vec<f64>> {
    forward_prepared(backend, &PreparedShot::new(model, fhkl, None, &[])?, pixels)
}

/// [`forward_pixels`] of a shot already prepared (without parameters).
pub fn forward_prepared(
    backend: &dyn Backend,
    shot: &PreparedShot<'_>,
    pixels: Vec<Pixel>,
) -> Result<Vec<f64>> {
    let batch = PixelBatch::new(vec![pixels]);
    let mut out = backend.evaluate(&[shot], &batch, Mode::Forward, None)?;
    let values = out.values.pop().unwrap_or_default();
    if values.len() != batch.len() {
        return Err(Error::msg(format!(
            "backend {}: {} values for {} pixels",
            backend.name(),
            values.len(),
            batch.len()
        )));
    }
    Ok(values)
}

/// Every pixel of the detector (panel after panel, slow-major).
pub fn simulate_image(backend: &dyn Backend, model: &ShotModel, fhkl: &FhklTable) -> Result<Vec<f64>> {
    forward_pixels(backend, model, fhkl, full_detector_pixels(&model.detector))
}

/// λ̄ (Å) of each of `pixels` ([`crate::kernel::wavelength`]'s definition).
/// `values`: the model's own values of these pixels if already computed
/// (saves one pass); NaN where the model has no Bragg signal.
pub fn mean_wavelength(
    backend: &dyn Backend,
    model: &ShotModel,
    fhkl: &FhklTable,
    pixels: &[Pixel],
    values: Option<&[f64]>,
) -> Result<Vec<f64>> {
    crate::kernel::wavelength::mean_wavelength_with(model, pixels.len(), values, |m| {
        forward_pixels(backend, m, fhkl, pixels.to_vec())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conventions::{axis_angle, Vec3};
    use crate::crystal::UnitCell;
    use crate::geometry::{Beam, Detector, Panel};
    use crate::gpu::{BatchOutput, CpuBackend};
    use crate::kernel::{CrystalModel, Eta, MosaicSpec, Source};
    use crate::ucell::{LatticeSystem, UcellParams};

    /// Two panels, a pink spectrum, mosaic domains and a λ correction.
    fn model() -> ShotModel {
        let panel = |x0: f64| Panel {
            origin: Vec3::new(x0, 5.0, -55.0),
            fast: Vec3::x(),
            slow: -Vec3::y(),
            pixel_size: [0.1, 0.1],
            image_size: [90, 100],
            ..Default::default()
        };
        let cell = UnitCell::new(39.0, 45.0, 51.0, 90.0, 90.0, 90.0);
        let u = axis_angle(&Vec3::new(0.3, -0.2, 0.9), 0.7);
        let mut c = CrystalModel::new(
            u,
            UcellParams::from_cell(LatticeSystem::Orthorhombic, &cell).unwrap(),
            [9.0, 8.0, 7.0],
        );
        c.mosaic = MosaicSpec::Generated { n_domains: 2, eta: Eta::Iso(0.04), axes: u * cell.b_real() };
        let sources = (0..5)
            .map(|i| Source { wavelength: 1.28 + 0.01 * i as f64, weight: 1.0 + i as f64, channel: 0 })
            .collect();
        let mut m = ShotModel::new(
            Detector { panels: vec![panel(-9.0), panel(0.5)], hierarchy: None },
            Beam::default(),
            sources,
            c,
            1e24,
        );
        m.lambda_coef = [0.005, 0.998];
        m
    }

    /// The CPU backend, with every call counted and its values multiplied by `gain`.
    struct Probe {
        gain: f64,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Backend for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn describe(&self) -> String {
            "probe".into()
        }
        fn evaluate(
            &self,
            shots: &[&PreparedShot<'_>],
            pixels: &PixelBatch,
            mode: Mode,
            weights: Option<&[f64]>,
        ) -> Result<BatchOutput> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut out = CpuBackend.evaluate(shots, pixels, mode, weights)?;
            out.values.iter_mut().flatten().for_each(|v| *v *= self.gain);
            Ok(out)
        }
    }

    #[test]
    fn cpu_backend_gives_the_kernel_functions_bit_for_bit() {
        let m = model();
        let fhkl = FhklTable::new(&[[1, 1, 0]], &[3.0], 150.0, false).unwrap();
        let img = simulate_image(&CpuBackend, &m, &fhkl).unwrap();
        let want = crate::kernel::simulate_image(&m, &fhkl).unwrap();
        assert_eq!(img, want);
        let max = want.iter().cloned().fold(0.0, f64::max);
        let px: Vec<Pixel> = full_detector_pixels(&m.detector)
            .into_iter()
            .zip(&want)
            .filter(|(_, &v)| v > 1e-4 * max)
            .map(|(p, _)| p)
            .collect();
        assert!(px.len() > 100, "only {} bright pixels", px.len());
        let vals: Vec<f64> = px
            .iter()
            .map(|p| want[p.panel as usize * 9000 + p.slow as usize * 90 + p.fast as usize])
            .collect();
        for v in [None, Some(&vals[..])] {
            let got = mean_wavelength(&CpuBackend, &m, &fhkl, &px, v).unwrap();
            let want = crate::kernel::mean_wavelength(&m, &fhkl, &px, v).unwrap();
            assert_eq!(got, want);
            // λ̄ lies in the corrected band and varies across the pixels.
            let (lo, hi) = got.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
            assert!(lo >= 0.005 + 0.998 * 1.28 - 1e-12 && hi <= 0.005 + 0.998 * 1.32 + 1e-12, "{lo} {hi}");
            assert!(hi - lo > 1e-3, "{lo}..{hi}");
        }
        assert!(mean_wavelength(&CpuBackend, &m, &fhkl, &px, Some(&vals[1..])).is_err());
    }

    #[test]
    fn both_passes_run_on_the_backend() {
        let m = model();
        let fhkl = FhklTable::new(&[[1, 1, 0]], &[3.0], 150.0, false).unwrap();
        let probe = Probe { gain: 2.0, calls: Default::default() };
        let img = simulate_image(&probe, &m, &fhkl).unwrap();
        assert_eq!(probe.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        let cpu = simulate_image(&CpuBackend, &m, &fhkl).unwrap();
        assert!(img.iter().zip(&cpu).all(|(a, b)| *a == 2.0 * b));
        let px: Vec<Pixel> = full_detector_pixels(&m.detector).into_iter().step_by(7).collect();
        let lam_probe = mean_wavelength(&probe, &m, &fhkl, &px, None).unwrap();
        assert_eq!(probe.calls.load(std::sync::atomic::Ordering::Relaxed), 3);
        // The gain cancels in B/A when both passes go through the backend.
        let lam_cpu = mean_wavelength(&CpuBackend, &m, &fhkl, &px, None).unwrap();
        let n = lam_cpu.iter().filter(|x| x.is_finite()).count();
        assert!(n > 10);
        for (a, b) in lam_probe.iter().zip(&lam_cpu) {
            assert!((a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-15 * b, "{a} vs {b}");
        }
        // With values given, only the weighted pass runs (and the gain no longer cancels).
        let vals = forward_pixels(&CpuBackend, &m, &fhkl, px.clone()).unwrap();
        let half = mean_wavelength(&probe, &m, &fhkl, &px, Some(&vals)).unwrap();
        assert_eq!(probe.calls.load(std::sync::atomic::Ordering::Relaxed), 4);
        for (a, b) in half.iter().zip(&lam_cpu) {
            assert!((a.is_nan() && b.is_nan()) || (a - 2.0 * b).abs() <= 1e-14 * b, "{a} vs 2·{b}");
        }
    }
}
