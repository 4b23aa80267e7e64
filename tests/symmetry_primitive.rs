//! Conventional → primitive basis (diffBragg's `O` matrix) for centred
//! lattices, and Miller sets against gemmi.

use diffbragg::conventions::Mat3;
use diffbragg::crystal::UnitCell;
use diffbragg::symmetry::miller::{expand_to_p1, unique_reflections, Resolution};
use diffbragg::symmetry::SpaceGroup;
use serde_json::Value;
use std::process::Command;

/// Is h allowed by the lattice centring alone?
fn centring_allowed(sg: &SpaceGroup, h: &[i32; 3]) -> bool {
    sg.ops().cen_ops.iter().all(|c| (h[0] * c[0] + h[1] * c[1] + h[2] * c[2]) % 24 == 0)
}

#[test]
fn centred_reflections_have_integer_primitive_indices() {
    for (sym, cell, n_cen) in [
        ("C 1 2 1", [120.0, 40.0, 60.0, 90.0, 97.0, 90.0], 2),
        ("I 1 2 1", [50.0, 60.0, 70.0, 90.0, 93.0, 90.0], 2),
        ("A 1 2 1", [50.0, 60.0, 70.0, 90.0, 93.0, 90.0], 2),
        ("C 2 2 21", [60.0, 70.0, 80.0, 90.0, 90.0, 90.0], 2),
        ("I 41 2 2", [60.0, 60.0, 80.0, 90.0, 90.0, 90.0], 2),
        ("F 2 2 2", [60.0, 70.0, 80.0, 90.0, 90.0, 90.0], 4),
        ("F d -3 m:2", [50.0, 50.0, 50.0, 90.0, 90.0, 90.0], 4),
        ("I 21 3", [80.0, 80.0, 80.0, 90.0, 90.0, 90.0], 2),
        ("R 3:H", [80.0, 80.0, 95.0, 90.0, 90.0, 120.0], 3),
        ("R 3 2:H", [80.0, 80.0, 95.0, 90.0, 90.0, 120.0], 3),
    ] {
        let sg = SpaceGroup::from_hm(sym).unwrap();
        assert_eq!(sg.ops().cen_ops.len(), n_cen, "{sym}");
        let pb = sg.change_of_basis_to_primitive().unwrap();
        let o = pb.o_matrix();
        assert!((o * pb.o_inverse() - Mat3::identity()).norm() < 1e-12, "{sym}");
        // volume of the primitive cell = conventional / n_centring
        assert!((o.determinant().abs() - 1.0 / n_cen as f64).abs() < 1e-12, "{sym}");
        let cell = UnitCell::from_array(cell);
        let b_real = cell.b_real();
        let prim = b_real * o.transpose();
        assert!(
            (prim.determinant() - b_real.determinant() / n_cen as f64).abs() < 1e-6 * b_real.determinant()
        );
        // the same reciprocal-lattice point in both bases: B*·h = B*_p·h_p
        let b_recip = cell.b_recip();
        let prim_recip = prim.try_inverse().unwrap().transpose();
        for h in -4..=4 {
            for k in -4..=4 {
                for l in -4..=4 {
                    let hc = [h, k, l];
                    match pb.to_primitive_hkl(&hc) {
                        Some(hp) => {
                            assert!(centring_allowed(&sg, &hc), "{sym} {hc:?}");
                            assert_eq!(pb.to_conventional_hkl(&hp), hc, "{sym}");
                            let v =
                                |x: [i32; 3]| nalgebra::Vector3::new(x[0] as f64, x[1] as f64, x[2] as f64);
                            let q = b_recip * v(hc);
                            let qp = prim_recip * v(hp);
                            assert!((q - qp).norm() < 1e-12, "{sym} {hc:?} -> {hp:?}");
                            // O·h as floats agrees
                            assert!((o * v(hc) - v(hp)).norm() < 1e-12);
                        }
                        None => assert!(!centring_allowed(&sg, &hc), "{sym} {hc:?}"),
                    }
                    // every primitive index maps to an allowed conventional one
                    let hc2 = pb.to_conventional_hkl(&hc);
                    assert!(centring_allowed(&sg, &hc2), "{sym} {hc:?} -> {hc2:?}");
                    assert_eq!(pb.to_primitive_hkl(&hc2), Some(hc));
                }
            }
        }
    }
    // known primitive cells: F cubic a -> rhombohedral a/√2, 60°; I cubic -> a√3/2, 109.47°
    let prim_cell = |sym: &str, a: f64| {
        let sg = SpaceGroup::from_hm(sym).unwrap();
        let o = sg.change_of_basis_to_primitive().unwrap().o_matrix();
        UnitCell::from_real_matrix(&(UnitCell::new(a, a, a, 90.0, 90.0, 90.0).b_real() * o.transpose()))
    };
    let f = prim_cell("F m -3 m", 10.0);
    assert!((f.a - 10.0 / 2f64.sqrt()).abs() < 1e-9 && (f.alpha - 60.0).abs() < 1e-9, "{f:?}");
    let i = prim_cell("I m -3 m", 10.0);
    assert!((i.a - 10.0 * 3f64.sqrt() / 2.0).abs() < 1e-9 && (i.alpha - 109.4712206).abs() < 1e-6, "{i:?}");
    // primitive groups: identity
    let p = SpaceGroup::from_hm("P 43 21 2").unwrap().change_of_basis_to_primitive().unwrap();
    assert_eq!(p.o_matrix(), Mat3::identity());
    assert!(
        SpaceGroup::from_hm("R 3:R").unwrap().change_of_basis_to_primitive().unwrap().o_matrix()
            == Mat3::identity()
    );
}

#[test]
fn miller_sets_match_gemmi() {
    let cases = [
        ("P 43 21 2", [78.9, 78.9, 37.1, 90.0, 90.0, 90.0], 4.03),
        ("P 1 21 1", [40.0, 50.0, 60.0, 90.0, 103.0, 90.0], 5.03),
        ("C 1 2 1", [120.0, 40.0, 60.0, 90.0, 97.0, 90.0], 5.03),
        ("P 1 1 21", [40.0, 50.0, 60.0, 90.0, 90.0, 110.0], 5.03),
        ("R 3 2:H", [80.0, 80.0, 95.0, 90.0, 90.0, 120.0], 5.03),
        ("R 3 2:R", [60.0, 60.0, 60.0, 80.0, 80.0, 80.0], 5.03),
        ("P 61 2 2", [60.1, 60.1, 150.3, 90.0, 90.0, 120.0], 6.03),
        ("P 21 3", [97.0, 97.0, 97.0, 90.0, 90.0, 90.0], 6.03),
        ("P -1", [30.0, 35.0, 40.0, 80.0, 85.0, 95.0], 4.03),
        ("I 41/a:1", [50.0, 50.0, 70.0, 90.0, 90.0, 90.0], 4.03),
    ];
    let mut script = String::from("import gemmi, json\nout = []\n");
    for (sym, c, d) in &cases {
        script.push_str(&format!(
            "sg = gemmi.find_spacegroup_by_name('{sym}')\ncell = gemmi.UnitCell({}, {}, {}, {}, {}, {})\n\
             out.append(sorted(map(list, gemmi.make_miller_array(cell, sg, {d}))))\n",
            c[0], c[1], c[2], c[3], c[4], c[5]
        ));
    }
    script.push_str("print(json.dumps([[list(map(int, h)) for h in x] for x in out]))\n");
    let out = Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for ((sym, c, d), want) in cases.iter().zip(v.as_array().unwrap()) {
        let sg = SpaceGroup::from_hm(sym).unwrap();
        let cell = UnitCell::from_array(*c);
        let mut ours = unique_reflections(&cell, &sg, *d, false).unwrap();
        ours.sort();
        let want: Vec<[i32; 3]> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let a = h.as_array().unwrap();
                [a[0].as_i64().unwrap() as i32, a[1].as_i64().unwrap() as i32, a[2].as_i64().unwrap() as i32]
            })
            .collect();
        let first_diff = ours.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            ours.len() == want.len() && first_diff.is_none(),
            "{sym}: {} vs {} reflections, first difference at {first_diff:?}",
            ours.len(),
            want.len()
        );
        // P1 expansion covers each non-absent index once
        let p1 = expand_to_p1(&sg, &ours, false);
        let mut all: Vec<[i32; 3]> = p1.iter().map(|x| x.0).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "{sym}: overlapping expansions");
        let res = Resolution::new(&cell).unwrap();
        assert!(all.iter().all(|h| res.d(h) >= *d && !sg.is_sys_absent(h)));
    }
}
