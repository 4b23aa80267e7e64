//! Readers and writers of external file formats.
pub mod dials_refl;
//! File formats: readers and writers of the files users bring and stages exchange.
pub mod dials_expt;
