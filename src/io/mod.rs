//! Readers and writers of the file formats users bring and the pipeline writes.
pub mod mtz;
