//! Stage 2 through the kernel `Backend`: every evaluation goes through it
//! (two calls per launch per evaluation, one forward per launch per curvature
//! pass), launches of several shots give the same target as shot-by-shot
//! launches, and the backend is recorded in `shot_params` and the summary.

mod device_util;

use std::path::Path;
use std::sync::Arc;

use arrow::array::AsArray;

use diffbragg::config::EnsHopperConfig;
use diffbragg::dist::SingleProcess;
use diffbragg::gpu::{CpuBackend, Mode};
use diffbragg::stage2::synth::{make, SynthOptions, SynthTruth};
use diffbragg::stage2::{prepare_with_backend, run_with_backend, RunOptions};
use diffbragg::store::{Store, Table};

use device_util::Counting;

fn data(dir: &Path) -> (SynthTruth, EnsHopperConfig) {
    let o = SynthOptions {
        n_shots: 5,
        seed: 3,
        cell: [30.0, 30.0, 44.0, 90.0, 90.0, 90.0],
        d_min: 5.0,
        n_spectrum: 4,
        ncells: [10.0, 10.0, 10.0],
        excitation_cut: 2.0,
        ..Default::default()
    };
    let t = make(&dir.join("data"), &o).unwrap();
    let over = vec![
        "fix.Fhkl=False".to_string(),
        "fix.G=False".into(),
        "types.G=positive".into(),
        "fix.RotXYZ=False".into(),
        "space_group=P43212".into(),
        format!("simulator.structure_factors.default_F={}", t.default_f),
    ];
    let (cfg, _) = EnsHopperConfig::from_texts(&[], &over, dir).unwrap();
    (t, cfg)
}

#[test]
fn every_evaluation_goes_through_the_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, cfg) = data(tmp.path());
    let counting = Arc::new(Counting::default());
    let opts = RunOptions {
        quiet: true,
        max_evals: Some(6),
        save_freq: Some(4),
        ..RunOptions::new(&t.store, tmp.path().join("out"))
    };
    let s = run_with_backend(&cfg, &opts, &SingleProcess, counting.clone()).unwrap();
    assert_eq!(s.backend, device_util::NAME);
    let n_shots = s.n_shots;
    assert_eq!(n_shots, t.shot_ids.len());

    // Evaluations in the traces table.
    let store = Store::open(&t.store).unwrap();
    let mut n_traces = 0;
    for b in store.read_columns(Table::Traces, &["stage"], None).unwrap() {
        let st = b.column(0).as_string::<i32>();
        n_traces += (0..b.num_rows()).filter(|&i| st.value(i) == "stage2").count();
    }
    assert_eq!(n_traces, s.n_eval);
    assert!(s.n_eval >= 4, "{} evaluations", s.n_eval);
    // A backend other than the CPU gets GPU_SHOTS_PER_LAUNCH shots per launch.
    let per = counting.max_shots.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(per, n_shots.min(diffbragg::stage2::GPU_SHOTS_PER_LAUNCH));
    let launches = n_shots.div_ceil(per);
    // Two calls per launch and evaluation: values + derivatives, Fhkl gradient.
    assert_eq!(counting.calls(Mode::Derivs), launches * s.n_eval);
    assert_eq!(counting.shots(Mode::Derivs), n_shots * s.n_eval);
    assert_eq!(counting.calls(Mode::FhklGrad), launches * s.n_eval);
    assert_eq!(counting.shots(Mode::FhklGrad), n_shots * s.n_eval);
    // Forward: one curvature pass at the checkpoint (evaluation 4) and one at the end.
    assert_eq!(counting.calls(Mode::Forward), 2 * launches);
    assert_eq!(counting.shots(Mode::Forward), 2 * n_shots);

    // The backend in every stage-2 shot_params row.
    let mut n_rows = 0;
    for b in store.read_columns(Table::ShotParams, &["stage", "backend"], None).unwrap() {
        let st = b.column(0).as_string::<i32>();
        let be = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            if st.value(i) == "stage2" {
                assert_eq!(be.value(i), device_util::NAME);
                n_rows += 1;
            }
        }
    }
    assert_eq!(n_rows, n_shots);
    let summary = std::fs::read_to_string(tmp.path().join("out/stage2_summary.json")).unwrap();
    assert!(summary.contains("\"backend\": \"counting\""), "{summary}");
}

#[test]
fn launches_of_several_shots_give_the_shot_by_shot_target() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, cfg) = data(tmp.path());
    let opts = RunOptions { quiet: true, ..RunOptions::new(&t.store, tmp.path().join("out")) };
    let mut p = prepare_with_backend(&cfg, &opts, &SingleProcess, Arc::new(CpuBackend)).unwrap();
    let n_shots = p.problem.shots.len();
    assert_eq!(p.problem.n_launches(), n_shots, "the CPU evaluates shot by shot");
    let n = p.problem.n_x();
    let x: Vec<f64> = (0..n).map(|k| 1.0 + 0.03 * (((k * 7919) % 23) as f64 / 11.0 - 1.0)).collect();
    let e1 = p.problem.evaluate(&x, &SingleProcess).unwrap();
    let c1 = p.problem.curvature(&x, &SingleProcess).unwrap();
    assert!(e1.g.iter().filter(|v| **v != 0.0).count() > n / 2);

    // Kept (device-style) batches, one shot per launch: bitwise the same.
    let counting = Arc::new(Counting::default());
    p.problem.set_backend(counting.clone(), 1);
    let e2 = p.problem.evaluate(&x, &SingleProcess).unwrap();
    assert_eq!(e2, e1);
    assert_eq!(counting.calls(Mode::Derivs), n_shots);

    // Three shots per launch: the same up to the order of the Fhkl sums.
    let counting = Arc::new(Counting::default());
    p.problem.set_backend(counting.clone(), 3);
    assert_eq!(p.problem.n_launches(), n_shots.div_ceil(3));
    let e3 = p.problem.evaluate(&x, &SingleProcess).unwrap();
    let c3 = p.problem.curvature(&x, &SingleProcess).unwrap();
    assert_eq!(counting.calls(Mode::Derivs), n_shots.div_ceil(3));
    assert_eq!(counting.calls(Mode::FhklGrad), n_shots.div_ceil(3));
    assert_eq!(counting.max_shots.load(std::sync::atomic::Ordering::SeqCst), 3.min(n_shots));
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300);
    assert!(close(e3.f, e1.f), "{} vs {}", e3.f, e1.f);
    assert!(close(e3.sigz, e1.sigz));
    let gmax = e1.g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (k, (a, b)) in e3.g.iter().zip(&e1.g).enumerate() {
        assert!((a - b).abs() <= 1e-12 * gmax, "g[{k}]: {a} vs {b}");
    }
    assert_eq!(c3.shots, c1.shots);
    for (a, b) in c3.h.iter().zip(&c1.h) {
        assert!(close(*a, *b), "{a} vs {b}");
    }
}
