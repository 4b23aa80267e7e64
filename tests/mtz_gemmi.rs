//! MTZ reader/writer against gemmi 0.7.5 (python3): the two real fixtures,
//! a file we write (read by gemmi), a file gemmi writes (read by us, with batch
//! headers and history), and big-endian / 64-bit-offset variants made here.

use diffbragg::crystal::UnitCell;
use diffbragg::io::mtz::Mtz;
use diffbragg::symmetry::miller::unique_reflections;
use diffbragg::symmetry::SpaceGroup;
use diffbragg::testutil::shared;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// gemmi's view of an MTZ file, as JSON.
const DUMP: &str = r#"
import gemmi, json, math, sys
m = gemmi.read_mtz_file(sys.argv[1])
def num(v):
    return None if math.isnan(v) else v
# 1/d² in double precision from gemmi's cell (make_1_d2_array is float32)
d2 = [m.cell.calculate_1_d2([int(x) for x in row[:3]]) for row in m.array] if m.nreflections else [0.0]
out = dict(
    title=m.title, nrefl=m.nreflections, cell=list(m.cell.parameters),
    sg=m.spacegroup.xhm() if m.spacegroup else None, sg_name=m.spacegroup_name,
    sg_number=m.spacegroup_number, nsymop=m.nsymop, history=list(m.history),
    batches=[b.number for b in m.batches], reso=[m.min_1_d2, m.max_1_d2],
    d2=[min(d2), max(d2)],
    datasets=[dict(id=d.id, project=d.project_name, crystal=d.crystal_name, dataset=d.dataset_name,
                   cell=list(d.cell.parameters), wavelength=d.wavelength) for d in m.datasets],
    columns=[dict(label=c.label, type=c.type, dataset=c.dataset_id,
                  values=[num(float(v)) for v in c.array]) for c in m.columns])
print(json.dumps(out))
"#;

fn python(args: &[&str]) -> Vec<u8> {
    let out = Command::new("python3").args(args).output().expect("python3 runs");
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn gemmi_dump(path: &Path) -> Value {
    serde_json::from_slice(&python(&["-c", DUMP, path.to_str().unwrap()])).unwrap()
}

fn assert_same_values(ours: &[f32], theirs: &Value, ctx: &str) {
    let t = theirs.as_array().unwrap();
    assert_eq!(ours.len(), t.len(), "{ctx}: row count");
    for (i, (a, b)) in ours.iter().zip(t).enumerate() {
        match b.as_f64() {
            None => assert!(a.is_nan(), "{ctx} row {i}: ours {a}, gemmi NaN"),
            Some(b) => assert_eq!(*a, b as f32, "{ctx} row {i}"),
        }
    }
}

/// Everything gemmi reads equals what we read.
fn assert_matches_gemmi(m: &Mtz, g: &Value, exact_cell: bool) {
    assert_eq!(m.title, g["title"].as_str().unwrap());
    assert_eq!(m.nrefl as i64, g["nrefl"].as_i64().unwrap());
    let gc: Vec<f64> = g["cell"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (a, b) in m.cell.to_array().iter().zip(&gc) {
        if exact_cell {
            assert_eq!(a, b);
        } else {
            assert!((a - b).abs() < 1e-9 * b.abs().max(1.0), "cell {a} vs {b}");
        }
    }
    assert_eq!(m.space_group.as_ref().map(|s| s.hm()), g["sg"].as_str().map(String::from));
    assert_eq!(m.space_group_name, g["sg_name"].as_str().unwrap());
    assert_eq!(m.space_group_number as i64, g["sg_number"].as_i64().unwrap());
    assert_eq!(m.symops.len() as i64, g["nsymop"].as_i64().unwrap());
    let hist: Vec<&str> = g["history"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(m.history, hist);
    let batches: Vec<i64> = g["batches"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(m.batches.iter().map(|&b| b as i64).collect::<Vec<_>>(), batches);
    let ds = g["datasets"].as_array().unwrap();
    assert_eq!(m.datasets.len(), ds.len());
    for (a, b) in m.datasets.iter().zip(ds) {
        assert_eq!(a.id as i64, b["id"].as_i64().unwrap());
        assert_eq!(a.project, b["project"].as_str().unwrap());
        assert_eq!(a.crystal, b["crystal"].as_str().unwrap());
        assert_eq!(a.dataset, b["dataset"].as_str().unwrap());
        assert!((a.wavelength - b["wavelength"].as_f64().unwrap()).abs() < 1e-12);
        let bc: Vec<f64> = b["cell"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let ac = a.cell.map(|c| c.to_array()).unwrap_or([0.0; 6]);
        for (x, y) in ac.iter().zip(&bc) {
            assert!((x - y).abs() < 1e-9 * y.abs().max(1.0), "dataset cell {x} vs {y}");
        }
    }
    let cols = g["columns"].as_array().unwrap();
    assert_eq!(m.columns.len(), cols.len());
    for (a, b) in m.columns.iter().zip(cols) {
        assert_eq!(a.label, b["label"].as_str().unwrap());
        assert_eq!(a.kind.to_string(), b["type"].as_str().unwrap(), "{}", a.label);
        assert_eq!(a.dataset_id as i64, b["dataset"].as_i64().unwrap(), "{}", a.label);
        assert_same_values(&a.values, &b["values"], &a.label);
    }
}

#[test]
fn fixtures_read_like_gemmi() {
    for name in ["cctbx_phaser_1.mtz", "x4wide_AUTOMATIC_DEFAULT_scaled.mtz"] {
        let path = shared(&format!("fixtures/mtz/{name}"));
        let m = Mtz::read(&path).unwrap();
        let g = gemmi_dump(&path);
        assert_matches_gemmi(&m, &g, true);
        let reso = g["reso"].as_array().unwrap();
        assert_eq!(m.reso, Some((reso[0].as_f64().unwrap(), reso[1].as_f64().unwrap())));
    }
    // the space groups and SYMM order of the fixtures
    let m = Mtz::read(shared("fixtures/mtz/x4wide_AUTOMATIC_DEFAULT_scaled.mtz")).unwrap();
    let sg = m.space_group.as_ref().unwrap();
    assert_eq!(sg.number(), 92);
    assert_eq!(sg.ops().sym_ops[1].triplet(), "-y+1/2,x+1/2,z+1/4");
    assert_eq!(sg.ops().sym_ops[2].triplet(), "y+1/2,-x+1/2,z+3/4", "file order is kept");
    assert_eq!(m.columns.len(), 11);
    assert_eq!(m.nrefl, 11804);
}

#[test]
fn amplitudes_from_fixtures() {
    let m = Mtz::read(shared("fixtures/mtz/cctbx_phaser_1.mtz")).unwrap();
    let hkl = m.hkl().unwrap();
    // anomalous amplitudes: F(+) at h, F(-) at -h; centric rows carry F(+) only
    let a = m.amplitudes("F(+),F(-)").unwrap();
    assert!(a.anomalous);
    let fp = &m.column("F(+)").unwrap().values;
    let fm = &m.column("F(-)").unwrap().values;
    let n_plus = fp.iter().filter(|v| v.is_finite()).count();
    let n_minus = fm.iter().filter(|v| v.is_finite()).count();
    assert_eq!(a.hkl.len(), n_plus + n_minus);
    let sg = m.space_group.as_ref().unwrap();
    for (i, h) in hkl.iter().enumerate() {
        if sg.is_centric(h) {
            assert!(fm[i].is_nan(), "cctbx writes centric F(-) as missing");
        }
    }
    let i = fm.iter().position(|v| v.is_finite()).unwrap();
    let minus = [-hkl[i][0], -hkl[i][1], -hkl[i][2]];
    let j = a.hkl.iter().position(|h| *h == minus).unwrap();
    assert_eq!(a.f[j], fm[i] as f64);
    // the same with sigmas, and iotbx's full label string
    assert_eq!(m.amplitudes("F(+),SIGF(+),F(-),SIGF(-)").unwrap(), a);
    // amplitude + phase and amplitude + sigma: the amplitude column
    let fwt = m.amplitudes("FWT,PHIFWT").unwrap();
    assert!(!fwt.anomalous);
    assert_eq!(fwt.f.len(), m.column("FWT").unwrap().values.iter().filter(|v| v.is_finite()).count());
    let fp = m.amplitudes("FP,SIGFP").unwrap();
    assert_eq!(fp.f[0], m.column("FP").unwrap().values[0] as f64);
    // wrong types, unknown labels
    for bad in ["PHIB", "FP,FOM", "F(+),SIGF(+)", "nope", "FP,SIGFP,FOM"] {
        let e = m.amplitudes(bad).unwrap_err().to_string();
        assert!(e.contains("mtz_column"), "{e}");
    }

    // intensities become sqrt(max(I, 0))
    let m = Mtz::read(shared("fixtures/mtz/x4wide_AUTOMATIC_DEFAULT_scaled.mtz")).unwrap();
    let a = m.amplitudes("IMEAN,SIGIMEAN").unwrap();
    let imean = &m.column("IMEAN").unwrap().values;
    assert_eq!(a.f.len(), imean.iter().filter(|v| v.is_finite()).count());
    let neg = imean.iter().position(|&v| v < 0.0).expect("fixture has negative intensities");
    let h = m.hkl().unwrap()[neg];
    assert_eq!(a.f[a.hkl.iter().position(|x| *x == h).unwrap()], 0.0);
    let pos = imean.iter().position(|&v| v > 100.0).unwrap();
    let h = m.hkl().unwrap()[pos];
    assert_eq!(a.f[a.hkl.iter().position(|x| *x == h).unwrap()], (imean[pos] as f64).sqrt());
    let anom = m.amplitudes("I(+),I(-)").unwrap();
    assert!(anom.anomalous);
    assert_eq!(m.amplitudes("I(+),SIGI(+),I(-),SIGI(-)").unwrap(), anom);
}

#[test]
fn our_files_read_by_gemmi() {
    let dir = tempfile::tempdir().unwrap();
    for (k, (sym, cell)) in [
        ("P 43 21 2", [78.9, 78.9, 37.1, 90.0, 90.0, 90.0]),
        ("C 1 2 1", [120.2, 41.3, 60.7, 90.0, 97.25, 90.0]),
        ("R 3:H", [80.0, 80.0, 95.0, 90.0, 90.0, 120.0]),
        ("P 61 2 2", [60.1, 60.1, 150.3, 90.0, 90.0, 120.0]),
        ("I 1 2 1", [50.0, 60.0, 70.0, 90.0, 93.0, 90.0]),
        // settings whose bare H-M symbol means another setting
        ("R 3:R", [60.0, 60.0, 60.0, 80.0, 80.0, 80.0]),
        ("P n n n:2", [30.0, 40.0, 50.0, 90.0, 90.0, 90.0]),
    ]
    .into_iter()
    .enumerate()
    {
        let sg = SpaceGroup::from_hm(sym).unwrap();
        let cell = UnitCell::from_array(cell);
        let hkl = unique_reflections(&cell, &sg, 6.0, true).unwrap();
        let n = hkl.len();
        let val = |s: usize| -> Vec<f32> {
            (0..n)
                .map(|i| if (i + s) % 7 == 0 { f32::NAN } else { (i * 31 + s) as f32 * 0.37 - 5.0 })
                .collect()
        };
        let mut m = Mtz::new_merged(cell, sg.clone(), &hkl, ("proj", "xtal", "set1"), 0.9793);
        m.title = format!("diffbragg-rs test {k}");
        for (s, (label, kind)) in [
            ("F", 'F'),
            ("SIGF", 'Q'),
            ("IMEAN", 'J'),
            ("F(+)", 'G'),
            ("SIGF(+)", 'L'),
            ("I(+)", 'K'),
            ("SIGI(+)", 'M'),
            ("PHI", 'P'),
            ("FOM", 'W'),
            ("HLA", 'A'),
            ("DANO", 'D'),
            ("FREE", 'I'),
            ("X", 'R'),
        ]
        .into_iter()
        .enumerate()
        {
            m.add_column(label, kind, val(s)).unwrap();
        }
        let path = dir.path().join(format!("ours_{k}.mtz"));
        m.write(&path).unwrap();
        assert!(!dir.path().join(format!("ours_{k}.mtz.tmp-{}", std::process::id())).exists());
        let g = gemmi_dump(&path);
        let back = Mtz::read(&path).unwrap();
        assert_matches_gemmi(&back, &g, false);
        assert_eq!(g["sg"].as_str().unwrap(), sg.hm());
        // RESO we wrote = the 1/d² range gemmi computes from the data
        let reso = g["reso"].as_array().unwrap();
        let d2 = g["d2"].as_array().unwrap();
        for i in 0..2 {
            let (a, b) = (reso[i].as_f64().unwrap(), d2[i].as_f64().unwrap());
            assert!((a - b).abs() < 1e-9 * b, "RESO {a} vs {b}");
        }
        // and our values survive exactly
        for c in &m.columns {
            let b = back.column(&c.label).unwrap();
            assert_eq!(c.kind, b.kind);
            for (x, y) in c.values.iter().zip(&b.values) {
                assert!(x == y || (x.is_nan() && y.is_nan()));
            }
        }
    }
}

#[test]
fn gemmi_files_read_by_us() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemmi.mtz");
    let script = r#"
import gemmi, numpy as np, sys
rng = np.random.default_rng(7)
m = gemmi.Mtz(with_base=True)
m.spacegroup = gemmi.find_spacegroup_by_name('C 1 2 1')
m.set_cell_for_all(gemmi.UnitCell(50.5, 60.25, 70.125, 90, 101.5, 90))
m.title = 'written by gemmi'
ds = m.add_dataset('native')
ds.project_name = 'proj'; ds.crystal_name = 'xtal'; ds.wavelength = 1.1
for l, t in [('M/ISYM', 'Y'), ('BATCH', 'B'), ('I', 'J'), ('SIGI', 'Q'), ('F(+)', 'G'), ('F(-)', 'G')]:
    m.add_column(l, t)
for k in range(3):
    b = gemmi.Mtz.Batch(); b.number = 10 + k; b.title = 'batch %d' % k; b.axes = ['PHI']
    m.batches.append(b)
n = 500
hkl = rng.integers(-15, 16, size=(n, 3))
d = np.zeros((n, 9), dtype=np.float32)
d[:, :3] = hkl
d[:, 3] = rng.integers(1, 9, size=n)
d[:, 4] = rng.integers(10, 13, size=n)
d[:, 5:] = rng.normal(100, 50, size=(n, 4))
d[::11, 5] = np.nan
d[::5, 8] = np.nan
m.set_data(d)
m.history = ['line one', 'line two of history']
m.write_to_file(sys.argv[1])
"#;
    python(&["-c", script, path.to_str().unwrap()]);
    let m = Mtz::read(&path).unwrap();
    let g = gemmi_dump(&path);
    assert_matches_gemmi(&m, &g, true);
    assert_eq!(m.batches, vec![10, 11, 12]);
    assert_eq!(m.history.len(), 2);
    assert_eq!(m.space_group.as_ref().unwrap().hm(), "C 1 2 1");
}

/// Flip the byte order of a little-endian merged file by hand.
fn to_big_endian(le: &[u8]) -> Vec<u8> {
    let mut b = le.to_vec();
    let header_word = i32::from_le_bytes(le[4..8].try_into().unwrap()) as usize;
    b[4..8].copy_from_slice(&(header_word as i32).to_be_bytes());
    b[8..12].copy_from_slice(&[0x11, 0x11, 0x00, 0x00]);
    for off in (80..4 * (header_word - 1)).step_by(4) {
        b[off..off + 4].reverse();
    }
    b
}

fn assert_same_mtz(a: &Mtz, b: &Mtz) {
    assert_eq!(a.nrefl, b.nrefl);
    assert_eq!(a.cell, b.cell);
    assert_eq!(a.space_group, b.space_group);
    assert_eq!(a.datasets, b.datasets);
    assert_eq!(a.columns.len(), b.columns.len());
    for (x, y) in a.columns.iter().zip(&b.columns) {
        assert_eq!((&x.label, x.kind), (&y.label, y.kind));
        for (p, q) in x.values.iter().zip(&y.values) {
            assert_eq!(p.to_bits(), q.to_bits());
        }
    }
}

#[test]
fn big_endian_and_64_bit_offset() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["cctbx_phaser_1.mtz", "x4wide_AUTOMATIC_DEFAULT_scaled.mtz"] {
        let path = shared(&format!("fixtures/mtz/{name}"));
        let le = std::fs::read(&path).unwrap();
        let want = Mtz::from_bytes(&le, &path).unwrap();
        let be = to_big_endian(&le);
        let got = Mtz::from_bytes(&be, "be.mtz").unwrap();
        assert_same_mtz(&want, &got);
        // gemmi reads the converted file the same way
        let be_path = dir.path().join(format!("be_{name}"));
        std::fs::write(&be_path, &be).unwrap();
        assert_matches_gemmi(&got, &gemmi_dump(&be_path), true);
        // header position given as -1 + int64
        let mut wide = le.clone();
        let hw = i32::from_le_bytes(le[4..8].try_into().unwrap()) as i64;
        wide[4..8].copy_from_slice(&(-1i32).to_le_bytes());
        wide[12..20].copy_from_slice(&hw.to_le_bytes());
        assert_same_mtz(&want, &Mtz::from_bytes(&wide, "wide.mtz").unwrap());
    }
}
