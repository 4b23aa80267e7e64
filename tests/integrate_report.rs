//! The integrate report: the `predict_*` SQL views agree with the run's own
//! counts, the nearest-prediction distances recomputed from the tables (in
//! laue mode, through the stored λ_spot and s1) reproduce the run's matches
//! exactly, and the figures are written.

mod integrate_common;

use diffbragg::dist::SingleProcess;
use diffbragg::predict::integrate::{run, IntegrateOptions};
use diffbragg::predict::report::{load, write_report};
use integrate_common as c;

#[test]
fn report_views_distances_and_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let ds =
        c::make_dataset(tmp.path(), c::Spec { n_shots: 2, seed: 53, bandwidth: 0.015, ..Default::default() });
    let pred = c::write_pred_phil(
        tmp.path(),
        "threshold = 50\nqcut = 0.003\nlabel_weak_col = rlp\nweak_fraction = 0.7\nlaue_mode = True",
    );
    let proc = c::write_proc_phil(tmp.path(), "");
    let out = tmp.path().join("out");
    let s = run(&IntegrateOptions::new(&pred, &proc, &ds.stage1, &out), &SingleProcess).unwrap();
    assert_eq!(s.n_predicted, 2);

    let r = load(&out).unwrap();
    assert_eq!(r.shots.len(), 2);
    for row in &s.rows {
        let v = r.shots.iter().find(|x| x.shot_id == row.shot_id).unwrap();
        assert_eq!(v.n_pred as usize, row.stats.n_strong_pred + row.stats.n_weak_kept);
        assert_eq!(v.n_strong_pred as usize, row.stats.n_strong_pred);
        assert_eq!(v.n_strong_spots as usize, row.stats.n_strong_spots);
        assert_eq!(v.n_strong_matched as usize, row.stats.n_strong_matched);
    }
    let n_spots: usize = s.rows.iter().map(|x| x.stats.n_strong_spots).sum();
    let n_matched: usize = s.rows.iter().map(|x| x.stats.n_strong_matched).sum();
    assert_eq!(r.nearest.len(), n_spots);
    let within = r.nearest.iter().flatten().filter(|&&d| d <= r.qcut).count();
    assert_eq!(within, n_matched, "recomputed distances must reproduce the run's matches");
    assert!(n_matched > 20 && n_matched < n_spots + 1);

    let files = write_report(&out, &out.join("report")).unwrap();
    assert_eq!(files.len(), 4);
    for f in &files[..3] {
        let bytes = std::fs::read(f).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut rd = dec.read_info().unwrap();
        let mut buf = vec![0; rd.output_buffer_size()];
        let info = rd.next_frame(&mut buf).unwrap();
        let ink = buf[..info.buffer_size()].iter().filter(|&&b| b != 255).count();
        assert!(ink > 2000, "{} looks empty", f.display());
    }
    // To look at the figures: INTEGRATE_REPORT_KEEP=/some/dir cargo test --test integrate_report
    if let Ok(keep) = std::env::var("INTEGRATE_REPORT_KEEP") {
        std::fs::create_dir_all(&keep).unwrap();
        for f in &files {
            std::fs::copy(f, std::path::Path::new(&keep).join(f.file_name().unwrap())).unwrap();
        }
    }
    let txt = std::fs::read_to_string(&files[3]).unwrap();
    assert!(txt.contains("n_strong_pred") && txt.contains("strong spots within qcut"), "{txt}");
    // Not an integrate folder: a clear error.
    let e = load(&ds.stage1).unwrap_err().to_string();
    assert!(e.contains("integrate_settings.json"), "{e}");
}
