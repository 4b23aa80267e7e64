//! `diffbragg simulate` options and errors, each run in its own temp dir.
//!
//! * Linearity of the fluence options, G, and `--nopolar` (P ≤ 1).
//! * `--spectrum-from-image`: re-simulating from our own output `.expt`/HDF5
//!   (whose spectrum is stored in the file) gives the same image.
//! * `--roi-refl`: only the padded bounding boxes of the experiment's rows.
//! * `gauss-argchk` equals `gauss` where it is not cut; real MTZs with I and
//!   I(+)/I(−) columns load; a generated mosaic runs.
//! * Bad inputs fail with one message naming the flag, file or row.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diffbragg::reflections::{Column, ReflectionTable};

fn r(name: &str) -> PathBuf {
    diffbragg::testutil::shared("reference").join(name)
}

/// The shot_00_tophat reference case (ROI, 25 channels, 10 domains), fast to render.
fn base() -> Vec<String> {
    let mut v: Vec<String> = ["simulate", "--expt"].map(String::from).to_vec();
    v.push(r("shot_00_tophat.expt").display().to_string());
    v.extend(["--spectrum".into(), r("shot_00_tophat.lam").display().to_string()]);
    v.extend(["--hkl".into(), r("lyso_P1.hkl.gz").display().to_string()]);
    v.extend(["--mosaic-umats".into(), r("shot_00_tophat_umats.txt").display().to_string()]);
    v.extend(["--ncells", "18", "22", "30", "--shape", "tophat", "--no-progress"].map(String::from));
    v
}

const ROI: [&str; 5] = ["--roi", "540", "795", "600", "855"];

fn run(dir: &Path, args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffbragg")).current_dir(dir).args(args).output().unwrap()
}

fn ok(dir: &Path, args: &[String]) {
    let o = run(dir, args);
    assert!(o.status.success(), "failed: {args:?}\n{}", String::from_utf8_lossy(&o.stderr));
}

/// Runs and expects failure; returns stderr.
fn fails(dir: &Path, args: &[String]) -> String {
    let o = run(dir, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "unexpected success: {args:?}");
    assert!(!err.contains("panicked"), "panic: {err}");
    err
}

fn with(mut v: Vec<String>, extra: &[&str]) -> Vec<String> {
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn image(path: &Path) -> Vec<f64> {
    let src = diffbragg::image::open_image_source(path).unwrap();
    let im = src.read_image(0).unwrap();
    (0..im.n_panels()).flat_map(|p| im.panel(p).data().to_vec()).collect()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let mx = b.iter().cloned().fold(0.0, f64::max);
    a.iter().zip(b).filter(|(_, &y)| y > 1e-3 * mx).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, f64::max)
}

#[test]
fn fluence_scale_and_polarization() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &with(base(), &[&ROI[..], &["--fluence", "5e24", "--out", "a.h5"]].concat()));
    ok(
        d,
        &with(base(), &[&ROI[..], &["--total-flux", "5e18", "--beamsize-mm", "1", "--out", "b.h5"]].concat()),
    );
    ok(
        d,
        &with(base(), &[&ROI[..], &["--total-flux", "2e19", "--beamsize-mm", "2", "--out", "c.h5"]].concat()),
    );
    ok(d, &with(base(), &[&ROI[..], &["--fluence", "2.5e24", "--G", "2", "--out", "g.h5"]].concat()));
    ok(d, &with(base(), &[&ROI[..], &["--fluence", "5e24", "--nopolar", "--out", "np.h5"]].concat()));
    let a = image(&d.join("a.h5"));
    assert!(a.iter().cloned().fold(0.0, f64::max) > 100.0);
    for f in ["b.h5", "c.h5", "g.h5"] {
        let m = max_rel(&image(&d.join(f)), &a);
        assert!(m < 1e-12, "{f}: {m:e}");
    }
    let np = image(&d.join("np.h5"));
    let mut ratios = a.iter().zip(&np).filter(|(x, _)| **x > 1.0).map(|(x, y)| x / y);
    assert!(ratios.all(|q| q > 0.5 && q <= 1.0 + 1e-12), "polarization factor outside (0.5, 1]");
    assert!(max_rel(&a, &np) > 1e-3, "--nopolar changed nothing");
}

#[test]
fn spectrum_from_our_own_image_round_trips() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &with(base(), &[&ROI[..], &["--fluence", "5e24", "--out", "first.h5"]].concat()));
    // Second run: the experiment and the spectrum come from the first run's outputs.
    let mut args = base();
    let i = args.iter().position(|s| s == "--expt").unwrap();
    args[i + 1] = d.join("first.expt").display().to_string();
    let j = args.iter().position(|s| s == "--spectrum").unwrap();
    args.drain(j..j + 2);
    ok(
        d,
        &with(
            args,
            &[&ROI[..], &["--spectrum-from-image", "--fluence", "5e24", "--out", "second.h5"]].concat(),
        ),
    );
    let (a, b) = (image(&d.join("first.h5")), image(&d.join("second.h5")));
    let m = max_rel(&b, &a);
    assert!(m < 1e-12, "{m:e}");
    // Mono at the beam wavelength is a different image.
    let mut mono = base();
    let j = mono.iter().position(|s| s == "--spectrum").unwrap();
    mono.drain(j..j + 2);
    ok(d, &with(mono, &[&ROI[..], &["--fluence", "5e24", "--out", "mono.h5"]].concat()));
    assert!(max_rel(&image(&d.join("mono.h5")), &a) > 1e-3);
}

#[test]
fn roi_from_a_reflection_table() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(d, &with(base(), &[&ROI[..], &["--fluence", "5e24", "--out", "box.h5"]].concat()));
    let b = image(&d.join("box.h5"));
    // Boxes around the brightest pixel and another bright one far from it.
    let nf = 1024;
    let xy = |i: usize| ((i % nf) as i32, (i / nf) as i32);
    let i1 = (0..b.len()).max_by(|&i, &j| b[i].total_cmp(&b[j])).unwrap();
    let (x1, y1) = xy(i1);
    let i2 = (0..b.len())
        .filter(|&i| {
            let (x, y) = xy(i);
            (x - x1).abs() > 40 || (y - y1).abs() > 40
        })
        .max_by(|&i, &j| b[i].total_cmp(&b[j]))
        .unwrap();
    let (x2, y2) = xy(i2);
    assert!(b[i2] > 1.0);
    let boxes = [[x1 - 10, x1 + 10, y1 - 5, y1 + 7, 0, 1], [x2 - 3, x2 + 4, y2 - 15, y2 + 15, 0, 1]];
    // Rows of experiment 0 (two boxes) and of another experiment (ignored).
    let mut tab = ReflectionTable::new(3);
    tab.insert("bbox", Column::Int6(vec![boxes[0], boxes[1], [0, 50, 0, 50, 0, 1]])).unwrap();
    tab.insert("panel", Column::Size(vec![0, 0, 0])).unwrap();
    tab.insert("id", Column::Int(vec![0, 0, 1])).unwrap();
    diffbragg::io::dials_refl::write_refl(d.join("r.refl"), &tab).unwrap();
    ok(
        d,
        &with(base(), &["--fluence", "5e24", "--roi-refl", "r.refl", "--roi-pad", "2", "--out", "refl.h5"]),
    );
    let a = image(&d.join("refl.h5"));
    // Padded by 2 on each side (half-open x0..x1, y0..y1).
    let inside = |i: usize| {
        let (x, y) = xy(i);
        boxes.iter().any(|q| (q[0] - 2..q[1] + 2).contains(&x) && (q[2] - 2..q[3] + 2).contains(&y))
    };
    let mut n_inside = 0;
    for i in 0..a.len() {
        if inside(i) {
            n_inside += 1;
            assert_eq!(a[i], b[i], "pixel {i}");
        } else {
            assert_eq!(a[i], 0.0, "pixel {i} outside the boxes");
        }
    }
    assert_eq!(n_inside, 24 * 16 + 11 * 34);
    assert!(a[i1] > 100.0 && a[i2] > 1.0, "the boxes hold no signal");
}

#[test]
fn other_shapes_mosaic_and_real_mtzs() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let gauss = |v: Vec<String>| {
        let mut v = v;
        let k = v.iter().position(|s| s == "tophat").unwrap();
        v[k] = "gauss".into();
        v
    };
    ok(d, &with(gauss(base()), &[&ROI[..], &["--fluence", "5e24", "--out", "g.h5"]].concat()));
    let mut argchk = gauss(base());
    let k = argchk.iter().position(|s| s == "gauss").unwrap();
    argchk[k] = "gauss-argchk".into();
    ok(d, &with(argchk, &[&ROI[..], &["--fluence", "5e24", "--out", "ga.h5"]].concat()));
    let (g, ga) = (image(&d.join("g.h5")), image(&d.join("ga.h5")));
    assert!(max_rel(&ga, &g) < 1e-12);
    // The cut only removes intensity (up to rounding), and does remove some in the far tails.
    assert!(g.iter().zip(&ga).all(|(x, y)| *y <= x * (1.0 + 1e-12)), "the cut added intensity");
    assert!(g.iter().zip(&ga).any(|(x, y)| *x > 0.0 && *y == 0.0), "the cut removed nothing");

    // A generated mosaic (anisotropic), mono beam, default flux.
    let expt = r("shot_00.expt").display().to_string();
    let simple = |extra: &[&str]| {
        let mut v: Vec<String> = vec!["simulate".into(), "--expt".into(), expt.clone()];
        v.extend(["--ncells", "10", "10", "10", "--no-progress"].map(String::from));
        with(v, extra)
    };
    let hkl = r("lyso_P1.hkl.gz").display().to_string();
    ok(
        d,
        &simple(&[
            "--hkl",
            &hkl,
            "--mosaic-domains",
            "6",
            "--eta-abc",
            "0.05",
            "0.1",
            "0.2",
            "--out",
            "m.h5",
        ]),
    );
    assert!(image(&d.join("m.h5")).iter().any(|&x| x > 0.0));

    // Real MTZs: x4wide (P 41 21 2: the same point group as the P 43 21 2 crystal).
    let x4 =
        diffbragg::testutil::shared("fixtures/mtz/x4wide_AUTOMATIC_DEFAULT_scaled.mtz").display().to_string();
    ok(d, &simple(&["--mtz", &x4, "--mtz-column", "IMEAN", "--out", "x4.h5"]));
    ok(d, &simple(&["--mtz", &x4, "--mtz-column", "I(+),SIGI(+),I(-),SIGI(-)", "--out", "x4a.h5"]));
    assert!(image(&d.join("x4.h5")).iter().any(|&x| x > 0.0));
    // phaser_1.mtz is P 1 21 1: refused for a P 43 21 2 crystal unless the group is given.
    let ph = diffbragg::testutil::shared("fixtures/mtz/cctbx_phaser_1.mtz").display().to_string();
    let e = fails(d, &simple(&["--mtz", &ph, "--mtz-column", "FP", "--out", "ph.h5"]));
    assert!(e.contains("cctbx_phaser_1.mtz") && e.contains("--space-group"), "{e}");
    ok(d, &simple(&["--mtz", &ph, "--mtz-column", "FP", "--space-group", "P 1 21 1", "--out", "ph.h5"]));
}

#[test]
fn bad_inputs_give_one_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let b = || with(base(), &["--fluence", "5e24"]);
    let check = |args: Vec<String>, want: &[&str]| {
        let e = fails(d, &args);
        for w in want {
            assert!(e.contains(w), "expected `{w}` in: {e}");
        }
        assert_eq!(e.trim().lines().filter(|l| l.starts_with("error")).count(), 1, "{e}");
    };
    std::fs::write(d.join("bad.lam"), "# header\n1.3,0.5\n1.31,abc\n").unwrap();
    std::fs::write(d.join("bad.hkl"), "1 2 3 10\n2 1 -3 11\n").unwrap();
    std::fs::write(d.join("umats.txt"), "1 0 0 0 1 0 0 0 2\n").unwrap();

    let mut missing = b();
    missing[2] = d.join("nope.expt").display().to_string();
    check(with(missing, &["--out", "x.h5"]), &["nope.expt"]);
    check(with(b(), &["--exp-idx", "3", "--out", "x.h5"]), &["experiment index 3"]);
    let mut lam = b();
    let j = lam.iter().position(|s| s == "--spectrum").unwrap();
    lam[j + 1] = "bad.lam".into();
    check(with(lam, &["--out", "x.h5"]), &["bad.lam", "line 3"]);
    // Equivalent reflections in P 43 21 2 (k, h, −l) with different F.
    let mut hkl = b();
    let j = hkl.iter().position(|s| s == "--hkl").unwrap();
    hkl[j + 1] = "bad.hkl".into();
    check(with(hkl, &["--out", "x.h5"]), &["bad.hkl", "not in this space group"]);
    let mut um = b();
    let j = um.iter().position(|s| s == "--mosaic-umats").unwrap();
    um[j + 1] = "umats.txt".into();
    check(with(um, &["--out", "x.h5"]), &["umats.txt", "line 1"]);
    check(with(b(), &["--roi", "2000", "2100", "0", "10", "--out", "x.h5"]), &["roi", "outside"]);
    check(with(b(), &["--roi", "10", "5", "0", "10", "--out", "x.h5"]), &["roi", "empty"]);
    check(with(b(), &["--readout-sigma", "3", "--out", "x.h5"]), &["--noise poisson"]);
    check(with(b(), &["--oversample", "0", "--out", "x.h5"]), &["oversample"]);
    check(with(b(), &["--G", "nan", "--out", "x.h5"]), &["G"]);
    check(with(b(), &["--out", "sub/none/x.h5"]), &["x.h5"]);

    // Without the umats: mosaic flag rules.
    let mut nu = b();
    let j = nu.iter().position(|s| s == "--mosaic-umats").unwrap();
    nu.drain(j..j + 2);
    check(with(nu.clone(), &["--eta", "0.05", "--out", "x.h5"]), &["--mosaic-domains"]);
    check(with(nu.clone(), &["--eta", "0.05", "--mosaic-domains", "3", "--out", "x.h5"]), &["even"]);
    check(
        with(nu.clone(), &["--eta-abc", "0.05", "0", "0.1", "--mosaic-domains", "4", "--out", "x.h5"]),
        &["eta"],
    );
    // No structure factors at all.
    let mut nosf = nu.clone();
    let j = nosf.iter().position(|s| s == "--hkl").unwrap();
    nosf.drain(j..j + 2);
    check(with(nosf.clone(), &["--out", "x.h5"]), &["default_F"]);
    // --mtz needs --mtz-column (clap); a missing column is named.
    let x4 =
        diffbragg::testutil::shared("fixtures/mtz/x4wide_AUTOMATIC_DEFAULT_scaled.mtz").display().to_string();
    let e = fails(d, &with(nosf.clone(), &["--mtz", &x4, "--out", "x.h5"]));
    assert!(e.contains("--mtz-column"), "{e}");
    check(with(nosf, &["--mtz", &x4, "--mtz-column", "FOO", "--out", "x.h5"]), &["FOO", "IMEAN"]);
    // The output must not replace the input experiment.
    std::fs::copy(r("shot_00_tophat.expt"), d.join("in.expt")).unwrap();
    let mut ow = b();
    ow[2] = "in.expt".into();
    check(with(ow.clone(), &["--out", "in.h5"]), &["overwrite"]);
    check(with(ow, &["--out", "y.expt"]), &["HDF5"]);
    // Nothing was left behind by the failures (atomic writes).
    let left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| !n.ends_with(".h5") && !n.contains(".tmp-")), "{left:?}");
}
