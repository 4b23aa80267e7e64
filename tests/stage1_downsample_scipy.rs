//! `downsamp_spec` against scipy: the Butterworth coefficients (`butter`), the
//! zero-phase filter (`filtfilt`) and the whole method-2 reduction (baseline,
//! filter, `binned_statistic` means, clipping, normalisation), computed
//! independently in Python on the same raw SASE-like trace.

use diffbragg::stage1::downsample::{butter_lowpass, downsample, filtfilt, DownsampleParams};
use rand::SeedableRng;

const PY: &str = r#"
import json, sys
import numpy as np
from scipy import signal
from scipy.stats import binned_statistic
d = json.load(open(sys.argv[1]))
e = np.array(d["e"]); w = np.array(d["w"])
tail, order, freq, de = d["tail"], d["order"], d["freq"], d["delta_en"]
xs = np.concatenate([e[:tail], e[-tail:]]); ys = np.concatenate([w[:tail], w[-tail:]])
slope, icpt = np.polyfit(xs, ys, 1)
resid = w - (slope * e + icpt)
b, a = signal.butter(order, freq, "low")
filt = signal.filtfilt(b, a, resid)
edges = np.arange(e.min(), e.max(), de)
mean, _, _ = binned_statistic(e, filt, statistic="mean", bins=edges)
centres = 0.5 * (edges[1:] + edges[:-1])
ok = np.isfinite(mean)
mean = np.clip(mean[ok], 0, None); centres = centres[ok]
mean = mean / mean.sum() * 1e12
json.dump({"b": b.tolist(), "a": a.tolist(), "resid": resid.tolist(), "filt": filt.tolist(),
           "e": centres.tolist(), "w": mean.tolist()}, sys.stdout)
"#;

fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + abs
}

fn case(seed: u64, order: usize, freq: f64, delta_en: f64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (e, w) = diffbragg::synth::sase_spectrum(&mut rng, 9500.0, 40, delta_en);
    let tmp = tempfile::tempdir().unwrap();
    let inp = tmp.path().join("in.json");
    let js =
        serde_json::json!({"e": e, "w": w, "tail": 50, "order": order, "freq": freq, "delta_en": delta_en});
    std::fs::write(&inp, js.to_string()).unwrap();
    let script = tmp.path().join("ref.py");
    std::fs::write(&script, PY).unwrap();
    let out = std::process::Command::new("python3").arg(&script).arg(&inp).output().expect("python3");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = |k: &str| -> Vec<f64> { r[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };

    let (b, a) = butter_lowpass(order, freq).unwrap();
    for (x, y) in b.iter().zip(v("b")).chain(a.iter().zip(v("a"))) {
        assert!(close(*x, y, 1e-10, 1e-15), "butter: {x} vs scipy {y}");
    }
    let resid = v("resid");
    let f = filtfilt(&b, &a, &resid).unwrap();
    let scale = resid.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (x, y) in f.iter().zip(v("filt")) {
        assert!((x - y).abs() <= 1e-9 * scale, "filtfilt: {x} vs scipy {y}");
    }
    let p = DownsampleParams { filt_freq: freq, filt_order: order, tail: 50, delta_en };
    let s = downsample(&e, &w, &p, 1, 1e12).unwrap();
    let (re, rw) = (v("e"), v("w"));
    assert_eq!(s.len(), re.len(), "channel count");
    assert!(s.len() >= 20);
    for ((l, wt), (ee, ww)) in s.wavelengths.iter().zip(&s.weights).zip(re.iter().zip(&rw)) {
        let en = diffbragg::conventions::energy_ev_from_wavelength_a(*l);
        assert!(close(en, *ee, 1e-12, 1e-9), "energy {en} vs {ee}");
        assert!(close(*wt, *ww, 1e-7, 1e-6 * 1e12 / re.len() as f64), "weight {wt} vs {ww}");
    }
}

#[test]
fn downsampling_matches_scipy() {
    case(3, 3, 0.07, 0.5);
    case(4, 2, 0.15, 1.0);
    case(5, 4, 0.03, 0.7);
}
