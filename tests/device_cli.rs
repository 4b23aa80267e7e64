//! `--device` on the command line: `cuda` without a GPU stops hopper,
//! ens-hopper and the benches with one clear error before any output (no
//! panic, no fallback); `auto` takes the CPU when no GPU is visible.

mod stage1_util;

use std::path::Path;
use std::process::{Command, Output};

use diffbragg::gpu::cuda;

fn gpu_present() -> bool {
    matches!(cuda::device_count(), Ok(n) if n > 0)
}

fn run(dir: &Path, args: &[String]) -> Output {
    Command::new(stage1_util::bin()).current_dir(dir).args(args).output().unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn check_refused(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what} succeeded without a GPU: {err}");
    assert!(err.contains("--device cuda") && err.contains("CUDA"), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(!err.contains("using cpu"), "{what} fell back to the CPU: {err}");
}

#[test]
fn hopper_cuda_without_a_gpu_fails_and_auto_takes_the_cpu() {
    if gpu_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    stage1_util::small(d, 1, 3, 256, 40.0, 8);
    let phil = d.join("hopper.phil").to_string_lossy().into_owned();
    let out = d.join("out_cuda");
    let o = run(
        d,
        &[s(&["hopper", &phil, "--device", "cuda", "--cmdlinePhil"]), vec![stage1_util::outdir_arg(&out)]]
            .concat(),
    );
    check_refused(&o, "hopper");
    assert!(!out.exists(), "hopper --device cuda wrote {}", out.display());

    // auto: the CPU, said so, and recorded.
    let out = d.join("out_auto");
    let o = run(
        d,
        &[s(&["hopper", &phil, "--no-progress", "--cmdlinePhil"]), vec![stage1_util::outdir_arg(&out)]]
            .concat(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("--device auto: CUDA not usable"), "{err}");
    let store = diffbragg::store::Store::open(&out).unwrap();
    let b = store.read_columns(diffbragg::store::Table::ShotParams, &["backend"], None).unwrap();
    let names: Vec<String> = b
        .iter()
        .flat_map(|b| {
            use arrow::array::{Array, AsArray};
            let c = b.column(0).as_string::<i32>().clone();
            (0..c.len()).map(move |i| c.value(i).to_string())
        })
        .collect();
    assert_eq!(names, ["cpu"]);
}

#[test]
fn ens_hopper_and_benches_cuda_without_a_gpu_fail() {
    if gpu_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let o = diffbragg::stage2::synth::SynthOptions { n_shots: 2, d_min: 6.0, ..Default::default() };
    let t = diffbragg::stage2::synth::make(&d.join("data"), &o).unwrap();
    let out = d.join("out");
    let args = [
        s(&["ens-hopper"]),
        vec![t.store.to_string_lossy().into_owned(), "--outdir".into(), out.to_string_lossy().into_owned()],
        s(&["--device", "cuda", "--quiet", "--cmdlinePhil", "fix.Fhkl=False", "space_group=P43212"]),
        vec![format!("simulator.structure_factors.default_F={}", t.default_f)],
    ]
    .concat();
    let r = run(d, &args);
    check_refused(&r, "ens-hopper");
    assert!(!out.exists(), "ens-hopper --device cuda wrote {}", out.display());

    for b in ["stage1", "stage2"] {
        let r = run(d, &s(&["bench", b, "--device", "cuda", "--shots", "1"]));
        check_refused(&r, &format!("bench {b}"));
    }
    let r = run(d, &s(&["bench", "stage2", "--shots", "2", "--evals", "1", "--keep", "b2"]));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(text.contains("backend: cpu") && text.contains("s per shot-evaluation"), "{text}");
}
