//! `diffbragg bench kernel --device cuda`: the standard case of
//! [`crate::cli::bench`] on a [`Backend`].
//!
//! * Stage 1 (one shot per evaluation): steps/s and seconds per shot
//!   evaluation, forward and forward + the stage-1 gradients (+ detz).
//! * Stage 2: a batch of `--batch-shots` shots per launch with resident
//!   pixels, one forward pass plus one Fhkl-scale-gradient pass per
//!   evaluation; reported as seconds per shot-evaluation.
//! * A check line compares the backend's values with the CPU kernel's.

use super::backend::{Backend, Mode, PixelBatch};
use crate::cli::bench::{find_rois, standard_case, KernelBenchArgs};
use crate::conventions::Mat3;
use crate::kernel::{generate_umats, pixels_from_rois, Eta, FhklScales, MosaicSpec, Param, PreparedShot};
use anyhow::Result;
use std::time::Instant;

/// Run the benchmark on `backend`.
pub fn run(backend: &dyn Backend, a: &KernelBenchArgs) -> Result<()> {
    let (base, mut fhkl) = standard_case(a.sources)?;
    let n_grid = fhkl.n_grid() as u32;
    let ids: Vec<u32> = (0..n_grid).collect();
    fhkl.set_asu_id_vec(&ids)?;
    let fhkl = fhkl;
    let rois = find_rois(&base, &fhkl, a.rois, a.roi_size)?;
    let (pixels, _) = pixels_from_rois(&rois, &base.detector)?;
    println!("backend: {}", backend.describe());
    println!(
        "standard case: {} ROIs of {}×{} px = {} px, {} sources; stage-2 batch: {} shots",
        rois.len(),
        a.roi_size,
        a.roi_size,
        pixels.len(),
        a.sources,
        a.batch_shots
    );
    println!("{:>7} {:>10} {:>12} {:>14} {:>14}", "domains", "mode", "steps/eval", "steps/s", "s/shot-eval");
    for &nd in &a.domains {
        let mut m = base.clone();
        if nd > 1 {
            let axes = m.crystal.u * m.crystal.ucell.b_real();
            let gen = generate_umats(nd + nd % 2, &Eta::Iso(0.05), &axes)?;
            let mut umats = vec![Mat3::identity()];
            umats.extend_from_slice(&gen.umats[..nd - 1]);
            m.crystal.mosaic = MosaicSpec::Explicit(umats);
        }
        let steps = (pixels.len() * a.sources * nd * m.oversample * m.oversample) as f64;
        let mut params = Param::stage1_defaults(&m.crystal);
        params.push(Param::DetzShift);
        let batch = PixelBatch::single(&pixels);

        // Agreement with the CPU kernel (first evaluation).
        let fwd = PreparedShot::new(&m, &fhkl, None, &[])?;
        let ours = backend.evaluate(&[&fwd], &batch, Mode::Forward, None)?.values.remove(0);
        let cpu = fwd.forward(&pixels)?;
        let max = cpu.iter().fold(0.0f64, |x, v| x.max(v.abs()));
        let dev = ours.iter().zip(&cpu).fold(0.0f64, |x, (a, b)| x.max((a - b).abs()));
        println!("{nd:>7} {:>10} max |{} − cpu| / max|cpu| = {:.2e}", "check", backend.name(), dev / max);

        for (mode, ps) in [("forward", &[][..]), ("fwd+grad", &params[..])] {
            let wanted = match a.mode.as_str() {
                "forward" => mode == "forward",
                "grad" => mode != "forward",
                _ => true,
            };
            if !wanted {
                continue;
            }
            let shot = PreparedShot::new(&m, &fhkl, None, ps)?;
            let md = if ps.is_empty() { Mode::Forward } else { Mode::Derivs };
            let t = best_of(a.repeat, || {
                std::hint::black_box(backend.evaluate(&[&shot], &batch, md, None)?);
                Ok(())
            })?;
            println!("{nd:>7} {mode:>10} {steps:>12.3e} {:>14.3e} {t:>14.4e}", steps / t);
        }

        if a.mode != "forward" {
            // Stage 2: a batch of shots (G varies so they are not literally identical).
            let scales = FhklScales::ones(fhkl.n_asu(), 1);
            let models: Vec<_> = (0..a.batch_shots)
                .map(|i| {
                    let mut mi = m.clone();
                    mi.scale = 1.0 + 0.01 * i as f64;
                    mi
                })
                .collect();
            let shots: Vec<PreparedShot> = models
                .iter()
                .map(|mi| PreparedShot::new(mi, &fhkl, Some(&scales), &[]))
                .collect::<crate::error::Result<_>>()?;
            let refs: Vec<&PreparedShot> = shots.iter().collect();
            let batch2 = PixelBatch::new(vec![pixels.clone(); a.batch_shots]);
            let weights: Vec<f64> = (0..batch2.len()).map(|i| ((i % 7) as f64 - 3.0) * 0.1).collect();
            let t = best_of(a.repeat, || {
                std::hint::black_box(backend.evaluate(&refs, &batch2, Mode::Forward, None)?);
                std::hint::black_box(backend.evaluate(&refs, &batch2, Mode::FhklGrad, Some(&weights))?);
                Ok(())
            })?;
            let per = t / a.batch_shots as f64;
            println!(
                "{nd:>7} {:>10} {:>12.3e} {:>14.3e} {per:>14.4e}",
                "stage2",
                steps * 2.0,
                steps * 2.0 / per
            );
        }
    }
    Ok(())
}

fn best_of(repeat: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up (compilation, uploads, allocations)
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}
