//! The DuckDB catalog `DIR/catalog.duckdb`: one view per table over its
//! Parquet files, plus the views of `sql/*.sql`.
//!
//! * Each table view is
//!   `SELECT * FROM read_parquet('<abs DIR>/<table>/*.parquet', union_by_name = true, hive_partitioning = false)`.
//!   The glob is expanded at query time, so shards written after the catalog
//!   (by any rank) are seen without a refresh. Paths are absolute because
//!   DuckDB resolves relative paths against the reader's working directory, not
//!   the database file: the catalog works from any directory, but not after the
//!   store is moved (the next write or `diffbragg sql` rebuilds it).
//! * Every table folder holds `_schema.parquet`, a zero-row file with the
//!   current schema. It keeps the glob non-empty (DuckDB rejects a glob with no
//!   match), makes views over empty tables return zero rows of the right types,
//!   and with `union_by_name` gives every view all current columns even when
//!   the shards are from an older schema version.
//!   Should that file be missing and the folder not writable, the view falls
//!   back to a typed empty SELECT built from the schema.
//! * `hive_partitioning = false`: otherwise a `key=value` folder anywhere in
//!   DIR's path would silently become an extra column.
//! * Publication is atomic: the catalog is built in `catalog.duckdb.tmp-<pid>-<n>`
//!   and renamed over the old one, so a user's open session keeps its (old)
//!   file and never blocks a refresh. Treat the file as read-only (e.g.
//!   `ATTACH 'DIR/catalog.duckdb' AS db (READ_ONLY)`); objects you add to it
//!   are lost at the next refresh.
//! * A refresh is skipped when `catalog.duckdb.fingerprint` matches the SHA-256
//!   of every view statement and schema version. Only a caller allowed to
//!   publish (rank 0) writes the catalog.
//! * DuckDB reads fixed-size lists from Parquet as LISTs; DuckDB lists index
//!   from 1 (`xyzobs_px_value[1]` is x).

use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use duckdb::{AccessMode, Config, Connection};
use sha2::{Digest, Sha256};

use super::atomic::{tmp_path, write_bytes};
use super::schema::{ColumnType, Table};
use crate::error::{io_err, Error, Result};

pub const CATALOG_FILE: &str = "catalog.duckdb";
const FINGERPRINT_FILE: &str = "catalog.duckdb.fingerprint";
/// The zero-row file with the current schema inside every table folder.
pub const SCHEMA_FILE: &str = "_schema.parquet";

/// The views of `sql/`, in execution order (a view may use those before it).
pub const SQL_VIEWS: [(&str, &str); 14] = [
    ("sql/10_failures_by_reason.sql", include_str!("../../sql/10_failures_by_reason.sql")),
    ("sql/10_reflections_per_shot.sql", include_str!("../../sql/10_reflections_per_shot.sql")),
    ("sql/10_shot_id_collisions.sql", include_str!("../../sql/10_shot_id_collisions.sql")),
    ("sql/10_spectra_per_shot.sql", include_str!("../../sql/10_spectra_per_shot.sql")),
    ("sql/20_shot_summary.sql", include_str!("../../sql/20_shot_summary.sql")),
    ("sql/30_report_residuals.sql", include_str!("../../sql/30_report_residuals.sql")),
    ("sql/predict_match_distances.sql", include_str!("../../sql/predict_match_distances.sql")),
    ("sql/predict_per_shot.sql", include_str!("../../sql/predict_per_shot.sql")),
    ("sql/predict_summary.sql", include_str!("../../sql/predict_summary.sql")),
    ("sql/stage1_convergence.sql", include_str!("../../sql/stage1_convergence.sql")),
    ("sql/stage1_summary.sql", include_str!("../../sql/stage1_summary.sql")),
    ("sql/stage2_convergence.sql", include_str!("../../sql/stage2_convergence.sql")),
    ("sql/stage2_fhkl_final.sql", include_str!("../../sql/stage2_fhkl_final.sql")),
    ("sql/stage2_shot_scales.sql", include_str!("../../sql/stage2_shot_scales.sql")),
];

/// A string as a SQL literal.
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A name as a SQL identifier.
pub fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Characters that DuckDB's glob would interpret in a store path.
pub fn check_store_path(root: &Path) -> Result<()> {
    let s = root.to_str().ok_or_else(|| Error::file(root, "store path is not valid UTF-8"))?;
    if s.contains(['*', '?', '[', ']', '{', '}']) {
        return Err(Error::file(root, "store path must not contain glob characters * ? [ ] { }"));
    }
    Ok(())
}

/// The statement creating the view of `table` for the store at `root`
/// (absolute). Without the table's `_schema.parquet` (a read-only store that
/// lost it) the glob could match nothing, so the view is the typed empty
/// SELECT instead.
pub fn table_view_sql(root: &Path, table: Table) -> String {
    let dir = root.join(table.name());
    if !dir.join(SCHEMA_FILE).is_file() {
        return format!(
            "CREATE OR REPLACE VIEW {} AS {};",
            sql_ident(table.name()),
            typed_empty_select(table)
        );
    }
    let glob = dir.join("*.parquet");
    format!(
        "CREATE OR REPLACE VIEW {} AS SELECT * FROM read_parquet({}, union_by_name = true, hive_partitioning = false);",
        sql_ident(table.name()),
        sql_string(&glob.to_string_lossy())
    )
}

/// DuckDB's name for a column type, as DuckDB reads it back from our Parquet
/// files (fixed-size lists become LISTs there, so they are LISTs here too).
pub fn duckdb_type(t: &ColumnType) -> String {
    match t {
        ColumnType::Bool => "BOOLEAN".into(),
        ColumnType::Int8 => "TINYINT".into(),
        ColumnType::Int16 => "SMALLINT".into(),
        ColumnType::Int32 => "INTEGER".into(),
        ColumnType::Int64 => "BIGINT".into(),
        ColumnType::UInt8 => "UTINYINT".into(),
        ColumnType::UInt16 => "USMALLINT".into(),
        ColumnType::UInt32 => "UINTEGER".into(),
        ColumnType::UInt64 => "UBIGINT".into(),
        ColumnType::Float32 => "FLOAT".into(),
        ColumnType::Float64 => "DOUBLE".into(),
        ColumnType::Utf8 => "VARCHAR".into(),
        ColumnType::TimestampUsUtc => "TIMESTAMP WITH TIME ZONE".into(),
        ColumnType::List(i) | ColumnType::FixedList(i, _) => format!("{}[]", duckdb_type(i)),
        ColumnType::Struct(f) => format!(
            "STRUCT({})",
            f.iter()
                .map(|(n, t)| format!("{} {}", sql_ident(n), duckdb_type(t)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `SELECT CAST(NULL AS <type>) AS <col>, ... WHERE false`: zero rows with the
/// table's columns and types.
pub fn typed_empty_select(table: Table) -> String {
    let cols: Vec<String> = table
        .schema()
        .columns
        .iter()
        .map(|c| format!("CAST(NULL AS {}) AS {}", duckdb_type(&c.ty), sql_ident(&c.name)))
        .collect();
    format!("SELECT {} WHERE false", cols.join(", "))
}

/// Every view statement, with the origin to name in errors.
fn view_statements(root: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> =
        Table::ALL.iter().map(|t| (format!("view `{t}`"), table_view_sql(root, *t))).collect();
    v.extend(SQL_VIEWS.iter().map(|(o, s)| (o.to_string(), s.to_string())));
    v
}

fn fingerprint(root: &Path) -> String {
    let mut h = Sha256::new();
    h.update(format!("diffbragg-rs {}\n", env!("CARGO_PKG_VERSION")));
    for t in Table::ALL {
        h.update(format!("{} v{}\n", t.name(), t.version()));
    }
    for (o, s) in view_statements(root) {
        h.update(o.as_bytes());
        h.update([0]);
        h.update(s.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn duck_err(root: &Path, what: &str, e: duckdb::Error) -> Error {
    Error::file(root, format!("{what}: {e}"))
}

fn config(read_only: bool) -> std::result::Result<Config, duckdb::Error> {
    let c = Config::default().with("autoinstall_known_extensions", "false")?;
    if read_only {
        c.access_mode(AccessMode::ReadOnly)
    } else {
        Ok(c)
    }
}

/// Create every view on `conn`.
pub fn create_views(conn: &Connection, root: &Path) -> Result<()> {
    for (origin, sql) in view_statements(root) {
        conn.execute_batch(&sql).map_err(|e| duck_err(root, &format!("creating {origin}"), e))?;
    }
    Ok(())
}

/// The catalog path of the store at `root`.
pub fn catalog_path(root: &Path) -> PathBuf {
    root.join(CATALOG_FILE)
}

/// Rebuild `root/catalog.duckdb` if its views are out of date. Does nothing
/// (returns `Ok(false)`) unless `may_publish`, or if it is current.
pub fn publish(root: &Path, may_publish: bool) -> Result<bool> {
    if !may_publish {
        return Ok(false);
    }
    let cat = catalog_path(root);
    let fp_path = root.join(FINGERPRINT_FILE);
    let fp = fingerprint(root);
    if cat.is_file() && std::fs::read_to_string(&fp_path).is_ok_and(|s| s.trim() == fp) {
        return Ok(false);
    }
    let tmp = tmp_path(&cat);
    let tmp_wal = PathBuf::from(format!("{}.wal", tmp.display()));
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(&tmp_wal);
    let build = || -> Result<()> {
        let conn =
            Connection::open_with_flags(&tmp, config(false).map_err(|e| duck_err(root, "DuckDB config", e))?)
                .map_err(|e| duck_err(&tmp, "creating the catalog", e))?;
        create_views(&conn, root)?;
        conn.execute_batch("CHECKPOINT;").map_err(|e| duck_err(&tmp, "checkpoint", e))?;
        conn.close().map_err(|(_, e)| duck_err(&tmp, "closing the catalog", e))
    };
    if let Err(e) = build() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&tmp_wal);
        return Err(e);
    }
    // A WAL left by a crashed session would be replayed onto the new file.
    let _ = std::fs::remove_file(root.join(format!("{CATALOG_FILE}.wal")));
    std::fs::rename(&tmp, &cat).map_err(|e| io_err(&cat, e))?;
    let _ = std::fs::remove_file(&tmp_wal);
    write_bytes(&fp_path, fp.as_bytes())?;
    Ok(true)
}

/// An in-memory DuckDB connection with the store's views: what `diffbragg sql`
/// queries, so it never contends for the catalog file's lock.
pub fn connect_in_memory(root: &Path) -> Result<Connection> {
    let conn =
        Connection::open_in_memory_with_flags(config(false).map_err(|e| duck_err(root, "DuckDB config", e))?)
            .map_err(|e| duck_err(root, "opening DuckDB", e))?;
    create_views(&conn, root)?;
    Ok(conn)
}

/// Open `root/catalog.duckdb` read-only.
pub fn open_catalog(root: &Path) -> Result<Connection> {
    let cat = catalog_path(root);
    if !cat.is_file() {
        return Err(Error::file(
            root,
            format!("no {CATALOG_FILE}: not a diffbragg store (or never published)"),
        ));
    }
    Connection::open_with_flags(&cat, config(true).map_err(|e| duck_err(root, "DuckDB config", e))?)
        .map_err(|e| duck_err(&cat, "opening the catalog", e))
}

/// A query result with its schema (known even when there are no rows).
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// Run one SQL statement and collect its result as Arrow batches.
pub fn query(conn: &Connection, sql: &str) -> Result<QueryResult> {
    let mut stmt = conn.prepare(sql).map_err(|e| Error::msg(format!("SQL error: {e}")))?;
    let arrow = stmt.query_arrow([]).map_err(|e| Error::msg(format!("SQL error: {e}")))?;
    let schema = arrow.get_schema();
    let batches: Vec<RecordBatch> = arrow.collect();
    Ok(QueryResult { schema, batches })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_file_is_embedded_in_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| format!("sql/{}", e.unwrap().file_name().to_string_lossy()))
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = SQL_VIEWS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, embedded, "sql/ and SQL_VIEWS differ (SQL_VIEWS must be sorted)");
        for (n, text) in SQL_VIEWS {
            assert_eq!(std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(n)).unwrap(), text);
        }
    }

    #[test]
    fn quoting_and_paths() {
        assert_eq!(sql_string("a'b"), "'a''b'");
        assert_eq!(sql_ident("x\"y"), "\"x\"\"y\"");
        assert!(check_store_path(Path::new("/tmp/run[1]")).is_err());
        assert!(check_store_path(Path::new("/tmp/it's fine")).is_ok());
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("it's");
        std::fs::create_dir_all(root.join("traces")).unwrap();
        // No schema file yet: the typed empty SELECT.
        let s = table_view_sql(&root, Table::Traces);
        assert!(s.contains("CAST(NULL AS BIGINT) AS \"shot_id\"") && s.ends_with("WHERE false;"), "{s}");
        std::fs::write(root.join("traces").join(SCHEMA_FILE), b"").unwrap();
        let s = table_view_sql(&root, Table::Traces);
        let want = format!("'{}/traces/*.parquet'", root.display().to_string().replace('\'', "''"));
        assert!(s.contains(&want), "{s}");
    }
}
