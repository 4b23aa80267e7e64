//! Files written by Rust (diffBragg layout) are read by h5py with equal values
//! and dtypes, and opened the way dxtbx's `FormatHDF5AttributeGeometry` does:
//! its `understand()` checks, `ast.literal_eval` of the attribute strings, and
//! its per-shot wavelength from the spectra.

use std::path::Path;
use std::process::Command;

use diffbragg::image::{open_image_source, Image, ImageFormat, PanelImage};
use diffbragg::io::hdf5::writer::{write_attr_geom_h5, AttrGeomWriter, ImageDtype, WriterOptions};
use diffbragg::spectrum::Spectrum;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const CHECK: &str = r#"
import sys, json, ast
import numpy as np, h5py

path, exp_path = sys.argv[1], sys.argv[2]
exp = json.load(open(exp_path))
HC = 12398.419739640716  # the constant FormatHDF5AttributeGeometry hard-codes
f = h5py.File(path, "r")

# FormatHDF5AttributeGeometry.understand()
assert "images" in f.keys()
images = f["images"]
assert "dxtbx_detector_string" in images.attrs and "dxtbx_beam_string" in images.attrs

# _geometry_define(): decode if bytes, then ast.literal_eval
def lit(name):
    s = images.attrs[name]
    try:
        s = s.decode()
    except AttributeError:
        pass
    return s
det_s, beam_s = lit("dxtbx_detector_string"), lit("dxtbx_beam_string")
assert ast.literal_eval(det_s) == exp["detector"], "detector dict differs"
assert ast.literal_eval(beam_s) == exp["beam"], "beam dict differs"
if exp["json_compatible"]:
    assert json.loads(det_s) == exp["detector"] and json.loads(beam_s) == exp["beam"]

assert images.dtype == np.dtype(exp["dtype"]), images.dtype
want = np.array(exp["images"], dtype=np.float64)
assert images.shape == want.shape, (images.shape, want.shape)
assert images.compression == exp["compression"], images.compression
assert images.chunks == (1, 1) + want.shape[2:], images.chunks
got = images[()]
if exp["dtype"] == "float32":
    want = want.astype(np.float32)
assert np.array_equal(got, want), "pixel values differ"
# get_raw_data(i): one flex.double per panel, (slow, fast)
for i in range(want.shape[0]):
    panels = [p.astype(np.float64) for p in images[i]]
    assert len(panels) == want.shape[1] and panels[0].shape == want.shape[2:]

spectra = exp["spectra"]
if spectra is None:
    assert "spectrum_energies" not in f and "spectrum_weights" not in f
else:
    E, W = f["spectrum_energies"], f["spectrum_weights"]
    assert E.dtype == np.float64 and W.dtype == np.float64
    nchan = max(len(s[0]) for s in spectra)
    assert E.shape == W.shape == (len(spectra), nchan), (E.shape, W.shape)
    ragged = any(len(s[0]) != nchan for s in spectra)
    assert ("spectrum_nchan" in f) == ragged
    for i, (lam, w) in enumerate(spectra):
        n = len(lam)
        e_want = 12398.419843320026 / np.array(lam)
        assert np.allclose(E[i, :n], e_want, rtol=1e-15, atol=0), (E[i, :n], e_want)
        assert np.array_equal(W[i, :n], np.array(w))
        assert np.all(W[i, n:] == 0)
        if ragged:
            assert f["spectrum_nchan"][i] == n
        # _get_wavelength(i), exactly as the format class computes it
        ave_E = (W[i] * E[i]).sum() / W[i].sum()
        wl = HC / ave_E
        # Same formula; only the eV·Å constant differs (older CODATA in dxtbx, ~8e-9 relative).
        ours = wl * (12398.419843320026 / HC)
        assert abs(ours - exp["dxtbx_wavelengths"][i]) < 1e-13 * wl, (ours, exp["dxtbx_wavelengths"][i])
print("OK")
"#;

fn run_check(path: &Path, exp: &Value, dir: &Path) {
    let exp_path = dir.join("expected.json");
    std::fs::write(&exp_path, serde_json::to_string(exp).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(CHECK)
        .arg(path)
        .arg(&exp_path)
        .output()
        .expect("python3 must be installed for this test");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OK"),
        "h5py check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn quad_models() -> (Value, Value) {
    let text = std::fs::read_to_string(diffbragg::testutil::shared("reference/quad_00.expt")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    (v["detector"][0].clone(), v["beam"][0].clone())
}

fn random_images(rng: &mut impl Rng, n: usize, np: usize, ns: usize, nf: usize) -> Vec<Image> {
    (0..n)
        .map(|_| {
            Image::new(
                (0..np)
                    .map(|_| {
                        PanelImage::new(
                            ns,
                            nf,
                            (0..ns * nf).map(|_| rng.random::<f64>() * 1e4 - 10.0).collect(),
                        )
                        .unwrap()
                    })
                    .collect(),
            )
        })
        .collect()
}

fn images_json(images: &[Image]) -> Value {
    Value::Array(
        images
            .iter()
            .map(|im| {
                Value::Array(
                    im.panels
                        .iter()
                        .map(|p| Value::Array((0..p.n_slow()).map(|s| json!(p.row(s))).collect()))
                        .collect(),
                )
            })
            .collect(),
    )
}

#[test]
fn rust_file_read_by_h5py_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (det, beam) = quad_models();
    let np = det["panels"].as_array().unwrap().len();
    let nf = det["panels"][0]["image_size"][0].as_u64().unwrap() as usize;
    let ns = det["panels"][0]["image_size"][1].as_u64().unwrap() as usize;
    let images = random_images(&mut rng, 3, np, ns, nf);
    // Ragged spectra: 5, 3 and 5 channels.
    let spectra: Vec<Spectrum> = [5usize, 3, 5]
        .iter()
        .map(|&n| {
            Spectrum::new(
                (0..n).map(|k| 1.30 + 0.001 * k as f64 + rng.random::<f64>() * 1e-4).collect(),
                (0..n).map(|_| rng.random::<f64>() + 0.01).collect(),
            )
        })
        .collect();
    let path = dir.path().join("sim.h5");
    write_attr_geom_h5(&path, &det, &beam, &images, Some(&spectra), WriterOptions::default()).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("sim.h5")], "tmp file left behind");

    // Our own reader: the dxtbx wavelength and the values back.
    let src = open_image_source(&path).unwrap();
    assert_eq!(src.format(), ImageFormat::DiffBraggH5);
    assert_eq!(src.detector_dict().unwrap(), det);
    let mut dx_wl = Vec::new();
    for (i, im) in images.iter().enumerate() {
        assert_eq!(&src.read_image(i).unwrap(), im);
        let s = src.spectrum(i).unwrap().unwrap();
        assert_eq!(s.weights, spectra[i].weights);
        for (a, b) in s.wavelengths.iter().zip(&spectra[i].wavelengths) {
            assert!((a - b).abs() < 1e-15 * b, "{a} vs {b}");
        }
        dx_wl.push(src.wavelength(i).unwrap().unwrap());
    }

    let exp = json!({
        "detector": det, "beam": beam, "json_compatible": true, "dtype": "float64", "compression": "gzip",
        "images": images_json(&images),
        "spectra": spectra.iter().map(|s| json!([s.wavelengths, s.weights])).collect::<Vec<_>>(),
        "dxtbx_wavelengths": dx_wl,
    });
    run_check(&path, &exp, dir.path());
}

#[test]
fn float32_literal_attributes_without_spectra() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    // A dict with None/True (json.dumps would make `null`/`true`, which literal_eval rejects).
    let det = json!({"panels": [{"name": "a \"quoted\" 'name'\n", "image_size": [6, 4], "identifier": null,
                                 "pixel_size": [0.075, 0.075], "flag": true}],
                     "hierarchy": {"name": "", "children": [{"panel": 0}]}});
    let beam = json!({"direction": [0.0, 0.0, 1.0], "wavelength": 1.3, "x": false, "tiny": 1e-300, "big": 12345678901234u64});
    let images = random_images(&mut rng, 2, 1, 4, 6);
    let path = dir.path().join("f32.h5");
    let opts = WriterOptions { dtype: ImageDtype::F32, gzip: None };
    write_attr_geom_h5(&path, &det, &beam, &images, None, opts).unwrap();
    let exp = json!({
        "detector": det, "beam": beam, "json_compatible": false, "dtype": "float32", "compression": null,
        "images": images_json(&images), "spectra": null,
    });
    run_check(&path, &exp, dir.path());

    let src = open_image_source(&path).unwrap();
    let back = src.read_image(1).unwrap();
    for (a, b) in back.panel(0).data().iter().zip(images[1].panel(0).data()) {
        assert_eq!(*a, *b as f32 as f64);
    }
    assert!(src.spectrum(0).unwrap().is_none());
    assert_eq!(src.wavelength(0).unwrap(), Some(1.3));
    assert_eq!(src.beam_dict(0).unwrap().unwrap(), beam);
}

#[test]
fn writer_refuses_bad_use_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (det, beam) = quad_models();
    let path = dir.path().join("x.h5");
    let np = det["panels"].as_array().unwrap().len();
    let good = Image::new((0..np).map(|_| PanelImage::zeros(160, 192)).collect());

    // Wrong panel shape.
    let mut w = AttrGeomWriter::create(&path, &det, &beam, 2, WriterOptions::default()).unwrap();
    let bad = Image::new(vec![PanelImage::zeros(160, 192)]);
    assert!(w.add_image(&bad, None).unwrap_err().to_string().contains("image 0"));
    w.add_image(&good, None).unwrap();
    // Too few images at finish.
    assert!(w.finish().unwrap_err().to_string().contains("2 images announced but 1 written"));
    // Spectra for some shots only.
    let mut w = AttrGeomWriter::create(&path, &det, &beam, 2, WriterOptions::default()).unwrap();
    w.add_image(&good, Some(&Spectrum::monochromatic(1.3))).unwrap();
    w.add_image(&good, None).unwrap();
    assert!(w.finish().unwrap_err().to_string().contains("spectra given for 1 of 2"));
    // Abandoned writer.
    let mut w = AttrGeomWriter::create(&path, &det, &beam, 1, WriterOptions::default()).unwrap();
    w.add_image(&good, None).unwrap();
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing may be left behind");

    // Unequal panels cannot go into one /images block.
    let mut det2 = det.clone();
    det2["panels"][1]["image_size"] = json!([10, 10]);
    assert!(AttrGeomWriter::create(&path, &det2, &beam, 1, WriterOptions::default()).is_err());
}
