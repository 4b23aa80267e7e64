//! `exp_ref_spec_file`: relative paths, integers, spectrum files, comments,
//! bad lines (errors with line numbers), missing files, mutation fuzzing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use diffbragg::io::spec_file::{read_spec_file, SpecEntry};
use rand::{Rng, SeedableRng};

/// data/{a,b}.expt, data/{a,b}.refl, data/s1.lam and an absolute-path file elsewhere.
fn layout(root: &Path) {
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir_all(root.join("lists")).unwrap();
    for f in ["a.expt", "a.refl", "b.expt", "b.refl", "s1.lam", "3"] {
        std::fs::write(root.join("data").join(f), "x").unwrap();
    }
}

#[test]
fn forms_paths_and_comments() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    layout(root);
    let abs_refl = root.join("data/b.refl");
    let text = format!(
        "# shots for run 12\n\
         ../data/a.expt ../data/a.refl\n\
         \n\
         ../data/b.expt {} 2\n   \t\n\
         ../data/a.expt ../data/a.refl ../data/s1.lam\n\
         \t../data/b.expt   ../data/b.refl ../data/s1.lam +4   \n\
         ../data/a.expt ../data/a.refl ../data/3 0\n",
        abs_refl.display()
    );
    let spec = root.join("lists/spec.txt");
    std::fs::write(&spec, text).unwrap();
    let v = read_spec_file(&spec).unwrap();
    let base = root.join("lists");
    assert_eq!(
        v,
        vec![
            SpecEntry {
                line_no: 2,
                expt: base.join("../data/a.expt"),
                refl: base.join("../data/a.refl"),
                spectrum: None,
                exp_idx: 0
            },
            SpecEntry {
                line_no: 4,
                expt: base.join("../data/b.expt"),
                refl: abs_refl.clone(),
                spectrum: None,
                exp_idx: 2
            },
            SpecEntry {
                line_no: 6,
                expt: base.join("../data/a.expt"),
                refl: base.join("../data/a.refl"),
                spectrum: Some(base.join("../data/s1.lam")),
                exp_idx: 0
            },
            SpecEntry {
                line_no: 7,
                expt: base.join("../data/b.expt"),
                refl: base.join("../data/b.refl"),
                spectrum: Some(base.join("../data/s1.lam")),
                exp_idx: 4
            },
            SpecEntry {
                line_no: 8,
                expt: base.join("../data/a.expt"),
                refl: base.join("../data/a.refl"),
                spectrum: Some(base.join("../data/3")),
                exp_idx: 0
            },
        ]
    );
    // The resolved paths really point at the files (relative to the spec file, not the cwd).
    assert!(v.iter().all(|e| e.expt.is_file() && e.refl.is_file()));
}

#[test]
fn errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    layout(root);
    let spec = root.join("lists/bad.txt");
    let cases = [
        ("../data/a.expt ../data/a.refl\n../data/a.expt\n", "line 2", "fields"),
        (
            "../data/a.expt ../data/a.refl\n\n# c\n../data/a.expt ../data/missing.refl\n",
            "line 4",
            "missing.refl",
        ),
        ("../data/nope.expt ../data/a.refl\n", "line 1", "nope.expt"),
        ("../data/a.expt ../data/a.refl ../data/none.lam\n", "line 1", "none.lam"),
        ("../data/a.expt ../data/a.refl ../data/s1.lam x\n", "line 1", "integer"),
        ("../data/a.expt ../data/a.refl -1\n", "line 1", "≥ 0"),
        ("a b c d e\n", "line 1", "fields"),
        ("# only comments\n\n", "bad.txt", "no shots"),
    ];
    for (text, loc, what) in cases {
        std::fs::write(&spec, text).unwrap();
        let e = read_spec_file(&spec).unwrap_err().to_string();
        assert!(e.contains("bad.txt") && e.contains(loc) && e.contains(what), "{text:?} → {e}");
    }
    let e = read_spec_file(root.join("lists/absent.txt")).unwrap_err().to_string();
    assert!(e.contains("absent.txt"), "{e}");
}

#[test]
fn mutated_spec_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    layout(root);
    let good = "# c\n../data/a.expt ../data/a.refl\n../data/b.expt ../data/b.refl 1\n\
                ../data/a.expt ../data/a.refl ../data/s1.lam\n../data/b.expt ../data/b.refl ../data/s1.lam 2\n";
    let spec = root.join("lists/m.txt");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let (mut ok, mut err) = (0, 0);
    for it in 0..400 {
        let mut b = good.as_bytes().to_vec();
        for _ in 0..rng.random_range(1..4) {
            let n = b.len();
            if n == 0 {
                break;
            }
            match rng.random_range(0..4) {
                0 => {
                    let i = rng.random_range(0..n);
                    b[i] = *[b' ', b'\n', b'#', b'-', b'9', b'/', 0u8, 0xc3]
                        .get(rng.random_range(0..8))
                        .unwrap();
                }
                1 => b.truncate(rng.random_range(0..n)),
                2 => {
                    let i = rng.random_range(0..n);
                    b.remove(i);
                }
                _ => {
                    let i = rng.random_range(0..n);
                    b[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        std::fs::write(&spec, &b).unwrap();
        match catch_unwind(AssertUnwindSafe(|| read_spec_file(&spec))) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(_)) => err += 1,
            Err(_) => panic!("read_spec_file panicked on mutation {it}: {:?}", String::from_utf8_lossy(&b)),
        }
    }
    assert!(ok > 0 && err > 50, "ok {ok}, err {err}");
}
