//! The schema carries the planned implementation status, and every entry is
//! documented and well formed.

use diffbragg::config::phil::is_valid_name;
use diffbragg::config::{DiffBraggParams, Root, Status, StillsProcessParams};
use std::collections::HashSet;

/// Parameters the project plans to implement (the configuration task's list).
const IMPLEMENTED: &[&str] = &[
    "exp_ref_spec_file",
    "outdir",
    "method",
    "ftol",
    "lbfgs_maxiter",
    "niter",
    "use_restraints",
    "ucell_edge_perc",
    "ucell_ang_abs",
    "space_group",
    "spectrum_from_imageset",
    "gen_gauss_spec",
    "simulator.oversample",
    "simulator.crystal.num_mosaicity_samples",
    "simulator.crystal.has_isotropic_ncells",
    "simulator.crystal.has_isotropic_mosaicity",
    "simulator.crystal.ncells_abc",
    "simulator.structure_factors.mtz_name",
    "simulator.structure_factors.mtz_column",
    "simulator.structure_factors.default_F",
    "simulator.beam.size_mm",
    "simulator.total_flux",
    "simulator.spectrum.stride",
    "simulator.spectrum.filename",
    "simulator.detector.force_zero_thickness",
    "simulator.init_scale",
    "refiner.sigma_r",
    "refiner.adu_per_photon",
    "refiner.reference_geom",
    "refiner.num_devices",
    "refiner.load_data_from_refl",
    "refiner.res_ranges",
    "roi.shoebox_size",
    "roi.centroid",
    "roi.fit_tilt",
    "roi.fit_tilt_using_weights",
    "roi.pad_shoebox_for_background_estimation",
    "roi.reject_edge_reflections",
    "roi.reject_roi_with_hotpix",
    "roi.hotpixel_mask",
    "roi.mask_outside_trusted_range",
    "roi.background_threshold",
    "roi.allow_overlapping_spots",
    "roi.skip_roi_with_negative_bg",
    "roi.only_filter_zingers_above_mean",
    "predictions.qcut",
    "predictions.label_weak_col",
    "predictions.threshold",
    "predictions.weak_fraction",
    "predictions.default_Famplitude",
    "predictions.resolution_range",
    "predictions.laue_mode",
    "predictions.use_peak_detection",
    "predictions.oversample_override",
    "predictions.Nabc_override",
    "predictions.pink_stride_override",
    "predictions.symbol_override",
    "predictions.use_diffBragg_mtz",
    "predictions.method",
    "Fhkl_channel_bounds",
    "Fhkl_dspace_bins",
    "max_process",
    "skip",
    "first_n",
];

/// Whole scopes planned as implemented (members with no model behind them,
/// such as the B factor, are the documented exceptions checked below).
const IMPLEMENTED_SCOPES: &[&str] = &[
    "init",
    "mins",
    "maxs",
    "sigmas",
    "fix",
    "centers",
    "betas",
    "types",
    "downsamp_spec",
    "refiner.stage_two",
    "filter_during_refinement",
    "filter_after_refinement",
];

const DIALS_IMPLEMENTED: &[&str] = &[
    "spotfinder.threshold.dispersion.gain",
    "spotfinder.threshold.dispersion.kernel_size",
    "spotfinder.threshold.dispersion.sigma_background",
    "spotfinder.threshold.dispersion.sigma_strong",
    "spotfinder.threshold.dispersion.min_local",
    "spotfinder.threshold.dispersion.global_threshold",
    "spotfinder.filter.min_spot_size",
    "spotfinder.filter.d_min",
    "spotfinder.filter.d_max",
    "spotfinder.lookup.mask",
];

fn status(schema: &diffbragg::config::Schema, name: &str) -> Status {
    schema.get(name).unwrap_or_else(|| panic!("`{name}` missing")).status
}

#[test]
fn planned_status() {
    let s = DiffBraggParams::schema();
    for n in IMPLEMENTED {
        assert_eq!(status(s, n), Status::Implemented, "{n}");
    }
    for scope in IMPLEMENTED_SCOPES {
        let members: Vec<_> = s.defs.iter().filter(|d| d.name.starts_with(&format!("{scope}."))).collect();
        assert!(!members.is_empty(), "{scope}");
        for d in members {
            let exception = d.name.ends_with(".B")
                || d.name.ends_with(".random_Gs")
                || d.name.ends_with(".random_Nabcs")
                || d.name == "maxs.eta"
                || d.name == "betas.ucell"
                || d.name.ends_with("s.Fhkl") && d.name.starts_with('m');
            if exception {
                assert!(
                    !matches!(d.status, Status::Implemented),
                    "{} should be documented as unsupported",
                    d.name
                );
            } else {
                assert_eq!(d.status, Status::Implemented, "{}", d.name);
            }
        }
    }
    for n in
        ["debug_mode", "prep_time", "refiner.randomize_devices", "simulator.device_id", "predictions.verbose"]
    {
        assert!(matches!(status(s, n), Status::Ignored(r) if !r.is_empty()), "{n}");
    }
    for d in s.defs.iter().filter(|d| d.name.starts_with("logging.")) {
        assert!(matches!(d.status, Status::Ignored(_)), "{}", d.name);
    }
    let dials = StillsProcessParams::schema();
    for n in DIALS_IMPLEMENTED {
        assert_eq!(status(dials, n), Status::Implemented, "{n}");
    }
    assert!(matches!(
        status(dials, "spotfinder.filter.max_strong_pixel_fraction"),
        Status::NotImplemented(_)
    ));
}

#[test]
fn every_entry_is_documented_and_unique() {
    for schema in [DiffBraggParams::schema(), StillsProcessParams::schema()] {
        let mut seen = HashSet::new();
        for d in &schema.defs {
            assert!(seen.insert(&d.name), "duplicate {}", d.name);
            assert!(is_valid_name(&d.name), "bad name {}", d.name);
            assert!(d.help.len() > 5, "{} has no help", d.name);
            assert!(!d.type_name.is_empty() && !d.default.is_empty(), "{}", d.name);
        }
    }
    assert_eq!(DiffBraggParams::schema().defs.len(), 350);
}
