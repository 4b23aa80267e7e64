//! Stage 1 through the kernel `Backend`: every evaluation goes through it,
//! `--device cpu` reproduces the direct kernel bitwise, and the backend is
//! recorded in `shot_params`.

mod device_util;
mod stage1_util;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};

use diffbragg::dist::SingleProcess;
use diffbragg::gpu::{CpuBackend, Mode};
use diffbragg::kernel::PreparedShot;
use diffbragg::stage1::driver::{list_tasks, run_with_backend, structure_factors};
use diffbragg::stage1::shot::{prepare_shot, RunContext};
use diffbragg::stage1::RunOptions;
use diffbragg::store::{Store, Table};

use device_util::Counting;

/// Per shot: backend, n_evals and the refined numbers of `shot_params`.
fn shot_rows(out: &Path) -> BTreeMap<i64, (String, i32, Vec<f64>)> {
    let cols = ["shot_id", "backend", "n_evals", "f_final", "spot_scales", "rotX", "rotY", "rotZ", "a", "c"];
    let mut m = BTreeMap::new();
    for b in Store::open(out).unwrap().read_columns(Table::ShotParams, &cols, None).unwrap() {
        let id = b.column(0).as_primitive::<Int64Type>();
        let be = b.column(1).as_string::<i32>();
        let ne = b.column(2).as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            let v: Vec<f64> =
                (3..cols.len()).map(|c| b.column(c).as_primitive::<Float64Type>().value(i)).collect();
            m.insert(id.value(i), (be.value(i).to_string(), ne.value(i), v));
        }
    }
    m
}

/// Trace rows per shot.
fn trace_counts(out: &Path) -> BTreeMap<i64, usize> {
    let mut m = BTreeMap::new();
    for b in Store::open(out).unwrap().read_columns(Table::Traces, &["shot_id", "stage"], None).unwrap() {
        let id = b.column(0).as_primitive::<Int64Type>();
        let st = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            if st.value(i) == "stage1" && !id.is_null(i) {
                *m.entry(id.value(i)).or_default() += 1;
            }
        }
    }
    m
}

#[test]
fn every_evaluation_goes_through_the_backend_and_cpu_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    stage1_util::small(d, 2, 11, 256, 40.0, 8);
    let phil = d.join("hopper.phil");

    // In-process, on the counting wrapper of the CPU kernel.
    let out_c = d.join("out_counting");
    let cfg = stage1_util::config(&phil, &[stage1_util::outdir_arg(&out_c)]);
    let counting = Arc::new(Counting::default());
    let opts = RunOptions { flush_every: 4, progress: Some(false), verbose: false, serial_shots: false };
    let s = run_with_backend(cfg, &SingleProcess, &opts, counting.clone()).unwrap();
    assert_eq!((s.n_refined, s.n_failed), (2, 0));

    let rows = shot_rows(&out_c);
    let traces = trace_counts(&out_c);
    assert_eq!(rows.len(), 2);
    let n_traces: usize = traces.values().sum();
    assert!(n_traces > 2, "too few evaluations: {traces:?}");
    for (id, (backend, n_evals, _)) in &rows {
        assert_eq!(backend, device_util::NAME, "shot {id}");
        assert_eq!(*n_evals as usize, traces[id], "shot {id}: n_evals vs trace rows");
    }
    // Per shot: one forward for the least-squares starting G (init.G unset),
    // one value+gradient per traced evaluation, one more at the solution.
    assert_eq!(counting.calls(Mode::Forward), 2);
    assert_eq!(counting.calls(Mode::Derivs), n_traces + 2);
    assert_eq!(counting.calls(Mode::FhklGrad), 0);
    assert_eq!(counting.max_shots.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The CLI with --device cpu: backend "cpu", and the same numbers bitwise
    // (the wrapper only delegates to the CPU kernel).
    let out_cli = d.join("out_cli");
    let r = std::process::Command::new(stage1_util::bin())
        .arg("hopper")
        .arg(&phil)
        .args(["--device", "cpu", "--no-progress", "--cmdlinePhil"])
        .arg(stage1_util::outdir_arg(&out_cli))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("device:") && err.contains("cpu"), "the device choice is logged: {err}");
    let cli = shot_rows(&out_cli);
    assert_eq!(cli.len(), 2);
    for (id, (backend, n_evals, v)) in &cli {
        assert_eq!(backend, "cpu");
        let (_, n_c, v_c) = &rows[id];
        assert_eq!(n_evals, n_c, "shot {id}");
        for (a, b) in v.iter().zip(v_c) {
            assert_eq!(a.to_bits(), b.to_bits(), "shot {id}: {v:?} vs {v_c:?}");
        }
    }
}

#[test]
fn backend_evaluation_equals_the_direct_kernel_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    stage1_util::small(d, 1, 5, 256, 40.0, 8);
    let cfg = stage1_util::config(
        &d.join("hopper.phil"),
        &[stage1_util::outdir_arg(&d.join("out")), "fix.detz_shift=False".into()],
    );
    let fhkl = structure_factors(&cfg).unwrap();
    let sg = cfg.space_group.as_deref().map(|s| diffbragg::symmetry::SpaceGroup::parse(s).unwrap());
    let task = list_tasks(&cfg).unwrap().remove(0);
    let counting = Arc::new(Counting::default());
    let ctx = RunContext::new(cfg, fhkl, sg, None, d.join("out")).with_backend(counting.clone());
    let prep = prepare_shot(&ctx, &task).unwrap_or_else(|f| panic!("{}: {}", f.reason, f.message));
    assert_eq!(counting.calls(Mode::Forward), 1, "the starting G is computed on the backend");
    let p = prep.problem_on(&ctx.fhkl, &*ctx.backend);
    let n = prep.params.set.n_free();
    let x: Vec<f64> = (0..n).map(|k| 1.0 + 0.01 * ((k as f64 * 0.9).cos())).collect();
    let trusted = prep.data.trusted.clone();
    let mut g = vec![0.0; n];
    let e = p.evaluate(&x, Some(&mut g), &trusted).unwrap();
    let e0 = p.evaluate(&x, None, &trusted).unwrap();
    assert_eq!((counting.calls(Mode::Forward), counting.calls(Mode::Derivs)), (2, 1));

    // The kernel called directly, as stage 1 did before the backend.
    let m = p.shot_model(&prep.params.values(&x)).unwrap();
    let kp = prep.params.kernel_params();
    assert!(kp.len() >= 7, "rotations, N, cell and detz are refined: {kp:?}");
    let direct =
        PreparedShot::new(&m, &ctx.fhkl, None, &kp).unwrap().forward_with_derivs(&prep.data.pixels).unwrap();
    let direct_fwd = PreparedShot::new(&m, &ctx.fhkl, None, &[]).unwrap().forward(&prep.data.pixels).unwrap();
    assert!(direct.values.iter().any(|v| *v > 0.0));
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&e.raw), bits(&direct.values));
    assert_eq!(bits(&e0.raw), bits(&direct_fwd));
    assert_eq!(e.derivs.len(), direct.derivs.len());
    for (a, b) in e.derivs.iter().zip(&direct.derivs) {
        assert_eq!(bits(a), bits(b));
    }
    // The same problem on the plain CPU backend gives the same target and gradient.
    let pc = prep.problem_on(&ctx.fhkl, &CpuBackend);
    let mut gc = vec![0.0; n];
    let ec = pc.evaluate(&x, Some(&mut gc), &trusted).unwrap();
    assert_eq!(ec.f.to_bits(), e.f.to_bits());
    assert_eq!(bits(&gc), bits(&g));
}
