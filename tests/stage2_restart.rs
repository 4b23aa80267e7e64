//! Stage 2 kill and restart: `kill -9` in the middle of a run, then
//! `--restart`, reaches bit for bit the result of an uninterrupted run, with
//! no duplicated rows; a second run under a used tag without `--restart` is
//! refused; restarting a finished run changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type};
use diffbragg::stage2::synth::{make, SynthOptions, SynthTruth};
use diffbragg::store::{Store, Table};

fn cmd(t: &SynthTruth, out: &Path, tag: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffbragg"));
    c.arg("ens-hopper")
        .arg(&t.store)
        .arg("--outdir")
        .arg(out)
        .args(["--saveTag", tag, "--saveFreq", "8", "--maxEvals", "100", "--threads", "2"])
        .args(extra)
        .arg("--cmdlinePhil")
        .args([
            "fix.Fhkl=False",
            "fix.G=False",
            "fix.RotXYZ=True",
            "fix.Nabc=True",
            "fix.ucell=True",
            "types.G=positive",
            "sigmas.G=0.1",
            "space_group=P43212",
            "ftol=1e-14",
        ])
        .arg(format!("simulator.structure_factors.default_F={}", t.default_f))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Final F bits per (h, k, l, channel), traces (eval, f bits), final row count.
type Results = (BTreeMap<(i32, i32, i32, i32), u64>, Vec<(i32, u64)>, usize);

/// (hkl, channel) → F bits of the final rows of `tag`, and the traces' (eval → f bits).
fn results(store: &Path, tag: &str) -> Results {
    let s = Store::open(store).unwrap();
    let mut f = BTreeMap::new();
    let mut n_final_rows = 0;
    for b in s.read(Table::Fhkl, None).unwrap() {
        let t = b.column_by_name("tag").unwrap().as_string::<i32>();
        let hkl = b.column_by_name("hkl").unwrap().as_struct();
        let ch = b.column_by_name("channel").unwrap().as_primitive::<Int32Type>();
        let fv = b.column_by_name("F").unwrap().as_primitive::<Float64Type>();
        let fin = b.column_by_name("is_final").unwrap().as_boolean();
        for i in 0..b.num_rows() {
            if t.value(i) == tag && fin.value(i) {
                let c = |k: usize| hkl.column(k).as_primitive::<Int32Type>().value(i);
                assert!(
                    f.insert((c(0), c(1), c(2), ch.value(i)), fv.value(i).to_bits()).is_none(),
                    "duplicate final row"
                );
                n_final_rows += 1;
            }
        }
    }
    let mut tr = Vec::new();
    for b in s.read(Table::Traces, None).unwrap() {
        let st = b.column_by_name("stage").unwrap().as_string::<i32>();
        let ev = b.column_by_name("eval").unwrap().as_primitive::<Int32Type>();
        let fv = b.column_by_name("f").unwrap().as_primitive::<Float64Type>();
        let id = b.column_by_name("shot_id").unwrap();
        for i in 0..b.num_rows() {
            if st.value(i) == tag && id.is_null(i) {
                tr.push((ev.value(i), fv.value(i).to_bits()));
            }
        }
    }
    tr.sort();
    (f, tr, n_final_rows)
}

fn run_ok(mut c: Command) -> String {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "ens-hopper failed: {err}");
    err
}

#[test]
fn kill_and_restart_reaches_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let o = SynthOptions { n_shots: 50, seed: 5, ..Default::default() };
    let t = make(tmp.path(), &o).unwrap();
    let out = tmp.path().join("out");

    // The uninterrupted reference run.
    run_ok(cmd(&t, &out, "full", &[]));
    let (f_full, tr_full, n_full) = results(&t.store, "full");
    assert!(n_full > 100);
    assert_eq!(tr_full.len(), 100, "one trace row per evaluation");

    // The same run, killed with SIGKILL once a checkpoint past 16 evaluations exists.
    let mut child = cmd(&t, &out, "killed", &[]).spawn().unwrap();
    let t0 = Instant::now();
    let ck = out.join("checkpoints");
    let killed = loop {
        let past = std::fs::read_dir(&ck)
            .map(|rd| {
                rd.flatten().any(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.starts_with("killed_eval")
                        && n.ends_with(".ckpt")
                        && n[11..19].parse::<u32>().is_ok_and(|v| v >= 16)
                })
            })
            .unwrap_or(false);
        if let Some(st) = child.try_wait().unwrap() {
            break Err(st);
        }
        if past {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break Ok(());
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(killed.is_ok(), "the run finished before it could be killed: {killed:?}");
    let (f_part, tr_part, _) = results(&t.store, "killed");
    assert!(f_part.is_empty(), "no final rows yet");
    assert!(tr_part.len() < 100);

    // Without --restart the tag is refused.
    let o2 = cmd(&t, &out, "killed", &[]).output().unwrap();
    assert!(!o2.status.success());
    assert!(
        String::from_utf8_lossy(&o2.stderr).contains("--restart"),
        "{}",
        String::from_utf8_lossy(&o2.stderr)
    );

    // Restart and finish.
    run_ok(cmd(&t, &out, "killed", &["--restart"]));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("killed_summary.json")).unwrap()).unwrap();
    assert!(summary["resumed_from_eval"].as_u64().unwrap() >= 16, "{summary}");
    let (f_killed, tr_killed, n_killed) = results(&t.store, "killed");
    assert_eq!(n_killed, n_full);
    assert_eq!(f_killed, f_full, "restarted run differs from the uninterrupted one");
    assert_eq!(tr_killed, tr_full, "traces differ (duplicates or different values)");

    // Restarting a finished run changes nothing and duplicates nothing.
    run_ok(cmd(&t, &out, "killed", &["--restart"]));
    let (f_again, tr_again, n_again) = results(&t.store, "killed");
    assert_eq!((f_again, tr_again, n_again), (f_full, tr_full, n_full));
}
