//! Deterministic mutation test: corrupted reflection values and models must give
//! an `Err` or skipped rows, never a panic, through evaluation, statistics, the
//! text summary and the figures.

use std::panic::{catch_unwind, AssertUnwindSafe};

use diffbragg::conventions::Vec3;
use diffbragg::experiment::ExperimentList;
use diffbragg::io::dials_refl::read_refl;
use diffbragg::reflections::ReflectionTable;
use diffbragg::report::figures;
use diffbragg::report::residuals::{evaluate, CalSource, EvalOptions, ModelKind};
use diffbragg::report::stats::{panel_groups, DatasetStats};
use diffbragg::report::summary::Comparison;
use diffbragg::testutil::shared;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BAD: [f64; 9] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, 1e300, -1e300, 1e-300, -1.0];

fn bad(rng: &mut ChaCha8Rng) -> f64 {
    if rng.random_bool(0.7) {
        BAD[rng.random_range(0..BAD.len())]
    } else {
        rng.random_range(-1e4..1e4)
    }
}

fn mutate_table(t: &mut ReflectionTable, rng: &mut ChaCha8Rng) {
    let n = t.nrows();
    let i = rng.random_range(0..n);
    match rng.random_range(0..7) {
        0 | 1 => {
            let col = [
                "xyzobs.px.value",
                "xyzobs.mm.value",
                "xyzcal.px",
                "xyzobs.mm.variance",
                "xyzobs.px.variance",
            ][rng.random_range(0..5)];
            let k = rng.random_range(0..3);
            let v = bad(rng);
            if let Ok(c) = t.get_vec3_mut(col) {
                c[i][k] = v;
            }
        }
        2 => {
            let big = [0, 1, -1, i32::MAX, i32::MIN, 100000][rng.random_range(0..6)];
            t.get_miller_mut("miller_index").unwrap()[i][rng.random_range(0..3)] = big;
        }
        3 => t.get_size_mut("panel").unwrap()[i] = [0, 1, u64::MAX][rng.random_range(0..3)],
        4 => t.get_size_mut("flags").unwrap()[i] = rng.random(),
        5 => {
            t.remove(
                ["xyzobs.mm.value", "xyzobs.px.value", "xyzobs.mm.variance", "xyzcal.px"]
                    [rng.random_range(0..4)],
            );
        }
        _ => t.get_int_mut("id").unwrap()[i] = rng.random_range(-2..7),
    }
}

fn mutate_models(el: &mut ExperimentList, rng: &mut ChaCha8Rng) {
    let e = rng.random_range(0..el.len());
    let x = &mut el.experiments[e];
    match rng.random_range(0..6) {
        0 => x.beam.as_mut().unwrap().wavelength = bad(rng),
        1 => x.beam.as_mut().unwrap().direction[rng.random_range(0..3)] = bad(rng),
        2 => {
            let c = x.crystal.as_mut().unwrap();
            let (r, k) = (rng.random_range(0..3), rng.random_range(0..3));
            c.real[(r, k)] = bad(rng);
            if rng.random_bool(0.2) {
                c.real = diffbragg::conventions::Mat3::zeros();
            }
        }
        3 => {
            let p = &mut x.detector.as_mut().unwrap().panels[0];
            match rng.random_range(0..4) {
                0 => p.origin[rng.random_range(0..3)] = bad(rng),
                1 => p.fast = Vec3::new(bad(rng), 0.0, 0.0),
                2 => p.slow = Vec3::zeros(),
                _ => p.pixel_size[rng.random_range(0..2)] = bad(rng),
            }
        }
        4 => {
            let p = &mut x.detector.as_mut().unwrap().panels[0];
            p.mu = bad(rng);
            p.thickness = bad(rng);
        }
        _ => x.crystal = None,
    }
}

#[test]
fn corrupted_inputs_never_panic() {
    let dir = shared("fixtures/dials_data_files/ssx_CuNiR");
    let el0 = ExperimentList::read(dir.join("indexed.expt")).unwrap();
    let t0 = read_refl(dir.join("indexed.refl")).unwrap();
    let base = evaluate(&el0, &t0, ModelKind::Input, &EvalOptions::default(), None).unwrap().rows;
    let det = el0.experiments[0].detector.clone().unwrap();
    let groups = panel_groups(&det, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    let (mut n_ok, mut n_err, mut n_skipped) = (0, 0, 0);
    for iter in 0..400 {
        let mut el = el0.clone();
        let mut t = t0.clone();
        for _ in 0..rng.random_range(1..4) {
            if rng.random_bool(0.5) {
                mutate_table(&mut t, &mut rng);
            } else {
                mutate_models(&mut el, &mut rng);
            }
        }
        let source = if rng.random_bool(0.5) { CalSource::Repredict } else { CalSource::Table };
        let opts = EvalOptions {
            cal_source: source,
            used_in_refinement_only: rng.random_bool(0.5),
            wavelength: None,
        };
        let res = catch_unwind(AssertUnwindSafe(|| {
            let ev = evaluate(&el, &t, ModelKind::Refined, &opts, None)?;
            let cmp = Comparison::new(base.clone(), ev.rows.clone());
            let _ = DatasetStats::of(cmp.rows(), &groups);
            let _ = cmp.text_summary(&groups);
            if iter % 20 == 0 {
                // Figures of the corrupted rows, also on a corrupted detector.
                let d = el.experiments[0].detector.clone().unwrap_or_default();
                for (_, c) in figures::all(&cmp, &d, &groups) {
                    c.png_bytes()?;
                }
            }
            Ok::<_, diffbragg::error::Error>(ev.skipped.len())
        }));
        match res {
            Err(_) => panic!("panic at iteration {iter}"),
            Ok(Ok(s)) => {
                n_ok += 1;
                n_skipped += s;
            }
            Ok(Err(e)) => {
                assert!(!e.to_string().is_empty());
                n_err += 1;
            }
        }
    }
    eprintln!("{n_ok} evaluated ({n_skipped} rows skipped), {n_err} errors");
    assert!(n_ok > 50 && n_err > 20 && n_skipped > 20, "{n_ok} {n_err} {n_skipped}");
}
