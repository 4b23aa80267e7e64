//! The user's stage-2 configuration (`seed/stage_two_test.phil`) with the
//! seed README's global `ens.hopper` command line, paths changed: it runs
//! and writes the outputs the user expects.

use std::process::Command;

use arrow::array::AsArray;

use diffbragg::io::mtz::Mtz;
use diffbragg::stage2::synth::{make, SynthOptions};
use diffbragg::store::Store;
use diffbragg::testutil::shared;

#[test]
fn users_stage_two_phil_runs_the_global_refinement() {
    let tmp = tempfile::tempdir().unwrap();
    let o = SynthOptions { n_shots: 24, seed: 9, space_group: "P 41 21 2".into(), ..Default::default() };
    let t = make(tmp.path(), &o).unwrap();

    // The starting model as the user's MTZ has it: F-model, PHIF-model.
    let truth = Mtz::read(&t.mtz[0]).unwrap();
    let hkl = truth.hkl().unwrap();
    let fp = truth.column("F(+)").unwrap().values.clone();
    let f: Vec<f32> = fp.iter().map(|v| if v.is_finite() { v * 0.8 + 20.0 } else { 50.0 }).collect();
    let mut m = Mtz::new_merged(t.cell, t.space_group.clone(), &hkl, ("model", "model", "model"), 1.3);
    m.add_column("F-model", 'F', f).unwrap();
    m.add_column("PHIF-model", 'P', (0..hkl.len()).map(|i| (i * 37 % 360) as f32).collect()).unwrap();
    let mtz = tmp.path().join("CRY1Aae_refine_156.mtz");
    m.write(&mtz).unwrap();
    let mask = tmp.path().join("hotborder.mask");
    std::fs::write(&mask, b"not read by stage 2").unwrap();

    // The user's file, only its paths changed.
    let text = std::fs::read_to_string(shared("seed/stage_two_test.phil")).unwrap();
    let text = text
        .replace(
            "/pscratch/sd/c/cctbx/cxilz0820/common/diffbragg/CRY1Aae_refine_156.mtz",
            mtz.to_str().unwrap(),
        )
        .replace("/pscratch/sd/c/cctbx/cxilz0820/common/diffbragg/split_000.expt", t.expt.to_str().unwrap())
        .replace(
            "/pscratch/sd/c/cctbx/cxilz0820/common/diffbragg/hotborder_rect_lowres_ring1p9_mask5_psana.mask",
            mask.to_str().unwrap(),
        );
    assert!(!text.contains("/pscratch/sd/c/cctbx/cxilz0820/common/diffbragg/"), "a path was left unchanged");
    let phil = tmp.path().join("stage_two_test.phil");
    std::fs::write(&phil, text).unwrap();

    // srun ... ens.hopper preimport/preImport_for_ensemble.pkl stage_two_test.phil --outdir global
    //   --maxSigma 3 --saveFreq 10 --refl ens.hopper.imported --cmdlinePhil fix.Nabc=True fix.ucell=True
    //   fix.RotXYZ=True fix.Fhkl=False fix.G=False sigmas.G=1e-2
    // (the store replaces the pickle; --maxEvals bounds the CI time).
    let global = tmp.path().join("global");
    let out = Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .current_dir(tmp.path())
        .arg("ens-hopper")
        .arg(&t.store)
        .arg(&phil)
        .args([
            "--outdir",
            "global",
            "--maxSigma",
            "3",
            "--saveFreq",
            "10",
            "--refl",
            "ens.hopper.imported",
            "--maxEvals",
            "25",
        ])
        .args([
            "--cmdlinePhil",
            "fix.Nabc=True",
            "fix.ucell=True",
            "fix.RotXYZ=True",
            "fix.Fhkl=False",
            "fix.G=False",
            "sigmas.G=1e-2",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{log}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}{log}", String::from_utf8_lossy(&out.stderr));
    assert!(log.contains("it=0 | t/it="), "{log}");
    assert!(log.contains("starting structure factors:") && log.contains("F-model,PHIF-model"), "{log}");
    for name in ["optimized_channel0.mtz", "optimized_channel0_iter10.mtz", "optimized_channel0_iter20.mtz"] {
        let m = Mtz::read(global.join(name)).unwrap();
        let labels: Vec<&str> = m.columns.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["H", "K", "L", "F(+)", "SIGF(+)", "F(-)", "SIGF(-)"], "{name}");
        assert!(m.nrefl > 50, "{name}: {} reflections", m.nrefl);
        assert_eq!(m.space_group.as_ref().unwrap().hm(), "P 41 21 2");
    }
    // Everything is in the catalog.
    let s = Store::open(&t.store).unwrap();
    let count = |sql: &str| -> i64 {
        let q = s.query(sql).unwrap();
        q.batches[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0)
    };
    assert_eq!(count("SELECT count(*) FROM traces WHERE stage = 'stage2' AND shot_id IS NULL"), 25);
    assert_eq!(
        count("SELECT count(DISTINCT iteration) FROM fhkl WHERE tag = 'stage2'"),
        3,
        "checkpoints 10, 20, final"
    );
    assert_eq!(count("SELECT count(*) FROM shot_params WHERE stage = 'stage2'"), 24);

    // `diffbragg report` on the store: convergence plot and CC against the truth by resolution.
    let out = Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .arg("report")
        .arg(&t.store)
        .args(["--reference", t.mtz[0].to_str().unwrap(), "--reference-columns", "F(+),F(-)", "--with-merge"])
        .args(["--bins", "4"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("stage 2 run `stage2`: 25 evaluations"), "{text}");
    let overall = text.lines().find(|l| l.trim_start().starts_with("overall")).expect("a CC table");
    let cc: Vec<f64> = overall.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    // Ours (first) and the ROI-sum merge; refinement started from 0.8·F + 20.
    assert!(cc.len() == 2 && cc[0] > 0.95 && cc[0] <= 1.0, "{overall}");
    for f in ["summary.txt", "stage2_convergence.png", "stage2_cc.png", "stage2_cc.txt"] {
        let b = std::fs::read(t.store.join("report").join(f)).unwrap();
        assert!(!b.is_empty(), "{f}");
        if f.ends_with(".png") {
            assert!(b.starts_with(b"\x89PNG"), "{f}");
        }
    }
}
