//! Stage 2's pixel loader: bad rows give one error naming the shard, shot and
//! ROI; mutated or truncated shards never panic; what is loaded equals what
//! was written, whatever the shard order.

use std::collections::BTreeSet;
use std::path::Path;

use diffbragg::stage2::data::{load_pixels, shot_counts};
use diffbragg::stage2::synth::{make, SynthOptions};
use diffbragg::store::{BatchBuilder, Store, Table, Value};

fn row(roi: i32, bbox: [i32; 4], n: usize) -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("shot_id", 7i64.into()),
        ("roi_id", roi.into()),
        ("panel", 0u32.into()),
        ("bbox", bbox.into()),
        ("hkl", [1, 2, 3].into()),
        ("sigma_readout", 1.5f32.into()),
        ("data", vec![1.0f32; n].into()),
        ("background", vec![0.5f32; n].into()),
        ("trusted", vec![1u8; n].into()),
    ]
}

fn load_one(dir: &Path, rows: &[Vec<(&'static str, Value<'static>)>]) -> diffbragg::error::Result<usize> {
    let mut s = Store::create(dir, 0, false)?;
    let mut b = BatchBuilder::new(Table::Pixels);
    for r in rows {
        b.append(r)?;
    }
    s.append_builder(&mut b)?;
    let shots = BTreeSet::from([7i64]);
    let m = load_pixels(&s, &shots)?;
    Ok(m.get(&7).map_or(0, |p| p.n_pixels()))
}

#[test]
fn bad_rows_are_named_errors() {
    let set = |mut r: Vec<(&'static str, Value<'static>)>, k: &'static str, v: Value<'static>| {
        r.iter_mut().find(|c| c.0 == k).unwrap().1 = v;
        r
    };
    let good = row(3, [10, 13, 20, 22], 6);
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(load_one(&tmp.path().join("ok"), std::slice::from_ref(&good)).unwrap(), 6);
    let cases: Vec<(Vec<(&'static str, Value<'static>)>, &str)> = vec![
        (set(good.clone(), "data", vec![1.0f32; 5].into()), "`data` holds 5 values"),
        (set(good.clone(), "data", vec![1.0f32, f32::NAN, 1.0, 1.0, 1.0, 1.0].into()), "not finite"),
        (set(good.clone(), "trusted", vec![1u8, 1, 2, 1, 1, 1].into()), "trusted[2] = 2"),
        (set(good.clone(), "bbox", [13, 10, 20, 22].into()), "empty or negative"),
        (set(good.clone(), "sigma_readout", (-1.0f32).into()), "sigma_readout"),
        (
            {
                let mut r = good.clone();
                r.push(("freq", vec![1u8, 0, 1, 1, 1, 1].into()));
                r
            },
            "freq[1] is 0",
        ),
    ];
    for (i, (r, needle)) in cases.into_iter().enumerate() {
        let e = load_one(&tmp.path().join(format!("bad{i}")), &[r]).unwrap_err().to_string();
        assert!(e.contains("shot_id 7 roi_id 3") && e.contains(needle), "case {i}: {e}");
    }
    let e = load_one(&tmp.path().join("dup"), &[good.clone(), good]).unwrap_err().to_string();
    assert!(e.contains("ROI 3 twice"), "{e}");
}

#[test]
fn shards_in_any_order_load_the_same_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let o = SynthOptions { n_shots: 6, shots_per_shard: 2, ..Default::default() };
    let t = make(tmp.path(), &o).unwrap();
    let s = Store::open(&t.store).unwrap();
    let shots: BTreeSet<i64> = t.shot_ids.iter().copied().collect();
    let a = load_pixels(&s, &shots).unwrap();
    assert_eq!(a.values().map(|p| p.n_pixels()).sum::<usize>(), t.n_pixels);
    assert_eq!(a.values().map(|p| p.rois.len()).sum::<usize>(), t.n_rois);
    let counts = shot_counts(&s).unwrap();
    for c in &counts {
        assert_eq!(c.n_pixels as usize, a[&c.shot_id].n_pixels());
        assert_eq!(c.n_rois as usize, a[&c.shot_id].rois.len());
    }
    // Rewrite the shards with the ROI rows of every shot reversed and spread differently.
    let dir2 = tmp.path().join("store2");
    let mut s2 = Store::create(&dir2, 3, false).unwrap();
    for b in s.read(Table::Pixels, None).unwrap().into_iter().rev() {
        let idx: Vec<u32> = (0..b.num_rows() as u32).rev().collect();
        let idx = arrow::array::UInt32Array::from(idx);
        let cols: Vec<arrow::array::ArrayRef> =
            b.columns().iter().map(|c| arrow::compute::take(c, &idx, None).unwrap()).collect();
        let rb = arrow::record_batch::RecordBatch::try_new(b.schema(), cols).unwrap();
        s2.append(Table::Pixels, &[rb]).unwrap();
    }
    let b2 = load_pixels(&Store::open(&dir2).unwrap(), &shots).unwrap();
    assert_eq!(a, b2);
    // Only the requested shots are kept.
    let one = BTreeSet::from([t.shot_ids[2]]);
    let c = load_pixels(&s, &one).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[&t.shot_ids[2]], a[&t.shot_ids[2]]);
}

#[test]
fn mutated_shards_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let o = SynthOptions { n_shots: 2, ..Default::default() };
    let t = make(tmp.path(), &o).unwrap();
    let s = Store::open(&t.store).unwrap();
    let shard = &s.shards(Table::Pixels).unwrap()[0].2;
    let bytes = std::fs::read(shard).unwrap();
    let fuzz_dir = tmp.path().join("fuzz");
    let fs = Store::create(&fuzz_dir, 0, false).unwrap();
    let target = fs.table_dir(Table::Pixels).join("rank0-00000.parquet");
    let shots: BTreeSet<i64> = t.shot_ids.iter().copied().collect();
    let mut rng = 0x2545F4914F6CDD1Du64;
    let (mut n_ok, mut n_err) = (0, 0);
    for i in 0..400 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut m = bytes.clone();
        match i % 4 {
            0 => m.truncate(rng as usize % m.len()),
            _ => {
                for k in 0..(1 + i % 3) {
                    let p = (rng as usize).wrapping_add(k * 7919) % m.len();
                    m[p] ^= 1u8 << (rng >> 61);
                }
            }
        }
        std::fs::write(&target, &m).unwrap();
        let r = std::panic::catch_unwind(|| {
            let st = Store::open(&fuzz_dir).unwrap();
            (shot_counts(&st).is_ok(), load_pixels(&st, &shots).is_ok())
        });
        match r {
            Ok((true, true)) => n_ok += 1,
            Ok(_) => n_err += 1,
            Err(_) => panic!("mutation {i} panicked"),
        }
    }
    eprintln!("{n_ok} mutations loaded, {n_err} rejected");
    assert!(n_err > 50);
}
