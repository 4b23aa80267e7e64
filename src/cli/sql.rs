//! `diffbragg sql DIR "QUERY"`: run one SQL statement over a store's views and
//! print the result as an aligned table (like DuckDB's), CSV, or write Parquet.
//!
//! The catalog file is refreshed first (a failure, e.g. a read-only DIR, is a
//! warning); the query itself runs on an in-memory DuckDB with the same views,
//! so it never waits for a user's session holding `catalog.duckdb`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use clap::{Args, ValueEnum};

use crate::error::{io_err, Error, Result};
use crate::store::atomic::write_replace;
use crate::store::{QueryResult, Store};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text with column types.
    Table,
    /// Comma-separated values with a header line (RFC 4180 quoting).
    Csv,
    /// A Parquet file (requires --out).
    Parquet,
}

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// Store directory (holds catalog.duckdb and one folder per table).
    pub dir: PathBuf,
    /// One SQL statement, e.g. "SELECT * FROM reflections_per_shot".
    pub query: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the result to this file (atomically) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rows printed in table format; 0 prints all.
    #[arg(long, default_value_t = 40)]
    pub max_rows: usize,
}

pub fn run(args: SqlArgs) -> anyhow::Result<()> {
    if args.format == Format::Parquet && args.out.is_none() {
        return Err(Error::param("--out", "--format parquet needs --out FILE").into());
    }
    let store = Store::open(&args.dir)?.with_publish(true);
    if let Err(e) = store.publish() {
        eprintln!("warning: catalog not refreshed: {e}");
    }
    let res = store.query(&args.query)?;
    match (&args.format, &args.out) {
        (Format::Parquet, Some(out)) => {
            write_replace(out, |w| crate::store::parquet::write_any(res.schema.clone(), &res.batches, w))?;
        }
        (Format::Parquet, None) => unreachable!("checked above"),
        (fmt, Some(out)) => write_replace(out, |w| render(*fmt, &res, args.max_rows, w, out))?,
        (fmt, None) => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            render(*fmt, &res, args.max_rows, &mut w, Path::new("<stdout>"))?;
            w.flush().map_err(|e| io_err("<stdout>", e))?;
        }
    }
    Ok(())
}

fn render(fmt: Format, res: &QueryResult, max_rows: usize, w: &mut dyn Write, path: &Path) -> Result<()> {
    let text = match fmt {
        Format::Table => format_table(res, max_rows)?,
        Format::Csv => format_csv(res)?,
        Format::Parquet => unreachable!(),
    };
    w.write_all(text.as_bytes()).map_err(|e| io_err(path, e))
}

/// arrow-rs (without chrono-tz) formats only fixed-offset zones; DuckDB labels
/// TIMESTAMPTZ results "UTC". The stored values are UTC instants either way,
/// so relabel any zone it cannot parse as +00:00.
fn displayable(a: &ArrayRef) -> ArrayRef {
    if let DataType::Timestamp(unit, Some(tz)) = a.data_type() {
        if tz.parse::<arrow::array::timezone::Tz>().is_err() {
            let dt = DataType::Timestamp(*unit, Some("+00:00".into()));
            if let Ok(d) = a.to_data().into_builder().data_type(dt).build() {
                return arrow::array::make_array(d);
            }
        }
    }
    a.clone()
}

/// Cells of one column as strings (`null` for nulls).
fn cells(cols: &[ArrayRef], null: &str) -> Result<Vec<Vec<String>>> {
    let opts = FormatOptions::default().with_null(null);
    cols.iter()
        .map(|a| {
            let a = displayable(a);
            let f = ArrayFormatter::try_new(a.as_ref(), &opts)
                .map_err(|e| Error::msg(format!("formatting: {e}")))?;
            Ok((0..a.len()).map(|i| f.value(i).to_string()).collect())
        })
        .collect()
}

/// DuckDB-style type label of an Arrow type.
pub fn type_label(dt: &DataType) -> String {
    match dt {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "varchar".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::List(f) | DataType::LargeList(f) => format!("{}[]", type_label(f.data_type())),
        DataType::FixedSizeList(f, n) => format!("{}[{n}]", type_label(f.data_type())),
        DataType::Struct(fs) => format!(
            "struct({})",
            fs.iter()
                .map(|f| format!("{} {}", f.name(), type_label(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string().to_lowercase(),
    }
}

fn is_numeric(dt: &DataType) -> bool {
    dt.is_numeric()
}

fn concat_columns(res: &QueryResult) -> Result<Vec<ArrayRef>> {
    (0..res.schema.fields().len())
        .map(|i| {
            let parts: Vec<&dyn Array> = res.batches.iter().map(|b| b.column(i).as_ref()).collect();
            if parts.is_empty() {
                return Ok(arrow::array::new_empty_array(res.schema.field(i).data_type()));
            }
            arrow::compute::concat(&parts).map_err(|e| Error::msg(format!("collecting the result: {e}")))
        })
        .collect()
}

const MAX_CELL: usize = 48;

fn clip(s: &str) -> String {
    let n = s.chars().count();
    if n <= MAX_CELL {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_CELL - 1).collect();
        t.push('…');
        t
    }
}

/// A box-drawn table: names, types, rows (at most `max_rows`, 0 = all), then a count line.
#[allow(clippy::needless_range_loop)] // cells are stored by column, printed by row
pub fn format_table(res: &QueryResult, max_rows: usize) -> Result<String> {
    let total = res.num_rows();
    let shown = if max_rows == 0 { total } else { total.min(max_rows) };
    let cols: Vec<ArrayRef> = concat_columns(res)?.into_iter().map(|a| a.slice(0, shown)).collect();
    let body = cells(&cols, "NULL")?;
    let fields = res.schema.fields();
    let names: Vec<String> = fields.iter().map(|f| clip(f.name())).collect();
    let types: Vec<String> = fields.iter().map(|f| clip(&type_label(f.data_type()))).collect();
    let body: Vec<Vec<String>> = body.into_iter().map(|c| c.iter().map(|s| clip(s)).collect()).collect();
    let width = |j: usize| {
        let w = names[j].chars().count().max(types[j].chars().count());
        body[j].iter().map(|s| s.chars().count()).fold(w, usize::max)
    };
    let widths: Vec<usize> = (0..fields.len()).map(width).collect();
    let line = |l: &str, m: &str, r: &str| -> String {
        let segs: Vec<String> = widths.iter().map(|w| "─".repeat(w + 2)).collect();
        format!("{l}{}{r}\n", segs.join(m))
    };
    let pad = |s: &str, w: usize, how: char| -> String {
        let n = s.chars().count();
        let extra = w.saturating_sub(n);
        match how {
            'r' => format!("{}{s}", " ".repeat(extra)),
            'c' => format!("{}{s}{}", " ".repeat(extra / 2), " ".repeat(extra - extra / 2)),
            _ => format!("{s}{}", " ".repeat(extra)),
        }
    };
    let row = |vals: Vec<String>| -> String {
        let segs: Vec<String> = vals.iter().map(|v| format!(" {v} ")).collect();
        format!("│{}│\n", segs.join("│"))
    };
    let mut out = String::new();
    if fields.is_empty() {
        out.push_str(&format!("(no columns) {total} rows\n"));
        return Ok(out);
    }
    out.push_str(&line("┌", "┬", "┐"));
    out.push_str(&row((0..fields.len()).map(|j| pad(&names[j], widths[j], 'c')).collect()));
    out.push_str(&row((0..fields.len()).map(|j| pad(&types[j], widths[j], 'c')).collect()));
    out.push_str(&line("├", "┼", "┤"));
    for i in 0..shown {
        out.push_str(&row((0..fields.len())
            .map(|j| pad(&body[j][i], widths[j], if is_numeric(fields[j].data_type()) { 'r' } else { 'l' }))
            .collect()));
    }
    out.push_str(&line("└", "┴", "┘"));
    let plural = if total == 1 { "row" } else { "rows" };
    if shown < total {
        out.push_str(&format!("{total} {plural} ({shown} shown; --max-rows 0 prints all)\n"));
    } else {
        out.push_str(&format!("{total} {plural}\n"));
    }
    Ok(out)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV with a header; nulls are empty fields; lists and structs as text.
pub fn format_csv(res: &QueryResult) -> Result<String> {
    let mut out = String::new();
    let names: Vec<String> = res.schema.fields().iter().map(|f| csv_field(f.name())).collect();
    out.push_str(&names.join(","));
    out.push('\n');
    for b in &res.batches {
        let cols: Vec<ArrayRef> = b.columns().iter().map(Arc::clone).collect();
        let body = cells(&cols, "")?;
        for i in 0..b.num_rows() {
            let row: Vec<String> = body.iter().map(|c| csv_field(&c[i])).collect();
            out.push_str(&row.join(","));
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;

    fn result() -> QueryResult {
        let schema = Arc::new(Schema::new(vec![
            Field::new("shot_id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(12345), None])),
                Arc::new(StringArray::from(vec![Some("a,b"), Some("say \"hi\""), None])),
                Arc::new(Float64Array::from(vec![0.5, -2.0, 1e-3])),
            ],
        )
        .unwrap();
        QueryResult { schema, batches: vec![b] }
    }

    #[test]
    fn table_is_aligned_and_counts_rows() {
        let t = format_table(&result(), 2).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        // Every box line has the same display width.
        let w = lines[0].chars().count();
        assert!(lines[..lines.len() - 1].iter().all(|l| l.chars().count() == w), "{t}");
        assert!(
            lines[1].contains("shot_id") && lines[2].contains("int64") && lines[2].contains("varchar"),
            "{t}"
        );
        // Numbers right-aligned under their header.
        assert!(lines[4].starts_with("│       1 │"), "{t}");
        assert_eq!(*lines.last().unwrap(), "3 rows (2 shown; --max-rows 0 prints all)");
        assert!(format_table(&result(), 0).unwrap().contains("NULL"));
    }

    #[test]
    fn csv_quotes_and_nulls() {
        let c = format_csv(&result()).unwrap();
        assert_eq!(c, "shot_id,name,x\n1,\"a,b\",0.5\n12345,\"say \"\"hi\"\"\",-2.0\n,,0.001\n");
    }
}
