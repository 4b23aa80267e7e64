//! The user's four phil files (shared/seed) load under their programs with the
//! values written in them, and the expected warnings.

use diffbragg::config::diffbragg::{LabelWeakCol, LogLevel, Minimizer, PredictionMethod};
use diffbragg::config::render::of_kind;
use diffbragg::config::value::AutoOr;
use diffbragg::config::{
    EnsHopperConfig, HopperConfig, IntegrateConfig, Origin, StillsProcessConfig, Warning, WarningKind,
};
use diffbragg::testutil::shared;
use std::path::PathBuf;

fn seed(name: &str) -> PathBuf {
    shared(&format!("seed/{name}"))
}

/// The parameter names listed by the one warning of `kind` (or none).
fn listed(warnings: &[Warning], kind: WarningKind) -> Vec<String> {
    let ws = of_kind(warnings, kind);
    assert!(ws.len() <= 1, "more than one {kind:?} warning: {ws:?}");
    ws.first()
        .map(|w| w.message.lines().skip(1).map(|l| l.trim().split(' ').next().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn line_of(cfg_origin: Option<&Origin>) -> usize {
    match cfg_origin {
        Some(Origin::File { line, .. }) => *line,
        o => panic!("not from a file: {o:?}"),
    }
}

#[test]
fn stage_one_under_hopper() {
    let (cfg, w) = HopperConfig::load(&[seed("stage_one_test.phil")], &[]).unwrap();
    assert_eq!(cfg.init.nabc, [30.0, 31.0, 32.0]);
    assert_eq!(cfg.init.g, 1e6);
    assert_eq!(cfg.mins.rot_xyz, [-15.0; 3]);
    assert_eq!(cfg.maxs.rot_xyz, [15.0; 3]);
    assert_eq!(cfg.maxs.nabc, [1000.0; 3]);
    assert_eq!(cfg.sigmas.rot_xyz, [0.001; 3]);
    assert_eq!(cfg.method, Minimizer::LbfgsB);
    assert_eq!(cfg.logging.rank0_level, LogLevel::High);
    assert_eq!(cfg.refiner.sigma_r, 10.0);
    assert_eq!(cfg.refiner.num_devices, 4);
    assert_eq!(cfg.downsamp_spec.delta_en, 0.5);
    assert_eq!(cfg.ucell_edge_perc, 15.0);
    assert_eq!(cfg.space_group.as_deref(), Some("P41212"));
    assert_eq!(cfg.roi.pad_shoebox_for_background_estimation, Some(10));
    assert!(cfg.roi.fit_tilt && !cfg.roi.reject_edge_reflections && !cfg.roi.reject_roi_with_hotpix);
    assert!(cfg.fix.detz_shift && cfg.spectrum_from_imageset && !cfg.use_restraints);
    assert_eq!(
        cfg.roi.hotpixel_mask.as_deref(),
        Some(std::path::Path::new(
            "/pscratch/sd/c/cctbx/cxilz0820/common/diffbragg/hotborder_rect_lowres_ring1p9_mask5_psana.mask"
        ))
    );
    assert_eq!(cfg.simulator.structure_factors.mtz_column.as_deref(), Some("F-model,PHIF-model"));
    // Relative paths resolve against the file's folder.
    assert_eq!(cfg.exp_ref_spec_file, Some(shared("seed/spec_file.out")));
    assert_eq!(cfg.outdir, Some(shared("seed/stage_one")));
    // Defaults that the file does not touch.
    assert_eq!(cfg.roi.shoebox_size, 10);
    assert_eq!(cfg.ftol, 1e-10);
    // Provenance.
    assert_eq!(line_of(cfg.sources.origin("init.Nabc")), 21);
    assert!(cfg.sources.origin("roi.shoebox_size").is_none());

    assert_eq!(listed(&w, WarningKind::Ignored), ["logging.rank0_level", "refiner.randomize_devices"]);
    assert!(listed(&w, WarningKind::NotImplemented).is_empty());
    assert!(listed(&w, WarningKind::NotUsedByProgram).is_empty());
    assert_eq!(w.len(), 1, "{w:?}");
}

#[test]
fn stage_two_under_ens_hopper_with_the_users_overrides() {
    let over: Vec<String> = "fix.Nabc=True fix.ucell=True fix.RotXYZ=True fix.Fhkl=False fix.G=False sigmas.G=1e-2 load_data_from_refl=True"
        .split(' ')
        .map(String::from)
        .collect();
    let (cfg, w) = EnsHopperConfig::load(&[seed("stage_two_test.phil")], &over).unwrap();
    assert_eq!(cfg.init.nabc, [30.0, 31.0, 32.0]);
    assert_eq!(cfg.init.g, 1e6);
    assert_eq!(cfg.refiner.stage_two.save_model_freq, 250);
    assert_eq!(cfg.refiner.stage_two.min_multiplicity, 1);
    assert!(cfg.fix.nabc && cfg.fix.ucell && cfg.fix.rot_xyz && !cfg.fix.fhkl && !cfg.fix.g);
    assert_eq!(cfg.sigmas.g, 1e-2);
    assert!(cfg.refiner.load_data_from_refl);
    assert_eq!(cfg.logging.rank0_level, LogLevel::High);
    assert!(matches!(
        cfg.sources.origin("refiner.load_data_from_refl"),
        Some(Origin::CmdLine { index: 6, .. })
    ));
    assert_eq!(
        listed(&w, WarningKind::Ignored),
        ["logging.disable", "logging.rank0_level", "refiner.randomize_devices"]
    );
    assert_eq!(w.len(), 1, "{w:?}");
}

#[test]
fn simulation_under_integrate() {
    let (cfg, w) = IntegrateConfig::load(&[seed("simulation.phil")], &[]).unwrap();
    let p = &cfg.predictions;
    assert_eq!(p.qcut, 0.0025);
    assert_eq!(p.label_weak_col, LabelWeakCol::Rlp);
    assert_eq!(p.threshold, 1e-3);
    assert_eq!(p.default_famplitude, 1e3);
    assert_eq!(p.resolution_range, [1.0, 40.0]);
    assert_eq!(p.method, PredictionMethod::Diffbragg);
    assert_eq!(p.weak_fraction, 0.7);
    assert!(p.laue_mode && !p.use_peak_detection && p.verbose);
    // The commented-out overrides stay at their defaults.
    assert_eq!(p.oversample_override, None);
    assert_eq!(p.nabc_override, None);
    assert!(cfg.simulator.detector.force_zero_thickness);
    assert_eq!(cfg.downsamp_spec.delta_en, 1.0);
    assert_eq!(listed(&w, WarningKind::Ignored), ["predictions.verbose"]);
    assert_eq!(w.len(), 1, "{w:?}");

    // The user's command line: `--cmdlinePhil threshold=1e2`.
    let (cfg, w) = IntegrateConfig::load(&[seed("simulation.phil")], &["threshold=1e2".into()]).unwrap();
    assert_eq!(cfg.predictions.threshold, 100.0);
    assert_eq!(of_kind(&w, WarningKind::Resolved).len(), 1);
}

#[test]
fn sim_processing_under_stills_process() {
    let (cfg, w) = StillsProcessConfig::load(&[seed("sim_processing.phil")], &[]).unwrap();
    let sf = &cfg.spotfinder;
    assert_eq!(sf.threshold.dispersion.global_threshold, AutoOr::Value(10.0), "the last definition wins");
    assert_eq!(line_of(cfg.sources.origin("spotfinder.threshold.dispersion.global_threshold")), 15);
    assert_eq!(sf.threshold.dispersion.kernel_size, [2, 2]);
    assert_eq!(sf.filter.min_spot_size, AutoOr::Value(2));
    assert_eq!(sf.filter.d_min, Some(2.0));
    assert_eq!(sf.filter.d_max, Some(30.0));
    assert_eq!(sf.filter.max_strong_pixel_fraction, 0.25);
    assert_eq!(
        sf.lookup.mask.as_deref(),
        Some(std::path::Path::new(
            "/pscratch/sd/c/cctbx/cxilz0820/common/masks/hotborder_rect_lowres_ring1p9_mask4_psana.mask"
        ))
    );
    assert_eq!(cfg.indexing.known_symmetry.space_group.as_deref(), Some("P 41 21 2"));
    assert_eq!(cfg.indexing.known_symmetry.unit_cell, Some([89.0, 89.0, 271.0, 90.0, 90.0, 90.0]));
    assert_eq!(
        cfg.indexing.stills.method_list.as_deref(),
        Some(&["fft1d".to_string(), "real_space_grid_search".to_string()][..])
    );
    assert_eq!(cfg.profile.gaussian_rs.parameters.sigma_b_cutoff, 100.0);

    let rep = of_kind(&w, WarningKind::Repeated);
    assert_eq!(rep.len(), 1);
    assert!(
        rep[0].message.contains("global_threshold") && rep[0].message.contains("lines 13, 15"),
        "{}",
        rep[0]
    );
    assert_eq!(listed(&w, WarningKind::Ignored), ["integration.profile.gaussian_rs.parameters.sigma_b"]);
    let mut ni = listed(&w, WarningKind::NotImplemented);
    ni.sort();
    assert_eq!(
        ni,
        [
            "indexing.known_symmetry.space_group",
            "indexing.known_symmetry.unit_cell",
            "indexing.multiple_lattice_search.max_lattices",
            "indexing.stills.method_list",
            "integration.lookup.mask",
            "profile.gaussian_rs.parameters.sigma_b_cutoff",
            "spotfinder.filter.max_strong_pixel_fraction",
        ]
    );
    assert_eq!(w.len(), 3, "{w:?}");
}

#[test]
fn seed_files_are_rejected_by_the_wrong_program() {
    // The proc phil is DIALS, not diffBragg: unknown names, each with its line.
    let e = HopperConfig::load(&[seed("sim_processing.phil")], &[]).unwrap_err().to_string();
    assert!(e.contains("line 3: unknown parameter `spotfinder.lookup.mask`"), "{e}");
    assert!(
        e.contains("it is a DIALS stills_process parameter: give this file to --program stills-process"),
        "{e}"
    );
    assert!(e.starts_with("15 errors in the configuration"), "{e}");
    let e = StillsProcessConfig::load(&[seed("stage_one_test.phil")], &[]).unwrap_err().to_string();
    assert!(e.contains("line 1: unknown parameter `outdir`"), "{e}");
}
