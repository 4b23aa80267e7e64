//! The user's own configuration files (`shared/seed/simulation.phil` as the
//! pred phil, `sim_processing.phil` as the proc phil) through the CLI, with the
//! user's command line (`--numdev 4 --hopInputName pred --cmdLinePhil
//! threshold=1e2`), on synthetic data:
//! * as written, the proc phil's mask is a DIALS pickle on another machine:
//!   one clear error naming the parameter and the file, nothing written;
//! * a pickle mask is refused with the conversion command;
//! * with `spotfinder.lookup.mask=mask.npy` (written by numpy) the run works,
//!   the mask is honoured (no strong spot in the masked strip) and laue mode
//!   (set in the phil) fills `ave_wavelen`.
//!
//! Masks written by h5py (bool and uint8) read back identically.

mod integrate_common;

use std::path::Path;
use std::process::Command;

use diffbragg::io::mask::read_mask;
use diffbragg::store::Store;
use diffbragg::testutil::shared;
use integrate_common as c;

fn python(script: &str) {
    let out = Command::new("python3").arg("-c").arg(script).output().expect("python3");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn integrate(stage1: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .arg("integrate")
        .arg(shared("seed/simulation.phil"))
        .arg(shared("seed/sim_processing.phil"))
        .arg(stage1)
        .arg(out)
        .args(["--numdev", "4", "--hopInputName", "pred", "--cmdLinePhil", "threshold=1e2"])
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
    )
}

#[test]
fn the_users_phil_files_run_with_a_converted_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = c::make_dataset(tmp.path(), c::Spec { n_shots: 2, seed: 31, ..Default::default() });
    let n = ds.spec.n_px;

    // 1. As written: the mask path does not exist here.
    let out1 = tmp.path().join("out1");
    let (ok, log) = integrate(&ds.stage1, &out1, &[]);
    assert!(!ok);
    assert!(
        log.contains("spotfinder.lookup.mask")
            && log.contains("hotborder_rect_lowres_ring1p9_mask4_psana.mask"),
        "{log}"
    );
    assert!(!out1.exists(), "nothing may be written on a configuration error");

    // 2. A DIALS-style pickle.
    let pickle = tmp.path().join("mask.pickle");
    std::fs::write(&pickle, b"\x80\x02cscitbx_array_family_flex_ext\nbool\nq\x00").unwrap();
    let arg = format!("spotfinder.lookup.mask={}", pickle.display());
    let (ok, log) = integrate(&ds.stage1, &tmp.path().join("out2"), &[&arg]);
    assert!(!ok);
    assert!(log.contains("pickle") && log.contains("np.save"), "{log}");

    // 3. A mask written by numpy: everything trusted but a strip of 40 columns.
    let npy = tmp.path().join("mask.npy");
    python(&format!(
        "import numpy as np; m = np.ones((1, {n}, {n}), bool); m[:, :, :40] = False; np.save('{}', m)",
        npy.display()
    ));
    let arg = format!("spotfinder.lookup.mask={}", npy.display());
    let out3 = tmp.path().join("out3");
    let (ok, log) = integrate(&ds.stage1, &out3, &[&arg]);
    assert!(ok, "{log}");
    println!("{log}");
    assert!(log.contains("predicted 2 of 2 shots"), "{log}");
    assert!(out3.join("pred.parquet").is_file() && out3.join("pred.csv").is_file());
    let store = Store::open(&out3).unwrap();
    let q = store
        .query("SELECT count(*) AS n, count(ave_wavelen) AS n_lam, count(*) FILTER (WHERE is_strong) AS n_strong FROM predictions")
        .unwrap();
    let b = &q.batches[0];
    let get = |i: usize| b.column(i).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
    assert!(get(0) > 50, "{} predictions", get(0));
    assert_eq!(get(1), get(0), "laue mode fills ave_wavelen");
    assert!(get(2) > 10);
    let q = store
        .query("SELECT count(*) FILTER (WHERE xyzobs_px_value[1] < 40), count(*) FROM reflections")
        .unwrap();
    let b = &q.batches[0];
    let in_strip = b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
    let all = b.column(1).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
    assert_eq!(in_strip, 0, "strong spots in the masked strip");
    assert!(all > 20);
}

#[test]
fn masks_from_numpy_and_h5py_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().display();
    python(&format!(
        "import numpy as np, h5py\n\
         rng = np.random.default_rng(3)\n\
         m = rng.random((2, 5, 7)) > 0.3\n\
         np.save('{d}/m.npy', m)\n\
         np.save('{d}/f.npy', np.asfortranarray(m[0].astype(np.float32)))\n\
         with h5py.File('{d}/m.h5', 'w') as f: f['mask'] = m\n\
         with h5py.File('{d}/u.h5', 'w') as f:\n    f['panel_0'] = m[0].astype(np.uint8)\n    f['panel_1'] = m[1].astype(np.uint8)\n\
         open('{d}/m.txt', 'w').write(''.join('1' if v else '0' for v in m.ravel()))\n"
    ));
    let want: Vec<bool> =
        std::fs::read_to_string(tmp.path().join("m.txt")).unwrap().chars().map(|c| c == '1').collect();
    for f in ["m.npy", "m.h5", "u.h5"] {
        let m = read_mask(tmp.path().join(f)).unwrap();
        assert_eq!(m.panels.len(), 2, "{f}");
        assert_eq!((m.panels[0].n_slow, m.panels[0].n_fast), (5, 7));
        let got: Vec<bool> = m.panels.iter().flat_map(|p| p.trusted.clone()).collect();
        assert_eq!(got, want, "{f}");
    }
    let f = read_mask(tmp.path().join("f.npy")).unwrap();
    assert_eq!(f.panels[0].trusted, want[..35].to_vec(), "Fortran-order float mask");
    let e = read_mask(tmp.path().join("m.txt")).unwrap_err().to_string();
    assert!(e.contains("not a mask file"), "{e}");
}

#[test]
fn the_mask_can_be_dropped_from_the_command_line() {
    use diffbragg::predict::integrate::{load_configs, IntegrateOptions, Settings};
    let mut o = IntegrateOptions::new(
        &shared("seed/simulation.phil"),
        &shared("seed/sim_processing.phil"),
        Path::new("/nonexistent/stage1"),
        Path::new("/nonexistent/out"),
    );
    o.cmdline_phil = vec!["threshold=1e2".into(), "spotfinder.lookup.mask=None".into()];
    let (pred, proc, _) = load_configs(&o).unwrap();
    assert_eq!(pred.predictions.threshold, 1e2);
    assert!(proc.spotfinder.lookup.mask.is_none());
    let s = Settings::from_configs(&pred, &proc).unwrap();
    assert!(s.strong.mask.is_none());
    assert_eq!(s.strong.dispersion.global_threshold, 10.0, "the last of the two global_threshold lines wins");
    assert_eq!(s.strong.dispersion.kernel_size, [2, 2]);
    assert_eq!((s.strong.d_min, s.strong.d_max), (Some(2.0), Some(30.0)));
    assert_eq!(s.strong.label.min_spot_size, 2);
    assert!(s.predict.laue && s.predict.zero_thickness);
    assert_eq!(s.matching.qcut, 0.0025);
    assert_eq!(s.weak_fraction, 0.7);
}
