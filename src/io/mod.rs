//! File formats: readers and writers of the files users bring and stages exchange.
pub mod dials_expt;
pub mod dials_refl;
pub mod hdf5;
pub mod hkl_text;
pub mod lam;
pub mod mask;
pub mod mtz;
pub mod smv;
pub mod spec_file;
