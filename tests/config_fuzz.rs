//! Deterministic mutation fuzzing: flipped, inserted, deleted and truncated
//! bytes of the user's real phil files (and of override strings) must give
//! `Ok` or `Err`, never a panic, under every program.

use diffbragg::config::{phil, Config, EnsHopper, Hopper, Integrate, ProgramKind, StillsProcess};
use diffbragg::testutil::shared;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const SPECIAL: &[u8] = b"{}=#\"'*[](),.;\\ \n\t-eE0N";

fn mutate(rng: &mut ChaCha8Rng, src: &[u8]) -> Vec<u8> {
    let mut v = src.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if v.is_empty() {
            v.push(b'{');
        }
        let i = rng.random_range(0..v.len());
        match rng.random_range(0..6) {
            0 => v[i] ^= 1 << rng.random_range(0..8),
            1 => v[i] = SPECIAL[rng.random_range(0..SPECIAL.len())],
            2 => {
                let n = rng.random_range(1..=10).min(v.len() - i);
                v.drain(i..i + n);
            }
            3 => v.insert(i, SPECIAL[rng.random_range(0..SPECIAL.len())]),
            4 => v.truncate(i),
            _ => {
                // Duplicate a line (repeated definitions, unbalanced braces).
                let start = v[..i].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                let end = v[i..].iter().position(|&b| b == b'\n').map_or(v.len(), |p| i + p + 1);
                let line = v[start..end].to_vec();
                v.splice(end..end, line);
            }
        }
    }
    v
}

/// Load under program K; true when it was accepted.
fn try_load<K: ProgramKind>(text: &str, over: &[String]) -> bool {
    let files = vec![(PathBuf::from("/fuzz/in.phil"), text.to_string())];
    Config::<K>::from_texts(&files, over, Path::new("/fuzz")).is_ok()
}

#[test]
fn mutated_phil_files_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_f11e);
    let (mut ok, mut err) = (0usize, 0usize);
    for name in ["stage_one_test.phil", "stage_two_test.phil", "simulation.phil", "sim_processing.phil"] {
        let src = std::fs::read(shared(&format!("seed/{name}"))).unwrap();
        for _ in 0..600 {
            let bytes = mutate(&mut rng, &src);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let r = catch_unwind(AssertUnwindSafe(|| {
                let _ = phil::parse_file_text(&text, Path::new("/fuzz/in.phil"));
                [
                    try_load::<Hopper>(&text, &[]),
                    try_load::<Integrate>(&text, &[]),
                    try_load::<EnsHopper>(&text, &[]),
                    try_load::<StillsProcess>(&text, &[]),
                ]
            }));
            match r {
                Ok(results) => results.iter().for_each(|&a| if a { ok += 1 } else { err += 1 }),
                Err(_) => panic!("panic on mutated {name}:\n{text}"),
            }
        }
    }
    // The mutations must exercise both outcomes, or the test proves little.
    assert!(ok > 500 && err > 500, "ok={ok} err={err}");
}

#[test]
fn mutated_overrides_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let base = [
        "threshold=1e2",
        "fix.Nabc=True",
        "load_data_from_refl=True",
        "init.Nabc=[30,31,32]",
        "roi.hotpixel_mask=\"a b.mask\"",
        "global_threshold=Auto",
        "refiner.res_ranges=2.5-10,1.8-2.5",
    ];
    let (mut ok, mut err) = (0usize, 0usize);
    for _ in 0..3000 {
        let arg = base[rng.random_range(0..base.len())];
        let m = String::from_utf8_lossy(&mutate(&mut rng, arg.as_bytes())).into_owned();
        let over = vec![m.clone()];
        let r = catch_unwind(AssertUnwindSafe(|| {
            [
                try_load::<Integrate>("", &over),
                try_load::<Hopper>("", &over),
                try_load::<StillsProcess>("", &over),
            ]
        }));
        match r {
            Ok(results) => results.iter().for_each(|&a| if a { ok += 1 } else { err += 1 }),
            Err(_) => panic!("panic on override {m:?}"),
        }
    }
    assert!(ok > 100 && err > 100, "ok={ok} err={err}");
}
