//! Conversion of a DIALS-style reflection table (named, typed columns) to the
//! `reflections` table.
//!
//! The mapping is driven by `schemas/reflections.json`: every column with a
//! `dials` key is filled from the DIALS column of that name. A missing DIALS
//! column gives nulls (or an error if the schema column is not nullable, e.g.
//! `panel`); DIALS columns the schema does not know (shoebox, ...) are returned
//! so the caller can say they were not imported. The `.refl` reader only has to
//! implement [`ReflectionColumns`].
//!
//! Type rules (DIALS element → schema type): `int` → int32/int64/uint32
//! (negative values rejected for unsigned), `std::size_t` → uint64/uint32/int32
//! (range-checked), `double` → float64, `bool` → bool, `vec2/vec3/mat3<double>`
//! → `fixed_list<float64,2/3/9>`, `int6` → `fixed_list<int32,6>`,
//! `miller::index` → `struct<h,k,l:int32>`. Anything else is an error naming
//! both column names.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float64Array, Int32Array, Int64Array, StructArray,
    UInt32Array, UInt64Array,
};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;

use super::schema::{ColumnSpec, ColumnType, Table};
use crate::error::{Error, Result};
use crate::reflections::ReflectionTable;

/// A borrowed DIALS column (element types of formats.md §2.2).
#[derive(Clone, Copy, Debug)]
pub enum RawColumnRef<'a> {
    Bool(&'a [bool]),
    Int(&'a [i32]),
    Size(&'a [u64]),
    Double(&'a [f64]),
    Vec2(&'a [[f64; 2]]),
    Vec3(&'a [[f64; 3]]),
    Mat3(&'a [[f64; 9]]),
    Int6(&'a [[i32; 6]]),
    Miller(&'a [[i32; 3]]),
}

impl RawColumnRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            RawColumnRef::Bool(v) => v.len(),
            RawColumnRef::Int(v) => v.len(),
            RawColumnRef::Size(v) => v.len(),
            RawColumnRef::Double(v) => v.len(),
            RawColumnRef::Vec2(v) => v.len(),
            RawColumnRef::Vec3(v) => v.len(),
            RawColumnRef::Mat3(v) => v.len(),
            RawColumnRef::Int6(v) => v.len(),
            RawColumnRef::Miller(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The DIALS type name, for messages.
    pub fn dials_type(&self) -> &'static str {
        match self {
            RawColumnRef::Bool(_) => "bool",
            RawColumnRef::Int(_) => "int",
            RawColumnRef::Size(_) => "std::size_t",
            RawColumnRef::Double(_) => "double",
            RawColumnRef::Vec2(_) => "vec2<double>",
            RawColumnRef::Vec3(_) => "vec3<double>",
            RawColumnRef::Mat3(_) => "mat3<double>",
            RawColumnRef::Int6(_) => "int6",
            RawColumnRef::Miller(_) => "cctbx::miller::index<>",
        }
    }
}

/// What the importer needs from a reflection table.
pub trait ReflectionColumns {
    fn nrows(&self) -> usize;
    /// The column of this DIALS name, if present and of a supported type.
    fn column(&self, dials_name: &str) -> Option<RawColumnRef<'_>>;
    /// All column names (including unsupported ones such as `shoebox`).
    fn column_names(&self) -> Vec<String>;
}

// A DIALS reflection table is what the importer reads (shoeboxes are left out).
impl ReflectionColumns for crate::reflections::ReflectionTable {
    fn nrows(&self) -> usize {
        ReflectionTable::nrows(self)
    }
    fn column(&self, name: &str) -> Option<RawColumnRef<'_>> {
        use crate::reflections::Column;
        Some(match ReflectionTable::column(self, name).ok()? {
            Column::Bool(v) => RawColumnRef::Bool(v),
            Column::Int(v) => RawColumnRef::Int(v),
            Column::Size(v) => RawColumnRef::Size(v),
            Column::Double(v) => RawColumnRef::Double(v),
            Column::Vec2(v) => RawColumnRef::Vec2(v),
            Column::Vec3(v) => RawColumnRef::Vec3(v),
            Column::Mat3(v) => RawColumnRef::Mat3(v),
            Column::Int6(v) => RawColumnRef::Int6(v),
            Column::Miller(v) => RawColumnRef::Miller(v),
            Column::Shoebox(_) => return None,
        })
    }
    fn column_names(&self) -> Vec<String> {
        ReflectionTable::column_names(self).map(str::to_string).collect()
    }
}

/// An owned DIALS column.
#[derive(Clone, Debug, PartialEq)]
pub enum RawColumn {
    Bool(Vec<bool>),
    Int(Vec<i32>),
    Size(Vec<u64>),
    Double(Vec<f64>),
    Vec2(Vec<[f64; 2]>),
    Vec3(Vec<[f64; 3]>),
    Mat3(Vec<[f64; 9]>),
    Int6(Vec<[i32; 6]>),
    Miller(Vec<[i32; 3]>),
}

impl RawColumn {
    pub fn as_ref(&self) -> RawColumnRef<'_> {
        match self {
            RawColumn::Bool(v) => RawColumnRef::Bool(v),
            RawColumn::Int(v) => RawColumnRef::Int(v),
            RawColumn::Size(v) => RawColumnRef::Size(v),
            RawColumn::Double(v) => RawColumnRef::Double(v),
            RawColumn::Vec2(v) => RawColumnRef::Vec2(v),
            RawColumn::Vec3(v) => RawColumnRef::Vec3(v),
            RawColumn::Mat3(v) => RawColumnRef::Mat3(v),
            RawColumn::Int6(v) => RawColumnRef::Int6(v),
            RawColumn::Miller(v) => RawColumnRef::Miller(v),
        }
    }
}

/// A minimal owned reflection table (for tests and simple producers).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawTable {
    pub nrows: usize,
    pub columns: BTreeMap<String, RawColumn>,
}

impl ReflectionColumns for RawTable {
    fn nrows(&self) -> usize {
        self.nrows
    }
    fn column(&self, dials_name: &str) -> Option<RawColumnRef<'_>> {
        self.columns.get(dials_name).map(RawColumn::as_ref)
    }
    fn column_names(&self) -> Vec<String> {
        self.columns.keys().cloned().collect()
    }
}

/// The `reflections` rows of one shot: source rows `rows` (e.g. those with
/// `id == exp_idx`, in file order) become `refl_id` 0, 1, ... with
/// `source_row = rows[i]`. Returns the batch and the DIALS columns that were
/// not imported.
pub fn reflections_batch(
    shot_id: i64,
    table: &dyn ReflectionColumns,
    rows: &[usize],
) -> Result<(RecordBatch, Vec<String>)> {
    let n = table.nrows();
    if let Some(&r) = rows.iter().find(|&&r| r >= n) {
        return Err(Error::msg(format!("reflections: row {r} selected but the table has {n} rows")));
    }
    if rows.len() > i32::MAX as usize {
        return Err(Error::msg("reflections: more than 2³¹ rows in one shot"));
    }
    let schema = Table::Reflections.arrow_schema();
    let spec = Table::Reflections.schema();
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(spec.columns.len());
    for (c, f) in spec.columns.iter().zip(schema.fields()) {
        let a: ArrayRef = match c.name.as_str() {
            "shot_id" => Arc::new(Int64Array::from(vec![shot_id; rows.len()])),
            "refl_id" => Arc::new(Int32Array::from_iter_values(0..rows.len() as i32)),
            "source_row" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|&r| r as i64))),
            _ => {
                let dials = c.dials.as_deref().ok_or_else(|| {
                    Error::msg(format!("reflections: schema column `{}` has no DIALS source", c.name))
                })?;
                match table.column(dials) {
                    Some(col) => {
                        if col.len() != n {
                            return Err(Error::msg(format!(
                                "reflections: DIALS column `{dials}` has {} rows, the table {n}",
                                col.len()
                            )));
                        }
                        convert(c, dials, col, rows)?
                    }
                    None if c.nullable => arrow::array::new_null_array(f.data_type(), rows.len()),
                    None => {
                        return Err(Error::msg(format!(
                            "reflections: required DIALS column `{dials}` is missing"
                        )))
                    }
                }
            }
        };
        arrays.push(a);
    }
    let batch = RecordBatch::try_new(schema, arrays).map_err(|e| Error::msg(format!("reflections: {e}")))?;
    let used: Vec<&str> = spec.columns.iter().filter_map(|c| c.dials.as_deref()).collect();
    let ignored = table.column_names().into_iter().filter(|n| !used.contains(&n.as_str())).collect();
    Ok((batch, ignored))
}

fn convert(c: &ColumnSpec, dials: &str, col: RawColumnRef, rows: &[usize]) -> Result<ArrayRef> {
    let bad = |m: String| Error::msg(format!("reflections column `{}` (DIALS `{dials}`): {m}", c.name));
    let mismatch = || bad(format!("cannot store DIALS {} as {}", col.dials_type(), c.ty));
    fn pick<T: Copy>(v: &[T], rows: &[usize]) -> Vec<T> {
        rows.iter().map(|&r| v[r]).collect()
    }
    fn fixed<const N: usize, T: Copy>(v: &[[T; N]], rows: &[usize]) -> Vec<T> {
        rows.iter().flat_map(|&r| v[r]).collect()
    }
    fn ints<T: TryFrom<i64>, S: Copy + Into<i128>>(
        v: &[S],
        rows: &[usize],
    ) -> std::result::Result<Vec<T>, String> {
        rows.iter()
            .map(|&r| {
                let x: i128 = v[r].into();
                i64::try_from(x)
                    .ok()
                    .and_then(|y| T::try_from(y).ok())
                    .ok_or(format!("row {r}: value {x} out of range"))
            })
            .collect()
    }
    let fixed_list = |item: &ColumnType, n: usize, values: ArrayRef| -> Result<ArrayRef> {
        let field = match c.ty.to_arrow() {
            DataType::FixedSizeList(f, _) => f,
            _ => unreachable!(),
        };
        debug_assert_eq!(item.to_arrow(), *values.data_type());
        Ok(Arc::new(FixedSizeListArray::new(field, n as i32, values, None)))
    };
    Ok(match (&c.ty, col) {
        (ColumnType::Bool, RawColumnRef::Bool(v)) => Arc::new(BooleanArray::from(pick(v, rows))),
        (ColumnType::Float64, RawColumnRef::Double(v)) => Arc::new(Float64Array::from(pick(v, rows))),
        (ColumnType::Int32, RawColumnRef::Int(v)) => Arc::new(Int32Array::from(pick(v, rows))),
        (ColumnType::Int32, RawColumnRef::Size(v)) => {
            Arc::new(Int32Array::from(ints::<i32, u64>(v, rows).map_err(bad)?))
        }
        (ColumnType::Int64, RawColumnRef::Int(v)) => {
            Arc::new(Int64Array::from(ints::<i64, i32>(v, rows).map_err(bad)?))
        }
        (ColumnType::Int64, RawColumnRef::Size(v)) => {
            Arc::new(Int64Array::from(ints::<i64, u64>(v, rows).map_err(bad)?))
        }
        (ColumnType::UInt32, RawColumnRef::Size(v)) => {
            Arc::new(UInt32Array::from(ints::<u32, u64>(v, rows).map_err(bad)?))
        }
        (ColumnType::UInt32, RawColumnRef::Int(v)) => {
            Arc::new(UInt32Array::from(ints::<u32, i32>(v, rows).map_err(bad)?))
        }
        (ColumnType::UInt64, RawColumnRef::Size(v)) => Arc::new(UInt64Array::from(pick(v, rows))),
        (ColumnType::UInt64, RawColumnRef::Int(v)) => {
            Arc::new(UInt64Array::from(ints::<u64, i32>(v, rows).map_err(bad)?))
        }
        (ColumnType::FixedList(t, 2), RawColumnRef::Vec2(v)) if **t == ColumnType::Float64 => {
            fixed_list(t, 2, Arc::new(Float64Array::from(fixed(v, rows))))?
        }
        (ColumnType::FixedList(t, 3), RawColumnRef::Vec3(v)) if **t == ColumnType::Float64 => {
            fixed_list(t, 3, Arc::new(Float64Array::from(fixed(v, rows))))?
        }
        (ColumnType::FixedList(t, 9), RawColumnRef::Mat3(v)) if **t == ColumnType::Float64 => {
            fixed_list(t, 9, Arc::new(Float64Array::from(fixed(v, rows))))?
        }
        (ColumnType::FixedList(t, 6), RawColumnRef::Int6(v)) if **t == ColumnType::Int32 => {
            fixed_list(t, 6, Arc::new(Int32Array::from(fixed(v, rows))))?
        }
        (ColumnType::Struct(fields), RawColumnRef::Miller(v))
            if fields.len() == 3 && fields.iter().all(|(_, t)| *t == ColumnType::Int32) =>
        {
            let arrow_fields = match c.ty.to_arrow() {
                DataType::Struct(f) => f,
                _ => unreachable!(),
            };
            let comp = |k: usize| -> ArrayRef {
                Arc::new(Int32Array::new(
                    ScalarBuffer::from(rows.iter().map(|&r| v[r][k]).collect::<Vec<_>>()),
                    None,
                ))
            };
            Arc::new(StructArray::new(arrow_fields, vec![comp(0), comp(1), comp(2)], None))
        }
        _ => return Err(mismatch()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int32Type, UInt32Type, UInt64Type};

    fn table() -> RawTable {
        let mut t = RawTable { nrows: 3, ..Default::default() };
        let mut put = |n: &str, c: RawColumn| {
            t.columns.insert(n.to_string(), c);
        };
        put("id", RawColumn::Int(vec![0, 1, 0]));
        put("panel", RawColumn::Size(vec![3, 4, 5]));
        put("flags", RawColumn::Size(vec![32, 45, 1 << 40]));
        put("miller_index", RawColumn::Miller(vec![[1, 2, 3], [0, 0, 0], [-4, 5, -6]]));
        put("bbox", RawColumn::Int6(vec![[1, 2, 3, 4, 0, 1], [0; 6], [-5, 2, 7, 9, 0, 1]]));
        put("xyzobs.px.value", RawColumn::Vec3(vec![[1.5, 2.5, 0.5], [0.0; 3], [10.25, 20.75, 0.5]]));
        put("d", RawColumn::Double(vec![2.0, 3.0, 4.0]));
        put("shoebox", RawColumn::Double(vec![0.0; 3])); // stands in for an unsupported column
        t
    }

    #[test]
    fn selected_rows_become_one_shot_with_dials_values() {
        let t = table();
        let (b, ignored) = reflections_batch(99, &t, &[0, 2]).unwrap();
        assert_eq!(b.schema(), Table::Reflections.arrow_schema());
        assert_eq!(b.num_rows(), 2);
        assert_eq!(ignored, vec!["shoebox".to_string()]);
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        assert_eq!(col("refl_id").as_primitive::<Int32Type>().values().as_ref(), &[0, 1]);
        assert_eq!(
            col("source_row").as_primitive::<arrow::datatypes::Int64Type>().values().as_ref(),
            &[0, 2]
        );
        assert_eq!(col("panel").as_primitive::<UInt32Type>().values().as_ref(), &[3, 5]);
        assert_eq!(col("flags").as_primitive::<UInt64Type>().values().as_ref(), &[32, 1 << 40]);
        let hkl = col("miller_index");
        let hkl = hkl.as_struct();
        assert_eq!(hkl.column_by_name("l").unwrap().as_primitive::<Int32Type>().values().as_ref(), &[3, -6]);
        let xyz = col("xyzobs_px_value");
        let xyz = xyz.as_fixed_size_list();
        assert_eq!(xyz.value(1).as_primitive::<Float64Type>().values().as_ref(), &[10.25, 20.75, 0.5]);
        let bbox = col("bbox");
        assert_eq!(bbox.as_fixed_size_list().value(1).as_primitive::<Int32Type>().value(0), -5);
        assert_eq!(col("rlp").null_count(), 2, "absent DIALS column gives nulls");
    }

    #[test]
    fn type_and_range_errors_name_the_columns() {
        let mut t = table();
        t.columns.insert("panel".into(), RawColumn::Size(vec![0, 1 << 33, 0]));
        let e = reflections_batch(1, &t, &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("`panel`") && e.contains("row 1") && e.contains("out of range"), "{e}");
        // Unselected rows are not checked.
        assert!(reflections_batch(1, &t, &[0, 2]).is_ok());

        let mut t = table();
        t.columns.insert("s1".into(), RawColumn::Double(vec![0.0; 3]));
        let e = reflections_batch(1, &t, &[0]).unwrap_err().to_string();
        assert!(e.contains("`s1`") && e.contains("double"), "{e}");

        let mut t = table();
        t.columns.remove("panel");
        assert!(reflections_batch(1, &t, &[0])
            .unwrap_err()
            .to_string()
            .contains("required DIALS column `panel`"));

        let mut t = table();
        t.columns.insert("d".into(), RawColumn::Double(vec![1.0]));
        assert!(reflections_batch(1, &t, &[0]).unwrap_err().to_string().contains("has 1 rows"));
        assert!(reflections_batch(1, &table(), &[3]).is_err());
    }
}
