//! `predictions.use_diffBragg_mtz=True`: the predicted indices are those of the
//! MTZ (expanded to P1 with Bijvoet mates), every one with the mean |F| of the
//! file. An MTZ holding only the even-l reflections of P 43 21 2 (l parity is
//! kept by every operation), with mean |F| equal to the flat amplitude,
//! predicts exactly the even-l spots of the flat run.

mod integrate_common;

use std::collections::BTreeSet;

use diffbragg::crystal::UnitCell;
use diffbragg::dist::SingleProcess;
use diffbragg::io::dials_refl::read_refl;
use diffbragg::io::mtz::Mtz;
use diffbragg::predict::integrate::{run, IntegrateOptions};
use diffbragg::symmetry::miller::unique_reflections;
use diffbragg::symmetry::SpaceGroup;
use integrate_common as c;

fn hkl_set(out: &std::path::Path) -> BTreeSet<[i32; 3]> {
    let r = read_refl(out.join("expts_and_refls/rank0_preds.refl")).unwrap();
    r.get_miller("miller_index").unwrap().iter().copied().collect()
}

#[test]
fn mtz_index_set_with_its_mean_amplitude() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = c::make_dataset(tmp.path(), c::Spec { n_shots: 1, seed: 83, ..Default::default() });
    let cell = UnitCell::from_array(c::CELL);
    let sg = SpaceGroup::from_hall(c::HALL).unwrap();
    let hkl: Vec<[i32; 3]> =
        unique_reflections(&cell, &sg, 2.0, false).unwrap().into_iter().filter(|h| h[2] % 2 == 0).collect();
    // |F| = 900, 1100, 900, ...: the mean is the flat amplitude 1000 exactly (even count).
    let n = hkl.len() / 2 * 2;
    let f: Vec<f32> = (0..n).map(|i| if i % 2 == 0 { 900.0 } else { 1100.0 }).collect();
    let mut mtz = Mtz::new_merged(cell, sg, &hkl[..n], ("p", "x", "d"), 1.3);
    mtz.add_column("F", 'F', f).unwrap();
    let mtz_path = tmp.path().join("even.mtz");
    mtz.write(&mtz_path).unwrap();

    let proc = c::write_proc_phil(tmp.path(), "");
    let common = "threshold = 50\nqcut = 2\nlabel_weak_col = xyzobs.px.value\nweak_fraction = 1";
    let flat_dir = tmp.path().join("flat");
    std::fs::create_dir_all(&flat_dir).unwrap();
    let pred_flat = c::write_pred_phil(&flat_dir, common);
    let mtz_dir = tmp.path().join("mtz");
    std::fs::create_dir_all(&mtz_dir).unwrap();
    let pred_mtz = c::write_pred_phil(&mtz_dir, &format!("{common}\nuse_diffBragg_mtz = True"));
    std::fs::write(
        &pred_mtz,
        format!(
            "{}\nsimulator.structure_factors.mtz_name = {}\nsimulator.structure_factors.mtz_column = F\n",
            std::fs::read_to_string(&pred_mtz).unwrap(),
            mtz_path.display()
        ),
    )
    .unwrap();
    let a = run(&IntegrateOptions::new(&pred_flat, &proc, &ds.stage1, &flat_dir.join("out")), &SingleProcess)
        .unwrap();
    let b = run(&IntegrateOptions::new(&pred_mtz, &proc, &ds.stage1, &mtz_dir.join("out")), &SingleProcess)
        .unwrap();
    assert_eq!((a.n_predicted, b.n_predicted), (1, 1));
    assert!(b.notes.iter().any(|s| s.contains("mean |F| = 1000")), "{:?}", b.notes);
    let flat = hkl_set(&flat_dir.join("out"));
    let with_mtz = hkl_set(&mtz_dir.join("out"));
    assert!(with_mtz.iter().all(|h| h[2] % 2 == 0), "odd l predicted from an even-l MTZ");
    let flat_even: BTreeSet<[i32; 3]> = flat.iter().copied().filter(|h| h[2] % 2 == 0).collect();
    assert!(flat_even.len() > 30 && flat.len() > flat_even.len());
    assert_eq!(with_mtz, flat_even);
}
