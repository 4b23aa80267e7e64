//! Timing of `diffbragg integrate` on a Jungfrau-4M-sized detector (4 panels of
//! 1024 × 1024, 75 µm, 120 mm), 60 spectrum channels, one mosaic domain.
//! Ignored by default; run with
//! `cargo test --release --test integrate_perf -- --ignored --nocapture`.

mod integrate_common;

use std::time::Instant;

use diffbragg::dist::SingleProcess;
use diffbragg::kernel::{simulate_image, FhklTable};
use diffbragg::predict::integrate::{run, IntegrateOptions};
use integrate_common as c;

#[test]
#[ignore]
fn seconds_per_shot_on_a_4m_detector() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = c::Spec {
        n_shots: 2,
        seed: 71,
        n_panels: 4,
        n_px: 1024,
        pixel_mm: 0.075,
        distance_mm: 120.0,
        channels: 60,
        bandwidth: 0.004,
        ..Default::default()
    };
    let t = Instant::now();
    let ds = c::make_dataset(tmp.path(), spec);
    println!("dataset: {:.1} s", t.elapsed().as_secs_f64());
    let s = &ds.shots[0];
    let hkl = c::hkl_list(&s.cell, 2.0);
    let table = FhklTable::new(&hkl, &vec![c::FLAT_F; hkl.len()], 0.0, false).unwrap();
    let t = Instant::now();
    let img = simulate_image(&s.model(), &table).unwrap();
    let k = t.elapsed().as_secs_f64();
    println!(
        "kernel alone: {k:.2} s for {} px × 60 channels ({:.1} ns per pixel-step)",
        img.len(),
        k * 1e9 / (img.len() as f64 * 60.0)
    );
    let pred = c::write_pred_phil(
        tmp.path(),
        "threshold = 50\nqcut = 0.0025\nlabel_weak_col = rlp\nweak_fraction = 0.7\nlaue_mode = True",
    );
    let proc = c::write_proc_phil(tmp.path(), "");
    let t = Instant::now();
    let r = run(&IntegrateOptions::new(&pred, &proc, &ds.stage1, &tmp.path().join("out")), &SingleProcess)
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    for row in &r.rows {
        println!(
            "shot {}: {:.2} s, {} predictions ({} strong), {} strong spots",
            row.shot_id,
            row.stats.wall_time_s,
            row.stats.n_strong_pred + row.stats.n_weak_kept,
            row.stats.n_strong_pred,
            row.stats.n_strong_spots
        );
    }
    println!("run: {wall:.2} s for {} shots on {} threads", r.n_shots, rayon::current_num_threads());
    assert_eq!(r.n_predicted, 2);
}
