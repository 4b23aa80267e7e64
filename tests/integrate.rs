//! `diffbragg integrate` on synthetic shots with known truth:
//! * every true flat-F reflection above the threshold is predicted (≥ 98 %),
//!   with the Miller index of the truth and the centroid of the noise-free
//!   truth within 0.1 px;
//! * the strong/weak labels equal those of an independent spot-finding pass
//!   on the noisy image, matched by brute force;
//! * the written experiment holds the stage-1 crystal and detector, the DIALS
//!   files and the tables agree row for row.

mod integrate_common;

use std::collections::HashMap;

use diffbragg::conventions::Vec3;
use diffbragg::dist::SingleProcess;
use diffbragg::experiment::ExperimentList;
use diffbragg::io::dials_refl::read_refl;
use diffbragg::predict::integrate::{run, IntegrateOptions};
use diffbragg::predict::label::{label_panel, LabelParams};
use diffbragg::predict::spotfinder::{threshold_panel, DispersionParams, ThresholdAlgorithm};
use integrate_common as c;

const THRESHOLD: f64 = 50.0;
const QCUT: f64 = 0.003;

/// Strong spots of the noisy image found here (same parameters as the proc
/// phil), with their rlp from the stage-1 geometry.
fn independent_strong(shot: &c::Shot) -> Vec<(usize, [f64; 2], Vec3)> {
    let params = DispersionParams {
        algorithm: ThresholdAlgorithm::Dispersion,
        kernel_size: [3, 3],
        sigma_strong: 3.0,
        global_threshold: 4.0,
        ..Default::default()
    };
    let det = shot.model_detector();
    let lam = shot.spectrum.mean_wavelength();
    let s0 = shot.beam.unit_s0() / lam;
    let mut out = vec![];
    let mut offset = 0;
    for (pi, p) in det.panels.iter().enumerate() {
        let [nf, ns] = p.image_size;
        let img = &shot.noisy[offset..offset + nf * ns];
        offset += nf * ns;
        let mask = threshold_panel(img, [ns, nf], &vec![true; nf * ns], &params).unwrap();
        let lp = LabelParams { min_spot_size: 2, ..Default::default() };
        for s in label_panel(img, &mask, [ns, nf], pi, 0, &lp).unwrap() {
            let [x, y, _] = s.centroid.position;
            let lab = p.pixel_to_lab(x, y);
            out.push((pi, [x, y], lab / lab.norm() / lam - s0));
        }
    }
    out
}

#[test]
fn predictions_recover_the_truth_and_labels_follow_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = c::make_dataset(tmp.path(), c::Spec { n_shots: 3, seed: 11, ..Default::default() });
    let pred = c::write_pred_phil(
        tmp.path(),
        &format!("threshold = {THRESHOLD}\nqcut = {QCUT}\nlabel_weak_col = rlp\nweak_fraction = 1.0"),
    );
    let proc = c::write_proc_phil(tmp.path(), "");
    let out = tmp.path().join("out");
    let opts = IntegrateOptions::new(&pred, &proc, &ds.stage1, &out);
    let summary = run(&opts, &SingleProcess).unwrap();
    assert_eq!(summary.n_shots, 3);
    assert_eq!(summary.n_predicted, 3, "{summary:?}");
    assert_eq!(summary.rows.len(), 3);

    let refl = read_refl(out.join("expts_and_refls/rank0_preds.refl")).unwrap();
    let strong_refl = read_refl(out.join("expts_and_refls/rank0_strong.refl")).unwrap();
    let expts = ExperimentList::read(out.join("expts_and_refls/rank0_preds.expt")).unwrap();
    assert_eq!(expts.len(), 3);
    let ids = refl.get_int("id").unwrap();
    let hkl = refl.get_miller("miller_index").unwrap();
    let xyz = refl.get_vec3("xyzcal.px").unwrap();
    let panel = refl.get_size("panel").unwrap();
    let is_strong = refl.get_bool("is_strong").unwrap();
    let rlp = refl.get_vec3("rlp").unwrap();

    let (mut n_true, mut n_found, mut n_cmp, mut worst) = (0, 0, 0, 0.0f64);
    let (mut n_labels, mut n_strong_labels) = (0, 0);
    for row in &summary.rows {
        let shot = ds.shots.iter().find(|s| s.shot_id == row.shot_id).unwrap();
        let id = row.exp_idx as i32;
        // The experiment written for this id is this shot, with the stage-1 models.
        let e = &expts.experiments[row.exp_idx];
        assert_eq!(e.identifier, format!("synthetic-11-{}", shot.index));
        let a_out = e.crystal.as_ref().unwrap().a_matrix();
        assert!((a_out - shot.a_matrix()).abs().max() < 1e-12, "the expt must hold the stage-1 crystal");
        let dz = e.detector.as_ref().unwrap().panels[0].origin.z - shot.detector.panels[0].origin.z;
        assert!((dz - c::DETZ_SHIFT_MM).abs() < 1e-9);
        let lam_mean = shot.spectrum.mean_wavelength();
        assert!((e.beam.as_ref().unwrap().wavelength - lam_mean).abs() < 1e-12);

        let rows: Vec<usize> = (0..refl.nrows()).filter(|&i| ids[i] == id).collect();
        assert_eq!(rows.len(), row.stats.n_strong_pred + row.stats.n_weak_kept);
        assert_eq!(row.stats.n_weak_kept, row.stats.n_weak_total, "weak_fraction = 1 keeps all");
        let mut by_hkl: HashMap<[i32; 3], Vec<usize>> = HashMap::new();
        for &i in &rows {
            by_hkl.entry(hkl[i]).or_default().push(i);
        }

        // 1. Recall and centroids against the truth.
        let truth = c::true_spots(shot, THRESHOLD);
        assert!(truth.len() > 80, "only {} true spots", truth.len());
        for t in &truth {
            n_true += 1;
            let Some(cands) = by_hkl.get(&t.hkl) else { continue };
            n_found += 1;
            if t.merged || cands.len() != 1 {
                continue;
            }
            let i = cands[0];
            assert_eq!(panel[i] as usize, t.panel);
            let d = ((xyz[i][0] - t.centroid[0]).powi(2) + (xyz[i][1] - t.centroid[1]).powi(2)).sqrt();
            worst = worst.max(d);
            n_cmp += 1;
        }
        // Every prediction is a true spot (nothing invented).
        let true_hkl: std::collections::HashSet<[i32; 3]> = truth.iter().map(|t| t.hkl).collect();
        for &i in &rows {
            assert!(true_hkl.contains(&hkl[i]), "prediction {:?} at {:?} is not a true spot", hkl[i], xyz[i]);
        }

        // 2. Strong/weak labels against an independent spot-finding pass.
        let strong = independent_strong(shot);
        let srows: Vec<usize> =
            (0..strong_refl.nrows()).filter(|&i| strong_refl.get_int("id").unwrap()[i] == id).collect();
        assert_eq!(srows.len(), strong.len(), "strong spot count");
        let mut want_strong = vec![false; refl.nrows()];
        for (_, _, q) in &strong {
            let mut best: Option<(f64, usize)> = None;
            for &i in &rows {
                let d = (Vec3::from(rlp[i]) - q).norm();
                if d <= QCUT && best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, i));
                }
            }
            if let Some((_, i)) = best {
                want_strong[i] = true;
            }
        }
        for &i in &rows {
            assert_eq!(is_strong[i], want_strong[i], "label of prediction {:?}", hkl[i]);
            n_labels += 1;
            n_strong_labels += is_strong[i] as usize;
        }
    }
    let recall = n_found as f64 / n_true as f64;
    println!(
        "truth {n_true}, predicted {n_found} ({:.2} %), centroids compared {n_cmp}, worst {worst:.4} px",
        100.0 * recall
    );
    println!("labels {n_labels}: {n_strong_labels} strong");
    assert!(recall >= 0.98, "recall {recall}");
    assert!(n_cmp as f64 >= 0.95 * n_true as f64);
    assert!(worst <= 0.1, "worst centroid offset {worst} px");
    assert!(n_strong_labels > 20 && n_strong_labels < n_labels, "both labels must occur");

    // 3. The tables agree with the files.
    let store = diffbragg::store::Store::open(&out).unwrap();
    let q = store.query("SELECT count(*) FROM predictions").unwrap();
    let n: i64 = q.batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
    assert_eq!(n as usize, refl.nrows());
    let q = store.query("SELECT count(*) FROM shot_params WHERE stage = 'stage1'").unwrap();
    let n: i64 = q.batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
    assert_eq!(n, 3, "the stage-1 rows of predicted shots are copied");
    assert!(out.join("preds_for_hopper.parquet").is_file() && out.join("preds_for_hopper.csv").is_file());
}
