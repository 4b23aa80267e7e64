//! Integration tests of the table store: real DIALS reflections through the
//! store and back out through pyarrow and DuckDB, several tables and ranks,
//! empty tables, atomicity, version refusal, and a mutation fuzz of the readers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, UInt64Type};
use chrono::{TimeZone, Utc};
use diffbragg::store::catalog::{self, CATALOG_FILE};
use diffbragg::store::shot_id::shot_id;
use diffbragg::store::{
    reflections_batch, BatchBuilder, ColumnType, ExperimentRow, FailureRow, RawColumn, RawTable, SpectrumRow,
    Store, Table, TraceRow, Value,
};
use diffbragg::testutil::shared;

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("running python3");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Decode a DIALS msgpack `.refl` in Python (independently of any Rust reader)
/// into raw little-endian column files plus a manifest, then load them.
const DECODE_REFL: &str = r#"
import msgpack, numpy as np, json, sys, os
src, out = sys.argv[1], sys.argv[2]
o = msgpack.unpackb(open(src, 'rb').read(), raw=False, strict_map_key=False)
assert o[0] == 'dials::af::reflection_table'
hdr = o[2]
sizes = {'int': 4, 'std::size_t': 8, 'double': 8, 'bool': 1, 'vec2<double>': 16, 'vec3<double>': 24,
         'mat3<double>': 72, 'int6': 24, 'cctbx::miller::index<>': 12}
man = {'nrows': hdr['nrows'], 'columns': {}}
for i, (name, (t, (n, blob))) in enumerate(sorted(hdr['data'].items())):
    if t not in sizes:
        man['columns'][name] = {'type': t}
        continue
    assert len(blob) == n * sizes[t]
    p = os.path.join(out, 'col%d.bin' % i)
    open(p, 'wb').write(blob)
    man['columns'][name] = {'type': t, 'file': p}
json.dump(man, open(os.path.join(out, 'manifest.json'), 'w'))
"#;

fn load_refl(path: &Path, work: &Path) -> RawTable {
    python(DECODE_REFL, &[path.to_str().unwrap(), work.to_str().unwrap()]);
    let man: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("manifest.json")).unwrap()).unwrap();
    let mut t = RawTable { nrows: man["nrows"].as_u64().unwrap() as usize, ..Default::default() };
    fn chunks<const N: usize, T: Copy + Default>(v: Vec<T>) -> Vec<[T; N]> {
        v.chunks_exact(N).map(|c| std::array::from_fn(|i| c[i])).collect()
    }
    for (name, c) in man["columns"].as_object().unwrap() {
        let Some(file) = c["file"].as_str() else { continue };
        let b = std::fs::read(file).unwrap();
        let f64s =
            || b.chunks_exact(8).map(|x| f64::from_le_bytes(x.try_into().unwrap())).collect::<Vec<_>>();
        let i32s =
            || b.chunks_exact(4).map(|x| i32::from_le_bytes(x.try_into().unwrap())).collect::<Vec<_>>();
        let col = match c["type"].as_str().unwrap() {
            "int" => RawColumn::Int(i32s()),
            "std::size_t" => RawColumn::Size(
                b.chunks_exact(8).map(|x| u64::from_le_bytes(x.try_into().unwrap())).collect(),
            ),
            "double" => RawColumn::Double(f64s()),
            "bool" => RawColumn::Bool(b.iter().map(|&x| x != 0).collect()),
            "vec2<double>" => RawColumn::Vec2(chunks(f64s())),
            "vec3<double>" => RawColumn::Vec3(chunks(f64s())),
            "mat3<double>" => RawColumn::Mat3(chunks(f64s())),
            "int6" => RawColumn::Int6(chunks(i32s())),
            "cctbx::miller::index<>" => RawColumn::Miller(chunks(i32s())),
            other => panic!("unexpected type {other}"),
        };
        t.columns.insert(name.clone(), col);
    }
    t
}

fn indexed_refl() -> PathBuf {
    shared("fixtures/dials_data_files/ssx_CuNiR/indexed.refl")
}

fn indexed_expt() -> PathBuf {
    shared("fixtures/dials_data_files/ssx_CuNiR/indexed.expt")
}

fn experiment_row(shot_id: i64, exp_name: &Path, exp_idx: usize) -> ExperimentRow {
    use diffbragg::conventions::Vec3;
    use diffbragg::crystal::{Crystal, UnitCell};
    use diffbragg::geometry::{Beam, Detector, Panel};
    let beam = Beam { wavelength: 1.0 + exp_idx as f64 * 0.01, ..Default::default() };
    let p = Panel { origin: Vec3::new(-10.0, 10.0, -100.0), image_size: [100, 80], ..Default::default() };
    let det = Detector { panels: vec![p], hierarchy: None };
    let xtal = Crystal::from_u_and_cell(
        &nalgebra::Matrix3::identity(),
        &UnitCell::new(97.0, 97.0, 97.0, 90.0, 90.0, 90.0),
        " P 2ac 2ab 3",
    );
    let mut r = ExperimentRow::from_models(shot_id, exp_name, exp_idx, &beam, &det, &xtal).unwrap();
    r.identifier = Some(format!("uuid-{exp_idx}"));
    r.image_file = Some("/data/images.h5".into());
    r.image_index = Some(exp_idx as i64);
    r
}

/// A store with the fixture's reflections split by experiment over two ranks,
/// plus experiments, spectra, traces and failures. Returns the per-shot row counts.
fn populate(dir: &Path) -> BTreeMap<i64, usize> {
    let work = tempfile::tempdir().unwrap();
    let refl = load_refl(&indexed_refl(), work.path());
    let ids = match &refl.columns["id"] {
        RawColumn::Int(v) => v.clone(),
        _ => panic!(),
    };
    let mut r0 = Store::create(dir, 0, true).unwrap();
    let mut r1 = Store::create(dir, 1, false).unwrap();
    let mut counts = BTreeMap::new();
    for exp_idx in 0..5usize {
        let (sid, canon) = shot_id(&indexed_expt(), exp_idx).unwrap();
        let rows: Vec<usize> = (0..refl.nrows).filter(|&r| ids[r] == exp_idx as i32).collect();
        counts.insert(sid, rows.len());
        let (batch, ignored) = reflections_batch(sid, &refl, &rows).unwrap();
        // Columns the schema does not know are reported (the Python decoder
        // already leaves out the shoebox, which RawTable cannot hold).
        assert_eq!(ignored, ["delpsical2", "x_resid", "x_resid2", "y_resid", "y_resid2"]);
        // Shots 0–2 on rank 0 (one shard each), 3–4 on rank 1.
        let store = if exp_idx < 3 { &mut r0 } else { &mut r1 };
        store.append(Table::Reflections, &[batch]).unwrap().unwrap();

        let mut b = BatchBuilder::new(Table::Experiments);
        b.append_row(&experiment_row(sid, &canon, exp_idx)).unwrap();
        store.append_builder(&mut b).unwrap();

        let spec =
            diffbragg::spectrum::Spectrum::new(vec![1.30, 1.31, 1.32], vec![1.0, 2.0 + exp_idx as f64, 1.0]);
        let mut b = BatchBuilder::new(Table::Spectra);
        for row in SpectrumRow::from_spectrum(sid, &spec).unwrap() {
            b.append_row(&row).unwrap();
        }
        store.append_builder(&mut b).unwrap();

        let mut b = BatchBuilder::new(Table::Traces);
        for e in 0..=exp_idx as i32 {
            let t = TraceRow {
                shot_id: Some(sid),
                stage: "stage1".into(),
                eval: e,
                f: 100.0 - e as f64,
                sigz: Some(1.0),
                grad_norm: None,
                time: 0.1 * e as f64,
            };
            b.append_row(&t).unwrap();
        }
        store.append_builder(&mut b).unwrap();
    }
    // Failures: two reasons, written by rank 1 after rank 0's last catalog refresh.
    let mut b = BatchBuilder::new(Table::Failures);
    let t0 = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap();
    for (i, reason) in ["no_rois", "no_rois", "not_converged"].iter().enumerate() {
        let mut f = FailureRow::now(1000 + i as i64, "stage1", reason, format!("shot {i}: {reason}"));
        f.time = t0;
        f.exp_idx = Some(i as i32);
        b.append_row(&f).unwrap();
    }
    r1.append_builder(&mut b).unwrap();
    counts
}

#[test]
fn real_reflections_round_trip_through_parquet_pyarrow_and_duckdb() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let counts = populate(&dir);
    let store = Store::open(&dir).unwrap();

    // Shards: one per append, named by rank and part.
    let shards = store.shards(Table::Reflections).unwrap();
    let names: Vec<String> =
        shards.iter().map(|(_, _, p)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        [
            "rank0-00000.parquet",
            "rank0-00001.parquet",
            "rank0-00002.parquet",
            "rank1-00000.parquet",
            "rank1-00001.parquet"
        ]
    );

    // Resumable reruns: the shot ids present.
    let ids: BTreeSet<i64> = counts.keys().copied().collect();
    assert_eq!(store.shot_ids(Table::Reflections).unwrap(), ids);
    assert_eq!(store.shot_ids(Table::Experiments).unwrap(), ids);
    assert!(store.shot_ids(Table::Fhkl).is_err());

    // Filtered read through the parquet crate.
    let one = *ids.iter().next().unwrap();
    let batches = store.read(Table::Reflections, Some(&BTreeSet::from([one]))).unwrap();
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, counts[&one]);
    for b in &batches {
        assert_eq!(b.schema(), Table::Reflections.arrow_schema());
        assert!(b
            .column_by_name("shot_id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .iter()
            .all(|x| x == Some(one)));
    }

    // pyarrow reads every shard, checks types and metadata, and compares the
    // values with its own msgpack decode of the fixture.
    let check = r#"
import sys, glob, os, msgpack, numpy as np, pyarrow as pa, pyarrow.parquet as pq
store, src = sys.argv[1], sys.argv[2]
o = msgpack.unpackb(open(src, 'rb').read(), raw=False, strict_map_key=False)
data = o[2]['data']
def col(name, dt, k):
    t, (n, blob) = data[name]
    a = np.frombuffer(blob, dtype=dt)
    return a.reshape(n, k) if k > 1 else a
files = sorted(f for f in glob.glob(os.path.join(store, 'reflections', 'rank*.parquet')))
tab = pa.concat_tables([pq.read_table(f) for f in files])
s = tab.schema
assert s.field('flags').type == pa.uint64(), s.field('flags').type
assert s.field('panel').type == pa.uint32()
assert s.field('miller_index').type == pa.struct([pa.field('h', pa.int32(), False), pa.field('k', pa.int32(), False), pa.field('l', pa.int32(), False)]), s.field('miller_index').type
assert pa.types.is_fixed_size_list(s.field('bbox').type) and s.field('bbox').type.list_size == 6 and s.field('bbox').type.value_type == pa.int32()
for c in ['xyzobs_px_value', 's1', 'rlp', 'xyzcal_mm']:
    t = s.field(c).type
    assert pa.types.is_fixed_size_list(t) and t.list_size == 3 and t.value_type == pa.float64(), (c, t)
assert s.field('xyzobs_px_value').metadata[b'unit'] == b'px'
for f in files:
    md = pq.read_metadata(f).metadata
    assert md[b'diffbragg.table'] == b'reflections' and md[b'diffbragg.schema_version'] == b'1', md
    assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == 'ZSTD'
rows = tab.column('source_row').to_numpy()
assert sorted(rows.tolist()) == list(range(o[2]['nrows']))
def same(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.array_equal(a, b, equal_nan=True)
same(tab.column('flags').to_numpy(), col('flags', '<u8', 1)[rows])
same(tab.column('panel').to_numpy().astype('u8'), col('panel', '<u8', 1)[rows])
same(tab.column('id').to_numpy(), col('id', '<i4', 1)[rows])
hkl = tab.column('miller_index').combine_chunks()
same(np.stack([hkl.field(x).to_numpy() for x in 'hkl'], 1), col('miller_index', '<i4', 3)[rows])
def fixed(name, k):
    a = tab.column(name).combine_chunks()
    return a.flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
same(fixed('bbox', 6), col('bbox', '<i4', 6)[rows])
for ours, theirs in [('xyzobs_px_value', 'xyzobs.px.value'), ('xyzcal_px', 'xyzcal.px'), ('s1', 's1'), ('rlp', 'rlp'), ('xyzobs_mm_variance', 'xyzobs.mm.variance')]:
    same(fixed(ours, 3), col(theirs, '<f8', 3)[rows])
same(tab.column('delpsical_rad').to_numpy(), col('delpsical.rad', '<f8', 1)[rows])
same(tab.column('entering').to_numpy(zero_copy_only=False), col('entering', 'u1', 1)[rows].astype(bool))
assert tab.column('d').null_count == len(tab)
# refl_id counts 0.. within each shot, in source order.
sid = tab.column('shot_id').to_numpy(); rid = tab.column('refl_id').to_numpy()
for s_ in np.unique(sid):
    m = sid == s_
    assert list(rid[m]) == list(range(m.sum()))
    assert list(rows[m]) == sorted(rows[m])
# The other tables.
def table(name):
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(os.path.join(store, name, 'rank*.parquet')))])
f = table('failures')
assert f.schema.field('time').type == pa.timestamp('us', tz='+00:00'), f.schema.field('time').type
assert str(f.column('time')[0].as_py()) == '2024-05-06 07:08:09+00:00', f.column('time')[0].as_py()
sp = table('spectra')
e = sp.column('energy').to_numpy(); w = sp.column('wavelength').to_numpy()
assert np.allclose(e * w, 12398.419843320026, rtol=1e-14, atol=0)
ex = table('experiments')
assert ex.schema.field('a_matrix').type.list_size == 9
print('OK', len(tab))
"#;
    let out = python(check, &[dir.to_str().unwrap(), indexed_refl().to_str().unwrap()]);
    assert_eq!(out.trim(), "OK 360");

    // DuckDB, through the catalog file written by rank 0 (rank 1 wrote after it).
    let conn = catalog::open_catalog(store.root()).unwrap();
    let q = |sql: &str| catalog::query(&conn, sql).unwrap();
    let scalar_i64 = |sql: &str| -> i64 {
        let r = q(sql);
        let a = arrow::compute::cast(r.batches[0].column(0), &DataType::Int64).unwrap();
        a.as_primitive::<Int64Type>().value(0)
    };
    assert_eq!(scalar_i64("SELECT count(*) FROM reflections"), 360);
    assert_eq!(scalar_i64("SELECT count(*) FROM experiments"), 5);
    assert_eq!(
        scalar_i64("SELECT count(*) FROM failures"),
        3,
        "rank 1's later shard is seen without a refresh"
    );
    // A join: per-shot counts from the view equal the fixture's per-id counts.
    let r = q("SELECT e.shot_id, r.n_refl, e.exp_idx FROM experiments e JOIN reflections_per_shot r USING (shot_id) ORDER BY e.exp_idx");
    let b = arrow::compute::concat_batches(&r.schema, &r.batches).unwrap();
    assert_eq!(b.num_rows(), 5);
    for i in 0..5 {
        let sid = b.column(0).as_primitive::<Int64Type>().value(i);
        let n =
            arrow::compute::cast(b.column(1), &DataType::Int64).unwrap().as_primitive::<Int64Type>().value(i);
        assert_eq!(n as usize, counts[&sid]);
    }
    // Strong/indexed flag counts agree with a direct computation on the fixture flags.
    let work = tempfile::tempdir().unwrap();
    let refl = load_refl(&indexed_refl(), work.path());
    let RawColumn::Size(flags) = &refl.columns["flags"] else { panic!() };
    let n_indexed = flags.iter().filter(|&&f| f & 4 != 0).count() as i64;
    assert_eq!(scalar_i64("SELECT sum(n_indexed) FROM reflections_per_shot"), n_indexed);
    // Lists index from 1 in DuckDB.
    let x = q("SELECT xyzobs_px_value[1] FROM reflections WHERE source_row = 0");
    let RawColumn::Vec3(xyz) = &refl.columns["xyzobs.px.value"] else { panic!() };
    assert_eq!(x.batches[0].column(0).as_primitive::<arrow::datatypes::Float64Type>().value(0), xyz[0][0]);
    let f = q("SELECT reason, n_failures FROM failures_by_reason");
    let b = arrow::compute::concat_batches(&f.schema, &f.batches).unwrap();
    assert_eq!(b.column(0).as_string::<i32>().value(0), "no_rois");
    assert_eq!(
        arrow::compute::cast(b.column(1), &DataType::Int64).unwrap().as_primitive::<Int64Type>().value(0),
        2
    );
    let s = q("SELECT n_refl, n_channels, n_failures FROM shot_summary");
    assert_eq!(s.num_rows(), 5);
    assert_eq!(scalar_i64("SELECT count(*) FROM shot_id_collisions"), 0);
    // flags keep their unsigned 64-bit type.
    let t = q("SELECT flags FROM reflections LIMIT 1");
    assert_eq!(t.schema.field(0).data_type(), &DataType::UInt64);
    let _ = t.batches[0].column(0).as_primitive::<UInt64Type>();
}

/// A loose description of an Arrow type: Parquet turns fixed-size lists into
/// lists and DuckDB labels UTC zones its own way.
fn kind(dt: &DataType) -> String {
    match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            format!("list<{}>", kind(f.data_type()))
        }
        DataType::Struct(fs) => format!(
            "struct<{}>",
            fs.iter().map(|f| format!("{}:{}", f.name(), kind(f.data_type()))).collect::<Vec<_>>().join(",")
        ),
        DataType::Timestamp(u, tz) => format!("timestamp<{u:?},{}>", tz.is_some()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "utf8".into(),
        other => other.to_string(),
    }
}

#[test]
fn empty_tables_and_views_return_zero_typed_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(&tmp.path().join("s"), 0, true).unwrap();
    assert!(store.root().join(CATALOG_FILE).is_file());
    let conn = catalog::open_catalog(store.root()).unwrap();
    for t in Table::ALL {
        let r = catalog::query(&conn, &format!("SELECT * FROM {}", t.name())).unwrap();
        assert_eq!(r.num_rows(), 0, "{t}");
        let want = t.arrow_schema();
        assert_eq!(r.schema.fields().len(), want.fields().len(), "{t}");
        for (g, w) in r.schema.fields().iter().zip(want.fields()) {
            assert_eq!(g.name(), w.name(), "{t}");
            assert_eq!(kind(g.data_type()), kind(w.data_type()), "{t}.{}", w.name());
        }
        assert!(store.read(t, None).unwrap().is_empty());
    }
    // The shipped views work on an empty store too, with typed columns.
    for v in [
        "reflections_per_shot",
        "spectra_per_shot",
        "failures_by_reason",
        "shot_id_collisions",
        "shot_summary",
    ] {
        let r = catalog::query(&conn, &format!("SELECT * FROM {v}")).unwrap();
        assert_eq!(r.num_rows(), 0, "{v}");
        assert!(r.schema.fields().iter().all(|f| f.data_type() != &DataType::Null), "{v}: {:?}", r.schema);
    }
    // The typed empty SELECT keeps DuckDB's types: shot_id is BIGINT, flags UBIGINT.
    let r = catalog::query(&conn, "SELECT shot_id, flags, miller_index FROM reflections").unwrap();
    assert_eq!(r.schema.field(0).data_type(), &DataType::Int64);
    assert_eq!(r.schema.field(1).data_type(), &DataType::UInt64);
    assert!(matches!(r.schema.field(2).data_type(), DataType::Struct(_)));
}

#[test]
fn typed_empty_select_matches_what_duckdb_reads_from_the_schema_files() {
    // The fallback view (no _schema.parquet) and the Parquet view must agree on
    // every column's DuckDB type, or a store would change types when the file appears.
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(&tmp.path().join("s"), 0, false).unwrap();
    let conn = duckdb::Connection::open_in_memory().unwrap();
    let describe = |sql: &str| -> Vec<(String, String)> {
        let mut st = conn.prepare(&format!("DESCRIBE {sql}")).unwrap();
        st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .unwrap()
            .map(|x| x.unwrap())
            .collect()
    };
    for t in Table::ALL {
        let from_file = describe(&format!(
            "SELECT * FROM read_parquet('{}/*.parquet', union_by_name = true, hive_partitioning = false)",
            store.table_dir(t).display()
        ));
        let typed = describe(&catalog::typed_empty_select(t));
        assert_eq!(from_file, typed, "{t}");
    }
    // And the catalog falls back to it when a schema file is missing and cannot be restored.
    std::fs::remove_file(store.table_dir(Table::Fhkl).join(catalog::SCHEMA_FILE)).unwrap();
    let conn = catalog::connect_in_memory(store.root()).unwrap();
    let r = catalog::query(&conn, "SELECT * FROM fhkl").unwrap();
    assert_eq!((r.num_rows(), r.schema.fields().len()), (0, Table::Fhkl.schema().columns.len()));
}

#[test]
fn temporary_files_from_a_crash_are_invisible() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::create(&tmp.path().join("s"), 0, true).unwrap();
    let mut b = BatchBuilder::new(Table::Traces);
    for e in 0..4 {
        b.append(&[
            ("shot_id", 5i64.into()),
            ("stage", "stage1".into()),
            ("eval", e.into()),
            ("f", 1.0.into()),
            ("time", 0.0.into()),
        ])
        .unwrap();
    }
    let batch = b.finish().unwrap();
    let first = store.append(Table::Traces, std::slice::from_ref(&batch)).unwrap().unwrap();
    // A crash between the tmp write and the rename: a half-written file under
    // the tmp name (a real Parquet prefix) and a garbage one.
    let dir = store.table_dir(Table::Traces);
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(dir.join("rank0-00001.parquet.tmp-424242"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(dir.join("rank0-00002.parquet.tmp-7"), b"garbage").unwrap();
    let conn = catalog::open_catalog(store.root()).unwrap();
    let r = catalog::query(&conn, "SELECT count(*) FROM traces").unwrap();
    assert_eq!(
        arrow::compute::cast(r.batches[0].column(0), &DataType::Int64)
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        4
    );
    assert_eq!(store.shards(Table::Traces).unwrap().len(), 1);
    assert_eq!(store.read(Table::Traces, None).unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 4);
    // The next append is not disturbed and takes the next part.
    let p = store.append(Table::Traces, &[batch]).unwrap().unwrap();
    assert!(p.ends_with("rank0-00001.parquet"), "{p:?}");
    // Through the query API as well (in-memory DuckDB with the same views).
    let r = store.query("SELECT count(*) AS n FROM traces").unwrap();
    assert_eq!(
        arrow::compute::cast(r.batches[0].column(0), &DataType::Int64)
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        8
    );
}

#[test]
fn part_numbers_continue_after_reopen_and_never_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let mut b = BatchBuilder::new(Table::Failures);
    let row = FailureRow::now(1, "import", "bad_input", "x");
    b.append_row(&row).unwrap();
    let batch = b.finish().unwrap();
    let mut s = Store::create(&dir, 2, false).unwrap();
    s.append(Table::Failures, std::slice::from_ref(&batch)).unwrap();
    drop(s);
    let mut s = Store::create(&dir, 2, false).unwrap();
    let p = s.append(Table::Failures, std::slice::from_ref(&batch)).unwrap().unwrap();
    assert!(p.ends_with("rank2-00001.parquet"));
    // A file that appeared behind the writer's back is skipped, not replaced.
    std::fs::copy(&p, dir.join("failures/rank2-00002.parquet")).unwrap();
    let q = s.append(Table::Failures, &[batch]).unwrap().unwrap();
    assert!(q.ends_with("rank2-00003.parquet"), "{q:?}");
    // No rows: no file.
    let empty = BatchBuilder::new(Table::Failures).finish().unwrap();
    assert!(s.append(Table::Failures, &[empty]).unwrap().is_none());
    // A batch with another table's schema is refused, naming the table.
    let traces = BatchBuilder::new(Table::Traces).finish().unwrap();
    let e = s.append(Table::Failures, &[traces]).unwrap_err().to_string();
    assert!(e.contains("failures") && e.contains("schema"), "{e}");
}

#[test]
fn newer_schema_versions_are_refused_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let store = Store::create(&dir, 0, false).unwrap();
    // pyarrow writes a traces shard claiming schema version 99.
    let f = dir.join("traces/rank0-00000.parquet");
    python(
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n\
         t = pa.table({'shot_id': pa.array([1], pa.int64()), 'stage': ['s'], 'eval': pa.array([0], pa.int32()), 'f': [1.0], 'time': [0.0]})\n\
         t = t.replace_schema_metadata({'diffbragg.table': 'traces', 'diffbragg.schema_version': '99'})\n\
         pq.write_table(t, sys.argv[1], compression='zstd')",
        &[f.to_str().unwrap()],
    );
    let e = store.read(Table::Traces, None).unwrap_err().to_string();
    assert!(e.contains("rank0-00000.parquet") && e.contains("version 99"), "{e}");
    // Same file as version 1 (older writer, fewer columns): read, missing columns null.
    python(
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n\
         t = pa.table({'shot_id': pa.array([1, 2], pa.int64()), 'stage': ['s', 's'], 'eval': pa.array([0, 1], pa.int32()), 'f': [1.0, 2.0], 'time': [0.0, 1.0]})\n\
         t = t.replace_schema_metadata({'diffbragg.table': 'traces', 'diffbragg.schema_version': '1'})\n\
         pq.write_table(t, sys.argv[1], compression='zstd')",
        &[f.to_str().unwrap()],
    );
    let b = store.read(Table::Traces, None).unwrap();
    assert_eq!(b[0].num_rows(), 2);
    assert_eq!(b[0].column_by_name("sigz").unwrap().null_count(), 2);
    assert_eq!(store.shot_ids(Table::Traces).unwrap(), BTreeSet::from([1, 2]));
    // A file with no diffbragg metadata is refused.
    python(
        "import sys, pyarrow as pa, pyarrow.parquet as pq\npq.write_table(pa.table({'shot_id': pa.array([1], pa.int64())}), sys.argv[1], compression='zstd')",
        &[f.to_str().unwrap()],
    );
    assert!(store.read(Table::Traces, None).unwrap_err().to_string().contains("not written by diffbragg"));
    // A schema file from a newer program makes create refuse the store.
    let sf = dir.join("traces/_schema.parquet");
    python(
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n\
         t = pa.table({'shot_id': pa.array([], pa.int64())}).replace_schema_metadata({'diffbragg.table': 'traces', 'diffbragg.schema_version': '5'})\n\
         pq.write_table(t, sys.argv[1], compression='zstd')",
        &[sf.to_str().unwrap()],
    );
    let e = Store::create(&dir, 0, false).unwrap_err().to_string();
    assert!(e.contains("_schema.parquet") && e.contains("newer"), "{e}");
}

#[test]
fn pixels_cost_at_most_12_bytes_per_pixel_in_memory() {
    let mut b = BatchBuilder::new(Table::Pixels);
    let (n_roi, side) = (500usize, 12usize);
    let npix = side * side;
    let data: Vec<f32> = (0..npix).map(|i| i as f32 * 0.5).collect();
    let bg = vec![1.25f32; npix];
    let trusted = vec![1u8; npix];
    for roi in 0..n_roi {
        b.append(&[
            ("shot_id", 77i64.into()),
            ("roi_id", (roi as i32).into()),
            ("panel", 3u32.into()),
            ("bbox", [0, side as i32, 0, side as i32].into()),
            ("hkl", [1, 2, roi as i32].into()),
            ("sigma_readout", 3.0f32.into()),
            ("data", Value::from(&data[..])),
            ("background", Value::from(&bg[..])),
            ("trusted", Value::from(&trusted[..])),
        ])
        .unwrap();
    }
    let batch = b.finish().unwrap();
    let total_px = n_roi * npix;
    let per_px = batch.get_array_memory_size() as f64 / total_px as f64;
    eprintln!("pixels: {per_px:.3} bytes per pixel in memory");
    assert!(per_px <= 12.0, "{per_px} bytes per pixel");
    assert!(per_px >= 9.0, "f32 + f32 + u8 cannot take less than 9 bytes: {per_px}");
    // And it round-trips through a shard.
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Store::create(tmp.path(), 0, false).unwrap();
    s.append(Table::Pixels, std::slice::from_ref(&batch)).unwrap();
    let back = s.read(Table::Pixels, None).unwrap();
    let back = arrow::compute::concat_batches(&back[0].schema(), &back).unwrap();
    assert_eq!(back, batch);
}

#[test]
fn schema_type_strings_cover_every_column() {
    // Each schema column type is one of the documented forms and every list/struct
    // holds numbers, so the builder can fill every table.
    for t in Table::ALL {
        for c in &t.schema().columns {
            match &c.ty {
                ColumnType::List(i) | ColumnType::FixedList(i, _) => assert!(i.is_leaf_numeric()),
                ColumnType::Struct(f) => assert!(f.iter().all(|(_, x)| x.is_leaf_numeric())),
                _ => {}
            }
        }
    }
}

#[test]
fn mutated_shards_and_schema_texts_never_panic() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let mut s = Store::create(&dir, 0, false).unwrap();
    let mut b = BatchBuilder::new(Table::Pixels);
    for roi in 0..20 {
        b.append(&[
            ("shot_id", 1i64.into()),
            ("roi_id", roi.into()),
            ("panel", 0u32.into()),
            ("bbox", [0, 3, 0, 2].into()),
            ("sigma_readout", 1.0f32.into()),
            ("data", vec![1.0f32, 2.0, 3.0, 4.0, 5.0, roi as f32].into()),
            ("background", vec![0.5f32; 6].into()),
            ("trusted", vec![1u8; 6].into()),
            ("hkl", [roi, 1, 2].into()),
        ])
        .unwrap();
    }
    let path = s.append_builder(&mut b).unwrap().unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let target = tmp.path().join("mut.parquet");
    let (mut ok, mut err) = (0, 0);
    for i in 0..300 {
        let mut bytes = good.clone();
        if i % 3 == 0 {
            let n = rng.random_range(0..bytes.len());
            bytes.truncate(n);
        } else {
            for _ in 0..rng.random_range(1..8) {
                let k = rng.random_range(0..bytes.len());
                bytes[k] ^= 1 << rng.random_range(0..8);
            }
        }
        std::fs::write(&target, &bytes).unwrap();
        let r = std::panic::catch_unwind(|| {
            diffbragg::store::parquet::read_shard(Table::Pixels, &target, None, None)
        });
        match r {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                assert!(e.to_string().contains("mut.parquet"), "{e}");
                err += 1
            }
            Err(_) => panic!("reader panicked on mutation {i}"),
        }
    }
    eprintln!("mutations: {ok} read, {err} rejected");
    assert!(err > 0, "mutations must be detected sometimes ({ok} ok)");
    for t in Table::ALL {
        let (_, text) = t.schema_source();
        for _ in 0..100 {
            let mut bytes = text.as_bytes().to_vec();
            let k = rng.random_range(0..bytes.len());
            if rng.random_bool(0.5) {
                bytes.truncate(k);
            } else {
                bytes[k] = rng.random_range(0x20..0x7f);
            }
            let text = String::from_utf8_lossy(&bytes);
            let r = std::panic::catch_unwind(|| {
                diffbragg::store::TableSchema::from_json("m.json", &text).map(|_| ())
            });
            assert!(r.is_ok(), "schema parser panicked");
        }
    }
}

#[test]
fn concurrent_writers_of_one_rank_never_clobber_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    Store::create(&dir, 0, true).unwrap();
    std::thread::scope(|sc| {
        for w in 0..4i64 {
            let dir = dir.clone();
            sc.spawn(move || {
                // Same rank on purpose: part numbers collide and must be skipped.
                let mut s = Store::create(&dir, 0, w == 0).unwrap();
                for k in 0..10i64 {
                    let mut b = BatchBuilder::new(Table::Failures);
                    b.append_row(&FailureRow::now(w * 100 + k, "stage1", "x", "y")).unwrap();
                    s.append_builder(&mut b).unwrap().unwrap();
                }
            });
        }
    });
    let s = Store::open(&dir).unwrap();
    assert_eq!(s.shards(Table::Failures).unwrap().len(), 40);
    let want: BTreeSet<i64> = (0..4).flat_map(|w| (0..10).map(move |k| w * 100 + k)).collect();
    assert_eq!(s.shot_ids(Table::Failures).unwrap(), want);
    let leftovers = std::fs::read_dir(s.table_dir(Table::Failures))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp-"))
        .count();
    assert_eq!(leftovers, 0);
}
