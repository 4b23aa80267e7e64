//! Where the spectrum comes from: the stage-1 `spectra` rows when present;
//! without them (and `spectrum_from_imageset=True`) the image file's own
//! spectrum, which here is the same spectrum, so the predictions agree, and
//! the run says which spectrum each shot used.

mod integrate_common;

use diffbragg::dist::SingleProcess;
use diffbragg::io::dials_refl::read_refl;
use diffbragg::predict::integrate::{run, IntegrateOptions};
use integrate_common as c;

#[test]
fn image_spectrum_when_stage1_wrote_none() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = c::make_dataset(tmp.path(), c::Spec { n_shots: 1, seed: 61, ..Default::default() });
    let no_spec = tmp.path().join("stage1_nospec");
    c::write_stage1_opts(&no_spec, &ds.shots, false);
    let pred = c::write_pred_phil(
        tmp.path(),
        "threshold = 50\nqcut = 2\nlabel_weak_col = xyzobs.px.value\nweak_fraction = 1",
    );
    let proc = c::write_proc_phil(tmp.path(), "");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let sa = run(&IntegrateOptions::new(&pred, &proc, &ds.stage1, &a), &SingleProcess).unwrap();
    let sb = run(&IntegrateOptions::new(&pred, &proc, &no_spec, &b), &SingleProcess).unwrap();
    assert!(sa.rows[0].spectrum.starts_with("spectra table"), "{}", sa.rows[0].spectrum);
    assert!(sb.rows[0].spectrum.starts_with("imageset") && sb.rows[0].spectrum.contains("not downsampled"));
    assert!(sb.notes.iter().any(|n| n.contains("no stage-1 `spectra` rows")), "{:?}", sb.notes);
    assert!(!sa.notes.iter().any(|n| n.contains("no stage-1 `spectra` rows")));
    let ra = read_refl(a.join("expts_and_refls/rank0_preds.refl")).unwrap();
    let rb = read_refl(b.join("expts_and_refls/rank0_preds.refl")).unwrap();
    assert_eq!(ra.nrows(), rb.nrows());
    assert_eq!(ra.get_miller("miller_index").unwrap(), rb.get_miller("miller_index").unwrap());
    for (x, y) in ra.get_vec3("xyzcal.px").unwrap().iter().zip(rb.get_vec3("xyzcal.px").unwrap()) {
        assert!((0..3).all(|k| (x[k] - y[k]).abs() < 1e-9), "{x:?} vs {y:?}");
    }
}
