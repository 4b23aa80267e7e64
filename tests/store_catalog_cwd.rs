//! The catalog opened by a user's own DuckDB from another working directory.
//! This file holds a single test because it changes the process's working
//! directory (tests in one binary share it).

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type};
use diffbragg::store::{BatchBuilder, Store, Table, TraceRow};

#[test]
fn catalog_works_from_another_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("results");
    let elsewhere = tmp.path().join("somewhere/else");
    std::fs::create_dir_all(&elsewhere).unwrap();
    // Create the store through a relative path, as a user would from its parent.
    std::env::set_current_dir(tmp.path()).unwrap();
    let mut s = Store::create(std::path::Path::new("results"), 0, true).unwrap();
    let mut b = BatchBuilder::new(Table::Traces);
    for e in 0..3 {
        let t = TraceRow {
            shot_id: Some(9),
            stage: "stage1".into(),
            eval: e,
            f: 10.0 - e as f64,
            sigz: None,
            grad_norm: None,
            time: 0.0,
        };
        b.append_row(&t).unwrap();
    }
    s.append_builder(&mut b).unwrap();

    std::env::set_current_dir(&elsewhere).unwrap();
    let cfg = duckdb::Config::default().access_mode(duckdb::AccessMode::ReadOnly).unwrap();
    let conn = duckdb::Connection::open_with_flags(store_dir.join("catalog.duckdb"), cfg).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM traces WHERE shot_id = 9", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 3);
    let fmin: f64 = conn.query_row("SELECT min(f) FROM traces", [], |r| r.get(0)).unwrap();
    assert_eq!(fmin, 8.0);
    // The views from sql/ are there too, and an empty table works.
    let mut st = conn.prepare("SELECT count(*) FROM shot_summary").unwrap();
    let r: Vec<_> = st.query_arrow([]).unwrap().collect();
    let c = arrow::compute::cast(r[0].column(0), &DataType::Int64).unwrap();
    assert_eq!(c.as_primitive::<Int64Type>().value(0), 0);
    // The user can also ATTACH it read-only from an in-memory session.
    let mem = duckdb::Connection::open_in_memory().unwrap();
    mem.execute_batch(&format!("ATTACH '{}' AS db (READ_ONLY);", store_dir.join("catalog.duckdb").display()))
        .unwrap();
    let n: i64 = mem.query_row("SELECT count(*) FROM db.traces", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 3);
    // Views that use other views resolve inside the attached catalog.
    let n: i64 = mem.query_row("SELECT count(*) FROM db.shot_summary", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
}
