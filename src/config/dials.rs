//! DIALS `stills_process` parameters: the "proc phil" that diffBragg.integrate
//! uses to find strong spots on the experimental images.
//!
//! Only the spot finder is modelled in full (every `spotfinder.*` name of
//! DIALS's `spot_finding/factory.py`, the dispersion threshold extension and
//! the `util/masking.py` filter scope), so a typo there is an error. Of it,
//! the dispersion threshold, `filter.min_spot_size/d_min/d_max` and
//! `lookup.mask` are implemented.
//!
//! The other DIALS scopes (`indexing`, `integration`, `refinement`, `profile`, …)
//! are accepted by name only: any parameter under them is kept as raw text,
//! not checked against DIALS, and reported as not implemented. A few names
//! that real files carry are declared explicitly so that their values are
//! type-checked and documented.

use super::schema::{ign, Root, Schema, I, N};
use super::value::AutoOr;
use crate::{phil_choice, phil_scope};
use std::path::PathBuf;
use std::sync::OnceLock;

/// DIALS scopes accepted without checking the names inside them.
const OPAQUE: &[&str] = &[
    "input",
    "dispatch",
    "output",
    "mp",
    "geometry",
    "indexing",
    "refinement",
    "integration",
    "profile",
    "prediction",
    "significance_filter",
    "spotfinder.filter.untrusted",
    "spotfinder.threshold.radial_profile",
];

phil_choice! {
    /// `spotfinder.threshold.algorithm`.
    pub enum ThresholdAlgorithm {
        Dispersion = "dispersion",
        DispersionExtended = "dispersion_extended",
        RadialProfile = "radial_profile",
    }
}
phil_choice! {
    /// `spotfinder.mp.method`.
    pub enum SpotfinderMpMethod { None_ = "none", Drmaa = "drmaa", Sge = "sge", Lsf = "lsf", Pbs = "pbs" }
}

phil_scope! {
    /// The root of DIALS stills_process parameters (the parts we model).
    pub struct StillsProcessParams {}
    scopes {
        spotfinder "spotfinder": Spotfinder;
        indexing "indexing": Indexing;
        integration "integration": Integration;
        profile "profile": Profile;
    }
}

phil_scope! {
    /// `spotfinder`.
    pub struct Spotfinder {
        write_hot_mask "write_hot_mask": bool = false, N, "", "Write the hot-pixel mask.";
        hot_mask_prefix "hot_mask_prefix": String = "hot_mask".into(), N, "", "Prefix of the hot-mask file.";
        force_2d "force_2d": bool = false, N, "", "Find spots in 2D.";
        scan_range "scan_range": Option<[i64; 2]> = None, N, "images", "Image range to search (DIALS allows several; the last one given is kept here).";
        exclude_images "exclude_images": Option<Vec<String>> = None, N, "", "Image ranges to exclude, exp:start:end.";
        exclude_images_multiple "exclude_images_multiple": Option<i64> = None, N, "", "Exclude every multiple of this image number.";
        region_of_interest "region_of_interest": Option<[i64; 4]> = None, N, "pixels", "Search region x0,x1,y0,y1.";
        compute_mean_background "compute_mean_background": bool = false, N, "", "Compute each image's mean background.";
    }
    scopes {
        lookup "lookup": SpotfinderLookup;
        filter "filter": SpotfinderFilter;
        mp "mp": SpotfinderMp;
        tof "tof": SpotfinderTof;
        laue "laue": SpotfinderLaue;
        threshold "threshold": SpotfinderThreshold;
    }
}

phil_scope! {
    /// `spotfinder.lookup`.
    pub struct SpotfinderLookup {
        mask "mask": Option<PathBuf> = None, I, "", "Pickled per-panel boolean mask of trusted pixels for spot finding (True = good).";
    }
}

phil_scope! {
    /// `spotfinder.filter`.
    pub struct SpotfinderFilter {
        min_spot_size "min_spot_size": AutoOr<usize> = AutoOr::Auto, I, "pixels",
            "Smallest connected region accepted as a spot; Auto lets DIALS choose from the detector type.";
        max_spot_size "max_spot_size": usize = 1000, N, "pixels", "Largest connected region accepted as a spot.";
        max_separation "max_separation": f64 = 2.0, N, "pixels", "Largest peak-to-centroid distance.";
        max_strong_pixel_fraction "max_strong_pixel_fraction": f64 = 0.25, N, "",
            "Fail an image whose strong-pixel fraction exceeds this (diffBragg.integrate's spot finder never checks it).";
        border "border": i64 = 0, N, "pixels", "Border around each panel that is ignored.";
        d_min "d_min": Option<f64> = None, I, "Å", "Pixels at higher resolution than this are not searched.";
        d_max "d_max": Option<f64> = None, I, "Å", "Pixels at lower resolution than this are not searched.";
        disable_parallax_correction "disable_parallax_correction": bool = false, N, "", "Ignore parallax in resolution masks.";
        resolution_range "resolution_range": Option<[f64; 2]> = None, N, "Å",
            "Untrusted resolution range (DIALS allows several; the last one given is kept here).";
    }
    scopes {
        background_gradient "background_gradient": BackgroundGradient;
        spot_density "spot_density": SpotDensity;
        ice_rings "ice_rings": IceRings;
    }
}

phil_scope! {
    /// `spotfinder.filter.background_gradient`.
    pub struct BackgroundGradient {
        filter "filter": bool = false, N, "", "Reject spots on a steep background gradient.";
        background_size "background_size": i64 = 2, N, "pixels", "Background border size.";
        gradient_cutoff "gradient_cutoff": f64 = 4.0, N, "", "Gradient cut-off.";
    }
}

phil_scope! {
    /// `spotfinder.filter.spot_density`.
    pub struct SpotDensity {
        filter "filter": bool = false, N, "", "Reject spots in dense regions.";
    }
}

phil_scope! {
    /// `spotfinder.filter.ice_rings`.
    pub struct IceRings {
        filter "filter": bool = false, N, "", "Mask ice rings.";
        unit_cell "unit_cell": [f64; 6] = [4.498, 4.498, 7.338, 90.0, 90.0, 120.0], N, "Å, deg", "Ice unit cell.";
        space_group "space_group": String = "194".into(), N, "", "Ice space group.";
        width "width": f64 = 0.002, N, "Å⁻²", "Ring width in 1/d².";
        d_min "d_min": Option<f64> = None, N, "Å", "High-resolution limit of the rings.";
    }
}

phil_scope! {
    /// `spotfinder.mp`.
    pub struct SpotfinderMp {
        method "method": SpotfinderMpMethod = SpotfinderMpMethod::None_, N, "", "Cluster method.";
        njobs "njobs": i64 = 1, N, "", "Cluster jobs.";
        nproc "nproc": i64 = 1, N, "", "Processes per job.";
        chunksize "chunksize": AutoOr<i64> = AutoOr::Auto, N, "", "Images per process.";
        min_chunksize "min_chunksize": i64 = 20, N, "", "Smallest automatic chunk.";
    }
}

phil_scope! {
    /// `spotfinder.tof`.
    pub struct SpotfinderTof {
        rs_proximity_threshold_multiplier "rs_proximity_threshold_multiplier": Option<f64> = None, N, "", "Time-of-flight proximity filter.";
    }
}

phil_scope! {
    /// `spotfinder.laue`.
    pub struct SpotfinderLaue {
        initial_wavelength "initial_wavelength": Option<f64> = None, N, "Å", "Initial wavelength of Laue reflections.";
    }
}

phil_scope! {
    /// `spotfinder.threshold`.
    pub struct SpotfinderThreshold {
        algorithm "algorithm": ThresholdAlgorithm = ThresholdAlgorithm::DispersionExtended, I, "",
            "Thresholding algorithm (DIALS's default is dispersion_extended); radial_profile is not implemented.";
    }
    scopes {
        dispersion "dispersion": Dispersion;
    }
}

phil_scope! {
    /// `spotfinder.threshold.dispersion`.
    pub struct Dispersion {
        gain "gain": Option<f64> = None, I, "ADU/photon", "Flat detector gain used by the threshold (default: the format's).";
        kernel_size "kernel_size": [i64; 2] = [3, 3], I, "pixels",
            "Half-size (nx, ny) of the local window: the box is (2nx+1) × (2ny+1).";
        sigma_background "sigma_background": f64 = 6.0, I, "σ",
            "A pixel is background when its local index of dispersion is below this many σ.";
        sigma_strong "sigma_strong": f64 = 3.0, I, "σ", "A pixel is strong when it exceeds the local mean by this many σ.";
        min_local "min_local": i64 = 2, I, "pixels",
            "Fewest valid pixels in the window for thresholding; ≤ 0 requires the whole window.";
        global_threshold "global_threshold": AutoOr<f64> = AutoOr::Value(0.0), I, "ADU",
            "Pixels below this value are always background; Auto estimates it from the image.";
    }
}

phil_scope! {
    /// `indexing` (recognised; other names under it are accepted unchecked).
    pub struct Indexing {}
    scopes {
        known_symmetry "known_symmetry": KnownSymmetry;
        multiple_lattice_search "multiple_lattice_search": MultipleLatticeSearch;
        stills "stills": IndexingStills;
    }
}

phil_scope! {
    /// `indexing.known_symmetry`.
    pub struct KnownSymmetry {
        space_group "space_group": Option<String> = None, N, "", "Target space group of indexing.";
        unit_cell "unit_cell": Option<[f64; 6]> = None, N, "Å, deg", "Target unit cell of indexing.";
    }
}

phil_scope! {
    /// `indexing.multiple_lattice_search`.
    pub struct MultipleLatticeSearch {
        max_lattices "max_lattices": i64 = 1, N, "", "Most lattices indexed per image.";
    }
}

phil_scope! {
    /// `indexing.stills`.
    pub struct IndexingStills {
        method_list "method_list": Option<Vec<String>> = None, N, "", "Indexing methods tried in turn.";
    }
}

phil_scope! {
    /// `integration` (recognised; other names under it are accepted unchecked).
    pub struct Integration {}
    scopes {
        lookup "lookup": IntegrationLookup;
        profile "profile": IntegrationProfile;
    }
}

phil_scope! {
    /// `integration.lookup`.
    pub struct IntegrationLookup {
        mask "mask": Option<PathBuf> = None, N, "", "Mask used during integration.";
    }
}

phil_scope! {
    /// `integration.profile`.
    pub struct IntegrationProfile {
        fitting "fitting": bool = true, N, "", "Profile fitting (stills_process sets False).";
    }
    scopes {
        gaussian_rs "gaussian_rs": IntegrationProfileGaussianRs;
    }
}

phil_scope! {
    /// `integration.profile.gaussian_rs`: not a DIALS scope; declared to explain it.
    pub struct IntegrationProfileGaussianRs {}
    scopes {
        parameters "parameters": IntegrationProfileGaussianRsParameters;
    }
}

phil_scope! {
    /// `integration.profile.gaussian_rs.parameters`: not a DIALS scope.
    pub struct IntegrationProfileGaussianRsParameters {
        sigma_b "sigma_b": Option<f64> = None,
            ign("not a DIALS parameter: DIALS drops it as unused; the profile model's value is profile.gaussian_rs.parameters.sigma_b"),
            "deg", "Misplaced profile parameter.";
    }
}

phil_scope! {
    /// `profile` (recognised; other names under it are accepted unchecked).
    pub struct Profile {}
    scopes {
        gaussian_rs "gaussian_rs": ProfileGaussianRs;
    }
}

phil_scope! {
    /// `profile.gaussian_rs`.
    pub struct ProfileGaussianRs {}
    scopes {
        parameters "parameters": ProfileGaussianRsParameters;
    }
}

phil_scope! {
    /// `profile.gaussian_rs.parameters`.
    pub struct ProfileGaussianRsParameters {
        sigma_b "sigma_b": Option<f64> = None, N, "deg", "Beam divergence of the profile model.";
        sigma_m "sigma_m": Option<f64> = None, N, "deg", "Mosaicity of the profile model.";
        sigma_b_cutoff "sigma_b_cutoff": f64 = 0.1, N, "deg", "Reject an image whose sigma_b exceeds this.";
    }
}

impl Root for StillsProcessParams {
    const FAMILY: &'static str = "DIALS stills_process";
    fn schema() -> &'static Schema {
        static S: OnceLock<Schema> = OnceLock::new();
        S.get_or_init(|| Schema::build::<StillsProcessParams>(OPAQUE))
    }
}
