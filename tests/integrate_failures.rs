//! A shot that cannot be predicted (its image file is truncated) becomes one
//! `failures` row and is left out atomically: the other shots' outputs —
//! their DIALS files with the rank-local `id`s, the expt order and the
//! `predictions` rows — are byte for byte those of a run without that shot.
//! Also checks the pixel-space matching (`label_weak_col=xyzobs.px.value`) and
//! the `weak_fraction` counts.

mod integrate_common;

use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::Int32Type;
use diffbragg::dist::SingleProcess;
use diffbragg::experiment::ExperimentList;
use diffbragg::io::dials_refl::read_refl;
use diffbragg::predict::integrate::{run, IntegrateOptions};
use diffbragg::store::Store;
use integrate_common as c;

fn predictions_text(store: &Store) -> String {
    // Every column, in a stable order, as text.
    let q = store
        .query("SELECT * EXCLUDE (shot_id), shot_id FROM predictions ORDER BY shot_id, pred_id")
        .unwrap();
    let mut s = String::new();
    for b in &q.batches {
        s.push_str(&arrow::util::pretty::pretty_format_batches(std::slice::from_ref(b)).unwrap().to_string());
    }
    s
}

#[test]
fn a_failing_shot_is_left_out_without_shifting_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = c::make_dataset(tmp.path(), c::Spec { n_shots: 4, seed: 5, ..Default::default() });
    // Truncate the image of shot 1.
    let bad = &ds.shots[1];
    let bytes = std::fs::read(&bad.h5).unwrap();
    std::fs::write(&bad.h5, &bytes[..bytes.len() / 3]).unwrap();
    // A stage-1 store without that shot.
    let good: Vec<c::Shot> = ds.shots.iter().filter(|s| s.index != 1).cloned().collect();
    let stage1_good = tmp.path().join("stage1_good");
    c::write_stage1(&stage1_good, &good);

    let pred = c::write_pred_phil(
        tmp.path(),
        "threshold = 50\nqcut = 2\nlabel_weak_col = xyzobs.px.value\nweak_fraction = 0.5",
    );
    let proc = c::write_proc_phil(tmp.path(), "");
    let out_a = tmp.path().join("with_failure");
    let out_b = tmp.path().join("without");
    let sa = run(&IntegrateOptions::new(&pred, &proc, &ds.stage1, &out_a), &SingleProcess).unwrap();
    let sb = run(&IntegrateOptions::new(&pred, &proc, &stage1_good, &out_b), &SingleProcess).unwrap();
    assert_eq!((sa.n_shots, sa.n_predicted, sa.n_failed), (4, 3, 1), "{sa:?}");
    assert_eq!((sb.n_shots, sb.n_predicted, sb.n_failed), (3, 3, 0));
    assert_eq!(sa.failures.get("image_unreadable"), Some(&1), "{:?}", sa.failures);

    // The failure row names the shot and its source.
    let store_a = Store::open(&out_a).unwrap();
    let f = store_a.query("SELECT shot_id, stage, reason, exp_name, exp_idx, message FROM failures").unwrap();
    assert_eq!(f.num_rows(), 1);
    let b = &f.batches[0];
    assert_eq!(b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), bad.shot_id);
    assert_eq!(b.column(1).as_string::<i32>().value(0), "predict");
    assert_eq!(b.column(2).as_string::<i32>().value(0), "image_unreadable");
    assert!(b.column(3).as_string::<i32>().value(0).ends_with("shot_1.expt"));
    assert_eq!(b.column(4).as_primitive::<Int32Type>().value(0), 0);
    assert!(b.column(5).as_string::<i32>().value(0).contains("shot_1.h5"), "the message names the file");

    // ids: 0, 1, 2 for shots 0, 2, 3 in both runs; files and tables identical.
    let ids: Vec<(i64, usize)> = sa.rows.iter().map(|r| (r.shot_id, r.exp_idx)).collect();
    assert_eq!(ids, vec![(ds.shots[0].shot_id, 0), (ds.shots[2].shot_id, 1), (ds.shots[3].shot_id, 2)]);
    assert_eq!(ids, sb.rows.iter().map(|r| (r.shot_id, r.exp_idx)).collect::<Vec<_>>());
    for f in ["rank0_preds.refl", "rank0_strong.refl"] {
        let a = std::fs::read(out_a.join("expts_and_refls").join(f)).unwrap();
        let b = std::fs::read(out_b.join("expts_and_refls").join(f)).unwrap();
        assert!(a == b, "{f} differs between the runs");
    }
    assert_eq!(predictions_text(&store_a), predictions_text(&Store::open(&out_b).unwrap()));

    // Within a run: refl rows of id k = the predictions of the shot at expt index k.
    let refl = read_refl(out_a.join("expts_and_refls/rank0_preds.refl")).unwrap();
    let expts = ExperimentList::read(out_a.join("expts_and_refls/rank0_preds.expt")).unwrap();
    assert_eq!(expts.len(), 3);
    let rid = refl.get_int("id").unwrap();
    for r in &sa.rows {
        let shot = ds.shots.iter().find(|s| s.shot_id == r.shot_id).unwrap();
        assert_eq!(expts.experiments[r.exp_idx].identifier, format!("synthetic-5-{}", shot.index));
        assert_eq!(refl.identifiers.get(&(r.exp_idx as u64)), Some(&expts.experiments[r.exp_idx].identifier));
        let n_refl = rid.iter().filter(|&&i| i == r.exp_idx as i32).count();
        let q = store_a
            .query(&format!("SELECT count(*) FROM predictions WHERE shot_id = {}", r.shot_id))
            .unwrap();
        let n_tab = q.batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        assert_eq!(n_refl as i64, n_tab);
        assert_eq!(n_refl, r.stats.n_strong_pred + r.stats.n_weak_kept);
        // weak_fraction = 0.5 keeps ⌊n_weak/2⌋ weak predictions.
        assert_eq!(r.stats.n_weak_kept, r.stats.n_weak_total / 2);
        assert!(r.stats.n_strong_pred > 10, "pixel-space matching found {} strong", r.stats.n_strong_pred);
    }
    // Strong spots of the failed shot are not in `reflections`; the others' are.
    let q =
        store_a.query(&format!("SELECT count(*) FROM reflections WHERE shot_id = {}", bad.shot_id)).unwrap();
    assert_eq!(q.batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), 0);
    let q = store_a.query("SELECT count(DISTINCT shot_id) FROM shot_params").unwrap();
    assert_eq!(q.batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), 3);
    let q = store_a.query("SELECT n_shots, n_failed FROM predict_summary").unwrap();
    let b = &q.batches[0];
    assert_eq!(b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), 3);
    assert_eq!(b.column(1).as_any().downcast_ref::<Int64Array>().unwrap().value(0), 1);
    assert!(b.column(0).is_valid(0));

    // An empty stage-1 store or a missing folder: one clear error, nothing written.
    let empty = tmp.path().join("empty_stage1");
    Store::create(&empty, 0, true).unwrap();
    let out_c = tmp.path().join("never");
    let e = run(&IntegrateOptions::new(&pred, &proc, &empty, &out_c), &SingleProcess).unwrap_err();
    assert!(e.to_string().contains("no stage-1 results"), "{e}");
    let e = run(&IntegrateOptions::new(&pred, &proc, &tmp.path().join("nope"), &out_c), &SingleProcess)
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(!out_c.exists());

    // A rerun into the same folder is refused (no duplicate rows).
    let e = run(&IntegrateOptions::new(&pred, &proc, &ds.stage1, &out_a), &SingleProcess).unwrap_err();
    assert!(e.to_string().contains("already holds predictions"), "{e}");
}
