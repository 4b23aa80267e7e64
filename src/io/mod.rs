//! File formats: readers and writers, one module per format.
pub mod hdf5;
pub mod lam;
pub mod smv;
pub mod spec_file;
