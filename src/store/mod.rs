//! The table store: every stage reads and writes Parquet tables, registered
//! as views in a DuckDB catalog that users query with SQL.
//!
//! * [`schema`]: the tables ([`Table`]) and their versioned schemas, built from
//!   `schemas/<table>.json` (the one source of truth).
//! * [`shot_id`]: the stable int64 key joining the tables.
//! * [`builder`]: append rows by column name ([`BatchBuilder`], [`Value`]);
//!   [`rows`]: typed rows for experiments, spectra, traces, failures;
//!   [`reflections`]: DIALS reflection columns → the `reflections` table.
//! * [`parquet`]: shard encoding (zstd, schema version in the metadata) and
//!   reading back; [`atomic`]: tmp-then-rename publication.
//! * [`dir`]: [`Store`], a store directory as one rank sees it (append shards,
//!   list shot ids for resumable reruns, read tables, query).
//! * [`catalog`]: `DIR/catalog.duckdb`, one view per table plus `sql/*.sql`.
//!
//! # Conventions
//! * Layout: `DIR/<table>/rank<R>-<part>.parquet` (shards, never rewritten),
//!   `DIR/<table>/_schema.parquet` (zero rows, current schema),
//!   `DIR/catalog.duckdb`. Every `.parquet` file in a table folder belongs to
//!   the table; temporary files end in `.tmp-<pid>-<n>` and are ignored.
//! * Column names are lower_snake_case, except diffBragg's own pandas names
//!   kept for familiarity (`Amats`, `rotX`, ..., `I`, `F`); DuckDB matches
//!   names case-insensitively. DIALS column names have `.` replaced by `_`.
//! * Units are stated per column in the schema (Arrow field metadata `unit`).
//!   Pixel coordinates follow dxtbx (pixel i spans [i, i+1)); vectors are in the
//!   lab frame of [`crate::conventions`]; matrices are row-major.
//! * Every table has an int64 `shot_id` except `fhkl`.

pub mod atomic;
pub mod builder;
pub mod catalog;
pub mod dir;
pub mod parquet;
pub mod reflections;
pub mod rows;
pub mod schema;
pub mod shot_id;

pub use builder::{BatchBuilder, Row, Value};
pub use catalog::QueryResult;
pub use dir::Store;
pub use reflections::{reflections_batch, RawColumn, RawColumnRef, RawTable, ReflectionColumns};
pub use rows::{ExperimentRow, FailureRow, SpectrumRow, TraceRow};
pub use schema::{ColumnSpec, ColumnType, Table, TableSchema};
