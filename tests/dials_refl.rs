//! `.refl` reader/writer against the real DIALS fixtures and an independent Python
//! (msgpack + numpy) decoder and writer written here from formats.md §2.2–2.3.

use std::path::{Path, PathBuf};
use std::process::Command;

use diffbragg::io::dials_refl::{
    decode_refl, encode_refl, read_refl, read_refl_file, scan_refl, write_refl, Container,
};
use diffbragg::reflections::{mask_code, Column, ReflectionTable, Shoebox, ShoeboxData, ShoeboxMask};
use diffbragg::testutil::shared;
use serde_json::{json, Value};

const FIXTURES: [&str; 3] = ["strong_1.refl", "indexed.refl", "integrated.refl"];

fn fixture(name: &str) -> PathBuf {
    shared(&format!("fixtures/dials_data_files/ssx_CuNiR/{name}"))
}

/// Independent decoder: per-file statistics that the Rust side recomputes from its table.
/// Float sums are sequential f64 sums (the order Rust uses) reported as IEEE bit patterns.
const PY_STATS: &str = r#"
import sys, json, struct, gzip, collections
import msgpack, numpy as np

DT = {'bool': ('u1', 1), 'int': ('<i4', 1), 'std::size_t': ('<u8', 1), 'double': ('<f8', 1),
      'vec2<double>': ('<f8', 2), 'vec3<double>': ('<f8', 3), 'mat3<double>': ('<f8', 9),
      'int6': ('<i4', 6), 'cctbx::miller::index<>': ('<i4', 3)}

def bits(x):
    return struct.unpack('<Q', struct.pack('<d', float(x)))[0]

def seqsum(vals):
    s = 0.0
    for v in vals:
        s += v
    return s

def shoeboxes(blob, n):
    p = 0
    st = dict(n_data=0, n_flag1=0, n_flag2=0, voxels=0, data_sum=0.0, bg_sum=0.0, mask_sum=0,
              fg_count=0, panel_sum=0, bbox_sum=[0] * 6)
    for _ in range(n):
        panel, x0, x1, y0, y1, z0, z1, flag = struct.unpack_from('<I6iB', blob, p)
        p += 29
        st['panel_sum'] += panel
        for j, v in enumerate((x0, x1, y0, y1, z0, z1)):
            st['bbox_sum'][j] += v
        if flag in (1, 2):
            nv = (x1 - x0) * (y1 - y0) * (z1 - z0)
            st['n_data'] += 1
            st['n_flag%d' % flag] += 1
            st['voxels'] += nv
            data = np.frombuffer(blob, '<f4', nv, p); p += 4 * nv
            mdt, ms = ('<i4', 4) if flag == 1 else ('u1', 1)
            mask = np.frombuffer(blob, mdt, nv, p).astype(np.int64); p += ms * nv
            bg = np.frombuffer(blob, '<f4', nv, p); p += 4 * nv
            st['data_sum'] = seqsum([st['data_sum']] + [float(v) for v in data])
            st['bg_sum'] = seqsum([st['bg_sum']] + [float(v) for v in bg])
            st['mask_sum'] += int(mask.sum())
            st['fg_count'] += int(((mask & 4) != 0).sum())
        else:
            assert flag == 0, flag
    assert p == len(blob), (p, len(blob))
    st['data_sum'] = bits(st['data_sum'])
    st['bg_sum'] = bits(st['bg_sum'])
    return st

def stats(path):
    raw = open(path, 'rb').read()
    if raw[:2] == b'\x1f\x8b':
        raw = gzip.decompress(raw)
    ftype, version, hdr = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    assert ftype == 'dials::af::reflection_table'
    nrows = hdr['nrows']
    out = dict(version=version, nrows=nrows,
               identifiers={str(k): v for k, v in hdr.get('identifiers', {}).items()},
               columns={}, numeric={}, shoebox={}, skipped=[])
    for name, (tname, (n, blob)) in hdr['data'].items():
        assert n == nrows
        if tname == 'std::string':
            out['skipped'].append(name)
            continue
        out['columns'][name] = tname
        if tname == 'Shoebox<>':
            out['shoebox'][name] = shoeboxes(blob, n)
            continue
        dt, k = DT[tname]
        a = np.frombuffer(blob, dt).reshape(n, k)
        if dt == '<f8':
            conv = bits
            sums = [bits(seqsum(a[:, j].tolist())) for j in range(k)]
        else:
            conv = int
            sums = [sum(int(v) for v in a[:, j].tolist()) for j in range(k)]
        ends = [[conv(v) for v in a[i].tolist()] for i in ((0, n - 1) if n else ())]
        out['numeric'][name] = dict(sums=sums, ends=ends)
        if name == 'id':
            c = collections.Counter(a[:, 0].tolist())
            out['id_counts'] = {str(k): v for k, v in sorted(c.items())}
    return out

print(json.dumps({p: stats(p) for p in sys.argv[1:]}))
"#;

fn python(dir: &Path, script: &str, args: &[&Path]) -> String {
    let script_path = dir.join("script.py");
    std::fs::write(&script_path, script).unwrap();
    let out =
        Command::new("python3").arg(&script_path).args(args).output().expect("python3 must be installed");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn py_stats(dir: &Path, paths: &[&Path]) -> Value {
    serde_json::from_str(&python(dir, PY_STATS, paths)).unwrap()
}

fn seqsum(it: impl Iterator<Item = f64>) -> f64 {
    let mut s = 0.0;
    for v in it {
        s += v;
    }
    s
}

/// The same statistics as `PY_STATS`, from the decoded Rust table.
fn rust_stats(t: &ReflectionTable, version: u64) -> Value {
    let mut columns = serde_json::Map::new();
    let mut numeric = serde_json::Map::new();
    let mut shoebox = serde_json::Map::new();
    for (name, col) in t.columns() {
        columns.insert(name.into(), json!(col.column_type().dials_name()));
        // Rows as lists of JSON numbers: floats as bit patterns, integers as integers.
        let rows: Vec<Vec<Value>> = match col {
            Column::Bool(v) => v.iter().map(|&b| vec![json!(b as u8)]).collect(),
            Column::Int(v) => v.iter().map(|&x| vec![json!(x)]).collect(),
            Column::Size(v) => v.iter().map(|&x| vec![json!(x)]).collect(),
            Column::Double(v) => v.iter().map(|&x| vec![json!(x.to_bits())]).collect(),
            Column::Vec2(v) => v.iter().map(|r| r.iter().map(|x| json!(x.to_bits())).collect()).collect(),
            Column::Vec3(v) => v.iter().map(|r| r.iter().map(|x| json!(x.to_bits())).collect()).collect(),
            Column::Mat3(v) => v.iter().map(|r| r.iter().map(|x| json!(x.to_bits())).collect()).collect(),
            Column::Int6(v) => v.iter().map(|r| r.iter().map(|&x| json!(x)).collect()).collect(),
            Column::Miller(v) => v.iter().map(|r| r.iter().map(|&x| json!(x)).collect()).collect(),
            Column::Shoebox(v) => {
                shoebox.insert(name.into(), shoebox_stats(v));
                continue;
            }
        };
        let k = match col {
            Column::Vec2(_) => 2,
            Column::Vec3(_) | Column::Miller(_) => 3,
            Column::Int6(_) => 6,
            Column::Mat3(_) => 9,
            _ => 1,
        };
        let sums: Vec<Value> = (0..k)
            .map(|j| match col {
                Column::Double(_) | Column::Vec2(_) | Column::Vec3(_) | Column::Mat3(_) => {
                    json!(seqsum(rows.iter().map(|r| f64::from_bits(r[j].as_u64().unwrap()))).to_bits())
                }
                Column::Size(v) => json!(v.iter().map(|&x| x as u128).sum::<u128>() as u64),
                _ => json!(rows.iter().map(|r| r[j].as_i64().unwrap()).sum::<i64>()),
            })
            .collect();
        let ends: Vec<Value> = match rows.len() {
            0 => vec![],
            n => vec![json!(rows[0]), json!(rows[n - 1])],
        };
        numeric.insert(name.into(), json!({"sums": sums, "ends": ends}));
    }
    let mut out = json!({
        "version": version,
        "nrows": t.nrows(),
        "identifiers": t.identifiers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "columns": columns,
        "numeric": numeric,
        "shoebox": shoebox,
    });
    if let Ok(ids) = t.get_int("id") {
        let mut counts = std::collections::BTreeMap::<i32, usize>::new();
        for &i in ids {
            *counts.entry(i).or_default() += 1;
        }
        out["id_counts"] =
            counts.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>().into();
    }
    out
}

fn shoebox_stats(v: &[Shoebox]) -> Value {
    let (mut n_data, mut n1, mut n2, mut voxels, mut mask_sum, mut fg, mut panel_sum) =
        (0u64, 0, 0, 0u64, 0i64, 0u64, 0u64);
    let (mut data_sum, mut bg_sum) = (0.0f64, 0.0f64);
    let mut bbox_sum = [0i64; 6];
    for s in v {
        panel_sum += s.panel as u64;
        for (acc, &b) in bbox_sum.iter_mut().zip(&s.bbox) {
            *acc += b as i64;
        }
        if let Some(d) = &s.data {
            n_data += 1;
            match d.mask {
                ShoeboxMask::I32(_) => n1 += 1,
                ShoeboxMask::U8(_) => n2 += 1,
            }
            voxels += d.data.len() as u64;
            for &x in &d.data {
                data_sum += x as f64;
            }
            for &x in &d.background {
                bg_sum += x as f64;
            }
            for m in d.mask.iter() {
                mask_sum += m as i64;
                fg += (m & mask_code::FOREGROUND != 0) as u64;
            }
        }
    }
    json!({"n_data": n_data, "n_flag1": n1, "n_flag2": n2, "voxels": voxels, "data_sum": data_sum.to_bits(),
           "bg_sum": bg_sum.to_bits(), "mask_sum": mask_sum, "fg_count": fg, "panel_sum": panel_sum,
           "bbox_sum": bbox_sum})
}

/// Compare key by key so a failure names the column.
fn assert_stats_eq(rust: &Value, py: &Value, what: &str) {
    for key in ["version", "nrows", "identifiers", "columns", "id_counts"] {
        assert_eq!(rust.get(key), py.get(key), "{what}: `{key}` differs");
    }
    for group in ["numeric", "shoebox"] {
        let (r, p) = (rust[group].as_object().unwrap(), py[group].as_object().unwrap());
        assert_eq!(
            r.keys().collect::<Vec<_>>(),
            p.keys().collect::<Vec<_>>(),
            "{what}: {group} columns differ"
        );
        for (name, rv) in r {
            assert_eq!(rv, &p[name], "{what}: column `{name}` statistics differ");
        }
    }
}

#[test]
fn every_fixture_reads_with_expected_shape() {
    let expected =
        [("strong_1.refl", 167, 11, 1), ("indexed.refl", 360, 25, 5), ("integrated.refl", 5203, 24, 5)];
    for (name, nrows, ncols, nids) in expected {
        let f = read_refl_file(fixture(name)).unwrap();
        assert_eq!(f.version, 1, "{name}");
        assert_eq!(f.container, Container::Msgpack);
        assert!(f.warnings.is_empty(), "{name}: {:?}", f.warnings);
        assert_eq!(
            (f.table.nrows(), f.table.ncols(), f.table.identifiers.len()),
            (nrows, ncols, nids),
            "{name}"
        );
    }
    // Spot values from formats.md §2.5 and the fixture README.
    let t = read_refl(fixture("strong_1.refl")).unwrap();
    assert_eq!(t.identifiers[&0], "001");
    let sb = &t.get_shoebox("shoebox").unwrap()[0];
    assert_eq!(sb.bbox, [1300, 1303, 577, 578, 16999, 17000]);
    assert!(matches!(&sb.data, Some(ShoeboxData { mask: ShoeboxMask::I32(m), .. }) if m.len() == 3));
    // SSX stills imported as one-image sequences: z = image_number - 1 + 0.5.
    let z = t.get_vec3("xyzobs.px.value").unwrap()[0][2];
    assert_eq!(z, 16999.5);
    assert!(t.get_size("flags").unwrap().iter().all(|&f| f == 32), "strong spots have flags = 32");

    let t = read_refl(fixture("integrated.refl")).unwrap();
    assert!(
        t.get_int6("bbox").unwrap().iter().any(|b| b.iter().any(|&v| v < 0)),
        "negative bbox values occur"
    );
    let e = t.get_vec3("d").unwrap_err().to_string();
    assert!(e.contains("`d`") && e.contains("has type double"), "{e}");
}

#[test]
fn python_decoder_agrees_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = FIXTURES.iter().map(|n| fixture(n)).collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let py = py_stats(dir.path(), &refs);
    for p in &paths {
        let f = read_refl_file(p).unwrap();
        let key = p.to_str().unwrap();
        let rust = rust_stats(&f.table, f.version);
        assert_stats_eq(&rust, &py[key], key);
        // The comparison must have covered real content.
        assert!(py[key]["numeric"].as_object().unwrap().len() >= 10, "{key}");
    }
    assert!(py[paths[0].to_str().unwrap()]["shoebox"]["shoebox"]["voxels"].as_u64().unwrap() > 100);
}

#[test]
fn round_trip_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let src = fixture(name);
        let original = std::fs::read(&src).unwrap();
        let table = read_refl(&src).unwrap();
        let out = dir.path().join(name);
        write_refl(&out, &table).unwrap();
        let written = std::fs::read(&out).unwrap();

        // Column by column first, so a failure names the column.
        let a = scan_refl(&original, &src).unwrap();
        let b = scan_refl(&written, &out).unwrap();
        assert_eq!((a.version, a.nrows, &a.identifiers), (b.version, b.nrows, &b.identifiers), "{name}");
        assert_eq!(a.columns.len(), b.columns.len(), "{name}");
        for (ca, cb) in a.columns.iter().zip(&b.columns) {
            assert_eq!(
                (ca.name, ca.type_name, ca.n_elements),
                (cb.name, cb.type_name, cb.n_elements),
                "{name}"
            );
            assert!(ca.blob == cb.blob, "{name}: column `{}` blob differs", ca.name);
        }
        assert!(original == written, "{name}: whole file differs although every column matches");
        assert_eq!(encode_refl(&table).unwrap(), original, "{name}");
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            FIXTURES.iter().position(|n| *n == name).unwrap() + 1
        );
    }
}

#[test]
fn gzip_wrapped_table_reads_the_same() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(fixture("indexed.refl")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&original).unwrap();
    let path = dir.path().join("indexed.refl.gz");
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let f = read_refl_file(&path).unwrap();
    assert_eq!(f.container, Container::GzipMsgpack);
    assert_eq!(encode_refl(&f.table).unwrap(), original);

    // A gzip of something else is refused with the file named.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"hello").unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let e = read_refl(&path).unwrap_err().to_string();
    assert!(e.contains("indexed.refl.gz") && e.contains("msgpack"), "{e}");
}

#[test]
fn legacy_pickle_hdf5_and_junk_are_refused_clearly() {
    let pickle = shared("fixtures/dials_data_files/legacy_pickle/multi_stills_combined.pickle");
    let e = read_refl(&pickle).unwrap_err().to_string();
    eprintln!("{e}");
    assert!(e.starts_with(pickle.to_str().unwrap()), "{e}");
    assert!(e.contains("legacy pickle"), "{e}");
    assert!(e.contains("flex.reflection_table.from_file(") && e.contains(".as_file("), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let h5 = dir.path().join("t.refl");
    std::fs::write(&h5, b"\x89HDF\r\n\x1a\n\0\0\0\0").unwrap();
    let e = read_refl(&h5).unwrap_err().to_string();
    assert!(e.contains("t.refl") && e.contains("HDF5") && e.contains("as_file("), "{e}");

    let junk = dir.path().join("j.refl");
    std::fs::write(&junk, b"{\"a\": 1}").unwrap();
    let e = read_refl(&junk).unwrap_err().to_string();
    assert!(e.contains("j.refl") && e.contains("not a DIALS reflection table"), "{e}");

    std::fs::write(&junk, b"").unwrap();
    assert!(read_refl(&junk).unwrap_err().to_string().contains("empty file"));

    let missing = dir.path().join("missing.refl");
    assert!(read_refl(&missing).unwrap_err().to_string().contains("missing.refl"));
}

#[test]
fn decode_integrated_is_fast() {
    let bytes = std::fs::read(fixture("integrated.refl")).unwrap();
    let path = fixture("integrated.refl");
    let t0 = std::time::Instant::now();
    let n = 20;
    for _ in 0..n {
        let f = decode_refl(&bytes, &path).unwrap();
        assert_eq!(f.table.nrows(), 5203);
    }
    let per = t0.elapsed().as_secs_f64() / n as f64;
    eprintln!("decode integrated.refl ({} bytes): {:.3} ms per decode", bytes.len(), per * 1e3);
    // Generous bound for a shared, loaded test machine (typical: about a millisecond).
    assert!(per < 0.5, "decoding 1.7 MB took {per} s");
}

// ------------------------------------------------------------------------------------
// Version 2 tables (u8 shoebox masks)

fn row_shoebox(i: usize, u8_mask: bool) -> Shoebox {
    let i = i as i32;
    let bbox = [10 * i - 3, 10 * i, -2, 0, 0, 1 + i % 2];
    let n = (3 * 2 * (1 + i % 2)) as usize;
    let mask: Vec<i32> = (0..n).map(|k| [mask_code::VALID | mask_code::FOREGROUND, 19, 0][k % 3]).collect();
    Shoebox {
        panel: i as u32,
        bbox,
        data: (i != 2).then(|| ShoeboxData {
            data: (0..n).map(|k| k as f32 * 0.25 + i as f32).collect(),
            mask: if u8_mask {
                ShoeboxMask::U8(mask.iter().map(|&m| m as u8).collect())
            } else {
                ShoeboxMask::I32(mask)
            },
            background: (0..n).map(|k| 1.5 - k as f32).collect(),
        }),
    }
}

fn rust_v2_table(u8_mask: bool) -> ReflectionTable {
    let n = 5;
    let mut t = ReflectionTable::new(n);
    t.identifiers.insert(0, "first-uuid".into());
    t.identifiers.insert(3, "x".repeat(40));
    t.insert("entering", (0..n).map(|i| i % 2 == 1).collect::<Vec<_>>()).unwrap();
    t.insert("id", (0..n).map(|i| [0, 3][i % 2]).collect::<Vec<i32>>()).unwrap();
    t.insert("flags", (0..n).map(|i| 1u64 << (i * 13)).collect::<Vec<_>>()).unwrap();
    t.insert("d", (0..n).map(|i| 1.0 / (i as f64 + 0.3)).collect::<Vec<_>>()).unwrap();
    t.insert("v2", (0..n).map(|i| [i as f64, -(i as f64)]).collect::<Vec<_>>()).unwrap();
    t.insert("s1", (0..n).map(|i| [0.1 * i as f64, 1e-300, -7.0]).collect::<Vec<_>>()).unwrap();
    t.insert(
        "m3",
        (0..n).map(|i| std::array::from_fn(|k| (i * 9 + k) as f64 / 3.0)).collect::<Vec<[f64; 9]>>(),
    )
    .unwrap();
    t.insert("bbox", (0..n).map(|i| row_shoebox(i, true).bbox).collect::<Vec<_>>()).unwrap();
    t.insert("miller_index", (0..n).map(|i| [i as i32 - 2, 7, -(i as i32)]).collect::<Vec<_>>()).unwrap();
    t.insert("shoebox", (0..n).map(|i| row_shoebox(i, u8_mask)).collect::<Vec<_>>()).unwrap();
    t
}

#[test]
fn rust_built_v2_table_round_trips_and_python_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = rust_v2_table(true);
    let path = dir.path().join("v2.refl");
    write_refl(&path, &t).unwrap();
    let f = read_refl_file(&path).unwrap();
    assert_eq!(f.version, 2);
    assert_eq!(f.table, t);
    let sb = f.table.get_shoebox("shoebox").unwrap();
    assert!(sb[2].data.is_none());
    assert_eq!(
        sb[1].data.as_ref().unwrap().mask,
        ShoeboxMask::U8(vec![5, 19, 0, 5, 19, 0, 5, 19, 0, 5, 19, 0])
    );

    // Independent decoder on our output.
    let py = py_stats(dir.path(), &[&path]);
    assert_stats_eq(&rust_stats(&t, 2), &py[path.to_str().unwrap()], "Rust-written v2");
    assert_eq!(py[path.to_str().unwrap()]["shoebox"]["shoebox"]["n_flag2"], 4);

    // The same table with int32 masks is written as version 1.
    let t1 = rust_v2_table(false);
    write_refl(&path, &t1).unwrap();
    let f = read_refl_file(&path).unwrap();
    assert_eq!((f.version, &f.table), (1, &t1));
    let py = py_stats(dir.path(), &[&path]);
    assert_eq!(py[path.to_str().unwrap()]["shoebox"]["shoebox"]["n_flag1"], 4);

    // An inconsistent shoebox is refused before anything is written.
    let mut bad = t.clone();
    bad.get_shoebox_mut("shoebox").unwrap()[0].bbox[1] += 1;
    let e = write_refl(dir.path().join("bad.refl"), &bad).unwrap_err().to_string();
    assert!(e.contains("bad.refl") && e.contains("`shoebox`, row 0"), "{e}");
    assert!(!dir.path().join("bad.refl").exists());
}

/// Independent writer of a version-2 table, following formats.md §2.2–2.3, with the header
/// keys and columns in a non-DIALS order, a garbage std::string column, and values given by
/// formulas that the Rust side checks.
const PY_WRITE_V2: &str = r#"
import sys, struct, msgpack, numpy as np
n = 4
def blob(dt, rows):
    return np.asarray(rows, dtype=dt).tobytes()
sb = b''
for i in range(n):
    x0, x1, y0, y1, z0, z1 = -i, 2, 5, 7, 0, 1
    has = i != 1
    sb += struct.pack('<I6iB', 3 * i, x0, x1, y0, y1, z0, z1, 2 if has else 0)
    if has:
        nv = (x1 - x0) * (y1 - y0) * (z1 - z0)
        sb += np.arange(nv, dtype='<f4').tobytes()
        sb += np.array([(k * 7 + i) % 64 for k in range(nv)], dtype='u1').tobytes()
        sb += np.full(nv, 0.5 * i, dtype='<f4').tobytes()
data = {
    'zeta': ['double', [n, blob('<f8', [i / 3.0 for i in range(n)])]],
    'shoebox': ['Shoebox<>', [n, sb]],
    'entering': ['bool', [n, blob('u1', [i % 2 for i in range(n)])]],
    'id': ['int', [n, blob('<i4', [i - 1 for i in range(n)])]],
    'flags': ['std::size_t', [n, blob('<u8', [2**40 + i for i in range(n)])]],
    'a_vec2': ['vec2<double>', [n, blob('<f8', [[i, i + 0.5] for i in range(n)])]],
    'xyzobs.px.value': ['vec3<double>', [n, blob('<f8', [[i + 0.5, 2 * i + 0.5, 0.5] for i in range(n)])]],
    'mat': ['mat3<double>', [n, blob('<f8', [[i * 10 + k for k in range(9)] for i in range(n)])]],
    'bbox': ['int6', [n, blob('<i4', [[-i, 2, 5, 7, 0, 1] for i in range(n)])]],
    'miller_index': ['cctbx::miller::index<>', [n, blob('<i4', [[i, -i, 2 * i] for i in range(n)])]],
    'label': ['std::string', [n, bytes(range(32)) * n]],
}
table = ['dials::af::reflection_table', 2, {'data': data, 'nrows': n, 'identifiers': {5: 'five', 0: 'zero'}}]
open(sys.argv[1], 'wb').write(msgpack.packb(table, use_bin_type=True))
"#;

#[test]
fn python_written_v2_table_reads_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py_v2.refl");
    python(dir.path(), PY_WRITE_V2, &[&path]);
    let f = read_refl_file(&path).unwrap();
    assert_eq!(f.version, 2);
    assert_eq!(f.warnings.len(), 1);
    assert!(f.warnings[0].contains("`label`") && f.warnings[0].contains("std::string"), "{:?}", f.warnings);
    let t = &f.table;
    assert_eq!(t.nrows(), 4);
    assert!(!t.contains("label"));
    assert_eq!(
        t.identifiers.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
        [(0, "zero"), (5, "five")]
    );
    for i in 0..4usize {
        let fi = i as f64;
        let ii = i as i32;
        assert_eq!(t.get_double("zeta").unwrap()[i], fi / 3.0);
        assert_eq!(t.get_bool("entering").unwrap()[i], i % 2 == 1);
        assert_eq!(t.get_int("id").unwrap()[i], ii - 1);
        assert_eq!(t.get_size("flags").unwrap()[i], (1u64 << 40) + i as u64);
        assert_eq!(t.get_vec2("a_vec2").unwrap()[i], [fi, fi + 0.5]);
        assert_eq!(t.get_vec3("xyzobs.px.value").unwrap()[i], [fi + 0.5, 2.0 * fi + 0.5, 0.5]);
        assert_eq!(t.get_mat3("mat").unwrap()[i], std::array::from_fn(|k| fi * 10.0 + k as f64));
        assert_eq!(t.get_int6("bbox").unwrap()[i], [-ii, 2, 5, 7, 0, 1]);
        assert_eq!(t.get_miller("miller_index").unwrap()[i], [ii, -ii, 2 * ii]);
        let s = &t.get_shoebox("shoebox").unwrap()[i];
        assert_eq!((s.panel, s.bbox), (3 * i as u32, [-ii, 2, 5, 7, 0, 1]));
        let nv = (2 + i) * 2;
        match (&s.data, i) {
            (None, 1) => {}
            (Some(d), _) if i != 1 => {
                assert_eq!(d.data, (0..nv).map(|k| k as f32).collect::<Vec<_>>());
                assert_eq!(d.mask, ShoeboxMask::U8((0..nv).map(|k| ((k * 7 + i) % 64) as u8).collect()));
                assert_eq!(d.background, vec![0.5 * i as f32; nv]);
            }
            other => panic!("row {i}: unexpected shoebox data {other:?}"),
        }
    }
    assert_eq!(t.select_id(0).unwrap().nrows(), 1);

    // Rewriting keeps every decoded column's bytes (the std::string column is dropped).
    let out = dir.path().join("rust_v2.refl");
    write_refl(&out, t).unwrap();
    let (a_bytes, b_bytes) = (std::fs::read(&path).unwrap(), std::fs::read(&out).unwrap());
    let a = scan_refl(&a_bytes, &path).unwrap();
    let b = scan_refl(&b_bytes, &out).unwrap();
    assert_eq!(b.version, 2);
    assert_eq!(b.columns.len(), a.columns.len() - 1);
    for cb in &b.columns {
        let ca = a.columns.iter().find(|c| c.name == cb.name).unwrap();
        assert!(ca.blob == cb.blob && ca.type_name == cb.type_name, "column `{}` differs", cb.name);
    }
    // Written in DIALS order: columns sorted by name.
    let names: Vec<&str> = b.columns.iter().map(|c| c.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn select_extend_on_real_table() {
    let t = read_refl(fixture("indexed.refl")).unwrap();
    let ids = t.distinct_ids().unwrap();
    assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    let parts: Vec<ReflectionTable> = ids.iter().map(|&i| t.select_id(i).unwrap()).collect();
    let total: usize = parts.iter().map(ReflectionTable::nrows).sum();
    assert_eq!(total, t.nrows());
    for (p, &i) in parts.iter().zip(&ids) {
        assert!(p.get_int("id").unwrap().iter().all(|&v| v == i));
        assert_eq!(p.identifiers.len(), 1);
        assert_eq!(p.identifiers[&(i as u64)], t.identifiers[&(i as u64)]);
    }
    // Re-joining the per-experiment parts gives the rows back (grouped by id) with all
    // identifiers; with ids already sorted in the file it is the same table.
    let joined = ReflectionTable::concat(&parts).unwrap();
    let order: Vec<usize> = {
        let id = t.get_int("id").unwrap();
        let mut o: Vec<usize> = (0..t.nrows()).collect();
        o.sort_by_key(|&r| id[r]);
        o
    };
    assert_eq!(joined, t.select_indices(&order).unwrap());
}
