//! Stage-2 diagnostics, for `diffbragg report`: convergence of a run, and the
//! correlation of its structure factors with a reference by resolution.
//!
//! # Definitions
//! * Convergence: the run's global `traces` rows (shot_id null, stage = tag),
//!   f and sigZ against the evaluation count.
//! * CC: Pearson correlation of **amplitudes** F over the anomalous-ASU
//!   indices both sets have, in `n_bins` resolution bins of equal count
//!   (low resolution first). Indices are compared as anomalous keys (F(+) and
//!   F(−) separately, centric once), as `kpp_eval/evaluate_cc12.py` does.
//! * CC½: run the refinement twice with `--halfSet even` and `--halfSet odd`
//!   (each half of the shot list under its own `--saveTag`); CC½ is the CC
//!   between the two runs' final structure factors ([`cc_half`]).
//! * The conventional merge ([`roi_sum_merge`]): per ROI, the background-
//!   subtracted sum of its trusted pixels, averaged over the ROIs of each
//!   anomalous-ASU index; F = √max(I, 0). No partiality or scale correction:
//!   the baseline stage 2 is meant to beat.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Float64Type, Int32Type, Int64Type, UInt8Type};

use crate::crystal::UnitCell;
use crate::error::{Error, Result};
use crate::io::mtz::Mtz;
use crate::report::plot::{legend, Axes, Canvas, BLACK, BLUE, GREY, ORANGE, WHITE};
use crate::store::parquet::read_shard_each;
use crate::store::{Store, Table};
use crate::symmetry::miller::Resolution;
use crate::symmetry::{Miller, ReciprocalAsu, SpaceGroup};

use super::sf::asu_key;

/// One evaluation of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvergencePoint {
    pub eval: i32,
    pub f: f64,
    pub sigz: f64,
    pub time: f64,
}

/// The run's convergence log, sorted by evaluation (one row per evaluation).
pub fn convergence(store: &Store, tag: &str) -> Result<Vec<ConvergencePoint>> {
    let mut m: BTreeMap<i32, ConvergencePoint> = BTreeMap::new();
    for (_, _, p) in store.shards(Table::Traces)? {
        read_shard_each(
            Table::Traces,
            &p,
            Some(&["shot_id", "stage", "eval", "f", "sigz", "time"]),
            None,
            |b| {
                let id = b.column(0).as_primitive::<Int64Type>();
                let st = b.column(1).as_string::<i32>();
                let ev = b.column(2).as_primitive::<Int32Type>();
                let f = b.column(3).as_primitive::<Float64Type>();
                let sz = b.column(4).as_primitive::<Float64Type>();
                let t = b.column(5).as_primitive::<Float64Type>();
                for i in 0..b.num_rows() {
                    if id.is_null(i) && st.value(i) == tag {
                        let sigz = if sz.is_valid(i) { sz.value(i) } else { f64::NAN };
                        m.insert(
                            ev.value(i),
                            ConvergencePoint { eval: ev.value(i), f: f.value(i), sigz, time: t.value(i) },
                        );
                    }
                }
                Ok(())
            },
        )?;
    }
    Ok(m.into_values().collect())
}

/// The two convergence panels (f and sigZ against the evaluation).
pub fn convergence_figure(points: &[ConvergencePoint], tag: &str) -> Canvas {
    let (w, h) = (900usize, 420usize);
    let mut c = Canvas::new(w, h, WHITE);
    let xr = (points.first().map_or(0.0, |p| p.eval as f64), points.last().map_or(1.0, |p| p.eval as f64));
    let panels = [("target f", 0usize), ("sigZ", 1usize)];
    for (k, (name, which)) in panels.iter().enumerate() {
        let vals: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.eval as f64, if *which == 0 { p.f } else { p.sigz }))
            .filter(|v| v.1.is_finite())
            .collect();
        let lo = vals.iter().map(|v| v.1).fold(f64::INFINITY, f64::min);
        let hi = vals.iter().map(|v| v.1).fold(f64::NEG_INFINITY, f64::max);
        let x0 = 90.0 + k as f64 * 450.0;
        let ax = Axes::new((x0, 50.0, x0 + 330.0, 360.0), xr, (lo, hi));
        ax.draw_frame(&mut c, &format!("{tag}: {name}"), "evaluation", name, 1);
        for pair in vals.windows(2) {
            ax.line(
                &mut c,
                pair[0].0,
                pair[0].1,
                pair[1].0,
                pair[1].1,
                if *which == 0 { BLUE } else { ORANGE },
            );
        }
    }
    c
}

/// Per-bin statistics of one comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BinStat {
    /// Low- and high-resolution limits of the bin, Å.
    pub d_max: f64,
    pub d_min: f64,
    pub n: usize,
    pub cc: f64,
}

/// Pearson correlation (NaN for fewer than 3 pairs or no spread).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len();
    if n < 3 || b.len() != n {
        return f64::NAN;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n as f64, b.iter().sum::<f64>() / n as f64);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (a[i] - ma, b[i] - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt()
}

/// CC of two amplitude sets by resolution bin (see the module docs), plus
/// the overall CC as the last entry (d range of all).
pub fn cc_by_resolution(
    a: &BTreeMap<Miller, f64>,
    b: &BTreeMap<Miller, f64>,
    cell: &UnitCell,
    n_bins: usize,
) -> Result<Vec<BinStat>> {
    let res = Resolution::new(cell)?;
    let mut common: Vec<(f64, f64, f64)> =
        a.iter().filter_map(|(k, &fa)| b.get(k).map(|&fb| (res.d(k), fa, fb))).collect();
    common.sort_by(|x, y| y.0.total_cmp(&x.0));
    if common.is_empty() {
        return Err(Error::msg("the two structure-factor sets have no index in common"));
    }
    let nb = n_bins.clamp(1, common.len());
    let per = common.len().div_ceil(nb);
    let stat = |c: &[(f64, f64, f64)]| {
        let x: Vec<f64> = c.iter().map(|v| v.1).collect();
        let y: Vec<f64> = c.iter().map(|v| v.2).collect();
        BinStat { d_max: c[0].0, d_min: c[c.len() - 1].0, n: c.len(), cc: pearson(&x, &y) }
    };
    let mut out: Vec<BinStat> = common.chunks(per).map(stat).collect();
    out.push(stat(&common));
    Ok(out)
}

/// The same bins as `edges` (from another comparison), for curves on one axis.
pub fn cc_in_bins(
    a: &BTreeMap<Miller, f64>,
    b: &BTreeMap<Miller, f64>,
    cell: &UnitCell,
    edges: &[BinStat],
) -> Result<Vec<BinStat>> {
    let res = Resolution::new(cell)?;
    let bins = &edges[..edges.len().saturating_sub(1)];
    let mut out = Vec::with_capacity(edges.len());
    let mut pairs: Vec<(f64, f64, f64)> =
        a.iter().filter_map(|(k, &fa)| b.get(k).map(|&fb| (res.d(k), fa, fb))).collect();
    pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
    for e in bins {
        let inb: Vec<&(f64, f64, f64)> = pairs.iter().filter(|p| p.0 <= e.d_max && p.0 >= e.d_min).collect();
        let x: Vec<f64> = inb.iter().map(|v| v.1).collect();
        let y: Vec<f64> = inb.iter().map(|v| v.2).collect();
        out.push(BinStat { d_max: e.d_max, d_min: e.d_min, n: inb.len(), cc: pearson(&x, &y) });
    }
    let x: Vec<f64> = pairs.iter().map(|v| v.1).collect();
    let y: Vec<f64> = pairs.iter().map(|v| v.2).collect();
    out.push(BinStat {
        d_max: pairs.iter().map(|p| p.0).fold(0.0, f64::max),
        d_min: pairs.iter().map(|p| p.0).fold(f64::INFINITY, f64::min),
        n: pairs.len(),
        cc: pearson(&x, &y),
    });
    Ok(out)
}

/// A run's structure factors (channel `channel`), as amplitudes per key: the
/// final rows, or those of checkpoint `iteration`.
pub fn run_amplitudes(
    store: &Store,
    tag: &str,
    channel: i32,
    iteration: Option<i32>,
) -> Result<BTreeMap<Miller, f64>> {
    // Pick the rows: the final ones (highest iteration), else the requested checkpoint.
    let mut best: Option<i32> = None;
    let mut rows: Vec<(i32, Miller, f64)> = Vec::new();
    for (_, _, p) in store.shards(Table::Fhkl)? {
        read_shard_each(
            Table::Fhkl,
            &p,
            Some(&["tag", "hkl", "channel", "F", "iteration", "is_final"]),
            None,
            |b| {
                let t = b.column(0).as_string::<i32>();
                let hkl = b.column(1).as_struct();
                let ch = b.column(2).as_primitive::<Int32Type>();
                let f = b.column(3).as_primitive::<Float64Type>();
                let it = b.column(4).as_primitive::<Int32Type>();
                let fin = b.column(5).as_boolean();
                for i in 0..b.num_rows() {
                    if t.value(i) != tag || ch.value(i) != channel || !it.is_valid(i) {
                        continue;
                    }
                    let want = match iteration {
                        Some(n) => it.value(i) == n && !fin.value(i),
                        None => fin.value(i),
                    };
                    if !want {
                        continue;
                    }
                    let c = |k: usize| hkl.column(k).as_primitive::<Int32Type>().value(i);
                    rows.push((it.value(i), [c(0), c(1), c(2)], f.value(i)));
                    best = Some(best.map_or(it.value(i), |m| m.max(it.value(i))));
                }
                Ok(())
            },
        )?;
    }
    let Some(best) = best else {
        return Err(Error::file(
            store.root(),
            format!(
                "no `fhkl` rows of run `{tag}` channel {channel}{}",
                iteration.map(|n| format!(" at evaluation {n}")).unwrap_or_default()
            ),
        ));
    };
    Ok(rows.into_iter().filter(|r| r.0 == best).map(|r| (r.1, r.2)).collect())
}

/// Amplitudes of a reference MTZ (`columns` as `mtz_column`), keyed like ours.
pub fn mtz_amplitudes(path: &Path, columns: &str, sg: &SpaceGroup) -> Result<BTreeMap<Miller, f64>> {
    let mtz = Mtz::read(path)?;
    let amp = mtz.amplitudes(columns).map_err(|e| Error::file(path, e.to_string()))?;
    let asu = ReciprocalAsu::new(sg);
    let mut out = BTreeMap::new();
    for (h, &f) in amp.hkl.iter().zip(&amp.f) {
        out.insert(asu_key(&asu, h), f);
        if !amp.anomalous {
            out.entry(asu_key(&asu, &[-h[0], -h[1], -h[2]])).or_insert(f);
        }
    }
    Ok(out)
}

/// The conventional merge of the ROIs (see the module docs): per key, the
/// mean background-subtracted ROI sum and the ROI count.
pub fn roi_sum_merge(
    store: &Store,
    sg: &SpaceGroup,
    shots: Option<&BTreeSet<i64>>,
) -> Result<BTreeMap<Miller, (f64, usize)>> {
    let asu = ReciprocalAsu::new(sg);
    let mut acc: BTreeMap<Miller, (f64, usize)> = BTreeMap::new();
    for (_, _, p) in store.shards(Table::Pixels)? {
        read_shard_each(
            Table::Pixels,
            &p,
            Some(&["shot_id", "hkl", "data", "background", "trusted"]),
            shots,
            |b| {
                let hkl = b.column(1).as_struct();
                let d = b.column(2).as_list::<i32>();
                let g = b.column(3).as_list::<i32>();
                let t = b.column(4).as_list::<i32>();
                for i in 0..b.num_rows() {
                    if !hkl.is_valid(i) {
                        continue;
                    }
                    let c = |k: usize| hkl.column(k).as_primitive::<Int32Type>().value(i);
                    let key = asu_key(&asu, &[c(0), c(1), c(2)]);
                    let (dv, gv, tv) = (d.value(i), g.value(i), t.value(i));
                    let (dv, gv, tv) = (
                        dv.as_primitive::<Float32Type>(),
                        gv.as_primitive::<Float32Type>(),
                        tv.as_primitive::<UInt8Type>(),
                    );
                    let mut s = 0.0;
                    for k in 0..dv.len().min(gv.len()).min(tv.len()) {
                        if tv.value(k) == 1 {
                            s += dv.value(k) as f64 - gv.value(k) as f64;
                        }
                    }
                    let e = acc.entry(key).or_insert((0.0, 0));
                    e.0 += s;
                    e.1 += 1;
                }
                Ok(())
            },
        )?;
    }
    Ok(acc.into_iter().map(|(k, (s, n))| (k, (s / n as f64, n))).collect())
}

/// Amplitudes of a merge.
pub fn merge_amplitudes(m: &BTreeMap<Miller, (f64, usize)>) -> BTreeMap<Miller, f64> {
    m.iter().map(|(k, v)| (*k, v.0.max(0.0).sqrt())).collect()
}

/// CC½: the CC between two half-set runs' final structure factors.
pub fn cc_half(
    store: &Store,
    tag_a: &str,
    tag_b: &str,
    cell: &UnitCell,
    n_bins: usize,
) -> Result<Vec<BinStat>> {
    let a = run_amplitudes(store, tag_a, 0, None)?;
    let b = run_amplitudes(store, tag_b, 0, None)?;
    cc_by_resolution(&a, &b, cell, n_bins)
}

/// CC curves against resolution (1/d², bins as points) on one axis.
pub fn cc_figure(curves: &[(&str, &[BinStat])], title: &str) -> Canvas {
    let mut c = Canvas::new(760, 460, WHITE);
    let mid = |b: &BinStat| 0.5 * (1.0 / (b.d_max * b.d_max) + 1.0 / (b.d_min * b.d_min));
    let xs: Vec<f64> =
        curves.iter().flat_map(|(_, v)| v[..v.len().saturating_sub(1)].iter().map(mid)).collect();
    let lo = curves
        .iter()
        .flat_map(|(_, v)| v.iter().map(|b| b.cc))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::min)
        .min(0.0);
    let ax = Axes::new(
        (90.0, 50.0, 600.0, 390.0),
        (xs.iter().cloned().fold(f64::INFINITY, f64::min), xs.iter().cloned().fold(0.0, f64::max)),
        (lo, 1.0),
    );
    ax.draw_frame(&mut c, title, "1/d² (Å⁻²)", "CC", 1);
    let cols = [BLUE, ORANGE, GREY, BLACK];
    for (k, (_, v)) in curves.iter().enumerate() {
        let pts: Vec<(f64, f64)> = v[..v.len().saturating_sub(1)]
            .iter()
            .map(|b| (mid(b), b.cc))
            .filter(|p| p.1.is_finite())
            .collect();
        for p in pts.windows(2) {
            ax.line(&mut c, p[0].0, p[0].1, p[1].0, p[1].1, cols[k % 4]);
        }
        for p in &pts {
            ax.dot(&mut c, p.0, p.1, 3.0, cols[k % 4]);
        }
    }
    let items: Vec<(crate::report::plot::Rgb, &str)> =
        curves.iter().enumerate().map(|(k, (n, _))| (cols[k % 4], *n)).collect();
    legend(&mut c, 615, 60, &items, 1);
    c
}

/// A text table of CC curves.
pub fn cc_table(curves: &[(&str, &[BinStat])]) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:>16}", "d range (Å)");
    for (name, _) in curves {
        let _ = write!(s, " {:>22}", name);
    }
    s.push('\n');
    let n = curves.iter().map(|c| c.1.len()).max().unwrap_or(0);
    for i in 0..n {
        let first = curves.iter().find_map(|c| c.1.get(i)).expect("n from the curves");
        let label =
            if i + 1 == n { "overall".to_string() } else { format!("{:.2}-{:.2}", first.d_max, first.d_min) };
        let _ = write!(s, "{label:>16}");
        for (_, v) in curves {
            match v.get(i) {
                Some(b) => {
                    let _ = write!(s, " {:>14.4} (n={:>5})", b.cc, b.n);
                }
                None => {
                    let _ = write!(s, " {:>22}", "-");
                }
            }
        }
        s.push('\n');
    }
    s
}

/// What [`write_report`] should compare against.
#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    /// Reference MTZ and its columns (e.g. `F(+),F(-)` or `F-model`).
    pub reference: Option<(PathBuf, String)>,
    /// Tags of two half-set runs for CC½.
    pub half_tags: Option<(String, String)>,
    pub n_bins: usize,
    /// Also compare the conventional merge of the ROIs with the reference.
    pub with_merge: bool,
}

/// The stage-2 part of `diffbragg report`: writes `<tag>_convergence.png`,
/// and with a reference `<tag>_cc.png`/`.txt` (and CC½ when half tags are
/// given) into `out_dir`; returns the text summary.
pub fn write_report(
    store: &Store,
    tag: &str,
    cell: &UnitCell,
    sg: &SpaceGroup,
    opts: &ReportOptions,
    out_dir: &Path,
) -> Result<String> {
    std::fs::create_dir_all(out_dir).map_err(|e| crate::error::io_err(out_dir, e))?;
    let mut text = String::new();
    let conv = convergence(store, tag)?;
    if let (Some(a), Some(b)) = (conv.first(), conv.last()) {
        let _ = writeln!(
            text,
            "stage 2 run `{tag}`: {} evaluations, f {:.6e} → {:.6e}, sigZ {:.4} → {:.4}",
            conv.len(),
            a.f,
            b.f,
            a.sigz,
            b.sigz
        );
        convergence_figure(&conv, tag).write_png(&out_dir.join(format!("{tag}_convergence.png")))?;
    } else {
        let _ = writeln!(text, "stage 2 run `{tag}`: no evaluations logged");
    }
    let n_bins = if opts.n_bins == 0 { 10 } else { opts.n_bins };
    let ours = run_amplitudes(store, tag, 0, None)?;
    let mut curves: Vec<(String, Vec<BinStat>)> = Vec::new();
    if let Some((path, cols)) = &opts.reference {
        let reference = mtz_amplitudes(path, cols, sg)?;
        let cc = cc_by_resolution(&ours, &reference, cell, n_bins)?;
        if opts.with_merge {
            let merge = merge_amplitudes(&roi_sum_merge(store, sg, None)?);
            let mc = cc_in_bins(&merge, &reference, cell, &cc)?;
            curves.push((format!("{tag} vs reference"), cc));
            curves.push(("ROI-sum merge vs reference".into(), mc));
        } else {
            curves.push((format!("{tag} vs reference"), cc));
        }
    }
    if let Some((a, b)) = &opts.half_tags {
        let h = cc_half(store, a, b, cell, n_bins)?;
        curves.push((format!("CC1/2 ({a} vs {b})"), h));
    }
    if !curves.is_empty() {
        let refs: Vec<(&str, &[BinStat])> = curves.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        let table = cc_table(&refs);
        text.push_str(&table);
        crate::store::atomic::write_bytes(&out_dir.join(format!("{tag}_cc.txt")), table.as_bytes())?;
        cc_figure(&refs, &format!("{tag}: CC of F by resolution"))
            .write_png(&out_dir.join(format!("{tag}_cc.png")))?;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_and_bins() {
        // numpy.corrcoef([1, 2, 3], [2, 4, 6.5])
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.5]) - 0.9979487157886733).abs() < 1e-14);
        assert!(pearson(&[1.0, 2.0], &[1.0, 2.0]).is_nan());
        let cell = UnitCell::new(20.0, 20.0, 20.0, 90.0, 90.0, 90.0);
        let mut a = BTreeMap::new();
        let mut b = BTreeMap::new();
        for h in 1..=12 {
            a.insert([h, 0, 0], h as f64);
            b.insert([h, 0, 0], if h > 6 { 100.0 - h as f64 } else { 2.0 * h as f64 });
        }
        a.insert([0, 0, 1], 5.0);
        let v = cc_by_resolution(&a, &b, &cell, 2).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].n, v[1].n, v[2].n), (6, 6, 12));
        assert!((v[0].cc - 1.0).abs() < 1e-12 && (v[1].cc + 1.0).abs() < 1e-12);
        assert!((v[0].d_max - 20.0).abs() < 1e-12 && (v[1].d_min - 20.0 / 12.0).abs() < 1e-12);
        let same = cc_in_bins(&a, &b, &cell, &v).unwrap();
        assert_eq!(same, v);
        assert!(cc_table(&[("x", &v)]).contains("overall"));
    }
}
