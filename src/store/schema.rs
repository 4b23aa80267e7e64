//! Table schemas: the `schemas/<table>.json` files, their small type language,
//! and the Arrow schemas built from them.
//!
//! The JSON files are the one source of truth; they are compiled in with
//! `include_str!`, so the binary never looks for them on disk.
//!
//! # File format
//! ```json
//! { "name": "traces", "version": 1, "description": "...", "key": ["shot_id", "eval"],
//!   "columns": [ { "name": "shot_id", "type": "int64", "nullable": false,
//!                  "unit": "none", "description": "...", "dials": "optional DIALS name" } ] }
//! ```
//! `unit` is always present: `none` for ids, labels and flags, `1` for
//! dimensionless numbers, else a unit such as `Å`, `mm`, `px`, `deg`, `eV`.
//!
//! # Type language (1:1 with Arrow)
//! | type                      | Arrow                                   |
//! |---------------------------|-----------------------------------------|
//! | `bool`                    | Boolean                                 |
//! | `int8` … `int64`          | Int8 … Int64                            |
//! | `uint8` … `uint64`        | UInt8 … UInt64                          |
//! | `float32`, `float64`      | Float32, Float64                        |
//! | `utf8`                    | Utf8                                    |
//! | `timestamp_us_utc`        | Timestamp(µs, "+00:00")                 |
//! | `list<T>`                 | List(T), item field `item`, nullable    |
//! | `fixed_list<T,N>`         | FixedSizeList(T, N), item field `item`  |
//! | `struct<a:T,b:U,...>`     | Struct, non-nullable numeric fields     |
//!
//! List items and struct fields must be numeric or bool (no nesting, no
//! strings), which keeps the row builder small. The time zone is written as the
//! fixed offset `+00:00` because arrow-rs (without chrono-tz) cannot format a
//! named zone; pyarrow and DuckDB both read it as UTC.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Arrow time zone string used for `timestamp_us_utc`.
pub const UTC_OFFSET: &str = "+00:00";
/// Arrow/Parquet key-value metadata: table name.
pub const META_TABLE: &str = "diffbragg.table";
/// Arrow/Parquet key-value metadata: schema version (decimal integer).
pub const META_VERSION: &str = "diffbragg.schema_version";

/// A column type of the schema language.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    Utf8,
    TimestampUsUtc,
    List(Box<ColumnType>),
    FixedList(Box<ColumnType>, usize),
    Struct(Vec<(String, ColumnType)>),
}

impl ColumnType {
    /// Parse a type string such as `fixed_list<float64,3>`.
    pub fn parse(s: &str) -> Result<ColumnType> {
        let t = s.trim();
        let err = |m: &str| Error::msg(format!("column type `{s}`: {m}"));
        let inner = |prefix: &str| -> Option<&str> { t.strip_prefix(prefix)?.strip_suffix('>') };
        if let Some(x) = inner("list<") {
            let item = ColumnType::parse(x)?;
            if !item.is_leaf_numeric() {
                return Err(err("list items must be numeric or bool"));
            }
            return Ok(ColumnType::List(Box::new(item)));
        }
        if let Some(x) = inner("fixed_list<") {
            let (ty, n) = x.rsplit_once(',').ok_or_else(|| err("expected fixed_list<T,N>"))?;
            let item = ColumnType::parse(ty)?;
            if !item.is_leaf_numeric() {
                return Err(err("fixed_list items must be numeric or bool"));
            }
            let n: usize = n.trim().parse().map_err(|_| err("fixed_list length is not an integer"))?;
            if n == 0 || n > i32::MAX as usize {
                return Err(err("fixed_list length must be positive"));
            }
            return Ok(ColumnType::FixedList(Box::new(item), n));
        }
        if let Some(x) = inner("struct<") {
            let mut fields = Vec::new();
            for part in x.split(',') {
                let (name, ty) = part.split_once(':').ok_or_else(|| err("expected struct<name:T,...>"))?;
                let name = name.trim();
                if !is_identifier(name) {
                    return Err(err(&format!("bad struct field name `{name}`")));
                }
                let ty = ColumnType::parse(ty)?;
                if !ty.is_leaf_numeric() {
                    return Err(err("struct fields must be numeric or bool"));
                }
                if fields.iter().any(|(n, _)| n == name) {
                    return Err(err(&format!("duplicate struct field `{name}`")));
                }
                fields.push((name.to_string(), ty));
            }
            return Ok(ColumnType::Struct(fields));
        }
        Ok(match t {
            "bool" => ColumnType::Bool,
            "int8" => ColumnType::Int8,
            "int16" => ColumnType::Int16,
            "int32" => ColumnType::Int32,
            "int64" => ColumnType::Int64,
            "uint8" => ColumnType::UInt8,
            "uint16" => ColumnType::UInt16,
            "uint32" => ColumnType::UInt32,
            "uint64" => ColumnType::UInt64,
            "float32" => ColumnType::Float32,
            "float64" => ColumnType::Float64,
            "utf8" => ColumnType::Utf8,
            "timestamp_us_utc" => ColumnType::TimestampUsUtc,
            _ => return Err(err("unknown type")),
        })
    }

    /// Numbers and bools: what lists and structs may hold.
    pub fn is_leaf_numeric(&self) -> bool {
        !matches!(
            self,
            ColumnType::Utf8
                | ColumnType::TimestampUsUtc
                | ColumnType::List(_)
                | ColumnType::FixedList(..)
                | ColumnType::Struct(_)
        )
    }

    /// The Arrow type of this column type.
    pub fn to_arrow(&self) -> DataType {
        match self {
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int8 => DataType::Int8,
            ColumnType::Int16 => DataType::Int16,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::UInt8 => DataType::UInt8,
            ColumnType::UInt16 => DataType::UInt16,
            ColumnType::UInt32 => DataType::UInt32,
            ColumnType::UInt64 => DataType::UInt64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::TimestampUsUtc => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC_OFFSET.into())),
            ColumnType::List(t) => DataType::List(Arc::new(list_item(t))),
            ColumnType::FixedList(t, n) => DataType::FixedSizeList(Arc::new(list_item(t)), *n as i32),
            ColumnType::Struct(f) => DataType::Struct(struct_fields(f)),
        }
    }
}

/// The item field of list types (Arrow's default name and nullability).
pub(crate) fn list_item(t: &ColumnType) -> Field {
    Field::new("item", t.to_arrow(), true)
}

pub(crate) fn struct_fields(f: &[(String, ColumnType)]) -> Fields {
    f.iter().map(|(n, t)| Field::new(n, t.to_arrow(), false)).collect()
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Bool => f.write_str("bool"),
            ColumnType::Int8 => f.write_str("int8"),
            ColumnType::Int16 => f.write_str("int16"),
            ColumnType::Int32 => f.write_str("int32"),
            ColumnType::Int64 => f.write_str("int64"),
            ColumnType::UInt8 => f.write_str("uint8"),
            ColumnType::UInt16 => f.write_str("uint16"),
            ColumnType::UInt32 => f.write_str("uint32"),
            ColumnType::UInt64 => f.write_str("uint64"),
            ColumnType::Float32 => f.write_str("float32"),
            ColumnType::Float64 => f.write_str("float64"),
            ColumnType::Utf8 => f.write_str("utf8"),
            ColumnType::TimestampUsUtc => f.write_str("timestamp_us_utc"),
            ColumnType::List(t) => write!(f, "list<{t}>"),
            ColumnType::FixedList(t, n) => write!(f, "fixed_list<{t},{n}>"),
            ColumnType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, (n, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{n}:{t}")?;
                }
                f.write_str(">")
            }
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// One column of a table.
#[derive(Clone, Debug)]
pub struct ColumnSpec {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    pub unit: String,
    pub description: String,
    /// The DIALS reflection-table column this one is converted from, if any.
    pub dials: Option<String>,
}

/// A table schema parsed from `schemas/<name>.json`.
#[derive(Clone, Debug)]
pub struct TableSchema {
    pub name: String,
    pub version: u32,
    pub description: String,
    /// Columns that identify a row (documentation; not enforced).
    pub key: Vec<String>,
    pub columns: Vec<ColumnSpec>,
    arrow: SchemaRef,
    index: HashMap<String, usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    name: String,
    version: u32,
    description: String,
    #[serde(default)]
    key: Vec<String>,
    columns: Vec<RawColumn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    nullable: bool,
    unit: String,
    description: String,
    #[serde(default)]
    dials: Option<String>,
}

impl TableSchema {
    /// Parse and validate a schema file's text; `origin` names it in errors.
    pub fn from_json(origin: &str, text: &str) -> Result<TableSchema> {
        let raw: RawSchema =
            serde_json::from_str(text).map_err(|e| Error::file(origin, format!("bad schema JSON: {e}")))?;
        let bad = |m: String| Error::file(origin, m);
        if !is_identifier(&raw.name) {
            return Err(bad(format!("table name `{}` is not an identifier", raw.name)));
        }
        if raw.version == 0 {
            return Err(bad("version must be ≥ 1".into()));
        }
        if raw.description.trim().is_empty() {
            return Err(bad("table description is empty".into()));
        }
        if raw.columns.is_empty() {
            return Err(bad("no columns".into()));
        }
        let mut columns = Vec::with_capacity(raw.columns.len());
        let mut index = HashMap::new();
        for (i, c) in raw.columns.into_iter().enumerate() {
            let at = |m: String| Error::record(origin, format!("column `{}`", c.name), m);
            if !is_identifier(&c.name) {
                return Err(at("name is not an identifier".into()));
            }
            if index.insert(c.name.to_ascii_lowercase(), i).is_some() {
                // DuckDB identifiers are case-insensitive, so `a` and `A` would clash.
                return Err(at("duplicate column name (case-insensitive)".into()));
            }
            if c.unit.trim().is_empty() {
                return Err(at("unit is empty (use `none` or `1`)".into()));
            }
            if c.description.trim().is_empty() {
                return Err(at("description is empty".into()));
            }
            let ty = ColumnType::parse(&c.ty).map_err(|e| at(e.to_string()))?;
            columns.push(ColumnSpec {
                name: c.name,
                ty,
                nullable: c.nullable,
                unit: c.unit,
                description: c.description,
                dials: c.dials,
            });
        }
        for k in &raw.key {
            if !index.contains_key(&k.to_ascii_lowercase()) {
                return Err(bad(format!("key column `{k}` is not a column")));
            }
        }
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| {
                Field::new(&c.name, c.ty.to_arrow(), c.nullable).with_metadata(HashMap::from([
                    ("unit".to_string(), c.unit.clone()),
                    ("description".to_string(), c.description.clone()),
                ]))
            })
            .collect();
        let meta = HashMap::from([
            (META_TABLE.to_string(), raw.name.clone()),
            (META_VERSION.to_string(), raw.version.to_string()),
        ]);
        let arrow = Arc::new(Schema::new_with_metadata(fields, meta));
        // Exact-case lookup index (the case-insensitive one above only guards clashes).
        let index = columns.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        Ok(TableSchema {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            key: raw.key,
            columns,
            arrow,
            index,
        })
    }

    /// The Arrow schema, with units and descriptions as field metadata and the
    /// table name and version as schema metadata.
    pub fn arrow(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// Position of a column by exact name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.index_of(name).map(|i| &self.columns[i])
    }
}

/// The tables of a store. Users type these names in SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Experiments,
    Reflections,
    Spectra,
    Pixels,
    Predictions,
    ShotParams,
    Fhkl,
    Traces,
    Failures,
    Residuals,
}

const SCHEMA_TEXTS: [(Table, &str, &str); 10] = [
    (Table::Experiments, "schemas/experiments.json", include_str!("../../schemas/experiments.json")),
    (Table::Reflections, "schemas/reflections.json", include_str!("../../schemas/reflections.json")),
    (Table::Spectra, "schemas/spectra.json", include_str!("../../schemas/spectra.json")),
    (Table::Pixels, "schemas/pixels.json", include_str!("../../schemas/pixels.json")),
    (Table::Predictions, "schemas/predictions.json", include_str!("../../schemas/predictions.json")),
    (Table::ShotParams, "schemas/shot_params.json", include_str!("../../schemas/shot_params.json")),
    (Table::Fhkl, "schemas/fhkl.json", include_str!("../../schemas/fhkl.json")),
    (Table::Traces, "schemas/traces.json", include_str!("../../schemas/traces.json")),
    (Table::Failures, "schemas/failures.json", include_str!("../../schemas/failures.json")),
    (Table::Residuals, "schemas/residuals.json", include_str!("../../schemas/residuals.json")),
];

impl Table {
    pub const ALL: [Table; 10] = [
        Table::Experiments,
        Table::Reflections,
        Table::Spectra,
        Table::Pixels,
        Table::Predictions,
        Table::ShotParams,
        Table::Fhkl,
        Table::Traces,
        Table::Failures,
        Table::Residuals,
    ];

    /// The SQL/folder name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Experiments => "experiments",
            Table::Reflections => "reflections",
            Table::Spectra => "spectra",
            Table::Pixels => "pixels",
            Table::Predictions => "predictions",
            Table::ShotParams => "shot_params",
            Table::Fhkl => "fhkl",
            Table::Traces => "traces",
            Table::Failures => "failures",
            Table::Residuals => "residuals",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The compiled-in schema. The embedded JSON is checked by the unit tests,
    /// so a failure here is a build defect, not a user error.
    pub fn schema(self) -> &'static TableSchema {
        static SCHEMAS: OnceLock<Vec<TableSchema>> = OnceLock::new();
        let all = SCHEMAS.get_or_init(|| {
            SCHEMA_TEXTS
                .iter()
                .map(|(t, origin, text)| {
                    let s = TableSchema::from_json(origin, text)
                        .unwrap_or_else(|e| panic!("embedded schema is invalid: {e}"));
                    assert_eq!(s.name, t.name(), "{origin}: name does not match its table");
                    s
                })
                .collect()
        });
        &all[self as usize]
    }

    /// The embedded JSON text and its path in the source tree.
    pub fn schema_source(self) -> (&'static str, &'static str) {
        let (_, origin, text) = SCHEMA_TEXTS[self as usize];
        (origin, text)
    }

    pub fn arrow_schema(self) -> SchemaRef {
        self.schema().arrow()
    }

    pub fn version(self) -> u32 {
        self.schema().version
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Compare two Arrow schemas by column names, types and nullability (metadata
/// ignored); the first difference, phrased for a user, or `None`.
pub fn schema_difference(expected: &Schema, got: &Schema) -> Option<String> {
    if expected.fields().len() != got.fields().len() {
        let names = |s: &Schema| s.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>().join(", ");
        return Some(format!(
            "expected {} columns ({}), got {} ({})",
            expected.fields().len(),
            names(expected),
            got.fields().len(),
            names(got)
        ));
    }
    for (e, g) in expected.fields().iter().zip(got.fields()) {
        if e.name() != g.name() {
            return Some(format!("expected column `{}`, got `{}`", e.name(), g.name()));
        }
        if !types_match(e.data_type(), g.data_type()) {
            return Some(format!(
                "column `{}`: expected type {}, got {}",
                e.name(),
                e.data_type(),
                g.data_type()
            ));
        }
        if e.is_nullable() != g.is_nullable() {
            return Some(format!("column `{}`: nullability differs", e.name()));
        }
    }
    None
}

/// Type equality ignoring field metadata inside nested types.
fn types_match(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) => {
            types_match(x.data_type(), y.data_type()) && x.is_nullable() == y.is_nullable()
        }
        (DataType::FixedSizeList(x, n), DataType::FixedSizeList(y, m)) => {
            n == m && types_match(x.data_type(), y.data_type()) && x.is_nullable() == y.is_nullable()
        }
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len()
                && x.iter().zip(y.iter()).all(|(p, q)| {
                    p.name() == q.name()
                        && p.is_nullable() == q.is_nullable()
                        && types_match(p.data_type(), q.data_type())
                })
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_schema_parses_and_converts() {
        for t in Table::ALL {
            let s = t.schema();
            assert_eq!(s.name, t.name());
            assert!(s.version >= 1);
            let a = t.arrow_schema();
            assert_eq!(a.fields().len(), s.columns.len());
            assert_eq!(a.metadata()[META_TABLE], t.name());
            assert_eq!(a.metadata()[META_VERSION], s.version.to_string());
            for (c, f) in s.columns.iter().zip(a.fields()) {
                assert!(!c.unit.trim().is_empty() && !c.description.trim().is_empty(), "{t}.{}", c.name);
                assert_eq!(f.metadata()["unit"], c.unit);
                assert_eq!(f.metadata()["description"], c.description);
                assert_eq!(f.is_nullable(), c.nullable);
                // The type string round-trips through Display.
                assert_eq!(ColumnType::parse(&c.ty.to_string()).unwrap(), c.ty);
            }
            // Every table but fhkl carries an int64 shot_id.
            if t != Table::Fhkl {
                let c = s.column("shot_id").unwrap_or_else(|| panic!("{t} lacks shot_id"));
                assert_eq!(c.ty, ColumnType::Int64, "{t}.shot_id");
            } else {
                assert!(s.column("shot_id").is_none());
            }
            assert_eq!(Table::from_name(t.name()), Some(t));
        }
    }

    #[test]
    fn every_schema_file_in_the_tree_is_embedded() {
        // A schema added to schemas/ but not to SCHEMA_TEXTS would silently be ignored.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = Table::ALL.iter().map(|t| format!("{}.json", t.name())).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        for t in Table::ALL {
            let (origin, text) = t.schema_source();
            assert_eq!(
                std::fs::read_to_string(dir.join(format!("{}.json", t.name()))).unwrap(),
                text,
                "{origin}"
            );
        }
    }

    #[test]
    fn type_language_maps_to_arrow() {
        use arrow::datatypes::DataType as D;
        assert_eq!(ColumnType::parse("uint64").unwrap().to_arrow(), D::UInt64);
        let fl = ColumnType::parse("fixed_list<float64,3>").unwrap().to_arrow();
        assert!(matches!(&fl, D::FixedSizeList(f, 3) if f.data_type() == &D::Float64));
        let l = ColumnType::parse("list<float32>").unwrap().to_arrow();
        assert!(matches!(&l, D::List(f) if f.data_type() == &D::Float32));
        let s = ColumnType::parse("struct<h:int32,k:int32,l:int32>").unwrap().to_arrow();
        match s {
            D::Struct(f) => {
                assert_eq!(f.iter().map(|x| x.name().as_str()).collect::<Vec<_>>(), ["h", "k", "l"]);
                assert!(f.iter().all(|x| x.data_type() == &D::Int32));
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            ColumnType::parse("timestamp_us_utc").unwrap().to_arrow(),
            D::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        );
        for bad in [
            "",
            "int128",
            "list<utf8>",
            "list<list<int8>>",
            "fixed_list<float64,0>",
            "fixed_list<float64>",
            "struct<h int32>",
            "struct<h:int32,h:int32>",
            "list<float64",
        ] {
            assert!(ColumnType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_schema_files_are_rejected_with_the_column_named() {
        let ok = r#"{"name":"t","version":1,"description":"d","columns":[{"name":"x","type":"int64","nullable":false,"unit":"none","description":"d"}]}"#;
        assert!(TableSchema::from_json("t.json", ok).is_ok());
        let cases = [
            (ok.replace(r#""unit":"none""#, r#""unit":"""#), "unit"),
            (ok.replace(r#""description":"d"}"#, r#""description":" "}"#), "description"),
            (ok.replace("int64", "int65"), "unknown type"),
            (ok.replace(r#""version":1"#, r#""version":0"#), "version"),
            (ok.replace(r#""nullable":false,"#, ""), "nullable"),
            (ok.replace(r#""name":"x""#, r#""name":"x y""#), "identifier"),
        ];
        for (text, needle) in cases {
            let e = TableSchema::from_json("t.json", &text).unwrap_err().to_string();
            assert!(e.contains("t.json") && e.contains(needle), "{e}");
        }
        let dup = ok.replace(
            r#"}]}"#,
            r#"},{"name":"X","type":"int8","nullable":true,"unit":"1","description":"d"}]}"#,
        );
        assert!(TableSchema::from_json("t.json", &dup).unwrap_err().to_string().contains("duplicate"));
    }
}
