//! `diffbragg sql` end to end, through the built binary, each case in its own temp dir.

use std::path::Path;
use std::process::{Command, Output};

use chrono::{TimeZone, Utc};
use diffbragg::store::{
    reflections_batch, BatchBuilder, FailureRow, RawColumn, RawTable, Store, Table, TraceRow,
};

fn diffbragg(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running diffbragg")
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "diffbragg failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn store(dir: &Path) {
    let mut s = Store::create(dir, 0, true).unwrap();
    let mut b = BatchBuilder::new(Table::Traces);
    for e in 0..3 {
        let t = TraceRow {
            shot_id: Some(42),
            stage: "stage1".into(),
            eval: e,
            f: 2.5 * e as f64,
            sigz: (e > 0).then_some(1.5),
            grad_norm: None,
            time: 0.5,
        };
        b.append_row(&t).unwrap();
    }
    s.append_builder(&mut b).unwrap();
    let mut b = BatchBuilder::new(Table::Failures);
    let mut f = FailureRow::now(43, "stage1", "no_rois", "no ROI, \"really\"");
    f.time = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap();
    b.append_row(&f).unwrap();
    s.append_builder(&mut b).unwrap();
    let mut t = RawTable { nrows: 2, ..Default::default() };
    t.columns.insert("panel".into(), RawColumn::Size(vec![0, 1]));
    t.columns.insert("flags".into(), RawColumn::Size(vec![32, 45]));
    t.columns.insert("xyzobs.px.value".into(), RawColumn::Vec3(vec![[1.5, 2.5, 0.5], [3.0, 4.0, 0.5]]));
    let (batch, _) = reflections_batch(42, &t, &[0, 1]).unwrap();
    s.append(Table::Reflections, &[batch]).unwrap();
}

#[test]
fn table_csv_and_parquet_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    store(&dir);
    let d = dir.to_str().unwrap();
    // Runs from an unrelated working directory.
    let cwd = tmp.path();

    let t = stdout(&diffbragg(&["sql", d, "SELECT shot_id, eval, f, sigz FROM traces ORDER BY eval"], cwd));
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with('┌')
            && lines[1].contains("shot_id")
            && lines[2].contains("int64")
            && lines[2].contains("double"),
        "{t}"
    );
    assert!(lines[4].contains("42") && lines[4].contains("NULL"), "{t}");
    assert!(lines[6].contains("5.0") && lines[6].contains("1.5"), "{t}");
    assert_eq!(*lines.last().unwrap(), "3 rows");
    let w = lines[0].chars().count();
    assert!(lines[..lines.len() - 1].iter().all(|l| l.chars().count() == w), "{t}");

    let c = stdout(&diffbragg(
        &["sql", d, "SELECT eval, f, sigz FROM traces ORDER BY eval", "--format", "csv"],
        cwd,
    ));
    assert_eq!(c, "eval,f,sigz\n0,0.0,\n1,2.5,1.5\n2,5.0,1.5\n");

    // Text with quotes and commas, a timestamp, a list column.
    let c =
        stdout(&diffbragg(&["sql", d, "SELECT reason, message, time FROM failures", "--format", "csv"], cwd));
    let mut l = c.lines();
    assert_eq!(l.next(), Some("reason,message,time"));
    let row = l.next().unwrap();
    assert!(row.starts_with("no_rois,\"no ROI, \"\"really\"\"\",2024-05-06"), "{row}");
    assert!(row.contains("07:08:09"), "{row}");
    let c = stdout(&diffbragg(
        &["sql", d, "SELECT xyzobs_px_value FROM reflections ORDER BY refl_id", "--format", "csv"],
        cwd,
    ));
    assert_eq!(c, "xyzobs_px_value\n\"[1.5, 2.5, 0.5]\"\n\"[3.0, 4.0, 0.5]\"\n");

    // The shipped views through the CLI.
    let c = stdout(&diffbragg(
        &[
            "sql",
            d,
            "SELECT shot_id, n_refl, n_indexed, n_strong FROM reflections_per_shot",
            "--format",
            "csv",
        ],
        cwd,
    ));
    assert_eq!(c, "shot_id,n_refl,n_indexed,n_strong\n42,2,1,2\n");

    // Parquet needs --out; with it the file is written atomically and pyarrow reads it.
    let o = diffbragg(&["sql", d, "SELECT 1", "--format", "parquet"], cwd);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out"));
    let out = tmp.path().join("res.parquet");
    stdout(&diffbragg(
        &[
            "sql",
            d,
            "SELECT shot_id, eval, f FROM traces ORDER BY eval",
            "--format",
            "parquet",
            "--out",
            out.to_str().unwrap(),
        ],
        cwd,
    ));
    let py = Command::new("python3")
        .arg("-c")
        .arg("import sys, pyarrow.parquet as pq\nt = pq.read_table(sys.argv[1])\nprint(t.schema.field('shot_id').type, t.column('eval').to_pylist(), t.column('f').to_pylist())")
        .arg(&out)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "int64 [0, 1, 2] [0.0, 2.5, 5.0]");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.contains(".tmp-").then_some(n)
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // --out with the table format writes the same text to a file.
    let txt = tmp.path().join("res.txt");
    stdout(&diffbragg(&["sql", d, "SELECT count(*) AS n FROM traces", "--out", txt.to_str().unwrap()], cwd));
    assert!(std::fs::read_to_string(&txt)
        .unwrap()
        .lines()
        .any(|l| l.starts_with("│") && l.ends_with(" 3 │")));

    // Empty results keep their header and types.
    let t = stdout(&diffbragg(&["sql", d, "SELECT * FROM fhkl"], cwd));
    assert!(t.contains("sigma_I") && t.ends_with("0 rows\n"), "{t}");
}

#[test]
fn catalog_is_rebuilt_by_sql() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    store(&dir);
    std::fs::remove_file(dir.join("catalog.duckdb")).unwrap();
    let c = stdout(&diffbragg(
        &["sql", dir.to_str().unwrap(), "SELECT count(*) FROM traces", "--format", "csv"],
        tmp.path(),
    ));
    assert_eq!(c.lines().nth(1), Some("3"));
    assert!(dir.join("catalog.duckdb").is_file());
}

#[test]
fn errors_name_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no_such_run");
    let o = diffbragg(&["sql", missing.to_str().unwrap(), "SELECT 1"], tmp.path());
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("no_such_run") && e.contains("no such directory"), "{e}");

    let empty = tmp.path().join("empty_dir");
    std::fs::create_dir(&empty).unwrap();
    let o = diffbragg(&["sql", empty.to_str().unwrap(), "SELECT 1"], tmp.path());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("empty_dir") && e.contains("not a diffbragg store"), "{e}");

    let dir = tmp.path().join("run");
    store(&dir);
    let o = diffbragg(&["sql", dir.to_str().unwrap(), "SELECT nope FROM traces"], tmp.path());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("run") && e.contains("nope"), "{e}");
}
