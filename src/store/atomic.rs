//! Atomic file publication: write `path.tmp-<pid>-<n>` in the same folder, flush it
//! to disk, then rename (replace) or hard-link (never replace) it into place.
//!
//! A crash before the rename leaves only the `.tmp-…` file, whose name does
//! not end in `.parquet`, so table globs and shard listings never see it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{io_err, Error, Result};

/// A fresh temporary name for writing `path`: `path.tmp-<pid>-<n>`, unique
/// within the process too (two threads may write the same target).
pub fn tmp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp-{}-{n}", std::process::id()));
    PathBuf::from(s)
}

/// Write `tmp` with `fill`, flushed and synced; on error the tmp file is removed.
fn write_tmp(tmp: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let run = || -> Result<()> {
        let f = File::create(tmp).map_err(|e| io_err(tmp, e))?;
        let mut w = BufWriter::new(f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| io_err(tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io_err(tmp, e))
    };
    let r = run();
    if r.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    r
}

fn sync_dir(path: &Path) {
    // Best effort: makes the rename durable on local file systems; not all
    // file systems allow opening a directory, and failure loses nothing.
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Write `path` atomically, replacing any existing file.
pub fn write_replace(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    write_tmp(&tmp, fill)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    sync_dir(path);
    Ok(())
}

/// Move an already written `tmp` into `path` only if `path` does not exist.
/// Returns `Ok(false)` (and keeps `tmp`) when `path` is taken.
pub fn publish_new(tmp: &Path, path: &Path) -> Result<bool> {
    match std::fs::hard_link(tmp, path) {
        Ok(()) => {
            let _ = std::fs::remove_file(tmp);
            sync_dir(path);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => {
            // File systems without hard links: check-then-rename (a race between
            // two writers of the same rank is then possible, but ranks own their names).
            if path.exists() {
                return Ok(false);
            }
            std::fs::rename(tmp, path).map_err(|e| io_err(path, e))?;
            sync_dir(path);
            Ok(true)
        }
    }
}

/// Write a new file at the first free name produced by `name_for(k)`, k = start, start+1, ...
/// Returns the path and the k used.
pub fn write_new(
    name_for: impl Fn(u64) -> PathBuf,
    start: u64,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<(PathBuf, u64)> {
    let first = name_for(start);
    let tmp = tmp_path(&first);
    write_tmp(&tmp, fill)?;
    for k in start..start + 100_000 {
        let p = name_for(k);
        match publish_new(&tmp, &p) {
            Ok(true) => return Ok((p, k)),
            Ok(false) => continue,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
    }
    let _ = std::fs::remove_file(&tmp);
    Err(Error::file(first, "no free file name after 100000 attempts"))
}

/// `Write` adapter for callers that produce bytes in one go.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_replace(path, |w| w.write_all(bytes).map_err(|e| io_err(path, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_and_no_clobber() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.txt");
        write_bytes(&p, b"one").unwrap();
        write_bytes(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let name = |k: u64| d.path().join(format!("f{k}.bin"));
        std::fs::write(name(0), b"taken").unwrap();
        let (q, k) = write_new(name, 0, |w| w.write_all(b"new").map_err(|e| io_err("x", e))).unwrap();
        assert_eq!((q.clone(), k), (name(1), 1));
        assert_eq!(std::fs::read(name(0)).unwrap(), b"taken");
        assert_eq!(std::fs::read(q).unwrap(), b"new");
        // No temporary files are left behind, also after a failing writer.
        let r = write_replace(&d.path().join("y"), |_| Err(Error::msg("boom")));
        assert!(r.is_err());
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")), "{names:?}");
    }
}
