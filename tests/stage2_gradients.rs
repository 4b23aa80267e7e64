//! Stage 2: the analytic gradient of the global target against central
//! differences, and the Fisher curvature against a brute-force evaluation,
//! on a small multi-shot problem with two energy channels, anomalous pairs,
//! centric ties, the three Fhkl restraints and every refinable shot parameter.

use std::path::Path;

use diffbragg::config::EnsHopperConfig;
use diffbragg::dist::SingleProcess;
use diffbragg::kernel::{FhklScales, PreparedShot};
use diffbragg::refine::likelihood::{PixelTarget, ReadNoise};
use diffbragg::stage2::synth::{make, SynthOptions};
use diffbragg::stage2::{prepare, Prepared, RunOptions};

fn setup(dir: &Path, extra: &[&str]) -> (Prepared, SynthOptions) {
    let o = SynthOptions {
        n_shots: 4,
        seed: 7,
        cell: [30.0, 30.0, 44.0, 90.0, 90.0, 90.0],
        d_min: 5.0,
        n_spectrum: 6,
        bandwidth: 0.01,
        channel_bounds: vec![9500.0],
        ncells: [10.0, 10.0, 10.0],
        excitation_cut: 2.0,
        ..Default::default()
    };
    let t = make(dir, &o).unwrap();
    let mut over: Vec<String> = vec![
        "fix.Fhkl=False".into(),
        "space_group=P43212".into(),
        format!("simulator.structure_factors.default_F={}", t.default_f),
        "Fhkl_channel_bounds=9500".into(),
        "sigmas.Fhkl=0.7".into(),
    ];
    over.extend(extra.iter().map(|s| s.to_string()));
    let (cfg, _) = EnsHopperConfig::from_texts(&[], &over, dir).unwrap();
    let opts = RunOptions { quiet: true, ..RunOptions::new(&t.store, dir.join("out")) };
    (prepare(&cfg, &opts, &SingleProcess).unwrap(), o)
}

/// Central difference of f along coordinate k.
fn fd(p: &Prepared, x: &[f64], k: usize, h: f64) -> f64 {
    let (mut a, mut b) = (x.to_vec(), x.to_vec());
    a[k] += h;
    b[k] -= h;
    let fa = p.problem.evaluate(&a, &SingleProcess).unwrap().f;
    let fb = p.problem.evaluate(&b, &SingleProcess).unwrap().f;
    (fa - fb) / (2.0 * h)
}

#[test]
fn global_gradient_matches_central_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = [
        "fix.G=False",
        "types.G=positive",
        "sigmas.G=0.5",
        "fix.RotXYZ=False",
        "fix.Nabc=False",
        "fix.ucell=False",
        "betas.Fhkl=1e6",
        "betas.Finit=0.5",
        "betas.Friedel=0.01",
        "Fhkl_dspace_bins=3",
    ];
    let (p, _) = setup(tmp.path(), &extra);
    let pr = &p.problem;
    let l = &pr.layout;
    assert_eq!(l.n_chan, 2);
    // The problem exercises what it should: both channels, Friedel pairs, centric ties.
    assert!(l.params.iter().any(|(_, c)| c == &vec![1]), "no channel-1 scale");
    assert!(l.centric.iter().any(|&c| c) && l.centric.iter().any(|&c| !c));
    let n_minus = l.asu_hkl.iter().filter(|h| l.asu_hkl.contains(&[-h[0], -h[1], -h[2]])).count();
    assert!(n_minus >= 4, "too few Friedel pairs: {n_minus}");
    assert_eq!(pr.n_per_shot, 1 + 3 + 3 + 2, "G, rot ×3, Nabc ×3, tetragonal cell ×2");

    // A point away from x0 (every coordinate moved).
    let n = pr.n_x();
    let x: Vec<f64> = (0..n).map(|k| 1.0 + 0.04 * ((k * 7919 % 23) as f64 / 11.0 - 1.0)).collect();
    let e = pr.evaluate(&x, &SingleProcess).unwrap();
    assert!(e.f_restraint != 0.0);
    let gmax = e.g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let off = pr.fhkl_offset();
    // Every per-shot coordinate, and a spread of scale coordinates.
    let mut ks: Vec<usize> = (0..off).collect();
    ks.extend((off..n).step_by(((n - off) / 40).max(1)));
    let mut worst = 0.0f64;
    for &k in &ks {
        let h = if k < off { 1e-6 } else { 1e-5 };
        let d = fd(&p, &x, k, h);
        let scale = e.g[k].abs().max(1e-3 * gmax);
        let rel = (d - e.g[k]).abs() / scale;
        worst = worst.max(rel);
        assert!(
            rel <= 1e-6,
            "coordinate {k} (shot block {}): fd {d} vs analytic {} (rel {rel:e})",
            k < off,
            e.g[k]
        );
    }
    eprintln!("checked {} coordinates, worst relative difference {worst:e}", ks.len());
}

/// The kernel's per-pixel curvature (summed over sub-steps and tied channels,
/// then squared) against single-pixel gradients, and the problem's H.
#[test]
fn fisher_curvature_matches_brute_force() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _) = setup(tmp.path(), &["fix.G=False"]);
    let pr = &p.problem;
    let l = &pr.layout;
    let x: Vec<f64> = (0..pr.n_x()).map(|k| 1.0 + 0.03 * ((k % 5) as f64 - 2.0)).collect();
    let curv = pr.curvature(&x, &SingleProcess).unwrap();
    let scales =
        FhklScales { n_channels: l.n_chan, values: l.kernel_scales(&x[pr.fhkl_offset()..], pr.sigma_fhkl) };
    let mut h = vec![0.0; l.n_params()];
    for s in &pr.shots {
        let v = s.params.values(pr.shot_block(&x, s.index));
        let model = s.input.model(v.rot, v.nabc, &v.ucell).unwrap();
        let shot = PreparedShot::new(&model, &pr.table, Some(&scales), &[]).unwrap();
        let px = s.pixels.kernel_pixels();
        let raw = shot.forward(&px).unwrap();
        let data: Vec<f64> = s.pixels.data.iter().map(|&d| d as f64).collect();
        let s2 = s.pixels.sigma_r2();
        let tr = s.pixels.trusted_flags();
        let mu: Vec<f64> = raw.iter().zip(&s.pixels.background).map(|(r, b)| v.g * r + *b as f64).collect();
        let w = PixelTarget::new(&data, ReadNoise::PerPixel(&s2))
            .unwrap()
            .with_trusted(&tr)
            .unwrap()
            .fisher_weights(&mu)
            .unwrap();
        for (i, pixel) in px.iter().enumerate() {
            if w[i] == 0.0 {
                continue;
            }
            let d = shot.fhkl_scale_gradient(&[*pixel], &[1.0]).unwrap();
            let per_param = l.fold(&d);
            for (k, dk) in per_param.iter().enumerate() {
                h[k] += w[i] * (v.g * dk).powi(2);
            }
        }
    }
    let mut n_checked = 0;
    for k in 0..l.n_params() {
        let tol = 1e-9 * h[k].abs().max(1e-12 * h.iter().cloned().fold(0.0, f64::max));
        assert!((curv.h[k] - h[k]).abs() <= tol, "parameter {k}: {} vs brute force {}", curv.h[k], h[k]);
        n_checked += usize::from(h[k] > 0.0);
    }
    assert!(n_checked > l.n_params() / 2, "most parameters should have curvature");
    // Centric scales tie two channels: their H is not the sum of per-channel squares.
    assert!(l.params.iter().any(|(a, c)| l.centric[*a as usize] && c.len() == 2));
}
