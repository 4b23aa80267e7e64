//! Readers and writers of external file formats.
pub mod dials_refl;
