//! Helpers for tests: where the project's shared data lives.
//!
//! The shared folder (docs, fixtures, reference images, the user's phil files)
//! sits beside the clone. Tests find it through `DIFFBRAGG_SHARED`, else
//! `<crate>/../shared`, else `/work/shared`; nothing looks in the working directory.

use std::path::PathBuf;

/// The shared data folder. Panics with a clear message if it cannot be found,
/// because a test that silently skipped its reference data would prove nothing.
pub fn shared_dir() -> PathBuf {
    // Canonical, so paths that tests compare (e.g. resolved image paths) agree
    // whichever way the folder was found.
    let canon = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    if let Ok(p) = std::env::var("DIFFBRAGG_SHARED") {
        return canon(PathBuf::from(p));
    }
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if beside.join("reference").is_dir() {
        return canon(beside);
    }
    let fixed = PathBuf::from("/work/shared");
    if fixed.join("reference").is_dir() {
        return fixed;
    }
    panic!(
        "shared data folder not found: set DIFFBRAGG_SHARED to the folder holding reference/ and fixtures/"
    );
}

/// A path inside the shared data folder.
pub fn shared(rel: &str) -> PathBuf {
    shared_dir().join(rel)
}
