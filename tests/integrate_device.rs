//! `diffbragg integrate` and its kernel backend (`--device`):
//! * through the `Backend` trait: a backend that wraps the CPU kernel under
//!   its own name, counting calls, gives exactly the tables and DIALS files of
//!   `--device cpu`; it is called once per shot for the image and once more in
//!   laue mode (the λ̄ pass), and its name fills the `backend` column of every
//!   `predictions` row and of every summary row;
//! * without a GPU, `--device cuda` is one clear error and writes nothing, and
//!   `--device auto` falls back to the CPU, says so, and records `cpu`;
//! * a `predictions` file of schema version 1 (no `backend`) still reads, with
//!   null backends.

mod integrate_common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Array, AsArray, RecordBatch};
use diffbragg::dist::SingleProcess;
use diffbragg::error::Result;
use diffbragg::gpu::{cuda, Backend, BatchOutput, CpuBackend, DeviceChoice, Mode, PixelBatch};
use diffbragg::kernel::PreparedShot;
use diffbragg::predict::integrate::{load_configs, run, run_with_backend, IntegrateOptions, Settings};
use diffbragg::store::schema::Table;
use diffbragg::store::Store;
use integrate_common as c;

fn gpu_present() -> bool {
    matches!(cuda::device_count(), Ok(n) if n > 0)
}

/// The CPU kernel under another name, with its calls counted.
struct Probe {
    calls: AtomicUsize,
}

impl Backend for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn describe(&self) -> String {
        "probe (the CPU kernel, counted)".into()
    }
    fn evaluate(
        &self,
        shots: &[&PreparedShot<'_>],
        pixels: &PixelBatch,
        mode: Mode,
        weights: Option<&[f64]>,
    ) -> Result<BatchOutput> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        CpuBackend.evaluate(shots, pixels, mode, weights)
    }
}

fn predictions(dir: &Path) -> Vec<RecordBatch> {
    Store::open(dir).unwrap().read(Table::Predictions, None).unwrap()
}

/// Every `backend` value of the predictions (None for null).
fn backends(batches: &[RecordBatch]) -> Vec<Option<String>> {
    let mut v = vec![];
    for b in batches {
        let a = b.column_by_name("backend").expect("backend column").as_string::<i32>();
        v.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i).to_string())));
    }
    v
}

/// The batches without their `backend` column.
fn without_backend(batches: &[RecordBatch]) -> Vec<RecordBatch> {
    batches
        .iter()
        .map(|b| {
            let keep: Vec<usize> =
                (0..b.num_columns()).filter(|&i| b.schema().field(i).name() != "backend").collect();
            b.project(&keep).unwrap()
        })
        .collect()
}

#[test]
fn predictions_go_through_the_backend_and_record_it() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = c::Spec { n_shots: 2, seed: 41, n_px: 320, bandwidth: 0.015, ..Default::default() };
    let ds = c::make_dataset(tmp.path(), spec);
    let proc = c::write_proc_phil(tmp.path(), "");
    for laue in [true, false] {
        let d = tmp.path().join(format!("laue_{laue}"));
        std::fs::create_dir_all(&d).unwrap();
        let pred = c::write_pred_phil(
            &d,
            &format!(
                "threshold = 50\nqcut = 0.004\nlabel_weak_col = rlp\nweak_fraction = 0.5\nlaue_mode = {}",
                if laue { "True" } else { "False" }
            ),
        );
        let mut cpu_opts = IntegrateOptions::new(&pred, &proc, &ds.stage1, &d.join("cpu"));
        cpu_opts.device = DeviceChoice::Cpu;
        let a = run(&cpu_opts, &SingleProcess).unwrap();
        assert_eq!(a.n_predicted, 2, "{a:?}");

        let opts = IntegrateOptions::new(&pred, &proc, &ds.stage1, &d.join("probe"));
        let (pc, sp, _) = load_configs(&opts).unwrap();
        let settings = Settings::from_configs(&pc, &sp).unwrap();
        let probe = Probe { calls: AtomicUsize::new(0) };
        let b = run_with_backend(&opts, &settings, &SingleProcess, &probe).unwrap();
        assert_eq!(b.n_predicted, 2);
        assert_eq!(probe.calls.load(Ordering::Relaxed), if laue { 4 } else { 2 }, "laue {laue}");

        // Same predictions, row for row, whatever the backend's name.
        let (pa, pb) = (predictions(&d.join("cpu")), predictions(&d.join("probe")));
        assert!(pa.iter().map(|b| b.num_rows()).sum::<usize>() > 20);
        assert_eq!(without_backend(&pa), without_backend(&pb));
        let ave = pb[0].column_by_name("ave_wavelen").unwrap();
        assert_eq!(ave.null_count() == 0, laue, "ave_wavelen is filled in laue mode only");
        for f in ["rank0_preds.refl", "rank0_strong.refl", "rank0_preds.expt"] {
            let read = |k: &str| std::fs::read(d.join(k).join("expts_and_refls").join(f)).unwrap();
            assert!(read("cpu") == read("probe"), "{f} differs between backends");
        }
        // The backend is recorded in every row.
        assert!(backends(&pa).iter().all(|x| x.as_deref() == Some("cpu")));
        assert!(backends(&pb).iter().all(|x| x.as_deref() == Some("probe")));
        assert!(a.rows.iter().all(|r| r.backend == "cpu"));
        assert!(b.rows.iter().all(|r| r.backend == "probe"));
        let csv = std::fs::read_to_string(d.join("probe/preds_for_hopper.csv")).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = header.iter().position(|h| *h == "backend").expect("backend column in the summary");
        let vals: Vec<String> = lines.map(|l| l.split(',').nth(col).unwrap().to_string()).collect();
        assert_eq!(vals, ["probe", "probe"]);
    }
}

fn integrate(pred: &Path, proc: &Path, stage1: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .arg("integrate")
        .args([pred, proc, stage1, out])
        .args(extra)
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn cli_device_choice_without_a_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = c::make_dataset(tmp.path(), c::Spec { n_shots: 1, seed: 43, n_px: 256, ..Default::default() });
    let pred = c::write_pred_phil(tmp.path(), "threshold = 50\nqcut = 0.004\nlabel_weak_col = rlp");
    let proc = c::write_proc_phil(tmp.path(), "");
    let gpu = gpu_present();

    // --device cuda: one error naming the flag and the cause; no output folder.
    if !gpu {
        let out = tmp.path().join("cuda");
        let (ok, _, err) = integrate(&pred, &proc, &ds.stage1, &out, &["--device", "cuda"]);
        assert!(!ok);
        assert!(err.contains("--device cuda") && err.contains("no CUDA driver"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("Error") || l.contains("error:")).count(),
            1,
            "{err}"
        );
        assert!(!out.exists(), "--device cuda without a GPU must write nothing");
    }

    // --device auto (also the default): says what it chose; rows record it.
    let out = tmp.path().join("auto");
    let (ok, stdout, err) = integrate(&pred, &proc, &ds.stage1, &out, &["--device", "auto", "--numdev", "4"]);
    assert!(ok, "{stdout}\n{err}");
    let want = if gpu { "cuda" } else { "cpu" };
    if !gpu {
        assert!(err.contains("--device auto: CUDA not usable") && err.contains("using cpu"), "{err}");
    }
    assert!(err.contains("device: rank 0/1"), "the rank → device line: {err}");
    assert!(err.contains(&format!("kernel backend: {want}")), "{err}");
    assert!(stdout.contains("--numdev 4 is ignored"), "{stdout}");
    let p = predictions(&out);
    let b = backends(&p);
    assert!(!b.is_empty() && b.iter().all(|x| x.as_deref() == Some(want)), "{b:?}");
    let settings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("integrate_settings.json")).unwrap()).unwrap();
    assert_eq!(settings["device"], "auto");
    assert_eq!(settings["backends"], serde_json::json!([want]));

    // A version-1 predictions file (before the `backend` column) reads with nulls,
    // through the store and through SQL.
    let shard = std::fs::read_dir(out.join("predictions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("rank"))
        .unwrap();
    let script = format!(
        r#"
import pyarrow.parquet as pq
t = pq.read_table({path:?})
md = dict(t.schema.metadata)
assert md[b"diffbragg.schema_version"] == b"2", md
md[b"diffbragg.schema_version"] = b"1"
t = t.drop_columns(["backend"]).replace_schema_metadata(md)
pq.write_table(t, {path:?}, compression="zstd")
"#,
        path = shard.to_str().unwrap()
    );
    let py = Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let old = predictions(&out);
    assert_eq!(without_backend(&old), without_backend(&p));
    assert!(backends(&old).iter().all(|x| x.is_none()));
    let q = Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .args(["sql", "--format", "csv"])
        .arg(&out)
        .arg("SELECT count(*) AS n, count(backend) AS with_backend FROM predictions")
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let n: usize = p.iter().map(|b| b.num_rows()).sum();
    assert_eq!(String::from_utf8_lossy(&q.stdout).trim(), format!("n,with_backend\n{n},0"));
}
