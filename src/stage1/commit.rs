//! All-or-nothing publication of a batch of shots' rows across several tables,
//! so that a run killed at any instant (kill -9) and rerun leaves no partial
//! shot and no duplicate row.
//!
//! Protocol (write-ahead, one folder per flush under `DIR/.stage1-staging/`):
//! 1. each table's rows are written to `<flush>/<table>.parquet` (atomic files);
//! 2. the destination shard names (`DIR/<table>/rank<R>-<part>.parquet`, parts
//!    beyond every existing one of this rank) are written to `<flush>/COMMIT`
//!    (atomic): **this is the commit point**;
//! 3. each staged file is renamed to its destination, then the folder is removed.
//!
//! [`recover`] (rank 0, before any rank starts) finishes step 3 of every
//! committed flush (a rename is skipped when its source is gone: it was done)
//! and deletes every uncommitted one; its shots were not recorded as done, so
//! the rerun processes them again. Staged files are outside the table folders,
//! so the catalog's views never see them.

use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;

use crate::error::{io_err, Error, Result};
use crate::store::atomic::write_replace;
use crate::store::parquet::write_batches;
use crate::store::Table;

/// The staging folder of a store.
pub fn staging_dir(root: &Path) -> PathBuf {
    root.join(".stage1-staging")
}

const COMMIT: &str = "COMMIT";

fn shard_part(name: &str, rank: u32) -> Option<u64> {
    let rest = name.strip_prefix(&format!("rank{rank}-"))?.strip_suffix(".parquet")?;
    rest.parse().ok()
}

/// Next free part number of `rank` in a table folder.
fn next_part(dir: &Path, rank: u32) -> Result<u64> {
    let mut next = 0;
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(|e| io_err(dir, e))?;
                if let Some(p) = e.file_name().to_str().and_then(|n| shard_part(n, rank)) {
                    next = next.max(p + 1);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dir, e)),
    }
    Ok(next)
}

/// Publish `batches` (one per table; empty ones are skipped) as one unit.
pub fn commit(root: &Path, rank: u32, seq: u64, batches: &[(Table, RecordBatch)]) -> Result<()> {
    let batches: Vec<&(Table, RecordBatch)> = batches.iter().filter(|(_, b)| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Ok(());
    }
    let flush = staging_dir(root).join(format!("rank{rank}-{}-{seq}", std::process::id()));
    std::fs::create_dir_all(&flush).map_err(|e| io_err(&flush, e))?;
    let mut lines = String::new();
    for (table, batch) in &batches {
        let src = flush.join(format!("{}.parquet", table.name()));
        write_replace(&src, |w| write_batches(*table, std::slice::from_ref(batch), w))?;
        let dir = root.join(table.name());
        let dest = dir.join(format!("rank{rank}-{:05}.parquet", next_part(&dir, rank)?));
        lines.push_str(&format!("{}\t{}\n", src.display(), dest.display()));
    }
    write_replace(&flush.join(COMMIT), |w| {
        use std::io::Write;
        w.write_all(lines.as_bytes()).map_err(|e| io_err(&flush, e))
    })?;
    apply(&flush)
}

/// Step 3 for one committed flush folder.
fn apply(flush: &Path) -> Result<()> {
    let cpath = flush.join(COMMIT);
    let text = std::fs::read_to_string(&cpath).map_err(|e| io_err(&cpath, e))?;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (src, dest) =
            line.split_once('\t').ok_or_else(|| Error::file(&cpath, format!("malformed line `{line}`")))?;
        let (src, dest) = (Path::new(src), Path::new(dest));
        if src.exists() {
            if dest.exists() {
                return Err(Error::file(dest, "commit destination already exists; refusing to overwrite"));
            }
            std::fs::rename(src, dest).map_err(|e| io_err(dest, e))?;
        }
    }
    std::fs::remove_dir_all(flush).map_err(|e| io_err(flush, e))
}

/// Finish committed flushes and drop uncommitted ones (see the module doc).
/// Returns (finished, dropped).
pub fn recover(root: &Path) -> Result<(usize, usize)> {
    let st = staging_dir(root);
    let rd = match std::fs::read_dir(&st) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io_err(&st, e)),
    };
    let (mut done, mut dropped) = (0, 0);
    let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for d in dirs {
        if d.join(COMMIT).is_file() {
            apply(&d)?;
            done += 1;
        } else {
            std::fs::remove_dir_all(&d).map_err(|e| io_err(&d, e))?;
            dropped += 1;
        }
    }
    Ok((done, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BatchBuilder, FailureRow};

    fn batch(sid: i64) -> RecordBatch {
        let mut b = BatchBuilder::new(Table::Failures);
        b.append_row(&FailureRow::now(sid, "stage1", "test", "m")).unwrap();
        b.finish().unwrap()
    }

    fn shards(root: &Path) -> usize {
        std::fs::read_dir(root.join("failures")).map(|r| r.count()).unwrap_or(0)
    }

    #[test]
    fn committed_flushes_are_finished_and_others_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("failures")).unwrap();
        commit(root, 0, 0, &[(Table::Failures, batch(1))]).unwrap();
        assert_eq!(shards(root), 1);
        assert!(std::fs::read_dir(staging_dir(root)).unwrap().next().is_none());
        // A flush killed before its COMMIT: staged file only.
        let f1 = staging_dir(root).join("rank0-1-7");
        std::fs::create_dir_all(&f1).unwrap();
        write_replace(&f1.join("failures.parquet"), |w| write_batches(Table::Failures, &[batch(2)], w))
            .unwrap();
        // A flush killed after its COMMIT, before the rename.
        let f2 = staging_dir(root).join("rank0-1-8");
        std::fs::create_dir_all(&f2).unwrap();
        let src = f2.join("failures.parquet");
        write_replace(&src, |w| write_batches(Table::Failures, &[batch(3)], w)).unwrap();
        let dest = root.join("failures").join("rank0-00007.parquet");
        std::fs::write(f2.join(COMMIT), format!("{}\t{}\n", src.display(), dest.display())).unwrap();
        assert_eq!(recover(root).unwrap(), (1, 1));
        assert_eq!(shards(root), 2);
        assert!(dest.is_file());
        assert!(std::fs::read_dir(staging_dir(root)).unwrap().next().is_none());
        // Idempotent.
        assert_eq!(recover(root).unwrap(), (0, 0));
        assert_eq!(next_part(&root.join("failures"), 0).unwrap(), 8);
    }
}
