//! Prediction ↔ strong matching and weak selection: hand-built cases (ties, several strong
//! spots on one prediction, the qcut boundary, panels, shots, weak_fraction 0/1/between), a
//! brute-force O(n·m) comparison on random points, and the reference algorithm itself
//! (scipy `cKDTree.query_ball_tree` + nearest candidate, as in `label_weak_predictions`) run in
//! Python on the same points.

use std::io::Write;
use std::process::{Command, Stdio};

use diffbragg::predict::matching::{label_weak, match_spots, select_weak, MatchColumn, MatchParams};
use diffbragg::reflections::{flags, ReflectionTable};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A table of spots at pixel positions (x, y) with panel and shot id.
fn px_table(rows: &[(f64, f64, u64, i32)]) -> ReflectionTable {
    let mut t = ReflectionTable::new(rows.len());
    t.insert("xyzobs.px.value", rows.iter().map(|r| [r.0, r.1, 0.5]).collect::<Vec<_>>()).unwrap();
    t.insert("panel", rows.iter().map(|r| r.2).collect::<Vec<_>>()).unwrap();
    t.insert("id", rows.iter().map(|r| r.3).collect::<Vec<_>>()).unwrap();
    t
}

fn rlp_table(rows: &[[f64; 3]]) -> ReflectionTable {
    let mut t = ReflectionTable::new(rows.len());
    t.insert("rlp", rows.to_vec()).unwrap();
    t.insert("xyzobs.px.value", rows.iter().map(|r| [r[0] * 1e3, r[1] * 1e3, 0.5]).collect::<Vec<_>>())
        .unwrap();
    t
}

fn matched(res: &diffbragg::predict::matching::MatchResult) -> Vec<Option<usize>> {
    res.strong_to_pred.iter().map(|m| m.map(|m| m.index)).collect()
}

#[test]
fn ties_go_to_the_lower_prediction_index() {
    // Strong spot at (10, 10); predictions at (9, 10) and (11, 10): both at distance 1.
    for order in [[(9.0, 10.0), (11.0, 10.0)], [(11.0, 10.0), (9.0, 10.0)]] {
        let pred = px_table(&[(order[0].0, order[0].1, 0, 0), (order[1].0, order[1].1, 0, 0)]);
        let strong = px_table(&[(10.0, 10.0, 0, 0)]);
        let res = match_spots(&pred, &strong, &MatchParams::pixels(2.0)).unwrap();
        assert_eq!(matched(&res), vec![Some(0)]);
        assert_eq!(res.strong_to_pred[0].unwrap().distance, 1.0);
    }
}

#[test]
fn several_strong_spots_claim_one_prediction() {
    let mut pred = px_table(&[(50.0, 50.0, 0, 0), (80.0, 80.0, 0, 0)]);
    // Strong 0 at 1.5 px, strong 1 at 0.5 px, strong 2 at 1.0 px from prediction 0.
    let mut strong = px_table(&[(51.5, 50.0, 0, 0), (50.0, 50.5, 0, 0), (49.0, 50.0, 0, 0)]);
    let res = label_weak(&mut pred, &mut strong, &MatchParams::pixels(2.0)).unwrap();
    assert_eq!(matched(&res), vec![Some(0), Some(0), Some(0)]);
    assert_eq!(res.n_claims, vec![3, 0]);
    // The prediction keeps the nearest claimant (strong 1), not the last one.
    assert_eq!(res.pred_to_strong[0].unwrap().index, 1);
    assert_eq!(pred.get_vec3("orig.xyzobs.px").unwrap(), &[[50.0, 50.5, 0.5], [-1.0, -1.0, -1.0]]);
    assert_eq!(pred.get_double("match.distance").unwrap(), &[0.5, -1.0]);
    assert_eq!(pred.get_bool("is_strong").unwrap(), &[true, false]);
    assert_eq!(pred.get_bool("is_weak").unwrap(), &[false, true]);
    assert_eq!(strong.get_bool("indexed").unwrap(), &[true, true, true]);
    assert!(strong.get_size("flags").unwrap().iter().all(|&f| f & flags::INDEXED != 0));
}

#[test]
fn qcut_boundary_is_inclusive() {
    // 3-4-5 triangle: distances 5 (exactly representable) and just above.
    let pred = px_table(&[(10.0, 10.0, 0, 0)]);
    let strong = px_table(&[(13.0, 14.0, 0, 0), (13.0, 14.000001, 0, 0), (7.0, 6.0, 0, 0)]);
    let res = match_spots(&pred, &strong, &MatchParams::pixels(5.0)).unwrap();
    assert_eq!(matched(&res), vec![Some(0), None, Some(0)]);
    // rlp: a 3-4-5 triangle scaled by 1/2048 so every value is exact in binary: |ΔS| =
    // 0.625/256 ≈ 0.00244 Å⁻¹, a typical qcut.
    let pred = rlp_table(&[[0.25, 0.125, -0.03125]]);
    let (dx, dy) = (0.375 / 256.0, 0.5 / 256.0);
    let strong = rlp_table(&[[0.25 + dx, 0.125 + dy, -0.03125], [0.25, 0.125 + dy * 1.0001, -0.03125 - dx]]);
    let res = match_spots(&pred, &strong, &MatchParams::rlp(0.625 / 256.0)).unwrap();
    assert_eq!(matched(&res), vec![Some(0), None]);
}

#[test]
fn panels_and_shots_are_kept_apart() {
    let pred = px_table(&[(10.0, 10.0, 0, 0), (10.0, 10.0, 1, 0), (10.0, 10.0, 0, 1)]);
    let strong = px_table(&[(10.5, 10.0, 1, 0), (10.5, 10.0, 0, 1), (10.5, 10.0, 2, 0), (10.5, 10.0, 0, 2)]);
    let res = match_spots(&pred, &strong, &MatchParams::pixels(1.0)).unwrap();
    assert_eq!(matched(&res), vec![Some(1), Some(2), None, None]);
    // In rlp mode panels do not matter (lab frame).
    let mut pred = rlp_table(&[[0.1, 0.1, 0.1]]);
    pred.insert("panel", vec![0u64]).unwrap();
    let mut strong = rlp_table(&[[0.1, 0.1, 0.1001]]);
    strong.insert("panel", vec![5u64]).unwrap();
    let res = match_spots(&pred, &strong, &MatchParams::rlp(0.001)).unwrap();
    assert_eq!(matched(&res), vec![Some(0)]);
    // The frame coordinate is ignored in pixel mode (SSX sequences have z = image − 0.5).
    let pred = px_table(&[(10.0, 10.0, 0, 0)]);
    let mut strong = px_table(&[(10.0, 10.0, 0, 0)]);
    strong.get_vec3_mut("xyzobs.px.value").unwrap()[0][2] = 16999.5;
    assert_eq!(matched(&match_spots(&pred, &strong, &MatchParams::pixels(1.0)).unwrap()), vec![Some(0)]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let pred = px_table(&[(10.0, 10.0, 0, 0)]);
    let mut strong = px_table(&[(10.0, 10.0, 0, 0)]);
    strong.remove("id");
    let e = match_spots(&pred, &strong, &MatchParams::pixels(1.0)).unwrap_err().to_string();
    assert!(e.contains("`id`"), "{e}");
    let e = match_spots(&pred, &px_table(&[]), &MatchParams::rlp(0.01)).unwrap_err().to_string();
    assert!(e.contains("rlp"), "{e}");
    let e = match_spots(&pred, &pred, &MatchParams::pixels(-1.0)).unwrap_err().to_string();
    assert!(e.contains("qcut"), "{e}");
    let e = match_spots(&pred, &pred, &MatchParams::pixels(1e-300)).unwrap_err().to_string();
    assert!(e.contains("too small"), "{e}");
    // Non-finite coordinates never match (and do not fail).
    let nan = px_table(&[(f64::NAN, 10.0, 0, 0)]);
    assert_eq!(matched(&match_spots(&pred, &nan, &MatchParams::pixels(1.0)).unwrap()), vec![None]);
    assert_eq!(matched(&match_spots(&nan, &pred, &MatchParams::pixels(1.0)).unwrap()), vec![None]);
    // Empty tables.
    let res = match_spots(&px_table(&[]), &pred, &MatchParams::pixels(1.0)).unwrap();
    assert_eq!(matched(&res), vec![None]);
}

#[test]
fn strong_side_gets_prediction_columns() {
    let mut pred = px_table(&[(10.0, 10.0, 0, 0), (30.0, 30.0, 0, 0)]);
    pred.insert("miller_index", vec![[1, 2, 3], [4, 5, 6]]).unwrap();
    pred.insert("xyzcal.px", vec![[10.0, 10.0, 0.5], [30.0, 30.0, 0.5]]).unwrap();
    let mut strong = px_table(&[(30.2, 30.0, 0, 0), (100.0, 100.0, 0, 0)]);
    strong.insert("flags", vec![flags::STRONG | flags::INDEXED, flags::STRONG | flags::INDEXED]).unwrap();
    label_weak(&mut pred, &mut strong, &MatchParams::pixels(1.0)).unwrap();
    assert_eq!(strong.get_miller("miller_index").unwrap(), &[[4, 5, 6], [0, 0, 0]]);
    assert_eq!(strong.get_vec3("xyzcal.px").unwrap(), &[[30.0, 30.0, 0.5], [0.0; 3]]);
    assert_eq!(strong.get_size("flags").unwrap(), &[flags::STRONG | flags::INDEXED, flags::STRONG]);
    assert_eq!(strong.get_bool("entering").unwrap(), &[false, false]);
    assert!(!strong.contains("s1"));
    assert_eq!(pred.get_int("refl_idx").unwrap(), &[0, 1]);
}

fn weak_table() -> ReflectionTable {
    // Shot 0: one strong (row 2) and weak scatters 5, 1, 3, 2; shot 1: weak 1, 2, 3 (a tie
    // pair in shot 1 at 2.0 to test ties → earlier row), and one NaN.
    let ids = vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1];
    let strong = vec![false, false, true, false, false, false, false, false, false, false];
    let scatter = vec![5.0, 1.0, 9.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0, f64::NAN];
    let mut t = ReflectionTable::new(ids.len());
    t.insert("id", ids).unwrap();
    t.insert("is_strong", strong).unwrap();
    t.insert("scatter", scatter).unwrap();
    t.insert("refl_idx", (0..10).collect::<Vec<i32>>()).unwrap();
    t
}

fn kept(t: &ReflectionTable) -> Vec<i32> {
    t.get_int("refl_idx").unwrap().to_vec()
}

#[test]
fn weak_fraction_per_shot() {
    let t = weak_table();
    assert_eq!(kept(&select_weak(&t, 0.0).unwrap()), vec![2]);
    assert_eq!(kept(&select_weak(&t, 1.0).unwrap()), (0..10).collect::<Vec<_>>());
    // 0.5: shot 0 keeps ⌊4·0.5⌋ = 2 brightest weak (rows 0, 3); shot 1 keeps ⌊5·0.5⌋ = 2
    // (rows 7 at 3.0, then 6 — the earlier of the 2.0 tie).
    assert_eq!(kept(&select_weak(&t, 0.5).unwrap()), vec![0, 2, 3, 6, 7]);
    // 0.7: ⌊2.8⌋ = 2 in shot 0 and ⌊3.5⌋ = 3 in shot 1 (rows 7, 6, 8).
    assert_eq!(kept(&select_weak(&t, 0.7).unwrap()), vec![0, 2, 3, 6, 7, 8]);
    // 0.99: ⌊3.96⌋ = 3 and ⌊4.95⌋ = 4: the NaN is ranked last and dropped.
    assert_eq!(kept(&select_weak(&t, 0.99).unwrap()), vec![0, 2, 3, 4, 5, 6, 7, 8]);
    assert!(select_weak(&t, 1.5).is_err());
    let mut no_scatter = t.clone();
    no_scatter.remove("scatter");
    assert!(select_weak(&no_scatter, 0.5).unwrap_err().to_string().contains("scatter"));
}

/// Random spots in a few shots and panels.
fn random_px(rng: &mut ChaCha8Rng, n: usize) -> Vec<(f64, f64, u64, i32)> {
    (0..n)
        .map(|_| {
            (
                rng.random_range(0.0..100.0),
                rng.random_range(0.0..100.0),
                rng.random_range(0..2),
                rng.random_range(0..2),
            )
        })
        .collect()
}

#[test]
fn grid_search_equals_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..5 {
        let p = random_px(&mut rng, 2000);
        let s = random_px(&mut rng, 1500);
        let qcut = rng.random_range(0.5..6.0);
        let res = match_spots(&px_table(&p), &px_table(&s), &MatchParams::pixels(qcut)).unwrap();
        for (j, sj) in s.iter().enumerate() {
            let mut best: Option<(f64, usize)> = None;
            for (i, pi) in p.iter().enumerate() {
                if pi.2 != sj.2 || pi.3 != sj.3 {
                    continue;
                }
                let d = ((pi.0 - sj.0).powi(2) + (pi.1 - sj.1).powi(2)).sqrt();
                if d <= qcut && best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, i));
                }
            }
            assert_eq!(res.strong_to_pred[j].map(|m| m.index), best.map(|b| b.1), "strong {j}");
        }
        assert!(res.n_strong_predictions() > 100);
    }
}

/// The reference algorithm (simtbx `label_weak_predictions`) in Python with scipy.
const PY_REFERENCE: &str = r#"
import sys, json
import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial import distance
d = json.load(sys.stdin)
strong, pred, q = np.array(d["strong"]), np.array(d["pred"]), d["qcut"]
strong_tree, predicted_tree = cKDTree(strong), cKDTree(pred)
cands_all = strong_tree.query_ball_tree(predicted_tree, q)
out = []
for i_idx, cands in enumerate(cands_all):
    if not cands:
        out.append(-1)
        continue
    dists = [distance.euclidean(strong_tree.data[i_idx], predicted_tree.data[c]) for c in cands]
    out.append(int(cands[int(np.argmin(dists))]))
json.dump(out, sys.stdout)
"#;

#[test]
fn rlp_matching_equals_reference_kdtree() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // rlps dense enough that most strong spots have one or more candidates within qcut.
    let mut rv = |n: usize| -> Vec<[f64; 3]> {
        (0..n)
            .map(|_| {
                [rng.random_range(-0.1..0.1), rng.random_range(-0.1..0.1), rng.random_range(-0.005..0.0)]
            })
            .collect()
    };
    let pred = rv(4000);
    let strong = rv(2000);
    let qcut = 0.0025;
    let res = match_spots(&rlp_table(&pred), &rlp_table(&strong), &MatchParams::rlp(qcut)).unwrap();
    let ours: Vec<i64> = res.strong_to_pred.iter().map(|m| m.map_or(-1, |m| m.index as i64)).collect();

    let input = serde_json::json!({"strong": strong, "pred": pred, "qcut": qcut}).to_string();
    let mut child = Command::new("python3")
        .args(["-c", PY_REFERENCE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with numpy and scipy");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed");
    let reference: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ours, reference);
    let n = ours.iter().filter(|&&i| i >= 0).count();
    eprintln!("{n} of {} strong spots matched (reference agrees)", strong.len());
    assert!(n > 100 && n < strong.len());
    assert_eq!(MatchColumn::Rlp.column_name(), "rlp");
}

#[test]
fn matching_scales_linearly() {
    // 200 000 predictions and 100 000 strong spots on 64 panels: a grid search takes well under a
    // second even in the dev profile; an O(n·m) scan would take minutes.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mk = |rng: &mut ChaCha8Rng, n: usize| -> Vec<(f64, f64, u64, i32)> {
        (0..n)
            .map(|_| (rng.random_range(0.0..500.0), rng.random_range(0.0..500.0), rng.random_range(0..64), 0))
            .collect()
    };
    let p = px_table(&mk(&mut rng, 200_000));
    let s = px_table(&mk(&mut rng, 100_000));
    let t0 = std::time::Instant::now();
    let res = match_spots(&p, &s, &MatchParams::pixels(2.0)).unwrap();
    let dt = t0.elapsed().as_secs_f64();
    eprintln!("matched {} in {dt:.3} s", res.n_strong_predictions());
    assert!(dt < 10.0);
}
