//! Stage 1 under MPI (`--features mpi`): `mpirun -np 2` gives the same rows
//! as one rank, with the work split between the ranks.
#![cfg(feature = "mpi")]

mod stage1_util;

use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use diffbragg::store::{Store, Table};

fn rows(out: &Path) -> Vec<(i64, String, i32, Vec<f64>)> {
    let s = Store::open(out).unwrap();
    let mut v = Vec::new();
    for b in s.read_columns(Table::ShotParams, &["shot_id", "status", "n_evals", "Amats"], None).unwrap() {
        for i in 0..b.num_rows() {
            let a = b.column(3).as_fixed_size_list().value(i);
            v.push((
                b.column(0).as_primitive::<Int64Type>().value(i),
                b.column(1).as_string::<i32>().value(i).to_string(),
                b.column(2).as_primitive::<Int32Type>().value(i),
                a.as_primitive::<Float64Type>().values().to_vec(),
            ));
        }
    }
    v.sort_by_key(|r| r.0);
    v
}

fn hopper(phil: &Path, out: &Path, ranks: Option<usize>) {
    let mut c = match ranks {
        Some(n) => {
            let mut c = std::process::Command::new("mpirun");
            c.args(["-np", &n.to_string()]);
            if unsafe { libc::geteuid() } == 0 {
                c.args(["--allow-run-as-root", "--oversubscribe"]);
            }
            c.arg(stage1_util::bin());
            c
        }
        None => std::process::Command::new(stage1_util::bin()),
    };
    c.arg("hopper")
        .arg(phil)
        .args(["--no-progress", "--threads", "1", "--cmdlinePhil"])
        .arg(stage1_util::outdir_arg(out));
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn two_ranks_give_the_same_rows_as_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    stage1_util::small(d, 4, 31, 192, 35.0, 8);
    let phil = d.join("hopper.phil");
    hopper(&phil, &d.join("one"), None);
    hopper(&phil, &d.join("two"), Some(2));
    let (a, b) = (rows(&d.join("one")), rows(&d.join("two")));
    assert_eq!(a.len(), 4);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.0, &x.1, x.2), (y.0, &y.1, y.2));
        for (u, v) in x.3.iter().zip(&y.3) {
            assert!((u - v).abs() <= 1e-12 * u.abs().max(1e-300), "Amats differ: {u} vs {v}");
        }
    }
    // Both ranks wrote shards.
    let names: Vec<String> = std::fs::read_dir(d.join("two/shot_params"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("rank0-")) && names.iter().any(|n| n.starts_with("rank1-")),
        "{names:?}"
    );
}
