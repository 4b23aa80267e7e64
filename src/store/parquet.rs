//! Parquet shards: writing batches of one table (zstd, schema version in the
//! key-value metadata) and reading them back conformed to the current schema.
//!
//! Key-value metadata of every file: `diffbragg.table` = table name,
//! `diffbragg.schema_version` = integer version (besides arrow-rs's own
//! `ARROW:schema`, which lets pyarrow restore fixed-size lists and units).
//! A reader accepts files of its own or an older version of the table (missing
//! columns read as null, changed types are cast) and refuses newer ones.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::schema::{schema_difference, Table, META_TABLE, META_VERSION};
use crate::error::{Error, Result};

/// Writer settings for a table's files.
fn writer_props(table: Table) -> WriterProperties {
    // Pixel rows carry ~100–250 pixels each; keep their row groups smaller so a
    // reader holding one group stays in the tens of MB.
    let rows_per_group = if table == Table::Pixels { 8 * 1024 } else { 64 * 1024 };
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        .set_max_row_group_row_count(Some(rows_per_group))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(META_TABLE.to_string(), table.name().to_string()),
            KeyValue::new(META_VERSION.to_string(), table.version().to_string()),
        ]))
        .set_created_by(format!("diffbragg-rs {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Check that every batch has `table`'s schema (names, types, nullability).
pub fn check_batches(table: Table, batches: &[RecordBatch]) -> Result<()> {
    let want = table.arrow_schema();
    for (i, b) in batches.iter().enumerate() {
        if let Some(d) = schema_difference(&want, &b.schema()) {
            return Err(Error::msg(format!("table `{table}`: batch {i} does not match the schema: {d}")));
        }
    }
    Ok(())
}

/// Encode `batches` of `table` as one Parquet file into `w`.
pub fn write_batches<W: std::io::Write + Send>(table: Table, batches: &[RecordBatch], w: W) -> Result<()> {
    let schema = table.arrow_schema();
    let err = |e: parquet::errors::ParquetError| Error::msg(format!("table `{table}`: writing Parquet: {e}"));
    let mut writer = ArrowWriter::try_new(w, schema.clone(), Some(writer_props(table))).map_err(err)?;
    for b in batches {
        // Re-attach the table schema (with its metadata) to batches that match it structurally.
        let b = RecordBatch::try_new(schema.clone(), b.columns().to_vec())
            .map_err(|e| Error::msg(format!("table `{table}`: {e}")))?;
        writer.write(&b).map_err(err)?;
    }
    writer.close().map_err(err)?;
    Ok(())
}

/// Encode query results (any schema) as a Parquet file.
pub fn write_any<W: std::io::Write + Send>(schema: SchemaRef, batches: &[RecordBatch], w: W) -> Result<()> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        .build();
    let err = |e: parquet::errors::ParquetError| Error::msg(format!("writing Parquet: {e}"));
    let mut writer = ArrowWriter::try_new(w, schema, Some(props)).map_err(err)?;
    for b in batches {
        writer.write(b).map_err(err)?;
    }
    writer.close().map_err(err)?;
    Ok(())
}

/// The table name and schema version recorded in a file's metadata.
pub fn file_identity(path: &Path) -> Result<(Option<String>, Option<u32>)> {
    let f = File::open(path).map_err(|e| crate::error::io_err(path, e))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| Error::file(path, format!("not a Parquet file: {e}")))?;
    identity(b.metadata().file_metadata().key_value_metadata(), path)
}

fn identity(kv: Option<&Vec<KeyValue>>, path: &Path) -> Result<(Option<String>, Option<u32>)> {
    let get = |k: &str| kv.and_then(|v| v.iter().find(|e| e.key == k)).and_then(|e| e.value.clone());
    let version = match get(META_VERSION) {
        Some(s) => Some(
            s.trim()
                .parse::<u32>()
                .map_err(|_| Error::file(path, format!("bad {META_VERSION} metadata `{s}`")))?,
        ),
        None => None,
    };
    Ok((get(META_TABLE), version))
}

/// Read one shard of `table`, optionally only some columns (by name), and
/// optionally only rows whose `shot_id` is in `shots`. Batches come back with
/// the current schema of `table` (or its projection).
pub fn read_shard(
    table: Table,
    path: &Path,
    columns: Option<&[&str]>,
    shots: Option<&BTreeSet<i64>>,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    read_shard_each(table, path, columns, shots, |b| {
        out.push(b);
        Ok(())
    })?;
    Ok(out)
}

/// [`read_shard`], handing each batch to `each` as it is decoded (one row
/// group's worth at a time), so a caller that converts the rows can stream a
/// large shard without holding it all as Arrow arrays.
pub fn read_shard_each(
    table: Table,
    path: &Path,
    columns: Option<&[&str]>,
    shots: Option<&BTreeSet<i64>>,
    mut each: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let f = File::open(path).map_err(|e| crate::error::io_err(path, e))?;
    let bad = |m: String| Error::file(path, m);
    // The Parquet/Arrow decoders can panic on corrupt bytes (e.g. a damaged
    // embedded Arrow schema): turn that into an error naming the file.
    let guarded = |what: &str, e: Box<dyn std::any::Any + Send>| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        bad(format!("corrupt Parquet data ({what}): {msg}"))
    };
    let builder = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ParquetRecordBatchReaderBuilder::try_new(f)
    }))
    .map_err(|e| guarded("metadata", e))?
    .map_err(|e| bad(format!("not a Parquet file: {e}")))?;
    let (name, version) = identity(builder.metadata().file_metadata().key_value_metadata(), path)?;
    if let Some(n) = &name {
        if n != table.name() {
            return Err(bad(format!("holds table `{n}`, not `{table}`")));
        }
    }
    match version {
        Some(v) if v > table.version() => {
            return Err(bad(format!(
            "written with `{table}` schema version {v}, newer than this program's {}; use a newer diffbragg",
            table.version()
        )))
        }
        None => return Err(bad(format!("no {META_VERSION} metadata: not written by diffbragg"))),
        _ => {}
    }
    let current = table.arrow_schema();
    let wanted: Vec<usize> = match columns {
        None => (0..current.fields().len()).collect(),
        Some(cols) => cols
            .iter()
            .map(|c| current.index_of(c).map_err(|_| bad(format!("table `{table}` has no column `{c}`"))))
            .collect::<Result<_>>()?,
    };
    let out_schema = Arc::new(current.project(&wanted).expect("indices come from the schema"));
    // Read the wanted columns that exist in the file, plus shot_id for the filter.
    let file_schema = builder.schema().clone();
    let mut roots: BTreeSet<usize> = BTreeSet::new();
    for f in out_schema.fields() {
        if let Ok(i) = file_schema.index_of(f.name()) {
            roots.insert(i);
        }
    }
    if shots.is_some() {
        let i = file_schema.index_of("shot_id").map_err(|_| bad("no shot_id column to filter on".into()))?;
        roots.insert(i);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let mut reader = builder.with_projection(mask).build().map_err(|e| bad(e.to_string()))?;
    loop {
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let Some(b) = reader.next() else { return Ok(None) };
            let mut b = b.map_err(|e| bad(format!("reading: {e}")))?;
            if let Some(shots) = shots {
                let ids = b
                    .column_by_name("shot_id")
                    .and_then(|c| c.as_primitive_opt::<Int64Type>())
                    .ok_or_else(|| bad("shot_id is not an int64 column".into()))?;
                let keep: BooleanArray =
                    ids.iter().map(|x| Some(x.is_some_and(|x| shots.contains(&x)))).collect();
                b = arrow::compute::filter_record_batch(&b, &keep).map_err(|e| bad(e.to_string()))?;
                if b.num_rows() == 0 {
                    return Ok(Some(None));
                }
            }
            conform(&b, &out_schema).map_err(bad).map(|b| Some(Some(b)))
        }))
        .map_err(|e| guarded("data", e))??;
        match next {
            None => break,
            Some(None) => continue,
            Some(Some(b)) => each(b)?,
        }
    }
    Ok(())
}

/// Bring a batch read from a file to `schema`: columns by name, cast where the
/// type changed between versions, nulls for columns the file lacks.
fn conform(b: &RecordBatch, schema: &SchemaRef) -> std::result::Result<RecordBatch, String> {
    let n = b.num_rows();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let a = match b.column_by_name(f.name()) {
            Some(a) if a.data_type() == f.data_type() => a.clone(),
            Some(a) => arrow::compute::cast(a, f.data_type()).map_err(|e| {
                format!("column `{}`: cannot read {} as {}: {e}", f.name(), a.data_type(), f.data_type())
            })?,
            None if f.is_nullable() => new_null_array(f.data_type(), n),
            None => return Err(format!("required column `{}` is missing", f.name())),
        };
        if !f.is_nullable() && a.null_count() > 0 {
            return Err(format!("column `{}` holds nulls but is not nullable", f.name()));
        }
        cols.push(a);
    }
    let opts = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n));
    RecordBatch::try_new_with_options(schema.clone(), cols, &opts).map_err(|e| e.to_string())
}
