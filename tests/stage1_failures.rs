//! Failure handling and resumability: a truncated image gives one `failures`
//! row while the other shots finish; a run killed with SIGKILL and rerun ends
//! with every shot exactly once in every table; a rerun of a finished run
//! does nothing.

mod stage1_util;

use std::path::Path;
use std::time::{Duration, Instant};

use diffbragg::store::Store;

fn count(store: &Store, sql: &str) -> i64 {
    let q = store.query(sql).unwrap();
    let b = &q.batches[0];
    use arrow::array::AsArray;
    b.column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0)
}

/// Every table holds each key once.
fn assert_no_duplicates(out: &Path, n_ok: i64, n_failed: i64) {
    let s = Store::open(out).unwrap();
    assert_eq!(count(&s, "SELECT count(*) FROM shot_params"), n_ok);
    assert_eq!(count(&s, "SELECT count(DISTINCT shot_id) FROM shot_params"), n_ok);
    assert_eq!(count(&s, "SELECT count(*) FROM failures"), n_failed);
    assert_eq!(count(&s, "SELECT count(*) FROM experiments"), n_ok);
    assert_eq!(count(&s, "SELECT count(*) - count(DISTINCT (shot_id, eval)) FROM traces"), 0);
    assert_eq!(count(&s, "SELECT count(*) - count(DISTINCT (shot_id, channel)) FROM spectra"), 0);
    assert_eq!(count(&s, "SELECT count(*) - count(DISTINCT (shot_id, refl_id, model)) FROM residuals"), 0);
    assert_eq!(count(&s, "SELECT count(DISTINCT shot_id) FROM traces"), n_ok);
    assert_eq!(count(&s, "SELECT count(DISTINCT shot_id) FROM spectra"), n_ok);
}

fn dataset(d: &Path) {
    stage1_util::small(d, 10, 5, 192, 35.0, 8);
    // Truncate shot 4's image file.
    let h5 = d.join("shot_004.h5");
    let bytes = std::fs::read(&h5).unwrap();
    std::fs::write(&h5, &bytes[..bytes.len() / 2]).unwrap();
}

#[test]
fn truncated_image_is_one_failure_and_reruns_skip_done_shots() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    dataset(d);
    let out = d.join("out");
    let cfg = || stage1_util::config(&d.join("hopper.phil"), &[stage1_util::outdir_arg(&out)]);
    let s = stage1_util::run_stage1(cfg());
    assert_eq!((s.n_refined, s.n_failed), (9, 1));
    let store = Store::open(&out).unwrap();
    let q = store.query("SELECT reason, exp_name, message FROM failures").unwrap();
    use arrow::array::AsArray;
    let b = &q.batches[0];
    assert_eq!(b.column(0).as_string::<i32>().value(0), "bad_image");
    assert!(b.column(1).as_string::<i32>().value(0).ends_with("shot_004.expt"));
    assert!(b.column(2).as_string::<i32>().value(0).contains("shot_004.h5"), "the message names the file");
    assert_no_duplicates(&out, 9, 1);
    // Nothing left to do on a rerun.
    let s = stage1_util::run_stage1(cfg());
    assert_eq!((s.n_refined, s.n_failed, s.n_skipped_done), (0, 0, 10));
    assert_no_duplicates(&out, 9, 1);
}

#[test]
fn killed_run_resumes_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    dataset(d);
    let out = d.join("out");
    let args = |extra: &[&str]| {
        let mut c = std::process::Command::new(stage1_util::bin());
        c.arg("hopper")
            .arg(d.join("hopper.phil"))
            .args(["--flush-every", "1", "--threads", "1", "--no-progress"])
            .args(extra)
            .arg("--cmdlinePhil")
            .arg(stage1_util::outdir_arg(&out))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let mut child = args(&[]).spawn().unwrap();
    // Wait for the first committed shard, then kill -9.
    let t0 = Instant::now();
    let shards = |t: &str| {
        std::fs::read_dir(out.join(t))
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("rank"))
                    .count()
            })
            .unwrap_or(0)
    };
    while shards("shot_params") + shards("failures") == 0 {
        assert!(t0.elapsed() < Duration::from_secs(300), "no commit within 300 s");
        if let Some(st) = child.try_wait().unwrap() {
            panic!("stage 1 exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let s = Store::open(&out).unwrap();
    let done = count(&s, "SELECT count(*) FROM shot_params") + count(&s, "SELECT count(*) FROM failures");
    assert!(done < 10, "the run finished before it was killed ({done} shots); the test proves nothing");
    // Rerun to completion.
    let st = args(&[]).status().unwrap();
    assert!(st.success());
    assert_no_duplicates(&out, 9, 1);
    assert!(
        !out.join(".stage1-staging").exists()
            || std::fs::read_dir(out.join(".stage1-staging")).unwrap().count() == 0
    );
}
