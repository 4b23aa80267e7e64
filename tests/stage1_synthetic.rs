//! Stage 1 recovers a synthetic crystal: the acceptance test of the stage-1
//! issue on a small subset (CI) and on the full 20-shot dataset (`--ignored`,
//! run in release by scripts/test.sh).
//!
//! Data: Poisson + readout noise, spiky SASE spectra stored in the image files
//! and read back with `spectrum_from_imageset`, starting models misoriented by
//! 0.05–0.1°, cell +1 %, `init.Nabc` = 1.5 × truth, `init.G` unset (least
//! squares). Criteria: RMS errors orientation ≤ 0.005°, cell edges ≤ 0.05 %,
//! N ≤ 5 %, G ≤ 2 %, and each RMS error within 2× the RMS reported σ.

mod stage1_util;

use diffbragg::store::Store;
use diffbragg::synth::{rms, score, score_summary, ShotScore};

fn assert_recovered(s: &[ShotScore], n: usize) {
    println!("{}", score_summary(s));
    assert_eq!(s.len(), n, "every shot refined");
    for x in s {
        assert!(x.status.starts_with("converged"), "shot {} ended {}", x.shot_id, x.status);
    }
    let o = rms(s.iter().map(|x| x.orient_deg));
    let so = rms(s.iter().map(|x| x.sigma_orient_deg));
    assert!(o <= 0.005, "orientation RMS {o}°");
    assert!(o <= 2.0 * so, "orientation RMS {o}° vs σ {so}°");
    for k in 0..3 {
        let e = rms(s.iter().map(|x| x.cell_rel[k]));
        let se = rms(s.iter().map(|x| x.sigma_cell_rel[k]));
        assert!(e <= 5e-4, "cell edge {k} RMS {e}");
        assert!(e <= 2.0 * se, "cell edge {k} RMS {e} vs σ {se}");
        let e = rms(s.iter().map(|x| x.ncells_rel[k]));
        let se = rms(s.iter().map(|x| x.sigma_ncells_rel[k]));
        assert!(e <= 0.05, "N{k} RMS {e}");
        assert!(e <= 2.0 * se, "N{k} RMS {e} vs σ {se}");
    }
    let g = rms(s.iter().map(|x| x.g_rel));
    let sg = rms(s.iter().map(|x| x.sigma_g_rel));
    assert!(g <= 0.02, "G RMS {g}");
    assert!(g <= 2.0 * sg, "G RMS {g} vs σ {sg}");
    // The starting models really were off.
    assert!(s.iter().all(|x| x.start_orient_deg >= 0.05 && x.start_orient_deg <= 0.1));
}

#[test]
fn recovers_a_small_synthetic_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let truth = stage1_util::small(d, 3, 11, 320, 45.0, 20);
    let out = d.join("out");
    let cfg = stage1_util::config(&d.join("hopper.phil"), &[stage1_util::outdir_arg(&out)]);
    let sum = stage1_util::run_stage1(cfg);
    assert_eq!((sum.n_refined, sum.n_failed), (3, 0));
    let s = score(&truth, &Store::open(&out).unwrap()).unwrap();
    assert_recovered(&s, 3);
}

/// The full acceptance run: 20 shots, 1024² detector, 50 channels. Slow in
/// the dev profile; scripts/test.sh runs it in release.
#[test]
#[ignore]
fn recovers_the_full_synthetic_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let truth = stage1_util::small(d, 20, 2024, 1024, 100.0, 50);
    let out = d.join("out");
    let cfg = stage1_util::config(&d.join("hopper.phil"), &[stage1_util::outdir_arg(&out)]);
    let t0 = std::time::Instant::now();
    let sum = stage1_util::run_stage1(cfg);
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!((sum.n_refined, sum.n_failed), (20, 0));
    let store = Store::open(&out).unwrap();
    let s = score(&truth, &store).unwrap();
    let q = store.query("SELECT median(wall_time_s), median(n_evals) FROM shot_params").unwrap();
    println!("{} s for 20 shots ({:.2} s/shot wall); {:?}", wall, wall / 20.0, q.batches);
    assert_recovered(&s, 20);
}
