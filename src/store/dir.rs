//! [`Store`]: a store directory, as one rank of a run sees it.
//!
//! Layout (see the module docs of [`crate::store`]):
//! ```text
//! DIR/catalog.duckdb                 views (rank 0 only; see catalog.rs)
//! DIR/<table>/_schema.parquet        zero rows, current schema
//! DIR/<table>/rank<R>-<part>.parquet shards: rank R, part 00000, 00001, ...
//! ```
//! Every shard is written atomically and never rewritten; a rank's next part
//! number is one past the highest it finds, and a name already taken (by a
//! concurrent writer or an earlier run) is skipped, never overwritten.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;

use super::atomic::{write_new, write_replace};
use super::builder::BatchBuilder;
use super::catalog::{self, QueryResult, CATALOG_FILE, SCHEMA_FILE};
use super::parquet::{check_batches, file_identity, read_shard, write_batches};
use super::schema::Table;
use crate::error::{io_err, Error, Result};

/// A store directory opened by one rank.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    rank: u32,
    may_publish: bool,
    next_part: HashMap<Table, u64>,
}

/// A shard file name `rank<R>-<part>.parquet`, parsed.
fn parse_shard_name(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix("rank")?.strip_suffix(".parquet")?;
    let (r, p) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(r) || !digits(p) {
        return None;
    }
    Some((r.parse().ok()?, p.parse().ok()?))
}

fn shard_name(rank: u32, part: u64) -> String {
    format!("rank{rank}-{part:05}.parquet")
}

impl Store {
    /// Create (or reopen for writing) the store at `dir` for `rank`. Table
    /// folders and schema files are created as needed; if `may_publish` (rank 0),
    /// the catalog is refreshed too.
    pub fn create(dir: &Path, rank: u32, may_publish: bool) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let root = std::fs::canonicalize(dir).map_err(|e| io_err(dir, e))?;
        catalog::check_store_path(&root)?;
        for t in Table::ALL {
            let d = root.join(t.name());
            std::fs::create_dir_all(&d).map_err(|e| io_err(&d, e))?;
            ensure_schema_file(&root, t)?;
        }
        let store = Store { root, rank, may_publish, next_part: HashMap::new() };
        store.publish()?;
        Ok(store)
    }

    /// Open an existing store for reading (rank 0, not publishing). The error
    /// names `dir` if it is missing or holds neither a catalog nor a table folder.
    pub fn open(dir: &Path) -> Result<Store> {
        if !dir.exists() {
            return Err(Error::file(dir, "no such directory"));
        }
        if !dir.is_dir() {
            return Err(Error::file(dir, "not a directory"));
        }
        let root = std::fs::canonicalize(dir).map_err(|e| io_err(dir, e))?;
        catalog::check_store_path(&root)?;
        let has_tables = Table::ALL.iter().any(|t| root.join(t.name()).is_dir());
        if !has_tables && !root.join(CATALOG_FILE).is_file() {
            return Err(Error::file(
                dir,
                format!("not a diffbragg store: no {CATALOG_FILE} and no table folders (experiments/, reflections/, ...)"),
            ));
        }
        Ok(Store { root, rank: 0, may_publish: false, next_part: HashMap::new() })
    }

    /// Allow (or forbid) this handle to write the catalog.
    pub fn with_publish(mut self, may_publish: bool) -> Store {
        self.may_publish = may_publish;
        self
    }

    /// The canonical absolute store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn rank(&self) -> u32 {
        self.rank
    }

    pub fn table_dir(&self, table: Table) -> PathBuf {
        self.root.join(table.name())
    }

    /// Write `batches` of `table` as one new shard. Returns its path, or `None`
    /// if there are no rows. Refreshes the catalog afterwards if allowed.
    pub fn append(&mut self, table: Table, batches: &[RecordBatch]) -> Result<Option<PathBuf>> {
        check_batches(table, batches)?;
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(None);
        }
        let dir = self.table_dir(table);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            ensure_schema_file(&self.root, table)?;
        }
        let start = match self.next_part.get(&table) {
            Some(&p) => p,
            None => self
                .shards(table)?
                .iter()
                .filter_map(|(r, p, _)| (*r == self.rank).then_some(p + 1))
                .max()
                .unwrap_or(0),
        };
        let rank = self.rank;
        let (path, part) =
            write_new(|k| dir.join(shard_name(rank, k)), start, |w| write_batches(table, batches, w))?;
        self.next_part.insert(table, part + 1);
        self.publish()?;
        Ok(Some(path))
    }

    /// Write the builder's rows as one shard (the builder is emptied).
    pub fn append_builder(&mut self, builder: &mut BatchBuilder) -> Result<Option<PathBuf>> {
        let batch = builder.finish()?;
        self.append(builder.table(), &[batch])
    }

    /// Shards of `table` as (rank, part, path), sorted by rank then part.
    /// Temporary files and `_schema.parquet` are not shards.
    pub fn shards(&self, table: Table) -> Result<Vec<(u32, u64, PathBuf)>> {
        let dir = self.table_dir(table);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io_err(&dir, e)),
        };
        let mut v = Vec::new();
        for e in rd {
            let e = e.map_err(|e| io_err(&dir, e))?;
            if let Some((r, p)) = e.file_name().to_str().and_then(parse_shard_name) {
                v.push((r, p, e.path()));
            }
        }
        v.sort();
        Ok(v)
    }

    /// Read `table` (all shards), optionally only rows of the given shots.
    pub fn read(&self, table: Table, shots: Option<&BTreeSet<i64>>) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for (_, _, p) in self.shards(table)? {
            out.extend(read_shard(table, &p, None, shots)?);
        }
        Ok(out)
    }

    /// Read some columns of `table`.
    pub fn read_columns(
        &self,
        table: Table,
        columns: &[&str],
        shots: Option<&BTreeSet<i64>>,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for (_, _, p) in self.shards(table)? {
            out.extend(read_shard(table, &p, Some(columns), shots)?);
        }
        Ok(out)
    }

    /// The shot ids present in `table`, e.g. to skip finished shots on a rerun.
    pub fn shot_ids(&self, table: Table) -> Result<BTreeSet<i64>> {
        if table.schema().column("shot_id").is_none() {
            return Err(Error::msg(format!("table `{table}` has no shot_id column")));
        }
        let mut ids = BTreeSet::new();
        for b in self.read_columns(table, &["shot_id"], None)? {
            ids.extend(b.column(0).as_primitive::<Int64Type>().iter().flatten());
        }
        Ok(ids)
    }

    /// Refresh the catalog if this handle may publish. See [`catalog::publish`].
    pub fn publish(&self) -> Result<bool> {
        if self.may_publish {
            // Versions were checked at `create`; here only restore a deleted file,
            // without which the table's view would fail.
            for t in Table::ALL {
                if !self.table_dir(t).join(SCHEMA_FILE).is_file() {
                    ensure_schema_file(&self.root, t)?;
                }
            }
        }
        catalog::publish(&self.root, self.may_publish)
    }

    /// Run a SQL query over the store's views (in-memory DuckDB, no file lock).
    pub fn query(&self, sql: &str) -> Result<QueryResult> {
        let conn = catalog::connect_in_memory(&self.root)?;
        catalog::query(&conn, sql).map_err(|e| Error::file(&self.root, e.to_string()))
    }
}

/// Write `<table>/_schema.parquet` unless it already holds the current version.
/// A newer version on disk means a newer program wrote the store: refuse.
fn ensure_schema_file(root: &Path, table: Table) -> Result<()> {
    let dir = root.join(table.name());
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    }
    let path = dir.join(SCHEMA_FILE);
    if path.is_file() {
        if let Ok((name, Some(v))) = file_identity(&path) {
            if name.as_deref() == Some(table.name()) {
                if v == table.version() {
                    return Ok(());
                }
                if v > table.version() {
                    return Err(Error::file(
                        &path,
                        format!(
                            "store written with `{table}` schema version {v}, newer than this program's {}",
                            table.version()
                        ),
                    ));
                }
            }
        }
        // Older, foreign or damaged: replace it.
    }
    let empty = RecordBatch::new_empty(table.arrow_schema());
    write_replace(&path, |w| write_batches(table, &[empty], w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_parse_strictly() {
        assert_eq!(parse_shard_name(&shard_name(3, 12)), Some((3, 12)));
        assert_eq!(parse_shard_name("rank10-00000.parquet"), Some((10, 0)));
        for bad in [
            "rank0-00001.parquet.tmp-123",
            "_schema.parquet",
            "rank-1.parquet",
            "rank0-.parquet",
            "rank0-1a.parquet",
            "x.parquet",
        ] {
            assert_eq!(parse_shard_name(bad), None, "{bad}");
        }
    }
}
