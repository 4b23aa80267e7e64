//! File readers and writers, one format per module.
pub mod hkl_text;
