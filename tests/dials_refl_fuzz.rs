//! Deterministic mutation "fuzzing" of the `.refl` reader: flipped, overwritten, inserted,
//! deleted and truncated bytes of the real fixtures, aimed mostly at the msgpack structure
//! and the shoebox record headers (mutating pixel values only exercises the happy path).
//! Every outcome must be `Ok` or an `Err` that names the file; never a panic, and never an
//! allocation sized by a corrupt length.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use diffbragg::io::dials_refl::{decode_refl, encode_refl, read_refl, scan_refl};
use diffbragg::reflections::Column;
use diffbragg::testutil::shared;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fixture(name: &str) -> PathBuf {
    shared(&format!("fixtures/dials_data_files/ssx_CuNiR/{name}"))
}

#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    err: usize,
}

/// Decode `bytes`; a panic or an error that does not name `path` fails the test. A table
/// that decodes must also re-encode, and re-decode to the same bytes.
fn check(bytes: &[u8], path: &Path, what: &str, tally: &mut Tally) {
    let result = catch_unwind(AssertUnwindSafe(|| decode_refl(bytes, path)));
    match result {
        Err(_) => panic!("{what}: the reader panicked"),
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(msg.starts_with(path.to_str().unwrap()), "{what}: error does not name the file: {msg}");
            tally.err += 1;
        }
        Ok(Ok(f)) => {
            let again = catch_unwind(AssertUnwindSafe(|| {
                let enc = encode_refl(&f.table).expect("a decoded table must encode");
                let back = decode_refl(&enc, path).expect("an encoded table must decode");
                assert!(encode_refl(&back.table).unwrap() == enc, "re-encoding is not stable");
            }));
            assert!(again.is_ok(), "{what}: decoded table did not round-trip");
            tally.ok += 1;
        }
    }
}

/// Byte positions worth mutating: everything outside the column blobs (msgpack structure)
/// and the header (panel, bbox, flag) of every shoebox record.
fn structural_positions(bytes: &[u8], path: &Path) -> Vec<usize> {
    let raw = scan_refl(bytes, path).unwrap();
    let base = bytes.as_ptr() as usize;
    let mut in_blob = vec![false; bytes.len()];
    for c in &raw.columns {
        let start = c.blob.as_ptr() as usize - base;
        in_blob[start..start + c.blob.len()].iter_mut().for_each(|b| *b = true);
    }
    let mut pos: Vec<usize> = (0..bytes.len()).filter(|&i| !in_blob[i]).collect();
    let table = decode_refl(bytes, path).unwrap().table;
    for c in &raw.columns {
        if let Ok(Column::Shoebox(sbs)) = table.column(c.name) {
            let mut off = c.blob.as_ptr() as usize - base;
            for s in sbs {
                pos.extend(off..off + 29);
                let n = s.data.as_ref().map_or(0, |d| d.data.len());
                off += 29 + n * 12; // fixtures hold int32 masks
            }
            assert_eq!(off, c.blob.as_ptr() as usize - base + c.blob.len());
        }
    }
    pos
}

fn mutate(rng: &mut ChaCha8Rng, orig: &[u8], structural: &[usize]) -> (Vec<u8>, String) {
    let mut b = orig.to_vec();
    let pick = |rng: &mut ChaCha8Rng| -> usize {
        if rng.random_bool(0.85) {
            structural[rng.random_range(0..structural.len())]
        } else {
            rng.random_range(0..orig.len())
        }
    };
    let kind = rng.random_range(0..6);
    let what = match kind {
        0 => {
            let n = rng.random_range(1..=4);
            let mut at = Vec::new();
            for _ in 0..n {
                let p = pick(rng);
                b[p] ^= 1 << rng.random_range(0..8);
                at.push(p);
            }
            format!("bit flips at {at:?}")
        }
        1 => {
            let p = pick(rng);
            let len = [1, 2, 4, 8][rng.random_range(0..4)].min(b.len() - p);
            let fill: u8 = if rng.random_bool(0.5) { 0xff } else { rng.random() };
            b[p..p + len].iter_mut().for_each(|x| *x = fill);
            format!("{len} bytes set to {fill:#04x} at {p}")
        }
        2 => {
            let keep = rng.random_range(0..orig.len());
            b.truncate(keep);
            format!("truncated to {keep} bytes")
        }
        3 => {
            let p = pick(rng);
            let n = rng.random_range(1..=8).min(b.len() - p);
            b.drain(p..p + n);
            format!("{n} bytes deleted at {p}")
        }
        4 => {
            let p = pick(rng);
            let n = rng.random_range(1..=8);
            let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            b.splice(p..p, ins);
            format!("{n} bytes inserted at {p}")
        }
        _ => {
            // An absurd 32-bit value (a length, count or bound) at a structural position.
            let p = pick(rng).min(b.len().saturating_sub(4));
            let v: u32 = [u32::MAX, i32::MAX as u32, 0x8000_0000, rng.random()][rng.random_range(0..4)];
            b[p..p + 4].copy_from_slice(&v.to_le_bytes());
            format!("u32 {v:#x} written at {p}")
        }
    };
    (b, what)
}

fn fuzz_fixture(name: &str, iterations: usize, seed: u64) -> Tally {
    let path = fixture(name);
    let orig = std::fs::read(&path).unwrap();
    let structural = structural_positions(&orig, &path);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tally = Tally::default();
    for i in 0..iterations {
        let (bytes, what) = mutate(&mut rng, &orig, &structural);
        check(&bytes, &path, &format!("{name} #{i}: {what}"), &mut tally);
    }
    eprintln!("{name}: {iterations} mutations, {tally:?}");
    tally
}

#[test]
fn mutated_fixtures_never_panic() {
    for (name, n, seed) in
        [("strong_1.refl", 3000, 1), ("indexed.refl", 1500, 2), ("integrated.refl", 250, 3)]
    {
        let t = fuzz_fixture(name, n, seed);
        // Aimed at the structure, most mutations must be caught.
        assert!(t.err > n / 2, "{name}: only {} of {n} mutations were rejected", t.err);
    }
}

#[test]
fn mutated_gzip_never_panics() {
    let path = fixture("strong_1.refl");
    let orig = std::fs::read(&path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&orig).unwrap();
    let gz = gz.finish().unwrap();
    let all: Vec<usize> = (0..gz.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut tally = Tally::default();
    for i in 0..300 {
        let (bytes, what) = mutate(&mut rng, &gz, &all);
        check(&bytes, &path, &format!("gz #{i}: {what}"), &mut tally);
    }
    assert!(tally.err > 150, "{tally:?}");
}

#[test]
fn mutated_file_on_disk_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let orig = std::fs::read(fixture("indexed.refl")).unwrap();
    let p = dir.path().join("cut.refl");
    std::fs::write(&p, &orig[..orig.len() / 2]).unwrap();
    let e = read_refl(&p).unwrap_err().to_string();
    assert!(e.starts_with(p.to_str().unwrap()) && e.contains("truncated"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Hand-built files with absurd lengths (independent msgpack encoding, written out here).

fn s(x: &str) -> Vec<u8> {
    assert!(x.len() < 32);
    let mut v = vec![0xa0 | x.len() as u8];
    v.extend_from_slice(x.as_bytes());
    v
}

fn u64be(marker: u8, v: u64) -> Vec<u8> {
    let mut out = vec![marker];
    out.extend_from_slice(&v.to_be_bytes());
    out
}

/// `[file type, 1, {"nrows": nrows, "data": {name: [type, [count, blob]]}}]` from raw parts.
fn table(nrows: &[u8], name: &str, ty: &str, count: &[u8], blob: &[u8]) -> Vec<u8> {
    let mut b = vec![0x93, 0xbb];
    b.extend_from_slice(b"dials::af::reflection_table");
    b.extend_from_slice(&[0x01, 0x82]);
    b.extend(s("nrows"));
    b.extend_from_slice(nrows);
    b.extend(s("data"));
    b.push(0x81);
    b.extend(s(name));
    b.push(0x92);
    let mut t = vec![0xd9, ty.len() as u8];
    t.extend_from_slice(ty.as_bytes());
    b.extend(t);
    b.push(0x92);
    b.extend_from_slice(count);
    b.extend_from_slice(blob);
    b
}

fn bin8(data: &[u8]) -> Vec<u8> {
    let mut v = vec![0xc4, data.len() as u8];
    v.extend_from_slice(data);
    v
}

fn shoebox_record(bbox: [i32; 6], flag: u8) -> Vec<u8> {
    let mut v = 0u32.to_le_bytes().to_vec();
    for x in bbox {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.push(flag);
    v.extend_from_slice(&[0u8; 12]); // far fewer pixel bytes than the box claims
    v
}

#[test]
fn absurd_lengths_are_rejected_before_allocating() {
    let path = Path::new("/data/absurd.refl");
    let huge = u64be(0xcf, 1 << 62);
    let max_box = [i32::MIN, i32::MAX, i32::MIN, i32::MAX, 0, 1];
    let cube = [i32::MIN, i32::MAX, i32::MIN, i32::MAX, i32::MIN, i32::MAX];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("2^62 doubles in a 16-byte blob", table(&huge, "d", "double", &huge, &bin8(&[0; 16])), "bytes"),
        (
            "2^62 shoeboxes in 29 bytes",
            table(&huge, "shoebox", "Shoebox<>", &huge, &bin8(&[0; 29])),
            "cannot hold",
        ),
        (
            "shoebox of 2^64 voxels",
            table(&[1], "shoebox", "Shoebox<>", &[1], &bin8(&shoebox_record(max_box, 1))),
            "needs",
        ),
        (
            "shoebox of 2^96 voxels",
            table(&[1], "shoebox", "Shoebox<>", &[1], &bin8(&shoebox_record(cube, 2))),
            "too many voxels",
        ),
        (
            "bin32 of 4 GiB",
            table(&[1], "d", "double", &[1], &[0xc6, 0xff, 0xff, 0xff, 0xff, 0, 0]),
            "truncated",
        ),
        ("nrows mismatch", table(&[2], "d", "double", &[1], &bin8(&[0; 8])), "nrows = 2"),
        ("negative count", table(&[1], "d", "double", &[0xff], &bin8(&[0; 8])), "negative"),
    ];
    let mut more = Vec::new();
    // Top-level array32 with 2^32-1 entries.
    more.push(("array32 top level", vec![0xdd, 0xff, 0xff, 0xff, 0xff], "expected 3"));
    // Header map32 claiming 2^32-1 keys, then nothing.
    let mut m = table(&[1], "d", "double", &[1], &bin8(&[0; 8]));
    m.truncate(30);
    m.extend_from_slice(&[0xdf, 0xff, 0xff, 0xff, 0xff]);
    more.push(("map32 header", m, "truncated"));
    // A column name claiming 4 GiB.
    let mut n = table(&[1], "d", "double", &[1], &bin8(&[0; 8]));
    let at = n.windows(2).position(|w| w == [0xa1, b'd']).unwrap();
    n.splice(at..at + 2, [0xdb, 0xff, 0xff, 0xff, 0xff]);
    more.push(("str32 name", n, "truncated"));

    for (what, bytes, expect) in cases.into_iter().chain(more) {
        let t0 = std::time::Instant::now();
        let r = catch_unwind(|| decode_refl(&bytes, path));
        let e = match r {
            Err(_) => panic!("{what}: panicked"),
            Ok(Ok(_)) => panic!("{what}: accepted"),
            Ok(Err(e)) => e.to_string(),
        };
        assert!(e.starts_with("/data/absurd.refl") && e.contains(expect), "{what}: {e}");
        assert!(t0.elapsed().as_secs_f64() < 1.0, "{what}: took {:?}", t0.elapsed());
    }
    // Sanity: the same builder with sane lengths gives a valid table, so the cases above
    // fail for the reason they claim.
    let ok = table(&[2], "d", "double", &[2], &bin8(&1.5f64.to_le_bytes().repeat(2)));
    assert_eq!(decode_refl(&ok, path).unwrap().table.get_double("d").unwrap(), &[1.5, 1.5]);
    let mut rec = shoebox_record([0, 1, 0, 1, 0, 1], 1);
    rec.truncate(29 + 12);
    let ok = table(&[1], "shoebox", "Shoebox<>", &[1], &bin8(&rec));
    assert_eq!(
        decode_refl(&ok, path).unwrap().table.get_shoebox("shoebox").unwrap()[0].bbox,
        [0, 1, 0, 1, 0, 1]
    );
}
