//! `shot_id`: the int64 key that joins every table.
//!
//! Definition (reproducible in Python with `hashlib`):
//! ```text
//! bytes   = canonical_absolute_expt_path (raw OS bytes) ‖ 0x00 ‖ decimal(exp_idx) (ASCII)
//! shot_id = big_endian_u64(sha256(bytes)[0..8]) & 0x7fff_ffff_ffff_ffff
//! ```
//! The top bit is cleared so the id is a non-negative int64 in every tool.
//!
//! * Stable: the same expt file at the same place and the same index always
//!   give the same id, across ranks, reruns and machines sharing a file
//!   system, so a rerun can skip shots already present. Moving or symlinking
//!   the data to another canonical path gives new ids; `exp_name` and
//!   `exp_idx` are kept in `experiments` (and `shot_params`, `failures`) so
//!   tables can always be re-joined on the source instead.
//! * Collisions: 63 random bits give a birthday probability of about
//!   n²/2⁶⁴, i.e. 5·10⁻⁸ for a million shots and 50 % only near 3.6·10⁹
//!   shots. The `shot_id_collisions` view lists any that happen.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{io_err, Result};

/// The id of experiment `exp_idx` of the expt file at `canonical_path`,
/// which must already be canonical (absolute, symlinks resolved).
pub fn shot_id_from_canonical(canonical_path: &Path, exp_idx: usize) -> i64 {
    let mut h = Sha256::new();
    h.update(path_bytes(canonical_path));
    h.update([0u8]);
    h.update(exp_idx.to_string().as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(first) & 0x7fff_ffff_ffff_ffff) as i64
}

/// Canonicalize `expt_path` (it must exist) and compute its shot id.
/// Returns the canonical path too: store it as `exp_name`.
pub fn shot_id(expt_path: &Path, exp_idx: usize) -> Result<(i64, std::path::PathBuf)> {
    let canonical = std::fs::canonicalize(expt_path).map_err(|e| io_err(expt_path, e))?;
    Ok((shot_id_from_canonical(&canonical, exp_idx), canonical))
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_python_hashlib_computation() {
        let cases =
            [("/data/run12/refined.expt", 0usize), ("/data/run12/refined.expt", 7), ("/x/é ü.expt", 123)];
        let script = "import hashlib,sys\n\
            for a in sys.argv[1:]:\n\
            \tp,i=a.rsplit('|',1)\n\
            \td=hashlib.sha256(p.encode()+b'\\0'+i.encode()).digest()\n\
            \tprint(int.from_bytes(d[:8],'big') & (2**63-1))\n";
        let args: Vec<String> = cases.iter().map(|(p, i)| format!("{p}|{i}")).collect();
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(&args)
            .output()
            .expect("python3");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let want: Vec<i64> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
        let got: Vec<i64> = cases.iter().map(|(p, i)| shot_id_from_canonical(Path::new(p), *i)).collect();
        assert_eq!(got, want);
        assert!(got.iter().all(|&x| x >= 0));
        assert_ne!(got[0], got[1], "exp_idx must change the id");
    }

    #[test]
    fn canonicalizes_and_names_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.expt");
        std::fs::write(&f, "{}").unwrap();
        let via_dots = dir.path().join(".").join("a.expt");
        let (id1, c1) = shot_id(&f, 3).unwrap();
        let (id2, c2) = shot_id(&via_dots, 3).unwrap();
        assert_eq!((id1, &c1), (id2, &c2));
        assert!(c1.is_absolute());
        let e = shot_id(&dir.path().join("missing.expt"), 0).unwrap_err().to_string();
        assert!(e.contains("missing.expt"), "{e}");
    }
}
