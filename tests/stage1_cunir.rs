//! Real pixels: the CuNiR serial-crystallography fixture (DIALS
//! `indexed.expt`/`indexed.refl`, 5 stills, pixels from the reflection
//! shoeboxes as diffBragg's `load_data_from_refl`, monochromatic) runs end to
//! end with a flat default_F and per-ROI scales, and the median distance of
//! the model centroids (xyzcal.px of the refined tables) from the observed
//! centroids is no worse than the DIALS-refined models' in the input file.

mod stage1_util;

use diffbragg::io::dials_refl::read_refl;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn distances(t: &diffbragg::reflections::ReflectionTable) -> Vec<f64> {
    let o = t.get_vec3("xyzobs.px.value").unwrap();
    let c = t.get_vec3("xyzcal.px").unwrap();
    o.iter().zip(c).map(|(o, c)| (o[0] - c[0]).hypot(o[1] - c[1])).collect()
}

#[test]
fn cunir_shoeboxes_refine_and_centroids_improve() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let f = diffbragg::testutil::shared("fixtures/dials_data_files/ssx_CuNiR");
    let spec: String = (0..5)
        .map(|i| format!("{} {} {i}\n", f.join("indexed.expt").display(), f.join("indexed.refl").display()))
        .collect();
    std::fs::write(d.join("spec.txt"), spec).unwrap();
    std::fs::write(
        d.join("cunir.phil"),
        "exp_ref_spec_file = spec.txt\noutdir = out\nrefiner.load_data_from_refl = True\n\
         fix.perRoiScale = False\ninit.Nabc = 30 30 30\n\
         simulator.structure_factors.default_F = 1000\nsimulator.detector.force_zero_thickness = True\n",
    )
    .unwrap();
    let cfg = stage1_util::config(&d.join("cunir.phil"), &[]);
    let s = stage1_util::run_stage1(cfg);
    assert_eq!((s.n_refined, s.n_failed), (5, 0));
    let input = read_refl(f.join("indexed.refl")).unwrap();
    let dials = median(distances(&input));
    let mut ours = Vec::new();
    let mut n_rows = 0;
    for e in std::fs::read_dir(d.join("out/refls")).unwrap() {
        let t = read_refl(e.unwrap().path()).unwrap();
        assert!(t.contains("dials.xyzcal.px") && t.contains("scale_factor") && t.contains("delpsical.rad"));
        n_rows += t.nrows();
        ours.extend(distances(&t));
    }
    let ours = median(ours);
    println!(
        "median |xyzcal.px − xyzobs.px.value|: DIALS {dials:.3} px, stage 1 {ours:.3} px ({n_rows} rows)"
    );
    assert!(n_rows >= 300, "{n_rows} rows kept of 360");
    assert!(ours <= dials, "stage 1 median {ours} px is worse than DIALS' {dials} px");
    // The refined experiments read back, one crystal each.
    for e in std::fs::read_dir(d.join("out/expers")).unwrap() {
        let l = diffbragg::experiment::ExperimentList::read(e.unwrap().path()).unwrap();
        assert_eq!(l.len(), 1);
        assert!(l.experiments[0].crystal.is_some());
    }
}
