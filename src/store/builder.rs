//! A row builder driven by a table's schema: stages append rows as
//! `(column name, value)` pairs and get an Arrow `RecordBatch` whose schema is
//! exactly the table's.
//!
//! * Columns not named in a row are null; a non-nullable one is an error.
//! * Values convert only where no information is lost: an integer goes into any
//!   integer column it fits (range-checked) or a float column; a float only into
//!   float columns; lists into `list`/`fixed_list`/`struct` columns of the right
//!   length. Everything else is an error naming the table, row and column.
//! * A row that fails leaves the builder as it was before the row.
//! * Buffers are shrunk before they become Arrow arrays, so a `pixels` batch
//!   costs 9 bytes per pixel (f32 + f32 + u8) plus per-ROI columns.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, Int8Array, ListArray, StringArray, StructArray, TimestampMicrosecondArray, UInt16Array,
    UInt32Array, UInt64Array, UInt8Array,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};

use super::schema::{ColumnSpec, ColumnType, Table, TableSchema, UTC_OFFSET};
use crate::error::{Error, Result};

/// One cell value. Lists borrow where they can (`Cow`), so appending a ROI's
/// pixels copies them once, into the column.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Time(DateTime<Utc>),
    F64s(Cow<'a, [f64]>),
    F32s(Cow<'a, [f32]>),
    I32s(Cow<'a, [i32]>),
    U8s(Cow<'a, [u8]>),
    Bools(Cow<'a, [bool]>),
}

macro_rules! from_int {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Value<'_> {
            fn from(x: $t) -> Self { Value::$v(x as _) }
        }
    )*};
}
from_int!(i8 => Int, i16 => Int, i32 => Int, i64 => Int, u8 => UInt, u16 => UInt, u32 => UInt, u64 => UInt, usize => UInt, f32 => Float, f64 => Float);

impl From<bool> for Value<'_> {
    fn from(x: bool) -> Self {
        Value::Bool(x)
    }
}
impl<'a> From<&'a str> for Value<'a> {
    fn from(x: &'a str) -> Self {
        Value::Str(Cow::Borrowed(x))
    }
}
impl<'a> From<&'a String> for Value<'a> {
    fn from(x: &'a String) -> Self {
        Value::Str(Cow::Borrowed(x))
    }
}
impl From<String> for Value<'_> {
    fn from(x: String) -> Self {
        Value::Str(Cow::Owned(x))
    }
}
impl From<DateTime<Utc>> for Value<'_> {
    fn from(x: DateTime<Utc>) -> Self {
        Value::Time(x)
    }
}
impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(x: Option<T>) -> Self {
        x.map_or(Value::Null, Into::into)
    }
}

macro_rules! from_list {
    ($($t:ty => $v:ident),*) => {$(
        impl<'a> From<&'a [$t]> for Value<'a> {
            fn from(x: &'a [$t]) -> Self { Value::$v(Cow::Borrowed(x)) }
        }
        impl<'a> From<&'a Vec<$t>> for Value<'a> {
            fn from(x: &'a Vec<$t>) -> Self { Value::$v(Cow::Borrowed(x.as_slice())) }
        }
        impl From<Vec<$t>> for Value<'_> {
            fn from(x: Vec<$t>) -> Self { Value::$v(Cow::Owned(x)) }
        }
        impl<const N: usize> From<[$t; N]> for Value<'_> {
            fn from(x: [$t; N]) -> Self { Value::$v(Cow::Owned(x.to_vec())) }
        }
        impl<'a, const N: usize> From<&'a [$t; N]> for Value<'a> {
            fn from(x: &'a [$t; N]) -> Self { Value::$v(Cow::Borrowed(&x[..])) }
        }
    )*};
}
from_list!(f64 => F64s, f32 => F32s, i32 => I32s, u8 => U8s, bool => Bools);

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::UInt(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "text",
            Value::Time(_) => "time",
            Value::F64s(_) | Value::F32s(_) | Value::I32s(_) | Value::U8s(_) | Value::Bools(_) => "list",
        }
    }

    fn list_len(&self) -> Option<usize> {
        Some(match self {
            Value::F64s(v) => v.len(),
            Value::F32s(v) => v.len(),
            Value::I32s(v) => v.len(),
            Value::U8s(v) => v.len(),
            Value::Bools(v) => v.len(),
            _ => return None,
        })
    }
}

/// A row of a known table, for stages that prefer a typed struct.
pub trait Row {
    const TABLE: Table;
    fn cells(&self) -> Vec<(&'static str, Value<'_>)>;
}

/// Values of one leaf (numeric, bool, text or time) array.
#[derive(Debug)]
enum Leaf {
    Bool(Vec<bool>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Str { bytes: Vec<u8>, offsets: Vec<i32> },
    Ts(Vec<i64>),
}

/// A scalar to store in a leaf.
#[derive(Clone, Copy)]
enum Scalar<'s> {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'s str),
    Time(i64),
}

macro_rules! each_numeric {
    ($self:ident, $v:ident => $e:expr) => {
        match $self {
            Leaf::Bool($v) => $e,
            Leaf::I8($v) => $e,
            Leaf::I16($v) => $e,
            Leaf::I32($v) => $e,
            Leaf::I64($v) => $e,
            Leaf::U8($v) => $e,
            Leaf::U16($v) => $e,
            Leaf::U32($v) => $e,
            Leaf::U64($v) => $e,
            Leaf::F32($v) => $e,
            Leaf::F64($v) => $e,
            Leaf::Ts($v) => $e,
            Leaf::Str { .. } => unreachable!(),
        }
    };
}

impl Leaf {
    fn new(t: &ColumnType) -> Leaf {
        match t {
            ColumnType::Bool => Leaf::Bool(vec![]),
            ColumnType::Int8 => Leaf::I8(vec![]),
            ColumnType::Int16 => Leaf::I16(vec![]),
            ColumnType::Int32 => Leaf::I32(vec![]),
            ColumnType::Int64 => Leaf::I64(vec![]),
            ColumnType::UInt8 => Leaf::U8(vec![]),
            ColumnType::UInt16 => Leaf::U16(vec![]),
            ColumnType::UInt32 => Leaf::U32(vec![]),
            ColumnType::UInt64 => Leaf::U64(vec![]),
            ColumnType::Float32 => Leaf::F32(vec![]),
            ColumnType::Float64 => Leaf::F64(vec![]),
            ColumnType::Utf8 => Leaf::Str { bytes: vec![], offsets: vec![0] },
            ColumnType::TimestampUsUtc => Leaf::Ts(vec![]),
            ColumnType::List(_) | ColumnType::FixedList(..) | ColumnType::Struct(_) => {
                unreachable!("schema parser keeps leaves flat")
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Leaf::Str { offsets, .. } => offsets.len() - 1,
            l => each_numeric!(l, v => v.len()),
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Leaf::Str { bytes, offsets } => {
                offsets.truncate(n + 1);
                bytes.truncate(*offsets.last().unwrap() as usize);
            }
            l => each_numeric!(l, v => v.truncate(n)),
        }
    }

    fn push_default(&mut self) {
        match self {
            Leaf::Str { offsets, .. } => offsets.push(*offsets.last().unwrap()),
            l => each_numeric!(l, v => v.push(Default::default())),
        }
    }

    fn push(&mut self, s: Scalar) -> std::result::Result<(), String> {
        fn int<T: TryFrom<i64> + TryFrom<u64>>(s: Scalar, name: &str) -> std::result::Result<T, String> {
            match s {
                Scalar::Int(i) => T::try_from(i).map_err(|_| format!("value {i} does not fit {name}")),
                Scalar::UInt(u) => T::try_from(u).map_err(|_| format!("value {u} does not fit {name}")),
                _ => Err(format!("expected an integer for {name}")),
            }
        }
        let float = |s: Scalar| match s {
            Scalar::Float(f) => Ok(f),
            Scalar::Int(i) => Ok(i as f64),
            Scalar::UInt(u) => Ok(u as f64),
            _ => Err("expected a number".to_string()),
        };
        match self {
            Leaf::Bool(v) => match s {
                Scalar::Bool(b) => v.push(b),
                _ => return Err("expected a bool".into()),
            },
            Leaf::I8(v) => v.push(int(s, "int8")?),
            Leaf::I16(v) => v.push(int(s, "int16")?),
            Leaf::I32(v) => v.push(int(s, "int32")?),
            Leaf::I64(v) => v.push(int(s, "int64")?),
            Leaf::U8(v) => v.push(int(s, "uint8")?),
            Leaf::U16(v) => v.push(int(s, "uint16")?),
            Leaf::U32(v) => v.push(int(s, "uint32")?),
            Leaf::U64(v) => v.push(int(s, "uint64")?),
            Leaf::F32(v) => v.push(float(s)? as f32),
            Leaf::F64(v) => v.push(float(s)?),
            Leaf::Str { bytes, offsets } => match s {
                Scalar::Str(t) => {
                    bytes.extend_from_slice(t.as_bytes());
                    let end =
                        i32::try_from(bytes.len()).map_err(|_| "text column exceeds 2 GiB in one batch")?;
                    offsets.push(end);
                }
                _ => return Err("expected text".into()),
            },
            Leaf::Ts(v) => match s {
                Scalar::Time(t) => v.push(t),
                _ => return Err("expected a time".into()),
            },
        }
        Ok(())
    }

    /// Append a list value's elements (fast paths for the exact element type).
    fn extend(&mut self, v: &Value) -> std::result::Result<(), String> {
        match (&mut *self, v) {
            (Leaf::F64(d), Value::F64s(s)) => d.extend_from_slice(s),
            (Leaf::F32(d), Value::F32s(s)) => d.extend_from_slice(s),
            (Leaf::I32(d), Value::I32s(s)) => d.extend_from_slice(s),
            (Leaf::U8(d), Value::U8s(s)) => d.extend_from_slice(s),
            (Leaf::Bool(d), Value::Bools(s)) => d.extend_from_slice(s),
            (_, Value::F64s(s)) => s.iter().try_for_each(|&x| self.push(Scalar::Float(x)))?,
            (_, Value::F32s(s)) => s.iter().try_for_each(|&x| self.push(Scalar::Float(x as f64)))?,
            (_, Value::I32s(s)) => s.iter().try_for_each(|&x| self.push(Scalar::Int(x as i64)))?,
            (_, Value::U8s(s)) => s.iter().try_for_each(|&x| self.push(Scalar::UInt(x as u64)))?,
            (_, Value::Bools(s)) => s.iter().try_for_each(|&x| self.push(Scalar::Bool(x)))?,
            _ => return Err(format!("expected a list, got {}", v.kind())),
        }
        Ok(())
    }

    /// Element `i` of a list value as a scalar (struct fields).
    fn push_element(&mut self, v: &Value, i: usize) -> std::result::Result<(), String> {
        let s = match v {
            Value::F64s(s) => Scalar::Float(s[i]),
            Value::F32s(s) => Scalar::Float(s[i] as f64),
            Value::I32s(s) => Scalar::Int(s[i] as i64),
            Value::U8s(s) => Scalar::UInt(s[i] as u64),
            Value::Bools(s) => Scalar::Bool(s[i]),
            _ => return Err(format!("expected a list, got {}", v.kind())),
        };
        self.push(s)
    }

    fn into_array(self, nulls: Option<NullBuffer>) -> ArrayRef {
        fn sb<T: arrow::datatypes::ArrowNativeType>(mut v: Vec<T>) -> ScalarBuffer<T> {
            v.shrink_to_fit();
            ScalarBuffer::from(v)
        }
        match self {
            Leaf::Bool(v) => Arc::new(BooleanArray::new(BooleanBuffer::from_iter(v), nulls)),
            Leaf::I8(v) => Arc::new(Int8Array::new(sb(v), nulls)),
            Leaf::I16(v) => Arc::new(Int16Array::new(sb(v), nulls)),
            Leaf::I32(v) => Arc::new(Int32Array::new(sb(v), nulls)),
            Leaf::I64(v) => Arc::new(Int64Array::new(sb(v), nulls)),
            Leaf::U8(v) => Arc::new(UInt8Array::new(sb(v), nulls)),
            Leaf::U16(v) => Arc::new(UInt16Array::new(sb(v), nulls)),
            Leaf::U32(v) => Arc::new(UInt32Array::new(sb(v), nulls)),
            Leaf::U64(v) => Arc::new(UInt64Array::new(sb(v), nulls)),
            Leaf::F32(v) => Arc::new(Float32Array::new(sb(v), nulls)),
            Leaf::F64(v) => Arc::new(Float64Array::new(sb(v), nulls)),
            Leaf::Ts(v) => Arc::new(TimestampMicrosecondArray::new(sb(v), nulls).with_timezone(UTC_OFFSET)),
            Leaf::Str { mut bytes, offsets } => {
                bytes.shrink_to_fit();
                Arc::new(StringArray::new(OffsetBuffer::new(sb(offsets)), Buffer::from_vec(bytes), nulls))
            }
        }
    }
}

#[derive(Debug)]
enum ColKind {
    Scalar(Leaf),
    List { offsets: Vec<i32>, items: Leaf },
    Fixed { n: usize, items: Leaf },
    Struct(Vec<Leaf>),
}

#[derive(Debug)]
struct Col {
    kind: ColKind,
    valid: Vec<bool>,
    /// Generation stamp of the last row that set this column (duplicate check).
    stamp: u64,
}

impl Col {
    fn new(spec: &ColumnSpec) -> Col {
        let kind = match &spec.ty {
            ColumnType::List(t) => ColKind::List { offsets: vec![0], items: Leaf::new(t) },
            ColumnType::FixedList(t, n) => ColKind::Fixed { n: *n, items: Leaf::new(t) },
            ColumnType::Struct(f) => ColKind::Struct(f.iter().map(|(_, t)| Leaf::new(t)).collect()),
            t => ColKind::Scalar(Leaf::new(t)),
        };
        Col { kind, valid: vec![], stamp: 0 }
    }

    fn truncate(&mut self, rows: usize) {
        self.valid.truncate(rows);
        match &mut self.kind {
            ColKind::Scalar(l) => l.truncate(rows),
            ColKind::List { offsets, items } => {
                offsets.truncate(rows + 1);
                items.truncate(*offsets.last().unwrap() as usize);
            }
            ColKind::Fixed { n, items } => items.truncate(rows * *n),
            ColKind::Struct(ls) => ls.iter_mut().for_each(|l| l.truncate(rows)),
        }
    }

    fn push(&mut self, spec: &ColumnSpec, v: &Value) -> std::result::Result<(), String> {
        if matches!(v, Value::Null) {
            if !spec.nullable {
                return Err("is required (not nullable)".into());
            }
            match &mut self.kind {
                ColKind::Scalar(l) => l.push_default(),
                ColKind::List { offsets, .. } => offsets.push(*offsets.last().unwrap()),
                ColKind::Fixed { n, items } => (0..*n).for_each(|_| items.push_default()),
                ColKind::Struct(ls) => ls.iter_mut().for_each(Leaf::push_default),
            }
            self.valid.push(false);
            return Ok(());
        }
        match &mut self.kind {
            ColKind::Scalar(l) => {
                let s = match v {
                    Value::Bool(b) => Scalar::Bool(*b),
                    Value::Int(i) => Scalar::Int(*i),
                    Value::UInt(u) => Scalar::UInt(*u),
                    Value::Float(f) => Scalar::Float(*f),
                    Value::Str(t) => Scalar::Str(t),
                    Value::Time(t) => Scalar::Time(t.timestamp_micros()),
                    other => return Err(format!("expected a scalar ({}), got a {}", spec.ty, other.kind())),
                };
                l.push(s)?;
            }
            ColKind::List { offsets, items } => {
                items.extend(v)?;
                let end =
                    i32::try_from(items.len()).map_err(|_| "list column exceeds 2³¹ items in one batch")?;
                offsets.push(end);
            }
            ColKind::Fixed { n, items } => match v.list_len() {
                Some(len) if len == *n => items.extend(v)?,
                Some(len) => return Err(format!("expected {n} values, got {len}")),
                None => return Err(format!("expected a list of {n}, got {}", v.kind())),
            },
            ColKind::Struct(ls) => match v.list_len() {
                Some(len) if len == ls.len() => {
                    for (i, l) in ls.iter_mut().enumerate() {
                        l.push_element(v, i)?;
                    }
                }
                Some(len) => return Err(format!("expected {} fields, got {len}", ls.len())),
                None => return Err(format!("expected a list of {} fields, got {}", ls.len(), v.kind())),
            },
        }
        self.valid.push(true);
        Ok(())
    }

    fn into_array(self, dt: &DataType) -> ArrayRef {
        let nulls = if self.valid.iter().all(|&b| b) { None } else { Some(NullBuffer::from(self.valid)) };
        match (self.kind, dt) {
            (ColKind::Scalar(l), _) => l.into_array(nulls),
            (ColKind::List { offsets, items }, DataType::List(f)) => Arc::new(ListArray::new(
                f.clone(),
                OffsetBuffer::new(offsets.into()),
                items.into_array(None),
                nulls,
            )),
            (ColKind::Fixed { n, items }, DataType::FixedSizeList(f, _)) => {
                Arc::new(FixedSizeListArray::new(f.clone(), n as i32, items.into_array(None), nulls))
            }
            (ColKind::Struct(ls), DataType::Struct(fields)) => {
                let arrays = ls.into_iter().map(|l| l.into_array(None)).collect();
                Arc::new(StructArray::new(fields.clone(), arrays, nulls))
            }
            _ => unreachable!("column kinds follow the schema"),
        }
    }
}

/// Accumulates rows of one table; [`BatchBuilder::finish`] turns them into a batch.
#[derive(Debug)]
pub struct BatchBuilder {
    table: Table,
    cols: Vec<Col>,
    rows: usize,
    generation: u64,
}

impl BatchBuilder {
    pub fn new(table: Table) -> BatchBuilder {
        let cols = table.schema().columns.iter().map(Col::new).collect();
        BatchBuilder { table, cols, rows: 0, generation: 0 }
    }

    pub fn table(&self) -> Table {
        self.table
    }

    fn schema(&self) -> &'static TableSchema {
        self.table.schema()
    }

    /// Rows appended since the last `finish`.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Append one row given as `(column, value)` pairs in any order.
    pub fn append(&mut self, cells: &[(&str, Value)]) -> Result<()> {
        self.generation += 1;
        match self.try_append(cells) {
            Ok(()) => {
                self.rows += 1;
                Ok(())
            }
            Err(e) => {
                let rows = self.rows;
                self.cols.iter_mut().for_each(|c| c.truncate(rows));
                Err(e)
            }
        }
    }

    fn try_append(&mut self, cells: &[(&str, Value)]) -> Result<()> {
        let schema = self.schema();
        let gen = self.generation;
        let err = |col: &str, m: String| {
            Error::msg(format!("table `{}`: row {}: column `{col}`: {m}", schema.name, self.rows))
        };
        for (name, v) in cells {
            let i = schema.index_of(name).ok_or_else(|| err(name, "no such column".into()))?;
            let col = &mut self.cols[i];
            if col.stamp == gen {
                return Err(err(name, "given twice".into()));
            }
            col.stamp = gen;
            col.push(&schema.columns[i], v).map_err(|m| err(name, m))?;
        }
        for (i, col) in self.cols.iter_mut().enumerate() {
            if col.stamp != gen {
                col.push(&schema.columns[i], &Value::Null).map_err(|m| err(&schema.columns[i].name, m))?;
            }
        }
        Ok(())
    }

    /// Append a typed row; its table must be this builder's.
    pub fn append_row<R: Row>(&mut self, row: &R) -> Result<()> {
        if R::TABLE != self.table {
            return Err(Error::msg(format!("a `{}` row cannot go into table `{}`", R::TABLE, self.table)));
        }
        self.append(&row.cells())
    }

    /// Take the rows appended so far as a batch with the table's exact schema,
    /// leaving the builder empty for reuse.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let fresh = BatchBuilder::new(self.table);
        let full = std::mem::replace(self, fresh);
        let schema = full.table.arrow_schema();
        let rows = full.rows;
        let arrays: Vec<ArrayRef> =
            full.cols.into_iter().zip(schema.fields()).map(|(c, f)| c.into_array(f.data_type())).collect();
        let opts = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(schema, arrays, &opts)
            .map_err(|e| Error::msg(format!("table `{}`: building the batch: {e}", full.table)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float32Type, Int32Type, UInt8Type};

    fn trace(shot: i64, eval: i32) -> Vec<(&'static str, Value<'static>)> {
        vec![
            ("shot_id", shot.into()),
            ("stage", "stage1".into()),
            ("eval", eval.into()),
            ("f", (1.5 * eval as f64).into()),
            ("time", 0.25.into()),
        ]
    }

    #[test]
    fn builds_a_batch_with_the_table_schema_and_nulls_for_missing_columns() {
        let mut b = BatchBuilder::new(Table::Traces);
        b.append(&trace(7, 0)).unwrap();
        b.append(&trace(7, 1)).unwrap();
        let batch = b.finish().unwrap();
        assert!(b.is_empty());
        assert_eq!(batch.schema(), Table::Traces.arrow_schema());
        assert_eq!(batch.num_rows(), 2);
        let f = batch.column_by_name("f").unwrap().as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(f.values().as_ref(), &[0.0, 1.5]);
        let sigz = batch.column_by_name("sigz").unwrap();
        assert_eq!(sigz.null_count(), 2);
    }

    #[test]
    fn bad_rows_are_rejected_and_rolled_back() {
        let mut b = BatchBuilder::new(Table::Traces);
        b.append(&trace(1, 0)).unwrap();
        let mut missing = trace(1, 1);
        missing.retain(|(n, _)| *n != "eval");
        let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
            (missing, "`eval`: is required"),
            ([trace(1, 1), vec![("nope", 1.into())]].concat(), "`nope`: no such column"),
            ([trace(1, 1), vec![("eval", 2.into())]].concat(), "given twice"),
            (
                trace(1, 1)
                    .into_iter()
                    .map(|(n, v)| if n == "eval" { (n, Value::Int(1 << 40)) } else { (n, v) })
                    .collect(),
                "does not fit int32",
            ),
            (
                trace(1, 1)
                    .into_iter()
                    .map(|(n, v)| if n == "stage" { (n, 3.into()) } else { (n, v) })
                    .collect(),
                "expected text",
            ),
        ];
        for (row, needle) in cases {
            let e = b.append(&row).unwrap_err().to_string();
            assert!(e.contains("table `traces`: row 1") && e.contains(needle), "{e}");
        }
        b.append(&trace(1, 1)).unwrap();
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        let eval = batch.column_by_name("eval").unwrap().as_primitive::<Int32Type>();
        assert_eq!(eval.values().as_ref(), &[0, 1]);
    }

    #[test]
    fn nested_columns_and_length_checks() {
        let mut b = BatchBuilder::new(Table::Pixels);
        let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let row = |bbox: Vec<i32>, hkl: Value<'static>| -> Vec<(&'static str, Value<'static>)> {
            vec![
                ("shot_id", 3i64.into()),
                ("roi_id", 0.into()),
                ("panel", 2u32.into()),
                ("bbox", bbox.into()),
                ("hkl", hkl),
                ("sigma_readout", 3.0f32.into()),
                ("data", data.to_vec().into()),
                ("background", vec![0.5f32; 6].into()),
                ("trusted", vec![1u8, 1, 0, 1, 1, 1].into()),
            ]
        };
        b.append(&row(vec![10, 13, 20, 22], [1, -2, 3].into())).unwrap();
        b.append(&row(vec![0, 3, 0, 2], Value::Null)).unwrap();
        let e = b.append(&row(vec![0, 3, 0], Value::Null)).unwrap_err().to_string();
        assert!(e.contains("`bbox`: expected 4 values, got 3"), "{e}");
        let e = b.append(&row(vec![0, 3, 0, 2], [1, 2].into())).unwrap_err().to_string();
        assert!(e.contains("`hkl`: expected 3 fields"), "{e}");
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        let d = batch.column_by_name("data").unwrap().as_list::<i32>();
        assert_eq!(d.value(1).as_primitive::<Float32Type>().values().as_ref(), &data);
        let t = batch.column_by_name("trusted").unwrap().as_list::<i32>();
        assert_eq!(t.value(0).as_primitive::<UInt8Type>().value(2), 0);
        let hkl = batch.column_by_name("hkl").unwrap().as_struct();
        assert!(hkl.is_valid(0) && hkl.is_null(1));
        assert_eq!(hkl.column(1).as_primitive::<Int32Type>().value(0), -2);
        let bbox = batch.column_by_name("bbox").unwrap().as_fixed_size_list();
        assert_eq!(bbox.value(0).as_primitive::<Int32Type>().values().as_ref(), &[10, 13, 20, 22]);
    }

    #[test]
    fn typed_row_into_the_wrong_table_is_an_error() {
        struct R;
        impl Row for R {
            const TABLE: Table = Table::Spectra;
            fn cells(&self) -> Vec<(&'static str, Value<'_>)> {
                vec![]
            }
        }
        let e = BatchBuilder::new(Table::Traces).append_row(&R).unwrap_err().to_string();
        assert!(e.contains("spectra") && e.contains("traces"), "{e}");
    }
}
