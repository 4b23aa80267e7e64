//! `diffbragg residuals` end to end in a temporary folder.

use std::process::Command;

use diffbragg::report::residuals::ResidualRow;
use diffbragg::testutil::shared;

#[test]
fn residuals_subcommand_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shared("fixtures/dials_data_files/ssx_CuNiR");
    let out = tmp.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .current_dir(tmp.path())
        .args(["residuals", "--expt"])
        .arg(dir.join("indexed.expt"))
        .arg("--refl")
        .arg(dir.join("indexed.refl"))
        .args(["--refined-cal", "table", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("360 reflections paired") && stdout.contains("Dataset (5 shots, 360 reflections)"),
        "{stdout}"
    );
    for f in ["summary.txt", "residuals.csv", "deltapsi_by_panel.png", "detector_offsets_refined.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("residuals.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 720);
    let ncol = ResidualRow::COLUMNS.len() + 2; // miller_index → h, k, l
    assert!(lines.iter().all(|l| l.split(',').count() == ncol));
    assert!(lines[0].starts_with("shot_id,refl_id,model,panel,h,k,l,d,"));
    assert_eq!(lines[0].split(',').nth(ncol - 5), Some("radial_mm"));
    // Both models here are DIALS's (the table's xyzcal.px is DIALS's prediction):
    // the two sides agree to the parallax round trip.
    let radial: Vec<(String, f64)> = lines[1..]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (format!("{}:{}", f[0], f[1]), f[ncol - 5].parse().unwrap())
        })
        .collect();
    let (a, b) = radial.split_at(360);
    for ((ka, ra), (kb, rb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        assert!((ra - rb).abs() < 1e-4, "{ka}: {ra} vs {rb}");
    }
}

#[test]
fn residuals_subcommand_names_a_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.expt");
    let o = Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .args(["residuals", "--expt"])
        .arg(&missing)
        .arg("--refl")
        .arg(shared("fixtures/dials_data_files/ssx_CuNiR/indexed.refl"))
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope.expt"), "{err}");
    assert!(!tmp.path().join("o").exists());
}
