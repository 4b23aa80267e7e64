//! Mutated and truncated MTZ bytes must give `Ok` or `Err`, never a panic.
//! Deterministic: a fixed seed, mutations concentrated on the header.

use diffbragg::crystal::UnitCell;
use diffbragg::io::mtz::Mtz;
use diffbragg::symmetry::miller::unique_reflections;
use diffbragg::symmetry::SpaceGroup;
use diffbragg::testutil::shared;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn inputs() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = ["cctbx_phaser_1.mtz", "x4wide_AUTOMATIC_DEFAULT_scaled.mtz"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(shared(&format!("fixtures/mtz/{n}"))).unwrap()))
        .collect();
    // a small file of our own with history, so the trailer is exercised too
    let sg = SpaceGroup::from_hm("C 1 2 1").unwrap();
    let cell = UnitCell::new(60.0, 40.0, 50.0, 90.0, 100.0, 90.0);
    let hkl = unique_reflections(&cell, &sg, 8.0, false).unwrap();
    let mut m = Mtz::new_merged(cell, sg, &hkl, ("p", "c", "d"), 1.0);
    m.add_column("F", 'F', vec![1.5; hkl.len()]).unwrap();
    m.history = vec!["first".into(), "second".into()];
    v.push(("ours".into(), m.to_bytes().unwrap()));
    v
}

fn header_start(b: &[u8]) -> usize {
    4 * (i32::from_le_bytes(b[4..8].try_into().unwrap()) as usize - 1)
}

#[test]
fn mutated_mtz_never_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_4d54);
    let mut n_ok = 0;
    let mut n_err = 0;
    for (name, orig) in inputs() {
        let hs = header_start(&orig);
        for iter in 0..600 {
            let mut b = orig.clone();
            match iter % 6 {
                // flip bytes in the header text
                0 | 1 => {
                    for _ in 0..rng.random_range(1..6) {
                        let i = rng.random_range(hs..b.len());
                        b[i] = rng.random();
                    }
                }
                // digits in the header: turn one into another digit or a sign
                2 => {
                    let digits: Vec<usize> = (hs..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
                    let i = digits[rng.random_range(0..digits.len())];
                    b[i] = *b"0123456789-9".get(rng.random_range(0..12)).unwrap();
                }
                // first 80 bytes (stamp, header offset)
                3 => {
                    let i = rng.random_range(0..20);
                    b[i] = rng.random();
                }
                // truncate anywhere
                4 => b.truncate(rng.random_range(0..orig.len())),
                // anywhere, including the data block
                _ => {
                    for _ in 0..rng.random_range(1..20) {
                        let i = rng.random_range(0..b.len());
                        b[i] = rng.random();
                    }
                }
            }
            let r = catch_unwind(AssertUnwindSafe(|| Mtz::from_bytes(&b, "fuzz.mtz")));
            match r {
                Ok(Ok(m)) => {
                    n_ok += 1;
                    // what we did read is self-consistent
                    assert!(m.columns.iter().all(|c| c.values.len() == m.nrefl));
                    let _ = m.hkl();
                    let _ = m.amplitudes("F");
                }
                Ok(Err(e)) => {
                    n_err += 1;
                    assert!(e.to_string().contains("fuzz.mtz"), "error does not name the file: {e}");
                }
                Err(_) => panic!("{name}: reader panicked on mutation {iter}"),
            }
        }
    }
    // both outcomes occur, so the mutations reach the checks
    assert!(n_ok > 50 && n_err > 50, "ok {n_ok} err {n_err}");
}

#[test]
fn structural_damage_is_an_error() {
    let b = std::fs::read(shared("fixtures/mtz/cctbx_phaser_1.mtz")).unwrap();
    let hs = header_start(&b);
    assert!(Mtz::from_bytes(&b[..79], "x").is_err());
    assert!(Mtz::from_bytes(&b[..hs + 800], "x").is_err(), "no END");
    assert!(Mtz::from_bytes(&b[..b.len() - 80], "x").is_err(), "no MTZENDOFHEADERS");
    let mut bad = b.clone();
    bad[0] = b'X';
    assert!(Mtz::from_bytes(&bad, "x").is_err());
    // NCOL claims more rows than the data block holds
    let mut bad = b.clone();
    let text = String::from_utf8_lossy(&b[hs..]).to_string();
    let ncol = text.find("NCOL").unwrap();
    let rec = format!("{:<80}", "NCOL       21        99999        0");
    bad[hs + ncol..hs + ncol + 80].copy_from_slice(rec.as_bytes());
    let e = Mtz::from_bytes(&bad, "x.mtz").unwrap_err().to_string();
    assert!(e.contains("NCOL"), "{e}");
    // machine stamp of an unknown format
    let mut bad = b.clone();
    bad[8..12].copy_from_slice(&[0x22, 0x22, 0, 0]);
    assert!(Mtz::from_bytes(&bad, "x").is_err());
}
