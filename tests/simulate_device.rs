//! `diffbragg simulate --device`, each run in its own temp dir:
//! * `auto` (the default) says on stderr what it chose and records it in the
//!   HDF5 root attributes `diffbragg_backend`/`diffbragg_device` (read back with
//!   h5py); its image equals `--device cpu`'s (bit for bit when it fell back to
//!   the CPU, to 1e-6 relative on a GPU);
//! * without a GPU, `--device cuda` is one clear error and writes nothing;
//! * the nanoBragg sub-pixel convention runs on the CPU kernel only: `auto`
//!   takes the CPU and says why, `cuda` is an error before any work;
//! * no staging or temporary file is left next to the outputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diffbragg::gpu::cuda;

fn gpu_present() -> bool {
    matches!(cuda::device_count(), Ok(n) if n > 0)
}

fn r(name: &str) -> PathBuf {
    diffbragg::testutil::shared("reference").join(name)
}

/// The shot_00_tophat reference case on a 96×96 box (fast).
fn args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["simulate", "--expt"].map(String::from).to_vec();
    v.push(r("shot_00_tophat.expt").display().to_string());
    v.extend(["--spectrum".into(), r("shot_00_tophat.lam").display().to_string()]);
    v.extend(["--hkl".into(), r("lyso_P1.hkl.gz").display().to_string()]);
    v.extend(["--mosaic-umats".into(), r("shot_00_tophat_umats.txt").display().to_string()]);
    v.extend(
        ["--ncells", "18", "22", "30", "--shape", "tophat", "--no-progress", "--fluence", "5e24"]
            .map(String::from),
    );
    v.extend(["--roi", "600", "695", "650", "745"].map(String::from));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run(dir: &Path, a: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffbragg")).current_dir(dir).args(a).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn image(path: &Path) -> Vec<f64> {
    let src = diffbragg::image::open_image_source(path).unwrap();
    let im = src.read_image(0).unwrap();
    (0..im.n_panels()).flat_map(|p| im.panel(p).data().to_vec()).collect()
}

/// (diffbragg_backend, diffbragg_device) of an HDF5 file, read by h5py.
fn backend_attrs(path: &Path) -> (String, String) {
    let script = format!(
        "import h5py\nf = h5py.File({:?}, 'r')\nprint(f.attrs['diffbragg_backend'])\nprint(f.attrs['diffbragg_device'])\nassert 'dxtbx_detector_string' in f['images'].attrs",
        path.to_str().unwrap()
    );
    let o = Command::new("python3").arg("-c").arg(script).output().unwrap();
    assert!(o.status.success(), "h5py: {}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut l = text.lines();
    (l.next().unwrap().to_string(), l.next().unwrap().to_string())
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn auto_records_the_backend_and_matches_cpu() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let gpu = gpu_present();
    let a = run(d, &args(&["--out", "auto.h5"]));
    assert!(a.status.success(), "{}", stderr(&a));
    if !gpu {
        assert!(stderr(&a).contains("--device auto: CUDA not usable"), "{}", stderr(&a));
    }
    let want = if gpu { "cuda" } else { "cpu" };
    let (name, device) = backend_attrs(&d.join("auto.h5"));
    assert_eq!(name, want);
    assert!(device.starts_with(want), "{device}");
    assert!(String::from_utf8_lossy(&a.stdout).contains(&format!(" on {device}:")));

    let c = run(d, &args(&["--device", "cpu", "--out", "cpu.h5"]));
    assert!(c.status.success(), "{}", stderr(&c));
    assert_eq!(backend_attrs(&d.join("cpu.h5")).0, "cpu");
    let (x, y) = (image(&d.join("auto.h5")), image(&d.join("cpu.h5")));
    let max = y.iter().cloned().fold(0.0, f64::max);
    assert!(max > 10.0, "the box must hold a spot (max {max})");
    if gpu {
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs() + 1e-12 * max));
    } else {
        assert_eq!(x, y);
    }
    assert_eq!(files(d), ["auto.expt", "auto.h5", "cpu.expt", "cpu.h5"]);
}

#[test]
fn cuda_without_a_gpu_writes_nothing() {
    if gpu_present() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let o = run(d, &args(&["--device", "cuda", "--out", "x.h5"]));
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("--device cuda") && err.contains("no CUDA driver"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(files(d).is_empty(), "{:?}", files(d));
}

#[test]
fn the_nanobragg_convention_is_cpu_only() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let nb = ["--subpixel-factors", "nanobragg", "--oversample", "2"];
    let o = run(d, &args(&[&nb[..], &["--device", "cuda", "--out", "x.h5"]].concat()));
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("--device cuda") && err.contains("--subpixel-factors nanobragg"), "{err}");
    assert!(err.contains("CPU kernel only"), "{err}");
    assert!(files(d).is_empty(), "{:?}", files(d));

    let o = run(d, &args(&[&nb[..], &["--out", "nb.h5"]].concat()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--device auto: --subpixel-factors nanobragg"), "{}", stderr(&o));
    assert_eq!(backend_attrs(&d.join("nb.h5")).0, "cpu");
}
