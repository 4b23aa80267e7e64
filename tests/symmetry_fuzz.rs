//! Random and mutated Hall / H-M / triplet strings must give `Ok` or `Err`,
//! never a panic; whatever parses must be a closed group.

use diffbragg::symmetry::{parse_hall, settings, Op, ReciprocalAsu, SpaceGroup};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};

const ALPHABET: &[u8] = b"PABCIRFHST-_ 12346xyz'\"*abcnuvwdem()/,+:0589";

fn check(s: &str) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(g) = parse_hall(s) {
            // closed: every product is in the set
            let all = g.all_ops();
            for a in &all {
                for b in &all {
                    assert!(all.contains(&(*a * *b)), "{s:?}: not closed");
                }
            }
        }
        if let Ok(sg) = SpaceGroup::parse(s) {
            let asu = ReciprocalAsu::new(&sg);
            for h in [[1, 2, 3], [-3, 0, 5], [0, 0, -4], [2, 2, 2]] {
                let (a, isym) = asu.to_asu(&h);
                assert!(isym > 0 && asu.is_in(&a), "{s:?}: {h:?}");
            }
            let _ = sg.change_of_basis_to_primitive();
        }
        let _ = SpaceGroup::from_hm(s);
        let _ = Op::parse_triplet(s);
    }));
    assert!(r.is_ok(), "panicked on {s:?}");
}

#[test]
fn random_strings() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for _ in 0..6000 {
        let n = rng.random_range(0..24);
        let s: String = (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
        check(&s);
    }
}

#[test]
fn mutated_table_symbols() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let sources: Vec<String> = settings()
        .iter()
        .flat_map(|s| [s.hall.to_string(), s.xhm(), format!(" {} (x,y,z+1/12)", s.hall)])
        .chain(["x,y,z+1/2".to_string(), "-y,x-y,z+2/3".to_string()])
        .collect();
    for _ in 0..6000 {
        let src = &sources[rng.random_range(0..sources.len())];
        let mut b: Vec<u8> = src.bytes().collect();
        for _ in 0..rng.random_range(1..4) {
            let c = ALPHABET[rng.random_range(0..ALPHABET.len())];
            match rng.random_range(0..3) {
                0 if !b.is_empty() => {
                    let i = rng.random_range(0..b.len());
                    b[i] = c;
                }
                1 => {
                    let i = rng.random_range(0..=b.len());
                    b.insert(i, c);
                }
                _ if !b.is_empty() => {
                    let i = rng.random_range(0..b.len());
                    b.remove(i);
                }
                _ => {}
            }
        }
        check(&String::from_utf8_lossy(&b));
    }
    // non-ASCII input
    for s in ["P 2₁", "P 4 ²", "Ρ 1", "\u{0}", "(((", "P 2 (x,y,z+1/2", "P 2 (0 0 99999999999)"] {
        check(s);
        assert!(SpaceGroup::parse(s).is_err(), "{s:?}");
    }
}
