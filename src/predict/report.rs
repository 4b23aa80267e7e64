//! Figures and a text summary of a `diffbragg integrate` output folder, to
//! tune `threshold`, `qcut` and `weak_fraction` (for `diffbragg report`).
//!
//! * `predict_counts.png`: per shot, predictions (all kept, and the strong
//!   ones) against the strong spots found on the data. `threshold` moves the
//!   cloud up and down; strong predictions far below the strong spots mean
//!   `qcut` is too small or the models are off.
//! * `predict_distances.png`: for every strong spot, the distance to its
//!   nearest prediction in the matching space (`label_weak_col`), up to
//!   3·qcut, with qcut marked. A clean run shows a peak well inside qcut and
//!   few spots near it; a distribution cut by the qcut line means qcut is
//!   too small.
//! * `predict_fractions.png`: per shot, the strong fraction of the kept
//!   predictions and the fraction of strong spots matched.
//! * `predict_summary.txt`: the `predict_summary` view and the settings.
//!
//! Distances are recomputed from the tables: pixels (`xyzcal_px` vs
//! `xyzobs_px_value`, same panel) or rlp. In laue mode the stored prediction
//! `rlp` is the λ̄_spot one; the positional vector that matching used is
//! `rlp·ave_wavelen·|s1|` (s1 is at the spectrum's mean wavelength λ̄ = 1/|s1|).
//! The settings (qcut, column) come from the folder's `integrate_settings.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, FixedSizeListArray, Float64Array, Int64Array, ListArray, UInt32Array};
use arrow::record_batch::RecordBatch;

use crate::error::{io_err, Error, Result};
use crate::reflections::ReflectionTable;
use crate::report::plot::{histogram, legend, Axes, Canvas, BLACK, BLUE, GREY, ORANGE, WHITE};
use crate::store::Store;

use super::matching::{match_spots, MatchColumn, MatchParams};

/// One shot of the `predict_per_shot` view.
#[derive(Clone, Debug, PartialEq)]
pub struct ShotCounts {
    pub shot_id: i64,
    pub n_pred: i64,
    pub n_strong_pred: i64,
    pub n_strong_spots: i64,
    pub n_strong_matched: i64,
}

/// Per shot: panels, pixel positions and rlp of a set of spots.
type SpotColumns = (Vec<u64>, Vec<[f64; 3]>, Vec<[f64; 3]>);

/// What the figures show.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictReport {
    pub column: MatchColumn,
    pub qcut: f64,
    pub shots: Vec<ShotCounts>,
    /// Per strong spot: the distance to the nearest prediction within 3·qcut (`None` beyond).
    pub nearest: Vec<Option<f64>>,
    /// The `predict_summary` view as `name = value` lines.
    pub summary: Vec<(String, String)>,
}

fn i64_col(b: &RecordBatch, i: usize) -> Vec<i64> {
    let a = b.column(i);
    if let Some(x) = a.as_any().downcast_ref::<Int64Array>() {
        return x.iter().map(|v| v.unwrap_or(0)).collect();
    }
    let c = arrow::compute::cast(a, &arrow::datatypes::DataType::Int64).expect("integer column");
    c.as_primitive::<arrow::datatypes::Int64Type>().iter().map(|v| v.unwrap_or(0)).collect()
}

fn vec3_col(b: &RecordBatch, i: usize) -> Vec<[f64; 3]> {
    let a = b.column(i);
    let value = |k: usize| -> Option<std::sync::Arc<dyn Array>> {
        if let Some(l) = a.as_any().downcast_ref::<ListArray>() {
            l.is_valid(k).then(|| l.value(k))
        } else if let Some(l) = a.as_any().downcast_ref::<FixedSizeListArray>() {
            l.is_valid(k).then(|| l.value(k))
        } else {
            None
        }
    };
    (0..b.num_rows())
        .map(|k| match value(k) {
            Some(v) => {
                let f = v.as_any().downcast_ref::<Float64Array>();
                match f {
                    Some(f) if f.len() == 3 => [f.value(0), f.value(1), f.value(2)],
                    _ => [f64::NAN; 3],
                }
            }
            None => [f64::NAN; 3],
        })
        .collect()
}

fn f64_col(b: &RecordBatch, i: usize) -> Vec<f64> {
    let a = b.column(i);
    match a.as_any().downcast_ref::<Float64Array>() {
        Some(x) => x.iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
        None => vec![f64::NAN; b.num_rows()],
    }
}

fn u32_col(b: &RecordBatch, i: usize) -> Vec<u64> {
    let a = b.column(i);
    match a.as_any().downcast_ref::<UInt32Array>() {
        Some(x) => x.iter().map(|v| v.unwrap_or(0) as u64).collect(),
        None => i64_col(b, i).into_iter().map(|v| v as u64).collect(),
    }
}

/// Read the settings, the per-shot view and the nearest-prediction distances.
pub fn load(store_dir: &Path) -> Result<PredictReport> {
    let settings_path = store_dir.join("integrate_settings.json");
    let text = std::fs::read_to_string(&settings_path).map_err(|e| {
        Error::file(&settings_path, format!("{e} (not a `diffbragg integrate` output folder?)"))
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(&settings_path, e.to_string()))?;
    let qcut = v["qcut"].as_f64().ok_or_else(|| Error::file(&settings_path, "no `qcut`"))?;
    let column = MatchColumn::from_name(v["label_weak_col"].as_str().unwrap_or(""))?;
    let store = Store::open(store_dir)?;

    let q = store.query(
        "SELECT shot_id, n_pred, n_strong_pred, n_strong_spots, n_strong_matched FROM predict_per_shot ORDER BY shot_id",
    )?;
    let mut shots = Vec::new();
    for b in &q.batches {
        let (a, p, sp, ss, sm) = (i64_col(b, 0), i64_col(b, 1), i64_col(b, 2), i64_col(b, 3), i64_col(b, 4));
        for k in 0..b.num_rows() {
            shots.push(ShotCounts {
                shot_id: a[k],
                n_pred: p[k],
                n_strong_pred: sp[k],
                n_strong_spots: ss[k],
                n_strong_matched: sm[k],
            });
        }
    }

    // Nearest predictions of every strong spot, per shot.
    let q = store.query(
        "SELECT shot_id, panel, xyzcal_px, rlp, coalesce(ave_wavelen, 0) * sqrt(list_sum(list_transform(s1, x -> x * x))) \
         FROM predictions ORDER BY shot_id, pred_id",
    )?;
    let mut preds: BTreeMap<i64, SpotColumns> = BTreeMap::new();
    for b in &q.batches {
        let (sid, pan, xyz, rlp, scale) =
            (i64_col(b, 0), u32_col(b, 1), vec3_col(b, 2), vec3_col(b, 3), f64_col(b, 4));
        for k in 0..b.num_rows() {
            let e = preds.entry(sid[k]).or_default();
            e.0.push(pan[k]);
            e.1.push(xyz[k]);
            // Laue rows carry a scale λ_spot·|s1| (≠ 0): back to the positional vector.
            let s = if scale[k] > 0.0 { scale[k] } else { 1.0 };
            e.2.push(rlp[k].map(|x| x * s));
        }
    }
    let q = store
        .query("SELECT shot_id, panel, xyzobs_px_value, rlp FROM reflections ORDER BY shot_id, refl_id")?;
    let mut strong: BTreeMap<i64, SpotColumns> = BTreeMap::new();
    for b in &q.batches {
        let (sid, pan, xyz, rlp) = (i64_col(b, 0), u32_col(b, 1), vec3_col(b, 2), vec3_col(b, 3));
        for k in 0..b.num_rows() {
            let e = strong.entry(sid[k]).or_default();
            e.0.push(pan[k]);
            e.1.push(xyz[k]);
            e.2.push(rlp[k]);
        }
    }
    let table = |p: &SpotColumns| -> Result<ReflectionTable> {
        let mut t = ReflectionTable::new(p.0.len());
        t.insert("panel", p.0.clone())?;
        t.insert("xyzobs.px.value", p.1.clone())?;
        t.insert("rlp", p.2.clone())?;
        Ok(t)
    };
    let wide = MatchParams { column, qcut: 3.0 * qcut };
    let mut nearest = Vec::new();
    for (sid, s) in &strong {
        let st = table(s)?;
        match preds.get(sid) {
            Some(p) => {
                let m = match_spots(&table(p)?, &st, &wide)?;
                nearest.extend(m.strong_to_pred.iter().map(|m| m.map(|m| m.distance)));
            }
            None => nearest.extend(std::iter::repeat_n(None, st.nrows())),
        }
    }

    let q = store.query("SELECT * FROM predict_summary")?;
    let mut summary = Vec::new();
    if let Some(b) = q.batches.first() {
        if b.num_rows() > 0 {
            for (i, f) in b.schema().fields().iter().enumerate() {
                let s = arrow::util::display::array_value_to_string(b.column(i), 0).unwrap_or_default();
                summary.push((f.name().clone(), s));
            }
        }
    }
    for k in ["threshold", "weak_fraction", "laue_mode", "ranks"] {
        if let Some(x) = v.get(k) {
            summary.push((k.to_string(), x.to_string()));
        }
    }
    Ok(PredictReport { column, qcut, shots, nearest, summary })
}

fn unit(c: MatchColumn) -> &'static str {
    match c {
        MatchColumn::Rlp => "1/Å",
        MatchColumn::Pixels => "px",
    }
}

/// Predictions and strong predictions against strong spots, per shot.
pub fn counts_figure(r: &PredictReport) -> Canvas {
    let mut c = Canvas::new(900, 680, WHITE);
    c.text(16, 10, "Predictions vs strong spots found on the data, per shot", BLACK, 2);
    let xmax = r.shots.iter().map(|s| s.n_strong_spots).max().unwrap_or(1).max(1) as f64 * 1.08;
    let ymax = r.shots.iter().map(|s| s.n_pred).max().unwrap_or(1).max(1) as f64 * 1.08;
    let ax = Axes::new((120.0, 70.0, 860.0, 580.0), (0.0, xmax), (0.0, ymax));
    let m = xmax.min(ymax);
    ax.line(&mut c, 0.0, 0.0, m, m, GREY);
    for s in &r.shots {
        ax.dot(&mut c, s.n_strong_spots as f64, s.n_pred as f64, 3.0, ORANGE);
        ax.dot(&mut c, s.n_strong_spots as f64, s.n_strong_pred as f64, 3.0, BLUE);
    }
    ax.draw_frame(&mut c, "", "strong spots on the data", "predictions", 2);
    legend(
        &mut c,
        132,
        80,
        &[(ORANGE, "all kept predictions"), (BLUE, "strong (matched) predictions"), (GREY, "y = x")],
        2,
    );
    c
}

/// Nearest-prediction distances of the strong spots, with qcut.
pub fn distance_figure(r: &PredictReport) -> Canvas {
    let mut c = Canvas::new(900, 680, WHITE);
    let lim = 3.0 * r.qcut;
    let d: Vec<f64> = r.nearest.iter().flatten().copied().collect();
    let n_none = r.nearest.len() - d.len();
    let n_in = d.iter().filter(|&&x| x <= r.qcut).count();
    let title = format!("Nearest prediction of each strong spot: {n_in}/{} within qcut", r.nearest.len());
    c.text(16, 10, &title, BLACK, 2);
    let h = histogram(&d, 0.0, lim, 45);
    let ymax = h.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.15;
    let ax = Axes::new((120.0, 70.0, 860.0, 580.0), (0.0, lim), (0.0, ymax));
    ax.filled_histogram(&mut c, &h, 0.0, lim, BLUE, 0.35);
    ax.step_histogram(&mut c, &h, 0.0, lim, BLUE);
    ax.line(&mut c, r.qcut, 0.0, r.qcut, ymax, ORANGE);
    ax.draw_frame(
        &mut c,
        "",
        &format!("distance ({}, {})", r.column.column_name(), unit(r.column)),
        "strong spots",
        2,
    );
    legend(
        &mut c,
        520,
        80,
        &[(ORANGE, &format!("qcut = {}", r.qcut)), (BLUE, &format!("{n_none} beyond 3·qcut"))],
        2,
    );
    c
}

/// Per-shot strong fraction of the predictions and match rate of the strong spots.
pub fn fractions_figure(r: &PredictReport) -> Canvas {
    let mut c = Canvas::new(900, 680, WHITE);
    c.text(16, 10, "Per shot: strong fraction of predictions, matched fraction of strong spots", BLACK, 2);
    let sf: Vec<f64> =
        r.shots.iter().filter(|s| s.n_pred > 0).map(|s| s.n_strong_pred as f64 / s.n_pred as f64).collect();
    let mr: Vec<f64> = r
        .shots
        .iter()
        .filter(|s| s.n_strong_spots > 0)
        .map(|s| s.n_strong_matched as f64 / s.n_strong_spots as f64)
        .collect();
    let (ha, hb) = (histogram(&sf, 0.0, 1.0, 20), histogram(&mr, 0.0, 1.0, 20));
    let ymax = ha.iter().chain(&hb).copied().max().unwrap_or(1).max(1) as f64 * 1.15;
    let ax = Axes::new((120.0, 70.0, 860.0, 580.0), (0.0, 1.0), (0.0, ymax));
    ax.filled_histogram(&mut c, &ha, 0.0, 1.0, BLUE, 0.3);
    ax.step_histogram(&mut c, &ha, 0.0, 1.0, BLUE);
    ax.step_histogram(&mut c, &hb, 0.0, 1.0, ORANGE);
    ax.draw_frame(&mut c, "", "fraction", "shots", 2);
    legend(&mut c, 132, 80, &[(BLUE, "strong / kept predictions"), (ORANGE, "matched / strong spots")], 2);
    c
}

/// Write the figures and `predict_summary.txt` of the integrate output at
/// `store_dir` into `out_dir`; returns the files written.
pub fn write_report(store_dir: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
    let r = load(store_dir)?;
    std::fs::create_dir_all(out_dir).map_err(|e| io_err(out_dir, e))?;
    let mut files = Vec::new();
    for (name, canvas) in [
        ("predict_counts.png", counts_figure(&r)),
        ("predict_distances.png", distance_figure(&r)),
        ("predict_fractions.png", fractions_figure(&r)),
    ] {
        let p = out_dir.join(name);
        canvas.write_png(&p)?;
        files.push(p);
    }
    let mut t = String::new();
    let _ = writeln!(t, "diffbragg integrate: {}", store_dir.display());
    let _ = writeln!(t, "matching: {} within qcut = {} {}", r.column.column_name(), r.qcut, unit(r.column));
    for (k, v) in &r.summary {
        let _ = writeln!(t, "{k:>24} = {v}");
    }
    let within = r.nearest.iter().flatten().filter(|&&d| d <= r.qcut).count();
    let _ = writeln!(t, "{:>24} = {within} of {}", "strong spots within qcut", r.nearest.len());
    let p = out_dir.join("predict_summary.txt");
    crate::store::atomic::write_bytes(&p, t.as_bytes())?;
    files.push(p);
    Ok(files)
}
