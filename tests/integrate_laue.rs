//! Laue mode (`predictions.laue_mode=True`) on a wide-band (±2 %) spectrum:
//! * `rlp` changes exactly as documented: `rlp = rlp_pos·λ̄/ave_wavelen`, with
//!   `rlp_pos` the positional vector at the spectrum's mean wavelength λ̄
//!   (recomputed here from `xyzcal.px` and the stage-1 detector), and
//!   `ave_wavelen` inside the band;
//! * `ave_wavelen` equals the spot's model-weighted mean wavelength computed
//!   here by brute force (one single-channel model per channel);
//! * the laue `rlp` is the better estimate of the true reciprocal-lattice
//!   point `A·h` (the positional vector carries a radial error
//!   |q|·(λ_Bragg − λ̄)/λ̄), and `ave_wavelen` tracks the wavelength at which h
//!   meets the Ewald sphere;
//! * without laue mode `rlp` is the positional vector and `ave_wavelen` absent.

mod integrate_common;

use diffbragg::conventions::Vec3;
use diffbragg::dist::SingleProcess;
use diffbragg::io::dials_refl::read_refl;
use diffbragg::predict::integrate::{run, IntegrateOptions};
use integrate_common as c;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
fn laue_mode_rescales_rlp_by_the_spot_wavelength() {
    let tmp = tempfile::tempdir().unwrap();
    // Large domains: each spot is made by a narrow part of the ±2 % band.
    // Two panels, so the per-panel pixel bookkeeping of the λ̄ pass is covered.
    let spec = c::Spec {
        n_shots: 2,
        seed: 23,
        n_panels: 2,
        n_px: 320,
        bandwidth: 0.02,
        channels: 25,
        ncells: [30.0; 3],
        g: 1.0,
        ..Default::default()
    };
    let ds = c::make_dataset(tmp.path(), spec);
    let proc = c::write_proc_phil(tmp.path(), "");
    let common = "threshold = 50\nqcut = 0.004\nlabel_weak_col = rlp\nweak_fraction = 1.0";
    let mut results = vec![];
    for laue in [true, false] {
        let d = tmp.path().join(format!("laue_{laue}"));
        std::fs::create_dir_all(&d).unwrap();
        let pred =
            c::write_pred_phil(&d, &format!("{common}\nlaue_mode = {}", if laue { "True" } else { "False" }));
        let out = d.join("out");
        let s = run(&IntegrateOptions::new(&pred, &proc, &ds.stage1, &out), &SingleProcess).unwrap();
        assert_eq!(s.n_predicted, 2, "{s:?}");
        results.push((s, read_refl(out.join("expts_and_refls/rank0_preds.refl")).unwrap()));
    }
    let (lam_lo, lam_hi) = (1.3 * 0.98, 1.3 * 1.02);

    for (k, (summary, refl)) in results.iter().enumerate() {
        let laue = k == 0;
        assert_eq!(refl.contains("ave_wavelen"), laue);
        let ids = refl.get_int("id").unwrap();
        let xyz = refl.get_vec3("xyzcal.px").unwrap();
        let panel = refl.get_size("panel").unwrap();
        let rlp = refl.get_vec3("rlp").unwrap();
        let hkl = refl.get_miller("miller_index").unwrap();
        let (mut err_out, mut err_pos, mut lam_err) = (vec![], vec![], vec![]);
        let (mut n_brute, mut worst_brute, mut n_brute_p1) = (0, 0.0f64, 0);
        for row in &summary.rows {
            let shot = ds.shots.iter().find(|s| s.shot_id == row.shot_id).unwrap();
            let det = shot.model_detector();
            let lbar = shot.spectrum.mean_wavelength();
            let s0u = shot.beam.unit_s0();
            let a = shot.a_matrix();
            let spots = c::true_spots(shot, 50.0);
            let truth: std::collections::HashMap<[i32; 3], f64> =
                spots.iter().map(|t| (t.hkl, t.lambda_bragg)).collect();
            if laue {
                let flat = c::flat_table(&shot.cell);
                let rows: Vec<usize> = (0..refl.nrows()).filter(|&i| ids[i] == row.exp_idx as i32).collect();
                for t in spots.iter().filter(|t| !t.merged) {
                    let m: Vec<usize> = rows.iter().copied().filter(|&i| hkl[i] == t.hkl).collect();
                    // The same pixels on both sides (our region ⊇ the truth's, so equal counts = equal sets).
                    if m.len() == 1 && refl.get_int("n_signal").unwrap()[m[0]] as usize == t.pixels.len() {
                        let want = c::true_spot_wavelength(shot, t, &flat);
                        let got = refl.get_double("ave_wavelen").unwrap()[m[0]];
                        worst_brute = worst_brute.max((got - want).abs());
                        n_brute += 1;
                        n_brute_p1 += usize::from(t.panel == 1);
                    }
                }
            }
            for i in (0..refl.nrows()).filter(|&i| ids[i] == row.exp_idx as i32) {
                let lab = det.panels[panel[i] as usize].pixel_to_lab(xyz[i][0], xyz[i][1]);
                let pos = (lab / lab.norm() - s0u) / lbar;
                let out = Vec3::from(rlp[i]);
                if laue {
                    let ave = refl.get_double("ave_wavelen").unwrap()[i];
                    assert!(ave > lam_lo - 1e-9 && ave < lam_hi + 1e-9, "ave_wavelen {ave} outside the band");
                    assert!(
                        (out - pos * (lbar / ave)).norm() < 1e-9 * pos.norm(),
                        "rlp is not rlp_pos·λ̄/λ_spot"
                    );
                    // Spots beyond 4 Å: their Ewald-sphere tolerance in λ (≈ 2δq/|q|², δq ≈ 0.66/(N·c))
                    // is below the band width, so the spectrum selects their wavelength.
                    if let Some(&lb) = truth.get(&hkl[i]) {
                        if lb > lam_lo && lb < lam_hi && pos.norm() > 0.25 {
                            lam_err.push((ave, lb));
                        }
                    }
                } else {
                    assert!((out - pos).norm() < 1e-9 * pos.norm(), "non-laue rlp must be positional");
                }
                if truth.contains_key(&hkl[i]) {
                    let q = a * Vec3::new(hkl[i][0] as f64, hkl[i][1] as f64, hkl[i][2] as f64);
                    err_out.push((out - q).norm());
                    err_pos.push((pos - q).norm());
                }
            }
        }
        assert!(err_out.len() > 100, "{} predictions with a true index", err_out.len());
        let (mo, mp) = (median(err_out), median(err_pos));
        println!("laue={laue}: median |rlp − A·h| {mo:.3e} (positional {mp:.3e})");
        if laue {
            // Pearson correlation of λ_spot with λ_Bragg (spots beyond 4 Å whose λ_Bragg lies in the band).
            let n = lam_err.len() as f64;
            let (mx, my) =
                (lam_err.iter().map(|p| p.0).sum::<f64>() / n, lam_err.iter().map(|p| p.1).sum::<f64>() / n);
            let sxy: f64 = lam_err.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            let sxx: f64 = lam_err.iter().map(|p| (p.0 - mx).powi(2)).sum();
            let syy: f64 = lam_err.iter().map(|p| (p.1 - my).powi(2)).sum();
            let r = sxy / (sxx * syy).sqrt();
            println!("corr(λ_spot, λ_Bragg) = {r:.3} over {} spots", lam_err.len());
            println!("ave_wavelen vs brute force: {n_brute} spots, worst |Δ| = {worst_brute:.2e} Å");
            assert!(n_brute > 50 && n_brute_p1 > 10, "{n_brute} spots, {n_brute_p1} on panel 1");
            assert!(worst_brute < 1e-6, "ave_wavelen differs from the brute-force spot wavelength");
            assert!(mo < 0.5 * mp, "laue rlp should be much closer to A·h");
            assert!(r > 0.7, "λ_spot should track λ_Bragg (r = {r})");
        } else {
            assert!((mo - mp).abs() <= 1e-9 * mp);
        }
    }
}
