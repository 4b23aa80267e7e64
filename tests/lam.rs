//! `.lam` spectra: the reference files, numpy's reading of them, byte-exact
//! numpy `savetxt` writing, diffBragg's stride/flux rules, and mutation fuzzing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;

use diffbragg::io::lam::{load_lam, read_lam, write_lam};
use diffbragg::spectrum::Spectrum;
use rand::{Rng, SeedableRng};

fn reference_lams() -> Vec<PathBuf> {
    let dir = diffbragg::testutil::shared("reference");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "lam"))
        .collect();
    v.sort();
    assert!(v.len() >= 6, "expected the reference .lam files in {}", dir.display());
    v
}

#[test]
fn reference_files_equal_numpy_loadtxt() {
    for p in reference_lams() {
        let s = read_lam(&p).unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import sys, json, numpy as np\n\
                 a = np.loadtxt(sys.argv[1], float, delimiter=',', skiprows=1).reshape(-1, 2)\n\
                 print(json.dumps(a.tolist()))",
            )
            .arg(&p)
            .output()
            .expect("python3 must be installed for this test");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: Vec<[f64; 2]> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s.len(), rows.len(), "{}", p.display());
        for (k, r) in rows.iter().enumerate() {
            assert_eq!((s.wavelengths[k], s.weights[k]), (r[0], r[1]), "{} row {k}", p.display());
        }
        // The README says the reference weights sum to 1.
        assert!((s.total() - 1.0).abs() < 1e-12, "{}: Σw = {}", p.display(), s.total());
    }
}

#[test]
fn writing_reproduces_numpy_savetxt_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for p in reference_lams() {
        let s = read_lam(&p).unwrap();
        let out = dir.path().join("copy.lam");
        write_lam(&out, &s).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&p).unwrap(), "{}", p.display());
    }
}

#[test]
fn round_trip_and_load_rules() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let s = Spectrum::new(
        (0..37).map(|k| 0.9 + 0.01 * k as f64 + rng.random::<f64>() * 1e-3).collect(),
        (0..37).map(|_| rng.random::<f64>() * 1e11).collect(),
    );
    let path = dir.path().join("s.lam");
    write_lam(&path, &s).unwrap();
    assert_eq!(read_lam(&path).unwrap(), s, "%.18e keeps every f64 exactly");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no tmp file left");

    // stride keeps every k-th row from the first; flux rescales the sum.
    let l = load_lam(&path, 5, Some(1e12)).unwrap();
    assert_eq!(l.len(), 8);
    assert_eq!(l.wavelengths[1], s.wavelengths[5]);
    assert!((l.total() - 1e12).abs() < 1e-3);
    let ratio = l.weights[2] / l.weights[1];
    assert!((ratio - s.weights[10] / s.weights[5]).abs() < 1e-12 * ratio);
    assert_eq!(load_lam(&path, 1, None).unwrap(), s);
    assert!(load_lam(&path, 0, None).is_err());
    assert!(load_lam(&path, 38, None).is_err());
    assert!(load_lam(&path, 37, None).is_ok());

    // A one-row file is valid; a header-less file loses its first row (diffBragg's skiprows=1).
    std::fs::write(&path, "# wavelengths, weights\n1.0,2.0\n").unwrap();
    assert_eq!(read_lam(&path).unwrap().len(), 1);
    std::fs::write(&path, "1.0,2.0\n1.5,3.0\n").unwrap();
    assert_eq!(read_lam(&path).unwrap().wavelengths, vec![1.5]);
    // Errors name the file and line.
    std::fs::write(&path, "# h\n1.0,2.0\n1.1;3.0\n").unwrap();
    let e = read_lam(&path).unwrap_err().to_string();
    assert!(e.contains("s.lam") && e.contains("line 3"), "{e}");
    assert!(read_lam(dir.path().join("none.lam")).unwrap_err().to_string().contains("none.lam"));
}

#[test]
fn mutated_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let sources: Vec<Vec<u8>> = reference_lams().iter().map(|p| std::fs::read(p).unwrap()).collect();
    let path = dir.path().join("m.lam");
    let (mut ok, mut err) = (0, 0);
    for it in 0..400 {
        let mut b = sources[it % sources.len()].clone();
        mutate(&mut rng, &mut b);
        std::fs::write(&path, &b).unwrap();
        match catch_unwind(AssertUnwindSafe(|| read_lam(&path))) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(_)) => err += 1,
            Err(_) => panic!("read_lam panicked on mutation {it}"),
        }
    }
    assert!(err > 50 && ok > 0, "mutations should give both outcomes: ok {ok}, err {err}");
}

/// One random mutation: flip bits, overwrite with a random byte, truncate,
/// duplicate or delete a range.
fn mutate(rng: &mut impl Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(rng.random());
        return;
    }
    let n = b.len();
    match rng.random_range(0..5) {
        0 => {
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..n);
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => {
            let i = rng.random_range(0..n);
            b[i] = *[b',', b'\n', b'#', b'-', b'e', b'x', 0u8, 0xff].get(rng.random_range(0..8)).unwrap();
        }
        2 => b.truncate(rng.random_range(0..n)),
        3 => {
            let i = rng.random_range(0..n);
            let j = rng.random_range(i..n.min(i + 64) + 1).min(n);
            let chunk = b[i..j].to_vec();
            b.splice(i..i, chunk);
        }
        _ => {
            let i = rng.random_range(0..n);
            let j = rng.random_range(i..n.min(i + 64) + 1).min(n);
            b.drain(i..j);
        }
    }
}
