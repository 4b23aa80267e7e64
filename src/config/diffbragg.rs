//! diffBragg's parameters: `hopper_phil + simulator_phil + refiner_phil +
//! roi_phil + predictions_phil` (cctbx `simtbx/diffBragg/phil.py`), the one
//! scope that `simtbx.diffBragg.hopper`, `diffBragg.integrate` (its pred phil)
//! and `ens.hopper` all parse. Names, types and defaults are diffBragg's; help
//! texts are ours. Two parameters that diffBragg has since removed but that
//! real configuration files still carry (`prep_time`,
//! `refiner.randomize_devices`) are recognised and ignored.
//!
//! Units are those of the phil file; the stage code converts (e.g. mm → m)
//! where its model needs it.
//!
//! # Decisions where the reference is wrong or subtle
//! * `method` defaults to `L-BFGS-B` (reference: None, i.e. Nelder–Mead, which
//!   no real configuration uses). It is the only method offered; others are an error.
//! * `niter` (basin-hopping rounds) must be 0: one local minimisation.
//! * `filter_after_refinement.enable` is honoured (the reference never reads it
//!   and always runs the after-refinement filter).
//! * `centers.detz_shift` is in mm, like `init/mins/maxs.detz_shift` (the
//!   reference compares it with the internal value in metres); `betas.detz_shift` is in mm².
//! * `betas.ucell_alpha/beta/gamma` are variances in deg², matching
//!   `centers.ucell_alpha…` in degrees (the reference converts the centre to
//!   radians but not the variance, so its number acts as rad²). To reuse a
//!   reference value v, write v·(180/π)².
//! * `centers.RotXYZ` is honoured (the reference ignores it and restrains to 0).
//! * `max_process = -1` means all shots (the reference's ens.hopper drops the last one).
//! * `roi.hotpixel_mask` holds True for **good** pixels, whatever the reference help says.
//! * `debug_mode` is ignored: every output is always written.

use super::schema::{ign, ni, Root, Schema, I, N};
use super::value::ResRanges;
use super::Program;
use crate::{phil_choice, phil_scope};
use std::path::PathBuf;
use std::sync::OnceLock;

const LOGGING: &str =
    "console output is controlled by the diffbragg command itself, not by diffBragg's logging settings";
const NM: &str = "Nelder–Mead is not offered (see `method`)";
const UNUSED_REF: &str = "the reference never reads it either";
const CONVERGED: &str =
    "unreachable in the reference (an early return precedes it); convergence is ftol/lbfgs_maxiter";
const DEVICE: &str = "the GPU is chosen from the rank and `refiner.num_devices` (one knob)";
/// diffBragg's literal default bound for RotXYZ (not exactly π).
#[allow(clippy::approx_constant)]
const PI: f64 = 3.1415926;

phil_choice! {
    /// `method`: the local minimiser.
    pub enum Minimizer { LbfgsB = "L-BFGS-B" }
    note "only L-BFGS-B is implemented; diffBragg's default None means Nelder-Mead, which is not offered"
}
phil_choice! {
    /// `global_method`.
    pub enum GlobalMethod { Basinhopping = "basinhopping", Annealing = "annealing" }
}
phil_choice! {
    /// `types.*`: how a refined parameter is mapped from the optimiser's coordinate.
    pub enum ParamKind { Ranged = "ranged", Positive = "positive" }
}
phil_choice! {
    /// `logging.*_level`.
    pub enum LogLevel { Low = "low", Normal = "normal", High = "high" }
}
phil_choice! {
    /// `roi.centroid`: which reflection column centres the ROI.
    pub enum RoiCentroid { Obs = "obs", Cal = "cal" }
}
phil_choice! {
    /// `refiner.refldata_trusted`.
    pub enum RefldataTrusted { AllValid = "allValid", Fg = "fg", Bg = "bg" }
}
phil_choice! {
    /// `refiner.ncells_mask`.
    pub enum NcellsMask { M000 = "000", M110 = "110", M101 = "101", M011 = "011", M111 = "111" }
}
phil_choice! {
    /// `geometry.optimize_method`.
    pub enum GeomOptimizeMethod { Lbfgsb = "lbfgsb", Nelder = "nelder" }
}
phil_choice! {
    /// `predictions.method`: the forward-model engine.
    pub enum PredictionMethod { Diffbragg = "diffbragg", Exascale = "exascale" }
}
phil_choice! {
    /// `predictions.label_weak_col`: the vector compared with `qcut`.
    pub enum LabelWeakCol { Rlp = "rlp", XyzobsPx = "xyzobs.px.value" }
    note "rlp compares reciprocal-lattice vectors in Å⁻¹, xyzobs.px.value compares pixel positions"
}

phil_scope! {
    /// The root of diffBragg's parameters (hopper, integrate's pred phil, ens.hopper).
    pub struct DiffBraggParams {
        exp_ref_spec_file "exp_ref_spec_file": Option<PathBuf> = None, I, "",
            "Text file listing the shots: per line `expt refl [spectrum.lam] [exp_idx]`. Relative paths inside it resolve against its own folder.";
        outdir "outdir": Option<PathBuf> = None, I, "", "Output folder.";
        method "method": Minimizer = Minimizer::LbfgsB, I, "",
            "Local minimiser. Only L-BFGS-B is implemented, and it is the default (diffBragg's default None means Nelder–Mead).";
        ftol "ftol": f64 = 1e-10, I, "",
            "L-BFGS-B stops when the relative decrease of the target (f_k−f_k+1)/max(|f_k|,|f_k+1|,1) falls below this.";
        lbfgs_maxiter "lbfgs_maxiter": usize = 100_000, I, "iterations", "Maximum number of L-BFGS-B iterations.";
        niter "niter": i64 = 0, I, "",
            "Basin-hopping rounds. Only 0 (a single local minimisation) is implemented; other values are an error.";
        use_restraints "use_restraints": bool = false, I, "",
            "Add the Gaussian restraints given by centers.* and betas.* to the stage-1 target. The reference's ens.hopper never adds per-shot restraints.";
        ucell_edge_perc "ucell_edge_perc": f64 = 10.0, I, "%",
            "Refined cell edges stay within ± this percentage of their starting values.";
        ucell_ang_abs "ucell_ang_abs": f64 = 5.0, I, "deg",
            "Refined cell angles stay within ± this many degrees of their starting values.";
        space_group "space_group": Option<String> = None, I, "",
            "Space group (symbol such as P41212) of the structure factors; also required when Fhkl_channel_bounds is set.";
        spectrum_from_imageset "spectrum_from_imageset": bool = false, I, "",
            "Read each shot's spectrum from its image file, then downsample it (downsamp_spec).";
        gen_gauss_spec "gen_gauss_spec": bool = false, I, "",
            "Model each shot with a synthetic Gaussian spectrum (simulator.spectrum.gauss_spec) when the data carry none.";
        skip "skip": Option<usize> = None, I, "shots", "Skip this many shots from the start of the input list.";
        first_n "first_n": Option<usize> = None, I, "shots", "Process only the first n shots.";
        max_process "max_process": i64 = -1, I, "shots",
            "Process at most this many shots; -1 means all. (The reference's ens.hopper silently drops the last shot with -1; we do not.)";
        fhkl_channel_bounds "Fhkl_channel_bounds": Option<Vec<f64>> = None, I, "eV",
            "Energy bounds splitting the spectrum into channels with separate structure-factor scales; 0 and ∞ are implicit, so one number gives two channels.";
        fhkl_dspace_bins "Fhkl_dspace_bins": usize = 10, I, "bins",
            "Number of resolution bins (out to the detector corner) used by the betas.Fhkl / betas.Finit restraints.";
        debug_mode "debug_mode": bool = false, ign("every output is always written; there is no separate debug mode"), "",
            "Write the per-shot diagnostic files.";
        symmetrize_flatt "symmetrize_Flatt": bool = false, N, "", "Add 3-fold symmetric mosaic blocks to the lattice transform.";
        record_device_timings "record_device_timings": bool = false, N, "", "Time host/device copies and kernels.";
        consider_multicrystal_shots "consider_multicrystal_shots": bool = false, N, "", "Model every crystal of a multi-lattice shot.";
        nominal_fhkl_only "nominal_Fhkl_only": bool = true, ign(UNUSED_REF), "", "Refine only structure factors assigned to a reflection.";
        use_geometric_mean_fhkl "use_geometric_mean_Fhkl": bool = false, N, "", "Use geometric rather than arithmetic bin means in the betas.Fhkl restraint.";
        try_strong_mask_only "try_strong_mask_only": bool = false, N, "", "Trust only strong-spot pixels when the refls carry a strong mask.";
        dilate_strong_mask "dilate_strong_mask": Option<i64> = None, N, "iterations", "Binary dilation of the strong-spot mask.";
        hopper_save_freq "hopper_save_freq": Option<i64> = None, N, "iterations", "Save intermediate results every n iterations.";
        terminate_after_n_converged_iter "terminate_after_n_converged_iter": Option<i64> = None, ign(CONVERGED), "iterations",
            "Stop once every parameter changed by less than converged_param_percent_change for this many iterations.";
        converged_param_percent_change "converged_param_percent_change": f64 = 0.1, ign(CONVERGED), "%", "See terminate_after_n_converged_iter.";
        mask_highest_values "mask_highest_values": Option<i64> = None, N, "pixels", "Mask the n brightest pixels of each shoebox.";
        use_float32 "use_float32": bool = false, N, "", "Store pixel data in 32-bit floats.";
        test_gathered_file "test_gathered_file": bool = false, N, "", "Check that a gathered data file round-trips.";
        load_data_from_refls "load_data_from_refls": bool = false, N, "",
            "Top-level legacy flag (note the s); stage 2 uses refiner.load_data_from_refl instead.";
        gathered_output_file "gathered_output_file": Option<PathBuf> = None, N, "", "Input file written after gathering data.";
        only_dump_gathers "only_dump_gathers": bool = false, N, "", "Gather the data, write it and stop.";
        gathers_dir "gathers_dir": Option<PathBuf> = None, N, "", "Folder for gathered data.";
        dump_gathers "dump_gathers": bool = false, N, "", "Write the gathered data to reflection tables.";
        use_perpixel_dark_rms "use_perpixel_dark_rms": bool = false, N, "", "Per-pixel readout noise from the Jungfrau pedestal RMS.";
        filter_unpredicted_refls_in_output "filter_unpredicted_refls_in_output": bool = true, N, "",
            "Drop output reflections where the model has no Bragg signal.";
        tag "tag": String = "stage1".into(), N, "", "Name tag of per-shot output files.";
        ignore_existing "ignore_existing": bool = false, N, "", "Skip shots that already have results.";
        global_method "global_method": GlobalMethod = GlobalMethod::Basinhopping, N, "", "Global optimiser around the local one.";
        nelder_mead_maxfev "nelder_mead_maxfev": i64 = 60, ign(NM), "", "Nelder–Mead evaluations per modelled pixel.";
        nelder_mead_fatol "nelder_mead_fatol": f64 = 1e-4, ign(NM), "", "Nelder–Mead tolerance on the target.";
        niter_per_j "niter_per_J": i64 = 1, N, "", "Compute gradients every n iterations.";
        rescale_params "rescale_params": bool = true, ign("deprecated in diffBragg, where it has no effect"), "", "Deprecated.";
        best_pickle "best_pickle": Option<PathBuf> = None, N, "", "Previous per-shot results to start from.";
        hess "hess": Option<String> = None, N, "", "Hessian option passed to scipy.";
        stepsize "stepsize": f64 = 0.5, N, "", "Basin-hopping step size.";
        temp "temp": f64 = 1.0, N, "", "Basin-hopping temperature.";
        opt_det "opt_det": Option<PathBuf> = None, N, "", "Experiment list whose detector replaces each shot's.";
        opt_beam "opt_beam": Option<PathBuf> = None, N, "", "Experiment list whose beam replaces each shot's.";
        number_of_xtals "number_of_xtals": usize = 1, N, "", "Crystal domains modelled per shot.";
        sanity_test_input "sanity_test_input": bool = true, N, "", "Check the inputs before refining.";
        relative_tilt "relative_tilt": bool = false, ign(UNUSED_REF), "", "Fit background tilt relative to the ROI corner.";
        no_nabc_scale "no_Nabc_scale": bool = false, N, "", "Drop the Nabc scaling of the spot intensity.";
        use_diffuse_models "use_diffuse_models": bool = false, N, "", "Add the diffuse-scattering model (init.diffuse_*).";
        diffuse_stencil_size "diffuse_stencil_size": i64 = 0, N, "", "Accuracy stencil of the diffuse model.";
        diffuse_orientation "diffuse_orientation": i64 = 1, N, "", "Orientation of diffuse features: 0 along (a−b, a+b, c), 1 along (a, b, c).";
        symmetrize_diffuse "symmetrize_diffuse": bool = true, N, "", "Symmetrise the diffuse model with the Laue group.";
        gamma_miller_units "gamma_miller_units": bool = false, N, "", "Express init.diffuse_gamma in Miller-index units.";
        sigma_frac "sigma_frac": Option<f64> = None, ign(UNUSED_REF), "", "Fhkl restraint width as a fraction of the start.";
        sanity_test_hkl_variation "sanity_test_hkl_variation": bool = false, N, "", "Measure the HKL variation inside shoeboxes.";
        sanity_test_models "sanity_test_models": bool = false, N, "", "Check stage-1 models are reproduced at the start.";
        sanity_test_amplitudes "sanity_test_amplitudes": bool = false, N, "", "Check every HKL is predicted and present.";
        x_write_freq "x_write_freq": i64 = 25, N, "iterations", "Save the parameter vector every n iterations.";
        percentile_cut "percentile_cut": Option<f64> = None, N, "%", "Mask pixels below this percentile.";
        remove_duplicate_hkl "remove_duplicate_hkl": bool = false, N, "", "Drop ROIs whose Miller index occurs more than once in a shot.";
        maxiter "maxiter": i64 = 15000, ign("the reference never reads it; use lbfgs_maxiter"), "", "Iteration cap.";
        disp "disp": bool = false, N, "", "scipy convergence printout.";
        min_multi "min_multi": i64 = 2, ign(UNUSED_REF), "", "Minimum ASU multiplicity.";
        min_spot "min_spot": i64 = 5, ign(UNUSED_REF), "", "Minimum spots per shot.";
        store_wavelength_images "store_wavelength_images": bool = false, N, "", "Write per-pixel mean-wavelength images.";
        profile "profile": bool = false, N, "", "Line-profile the hot functions.";
        profile_name "profile_name": String = "lineProf".into(), N, "", "File name of the line profile.";
        prep_time "prep_time": Option<f64> = None, ign("removed from diffBragg in 2024; shots are balanced across ranks automatically"), "s",
            "Time budget for ordering the input across ranks.";
    }
    scopes {
        filter_during_refinement "filter_during_refinement": FilterDuring;
        filter_after_refinement "filter_after_refinement": FilterAfter;
        isotropic "isotropic": Isotropic;
        downsamp_spec "downsamp_spec": DownsampSpec;
        betas "betas": Betas;
        dual "dual": Dual;
        centers "centers": Centers;
        types "types": Types;
        sigmas "sigmas": Sigmas;
        init "init": Init;
        mins "mins": Mins;
        maxs "maxs": Maxs;
        fix "fix": Fix;
        logging "logging": Logging;
        simulator "simulator": Simulator;
        refiner "refiner": Refiner;
        roi "roi": Roi;
        geometry "geometry": Geometry;
        predictions "predictions": Predictions;
    }
}

phil_scope! {
    /// `filter_during_refinement`: drop outlier ROIs while refining (stage 1).
    pub struct FilterDuring {
        enable "enable": bool = false, I, "", "Every after_n evaluations, mark whole ROIs untrusted whose per-ROI sigma-Z is an outlier.";
        after_n "after_n": usize = 50, I, "evaluations", "Evaluations between outlier checks.";
        threshold "threshold": f64 = 20.0, I, "",
            "Modified z-score (MAD based) of per-ROI sigma-Z above which an ROI is an outlier; lower flags more.";
    }
}

phil_scope! {
    /// `filter_after_refinement`: filter and refine again when a fit looks poor (stage 1).
    pub struct FilterAfter {
        enable "enable": bool = false, I, "",
            "Filter outlier ROIs and refine again (from the starting point) when the fit took fewer than min_prev_niter evaluations or ended with sigma-Z above max_prev_sigz. Honoured here; the reference ignores it and always filters.";
        max_attempts "max_attempts": usize = 2, I, "", "Maximum number of extra refinements.";
        min_prev_niter "min_prev_niter": usize = 50, I, "evaluations", "Refine again if the previous fit used fewer evaluations than this.";
        max_prev_sigz "max_prev_sigz": f64 = 10.0, I, "", "Refine again if the previous fit ended with sigma-Z above this.";
        threshold "threshold": f64 = 20.0, I, "", "Outlier threshold, as filter_during_refinement.threshold.";
    }
}

phil_scope! {
    /// `isotropic`.
    pub struct Isotropic {
        diffuse_gamma "diffuse_gamma": bool = false, N, "", "Refine one diffuse gamma instead of three.";
        diffuse_sigma "diffuse_sigma": bool = false, N, "", "Refine one diffuse sigma instead of three.";
    }
}

phil_scope! {
    /// `downsamp_spec`: how an image-set spectrum is reduced before modelling.
    pub struct DownsampSpec {
        skip "skip": bool = false, I, "",
            "Use the raw spectrum (strided by simulator.spectrum.stride) without filtering or resampling; its weights are then not renormalised.";
        filt_freq "filt_freq": f64 = 0.07, I, "1/spectrometer pixel", "Cut-off of the low-pass Butterworth filter.";
        filt_order "filt_order": usize = 3, I, "", "Order of the Butterworth filter.";
        tail "tail": usize = 50, I, "spectrometer pixels", "Points at each end of the spectrum used to estimate its background.";
        delta_en "delta_en": f64 = 0.5, I, "eV", "Energy spacing of the resampled spectrum.";
    }
}

phil_scope! {
    /// `betas`: restraint variances (used when use_restraints=True; Fhkl ones in stage 2).
    pub struct Betas {
        finit "Finit": Option<f64> = None, I, "", "Stage 2: restrain each intensity to its starting value relative to its resolution-bin mean.";
        friedel "Friedel": Option<f64> = None, I, "", "Stage 2: restrain Friedel mates towards equal intensity.";
        ucell_a "ucell_a": Option<f64> = None, I, "Å²", "Variance of the restraint on cell edge a.";
        ucell_b "ucell_b": Option<f64> = None, I, "Å²", "Variance of the restraint on cell edge b.";
        ucell_c "ucell_c": Option<f64> = None, I, "Å²", "Variance of the restraint on cell edge c.";
        ucell_alpha "ucell_alpha": Option<f64> = None, I, "deg²",
            "Variance of the restraint on alpha, in deg² (the reference effectively reads rad²; multiply a reference value by (180/π)²).";
        ucell_beta "ucell_beta": Option<f64> = None, I, "deg²", "Variance of the restraint on beta, in deg² (see ucell_alpha).";
        ucell_gamma "ucell_gamma": Option<f64> = None, I, "deg²", "Variance of the restraint on gamma, in deg² (see ucell_alpha).";
        nvol "Nvol": Option<f64> = None, I, "", "Variance of the restraint on the mosaic-domain volume det(N).";
        detz_shift "detz_shift": Option<f64> = None, I, "mm²", "Variance of the restraint on the detector shift, in mm² (the reference works in m).";
        ucell "ucell": Option<Vec<f64>> = None, ni("deprecated in diffBragg; use betas.ucell_a … ucell_gamma"), "", "Cell variances in crystal-system order.";
        rot_xyz "RotXYZ": Option<f64> = None, I, "rad²", "Variance of the restraint on the misorientation angles.";
        nabc "Nabc": Option<[f64; 3]> = None, I, "unit cells²", "Variances of the restraints on Na, Nb, Nc.";
        ndef "Ndef": Option<[f64; 3]> = None, I, "unit cells²", "Variances of the restraints on the off-diagonal N terms.";
        diffuse_sigma "diffuse_sigma": Option<[f64; 3]> = None, I, "", "Variances of the diffuse sigma restraints.";
        diffuse_gamma "diffuse_gamma": Option<[f64; 3]> = None, I, "", "Variances of the diffuse gamma restraints.";
        g "G": Option<f64> = None, I, "", "Variance of the restraint on the scale G.";
        b "B": Option<f64> = None, ni("no B-factor parameter in the model"), "Å⁴", "Variance of the B-factor restraint.";
        eta_abc "eta_abc": Option<[f64; 3]> = None, I, "deg²", "Variances of the mosaic-spread restraints.";
        spec "spec": Option<[f64; 2]> = None, I, "", "Variances of the spectrum offset and scale restraints.";
        fhkl "Fhkl": Option<f64> = None, I, "", "Stage 2: restrain each resolution bin's mean intensity to its starting value.";
    }
}

phil_scope! {
    /// `dual`: scipy dual-annealing settings.
    pub struct Dual {
        initial_temp "initial_temp": f64 = 5230.0, N, "", "Initial temperature.";
        no_local_search "no_local_search": bool = false, N, "", "Classical simulated annealing without local search.";
        visit "visit": f64 = 2.62, N, "", "scipy's visit parameter.";
        accept "accept": f64 = -5.0, N, "", "scipy's accept parameter.";
    }
}

phil_scope! {
    /// `centers`: restraint targets (used when use_restraints=True).
    pub struct Centers {
        ucell_a "ucell_a": Option<f64> = None, I, "Å", "Target of cell edge a.";
        ucell_b "ucell_b": Option<f64> = None, I, "Å", "Target of cell edge b.";
        ucell_c "ucell_c": Option<f64> = None, I, "Å", "Target of cell edge c.";
        ucell_alpha "ucell_alpha": Option<f64> = None, I, "deg", "Target of alpha.";
        ucell_beta "ucell_beta": Option<f64> = None, I, "deg", "Target of beta.";
        ucell_gamma "ucell_gamma": Option<f64> = None, I, "deg", "Target of gamma.";
        nvol "Nvol": Option<f64> = None, I, "unit cells³", "Target of the mosaic-domain volume Na·Nb·Nc.";
        detz_shift "detz_shift": Option<f64> = None, I, "mm",
            "Target of the detector shift, in mm like init/mins/maxs.detz_shift (the reference compares it with metres).";
        rot_xyz "RotXYZ": Option<[f64; 3]> = None, I, "rad",
            "Targets of the misorientation angles; None means 0. Honoured here; the reference ignores it and always uses 0.";
        nabc "Nabc": Option<[f64; 3]> = None, I, "unit cells", "Targets of Na, Nb, Nc.";
        ndef "Ndef": Option<[f64; 3]> = None, I, "unit cells", "Targets of the off-diagonal N terms.";
        diffuse_sigma "diffuse_sigma": Option<[f64; 3]> = None, I, "", "Targets of diffuse sigma.";
        diffuse_gamma "diffuse_gamma": Option<[f64; 3]> = None, I, "", "Targets of diffuse gamma.";
        g "G": Option<f64> = None, I, "", "Target of the scale G.";
        b "B": Option<f64> = None, ni("no B-factor parameter in the model"), "Å²", "Target of the B factor.";
        eta_abc "eta_abc": Option<[f64; 3]> = None, I, "deg", "Targets of the mosaic spreads.";
        spec "spec": Option<[f64; 2]> = None, I, "", "Targets of the spectrum offset and scale (0, 1 is no correction).";
    }
}

phil_scope! {
    /// `types`: reparameterisation of each refined quantity.
    pub struct Types {
        g "G": ParamKind = ParamKind::Ranged, I, "",
            "ranged: sine map into [mins.G, maxs.G]; positive: G = init·exp(σ(x−1)). With init.G far below maxs.G, ranged starts at its lower turning point; positive is better behaved.";
        nabc "Nabc": ParamKind = ParamKind::Ranged, I, "", "Map for Na, Nb, Nc (see types.G).";
        diffuse_sigma "diffuse_sigma": ParamKind = ParamKind::Ranged, I, "", "Map for diffuse sigma.";
        diffuse_gamma "diffuse_gamma": ParamKind = ParamKind::Ranged, I, "", "Map for diffuse gamma.";
    }
}

phil_scope! {
    /// `sigmas`: sensitivity σ of each parameter's map from the optimiser coordinate.
    pub struct Sigmas {
        spec "spec": [f64; 2] = [1.0, 1.0], I, "", "σ of the spectrum offset and scale.";
        roi_per_scale "roiPerScale": f64 = 1.0, I, "", "σ of the per-ROI scales.";
        detz_shift "detz_shift": f64 = 1.0, I, "", "σ of the detector shift.";
        nabc "Nabc": [f64; 3] = [1.0; 3], I, "", "σ of Na, Nb, Nc.";
        ndef "Ndef": [f64; 3] = [1.0; 3], I, "", "σ of the off-diagonal N terms.";
        diffuse_sigma "diffuse_sigma": [f64; 3] = [1.0; 3], I, "", "σ of diffuse sigma.";
        diffuse_gamma "diffuse_gamma": [f64; 3] = [1.0; 3], I, "", "σ of diffuse gamma.";
        rot_xyz "RotXYZ": [f64; 3] = [1e-3; 3], I, "", "σ of the misorientation angles.";
        g "G": f64 = 1.0, I, "", "σ of the scale G.";
        b "B": f64 = 1.0, ni("no B-factor parameter in the model"), "", "σ of the B factor.";
        eta_abc "eta_abc": [f64; 3] = [1.0; 3], I, "", "σ of the mosaic spreads.";
        ucell "ucell": Vec<f64> = vec![1.0; 6], I, "", "σ of the free cell parameters, in crystal-system order.";
        fhkl "Fhkl": f64 = 1.0, I, "", "Stage 2: σ of the structure-factor scales s = exp(σ(x−1)).";
    }
}

phil_scope! {
    /// `init`: starting values (stage 2 takes them per shot from stage-1 results).
    pub struct Init {
        random_gs "random_Gs": Option<Vec<f64>> = None, N, "", "Pick init.G at random from these.";
        random_nabcs "random_Nabcs": Option<Vec<f64>> = None, N, "unit cells", "Pick init.Nabc at random from these.";
        spec "spec": [f64; 2] = [0.0, 1.0], I, "Å, –", "Spectrum correction λ' = offset + scale·λ.";
        detz_shift "detz_shift": f64 = 0.0, I, "mm", "Shift of every panel along the lab z axis.";
        nabc "Nabc": [f64; 3] = [100.0; 3], I, "unit cells", "Mosaic-domain size along a, b, c.";
        ndef "Ndef": [f64; 3] = [0.0; 3], I, "unit cells", "Off-diagonal terms of the mosaic-domain size tensor.";
        diffuse_sigma "diffuse_sigma": [f64; 3] = [0.01; 3], I, "Å", "Diffuse-scattering sigma.";
        diffuse_gamma "diffuse_gamma": [f64; 3] = [1.0; 3], I, "Å", "Diffuse-scattering gamma.";
        rot_xyz "RotXYZ": [f64; 3] = [0.0; 3], I, "rad", "Misorientation angles about x, y, z.";
        g "G": f64 = 1.0, I, "", "Per-shot scale factor.";
        b "B": f64 = 0.0, ni("no B-factor parameter in the model"), "Å²", "B factor.";
        eta_abc "eta_abc": [f64; 3] = [0.0; 3], I, "deg", "Mosaic spread about a, b, c (must be > 0 to refine it).";
    }
}

phil_scope! {
    /// `mins`: lower bounds of the ranged maps.
    pub struct Mins {
        detz_shift "detz_shift": f64 = -10.0, I, "mm", "Lower bound of the detector shift.";
        nabc "Nabc": [f64; 3] = [3.0; 3], I, "unit cells", "Lower bounds of Na, Nb, Nc.";
        ndef "Ndef": [f64; 3] = [-200.0; 3], I, "unit cells", "Lower bounds of the off-diagonal N terms.";
        diffuse_sigma "diffuse_sigma": [f64; 3] = [0.0; 3], I, "Å", "Lower bounds of diffuse sigma.";
        diffuse_gamma "diffuse_gamma": [f64; 3] = [0.0; 3], I, "Å", "Lower bounds of diffuse gamma.";
        rot_xyz "RotXYZ": [f64; 3] = [-PI; 3], I, "rad", "Lower bounds of the misorientation angles.";
        g "G": f64 = 0.0, I, "", "Lower bound of G.";
        b "B": f64 = 0.0, ni("no B-factor parameter in the model"), "Å²", "Lower bound of B.";
        fhkl "Fhkl": f64 = 0.0, ign(UNUSED_REF), "", "Lower bound of the Fhkl scales.";
        eta_abc "eta_abc": [f64; 3] = [0.0; 3], I, "deg", "Lower bounds of the mosaic spreads.";
        spec "spec": [f64; 2] = [-0.01, 0.95], I, "Å, –", "Lower bounds of the spectrum offset and scale.";
    }
}

phil_scope! {
    /// `maxs`: upper bounds of the ranged maps.
    pub struct Maxs {
        detz_shift "detz_shift": f64 = 10.0, I, "mm", "Upper bound of the detector shift.";
        eta "eta": f64 = 0.1, N, "deg", "Legacy isotropic mosaic-spread bound (use maxs.eta_abc).";
        nabc "Nabc": [f64; 3] = [300.0; 3], I, "unit cells", "Upper bounds of Na, Nb, Nc.";
        ndef "Ndef": [f64; 3] = [200.0; 3], I, "unit cells", "Upper bounds of the off-diagonal N terms.";
        diffuse_sigma "diffuse_sigma": [f64; 3] = [20.0; 3], I, "Å", "Upper bounds of diffuse sigma.";
        diffuse_gamma "diffuse_gamma": [f64; 3] = [10000.0; 3], I, "Å", "Upper bounds of diffuse gamma.";
        rot_xyz "RotXYZ": [f64; 3] = [PI; 3], I, "rad", "Upper bounds of the misorientation angles.";
        g "G": f64 = 1e12, I, "", "Upper bound of G.";
        b "B": f64 = 1e3, ni("no B-factor parameter in the model"), "Å²", "Upper bound of B.";
        eta_abc "eta_abc": [f64; 3] = [10.0; 3], I, "deg", "Upper bounds of the mosaic spreads.";
        fhkl "Fhkl": f64 = 1e6, ign(UNUSED_REF), "", "Upper bound of the Fhkl scales.";
        spec "spec": [f64; 2] = [0.01, 1.05], I, "Å, –", "Upper bounds of the spectrum offset and scale.";
    }
}

phil_scope! {
    /// `fix`: which parameters are held fixed.
    pub struct Fix {
        fhkl "Fhkl": bool = true, I, "", "Fix the structure-factor scales (stage 2 sets False).";
        spec "spec": bool = true, I, "", "Fix the spectrum correction (offset and scale).";
        per_roi_scale "perRoiScale": bool = true, I, "", "Fix the per-ROI scale factors.";
        g "G": bool = false, I, "", "Fix the per-shot scale G.";
        b "B": bool = true, ni("no B-factor parameter in the model"), "", "Fix the B factor.";
        eta_abc "eta_abc": bool = true, I, "", "Fix the mosaic spreads.";
        rot_xyz "RotXYZ": bool = false, I, "", "Fix the misorientation angles.";
        nabc "Nabc": bool = false, I, "", "Fix Na, Nb, Nc.";
        ndef "Ndef": bool = true, I, "", "Fix the off-diagonal N terms.";
        diffuse_sigma "diffuse_sigma": bool = true, I, "", "Fix diffuse sigma.";
        diffuse_gamma "diffuse_gamma": bool = true, I, "", "Fix diffuse gamma.";
        ucell "ucell": bool = false, I, "", "Fix the unit cell.";
        detz_shift "detz_shift": bool = true, I, "", "Fix the detector shift.";
    }
}

phil_scope! {
    /// `logging`: diffBragg's log settings (ignored).
    pub struct Logging {
        show_params_at_minimum "show_params_at_minimum": bool = true, ign(LOGGING), "", "Print parameters at each minimum.";
        parameters "parameters": bool = false, ign(LOGGING), "", "Print parameters at every iteration.";
        disable "disable": bool = false, ign(LOGGING), "", "Turn logging off.";
        logfiles_level "logfiles_level": LogLevel = LogLevel::Normal, ign(LOGGING), "", "Level of log files.";
        logfiles "logfiles": bool = false, ign(LOGGING), "", "Write log files in outdir.";
        rank0_level "rank0_level": LogLevel = LogLevel::Normal, ign(LOGGING), "", "Console level of rank 0.";
        other_ranks_level "other_ranks_level": LogLevel = LogLevel::Low, ign(LOGGING), "", "Console level of other ranks.";
        overwrite "overwrite": bool = true, ign(LOGGING), "", "Overwrite existing log files.";
        logname "logname": String = "mainLog".into(), ign(LOGGING), "", "Log file name.";
        log_hostname "log_hostname": bool = true, ign(LOGGING), "", "Prefix log files with the host name.";
    }
}

phil_scope! {
    /// `simulator`: forward-model settings.
    pub struct Simulator {
        oversample "oversample": usize = 0, I, "sub-pixels per axis", "Pixel oversampling; 0 chooses it from the crystal and detector.";
        device_id "device_id": i64 = 0, ign(DEVICE), "", "GPU id.";
        init_scale "init_scale": f64 = 1.0, I, "", "Initial crystal scale of the simulator.";
        total_flux "total_flux": f64 = 1e12, I, "photons", "Total flux of a shot; spectrum weights are scaled to sum to it.";
    }
    scopes {
        crystal "crystal": SimCrystal;
        gonio "gonio": SimGonio;
        structure_factors "structure_factors": StructureFactors;
        spectrum "spectrum": SimSpectrum;
        beam "beam": SimBeam;
        detector "detector": SimDetector;
        psf "psf": SimPsf;
    }
}

phil_scope! {
    /// `simulator.crystal`.
    pub struct SimCrystal {
        ncells_abc "ncells_abc": [f64; 3] = [10.0; 3], I, "unit cells",
            "Mosaic-domain size used to build the simulator (auto-oversampling); refinement starts from init.Nabc.";
        ncells_def "ncells_def": [f64; 3] = [0.0; 3], N, "unit cells", "Off-diagonal domain-size terms of the simulator.";
        has_isotropic_ncells "has_isotropic_ncells": bool = false, I, "", "Refine one domain size (Nb = Nc = Na).";
        has_isotropic_mosaicity "has_isotropic_mosaicity": bool = false, I, "", "Refine one mosaic spread for all three axes.";
        mosaicity "mosaicity": f64 = 0.0, N, "deg", "Isotropic mosaic spread of the simulator.";
        anisotropic_mosaicity "anisotropic_mosaicity": Option<Vec<f64>> = None, N, "deg", "Anisotropic mosaic spread (3 or 6 numbers).";
        num_mosaicity_samples "num_mosaicity_samples": usize = 1, I, "domains",
            "Number of mosaic domains modelled; must be 1 or even.";
        mos_angles_per_axis "mos_angles_per_axis": i64 = 10, N, "", "Angles per axis for uniform mosaic sampling.";
        num_mos_axes "num_mos_axes": i64 = 10, N, "", "Axes for uniform mosaic sampling.";
        mosaicity_method "mosaicity_method": i64 = 2, N, "", "1 random, 2 even mosaic sampling.";
        rot_xyz_ucell "rotXYZ_ucell": Option<[f64; 9]> = None, N, "deg, Å, deg", "Misset angles then a unit cell applied to the crystal.";
    }
}

phil_scope! {
    /// `simulator.gonio`.
    pub struct SimGonio {
        delta_phi "delta_phi": Option<f64> = None, N, "deg", "Goniometer rotation during the shot.";
        phi_steps "phi_steps": i64 = 50, N, "", "Discrete goniometer positions.";
    }
}

phil_scope! {
    /// `simulator.structure_factors`.
    pub struct StructureFactors {
        mtz_name "mtz_name": Option<PathBuf> = None, I, "", "MTZ file with the starting structure factors (takes precedence over from_pdb).";
        mtz_column "mtz_column": Option<String> = None, I, "",
            "MTZ column(s), e.g. \"F-model,PHIF-model\"; intensities are converted to amplitudes.";
        dmin "dmin": f64 = 1.0, N, "Å", "High-resolution limit of a computed structure-factor array.";
        dmax "dmax": Option<f64> = None, N, "Å", "Low-resolution limit of a computed structure-factor array.";
        default_f "default_F": f64 = 0.0, I, "",
            "Amplitude used outside the Miller-index box of the array, and for every index when no MTZ is given.";
    }
    scopes {
        from_pdb "from_pdb": FromPdb;
    }
}

phil_scope! {
    /// `simulator.structure_factors.from_pdb`.
    pub struct FromPdb {
        name "name": Option<PathBuf> = None, N, "", "PDB model to compute structure factors from.";
        add_anom "add_anom": bool = true, N, "", "Add anomalous scattering at the beam wavelength.";
        k_sol "k_sol": Option<f64> = None, N, "", "Bulk-solvent scale.";
        b_sol "b_sol": Option<f64> = None, N, "Å²", "Bulk-solvent B.";
    }
}

phil_scope! {
    /// `simulator.spectrum`.
    pub struct SimSpectrum {
        filename "filename": Option<PathBuf> = None, I, "", "A .lam spectrum file (wavelength, weight per line) used for every shot.";
        stride "stride": usize = 1, I, "", "Keep every n-th spectrum point.";
        filename_list "filename_list": Option<PathBuf> = None, N, "", "File listing one .lam file per shot.";
    }
    scopes {
        gauss_spec "gauss_spec": GaussSpec;
    }
}

phil_scope! {
    /// `simulator.spectrum.gauss_spec` (with gen_gauss_spec=True).
    pub struct GaussSpec {
        fwhm "fwhm": f64 = 10.0, I, "eV", "Full width at half maximum of the Gaussian spectrum.";
        nchannels "nchannels": usize = 20, I, "channels", "Number of energies, centred on the shot's nominal energy.";
        res "res": f64 = 1.0, I, "eV", "Energy spacing of the channels.";
    }
}

phil_scope! {
    /// `simulator.beam`.
    pub struct SimBeam {
        size_mm "size_mm": f64 = 1.0, I, "mm", "Beam diameter.";
    }
}

phil_scope! {
    /// `simulator.detector`.
    pub struct SimDetector {
        thick "thick": Option<f64> = None, N, "mm", "Sensor thickness override (needs atten).";
        atten "atten": Option<f64> = None, N, "mm", "Sensor absorption length override (needs thick).";
        force_zero_thickness "force_zero_thickness": bool = false, I, "", "Treat the sensor as infinitely thin (recommended).";
        thicksteps "thicksteps": i64 = 1, N, "layers", "Layers through the sensor.";
    }
}

phil_scope! {
    /// `simulator.psf`.
    pub struct SimPsf {
        r#use "use": bool = false, N, "", "Convolve the model with a point-spread function.";
        fwhm "fwhm": f64 = 100.0, N, "µm", "PSF full width at half maximum.";
        radius "radius": i64 = 7, N, "pixels", "PSF kernel radius.";
    }
}

phil_scope! {
    /// `refiner`: data and refinement settings.
    pub struct Refiner {
        sigma_r "sigma_r": f64 = 3.0, I, "ADU", "Readout noise (standard deviation of the dark signal); divided by adu_per_photon.";
        adu_per_photon "adu_per_photon": f64 = 1.0, I, "ADU/photon", "Detector gain: image values are divided by this to give photons.";
        reference_geom "reference_geom": Option<PathBuf> = None, I, "", "Experiment list whose detector replaces every shot's detector.";
        num_devices "num_devices": usize = 1, I, "GPUs per node", "GPUs per node; each rank uses device (local rank mod num_devices).";
        load_data_from_refl "load_data_from_refl": bool = false, I, "",
            "Stage 2: read pixels, background and mask from the pre-imported tables instead of the images.";
        res_ranges "res_ranges": Option<ResRanges> = None, I, "Å",
            "Keep only reflections inside these resolution ranges, written \"dmin-dmax,dmin-dmax\" (high resolution first).";
        check_expt_format "check_expt_format": bool = true, N, "", "Open the image format of each experiment.";
        refldata_trusted "refldata_trusted": RefldataTrusted = RefldataTrusted::AllValid, N, "",
            "Which shoebox mask codes count as trusted when reading data from reflection tables.";
        refldata_to_photons "refldata_to_photons": bool = false, N, "", "Divide shoebox data by adu_per_photon.";
        test_gathered_file "test_gathered_file": bool = false, N, "", "Check a gathered file round-trips.";
        gather_dir "gather_dir": Option<PathBuf> = None, N, "", "Folder for gathered input data.";
        break_signal "break_signal": Option<i64> = None, N, "", "Signal that stops refinement early.";
        debug_pixel_panelfastslow "debug_pixel_panelfastslow": Option<[i64; 3]> = None, N, "", "Pixel (panel, fast, slow) to report on.";
        gain_map_min_max "gain_map_min_max": [f64; 2] = [0.5, 2.0], N, "", "Bounds of the refined gain map.";
        refine_gain_map "refine_gain_map": bool = false, N, "", "Refine a detector gain map.";
        save_gain_freq "save_gain_freq": i64 = 10, N, "iterations", "Save the gain map every n iterations.";
        region_size "region_size": [i64; 2] = [50, 50], N, "pixels", "Gain-map region size (slow, fast).";
        force_symbol "force_symbol": Option<String> = None, N, "", "Space group used to map Miller indices to the ASU.";
        force_unit_cell "force_unit_cell": Option<[i64; 6]> = None, N, "", "Unit cell override.";
        refine_fcell "refine_Fcell": Option<Vec<i64>> = None, N, "", "Legacy refiner: refine amplitudes per trial.";
        refine_spot_scale "refine_spot_scale": Option<Vec<i64>> = None, N, "", "Legacy refiner: refine the scale per trial.";
        refine_nabc "refine_Nabc": bool = false, N, "", "Legacy refiner: refine Nabc.";
        gain_restraint "gain_restraint": Option<[f64; 2]> = None, N, "", "Gain restraint centre and variance.";
        max_calls "max_calls": Vec<i64> = vec![100], N, "", "Legacy refiner: calls per trial.";
        panel_group_file "panel_group_file": Option<PathBuf> = None, N, "", "Panel → group table for geometry refinement.";
        update_oversample_during_refinement "update_oversample_during_refinement": bool = false, N, "", "Re-derive oversample as Nabc changes.";
        use_curvatures_threshold "use_curvatures_threshold": i64 = 10, N, "", "Legacy refiner option.";
        curvatures "curvatures": bool = false, N, "", "Legacy refiner option.";
        start_with_curvatures "start_with_curvatures": bool = false, N, "", "Legacy refiner option.";
        tradeps "tradeps": f64 = 1e-2, N, "", "Legacy LBFGS termination.";
        quiet "quiet": bool = false, N, "", "Silence the legacy refiner.";
        verbose "verbose": i64 = 0, N, "", "nanoBragg verbosity.";
        num_macro_cycles "num_macro_cycles": i64 = 1, N, "", "Repeat the refinement scheme n times.";
        ncells_mask "ncells_mask": NcellsMask = NcellsMask::M000, N, "", "Which Ncells are refined together.";
        randomize_devices "randomize_devices": bool = true, ign(DEVICE), "", "Pick a random GPU (removed from diffBragg in 2023).";
    }
    scopes {
        io "io": RefinerIo;
        stage_two "stage_two": StageTwo;
    }
}

phil_scope! {
    /// `refiner.io`.
    pub struct RefinerIo {
        restart_file "restart_file": Option<PathBuf> = None, N, "", "Restart file.";
        output_dir "output_dir": Option<PathBuf> = None, N, "", "Output folder of the legacy refiner.";
    }
}

phil_scope! {
    /// `refiner.stage_two`.
    pub struct StageTwo {
        use_nominal_hkl "use_nominal_hkl": bool = true, I, "", "Use each reflection's nominal Miller index as a filter for Fhkl gradients.";
        save_model_freq "save_model_freq": usize = 50, I, "iterations", "Save the structure-factor model every n iterations.";
        save_z_freq "save_Z_freq": usize = 25, I, "iterations", "Save per-pixel Z-scores every n iterations.";
        min_multiplicity "min_multiplicity": usize = 1, I, "", "Structure factors observed fewer times than this are not refined.";
        fref_mtzname "Fref_mtzname": Option<PathBuf> = None, I, "", "Reference MTZ used only to report R and CC against.";
        fref_mtzcol "Fref_mtzcol": String = "Famp(+),Famp(-)".into(), I, "", "Column(s) of Fref_mtzname.";
        d_min "d_min": f64 = 2.0, I, "Å", "High-resolution limit of the report binning.";
        d_max "d_max": f64 = 999.0, I, "Å", "Low-resolution limit of the report binning.";
        n_bin "n_bin": usize = 10, I, "bins", "Number of report bins.";
    }
}

phil_scope! {
    /// `roi`: regions of interest around spots, masks and background.
    pub struct Roi {
        shoebox_size "shoebox_size": usize = 10, I, "pixels", "Side of the square ROI around each spot.";
        centroid "centroid": RoiCentroid = RoiCentroid::Obs, I, "", "Centre ROIs on xyzobs.px.value (obs) or xyzcal.px (cal).";
        fit_tilt "fit_tilt": bool = false, I, "", "Fit a background plane a·x + b·y + c instead of a constant (the median).";
        fit_tilt_using_weights "fit_tilt_using_weights": bool = false, I, "",
            "Weight the plane fit by the estimated pixel variance (the reference's weights are 1/σ, not 1/σ²).";
        pad_shoebox_for_background_estimation "pad_shoebox_for_background_estimation": Option<usize> = None, I, "pixels",
            "Enlarge the ROI by this much on each side while estimating the background only.";
        reject_edge_reflections "reject_edge_reflections": bool = true, I, "", "Drop ROIs clipped by a panel edge.";
        reject_roi_with_hotpix "reject_roi_with_hotpix": bool = true, I, "",
            "Drop ROIs containing a masked pixel (ROIs with more than 4 are always dropped).";
        hotpixel_mask "hotpixel_mask": Option<PathBuf> = None, I, "",
            "Pickled per-panel boolean mask in which True marks a GOOD pixel (despite diffBragg's help text).";
        mask_outside_trusted_range "mask_outside_trusted_range": bool = false, I, "", "Mask pixels outside the detector's trusted range.";
        background_threshold "background_threshold": f64 = 3.5, I, "",
            "Modified z-score 0.6745·|x − median|/MAD above which a pixel is not background.";
        allow_overlapping_spots "allow_overlapping_spots": bool = false, I, "",
            "Let ROIs overlap (each pixel's likelihood is divided by its multiplicity) instead of shrinking them.";
        skip_roi_with_negative_bg "skip_roi_with_negative_bg": bool = true, I, "",
            "Drop an ROI whose background model goes negative (else mask those pixels).";
        only_filter_zingers_above_mean "only_filter_zingers_above_mean": bool = true, I, "",
            "Only pixels above the median can be rejected as background outliers.";
        trusted_range "trusted_range": Option<[f64; 2]> = None, N, "ADU", "Override of the detector trusted range (min, max).";
        mask_all_if_any_outside_trusted_range "mask_all_if_any_outside_trusted_range": bool = true, N, "",
            "Mask the whole ROI if any pixel is outside the trusted range.";
        cache_dir_only "cache_dir_only": bool = false, N, "", "Write the ROI cache and stop.";
        force_negative_background_to_zero "force_negative_background_to_zero": bool = false, N, "", "Clamp a negative background model to 0.";
        delta_q "deltaQ": Option<f64> = None, N, "Å⁻¹", "ROI size in reciprocal space (overrides shoebox_size).";
        panels "panels": Option<String> = None, ign(UNUSED_REF), "", "Panels to refine, e.g. \"0-8,10\".";
    }
}

phil_scope! {
    /// `geometry`: diffBragg's detector geometry refiner.
    pub struct Geometry {
        save_state_freq "save_state_freq": i64 = 50, N, "iterations", "Save the model every n iterations.";
        save_state_overwrite "save_state_overwrite": bool = true, N, "", "Overwrite saved states.";
        pandas_dir "pandas_dir": Option<PathBuf> = None, N, "", "Folder for per-shot tables.";
        optimized_results_tag "optimized_results_tag": Option<String> = None, N, "", "Tag for optimised outputs.";
        refls_key "refls_key": String = "stage1_refls".into(), N, "", "Input column naming the reflection tables.";
        optimize_method "optimize_method": GeomOptimizeMethod = GeomOptimizeMethod::Lbfgsb, N, "", "Optimiser.";
        input_pkl "input_pkl": Option<PathBuf> = None, N, "", "Input table.";
        input_pkl_glob "input_pkl_glob": Option<String> = None, N, "", "Glob of input tables.";
        optimize "optimize": bool = false, N, "", "Optimise the geometry.";
        save_optimized_det_freq "save_optimized_det_freq": i64 = 1, N, "iterations", "Save the detector every n iterations.";
        optimized_detector_name "optimized_detector_name": String = "diffBragg_detector.expt".into(), N, "", "Output detector file name.";
    }
    scopes {
        min "min": GeomBounds;
        max "max": GeomBoundsMax;
        center "center": GeomCenter;
        betas "betas": GeomBetas;
        fix "fix": GeomFix;
    }
}

phil_scope! {
    /// `geometry.min`.
    pub struct GeomBounds {
        panel_rotations "panel_rotations": [f64; 3] = [-1.0; 3], N, "deg", "Lower bounds of panel rotations.";
        panel_translations "panel_translations": [f64; 3] = [-1.0; 3], N, "mm", "Lower bounds of panel translations.";
    }
}

phil_scope! {
    /// `geometry.max`.
    pub struct GeomBoundsMax {
        panel_rotations "panel_rotations": [f64; 3] = [1.0; 3], N, "deg", "Upper bounds of panel rotations.";
        panel_translations "panel_translations": [f64; 3] = [1.0; 3], N, "mm", "Upper bounds of panel translations.";
    }
}

phil_scope! {
    /// `geometry.center`.
    pub struct GeomCenter {
        panel_rotations "panel_rotations": [f64; 3] = [0.0; 3], N, "deg", "Restraint targets of panel rotations.";
        panel_translations "panel_translations": [f64; 3] = [0.0; 3], N, "mm", "Restraint targets of panel translations.";
    }
}

phil_scope! {
    /// `geometry.betas`.
    pub struct GeomBetas {
        panel_rot "panel_rot": [f64; 3] = [1e6; 3], N, "", "Restraint variances of panel rotations.";
        panel_xyz "panel_xyz": [f64; 3] = [1e6; 3], N, "", "Restraint variances of panel translations.";
        close_distances "close_distances": Option<f64> = None, N, "", "Restraint on the spread of panel distances.";
    }
}

phil_scope! {
    /// `geometry.fix`.
    pub struct GeomFix {
        panel_rotations "panel_rotations": [i64; 3] = [0; 3], N, "", "1 fixes the rotation about that axis.";
        panel_translations "panel_translations": [i64; 3] = [0; 3], N, "", "1 fixes the translation along that axis.";
    }
}

phil_scope! {
    /// `predictions`: diffBragg.integrate's prediction and matching.
    pub struct Predictions {
        qcut "qcut": f64 = 0.1, I, "Å⁻¹ (rlp) or pixels",
            "A prediction is strong when an observed strong spot lies within this distance, measured in the label_weak_col space: |ΔS| in Å⁻¹ without 2π for rlp, pixels for xyzobs.px.value. The defaults (0.1 px) match almost nothing: set both.";
        label_weak_col "label_weak_col": LabelWeakCol = LabelWeakCol::XyzobsPx, I, "",
            "Vector compared with qcut: rlp (required for multi-panel detectors) or xyzobs.px.value.";
        threshold "threshold": f64 = 1e-3, I, "model photons/pixel",
            "Model pixels above this form predicted spots (connected regions). Scales with G, default_Famplitude² and flux, so it is not portable between datasets.";
        weak_fraction "weak_fraction": f64 = 0.5, I, "",
            "Fraction of weak (unmatched) predictions kept per shot, brightest first; all strong ones are kept. 0 keeps strong only, 1 keeps all.";
        default_famplitude "default_Famplitude": f64 = 1e3, I, "", "Flat structure-factor amplitude of the prediction model.";
        resolution_range "resolution_range": [f64; 2] = [1.0, 999.0], I, "Å", "High- and low-resolution limits of predicted Miller indices.";
        laue_mode "laue_mode": bool = false, I, "",
            "Index predictions with the model's per-pixel mean wavelength (for pink/SASE spectra).";
        use_peak_detection "use_peak_detection": bool = false, I, "", "One predicted reflection per local maximum instead of per connected region.";
        oversample_override "oversample_override": Option<usize> = None, I, "sub-pixels per axis", "Oversampling used for prediction.";
        nabc_override "Nabc_override": Option<[i64; 3]> = None, I, "unit cells", "Domain size used for every shot (larger → more predictions).";
        pink_stride_override "pink_stride_override": Option<usize> = None, I, "", "Spectrum stride for prediction.";
        symbol_override "symbol_override": Option<String> = None, I, "", "Space group of the prediction model (default: the crystal's).";
        use_diffbragg_mtz "use_diffBragg_mtz": bool = false, I, "",
            "Use the Miller indices of simulator.structure_factors.mtz_name (with their mean amplitude) instead of a generated set.";
        method "method": PredictionMethod = PredictionMethod::Diffbragg, I, "",
            "Forward-model engine; both choices use this program's one forward model.";
        verbose "verbose": bool = false, ign(LOGGING), "", "More console output.";
        thicksteps_override "thicksteps_override": Option<i64> = None, N, "layers", "Sensor layers used for prediction.";
    }
}

impl Root for DiffBraggParams {
    const FAMILY: &'static str = "diffBragg";
    fn schema() -> &'static Schema {
        static S: OnceLock<Schema> = OnceLock::new();
        S.get_or_init(|| Schema::build::<DiffBraggParams>(&[]))
    }
}

/// Whether `program` reads the diffBragg parameter `name`. Coarse, by scope:
/// used to break ties in `--cmdlinePhil` suffix matching and to warn about
/// settings the program never reads. diffBragg.integrate takes the crystal
/// model from stage-1 results, so of the phil it reads only the simulator,
/// spectrum and prediction settings.
pub fn used_by(program: Program, name: &str) -> bool {
    let under = |scope: &str| name.strip_prefix(scope).is_some_and(|r| r.starts_with('.'));
    let stage1_only =
        under("filter_during_refinement") || under("filter_after_refinement") || name == "exp_ref_spec_file";
    match program {
        Program::Integrate => {
            under("predictions")
                || under("simulator")
                || under("downsamp_spec")
                || name == "spectrum_from_imageset"
                || name == "gen_gauss_spec"
        }
        Program::Hopper => !under("predictions") && !under("refiner.stage_two"),
        Program::EnsHopper => !under("predictions") && !stage1_only,
        Program::StillsProcess => false,
    }
}
