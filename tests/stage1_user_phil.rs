//! The user's own stage-1 configuration (`shared/seed/stage_one_test.phil`,
//! LZ08 on Perlmutter) runs unchanged, with only its paths given on the
//! command line, and every parameter it sets is either honoured by stage 1 or
//! listed in a warning.

mod stage1_util;

use std::collections::BTreeSet;

/// Parameters of the user's file that stage 1 implements (each is read by
/// the stage-1 code; see src/stage1). Anything else the file sets must be
/// named in a warning.
const HONOURED: &[&str] = &[
    "outdir",
    "exp_ref_spec_file",
    "refiner.sigma_r",
    "refiner.adu_per_photon",
    "refiner.reference_geom",
    "use_restraints",
    "spectrum_from_imageset",
    "downsamp_spec.skip",
    "downsamp_spec.delta_en",
    "method",
    "sigmas.RotXYZ",
    "init.Nabc",
    "init.G",
    "mins.RotXYZ",
    "maxs.Nabc",
    "maxs.RotXYZ",
    "fix.detz_shift",
    "ucell_edge_perc",
    "ucell_ang_abs",
    "space_group",
    "simulator.oversample",
    "simulator.structure_factors.mtz_name",
    "simulator.structure_factors.mtz_column",
    "simulator.beam.size_mm",
    "simulator.detector.force_zero_thickness",
    "roi.mask_outside_trusted_range",
    "roi.fit_tilt",
    "roi.pad_shoebox_for_background_estimation",
    "roi.reject_edge_reflections",
    "roi.reject_roi_with_hotpix",
    "roi.hotpixel_mask",
    "roi.fit_tilt_using_weights",
];

#[test]
fn user_stage_one_phil_runs_with_paths_overridden() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    stage1_util::small(d, 1, 21, 256, 40.0, 12);
    // The MTZ columns the user's file names, with the synthetic amplitudes.
    let syn = diffbragg::io::mtz::Mtz::read(d.join("F.mtz")).unwrap();
    let hkl = syn.hkl().unwrap();
    let f = syn.column("F").unwrap().values.clone();
    let sg = diffbragg::symmetry::SpaceGroup::parse("P 41 21 2").unwrap();
    let mut m = diffbragg::io::mtz::Mtz::new_merged(syn.cell, sg, &hkl, ("lz08", "x", "y"), 1.3);
    m.add_column("F-model", 'F', f.clone()).unwrap();
    m.add_column("PHIF-model", 'P', vec![0.0; f.len()]).unwrap();
    let mtz = d.join("CRY1Aae_refine_156.mtz");
    m.write(&mtz).unwrap();
    // A psana-style mask converted to NPY (true = good).
    let mask = d.join("mask.npy");
    let py = format!("import numpy as np; np.save('{}', np.ones((1, 256, 256), bool))", mask.display());
    assert!(std::process::Command::new("python3").args(["-c", &py]).status().unwrap().success());
    let out = d.join("stage_one");
    let phil = diffbragg::testutil::shared("seed/stage_one_test.phil");
    let o = std::process::Command::new(stage1_util::bin())
        .arg("hopper")
        .arg(&phil)
        .arg("--no-progress")
        .arg("--cmdlinePhil")
        .arg(format!("exp_ref_spec_file={}", d.join("spec_file.out").display()))
        .arg(format!("outdir={}", out.display()))
        .arg(format!("refiner.reference_geom={}", d.join("shot_000.expt").display()))
        .arg(format!("roi.hotpixel_mask={}", mask.display()))
        .arg(format!("simulator.structure_factors.mtz_name={}", mtz.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{err}");
    assert!(o.status.success(), "stage 1 failed:\n{err}");
    assert!(err.contains("1 refined, 0 failed"), "{err}");
    let store = diffbragg::store::Store::open(&out).unwrap();
    let q = store.query("SELECT status, n_evals, sigz, spot_scales, ncells FROM shot_params").unwrap();
    println!("{}", arrow::util::pretty::pretty_format_batches(&q.batches).unwrap());
    // Every parameter set in the user's file: honoured, or named in a warning.
    let (cfg, _) = diffbragg::config::HopperConfig::load(std::slice::from_ref(&phil), &[]).unwrap();
    let set: BTreeSet<&String> = cfg.sources.0.keys().collect();
    assert!(set.len() >= 30, "{set:?}");
    let warnings: String =
        err.lines().skip_while(|l| !l.starts_with("warning")).collect::<Vec<_>>().join("\n");
    for name in set {
        assert!(
            HONOURED.contains(&name.as_str()) || warnings.contains(name.as_str()),
            "{name} is neither honoured by stage 1 nor listed in a warning"
        );
    }
    for w in ["logging.rank0_level", "refiner.randomize_devices", "refiner.num_devices"] {
        assert!(warnings.contains(w), "{w} missing from the warnings");
    }
}
