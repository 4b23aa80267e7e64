//! Cross-check of the schema against the reference master phil files: every
//! parameter name, its default and its type family must match diffBragg's
//! `simtbx/diffBragg/phil.py` (`hopper_phil + philz`, cctbx_project 8a8adcb6)
//! and DIALS's spot-finder scope (`spot_finding/factory.py` with its includes
//! and the dispersion threshold extension, dials c054ebea).
//!
//! The two tables below were extracted from those files by a small Python
//! reader of master phil (`name = default  # .type`, scopes joined with dots);
//! they are facts about the reference, not output of this crate.

use diffbragg::config::{Config, DiffBraggParams, Hopper, Root, Status, StillsProcess, StillsProcessParams};
use std::path::{Path, PathBuf};

const DIFFBRAGG_MASTER: &str = r#"
filter_during_refinement.enable = False  # bool
filter_during_refinement.after_n = 50  # int
filter_during_refinement.threshold = 20  # float
filter_after_refinement.enable = False  # bool
filter_after_refinement.max_attempts = 2  # int
filter_after_refinement.min_prev_niter = 50  # int
filter_after_refinement.max_prev_sigz = 10  # float
filter_after_refinement.threshold = 20  # float
symmetrize_Flatt = False  # bool
record_device_timings = False  # bool
consider_multicrystal_shots = False  # bool
debug_mode = False  # bool
nominal_Fhkl_only = True  # bool
use_geometric_mean_Fhkl = False  # bool
Fhkl_channel_bounds = None  # floats
Fhkl_dspace_bins = 10  # int
try_strong_mask_only = False  # bool
dilate_strong_mask = None  # int
hopper_save_freq = None  # int
terminate_after_n_converged_iter = None  # int
converged_param_percent_change = 0.1  # float
mask_highest_values = None  # int
use_float32 = False  # bool
test_gathered_file = False  # bool
load_data_from_refls = False  # bool
gathered_output_file = None  # str
only_dump_gathers = False  # bool
gathers_dir = None  # str
dump_gathers = False  # bool
spectrum_from_imageset = False  # bool
gen_gauss_spec = False  # bool
use_perpixel_dark_rms = False  # bool
isotropic.diffuse_gamma = False  # bool
isotropic.diffuse_sigma = False  # bool
downsamp_spec.skip = False  # bool
downsamp_spec.filt_freq = 0.07  # float
downsamp_spec.filt_order = 3  # int
downsamp_spec.tail = 50  # int
downsamp_spec.delta_en = 0.5  # float
filter_unpredicted_refls_in_output = True  # bool
tag = stage1  # str
ignore_existing = False  # bool
global_method = *basinhopping annealing  # choice
nelder_mead_maxfev = 60  # int
nelder_mead_fatol = 0.0001  # float
niter_per_J = 1  # int
rescale_params = True  # bool
best_pickle = None  # str
betas.Finit = None  # float
betas.Friedel = None  # float
betas.ucell_a = None  # float
betas.ucell_b = None  # float
betas.ucell_c = None  # float
betas.ucell_alpha = None  # float
betas.ucell_beta = None  # float
betas.ucell_gamma = None  # float
betas.Nvol = None  # float
betas.detz_shift = None  # float
betas.ucell = None  # floats
betas.RotXYZ = None  # float
betas.Nabc = None  # floats(size=3)
betas.Ndef = None  # floats(size=3)
betas.diffuse_sigma = None  # floats(size=3)
betas.diffuse_gamma = None  # floats(size=3)
betas.G = None  # float
betas.B = None  # float
betas.eta_abc = None  # floats(size=3)
betas.spec = None  # floats(size=2)
betas.Fhkl = None  # float
dual.initial_temp = 5230  # float
dual.no_local_search = False  # bool
dual.visit = 2.62  # float
dual.accept = -5  # float
centers.ucell_a = None  # float
centers.ucell_b = None  # float
centers.ucell_c = None  # float
centers.ucell_alpha = None  # float
centers.ucell_beta = None  # float
centers.ucell_gamma = None  # float
centers.Nvol = None  # float
centers.detz_shift = None  # float
centers.RotXYZ = None  # floats(size=3)
centers.Nabc = None  # floats(size=3)
centers.Ndef = None  # floats(size=3)
centers.diffuse_sigma = None  # floats(size=3)
centers.diffuse_gamma = None  # floats(size=3)
centers.G = None  # float
centers.B = None  # float
centers.eta_abc = None  # floats(size=3)
centers.spec = None  # floats(size=2)
skip = None  # int
hess = None  # str
stepsize = 0.5  # float
temp = 1  # float
niter = 0  # int
exp_ref_spec_file = None  # str
method = None  # str
opt_det = None  # str
opt_beam = None  # str
number_of_xtals = 1  # int
sanity_test_input = True  # bool
outdir = None  # str
max_process = -1  # int
types.G = *ranged positive  # choice
types.Nabc = *ranged positive  # choice
types.diffuse_sigma = *ranged positive  # choice
types.diffuse_gamma = *ranged positive  # choice
sigmas.spec = [1,1]  # floats(size=2)
sigmas.roiPerScale = 1  # float
sigmas.detz_shift = 1  # float
sigmas.Nabc = [1,1,1]  # floats(size=3)
sigmas.Ndef = [1,1,1]  # floats(size=3)
sigmas.diffuse_sigma = [1,1,1]  # floats(size=3)
sigmas.diffuse_gamma = [1,1,1]  # floats(size=3)
sigmas.RotXYZ = [1e-3,1e-3,1e-3]  # floats(size=3)
sigmas.G = 1  # float
sigmas.B = 1  # float
sigmas.eta_abc = [1,1,1]  # floats(size=3)
sigmas.ucell = [1,1,1,1,1,1]  # floats
sigmas.Fhkl = 1  # float
init.random_Gs = None  # floats
init.random_Nabcs = None  # floats
init.spec = [0,1]  # floats(size=2)
init.detz_shift = 0  # float
init.Nabc = [100,100,100]  # floats(size=3)
init.Ndef = [0,0,0]  # floats(size=3)
init.diffuse_sigma = [.01,.01,.01]  # floats(size=3)
init.diffuse_gamma = [1,1,1]  # floats(size=3)
init.RotXYZ = [0,0,0]  # floats(size=3)
init.G = 1  # float
init.B = 0  # float
init.eta_abc = [0,0,0]  # floats(size=3)
mins.detz_shift = -10  # float
mins.Nabc = [3,3,3]  # floats(size=3)
mins.Ndef = [-200,-200,-200]  # floats(size=3)
mins.diffuse_sigma = [0,0,0]  # floats(size=3)
mins.diffuse_gamma = [0,0,0]  # floats(size=3)
mins.RotXYZ = [-3.1415926, -3.1415926, -3.1415926]  # floats(size=3)
mins.G = 0  # float
mins.B = 0  # float
mins.Fhkl = 0  # float
mins.eta_abc = [0,0,0]  # floats(size=3)
mins.spec = [-0.01, 0.95]  # floats(size=2)
maxs.detz_shift = 10  # float
maxs.eta = 0.1  # float
maxs.Nabc = [300,300,300]  # floats(size=3)
maxs.Ndef = [200,200,200]  # floats(size=3)
maxs.diffuse_sigma = [20,20,20]  # floats(size=3)
maxs.diffuse_gamma = [10000,10000,10000]  # floats(size=3)
maxs.RotXYZ = [3.1415926, 3.1415926, 3.1415926]  # floats(size=3)
maxs.G = 1e12  # float
maxs.B = 1e3  # float
maxs.eta_abc = [10,10,10]  # floats(size=3)
maxs.Fhkl = 1e6  # float
maxs.spec = [0.01, 1.05]  # floats(size=2)
fix.Fhkl = True  # bool
fix.spec = True  # bool
fix.perRoiScale = True  # bool
fix.G = False  # bool
fix.B = True  # bool
fix.eta_abc = True  # bool
fix.RotXYZ = False  # bool
fix.Nabc = False  # bool
fix.Ndef = True  # bool
fix.diffuse_sigma = True  # bool
fix.diffuse_gamma = True  # bool
fix.ucell = False  # bool
fix.detz_shift = True  # bool
relative_tilt = False  # bool
ucell_edge_perc = 10  # float
ucell_ang_abs = 5  # float
no_Nabc_scale = False  # bool
use_diffuse_models = False  # bool
diffuse_stencil_size = 0  # int
diffuse_orientation = 1  # int
symmetrize_diffuse = True  # bool
gamma_miller_units = False  # bool
sigma_frac = None  # float
sanity_test_hkl_variation = False  # bool
sanity_test_models = False  # bool
sanity_test_amplitudes = False  # bool
x_write_freq = 25  # int
percentile_cut = None  # float
remove_duplicate_hkl = False  # bool
space_group = None  # str
first_n = None  # int
maxiter = 15000  # int
ftol = 1e-10  # float
lbfgs_maxiter = 1e5  # int
disp = False  # bool
use_restraints = False  # bool
min_multi = 2  # int
min_spot = 5  # int
store_wavelength_images = False  # bool
logging.show_params_at_minimum = True  # bool
logging.parameters = False  # bool
logging.disable = False  # bool
logging.logfiles_level = low *normal high  # choice
logging.logfiles = False  # bool
logging.rank0_level = low *normal high  # choice
logging.other_ranks_level = *low normal high  # choice
logging.overwrite = True  # bool
logging.logname = mainLog  # str
logging.log_hostname = True  # bool
profile = False  # bool
profile_name = lineProf  # str
simulator.oversample = 0  # int
simulator.device_id = 0  # int
simulator.init_scale = 1  # float
simulator.total_flux = 1e12  # float
simulator.crystal.ncells_abc = (10,10,10)  # floats(size=3)
simulator.crystal.ncells_def = (0,0,0)  # floats(size=3)
simulator.crystal.has_isotropic_ncells = False  # bool
simulator.crystal.has_isotropic_mosaicity = False  # bool
simulator.crystal.mosaicity = 0  # float
simulator.crystal.anisotropic_mosaicity = None  # floats
simulator.crystal.num_mosaicity_samples = 1  # int
simulator.crystal.mos_angles_per_axis = 10  # int
simulator.crystal.num_mos_axes = 10  # int
simulator.crystal.mosaicity_method = 2  # int
simulator.crystal.rotXYZ_ucell = None  # floats(size=9)
simulator.gonio.delta_phi = None  # float
simulator.gonio.phi_steps = 50  # int
simulator.structure_factors.from_pdb.name = None  # str
simulator.structure_factors.from_pdb.add_anom = True  # bool
simulator.structure_factors.from_pdb.k_sol = None  # float
simulator.structure_factors.from_pdb.b_sol = None  # float
simulator.structure_factors.mtz_name = None  # str
simulator.structure_factors.mtz_column = None  # str
simulator.structure_factors.dmin = 1  # float
simulator.structure_factors.dmax = None  # float
simulator.structure_factors.default_F = 0  # float
simulator.spectrum.filename = None  # str
simulator.spectrum.stride = 1  # int
simulator.spectrum.filename_list = None  # str
simulator.spectrum.gauss_spec.fwhm = 10  # float
simulator.spectrum.gauss_spec.nchannels = 20  # int
simulator.spectrum.gauss_spec.res = 1  # float
simulator.beam.size_mm = 1  # float
simulator.detector.thick = None  # float
simulator.detector.atten = None  # float
simulator.detector.force_zero_thickness = False  # bool
simulator.detector.thicksteps = 1  # int
simulator.psf.use = False  # bool
simulator.psf.fwhm = 100  # float
simulator.psf.radius = 7  # int
refiner.check_expt_format = True  # bool
refiner.refldata_trusted = *allValid fg bg  # choice
refiner.refldata_to_photons = False  # bool
refiner.load_data_from_refl = False  # bool
refiner.test_gathered_file = False  # bool
refiner.gather_dir = None  # str
refiner.break_signal = None  # int
refiner.debug_pixel_panelfastslow = None  # ints(size=3)
refiner.gain_map_min_max = [.5,2]  # floats(size=2)
refiner.refine_gain_map = False  # bool
refiner.save_gain_freq = 10  # int
refiner.region_size = [50,50]  # ints(size=2)
refiner.res_ranges = None  # str
refiner.force_symbol = None  # str
refiner.force_unit_cell = None  # ints(size=6)
refiner.num_devices = 1  # int
refiner.refine_Fcell = None  # ints(size_min=1)
refiner.refine_spot_scale = None  # ints(size_min=1)
refiner.refine_Nabc = False  # bool
refiner.gain_restraint = None  # floats(size=2)
refiner.max_calls = [100]  # ints(size_min=1)
refiner.panel_group_file = None  # str
refiner.update_oversample_during_refinement = False  # bool
refiner.sigma_r = 3  # float
refiner.adu_per_photon = 1  # float
refiner.use_curvatures_threshold = 10  # int
refiner.curvatures = False  # bool
refiner.start_with_curvatures = False  # bool
refiner.tradeps = 1e-2  # float
refiner.io.restart_file = None  # str
refiner.io.output_dir = None  # str
refiner.quiet = False  # bool
refiner.verbose = 0  # int
refiner.num_macro_cycles = 1  # int
refiner.ncells_mask = *000 110 101 011 111  # choice
refiner.reference_geom = None  # str
refiner.stage_two.use_nominal_hkl = True  # bool
refiner.stage_two.save_model_freq = 50  # int
refiner.stage_two.save_Z_freq = 25  # int
refiner.stage_two.min_multiplicity = 1  # int
refiner.stage_two.Fref_mtzname = None  # str
refiner.stage_two.Fref_mtzcol = "Famp(+),Famp(-)"  # str
refiner.stage_two.d_min = 2  # float
refiner.stage_two.d_max = 999  # float
refiner.stage_two.n_bin = 10  # int
roi.centroid = *obs cal  # choice
roi.trusted_range = None  # floats(size=2)
roi.mask_all_if_any_outside_trusted_range = True  # bool
roi.mask_outside_trusted_range = False  # bool
roi.only_filter_zingers_above_mean = True  # bool
roi.cache_dir_only = False  # bool
roi.fit_tilt = False  # bool
roi.force_negative_background_to_zero = False  # bool
roi.background_threshold = 3.5  # float
roi.pad_shoebox_for_background_estimation = None  # int
roi.shoebox_size = 10  # int
roi.deltaQ = None  # float
roi.reject_edge_reflections = True  # bool
roi.reject_roi_with_hotpix = True  # bool
roi.hotpixel_mask = None  # str
roi.panels = None  # str
roi.fit_tilt_using_weights = False  # bool
roi.allow_overlapping_spots = False  # bool
roi.skip_roi_with_negative_bg = True  # bool
geometry.save_state_freq = 50  # int
geometry.save_state_overwrite = True  # bool
geometry.pandas_dir = None  # str
geometry.optimized_results_tag = None  # str
geometry.refls_key = stage1_refls  # str
geometry.optimize_method = *lbfgsb nelder  # choice
geometry.input_pkl = None  # str
geometry.input_pkl_glob = None  # str
geometry.optimize = False  # bool
geometry.save_optimized_det_freq = 1  # int
geometry.optimized_detector_name = "diffBragg_detector.expt"  # str
geometry.min.panel_rotations = -1,-1,-1  # floats(size=3)
geometry.min.panel_translations = -1,-1,-1  # floats(size=3)
geometry.max.panel_rotations = 1,1,1  # floats(size=3)
geometry.max.panel_translations = 1,1,1  # floats(size=3)
geometry.center.panel_rotations = 0,0,0  # floats(size=3)
geometry.center.panel_translations = 0,0,0  # floats(size=3)
geometry.betas.panel_rot = 1e6,1e6,1e6  # floats(size=3)
geometry.betas.panel_xyz = 1e6,1e6,1e6  # floats(size=3)
geometry.betas.close_distances = None  # float
geometry.fix.panel_rotations = 0,0,0  # ints(size=3)
geometry.fix.panel_translations = 0,0,0  # ints(size=3)
predictions.use_peak_detection = False  # bool
predictions.verbose = False  # bool
predictions.laue_mode = False  # bool
predictions.qcut = 0.1  # float
predictions.label_weak_col = "xyzobs.px.value"  # str
predictions.weak_fraction = 0.5  # float
predictions.threshold = 1e-3  # float
predictions.thicksteps_override = None  # int
predictions.oversample_override = None  # int
predictions.use_diffBragg_mtz = False  # bool
predictions.Nabc_override = None  # ints(size=3)
predictions.pink_stride_override = None  # int
predictions.default_Famplitude = 1e3  # float
predictions.resolution_range = [1,999]  # floats(size=2)
predictions.symbol_override = None  # str
predictions.method = *diffbragg exascale  # choice
"#;

const DIALS_SPOTFINDER_MASTER: &str = r#"
spotfinder.lookup.mask = None  # str
spotfinder.write_hot_mask = False  # bool
spotfinder.hot_mask_prefix = 'hot_mask'  # str
spotfinder.force_2d = False  # bool
spotfinder.scan_range = None  # ints(size=2)
spotfinder.exclude_images = None  # strings
spotfinder.exclude_images_multiple = None  # int(value_min=2)
spotfinder.region_of_interest = None  # ints(size=4)
spotfinder.compute_mean_background = False  # bool
spotfinder.filter.min_spot_size = Auto  # int(value_min=1)
spotfinder.filter.max_spot_size = 1000  # int(value_min=1, allow_none=False)
spotfinder.filter.max_separation = 2  # float(value_min=0)
spotfinder.filter.max_strong_pixel_fraction = 0.25  # float(value_min=0, value_max=1)
spotfinder.filter.background_gradient.filter = False  # bool
spotfinder.filter.background_gradient.background_size = 2  # int(value_min=1)
spotfinder.filter.background_gradient.gradient_cutoff = 4  # float(value_min=0)
spotfinder.filter.spot_density.filter = False  # bool
spotfinder.filter.border = 0  # int
spotfinder.filter.d_min = None  # float(value_min=0)
spotfinder.filter.d_max = None  # float(value_min=0)
spotfinder.filter.disable_parallax_correction = False  # bool
spotfinder.filter.resolution_range = None  # floats(2)
spotfinder.filter.untrusted.panel = None  # int
spotfinder.filter.untrusted.circle = None  # ints(3)
spotfinder.filter.untrusted.rectangle = None  # ints(4)
spotfinder.filter.untrusted.polygon = None  # ints(value_min=0)
spotfinder.filter.untrusted.pixel = None  # ints(2, value_min=0)
spotfinder.filter.ice_rings.filter = False  # bool
spotfinder.filter.ice_rings.unit_cell = 4.498,4.498,7.338,90,90,120  # unit_cell
spotfinder.filter.ice_rings.space_group = 194  # space_group
spotfinder.filter.ice_rings.width = 0.002  # float(value_min=0.0)
spotfinder.filter.ice_rings.d_min = None  # float(value_min=0.0)
spotfinder.mp.method = *none drmaa sge lsf pbs  # choice
spotfinder.mp.njobs = 1  # int(value_min=1)
spotfinder.mp.nproc = 1  # int(value_min=1)
spotfinder.mp.chunksize = auto  # int(value_min=1)
spotfinder.mp.min_chunksize = 20  # int(value_min=1)
spotfinder.tof.rs_proximity_threshold_multiplier = None  # float
spotfinder.laue.initial_wavelength = None  # float(value_min=.1)
spotfinder.threshold.algorithm = dispersion *dispersion_extended radial_profile  # choice
spotfinder.threshold.dispersion.gain = None  # float(value_min=0.0)
spotfinder.threshold.dispersion.kernel_size = 3 3  # ints(size=2)
spotfinder.threshold.dispersion.sigma_background = 6  # float
spotfinder.threshold.dispersion.sigma_strong = 3  # float
spotfinder.threshold.dispersion.min_local = 2  # int
spotfinder.threshold.dispersion.global_threshold = 0  # float
"#;

/// (name, default text, reference type) of each line.
fn entries(master: &str) -> Vec<(&str, &str, &str)> {
    master
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (assign, ty) = l.rsplit_once("  # ").expect("table line");
            let (name, value) = assign.split_once(" = ").expect("table line");
            (name, value, ty)
        })
        .collect()
}

fn load_text<K: diffbragg::config::ProgramKind>(text: &str) -> diffbragg::error::Result<Config<K>> {
    let files = vec![(PathBuf::from("/ref/master.phil"), text.to_string())];
    Config::<K>::from_texts(&files, &[], Path::new("/ref")).map(|(c, _)| c)
}

/// The leading type word we expect for a reference `.type`.
fn expected_type_prefix(reference: &str) -> &'static [&'static str] {
    let base = reference.split('(').next().unwrap_or(reference);
    match (base, reference) {
        (_, r) if r.starts_with("floats(size=") || r.starts_with("ints(size=") => &["sized"],
        ("bool", _) => &["bool"],
        ("float", _) => &["float"],
        ("int", _) => &["int"],
        ("floats", _) => &["floats"],
        ("ints", _) => &["ints"],
        ("strings", _) => &["strings"],
        ("choice", _) => &["choice("],
        ("str", _) => &["str", "path", "choice(", "resolution ranges"],
        ("unit_cell", _) => &["floats(size=6)"],
        ("space_group", _) => &["str"],
        _ => &["?"],
    }
}

fn check_types<R: Root>(master: &str) {
    let schema = R::schema();
    for (name, _, ty) in entries(master) {
        if schema.opaque_scope(name).is_some() {
            continue;
        }
        let ours =
            &schema.get(name).unwrap_or_else(|| panic!("reference parameter `{name}` missing")).type_name;
        // A sized list (floats(size=3)) must map to exactly that size.
        let ok = expected_type_prefix(ty).iter().any(|p| {
            if *p == "sized" {
                ours.starts_with(ty)
            } else {
                ours.starts_with(p)
            }
        });
        assert!(ok, "`{name}`: reference type `{ty}`, ours `{ours}`");
    }
}

#[test]
fn diffbragg_names_match_the_reference_exactly() {
    let reference: Vec<&str> = entries(DIFFBRAGG_MASTER).iter().map(|e| e.0).collect();
    assert_eq!(reference.len(), 348, "table damaged");
    let ours: Vec<&str> = DiffBraggParams::schema().defs.iter().map(|d| d.name.as_str()).collect();
    for n in &reference {
        assert!(ours.contains(n), "reference parameter `{n}` missing from our schema");
    }
    // Ours has exactly two more: parameters diffBragg removed that user files still carry.
    let extra: Vec<&&str> = ours.iter().filter(|n| !reference.contains(n)).collect();
    assert_eq!(extra, vec![&"prep_time", &"refiner.randomize_devices"]);
    for n in ["prep_time", "refiner.randomize_devices"] {
        assert!(matches!(DiffBraggParams::schema().get(n).unwrap().status, Status::Ignored(_)));
    }
}

#[test]
fn diffbragg_defaults_match_the_reference() {
    // The one intended difference: diffBragg's `method = None` (Nelder–Mead)
    // is not offered; ours defaults to L-BFGS-B.
    let text: String =
        DIFFBRAGG_MASTER.lines().filter(|l| !l.starts_with("method = ")).map(|l| format!("{l}\n")).collect();
    let cfg = load_text::<Hopper>(&text).unwrap();
    assert_eq!(cfg.params, DiffBraggParams::default(), "a reference default differs from ours");
    let err = load_text::<Hopper>("method = None\n").unwrap_err().to_string();
    assert!(err.contains("only L-BFGS-B is implemented"), "{err}");
    check_types::<DiffBraggParams>(DIFFBRAGG_MASTER);
}

#[test]
fn dials_spotfinder_matches_the_reference() {
    let cfg = load_text::<StillsProcess>(DIALS_SPOTFINDER_MASTER).unwrap();
    assert_eq!(cfg.params, StillsProcessParams::default(), "a reference default differs from ours");
    let schema = StillsProcessParams::schema();
    for (name, _, _) in entries(DIALS_SPOTFINDER_MASTER) {
        assert!(
            schema.get(name).is_some() || name.starts_with("spotfinder.filter.untrusted."),
            "DIALS parameter `{name}` is neither modelled nor in an unchecked scope"
        );
    }
    // Every modelled spotfinder name exists in DIALS.
    let reference: Vec<&str> = entries(DIALS_SPOTFINDER_MASTER).iter().map(|e| e.0).collect();
    for d in schema.defs.iter().filter(|d| d.name.starts_with("spotfinder.")) {
        assert!(reference.contains(&d.name.as_str()), "`{}` is not a DIALS spotfinder parameter", d.name);
    }
    check_types::<StillsProcessParams>(DIALS_SPOTFINDER_MASTER);
}
