//! Δψ and the stills re-prediction against DIALS's own columns.
//!
//! `ssx_CuNiR/indexed.refl` was written by DIALS stills refinement: its
//! `delpsical.rad`, `s1`, `xyzcal.mm` and `xyzcal.px` come from the
//! StillsReflectionPredictor with the crystals and beam of `indexed.expt`. The
//! Pilatus panel is parallax-corrected (μ = 10.68 mm⁻¹, t0 = 0.45 mm), so
//! `xyzcal.px` also checks the px↔mm strategy.

use diffbragg::conventions::Vec3;
use diffbragg::experiment::ExperimentList;
use diffbragg::io::dials_refl::read_refl;
use diffbragg::report::deltapsi::{
    predict_on_detector, predict_on_panel, predict_ray, s0_for_spectrum, PxMm,
};
use diffbragg::report::residuals::{evaluate, CalSource, EvalOptions, ModelKind};
use diffbragg::spectrum::Spectrum;
use diffbragg::testutil::shared;

fn cunir() -> (ExperimentList, diffbragg::reflections::ReflectionTable) {
    let dir = shared("fixtures/dials_data_files/ssx_CuNiR");
    (ExperimentList::read(dir.join("indexed.expt")).unwrap(), read_refl(dir.join("indexed.refl")).unwrap())
}

#[test]
fn cunir_delpsi_s1_and_xyzcal_match_dials() {
    let (el, t) = cunir();
    let ids = t.get_int("id").unwrap();
    let hkl = t.get_miller("miller_index").unwrap();
    let panel = t.get_size("panel").unwrap();
    let dp = t.get_double("delpsical.rad").unwrap();
    let s1 = t.get_vec3("s1").unwrap();
    let mm = t.get_vec3("xyzcal.mm").unwrap();
    let px = t.get_vec3("xyzcal.px").unwrap();
    assert_eq!(t.nrows(), 360);
    let (mut e_dp, mut e_s1, mut e_mm, mut e_px) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut max_dp = 0.0f64;
    for i in 0..t.nrows() {
        let e = &el.experiments[ids[i] as usize];
        let det = e.detector.as_ref().unwrap();
        let p = panel[i] as usize;
        let pm = PxMm::for_panel(&det.panels[p], &e.detector_meta.panel(p)).unwrap();
        assert!(matches!(pm, PxMm::Parallax { .. }));
        let a = e.crystal.as_ref().unwrap().a_matrix();
        let s0 = e.beam.as_ref().unwrap().s0();
        let pred = predict_on_panel(&a, &s0, hkl[i], p, &det.panels[p], &pm).unwrap();
        e_dp = e_dp.max((pred.delpsi - dp[i]).abs());
        max_dp = max_dp.max(dp[i].abs());
        e_s1 = e_s1.max((pred.s1 - Vec3::from(s1[i])).abs().max());
        e_mm = e_mm.max((pred.mm[0] - mm[i][0]).abs().max((pred.mm[1] - mm[i][1]).abs()));
        e_px = e_px.max((pred.px[0] - px[i][0]).abs().max((pred.px[1] - px[i][1]).abs()));
        // The detector-wide search finds the same panel and position.
        let pd = predict_on_detector(&a, &s0, hkl[i], det, &[pm]).unwrap();
        assert_eq!(pd.panel, p);
        assert!((pd.mm[0] - pred.mm[0]).abs() < 1e-12);
    }
    eprintln!("max |Δ| delpsi {e_dp:.2e} rad, s1 {e_s1:.2e} Å⁻¹, mm {e_mm:.2e}, px {e_px:.2e}; max |Δψ| {max_dp:.2e}");
    assert!(max_dp > 1e-4, "fixture Δψ values are not trivially zero");
    assert!(e_dp < 1e-9, "Δψ differs from DIALS by {e_dp}");
    assert!(e_s1 < 1e-12, "s1 differs by {e_s1}");
    assert!(e_mm < 1e-6, "xyzcal.mm differs by {e_mm} mm");
    assert!(e_px < 1e-6, "xyzcal.px differs by {e_px} px");
}

#[test]
fn cunir_evaluation_reproduces_dials_columns_and_obs_mm() {
    let (el, t) = cunir();
    let mm = t.get_vec3("xyzcal.mm").unwrap();
    let px = t.get_vec3("xyzcal.px").unwrap();
    let obs_mm = t.get_vec3("xyzobs.mm.value").unwrap();
    let dp = t.get_double("delpsical.rad").unwrap();
    let ids = t.get_int("id").unwrap();
    // refl_id is the row index within each shot: map back to file rows.
    let mut file_row = std::collections::HashMap::new();
    let mut counts = vec![0i32; el.len()];
    for (i, &id) in ids.iter().enumerate() {
        file_row.insert((id as i64, counts[id as usize]), i);
        counts[id as usize] += 1;
    }
    for source in [CalSource::Repredict, CalSource::Table] {
        let opts = EvalOptions { cal_source: source, ..Default::default() };
        let ev = evaluate(&el, &t, ModelKind::Input, &opts, None).unwrap();
        assert_eq!(ev.rows.len(), 360, "{source:?}: {:?}", ev.skipped.first());
        assert_eq!(ev.n_filtered, 0); // every row is flagged used_in_refinement (45)
        for r in &ev.rows {
            let i = file_row[&(r.shot_id, r.refl_id)];
            assert!((r.delpsi_deg.to_radians() - dp[i]).abs() < 1e-9);
            assert!((r.cal_px[0] - px[i][0]).abs() < 1e-6 && (r.cal_px[1] - px[i][1]).abs() < 1e-6);
            // Table mode converts xyzcal.px back to mm with dxtbx's approximate
            // parallax inverse: equal to well below a micrometre, not bit-exact.
            let tol = if source == CalSource::Repredict { 1e-6 } else { 1e-4 };
            assert!(
                (r.cal_mm[0] - mm[i][0]).abs() < tol && (r.cal_mm[1] - mm[i][1]).abs() < tol,
                "{source:?}"
            );
            assert_eq!(r.obs_mm, [obs_mm[i][0], obs_mm[i][1]]);
            // The repredicted spot lies on the Ewald sphere: d = λ / (2 sin θ_cal).
            if source == CalSource::Repredict {
                let d_geom = r.wavelength / (2.0 * (r.two_theta_cal_deg.to_radians() / 2.0).sin());
                assert!((r.d - d_geom).abs() / r.d < 1e-6, "{} {}", r.d, d_geom);
            }
        }
    }
    // Without xyzobs.mm.value the observed mm come from px through the parallax strategy.
    let mut t2 = t.clone();
    t2.remove("xyzobs.mm.value");
    let ev = evaluate(&el, &t2, ModelKind::Input, &EvalOptions::default(), None).unwrap();
    for r in &ev.rows {
        let i = file_row[&(r.shot_id, r.refl_id)];
        assert!((r.obs_mm[0] - obs_mm[i][0]).abs() < 1e-9 && (r.obs_mm[1] - obs_mm[i][1]).abs() < 1e-9);
    }
}

#[test]
fn spectrum_mean_wavelength_that_puts_a_point_on_the_sphere_gives_zero_delpsi() {
    let (el, t) = cunir();
    let e = &el.experiments[0];
    let beam = e.beam.as_ref().unwrap();
    let a = e.crystal.as_ref().unwrap().a_matrix();
    let hkl = t.get_miller("miller_index").unwrap()[0];
    let q = a * Vec3::new(hkl[0] as f64, hkl[1] as f64, hkl[2] as f64);
    // |s0 + q| = |s0| ⇔ λ = −2 ŝ0·q / |q|².
    let lam = -2.0 * beam.unit_s0().dot(&q) / q.norm_squared();
    assert!((lam - beam.wavelength).abs() / beam.wavelength < 0.02, "{lam}");
    // A two-channel spectrum whose weighted mean wavelength is λ.
    let spec = Spectrum::new(vec![lam - 0.01, lam + 0.03], vec![3.0, 1.0]);
    assert!((spec.mean_wavelength() - lam).abs() < 1e-15);
    let ray = predict_ray(&a, &s0_for_spectrum(beam, &spec), hkl).unwrap();
    assert!(ray.delpsi.abs() < 1e-12, "{}", ray.delpsi);
    assert!((ray.s1.norm() - 1.0 / lam).abs() < 1e-12);
    // The same through the evaluation option.
    let sub = t.select_id(0).unwrap();
    let opts = EvalOptions { wavelength: Some(lam), ..Default::default() };
    let ev = diffbragg::report::residuals::evaluate_shot(e, &sub, 7, ModelKind::Refined, &opts).unwrap();
    assert_eq!(ev.rows[0].shot_id, 7);
    assert!(ev.rows[0].delpsi_deg.abs() < 1e-10);
    assert_eq!(ev.rows[0].wavelength, lam);
}

#[test]
fn bad_inputs_give_clear_errors() {
    let (el, t) = cunir();
    let mut t2 = t.clone();
    t2.get_size_mut("panel").unwrap()[3] = 9;
    let err = evaluate(&el, &t2, ModelKind::Input, &EvalOptions::default(), None).unwrap_err().to_string();
    assert!(err.contains("panel 9") && err.contains("indexed.expt"), "{err}");
    let mut t3 = t.clone();
    t3.remove("flags");
    let err = evaluate(&el, &t3, ModelKind::Input, &EvalOptions::default(), None).unwrap_err().to_string();
    assert!(err.contains("flags"), "{err}");
    let ok = EvalOptions { used_in_refinement_only: false, ..Default::default() };
    assert_eq!(evaluate(&el, &t3, ModelKind::Input, &ok, None).unwrap().rows.len(), 360);
    let mut t4 = t.clone();
    t4.get_int_mut("id").unwrap()[0] = 5;
    let err = evaluate(&el, &t4, ModelKind::Input, &EvalOptions::default(), None).unwrap_err().to_string();
    assert!(err.contains("row 0") && err.contains("id 5"), "{err}");
    let bad = EvalOptions { wavelength: Some(-1.0), ..Default::default() };
    let err = evaluate(&el, &t, ModelKind::Input, &bad, None).unwrap_err().to_string();
    assert!(err.contains("wavelength"), "{err}");
    // Unindexed rows and NaN model centroids are skipped with a reason, not fatal.
    let mut t5 = t.clone();
    t5.get_miller_mut("miller_index").unwrap()[0] = [0, 0, 0];
    t5.get_vec3_mut("xyzcal.px").unwrap()[1] = [f64::NAN, f64::NAN, 0.0];
    let opts = EvalOptions { cal_source: CalSource::Table, ..Default::default() };
    let ev = evaluate(&el, &t5, ModelKind::Refined, &opts, None).unwrap();
    assert_eq!(ev.rows.len(), 358);
    assert_eq!(ev.skipped.len(), 2);
    assert!(ev.skipped[0].reason.contains("not indexed") && ev.skipped[1].reason.contains("NaN"));
}
