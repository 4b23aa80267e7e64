//! Structure factors through symmetry, end to end with the CLI: an MTZ in a
//! space group must give exactly the image of its P1 expansion, where the P1
//! list is made independently in Python with gemmi (symmetry mates h·R, then
//! Friedel mates −h·R; anomalous F(−) at −h·R) and read with `--space-group P1`
//! (no expansion on our side).
//!
//! * P 43 21 2 (lysozyme, the reference crystal): F only, and F(+)/F(−) with
//!   some F(−) missing; the anomalous image must differ from the F-only one.
//! * C 1 2 1 (centred): the P1 run uses the primitive cell (primitive real
//!   vectors and primitive indices from gemmi's centred→primitive operation),
//!   so it checks the re-indexing `h_p = O·h` and the kernel's `A·Oᵀ`.

use std::path::Path;
use std::process::Command;

const PREP: &str = r#"
import sys, json, gzip
import numpy as np
import gemmi

mode, out, ref = sys.argv[1], sys.argv[2], sys.argv[3]
rng = np.random.default_rng(7)
expt = json.load(open(f"{ref}/shot_00.expt"))

def write_hkl(path, p1):
    with open(path, "w") as f:
        for h, v in p1.items():
            f.write(f"{h[0]} {h[1]} {h[2]} {float(v)!r}\n")

def write_mtz(path, sg, cell, labels, types, rows):
    m = gemmi.Mtz(with_base=True)
    m.spacegroup = sg
    m.set_cell_for_all(cell)
    m.add_dataset("sim")
    for l, t in zip(labels, types):
        m.add_column(l, t)
    m.set_data(np.array(rows, dtype=np.float32))
    m.write_to_file(path)
    # what the file holds (float32), as our reader sees it
    return gemmi.read_mtz_file(path)

def expand(sg, refl):
    """refl: list of (h, F(+), F(-) or None for non-anomalous or nan). Returns the P1 dict."""
    ops = sg.operations().sym_ops
    p1 = {}
    for h, fp, fm in refl:
        for op in ops:
            p1[tuple(op.apply_to_hkl(h))] = fp
    for h, fp, fm in refl:
        for op in ops:
            e = tuple(-x for x in op.apply_to_hkl(h))
            if e not in p1:
                # non-anomalous: Friedel mate; anomalous: F(-), or explicit 0 (= default_F) when missing
                p1[e] = fp if fm is None else (0.0 if np.isnan(fm) else fm)
    return p1

if mode == "lyso":
    sg = gemmi.SpaceGroup("P 43 21 2")
    asu = gemmi.ReciprocalAsu(sg)
    cr = expt["crystal"][0]
    real = np.array([cr["real_space_a"], cr["real_space_b"], cr["real_space_c"]])
    cell = gemmi.UnitCell(*[float(np.linalg.norm(v)) for v in real], 90, 90, 90)
    rows = []
    with gzip.open(f"{ref}/lyso_P1.hkl.gz", "rt") as f:
        for line in f:
            h, k, l, F = line.split()
            hkl = [int(h), int(k), int(l)]
            if asu.is_in(hkl):
                rows.append(hkl + [float(F)])
    m = write_mtz(f"{out}/asu.mtz", sg, cell, ["F"], ["F"], rows)
    refl = [([int(x) for x in r[:3]], float(r[3]), None) for r in np.array(m)]
    write_hkl(f"{out}/p1.hkl", expand(sg, refl))
    # anomalous: F(-) differs for acentrics, is missing for centrics and for 10% of acentrics
    ops = sg.operations()
    arows = []
    for r in rows:
        fm = r[3] * (1 + 0.3 * rng.uniform(-1, 1))
        if ops.is_reflection_centric(r[:3]) or rng.uniform() < 0.1:
            fm = float("nan")
        arows.append(r + [fm])
    m = write_mtz(f"{out}/anom.mtz", sg, cell, ["F(+)", "F(-)"], ["G", "G"], arows)
    refl = [([int(x) for x in r[:3]], float(r[3]), float(r[4])) for r in np.array(m)]
    write_hkl(f"{out}/p1_anom.hkl", expand(sg, refl))
    print(json.dumps({"asu": len(rows)}))

elif mode == "centred":
    sg = gemmi.SpaceGroup("C 1 2 1")
    cell = gemmi.UnitCell(97.0, 61.0, 53.0, 90, 104.0, 90)
    # a random orientation, fixed by the seed
    q = rng.normal(size=4); q /= np.linalg.norm(q)
    w, x, y, z = q
    U = np.array([[1-2*(y*y+z*z), 2*(x*y-w*z), 2*(x*z+w*y)],
                  [2*(x*y+w*z), 1-2*(x*x+z*z), 2*(y*z-w*x)],
                  [2*(x*z-w*y), 2*(y*z+w*x), 1-2*(x*x+y*y)]])
    B = np.array(cell.orth.mat.tolist())  # columns a, b, c (Cartesian, Å)
    real = U @ B
    c2p = sg.centred_to_primitive()
    P = np.array(c2p.rot, float) / c2p.DEN   # columns: primitive vectors in conventional fractions
    assert np.allclose(P, P.T)               # (symmetric for C: no row/column ambiguity)
    real_p = real @ P
    def write_expt(path, R, hall):
        e = json.loads(json.dumps(expt))
        c = e["crystal"][0]
        c["real_space_a"], c["real_space_b"], c["real_space_c"] = [list(map(float, R[:, i])) for i in range(3)]
        c["space_group_hall_symbol"] = hall
        json.dump(e, open(path, "w"), indent=1)
    write_expt(f"{out}/c2.expt", real, sg.hall)
    write_expt(f"{out}/p1prim.expt", real_p, " P 1")
    rows = [list(h) + [float(rng.uniform(10, 500))] for h in
            gemmi.make_miller_array(cell, sg, 2.2, 0, True)]
    m = write_mtz(f"{out}/c2.mtz", sg, cell, ["F"], ["F"], rows)
    refl = [([int(x) for x in r[:3]], float(r[3]), None) for r in np.array(m)]
    p1 = expand(sg, refl)
    prim = {}
    for h, v in p1.items():
        hp = P.T @ np.array(h, float)
        assert np.allclose(hp, np.round(hp)), (h, hp)   # C-centring: every allowed h has one
        prim[tuple(int(round(t)) for t in hp)] = v
    write_hkl(f"{out}/p1prim.hkl", prim)
    print(json.dumps({"asu": len(rows), "p1": len(prim)}))
"#;

const COMPARE: &str = r#"
import sys, json
import numpy as np, h5py
a = h5py.File(sys.argv[1], "r")["images"][()]
b = h5py.File(sys.argv[2], "r")["images"][()]
assert a.shape == b.shape
mx = float(b.max())
bright = b > 1e-3 * mx
print(json.dumps({
    "equal": bool(np.array_equal(a, b)),
    "max_abs_over_max": float(np.abs(a - b).max() / mx),
    "max_rel_bright": float((np.abs(a - b)[bright] / b[bright]).max()),
    "n_bright": int(bright.sum()),
    "max": mx,
}))
"#;

fn python(code: &str, args: &[&Path]) -> serde_json::Value {
    let out = Command::new("python3").arg("-c").arg(code).args(args).output().expect("python3 is needed");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

fn simulate(dir: &Path, expt: &Path, sf: &[&str], extra: &[&str], out: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .current_dir(dir)
        .arg("simulate")
        .arg("--expt")
        .arg(expt)
        .args(sf)
        .args(["--ncells", "10", "14", "12", "--fluence", "1e24", "--no-progress", "--out", out])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "simulate {out} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&o.stdout));
}

fn compare(dir: &Path, a: &str, b: &str) -> serde_json::Value {
    let v = python(COMPARE, &[&dir.join(a), &dir.join(b)]);
    eprintln!("{a} vs {b}: {v}");
    v
}

#[test]
fn mtz_in_p43212_equals_its_p1_expansion_plain_and_anomalous() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let refdir = diffbragg::testutil::shared("reference");
    let info = python(PREP, &[Path::new("lyso"), d, &refdir]);
    assert!(info["asu"].as_u64().unwrap() > 5000, "{info}");
    let expt = refdir.join("shot_00.expt");
    let p1 = ["--space-group", "P1"];
    simulate(d, &expt, &["--mtz", "asu.mtz", "--mtz-column", "F"], &[], "mtz.h5");
    simulate(d, &expt, &["--hkl", "p1.hkl"], &p1, "p1.h5");
    let c = compare(d, "mtz.h5", "p1.h5");
    assert!(c["n_bright"].as_u64().unwrap() > 50, "too few bright pixels: {c}");
    assert!(c["equal"].as_bool().unwrap(), "MTZ (P 43 21 2) and its P1 expansion differ: {c}");

    simulate(d, &expt, &["--mtz", "anom.mtz", "--mtz-column", "F(+),F(-)"], &[], "anom.h5");
    simulate(d, &expt, &["--hkl", "p1_anom.hkl"], &p1, "p1_anom.h5");
    let c = compare(d, "anom.h5", "p1_anom.h5");
    assert!(c["equal"].as_bool().unwrap(), "anomalous MTZ and its P1 expansion differ: {c}");
    // Control: the anomalous pairs do change the image.
    let c = compare(d, "anom.h5", "mtz.h5");
    assert!(c["max_rel_bright"].as_f64().unwrap() > 1e-2, "anomalous differences not seen: {c}");
}

#[test]
fn centred_mtz_is_reindexed_to_the_primitive_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let refdir = diffbragg::testutil::shared("reference");
    let info = python(PREP, &[Path::new("centred"), d, &refdir]);
    eprintln!("{info}");
    // C 1 2 1: orbits of 2 proper mates, then Friedel mates.
    assert!(info["p1"].as_u64().unwrap() > 3 * info["asu"].as_u64().unwrap(), "{info}");
    simulate(d, &d.join("c2.expt"), &["--mtz", "c2.mtz", "--mtz-column", "F"], &[], "c2_sim.h5");
    simulate(d, &d.join("p1prim.expt"), &["--hkl", "p1prim.hkl"], &[], "p1prim_sim.h5");
    let c = compare(d, "c2_sim.h5", "p1prim_sim.h5");
    assert!(c["n_bright"].as_u64().unwrap() > 50, "too few bright pixels: {c}");
    // Same crystal in two bases: equal up to the rounding of A = U·B·Oᵀ.
    assert!(c["max_abs_over_max"].as_f64().unwrap() <= 1e-9, "{c}");
    assert!(c["max_rel_bright"].as_f64().unwrap() <= 1e-9, "{c}");
}
