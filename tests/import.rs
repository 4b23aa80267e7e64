//! `diffbragg import` end to end: counts against an independent Python
//! msgpack decoder, Parquet readable by pyarrow, spec files with relative
//! paths and spectra, and clear errors.

use std::path::Path;
use std::process::Command;

use diffbragg::testutil::shared;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diffbragg"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run diffbragg");
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn python(script: &str) -> String {
    let out = Command::new("python3").arg("-c").arg(script).output().expect("python3");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cunir_counts_match_python_and_parquet_opens_in_pyarrow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shared("fixtures/dials_data_files/ssx_CuNiR");
    let out = tmp.path().join("store");
    run_ok(
        bin()
            .current_dir(tmp.path())
            .arg("import")
            .arg(dir.join("indexed.expt"))
            .arg(dir.join("indexed.refl"))
            .arg("--out")
            .arg(&out),
    );
    let ours = run_ok(bin().current_dir(tmp.path()).args(["sql"]).arg(&out).args([
        "SELECT e.exp_idx, count(*) AS n FROM reflections r JOIN experiments e USING (shot_id) GROUP BY 1 ORDER BY 1",
        "--format",
        "csv",
    ]));
    let ours: Vec<(i64, i64)> = ours
        .lines()
        .skip(1)
        .map(|l| {
            let mut it = l.split(',').map(|x| x.trim().parse::<i64>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect();
    // Independent count: decode the msgpack table in Python and count rows per `id`.
    let py = python(&format!(
        r#"
import msgpack, numpy as np, collections
d = msgpack.unpackb(open({:?}, 'rb').read(), raw=False, strict_map_key=False)
col = d[2]['data']['id']
ids = np.frombuffer(col[1][1], dtype='<i4')
for k, v in sorted(collections.Counter(ids.tolist()).items()):
    print(k, v)
"#,
        dir.join("indexed.refl")
    ));
    let theirs: Vec<(i64, i64)> = py
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace().map(|x| x.parse::<i64>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect();
    assert_eq!(ours, theirs);
    assert_eq!(theirs.iter().map(|x| x.1).sum::<i64>(), 360);

    // Every Parquet shard opens in pyarrow with the expected row totals.
    let py = python(&format!(
        r#"
import pyarrow.parquet as pq, glob
for t in ['experiments', 'reflections']:
    n = sum(pq.read_table(f).num_rows for f in glob.glob({:?} + '/' + t + '/*.parquet'))
    print(t, n)
"#,
        out.to_str().unwrap()
    ));
    assert!(py.contains("experiments 5"), "{py}");
    assert!(py.contains("reflections 360"), "{py}");
}

#[test]
fn spec_file_with_relative_paths_and_spectrum() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shared("fixtures/dials_data_files/ssx_CuNiR");
    let work = tmp.path().join("inputs");
    std::fs::create_dir(&work).unwrap();
    for f in ["indexed.expt", "indexed.refl"] {
        std::fs::copy(dir.join(f), work.join(f)).unwrap();
    }
    std::fs::copy(shared("reference/shot_00.lam"), work.join("s.lam")).unwrap();
    std::fs::write(work.join("spec.txt"), "indexed.expt indexed.refl s.lam 2\nindexed.expt indexed.refl 4\n")
        .unwrap();
    let out = tmp.path().join("store");
    // Run from an unrelated directory: relative paths resolve against the spec file's folder.
    run_ok(bin().current_dir(tmp.path()).arg("import").arg(work.join("spec.txt")).arg("--out").arg(&out));
    let csv = run_ok(bin().arg("sql").arg(&out).args([
        "SELECT e.exp_idx, (SELECT count(*) FROM reflections r WHERE r.shot_id = e.shot_id) AS n, \
         (SELECT count(*) FROM spectra s WHERE s.shot_id = e.shot_id) AS nchan FROM experiments e ORDER BY 1",
        "--format",
        "csv",
    ]));
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows, vec!["2,194,25", "4,62,0"], "{csv}");
}

#[test]
fn errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("import")
        .arg(tmp.path().join("missing.expt"))
        .arg(shared("fixtures/dials_data_files/ssx_CuNiR/indexed.refl"))
        .arg("--out")
        .arg(tmp.path().join("s"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.expt"), "{err}");
    assert!(!Path::new(&tmp.path().join("s")).exists(), "nothing may be written on a bad input");
    // A pickle table is refused with the conversion hint.
    let out = bin()
        .arg("import")
        .arg(shared("fixtures/dials_data_files/legacy_pickle/multi_stills_combined.json"))
        .arg(shared("fixtures/dials_data_files/legacy_pickle/multi_stills_combined.pickle"))
        .arg("--out")
        .arg(tmp.path().join("s2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("multi_stills_combined.pickle") && err.contains("as_file"), "{err}");
}
