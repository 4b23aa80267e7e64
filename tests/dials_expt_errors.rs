//! DIALS experiment lists: old and unusual variants that must read, invalid
//! input that must give one clear error, and deterministic mutation fuzzing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

use diffbragg::experiment::{BeamKind, ExperimentList, ImageSetKind};
use diffbragg::io::dials_expt::parse_json;
use diffbragg::testutil::shared;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

const SHOT: &str = "reference/shot_00.expt";
const CSPAD: &str = "fixtures/dials_data_files/cspad/cspad-single-image.expt";

fn load(f: &str) -> Value {
    serde_json::from_slice(&std::fs::read(shared(f)).unwrap()).unwrap()
}

/// A made-up path (never read) beside the fixtures, naming the file in errors.
fn fake_path() -> PathBuf {
    shared("fixtures/x.expt")
}

fn read_value(v: &Value) -> diffbragg::error::Result<ExperimentList> {
    ExperimentList::from_json_bytes(v.to_string().as_bytes(), &fake_path())
}

/// The error message of reading `f` after `edit`, which must start with the file name.
fn error_after(f: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut v = load(f);
    edit(&mut v);
    let e = read_value(&v).err().unwrap_or_else(|| panic!("edit of {f} was accepted")).to_string();
    assert!(e.starts_with(&fake_path().display().to_string()), "error does not name the file: {e}");
    e
}

#[test]
fn model_index_out_of_range_message() {
    let e = error_after(SHOT, |v| v["experiment"][0]["detector"] = json!(7));
    assert_eq!(
        e,
        format!("{}: experiment[0].detector: index 7 out of range (1 detector)", fake_path().display())
    );
    let e = error_after(SHOT, |v| v["experiment"][0]["beam"] = json!(2));
    assert!(e.ends_with("experiment[0].beam: index 2 out of range (1 beam)"), "{e}");
    let e = error_after(SHOT, |v| v["experiment"][0]["imageset"] = json!(0));
    assert!(e.ends_with("index 0 out of range (0 imagesets)"), "{e}");
    let e = error_after(SHOT, |v| v["experiment"][0]["crystal"] = json!(-1));
    assert!(e.contains("experiment[0].crystal: expected a model index, found -1"), "{e}");
    let e = error_after(SHOT, |v| {
        v["experiment"][0]["crystal"] = json!(diffbragg::io::dials_expt::NONFINITE_NAN)
    });
    assert!(e.ends_with("experiment[0].crystal: expected a model index, found NaN"), "{e}");
}

#[test]
fn invalid_models_are_named() {
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            SHOT,
            Box::new(|v| v["experiment"][0]["beam"] = json!("beam.json")),
            "experiment[0].beam: refers to the model file",
        ),
        (
            SHOT,
            Box::new(|v| v["beam"][0]["wavelength"] = json!(0.0)),
            "beam[0].wavelength: wavelength must be positive",
        ),
        (
            SHOT,
            Box::new(|v| v["beam"][0]["wavelength"] = json!(-1.3)),
            "beam[0].wavelength: wavelength must be positive",
        ),
        (
            SHOT,
            Box::new(|v| v["beam"][0]["wavelength"] = json!("1.3")),
            "beam[0].wavelength: expected a number",
        ),
        (
            SHOT,
            Box::new(|v| drop(v["beam"][0].as_object_mut().unwrap().remove("direction"))),
            "beam[0]: missing key `direction`",
        ),
        (
            SHOT,
            Box::new(|v| v["beam"][0]["direction"] = json!([0, 0, 0])),
            "beam[0].direction: zero-length axis",
        ),
        (
            SHOT,
            Box::new(|v| v["beam"][0]["direction"] = json!([0, 0, 2])),
            "beam[0].direction: axis is not a unit vector",
        ),
        (
            SHOT,
            Box::new(|v| v["beam"][0]["polarization_fraction"] = json!(1.5)),
            "beam[0].polarization_fraction",
        ),
        (
            SHOT,
            Box::new(|v| v["detector"][0]["panels"][0]["fast_axis"] = json!([1.1, 0, 0])),
            "detector[0].panels[0].fast_axis: axis is not a unit vector",
        ),
        (
            SHOT,
            Box::new(|v| v["detector"][0]["panels"][0]["slow_axis"] = json!([0, 0, 0])),
            "detector[0].panels[0].slow_axis: zero-length axis",
        ),
        (
            SHOT,
            Box::new(|v| v["detector"][0]["panels"][0]["slow_axis"] = json!([0.6, 0.8, 0])),
            "detector[0].panels[0]: fast_axis and slow_axis are not perpendicular",
        ),
        (
            SHOT,
            Box::new(|v| v["detector"][0]["panels"][0]["pixel_size"] = json!([0.075, 0.0])),
            "detector[0].panels[0].pixel_size: pixel sizes must be positive",
        ),
        (
            SHOT,
            Box::new(|v| v["detector"][0]["panels"][0]["image_size"] = json!([1024, -5])),
            "detector[0].panels[0].image_size: image size must be positive",
        ),
        (
            SHOT,
            Box::new(|v| v["detector"][0]["panels"][0]["px_mm_strategy"] = json!({"type": "Bogus"})),
            "unknown px_mm_strategy `Bogus`",
        ),
        (
            SHOT,
            Box::new(|v| v["detector"][0]["hierarchy"]["children"] = json!([])),
            "detector[0].hierarchy: panel 0 is not in the hierarchy",
        ),
        (
            SHOT,
            Box::new(|v| v["detector"][0]["hierarchy"]["children"] = json!([{"panel": 0}, {"panel": 0}])),
            "detector[0].hierarchy.children[1].panel: panel 0 appears twice",
        ),
        (
            SHOT,
            Box::new(|v| v["detector"][0]["hierarchy"]["children"] = json!([{"panel": 3}])),
            "panel index 3 out of range (1 panels)",
        ),
        (
            SHOT,
            Box::new(|v| drop(v["detector"][0]["hierarchy"].as_object_mut().unwrap().remove("children"))),
            "detector[0].hierarchy: missing key `children`",
        ),
        (
            SHOT,
            Box::new(|v| v["crystal"][0]["real_space_c"] = v["crystal"][0]["real_space_a"].clone()),
            "crystal[0]: real-space vectors are degenerate",
        ),
        (
            SHOT,
            Box::new(|v| v["crystal"][0]["ML_half_mosaicity_deg"] = json!(0.1)),
            "crystal[0]: ML_half_mosaicity_deg and ML_domain_size_ang",
        ),
        (
            SHOT,
            Box::new(|v| v["crystal"][0]["B_covariance"] = json!(vec![0.0; 80])),
            "crystal[0].B_covariance: expected 81",
        ),
        (
            SHOT,
            Box::new(|v| drop(v["crystal"][0].as_object_mut().unwrap().remove("space_group_hall_symbol"))),
            "crystal[0]: missing key `space_group_hall_symbol`",
        ),
        (SHOT, Box::new(|v| v["beam"] = json!({})), "beam: expected a list, found an object"),
        (SHOT, Box::new(|v| v["experiment"] = json!(3)), "experiment: expected a list"),
        (SHOT, Box::new(|v| drop(v.as_object_mut().unwrap().remove("experiment"))), "no `experiment` list"),
        (SHOT, Box::new(|v| v["__id__"] = json!("DataBlock")), "not a DIALS experiment list"),
        (SHOT, Box::new(|v| *v = json!([1, 2])), "not a DIALS experiment list"),
        (
            "fixtures/dials_data_files/ssx_CuNiR/indexed.expt",
            Box::new(|v| v["imageset"][1]["__id__"] = json!("ImageStack")),
            "imageset[1].__id__: unknown imageset type `ImageStack`",
        ),
        (
            "fixtures/dials_data_files/ssx_CuNiR/indexed.expt",
            Box::new(|v| v["imageset"][0]["single_file_indices"] = json!([0, 1])),
            "imageset[0].single_file_indices: 2 indices for 1 images",
        ),
        (
            "fixtures/dials_data_files/ssx_CuNiR/indexed.expt",
            Box::new(|v| v["imageset"][0]["mask"] = json!(5)),
            "imageset[0].mask: expected a string, found 5",
        ),
        (
            "fixtures/dials_data_files/ssx_CuNiR/indexed.expt",
            Box::new(|v| v["imageset"][0]["__id__"] = json!("ImageGrid")),
            "imageset[0]: missing key `grid_size`",
        ),
        (
            "fixtures/dials_data_files/ssx_CuNiR/imported_with_ref_5.expt",
            Box::new(|v| drop(v["imageset"][0].as_object_mut().unwrap().remove("template"))),
            "imageset[0]: missing key `template`",
        ),
        (
            CSPAD,
            Box::new(|v| {
                v["detector"][0]["hierarchy"]["children"][2]["children"][1]["fast_axis"] = json!([0, 0, 0])
            }),
            "detector[0].hierarchy.children[2].children[1].fast_axis: zero-length axis",
        ),
    ];
    for (f, edit, want) in cases {
        let e = error_after(f, edit);
        assert!(e.contains(want), "expected `{want}` in: {e}");
    }
}

#[test]
fn unreadable_files_are_named() {
    let p = shared("fixtures/does-not-exist.expt");
    let e = ExperimentList::read(&p).unwrap_err().to_string();
    assert!(e.starts_with(&p.display().to_string()), "{e}");
    let bytes = std::fs::read(shared(SHOT)).unwrap();
    let e = ExperimentList::from_json_bytes(&bytes[..bytes.len() / 2], &fake_path()).unwrap_err().to_string();
    assert!(e.contains("x.expt: invalid JSON"), "{e}");
    // Writing into a missing folder fails with the path, leaving nothing behind.
    let l = ExperimentList::read(shared(SHOT)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("missing").join("o.expt");
    assert!(l.write(&out).unwrap_err().to_string().contains("o.expt"));
}

#[test]
fn old_and_unusual_variants_read() {
    // Missing pools, missing ids, "" identifier, integral floats for integers.
    let mut v = load(SHOT);
    let top = v.as_object_mut().unwrap();
    top.remove("__id__");
    top.remove("imageset");
    top.remove("crystal");
    v["experiment"][0].as_object_mut().unwrap().remove("crystal");
    v["experiment"][0]["identifier"] = json!("");
    v["beam"][0].as_object_mut().unwrap().remove("__id__");
    v["beam"][0].as_object_mut().unwrap().remove("probe");
    v["detector"][0]["panels"][0]["image_size"] = json!([1024.0, 1000.0]);
    let l = read_value(&v).unwrap();
    let e = &l.experiments[0];
    assert!(e.crystal.is_none() && e.imageset.is_none());
    assert_eq!(e.identifier, "");
    assert_eq!(e.beam_meta.probe, "x-ray");
    assert_eq!(e.detector().unwrap().panels[0].image_size, [1024, 1000]);
    let back = parse_json(l.to_json_string(&fake_path()).unwrap().as_bytes(), &fake_path()).unwrap();
    assert_eq!(back, v, "an old-style file must come back as it was");

    // Polychromatic beam.
    let mut v = load(SHOT);
    let b = v["beam"][0].as_object_mut().unwrap();
    b.remove("wavelength");
    b.insert("__id__".into(), json!("polychromatic"));
    b.insert("wavelength_range".into(), json!([1.2, 1.4]));
    let l = read_value(&v).unwrap();
    let e = &l.experiments[0];
    assert_eq!(e.beam_meta.kind, BeamKind::Polychromatic);
    assert_eq!(e.beam_meta.wavelength_range, Some([1.2, 1.4]));
    assert!((e.beam().unwrap().wavelength - 1.3).abs() < 1e-15);
    assert_eq!(parse_json(l.to_json_string(&fake_path()).unwrap().as_bytes(), &fake_path()).unwrap(), v);
    let mut w = v.clone();
    w["beam"][0]["wavelength_range"] = json!([1.4, 1.2]);
    assert!(read_value(&w).unwrap_err().to_string().contains("beam[0].wavelength_range"));

    // A detector stored as a bare list of panels (no hierarchy): local = lab, written back as a list.
    let mut v = load(SHOT);
    let panels = v["detector"][0]["panels"].clone();
    v["detector"][0] = panels;
    let l = read_value(&v).unwrap();
    let d = l.experiments[0].detector().unwrap();
    assert!(d.hierarchy.is_none());
    assert_eq!(d.panels[0].origin.z, -99.92104160072167);
    assert_eq!(parse_json(l.to_json_string(&fake_path()).unwrap().as_bytes(), &fake_path()).unwrap(), v);

    // Imageset kinds: legacy ImageSweep, ImageGrid, MemImageSet.
    let mut v = load("fixtures/dials_data_files/ssx_CuNiR/imported_with_ref_5.expt");
    v["imageset"][0]["__id__"] = json!("ImageSweep");
    v["imageset"]
        .as_array_mut()
        .unwrap()
        .push(json!({"__id__": "ImageGrid", "images": ["g1.cbf", "g2.cbf"], "grid_size": [2, 1]}));
    v["imageset"].as_array_mut().unwrap().push(json!({"__id__": "MemImageSet"}));
    v["experiment"][1]["imageset"] = json!(1);
    v["experiment"][2]["imageset"] = json!(2);
    let l = read_value(&v).unwrap();
    assert_eq!(l.experiments[0].imageset.as_ref().unwrap().kind, ImageSetKind::ImageSequence);
    let grid = l.experiments[1].imageset.as_ref().unwrap();
    assert_eq!((grid.kind, grid.grid_size), (ImageSetKind::ImageGrid, Some([2, 1])));
    assert_eq!(grid.images[1], shared("fixtures/g2.cbf"));
    assert!(l.image_location(1).unwrap_err().to_string().contains("2 images"));
    assert!(l.image_location(2).unwrap_err().to_string().contains("MemImageSet"));
    let text = l.to_json_string(&fake_path()).unwrap();
    let back = parse_json(text.as_bytes(), &fake_path()).unwrap();
    assert_eq!(back["imageset"][0]["__id__"], "ImageSweep");
    assert_eq!(back["imageset"][1], v["imageset"][1]);
    // Pools are written in order of first reference (experiment 0 → imageset 0, 1 → 1, 2 → 2).
    assert_eq!(back["experiment"][3]["imageset"], 0);

    // Unknown keys anywhere survive a round trip.
    let mut v = load(CSPAD);
    v["history"] = json!(["dials.import 3.x"]);
    v["beam"][0]["future_key"] = json!({"a": 1});
    v["detector"][0]["panels"][5]["future_key"] = json!(5);
    v["detector"][0]["hierarchy"]["children"][1]["future_key"] = json!("q");
    v["experiment"][0]["future_key"] = json!(null);
    let l = read_value(&v).unwrap();
    assert_eq!(l.extra(), vec![("history", &json!(["dials.import 3.x"]))]);
    assert_eq!(parse_json(l.to_json_string(&fake_path()).unwrap().as_bytes(), &fake_path()).unwrap(), v);
}

#[test]
fn non_finite_numbers_round_trip_like_python() {
    // Python's json writes bare NaN/Infinity; strings that merely contain those words stay strings.
    let text = std::fs::read_to_string(shared("fixtures/cctbx/split_00.expt"))
        .unwrap()
        .replacen("\"flux\": 0.0", "\"flux\": NaN", 1)
        .replacen("6.242217995142814e-13", "Infinity", 1)
        .replacen("-2.889124671647616e-13", "-Infinity", 1)
        .replacen("\"name\": \"Panel\"", "\"name\": \"NaN \\\"Infinity\\\" -Infinity\"", 1);
    assert_eq!(text.matches("NaN").count(), 2);
    let l =
        ExperimentList::from_json_bytes(text.as_bytes(), &shared("fixtures/cctbx/split_00.expt")).unwrap();
    let e = &l.experiments[0];
    assert!(e.beam().unwrap().flux.is_nan());
    let cov = e.crystal_meta.b_covariance.as_ref().unwrap();
    assert_eq!((cov[0], cov[4]), (f64::INFINITY, f64::NEG_INFINITY));
    assert_eq!(e.detector().unwrap().panels[0].name, "NaN \"Infinity\" -Infinity");

    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("in.expt"), dir.path().join("out.expt"));
    std::fs::write(&a, &text).unwrap();
    let written = l.to_json_string(&shared("fixtures/cctbx/split_00.expt")).unwrap();
    assert!(
        written.contains("\"flux\": NaN,")
            && written.contains("  Infinity,")
            && written.contains("  -Infinity,")
    );
    std::fs::write(&b, &written).unwrap();
    // Python reads both and finds them equal (NaN compared through its text form).
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import json,sys; a,b=(json.dumps(json.load(open(p)),sort_keys=True) for p in sys.argv[1:3]); \
             print(a==b, 'NaN' in a)",
        )
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "True True",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Re-reading our output gives the same models.
    let back = ExperimentList::from_json_bytes(written.as_bytes(), &b).unwrap();
    assert_eq!(back.experiments[0].crystal_meta.b_covariance.as_ref().unwrap()[4], f64::NEG_INFINITY);
}

/// Parse mutated input; a panic fails the test, an error must name the file,
/// and an accepted list must write text that reads back.
fn check_no_panic(bytes: &[u8], path: &Path, idx: Option<usize>) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| match idx {
        None => ExperimentList::from_json_bytes(bytes, path),
        Some(i) => ExperimentList::from_json_bytes_one(bytes, path, i),
    }));
    let r = r.unwrap_or_else(|_| panic!("reader panicked on input:\n{}", String::from_utf8_lossy(bytes)));
    match r {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&path.display().to_string()), "error does not name the file: {msg}");
            false
        }
        Ok(l) => {
            let text = catch_unwind(AssertUnwindSafe(|| l.to_json_string(path)))
                .unwrap_or_else(|_| panic!("writer panicked on input:\n{}", String::from_utf8_lossy(bytes)));
            if let Ok(text) = text {
                if let Err(e) = ExperimentList::from_json_bytes(text.as_bytes(), path) {
                    panic!(
                        "our own output does not read back ({e}); input:\n{}",
                        String::from_utf8_lossy(bytes)
                    );
                }
            }
            true
        }
    }
}

#[test]
fn fuzz_byte_mutations() {
    let files = [
        (SHOT, 2000),
        ("fixtures/cctbx/split_00.expt", 1500),
        ("fixtures/dials_data_files/lcls_rayonix/experiments_000.json", 1500),
        ("fixtures/dials_data_files/ssx_CuNiR/imported_with_ref_5.expt", 1000),
        ("fixtures/dials_data_files/ssx_CuNiR/indexed.expt", 600),
        ("fixtures/dials_data_files/sacla_mpccd/SACLA-MPCCD-run266702-0-subset-known_orientations.expt", 300),
        (CSPAD, 200),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(20240611);
    let (mut ok, mut err) = (0, 0);
    for (f, n) in files {
        let path = shared(f);
        let orig = std::fs::read(&path).unwrap();
        for _ in 0..n {
            let mut b = orig.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..b.len());
                match rng.random_range(0..7) {
                    0 => b[at] = rng.random(),
                    1 => b[at] = b"0123456789-.eE,:[]{}\"nN "[rng.random_range(0..24)],
                    2 => b.truncate(at),
                    3 => {
                        let end = (at + rng.random_range(1..40)).min(b.len());
                        b.drain(at..end);
                    }
                    4 => {
                        let end = (at + rng.random_range(1..60)).min(b.len());
                        let chunk = b[at..end].to_vec();
                        let to = rng.random_range(0..b.len());
                        b.splice(to..to, chunk);
                    }
                    5 => {
                        let tokens: [&[u8]; 5] = [b"NaN", b"-Infinity", b"\"\"", b"null", b"1e999"];
                        let t = tokens[rng.random_range(0..tokens.len())];
                        b.splice(at..at, t.iter().copied());
                    }
                    _ => {
                        // Flip a digit: changes numbers but usually keeps the JSON valid.
                        if let Some(p) = (at..b.len()).find(|&i| b[i].is_ascii_digit()) {
                            b[p] = b'0' + rng.random_range(0..10u8);
                        }
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            let idx = rng.random_bool(0.3).then(|| rng.random_range(0..3));
            if check_no_panic(&b, &path, idx) {
                ok += 1;
            } else {
                err += 1;
            }
        }
    }
    eprintln!("byte mutations: {ok} accepted, {err} rejected");
    // Both outcomes must occur, or the mutations test nothing.
    assert!(ok > 200 && err > 200, "ok {ok}, err {err}");
}

/// JSON pointers of every node of a document.
fn pointers(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(x, format!("{here}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{here}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(here);
}

#[test]
fn fuzz_json_mutations() {
    let replacements = [
        json!(null),
        json!(""),
        json!("x"),
        json!(-1),
        json!(0),
        json!(7),
        json!(1e300),
        json!(-0.0),
        json!(2.5),
        json!(true),
        json!([]),
        json!([1, 2]),
        json!([0.0, 0.0, 0.0]),
        json!({}),
        json!({"panel": 0}),
        json!(18446744073709551615u64),
    ];
    let files = [
        (SHOT, 2500),
        ("fixtures/dials_data_files/ssx_CuNiR/imported_with_ref_5.expt", 1200),
        ("fixtures/dials_data_files/ssx_CuNiR/integrated.expt", 800),
        ("reference/quad_00.expt", 1200),
        (CSPAD, 300),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut ok, mut err) = (0, 0);
    for (f, n) in files {
        let path = shared(f);
        let orig = load(f);
        let mut ptrs = vec![];
        pointers(&orig, String::new(), &mut ptrs);
        for _ in 0..n {
            let mut v = orig.clone();
            for _ in 0..rng.random_range(1..3) {
                let p = &ptrs[rng.random_range(0..ptrs.len())];
                if p.is_empty() {
                    continue;
                }
                if rng.random_bool(0.25) {
                    // Delete the key (or list element).
                    let (parent, last) = p.rsplit_once('/').unwrap();
                    match v.pointer_mut(parent) {
                        Some(Value::Object(m)) => {
                            m.shift_remove(&last.replace("~1", "/").replace("~0", "~"));
                        }
                        Some(Value::Array(a)) => {
                            if let Ok(i) = last.parse::<usize>() {
                                if i < a.len() {
                                    a.remove(i);
                                }
                            }
                        }
                        _ => {}
                    }
                } else if let Some(node) = v.pointer_mut(p) {
                    *node = replacements[rng.random_range(0..replacements.len())].clone();
                }
            }
            let idx = rng.random_bool(0.3).then(|| rng.random_range(0..5));
            if check_no_panic(v.to_string().as_bytes(), &path, idx) {
                ok += 1;
            } else {
                err += 1;
            }
        }
    }
    eprintln!("JSON mutations: {ok} accepted, {err} rejected");
    assert!(ok > 500 && err > 500, "ok {ok}, err {err}");
}
