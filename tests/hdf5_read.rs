//! Files written by h5py (python3) are read by Rust with every value equal.
//!
//! The Python script below writes each layout and, beside it, a JSON file with
//! what dxtbx would return (images as float64, spectra in Å, wavelengths, the
//! lab-frame panel vectors computed with the McStas → imgCIF rule). The Rust
//! side only compares.

use std::path::Path;
use std::process::Command;

use diffbragg::image::{open_image_source, ImageFormat};
use serde_json::Value;

const MAKE_FILES: &str = r#"
import sys, json, ast
import numpy as np, h5py

out = sys.argv[1]
quad = json.load(open(sys.argv[2]))
HC = 12398.419843320026  # eV·Å, cctbx factor_ev_angstrom
rng = np.random.default_rng(7)
exp = {}

def images_list(a):
    # (nimg, npanel, slow, fast) -> nested lists of float64
    return np.asarray(a, dtype=np.float64).tolist()

# ---- NXmx 1: (nframes, npanel, slow, fast) int32, modules, simple shared spectrum, geometry
nf, npan, ns, nfst = 3, 2, 5, 7
data = rng.integers(-5, 60000, size=(nf, npan, ns, nfst)).astype(np.int32)
lam = np.linspace(1.30, 1.31, 9)
wts = rng.random(9) + 0.1
with h5py.File(f"{out}/nx1.h5", "w") as f:
    e = f.create_group("entry"); e.attrs["NX_class"] = "NXentry"
    e["definition"] = "NXmx"
    d = e.create_group("data"); d.attrs["NX_class"] = "NXdata"; d.attrs["signal"] = "data"
    d.create_dataset("data", data=data, compression="gzip", chunks=(1, 1, ns, nfst))
    ins = e.create_group("instrument"); ins.attrs["NX_class"] = "NXinstrument"
    b = ins.create_group("beam"); b.attrs["NX_class"] = "NXbeam"
    b["incident_wavelength"] = lam; b["incident_wavelength"].attrs["units"] = "angstrom"
    b["incident_wavelength_weights"] = wts
    det = ins.create_group("ELE_D0"); det.attrs["NX_class"] = "NXdetector"
    det["sensor_material"] = "Si"
    det["sensor_thickness"] = 320.0; det["sensor_thickness"].attrs["units"] = "microns"
    det["saturation_value"] = 1e6; det["underload_value"] = -10
    t = det.create_group("transformations"); t.attrs["NX_class"] = "NXtransformations"
    ax = t.create_dataset("AXIS_D0", data=[100.0])
    ax.attrs.update({"transformation_type": "translation", "vector": [0.0, 0.0, 1.0], "units": "mm",
                     "offset": [0.0, 0.0, 0.0], "depends_on": "."})
    rz = t.create_dataset("ROT_D0", data=[90.0])
    rz.attrs.update({"transformation_type": "rotation", "vector": [0.0, 0.0, 1.0], "units": "deg",
                     "offset": [1.0, 2.0, 0.0], "offset_units": "mm",
                     "depends_on": "/entry/instrument/ELE_D0/transformations/AXIS_D0"})
    panels = []
    for p, off in enumerate([(10.0, 20.0), (-30.0, 5.0)]):
        m = det.create_group(f"module{p}"); m.attrs["NX_class"] = "NXdetector_module"
        m["data_origin"] = np.array([p, 0, 0], dtype=np.int64)
        m["data_size"] = np.array([1, ns, nfst], dtype=np.int64)
        fa = m.create_dataset("fast_pixel_direction", data=75.0)
        fa.attrs.update({"transformation_type": "translation", "vector": [-1.0, 0.0, 0.0], "units": "um",
                         "offset": [off[0], off[1], 0.0], "offset_units": "mm",
                         "depends_on": "/entry/instrument/ELE_D0/transformations/ROT_D0"})
        sa = m.create_dataset("slow_pixel_direction", data=0.075)
        sa.attrs.update({"transformation_type": "translation", "vector": [0.0, -1.0, 0.0], "units": "mm",
                         "offset": [off[0], off[1], 0.0], "offset_units": "mm",
                         "depends_on": "/entry/instrument/ELE_D0/transformations/ROT_D0"})
        # Expected: lab(McStas) = Tz(100) · (Rz(90°)·p + (1,2,0)); then diag(-1,1,-1).
        R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        corner = R @ np.array([off[0], off[1], 0.0]) + np.array([1.0, 2.0, 0.0]) + np.array([0.0, 0.0, 100.0])
        M = np.diag([-1.0, 1.0, -1.0])
        panels.append({"origin": (M @ corner).tolist(), "fast_axis": (M @ R @ [-1.0, 0, 0]).tolist(),
                       "slow_axis": (M @ R @ [0, -1.0, 0]).tolist(), "image_size": [nfst, ns],
                       "pixel_size": [0.075, 0.075], "thickness": 0.32, "trusted_range": [-10.0, 1e6],
                       "name": f"/entry/instrument/ELE_D0/module{p}"})
e_mean = (wts * HC / lam).sum() / wts.sum()
exp["nx1"] = {"format": "Nxmx", "images": images_list(data), "panels": panels,
              "spectra": [[lam.tolist(), wts.tolist()]] * nf, "wavelengths": [HC / e_mean] * nf}

# ---- NXmx 2: stacked (nframes, 2*ns, nf) float32, module blocks, variant chain with _weight, nm units
data = rng.random((nf, 2 * ns, nfst)).astype(np.float32)
cal = np.array([0.1301, 0.1302, 0.1303])  # nm
spec_l = np.stack([np.linspace(0.1299, 0.1305, 6) + 1e-5 * k for k in range(nf)])  # nm
spec_w = rng.random((nf, 6))
with h5py.File(f"{out}/nx2.h5", "w") as f:
    e = f.create_group("scan"); e.attrs["NX_class"] = np.bytes_(b"NXentry")
    d = e.create_group("signal_group"); d.attrs["NX_class"] = "NXdata"
    d.create_dataset("data", data=data)
    ins = e.create_group("instrument"); ins.attrs["NX_class"] = "NXinstrument"
    b = ins.create_group("beam"); b.attrs["NX_class"] = "NXbeam"
    iw = b.create_dataset("incident_wavelength", data=cal); iw.attrs["units"] = "nm"
    iw.attrs["variant"] = "incident_wavelength_mid"
    mid = b.create_dataset("incident_wavelength_mid", data=cal); mid.attrs["units"] = "nm"
    mid.attrs["variant"] = "incident_wavelength_1Dspectrum"
    s = b.create_dataset("incident_wavelength_1Dspectrum", data=spec_l); s.attrs["units"] = "nm"
    b["incident_wavelength_1Dspectrum_weight"] = spec_w
    det = ins.create_group("det"); det.attrs["NX_class"] = "NXdetector"
    for p in range(2):
        m = det.create_group(f"m{p}"); m.attrs["NX_class"] = "NXdetector_module"
        m["data_origin"] = [p * ns, 0]; m["data_size"] = [ns, nfst]
        for nm_, vec in (("fast_pixel_direction", [-1.0, 0, 0]), ("slow_pixel_direction", [0, -1.0, 0])):
            a = m.create_dataset(nm_, data=0.1); a.attrs.update({"vector": vec, "units": "mm", "depends_on": "."})
split = np.stack([data[:, :ns, :], data[:, ns:, :]], axis=1)
exp["nx2"] = {"format": "Nxmx", "images": images_list(split),
              "spectra": [[(spec_l[k] * 10).tolist(), spec_w[k].tolist()] for k in range(nf)],
              "wavelengths": (cal * 10).tolist()}

# ---- NXmx 3: no modules, (nframes, slow, fast) uint16, per-frame simple spectra
data = rng.integers(0, 65535, size=(nf, ns, nfst)).astype(np.uint16)
lam3 = np.stack([np.linspace(1.0, 1.01, 4) + 0.001 * k for k in range(nf)])
w3 = rng.random((nf, 4)) + 0.5
with h5py.File(f"{out}/nx3.h5", "w") as f:
    e = f.create_group("entry"); e.attrs["NX_class"] = "NXentry"
    d = e.create_group("data"); d.attrs["NX_class"] = "NXdata"
    d.create_dataset("data", data=data)
    b = e.create_group("instrument").create_group("beam")
    b["incident_wavelength"] = lam3; b["incident_wavelength"].attrs["units"] = "Angstrom"
    b["incident_wavelength_weights"] = w3
exp["nx3"] = {"format": "Nxmx", "images": images_list(data[:, None]),
              "spectra": [[lam3[k].tolist(), w3[k].tolist()] for k in range(nf)],
              "wavelengths": [HC / ((w3[k] * HC / lam3[k]).sum() / w3[k].sum()) for k in range(nf)]}

# ---- diffBragg layout (b): float32 images, json.dumps attributes, per-shot spectra
det = quad["detector"][0]; beam = quad["beam"][0]
npan = len(det["panels"]); nfq, nsq = det["panels"][0]["image_size"]
data = (rng.random((2, npan, nsq, nfq)) * 100).astype(np.float32)
en = np.stack([np.linspace(9490.0, 9510.0, 5) + k for k in range(2)])
we = rng.random((2, 5)) + 0.1
with h5py.File(f"{out}/db.h5", "w") as f:
    ds = f.create_dataset("images", data=data, compression="gzip")
    ds.attrs["dxtbx_detector_string"] = json.dumps(det)
    ds.attrs["dxtbx_beam_string"] = json.dumps(beam)
    f["spectrum_energies"] = en; f["spectrum_weights"] = we
exp["db"] = {"format": "DiffBraggH5", "images": images_list(data), "detector": det, "beam": beam,
             "spectra": [[(HC / en[k]).tolist(), we[k].tolist()] for k in range(2)],
             "wavelengths": [HC / ((we[k] * en[k]).sum() / we[k].sum()) for k in range(2)]}

# ---- layout (b): float64, str(dict) Python-literal attributes stored as fixed-length bytes, central wavelengths
det2 = {"panels": [{"name": "p'0", "image_size": [4, 3], "pixel_size": (0.1, 0.1), "mask": [],
                    "origin": [0.0, 0.0, -100.0], "identifier": None, "flag": True}],
        "hierarchy": {"name": "", "children": [{"panel": 0}]}}
beam2 = {"direction": (0.0, 0.0, 1.0), "wavelength": 1.5, "polarization_fraction": 0.999}
data = rng.random((3, 1, 3, 4))
with h5py.File(f"{out}/db2.h5", "w") as f:
    ds = f.create_dataset("images", data=data)
    ds.attrs["dxtbx_detector_string"] = np.bytes_(str(det2).encode())
    ds.attrs["dxtbx_beam_string"] = np.bytes_(str(beam2).encode())
    f["central_wavelengths"] = [1.1, 1.2, 1.3]
assert ast.literal_eval(str(det2)) == det2
exp["db2"] = {"format": "DiffBraggH5", "images": images_list(data), "detector": det2,
              "beam": dict(beam2, direction=[0.0, 0.0, 1.0]), "spectra": [None] * 3, "wavelengths": [1.1, 1.2, 1.3]}

# ---- cxid9114 layout (c): shared wavelengths + spectrum
data = rng.random((2, 1, 3, 4))
wl = np.linspace(1.8, 1.82, 7); sp = rng.random(7) + 0.2
with h5py.File(f"{out}/d9114.h5", "w") as f:
    ds = f.create_dataset("images", data=data)
    ds.attrs["dxtbx_detector_string"] = json.dumps({"panels": [{"image_size": [4, 3]}], "hierarchy": {}})
    ds.attrs["dxtbx_beam_string"] = json.dumps(beam2)
    f["wavelengths"] = wl; f["spectrum"] = sp
exp["d9114"] = {"format": "Cxid9114H5", "images": images_list(data),
                "spectra": [[wl.tolist(), sp.tolist()]] * 2,
                "wavelengths": [HC / ((sp * HC / wl).sum() / sp.sum())] * 2}

# ---- lzf-compressed images: a filter this HDF5 build may not have
with h5py.File(f"{out}/lzf.h5", "w") as f:
    ds = f.create_dataset("images", data=np.ones((1, 1, 3, 4)), compression="lzf")
    ds.attrs["dxtbx_detector_string"] = json.dumps({"panels": [{"image_size": [4, 3]}]})
    ds.attrs["dxtbx_beam_string"] = json.dumps(beam2)

json.dump(exp, open(f"{out}/expected.json", "w"))
"#;

fn make_files(dir: &Path) -> Value {
    let quad = diffbragg::testutil::shared("reference/quad_00.expt");
    let out = Command::new("python3")
        .arg("-c")
        .arg(MAKE_FILES)
        .arg(dir)
        .arg(&quad)
        .output()
        .expect("python3 must be installed for this test");
    assert!(out.status.success(), "python script failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

fn check_case(dir: &Path, name: &str, exp: &Value) {
    let path = dir.join(format!("{name}.h5"));
    let src = open_image_source(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let fmt = match exp["format"].as_str().unwrap() {
        "Nxmx" => ImageFormat::Nxmx,
        "DiffBraggH5" => ImageFormat::DiffBraggH5,
        "Cxid9114H5" => ImageFormat::Cxid9114H5,
        f => panic!("{f}"),
    };
    assert_eq!(src.format(), fmt, "{name}");
    let images = exp["images"].as_array().unwrap();
    assert_eq!(src.n_images(), images.len(), "{name}");
    for (i, im) in images.iter().enumerate() {
        let got = src.read_image(i).unwrap();
        let panels = im.as_array().unwrap();
        assert_eq!(got.n_panels(), panels.len(), "{name} image {i}");
        for (p, rows) in panels.iter().enumerate() {
            let rows = rows.as_array().unwrap();
            let pim = got.panel(p);
            assert_eq!(pim.shape(), (rows.len(), rows[0].as_array().unwrap().len()), "{name} {i} {p}");
            for (s, row) in rows.iter().enumerate() {
                let want: Vec<f64> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                assert_eq!(pim.row(s), &want[..], "{name} image {i} panel {p} row {s}");
            }
        }
        // Spectra: channel wavelengths in Å, weights as stored.
        match (&exp["spectra"][i], src.spectrum(i).unwrap()) {
            (Value::Null, None) => {}
            (want, Some(s)) if !want.is_null() => {
                let wl: Vec<f64> = want[0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                let wt: Vec<f64> = want[1].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                assert_eq!(s.weights, wt, "{name} image {i} weights");
                assert_eq!(s.len(), wl.len());
                for (a, b) in s.wavelengths.iter().zip(&wl) {
                    assert!(rel(*a, *b) < 1e-14, "{name} image {i}: wavelength {a} vs {b}");
                }
            }
            (w, g) => panic!("{name} image {i}: spectrum {w:?} vs {g:?}"),
        }
        let wl = src.wavelength(i).unwrap().unwrap();
        let want = exp["wavelengths"][i].as_f64().unwrap();
        assert!(rel(wl, want) < 1e-13, "{name} image {i}: wavelength {wl} vs {want}");
        if let Some(b) = src.beam_dict(i).unwrap() {
            assert!(rel(b["wavelength"].as_f64().unwrap(), want) < 1e-13);
        }
    }
    assert!(src.read_image(images.len()).unwrap_err().to_string().contains("out of range"));
}

#[test]
fn h5py_files_read_equal() {
    let dir = tempfile::tempdir().unwrap();
    let exp = make_files(dir.path());
    for name in ["nx1", "nx2", "nx3", "db", "db2", "d9114"] {
        check_case(dir.path(), name, &exp[name]);
    }

    // Geometry carried by the files.
    let db = open_image_source(dir.path().join("db.h5")).unwrap();
    assert_eq!(db.detector_dict().unwrap(), exp["db"]["detector"]);
    let mut beam = db.beam_dict(1).unwrap().unwrap();
    beam["wavelength"] = exp["db"]["beam"]["wavelength"].clone();
    assert_eq!(beam, exp["db"]["beam"]);

    let db2 = open_image_source(dir.path().join("db2.h5")).unwrap();
    assert_eq!(db2.detector_dict().unwrap(), exp["db2"]["detector"]);
    let mut beam = db2.beam_dict(0).unwrap().unwrap();
    assert_eq!(beam["wavelength"].as_f64(), Some(1.1));
    beam["wavelength"] = Value::from(1.5);
    assert_eq!(beam, exp["db2"]["beam"]);

    let nx = open_image_source(dir.path().join("nx1.h5")).unwrap();
    let det = nx.detector_dict().expect("NXmx geometry");
    let panels = det["panels"].as_array().unwrap();
    for (p, want) in panels.iter().zip(exp["nx1"]["panels"].as_array().unwrap()) {
        for key in ["origin", "fast_axis", "slow_axis", "pixel_size", "trusted_range"] {
            let a = p[key].as_array().unwrap();
            let b = want[key].as_array().unwrap();
            for (x, y) in a.iter().zip(b) {
                assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-12, "{key}: {a:?} vs {b:?}");
            }
        }
        assert_eq!(p["image_size"], want["image_size"]);
        assert_eq!(p["name"], want["name"]);
        assert!((p["thickness"].as_f64().unwrap() - 0.32).abs() < 1e-15);
        assert_eq!(p["material"], "Si");
    }
    let b = nx.beam_dict(0).unwrap().unwrap();
    assert_eq!(b["direction"], serde_json::json!([0.0, 0.0, 1.0]));
}

#[test]
fn unreadable_data_names_file_and_dataset() {
    let dir = tempfile::tempdir().unwrap();
    make_files(dir.path());
    let path = dir.path().join("lzf.h5");
    // The lzf filter is not part of libhdf5: either it is available (then the
    // values read back) or the error names the file and /images.
    match open_image_source(&path).and_then(|s| s.read_image(0)) {
        Ok(im) => assert_eq!(im.sum(), 12.0),
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("lzf.h5") && m.contains("/images") && m.contains("gzip"), "{m}");
        }
    }

    // A truncated copy of a good file fails with the file named, never panics.
    let bytes = std::fs::read(dir.path().join("db.h5")).unwrap();
    let cut = dir.path().join("cut.h5");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let res = open_image_source(&cut).and_then(|s| {
        for i in 0..s.n_images() {
            s.read_image(i)?;
        }
        Ok(())
    });
    let m = res.expect_err("a truncated file must not read").to_string();
    assert!(m.contains("cut.h5"), "{m}");

    // Wrong content: a text file is neither HDF5 nor SMV.
    let txt = dir.path().join("x.h5");
    std::fs::write(&txt, "hello").unwrap();
    assert!(open_image_source(&txt).unwrap_err().to_string().contains("x.h5"));
    assert!(open_image_source(dir.path().join("missing.h5")).unwrap_err().to_string().contains("not found"));
}

/// Inconsistent NXmx or diffBragg metadata gives one error naming the file
/// and the offending object.
#[test]
fn bad_metadata_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, json, numpy as np, h5py
out = sys.argv[1]
def nx(name, origin=(0, 0, 0), size=(1, 3, 4), variant=None, units="angstrom", drop=None):
    with h5py.File(f"{out}/{name}.h5", "w") as f:
        e = f.create_group("entry"); e.attrs["NX_class"] = "NXentry"
        d = e.create_group("data"); d.attrs["NX_class"] = "NXdata"
        d["data"] = np.zeros((2, 1, 3, 4))
        ins = e.create_group("instrument"); ins.attrs["NX_class"] = "NXinstrument"
        b = ins.create_group("beam"); b.attrs["NX_class"] = "NXbeam"
        w = b.create_dataset("incident_wavelength", data=[1.0, 1.1]); w.attrs["units"] = units
        if variant: w.attrs["variant"] = variant
        det = ins.create_group("det"); det.attrs["NX_class"] = "NXdetector"
        m = det.create_group("mod"); m.attrs["NX_class"] = "NXdetector_module"
        m["data_origin"] = list(origin); m["data_size"] = list(size)
        for nm_, vec in (("fast_pixel_direction", [-1.0, 0, 0]), ("slow_pixel_direction", [0, -1.0, 0])):
            if nm_ == drop: continue
            a = m.create_dataset(nm_, data=0.1); a.attrs.update({"vector": vec, "units": "mm", "depends_on": "."})
nx("origin", origin=(0, 1, 0))
nx("variant", variant="nowhere")
nx("units", units="parsec")
nx("nofast", drop="fast_pixel_direction")
nx("ok")
beam = json.dumps({"wavelength": 1.0})
def db(name, shape=(2, 1, 3, 4), det={"panels": [{"image_size": [4, 3]}]}, extra=None):
    with h5py.File(f"{out}/{name}.h5", "w") as f:
        ds = f.create_dataset("images", data=np.zeros(shape))
        ds.attrs["dxtbx_detector_string"] = json.dumps(det) if isinstance(det, dict) else det
        ds.attrs["dxtbx_beam_string"] = beam
        for k, v in (extra or {}).items(): f[k] = v
db("db_3d", shape=(2, 3, 4))
db("db_size", det={"panels": [{"image_size": [3, 4]}]})
db("db_syntax", det="{'panels': [")
db("db_spec", extra={"spectrum_energies": np.ones((2, 5)), "spectrum_weights": np.ones((2, 4))})
db("db_cw", extra={"central_wavelengths": [1.0]})
db("db_neg", extra={"spectrum_energies": -np.ones((2, 5)), "spectrum_weights": np.ones((2, 5))})
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(dir.path()).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read_all = |name: &str| {
        open_image_source(dir.path().join(format!("{name}.h5"))).and_then(|s| {
            for i in 0..s.n_images() {
                s.read_image(i)?;
                s.spectrum(i)?;
                s.wavelength(i)?;
            }
            let _ = s.detector_dict();
            Ok(())
        })
    };
    read_all("ok").unwrap();
    for (name, needle) in [
        ("origin", "/entry/instrument/det/mod"),
        ("variant", "nowhere"),
        ("units", "parsec"),
        ("nofast", "fast_pixel_direction"),
        ("db_3d", "4 dimensions"),
        ("db_size", "image_size"),
        ("db_syntax", "dxtbx_detector_string"),
        ("db_spec", "shapes differ"),
        ("db_cw", "central_wavelengths"),
        ("db_neg", "energy"),
    ] {
        let e = read_all(name).expect_err(name).to_string();
        assert!(e.contains(&format!("{name}.h5")) && e.contains(needle), "{name}: {e}");
    }
}
