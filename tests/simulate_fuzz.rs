//! Mutated inputs through the whole simulate path (read, expand, validate,
//! render a small ROI): every outcome is `Ok` or an `Err`, never a panic.
//! Deterministic: bytes of the real reference files are flipped, replaced or
//! truncated by a fixed-seed generator.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use diffbragg::simulate::{
    load_inputs, render, Fluence, Mosaic, RoiSpec, SimulateConfig, SpectrumSource, StructureFactors,
};
use rand::{Rng, SeedableRng};

fn mutate(bytes: &[u8], rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match rng.random_range(0..4) {
        0 => {
            // flip a few bits
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => {
            // replace a byte with a character that matters to the parsers
            let i = rng.random_range(0..b.len());
            b[i] = *b"-0.e9,[]{}\" \nNaN".get(rng.random_range(0..16)).unwrap();
        }
        2 => b.truncate(rng.random_range(0..b.len())),
        _ => {
            // duplicate a slice
            let i = rng.random_range(0..b.len());
            let j = (i + rng.random_range(1..40)).min(b.len());
            let s = b[i..j].to_vec();
            b.splice(i..i, s);
        }
    }
    b
}

#[test]
fn mutated_inputs_never_panic() {
    let r = diffbragg::testutil::shared("reference");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let orig_expt = std::fs::read(r.join("shot_00_tophat.expt")).unwrap();
    let orig_lam = std::fs::read(r.join("shot_00_tophat.lam")).unwrap();
    let orig_umats = std::fs::read(r.join("shot_00_tophat_umats.txt")).unwrap();
    // A small P1 list: the first 3000 reflections of the reference list.
    let hkl = diffbragg::io::hkl_text::read_hkl_text(r.join("lyso_P1.hkl.gz")).unwrap();
    let orig_hkl: Vec<u8> = hkl
        .hkl
        .iter()
        .zip(&hkl.f)
        .take(3000)
        .map(|(h, f)| format!("{} {} {} {f}\n", h[0], h[1], h[2]))
        .collect::<String>()
        .into_bytes();
    let files =
        [("in.expt", &orig_expt), ("in.lam", &orig_lam), ("umats.txt", &orig_umats), ("f.hkl", &orig_hkl)];
    let write_all = |skip: Option<usize>, data: &[u8]| {
        for (k, (name, bytes)) in files.iter().enumerate() {
            let b: &[u8] = if Some(k) == skip { data } else { bytes };
            std::fs::write(d.join(name), b).unwrap();
        }
    };
    let mut cfg = SimulateConfig::new(d.join("in.expt"), [18.0, 22.0, 30.0], d.join("out.h5"));
    cfg.spectrum = SpectrumSource::Lam(d.join("in.lam"));
    cfg.structure_factors = StructureFactors::HklText(d.join("f.hkl"));
    cfg.mosaic = Mosaic::Umats(d.join("umats.txt"));
    cfg.fluence = Fluence::PerArea(5e24);
    cfg.roi = RoiSpec::Box { f0: 600, f1: 603, s0: 700, s1: 703, panel: None };
    let attempt = |cfg: &SimulateConfig| -> Result<usize, String> {
        let inputs = load_inputs(cfg).map_err(|e| e.to_string())?;
        render(&inputs, false).map(|v| v.len()).map_err(|e| e.to_string())
    };
    write_all(None, &[]);
    assert_eq!(attempt(&cfg), Ok(16), "the unmutated inputs must work");

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let (mut n_ok, mut n_err) = (0, 0);
    for it in 0..240 {
        let k = it % files.len();
        let m = mutate(files[k].1, &mut rng);
        write_all(Some(k), &m);
        match catch_unwind(AssertUnwindSafe(|| attempt(&cfg))) {
            Ok(Ok(_)) => n_ok += 1,
            Ok(Err(e)) => {
                assert!(!e.is_empty());
                n_err += 1
            }
            Err(_) => {
                let name = files[k].0;
                std::fs::write(Path::new(&std::env::temp_dir()).join(format!("simulate_fuzz_{name}")), &m)
                    .ok();
                panic!("iteration {it}: a mutated {name} made simulate panic (saved in the temp dir)");
            }
        }
    }
    eprintln!("mutated inputs: {n_ok} rendered, {n_err} refused with an error");
    assert!(n_err > 20 && n_ok > 20, "mutations too weak or too strong: {n_ok} ok, {n_err} errors");
}
