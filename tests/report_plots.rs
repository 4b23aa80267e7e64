//! The report folder: before/after comparison on real geometries, its text
//! summary and PNG figures (valid PNGs of the expected size, not blank).
//!
//! "Input" models are the fixture's DIALS-refined crystals turned by a known
//! misorientation (and a stretched cell); "refined" models are the fixture's own.
//! So the input side must show the larger residuals and Δψ spread.
//! Set `DIFFBRAGG_REPORT_KEEP=<dir>` to keep the figures for a look.

use std::path::Path;

use diffbragg::conventions::rot_xyz;
use diffbragg::experiment::ExperimentList;
use diffbragg::io::dials_refl::read_refl;
use diffbragg::report::plot::{BLUE, ORANGE, WHITE};
use diffbragg::report::residuals::EvalOptions;
use diffbragg::report::stats::panel_groups;
use diffbragg::report::summary::compare;
use diffbragg::testutil::shared;

fn misset(el: &ExperimentList, rx_deg: f64, ry_deg: f64, cell_scale: f64) -> ExperimentList {
    let mut out = el.clone();
    for e in &mut out.experiments {
        let x = e.crystal.as_mut().unwrap();
        let u = rot_xyz(rx_deg.to_radians(), ry_deg.to_radians(), 0.0) * x.u_matrix();
        let mut cell = x.unit_cell();
        cell.a *= cell_scale;
        cell.b *= cell_scale;
        cell.c *= cell_scale;
        x.set_u(&u);
        x.set_unit_cell(&cell);
    }
    out
}

struct Png {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

fn read_png(p: &Path) -> Png {
    let bytes = std::fs::read(p).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", p.display());
    let mut r = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    Png { width: info.width, height: info.height, rgb: buf }
}

fn check_png(p: &Path, size: Option<(u32, u32)>, need: &[[u8; 3]]) {
    let img = read_png(p);
    if let Some(s) = size {
        assert_eq!((img.width, img.height), s, "{}", p.display());
    }
    let px: Vec<[u8; 3]> = img.rgb.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    let ink = px.iter().filter(|c| **c != WHITE).count() as f64 / px.len() as f64;
    assert!(ink > 0.005 && ink < 0.6, "{}: ink fraction {ink}", p.display());
    let distinct: std::collections::HashSet<[u8; 3]> = px.iter().copied().collect();
    assert!(distinct.len() >= 5, "{}: only {} colours", p.display(), distinct.len());
    for c in need {
        let n = px.iter().filter(|q| *q == c).count();
        assert!(n > 20, "{}: colour {c:?} drawn on {n} pixels", p.display());
    }
}

fn keep(dir: &Path, tag: &str) {
    if let Ok(k) = std::env::var("DIFFBRAGG_REPORT_KEEP") {
        let dst = Path::new(&k).join(tag);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn cunir_report_before_after() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = shared("fixtures/dials_data_files/ssx_CuNiR");
    let refined = ExperimentList::read(dir.join("indexed.expt")).unwrap();
    let refls = read_refl(dir.join("indexed.refl")).unwrap();
    let input = misset(&refined, 0.04, -0.03, 1.003);
    let o = EvalOptions::default();
    let (cmp, ev_in, ev_ref) = compare(&input, &refls, &refined, None, &o, &o, None).unwrap();
    assert_eq!(cmp.len(), 360);
    assert!(ev_in.skipped.is_empty() && ev_ref.skipped.is_empty());
    let det = refined.experiments[0].detector.as_ref().unwrap();
    let groups = panel_groups(det, 0);
    let (before, after) = cmp.dataset(&groups);
    assert!(
        before.overall.rmsd_um > 1.5 * after.overall.rmsd_um,
        "{} {}",
        before.overall.rmsd_um,
        after.overall.rmsd_um
    );
    assert!(before.overall.delpsi_sd_deg > after.overall.delpsi_sd_deg);

    let out = tmp.path().join("report");
    let files = cmp.write_report(&out, det, &groups).unwrap();
    assert_eq!(files.len(), 6);
    let txt = std::fs::read_to_string(out.join("summary.txt")).unwrap();
    assert!(txt.contains("360 reflections paired"), "{txt}");
    assert!(
        txt.contains(&format!("{:.2}", before.overall.rmsd_um))
            && txt.contains(&format!("{:.2}", after.overall.rmsd_um))
    );
    check_png(&out.join("deltapsi_by_panel.png"), Some((780, 590)), &[BLUE, ORANGE]);
    check_png(&out.join("offset_histograms.png"), Some((1300, 560)), &[BLUE, ORANGE]);
    check_png(&out.join("deltapsi_vs_two_theta.png"), Some((900, 640)), &[BLUE, ORANGE]);
    check_png(&out.join("detector_offsets_input.png"), Some((1000, 900)), &[]);
    check_png(&out.join("detector_offsets_refined.png"), Some((1000, 900)), &[]);
    // No temporary files are left behind.
    for e in std::fs::read_dir(&out).unwrap() {
        assert!(!e.unwrap().file_name().to_string_lossy().contains(".tmp-"));
    }
    keep(&out, "cunir");
}

#[test]
fn cspad_report_per_panel_and_per_quadrant() {
    let tmp = tempfile::tempdir().unwrap();
    let el = ExperimentList::read(shared("fixtures/dials_data_files/cspad/benchmark_level2d.json")).unwrap();
    // The benchmark file has no reflections: predict spots of a few shots with the
    // DIALS models and observe them where those models put them.
    let el = ExperimentList::new(el.experiments[..6].to_vec());
    let mut ids = vec![];
    let mut panels = vec![];
    let mut hkls = vec![];
    let mut obs = vec![];
    for (ei, e) in el.experiments.iter().enumerate() {
        let det = e.detector.as_ref().unwrap();
        let pxmm = diffbragg::report::deltapsi::PxMm::for_detector(det, &e.detector_meta).unwrap();
        let a = e.crystal.as_ref().unwrap().a_matrix();
        let s0 = e.beam.as_ref().unwrap().s0();
        for h in -40..=40 {
            for k in -40..=40 {
                for l in -20..=20 {
                    let q = a * diffbragg::conventions::Vec3::new(h as f64, k as f64, l as f64);
                    if q.norm_squared() > 0.25 || ((s0 + q).norm() - s0.norm()).abs() > 1e-3 {
                        continue;
                    }
                    let Ok(p) =
                        diffbragg::report::deltapsi::predict_on_detector(&a, &s0, [h, k, l], det, &pxmm)
                    else {
                        continue;
                    };
                    if p.delpsi.abs() < 0.03f64.to_radians() && ![h, k, l].iter().all(|&x| x == 0) {
                        ids.push(ei as i32);
                        panels.push(p.panel as u64);
                        hkls.push([h, k, l]);
                        obs.push([p.px[0] + 0.05, p.px[1] - 0.03, 0.5]);
                    }
                }
            }
        }
    }
    let n = ids.len();
    assert!(n > 200, "{n}");
    let mut t = diffbragg::reflections::ReflectionTable::new(n);
    t.insert("id", ids).unwrap();
    t.insert("panel", panels).unwrap();
    t.insert("miller_index", hkls).unwrap();
    t.insert("xyzobs.px.value", obs).unwrap();
    let input = misset(&el, -0.05, 0.02, 0.998);
    let o = EvalOptions { used_in_refinement_only: false, ..Default::default() };
    let (cmp, _, _) = compare(&input, &t, &el, None, &o, &o, None).unwrap();
    assert_eq!(cmp.len(), n);
    let det = el.experiments[0].detector.as_ref().unwrap();
    for (level, tag) in [(3usize, "cspad_panels"), (1, "cspad_quadrants")] {
        let groups = panel_groups(det, level);
        let out = tmp.path().join(tag);
        cmp.write_report(&out, det, &groups).unwrap();
        let txt = std::fs::read_to_string(out.join("summary.txt")).unwrap();
        if level == 1 {
            assert!(txt.contains("Per panel group") && txt.contains("FS_D0Q3"), "{txt}");
        } else {
            assert!(txt.contains("Per panel (") && txt.contains("ARRAY_D0Q0S0A0"), "{txt}");
        }
        check_png(&out.join("deltapsi_by_panel.png"), None, &[BLUE, ORANGE]);
        check_png(&out.join("detector_offsets_input.png"), Some((1000, 900)), &[]);
        check_png(&out.join("detector_offsets_refined.png"), Some((1000, 900)), &[]);
        keep(&out, tag);
    }
}
