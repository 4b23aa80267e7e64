//! Stage 2 under MPI: `mpirun -np 2` gives the result of one rank (to 1e-8
//! relative after the same number of evaluations). Built only with
//! `--features mpi`; `scripts/test.sh` runs it.
#![cfg(feature = "mpi")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type};
use diffbragg::stage2::synth::{make, SynthOptions, SynthTruth};
use diffbragg::store::{Store, Table};

fn mpirun(np: usize, t: &SynthTruth, out: &Path, tag: &str) {
    let o = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string()])
        .arg(env!("CARGO_BIN_EXE_diffbragg"))
        .arg("ens-hopper")
        .arg(&t.store)
        .arg("--outdir")
        .arg(out)
        .args(["--saveTag", tag, "--saveFreq", "10", "--maxEvals", "40", "--threads", "1", "--quiet"])
        .arg("--cmdlinePhil")
        .args(["fix.Fhkl=False", "fix.G=False", "types.G=positive", "sigmas.G=0.1", "space_group=P43212"])
        .args([
            "fix.RotXYZ=True",
            "fix.Nabc=True",
            "fix.ucell=True",
            "ftol=1e-14",
            "Fhkl_channel_bounds=9500",
        ])
        .arg(format!("simulator.structure_factors.default_F={}", t.default_f))
        .output()
        .expect("mpirun (openmpi-bin) must be installed for the MPI test");
    assert!(
        o.status.success(),
        "mpirun -np {np} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Final F per (h, k, l, channel) and f per evaluation.
fn results(store: &Path, tag: &str) -> (BTreeMap<[i32; 4], f64>, BTreeMap<i32, f64>) {
    let s = Store::open(store).unwrap();
    let mut f = BTreeMap::new();
    for b in s.read(Table::Fhkl, None).unwrap() {
        let t = b.column_by_name("tag").unwrap().as_string::<i32>();
        let hkl = b.column_by_name("hkl").unwrap().as_struct();
        let ch = b.column_by_name("channel").unwrap().as_primitive::<Int32Type>();
        let fv = b.column_by_name("F").unwrap().as_primitive::<Float64Type>();
        let fin = b.column_by_name("is_final").unwrap().as_boolean();
        for i in 0..b.num_rows() {
            if t.value(i) == tag && fin.value(i) {
                let c = |k: usize| hkl.column(k).as_primitive::<Int32Type>().value(i);
                f.insert([c(0), c(1), c(2), ch.value(i)], fv.value(i));
            }
        }
    }
    let mut tr = BTreeMap::new();
    for b in s.read(Table::Traces, None).unwrap() {
        let st = b.column_by_name("stage").unwrap().as_string::<i32>();
        let ev = b.column_by_name("eval").unwrap().as_primitive::<Int32Type>();
        let fv = b.column_by_name("f").unwrap().as_primitive::<Float64Type>();
        let id = b.column_by_name("shot_id").unwrap();
        for i in 0..b.num_rows() {
            if st.value(i) == tag && id.is_null(i) {
                assert!(tr.insert(ev.value(i), fv.value(i)).is_none(), "duplicate trace row");
            }
        }
    }
    (f, tr)
}

#[test]
fn two_ranks_give_the_one_rank_result() {
    let tmp = tempfile::tempdir().unwrap();
    let o = SynthOptions {
        n_shots: 30,
        seed: 21,
        bandwidth: 0.01,
        channel_bounds: vec![9500.0],
        ..Default::default()
    };
    let t = make(tmp.path(), &o).unwrap();
    let out = tmp.path().join("out");
    mpirun(1, &t, &out, "np1");
    mpirun(2, &t, &out, "np2");
    let (f1, tr1) = results(&t.store, "np1");
    let (f2, tr2) = results(&t.store, "np2");
    assert_eq!(tr1.len(), 40);
    assert_eq!(
        tr1.keys().collect::<Vec<_>>(),
        tr2.keys().collect::<Vec<_>>(),
        "different numbers of evaluations"
    );
    for (e, a) in &tr1 {
        let b = tr2[e];
        assert!((a - b).abs() <= 1e-8 * a.abs(), "evaluation {e}: f {a} vs {b}");
    }
    assert!(f1.len() > 100);
    assert_eq!(f1.keys().collect::<Vec<_>>(), f2.keys().collect::<Vec<_>>());
    let fmax = f1.values().cloned().fold(0.0, f64::max);
    let mut worst = 0.0f64;
    for (k, a) in &f1 {
        let d = (a - f2[k]).abs() / a.abs().max(1e-6 * fmax);
        worst = worst.max(d);
        assert!(d <= 1e-8, "{k:?}: F {a} (1 rank) vs {} (2 ranks)", f2[k]);
    }
    eprintln!("1 vs 2 ranks: worst relative F difference {worst:e} over {} structure factors", f1.len());
    // Each rank wrote its own shots' rows.
    let s = Store::open(&t.store).unwrap();
    let ranks: std::collections::BTreeSet<u32> =
        s.shards(Table::ShotParams).unwrap().iter().map(|x| x.0).collect();
    assert!(ranks.contains(&1), "rank 1 wrote no shot_params shard");
}
