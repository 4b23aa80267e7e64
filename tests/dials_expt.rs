//! DIALS experiment lists: reading every shared fixture, values checked against
//! independent numpy computations, round trips, modified models, load-one.

use std::path::{Path, PathBuf};
use std::process::Command;

use diffbragg::conventions::{axis_angle, Vec3};
use diffbragg::experiment::{BeamKind, ExperimentList, ImageLocation, ImageSetKind, PxMmStrategy};
use diffbragg::io::dials_expt::{parse_json, write_experiments};
use diffbragg::testutil::shared;
use serde_json::Value;

/// Every experiment list in the shared folder (checked against the disk below).
const FIXTURES: &[&str] = &[
    "fixtures/cctbx/split_00.expt",
    "fixtures/dials_data_files/cspad/benchmark_level2d.json",
    "fixtures/dials_data_files/cspad/cspad-single-image.expt",
    "fixtures/dials_data_files/lcls_rayonix/experiments_000.json",
    "fixtures/dials_data_files/legacy_pickle/multi_stills_combined.json",
    "fixtures/dials_data_files/sacla_mpccd/SACLA-MPCCD-run266702-0-subset-known_orientations.expt",
    "fixtures/dials_data_files/ssx_CuNiR/imported_with_ref_5.expt",
    "fixtures/dials_data_files/ssx_CuNiR/indexed.expt",
    "fixtures/dials_data_files/ssx_CuNiR/integrated.expt",
    "reference/quad_00.expt",
    "reference/shot_00.expt",
    "reference/shot_00_round.expt",
    "reference/shot_00_square.expt",
    "reference/shot_00_tophat.expt",
    "reference/shot_06.expt",
];

const CSPAD: &str = "fixtures/dials_data_files/cspad/cspad-single-image.expt";
const BENCH: &str = "fixtures/dials_data_files/cspad/benchmark_level2d.json";
const CUNIR_IMPORTED: &str = "fixtures/dials_data_files/ssx_CuNiR/imported_with_ref_5.expt";
const CUNIR_INDEXED: &str = "fixtures/dials_data_files/ssx_CuNiR/indexed.expt";
const RAYONIX: &str = "fixtures/dials_data_files/lcls_rayonix/experiments_000.json";

fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 runs");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json_of(path: &Path) -> Value {
    parse_json(&std::fs::read(path).unwrap(), path).unwrap()
}

fn collect(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, keep, out);
        } else if keep(&p) {
            out.push(p);
        }
    }
}

#[test]
fn fixture_list_covers_the_shared_folder() {
    let mut found = vec![];
    let ext = |p: &Path, e: &[&str]| p.extension().and_then(|x| x.to_str()).is_some_and(|x| e.contains(&x));
    collect(&shared("fixtures"), &|p| ext(p, &["expt", "json"]), &mut found);
    collect(&shared("reference"), &|p| ext(p, &["expt"]), &mut found);
    found.sort();
    let mut listed: Vec<PathBuf> = FIXTURES.iter().map(|f| shared(f)).collect();
    listed.sort();
    assert_eq!(found, listed);
}

#[test]
fn every_fixture_reads_with_expected_counts() {
    // (file, experiments, panels of experiment 0, crystals present, imagesets present)
    let expect: &[(&str, usize, usize, bool, bool)] = &[
        ("fixtures/cctbx/split_00.expt", 1, 1, true, true),
        (BENCH, 300, 64, true, false),
        (CSPAD, 1, 64, false, true),
        (RAYONIX, 1, 1, true, true),
        ("fixtures/dials_data_files/legacy_pickle/multi_stills_combined.json", 10, 64, true, false),
        (
            "fixtures/dials_data_files/sacla_mpccd/SACLA-MPCCD-run266702-0-subset-known_orientations.expt",
            4,
            8,
            true,
            true,
        ),
        (CUNIR_IMPORTED, 5, 1, false, true),
        (CUNIR_INDEXED, 5, 1, true, true),
        ("fixtures/dials_data_files/ssx_CuNiR/integrated.expt", 5, 1, true, true),
        ("reference/quad_00.expt", 1, 4, true, false),
        ("reference/shot_00.expt", 1, 1, true, false),
    ];
    for &(f, n, panels, xtal, iset) in expect {
        let l = ExperimentList::read(shared(f)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.len(), n, "{f}");
        for e in l.iter() {
            assert_eq!(e.detector().unwrap().panels.len(), panels, "{f}");
            assert!(e.beam().is_ok());
            assert_eq!(e.crystal.is_some(), xtal, "{f}");
            assert_eq!(e.imageset.is_some(), iset, "{f}");
        }
    }
    for f in FIXTURES {
        ExperimentList::read(shared(f)).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Independent composition of the hierarchy (formats.md §1.4) in numpy.
const NUMPY_COMPOSE: &str = r#"
import json, sys, numpy as np
d = json.load(open(sys.argv[1]))
det = d['detector'][0]
panels = det['panels']
out = {}
def unit(v):
    v = np.array(v, float)
    return v / np.linalg.norm(v)
def walk(node, R, o):
    f = R @ unit(node['fast_axis']); s = R @ unit(node['slow_axis'])
    org = R @ np.array(node['origin'], float) + o
    Rn = np.column_stack([f, s, np.cross(f, s)])
    for c in node['children']:
        if 'panel' in c:
            p = panels[c['panel']]
            out[c['panel']] = [list(Rn @ unit(p['fast_axis'])), list(Rn @ unit(p['slow_axis'])),
                               list(Rn @ np.array(p['origin'], float) + org)]
        else:
            walk(c, Rn, org)
walk(det['hierarchy'], np.eye(3), np.zeros(3))
print(json.dumps([out[i] for i in range(len(panels))]))
"#;

/// Lab (fast, slow, origin) of every panel of detector 0, composed by numpy.
fn numpy_lab_frames(path: &Path) -> Vec<[Vec3; 3]> {
    let v: Vec<[[f64; 3]; 3]> = serde_json::from_str(&python(NUMPY_COMPOSE, &[path])).unwrap();
    v.into_iter().map(|p| p.map(|x| Vec3::new(x[0], x[1], x[2]))).collect()
}

fn assert_lab_matches(l: &ExperimentList, np: &[[Vec3; 3]], tol: f64) {
    let det = l.experiments[0].detector().unwrap();
    assert_eq!(det.panels.len(), np.len());
    for (p, [f, s, o]) in det.panels.iter().zip(np) {
        assert!((p.fast - f).norm() < tol, "{}: fast {} vs {}", p.name, p.fast, f);
        assert!((p.slow - s).norm() < tol, "{}: slow", p.name);
        assert!((p.origin - o).norm() < tol, "{}: origin {} vs {}", p.name, p.origin, o);
    }
}

#[test]
fn cspad_hierarchy_composes_like_numpy() {
    let path = shared(CSPAD);
    let l = ExperimentList::read(&path).unwrap();
    let np = numpy_lab_frames(&path);
    assert_lab_matches(&l, &np, 1e-9);
    let det = l.experiments[0].detector().unwrap();
    // 64 (nearly: refined metrology) coplanar panels 150 mm from the sample on
    // the −z side, while their local origins in the file are in-plane offsets.
    let raw = json_of(&path);
    for (i, p) in det.panels.iter().enumerate() {
        assert!((p.origin.z + 150.0).abs() < 0.25, "{} at z = {}", p.name, p.origin.z);
        assert!((p.normal() - Vec3::new(0.0, 0.0, -1.0)).norm() < 5e-3);
        assert_eq!(raw["detector"][0]["panels"][i]["origin"][2], 0.0);
    }
    // The tree is kept: root → 4 quadrants → sensors → panels.
    let root = det.hierarchy.as_ref().unwrap();
    assert_eq!(root.name, "AXIS_D0_R");
    assert_eq!(root.children.len(), 4);
    let depth = |n: &diffbragg::geometry::DetectorNode| {
        fn d(n: &diffbragg::geometry::DetectorNode) -> usize {
            1 + n
                .children
                .iter()
                .map(|c| match c {
                    diffbragg::geometry::NodeChild::Group(g) => d(g),
                    diffbragg::geometry::NodeChild::Panel(_) => 0,
                })
                .max()
                .unwrap_or(0)
        }
        d(n)
    };
    assert_eq!(depth(root), 3);
}

/// Read → write → compare JSON values, in Rust (strict: same number kinds)
/// and in Python (its own parser reads our NaN tokens and layout).
#[test]
fn round_trip_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    for f in FIXTURES {
        let src = shared(f);
        let l = ExperimentList::read(&src).unwrap();
        // Same folder as the source so relative image paths stay as they were.
        let text = l.to_json_string(&src).unwrap();
        let out = dir.path().join(src.file_name().unwrap());
        std::fs::write(&out, &text).unwrap();
        assert!(
            json_of(&src) == parse_json(text.as_bytes(), &out).unwrap(),
            "{f} differs after a round trip"
        );
        let same = python(
            "import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); print(a==b)",
            &[&src, &out],
        );
        assert_eq!(same.trim(), "True", "{f}");
    }
}

#[test]
fn writer_layout_matches_python_indent_2() {
    // Our text must be what json.dumps(indent=2) makes of the same data.
    let src = shared("reference/shot_00.expt");
    let l = ExperimentList::read(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shot.expt");
    l.write(&out).unwrap();
    let py =
        python("import json,sys; print(json.dumps(json.load(open(sys.argv[1])), indent=2), end='')", &[&out]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), py);
    // shot_00.expt itself was written by Python this way.
    assert_eq!(std::fs::read_to_string(&src).unwrap(), py);

    // Strings are escaped like Python's ensure_ascii.
    let mut v = json_of(&src);
    v["detector"][0]["panels"][0]["name"] = Value::from("é 😀 \u{7f}\t\"q\" \\ \u{1}");
    let weird = dir.path().join("weird.expt");
    std::fs::write(&weird, v.to_string()).unwrap();
    ExperimentList::read(&weird).unwrap().write(&out).unwrap();
    let py = python(
        "import json,sys; print(json.dumps(json.load(open(sys.argv[1])), indent=2), end='')",
        &[&weird],
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), py);
}

#[test]
fn cunir_cell_and_beam_values() {
    let l = ExperimentList::read(shared(CUNIR_INDEXED)).unwrap();
    let script = r#"
import json, sys, numpy as np
d = json.load(open(sys.argv[1]))
out = []
for c in d['crystal']:
    a, b, g = (np.array(c['real_space_' + k]) for k in 'abc')
    ang = lambda u, v: np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))
    out.append([np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(g), ang(b, g), ang(a, g), ang(a, b)])
print(json.dumps(out))
"#;
    let cells: Vec<[f64; 6]> = serde_json::from_str(&python(script, &[&shared(CUNIR_INDEXED)])).unwrap();
    assert_eq!(cells.len(), 5);
    for (e, np) in l.iter().zip(&cells) {
        let c = e.crystal().unwrap();
        let uc = c.unit_cell().to_array();
        for k in 0..6 {
            assert!((uc[k] - np[k]).abs() < 1e-9, "{uc:?} vs {np:?}");
        }
        // Cubic P 21 3 CuNiR, a ≈ 96 Å.
        assert!((uc[0] - 96.0).abs() < 2.0 && (uc[3] - 90.0).abs() < 0.5);
        assert_eq!(c.space_group_hall, " P 2ac 2ab 3");
        assert!(c.ml_half_mosaicity_deg.is_some() && c.ml_domain_size_ang.is_some());
    }
    // shot_00: direction (0,0,1) points to the source, so the beam runs along −z.
    let shot = ExperimentList::read(shared("reference/shot_00.expt")).unwrap();
    let b = shot.experiments[0].beam().unwrap();
    assert_eq!(b.unit_s0(), Vec3::new(0.0, 0.0, -1.0));
    assert!((b.s0() - Vec3::new(0.0, 0.0, -1.0 / 1.3051672459534898)).norm() < 1e-15);
    assert_eq!(b.polarization_fraction, 0.995);
    assert_eq!(shot.experiments[0].beam_meta.kind, BeamKind::Monochromatic);
}

#[test]
fn old_style_files() {
    // benchmark_level2d: old px_mm_strategy carrying mu/t0, which override the panel's 0s (dxtbx).
    let l = ExperimentList::read(shared(BENCH)).unwrap();
    let e = &l.experiments[0];
    let p = &e.detector().unwrap().panels[0];
    assert_eq!(p.mu, 10.888564283207868);
    assert_eq!(p.thickness, 0.5);
    assert_eq!(p.gain, 1.0); // missing key → default
    let pm = e.detector_meta.panel(0);
    assert_eq!(pm.px_mm_strategy, PxMmStrategy::ParallaxCorrected);
    assert!(pm.strategy_has_mu_t0 && pm.parallax_active(p));
    // One detector shared by all 300 experiments; 300 separate (identical) beams.
    assert!(l.iter().all(|x| x.detector == e.detector));
    let written = parse_json(l.to_json_string(&shared(BENCH)).unwrap().as_bytes(), Path::new("w")).unwrap();
    assert_eq!(written["detector"].as_array().unwrap().len(), 1);
    assert_eq!(written["beam"].as_array().unwrap().len(), 300);
    // Both Kabsch and Sauter mosaicity are kept.
    let c = e.crystal().unwrap();
    assert_eq!(c.mosaicity, Some(0.0));
    assert_eq!(c.ml_half_mosaicity_deg, Some(0.08507138473357823));

    // multi_stills_combined: no imageset key, Hall symbol with a change of basis kept verbatim.
    let m =
        ExperimentList::read(shared("fixtures/dials_data_files/legacy_pickle/multi_stills_combined.json"))
            .unwrap();
    assert_eq!(m.experiments[0].crystal().unwrap().space_group_hall, " P 61 2 (x,y,z+5/12)");
    assert!(m.experiments[0].imageset.is_none());
    assert!(m.experiments[0].image_location().unwrap_err().to_string().contains("experiment[0]"));

    // lcls_rayonix: "" lookups are none; the relative image path resolves against the file's folder.
    let r = ExperimentList::read(shared(RAYONIX)).unwrap();
    let is = r.experiments[0].imageset.as_ref().unwrap();
    assert!(
        is.mask.is_none() && is.gain.is_none() && is.pedestal.is_none() && is.dx.is_none() && is.dy.is_none()
    );
    assert_eq!(
        r.image_location(0).unwrap(),
        ImageLocation {
            path: shared("fixtures/dials_data_files/lcls_rayonix/idx-20181211002948350.cbf"),
            index: 0
        }
    );
}

#[test]
fn image_references() {
    // split_00: a psana locator with an index into the run.
    let s = ExperimentList::read(shared("fixtures/cctbx/split_00.expt")).unwrap();
    let loc = s.image_location(0).unwrap();
    assert!(loc.path.to_str().unwrap().ends_with("/001_rg002/data.loc"));
    assert_eq!(loc.index, 22244);
    assert_eq!(s.experiments[0].profile.as_ref().unwrap()["__id__"], "gaussian_rs");

    // SACLA: one HDF5 file, experiment i is image i; 8 panels of 512×1024 at 50 µm.
    let sacla = ExperimentList::read(shared(
        "fixtures/dials_data_files/sacla_mpccd/SACLA-MPCCD-run266702-0-subset-known_orientations.expt",
    ))
    .unwrap();
    for i in 0..4 {
        let loc = sacla.image_location(i).unwrap();
        assert!(loc.path.ends_with("SACLA-MPCCD-run266702-0-subset.h5"));
        assert_eq!(loc.index, i);
    }
    let p = &sacla.experiments[0].detector().unwrap().panels[0];
    assert_eq!(p.image_size, [512, 1024]);
    assert_eq!(p.pixel_size, [0.05, 0.05]);

    // CuNiR imported as sequences: one template, five one-image scans.
    let c = ExperimentList::read(shared(CUNIR_IMPORTED)).unwrap();
    let folder = shared("fixtures/dials_data_files/cunir_serial");
    for i in 0..5 {
        let e = &c.experiments[i];
        assert_eq!(e.imageset.as_ref().unwrap().kind, ImageSetKind::ImageSequence);
        assert!(e.goniometer.is_some() && e.scan.is_some());
        assert_eq!(
            e.image_location().unwrap(),
            ImageLocation { path: folder.join(format!("merlin0047_{}.cbf", 17000 + i)), index: 0 }
        );
    }
    let is = c.experiments[0].imageset.as_ref().unwrap();
    assert_eq!(is.params["dynamic_shadowing"], "Auto");
    assert_eq!(is.template.as_ref().unwrap(), &folder.join("merlin0047_#####.cbf"));

    let integ = ExperimentList::read(shared("fixtures/dials_data_files/ssx_CuNiR/integrated.expt")).unwrap();
    assert_eq!(integ.experiments[4].profile.as_ref().unwrap()["__id__"], "ellipsoid");
    assert_eq!(integ.image_location(4).unwrap().path, folder.join("merlin0047_17004.cbf"));
}

#[test]
fn shifted_detector_is_written_and_rereads_to_same_lab_geometry() {
    let src = shared(CSPAD);
    let mut l = ExperimentList::read(&src).unwrap();
    let before = l.experiments[0].detector.clone().unwrap();
    l.experiments[0].detector.as_mut().unwrap().shift_z(1.5);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shifted.expt");
    l.write(&out).unwrap();
    assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1, "temporary file left behind");

    let back = ExperimentList::read(&out).unwrap();
    let det = back.experiments[0].detector().unwrap();
    for (p, q) in det.panels.iter().zip(&before.panels) {
        assert!((p.origin - (q.origin + Vec3::new(0.0, 0.0, 1.5))).norm() < 1e-9);
        assert!((p.fast - q.fast).norm() < 1e-12 && (p.slow - q.slow).norm() < 1e-12);
    }
    // numpy agrees on the written file, and only the root frame changed in it.
    assert_lab_matches(&back, &numpy_lab_frames(&out), 1e-9);
    let (a, b) = (json_of(&src), json_of(&out));
    assert_eq!(a["detector"][0]["panels"], b["detector"][0]["panels"]);
    let (ra, rb) = (&a["detector"][0]["hierarchy"], &b["detector"][0]["hierarchy"]);
    assert_eq!(ra["children"], rb["children"]);
    assert!((rb["origin"][2].as_f64().unwrap() - ra["origin"][2].as_f64().unwrap() - 1.5).abs() < 1e-12);
}

#[test]
fn moved_panel_gets_a_local_frame_from_its_parent() {
    let src = shared(CSPAD);
    let mut l = ExperimentList::read(&src).unwrap();
    let det = l.experiments[0].detector.as_mut().unwrap();
    // Tilt panel 17 about its own centre by 0.01 rad and push it 0.2 mm.
    let p = &mut det.panels[17];
    let r = axis_angle(&Vec3::new(0.3, -0.5, 0.8), 0.01);
    let centre = p.pixel_to_lab(97.0, 92.5);
    p.fast = r * p.fast;
    p.slow = r * p.slow;
    p.origin = centre + r * (p.origin - centre) + Vec3::new(0.2, 0.0, 0.0);
    let moved = det.panels.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("moved.expt");
    l.write(&out).unwrap();
    let back = ExperimentList::read(&out).unwrap();
    for (p, q) in back.experiments[0].detector().unwrap().panels.iter().zip(&moved) {
        assert!((p.origin - q.origin).norm() < 1e-9 && (p.fast - q.fast).norm() < 1e-12);
    }
    assert_lab_matches(&back, &numpy_lab_frames(&out), 1e-9);
    // Only panel 17 changed in the file.
    let (a, b) = (json_of(&src), json_of(&out));
    for i in 0..64 {
        assert_eq!(a["detector"][0]["panels"][i] == b["detector"][0]["panels"][i], i != 17, "panel {i}");
    }
}

#[test]
fn reoriented_crystal_is_written() {
    let src = shared(CUNIR_INDEXED);
    let mut l = ExperimentList::read(&src).unwrap();
    let c = l.experiments[2].crystal.as_mut().unwrap();
    let u = axis_angle(&Vec3::new(1.0, 2.0, 3.0), 0.02) * c.u_matrix();
    c.set_u(&u);
    let new_real = c.real;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("indexed.expt");
    l.write(&out).unwrap();
    let back = ExperimentList::read(&out).unwrap();
    let c2 = back.experiments[2].crystal().unwrap();
    assert!((c2.real - new_real).abs().max() < 1e-9);
    assert!((c2.u_matrix() - u).abs().max() < 1e-9);
    let (a, b) = (json_of(&src), json_of(&out));
    for i in 0..5 {
        assert_eq!(a["crystal"][i] == b["crystal"][i], i != 2, "crystal {i}");
    }
    // The relative image paths could not stay relative in another folder: now absolute.
    assert_eq!(back.image_location(2).unwrap(), l.image_location(2).unwrap());
    assert!(b["imageset"][2]["images"][0].as_str().unwrap().starts_with('/'));
    assert_eq!(a["imageset"][2]["images"][0], "../cunir_serial/merlin0047_17002.cbf");
}

#[test]
fn relative_paths_stay_relative_in_the_same_folder() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    std::fs::create_dir(&a).unwrap();
    std::fs::copy(shared(RAYONIX), a.join("in.json")).unwrap();
    let l = ExperimentList::read(a.join("in.json")).unwrap();
    l.write(a.join("out.json")).unwrap();
    assert_eq!(json_of(&a.join("out.json"))["imageset"][0]["images"][0], "idx-20181211002948350.cbf");
    let b = dir.path().join("b");
    std::fs::create_dir(&b).unwrap();
    l.write(b.join("out.json")).unwrap();
    let moved = json_of(&b.join("out.json"));
    assert_eq!(moved["imageset"][0]["images"][0], a.join("idx-20181211002948350.cbf").to_str().unwrap());
    assert_eq!(
        ExperimentList::read(b.join("out.json")).unwrap().image_location(0).unwrap(),
        l.image_location(0).unwrap()
    );
}

#[test]
fn one_experiment_of_many_shares_nothing() {
    let src = shared(BENCH);
    let one = ExperimentList::read_one(&src, 137).unwrap();
    assert_eq!(one.len(), 1);
    let all = json_of(&src);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("one.expt");
    one.write(&out).unwrap();
    let w = json_of(&out);
    let e = &w["experiment"][0];
    for k in ["beam", "detector", "crystal"] {
        assert_eq!(e[k], 0);
        assert_eq!(w[k].as_array().unwrap().len(), 1);
    }
    let orig = &all["experiment"][137];
    assert_eq!(w["beam"][0], all["beam"][orig["beam"].as_u64().unwrap() as usize]);
    assert_eq!(w["crystal"][0], all["crystal"][orig["crystal"].as_u64().unwrap() as usize]);
    assert_eq!(w["detector"][0], all["detector"][0]);
    // Same models as the full read.
    let full = ExperimentList::read(&src).unwrap();
    assert_eq!(full.experiments[137].crystal, one.experiments[0].crystal);
    assert_eq!(full.experiments[137].beam, one.experiments[0].beam);
    // Errors still name the original index.
    assert!(one.experiments[0].image_location().unwrap_err().to_string().contains("experiment[137]"));
    let err = ExperimentList::read_one(&src, 300).unwrap_err().to_string();
    assert!(
        err.contains("benchmark_level2d.json") && err.contains("out of range (300 experiments)"),
        "{err}"
    );

    // A sequence experiment keeps its own scan.
    let seq = ExperimentList::read_one(shared(CUNIR_IMPORTED), 3).unwrap();
    seq.write(&out).unwrap();
    let w = json_of(&out);
    assert_eq!(w["scan"].as_array().unwrap().len(), 1);
    assert_eq!(w["scan"][0]["image_range"], serde_json::json!([17003, 17003]));
    assert!(seq.image_location(0).unwrap().path.ends_with("merlin0047_17003.cbf"));
}

#[test]
fn sharing_splits_only_where_models_diverge() {
    let mut l = ExperimentList::read(shared(BENCH)).unwrap();
    l.experiments[5].detector.as_mut().unwrap().shift_z(-0.25);
    let w = parse_json(l.to_json_string(&shared(BENCH)).unwrap().as_bytes(), Path::new("w")).unwrap();
    assert_eq!(w["detector"].as_array().unwrap().len(), 2);
    let refs: Vec<u64> =
        w["experiment"].as_array().unwrap().iter().map(|e| e["detector"].as_u64().unwrap()).collect();
    assert!(refs.iter().enumerate().all(|(i, &r)| r == u64::from(i == 5)));
}

#[test]
fn experiments_built_in_memory_are_written_like_dxtbx() {
    use diffbragg::geometry::{Beam, Detector, Panel};
    let panel = Panel {
        name: "p0".into(),
        origin: Vec3::new(-50.0, 40.0, -120.0),
        fast: Vec3::x(),
        slow: -Vec3::y(),
        pixel_size: [0.075, 0.075],
        image_size: [1000, 900],
        ..Default::default()
    };
    let det = Detector { panels: vec![panel.clone()], hierarchy: None };
    let mut e =
        diffbragg::experiment::Experiment::new("shot-1", Beam { wavelength: 1.2, ..Default::default() }, det);
    e.imageset = Some(diffbragg::experiment::ImageSetRef::single_image("/data/run1.h5", Some(7)));
    let mut e2 = e.clone();
    e2.identifier = "shot-2".into();
    e2.imageset = Some(diffbragg::experiment::ImageSetRef::single_image("/data/run1.h5", Some(8)));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new.expt");
    write_experiments(&out, &[e, e2]).unwrap();
    let w = json_of(&out);
    assert_eq!(w["__id__"], "ExperimentList");
    // Equal models built in memory are shared; imagesets differ.
    assert_eq!(w["beam"].as_array().unwrap().len(), 1);
    assert_eq!(w["detector"].as_array().unwrap().len(), 1);
    assert_eq!(w["imageset"].as_array().unwrap().len(), 2);
    assert_eq!(w["detector"][0]["hierarchy"]["children"], serde_json::json!([{"panel": 0}]));
    assert_eq!(w["beam"][0]["__id__"], "monochromatic");
    let back = ExperimentList::read(&out).unwrap();
    assert_eq!(back.experiments[1].identifier, "shot-2");
    assert_eq!(back.experiments[0].detector().unwrap().panels[0], panel);
    assert_eq!(back.image_location(1).unwrap(), ImageLocation { path: "/data/run1.h5".into(), index: 8 });
    assert_lab_matches(&back, &numpy_lab_frames(&out), 1e-12);
}
