//! Detector residuals against an independent numpy implementation
//! (`tests/report_numpy.py`, written from fwd-model §5.2), and recovery of
//! injected radial/transverse shifts on the CSPAD geometry.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use diffbragg::conventions::{axis_angle, Vec3};
use diffbragg::experiment::ExperimentList;
use diffbragg::io::dials_refl::read_refl;
use diffbragg::reflections::{flags, ReflectionTable};
use diffbragg::report::deltapsi::{predict_on_detector, PxMm};
use diffbragg::report::residuals::{evaluate, offsets, EvalOptions, ModelKind, ResidualRow};
use diffbragg::report::stats::{by_group, by_panel, panel_groups, DatasetStats, GroupStats};
use diffbragg::testutil::shared;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// A predicted spot: (experiment, hkl, panel, panel mm, Δψ rad).
type Spot = (usize, [i32; 3], usize, [f64; 2], f64);

const CSPAD: &str = "fixtures/dials_data_files/cspad/benchmark_level2d.json";

fn run_numpy(dir: &Path, input: &Value) -> Value {
    let inp = dir.join("in.json");
    let out = dir.join("out.json");
    std::fs::write(&inp, serde_json::to_vec(input).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/report_numpy.py");
    let st = Command::new("python3").arg(&script).arg(&inp).arg(&out).output().expect("python3 runs");
    assert!(st.status.success(), "numpy script failed: {}", String::from_utf8_lossy(&st.stderr));
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

/// |a − b| ≤ tol·max(1, |b|); a NaN must meet a JSON null.
fn close(what: &str, a: f64, b: &Value, tol: f64) {
    match b.as_f64() {
        None => assert!(a.is_nan(), "{what}: rust {a}, numpy null"),
        Some(b) => assert!((a - b).abs() <= tol * b.abs().max(1.0), "{what}: rust {a}, numpy {b}"),
    }
}

fn compare_stats(what: &str, s: &GroupStats, v: &Value) {
    assert_eq!(s.n as u64, v["n"].as_u64().unwrap(), "{what} n");
    let fields = [
        ("rmsd_um", s.rmsd_um),
        ("radial_rmsd_um", s.radial_rmsd_um),
        ("transverse_rmsd_um", s.transverse_rmsd_um),
        ("mean_radial_um", s.mean_radial_um),
        ("mean_transverse_um", s.mean_transverse_um),
        ("delpsi_mean_deg", s.delpsi_mean_deg),
        ("delpsi_sd_deg", s.delpsi_sd_deg),
        ("delpsi_median_deg", s.delpsi_median_deg),
        ("delpsi_mad_deg", s.delpsi_mad_deg),
        ("cc_radial_delpsi", s.cc_radial_delpsi),
        ("cc_transverse_delpsi", s.cc_transverse_delpsi),
        ("cc_delpsi_d2theta", s.cc_delpsi_d2theta),
    ];
    for (k, a) in fields {
        close(&format!("{what} {k}"), a, &v[k], 1e-8);
    }
    assert_eq!(s.n_delpsi_pos as u64, v["n_delpsi_pos"].as_u64().unwrap(), "{what}");
    assert_eq!(s.n_delpsi_neg as u64, v["n_delpsi_neg"].as_u64().unwrap(), "{what}");
}

/// Per-row, per-panel, per-group and dataset comparison with numpy.
fn check_against_numpy(rows: &[ResidualRow], det: &diffbragg::geometry::Detector, level: usize, np: &Value) {
    let nrows = np["rows"].as_object().unwrap();
    assert_eq!(nrows.len(), rows.len());
    for r in rows {
        let v = &nrows[&format!("{}:{}", r.shot_id, r.refl_id)];
        close("radial", r.radial_mm, &v["radial"], 1e-10);
        close("transverse", r.transverse_mm, &v["transverse"], 1e-10);
        close("2θ obs", r.two_theta_obs_deg, &v["tt_obs"], 1e-9);
        close("2θ cal", r.two_theta_cal_deg, &v["tt_cal"], 1e-9);
    }
    let bp = by_panel(rows);
    assert_eq!(bp.len(), np["panels"].as_object().unwrap().len());
    for (p, s) in &bp {
        compare_stats(&format!("panel {p}"), s, &np["panels"][p.to_string()]);
    }
    // Groups: match by panel membership (names of unnamed nodes differ).
    let groups = panel_groups(det, level);
    let ours = by_group(rows, &groups);
    let theirs = np["groups"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len(), "number of groups at level {level}");
    for (g, s) in &ours {
        let mut mine = g.panels.clone();
        mine.sort_unstable();
        let t = theirs
            .iter()
            .find(|t| {
                t["panels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .eq(mine.iter().copied())
            })
            .unwrap_or_else(|| panic!("numpy has no group with panels {mine:?}"));
        compare_stats(&format!("group {}", g.name), s, &t["stats"]);
    }
    let d = DatasetStats::of(rows, &groups);
    let nd = &np["dataset"];
    compare_stats("dataset", &d.overall, &nd["overall"]);
    close("dataset rmsd", d.overall.rmsd_um, &nd["rmsd_um"], 1e-9);
    close("weighted rmsd", d.weighted_rmsd_um, &nd["weighted_rmsd_um"], 1e-9);
    assert_eq!(d.n_weighted as u64, nd["n_weighted"].as_u64().unwrap());
    for k in 0..3 {
        close("group rmsd mean", d.group_rmsd_mean_um[k], &nd["group_rmsd"][k][0], 1e-9);
        close("group rmsd sd", d.group_rmsd_sd_um[k], &nd["group_rmsd"][k][1], 1e-9);
    }
}

#[test]
fn cunir_residuals_match_numpy_reading_the_dials_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shared("fixtures/dials_data_files/ssx_CuNiR");
    let el = ExperimentList::read(dir.join("indexed.expt")).unwrap();
    let t = read_refl(dir.join("indexed.refl")).unwrap();
    let ev = evaluate(&el, &t, ModelKind::Input, &EvalOptions::default(), None).unwrap();
    assert_eq!(ev.rows.len(), 360);
    let np = run_numpy(
        tmp.path(),
        &json!({"expt": dir.join("indexed.expt"), "refl": dir.join("indexed.refl"), "hierarchy_level": 0}),
    );
    check_against_numpy(&ev.rows, el.experiments[0].detector.as_ref().unwrap(), 0, &np);
    // Sanity of the fixture: offsets are sub-pixel, and not all zero.
    let s = GroupStats::of(&ev.rows);
    assert!(s.rmsd_um > 5.0 && s.rmsd_um < 500.0, "{}", s.rmsd_um);
}

/// Predicted spots of the first `n_expt` CSPAD benchmark experiments with
/// |Δψ| < 0.05°: (experiment, hkl, panel, mm, Δψ rad).
fn cspad_spots(el: &ExperimentList, n_expt: usize) -> Vec<Spot> {
    let mut out = Vec::new();
    for (ei, e) in el.experiments.iter().take(n_expt).enumerate() {
        let det = e.detector.as_ref().unwrap();
        let pxmm = PxMm::for_detector(det, &e.detector_meta).unwrap();
        let a = e.crystal.as_ref().unwrap().a_matrix();
        let s0 = e.beam.as_ref().unwrap().s0();
        for h in -40..=40 {
            for k in -40..=40 {
                for l in -20..=20 {
                    let q = a * Vec3::new(h as f64, k as f64, l as f64);
                    let qq = q.norm_squared();
                    // d ≥ 2 Å and a cheap Ewald-proximity cut before the full prediction.
                    if qq == 0.0 || qq > 0.25 || ((s0 + q).norm() - s0.norm()).abs() > 2e-3 {
                        continue;
                    }
                    if let Ok(p) = predict_on_detector(&a, &s0, [h, k, l], det, &pxmm) {
                        if p.delpsi.abs() < 0.05f64.to_radians() {
                            out.push((ei, [h, k, l], p.panel, p.mm, p.delpsi));
                        }
                    }
                }
            }
        }
    }
    out
}

/// A reflection table whose observed centroids are `cal − Δ` for the given
/// per-spot lab offset function (Δ = δr·r̂ + δt·t̂ in the panel plane, with r̂, t̂
/// taken at the observed spot).
fn table_with_offsets(
    el: &ExperimentList,
    spots: &[Spot],
    shift: impl Fn(usize, usize) -> (f64, f64),
    var: impl Fn(usize) -> f64,
) -> ReflectionTable {
    let n = spots.len();
    let (mut ids, mut panels, mut hkls, mut obs_px, mut obs_mm, mut vars) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (i, &(ei, hkl, p, cal, _)) in spots.iter().enumerate() {
        let e = &el.experiments[ei];
        let det = e.detector.as_ref().unwrap();
        let panel = &det.panels[p];
        let s0 = e.beam.as_ref().unwrap().s0();
        let (dr, dt) = shift(i, p);
        let n_hat = panel.normal();
        // Fixed point: r̂, t̂ depend on obs, which depends on Δ.
        let mut obs = cal;
        for _ in 0..6 {
            let o = offsets(panel, &s0, obs, cal).unwrap();
            let t_in = o.transverse_unit - n_hat * o.transverse_unit.dot(&n_hat);
            let delta = o.radial_unit * dr + t_in * (dt / t_in.dot(&o.transverse_unit));
            obs = [cal[0] - delta.dot(&panel.fast), cal[1] - delta.dot(&panel.slow)];
        }
        let pm = PxMm::for_panel(panel, &e.detector_meta.panel(p)).unwrap();
        let px = pm.mm_to_px(panel, obs).unwrap();
        ids.push(ei as i32);
        panels.push(p as u64);
        hkls.push(hkl);
        obs_px.push([px[0], px[1], 0.5]);
        obs_mm.push([obs[0], obs[1], 0.0]);
        let v = var(i);
        vars.push([v, v, 0.0]);
    }
    let mut t = ReflectionTable::new(n);
    t.insert("id", ids).unwrap();
    t.insert("panel", panels).unwrap();
    t.insert("miller_index", hkls).unwrap();
    t.insert("xyzobs.px.value", obs_px).unwrap();
    t.insert("xyzobs.mm.value", obs_mm).unwrap();
    t.insert("xyzobs.mm.variance", vars).unwrap();
    t.insert("flags", vec![flags::INDEXED | flags::USED_IN_REFINEMENT; n]).unwrap();
    t
}

fn injected(p: usize) -> (f64, f64) {
    (0.02 * ((p % 3) as f64 - 1.0), 0.015 * (((p / 3) % 3) as f64 - 1.0))
}

#[test]
fn cspad_injected_per_panel_shifts_are_recovered_with_their_signs() {
    let el = ExperimentList::read(shared(CSPAD)).unwrap();
    let det = el.experiments[0].detector.as_ref().unwrap();
    assert_eq!(det.panels.len(), 64);
    assert!(matches!(
        PxMm::for_panel(&det.panels[0], &el.experiments[0].detector_meta.panel(0)).unwrap(),
        PxMm::Parallax { .. }
    ));
    let spots = cspad_spots(&el, 12);
    let t = table_with_offsets(&el, &spots, |_, p| injected(p), |_| 1e-4);
    let ev = evaluate(&el, &t, ModelKind::Input, &EvalOptions::default(), None).unwrap();
    assert!(ev.skipped.is_empty(), "{:?}", ev.skipped.first());
    assert_eq!(ev.rows.len(), spots.len());
    for r in &ev.rows {
        let (dr, dt) = injected(r.panel as usize);
        assert!((r.radial_mm - dr).abs() < 1e-9, "panel {} radial {} vs {dr}", r.panel, r.radial_mm);
        assert!(
            (r.transverse_mm - dt).abs() < 1e-9,
            "panel {} transverse {} vs {dt}",
            r.panel,
            r.transverse_mm
        );
    }
    let bp = by_panel(&ev.rows);
    assert!(bp.len() >= 40, "spots on only {} panels", bp.len());
    let mut signs = BTreeMap::new();
    for (p, s) in &bp {
        let (dr, dt) = injected(*p as usize);
        assert!((s.mean_radial_um - 1000.0 * dr).abs() < 1e-6);
        assert!((s.mean_transverse_um - 1000.0 * dt).abs() < 1e-6);
        // |Δ|² = ΔR² + ΔT² only when t̂ lies in the panel plane; these refined
        // sensors tilt by up to a few degrees, so |Δ| exceeds hypot(ΔR, ΔT) by ≤ tilt².
        let ratio = s.rmsd_um / (1000.0 * dr.hypot(dt));
        assert!(dr.hypot(dt) == 0.0 || (1.0 - 1e-12..1.005).contains(&ratio), "panel {p}: {ratio}");
        *signs.entry((s.mean_radial_um.round() as i64).signum()).or_insert(0) += 1;
    }
    // All three radial cases (inwards, none, outwards) occur.
    assert_eq!(signs.len(), 3, "{signs:?}");
}

#[test]
fn cspad_rotation_about_the_beam_is_transverse_and_expansion_is_radial() {
    let el = ExperimentList::read(shared(CSPAD)).unwrap();
    let e = &el.experiments[0];
    let det = e.detector.as_ref().unwrap();
    let s0 = e.beam.as_ref().unwrap().s0();
    let spots = cspad_spots(&el, 3);
    assert!(spots.len() > 100);
    let eps = 1e-4; // rad, counter-clockwise seen from the source (about +z)
    let rot = axis_angle(&Vec3::z(), eps);
    for &(_, _, p, obs, _) in &spots {
        let panel = &det.panels[p];
        let obs_lab = panel.mm_to_lab(obs[0], obs[1]);
        // The rotated spot as the (tilted) sensor sees it: along its ray.
        let (x, y) = panel.ray_intersection_mm(&(rot * obs_lab)).unwrap();
        let o = offsets(panel, &s0, obs, [x, y]).unwrap();
        let rho = (obs_lab.x.powi(2) + obs_lab.y.powi(2)).sqrt();
        // Sign is the point; the size is ε·ρ up to the few-degree sensor tilts of
        // this refined metrology (exact values are checked against numpy below).
        assert!(o.transverse_mm > 0.0 && (o.transverse_mm / (eps * rho) - 1.0).abs() < 0.05, "{o:?} {rho}");
        assert!(o.radial_mm.abs() < 0.05 * o.transverse_mm, "{o:?}");
        // Predictions further from the beam centre than observed: positive radial.
        let bc = o.bc_lab;
        let far = bc + (obs_lab - bc) * 1.001; // in the panel plane: bc and obs are
        let far_mm = [(far - panel.origin).dot(&panel.fast), (far - panel.origin).dot(&panel.slow)];
        let o = offsets(panel, &s0, obs, far_mm).unwrap();
        assert!(o.radial_mm > 0.0 && (o.radial_mm / (0.001 * (obs_lab - bc).norm()) - 1.0).abs() < 1e-6);
        assert!(o.transverse_mm.abs() < 1e-9);
    }
}

#[test]
fn cspad_noisy_residuals_match_numpy_per_panel_group_and_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let el = ExperimentList::read(shared(CSPAD)).unwrap();
    let det = el.experiments[0].detector.as_ref().unwrap().clone();
    let spots = cspad_spots(&el, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(5150);
    let noise: Vec<(f64, f64, f64)> = (0..spots.len())
        .map(|_| {
            (rng.random_range(-0.008..0.008), rng.random_range(-0.006..0.006), rng.random_range(2e-5..4e-4))
        })
        .collect();
    // Radial offsets correlated with Δψ, plus per-panel shifts and noise.
    let t = table_with_offsets(
        &el,
        &spots,
        |i, p| {
            let (dr, dt) = injected(p);
            (dr + 0.3 * spots[i].4.to_degrees() + noise[i].0, dt + noise[i].1)
        },
        |i| if i % 17 == 0 { 0.0 } else { noise[i].2 },
    );
    let ev = evaluate(&el, &t, ModelKind::Input, &EvalOptions::default(), None).unwrap();
    let rows_json: Vec<Value> = ev
        .rows
        .iter()
        .map(|r| {
            json!({"shot": r.shot_id, "key": format!("{}:{}", r.shot_id, r.refl_id), "panel": r.panel,
                   "obs_mm": r.obs_mm, "cal_mm": r.cal_mm, "obs_px": r.obs_px, "cal_px": r.cal_px,
                   "delpsi_deg": r.delpsi_deg, "var": r.obs_var_mm2})
        })
        .collect();
    for level in [0usize, 1, 2] {
        let np = run_numpy(
            tmp.path(),
            &json!({"expt": shared(CSPAD), "rows": rows_json, "hierarchy_level": level}),
        );
        check_against_numpy(&ev.rows, &det, level, &np);
    }
    let all = GroupStats::of(&ev.rows);
    assert!(all.cc_radial_delpsi > 0.3, "built-in ΔR–Δψ correlation not seen: {}", all.cc_radial_delpsi);
    let d = DatasetStats::of(&ev.rows, &panel_groups(&det, 1));
    assert!(d.n_weighted < ev.rows.len() && d.n_weighted > 0);
}
